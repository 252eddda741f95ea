//! Crash safety. The real `snapwarden run` binary against moto behind the fault proxy of `common::fault_proxy`, which
//! holds every CreateSnapshot (and, in one test, DeleteSnapshot) a moment so a run over six volumes takes seconds: the
//! daemon is SIGKILLed once k creates have reached the proxy (k = 1, 3, 6, and twice in a row), or during its first
//! deletion (which may come before the last create), then restarted; catch-up fires the same (yearly) slot again, and
//! the slot ends with exactly one snapshot per volume — none duplicated, none lost — and retention at its count. A
//! request in flight at the kill still reaches moto (the proxy forwards it after its delay), which is the hard case:
//! EC2 made the snapshot, the daemon never heard of it, and only its slot tag keeps the restart from making a second
//! one.
//!
//! Also here, at the worker level through the proxy: retention never runs on a half-known state — one failed
//! DescribeInstances, DescribeVolumes or DescribeSnapshots call (an error answer or a dropped connection) means the run
//! creates and deletes nothing.
//!
//! Each test prints its figures (`--nocapture`): kills, runs, slot snapshots, duplicates, losses.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::process::{snapwarden, Daemon};
use common::{slots_by_volume, Moto, REGION};
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::pace::PaceConfig;
use snapwarden::report::RunResult;
use snapwarden::schedule::format_slot;
use snapwarden::worker::{self, Completion, RunSpec};

const CREATE: &str = "CreateSnapshot";
const CREATE_MULTI: &str = "CreateSnapshots";
const DELETE: &str = "DeleteSnapshot";
/// How long the proxy holds each create (and delete, where asked): six creates in a row take about two seconds.
const HOLD: Duration = Duration::from_millis(300);
const POLICY: &str = "crash";
const KEEP_LAST: usize = 3;

// ---------------------------------------------------------------------------------------------------------------
// The binary (patterns from tests/e2e_cli.rs)
// ---------------------------------------------------------------------------------------------------------------

/// The daemon on `config`, output kept for assertion messages; killed on drop.
fn start(config: &Path) -> Daemon {
    Daemon::spawn(snapwarden().arg("--config").arg(config).arg("run"))
}

// ---------------------------------------------------------------------------------------------------------------
// Fleet, config and read-back
// ---------------------------------------------------------------------------------------------------------------

/// `count` instances with two EBS volumes each, tagged `Backup = crash`; returns the volume ids.
async fn launch(raw: &aws_sdk_ec2::Client, count: usize) -> Vec<String> {
    let mut volumes = Vec::new();
    for _ in 0..count {
        let (_, vols) =
            common::launch_instance(raw, &[("Backup", "crash")], &["/dev/sdf", "/dev/sdg"]).await;
        volumes.extend(vols);
    }
    volumes.sort();
    volumes
}

/// A managed snapshot of an earlier slot, tagged the way snapwarden tags its own.
async fn seed(raw: &aws_sdk_ec2::Client, volume: &str, slot: &str) {
    common::moto_snapshot(raw, volume, &common::managed_tags(POLICY, "yearly", slot)).await;
}

/// moto (straight), the proxy in front of it, six volumes, one of them with four snapshots of earlier years, and
/// a config file for the daemon: creates one at a time (so a kill lands between two of them), a yearly schedule
/// (only catch-up fires during a test, always the same slot), keep the last three.
struct Rig {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    proxy: FaultProxy,
    raw: aws_sdk_ec2::Client,
    volumes: Vec<String>,
    _moto: Moto,
}

/// Earlier years' slots seeded on the first volume: with this year's, five, of which retention keeps three.
const SEEDED: [&str; 4] = [
    "2021-01-01T00:00:00Z",
    "2022-01-01T00:00:00Z",
    "2023-01-01T00:00:00Z",
    "2024-01-01T00:00:00Z",
];

