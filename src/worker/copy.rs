//! Disaster-recovery copies: the destinations a policy copies to ([`Destinations`], shared by every run of the
//! process), what each holds of the run's region ([`survey`], before anything is created, so the source side's
//! retention holds what a destination still wants), and the copy phase ([`phase`], after the source's retention):
//! the copies each destination's own plan wants, sent oldest first under the destination's copy-concurrency gate
//! while their completion is polled, then retention of the copies there, per source volume, with every rail the
//! source has.
//!
//! What is decided where: `retention::copies::plan_copies` decides what to copy and what to hold; this module
//! reads the destinations, sends and tracks the calls, and records each outcome through the run context's events.
//! A copy's identity is its tags (`snapwarden:source-snapshot`, `-region`, `-volume`), never its volume id, which
//! is arbitrary on AWS; a destination is read back from its tags on every run, so a restart never copies twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::run::Run;
pub(crate) use super::survey::copy_key;
use super::survey::{digest, Survey};
use super::{Completion, FILTER_VALUES};
use crate::config::{Encryption, Policy};
use crate::ec2::op::Code;
use crate::ec2::{self, CopySnapshot, Ec2, Filter, Tags};
use crate::error::Error;
use crate::retention::copies::{plan_copies, Copied, CopyInput, CopyPlan, ToCopy};
use crate::retention::{
    self, Action, Decision, Group, Held, Interner, PlanInput, ScheduleRules, Snap, SnapState,
};
use crate::schedule::format_slot;

/// The regions copies go to, by name, each with its backend (paced on that region's own buckets) and its gate:
/// at most `daemon.copy-concurrency` copies this process knows to be pending there at once, across every run,
/// since AWS's limit is per destination region, not per policy or source.
#[derive(Default)]
pub struct Destinations {
    regions: BTreeMap<String, Destination>,
}

#[derive(Clone)]
pub(crate) struct Destination {
    pub(crate) ec2: Arc<dyn Ec2>,
    gate: Arc<Semaphore>,
}

impl Destinations {
    /// One destination per backend, each admitting `concurrency` pending copies.
    pub fn new(concurrency: usize, backends: impl IntoIterator<Item = Arc<dyn Ec2>>) -> Self {
        let regions = backends
            .into_iter()
            .map(|ec2| {
                let gate = Arc::new(Semaphore::new(concurrency.max(1)));
                (ec2.region().to_string(), Destination { ec2, gate })
            })
            .collect();
        Destinations { regions }
    }

    /// The same destinations seen through `wrap` (a dry run's `ec2::DryRun`), sharing their gates.
    pub fn map(&self, wrap: impl Fn(Arc<dyn Ec2>) -> Arc<dyn Ec2>) -> Self {
        let regions = self
            .regions
            .iter()
            .map(|(name, d)| {
                let d = Destination {
                    ec2: wrap(d.ec2.clone()),
                    gate: d.gate.clone(),
                };
                (name.clone(), d)
            })
            .collect();
        Destinations { regions }
    }

    pub(crate) fn get(&self, region: &str) -> Option<&Destination> {
        self.regions.get(region)
    }

    /// The regions, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }
}

