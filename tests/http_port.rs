//! The HTTP port cannot take backups down: the real daemon started with a 1,024 descriptor limit keeps answering
//! `/healthz` and keeps creating snapshots in moto while 1,100 idle connections sit on its port, and a half-sent
//! request does not hold up SIGTERM.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::process::{snapwarden, Daemon};
use common::{free_port, http_get, launch_instance, slots_by_volume, Moto};

fn write_config(dir: &Path, moto: &Moto, port: u16, policy: &str, cron: &str) -> PathBuf {
    let often = common::instance_policy(policy, policy, "often", cron, "last = 1000");
    let daemon = r#"completion-deadline = "0s""#;
    common::write_config(
        dir,
        port,
        daemon,
        &moto.endpoint,
        "max-attempts = 2",
        &often,
    )
}

/// The daemon with soft and hard descriptor limits of 1,024, set in the child before exec: the hard limit too,
/// or the daemon would raise its soft limit past the flood.
fn start_at_1024(config: &Path) -> Daemon {
    start_with_fd_limit(config, 1024, 1024)
}

fn start_with_fd_limit(config: &Path, soft: u64, hard: u64) -> Daemon {
    let mut cmd = snapwarden();
    cmd.arg("--config").arg(config).arg("run");
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Daemon::spawn(&mut cmd)
}

fn healthz_ok(port: u16) -> bool {
    matches!(http_get(port, "/healthz"), Some((200, _)))
}

fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

/// The test itself holds 1,100 sockets: it needs a soft limit above that.
fn raise_own_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= 2048,
            "the test needs a hard descriptor limit of at least 2,048 (has {}): raise it with ulimit -Hn",
            limit.rlim_max
        );
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_fd_limit_leave_healthz_and_ec2_runs_working() {
    raise_own_fd_limit();
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, volumes) = launch_instance(&raw, &[("Backup", "flood")], &["/dev/sdf"]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &moto, port, "flood", "*/5 * * * * *");
    let mut daemon = start_at_1024(&config);
    assert!(
        wait_until(Duration::from_secs(60), || healthz_ok(port)),
        "/healthz never answered\n{}",
        daemon.logs()
    );

    // 1,100 connections that never send a byte: more than the daemon's whole descriptor limit.
    let flood_started = Utc::now();
    let mut idle = Vec::new();
    for i in 0..1100 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!(
                "connection {i} to the daemon failed: {e}\n{}",
                daemon.logs()
            ),
        }
    }

    // Connections over the cap are closed at once and idle ones within the header-read timeout, so the health
    // check gets through while all 1,100 are still open on the test's side.
    assert!(
        wait_until(Duration::from_secs(30), || healthz_ok(port)),
        "/healthz stopped answering with 1,100 idle connections open\n{}",
        daemon.logs()
    );
    // And the scheduler's runs still reach EC2: a slot fired after the flood began is snapshotted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let by = slots_by_volume(&raw, "flood").await;
        let after_flood = by.get(&volumes[0]).is_some_and(|slots| {
            slots.iter().any(|s| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .is_ok_and(|t| t.with_timezone(&Utc) > flood_started)
            })
        });
        if after_flood {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot of a slot after the flood began: {by:?}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = daemon.logs();
    assert!(
        !logs.contains("Too many open files"),
        "descriptors ran out:\n{logs}"
    );
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("snapwarden_http_connections_refused_total{reason=\"connection-cap\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no connection-cap refusals series\n{metrics}"));
    assert!(refused >= 1000.0, "refused {refused}\n{metrics}");
    drop(idle);
    assert!(daemon.stop().success(), "{}", daemon.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_half_sent_request_exits_within_a_bounded_time() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Fires once a year: nothing runs while the test stops the daemon.
    let config = write_config(dir.path(), &moto, port, "halfsent", "0 0 1 1 *");
    let mut daemon = Daemon::spawn(snapwarden().arg("--config").arg(&config).arg("run"));
    assert!(
        wait_until(Duration::from_secs(60), || healthz_ok(port)),
        "/healthz never answered\n{}",
        daemon.logs()
    );
    daemon.wait_for_output("run finished", Duration::from_secs(30));
    // A request line and one header, then nothing: the end of the headers never comes.
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "still running 15 s after SIGTERM with a half-sent request open\n{}",
                daemon.logs()
            )
        });
    assert!(status.success(), "{status:?}\n{}", daemon.logs());
    drop(half);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_raises_its_soft_descriptor_limit_to_the_hard_one_and_logs_both() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &moto, port, "rlimit", "0 0 1 1 *");
    let mut daemon = start_with_fd_limit(&config, 1024, 4096);
    daemon.wait_for_output("HTTP listening", Duration::from_secs(60));
    let pid = daemon.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}\n{}", daemon.logs());
    assert!(
        daemon
            .stdout()
            .contains("\"soft_before\":1024,\"soft\":4096,\"hard\":4096"),
        "{}",
        daemon.logs()
    );
    assert!(daemon.stop().success(), "{}", daemon.logs());
}
