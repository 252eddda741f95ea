//! The run context every phase works on: what the run was asked ([`RunSpec`]), the backend, what it has learnt
//! (the survey, the volumes frozen for retention) and what it reports — and one method per event of a run, each
//! writing the event's log line, its metric and its report entry together, so the three cannot drift apart. A
//! phase decides; the context records. Also the state the concurrent parts of a run share ([`Flight`]): the
//! creates, the completion polls and the early deletes run side by side, and hold it by shared reference while
//! one phase at a time holds the context itself.
//!
//! Dry runs are the backend's business (`ec2::DryRun`): the context asks it ([`Ec2::dry_run`]) only for what a
//! dry run reports differently — the report's flag, metrics left alone, no waiting for snapshots that will never
//! exist.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::Notify;

use super::app::Stage;
use super::create::Todo;
use super::findings::SetAside;
use super::prune::Early;
use super::{new_run_id, Completion, RunSpec, Survey};
use crate::config::OnFailure;
use crate::ec2::Ec2;
use crate::error::Error;
use crate::metrics::{KeptTally, Metrics};
use crate::report::{Problem, RunReport};
use crate::retention::copies::{Copied, ToCopy};
use crate::retention::{CapHit, Decision, Snap};
use crate::schedule::format_slot;
use crate::ssm::batch::{Cause, Ran};

/// The problem code of a copy destination that cannot be used as configured.
pub(crate) const COPY_DESTINATION: &str = "copy-destination";

pub(super) struct Run<'a> {
    pub(crate) spec: &'a RunSpec<'a>,
    pub(crate) ec2: &'a dyn Ec2,
    metrics: &'a Metrics,
    now: &'a (dyn Fn() -> DateTime<Utc> + Sync),
    /// What the region holds for the policy; this run's snapshots join it as they are made.
    pub(crate) survey: Survey,
    /// Volumes whose snapshot of this slot failed or was put off: retention deletes nothing of theirs.
    pub(crate) frozen: HashSet<String>,
    /// What the retention plan kept, tallied decision by decision.
    pub(crate) kept: Kept,
    /// Volumes the app-consistency phase routed, and whether their snapshot is application-consistent (true) or
    /// a fallback (false): what [`Run::created`] counts.
    pub(crate) app_consistent: HashMap<String, bool>,
    pub(crate) report: RunReport,
}

impl<'a> Run<'a> {
    pub(crate) fn new(
        ec2: &'a dyn Ec2,
        spec: &'a RunSpec<'a>,
        metrics: &'a Metrics,
        now: &'a (dyn Fn() -> DateTime<Utc> + Sync),
    ) -> Self {
        let mut report = RunReport::new(
            new_run_id(),
            &spec.policy.name,
            spec.firing.clone(),
            ec2.region(),
            spec.slot,
            now(),
        );
        report.dry_run = ec2.dry_run();
        report.account = spec.account.to_string();
        Run {
            spec,
            ec2,
            metrics,
            now,
            survey: Survey::default(),
            frozen: HashSet::new(),
            kept: Kept::default(),
            app_consistent: HashMap::new(),
            report,
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.now)()
    }

