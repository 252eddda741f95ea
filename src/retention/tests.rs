//! Table tests (one group per rule and rail, expected keep sets worked out by hand) and property tests over
//! random policies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;

use super::*;

const C: SnapState = SnapState::Completed;
const P: SnapState = SnapState::Pending;
const E: SnapState = SnapState::Error;

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

/// `(id, volume, slot, "daily,weekly", state)`; ids ending in `!` are pinned (the `!` is dropped).
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    SnapState,
);

/// Snapshots started in row order (`started` is the row's index): of two rows with one volume, slot and schedule
/// list, the first is the older. A volume `copy-of:…` is a copy's group, one starting with `vol-ffffffff:` an
/// unplaced copy's.
fn snaps(rows: &[Row]) -> Vec<Snap> {
    rows.iter()
        .enumerate()
        .map(|(i, &(id, volume, slot, schedules, state))| Snap {
            id: id.trim_end_matches('!').into(),
            volume_id: volume.into(),
            slot: at(slot),
            schedules: schedules
                .split(',')
                .filter(|s| !s.is_empty())
                .map(Arc::from)
                .collect(),
            state,
            pinned: id.ends_with('!'),
            app_consistent: false,
            group: if volume.starts_with("copy-of:") {
                Group::Copy
            } else if volume.starts_with("vol-ffffffff:") {
                Group::Unplaced
            } else {
                Group::Volume
            },
            started: i as u32,
        })
        .collect()
}

fn sched(name: &str) -> ScheduleRules {
    ScheduleRules {
        name: name.into(),
        keep: KeepRules::default(),
        count_from_tag: false,
    }
}

trait Build {
    fn last(self, n: u32) -> Self;
    fn within(self, d: Duration) -> Self;
    fn all(self) -> Self;
    fn count_tag(self) -> Self;
}

