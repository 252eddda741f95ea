//! Waiting for snapshots to complete: the run polls the policy's pending snapshots (this run's, as each create
//! returns, and any an earlier run left pending) while it creates, and for up to `daemon.completion-deadline`
//! after the last create, handing each state it learns to the early deletes ([`super::prune::Early`]). After the
//! wait — or without one: a zero deadline still describes the new snapshots once, and a run that does not poll at
//! all still has the survey's and the create answers' states — it deals with what did not complete: `error`
//! snapshots are reported and deleted, ones still pending are reported and left for the next run.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::prune::Early;
use super::survey::Survey;
use super::{Completion, RunSpec, FILTER_VALUES};
use crate::ec2::op::Code;
use crate::ec2::{self, Ec2, Filter};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::report::{Problem, RunReport};
use crate::retention::SnapState;
use crate::schedule::format_slot;

/// Polls until creation is over (`creating` turns false) and then nothing is pending or `c.deadline` has passed
/// since; `freed` is signalled after every poll. One DescribeSnapshots (filtered by id, 200 ids each) per poll, the interval doubling from
/// `c.first_poll` to `c.max_poll`; the first poll after the last create goes out at once. Returns the last
/// poll's error, if it failed: a failed poll is not fatal, the snapshots just stay pending as far as the run
/// knows and the next poll tries again.
pub(super) async fn poll(
    ec2: &dyn Ec2,
    c: Completion,
    early: &Mutex<Early>,
    freed: &Notify,
    mut creating: watch::Receiver<bool>,
) -> Option<Error> {
    let lock = || early.lock().expect("early deletes poisoned");
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
        freed.notify_waiters();
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

/// After the wait (`waited`: the completion settings of a run that waited; None when it did not), for the snapshots in
/// `survey` (states already updated):
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
#[allow(clippy::too_many_arguments)]
pub(super) async fn settle(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    waited: Option<Completion>,
    last_error: Option<Error>,
    survey: &mut Survey,
    frozen: &mut HashSet<String>,
    report: &mut RunReport,
    metrics: &Metrics,
) {
    let policy = &spec.policy.name;
    let region = ec2.region().to_string();
    let errored: Vec<_> = survey
        .snapshots
        .iter()
        .filter(|s| s.state == SnapState::Error)
        .cloned()
        .collect();
    for snap in &errored {
        let this_slot = snap.slot == spec.slot;
        tracing::error!(snapshot = %snap.id, volume = %snap.volume_id, this_slot, "snapshot ended in error state: deleting it");
        for s in snap.schedules.iter() {
            metrics
                .snapshots_failed
                .with_label_values(&[policy, &**s, &region, "complete"])
                .inc();
        }
        if this_slot {
            frozen.insert(snap.volume_id.to_string());
            report.created = report.created.saturating_sub(1);
        }
        report.problems.push(Problem {
            resource: snap.volume_id.to_string(),
            operation: if this_slot { "create" } else { "complete" },
            code: "snapshot-error".into(),
            message: format!(
                "snapshot {} of slot {} ended in error state; it restores nothing and {}{}",
                snap.id,
                format_slot(snap.slot),
                if spec.dry_run {
                    "would be deleted"
                } else {
                    "was deleted"
                },
                if this_slot {
                    "; the next run of this slot makes a new one"
                } else {
                    ""
                }
            ),
            aws: None,
        });
        match ec2.delete_snapshot(&snap.id).await {
            Ok(()) => {}
            Err(e) if e.is(Code::SnapshotNotFound) => {}
            // Not sent at shutdown: the next run finds it in error again and deletes it.
            Err(Error::Stopped { .. }) => {}
            Err(e) => {
                tracing::error!(snapshot = %snap.id, error = %e, kind = e.kind(), "could not delete the errored snapshot");
                report.problems.push(Problem {
                    resource: snap.id.to_string(),
                    operation: "delete",
                    code: e.code().to_string(),
                    message: e.to_string(),
                    aws: e.api_failure(),
                });
            }
        }
    }
    // Out of the plan either way: deleted, or reported and retried by the next run.
    survey.snapshots.retain(|s| s.state != SnapState::Error);

    let Some(c) = waited else {
        report.pending = survey
            .snapshots
            .iter()
            .filter(|s| s.state == SnapState::Pending && s.slot == spec.slot)
            .count();
        return;
    };
    let mut incomplete = 0;
    for snap in survey
        .snapshots
        .iter()
        .filter(|s| s.state == SnapState::Pending)
    {
        incomplete += 1;
        tracing::warn!(snapshot = %snap.id, volume = %snap.volume_id, "snapshot still pending at the completion deadline; the next run checks it again");
        report.problems.push(Problem {
            resource: snap.volume_id.to_string(),
            operation: "complete",
            code: "snapshot-pending".into(),
            message: format!(
                "snapshot {} of slot {} still pending after {}{}; the next run checks it again",
                snap.id,
                format_slot(snap.slot),
                humantime::format_duration(c.deadline),
                last_error
                    .as_ref()
                    .map(|e| format!(" (last poll failed: {e})"))
                    .unwrap_or_default()
            ),
            aws: None,
        });
    }
    if incomplete > 0 {
        metrics
            .snapshots_incomplete
            .with_label_values(&[policy, &region])
            .inc_by(incomplete);
    }
}
