//! An in-memory EC2 region: instances, volumes and snapshots with the filter semantics snapwarden relies on, plus
//! fault injection (per-volume create errors, AMI-backed snapshots, failing describes) and per-operation call
//! counts. It backs `snapwarden demo` and the fast component tests; it does not model rate limits or latency
//! (the moto emulator and the benchmark cover those). `demo` and `simulate` only build a fleet (the demo's with one
//! failing volume), complete snapshots and set the clock; the knobs only tests turn (seeding history, injected
//! faults, limits, call counts) are compiled with the `testing` feature alone, which the crate's tests enable and a
//! release build does not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::op::Op;
use super::{
    CopySnapshot, CreateSnapshot, CreateSnapshots, Ec2, Filter, Instance, Page, Snapshot, Tags,
    Volume, VolumeResult, COPY_VOLUME_ID,
};
use crate::error::{Error, Result};
use crate::retention::SnapState;

pub const FAKE_ACCOUNT: &str = "123456789012";

struct State {
    instances: BTreeMap<String, Instance>,
    volumes: BTreeMap<String, Volume>,
    snapshots: BTreeMap<String, Snapshot>,
    next_id: u64,
    /// volume id -> error code returned by CreateSnapshot for that volume.
    create_faults: HashMap<String, String>,
    /// operation -> error code returned by every call of it.
    operation_faults: HashMap<Op, String>,
    /// snapshots that back an AMI: DeleteSnapshot answers InvalidSnapshot.InUse.
    in_use: HashSet<String>,
    calls: BTreeMap<Op, u64>,
    /// When set, snapshots are created with this StartTime instead of the wall clock.
    clock: Option<DateTime<Utc>>,
    /// When set, a pending snapshot leaves `pending` in the n-th DescribeSnapshots answer that includes it.
    complete_after: Option<u32>,
    /// The account's pending-snapshot limit, if the test gives one (see [`FakeEc2::set_max_pending_snapshots`]).
    max_pending: Option<usize>,
    /// Pending snapshot id -> DescribeSnapshots answers it has appeared in (for `complete_after`).
    described: HashMap<String, u32>,
    /// Volumes whose snapshots end in `error` instead of `completed` (with `complete_after`).
    error_volumes: HashSet<String>,
    /// Snapshots per DescribeSnapshots page.
    page_size: usize,
    /// Copies that may be pending in this (destination) region at once, if the test gives a limit.
    max_pending_copies: Option<usize>,
}

pub struct FakeEc2 {
    region: String,
    state: Mutex<State>,
    /// The other regions' fakes, by region, whose snapshots CopySnapshot reads (see [`FakeEc2::link_regions`]).
    /// Weak: regions that know each other would otherwise keep each other alive.
    peers: Mutex<BTreeMap<String, Weak<FakeEc2>>>,
}

