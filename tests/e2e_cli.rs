//! End to end: the real `snapwarden` binary, run as an operator runs it, against a moto server. Fleets are seeded
//! with the EC2 SDK, config files are written to a temporary directory, and the binary is started with
//! `std::process::Command`. Covered: the daemon (`run`) firing a two-second schedule, pruning, and serving
//! `/metrics`, `/status`, `/healthz`, `/readyz`, then stopping cleanly on SIGTERM with JSON run logs; `once`
//! (idempotent per slot, `--dry-run`, a `--slot` that is not a fire time); `validate` exit codes and messages;
//! a start without credentials; `next` in a DST zone; `plan --json`; and shutdown while a run is in flight (a
//! proxy in front of moto holds CreateSnapshot): the first signal waits, a second exits at once, an expired
//! grace period exits 1; and the systemd notify protocol (READY once the listener is up, watchdog pings from the
//! scheduler loop, STOPPING on SIGTERM). Every assertion message carries the binary's captured output.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Snapshot;
use chrono::{DateTime, Datelike, Utc, Weekday};
use common::process::{run_to_end, snapwarden, text, Daemon};
use common::{http_get, metric_sum, Moto, ACCOUNT, REGION};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------------------------
// Config files and fleets
// ---------------------------------------------------------------------------------------------------------------

/// A config file in `dir`: daemon on `listen_port`, EC2 at `endpoint`, one region, then `rest` verbatim (policies
/// and any extra sections). A few attempts only, so a broken endpoint fails a test quickly instead of retrying.
fn write_config(
    dir: &Path,
    endpoint: &str,
    listen_port: u16,
    daemon_extra: &str,
    rest: &str,
) -> PathBuf {
    let aws = "max-attempts = 2\noperation-timeout = \"55s\"\nattempt-timeout = \"50s\"";
    common::write_config(dir, listen_port, daemon_extra, endpoint, aws, rest)
}

/// Launches one instance with `tags` and one EBS volume per device; returns its volume ids (moto creates no root
/// volume when block device mappings are given).
async fn instance(
    ec2: &aws_sdk_ec2::Client,
    tags: &[(&str, &str)],
    devices: &[&str],
) -> Vec<String> {
    let (_, mut ids) = common::launch_instance(ec2, tags, devices).await;
    ids.sort();
    ids
}

async fn all_snapshots(ec2: &aws_sdk_ec2::Client) -> Vec<Snapshot> {
    ec2.describe_snapshots()
        .send()
        .await
        .expect("DescribeSnapshots on moto")
        .snapshots()
        .to_vec()
}

fn tag<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Snapshots tagged as managed by `policy`, grouped by volume.
fn managed_by_volume(snaps: &[Snapshot], policy: &str) -> BTreeMap<String, Vec<Snapshot>> {
    let mut out: BTreeMap<String, Vec<Snapshot>> = BTreeMap::new();
    for s in snaps {
        if tag(s, "snapwarden:managed") == Some("true")
            && tag(s, "snapwarden:policy") == Some(policy)
        {
            out.entry(s.volume_id().unwrap_or_default().to_string())
                .or_default()
                .push(s.clone());
        }
    }
    out
}

