//! Completion tracking, on the in-memory backend (moto completes snapshots at once; `FakeEc2` leaves them pending
//! until told, or completes them after a number of describes with `complete_after_describes`). Covered: a run waits
//! for its snapshots with one filtered DescribeSnapshots per poll (ids in chunks of 200, so 280 pending snapshots
//! cost two calls a poll), and succeeds once they are `completed`; a snapshot that ends in `error` fails its volume,
//! is deleted, freezes that volume's history for retention, and the next run of the slot makes a new one; one still
//! pending at the deadline makes the run partial with a `snapshot-pending` problem, is counted in
//! `snapwarden_snapshots_pending_at_deadline_total`, does not count as protection in the staleness metrics, and is
//! checked again by the next run, which reports and deletes it if it ended in error meanwhile. With a zero deadline
//! (`completion-deadline = "0s"`: do not wait) the run still describes its new snapshots once: one in `error` fails
//! its volume and prunes nothing; one still pending is counted as `pending`, not a problem.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use snapwarden::config::{self, Config};
use snapwarden::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use snapwarden::ec2::hooked::{Call, Hooked, Step};
use snapwarden::ec2::{DryRun, Ec2, Instrumented, TAG_SLOT};
use snapwarden::metrics::Metrics;
use snapwarden::report::{Problem, RunReport, RunResult};
use snapwarden::retention::SnapState;
use snapwarden::schedule::format_slot;
use snapwarden::worker::{self, Completion, RunSpec};

const REGION: &str = "us-east-1";

