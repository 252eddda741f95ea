//! The create phase: making a slot's snapshots. Which volumes still need one ([`prepare`]), the tags and
//! description each gets, the create calls (one CreateSnapshots per instance under instance consistency, else one
//! CreateSnapshot per volume) with completion polling beside them ([`phase`]), the CreateTags that add what
//! CreateSnapshots cannot set per volume, and the deferral of volumes EC2 would refuse for too many pending
//! snapshots. Everything idempotency depends on (managed, policy, schedule, slot) is set at creation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::{watch, Notify};

use super::prune::Early;
use super::run::{Flight, Run};
use super::survey::{Survey, TargetVolume};
use super::{settle, RunSpec, MAX_TAGS};
use crate::config::{Consistency, Policy};
use crate::ec2::op::Op;
use crate::ec2::{self, CreateSnapshot, Ec2, Snapshot, Tags};
use crate::error::Error;
use crate::report::Problem;
use crate::retention::SnapState;
use crate::schedule::format_slot;

/// The creates this run is to make: one snapshot per targeted volume without one of the slot, serving every
/// firing schedule that targets it. Counts the targeted and already done volumes, and defers what EC2 would
/// refuse for too many pending snapshots ([`defer_pending`]).
pub(super) fn prepare(run: &mut Run<'_>) -> Vec<Todo> {
    let (spec, policy) = (run.spec, run.spec.policy);
    let slot = format_slot(spec.slot);
    let done: HashSet<&str> = run
        .survey
        .snapshots
        .iter()
        .filter(|s| s.slot == spec.slot && s.state != SnapState::Error)
        .map(|s| &*s.volume_id)
        .collect();
    let mut todo = Vec::new();
    for t in &run.survey.targets {
        let serves: Vec<String> = t
            .schedules
            .iter()
            .filter(|s| spec.firing.contains(s))
            .cloned()
            .collect();
        if serves.is_empty() {
            continue;
        }
        run.report.targeted_volumes += 1;
        if done.contains(t.volume.id.as_str()) {
            run.report.already_done += 1;
            continue;
        }
        let schedules = serves.join(",");
        let request = CreateSnapshot {
            volume_id: t.volume.id.clone(),
            description: description(&policy.name, &schedules, &slot, t),
            tags: snapshot_tags(policy, &schedules, &slot, t),
        };
        todo.push((request, serves));
    }
    drop(done);
    // A run that waits for completion admits creates under the account's pending cap as earlier snapshots
    // complete ([`Gate`]); one that does not defers what is over the cap to the next run.
    let upfront_cap = match run.waits() {
        Some(_) => None,
        None => run.ec2.max_pending_snapshots(),
    };
    defer_pending(run, upfront_cap, &mut todo);
    todo
}

/// The phase: makes `todo`'s snapshots while the completion poll ([`settle::poll`]) watches them and the early
/// deletes go out, and records each create's outcome. Returns the last poll's error, if it failed.
pub(super) async fn phase(run: &mut Run<'_>, flight: &Flight, todo: Vec<Todo>) -> Option<Error> {
    let (ec2, polls) = (run.ec2, run.polls());
    let gate = run
        .waits()
        .zip(ec2.max_pending_snapshots())
        .map(|(c, cap)| Gate::new(cap, &flight.early, &flight.freed, c.deadline));
    let (creating_tx, creating_rx) = watch::channel(true);
    let create = async {
        let made = create_all(run, todo, gate.as_ref(), &|s| flight.lock().created(s)).await;
        let _ = creating_tx.send(false);
        made
    };
    let polling = async {
        match polls {
            Some(c) => settle::poll(ec2, c, flight, creating_rx).await,
            None => None,
        }
    };
    let (results, last_error) = tokio::join!(create, polling);
    record(run, results);
    last_error
}

/// Records each create's outcome.
pub(super) fn record(run: &mut Run<'_>, results: Vec<Created>) {
    for (request, serves, result) in results {
        let volume = request.volume_id;
        match result {
            Ok(snapshot) => run.created(&volume, &snapshot.id, &serves),
            // EC2 counted pending snapshots we could not see (another tool's, another policy's), or none of ours
            // completed while the create waited for room under the cap.
            Err(e) if over_pending_limit(&e) => {
                run.deferred(&serves, Problem::of(volume, "defer", &e))
            }
            Err(e @ Error::Stopped { .. }) => run.create_not_sent(volume, &e),
            Err(e) => run.create_failed(volume, &serves, &e),
        }
    }
}

/// A create refused for too many pending snapshots, by EC2 or by the [`Gate`].
fn over_pending_limit(e: &Error) -> bool {
    e.api_failure().is_some_and(|f| f.code.defers())
}

