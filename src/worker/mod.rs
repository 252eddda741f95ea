//! Snapshot and retention runs: the only module that mixes decisions with I/O. A run is one policy, one slot
//! (fire time) and one region: survey the region (targets, count tags, the policy's managed snapshots — one
//! filtered, paginated sweep each; [`survey`]), create the slot's missing snapshots ([`create`]) while polling
//! them to completion ([`completion`]) and deleting what retention no longer keeps ([`prune`]: deletes of a
//! volume start as soon as its new snapshot has completed), then plan retention over the end state and delete
//! the rest. Everything it needs to know is read back from tags, so a retry or a restart after a crash finds the
//! slot's snapshots and does not duplicate them.
//!
//! Dry runs go through the same code with an `ec2::DryRun` backend; the worker never checks a dry-run flag to
//! decide what to call.

mod completion;
mod create;
mod findings;
mod prune;
mod survey;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::config::Policy;
use crate::ec2::op::Code;
use crate::ec2::{CreateSnapshot, Ec2};
use crate::error::Error;
use crate::metrics::{Freshness, KeptTally, Metrics};
use crate::report::{Problem, RunReport, RunResult};
use crate::retention::{Decision, SnapState};
use crate::schedule::format_slot;

pub use prune::plan_retention;
pub use survey::{slot_of, survey, Survey, TargetVolume};

/// Largest accepted count-tag value: beyond this a typo (`1e9`, `70000`) is more likely than intent.
pub const MAX_COUNT: u32 = 10_000;
/// EC2 allows 50 tags per resource.
const MAX_TAGS: usize = 50;
/// EC2 accepts up to 200 values per filter.
const FILTER_VALUES: usize = 200;

/// Parses a count-tag value: a whole number from 1 to [`MAX_COUNT`], surrounding blanks allowed.
pub fn parse_count(value: &str) -> Result<u32, String> {
    let v = value.trim();
    let shown = quoted(value);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{shown} is not a whole number; write a count from 1 to {MAX_COUNT}"
        ));
    }
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        _ => Err(format!(
            "{shown} is out of range; write a count from 1 to {MAX_COUNT}"
        )),
    }
}

/// A tag value for a message: in backticks, cut to 40 characters (tag values reach 256, and every alert and log
/// line repeats it).
fn quoted(value: &str) -> String {
    const SHOWN: usize = 40;
    let n = value.chars().count();
    if n <= SHOWN {
        format!("`{value}`")
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("`{head}...` ({n} characters)")
    }
}

/// What a run did, with the retention plan it executed (for `once --dry-run` and logs).
pub struct Outcome {
    pub report: RunReport,
    pub plan: Vec<Decision>,
}

/// How long a run waits for snapshots to reach `completed` after its last create, and how often it looks (also
/// while creating): one filtered DescribeSnapshots per region per poll (ids in chunks of 200), the interval
/// doubling from `first_poll` up to `max_poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub deadline: Duration,
    pub first_poll: Duration,
    pub max_poll: Duration,
}

impl Completion {
    /// Polls every 2 s at first, slowing to every 30 s: small snapshots complete within seconds, big first
    /// snapshots take hours and should not cost a describe every 2 s.
    pub fn within(deadline: Duration) -> Self {
        Completion {
            deadline,
            first_poll: Duration::from_secs(2),
            max_poll: Duration::from_secs(30),
        }
    }

    /// `daemon.completion-deadline` as the daemon uses it. Zero means "do not wait for pending snapshots", not "do
    /// not look": the run still describes its new snapshots once after the last create, so one already in `error`
    /// fails its volume like any other (see [`completion::settle`]).
    pub fn from_deadline(deadline: Duration) -> Option<Self> {
        Some(Completion::within(deadline))
    }

    /// Whether the run waits for pending snapshots at all (a zero deadline only looks once).
    fn waits(&self) -> bool {
        !self.deadline.is_zero()
    }
}

pub struct RunSpec<'a> {
    pub policy: &'a Policy,
    /// The schedules firing at `slot` (one snapshot per volume serves all of them).
    pub firing: Vec<String>,
    pub slot: DateTime<Utc>,
    pub account_id: &'a str,
    pub concurrency: usize,
    pub dry_run: bool,
    /// Poll pending snapshots (see [`completion::poll`]); None: create and move on without describing them
    /// (component tests on `FakeEc2`, `simulate`, which runs in simulated time). Dry runs never poll. Either way
    /// every state the run saw (survey, create answers, polls) is settled by [`completion::settle`].
    pub completion: Option<Completion>,
    /// [`Outcome::plan`] holds every decision, kept ones with their reasons (tests, `simulate`); otherwise only
    /// the deletions, so a run over a large estate does not hold a decision per snapshot (~120 bytes each).
    pub explain: bool,
}

