//! Running the real `snapwarden` binary from integration tests: a command with moto's credentials and none of the
//! caller's overrides, a child whose output is drained by threads (a full pipe would block its logging) and kept
//! for assertion messages, and one-shot runs with a deadline so a hang fails the test instead of stalling it.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary with moto's fake credentials and nothing inherited that could change its behaviour: `RUST_LOG`
/// would override `log.level`, and `SNAPWARDEN_X__Y` variables would override config keys.
pub fn snapwarden() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapwarden"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if (k.starts_with("SNAPWARDEN_") && k.contains("__")) || k == "SNAPWARDEN_CONFIG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in super::aws_env() {
        cmd.env(k, v);
    }
    // A directory of its own for the host locks, so tests that run the same policy and slot against separate
    // moto servers in parallel do not wait on each other; a test of the locks sets one directory for both.
    cmd.env("SNAPWARDEN_DAEMON__LOCK_DIR", own_lock_dir());
    cmd
}

fn own_lock_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("locks")
        .join(format!("{}-{n}", std::process::id()))
}

/// Runs a one-shot command to completion with a deadline, so a hang fails the test instead of stalling it.
pub fn run_to_end(cmd: &mut Command, within: Duration) -> Output {
    let mut d = Daemon::spawn(cmd);
    let status = d
        .wait_exit(within)
        .unwrap_or_else(|| panic!("did not finish within {within:?}\n{}", d.logs()));
    Output {
        status,
        stdout: d.stdout().into_bytes(),
        stderr: d.stderr().into_bytes(),
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A child process whose stdout and stderr are drained by threads (a full pipe would block its logging) and
/// kept for assertion messages. Killed on drop if still running.
pub struct Daemon {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// The last run of `policy`/`schedule` in `region` in `/status` on `port`, once one has finished: (result,
    /// slot). Fails after 60 s, or when the daemon exits first.
    pub fn wait_for_run(
        &mut self,
        port: u16,
        policy: &str,
        schedule: &str,
        region: &str,
    ) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, body)) = super::http_get(port, "/status") {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                // Keyed `account/region`: the run of `region` in whichever account the daemon serves there.
                let runs = v["policies"][policy][schedule]["last_runs"].as_object();
                let last = runs
                    .into_iter()
                    .flatten()
                    .map(|(_, run)| run)
                    .find(|run| run["region"] == region);
                if let Some((Some(r), Some(s))) =
                    last.map(|l| (l["result"].as_str(), l["slot"].as_str()))
                {
                    return (r.to_string(), s.to_string());
                }
            }
            assert!(self.is_running(), "the daemon exited\n{}", self.logs());
            assert!(
                Instant::now() < deadline,
                "no finished run in /status within 60 s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn spawn(cmd: &mut Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the snapwarden binary starts");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            drain(child.stdout.take().unwrap(), out.clone()),
            drain(child.stderr.take().unwrap(), err.clone()),
        ];
        Daemon {
            child,
            out,
            err,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- snapwarden stdout ---\n{}\n--- snapwarden stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(
            ok,
            "kill -{sig} {} failed\n{}",
            self.child.id(),
            self.logs()
        );
    }

    /// The exit status if the process ends within `within`; once it has, the output readers are joined so that
    /// `stdout()`/`stderr()` hold everything it wrote.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until stdout or stderr contains `needle`.
    pub fn wait_for_output(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no `{needle}` in the output within {within:?}\n{}",
            self.logs()
        );
    }
}

impl Daemon {
    /// SIGKILL: no handler runs, nothing is flushed, in-flight requests are abandoned.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().expect("reap the daemon");
    }

    /// SIGTERM, then wait up to 30 s for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no exit 30 s after SIGTERM\n{}", self.logs()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn drain(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}
