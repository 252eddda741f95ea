//! Failure alerts: one digest per failed or partial run, de-duplicated within a window, a recovery message when
//! an alerting run succeeds again, published to SNS by a background task so a run never waits on SNS. The digest
//! text, the de-dup decision and the outbox are pure ([`digest`], [`Deduper`], [`Outbox`]); only
//! [`SnsPublisher`] and the sender task do I/O. Without a topic, alerts are logged and counted only.
//!
//! SNS outages: a message SNS refused stays in the [`Outbox`] (in memory, bounded: when full the oldest is dropped
//! and counted) and is retried with exponential backoff and full jitter until it is delivered or superseded — a
//! newer message for the same policy, schedules and region replaces an undelivered older one, since only the
//! latest state is worth reading. A recovery that supersedes an undelivered failure is itself dropped unless an
//! earlier failure of that key was delivered: nobody heard of the failure, so there is nothing to recover from
//! (the failed run is still in the metrics and logs). Messages go out in order; while the first one waits for its
//! retry, the others wait too (SNS is down for all of them). Alerts still queued at shutdown get one last try.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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
        c if crate::error::is_access_denied_code(c) => "grant the missing action to snapwarden's IAM role (deploy/iam/policy.json)",
        "snapshot-error" => "EBS could not complete the snapshot (it was deleted); the next run of the slot makes a new one. If it repeats, check the volume's health",
        "snapshot-pending" => "the snapshot was still pending at daemon.completion-deadline; the next run checks it again. Raise the deadline if first snapshots of big volumes are expected",
        "transport" | "timeout" => "AWS could not be reached in this region (network, DNS, endpoint); the other regions ran. The next run retries",
        "RequestLimitExceeded" | "Throttling" => "EC2 throttled the account; the next run retries. Check other tools sharing the API budget",
        "ConcurrentSnapshotLimitExceeded" => "too many pending snapshots on the volume or account; the next run retries",
        "SnapshotCreationPerVolumeRateExceeded" => "another snapshot of the volume was started less than 15 s earlier",
        "InvalidVolume.NotFound" | "IncorrectState" => "the volume was deleted or detached during the run; nothing to do if intended",
        "bad-count-tag" => "fix the tag value: a whole number from 1 to 10000",
        "future-slot" => "kept and ignored by retention: fix the snapshot's snapwarden:slot tag (or delete it by hand) and check the clock of whatever wrote it",
        "unplaced-copy" => "kept and ignored by retention: tag the copy with snapwarden:source-volume (its source volume id)",
        "credentials" | "ExpiredToken" => "snapwarden's AWS credentials are missing or expired; check its role or profile",
        _ => "see the error message; the next run retries",
    }
}

