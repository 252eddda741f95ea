//! `snapwarden demo`: the real daemon (scheduler, workers, HTTP, metrics, alert digests) over an in-memory EC2
//! region with a small generated fleet and schedules that fire every few seconds, so someone without an AWS
//! account can watch `/status` and `/metrics` fill up within a minute. One volume is made to fail so the alert
//! path shows too (logged, since the demo has no SNS topic).

use std::sync::Arc;
use std::time::Duration;

use crate::ec2::fake::FakeEc2;

/// The demo's config: two policies, four schedules firing every few seconds, kept by count and by age.
pub const DEMO_CONFIG: &str = r#"
[daemon]
listen = "127.0.0.1:9180"
shutdown-grace = "10s"
# The fleet completes snapshots every 2 s; a run must be done before its schedule fires again 5 s later.
completion-deadline = "4s"

[log]
level = "info"

[[policy]]
name = "prod"
target = { resource = "instance", tags = { Backup = "true" } }
schedule = [
  { name = "fast", cron = "*/5 * * * * *", keep = { last = 6 } },
  { name = "slow", cron = "0,30 * * * * *", keep = { within = "2m" } },
]

[[policy]]
name = "tagged"
target = { resource = "instance", tags = {} }
schedule = [
  { name = "tagcount", cron = "*/10 * * * * *", count-tag = "SnapshotCount" },
]
"#;

/// Builds the demo fleet: instances with 1–3 volumes, some carrying a count tag (one with a bad value), and one
/// volume whose snapshots fail.
pub fn fleet() -> Arc<FakeEc2> {
    let fake = Arc::new(FakeEc2::new("demo-1"));
    for n in 0..4 {
        let name = format!("web-{n}");
        let devices: Vec<(&str, &str)> = [
            ("/dev/xvda", "gp3"),
            ("/dev/xvdb", "gp3"),
            ("/dev/xvdc", "st1"),
        ]
        .into_iter()
        .take(1 + n % 3)
        .collect();
        let (_, vols) = fake.add_instance(
            &[("Name", &name), ("Backup", "true"), ("Team", "web")],
            &devices,
        );
        if n == 3 {
            fake.fail_create_for(&vols[0], "IncorrectState");
        }
    }
    fake.add_instance(
        &[("Name", "db-0"), ("SnapshotCount", "3")],
        &[("/dev/xvda", "gp3"), ("/dev/xvdf", "io2")],
    );
    fake.add_instance(
        &[("Name", "db-1"), ("SnapshotCount", "many")],
        &[("/dev/xvda", "gp3")],
    );
    fake.add_instance(&[("Name", "untagged")], &[("/dev/xvda", "gp3")]);
    fake
}

/// EBS finishes snapshots in the background; the demo completes them a couple of seconds after creation.
pub async fn complete_snapshots(fake: Arc<FakeEc2>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => fake.complete_all(),
        }
    }
}
