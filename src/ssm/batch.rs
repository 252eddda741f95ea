//! Running one document on many instances and waiting for every instance's outcome: SendCommand in batches of
//! [`MAX_INSTANCES`], then one ListCommandInvocations per command per poll round (it covers the command's
//! instances) until each invocation is final or its wait is over. An invocation SSM does not list yet is waited
//! for (the API is eventually consistent right after SendCommand) until the same deadline.
//!
//! Commands an earlier process sent for the same purpose (same comment; see [`Sent`]) are awaited instead of sent
//! again: a daemon killed after SendCommand must not freeze or snapshot an instance twice when it restarts. An
//! instance whose earlier command failed is sent a new one; one whose own command failed is sent again while
//! `retries` last. The caller decides what the outcomes mean; this module only runs and waits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::{Command, Invocation, Sent, Ssm, Status, MAX_INSTANCES};
use crate::ec2::op::Code;
use crate::error::Error;

/// How often a command's invocations are listed while some are not final: every `first` at first, doubling up
/// to `max` (a freeze should be seen done within a second or two; a VSS snapshot takes minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polling {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Polling {
    fn default() -> Self {
        Polling {
            first: Duration::from_secs(1),
            max: Duration::from_secs(5),
        }
    }
}

/// One document to run on many instances.
#[derive(Debug, Clone)]
pub struct Request {
    pub document: String,
    pub parameters: BTreeMap<String, Vec<String>>,
    /// How long an instance's invocation is waited for after its command was sent (or, for an earlier process's
    /// command, after the run found it), delivery included. Also SendCommand's delivery timeout (at least 30 s).
    pub wait: Duration,
    /// Says what the command is for (policy, slot, stage); commands SSM already has with this comment are
    /// awaited rather than sent again.
    pub comment: String,
    /// How many more times an instance whose invocation of this run's command failed is sent it.
    pub retries: u32,
    pub polling: Polling,
    /// Which invocations of an earlier process's command (same comment) stand for this run's.
    pub adopt: Adopt,
}

/// What a run takes over from a command an earlier process sent for the same purpose, instead of sending its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopt {
    /// Nothing: every run sends its own (a post script: thawing twice is harmless, not thawing is not).
    Never,
    /// Invocations still running: a second one would overlap them (two freezes). One that is over is history —
    /// a pre script that succeeded minutes ago holds nothing still now.
    Running,
    /// Invocations still running, and ones that succeeded: their work stands (a VSS command's snapshots).
    RunningOrSucceeded,
}

/// How one instance's invocation ended, as far as the run knows.
#[derive(Debug, Clone)]
pub enum Ran {
    /// The invocation as last listed: final, or still running when its wait was over.
    Seen(Invocation),
    /// SSM never listed an invocation for the instance within the wait.
    Unseen,
    /// The SendCommand naming the instance failed.
    NotSent(Error),
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        matches!(self, Ran::Seen(i) if i.status == Status::Success)
    }

    /// Whether the document may have started on the instance: everything but a command never sent or never
    /// delivered. A post script is owed wherever a pre script may have run.
    pub fn may_have_run(&self) -> bool {
        match self {
            Ran::Seen(i) => !matches!(i.status, Status::Undeliverable),
            Ran::Unseen => true,
            Ran::NotSent(_) => false,
        }
    }

    /// A bounded label (metrics): the invocation's status, `timed-out` for one still running at the end of the
    /// wait, `unseen`, `not-sent`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Ran::Seen(i) if !i.status.is_final() => "timed-out",
            Ran::Seen(i) => i.status.as_str(),
            Ran::Unseen => "unseen",
            Ran::NotSent(_) => "not-sent",
        }
    }

    /// Whether another send could change the outcome: a script that failed or timed out on the instance. Not a
    /// delivery failure (no agent: it will not be there a second later), nor an invocation still running (a
    /// second one would overlap it).
    fn worth_retrying(&self) -> bool {
        matches!(self, Ran::Seen(i) if matches!(i.status, Status::Failed | Status::TimedOut | Status::Cancelled))
    }
}

