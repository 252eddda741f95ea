//! `snapwarden plan`, the command an operator runs before a config change. Two halves:
//!
//! - Stable output: a deterministic in-memory fleet (`FakeEc2`, fixed clock, sequential ids) planned at a fixed
//!   `--at` through the library (`plan::gather`, the code the binary runs) must print `tests/fixtures/plan.json`,
//!   `plan.txt` (the README's worked example) and, in diff mode against `plan-new.toml`, `plan-diff.json` and
//!   `plan-diff.txt` byte for byte, and the README must quote the two tables as they are. The fleet covers calendar buckets (a sparse history, an ISO week spanning New Year, a month end),
//!   pinned and pending snapshots, one whose slot lies after `--at`, an expired orphan and a plan over a deletion
//!   cap. After an intended change of output, regenerate with `SNAPWARDEN_BLESS=1 cargo test --test plan_cli`
//!   and review the diff of the fixtures.
//! - The real binary against moto in diff mode: a new config with a smaller `last` deletes more than the current
//!   one, `--at` hides a snapshot that does not exist yet, `--fail-on-delete` exits 3 for the riskier direction
//!   only, and nothing in EC2 changes.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::process::{run_to_end, snapwarden, text};
use common::{Moto, REGION};
use serde_json::Value;

use snapwarden::config::{self, Config};
use snapwarden::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use snapwarden::ec2::Ec2;
use snapwarden::plan::{self, Request};
use snapwarden::retention::SnapState;
use snapwarden::worker::{Destinations, Region};

const AT: &str = "2026-01-10T12:00:00Z";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Config {
    config::load(&fixture(name), &[]).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn at() -> DateTime<Utc> {
    snapwarden::schedule::parse_slot(AT).unwrap()
}

/// The fleet's real "now": after its last snapshot (2026-01-11), which `--at` then leaves out as not made yet.
fn today() -> DateTime<Utc> {
    at() + chrono::Duration::days(2)
}

/// Compares `actual` with the checked-in fixture, or rewrites the fixture when `SNAPWARDEN_BLESS=1`.
fn assert_fixture(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("SNAPWARDEN_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with SNAPWARDEN_BLESS=1", path.display()));
    assert!(
        actual == expected,
        "{name} differs from the output; if the change is intended, regenerate with SNAPWARDEN_BLESS=1 and review \
         the fixture's diff\n--- actual ---\n{actual}\n--- expected ---\n{expected}"
    );
}

/// The README's example history on one instance volume, an orphan, and a volume whose policy is over its cap.
/// Seeded in a fixed order, so every id is the same on every run.
fn fleet() -> Arc<FakeEc2> {
    let fake = FakeEc2::new("us-east-1");
    fake.set_clock("2026-01-11T03:00:05Z".parse().unwrap());
    let (_, vols) = fake.add_instance(&[("Backup", "app")], &[("/dev/xvdf", "gp3")]);
    let app = &vols[0];
    let gone = fake.add_volume(&[("Backup", "app")]);
    let tight = fake.add_volume(&[("Backup", "tight")]);
    let completed = SnapState::Completed;
    // 2025-12-29 and 2026-01-02 share ISO week 2026-W01; 01-03, 01-04 and 01-08 have no snapshot.
    for day in [
        "2025-11-28",
        "2025-12-15",
        "2025-12-29",
        "2025-12-31",
        "2026-01-02",
        "2026-01-05",
        "2026-01-06",
        "2026-01-07",
        "2026-01-09",
    ] {
        let slot = format!("{day}T03:00:00Z");
        let mut tags = common::managed_tags("app", "nightly", &slot).to_vec();
        if day == "2025-12-15" {
            tags.push(("snapwarden:keep", "audit"));
        }
        fake.seed_snapshot(app, completed, FAKE_ACCOUNT, &tags);
    }
    fake.seed_snapshot(
        app,
        SnapState::Pending,
        FAKE_ACCOUNT,
        &common::managed_tags("app", "nightly", "2026-01-10T03:00:00Z"),
    );
    // After --at: does not exist yet as far as the plan is concerned.
    fake.seed_snapshot(
        app,
        completed,
        FAKE_ACCOUNT,
        &common::managed_tags("app", "nightly", "2026-01-11T03:00:00Z"),
    );
    for day in ["2025-11-02", "2025-11-03"] {
        let slot = format!("{day}T03:00:00Z");
        fake.seed_snapshot(
            &gone,
            completed,
            FAKE_ACCOUNT,
            &common::managed_tags("app", "nightly", &slot),
        );
    }
    fake.remove_volume(&gone);
    for day in [
        "2026-01-05",
        "2026-01-06",
        "2026-01-07",
        "2026-01-08",
        "2026-01-09",
    ] {
        let slot = format!("{day}T03:00:00Z");
        fake.seed_snapshot(
            &tight,
            completed,
            FAKE_ACCOUNT,
            &common::managed_tags("tight", "daily", &slot),
        );
    }
    Arc::new(fake)
}

