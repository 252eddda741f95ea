//! One process per policy and slot on a host: two `once` for one slot started together, and two `run` daemons
//! with one config, never double a snapshot in moto; the one that stands back says which process it met.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::process::{snapwarden, text, Daemon};
use common::{free_port, http_get, launch_instance, slots_by_volume, Moto};

fn write_config(dir: &Path, endpoint: &str, port: u16, policy: &str) -> PathBuf {
    let daily = common::instance_policy(policy, policy, "daily", "30 4 * * *", "last = 7");
    let daemon = r#"completion-deadline = "0s""#;
    common::write_config(dir, port, daemon, endpoint, "max-attempts = 2", &daily)
}

/// The binary with the lock directory every process of one test shares (each test its own, so tests running in
/// parallel do not meet).
fn sw(dir: &Path) -> std::process::Command {
    let mut cmd = snapwarden();
    cmd.env("SNAPWARDEN_DAEMON__LOCK_DIR", dir.join("locks"));
    cmd
}

/// Every volume has exactly one snapshot, all of one slot.
fn assert_one_each(
    by: &std::collections::BTreeMap<String, Vec<String>>,
    volumes: &[String],
    logs: &str,
) {
    for v in volumes {
        let slots = by.get(v).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            slots.len(),
            1,
            "volume {v}: snapshots of slots {slots:?}\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_once_for_one_slot_started_together_create_each_snapshot_once() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let mut volumes = Vec::new();
    for _ in 0..3 {
        let (_, v) = launch_instance(&raw, &[("Backup", "race")], &["/dev/sdf", "/dev/sdg"]).await;
        volumes.extend(v);
    }
    // Every DescribeSnapshots (the survey's history read) held 2 s: two runs started together are both in their
    // survey at once, so without a lock both find the slot missing and both create it.
    let proxy = FaultProxy::start(moto.port, 1);
    proxy.set_rules(vec![Rule::new(
        &["DescribeSnapshots"],
        When::Always,
        Fault::Delay(Duration::from_secs(2)),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &proxy.endpoint, free_port(), "race");
    let once = || {
        let mut cmd = sw(dir.path());
        cmd.arg("--config")
            .arg(&config)
            .args(["once", "--policy", "race", "--schedule", "daily"]);
        Daemon::spawn(&mut cmd)
    };
    let (mut a, mut b) = (once(), once());
    let pids = (a.pid(), b.pid());
    let finish = |d: &mut Daemon| -> Output {
        let status = d
            .wait_exit(Duration::from_secs(120))
            .unwrap_or_else(|| panic!("once did not finish\n{}", d.logs()));
        Output {
            status,
            stdout: d.stdout().into_bytes(),
            stderr: d.stderr().into_bytes(),
        }
    };
    let (out_a, out_b) = (finish(&mut a), finish(&mut b));
    let both = format!(
        "--- A (pid {}) ---\n{}\n--- B (pid {}) ---\n{}",
        pids.0,
        text(&out_a),
        pids.1,
        text(&out_b)
    );

    assert_one_each(&slots_by_volume(&raw, "race").await, &volumes, &both);
    // The one that came second stood back at once, naming the other.
    let refused = |out: &Output, other: u32| {
        out.status.code() == Some(75)
            && String::from_utf8_lossy(&out.stderr).contains(&format!("pid {other} ("))
    };
    let ok = |out: &Output| out.status.success();
    assert!(
        (ok(&out_a) && refused(&out_b, pids.0)) || (ok(&out_b) && refused(&out_a, pids.1)),
        "{both}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_daemon_with_the_same_config_is_refused_and_names_the_first() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) =
        launch_instance(&raw, &[("Backup", "twice")], &["/dev/sdf", "/dev/sdg"]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &moto.endpoint, port, "twice");
    let mut first = Daemon::spawn(sw(dir.path()).arg("--config").arg(&config).arg("run"));
    first.wait_for_output("run finished", Duration::from_secs(60));
    assert!(
        matches!(http_get(port, "/healthz"), Some((200, _))),
        "{}",
        first.logs()
    );

    // The same file; only the port differs, so the listener cannot be what stops it.
    let mut second = Daemon::spawn(sw(dir.path()).arg("--config").arg(&config).arg("run").env(
        "SNAPWARDEN_DAEMON__LISTEN",
        format!("127.0.0.1:{}", free_port()),
    ));
    let status = second
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the second daemon is still running\n{}", second.logs()));
    let err = second.stderr();
    assert_eq!(status.code(), Some(75), "{}", second.logs());
    assert!(
        err.contains("policy `twice` is already run by another snapwarden daemon"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {} (", first.pid())), "{err}");
    assert_one_each(
        &slots_by_volume(&raw, "twice").await,
        &volumes,
        &first.logs(),
    );
    assert!(first.stop().success(), "{}", first.logs());

    // Once the first has stopped, its lock is gone with it.
    let mut third = Daemon::spawn(sw(dir.path()).arg("--config").arg(&config).arg("run"));
    third.wait_for_output("run finished", Duration::from_secs(60));
    assert!(third.stop().success(), "{}", third.logs());
    assert_one_each(
        &slots_by_volume(&raw, "twice").await,
        &volumes,
        &third.logs(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_beside_a_running_daemon_works_for_another_slot() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) = launch_instance(&raw, &[("Backup", "beside")], &["/dev/sdf"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &moto.endpoint, free_port(), "beside");
    let mut daemon = Daemon::spawn(sw(dir.path()).arg("--config").arg(&config).arg("run"));
    daemon.wait_for_output("run finished", Duration::from_secs(60));
    let out = common::process::run_to_end(
        sw(dir.path()).arg("--config").arg(&config).args([
            "once",
            "--policy",
            "beside",
            "--schedule",
            "daily",
            "--slot",
            "2026-01-01T04:30:00Z",
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.logs());
    let by = slots_by_volume(&raw, "beside").await;
    assert_eq!(by[&volumes[0]].len(), 2, "{by:?}\n{}", text(&out));
    assert!(daemon.stop().success(), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_waits_for_a_once_on_its_slot_and_then_finds_it_done() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) =
        launch_instance(&raw, &[("Backup", "wait")], &["/dev/sdf", "/dev/sdg"]).await;
    // The `once` is held in its survey long enough for the daemon's catch-up of the same slot to meet its lock.
    let proxy = FaultProxy::start(moto.port, 1);
    proxy.set_rules(vec![Rule::new(
        &["DescribeSnapshots"],
        When::Always,
        Fault::Delay(Duration::from_secs(3)),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &proxy.endpoint, free_port(), "wait");
    let mut once = Daemon::spawn(sw(dir.path()).arg("--config").arg(&config).args([
        "once",
        "--policy",
        "wait",
        "--schedule",
        "daily",
    ]));
    let lock = dir.path().join("locks");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&lock).is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            std::time::Instant::now() < deadline,
            "once took no lock\n{}",
            once.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut daemon = Daemon::spawn(sw(dir.path()).arg("--config").arg(&config).arg("run"));
    daemon.wait_for_output(
        "waiting for another process working on this slot",
        Duration::from_secs(30),
    );
    let status = once
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("once did not finish\n{}", once.logs()));
    assert!(status.success(), "{}", once.logs());
    daemon.wait_for_output("run finished", Duration::from_secs(60));
    assert!(
        ["\"created\":0,", "\"already_done\":2,"]
            .iter()
            .all(|field| daemon.stdout().contains(field)),
        "{}",
        daemon.logs()
    );
    assert!(daemon.stop().success(), "{}", daemon.logs());
    assert_one_each(
        &slots_by_volume(&raw, "wait").await,
        &volumes,
        &daemon.logs(),
    );
}
