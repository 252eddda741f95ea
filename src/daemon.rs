//! Wiring: AWS backends per region, the scheduler loop, run tasks, the HTTP server, signals and the shutdown order. The
//! scheduler loop ticks at least once a second (its tick is the `/healthz` heartbeat) and carries out what the pure
//! `scheduler::Scheduler` decides: it spawns one run task per fire and skips (and counts) the fire of a schedule whose
//! previous run is still going. At most `daemon.max-concurrent-runs` fires execute at once; the rest wait in firing
//! order (still counted as running). A run task's guard (`Running`) clears its schedules' running flag however the task
//! ends, and a panic in one region's run is a failed run of that region. A fire whose run failed or was partial in some
//! region retries that region within the slot (`scheduler::retry_at`). SIGHUP hands the loop a re-read config
//! ([`reload`]) for its next fires. Shutdown: stop firing, let in-flight runs finish within the grace period (past it:
//! no new mutating EC2 call, and the ones sent are waited for), then stop HTTP and flush alerts.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Policy};
use crate::ec2::pace::{PaceConfig, Paced};
use crate::ec2::stop::{Guarded, Mutations};
use crate::ec2::{self, Ec2};
use crate::error::{Error, Result};
use crate::http::{self, AppState};
use crate::lock::{Held, LockDir, Refused};
use crate::metrics::Metrics;
use crate::notify::{Notifier, Publisher, SnsPublisher};
use crate::report::{Problem, RunReport};
use crate::schedule;
use crate::scheduler::{self, Jump, Scheduler, Tick};
use crate::sdnotify::SdNotify;
use crate::ssm;
use crate::status::{self, Health, StatusBoard};
use crate::worker::{self, Region, RunSpec};

mod fleet;
pub use fleet::{Fleet, Pairs, Serving};

/// How long the notifier may take after the last run to send what is still queued before the daemon exits
/// anyway (the deploy files' stop timeouts leave room for it).
pub const NOTIFIER_DRAIN: Duration = Duration::from_secs(5);

/// How long the scheduler may stay silent before `/healthz` reports it stalled.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(30);

/// Shared parts of the process.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    pub health: Arc<Health>,
    /// systemd readiness, watchdog and stopping notices (no-ops outside systemd).
    pub sd: Arc<SdNotify>,
    /// Mutating EC2 calls in flight in every region; stopped when the shutdown grace period is over.
    pub mutations: Arc<Mutations>,
    /// The config the scheduler fires from: `config` at start, replaced by each applied [`reload`].
    pub(crate) live: Arc<tokio::sync::watch::Sender<Arc<Config>>>,
    /// Host-wide slot locks each run takes (`run` sets them; None for in-memory backends and tests).
    pub locks: Option<LockDir>,
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let health = Arc::new(Health::default());
        health.config_loaded.store(true, Relaxed);
        let config = Arc::new(config);
        Shared {
            live: Arc::new(tokio::sync::watch::Sender::new(config.clone())),
            config,
            metrics: Arc::new(Metrics::new()),
            status: Arc::default(),
            health,
            sd: Arc::new(SdNotify::disabled()),
            mutations: Arc::default(),
            locks: None,
        }
    }

    pub fn app_state(&self) -> AppState {
        AppState {
            metrics: self.metrics.clone(),
            status: self.status.clone(),
            health: self.health.clone(),
            stall_after: STALL_AFTER,
        }
    }
}

/// Builds one paced, instrumented EC2 backend per configured region against real AWS (or the configured
/// endpoint), failing fast when region or credentials are missing, and learns the account id (the first AWS call).
pub async fn aws_regions(shared: &Shared) -> Result<Vec<Arc<Region>>> {
    aws_regions_paced(shared, &pace_config(&shared.config)).await
}

/// How the daemon paces AWS calls: `aws.max-attempts` bounds the attempts of one call (the SDK no longer
/// retries); the rest are defaults until the `aws` config section carries them. The per-volume gap never exceeds
/// the shortest interval between two fires of any schedule: EC2 refuses a schedule faster than 15 s anyway, and
/// on an emulator (tests) such a schedule must not be held back beyond its own period.
pub fn pace_config(config: &Config) -> PaceConfig {
    let default = PaceConfig::default();
    let now = Utc::now();
    let tz = config.daemon.timezone;
    let shortest = config
        .policies
        .iter()
        .flat_map(|p| &p.schedules)
        .filter_map(|s| {
            // A few consecutive fires: enough for lists and ranges such as `0,5 * * * * *`.
            let mut fires = vec![s.cron.next_after(now, tz)?];
            for _ in 0..4 {
                let last = *fires.last()?;
                fires.push(s.cron.next_after(last, tz)?);
            }
            fires
                .windows(2)
                .filter_map(|w| (w[1] - w[0]).to_std().ok())
                .min()
        })
        .min();
    PaceConfig {
        max_attempts: config.aws.max_attempts.max(1),
        per_volume_gap: shortest.map_or(default.per_volume_gap, |s| s.min(default.per_volume_gap)),
        ..default
    }
}