/// Every destination region of `policy`'s schedules, in order: the backends a daemon builds.
pub fn destination_regions(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = policy
        .schedules
        .iter()
        .flat_map(|s| s.copies.iter().map(|c| c.region.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What one destination holds of the run's region for the policy, as the run found it.
#[derive(Debug)]
pub(crate) struct DestinationSurvey {
    pub(crate) region: Arc<str>,
    /// The policy's schedules that copy here, each with its copy rule's keep.
    pub(crate) rules: Vec<ScheduleRules>,
    /// Schedule -> whether its copies carry the source's own tags.
    copy_tags: HashSet<String>,
    encryption: HashMap<String, Encryption>,
    /// The copies, any state; None when the destination could not be read (nothing is copied or deleted there,
    /// and the source holds what the destination would want if it held nothing).
    pub(crate) copies: Option<Vec<Copied>>,
}

/// The run's part of [`survey`], right after the region's survey: the destinations read, failures reported.
pub(super) async fn read(run: &mut Run<'_>) {
    let spec = run.spec;
    let (region, now) = (run.region(), run.now());
    let mut failed = Vec::new();
    survey(
        spec.destinations,
        spec.policy,
        region,
        spec.account_id,
        &mut run.survey,
        now,
        |name, e| failed.push((name.to_string(), e.clone())),
    )
    .await;
    for (name, e) in failed {
        run.copy_survey_failed(&name, &e);
    }
}

/// Reads each destination of `policy` for the copies of `region`'s snapshots (one filtered, paginated sweep
/// each) and fills `survey.copies` and `survey.held`: the source snapshots retention must keep until their
/// copy completes. A destination that cannot be read is reported through `failed` and holds what its plan would
/// want with no copies at all: never less than it could want, and still bounded by its keep rules.
pub(crate) async fn survey(
    destinations: Option<&Destinations>,
    policy: &Policy,
    region: &str,
    account_id: &str,
    survey: &mut Survey,
    now: DateTime<Utc>,
    mut failed: impl FnMut(&str, &Error),
) {
    for name in destination_regions(policy) {
        let mut d = DestinationSurvey {
            region: Arc::from(name.as_str()),
            rules: Vec::new(),
            copy_tags: HashSet::new(),
            encryption: HashMap::new(),
            copies: None,
        };
        for s in &policy.schedules {
            for c in s.copies.iter().filter(|c| c.region == name) {
                d.rules.push(ScheduleRules {
                    name: Arc::from(s.name.as_str()),
                    keep: c.keep.clone(),
                    count_from_tag: false,
                });
                if c.copy_tags {
                    d.copy_tags.insert(s.name.clone());
                }
                d.encryption.insert(s.name.clone(), c.encryption.clone());
            }
        }
        let read = match destinations.and_then(|all| all.get(&name)) {
            // `aws.regions` empty: the source is the SDK's region, known only now.
            _ if name == region => Err(Error::Other(format!(
                "copy destination {name} is the region this policy snapshots: a copy there survives no \
                 region outage; copy to another region"
            ))),
            None => Err(Error::Other(format!(
                "no backend for copy destination {name}"
            ))),
            Some(dest) => {
                read_copies(dest.ec2.as_ref(), policy, region, account_id, &mut survey.interner)
                    .await
            }
        };
        match read {
            Ok(copies) => d.copies = Some(copies),
            Err(e) => failed(&name, &e),
        }
        hold(&d, survey, policy.timezone, now);
        survey.copies.push(d);
    }
}

/// The copies of `region`'s snapshots for `policy` that `ec2` (a destination) holds, owned by `account_id`.
async fn read_copies(
    ec2: &dyn Ec2,
    policy: &Policy,
    region: &str,
    account_id: &str,
    interner: &mut Interner,
) -> Result<Vec<Copied>, Error> {
    let filters = [
        Filter::tag(ec2::TAG_MANAGED, "true"),
        Filter::tag(ec2::TAG_POLICY, &policy.name),
        Filter::tag(ec2::TAG_SOURCE_REGION, region),
    ];
    let mut out = Vec::new();
    ec2::for_each_snapshot(ec2, &filters, |page| {
        for s in page.iter().filter(|s| *s.owner_id == *account_id) {
            out.push(digest_copy(interner, s));
        }
    })
    .await?;
    Ok(out)
}

/// A copy as retention judges it: grouped by the source volume its tags record (whatever volume id the
/// destination reports), or on its own and kept when they record none.
pub(crate) fn digest_copy(interner: &mut Interner, s: &ec2::Snapshot) -> Copied {
    let mut snap = digest(interner, s);
    let tag = |k: &str| s.tags.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    match tag(ec2::TAG_SOURCE_VOLUME) {
        Some(volume) => {
            snap.volume_id = interner.str(&copy_key(volume));
            snap.group = Group::Copy;
        }
        None if snap.group == Group::Volume => {
            snap.volume_id = Arc::from(format!("{}:{}", ec2::COPY_VOLUME_ID, s.id));
            snap.group = Group::Unplaced;
        }
        None => {}
    }
    Copied {
        snap,
        source: Arc::from(tag(ec2::TAG_SOURCE_SNAPSHOT).unwrap_or("")),
    }
}

/// The source snapshots, one volume after another (each volume's snapshots together): what `plan_copies` takes
/// a volume at a time.
fn by_volume(survey: &Survey) -> Vec<Snap> {
    let mut snaps: Vec<Snap> = survey
        .snapshots
        .iter()
        .filter(|s| s.group == Group::Volume)
        .cloned()
        .collect();
    snaps.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
    snaps
}

/// Runs of one volume's snapshots in `snaps` (sorted by volume).
fn volumes(snaps: &[Snap]) -> impl Iterator<Item = &[Snap]> {
    snaps.chunk_by(|a, b| a.volume_id == b.volume_id)
}

/// The copies of each source volume (by group key).
fn copies_by_key(copies: &[Copied]) -> HashMap<&str, Vec<Copied>> {
    let mut out: HashMap<&str, Vec<Copied>> = HashMap::new();
    for c in copies.iter().filter(|c| c.snap.group == Group::Copy) {
        out.entry(&*c.snap.volume_id).or_default().push(c.clone());
    }
    out
}

/// Each source volume's copy plan towards `d`, with the volume's snapshots: `snaps` by volume (see [`by_volume`]),
/// `copies` the destination's.
fn volume_plans<'s>(
    d: &'s DestinationSurvey,
    snaps: &'s [Snap],
    copies: &'s [Copied],
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> impl Iterator<Item = (&'s [Snap], CopyPlan)> + 's {
    let by_key = copies_by_key(copies);
    volumes(snaps).map(move |source| {
        let key = copy_key(&source[0].volume_id);
        let copies = by_key.get(key.as_str()).map_or(&[][..], |c| &c[..]);
        let input = CopyInput {
            source,
            copies,
            rules: &d.rules,
            tz,
        };
        (source, plan_copies(&input, now))
    })
}

/// Adds to `survey.held` what destination `d` wants of the source and has not got. Pending source snapshots count
/// as the completed ones they will be, as in the run's expected plan: one that completes during the run must not
/// be pruned before the next run can copy it.
fn hold(d: &DestinationSurvey, survey: &mut Survey, tz: chrono_tz::Tz, now: DateTime<Utc>) {
    let mut snaps = by_volume(survey);
    for s in snaps.iter_mut().filter(|s| s.state == SnapState::Pending) {
        s.state = SnapState::Completed;
    }
    let copies = d.copies.as_deref().unwrap_or_default();
    let mut held: Held = HashMap::new();
    for (_, plan) in volume_plans(d, &snaps, copies, tz, now) {
        for id in plan.hold {
            held.entry(id).or_insert_with(|| Arc::clone(&d.region));
        }
    }
    for (id, region) in held {
        survey.held.entry(id).or_insert(region);
    }
}

/// The copies destination `d` wants now, over the source as it stands after the run's own retention, oldest
/// first across volumes (so a backlog is worked off from its oldest slot, and each volume's chain in order).
fn wanted(
    d: &DestinationSurvey,
    survey: &Survey,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Vec<Want> {
    let Some(copies) = &d.copies else {
        return Vec::new();
    };
    let snaps = by_volume(survey);
    let mut out = Vec::new();
    for (source, plan) in volume_plans(d, &snaps, copies, tz, now) {
        let volume = &source[0].volume_id;
        out.extend(plan.copy.into_iter().map(|copy| {
            let app_consistent = source
                .iter()
                .find(|s| s.id == copy.source)
                .is_some_and(|s| s.app_consistent);
            Want {
                copy,
                volume: Arc::clone(volume),
                app_consistent,
            }
        }));
    }
    out.sort_by(|a, b| {
        (a.copy.slot, &a.volume, &a.copy.source).cmp(&(b.copy.slot, &b.volume, &b.copy.source))
    });
    out
}

/// The copies destination `d` would be sent now, oldest first: what `plan` shows.
pub(crate) fn would_copy(
    d: &DestinationSurvey,
    survey: &Survey,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Vec<ToCopy> {
    wanted(d, survey, tz, now)
        .into_iter()
        .map(|w| w.copy)
        .collect()
}

/// One copy to make, with what its tags need.
struct Want {
    copy: ToCopy,
    volume: Arc<str>,
    app_consistent: bool,
}

/// The copies the phase waits for, each with the gate's place it holds (None: it was pending before the run and
/// the gate was full; it is watched all the same). Dropping an entry frees its place.
type Tracked = HashMap<Arc<str>, Option<OwnedSemaphorePermit>>;

/// The phase, after the source's retention: for each destination the run could read, the copies its plan wants
/// (oldest first, under the gate, polled to completion within the run's completion deadline), then its retention.
/// Destinations are worked on one after another: each has its own gate and bucket, and at most three exist.
pub(super) async fn phase(run: &mut Run<'_>) {
    let dests = std::mem::take(&mut run.survey.copies);
    for d in &dests {
        let Some(dest) = run.spec.destinations.and_then(|all| all.get(&d.region)) else {
            continue;
        };
        if d.copies.is_none() {
            continue;
        }
        let dest = dest.clone();
        let (mut copies, failed) = copy_to(run, d, &dest).await;
        prune(run, d, &dest, &failed, &mut copies).await;
        record(run, d, &copies);
    }
}

/// Sends the copies destination `d` wants and watches them (and any an earlier run left pending) complete; returns
/// the destination's copies with every state learnt, the errored ones reported and deleted, and the volumes (copy
/// keys) whose copy failed.
async fn copy_to(
    run: &mut Run<'_>,
    d: &DestinationSurvey,
    dest: &Destination,
) -> (Vec<Copied>, HashSet<String>) {
    let (policy, now) = (run.spec.policy, run.now());
    let want = wanted(d, &run.survey, policy.timezone, now);
    let mut copies = d.copies.clone().unwrap_or_default();
    let waits = run.waits();
    let deadline = waits.map(|c| Instant::now() + c.deadline);
    // The copies to watch: every pending one, each holding a place under the gate if one is free.
    let tracked: Mutex<Tracked> = Mutex::new(
        copies
            .iter()
            .filter(|c| c.snap.state == SnapState::Pending)
            .map(|c| {
                let place = dest.gate.clone().try_acquire_owned().ok();
                (Arc::clone(&c.snap.id), place)
            })
            .collect(),
    );
    let sending_done = Notify::new();
    let source_tags = SourceTags::read(run.ec2, d, &want).await;
    let events: Mutex<Vec<Event>> = Mutex::new(Vec::new());
    let send = async {
        let mut rest = want.into_iter();
        while let Some(w) = rest.next() {
            let permit = match deadline {
                Some(at) => tokio::select! {
                    p = dest.gate.clone().acquire_owned() => p.ok(),
                    _ = tokio::time::sleep_until(at) => None,
                },
                None => dest.gate.clone().try_acquire_owned().ok(),
            };
            let Some(permit) = permit else {
                events.lock().expect("copy events").push(Event::Deferred(
                    std::iter::once(w).chain(rest).map(|w| w.copy).collect(),
                ));
                break;
            };
            let request = request(run, d, &w, &source_tags);
            match dest.ec2.copy_snapshot(&request).await {
                Ok(s) => {
                    let mut interner = Interner::default();
                    let copy = digest_copy(&mut interner, &s);
                    events
                        .lock()
                        .expect("copy events")
                        .push(Event::Created(w.copy.clone(), copy.clone()));
                    tracked
                        .lock()
                        .expect("copies tracked")
                        .insert(Arc::clone(&copy.snap.id), Some(permit));
                }
                // The destination is at AWS's limit (copies this process does not know of): the rest waits for
                // the next run, oldest first.
                Err(e) if e.is(Code::CopyLimit) || matches!(e, Error::Stopped { .. }) => {
                    events.lock().expect("copy events").push(Event::Deferred(
                        std::iter::once(w).chain(rest).map(|w| w.copy).collect(),
                    ));
                    break;
                }
                Err(e) => events
                    .lock()
                    .expect("copy events")
                    .push(Event::Failed(w.copy, w.volume, e)),
            }
        }
        sending_done.notify_one();
    };
    let poll = poll(run, dest, &tracked, &sending_done, deadline, &events);
    tokio::join!(send, poll);
    // Copies the run saw complete or fail.
    let tracked = tracked.into_inner().expect("copies tracked");
    let mut learnt: HashMap<Arc<str>, SnapState> = HashMap::new();
    let mut failed = HashSet::new();
    for e in events.into_inner().expect("copy events") {
        match e {
            Event::Created(want, copy) => {
                run.copy_created(&d.region, &want, &copy.snap.id);
                copies.push(copy);
            }
            Event::Deferred(wants) => run.copies_deferred(&d.region, &wants),
            Event::Failed(want, volume, e) => {
                failed.insert(copy_key(&volume));
                run.copy_failed(&d.region, &want, &e);
            }
            Event::Learnt(id, state) => {
                learnt.insert(id, state);
            }
        }
    }
    drop(tracked);
    for c in copies.iter_mut() {
        if let Some(&state) = learnt.get(&c.snap.id) {
            c.snap.state = state;
        }
    }
    failed.extend(
        copies
            .iter()
            .filter(|c| c.snap.state == SnapState::Error)
            .map(|c| c.snap.volume_id.to_string()),
    );
    delete_errored(run, d, dest, &mut copies).await;
    (copies, failed)
}

/// What the concurrent parts of [`copy_to`] learn, recorded through the run's events once they are done.
enum Event {
    Created(ToCopy, Copied),
    Deferred(Vec<ToCopy>),
    /// The copy, its source volume, why.
    Failed(ToCopy, Arc<str>, Error),
    Learnt(Arc<str>, SnapState),
}

/// Watches the tracked copies until sending is over and then none is pending or the deadline has passed: one
/// DescribeSnapshots per 200 ids per poll, the interval doubling from the run's first poll to its longest. A
/// copy seen completed or in error frees its place under the gate at once. A run that does not wait looks once,
/// after sending.
///
/// While copies wait for places under a full gate the interval follows the copies instead (see [`next_poll`]).
async fn poll(
    run: &Run<'_>,
    dest: &Destination,
    tracked: &Mutex<Tracked>,
    sending_done: &Notify,
    deadline: Option<Instant>,
    events: &Mutex<Vec<Event>>,
) {
    let Some(c) = run.polls() else {
        sending_done.notified().await;
        return;
    };
    let mut sending = true;
    let mut interval = c.first_poll;
    loop {
        if sending {
            tokio::select! {
                _ = sending_done.notified() => sending = false,
                _ = tokio::time::sleep(interval) => {}
            }
        } else {
            let now = Instant::now();
            match deadline {
                Some(at) if now < at => tokio::time::sleep(interval.min(at - now)).await,
                _ => {}
            }
        }
        let mut ids: Vec<String> = tracked
            .lock()
            .expect("copies tracked")
            .keys()
            .map(|id| id.to_string())
            .collect();
        ids.sort();
        let mut freed = false;
        for chunk in ids.chunks(FILTER_VALUES) {
            let filter = [Filter::new("snapshot-id", chunk.to_vec())];
            match ec2::all_snapshots(dest.ec2.as_ref(), &filter).await {
                Ok(found) => {
                    let mut t = tracked.lock().expect("copies tracked");
                    for s in found.iter().filter(|s| s.state != SnapState::Pending) {
                        if t.remove(&s.id).is_some() {
                            freed = true;
                            events
                                .lock()
                                .expect("copy events")
                                .push(Event::Learnt(Arc::clone(&s.id), s.state));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(destination = %dest.ec2.region(), error = %e, kind = e.kind(), "copy completion poll failed; trying again");
                }
            }
        }
        let left = !tracked.lock().expect("copies tracked").is_empty();
        let over = deadline.is_none_or(|at| Instant::now() >= at);
        if !sending && (!left || over) {
            return;
        }
        // Sends wait for places: the ones this poll freed (the sends take them as soon as it yields) or, with none
        // free, the next ones.
        let waiting = sending && (freed || dest.gate.available_permits() == 0);
        interval = next_poll(interval, waiting, freed, &c);
    }
}

/// The interval to the next completion poll. Doubling, as for the source's snapshots, unless copies wait for
/// places under the gate (`waiting`): then every second a completed copy goes unseen is a second its place, and the
/// sends behind it, stand idle, and over a backlog that adds up to a delay after every batch of `copy-concurrency`
/// copies (10,000 copies of 45 s each took 1.34 × what the 20 places allow, of 100 s 1.20 ×: docs/PERFORMANCE.md,
/// "DR copies"). So the interval restarts from the first poll when a poll has `freed` places (the copies sent into
/// them start now) and grows by 1/16 a poll: about 1/16 of the time the copies have been pending, which bounds the
/// delay to ~6% of a copy's duration (and to the longest interval, for copies that take hours), for a few dozen
/// describes per batch of 20 instead of a handful.
fn next_poll(interval: Duration, waiting: bool, freed: bool, c: &Completion) -> Duration {
    let next = match (waiting, freed) {
        (true, true) => c.first_poll,
        (true, false) => interval + interval / 16,
        (false, _) => interval * 2,
    };
    next.min(c.max_poll.max(c.first_poll))
}

/// The source snapshots' own tags, read only for copies whose rule carries them (`copy-tags`).
struct SourceTags {
    tags: HashMap<Arc<str>, Tags>,
}

/// The CopySnapshot of `w` to `d`: snapwarden's tags (what idempotency and the destination's retention read),
/// and the source's own when a schedule of the copy asks for them.
fn request(
    run: &Run<'_>,
    d: &DestinationSurvey,
    w: &Want,
    source_tags: &SourceTags,
) -> CopySnapshot {
    let policy = run.spec.policy;
    let schedules: Vec<&str> = w.copy.schedules.iter().map(|s| &**s).collect();
    let schedules = schedules.join(",");
    let slot = format_slot(w.copy.slot);
    let mut tags = Tags::from([
        (ec2::TAG_MANAGED.to_string(), "true".to_string()),
        (ec2::TAG_POLICY.to_string(), policy.name.clone()),
        (ec2::TAG_SCHEDULE.to_string(), schedules.clone()),
        (ec2::TAG_SLOT.to_string(), slot.clone()),
        (
            ec2::TAG_SOURCE_SNAPSHOT.to_string(),
            w.copy.source.to_string(),
        ),
        (ec2::TAG_SOURCE_REGION.to_string(), run.region().to_string()),
        (ec2::TAG_SOURCE_VOLUME.to_string(), w.volume.to_string()),
    ]);
    if policy.vss.is_some() || policy.scripts.is_some() {
        tags.insert(
            ec2::TAG_APP_CONSISTENT.to_string(),
            w.app_consistent.to_string(),
        );
    }
    if let Some(own) = source_tags.tags.get(&w.copy.source) {
        let room = super::MAX_TAGS.saturating_sub(tags.len());
        tags.extend(
            ec2::copyable_tags(own)
                .take(room)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    // Encrypted when any schedule the copy serves asks: a copy serves them all.
    let (encrypted, kms_key_id) = w
        .copy
        .schedules
        .iter()
        .filter_map(|s| d.encryption.get(&**s))
        .fold((false, None), |acc, e| match e {
            Encryption::AsSource => acc,
            Encryption::Encrypted { kms_key_id } => (true, acc.1.or(kms_key_id.clone())),
        });
    CopySnapshot {
        source_region: run.region().to_string(),
        source_snapshot_id: w.copy.source.to_string(),
        description: format!(
            "snapwarden {}: copy of {} from {}, policy {}, schedule {schedules}, slot {slot}",
            env!("CARGO_PKG_VERSION"),
            w.copy.source,
            run.region(),
            policy.name
        ),
        encrypted,
        kms_key_id,
        tags,
    }
}

impl SourceTags {
    /// Reads the tags of the sources of `wants` that need them, 200 ids per DescribeSnapshots.
    async fn read(ec2: &dyn Ec2, d: &DestinationSurvey, wants: &[Want]) -> Self {
        let ids: Vec<String> = wants
            .iter()
            .filter(|w| w.copy.schedules.iter().any(|s| d.copy_tags.contains(&**s)))
            .map(|w| w.copy.source.to_string())
            .collect();
        let mut tags = HashMap::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let filter = [Filter::new("snapshot-id", chunk.to_vec())];
            match ec2::all_snapshots(ec2, &filter).await {
                Ok(found) => tags.extend(found.into_iter().map(|s| (s.id, Tags::clone(&s.tags)))),
                // The copies go without them: snapwarden's own tags are what matters, and a user tag missing is
                // no reason to leave a slot without a copy.
                Err(e) => {
                    tracing::warn!(snapshots = chunk.len(), error = %e, kind = e.kind(), "could not read the source snapshots' tags; copying without them")
                }
            }
        }
        SourceTags { tags }
    }
}

/// Reports and deletes the copies in `error` state (they restore nothing, and the next run copies their source
/// again).
async fn delete_errored(
    run: &mut Run<'_>,
    d: &DestinationSurvey,
    dest: &Destination,
    copies: &mut Vec<Copied>,
) {
    let errored: Vec<Copied> = copies
        .iter()
        .filter(|c| c.snap.state == SnapState::Error)
        .cloned()
        .collect();
    for c in &errored {
        run.copy_errored(&d.region, c);
        match dest.ec2.delete_snapshot(&c.snap.id).await {
            Ok(()) => {}
            Err(e) if e.is(Code::SnapshotNotFound) => {}
            Err(Error::Stopped { .. }) => {}
            Err(e) => run.errored_not_deleted(&c.snap.id, &e),
        }
    }
    copies.retain(|c| c.snap.state != SnapState::Error);
}

/// Retention of the copies in `d`, per source volume, by the copy rules' keep, with the source's rails: the newest
/// copy of a volume, pinned and pending copies are kept, the policy's orphan rule applies once the source volume
/// is no longer targeted, and its deletion caps bound the plan. A volume whose copy failed this run loses nothing.
async fn prune(
    run: &mut Run<'_>,
    d: &DestinationSurvey,
    dest: &Destination,
    frozen: &HashSet<String>,
    copies: &mut Vec<Copied>,
) {
    let snaps: Vec<Snap> = copies.iter().map(|c| c.snap.clone()).collect();
    let plan = plan_retention(run.spec.policy, d, &snaps, &run.survey, frozen, run.now());
    if let Some(hit) = &plan.cap_hit {
        run.copy_cap_hit(&d.region, hit);
        return;
    }
    let doomed: Vec<Decision> = plan
        .decisions
        .into_iter()
        .filter(|d| d.action == Action::Delete)
        .collect();
    let serves: HashMap<Arc<str>, Arc<[Arc<str>]>> = snaps
        .iter()
        .map(|s| (Arc::clone(&s.id), Arc::clone(&s.schedules)))
        .collect();
    let ec2 = dest.ec2.as_ref();
    let results: Vec<(Decision, Result<(), Error>)> = stream::iter(doomed)
        .map(|dec| async move {
            let r = ec2.delete_snapshot(&dec.snapshot_id).await;
            (dec, r)
        })
        .buffer_unordered(run.spec.concurrency.max(1))
        .collect()
        .await;
    let mut gone = HashSet::new();
    for (dec, r) in results {
        let listed = serves.get(&dec.snapshot_id).map_or(&[][..], |s| &s[..]);
        match r {
            Ok(()) => {}
            Err(e) if e.is(Code::SnapshotNotFound) => {}
            Err(e) if e.is(Code::SnapshotInUse) => {
                run.copy_kept_in_use(&d.region, &dec);
                continue;
            }
            Err(e @ Error::Stopped { .. }) => {
                run.delete_not_sent(&dec, &e);
                continue;
            }
            Err(e) => {
                run.copy_delete_failed(&d.region, &dec, listed, &e);
                continue;
            }
        }
        run.copy_deleted(&d.region, &dec, listed);
        gone.insert(dec.snapshot_id);
    }
    copies.retain(|c| !gone.contains(&c.snap.id));
}

/// Retention of `snaps`, copies in `d` of the region `survey` read: by the copy rules' keep, per source volume,
/// with the policy's orphan rule and deletion caps; the volumes in `frozen` lose nothing. What [`prune`] executes
/// and `plan` shows.
pub(crate) fn plan_retention(
    policy: &Policy,
    d: &DestinationSurvey,
    snaps: &[Snap],
    survey: &Survey,
    frozen: &HashSet<String>,
    now: DateTime<Utc>,
) -> retention::Plan {
    // The source side's own set (copy keys included): a volume skipped for a bad count tag is still targeted,
    // so `expire-after` does not delete its copies while the tag is being fixed.
    let targeted = super::prune::targeted(survey);
    retention::plan(
        &PlanInput {
            snapshots: snaps,
            schedules: &d.rules,
            counts: &HashMap::new(),
            frozen_volumes: frozen,
            tz: policy.timezone,
            targeted: Some(&targeted),
            orphans: policy.orphans,
            caps: policy.caps,
            held: &Held::new(),
        },
        now,
    )
}

/// The destination's gauges after the run: its pending copies, and per schedule the DR staleness — over the
/// schedule's targeted volumes, the oldest newest-completed copy (a volume with no copy yet counts from its oldest
/// completed source snapshot of the schedule: that is how far back the destination cannot restore it).
fn record(run: &mut Run<'_>, d: &DestinationSurvey, copies: &[Copied]) {
    let pending = copies
        .iter()
        .filter(|c| c.snap.state == SnapState::Pending)
        .count();
    let mut oldest: BTreeMap<&str, Option<DateTime<Utc>>> =
        d.rules.iter().map(|r| (&*r.name, None)).collect();
    let newest_copy: HashMap<(&str, &str), DateTime<Utc>> = {
        let mut m: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
        for c in copies
            .iter()
            .filter(|c| c.snap.state == SnapState::Completed)
        {
            for s in c.snap.schedules.iter() {
                let e = m.entry((&*c.snap.volume_id, &**s)).or_insert(c.snap.slot);
                *e = (*e).max(c.snap.slot);
            }
        }
        m
    };
    let oldest_source: HashMap<(&str, &str), DateTime<Utc>> = {
        let mut m: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
        for s in run
            .survey
            .snapshots
            .iter()
            .filter(|s| s.state == SnapState::Completed && s.group == Group::Volume)
        {
            for name in s.schedules.iter() {
                let e = m.entry((&*s.volume_id, &**name)).or_insert(s.slot);
                *e = (*e).min(s.slot);
            }
        }
        m
    };
    for t in &run.survey.targets {
        let key = copy_key(&t.volume.id);
        for (schedule, worst) in oldest.iter_mut() {
            if !t.schedules.iter().any(|s| s == schedule) {
                continue;
            }
            let at = newest_copy
                .get(&(key.as_str(), *schedule))
                .or_else(|| oldest_source.get(&(t.volume.id.as_str(), *schedule)));
            if let Some(&at) = at {
                *worst = Some(worst.map_or(at, |w| w.min(at)));
            }
        }
    }
    let oldest: Vec<(String, Option<DateTime<Utc>>)> = oldest
        .into_iter()
        .map(|(s, at)| (s.to_string(), at))
        .collect();
    run.copies_estate(&d.region, pending, &oldest);
}

#[cfg(test)]
mod poll_tests;
#[cfg(test)]
mod tests;
