//! What snapwarden needs from SSM Run Command, as a small trait over plain types: send a document to at most 50
//! instances ([`Ssm::send_command`]) and read every instance's outcome of that command with one paginated
//! ListCommandInvocations ([`Ssm::list_command_invocations`]; GetCommandInvocation per instance would not scale).
//! Backends: [`sdk::SdkSsm`] (aws-sdk-ssm) and [`fake::FakeSsm`] (in memory); [`PacedSsm`] paces and retries
//! their calls in SSM's own bucket ([`Group::Ssm`](crate::ec2::pace::Group::Ssm)), apart from EC2's. The
//! operations and error codes are part of the AWS vocabulary in [`crate::ec2::op`].
//!
//! [`batch`] runs one document on many instances and waits for their outcomes; the run's app-consistency phase
//! (`worker::app`) decides what to run where and what the outcomes mean.

pub mod batch;
pub mod fake;
pub mod sdk;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::ec2::op::Op;
use crate::ec2::pace::{PaceConfig, Pacer};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Most instances one SendCommand may name (SSM's limit): a caller with more sends several commands.
pub const MAX_INSTANCES: usize = 50;
/// SendCommand's `TimeoutSeconds` range: how long SSM tries to deliver the command before it gives up.
const TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 30..=2_592_000;
/// How much of an invocation's output is kept: enough for an operator to see why a script failed, small enough
/// for a digest line (SSM itself returns up to 2,500 characters per plugin here).
const OUTPUT_LINES: usize = 10;
const OUTPUT_CHARS: usize = 1_000;

/// One SendCommand: `document` (a name or an ARN) run on `instance_ids` with `parameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub document: String,
    pub instance_ids: Vec<String>,
    /// SSM's parameter map: each parameter takes a list of strings.
    pub parameters: BTreeMap<String, Vec<String>>,
    /// How long SSM tries to deliver the command (TimeoutSeconds); how long the document may run is one of its
    /// own parameters (`executionTimeout`).
    pub timeout: Duration,
    /// Shown next to the command in the SSM console; SSM keeps the first 100 characters.
    pub comment: String,
}

impl Command {
    /// Refuses what SSM would refuse, before a request is spent on it: more than [`MAX_INSTANCES`] instances (the
    /// caller batches), none, or a delivery timeout outside SSM's range.
    pub(crate) fn check(&self) -> Result<()> {
        let n = self.instance_ids.len();
        let problem = if n > MAX_INSTANCES {
            format!("{n} instances; SSM takes at most {MAX_INSTANCES} per command, send them in batches")
        } else if n == 0 {
            "no instances".to_string()
        } else if !TIMEOUT_SECONDS.contains(&self.timeout.as_secs()) {
            format!(
                "delivery timeout {}s; SSM takes {} to {} seconds",
                self.timeout.as_secs(),
                TIMEOUT_SECONDS.start(),
                TIMEOUT_SECONDS.end()
            )
        } else {
            return Ok(());
        };
        Err(Error::Other(format!(
            "SendCommand of document `{}` not sent: {problem}",
            self.document
        )))
    }
}

/// Where one instance's invocation of a command stands. SSM reports `Undeliverable` and `Terminated` only in the
/// invocation's status details (its status then says `Failed`); they are kept apart because their cause is the
/// instance (no agent, not managed, stopped), not the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pending,
    InProgress,
    Delayed,
    Success,
    Cancelled,
    TimedOut,
    Failed,
    Cancelling,
    Undeliverable,
    Terminated,
    /// A status this version does not know, as SSM sent it.
    Other(String),
}

impl Status {
    /// From an invocation's `Status` and `StatusDetails`, as ListCommandInvocations spells them.
    pub(crate) fn parse(status: &str, details: &str) -> Status {
        match details {
            "Undeliverable" => return Status::Undeliverable,
            "Terminated" => return Status::Terminated,
            _ => {}
        }
        match status {
            "Pending" => Status::Pending,
            "InProgress" => Status::InProgress,
            "Delayed" => Status::Delayed,
            "Success" => Status::Success,
            "Cancelled" => Status::Cancelled,
            "TimedOut" => Status::TimedOut,
            "Failed" => Status::Failed,
            "Cancelling" => Status::Cancelling,
            other => Status::Other(other.to_string()),
        }
    }

    /// Whether the invocation is over. An unknown status is not: the caller's own deadline ends the wait.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Status::Success
                | Status::Cancelled
                | Status::TimedOut
                | Status::Failed
                | Status::Undeliverable
                | Status::Terminated
        )
    }

    /// A bounded label (metrics, logs): an unknown status is `other`, never SSM's text.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in-progress",
            Status::Delayed => "delayed",
            Status::Success => "success",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed-out",
            Status::Failed => "failed",
            Status::Cancelling => "cancelling",
            Status::Undeliverable => "undeliverable",
            Status::Terminated => "terminated",
            Status::Other(_) => "other",
        }
    }
}

/// One instance's invocation of a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub instance_id: String,
    pub status: Status,
    /// The first lines of the output, bounded ([`excerpt`]).
    pub output: String,
    /// The script's exit code, once it ran.
    pub exit_code: Option<i32>,
}

