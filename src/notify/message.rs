//! The text of alerts: a failure digest (subject, a human summary with what to do per error code, the report as
//! JSON cut to SNS's size limit) and a recovery message. Pure: no I/O, no clock, no AWS types beyond the
//! vocabulary of [`crate::ec2::op`].

use std::collections::BTreeMap;

use crate::ec2::op::Code;
use crate::report::{Problem, RunReport, RunResult};

/// SNS's limit is 256 KiB for the whole message; stay well under it so attributes and encoding fit too.
pub(crate) const MAX_BODY_BYTES: usize = 200 * 1024;
pub(crate) const MAX_SUBJECT_CHARS: usize = 100;
/// How many problems the human summary lists before it says how many were left out.
const SUMMARY_LINES: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub subject: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
}

/// What to do about the problems of one code: matched on what an AWS code means where the problem is an AWS
/// error, else on snapwarden's own label.
fn what_to_do(code: &str, aws: Option<Code>) -> &'static str {
    if let Some(code) = aws {
        return match code {
            Code::AccessDenied => "grant the missing action to snapwarden's IAM role (deploy/iam/policy.json)",
            Code::Throttled => "EC2 throttled the account; the next run retries. Check other tools sharing the API budget",
            Code::PendingLimit => "too many pending snapshots on the volume or account; the next run retries",
            Code::VolumeRate => "another snapshot of the volume was started less than 15 s earlier",
            Code::VolumeNotFound | Code::IncorrectState => "the volume was deleted or detached during the run; nothing to do if intended",
            Code::CopyLimit => "too many copies in progress to the destination region (AWS allows 20): the copies were deferred and the next run makes them, oldest first. Nothing to do unless it lasts (SnapwardenDrRpoBreached)",
            Code::Credentials => "snapwarden's AWS credentials are missing or expired; check its role or profile",
            _ => "see the error message; the next run retries",
        };
    }
    match code {
        "snapshot-error" => "EBS could not complete the snapshot (it was deleted); the next run of the slot makes a new one. If it repeats, check the volume's health",
        "snapshot-pending" => "the snapshot was still pending at daemon.completion-deadline; the next run checks it again. Raise the deadline if first snapshots of big volumes are expected",
        "transport" | "timeout" => "AWS could not be reached in this region (network, DNS, endpoint); the other regions ran. The next run retries",
        "assume-role" => "snapwarden could not assume this account's role (the problem below names the role ARN and the exact trust-policy fix): only this account's runs fail, the other accounts run on. Fix the member role's trust policy (the principal, the sts:ExternalId condition) or the service control policy that denies sts:AssumeRole; the slot is not retried (a trust policy does not fix itself in minutes), the next scheduled run tries again",
        "bad-count-tag" => "fix the tag value: a whole number from 1 to 10000",
        "future-slot" => "kept and ignored by retention: fix the snapshot's snapwarden:slot tag (or delete it by hand) and check the clock of whatever wrote it",
        "unplaced-copy" => "kept and ignored by retention: tag the copy with snapwarden:source-volume (its source volume id)",
        "credentials" => "snapwarden's AWS credentials are missing or expired; check its role or profile",
        "not-managed" => "start the SSM agent on the instance and give its instance profile AmazonSSMManagedInstanceCore; until then its snapshots are crash-consistent (or skipped, with on-failure = \"skip\")",
        "vss-components-missing" => "install the AwsVssComponents package on the instance (SSM document AWS-ConfigureAWSPackage, name AwsVssComponents)",
        "timed-out" => "the SSM command did not finish in time: check the instance's load and the agent, or raise the policy's vss or script timeout",
        "script-failed" => "the script exited non-zero on the instance: its exit code and first output lines are in the problem below; fix the script or what it acts on",
        "send-failed" => "SSM refused the command: check the document name, its parameters and snapwarden's ssm:SendCommand permission",
        "thawed-early" => "the freeze ended (its auto-thaw fired) before the post script ran: the snapshots are tagged snapwarden:app-consistent=false; raise AutoThawSeconds above the time from pre to post",
        "vss-no-snapshot" => "the VSS document succeeded but made no snapshot of a targeted volume: check the instance role's ec2:CreateSnapshot and ec2:CreateTags permissions (deploy/iam) and the volume's attachment",
        _ => "see the error message; the next run retries",
    }
}

