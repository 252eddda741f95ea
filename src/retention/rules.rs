//! The keep rules of one schedule applied to one volume: which of that schedule's completed snapshots each rule
//! keeps, and why. It knows nothing of rails (pinned, pending, newest, frozen volumes), error snapshots, orphans,
//! caps or removed schedules; `plan_volume` in the parent module handles those and combines the results.
//!
//! Each rule is one pass over the same newest-first list, and the schedule's result is their union. Calendar
//! rules compute one bucket key per snapshot (the Monday of its ISO week, the local date, …) once, then walk the
//! list; they never compare a snapshot's fields with its neighbour's, which is how other tools split a week that
//! spans 1 January in two (calendar year next to ISO week) or merge equal hours of different days. The semantics
//! are restic's `forget` (0.16 and later), rule for rule, including its one surprise: a rule that still has room
//! after its last bucket also keeps the oldest snapshot (see [`Reason::Oldest`]; restic 0.14 and 0.15 lack that).
//! Where we differ, we keep more: our windows include their boundary (restic's exclude it), and a window is a
//! fixed length ("30d" is 720 hours; restic counts calendar days and months).
//!
//! The planner runs this for every volume of a survey (hundreds of thousands of snapshots), so the rules write
//! straight into the caller's per-snapshot reason lists and reuse the caller's buffers instead of building lists
//! of their own.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};

use super::{Count, Period, Reason, ScheduleRules, Snap};

/// Where this volume's keep-last count for the schedule stands, resolved by the caller from `keep.last` or the
/// count tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LastCount {
    /// No keep-last rule.
    NotSet,
    Count(u32),
    /// The schedule takes its count from a tag and this volume has none.
    Unknown,
}

/// What `keep_reasons` needs besides its arguments, kept by the caller across volumes so a plan allocates its
/// buffers once.
#[derive(Debug)]
pub(super) struct Scratch {
    calendar: Calendar,
    /// The bucket keys of the schedule's snapshots, one row per snapshot, one column per [`Period`].
    keys: Vec<[i64; 6]>,
    seen: Buckets,
}

impl Scratch {
    /// Calendar buckets are taken in `tz`.
    pub(super) fn new(tz: chrono_tz::Tz) -> Self {
        Scratch {
            calendar: Calendar::new(tz),
            keys: Vec::new(),
            seen: Buckets::default(),
        }
    }
}

/// One schedule's completed snapshots on one volume: `snaps` is the whole volume newest first, `list` the
/// positions in it of the schedule's completed snapshots, newest first. Reasons go to `out`, aligned with `snaps`.
pub(super) struct Volume<'v, 's> {
    pub(crate) snaps: &'v [&'s Snap],
    pub(crate) list: &'v [usize],
    pub(crate) out: &'v mut [Vec<Reason>],
}

/// Appends this schedule's keep reasons to `out[i]` for every `i` in `list` (an entry that gets none is not kept
/// by this schedule), in rule order: last (or count unknown), within, all, then per period the count rule and
/// the window rule. Each rule adds at most one reason to a snapshot.
pub(super) fn keep_reasons(
    schedule: &ScheduleRules,
    last: LastCount,
    v: Volume<'_, '_>,
    scratch: &mut Scratch,
) {
    let Volume { snaps, list, out } = v;
    let name = &schedule.name;
    match last {
        LastCount::NotSet => {}
        LastCount::Count(n) => {
            for (rank, &i) in (1..=n).zip(list) {
                out[i].push(Reason::Last {
                    schedule: name.clone(),
                    rank,
                    of: n,
                });
            }
        }
        // A wrong guess here deletes backups; keeping costs only storage until the tag is fixed.
        LastCount::Unknown => {
            for &i in list {
                out[i].push(Reason::CountUnknown {
                    schedule: name.clone(),
                });
            }
        }
    }
    if let Some(window) = schedule.keep.within {
        // The window is anchored at the schedule's newest completed snapshot, not at `now`: if snapshot creation
        // stops for a month, a 7-day window still keeps the last 7 days that exist. The boundary is inclusive
        // (restic's is exclusive: a snapshot exactly 7 days older than the newest is kept here, deleted there).
        for &i in &list[..within_len(window, snaps, list)] {
            out[i].push(Reason::Within {
                schedule: name.clone(),
                window,
            });
        }
    }
    if schedule.keep.all {
        for &i in list {
            out[i].push(Reason::All {
                schedule: name.clone(),
            });
        }
    }
    let calendar = Period::ALL
        .iter()
        .any(|&p| schedule.keep.count(p).is_some() || schedule.keep.window(p).is_some());
    if !calendar {
        return;
    }
    // Every bucket key of every slot, from one local-time conversion per slot.
    scratch.keys.clear();
    let calendar = &mut scratch.calendar;
    scratch
        .keys
        .extend(list.iter().map(|&i| calendar.keys(snaps[i].slot)));
    let rule = Rule {
        name,
        list,
        keys: &scratch.keys,
    };
    for period in Period::ALL {
        if let Some(count) = schedule.keep.count(period) {
            rule.calendar(period, count, out, &mut scratch.seen);
        }
        if let Some(window) = schedule.keep.window(period) {
            let inside = within_len(window, snaps, list);
            rule.within_calendar(period, window, inside, out, &mut scratch.seen);
        }
    }
}

