//! A stand-in for the SSM agents of the instances, as an HTTP/1.1 proxy in front of moto on 127.0.0.1. moto's SSM
//! records `SendCommand` but runs nothing (every invocation `Success` at once, no snapshot appears) and answers
//! `ListCommandInvocations` with HTTP 500; this proxy plays the instances' side. Everything that is not SSM (EC2,
//! SNS, STS: the query protocol) and every SSM action it does not own (`ListCommands`, `DescribeInstanceInformation`)
//! goes to moto unchanged, so `ListCommands` shows the request exactly as the SDK sent it — with one correction:
//! moto lists every instance of the region under a command sent by `InstanceIds` (it reads the absent `Targets` as
//! a filter that matches everything), so the stand-in puts back the instance ids the command named, as SSM lists
//! them (and applies `ListCommands`' `InstanceId` to those). For SSM (JSON protocol,
//! `X-Amz-Target: AmazonSSM.<Action>`) it owns three actions:
//! - `SendCommand`: forwarded to moto (which gives the command id), then recorded with its document, parameters and
//!   instance ids, one invocation per instance, each following the first [`Rule`] that matches it. Like SSM, it
//!   refuses the whole command with `InvalidInstanceId` when one of its instances is not managed (no agent
//!   registered: [`SsmAgent::set_unmanaged`]);
//! - `ListCommandInvocations` and `GetCommandInvocation`: answered from those invocations. Every poll that covers an
//!   invocation advances it along its [`Reply`]: missing (`InvocationDoesNotExist`) for the first polls, then
//!   `InProgress`, then its [`End`].
//!
//! An invocation's work starts when it reaches its end (right after `SendCommand` is answered when its reply has no
//! missing or in-progress polls, else at the poll that uses them up, or when the test calls [`SsmAgent::finish`]),
//! runs apart from the requests, beside the other instances' work, as it would on the instance, and a poll that answers the end waits for it, so
//! `Success` is only ever seen once the snapshots exist. A reply can instead start its work as soon as the command is
//! delivered ([`Reply::creating`]: the snapshots exist while the invocation still says `InProgress`, as a real VSS
//! run's do before it reports), and can be held `InProgress` until the test releases it ([`Reply::held`],
//! [`SsmAgent::release`]): an agent still busy while the daemon is killed and restarted.
//!
//! For `AWSEC2-CreateVssSnapshot` ending in success: one snapshot per attached volume in moto (through moto's EC2
//! API, as the instance's own role would), tagged with the document's `tags` parameter plus the `Device`,
//! `AppConsistent` and `AwsVssConfig` tags the document adds itself, the boot volume (the one on the instance's root
//! device) left out when `ExcludeBootVolume` is `True`. Like the real document, it fails the invocation (exit code
//! 1, output saying why) when `tags` cannot be parsed or names one of those three reserved keys. Other documents run
//! nothing: the record of who was sent what (with its comment), and when, is their effect.
//!
//! What it does not model it refuses loudly rather than answer wrongly: `SendCommand` by `Targets`,
//! `ListCommandInvocations` with `Filters`. SSM throttling comes from the fault proxy put in front of it (it answers
//! JSON-protocol requests with JSON errors).
//!
//! Status texts follow the SSM API reference: `Status` is one of the SDK's `CommandInvocationStatus` values and
//! `StatusDetails` says more (`Undeliverable` is a detail of `Failed`; `ExecutionTimedOut` of `TimedOut`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::fault_proxy::{forward, header, read_request, Request};

/// The document whose successful run creates snapshots.
pub const VSS_DOCUMENT: &str = "AWSEC2-CreateVssSnapshot";
/// The tags `AWSEC2-CreateVssSnapshot` writes itself; naming one in its `tags` parameter fails the run.
pub const VSS_RESERVED_TAGS: [&str; 3] = ["Device", "AppConsistent", "AwsVssConfig"];
/// The value of the `AwsVssConfig` tag on the stand-in's snapshots (the real one carries the AwsVssComponents
/// version and the options used).
pub const VSS_CONFIG_TAG: &str = "AwsVssComponents stand-in";
/// `ListCommandInvocations` cuts a plugin's output here (`GetCommandInvocation` at 24,000).
const LIST_OUTPUT_LIMIT: usize = 2500;
const GET_OUTPUT_LIMIT: usize = 24_000;

