//! The copy plan of one source volume towards one destination region: which of the volume's snapshots to copy
//! there now, and which the source side must not delete yet. Pure, like the planner it is built on: no clock, no
//! tags, no AWS types; the caller reads the copies' `snapwarden:source-snapshot` tags and sends the copies.
//!
//! What gets copied is decided by the destination's own plan: [`super::plan`] runs over the copies already there
//! and a candidate copy of every completed source snapshot not copied yet, with the copy rules' keep as the
//! schedules' rules, and a candidate is copied only when that plan keeps it (copying a snapshot only for the
//! destination to delete it is waste). So enabling copies on a schedule with history copies the slots the
//! destination keeps, not all of them, and no calendar rule is written twice. A copy still pending is planned as
//! the completed copy it will be: it fills its week (or place in `last`) already, so a rerun while copies are in
//! flight copies nothing more. A copy in error is no copy: its source is a candidate again.
//!
//! The hold is the source side's new rail: a source snapshot the destination plan wants whose copy has not
//! completed (not made yet, or pending) must not be pruned, so the destination cannot miss a slot because the
//! source pruned first. A wanted snapshot whose copy keeps failing is held only as long as the destination plan
//! wants it: a calendar or `last` rule lets it go once newer periods push it out.
//!
//! Not here: the source side's own plan (the caller adds the hold to it), pacing and the copy-concurrency limit
//! (the caller copies a prefix of [`CopyPlan::copy`], oldest first, and the next run plans the rest), and the
//! destination's retention (an ordinary [`super::plan`] over the copies).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    plan, stands_before, Action, Group, PlanInput, Reason, ScheduleRules, Snap, SnapState,
};

/// A snapshot in the destination copied from one of the volume's.
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    /// The copy as the destination's survey reads it; its group and volume key are the caller's, since this plan
    /// judges one volume's copies together whatever they are.
    pub(crate) snap: Snap,
    /// Its `snapwarden:source-snapshot` tag: the source snapshot's id.
    pub(crate) source: Arc<str>,
}

pub(crate) struct CopyInput<'a> {
    /// The source volume's snapshots, any state and schedule: only completed ones listing a schedule of `rules` are
    /// copied.
    pub(crate) source: &'a [Snap],
    /// The volume's copies already in the destination, any state.
    pub(crate) copies: &'a [Copied],
    /// Each schedule of the policy that copies to this destination, with its copy rule's keep as `keep` (never a
    /// count from a tag: copies have none).
    pub(crate) rules: &'a [ScheduleRules],
    /// The timezone calendar buckets are taken in (`daemon.timezone`), as for the source.
    pub(crate) tz: chrono_tz::Tz,
}

/// One copy to make.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToCopy {
    /// The source snapshot's id.
    pub(crate) source: Arc<str>,
    pub(crate) slot: DateTime<Utc>,
    /// What the copy's `snapwarden:schedule` lists: the source's schedules that copy to this destination (a
    /// schedule listed there without a copy rule would keep the copy forever as removed).
    pub(crate) schedules: Arc<[Arc<str>]>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct CopyPlan {
    /// The copies the destination plan wants and does not have, oldest first: copies of an incremental chain
    /// made in order stay incremental.
    pub(crate) copy: Vec<ToCopy>,
    /// The ids of the source snapshots the source side must not delete yet, oldest first: those of `copy`, and
    /// those whose copy is pending and wanted.
    pub(crate) hold: Vec<Arc<str>>,
}

