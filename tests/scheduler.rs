//! The scheduler's resilience: a fire that meets an EC2 outage retries its slot until it succeeds (the real binary,
//! moto behind the fault proxy); SIGHUP reloads a valid config for the next fires and refuses an invalid one or
//! one that needs a restart, leaving the old one running (the real binary); and catch-up after a downtime starts
//! runs in order, at most `daemon.max-concurrent-runs` at once, so early ones finish while later ones wait, and
//! shutdown does not wait for fires that never started (the loop over the in-memory EC2).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, Utc};
use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::process::{snapwarden, Daemon};
use common::{free_port, http_get, launch_instance, slots_by_volume, Moto, ACCOUNT, REGION};
use serde_json::Value;
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::fake::FakeEc2;
use snapwarden::ec2::hooked::{Call, Hooked, Step};
use snapwarden::notify::Notifier;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------------------------

fn write_config(dir: &Path, endpoint: &str, port: u16, daemon_extra: &str, rest: &str) -> PathBuf {
    common::write_config(dir, port, daemon_extra, endpoint, "max-attempts = 2", rest)
}

fn policy(name: &str, tag: &str, cron: &str) -> String {
    common::instance_policy(name, tag, "s", cron, "last = 100")
}

fn status(port: u16, d: &Daemon) -> Value {
    let (code, body) =
        http_get(port, "/status").unwrap_or_else(|| panic!("/status answers\n{}", d.logs()));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A sample's value from `/metrics`; 0 when absent.
fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric(&metric_text(port), name, labels).unwrap_or(0.0)
}

fn metric_text(port: u16) -> String {
    http_get(port, "/metrics").expect("/metrics answers").1
}

fn wait_until(what: &str, within: Duration, d: &Daemon, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {within:?}\n{}", d.logs());
}