/// [`aws_regions`] with explicit pacing (tests shorten the gaps and backoffs): the pairs of [`aws_fleet`] at start.
pub async fn aws_regions_paced(shared: &Shared, pace: &PaceConfig) -> Result<Vec<Arc<Region>>> {
    Ok(aws_fleet(shared, pace).await?.regions().to_vec())
}

/// What the daemon serves: the own account's regions (unless `aws.own-account = false`), then each
/// `[[aws.account]]`'s, one [`Region`] per (account, region) pair; with `[aws.organization]`, also the accounts of
/// the organisation's first listing, and the refresh that keeps them current ([`Fleet`]).
pub async fn aws_fleet(shared: &Shared, pace: &PaceConfig) -> Result<Fleet> {
    let backends = Backends::new(shared, pace);
    let accounts = &shared.config.aws.accounts;
    let mut out = Vec::new();
    if accounts.own {
        out.extend(backends.account(&Served::own(&shared.config)).await?);
    } else {
        // The daemon's own credentials sign every AssumeRole: fail fast, with the fix, when there are none, and
        // prove AWS reachable (readiness) with one GetCallerIdentity, as a served own account does.
        let conf = backends
            .base(shared.config.aws.regions.first().map(String::as_str))
            .await?;
        resolve(
            shared,
            backends.paced(Arc::new(ec2::sdk::SdkEc2::new(&conf))),
        )
        .await?;
    }
    let own_id = out.first().map(|r| r.account_id.clone());
    for account in &accounts.listed {
        if own_id.as_deref() == Some(account.account_id.as_str()) {
            return Err(Error::Config(format!(
                "{}: [[aws.account]] `{}` ({}) is the daemon's own account, which aws.own-account already serves: \
                 remove the entry, or set aws.own-account = false to serve the account through the role",
                shared.config.source.display(),
                account.name,
                account.role_arn
            )));
        }
        out.extend(backends.account(&Served::listed(account)).await?);
    }
    Ok(Fleet::start(backends, out).await)
}

/// An account as the daemon serves it: its label, how its credentials are had and its regions.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The `account` label: an entry's name (its id by default); None for the own account, labelled by its id
    /// once known.
    name: Option<String>,
    /// Known from the role ARN; None for the own account (GetCallerIdentity tells).
    account_id: Option<String>,
    role: Option<ec2::assume::Role>,
    /// Empty: the SDK's region.
    regions: Vec<String>,
}

impl Served {
    fn own(config: &Config) -> Self {
        Served {
            name: None,
            account_id: None,
            role: None,
            regions: config.aws.regions.clone(),
        }
    }

    pub(crate) fn listed(account: &crate::config::Account) -> Self {
        Served {
            name: Some(account.name.clone()),
            account_id: Some(account.account_id.clone()),
            role: Some(ec2::assume::Role {
                arn: account.role_arn.clone(),
                external_id: account.external_id.clone(),
                session_name: account.session_name.clone(),
            }),
            regions: account.regions.clone(),
        }
    }

    /// An account found in the organisation: named by its id, served in `regions` (`aws.regions`) through the
    /// organisation's `role-name` in it.
    pub(crate) fn discovered(
        member: &crate::org::Member,
        org: &crate::config::Organization,
        regions: &[String],
    ) -> Self {
        Served {
            name: Some(member.id.clone()),
            account_id: Some(member.id.clone()),
            role: Some(ec2::assume::Role {
                arn: format!(
                    "arn:{}:iam::{}:role/{}",
                    member.partition, member.id, org.role_name
                ),
                external_id: org.external_id.clone(),
                session_name: org.session_name.clone(),
            }),
            regions: regions.to_vec(),
        }
    }
}

/// Builds the paced backends of an account's regions: at start, and for the accounts an organisation refresh
/// finds. Every (account, region) pair gets its own token buckets and pending-snapshot accounting (AWS's limits
/// are per account per region) while the `max-concurrent-aws-calls` permits are one for the process (a FIFO
/// queue: a pair waiting for a permit is served in its turn, whatever the size of the others).
#[derive(Clone)]
pub(crate) struct Backends {
    shared: Shared,
    permits: Arc<Semaphore>,
    pace: PaceConfig,
}

impl Backends {
    pub(crate) fn new(shared: &Shared, pace: &PaceConfig) -> Self {
        Backends {
            shared: shared.clone(),
            permits: Arc::new(Semaphore::new(
                shared.config.daemon.max_concurrent_aws_calls,
            )),
            pace: pace.clone(),
        }
    }

    /// The daemon's own SDK config for `region` (None: the SDK's), checked to have a region and credentials.
    async fn base(&self, region: Option<&str>) -> Result<aws_config::SdkConfig> {
        let conf = ec2::sdk::sdk_config(&self.shared.config.aws, region).await;
        // `Paced` is the one retrier for EC2 and STS: an SDK retry would be a request its buckets never saw.
        let conf = conf
            .to_builder()
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        ec2::sdk::check_sdk_config(&conf, Duration::from_secs(10)).await?;
        self.shared.health.credentials_resolved.store(true, Relaxed);
        Ok(conf)
    }

