//! The sender task: takes run reports from a bounded channel (a run never waits on it), de-duplicates them,
//! queues their alerts in the outbox and publishes them in order, retrying with backoff; one last try at shutdown.
//! The clock, tokio and the publisher live here; the decisions are in the pure modules beside it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

use super::dedup::{alert_key, AlertAction, Deduper};
use super::message::Message;
use super::outbox::{Delivery, Outbox};
use super::sns::Publisher;
use crate::metrics::Metrics;
use crate::report::{RunReport, RunResult};

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
        Self::spawn_with(publisher, window, metrics, Delivery::default())
    }

    /// [`Notifier::spawn`] with explicit retry timings (tests shorten them).
    pub fn spawn_with(
        publisher: Option<Arc<dyn Publisher>>,
        window: Duration,
        metrics: Arc<Metrics>,
        delivery: Delivery,
    ) -> (Notifier, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<RunReport>(QUEUE);
        let task = tokio::spawn(sender(rx, publisher, window, metrics, delivery));
        (Notifier { tx }, task)
    }

    pub fn submit(&self, report: RunReport, metrics: &Metrics) {
        if self.tx.try_send(report).is_err() {
            metrics.notified("dropped", 1);
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
        AlertAction::Quiet => return,
        AlertAction::Suppressed => {
            metrics.notified("deduplicated", 1);
            tracing::info!(policy = %report.policy, schedule = %report.schedule_label(), region = %report.region, "alert suppressed: same failure already sent within the de-dup window");
            return;
        }
        AlertAction::Send(m) => m,
    };
    if !sending {
        metrics.notified("disabled", 1);
        tracing::warn!(subject = %message.subject, "alert not sent: no notify.sns.topic-arn configured");
        return;
    }
    let key = alert_key(report);
    let subject = message.subject.clone();
    let pushed = outbox.push(key, message, report.result() == RunResult::Success);
    if pushed.superseded > 0 {
        metrics.notified("superseded", pushed.superseded as u64);
        tracing::info!(subject = %subject, cancelled = pushed.cancelled, "undelivered alert superseded by a newer one");
    }
    if pushed.dropped > 0 {
        metrics.notified("dropped", pushed.dropped as u64);
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
    delivery: Delivery,
) {
    let mut dedup = Deduper::new(window);
    let mut outbox = Outbox::new(delivery.outbox);
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
        if attempt(publisher.as_ref(), message, &delivery, &metrics).await {
            outbox.delivered();
            failures = 0;
            retry_at = None;
        } else {
            failures += 1;
            let wait = delivery.backoff(failures);
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
            if !attempt(publisher.as_ref(), message, &delivery, &metrics).await {
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
    delivery: &Delivery,
    metrics: &Metrics,
) -> bool {
    // Bounded so a hung SNS endpoint cannot stall the queue forever.
    match tokio::time::timeout(delivery.attempt_timeout, publisher.publish(message)).await {
        Ok(Ok(())) => {
            metrics.notified("sent", 1);
            tracing::info!(subject = %message.subject, "alert sent");
            true
        }
        Ok(Err(e)) => {
            metrics.notified("failed", 1);
            tracing::error!(subject = %message.subject, error = %e, kind = e.kind(), "alert could not be sent");
            false
        }
        Err(_) => {
            metrics.notified("failed", 1);
            tracing::error!(subject = %message.subject, timeout_seconds = delivery.attempt_timeout.as_secs_f64(), "alert could not be sent: SNS did not answer in time");
            false
        }
    }
}
