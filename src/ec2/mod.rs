//! What snapwarden needs from EC2, as a small trait over plain types, plus the decorators every backend is wrapped
//! in: [`pace::Paced`] (rate limits and retries, outermost), [`Instrumented`] (concurrency bound, request metrics),
//! [`stop::Guarded`] (innermost: logs every mutating call's outcome, refuses new ones at shutdown) and [`DryRun`]
//! (records mutations instead of doing them, so a dry run walks exactly the code path of a real one). Backends:
//! [`sdk::SdkEc2`] (aws-sdk-ec2) and [`fake::FakeEc2`] (in memory, for tests and `demo`). This module knows nothing
//! of policies or retention.

pub mod assume;
pub mod fake;
#[cfg(any(test, feature = "testing"))]
pub mod hooked;
pub mod op;
pub mod pace;
pub mod sdk;
pub(crate) mod stop;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::retention::SnapState;
use op::Op;

pub type Tags = BTreeMap<String, String>;

/// Tags snapwarden writes; `TAG_MANAGED` is the one deletion depends on.
pub const TAG_MANAGED: &str = "snapwarden:managed";
pub const TAG_POLICY: &str = "snapwarden:policy";
pub const TAG_SCHEDULE: &str = "snapwarden:schedule";
pub const TAG_SLOT: &str = "snapwarden:slot";
pub const TAG_INSTANCE: &str = "snapwarden:instance-id";
pub const TAG_DEVICE: &str = "snapwarden:device";
/// Any value pins a snapshot: retention never deletes it.
pub const TAG_KEEP: &str = "snapwarden:keep";
/// On every snapshot of a policy with VSS or scripts: `true` when it was taken application-consistent (VSS, or
/// while the pre script held the instance still), `false` for a crash-consistent fallback.
pub const TAG_APP_CONSISTENT: &str = "snapwarden:app-consistent";
/// The volume a copy was made from, set on every disaster-recovery copy at creation: a copy's own volume id names
/// no volume, so this is what its retention groups it by.
pub(crate) const TAG_SOURCE_VOLUME: &str = "snapwarden:source-volume";
/// The snapshot a copy was made from: what makes a copy idempotent (a source with a copy is not copied again).
pub(crate) const TAG_SOURCE_SNAPSHOT: &str = "snapwarden:source-snapshot";
/// The region a copy was made from: a destination holds copies of every region of the policy, and each run
/// reads only its own region's.
pub(crate) const TAG_SOURCE_REGION: &str = "snapwarden:source-region";
/// The volume id EC2 reports for every snapshot made by CopySnapshot: a placeholder shared by all copies.
pub const COPY_VOLUME_ID: &str = "vol-ffffffff";

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub(crate) id: String,
    pub(crate) tags: Tags,
    /// The root device name (`/dev/xvda`, `/dev/sda1`): which attached volume is the boot volume.
    pub(crate) root_device: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub id: String,
    pub(crate) tags: Tags,
    pub(crate) volume_type: String,
    /// (instance id, device name) when attached.
    pub(crate) attachment: Option<(String, String)>,
}

/// The strings are shared (`Arc<str>`) for the same reason as the tags, and so that a survey's digest of a snapshot
/// shares its id instead of copying it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: Arc<str>,
    pub volume_id: Arc<str>,
    pub state: SnapState,
    pub start_time: DateTime<Utc>,
    pub owner_id: Arc<str>,
    pub description: Arc<str>,
    /// Shared: a snapshot's tags are read far more often than written, and the in-memory backend hands out a
    /// copy of every snapshot it lists (`Arc::make_mut` to change them).
    pub tags: Arc<Tags>,
}

/// One page of a paginated describe: what EC2 returned and the token of the next page (None: this was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub(crate) next: Option<String>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            next: None,
        }
    }
}

/// An EC2 describe filter (`tag:Name`, `tag-key`, `attachment.instance-id`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub(crate) name: String,
    pub(crate) values: Vec<String>,
}

impl Filter {
    pub(crate) fn new(name: impl Into<String>, values: Vec<String>) -> Self {
        Filter {
            name: name.into(),
            values,
        }
    }

    /// `value == "*"` means "the tag is present with any value".
    pub fn tag(key: &str, value: &str) -> Self {
        if value == "*" {
            Filter::new("tag-key", vec![key.to_string()])
        } else {
            Filter::new(format!("tag:{key}"), vec![value.to_string()])
        }
    }

