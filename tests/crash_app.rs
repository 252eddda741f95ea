//! Crash safety of application-consistent runs. The real `snapwarden run` binary against moto behind the SSM agent
//! stand-in of `common::ssm_agent` (the instances' side of Run Command), with the fault proxy of
//! `common::fault_proxy` in front of both: the daemon is SIGKILLed at the worst moments of a VSS or pre/post-script
//! run, then restarted; catch-up fires the same (yearly) slot again, and the slot must end with exactly one
//! snapshot per volume, every one application-consistent, no command sent twice to an instance where the first may
//! still be running, and every instance a pre script ran on thawed by a post script sent after it.
//!
//! The moments: a VSS command still running on the instances (held `InProgress` by the stand-in), before its
//! snapshots exist and after some do; a pre script that succeeded, with the snapshot creates under way (the first
//! one, or the last one, reached EC2) and the post not yet sent; a pre script still running; a failed pre already
//! thawed, with the fallback creates under way (the restart must freeze and thaw again), and that restart killed in
//! turn while its own freeze runs (the third start must await that freeze, not the failed one). The counts come
//! from moto's `ListCommands` (what SSM was really sent, with the comments and send times the daemon finds its
//! commands by) and moto's snapshots.
//!
//! Each test prints its figures (`--nocapture`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;

use common::fault_proxy::{self, Fault, FaultProxy, When};
use common::process::{snapwarden, Daemon};
use common::ssm_agent::{Reply, Rule, SsmAgent, VSS_DOCUMENT};
use common::{filter, Moto, REGION};
use snapwarden::schedule::format_slot;

const POLICY: &str = "app";
const PRE: &str = "snapwarden-fsfreeze";
const POST: &str = "snapwarden-thaw";
const CREATE: &str = "CreateSnapshot";
/// How long the fault proxy holds each CreateSnapshot, so a kill lands between two of them.
const HOLD: Duration = Duration::from_millis(300);
const INSTANCES: usize = 3;

/// How the policy makes its snapshots application-consistent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `consistency = "vss"`: the instances snapshot themselves through AWSEC2-CreateVssSnapshot.
    Vss,
    /// A freeze before and a thaw after snapwarden's own CreateSnapshot calls.
    Scripts,
}

/// moto, the stand-in agent in front of it and the fault proxy in front of that (what the daemon talks to), three
/// instances with two volumes each tagged `Backup = app`, and the daemon's config: one yearly schedule (only
/// catch-up fires during a test, always the same slot), creates one at a time.
struct Rig {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    proxy: FaultProxy,
    agent: SsmAgent,
    /// Straight to moto: what EC2 and SSM really hold.
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    instances: Vec<String>,
    volumes: Vec<String>,
    /// Each instance's volumes.
    attached: BTreeMap<String, Vec<String>>,
    _moto: Moto,
}