/// A volume's snapshot tags: user tags of the instance, then of the volume (more specific wins), a Name, and
/// snapwarden's own. Capped at EC2's 50 tags, dropping user tags (ours and Name always fit).
/// Under instance consistency a snapshot without a Name of its own is named after its instance, like the other
/// snapshots of the same CreateSnapshots call, so one CreateTags can name them all.
pub(super) fn snapshot_tags(
    policy: &Policy,
    schedules: &str,
    slot: &str,
    t: &TargetVolume,
) -> Tags {
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

pub(super) fn description(policy: &str, schedules: &str, slot: &str, t: &TargetVolume) -> String {
    let mut d = format!(
        "snapwarden {}: policy {policy}, schedule {schedules}, slot {slot}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((instance, device)) = &t.volume.attachment {
        d.push_str(&format!(", {instance} {device}"));
    }
    cut_description(d)
}

/// EC2 takes descriptions of up to 255 characters. Truncated in place: every create of every run builds one.
fn cut_description(mut d: String) -> String {
    if let Some((end, _)) = d.char_indices().nth(255) {
        d.truncate(end);
    }
    d
}

/// The instance whose CreateSnapshots call takes `t`'s snapshot under the policy, if any.
fn by_instance<'a>(policy: &Policy, t: &'a TargetVolume) -> Option<&'a str> {
    // Under VSS too: an instance whose VSS failed falls back to one CreateSnapshots.
    if policy.consistency == Consistency::Volume {
        return None;
    }
    t.instance.as_ref().map(|i| i.id.as_str())
}

/// EC2 snapshots at most 40 volumes in one CreateSnapshots.
const MAX_CREATE_SNAPSHOTS_VOLUMES: usize = 40;
/// CreateTags takes up to 1,000 resource ids; AWS recommends smaller batches.
pub(super) const TAG_BATCH: usize = 500;

/// A create request with the firing schedules it serves.
pub(super) type Todo = (CreateSnapshot, Vec<String>);
pub(super) type Created = (CreateSnapshot, Vec<String>, Result<Snapshot, Error>);

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
/// Concurrency: up to `run.spec.concurrency` calls wait at once; what actually paces them is the backend's token
/// buckets (`ec2::pace::Paced`), which queue them at the budgeted rate.
///
/// `created` hears of every snapshot the moment its call returns (a volume attached since the survey included),
/// so that completion tracking starts while other calls are still queued; that is also the only place the snapshot
/// of a volume nobody asked for (attached since the survey) is handed on.
async fn create_all(
    run: &mut Run<'_>,
    todo: Vec<Todo>,
    gate: Option<&Gate<'_>>,
    created: &(dyn Fn(&Snapshot) + Sync),
) -> Vec<Created> {
    let (results, batches) = make(run.ec2, run.spec, &run.survey, todo, gate, created).await;
    tag_all(run, batches).await;
    results
}

/// Tags CreateSnapshots could not set per volume, by tag set: what [`tag_all`] adds.
pub(super) type Untagged = BTreeMap<Tags, Vec<String>>;

/// The create calls of [`create_all`] without the tagging: the outcomes, and the tags still to add. Holds no
/// run context, so the app-consistency phase can make an instance's snapshots while its pre script holds it.
pub(super) async fn make(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    survey: &Survey,
    todo: Vec<Todo>,
    gate: Option<&Gate<'_>>,
    created: &(dyn Fn(&Snapshot) + Sync),
) -> (Vec<Created>, Untagged) {
    let policy = spec.policy;
    let calls = calls(policy, survey, todo);
    let mut results = Vec::new();
    let mut batches = Untagged::new();
    stream::iter(calls)
        .map(|(instance, items)| create_call(ec2, &policy.name, gate, instance, items))
        .buffer_unordered(spec.concurrency.max(1))
        .for_each(|(made, extra, admitted)| {
            let ok = made.iter().filter_map(|(_, _, r)| r.as_ref().ok());
            ok.chain(&extra).for_each(created);
            // Its snapshots now count as pending (`created`), no longer as in flight.
            if let Some(gate) = gate {
                gate.landed(admitted);
            }
            for s in extra {
                tracing::info!(volume = %s.volume_id, snapshot = %s.id, "snapshot of a volume attached since the survey");
            }
            results.extend(made.into_iter().map(|c| keep_ids(c, &mut batches)));
            std::future::ready(())
        })
        .await;
    (results, batches)
}