/// The IAM actions access-denied problems of `code` were refused, from their messages (`CreateSnapshot in
/// us-east-1: UnauthorizedOperation: ...`, the form of `Error::Api`), e.g. `ec2:CreateSnapshot`.
fn missing_actions(report: &RunReport, code: &str) -> Vec<String> {
    let mut actions: Vec<String> = report
        .fatal
        .iter()
        .chain(&report.problems)
        .filter(|p| p.code == code)
        .filter_map(|p| {
            let (operation, rest) = p.message.split_once(' ')?;
            let named = rest.starts_with("in ")
                && !operation.is_empty()
                && operation.chars().all(|c| c.is_ascii_alphabetic());
            named.then(|| crate::error::iam_action(operation))
        })
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
        let actions = missing_actions(report, &code);
        if crate::error::is_access_denied_code(&code) && !actions.is_empty() {
            body.push_str(&format!(
                "- {code}: grant {} to snapwarden's IAM role (deploy/iam/policy.json)\n",
                actions.join(", ")
            ));
        } else {
            body.push_str(&format!("- {code}: {}\n", what_to_do(&code)));
        }
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
            "snapwarden run succeeded again for policy {} schedule {} in {} (slot {}, run {}{}): {} volumes \
             targeted, {} snapshots created, {} already present.\n",
            report.policy,
            report.schedule_label(),
            report.region,
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
/// What was last sent for a key: the verdict, its error codes, when, and for which slot.
type Sent = (RunResult, Vec<String>, DateTime<Utc>, DateTime<Utc>);

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
        if let Some((r, codes, at, slot)) = self.alerting.get(&key) {
            // A retry within the slot fails the way an outage does, often with other codes each time: the
            // operator already has this slot's digest, and hears next from its recovery.
            if report.retry > 0 && *slot == report.slot {
                return Verdict::Suppressed;
            }
            let fresh = (now - *at)
                .to_std()
                .map(|age| age < self.window)
                .unwrap_or(true);
            if (*r, codes) == (fingerprint.0, &fingerprint.1) && fresh {
                return Verdict::Suppressed;
            }
        }
        self.alerting
            .insert(key, (fingerprint.0, fingerprint.1, now, report.slot));
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

/// Alerts SNS has not taken yet, oldest first, at most one per key; see the module doc for the rules. The sender
/// tries a message as soon as it is queued, so only a message SNS refused (or one queued behind it) can be
/// superseded: with SNS healthy, every digest and recovery goes out in order.
pub struct Outbox {
    capacity: usize,
    queue: VecDeque<Queued>,
    /// Keys whose last delivered message was a failure digest: a recovery for them is news.
    alerted: HashSet<AlertKey>,
}

#[derive(Debug, Clone)]
struct Queued {
    key: AlertKey,
    message: Message,
    recovery: bool,
}

/// What [`Outbox::push`] did besides queueing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Undelivered messages replaced by the new one (0 or 1).
    pub superseded: usize,
    /// Oldest messages dropped because the outbox was full.
    pub dropped: usize,
    /// The new message is a recovery from a failure nobody was told about: not queued.
    pub cancelled: bool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            capacity: capacity.max(1),
            queue: VecDeque::new(),
            alerted: HashSet::new(),
        }
    }

    /// Queues `message` for `key` (policy, schedules, region); `recovery` tells a recovery from a digest.
    pub fn push(&mut self, key: AlertKey, message: Message, recovery: bool) -> Pushed {
        let mut out = Pushed::default();
        if let Some(i) = self.queue.iter().position(|q| q.key == key) {
            let old = self.queue.remove(i).expect("index from position");
            out.superseded = 1;
            if recovery && !old.recovery && !self.alerted.contains(&key) {
                out.cancelled = true;
                return out;
            }
        }
        self.queue.push_back(Queued {
            key,
            message,
            recovery,
        });
        while self.queue.len() > self.capacity {
            self.queue.pop_front();
            out.dropped += 1;
        }
        out
    }

    /// The next message to send.
    pub fn front(&self) -> Option<&Message> {
        self.queue.front().map(|q| &q.message)
    }

    /// The front message was delivered.
    pub fn delivered(&mut self) {
        if let Some(q) = self.queue.pop_front() {
            if q.recovery {
                self.alerted.remove(&q.key);
            } else {
                self.alerted.insert(q.key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// How the sender task retries SNS.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Backoff after the first failure; doubles per consecutive failure, with full jitter.
    pub base: Duration,
    pub cap: Duration,
    /// Undelivered alerts kept in memory.
    pub outbox: usize,
    /// One Publish call, SDK retries included.
    pub attempt_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
            outbox: 100,
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// Full jitter: uniform in [0, min(cap, base * 2^(failures - 1))], with a floor so the loop never spins.
    fn backoff(&self, failures: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.cap);
        let floor = Duration::from_millis(10).min(ceiling);
        ceiling.mul_f64(rand::random::<f64>()).max(floor)
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
        Self::spawn_with(publisher, window, metrics, Retry::default())
    }

    /// [`Notifier::spawn`] with explicit retry timings (tests shorten them).
    pub fn spawn_with(
        publisher: Option<Arc<dyn Publisher>>,
        window: Duration,
        metrics: Arc<Metrics>,
        retry: Retry,
    ) -> (Notifier, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<RunReport>(QUEUE);
        let task = tokio::spawn(sender(rx, publisher, window, metrics, retry));
        (Notifier { tx }, task)
    }

    pub fn submit(&self, report: RunReport, metrics: &Metrics) {
        if self.tx.try_send(report).is_err() {
            metrics.notifications.with_label_values(&["dropped"]).inc();
            tracing::error!("alert queue full or closed: report dropped");
        }
    }
}

/// De-duplicates a report and queues its message, if any.
fn accept(
    report: &RunReport,
    dedup: &mut Deduper,
    outbox: &mut Outbox,
    sending: bool,
    metrics: &Metrics,
) {
    let message = match dedup.decide(report, Utc::now()) {
        Verdict::Quiet => return,
        Verdict::Suppressed => {
            metrics
                .notifications
                .with_label_values(&["deduplicated"])
                .inc();
            tracing::info!(policy = %report.policy, schedule = %report.schedule_label(), region = %report.region, "alert suppressed: same failure already sent within the de-dup window");
            return;
        }
        Verdict::Send(m) => m,
    };
    if !sending {
        metrics.notifications.with_label_values(&["disabled"]).inc();
        tracing::warn!(subject = %message.subject, "alert not sent: no notify.sns.topic-arn configured");
        return;
    }
    let key = (
        report.policy.clone(),
        report.schedule_label(),
        report.region.clone(),
    );
    let subject = message.subject.clone();
    let pushed = outbox.push(key, message, report.result() == RunResult::Success);
    if pushed.superseded > 0 {
        metrics
            .notifications
            .with_label_values(&["superseded"])
            .inc_by(pushed.superseded as u64);
        tracing::info!(subject = %subject, cancelled = pushed.cancelled, "undelivered alert superseded by a newer one");
    }
    if pushed.dropped > 0 {
        metrics
            .notifications
            .with_label_values(&["dropped"])
            .inc_by(pushed.dropped as u64);
        tracing::error!(
            dropped = pushed.dropped,
            "alert outbox full: oldest undelivered alerts dropped"
        );
    }
}

async fn sender(
    mut rx: mpsc::Receiver<RunReport>,
    publisher: Option<Arc<dyn Publisher>>,
    window: Duration,
    metrics: Arc<Metrics>,
    retry: Retry,
) {
    let mut dedup = Deduper::new(window);
    let mut outbox = Outbox::new(retry.outbox);
    let sending = publisher.is_some();
    let mut failures = 0u32;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let waiting = retry_at.is_some_and(|t| t > tokio::time::Instant::now());
        if outbox.is_empty() || waiting {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(report) => accept(&report, &mut dedup, &mut outbox, sending, &metrics),
                    None => break,
                },
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if waiting => {}
            }
            continue;
        }
        let (Some(publisher), Some(message)) = (&publisher, outbox.front()) else {
            continue;
        };
        if attempt(publisher.as_ref(), message, &retry, &metrics).await {
            outbox.delivered();
            failures = 0;
            retry_at = None;
        } else {
            failures += 1;
            let wait = retry.backoff(failures);
            tracing::warn!(
                queued = outbox.len(),
                failures,
                retry_in_seconds = wait.as_secs_f64(),
                "SNS refused the alert; it stays queued"
            );
            retry_at = Some(tokio::time::Instant::now() + wait);
        }
    }
    // Shutting down: one last try for what is queued, in order, stopping at the first failure.
    if let Some(publisher) = &publisher {
        while let Some(message) = outbox.front() {
            if !attempt(publisher.as_ref(), message, &retry, &metrics).await {
                tracing::error!(lost = outbox.len(), "alerts not delivered before shutdown");
                break;
            }
            outbox.delivered();
        }
    }
}