/// A calendar rule's view of the schedule: `keys[j]` are the bucket keys of `list[j]`.
struct Rule<'r> {
    name: &'r Arc<str>,
    list: &'r [usize],
    keys: &'r [[i64; 6]],
}

impl Rule<'_> {
    /// Keeps the newest snapshot of each of the `count` most recent non-empty buckets. The list is newest first,
    /// so the first snapshot seen of a bucket is its newest; a period without snapshots never gets a rank.
    fn calendar(&self, period: Period, count: Count, out: &mut [Vec<Reason>], seen: &mut Buckets) {
        let limit = match count {
            Count::N(n) => Some(n),
            Count::All => None,
        };
        seen.clear();
        let mut rank = 0u32;
        let mut oldest_kept = false;
        for (j, (&i, keys)) in self.list.iter().zip(self.keys).enumerate() {
            if limit.is_some_and(|n| rank >= n) {
                return; // full: no room left, so no oldest either
            }
            if seen.insert(keys[period as usize]) {
                rank += 1;
                oldest_kept = j + 1 == self.list.len();
                out[i].push(Reason::Calendar {
                    schedule: self.name.clone(),
                    period,
                    rank,
                    of: limit,
                });
            }
        }
        // Every bucket has its newest kept and the rule still has room (or is `all`): restic then keeps the
        // oldest snapshot too, so the history reaches as far back as it exists. Nothing to add when the oldest
        // already heads its own bucket (or the rule keeps nothing at all, `daily = 0`).
        if limit.is_none_or(|n| rank < n) && !oldest_kept {
            self.keep_oldest(period, None, out);
        }
    }

    /// Keeps the newest snapshot of every bucket among the first `inside` snapshots — those inside the window —
    /// and, as restic does, the oldest snapshot when the window reaches back past it.
    fn within_calendar(
        &self,
        period: Period,
        window: Duration,
        inside: usize,
        out: &mut [Vec<Reason>],
        seen: &mut Buckets,
    ) {
        seen.clear();
        let mut oldest_kept = false;
        for (j, (&i, keys)) in self.list[..inside].iter().zip(self.keys).enumerate() {
            if seen.insert(keys[period as usize]) {
                oldest_kept = j + 1 == self.list.len();
                out[i].push(Reason::WithinCalendar {
                    schedule: self.name.clone(),
                    period,
                    window,
                });
            }
        }
        if inside == self.list.len() && !oldest_kept {
            self.keep_oldest(period, Some(window), out);
        }
    }

    /// Adds `Oldest` to the schedule's oldest snapshot; the caller has checked that the rule does not already
    /// keep it.
    fn keep_oldest(&self, period: Period, window: Option<Duration>, out: &mut [Vec<Reason>]) {
        if let Some(&oldest) = self.list.last() {
            out[oldest].push(Reason::Oldest {
                schedule: self.name.clone(),
                period,
                window,
            });
        }
    }
}

/// The set of bucket keys a calendar rule has met so far: a hash set per rule and volume cost more than the rule
/// itself. Keys come newest first and so in descending order, except where local time runs backwards (a
/// fall-back night): a key below every key seen is new without a look at the set, and any other is searched for
/// from the newest end, where the previous snapshot's bucket is and where a bucket that comes round again after
/// a fall-back is found a few steps in.
#[derive(Debug, Default)]
struct Buckets {
    seen: Vec<i64>,
    /// The smallest key in `seen` (meaningless while it is empty).
    min: i64,
}

impl Buckets {
    fn clear(&mut self) {
        self.seen.clear();
    }

