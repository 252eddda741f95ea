//! Snapshot and retention runs: the only module that mixes decisions with I/O. A run is one policy, one slot
//! (fire time) and one region: survey the region (targets, count tags, the policy's managed snapshots — one
//! filtered, paginated sweep each), create the slot's missing snapshots, then plan retention with the pure planner
//! and execute it. Everything it needs to know is read back from tags, so a retry or a restart after a crash
//! finds the slot's snapshots and does not duplicate them.
//!
//! Dry runs go through the same code with an `ec2::DryRun` backend; the worker never checks a dry-run flag to
//! decide what to call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use tracing::Instrument;

use crate::config::{Consistency, Policy, ResourceKind};
use crate::ec2::{self, CreateSnapshot, Ec2, Filter, Instance, Snapshot, Tags, Volume};
use crate::error::Error;
use crate::metrics::{Freshness, Metrics};
use crate::report::{Problem, RunReport, RunResult};
use crate::retention::{self, Action, Decision, PlanInput, ScheduleRules, Snap, SnapState};
use crate::schedule::{format_slot, parse_slot};

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

/// A volume to snapshot, with the instance it hangs off (instance targets).
#[derive(Debug, Clone)]
pub struct TargetVolume {
    pub volume: Volume,
    pub instance: Option<Instance>,
    /// Schedules of the policy that target this volume (all of them, firing or not).
    pub schedules: Vec<String>,
}

/// What one region holds for a policy.
#[derive(Debug, Default)]
pub struct Survey {
    pub targets: Vec<TargetVolume>,
    /// (volume, schedule) -> keep-last from the count tag, for live targets with a good value.
    pub counts: HashMap<(String, String), u32>,
    /// (volume, schedule) pairs whose target resource was seen live for a count-tag schedule (good value or not).
    pub seen: HashSet<(String, String)>,
    /// Bad count-tag values: reported, the resource skipped for that schedule.
    pub problems: Vec<(String, Problem)>,
    /// Managed snapshots of the policy owned by this account.
    pub snapshots: Vec<Snapshot>,
}

fn state_filter() -> Filter {
    Filter::new(
        "instance-state-name",
        ["pending", "running", "stopping", "stopped"]
            .map(String::from)
            .to_vec(),
    )
}

/// Reads targets and the policy's managed snapshots. Any describe failure fails the survey: acting on a
/// half-known state could duplicate snapshots or delete the wrong ones.
pub async fn survey(ec2: &dyn Ec2, policy: &Policy, account_id: &str) -> Result<Survey, Error> {
    let mut filters: Vec<Filter> = policy
        .target
        .tags
        .iter()
        .map(|(k, v)| Filter::tag(k, v))
        .collect();
    let count_tags: Vec<String> = policy
        .schedules
        .iter()
        .filter_map(|s| s.count_tag.clone())
        .collect();
    if count_tags.len() == policy.schedules.len() {
        // Every schedule is count-tag driven: only resources carrying one of the tags can be targets.
        filters.push(Filter::new("tag-key", count_tags));
    }
    let resources: Vec<(Volume, Option<Instance>)> = match policy.target.resource {
        ResourceKind::Volume => ec2
            .describe_volumes(&filters)
            .await?
            .into_iter()
            .map(|v| (v, None))
            .collect(),
        ResourceKind::Instance => {
            filters.push(state_filter());
            let instances: HashMap<String, Instance> = ec2
                .describe_instances(&filters)
                .await?
                .into_iter()
                .map(|i| (i.id.clone(), i))
                .collect();
            let mut out = Vec::new();
            for v in attached_volumes(ec2, &instances).await? {
                let inst = v
                    .attachment
                    .as_ref()
                    .and_then(|(i, _)| instances.get(i))
                    .cloned();
                if inst.is_some() {
                    out.push((v, inst));
                }
            }
            out
        }
    };

    let mut s = Survey::default();
    for (volume, instance) in resources {
        let source_tags = instance.as_ref().map_or(&volume.tags, |i| &i.tags);
        let source_id = instance.as_ref().map_or(&volume.id, |i| &i.id).clone();
        let mut schedules = Vec::new();
        for sched in &policy.schedules {
            let Some(tag) = &sched.count_tag else {
                schedules.push(sched.name.clone());
                continue;
            };
            let Some(value) = source_tags.get(tag) else {
                continue;
            };
            s.seen.insert((volume.id.clone(), sched.name.clone()));
            match parse_count(value) {
                Ok(n) => {
                    s.counts.insert((volume.id.clone(), sched.name.clone()), n);
                    schedules.push(sched.name.clone());
                }
                Err(why) => s.problems.push((
                    sched.name.clone(),
                    Problem {
                        resource: source_id.clone(),
                        operation: "target",
                        code: "bad-count-tag".into(),
                        message: format!("tag {tag}: {why}"),
                    },
                )),
            }
        }
        if !schedules.is_empty() {
            s.targets.push(TargetVolume {
                volume,
                instance,
                schedules,
            });
        }
    }
    // One bad tag value on an instance is reported once per schedule, not once per volume.
    s.problems
        .sort_by(|a, b| (&a.0, &a.1.resource).cmp(&(&b.0, &b.1.resource)));
    s.problems
        .dedup_by(|a, b| a.0 == b.0 && a.1.resource == b.1.resource);

    let managed = [
        Filter::tag(ec2::TAG_MANAGED, "true"),
        Filter::tag(ec2::TAG_POLICY, &policy.name),
    ];
    s.snapshots = ec2
        .describe_snapshots(&managed)
        .await?
        .into_iter()
        // OwnerIds=self already restricts this on EC2; checked again because not every endpoint honours it.
        .filter(|snap| snap.owner_id == account_id)
        .collect();
    Ok(s)
}