/// How an invocation ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Success,
    /// The document ran and exited non-zero, printing `output`.
    Failed {
        exit_code: i32,
        output: String,
    },
    /// The document ran past its execution timeout.
    TimedOut,
    /// The command never reached the instance (agent stopped, instance not managed by SSM).
    Undeliverable,
}

/// What an invocation answers, poll by poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Polls answered as if the invocation did not exist yet (SSM is eventually consistent after `SendCommand`).
    pub missing_polls: usize,
    /// Polls after those answered `InProgress`.
    pub in_progress_polls: usize,
    /// `InProgress` (after its missing polls) until [`SsmAgent::release`] or [`SsmAgent::finish`], whatever the
    /// count of in-progress polls.
    pub held: bool,
    /// The work starts when the command is delivered, not when the invocation reaches its end.
    pub creating: bool,
    pub end: End,
}

impl Reply {
    pub fn ends(end: End) -> Reply {
        Reply {
            missing_polls: 0,
            in_progress_polls: 0,
            held: false,
            creating: false,
            end,
        }
    }

    pub fn success() -> Reply {
        Reply::ends(End::Success)
    }

    pub fn failed(exit_code: i32, output: &str) -> Reply {
        Reply::ends(End::Failed {
            exit_code,
            output: output.to_string(),
        })
    }

    pub fn missing(mut self, polls: usize) -> Reply {
        self.missing_polls = polls;
        self
    }

    pub fn in_progress(mut self, polls: usize) -> Reply {
        self.in_progress_polls = polls;
        self
    }

    pub fn held(mut self) -> Reply {
        self.held = true;
        self
    }

    pub fn creating(mut self) -> Reply {
        self.creating = true;
        self
    }
}

/// Which invocations a reply is for: the first rule whose document and instances match, until it has been used
/// `times` times. An invocation no rule matches succeeds at once.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `None`: any document.
    pub document: Option<String>,
    /// Empty: any instance.
    pub instances: Vec<String>,
    /// `None`: no limit.
    pub times: Option<usize>,
    pub reply: Reply,
}

impl Rule {
    pub fn any(reply: Reply) -> Rule {
        Rule {
            document: None,
            instances: Vec::new(),
            times: None,
            reply,
        }
    }

    pub fn instance(id: &str, reply: Reply) -> Rule {
        Rule::any(reply).on(&[id])
    }

    pub fn on(mut self, instances: &[&str]) -> Rule {
        self.instances = instances.iter().map(|i| i.to_string()).collect();
        self
    }

    pub fn document(mut self, name: &str) -> Rule {
        self.document = Some(name.to_string());
        self
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    fn matches(&self, document: &str, instance: &str) -> bool {
        self.document.as_deref().is_none_or(|d| d == document)
            && (self.instances.is_empty() || self.instances.iter().any(|i| i == instance))
    }
}

/// A command as the stand-in received it (and moto numbered it).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub document: String,
    pub comment: String,
    pub parameters: BTreeMap<String, Vec<String>>,
    /// In the order sent.
    pub instance_ids: Vec<String>,
    pub timeout_seconds: Option<i64>,
    pub at: Instant,
}

impl Command {
    /// The first value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.parameters.get(name)?.first().map(String::as_str)
    }
}

/// One SSM request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    /// `SendCommand`, `ListCommandInvocations`, …
    pub action: String,
}

struct Invocation {
    command: String,
    instance: String,
    document: String,
    comment: String,
    parameters: BTreeMap<String, Vec<String>>,
    requested: f64,
    reply: Reply,
    polls: usize,
    /// Held `InProgress` until released (from the reply).
    held: bool,
    /// Has reached its end: polls answer it from now on.
    ended: bool,
    /// The work under way: its result arrives here.
    running: Option<mpsc::Receiver<Result<Vec<String>, String>>>,
    /// Set once the invocation has reached its end and done its work: how it ended after all (a VSS run with bad
    /// tags fails whatever its rule said) and the snapshots it created.
    outcome: Option<(End, Vec<String>)>,
}

enum Answer {
    Missing,
    InProgress,
    Ended(End),
}

