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

/// The recipe of `config/examples/windows-vss.toml`: one daily VSS schedule, `daily = 5, weekly = 3, monthly = 2,
/// app-consistent-only`, over 41 days (1 January to 10 February 2026, UTC) with four days on which VSS failed and
/// a fallback was taken, the newest among them.
#[test]
fn the_windows_recipe_keeps_days_weeks_and_months_of_consistent_snapshots_only() {
    let fallbacks = ["2026-02-10", "2026-02-08", "2026-02-01", "2026-01-31"];
    let first = at("2026-01-01T01:00:00Z");
    let snapshots: Vec<Snap> = (0..41)
        .map(|d| {
            let slot = first + chrono::TimeDelta::days(d);
            let day = slot.format("%Y-%m-%d").to_string();
            Snap {
                id: day.as_str().into(),
                volume_id: "vol-1".into(),
                slot,
                schedules: vec![Arc::from("vss")].into(),
                state: C,
                pinned: false,
                app_consistent: !fallbacks.contains(&day.as_str()),
                group: Group::Volume,
                started: d as u32,
            }
        })
        .collect();
    let schedules = [only(calendar(
        "vss",
        &[(Period::Day, 5), (Period::Week, 3), (Period::Month, 2)],
    ))];
    let input = PlanInput {
        held: &crate::retention::NOTHING_HELD,
        snapshots: &snapshots,
        schedules: &schedules,
        counts: &HashMap::new(),
        frozen_volumes: &HashSet::new(),
        tz: chrono_tz::UTC,
        targeted: None,
        orphans: OrphanPolicy::KeepRules,
        caps: Caps::default(),
    };
    let plan = plan(&input, at(NOW));
    let kept: Vec<(&str, String)> = plan
        .decisions
        .iter()
        .filter(|d| d.action == Action::Keep)
        .map(|d| {
            let why: Vec<String> = d.reasons.iter().map(Reason::to_string).collect();
            (&*d.snapshot_id, why.join("; "))
        })
        .collect();
    // 9 February is a Monday (ISO week 7); week 6 ends on the fallback of Sunday 8 February, so its newest
    // consistent snapshot is Saturday's; week 5 ends on two fallbacks (31 January, 1 February), so Friday 30
    // January holds it, and January too.
    assert_eq!(
        kept,
        [
            ("2026-02-10", "newest of volume".to_string()),
            (
                "2026-02-09",
                "vss daily 1/5; vss weekly 1/3; vss monthly 1/2".to_string()
            ),
            ("2026-02-07", "vss daily 2/5; vss weekly 2/3".to_string()),
            ("2026-02-06", "vss daily 3/5".to_string()),
            ("2026-02-05", "vss daily 4/5".to_string()),
            ("2026-02-04", "vss daily 5/5".to_string()),
            ("2026-01-30", "vss weekly 3/3; vss monthly 2/2".to_string()),
        ]
    );
    for d in plan.deletes() {
        let want = if fallbacks.contains(&&*d.snapshot_id) {
            FALLBACK
        } else {
            "expired"
        };
        assert_eq!(d.reasons.len(), 1, "{d:?}");
        assert_eq!(d.reasons[0].to_string(), want, "{d:?}");
    }
}

#[test]
fn of_two_snapshots_of_one_slot_the_app_consistent_one_stands() {
    // A VSS command that timed out from the run's view while the agent went on: the fallback started first, the
    // agent's consistent snapshot later. The better backup stands, whatever the schedule's rules.
    for schedule in [sched("vss").last(2), only(sched("vss").last(2))] {
        check(&Case {
            name: "the consistent repeat stands, the fallback is the duplicate",
            rows: vec![
                ("a", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("b", "vol-1", "2026-01-05T04:00:00Z", "vss", C),
                ("c", "vol-1", "2026-01-04T04:00:00Z", "vss", C),
            ],
            consistent: vec!["b", "c"],
            schedules: vec![schedule],
            kept: vec!["b", "c"],
            reasons: vec![
                ("a", "duplicate of slot"),
                ("b", "newest of volume; vss last 1/2"),
                ("c", "vss last 2/2"),
            ],
            ..Case::default()
        });
    }
}
