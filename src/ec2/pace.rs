//! Pacing of EC2 calls under AWS's rate limits, and EC2's pending-snapshot limits as data. [`Paced`] is an
//! [`Ec2`] decorator shared by every run of the process (one per region: AWS's token buckets are per account per
//! region) that takes a token from a client-side bucket per API group before each call, keeps the per-volume gap
//! between CreateSnapshot calls, and retries what AWS says it did not do: throttling and transient server errors
//! with exponential backoff and full jitter, `SnapshotCreationPerVolumeRateExceeded` after the per-volume gap.
//! [`pending_deferrals`] is the pure rule the worker applies before creating: which volumes to defer because too
//! many of their (or the account's) snapshots are still pending.
//! The buckets, backoff and gaps themselves are a [`Pacer`]; `ssm::PacedSsm` paces SSM's calls with one of its
//! own, in SSM's bucket ([`Group::Ssm`]) under the same retry rules.
//!
//! Who retries: `Paced` (and, for SSM, `ssm::PacedSsm`), and nothing else. The daemon builds the EC2/STS clients
//! with the SDK's retries disabled (`daemon::aws_regions`), because an SDK retry is a request the buckets never
//! saw (a throttled burst would be answered by more requests) and a budget inside another budget makes "how long
//! until a run gives up" two numbers instead of one. Every attempt goes through [`super::Instrumented`] below this
//! layer, so `snapwarden_aws_requests_total` and `snapwarden_aws_throttles_total` count attempts, i.e. what AWS
//! saw.
//!
//! What is not retried here: a CreateSnapshot that failed with anything but throttling or the per-volume rate —
//! CreateSnapshot has no client token, so after a 5xx or a broken connection the snapshot may exist, and a retry
//! could duplicate it; the volume fails for this run and the next run finds the slot's snapshot by its tags or
//! makes it. CopySnapshot is treated alike (no client token either; it spends [`Group::Mutating`] and keeps no
//! per-volume gap). `ConcurrentSnapshotLimitExceeded` and a copy's `ResourceLimitExceeded` are returned as is: the
//! caller defers the volume or the copy. Errors that need a
//! person (access denied, bad parameters) are returned at once.
//!
//! Limits of the model: describes are paced per call, not per page, so a sweep of more than 1,000 objects spends
//! one token for several requests (a handful per sweep against a burst of 100); a describe throttled mid-way is
//! retried from its first page.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::op::{Op, RetryAfter};
use super::{
    CopySnapshot, CreateSnapshot, CreateSnapshots, Ec2, Filter, Instance, Page, Snapshot, Tags,
    Volume, VolumeResult,
};
use crate::error::Result;
use crate::retention::{Snap, SnapState};

/// A token bucket over time given as a value: full at creation, refilled continuously.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    pub capacity: f64,
    pub refill_per_sec: f64,
    pub(crate) tokens: f64,
    pub(crate) last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: f64, refill_per_sec: f64, now: Instant) -> Self {
        TokenBucket {
            capacity,
            refill_per_sec,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for(1.0 - self.tokens))
        }
    }

    /// Takes a token now even if the bucket is empty (going into debt) and returns when it may be used. Waiters
    /// queue in order instead of all waking at the same refill and racing for one token.
    pub(crate) fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            self.wait_for(-self.tokens)
        }
    }

    /// AWS said the account's bucket is empty: whatever this one holds is not really there.
    pub(crate) fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }

    fn wait_for(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(tokens / self.refill_per_sec)
    }
}

/// The API rate-limit groups snapwarden calls into (EC2's four, and SSM's); [`Op::group`] says which is whose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// CreateSnapshot, CreateSnapshots.
    Create,
    /// DeleteSnapshot.
    Delete,
    /// CreateTags (and DeleteTags, which snapwarden does not call).
    Tags,
    /// DescribeInstances, DescribeVolumes, DescribeSnapshots with a filter or pagination (always, here).
    Describe,
    /// SendCommand, ListCommandInvocations: SSM is another service, metered apart from EC2.
    Ssm,
    /// CopySnapshot: EC2's general bucket for mutating actions that have no bucket of their own.
    Mutating,
}

impl Group {
    pub const ALL: [Group; 6] = [
        Group::Create,
        Group::Delete,
        Group::Tags,
        Group::Describe,
        Group::Ssm,
        Group::Mutating,
    ];

