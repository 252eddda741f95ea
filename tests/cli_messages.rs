//! What the real binary says when its input or its network is wrong: a refused connection explained in words
//! (no `Debug` dump of the SDK's error), and `simulate --volumes 0` rejected instead of quietly meaning 1.

mod common;

use std::time::Duration;

use common::free_port;
use common::process::{run_to_end, snapwarden, text};

fn write_config(dir: &std::path::Path, endpoint: &str) -> std::path::PathBuf {
    let prod = common::instance_policy("prod", "true", "daily", "30 4 * * *", "last = 7");
    common::write_config(dir, free_port(), "", endpoint, "max-attempts = 1", &prod)
}

#[test]
fn a_refused_connection_is_explained_in_words_without_a_debug_dump() {
    let dir = tempfile::tempdir().unwrap();
    // Bound then dropped: nothing listens there, so the connect is refused at once.
    let closed = free_port();
    let config = write_config(dir.path(), &format!("http://127.0.0.1:{closed}"));
    let out = run_to_end(
        snapwarden().arg("--config").arg(&config).args([
            "once",
            "--policy",
            "prod",
            "--schedule",
            "daily",
        ]),
        Duration::from_secs(60),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("snapwarden: cannot start: GetCallerIdentity in us-east-1: transport: "),
        "{all}"
    );
    assert!(last.contains("Connection refused"), "{all}");
    for dump in ["DispatchFailure(", "ConnectorError {", "Os {", "kind: "] {
        assert!(!err.contains(dump), "`{dump}` in the message:\n{all}");
    }
}

#[test]
fn simulate_rejects_zero_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9");
    let out = run_to_end(
        snapwarden().arg("--config").arg(&config).args([
            "simulate",
            "--from",
            "2026-01-01",
            "--days",
            "3",
            "--volumes",
            "0",
        ]),
        Duration::from_secs(60),
    );
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--volumes"), "{all}");
    assert!(err.contains("0 is not in 1.."), "{all}");
    assert!(out.stdout.is_empty(), "{all}");
}