/// What to do about copy problems (operation `copy`) of one code: the same code means something else on the copy
/// side, whose fix lies in the destination region, the copy rule or a KMS key.
fn what_to_do_for_copies(code: &str, aws: Option<Code>) -> &'static str {
    match aws {
        Some(Code::AccessDenied) => "grant ec2:CopySnapshot, and ec2:CreateTags with ec2:CreateAction = CopySnapshot, in the destination region to snapwarden's IAM role (deploy/iam/policy.json; region * covers every destination), and for a copy under a customer-managed key the KMS statements on that key. The next run copies it",
        Some(Code::KmsKey) => "the copy's KMS key cannot be used: the copy rule's kms-key-id must name an enabled key in the destination region, and both the key's policy and snapwarden's IAM role must let the role use it through EC2 (README, \"Least IAM permissions\"). The next run copies it",
        Some(Code::InvalidParameter) => "the copy request was refused as invalid (the message names the parameter): nearly always the copy rule's kms-key-id (a key id, alias or ARN of the destination region) or its encryption. Fix the copy rule; the next run copies it",
        Some(_) => what_to_do(code, aws),
        None => match code {
            "copy-destination" => "the copy rule's region cannot be used: it is the region this policy snapshots (with aws.regions empty, the SDK's region), or one the daemon started without (restart it after adding a destination). Fix the copy rule's region",
            "copy-error" => "the copy ended in the error state, nearly always its KMS key: the destination key's policy must let snapwarden's role use it, and so must the source snapshot's key (a snapshot under the AWS-managed key aws/ebs copies fine within the account). The next run copies it again",
            _ => what_to_do(code, None),
        },
    }
}

/// The problems of the run whose code is `code`.
fn with_code<'a>(report: &'a RunReport, code: &'a str) -> impl Iterator<Item = &'a Problem> {
    report
        .fatal
        .iter()
        .chain(&report.problems)
        .filter(move |p| p.code == code)
}

/// The IAM actions the access-denied ones of `problems` were refused, e.g. `ec2:CreateSnapshot`.
fn missing_actions(problems: &[&Problem]) -> Vec<&'static str> {
    let mut actions: Vec<&'static str> = problems
        .iter()
        .filter_map(|p| p.aws)
        .filter(|f| f.code == Code::AccessDenied)
        .map(|f| f.operation.iam_action())
        .collect();
    actions.sort();
    actions.dedup();
    actions
}

fn severity(result: RunResult) -> &'static str {
    match result {
        RunResult::Failure => "critical",
        RunResult::Partial => "warning",
        RunResult::Success => "info",
    }
}

/// SNS subjects: ASCII, no control characters, at most 100 characters.
fn subject(text: String) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if clean.len() <= MAX_SUBJECT_CHARS {
        clean
    } else {
        format!("{}...", &clean[..MAX_SUBJECT_CHARS - 3])
    }
}

fn attributes(report: &RunReport, severity: &str) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::from([
        ("policy".to_string(), report.policy.clone()),
        ("schedule".to_string(), report.schedule_label()),
        ("region".to_string(), report.region.clone()),
        ("severity".to_string(), severity.to_string()),
    ]);
    if !report.account.is_empty() {
        attributes.insert("account".to_string(), report.account.clone());
    }
    attributes
}

/// Where the run acted, in words: `us-east-1 of account prod`.
fn place(report: &RunReport) -> String {
    if report.account.is_empty() {
        report.region.clone()
    } else {
        format!("{} of account {}", report.region, report.account)
    }
}