fn config() -> Config {
    config::from_toml_str(
        Path::new("completion.toml"),
        r#"
[[policy]]
name = "prod"
target = { resource = "instance", tags = { Backup = "true" } }
[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { last = 2 }
"#,
        &[],
    )
    .unwrap()
}

fn slot(day: i64) -> DateTime<Utc> {
    common::slot("2026-11-20T04:30:00Z") + chrono::Duration::days(day)
}

/// `N` instances tagged for the policy, one `/dev/sdf` volume each; returns the volume ids.
fn single_volume_instances<const N: usize>(fake: &FakeEc2) -> [String; N] {
    std::array::from_fn(|_| {
        let (_, mut v) = fake.add_instance(&[("Backup", "true")], &[("/dev/sdf", "gp3")]);
        v.remove(0)
    })
}

/// The run's `defer` problems, each checked to be a deferral under the pending-snapshot cap.
fn pending_limit_deferrals(report: &RunReport) -> Vec<&Problem> {
    let deferred: Vec<&Problem> = report
        .problems
        .iter()
        .filter(|p| p.operation == "defer")
        .collect();
    for p in &deferred {
        assert_eq!(p.code, "pending-limit", "{report:#?}");
    }
    deferred
}

/// Test-sized polling: 10 ms, doubling to 40 ms.
fn quick(deadline: Duration) -> Completion {
    Completion {
        deadline,
        first_poll: Duration::from_millis(10),
        max_poll: Duration::from_millis(40),
    }
}

async fn run(
    fake: &FakeEc2,
    cfg: &Config,
    day: i64,
    c: Completion,
    metrics: &Metrics,
) -> RunReport {
    fake.set_clock(slot(day));
    let spec = RunSpec::new(cfg.policy("prod").unwrap(), slot(day), FAKE_ACCOUNT)
        .firing(["daily"])
        .completion(c);
    worker::run(fake, &spec, metrics, || slot(day)).await.report
}

/// A completed snapshot of an earlier slot, tagged as snapwarden tags its own.
fn seed(fake: &FakeEc2, volume: &str, day: i64) -> String {
    let s = format_slot(slot(day));
    let tags = common::managed_tags("prod", "daily", &s);
    fake.seed_snapshot(volume, SnapState::Completed, FAKE_ACCOUNT, &tags)
}

fn of_volume(fake: &FakeEc2, volume: &str) -> Vec<(String, SnapState)> {
    let mut v: Vec<(String, SnapState)> = fake
        .snapshots()
        .into_iter()
        .filter(|s| *s.volume_id == *volume)
        .map(|s| (s.tags.get(TAG_SLOT).cloned().unwrap_or_default(), s.state))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// One series of the metrics as a scrape at the first run's slot would show it (staleness is measured from then).
fn metric(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = metrics.render(slot(0));
    common::metric(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

#[tokio::test]
async fn a_run_waits_for_completion_with_one_describe_per_200_pending_per_poll() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    // 7 instances x 40 volumes: 280 pending snapshots after the creates, two id chunks per poll.
    let devices: Vec<String> = (0..40).map(|i| format!("/dev/sd{i}")).collect();
    let devs: Vec<(&str, &str)> = devices.iter().map(|d| (d.as_str(), "gp3")).collect();
    for _ in 0..7 {
        fake.add_instance(&[("Backup", "true")], &devs);
    }
    // Each snapshot completes in the second answer that includes it.
    fake.complete_after_describes(Some(2));
    let before = fake.calls("DescribeSnapshots");
    let report = run(&fake, &cfg, 0, quick(Duration::from_secs(10)), &metrics).await;
    assert_eq!(report.result(), RunResult::Success, "{report:#?}");
    assert_eq!(report.created, 280);
    // The survey's sweep, then two polls of two chunks each.
    assert_eq!(fake.calls("DescribeSnapshots") - before, 1 + 2 * 2);
    assert!(fake
        .snapshots()
        .iter()
        .all(|s| s.state == SnapState::Completed));
    assert_eq!(
        metric(
            &metrics,
            "snapwarden_unprotected_volumes",
            &[
                ("policy", "prod"),
                ("schedule", "daily"),
                ("account", FAKE_ACCOUNT)
            ]
        ),
        0.0
    );
}

#[tokio::test]
async fn an_errored_snapshot_fails_its_volume_is_deleted_and_the_slot_retried() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let (_, vols) = fake.add_instance(
        &[("Backup", "true")],
        &[("/dev/sdf", "gp3"), ("/dev/sdg", "gp3")],
    );
    // Two earlier snapshots each: with keep last 2 a good run deletes the older one.
    for v in &vols {
        seed(&fake, v, -2);
        seed(&fake, v, -1);
    }
    fake.complete_after_describes(Some(1));
    fake.error_snapshots_of(&vols[0]);
    let report = run(&fake, &cfg, 0, quick(Duration::from_secs(5)), &metrics).await;
    assert_eq!(report.result(), RunResult::Partial, "{report:#?}");
    assert_eq!(report.failed_volumes(), 1, "{report:#?}");
    let p = report
        .problems
        .iter()
        .find(|p| p.code == "snapshot-error")
        .unwrap_or_else(|| panic!("{report:#?}"));
    assert_eq!(
        (p.resource.as_str(), p.operation),
        (vols[0].as_str(), "create")
    );
    assert_eq!(report.created, 1, "only the good one counts: {report:#?}");
    // The errored snapshot is gone, and its volume's history untouched (frozen); the other volume was pruned.
    let today = format_slot(slot(0));
    let first = of_volume(&fake, &vols[0]);
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        first
            .iter()
            .all(|(s, st)| *s != today && *st == SnapState::Completed),
        "{first:?}"
    );
    assert_eq!(of_volume(&fake, &vols[1]).len(), 2);
    assert_eq!(
        metric(
            &metrics,
            "snapwarden_snapshots_failed_total",
            &[
                ("operation", "complete"),
                ("policy", "prod"),
                ("account", FAKE_ACCOUNT),
                ("region", "us-east-1"),
                ("schedule", "daily")
            ]
        ),
        1.0
    );
    let digest = snapwarden::notify::digest(&report);
    assert!(
        digest
            .body
            .contains("snapshot-error: EBS could not complete the snapshot"),
        "{}",
        digest.body
    );

    // The volume recovers; a retry of the slot (catch-up) makes its snapshot and prunes as usual.
    fake.clear_faults();
    let report = run(&fake, &cfg, 0, quick(Duration::from_secs(5)), &metrics).await;
    assert_eq!(report.result(), RunResult::Success, "{report:#?}");
    assert_eq!(
        (report.created, report.already_done, report.deleted),
        (1, 1, 1),
        "{report:#?}"
    );
    let first = of_volume(&fake, &vols[0]);
    assert_eq!(
        first,
        [
            (format_slot(slot(-1)), SnapState::Completed),
            (today, SnapState::Completed)
        ]
    );
}

#[tokio::test]
async fn a_snapshot_pending_at_the_deadline_is_reported_counted_and_rechecked_next_run() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let (_, vols) = fake.add_instance(
        &[("Backup", "true")],
        &[("/dev/sdf", "gp3"), ("/dev/sdg", "gp3")],
    );
    for v in &vols {
        seed(&fake, v, -2);
        seed(&fake, v, -1);
    }
    // Nothing completes by itself.
    let started = std::time::Instant::now();
    let report = run(&fake, &cfg, 0, quick(Duration::from_millis(150)), &metrics).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(report.result(), RunResult::Partial, "{report:#?}");
    let pending: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.code == "snapshot-pending")
        .collect();
    assert_eq!(pending.len(), 2, "{report:#?}");
    assert!(pending.iter().all(|p| p.operation == "complete"));
    assert_eq!(report.failed_volumes(), 0);
    assert_eq!(
        metric(
            &metrics,
            "snapwarden_snapshots_pending_at_deadline_total",
            &[
                ("policy", "prod"),
                ("account", FAKE_ACCOUNT),
                ("region", "us-east-1")
            ]
        ),
        2.0
    );
    // Retention ran on the polled state: pending snapshots are kept and not counted, so both completed ones stay.
    assert_eq!(report.deleted, 0, "{report:#?}");
    assert_eq!(of_volume(&fake, &vols[0]).len(), 3);
    // Staleness counts completed snapshots only: yesterday's is still the newest protection.
    assert_eq!(
        metric(
            &metrics,
            "snapwarden_staleness_seconds",
            &[
                ("policy", "prod"),
                ("schedule", "daily"),
                ("account", FAKE_ACCOUNT)
            ]
        ),
        86_400.0
    );

    // By the next run one completed and one ended in error: the run re-checks both.
    let today = fake
        .snapshots()
        .into_iter()
        .filter(|s| s.state == SnapState::Pending)
        .map(|s| (s.volume_id.clone(), s.id.clone()))
        .collect::<Vec<_>>();
    assert_eq!(today.len(), 2);
    for (volume, id) in &today {
        let state = if **volume == *vols[0] {
            SnapState::Error
        } else {
            SnapState::Completed
        };
        fake.set_snapshot_state(id, state);
    }
    fake.complete_after_describes(Some(1));
    let report = run(&fake, &cfg, 1, quick(Duration::from_secs(5)), &metrics).await;
    let errored: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.code == "snapshot-error")
        .collect();
    assert_eq!(errored.len(), 1, "{report:#?}");
    // Yesterday's slot, not this run's: partial, not a failed volume of this slot.
    assert_eq!(
        (errored[0].operation, errored[0].resource.as_str()),
        ("complete", vols[0].as_str())
    );
    assert_eq!(report.result(), RunResult::Partial);
    assert_eq!(report.created, 2);
    assert!(!fake
        .snapshots()
        .iter()
        .any(|s| s.state != SnapState::Completed));
    // keep last 2: the second volume keeps day 0 and day 1; the first, whose day-0 errored, day -1 and day 1.
    let slots = |v: &str| {
        of_volume(&fake, v)
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        slots(&vols[1]),
        [format_slot(slot(0)), format_slot(slot(1))]
    );
    assert_eq!(
        slots(&vols[0]),
        [format_slot(slot(-1)), format_slot(slot(1))]
    );
}