/// One create call of [`calls`] (an empty `instance`: one CreateSnapshot), once the [`Gate`] admits it. Returns
/// the outcome per request, any snapshot of a volume nobody asked for, and how many volumes the gate admitted.
async fn create_call(
    ec2: &dyn Ec2,
    policy: &str,
    gate: Option<&Gate<'_>>,
    instance: String,
    items: Vec<Todo>,
) -> (Vec<Created>, Vec<Snapshot>, usize) {
    let n = items.len();
    if let Some(gate) = gate {
        if !gate.admit(n).await {
            let operation = if instance.is_empty() {
                Op::CreateSnapshot
            } else {
                Op::CreateSnapshots
            };
            let refused = items
                .into_iter()
                .map(|(r, serves)| (r, serves, Err(gate.refusal(operation, ec2.region()))))
                .collect();
            return (refused, Vec::new(), 0);
        }
    }
    let (made, extra) = if instance.is_empty() {
        let (request, serves) = items.into_iter().next().expect("one item");
        let result = ec2.create_snapshot(&request).await;
        (vec![(request, serves, result)], Vec::new())
    } else {
        create_instance(ec2, policy, &instance, items).await
    };
    (made, extra, n)
}

/// A create's outcome as the run keeps it: the tags the snapshot lacks go into `batches` (for [`tag_all`]), and
/// the request's and snapshot's tags are dropped — the run needs only the ids from here on, and at 10,000 volumes
/// the tags held until the last create would be ~15 MB.
fn keep_ids(created: Created, batches: &mut BTreeMap<Tags, Vec<String>>) -> Created {
    let (mut request, serves, mut result) = created;
    if let Ok(s) = &mut result {
        let add = missing(&request.tags, &s.tags);
        if !add.is_empty() {
            batches.entry(add).or_default().push(s.id.to_string());
        }
        s.tags = Arc::default();
    }
    request.tags = Tags::new();
    (request, serves, result)
}

/// The create calls for `todo`, as (instance, requests): a whole instance's volumes for one CreateSnapshots, or
/// (with no instance) one volume for one CreateSnapshot. See [`create_all`].
fn calls(policy: &Policy, survey: &Survey, todo: Vec<Todo>) -> Vec<(String, Vec<Todo>)> {
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
    calls.extend(singles.into_iter().map(|item| (String::new(), vec![item])));
    calls
}

/// The problem code of a create the [`Gate`] gave up on.
pub(super) const PENDING_LIMIT: &str = "pending-limit";

/// Admission under the account's pending-snapshot cap while the run waits for completion: a create call goes out
/// once the policy's pending snapshots plus the calls in flight leave room for its volumes, so a run over more
/// volumes than the cap makes them all as earlier snapshots complete, instead of deferring the rest to the next
/// fire (for a daily schedule, a day later). A call waits at most `patience` (the completion deadline) without any
/// room appearing; then it is deferred like a create EC2 refused.
pub(super) struct Gate<'a> {
    cap: usize,
    early: &'a Mutex<Early>,
    /// Signalled after every completion poll.
    freed: &'a Notify,
    patience: Duration,
    /// Volumes of the calls admitted whose snapshots are not yet in `early.pending`.
    in_flight: Mutex<usize>,
}

impl<'a> Gate<'a> {
    pub(crate) fn new(
        cap: usize,
        early: &'a Mutex<Early>,
        freed: &'a Notify,
        patience: Duration,
    ) -> Self {
        Gate {
            cap,
            early,
            freed,
            patience,
            in_flight: Mutex::new(0),
        }
    }

    /// Waits for room for `n` more pending snapshots; false when none completed for `patience`.
    async fn admit(&self, n: usize) -> bool {
        let mut give_up = tokio::time::Instant::now() + self.patience;
        let mut last_used = usize::MAX;
        loop {
            // Registered before looking, so a poll that lands in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let pending = self
                    .early
                    .lock()
                    .expect("early deletes poisoned")
                    .pending
                    .len();
                let mut in_flight = self.in_flight.lock().expect("gate poisoned");
                let used = pending + *in_flight;
                // A call larger than the whole cap (an instance with many volumes) goes out alone.
                if used + n <= self.cap || used == 0 {
                    *in_flight += n;
                    return true;
                }
                // Patience runs from the last completion, not from the last poll: polls come every few seconds.
                if used < last_used {
                    give_up = tokio::time::Instant::now() + self.patience;
                }
                last_used = used;
            }
            if tokio::time::timeout_at(give_up, freed).await.is_err() {
                return false;
            }
        }
    }

    /// `n` admitted volumes' answers are in: their snapshots are pending (or failed) now.
    fn landed(&self, n: usize) {
        let mut in_flight = self.in_flight.lock().expect("gate poisoned");
        *in_flight = in_flight.saturating_sub(n);
    }

    /// `operation`: the call held back (CreateSnapshot, or CreateSnapshots for a whole instance).
    fn refusal(&self, operation: Op, region: &str) -> Error {
        Error::api(
            operation,
            region,
            PENDING_LIMIT,
            format!(
                "{} snapshots stayed pending (the account cap) for {}s with none completing; deferred to the next \
                 run",
                self.cap,
                self.patience.as_secs()
            ),
        )
    }
}