/// An instance's outcome and when the run learnt it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ran: Ran,
    pub at: Instant,
}

/// A command being waited for.
struct Tracked {
    id: String,
    instances: Vec<String>,
    deadline: Instant,
    /// Sent by an earlier process: a failure there is not one of this run's tries.
    earlier: bool,
}

/// Runs `request` on `instances` and returns every instance's outcome. `earlier`: the commands SSM already has
/// of the document (ListCommands); those with the request's comment are awaited for the instances they name.
pub async fn run_on(
    ssm: &dyn Ssm,
    request: &Request,
    instances: &[String],
    earlier: &[Sent],
) -> BTreeMap<String, Outcome> {
    let mut out: BTreeMap<String, Outcome> = BTreeMap::new();
    let adopted = adopt(ssm, request, instances, earlier).await;
    let covered: HashSet<&str> = adopted
        .iter()
        .flat_map(|t| t.instances.iter().map(String::as_str))
        .collect();
    let mut todo: Vec<String> = instances
        .iter()
        .filter(|i| !covered.contains(i.as_str()))
        .cloned()
        .collect();
    drop(covered);
    let mut adopted = adopted;
    let mut tries_left = request.retries;
    let mut first = true;
    loop {
        let mut tracked = if first {
            std::mem::take(&mut adopted)
        } else {
            Vec::new()
        };
        first = false;
        tracked.extend(send_all(ssm, request, &todo, &mut out).await);
        if tracked.is_empty() {
            return out;
        }
        let earlier_ids: Vec<bool> = tracked.iter().map(|t| t.earlier).collect();
        let seen = wait_all(ssm, request.polling, &tracked).await;
        todo.clear();
        let mut retrying = false;
        for (t, earlier) in tracked.iter().zip(earlier_ids) {
            for i in &t.instances {
                let o = seen.get(i).cloned().unwrap_or(Outcome {
                    ran: Ran::Unseen,
                    at: Instant::now(),
                });
                // An earlier process's command that failed: this run sends its own.
                let again = (earlier && !o.ran.succeeded() && o.ran.is_final_failure())
                    || (!earlier && tries_left > 0 && o.ran.worth_retrying());
                if again {
                    retrying |= !earlier;
                    tracing::warn!(instance = %i, document = %request.document, outcome = o.ran.outcome(), "sending the command again");
                    todo.push(i.clone());
                } else {
                    out.insert(i.clone(), o);
                }
            }
        }
        if retrying {
            tries_left -= 1;
        }
        if todo.is_empty() {
            return out;
        }
    }
}

/// Why an invocation did not succeed, in words an operator acts on, with a bounded code for digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub code: &'static str,
    pub message: String,
}

/// What the AWS VSS document says when the AwsVssComponents package is missing (its output names the package).
const VSS_COMPONENTS: &str = "AwsVssComponents";

impl Ran {
    /// Why `document` did not succeed on the instance (`wait`: how long the run waited for it).
    pub fn cause(&self, document: &str, wait: Duration) -> Cause {
        let waited = humantime::format_duration(wait);
        let not_managed = || {
            Cause {
            code: "not-managed",
            message: format!(
                "{document} was not delivered: the SSM agent is not running or the instance is not managed by SSM \
                 (check that the agent runs and that the instance profile has AmazonSSMManagedInstanceCore)"
            ),
        }
        };
        match self {
            Ran::NotSent(e) if e.kind() == "not-managed" => not_managed(),
            Ran::NotSent(e) => Cause {
                code: "send-failed",
                message: format!("{document} could not be sent: {e}"),
            },
            Ran::Unseen => Cause {
                code: "timed-out",
                message: format!(
                    "SSM listed no invocation of {document} within {waited}: the agent may be offline"
                ),
            },
            Ran::Seen(i) => match &i.status {
                Status::Undeliverable | Status::Terminated => not_managed(),
                s if !s.is_final() || *s == Status::TimedOut => Cause {
                    code: "timed-out",
                    message: format!("{document} did not finish within {waited}"),
                },
                _ if i.output.contains(VSS_COMPONENTS) => Cause {
                    code: "vss-components-missing",
                    message: format!(
                        "{document} failed: the {VSS_COMPONENTS} package is missing or broken on the instance (install \
                         it with AWS-ConfigureAWSPackage, name {VSS_COMPONENTS}); output: {}",
                        i.output
                    ),
                },
                Status::Success => Cause {
                    code: "success",
                    message: format!("{document} succeeded"),
                },
                _ => Cause {
                    code: "script-failed",
                    message: match i.exit_code {
                        Some(code) => format!("{document} exited with code {code}: {}", i.output),
                        None => format!("{document} ended {}: {}", i.status.as_str(), i.output),
                    },
                },
            },
        }
    }