fn regions(fake: &Arc<FakeEc2>) -> Vec<Arc<Region>> {
    copying_regions(fake, Default::default())
}

/// The one region of `fake`, its copies going to `copies`.
fn copying_regions(fake: &Arc<FakeEc2>, copies: Arc<Destinations>) -> Vec<Arc<Region>> {
    let ec2: Arc<dyn Ec2> = fake.clone();
    vec![Arc::new(Region {
        ec2,
        account_id: FAKE_ACCOUNT.into(),
        account: FAKE_ACCOUNT.into(),
        own: true,
        ssm: None,
        copies,
    })]
}

/// A region of account `account` (label) with id `id`, whose snapshots `fake` holds.
fn account_region(fake: &Arc<FakeEc2>, account: &str, id: &str, own: bool) -> Arc<Region> {
    Arc::new(Region {
        ec2: fake.clone(),
        account_id: id.into(),
        account: account.into(),
        own,
        ssm: None,
        copies: Default::default(),
    })
}

#[tokio::test]
async fn two_accounts_are_planned_apart_and_a_policy_only_where_it_serves() {
    let config = config::from_toml_str(
        Path::new("accounts.toml"),
        r#"
[daemon]
timezone = "UTC"
[aws]
regions = ["us-east-1"]
[[aws.account]]
name = "prod"
role-arn = "arn:aws:iam::222222222222:role/snapwarden"

[[policy]]
name = "all"
target = { resource = "volume", tags = { Backup = "all" } }
schedule = [{ name = "daily", cron = "0 3 * * *", keep = { last = 1 } }]

[[policy]]
name = "prod-only"
accounts = ["prod"]
target = { resource = "volume", tags = { Backup = "prod" } }
schedule = [{ name = "daily", cron = "0 3 * * *", keep = { last = 1 } }]
"#,
        &[],
    )
    .unwrap();
    // Both accounts hold the same estate in the same region, each snapshot owned by its own account.
    let estate = |owner: &str| {
        let fake = Arc::new(FakeEc2::new("us-east-1"));
        fake.set_clock(at());
        for policy in ["all", "prod-only"] {
            let tag = if policy == "all" { "all" } else { "prod" };
            let vol = fake.add_volume(&[("Backup", tag)]);
            for day in ["2026-01-08", "2026-01-09"] {
                let slot = format!("{day}T03:00:00Z");
                let tags = common::managed_tags(policy, "daily", &slot);
                fake.seed_snapshot(&vol, SnapState::Completed, owner, &tags);
            }
        }
        fake
    };
    let prod_id = "222222222222";
    let regions = [
        account_region(&estate(FAKE_ACCOUNT), FAKE_ACCOUNT, FAKE_ACCOUNT, true),
        account_region(&estate(prod_id), "prod", prod_id, false),
    ];
    let gathered = plan::gather(&regions, &request(&config, at()))
        .await
        .unwrap();
    let json = plan::output(&gathered, at(), false, true).unwrap().stdout;
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    let seen: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["policy"].as_str().unwrap(),
                r["account"].as_str().unwrap(),
                r["region"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
            )
        })
        .collect();
    // Ordered by policy, account, region; `prod-only` is not planned in the own account, whose estate it would
    // otherwise judge.
    assert_eq!(
        seen,
        [
            ("all", FAKE_ACCOUNT, "us-east-1", "keep"),
            ("all", FAKE_ACCOUNT, "us-east-1", "delete"),
            ("all", "prod", "us-east-1", "keep"),
            ("all", "prod", "us-east-1", "delete"),
            ("prod-only", "prod", "us-east-1", "keep"),
            ("prod-only", "prod", "us-east-1", "delete"),
        ],
        "{json}"
    );

    let table = plan::output(&gathered, at(), false, false).unwrap().stdout;
    let header = table.lines().find(|l| l.starts_with("POLICY")).unwrap();
    assert!(
        header.starts_with("POLICY     ACCOUNT       REGION"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("prod-only  prod          us-east-1  vol-")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("volume    prod-only prod/us-east-1 vol-")),
        "{table}"
    );
}