struct State {
    rules: Vec<Rule>,
    /// Invocations each rule has been used for.
    used: Vec<usize>,
    /// Instances without a registered agent.
    unmanaged: Vec<String>,
    commands: Vec<Command>,
    invocations: Vec<Invocation>,
    hits: Vec<Hit>,
}

/// A VSS run for the EC2 worker: (instance, parameters) and where to send the snapshot ids or the failure output.
type Job = (
    String,
    BTreeMap<String, Vec<String>>,
    mpsc::Sender<Result<Vec<String>, String>>,
);

pub struct SsmAgent {
    pub port: u16,
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    jobs: mpsc::Sender<Job>,
    stop: Arc<AtomicBool>,
}

impl SsmAgent {
    /// Starts the stand-in in front of moto on `upstream`, with no rules (every invocation succeeds at once).
    pub fn start(upstream: u16) -> SsmAgent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SSM agent stand-in");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            rules: Vec::new(),
            used: Vec::new(),
            unmanaged: Vec::new(),
            commands: Vec::new(),
            invocations: Vec::new(),
            hits: Vec::new(),
        }));
        let jobs = ec2_worker(upstream);
        let stop = Arc::new(AtomicBool::new(false));
        let (st, halt, tx) = (state.clone(), stop.clone(), jobs.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (st, tx) = (st.clone(), tx.clone());
                std::thread::spawn(move || serve(client, upstream, &st, &tx));
            }
        });
        SsmAgent {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
            jobs,
            stop,
        }
    }

    /// Replaces the rules (and their use counts); commands already sent keep the replies they were given.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        let mut st = self.state.lock().unwrap();
        st.used = vec![0; rules.len()];
        st.rules = rules;
    }

    /// Marks instances as not managed by SSM (agent stopped or never registered): a command naming one of them is
    /// refused as a whole, as SSM refuses it.
    pub fn set_unmanaged(&self, instances: &[&str]) {
        self.state.lock().unwrap().unmanaged = instances.iter().map(|i| i.to_string()).collect();
    }

    /// The commands received, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.state.lock().unwrap().commands.clone()
    }

    /// The commands of `document` received, in order.
    pub fn commands_of(&self, document: &str) -> Vec<Command> {
        self.commands()
            .into_iter()
            .filter(|c| c.document == document)
            .collect()
    }

    /// The snapshots the invocation of `command` on `instance` created (waiting for its work if under way; empty
    /// while it has not reached its end).
    pub fn snapshots(&self, command: &str, instance: &str) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        let Some(inv) = st
            .invocations
            .iter_mut()
            .find(|i| i.command == command && i.instance == instance)
        else {
            return Vec::new();
        };
        collect(inv);
        inv.outcome
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// The SSM requests seen, in order.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// How many SSM requests of `action` arrived.
    pub fn count(&self, action: &str) -> usize {
        self.hits().iter().filter(|h| h.action == action).count()
    }

    /// Lets every invocation reach its end now, as the instances would while nobody polls (a daemon killed after
    /// `SendCommand`): their snapshots are created, and later polls answer the end.
    pub fn finish(&self) {
        let mut st = self.state.lock().unwrap();
        for inv in st.invocations.iter_mut() {
            inv.held = false;
            inv.polls = inv
                .polls
                .max(inv.reply.missing_polls + inv.reply.in_progress_polls);
            settle(inv, &self.jobs);
        }
        st.invocations.iter_mut().for_each(collect);
    }

    /// Releases the held invocations of `document`: each then reaches its end at its next poll (once its
    /// in-progress polls are used up), as an agent that has finished its work reports it when asked.
    pub fn release(&self, document: &str) {
        let mut st = self.state.lock().unwrap();
        for inv in st.invocations.iter_mut().filter(|i| i.document == document) {
            inv.held = false;
        }
    }

    /// How many times the invocations of `command` have been polled, in all.
    pub fn polls(&self, command: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.invocations
            .iter()
            .filter(|i| i.command == command)
            .map(|i| i.polls)
            .sum()
    }

    /// How many invocations of `document` have been polled so far (`ListCommandInvocations` or
    /// `GetCommandInvocation` covering them), in all.
    pub fn polls_of(&self, document: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.invocations
            .iter()
            .filter(|i| i.document == document)
            .map(|i| i.polls)
            .sum()
    }
}

