//! Cron schedules and their fire times in an IANA time zone: parsing (with messages that say what to write
//! instead), the next and the latest fire instant, grouping the schedules of one policy that fire together, and
//! the slot tag (`2026-11-21T04:30:00Z`) that names one fire instant. Everything here is a pure function of its
//! arguments: it never reads the clock, sleeps, or does I/O; the daemon loop owns "now" and the waiting.
//!
//! Semantics, chosen to match Vixie cron (crontab(5)) because that is what operators already expect:
//! - **Fields.** 5 fields (min hour dom month dow), 6 with leading seconds, or an alias (`@hourly`, `@daily` =
//!   `@midnight`, `@weekly` = Sunday 00:00, `@monthly`, `@yearly` = `@annually`). `@reboot` has no fire times
//!   and a 7th (year) field has no use for a snapshot schedule, so both are rejected. croner's extensions `L`,
//!   `W` and `#` are accepted (`1#1` is the first Monday).
//! - **Day of month and day of week are ORed** when both are restricted (neither is exactly `*`):
//!   `0 0 13 * 5` fires on every 13th and on every Friday, as in Vixie cron. croner's `+` (AND) modifier is
//!   rejected so that one config text has one meaning; `#` covers the usual reason for wanting AND.
//! - **DST.** croner only matches wall-clock times here; this module maps them to real instants itself, because
//!   croner's own rule treats any list or range (`30 1,13 * * *`) as an interval job and would fire it twice
//!   on a fall-back night and never on a spring-forward night. The rule used is Vixie's: a schedule whose
//!   second, minute or hour field starts with `*` (`0 * * * *`, `*/15 2 * * *`, `@hourly`) is an *interval*
//!   schedule and is about elapsed real time; any other is a *wall-clock* schedule.
//!   - A wall-clock time skipped by spring-forward fires once, at the first instant after the gap (02:30 on a
//!     night that jumps 02:00 -> 03:00 fires at 03:00); several skipped times collapse into that one fire.
//!     An interval schedule simply has no fire in the gap.
//!   - A wall-clock time repeated by fall-back fires once, at its first (earlier) instant. An interval
//!     schedule fires at both instants: `@hourly` fires every real hour, 25 times on a fall-back day, which
//!     is what "hourly" means for a snapshot cadence.
//! - **Whole seconds.** Inputs are truncated to whole seconds before any comparison, so a fire time and a
//!   slot tag are always whole seconds.

use std::fmt;