/// One Publish; true when SNS took the message.
async fn attempt(
    publisher: &dyn Publisher,
    message: &Message,
    retry: &Retry,
    metrics: &Metrics,
) -> bool {
    // Bounded so a hung SNS endpoint cannot stall the queue forever.
    match tokio::time::timeout(retry.attempt_timeout, publisher.publish(message)).await {
        Ok(Ok(())) => {
            metrics.notifications.with_label_values(&["sent"]).inc();
            tracing::info!(subject = %message.subject, "alert sent");
            true
        }
        Ok(Err(e)) => {
            metrics.notifications.with_label_values(&["failed"]).inc();
            tracing::error!(subject = %message.subject, error = %e, kind = e.kind(), "alert could not be sent");
            false
        }
        Err(_) => {
            metrics.notifications.with_label_values(&["failed"]).inc();
            tracing::error!(subject = %message.subject, timeout_seconds = retry.attempt_timeout.as_secs_f64(), "alert could not be sent: SNS did not answer in time");
            false
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
    fn set_aside_snapshots_get_a_digest_line_with_what_to_do() {
        let mut r = report(0, 2);
        for code in ["future-slot", "unplaced-copy"] {
            r.problems.push(Problem {
                resource: "us-east-1".into(),
                operation: "retention",
                code: code.into(),
                message: format!("policy prod: {code} found"),
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

    fn msg(subject: &str) -> Message {
        Message {
            subject: subject.into(),
            body: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    fn key(schedule: &str) -> AlertKey {
        ("prod".into(), schedule.into(), "us-east-1".into())
    }

    #[test]
    fn outbox_supersedes_per_key_and_drops_the_oldest_when_full() {
        let mut o = Outbox::new(2);
        assert_eq!(o.push(key("a"), msg("a1"), false), Pushed::default());
        assert_eq!(o.push(key("b"), msg("b1"), false), Pushed::default());
        // A newer failure of `a` replaces the undelivered one and goes to the back.
        let p = o.push(key("a"), msg("a2"), false);
        assert_eq!((p.superseded, p.dropped, p.cancelled), (1, 0, false));
        assert_eq!(o.front().unwrap().subject, "b1");
        // Full: the oldest (b1) goes.
        let p = o.push(key("c"), msg("c1"), false);
        assert_eq!((p.superseded, p.dropped), (0, 1));
        assert_eq!(o.len(), 2);
        assert_eq!(o.front().unwrap().subject, "a2");
    }

    #[test]
    fn outbox_recovery_of_an_unheard_failure_is_not_sent() {
        let mut o = Outbox::new(10);
        o.push(key("a"), msg("fail"), false);
        let p = o.push(key("a"), msg("recovered"), true);
        assert!(p.cancelled && p.superseded == 1, "{p:?}");
        assert!(o.is_empty());
        // Once a failure was delivered, a recovery replacing a later undelivered failure is sent.
        o.push(key("a"), msg("fail"), false);
        o.delivered();
        o.push(key("a"), msg("fail again"), false);
        let p = o.push(key("a"), msg("recovered"), true);
        assert!(!p.cancelled && p.superseded == 1, "{p:?}");
        assert_eq!(o.front().unwrap().subject, "recovered");
        o.delivered();
        // After the recovery went out, the key is quiet again.
        o.push(key("a"), msg("fail 3"), false);
        assert!(o.push(key("a"), msg("recovered"), true).cancelled);
    }

    #[test]
    fn access_denied_digest_names_the_missing_action() {
        let mut r = report(0, 2);
        r.problems.push(Problem {
            resource: "vol-1".into(),
            operation: "create",
            code: "UnauthorizedOperation".into(),
            message: "CreateSnapshot in us-east-1: UnauthorizedOperation: no (grant ec2:CreateSnapshot ...)".into(),
        });
        r.fatal = Some(Problem {
            resource: "us-east-1".into(),
            operation: "describe",
            code: "UnauthorizedOperation".into(),
            message: "DescribeVolumes in us-east-1: UnauthorizedOperation: no".into(),
        });
        let m = digest(&r);
        assert!(
            m.body.contains("- UnauthorizedOperation: grant ec2:CreateSnapshot, ec2:DescribeVolumes to snapwarden's IAM role"),
            "{}",
            m.body
        );
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let r = Retry {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            ..Retry::default()
        };
        for failures in 1..40 {
            let b = r.backoff(failures);
            assert!(
                b <= Duration::from_millis(400) && b >= Duration::from_millis(10),
                "{b:?}"
            );
        }
        assert!(r.backoff(1) <= Duration::from_millis(100));
    }

    #[test]
    fn a_retry_of_the_same_slot_sends_no_second_digest_and_its_success_recovers() {
        let mut d = Deduper::new(Duration::ZERO);
        let t = Utc::now();
        let first = report(1, 10);
        assert!(matches!(d.decide(&first, t), Verdict::Send(_)));
        // The retry fails differently (the outage moved on from throttling to transport errors).
        let mut retry = report(10, 10);
        retry.retry = 1;
        retry.problems[0].code = "ServiceUnavailable".into();
        assert_eq!(d.decide(&retry, t), Verdict::Suppressed);
        retry.retry = 2;
        assert_eq!(
            d.decide(&retry, t + chrono::Duration::minutes(3)),
            Verdict::Suppressed
        );
        // The next slot's failure is news again, even as a retry.
        let mut next = report(10, 10);
        next.slot += chrono::Duration::days(1);
        next.retry = 1;
        assert!(matches!(d.decide(&next, t), Verdict::Send(_)));
        let mut ok = report(0, 10);
        ok.slot = next.slot;
        ok.retry = 2;
        match d.decide(&ok, t) {
            Verdict::Send(m) => assert!(
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