    /// The SDK config `account` is served with in `region`: the daemon's own, or one assuming its role (nothing is
    /// asked of STS until the first call, so a role that is refused fails that account's runs, not the start).
    async fn config(
        &self,
        account: &Served,
        region: Option<&str>,
    ) -> Result<aws_config::SdkConfig> {
        let base = self.base(region).await?;
        Ok(match &account.role {
            Some(role) => ec2::assume::assumed_config(&base, role).await,
            None => base,
        })
    }

    fn paced(&self, backend: Arc<dyn Ec2>) -> Arc<dyn Ec2> {
        paced(
            &self.shared,
            backend,
            self.permits.clone(),
            self.pace.clone(),
        )
    }

    /// One [`Region`] per region of `account`, sharing the account's copy destinations (one backend and gate per
    /// destination region: the copy limit is the account's).
    pub(crate) async fn account(&self, account: &Served) -> Result<Vec<Arc<Region>>> {
        let wanted: BTreeSet<String> = self
            .shared
            .config
            .policies
            .iter()
            .flat_map(worker::destination_regions)
            .collect();
        let mut destinations: Vec<Arc<dyn Ec2>> = Vec::new();
        for name in wanted {
            let conf = self.config(account, Some(&name)).await?;
            destinations.push(self.paced(Arc::new(ec2::sdk::SdkEc2::new(&conf))));
        }
        let copies = Arc::new(worker::Destinations::new(
            self.shared.config.daemon.copy_concurrency,
            destinations,
        ));
        let names: Vec<Option<&str>> = if account.regions.is_empty() {
            vec![None]
        } else {
            account.regions.iter().map(|r| Some(r.as_str())).collect()
        };
        let mut out = Vec::new();
        for name in names {
            let conf = self.config(account, name).await?;
            let ssm = ssm::PacedSsm::new(
                Arc::new(ssm::Instrumented::new(
                    Arc::new(ssm::sdk::SdkSsm::new(&conf)),
                    self.shared.metrics.clone(),
                )),
                self.pace.clone(),
            );
            let ec2 = self.paced(Arc::new(ec2::sdk::SdkEc2::new(&conf)));
            let account_id = match &account.account_id {
                Some(id) => id.clone(),
                None => resolve(&self.shared, ec2.clone()).await?.account_id.clone(),
            };
            out.push(Arc::new(Region {
                account: account.name.clone().unwrap_or_else(|| account_id.clone()),
                own: account.role.is_none(),
                ssm: Some(Arc::new(ssm)),
                ec2,
                account_id,
                copies: copies.clone(),
            }));
        }
        Ok(out)
    }
}

/// Wraps a backend with the shared concurrency bound and metrics and resolves its account. Unpaced: for the
/// in-memory backends (`demo`, tests), which have no AWS budget to protect and fire every few seconds.
pub async fn region(
    shared: &Shared,
    backend: Arc<dyn Ec2>,
    permits: Arc<Semaphore>,
) -> Result<Arc<Region>> {
    let ec2: Arc<dyn Ec2> = Arc::new(ec2::Instrumented::new(
        guarded(shared, backend),
        permits,
        shared.metrics.clone(),
    ));
    resolve(shared, ec2).await
}

/// [`region`] behind one [`Paced`] layer, outermost, so every retry is paced and counted as an attempt and a call
/// sleeping in backoff holds no concurrency permit (tests that pace a fake backend as the daemon paces AWS).
pub async fn paced_region(
    shared: &Shared,
    backend: Arc<dyn Ec2>,
    permits: Arc<Semaphore>,
    pace: PaceConfig,
) -> Result<Arc<Region>> {
    resolve(shared, paced(shared, backend, permits, pace)).await
}

/// `backend` guarded, instrumented and paced, as every AWS backend is.
fn paced(
    shared: &Shared,
    backend: Arc<dyn Ec2>,
    permits: Arc<Semaphore>,
    pace: PaceConfig,
) -> Arc<dyn Ec2> {
    let instrumented: Arc<dyn Ec2> = Arc::new(ec2::Instrumented::new(
        guarded(shared, backend),
        permits,
        shared.metrics.clone(),
    ));
    Arc::new(Paced::new(instrumented, pace))
}

/// The innermost layer: every attempt of a mutating call is logged with its outcome and refused once the grace
/// period is over (`ec2::stop`).
fn guarded(shared: &Shared, backend: Arc<dyn Ec2>) -> Arc<dyn Ec2> {
    Arc::new(Guarded::new(backend, shared.mutations.clone()))
}

async fn resolve(shared: &Shared, ec2: Arc<dyn Ec2>) -> Result<Arc<Region>> {
    let account_id = ec2.account_id().await?;
    // An answered call proves the credentials too (the fake backend needs none).
    shared.health.credentials_resolved.store(true, Relaxed);
    shared.health.aws_reachable.store(true, Relaxed);
    Ok(Arc::new(Region {
        ec2,
        account: account_id.clone(),
        own: true,
        account_id,
        ssm: None,
        copies: Default::default(),
    }))
}