pub fn new_run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// One full run: survey, create, retention. Never fails as a whole: problems end up in the report.
pub async fn run(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    metrics: &Metrics,
    now: impl Fn() -> DateTime<Utc>,
) -> Outcome {
    let run_id = new_run_id();
    let label = spec.firing.join(",");
    let span = tracing::info_span!("run", run_id = %run_id, policy = %spec.policy.name, schedule = %label, region = %ec2.region(), slot = %format_slot(spec.slot));
    async {
        let mut report = RunReport::new(
            run_id.clone(),
            &spec.policy.name,
            spec.firing.clone(),
            ec2.region(),
            spec.slot,
            now(),
        );
        report.dry_run = spec.dry_run;
        let plan = execute(ec2, spec, &mut report, metrics, &now).await;
        report.finished_at = now();
        record(metrics, spec, &report);
        Outcome { report, plan }
    }
    .instrument(span)
    .await
}

async fn execute(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    report: &mut RunReport,
    metrics: &Metrics,
    now: &impl Fn() -> DateTime<Utc>,
) -> Vec<Decision> {
    let policy = spec.policy;
    let region = ec2.region().to_string();
    let mut survey = match survey(ec2, policy, spec.account_id, Some(spec.slot)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, kind = e.kind(), "survey failed: nothing created or deleted this run");
            report.fatal = Some(Problem {
                resource: region,
                operation: "describe",
                code: e.code().to_string(),
                message: e.to_string(),
                aws: e.api_failure(),
            });
            report.retention_skipped = Some("the region could not be read".into());
            return Vec::new();
        }
    };
    for (schedule, p) in survey.problems.drain(..) {
        if spec.firing.contains(&schedule) {
            tracing::warn!(resource = %p.resource, schedule = %schedule, problem = %p.message, "target skipped: bad count tag");
            metrics
                .skipped_resources
                .with_label_values(&[&policy.name, &schedule, "bad-count-tag"])
                .inc();
            report.problems.push(p);
        }
    }

    // Create: one snapshot per targeted volume serves every firing schedule that targets it.
    let slot = format_slot(spec.slot);
    let done: HashSet<&str> = survey
        .snapshots
        .iter()
        .filter(|s| s.slot == spec.slot && s.state != SnapState::Error)
        .map(|s| &*s.volume_id)
        .collect();
    let mut todo = Vec::new();
    for t in &survey.targets {
        let serves: Vec<&str> = t
            .schedules
            .iter()
            .filter(|s| spec.firing.contains(s))
            .map(String::as_str)
            .collect();
        if serves.is_empty() {
            continue;
        }
        report.targeted_volumes += 1;
        if done.contains(t.volume.id.as_str()) {
            report.already_done += 1;
            continue;
        }
        let schedules = serves.join(",");
        let request = CreateSnapshot {
            volume_id: t.volume.id.clone(),
            description: create::description(&policy.name, &schedules, &slot, t),
            tags: create::snapshot_tags(policy, &schedules, &slot, t),
        };
        todo.push((
            request,
            serves.into_iter().map(String::from).collect::<Vec<_>>(),
        ));
    }
    let mut frozen = HashSet::new();
    // Retention's deletes go out while the creates are still queued (see `prune`).
    let polls = spec.completion.filter(|_| !spec.dry_run);
    // A run that waits for completion admits creates under the account's pending cap as earlier snapshots
    // complete (`create::Gate`); one that does not defers what is over the cap to the next run.
    let cap = ec2.max_pending_snapshots();
    let waiting = polls.filter(Completion::waits);
    let upfront_cap = if waiting.is_some() { None } else { cap };
    create::defer_pending(
        spec,
        &survey,
        upfront_cap,
        &mut todo,
        &mut frozen,
        report,
        metrics,
    );
    let creating: Vec<(String, Vec<String>)> = todo
        .iter()
        .map(|(r, serves)| (r.volume_id.clone(), serves.clone()))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let early = Mutex::new(prune::Early::plan(
        policy,
        &mut survey,
        &creating,
        &frozen,
        polls.is_some(),
        spec.slot,
        now(),
        tx,
    ));
    let lock = || early.lock().expect("early deletes poisoned");
    let freed = tokio::sync::Notify::new();
    let gate = waiting
        .zip(cap)
        .map(|(c, cap)| create::Gate::new(cap, &early, &freed, c.deadline));
    let (creating_tx, creating_rx) = tokio::sync::watch::channel(true);
    let deleting = prune::delete_all(ec2, rx, spec.concurrency);
    let mut tally = KeptTally::default();
    let mut set_aside = findings::SetAside::default();
    let finishing = async {
        let work = async {
            let create = async {
                let made =
                    create::create_all(ec2, spec, &survey, todo, gate.as_ref(), report, &|s| {
                        lock().created(s)
                    })
                    .await;
                let _ = creating_tx.send(false);
                made
            };
            let polling = async {
                match polls {
                    Some(c) => completion::poll(ec2, c, &early, &freed, creating_rx).await,
                    None => None,
                }
            };
            tokio::join!(create, polling)
        };
        let (results, last_error) = work.await;
        for (request, serves, result) in results {
            match result {
                Ok(snapshot) => {
                    tracing::info!(volume = %request.volume_id, snapshot = %snapshot.id, "snapshot created");
                    for s in &serves {
                        metrics
                            .snapshots_created
                            .with_label_values(&[policy.name.as_str(), s, &region])
                            .inc();
                    }
                    report.created += 1;
                }
                // EC2 counted pending snapshots we could not see (another tool's, another policy's), or none of
                // ours completed while the create waited for room under the cap: defer.
                Err(e) if e.api_failure().is_some_and(|f| f.code.defers()) => {
                    tracing::warn!(volume = %request.volume_id, error = %e, "snapshot deferred: EC2's pending-snapshot limit");
                    for s in &serves {
                        metrics
                            .skipped_resources
                            .with_label_values(&[&policy.name, s, "pending-limit"])
                            .inc();
                    }
                    frozen.insert(request.volume_id.clone());
                    report.problems.push(Problem {
                        resource: request.volume_id,
                        operation: "defer",
                        code: e.code().to_string(),
                        message: e.to_string(),
                        aws: e.api_failure(),
                    });
                }
                // Not sent: the daemon is shutting down. Not an AWS failure; the next run of the slot makes it.
                Err(e @ Error::Stopped { .. }) => {
                    tracing::debug!(volume = %request.volume_id, "snapshot not made: shutting down");
                    frozen.insert(request.volume_id.clone());
                    report.problems.push(Problem {
                        resource: request.volume_id,
                        operation: "defer",
                        code: e.code().to_string(),
                        message: e.to_string(),
                        aws: e.api_failure(),
                    });
                }
                Err(e) => {
                    tracing::error!(volume = %request.volume_id, error = %e, kind = e.kind(), "snapshot failed");
                    for s in &serves {
                        metrics
                            .snapshots_failed
                            .with_label_values(&[&policy.name, s, &region, "create"])
                            .inc();
                    }
                    frozen.insert(request.volume_id.clone());
                    report.problems.push(Problem {
                        resource: request.volume_id,
                        operation: "create",
                        code: e.code().to_string(),
                        message: e.to_string(),
                        aws: e.api_failure(),
                    });
                }
            }
        }
        // The end state: this run's snapshots in, every state learnt applied.
        survey.snapshots.append(&mut lock().created);
        {
            let e = lock();
            for s in survey.snapshots.iter_mut() {
                if let Some(&state) = e.states.get(&*s.id) {
                    s.state = state;
                }
            }
        }
        // Whether or not the run waited: what it saw decides (an `error` snapshot fails its volume).
        completion::settle(
            ec2,
            spec,
            waiting,
            last_error,
            &mut survey,
            &mut frozen,
            report,
            metrics,
        )
        .await;

        let mut on_kept = |d: Decision| {
            tally.add(&d);
            set_aside.add(&d);
            log_decision(&d);
        };
        // Explained: the whole plan, in its order. Otherwise keeps are tallied as they are made and not held.
        let kept: Option<&mut dyn FnMut(Decision)> = if spec.explain {
            None
        } else {
            Some(&mut on_kept)
        };
        let plan = plan_retention(policy, &survey, &frozen, policy.timezone, now(), kept);
        // What the plan holds: every decision when explained, else the deletions (or a blocked plan's keeps).
        for d in &plan.decisions {
            tally.add(d);
            set_aside.add(d);
            log_decision(d);
        }
        set_aside.report(&policy.name, &region, report);
        // Over a deletion cap the plan deletes nothing; the problem makes the run partial, so the alert fires.
        if let Some(hit) = &plan.cap_hit {
            tracing::error!(setting = hit.setting, limit = %hit.limit, needed = %hit.needed, detail = %hit.message, "deletion cap hit: nothing deleted");
            report.problems.push(Problem {
                resource: region.clone(),
                operation: "retention",
                code: "deletion-cap".into(),
                message: format!("policy {}: {}", policy.name, hit.message),
                aws: None,
            });
            lock().close();
        } else {
            lock().finish(&plan.decisions);
        }
        plan.decisions
    };
    let (plan, deleted) = tokio::join!(finishing, deleting);

    if !spec.dry_run {
        metrics.record_plan(&policy.name, &region, &tally);
    }
    report.kept = tally.kept;
    // Schedules of the snapshots deleted, for their metric labels (a map of the deleted ones only: the survey
    // can be hundreds of thousands).
    let doomed: HashSet<&str> = deleted.iter().map(|(d, _)| &*d.snapshot_id).collect();
    let listed: HashMap<&str, &[Arc<str>]> = survey
        .snapshots
        .iter()
        .filter(|s| doomed.contains(&*s.id))
        .map(|s| (&*s.id, &*s.schedules))
        .collect();
    drop(doomed);
    // Looked up once per surveyed snapshot below: FxHash, as in `retention::Interner`.
    let mut gone = rustc_hash::FxHashSet::default();
    for (d, result) in deleted {
        let serves = listed.get(&*d.snapshot_id).copied().unwrap_or_default();
        // Already gone counts as done: describe is eventually consistent.
        let result = result.or_else(|e| {
            if e.is(Code::SnapshotNotFound) {
                Ok(())
            } else {
                Err(e)
            }
        });
        match result {
            Ok(()) => {
                let reason = d.reasons.first().map_or("", |r| r.as_str());
                tracing::info!(snapshot = %d.snapshot_id, volume = %d.volume_id, reason, "snapshot deleted");
                for s in serves {
                    metrics
                        .snapshots_deleted
                        .with_label_values(&[policy.name.as_str(), &**s, &region])
                        .inc();
                }
                report.deleted += 1;
                gone.insert(Arc::clone(&d.snapshot_id));
            }
            Err(e) if e.is(Code::SnapshotInUse) => {
                tracing::info!(snapshot = %d.snapshot_id, volume = %d.volume_id, "kept: the snapshot backs an AMI");
                metrics
                    .kept_in_use
                    .with_label_values(&[&policy.name, &region])
                    .inc();
                report.kept_in_use += 1;
            }
            // Not sent: the daemon is shutting down. Neither deleted nor failed; the next run plans it again.
            Err(e @ Error::Stopped { .. }) => {
                tracing::debug!(snapshot = %d.snapshot_id, "delete not sent: shutting down");
                report.problems.push(Problem {
                    resource: d.snapshot_id.to_string(),
                    operation: "defer",
                    code: e.code().to_string(),
                    message: e.to_string(),
                    aws: e.api_failure(),
                });
            }
            Err(e) => {
                tracing::error!(snapshot = %d.snapshot_id, error = %e, kind = e.kind(), "delete failed");
                for s in serves {
                    metrics
                        .snapshots_failed
                        .with_label_values(&[policy.name.as_str(), &**s, &region, "delete"])
                        .inc();
                }
                report.problems.push(Problem {
                    resource: d.snapshot_id.to_string(),
                    operation: "delete",
                    code: e.code().to_string(),
                    message: e.to_string(),
                    aws: e.api_failure(),
                });
            }
        }
    }
    drop(listed);
    survey.snapshots.retain(|s| !gone.contains(&s.id));
    if !spec.dry_run {
        metrics
            .managed_snapshots
            .with_label_values(&[&policy.name, &region])
            .set(survey.snapshots.len() as i64);
        for (schedule, f) in freshness(policy, &survey, now()) {
            metrics.set_freshness(&policy.name, &schedule, &region, f);
        }
    }
    plan
}

