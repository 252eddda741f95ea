//! Failure alerts: one digest per failed or partial run, de-duplicated within a window, a recovery message when
//! an alerting run succeeds again, published to SNS by a background task so a run never waits on SNS. The digest
//! text and the de-dup decision are pure ([`digest`], [`Deduper`]); only [`SnsPublisher`] and the sender task do
//! I/O. Without a topic, alerts are logged and counted only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::report::{RunReport, RunResult};

/// SNS's limit is 256 KiB for the whole message; stay well under it so attributes and encoding fit too.
pub const MAX_BODY_BYTES: usize = 200 * 1024;
pub const MAX_SUBJECT_CHARS: usize = 100;
/// How many problems the human summary lists before it says how many were left out.
const SUMMARY_LINES: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub subject: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
}

fn what_to_do(code: &str) -> &'static str {
    match code {
        "UnauthorizedOperation" | "AccessDenied" => "grant the missing action to snapwarden's IAM role (deploy/iam/policy.json)",
        "RequestLimitExceeded" | "Throttling" => "EC2 throttled the account; the next run retries. Check other tools sharing the API budget",
        "ConcurrentSnapshotLimitExceeded" => "too many pending snapshots on the volume or account; the next run retries",
        "SnapshotCreationPerVolumeRateExceeded" => "another snapshot of the volume was started less than 15 s earlier",
        "InvalidVolume.NotFound" | "IncorrectState" => "the volume was deleted or detached during the run; nothing to do if intended",
        "bad-count-tag" => "fix the tag value: a whole number from 1 to 10000",
        "credentials" | "ExpiredToken" => "snapwarden's AWS credentials are missing or expired; check its role or profile",
        _ => "see the error message; the next run retries",
    }
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
    BTreeMap::from([
        ("policy".to_string(), report.policy.clone()),
        ("schedule".to_string(), report.schedule_label()),
        ("region".to_string(), report.region.clone()),
        ("severity".to_string(), severity.to_string()),
    ])
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
        report.region
    );
    let detail = match &report.fatal {
        Some(p) => format!("run failed ({})", p.code),
        None if failed > 0 => format!("{failed} of {} volumes", report.targeted_volumes),
        None => format!("{} problems", report.problems.len()),
    };
    let mut body = format!(
        "snapwarden run {verdict} for policy {} schedule {} in {} (slot {}, run {}).\n\n\
         Volumes targeted: {}, snapshots created: {}, already present: {}, failed: {}.\n\
         Retention: {} deleted, {} kept, {} kept because they back an AMI{}.\n\n",
        report.policy,
        report.schedule_label(),
        report.region,
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
    );
    body.push_str("What to do:\n");
    for code in report.codes() {
        body.push_str(&format!("- {code}: {}\n", what_to_do(&code)));
    }
    body.push_str("\nProblems:\n");
    let all: Vec<_> = report.fatal.iter().chain(&report.problems).collect();
    for p in all.iter().take(SUMMARY_LINES) {
        body.push_str(&format!(
            "- {} {}: {} {}\n",
            p.operation, p.resource, p.code, p.message
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

pub fn recovery(report: &RunReport) -> Message {
    let scope = format!(
        "{}/{} {}",
        report.policy,
        report.schedule_label(),
        report.region
    );
    Message {
        subject: subject(format!("snapwarden RECOVERED {scope}")),
        body: format!(
            "snapwarden run succeeded again for policy {} schedule {} in {} (slot {}, run {}): {} volumes targeted, \
             {} snapshots created, {} already present.\n",
            report.policy,
            report.schedule_label(),
            report.region,
            crate::schedule::format_slot(report.slot),
            report.run_id,
            report.targeted_volumes,
            report.created,
            report.already_done
        ),
        attributes: attributes(report, "info"),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Send(Message),
    /// The same failure was already sent inside the window.
    Suppressed,
    /// Nothing to say (a success with nothing outstanding, or a dry run).
    Quiet,
}

/// Remembers which (policy, schedules, region) are alerting and with what, so the same failure is sent once per
/// window and a recovery follows the first success.
pub struct Deduper {
    window: Duration,
    alerting: HashMap<AlertKey, Sent>,
}

/// (policy, schedules, region).
type AlertKey = (String, String, String);
/// What was last sent for a key: the verdict, its error codes, and when.
type Sent = (RunResult, Vec<String>, DateTime<Utc>);

impl Deduper {
    pub fn new(window: Duration) -> Self {
        Deduper {
            window,
            alerting: HashMap::new(),
        }
    }

    pub fn decide(&mut self, report: &RunReport, now: DateTime<Utc>) -> Verdict {
        if report.dry_run {
            return Verdict::Quiet;
        }
        let key = (
            report.policy.clone(),
            report.schedule_label(),
            report.region.clone(),
        );
        let result = report.result();
        if result == RunResult::Success {
            return match self.alerting.remove(&key) {
                Some(_) => Verdict::Send(recovery(report)),
                None => Verdict::Quiet,
            };
        }
        let fingerprint = (result, report.codes());
        if let Some((r, codes, at)) = self.alerting.get(&key) {
            let fresh = (now - *at)
                .to_std()
                .map(|age| age < self.window)
                .unwrap_or(true);
            if (*r, codes) == (fingerprint.0, &fingerprint.1) && fresh {
                return Verdict::Suppressed;
            }
        }
        self.alerting
            .insert(key, (fingerprint.0, fingerprint.1, now));
        Verdict::Send(digest(report))
    }
}

#[async_trait]
pub trait Publisher: Send + Sync {
    async fn publish(&self, message: &Message) -> Result<()>;
}

pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    region: String,
}

impl SnsPublisher {
    pub fn new(config: &aws_config::SdkConfig, topic_arn: &str) -> Self {
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        SnsPublisher {
            client: aws_sdk_sns::Client::new(config),
            topic_arn: topic_arn.to_string(),
            region,
        }
    }
}

#[async_trait]
impl Publisher for SnsPublisher {
    async fn publish(&self, message: &Message) -> Result<()> {
        use aws_sdk_sns::types::MessageAttributeValue;
        let mut req = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(&message.subject)
            .message(&message.body);
        for (k, v) in &message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| Error::Other(format!("SNS message attribute {k}: {e}")))?;
            req = req.message_attributes(k, value);
        }
        req.send()
            .await
            .map_err(|e| crate::ec2::sdk::sdk_error("Publish", &self.region, e))?;
        Ok(())
    }
}

/// Hands reports to the sender task without waiting: a full queue drops the report (counted), never the run.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<RunReport>,
}