pub async fn sns_publisher(config: &Config) -> Option<Arc<dyn Publisher>> {
    let sns = config.notify.sns.as_ref()?;
    let conf = ec2::sdk::sdk_config(&config.aws, Some(&sns.region)).await;
    Some(Arc::new(SnsPublisher::new(&conf, &sns.topic_arn)))
}

/// Every schedule of `policy` that fires exactly at `slot`: they share the slot's snapshot.
pub fn firing_at(policy: &Policy, slot: DateTime<Utc>, tz: chrono_tz::Tz) -> Vec<String> {
    policy
        .schedules
        .iter()
        .filter(|s| s.cron.latest_at_or_before(slot, tz) == Some(slot))
        .map(|s| s.name.clone())
        .collect()
}

/// A fire's claim on its schedules: while it lives they are running (on `/status`, and for the scheduler, which
/// hears of their end over `done`). Dropped on every way out of a fire — finished, given up, shut down, panicked —
/// so a schedule is never left running.
struct Running {
    status: Arc<StatusBoard>,
    policy: String,
    schedules: Vec<String>,
    done: mpsc::UnboundedSender<(String, Vec<String>)>,
}

impl Running {
    fn start(
        status: &Arc<StatusBoard>,
        fire: &scheduler::Fire,
        done: &mpsc::UnboundedSender<(String, Vec<String>)>,
    ) -> Self {
        for s in &fire.schedules {
            // The scheduler only fires a schedule it knows is not running, and the board is cleared first.
            let started = status.try_start(&fire.policy.name, s);
            debug_assert!(started, "{}/{s} fired while running", fire.policy.name);
        }
        Running {
            status: status.clone(),
            policy: fire.policy.name.clone(),
            schedules: fire.schedules.clone(),
            done: done.clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for s in &self.schedules {
            self.status.finish(&self.policy, s);
        }
        // The loop may be gone at shutdown; nothing is left to tell then.
        let _ = self
            .done
            .send((self.policy.clone(), std::mem::take(&mut self.schedules)));
    }
}

/// One fire of one policy in the regions of its scopes; returns when all of them are done. It waits for a run
/// permit first (catch-up after a downtime starts runs in order, so early ones finish), and gives up waiting at
/// shutdown. A region whose run failed, was partial or panicked is run again after a backoff, as the same slot
/// (idempotent by tags), until it succeeds or the next retry would come too close to the schedule's next fire.
async fn fire(
    shared: Shared,
    mut pending: Vec<Arc<Region>>,
    notifier: Notifier,
    fire: scheduler::Fire,
    _running: Running,
    gate: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let tz = shared.config.daemon.timezone;
    let scheduler::Fire {
        policy,
        slot,
        schedules: firing,
        ..
    } = fire;
    let next_fire = firing
        .iter()
        .filter_map(|name| policy.schedule(name))
        .filter_map(|s| s.cron.next_after(slot, tz))
        .min();
    let mut retry = 0;
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            p = gate.clone().acquire_owned() => p.ok(),
        };
        let Some(permit) = permit else {
            tracing::info!(policy = %policy.name, schedules = %firing.join(","), slot = %schedule::format_slot(slot), "not started: shutting down");
            break;
        };
        // Each attempt holds the slot's host lock while it works; waiting for a `once` on the slot ends at shutdown.
        let held = match &shared.locks {
            Some(locks) => tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    tracing::info!(policy = %policy.name, schedules = %firing.join(","), slot = %schedule::format_slot(slot), "not started: shutting down while another process held the slot");
                    break;
                }
                held = slot_lock(locks, &policy.name, slot) => held,
            },
            None => None,
        };
        let runs = pending.iter().map(|r| {
            let spec = r
                .spec(&policy, slot)
                .firing(firing.clone())
                .concurrency(shared.config.daemon.max_concurrent_aws_calls)
                .completion(worker::Completion::within(
                    shared.config.daemon.completion_deadline,
                ));
            let (shared, notifier) = (&shared, &notifier);
            async move {
                let started = Utc::now();
                let run = worker::run(r.ec2.as_ref(), &spec, &shared.metrics, Utc::now);
                // A panic ends this region's run only: the others of the fire go on, and it is a failed run.
                let mut report = match AssertUnwindSafe(run).catch_unwind().await {
                    Ok(outcome) => outcome.report,
                    Err(payload) => run_panicked(shared, &spec, r.ec2.region(), started, &*payload),
                };
                report.retry = retry;
                let done = !report.worth_retrying();
                shared.status.record(&report);
                notifier.submit(report, &shared.metrics);
                (!done).then(|| r.clone())
            }
        });
        pending = futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect();
        drop(held);
        drop(permit);
        if pending.is_empty() {
            break;
        }
        retry += 1;
        let now = Utc::now();
        let base = shared.config.daemon.retry_backoff;
        let Some(at) = scheduler::retry_at(retry, now, next_fire, base, rand::random()) else {
            break;
        };
        retry_scheduled(&shared, &policy.name, &firing, slot, retry, at, &pending);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep((at - now).to_std().unwrap_or_default()) => {}
        }
    }
}

