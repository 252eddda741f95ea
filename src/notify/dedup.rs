//! De-duplication of alerts: the same failure of a (policy, schedules, account, region) is sent once per window, a retry
//! of a slot already alerted sends nothing, and the first success after a failure sends a recovery. Pure: the
//! time is an argument.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::message::{digest, recovery, Message};
use crate::report::{RunReport, RunResult};

/// What the de-dup window says to do with a run's alert.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AlertAction {
    Send(Message),
    /// The same failure was already sent inside the window.
    Suppressed,
    /// Nothing to say (a success with nothing outstanding, or a dry run).
    Quiet,
}

/// Remembers which (policy, schedules, account, region) are alerting and with what, so the same failure is sent
/// once per window and a recovery follows the first success.
pub(crate) struct Deduper {
    window: Duration,
    alerting: HashMap<AlertKey, Sent>,
}

/// (policy, schedules, `account/region`): what an alert is about. Two accounts in one region alert apart: one's
/// failure neither suppresses nor recovers the other's.
pub(super) type AlertKey = (String, String, String);

pub(super) fn alert_key(report: &RunReport) -> AlertKey {
    (
        report.policy.clone(),
        report.schedule_label(),
        report.scope(),
    )
}
/// What was last sent for a key: the verdict, its error codes, when, and for which slot.
type Sent = (RunResult, Vec<String>, DateTime<Utc>, DateTime<Utc>);

impl Deduper {
    pub(crate) fn new(window: Duration) -> Self {
        Deduper {
            window,
            alerting: HashMap::new(),
        }
    }

    pub(crate) fn decide(&mut self, report: &RunReport, now: DateTime<Utc>) -> AlertAction {
        if report.dry_run {
            return AlertAction::Quiet;
        }
        let key = alert_key(report);
        let result = report.result();
        if result == RunResult::Success {
            return match self.alerting.remove(&key) {
                Some(_) => AlertAction::Send(recovery(report)),
                None => AlertAction::Quiet,
            };
        }
        let fingerprint = (result, report.codes());
        if let Some((r, codes, at, slot)) = self.alerting.get(&key) {
            // A retry within the slot fails the way an outage does, often with other codes each time: the
            // operator already has this slot's digest, and hears next from its recovery.
            if report.retry > 0 && *slot == report.slot {
                return AlertAction::Suppressed;
            }
            let fresh = (now - *at)
                .to_std()
                .map(|age| age < self.window)
                .unwrap_or(true);
            if (*r, codes) == (fingerprint.0, &fingerprint.1) && fresh {
                return AlertAction::Suppressed;
            }
        }
        self.alerting
            .insert(key, (fingerprint.0, fingerprint.1, now, report.slot));
        AlertAction::Send(digest(report))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::report;
    use super::*;

    #[test]
    fn a_retry_of_the_same_slot_sends_no_second_digest_and_its_success_recovers() {
        let mut d = Deduper::new(Duration::ZERO);
        let t = Utc::now();
        let first = report(1, 10);
        assert!(matches!(d.decide(&first, t), AlertAction::Send(_)));
        // The retry fails differently (the outage moved on from throttling to transport errors).
        let mut retry = report(10, 10);
        retry.retry = 1;
        retry.problems[0].code = "ServiceUnavailable".into();
        assert_eq!(d.decide(&retry, t), AlertAction::Suppressed);
        retry.retry = 2;
        assert_eq!(
            d.decide(&retry, t + chrono::Duration::minutes(3)),
            AlertAction::Suppressed
        );
        // The next slot's failure is news again, even as a retry.
        let mut next = report(10, 10);
        next.slot += chrono::Duration::days(1);
        next.retry = 1;
        assert!(matches!(d.decide(&next, t), AlertAction::Send(_)));
        let mut ok = report(0, 10);
        ok.slot = next.slot;
        ok.retry = 2;
        match d.decide(&ok, t) {
            AlertAction::Send(m) => assert!(
                m.subject.starts_with("snapwarden RECOVERED"),
                "{}",
                m.subject
            ),
            other => panic!("expected recovery, got {other:?}"),
        }
    }

    #[test]
    fn dedup_window_and_recovery() {
        let mut d = Deduper::new(Duration::from_secs(6 * 3600));
        let t = Utc::now();
        let bad = report(1, 10);
        assert!(matches!(d.decide(&bad, t), AlertAction::Send(_)));
        assert_eq!(
            d.decide(&bad, t + chrono::Duration::hours(1)),
            AlertAction::Suppressed
        );
        // A different failure is news.
        let mut worse = report(10, 10);
        worse.problems[0].code = "UnauthorizedOperation".into();
        assert!(matches!(
            d.decide(&worse, t + chrono::Duration::hours(2)),
            AlertAction::Send(_)
        ));
        // The same one again after the window is re-sent.
        assert!(matches!(
            d.decide(&worse, t + chrono::Duration::hours(9)),
            AlertAction::Send(_)
        ));
        match d.decide(&report(0, 10), t + chrono::Duration::hours(10)) {
            AlertAction::Send(m) => assert!(
                m.subject.starts_with("snapwarden RECOVERED prod/daily"),
                "{}",
                m.subject
            ),
            other => panic!("expected recovery, got {other:?}"),
        }
        assert_eq!(
            d.decide(&report(0, 10), t + chrono::Duration::hours(11)),
            AlertAction::Quiet
        );
    }

    #[test]
    fn two_accounts_in_one_region_alert_and_recover_apart() {
        let mut d = Deduper::new(Duration::from_secs(6 * 3600));
        let t = Utc::now();
        let in_account = |mut r: RunReport, account: &str| {
            r.account = account.into();
            r
        };
        assert!(matches!(
            d.decide(&in_account(report(1, 10), "prod"), t),
            AlertAction::Send(_)
        ));
        // The same failure in another account is news, not a repeat.
        assert!(matches!(
            d.decide(&in_account(report(1, 10), "staging"), t),
            AlertAction::Send(_)
        ));
        // One account's success recovers that account only.
        match d.decide(&in_account(report(0, 10), "staging"), t) {
            AlertAction::Send(m) => assert_eq!(
                m.subject,
                "snapwarden RECOVERED prod/daily staging/us-east-1"
            ),
            other => panic!("expected recovery, got {other:?}"),
        }
        assert_eq!(
            d.decide(&in_account(report(1, 10), "prod"), t),
            AlertAction::Suppressed
        );
    }
}