/// `consistency`: "volume" (one CreateSnapshot per volume) or "instance" (one CreateSnapshots per instance).
async fn rig(seed_rng: u64, consistency: &str) -> Rig {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let volumes = launch(&raw, 3).await;
    assert_eq!(volumes.len(), 6, "moto made two volumes per instance");
    for slot in SEEDED {
        seed(&raw, &volumes[0], slot).await;
    }
    let proxy = FaultProxy::start(moto.port, seed_rng);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let policy = format!(
        r#"[[policy]]
name = "{POLICY}"
target = {{ resource = "instance", tags = {{ Backup = "crash" }} }}
consistency = "{consistency}"

[[policy.schedule]]
name = "yearly"
cron = "0 0 1 1 *"
keep = {{ last = {KEEP_LAST} }}
"#
    );
    let config = common::write_config(
        dir.path(),
        port,
        "max-concurrent-aws-calls = 1\ncompletion-deadline = \"20s\"",
        &proxy.endpoint,
        "max-attempts = 3",
        &policy,
    );
    Rig {
        dir,
        config,
        port,
        proxy,
        raw,
        volumes,
        _moto: moto,
    }
}

/// Waits until `n` requests of `action` have reached the proxy, the daemon still running.
fn wait_for_requests(d: &mut Daemon, proxy: &FaultProxy, action: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = proxy.log().iter().filter(|h| h.action == action).count();
        if seen >= n {
            return;
        }
        assert!(
            d.is_running(),
            "the daemon exited before {n} {action} calls\n{}",
            d.logs()
        );
        assert!(
            Instant::now() < deadline,
            "only {seen} of {n} {action} calls within 30 s; proxy saw {:?}\n{}",
            proxy
                .log()
                .iter()
                .map(|h| (h.action.clone(), h.outcome.clone()))
                .collect::<Vec<_>>(),
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Per volume, how many snapshots of `slot`: (duplicates, losses) over the fleet.
fn tally(by: &BTreeMap<String, Vec<String>>, volumes: &[String], slot: &str) -> (usize, usize) {
    let mut duplicates = 0;
    let mut losses = 0;
    for v in volumes {
        let n = by
            .get(v)
            .map_or(0, |s| s.iter().filter(|x| *x == slot).count());
        duplicates += n.saturating_sub(1);
        losses += usize::from(n == 0);
    }
    (duplicates, losses)
}

/// The slot every daemon run of the rig fires: the latest `0 0 1 1 *` at or before now.
fn this_years_slot() -> String {
    let cron = snapwarden::schedule::Cron::parse("0 0 1 1 *").unwrap();
    format_slot(
        cron.latest_at_or_before(Utc::now(), chrono_tz::Tz::UTC)
            .unwrap(),
    )
}

/// How a run creates: one CreateSnapshot per volume, or one CreateSnapshots per instance (two volumes each).
#[derive(Clone, Copy)]
struct Mode {
    consistency: &'static str,
    create: &'static str,
    volumes_per_call: usize,
}

const PER_VOLUME: Mode = Mode {
    consistency: "volume",
    create: CREATE,
    volumes_per_call: 1,
};
const PER_INSTANCE: Mode = Mode {
    consistency: "instance",
    create: CREATE_MULTI,
    volumes_per_call: 2,
};

/// The crash scenario: start, SIGKILL after each count in `kills` of `action` requests (counted from the start of
/// the test), restart after each, and let the last start finish the slot. Asserts the slot's exactly-once outcome
/// (no duplicate, no loss, no create request beyond one per volume or instance) and retention's count, and prints
/// the figures.
async fn crash_and_restart(
    seed_rng: u64,
    mode: Mode,
    rules: Vec<Rule>,
    action: &str,
    kills: &[usize],
) {
    let r = rig(seed_rng, mode.consistency).await;
    r.proxy.set_rules(rules);
    let slot = this_years_slot();
    let mut runs = 0;
    for &k in kills {
        let mut d = start(&r.config);
        runs += 1;
        wait_for_requests(&mut d, &r.proxy, action, k);
        d.kill9();
        // The request in flight at the kill still reaches moto after its hold, as one already sent reaches EC2.
        std::thread::sleep(HOLD + Duration::from_millis(300));
        let by = slots_by_volume(&r.raw, POLICY).await;
        let made: usize = r
            .volumes
            .iter()
            .map(|v| {
                by.get(v)
                    .map_or(0, |s| s.iter().filter(|x| **x == slot).count())
            })
            .sum();
        if action == mode.create {
            // Creates are serial: the kill landed with exactly k calls made, the k-th by the abandoned request.
            assert_eq!(
                made,
                k * mode.volumes_per_call,
                "slot snapshots after the kill at create {k}: {by:#?}"
            );
        } else if action == DELETE {
            // Deletes overlap creates, so other volumes may still be waiting for theirs; but the only volume with
            // anything to prune (the seeded one) is pruned only once its own slot snapshot exists.
            assert!(
                by.get(&r.volumes[0]).is_some_and(|s| s.contains(&slot)),
                "the first delete came before the pruned volume's new snapshot: {by:#?}"
            );
        }
    }
    let mut d = start(&r.config);
    runs += 1;
    let (result, run_slot) = d.wait_for_run(r.port, POLICY, "yearly", REGION);
    assert_eq!(run_slot, slot, "catch-up fired the same slot\n{}", d.logs());
    assert_eq!(result, "success", "{}", d.logs());
    d.stop();

    let by = slots_by_volume(&r.raw, POLICY).await;
    let (duplicates, losses) = tally(&by, &r.volumes, &slot);
    let slot_snapshots: usize = by
        .values()
        .map(|s| s.iter().filter(|x| **x == slot).count())
        .sum();
    let creates = r
        .proxy
        .log()
        .iter()
        .filter(|h| h.action == mode.create)
        .count();
    println!(
        "crash figures: consistency {}, kills at {action} #{kills:?}, injected: every {} held {HOLD:?} (100%), \
         daemon runs {runs}, {} requests {creates}, slot snapshots {slot_snapshots} for {} volumes, duplicates \
         {duplicates}, losses {losses}",
        mode.consistency,
        if action == DELETE { "create and delete" } else if action == mode.create { "create" } else { "create and tagging" },
        mode.create,
        r.volumes.len()
    );
    assert_eq!((duplicates, losses), (0, 0), "{by:#?}");
    assert_eq!(slot_snapshots, r.volumes.len());
    // One create per volume or instance in all: nothing was asked for twice, not even at the proxy.
    assert_eq!(
        creates,
        r.volumes.len() / mode.volumes_per_call,
        "{:?}",
        r.proxy.log()
    );
    // Retention: the seeded volume keeps its newest three (this year's and the two latest seeded years).
    let first = &by[&r.volumes[0]];
    assert_eq!(first.len(), KEEP_LAST, "{first:?}");
    assert!(
        first.contains(&slot)
            && first.contains(&SEEDED[3].to_string())
            && first.contains(&SEEDED[2].to_string()),
        "{first:?}"
    );
    for v in &r.volumes[1..] {
        assert_eq!(by[v], vec![slot.clone()], "{v}");
    }
    drop(r.dir);
}

fn hold(actions: &[&'static str]) -> Vec<Rule> {
    vec![Rule::new(actions, When::Always, Fault::Delay(HOLD))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_the_first_create_the_restart_completes_the_slot_once() {
    crash_and_restart(11, PER_VOLUME, hold(&[CREATE]), CREATE, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_at_the_third_create_the_restart_completes_the_slot_once() {
    crash_and_restart(12, PER_VOLUME, hold(&[CREATE]), CREATE, &[3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_the_last_create_the_restart_only_prunes() {
    crash_and_restart(13, PER_VOLUME, hold(&[CREATE]), CREATE, &[6]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_in_a_row_the_third_start_completes_the_slot_once() {
    crash_and_restart(14, PER_VOLUME, hold(&[CREATE]), CREATE, &[2, 5]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_the_first_delete_the_restart_finishes_pruning_and_the_slot_once() {
    crash_and_restart(15, PER_VOLUME, hold(&[CREATE, DELETE]), DELETE, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_consistency_killed_after_each_multi_volume_create_completes_the_slot_once() {
    crash_and_restart(
        16,
        PER_INSTANCE,
        hold(&[CREATE_MULTI]),
        CREATE_MULTI,
        &[1, 2, 3],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_consistency_killed_while_tagging_completes_the_slot_once() {
    // CreateTags follows a CreateSnapshots (per-volume tags it cannot set): a kill between the two.
    crash_and_restart(
        17,
        PER_INSTANCE,
        hold(&[CREATE_MULTI, "CreateTags"]),
        "CreateTags",
        &[1],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// Retention never runs on a half-known state (worker level, through the proxy)
// ---------------------------------------------------------------------------------------------------------------

/// The daemon's own paced backend through the proxy, one run of the yearly slot; `rules` apply to the run only
/// (the region's construction and the seeding meet no fault).
async fn run_with_rules(rules: Vec<Rule>) -> (worker::Outcome, BTreeMap<String, Vec<String>>, Rig) {
    let r = rig(21, "volume").await;
    let text = std::fs::read_to_string(&r.config).unwrap();
    let shared = Shared::new(config::from_toml_str(&r.config, &text, &[]).expect("rig config"));
    let pace = PaceConfig {
        max_attempts: 2,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        seed: Some(3),
        ..PaceConfig::default()
    };
    let region = daemon::aws_regions_paced(&shared, &pace)
        .await
        .expect("region through the proxy")
        .remove(0);
    let before = slots_by_volume(&r.raw, POLICY).await;
    assert_eq!(before[&r.volumes[0]].len(), 4);
    r.proxy.set_rules(rules);
    r.proxy.clear_log();
    let slot: DateTime<Utc> = this_years_slot().parse().unwrap();
    let spec = RunSpec::new(
        shared.config.policy(POLICY).unwrap(),
        slot,
        &region.account_id,
    )
    .firing(["yearly"])
    .completion(Completion::within(Duration::from_secs(5)))
    .explain(true);
    let outcome = worker::run(region.ec2.as_ref(), &spec, &shared.metrics, Utc::now).await;
    let after = slots_by_volume(&r.raw, POLICY).await;
    (outcome, after, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_describe_call_means_no_creation_and_no_deletion() {
    // Keep last 3 over four seeded snapshots: a run that saw the region would create six and delete two.
    for action in ["DescribeInstances", "DescribeVolumes", "DescribeSnapshots"] {
        for fault in [Fault::Error("UnauthorizedOperation"), Fault::Reset] {
            let (outcome, after, r) =
                run_with_rules(vec![Rule::new(&[action], When::Always, fault.clone())]).await;
            let rep = &outcome.report;
            let why = format!("{action} {fault:?}: {rep:#?}\n{:?}", r.proxy.log());
            assert_eq!(rep.result(), RunResult::Failure, "{why}");
            assert!(
                rep.fatal.is_some() && rep.retention_skipped.is_some(),
                "{why}"
            );
            assert_eq!((rep.created, rep.deleted), (0, 0), "{why}");
            assert!(outcome.plan.is_empty(), "{why}");
            assert_eq!(
                r.proxy.count(CREATE, "forwarded")
                    + r.proxy.count(CREATE_MULTI, "forwarded")
                    + r.proxy.count(DELETE, "forwarded"),
                0,
                "{why}"
            );
            assert_eq!(after[&r.volumes[0]].len(), 4, "{why}");
            assert_eq!(after.len(), 1, "nothing created: {after:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_describe_attempt_is_retried_and_the_run_then_acts_on_the_whole_state() {
    // The counterpart: a single dropped DescribeSnapshots is retried by the pacing layer, the survey completes,
    // and the run creates six and deletes one, as it should on a fully known state.
    let (outcome, after, r) = run_with_rules(vec![Rule::new(
        &["DescribeSnapshots"],
        When::Calls(vec![1]),
        Fault::Reset,
    )])
    .await;
    let rep = &outcome.report;
    assert_eq!(rep.result(), RunResult::Success, "{rep:#?}");
    assert_eq!((rep.created, rep.deleted), (6, 2), "{rep:#?}");
    assert_eq!(r.proxy.count("DescribeSnapshots", "reset"), 1);
    assert_eq!(after[&r.volumes[0]].len(), KEEP_LAST, "{after:#?}");
}
