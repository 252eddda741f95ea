//! The record phase: what a run leaves behind once its calls are done. The estate's gauges (kept snapshots by
//! reason, managed snapshots, staleness per schedule: [`estate`]) and the run's verdict — its `run finished` line,
//! its result and duration metrics, the finished report ([`finish`]). A dry run logs its line and touches no
//! metric.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::run::Run;
use super::Survey;
use crate::config::Policy;
use crate::metrics::Freshness;
use crate::report::{RunReport, RunResult};
use crate::retention::SnapState;

/// The state of the estate after the run: the plan's tally, the managed snapshots left, each schedule's freshness.
pub(super) fn estate(run: &mut Run<'_>) {
    run.report.kept = run.kept.tally.kept;
    let Some(metrics) = run.metrics() else {
        return;
    };
    let (policy, account, region) = (&run.spec.policy.name, run.account(), run.region());
    metrics.record_plan(policy, account, region, &run.kept.tally);
    metrics.managed_snapshots(policy, account, region, run.survey.snapshots.len());
    for (schedule, f) in freshness(run.spec.policy, &run.survey, run.now()) {
        metrics.set_freshness(policy, &schedule, account, region, f);
    }
}

/// Ends the run: its finish time, the `run finished` line and the run metrics; returns the report.
pub(super) fn finish(mut run: Run<'_>) -> RunReport {
    run.report.finished_at = run.now();
    let report = &run.report;
    let result = report.result();
    let retention = if report.retention_skipped.is_some() {
        RunResult::Failure
    } else if report
        .problems
        .iter()
        .any(|p| p.operation == "delete" || p.operation == "retention")
    {
        RunResult::Partial
    } else {
        RunResult::Success
    };
    let secs = (report.finished_at - report.started_at)
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    tracing::info!(
        result = result.as_str(),
        targeted = report.targeted_volumes,
        created = report.created,
        pending = report.pending,
        already_done = report.already_done,
        failed = report.failed_volumes(),
        deleted = report.deleted,
        kept = report.kept,
        kept_in_use = report.kept_in_use,
        copies_sent = report.copies.created,
        copies_deferred = report.copies.deferred,
        copies_pending = report.copies.pending,
        copies_deleted = report.copies.deleted,
        seconds = secs,
        dry_run = report.dry_run,
        "run finished"
    );
    if let Some(metrics) = run.metrics() {
        let results = [("snapshot", result), ("retention", retention)];
        let policy = &run.spec.policy.name;
        metrics.run_finished(policy, &run.spec.firing, secs, results, report.finished_at);
    }
    run.report
}

/// Per schedule: the oldest newest-completed snapshot over its targeted volumes, and volumes with none. A slot
/// after `now` (beyond `retention::FUTURE_SLOT_ALLOWANCE`) is no volume's newest here either: it would hold the
/// staleness at zero however old the volume's real snapshots are.
pub(crate) fn freshness(
    policy: &Policy,
    survey: &Survey,
    now: DateTime<Utc>,
) -> BTreeMap<String, Freshness> {
    let limit = now + crate::retention::FUTURE_SLOT_ALLOWANCE;
    // Once per completed snapshot and schedule: FxHash, as in `retention::Interner`.
    let mut newest: rustc_hash::FxHashMap<(&str, &str), DateTime<Utc>> = Default::default();
    for s in survey
        .snapshots
        .iter()
        .filter(|s| s.state == SnapState::Completed && s.slot <= limit)
    {
        let slot = s.slot;
        for sched in s.schedules.iter() {
            let Some(name) = policy
                .schedules
                .iter()
                .find(|p| *p.name == **sched)
                .map(|p| p.name.as_str())
            else {
                continue;
            };
            let e = newest.entry((&*s.volume_id, name)).or_insert(slot);
            *e = (*e).max(slot);
        }
    }
    let mut out: BTreeMap<String, Freshness> = policy
        .schedules
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                Freshness {
                    oldest_newest: None,
                    unprotected: 0,
                },
            )
        })
        .collect();
    for t in &survey.targets {
        for sched in &t.schedules {
            let Some(f) = out.get_mut(sched) else {
                continue;
            };
            match newest.get(&(t.volume.id.as_str(), sched.as_str())) {
                Some(&n) => f.oldest_newest = Some(f.oldest_newest.map_or(n, |o| o.min(n))),
                None => f.unprotected += 1,
            }
        }
    }
    out
}