/// The alert for a failed or partial run: subject, a human summary, then the report as JSON.
pub fn digest(report: &RunReport) -> Message {
    let result = report.result();
    let verdict = if result == RunResult::Failure {
        "FAILED"
    } else {
        "PARTIAL"
    };
    let failed = report.failed_volumes();
    let scope = format!(
        "{}/{} {}",
        report.policy,
        report.schedule_label(),
        report.scope()
    );
    let detail = match &report.fatal {
        Some(p) => format!("run failed ({})", p.code),
        None if failed > 0 => format!("{failed} of {} volumes", report.targeted_volumes),
        None => format!("{} problems", report.problems.len()),
    };
    let mut body = format!(
        "snapwarden run {verdict} for policy {} schedule {} in {} (slot {}, run {}).\n\n\
         Volumes targeted: {}, snapshots created: {}, already present: {}, failed: {}.\n\
         Retention: {} deleted, {} kept, {} kept because they back an AMI{}.\n{}\n",
        report.policy,
        report.schedule_label(),
        place(report),
        crate::schedule::format_slot(report.slot),
        report.run_id,
        report.targeted_volumes,
        report.created,
        report.already_done,
        failed,
        report.deleted,
        report.kept,
        report.kept_in_use,
        report
            .retention_skipped
            .as_deref()
            .map(|w| format!(" (retention skipped: {w})"))
            .unwrap_or_default(),
        if report.app_consistent + report.fallback > 0 {
            format!(
                "Application-consistent snapshots: {}, crash-consistent fallbacks: {}.\n",
                report.app_consistent, report.fallback
            )
        } else {
            String::new()
        },
    );
    let c = &report.copies;
    if *c != Default::default() {
        body.push_str(&format!(
            "Disaster-recovery copies: {} sent, {} deferred to the next run, {} still pending, {} deleted by \
             their retention.\n",
            c.created, c.deferred, c.pending, c.deleted
        ));
    }
    body.push_str("What to do:\n");
    for code in report.codes() {
        // Copies fail in the destination region, for reasons of their own: a line of their own.
        let (copies, others): (Vec<&Problem>, Vec<&Problem>) =
            with_code(report, &code).partition(|p| p.operation == "copy");
        let aws = |ps: &[&Problem]| ps.iter().find_map(|p| p.aws).map(|f| f.code);
        let actions = missing_actions(&others);
        if !actions.is_empty() {
            body.push_str(&format!(
                "- {code}: grant {} to snapwarden's IAM role (deploy/iam/policy.json)\n",
                actions.join(", ")
            ));
        } else if !others.is_empty() {
            body.push_str(&format!("- {code}: {}\n", what_to_do(&code, aws(&others))));
        }
        if !copies.is_empty() {
            body.push_str(&format!(
                "- {code} (copies): {}\n",
                what_to_do_for_copies(&code, aws(&copies))
            ));
        }
    }
    body.push_str("\nProblems:\n");
    let all: Vec<_> = report.fatal.iter().chain(&report.problems).collect();
    for p in all.iter().take(SUMMARY_LINES) {
        // A run-level problem names the run's region: with its account, like the subject.
        let resource = if p.resource == report.region {
            report.scope()
        } else {
            p.resource.clone()
        };
        body.push_str(&format!(
            "- {} {resource}: {} {}\n",
            p.operation, p.code, p.message
        ));
    }
    if all.len() > SUMMARY_LINES {
        body.push_str(&format!(
            "- ... and {} more (all in the JSON below)\n",
            all.len() - SUMMARY_LINES
        ));
    }
    body.push_str("\n--- JSON ---\n");
    body.push_str(&json_within(
        report,
        MAX_BODY_BYTES.saturating_sub(body.len()),
    ));
    Message {
        subject: subject(format!("snapwarden {verdict} {scope}: {detail}")),
        body,
        attributes: attributes(report, severity(result)),
    }
}

/// The report as JSON, with the problem list cut so the text fits in `budget` bytes.
fn json_within(report: &RunReport, budget: usize) -> String {
    let mut cut = report.clone();
    let mut left_out = 0;
    loop {
        let mut value = serde_json::to_value(&cut).expect("report serializes");
        value["problems_left_out"] = left_out.into();
        let text = serde_json::to_string_pretty(&value).expect("json value serializes");
        if text.len() <= budget || cut.problems.is_empty() {
            return text;
        }
        // Halve until it fits: a few iterations even for tens of thousands of problems.
        let keep = cut.problems.len() / 2;
        left_out += cut.problems.len() - keep;
        cut.problems.truncate(keep);
    }
}

