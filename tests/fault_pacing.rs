//! Pacing under EC2's rate limits, end to end: the daemon's own backend stack (`daemon::aws_regions_paced`:
//! `SdkEc2` with SDK retries off, `Instrumented`, `Paced`) and the worker's runs, against moto behind the
//! fault-injection proxy of `common::fault_proxy`. Covered: a third of the EC2 calls throttled (plus transient
//! 500s and dropped connections on reads) still gives every run, exactly one snapshot per volume and slot, and
//! retention's counts; throttling that never stops ends each run as a failure inside its time budget with one
//! digest; a throttled burst, measured at the proxy, never beats the configured buckets; a per-volume rate refusal
//! is retried after the per-volume gap while a concurrent-snapshot refusal and an access error are not retried.
//! Pending-snapshot limits (5 per volume, 1 for st1/sc1, the account cap) are checked on the in-memory backend,
//! since moto completes snapshots at once.
//!
//! Backoffs, gaps and buckets are shortened through `PaceConfig` so the file runs in well under a minute; the
//! proxy's RNG is seeded, so a failure replays with the same faults. Each moto-backed test prints its figures
//! (`--nocapture` shows them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::Recorder;
use common::{slots_by_volume, Moto, ACCOUNT, REGION};
use snapwarden::config::{self, Config};
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::fake::FakeEc2;
use snapwarden::ec2::pace::{Group, PaceConfig};
use snapwarden::notify::{Notifier, Publisher};
use snapwarden::report::RunResult;
use snapwarden::retention::SnapState;
use snapwarden::schedule::format_slot;
use snapwarden::worker::{self, Outcome, Region, RunSpec};

const CREATE: &str = "CreateSnapshot";
const DELETE: &str = "DeleteSnapshot";
const DESCRIBES: [&str; 3] = ["DescribeInstances", "DescribeVolumes", "DescribeSnapshots"];
const EC2_ACTIONS: [&str; 5] = [
    CREATE,
    DELETE,
    "DescribeInstances",
    "DescribeVolumes",
    "DescribeSnapshots",
];
const THROTTLED: &str = "RequestLimitExceeded";

/// The first slot every test fires (a `30 4 * * *` fire time); later runs fire whole days after it.
fn slot(day: i64) -> DateTime<Utc> {
    common::slot("2026-11-20T04:30:00Z") + chrono::Duration::days(day)
}

/// Per-volume creates (`consistency = "volume"`): the fault rules and request counts here are written for
/// CreateSnapshot; CreateSnapshots under throttling is covered by tests/create_snapshots.rs.
fn policy(keep_last: u32) -> String {
    format!(
        "[[policy]]\nname = \"prod\"\nconsistency = \"volume\"\n\
         target = {{ resource = \"instance\", tags = {{ Backup = \"true\" }} }}\n\
         [[policy.schedule]]\nname = \"daily\"\ncron = \"30 4 * * *\"\nkeep = {{ last = {keep_last} }}\n"
    )
}