#[tokio::test]
async fn dry_runs_and_runs_without_completion_do_not_poll() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    fake.add_instance(&[("Backup", "true")], &[("/dev/sdf", "gp3")]);
    let before = fake.calls("DescribeSnapshots");
    fake.set_clock(slot(0));
    let spec = RunSpec::new(cfg.policy("prod").unwrap(), slot(0), FAKE_ACCOUNT).firing(["daily"]);
    let report = worker::run(&fake, &spec, &metrics, || slot(0)).await.report;
    assert_eq!(report.result(), RunResult::Success, "{report:#?}");
    assert_eq!(
        fake.calls("DescribeSnapshots") - before,
        1,
        "the survey only"
    );
    // A zero deadline is "do not wait", not "do not look" (see the zero-deadline tests below).
    assert_eq!(
        worker::Completion::within(Duration::ZERO).deadline,
        Duration::ZERO
    );
    assert_eq!(
        worker::Completion::within(Duration::from_secs(600)).first_poll,
        Duration::from_secs(2)
    );
}

/// A dry run is the backend's: a run through `DryRun`, behind a decorator as `once --dry-run` has it, says so in
/// its report, does not poll (what it "created" does not exist and would stay pending until the deadline) and
/// leaves the run metrics alone.
#[tokio::test]
async fn a_dry_run_is_known_from_its_backend_through_a_decorator_and_does_not_poll() {
    let fake = Arc::new(FakeEc2::new(REGION));
    let cfg = config();
    let metrics = Arc::new(Metrics::new());
    fake.add_instance(&[("Backup", "true")], &[("/dev/sdf", "gp3")]);
    fake.set_clock(slot(0));
    let before = fake.calls("DescribeSnapshots");
    let dry: Arc<dyn Ec2> = Arc::new(DryRun::new(fake.clone()));
    let ec2 = Instrumented::new(dry, Arc::new(Semaphore::new(4)), metrics.clone());
    let spec = RunSpec::new(cfg.policy("prod").unwrap(), slot(0), FAKE_ACCOUNT)
        .firing(["daily"])
        .completion(quick(Duration::from_secs(5)));
    let report = worker::run(&ec2, &spec, &metrics, || slot(0)).await.report;
    assert!(report.dry_run, "{report:#?}");
    assert_eq!(report.result(), RunResult::Success, "{report:#?}");
    assert_eq!(report.created, 1, "{report:#?}");
    assert_eq!(
        fake.calls("DescribeSnapshots") - before,
        1,
        "the survey only"
    );
    assert!(fake.snapshots().is_empty());
    let text = metrics.render(slot(0));
    for untouched in ["snapwarden_runs_total{", "snapwarden_managed_snapshots{"] {
        assert!(!text.contains(untouched), "{untouched} in\n{text}");
    }
}