use chrono::{
    DateTime, LocalResult, NaiveDateTime, Offset, SecondsFormat, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::{GapInfo, Tz};
use croner::parser::{CronParser, Seconds, Year};

/// Aliases accepted in place of five fields; `@weekly` is Sunday as in Vixie cron.
const ALIASES: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

const FIVE_FIELD_HELP: &str =
    "write 5 fields (min hour dom month dow), 6 with leading seconds, or an alias like @daily";

/// A parsed schedule expression. Equality compares the source text, so `@daily` and `0 0 * * *` are different
/// schedules by name even though they fire together (which `next_group` handles).
#[derive(Clone)]
pub struct Cron {
    source: String,
    inner: croner::Cron,
    /// Vixie's "wildcard job": fires on every real instant of a repeated hour and not at all in a skipped one.
    interval: bool,
}

impl PartialEq for Cron {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Cron {}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Cron").field(&self.source).finish()
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Cron {
    /// Accepts 5 fields (min hour dom month dow), 6 fields (sec min hour dom month dow), or an alias. The error
    /// says what is wrong and what to write instead.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let source = expr.trim();
        if source.is_empty() {
            return Err(format!(
                "cron expression is empty; {FIVE_FIELD_HELP}, e.g. `30 4 * * *`"
            ));
        }
        let expanded = if source.starts_with('@') {
            expand_alias(source)?
        } else {
            source
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        match fields.len() {
            5 | 6 => {}
            7 => {
                return Err(format!(
                    "cron `{source}` has 7 fields; a year field is not supported: write 5 (min hour dom month dow) \
                     or 6 with leading seconds, and restrict dates with the day and month fields"
                ))
            }
            n => {
                return Err(format!(
                    "cron `{source}` has {n} field{}; write 5 (min hour dom month dow) or 6 with leading \
                     seconds, or an alias like @daily",
                    if n == 1 { "" } else { "s" }
                ))
            }
        }
        let dow = fields[fields.len() - 1];
        if dow.starts_with('+') {
            return Err(format!(
                "cron `{source}`: the `+` (day-of-month AND day-of-week) modifier is not supported; the two day \
                 fields fire when either matches, as in crontab(5); for the nth weekday write e.g. `1#1` (first \
                 Monday) with day-of-month `*`"
            ));
        }
        let inner = croner_parser()
            .parse(expanded)
            .map_err(|e| explain_parse_error(source, &fields, &e.to_string()))?;
        // Vixie marks a job as a wildcard job when its minute or hour field starts with `*`; a seconds field
        // is a finer interval still, so it counts too.
        let time_fields = &fields[..fields.len() - 3];
        let interval = time_fields.iter().any(|f| f.starts_with('*'));
        let cron = Cron {
            source: source.to_string(),
            inner,
            interval,
        };
        // Catch `0 0 30 2 *` and friends here rather than as a policy that silently never runs. The search is
        // on the wall clock, so it does not depend on a time zone.
        if cron.next_wall(epoch_wall(), true).is_none() {
            return Err(format!(
                "cron `{source}` never fires: no date matches its day-of-month and month fields (e.g. 30 \
                 February); pick a day that exists in the chosen months, or `L` for the last day of the month"
            ));
        }
        Ok(cron)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// First fire time strictly after `after`, computed in timezone `tz`.
    pub(crate) fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let after = whole_seconds(after);
        let wall = after.with_timezone(&tz).naive_local();
        let ahead = self.first_fire_after_wall(wall, after, tz);
        let again = if self.interval {
            self.refire_in_later_half(wall, after, tz)
        } else {
            None
        };
        earliest(ahead, again)
    }

    /// The most recent fire time at or before `at` (the schedule's "latest slot").
    pub fn latest_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let at = whole_seconds(at);
        let wall = at.with_timezone(&tz).naive_local();
        let behind = self.last_fire_up_to_wall(wall, at, tz);
        let already = self.fired_in_earlier_half(wall, at, tz);
        match (behind, already) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next `n` fire times strictly after `after`.
    pub(crate) fn upcoming(&self, after: DateTime<Utc>, tz: Tz, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor, tz) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }

    /// Walks wall-clock matches forward from `wall` and returns the first real instant after `after`. Instants
    /// come out in time order except inside a repeated hour, where an earlier-half instant of a later wall time
    /// precedes the later-half instant of an earlier one; the first wall time that yields any instant after
    /// `after` therefore holds the answer (the other case is `refire_in_later_half`).
    fn first_fire_after_wall(
        &self,
        mut wall: NaiveDateTime,
        after: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        loop {
            wall = self.next_wall(wall, false)?;
            if let Some(t) = self
                .instants(wall, tz)
                .into_iter()
                .flatten()
                .find(|t| *t > after)
            {
                return Some(t);
            }
        }
    }

    /// When `after` is in the earlier half of a repeated hour, the wall times from the start of that hour up to
    /// `after`'s own come round again after the clock goes back; an interval schedule fires on them again.
    fn refire_in_later_half(
        &self,
        wall: NaiveDateTime,
        after: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        let LocalResult::Ambiguous(earlier, later) = tz.from_local_datetime(&wall) else {
            return None;
        };
        if earlier.with_timezone(&Utc) != after {
            return None;
        }
        let later = later.with_timezone(&Utc);
        let back_offset = offset_at(later, tz);
        let clock_goes_back = first_instant(after, later, |u| offset_at(u, tz) == back_offset);
        let repeat_starts = clock_goes_back.with_timezone(&tz).naive_local();
        let first = self.next_wall(repeat_starts, true)?;
        if first > wall {
            return None;
        }
        match tz.from_local_datetime(&first) {
            LocalResult::Ambiguous(_, later) => Some(later.with_timezone(&Utc)),
            _ => None,
        }
    }

    /// Mirror of `first_fire_after_wall`: walks wall-clock matches backward from `wall` (inclusive) and
    /// returns the latest instant at or before `at` of the first wall time that has one.
    fn last_fire_up_to_wall(
        &self,
        wall: NaiveDateTime,
        at: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        let mut wall = self.previous_wall(wall, true)?;
        loop {
            if let Some(t) = self
                .instants(wall, tz)
                .into_iter()
                .flatten()
                .filter(|t| *t <= at)
                .max()
            {
                return Some(t);
            }
            wall = self.previous_wall(wall, false)?;
        }
    }

    /// When `at` is in the later half of a repeated hour, wall times still ahead of `at`'s own in that hour
    /// already fired in the earlier half, before the clock went back.
    fn fired_in_earlier_half(
        &self,
        wall: NaiveDateTime,
        at: DateTime<Utc>,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        let LocalResult::Ambiguous(earlier, later) = tz.from_local_datetime(&wall) else {
            return None;
        };
        if later.with_timezone(&Utc) != at {
            return None;
        }
        let back_offset = offset_at(at, tz);
        let clock_goes_back = first_instant(earlier.with_timezone(&Utc), at, |u| {
            offset_at(u, tz) == back_offset
        });
        let repeat_ends = (clock_goes_back - TimeDelta::seconds(1))
            .with_timezone(&tz)
            .naive_local();
        let last = self.previous_wall(repeat_ends, true)?;
        if last <= wall {
            return None;
        }
        match tz.from_local_datetime(&last) {
            LocalResult::Ambiguous(earlier, _) => Some(earlier.with_timezone(&Utc)),
            _ => None,
        }
    }

    /// The real instants at which wall-clock time `wall` (a match of the pattern) fires, ascending.
    fn instants(&self, wall: NaiveDateTime, tz: Tz) -> [Option<DateTime<Utc>>; 2] {
        match tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => [Some(t.with_timezone(&Utc)), None],
            LocalResult::Ambiguous(earlier, later) => [
                Some(earlier.with_timezone(&Utc)),
                self.interval.then(|| later.with_timezone(&Utc)),
            ],
            LocalResult::None if self.interval => [None, None],
            // The first instant after the gap is the moment the clock jumped: Vixie runs skipped wall-clock
            // jobs right then.
            LocalResult::None => [
                GapInfo::new(&wall, &tz)
                    .and_then(|gap| gap.end)
                    .map(|t| t.with_timezone(&Utc)),
                None,
            ],
        }
    }

    fn next_wall(&self, wall: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        // croner's only failure on a valid pattern is running past its search limit: no further fire.
        self.inner.find_next_occurrence(&wall, inclusive).ok()
    }

    fn previous_wall(&self, wall: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.inner.find_previous_occurrence(&wall, inclusive).ok()
    }
}