/// The event "a run panicked": its log line, its metrics (a failed run, and a panic), and the report that
/// `/status` and the digest show, with the panic's message as the run's fatal problem (code `panic`).
fn run_panicked(
    shared: &Shared,
    spec: &RunSpec<'_>,
    region: &str,
    started: DateTime<Utc>,
    payload: &(dyn std::any::Any + Send),
) -> RunReport {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    let policy = &spec.policy.name;
    tracing::error!(policy = %policy, schedules = %spec.firing.join(","), region, slot = %schedule::format_slot(spec.slot), panic = %what, "run panicked: recorded as failed; the schedule fires again as usual");
    shared.metrics.run_panicked(policy, &spec.firing);
    let mut report = RunReport::new(
        worker::new_run_id(),
        policy,
        spec.firing.clone(),
        region,
        spec.slot,
        started,
    );
    report.finished_at = Utc::now();
    report.account = spec.account.to_string();
    report.fatal = Some(Problem {
        resource: region.to_string(),
        operation: "run",
        code: "panic".into(),
        aws: None,
        message: format!(
            "the run panicked: {what}. A bug in snapwarden: please report it with the log lines around it; \
             what the run did before is kept, and the next run of the slot does the rest"
        ),
    });
    report.retention_skipped = Some("the run panicked".into());
    report
}

/// The event "this slot is tried again at `at`": its log line, metric and `/status` entry.
fn retry_scheduled(
    shared: &Shared,
    policy: &str,
    firing: &[String],
    slot: DateTime<Utc>,
    attempt: u32,
    at: DateTime<Utc>,
    regions: &[Arc<Region>],
) {
    let names: Vec<String> = regions.iter().map(|r| r.scope().to_string()).collect();
    tracing::warn!(policy, schedules = %firing.join(","), slot = %schedule::format_slot(slot), attempt, next_at = %schedule::format_slot(at), regions = %names.join(","), "run failed, partial or left copies deferred: retrying the slot");
    for s in firing {
        shared.metrics.run_retry(policy, s);
        let retry = status::Retry {
            slot,
            attempt,
            next_at: at,
        };
        shared.status.set_retry(policy, s, Some(retry));
    }
}

