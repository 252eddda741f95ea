//! Every Prometheus metric snapwarden exports, in one place, with one method per event so the metric and its
//! log line cannot drift apart. Labels are bounded: policy and schedule names come from the config, region from
//! the config or SDK, account from the config or the organisation's account list (`worker::Region::account`; a
//! departed account's series go with [`Metrics::forget_account`]), everything else from enums (`Error::kind`, run
//! results). Never an id or a message. Every series about a place carries `account` next to `region`: two
//! accounts in one region are two places.
//!
//! Staleness is stored as timestamps and turned into ages at scrape time ([`Metrics::render`]), so the figure
//! keeps growing while snapshot creation is broken instead of freezing at the last run's value.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::ec2::op::Op;
use crate::error::Error;
use crate::report::RunResult;
use crate::retention::{Action, Decision, Reason};

/// Every label `retention::Reason::as_str` gives a kept snapshot, so each series exists (at 0) from the first plan.
const KEEP_REASONS: &[&str] = Reason::LABELS.split_at(Reason::KEEP_LABELS).0;

pub struct Metrics {
    registry: Registry,
    pub(crate) snapshots_created: IntCounterVec,
    pub snapshots_deleted: IntCounterVec,
    pub snapshots_failed: IntCounterVec,
    pub(crate) runs: IntCounterVec,
    pub(crate) run_duration: HistogramVec,
    pub(crate) last_success: GaugeVec,
    pub(crate) next_run: GaugeVec,
    pub(crate) managed_snapshots: IntGaugeVec,
    staleness: GaugeVec,
    pub(crate) staleness_threshold: GaugeVec,
    unprotected: IntGaugeVec,
    pub(crate) aws_requests: IntCounterVec,
    pub aws_throttles: IntCounterVec,
    pub notifications: IntCounterVec,
    pub(crate) skipped_fires: IntCounterVec,
    /// Runs that panicked (each also counted as a failed run in `runs`).
    pub(crate) run_panics: IntCounterVec,
    /// Retries of a failed or partial run within its slot, counted when scheduled.
    pub(crate) run_retries: IntCounterVec,
    /// SIGHUP reloads by outcome: applied, invalid, needs-restart.
    pub(crate) config_reloads: IntCounterVec,
    pub skipped_resources: IntCounterVec,
    pub kept_in_use: IntCounterVec,
    /// Snapshots a run left `pending` at its completion deadline (the next run re-checks them).
    pub(crate) snapshots_incomplete: IntCounterVec,
    kept_by_reason: IntGaugeVec,
    deletions_blocked: IntCounterVec,
    orphaned: IntGaugeVec,
    /// HTTP connections closed at once: over the connection cap, or an accept that failed (out of descriptors).
    pub(crate) http_refused: IntCounterVec,
    /// SSM invocations (one per instance per command) by document and outcome.
    ssm_invocations: IntCounterVec,
    /// Pre script done → post script done, per instance.
    freeze_window: HistogramVec,
    /// Snapshots of VSS or script policies by kind: app-consistent, or a crash-consistent fallback.
    app_consistent: IntCounterVec,
    /// (policy, schedule, account, region) -> that place's freshness.
    freshness: Mutex<HashMap<(String, String, String, String), Freshness>>,
    /// Disaster-recovery copies by outcome: created, failed, deferred.
    copies: IntCounterVec,
    copies_pending: IntGaugeVec,
    dr_staleness: GaugeVec,
    /// (policy, schedule, account, source region, destination) -> the oldest newest-completed copy across the schedule's
    /// volumes, turned into an age at scrape time like [`Metrics::staleness`].
    dr_freshness: Mutex<HashMap<DrSeries, DateTime<Utc>>>,
    /// Listings of the organisation (`[aws.organization]`) by outcome: success, failure.
    organization_refreshes: IntCounterVec,
    /// Accounts of the organisation served after the last successful listing.
    organization_accounts: IntGaugeVec,
}

/// (policy, schedule, account, source region, destination).
type DrSeries = (String, String, String, String, String);

