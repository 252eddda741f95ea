//! Retention against moto where history used to be lost (issue 12): a snapshot whose slot lies in the future, copies
//! whose volume id is EC2's placeholder, two completed snapshots of one volume and slot, and `once --slot` with a
//! future slot. Runs go through the worker (`worker::run`, as the daemon calls it) on the SDK backend, and the CLI
//! through the real binary. moto keeps a source's volume id on a copy, real EC2 does not: the copies here are
//! snapshots of a scratch volume whose id the fault proxy rewrites to `vol-ffffffff` in every DescribeSnapshots
//! answer, which is what EC2 shows for copies.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::{Moto, REGION};
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::{self, DryRun, Ec2};
use snapwarden::report::RunResult;
use snapwarden::retention::{Action, Decision};
use snapwarden::worker::{self, Outcome, Region, RunSpec};

/// A fire time of `30 4 * * *`.
const SLOT: &str = "2026-11-20T04:30:00Z";
/// A slot no run could have written yet: what `once --slot` with a mistyped year tags snapshots with.
const FUTURE: &str = "2062-12-05T04:30:00Z";

fn slot() -> DateTime<Utc> {
    common::slot(SLOT)
}

fn days_before(days: i64) -> String {
    snapwarden::schedule::format_slot(slot() - chrono::Duration::days(days))
}

fn policy(backup: &str, keep: &str) -> String {
    format!(
        "[[policy]]\nname = \"heal\"\ntarget = {{ resource = \"instance\", tags = {{ Backup = \"{backup}\" }} }}\n\
         [[policy.schedule]]\nname = \"daily\"\ncron = \"30 4 * * *\"\nkeep = {keep}\n"
    )
}

async fn backend(endpoint: &str, rest: &str) -> (Shared, Arc<Region>) {
    let text = format!(
        "[aws]\nendpoint-url = \"{endpoint}\"\nregions = [\"{REGION}\"]\nmax-attempts = 2\n\n{rest}"
    );
    let config = config::from_toml_str(Path::new("retention_heal.toml"), &text, &[])
        .unwrap_or_else(|e| panic!("test config is valid: {e}"));
    let shared = Shared::new(config);
    let mut regions = daemon::aws_regions(&shared).await.expect("aws_regions");
    (shared, regions.remove(0))
}

/// A dry run is one through an `ec2::DryRun` backend: the run learns it from the backend.
async fn run(shared: &Shared, ec2: &dyn Ec2, account: &str) -> Outcome {
    let spec = RunSpec::new(shared.config.policy("heal").unwrap(), slot(), account)
        .firing(["daily"])
        .completion(worker::Completion::within(Duration::from_secs(30)))
        .explain(true);
    worker::run(ec2, &spec, &shared.metrics, Utc::now).await
}

/// A snapshot as snapwarden writes it for `heal`/`daily` at `slot`, plus `extra` tags.
async fn managed(
    raw: &aws_sdk_ec2::Client,
    volume: &str,
    slot: &str,
    extra: &[(&str, &str)],
) -> String {
    let tags = [&common::managed_tags("heal", "daily", slot)[..], extra].concat();
    common::moto_snapshot(raw, volume, &tags).await
}