    /// Whether `tags` satisfy a tag filter; other filters are the backend's business.
    pub(crate) fn matches_tags(&self, tags: &Tags) -> Option<bool> {
        if self.name == "tag-key" {
            return Some(self.values.iter().any(|k| tags.contains_key(k)));
        }
        let key = self.name.strip_prefix("tag:")?;
        Some(
            tags.get(key)
                .is_some_and(|v| self.values.iter().any(|want| want == v)),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateSnapshot {
    pub volume_id: String,
    pub description: String,
    pub tags: Tags,
}

/// One CreateSnapshots call: every EBS volume attached to `instance_id` (the boot volume included), captured at one
/// instant, so the snapshots are crash-consistent across the instance's volumes. EC2 takes up to 40 volumes.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSnapshots {
    pub(crate) instance_id: String,
    /// One description for every snapshot of the call (CreateSnapshots takes one).
    pub(crate) description: String,
    /// Tags every snapshot gets at creation (TagSpecifications): at least everything idempotency depends on.
    pub(crate) tags: Tags,
    /// The volumes the caller expects to be captured, each with the tags its snapshot should carry beyond `tags`
    /// (device, the volume's own tags). CreateSnapshots cannot set tags per volume; the caller adds whatever a
    /// returned snapshot lacks with CreateTags. A backend that snapshots one volume at a time sets them at once.
    pub(crate) volumes: Vec<(String, Tags)>,
}

impl CreateSnapshots {
    /// The call as one CreateSnapshot per volume, each with every tag its snapshot should end up with: what a
    /// backend that snapshots one volume at a time sends.
    pub(crate) fn per_volume(&self) -> impl Iterator<Item = CreateSnapshot> + '_ {
        self.volumes.iter().map(|(volume, extra)| {
            let mut tags = self.tags.clone();
            tags.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            CreateSnapshot {
                volume_id: volume.clone(),
                description: self.description.clone(),
                tags,
            }
        })
    }
}

/// One CopySnapshot call, sent to the backend of the destination region: a copy of `source_snapshot_id` (in
/// `source_region`) made there, tagged at creation. The copy is a new snapshot with an id of its own and EC2's
/// placeholder [`COPY_VOLUME_ID`] as its volume; what it was copied from is known by its tags only.
#[derive(Debug, Clone, PartialEq)]
pub struct CopySnapshot {
    pub source_region: String,
    pub source_snapshot_id: String,
    pub description: String,
    /// Encrypt the copy. false leaves it as the source is (a copy of an encrypted snapshot stays encrypted):
    /// EC2 refuses `Encrypted=false`, so false is not sent.
    pub encrypted: bool,
    /// The KMS key to encrypt the copy with, in the destination region; only with `encrypted` (EC2 refuses a key
    /// without it). None: the account's default EBS key there.
    pub kms_key_id: Option<String>,
    /// Tags the copy gets at creation (TagSpecifications); EC2 copies none of the source's.
    pub tags: Tags,
}

/// The outcome of one volume of a [`CreateSnapshots`] call.
pub(crate) type VolumeResult = (String, Result<Snapshot>);

/// The EC2 operations snapwarden uses, one region per value. Describes are filtered and fully paginated by the
/// implementation; snapshot describes are always restricted to snapshots the account owns. A new method is also
/// forwarded by each decorator here and by the test decorator `hooked::Hooked`.
#[async_trait]
pub trait Ec2: Send + Sync {
    fn region(&self) -> &str;
    /// The account-wide cap on pending snapshots this backend paces creates under ([`pace::Paced`] knows it);
    /// None: only EC2's per-volume limits apply.
    fn max_pending_snapshots(&self) -> Option<usize> {
        None
    }
    /// Whether calls that change anything only pretend to ([`DryRun`]): the run then reports itself as a dry run,
    /// leaves the metrics alone and does not wait for snapshots that will never exist. No default: a decorator
    /// that forgot to forward it would turn a dry run into one that waits for and counts what it never made.
    fn dry_run(&self) -> bool;
    /// The account the credentials belong to; snapshots owned by anyone else are never deletion candidates.
    async fn account_id(&self) -> Result<String>;
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>>;
    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>>;
    /// One page (up to 1,000) of the account's snapshots matching `filters`, from `token` (None: the first page).
    /// Paged, unlike the other describes, because a sweep can hold hundreds of thousands of snapshots: the caller
    /// digests each page before asking for the next, and each page is paced and counted as the request it is.
    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>>;
    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot>;
    /// Snapshots the volumes of one instance. `Err`: the call failed as a whole (nothing was created, or — after
    /// a 5xx or a broken connection — it cannot be known). `Ok`: one entry per snapshot EC2 made, which may include a
    /// volume attached since the caller looked and may lack one the caller expected (a failure of that volume).
    ///
    /// The default is for backends that snapshot one volume at a time (test doubles): one [`Ec2::create_snapshot`]
    /// per expected volume, tags and all, each with its own outcome. Same snapshots and tags, one instant per
    /// volume instead of one per instance; every decorator and backend that can do better forwards it.
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        Ok(create_each(self, request).await)
    }
    /// Adds (or overwrites) `tags` on every resource of `resource_ids` (EC2 takes many ids per call). The default
    /// refuses: only a backend that creates snapshots without all their tags needs it.
    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        let _ = (resource_ids, tags);
        Err(crate::error::Error::Other(format!(
            "CreateTags is not supported by the backend of region {}",
            self.region()
        )))
    }
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()>;
    /// Copies a snapshot of another region (or this one) into this backend's region: the new copy, pending, as
    /// this region sees it. No default: every backend and decorator says what a copy is to it.
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot>;
}

