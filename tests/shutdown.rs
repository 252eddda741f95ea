//! Shutdown with EC2 calls still in flight, on the real `snapwarden run` binary against moto behind the fault proxy
//! of `common::fault_proxy`, which holds chosen requests before forwarding them (as a slow EC2 would answer them).
//! What is asserted is read back from moto and from the proxy's own log, never from what the daemon says of itself:
//!
//! - a restart right after the grace period ended, with a create still in flight: the old process does not exit
//!   before its create has answered, so the new process's survey sees the snapshot and makes no second one;
//! - deletes still going at the end of the grace period: no DeleteSnapshot reaches EC2 after the daemon's
//!   "grace period over" line, and every one that did reach it is in the daemon's log with its outcome, matching
//!   what moto actually deleted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::process::{snapwarden, Daemon};
use common::{http_get, slots_by_volume, Moto, ACCOUNT, REGION};
use snapwarden::schedule::format_slot;

const POLICY: &str = "stopping";
const CREATE: &str = "CreateSnapshot";
const DELETE: &str = "DeleteSnapshot";

/// A daemon config: one yearly schedule (only catch-up fires during a test, always the same slot), one volume per
/// create call, a one-second grace period.
fn write_config(dir: &Path, endpoint: &str, port: u16, concurrency: usize, keep: usize) -> PathBuf {
    let daemon = format!(
        "max-concurrent-aws-calls = {concurrency}\nshutdown-grace = \"1s\"\ncompletion-deadline = \"10s\""
    );
    let rest = format!(
        r#"[log]
format = "json"

[[policy]]
name = "{POLICY}"
target = {{ resource = "instance", tags = {{ Backup = "{POLICY}" }} }}
consistency = "volume"

[[policy.schedule]]
name = "yearly"
cron = "0 0 1 1 *"
keep = {{ last = {keep} }}
"#
    );
    let aws = "max-attempts = 3\noperation-timeout = \"60s\"";
    common::write_config(dir, port, &daemon, endpoint, aws, &rest)
}

fn start(config: &Path) -> Daemon {
    Daemon::spawn(snapwarden().arg("--config").arg(config).arg("run"))
}

/// The slot every daemon run of these tests fires: the latest `0 0 1 1 *` at or before now.
fn this_years_slot() -> String {
    let cron = snapwarden::schedule::Cron::parse("0 0 1 1 *").unwrap();
    format_slot(
        cron.latest_at_or_before(Utc::now(), chrono_tz::Tz::UTC)
            .unwrap(),
    )
}