    /// AWS's published bucket for the group, per account per region: (burst, refill per second).
    pub fn aws_bucket(self) -> (f64, f64) {
        match self {
            Group::Create => (100.0, 5.0),
            Group::Delete => (100.0, 5.0),
            Group::Tags => (100.0, 10.0),
            Group::Describe => (100.0, 20.0),
            Group::Mutating => (50.0, 5.0),
            // AWS publishes no figure for Run Command's API (neither the SSM quotas page nor the API reference
            // gives one for SendCommand or ListCommandInvocations), so this is a conservative guess: a run
            // sends one command per 50 instances and polls once per command, so even 1,000 instances need 20
            // calls a round, which this serves within seconds. An account that knows better overrides it
            // (`PaceConfig::bucket_override`).
            Group::Ssm => (20.0, 5.0),
        }
    }
}

/// How `Paced` spends the account's budget and how long it keeps trying.
#[derive(Debug, Clone, PartialEq)]
pub struct PaceConfig {
    /// Share of each AWS bucket (burst and refill alike) this process may use; other tools share the account.
    pub budget_fraction: f64,
    /// Most time one call keeps retrying, counted from its first failed attempt, before it gives up with AWS's
    /// error. Waiting for a token before that is not counted: that is pacing, not failure.
    pub max_wait: Duration,
    /// Most attempts of one call when AWS keeps throttling or failing.
    pub max_attempts: u32,
    /// Full-jitter backoff: attempt n sleeps a uniform time in [0, min(cap, base * 2^n)].
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Least time between two CreateSnapshot calls for one volume (EC2 answers
    /// `SnapshotCreationPerVolumeRateExceeded` below 15 s).
    pub per_volume_gap: Duration,
    /// Retries of a create answered `SnapshotCreationPerVolumeRateExceeded`, each after `per_volume_gap`.
    pub per_volume_retries: u32,
    /// Pending snapshots the account may have before new creates are deferred to the next run (EC2's limit is
    /// about 100 per account).
    pub max_pending_per_account: usize,
    /// Seeds the backoff jitter (tests); None draws from the OS.
    pub seed: Option<u64>,
    /// (burst, refill per second) replacing AWS's published figure for a group, before the fraction is applied:
    /// for an account with raised limits, or a test that needs a small budget that refills quickly.
    pub bucket_override: BTreeMap<Group, (f64, f64)>,
}

impl Default for PaceConfig {
    fn default() -> Self {
        PaceConfig {
            budget_fraction: 0.5,
            max_wait: Duration::from_secs(120),
            max_attempts: crate::config::DEFAULT_MAX_ATTEMPTS,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(20),
            per_volume_gap: Duration::from_secs(15),
            per_volume_retries: 2,
            max_pending_per_account: 50,
            seed: None,
            bucket_override: BTreeMap::new(),
        }
    }
}

impl PaceConfig {
    /// The client-side bucket of a group: AWS's scaled by the budget fraction, never below one token of burst.
    pub fn bucket(&self, group: Group, now: Instant) -> TokenBucket {
        let (burst, rate) = self
            .bucket_override
            .get(&group)
            .copied()
            .unwrap_or_else(|| group.aws_bucket());
        let f = self.budget_fraction.clamp(0.0, 1.0);
        TokenBucket::new((burst * f).max(1.0), (rate * f).max(0.01), now)
    }
}

/// Full jitter: a uniform sleep in [0, min(cap, base * 2^attempt)] (attempt 0 is the first retry).
pub(crate) fn backoff(base: Duration, cap: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(rng.random_range(0.0..=ceiling.as_secs_f64()))
}

/// The `Ec2` decorator that paces and retries; see the module docs.
pub struct Paced {
    inner: Arc<dyn Ec2>,
    pacer: Pacer,
}

/// The buckets, backoff and per-volume gaps one decorator paces its calls with: [`Paced`]'s for EC2 and STS,
/// `ssm::PacedSsm`'s for SSM (a service with limits of its own, [`Group::Ssm`]).
pub(crate) struct Pacer {
    config: PaceConfig,
    buckets: Mutex<BTreeMap<Group, TokenBucket>>,
    /// volume id -> when its latest CreateSnapshot was (or is scheduled to be) sent.
    last_create: Mutex<HashMap<String, Instant>>,
    rng: Mutex<StdRng>,
}

/// tokio's clock: the real one in the daemon; a paused one in the scale benchmark (`tests/bench/scale.rs`), where
/// an hour of token-bucket waits runs in seconds. The std clock would not see a paused runtime's time pass.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

impl Paced {
    pub fn new(inner: Arc<dyn Ec2>, config: PaceConfig) -> Self {
        Paced {
            inner,
            pacer: Pacer::new(config),
        }
    }
}

impl Pacer {
    pub(crate) fn new(config: PaceConfig) -> Self {
        let t = now();
        let buckets = Group::ALL
            .iter()
            .map(|&g| (g, config.bucket(g, t)))
            .collect();
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Pacer {
            config,
            buckets: Mutex::new(buckets),
            last_create: Mutex::new(HashMap::new()),
            rng: Mutex::new(rng),
        }
    }