/// EC2 returns up to 1,000 objects per describe page (`MaxResults`).
const PAGE: usize = 1000;

/// Region -> attached volumes the last region-wide sweep returned: what a sweep costs, learnt from doing one. A
/// cost estimate only; no decision about what to snapshot or delete depends on it.
static SWEEP_SIZE: std::sync::Mutex<BTreeMap<String, usize>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The volumes attached to `instances`, by the cheaper of two equivalent reads: DescribeVolumes filtered by
/// `attachment.instance-id` (EC2 takes 200 values per filter, so ceil(instances / 200) calls), or one paginated
/// sweep of every attached volume of the region (ceil(attached / 1,000) pages), which is cheaper when the policy
/// covers most of the region — at 2.5 volumes per instance, 10,000 volumes are 20 filtered calls or 10 pages. The
/// size of a sweep is only known after one; until then the sweep is tried once more than one filtered call is
/// needed, and its size is remembered per region.
async fn attached_volumes(
    ec2: &dyn Ec2,
    instances: &HashMap<String, Instance>,
) -> Result<Vec<Volume>, Error> {
    let chunks = instances.len().div_ceil(FILTER_VALUES);
    let region = ec2.region().to_string();
    let known = SWEEP_SIZE
        .lock()
        .expect("sweep sizes poisoned")
        .get(&region)
        .copied();
    let sweep = match known {
        Some(n) => n.div_ceil(PAGE).max(1) < chunks,
        None => chunks > 1,
    };
    if sweep {
        let states = ["attaching", "attached", "detaching"].map(String::from);
        let all = ec2
            .describe_volumes(&[Filter::new("attachment.status", states.to_vec())])
            .await?;
        SWEEP_SIZE
            .lock()
            .expect("sweep sizes poisoned")
            .insert(region, all.len());
        return Ok(all
            .into_iter()
            .filter(|v| {
                v.attachment
                    .as_ref()
                    .is_some_and(|(i, _)| instances.contains_key(i))
            })
            .collect());
    }
    let mut ids: Vec<&String> = instances.keys().collect();
    ids.sort();
    let mut out = Vec::new();
    for chunk in ids.chunks(FILTER_VALUES) {
        let f = Filter::new(
            "attachment.instance-id",
            chunk.iter().map(|s| s.to_string()).collect(),
        );
        out.extend(ec2.describe_volumes(&[f]).await?);
    }
    Ok(out)
}

/// The slot time of a snapshot: its slot tag, else when it started.
pub fn slot_of(s: &Snapshot) -> DateTime<Utc> {
    s.tags
        .get(ec2::TAG_SLOT)
        .and_then(|t| parse_slot(t))
        .unwrap_or(s.start_time)
}