/// Waits for this slot's host lock while another process (a `once`) holds it: that one may create the slot's
/// snapshots, and this run then finds them done instead of doubling them. A lock directory that cannot be used
/// is warned about and the run goes ahead without it: backups come first.
async fn slot_lock(locks: &LockDir, policy: &str, slot: DateTime<Utc>) -> Option<Held> {
    let mut warned = false;
    loop {
        match locks.try_slot(policy, slot).await {
            Ok(held) => return Some(held),
            Err(Refused::Busy { holder, .. }) => {
                if !warned {
                    tracing::warn!(policy, slot = %schedule::format_slot(slot), %holder, "waiting for another process working on this slot");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e @ Refused::Io { .. }) => {
                tracing::warn!(policy, slot = %schedule::format_slot(slot), error = %e, "running without the host lock");
                return None;
            }
        }
    }
}

/// Runs the scheduler until `shutdown` is cancelled, then drains in-flight runs for up to the grace period.
/// Returns false if runs were still going when the grace period ended. The decisions are the pure
/// [`Scheduler`]'s; this loop reads the clock for it, carries out what it decided, and tells it when fires end.
pub async fn schedule_loop(
    shared: Shared,
    regions: impl Into<Serving>,
    notifier: Notifier,
    catch_up: bool,
    shutdown: CancellationToken,
) -> bool {
    let tz = shared.config.daemon.timezone;
    let tracker = TaskTracker::new();
    let gate = Arc::new(Semaphore::new(shared.config.daemon.max_concurrent_runs));
    let (done, mut ended) = mpsc::unbounded_channel();
    // Spelled out: tests/deploy_files.rs would read the method-call form as a call of SNS Subscribe.
    let mut live = tokio::sync::watch::Sender::subscribe(&shared.live);
    let policies = live.borrow_and_update().policies.clone();
    for p in &policies {
        for s in &p.schedules {
            shared.status.register(&p.name, &s.name, s.cron.as_str());
        }
    }
    // The organisation refresh may change the pairs; each fire takes those of its time.
    let Serving(mut watched) = regions.into();
    let mut regions = watched.borrow_and_update().clone();
    let scopes = regions.iter().map(|r| r.scope()).collect();
    let now = Utc::now();
    let mut scheduler = Scheduler::new(policies, scopes, tz, now);
    let act = |tick: Tick, regions: &[Arc<Region>]| {
        match tick.jump {
            Some(Jump::Pause(gap)) => {
                tracing::warn!(paused_seconds = gap.num_seconds(), "the scheduler did not run for a while (suspend, or the clock set forward): each policy fires its latest slot once")
            }
            Some(Jump::Back(by)) => {
                tracing::warn!(
                    back_seconds = by.num_seconds(),
                    "the clock was set back: next fires planned again from the new time"
                )
            }
            None => {}
        }
        for skip in &tick.skips {
            fire_skipped(&shared, skip);
        }
        for f in tick.fires {
            tracing::info!(policy = %f.policy.name, schedules = %f.schedules.join(","), slot = %schedule::format_slot(f.slot), why = f.why.as_str(), "firing");
            let running = Running::start(&shared.status, &f, &done);
            let pending = f
                .units()
                .filter_map(|u| regions.iter().find(|r| r.scope() == *u.scope))
                .cloned()
                .collect();
            tracker.spawn(fire(
                shared.clone(),
                pending,
                notifier.clone(),
                f,
                running,
                gate.clone(),
                shutdown.clone(),
            ));
        }
    };
    if catch_up {
        act(scheduler.catch_up(now), &regions);
    }
    loop {
        let now = Utc::now();
        shared.health.beat(now);
        shared.sd.tick(std::time::Instant::now());
        while let Ok((policy, schedules)) = ended.try_recv() {
            scheduler.finished(&policy, &schedules);
        }
        act(scheduler.tick(now), &regions);
        for p in scheduler.policies() {
            for s in &p.schedules {
                let n = s.cron.next_after(now, tz);
                shared.status.set_next(&p.name, &s.name, n);
                if let Some(n) = n {
                    shared.metrics.next_run(&p.name, &s.name, n);
                }
            }
        }
        let wait = scheduler.next_due().map_or(Duration::from_secs(1), |t| {
            (t - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(1))
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            Ok(()) = live.changed() => {
                let config = live.borrow_and_update().clone();
                scheduler.reload(config.policies.clone(), Utc::now());
                reregister(&shared, &regions, &config);
            }
            Ok(()) = watched.changed() => {
                regions = watched.borrow_and_update().clone();
                scheduler.set_scopes(regions.iter().map(|r| r.scope()).collect());
                reregister(&shared, &regions, &live.borrow().clone());
            }
        }
    }
    shared.sd.stopping();
    tracker.close();
    let grace = shared.config.daemon.shutdown_grace;
    tracing::info!(
        in_flight = tracker.len(),
        grace_seconds = grace.as_secs_f64(),
        "shutting down: no new runs; waiting for in-flight runs"
    );
    let drained = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    if !drained {
        stop_mutations(&shared, tracker.len()).await;
    }
    drained
}

/// The event "a fire of this schedule is skipped: its previous run is still going": log line, metric, `/status`.
fn fire_skipped(shared: &Shared, skip: &scheduler::Skip) {
    shared.metrics.fire_skipped(&skip.policy, &skip.schedule);
    shared.status.skipped(&skip.policy, &skip.schedule);
    tracing::warn!(policy = %skip.policy, schedule = %skip.schedule, slot = %schedule::format_slot(skip.slot), "fire skipped: the previous run of this schedule is still going");
}

/// The grace period is over with runs still going: no mutating EC2 call starts from here on (a run's next create or
/// delete is refused and reported as not done), and the calls already sent are waited for, so that each is answered
/// (or times out, `aws.operation-timeout`) and logged before the process exits, and a restart's survey sees what
/// they made.
async fn stop_mutations(shared: &Shared, runs: usize) {
    let in_flight = shared.mutations.stop();
    tracing::error!(in_flight = runs, mutating_calls_in_flight = in_flight, "grace period over with runs still going; no new EC2 create, tag or delete starts; their slots are completed by catch-up at the next start");
    // The SDK's operation timeout bounds each call; the margin covers connecting and reading the answer.
    let bound = shared.config.aws.operation_timeout + shared.config.aws.connect_timeout;
    let waited = std::time::Instant::now();
    let answered = tokio::time::timeout(bound, shared.mutations.idle())
        .await
        .is_ok();
    tracing::info!(
        waited_for = in_flight,
        still_in_flight = shared.mutations.in_flight(),
        seconds = waited.elapsed().as_secs_f64(),
        answered,
        "mutating EC2 calls in flight at the end of the grace period: waited for their answers"
    );
}

/// `/status` and the metric series follow a reloaded config: new schedules appear, removed ones go (a running
/// one when its run ends), changed crons show their new text.
fn reregister(shared: &Shared, regions: &[Arc<Region>], config: &Config) {
    let keep = |policy: &str, schedule: &str| {
        config
            .policy(policy)
            .is_some_and(|p| p.schedule(schedule).is_some())
    };
    for (policy, schedules) in shared.status.snapshot() {
        for schedule in schedules.keys().filter(|s| !keep(&policy, s)) {
            shared.metrics.forget_schedule(&policy, schedule);
        }
    }
    shared.status.retain(keep);
    for p in &config.policies {
        for s in &p.schedules {
            shared.status.register(&p.name, &s.name, s.cron.as_str());
        }
    }
    let scopes: Vec<scheduler::Scope> = regions.iter().map(|r| r.scope()).collect();
    shared.metrics.init_series(config, &scopes, Utc::now());
}

/// What a [`reload`] did: the `outcome` label of `snapwarden_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The scheduler fires from the new policies from now on.
    Applied,
    /// The file has problems; nothing changed.
    Invalid,
    /// A key outside `[[policy]]` changed; nothing changed until a restart.
    NeedsRestart,
}

impl ReloadOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Invalid => "invalid",
            ReloadOutcome::NeedsRestart => "needs-restart",
        }
    }
}

