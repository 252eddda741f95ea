//! Calendar rules, orphans and deletion caps: table cases with keep sets worked out by hand (calendars at hand
//! for ISO weeks and DST dates), and property tests over random histories in three timezones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use chrono_tz::{America::New_York, Europe::Berlin, Tz};
use proptest::prelude::*;

use super::*;

fn cal(period: Period, count: Count) -> ScheduleRules {
    let mut s = sched("gfs");
    *s.keep.count_mut(period) = Some(count);
    s
}

fn with(mut s: ScheduleRules, period: Period, count: Count) -> ScheduleRules {
    *s.keep.count_mut(period) = Some(count);
    s
}

fn window(mut s: ScheduleRules, period: Period, d: Duration) -> ScheduleRules {
    *s.keep.window_mut(period) = Some(d);
    s
}

const N: fn(u32) -> Count = Count::N;

#[test]
fn iso_weeks_and_new_year() {
    let cases = [
        Case {
            // 2020-W53 runs Mon 2020-12-28 .. Sun 2021-01-03; a rule keyed on the calendar year would see two
            // weeks there and also keep b.
            name: "2020-W53 spans New Year and is one bucket",
            rows: vec![
                ("a", "vol-1", "2021-01-05T04:00:00Z", "gfs", C), // 2021-W01
                ("w53", "vol-1", "2021-01-03T04:00:00Z", "gfs", C), // 2020-W53
                ("b", "vol-1", "2020-12-31T04:00:00Z", "gfs", C), // 2020-W53
                ("c", "vol-1", "2020-12-28T04:00:00Z", "gfs", C), // 2020-W53
                ("w52", "vol-1", "2020-12-27T04:00:00Z", "gfs", C), // 2020-W52
                ("d", "vol-1", "2020-12-21T04:00:00Z", "gfs", C), // 2020-W52
                ("e", "vol-1", "2020-12-20T04:00:00Z", "gfs", C), // 2020-W51
            ],
            schedules: vec![cal(Period::Week, N(3))],
            kept: vec!["a", "w53", "w52"],
            reasons: vec![
                ("a", "newest of volume; gfs weekly 1/3"),
                ("w53", "gfs weekly 2/3"),
                ("w52", "gfs weekly 3/3"),
                ("b", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "2026-W53 (Mon 2026-12-28 .. Sun 2027-01-03)",
            rows: vec![
                ("a", "vol-1", "2027-01-04T04:00:00Z", "gfs", C), // 2027-W01
                ("b", "vol-1", "2027-01-03T04:00:00Z", "gfs", C), // 2026-W53
                ("c", "vol-1", "2026-12-28T04:00:00Z", "gfs", C), // 2026-W53
                ("d", "vol-1", "2026-12-27T04:00:00Z", "gfs", C), // 2026-W52
            ],
            schedules: vec![cal(Period::Week, N(2))],
            kept: vec!["a", "b"],
            ..Case::default()
        },
        Case {
            // 2024-12-30 (Monday) already belongs to 2025-W01: ISO week-year, not calendar year.
            name: "a week spanning 1 January as week 1 of the next year",
            rows: vec![
                ("a", "vol-1", "2025-01-02T04:00:00Z", "gfs", C), // 2025-W01
                ("b", "vol-1", "2024-12-31T04:00:00Z", "gfs", C), // 2025-W01
                ("c", "vol-1", "2024-12-30T04:00:00Z", "gfs", C), // 2025-W01
                ("d", "vol-1", "2024-12-29T04:00:00Z", "gfs", C), // 2024-W52
                ("e", "vol-1", "2024-12-22T04:00:00Z", "gfs", C), // 2024-W51
            ],
            schedules: vec![cal(Period::Week, N(2))],
            kept: vec!["a", "d"],
            ..Case::default()
        },
        Case {
            // `all` never runs out of room, so the oldest snapshot is kept on top of each week's newest.
            name: "weekly all keeps every week's newest and the oldest",
            rows: vec![
                ("a", "vol-1", "2025-01-02T04:00:00Z", "gfs", C),
                ("b", "vol-1", "2024-12-31T04:00:00Z", "gfs", C),
                ("d", "vol-1", "2024-12-29T04:00:00Z", "gfs", C),
                ("e", "vol-1", "2024-12-28T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Week, Count::All)],
            kept: vec!["a", "d", "e"],
            reasons: vec![
                ("d", "gfs weekly 2/all"),
                ("e", "gfs weekly oldest"),
                ("b", "expired"),
            ],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn months_quarters_years() {
    let cases = [
        Case {
            name: "month ends and the leap day 2028-02-29",
            rows: vec![
                ("mar31", "vol-1", "2028-03-31T23:00:00Z", "gfs", C),
                ("mar1", "vol-1", "2028-03-01T00:00:00Z", "gfs", C),
                ("feb29", "vol-1", "2028-02-29T23:59:59Z", "gfs", C),
                ("feb28", "vol-1", "2028-02-28T12:00:00Z", "gfs", C),
                ("jan31", "vol-1", "2028-01-31T04:00:00Z", "gfs", C),
                ("dec31", "vol-1", "2027-12-31T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Month, N(3))],
            kept: vec!["mar31", "feb29", "jan31"],
            reasons: vec![("feb29", "gfs monthly 2/3"), ("jan31", "gfs monthly 3/3")],
            ..Case::default()
        },
        Case {
            name: "daily over the leap day",
            rows: vec![
                ("mar1", "vol-1", "2028-03-01T00:30:00Z", "gfs", C),
                ("feb29b", "vol-1", "2028-02-29T23:00:00Z", "gfs", C),
                ("feb29a", "vol-1", "2028-02-29T01:00:00Z", "gfs", C),
                ("feb28", "vol-1", "2028-02-28T23:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Day, N(2))],
            kept: vec!["mar1", "feb29b"],
            ..Case::default()
        },
        Case {
            name: "quarter boundaries in UTC",
            rows: vec![
                ("jul1", "vol-1", "2026-07-01T00:00:00Z", "gfs", C),
                ("jun30", "vol-1", "2026-06-30T23:59:59Z", "gfs", C),
                ("apr1", "vol-1", "2026-04-01T00:00:00Z", "gfs", C),
                ("mar31", "vol-1", "2026-03-31T23:59:59Z", "gfs", C),
                ("jan1", "vol-1", "2026-01-01T00:00:00Z", "gfs", C),
                ("dec31", "vol-1", "2025-12-31T23:59:59Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Quarter, N(3))],
            kept: vec!["jul1", "jun30", "mar31"],
            reasons: vec![("mar31", "gfs quarterly 3/3")],
            ..Case::default()
        },
        Case {
            // In Berlin (CEST, UTC+2) 2026-06-30T22:30Z is already 1 July and 2026-03-31T22:30Z is 1 April.
            name: "quarters are taken in the configured timezone",
            rows: vec![
                ("a", "vol-1", "2026-06-30T22:30:00Z", "gfs", C), // Q3 local
                ("b", "vol-1", "2026-06-30T21:00:00Z", "gfs", C), // Q2 local (23:00)
                ("c", "vol-1", "2026-03-31T22:30:00Z", "gfs", C), // Q2 local (1 April 00:30)
                ("d", "vol-1", "2026-03-31T21:30:00Z", "gfs", C), // Q1 local (23:30)
            ],
            schedules: vec![cal(Period::Quarter, N(2))],
            tz: Some(Berlin),
            kept: vec!["a", "b"],
            ..Case::default()
        },
        Case {
            name: "the same quarters in UTC",
            rows: vec![
                ("a", "vol-1", "2026-06-30T22:30:00Z", "gfs", C),
                ("b", "vol-1", "2026-06-30T21:00:00Z", "gfs", C),
                ("c", "vol-1", "2026-03-31T22:30:00Z", "gfs", C),
                ("d", "vol-1", "2026-03-31T21:30:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Quarter, N(2))],
            kept: vec!["a", "c"],
            ..Case::default()
        },
        Case {
            // New Year's Eve 22:00 in New York is already 03:00 on 1 January in UTC.
            name: "year boundary in New York",
            rows: vec![
                ("a", "vol-1", "2027-01-01T06:00:00Z", "gfs", C), // 2027-01-01 01:00 EST
                ("b", "vol-1", "2027-01-01T03:00:00Z", "gfs", C), // 2026-12-31 22:00 EST
                ("c", "vol-1", "2026-06-01T12:00:00Z", "gfs", C),
                ("d", "vol-1", "2025-12-31T12:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Year, N(2))],
            tz: Some(New_York),
            kept: vec!["a", "b"],
            reasons: vec![("b", "gfs yearly 2/2")],
            ..Case::default()
        },
        Case {
            name: "the same years in UTC",
            rows: vec![
                ("a", "vol-1", "2027-01-01T06:00:00Z", "gfs", C),
                ("b", "vol-1", "2027-01-01T03:00:00Z", "gfs", C),
                ("c", "vol-1", "2026-06-01T12:00:00Z", "gfs", C),
                ("d", "vol-1", "2025-12-31T12:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Year, N(2))],
            kept: vec!["a", "c"],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn dst_days() {
    let cases = [
        Case {
            // Berlin falls back 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z): 02:xx happens twice, one bucket.
            name: "Berlin fall-back: the repeated hour is one hourly bucket",
            rows: vec![
                ("h3", "vol-1", "2026-10-25T02:15:00Z", "gfs", C), // 03:15 CET
                ("h2b", "vol-1", "2026-10-25T01:15:00Z", "gfs", C), // 02:15 CET
                ("h2a", "vol-1", "2026-10-25T00:15:00Z", "gfs", C), // 02:15 CEST
                ("h1", "vol-1", "2026-10-24T23:15:00Z", "gfs", C), // 01:15 CEST
                ("h0", "vol-1", "2026-10-24T22:15:00Z", "gfs", C), // 00:15 CEST
            ],
            schedules: vec![cal(Period::Hour, N(3))],
            tz: Some(Berlin),
            kept: vec!["h3", "h2b", "h1"],
            reasons: vec![("h1", "gfs hourly 3/3"), ("h2a", "expired")],
            ..Case::default()
        },
        Case {
            // Berlin springs forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z): there is no 02:xx to fill.
            name: "Berlin spring-forward: the skipped hour uses no slot",
            rows: vec![
                ("h4", "vol-1", "2026-03-29T02:15:00Z", "gfs", C), // 04:15 CEST
                ("h3", "vol-1", "2026-03-29T01:15:00Z", "gfs", C), // 03:15 CEST
                ("h1", "vol-1", "2026-03-29T00:15:00Z", "gfs", C), // 01:15 CET
                ("h0", "vol-1", "2026-03-28T23:15:00Z", "gfs", C), // 00:15 CET
            ],
            schedules: vec![cal(Period::Hour, N(3))],
            tz: Some(Berlin),
            kept: vec!["h4", "h3", "h1"],
            ..Case::default()
        },
        Case {
            // A 02:30 daily cron fires at 03:00 CEST on 2026-03-29 (01:00Z); the next night's 00:30 CEST is
            // 22:30Z the day before, but 30 March locally.
            name: "Berlin daily across spring-forward",
            rows: vec![
                ("mar30b", "vol-1", "2026-03-30T00:30:00Z", "gfs", C), // 03-30 02:30 CEST
                ("mar30a", "vol-1", "2026-03-29T22:30:00Z", "gfs", C), // 03-30 00:30 CEST
                ("mar29", "vol-1", "2026-03-29T01:00:00Z", "gfs", C),  // 03-29 03:00 CEST
                ("mar28", "vol-1", "2026-03-28T01:30:00Z", "gfs", C),  // 03-28 02:30 CET
            ],
            schedules: vec![cal(Period::Day, N(2))],
            tz: Some(Berlin),
            kept: vec!["mar30b", "mar29"],
            ..Case::default()
        },
        Case {
            // New York falls back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
            name: "New York fall-back: hourly",
            rows: vec![
                ("h2", "vol-1", "2026-11-01T07:30:00Z", "gfs", C), // 02:30 EST
                ("h1b", "vol-1", "2026-11-01T06:30:00Z", "gfs", C), // 01:30 EST
                ("h1a", "vol-1", "2026-11-01T05:30:00Z", "gfs", C), // 01:30 EDT
                ("h0", "vol-1", "2026-11-01T04:30:00Z", "gfs", C), // 00:30 EDT
            ],
            schedules: vec![cal(Period::Hour, N(3))],
            tz: Some(New_York),
            kept: vec!["h2", "h1b", "h0"],
            ..Case::default()
        },
        Case {
            // New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
            name: "New York spring-forward: hourly",
            rows: vec![
                ("h4", "vol-1", "2026-03-08T08:30:00Z", "gfs", C), // 04:30 EDT
                ("h3", "vol-1", "2026-03-08T07:30:00Z", "gfs", C), // 03:30 EDT
                ("h1", "vol-1", "2026-03-08T06:30:00Z", "gfs", C), // 01:30 EST
                ("h0", "vol-1", "2026-03-08T05:30:00Z", "gfs", C), // 00:30 EST
            ],
            schedules: vec![cal(Period::Hour, N(3))],
            tz: Some(New_York),
            kept: vec!["h4", "h3", "h1"],
            ..Case::default()
        },
        Case {
            // 1 November 2026 has 25 hours in New York: 04:00Z that day to 05:00Z the next.
            name: "New York daily across the 25-hour day",
            rows: vec![
                ("nov2", "vol-1", "2026-11-02T05:30:00Z", "gfs", C), // 11-02 00:30 EST
                ("nov1b", "vol-1", "2026-11-02T04:30:00Z", "gfs", C), // 11-01 23:30 EST
                ("nov1a", "vol-1", "2026-11-01T04:30:00Z", "gfs", C), // 11-01 00:30 EDT
                ("oct31", "vol-1", "2026-11-01T03:30:00Z", "gfs", C), // 10-31 23:30 EDT
            ],
            schedules: vec![cal(Period::Day, N(2))],
            tz: Some(New_York),
            kept: vec!["nov2", "nov1b"],
            ..Case::default()
        },
        Case {
            // St. John's fell back 2010-11-07 00:01 NDT -> 23:01 NST on 6 November (02:31Z): going back in time,
            // 7 November comes round again after 6 November, and is still one bucket.
            name: "St. John's fall-back across midnight: a day comes round again",
            rows: vec![
                ("nov7b", "vol-1", "2010-11-07T04:00:00Z", "gfs", C), // 11-07 00:30 NST
                ("nov6c", "vol-1", "2010-11-07T03:00:00Z", "gfs", C), // 11-06 23:30 NST
                ("nov7a", "vol-1", "2010-11-07T02:30:30Z", "gfs", C), // 11-07 00:00:30 NDT
                ("nov6b", "vol-1", "2010-11-07T02:00:00Z", "gfs", C), // 11-06 23:30 NDT
                ("nov6a", "vol-1", "2010-11-06T12:00:00Z", "gfs", C), // 11-06 09:30 NDT
                ("nov5", "vol-1", "2010-11-05T12:00:00Z", "gfs", C),  // 11-05 09:30 NDT
            ],
            schedules: vec![cal(Period::Day, Count::All)],
            tz: Some(chrono_tz::America::St_Johns),
            kept: vec!["nov7b", "nov6c", "nov5"],
            reasons: vec![
                ("nov7b", "newest of volume; gfs daily 1/all"),
                ("nov6c", "gfs daily 2/all"),
                ("nov7a", "expired"),
                ("nov5", "gfs daily 3/all"),
            ],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn buckets_sparse_crowded_pinned_pending() {
    let cases = [
        Case {
            name: "missing days use no slot",
            rows: vec![
                ("d10", "vol-1", "2026-01-10T04:00:00Z", "gfs", C),
                ("d07", "vol-1", "2026-01-07T04:00:00Z", "gfs", C),
                ("d01", "vol-1", "2026-01-01T04:00:00Z", "gfs", C),
                ("d20", "vol-1", "2025-12-20T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Day, N(3))],
            kept: vec!["d10", "d07", "d01"],
            reasons: vec![("d01", "gfs daily 3/3"), ("d20", "expired")],
            ..Case::default()
        },
        Case {
            name: "several snapshots in one day: the newest stands for it",
            rows: vec![
                ("a20", "vol-1", "2026-01-10T20:00:00Z", "gfs", C),
                ("a12", "vol-1", "2026-01-10T12:00:00Z", "gfs", C),
                ("a04", "vol-1", "2026-01-10T04:00:00Z", "gfs", C),
                ("b20", "vol-1", "2026-01-09T20:00:00Z", "gfs", C),
                ("b04", "vol-1", "2026-01-09T04:00:00Z", "gfs", C),
                ("c20", "vol-1", "2026-01-08T20:00:00Z", "gfs", C),
                ("c04", "vol-1", "2026-01-08T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Day, N(2))],
            kept: vec!["a20", "b20"],
            ..Case::default()
        },
        Case {
            // restic's rule: counts left over after the last bucket also keep the oldest snapshot.
            name: "fewer days than the count: the oldest is kept too",
            rows: vec![
                ("a20", "vol-1", "2026-01-10T20:00:00Z", "gfs", C),
                ("a04", "vol-1", "2026-01-10T04:00:00Z", "gfs", C),
                ("b20", "vol-1", "2026-01-09T20:00:00Z", "gfs", C),
                ("b04", "vol-1", "2026-01-09T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Day, N(7))],
            kept: vec!["a20", "b20", "b04"],
            reasons: vec![("b20", "gfs daily 2/7"), ("b04", "gfs daily oldest")],
            ..Case::default()
        },
        Case {
            name: "a pending snapshot does not stand for its day",
            rows: vec![
                ("p", "vol-1", "2026-01-10T20:00:00Z", "gfs", P),
                ("a", "vol-1", "2026-01-10T04:00:00Z", "gfs", C),
                ("e", "vol-1", "2026-01-09T20:00:00Z", "gfs", E),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "gfs", C),
                ("c", "vol-1", "2026-01-08T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Day, N(2))],
            kept: vec!["p", "a", "b"],
            reasons: vec![
                ("p", "pending"),
                ("a", "newest of volume; gfs daily 1/2"),
                ("b", "gfs daily 2/2"),
                ("e", "error state"),
            ],
            ..Case::default()
        },
        Case {
            // A pinned snapshot is counted like any other (as restic counts --keep-tag ones) and kept regardless.
            name: "pinned snapshots count for their bucket and are kept outside it",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "gfs", C),
                ("b!", "vol-1", "2026-01-09T20:00:00Z", "gfs", C),
                ("c", "vol-1", "2026-01-09T04:00:00Z", "gfs", C),
                ("d!", "vol-1", "2026-01-01T04:00:00Z", "gfs", C),
                ("e", "vol-1", "2025-12-31T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Day, N(2))],
            kept: vec!["a", "b", "d"],
            reasons: vec![("b", "pinned; gfs daily 2/2"), ("d", "pinned")],
            ..Case::default()
        },
        Case {
            name: "rules combine as a union; each reports its rank",
            rows: vec![
                ("a", "vol-1", "2026-02-02T04:00:00Z", "gfs", C), // Mon, W06
                ("b", "vol-1", "2026-02-01T04:00:00Z", "gfs", C), // Sun, W05; last of January
                ("c", "vol-1", "2026-01-31T04:00:00Z", "gfs", C),
                ("d", "vol-1", "2026-01-25T04:00:00Z", "gfs", C), // Sun, W04
                ("e", "vol-1", "2025-12-31T04:00:00Z", "gfs", C),
            ],
            schedules: vec![with(
                with(cal(Period::Day, N(2)), Period::Week, N(3)),
                Period::Month,
                N(3),
            )],
            kept: vec!["a", "b", "c", "d", "e"],
            reasons: vec![
                (
                    "a",
                    "newest of volume; gfs daily 1/2; gfs weekly 1/3; gfs monthly 1/3",
                ),
                ("b", "gfs daily 2/2; gfs weekly 2/3"),
                ("c", "gfs monthly 2/3"),
                ("d", "gfs weekly 3/3"),
                ("e", "gfs monthly 3/3"),
            ],
            ..Case::default()
        },
        Case {
            name: "calendar rules next to a count tag",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "gfs", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "gfs", C),
                ("c", "vol-1", "2025-12-09T04:00:00Z", "gfs", C),
                ("d", "vol-1", "2025-12-08T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Month, N(2)).count_tag()],
            counts: vec![("vol-1", "gfs", 1)],
            kept: vec!["a", "c"],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn within_calendar_windows() {
    let cases = [
        Case {
            name: "within-daily keeps each day's newest inside the window, boundary inclusive",
            rows: vec![
                ("a", "vol-1", "2026-01-10T12:00:00Z", "gfs", C),
                ("a2", "vol-1", "2026-01-10T06:00:00Z", "gfs", C),
                ("b", "vol-1", "2026-01-09T18:00:00Z", "gfs", C),
                ("b2", "vol-1", "2026-01-09T06:00:00Z", "gfs", C),
                ("c", "vol-1", "2026-01-08T18:00:00Z", "gfs", C),
                ("c2", "vol-1", "2026-01-08T12:00:00Z", "gfs", C),
                ("c3", "vol-1", "2026-01-08T06:00:00Z", "gfs", C),
                ("d", "vol-1", "2026-01-07T12:00:00Z", "gfs", C),
            ],
            schedules: vec![window(sched("gfs"), Period::Day, days(2))],
            kept: vec!["a", "b", "c"],
            reasons: vec![("c", "gfs within-daily 2d"), ("c2", "expired")],
            ..Case::default()
        },
        Case {
            name: "measured from the newest, not from now",
            rows: vec![
                ("a", "vol-1", "2026-01-10T12:00:00Z", "gfs", C),
                ("b", "vol-1", "2025-12-20T12:00:00Z", "gfs", C),
                ("c", "vol-1", "2025-10-20T12:00:00Z", "gfs", C),
            ],
            schedules: vec![window(sched("gfs"), Period::Month, days(60))],
            kept: vec!["a", "b"],
            reasons: vec![("b", "gfs within-monthly 60d")],
            ..Case::default()
        },
        Case {
            name: "a window past the oldest keeps the oldest too",
            rows: vec![
                ("a", "vol-1", "2026-01-10T12:00:00Z", "gfs", C),
                ("a2", "vol-1", "2026-01-10T06:00:00Z", "gfs", C),
                ("b", "vol-1", "2026-01-09T18:00:00Z", "gfs", C),
                ("b2", "vol-1", "2026-01-09T06:00:00Z", "gfs", C),
            ],
            schedules: vec![window(sched("gfs"), Period::Day, days(30))],
            kept: vec!["a", "b", "b2"],
            reasons: vec![("b2", "gfs within-daily 30d oldest")],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

// ---- orphans ----

fn orphan_rows() -> Vec<Row> {
    vec![
        ("a1", "vol-1", "2030-05-30T04:00:00Z", "gfs", C),
        ("a2", "vol-1", "2030-05-29T04:00:00Z", "gfs", C),
        ("o1", "vol-gone", "2030-03-01T04:00:00Z", "gfs", C), // 92 days before NOW
        ("o2!", "vol-gone", "2030-02-28T04:00:00Z", "gfs", C),
        ("o3", "vol-gone", "2030-02-27T04:00:00Z", "gfs", C),
        ("oe", "vol-gone", "2030-02-26T04:00:00Z", "gfs", E),
    ]
}

#[test]
fn orphans() {
    let cases = [
        Case {
            name: "targeting unknown: nothing is an orphan",
            rows: orphan_rows(),
            schedules: vec![cal(Period::Day, N(1))],
            orphans: OrphanPolicy::ExpireAfter(days(1)),
            kept: vec!["a1", "o1", "o2"],
            ..Case::default()
        },
        Case {
            name: "keep-rules: the orphan's newest stays forever",
            rows: orphan_rows(),
            schedules: vec![cal(Period::Day, N(1))],
            targeted: Some(vec!["vol-1"]),
            kept: vec!["a1", "o1", "o2"],
            reasons: vec![("o1", "newest of volume; gfs daily 1/1"), ("o3", "expired")],
            ..Case::default()
        },
        Case {
            name: "keep-all keeps every snapshot but error ones",
            rows: orphan_rows(),
            schedules: vec![cal(Period::Day, N(1))],
            targeted: Some(vec!["vol-1"]),
            orphans: OrphanPolicy::KeepAll,
            kept: vec!["a1", "o1", "o2", "o3"],
            reasons: vec![
                ("o3", "orphan: keep-all"),
                ("o1", "newest of volume; gfs daily 1/1; orphan: keep-all"),
                ("oe", "error state"),
                ("a2", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "expire-after 90d: 92 days without a snapshot deletes all but pinned",
            rows: orphan_rows(),
            schedules: vec![cal(Period::Day, N(1))],
            targeted: Some(vec!["vol-1"]),
            orphans: OrphanPolicy::ExpireAfter(days(90)),
            kept: vec!["a1", "o2"],
            reasons: vec![
                ("o1", "orphan expired after 90d"),
                ("o2", "pinned"),
                ("o3", "orphan expired after 90d"),
                ("oe", "error state"),
            ],
            ..Case::default()
        },
        Case {
            name: "expire-after 93d: not yet, keep-rules apply",
            rows: orphan_rows(),
            schedules: vec![cal(Period::Day, N(1))],
            targeted: Some(vec!["vol-1"]),
            orphans: OrphanPolicy::ExpireAfter(days(93)),
            kept: vec!["a1", "o1", "o2"],
            ..Case::default()
        },
        Case {
            name: "an expired orphan keeps its pending snapshots",
            rows: vec![
                ("p", "vol-gone", "2030-03-02T04:00:00Z", "gfs", P),
                ("o1", "vol-gone", "2030-03-01T04:00:00Z", "gfs", C),
            ],
            schedules: vec![cal(Period::Day, N(1))],
            targeted: Some(vec![]),
            orphans: OrphanPolicy::ExpireAfter(days(30)),
            kept: vec!["p"],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);

    // The orphan flag marks every decision of an untargeted volume, and only when targeting is known.
    let mut case = Case {
        rows: orphan_rows(),
        schedules: vec![cal(Period::Day, N(1))],
        targeted: Some(vec!["vol-1"]),
        ..Case::default()
    };
    for d in run(&case) {
        assert_eq!(d.orphan, &*d.volume_id == "vol-gone", "{d:?}");
    }
    case.targeted = None;
    assert!(run(&case).iter().all(|d| !d.orphan));
}

// ---- caps ----

fn daily_rows(volume: &'static str, ids: &[&'static str]) -> Vec<Row> {
    const SLOTS: [&str; 6] = [
        "2026-01-10T04:00:00Z",
        "2026-01-09T04:00:00Z",
        "2026-01-08T04:00:00Z",
        "2026-01-07T04:00:00Z",
        "2026-01-06T04:00:00Z",
        "2026-01-05T04:00:00Z",
    ];
    ids.iter()
        .zip(SLOTS)
        .map(|(&id, slot)| (id, volume, slot, "gfs", C))
        .collect()
}

#[test]
fn deletion_caps() {
    let rows = || {
        let mut r = daily_rows("vol-1", &["a1", "a2", "a3", "a4"]);
        r.extend(daily_rows("vol-2", &["b1", "b2", "b3"]));
        r
    };
    let caps = |n: Option<u32>, f: Option<f64>| Caps {
        max_deletes_per_run: n,
        max_delete_fraction: f,
    };

    // 3 deletes: a3, a4, b3.
    let within = Case {
        rows: rows(),
        schedules: vec![cal(Period::Day, N(2))],
        caps: caps(Some(3), Some(0.5)),
        kept: vec!["a1", "a2", "b1", "b2"],
        ..Case::default()
    };
    check(&within);
    assert_eq!(run_plan(&within).cap_hit, None);

    let over_absolute = Case {
        caps: caps(Some(2), None),
        kept: vec!["a1", "a2", "a3", "a4", "b1", "b2", "b3"],
        reasons: vec![
            ("a3", "over deletion cap"),
            ("a1", "newest of volume; gfs daily 1/2"),
        ],
        ..within
    };
    check(&over_absolute);
    let hit = run_plan(&over_absolute).cap_hit.expect("cap hit");
    assert_eq!(hit.setting, "max-deletes-per-run");
    assert_eq!((hit.limit.as_str(), hit.needed.as_str()), ("2", "3"));
    assert!(
        hit.message.contains("raise max-deletes-per-run to 3"),
        "{}",
        hit.message
    );

    // vol-1 would lose 2 of 4 (0.5) and vol-2 1 of 3 (0.33), both over 0.3; the advice covers the worst.
    let over_fraction = Case {
        caps: caps(None, Some(0.3)),
        ..over_absolute
    };
    check(&over_fraction);
    let hit = run_plan(&over_fraction).cap_hit.expect("cap hit");
    assert_eq!(hit.setting, "max-delete-fraction");
    assert_eq!(
        (hit.limit.as_str(), hit.needed.as_str()),
        ("0.3", "0.5"),
        "{hit:?}"
    );
    assert!(
        hit.message.contains("2 of the 4 snapshots of volume vol-1"),
        "{}",
        hit.message
    );
    let through = Case {
        caps: caps(None, Some(0.5)),
        kept: vec!["a1", "a2", "b1", "b2"],
        reasons: vec![],
        ..over_fraction
    };
    check(&through);

    // 7 of 9 is 0.777…: the advice rounds up to whole percent.
    let nine = Case {
        rows: (0..9)
            .map(|i| {
                let id: &'static str = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"][i];
                let slot: &'static str = [
                    "2026-01-09T04:00:00Z",
                    "2026-01-08T04:00:00Z",
                    "2026-01-07T04:00:00Z",
                    "2026-01-06T04:00:00Z",
                    "2026-01-05T04:00:00Z",
                    "2026-01-04T04:00:00Z",
                    "2026-01-03T04:00:00Z",
                    "2026-01-02T04:00:00Z",
                    "2026-01-01T04:00:00Z",
                ][i];
                (id, "vol-1", slot, "gfs", C)
            })
            .collect(),
        schedules: vec![cal(Period::Day, N(2))],
        caps: caps(None, Some(0.7)),
        kept: vec!["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"],
        ..Case::default()
    };
    check(&nine);
    let hit = run_plan(&nine).cap_hit.expect("cap hit");
    assert_eq!(hit.needed, "0.78");
    let nine_through = Case {
        caps: caps(None, Some(0.78)),
        kept: vec!["s0", "s1"],
        ..nine
    };
    check(&nine_through);

    // Error snapshots and expired orphans are deleted whole on purpose: they count toward the absolute cap only.
    let junk = Case {
        rows: vec![
            ("a", "vol-1", "2026-01-10T04:00:00Z", "gfs", C),
            ("e1", "vol-1", "2026-01-09T04:00:00Z", "gfs", E),
            ("e2", "vol-1", "2026-01-08T04:00:00Z", "gfs", E),
            ("o1", "vol-gone", "2026-01-10T04:00:00Z", "gfs", C),
            ("o2", "vol-gone", "2026-01-09T04:00:00Z", "gfs", C),
        ],
        schedules: vec![cal(Period::Day, N(2))],
        targeted: Some(vec!["vol-1"]),
        orphans: OrphanPolicy::ExpireAfter(days(30)),
        caps: caps(Some(4), Some(0.1)),
        kept: vec!["a"],
        ..Case::default()
    };
    check(&junk);
    let junk_over = Case {
        caps: caps(Some(3), Some(0.1)),
        kept: vec!["a", "e1", "e2", "o1", "o2"],
        ..junk
    };
    check(&junk_over);
    assert_eq!(
        run_plan(&junk_over).cap_hit.map(|h| h.setting),
        Some("max-deletes-per-run")
    );
}

#[test]
fn calendar_reason_labels_and_text() {
    let s = || Arc::<str>::from("gfs");
    let table = [
        (
            Reason::Calendar {
                schedule: s(),
                period: Period::Day,
                rank: 3,
                of: Some(7),
            },
            "daily",
            "gfs daily 3/7",
        ),
        (
            Reason::Calendar {
                schedule: s(),
                period: Period::Week,
                rank: 1,
                of: None,
            },
            "weekly",
            "gfs weekly 1/all",
        ),
        (
            Reason::Calendar {
                schedule: s(),
                period: Period::Quarter,
                rank: 2,
                of: Some(4),
            },
            "quarterly",
            "gfs quarterly 2/4",
        ),
        (
            Reason::WithinCalendar {
                schedule: s(),
                period: Period::Day,
                window: days(30),
            },
            "within-daily",
            "gfs within-daily 30d",
        ),
        (
            Reason::WithinCalendar {
                schedule: s(),
                period: Period::Hour,
                window: hours(36),
            },
            "within-hourly",
            "gfs within-hourly 36h",
        ),
        (
            Reason::Oldest {
                schedule: s(),
                period: Period::Year,
                window: None,
            },
            "oldest",
            "gfs yearly oldest",
        ),
        (
            Reason::Oldest {
                schedule: s(),
                period: Period::Month,
                window: Some(days(90)),
            },
            "oldest",
            "gfs within-monthly 90d oldest",
        ),
        (Reason::OrphanKeepAll, "orphan-keep-all", "orphan: keep-all"),
        (Reason::OverCap, "over-cap", "over deletion cap"),
        (
            Reason::OrphanExpired { after: days(90) },
            "orphan-expired",
            "orphan expired after 90d",
        ),
    ];
    for (reason, label, text) in table {
        assert_eq!(reason.as_str(), label, "{reason:?}");
        assert_eq!(reason.to_string(), text, "{reason:?}");
    }
    let labels: Vec<&str> = Period::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        labels,
        [
            "hourly",
            "daily",
            "weekly",
            "monthly",
            "quarterly",
            "yearly"
        ]
    );
    for p in Period::ALL {
        assert_eq!(p.within_str(), format!("within-{}", p.as_str()));
    }
    assert_eq!(Count::All.to_string(), "all");
    assert_eq!(Count::N(7).to_string(), "7");
}

#[test]
fn keep_rules_with_only_calendar_rules_are_not_empty() {
    for p in Period::ALL {
        let mut k = KeepRules::default();
        *k.count_mut(p) = Some(Count::N(1));
        assert!(!k.is_empty(), "{p:?}");
        assert_eq!(k.count(p), Some(Count::N(1)));
        let mut k = KeepRules::default();
        *k.window_mut(p) = Some(days(1));
        assert!(!k.is_empty(), "{p:?}");
        assert_eq!(k.window(p), Some(days(1)));
    }
}

// ---- property tests ----

const TZS: [Tz; 3] = [chrono_tz::UTC, Berlin, New_York];

/// Bucket keys written independently of `rules::bucket`, as plain tuples.
fn key(period: Period, t: NaiveDateTime) -> (i32, u32, u32, u32) {
    let d = t.date();
    match period {
        Period::Hour => (d.year(), d.month(), d.day(), t.hour() + 1),
        Period::Day => (d.year(), d.month(), d.day(), 0),
        Period::Week => (d.iso_week().year(), d.iso_week().week(), 0, 0),
        Period::Month => (d.year(), d.month(), 0, 0),
        Period::Quarter => (d.year(), 1 + d.month0() / 3, 0, 0),
        Period::Year => (d.year(), 0, 0, 0),
    }
}

fn count_strategy() -> impl Strategy<Value = Option<Count>> {
    prop_oneof![
        4 => Just(None),
        3 => (1u32..6).prop_map(|n| Some(Count::N(n))),
        1 => Just(Some(Count::All)),
    ]
}

fn calendar_rules_strategy(name: &'static str) -> impl Strategy<Value = ScheduleRules> {
    (
        proptest::collection::vec(count_strategy(), 6),
        proptest::collection::vec(
            proptest::option::weighted(0.15, (1u64..24 * 60).prop_map(hours)),
            6,
        ),
        proptest::option::weighted(0.2, 1u32..4),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.3),
    )
        .prop_map(
            move |(counts, windows, last, count_from_tag, app_consistent_only)| {
                let mut s = sched(name);
                for (i, p) in Period::ALL.into_iter().enumerate() {
                    *s.keep.count_mut(p) = counts[i];
                    *s.keep.window_mut(p) = windows[i];
                }
                s.keep.last = last;
                s.keep.app_consistent_only = app_consistent_only;
                s.count_from_tag = count_from_tag;
                s
            },
        )
}

fn orphans_strategy() -> impl Strategy<Value = OrphanPolicy> {
    prop_oneof![
        Just(OrphanPolicy::KeepRules),
        Just(OrphanPolicy::KeepAll),
        (1u64..400).prop_map(|d| OrphanPolicy::ExpireAfter(days(d))),
    ]
}

fn caps_strategy() -> impl Strategy<Value = Caps> {
    (
        proptest::option::weighted(0.3, 0u32..20),
        proptest::option::weighted(0.3, (1u32..=10).prop_map(|t| f64::from(t) / 10.0)),
    )
        .prop_map(|(max_deletes_per_run, max_delete_fraction)| Caps {
            max_deletes_per_run,
            max_delete_fraction,
        })
}

/// Up to 60 snapshots over about 40 days (dense) or 3 years (sparse), in one of three timezones.
fn calendar_world() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec(snap_strategy(), 0..60),
        prop_oneof![Just(1i64), Just(27i64)],
        calendar_rules_strategy("daily"),
        calendar_rules_strategy("weekly"),
        proptest::collection::vec((0..VOLUMES.len(), 0..2usize, 1u32..6), 0..6),
        proptest::collection::vec(proptest::bool::weighted(0.1), VOLUMES.len()),
        0..TZS.len(),
        proptest::option::of(proptest::collection::vec(any::<bool>(), VOLUMES.len())),
        orphans_strategy(),
        caps_strategy(),
    )
        .prop_map(
            |(raw, spread, daily, weekly, counts, frozen, tz, targeted, orphans, caps)| {
                // Starts just before a fall-back night in both DST zones' autumn, so DST days show up often.
                let base = at("2025-10-20T00:00:00Z");
                let snapshots = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (v, h, listed, state, pinned, app_consistent))| Snap {
                        id: format!("snap-{i:03}").into(),
                        volume_id: VOLUMES[v].into(),
                        slot: base + chrono::TimeDelta::minutes(h * spread * 60 + (h * 7) % 60),
                        schedules: SCHEDULE_NAMES
                            .iter()
                            .zip(listed)
                            .filter(|(_, on)| *on)
                            .map(|(n, _)| Arc::from(*n))
                            .collect(),
                        state,
                        pinned,
                        app_consistent,
                        group: Group::Volume,
                        started: i as u32,
                    })
                    .collect();
                World {
                    snapshots,
                    schedules: vec![daily, weekly],
                    counts: counts
                        .into_iter()
                        .map(|(v, s, n)| {
                            ((VOLUMES[v].to_string(), SCHEDULE_NAMES[s].to_string()), n)
                        })
                        .collect(),
                    frozen: VOLUMES
                        .iter()
                        .zip(frozen)
                        .filter(|(_, f)| *f)
                        .map(|(v, _)| v.to_string())
                        .collect(),
                    tz: TZS[tz],
                    targeted: targeted.map(|t| {
                        VOLUMES
                            .iter()
                            .zip(t)
                            .filter(|(_, on)| *on)
                            .map(|(v, _)| v.to_string())
                            .collect()
                    }),
                    orphans,
                    caps,
                }
            },
        )
}

fn cal_now() -> DateTime<Utc> {
    at("2029-01-01T00:00:00Z")
}

fn is_orphan(world: &World, volume: &str) -> bool {
    world.targeted.as_ref().is_some_and(|t| !t.contains(volume))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Each calendar count rule keeps the newest snapshot of each of its min(N, buckets) most recent buckets —
    /// unless the volume is an expired orphan, or a cap holds everything back (then more is kept, not less).
    #[test]
    fn calendar_rules_keep_the_newest_of_each_recent_bucket(mut world in calendar_world()) {
        world.orphans = OrphanPolicy::KeepRules;
        let decisions = world.plan(cal_now());
        let kept: HashSet<&str> =
            decisions.iter().filter(|d| d.action == Action::Keep).map(|d| &*d.snapshot_id).collect();
        for volume in VOLUMES {
            for schedule in &world.schedules {
                let mut completed: Vec<&Snap> = world
                    .snapshots
                    .iter()
                    .filter(|s| &*s.volume_id == volume && s.state == C && s.schedules.contains(&schedule.name))
                    .collect();
                // A repeat of a slot (same schedule list) is set aside: an app-consistent one stands for it, else
                // the first started. An app-consistent-only schedule then sees only the app-consistent ones.
                completed.sort_by_key(|s| (s.slot, s.schedules.clone(), !s.app_consistent, s.started));
                completed.dedup_by(|b, a| (a.slot, &a.schedules) == (b.slot, &b.schedules));
                completed.retain(|s| s.app_consistent || !schedule.keep.app_consistent_only);
                completed.sort_by(|a, b| b.slot.cmp(&a.slot).then_with(|| a.id.cmp(&b.id)));
                for period in Period::ALL {
                    let Some(count) = schedule.keep.count(period) else { continue };
                    // bucket -> its newest snapshot, in order of first appearance (newest bucket first)
                    let mut heads: Vec<&Snap> = Vec::new();
                    let mut seen = HashSet::new();
                    for s in &completed {
                        if seen.insert(key(period, s.slot.with_timezone(&world.tz).naive_local())) {
                            heads.push(s);
                        }
                    }
                    let n = match count { Count::N(n) => n as usize, Count::All => usize::MAX };
                    let want = n.min(heads.len());
                    for head in &heads[..want] {
                        prop_assert!(kept.contains(&*head.id),
                            "{volume} {} {:?}: bucket head {} not kept", schedule.name, period, head.id);
                    }
                    let kept_count = completed.iter().filter(|s| kept.contains(&*s.id)).count();
                    prop_assert!(kept_count >= want);
                }
            }
        }
    }

    #[test]
    fn rails_hold_with_calendar_rules_orphans_and_caps(world in calendar_world()) {
        let plan = world.full_plan(cal_now());
        prop_assert_eq!(plan.decisions.len(), world.snapshots.len());
        let by_id: HashMap<&str, &Snap> = world.snapshots.iter().map(|s| (&*s.id, s)).collect();
        let mut newest: BTreeMap<&str, &Snap> = BTreeMap::new();
        for s in world.snapshots.iter().filter(|s| s.state == C && !is_repeat(&world.snapshots, s)) {
            let e = newest.entry(&*s.volume_id).or_insert(s);
            if (s.slot, std::cmp::Reverse(&s.id)) > (e.slot, std::cmp::Reverse(&e.id)) {
                *e = s;
            }
        }
        for d in &plan.decisions {
            let snap = by_id[&*d.snapshot_id];
            prop_assert!(!d.reasons.is_empty(), "{:?}", d);
            prop_assert_eq!(d.orphan, is_orphan(&world, &d.volume_id));
            if d.action == Action::Delete {
                prop_assert!(!snap.pinned && snap.state != P, "{:?}", d);
                prop_assert!(!world.frozen.contains(&*d.volume_id), "{:?}", d);
                let newest_of_volume = newest.get(&*d.volume_id).is_some_and(|n| n.id == snap.id);
                // Only an expired orphan loses its newest snapshot.
                if newest_of_volume {
                    prop_assert!(matches!(d.reasons[..], [Reason::OrphanExpired { .. }]), "{:?}", d);
                }
                prop_assert!(matches!(d.reasons[..],
                    [Reason::Expired] | [Reason::NotAppConsistent { .. }] | [Reason::ErrorState]
                    | [Reason::OrphanExpired { .. }] | [Reason::Duplicate]),
                    "{:?}", d);
            } else {
                prop_assert!(!d.reasons.iter().any(|r| matches!(r,
                    Reason::Expired | Reason::NotAppConsistent { .. } | Reason::ErrorState
                    | Reason::OrphanExpired { .. } | Reason::Duplicate)),
                    "{:?}", d);
            }
        }
        match &plan.cap_hit {
            Some(hit) => {
                prop_assert!(plan.decisions.iter().all(|d| d.action == Action::Keep));
                prop_assert!(plan.decisions.iter().any(|d| d.reasons == [Reason::OverCap]));
                prop_assert!(hit.message.contains(hit.setting) && hit.message.contains(&hit.needed));
            }
            None => {
                prop_assert!(!plan.decisions.iter().any(|d| d.reasons.contains(&Reason::OverCap)));
                let deletes = plan.deletes().count();
                if let Some(max) = world.caps.max_deletes_per_run {
                    prop_assert!(deletes <= max as usize);
                }
            }
        }
    }

    /// With a cap exceeded nothing is deleted, and the advised value really lets the same plan through.
    #[test]
    fn over_a_cap_nothing_is_deleted_and_the_advice_works(mut world in calendar_world()) {
        let uncapped = {
            let mut w = world.clone();
            w.caps = Caps::default();
            w.full_plan(cal_now())
        };
        let plan = world.full_plan(cal_now());
        let Some(hit) = plan.cap_hit.clone() else { return Ok(()) };
        prop_assert!(plan.deletes().next().is_none());
        prop_assert!(uncapped.deletes().next().is_some());
        match hit.setting {
            "max-deletes-per-run" => world.caps.max_deletes_per_run = Some(hit.needed.parse().unwrap()),
            "max-delete-fraction" => world.caps.max_delete_fraction = Some(hit.needed.parse().unwrap()),
            other => prop_assert!(false, "unknown setting {other}"),
        }
        // Raising one setting may reveal the other; raising both as advised lets the plan through.
        if let Some(next) = world.full_plan(cal_now()).cap_hit {
            prop_assert_ne!(next.setting, hit.setting);
            match next.setting {
                "max-deletes-per-run" => world.caps.max_deletes_per_run = Some(next.needed.parse().unwrap()),
                _ => world.caps.max_delete_fraction = Some(next.needed.parse().unwrap()),
            }
        }
        let through = world.full_plan(cal_now());
        prop_assert_eq!(through.cap_hit, None);
        prop_assert_eq!(through.decisions, uncapped.decisions);
    }

    #[test]
    fn idempotent_with_calendar_rules(world in calendar_world()) {
        let first = world.full_plan(cal_now());
        let deleted: HashSet<&str> = first.deletes().map(|d| &*d.snapshot_id).collect();
        let mut after = world.clone();
        after.snapshots.retain(|s| !deleted.contains(&*s.id));
        let second = after.full_plan(cal_now());
        prop_assert!(second.deletes().next().is_none(), "{:?}", second);
        // The same snapshots for the same reasons, except that a within-* window may now reach the oldest
        // remaining snapshot and add `Oldest` to it (restic's rule; it was kept anyway).
        let kept: Vec<Decision> = first.decisions.into_iter().filter(|d| d.action == Action::Keep).collect();
        prop_assert_eq!(second.decisions.len(), kept.len());
        for (again, before) in second.decisions.iter().zip(&kept) {
            let mut reasons = again.reasons.clone();
            reasons.retain(|r| !matches!(r, Reason::Oldest { window: Some(_), .. }) || before.reasons.contains(r));
            prop_assert_eq!(&reasons, &before.reasons);
            prop_assert_eq!((&again.snapshot_id, again.action, again.orphan), (&before.snapshot_id, before.action, before.orphan));
        }
    }

    #[test]
    fn independent_of_now_without_expire_after(
        mut world in calendar_world(),
        keep_all in any::<bool>(),
        a in 0i64..10_000,
        b in 0i64..10_000,
    ) {
        if matches!(world.orphans, OrphanPolicy::ExpireAfter(_)) {
            world.orphans = if keep_all { OrphanPolicy::KeepAll } else { OrphanPolicy::KeepRules };
        }
        let at = |days: i64| cal_now() + chrono::TimeDelta::days(days);
        prop_assert_eq!(world.full_plan(at(a)), world.full_plan(at(b)));
    }
}

/// Zones whose offsets differ in every way a bucket can notice: none, whole hours, half hours (Kolkata, Lord
/// Howe's half-hour DST), Chatham's quarter hours, +14 hours, St. John's falling back at 00:01 to 23:01 the day
/// before (until 2011), Apia skipping 2011-12-30, and the local mean times of every zone before standard time.
const KEY_TZS: [Tz; 9] = [
    chrono_tz::UTC,
    Berlin,
    New_York,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Pacific::Chatham,
    chrono_tz::America::St_Johns,
    chrono_tz::Pacific::Apia,
    chrono_tz::Etc::GMTMinus14,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The planner's arithmetic bucket keys put two instants in one period exactly when chrono's calendar (the
    /// independent tuple keys of `key`) does. One `Calendar` sees every instant in random order, as it does across
    /// the volumes of a plan, so the month it remembers is checked in both directions too.
    #[test]
    fn bucket_keys_agree_with_chrono(
        tz in 0..KEY_TZS.len(),
        // Mostly 1890–2040, where zones have their changes, else ±3,000 years around 1970; then clusters within
        // ±45 days of that, to the second.
        base in prop_oneof![3 => -2_500_000_000i64..2_200_000_000, 1 => -95_000_000_000i64..95_000_000_000],
        offsets in proptest::collection::vec(-3_900_000i64..3_900_000, 1..40),
        nanos in 0u32..1_000_000_000,
    ) {
        let tz = KEY_TZS[tz];
        let mut calendar = rules::Calendar::new(tz);
        let times: Vec<(NaiveDateTime, [i64; 6])> = offsets
            .iter()
            .map(|&o| {
                let slot = DateTime::from_timestamp(base + o, nanos).expect("in chrono's range");
                (slot.with_timezone(&tz).naive_local(), calendar.keys(slot))
            })
            .collect();
        for (a, ka) in &times {
            for (b, kb) in &times {
                for period in Period::ALL {
                    prop_assert_eq!(
                        ka[period as usize] == kb[period as usize],
                        key(period, *a) == key(period, *b),
                        "{:?} of {} and {} in {}", period, a, b, tz
                    );
                }
            }
        }
    }
}