    pub(crate) fn region(&self) -> &'a str {
        self.ec2.region()
    }

    fn policy(&self) -> &'a str {
        &self.spec.policy.name
    }

    /// The `account` label of the run's metrics.
    pub(crate) fn account(&self) -> &'a str {
        self.spec.account
    }

    /// The run's metrics, or None in a dry run (which leaves them alone).
    pub(crate) fn metrics(&self) -> Option<&'a Metrics> {
        (!self.ec2.dry_run()).then_some(self.metrics)
    }

    /// How the run polls pending snapshots; None when it does not (not asked to, or a dry run: nothing it
    /// "creates" exists).
    pub(crate) fn polls(&self) -> Option<Completion> {
        self.spec.completion.filter(|_| !self.ec2.dry_run())
    }

    /// The completion settings of a run that waits for its snapshots (a zero deadline only looks once).
    pub(crate) fn waits(&self) -> Option<Completion> {
        self.polls().filter(Completion::waits)
    }

    /// A problem of the run's own (no AWS call failed): `code` is the run's label for it.
    fn problem(
        &mut self,
        resource: String,
        operation: &'static str,
        code: String,
        message: String,
    ) {
        self.report.problems.push(Problem {
            resource,
            operation,
            code,
            message,
            aws: None,
        });
    }

    /// A problem caused by `e`: its code and message, and the AWS call and code meaning it carries, if any.
    fn failure(&mut self, resource: String, operation: &'static str, e: &Error) {
        self.report
            .problems
            .push(Problem::of(resource, operation, e));
    }

    /// The region could not be read: nothing is created or deleted.
    pub(crate) fn survey_failed(&mut self, e: &Error) {
        tracing::error!(error = %e, kind = e.kind(), "survey failed: nothing created or deleted this run");
        self.report.fatal = Some(Problem::of(self.region().to_string(), "describe", e));
        self.report.retention_skipped = Some("the region could not be read".into());
    }

    /// A target left out for a firing schedule (a bad count-tag value).
    pub(crate) fn target_skipped(&mut self, schedule: &str, p: Problem) {
        tracing::warn!(resource = %p.resource, schedule = %schedule, problem = %p.message, "target skipped: bad count tag");
        self.metrics
            .resource_skipped(self.policy(), &[schedule], "bad-count-tag");
        self.report.problems.push(p);
    }

    /// Logged at debug level, like [`Run::deleted`]: the call ledger (`ec2::stop::Guarded`) has already written the
    /// call's info line; this one adds which volume got which snapshot, for whoever follows a run in detail.
    pub(crate) fn created(&mut self, volume: &str, snapshot: &str, serves: &[String]) {
        tracing::debug!(volume = %volume, snapshot = %snapshot, "snapshot created");
        self.metrics
            .snapshot_created(self.policy(), serves, self.account(), self.region());
        self.report.created += 1;
        if let Some(&consistent) = self.app_consistent.get(volume) {
            self.metrics.app_snapshot(self.policy(), consistent);
            if consistent {
                self.report.app_consistent += 1;
            } else {
                self.report.fallback += 1;
            }
        }
    }

    /// One instance's invocation of an SSM document ended (`stage`: pre, vss, post).
    pub(crate) fn ssm_ran(&mut self, stage: Stage, document: &str, instance: &str, ran: &Ran) {
        let outcome = ran.outcome();
        if ran.succeeded() {
            tracing::info!(instance = %instance, stage = stage.as_str(), document = %document, "SSM command succeeded");
        } else {
            tracing::warn!(instance = %instance, stage = stage.as_str(), document = %document, outcome, "SSM command did not succeed");
        }
        self.metrics
            .ssm_invocation(self.policy(), document, outcome);
    }

    /// An instance's pre script or VSS command failed (`cause`): under `on-failure = "crash-consistent"` its
    /// volumes get ordinary snapshots tagged not consistent (the run is partial); under `"skip"` they get none
    /// and fail (frozen for retention).
    pub(crate) fn app_failed(
        &mut self,
        instance: &str,
        todo: &[Todo],
        stage: Stage,
        how: OnFailure,
        cause: Cause,
    ) {
        match how {
            OnFailure::CrashConsistent => {
                tracing::warn!(instance = %instance, stage = stage.as_str(), code = cause.code, cause = %cause.message, "not application-consistent: taking crash-consistent snapshots instead");
                for (r, _) in todo {
                    self.app_consistent.insert(r.volume_id.clone(), false);
                }
                let message = format!(
                    "instance {instance}: {}; took a crash-consistent snapshot instead (on-failure = \"crash-consistent\")",
                    cause.message
                );
                self.problem(
                    instance.to_string(),
                    stage.as_str(),
                    cause.code.into(),
                    message,
                );
            }
            OnFailure::Skip => {
                tracing::error!(instance = %instance, stage = stage.as_str(), code = cause.code, cause = %cause.message, "not application-consistent: no snapshot (on-failure = skip)");
                for (r, serves) in todo {
                    self.metrics.snapshot_failed(
                        self.policy(),
                        serves,
                        self.account(),
                        self.region(),
                        "create",
                    );
                    self.frozen.insert(r.volume_id.clone());
                    let message = format!(
                        "instance {instance}: {}; no snapshot taken (on-failure = \"skip\")",
                        cause.message
                    );
                    self.problem(r.volume_id.clone(), "create", cause.code.into(), message);
                }
            }
        }
    }

    /// A post script that did not succeed: the snapshot stands, the run is partial, and the instance may still be
    /// frozen until the freeze document's own auto-thaw.
    pub(crate) fn post_failed(&mut self, instance: &str, cause: Cause) {
        tracing::error!(instance = %instance, code = cause.code, cause = %cause.message, "post script did not succeed");
        let message = format!(
            "instance {instance}: post script: {}; what the pre script did may still hold (the freeze document thaws \
             by itself after its AutoThawSeconds)",
            cause.message
        );
        self.problem(instance.to_string(), "post", cause.code.into(), message);
    }

    /// An instance was held still (pre done → post done) for `window`.
    pub(crate) fn froze(&mut self, instance: &str, window: std::time::Duration) {
        tracing::debug!(instance = %instance, seconds = window.as_secs_f64(), "freeze window");
        self.metrics.froze(self.policy(), window);
    }

    /// A volume put off to the next run by a pending-snapshot limit (EC2's, or the account cap this run applies):
    /// the run is partial, not failed, and retention leaves the volume alone.
    /// `why`: the volume's `defer` problem.
    pub(crate) fn deferred(&mut self, serves: &[String], why: Problem) {
        tracing::warn!(volume = %why.resource, reason = %why.message, "snapshot deferred: pending-snapshot limit");
        self.metrics
            .resource_skipped(self.policy(), serves, "pending-limit");
        self.frozen.insert(why.resource.clone());
        self.report.problems.push(why);
    }

    /// A create not sent because the daemon is shutting down. Not an AWS failure; the next run of the slot makes
    /// it.
    pub(crate) fn create_not_sent(&mut self, volume: String, e: &Error) {
        tracing::debug!(volume = %volume, "snapshot not made: shutting down");
        self.frozen.insert(volume.clone());
        self.failure(volume, "defer", e);
    }

    pub(crate) fn create_failed(&mut self, volume: String, serves: &[String], e: &Error) {
        tracing::error!(volume = %volume, error = %e, kind = e.kind(), "snapshot failed");
        self.metrics.snapshot_failed(
            self.policy(),
            serves,
            self.account(),
            self.region(),
            "create",
        );
        self.frozen.insert(volume.clone());
        self.failure(volume, "create", e);
    }

    /// A CreateTags that failed: the snapshots are good, the next run of the slot tags them.
    pub(crate) fn tag_failed(&mut self, ids: Vec<String>, e: &Error) {
        tracing::error!(snapshots = ids.len(), error = %e, kind = e.kind(), "could not tag snapshots; the next run of the slot tries again");
        for id in ids {
            self.failure(id, "tag", e);
        }
    }

    /// A snapshot found in `error` state: it restores nothing and is deleted. One of this slot fails its volume
    /// (frozen; the next run of the slot makes a new one).
    pub(crate) fn errored(&mut self, snap: &Snap) {
        let this_slot = snap.slot == self.spec.slot;
        tracing::error!(snapshot = %snap.id, volume = %snap.volume_id, this_slot, "snapshot ended in error state: deleting it");
        self.metrics.snapshot_failed(
            self.policy(),
            &snap.schedules,
            self.account(),
            self.region(),
            "complete",
        );
        if this_slot {
            self.frozen.insert(snap.volume_id.to_string());
            self.report.created = self.report.created.saturating_sub(1);
        }
        let message = format!(
            "snapshot {} of slot {} ended in error state; it restores nothing and {}{}",
            snap.id,
            format_slot(snap.slot),
            if self.ec2.dry_run() {
                "would be deleted"
            } else {
                "was deleted"
            },
            if this_slot {
                "; the next run of this slot makes a new one"
            } else {
                ""
            }
        );
        let operation = if this_slot { "create" } else { "complete" };
        self.problem(
            snap.volume_id.to_string(),
            operation,
            "snapshot-error".into(),
            message,
        );
    }

    /// The delete of a snapshot in `error` state failed; the next run finds it again.
    pub(crate) fn errored_not_deleted(&mut self, snapshot: &str, e: &Error) {
        tracing::error!(snapshot = %snapshot, error = %e, kind = e.kind(), "could not delete the errored snapshot");
        self.failure(snapshot.to_string(), "delete", e);
    }

    /// A snapshot still pending at the completion deadline (`waited`); it stays, and the next run polls it again.
    pub(crate) fn still_pending(
        &mut self,
        snap: &Snap,
        waited: Completion,
        last_error: Option<&Error>,
    ) {
        tracing::warn!(snapshot = %snap.id, volume = %snap.volume_id, "snapshot still pending at the completion deadline; the next run checks it again");
        self.metrics
            .pending_at_deadline(self.policy(), self.account(), self.region());
        let message = format!(
            "snapshot {} of slot {} still pending after {}{}; the next run checks it again",
            snap.id,
            format_slot(snap.slot),
            humantime::format_duration(waited.deadline),
            last_error
                .map(|e| format!(" (last poll failed: {e})"))
                .unwrap_or_default()
        );
        self.problem(
            snap.volume_id.to_string(),
            "complete",
            "snapshot-pending".into(),
            message,
        );
    }

    /// The plan set snapshots aside for a person to look at (see [`SetAside`]).
    pub(crate) fn set_aside(&mut self) {
        let region = self.region();
        self.kept
            .set_aside
            .report(self.policy(), region, &mut self.report);
    }

    /// Over a deletion cap the plan deletes nothing; the problem makes the run partial, so the alert fires.
    pub(crate) fn cap_hit(&mut self, hit: &CapHit) {
        tracing::error!(setting = hit.setting, limit = %hit.limit, needed = %hit.needed, detail = %hit.message, "deletion cap hit: nothing deleted");
        let message = format!("policy {}: {}", self.policy(), hit.message);
        self.problem(
            self.region().to_string(),
            "retention",
            "deletion-cap".into(),
            message,
        );
    }

    /// [`Run::cap_hit`] for the retention of the copies in `destination`: the problem names that region, where
    /// nothing was deleted, not the source's.
    pub(crate) fn copy_cap_hit(&mut self, destination: &str, hit: &CapHit) {
        tracing::error!(destination = %destination, setting = hit.setting, limit = %hit.limit, needed = %hit.needed, detail = %hit.message, "deletion cap hit in a copy destination: no copy deleted");
        let message = format!(
            "policy {}, copies in {destination} of {}'s snapshots: {}",
            self.policy(),
            self.region(),
            hit.message
        );
        self.problem(
            destination.to_string(),
            "retention",
            "deletion-cap".into(),
            message,
        );
    }

    /// A destination of the policy's copies could not be read (or has no backend): nothing is copied or deleted
    /// there this run, and the source holds what that destination would want if it held nothing.
    pub(crate) fn copy_survey_failed(&mut self, destination: &str, e: &Error) {
        tracing::error!(destination = %destination, error = %e, kind = e.kind(), "copy destination could not be read: no copies made or pruned there this run");
        let message = format!(
            "copies to {destination}: the destination could not be read ({e}); nothing was copied to or deleted \
             from it, and the source keeps what it would want"
        );
        let mut p = Problem::of(destination.to_string(), "copy", e);
        p.message = message;
        // No AWS call failed: the destination cannot be used as configured (it is the region snapshotted, or the
        // daemon has no backend for it). Only a person can fix that; retrying the slot would not.
        if matches!(e, Error::Other(_)) {
            p.code = COPY_DESTINATION.into();
        }
        self.report.problems.push(p);
    }

    /// A copy sent: pending in the destination. Debug level, like [`Run::created`]: the call ledger has the info
    /// line.
    pub(crate) fn copy_created(&mut self, destination: &str, want: &ToCopy, copy: &str) {
        tracing::debug!(source = %want.source, copy = %copy, destination = %destination, "copy sent");
        self.metrics.copies(
            self.policy(),
            &want.schedules,
            self.account(),
            self.region(),
            destination,
            "created",
            1,
        );
        self.report.copies.created += 1;
    }

    /// Copies put off to the next run (the destination's copy-concurrency gate stayed full until the deadline, or
    /// AWS refused with its copy limit): not a problem, the next run copies them first, oldest first.
    pub(crate) fn copies_deferred(&mut self, destination: &str, wants: &[ToCopy]) {
        tracing::info!(destination = %destination, copies = wants.len(), "copies deferred to the next run: too many pending in the destination");
        for w in wants {
            self.metrics.copies(
                self.policy(),
                &w.schedules,
                self.account(),
                self.region(),
                destination,
                "deferred",
                1,
            );
        }
        self.report.copies.deferred += wants.len();
    }

    /// CopySnapshot refused: the run is partial; the next run tries again.
    pub(crate) fn copy_failed(&mut self, destination: &str, want: &ToCopy, e: &Error) {
        tracing::error!(source = %want.source, destination = %destination, error = %e, kind = e.kind(), "copy failed");
        self.metrics.copies(
            self.policy(),
            &want.schedules,
            self.account(),
            self.region(),
            destination,
            "failed",
            1,
        );
        let mut p = Problem::of(want.source.to_string(), "copy", e);
        p.message = format!("copy to {destination} refused: {}", p.message);
        self.report.problems.push(p);
    }

    /// A copy found in `error` state: it restores nothing, is deleted, and the next run copies its source again.
    pub(crate) fn copy_errored(&mut self, destination: &str, copy: &Copied) {
        tracing::error!(copy = %copy.snap.id, source = %copy.source, destination = %destination, "copy ended in error state: deleting it");
        self.metrics.copies(
            self.policy(),
            &copy.snap.schedules,
            self.account(),
            self.region(),
            destination,
            "failed",
            1,
        );
        let message = format!(
            "copy {} in {destination} of slot {} ended in error state; it restores nothing and {}; the next run \
             copies the source again",
            copy.snap.id,
            format_slot(copy.snap.slot),
            if self.ec2.dry_run() {
                "would be deleted"
            } else {
                "was deleted"
            },
        );
        self.problem(
            copy.source.to_string(),
            "copy",
            "copy-error".into(),
            message,
        );
    }

    /// A copy deleted by the destination's retention.
    pub(crate) fn copy_deleted(&mut self, destination: &str, d: &Decision, serves: &[Arc<str>]) {
        let reason = d.reasons.first().map_or("", |r| r.as_str());
        tracing::debug!(copy = %d.snapshot_id, volume = %d.volume_id, destination = %destination, reason, "copy deleted");
        self.metrics
            .snapshot_deleted(self.policy(), serves, self.account(), destination);
        self.report.copies.deleted += 1;
    }

    /// [`Run::kept_in_use`] for a copy in `destination` (an AMI registered from it there).
    pub(crate) fn copy_kept_in_use(&mut self, destination: &str, d: &Decision) {
        tracing::info!(copy = %d.snapshot_id, volume = %d.volume_id, destination = %destination, "kept: the copy backs an AMI");
        self.metrics
            .kept_in_use(self.policy(), self.account(), destination);
        self.report.kept_in_use += 1;
    }

    pub(crate) fn copy_delete_failed(
        &mut self,
        destination: &str,
        d: &Decision,
        serves: &[Arc<str>],
        e: &Error,
    ) {
        tracing::error!(copy = %d.snapshot_id, destination = %destination, error = %e, kind = e.kind(), "copy delete failed");
        self.metrics
            .snapshot_failed(self.policy(), serves, self.account(), destination, "delete");
        let mut p = Problem::of(d.snapshot_id.to_string(), "delete", e);
        p.message = format!("in {destination}: {}", p.message);
        self.report.problems.push(p);
    }

    /// The destination after the run: copies still pending there, and per schedule the oldest newest-completed
    /// copy across its volumes (what the DR staleness is measured from; None: no volume has anything yet).
    pub(crate) fn copies_estate(
        &mut self,
        destination: &str,
        pending: usize,
        oldest: &[(String, Option<DateTime<Utc>>)],
    ) {
        self.report.copies.pending += pending;
        let Some(metrics) = self.metrics() else {
            return;
        };
        let (policy, account, region) = (self.policy(), self.account(), self.region());
        metrics.copies_pending(policy, account, region, destination, pending);
        for (schedule, at) in oldest {
            metrics.set_dr_freshness(policy, schedule, account, region, destination, *at);
        }
    }

    /// `serves`: the schedules the snapshot served, for the metric's labels. Debug level: see [`Run::created`].
    pub(crate) fn deleted(&mut self, d: &Decision, serves: &[Arc<str>]) {
        let reason = d.reasons.first().map_or("", |r| r.as_str());
        tracing::debug!(snapshot = %d.snapshot_id, volume = %d.volume_id, reason, "snapshot deleted");
        self.metrics
            .snapshot_deleted(self.policy(), serves, self.account(), self.region());
        self.report.deleted += 1;
    }

    /// A delete EC2 refused because the snapshot backs an AMI: kept, never a failure.
    pub(crate) fn kept_in_use(&mut self, d: &Decision) {
        tracing::info!(snapshot = %d.snapshot_id, volume = %d.volume_id, "kept: the snapshot backs an AMI");
        self.metrics
            .kept_in_use(self.policy(), self.account(), self.region());
        self.report.kept_in_use += 1;
    }

    /// A delete not sent because the daemon is shutting down: neither deleted nor failed; the next run plans it
    /// again.
    pub(crate) fn delete_not_sent(&mut self, d: &Decision, e: &Error) {
        tracing::debug!(snapshot = %d.snapshot_id, "delete not sent: shutting down");
        self.failure(d.snapshot_id.to_string(), "defer", e);
    }

    pub(crate) fn delete_failed(&mut self, d: &Decision, serves: &[Arc<str>], e: &Error) {
        tracing::error!(snapshot = %d.snapshot_id, error = %e, kind = e.kind(), "delete failed");
        self.metrics.snapshot_failed(
            self.policy(),
            serves,
            self.account(),
            self.region(),
            "delete",
        );
        self.failure(d.snapshot_id.to_string(), "delete", e);
    }
}