/// When the slow create returned and when each delete went out.
#[derive(Default)]
struct Timeline {
    slow_done: Mutex<Option<tokio::time::Instant>>,
    deletes: Mutex<Vec<(String, tokio::time::Instant)>>,
}

/// Delays every create of volume `slow` by `delay` and records the timeline.
fn slow_volume(fake: Arc<FakeEc2>, slow: String, delay: Duration, seen: Arc<Timeline>) -> Hooked {
    let (slow_after, seen_after) = (slow.clone(), seen.clone());
    Hooked::new(fake)
        .before(move |call| match call {
            Call::CreateSnapshot(r) if r.volume_id == slow => Step::Delay(delay),
            Call::DeleteSnapshot(id) => {
                let at = tokio::time::Instant::now();
                seen.deletes.lock().unwrap().push((id.to_string(), at));
                Step::Go
            }
            _ => Step::Go,
        })
        .after(move |call, _| {
            if let Call::CreateSnapshot(r) = call {
                if r.volume_id == slow_after {
                    *seen_after.slow_done.lock().unwrap() = Some(tokio::time::Instant::now());
                }
            }
            Step::Go
        })
}

#[tokio::test(start_paused = true)]
async fn a_volume_is_pruned_as_soon_as_its_new_snapshot_completes_not_after_every_create() {
    let fake = Arc::new(FakeEc2::new(REGION));
    let cfg = config();
    let metrics = Metrics::new();
    let [a, b] = single_volume_instances(&fake);
    let a_old = [seed(&fake, &a, -2), seed(&fake, &a, -1)];
    let b_old = [seed(&fake, &b, -2), seed(&fake, &b, -1)];
    fake.complete_after_describes(Some(1));
    fake.set_clock(slot(0));
    let seen = Arc::new(Timeline::default());
    let slow = slow_volume(
        fake.clone(),
        a.clone(),
        Duration::from_secs(100),
        seen.clone(),
    );
    let spec = RunSpec::new(cfg.policy("prod").unwrap(), slot(0), FAKE_ACCOUNT)
        .firing(["daily"])
        .completion(quick(Duration::from_secs(5)));
    let report = worker::run(&slow, &spec, &metrics, || slot(0)).await.report;
    assert_eq!(report.result(), RunResult::Success, "{report:#?}");
    assert_eq!((report.created, report.deleted), (2, 2));

    let slow_done = seen.slow_done.lock().unwrap().expect("the slow create ran");
    let deletes = seen.deletes.lock().unwrap().clone();
    let when = |id: &str| {
        deletes
            .iter()
            .find(|(d, _)| d == id)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("{id} not deleted: {deletes:?}"))
    };
    // B's new snapshot completed at the first poll: its oldest went while A's create was still in flight.
    assert!(when(&b_old[0]) < slow_done, "{deletes:?}");
    // A's oldest only once A's own new snapshot had completed.
    assert!(when(&a_old[0]) >= slow_done, "{deletes:?}");
    let left: Vec<String> = fake
        .snapshots()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert!(
        left.contains(&a_old[1]) && left.contains(&b_old[1]),
        "{left:?}"
    );
    assert_eq!(left.len(), 4, "two per volume: {left:?}");
}

