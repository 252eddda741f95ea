//! `app-consistent-only` (issue 14): a schedule's rules judge only the snapshots tagged app-consistent, while the
//! rails keep any snapshot. Table cases worked out by hand; `consistent` lists the app-consistent ids, every other
//! snapshot is a crash-consistent fallback.

use super::*;

fn only(mut s: ScheduleRules) -> ScheduleRules {
    s.keep.app_consistent_only = true;
    s
}

fn calendar(name: &str, rules: &[(Period, u32)]) -> ScheduleRules {
    let mut s = sched(name);
    for &(period, n) in rules {
        *s.keep.count_mut(period) = Some(Count::N(n));
    }
    s
}

const FALLBACK: &str = "not app-consistent (vss keeps only app-consistent snapshots)";

#[test]
fn fallbacks_next_to_consistent_snapshots_neither_count_nor_stay() {
    for case in [
        Case {
            name: "daily = 3: the three newest consistent days, the fallbacks between them deleted",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("d", "vol-1", "2026-01-02T04:00:00Z", "vss", C),
                ("e", "vol-1", "2026-01-01T04:00:00Z", "vss", C),
                ("f", "vol-1", "2025-12-31T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a", "c", "e", "f"],
            schedules: vec![only(calendar("vss", &[(Period::Day, 3)]))],
            kept: vec!["a", "c", "e"],
            reasons: vec![
                ("a", "newest of volume; vss daily 1/3"),
                ("b", FALLBACK),
                ("c", "vss daily 2/3"),
                ("d", FALLBACK),
                ("e", "vss daily 3/3"),
                ("f", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "the same history without app-consistent-only counts the fallbacks",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("d", "vol-1", "2026-01-02T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a", "c"],
            schedules: vec![calendar("vss", &[(Period::Day, 3)])],
            kept: vec!["a", "b", "c"],
            reasons: vec![("d", "expired")],
            ..Case::default()
        },
        Case {
            // 2026-01-05 is a Monday: W02 starts there, W01 ran from 29 December to 4 January.
            name: "weekly: a week whose newest snapshot is a fallback is held by its newest consistent one",
            rows: vec![
                ("a", "vol-1", "2026-01-06T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("d", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("e", "vol-1", "2026-01-02T04:00:00Z", "vss", C),
                ("f", "vol-1", "2025-12-28T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a", "d", "e", "f"],
            schedules: vec![only(calendar("vss", &[(Period::Day, 2), (Period::Week, 2)]))],
            kept: vec!["a", "d"],
            reasons: vec![
                ("a", "newest of volume; vss daily 1/2; vss weekly 1/2"),
                ("b", FALLBACK),
                ("c", FALLBACK),
                ("d", "vss daily 2/2; vss weekly 2/2"),
                ("e", "expired"),
                ("f", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "last = 2 ranks only consistent snapshots",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("d", "vol-1", "2026-01-02T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a", "c", "d"],
            schedules: vec![only(sched("vss").last(2))],
            kept: vec!["a", "c"],
            reasons: vec![
                ("a", "newest of volume; vss last 1/2"),
                ("b", FALLBACK),
                ("c", "vss last 2/2"),
                ("d", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "within is measured from the newest consistent snapshot",
            rows: vec![
                ("a", "vol-1", "2026-01-10T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("d", "vol-1", "2026-01-01T04:00:00Z", "vss", C),
            ],
            consistent: vec!["b", "c", "d"],
            schedules: vec![only(sched("vss").within(days(3)))],
            kept: vec!["a", "b", "c"],
            reasons: vec![
                ("a", "newest of volume"),
                ("b", "vss within 3d"),
                ("c", "vss within 3d"),
                ("d", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "all keeps every consistent snapshot and no fallback",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a", "c"],
            schedules: vec![only(sched("vss").all())],
            kept: vec!["a", "c"],
            reasons: vec![("b", FALLBACK)],
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn the_rails_still_keep_fallbacks() {
    for case in [
        Case {
            name: "the newest snapshot of a volume is kept when it is a fallback",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("d", "vol-1", "2026-01-02T04:00:00Z", "vss", C),
            ],
            consistent: vec!["b", "c", "d"],
            schedules: vec![only(calendar("vss", &[(Period::Day, 2)]))],
            kept: vec!["a", "b", "c"],
            reasons: vec![
                ("a", "newest of volume"),
                ("b", "vss daily 1/2"),
                ("c", "vss daily 2/2"),
                ("d", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "a volume with fallbacks only keeps its newest",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
            ],
            schedules: vec![only(calendar("vss", &[(Period::Day, 7)]))],
            kept: vec!["a"],
            reasons: vec![("a", "newest of volume"), ("b", FALLBACK)],
            ..Case::default()
        },
        Case {
            name: "pinned, pending and frozen fallbacks stay",
            rows: vec![
                ("p", "vol-1", "2026-01-06T04:00:00Z", "vss", P),
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b!", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("x", "vol-2", "2026-01-05T04:00:00Z", "vss", C),
                ("y", "vol-2", "2026-01-04T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a"],
            frozen: vec!["vol-2"],
            schedules: vec![only(sched("vss").last(1))],
            kept: vec!["p", "a", "b", "x", "y"],
            reasons: vec![
                ("p", "pending"),
                ("a", "newest of volume; vss last 1/1"),
                ("b", "pinned"),
                ("c", FALLBACK),
                ("x", "newest of volume"),
                ("y", "volume failed this run"),
            ],
            ..Case::default()
        },
        Case {
            name: "a fallback another listed schedule keeps is kept by that one",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss,any", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a"],
            schedules: vec![only(sched("vss").last(3)), sched("any").last(1)],
            kept: vec!["a", "b"],
            reasons: vec![("b", "any last 1/1"), ("c", FALLBACK)],
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn a_count_tag_counts_only_consistent_snapshots() {
    for case in [
        Case {
            name: "the tag's count ranks consistent snapshots",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
                ("d", "vol-1", "2026-01-02T04:00:00Z", "vss", C),
            ],
            consistent: vec!["b", "c", "d"],
            counts: vec![("vol-1", "vss", 2)],
            schedules: vec![only(sched("vss").count_tag())],
            kept: vec!["a", "b", "c"],
            reasons: vec![
                ("a", "newest of volume"),
                ("b", "vss last 1/2"),
                ("c", "vss last 2/2"),
                ("d", "expired"),
            ],
            ..Case::default()
        },
        Case {
            // No count would keep a fallback, so deleting them guesses nothing; the consistent ones wait for the tag.
            name: "a missing count keeps the consistent snapshots, not the fallbacks",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
            ],
            consistent: vec!["a", "c"],
            schedules: vec![only(sched("vss").count_tag())],
            kept: vec!["a", "c"],
            reasons: vec![
                ("a", "newest of volume; vss count unknown"),
                ("b", FALLBACK),
                ("c", "vss count unknown"),
            ],
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn fallback_deletions_count_toward_the_caps() {
    let case = Case {
        name: "three of four snapshots, over a fraction of one half",
        rows: vec![
            ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
            ("b", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
            ("c", "vol-1", "2026-01-03T04:00:00Z", "vss", C),
            ("d", "vol-1", "2026-01-02T04:00:00Z", "vss", C),
        ],
        consistent: vec!["a"],
        schedules: vec![only(sched("vss").last(1))],
        caps: Caps {
            max_deletes_per_run: None,
            max_delete_fraction: Some(0.5),
        },
        kept: vec!["a", "b", "c", "d"],
        reasons: vec![("b", "over deletion cap")],
        ..Case::default()
    };
    check(&case);
    let hit = run_plan(&case).cap_hit.expect("over the cap");
    assert_eq!(
        (hit.setting, hit.needed.as_str()),
        ("max-delete-fraction", "0.75")
    );
}
