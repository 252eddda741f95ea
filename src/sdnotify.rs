//! systemd's notify protocol, just what a `Type=notify` service with a watchdog needs: `READY=1` once config, AWS
//! clients and the HTTP listener are up, `WATCHDOG=1` from the scheduler loop (so a stuck loop gets the service
//! restarted), `RELOADING=1` then `READY=1` around a SIGHUP reload, `STOPPING=1` when shutdown starts, and
//! `STATUS=` lines. Outside systemd (`NOTIFY_SOCKET` unset)
//! every call is a no-op. A datagram to a local socket; no dependency needed for that.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct SdNotify {
    target: Option<Target>,
    /// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends; None when no watchdog is configured.
    ping_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

enum Target {
    Path(PathBuf),
    /// `@name`: a Linux abstract socket.
    Abstract(Vec<u8>),
}

impl SdNotify {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from `env`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        let target =
            env("NOTIFY_SOCKET")
                .filter(|s| !s.is_empty())
                .map(|s| match s.strip_prefix('@') {
                    Some(name) => Target::Abstract(name.as_bytes().to_vec()),
                    None => Target::Path(PathBuf::from(s)),
                });
        let for_us =
            env("WATCHDOG_PID").is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let ping_every = env("WATCHDOG_USEC")
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        SdNotify {
            target,
            ping_every,
            last_ping: Mutex::new(None),
        }
    }

    pub(crate) fn disabled() -> Self {
        SdNotify {
            target: None,
            ping_every: None,
            last_ping: Mutex::new(None),
        }
    }

    pub(crate) fn send(&self, state: &str) {
        let Some(target) = &self.target else { return };
        let result = UnixDatagram::unbound().and_then(|sock| match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, state, "could not notify systemd");
        }
    }

    pub(crate) fn ready(&self) {
        self.send("READY=1\nSTATUS=scheduling");
    }

    /// A SIGHUP reload starts; [`SdNotify::ready`] ends it (`systemctl reload` waits for that).
    pub(crate) fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=reloading the config");
    }

    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=finishing in-flight runs");
    }

    /// Called on every scheduler tick; sends at most one ping per half watchdog interval.
    pub(crate) fn tick(&self, now: Instant) {
        let Some(every) = self.ping_every else { return };
        let mut last = self.last_ping.lock().expect("watchdog state poisoned");
        if last.is_none_or(|t| now.duration_since(t) >= every) {
            *last = Some(now);
            drop(last);
            self.send("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn sends_ready_watchdog_and_stopping_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let vars = [
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "2000000".to_string()),
            ("WATCHDOG_PID", std::process::id().to_string()),
        ];
        let n = SdNotify::from_env(env(&vars));
        let mut buf = [0u8; 256];
        let mut recv = || {
            let len = listener.recv(&mut buf).unwrap();
            String::from_utf8(buf[..len].to_vec()).unwrap()
        };
        n.ready();
        assert!(recv().starts_with("READY=1"));
        let t0 = Instant::now();
        n.tick(t0);
        assert_eq!(recv(), "WATCHDOG=1");
        // Within half the interval: no second ping; after it: one.
        n.tick(t0 + Duration::from_millis(500));
        n.tick(t0 + Duration::from_millis(1100));
        assert_eq!(recv(), "WATCHDOG=1");
        n.reloading();
        assert!(recv().starts_with("RELOADING=1"));
        n.stopping();
        assert!(recv().starts_with("STOPPING=1"));
    }

    #[test]
    fn watchdog_for_another_pid_or_no_socket_is_ignored() {
        let vars = [
            ("WATCHDOG_USEC", "1000000".to_string()),
            ("WATCHDOG_PID", "1".to_string()),
        ];
        let n = SdNotify::from_env(env(&vars));
        assert!(n.ping_every.is_none() && n.target.is_none());
        n.ready();
        n.tick(Instant::now());
    }
}
