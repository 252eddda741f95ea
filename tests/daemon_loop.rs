//! The scheduler loop over the in-memory EC2 backend: catch-up at start fires the latest slot once, a schedule's
//! runs never overlap (a fire during a slow run is skipped and counted), and shutdown waits for in-flight runs
//! up to the grace period and no longer; a run that panics fails alone, is alerted and shown, and the schedule's
//! next fire runs. Real time is used, with schedules firing every second or two. The decisions themselves are
//! table-tested in `scheduler.rs`; these check the loop carries them out.

mod common;

use common::Recorder;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapwarden::config::{self, Config};
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::fake::FakeEc2;
use snapwarden::ec2::hooked::{Call, Hooked, Step};
use snapwarden::notify::{Message, Notifier, Publisher};
use snapwarden::worker::Region;
use tokio_util::sync::CancellationToken;

fn config(cron: &str, grace: &str) -> Config {
    let toml = format!(
        r#"
[daemon]
shutdown-grace = "{grace}"
# The in-memory fleet leaves snapshots pending: these tests are about firing, not about waiting for completion.
completion-deadline = "0s"
[[policy]]
name = "p"
target = {{ resource = "instance", tags = {{ Backup = "true" }} }}
schedule = [{{ name = "s", cron = "{cron}", keep = {{ last = 100 }} }}]
"#
    );
    config::from_toml_str(std::path::Path::new("test.toml"), &toml, &[]).expect("valid test config")
}

/// Delays every CreateSnapshot and records in `max_in_flight` the most that ran at once.
fn slow(fake: Arc<FakeEc2>, delay: Duration, max_in_flight: Arc<AtomicUsize>) -> Hooked {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let leaving = in_flight.clone();
    Hooked::new(fake)
        .before(move |call| match call {
            Call::CreateSnapshot(_) => {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, Ordering::SeqCst);
                Step::Delay(delay)
            }
            _ => Step::Go,
        })
        .after(move |call, _| {
            if let Call::CreateSnapshot(_) = call {
                leaving.fetch_sub(1, Ordering::SeqCst);
            }
            Step::Go
        })
}

struct Rig {
    shared: Shared,
    fake: Arc<FakeEc2>,
    max_in_flight: Arc<AtomicUsize>,
    regions: Arc<Vec<Arc<Region>>>,
}

async fn rig(cron: &str, grace: &str, delay: Duration) -> Rig {
    let shared = Shared::new(config(cron, grace));
    let fake = Arc::new(FakeEc2::new("test-1"));
    fake.add_instance(&[("Backup", "true")], &[("/dev/xvda", "gp3")]);
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(slow(fake.clone(), delay, max_in_flight.clone()));
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let region = daemon::region(&shared, slow, permits)
        .await
        .expect("fake region");
    Rig {
        shared,
        fake,
        max_in_flight,
        regions: Arc::new(vec![region]),
    }
}

fn notifier(shared: &Shared) -> Notifier {
    Notifier::spawn(None, Duration::from_secs(3600), shared.metrics.clone()).0
}

/// Runs the loop for `run_for`, then shuts it down; returns whether in-flight runs drained in time.
async fn run_loop(r: &Rig, catch_up: bool, run_for: Duration) -> bool {
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon::schedule_loop(
        r.shared.clone(),
        r.regions.clone(),
        notifier(&r.shared),
        catch_up,
        stop.clone(),
    ));
    tokio::time::sleep(run_for).await;
    stop.cancel();
    task.await.unwrap()
}