    /// Over and not a success: what an earlier process's command leaves this run to do again.
    fn is_final_failure(&self) -> bool {
        match self {
            Ran::Seen(i) => i.status.is_final() && i.status != Status::Success,
            Ran::Unseen | Ran::NotSent(_) => true,
        }
    }
}

/// The earlier process's commands (same comment, newest first) this run waits for, per [`Request::adopt`]: one
/// ListCommandInvocations each tells which of their invocations are still running or succeeded. One that cannot
/// be read is waited for: sending again could do the work twice.
async fn adopt(
    ssm: &dyn Ssm,
    request: &Request,
    instances: &[String],
    earlier: &[Sent],
) -> Vec<Tracked> {
    if request.adopt == Adopt::Never {
        return Vec::new();
    }
    let mut mine: Vec<&Sent> = earlier
        .iter()
        .filter(|c| c.comment == request.comment)
        .collect();
    mine.sort_by(|a, b| (b.requested, &b.id).cmp(&(a.requested, &a.id)));
    let mut seen: HashSet<&str> = HashSet::new();
    let mut adopted = Vec::new();
    for c in mine {
        // Only an instance's newest command of the purpose counts.
        let wanted: Vec<String> = c
            .instance_ids
            .iter()
            .filter(|i| instances.contains(i) && seen.insert(i.as_str()))
            .cloned()
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let status: HashMap<String, Status> = match ssm.list_command_invocations(&c.id).await {
            Ok(listed) => listed
                .into_iter()
                .map(|i| (i.instance_id, i.status))
                .collect(),
            Err(e) => {
                tracing::warn!(command = %c.id, error = %e, kind = e.kind(), "could not read an earlier command; waiting for it");
                HashMap::new()
            }
        };
        let take: Vec<String> = wanted
            .into_iter()
            .filter(|i| match status.get(i) {
                None => true,
                Some(s) if !s.is_final() => true,
                Some(Status::Success) => request.adopt == Adopt::RunningOrSucceeded,
                Some(_) => false,
            })
            .collect();
        if take.is_empty() {
            continue;
        }
        tracing::info!(command = %c.id, instances = take.len(), document = %request.document, "awaiting a command an earlier run sent");
        adopted.push(Tracked {
            id: c.id.clone(),
            instances: take,
            deadline: Instant::now() + request.wait,
            earlier: true,
        });
    }
    adopted
}

