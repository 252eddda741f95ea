//! Calendar retention against a real moto server, through the daemon's own AWS path: a year of daily history
//! (seeded as snapshots whose slot tags lie in the past, since moto's StartTime is always "now") pruned by a GFS
//! policy leaves exactly the slots worked out by hand below; a deletion cap blocks the whole plan and the alert
//! digest names the setting to raise; snapshots of a deleted volume follow the policy's orphan setting.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use common::{Moto, REGION};
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::pace::PaceConfig;
use snapwarden::notify;
use snapwarden::report::RunResult;
use snapwarden::schedule::format_slot;
use snapwarden::worker::{self, Outcome, RunSpec};

/// Saturday 21 November 2026, 04:30 UTC: the slot every run here fires.
fn slot() -> DateTime<Utc> {
    common::slot("2026-11-21T04:30:00Z")
}

async fn shared(moto: &Moto, policy: &str) -> Shared {
    let text = format!(
        "[aws]\nendpoint-url = \"{}\"\nregions = [\"{REGION}\"]\nmax-attempts = 2\n\n{policy}",
        moto.endpoint
    );
    Shared::new(
        config::from_toml_str(Path::new("moto_gfs.toml"), &text, &[]).expect("valid test config"),
    )
}

async fn run_once(shared: &Shared) -> Outcome {
    // Moto has no rate limits, and at the daemon's pace (half of AWS's 5 deletes/s) the year's 346 deletions
    // would take two minutes: the same pacing code, a larger budget.
    let pace = PaceConfig {
        budget_fraction: 20.0,
        ..daemon::pace_config(&shared.config)
    };
    let region = daemon::aws_regions_paced(shared, &pace)
        .await
        .expect("moto region")
        .remove(0);
    let policy = &shared.config.policies[0];
    let spec = RunSpec::new(policy, slot(), &region.account_id)
        .firing([policy.schedules[0].name.clone()])
        .concurrency(8)
        .explain(true);
    worker::run(region.ec2.as_ref(), &spec, &shared.metrics, Utc::now).await
}

/// One managed snapshot of `volume` per day for `days` days before [`slot`], as snapwarden would have made them.
async fn seed_daily(ec2: &aws_sdk_ec2::Client, volume: &str, policy: &str, days: i64) {
    use futures::stream::{self, StreamExt};
    let seed = |d: i64| async move {
        let at = format_slot(slot() - Duration::days(d));
        common::moto_snapshot(ec2, volume, &common::managed_tags(policy, "daily", &at)).await;
    };
    stream::iter(1..=days)
        .map(seed)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// Slots (as dates) of the managed snapshots of `volume` left in moto.
async fn slots_left(ec2: &aws_sdk_ec2::Client, volume: &str) -> BTreeSet<String> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    out.snapshots()
        .iter()
        .filter(|s| s.volume_id() == Some(volume))
        .filter_map(|s| s.tags().iter().find(|t| t.key() == Some("snapwarden:slot")))
        .map(|t| t.value().unwrap()[..10].to_string())
        .collect()
}