/// The tags of `want` whose keys `have` lacks.
fn missing(want: &Tags, have: &Tags) -> Tags {
    want.iter()
        .filter(|(k, _)| !have.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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
                    let e = e.clone();
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
    cut_description(d)
}

/// Adds the tags a snapshot of this slot should carry but does not: those CreateSnapshots could not set per
/// volume, for this run's snapshots (`batches`, gathered as they were made) and for ones an earlier run of the slot
/// made and did not get to tag (a crash or a failed CreateTags between the two calls). Only missing keys are added, never a value changed. Snapshots
/// needing the same tags share CreateTags calls (up to [`TAG_BATCH`] ids each). A failure is a `tag` problem (the
/// run is partial); the snapshot itself is good, and the next run of the slot tries again.
pub(super) async fn tag_all(run: &mut Run<'_>, mut batches: Untagged) {
    let (ec2, spec) = (run.ec2, run.spec);
    // Earlier runs of this slot: only where CreateSnapshots (or the VSS document) leaves something out.
    if spec.policy.consistency != Consistency::Volume {
        earlier_untagged(spec, &run.survey, &mut batches);
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
        run.tag_failed(ids, &e);
    }
}

/// Adds to `batches` the tags missing from the snapshots an earlier run of the slot made (see [`tag_all`]).
fn earlier_untagged(
    spec: &RunSpec<'_>,
    survey: &Survey,
    batches: &mut BTreeMap<Tags, Vec<String>>,
) {
    let slot = format_slot(spec.slot);
    let targets: HashMap<&str, &TargetVolume> = survey
        .targets
        .iter()
        .map(|t| (t.volume.id.as_str(), t))
        .collect();
    let queued: HashSet<String> = batches.values().flatten().cloned().collect();
    // One snapshot per volume: the one that stands for the slot (`retention::stands_before`: an app-consistent
    // one, else the one EC2 started first). A repeat of it is retention's to delete, in this very run: tagging
    // it too would race that delete (and a CreateTags naming a snapshot just deleted fails for every snapshot of
    // its batch).
    let mut first: BTreeMap<&str, &crate::retention::Snap> = BTreeMap::new();
    for s in &survey.snapshots {
        if s.slot != spec.slot || s.state == SnapState::Error {
            continue;
        }
        let e = first.entry(&*s.volume_id).or_insert(s);
        if crate::retention::stands_before(s, e) {
            *e = s;
        }
    }
    for s in first.into_values() {
        if queued.contains(&*s.id) {
            continue;
        }
        let (Some(t), Some(have)) = (targets.get(&*s.volume_id), survey.slot_tags.get(&s.id))
        else {
            continue;
        };
        let schedules = have.get(ec2::TAG_SCHEDULE).cloned().unwrap_or_default();
        let add = missing(&snapshot_tags(spec.policy, &schedules, &slot, t), have);
        if !add.is_empty() {
            batches.entry(add).or_default().push(s.id.to_string());
        }
    }
}

/// Takes out of `todo` the volumes EC2 would refuse for too many pending snapshots (`ec2::pace::pending_deferrals`
/// over the survey's snapshots): creating them would only fail with `ConcurrentSnapshotLimitExceeded`. Each is
/// [`Run::deferred`] — the run is partial, never failed, for it — and frozen for retention, since it has no
/// snapshot of this slot. The next run tries again. `account_cap`: the account's pending cap, when it is to be
/// applied here rather than by a [`Gate`].
fn defer_pending(run: &mut Run<'_>, account_cap: Option<usize>, todo: &mut Vec<Todo>) {
    let survey = &run.survey;
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
    let deferred = ec2::pace::pending_deferrals(&candidates, &survey.snapshots, account_cap);
    if deferred.is_empty() {
        return;
    }
    todo.retain(|(request, serves)| {
        let Some(why) = deferred.get(&request.volume_id) else {
            return true;
        };
        let why = Problem {
            resource: request.volume_id.clone(),
            operation: "defer",
            code: PENDING_LIMIT.into(),
            message: why.message(),
            aws: None,
        };
        run.deferred(serves, why);
        false
    });
}

#[cfg(test)]
mod tests {
    use super::cut_description;

    #[test]
    fn descriptions_are_cut_at_255_characters_not_bytes() {
        assert_eq!(cut_description("short".into()), "short");
        let exact = "x".repeat(255);
        assert_eq!(cut_description(exact.clone()), exact);
        // Multi-byte characters count once each, and a cut never splits one.
        let long = "é".repeat(300);
        let cut = cut_description(long);
        assert_eq!(cut.chars().count(), 255);
        assert_eq!(cut.len(), 510);
    }
}
