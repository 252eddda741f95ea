//! The outcome of one run (one policy, one slot, one region): what was targeted, created, kept, deleted and what
//! went wrong, plus the success/partial/failure verdict. Workers fill it in; alerts, metrics, logs and `/status`
//! read it. Plain data, no I/O.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ec2::op::ApiFailure;
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunResult {
    Success,
    Partial,
    Failure,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Partial => "partial",
            RunResult::Failure => "failure",
        }
    }

    /// The worse of two results (for a one-shot run over several regions).
    pub fn max_severity(self, other: RunResult) -> RunResult {
        let rank = |r| match r {
            RunResult::Success => 0,
            RunResult::Partial => 1,
            RunResult::Failure => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// Something that went wrong for one resource (or, with `resource == region`, for the whole run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// volume, instance or snapshot id; the region for run-level problems.
    pub resource: String,
    /// `create`, `delete`, `target` (bad tag value), `describe`, `defer` (a pending-snapshot limit put the
    /// volume off to the next run, or — code `stopped` — a create or delete was not sent because the daemon was
    /// shutting down: makes the run partial, never failed, and is not counted as a failed volume),
    /// or `complete` (a snapshot still pending at the completion deadline, or an earlier slot's that ended in
    /// error: partial, not a failed volume; this slot's errored snapshot is a `create` problem), or `retention` (a
    /// deletion cap held the plan back, or it set snapshots aside for a person to look at: codes `deletion-cap`,
    /// `future-slot`, `unplaced-copy`; partial), or `pre` / `vss` (an instance's pre script or VSS command failed and
    /// it fell back to a crash-consistent snapshot: partial; with `on-failure = "skip"` its volumes are `create`
    /// problems instead), or `post` (the post script failed: partial, the snapshot stands).
    pub operation: &'static str,
    /// AWS error code, or a bounded label such as `bad-count-tag`.
    pub code: String,
    pub message: String,
    /// For an AWS error: the call and what its code means, which alerts match on (`Error::api_failure`). Not in
    /// the JSON: `code` and `message` say it in words.
    #[serde(skip)]
    pub(crate) aws: Option<ApiFailure>,
}

impl Problem {
    /// What `e` did to `resource` during `operation`: its code, its message, and the AWS call and code meaning
    /// it carries, if any. A refused role is `assume-role`, not STS's code (`AccessDenied`, which reads as an EC2
    /// permission): the message carries STS's code with the role and the fix.
    pub(crate) fn of(resource: String, operation: &'static str, e: &Error) -> Problem {
        let code = match e {
            Error::AssumeRole { .. } => e.kind(),
            _ => e.code(),
        };
        Problem {
            resource,
            operation,
            code: code.to_string(),
            message: e.to_string(),
            aws: e.api_failure(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub(crate) policy: String,
    pub(crate) schedules: Vec<String>,
    /// The account's label (`worker::Region::account`); empty for reports made outside a region's run.
    pub(crate) account: String,
    pub(crate) region: String,
    pub(crate) slot: DateTime<Utc>,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
    pub dry_run: bool,
    /// 0 for a slot's first run, n for its n-th retry within the slot (the daemon retries failed and partial
    /// runs of the latest slot until the schedule's next fire).
    pub(crate) retry: u32,
    /// Volumes that should have a snapshot of this slot.
    pub targeted_volumes: usize,
    pub created: usize,
    /// Volumes that already had this slot's snapshot (a retry or a restart).
    pub already_done: usize,
    /// This slot's snapshots still `pending` when a run that does not wait (`completion-deadline = "0s"`) ended:
    /// made, not yet complete, not a problem. A run that waits reports them as `snapshot-pending` problems instead.
    pub pending: usize,
    pub deleted: usize,
    pub kept: usize,
    /// Of `created`, under a policy with VSS or scripts: snapshots taken application-consistent, and
    /// crash-consistent fallbacks (`on-failure = "crash-consistent"`). Both 0 for other policies.
    pub app_consistent: usize,
    pub fallback: usize,
    /// Deletions refused because the snapshot backs an AMI: reported, never a failure.
    pub kept_in_use: usize,
    /// Disaster-recovery copies, over every destination of the policy.
    pub copies: CopyTally,
    /// Set when the run could not look at the region at all (describe failed): nothing was created or deleted.
    pub fatal: Option<Problem>,
    pub problems: Vec<Problem>,
    /// Why retention did not run, when it did not.
    pub retention_skipped: Option<String>,
}

/// What a run did about disaster-recovery copies, over all destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyTally {
    /// CopySnapshot calls answered: copies made (pending at first).
    pub created: usize,
    /// Copies wanted and put off to the next run (the destination's limit on pending copies).
    pub deferred: usize,
    /// Copies still pending in their destination when the run ended; the next run watches them.
    pub pending: usize,
    /// Copies deleted by the destinations' retention.
    pub deleted: usize,
}

impl RunReport {
    pub(crate) fn new(
        run_id: String,
        policy: &str,
        schedules: Vec<String>,
        region: &str,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        RunReport {
            run_id,
            policy: policy.to_string(),
            schedules,
            account: String::new(),
            region: region.to_string(),
            slot,
            started_at: now,
            finished_at: now,
            dry_run: false,
            retry: 0,
            targeted_volumes: 0,
            created: 0,
            already_done: 0,
            pending: 0,
            deleted: 0,
            kept: 0,
            app_consistent: 0,
            fallback: 0,
            kept_in_use: 0,
            copies: CopyTally::default(),
            fatal: None,
            problems: Vec::new(),
            retention_skipped: None,
        }
    }

    /// Volumes whose snapshot of this slot failed.
    pub fn failed_volumes(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.operation == "create")
            .count()
    }

    pub fn result(&self) -> RunResult {
        let failed = self.failed_volumes();
        if self.fatal.is_some() || (failed > 0 && failed == self.targeted_volumes) {
            RunResult::Failure
        } else if self.problems.is_empty() {
            RunResult::Success
        } else {
            RunResult::Partial
        }
    }

    /// Whether running the slot again could change the outcome: not when the only problems wait for a person —
    /// bad count-tag values on targets (`target`), snapshots retention set aside (a slot in the future, a copy
    /// that records no source), a deletion cap hit, a copy destination that cannot be used as configured and a
    /// member account's role that STS refused (`assume-role`: a trust policy, ExternalId or SCP does not fix
    /// itself within minutes; the next fire tries again). Retrying those would survey the region again and again
    /// until the next fire to report the same thing.
    /// Copies deferred (the destination's pending limit) are worth a retry too, though no problem: the retry
    /// sends the next of them as the earlier ones complete, instead of leaving the backlog to the next fire.
    pub(crate) fn worth_retrying(&self) -> bool {
        const FOR_A_PERSON: [&str; 5] = [
            "future-slot",
            "unplaced-copy",
            "deletion-cap",
            "copy-destination",
            "assume-role",
        ];
        self.copies.deferred > 0
            || self
                .fatal
                .iter()
                .chain(&self.problems)
                .any(|p| p.operation != "target" && !FOR_A_PERSON.contains(&p.code.as_str()))
    }

    /// The distinct error codes, sorted: what de-duplication compares.
    pub(crate) fn codes(&self) -> Vec<String> {
        let mut codes: Vec<String> = self
            .fatal
            .iter()
            .chain(&self.problems)
            .map(|p| p.code.clone())
            .collect();
        codes.sort();
        codes.dedup();
        codes
    }

    pub(crate) fn schedule_label(&self) -> String {
        self.schedules.join(",")
    }

    /// Where the run acted, as `/status`, the digest and `once` name it: `account/region` (a scheduler
    /// `Scope`'s form), or the region alone for a report made outside a region's run.
    pub(crate) fn scope(&self) -> String {
        if self.account.is_empty() {
            self.region.clone()
        } else {
            format!("{}/{}", self.account, self.region)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_role_is_its_own_problem_code() {
        let e = Error::AssumeRole {
            role_arn: "arn:aws:iam::222222222222:role/snapwarden".into(),
            external_id: false,
            daemon: None,
            code: "AccessDenied".into(),
            message: "not authorized".into(),
        };
        let p = Problem::of("us-east-1".into(), "describe", &e);
        assert_eq!(p.code, "assume-role");
        assert!(p.message.starts_with(
            "cannot assume role arn:aws:iam::222222222222:role/snapwarden: AccessDenied"
        ));
    }

    fn problem(op: &'static str, code: &str) -> Problem {
        Problem {
            resource: "vol-1".into(),
            operation: op,
            code: code.into(),
            message: String::new(),
            aws: None,
        }
    }

    #[test]
    fn verdicts() {
        let now = Utc::now();
        let mut r = RunReport::new("r".into(), "p", vec!["daily".into()], "us-east-1", now, now);
        r.targeted_volumes = 2;
        assert_eq!(r.result(), RunResult::Success);
        assert!(!r.worth_retrying());
        r.problems.push(problem("target", "bad-count-tag"));
        assert_eq!(r.result(), RunResult::Partial);
        assert!(!r.worth_retrying(), "a bad tag waits for a person");
        for code in ["future-slot", "unplaced-copy", "deletion-cap"] {
            r.problems.push(problem("retention", code));
            assert!(!r.worth_retrying(), "{code} waits for a person");
        }
        r.problems.push(problem("copy", "copy-destination"));
        assert!(
            !r.worth_retrying(),
            "a copy destination that cannot be used waits for a person"
        );
        r.copies.deferred = 3;
        assert_eq!(
            r.result(),
            RunResult::Partial,
            "deferred copies are no problem of their own"
        );
        assert!(r.worth_retrying(), "a retry sends deferred copies");
        r.copies.deferred = 0;
        r.problems.truncate(1);
        r.problems.push(problem("create", "IncorrectState"));
        assert_eq!(r.result(), RunResult::Partial);
        assert!(r.worth_retrying());
        r.problems.push(problem("create", "IncorrectState"));
        assert_eq!(r.result(), RunResult::Failure);
        assert_eq!(
            r.codes(),
            vec!["IncorrectState".to_string(), "bad-count-tag".to_string()]
        );
    }

    fn refused_role() -> Error {
        Error::AssumeRole {
            role_arn: "arn:aws:iam::222222222222:role/snapwarden-member".into(),
            external_id: true,
            daemon: None,
            code: "AccessDenied".into(),
            message: "not authorized to perform sts:AssumeRole".into(),
        }
    }

    #[test]
    fn a_refused_role_is_an_assume_role_problem_whatever_sts_answered() {
        let p = Problem::of("eu-west-1".into(), "describe", &refused_role());
        assert_eq!(p.code, "assume-role");
        assert!(p.message.contains("AccessDenied"), "{}", p.message);
        assert!(p.aws.is_none());
    }

    #[test]
    fn a_run_whose_role_was_refused_waits_for_a_person_not_for_a_retry() {
        let now = Utc::now();
        let mut r = RunReport::new("r".into(), "p", vec!["daily".into()], "eu-west-1", now, now);
        r.fatal = Some(Problem::of("eu-west-1".into(), "describe", &refused_role()));
        assert_eq!(r.result(), RunResult::Failure);
        assert!(
            !r.worth_retrying(),
            "a trust policy does not fix itself within the slot"
        );
        // Any other fatal problem is still retried.
        r.fatal = Some(problem("describe", "ServiceUnavailable"));
        assert!(r.worth_retrying());
    }
}
