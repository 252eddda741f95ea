//! The app-consistency phase over the in-memory backends: `FakeEc2`, and `FakeSsm` behind a small agent that
//! does what the real one does on the instance (the VSS document creates the instance's snapshots with the tags
//! it was given) and notes the order of events, so "post after the snapshot" is asserted, not assumed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::VSS_DOCUMENT;
use crate::config::{Consistency, OnFailure, Policy, Script, Scripts, Vss};
use crate::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use crate::ec2::op::Op;
use crate::ec2::{self, Ec2, Snapshot};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::report::RunResult;
use crate::retention::SnapState;
use crate::schedule::format_slot;
use crate::ssm::batch::Polling;
use crate::ssm::fake::{FakeAgent, Step};
use crate::ssm::{Command, Invocation, Sent, Ssm, Status};
use crate::worker::{self, Outcome, RunSpec};

const REGION: &str = "r-1";
const PRE: &str = "snapwarden-fsfreeze";
const POST: &str = "snapwarden-thaw";

fn slot() -> DateTime<Utc> {
    "2026-03-02T04:30:00Z".parse().unwrap()
}

fn base_policy() -> Policy {
    let toml = r#"
[[policy]]
name = "app"
target = { resource = "instance", tags = { Backup = "app" } }
schedule = [{ name = "daily", cron = "30 4 * * *", keep = { last = 7 } }]
"#;
    let config = crate::config::from_toml_str(std::path::Path::new("app.toml"), toml, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    config.policies[0].clone()
}

fn vss(on_failure: OnFailure) -> Policy {
    let mut p = base_policy();
    p.consistency = Consistency::Vss;
    p.vss = Some(Vss {
        exclude_boot_volume: false,
        copy_only: true,
        no_writers: false,
        timeout: Duration::from_secs(2),
        on_failure,
    });
    p
}

fn script(document: &str) -> Script {
    Script {
        document: document.into(),
        parameters: BTreeMap::from([("MountPoints".to_string(), vec!["/data".to_string()])]),
        timeout: Duration::from_secs(2),
        retries: 0,
    }
}

fn scripts(on_failure: OnFailure) -> Policy {
    let mut p = base_policy();
    p.scripts = Some(Scripts {
        pre: script(PRE),
        post: Some(script(POST)),
        on_failure,
    });
    p
}

/// [`FakeAgent`] (the VSS document's side on the instance), noting each command in order with the number of
/// snapshots there when it was sent.
struct Agent {
    fake: FakeAgent,
    ec2: Arc<FakeEc2>,
    log: Mutex<Vec<String>>,
}

impl Agent {
    fn new(ec2: Arc<FakeEc2>) -> Self {
        Agent {
            fake: FakeAgent::new(ec2.clone()),
            ec2,
            log: Mutex::default(),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl Ssm for Agent {
    fn region(&self) -> &str {
        REGION
    }
    async fn send_command(&self, command: &Command) -> Result<String> {
        let snapshots = self.ec2.snapshots().len();
        self.log.lock().unwrap().push(format!(
            "{} {} (snapshots: {snapshots})",
            command.document,
            command.instance_ids.len()
        ));
        self.fake.send_command(command).await
    }
    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        self.fake.list_command_invocations(command_id).await
    }
    async fn list_commands(&self, document: &str, after: DateTime<Utc>) -> Result<Vec<Sent>> {
        self.fake.list_commands(document, after).await
    }
}

fn polling() -> Polling {
    Polling {
        first: Duration::from_millis(20),
        max: Duration::from_millis(50),
    }
}

async fn run(policy: &Policy, ec2: &FakeEc2, agent: &Agent, metrics: &Metrics) -> Outcome {
    let spec = RunSpec::new(policy, slot(), FAKE_ACCOUNT).ssm(agent, polling());
    worker::run(ec2, &spec, metrics, slot).await
}

fn fleet(instances: usize) -> (Arc<FakeEc2>, Vec<String>) {
    let ec2 = Arc::new(FakeEc2::new(REGION));
    let ids = (0..instances)
        .map(|_| {
            ec2.add_instance(
                &[("Backup", "app")],
                &[("/dev/sda1", "gp3"), ("/dev/sdf", "gp3")],
            )
            .0
        })
        .collect();
    (ec2, ids)
}

fn assert_success(o: &Outcome) {
    assert_eq!(
        o.report.result(),
        RunResult::Success,
        "{:?}",
        o.report.problems
    );
}

fn tag<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.tags.get(key).map(String::as_str)
}

fn codes(o: &Outcome) -> Vec<(String, &'static str, String)> {
    o.report
        .problems
        .iter()
        .map(|p| (p.resource.clone(), p.operation, p.code.clone()))
        .collect()
}

#[tokio::test]
async fn vss_snapshots_each_volume_once_through_one_command_tagged_managed_and_consistent() {
    let (ec2, ids) = fleet(2);
    let agent = Agent::new(ec2.clone());
    let policy = vss(OnFailure::CrashConsistent);
    let o = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_success(&o);
    assert_eq!(
        (o.report.created, o.report.app_consistent, o.report.fallback),
        (4, 4, 0)
    );
    assert_eq!(
        ec2.calls("CreateSnapshot") + ec2.calls("CreateSnapshots"),
        0
    );
    let sent = agent.fake.ssm.sent();
    assert_eq!(sent.len(), 1);
    let c = &sent[0].1;
    assert_eq!(c.document, VSS_DOCUMENT);
    assert_eq!(c.instance_ids, ids);
    assert_eq!(c.parameters["CopyOnly"], ["True"]);
    assert_eq!(c.parameters["ExcludeBootVolume"], ["False"]);
    let tags = &c.parameters["tags"][0];
    for forbidden in ["Device", "AppConsistent", "AwsVssConfig"] {
        assert!(!tags.contains(&format!("Key={forbidden},")), "{tags}");
    }
    let snaps = ec2.snapshots();
    assert_eq!(snaps.len(), 4);
    for s in &snaps {
        assert_eq!(tag(s, ec2::TAG_MANAGED), Some("true"));
        assert_eq!(tag(s, ec2::TAG_SLOT), Some(format_slot(slot()).as_str()));
        assert_eq!(tag(s, ec2::TAG_APP_CONSISTENT), Some("true"));
        // What one tag set for the whole command could not carry is added per volume.
        assert!(tag(s, ec2::TAG_DEVICE).is_some(), "{:?}", s.tags);
        assert!(tag(s, ec2::TAG_INSTANCE).is_some(), "{:?}", s.tags);
    }

    // The same slot again: everything is there; no command, no snapshot.
    ec2.complete_all();
    let again = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_eq!((again.report.created, again.report.already_done), (0, 4));
    assert_eq!(agent.fake.ssm.sent().len(), 1);
    assert_eq!(ec2.snapshots().len(), 4);
}

#[tokio::test]
async fn exclude_boot_volume_leaves_the_boot_volume_out_of_the_targets_and_the_command() {
    let (ec2, _) = fleet(2);
    let agent = Agent::new(ec2.clone());
    let mut policy = vss(OnFailure::CrashConsistent);
    policy.vss.as_mut().unwrap().exclude_boot_volume = true;
    let o = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_success(&o);
    assert_eq!((o.report.targeted_volumes, o.report.created), (2, 2));
    assert_eq!(
        agent.fake.ssm.sent()[0].1.parameters["ExcludeBootVolume"],
        ["True"]
    );
    let devices: Vec<String> = ec2
        .snapshots()
        .iter()
        .filter_map(|s| tag(s, ec2::TAG_DEVICE).map(str::to_string))
        .collect();
    assert_eq!(devices, ["/dev/sdf", "/dev/sdf"]);
}

#[tokio::test]
async fn a_failed_vss_command_falls_back_to_a_crash_consistent_snapshot_or_fails_with_skip() {
    for (how, created, result) in [
        (OnFailure::CrashConsistent, 4, RunResult::Partial),
        (OnFailure::Skip, 2, RunResult::Partial),
    ] {
        let (ec2, ids) = fleet(2);
        let agent = Agent::new(ec2.clone());
        agent.fake.ssm.script(
            &ids[1],
            vec![Step::exited(1, "AwsVssComponents package is not installed")],
        );
        let metrics = Metrics::new();
        let o = run(&vss(how), &ec2, &agent, &metrics).await;
        assert_eq!(
            (o.report.created, o.report.result()),
            (created, result),
            "{how:?}"
        );
        let problems = codes(&o);
        match how {
            OnFailure::CrashConsistent => {
                assert_eq!(
                    problems,
                    [(ids[1].clone(), "vss", "vss-components-missing".into())]
                );
                assert_eq!((o.report.app_consistent, o.report.fallback), (2, 2));
                let fallback: Vec<Snapshot> = ec2
                    .snapshots()
                    .into_iter()
                    .filter(|s| tag(s, ec2::TAG_INSTANCE) == Some(ids[1].as_str()))
                    .collect();
                assert_eq!(fallback.len(), 2);
                assert!(fallback
                    .iter()
                    .all(|s| tag(s, ec2::TAG_APP_CONSISTENT) == Some("false")));
                assert_eq!(
                    ec2.calls("CreateSnapshots"),
                    1,
                    "one crash-consistent call for the instance"
                );
                let text = metrics.render(slot());
                assert!(text.contains(r#"snapwarden_app_consistent_snapshots_total{kind="fallback",policy="app"} 2"#), "{text}");
                assert!(text.contains(r#"snapwarden_ssm_invocations_total{document="AWSEC2-CreateVssSnapshot",outcome="failed",policy="app"} 1"#), "{text}");
            }
            OnFailure::Skip => {
                assert_eq!(problems.len(), 2, "{problems:?}");
                assert!(problems
                    .iter()
                    .all(|(_, op, code)| *op == "create" && code == "vss-components-missing"));
                assert_eq!(o.report.failed_volumes(), 2);
                assert!(
                    o.report.problems[0].message.contains(&ids[1]),
                    "{:?}",
                    o.report.problems
                );
            }
        }
    }
}

#[tokio::test]
async fn sixty_instances_take_two_commands_and_one_describe_finds_their_snapshots() {
    let (ec2, _) = fleet(60);
    let agent = Agent::new(ec2.clone());
    let before = ec2.calls("DescribeSnapshots");
    let o = run(
        &vss(OnFailure::CrashConsistent),
        &ec2,
        &agent,
        &Metrics::new(),
    )
    .await;
    assert_eq!(o.report.created, 120, "{:?}", o.report.problems);
    let sizes: Vec<usize> = agent
        .fake
        .ssm
        .sent()
        .iter()
        .map(|(_, c)| c.instance_ids.len())
        .collect();
    assert_eq!(sizes, [50, 10]);
    // The survey's sweep and one for the VSS snapshots of the fire.
    assert_eq!(ec2.calls("DescribeSnapshots") - before, 2);
    assert_eq!(
        agent.fake.ssm.calls(Op::ListCommandInvocations),
        2,
        "one poll per command"
    );
}

/// The VSS document tags a whole command's snapshots alike; what differs per instance (its id, the Name) and per
/// volume (the device) is added afterwards. One CreateTags per snapshot would make tagging, at 5 calls a second in
/// the tags bucket, most of a large fire (2,500 calls for 1,000 instances: the scale benchmark's `--vss`).
#[tokio::test]
async fn vss_snapshots_are_tagged_with_one_call_per_instance_and_one_per_device() {
    let (ec2, ids) = fleet(10);
    let agent = Agent::new(ec2.clone());
    let o = run(
        &vss(OnFailure::CrashConsistent),
        &ec2,
        &agent,
        &Metrics::new(),
    )
    .await;
    assert_eq!(o.report.created, 20, "{:?}", o.report.problems);
    // Ten instances' own tags, and the two devices' (each device's ten snapshots in one call).
    assert_eq!(ec2.calls("CreateTags"), 10 + 2);
    let snaps = ec2.snapshots();
    for i in &ids {
        let mine: Vec<&Snapshot> = snaps
            .iter()
            .filter(|s| tag(s, ec2::TAG_INSTANCE) == Some(i.as_str()))
            .collect();
        let mut devices: Vec<&str> = mine
            .iter()
            .map(|s| tag(s, ec2::TAG_DEVICE).unwrap())
            .collect();
        devices.sort();
        assert_eq!(devices, ["/dev/sda1", "/dev/sdf"]);
        for s in mine {
            assert_eq!(tag(s, "Backup"), Some("app"), "{:?}", s.tags);
            assert!(
                tag(s, "Name").is_some_and(|n| n.contains(i.as_str())),
                "{:?}",
                s.tags
            );
        }
    }
}

#[tokio::test]
async fn scripts_freeze_snapshot_and_thaw_in_that_order() {
    let (ec2, ids) = fleet(2);
    let agent = Agent::new(ec2.clone());
    let metrics = Metrics::new();
    let o = run(&scripts(OnFailure::CrashConsistent), &ec2, &agent, &metrics).await;
    assert_success(&o);
    assert_eq!((o.report.created, o.report.app_consistent), (4, 4));
    assert_eq!(
        agent.log(),
        [
            format!("{PRE} 2 (snapshots: 0)"),
            format!("{POST} 2 (snapshots: 4)")
        ]
    );
    let sent = agent.fake.ssm.sent();
    assert_eq!(sent[0].1.instance_ids, ids);
    assert_eq!(sent[0].1.parameters["MountPoints"], ["/data"]);
    assert!(ec2
        .snapshots()
        .iter()
        .all(|s| tag(s, ec2::TAG_APP_CONSISTENT) == Some("true")));
    let text = metrics.render(slot());
    assert!(
        text.contains(r#"snapwarden_freeze_window_seconds_count{policy="app"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_failed_pre_script_falls_back_and_still_gets_its_post_an_undelivered_one_does_not() {
    let (ec2, ids) = fleet(3);
    let agent = Agent::new(ec2.clone());
    agent.fake.ssm.script(
        &ids[0],
        vec![Step::exited(2, "fsfreeze: /data: Device or resource busy")],
    );
    agent
        .fake
        .ssm
        .script(&ids[1], vec![Step::status(Status::Undeliverable)]);
    let o = run(
        &scripts(OnFailure::CrashConsistent),
        &ec2,
        &agent,
        &Metrics::new(),
    )
    .await;
    assert_eq!(o.report.created, 6);
    assert_eq!((o.report.app_consistent, o.report.fallback), (2, 4));
    let mut problems = codes(&o);
    problems.sort();
    let mut want = vec![
        (ids[0].clone(), "pre", "script-failed".to_string()),
        (ids[1].clone(), "pre", "not-managed".to_string()),
    ];
    want.sort();
    assert_eq!(problems, want);
    let pre = &o
        .report
        .problems
        .iter()
        .find(|p| p.resource == ids[0])
        .unwrap()
        .message;
    assert!(
        pre.contains("exited with code 2: fsfreeze: /data: Device or resource busy"),
        "{pre}"
    );
    let post: Vec<Vec<String>> = agent
        .fake
        .ssm
        .sent()
        .into_iter()
        .filter(|(_, c)| c.document == POST)
        .map(|(_, c)| c.instance_ids)
        .collect();
    assert_eq!(post, [vec![ids[0].clone(), ids[2].clone()]]);
}

#[tokio::test]
async fn a_pre_script_that_never_finishes_times_out_and_skip_takes_no_snapshot() {
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    agent
        .fake
        .ssm
        .script(&ids[0], vec![Step::status(Status::InProgress)]);
    let o = run(&scripts(OnFailure::Skip), &ec2, &agent, &Metrics::new()).await;
    assert_eq!(o.report.created, 0);
    assert_eq!(o.report.result(), RunResult::Failure);
    assert!(
        codes(&o)
            .iter()
            .all(|(_, op, code)| *op == "create" && code == "timed-out"),
        "{:?}",
        codes(&o)
    );
    assert!(ec2.snapshots().is_empty());
}

#[tokio::test]
async fn a_failed_post_script_leaves_the_snapshot_and_makes_the_run_partial() {
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    let o = with_post(
        &ec2,
        &agent,
        &ids[0],
        Step::exited(1, "fsfreeze -u: not frozen"),
    )
    .await;
    assert_eq!((o.report.created, o.report.app_consistent), (2, 2));
    assert_eq!(
        codes(&o),
        [(ids[0].clone(), "post", "script-failed".to_string())]
    );
    assert_eq!(o.report.result(), RunResult::Partial);
}

/// A run of the scripts policy on one instance whose pre succeeds after two polls and whose post answers `post`
/// (scripted once the pre has gone out: a script applies to the next command sent to the instance).
async fn with_post(ec2: &FakeEc2, agent: &Agent, instance: &str, post: Step) -> Outcome {
    let slow = Step::status(Status::InProgress);
    agent.fake.ssm.script(
        instance,
        vec![slow.clone(), slow, Step::exited(0, "frozen")],
    );
    let policy = scripts(OnFailure::CrashConsistent);
    let spec = RunSpec::new(&policy, slot(), FAKE_ACCOUNT).ssm(agent, polling());
    let metrics = Metrics::new();
    let fut = worker::run(ec2, &spec, &metrics, slot);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            o = &mut fut => break o,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                if agent.fake.ssm.sent().len() == 1 {
                    agent.fake.ssm.script(instance, vec![post.clone()]);
                }
            }
        }
    }
}

#[tokio::test]
async fn a_restart_awaits_the_vss_command_an_earlier_process_sent_and_owes_posts_it_left() {
    // VSS: the earlier process sent the command and died; the agent is still at it.
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    let policy = vss(OnFailure::CrashConsistent);
    let comment = format!("snapwarden vss {} app", format_slot(slot()));
    agent.fake.ssm.script(
        &ids[0],
        vec![Step::status(Status::InProgress), Step::exited(0, "done")],
    );
    let mut params = BTreeMap::new();
    params.insert(
        "tags".to_string(),
        vec![format!(
            "Key=snapwarden:managed,Value=true;Key=snapwarden:policy,Value=app;Key=snapwarden:schedule,Value=daily;Key=snapwarden:slot,Value={};Key=snapwarden:app-consistent,Value=true",
            format_slot(slot())
        )],
    );
    let earlier = Command {
        document: VSS_DOCUMENT.into(),
        instance_ids: ids.clone(),
        parameters: params,
        timeout: Duration::from_secs(30),
        comment,
    };
    agent.send_command(&earlier).await.unwrap();
    let o = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_eq!(agent.fake.ssm.sent().len(), 1, "no second command");
    assert_eq!(
        (o.report.created, o.report.app_consistent),
        (2, 2),
        "{:?}",
        o.report.problems
    );
    assert_eq!(ec2.snapshots().len(), 2);

    // Scripts: the earlier process ran the pre script and made the snapshots, then died before the post.
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    let policy = scripts(OnFailure::CrashConsistent);
    let pre = Command {
        document: PRE.into(),
        instance_ids: ids.clone(),
        parameters: BTreeMap::new(),
        timeout: Duration::from_secs(30),
        comment: format!("snapwarden pre {} app", format_slot(slot())),
    };
    agent.send_command(&pre).await.unwrap();
    let first = run(
        &base_policy_with_scripts_no_post(),
        &ec2,
        &agent,
        &Metrics::new(),
    )
    .await;
    assert_eq!(first.report.created, 2);
    ec2.complete_all();
    let o = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_eq!(o.report.created, 0);
    let posts: Vec<Vec<String>> = agent
        .fake
        .ssm
        .sent()
        .into_iter()
        .filter(|(_, c)| c.document == POST)
        .map(|(_, c)| c.instance_ids)
        .collect();
    assert_eq!(posts, [ids], "the owed post goes out");
    let again = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_eq!(again.report.created, 0);
    let posts = agent
        .fake
        .ssm
        .sent()
        .into_iter()
        .filter(|(_, c)| c.document == POST)
        .count();
    assert_eq!(posts, 1, "owed once");
    assert!(ec2
        .snapshots()
        .iter()
        .all(|s| s.state == SnapState::Completed));
}

/// The scripts policy without its post: what an earlier process that died before the post left behind (the
/// snapshots of the slot exist, no post command was sent).
fn base_policy_with_scripts_no_post() -> Policy {
    let mut p = scripts(OnFailure::CrashConsistent);
    if let Some(s) = &mut p.scripts {
        s.post = None;
    }
    p
}

#[tokio::test]
async fn a_retry_of_the_slot_freezes_again_and_thaws_again_instead_of_trusting_an_old_freeze() {
    let (ec2, _) = fleet(1);
    let volumes: Vec<String> = ec2
        .describe_volumes(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    let agent = Agent::new(ec2.clone());
    let policy = scripts(OnFailure::CrashConsistent);
    for v in &volumes {
        ec2.fail_create_for(v, "InternalError");
    }
    let first = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_eq!(first.report.created, 0);
    ec2.clear_faults();
    let retry = run(&policy, &ec2, &agent, &Metrics::new()).await;
    assert_eq!((retry.report.created, retry.report.app_consistent), (2, 2));
    let documents: Vec<String> = agent
        .fake
        .ssm
        .sent()
        .into_iter()
        .map(|(_, c)| c.document)
        .collect();
    // The first run's pre succeeded and is over: it holds nothing still when the retry snapshots, so the retry
    // sends its own, and its own post (an earlier post never stands for this run's).
    assert_eq!(documents, [PRE, POST, PRE, POST]);
}

#[tokio::test]
async fn a_post_is_owed_when_an_instance_was_frozen_again_after_its_last_thaw() {
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    let slot_text = format_slot(slot());
    let send = |document: &str, stage: &str| Command {
        document: document.into(),
        instance_ids: ids.clone(),
        parameters: BTreeMap::new(),
        timeout: Duration::from_secs(30),
        comment: format!("snapwarden {stage} {slot_text} app"),
    };
    // An earlier run froze and thawed; a later one froze, made the snapshots and died before its post.
    agent.send_command(&send(PRE, "pre")).await.unwrap();
    agent.send_command(&send(POST, "post")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    agent.send_command(&send(PRE, "pre")).await.unwrap();
    let no_post = base_policy_with_scripts_no_post();
    assert_eq!(
        run(&no_post, &ec2, &agent, &Metrics::new())
            .await
            .report
            .created,
        2
    );
    let o = run(
        &scripts(OnFailure::CrashConsistent),
        &ec2,
        &agent,
        &Metrics::new(),
    )
    .await;
    assert_eq!(o.report.created, 0);
    let posts = agent
        .fake
        .ssm
        .sent()
        .into_iter()
        .filter(|(_, c)| c.document == POST)
        .count();
    assert_eq!(posts, 2, "the thaw the second freeze was owed");
}

#[tokio::test]
async fn a_post_that_found_the_freeze_already_ended_marks_the_snapshots_not_consistent() {
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    let fired = Step::exited(super::THAWED_EARLY, "auto-thaw had already fired for /data");
    let o = with_post(&ec2, &agent, &ids[0], fired).await;
    assert_eq!(
        (o.report.created, o.report.app_consistent, o.report.fallback),
        (2, 0, 2)
    );
    assert_eq!(
        codes(&o),
        [(ids[0].clone(), "post", "thawed-early".to_string())]
    );
    assert!(ec2
        .snapshots()
        .iter()
        .all(|s| tag(s, ec2::TAG_APP_CONSISTENT) == Some("false")));
}

/// What an earlier process sent `instances` for the slot: `document` with the stage's comment.
async fn sent_earlier(agent: &Agent, document: &str, stage: &str, instances: &[String]) {
    let command = Command {
        document: document.into(),
        instance_ids: instances.to_vec(),
        parameters: BTreeMap::new(),
        timeout: Duration::from_secs(30),
        comment: format!("snapwarden {stage} {} app", format_slot(slot())),
    };
    agent.send_command(&command).await.unwrap();
}

/// The run sent `documents` in that order and made both snapshots of the one instance, consistent.
fn sent_and_consistent(agent: &Agent, o: &Outcome, documents_sent: &[&str], case: &str) {
    let r = &o.report;
    assert_eq!(documents(agent), documents_sent, "{case}: {:?}", r.problems);
    let got = (r.created, r.app_consistent, r.result());
    assert_eq!(got, (2, 2, RunResult::Success), "{case}: {:?}", r.problems);
}

/// The documents sent to SSM, in order.
fn documents(agent: &Agent) -> Vec<String> {
    agent
        .fake
        .ssm
        .sent()
        .into_iter()
        .map(|(_, c)| c.document)
        .collect()
}

#[tokio::test]
async fn a_restart_after_an_earlier_freeze_was_thawed_freezes_and_thaws_again() {
    // The earlier process froze and thawed the instance (its freeze failed, or it succeeded and a create failed)
    // and died before the instance's volumes had their snapshots. That freeze is over: the restart must not take
    // its success for a freeze still holding, nor its thaw for one following the restart's own freeze.
    for earlier_pre in [
        Step::exited(2, "fsfreeze: /data: Device or resource busy"),
        Step::exited(0, "frozen"),
    ] {
        let (ec2, ids) = fleet(1);
        let agent = Agent::new(ec2.clone());
        agent.fake.ssm.script(&ids[0], vec![earlier_pre.clone()]);
        sent_earlier(&agent, PRE, "pre", &ids).await;
        // The earlier process saw its pre end before it sent the post.
        agent
            .fake
            .ssm
            .list_command_invocations(&agent.fake.ssm.sent()[0].0)
            .await
            .unwrap();
        sent_earlier(&agent, POST, "post", &ids).await;
        let o = run(
            &scripts(OnFailure::CrashConsistent),
            &ec2,
            &agent,
            &Metrics::new(),
        )
        .await;
        sent_and_consistent(
            &agent,
            &o,
            &[PRE, POST, PRE, POST],
            &format!("{earlier_pre:?}"),
        );
    }
}

#[tokio::test]
async fn a_restart_awaits_the_latest_freeze_an_instance_was_sent_not_an_older_failed_one() {
    // First process: its freeze failed, and it died before the fallback and the thaw. Second process: it froze
    // again and died while that freeze ran. The third must await the second freeze, not freeze a third time.
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    agent
        .fake
        .ssm
        .script(&ids[0], vec![Step::exited(2, "fsfreeze: busy")]);
    sent_earlier(&agent, PRE, "pre", &ids).await;
    agent
        .fake
        .ssm
        .list_command_invocations(&agent.fake.ssm.sent()[0].0)
        .await
        .unwrap();
    agent.fake.ssm.script(
        &ids[0],
        vec![Step::status(Status::InProgress), Step::exited(0, "frozen")],
    );
    sent_earlier(&agent, PRE, "pre", &ids).await;
    let o = run(
        &scripts(OnFailure::CrashConsistent),
        &ec2,
        &agent,
        &Metrics::new(),
    )
    .await;
    sent_and_consistent(&agent, &o, &[PRE, PRE, POST], "");
}

#[tokio::test]
async fn snapshots_of_every_batch_get_their_per_volume_tags() {
    // 60 instances: two batches of pre, creates and post, whose snapshots lack the same device tags.
    let (ec2, _) = fleet(60);
    let agent = Agent::new(ec2.clone());
    let o = run(
        &scripts(OnFailure::CrashConsistent),
        &ec2,
        &agent,
        &Metrics::new(),
    )
    .await;
    assert_success(&o);
    assert_eq!(o.report.created, 120);
    let untagged = ec2
        .snapshots()
        .iter()
        .filter(|s| tag(s, ec2::TAG_DEVICE).is_none())
        .count();
    assert_eq!(untagged, 0, "snapshots without their device tag");
}
