//! The retain phase: retention over the run's end state. The plan runs once the creates have settled
//! ([`phase`]): it hands the deletes of every volume not already released early to the delete queue
//! ([`super::prune`]), which has been draining beside the other phases since the run began, and closes it; then
//! each delete's outcome is recorded ([`deleted`]). What the plan keeps is tallied as it is decided, so a run over
//! a large estate does not hold a decision per kept snapshot.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::plan_retention;
use super::run::{Flight, Run};
use crate::ec2::op::Code;
use crate::error::Error;
use crate::retention::Decision;

/// Plans retention over the survey as it now stands (this run's snapshots in, every state learnt applied, the
/// frozen volumes left alone) and sends the deletes on; returns the plan: every decision when the run explains
/// itself, else the deletions (or a blocked plan's keeps).
pub(super) fn phase(run: &mut Run<'_>, flight: &Flight) -> Vec<Decision> {
    let (policy, now) = (run.spec.policy, run.now());
    let kept = &mut run.kept;
    let mut on_kept = |d: Decision| kept.add(&d);
    // Explained: the whole plan, in its order. Otherwise keeps are tallied as they are made and not held.
    let on_kept: Option<&mut dyn FnMut(Decision)> = if run.spec.explain {
        None
    } else {
        Some(&mut on_kept)
    };
    let plan = plan_retention(
        policy,
        &run.survey,
        &run.frozen,
        policy.timezone,
        now,
        on_kept,
    );
    for d in &plan.decisions {
        run.kept.add(d);
    }
    run.set_aside();
    match &plan.cap_hit {
        Some(hit) => {
            run.cap_hit(hit);
            flight.lock().close();
        }
        None => flight.lock().finish(&plan.decisions),
    }
    plan.decisions
}

/// Records the outcome of each delete the queue sent, early or at the end, and takes the deleted snapshots out of
/// the survey.
pub(super) fn deleted(run: &mut Run<'_>, deleted: Vec<(Decision, Result<(), Error>)>) {
    // Schedules of the snapshots deleted, for their metric labels (a map of the deleted ones only: the survey
    // can be hundreds of thousands). Looked up once per surveyed snapshot below: FxHash, as in
    // `retention::Interner`.
    let doomed: FxHashSet<&str> = deleted.iter().map(|(d, _)| &*d.snapshot_id).collect();
    let listed: FxHashMap<Arc<str>, Arc<[Arc<str>]>> = run
        .survey
        .snapshots
        .iter()
        .filter(|s| doomed.contains(&*s.id))
        .map(|s| (Arc::clone(&s.id), Arc::clone(&s.schedules)))
        .collect();
    drop(doomed);
    let mut gone = FxHashSet::default();
    for (d, result) in deleted {
        let serves = listed.get(&d.snapshot_id).map_or(&[][..], |s| &s[..]);
        match result {
            // Already gone counts as done: describe is eventually consistent.
            Ok(()) => run.deleted(&d, serves),
            Err(e) if e.is(Code::SnapshotNotFound) => run.deleted(&d, serves),
            Err(e) if e.is(Code::SnapshotInUse) => {
                run.kept_in_use(&d);
                continue;
            }
            Err(e @ Error::Stopped { .. }) => {
                run.delete_not_sent(&d, &e);
                continue;
            }
            Err(e) => {
                run.delete_failed(&d, serves, &e);
                continue;
            }
        }
        gone.insert(Arc::clone(&d.snapshot_id));
    }
    drop(listed);
    run.survey.snapshots.retain(|s| !gone.contains(&s.id));
}
