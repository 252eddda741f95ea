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
use crate::ssm::fake::{FakeSsm, Step};
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

/// `FakeSsm` with the instance's side of the VSS document, and a log of commands and creates in order.
struct Agent {
    ssm: FakeSsm,
    ec2: Arc<FakeEc2>,
    /// VSS commands by id, with the instances whose snapshots are not made yet: the document makes them while it
    /// runs, and reports success after.
    vss: Mutex<BTreeMap<String, (Command, Vec<String>)>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn new(ec2: Arc<FakeEc2>) -> Self {
        Agent {
            ssm: FakeSsm::new(REGION),
            ec2,
            vss: Mutex::default(),
            log: Arc::default(),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// What the document does on `instance`: one snapshot per attached volume, with the `tags` parameter's tags
    /// and the document's own.
    async fn vss_snapshots(&self, instance: &str, command: &Command) {
        let mut tags = ec2::Tags::new();
        for pair in command.parameters["tags"][0].split(';') {
            let (k, v) = pair.split_once(',').unwrap();
            tags.insert(
                k.strip_prefix("Key=").unwrap().to_string(),
                v.strip_prefix("Value=").unwrap().to_string(),
            );
        }
        tags.insert("AppConsistent".into(), "true".into());
        let volumes = self.ec2.describe_volumes(&[]).await.unwrap();
        for v in volumes {
            let Some((i, device)) = &v.attachment else {
                continue;
            };
            if i != instance {
                continue;
            }
            let mut tags = tags.clone();
            tags.insert("Device".into(), device.clone());
            let tags: Vec<(&str, &str)> =
                tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            self.ec2
                .seed_snapshot(&v.id, SnapState::Pending, FAKE_ACCOUNT, &tags);
        }
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
        let id = self.ssm.send_command(command).await?;
        if command.document == VSS_DOCUMENT {
            let todo = command.instance_ids.clone();
            self.vss
                .lock()
                .unwrap()
                .insert(id.clone(), (command.clone(), todo));
        }
        Ok(id)
    }
    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        let listed = self.ssm.list_command_invocations(command_id).await?;
        let done: Vec<(Command, String)> = {
            let mut vss = self.vss.lock().unwrap();
            match vss.get_mut(command_id) {
                Some((command, todo)) => listed
                    .iter()
                    .filter(|i| i.status == Status::Success)
                    .filter_map(|i| {
                        let at = todo.iter().position(|t| *t == i.instance_id)?;
                        Some((command.clone(), todo.remove(at)))
                    })
                    .collect(),
                None => Vec::new(),
            }
        };
        for (command, instance) in done {
            self.vss_snapshots(&instance, &command).await;
        }
        Ok(listed)
    }
    async fn list_commands(&self, document: &str, after: DateTime<Utc>) -> Result<Vec<Sent>> {
        self.ssm.list_commands(document, after).await
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
    assert_eq!(
        o.report.result(),
        RunResult::Success,
        "{:?}",
        o.report.problems
    );
    assert_eq!(
        (o.report.created, o.report.app_consistent, o.report.fallback),
        (4, 4, 0)
    );
    assert_eq!(
        ec2.calls("CreateSnapshot") + ec2.calls("CreateSnapshots"),
        0
    );
    let sent = agent.ssm.sent();
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
    assert_eq!(agent.ssm.sent().len(), 1);
    assert_eq!(ec2.snapshots().len(), 4);
}

#[tokio::test]
async fn a_failed_vss_command_falls_back_to_a_crash_consistent_snapshot_or_fails_with_skip() {
    for (how, created, result) in [
        (OnFailure::CrashConsistent, 4, RunResult::Partial),
        (OnFailure::Skip, 2, RunResult::Partial),
    ] {
        let (ec2, ids) = fleet(2);
        let agent = Agent::new(ec2.clone());
        agent.ssm.script(
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
        .ssm
        .sent()
        .iter()
        .map(|(_, c)| c.instance_ids.len())
        .collect();
    assert_eq!(sizes, [50, 10]);
    // The survey's sweep and one for the VSS snapshots of the fire.
    assert_eq!(ec2.calls("DescribeSnapshots") - before, 2);
    assert_eq!(
        agent.ssm.calls(Op::ListCommandInvocations),
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
    assert_eq!(
        o.report.result(),
        RunResult::Success,
        "{:?}",
        o.report.problems
    );
    assert_eq!((o.report.created, o.report.app_consistent), (4, 4));
    assert_eq!(
        agent.log(),
        [
            format!("{PRE} 2 (snapshots: 0)"),
            format!("{POST} 2 (snapshots: 4)")
        ]
    );
    let sent = agent.ssm.sent();
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
    agent.ssm.script(
        &ids[0],
        vec![Step::exited(2, "fsfreeze: /data: Device or resource busy")],
    );
    agent
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
    // The pre script's invocation succeeds after two polls; the post script's (the next command to the instance)
    // fails.
    let slow = Step::status(Status::InProgress);
    agent
        .ssm
        .script(&ids[0], vec![slow.clone(), slow, Step::exited(0, "frozen")]);
    let o = {
        let policy = scripts(OnFailure::CrashConsistent);
        let spec = RunSpec::new(&policy, slot(), FAKE_ACCOUNT).ssm(&agent, polling());
        let metrics = Metrics::new();
        let fut = worker::run(&*ec2, &spec, &metrics, slot);
        tokio::pin!(fut);
        // Script the post once the pre has gone out.
        loop {
            tokio::select! {
                o = &mut fut => break o,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {
                    if agent.ssm.sent().len() == 1 {
                        agent.ssm.script(&ids[0], vec![Step::exited(1, "fsfreeze -u: not frozen")]);
                    }
                }
            }
        }
    };
    assert_eq!((o.report.created, o.report.app_consistent), (2, 2));
    assert_eq!(
        codes(&o),
        [(ids[0].clone(), "post", "script-failed".to_string())]
    );
    assert_eq!(o.report.result(), RunResult::Partial);
}

#[tokio::test]
async fn a_restart_awaits_the_vss_command_an_earlier_process_sent_and_owes_posts_it_left() {
    // VSS: the earlier process sent the command and died; the agent is still at it.
    let (ec2, ids) = fleet(1);
    let agent = Agent::new(ec2.clone());
    let policy = vss(OnFailure::CrashConsistent);
    let comment = format!("snapwarden vss {} app", format_slot(slot()));
    agent.ssm.script(
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
    assert_eq!(agent.ssm.sent().len(), 1, "no second command");
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
