//! snapwarden keeps EBS snapshots of tagged EC2 instances on cron schedules and prunes them by policy. The pure
//! decision modules (`schedule`, `retention`, `config` validation, `notify` digests) know nothing of tokio or
//! AWS; `ec2` puts AWS behind a small trait; `worker` is where decisions meet I/O; `daemon` wires it all up.
//! See docs/ARCHITECTURE.md.

pub mod config;
pub mod daemon;
pub mod demo;
pub mod ec2;
pub mod error;
pub mod http;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod next;
pub mod notify;
pub mod once;
pub mod plan;
pub mod report;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod sdnotify;
pub mod simulate;
pub mod status;
pub mod worker;