/// A sample's value in the metrics as scraped now; 0 when absent.
fn metric(shared: &Shared, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric(&shared.metrics.render(chrono::Utc::now()), name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_fires_the_latest_slot_once_at_start() {
    // Fires once a year: only catch-up can make a snapshot during this test.
    let r = rig("0 0 1 1 *", "5s", Duration::ZERO).await;
    assert!(
        run_loop(&r, true, Duration::from_millis(1500)).await,
        "drained"
    );
    let snaps = r.fake.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let slot = snaps[0].tags["snapwarden:slot"].clone();
    assert!(slot.ends_with("-01-01T00:00:00Z"), "{slot}");

    // A restart finds the slot done and creates nothing more.
    assert!(run_loop(&r, true, Duration::from_millis(1500)).await);
    assert_eq!(r.fake.snapshots().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_catch_up_nothing_runs_before_the_next_fire() {
    let r = rig("0 0 1 1 *", "5s", Duration::ZERO).await;
    assert!(run_loop(&r, false, Duration::from_millis(1200)).await);
    assert!(r.fake.snapshots().is_empty());
    assert_eq!(r.fake.calls("CreateSnapshot"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_run_is_never_overlapped_and_late_fires_are_counted() {
    // Fires every second; each run takes 2.5 s, so fires land while a run is going.
    let r = rig("* * * * * *", "10s", Duration::from_millis(2500)).await;
    assert!(
        run_loop(&r, false, Duration::from_millis(5500)).await,
        "runs drained within the grace period"
    );
    assert_eq!(
        r.max_in_flight.load(Ordering::SeqCst),
        1,
        "runs of one schedule overlapped"
    );
    let skipped = metric(
        &r.shared,
        "snapwarden_skipped_fires_total",
        &[("policy", "p"), ("schedule", "s")],
    );
    assert!(skipped >= 2.0, "expected skipped fires, got {skipped}");
    // Every run that started made its snapshot: one per started slot, no duplicates per slot.
    let snaps = r.fake.snapshots();
    let mut slots: Vec<_> = snaps
        .iter()
        .map(|s| s.tags["snapwarden:slot"].clone())
        .collect();
    slots.sort();
    slots.dedup();
    assert_eq!(
        slots.len(),
        snaps.len(),
        "duplicate slot snapshots: {snaps:?}"
    );
    assert!(
        (2..=3).contains(&snaps.len()),
        "{} runs in 5.5 s of 2.5 s runs",
        snaps.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_run_but_not_past_the_grace_period() {
    // Grace longer than the run: the run finishes and its snapshot exists.
    let r = rig("0 0 1 1 *", "5s", Duration::from_millis(1500)).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon::schedule_loop(
        r.shared.clone(),
        r.regions.clone(),
        notifier(&r.shared),
        true,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let t0 = Instant::now();
    assert!(task.await.unwrap(), "drained");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "did not wait for the run: {:?}",
        t0.elapsed()
    );
    assert_eq!(r.fake.snapshots().len(), 1);

    // Grace shorter than the run: the loop gives up at the grace period and says so, but only once the create it
    // had already sent has answered (a restart must see that snapshot); nothing is sent after the grace period.
    let r = rig("0 0 1 1 *", "500ms", Duration::from_secs(3)).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon::schedule_loop(
        r.shared.clone(),
        r.regions.clone(),
        notifier(&r.shared),
        true,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let t0 = Instant::now();
    assert!(
        !task.await.unwrap(),
        "reported drained although the run was still going"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(5),
        "did not wait for the create in flight, or waited past it: {waited:?}"
    );
    assert_eq!(r.shared.mutations.in_flight(), 0);
    assert_eq!(r.fake.calls("CreateSnapshot"), 1);
    assert_eq!(r.fake.snapshots().len(), 1, "the create in flight landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_and_next_run_are_published() {
    let r = rig("0 0 1 1 *", "5s", Duration::ZERO).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon::schedule_loop(
        r.shared.clone(),
        r.regions.clone(),
        notifier(&r.shared),
        false,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let age = r
        .shared
        .health
        .heartbeat_age(chrono::Utc::now())
        .expect("ticked");
    assert!(age < 1.5, "heartbeat {age}s old");
    let next = metric(
        &r.shared,
        "snapwarden_next_run_timestamp_seconds",
        &[("policy", "p"), ("schedule", "s")],
    );
    assert!(
        next > chrono::Utc::now().timestamp() as f64,
        "next run {next}"
    );
    stop.cancel();
    assert!(task.await.unwrap());
}

/// Panics in its first CreateSnapshot (a bug in a run), then forwards every call to the fake.
fn panics_once(inner: Arc<FakeEc2>) -> Hooked {
    let armed = std::sync::atomic::AtomicBool::new(true);
    Hooked::new(inner).before(move |call| {
        if matches!(call, Call::CreateSnapshot(_)) && armed.swap(false, Ordering::SeqCst) {
            panic!("injected: CreateSnapshot blew up");
        }
        Step::Go
    })
}

/// `/status` as the HTTP port serves it.
async fn status_json(shared: &Shared) -> serde_json::Value {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::get("/status")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = snapwarden::http::router(shared.app_state())
        .oneshot(request)
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_region_fails_that_run_alerts_and_the_next_fire_runs() {
    // Fires every other second, in two regions; the first create in `test-1` panics.
    let shared = Shared::new(config("*/2 * * * * *", "5s"));
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let broken = Arc::new(FakeEc2::new("test-1"));
    broken.add_instance(&[("Backup", "true")], &[("/dev/xvda", "gp3")]);
    let healthy = Arc::new(FakeEc2::new("test-2"));
    healthy.add_instance(&[("Backup", "true")], &[("/dev/xvda", "gp3")]);
    let panics = Arc::new(panics_once(broken.clone()));
    let regions = Arc::new(vec![
        daemon::region(&shared, panics, permits.clone())
            .await
            .unwrap(),
        daemon::region(&shared, healthy.clone(), permits)
            .await
            .unwrap(),
    ]);
    let recorder = Arc::new(Recorder::default());
    let (notifier, notify_task) = Notifier::spawn(
        Some(recorder.clone() as Arc<dyn Publisher>),
        Duration::from_secs(3600),
        shared.metrics.clone(),
    );
    let stop = CancellationToken::new();
    let lp = tokio::spawn(daemon::schedule_loop(
        shared.clone(),
        regions,
        notifier,
        false,
        stop.clone(),
    ));

    // The panicked run shows on /status as the region's last run: a failure, with the panic as its error.
    let started = Instant::now();
    let failed = loop {
        let v = status_json(&shared).await;
        let last = &v["policies"]["p"]["s"]["last_runs"]["123456789012/test-1"];
        if last["result"] == "failure" {
            break last.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{v:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(failed["error"]["code"], "panic", "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("injected: CreateSnapshot blew up"),
        "{failed:#}"
    );
    // The other region of that fire ran to the end.
    let slot = failed["slot"].as_str().unwrap().replace("+00:00", "Z");
    let slots = |fake: &FakeEc2| -> Vec<String> {
        let mut s: Vec<String> = fake
            .snapshots()
            .iter()
            .map(|s| s.tags["snapwarden:slot"].clone())
            .collect();
        s.sort();
        s
    };
    // The next fires run in the region that panicked: the schedule was not left "running".
    let started = Instant::now();
    while broken.snapshots().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no fire ran after the panic: {:#}",
            status_json(&shared).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    assert!(lp.await.unwrap(), "drained");
    let _ = tokio::time::timeout(Duration::from_secs(5), notify_task).await;

    assert!(
        slots(&healthy).contains(&slot),
        "{slot} {:?}",
        slots(&healthy)
    );
    assert!(
        !slots(&broken).contains(&slot),
        "{slot} {:?}",
        slots(&broken)
    );
    let v = status_json(&shared).await;
    assert_eq!(v["policies"]["p"]["s"]["running"], false, "{v:#}");
    assert_eq!(
        v["policies"]["p"]["s"]["last_runs"]["123456789012/test-1"]["result"], "success",
        "{v:#}"
    );
    assert_eq!(
        metric(
            &shared,
            "snapwarden_run_panics_total",
            &[("policy", "p"), ("schedule", "s")]
        ),
        1.0
    );
    assert!(
        metric(
            &shared,
            "snapwarden_runs_total",
            &[
                ("kind", "snapshot"),
                ("policy", "p"),
                ("result", "failure"),
                ("schedule", "s")
            ]
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &shared,
            "snapwarden_skipped_fires_total",
            &[("policy", "p"), ("schedule", "s")]
        ),
        0.0
    );
    // One alert for the panic, naming it; the region's recovery may follow.
    let sent = recorder.sent.lock().unwrap().clone();
    let alerts: Vec<&Message> = sent
        .iter()
        .filter(|m| {
            m.subject
                .starts_with("snapwarden FAILED p/s 123456789012/test-1")
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{sent:#?}");
    assert!(alerts[0].subject.contains("panic"), "{}", alerts[0].subject);
    assert!(
        alerts[0].body.contains("injected: CreateSnapshot blew up"),
        "{}",
        alerts[0].body
    );
}