/// The plan of `config` alone (no current config) over every policy at `--at`, with the real clock at `now`.
fn request(config: &Config, now: DateTime<Utc>) -> Request<'_> {
    Request {
        new: config,
        current: None,
        policy: None,
        at: at(),
        now,
    }
}

#[tokio::test]
async fn plan_json_and_table_of_a_fixed_fleet_match_the_fixtures() {
    let fake = fleet();
    let config = load("plan.toml");
    let req = request(&config, today());
    let gathered = plan::gather(&regions(&fake), &req).await.unwrap();
    let report = plan::report(&gathered.new, at());
    // What the binary prints: `plan::output` is all `main` calls after `gather`.
    let json = plan::output(&gathered, at(), false, true).unwrap().stdout;

    // The facts the README's example states, checked here so that a blessed fixture cannot quietly change them.
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    let by_slot = |policy: &str, slot: &str| -> &Value {
        rows.iter()
            .find(|r| r["policy"] == policy && r["slot"] == format!("{slot}T03:00:00Z"))
            .unwrap_or_else(|| panic!("no {policy} row for {slot}:\n{json}"))
    };
    let app: Vec<(&str, &str)> = [
        "2026-01-10",
        "2026-01-09",
        "2026-01-07",
        "2026-01-06",
        "2026-01-05",
        "2026-01-02",
        "2025-12-31",
        "2025-12-29",
        "2025-12-15",
        "2025-11-28",
        "2025-11-03",
        "2025-11-02",
    ]
    .iter()
    .map(|d| {
        let r = by_slot("app", d);
        (*d, r["action"].as_str().unwrap())
    })
    .collect();
    let deleted: Vec<&str> = app
        .iter()
        .filter(|(_, a)| *a == "delete")
        .map(|(d, _)| *d)
        .collect();
    assert_eq!(
        deleted,
        [
            "2026-01-05",
            "2025-12-29",
            "2025-11-28",
            "2025-11-03",
            "2025-11-02"
        ],
        "{json}"
    );
    let labels = |policy: &str, day: &str| by_slot(policy, day)["labels"].clone();
    assert_eq!(
        labels("app", "2026-01-09"),
        serde_json::json!(["newest", "daily", "weekly", "monthly"])
    );
    assert_eq!(
        labels("app", "2026-01-02"),
        serde_json::json!(["weekly"]),
        "the New Year week's newest"
    );
    assert_eq!(labels("app", "2025-12-31"), serde_json::json!(["monthly"]));
    assert_eq!(labels("app", "2026-01-10"), serde_json::json!(["pending"]));
    assert_eq!(labels("app", "2025-12-15"), serde_json::json!(["pinned"]));
    assert_eq!(by_slot("app", "2025-11-03")["orphan"], true);
    assert_eq!(
        labels("app", "2025-11-03"),
        serde_json::json!(["orphan-expired"])
    );
    assert!(
        !json.contains("2026-01-11T03:00:00Z"),
        "a slot after --at does not exist yet:\n{json}"
    );
    assert_eq!(report.caps.len(), 1, "{json}");
    assert_eq!(report.caps[0].policy, "tight");
    assert_eq!(report.caps[0].setting, "max-deletes-per-run");
    assert_eq!(
        labels("tight", "2026-01-05"),
        serde_json::json!(["over-cap"])
    );

    assert_fixture("plan.json", &json);
    let out = plan::output(&gathered, at(), false, false).unwrap();
    assert!(out.would_delete);
    let table = out.stdout;
    assert_fixture("plan.txt", &table);
    // The README's worked example quotes policy `app` of this table: it must not drift from it.
    let quoted: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("POLICY") || l.starts_with("app "))
        .collect();
    assert_in_readme(&quoted);

    // Same data, same bytes: nothing depends on the order the backend lists snapshots in or on the wall clock.
    let again = plan::gather(&regions(&fake), &req).await.unwrap();
    let again = plan::output(&again, at(), false, true).unwrap().stdout;
    assert_eq!(again, json);
    assert_eq!(
        fake.calls("DeleteSnapshot") + fake.calls("CreateSnapshot"),
        0
    );
}