pub(crate) fn recovery(report: &RunReport) -> Message {
    let scope = format!(
        "{}/{} {}",
        report.policy,
        report.schedule_label(),
        report.scope()
    );
    Message {
        subject: subject(format!("snapwarden RECOVERED {scope}")),
        body: format!(
            "snapwarden run succeeded again for policy {} schedule {} in {} (slot {}, run {}{}): {} volumes \
             targeted, {} snapshots created, {} already present.\n",
            report.policy,
            report.schedule_label(),
            place(report),
            crate::schedule::format_slot(report.slot),
            report.run_id,
            match report.retry {
                0 => String::new(),
                n => format!(", retry {n} of the slot"),
            },
            report.targeted_volumes,
            report.created,
            report.already_done
        ),
        attributes: attributes(report, "info"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{problem, report};
    use super::*;
    use crate::ec2::op::Op;
    use crate::error::Error;

    #[test]
    fn digest_subject_summary_and_json() {
        let m = digest(&report(3, 120));
        assert_eq!(
            m.subject,
            "snapwarden PARTIAL prod/daily us-east-1: 3 of 120 volumes"
        );
        assert!(m.body.starts_with("snapwarden run PARTIAL"), "{}", m.body);
        assert!(
            m.body
                .contains("IncorrectState: the volume was deleted or detached"),
            "{}",
            m.body
        );
        let json = m.body.split("--- JSON ---\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["problems"].as_array().unwrap().len(), 3);
        assert_eq!(m.attributes["severity"], "warning");
        let all = digest(&report(120, 120));
        assert!(all.subject.starts_with("snapwarden FAILED"));
        assert_eq!(all.attributes["severity"], "critical");
    }

    #[test]
    fn set_aside_snapshots_get_a_digest_line_with_what_to_do() {
        let mut r = report(0, 2);
        for code in ["future-slot", "unplaced-copy"] {
            r.problems.push(Problem {
                resource: "us-east-1".into(),
                operation: "retention",
                code: code.into(),
                message: format!("policy prod: {code} found"),
                aws: None,
            });
        }
        let m = digest(&r);
        assert!(m.subject.starts_with("snapwarden PARTIAL"), "{}", m.subject);
        for line in [
            "- future-slot: kept and ignored by retention: fix the snapshot's snapwarden:slot tag",
            "- unplaced-copy: kept and ignored by retention: tag the copy with snapwarden:source-volume",
            "future-slot found",
        ] {
            assert!(m.body.contains(line), "{line}\n{}", m.body);
        }
    }

    #[test]
    fn an_instance_that_fell_back_is_named_with_its_cause_and_what_to_do() {
        let mut r = report(0, 4);
        r.created = 4;
        (r.app_consistent, r.fallback) = (2, 2);
        r.problems.push(Problem {
            resource: "i-0abc".into(),
            operation: "vss",
            code: "not-managed".into(),
            message: "instance i-0abc: AWSEC2-CreateVssSnapshot was not delivered: the SSM agent is not running"
                .into(),
            aws: None,
        });
        let m = digest(&r);
        for line in [
            "Application-consistent snapshots: 2, crash-consistent fallbacks: 2.",
            "- not-managed: start the SSM agent on the instance and give its instance profile AmazonSSMManagedInstanceCore",
            "- vss i-0abc: not-managed instance i-0abc: AWSEC2-CreateVssSnapshot was not delivered",
        ] {
            assert!(m.body.contains(line), "{line}\n{}", m.body);
        }
    }

    #[test]
    fn a_run_with_copies_says_what_it_did_about_them() {
        let mut r = report(0, 4);
        assert!(!digest(&r).body.contains("Disaster-recovery copies"));
        r.copies.created = 3;
        r.copies.deferred = 17;
        r.copies.pending = 3;
        let m = digest(&r);
        let line = "Disaster-recovery copies: 3 sent, 17 deferred to the next run, 3 still pending, 0 deleted";
        assert!(m.body.contains(line), "{}", m.body);
    }

    #[test]
    fn long_subjects_are_cut_and_huge_bodies_fit() {
        let mut r = report(20_000, 20_000);
        r.policy = "p".repeat(150);
        let m = digest(&r);
        assert!(m.subject.len() <= MAX_SUBJECT_CHARS && m.subject.ends_with("..."));
        assert!(m.body.len() <= MAX_BODY_BYTES, "{}", m.body.len());
        assert!(m.body.contains("... and 19980 more"));
        let json = m.body.split("--- JSON ---\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert!(v["problems_left_out"].as_u64().unwrap() > 0);
    }

    #[test]
    fn access_denied_digest_names_the_missing_action() {
        let mut r = report(0, 2);
        let denied = |op| Error::api(op, "us-east-1", "UnauthorizedOperation", "no");
        r.problems
            .push(problem("vol-1", "create", &denied(Op::CreateSnapshot)));
        r.fatal = Some(problem(
            "us-east-1",
            "describe",
            &denied(Op::DescribeVolumes),
        ));
        let m = digest(&r);
        assert!(
            m.body.contains("- UnauthorizedOperation: grant ec2:CreateSnapshot, ec2:DescribeVolumes to snapwarden's IAM role"),
            "{}",
            m.body
        );
    }

    /// A partial run whose copy of `snap-0aaa` the destination region refused with the AWS code `raw`, recorded as
    /// the copy phase records it: the source snapshot, the error of the call sent to the destination.
    fn refused_copy(destination: &str, raw: &str) -> RunReport {
        let mut r = report(0, 2);
        let e = Error::api(Op::CopySnapshot, destination, raw, "refused");
        r.problems.push(problem("snap-0aaa", "copy", &e));
        r
    }

    #[test]
    fn a_copy_that_ended_in_error_names_its_region_and_the_kms_key_policies() {
        let mut r = report(0, 2);
        r.problems.push(Problem {
            resource: "snap-0aaa".into(),
            operation: "copy",
            code: "copy-error".into(),
            message: "the copy of snap-0aaa to eu-west-1 ended in the error state".into(),
            aws: None,
        });
        let m = digest(&r);
        assert!(m.subject.starts_with("snapwarden PARTIAL"), "{}", m.subject);
        for line in [
            "- copy-error (copies): the copy ended in the error state, nearly always its KMS key: the destination \
             key's policy must let snapwarden's role use it, and so must the source snapshot's key (a snapshot under \
             the AWS-managed key aws/ebs copies fine within the account). The next run copies it again",
            "- copy snap-0aaa: copy-error the copy of snap-0aaa to eu-west-1 ended in the error state",
        ] {
            assert!(m.body.contains(line), "{line}\n{}", m.body);
        }
    }

    #[test]
    fn a_copy_refused_for_iam_asks_for_the_copy_grants_apart_from_the_sources_missing_action() {
        let mut r = refused_copy("eu-west-1", "UnauthorizedOperation");
        let denied = Error::api(
            Op::CreateSnapshot,
            "us-east-1",
            "UnauthorizedOperation",
            "no",
        );
        r.problems.push(problem("vol-1", "create", &denied));
        let body = digest(&r).body;
        for line in [
            // The source side's line names only the source side's action.
            "- UnauthorizedOperation: grant ec2:CreateSnapshot to snapwarden's IAM role (deploy/iam/policy.json)\n",
            "- UnauthorizedOperation (copies): grant ec2:CopySnapshot, and ec2:CreateTags with ec2:CreateAction = \
             CopySnapshot, in the destination region to snapwarden's IAM role (deploy/iam/policy.json",
            "- copy snap-0aaa: UnauthorizedOperation CopySnapshot in eu-west-1: UnauthorizedOperation: refused",
        ] {
            assert!(body.contains(line), "{line}\n{body}");
        }
    }

    #[test]
    fn a_copy_refused_for_its_key_or_a_parameter_points_at_the_kms_key_id() {
        for (raw, advice) in [
            ("KMSKeyNotAccessible", "the copy's KMS key cannot be used: the copy rule's kms-key-id must name an enabled key in the destination region"),
            ("InvalidKMSKey.NotFound", "the copy's KMS key cannot be used: the copy rule's kms-key-id must name an enabled key in the destination region"),
            ("InvalidParameterValue", "the copy request was refused as invalid (the message names the parameter): nearly always the copy rule's kms-key-id"),
        ] {
            let body = digest(&refused_copy("ap-southeast-2", raw)).body;
            assert!(body.contains(&format!("- {raw} (copies): {advice}")), "{body}");
            assert!(
                body.contains(&format!("- copy snap-0aaa: {raw} CopySnapshot in ap-southeast-2: {raw}")),
                "{body}"
            );
        }
    }

    #[test]
    fn a_full_destination_asks_for_nothing_unless_it_lasts() {
        let body = digest(&refused_copy("eu-west-1", "ResourceLimitExceeded")).body;
        assert!(
            body.contains(
                "- ResourceLimitExceeded (copies): too many copies in progress to the destination region (AWS \
                 allows 20): the copies were deferred and the next run makes them, oldest first. Nothing to do \
                 unless it lasts"
            ),
            "{body}"
        );
    }

    #[test]
    fn codes_of_one_meaning_get_the_same_advice() {
        for (raw, advice) in [
            ("RequestLimitExceeded", "EC2 throttled the account"),
            ("ThrottlingException", "EC2 throttled the account"),
            ("Throttled", "EC2 throttled the account"),
            (
                "ExpiredToken",
                "snapwarden's AWS credentials are missing or expired",
            ),
            (
                "RequestExpired",
                "snapwarden's AWS credentials are missing or expired",
            ),
            (
                "SignatureDoesNotMatch",
                "snapwarden's AWS credentials are missing or expired",
            ),
        ] {
            let mut r = report(0, 2);
            let e = Error::api(Op::CreateSnapshot, "us-east-1", raw, "m");
            r.problems.push(problem("vol-1", "create", &e));
            let body = digest(&r).body;
            assert!(body.contains(&format!("- {raw}: {advice}")), "{body}");
        }
    }

    /// The report of a run in `account`'s `region`, as a region's run makes it.
    fn in_account(mut r: RunReport, account: &str, region: &str) -> RunReport {
        r.account = account.into();
        r.region = region.into();
        r
    }

    #[test]
    fn two_accounts_in_one_region_get_digests_that_name_their_account() {
        let prod = digest(&in_account(report(1, 10), "prod", "eu-west-1"));
        let staging = digest(&in_account(report(2, 4), "staging", "eu-west-1"));
        assert_eq!(
            prod.subject,
            "snapwarden PARTIAL prod/daily prod/eu-west-1: 1 of 10 volumes"
        );
        assert_eq!(
            staging.subject,
            "snapwarden PARTIAL prod/daily staging/eu-west-1: 2 of 4 volumes"
        );
        assert!(
            staging.body.starts_with(
                "snapwarden run PARTIAL for policy prod schedule daily in eu-west-1 of account staging (slot"
            ),
            "{}",
            staging.body
        );
        assert_eq!(staging.attributes["account"], "staging");
        assert_eq!(staging.attributes["region"], "eu-west-1");
        let json = staging.body.split("--- JSON ---\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["account"], "staging");
        let mut ok = in_account(report(0, 4), "staging", "eu-west-1");
        ok.retry = 1;
        let back = recovery(&ok);
        assert_eq!(
            back.subject,
            "snapwarden RECOVERED prod/daily staging/eu-west-1"
        );
        assert!(
            back.body
                .contains("schedule daily in eu-west-1 of account staging (slot"),
            "{}",
            back.body
        );
        assert_eq!(back.attributes["account"], "staging");
    }

    #[test]
    fn a_refused_role_says_only_its_account_fails_and_how_to_fix_the_trust() {
        let role = "arn:aws:iam::222222222222:role/snapwarden-member";
        let refused = Error::AssumeRole {
            role_arn: role.into(),
            external_id: true,
            daemon: Some("arn:aws:iam::111111111111:role/snapwarden".into()),
            code: "AccessDenied".into(),
            message: "not authorized to perform sts:AssumeRole".into(),
        };
        let mut r = in_account(report(0, 0), "data", "us-east-1");
        r.fatal = Some(Problem::of("us-east-1".into(), "describe", &refused));
        let m = digest(&r);
        assert_eq!(
            m.subject,
            "snapwarden FAILED prod/daily data/us-east-1: run failed (assume-role)"
        );
        for line in [
            "- assume-role: snapwarden could not assume this account's role (the problem below names the role ARN \
             and the exact trust-policy fix): only this account's runs fail, the other accounts run on. Fix the \
             member role's trust policy (the principal, the sts:ExternalId condition) or the service control \
             policy that denies sts:AssumeRole; the slot is not retried",
            &format!("- describe data/us-east-1: assume-role cannot assume role {role}: AccessDenied"),
            "with the condition StringEquals sts:ExternalId",
        ] {
            assert!(m.body.contains(line), "{line}\n{}", m.body);
        }
    }
}