/// Per policy/schedule/region: the oldest "newest completed snapshot" over its targeted volumes, and how many
/// targeted volumes have no completed snapshot at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    pub(crate) oldest_newest: Option<DateTime<Utc>>,
    pub(crate) unprotected: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let pss = &["policy", "schedule", "account", "region"];
        let m = Metrics {
            snapshots_created: counter(&registry, "snapshots_created_total", "Snapshots created (per schedule they serve)", pss),
            snapshots_deleted: counter(&registry, "snapshots_deleted_total", "Snapshots deleted by retention (per schedule they served)", pss),
            snapshots_failed: counter(
                &registry,
                "snapshots_failed_total",
                "Snapshot creations or deletions that failed",
                &["policy", "schedule", "account", "region", "operation"],
            ),
            runs: counter(&registry, "runs_total", "Finished runs by kind (snapshot, retention) and result", &["policy", "schedule", "kind", "result"]),
            run_duration: {
                let h = HistogramVec::new(
                    HistogramOpts::new("snapwarden_run_duration_seconds", "Run duration")
                        .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
                    &["policy", "kind"],
                )
                .expect("valid histogram");
                registry.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            last_success: gauge(
                &registry,
                "last_success_timestamp_seconds",
                "When a run of this job last succeeded",
                &["policy", "schedule", "kind"],
            ),
            next_run: gauge(&registry, "next_run_timestamp_seconds", "When the schedule fires next", &["policy", "schedule"]),
            managed_snapshots: int_gauge(
                &registry,
                "managed_snapshots",
                "Managed snapshots seen by the last run",
                &["policy", "account", "region"],
            ),
            staleness: gauge(
                &registry,
                "staleness_seconds",
                "Age of the oldest newest-completed snapshot across the schedule's targeted volumes in the account (the RPO figure)",
                &["policy", "schedule", "account"],
            ),
            staleness_threshold: gauge(
                &registry,
                "staleness_threshold_seconds",
                "Staleness above which the schedule has missed its objective: twice its interval between fires",
                &["policy", "schedule"],
            ),
            unprotected: int_gauge(
                &registry,
                "unprotected_volumes",
                "Targeted volumes of the account with no completed snapshot of the schedule",
                &["policy", "schedule", "account"],
            ),
            aws_requests: counter(&registry, "aws_requests_total", "AWS API calls by operation and outcome", &["operation", "outcome"]),
            aws_throttles: counter(&registry, "aws_throttles_total", "AWS requests answered throttled, each attempt (retries included)", &["operation"]),
            notifications: counter(&registry, "notifications_total", "SNS notifications by outcome", &["outcome"]),
            skipped_fires: counter(
                &registry,
                "skipped_fires_total",
                "Fires skipped because the schedule's previous run was still going",
                &["policy", "schedule"],
            ),
            run_panics: counter(
                &registry,
                "run_panics_total",
                "Runs that panicked (a bug): each is a failed run, alerted with its message; the schedule fires on",
                &["policy", "schedule"],
            ),
            run_retries: counter(
                &registry,
                "run_retries_total",
                "Retries of a failed or partial run of the latest slot, scheduled before the schedule's next fire",
                &["policy", "schedule"],
            ),
            config_reloads: counter(&registry, "config_reloads_total", "Config reloads (SIGHUP) by outcome", &["outcome"]),
            skipped_resources: counter(
                &registry,
                "skipped_resources_total",
                "Targets skipped this run, by reason: a bad count-tag value, or a pending-snapshot limit (deferred)",
                &["policy", "schedule", "reason"],
            ),
            kept_in_use: counter(
                &registry,
                "snapshots_kept_in_use_total",
                "Deletions refused because the snapshot backs an AMI",
                &["policy", "account", "region"],
            ),
            snapshots_incomplete: counter(
                &registry,
                "snapshots_pending_at_deadline_total",
                "Snapshots still pending when their run's completion deadline passed (re-checked by the next run)",
                &["policy", "account", "region"],
            ),
            kept_by_reason: int_gauge(
                &registry,
                "kept_snapshots",
                "Snapshots the last plan kept, by reason (a snapshot kept for several reasons counts under each)",
                &["policy", "account", "region", "reason"],
            ),
            deletions_blocked: counter(
                &registry,
                "deletions_blocked_total",
                "Deletions a deletion cap (max-deletes-per-run, max-delete-fraction) stopped",
                &["policy", "account", "region"],
            ),
            orphaned: int_gauge(
                &registry,
                "orphaned_snapshots",
                "Managed snapshots of volumes that are gone or no longer targeted",
                &["policy", "account", "region"],
            ),
            http_refused: counter(
                &registry,
                "http_connections_refused_total",
                "HTTP connections refused, by reason: connection-cap (closed at once, not queued) or accept-error",
                &["reason"],
            ),
            ssm_invocations: counter(
                &registry,
                "ssm_invocations_total",
                "SSM Run Command invocations (one per instance per command) by document and outcome",
                &["policy", "document", "outcome"],
            ),
            freeze_window: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "snapwarden_freeze_window_seconds",
                        "Per instance, from its pre script done to its post script done: how long it was held still",
                    )
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]),
                    &["policy"],
                )
                .expect("valid histogram");
                registry.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            app_consistent: counter(
                &registry,
                "app_consistent_snapshots_total",
                "Snapshots of VSS or script policies by kind: app-consistent, or fallback (crash-consistent)",
                &["policy", "kind"],
            ),
            freshness: Mutex::new(HashMap::new()),
            copies: counter(
                &registry,
                "copies_total",
                "Disaster-recovery copies by outcome: created (sent), failed (refused, or ended in error), deferred to the next run",
                &["policy", "schedule", "account", "region", "destination", "outcome"],
            ),
            copies_pending: int_gauge(
                &registry,
                "copies_pending",
                "The policy's copies of the region's snapshots still pending in the destination after the last run",
                &["policy", "account", "region", "destination"],
            ),
            dr_staleness: gauge(
                &registry,
                "dr_staleness_seconds",
                "Age of the oldest newest-completed copy in the destination across the schedule's volumes (the RPO after losing the source region)",
                &["policy", "schedule", "account", "region", "destination"],
            ),
            dr_freshness: Mutex::new(HashMap::new()),
            organization_refreshes: counter(
                &registry,
                "organization_refreshes_total",
                "Listings of the AWS organisation by outcome: success, or failure (the accounts served stay as they were)",
                &["outcome"],
            ),
            organization_accounts: int_gauge(
                &registry,
                "organization_accounts",
                "Accounts of the AWS organisation served (not counting the own account and [[aws.account]] entries)",
                &[],
            ),
            registry,
        };
        for reason in ["connection-cap", "accept-error"] {
            m.http_refused.with_label_values(&[reason]);
        }
        let build = int_gauge(&m.registry, "build_info", "Build information", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// Creates every series whose labels are known from the config, at zero, so dashboards and `rate()` alerts
    /// see a value from the first scrape instead of an absent series. A policy's place series exist in the
    /// (account, region) scopes it serves only (`Policy::serves`): a policy limited to one account shows no
    /// zeros for the others.
    pub(crate) fn init_series(
        &self,
        config: &crate::config::Config,
        scopes: &[crate::scheduler::Scope],
        now: DateTime<Utc>,
    ) {
        let tz = config.daemon.timezone;
        for p in &config.policies {
            let served: Vec<(&str, &str)> = scopes
                .iter()
                .filter(|sc| p.serves(&sc.account, sc.own))
                .map(|sc| (sc.account.as_str(), sc.region.as_str()))
                .collect();
            for &(a, r) in &served {
                let labels = [p.name.as_str(), a, r];
                self.kept_in_use.with_label_values(&labels);
                self.snapshots_incomplete.with_label_values(&labels);
                self.deletions_blocked.with_label_values(&labels);
                self.orphaned.with_label_values(&labels);
                self.managed_snapshots.with_label_values(&labels);
            }
            if p.vss.is_some() || p.scripts.is_some() {
                for kind in ["app-consistent", "fallback"] {
                    self.app_consistent.with_label_values(&[&p.name, kind]);
                }
            }
            if p.scripts.as_ref().is_some_and(|s| s.post.is_some()) {
                self.freeze_window.with_label_values(&[&p.name]);
            }
            for s in &p.schedules {
                let (pn, sn) = (p.name.as_str(), s.name.as_str());
                for &(a, r) in &served {
                    self.snapshots_created.with_label_values(&[pn, sn, a, r]);
                    self.snapshots_deleted.with_label_values(&[pn, sn, a, r]);
                    for op in ["create", "complete", "delete"] {
                        self.snapshots_failed.with_label_values(&[pn, sn, a, r, op]);
                    }
                }
                for job in ["snapshot", "retention"] {
                    for result in ["success", "partial", "failure"] {
                        self.runs.with_label_values(&[pn, sn, job, result]);
                    }
                }
                self.skipped_fires.with_label_values(&[pn, sn]);
                self.run_retries.with_label_values(&[pn, sn]);
                self.run_panics.with_label_values(&[pn, sn]);
                for reason in ["bad-count-tag", "pending-limit"] {
                    self.skipped_resources.with_label_values(&[pn, sn, reason]);
                }
                for (&(a, r), c) in served
                    .iter()
                    .flat_map(|ar| s.copies.iter().map(move |c| (ar, c)))
                {
                    for outcome in ["created", "failed", "deferred"] {
                        self.copies
                            .with_label_values(&[pn, sn, a, r, &c.region, outcome]);
                    }
                    self.copies_pending
                        .with_label_values(&[pn, a, r, &c.region]);
                }
                let interval = s
                    .cron
                    .latest_at_or_before(now, tz)
                    .zip(s.cron.next_after(now, tz))
                    .map(|(a, b)| (b - a).num_seconds());
                if let Some(i) = interval {
                    self.staleness_threshold
                        .with_label_values(&[pn, sn])
                        .set(2.0 * i as f64);
                }
            }
        }
        let uses_ssm = config
            .policies
            .iter()
            .any(|p| p.vss.is_some() || p.scripts.is_some());
        let ssm = uses_ssm.then_some(Op::SSM).into_iter().flatten();
        let copies = config
            .policies
            .iter()
            .flat_map(|p| &p.schedules)
            .any(|s| !s.copies.is_empty());
        let copy = copies.then_some(Op::CopySnapshot);
        for op in Op::EC2.into_iter().chain(ssm).chain(copy).map(Op::name) {
            self.aws_requests.with_label_values(&[op, "ok"]);
            self.aws_throttles.with_label_values(&[op]);
        }
        for outcome in [
            "sent",
            "failed",
            "deduplicated",
            "disabled",
            "dropped",
            "superseded",
        ] {
            self.notifications.with_label_values(&[outcome]);
        }
        for outcome in ["applied", "invalid", "needs-restart"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
    }

    /// Drops the gauges of a schedule a reload removed, so neither its next fire nor its growing staleness
    /// lingers (and alerts); its counters stay, as counters do.
    pub(crate) fn forget_schedule(&self, policy: &str, schedule: &str) {
        let _ = self.next_run.remove_label_values(&[policy, schedule]);
        let _ = self
            .staleness_threshold
            .remove_label_values(&[policy, schedule]);
        self.forget_freshness(|p, s, _| (p, s) == (policy, schedule));
    }

    /// Drops every series of an account the daemon no longer serves (it left the organisation, or the config):
    /// its counters too, since nothing will count there again and each departed account would otherwise stay
    /// in every scrape for the life of the process.
    pub fn forget_account(&self, account: &str) {
        forget_account_in(&self.snapshots_created, account);
        forget_account_in(&self.snapshots_deleted, account);
        forget_account_in(&self.snapshots_failed, account);
        forget_account_in(&self.managed_snapshots, account);
        forget_account_in(&self.kept_in_use, account);
        forget_account_in(&self.snapshots_incomplete, account);
        forget_account_in(&self.kept_by_reason, account);
        forget_account_in(&self.deletions_blocked, account);
        forget_account_in(&self.orphaned, account);
        forget_account_in(&self.copies, account);
        forget_account_in(&self.copies_pending, account);
        self.forget_freshness(|_, _, a| a == account);
    }

    /// Forgets the freshness (and DR freshness) of every (policy, schedule, account) `gone` picks, with their
    /// staleness series, so a forgotten place neither shows nor keeps ageing into an alert.
    fn forget_freshness(&self, gone: impl Fn(&str, &str, &str) -> bool) {
        self.freshness
            .lock()
            .expect("freshness poisoned")
            .retain(|(p, s, a, _), _| {
                if !gone(p, s, a) {
                    return true;
                }
                let _ = self.staleness.remove_label_values(&[p, s, a]);
                let _ = self.unprotected.remove_label_values(&[p, s, a]);
                false
            });
        self.dr_freshness
            .lock()
            .expect("dr freshness poisoned")
            .retain(|(p, s, a, region, destination), _| {
                if !gone(p, s, a) {
                    return true;
                }
                let _ = self
                    .dr_staleness
                    .remove_label_values(&[p, s, a, region, destination]);
                false
            });
    }

    /// A run of `schedules` panicked: a failed snapshot and retention run, and a panic.
    pub(crate) fn run_panicked(&self, policy: &str, schedules: &[String]) {
        for s in schedules {
            for job in ["snapshot", "retention"] {
                self.runs
                    .with_label_values(&[policy, s, job, "failure"])
                    .inc();
            }
            self.run_panics.with_label_values(&[policy, s]).inc();
        }
    }

    /// `n` alerts ended with `outcome` (sent, failed, deduplicated, disabled, superseded, dropped).
    pub(crate) fn notified(&self, outcome: &'static str, n: u64) {
        self.notifications.with_label_values(&[outcome]).inc_by(n);
    }

    pub(crate) fn aws_request(&self, operation: Op, error: Option<&Error>) {
        let outcome = error.map_or("ok", Error::kind);
        self.aws_requests
            .with_label_values(&[operation.name(), outcome])
            .inc();
        if error.is_some_and(Error::is_throttle) {
            self.aws_throttles
                .with_label_values(&[operation.name()])
                .inc();
        }
    }

    /// Kept-by-reason, cap blocks and orphans from one retention plan.
    pub(crate) fn record_plan(&self, policy: &str, account: &str, region: &str, plan: &KeptTally) {
        for (reason, &n) in KEEP_REASONS.iter().zip(&plan.by_reason) {
            self.kept_by_reason
                .with_label_values(&[policy, account, region, reason])
                .set(n);
        }
        self.deletions_blocked
            .with_label_values(&[policy, account, region])
            .inc_by(plan.blocked);
        self.orphaned
            .with_label_values(&[policy, account, region])
            .set(plan.orphans);
    }

    pub(crate) fn set_freshness(
        &self,
        policy: &str,
        schedule: &str,
        account: &str,
        region: &str,
        f: Freshness,
    ) {
        let key = (
            policy.to_string(),
            schedule.to_string(),
            account.to_string(),
            region.to_string(),
        );
        self.freshness
            .lock()
            .expect("freshness poisoned")
            .insert(key, f);
    }

    /// Staleness per policy/schedule across accounts and regions, as of `now`: (seconds, unprotected volumes).
    pub fn staleness(&self, now: DateTime<Utc>) -> HashMap<(String, String), (Option<f64>, usize)> {
        self.staleness_by(now, |(p, s, _, _)| (p.clone(), s.clone()))
    }

    /// The worst staleness and the unprotected volumes of the places `key` puts together.
    fn staleness_by<K: std::hash::Hash + Eq>(
        &self,
        now: DateTime<Utc>,
        key: impl Fn(&(String, String, String, String)) -> K,
    ) -> HashMap<K, (Option<f64>, usize)> {
        let mut out: HashMap<K, (Option<f64>, usize)> = HashMap::new();
        for (place, f) in self.freshness.lock().expect("freshness poisoned").iter() {
            let entry = out.entry(key(place)).or_default();
            entry.1 += f.unprotected;
            if let Some(t) = f.oldest_newest {
                let age = (now - t).num_milliseconds().max(0) as f64 / 1000.0;
                entry.0 = Some(entry.0.map_or(age, |a: f64| a.max(age)));
            }
        }
        out
    }

    /// The text exposition, with staleness brought up to `now` first.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        for ((policy, schedule, account, region, destination), at) in self
            .dr_freshness
            .lock()
            .expect("dr freshness poisoned")
            .iter()
        {
            let age = (now - *at).num_milliseconds().max(0) as f64 / 1000.0;
            self.dr_staleness
                .with_label_values(&[policy, schedule, account, region, destination])
                .set(age);
        }
        let per_account = self.staleness_by(now, |(p, s, a, _)| [p.clone(), s.clone(), a.clone()]);
        for (labels, (age, unprotected)) in per_account {
            if let Some(age) = age {
                self.staleness.with_label_values(&labels).set(age);
            }
            self.unprotected
                .with_label_values(&labels)
                .set(unprotected as i64);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// One method per event a run, the scheduler, a reload or the HTTP port counts, so that callers never spell out
/// label arrays.
impl Metrics {
    /// A snapshot made, counted under every schedule it serves.
    pub(crate) fn snapshot_created(
        &self,
        policy: &str,
        schedules: &[impl AsRef<str>],
        account: &str,
        region: &str,
    ) {
        for s in schedules {
            self.snapshots_created
                .with_label_values(&[policy, s.as_ref(), account, region])
                .inc();
        }
    }

    /// A snapshot retention deleted, counted under every schedule it served.
    pub(crate) fn snapshot_deleted(
        &self,
        policy: &str,
        schedules: &[impl AsRef<str>],
        account: &str,
        region: &str,
    ) {
        for s in schedules {
            self.snapshots_deleted
                .with_label_values(&[policy, s.as_ref(), account, region])
                .inc();
        }
    }

    /// A create, delete or completion (`operation`) that failed, counted under every schedule concerned.
    pub(crate) fn snapshot_failed(
        &self,
        policy: &str,
        schedules: &[impl AsRef<str>],
        account: &str,
        region: &str,
        operation: &str,
    ) {
        for s in schedules {
            self.snapshots_failed
                .with_label_values(&[policy, s.as_ref(), account, region, operation])
                .inc();
        }
    }

    /// A target skipped for a schedule this run: `bad-count-tag`, or `pending-limit` (deferred).
    pub(crate) fn resource_skipped(
        &self,
        policy: &str,
        schedules: &[impl AsRef<str>],
        reason: &str,
    ) {
        for s in schedules {
            self.skipped_resources
                .with_label_values(&[policy, s.as_ref(), reason])
                .inc();
        }
    }

    /// A deletion refused because the snapshot backs an AMI.
    pub(crate) fn kept_in_use(&self, policy: &str, account: &str, region: &str) {
        self.kept_in_use
            .with_label_values(&[policy, account, region])
            .inc();
    }

    /// A snapshot still pending at its run's completion deadline.
    pub(crate) fn pending_at_deadline(&self, policy: &str, account: &str, region: &str) {
        self.snapshots_incomplete
            .with_label_values(&[policy, account, region])
            .inc();
    }

    /// The managed snapshots a run left in the region.
    pub(crate) fn managed_snapshots(&self, policy: &str, account: &str, region: &str, n: usize) {
        self.managed_snapshots
            .with_label_values(&[policy, account, region])
            .set(n as i64);
    }

    /// A finished run: its duration, and per firing schedule the result of each job (`snapshot`, `retention`)
    /// with the time of its last success.
    pub(crate) fn run_finished(
        &self,
        policy: &str,
        schedules: &[String],
        seconds: f64,
        results: [(&str, RunResult); 2],
        at: DateTime<Utc>,
    ) {
        self.run_duration
            .with_label_values(&[policy, "snapshot"])
            .observe(seconds);
        for s in schedules {
            for (job, r) in results {
                self.runs
                    .with_label_values(&[policy, s, job, r.as_str()])
                    .inc();
                if r == RunResult::Success {
                    self.last_success
                        .with_label_values(&[policy, s, job])
                        .set(at.timestamp() as f64);
                }
            }
        }
    }

    /// A failed or partial run's retry, scheduled.
    pub(crate) fn run_retry(&self, policy: &str, schedule: &str) {
        self.run_retries
            .with_label_values(&[policy, schedule])
            .inc();
    }

    /// A fire skipped because the schedule's previous run was still going.
    pub(crate) fn fire_skipped(&self, policy: &str, schedule: &str) {
        self.skipped_fires
            .with_label_values(&[policy, schedule])
            .inc();
    }

    pub(crate) fn next_run(&self, policy: &str, schedule: &str, at: DateTime<Utc>) {
        self.next_run
            .with_label_values(&[policy, schedule])
            .set(at.timestamp() as f64);
    }

    /// A SIGHUP reload: `applied`, `invalid` or `needs-restart`.
    pub(crate) fn config_reload(&self, outcome: &str) {
        self.config_reloads.with_label_values(&[outcome]).inc();
    }

    /// The series of the organisation refresh, at zero, for a daemon with `[aws.organization]`.
    pub(crate) fn init_organization(&self) {
        for outcome in ["success", "failure"] {
            self.organization_refreshes.with_label_values(&[outcome]);
        }
        self.organization_accounts.with_label_values(&[] as &[&str]);
    }

    /// A listing of the organisation: `success` (`accounts` of it served now) or `failure` (`accounts` still served).
    pub(crate) fn organization_listed(&self, outcome: &str, accounts: usize) {
        self.organization_refreshes
            .with_label_values(&[outcome])
            .inc();
        self.organization_accounts
            .with_label_values(&[] as &[&str])
            .set(accounts as i64);
    }

    /// One instance's invocation of `document` ended with `outcome` (`ssm::batch::Ran::outcome`).
    pub(crate) fn ssm_invocation(&self, policy: &str, document: &str, outcome: &str) {
        self.ssm_invocations
            .with_label_values(&[policy, document, outcome])
            .inc();
    }

    pub(crate) fn froze(&self, policy: &str, window: std::time::Duration) {
        self.freeze_window
            .with_label_values(&[policy])
            .observe(window.as_secs_f64());
    }

    /// A snapshot of a VSS or script policy made: `consistent` or a fallback.
    pub(crate) fn app_snapshot(&self, policy: &str, consistent: bool) {
        let kind = if consistent {
            "app-consistent"
        } else {
            "fallback"
        };
        self.app_consistent.with_label_values(&[policy, kind]).inc();
    }

    /// Copies of one outcome, counted under every schedule the copy serves.
    // One argument per label of the series, in its label order: a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copies(
        &self,
        policy: &str,
        schedules: &[std::sync::Arc<str>],
        account: &str,
        region: &str,
        destination: &str,
        outcome: &str,
        n: u64,
    ) {
        for s in schedules {
            self.copies
                .with_label_values(&[policy, s, account, region, destination, outcome])
                .inc_by(n);
        }
    }

    pub(crate) fn copies_pending(
        &self,
        policy: &str,
        account: &str,
        region: &str,
        destination: &str,
        n: usize,
    ) {
        self.copies_pending
            .with_label_values(&[policy, account, region, destination])
            .set(n as i64);
    }

    /// The oldest newest-completed copy of the schedule's volumes in `destination` (None: nothing to measure
    /// from yet, and the series is left as it was).
    pub(crate) fn set_dr_freshness(
        &self,
        policy: &str,
        schedule: &str,
        account: &str,
        region: &str,
        destination: &str,
        at: Option<DateTime<Utc>>,
    ) {
        let key = (
            policy.to_string(),
            schedule.to_string(),
            account.to_string(),
            region.to_string(),
            destination.to_string(),
        );
        if let Some(at) = at {
            self.dr_freshness
                .lock()
                .expect("dr freshness poisoned")
                .insert(key, at);
        }
    }

    pub(crate) fn http_refused(&self, reason: &str) {
        self.http_refused.with_label_values(&[reason]).inc();
    }
}

/// Removes `vec`'s series whose `account` label is `account` (the crate removes only by every label's value).
fn forget_account_in<T: MetricVecBuilder>(vec: &MetricVec<T>, account: &str) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("account") == Some(&account) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("snapwarden_{name}"), help), labels)
        .expect("valid counter");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g =
        GaugeVec::new(Opts::new(format!("snapwarden_{name}"), help), labels).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn int_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(format!("snapwarden_{name}"), help), labels)
        .expect("valid gauge");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// What [`Metrics::record_plan`] reports of a plan, gathered decision by decision so a run need not hold all of
