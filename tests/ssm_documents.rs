//! The SSM documents of `deploy/ssm/` (`snapwarden-fsfreeze`, `snapwarden-thaw`), run as the SSM agent runs them:
//! each document's YAML is read with PyYAML (from the venv that holds moto), its `runCommand` lines are joined, the
//! `{{ Parameter }}` placeholders filled in, and the script is executed on this machine with a fake `fsfreeze`
//! (records its calls and keeps what is frozen as files, answering EBUSY and EINVAL as the real one does) and a
//! fake `findmnt` (a mount table of temporary directories) first on `PATH`, and its state directory pointed at a
//! temporary one. The detached auto-thaw timer runs for real, and must outlive the kill of the command's process
//! group that follows every run (what the agent does on a timeout or a cancel). Both documents are also created in
//! moto through CreateDocument. shellcheck runs on the same scripts in `tests/deploy/check.sh`.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const FREEZE: &str = "snapwarden-fsfreeze";
const THAW: &str = "snapwarden-thaw";

/// Long enough for an auto-thaw of a few seconds on a loaded machine: a wait, not a timing target.
const GENEROUS: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of the venv that holds moto (PyYAML comes with it).
fn python() -> PathBuf {
    let python = common::moto_binary().with_file_name("python");
    assert!(
        python.exists(),
        "{} not found: the venv of moto_server must hold python with PyYAML (bash tests/run.sh installs it)",
        python.display()
    );
    python
}