/// Keys of `new` that differ from the running config outside `[[policy]]`. The AWS clients, the listener, the
/// logger, pacing and the run bounds were built from them at start, so they take a restart; policies are what a
/// reload is for.
pub(crate) fn restart_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.daemon, &new.daemon);
    let mut keys: Vec<&'static str> = [
        ("daemon.listen", a.listen == b.listen),
        ("daemon.timezone", a.timezone == b.timezone),
        (
            "daemon.max-concurrent-aws-calls",
            a.max_concurrent_aws_calls == b.max_concurrent_aws_calls,
        ),
        (
            "daemon.shutdown-grace",
            a.shutdown_grace == b.shutdown_grace,
        ),
        (
            "daemon.completion-deadline",
            a.completion_deadline == b.completion_deadline,
        ),
        (
            "daemon.max-concurrent-runs",
            a.max_concurrent_runs == b.max_concurrent_runs,
        ),
        ("daemon.retry-backoff", a.retry_backoff == b.retry_backoff),
        (
            "daemon.copy-concurrency",
            a.copy_concurrency == b.copy_concurrency,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(key, _)| key)
    .collect();
    // Whole sections, by value: a key added to one later is covered without a line here.
    if keys.is_empty() && a != b {
        keys.push("[daemon]");
    }
    for (section, changed) in [
        ("[aws]", running.aws != new.aws),
        ("[notify]", running.notify != new.notify),
        ("[log]", running.log != new.log),
    ] {
        if changed {
            keys.push(section);
        }
    }
    // Each destination has its backend and gate from the start; a policy may drop one or move between them.
    let destinations = |c: &Config| -> BTreeSet<String> {
        c.policies
            .iter()
            .flat_map(worker::destination_regions)
            .collect()
    };
    if !destinations(new).is_subset(&destinations(running)) {
        keys.push("policy.schedule.copy.region (a destination region the daemon started without)");
    }
    keys
}

/// SIGHUP: offers a re-read config to the scheduler. A valid file whose only changes are in `[[policy]]` is applied
/// for the next fires (runs in flight finish under the policy they started with); an invalid one, or one that
/// changes keys needing a restart, is refused whole with every problem logged, and the running config stays.
/// One log line and one count per reload; systemd sees RELOADING=1 until READY=1.
pub fn reload(shared: &Shared, loaded: std::result::Result<Config, ConfigError>) -> ReloadOutcome {
    shared.sd.reloading();
    let outcome = match loaded {
        Err(e) => {
            let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
            tracing::error!(file = %e.file.display(), problems = %problems.join("\n"), count = problems.len(), "config reload refused: the file has problems; the running config stays");
            ReloadOutcome::Invalid
        }
        Ok(new) => {
            let keys = restart_keys(&shared.config, &new);
            if keys.is_empty() {
                let old = shared.live.borrow().clone();
                let (added, removed, changed) = schedule_changes(&old, &new);
                tracing::info!(file = %new.source.display(), policies = new.policies.len(), added = %added.join(","), removed = %removed.join(","), changed = %changed.join(","), "config reloaded: it applies from the next fires; runs in flight finish under the old one");
                shared.live.send_replace(Arc::new(new));
                ReloadOutcome::Applied
            } else {
                tracing::error!(file = %new.source.display(), keys = %keys.join(", "), "config reload refused: these keys only change with a restart (systemctl restart snapwarden); nothing was applied");
                ReloadOutcome::NeedsRestart
            }
        }
    };
    shared.metrics.config_reload(outcome.as_str());
    shared.sd.ready();
    outcome
}