/// Several schedules of one policy: the earliest fire instant strictly after `after` and the indexes
/// (ascending) of every schedule that fires at exactly that instant. None if no schedule ever fires again.
pub(crate) fn next_group(
    crons: &[&Cron],
    after: DateTime<Utc>,
    tz: Tz,
) -> Option<(DateTime<Utc>, Vec<usize>)> {
    group(crons, |c| c.next_after(after, tz), |a, b| a < b)
}

/// Same as `next_group`, for the latest instant at or before `at` (catch-up at start, `once` without --slot).
pub(crate) fn latest_group(
    crons: &[&Cron],
    at: DateTime<Utc>,
    tz: Tz,
) -> Option<(DateTime<Utc>, Vec<usize>)> {
    group(crons, |c| c.latest_at_or_before(at, tz), |a, b| a > b)
}

fn group(
    crons: &[&Cron],
    fire: impl Fn(&Cron) -> Option<DateTime<Utc>>,
    better: impl Fn(DateTime<Utc>, DateTime<Utc>) -> bool,
) -> Option<(DateTime<Utc>, Vec<usize>)> {
    let mut best: Option<(DateTime<Utc>, Vec<usize>)> = None;
    for (i, cron) in crons.iter().enumerate() {
        let Some(t) = fire(cron) else { continue };
        match &mut best {
            Some((b, members)) if *b == t => members.push(i),
            Some((b, _)) if !better(t, *b) => {}
            _ => best = Some((t, vec![i])),
        }
    }
    best
}

/// Slot tags are RFC 3339 UTC with seconds and a `Z`: "2026-11-21T04:30:00Z".
pub fn format_slot(t: DateTime<Utc>) -> String {
    whole_seconds(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses a slot tag (any RFC 3339 offset), returning UTC truncated to whole seconds; None if unparsable.
pub fn parse_slot(s: &str) -> Option<DateTime<Utc>> {
    // Every survey parses the slot tag of every managed snapshot; the tags snapwarden writes (`format_slot`) take
    // a direct path, anything else chrono's general parser.
    parse_own_slot(s).or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| whole_seconds(t.with_timezone(&Utc)))
    })
}

/// `YYYY-MM-DDTHH:MM:SSZ` exactly, as [`format_slot`] writes it; None for anything else (including dates that do
/// not exist, which chrono's parser then rejects too).
fn parse_own_slot(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
    // chrono reads second 60 as a leap second and turns it into 59 once truncated; the general path does that.
    let time = chrono::NaiveTime::from_hms_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?)?;
    Some(date.and_time(time).and_utc())
}

fn croner_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .build()
}

fn expand_alias(source: &str) -> Result<&'static str, String> {
    if let Some((_, fields)) = ALIASES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(source))
    {
        return Ok(fields);
    }
    if source.eq_ignore_ascii_case("@reboot") {
        return Err(
            "cron `@reboot` fires only when a machine boots, so it has no fire times to keep snapshots on; \
             write a time instead, e.g. `@daily` or `30 4 * * *`"
                .to_string(),
        );
    }
    let known: Vec<&str> = ALIASES.iter().map(|(name, _)| *name).collect();
    Err(format!(
        "cron `{source}` is not a known alias; write one of {}, or 5 fields (min hour dom month dow)",
        known.join(" ")
    ))
}

/// croner reports a bad value without saying which field holds it, so parse each field alone (the others
/// `*`) to find the culprit and name its allowed range.
fn explain_parse_error(source: &str, fields: &[&str], croner_message: &str) -> String {
    let seconds = fields.len() == 6;
    let names: &[(&str, &str)] = &[
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31, or L / W"),
        ("month", "1-12 or JAN-DEC"),
        (
            "day-of-week",
            "0-7 or SUN-SAT (0 and 7 are Sunday), or L / #",
        ),
    ];
    let names = if seconds { names } else { &names[1..] };
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if let Err(e) = croner_parser().parse(&probe.join(" ")) {
            let (name, range) = names[i];
            return format!("cron `{source}`: {name} field `{field}` is invalid ({e}); use {range}, with `*`, `,`, `-` and `/`");
        }
    }
    format!("cron `{source}` is invalid ({croner_message}); {FIVE_FIELD_HELP}")
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