pub fn schedules_of(s: &Snapshot) -> Vec<String> {
    s.tags
        .get(ec2::TAG_SCHEDULE)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn to_snap(s: &Snapshot) -> Snap {
    Snap {
        id: s.id.clone(),
        volume_id: s.volume_id.clone(),
        slot: slot_of(s),
        schedules: schedules_of(s),
        state: s.state,
        pinned: s.tags.contains_key(ec2::TAG_KEEP),
    }
}

/// Plans retention over every managed snapshot of the policy in the region, targeted or not. `tz` is the zone
/// calendar keep rules take their days and weeks in (`policy.timezone`, i.e. `daemon.timezone`).
pub fn plan_retention(
    policy: &Policy,
    survey: &Survey,
    frozen: &HashSet<String>,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> retention::Plan {
    let snaps: Vec<Snap> = survey.snapshots.iter().map(to_snap).collect();
    let rules: Vec<ScheduleRules> = policy
        .schedules
        .iter()
        .map(|s| ScheduleRules {
            name: s.name.clone(),
            keep: s.keep.clone(),
            count_from_tag: s.count_tag.is_some(),
        })
        .collect();
    let mut counts = survey.counts.clone();
    // Volumes no longer targeted (instance gone, tag removed) keep the count their snapshots were made with: the
    // count tag is copied onto each snapshot. A live resource with a bad value is not second-guessed this way.
    let mut newest: HashMap<(String, String), (DateTime<Utc>, u32)> = HashMap::new();
    for sched in policy.schedules.iter().filter(|s| s.count_tag.is_some()) {
        let tag = sched.count_tag.as_deref().unwrap_or_default();
        for snap in &survey.snapshots {
            let key = (snap.volume_id.clone(), sched.name.clone());
            if survey.seen.contains(&key) || !schedules_of(snap).contains(&sched.name) {
                continue;
            }
            if let Some(n) = snap.tags.get(tag).and_then(|v| parse_count(v).ok()) {
                let slot = slot_of(snap);
                let e = newest.entry(key).or_insert((slot, n));
                if slot > e.0 {
                    *e = (slot, n);
                }
            }
        }
    }
    counts.extend(newest.into_iter().map(|(k, (_, n))| (k, n)));
    // A volume skipped only for a bad count-tag value is still targeted: it must not become an orphan whose
    // history `expire-after` deletes while the tag is being fixed.
    let targeted: HashSet<String> = survey
        .targets
        .iter()
        .map(|t| t.volume.id.clone())
        .chain(survey.seen.iter().map(|(volume, _)| volume.clone()))
        .collect();
    let input = PlanInput {
        snapshots: &snaps,
        schedules: &rules,
        counts: &counts,
        frozen_volumes: frozen,
        tz,
        targeted: Some(&targeted),
        orphans: policy.orphans,
        caps: policy.caps,
    };
    retention::plan(&input, now)
}

/// A volume's snapshot tags: user tags of the instance, then of the volume (more specific wins), a Name, and
/// snapwarden's own. Capped at EC2's 50 tags, dropping user tags (ours and Name always fit).
/// Under instance consistency a snapshot without a Name of its own is named after its instance, like the other
/// snapshots of the same CreateSnapshots call, so one CreateTags can name them all.
fn snapshot_tags(policy: &Policy, schedules: &str, slot: &str, t: &TargetVolume) -> Tags {
    let by_instance = by_instance(policy, t);
    let policy = policy.name.as_str();
    let mut user: Tags = Tags::new();
    if let Some(i) = &t.instance {
        user.extend(ec2::copyable_tags(&i.tags).map(|(k, v)| (k.clone(), v.clone())));
    }
    user.extend(ec2::copyable_tags(&t.volume.tags).map(|(k, v)| (k.clone(), v.clone())));
    let name = user.remove("Name").unwrap_or_else(|| match by_instance {
        Some(instance) => format!("snapwarden {policy} {instance}"),
        None => format!("snapwarden {policy} {}", t.volume.id),
    });

    let mut tags = Tags::from([
        ("Name".to_string(), name),
        (ec2::TAG_MANAGED.to_string(), "true".to_string()),
        (ec2::TAG_POLICY.to_string(), policy.to_string()),
        (ec2::TAG_SCHEDULE.to_string(), schedules.to_string()),
        (ec2::TAG_SLOT.to_string(), slot.to_string()),
    ]);
    // Where the volume hangs, for instance and volume targets alike: what a restore needs to know.
    if let Some((instance, device)) = &t.volume.attachment {
        tags.insert(ec2::TAG_INSTANCE.to_string(), instance.clone());
        if !device.is_empty() {
            tags.insert(ec2::TAG_DEVICE.to_string(), device.clone());
        }
    }
    let room = MAX_TAGS - tags.len();
    if user.len() > room {
        tracing::warn!(volume = %t.volume.id, dropped = user.len() - room, "too many tags to copy; EC2 allows 50 per snapshot");
    }
    tags.extend(user.into_iter().take(room));
    tags
}

fn description(policy: &str, schedules: &str, slot: &str, t: &TargetVolume) -> String {
    let mut d = format!(
        "snapwarden {}: policy {policy}, schedule {schedules}, slot {slot}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((instance, device)) = &t.volume.attachment {
        d.push_str(&format!(", {instance} {device}"));
    }
    d.chars().take(255).collect()
}

/// What a run did, with the retention plan it executed (for `once --dry-run` and logs).
pub struct Outcome {
    pub report: RunReport,
    pub plan: Vec<Decision>,
}

/// How long a run waits for snapshots to reach `completed`, and how often it looks: one filtered DescribeSnapshots
/// per region per poll (ids in chunks of 200), the interval doubling from `first_poll` up to `max_poll`.
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

    /// `daemon.completion-deadline` as the daemon uses it: zero means "do not wait".
    pub fn from_deadline(deadline: Duration) -> Option<Self> {
        (!deadline.is_zero()).then(|| Completion::within(deadline))
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
    /// Wait for pending snapshots (see [`await_completion`]); None: create and move on, leaving them pending
    /// (component tests on `FakeEc2`, `simulate`, which runs in simulated time). Dry runs never wait.
    pub completion: Option<Completion>,
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
    let mut survey = match survey(ec2, policy, spec.account_id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, kind = e.kind(), "survey failed: nothing created or deleted this run");
            report.fatal = Some(Problem {
                resource: region,
                operation: "describe",
                code: e.code().to_string(),
                message: e.to_string(),
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
        .filter(|s| slot_of(s) == spec.slot && s.state != SnapState::Error)
        .map(|s| s.volume_id.as_str())
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
            description: description(&policy.name, &schedules, &slot, t),
            tags: snapshot_tags(policy, &schedules, &slot, t),
        };
        todo.push((
            request,
            serves.into_iter().map(String::from).collect::<Vec<_>>(),
        ));
    }
    let mut frozen = HashSet::new();
    defer_pending(ec2, spec, &survey, &mut todo, &mut frozen, report, metrics);
    let results = create_all(ec2, spec, &mut survey, todo, report).await;
    for (request, serves, result) in results {
        match result {
            Ok(snapshot) => {
                tracing::info!(volume = %request.volume_id, snapshot = %snapshot.id, "snapshot created");
                for s in &serves {
                    metrics
                        .snapshots_created
                        .with_label_values(&[&policy.name, s, &region])
                        .inc();
                }
                report.created += 1;
                survey.snapshots.push(snapshot);
            }
            // EC2 counted pending snapshots we could not see (another tool's, another policy's): defer, as above.
            Err(e) if e.code() == "ConcurrentSnapshotLimitExceeded" => {
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
                });
            }
        }
    }

    // Completion, before retention: the plan must see what actually restores, and an errored snapshot must not
    // count as this slot's.
    if let Some(c) = spec.completion.filter(|_| !spec.dry_run) {
        await_completion(ec2, spec, c, &mut survey, &mut frozen, report, metrics).await;
    }

    // Retention.
    let plan = plan_retention(policy, &survey, &frozen, policy.timezone, now());
    // Over a deletion cap the plan deletes nothing; the problem makes the run partial, so the alert fires.
    if let Some(hit) = &plan.cap_hit {
        tracing::error!(setting = hit.setting, limit = %hit.limit, needed = %hit.needed, detail = %hit.message, "deletion cap hit: nothing deleted");
        report.problems.push(Problem {
            resource: region.clone(),
            operation: "retention",
            code: "deletion-cap".into(),
            message: format!("policy {}: {}", policy.name, hit.message),
        });
    }
    let plan = plan.decisions;
    if !spec.dry_run {
        metrics.record_plan(&policy.name, &region, &plan);
    }
    // Owned items: a stream of futures borrowing from `plan` trips the compiler's higher-ranked lifetime check.
    let deletes: Vec<Decision> = plan
        .iter()
        .filter(|d| d.action == Action::Delete)
        .cloned()
        .collect();
    report.kept = plan.len() - deletes.len();
    // Schedules of the snapshots to delete, for their metric labels.
    let doomed: HashSet<&str> = deletes.iter().map(|d| d.snapshot_id.as_str()).collect();
    let listed: HashMap<&str, Vec<String>> = survey
        .snapshots
        .iter()
        .filter(|s| doomed.contains(s.id.as_str()))
        .map(|s| (s.id.as_str(), schedules_of(s)))
        .collect();
    // Formatting every decision's reasons is a real cost at scale; only pay it when someone reads it.
    if tracing::enabled!(tracing::Level::DEBUG) {
        for d in &plan {
            let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
            tracing::debug!(snapshot = %d.snapshot_id, volume = %d.volume_id, action = ?d.action, reasons = %reasons.join("; "), "retention decision");
        }
    }
    let results: Vec<_> = stream::iter(deletes)
        .map(|d| async move {
            let result = ec2.delete_snapshot(&d.snapshot_id).await;
            (d, result)
        })
        .buffer_unordered(spec.concurrency.max(1))
        .collect()
        .await;
    let mut gone = HashSet::new();
    for (d, result) in results {
        let serves = listed
            .get(d.snapshot_id.as_str())
            .cloned()
            .unwrap_or_default();
        // Already gone counts as done: describe is eventually consistent.
        let result = result.or_else(|e| {
            if e.code() == "InvalidSnapshot.NotFound" {
                Ok(())
            } else {
                Err(e)
            }
        });
        match result {
            Ok(()) => {
                tracing::info!(snapshot = %d.snapshot_id, volume = %d.volume_id, "snapshot deleted");
                for s in &serves {
                    metrics
                        .snapshots_deleted
                        .with_label_values(&[&policy.name, s, &region])
                        .inc();
                }
                report.deleted += 1;
                gone.insert(d.snapshot_id.clone());
            }
            Err(e) if e.code() == "InvalidSnapshot.InUse" => {
                tracing::info!(snapshot = %d.snapshot_id, volume = %d.volume_id, "kept: the snapshot backs an AMI");
                metrics
                    .kept_in_use
                    .with_label_values(&[&policy.name, &region])
                    .inc();
                report.kept_in_use += 1;
            }
            Err(e) => {
                tracing::error!(snapshot = %d.snapshot_id, error = %e, kind = e.kind(), "delete failed");
                for s in &serves {
                    metrics
                        .snapshots_failed
                        .with_label_values(&[&policy.name, s, &region, "delete"])
                        .inc();
                }
                report.problems.push(Problem {
                    resource: d.snapshot_id.clone(),
                    operation: "delete",
                    code: e.code().to_string(),
                    message: e.to_string(),
                });
            }
        }
    }
    survey.snapshots.retain(|s| !gone.contains(&s.id));
    if !spec.dry_run {
        metrics
            .managed_snapshots
            .with_label_values(&[&policy.name, &region])
            .set(survey.snapshots.len() as i64);
        for (schedule, f) in freshness(policy, &survey) {
            metrics.set_freshness(&policy.name, &schedule, &region, f);
        }
    }
    plan
}