#[tokio::test]
async fn diff_of_the_fixed_fleet_matches_its_fixture() {
    let fake = fleet();
    let (current, new) = (load("plan.toml"), load("plan-new.toml"));
    let req = Request {
        new: &new,
        current: Some(&current),
        policy: Some("app"),
        at: at(),
        now: today(),
    };
    let gathered = plan::gather(&regions(&fake), &req).await.unwrap();
    let (cur, new) = (
        plan::report(&gathered.current, at()),
        plan::report(&gathered.new, at()),
    );
    let changes = plan::diff(&cur, &new);
    let json = plan::output(&gathered, at(), true, true).unwrap().stdout;
    let summary: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.slot.as_str(), c.change))
        .collect();
    // daily 3 -> 2 lets 01-06 go; without the weekly tier 01-02 (the New Year week's newest) goes too.
    assert_eq!(
        summary,
        [
            ("2026-01-06T03:00:00Z", "newly-deleted"),
            ("2026-01-02T03:00:00Z", "newly-deleted")
        ],
        "{json}"
    );
    assert_eq!(changes[1].current.reasons, ["nightly weekly 2/2"]);
    assert_eq!(changes[1].new.reasons, ["expired"]);
    assert!(plan::diff_would_delete(&new, &changes));
    assert_fixture("plan-diff.json", &json);
    let table = plan::output(&gathered, at(), true, false).unwrap().stdout;
    assert_fixture("plan-diff.txt", &table);
    assert_in_readme(&table.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>());
}

/// Each line appears in the README, in this order and next to each other (a quoted block).
fn assert_in_readme(lines: &[&str]) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let readme: Vec<&str> = readme.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        readme.windows(lines.len()).any(|w| w == lines),
        "README.md no longer quotes this output; paste it into the \"Retention rules\" section:\n{}",
        lines.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The binary against moto (helpers follow tests/e2e_cli.rs)
// ---------------------------------------------------------------------------------------------------------------