/// them (see `retention::plan_deletions`).
#[derive(Debug, Clone)]
pub(crate) struct KeptTally {
    /// Kept snapshots per [`KEEP_REASONS`] entry (a snapshot counts once per distinct reason label).
    by_reason: Vec<i64>,
    blocked: u64,
    orphans: i64,
    /// Kept snapshots in all.
    pub(crate) kept: usize,
}

impl Default for KeptTally {
    fn default() -> Self {
        KeptTally {
            by_reason: vec![0; KEEP_REASONS.len()],
            blocked: 0,
            orphans: 0,
            kept: 0,
        }
    }
}

impl KeptTally {
    /// Counts `d` if it is a keep; deletions are not counted.
    pub(crate) fn add(&mut self, d: &Decision) {
        if d.action != Action::Keep {
            return;
        }
        self.kept += 1;
        // Two reasons with one label (daily rank 1 of two schedules) count the snapshot once.
        let mut counted = 0u32;
        for r in &d.reasons {
            let i = r.label_index();
            if i < KEEP_REASONS.len() && counted & (1 << i) == 0 {
                counted |= 1 << i;
                self.by_reason[i] += 1;
            }
        }
        self.blocked += u64::from(counted & (1 << Reason::OverCap.label_index()) != 0);
        self.orphans += i64::from(d.orphan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Scope;

    #[test]
    fn known_series_exist_at_zero_from_the_start() {
        let config = crate::config::from_toml_str(
            std::path::Path::new("demo"),
            crate::demo::DEMO_CONFIG,
            &[],
        )
        .unwrap();
        let m = Metrics::new();
        m.init_series(&config, &[Scope::region("demo-1")], Utc::now());
        let text = m.render(Utc::now());
        for line in [
            "snapwarden_runs_total{kind=\"snapshot\",policy=\"prod\",result=\"failure\",schedule=\"fast\"} 0",
            "snapwarden_snapshots_failed_total{account=\"own\",operation=\"delete\",policy=\"prod\",region=\"demo-1\",schedule=\"slow\"} 0",
            "snapwarden_notifications_total{outcome=\"failed\"} 0",
            // Every 5 seconds: twice the interval.
            "snapwarden_staleness_threshold_seconds{policy=\"prod\",schedule=\"fast\"} 10",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn a_plan_sets_kept_by_reason_cap_blocks_and_orphans() {
        use crate::retention::{Action, Decision, Period, Reason};
        let d = |reasons: Vec<Reason>, action, orphan| Decision {
            snapshot_id: "snap-1".into(),
            volume_id: "vol-1".into(),
            slot: Utc::now(),
            action,
            reasons,
            orphan,
        };
        let daily = Reason::Calendar {
            schedule: "d".into(),
            period: Period::Day,
            rank: 1,
            of: Some(7),
        };
        let plan = vec![
            d(vec![Reason::Newest, daily.clone()], Action::Keep, false),
            d(vec![daily.clone(), daily], Action::Keep, true),
            d(vec![Reason::OverCap], Action::Keep, false),
            d(vec![Reason::Expired], Action::Delete, false),
        ];
        let mut tally = KeptTally::default();
        for d in &plan {
            tally.add(d);
        }
        assert_eq!(tally.kept, 3);
        let m = Metrics::new();
        m.record_plan("p", "a", "r", &tally);
        let text = m.render(Utc::now());
        for line in [
            "snapwarden_kept_snapshots{account=\"a\",policy=\"p\",reason=\"daily\",region=\"r\"} 2",
            "snapwarden_kept_snapshots{account=\"a\",policy=\"p\",reason=\"newest\",region=\"r\"} 1",
            "snapwarden_kept_snapshots{account=\"a\",policy=\"p\",reason=\"pinned\",region=\"r\"} 0",
            "snapwarden_deletions_blocked_total{account=\"a\",policy=\"p\",region=\"r\"} 1",
            "snapwarden_orphaned_snapshots{account=\"a\",policy=\"p\",region=\"r\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains("reason=\"expired\""),
            "delete reasons are not kept reasons"
        );
    }

    #[test]
    fn staleness_grows_with_scrape_time_and_takes_the_worst_region() {
        let m = Metrics::new();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let f = |h| Freshness {
            oldest_newest: Some(t0 - chrono::Duration::hours(h)),
            unprotected: 0,
        };
        m.set_freshness("prod", "daily", "a", "us-east-1", f(1));
        m.set_freshness("prod", "daily", "a", "eu-west-1", f(5));
        let text = m.render(t0 + chrono::Duration::hours(26));
        assert!(
            text.contains(
                "snapwarden_staleness_seconds{account=\"a\",policy=\"prod\",schedule=\"daily\"} 111600"
            ),
            "{text}"
        );
        assert!(text.contains("snapwarden_build_info{version="), "{text}");
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn fresh(t: DateTime<Utc>) -> Freshness {
        Freshness {
            oldest_newest: Some(t),
            unprotected: 0,
        }
    }

    /// Two accounts in one region are two places: neither's figures overwrite or hide the other's.
    #[test]
    fn two_accounts_in_one_region_keep_separate_series() {
        let m = Metrics::new();
        let t0 = t0();
        m.managed_snapshots("prod", "prod-acct", "us-east-1", 40);
        m.managed_snapshots("prod", "data", "us-east-1", 7);
        m.snapshot_created("prod", &["daily"], "prod-acct", "us-east-1");
        m.kept_in_use("prod", "data", "us-east-1");
        m.pending_at_deadline("prod", "data", "us-east-1");
        m.copies(
            "prod",
            &[std::sync::Arc::from("daily")],
            "data",
            "us-east-1",
            "eu-west-1",
            "failed",
            2,
        );
        m.copies_pending("prod", "prod-acct", "us-east-1", "eu-west-1", 3);
        m.set_dr_freshness("prod", "daily", "data", "us-east-1", "eu-west-1", Some(t0));
        // The data account's region was last snapshotted a day earlier than the prod account's.
        m.set_freshness("prod", "daily", "prod-acct", "us-east-1", fresh(t0));
        m.set_freshness(
            "prod",
            "daily",
            "data",
            "us-east-1",
            fresh(t0 - chrono::Duration::days(1)),
        );
        let text = m.render(t0 + chrono::Duration::hours(1));
        for line in [
            "snapwarden_managed_snapshots{account=\"prod-acct\",policy=\"prod\",region=\"us-east-1\"} 40",
            "snapwarden_managed_snapshots{account=\"data\",policy=\"prod\",region=\"us-east-1\"} 7",
            "snapwarden_snapshots_created_total{account=\"prod-acct\",policy=\"prod\",region=\"us-east-1\",schedule=\"daily\"} 1",
            "snapwarden_snapshots_kept_in_use_total{account=\"data\",policy=\"prod\",region=\"us-east-1\"} 1",
            "snapwarden_snapshots_pending_at_deadline_total{account=\"data\",policy=\"prod\",region=\"us-east-1\"} 1",
            "snapwarden_copies_total{account=\"data\",destination=\"eu-west-1\",outcome=\"failed\",policy=\"prod\",region=\"us-east-1\",schedule=\"daily\"} 2",
            "snapwarden_copies_pending{account=\"prod-acct\",destination=\"eu-west-1\",policy=\"prod\",region=\"us-east-1\"} 3",
            "snapwarden_dr_staleness_seconds{account=\"data\",destination=\"eu-west-1\",policy=\"prod\",region=\"us-east-1\",schedule=\"daily\"} 3600",
            "snapwarden_staleness_seconds{account=\"prod-acct\",policy=\"prod\",schedule=\"daily\"} 3600",
            "snapwarden_staleness_seconds{account=\"data\",policy=\"prod\",schedule=\"daily\"} 90000",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // /status still sees the worst place of the schedule.
        let worst = m.staleness(t0 + chrono::Duration::hours(1));
        assert_eq!(worst[&("prod".into(), "daily".into())].0, Some(90000.0));
    }

    #[test]
    fn init_series_creates_a_policys_place_series_only_in_the_accounts_it_serves() {
        let mut config = crate::config::from_toml_str(
            std::path::Path::new("demo"),
            crate::demo::DEMO_CONFIG,
            &[],
        )
        .unwrap();
        // Every policy of the demo serves the `data` account only.
        for p in &mut config.policies {
            p.accounts = Some(vec!["data".into()]);
        }
        let scope = |account: &str, own| Scope {
            account: account.into(),
            own,
            region: "demo-1".into(),
        };
        let m = Metrics::new();
        m.init_series(
            &config,
            &[scope("123456789012", true), scope("data", false)],
            Utc::now(),
        );
        let text = m.render(Utc::now());
        assert!(
            text.contains("snapwarden_managed_snapshots{account=\"data\",policy=\"prod\",region=\"demo-1\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("account=\"123456789012\""),
            "the policy does not serve the own account:\n{text}"
        );
    }

    #[test]
    fn forget_account_drops_that_accounts_series_and_leaves_the_others() {
        let m = Metrics::new();
        let t0 = t0();
        for account in ["gone", "stays"] {
            m.snapshot_created("prod", &["daily"], account, "us-east-1");
            m.managed_snapshots("prod", account, "us-east-1", 5);
            m.record_plan("prod", account, "us-east-1", &KeptTally::default());
            m.copies_pending("prod", account, "us-east-1", "eu-west-1", 1);
            m.set_freshness("prod", "daily", account, "us-east-1", fresh(t0));
            m.set_dr_freshness("prod", "daily", account, "us-east-1", "eu-west-1", Some(t0));
        }
        assert!(m.render(t0).contains("account=\"gone\""));
        m.forget_account("gone");
        let text = m.render(t0 + chrono::Duration::hours(1));
        assert!(!text.contains("account=\"gone\""), "{text}");
        for line in [
            "snapwarden_snapshots_created_total{account=\"stays\",policy=\"prod\",region=\"us-east-1\",schedule=\"daily\"} 1",
            "snapwarden_managed_snapshots{account=\"stays\",policy=\"prod\",region=\"us-east-1\"} 5",
            "snapwarden_staleness_seconds{account=\"stays\",policy=\"prod\",schedule=\"daily\"} 3600",
            "snapwarden_dr_staleness_seconds{account=\"stays\",destination=\"eu-west-1\",policy=\"prod\",region=\"us-east-1\",schedule=\"daily\"} 3600",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