/// Polls the policy's pending snapshots in the region (this run's and any an earlier run left pending) until none
/// is pending or `c.deadline` passes, updating their state in `survey`. Then:
/// - a snapshot in `error` (found so by the survey or by polling) restores nothing: it is reported (code
///   `snapshot-error`; operation `create` when it was this slot's, so the volume counts as failed, else
///   `complete`), counted in `snapshots_failed_total{operation="complete"}`, and deleted (it also counts against
///   EC2's pending limit). A volume whose slot snapshot errored is frozen for retention, like a failed create, and
///   the next run for the slot (catch-up) makes a new one;
/// - a snapshot still pending at the deadline is reported (code `snapshot-pending`, operation `complete`: the run
///   is partial) and counted in `snapshots_pending_at_deadline_total`; it stays, and the next run's survey finds it
///   and polls it again. Retention keeps pending snapshots and does not count them toward keep rules.
///
/// A failed poll is not fatal: the snapshots stay pending as far as this run knows, and the next poll tries again.
async fn await_completion(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    c: Completion,
    survey: &mut Survey,
    frozen: &mut HashSet<String>,
    report: &mut RunReport,
    metrics: &Metrics,
) {
    let policy = &spec.policy.name;
    let region = ec2.region().to_string();
    let deadline = tokio::time::Instant::now() + c.deadline;
    let mut interval = c.first_poll;
    let mut last_error: Option<Error> = None;
    loop {
        let pending: Vec<String> = survey
            .snapshots
            .iter()
            .filter(|s| s.state == SnapState::Pending)
            .map(|s| s.id.clone())
            .collect();
        if pending.is_empty() {
            break;
        }
        let mut states: HashMap<String, SnapState> = HashMap::new();
        last_error = None;
        for chunk in pending.chunks(FILTER_VALUES) {
            match ec2
                .describe_snapshots(&[Filter::new("snapshot-id", chunk.to_vec())])
                .await
            {
                Ok(found) => states.extend(found.into_iter().map(|s| (s.id, s.state))),
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "completion poll failed; trying again");
                    last_error = Some(e);
                }
            }
        }
        // A snapshot missing from the answer (describe is eventually consistent) stays pending.
        for s in survey.snapshots.iter_mut() {
            if let Some(&state) = states.get(&s.id) {
                s.state = state;
            }
        }
        let left = survey
            .snapshots
            .iter()
            .any(|s| s.state == SnapState::Pending);
        let now = tokio::time::Instant::now();
        if !left || now >= deadline {
            break;
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(c.max_poll.max(c.first_poll));
    }

    let errored: Vec<Snapshot> = survey
        .snapshots
        .iter()
        .filter(|s| s.state == SnapState::Error)
        .cloned()
        .collect();
    for snap in errored {
        let this_slot = slot_of(&snap) == spec.slot;
        tracing::error!(snapshot = %snap.id, volume = %snap.volume_id, this_slot, "snapshot ended in error state: deleting it");
        for s in schedules_of(&snap) {
            metrics
                .snapshots_failed
                .with_label_values(&[policy, &s, &region, "complete"])
                .inc();
        }
        if this_slot {
            frozen.insert(snap.volume_id.clone());
            report.created = report.created.saturating_sub(1);
        }
        report.problems.push(Problem {
            resource: snap.volume_id.clone(),
            operation: if this_slot { "create" } else { "complete" },
            code: "snapshot-error".into(),
            message: format!(
                "snapshot {} of slot {} ended in error state; it restores nothing and was deleted{}",
                snap.id,
                format_slot(slot_of(&snap)),
                if this_slot {
                    "; the next run of this slot makes a new one"
                } else {
                    ""
                }
            ),
        });
        match ec2.delete_snapshot(&snap.id).await {
            Ok(()) => {}
            Err(e) if e.code() == "InvalidSnapshot.NotFound" => {}
            Err(e) => {
                tracing::error!(snapshot = %snap.id, error = %e, kind = e.kind(), "could not delete the errored snapshot");
                report.problems.push(Problem {
                    resource: snap.id.clone(),
                    operation: "delete",
                    code: e.code().to_string(),
                    message: e.to_string(),
                });
            }
        }
        // Out of the plan either way: deleted, or reported and retried by the next run.
        survey.snapshots.retain(|s| s.id != snap.id);
    }

    let mut incomplete = 0;
    for snap in survey
        .snapshots
        .iter()
        .filter(|s| s.state == SnapState::Pending)
    {
        incomplete += 1;
        tracing::warn!(snapshot = %snap.id, volume = %snap.volume_id, "snapshot still pending at the completion deadline; the next run checks it again");
        report.problems.push(Problem {
            resource: snap.volume_id.clone(),
            operation: "complete",
            code: "snapshot-pending".into(),
            message: format!(
                "snapshot {} of slot {} still pending after {}{}; the next run checks it again",
                snap.id,
                format_slot(slot_of(snap)),
                humantime::format_duration(c.deadline),
                last_error
                    .as_ref()
                    .map(|e| format!(" (last poll failed: {e})"))
                    .unwrap_or_default()
            ),
        });
    }
    if incomplete > 0 {
        metrics
            .snapshots_incomplete
            .with_label_values(&[policy, &region])
            .inc_by(incomplete);
    }
}