/// A [`CreateSnapshots`] as one [`Ec2::create_snapshot`] per expected volume, tags and all: the answer of a backend
/// that snapshots one volume at a time (the trait's default, and `hooked::Hooked::one_volume_at_a_time`).
pub(crate) async fn create_each<E: Ec2 + ?Sized>(
    ec2: &E,
    request: &CreateSnapshots,
) -> Vec<VolumeResult> {
    let calls = request.per_volume().map(|single| async move {
        let answer = ec2.create_snapshot(&single).await;
        (single.volume_id, answer)
    });
    futures::future::join_all(calls).await
}

/// Walks every page of a snapshot describe, handing each page's snapshots to `each` before asking for the next.
pub(crate) async fn for_each_snapshot(
    ec2: &dyn Ec2,
    filters: &[Filter],
    mut each: impl FnMut(Vec<Snapshot>) + Send,
) -> Result<()> {
    let mut token: Option<String> = None;
    loop {
        let page = ec2.describe_snapshots(filters, token.as_deref()).await?;
        each(page.items);
        match page.next {
            // An empty or repeated token would loop forever on a misbehaving endpoint.
            Some(next) if !next.is_empty() && Some(&next) != token.as_ref() => token = Some(next),
            _ => return Ok(()),
        }
    }
}

/// Every snapshot a describe matches, all pages: for small answers (completion polls, tests).
pub async fn all_snapshots(ec2: &dyn Ec2, filters: &[Filter]) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    for_each_snapshot(ec2, filters, |page| out.extend(page)).await?;
    Ok(out)
}

/// Bounds in-flight calls (shared across all runs of the process) and records every call's outcome.
pub struct Instrumented {
    inner: Arc<dyn Ec2>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Ec2>, permits: Arc<Semaphore>, metrics: Arc<Metrics>) -> Self {
        Instrumented {
            inner,
            permits,
            metrics,
        }
    }

    async fn call<T, F>(&self, operation: Op, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        // The semaphore is never closed, so acquire cannot fail.
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("AWS call semaphore closed");
        let result = fut.await;
        // A call refused at shutdown never reached AWS.
        if !matches!(result, Err(crate::error::Error::Stopped { .. })) {
            self.metrics.aws_request(operation, result.as_ref().err());
        }
        result
    }
}

#[async_trait]
impl Ec2 for Instrumented {
    fn region(&self) -> &str {
        self.inner.region()
    }
    fn max_pending_snapshots(&self) -> Option<usize> {
        self.inner.max_pending_snapshots()
    }
    fn dry_run(&self) -> bool {
        self.inner.dry_run()
    }
    async fn account_id(&self) -> Result<String> {
        self.call(Op::GetCallerIdentity, self.inner.account_id())
            .await
    }
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>> {
        self.call(
            Op::DescribeInstances,
            self.inner.describe_instances(filters),
        )
        .await
    }
    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>> {
        self.call(Op::DescribeVolumes, self.inner.describe_volumes(filters))
            .await
    }
    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>> {
        self.call(
            Op::DescribeSnapshots,
            self.inner.describe_snapshots(filters, token),
        )
        .await
    }
    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot> {
        self.call(Op::CreateSnapshot, self.inner.create_snapshot(request))
            .await
    }
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        self.call(Op::CreateSnapshots, self.inner.create_snapshots(request))
            .await
    }
    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        self.call(Op::CreateTags, self.inner.create_tags(resource_ids, tags))
            .await
    }
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.call(Op::DeleteSnapshot, self.inner.delete_snapshot(snapshot_id))
            .await
    }
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot> {
        self.call(Op::CopySnapshot, self.inner.copy_snapshot(request))
            .await
    }
}

/// What a dry run would have done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DryRunLog {
    /// One entry per volume, also for a CreateSnapshots call (its common and per-volume tags merged).
    pub created: Vec<CreateSnapshot>,
    /// (resource ids, tags) per CreateTags call.
    pub tagged: Vec<(Vec<String>, Tags)>,
    pub deleted: Vec<String>,
    /// One entry per CopySnapshot this region (the destination) would have been sent.
    pub copied: Vec<CopySnapshot>,
}