const QUEUE: usize = 256;

impl Notifier {
    /// Starts the sender task. `publisher: None` logs and counts alerts without sending them.
    pub fn spawn(
        publisher: Option<Arc<dyn Publisher>>,
        window: Duration,
        metrics: Arc<Metrics>,
    ) -> (Notifier, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<RunReport>(QUEUE);
        let task = tokio::spawn(async move {
            let mut dedup = Deduper::new(window);
            while let Some(report) = rx.recv().await {
                let message = match dedup.decide(&report, Utc::now()) {
                    Verdict::Quiet => continue,
                    Verdict::Suppressed => {
                        metrics
                            .notifications
                            .with_label_values(&["deduplicated"])
                            .inc();
                        tracing::info!(policy = %report.policy, schedule = %report.schedule_label(), region = %report.region, "alert suppressed: same failure already sent within the de-dup window");
                        continue;
                    }
                    Verdict::Send(m) => m,
                };
                let Some(publisher) = &publisher else {
                    metrics.notifications.with_label_values(&["disabled"]).inc();
                    tracing::warn!(subject = %message.subject, "alert not sent: no notify.sns.topic-arn configured");
                    continue;
                };
                // Bounded so a hung SNS endpoint cannot stall the queue forever.
                match tokio::time::timeout(Duration::from_secs(30), publisher.publish(&message))
                    .await
                {
                    Ok(Ok(())) => {
                        metrics.notifications.with_label_values(&["sent"]).inc();
                        tracing::info!(subject = %message.subject, "alert sent");
                    }
                    Ok(Err(e)) => {
                        metrics.notifications.with_label_values(&["failed"]).inc();
                        tracing::error!(subject = %message.subject, error = %e, kind = e.kind(), "alert could not be sent");
                    }
                    Err(_) => {
                        metrics.notifications.with_label_values(&["failed"]).inc();
                        tracing::error!(subject = %message.subject, "alert could not be sent: SNS did not answer within 30s");
                    }
                }
            }
        });
        (Notifier { tx }, task)
    }

    pub fn submit(&self, report: RunReport, metrics: &Metrics) {
        if self.tx.try_send(report).is_err() {
            metrics.notifications.with_label_values(&["dropped"]).inc();
            tracing::error!("alert queue full or closed: report dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Problem;

    fn report(failed: usize, targeted: usize) -> RunReport {
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
            r.problems.push(Problem {
                resource: format!("vol-{i:05}"),
                operation: "create",
                code: "IncorrectState".into(),
                message: "volume is detaching".into(),
            });
        }
        r
    }

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
    fn dedup_window_and_recovery() {
        let mut d = Deduper::new(Duration::from_secs(6 * 3600));
        let t = Utc::now();
        let bad = report(1, 10);
        assert!(matches!(d.decide(&bad, t), Verdict::Send(_)));
        assert_eq!(
            d.decide(&bad, t + chrono::Duration::hours(1)),
            Verdict::Suppressed
        );
        // A different failure is news.
        let mut worse = report(10, 10);
        worse.problems[0].code = "UnauthorizedOperation".into();
        assert!(matches!(
            d.decide(&worse, t + chrono::Duration::hours(2)),
            Verdict::Send(_)
        ));
        // The same one again after the window is re-sent.
        assert!(matches!(
            d.decide(&worse, t + chrono::Duration::hours(9)),
            Verdict::Send(_)
        ));
        match d.decide(&report(0, 10), t + chrono::Duration::hours(10)) {
            Verdict::Send(m) => assert!(
                m.subject.starts_with("snapwarden RECOVERED prod/daily"),
                "{}",
                m.subject
            ),
            other => panic!("expected recovery, got {other:?}"),
        }
        assert_eq!(
            d.decide(&report(0, 10), t + chrono::Duration::hours(11)),
            Verdict::Quiet
        );
    }
}