/// Plans the copies of one source volume to one destination. `now` is the planner's (future slots).
pub(crate) fn plan_copies(input: &CopyInput<'_>, now: DateTime<Utc>) -> CopyPlan {
    let live: Vec<&Copied> = input
        .copies
        .iter()
        .filter(|c| c.snap.state != SnapState::Error)
        .collect();
    let copied: HashSet<&str> = live.iter().map(|c| &*c.source).collect();
    // A slot one copy already stands for is done, whichever of the slot's snapshots was copied (a duplicate the
    // source has pruned since, or an app-consistent one that arrived late).
    let covered: HashSet<DateTime<Utc>> = live.iter().map(|c| c.snap.slot).collect();

    let mut candidates: Vec<(&Snap, Arc<[Arc<str>]>)> = input
        .source
        .iter()
        .filter(|s| {
            s.state == SnapState::Completed
                && !copied.contains(&*s.id)
                && !covered.contains(&s.slot)
        })
        .filter_map(|s| {
            let schedules: Arc<[Arc<str>]> = s
                .schedules
                .iter()
                .filter(|name| input.rules.iter().any(|r| r.name == **name))
                .cloned()
                .collect();
            (!schedules.is_empty()).then_some((s, schedules))
        })
        .collect();
    // One candidate per slot, the one that stands for it: a slot is copied once.
    candidates.sort_by(|(a, _), (b, _)| {
        a.slot
            .cmp(&b.slot)
            .then_with(|| match (stands_before(a, b), stands_before(b, a)) {
                (true, _) => Ordering::Less,
                (_, true) => Ordering::Greater,
                _ => Ordering::Equal,
            })
    });
    candidates.dedup_by(|later, first| later.0.slot == first.0.slot);

    // One volume: every snapshot under one key, as copies (never judged as duplicates of each other).
    let key: Arc<str> = Arc::from("");
    let as_copy = |snap: &Snap| Snap {
        volume_id: Arc::clone(&key),
        group: Group::Copy,
        ..snap.clone()
    };
    let mut snapshots: Vec<Snap> = live
        .iter()
        .map(|c| Snap {
            state: SnapState::Completed,
            ..as_copy(&c.snap)
        })
        .collect();
    snapshots.extend(candidates.iter().map(|(s, schedules)| Snap {
        schedules: Arc::clone(schedules),
        // A pin is about deleting the source, not a reason to copy it.
        pinned: false,
        ..as_copy(s)
    }));
    let destination = plan(
        &PlanInput {
            held: &super::NOTHING_HELD,
            snapshots: &snapshots,
            schedules: input.rules,
            counts: &HashMap::new(),
            frozen_volumes: &HashSet::new(),
            tz: input.tz,
            targeted: None,
            orphans: Default::default(),
            caps: Default::default(),
        },
        now,
    );
    // Kept, and not only because its slot lies in the future: a mistyped slot tag is not worth copying.
    let wanted: HashSet<&str> = destination
        .decisions
        .iter()
        .filter(|d| d.action == Action::Keep && !d.reasons.contains(&Reason::FutureSlot))
        .map(|d| &*d.snapshot_id)
        .collect();

    let copy: Vec<ToCopy> = candidates
        .into_iter()
        .filter(|(s, _)| wanted.contains(&*s.id))
        .map(|(s, schedules)| ToCopy {
            source: Arc::clone(&s.id),
            slot: s.slot,
            schedules,
        })
        .collect();
    let mut held: HashSet<&str> = copy.iter().map(|c| &*c.source).collect();
    held.extend(
        live.iter()
            .filter(|c| c.snap.state == SnapState::Pending && wanted.contains(&*c.snap.id))
            .map(|c| &*c.source),
    );
    let mut hold: Vec<&Snap> = input
        .source
        .iter()
        .filter(|s| held.contains(&*s.id))
        .collect();
    hold.sort_by(|a, b| a.slot.cmp(&b.slot).then_with(|| a.id.cmp(&b.id)));
    let hold = hold.into_iter().map(|s| Arc::clone(&s.id)).collect();
    CopyPlan { copy, hold }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::retention::{Count, KeepRules};

    /// 04:30 UTC on day `day` after 31 December 2023 (day 1 is Monday 1 January 2024, ISO week 1).
    fn day(day: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2023, 12, 31, 4, 30, 0).unwrap() + Duration::days(day)
    }

    fn names(list: &str) -> Arc<[Arc<str>]> {
        list.split(',').map(Arc::from).collect()
    }

    /// Source snapshot `src-D` of `vol-1` at `day(d)`, listing `schedules`.
    fn source(d: i64, schedules: &str, state: SnapState) -> Snap {
        Snap {
            id: format!("src-{d}").into(),
            volume_id: "vol-1".into(),
            slot: day(d),
            schedules: names(schedules),
            state,
            pinned: false,
            app_consistent: false,
            group: Group::Volume,
            started: d as u32,
        }
    }

    fn dailies(days: std::ops::RangeInclusive<i64>) -> Vec<Snap> {
        days.map(|d| source(d, "daily", SnapState::Completed))
            .collect()
    }

    /// The copy `copy-D` of `src-D` in the destination.
    fn copy_of(d: i64, state: SnapState) -> Copied {
        Copied {
            snap: Snap {
                id: format!("copy-{d}").into(),
                volume_id: "copy-of:vol-1".into(),
                group: Group::Copy,
                state,
                ..source(d, "daily", state)
            },
            source: format!("src-{d}").into(),
        }
    }

    fn weekly(name: &str, n: u32) -> ScheduleRules {
        ScheduleRules {
            name: name.into(),
            keep: KeepRules {
                weekly: Some(Count::N(n)),
                ..KeepRules::default()
            },
            count_from_tag: false,
        }
    }

    fn run(source: &[Snap], copies: &[Copied], rules: &[ScheduleRules], now: i64) -> CopyPlan {
        plan_copies(
            &CopyInput {
                source,
                copies,
                rules,
                tz: chrono_tz::Tz::UTC,
            },
            day(now) + Duration::hours(1),
        )
    }

    /// The days of `ids` (`src-D` → D).
    fn days(ids: impl IntoIterator<Item = Arc<str>>) -> Vec<i64> {
        ids.into_iter()
            .map(|id| id.trim_start_matches("src-").parse().unwrap())
            .collect()
    }

    fn copied_days(plan: &CopyPlan) -> Vec<i64> {
        days(plan.copy.iter().map(|c| Arc::clone(&c.source)))
    }

    #[test]
    fn four_weeklies_of_thirty_dailies_copy_the_four_week_heads_oldest_first() {
        // 1–30 January 2024: weeks 1 to 4 end on Sundays 7, 14, 21, 28; week 5 is 29–30 so far.
        let plan = run(&dailies(1..=30), &[], &[weekly("daily", 4)], 30);
        assert_eq!(copied_days(&plan), [14, 21, 28, 30]);
        assert_eq!(plan.copy[0].slot, day(14));
        assert_eq!(&*plan.copy[0].schedules, &*names("daily"));
        // Wanted and not copied yet: the source keeps them until their copies complete.
        assert_eq!(days(plan.hold), [14, 21, 28, 30]);
    }

    #[test]
    fn ten_dailies_span_two_weeks_so_four_weeklies_copy_both_heads_and_the_oldest() {
        // Ten days reach into two ISO weeks only (1–7 and 8–10 January); a weekly rule with room to spare keeps
        // the schedule's oldest as well, as the source side's rule would.
        let plan = run(&dailies(1..=10), &[], &[weekly("daily", 4)], 10);
        assert_eq!(copied_days(&plan), [1, 7, 10]);
    }

    #[test]
    fn a_rerun_with_those_copies_pending_copies_nothing() {
        let pending: Vec<Copied> = [14, 21, 28, 30]
            .map(|d| copy_of(d, SnapState::Pending))
            .to_vec();
        let plan = run(&dailies(1..=30), &pending, &[weekly("daily", 4)], 30);
        assert_eq!(plan.copy, []);
        assert_eq!(days(plan.hold), [14, 21, 28, 30]);
    }

    #[test]
    fn a_source_whose_copy_is_pending_is_held_and_one_whose_copy_completed_is_not() {
        let copies = [
            copy_of(14, SnapState::Completed),
            copy_of(21, SnapState::Pending),
            copy_of(28, SnapState::Completed),
            copy_of(30, SnapState::Pending),
        ];
        let plan = run(&dailies(1..=30), &copies, &[weekly("daily", 4)], 30);
        assert_eq!(plan.copy, []);
        assert_eq!(days(plan.hold), [21, 30]);
    }

    #[test]
    fn a_source_the_copy_rule_would_not_keep_is_not_held() {
        let plan = run(&dailies(1..=30), &[], &[weekly("daily", 4)], 30);
        // The 13th is no week's head, the 7th is the head of a week beyond the four.
        for d in [13, 7, 1] {
            assert!(!days(plan.hold.clone()).contains(&d), "{d}: {plan:?}");
        }
        // A pending copy the rule would no longer keep (the rule went from 5 weeks to 4) holds nothing either.
        let copies = [
            copy_of(7, SnapState::Pending),
            copy_of(14, SnapState::Completed),
            copy_of(21, SnapState::Completed),
            copy_of(28, SnapState::Completed),
            copy_of(30, SnapState::Completed),
        ];
        let plan = run(&dailies(1..=30), &copies, &[weekly("daily", 4)], 30);
        assert_eq!(plan, CopyPlan::default());
    }

    #[test]
    fn completed_copies_fill_their_weeks_so_the_next_day_copies_only_the_new_head() {
        let copies = [14, 21, 28, 30].map(|d| copy_of(d, SnapState::Completed));
        let plan = run(&dailies(1..=31), &copies, &[weekly("daily", 4)], 31);
        assert_eq!(copied_days(&plan), [31]);
        assert_eq!(days(plan.hold), [31]);
        // With the history pruned at the source (it keeps a week), the copies still stand for their weeks.
        let plan = run(&dailies(25..=31), &copies, &[weekly("daily", 4)], 31);
        assert_eq!(copied_days(&plan), [31]);
    }

    #[test]
    fn a_failed_copy_is_made_again() {
        let copies = [
            copy_of(14, SnapState::Completed),
            copy_of(21, SnapState::Error),
            copy_of(28, SnapState::Completed),
            copy_of(30, SnapState::Completed),
        ];
        let plan = run(&dailies(1..=30), &copies, &[weekly("daily", 4)], 30);
        assert_eq!(copied_days(&plan), [21]);
        assert_eq!(days(plan.hold), [21]);
    }

    #[test]
    fn only_completed_snapshots_of_a_copying_schedule_and_of_the_past_are_copied() {
        let mut source = vec![
            source(1, "daily", SnapState::Completed),
            source(2, "daily", SnapState::Pending),
            source(3, "daily", SnapState::Error),
            source(4, "hourly", SnapState::Completed),
        ];
        // A slot tag two days ahead of now: kept by both sides, copied by neither.
        source.push(source_at(9, "daily"));
        let rules = [ScheduleRules {
            keep: KeepRules {
                all: true,
                ..KeepRules::default()
            },
            ..weekly("daily", 1)
        }];
        let plan = run(&source, &[], &rules, 7);
        assert_eq!(copied_days(&plan), [1]);
    }

    fn source_at(d: i64, schedules: &str) -> Snap {
        source(d, schedules, SnapState::Completed)
    }

    #[test]
    fn a_co_fired_snapshot_is_copied_once_listing_only_the_schedules_copied_here() {
        // daily and weekly fire together on Sundays; only weekly copies to this destination.
        let source: Vec<Snap> = (1..=14)
            .map(|d| source_at(d, if d % 7 == 0 { "daily,weekly" } else { "daily" }))
            .collect();
        let plan = run(&source, &[], &[weekly("weekly", 4)], 14);
        assert_eq!(copied_days(&plan), [7, 14]);
        assert!(plan.copy.iter().all(|c| *c.schedules == *names("weekly")));
        // Both schedules copying here: still one copy per slot, listing both.
        let plan = run(&source, &[], &[weekly("daily", 1), weekly("weekly", 4)], 14);
        assert_eq!(copied_days(&plan), [7, 14]);
        assert_eq!(&*plan.copy[1].schedules, &*names("daily,weekly"));
    }

    #[test]
    fn a_slot_is_copied_once_whichever_of_its_snapshots_stands_for_it() {
        // Two completed snapshots of the 14th (a VSS snapshot that arrived after its fallback): only the
        // app-consistent one, which stands for the slot, is copied.
        let mut source = dailies(8..=14);
        source.push(Snap {
            id: "src-99".into(),
            started: 99,
            app_consistent: true,
            ..source_at(14, "daily")
        });
        let plan = run(&source, &[], &[weekly("daily", 4)], 14);
        assert_eq!(copied_days(&plan), [8, 99]);
        let all = [ScheduleRules {
            keep: KeepRules {
                all: true,
                ..KeepRules::default()
            },
            ..weekly("daily", 1)
        }];
        let plan = run(&source, &[], &all, 14);
        assert_eq!(copied_days(&plan), [8, 9, 10, 11, 12, 13, 99]);
        // Its twin's copy already stands for the slot (even where the planner's tie-break by id would prefer the
        // other as the week's head).
        let mut twin = Copied {
            source: "src-99".into(),
            ..copy_of(14, SnapState::Completed)
        };
        twin.snap.id = "zz-copy".into();
        let plan = run(&source, &[twin], &[weekly("daily", 4)], 14);
        assert_eq!(copied_days(&plan), [8]);
    }

    #[test]
    fn a_schedule_that_does_not_copy_here_copies_nothing() {
        let plan = run(&dailies(1..=30), &[], &[weekly("weekly", 4)], 30);
        assert_eq!(plan, CopyPlan::default());
    }

    #[test]
    fn copying_what_the_plan_says_leaves_nothing_to_copy() {
        // Day by day for ten weeks: copy what the plan says (completed at once), delete what the destination
        // plan deletes; no run copies a slot twice and every run's copies are the day's new head alone.
        let rules = [weekly("daily", 4)];
        let mut copies: Vec<Copied> = Vec::new();
        for today in 1..=70 {
            let source = dailies((today - 6).max(1)..=today);
            let plan = run(&source, &copies, &rules, today);
            assert_eq!(copied_days(&plan), [today], "day {today}");
            copies.extend(
                plan.copy
                    .iter()
                    .map(|c| copy_of(days([Arc::clone(&c.source)])[0], SnapState::Completed)),
            );
            assert_eq!(run(&source, &copies, &rules, today), CopyPlan::default());
            let snaps: Vec<Snap> = copies.iter().map(|c| c.snap.clone()).collect();
            let kept: HashSet<Arc<str>> = plan_destination(&snaps, &rules, today);
            copies.retain(|c| kept.contains(&c.snap.id));
        }
        let mut left: Vec<i64> = copies
            .iter()
            .map(|c| c.snap.slot)
            .map(|slot| (slot - day(0)).num_days())
            .collect();
        left.sort();
        // 10 March 2024 (day 70) is a Sunday: the heads of weeks 7 to 10.
        assert_eq!(left, [49, 56, 63, 70]);
    }

    /// A rule of one kind and count, for the property below.
    fn rule(kind: u8, n: u32) -> ScheduleRules {
        let mut keep = KeepRules::default();
        match kind {
            0 => keep.last = Some(n),
            1 => keep.daily = Some(Count::N(n)),
            2 => keep.weekly = Some(Count::N(n)),
            _ => keep.monthly = Some(Count::N(n)),
        }
        ScheduleRules {
            name: "daily".into(),
            keep,
            count_from_tag: false,
        }
    }

    fn state(n: u8) -> SnapState {
        match n {
            0 => SnapState::Pending,
            1 => SnapState::Completed,
            _ => SnapState::Error,
        }
    }

    proptest::proptest! {
        /// Over random histories, rules and copies already made: no source is copied twice, copies come oldest
        /// first with one per slot, every copy is held, and a rerun with the plan's copies pending copies nothing.
        #[test]
        fn copies_are_made_once_oldest_first_and_held(
            source_days in proptest::collection::btree_set(1i64..=90, 1..40),
            copied in proptest::collection::btree_map(1i64..=90, 0u8..3, 0..12),
            kind in 0u8..4,
            n in 1u32..6,
        ) {
            let source: Vec<Snap> = source_days.iter().map(|&d| source_at(d, "daily")).collect();
            let copies: Vec<Copied> = copied.iter().map(|(&d, &s)| copy_of(d, state(s))).collect();
            let rules = [rule(kind, n)];
            let plan = run(&source, &copies, &rules, 90);
            let live: Vec<i64> =
                copied.iter().filter(|(_, &s)| state(s) != SnapState::Error).map(|(&d, _)| d).collect();
            let made = copied_days(&plan);
            for d in &made {
                proptest::prop_assert!(!live.contains(d), "copied {} again: {:?}", d, plan);
            }
            proptest::prop_assert!(made.windows(2).all(|w| w[0] < w[1]), "{:?}", plan);
            for c in &plan.copy {
                proptest::prop_assert!(plan.hold.contains(&c.source), "{:?}", plan);
            }
            let mut after = copies.clone();
            after.retain(|c| c.snap.state != SnapState::Error || !made.contains(&(c.snap.slot - day(0)).num_days()));
            after.extend(made.iter().map(|&d| copy_of(d, SnapState::Pending)));
            let again = run(&source, &after, &rules, 90);
            proptest::prop_assert_eq!(again.copy, vec![]);
            proptest::prop_assert_eq!(again.hold, plan.hold);
        }
    }

    /// The destination's own retention over its copies: the ids it keeps.
    fn plan_destination(copies: &[Snap], rules: &[ScheduleRules], today: i64) -> HashSet<Arc<str>> {
        let plan = plan(
            &PlanInput {
                held: &crate::retention::NOTHING_HELD,
                snapshots: copies,
                schedules: rules,
                counts: &HashMap::new(),
                frozen_volumes: &HashSet::new(),
                tz: chrono_tz::Tz::UTC,
                targeted: None,
                orphans: Default::default(),
                caps: Default::default(),
            },
            day(today) + Duration::hours(1),
        );
        plan.decisions
            .into_iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.snapshot_id)
            .collect()
    }
}