/// Reads through to the real backend and records mutations instead of performing them.
pub struct DryRun {
    inner: Arc<dyn Ec2>,
    log: Mutex<DryRunLog>,
}

impl DryRun {
    pub fn new(inner: Arc<dyn Ec2>) -> Self {
        DryRun {
            inner,
            log: Mutex::new(DryRunLog::default()),
        }
    }

    pub fn log(&self) -> DryRunLog {
        self.log.lock().expect("dry-run log poisoned").clone()
    }

    /// A pending placeholder: retention treats it like a snapshot that is being made, as it would for real.
    fn placeholder(log: &mut DryRunLog, request: CreateSnapshot) -> Snapshot {
        log.created.push(request.clone());
        Snapshot {
            id: format!("snap-dryrun-{}", log.created.len()).into(),
            volume_id: request.volume_id.into(),
            state: SnapState::Pending,
            start_time: Utc::now(),
            owner_id: "".into(),
            description: request.description.into(),
            tags: Arc::new(request.tags),
        }
    }
}

#[async_trait]
impl Ec2 for DryRun {
    fn region(&self) -> &str {
        self.inner.region()
    }
    fn max_pending_snapshots(&self) -> Option<usize> {
        self.inner.max_pending_snapshots()
    }
    fn dry_run(&self) -> bool {
        true
    }
    async fn account_id(&self) -> Result<String> {
        self.inner.account_id().await
    }
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>> {
        self.inner.describe_instances(filters).await
    }
    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>> {
        self.inner.describe_volumes(filters).await
    }
    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>> {
        self.inner.describe_snapshots(filters, token).await
    }
    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot> {
        let mut log = self.log.lock().expect("dry-run log poisoned");
        Ok(Self::placeholder(&mut log, request.clone()))
    }
    /// Each expected volume fully tagged, as a real call followed by the worker's CreateTags would leave it.
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        let mut log = self.log.lock().expect("dry-run log poisoned");
        Ok(request
            .per_volume()
            .map(|single| {
                (
                    single.volume_id.clone(),
                    Ok(Self::placeholder(&mut log, single)),
                )
            })
            .collect())
    }
    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        self.log
            .lock()
            .expect("dry-run log poisoned")
            .tagged
            .push((resource_ids.to_vec(), tags.clone()));
        Ok(())
    }
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.log
            .lock()
            .expect("dry-run log poisoned")
            .deleted
            .push(snapshot_id.to_string());
        Ok(())
    }
    /// A pending placeholder copy, like a dry-run create's: the run goes on as it would after a real copy.
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot> {
        let mut log = self.log.lock().expect("dry-run log poisoned");
        log.copied.push(request.clone());
        Ok(Snapshot {
            id: format!("snap-dryrun-copy-{}", log.copied.len()).into(),
            volume_id: COPY_VOLUME_ID.into(),
            state: SnapState::Pending,
            start_time: Utc::now(),
            owner_id: "".into(),
            description: request.description.as_str().into(),
            tags: Arc::new(request.tags.clone()),
        })
    }
}

/// User tags worth copying onto a snapshot: never `aws:*` (reserved, CreateSnapshot rejects them) and never our
/// own, which are set explicitly.
pub(crate) fn copyable_tags(tags: &Tags) -> impl Iterator<Item = (&String, &String)> {
    tags.iter()
        .filter(|(k, _)| !k.starts_with("aws:") && !k.starts_with("snapwarden:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::fake::FakeEc2;

    #[tokio::test]
    async fn a_dry_run_copy_records_what_it_would_copy_and_sends_nothing() {
        let fake = Arc::new(FakeEc2::new("r-b"));
        let dry = DryRun::new(fake.clone());
        let request = CopySnapshot {
            source_region: "r-a".into(),
            source_snapshot_id: "snap-src".into(),
            description: "dr".into(),
            encrypted: true,
            kms_key_id: Some("alias/dr".into()),
            tags: Tags::from([(TAG_SOURCE_VOLUME.to_string(), "vol-1".to_string())]),
        };
        let copy = dry.copy_snapshot(&request).await.unwrap();
        assert_eq!(
            (&*copy.volume_id, copy.state),
            (COPY_VOLUME_ID, SnapState::Pending)
        );
        assert_eq!(*copy.tags, request.tags);
        assert_eq!(dry.log().copied, vec![request]);
        assert_eq!(fake.calls("CopySnapshot"), 0);
        assert!(fake.snapshots().is_empty());
    }
}