fn epoch_wall() -> NaiveDateTime {
    DateTime::UNIX_EPOCH.naive_utc()
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn offset_at(t: DateTime<Utc>, tz: Tz) -> chrono::FixedOffset {
    tz.offset_from_utc_datetime(&t.naive_utc()).fix()
}

/// The first whole second in `(lo, hi]` where `pred` holds, given that it fails at `lo`, holds at `hi`, and
/// flips once in between (one clock change inside a repeated hour).
fn first_instant(
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
    pred: impl Fn(DateTime<Utc>) -> bool,
) -> DateTime<Utc> {
    let (mut lo, mut hi) = (lo, hi);
    while (hi - lo).num_seconds() > 1 {
        let mid = lo + TimeDelta::seconds((hi - lo).num_seconds() / 2);
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Weekday};
    use chrono_tz::{
        America::New_York, Australia::Lord_Howe, Australia::Sydney, Europe::Berlin, UTC,
    };

    fn utc(s: &str) -> DateTime<Utc> {
        parse_slot(s).unwrap_or_else(|| panic!("bad test time {s}"))
    }

    fn cron(s: &str) -> Cron {
        Cron::parse(s).unwrap_or_else(|e| panic!("{s} should parse: {e}"))
    }

    fn err(s: &str) -> String {
        match Cron::parse(s) {
            Ok(c) => panic!("{s} should be rejected, parsed as {c:?}"),
            Err(e) => e,
        }
    }

    fn assert_mentions(message: &str, words: &[&str]) {
        for w in words {
            assert!(
                message.contains(w),
                "message {message:?} should mention {w:?}"
            );
        }
    }

    fn times(list: &[&str]) -> Vec<DateTime<Utc>> {
        list.iter().map(|s| utc(s)).collect()
    }

    #[test]
    fn every_alias_parses_and_fires_where_crontab5_says() {
        // 2026-01-01 is a Thursday.
        let after = utc("2026-01-01T00:30:00Z");
        let cases = [
            ("@hourly", "2026-01-01T01:00:00Z"),
            ("@daily", "2026-01-02T00:00:00Z"),
            ("@midnight", "2026-01-02T00:00:00Z"),
            ("@weekly", "2026-01-04T00:00:00Z"),
            ("@monthly", "2026-02-01T00:00:00Z"),
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
            ("@DAILY", "2026-01-02T00:00:00Z"),
        ];
        for (alias, want) in cases {
            let c = cron(alias);
            assert_eq!(c.as_str(), alias);
            assert_eq!(c.next_after(after, UTC), Some(utc(want)), "{alias}");
        }
        assert_eq!(utc("2026-01-04T00:00:00Z").weekday(), Weekday::Sun);
    }

    #[test]
    fn five_fields_fire_on_second_zero_and_six_fields_take_leading_seconds() {
        let after = utc("2026-05-01T00:00:00Z");
        assert_eq!(
            cron("30 4 * * *").next_after(after, UTC),
            Some(utc("2026-05-01T04:30:00Z"))
        );
        assert_eq!(
            cron("10 30 4 * * *").next_after(after, UTC),
            Some(utc("2026-05-01T04:30:10Z"))
        );
        assert_eq!(
            cron("*/20 * * * * *").upcoming(after, UTC, 3),
            times(&[
                "2026-05-01T00:00:20Z",
                "2026-05-01T00:00:40Z",
                "2026-05-01T00:01:00Z"
            ])
        );
    }

    #[test]
    fn source_text_is_kept_and_compared() {
        let c = cron("  30 4 * * mon ");
        assert_eq!(c.as_str(), "30 4 * * mon");
        assert_eq!(c.to_string(), "30 4 * * mon");
        assert_eq!(format!("{c:?}"), "Cron(\"30 4 * * mon\")");
        assert_eq!(c, cron("30 4 * * mon"));
        assert_ne!(cron("@daily"), cron("0 0 * * *"));
    }

    #[test]
    fn wrong_field_counts_say_how_many_to_write() {
        assert_mentions(
            &err("0 3 * *"),
            &[
                "`0 3 * *`",
                "4 fields",
                "write 5 (min hour dom month dow)",
                "6",
                "@daily",
            ],
        );
        assert_mentions(&err("0"), &["1 field;", "write 5"]);
        assert_mentions(
            &err("0 0 3 * * * 2026"),
            &["7 fields", "year", "write 5", "6 with leading seconds"],
        );
        assert_mentions(&err("0 0 3 * * * 2026 1"), &["8 fields", "write 5"]);
    }

    #[test]
    fn empty_and_special_aliases_are_rejected_with_the_fix() {
        assert_mentions(&err(""), &["empty", "write 5 fields", "@daily"]);
        assert_mentions(&err("   "), &["empty"]);
        assert_mentions(&err("@reboot"), &["@reboot", "boots", "@daily"]);
        assert_mentions(
            &err("@fortnightly"),
            &["@fortnightly", "not a known alias", "@weekly", "5 fields"],
        );
    }

    #[test]
    fn out_of_range_values_name_the_field_and_its_range() {
        assert_mentions(&err("61 * * * *"), &["minute field `61`", "0-59"]);
        assert_mentions(&err("0 25 * * *"), &["hour field `25`", "0-23"]);
        assert_mentions(&err("0 0 32 * *"), &["day-of-month field `32`", "1-31"]);
        assert_mentions(&err("0 0 0 * *"), &["day-of-month field `0`", "1-31"]);
        assert_mentions(&err("0 0 * 13 *"), &["month field `13`", "1-12"]);
        assert_mentions(&err("0 0 * * 8"), &["day-of-week field `8`", "0-7"]);
        assert_mentions(&err("60 0 0 * * *"), &["second field `60`", "0-59"]);
        assert_mentions(&err("0 5-2 * * *"), &["hour field `5-2`"]);
        assert_mentions(&err("x 0 * * *"), &["minute field `x`"]);
    }

    #[test]
    fn schedules_that_never_fire_and_the_and_modifier_are_rejected() {
        assert_mentions(&err("0 0 30 2 *"), &["never fires", "`L`"]);
        assert_mentions(&err("0 0 31 4,6 *"), &["never fires"]);
        // 29 February exists every four years, which is rare but real.
        assert_eq!(
            cron("0 0 29 2 *").next_after(utc("2026-01-01T00:00:00Z"), UTC),
            Some(utc("2028-02-29T00:00:00Z"))
        );
        assert_mentions(&err("0 0 1-7 * +1"), &["`+`", "either", "1#1"]);
    }

    #[test]
    fn day_of_month_and_day_of_week_are_ored_like_vixie() {
        // April 2026: the 13th is a Monday; the Fridays are the 3rd, 10th, 17th and 24th.
        assert_eq!(utc("2026-04-13T00:00:00Z").weekday(), Weekday::Mon);
        assert_eq!(
            cron("0 0 13 * 5").upcoming(utc("2026-04-01T00:00:00Z"), UTC, 4),
            times(&[
                "2026-04-03T00:00:00Z",
                "2026-04-10T00:00:00Z",
                "2026-04-13T00:00:00Z",
                "2026-04-17T00:00:00Z"
            ])
        );
        // With one day field `*`, only the other one restricts.
        assert_eq!(
            cron("0 0 * * FRI").upcoming(utc("2026-04-01T00:00:00Z"), UTC, 2),
            times(&["2026-04-03T00:00:00Z", "2026-04-10T00:00:00Z"])
        );
        // `#` is the way to say "the first Monday".
        assert_eq!(
            cron("0 0 * * 1#1").next_after(utc("2026-04-01T00:00:00Z"), UTC),
            Some(utc("2026-04-06T00:00:00Z"))
        );
    }

    #[test]
    fn new_york_spring_forward_runs_a_skipped_0230_once_at_0300() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00Z); 02:30 does not exist.
        let c = cron("30 2 * * *");
        let fires = c.upcoming(utc("2026-03-07T00:00:00Z"), New_York, 3);
        assert_eq!(
            fires,
            times(&[
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ])
        );
        assert_eq!(
            c.latest_at_or_before(utc("2026-03-08T07:00:00Z"), New_York),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        assert_eq!(
            c.latest_at_or_before(utc("2026-03-08T06:59:59Z"), New_York),
            Some(utc("2026-03-07T07:30:00Z"))
        );
        // Several skipped times collapse into the one fire at the jump.
        assert_eq!(
            cron("0,30 2 * * *").upcoming(utc("2026-03-08T00:00:00Z"), New_York, 2),
            times(&["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z"])
        );
        // A list of hours is a wall-clock schedule too (croner alone would skip it).
        assert_eq!(
            cron("30 2,14 * * *").upcoming(utc("2026-03-08T00:00:00Z"), New_York, 2),
            times(&["2026-03-08T07:00:00Z", "2026-03-08T18:30:00Z"])
        );
    }

    #[test]
    fn new_york_fall_back_runs_a_repeated_0130_once() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00Z); 01:00-01:59 happens twice.
        let c = cron("30 1 * * *");
        let fires = c.upcoming(utc("2026-10-31T00:00:00Z"), New_York, 3);
        assert_eq!(
            fires,
            times(&[
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z"
            ])
        );
        // From inside the second 01:xx, the latest run is the first 01:30, even when the clock shows a time
        // before 01:30 again.
        for at in [
            "2026-11-01T06:15:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T06:45:00Z",
        ] {
            assert_eq!(
                c.latest_at_or_before(utc(at), New_York),
                Some(utc("2026-11-01T05:30:00Z")),
                "{at}"
            );
            assert_eq!(
                c.next_after(utc(at), New_York),
                Some(utc("2026-11-02T06:30:00Z")),
                "{at}"
            );
        }
        assert_eq!(
            c.next_after(utc("2026-11-01T05:15:00Z"), New_York),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        // 02:30 is not repeated in New York: a 02:30 daily just runs at 02:30 EST.
        assert_eq!(
            cron("30 2 * * *").upcoming(utc("2026-10-31T12:00:00Z"), New_York, 2),
            times(&["2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z"])
        );
        // A list of hours runs once too (croner alone would run 01:30 twice).
        assert_eq!(
            cron("30 1,13 * * *").upcoming(utc("2026-11-01T00:00:00Z"), New_York, 3),
            times(&[
                "2026-11-01T05:30:00Z",
                "2026-11-01T18:30:00Z",
                "2026-11-02T06:30:00Z"
            ])
        );
    }

    #[test]
    fn hourly_fires_every_real_hour_across_new_york_changes() {
        for hourly in ["0 * * * *", "@hourly"] {
            let c = cron(hourly);
            // Spring forward: 01:00 EST, then 03:00 EDT one real hour later.
            assert_eq!(
                c.upcoming(utc("2026-03-08T04:30:00Z"), New_York, 4),
                times(&[
                    "2026-03-08T05:00:00Z",
                    "2026-03-08T06:00:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-08T08:00:00Z"
                ])
            );
            // Fall back: 01:00 EDT and 01:00 EST both fire.
            assert_eq!(
                c.upcoming(utc("2026-11-01T03:30:00Z"), New_York, 4),
                times(&[
                    "2026-11-01T04:00:00Z",
                    "2026-11-01T05:00:00Z",
                    "2026-11-01T06:00:00Z",
                    "2026-11-01T07:00:00Z"
                ])
            );
            assert_eq!(
                c.latest_at_or_before(utc("2026-11-01T06:30:00Z"), New_York),
                Some(utc("2026-11-01T06:00:00Z"))
            );
            assert_eq!(
                c.latest_at_or_before(utc("2026-11-01T05:59:59Z"), New_York),
                Some(utc("2026-11-01T05:00:00Z"))
            );
        }
        // From 01:45 EDT the next half-hour mark is 01:00 EST, not 02:00 EST.
        assert_eq!(
            cron("*/30 * * * *").next_after(utc("2026-11-01T05:45:00Z"), New_York),
            Some(utc("2026-11-01T06:00:00Z"))
        );
    }

    #[test]
    fn berlin_changes_for_a_0230_daily() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00Z).
        let c = cron("30 2 * * *");
        assert_eq!(
            c.upcoming(utc("2026-03-28T00:00:00Z"), Berlin, 3),
            times(&[
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ])
        );
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00Z); 02:30 happens at 00:30Z and 01:30Z, runs once.
        assert_eq!(
            c.upcoming(utc("2026-10-24T00:00:00Z"), Berlin, 3),
            times(&[
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z"
            ])
        );
        assert_eq!(
            c.latest_at_or_before(utc("2026-10-25T01:15:00Z"), Berlin),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            c.latest_at_or_before(utc("2026-10-25T01:45:00Z"), Berlin),
            Some(utc("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn berlin_changes_for_hourly() {
        let c = cron("@hourly");
        assert_eq!(
            c.upcoming(utc("2026-03-28T23:30:00Z"), Berlin, 3),
            times(&[
                "2026-03-29T00:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T02:00:00Z"
            ])
        );
        assert_eq!(
            c.upcoming(utc("2026-10-24T23:30:00Z"), Berlin, 4),
            times(&[
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z"
            ])
        );
    }

    #[test]
    fn lord_howe_half_hour_changes() {
        // 2026-04-05: 02:00 (+11) becomes 01:30 (+10:30) at 15:00Z; 01:45 happens twice and runs once.
        assert_eq!(
            cron("45 1 * * *").upcoming(utc("2026-04-04T00:00:00Z"), Lord_Howe, 2),
            times(&["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"])
        );
        // 2026-10-04: 02:00 (+10:30) becomes 02:30 (+11) at 15:30Z; 02:15 is skipped and runs at 02:30.
        assert_eq!(
            cron("15 2 * * *").upcoming(utc("2026-10-02T12:00:00Z"), Lord_Howe, 3),
            times(&[
                "2026-10-02T15:45:00Z",
                "2026-10-03T15:30:00Z",
                "2026-10-04T15:15:00Z"
            ])
        );
        // Hourly: 01:00 (+10:30), then 02:00 does not exist, then 03:00 (+11).
        assert_eq!(
            cron("@hourly").upcoming(utc("2026-10-03T14:00:00Z"), Lord_Howe, 2),
            times(&["2026-10-03T14:30:00Z", "2026-10-03T16:00:00Z"])
        );
    }

    fn daily_and_weekly() -> (Cron, Cron) {
        (cron("30 4 * * *"), cron("30 4 * * MON"))
    }

    #[test]
    fn next_group_joins_schedules_that_fire_at_the_same_instant() {
        let (daily, weekly) = daily_and_weekly();
        // 2026-11-23 is a Monday; 04:30 CET is 03:30Z.
        assert_eq!(utc("2026-11-23T03:30:00Z").weekday(), Weekday::Mon);
        let sunday_noon = utc("2026-11-22T11:00:00Z");
        assert_eq!(
            next_group(&[&daily, &weekly], sunday_noon, Berlin),
            Some((utc("2026-11-23T03:30:00Z"), vec![0, 1]))
        );
        assert_eq!(
            next_group(&[&weekly, &daily], sunday_noon, Berlin),
            Some((utc("2026-11-23T03:30:00Z"), vec![0, 1]))
        );
        let monday_run = utc("2026-11-23T03:30:00Z");
        assert_eq!(
            next_group(&[&daily, &weekly], monday_run, Berlin),
            Some((utc("2026-11-24T03:30:00Z"), vec![0]))
        );
        assert_eq!(
            next_group(&[&weekly, &daily], monday_run, Berlin),
            Some((utc("2026-11-24T03:30:00Z"), vec![1]))
        );
        // An alias and its spelled-out form are different schedules that fire together.
        let (a, b) = (cron("@daily"), cron("0 0 * * *"));
        assert_eq!(
            next_group(&[&a, &b], sunday_noon, UTC),
            Some((utc("2026-11-23T00:00:00Z"), vec![0, 1]))
        );
        assert_eq!(next_group(&[], sunday_noon, UTC), None);
    }

    #[test]
    fn latest_group_finds_the_latest_shared_slot() {
        let (daily, weekly) = daily_and_weekly();
        let crons = [&daily, &weekly];
        assert_eq!(
            latest_group(&crons, utc("2026-11-23T12:00:00Z"), Berlin),
            Some((utc("2026-11-23T03:30:00Z"), vec![0, 1]))
        );
        assert_eq!(
            latest_group(&crons, utc("2026-11-23T03:30:00Z"), Berlin),
            Some((utc("2026-11-23T03:30:00Z"), vec![0, 1]))
        );
        assert_eq!(
            latest_group(&crons, utc("2026-11-24T12:00:00Z"), Berlin),
            Some((utc("2026-11-24T03:30:00Z"), vec![0]))
        );
        let weekly_only = [&weekly];
        assert_eq!(
            latest_group(&weekly_only, utc("2026-11-24T12:00:00Z"), Berlin),
            Some((utc("2026-11-23T03:30:00Z"), vec![0]))
        );
        assert_eq!(latest_group(&[], utc("2026-11-24T12:00:00Z"), Berlin), None);
    }

    #[test]
    fn latest_at_or_before_reaches_back_across_a_year() {
        let new_years_eve = cron("0 0 31 12 *");
        let june = utc("2026-06-15T12:00:00Z");
        assert_eq!(
            new_years_eve.latest_at_or_before(june, UTC),
            Some(utc("2025-12-31T00:00:00Z"))
        );
        assert_eq!(
            new_years_eve.latest_at_or_before(june, Berlin),
            Some(utc("2025-12-30T23:00:00Z"))
        );
        assert_eq!(
            new_years_eve.next_after(june, UTC),
            Some(utc("2026-12-31T00:00:00Z"))
        );

        let quarterly = cron("0 0 1 1,4,7,10 *");
        assert_eq!(
            quarterly.latest_at_or_before(june, UTC),
            Some(utc("2026-04-01T00:00:00Z"))
        );
        let july = utc("2026-07-01T00:00:00Z");
        assert_eq!(quarterly.latest_at_or_before(july, UTC), Some(july));
        assert_eq!(
            quarterly.latest_at_or_before(july - TimeDelta::seconds(1), UTC),
            Some(utc("2026-04-01T00:00:00Z"))
        );
        assert_eq!(
            quarterly.latest_at_or_before(utc("2026-02-01T00:00:00Z"), UTC),
            Some(utc("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            quarterly.latest_at_or_before(utc("2026-02-01T00:00:00Z"), New_York),
            Some(utc("2026-01-01T05:00:00Z"))
        );
    }

    #[test]
    fn seconds_fields_and_sub_second_inputs() {
        let c = cron("15 30 4 * * *");
        assert_eq!(
            c.latest_at_or_before(utc("2026-05-02T04:30:14Z"), UTC),
            Some(utc("2026-05-01T04:30:15Z"))
        );
        let just_after = utc("2026-05-02T04:30:15.900Z");
        assert_eq!(
            c.latest_at_or_before(just_after, UTC),
            Some(utc("2026-05-02T04:30:15Z"))
        );
        // 04:30:15 lies before 04:30:15.9, so it is not "strictly after" it.
        assert_eq!(
            c.next_after(just_after, UTC),
            Some(utc("2026-05-03T04:30:15Z"))
        );
        assert_eq!(
            c.next_after(utc("2026-05-02T04:30:14.999Z"), UTC),
            Some(utc("2026-05-02T04:30:15Z"))
        );
        let every_second = cron("* * * * * *");
        assert_eq!(
            every_second.next_after(just_after, UTC),
            Some(utc("2026-05-02T04:30:16Z"))
        );
        assert_eq!(
            every_second.latest_at_or_before(just_after, UTC),
            Some(utc("2026-05-02T04:30:15Z"))
        );
    }

    #[test]
    fn slot_tags_round_trip() {
        let t = utc("2026-11-21T04:30:00Z");
        assert_eq!(format_slot(t), "2026-11-21T04:30:00Z");
        assert_eq!(parse_slot(&format_slot(t)), Some(t));
        assert_eq!(parse_slot("2026-11-21T05:30:00+01:00"), Some(t));
        assert_eq!(parse_slot("2026-11-20T23:30:00-05:00"), Some(t));
        assert_eq!(parse_slot("2026-11-21T04:30:00.750Z"), Some(t));
        assert_eq!(
            format_slot(t + TimeDelta::milliseconds(750)),
            "2026-11-21T04:30:00Z"
        );
        for bad in [
            "",
            "2026-11-21",
            "2026-11-21 04:30:00",
            "2026-11-21T04:30:00",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-21T24:00:00Z",
            "2026-11-21T04:30:0xZ",
            "+026-11-21T04:30:00Z",
        ] {
            assert_eq!(parse_slot(bad), None, "{bad:?}");
        }
        // Not written by us, still read (by chrono's general parser).
        assert_eq!(parse_slot("2026-11-21t04:30:00z"), Some(t));
        assert_eq!(
            parse_slot("2016-12-31T23:59:60Z"),
            Some(utc("2016-12-31T23:59:59Z"))
        );
    }

    /// An independent model of Vixie cron's clock handling, to check the fast search against: walk real time
    /// minute by minute; a wall-clock schedule fires when its wall time is seen for the first time or was
    /// jumped over, an interval schedule whenever the wall clock shows a matching time.
    fn vixie_model(c: &Cron, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let matches = |w: NaiveDateTime| c.inner.is_time_matching(&w).expect("valid wall time");
        let minute = TimeDelta::minutes(1);
        let mut fires = Vec::new();
        let mut highest_seen = (from - minute).with_timezone(&tz).naive_local();
        let mut u = from;
        while u <= to {
            let wall = u.with_timezone(&tz).naive_local();
            let fire = if c.interval {
                matches(wall)
            } else if wall > highest_seen {
                let mut skipped = highest_seen + minute;
                let mut any = false;
                while skipped <= wall {
                    any |= matches(skipped);
                    skipped += minute;
                }
                any
            } else {
                false
            };
            if fire {
                fires.push(u);
            }
            highest_seen = highest_seen.max(wall);
            u += minute;
        }
        fires
    }

    #[test]
    fn matches_a_minute_by_minute_vixie_model_around_every_2026_clock_change() {
        let days: &[(Tz, &str)] = &[
            (New_York, "2026-03-08"),
            (New_York, "2026-11-01"),
            (Berlin, "2026-03-29"),
            (Berlin, "2026-10-25"),
            (Lord_Howe, "2026-04-05"),
            (Lord_Howe, "2026-10-04"),
            (Sydney, "2026-04-05"),
            (Sydney, "2026-10-04"),
        ];
        let schedules = [
            "30 2 * * *",
            "30 1 * * *",
            "0 2 * * *",
            "0 3 * * *",
            "15 2 * * *",
            "45 1 * * *",
            "0,30 2 * * *",
            "15 1-3 * * *",
            "30 1,13 * * *",
            "0 * * * *",
            "*/20 * * * *",
            "*/15 1-2 * * *",
            "@daily",
            "0 0 * * 0",
        ];
        for (tz, day) in days {
            let midnight = utc(&format!("{day}T00:00:00Z"));
            let (from, to) = (midnight - TimeDelta::days(1), midnight + TimeDelta::days(2));
            assert_ne!(
                offset_at(from, *tz),
                offset_at(to, *tz),
                "{tz} has no clock change near {day}"
            );
            for s in schedules {
                let c = cron(s);
                let want = vixie_model(&c, *tz, from, to);
                assert!(!want.is_empty(), "{s} should fire between {from} and {to}");
                let got: Vec<_> = c
                    .upcoming(from - TimeDelta::seconds(1), *tz, want.len() + 1)
                    .into_iter()
                    .filter(|t| *t <= to)
                    .collect();
                assert_eq!(got, want, "{s} in {tz} around {day}");
                let mut previous = c.latest_at_or_before(from - TimeDelta::seconds(1), *tz);
                for f in &want {
                    let ctx = format!("{s} in {tz} at {f}");
                    assert_eq!(c.latest_at_or_before(*f, *tz), Some(*f), "{ctx}");
                    assert_eq!(
                        c.latest_at_or_before(*f - TimeDelta::seconds(1), *tz),
                        previous,
                        "{ctx}"
                    );
                    assert_eq!(
                        c.next_after(*f - TimeDelta::seconds(1), *tz),
                        Some(*f),
                        "{ctx}"
                    );
                    previous = Some(*f);
                }
                // Between fires too: every 7 minutes (coprime with the schedules' steps).
                let mut u = from;
                while u <= to {
                    let latest = want.iter().copied().filter(|f| *f <= u).max();
                    if latest.is_some() {
                        assert_eq!(
                            c.latest_at_or_before(u, *tz),
                            latest,
                            "{s} in {tz} latest at {u}"
                        );
                    }
                    if let Some(next) = want.iter().copied().find(|f| *f > u) {
                        assert_eq!(
                            c.next_after(u, *tz),
                            Some(next),
                            "{s} in {tz} next after {u}"
                        );
                    }
                    u += TimeDelta::minutes(7);
                }
            }
        }
    }

    proptest::proptest! {
        /// The direct path for our own slot tags reads exactly what chrono's RFC 3339 parser reads, for any
        /// 20-character string of that shape (digits anywhere, so impossible dates too).
        #[test]
        fn own_slot_tags_parse_as_chrono_does(
            digits in proptest::collection::vec(proptest::sample::select(b"0123456789".to_vec()), 14),
        ) {
            let d: String = digits.iter().map(|&c| c as char).collect();
            let s = format!("{}-{}-{}T{}:{}:{}Z", &d[0..4], &d[4..6], &d[6..8], &d[8..10], &d[10..12], &d[12..14]);
            let chrono = DateTime::parse_from_rfc3339(&s).ok().map(|t| whole_seconds(t.with_timezone(&Utc)));
            proptest::prop_assert_eq!(parse_slot(&s), chrono);
        }

        #[test]
        fn every_slot_tag_we_write_reads_back(secs in 0i64..253_402_300_799) {
            let t = DateTime::from_timestamp(secs, 0).expect("in range");
            proptest::prop_assert_eq!(parse_slot(&format_slot(t)), Some(t));
        }

        /// Forward and backward searches agree anywhere in 2024-2031, in zones with and without DST: the latest
        /// fire at or before `t` and the next one after `t` are neighbours, with nothing between them.
        #[test]
        fn next_and_latest_are_neighbours(
            secs in 1_704_067_200i64..1_956_528_000,
            s in proptest::sample::select(vec![
                "30 2 * * *", "30 1,13 * * *", "0 * * * *", "*/20 * * * *", "15 30 4 * * *",
                "0 0 31 12 *", "0 0 1 1,4,7,10 *", "0 0 29 2 *", "0 0 13 * 5", "@weekly", "0 0 L * *",
            ]),
            tz in proptest::sample::select(vec![UTC, New_York, Berlin, Lord_Howe, Sydney, chrono_tz::Asia::Kolkata]),
        ) {
            let c = cron(s);
            let t = DateTime::from_timestamp(secs, 0).expect("in range");
            let previous = c.latest_at_or_before(t, tz).expect("fired before");
            let next = c.next_after(t, tz).expect("fires again");
            proptest::prop_assert!(previous <= t && t < next);
            proptest::prop_assert_eq!(c.next_after(previous, tz), Some(next));
            proptest::prop_assert_eq!(c.latest_at_or_before(next - TimeDelta::seconds(1), tz), Some(previous));
            proptest::prop_assert_eq!(c.latest_at_or_before(next, tz), Some(next));
        }
    }
}