impl FakeEc2 {
    pub fn new(region: impl Into<String>) -> Self {
        let state = State {
            instances: BTreeMap::new(),
            volumes: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            next_id: 0,
            create_faults: HashMap::new(),
            operation_faults: HashMap::new(),
            in_use: HashSet::new(),
            calls: BTreeMap::new(),
            clock: None,
            complete_after: None,
            max_pending: None,
            described: HashMap::new(),
            error_volumes: HashSet::new(),
            page_size: 1000,
            max_pending_copies: None,
        };
        FakeEc2 {
            region: region.into(),
            state: Mutex::new(state),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes each of `regions` know the others, as EC2's regions do: a CopySnapshot sent to one reads its source
    /// snapshot from the fake of `SourceRegion`. A fake told of no other region copies within its own only.
    pub fn link_regions(regions: &[Arc<FakeEc2>]) {
        for a in regions {
            let mut peers = a.peers.lock().expect("fake EC2 peers poisoned");
            for b in regions.iter().filter(|b| !Arc::ptr_eq(a, b)) {
                peers.insert(b.region.clone(), Arc::downgrade(b));
            }
        }
    }

    /// The state of snapshot `id` in `region` (this one or a linked one); None when that region has no such
    /// snapshot or is not known. The lock of the region is held only while looking.
    fn snapshot_state_in(&self, region: &str, id: &str) -> Option<SnapState> {
        if region == self.region {
            return self.state().snapshots.get(id).map(|s| s.state);
        }
        let peer = self
            .peers
            .lock()
            .expect("fake EC2 peers poisoned")
            .get(region)
            .and_then(Weak::upgrade)?;
        let state = peer.state().snapshots.get(id).map(|s| s.state);
        state
    }

    /// A limit on copies pending in this region, as EC2 has per destination region (20 by default): a copy that
    /// would pass it is refused with `ResourceLimitExceeded`. None (the default): no limit.
    #[cfg(any(test, feature = "testing"))]
    pub fn set_max_pending_copies(&self, cap: Option<usize>) {
        self.state().max_pending_copies = cap;
    }

    /// Snapshots per DescribeSnapshots page (at least 1): small pages let tests walk several.
    #[cfg(any(test, feature = "testing"))]
    pub fn set_page_size(&self, n: usize) {
        self.state().page_size = n.max(1);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake EC2 state poisoned")
    }

    fn next_id(state: &mut State, prefix: &str) -> String {
        state.next_id += 1;
        format!("{prefix}-{:017x}", state.next_id)
    }

    /// Adds an instance with one attached volume per `(device, volume_type)`; returns (instance id, volume ids).
    pub fn add_instance(
        &self,
        tags: &[(&str, &str)],
        devices: &[(&str, &str)],
    ) -> (String, Vec<String>) {
        let mut st = self.state();
        let id = Self::next_id(&mut st, "i");
        st.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                tags: to_tags(tags),
                // The first device is the boot volume, as on a launched instance.
                root_device: devices.first().map(|(d, _)| d.to_string()),
            },
        );
        let mut vols = Vec::new();
        for (device, volume_type) in devices {
            let vid = Self::next_id(&mut st, "vol");
            st.volumes.insert(
                vid.clone(),
                Volume {
                    id: vid.clone(),
                    tags: Tags::new(),
                    volume_type: volume_type.to_string(),
                    attachment: Some((id.clone(), device.to_string())),
                },
            );
            vols.push(vid);
        }
        (id, vols)
    }