/// The exit code and output excerpt of an invocation from its plugins' `(ResponseCode, Output)`: the first plugin
/// that ended non-zero (the step an operator must look at), else the last. SSM says -1 for a plugin that has not
/// run.
pub(crate) fn outcome(plugins: &[(i32, &str)]) -> (Option<i32>, String) {
    let chosen = plugins
        .iter()
        .find(|(code, _)| *code != 0 && *code != -1)
        .or(plugins.last());
    match chosen {
        Some(&(code, output)) => ((code != -1).then_some(code), excerpt(output)),
        None => (None, String::new()),
    }
}

/// The first [`OUTPUT_LINES`] non-blank-led lines of `output`, at most [`OUTPUT_CHARS`] characters, `…` when cut.
pub(crate) fn excerpt(output: &str) -> String {
    let output = output.trim();
    let mut lines = output.lines();
    let mut out = lines
        .by_ref()
        .take(OUTPUT_LINES)
        .collect::<Vec<_>>()
        .join("\n");
    let mut cut = lines.next().is_some();
    if let Some((at, _)) = out.char_indices().nth(OUTPUT_CHARS) {
        out.truncate(at);
        cut = true;
    }
    if cut {
        out.push('…');
    }
    out
}

/// A command SSM already has, as ListCommands shows it: what a run looks for before it sends, so a restart after a
/// crash waits for the command an earlier process sent instead of running it twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub id: String,
    pub document: String,
    pub instance_ids: Vec<String>,
    pub comment: String,
    /// When SSM received it: what orders a slot's pre and post commands.
    pub requested: chrono::DateTime<chrono::Utc>,
}

/// The SSM Run Command calls snapwarden makes, one region per value. A new method is also forwarded by
/// [`PacedSsm`].
#[async_trait]
pub trait Ssm: Send + Sync {
    fn region(&self) -> &str;
    /// Sends `command` ([`Command::check`] first) and returns its command id. Not retried after an answer that
    /// was lost: SendCommand has no client token, and a command run twice may freeze twice or snapshot twice.
    async fn send_command(&self, command: &Command) -> Result<String>;
    /// Every instance's invocation of `command_id` that SSM shows yet, all pages. Right after SendCommand the list
    /// may lack instances, or SSM may answer `InvocationDoesNotExist` (eventually consistent): the caller polls
    /// again within its own tolerance.
    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>>;
    /// The commands of `document` sent since `after`, all pages (SSM keeps them 30 days).
    async fn list_commands(
        &self,
        document: &str,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Sent>>;
}

/// Counts every attempt in `snapwarden_aws_requests_total`, like EC2's `ec2::Instrumented`. Below [`PacedSsm`],
/// so each retry is counted.
pub struct Instrumented {
    inner: Arc<dyn Ssm>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Ssm>, metrics: Arc<Metrics>) -> Self {
        Instrumented { inner, metrics }
    }

    fn count<T>(&self, op: Op, result: Result<T>) -> Result<T> {
        self.metrics.aws_request(op, result.as_ref().err());
        result
    }
}

#[async_trait]
impl Ssm for Instrumented {
    fn region(&self) -> &str {
        self.inner.region()
    }
    async fn send_command(&self, command: &Command) -> Result<String> {
        let r = self.inner.send_command(command).await;
        self.count(Op::SendCommand, r)
    }
    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        let r = self.inner.list_command_invocations(command_id).await;
        self.count(Op::ListCommandInvocations, r)
    }
    async fn list_commands(
        &self,
        document: &str,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Sent>> {
        let r = self.inner.list_commands(document, after).await;
        self.count(Op::ListCommands, r)
    }
}

/// Paces and retries SSM calls in their own bucket, with [`crate::ec2::pace::Paced`]'s rules: throttling is
/// retried with backoff, a server error or lost answer only for ListCommandInvocations (see
/// [`Op::repeat_may_duplicate`]). One per region, shared by all runs.
pub struct PacedSsm {
    inner: Arc<dyn Ssm>,
    pacer: Pacer,
}

impl PacedSsm {
    pub fn new(inner: Arc<dyn Ssm>, config: PaceConfig) -> Self {
        PacedSsm {
            inner,
            pacer: Pacer::new(config),
        }
    }
}

#[async_trait]
impl Ssm for PacedSsm {
    fn region(&self) -> &str {
        self.inner.region()
    }
    async fn send_command(&self, command: &Command) -> Result<String> {
        // A command SSM would refuse spends no token.
        command.check()?;
        self.pacer
            .call(Op::SendCommand, &[], || self.inner.send_command(command))
            .await
    }
    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        self.pacer
            .call(Op::ListCommandInvocations, &[], || {
                self.inner.list_command_invocations(command_id)
            })
            .await
    }
    async fn list_commands(
        &self,
        document: &str,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Sent>> {
        self.pacer
            .call(Op::ListCommands, &[], || {
                self.inner.list_commands(document, after)
            })
            .await
    }
}

#[cfg(test)]
mod tests;