fn get(port: u16, path: &str, d: &Daemon) -> (u16, String) {
    http_get(port, path)
        .unwrap_or_else(|| panic!("GET {path} on port {port}: no answer\n{}", d.logs()))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// The event message of a tracing JSON line, whether or not the subscriber flattens event fields.
fn message(line: &Value) -> Option<&str> {
    line["fields"]["message"]
        .as_str()
        .or(line["message"].as_str())
}

// ---------------------------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fires_prunes_serves_http_and_stops_on_sigterm() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let targeted = instance(
        &ec2,
        &[("Backup", "e2e-run"), ("Name", "web")],
        &["/dev/sdf", "/dev/sdg"],
    )
    .await;
    let untouched = instance(&ec2, &[("Backup", "no")], &["/dev/sdf"]).await;

    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let grace = Duration::from_secs(10);
    let config = write_config(
        dir.path(),
        &moto.endpoint,
        port,
        "shutdown-grace = \"10s\"",
        &common::instance_policy("fast", "e2e-run", "every2s", "*/2 * * * * *", "last = 2"),
    );
    let mut d = Daemon::spawn(snapwarden().arg("run").env("SNAPWARDEN_CONFIG", &config));

    // Three fires (catch-up at start, then every 2 s) are the fewest after which `last = 2` must have deleted.
    let labels = [("policy", "fast"), ("schedule", "every2s")];
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        assert!(d.is_running(), "the daemon exited early\n{}", d.logs());
        if let Some((200, body)) = http_get(port, "/metrics") {
            let all = body.clone();
            let created =
                metric_sum(&all, "snapwarden_snapshots_created_total", &labels).unwrap_or(0.0);
            let deleted =
                metric_sum(&all, "snapwarden_snapshots_deleted_total", &labels).unwrap_or(0.0);
            if created >= 3.0 * targeted.len() as f64 && deleted >= targeted.len() as f64 {
                break all;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no three fires with deletions within 15 s\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Snapshots exist for every targeted volume and for nothing else.
    let snaps = all_snapshots(&ec2).await;
    let by_volume = managed_by_volume(&snaps, "fast");
    for v in &targeted {
        assert!(
            by_volume.contains_key(v),
            "no snapshot of {v} in moto: {by_volume:#?}\n{}",
            d.logs()
        );
    }
    assert!(
        !snaps
            .iter()
            .any(|s| s.volume_id() == Some(untouched[0].as_str())),
        "the untagged instance's volume was snapshotted\n{}",
        d.logs()
    );

    // Metrics: counters, the RPO gauge, run results and build info.
    let created = metric_sum(
        &metrics,
        "snapwarden_snapshots_created_total",
        &[
            ("policy", "fast"),
            ("schedule", "every2s"),
            ("region", REGION),
        ],
    );
    assert!(
        created.is_some_and(|c| c > 0.0),
        "created_total missing\n{}",
        d.logs()
    );
    let (code, body) = get(port, "/metrics", &d);
    assert_eq!(code, 200, "{body}");
    let now_metrics = body.clone();
    let staleness = metric_sum(&now_metrics, "snapwarden_staleness_seconds", &labels)
        .unwrap_or_else(|| panic!("no staleness gauge for fast/every2s:\n{body}"));
    // The newest snapshot of every volume is at most a couple of fires old.
    assert!(
        (0.0..10.0).contains(&staleness),
        "staleness {staleness}:\n{body}"
    );
    assert_eq!(
        metric_sum(&now_metrics, "snapwarden_unprotected_volumes", &labels),
        Some(0.0),
        "{body}"
    );
    let ok_runs = metric_sum(
        &now_metrics,
        "snapwarden_runs_total",
        &[
            ("policy", "fast"),
            ("schedule", "every2s"),
            ("kind", "snapshot"),
            ("result", "success"),
        ],
    );
    assert!(
        ok_runs.is_some_and(|n| n >= 3.0),
        "runs_total success:\n{body}"
    );
    assert_eq!(
        metric_sum(
            &now_metrics,
            "snapwarden_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{body}"
    );

    // Status: the schedule with its last run in the region and a next fire.
    let (code, body) = get(port, "/status", &d);
    assert_eq!(code, 200, "{body}");
    let status: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
    let sched = &status["policies"]["fast"]["every2s"];
    assert_eq!(sched["cron"], "*/2 * * * * *", "{body}");
    let last = &sched["last_runs"][format!("{ACCOUNT}/{REGION}")];
    assert_eq!(last["result"], "success", "{body}");
    assert!(
        last["run_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    let next: DateTime<Utc> = sched["next_fire"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no next_fire: {body}"));
    let at: DateTime<Utc> = status["now"].as_str().unwrap().parse().unwrap();
    assert!(
        next > at - chrono::Duration::seconds(3) && next <= at + chrono::Duration::seconds(3),
        "next {next} vs now {at}: {body}"
    );
    assert_eq!(get(port, "/healthz", &d).0, 200);
    let (code, body) = get(port, "/readyz", &d);
    assert_eq!(code, 200, "{body}");

    // SIGTERM: in-flight runs finish, then exit 0 within the grace period (+ notifier drain and a margin).
    d.signal("TERM");
    let status = d
        .wait_exit(grace + Duration::from_secs(8))
        .unwrap_or_else(|| panic!("still running {grace:?} after SIGTERM\n{}", d.logs()));
    assert_eq!(status.code(), Some(0), "{}", d.logs());

    // Retention after the last run: at most `last = 2` per volume (the newest is among them), each of this
    // schedule and with its own slot.
    let by_volume = managed_by_volume(&all_snapshots(&ec2).await, "fast");
    for v in &targeted {
        let snaps = &by_volume[v];
        let slots: BTreeSet<&str> = snaps
            .iter()
            .filter_map(|s| tag(s, "snapwarden:slot"))
            .collect();
        assert!(
            (1..=2).contains(&snaps.len()),
            "{v} has {} snapshots: {snaps:#?}\n{}",
            snaps.len(),
            d.logs()
        );
        assert_eq!(
            slots.len(),
            snaps.len(),
            "one snapshot per slot: {snaps:#?}"
        );
        for s in snaps {
            assert_eq!(tag(s, "snapwarden:schedule"), Some("every2s"));
            assert_eq!(tag(s, "Name"), Some("web"), "the instance's Name is copied");
        }
    }

    // JSON logs: each run is a span carrying its identity, and the run's summary is one line.
    let lines = json_lines(&d.stdout());
    assert!(!lines.is_empty(), "stdout is not JSON lines\n{}", d.logs());
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|l| message(l) == Some("run finished"))
        .collect();
    assert!(
        finished.len() >= 3,
        "fewer than three `run finished` lines\n{}",
        d.logs()
    );
    for l in &finished {
        let span = &l["span"];
        assert!(
            span["run_id"].as_str().is_some_and(|s| s.len() == 16),
            "{l}"
        );
        assert_eq!(span["policy"], "fast", "{l}");
        assert_eq!(span["schedule"], "every2s", "{l}");
        assert_eq!(span["region"], REGION, "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| message(l) == Some("stopped") && l["fields"]["drained"] == true),
        "no clean `stopped` line\n{}",
        d.logs()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// One-shot runs
// ---------------------------------------------------------------------------------------------------------------

/// `(created, already present)` from `once`'s summary line.
fn once_counts(out: &Output) -> (u32, u32) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{ACCOUNT}/{REGION} ")) && l.contains(" created, "))
        .unwrap_or_else(|| panic!("no summary line\n{}", text(out)));
    let number_before = |what: &str| -> u32 {
        let head = &line[..line
            .find(what)
            .unwrap_or_else(|| panic!("no `{what}` in {line}"))];
        head.rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("count before `{what}` in {line}"))
    };
    (
        number_before(" created,"),
        number_before(" already present"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_is_idempotent_dry_run_touches_nothing_and_slot_must_be_a_fire_time() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let volumes = instance(&ec2, &[("Backup", "e2e-once")], &["/dev/sdf", "/dev/sdg"]).await;
    let dir = tempfile::tempdir().unwrap();
    // Yearly, so the latest slot cannot move between the two runs below.
    let config = write_config(
        dir.path(),
        &moto.endpoint,
        common::free_port(),
        "",
        &common::instance_policy("yearly", "e2e-once", "newyear", "0 0 1 1 *", "last = 3"),
    );
    let once = |extra: &[&str]| {
        let mut cmd = snapwarden();
        cmd.arg("--config")
            .arg(&config)
            .args(["once", "--policy", "yearly", "--schedule", "newyear"])
            .args(extra);
        run_to_end(&mut cmd, Duration::from_secs(20))
    };

    let first = once(&[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert_eq!(once_counts(&first), (2, 0), "{}", text(&first));
    let by_volume = managed_by_volume(&all_snapshots(&ec2).await, "yearly");
    let latest_new_year = format!("{}-01-01T00:00:00Z", Utc::now().year());
    for v in &volumes {
        let snaps = &by_volume[v];
        assert_eq!(snaps.len(), 1, "{v}: {snaps:#?}\n{}", text(&first));
        assert_eq!(
            tag(&snaps[0], "snapwarden:slot"),
            Some(latest_new_year.as_str())
        );
    }

    let second = once(&[]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert_eq!(once_counts(&second), (0, 2), "{}", text(&second));

    // A dry run of an earlier slot would create one per volume, and creates nothing.
    let before = all_snapshots(&ec2).await.len();
    let earlier = format!("{}-01-01T00:00:00Z", Utc::now().year() - 1);
    let dry = once(&["--slot", &earlier, "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let stdout = String::from_utf8_lossy(&dry.stdout);
    let would: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("would create:"))
        .collect();
    assert_eq!(would.len(), 2, "{}", text(&dry));
    for v in &volumes {
        assert!(
            would.iter().any(|l| l.contains(v.as_str())),
            "{v} missing\n{}",
            text(&dry)
        );
    }
    assert_eq!(
        all_snapshots(&ec2).await.len(),
        before,
        "dry run changed moto\n{}",
        text(&dry)
    );

    // Not a fire time: refused, naming the latest valid slot before it.
    let year = Utc::now().year() - 1;
    let bad = once(&["--slot", &format!("{year}-06-15T12:34:56Z")]);
    assert_ne!(bad.status.code(), Some(0), "{}", text(&bad));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("not a fire time"), "{}", text(&bad));
    assert!(
        stderr.contains(&format!("{year}-01-01T00:00:00Z")),
        "{}",
        text(&bad)
    );
    assert_eq!(
        all_snapshots(&ec2).await.len(),
        before,
        "a refused slot changed moto"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_json_lists_every_managed_snapshot_with_action_and_reasons() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let vol = instance(&ec2, &[("Backup", "e2e-plan")], &["/dev/sdf"])
        .await
        .remove(0);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &moto.endpoint,
        common::free_port(),
        "",
        &common::instance_policy("planned", "e2e-plan", "daily", "30 4 * * *", "last = 2"),
    );

    // One snapshot written by the binary itself (today's slot), then history seeded with past slots.
    let mut cmd = snapwarden();
    cmd.arg("--config")
        .arg(&config)
        .args(["once", "--policy", "planned", "--schedule", "daily"]);
    let out = run_to_end(&mut cmd, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let managed = |slot: &'static str| common::managed_tags("planned", "daily", slot).to_vec();
    let mut pinned_tags = managed("2025-03-01T04:30:00Z");
    pinned_tags.push(("snapwarden:keep", "audit"));
    let pinned = common::moto_snapshot(&ec2, &vol, &pinned_tags).await;
    let second_oldest = common::moto_snapshot(&ec2, &vol, &managed("2025-03-02T04:30:00Z")).await;
    let third_oldest = common::moto_snapshot(&ec2, &vol, &managed("2025-03-03T04:30:00Z")).await;
    let recent = common::moto_snapshot(&ec2, &vol, &managed("2025-03-04T04:30:00Z")).await;
    let unmanaged = common::moto_snapshot(&ec2, &vol, &[("Owner", "someone else")]).await;
    let other_policy = common::moto_snapshot(
        &ec2,
        &vol,
        &[
            ("snapwarden:managed", "true"),
            ("snapwarden:policy", "other"),
            ("snapwarden:slot", "2025-03-01T04:30:00Z"),
        ],
    )
    .await;
    let before: BTreeSet<String> = all_snapshots(&ec2)
        .await
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect();

    let mut cmd = snapwarden();
    cmd.arg("--config").arg(&config).args(["plan", "--json"]);
    let out = run_to_end(&mut cmd, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not a JSON array ({e})\n{}", text(&out)));

    let expected: BTreeSet<String> = managed_by_volume(&all_snapshots(&ec2).await, "planned")
        .into_values()
        .flatten()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect();
    assert_eq!(
        expected.len(),
        5,
        "the binary's snapshot and four seeded ones"
    );
    let listed: BTreeSet<String> = rows
        .iter()
        .map(|r| r["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expected, "{}", text(&out));
    assert_eq!(
        rows.len(),
        expected.len(),
        "each snapshot once\n{}",
        text(&out)
    );
    assert!(!listed.contains(&unmanaged) && !listed.contains(&other_policy));

    let row = |id: &str| rows.iter().find(|r| r["snapshot_id"] == id).unwrap();
    for r in &rows {
        assert_eq!(r["policy"], "planned", "{r}");
        assert_eq!(r["volume_id"], vol.as_str(), "{r}");
        assert!(r["action"] == "keep" || r["action"] == "delete", "{r}");
        let reasons = r["reasons"]
            .as_array()
            .unwrap_or_else(|| panic!("no reasons: {r}"));
        assert!(
            !reasons.is_empty() && reasons.iter().all(Value::is_string),
            "{r}"
        );
    }
    // `last = 2`: today's and 03-04 are kept, 03-03 and 03-02 go, the pinned 03-01 stays.
    let reasons = |id: &str| row(id)["reasons"].to_string();
    assert_eq!(row(&recent)["action"], "keep", "{}", reasons(&recent));
    assert!(
        reasons(&recent).contains("daily last 2/2"),
        "{}",
        reasons(&recent)
    );
    for id in [&third_oldest, &second_oldest] {
        assert_eq!(row(id)["action"], "delete", "{}", text(&out));
        assert!(reasons(id).contains("expired"), "{}", reasons(id));
    }
    assert_eq!(row(&pinned)["action"], "keep", "{}", text(&out));
    assert!(reasons(&pinned).contains("pinned"), "{}", reasons(&pinned));

    // Plan changes nothing.
    let after: BTreeSet<String> = all_snapshots(&ec2)
        .await
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect();
    assert_eq!(after, before, "plan deleted or created snapshots");
}

// ---------------------------------------------------------------------------------------------------------------
// Commands that need no AWS
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn validate_accepts_a_good_file_and_names_every_problem_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        dir.path(),
        "http://127.0.0.1:9",
        common::free_port(),
        "timezone = \"Europe/Berlin\"",
        &common::instance_policy("prod", "true", "daily", "30 4 * * *", "last = 7"),
    );
    let out = run_to_end(
        snapwarden().arg("--config").arg(&good).arg("validate"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}",
        text(&out)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"[daemon]
listen = "127.0.0.1:9180"
colour = "blue"

[[policy]]
name = "prod"
[policy.target]
tags = { Backup = "true" }

[[policy.schedule]]
name = "daily"
cron = "0 3 * *"
keep = { last = 7 }

[[policy.schedule]]
name = "weekly"
cron = "0 5 * * 0"
"#,
    )
    .unwrap();
    let (out, stderr) = validate_refuses(&bad);
    for key in [
        "daemon.colour",
        "policy[prod].schedule[daily].cron",
        "policy[prod].schedule[weekly].keep",
    ] {
        let (line, fix) = problem_at(&stderr, key, &out);
        assert!(!fix.trim().is_empty(), "empty fix in `{line}`");
    }
    assert!(
        stderr.contains("keep"),
        "the keep problem does not say keep\n{}",
        text(&out)
    );

    // The same exit code, naming the path, when the file does not exist; also through SNAPWARDEN_CONFIG.
    let missing = dir.path().join("nope").join("snapwarden.toml");
    let out = run_to_end(
        snapwarden()
            .env("SNAPWARDEN_CONFIG", &missing)
            .arg("validate"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&missing.display().to_string()),
        "{}",
        text(&out)
    );
}

/// Copies the daemon could never make are refused before it starts: exit 78, the file, each key and its fix.
#[test]
fn validate_refuses_impossible_copies_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = common::instance_policy("prod", "true", "daily", "30 4 * * *", "last = 7");
    let bad = write_config(
        dir.path(),
        "http://127.0.0.1:9",
        common::free_port(),
        "copy-concurrency = 500",
        &format!(
            "{schedule}\n[[policy.schedule.copy]]\nregion = \"{}\"\nkeep = {{ weekly = 4 }}\n\
             [[policy.schedule.copy]]\nregion = \"eu-west-1\"\nkeep = {{ weekly = 4 }}\nencrypted = false\n\
             kms-key-id = \"alias/dr\"\n",
            common::REGION
        ),
    );
    let (out, stderr) = validate_refuses(&bad);
    for (key, fix) in [
        ("daemon.copy-concurrency", "copy-concurrency = 20"),
        (
            "policy[prod].schedule[daily].copy[#1].region",
            "copy to another region",
        ),
        (
            "policy[prod].schedule[daily].copy[eu-west-1].encrypted",
            "kms-key-id implies encrypted = true",
        ),
    ] {
        let (line, written) = problem_at(&stderr, key, &out);
        assert!(written.contains(fix), "`{line}` does not say {fix:?}");
    }
}

/// `validate` of the config file `bad`, which must exit 78 naming the file: its output and its stderr.
fn validate_refuses(bad: &Path) -> (Output, String) {
    let out = run_to_end(
        snapwarden().arg("--config").arg(bad).arg("validate"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains(&bad.display().to_string()),
        "file not named\n{}",
        text(&out)
    );
    (out, stderr)
}

/// The line of `stderr` (of `out`) with the problem at `key`, and its fix: each problem is "key: what is wrong —
/// what to write instead".
fn problem_at<'a>(stderr: &'a str, key: &str, out: &Output) -> (&'a str, &'a str) {
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no problem for `{key}`\n{}", text(out)));
    let (_, fix) = line
        .split_once(" — ")
        .unwrap_or_else(|| panic!("no fix in `{line}`"));
    (line, fix)
}

#[test]
fn run_without_credentials_stops_quickly_and_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let empty_config = dir.path().join("aws-config");
    let empty_creds = dir.path().join("aws-credentials");
    std::fs::write(&empty_config, "").unwrap();
    std::fs::write(&empty_creds, "").unwrap();
    // A closed port: nothing here may reach a real endpoint, and no call should be attempted anyway.
    let config = write_config(
        dir.path(),
        &format!("http://127.0.0.1:{}", common::free_port()),
        common::free_port(),
        "",
        &common::instance_policy("prod", "true", "daily", "30 4 * * *", "last = 7"),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapwarden"));
    // Start from nothing so no credential source of the test's own environment (keys, profile, SSO, web
    // identity, container role) can leak in.
    cmd.env_clear()
        .env("SNAPWARDEN_DAEMON__LOCK_DIR", dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &empty_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty_creds)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdin(Stdio::null());
    let started = Instant::now();
    let out = run_to_end(&mut cmd, Duration::from_secs(15));
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AWS_ACCESS_KEY_ID"),
        "does not say what to set\n{}",
        text(&out)
    );
    assert!(stderr.contains("AWS_PROFILE"), "{}", text(&out));
}

#[test]
fn next_lists_upcoming_fires_in_the_configured_timezone() {
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "{}\n[[policy.schedule]]\nname = \"weekly\"\ncron = \"0 5 * * 0\"\nkeep = {{ last = 4 }}\n",
        common::instance_policy("prod", "true", "daily", "30 4 * * *", "last = 7")
    );
    let config = write_config(
        dir.path(),
        "http://127.0.0.1:9",
        common::free_port(),
        "timezone = \"Europe/Berlin\"",
        &rest,
    );
    let before = Utc::now();
    let out = run_to_end(
        snapwarden()
            .arg("--config")
            .arg(&config)
            .args(["next", "--count", "3"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let berlin = chrono_tz::Europe::Berlin;
    let mut by_schedule: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for line in stdout.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "`{line}`\n{}", text(&out));
        let utc: DateTime<Utc> = cols[2]
            .parse()
            .unwrap_or_else(|_| panic!("slot in `{line}`"));
        // The local column is the same instant, in Berlin, with its zone abbreviation.
        let local = utc
            .with_timezone(&berlin)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string();
        assert_eq!(cols[1], local, "`{line}`");
        assert!(
            cols[1].ends_with(" CET") || cols[1].ends_with(" CEST"),
            "`{line}`"
        );
        by_schedule.entry(cols[0]).or_default().push(utc);
    }
    assert_eq!(
        by_schedule.keys().copied().collect::<Vec<_>>(),
        ["prod/daily", "prod/weekly"],
        "{}",
        text(&out)
    );
    for (name, fires) in &by_schedule {
        assert_eq!(fires.len(), 3, "{name}\n{}", text(&out));
        assert!(
            fires[0] > before,
            "{name} starts in the past\n{}",
            text(&out)
        );
        assert!(
            fires.windows(2).all(|w| w[0] < w[1]),
            "{name} out of order\n{}",
            text(&out)
        );
    }
    let local = |t: &DateTime<Utc>| t.with_timezone(&berlin);
    let daily = &by_schedule["prod/daily"];
    // The next 04:30 Berlin is at most a day (plus a DST hour) away; then one per local calendar day.
    assert!(daily[0] - before <= chrono::Duration::hours(25));
    for (i, t) in daily.iter().enumerate() {
        assert_eq!(local(t).format("%H:%M:%S").to_string(), "04:30:00");
        if i > 0 {
            assert_eq!(
                local(t).date_naive(),
                local(&daily[i - 1]).date_naive().succ_opt().unwrap()
            );
        }
    }
    let weekly = &by_schedule["prod/weekly"];
    assert!(weekly[0] - before <= chrono::Duration::days(7) + chrono::Duration::hours(1));
    for t in weekly {
        assert_eq!(local(t).weekday(), Weekday::Sun);
        assert_eq!(local(t).format("%H:%M:%S").to_string(), "05:00:00");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Shutdown with a run in flight
// ---------------------------------------------------------------------------------------------------------------

/// A TCP proxy to moto that forwards everything but holds (for a minute) any request containing `needle`:
/// a run that reaches CreateSnapshot stays in flight for as long as a test needs. `held` counts held requests.
struct StallProxy {
    port: u16,
    held: Arc<AtomicUsize>,
}

fn stall_proxy(upstream: u16, needle: &'static [u8]) -> StallProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(AtomicUsize::new(0));
    let counter = held.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
            });
            std::thread::spawn(move || {
                // The tail of the previous read, so a needle split across two reads is still seen.
                let mut window: Vec<u8> = Vec::new();
                let mut buf = [0u8; 16384];
                loop {
                    let n = match c_read.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    window.extend_from_slice(&buf[..n]);
                    if window.windows(needle.len()).any(|w| w == needle) {
                        counter.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_secs(60));
                        return;
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    let keep = window.len().saturating_sub(needle.len());
                    window.drain(..keep);
                }
            });
        }
    });
    StallProxy { port, held }
}

/// A daemon whose catch-up run is stuck in CreateSnapshot behind a [`StallProxy`]; returns once it is. `env`:
/// config overrides (`SNAPWARDEN_AWS__…`).
async fn daemon_with_stuck_run(
    moto: &Moto,
    dir: &Path,
    grace: &str,
    env: &[(&str, &str)],
) -> (Daemon, StallProxy) {
    let ec2 = moto.ec2().await;
    instance(&ec2, &[("Backup", "e2e-slow")], &["/dev/sdf"]).await;
    let proxy = stall_proxy(moto.port, b"Action=CreateSnapshot");
    let config = write_config(
        dir,
        &format!("http://127.0.0.1:{}", proxy.port),
        common::free_port(),
        &format!("shutdown-grace = \"{grace}\""),
        // Yearly: only the catch-up run fires during the test.
        &common::instance_policy("slow", "e2e-slow", "newyear", "0 0 1 1 *", "last = 3"),
    );
    let mut d = Daemon::spawn(
        snapwarden()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .envs(env.iter().copied()),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.held.load(Ordering::SeqCst) == 0 {
        assert!(d.is_running(), "the daemon exited early\n{}", d.logs());
        assert!(
            Instant::now() < deadline,
            "no CreateSnapshot reached the proxy within 15 s\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (d, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_signal_waits_for_the_in_flight_run_and_a_second_exits_at_once() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut d, _proxy) = daemon_with_stuck_run(&moto, dir.path(), "30s", &[]).await;

    d.signal("TERM");
    d.wait_for_output("signal received", Duration::from_secs(5));
    // The run is held for a minute and the grace period is 30 s: the daemon must still be waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        d.is_running(),
        "exited without waiting for the in-flight run\n{}",
        d.logs()
    );

    let sent = Instant::now();
    d.signal("INT");
    let status = d
        .wait_exit(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("a second signal did not exit at once\n{}", d.logs()));
    assert_eq!(status.code(), Some(130), "{}", d.logs());
    assert!(sent.elapsed() < Duration::from_secs(3));
    assert!(d.stderr().contains("second signal"), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_outlasting_the_grace_period_is_abandoned_with_exit_code_1() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // The create sent before the grace period ended is waited for until it times out (3 s per attempt).
    let timeouts = [
        ("SNAPWARDEN_AWS__ATTEMPT_TIMEOUT", "3s"),
        ("SNAPWARDEN_AWS__OPERATION_TIMEOUT", "4s"),
    ];
    let (mut d, _proxy) = daemon_with_stuck_run(&moto, dir.path(), "1s", &timeouts).await;

    let sent = Instant::now();
    d.signal("INT");
    // The create's timeout, plus at most 5 s for the notifier to drain, plus a margin; far below the 60 s hold.
    let status = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("did not give up after the grace period\n{}", d.logs()));
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "exited before the grace period\n{}",
        d.logs()
    );
    assert_eq!(status.code(), Some(1), "{}", d.logs());
    let lines = json_lines(&d.stdout());
    assert!(
        lines
            .iter()
            .any(|l| message(l).is_some_and(|m| m.starts_with("grace period over"))),
        "{}",
        d.logs()
    );
    // The create that never answered is logged with its outcome before the exit.
    assert!(
        lines.iter().any(|l| {
            message(l) == Some("mutating EC2 call answered")
                && l["fields"]["operation"] == "CreateSnapshot"
                && l["fields"]["outcome"] == "timeout"
        }),
        "{}",
        d.logs()
    );
}

/// Reads notify datagrams until one starts with `prefix`; returns every message seen up to and including it.
fn recv_until(
    sock: &std::os::unix::net::UnixDatagram,
    prefix: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.starts_with(prefix);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no `{prefix}` notification within {within:?}; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_it_signals_ready_after_the_listener_pings_the_watchdog_and_says_stopping() {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    instance(&ec2, &[("Backup", "true")], &["/dev/sdf"]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = write_config(
        dir.path(),
        &moto.endpoint,
        port,
        "shutdown-grace = \"5s\"",
        &common::instance_policy("p", "true", "yearly", "0 0 1 1 *", "last = 2"),
    );
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Daemon::spawn(
        snapwarden()
            .args(["--config", cfg.to_str().unwrap(), "run"])
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000"),
    );

    let before_ready = recv_until(&sock, "READY=1", Duration::from_secs(20));
    assert_eq!(
        before_ready.len(),
        1,
        "something before READY: {before_ready:?}\n{}",
        d.logs()
    );
    // READY means the listener is up: HTTP answers at once.
    assert!(
        http_get(port, "/readyz").is_some_and(|(code, _)| code == 200),
        "{}",
        d.logs()
    );

    // The loop ticks about once a second and pings at most every half interval (0.5 s).
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_millis(3200) {
        pings += recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3)).len();
    }
    assert!(
        (3..=8).contains(&pings),
        "{pings} watchdog pings in 3.2 s\n{}",
        d.logs()
    );

    d.signal("TERM");
    let seen = recv_until(&sock, "STOPPING=1", Duration::from_secs(5));
    assert!(
        seen.iter()
            .all(|m| m == "WATCHDOG=1" || m.starts_with("STOPPING=1")),
        "{seen:?}"
    );
    let status = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit\n{}", d.logs()));
    assert_eq!(status.code(), Some(0), "{}", d.logs());
}