impl Drop for SsmAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A thread of its own runs the EC2 calls of VSS runs, on a runtime that lives and dies there: the stand-in is
/// used from async tests, where a runtime may be neither entered again nor dropped. The runs go side by side, as
/// on many instances at once. It stops when the last sender (the agent and its connections) is gone.
fn ec2_worker(upstream: u16) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the SSM stand-in's runtime");
        let ec2 = rt.block_on(async {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(super::REGION))
                .endpoint_url(format!("http://127.0.0.1:{upstream}"))
                .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                    "testing",
                    "testing",
                    None,
                    None,
                    "ssm-agent",
                ))
                .load()
                .await;
            aws_sdk_ec2::Client::new(&config)
        });
        for (instance, params, reply) in rx {
            let ec2 = ec2.clone();
            rt.spawn(async move {
                let _ = reply.send(vss_run(&ec2, &instance, &params).await);
            });
        }
    });
    tx
}

/// What `AWSEC2-CreateVssSnapshot` does on `instance`: one snapshot per attached volume (the boot volume left out
/// when asked), tagged with the `tags` parameter and the document's own three tags. Err: the run's output.
async fn vss_run(
    ec2: &aws_sdk_ec2::Client,
    instance: &str,
    params: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, String> {
    use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
    let first = |name: &str| params.get(name).and_then(|v| v.first()).map(String::as_str);
    let mut tags = parse_tags(first("tags").unwrap_or(""))?;
    if let Some((k, _)) = tags
        .iter()
        .find(|(k, _)| VSS_RESERVED_TAGS.contains(&k.as_str()))
    {
        return Err(format!(
            "The tag key {k} is reserved for AWS VSS snapshots; remove it from the tags parameter"
        ));
    }
    let exclude_boot = first("ExcludeBootVolume").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let description = first("description").unwrap_or("AWSEC2-CreateVssSnapshot (stand-in)");

    let described = ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
        .map_err(|e| format!("DescribeInstances {instance}: {e:?}"))?;
    let root = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.root_device_name())
        .ok_or_else(|| format!("instance {instance} not found"))?
        .to_string();
    let volumes = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(instance)
                .build(),
        )
        .send()
        .await
        .map_err(|e| format!("DescribeVolumes {instance}: {e:?}"))?;
    let mut attached: Vec<(String, String)> = volumes
        .volumes()
        .iter()
        .filter_map(|v| {
            let device = v
                .attachments()
                .iter()
                .find(|a| a.instance_id() == Some(instance))?
                .device()?;
            Some((device.to_string(), v.volume_id()?.to_string()))
        })
        .collect();
    attached.sort();

    tags.push(("AppConsistent".into(), "true".into()));
    tags.push(("AwsVssConfig".into(), VSS_CONFIG_TAG.into()));
    let mut created = Vec::new();
    for (device, volume) in attached {
        if exclude_boot && device == root {
            continue;
        }
        let mut all: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        all.push(Tag::builder().key("Device").value(&device).build());
        let out = ec2
            .create_snapshot()
            .volume_id(&volume)
            .description(description)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(all))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("CreateSnapshot {volume}: {e:?}"))?;
        created.push(out.snapshot_id().unwrap_or_default().to_string());
    }
    Ok(created)
}

