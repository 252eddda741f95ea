//! What retention sets aside before judging (issue 12): a slot in the future, a repeated slot, a copy. Table cases
//! worked out by hand, then properties: set-aside snapshots never change how the rest are judged.

use super::*;

/// Slots far after [`NOW`] (2030-06-01), as a mistyped `once --slot` or a hand edit writes them.
const FUTURE: &str = "2062-12-05T04:30:00Z";

#[test]
fn a_future_slot_is_kept_and_never_the_reference() {
    for case in [
        Case {
            name: "within: measured from the newest real snapshot, not from the future one",
            rows: vec![
                ("f", "vol-1", FUTURE, "daily", C),
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("b", "vol-1", "2030-05-30T04:30:00Z", "daily", C),
                ("c", "vol-1", "2030-05-01T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").within(days(7))],
            kept: vec!["f", "a", "b"],
            reasons: vec![
                ("f", "slot in the future"),
                ("a", "newest of volume; daily within 7d"),
                ("b", "daily within 7d"),
                ("c", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "within-daily: the window's reference is the newest real snapshot",
            rows: vec![
                ("f", "vol-1", FUTURE, "daily", C),
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("b", "vol-1", "2030-05-30T04:30:00Z", "daily", C),
                ("c", "vol-1", "2030-04-01T04:30:00Z", "daily", C),
            ],
            schedules: vec![{
                let mut s = sched("daily");
                s.keep.within_daily = Some(days(7));
                s
            }],
            kept: vec!["f", "a", "b"],
            reasons: vec![
                ("f", "slot in the future"),
                ("a", "newest of volume; daily within-daily 7d"),
            ],
            ..Case::default()
        },
        Case {
            name: "last: the future slot holds none of the places",
            rows: vec![
                ("f", "vol-1", FUTURE, "daily", C),
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("b", "vol-1", "2030-05-30T04:30:00Z", "daily", C),
                ("c", "vol-1", "2030-05-29T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2)],
            kept: vec!["f", "a", "b"],
            reasons: vec![
                ("f", "slot in the future"),
                ("a", "newest of volume; daily last 1/2"),
                ("b", "daily last 2/2"),
            ],
            ..Case::default()
        },
        Case {
            name: "the skew allowance: 5 minutes ahead is judged, a second more is not",
            rows: vec![
                ("late", "vol-1", "2030-06-01T00:05:01Z", "daily", C),
                ("skewed", "vol-1", "2030-06-01T00:05:00Z", "daily", C),
                ("a", "vol-1", "2030-05-31T00:00:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["late", "skewed"],
            reasons: vec![
                ("late", "slot in the future"),
                ("skewed", "newest of volume; daily last 1/1"),
            ],
            ..Case::default()
        },
        Case {
            name: "pinned, pending and error-state future slots",
            rows: vec![
                ("f!", "vol-1", FUTURE, "daily", C),
                ("p", "vol-1", FUTURE, "daily", P),
                ("e", "vol-1", FUTURE, "daily", E),
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["f", "p", "a"],
            reasons: vec![
                ("f", "pinned; slot in the future"),
                ("p", "pending"),
                ("e", "error state"),
                ("a", "newest of volume; daily last 1/1"),
            ],
            ..Case::default()
        },
        Case {
            name: "an orphan's expiry is measured from its newest real snapshot",
            rows: vec![
                ("f", "vol-1", FUTURE, "daily", C),
                ("a", "vol-1", "2029-05-31T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(5)],
            targeted: Some(vec![]),
            orphans: OrphanPolicy::ExpireAfter(days(90)),
            kept: vec!["f"],
            reasons: vec![
                ("f", "slot in the future"),
                ("a", "orphan expired after 90d"),
            ],
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn a_repeated_slot_keeps_the_snapshot_started_first() {
    for case in [
        Case {
            name: "three of one slot: the first started stands, whatever the ids",
            rows: vec![
                ("b", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("c", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("d", "vol-1", "2030-05-30T04:30:00Z", "daily", C),
                ("e", "vol-1", "2030-05-29T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(2)],
            kept: vec!["b", "d"],
            reasons: vec![
                ("b", "newest of volume; daily last 1/2"),
                ("a", "duplicate of slot"),
                ("c", "duplicate of slot"),
                ("d", "daily last 2/2"),
                ("e", "expired"),
            ],
            ..Case::default()
        },
        Case {
            name: "a pinned extra is kept; a pending one is not judged yet; other volumes are not duplicates",
            rows: vec![
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("b!", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("c", "vol-1", "2030-05-31T04:30:00Z", "daily", P),
                ("d", "vol-2", "2030-05-31T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["a", "b", "c", "d"],
            reasons: vec![
                ("a", "newest of volume; daily last 1/1"),
                ("b", "pinned"),
                ("c", "pending"),
                ("d", "newest of volume; daily last 1/1"),
            ],
            ..Case::default()
        },
        Case {
            name: "a pending one started first does not make the completed one an extra",
            rows: vec![
                ("p", "vol-1", "2030-05-31T04:30:00Z", "daily", P),
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("b", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1)],
            kept: vec!["p", "a"],
            reasons: vec![("b", "duplicate of slot")],
            ..Case::default()
        },
        Case {
            name: "a volume that failed this run loses nothing, not even an extra",
            rows: vec![
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("b", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
            ],
            schedules: vec![sched("daily").last(1)],
            frozen: vec!["vol-1"],
            kept: vec!["a", "b"],
            reasons: vec![("b", "volume failed this run")],
            ..Case::default()
        },
        Case {
            name: "an extra with another schedule list is not a duplicate",
            rows: vec![
                ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
                ("b", "vol-1", "2030-05-31T04:30:00Z", "daily,weekly", C),
            ],
            schedules: vec![sched("daily").last(2), sched("weekly").last(1)],
            kept: vec!["a", "b"],
            reasons: vec![("b", "daily last 2/2; weekly last 1/1")],
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn duplicates_count_toward_max_deletes_but_not_the_fraction() {
    let rows = vec![
        ("a", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
        ("b", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
        ("c", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
    ];
    let fraction = Case {
        name: "fraction",
        rows: rows.clone(),
        schedules: vec![sched("daily").last(1)],
        caps: Caps {
            max_delete_fraction: Some(0.1),
            ..Caps::default()
        },
        ..Case::default()
    };
    let plan = run_plan(&fraction);
    assert_eq!(plan.cap_hit, None);
    assert_eq!(plan.deletes().count(), 2);
    let absolute = Case {
        name: "absolute",
        rows,
        schedules: vec![sched("daily").last(1)],
        caps: Caps {
            max_deletes_per_run: Some(1),
            ..Caps::default()
        },
        ..Case::default()
    };
    let plan = run_plan(&absolute);
    assert_eq!(
        plan.cap_hit.as_ref().map(|h| h.setting),
        Some("max-deletes-per-run")
    );
    assert_eq!(plan.deletes().count(), 0);
}

#[test]
fn copies_are_judged_by_their_source_and_unplaced_ones_are_kept() {
    check(&Case {
        name: "copies",
        rows: vec![
            ("v1", "vol-1", "2030-05-31T04:30:00Z", "daily", C),
            ("v2", "vol-1", "2030-05-30T04:30:00Z", "daily", C),
            // Copies of vol-1's slots: neither duplicates of the originals nor of each other.
            ("c1", "copy-of:vol-1", "2030-05-31T04:30:00Z", "daily", C),
            ("c1b", "copy-of:vol-1", "2030-05-31T04:30:00Z", "daily", C),
            ("c2", "copy-of:vol-1", "2030-05-30T04:30:00Z", "daily", C),
            (
                "i1",
                "copy-of:i-1:/dev/sdf",
                "2029-05-31T04:30:00Z",
                "daily",
                C,
            ),
            ("u1", "vol-ffffffff:u1", "2030-05-31T04:30:00Z", "daily", C),
            ("u2", "vol-ffffffff:u2", "2020-05-31T04:30:00Z", "daily", E),
        ],
        schedules: vec![sched("daily").last(2)],
        targeted: Some(vec!["vol-1", "copy-of:vol-1"]),
        orphans: OrphanPolicy::ExpireAfter(days(1)),
        kept: vec!["v1", "v2", "c1", "c1b", "u1", "u2"],
        reasons: vec![
            ("c1", "newest of volume; daily last 1/2"),
            ("c1b", "daily last 2/2"),
            ("c2", "expired"),
            // Not targeted and a year old: an orphan like any other volume.
            ("i1", "orphan expired after 1d"),
            ("u1", "copy of unknown volume"),
            ("u2", "copy of unknown volume"),
        ],
        ..Case::default()
    });
    let decisions = run(&Case {
        name: "unplaced",
        rows: vec![("u1", "vol-ffffffff:u1", "2030-05-31T04:30:00Z", "daily", C)],
        targeted: Some(vec![]),
        ..Case::default()
    });
    assert!(
        !decisions[0].orphan,
        "an unplaced copy is no volume's orphan"
    );
}

#[test]
fn set_aside_labels_are_keep_labels_and_duplicate_a_delete_label() {
    for r in [Reason::FutureSlot, Reason::UnplacedCopy] {
        assert!(r.label_index() < Reason::KEEP_LABELS, "{r:?}");
    }
    assert!(Reason::Duplicate.label_index() >= Reason::KEEP_LABELS);
    assert_eq!(Reason::FutureSlot.as_str(), "future-slot");
    assert_eq!(Reason::UnplacedCopy.as_str(), "unplaced-copy");
    assert_eq!(Reason::Duplicate.as_str(), "duplicate");
}

#[test]
fn a_snap_stays_small() {
    // A survey holds hundreds of thousands (docs/PERFORMANCE.md): the start time and group cost 8 bytes, no more.
    assert!(
        std::mem::size_of::<Snap>() <= 72,
        "{}",
        std::mem::size_of::<Snap>()
    );
}

proptest! {
    /// Future slots added to any world are kept with their own reason and change no other decision.
    #[test]
    fn future_slots_change_nothing_else(
        world in world_strategy(),
        extra in proptest::collection::vec((0..VOLUMES.len(), 6i64..20_000_000, any::<bool>(), any::<bool>()), 1..4),
    ) {
        let before = world.plan(now());
        let mut after = world.clone();
        for (i, &(v, minutes, pinned, weekly)) in extra.iter().enumerate() {
            after.snapshots.push(Snap {
                id: format!("future-{i}").into(),
                volume_id: VOLUMES[v].into(),
                slot: now() + chrono::TimeDelta::minutes(minutes),
                schedules: Arc::from([Arc::from(if weekly { "weekly" } else { "daily" })]),
                state: C,
                pinned,
                app_consistent: false,
                group: Group::Volume,
                started: 0,
            });
        }
        let planned = after.plan(now());
        let (future, rest): (Vec<Decision>, Vec<Decision>) =
            planned.into_iter().partition(|d| d.snapshot_id.starts_with("future-"));
        prop_assert_eq!(rest, before);
        for d in &future {
            prop_assert_eq!(d.action, Action::Keep);
            prop_assert_eq!(d.reasons.last(), Some(&Reason::FutureSlot), "{:?}", d);
        }
    }

    /// A later-started repeat of any completed snapshot is deleted as a duplicate (kept only on a volume that
    /// failed this run, or when pinned) and changes no other decision.
    #[test]
    fn repeats_are_deleted_and_change_nothing_else(world in world_strategy(), pick in any::<prop::sample::Index>()) {
        let completed: Vec<&Snap> = world.snapshots.iter().filter(|s| s.state == C).collect();
        if completed.is_empty() {
            return Ok(());
        }
        let original = completed[pick.index(completed.len())];
        let mut repeat = original.clone();
        repeat.id = "repeat".into();
        repeat.pinned = false;
        repeat.started = u32::MAX;
        let before = world.plan(now());
        let mut after = world.clone();
        after.snapshots.push(repeat);
        let planned = after.plan(now());
        let (extra, rest): (Vec<Decision>, Vec<Decision>) =
            planned.into_iter().partition(|d| &*d.snapshot_id == "repeat");
        prop_assert_eq!(rest, before);
        let want = if world.frozen.contains(&*original.volume_id) {
            (Action::Keep, vec![Reason::VolumeFailed])
        } else {
            (Action::Delete, vec![Reason::Duplicate])
        };
        prop_assert_eq!((extra[0].action, extra[0].reasons.clone()), want);
    }
}