#[tokio::test]
async fn a_survey_reads_every_page_of_snapshots() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let (_, vols) = fake.add_instance(&[("Backup", "true")], &[("/dev/sdf", "gp3")]);
    let old: Vec<String> = (-5..0).map(|d| seed(&fake, &vols[0], d)).collect();
    fake.set_page_size(2);
    let before = fake.calls("DescribeSnapshots");
    let report = run(&fake, &cfg, 0, quick(Duration::from_millis(50)), &metrics).await;
    assert_eq!(
        report.result(),
        RunResult::Partial,
        "pending at the deadline: {report:#?}"
    );
    // Five snapshots in pages of two: three survey requests, then polls of the one pending snapshot.
    assert!(fake.calls("DescribeSnapshots") - before >= 4);
    // Every page was read: the four oldest of the five are judged, and `last = 2` with the new one pending keeps
    // the two newest completed ones.
    let left: Vec<String> = fake
        .snapshots()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(report.deleted, 3, "{report:#?}");
    for id in &old[..3] {
        assert!(!left.contains(id), "{id} should be gone: {left:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn more_volumes_than_the_pending_cap_are_all_made_in_one_run_as_earlier_ones_complete() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let volumes: [String; 5] = single_volume_instances(&fake);
    // EC2's account limit: the fake refuses a create past two pending snapshots.
    fake.set_max_pending_snapshots(Some(2));
    fake.complete_after_describes(Some(1));
    let report = run(&fake, &cfg, 0, quick(Duration::from_secs(5)), &metrics).await;
    assert_eq!(report.result(), RunResult::Success, "{report:#?}");
    assert_eq!(report.created, 5, "{report:#?}");
    assert!(report.problems.is_empty(), "{report:#?}");
    // Five calls, none refused: each waited for room instead of trying.
    assert_eq!(fake.calls("CreateSnapshot"), 5);
    for v in &volumes {
        assert_eq!(
            of_volume(&fake, v),
            vec![(of_volume(&fake, v)[0].0.clone(), SnapState::Completed)]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_create_waiting_for_room_that_never_comes_is_deferred_to_the_next_run() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let [a, b] = single_volume_instances(&fake);
    fake.set_max_pending_snapshots(Some(1));
    // Snapshots never complete: the first holds the only place until the deadline.
    let report = run(&fake, &cfg, 0, quick(Duration::from_secs(1)), &metrics).await;
    assert_eq!(report.result(), RunResult::Partial, "{report:#?}");
    assert_eq!(report.created, 1, "{report:#?}");
    assert_eq!(fake.calls("CreateSnapshot"), 1);
    let deferred = pending_limit_deferrals(&report);
    assert_eq!(deferred.len(), 1, "{report:#?}");
    assert!(
        deferred[0].message.contains("cap"),
        "{}",
        deferred[0].message
    );
    let made: Vec<&String> = [&a, &b]
        .into_iter()
        .filter(|v| !of_volume(&fake, v).is_empty())
        .collect();
    assert_eq!(made.len(), 1);
    assert_ne!(*made[0], deferred[0].resource);
}

#[tokio::test(start_paused = true)]
async fn a_whole_instance_call_held_back_by_the_cap_is_deferred_as_createsnapshots() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let two = [("/dev/sdf", "gp3"), ("/dev/sdg", "gp3")];
    for _ in 0..2 {
        fake.add_instance(&[("Backup", "true")], &two);
    }
    // Room for one instance's two snapshots, which never complete: the other instance's call waits, then gives up.
    fake.set_max_pending_snapshots(Some(2));
    let report = run(&fake, &cfg, 0, quick(Duration::from_secs(1)), &metrics).await;
    assert_eq!(report.created, 2, "{report:#?}");
    assert_eq!(fake.calls("CreateSnapshots"), 1);
    let deferred = pending_limit_deferrals(&report);
    assert_eq!(deferred.len(), 2, "{report:#?}");
    for p in deferred {
        assert!(
            p.message.starts_with("CreateSnapshots in "),
            "{}",
            p.message
        );
    }
}

/// The daemon's own reading of `completion-deadline = "0s"`: do not wait for pending snapshots.
fn no_wait_spec(cfg: &Config, day: i64) -> RunSpec<'_> {
    RunSpec::new(cfg.policy("prod").unwrap(), slot(day), FAKE_ACCOUNT)
        .firing(["daily"])
        .completion(Completion::within(Duration::ZERO))
}

#[tokio::test]
async fn with_a_zero_deadline_an_error_at_the_first_describe_fails_the_volume_and_prunes_nothing() {
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let [vol] = single_volume_instances::<1>(&fake);
    // Three earlier snapshots: keep last 2 over a good new one would delete the two oldest.
    for day in [-3, -2, -1] {
        seed(&fake, &vol, day);
    }
    // The new snapshot is `error` in the first describe that includes it.
    fake.complete_after_describes(Some(1));
    fake.error_snapshots_of(&vol);
    fake.set_clock(slot(0));
    let spec = no_wait_spec(&cfg, 0);
    let report = worker::run(&fake, &spec, &metrics, || slot(0)).await.report;
    assert_eq!(report.result(), RunResult::Failure, "{report:#?}");
    assert_eq!(report.failed_volumes(), 1, "{report:#?}");
    assert_eq!((report.created, report.deleted), (0, 0), "{report:#?}");
    let p = report
        .problems
        .iter()
        .find(|p| p.code == "snapshot-error")
        .unwrap_or_else(|| panic!("{report:#?}"));
    assert_eq!((p.resource.as_str(), p.operation), (vol.as_str(), "create"));
    // History untouched (the volume is frozen); the errored snapshot itself restores nothing and is gone.
    let left = of_volume(&fake, &vol);
    assert_eq!(
        left,
        [-3, -2, -1].map(|d| (format_slot(slot(d)), SnapState::Completed)),
        "{report:#?}"
    );
}

#[tokio::test]
async fn with_a_zero_deadline_a_pending_snapshot_is_reported_not_yet_complete_and_the_run_succeeds()
{
    let fake = FakeEc2::new(REGION);
    let cfg = config();
    let metrics = Metrics::new();
    let [vol] = single_volume_instances::<1>(&fake);
    for day in [-3, -2, -1] {
        seed(&fake, &vol, day);
    }
    // Nothing completes by itself: the one describe after the create still sees it pending.
    fake.set_clock(slot(0));
    let before = fake.calls("DescribeSnapshots");
    let spec = no_wait_spec(&cfg, 0);
    let report = worker::run(&fake, &spec, &metrics, || slot(0)).await.report;
    assert_eq!(report.result(), RunResult::Success, "{report:#?}");
    assert_eq!((report.created, report.pending), (1, 1), "{report:#?}");
    assert!(report.problems.is_empty(), "{report:#?}");
    assert_eq!(
        fake.calls("DescribeSnapshots") - before,
        2,
        "the survey and one describe of the new snapshot"
    );
    // A pending snapshot protects nothing yet: retention keeps the two newest completed ones and deletes one.
    assert_eq!(report.deleted, 1, "{report:#?}");
    assert_eq!(of_volume(&fake, &vol).len(), 3);
}