/// What the retention plan kept: tallied for the metrics and the report, set-aside snapshots noted, each decision
/// logged at debug level.
#[derive(Default)]
pub(super) struct Kept {
    pub(crate) tally: KeptTally,
    pub(crate) set_aside: SetAside,
}

impl Kept {
    pub(crate) fn add(&mut self, d: &Decision) {
        self.tally.add(d);
        self.set_aside.add(d);
        log_decision(d);
    }
}

/// One retention decision at debug level. Formatting every decision's reasons is a real cost at scale; only paid
/// when someone reads it.
fn log_decision(d: &Decision) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        tracing::debug!(snapshot = %d.snapshot_id, volume = %d.volume_id, action = ?d.action, reasons = %reasons.join("; "), "retention decision");
    }
}

/// What the concurrent parts of a run share, from the first create until retention has planned the end state:
/// the early deletes with every snapshot state learnt ([`Early`]), and the signal that a completion poll has
/// been (creates waiting for room under the pending cap look again).
pub(super) struct Flight {
    pub(crate) early: Mutex<Early>,
    pub(crate) freed: Notify,
}

impl Flight {
    /// Plans the expected end state over the survey and `todo`, before anything is created; returns the queue of
    /// deletes, which retention closes.
    pub(crate) fn start(run: &mut Run<'_>, todo: &[Todo]) -> (Flight, UnboundedReceiver<Decision>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let creating: Vec<(String, Vec<String>)> = todo
            .iter()
            .map(|(r, serves)| (r.volume_id.clone(), serves.clone()))
            .collect();
        let flight = Flight {
            early: Mutex::new(Early::plan(run, &creating, tx)),
            freed: Notify::new(),
        };
        (flight, rx)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Early> {
        self.early.lock().expect("early deletes poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
    use crate::error::Error;
    use crate::retention::Action;

    fn config() -> crate::config::Config {
        let path = std::path::Path::new("demo");
        crate::config::from_toml_str(path, crate::demo::DEMO_CONFIG, &[]).unwrap()
    }

    fn api_error(code: &str) -> Error {
        Error::api(crate::ec2::op::Op::DeleteSnapshot, "r-1", code, "refused")
    }

    #[test]
    fn each_event_writes_its_metric_and_its_report_entry_together() {
        let config = config();
        let policy = config.policy("prod").unwrap();
        let slot = Utc::now();
        let spec = RunSpec::new(policy, slot, FAKE_ACCOUNT);
        let (fake, metrics) = (FakeEc2::new("r-1"), Metrics::new());
        let now = move || slot;
        let mut run = Run::new(&fake, &spec, &metrics, &now);
        let serves = ["fast".to_string(), "slow".to_string()];
        run.created("vol-1", "snap-new", &serves);
        let full = Problem {
            resource: "vol-2".into(),
            operation: "defer",
            code: "pending-limit".into(),
            message: "full".into(),
            aws: None,
        };
        run.deferred(&serves[..1], full);
        run.create_failed("vol-3".into(), &serves[1..], &api_error("InternalError"));
        let d = Decision {
            snapshot_id: "snap-old".into(),
            volume_id: "vol-1".into(),
            slot,
            action: Action::Delete,
            reasons: Vec::new(),
            orphan: false,
        };
        let fast: Vec<Arc<str>> = vec!["fast".into()];
        run.deleted(&d, &fast);
        run.kept_in_use(&d);
        run.delete_failed(&d, &fast, &api_error("InternalError"));

        let r = &run.report;
        assert_eq!((r.created, r.deleted, r.kept_in_use), (1, 1, 1));
        let problems: Vec<(&str, &str, &str)> = r
            .problems
            .iter()
            .map(|p| (p.resource.as_str(), p.operation, p.code.as_str()))
            .collect();
        assert_eq!(
            problems,
            [
                ("vol-2", "defer", "pending-limit"),
                ("vol-3", "create", "InternalError"),
                ("snap-old", "delete", "InternalError"),
            ]
        );
        let frozen: HashSet<&str> = run.frozen.iter().map(String::as_str).collect();
        assert_eq!(frozen, HashSet::from(["vol-2", "vol-3"]));
        let text = metrics.render(slot);
        for line in [
            r#"snapwarden_snapshots_created_total{account="123456789012",policy="prod",region="r-1",schedule="fast"} 1"#,
            r#"snapwarden_snapshots_created_total{account="123456789012",policy="prod",region="r-1",schedule="slow"} 1"#,
            r#"snapwarden_skipped_resources_total{policy="prod",reason="pending-limit",schedule="fast"} 1"#,
            r#"snapwarden_snapshots_failed_total{account="123456789012",operation="create",policy="prod",region="r-1",schedule="slow"} 1"#,
            r#"snapwarden_snapshots_deleted_total{account="123456789012",policy="prod",region="r-1",schedule="fast"} 1"#,
            r#"snapwarden_snapshots_kept_in_use_total{account="123456789012",policy="prod",region="r-1"} 1"#,
            r#"snapwarden_snapshots_failed_total{account="123456789012",operation="delete",policy="prod",region="r-1",schedule="fast"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