async fn rig(kind: Kind, seed: u64) -> Rig {
    let moto = Moto::start();
    let ec2 = moto.ec2().await;
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
    let mut instances = Vec::new();
    let mut volumes = Vec::new();
    let mut attached = BTreeMap::new();
    for _ in 0..INSTANCES {
        let (id, vols) =
            common::launch_instance(&ec2, &[("Backup", "app")], &["/dev/sdf", "/dev/sdg"]).await;
        instances.push(id.clone());
        volumes.extend(vols.clone());
        attached.insert(id, vols);
    }
    volumes.sort();
    let agent = SsmAgent::start(moto.port);
    let proxy = FaultProxy::start(agent.port, seed);
    let consistency = match kind {
        Kind::Vss => r#"consistency = "vss"

[policy.vss]
timeout = "5m"
on-failure = "crash-consistent"
"#
        .to_string(),
        Kind::Scripts => format!(
            r#"consistency = "volume"

[policy.scripts]
on-failure = "crash-consistent"

[policy.scripts.pre]
document = "{PRE}"
parameters = {{ MountPoints = "/data", AutoThawSeconds = "60" }}
timeout = "60s"

[policy.scripts.post]
document = "{POST}"
parameters = {{ MountPoints = "/data" }}
"#
        ),
    };
    let policy = format!(
        r#"[[policy]]
name = "{POLICY}"
{consistency}
[policy.target]
resource = "instance"
tags = {{ Backup = "app" }}

[[policy.schedule]]
name = "yearly"
cron = "0 0 1 1 *"
keep = {{ last = 3 }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = common::write_config(
        dir.path(),
        port,
        "max-concurrent-aws-calls = 1\ncompletion-deadline = \"20s\"",
        &proxy.endpoint,
        "max-attempts = 3",
        &policy,
    );
    Rig {
        dir,
        config,
        port,
        proxy,
        agent,
        ec2,
        ssm,
        instances,
        volumes,
        attached,
        _moto: moto,
    }
}

impl Rig {
    fn start(&self) -> Daemon {
        Daemon::spawn(snapwarden().arg("--config").arg(&self.config).arg("run"))
    }

    /// The commands SSM (moto) holds: (document, comment, instances), oldest first.
    async fn sent(&self) -> Vec<(String, String, Vec<String>)> {
        let out = self
            .ssm
            .list_commands()
            .send()
            .await
            .expect("ListCommands on moto");
        out.commands()
            .iter()
            .map(|c| {
                // What orders an instance's freezes and thaws across processes.
                assert!(c.requested_date_time().is_some(), "{c:?}");
                (
                    c.document_name().unwrap_or_default().to_string(),
                    c.comment().unwrap_or_default().to_string(),
                    c.instance_ids().to_vec(),
                )
            })
            .collect()
    }

    /// Per instance, how many commands of `document` with `comment` name it.
    async fn sent_to(&self, document: &str, comment: &str) -> BTreeMap<String, usize> {
        let mut by: BTreeMap<String, usize> =
            self.instances.iter().map(|i| (i.clone(), 0)).collect();
        for (d, c, ids) in self.sent().await {
            if d == document && c == comment {
                for i in ids {
                    *by.entry(i).or_default() += 1;
                }
            }
        }
        by
    }

    /// The policy's snapshots of `slot` in moto: volume -> the tags of each.
    async fn slot_snapshots(&self, slot: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
        let out = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("tag:snapwarden:policy", &[POLICY]))
            .filters(filter("tag:snapwarden:slot", &[slot]))
            .send()
            .await
            .expect("DescribeSnapshots on moto");
        let mut by: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        for s in out.snapshots() {
            let tags = common::tag_map(s.tags());
            by.entry(s.volume_id().unwrap_or_default().to_string())
                .or_default()
                .push(tags);
        }
        by
    }

    async fn slot_snapshot_count(&self, slot: &str) -> usize {
        self.slot_snapshots(slot).await.values().map(Vec::len).sum()
    }
}

/// Waits until `done` holds, the daemon still running.
fn wait_until(d: &mut Daemon, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            d.is_running(),
            "the daemon exited before {what}\n{}",
            d.logs()
        );
        assert!(
            Instant::now() < deadline,
            "not within 30 s: {what}\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The slot every daemon run of the rig fires: the latest `0 0 1 1 *` at or before now.
fn this_years_slot() -> String {
    let cron = snapwarden::schedule::Cron::parse("0 0 1 1 *").unwrap();
    format_slot(
        cron.latest_at_or_before(Utc::now(), chrono_tz::Tz::UTC)
            .unwrap(),
    )
}

fn comment(stage: &str, slot: &str) -> String {
    format!("snapwarden {stage} {slot} {POLICY}")
}

/// Lets the restarted daemon finish the slot: waits for its run, stops it, and returns its logs.
fn finish(mut d: Daemon, r: &Rig, slot: &str) -> String {
    let (result, run_slot) = d.wait_for_run(r.port, POLICY, "yearly", REGION);
    assert_eq!(run_slot, slot, "catch-up fired the same slot\n{}", d.logs());
    assert_eq!(result, "success", "{}", d.logs());
    d.stop();
    d.logs()
}

/// What every scenario ends with: exactly one snapshot of the slot per volume, each application-consistent and
/// carrying snapwarden's per-volume tags (the instance it was taken of).
async fn assert_one_consistent_snapshot_per_volume(r: &Rig, slot: &str, logs: &str) {
    let by = r.slot_snapshots(slot).await;
    for v in &r.volumes {
        let snaps = by.get(v).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(snaps.len(), 1, "volume {v}: {by:#?}\n{logs}");
        let tags = &snaps[0];
        assert_eq!(
            tags.get("snapwarden:app-consistent").map(String::as_str),
            Some("true"),
            "volume {v}: {tags:?}"
        );
        assert!(
            tags.get("snapwarden:instance-id")
                .is_some_and(|i| r.instances.contains(i)),
            "volume {v} lacks its instance tag: {tags:?}"
        );
    }
    assert_eq!(by.len(), r.volumes.len(), "{by:#?}");
}

/// Scripts: every instance was sent `pres[i]` pre scripts and exactly one post for the slot (per moto), and the
/// stand-in got the post after the last pre.
async fn assert_pres_then_one_post(
    r: &Rig,
    slot: &str,
    logs: &str,
    pres: &BTreeMap<String, usize>,
) {
    let pre = r.sent_to(PRE, &comment("pre", slot)).await;
    let post = r.sent_to(POST, &comment("post", slot)).await;
    let all = r.sent().await;
    for i in &r.instances {
        assert_eq!(pre[i], pres[i], "pre scripts sent to {i}: {all:#?}\n{logs}");
        assert_eq!(post[i], 1, "post scripts sent to {i}: {all:#?}\n{logs}");
    }
    let seen = r.agent.commands();
    for i in &r.instances {
        let at = |doc: &str| {
            seen.iter()
                .rposition(|c| c.document == doc && c.instance_ids.contains(i))
                .unwrap_or_else(|| panic!("no {doc} for {i} at the stand-in"))
        };
        assert!(
            at(PRE) < at(POST),
            "{i}: post before the last pre: {seen:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// VSS
// ---------------------------------------------------------------------------------------------------------------

/// The VSS command reaches the instances and stays `InProgress` (held by the stand-in); the daemon is killed while
/// it runs, restarted, and must await that command rather than send a second: the stand-in is released only once
/// the restarted run polls it. `creating_first`: the first instance's run snapshots as soon as it is delivered
/// (its snapshots exist at the kill), the others only when they report success.
async fn vss_killed_while_the_command_runs(seed: u64, creating_first: bool) {
    let r = rig(Kind::Vss, seed).await;
    let slot = this_years_slot();
    let held = Reply::success().held();
    let mut rules = Vec::new();
    if creating_first {
        rules.push(Rule::instance(&r.instances[0], held.clone().creating()).document(VSS_DOCUMENT));
    }
    rules.push(Rule::any(held).document(VSS_DOCUMENT));
    r.agent.set_rules(rules);
    let early = if creating_first { 2 } else { 0 };

    let mut d = r.start();
    // Polled at least once: the daemon is awaiting the running command.
    wait_until(&mut d, "the VSS command is sent and polled", || {
        r.agent.polls_of(VSS_DOCUMENT) >= INSTANCES
    });
    d.kill9();
    let sent = r.agent.commands_of(VSS_DOCUMENT);
    assert_eq!(sent.len(), 1);
    if creating_first {
        // The instance works on whether or not the daemon lives: its snapshots are made now.
        assert_eq!(r.agent.snapshots(&sent[0].id, &r.instances[0]).len(), 2);
    }
    assert_eq!(
        r.slot_snapshot_count(&slot).await,
        early,
        "snapshots at the kill"
    );

    let polled = r.agent.polls_of(VSS_DOCUMENT);
    let mut d = r.start();
    wait_until(
        &mut d,
        "the restarted run polls the earlier command",
        || r.agent.polls_of(VSS_DOCUMENT) > polled,
    );
    assert_eq!(
        r.agent.commands_of(VSS_DOCUMENT).len(),
        1,
        "a second VSS command while the first runs\n{}",
        d.logs()
    );
    r.agent.release(VSS_DOCUMENT);
    let logs = finish(d, &r, &slot);

    let vss = r.sent_to(VSS_DOCUMENT, &comment("vss", &slot)).await;
    println!(
        "crash figures: VSS killed while running (first instance's snapshots made before the kill: \
         {creating_first}): daemon runs 2, VSS commands per instance {vss:?}, slot snapshots {} for {} volumes",
        r.slot_snapshot_count(&slot).await,
        r.volumes.len()
    );
    assert!(
        vss.values().all(|n| *n == 1),
        "one VSS command per instance: {:#?}",
        r.sent().await
    );
    assert_eq!(r.sent().await.len(), 1, "{:#?}", r.sent().await);
    assert_one_consistent_snapshot_per_volume(&r, &slot, &logs).await;
    drop(r.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vss_killed_before_the_agent_made_any_snapshot_the_restart_awaits_the_same_command() {
    vss_killed_while_the_command_runs(31, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vss_killed_after_some_snapshots_exist_the_restart_awaits_the_rest_and_sends_nothing_twice()
{
    vss_killed_while_the_command_runs(32, true).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Pre and post scripts
// ---------------------------------------------------------------------------------------------------------------

/// The freeze succeeded on every instance and the creates are under way (the fault proxy holds each a moment):
/// killed once `k` creates reached the proxy — the k-th still reaches moto after the kill, as one in flight reaches
/// EC2 — before any post script was sent. The restart must thaw every instance (a post after its last pre) and
/// complete the slot. An instance whose snapshots are all made is only owed its post; one the restart still
/// snapshots is frozen afresh: the earlier freeze finished before the kill, and may have auto-thawed since, so a
/// snapshot taken under it would not be known consistent.
async fn scripts_killed_between_pre_and_post(seed: u64, k: usize) {
    let r = rig(Kind::Scripts, seed).await;
    let slot = this_years_slot();
    r.proxy.set_rules(vec![fault_proxy::Rule::new(
        &[CREATE],
        When::Always,
        Fault::Delay(HOLD),
    )]);
    let mut d = r.start();
    wait_until(&mut d, "creates reach the proxy", || {
        r.proxy.log().iter().filter(|h| h.action == CREATE).count() >= k
    });
    d.kill9();
    std::thread::sleep(HOLD + Duration::from_millis(300));
    assert_eq!(
        r.slot_snapshot_count(&slot).await,
        k,
        "snapshots at the kill"
    );
    let pre = r.sent_to(PRE, &comment("pre", &slot)).await;
    assert!(pre.values().all(|n| *n == 1), "{pre:?}");
    assert!(
        r.agent.commands_of(POST).is_empty(),
        "killed before the post"
    );
    let done = r.slot_snapshots(&slot).await;
    let pres: BTreeMap<String, usize> = r
        .instances
        .iter()
        .map(|i| {
            let all_made = r.attached[i].iter().all(|v| done.contains_key(v));
            (i.clone(), if all_made { 1 } else { 2 })
        })
        .collect();

    let d = r.start();
    let logs = finish(d, &r, &slot);
    let creates = r.proxy.log().iter().filter(|h| h.action == CREATE).count();
    println!(
        "crash figures: scripts killed at create #{k} between pre and post: daemon runs 2, pre commands {}, post \
         commands {}, {CREATE} requests {creates}, slot snapshots {} for {} volumes",
        r.agent.commands_of(PRE).len(),
        r.agent.commands_of(POST).len(),
        r.slot_snapshot_count(&slot).await,
        r.volumes.len()
    );
    assert_pres_then_one_post(&r, &slot, &logs, &pres).await;
    assert_one_consistent_snapshot_per_volume(&r, &slot, &logs).await;
    assert_eq!(creates, r.volumes.len(), "{:?}", r.proxy.log());
    drop(r.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_killed_at_the_first_create_the_restart_snapshots_the_rest_and_thaws_every_instance(
) {
    scripts_killed_between_pre_and_post(41, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_killed_at_the_last_create_the_restart_sends_the_owed_post_to_every_instance() {
    scripts_killed_between_pre_and_post(42, 2 * INSTANCES).await;
}

/// The freeze is still running on the instances (held `InProgress`) when the daemon is killed: the restart must
/// await it rather than freeze again, then snapshot and thaw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_killed_while_the_pre_script_runs_the_restart_adopts_it_and_thaws_after() {
    let r = rig(Kind::Scripts, 43).await;
    let slot = this_years_slot();
    r.agent
        .set_rules(vec![Rule::any(Reply::success().held()).document(PRE)]);
    let mut d = r.start();
    wait_until(&mut d, "the pre script is sent and polled", || {
        r.agent.polls_of(PRE) >= INSTANCES
    });
    d.kill9();
    assert_eq!(r.slot_snapshot_count(&slot).await, 0);
    assert!(r.agent.commands_of(POST).is_empty());

    let polled = r.agent.polls_of(PRE);
    let mut d = r.start();
    wait_until(&mut d, "the restarted run polls the earlier pre", || {
        r.agent.polls_of(PRE) > polled
    });
    assert_eq!(
        r.agent.commands_of(PRE).len(),
        1,
        "a second freeze while the first runs\n{}",
        d.logs()
    );
    r.agent.release(PRE);
    let logs = finish(d, &r, &slot);
    println!(
        "crash figures: scripts killed while the pre runs: daemon runs 2, pre commands {}, post commands {}, slot \
         snapshots {} for {} volumes",
        r.agent.commands_of(PRE).len(),
        r.agent.commands_of(POST).len(),
        r.slot_snapshot_count(&slot).await,
        r.volumes.len()
    );
    let adopted: BTreeMap<String, usize> = r.instances.iter().map(|i| (i.clone(), 1)).collect();
    assert_pres_then_one_post(&r, &slot, &logs, &adopted).await;
    assert_one_consistent_snapshot_per_volume(&r, &slot, &logs).await;
    drop(r.dir);
}

/// The freeze failed on every instance, so the first process thawed them and went on to crash-consistent
/// fallbacks; killed at the first fallback create. That freeze is over: the restart freezes again (it works this
/// time), snapshots the volumes still without one, and thaws again after its own freeze — a thaw sent before it is
/// no thaw for it. `kill_again`: the restart is killed too, while its freeze runs (held by the stand-in), and the
/// third start must await that freeze rather than freeze a third time.
async fn scripts_killed_after_a_failed_freeze_was_thawed(seed: u64, kill_again: bool) {
    let r = rig(Kind::Scripts, seed).await;
    let slot = this_years_slot();
    let mut second = Reply::success();
    if kill_again {
        second = second.held();
    }
    r.agent.set_rules(vec![
        Rule::any(Reply::failed(2, "fsfreeze: /data: Device or resource busy"))
            .document(PRE)
            .times(INSTANCES),
        Rule::any(second).document(PRE),
    ]);
    r.proxy.set_rules(vec![fault_proxy::Rule::new(
        &[CREATE],
        When::Always,
        Fault::Delay(HOLD),
    )]);
    let mut d = r.start();
    wait_until(
        &mut d,
        "the first fallback create reaches the proxy",
        || r.proxy.log().iter().any(|h| h.action == CREATE),
    );
    d.kill9();
    std::thread::sleep(HOLD + Duration::from_millis(300));
    assert_eq!(
        r.slot_snapshot_count(&slot).await,
        1,
        "snapshots at the kill"
    );
    let post = r.sent_to(POST, &comment("post", &slot)).await;
    assert!(
        post.values().all(|n| *n == 1),
        "thawed after the failed freeze: {post:?}"
    );

    let mut runs = 2;
    if kill_again {
        let polled = r.agent.polls_of(PRE);
        let mut d = r.start();
        wait_until(&mut d, "the second freeze is sent and polled", || {
            r.agent.commands_of(PRE).len() == 2 && r.agent.polls_of(PRE) >= polled + INSTANCES
        });
        d.kill9();
        assert!(
            r.agent.commands_of(POST).len() == 1,
            "killed before the thaw"
        );
        runs += 1;
        let second = r.agent.commands_of(PRE)[1].id.clone();
        let polled = r.agent.polls(&second);
        let mut d = r.start();
        wait_until(&mut d, "the third start polls the second freeze", || {
            let freezes = r.agent.commands_of(PRE).len();
            assert_eq!(freezes, 2, "a third freeze while the second runs");
            r.agent.polls(&second) > polled
        });
        r.agent.release(PRE);
        let logs = finish(d, &r, &slot);
        assert_thawed_after_the_second_freeze(&r, &slot, runs, &logs).await;
    } else {
        let d = r.start();
        let logs = finish(d, &r, &slot);
        assert_thawed_after_the_second_freeze(&r, &slot, runs, &logs).await;
    }
    drop(r.dir);
}

/// Two freezes per instance (the failed one and the restart's), each followed by its thaw; one snapshot per
/// volume: the fallback made before the first kill, and five taken under the second freeze.
async fn assert_thawed_after_the_second_freeze(r: &Rig, slot: &str, runs: usize, logs: &str) {
    let pre = r.sent_to(PRE, &comment("pre", slot)).await;
    let post = r.sent_to(POST, &comment("post", slot)).await;
    println!(
        "crash figures: scripts killed at the first fallback create after a failed freeze: daemon runs {runs}, pre \
         scripts per instance {pre:?}, post scripts per instance {post:?}, slot snapshots {} for {} volumes",
        r.slot_snapshot_count(slot).await,
        r.volumes.len()
    );
    for i in &r.instances {
        assert_eq!(
            (pre[i], post[i]),
            (2, 2),
            "{i}: {:#?}\n{logs}",
            r.sent().await
        );
    }
    let seen = r.agent.commands();
    for i in &r.instances {
        let last = |doc: &str| {
            seen.iter()
                .rposition(|c| c.document == doc && c.instance_ids.contains(i))
                .unwrap()
        };
        assert!(
            last(PRE) < last(POST),
            "{i}: no thaw after the last freeze: {seen:#?}"
        );
    }
    let by = r.slot_snapshots(slot).await;
    let mut consistent = Vec::new();
    for v in &r.volumes {
        let snaps = by.get(v).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(snaps.len(), 1, "volume {v}: {by:#?}\n{logs}");
        consistent.push(snaps[0]["snapwarden:app-consistent"].clone());
    }
    consistent.sort();
    assert_eq!(
        consistent,
        ["false", "true", "true", "true", "true", "true"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_killed_after_a_failed_freeze_was_thawed_the_restart_freezes_and_thaws_again() {
    scripts_killed_after_a_failed_freeze_was_thawed(44, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_killed_again_while_the_second_freeze_runs_the_third_start_awaits_it_and_thaws_once_more(
) {
    scripts_killed_after_a_failed_freeze_was_thawed(45, true).await;
}