/// The document's tag syntax, `Key=a,Value=b;Key=c,Value=d` (an empty text is no tags).
pub fn parse_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(';')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (k, v) = t
                .trim()
                .strip_prefix("Key=")
                .and_then(|rest| rest.split_once(",Value="))
                .ok_or_else(|| format!("tags: `{t}` is not Key=<key>,Value=<value>"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Ends the invocation once it is not held and has used up its missing and in-progress polls (a run that does
/// nothing ends at once), starting its work if that has not started yet.
fn settle(inv: &mut Invocation, jobs: &mpsc::Sender<Job>) {
    if inv.ended || inv.held || inv.polls < inv.reply.missing_polls + inv.reply.in_progress_polls {
        return;
    }
    inv.ended = true;
    start(inv, jobs);
}

/// Starts the invocation's work: a VSS run that is to succeed snapshots the volumes on the EC2 worker; anything
/// else has nothing to do and knows its outcome at once.
fn start(inv: &mut Invocation, jobs: &mpsc::Sender<Job>) {
    if inv.outcome.is_some() || inv.running.is_some() {
        return;
    }
    if inv.reply.end == End::Success && inv.document == VSS_DOCUMENT {
        let (tx, rx) = mpsc::channel();
        jobs.send((inv.instance.clone(), inv.parameters.clone(), tx))
            .expect("the stand-in's EC2 worker runs");
        inv.running = Some(rx);
    } else {
        inv.outcome = Some((inv.reply.end.clone(), Vec::new()));
    }
}

/// Waits for the invocation's work, if under way, and records how it ended.
fn collect(inv: &mut Invocation) {
    let Some(rx) = inv.running.take() else { return };
    inv.outcome = Some(
        match rx.recv().expect("the stand-in's EC2 worker answers") {
            Ok(snapshots) => (End::Success, snapshots),
            Err(output) => (
                End::Failed {
                    exit_code: 1,
                    output,
                },
                Vec::new(),
            ),
        },
    );
}

/// One poll of `inv`: what it answers now.
fn poll(inv: &mut Invocation, jobs: &mpsc::Sender<Job>) -> Answer {
    inv.polls += 1;
    let r = &inv.reply;
    if !inv.ended && inv.polls <= r.missing_polls {
        return Answer::Missing;
    }
    if !inv.ended && (inv.held || inv.polls <= r.missing_polls + r.in_progress_polls) {
        return Answer::InProgress;
    }
    settle(inv, jobs);
    collect(inv);
    Answer::Ended(inv.outcome.as_ref().unwrap().0.clone())
}

/// (Status, StatusDetails, ResponseCode, output) of an answer.
fn status_of(answer: &Answer) -> (&'static str, &'static str, i64, String) {
    match answer {
        Answer::Missing | Answer::InProgress => ("InProgress", "InProgress", -1, String::new()),
        Answer::Ended(End::Success) => ("Success", "Success", 0, String::new()),
        Answer::Ended(End::Failed { exit_code, output }) => {
            ("Failed", "Failed", i64::from(*exit_code), output.clone())
        }
        Answer::Ended(End::TimedOut) => ("TimedOut", "ExecutionTimedOut", -1, String::new()),
        Answer::Ended(End::Undeliverable) => ("Failed", "Undeliverable", -1, String::new()),
    }
}

/// The document's step name, as a plugin's `Name` (a guess for the VSS document; one step either way).
fn plugin_name(document: &str) -> &'static str {
    if document == VSS_DOCUMENT {
        "CreateVssSnapshot"
    } else {
        "aws:runShellScript"
    }
}

fn cut(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}

fn list_entry(inv: &Invocation, answer: &Answer, details: bool) -> Value {
    let (status, status_details, code, output) = status_of(answer);
    let mut entry = json!({
        "CommandId": inv.command,
        "InstanceId": inv.instance,
        "InstanceName": "",
        "Comment": inv.comment,
        "DocumentName": inv.document,
        "DocumentVersion": "$DEFAULT",
        "RequestedDateTime": inv.requested,
        "Status": status,
        "StatusDetails": status_details,
        "StandardOutputUrl": "",
        "StandardErrorUrl": "",
        "ServiceRole": "",
        "CommandPlugins": [],
    });
    if details {
        entry["CommandPlugins"] = json!([{
            "Name": plugin_name(&inv.document),
            "Status": status,
            "StatusDetails": status_details,
            "ResponseCode": code,
            "ResponseStartDateTime": inv.requested,
            "Output": cut(&output, LIST_OUTPUT_LIMIT),
            "StandardOutputUrl": "",
            "StandardErrorUrl": "",
            "OutputS3Region": super::REGION,
            "OutputS3BucketName": "",
            "OutputS3KeyPrefix": "",
        }]);
    }
    entry
}

fn json_response(status: u16, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: \
         00000000-0000-4000-8000-000000000000\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// SSM's JSON error: the code in `__type`, HTTP 400.
fn json_error(code: &str, message: &str) -> Vec<u8> {
    json_response(400, &json!({ "__type": code, "message": message }))
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn send_command(
    req: &Request,
    body: &Value,
    upstream: u16,
    state: &Mutex<State>,
    jobs: &mpsc::Sender<Job>,
) -> Option<Vec<u8>> {
    if body
        .get("Targets")
        .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()))
    {
        // Loud rather than wrong: a command by tag targets would run on no instance here.
        return Some(json_error(
            "ValidationException",
            "the SSM agent stand-in models InstanceIds only, not Targets",
        ));
    }
    let instance_ids: Vec<String> = body
        .get("InstanceIds")
        .cloned()
        .and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default();
    let unmanaged: Vec<&str> = {
        let st = state.lock().unwrap();
        instance_ids
            .iter()
            .filter(|i| st.unmanaged.contains(i))
            .map(String::as_str)
            .collect()
    };
    if !unmanaged.is_empty() {
        // SSM's own words for an instance whose agent is not registered or not running.
        return Some(json_error(
            "InvalidInstanceId",
            &format!(
                "Instances [[{}]] not in a valid state for account {}",
                unmanaged.join(", "),
                super::ACCOUNT
            ),
        ));
    }
    let answer = forward(req, upstream, &[])?;
    let text = String::from_utf8_lossy(&answer);
    let moto: Option<Value> = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok());
    let Some(id) = moto
        .as_ref()
        .and_then(|m| m.pointer("/Command/CommandId"))
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        // moto refused it: the client sees moto's answer, and nothing runs.
        return Some(answer);
    };
    let document = str_field(body, "DocumentName")
        .unwrap_or_default()
        .to_string();
    let parameters: BTreeMap<String, Vec<String>> = body
        .get("Parameters")
        .cloned()
        .and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default();
    let comment = str_field(body, "Comment").unwrap_or_default().to_string();
    let requested = now_epoch();
    let mut st = state.lock().unwrap();
    st.commands.push(Command {
        id: id.clone(),
        document: document.clone(),
        comment: comment.clone(),
        parameters: parameters.clone(),
        instance_ids: instance_ids.clone(),
        timeout_seconds: body.get("TimeoutSeconds").and_then(Value::as_i64),
        at: Instant::now(),
    });
    for instance in instance_ids {
        let st = &mut *st;
        let rule = (0..st.rules.len()).find(|&k| {
            let r = &st.rules[k];
            r.matches(&document, &instance) && r.times.is_none_or(|n| st.used[k] < n)
        });
        let reply = match rule {
            Some(k) => {
                st.used[k] += 1;
                st.rules[k].reply.clone()
            }
            None => Reply::success(),
        };
        let mut inv = Invocation {
            command: id.clone(),
            instance,
            document: document.clone(),
            comment: comment.clone(),
            parameters: parameters.clone(),
            requested,
            held: reply.held,
            reply,
            polls: 0,
            ended: false,
            running: None,
            outcome: None,
        };
        if inv.reply.creating {
            start(&mut inv, jobs);
        }
        settle(&mut inv, jobs);
        st.invocations.push(inv);
    }
    Some(answer)
}

