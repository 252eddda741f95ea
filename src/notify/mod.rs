//! Failure alerts: one digest per failed or partial run, de-duplicated within a window, a recovery message when
//! an alerting run succeeds again, published to SNS by a background task so a run never waits on SNS. The digest
//! text, the de-dup decision and the outbox are pure ([`message`], [`dedup`], [`outbox`]: no tokio, no AWS
//! crate, no clock, checked by `tests/layering.rs`); only [`sns`] (the [`SnsPublisher`]) and [`sender`] (the task)
//! do I/O. Without a topic, alerts are logged and counted only.
//!
//! SNS outages: a message SNS refused stays in the [`Outbox`](outbox::Outbox) (in memory, bounded: when full the oldest is dropped
//! and counted) and is retried with exponential backoff and full jitter until it is delivered or superseded — a
//! newer message for the same policy, schedules, account and region replaces an undelivered older one, since only the
//! latest state is worth reading. A recovery that supersedes an undelivered failure is itself dropped unless an
//! earlier failure of that key was delivered: nobody heard of the failure, so there is nothing to recover from
//! (the failed run is still in the metrics and logs). Messages go out in order; while the first one waits for its
//! retry, the others wait too (SNS is down for all of them). Alerts still queued at shutdown get one last try.

pub(crate) mod dedup;
pub(crate) mod message;
pub(crate) mod outbox;
pub(crate) mod sender;
pub(crate) mod sns;

pub use message::{digest, Message};
pub use outbox::Delivery;
pub use sender::Notifier;
pub use sns::{Publisher, SnsPublisher};

/// Reports for the tests of the pure modules.
#[cfg(test)]
mod fixtures {
    use chrono::DateTime;

    use crate::ec2::op::Op;
    use crate::error::Error;
    use crate::report::{Problem, RunReport};

    /// A problem as the worker records an AWS error.
    pub(super) fn problem(resource: &str, operation: &'static str, e: &Error) -> Problem {
        Problem::of(resource.into(), operation, e)
    }

    pub(super) fn report(failed: usize, targeted: usize) -> RunReport {
        let t = DateTime::parse_from_rfc3339("2026-03-02T04:30:00Z")
            .unwrap()
            .to_utc();
        let mut r = RunReport::new(
            "run-1".into(),
            "prod",
            vec!["daily".into()],
            "us-east-1",
            t,
            t,
        );
        r.targeted_volumes = targeted;
        r.created = targeted - failed;
        for i in 0..failed {
            let e = Error::api(
                Op::CreateSnapshot,
                "us-east-1",
                "IncorrectState",
                "volume is detaching",
            );
            r.problems
                .push(problem(&format!("vol-{i:05}"), "create", &e));
        }
        r
    }
}