const GFS: &str = r#"
[[policy]]
name = "gfs"
target = { resource = "volume", tags = { Backup = "gfs" } }
[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { daily = 7, weekly = 4, monthly = 12 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_history_is_pruned_to_exactly_the_gfs_slots() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let vol = common::moto_volume(&ec2, &[("Backup", "gfs")]).await;
    seed_daily(&ec2, &vol, "gfs", 365).await;
    let s = shared(&moto, GFS).await;

    let first = run_once(&s).await;
    assert_eq!(
        first.report.result(),
        RunResult::Success,
        "{:?}",
        first.report
    );
    assert_eq!(first.report.created, 1);
    // Once today's snapshot has completed, a second run of the slot creates nothing and prunes to the rules.
    let second = run_once(&s).await;
    assert_eq!(second.report.already_done, 1);
    assert_eq!(second.report.created, 0);

    // Worked out by hand (2026-11-21 is a Saturday; ISO weeks run Monday to Sunday):
    let daily = [
        "2026-11-21",
        "2026-11-20",
        "2026-11-19",
        "2026-11-18",
        "2026-11-17",
        "2026-11-16",
        "2026-11-15",
    ];
    // The newest of each of the last four ISO weeks: W47 (16-22 Nov), W46, W45, W44 (26 Oct - 1 Nov).
    let weekly = ["2026-11-21", "2026-11-15", "2026-11-08", "2026-11-01"];
    // The newest of each of the last twelve months: month ends back to December 2025 (February has 28 days).
    let monthly = [
        "2026-11-21",
        "2026-10-31",
        "2026-09-30",
        "2026-08-31",
        "2026-07-31",
        "2026-06-30",
        "2026-05-31",
        "2026-04-30",
        "2026-03-31",
        "2026-02-28",
        "2026-01-31",
        "2025-12-31",
    ];
    let want: BTreeSet<String> = daily
        .iter()
        .chain(&weekly)
        .chain(&monthly)
        .map(|d| d.to_string())
        .collect();
    assert_eq!(want.len(), 20);
    assert_eq!(slots_left(&ec2, &vol).await, want);
    assert_eq!(first.report.deleted + second.report.deleted, 366 - 20);

    // The reasons say which tier keeps what.
    let third = run_once(&s).await;
    assert_eq!(
        third.report.deleted, 0,
        "planning again after applying deletes nothing"
    );
    let text = |day: &str| -> Vec<String> {
        let d = third
            .plan
            .iter()
            .find(|d| format_slot(d.slot).starts_with(day))
            .expect("decision for the day");
        d.reasons.iter().map(ToString::to_string).collect()
    };
    assert!(
        text("2026-11-15").contains(&"daily daily 7/7".to_string()),
        "{:?}",
        text("2026-11-15")
    );
    assert!(
        text("2026-11-15").contains(&"daily weekly 2/4".to_string()),
        "{:?}",
        text("2026-11-15")
    );
    assert!(
        text("2025-12-31").contains(&"daily monthly 12/12".to_string()),
        "{:?}",
        text("2025-12-31")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_the_deletion_cap_deletes_nothing_and_the_alert_names_the_setting() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let vol = common::moto_volume(&ec2, &[("Backup", "gfs")]).await;
    seed_daily(&ec2, &vol, "gfs", 40).await;
    let policy = GFS.replace(
        "name = \"gfs\"\n",
        "name = \"gfs\"\nmax-deletes-per-run = 10\n",
    );
    let s = shared(&moto, &policy).await;

    let out = run_once(&s).await;
    assert_eq!(out.report.deleted, 0);
    assert_eq!(
        slots_left(&ec2, &vol).await.len(),
        41,
        "nothing deleted, today's made"
    );
    assert_eq!(out.report.result(), RunResult::Partial);
    let cap = out
        .report
        .problems
        .iter()
        .find(|p| p.code == "deletion-cap")
        .expect("a deletion-cap problem");
    assert!(
        cap.message.contains("max-deletes-per-run"),
        "{}",
        cap.message
    );
    let digest = notify::digest(&out.report);
    assert!(
        digest.subject.starts_with("snapwarden PARTIAL gfs/daily"),
        "{}",
        digest.subject
    );
    assert!(
        digest.body.contains("max-deletes-per-run"),
        "{}",
        digest.body
    );
    let metrics = s.metrics.render(Utc::now());
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "snapwarden_deletions_blocked_total{account=\"123456789012\",policy=\"gfs\""
        ) && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// Runs a policy whose volume was deleted, with the given orphan setting; returns the slots left.
async fn orphan_run(orphans: &str) -> (usize, BTreeSet<String>) {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let vol = common::moto_volume(&ec2, &[("Backup", "gfs")]).await;
    // Daily history that ended 40 days ago, when the volume went away.
    seed_daily(&ec2, &vol, "gfs", 60).await;
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    for s in out.snapshots() {
        let slot = s
            .tags()
            .iter()
            .find(|t| t.key() == Some("snapwarden:slot"))
            .unwrap()
            .value()
            .unwrap();
        if common::slot(slot) > slot_days_ago(40) {
            ec2.delete_snapshot()
                .snapshot_id(s.snapshot_id().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    ec2.delete_volume().volume_id(&vol).send().await.unwrap();
    let policy = GFS
        .replace(
            "keep = { daily = 7, weekly = 4, monthly = 12 }",
            "keep = { daily = 3 }",
        )
        .replace(
            "name = \"gfs\"\n",
            &format!("name = \"gfs\"\norphans = {orphans}\n"),
        );
    let s = shared(&moto, &policy).await;
    let run = run_once(&s).await;
    assert_eq!(run.report.targeted_volumes, 0);
    assert!(
        run.plan.iter().all(|d| d.orphan),
        "every decision is about the orphan"
    );
    (run.report.deleted, slots_left(&ec2, &vol).await)
}

fn slot_days_ago(days: i64) -> DateTime<Utc> {
    slot() - Duration::days(days)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_deleted_volume_follow_the_orphan_setting() {
    // keep-rules: the normal rules, so the three newest dailies stay (the newest for ever).
    // Daily history from 60 to 40 days back: 21 snapshots.
    let (deleted, left) = orphan_run("\"keep-rules\"").await;
    assert_eq!((deleted, left.len()), (18, 3));
    assert!(left.contains("2026-10-12"), "{left:?}");
    // keep-all: nothing of a gone volume is ever deleted.
    let (deleted, left) = orphan_run("\"keep-all\"").await;
    assert_eq!((deleted, left.len()), (0, 21));
    // expire-after 30d: the volume's newest snapshot is 40 days old, so all of it goes.
    let (deleted, left) = orphan_run("{ expire-after = \"30d\" }").await;
    assert_eq!((deleted, left.len()), (21, 0));
    // expire-after 60d: not yet; the keep rules apply meanwhile.
    let (deleted, left) = orphan_run("{ expire-after = \"60d\" }").await;
    assert_eq!((deleted, left.len()), (18, 3));
}