/// One retention decision at debug level. Formatting every decision's reasons is a real cost at scale; only paid
/// when someone reads it.
fn log_decision(d: &Decision) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        tracing::debug!(snapshot = %d.snapshot_id, volume = %d.volume_id, action = ?d.action, reasons = %reasons.join("; "), "retention decision");
    }
}

/// Per schedule: the oldest newest-completed snapshot over its targeted volumes, and volumes with none. A slot
/// after `now` (beyond `retention::FUTURE_SLOT_ALLOWANCE`) is no volume's newest here either: it would hold the
/// staleness at zero however old the volume's real snapshots are.
pub fn freshness(
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

fn record(metrics: &Metrics, spec: &RunSpec<'_>, report: &RunReport) {
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
        seconds = secs,
        dry_run = report.dry_run,
        "run finished"
    );
    if spec.dry_run {
        return;
    }
    let policy = &spec.policy.name;
    metrics
        .run_duration
        .with_label_values(&[policy, "snapshot"])
        .observe(secs);
    for s in &spec.firing {
        for (job, r) in [("snapshot", result), ("retention", retention)] {
            metrics
                .runs
                .with_label_values(&[policy, s, job, r.as_str()])
                .inc();
            if r == RunResult::Success {
                metrics
                    .last_success
                    .with_label_values(&[policy, s, job])
                    .set(report.finished_at.timestamp() as f64);
            }
        }
    }
}

/// Shared by every run of the process: backends per region and the account they act for.
pub struct Region {
    pub ec2: Arc<dyn Ec2>,
    pub account_id: String,
}