/// The instance whose CreateSnapshots call takes `t`'s snapshot under the policy, if any.
fn by_instance<'a>(policy: &Policy, t: &'a TargetVolume) -> Option<&'a str> {
    if policy.consistency != Consistency::Instance {
        return None;
    }
    t.instance.as_ref().map(|i| i.id.as_str())
}

/// EC2 snapshots at most 40 volumes in one CreateSnapshots.
const MAX_CREATE_SNAPSHOTS_VOLUMES: usize = 40;
/// CreateTags takes up to 1,000 resource ids; AWS recommends smaller batches.
const TAG_BATCH: usize = 500;

/// A create request with the firing schedules it serves.
type Todo = (CreateSnapshot, Vec<String>);
type Created = (CreateSnapshot, Vec<String>, Result<Snapshot, Error>);

/// Creates `todo`'s snapshots and returns one outcome per request, in no particular order.
///
/// Under instance consistency an instance with several volumes to snapshot — all of its surveyed volumes, at
/// most 40, serving the same schedules — gets one CreateSnapshots call; every other volume (volume consistency,
/// single-volume instances, an instance of which only some volumes still need this slot) one CreateSnapshot.
/// Either way there is one create call per instance or per volume, and idempotency is unchanged: the slot tag is
/// among the tags common to every volume of an instance, which CreateSnapshots sets at creation. What
/// CreateSnapshots cannot set per volume (device, the volume's own tags and Name) is added afterwards by
/// [`tag_all`], one CreateTags per distinct tag set. A volume missing from a CreateSnapshots answer failed alone.
///
/// Concurrency: up to `spec.concurrency` calls wait at once; what actually paces them is the backend's token
/// buckets (`ec2::pace::Paced`), which queue them at the budgeted rate.
async fn create_all(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    survey: &mut Survey,
    todo: Vec<(CreateSnapshot, Vec<String>)>,
    report: &mut RunReport,
) -> Vec<Created> {
    let policy = spec.policy;
    // Surveyed volumes per instance: an instance is snapshotted as a whole only when all of them are to do.
    let mut surveyed: HashMap<&str, usize> = HashMap::new();
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for t in &survey.targets {
        if let Some(i) = by_instance(policy, t) {
            *surveyed.entry(i).or_default() += 1;
            owner.insert(t.volume.id.as_str(), i);
        }
    }
    let mut groups: BTreeMap<String, Vec<Todo>> = BTreeMap::new();
    let mut singles = Vec::new();
    for item in todo {
        match owner.get(item.0.volume_id.as_str()) {
            Some(i) => groups.entry(i.to_string()).or_default().push(item),
            None => singles.push(item),
        }
    }
    let mut calls: Vec<(String, Vec<Todo>)> = Vec::new();
    for (instance, items) in groups {
        let whole = surveyed.get(instance.as_str()) == Some(&items.len())
            && (2..=MAX_CREATE_SNAPSHOTS_VOLUMES).contains(&items.len())
            && items.iter().all(|(_, serves)| *serves == items[0].1);
        if whole {
            calls.push((instance, items));
        } else {
            singles.extend(items);
        }
    }
    let singles = singles.into_iter().map(|item| (String::new(), vec![item]));
    let outcomes: Vec<(Vec<Created>, Vec<Snapshot>)> =
        stream::iter(calls.into_iter().chain(singles))
            .map(|(instance, items)| async move {
                if instance.is_empty() {
                    let (request, serves) = items.into_iter().next().expect("one item");
                    let result = ec2.create_snapshot(&request).await;
                    return (vec![(request, serves, result)], Vec::new());
                }
                create_instance(ec2, &policy.name, &instance, items).await
            })
            .buffer_unordered(spec.concurrency.max(1))
            .collect()
            .await;
    let mut results = Vec::new();
    for (created, extra) in outcomes {
        results.extend(created);
        for s in extra {
            tracing::info!(volume = %s.volume_id, snapshot = %s.id, "snapshot of a volume attached since the survey");
            survey.snapshots.push(s);
        }
    }
    tag_all(ec2, spec, survey, &mut results, report).await;
    results
}

