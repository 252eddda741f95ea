//! Wiring: AWS backends per region, the scheduler loop, run tasks, the HTTP server, signals and the shutdown
//! order. The scheduler is one task that ticks at least once a second (its tick is the `/healthz` heartbeat),
//! computes each policy's next fire instant with `schedule::next_group`, and spawns one run task per fire; a
//! schedule whose previous run is still going is skipped for that fire and counted. Shutdown: stop firing,
//! let in-flight runs finish within the grace period, then stop HTTP and flush alerts.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Policy};
use crate::ec2::pace::{PaceConfig, Paced};
use crate::ec2::{self, Ec2};
use crate::error::{Error, Result};
use crate::http::{self, AppState};
use crate::lock::{Held, LockDir, Refused};
use crate::metrics::Metrics;
use crate::notify::{Notifier, Publisher, SnsPublisher};
use crate::schedule::{self, Cron};
use crate::sdnotify::SdNotify;
use crate::status::{Health, StatusBoard};
use crate::worker::{self, Region, RunSpec};

/// How long the scheduler may stay silent before `/healthz` reports it stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// Shared parts of the process.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    pub health: Arc<Health>,
    /// systemd readiness, watchdog and stopping notices (no-ops outside systemd).
    pub sd: Arc<SdNotify>,
    /// Host-wide slot locks each run takes (`run` sets them; None for in-memory backends and tests).
    pub locks: Option<LockDir>,
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let health = Arc::new(Health::default());
        health.config_loaded.store(true, Relaxed);
        Shared {
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
            status: Arc::default(),
            health,
            sd: Arc::new(SdNotify::disabled()),
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

/// [`aws_regions`] with explicit pacing (tests shorten the gaps and backoffs).
pub async fn aws_regions_paced(shared: &Shared, pace: &PaceConfig) -> Result<Vec<Arc<Region>>> {
    let aws = &shared.config.aws;
    let names: Vec<Option<&str>> = if aws.regions.is_empty() {
        vec![None]
    } else {
        aws.regions.iter().map(|r| Some(r.as_str())).collect()
    };
    let permits = Arc::new(Semaphore::new(
        shared.config.daemon.max_concurrent_aws_calls,
    ));
    let mut out = Vec::new();
    for name in names {
        let conf = ec2::sdk::sdk_config(aws, name).await;
        // `Paced` is the one retrier for EC2 and STS: an SDK retry would be a request its buckets never saw.
        let conf = conf
            .to_builder()
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        ec2::sdk::check_sdk_config(&conf, Duration::from_secs(10)).await?;
        shared.health.credentials_resolved.store(true, Relaxed);
        let backend: Arc<dyn Ec2> = Arc::new(ec2::sdk::SdkEc2::new(&conf));
        out.push(paced_region(shared, backend, permits.clone(), pace.clone()).await?);
    }
    Ok(out)
}

/// Wraps a backend with the shared concurrency bound and metrics and resolves its account. Unpaced: for the
/// in-memory backends (`demo`, tests), which have no AWS budget to protect and fire every few seconds.
pub async fn region(
    shared: &Shared,
    backend: Arc<dyn Ec2>,
    permits: Arc<Semaphore>,
) -> Result<Arc<Region>> {
    let ec2: Arc<dyn Ec2> = Arc::new(ec2::Instrumented::new(
        backend,
        permits,
        shared.metrics.clone(),
    ));
    resolve(shared, ec2).await
}

/// [`region`] behind one [`Paced`] layer, outermost, so every retry is paced and counted as an attempt and a call
/// sleeping in backoff holds no concurrency permit. One per region, shared by all runs: AWS's buckets are per
/// account per region.
pub async fn paced_region(
    shared: &Shared,
    backend: Arc<dyn Ec2>,
    permits: Arc<Semaphore>,
    pace: PaceConfig,
) -> Result<Arc<Region>> {
    let instrumented: Arc<dyn Ec2> = Arc::new(ec2::Instrumented::new(
        backend,
        permits,
        shared.metrics.clone(),
    ));
    resolve(shared, Arc::new(Paced::new(instrumented, pace))).await
}

async fn resolve(shared: &Shared, ec2: Arc<dyn Ec2>) -> Result<Arc<Region>> {
    let account_id = ec2.account_id().await?;
    // An answered call proves the credentials too (the fake backend needs none).
    shared.health.credentials_resolved.store(true, Relaxed);
    shared.health.aws_reachable.store(true, Relaxed);
    Ok(Arc::new(Region { ec2, account_id }))
}

pub async fn sns_publisher(config: &Config) -> Option<Arc<dyn Publisher>> {
    let sns = config.notify.sns.as_ref()?;
    let conf = ec2::sdk::sdk_config(&config.aws, Some(&sns.region)).await;
    Some(Arc::new(SnsPublisher::new(&conf, &sns.topic_arn)))
}

fn crons(policy: &Policy) -> Vec<&Cron> {
    policy.schedules.iter().map(|s| &s.cron).collect()
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

/// One fire of one policy in every region; returns when all regions are done.
async fn fire(
    shared: Shared,
    regions: Arc<Vec<Arc<Region>>>,
    notifier: Notifier,
    policy: Policy,
    slot: DateTime<Utc>,
    firing: Vec<String>,
) {
    let _slot_lock = match &shared.locks {
        Some(locks) => slot_lock(locks, &policy.name, slot).await,
        None => None,
    };
    let runs = regions.iter().map(|r| {
        let spec = RunSpec {
            policy: &policy,
            firing: firing.clone(),
            slot,
            account_id: &r.account_id,
            concurrency: shared.config.daemon.max_concurrent_aws_calls,
            dry_run: false,
            completion: worker::Completion::from_deadline(shared.config.daemon.completion_deadline),
            explain: false,
        };
        let (shared, notifier) = (&shared, &notifier);
        async move {
            let outcome = worker::run(r.ec2.as_ref(), &spec, &shared.metrics, Utc::now).await;
            shared.status.record(&outcome.report);
            notifier.submit(outcome.report, &shared.metrics);
        }
    });
    futures::future::join_all(runs).await;
    for s in &firing {
        shared.status.finish(&policy.name, s);
    }
}

/// Waits for this slot's host lock while another process (a `once`) holds it: that one may create the slot's
/// snapshots, and this run then finds them done instead of doubling them. A lock directory that cannot be used
/// is warned about and the run goes ahead without it: backups come first.
async fn slot_lock(locks: &LockDir, policy: &str, slot: DateTime<Utc>) -> Option<Held> {
    let mut warned = false;
    loop {
        match locks.try_slot(policy, slot) {
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
/// Returns false if runs were still going when the grace period ended.
pub async fn schedule_loop(
    shared: Shared,
    regions: Arc<Vec<Arc<Region>>>,
    notifier: Notifier,
    catch_up: bool,
    shutdown: CancellationToken,
) -> bool {
    let tz = shared.config.daemon.timezone;
    let tracker = TaskTracker::new();
    let policies = shared.config.policies.clone();
    for p in &policies {
        for s in &p.schedules {
            shared.status.register(&p.name, &s.name, s.cron.as_str());
        }
    }
    let start_fire = |policy: &Policy, slot: DateTime<Utc>, names: Vec<String>, why: &str| {
        let mut firing = Vec::new();
        for name in names {
            if shared.status.try_start(&policy.name, &name) {
                firing.push(name);
            } else {
                shared
                    .metrics
                    .skipped_fires
                    .with_label_values(&[&policy.name, &name])
                    .inc();
                tracing::warn!(policy = %policy.name, schedule = %name, slot = %schedule::format_slot(slot), "fire skipped: the previous run of this schedule is still going");
            }
        }
        if firing.is_empty() {
            return;
        }
        tracing::info!(policy = %policy.name, schedules = %firing.join(","), slot = %schedule::format_slot(slot), why, "firing");
        tracker.spawn(fire(
            shared.clone(),
            regions.clone(),
            notifier.clone(),
            policy.clone(),
            slot,
            firing,
        ));
    };

    let now = Utc::now();
    if catch_up {
        // The latest slot of each policy: runs already done for it find their snapshots and do nothing.
        for p in &policies {
            if let Some((slot, idx)) = schedule::latest_group(&crons(p), now, tz) {
                start_fire(
                    p,
                    slot,
                    idx.iter().map(|&i| p.schedules[i].name.clone()).collect(),
                    "catch-up",
                );
            }
        }
    }
    let mut next: Vec<Option<DateTime<Utc>>> = policies
        .iter()
        .map(|p| schedule::next_group(&crons(p), now, tz).map(|g| g.0))
        .collect();
    loop {
        let now = Utc::now();
        shared.health.beat(now);
        shared.sd.tick(std::time::Instant::now());
        for (i, p) in policies.iter().enumerate() {
            if next[i].is_some_and(|t| t <= now) {
                // The most recent slot, not every missed one: after a suspend, catch up once.
                if let Some((slot, idx)) = schedule::latest_group(&crons(p), now, tz) {
                    start_fire(
                        p,
                        slot,
                        idx.iter().map(|&i| p.schedules[i].name.clone()).collect(),
                        "schedule",
                    );
                }
                next[i] = schedule::next_group(&crons(p), now, tz).map(|g| g.0);
            }
            for s in &p.schedules {
                let n = s.cron.next_after(now, tz);
                shared.status.set_next(&p.name, &s.name, n);
                if let Some(n) = n {
                    shared
                        .metrics
                        .next_run
                        .with_label_values(&[&p.name, &s.name])
                        .set(n.timestamp() as f64);
                }
            }
        }
        let until = next.iter().flatten().min().copied();
        let wait = until.map_or(Duration::from_secs(1), |t| {
            (t - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(1))
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
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
        tracing::error!(in_flight = tracker.len(), "grace period over with runs still going; their slots are completed by catch-up at the next start");
    }
    drained
}

/// The whole daemon: HTTP, notifier, scheduler; returns when shut down (true: clean).
pub async fn serve(
    shared: Shared,
    regions: Vec<Arc<Region>>,
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
    let window = shared
        .config
        .notify
        .sns
        .as_ref()
        .map_or(Duration::from_secs(6 * 3600), |s| s.dedup_window);
    let (notifier, notify_task) = Notifier::spawn(publisher, window, shared.metrics.clone());
    let region_names: Vec<String> = regions.iter().map(|r| r.ec2.region().to_string()).collect();
    shared
        .metrics
        .init_series(&shared.config, &region_names, Utc::now());
    // Config, AWS clients and the listener are up: this is what systemd waits for.
    shared.sd.ready();
    let drained = schedule_loop(
        shared.clone(),
        Arc::new(regions),
        notifier,
        catch_up,
        shutdown,
    )
    .await;
    // The notifier drains once every sender (held by finished runs and the loop) is gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), notify_task).await;
    http_stop.cancel();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    Ok(drained)
}