/// One call is one poll of every invocation it covers (its command and instance), whichever page it returns: the
/// daemon's commands have at most 50 instances, one page at the default `MaxResults`.
fn list_command_invocations(
    body: &Value,
    state: &Mutex<State>,
    jobs: &mpsc::Sender<Job>,
) -> Vec<u8> {
    if body
        .get("Filters")
        .is_some_and(|f| f.as_array().is_some_and(|a| !a.is_empty()))
    {
        // Loud rather than wrong: an unfiltered answer to a filtered question would mislead the caller.
        return json_error(
            "InvalidFilterKey",
            "the SSM agent stand-in does not model Filters",
        );
    }
    let command = str_field(body, "CommandId");
    let instance = str_field(body, "InstanceId");
    let details = body
        .get("Details")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max = body.get("MaxResults").and_then(Value::as_u64).unwrap_or(50) as usize;
    let from: usize = str_field(body, "NextToken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut st = state.lock().unwrap();
    let mut visible = Vec::new();
    for inv in st.invocations.iter_mut().filter(|i| {
        command.is_none_or(|c| c == i.command) && instance.is_none_or(|n| n == i.instance)
    }) {
        let answer = poll(inv, jobs);
        if !matches!(answer, Answer::Missing) {
            visible.push(list_entry(inv, &answer, details));
        }
    }
    let page: Vec<Value> = visible.iter().skip(from).take(max).cloned().collect();
    let mut out = json!({ "CommandInvocations": page });
    if from + max < visible.len() {
        out["NextToken"] = json!((from + max).to_string());
    }
    json_response(200, &out)
}

fn get_command_invocation(body: &Value, state: &Mutex<State>, jobs: &mpsc::Sender<Job>) -> Vec<u8> {
    let command = str_field(body, "CommandId").unwrap_or_default();
    let instance = str_field(body, "InstanceId").unwrap_or_default();
    let mut st = state.lock().unwrap();
    let Some(inv) = st
        .invocations
        .iter_mut()
        .find(|i| i.command == command && i.instance == instance)
    else {
        return json_error("InvocationDoesNotExist", "");
    };
    let answer = poll(inv, jobs);
    if matches!(answer, Answer::Missing) {
        return json_error("InvocationDoesNotExist", "");
    }
    let (status, status_details, code, output) = status_of(&answer);
    json_response(
        200,
        &json!({
            "CommandId": inv.command,
            "InstanceId": inv.instance,
            "Comment": inv.comment,
            "DocumentName": inv.document,
            "DocumentVersion": "$DEFAULT",
            "PluginName": plugin_name(&inv.document),
            "ResponseCode": code,
            "ExecutionStartDateTime": "",
            "ExecutionElapsedTime": "",
            "ExecutionEndDateTime": "",
            "Status": status,
            "StatusDetails": status_details,
            "StandardOutputContent": cut(&output, GET_OUTPUT_LIMIT),
            "StandardOutputUrl": "",
            "StandardErrorContent": "",
            "StandardErrorUrl": "",
            "CloudWatchOutputConfig": { "CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false },
        }),
    )
}

/// moto's `ListCommands`, with each command's instance ids the ones it was sent to (see the module comment).
fn list_commands(
    req: &Request,
    body: &Value,
    upstream: u16,
    state: &Mutex<State>,
) -> Option<Vec<u8>> {
    let answer = forward(req, upstream, &[])?;
    let text = String::from_utf8_lossy(&answer);
    let Some(mut listed) = text
        .split_once("\r\n\r\n")
        .filter(|(head, _)| head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
        .and_then(|(_, b)| serde_json::from_str::<Value>(b).ok())
    else {
        return Some(answer);
    };
    let st = state.lock().unwrap();
    let sent_to = |id: &str| {
        st.commands
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.instance_ids.clone())
    };
    let instance = str_field(body, "InstanceId");
    if let Some(commands) = listed.get_mut("Commands").and_then(Value::as_array_mut) {
        for c in commands.iter_mut() {
            let Some(ids) = str_field(c, "CommandId").and_then(sent_to) else {
                continue;
            };
            c["TargetCount"] = json!(ids.len());
            c["InstanceIds"] = json!(ids);
        }
        commands.retain(|c| {
            instance.is_none_or(|i| {
                c["InstanceIds"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|x| x == i))
            })
        });
    }
    Some(json_response(200, &listed))
}

fn serve(client: TcpStream, upstream: u16, state: &Mutex<State>, jobs: &mpsc::Sender<Job>) {
    let mut writer = client.try_clone().expect("clone client socket");
    let mut reader = BufReader::new(client);
    while let Some(req) = read_request(&mut reader) {
        let action = header(&req.head, "x-amz-target")
            .and_then(|t| t.strip_prefix("AmazonSSM."))
            .map(str::to_string);
        if let Some(a) = &action {
            state.lock().unwrap().hits.push(Hit {
                at: Instant::now(),
                action: a.clone(),
            });
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let response = match action.as_deref() {
            Some("SendCommand") => send_command(&req, &body, upstream, state, jobs),
            Some("ListCommandInvocations") => Some(list_command_invocations(&body, state, jobs)),
            Some("GetCommandInvocation") => Some(get_command_invocation(&body, state, jobs)),
            Some("ListCommands") => list_commands(&req, &body, upstream, state),
            _ => forward(&req, upstream, &[]),
        };
        let Some(response) = response else { return };
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}
