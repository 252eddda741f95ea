//! The survey phase ([`phase`]; [`survey`] for `plan` and `simulate` too): what one region holds for one policy, read in one filtered, paginated sweep per resource type
//! (targets, then the policy's managed snapshots). Snapshots are digested page by page into compact [`Snap`]
//! records — tags parsed once, strings shared — so a sweep of hundreds of thousands of snapshots costs about a
//! hundred bytes each, not the kilobyte a snapshot with all its tags takes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::run::Run;
use super::{parse_count, FILTER_VALUES};
use crate::config::{Policy, ResourceKind};
use crate::ec2::{self, Ec2, Filter, Instance, Snapshot, Tags, Volume};
use crate::error::Error;
use crate::report::Problem;
use crate::retention::{Group, Interner, Snap};
use crate::schedule::parse_slot;

/// A volume to snapshot, with the instance it hangs off (instance targets).
#[derive(Debug, Clone)]
pub struct TargetVolume {
    pub volume: Volume,
    /// Shared by the instance's volumes: its tags can be kilobytes.
    pub(crate) instance: Option<Arc<Instance>>,
    /// Schedules of the policy that target this volume (all of them, firing or not).
    pub(crate) schedules: Vec<String>,
}

/// What one region holds for a policy.
#[derive(Debug, Default)]
pub struct Survey {
    pub targets: Vec<TargetVolume>,
    /// (volume, schedule) -> keep-last from the count tag, for live targets with a good value.
    pub(crate) counts: HashMap<(String, String), u32>,
    /// (volume, schedule) pairs whose target resource was seen live for a count-tag schedule (good value or not).
    pub(crate) seen: HashSet<(String, String)>,
    /// Bad count-tag values: reported, the resource skipped for that schedule.
    pub(crate) problems: Vec<(String, Problem)>,
    /// Managed snapshots of the policy owned by this account.
    pub snapshots: Vec<Snap>,
    /// (volume, schedule) -> (slot, count) of the newest snapshot carrying the schedule's count tag: the count a
    /// volume that is no longer targeted keeps (the tag is copied onto each snapshot).
    pub(crate) snapshot_counts: HashMap<(String, String), (DateTime<Utc>, u32)>,
    /// All tags of the snapshots of the slot the survey was taken for (see [`survey`]), by snapshot id: what a
    /// run compares with the tags they should have.
    pub(crate) slot_tags: HashMap<Arc<str>, Tags>,
    /// Shares volume ids and schedule lists between snapshots, and with the snapshots a run adds.
    pub(crate) interner: Interner,
    /// Each copy destination of the policy, as read for this region (`super::copy::survey`).
    pub(crate) copies: Vec<super::copy::DestinationSurvey>,
    /// Source snapshots a destination still wants copied: retention keeps them.
    pub(crate) held: crate::retention::Held,
}

impl Survey {
    /// A snapshot as the survey holds it: the slot from its slot tag (StartTime when absent), its schedules, and
    /// whether it is pinned.
    pub fn digest(&mut self, s: &Snapshot) -> Snap {
        digest(&mut self.interner, s)
    }
}

/// [`Survey::digest`] with the strings shared through `interner`.
pub(super) fn digest(interner: &mut Interner, s: &Snapshot) -> Snap {
    let (volume_id, group) = group_of(interner, s);
    Snap {
        id: Arc::clone(&s.id),
        volume_id,
        slot: slot_of(s),
        schedules: interner.schedules(s.tags.get(ec2::TAG_SCHEDULE).map_or("", String::as_str)),
        state: s.state,
        pinned: s.tags.contains_key(ec2::TAG_KEEP),
        app_consistent: s
            .tags
            .get(ec2::TAG_APP_CONSISTENT)
            .is_some_and(|v| v.trim() == "true"),
        group,
        started: Snap::started_secs(s.start_time),
    }
}