/// A config file `name` in `dir` against moto with one policy `diffed` keeping `keep`.
fn write_config(dir: &Path, name: &str, endpoint: &str, keep: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        r#"[daemon]
listen = "127.0.0.1:{port}"
timezone = "UTC"

[aws]
regions = ["{REGION}"]
endpoint-url = "{endpoint}"
max-attempts = 2
operation-timeout = "55s"
attempt-timeout = "50s"

[[policy]]
name = "diffed"
[policy.target]
resource = "instance"
tags = {{ Backup = "e2e-plan-diff" }}

[[policy.schedule]]
name = "daily"
cron = "0 3 * * *"
keep = {keep}
"#,
        port = common::free_port()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// One instance with one EBS volume; returns the volume id.
async fn instance_volume(ec2: &aws_sdk_ec2::Client, tags: &[(&str, &str)]) -> String {
    let (_, mut volumes) = common::launch_instance(ec2, tags, &["/dev/sdf"]).await;
    volumes.remove(0)
}

async fn snapshot_ids(ec2: &aws_sdk_ec2::Client) -> BTreeSet<String> {
    ec2.describe_snapshots()
        .send()
        .await
        .expect("DescribeSnapshots on moto")
        .snapshots()
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_mode_shows_what_a_smaller_last_would_delete_and_fails_ci_only_for_that_direction() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let vol = instance_volume(&ec2, &[("Backup", "e2e-plan-diff")]).await;
    let mut by_day = std::collections::BTreeMap::new();
    for day in ["05", "06", "07", "08", "09", "11"] {
        let slot = format!("2026-01-{day}T03:00:00Z");
        let id = common::moto_snapshot(&ec2, &vol, &common::managed_tags("diffed", "daily", &slot))
            .await;
        by_day.insert(day, id);
    }
    let before = snapshot_ids(&ec2).await;
    let dir = tempfile::tempdir().unwrap();
    let current = write_config(dir.path(), "current.toml", &moto.endpoint, "{ last = 4 }");
    let new = write_config(dir.path(), "new.toml", &moto.endpoint, "{ last = 2 }");
    let plan_args = |new: &Path, current: &Path| {
        let mut cmd = snapwarden();
        cmd.arg("--config")
            .arg(new)
            .args(["plan", "--at", "2026-01-10T00:00:00Z", "--against"])
            .arg(current);
        cmd
    };

    let out = run_to_end(
        plan_args(&new, &current).arg("--json"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let changes: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON array ({e})\n{}", text(&out)));
    // last = 4 keeps 01-09..01-06, last = 2 only 01-09 and 01-08: 01-07 and 01-06 are newly deleted; 01-05 goes
    // under both. Had the 01-11 snapshot (after --at) counted, 01-08 would be newly deleted as well.
    let listed: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["snapshot_id"].as_str().unwrap(),
                c["change"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (by_day["07"].as_str(), "newly-deleted"),
            (by_day["06"].as_str(), "newly-deleted")
        ],
        "{}",
        text(&out)
    );
    for (c, rank) in changes.iter().zip([3, 4]) {
        assert_eq!(c["policy"], "diffed");
        assert_eq!(c["volume_id"], vol.as_str());
        assert_eq!(c["current"]["action"], "keep", "{c}");
        assert_eq!(
            c["current"]["reasons"],
            serde_json::json!([format!("daily last {rank}/4")]),
            "{c}"
        );
        assert_eq!(c["current"]["labels"], serde_json::json!(["last"]), "{c}");
        assert_eq!(c["new"]["action"], "delete", "{c}");
        assert_eq!(c["new"]["reasons"], serde_json::json!(["expired"]), "{c}");
    }

    // For CI: the change that deletes more fails, the one that deletes less passes; the table says why.
    let out = run_to_end(
        plan_args(&new, &current).arg("--fail-on-delete"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in [
        by_day["07"].as_str(),
        "newly-deleted",
        "keep: daily last 3/4",
        "delete: expired",
        "the new config deletes 2 snapshots the current one keeps and keeps 0 it deletes",
    ] {
        assert!(table.contains(needle), "no `{needle}`\n{}", text(&out));
    }
    assert!(!table.contains(by_day["11"].as_str()), "{}", text(&out));
    let out = run_to_end(
        plan_args(&current, &new).arg("--fail-on-delete"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("newly-kept"),
        "{}",
        text(&out)
    );

    assert_eq!(snapshot_ids(&ec2).await, before, "plan changed EC2");
}

/// The copy of `source` (a snapshot of `volume` in us-east-1 at `slot`) into `dest`, tagged as a run tags it.
async fn copy_into(dest: &FakeEc2, source: &str, volume: &str, slot: &str) -> String {
    let mut tags: snapwarden::ec2::Tags = common::managed_tags("app", "nightly", slot)
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in [
        ("snapwarden:source-snapshot", source),
        ("snapwarden:source-region", "us-east-1"),
        ("snapwarden:source-volume", volume),
    ] {
        tags.insert(k.into(), v.into());
    }
    let request = snapwarden::ec2::CopySnapshot {
        source_region: "us-east-1".into(),
        source_snapshot_id: source.into(),
        description: "copy".into(),
        encrypted: false,
        kms_key_id: None,
        tags,
    };
    dest.copy_snapshot(&request).await.unwrap().id.to_string()
}

#[tokio::test]
async fn plan_shows_the_copies_in_each_destination_the_held_sources_and_what_the_next_run_copies() {
    let (src, dest) = (
        Arc::new(FakeEc2::new("us-east-1")),
        Arc::new(FakeEc2::new("eu-west-1")),
    );
    FakeEc2::link_regions(&[src.clone(), dest.clone()]);
    src.set_clock("2026-01-10T03:00:05Z".parse().unwrap());
    dest.set_clock("2026-01-10T03:00:05Z".parse().unwrap());
    let vol = src.add_volume(&[("Backup", "app")]);
    let mut ids = std::collections::BTreeMap::new();
    for day in ["01", "02", "05", "06", "07", "08", "09"] {
        let slot = format!("2026-01-{day}T03:00:00Z");
        let tags = common::managed_tags("app", "nightly", &slot);
        ids.insert(
            day,
            src.seed_snapshot(&vol, SnapState::Completed, FAKE_ACCOUNT, &tags),
        );
    }
    // eu-west-1 holds completed copies of the 1st and 2nd (their sources pruned since), 5th and 6th, and a
    // pending one of the 7th.
    let mut copies = std::collections::BTreeMap::new();
    for day in ["01", "02", "05", "06"] {
        let slot = format!("2026-01-{day}T03:00:00Z");
        copies.insert(day, copy_into(&dest, &ids[day], &vol, &slot).await);
    }
    dest.complete_all();
    copies.insert(
        "07",
        copy_into(&dest, &ids["07"], &vol, "2026-01-07T03:00:00Z").await,
    );
    for day in ["01", "02"] {
        src.delete_snapshot(&ids[day]).await.unwrap();
    }

    let config = load("plan-copy.toml");
    let dests = Destinations::new(20, [dest.clone() as Arc<dyn Ec2>]);
    let regions = copying_regions(&src, Arc::new(dests));
    let gathered = plan::gather(&regions, &request(&config, at()))
        .await
        .unwrap();
    let out = plan::output(&gathered, at(), false, true).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let row = |region: &str, id: &str| {
        rows.iter()
            .find(|r| r["region"] == region && r["snapshot_id"] == id)
            .unwrap_or_else(|| panic!("no row {region} {id}: {rows:#?}"))
            .clone()
    };
    let brief = |r: &Value| {
        (
            r["action"].as_str().unwrap().to_string(),
            r["labels"].clone(),
            r["copy_to"].clone(),
        )
    };
    // The source: its own last 2 (the 8th also held until its copy, to be made, completes; the newest needs no
    // hold), and the 7th held only for its copy, still pending (the destination keeps 3).
    let to_eu = serde_json::json!(["eu-west-1"]);
    let none = Value::Null;
    for (day, action, labels, copy_to) in [
        ("09", "keep", serde_json::json!(["newest", "last"]), &to_eu),
        (
            "08",
            "keep",
            serde_json::json!(["copy-pending", "last"]),
            &to_eu,
        ),
        ("07", "keep", serde_json::json!(["copy-pending"]), &none),
        ("06", "delete", serde_json::json!(["expired"]), &none),
        ("05", "delete", serde_json::json!(["expired"]), &none),
    ] {
        let r = row("us-east-1", &ids[day]);
        assert_eq!(
            brief(&r),
            (action.to_string(), labels, copy_to.clone()),
            "source {day}: {r:#}"
        );
        assert!(r.get("source_region").is_none(), "{r:#}");
    }
    assert_eq!(
        row("us-east-1", &ids["07"])["reasons"],
        serde_json::json!(["copy to eu-west-1 not made yet"])
    );
    // The destination: its copies, grouped by the source volume, judged by the copy rule's keep (last 3 completed;
    // the pending one is kept apart).
    let copy_volume = format!("copy-of:{vol}");
    for (day, action, state) in [
        ("07", "keep", "pending"),
        ("06", "keep", "completed"),
        ("05", "keep", "completed"),
        ("02", "keep", "completed"),
        ("01", "delete", "completed"),
    ] {
        let r = row("eu-west-1", &copies[day]);
        assert_eq!(
            (
                r["action"].as_str().unwrap(),
                r["state"].as_str().unwrap(),
                r["volume_id"].as_str().unwrap(),
                r["source_region"].as_str().unwrap(),
                r["source_snapshot_id"].as_str().unwrap(),
            ),
            (
                action,
                state,
                copy_volume.as_str(),
                "us-east-1",
                ids[day].as_str()
            ),
            "copy of the {day}th: {r:#}"
        );
    }
    assert_eq!(rows.len(), 5 + 5, "{rows:#?}");
    assert!(out.would_delete);

    let table = plan::output(&gathered, at(), false, false).unwrap().stdout;
    let line = |day: &str| {
        format!(
            "would copy {} ({vol} slot 2026-01-{day}T03:00:00Z) of policy app from us-east-1 to eu-west-1",
            ids[day]
        )
    };
    let (eighth, ninth) = (
        table.find(&line("08")).unwrap_or_else(|| panic!("{table}")),
        table.find(&line("09")).unwrap_or_else(|| panic!("{table}")),
    );
    assert!(eighth < ninth, "oldest first:\n{table}");
    assert!(table.contains("copy to eu-west-1 not made yet"), "{table}");
    assert!(
        table.contains(&format!("eu-west-1  {copy_volume}")),
        "{table}"
    );
}

#[tokio::test]
async fn plan_refuses_to_show_a_policy_whose_copy_destination_it_cannot_read() {
    let src = Arc::new(FakeEc2::new("us-east-1"));
    src.add_volume(&[("Backup", "app")]);
    let config = load("plan-copy.toml");
    // No backend for eu-west-1: its copies, and what it would be sent, are unknown.
    let err = plan::gather(&regions(&src), &request(&config, at()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("policy `app`: copy destination eu-west-1 cannot be read:"),
        "{err}"
    );
}