    fn bucket<T>(&self, group: Group, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let mut buckets = self.buckets.lock().expect("pace buckets poisoned");
        f(buckets.get_mut(&group).expect("a bucket per group"))
    }

    async fn token(&self, group: Group) {
        let wait = self.bucket(group, |b| b.reserve(now()));
        sleep(wait).await;
    }

    /// Waits until every one of `volumes` may be snapshotted again (one CreateSnapshots covers several) and
    /// claims that moment for this call.
    async fn volume_gap(&self, volumes: &[&str]) {
        if volumes.is_empty() {
            return;
        }
        let wait = {
            let mut last = self.last_create.lock().expect("pace volume map poisoned");
            let t = now();
            let at = volumes
                .iter()
                .filter_map(|v| last.get(*v))
                .map(|&prev| prev + self.config.per_volume_gap)
                .fold(t, Instant::max);
            // Entries older than the gap can no longer delay anyone; dropping them bounds the map by the
            // volumes created in the last gap, not by every volume ever seen.
            if last.len() >= 1024 {
                let gap = self.config.per_volume_gap;
                last.retain(|_, &mut prev| prev + gap > t);
            }
            for v in volumes {
                last.insert(v.to_string(), at);
            }
            at.saturating_duration_since(t)
        };
        sleep(wait).await;
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let mut rng = self.rng.lock().expect("pace rng poisoned");
        backoff(
            self.config.backoff_base,
            self.config.backoff_cap,
            attempt,
            &mut *rng,
        )
    }