/// The key retention groups a snapshot by. A copy's volume id is EC2's placeholder, the same for every copy, so
/// grouping by it would judge the copies of every volume as one: a copy is grouped by the source its tags record,
/// under a key of its own so it is never judged with (or as a duplicate of) the source volume's own snapshots.
/// A copy that records no source is its own group and is kept ([`Group::Unplaced`]).
fn group_of(interner: &mut Interner, s: &Snapshot) -> (Arc<str>, Group) {
    if *s.volume_id != *ec2::COPY_VOLUME_ID {
        return (interner.str(&s.volume_id), Group::Volume);
    }
    let tag = |k: &str| s.tags.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(volume) = tag(ec2::TAG_SOURCE_VOLUME) {
        return (interner.str(&copy_key(volume)), Group::Copy);
    }
    if let (Some(instance), Some(device)) = (tag(ec2::TAG_INSTANCE), tag(ec2::TAG_DEVICE)) {
        return (interner.str(&copy_key_at(instance, device)), Group::Copy);
    }
    // Unique to the snapshot: not worth interning.
    let key = format!("{}:{}", ec2::COPY_VOLUME_ID, s.id);
    (Arc::from(key), Group::Unplaced)
}

/// The group key of copies of `volume`: it names the volume, as plans and logs show it.
pub(crate) fn copy_key(volume: &str) -> String {
    format!("copy-of:{volume}")
}

/// The group key of copies recorded by instance and device (snapwarden's own tags).
pub(crate) fn copy_key_at(instance: &str, device: &str) -> String {
    format!("copy-of:{instance}:{device}")
}

/// The slot time of a snapshot: its slot tag, else when it started.
pub fn slot_of(s: &Snapshot) -> DateTime<Utc> {
    s.tags
        .get(ec2::TAG_SLOT)
        .and_then(|t| parse_slot(t))
        .unwrap_or(s.start_time)
}

fn state_filter() -> Filter {
    Filter::new(
        "instance-state-name",
        ["pending", "running", "stopping", "stopped"]
            .map(String::from)
            .to_vec(),
    )
}

/// The survey phase: the region as the run starts from, and the bad count-tag values of the firing schedules'
/// targets reported. False when the region could not be read: the run creates and deletes nothing.
pub(super) async fn phase(run: &mut Run<'_>) -> bool {
    let spec = run.spec;
    match survey(run.ec2, spec.policy, spec.account_id, Some(spec.slot)).await {
        Ok(s) => run.survey = s,
        Err(e) => {
            run.survey_failed(&e);
            return false;
        }
    }
    for (schedule, p) in std::mem::take(&mut run.survey.problems) {
        if spec.firing.contains(&schedule) {
            run.target_skipped(&schedule, p);
        }
    }
    true
}

/// Reads targets and the policy's managed snapshots. Any describe failure fails the survey: acting on a
/// half-known state could duplicate snapshots or delete the wrong ones. `slot`: keep the full tags of that slot's
/// snapshots ([`Survey::slot_tags`]).
pub async fn survey(
    ec2: &dyn Ec2,
    policy: &Policy,
    account_id: &str,
    slot: Option<DateTime<Utc>>,
) -> Result<Survey, Error> {
    let mut s = Survey::default();
    for (volume, instance) in resources(ec2, policy).await? {
        s.add_target(policy, volume, instance);
    }
    // One bad tag value on an instance is reported once per schedule, not once per volume.
    s.problems
        .sort_by(|a, b| (&a.0, &a.1.resource).cmp(&(&b.0, &b.1.resource)));
    s.problems
        .dedup_by(|a, b| a.0 == b.0 && a.1.resource == b.1.resource);
    s.sweep_snapshots(ec2, policy, account_id, slot).await?;
    // The vector grew by doubling: give back what is spare but room for one new snapshot per target, so the run's
    // additions (the expected plan's placeholders, then this slot's snapshots) do not double it again.
    s.snapshots.shrink_to(s.snapshots.len() + s.targets.len());
    Ok(s)
}

/// The policy's target tags as filters, and the count tags' keys when every schedule is count-tag driven.
fn target_filters(policy: &Policy) -> Vec<Filter> {
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
    filters
}

/// The policy's target volumes, each with its instance under instance targets (volumes of instances not found
/// left out).
async fn resources(
    ec2: &dyn Ec2,
    policy: &Policy,
) -> Result<Vec<(Volume, Option<Arc<Instance>>)>, Error> {
    let mut filters = target_filters(policy);
    match policy.target.resource {
        ResourceKind::Volume => {
            let volumes = ec2.describe_volumes(&filters).await?;
            return Ok(volumes.into_iter().map(|v| (v, None)).collect());
        }
        ResourceKind::Instance => filters.push(state_filter()),
    }
    let instances: HashMap<String, Arc<Instance>> = ec2
        .describe_instances(&filters)
        .await?
        .into_iter()
        .map(|i| (i.id.clone(), Arc::new(i)))
        .collect();
    let mut out = Vec::new();
    for v in attached_volumes(ec2, &instances).await? {
        let inst = v
            .attachment
            .as_ref()
            .and_then(|(i, _)| instances.get(i))
            .cloned();
        if inst.as_ref().is_some_and(|i| !excluded_boot(policy, &v, i)) {
            out.push((v, inst));
        }
    }
    Ok(out)
}