/// Runs `code` in the venv's Python with `args`; its stdout.
fn py(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn document_path(name: &str) -> PathBuf {
    root().join(format!("deploy/ssm/{name}.yaml"))
}

/// The document as YAML 1.1 reads it (what SSM and moto parse), as JSON.
fn document(name: &str) -> Value {
    let path = document_path(name);
    let json = py(
        "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        &[path.to_str().unwrap()],
    );
    serde_json::from_str(&json).unwrap()
}

/// The script the agent writes for the document's one runShellScript step: its `runCommand` lines joined by
/// newlines, with each `{{ Name }}` replaced by the parameter's value.
fn script(name: &str, params: &[(&str, &str)]) -> String {
    let doc = document(name);
    let lines = doc["mainSteps"][0]["inputs"]["runCommand"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: mainSteps[0].inputs.runCommand is not a list"));
    let mut text = lines
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for (k, v) in params {
        let placeholder = format!("{{{{ {k} }}}}");
        assert!(
            text.contains(&placeholder),
            "{name}: {placeholder} not used"
        );
        text = text.replace(&placeholder, v);
    }
    assert!(
        !text.contains("{{"),
        "{name}: a placeholder is left unfilled"
    );
    text
}

/// Fake fsfreeze: each call is a line `-f MOUNT` / `-u MOUNT` in `$FAKE_FSFREEZE_LOG`; a frozen mount is a file
/// in `$FAKE_FROZEN_DIR`. Freezing a frozen one fails with EBUSY and thawing a thawed one with EINVAL, with the
/// real tool's messages; a mount listed in `$FAKE_FSFREEZE_FAIL` cannot be frozen at all, and one with a file in
/// `$FAKE_STUCK_DIR` cannot be thawed while the file is there.
const FAKE_FSFREEZE: &str = r#"#!/bin/bash
[[ $# == 2 && ($1 == -f || $1 == -u) ]] || { echo "fake fsfreeze: unexpected arguments $*" >&2; exit 64; }
op=$1 m=$2
echo "$op $m" >>"$FAKE_FSFREEZE_LOG"
key=$FAKE_FROZEN_DIR/$(printf %s "$m" | tr / _)
if [[ $op == -f ]]; then
  if [[ " ${FAKE_FSFREEZE_FAIL:-} " == *" $m "* ]]; then echo "fsfreeze: $m: freeze failed: Operation not supported" >&2; exit 1; fi
  if [[ -e $key ]]; then echo "fsfreeze: $m: freeze failed: Device or resource busy" >&2; exit 1; fi
  touch "$key"
else
  if [[ -e $FAKE_STUCK_DIR/${key##*/} ]]; then echo "fsfreeze: $m: unfreeze failed: Input/output error" >&2; exit 1; fi
  if [[ ! -e $key ]]; then echo "fsfreeze: $m: unfreeze failed: Invalid argument" >&2; exit 1; fi
  rm "$key"
fi
"#;

/// Fake findmnt: only `findmnt -n -o TARGET --target PATH`, answered from `$FAKE_MOUNTS` (one mount point a line):
/// the longest mount point PATH lies on, nothing and exit 1 for a path that does not exist, as the real one.
const FAKE_FINDMNT: &str = r#"#!/bin/bash
[[ $# == 5 && $1 == -n && $2 == -o && $3 == TARGET && $4 == --target ]] || { echo "fake findmnt: unexpected arguments $*" >&2; exit 64; }
path=$5
[[ -e $path ]] || exit 1
best=
while IFS= read -r m; do
  [[ -n $m ]] || continue
  if [[ $path == "$m" || $m == / || $path == "$m"/* ]] && ((${#m} > ${#best})); then best=$m; fi
done <<<"$FAKE_MOUNTS"
echo "$best"
"#;

/// A host to run the documents on: mount points `mnt/<name>` in a temporary directory (in the fake mount table
/// with `/`), a directory `mnt/plain` that is not a mount point, and the state directory `state`.
struct Host {
    dir: tempfile::TempDir,
    mounts: Vec<String>,
    state: PathBuf,
    /// A mount listed here fails to freeze.
    failing: Vec<String>,
}

struct Run {
    code: i32,
    stdout: String,
}

impl Run {
    fn first_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or_default()
    }
}

impl Host {
    fn new(names: &[&str]) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["bin", "frozen", "stuck", "mnt/plain"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        for (name, text) in [("fsfreeze", FAKE_FSFREEZE), ("findmnt", FAKE_FINDMNT)] {
            let path = p.join("bin").join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mounts: Vec<String> = names
            .iter()
            .map(|n| {
                let m = p.join("mnt").join(n);
                std::fs::create_dir_all(&m).unwrap();
                m.to_str().unwrap().to_string()
            })
            .collect();
        std::fs::write(p.join("log"), "").unwrap();
        Host {
            state: p.join("state"),
            dir,
            mounts,
            failing: Vec::new(),
        }
    }

    fn mount(&self, i: usize) -> &str {
        &self.mounts[i]
    }

    fn plain(&self) -> String {
        self.dir.path().join("mnt/plain").to_str().unwrap().into()
    }

    /// Runs document `name` with `params` as the agent would: the script file executed (its `#!` line decides
    /// the shell) in a process group of its own, output read until the pipe closes (which a timer still holding
    /// it would delay), then the group killed.
    fn run(&self, name: &str, params: &[(&str, &str)]) -> Run {
        let p = self.dir.path();
        let file = p.join(format!("{name}.sh"));
        std::fs::write(&file, script(name, params)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            p.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let table = std::iter::once("/".to_string())
            .chain(self.mounts.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n");
        let child = Command::new(&file)
            // Its own process group, as the agent starts a command; the group is killed below, as the agent does
            // on a timeout or a cancel: the auto-thaw timer must not be in it.
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PATH", path)
            .env("SNAPWARDEN_FREEZE_STATE_DIR", &self.state)
            .env("FAKE_FSFREEZE_LOG", p.join("log"))
            .env("FAKE_FROZEN_DIR", p.join("frozen"))
            .env("FAKE_STUCK_DIR", p.join("stuck"))
            .env("FAKE_MOUNTS", table)
            .env("FAKE_FSFREEZE_FAIL", self.failing.join(" "))
            .spawn()
            .expect("the script runs");
        let group = child.id() as i32;
        let out = child.wait_with_output().expect("the script ends");
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.is_empty(),
            "{name} wrote to stderr:\n{stderr}\nstdout:\n{stdout}"
        );
        Run {
            code: out.status.code().expect("the script exited"),
            stdout,
        }
    }

    fn freeze(&self, mounts: &str, seconds: u32) -> Run {
        self.run(
            FREEZE,
            &[
                ("MountPoints", mounts),
                ("AutoThawSeconds", &seconds.to_string()),
            ],
        )
    }

    fn thaw(&self, mounts: &str) -> Run {
        self.run(THAW, &[("MountPoints", mounts)])
    }

    /// The fake fsfreeze's calls so far, in order.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The fake's file for a frozen `mount` (its path with `/` as `_`).
    fn frozen_file(&self, mount: &str) -> PathBuf {
        self.dir.path().join("frozen").join(mount.replace('/', "_"))
    }

    /// The mounts frozen now.
    fn frozen(&self) -> BTreeSet<String> {
        let files = std::fs::read_dir(self.dir.path().join("frozen"))
            .unwrap()
            .count();
        let frozen: BTreeSet<String> = self
            .mounts
            .iter()
            .filter(|m| self.frozen_file(m).exists())
            .cloned()
            .collect();
        assert_eq!(
            files,
            frozen.len(),
            "something else than a mount point was frozen"
        );
        frozen
    }

    /// Makes `mount` impossible to thaw (`true`) or possible again.
    fn stuck(&self, mount: &str, stuck: bool) {
        let file = self.dir.path().join("stuck").join(mount.replace('/', "_"));
        if stuck {
            std::fs::write(file, "").unwrap();
        } else {
            std::fs::remove_file(file).unwrap();
        }
    }

    /// Freezes `mount` behind the documents' back, as another tool would.
    fn freeze_elsewhere(&self, mount: &str) {
        std::fs::write(self.frozen_file(mount), "").unwrap();
    }

    /// The pid of the auto-thaw timer of the freeze on record.
    fn timer(&self) -> Option<i32> {
        let current = std::fs::read_to_string(self.state.join("current")).ok()?;
        current
            .lines()
            .find_map(|l| l.strip_prefix("timer="))
            .map(|p| p.parse().unwrap())
    }

    fn state_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.state.join(name)).ok()
    }

    /// Waits (generously) until the fake fsfreeze has seen `n` calls.
    fn wait_for_calls(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + GENEROUS;
        loop {
            let calls = self.calls();
            if calls.len() >= n || Instant::now() > deadline {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Host {
    /// No timer outlives its test: kill whatever timer pid files are left (each a process group of its own).
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.state) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("timer.") {
                if let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    if is_timer(pid) {
                        unsafe { libc::kill(-pid, libc::SIGTERM) };
                    }
                }
            }
        }
    }
}

/// Whether `pid` is a live auto-thaw timer (a zombie, waiting for a parent to reap it, counts as gone).
fn is_timer(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    matches!(state, Some(s) if s != 'Z')
        && String::from_utf8_lossy(&cmdline).contains("snapwarden-autothaw")
}

/// How long a signalled timer may take to die: far below the timers' own seconds in the tests that stop one, so a
/// timer that was not stopped but ends by itself cannot pass for a stopped one.
const STOPPED: Duration = Duration::from_secs(5);

/// Whether the timer `pid` is gone within `within`.
fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while is_timer(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn calls(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}

#[test]
fn documents_are_linux_command_documents_whose_placeholders_are_their_parameters() {
    for (name, params) in [
        (FREEZE, vec!["AutoThawSeconds", "MountPoints"]),
        (THAW, vec!["MountPoints"]),
    ] {
        let doc = document(name);
        assert_eq!(
            doc["schemaVersion"], "2.2",
            "{name}: schemaVersion must be the string \"2.2\""
        );
        let declared: Vec<&str> = doc["parameters"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(declared, params, "{name}");
        for p in &params {
            let spec = &doc["parameters"][p];
            assert_eq!(spec["type"], "String", "{name}.{p}");
            assert!(
                spec["allowedPattern"].is_string(),
                "{name}.{p}: the value is pasted into a script; it needs an allowedPattern"
            );
        }
        assert!(
            doc["parameters"]["MountPoints"].get("default").is_none(),
            "{name}: MountPoints is required"
        );
        let steps = doc["mainSteps"].as_array().unwrap();
        assert_eq!(steps.len(), 1, "{name}: one step");
        assert_eq!(steps[0]["action"], "aws:runShellScript", "{name}");
        assert_eq!(
            steps[0]["precondition"]["StringEquals"],
            serde_json::json!(["platformType", "Linux"]),
            "{name}"
        );
        let values: Vec<(&str, &str)> = params.iter().map(|p| (*p, "/x")).collect();
        let text = script(name, &values);
        assert!(text.starts_with("#!/bin/bash\n"), "{name}: bash script");
    }
    assert_eq!(
        document(FREEZE)["parameters"]["AutoThawSeconds"]["default"],
        "60"
    );
}

/// The parameters' patterns are what keeps a value from becoming shell code: checked with Python's `re`, whose
/// syntax for these patterns is SSM's.
#[test]
fn parameter_patterns_take_absolute_paths_and_seconds_and_nothing_a_shell_would_run() {
    let check = r#"
import json, re, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
values = json.loads(sys.argv[2])
print(json.dumps({p: [bool(re.fullmatch(doc["parameters"][p]["allowedPattern"], v)) for v in vs] for p, vs in values.items()}))
"#;
    let good_mounts = ["/data", "/data /var/lib/postgresql", "/mnt/a-b_c.d/e@f:g+h"];
    let bad_mounts = [
        "",
        "data",
        "/data;reboot",
        "/data'x",
        "/a$(id)",
        "/a`id`",
        "/a\n/b",
        "/a|b",
        "/a&",
        "/a\"b",
        "/a\\b",
    ];
    for name in [FREEZE, THAW] {
        let mut values = serde_json::json!({ "MountPoints": good_mounts.iter().chain(&bad_mounts).collect::<Vec<_>>() });
        if name == FREEZE {
            values["AutoThawSeconds"] =
                serde_json::json!(["60", "2", "600", "", "-1", "60s", "1000", "6 0"]);
        }
        let out: Value = serde_json::from_str(&py(
            check,
            &[document_path(name).to_str().unwrap(), &values.to_string()],
        ))
        .unwrap();
        let mut want: Vec<bool> = good_mounts.iter().map(|_| true).collect();
        want.extend(bad_mounts.iter().map(|_| false));
        assert_eq!(out["MountPoints"], serde_json::json!(want), "{name}");
        if name == FREEZE {
            assert_eq!(
                out["AutoThawSeconds"],
                serde_json::json!([true, true, true, false, false, false, false, false])
            );
        }
    }
}

#[test]
fn freeze_without_a_thaw_is_thawed_by_the_timer_and_the_late_thaw_says_so() {
    let host = Host::new(&["data", "logs"]);
    let (a, b) = (host.mount(0), host.mount(1));
    let run = host.freeze(&format!("{a} {b}/"), 2);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.first_line()
            .starts_with(&format!("snapwarden-fsfreeze: FROZEN {a} {b} at ")),
        "{}",
        run.stdout
    );
    assert!(run.first_line().contains("(in 2s)"), "{}", run.stdout);
    let timer = host.timer().expect("the timer is on record");
    assert!(is_timer(timer), "the timer runs after the command ended");

    let calls = host.wait_for_calls(4);
    let want = [
        format!("-f {a}"),
        format!("-f {b}"),
        format!("-u {a}"),
        format!("-u {b}"),
    ];
    assert_eq!(calls, want, "the auto-thaw thaws each mount once");
    assert!(wait_gone(timer, GENEROUS), "the timer ends after thawing");
    assert!(host.frozen().is_empty());
    let fired = host
        .state_file("fired")
        .expect("the auto-thaw leaves a record");
    assert!(fired.contains(&format!("mounts={a} {b}")), "{fired}");
    assert!(host.state_file("current").is_none());

    // The post that arrives too late thaws nothing and says the snapshot may not be consistent; a retry of it
    // says the same.
    for _ in 0..2 {
        let late = host.thaw(&format!("{a} {b}"));
        assert_eq!(late.code, 3, "{}", late.stdout);
        assert!(
            late.first_line()
                .starts_with("snapwarden-thaw: AUTO-THAW HAD ALREADY FIRED at "),
            "{}",
            late.stdout
        );
        assert!(
            late.stdout.contains("may have been taken after the thaw")
                && late.stdout.contains("raise AutoThawSeconds"),
            "{}",
            late.stdout
        );
    }
    assert_eq!(
        host.calls()[4..],
        [
            format!("-u {a}"),
            format!("-u {b}"),
            format!("-u {a}"),
            format!("-u {b}")
        ]
    );
    assert!(host.frozen().is_empty());
}

#[test]
fn thaw_before_the_deadline_thaws_once_and_stops_the_timer() {
    let host = Host::new(&["data", "logs"]);
    let (a, b) = (host.mount(0), host.mount(1));
    // Above STOPPED, so the timer must be stopped rather than end by itself.
    let seconds = 12;
    let started = Instant::now();
    let run = host.freeze(&format!("{a} {b}"), seconds);
    assert_eq!(run.code, 0, "{}", run.stdout);
    // The command ended while its timer runs on: the timer holds none of its output.
    assert_eq!(calls(&host.calls()), [format!("-f {a}"), format!("-f {b}")]);
    assert_eq!(
        host.frozen(),
        BTreeSet::from([a.to_string(), b.to_string()])
    );
    let timer = host.timer().expect("the timer is on record");
    assert!(is_timer(timer));

    // The post names only one of them: the record of the freeze covers the other.
    let thaw = host.thaw(a);
    assert_eq!(
        thaw.code, 0,
        "{} (a stall of over {seconds}s between two commands lets the timer win)",
        thaw.stdout
    );
    assert!(
        thaw.first_line()
            .starts_with(&format!("snapwarden-thaw: THAWED {a} {b} after ")),
        "{}",
        thaw.stdout
    );
    assert!(host.frozen().is_empty());
    assert!(wait_gone(timer, STOPPED), "the thaw stops the timer");
    assert!(host.state_file("current").is_none());

    // Past the deadline nothing thaws again.
    let after = Duration::from_secs(u64::from(seconds) + 2);
    std::thread::sleep(after.saturating_sub(started.elapsed()));
    assert_eq!(
        calls(&host.calls()),
        [
            format!("-f {a}"),
            format!("-f {b}"),
            format!("-u {a}"),
            format!("-u {b}")
        ]
    );
    assert!(host.state_file("fired").is_none());

    // A second post (a retry) finds nothing frozen and succeeds.
    let again = host.thaw(a);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert!(
        again
            .first_line()
            .starts_with("snapwarden-thaw: NOTHING FROZEN: "),
        "{}",
        again.stdout
    );
}

#[test]
fn a_failed_second_freeze_thaws_the_first_and_names_the_cause() {
    let mut host = Host::new(&["data", "logs"]);
    let (a, b) = (host.mount(0).to_string(), host.mount(1).to_string());
    host.failing.push(b.clone());
    let run = host.freeze(&format!("{a} {b}"), 60);
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert!(
        run.first_line().starts_with(&format!(
            "snapwarden-fsfreeze: FAILED: could not freeze {b}: fsfreeze: {b}: freeze failed: Operation not supported"
        )),
        "{}",
        run.stdout
    );
    assert_eq!(
        calls(&host.calls()),
        [format!("-f {a}"), format!("-f {b}"), format!("-u {a}")]
    );
    assert!(host.frozen().is_empty());
    assert!(
        host.state_file("current").is_none(),
        "no freeze left on record"
    );
    let timers: Vec<_> = std::fs::read_dir(&host.state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("timer."))
        .collect();
    assert!(timers.is_empty(), "the timer was stopped: {timers:?}");
}

#[test]
fn root_a_directory_that_is_not_mounted_and_the_state_mount_are_refused_before_anything_freezes() {
    let host = Host::new(&["data"]);
    let a = host.mount(0);
    for (mounts, reason) in [
        (
            format!("{a} /"),
            "REFUSED: / is the root filesystem: freezing it hangs the SSM agent",
        ),
        (
            format!("{a} {}", host.plain()),
            &*format!(
                "REFUSED: {} is not a mount point (it lies on /)",
                host.plain()
            ),
        ),
        (
            format!("{a} {a}/missing"),
            &*format!("REFUSED: {a}/missing does not exist"),
        ),
    ] {
        let run = host.freeze(&mounts, 60);
        assert_eq!(run.code, 2, "{mounts}: {}", run.stdout);
        assert!(
            run.first_line()
                .starts_with(&format!("snapwarden-fsfreeze: {reason}")),
            "{mounts}: {}",
            run.stdout
        );
        assert!(
            run.first_line().ends_with("nothing was frozen"),
            "{}",
            run.stdout
        );
    }
    for seconds in [1, 601] {
        let run = host.freeze(a, seconds);
        assert_eq!(run.code, 2, "{}", run.stdout);
        assert!(
            run.first_line().contains(&format!(
                "REFUSED: AutoThawSeconds={seconds} is not a number of seconds from 2 to 600"
            )),
            "{}",
            run.stdout
        );
    }
    assert!(host.calls().is_empty(), "nothing was frozen");
    assert!(host.state_file("current").is_none());
}

#[test]
fn the_filesystem_holding_the_state_directory_is_refused() {
    let mut host = Host::new(&["data", "run"]);
    host.state = PathBuf::from(host.mount(1)).join("snapwarden-freeze");
    let (a, run_mount) = (host.mount(0).to_string(), host.mount(1).to_string());
    let run = host.freeze(&format!("{a} {run_mount}"), 60);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(
        run.first_line().starts_with(&format!(
            "snapwarden-fsfreeze: REFUSED: {run_mount} holds {}: freezing it hangs",
            host.state.display()
        )),
        "{}",
        run.stdout
    );
    assert!(host.calls().is_empty());
}

/// A freeze of snapwarden's own whose thaw never came (the daemon died between pre and post, and runs pre again)
/// is thawed and frozen afresh with a new timer; a mount frozen by another tool is left alone and fails the pre.
#[test]
fn an_already_frozen_mount_is_refrozen_when_it_is_ours_and_left_alone_when_it_is_not() {
    let host = Host::new(&["data", "logs"]);
    let (a, b) = (host.mount(0), host.mount(1));
    let first = host.freeze(a, 60);
    assert_eq!(first.code, 0, "{}", first.stdout);
    let old_timer = host.timer().unwrap();

    let second = host.freeze(&format!("{a} {b}"), 60);
    assert_eq!(second.code, 0, "{}", second.stdout);
    assert!(
        second
            .first_line()
            .starts_with(&format!("snapwarden-fsfreeze: FROZEN {a} {b} at ")),
        "{}",
        second.stdout
    );
    assert!(
        second
            .stdout
            .contains(&format!("an earlier freeze of {a} since ")),
        "{}",
        second.stdout
    );
    assert_eq!(
        calls(&host.calls()),
        [
            format!("-f {a}"),
            format!("-u {a}"),
            format!("-f {a}"),
            format!("-f {b}")
        ]
    );
    assert!(
        wait_gone(old_timer, STOPPED),
        "the earlier freeze's timer is stopped"
    );
    let new_timer = host.timer().unwrap();
    assert_ne!(new_timer, old_timer);
    assert!(is_timer(new_timer));
    let thaw = host.thaw(&format!("{a} {b}"));
    assert_eq!(thaw.code, 0, "{}", thaw.stdout);
    assert!(host.frozen().is_empty());
    assert!(wait_gone(new_timer, STOPPED));

    // Frozen by something else: snapwarden has no record of it, so it neither freezes around it nor thaws it.
    host.freeze_elsewhere(b);
    let before = host.calls().len();
    let run = host.freeze(&format!("{a} {b}"), 60);
    assert_eq!(run.code, 3, "{}", run.stdout);
    assert!(
        run.first_line().starts_with(&format!(
            "snapwarden-fsfreeze: FAILED: {b} is already frozen, and not by snapwarden"
        )),
        "{}",
        run.stdout
    );
    assert_eq!(
        calls(&host.calls()[before..]),
        [format!("-f {a}"), format!("-f {b}"), format!("-u {a}")]
    );
    assert_eq!(host.frozen(), BTreeSet::from([b.to_string()]));
}

/// A mount that will not thaw stays on record with its timer's verdict: the thaw says it is still frozen (4)
/// until it thaws, and then that the auto-thaw came first (3). A freeze whose rollback cannot thaw says so (4)
/// and leaves the timer armed.
#[test]
fn a_mount_that_will_not_thaw_is_reported_still_frozen_until_it_thaws() {
    let host = Host::new(&["data", "logs"]);
    let (a, b) = (host.mount(0), host.mount(1));
    assert_eq!(host.freeze(&format!("{a} {b}"), 2).code, 0);
    let timer = host.timer().unwrap();
    host.stuck(b, true);
    assert!(wait_gone(timer, GENEROUS));
    assert_eq!(host.calls().len(), 4, "{:?}", host.calls());
    assert_eq!(host.frozen(), BTreeSet::from([b.to_string()]));
    let fired = host.state_file("fired").unwrap();
    assert!(fired.contains("FAILED: fsfreeze:"), "{fired}");
    assert!(host.state_file("current").is_some(), "kept for the thaw");

    let thaw = host.thaw(a);
    assert_eq!(thaw.code, 4, "{}", thaw.stdout);
    assert!(
        thaw.first_line().starts_with(&format!(
            "snapwarden-thaw: STILL FROZEN: could not thaw {b}"
        )),
        "{}",
        thaw.stdout
    );
    host.stuck(b, false);
    let thaw = host.thaw(a);
    assert_eq!(thaw.code, 3, "{}", thaw.stdout);
    assert!(
        thaw.first_line()
            .starts_with("snapwarden-thaw: AUTO-THAW HAD ALREADY FIRED at "),
        "{}",
        thaw.stdout
    );
    assert!(host.frozen().is_empty());
    assert!(host.state_file("current").is_none());

    // The freeze's own rollback fails: exit 4, the mount on record, the timer armed to try again.
    let mut host = Host::new(&["data", "logs"]);
    let (a, b) = (host.mount(0).to_string(), host.mount(1).to_string());
    host.failing.push(b.clone());
    host.stuck(&a, true);
    let run = host.freeze(&format!("{a} {b}"), 60);
    assert_eq!(run.code, 4, "{}", run.stdout);
    assert!(
        run.first_line().starts_with(&format!(
            "snapwarden-fsfreeze: STILL FROZEN: could not freeze {b}"
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.first_line()
            .contains("the auto-thaw timer tries again at "),
        "{}",
        run.stdout
    );
    let current = host.state_file("current").unwrap();
    assert!(current.contains(&format!("mounts={a}\n")), "{current}");
    assert!(is_timer(host.timer().unwrap()));
    host.stuck(&a, false);
    assert_eq!(host.thaw(&a).code, 0);
    assert!(host.frozen().is_empty());
}

/// A timer the thaw could not stop (its pid lost from the record) must not thaw the freeze that came after: it
/// thaws only the freeze that armed it.
#[test]
fn a_timer_outliving_its_freeze_never_thaws_a_later_one() {
    let host = Host::new(&["data"]);
    let a = host.mount(0);
    assert_eq!(host.freeze(a, 2).code, 0);
    let stray = host.timer().unwrap();
    let current = host.state.join("current");
    let text = std::fs::read_to_string(&current).unwrap();
    let without_pid: String = text
        .lines()
        .filter(|l| !l.starts_with("timer="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&current, without_pid).unwrap();
    let thaw = host.thaw(a);
    assert_eq!(thaw.code, 0, "{}", thaw.stdout);
    assert!(is_timer(stray), "the thaw could not stop it");

    let again = host.freeze(a, 60);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert!(
        wait_gone(stray, GENEROUS),
        "the stray timer ends at its deadline"
    );
    assert_eq!(
        calls(&host.calls()),
        [format!("-f {a}"), format!("-u {a}"), format!("-f {a}")]
    );
    assert_eq!(host.frozen(), BTreeSet::from([a.to_string()]));
    assert!(host.state_file("fired").is_none());
    assert_eq!(host.thaw(a).code, 0);
}

#[test]
fn thaw_with_nothing_frozen_succeeds_and_says_so() {
    let host = Host::new(&["data"]);
    let a = host.mount(0);
    // No state directory at all (nothing ever froze here), then one with no freeze on record.
    for _ in 0..2 {
        let run = host.thaw(a);
        assert_eq!(run.code, 0, "{}", run.stdout);
        assert_eq!(
            run.first_line(),
            format!("snapwarden-thaw: NOTHING FROZEN: {a} already thawed")
        );
        std::fs::create_dir_all(&host.state).unwrap();
    }
    assert_eq!(calls(&host.calls()), [format!("-u {a}"), format!("-u {a}")]);
}

/// moto checks a Command document's content when it is created (YAML, `schemaVersion`, parameters): both
/// documents must pass under the names snapwarden's configs use, with the parameters SSM will then accept.
#[tokio::test]
async fn both_documents_are_accepted_by_ssm_create_document() {
    use aws_sdk_ssm::types::{DocumentFormat, DocumentType};
    let moto = common::Moto::start();
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
    let create = |name: &str, content: String| {
        ssm.create_document()
            .name(name)
            .content(content)
            .document_type(DocumentType::Command)
            .document_format(DocumentFormat::Yaml)
            .send()
    };
    // moto does check: content without a schemaVersion is refused.
    let broken = create("snapwarden-broken", "description: no schema\n".into()).await;
    assert!(
        broken.is_err(),
        "moto accepted a document without schemaVersion"
    );

    for (name, params) in [
        (FREEZE, vec!["AutoThawSeconds", "MountPoints"]),
        (THAW, vec!["MountPoints"]),
    ] {
        let content = std::fs::read_to_string(document_path(name)).unwrap();
        let created = create(name, content)
            .await
            .unwrap_or_else(|e| panic!("CreateDocument {name}: {e:?}"));
        let desc = created.document_description().unwrap();
        assert_eq!(desc.schema_version(), Some("2.2"), "{name}");
        let described = ssm
            .describe_document()
            .name(name)
            .send()
            .await
            .unwrap()
            .document
            .unwrap();
        assert_eq!(described.document_type(), Some(&DocumentType::Command));
        let mut got: Vec<&str> = described
            .parameters()
            .iter()
            .filter_map(|p| p.name())
            .collect();
        got.sort();
        assert_eq!(got, params, "{name}");
        if name == FREEZE {
            let auto = described
                .parameters()
                .iter()
                .find(|p| p.name() == Some("AutoThawSeconds"))
                .unwrap();
            assert_eq!(auto.default_value(), Some("60"));
        }
    }
}
