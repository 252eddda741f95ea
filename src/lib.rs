//! snapwarden keeps EBS snapshots of tagged EC2 instances on cron schedules and prunes them by policy. The pure
//! decision modules (`schedule`, `retention`, `config` validation, `notify` digests) know nothing of tokio or
//! AWS; `ec2` puts AWS behind a small trait; `worker` is where decisions meet I/O; `daemon` wires it all up.
//! See docs/ARCHITECTURE.md.
//!
//! Only what `main.rs` and the tests under `tests/` use is `pub`; the rest is `pub(crate)`. The docs are for people
//! working on the crate (`cargo doc --document-private-items`), so they may link to crate-private items.
#![allow(rustdoc::private_intra_doc_links)]

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
pub(crate) mod org;
pub mod plan;
pub mod report;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod sdnotify;
pub mod simulate;
pub mod ssm;
pub mod status;
pub mod worker;