/// `policy/schedule` names added, removed and changed (any setting) between two configs, for the reload log.
fn schedule_changes(old: &Config, new: &Config) -> (Vec<String>, Vec<String>, Vec<String>) {
    let all = |c: &Config| -> std::collections::BTreeMap<String, String> {
        c.policies
            .iter()
            .flat_map(|p| {
                p.schedules.iter().map(move |s| {
                    // The schedule with its policy's target and settings: a change to either changes its runs.
                    let mut bare = p.clone();
                    bare.schedules.clear();
                    (format!("{}/{}", p.name, s.name), format!("{s:?}{bare:?}"))
                })
            })
            .collect()
    };
    let (a, b) = (all(old), all(new));
    let added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let changed = b
        .iter()
        .filter(|(k, v)| a.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (added, removed, changed)
}

/// The whole daemon: HTTP, notifier, scheduler; returns when shut down (true: clean).
pub async fn serve(
    shared: Shared,
    fleet: impl Into<Fleet>,
    publisher: Option<Arc<dyn Publisher>>,
    catch_up: bool,
    shutdown: CancellationToken,
) -> Result<bool> {
    let listen = shared.config.daemon.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::Other(format!(
            "cannot listen on {listen}: {e}; change daemon.listen"
        ))
    })?;
    tracing::info!(%listen, "HTTP listening");
    let http_stop = CancellationToken::new();
    let server = {
        let stop = http_stop.clone();
        let app = http::router(shared.app_state());
        tokio::spawn(http::serve(listener, app, shared.metrics.clone(), stop))
    };
    let window = shared.config.notify.dedup_window();
    let (notifier, notify_task) = Notifier::spawn(publisher, window, shared.metrics.clone());
    let fleet = fleet.into();
    let (regions, watched) = (fleet.regions(), fleet.watch());
    let scopes: Vec<scheduler::Scope> = regions.iter().map(|r| r.scope()).collect();
    shared
        .metrics
        .init_series(&shared.config, &scopes, Utc::now());
    // Lists the organisation every `refresh`; its first listing is in `fleet` already, before the catch-up.
    let refresh = tokio::spawn(fleet.run(shutdown.clone()));
    // Config, AWS clients and the listener are up: this is what systemd waits for.
    shared.sd.ready();
    let drained = schedule_loop(shared.clone(), watched, notifier, catch_up, shutdown).await;
    let _ = refresh.await;
    // The notifier drains once every sender (held by finished runs and the loop) is gone.
    let _ = tokio::time::timeout(NOTIFIER_DRAIN, notify_task).await;
    http_stop.cancel();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(daemon: &str, log: &str, policies: &str) -> Config {
        let text = format!("[daemon]\n{daemon}\n[log]\n{log}\n{policies}");
        crate::config::from_toml_str(std::path::Path::new("t.toml"), &text, &[]).unwrap()
    }

    fn policy(name: &str, cron: &str) -> String {
        format!(
            "[[policy]]\nname = \"{name}\"\ntarget = {{ resource = \"instance\", tags = {{ Backup = \"{name}\" }} }}\n\
             schedule = [{{ name = \"s\", cron = \"{cron}\", keep = {{ last = 3 }} }}]\n"
        )
    }

    #[test]
    fn only_policy_changes_reload_without_a_restart() {
        let running = config("", "", &policy("a", "0 4 * * *"));
        #[rustfmt::skip]
        let cases: &[(&str, Config, &[&str])] = &[
            ("same file", config("", "", &policy("a", "0 4 * * *")), &[]),
            ("policies added and changed", config("", "", &(policy("a", "0 5 * * *") + &policy("b", "@daily"))), &[]),
            ("listen", config("listen = \"127.0.0.1:9999\"", "", &policy("a", "0 4 * * *")), &["daemon.listen"]),
            ("two daemon keys", config("timezone = \"Europe/Berlin\"\nmax-concurrent-runs = 9", "", &policy("a", "0 4 * * *")),
                &["daemon.timezone", "daemon.max-concurrent-runs"]),
            ("log level", config("", "level = \"debug\"", &policy("a", "0 4 * * *")), &["[log]"]),
            ("a daemon key without a line of its own", config("lock-dir = \"/tmp/locks\"", "", &policy("a", "0 4 * * *")), &["[daemon]"]),
            ("copy concurrency", config("copy-concurrency = 5", "", &policy("a", "0 4 * * *")), &["daemon.copy-concurrency"]),
        ];
        for (name, new, want) in cases {
            assert_eq!(restart_keys(&running, new), *want, "{name}");
        }
    }

    #[test]
    fn a_new_copy_destination_needs_a_restart_and_a_dropped_one_does_not() {
        let copy = |regions: &[&str]| {
            let copies: String = regions
                .iter()
                .map(|r| {
                    format!("[[policy.schedule.copy]]\nregion = \"{r}\"\nkeep = {{ last = 2 }}\n")
                })
                .collect();
            config(
                "",
                "",
                &format!(
                    "[[policy]]\nname = \"a\"\ntarget = {{ resource = \"instance\", tags = {{ B = \"a\" }} }}\n\
                     [[policy.schedule]]\nname = \"s\"\ncron = \"0 4 * * *\"\nkeep = {{ last = 3 }}\n{copies}"
                ),
            )
        };
        let running = copy(&["eu-west-1", "eu-central-1"]);
        #[rustfmt::skip]
        let cases: &[(&str, Config, &[&str])] = &[
            ("same", copy(&["eu-west-1", "eu-central-1"]), &[]),
            ("one dropped", copy(&["eu-west-1"]), &[]),
            ("a new one", copy(&["eu-west-1", "eu-north-1"]),
                &["policy.schedule.copy.region (a destination region the daemon started without)"]),
        ];
        for (name, new, want) in cases {
            assert_eq!(restart_keys(&running, new), *want, "{name}");
        }
    }
}