/// Waits until `n` requests of `action` have reached the proxy, the daemon still running.
fn wait_for_requests(d: &mut Daemon, proxy: &FaultProxy, action: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.log().iter().filter(|h| h.action == action).count() < n {
        assert!(
            d.is_running(),
            "the daemon exited before {n} {action}\n{}",
            d.logs()
        );
        assert!(
            Instant::now() < deadline,
            "fewer than {n} {action} within 30 s\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The result of the last run in `/status` once one has finished.
fn wait_for_run(d: &mut Daemon, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = http_get(port, "/status") {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(r) = v["policies"][POLICY]["yearly"]["last_runs"]
                [format!("{ACCOUNT}/{REGION}")]["result"]
                .as_str()
            {
                return r.to_string();
            }
        }
        assert!(d.is_running(), "the daemon exited\n{}", d.logs());
        assert!(
            Instant::now() < deadline,
            "no finished run within 60 s\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's JSON log lines whose message is `message`, as (fields) objects.
fn log_events(stdout: &str, message: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| {
            if l["fields"].is_object() {
                l["fields"].clone()
            } else {
                l
            }
        })
        .filter(|f| f["message"].as_str() == Some(message))
        .collect()
}

/// Which snapshots the daemon logged as answered to `operation`: resource -> outcome.
fn answered(stdout: &str, operation: &str) -> BTreeMap<String, String> {
    log_events(stdout, "mutating EC2 call answered")
        .into_iter()
        .filter(|f| f["operation"].as_str() == Some(operation))
        .map(|f| {
            (
                f["resource"].as_str().unwrap_or_default().to_string(),
                f["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_right_after_the_grace_period_with_a_create_in_flight_makes_no_duplicate() {
    // The first create is held 8 s: longer than the grace period (1 s) plus the notifier's drain (5 s), which is
    // how long a daemon that does not wait for its calls lingers before it exits.
    const HOLD: Duration = Duration::from_secs(8);
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let mut volumes = Vec::new();
    for _ in 0..3 {
        let (_, v) = common::launch_instance(&raw, &[("Backup", POLICY)], &["/dev/sdf"]).await;
        volumes.extend(v);
    }
    let proxy = FaultProxy::start(moto.port, 1);
    proxy.set_rules(vec![Rule::new(
        &[CREATE],
        When::Calls(vec![1]),
        Fault::Delay(HOLD),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // One call at a time: the held create keeps the others queued behind it.
    let config = write_config(dir.path(), &proxy.endpoint, port, 1, 3);

    let mut old = start(&config);
    wait_for_requests(&mut old, &proxy, CREATE, 1);
    let held_at = Instant::now();
    old.signal("TERM");
    let status = old
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", old.logs()));
    let lived = held_at.elapsed();
    let creates_by_old = proxy.log().iter().filter(|h| h.action == CREATE).count();
    // The restart: its survey sees the first volume's snapshot and makes the other two.
    let mut new = start(&config);
    let result = wait_for_run(&mut new, port);
    new.stop();
    // Whatever the old process left in flight reaches EC2 by the end of its hold, answered or not.
    std::thread::sleep(
        (held_at + HOLD + Duration::from_millis(500)).saturating_duration_since(Instant::now()),
    );
    let slot = this_years_slot();
    let by = slots_by_volume(&raw, POLICY).await;
    for v in &volumes {
        let n = by
            .get(v)
            .map_or(0, |s| s.iter().filter(|x| **x == slot).count());
        assert_eq!(n, 1, "volume {v}: {by:#?}\n{}\n{}", old.logs(), new.logs());
    }
    assert_eq!(result, "success", "{}", new.logs());
    // The old process waited for its create, logged it, and made nothing after the grace period.
    assert_eq!(
        status.code(),
        Some(1),
        "runs were abandoned\n{}",
        old.logs()
    );
    assert!(
        lived >= HOLD - Duration::from_millis(500),
        "exited {lived:?} after the create was sent, before its answer ({HOLD:?})\n{}",
        old.logs()
    );
    let made = answered(&old.stdout(), CREATE);
    assert_eq!(made.len(), 1, "{made:?}\n{}", old.logs());
    assert!(made.values().all(|o| o == "ok"), "{made:?}");
    assert_eq!(creates_by_old, 1, "{:?}", proxy.log());
    // One create per volume in all, even at the proxy.
    assert_eq!(
        proxy.log().iter().filter(|h| h.action == CREATE).count(),
        volumes.len(),
        "{:?}",
        proxy.log()
    );
}

/// A managed snapshot of an earlier year, tagged as snapwarden tags its own; returns its id.
async fn seed(raw: &aws_sdk_ec2::Client, volume: &str, year: u32) -> String {
    let slot = format!("{year}-01-01T00:00:00Z");
    common::moto_snapshot(raw, volume, &common::managed_tags(POLICY, "yearly", &slot)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_past_the_grace_period_stop_at_once_and_each_sent_is_logged_with_its_outcome() {
    // Fourteen expired snapshots, each delete held 1.5 s, two at a time: about ten seconds of deleting.
    const HOLD: Duration = Duration::from_millis(1500);
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) = common::launch_instance(&raw, &[("Backup", POLICY)], &["/dev/sdf"]).await;
    let mut seeded = BTreeSet::new();
    for year in 2000..2014 {
        seeded.insert(seed(&raw, &volumes[0], year).await);
    }
    let proxy = FaultProxy::start(moto.port, 2);
    proxy.set_rules(vec![Rule::new(&[DELETE], When::Always, Fault::Delay(HOLD))]);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = write_config(dir.path(), &proxy.endpoint, port, 2, 1);

    let mut d = start(&config);
    wait_for_requests(&mut d, &proxy, DELETE, 1);
    d.signal("TERM");
    // When the test saw the daemon's grace-expiry line: it was written before this instant, so a request that
    // reached the proxy after it came after the line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line_seen = loop {
        if d.stdout().contains("grace period over") {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no grace-expiry line within 10 s\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let status = d
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", d.logs()));
    assert_eq!(status.code(), Some(1), "{}", d.logs());
    // Anything still on its way would have reached the proxy by now.
    std::thread::sleep(HOLD);

    let deletes: Vec<_> = proxy
        .log()
        .into_iter()
        .filter(|h| h.action == DELETE)
        .collect();
    let after_line = deletes.iter().filter(|h| h.at > line_seen).count();
    let sent: Vec<String> = deletes
        .iter()
        .map(|h| {
            h.param("SnapshotId")
                .expect("a DeleteSnapshot names its snapshot")
        })
        .collect();
    println!(
        "shutdown figures: {} deletes of {} expired reached EC2, {after_line} of them after the grace-expiry line",
        sent.len(),
        seeded.len()
    );
    assert!(!sent.is_empty() && sent.len() < seeded.len());
    assert_eq!(
        after_line,
        0,
        "DeleteSnapshot calls reached EC2 after the grace-expiry line\n{}",
        d.logs()
    );
    // Each delete EC2 saw is in the daemon's log with its outcome, and those logged `ok` are exactly what moto lost.
    let logged = answered(&d.stdout(), DELETE);
    let sent: BTreeSet<String> = sent.into_iter().collect();
    assert_eq!(
        logged.keys().cloned().collect::<BTreeSet<_>>(),
        sent,
        "{}",
        d.logs()
    );
    let left: BTreeSet<String> = raw
        .describe_snapshots()
        .owner_ids("self")
        .filters(common::filter("tag:snapwarden:policy", &[POLICY]))
        .send()
        .await
        .expect("DescribeSnapshots")
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(String::from))
        .collect();
    let gone: BTreeSet<String> = seeded.difference(&left).cloned().collect();
    let logged_ok: BTreeSet<String> = logged
        .iter()
        .filter(|(_, o)| *o == "ok")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(gone, logged_ok, "{}", d.logs());
}