fn config_text(text: &str) -> Config {
    config::from_toml_str(Path::new("fault_pacing.toml"), text, &[])
        .unwrap_or_else(|e| panic!("test config is valid: {e}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Pacing with test-sized backoffs and gaps, the whole AWS budget, and a fixed jitter seed.
fn quick_pace() -> PaceConfig {
    PaceConfig {
        budget_fraction: 1.0,
        max_wait: Duration::from_secs(20),
        max_attempts: 25,
        backoff_base: ms(10),
        backoff_cap: ms(200),
        per_volume_gap: ms(50),
        seed: Some(5),
        ..PaceConfig::default()
    }
}

/// moto, the proxy in front of it, and the daemon's region built through the proxy. Field order is drop order:
/// the region's connections go before the proxy, the proxy before moto.
struct Rig {
    shared: Shared,
    region: Arc<Region>,
    proxy: FaultProxy,
    /// Straight to moto, bypassing the proxy: seeding and read-back never meet a fault.
    raw: aws_sdk_ec2::Client,
    _moto: Moto,
}

async fn rig(keep_last: u32, pace: PaceConfig, seed: u64) -> Rig {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port, seed);
    let shared = Shared::new(config_text(&format!(
        "[aws]\nendpoint-url = \"{}\"\nregions = [\"{REGION}\"]\n\n{}",
        proxy.endpoint,
        policy(keep_last)
    )));
    let mut regions = daemon::aws_regions_paced(&shared, &pace)
        .await
        .expect("aws_regions through the proxy");
    let region = regions.remove(0);
    assert_eq!(region.account_id, ACCOUNT);
    let raw = moto.ec2().await;
    Rig {
        shared,
        region,
        proxy,
        raw,
        _moto: moto,
    }
}

async fn run(r: &Rig, day: i64) -> Outcome {
    let policy = r.shared.config.policy("prod").expect("policy prod");
    let spec = RunSpec::new(policy, slot(day), &r.region.account_id)
        .firing(["daily"])
        .concurrency(r.shared.config.daemon.max_concurrent_aws_calls);
    worker::run(r.region.ec2.as_ref(), &spec, &r.shared.metrics, Utc::now).await
}

/// Launches instances in moto, each with `devices` EBS volumes, tagged `Backup = backup`; returns their volume ids.
async fn launch(
    raw: &aws_sdk_ec2::Client,
    count: usize,
    devices: usize,
    backup: &str,
) -> Vec<String> {
    let names = ["/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi"];
    let mut volumes = Vec::new();
    for _ in 0..count {
        let (_, vols) =
            common::launch_instance(raw, &[("Backup", backup)], &names[..devices]).await;
        volumes.extend(vols);
    }
    volumes
}

/// Snapshots of one (volume, slot) beyond the first, over everything moto holds.
fn duplicates(by: &BTreeMap<String, Vec<String>>) -> usize {
    by.values()
        .map(|slots| slots.len() - slots.iter().collect::<BTreeSet<_>>().len())
        .sum()
}

fn throttles_counted(shared: &Shared) -> u64 {
    EC2_ACTIONS
        .iter()
        .map(|op| shared.metrics.aws_throttles.with_label_values(&[op]).get())
        .sum()
}

fn assert_clean(out: &Outcome) {
    assert!(
        out.report.fatal.is_none() && out.report.problems.is_empty(),
        "run {:?}: fatal {:?}, problems {:#?}",
        out.report.result(),
        out.report.fatal,
        out.report.problems
    );
    assert_eq!(out.report.result(), RunResult::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_third_of_calls_throttled_every_run_completes_once_per_slot_and_prunes_to_keep() {
    let r = rig(3, quick_pace(), 30).await;
    let targeted = launch(&r.raw, 3, 2, "true").await;
    let untouched = launch(&r.raw, 1, 1, "no").await;
    let reads_and_deletes = [DESCRIBES.as_slice(), &[DELETE]].concat();
    r.proxy.set_rules(vec![
        Rule::new(&EC2_ACTIONS, When::Rate(0.30), Fault::Error(THROTTLED)),
        Rule::new(
            &reads_and_deletes,
            When::Rate(0.05),
            Fault::Error("InternalError"),
        ),
        Rule::new(&DESCRIBES, When::Rate(0.05), Fault::Reset),
    ]);

    let runs = 6;
    let mut created = 0;
    let mut deleted = 0;
    let mut losses = 0;
    for day in 0..runs {
        let out = run(&r, day).await;
        assert_clean(&out);
        assert_eq!(out.report.created, targeted.len(), "day {day}");
        created += out.report.created;
        deleted += out.report.deleted;
        // Right after each run: this slot's snapshot for every targeted volume, exactly once, and no more than
        // `last = 3` of any volume's history left.
        let by = slots_by_volume(&r.raw, "prod").await;
        assert_eq!(duplicates(&by), 0, "day {day}: {by:#?}");
        let this = format_slot(slot(day));
        for v in &targeted {
            let slots = by.get(v).cloned().unwrap_or_default();
            if !slots.contains(&this) {
                losses += 1;
            }
            assert_eq!(
                slots.len(),
                (day as usize + 1).min(3),
                "day {day} {v}: {slots:?}"
            );
        }
        assert!(!by.contains_key(&untouched[0]), "{by:#?}");
    }
    assert_eq!(losses, 0);
    assert_eq!(created, runs as usize * targeted.len());
    assert_eq!(deleted, (runs as usize - 3) * targeted.len());
    // Retention ended at the right counts: the three newest slots of every volume, nothing else.
    let want: Vec<String> = (runs - 3..runs).map(|d| format_slot(slot(d))).collect();
    let by = slots_by_volume(&r.raw, "prod").await;
    assert_eq!(by.len(), targeted.len(), "{by:#?}");
    for v in &targeted {
        assert_eq!(by[v], want, "{v}");
    }

    // Faults really were injected, at about the configured rates, and every throttled attempt was counted.
    let log = r.proxy.log();
    let ec2_requests = log
        .iter()
        .filter(|h| EC2_ACTIONS.contains(&h.action.as_str()))
        .count();
    let throttled = log.iter().filter(|h| h.outcome == THROTTLED).count();
    let internal = log.iter().filter(|h| h.outcome == "InternalError").count();
    let resets = log.iter().filter(|h| h.outcome == "reset").count();
    for action in EC2_ACTIONS {
        assert!(
            r.proxy.count(action, THROTTLED) > 0,
            "no {action} throttled"
        );
    }
    let rate = throttled as f64 / ec2_requests as f64;
    assert!(
        (0.2..0.4).contains(&rate),
        "throttled {throttled} of {ec2_requests}"
    );
    assert!(
        internal > 0 && resets > 0,
        "internal {internal}, resets {resets}"
    );
    assert_eq!(throttles_counted(&r.shared), throttled as u64);
    eprintln!(
        "fault_pacing/throttled-third: {runs} runs, {} volumes, {created} snapshots created, {deleted} deleted, \
         {ec2_requests} EC2 requests: {throttled} throttled ({:.0}%), {internal} InternalError, {resets} resets; \
         duplicates 0, losses {losses}",
        targeted.len(),
        rate * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_that_never_stops_fails_each_run_within_its_budget_with_one_alert() {
    let budget = Duration::from_secs(2);
    let pace = PaceConfig {
        max_wait: budget,
        max_attempts: 1000,
        backoff_base: ms(20),
        backoff_cap: ms(250),
        ..quick_pace()
    };
    let r = rig(7, pace, 31).await;
    let targeted = launch(&r.raw, 2, 1, "true").await;
    let recorder = Arc::new(Recorder::default());
    let (notifier, task) = Notifier::spawn(
        Some(recorder.clone() as Arc<dyn Publisher>),
        Duration::from_secs(6 * 3600),
        r.shared.metrics.clone(),
    );
    // Generous for scheduling noise, far below what unbounded retrying would take.
    let limit = budget + Duration::from_secs(3);

    // Creates throttled forever: each gives up, the run fails, nothing is made.
    r.proxy.set_rules(vec![Rule::new(
        &[CREATE],
        When::Always,
        Fault::Error(THROTTLED),
    )]);
    let mut failed_runs = 0;
    let mut longest = Duration::ZERO;
    for _ in 0..2 {
        let t0 = Instant::now();
        let out = run(&r, 0).await;
        let took = t0.elapsed();
        longest = longest.max(took);
        assert!(took < limit, "run took {took:?}");
        assert_eq!(out.report.result(), RunResult::Failure, "{:#?}", out.report);
        assert_eq!(out.report.failed_volumes(), targeted.len());
        assert!(
            out.report.problems.iter().all(|p| p.code == THROTTLED),
            "{:#?}",
            out.report.problems
        );
        assert_eq!(out.report.created, 0);
        notifier.submit(out.report, &r.shared.metrics);
        failed_runs += 1;
    }
    let create_attempts = r.proxy.count(CREATE, THROTTLED);
    assert!(
        create_attempts > 2 * 2 * 2,
        "creates were retried: {create_attempts}"
    );
    assert_eq!(r.proxy.count(CREATE, "forwarded"), 0);

    // Every read throttled too: the survey gives up, the run fails before touching anything.
    r.proxy.set_rules(vec![Rule::new(
        &EC2_ACTIONS,
        When::Always,
        Fault::Error(THROTTLED),
    )]);
    let t0 = Instant::now();
    let out = run(&r, 0).await;
    longest = longest.max(t0.elapsed());
    assert!(t0.elapsed() < limit, "run took {:?}", t0.elapsed());
    assert_eq!(out.report.result(), RunResult::Failure);
    assert_eq!(
        out.report.fatal.as_ref().map(|p| p.code.as_str()),
        Some(THROTTLED)
    );
    notifier.submit(out.report, &r.shared.metrics);
    failed_runs += 1;
    assert!(
        slots_by_volume(&r.raw, "prod").await.is_empty(),
        "nothing may be created"
    );

    // Throttling stops: the same slot completes, once per volume.
    r.proxy.set_rules(Vec::new());
    let out = run(&r, 0).await;
    assert_clean(&out);
    assert_eq!(out.report.created, targeted.len());
    notifier.submit(out.report, &r.shared.metrics);
    let by = slots_by_volume(&r.raw, "prod").await;
    assert_eq!(duplicates(&by), 0);
    for v in &targeted {
        assert_eq!(by[v], vec![format_slot(slot(0))], "{v}");
    }

    drop(notifier);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("notifier drains")
        .unwrap();
    let sent = recorder.sent.lock().unwrap().clone();
    let subjects: Vec<&str> = sent.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:#?}");
    assert!(
        subjects[0].starts_with(&format!("snapwarden FAILED prod/daily {ACCOUNT}/us-east-1")),
        "{subjects:?}"
    );
    assert!(sent[0].body.contains(THROTTLED), "{}", sent[0].body);
    assert_eq!(
        subjects[1],
        format!("snapwarden RECOVERED prod/daily {ACCOUNT}/us-east-1")
    );
    let n = |o: &str| r.shared.metrics.notifications.with_label_values(&[o]).get();
    assert_eq!((n("sent"), n("deduplicated")), (2, failed_runs - 1));
    assert_eq!(
        throttles_counted(&r.shared),
        r.proxy
            .log()
            .iter()
            .filter(|h| h.outcome == THROTTLED)
            .count() as u64
    );
    eprintln!(
        "fault_pacing/never-ending: {failed_runs} failing runs (100% of CreateSnapshot, then of every EC2 call, \
         throttled), longest {longest:?} (limit {limit:?}, retry budget {budget:?}); {create_attempts} create \
         attempts, 0 snapshots made; 1 digest, {} deduplicated; recovery run made {} snapshots, duplicates 0",
        failed_runs - 1,
        targeted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_burst_never_beats_the_configured_request_rate() {
    // AWS's budget replaced by a small one that refills fast, then halved by the fraction: creates and deletes
    // 4 burst / 4 per s, describes 4 burst / 8 per s.
    let pace = PaceConfig {
        budget_fraction: 0.5,
        bucket_override: BTreeMap::from([
            (Group::Create, (8.0, 8.0)),
            (Group::Delete, (8.0, 8.0)),
            (Group::Describe, (8.0, 16.0)),
        ]),
        backoff_base: ms(20),
        backoff_cap: ms(400),
        ..quick_pace()
    };
    let r = rig(1, pace.clone(), 32).await;
    let targeted = launch(&r.raw, 6, 2, "true").await;
    r.proxy.set_rules(vec![Rule::new(
        &EC2_ACTIONS,
        When::Rate(0.30),
        Fault::Error(THROTTLED),
    )]);
    let t0 = Instant::now();
    for day in 0..2 {
        let out = run(&r, day).await;
        assert_clean(&out);
        assert_eq!(out.report.created, targeted.len());
    }
    let took = t0.elapsed();
    let by = slots_by_volume(&r.raw, "prod").await;
    assert_eq!(duplicates(&by), 0);
    for v in &targeted {
        assert_eq!(by[v], vec![format_slot(slot(1))], "{v}");
    }

    let mut figures = Vec::new();
    for (group, actions) in [
        (Group::Create, vec![CREATE]),
        (Group::Delete, vec![DELETE]),
        (Group::Describe, DESCRIBES.to_vec()),
    ] {
        let b = pace.bucket(group, Instant::now());
        let allowed = (b.capacity + b.refill_per_sec) as usize;
        let seen = r.proxy.max_in_window(&actions, Duration::from_secs(1));
        let total = r.proxy.times(&actions).len();
        // One request of slack: arrival at the proxy lags the token by a varying few milliseconds.
        assert!(
            seen <= allowed + 1,
            "{group:?}: {seen} requests in one second, budget {allowed}"
        );
        figures.push(format!(
            "{group:?} max {seen}/s of {allowed} ({total} requests)"
        ));
    }
    // The check has teeth: creates went through their burst and then waited for refills.
    let creates = r.proxy.times(&[CREATE]);
    assert!(creates.len() >= 2 * targeted.len());
    assert!(r.proxy.max_in_window(&[CREATE], Duration::from_secs(1)) >= 4);
    let floor = Duration::from_secs_f64((creates.len() - 2 * 4) as f64 / 4.0);
    assert!(
        took >= floor.mul_f64(0.9),
        "{} creates in {took:?}: not paced",
        creates.len()
    );
    eprintln!(
        "fault_pacing/burst: {} volumes, 2 runs in {took:?}, 30% throttled; {}",
        targeted.len(),
        figures.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_volume_refusal_waits_the_gap_while_limit_and_access_errors_are_not_retried() {
    let gap = Duration::from_secs(1);
    let pace = PaceConfig {
        per_volume_gap: gap,
        ..quick_pace()
    };
    let r = rig(7, pace, 33).await;
    let volume = launch(&r.raw, 1, 1, "true").await.remove(0);

    // The first create is refused for the volume's rate: retried once, a gap later, and the run succeeds.
    r.proxy.set_rules(vec![Rule::new(
        &[CREATE],
        When::Calls(vec![1]),
        Fault::Error("SnapshotCreationPerVolumeRateExceeded"),
    )]);
    let out = run(&r, 0).await;
    assert_clean(&out);
    let creates: Vec<_> = r
        .proxy
        .log()
        .into_iter()
        .filter(|h| h.action == CREATE)
        .collect();
    assert_eq!(
        creates
            .iter()
            .map(|h| h.outcome.as_str())
            .collect::<Vec<_>>(),
        ["SnapshotCreationPerVolumeRateExceeded", "forwarded"]
    );
    let waited = creates[1].at - creates[0].at;
    assert!(waited >= gap, "retried after {waited:?}");

    // Too many pending snapshots (as EC2 counts them): one attempt, the volume deferred, the run partial.
    r.proxy.clear_log();
    r.proxy.set_rules(vec![Rule::new(
        &[CREATE],
        When::Always,
        Fault::Error("ConcurrentSnapshotLimitExceeded"),
    )]);
    let out = run(&r, 1).await;
    assert_eq!(out.report.result(), RunResult::Partial, "{:#?}", out.report);
    assert_eq!(out.report.failed_volumes(), 0);
    let p = &out.report.problems[0];
    assert_eq!(
        (p.operation, p.code.as_str(), p.resource.as_str()),
        ("defer", "ConcurrentSnapshotLimitExceeded", volume.as_str())
    );
    assert_eq!(r.proxy.count(CREATE, "ConcurrentSnapshotLimitExceeded"), 1);
    // The per-volume gap held between the two slots' creates too. `Paced` claims the moment it lets a create go;
    // arrival at the proxy lags that by a few milliseconds that vary from call to call.
    let between = r.proxy.times(&[CREATE])[0] - creates[1].at;
    assert!(between >= gap - ms(50), "{between:?}");

    // A missing permission: no retry, the run fails and says which call.
    r.proxy.clear_log();
    r.proxy.set_rules(vec![Rule::new(
        &["DescribeSnapshots"],
        When::Always,
        Fault::Error("UnauthorizedOperation"),
    )]);
    let out = run(&r, 1).await;
    assert_eq!(out.report.result(), RunResult::Failure);
    let fatal = out.report.fatal.as_ref().expect("fatal");
    assert_eq!(fatal.code, "UnauthorizedOperation");
    assert!(
        fatal.message.contains("DescribeSnapshots"),
        "{}",
        fatal.message
    );
    assert_eq!(
        r.proxy.count("DescribeSnapshots", "UnauthorizedOperation"),
        1
    );

    // All clear: the deferred slot is made on the next try, once.
    r.proxy.set_rules(Vec::new());
    let out = run(&r, 1).await;
    assert_clean(&out);
    assert_eq!(out.report.created, 1);
    let by = slots_by_volume(&r.raw, "prod").await;
    assert_eq!(
        by[&volume],
        vec![format_slot(slot(0)), format_slot(slot(1))]
    );
}

// ---- Pending-snapshot limits, on the in-memory backend (moto never leaves a snapshot pending) ----

fn fake_shared() -> Shared {
    Shared::new(config_text(&policy(1)))
}

async fn fake_region(shared: &Shared, fake: Arc<FakeEc2>, cap: usize) -> Arc<Region> {
    let pace = PaceConfig {
        max_pending_per_account: cap,
        per_volume_gap: Duration::ZERO,
        ..quick_pace()
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    daemon::paced_region(shared, fake, permits, pace)
        .await
        .expect("fake region")
}

async fn fake_run(shared: &Shared, region: &Region, day: i64) -> Outcome {
    let spec = RunSpec::new(
        shared.config.policy("prod").unwrap(),
        slot(day),
        &region.account_id,
    )
    .firing(["daily"]);
    worker::run(region.ec2.as_ref(), &spec, &shared.metrics, || slot(day)).await
}

/// Seeds `n` managed snapshots of `volume` in `state`, at slots before day 0.
fn seed(fake: &FakeEc2, volume: &str, state: SnapState, n: usize, first_day: i64) {
    for i in 0..n {
        let at = format_slot(slot(first_day - i as i64));
        let tags = common::managed_tags("prod", "daily", &at);
        fake.seed_snapshot(volume, state, snapwarden::ec2::fake::FAKE_ACCOUNT, &tags);
    }
}

fn deferred(out: &Outcome) -> BTreeSet<String> {
    out.report
        .problems
        .iter()
        .filter(|p| p.operation == "defer")
        .map(|p| p.resource.clone())
        .collect()
}

#[tokio::test]
async fn pending_limits_defer_volumes_instead_of_failing_them() {
    let shared = fake_shared();
    let fake = Arc::new(FakeEc2::new(REGION));
    fake.set_clock(slot(0));
    let backup = [("Backup", "true")];
    let full = fake
        .add_instance(&backup, &[("/dev/xvda", "gp3")])
        .1
        .remove(0);
    let hdd = fake
        .add_instance(&backup, &[("/dev/xvda", "st1")])
        .1
        .remove(0);
    let room = fake
        .add_instance(&backup, &[("/dev/xvda", "gp3")])
        .1
        .remove(0);
    seed(&fake, &full, SnapState::Pending, 5, -1);
    // Two completed ones under `last = 1`: retention would delete the older one if `full` were not frozen.
    seed(&fake, &full, SnapState::Completed, 2, -10);
    seed(&fake, &hdd, SnapState::Pending, 1, -1);
    seed(&fake, &room, SnapState::Pending, 4, -1);
    let region = fake_region(&shared, fake.clone(), 100).await;

    let out = fake_run(&shared, &region, 0).await;
    assert_eq!(out.report.result(), RunResult::Partial, "{:#?}", out.report);
    assert_eq!(out.report.failed_volumes(), 0);
    assert_eq!(deferred(&out), BTreeSet::from([full.clone(), hdd.clone()]));
    let message = |v: &str| {
        out.report
            .problems
            .iter()
            .find(|p| p.resource == v)
            .map(|p| p.message.clone())
            .unwrap()
    };
    assert!(
        message(&full).contains("EC2 allows 5"),
        "{}",
        message(&full)
    );
    assert!(message(&hdd).contains("EC2 allows 1"), "{}", message(&hdd));
    assert!(out
        .report
        .problems
        .iter()
        .all(|p| p.code == "pending-limit"));
    assert_eq!((out.report.created, fake.calls("CreateSnapshot")), (1, 1));
    assert_eq!(
        out.report.deleted, 0,
        "a deferred volume's history is frozen"
    );
    let skipped = shared
        .metrics
        .skipped_resources
        .with_label_values(&["prod", "daily", "pending-limit"])
        .get();
    assert_eq!(skipped, 2);

    // The pending snapshots finish: the next run snapshots every volume.
    fake.complete_all();
    let out = fake_run(&shared, &region, 1).await;
    assert_eq!(
        out.report.result(),
        RunResult::Success,
        "{:#?}",
        out.report.problems
    );
    assert_eq!(out.report.created, 3);
}

#[tokio::test]
async fn the_account_cap_admits_creates_in_order_and_defers_the_rest() {
    let shared = fake_shared();
    let fake = Arc::new(FakeEc2::new(REGION));
    fake.set_clock(slot(0));
    let (_, vols) = fake.add_instance(
        &[("Backup", "true")],
        &[
            ("/dev/xvda", "gp3"),
            ("/dev/sdf", "gp3"),
            ("/dev/sdg", "gp3"),
            ("/dev/sdh", "gp3"),
        ],
    );
    seed(&fake, &vols[0], SnapState::Pending, 1, -1);
    let region = fake_region(&shared, fake.clone(), 3).await;
    assert_eq!(region.ec2.max_pending_snapshots(), Some(3));

    // One pending plus two new ones reach the cap of 3: the last two volumes wait.
    let out = fake_run(&shared, &region, 0).await;
    assert_eq!(out.report.result(), RunResult::Partial);
    assert_eq!(out.report.created, 2);
    assert_eq!(deferred(&out).len(), 2, "{:#?}", out.report.problems);
    assert!(
        out.report.problems[0].message.contains("cap 3"),
        "{}",
        out.report.problems[0].message
    );

    // EC2 itself refusing for pending snapshots (ones we cannot see) defers too, even for the only volume left.
    fake.complete_all();
    fake.fail_create_for(&vols[3], "ConcurrentSnapshotLimitExceeded");
    let out = fake_run(&shared, &region, 0).await;
    assert_eq!(out.report.result(), RunResult::Partial, "{:#?}", out.report);
    assert_eq!(out.report.failed_volumes(), 0);
    assert_eq!(out.report.created, 1);
    assert_eq!(deferred(&out), BTreeSet::from([vols[3].clone()]));
}

#[test]
fn the_daemon_paces_with_defaults_its_attempt_limit_and_no_gap_beyond_a_schedule_period() {
    let daily = config_text(&format!("[aws]\nmax-attempts = 3\n\n{}", policy(7)));
    let pace = daemon::pace_config(&daily);
    assert_eq!(pace.max_attempts, 3);
    assert_eq!(pace.per_volume_gap, Duration::from_secs(15));
    assert_eq!(pace.budget_fraction, 0.5);
    let fast = config_text(
        "[[policy]]\nname = \"t\"\ntarget = { resource = \"instance\", tags = { Backup = \"true\" } }\n\
         [[policy.schedule]]\nname = \"s\"\ncron = \"*/2 * * * * *\"\nkeep = { last = 2 }\n",
    );
    assert_eq!(
        daemon::pace_config(&fast).per_volume_gap,
        Duration::from_secs(2)
    );
}