/// SendCommand to `instances` in batches of [`MAX_INSTANCES`], all at once (the SSM bucket paces them). A batch
/// whose send failed is an outcome for each of its instances, in `out` — except that SSM refuses a whole command
/// for the instances it does not manage (`InvalidInstanceId`) and names them: those fail, and the rest of the batch
/// is sent again without them, so one instance without an agent does not cost its 49 neighbours their command.
async fn send_all(
    ssm: &dyn Ssm,
    request: &Request,
    instances: &[String],
    out: &mut BTreeMap<String, Outcome>,
) -> Vec<Tracked> {
    let mut batches: Vec<Vec<String>> = instances
        .chunks(MAX_INSTANCES)
        .map(<[String]>::to_vec)
        .collect();
    let mut tracked = Vec::new();
    while !batches.is_empty() {
        let sends = batches.iter().map(|batch| async move {
            let command = Command {
                document: request.document.clone(),
                instance_ids: batch.clone(),
                parameters: request.parameters.clone(),
                timeout: request.wait.max(Duration::from_secs(30)),
                comment: request.comment.clone(),
            };
            let sent = ssm.send_command(&command).await;
            (batch, sent, Instant::now())
        });
        let mut again = Vec::new();
        for (batch, sent, at) in join_all(sends).await {
            match sent {
                Ok(id) => tracked.push(Tracked {
                    id,
                    instances: batch.clone(),
                    deadline: at + request.wait,
                    earlier: false,
                }),
                Err(e) => {
                    let refused = refused(&e, batch);
                    let (failed, rest): (Vec<&String>, Vec<&String>) = if refused.is_empty() {
                        (batch.iter().collect(), Vec::new())
                    } else {
                        batch.iter().partition(|i| refused.contains(i.as_str()))
                    };
                    tracing::error!(document = %request.document, instances = failed.len(), sent_again = rest.len(), error = %e, kind = e.kind(), "SendCommand failed");
                    for i in failed {
                        let ran = Ran::NotSent(e.clone());
                        out.insert(i.clone(), Outcome { ran, at });
                    }
                    if !rest.is_empty() {
                        again.push(rest.into_iter().cloned().collect());
                    }
                }
            }
        }
        batches = again;
    }
    tracked
}

/// The instances of `batch` an `InvalidInstanceId` refusal names (SSM: "Instances [[i-0abc, i-0def]] not in a
/// valid state for account …"); empty for any other error, or one that names none of them.
fn refused<'a>(e: &Error, batch: &'a [String]) -> std::collections::HashSet<&'a str> {
    if !e.is(Code::InvalidInstance) {
        return Default::default();
    }
    let text = e.to_string();
    let named: std::collections::HashSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .collect();
    batch
        .iter()
        .map(String::as_str)
        .filter(|i| named.contains(i))
        .collect()
}