/// One CreateSnapshots for `items` (every volume of `instance`): the tags they share at creation, the rest
/// afterwards. Returns the outcome per requested volume and any snapshot of a volume nobody asked for.
async fn create_instance(
    ec2: &dyn Ec2,
    policy: &str,
    instance: &str,
    items: Vec<(CreateSnapshot, Vec<String>)>,
) -> (Vec<Created>, Vec<Snapshot>) {
    let mut common = items[0].0.tags.clone();
    for (r, _) in &items[1..] {
        common.retain(|k, v| r.tags.get(k) == Some(v));
    }
    let request = ec2::CreateSnapshots {
        instance_id: instance.to_string(),
        description: instance_description(policy, &common, instance),
        volumes: items
            .iter()
            .map(|(r, _)| {
                let extra: Tags = r
                    .tags
                    .iter()
                    .filter(|(k, _)| !common.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (r.volume_id.clone(), extra)
            })
            .collect(),
        tags: common,
    };
    let answer = match ec2.create_snapshots(&request).await {
        Ok(answer) => answer,
        Err(e) => {
            // The call failed as a whole: every volume failed (or is deferred) with the same error.
            let results = items
                .into_iter()
                .map(|(r, serves)| {
                    let e = clone_error(&e);
                    (r, serves, Err(e))
                })
                .collect();
            return (results, Vec::new());
        }
    };
    let mut by_volume: HashMap<String, Result<Snapshot, Error>> = answer.into_iter().collect();
    let results = items
        .into_iter()
        .map(|(mut r, serves)| {
            let result = by_volume.remove(&r.volume_id).unwrap_or_else(|| {
                Err(Error::Other(format!(
                    "CreateSnapshots of {instance} returned no snapshot of this volume (detached meanwhile?); the \
                     next run of the slot tries again"
                )))
            });
            r.description = request.description.clone();
            (r, serves, result)
        })
        .collect();
    let extra = by_volume.into_values().filter_map(Result::ok).collect();
    (results, extra)
}

/// Description shared by the snapshots of one CreateSnapshots (it takes one): the per-volume form without the
/// device, which is in the `snapwarden:device` tag.
fn instance_description(policy: &str, common: &Tags, instance: &str) -> String {
    let get = |k: &str| common.get(k).map(String::as_str).unwrap_or_default();
    let d = format!(
        "snapwarden {}: policy {policy}, schedule {}, slot {}, {instance}",
        env!("CARGO_PKG_VERSION"),
        get(ec2::TAG_SCHEDULE),
        get(ec2::TAG_SLOT)
    );
    d.chars().take(255).collect()
}

/// Errors are not `Clone` (they may wrap anything); one call's error shared by its volumes keeps what matters.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Api {
            operation,
            region,
            code,
            message,
        } => Error::Api {
            operation,
            region: region.clone(),
            code: code.clone(),
            message: message.clone(),
        },
        Error::Transport {
            operation,
            region,
            kind,
            message,
        } => Error::Transport {
            operation,
            region: region.clone(),
            kind,
            message: message.clone(),
        },
        Error::Credentials(m) => Error::Credentials(m.clone()),
        Error::Other(m) => Error::Other(m.clone()),
    }
}