    /// Adds a volume that is not attached to anything.
    pub fn add_volume(&self, tags: &[(&str, &str)]) -> String {
        let mut st = self.state();
        let vid = Self::next_id(&mut st, "vol");
        st.volumes.insert(
            vid.clone(),
            Volume {
                id: vid.clone(),
                tags: to_tags(tags),
                volume_type: "gp3".into(),
                attachment: None,
            },
        );
        vid
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn set_volume_tags(&self, volume_id: &str, tags: &[(&str, &str)]) {
        if let Some(v) = self.state().volumes.get_mut(volume_id) {
            v.tags = to_tags(tags);
        }
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn set_instance_tags(&self, instance_id: &str, tags: &[(&str, &str)]) {
        if let Some(i) = self.state().instances.get_mut(instance_id) {
            i.tags = to_tags(tags);
        }
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn remove_volume(&self, volume_id: &str) {
        self.state().volumes.remove(volume_id);
    }

    /// Inserts a snapshot as if created earlier (history seeding); returns its id.
    #[cfg(any(test, feature = "testing"))]
    pub fn seed_snapshot(
        &self,
        volume_id: &str,
        state: SnapState,
        owner: &str,
        tags: &[(&str, &str)],
    ) -> String {
        self.insert_snapshot(volume_id, state, owner, tags)
    }

    /// A pending snapshot of `volume_id` made by someone else in the account (an instance's own role, as the VSS
    /// document does): not one of this backend's calls. Returns its id.
    pub fn made_elsewhere(&self, volume_id: &str, tags: &[(&str, &str)]) -> String {
        self.insert_snapshot(volume_id, SnapState::Pending, FAKE_ACCOUNT, tags)
    }

    fn insert_snapshot(
        &self,
        volume_id: &str,
        state: SnapState,
        owner: &str,
        tags: &[(&str, &str)],
    ) -> String {
        let mut st = self.state();
        let id = Self::next_id(&mut st, "snap");
        let start_time = st.clock.unwrap_or_else(Utc::now);
        st.snapshots.insert(
            id.clone(),
            Snapshot {
                id: id.as_str().into(),
                volume_id: volume_id.into(),
                state,
                start_time,
                owner_id: owner.into(),
                description: "seeded".into(),
                tags: Arc::new(to_tags(tags)),
            },
        );
        id
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn set_snapshot_state(&self, snapshot_id: &str, state: SnapState) {
        if let Some(s) = self.state().snapshots.get_mut(snapshot_id) {
            s.state = state;
        }
    }

    /// Completes every pending snapshot (what EBS does in the background).
    pub fn complete_all(&self) {
        for s in self.state().snapshots.values_mut() {
            if s.state == SnapState::Pending {
                s.state = SnapState::Completed;
            }
        }
    }

    /// Models EBS finishing snapshots in the background: each pending snapshot turns `completed` (or `error` for
    /// a volume given to [`FakeEc2::error_snapshots_of`]) in the `n`-th DescribeSnapshots answer that includes it,
    /// so a completion poller sees it pending `n - 1` times. None (the default): snapshots stay pending until
    /// [`FakeEc2::complete_all`] or [`FakeEc2::set_snapshot_state`].
    #[cfg(any(test, feature = "testing"))]
    pub fn complete_after_describes(&self, n: Option<u32>) {
        self.state().complete_after = n;
    }

    /// An account limit on pending snapshots, as EC2 has: the fake reports it as its
    /// [`Ec2::max_pending_snapshots`] and refuses a create that would pass it with
    /// `ConcurrentSnapshotLimitExceeded`. None (the default): no limit.
    #[cfg(any(test, feature = "testing"))]
    pub fn set_max_pending_snapshots(&self, cap: Option<usize>) {
        self.state().max_pending = cap;
    }

    /// `ConcurrentSnapshotLimitExceeded` if `n` more pending snapshots would pass the account's limit. Counts every
    /// snapshot, so only tests that set a limit pay for it.
    fn check_pending(&self, st: &State, operation: Op, n: usize) -> Result<()> {
        let Some(cap) = st.max_pending else {
            return Ok(());
        };
        let pending = st
            .snapshots
            .values()
            .filter(|s| s.state == SnapState::Pending)
            .count();
        if pending + n > cap {
            return Err(self.api_error(operation, "ConcurrentSnapshotLimitExceeded"));
        }
        Ok(())
    }

    /// Snapshots of `volume_id` end in `error` when they leave `pending` (see `complete_after_describes`).
    #[cfg(any(test, feature = "testing"))]
    pub fn error_snapshots_of(&self, volume_id: &str) {
        self.state().error_volumes.insert(volume_id.into());
    }

    pub fn fail_create_for(&self, volume_id: &str, code: &str) {
        self.state()
            .create_faults
            .insert(volume_id.into(), code.into());
    }

    /// Every call of `operation` (its AWS name, e.g. "DeleteSnapshot") fails with `code`.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_operation(&self, operation: &str, code: &str) {
        let op = known(operation);
        self.state().operation_faults.insert(op, code.into());
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn clear_faults(&self) {
        let mut st = self.state();
        st.create_faults.clear();
        st.operation_faults.clear();
        st.error_volumes.clear();
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn mark_in_use(&self, snapshot_id: &str) {
        self.state().in_use.insert(snapshot_id.into());
    }

    pub fn set_clock(&self, now: DateTime<Utc>) {
        self.state().clock = Some(now);
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.state().snapshots.values().cloned().collect()
    }

    /// How many calls of `operation` (its AWS name) reached the fake.
    #[cfg(any(test, feature = "testing"))]
    pub fn calls(&self, operation: &str) -> u64 {
        let op = known(operation);
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    fn enter(&self, operation: Op) -> Result<std::sync::MutexGuard<'_, State>> {
        let mut st = self.state();
        *st.calls.entry(operation).or_default() += 1;
        if let Some(code) = st.operation_faults.get(&operation) {
            return Err(self.api_error(operation, code));
        }
        Ok(st)
    }

    fn api_error(&self, operation: Op, code: &str) -> Error {
        Error::api(
            operation,
            &self.region,
            code,
            "injected by the fake EC2 backend",
        )
    }
}

#[cfg(any(test, feature = "testing"))]
/// The operation a test names; a misspelt one would silently never fail or count.
fn known(operation: &str) -> Op {
    Op::from_name(operation).unwrap_or_else(|| panic!("fake EC2: no operation named {operation:?}"))
}

fn to_tags(tags: &[(&str, &str)]) -> Tags {
    tags.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Applies tag filters and the few attribute filters snapwarden sends; an unknown filter is a bug in the caller.
fn matches(
    filters: &[Filter],
    tags: &Tags,
    attribute: impl Fn(&str) -> Option<Vec<String>>,
) -> Result<bool> {
    for f in filters {
        let ok = match f.matches_tags(tags) {
            Some(ok) => ok,
            None => match attribute(&f.name) {
                Some(have) => have.iter().any(|h| f.values.contains(h)),
                None => {
                    return Err(Error::Other(format!(
                        "fake EC2: unsupported filter {}",
                        f.name
                    )))
                }
            },
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[async_trait]
impl Ec2 for FakeEc2 {
    fn region(&self) -> &str {
        &self.region
    }

    fn max_pending_snapshots(&self) -> Option<usize> {
        self.state().max_pending
    }

    fn dry_run(&self) -> bool {
        false
    }

    async fn account_id(&self) -> Result<String> {
        drop(self.enter(Op::GetCallerIdentity)?);
        Ok(FAKE_ACCOUNT.into())
    }

    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>> {
        let st = self.enter(Op::DescribeInstances)?;
        let mut out = Vec::new();
        for i in st.instances.values() {
            let attr = |name: &str| match name {
                "instance-state-name" => Some(vec!["running".to_string()]),
                "instance-id" => Some(vec![i.id.clone()]),
                _ => None,
            };
            if matches(filters, &i.tags, attr)? {
                out.push(i.clone());
            }
        }
        Ok(out)
    }

    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>> {
        let st = self.enter(Op::DescribeVolumes)?;
        let mut out = Vec::new();
        for v in st.volumes.values() {
            let attr = |name: &str| match name {
                "volume-id" => Some(vec![v.id.clone()]),
                "attachment.instance-id" => {
                    Some(v.attachment.iter().map(|(i, _)| i.clone()).collect())
                }
                "attachment.status" => Some(vec![if v.attachment.is_some() {
                    "attached"
                } else {
                    "detached"
                }
                .to_string()]),
                "status" => Some(vec![if v.attachment.is_some() {
                    "in-use"
                } else {
                    "available"
                }
                .to_string()]),
                _ => None,
            };
            if matches(filters, &v.tags, attr)? {
                out.push(v.clone());
            }
        }
        Ok(out)
    }

    /// Pages of [`FakeEc2::set_page_size`] snapshots (1,000, as EC2's `MaxResults`), in id order; the token is the
    /// last id of the page before.
    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>> {
        let mut guard = self.enter(Op::DescribeSnapshots)?;
        let st = &mut *guard;
        let from = match token {
            Some(t) => Bound::Excluded(t.to_string()),
            None => Bound::Unbounded,
        };
        let mut page = Page::default();
        for s in st.snapshots.range_mut((from, Bound::Unbounded)) {
            let s = s.1;
            let attr = |name: &str| match name {
                "snapshot-id" => Some(vec![s.id.to_string()]),
                "volume-id" => Some(vec![s.volume_id.to_string()]),
                "status" => Some(vec![s.state.as_str().to_string()]),
                _ => None,
            };
            // Like moto (and unlike EC2 with OwnerIds=self) the fake returns other accounts' snapshots too, so the
            // caller's own owner check is exercised.
            if !matches(filters, &s.tags, attr)? {
                continue;
            }
            if page.items.len() == st.page_size {
                page.next = page.items.last().map(|l: &Snapshot| l.id.to_string());
                break;
            }
            if let (Some(n), SnapState::Pending) = (st.complete_after, s.state) {
                let seen = st.described.entry(s.id.to_string()).or_default();
                *seen += 1;
                if *seen >= n {
                    s.state = if st.error_volumes.contains(&*s.volume_id) {
                        SnapState::Error
                    } else {
                        SnapState::Completed
                    };
                }
            }
            page.items.push(s.clone());
        }
        Ok(page)
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot> {
        let mut st = self.enter(Op::CreateSnapshot)?;
        if let Some(code) = st.create_faults.get(&request.volume_id) {
            return Err(self.api_error(Op::CreateSnapshot, code));
        }
        if !st.volumes.contains_key(&request.volume_id) {
            return Err(self.api_error(Op::CreateSnapshot, "InvalidVolume.NotFound"));
        }
        self.check_pending(&st, Op::CreateSnapshot, 1)?;
        let id = Self::next_id(&mut st, "snap");
        let snapshot = Snapshot {
            id: id.as_str().into(),
            volume_id: request.volume_id.as_str().into(),
            state: SnapState::Pending,
            start_time: st.clock.unwrap_or_else(Utc::now),
            owner_id: FAKE_ACCOUNT.into(),
            description: request.description.as_str().into(),
            tags: Arc::new(request.tags.clone()),
        };
        st.snapshots.insert(id, snapshot.clone());
        Ok(snapshot)
    }

    /// Every volume attached to the instance, tagged with the common tags only, as EC2 does. A volume with an
    /// injected create fault gets its own error instead of a snapshot (EC2 would fail the call or leave the volume
    /// out; the fake says why, so tests can tell); `fail_operation("CreateSnapshots", …)` fails the whole call.
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        let mut st = self.enter(Op::CreateSnapshots)?;
        if !st.instances.contains_key(&request.instance_id) {
            return Err(self.api_error(Op::CreateSnapshots, "InvalidInstanceID.NotFound"));
        }
        let attached: Vec<String> = st
            .volumes
            .values()
            .filter(|v| {
                v.attachment
                    .as_ref()
                    .is_some_and(|(i, _)| *i == request.instance_id)
            })
            .map(|v| v.id.clone())
            .collect();
        self.check_pending(&st, Op::CreateSnapshots, attached.len())?;
        let mut out = Vec::new();
        for volume in attached {
            if let Some(code) = st.create_faults.get(&volume) {
                let err = self.api_error(Op::CreateSnapshots, code);
                out.push((volume, Err(err)));
                continue;
            }
            let id = Self::next_id(&mut st, "snap");
            let snapshot = Snapshot {
                id: id.as_str().into(),
                volume_id: volume.as_str().into(),
                state: SnapState::Pending,
                start_time: st.clock.unwrap_or_else(Utc::now),
                owner_id: FAKE_ACCOUNT.into(),
                description: request.description.as_str().into(),
                tags: Arc::new(request.tags.clone()),
            };
            st.snapshots.insert(id, snapshot.clone());
            out.push((volume, Ok(snapshot)));
        }
        Ok(out)
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        let mut st = self.enter(Op::CreateTags)?;
        // EC2 checks every id before tagging any.
        if resource_ids.iter().any(|id| !st.snapshots.contains_key(id)) {
            return Err(self.api_error(Op::CreateTags, "InvalidSnapshot.NotFound"));
        }
        for id in resource_ids {
            if let Some(s) = st.snapshots.get_mut(id) {
                Arc::make_mut(&mut s.tags).extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        Ok(())
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        let mut st = self.enter(Op::DeleteSnapshot)?;
        if st.in_use.contains(snapshot_id) {
            return Err(self.api_error(Op::DeleteSnapshot, "InvalidSnapshot.InUse"));
        }
        match st.snapshots.remove(snapshot_id) {
            Some(_) => Ok(()),
            None => Err(self.api_error(Op::DeleteSnapshot, "InvalidSnapshot.NotFound")),
        }
    }

    /// A new pending snapshot in this region with EC2's placeholder volume id and only the requested tags (EC2
    /// copies none of the source's). The source must exist in its region and be completed: EC2 copies completed
    /// snapshots only. Completes like any other snapshot (`complete_all`, `complete_after_describes`; it ends in
    /// `error` if [`COPY_VOLUME_ID`] is given to `error_snapshots_of`). Encryption is not modelled.
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot> {
        // Looked up before this region's lock is taken: the source may be in this region.
        let source = self.snapshot_state_in(&request.source_region, &request.source_snapshot_id);
        let mut st = self.enter(Op::CopySnapshot)?;
        match source {
            None => return Err(self.api_error(Op::CopySnapshot, "InvalidSnapshot.NotFound")),
            Some(SnapState::Completed) => {}
            Some(_) => return Err(self.api_error(Op::CopySnapshot, "IncorrectState")),
        }
        if let Some(cap) = st.max_pending_copies {
            let pending = st
                .snapshots
                .values()
                .filter(|s| s.state == SnapState::Pending && *s.volume_id == *COPY_VOLUME_ID)
                .count();
            if pending >= cap {
                return Err(self.api_error(Op::CopySnapshot, "ResourceLimitExceeded"));
            }
        }
        let id = Self::next_id(&mut st, "snap");
        let copy = Snapshot {
            id: id.as_str().into(),
            volume_id: COPY_VOLUME_ID.into(),
            state: SnapState::Pending,
            start_time: st.clock.unwrap_or_else(Utc::now),
            owner_id: FAKE_ACCOUNT.into(),
            description: request.description.as_str().into(),
            tags: Arc::new(request.tags.clone()),
        };
        st.snapshots.insert(id, copy.clone());
        Ok(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_of(region: &str, id: &str) -> CopySnapshot {
        CopySnapshot {
            source_region: region.into(),
            source_snapshot_id: id.into(),
            description: "dr copy".into(),
            encrypted: false,
            kms_key_id: None,
            tags: to_tags(&[("snapwarden:source-volume", "vol-src")]),
        }
    }

    #[tokio::test]
    async fn a_copy_lands_pending_in_the_destination_from_a_completed_source_of_a_linked_region() {
        let (a, b) = (Arc::new(FakeEc2::new("r-a")), Arc::new(FakeEc2::new("r-b")));
        let vol = a.add_volume(&[]);
        let done = a.seed_snapshot(&vol, SnapState::Completed, FAKE_ACCOUNT, &[("k", "v")]);
        let pending = a.seed_snapshot(&vol, SnapState::Pending, FAKE_ACCOUNT, &[]);

        // Not linked yet: B knows no snapshot of region A.
        let err = b.copy_snapshot(&copy_of("r-a", &done)).await.unwrap_err();
        assert_eq!(err.code(), "InvalidSnapshot.NotFound");

        FakeEc2::link_regions(&[a.clone(), b.clone()]);
        let copy = b.copy_snapshot(&copy_of("r-a", &done)).await.unwrap();
        assert_eq!(
            (&*copy.volume_id, copy.state),
            (COPY_VOLUME_ID, SnapState::Pending)
        );
        assert_eq!(
            *copy.tags,
            to_tags(&[("snapwarden:source-volume", "vol-src")])
        );
        assert_eq!(b.snapshots(), vec![copy.clone()], "in B only");
        assert_eq!(a.snapshots().len(), 2);
        b.complete_all();
        assert_eq!(b.snapshots()[0].state, SnapState::Completed);

        let err = b
            .copy_snapshot(&copy_of("r-a", &pending))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "IncorrectState");
        let err = b
            .copy_snapshot(&copy_of("r-a", "snap-none"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "InvalidSnapshot.NotFound");
        // Within one region, as EC2 allows.
        a.copy_snapshot(&copy_of("r-a", &done)).await.unwrap();
        assert_eq!(b.calls("CopySnapshot"), 4);
    }

    #[tokio::test]
    async fn a_destination_at_its_copy_limit_refuses_with_resource_limit_exceeded() {
        let (a, b) = (Arc::new(FakeEc2::new("r-a")), Arc::new(FakeEc2::new("r-b")));
        FakeEc2::link_regions(&[a.clone(), b.clone()]);
        let vol = a.add_volume(&[]);
        let src = a.seed_snapshot(&vol, SnapState::Completed, FAKE_ACCOUNT, &[]);
        b.set_max_pending_copies(Some(2));
        // B's own pending snapshots are not copies: they do not count.
        b.seed_snapshot("vol-b", SnapState::Pending, FAKE_ACCOUNT, &[]);
        for _ in 0..2 {
            b.copy_snapshot(&copy_of("r-a", &src)).await.unwrap();
        }
        let err = b.copy_snapshot(&copy_of("r-a", &src)).await.unwrap_err();
        assert_eq!(err.code(), "ResourceLimitExceeded");
        assert!(err.is(crate::ec2::op::Code::CopyLimit));
        b.complete_all();
        b.copy_snapshot(&copy_of("r-a", &src)).await.unwrap();
    }
}
