//! The settle phase: waiting for snapshots to complete. The run polls the policy's pending snapshots (this run's, as each create
//! returns, and any an earlier run left pending) while it creates, and for up to `daemon.completion-deadline`
//! after the last create, handing each state it learns to the early deletes ([`super::prune::Early`]). After the
//! wait — or without one: a zero deadline still describes the new snapshots once, and a run that does not poll at
//! all still has the survey's and the create answers' states — it deals with what did not complete: `error`
//! snapshots are reported and deleted, ones still pending are reported and left for the next run.

use tokio::sync::watch;
use tokio::time::Instant;

use super::run::{Flight, Run};
use super::{Completion, FILTER_VALUES};
use crate::ec2::op::Code;
use crate::ec2::{self, Ec2, Filter};
use crate::error::Error;
use crate::retention::SnapState;

/// Polls until creation is over (`creating` turns false) and then nothing is pending or `c.deadline` has passed
/// since; `flight.freed` is signalled after every poll. One DescribeSnapshots (filtered by id, 200 ids each) per poll, the interval doubling from
/// `c.first_poll` to `c.max_poll`; the first poll after the last create goes out at once. Returns the last
/// poll's error, if it failed: a failed poll is not fatal, the snapshots just stay pending as far as the run
/// knows and the next poll tries again.
pub(super) async fn poll(
    ec2: &dyn Ec2,
    c: Completion,
    flight: &Flight,
    mut creating: watch::Receiver<bool>,
) -> Option<Error> {
    let lock = || flight.lock();
    let mut interval = c.first_poll;
    let mut deadline: Option<Instant> = None;
    let mut last_error = None;
    loop {
        if deadline.is_none() && !*creating.borrow() {
            deadline = Some(Instant::now() + c.deadline);
        }
        let mut ids: Vec<String> = lock().pending.keys().map(|id| id.to_string()).collect();
        ids.sort();
        if !ids.is_empty() {
            last_error = None;
        }
        for chunk in ids.chunks(FILTER_VALUES) {
            let filter = [Filter::new("snapshot-id", chunk.to_vec())];
            match ec2::all_snapshots(ec2, &filter).await {
                // A snapshot missing from the answer (describe is eventually consistent) stays pending.
                Ok(found) => {
                    let mut e = lock();
                    for s in found {
                        e.learnt(&s.id, s.state);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "completion poll failed; trying again");
                    last_error = Some(e);
                }
            }
        }
        // Creates waiting for room under the account's pending cap look again.
        flight.freed.notify_waiters();
        let left = !lock().pending.is_empty();
        let now = Instant::now();
        match deadline {
            Some(d) if !left || now >= d => return last_error,
            Some(d) => tokio::time::sleep(interval.min(d - now)).await,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    // Creation over: poll right away, and start the deadline.
                    _ = creating.wait_for(|c| !c) => {}
                }
            }
        }
        interval = (interval * 2).min(c.max_poll.max(c.first_poll));
    }
}

/// The phase, after the creates and the wait (`last_error`: the last poll's, if it failed): this run's snapshots
/// join the survey with every state learnt, then what did not complete is dealt with:
/// - a snapshot in `error` (found so by the survey or by polling) restores nothing: it is reported (code
///   `snapshot-error`; operation `create` when it was this slot's, so the volume counts as failed, else
///   `complete`), counted in `snapshots_failed_total{operation="complete"}`, deleted (it also counts against EC2's
///   pending limit) and taken out of the survey. A volume whose slot snapshot errored is frozen for retention,
///   like a failed create, and the next run for the slot (catch-up) makes a new one;
/// - a snapshot still pending at the deadline is reported (code `snapshot-pending`, operation `complete`: the run
///   is partial) and counted in `snapshots_pending_at_deadline_total`; it stays, and the next run's survey finds it
///   and polls it again. A run that did not wait reports this slot's pending snapshots as not yet complete
///   (`RunReport::pending`), not as a problem: not waiting was asked for. Either way retention keeps pending
///   snapshots and does not count them toward keep rules, and the staleness metrics do not count them as protection.
pub(super) async fn phase(run: &mut Run<'_>, flight: &Flight, last_error: Option<Error>) {
    {
        let mut early = flight.lock();
        run.survey.snapshots.append(&mut early.created);
        for s in run.survey.snapshots.iter_mut() {
            if let Some(&state) = early.states.get(&*s.id) {
                s.state = state;
            }
        }
    }
    // Whether or not the run waited: what it saw decides (an `error` snapshot fails its volume).
    delete_errored(run).await;
    match run.waits() {
        Some(c) => {
            let pending: Vec<_> = run
                .survey
                .snapshots
                .iter()
                .filter(|s| s.state == SnapState::Pending)
                .cloned()
                .collect();
            for snap in &pending {
                run.still_pending(snap, c, last_error.as_ref());
            }
        }
        None => {
            run.report.pending = run
                .survey
                .snapshots
                .iter()
                .filter(|s| s.state == SnapState::Pending && s.slot == run.spec.slot)
                .count();
        }
    }
}

/// Reports and deletes the snapshots in `error` state, and takes them out of the survey: deleted, or reported
/// and retried by the next run.
async fn delete_errored(run: &mut Run<'_>) {
    let errored: Vec<_> = run
        .survey
        .snapshots
        .iter()
        .filter(|s| s.state == SnapState::Error)
        .cloned()
        .collect();
    for snap in &errored {
        run.errored(snap);
        match run.ec2.delete_snapshot(&snap.id).await {
            Ok(()) => {}
            Err(e) if e.is(Code::SnapshotNotFound) => {}
            // Not sent at shutdown: the next run finds it in error again and deletes it.
            Err(Error::Stopped { .. }) => {}
            Err(e) => run.errored_not_deleted(&snap.id, &e),
        }
    }
    run.survey.snapshots.retain(|s| s.state != SnapState::Error);
}