/// Adds the tags a snapshot of this slot should carry but does not: those CreateSnapshots could not set per
/// volume, for this run's snapshots and for ones an earlier run of the slot made and did not get to tag (a crash
/// or a failed CreateTags between the two calls). Only missing keys are added, never a value changed. Snapshots
/// needing the same tags share CreateTags calls (up to [`TAG_BATCH`] ids each). A failure is a `tag` problem (the
/// run is partial); the snapshot itself is good, and the next run of the slot tries again.
async fn tag_all(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    survey: &mut Survey,
    results: &mut [Created],
    report: &mut RunReport,
) {
    let mut batches: BTreeMap<Tags, Vec<String>> = BTreeMap::new();
    let missing = |want: &Tags, have: &Tags| -> Tags {
        want.iter()
            .filter(|(k, _)| !have.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    for (request, _, result) in results.iter_mut() {
        if let Ok(s) = result {
            let add = missing(&request.tags, &s.tags);
            if !add.is_empty() {
                s.tags.extend(add.clone());
                batches.entry(add).or_default().push(s.id.clone());
            }
        }
    }
    // Earlier runs of this slot: only where CreateSnapshots leaves something out (several volumes of an instance).
    if spec.policy.consistency == Consistency::Instance {
        let slot = format_slot(spec.slot);
        let targets: HashMap<&str, &TargetVolume> = survey
            .targets
            .iter()
            .map(|t| (t.volume.id.as_str(), t))
            .collect();
        for s in survey.snapshots.iter_mut() {
            if slot_of(s) != spec.slot || s.state == SnapState::Error {
                continue;
            }
            let Some(t) = targets.get(s.volume_id.as_str()) else {
                continue;
            };
            let schedules = s.tags.get(ec2::TAG_SCHEDULE).cloned().unwrap_or_default();
            let add = missing(&snapshot_tags(spec.policy, &schedules, &slot, t), &s.tags);
            if !add.is_empty() && !batches.values().any(|ids| ids.contains(&s.id)) {
                s.tags.extend(add.clone());
                batches.entry(add).or_default().push(s.id.clone());
            }
        }
    }
    let calls: Vec<(Tags, Vec<String>)> = batches
        .into_iter()
        .flat_map(|(tags, ids)| {
            ids.chunks(TAG_BATCH)
                .map(|c| (tags.clone(), c.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    let failed: Vec<(Vec<String>, Error)> = stream::iter(calls)
        .map(|(tags, ids)| async move {
            let r = ec2.create_tags(&ids, &tags).await;
            (ids, r)
        })
        .buffer_unordered(spec.concurrency.max(1))
        .filter_map(|(ids, r)| async move { r.err().map(|e| (ids, e)) })
        .collect()
        .await;
    for (ids, e) in failed {
        tracing::error!(snapshots = ids.len(), error = %e, kind = e.kind(), "could not tag snapshots; the next run of the slot tries again");
        for id in ids {
            report.problems.push(Problem {
                resource: id,
                operation: "tag",
                code: e.code().to_string(),
                message: e.to_string(),
            });
        }
    }
}

/// Takes out of `todo` the volumes EC2 would refuse for too many pending snapshots (`ec2::pace::pending_deferrals`
/// over the survey's snapshots): creating them would only fail with `ConcurrentSnapshotLimitExceeded`. Each is
/// reported as a `defer` problem — the run is partial, never failed, for it — and frozen for retention, since it
/// has no snapshot of this slot. The next run tries again.
fn defer_pending(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    survey: &Survey,
    todo: &mut Vec<(CreateSnapshot, Vec<String>)>,
    frozen: &mut HashSet<String>,
    report: &mut RunReport,
    metrics: &Metrics,
) {
    let types: HashMap<&str, &str> = survey
        .targets
        .iter()
        .map(|t| (t.volume.id.as_str(), t.volume.volume_type.as_str()))
        .collect();
    let candidates: Vec<(&str, &str)> = todo
        .iter()
        .map(|(r, _)| {
            let id = r.volume_id.as_str();
            (id, types.get(id).copied().unwrap_or_default())
        })
        .collect();
    let deferred =
        ec2::pace::pending_deferrals(&candidates, &survey.snapshots, ec2.max_pending_snapshots());
    if deferred.is_empty() {
        return;
    }
    todo.retain(|(request, serves)| {
        let Some(why) = deferred.get(&request.volume_id) else {
            return true;
        };
        let message = why.message();
        tracing::warn!(volume = %request.volume_id, reason = %message, "snapshot deferred: pending-snapshot limit");
        for s in serves {
            metrics
                .skipped_resources
                .with_label_values(&[&spec.policy.name, s, "pending-limit"])
                .inc();
        }
        frozen.insert(request.volume_id.clone());
        report.problems.push(Problem {
            resource: request.volume_id.clone(),
            operation: "defer",
            code: "pending-limit".into(),
            message,
        });
        false
    });
}

/// Per schedule: the oldest newest-completed snapshot over its targeted volumes, and volumes with none.
pub fn freshness(policy: &Policy, survey: &Survey) -> BTreeMap<String, Freshness> {
    let mut newest: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
    for s in survey
        .snapshots
        .iter()
        .filter(|s| s.state == SnapState::Completed)
    {
        let slot = slot_of(s);
        for sched in schedules_of(s) {
            let Some(name) = policy
                .schedules
                .iter()
                .find(|p| p.name == sched)
                .map(|p| p.name.as_str())
            else {
                continue;
            };
            let e = newest.entry((s.volume_id.as_str(), name)).or_insert(slot);
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