/// Snapshot id -> volume id of every snapshot of the policy, read with the raw client straight from moto.
async fn held(raw: &aws_sdk_ec2::Client) -> BTreeMap<String, String> {
    let out = raw
        .describe_snapshots()
        .owner_ids("self")
        .filters(common::filter("tag:snapwarden:policy", &["heal"]))
        .send()
        .await
        .expect("DescribeSnapshots");
    out.snapshots()
        .iter()
        .map(|s| {
            (
                s.snapshot_id().unwrap().to_string(),
                s.volume_id().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn decision<'a>(plan: &'a [Decision], id: &str) -> &'a Decision {
    plan.iter()
        .find(|d| &*d.snapshot_id == id)
        .unwrap_or_else(|| panic!("no decision for {id}: {plan:#?}"))
}

fn labels(d: &Decision) -> Vec<&'static str> {
    d.reasons.iter().map(|r| r.as_str()).collect()
}

fn deleted(plan: &[Decision]) -> Vec<String> {
    let mut ids: Vec<String> = plan
        .iter()
        .filter(|d| d.action == Action::Delete)
        .map(|d| d.snapshot_id.to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_slot_erases_no_history_and_the_dry_run_agrees() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) = common::launch_instance(&raw, &[("Backup", "future")], &["/dev/sdf"]).await;
    let vol = &volumes[0];
    let future = managed(&raw, vol, FUTURE, &[]).await;
    let mut history = Vec::new();
    for d in 1..=3 {
        history.push(managed(&raw, vol, &days_before(d), &[]).await);
    }
    let (shared, region) = backend(&moto.endpoint, &policy("future", "{ within = \"7d\" }")).await;

    let dry = DryRun::new(region.ec2.clone());
    let predicted = run(&shared, &dry, &region.account_id).await;
    assert_eq!(
        deleted(&predicted.plan),
        Vec::<String>::new(),
        "{:#?}",
        predicted.plan
    );
    let real = run(&shared, region.ec2.as_ref(), &region.account_id).await;
    assert_eq!(real.report.created, 1, "{:#?}", real.report);
    assert_eq!(
        deleted(&real.plan),
        deleted(&predicted.plan),
        "the dry run predicts the real run"
    );
    assert_eq!(real.report.deleted, 0, "{:#?}", real.report);

    // Nothing was lost: the history, the future one and this slot's new snapshot are all in moto.
    let now_held = held(&raw).await;
    assert_eq!(now_held.len(), 5, "{now_held:#?}");
    for id in history.iter().chain([&future]) {
        assert!(now_held.contains_key(id), "{id} deleted: {now_held:#?}");
    }
    for outcome in [&predicted, &real] {
        assert_eq!(labels(decision(&outcome.plan, &future)), ["future-slot"]);
        let newest = outcome
            .plan
            .iter()
            .find(|d| labels(d).contains(&"newest"))
            .expect("a newest");
        assert_ne!(
            *newest.snapshot_id, *future,
            "the future slot is not the newest"
        );
        // Reported, both times: a problem the digest shows, and the run is not plain success.
        let problem = outcome
            .report
            .problems
            .iter()
            .find(|p| p.code == "future-slot")
            .unwrap_or_else(|| panic!("no future-slot problem: {:#?}", outcome.report));
        assert!(problem.message.contains(&future), "{}", problem.message);
        assert!(problem.message.contains(FUTURE), "{}", problem.message);
        assert_eq!(outcome.report.result(), RunResult::Partial);
    }
    let text = shared.metrics.render(Utc::now());
    assert!(
        text.contains(&format!(
            "snapwarden_kept_snapshots{{account=\"123456789012\",policy=\"heal\",reason=\"future-slot\",region=\"{REGION}\"}} 1"
        )),
        "{text}"
    );
    // Staleness is measured from this slot's snapshot, not held at zero by the future one.
    let stale = shared.metrics.staleness(Utc::now());
    let (age, unprotected) = stale[&("heal".to_string(), "daily".to_string())];
    assert_eq!(unprotected, 0);
    let age = age.expect("a staleness");
    let want = (Utc::now() - slot()).num_seconds() as f64;
    assert!(
        (age - want).abs() < 120.0,
        "staleness {age}, want about {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_with_the_placeholder_volume_id_are_judged_per_source_never_pooled() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let devices = ["/dev/sdf", "/dev/sdg", "/dev/sdh"];
    let (instance, _) = common::launch_instance(&raw, &[("Backup", "copies")], &devices).await;
    // The copies: snapshots of a scratch volume, shown to snapwarden with EC2's placeholder as volume id.
    let scratch = common::moto_volume(&raw, &[]).await;
    let mut oldest = Vec::new();
    for device in devices {
        for d in 1..=4 {
            let tags = [
                (ec2::TAG_INSTANCE, instance.as_str()),
                (ec2::TAG_DEVICE, device),
            ];
            let id = managed(&raw, &scratch, &days_before(d), &tags).await;
            if d == 4 {
                oldest.push(id);
            }
        }
    }
    let unplaced = managed(&raw, &scratch, &days_before(9), &[]).await;
    let proxy = FaultProxy::start(moto.port, 7);
    proxy.set_rules(vec![Rule::new(
        &["DescribeSnapshots"],
        When::Always,
        Fault::Rewrite(vec![(scratch.clone(), ec2::COPY_VOLUME_ID.to_string())]),
    )]);
    let (shared, region) = backend(&proxy.endpoint, &policy("copies", "{ last = 3 }")).await;

    let outcome = run(&shared, region.ec2.as_ref(), &region.account_id).await;
    assert_eq!(outcome.report.created, 3, "{:#?}", outcome.report);
    assert!(proxy.count("DescribeSnapshots", "rewritten") > 0);
    // Each source keeps its three newest copies: only each one's oldest goes.
    oldest.sort();
    assert_eq!(deleted(&outcome.plan), oldest, "{:#?}", outcome.plan);
    let copies: Vec<String> = held(&raw)
        .await
        .into_iter()
        .filter(|(_, v)| *v == scratch)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(copies.len(), 3 * 3 + 1, "{copies:#?}");
    // Plans say which source a copy is of, and the one that records none is kept and reported.
    for d in outcome
        .plan
        .iter()
        .filter(|d| copies.contains(&d.snapshot_id.to_string()))
    {
        if *d.snapshot_id == *unplaced {
            assert_eq!(labels(d), ["unplaced-copy"]);
            assert!(d.volume_id.contains(&unplaced), "{d:?}");
        } else {
            assert!(
                d.volume_id
                    .starts_with(&format!("copy-of:{instance}:/dev/sd")),
                "{d:?}"
            );
            assert!(!d.orphan, "a copy of a targeted volume is no orphan: {d:?}");
        }
    }
    let problem = outcome
        .report
        .problems
        .iter()
        .find(|p| p.code == "unplaced-copy")
        .unwrap_or_else(|| panic!("no unplaced-copy problem: {:#?}", outcome.report));
    assert!(problem.message.contains(&unplaced), "{}", problem.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_completed_snapshots_of_one_slot_heal_to_the_older() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) = common::launch_instance(&raw, &[("Backup", "twice")], &["/dev/sdf"]).await;
    let vol = &volumes[0];
    let earlier = managed(&raw, vol, &days_before(1), &[]).await;
    let first = managed(&raw, vol, SLOT, &[]).await;
    // EC2's StartTime tells the two apart; moto stamps it with the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = managed(&raw, vol, SLOT, &[]).await;
    let (shared, region) = backend(&moto.endpoint, &policy("twice", "{ last = 7 }")).await;

    let outcome = run(&shared, region.ec2.as_ref(), &region.account_id).await;
    assert_eq!(
        (outcome.report.created, outcome.report.already_done),
        (0, 1),
        "{:#?}",
        outcome.report
    );
    assert_eq!(
        deleted(&outcome.plan),
        std::slice::from_ref(&second),
        "{:#?}",
        outcome.plan
    );
    assert_eq!(labels(decision(&outcome.plan, &second)), ["duplicate"]);
    assert_eq!(outcome.report.deleted, 1);
    let left = held(&raw).await;
    assert!(
        left.contains_key(&first) && left.contains_key(&earlier),
        "{left:#?}"
    );
    assert!(!left.contains_key(&second), "{left:#?}");
    // The slot's snapshots were seeded without the tags a run writes: the one that stands for the slot gets them,
    // the extra is not tagged while it is being deleted (that raced, and failed the run as `tag` problems).
    assert_eq!(
        outcome.report.result(),
        RunResult::Success,
        "{:#?}",
        outcome.report
    );
    let described = raw
        .describe_snapshots()
        .snapshot_ids(&first)
        .send()
        .await
        .expect("DescribeSnapshots");
    let tags = described.snapshots()[0].tags();
    assert!(
        tags.iter().any(|t| t.key() == Some(ec2::TAG_INSTANCE)),
        "{tags:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_refuses_a_future_slot_unless_allowed() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) =
        common::launch_instance(&raw, &[("Backup", "once-future")], &["/dev/sdf"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapwarden.toml");
    let text = format!(
        "[aws]\nendpoint-url = \"{}\"\nregions = [\"{REGION}\"]\nmax-attempts = 2\n\n{}",
        moto.endpoint,
        policy("once-future", "{ last = 3 }")
    );
    std::fs::write(&path, text).unwrap();
    let once = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_snapwarden"))
            .arg("--config")
            .arg(&path)
            .args([
                "once",
                "--policy",
                "heal",
                "--schedule",
                "daily",
                "--slot",
                FUTURE,
            ])
            .args(extra)
            .envs(common::aws_env())
            .output()
            .expect("run snapwarden")
    };
    let refused = once(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("in the future") && stderr.contains("--allow-future-slot"),
        "{stderr}"
    );
    assert!(
        held(&raw).await.is_empty(),
        "a refused slot created nothing"
    );

    let allowed = once(&["--allow-future-slot", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(stdout.contains("would create: snapshot of"), "{stdout}");

    // `plan` lists a snapshot with a future slot, kept for that reason, without an --at beyond it.
    let future = managed(&raw, &volumes[0], FUTURE, &[]).await;
    let plan = Command::new(env!("CARGO_BIN_EXE_snapwarden"))
        .arg("--config")
        .arg(&path)
        .args(["plan", "--json"])
        .envs(common::aws_env())
        .output()
        .expect("run snapwarden plan");
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(0), "{stdout}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("plan --json");
    let row = rows
        .iter()
        .find(|r| r["snapshot_id"] == future.as_str())
        .unwrap_or_else(|| panic!("{future} not listed: {stdout}"));
    assert_eq!(row["action"], "keep", "{row}");
    assert_eq!(row["labels"], serde_json::json!(["future-slot"]), "{row}");
    assert_eq!(row["slot"], FUTURE, "{row}");
}