    pub(crate) async fn call<T, F, Fut>(
        &self,
        operation: Op,
        volumes: &[&str],
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>> + Send,
        T: Send,
    {
        let group = operation.group();
        let mut tries = 0u32;
        let mut failing_since: Option<Instant> = None;
        let mut gap_retries = 0u32;
        loop {
            self.volume_gap(volumes).await;
            if let Some(g) = group {
                self.token(g).await;
            }
            tries += 1;
            let err = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match err.retry() {
                None => return Err(err),
                Some(RetryAfter::Backoff) => {
                    if let (true, Some(g)) = (err.is_throttle(), group) {
                        self.bucket(g, |b| b.drain(now()));
                    }
                    let d = self.backoff(tries - 1);
                    let t = now();
                    let since = *failing_since.get_or_insert(t);
                    if tries >= self.config.max_attempts || t + d > since + self.config.max_wait {
                        tracing::warn!(
                            operation = operation.name(),
                            attempts = tries,
                            failing_seconds = (t - since).as_secs_f64(),
                            code = err.code(),
                            "giving up after retries"
                        );
                        return Err(err);
                    }
                    tracing::debug!(
                        operation = operation.name(),
                        attempt = tries,
                        code = err.code(),
                        sleep_ms = d.as_millis() as u64,
                        "retrying"
                    );
                    sleep(d).await;
                }
                Some(RetryAfter::VolumeGap) => {
                    gap_retries += 1;
                    if gap_retries > self.config.per_volume_retries {
                        return Err(err);
                    }
                    {
                        // Another snapshot of the volume (another tool's, or ours from before a restart) started
                        // less than the gap ago: count the gap from this refusal. EC2 does not say which volume of
                        // a CreateSnapshots it was, so all of them wait.
                        let mut last = self.last_create.lock().expect("pace volume map poisoned");
                        for v in volumes {
                            last.insert(v.to_string(), now());
                        }
                    }
                    let volume = volumes.join(",");
                    tracing::info!(operation = operation.name(), volume, "snapshot of this volume started too recently; retrying after the per-volume gap");
                }
            }
        }
    }
}

#[async_trait]
impl Ec2 for Paced {
    fn region(&self) -> &str {
        self.inner.region()
    }
    fn max_pending_snapshots(&self) -> Option<usize> {
        Some(self.pacer.config.max_pending_per_account)
    }
    fn dry_run(&self) -> bool {
        self.inner.dry_run()
    }
    async fn account_id(&self) -> Result<String> {
        self.pacer
            .call(Op::GetCallerIdentity, &[], || self.inner.account_id())
            .await
    }
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>> {
        self.pacer
            .call(Op::DescribeInstances, &[], || {
                self.inner.describe_instances(filters)
            })
            .await
    }
    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>> {
        self.pacer
            .call(Op::DescribeVolumes, &[], || {
                self.inner.describe_volumes(filters)
            })
            .await
    }
    /// One Describe token per page: each page is a request EC2 meters.
    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>> {
        self.pacer
            .call(Op::DescribeSnapshots, &[], || {
                self.inner.describe_snapshots(filters, token)
            })
            .await
    }
    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot> {
        self.pacer
            .call(Op::CreateSnapshot, &[&request.volume_id], || {
                self.inner.create_snapshot(request)
            })
            .await
    }
    /// One Create token for the whole instance; the per-volume gap holds for each of its volumes.
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        let volumes: Vec<&str> = request.volumes.iter().map(|(v, _)| v.as_str()).collect();
        self.pacer
            .call(Op::CreateSnapshots, &volumes, || {
                self.inner.create_snapshots(request)
            })
            .await
    }
    /// CreateTags is idempotent, so transient failures are retried like a describe's.
    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        self.pacer
            .call(Op::CreateTags, &[], || {
                self.inner.create_tags(resource_ids, tags)
            })
            .await
    }
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.pacer
            .call(Op::DeleteSnapshot, &[], || {
                self.inner.delete_snapshot(snapshot_id)
            })
            .await
    }
    /// In the destination's mutating bucket, without the per-volume gap (a copy snapshots no volume); retried
    /// only after throttling, like a create (no client token). `ResourceLimitExceeded` is returned as is: the
    /// caller defers the copy.
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot> {
        self.pacer
            .call(Op::CopySnapshot, &[], || self.inner.copy_snapshot(request))
            .await
    }
}

/// EC2's per-volume pending-snapshot limit for a volume type: 1 for throughput-optimized and cold HDD, else 5.
pub(crate) fn pending_limit(volume_type: &str) -> usize {
    match volume_type {
        "st1" | "sc1" => 1,
        _ => 5,
    }
}

/// Why a volume's snapshot was put off to the next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deferral {
    /// The volume already has `pending` unfinished snapshots, at its limit.
    Volume { pending: usize, limit: usize },
    /// The account has `pending` unfinished snapshots (counting this run's), at the configured cap.
    Account { pending: usize, cap: usize },
}

impl Deferral {
    pub(crate) fn message(&self) -> String {
        match self {
            Deferral::Volume { pending, limit } => format!(
                "{pending} snapshots of this volume are still pending or failed (EC2 allows {limit} for its type); \
                 deferred to the next run. If this persists, look for stuck or failed snapshots of the volume"
            ),
            Deferral::Account { pending, cap } => format!(
                "{pending} snapshots are pending in the account (cap {cap}); deferred to the next run. If this \
                 persists, raise the cap or spread the schedules"
            ),
        }
    }
}