fn ready(port: u16, d: &Daemon) {
    wait_until("ready", Duration::from_secs(30), d, || {
        http_get(port, "/readyz").is_some_and(|(c, _)| c == 200)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_outage_at_fire_time_is_retried_within_the_slot_and_alerts_once() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) = launch_instance(&raw, &[("Backup", "blip")], &["/dev/xvda"]).await;
    let proxy = FaultProxy::start(moto.port, 7);
    // EC2 answers 503 to every describe of the fleet: the run fails at its survey, before touching anything.
    proxy.set_rules(vec![Rule::new(
        &["DescribeInstances"],
        When::Always,
        Fault::Error("ServiceUnavailable"),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Fires once a year: the fire at start (catch-up of this year's slot) is the only one during the test, so
    // without a retry the slot stays without snapshots until next year.
    let cfg = write_config(
        dir.path(),
        &proxy.endpoint,
        port,
        "retry-backoff = \"1s\"",
        &policy("blip", "blip", "0 0 1 1 *"),
    );
    let mut d = Daemon::spawn(snapwarden().arg("--config").arg(&cfg).arg("run"));
    ready(port, &d);

    // While EC2 is down the slot waits for its next try, shown in /status.
    let mut retry = Value::Null;
    wait_until("a retry in /status", Duration::from_secs(30), &d, || {
        retry = status(port, &d)["policies"]["blip"]["s"]["retry"].clone();
        !retry.is_null()
    });
    let slot = format!("{}-01-01T00:00:00Z", Utc::now().year());
    assert_eq!(retry["slot"], slot, "{retry}");
    assert!(retry["attempt"].as_u64().unwrap() >= 1, "{retry}");
    assert!(slots_by_volume(&raw, "blip").await.is_empty());

    // EC2 is back: a retry makes the slot's snapshot.
    proxy.set_rules(vec![]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if slots_by_volume(&raw, "blip").await.get(&volumes[0]) == Some(&vec![slot.clone()]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot of slot {slot} after the outage: {:?}\n{}",
            slots_by_volume(&raw, "blip").await,
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_until("the retry cleared", Duration::from_secs(10), &d, || {
        let s = &status(port, &d)["policies"]["blip"]["s"];
        s["retry"].is_null() && s["last_runs"][format!("{ACCOUNT}/{REGION}")]["result"] == "success"
    });
    let retries = metric(
        port,
        "snapwarden_run_retries_total",
        &[("policy", "blip"), ("schedule", "s")],
    );
    assert!(retries >= 1.0, "retries {retries}");
    let failed = metric(
        port,
        "snapwarden_runs_total",
        &[
            ("kind", "snapshot"),
            ("policy", "blip"),
            ("result", "failure"),
            ("schedule", "s"),
        ],
    );
    assert_eq!(failed, retries, "each failed run was followed by one retry");
    // No SNS topic: alerts are counted as `disabled`. One digest for the slot and one recovery; the failed
    // retries' digests were held back. (The notifier is a task of its own: give it a moment.)
    wait_until(
        "one digest and one recovery",
        Duration::from_secs(10),
        &d,
        || {
            metric(
                port,
                "snapwarden_notifications_total",
                &[("outcome", "disabled")],
            ) == 2.0
        },
    );
    assert_eq!(
        metric(
            port,
            "snapwarden_notifications_total",
            &[("outcome", "deduplicated")]
        ),
        retries - 1.0
    );
    assert!(d.stop().success(), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_to_the_next_fires() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, a) = launch_instance(&raw, &[("Backup", "a")], &["/dev/xvda"]).await;
    let (_, b) = launch_instance(&raw, &[("Backup", "b")], &["/dev/xvda"]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yearly = "0 0 1 1 *";
    let first = format!(
        "{}\n{}",
        policy("a", "a", yearly),
        policy("gone", "nothing", yearly)
    );
    let cfg = write_config(dir.path(), &moto.endpoint, port, "", &first);
    let mut d = Daemon::spawn(snapwarden().arg("--config").arg(&cfg).arg("run"));
    ready(port, &d);
    assert!(status(port, &d)["policies"]["gone"].is_object());

    // `gone` removed, `b` added with a schedule that fires every two seconds.
    let second = format!(
        "{}\n{}",
        policy("a", "a", yearly),
        policy("b", "b", "*/2 * * * * *")
    );
    write_config(dir.path(), &moto.endpoint, port, "", &second);
    d.signal("HUP");
    d.wait_for_output("config reloaded", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !slots_by_volume(&raw, "b").await.contains_key(&b[0]) {
        assert!(
            Instant::now() < deadline,
            "policy b never fired\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.is_running(), "{}", d.logs());
    let st = status(port, &d);
    assert!(st["policies"]["gone"].is_null(), "{st}");
    assert_eq!(st["policies"]["b"]["s"]["cron"], "*/2 * * * * *", "{st}");
    assert_eq!(
        metric(
            port,
            "snapwarden_config_reloads_total",
            &[("outcome", "applied")]
        ),
        1.0
    );
    assert!(
        !metric_text(port).contains("snapwarden_next_run_timestamp_seconds{policy=\"gone\""),
        "the removed schedule's next fire is still exported"
    );
    // `a` is unchanged: its one catch-up snapshot, nothing more.
    assert_eq!(slots_by_volume(&raw, "a").await[&a[0]].len(), 1);
    assert!(d.stop().success(), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_an_invalid_config_or_one_needing_a_restart_and_keeps_the_old_one() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, a) = launch_instance(&raw, &[("Backup", "a")], &["/dev/xvda"]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let every2s = policy("a", "a", "*/2 * * * * *");
    let cfg = write_config(dir.path(), &moto.endpoint, port, "", &every2s);
    let mut d = Daemon::spawn(snapwarden().arg("--config").arg(&cfg).arg("run"));
    ready(port, &d);

    // Two problems: an unknown key and a cron with four fields. Both are logged, nothing changes.
    let broken = format!(
        "{}\n{}",
        every2s,
        policy("new", "a", "0 3 * *").replace("keep =", "colour = \"red\"\nkeep =")
    );
    write_config(dir.path(), &moto.endpoint, port, "", &broken);
    d.signal("HUP");
    d.wait_for_output("config reload refused", Duration::from_secs(10));
    let logs = d.logs();
    assert!(
        logs.contains("colour") && logs.contains("4 fields"),
        "{logs}"
    );

    // Valid, but the listen address changes: that takes a restart, so nothing is applied.
    let elsewhere = format!("{}\n{}", every2s, policy("new", "a", "*/2 * * * * *"));
    write_config(dir.path(), &moto.endpoint, free_port(), "", &elsewhere);
    d.signal("HUP");
    d.wait_for_output("daemon.listen", Duration::from_secs(10));
    assert!(d.is_running(), "{}", d.logs());
    assert_eq!(
        metric(
            port,
            "snapwarden_config_reloads_total",
            &[("outcome", "invalid")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            port,
            "snapwarden_config_reloads_total",
            &[("outcome", "needs-restart")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            port,
            "snapwarden_config_reloads_total",
            &[("outcome", "applied")]
        ),
        0.0
    );
    assert!(status(port, &d)["policies"]["new"].is_null());

    // The old config still fires.
    let before = slots_by_volume(&raw, "a").await[&a[0]].len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slots_by_volume(&raw, "a").await[&a[0]].len() <= before {
        assert!(
            Instant::now() < deadline,
            "no fire after the refused reloads\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.stop().success(), "{}", d.logs());
}

// ---------------------------------------------------------------------------------------------------------------
// Catch-up of many policies (the loop over the in-memory EC2)
// ---------------------------------------------------------------------------------------------------------------

/// The fake behind the loop, and how many runs started (each begins with one DescribeInstances).
struct Counting {
    inner: Arc<FakeEc2>,
    started: Arc<AtomicUsize>,
}

/// Counts the runs that start and slows snapshot creation down.
fn counting(fake: Arc<FakeEc2>, delay: Duration, started: Arc<AtomicUsize>) -> Hooked {
    Hooked::new(fake).before(move |call| match call {
        Call::DescribeInstances(_) => {
            started.fetch_add(1, Ordering::SeqCst);
            Step::Go
        }
        Call::CreateSnapshot(_) => Step::Delay(delay),
        _ => Step::Go,
    })
}

async fn many_policies(
    n: usize,
    limit: usize,
    grace: &str,
    delay: Duration,
) -> (
    Shared,
    Arc<Counting>,
    Arc<Vec<Arc<snapwarden::worker::Region>>>,
) {
    let mut toml = format!(
        "[daemon]\nmax-concurrent-runs = {limit}\nshutdown-grace = \"{grace}\"\ncompletion-deadline = \"0s\"\n"
    );
    let fake = Arc::new(FakeEc2::new("test-1"));
    for i in 0..n {
        toml.push_str(&format!(
            "[[policy]]\nname = \"p{i:04}\"\ntarget = {{ resource = \"instance\", tags = {{ Backup = \"p{i}\" }} }}\n\
             schedule = [{{ name = \"s\", cron = \"0 0 1 1 *\", keep = {{ last = 100 }} }}]\n"
        ));
        fake.add_instance(&[("Backup", &format!("p{i}"))], &[("/dev/xvda", "gp3")]);
    }
    let shared = Shared::new(
        config::from_toml_str(Path::new("many.toml"), &toml, &[]).expect("valid test config"),
    );
    let started = Arc::new(AtomicUsize::new(0));
    let ec2 = Arc::new(counting(fake.clone(), delay, started.clone()));
    let counting = Arc::new(Counting {
        inner: fake,
        started,
    });
    // Plenty of AWS permits: only the run bound may hold runs back.
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let region = daemon::region(&shared, ec2, permits)
        .await
        .expect("fake region");
    (shared, counting, Arc::new(vec![region]))
}

fn finished(shared: &Shared) -> usize {
    shared
        .status
        .snapshot()
        .values()
        .flat_map(|s| s.values())
        .filter(|s| !s.last_runs.is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_of_many_policies_finishes_early_runs_while_later_ones_wait() {
    // 300 policies after a downtime, 4 runs at once.
    let (n, limit) = (300, 4);
    let (shared, counting, regions) =
        many_policies(n, limit, "30s", Duration::from_millis(20)).await;
    let stop = CancellationToken::new();
    let notifier = Notifier::spawn(None, Duration::from_secs(3600), shared.metrics.clone()).0;
    let task = tokio::spawn(daemon::schedule_loop(
        shared.clone(),
        regions,
        notifier,
        true,
        stop.clone(),
    ));
    // At every moment, a run starts only when one has finished: started <= finished + limit. Read `started` first,
    // so a run finishing in between only makes the check looser, never wrong.
    let mut first_done_with = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let started = counting.started.load(Ordering::SeqCst);
        let done = finished(&shared);
        assert!(
            started <= done + limit,
            "{started} runs started with {done} finished: more than {limit} at once"
        );
        if done > 0 && first_done_with.is_none() {
            first_done_with = Some(started);
        }
        if done == n {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {n} runs finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        first_done_with.unwrap() < n / 2,
        "half the runs had started before the first finished"
    );
    stop.cancel();
    assert!(task.await.unwrap());
    // Every policy got its slot, and no fire was skipped as "still running".
    assert_eq!(counting.inner.snapshots().len(), n);
    assert!(!shared
        .metrics
        .render(Utc::now())
        .lines()
        .any(|l| { l.starts_with("snapwarden_skipped_fires_total") && !l.ends_with(" 0") }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_fires_that_have_not_started() {
    // Runs of 1.5 s, 2 at once, 40 waiting: shutdown lets the two finish and starts no other.
    let (shared, counting, regions) =
        many_policies(40, 2, "10s", Duration::from_millis(1500)).await;
    let stop = CancellationToken::new();
    let notifier = Notifier::spawn(None, Duration::from_secs(3600), shared.metrics.clone()).0;
    let task = tokio::spawn(daemon::schedule_loop(
        shared.clone(),
        regions,
        notifier,
        true,
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while counting.started.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no run started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    assert!(task.await.unwrap(), "drained");
    assert_eq!(counting.started.load(Ordering::SeqCst), 2);
    assert_eq!(counting.inner.snapshots().len(), 2);
    // Nothing is left marked running.
    assert!(shared
        .status
        .snapshot()
        .values()
        .flat_map(|s| s.values())
        .all(|s| !s.running));
}
