//! Host-wide advisory locks, so that two snapwarden processes on one host never act on the same policy and slot
//! at once: `once` and every run of the daemon hold `<policy>.<slot>.lock` while they work, and `run` holds
//! `<policy>.daemon.lock` for its whole life, so a second daemon with the same policy is refused at start while
//! `once` still works beside a running daemon. Locks are flock(2) on files in one directory (`daemon.lock-dir`,
//! else systemd's `$RUNTIME_DIRECTORY`, else `/run/snapwarden`); the kernel releases them when the process
//! dies, so a crash leaves nothing to clean up. The holder writes its pid and command line into the file, which
//! is how a refusal names it. This does not coordinate hosts: idempotency by slot tag and retention do that.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

/// Where the lock files live.
#[derive(Debug, Clone)]
pub struct LockDir(PathBuf);

/// A lock this process holds; released (and its file removed) on drop.
#[derive(Debug)]
pub struct Held {
    file: File,
    path: PathBuf,
}

/// Why a lock was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Another process holds it: its pid and command line as it wrote them.
    Busy { path: PathBuf, holder: String },
    /// The directory or file cannot be used (missing permissions, read-only file system).
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Busy { path, holder } => {
                write!(f, "held by {holder} (lock file {})", path.display())
            }
            Refused::Io { path, error } => write!(
                f,
                "cannot use the lock file {}: {error}; set daemon.lock-dir to a directory this user can write",
                path.display()
            ),
        }
    }
}

impl LockDir {
    /// `configured` (`daemon.lock-dir`), else the runtime directory systemd made for the unit, else
    /// `/run/snapwarden` — the same place a root shell on the host finds, so `once` meets the daemon's locks.
    pub fn resolve(configured: Option<&Path>, runtime_directory: Option<&str>) -> LockDir {
        let dir = configured
            .map(Path::to_path_buf)
            .or_else(|| {
                // systemd lists one path per RuntimeDirectory= entry, separated by colons.
                runtime_directory
                    .and_then(|v| v.split(':').next())
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("/run/snapwarden"));
        LockDir(dir)
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The lock `once` and the daemon's runs take for one slot of a policy.
    pub async fn try_slot(&self, policy: &str, slot: DateTime<Utc>) -> Result<Held, Refused> {
        self.off_runtime(format!(
            "{}.{}.lock",
            file_part(policy),
            slot.format("%Y%m%dT%H%M%SZ")
        ))
        .await
    }

    /// The lock `run` holds for each of its policies while it lives.
    pub async fn try_daemon(&self, policy: &str) -> Result<Held, Refused> {
        self.off_runtime(format!("{}.daemon.lock", file_part(policy)))
            .await
    }

    /// [`LockDir::try_lock`] on tokio's blocking pool: naming a busy lock's holder may wait up to ~200 ms for its
    /// note ([`read_holder`]), which on a runtime thread would stall every task queued there.
    async fn off_runtime(&self, name: String) -> Result<Held, Refused> {
        let dir = self.clone();
        tokio::task::spawn_blocking(move || dir.try_lock(&name))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn try_lock(&self, name: &str) -> Result<Held, Refused> {
        let path = self.0.join(name);
        let io = |error| Refused::Io {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(&self.0).map_err(io)?;
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = match read_holder(&mut file) {
                        Some(text) => text,
                        None => "another snapwarden process".to_string(),
                    };
                    return Err(Refused::Busy { path, holder });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            // A holder removes the file before it unlocks, so a lock won on a file already unlinked (opened just
            // before the removal) guards nothing: take it again on the file that is there now.
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "pid {} ({})", std::process::id(), command_line()).map_err(io)?;
            return Ok(Held { file, path });
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Removed while still locked (see `same_file`), so the directory does not fill with one file per slot.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// What the holder of a lock wrote about itself. It writes right after it wins the lock, so a file found empty is
/// read again for a moment (at most ~200 ms, in the rare case of two processes starting together) before the
/// refusal goes out without the holder's name.
fn read_holder(file: &mut File) -> Option<String> {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok()
            && file.read_to_string(&mut text).is_ok()
            && !text.trim().is_empty()
        {
            return Some(text.trim().to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A policy name as a file name: names are free text in the config, and `/` or `..` must not leave the directory.
fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '%'
            }
        })
        .collect()
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> DateTime<Utc> {
        "2026-11-21T04:30:00Z".parse().unwrap()
    }

    #[tokio::test]
    async fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::resolve(Some(dir.path()), None);
        let held = locks.try_slot("prod", slot()).await.unwrap();
        match locks.try_slot("prod", slot()).await {
            Err(Refused::Busy { holder, .. }) => {
                assert!(
                    holder.starts_with(&format!("pid {} (", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected busy, got {other:?}"),
        }
        // Another slot, the daemon lock and another policy are independent.
        let other_slot = locks
            .try_slot("prod", slot() + chrono::Duration::days(1))
            .await;
        assert!(other_slot.is_ok());
        assert!(locks.try_daemon("prod").await.is_ok());
        assert!(locks.try_slot("test", slot()).await.is_ok());
        drop(held);
        assert!(!dir.path().join("prod.20261121T043000Z.lock").exists());
        assert!(locks.try_slot("prod", slot()).await.is_ok());
    }

    #[tokio::test]
    async fn a_holder_caught_between_its_lock_and_its_note_is_still_named() {
        // Two `once` started together: the loser can read the file before the winner has written who it is.
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::resolve(Some(dir.path()), None);
        let path = dir.path().join("prod.20261121T043000Z.lock");
        let winner = File::create(&path).unwrap();
        winner.try_lock().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(40));
            let mut w = &winner;
            writeln!(w, "pid 4242 (snapwarden once)").unwrap();
            winner
        });
        match locks.try_slot("prod", slot()).await {
            Err(Refused::Busy { holder, .. }) => assert_eq!(holder, "pid 4242 (snapwarden once)"),
            other => panic!("expected busy, got {other:?}"),
        }
        drop(writer.join().unwrap());
    }

    #[tokio::test]
    async fn naming_a_busy_locks_holder_leaves_the_runtime_thread_free() {
        // The holder's note is written by a task of this (single-threaded) runtime: it only gets to run while the
        // wait for the note is off the runtime thread.
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::resolve(Some(dir.path()), None);
        let winner = File::create(dir.path().join("prod.20261121T043000Z.lock")).unwrap();
        winner.try_lock().unwrap();
        let writer = tokio::spawn(async move {
            let mut w = &winner;
            writeln!(w, "pid 4242 (snapwarden once)").unwrap();
            winner
        });
        match locks.try_slot("prod", slot()).await {
            Err(Refused::Busy { holder, .. }) => assert_eq!(holder, "pid 4242 (snapwarden once)"),
            other => panic!("expected busy, got {other:?}"),
        }
        drop(writer.await.unwrap());
    }

    #[test]
    fn policy_names_stay_inside_the_directory_and_systemd_runtime_directory_is_the_default() {
        assert_eq!(file_part("../etc/x y"), "%%%etc%x%y");
        let d = LockDir::resolve(None, Some("/run/snapwarden:/run/other"));
        assert_eq!(d.path(), Path::new("/run/snapwarden"));
        let d = LockDir::resolve(Some(Path::new("/srv/locks")), Some("/run/snapwarden"));
        assert_eq!(d.path(), Path::new("/srv/locks"));
        assert_eq!(
            LockDir::resolve(None, None).path(),
            Path::new("/run/snapwarden")
        );
    }
}