/// Which of `candidates` (volume id, volume type), in order, to defer rather than snapshot now, given `known`
/// snapshots (the survey's). A snapshot counts against the limits while `pending`, and in `error` too (EC2 counts
/// it until it is deleted). The account cap admits candidates in order until the account's pending count, this
/// run's creates included, reaches it; `None` means no account cap. Only the snapshots the caller can see count:
/// for the worker that is its policy's, so the cap is a guard, not an exact account-wide figure.
pub(crate) fn pending_deferrals(
    candidates: &[(&str, &str)],
    known: &[Snap],
    account_cap: Option<usize>,
) -> BTreeMap<String, Deferral> {
    let mut per_volume: HashMap<&str, usize> = HashMap::new();
    let mut account = 0usize;
    for s in known
        .iter()
        .filter(|s| matches!(s.state, SnapState::Pending | SnapState::Error))
    {
        *per_volume.entry(&*s.volume_id).or_default() += 1;
        account += 1;
    }
    let mut out = BTreeMap::new();
    for &(volume, volume_type) in candidates {
        let pending = per_volume.get(volume).copied().unwrap_or(0);
        let limit = pending_limit(volume_type);
        if pending >= limit {
            out.insert(volume.to_string(), Deferral::Volume { pending, limit });
            continue;
        }
        if let Some(cap) = account_cap.filter(|&cap| account >= cap) {
            out.insert(
                volume.to_string(),
                Deferral::Account {
                    pending: account,
                    cap,
                },
            );
            continue;
        }
        account += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0, 2.0, t0);
        for _ in 0..3 {
            assert_eq!(b.try_take(t0), Ok(()));
        }
        assert_eq!(b.try_take(t0), Err(ms(500)));
        // Half a token after 250 ms: still 250 ms to go.
        assert_eq!(b.try_take(t0 + ms(250)), Err(ms(250)));
        assert_eq!(b.try_take(t0 + ms(500)), Ok(()));
        // A long idle spell refills to the burst, never beyond it.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.try_take(later), Ok(()));
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn reservations_queue_waiters_at_the_refill_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 4.0, t0);
        let waits: Vec<Duration> = (0..5).map(|_| b.reserve(t0)).collect();
        assert_eq!(waits, [ms(0), ms(0), ms(250), ms(500), ms(750)]);
        // The debt is paid before anyone else goes: a try at 500 ms finds nothing.
        assert_eq!(b.try_take(t0 + ms(500)), Err(ms(500)));
        assert_eq!(b.try_take(t0 + ms(1000)), Ok(()));
    }

    #[test]
    fn a_throttle_drains_the_bucket_but_keeps_its_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t0);
        b.drain(t0);
        assert_eq!(b.try_take(t0), Err(ms(100)));
        b.reserve(t0);
        b.reserve(t0);
        b.drain(t0);
        assert_eq!(b.reserve(t0), ms(300));
    }

    #[test]
    fn buckets_are_aws_figures_scaled_by_the_budget_fraction() {
        let t0 = Instant::now();
        let half = PaceConfig::default();
        let b = half.bucket(Group::Create, t0);
        assert_eq!((b.capacity, b.refill_per_sec), (50.0, 2.5));
        let b = half.bucket(Group::Describe, t0);
        assert_eq!((b.capacity, b.refill_per_sec), (50.0, 10.0));
        let b = half.bucket(Group::Tags, t0);
        assert_eq!((b.capacity, b.refill_per_sec), (50.0, 5.0));
        let tiny = PaceConfig {
            budget_fraction: 0.001,
            ..PaceConfig::default()
        };
        assert_eq!(tiny.bucket(Group::Delete, t0).capacity, 1.0);
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling_and_a_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        let (base, cap) = (ms(200), Duration::from_secs(20));
        for attempt in 0..12u32 {
            let ceiling = (ms(200) * 2u32.pow(attempt.min(20))).min(cap);
            let draws: Vec<Duration> = (0..200)
                .map(|_| backoff(base, cap, attempt, &mut rng))
                .collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter spreads over the whole range, not just its top.
            assert!(draws.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                draws.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
        // Huge attempt numbers saturate at the cap instead of overflowing.
        assert!(backoff(base, cap, u32::MAX, &mut rng) <= cap);
        // Same seed, same sleeps.
        let a: Vec<Duration> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..5).map(|n| backoff(base, cap, n, &mut r)).collect()
        };
        let b: Vec<Duration> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..5).map(|n| backoff(base, cap, n, &mut r)).collect()
        };
        assert_eq!(a, b);
    }

    fn api(operation: Op, code: &str) -> Error {
        Error::api(operation, "r", code, "m")
    }

    #[test]
    fn only_what_aws_did_not_do_is_retried_for_creates() {
        let transport = Error::Transport {
            operation: Op::DescribeSnapshots,
            region: "r".into(),
            kind: "transport",
            message: "reset".into(),
        };
        for (err, want) in [
            (
                api(Op::CreateSnapshot, "RequestLimitExceeded"),
                Some(RetryAfter::Backoff),
            ),
            (
                api(Op::CreateSnapshot, "SnapshotCreationPerVolumeRateExceeded"),
                Some(RetryAfter::VolumeGap),
            ),
            (api(Op::CreateSnapshot, "InternalError"), None),
            (api(Op::CreateSnapshots, "ServiceUnavailable"), None),
            (
                api(Op::CreateSnapshot, "ConcurrentSnapshotLimitExceeded"),
                None,
            ),
            (
                api(Op::DescribeVolumes, "RequestLimitExceeded"),
                Some(RetryAfter::Backoff),
            ),
            (
                api(Op::DescribeVolumes, "InternalError"),
                Some(RetryAfter::Backoff),
            ),
            (
                api(Op::DeleteSnapshot, "ServiceUnavailable"),
                Some(RetryAfter::Backoff),
            ),
            (api(Op::DeleteSnapshot, "UnauthorizedOperation"), None),
            (transport, Some(RetryAfter::Backoff)),
        ] {
            assert_eq!(err.retry(), want, "{err}");
        }
    }

    #[test]
    fn pending_limits_defer_full_volumes_and_cap_the_account() {
        let snap = |volume: &str, state| Snap {
            id: format!("snap-{volume}").into(),
            volume_id: volume.into(),
            slot: chrono::Utc::now(),
            schedules: Arc::from([]),
            state,
            pinned: false,
            app_consistent: false,
            group: crate::retention::Group::Volume,
            started: 0,
        };
        let mut known: Vec<Snap> = (0..5).map(|_| snap("vol-a", SnapState::Pending)).collect();
        known.extend((0..4).map(|_| snap("vol-b", SnapState::Pending)));
        known.push(snap("vol-c", SnapState::Error));
        known.extend((0..9).map(|_| snap("vol-d", SnapState::Completed)));
        let candidates = [
            ("vol-a", "gp3"),
            ("vol-b", "gp3"),
            ("vol-c", "st1"),
            ("vol-d", "sc1"),
            ("vol-e", "gp3"),
        ];
        let d = pending_deferrals(&candidates, &known, None);
        assert_eq!(
            d,
            BTreeMap::from([
                (
                    "vol-a".to_string(),
                    Deferral::Volume {
                        pending: 5,
                        limit: 5
                    }
                ),
                (
                    "vol-c".to_string(),
                    Deferral::Volume {
                        pending: 1,
                        limit: 1
                    }
                ),
            ])
        );
        // 10 pending or failed in the account; a cap of 12 admits two more creates, in order.
        let d = pending_deferrals(&candidates, &known, Some(12));
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(
            d["vol-e"],
            Deferral::Account {
                pending: 12,
                cap: 12
            }
        );
        assert!(!d.contains_key("vol-b") && !d.contains_key("vol-d"));
        assert!(d["vol-a"].message().contains("EC2 allows 5"));
    }

    /// Answers each call with the next scripted error, then succeeds; counts calls.
    struct Script {
        errors: Mutex<Vec<&'static str>>,
        calls: AtomicUsize,
        at: Mutex<Vec<Instant>>,
    }

    impl Script {
        fn new(errors: &[&'static str]) -> Arc<Self> {
            Arc::new(Script {
                errors: Mutex::new(errors.iter().rev().copied().collect()),
                calls: AtomicUsize::new(0),
                at: Mutex::new(Vec::new()),
            })
        }
        fn next(&self, operation: Op) -> Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.at.lock().unwrap().push(now());
            match self.errors.lock().unwrap().pop() {
                Some(code) => Err(api(operation, code)),
                None => Ok(()),
            }
        }
    }

    #[async_trait]
    impl Ec2 for Script {
        fn region(&self) -> &str {
            "r"
        }
        fn dry_run(&self) -> bool {
            false
        }
        async fn account_id(&self) -> Result<String> {
            self.next(Op::GetCallerIdentity).map(|_| "1".into())
        }
        async fn describe_instances(&self, _: &[Filter]) -> Result<Vec<Instance>> {
            self.next(Op::DescribeInstances).map(|_| Vec::new())
        }
        async fn describe_volumes(&self, _: &[Filter]) -> Result<Vec<Volume>> {
            self.next(Op::DescribeVolumes).map(|_| Vec::new())
        }
        async fn describe_snapshots(
            &self,
            _: &[Filter],
            _: Option<&str>,
        ) -> Result<Page<Snapshot>> {
            self.next(Op::DescribeSnapshots).map(|_| Page::default())
        }
        async fn create_snapshot(&self, r: &CreateSnapshot) -> Result<Snapshot> {
            self.next(Op::CreateSnapshot).map(|_| Snapshot {
                id: "snap-1".into(),
                volume_id: r.volume_id.as_str().into(),
                state: SnapState::Pending,
                start_time: chrono::Utc::now(),
                owner_id: "1".into(),
                description: "".into(),
                tags: Default::default(),
            })
        }
        async fn delete_snapshot(&self, _: &str) -> Result<()> {
            self.next(Op::DeleteSnapshot)
        }
        async fn copy_snapshot(&self, r: &CopySnapshot) -> Result<Snapshot> {
            self.next(Op::CopySnapshot).map(|_| Snapshot {
                id: "snap-copy".into(),
                volume_id: super::super::COPY_VOLUME_ID.into(),
                state: SnapState::Pending,
                start_time: chrono::Utc::now(),
                owner_id: "1".into(),
                description: r.description.as_str().into(),
                tags: Arc::new(r.tags.clone()),
            })
        }
    }

    /// Real time, kept short: tokio's paused clock needs a feature this crate does not enable.
    fn quick() -> PaceConfig {
        PaceConfig {
            max_wait: Duration::from_secs(5),
            max_attempts: 6,
            backoff_base: ms(5),
            backoff_cap: ms(40),
            per_volume_gap: ms(300),
            seed: Some(1),
            ..PaceConfig::default()
        }
    }

    fn request(volume: &str) -> CreateSnapshot {
        CreateSnapshot {
            volume_id: volume.into(),
            description: String::new(),
            tags: Default::default(),
        }
    }

    #[tokio::test]
    async fn throttling_is_retried_until_it_stops_or_the_attempts_run_out() {
        let script = Script::new(&[
            "RequestLimitExceeded",
            "RequestLimitExceeded",
            "InternalError",
        ]);
        let paced = Paced::new(script.clone(), quick());
        paced
            .describe_volumes(&[])
            .await
            .expect("succeeds on the 4th try");
        assert_eq!(script.calls.load(Ordering::SeqCst), 4);

        let script = Script::new(&["RequestLimitExceeded"; 20]);
        let paced = Paced::new(script.clone(), quick());
        let err = paced.delete_snapshot("snap-1").await.unwrap_err();
        assert!(err.is_throttle(), "{err}");
        assert_eq!(script.calls.load(Ordering::SeqCst), 6, "max_attempts");
    }

    #[tokio::test]
    async fn the_backoff_budget_ends_a_call_before_its_attempts_do() {
        let config = PaceConfig {
            max_attempts: 1000,
            max_wait: ms(300),
            backoff_cap: ms(100),
            ..quick()
        };
        let script = Script::new(&["RequestLimitExceeded"; 1000]);
        let paced = Paced::new(script.clone(), config);
        let t0 = Instant::now();
        assert!(paced.describe_snapshots(&[], None).await.is_err());
        let calls = script.calls.load(Ordering::SeqCst);
        assert!((3..1000).contains(&calls), "{calls} attempts");
        // Given up at max_wait after the first failure, give or take the last token wait (0.1 s after a drain).
        assert!(t0.elapsed() < ms(300) + ms(250), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_create_is_retried_only_when_aws_did_not_make_it() {
        let script = Script::new(&["InternalError"]);
        let paced = Paced::new(script.clone(), quick());
        assert_eq!(
            paced
                .create_snapshot(&request("vol-1"))
                .await
                .unwrap_err()
                .code(),
            "InternalError"
        );
        assert_eq!(script.calls.load(Ordering::SeqCst), 1);

        let script = Script::new(&["ConcurrentSnapshotLimitExceeded"]);
        let paced = Paced::new(script.clone(), quick());
        assert!(paced.create_snapshot(&request("vol-1")).await.is_err());
        assert_eq!(script.calls.load(Ordering::SeqCst), 1);

        let script = Script::new(&["RequestLimitExceeded"]);
        let paced = Paced::new(script.clone(), quick());
        paced.create_snapshot(&request("vol-1")).await.unwrap();
        assert_eq!(script.calls.load(Ordering::SeqCst), 2);
    }

    fn copy() -> CopySnapshot {
        CopySnapshot {
            source_region: "r0".into(),
            source_snapshot_id: "snap-src".into(),
            description: String::new(),
            encrypted: false,
            kms_key_id: None,
            tags: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_copy_is_retried_after_throttling_only_and_a_full_destination_comes_back_at_once() {
        for (errors, calls, ok) in [
            (&["RequestLimitExceeded"][..], 2, true),
            (&["InternalError"][..], 1, false),
            (&["ResourceLimitExceeded"][..], 1, false),
        ] {
            let script = Script::new(errors);
            let paced = Paced::new(script.clone(), quick());
            let answer = paced.copy_snapshot(&copy()).await;
            assert_eq!(answer.is_ok(), ok, "{errors:?}: {answer:?}");
            assert_eq!(script.calls.load(Ordering::SeqCst), calls, "{errors:?}");
        }
    }

    #[tokio::test]
    async fn copies_are_paced_in_the_mutating_bucket_not_the_create_one() {
        let config = PaceConfig {
            // Mutating: burst 2 and 20 per second before the fraction, so 1 and 10 per second after it. Creates
            // keep AWS's burst of 100.
            bucket_override: BTreeMap::from([(Group::Mutating, (2.0, 20.0))]),
            ..quick()
        };
        let script = Script::new(&[]);
        let paced = Arc::new(Paced::new(script.clone(), config));
        let t0 = Instant::now();
        let calls = (0..6).map(|_| {
            let paced = paced.clone();
            async move { paced.copy_snapshot(&copy()).await }
        });
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        // 1 from the burst, then 5 at 100 ms apart (in the create bucket all six would go at once).
        assert!(t0.elapsed() >= ms(450), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn one_volume_is_snapshotted_at_most_once_per_gap_and_a_rate_refusal_waits_a_gap() {
        let gap = quick().per_volume_gap;
        let script = Script::new(&[]);
        let paced = Paced::new(script.clone(), quick());
        paced.create_snapshot(&request("vol-1")).await.unwrap();
        paced.create_snapshot(&request("vol-2")).await.unwrap();
        paced.create_snapshot(&request("vol-1")).await.unwrap();
        let at = script.at.lock().unwrap().clone();
        assert!(at[1] - at[0] < gap / 2, "another volume does not wait");
        assert!(at[2] - at[0] >= gap, "{:?}", at[2] - at[0]);

        let script = Script::new(&["SnapshotCreationPerVolumeRateExceeded"]);
        let paced = Paced::new(script.clone(), quick());
        paced.create_snapshot(&request("vol-1")).await.unwrap();
        let at = script.at.lock().unwrap().clone();
        assert_eq!(at.len(), 2);
        assert!(at[1] - at[0] >= gap, "{:?}", at[1] - at[0]);

        // Refused every time: given up after the configured retries, not forever.
        let script = Script::new(&["SnapshotCreationPerVolumeRateExceeded"; 10]);
        let paced = Paced::new(script.clone(), quick());
        assert!(paced.create_snapshot(&request("vol-1")).await.is_err());
        assert_eq!(script.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn calls_are_paced_at_the_scaled_rate_after_the_burst() {
        let config = PaceConfig {
            // Creates: burst 10 and 40 per second before the fraction, so 5 and 20 per second after it.
            bucket_override: BTreeMap::from([(Group::Create, (10.0, 40.0))]),
            ..quick()
        };
        let script = Script::new(&[]);
        let paced = Arc::new(Paced::new(script.clone(), config));
        let t0 = Instant::now();
        let calls = (0..15).map(|i| {
            let paced = paced.clone();
            async move { paced.create_snapshot(&request(&format!("vol-{i}"))).await }
        });
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        // 5 from the burst, then 10 at 50 ms apart.
        assert!(t0.elapsed() >= ms(500), "{:?}", t0.elapsed());
        assert!(t0.elapsed() < ms(900), "{:?}", t0.elapsed());
        let at = script.at.lock().unwrap().clone();
        assert!(at[..5].iter().all(|t| *t - t0 < ms(50)));
    }
}