    /// Adds `key`; true when it was not there yet.
    fn insert(&mut self, key: i64) -> bool {
        if self.seen.is_empty() || key < self.min {
            self.min = key;
        } else if self.seen.iter().rev().any(|&k| k == key) {
            return false;
        }
        self.seen.push(key);
        true
    }
}

/// Turns slots into bucket keys in one timezone. It remembers the month of the last slot: a schedule's slots
/// come newest first, so most fall in the same month as the one before, and the calendar date is then not
/// worked out again.
#[derive(Debug)]
pub(super) struct Calendar {
    tz: chrono_tz::Tz,
    /// The local times chrono can represent, in seconds since 1970-01-01.
    range: std::ops::RangeInclusive<i64>,
    /// Local days since 1970-01-01 in the range are month `month0` of `year`.
    month: Option<(std::ops::Range<i64>, i64, i64)>,
}

impl Calendar {
    pub(super) fn new(tz: chrono_tz::Tz) -> Self {
        let range =
            NaiveDateTime::MIN.and_utc().timestamp()..=NaiveDateTime::MAX.and_utc().timestamp();
        Calendar {
            tz,
            range,
            month: None,
        }
    }

    /// The bucket key of `slot` for each [`Period`] (indexed by `period as usize`); equal keys are the same
    /// period. Keys grow with local time, which is all the rules need (they only test equality).
    ///
    /// - `Hour`: local day × 24 + hour of the wall clock, so the repeated hour of a fall-back night is one bucket.
    /// - `Day`: the local date, as days since 1970-01-01.
    /// - `Week`: the Monday the ISO week starts on (in weeks since 1969-12-29): an ISO week is exactly one
    ///   Monday-to-Sunday run, so this equals comparing ISO week-year and week — 2024-12-30 is in 2025-W01
    ///   together with 2025-01-05.
    /// - `Month`, `Quarter`, `Year`: of the local proleptic Gregorian date, as chrono has it.
    pub(super) fn keys(&mut self, slot: DateTime<Utc>) -> [i64; 6] {
        // chrono's own conversion (`with_timezone`, `naive_local`) costs more than all the rest of the keys
        // together; UTC needs none, and other zones only their offset at that instant.
        let offset = if self.tz == chrono_tz::UTC {
            0
        } else {
            let offset = self.tz.offset_from_utc_datetime(&slot.naive_utc());
            i64::from(offset.fix().local_minus_utc())
        };
        let local = slot.timestamp() + offset;
        // chrono's `naive_local` panics on a local time it cannot represent (within a day of its year ±262,143
        // limits); so do we, so that a plan is exactly what converting through chrono gives.
        assert!(
            self.range.contains(&local),
            "Local time out of range for `NaiveDateTime`"
        );
        let days = local.div_euclid(86_400);
        let hour = local.rem_euclid(86_400) / 3_600;
        let (year, month0) = match &self.month {
            Some((range, year, month0)) if range.contains(&days) => (*year, *month0),
            _ => {
                let (year, month0, day0) = civil_from_days(days);
                let first = days - day0;
                self.month = Some((first..first + month_len(year, month0), year, month0));
                (year, month0)
            }
        };
        [
            days * 24 + hour,
            days,
            // 1970-01-01 was a Thursday, three days after its week's Monday.
            (days + 3).div_euclid(7),
            year * 12 + month0,
            year * 4 + month0 / 3,
            year,
        ]
    }
}

/// The proleptic Gregorian (year, zero-based month, zero-based day) of a day counted from 1970-01-01: Howard
/// Hinnant's `civil_from_days`, which works on 400-year eras and so needs no tables and no loops.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from 1 March
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day0 = doy - (153 * mp + 2) / 5;
    let month0 = if mp < 10 { mp + 2 } else { mp - 10 };
    let year = yoe + era * 400 + i64::from(month0 < 2);
    (year, month0, day0)
}

fn month_len(year: i64, month0: i64) -> i64 {
    match month0 {
        1 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        1 => 28,
        3 | 5 | 8 | 10 => 30,
        _ => 31,
    }
}

/// How many of `list` (newest first) lie within `window` of the newest, boundary inclusive.
fn within_len(window: Duration, snaps: &[&Snap], list: &[usize]) -> usize {
    let Some(&newest) = list.first() else {
        return 0;
    };
    // A window too large for chrono (or reaching before its earliest date) covers every snapshot there is.
    let Some(cutoff) = TimeDelta::from_std(window)
        .ok()
        .and_then(|w| snaps[newest].slot.checked_sub_signed(w))
    else {
        return list.len();
    };
    list.partition_point(|&i| snaps[i].slot >= cutoff)
}