impl Build for ScheduleRules {
    fn last(mut self, n: u32) -> Self {
        self.keep.last = Some(n);
        self
    }
    fn within(mut self, d: Duration) -> Self {
        self.keep.within = Some(d);
        self
    }
    fn all(mut self) -> Self {
        self.keep.all = true;
        self
    }
    fn count_tag(mut self) -> Self {
        self.count_from_tag = true;
        self
    }
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

fn days(d: u64) -> Duration {
    hours(d * 24)
}

#[derive(Default)]
struct Case {
    name: &'static str,
    rows: Vec<Row>,
    schedules: Vec<ScheduleRules>,
    counts: Vec<(&'static str, &'static str, u32)>,
    frozen: Vec<&'static str>,
    /// `None`: UTC.
    tz: Option<chrono_tz::Tz>,
    /// `None`: targeting unknown.
    targeted: Option<Vec<&'static str>>,
    orphans: OrphanPolicy,
    caps: Caps,
    kept: Vec<&'static str>,
    /// Reasons (Display form, joined with "; ") expected on particular snapshots.
    reasons: Vec<(&'static str, &'static str)>,
    /// Ids of the snapshots tagged `snapwarden:app-consistent = true`; the others are not.
    consistent: Vec<&'static str>,
}

/// The `now` every table case is planned at, long after its slots.
const NOW: &str = "2030-06-01T00:00:00Z";

fn run(case: &Case) -> Vec<Decision> {
    run_plan(case).decisions
}

fn run_plan(case: &Case) -> Plan {
    let mut snapshots = snaps(&case.rows);
    for s in &mut snapshots {
        s.app_consistent = case.consistent.contains(&&*s.id);
    }
    let counts: HashMap<(String, String), u32> = case
        .counts
        .iter()
        .map(|&(v, s, n)| ((v.to_string(), s.to_string()), n))
        .collect();
    let frozen: HashSet<String> = case.frozen.iter().map(|v| v.to_string()).collect();
    let targeted: Option<HashSet<String>> = case
        .targeted
        .as_ref()
        .map(|t| t.iter().map(|v| v.to_string()).collect());
    let input = PlanInput {
        held: &crate::retention::NOTHING_HELD,
        snapshots: &snapshots,
        schedules: &case.schedules,
        counts: &counts,
        frozen_volumes: &frozen,
        tz: case.tz.unwrap_or(chrono_tz::UTC),
        targeted: targeted.as_ref(),
        orphans: case.orphans,
        caps: case.caps,
    };
    plan(&input, at(NOW))
}

fn check(case: &Case) {
    let decisions = run(case);
    assert_eq!(
        decisions.len(),
        case.rows.len(),
        "{}: one decision per snapshot",
        case.name
    );
    let mut kept: Vec<&str> = decisions
        .iter()
        .filter(|d| d.action == Action::Keep)
        .map(|d| &*d.snapshot_id)
        .collect();
    kept.sort_unstable();
    let mut expected = case.kept.clone();
    expected.sort_unstable();
    assert_eq!(kept, expected, "{}: kept set\n{decisions:#?}", case.name);
    for &(id, want) in &case.reasons {
        let d = decisions
            .iter()
            .find(|d| &*d.snapshot_id == id)
            .unwrap_or_else(|| panic!("{}: no {id}", case.name));
        let got: Vec<String> = d.reasons.iter().map(Reason::to_string).collect();
        assert_eq!(got.join("; "), want, "{}: reasons of {id}", case.name);
    }
}

#[test]
fn keep_last() {
    let cases = [
        Case {
            name: "last 2 keeps the two newest",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "daily", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "daily", C),
                ("d", "vol-1", "2026-01-02T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2)],
            kept: vec!["a", "b"],
            reasons: vec![
                ("a", "newest of volume; daily last 1/2"),
                ("b", "daily last 2/2"),
                ("c", "expired"),
                ("d", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "input order does not matter",
            rows: vec![
                ("c", "vol-1", "2026-01-03T04:00:00Z", "daily", C),
                ("a", "vol-1", "2026-01-05T04:00:00Z", "daily", C),
                ("d", "vol-1", "2026-01-02T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2)],
            kept: vec!["a", "b"],
            ..Case::default()
        },
        Case {
            name: "counted per volume",
            rows: vec![
                ("a1", "vol-1", "2026-01-05T04:00:00Z", "daily", C),
                ("a2", "vol-1", "2026-01-04T04:00:00Z", "daily", C),
                ("b1", "vol-2", "2026-01-03T04:00:00Z", "daily", C),
                ("b2", "vol-2", "2026-01-02T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["a1", "b1"],
            ..Case::default()
        },
        Case {
            name: "pending and error are not counted",
            rows: vec![
                ("p", "vol-1", "2026-01-06T04:00:00Z", "daily", P),
                ("a", "vol-1", "2026-01-05T04:00:00Z", "daily", C),
                ("e", "vol-1", "2026-01-04T04:00:00Z", "daily", E),
                ("b", "vol-1", "2026-01-03T04:00:00Z", "daily", C),
                ("c", "vol-1", "2026-01-02T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2)],
            kept: vec!["p", "a", "b"],
            reasons: vec![
                ("p", "pending"),
                ("b", "daily last 2/2"),
                ("e", "error state"),
            ],
            ..Case::default()
        },
        Case {
            name: "equal slots tie-break by id",
            // Different schedule lists: two snapshots of one slot, not one repeated.
            rows: vec![
                ("b", "vol-1", "2026-01-05T04:00:00Z", "daily", C),
                ("a", "vol-1", "2026-01-05T04:00:00Z", "daily,weekly", C),
                ("c", "vol-1", "2026-01-04T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2), sched("weekly").last(0)],
            kept: vec!["a", "b"],
            reasons: vec![
                ("a", "newest of volume; daily last 1/2"),
                ("b", "daily last 2/2"),
            ],
            ..Case::default()
        },
        Case {
            name: "last 0 keeps only the newest rail",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(0)],
            kept: vec!["a"],
            reasons: vec![("a", "newest of volume")],
            ..Case::default()
        },
        Case {
            name: "across a year boundary",
            rows: vec![
                ("a", "vol-1", "2027-01-01T00:00:00Z", "daily", C),
                ("b", "vol-1", "2026-12-31T23:59:59Z", "daily", C),
                ("c", "vol-1", "2026-12-31T00:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2)],
            kept: vec!["a", "b"],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn keep_within() {
    let cases = [
        Case {
            name: "measured from the newest completed, boundary inclusive",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-05T04:00:00Z", "daily", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "daily", C),
                ("d", "vol-1", "2026-01-03T03:59:59Z", "daily", C),
            ],
            schedules: vec![sched("daily").within(days(7))],
            kept: vec!["a", "b", "c"],
            reasons: vec![("c", "daily within 7d"), ("d", "expired")],
            ..Case::default()
        },
        Case {
            // `now` in `run` is years after these slots: a creation outage must not erase history.
            name: "not measured from now",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").within(days(2))],
            kept: vec!["a", "b"],
            ..Case::default()
        },
        Case {
            name: "anchored at the newest completed of the schedule, not a pending one",
            rows: vec![
                ("p", "vol-1", "2026-01-20T04:00:00Z", "daily", P),
                ("e", "vol-1", "2026-01-19T04:00:00Z", "daily", E),
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
                ("c", "vol-1", "2026-01-07T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").within(hours(36))],
            kept: vec!["p", "a", "b"],
            reasons: vec![("b", "daily within 36h")],
            ..Case::default()
        },
        Case {
            name: "anchored per schedule: weekly's window starts at the newest weekly",
            rows: vec![
                ("d1", "vol-1", "2026-03-20T04:00:00Z", "daily", C),
                ("w1", "vol-1", "2026-03-01T04:00:00Z", "weekly", C),
                ("w2", "vol-1", "2026-02-22T04:00:00Z", "weekly", C),
                ("w3", "vol-1", "2026-02-15T04:00:00Z", "weekly", C),
            ],
            schedules: vec![sched("daily").last(1), sched("weekly").within(days(7))],
            kept: vec!["d1", "w1", "w2"],
            ..Case::default()
        },
        Case {
            name: "across a year boundary",
            rows: vec![
                ("a", "vol-1", "2027-01-01T00:00:00Z", "daily", C),
                ("b", "vol-1", "2026-12-30T00:00:00Z", "daily", C),
                ("c", "vol-1", "2026-12-29T23:59:59Z", "daily", C),
            ],
            schedules: vec![sched("daily").within(days(2))],
            kept: vec!["a", "b"],
            ..Case::default()
        },
        Case {
            name: "a window too large for chrono keeps everything",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "1970-01-01T00:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").within(Duration::from_secs(u64::MAX))],
            kept: vec!["a", "b"],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn keep_all_and_unions() {
    let cases = [
        Case {
            name: "all keeps every completed one; error still goes",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "yearly", C),
                ("b", "vol-1", "2016-01-10T04:00:00Z", "yearly", C),
                ("e", "vol-1", "2015-01-10T04:00:00Z", "yearly", E),
            ],
            schedules: vec![sched("yearly").all()],
            kept: vec!["a", "b"],
            reasons: vec![("b", "yearly all")],
            ..Case::default()
        },
        Case {
            name: "last and within combine as a union",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
                ("c", "vol-1", "2026-01-08T04:00:00Z", "daily", C),
                ("d", "vol-1", "2026-01-01T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1).within(days(1))],
            kept: vec!["a", "b"],
            reasons: vec![
                ("a", "newest of volume; daily last 1/1; daily within 1d"),
                ("b", "daily within 1d"),
            ],
            ..Case::default()
        },
        Case {
            name: "a snapshot of two schedules is kept if either keeps it",
            rows: vec![
                ("d1", "vol-1", "2026-01-12T04:00:00Z", "daily", C),
                ("d2", "vol-1", "2026-01-11T04:00:00Z", "daily", C),
                ("dw", "vol-1", "2026-01-10T04:00:00Z", "daily,weekly", C),
                ("w1", "vol-1", "2026-01-03T04:00:00Z", "weekly", C),
                ("w2", "vol-1", "2025-12-27T04:00:00Z", "weekly", C),
            ],
            schedules: vec![sched("daily").last(2), sched("weekly").last(2)],
            kept: vec!["d1", "d2", "dw", "w1"],
            reasons: vec![
                ("dw", "weekly last 1/2"),
                ("w1", "weekly last 2/2"),
                ("w2", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "both schedules keeping it are both reported, in name order",
            rows: vec![("dw", "vol-1", "2026-01-10T04:00:00Z", "weekly,daily", C)],
            schedules: vec![sched("weekly").last(1), sched("daily").last(3)],
            kept: vec!["dw"],
            reasons: vec![("dw", "newest of volume; daily last 1/3; weekly last 1/1")],
            ..Case::default()
        },
        Case {
            name: "a schedule listed twice on a snapshot counts it once",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily,daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
                ("c", "vol-1", "2026-01-08T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2)],
            kept: vec!["a", "b"],
            reasons: vec![("a", "newest of volume; daily last 1/2")],
            ..Case::default()
        },
        Case {
            // Config validation rejects duplicates; if one slips through, the plan must still be deterministic.
            name: "a schedule configured twice: the first wins",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
                ("c", "vol-1", "2026-01-08T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2), sched("daily").all()],
            kept: vec!["a", "b"],
            ..Case::default()
        },
        Case {
            name: "a schedule with no rules keeps only what the rails keep",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily")],
            kept: vec!["a"],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn count_from_tag() {
    let rows = vec![
        ("a1", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
        ("a2", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
        ("a3", "vol-1", "2026-01-08T04:00:00Z", "daily", C),
        ("b1", "vol-2", "2026-01-10T04:00:00Z", "daily", C),
        ("b2", "vol-2", "2026-01-09T04:00:00Z", "daily", C),
        ("b3", "vol-2", "2026-01-08T04:00:00Z", "daily", C),
        ("be", "vol-2", "2026-01-07T04:00:00Z", "daily", E),
    ];
    let cases = [
        Case {
            name: "the tag's count replaces keep.last; a volume without one keeps everything",
            rows: rows.clone(),
            // keep.last = 1 is ignored for a count-tag schedule
            schedules: vec![sched("daily").last(1).count_tag()],
            counts: vec![("vol-1", "daily", 2)],
            kept: vec!["a1", "a2", "b1", "b2", "b3"],
            reasons: vec![
                ("a2", "daily last 2/2"),
                ("b3", "daily count unknown"),
                // count unknown is about judging backups; a failed snapshot is never one
                ("be", "error state"),
            ],
            ..Case::default()
        },
        Case {
            name: "a count for another schedule does not count",
            rows: rows.clone(),
            schedules: vec![sched("daily").count_tag()],
            counts: vec![("vol-1", "weekly", 1), ("vol-2", "daily", 1)],
            kept: vec!["a1", "a2", "a3", "b1"],
            ..Case::default()
        },
        Case {
            name: "within still applies next to a count tag",
            rows: rows.clone(),
            schedules: vec![sched("daily").within(days(1)).count_tag()],
            counts: vec![("vol-1", "daily", 0), ("vol-2", "daily", 0)],
            kept: vec!["a1", "a2", "b1", "b2"],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn rails() {
    let cases = [
        Case {
            name: "pinned is kept however old, and so is a pinned error snapshot",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("old!", "vol-1", "2020-01-10T04:00:00Z", "daily", C),
                ("err!", "vol-1", "2020-01-09T04:00:00Z", "daily", E),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["a", "old", "err"],
            reasons: vec![("old", "pinned"), ("err", "pinned")],
            ..Case::default()
        },
        Case {
            name: "pinned and also kept by a rule reports both",
            rows: vec![("a!", "vol-1", "2026-01-10T04:00:00Z", "daily", C)],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["a"],
            reasons: vec![("a", "pinned; newest of volume; daily last 1/1")],
            ..Case::default()
        },
        Case {
            name: "pending is kept even of a removed schedule",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("p", "vol-1", "2020-01-10T04:00:00Z", "gone", P),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["a", "p"],
            reasons: vec![("p", "pending")],
            ..Case::default()
        },
        Case {
            name: "newest completed of the volume survives rules that keep nothing",
            rows: vec![
                ("p", "vol-1", "2026-01-11T04:00:00Z", "weekly", P),
                ("e", "vol-1", "2026-01-10T12:00:00Z", "daily", E),
                ("w", "vol-1", "2026-01-10T04:00:00Z", "weekly", C),
                ("d", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(0), sched("weekly").last(0)],
            kept: vec!["p", "w"],
            reasons: vec![
                ("w", "newest of volume"),
                ("d", "expired"),
                ("e", "error state"),
            ],
            ..Case::default()
        },
        Case {
            name: "newest is per volume",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-2", "2026-01-01T04:00:00Z", "daily", C),
                ("c", "vol-2", "2025-12-01T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(0)],
            kept: vec!["a", "b"],
            ..Case::default()
        },
        Case {
            name: "a frozen volume loses nothing, not even error snapshots",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
                ("e", "vol-1", "2026-01-08T04:00:00Z", "daily", E),
                ("x", "vol-2", "2026-01-10T04:00:00Z", "daily", C),
                ("y", "vol-2", "2026-01-09T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1)],
            frozen: vec!["vol-1"],
            kept: vec!["a", "b", "e", "x"],
            // only the snapshots the freeze saved say so
            reasons: vec![
                ("a", "newest of volume; daily last 1/1"),
                ("b", "volume failed this run"),
                ("e", "volume failed this run"),
                ("y", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "a removed schedule keeps its snapshots",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
                ("h1", "vol-1", "2026-01-08T04:00:00Z", "hourly", C),
                ("h2", "vol-1", "2026-01-07T04:00:00Z", "hourly,daily", C),
                ("he", "vol-1", "2026-01-06T04:00:00Z", "hourly", E),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["a", "h1", "h2"],
            reasons: vec![
                ("h1", "hourly schedule removed"),
                ("h2", "hourly schedule removed"),
                ("he", "error state"),
            ],
            ..Case::default()
        },
        Case {
            name: "a completed snapshot listing no schedule is kept",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
                ("b", "vol-1", "2026-01-09T04:00:00Z", "", C),
                ("e", "vol-1", "2026-01-08T04:00:00Z", "", E),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["a", "b"],
            reasons: vec![("b", "no schedule listed")],
            ..Case::default()
        },
        Case {
            name: "error snapshots are deleted even when newest or kept by all",
            rows: vec![
                ("e", "vol-1", "2026-01-11T04:00:00Z", "daily", E),
                ("a", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").all()],
            kept: vec!["a"],
            reasons: vec![("e", "error state"), ("a", "newest of volume; daily all")],
            ..Case::default()
        },
    ];
    cases.iter().for_each(check);
}

#[test]
fn output_is_sorted_by_volume_then_newest_then_id() {
    let case = Case {
        rows: vec![
            ("z", "vol-2", "2026-01-10T04:00:00Z", "daily", C),
            ("b", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
            ("c", "vol-1", "2026-01-10T04:00:00Z", "daily", C),
            ("a", "vol-1", "2026-01-09T04:00:00Z", "daily", C),
        ],
        schedules: vec![sched("daily").all()],
        ..Case::default()
    };
    let order: Vec<_> = run(&case)
        .into_iter()
        .map(|d| (d.volume_id, d.snapshot_id))
        .collect();
    let want = [
        ("vol-1", "c"),
        ("vol-1", "a"),
        ("vol-1", "b"),
        ("vol-2", "z"),
    ];
    assert_eq!(order, want.map(|(v, s)| (Arc::from(v), Arc::from(s))));
}

#[test]
fn reason_labels_and_text() {
    let s = || Arc::<str>::from("daily");
    let table = [
        (Reason::Pinned, "pinned", "pinned"),
        (Reason::Pending, "pending", "pending"),
        (Reason::Newest, "newest", "newest of volume"),
        (
            Reason::VolumeFailed,
            "volume-failed",
            "volume failed this run",
        ),
        (
            Reason::Last {
                schedule: s(),
                rank: 3,
                of: 7,
            },
            "last",
            "daily last 3/7",
        ),
        (
            Reason::Within {
                schedule: s(),
                window: days(7),
            },
            "within",
            "daily within 7d",
        ),
        (
            Reason::Within {
                schedule: s(),
                window: hours(36),
            },
            "within",
            "daily within 36h",
        ),
        (
            Reason::Within {
                schedule: s(),
                window: Duration::from_secs(90 * 60),
            },
            "within",
            "daily within 90m",
        ),
        (
            Reason::Within {
                schedule: s(),
                window: Duration::from_secs(61),
            },
            "within",
            "daily within 61s",
        ),
        (
            Reason::Within {
                schedule: s(),
                window: Duration::ZERO,
            },
            "within",
            "daily within 0s",
        ),
        (
            Reason::Within {
                schedule: s(),
                window: Duration::from_millis(1500),
            },
            "within",
            "daily within 1500ms",
        ),
        (
            Reason::Within {
                schedule: s(),
                window: Duration::from_nanos(5),
            },
            "within",
            "daily within 5ns",
        ),
        (Reason::All { schedule: s() }, "all", "daily all"),
        (
            Reason::CountUnknown { schedule: s() },
            "count-unknown",
            "daily count unknown",
        ),
        (
            Reason::ScheduleRemoved { schedule: s() },
            "schedule-removed",
            "daily schedule removed",
        ),
        (
            Reason::ScheduleRemoved {
                schedule: "".into(),
            },
            "schedule-removed",
            "no schedule listed",
        ),
        (Reason::Expired, "expired", "expired"),
        (Reason::ErrorState, "error-state", "error state"),
        (
            Reason::NotAppConsistent { schedule: s() },
            "not-app-consistent",
            "not app-consistent (daily keeps only app-consistent snapshots)",
        ),
    ];
    for (reason, label, text) in table {
        assert_eq!(reason.as_str(), label, "{reason:?}");
        assert_eq!(reason.to_string(), text, "{reason:?}");
    }
}

#[test]
fn reason_labels_are_distinct_and_calendar_ones_are_the_config_keys() {
    let mut labels = Reason::LABELS.to_vec();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), Reason::LABELS.len());
    for period in Period::ALL {
        let calendar = Reason::Calendar {
            schedule: "s".into(),
            period,
            rank: 1,
            of: None,
        };
        let window = Reason::WithinCalendar {
            schedule: "s".into(),
            period,
            window: Duration::from_secs(3600),
        };
        assert_eq!(calendar.as_str(), period.as_str());
        assert_eq!(window.as_str(), period.within_str());
    }
    // Keep reasons come first; the deletion reasons after them.
    for r in [
        Reason::Expired,
        Reason::NotAppConsistent {
            schedule: "s".into(),
        },
        Reason::ErrorState,
        Reason::OrphanExpired {
            after: Duration::from_secs(1),
        },
    ] {
        assert!(r.label_index() >= Reason::KEEP_LABELS, "{r:?}");
    }
    assert_eq!(
        Reason::CopyPending { region: "r".into() }.label_index(),
        Reason::KEEP_LABELS - 1
    );
}

#[test]
fn keep_rules_is_empty() {
    assert!(KeepRules::default().is_empty());
    assert!(!KeepRules {
        last: Some(0),
        ..KeepRules::default()
    }
    .is_empty());
    assert!(!KeepRules {
        within: Some(Duration::ZERO),
        ..KeepRules::default()
    }
    .is_empty());
    assert!(!KeepRules {
        all: true,
        ..KeepRules::default()
    }
    .is_empty());
}

// ---- property tests ----

const VOLUMES: [&str; 3] = ["vol-a", "vol-b", "vol-c"];
/// "gone" is never configured, so it exercises ScheduleRemoved.
const SCHEDULE_NAMES: [&str; 3] = ["daily", "weekly", "gone"];

#[derive(Debug, Clone)]
struct World {
    snapshots: Vec<Snap>,
    schedules: Vec<ScheduleRules>,
    counts: HashMap<(String, String), u32>,
    frozen: HashSet<String>,
    tz: chrono_tz::Tz,
    targeted: Option<HashSet<String>>,
    orphans: OrphanPolicy,
    caps: Caps,
}

impl World {
    fn plan(&self, now: DateTime<Utc>) -> Vec<Decision> {
        self.full_plan(now).decisions
    }

    fn full_plan(&self, now: DateTime<Utc>) -> Plan {
        plan(&self.input(), now)
    }

    fn input(&self) -> PlanInput<'_> {
        PlanInput {
            held: &crate::retention::NOTHING_HELD,
            snapshots: &self.snapshots,
            schedules: &self.schedules,
            counts: &self.counts,
            frozen_volumes: &self.frozen,
            tz: self.tz,
            targeted: self.targeted.as_ref(),
            orphans: self.orphans,
            caps: self.caps,
        }
    }
}

fn state_strategy() -> impl Strategy<Value = SnapState> {
    prop_oneof![6 => Just(C), 1 => Just(P), 1 => Just(E)]
}

/// (volume, hour, listed schedules, state, pinned, app-consistent)
type RawSnap = (usize, i64, Vec<bool>, SnapState, bool, bool);

fn snap_strategy() -> impl Strategy<Value = RawSnap> {
    // Slots on a coarse grid of hours so that equal slots and exact window boundaries happen often.
    (
        0..VOLUMES.len(),
        0i64..24 * 40,
        proptest::collection::vec(any::<bool>(), 3),
        state_strategy(),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.7),
    )
}

fn rules_strategy(name: &'static str) -> impl Strategy<Value = ScheduleRules> {
    (
        proptest::option::of(0u32..6),
        proptest::option::of((0u64..24 * 10).prop_map(hours)),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.3),
    )
        .prop_map(
            move |(last, within, all, count_from_tag, app_consistent_only)| ScheduleRules {
                name: name.into(),
                keep: KeepRules {
                    last,
                    within,
                    all,
                    app_consistent_only,
                    ..KeepRules::default()
                },
                count_from_tag,
            },
        )
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        proptest::collection::vec(snap_strategy(), 0..40),
        rules_strategy("daily"),
        rules_strategy("weekly"),
        proptest::collection::vec((0..VOLUMES.len(), 0..2usize, 0u32..6), 0..6),
        proptest::collection::vec(proptest::bool::weighted(0.2), VOLUMES.len()),
    )
        .prop_map(|(raw, daily, weekly, counts, frozen)| {
            let base = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
            let snapshots = raw
                .into_iter()
                .enumerate()
                .map(|(i, (v, h, listed, state, pinned, app_consistent))| Snap {
                    id: format!("snap-{i:03}").into(),
                    volume_id: VOLUMES[v].into(),
                    slot: base + chrono::TimeDelta::hours(h),
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
                    // Snapshots of one slot started in id order: the smallest id stands for the slot.
                    started: i as u32,
                })
                .collect();
            World {
                snapshots,
                tz: chrono_tz::UTC,
                targeted: None,
                orphans: OrphanPolicy::KeepRules,
                caps: Caps::default(),
                schedules: vec![daily, weekly],
                counts: counts
                    .into_iter()
                    .map(|(v, s, n)| ((VOLUMES[v].to_string(), SCHEDULE_NAMES[s].to_string()), n))
                    .collect(),
                frozen: VOLUMES
                    .iter()
                    .zip(frozen)
                    .filter(|(_, f)| *f)
                    .map(|(v, _)| v.to_string())
                    .collect(),
            }
        })
}

/// After every slot of [`world_strategy`] (they end 40 days after 2026-12-01): no future slots there.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 2, 1, 0, 0, 0).unwrap()
}

/// A completed snapshot of a real volume that repeats another's slot and schedule list where the other stands for
/// the slot (app-consistent first, then started first, then smaller id): what the planner sets aside as a
/// duplicate, worked out without it.
fn is_repeat(all: &[Snap], s: &Snap) -> bool {
    s.state == C
        && all.iter().any(|t| {
            t.state == C
                && t.id != s.id
                && (&t.volume_id, t.slot, &t.schedules) == (&s.volume_id, s.slot, &s.schedules)
                && (!t.app_consistent, t.started, &t.id) < (!s.app_consistent, s.started, &s.id)
        })
}

fn is_delete_reason(r: &Reason) -> bool {
    matches!(
        r,
        Reason::Expired | Reason::NotAppConsistent { .. } | Reason::ErrorState | Reason::Duplicate
    )
}

proptest! {
    #[test]
    fn rails_hold_and_every_decision_explains_itself(world in world_strategy()) {
        let decisions = world.plan(now());
        prop_assert_eq!(decisions.len(), world.snapshots.len());
        let by_id: HashMap<&str, &Snap> = world.snapshots.iter().map(|s| (&*s.id, s)).collect();
        for d in &decisions {
            let snap = by_id[&*d.snapshot_id];
            prop_assert!(!d.reasons.is_empty(), "{:?}", d);
            match d.action {
                Action::Delete => {
                    prop_assert!(!snap.pinned, "deleted pinned {:?}", d);
                    prop_assert!(snap.state != P, "deleted pending {:?}", d);
                    prop_assert!(!world.frozen.contains(&*d.volume_id), "deleted on a frozen volume {:?}", d);
                    prop_assert!(d.reasons.iter().all(is_delete_reason), "{:?}", d);
                }
                Action::Keep => prop_assert!(!d.reasons.iter().any(is_delete_reason), "{:?}", d),
            }
        }
        // The newest completed snapshot of each volume is kept, computed independently of the planner.
        for volume in VOLUMES {
            let newest = world
                .snapshots
                .iter()
                .filter(|s| &*s.volume_id == volume && s.state == C && !is_repeat(&world.snapshots, s))
                .min_by(|a, b| b.slot.cmp(&a.slot).then_with(|| a.id.cmp(&b.id)));
            if let Some(newest) = newest {
                let d = decisions.iter().find(|d| d.snapshot_id == newest.id).unwrap();
                prop_assert_eq!(d.action, Action::Keep);
                prop_assert!(d.reasons.contains(&Reason::Newest), "{:?}", d);
            }
        }
        // Sorted by (volume, slot descending, id), each snapshot once.
        for pair in decisions.windows(2) {
            let key = |d: &Decision| (d.volume_id.clone(), std::cmp::Reverse(d.slot), d.snapshot_id.clone());
            prop_assert!(key(&pair[0]) < key(&pair[1]), "{:?}", pair);
        }
    }

    #[test]
    fn idempotent(world in world_strategy()) {
        let first = world.plan(now());
        let deleted: HashSet<&str> =
            first.iter().filter(|d| d.action == Action::Delete).map(|d| &*d.snapshot_id).collect();
        let mut after = world.clone();
        after.snapshots.retain(|s| !deleted.contains(&*s.id));
        let second = after.plan(now());
        prop_assert!(second.iter().all(|d| d.action == Action::Keep), "{:?}", second);
        // Not just the same keep set: the same reasons, since ranks and windows cannot move.
        let kept: Vec<Decision> = first.into_iter().filter(|d| d.action == Action::Keep).collect();
        prop_assert_eq!(second, kept);
    }

    #[test]
    fn keep_last_keeps_at_least_n(world in world_strategy()) {
        let decisions = world.plan(now());
        let kept: HashSet<&str> =
            decisions.iter().filter(|d| d.action == Action::Keep).map(|d| &*d.snapshot_id).collect();
        for volume in VOLUMES {
            for schedule in &world.schedules {
                let n = if schedule.count_from_tag {
                    world.counts.get(&(volume.to_string(), schedule.name.to_string())).copied()
                } else {
                    schedule.keep.last
                };
                let Some(n) = n else { continue };
                let mut completed: Vec<&Snap> = world
                    .snapshots
                    .iter()
                    .filter(|s| &*s.volume_id == volume && s.state == C && s.schedules.contains(&schedule.name))
                    .collect();
                // A repeat of a slot (same schedule list) is one slot: an app-consistent one stands for it, else
                // the first started.
                completed.sort_by_key(|s| (s.slot, s.schedules.clone(), !s.app_consistent, s.started));
                completed.dedup_by(|b, a| (a.slot, &a.schedules) == (b.slot, &b.schedules));
                // Then an app-consistent-only schedule sees only the app-consistent ones.
                completed.retain(|s| s.app_consistent || !schedule.keep.app_consistent_only);
                let kept_count = completed.iter().filter(|s| kept.contains(&*s.id)).count();
                prop_assert!(
                    kept_count >= (n as usize).min(completed.len()),
                    "{volume} {}: kept {kept_count} of {} with last {n}", schedule.name, completed.len()
                );
            }
        }
    }

    #[test]
    fn independent_of_now(world in world_strategy(), a in 0i64..10_000, b in 0i64..10_000) {
        let at = |days: i64| now() + chrono::TimeDelta::days(days);
        prop_assert_eq!(world.plan(at(a)), world.plan(at(b)));
    }

    #[test]
    fn plan_deletions_is_plan_with_the_keeps_handed_out(
        mut world in world_strategy(),
        max_deletes in proptest::option::of(0u32..8),
        fraction in proptest::option::of(0.1f64..0.9),
    ) {
        world.caps = Caps { max_deletes_per_run: max_deletes, max_delete_fraction: fraction };
        let full = world.full_plan(now());
        let mut kept = Vec::new();
        let rest = plan_deletions(&world.input(), now(), &mut |d| kept.push(d));
        prop_assert_eq!(&rest.cap_hit, &full.cap_hit);
        prop_assert!(kept.iter().all(|d| d.action == Action::Keep));
        let (full_kept, full_rest): (Vec<Decision>, Vec<Decision>) = full
            .decisions
            .into_iter()
            .partition(|d| d.action == Action::Keep && !d.reasons.contains(&Reason::OverCap));
        // Volume by volume, so the kept ones come in the plan's order too.
        prop_assert_eq!(kept, full_kept);
        prop_assert_eq!(rest.decisions, full_rest);
    }

    #[test]
    fn independent_of_input_order(world in world_strategy(), seed in any::<u64>()) {
        let mut shuffled = world.clone();
        // A cheap deterministic permutation: rotate, then reverse.
        let len = shuffled.snapshots.len().max(1);
        shuffled.snapshots.rotate_left((seed as usize) % len);
        shuffled.snapshots.reverse();
        prop_assert_eq!(world.plan(now()), shuffled.plan(now()));
    }
}

mod calendar;
mod consistency;
mod heal;