/// Polls every command in `tracked` until each of its instances' invocations is final or the command's deadline
/// has passed: one ListCommandInvocations per unfinished command per round. A failed poll is not an outcome: the
/// next round asks again, until the deadline.
async fn wait_all(
    ssm: &dyn Ssm,
    polling: Polling,
    tracked: &[Tracked],
) -> HashMap<String, Outcome> {
    let mut seen: HashMap<String, Outcome> = HashMap::new();
    let mut last: HashMap<String, Invocation> = HashMap::new();
    let mut interval = polling.first;
    loop {
        let now = Instant::now();
        let open: Vec<&Tracked> = tracked
            .iter()
            .filter(|t| now < t.deadline && t.instances.iter().any(|i| !seen.contains_key(i)))
            .collect();
        // What a command past its deadline left unfinished ends as last listed (or unseen).
        for t in tracked.iter().filter(|t| now >= t.deadline) {
            for i in &t.instances {
                seen.entry(i.clone()).or_insert_with(|| Outcome {
                    ran: last.get(i).cloned().map_or(Ran::Unseen, Ran::Seen),
                    at: now,
                });
            }
        }
        if open.is_empty() {
            return seen;
        }
        let polls = open
            .iter()
            .map(|t| async move { (t, ssm.list_command_invocations(&t.id).await) });
        for (t, listed) in join_all(polls).await {
            let at = Instant::now();
            match listed {
                Ok(invocations) => {
                    for inv in invocations {
                        if !t.instances.contains(&inv.instance_id) {
                            continue;
                        }
                        if inv.status.is_final() {
                            seen.entry(inv.instance_id.clone()).or_insert(Outcome {
                                ran: Ran::Seen(inv),
                                at,
                            });
                        } else {
                            last.insert(inv.instance_id.clone(), inv);
                        }
                    }
                }
                // Right after SendCommand SSM may not know the command yet; the deadline bounds the wait.
                Err(e) => {
                    tracing::debug!(command = %t.id, error = %e, kind = e.kind(), "ListCommandInvocations failed; asking again")
                }
            }
        }
        let next = tracked
            .iter()
            .filter(|t| t.instances.iter().any(|i| !seen.contains_key(i)))
            .map(|t| t.deadline)
            .min();
        let Some(next) = next else { return seen };
        let now = Instant::now();
        tokio::time::sleep(interval.min(next.saturating_duration_since(now))).await;
        interval = (interval * 2).min(polling.max.max(polling.first));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::op::Op;

    fn seen(status: Status, exit_code: Option<i32>, output: &str) -> Ran {
        Ran::Seen(Invocation {
            instance_id: "i-1".into(),
            status,
            output: output.into(),
            exit_code,
        })
    }

    #[test]
    fn causes_say_what_to_fix() {
        let wait = Duration::from_secs(60);
        let cause = |r: &Ran| r.cause("snapwarden-fsfreeze", wait);
        let undelivered = cause(&seen(Status::Undeliverable, None, ""));
        assert_eq!(undelivered.code, "not-managed");
        assert!(undelivered.message.contains("AmazonSSMManagedInstanceCore"));
        let refused = Error::api(Op::SendCommand, "r", "InvalidInstanceId", "not managed");
        assert_eq!(cause(&Ran::NotSent(refused)).code, "not-managed");
        let slow = cause(&seen(Status::InProgress, None, ""));
        assert_eq!(
            (slow.code, slow.message.contains("1m")),
            ("timed-out", true)
        );
        assert_eq!(cause(&seen(Status::TimedOut, None, "")).code, "timed-out");
        assert_eq!(cause(&Ran::Unseen).code, "timed-out");
        let failed = cause(&seen(Status::Failed, Some(3), "cannot freeze /data: busy"));
        assert_eq!(failed.code, "script-failed");
        assert!(
            failed
                .message
                .contains("exited with code 3: cannot freeze /data: busy"),
            "{failed:?}"
        );
        let vss = seen(
            Status::Failed,
            Some(1),
            "AwsVssComponents package is not installed",
        );
        assert_eq!(cause(&vss).code, "vss-components-missing");
    }

    #[test]
    fn a_refusal_names_the_unmanaged_instances_of_the_batch() {
        let batch: Vec<String> = ["i-0aaa", "i-0bbb", "i-0aaa1"]
            .iter()
            .map(|i| i.to_string())
            .collect();
        let refusal =
            |message: &str| Error::api(Op::SendCommand, "r", "InvalidInstanceId", message);
        let named = refused(
            &refusal("Instances [[i-0aaa, i-0ccc]] not in a valid state for account 123456789012"),
            &batch,
        );
        assert_eq!(named, ["i-0aaa"].into_iter().collect());
        assert!(refused(&refusal("null"), &batch).is_empty());
        let other = Error::api(
            Op::SendCommand,
            "r",
            "ThrottlingException",
            "Instances [[i-0aaa]]",
        );
        assert!(refused(&other, &batch).is_empty());
    }

    #[test]
    fn only_a_script_failure_is_worth_another_send() {
        assert!(seen(Status::Failed, Some(1), "").worth_retrying());
        assert!(seen(Status::TimedOut, None, "").worth_retrying());
        assert!(!seen(Status::Undeliverable, None, "").worth_retrying());
        assert!(!seen(Status::InProgress, None, "").worth_retrying());
        assert!(!Ran::Unseen.worth_retrying());
        assert!(!seen(Status::Undeliverable, None, "").may_have_run());
        assert!(seen(Status::Failed, Some(1), "").may_have_run());
        assert_eq!(seen(Status::InProgress, None, "").outcome(), "timed-out");
    }
}