/// A boot volume the VSS document leaves out (`exclude-boot-volume`): not a target of the policy at all, so it is
/// neither snapshotted nor reported unprotected, and its earlier snapshots follow the orphan rule.
fn excluded_boot(policy: &Policy, v: &Volume, i: &Instance) -> bool {
    let excludes = policy.vss.as_ref().is_some_and(|v| v.exclude_boot_volume);
    excludes
        && matches!(&v.attachment, Some((_, device)) if i.root_device.as_deref() == Some(device.as_str()))
}

impl Survey {
    /// Takes `volume` as a target of the schedules whose count tag (on the instance under instance targets) it
    /// carries with a good value, or that have none; a bad value is a problem of that schedule.
    fn add_target(&mut self, policy: &Policy, volume: Volume, instance: Option<Arc<Instance>>) {
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
            self.seen.insert((volume.id.clone(), sched.name.clone()));
            match parse_count(value) {
                Ok(n) => {
                    self.counts
                        .insert((volume.id.clone(), sched.name.clone()), n);
                    schedules.push(sched.name.clone());
                }
                Err(why) => self.problems.push((
                    sched.name.clone(),
                    Problem {
                        resource: source_id.clone(),
                        operation: "target",
                        code: "bad-count-tag".into(),
                        message: format!("tag {tag}: {why}"),
                        aws: None,
                    },
                )),
            }
        }
        if !schedules.is_empty() {
            self.targets.push(TargetVolume {
                volume,
                instance,
                schedules,
            });
        }
    }

    /// Reads the policy's managed snapshots owned by `account_id`, digested page by page, with the newest count
    /// tag of each (volume, schedule) ([`Survey::snapshot_counts`]) and the full tags of `slot`'s snapshots.
    async fn sweep_snapshots(
        &mut self,
        ec2: &dyn Ec2,
        policy: &Policy,
        account_id: &str,
        slot: Option<DateTime<Utc>>,
    ) -> Result<(), Error> {
        let managed = [
            Filter::tag(ec2::TAG_MANAGED, "true"),
            Filter::tag(ec2::TAG_POLICY, &policy.name),
        ];
        let count_tags: Vec<(&str, &str)> = policy
            .schedules
            .iter()
            .filter_map(|sc| Some((sc.name.as_str(), sc.count_tag.as_deref()?)))
            .collect();
        // (interned volume id, index into `count_tags`) -> newest (slot, count): keyed without copying strings,
        // since every snapshot of a count-tag schedule passes here on every run.
        let mut newest_counts: rustc_hash::FxHashMap<(Arc<str>, usize), (DateTime<Utc>, u32)> =
            Default::default();
        ec2::for_each_snapshot(ec2, &managed, |page| {
            // OwnerIds=self already restricts this on EC2; checked again because not every endpoint honours it.
            for snapshot in page.iter().filter(|snap| *snap.owner_id == *account_id) {
                let snap = self.digest(snapshot);
                for (i, &(schedule, tag)) in count_tags.iter().enumerate() {
                    if !snap.schedules.iter().any(|n| &**n == schedule) {
                        continue;
                    }
                    if let Some(n) = snapshot.tags.get(tag).and_then(|v| parse_count(v).ok()) {
                        let key = (Arc::clone(&snap.volume_id), i);
                        let e = newest_counts.entry(key).or_insert((snap.slot, n));
                        if snap.slot > e.0 {
                            *e = (snap.slot, n);
                        }
                    }
                }
                if slot == Some(snap.slot) {
                    self.slot_tags
                        .insert(Arc::clone(&snap.id), Tags::clone(&snapshot.tags));
                }
                self.snapshots.push(snap);
            }
        })
        .await?;
        self.snapshot_counts = newest_counts
            .into_iter()
            .map(|((volume, i), e)| ((volume.to_string(), count_tags[i].0.to_string()), e))
            .collect();
        Ok(())
    }
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
    instances: &HashMap<String, Arc<Instance>>,
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
