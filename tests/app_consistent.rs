//! Application-consistent snapshots end to end: the daemon's own SDK backends (built from a TOML config by
//! `daemon::aws_regions_paced`, `aws.endpoint-url` naming the SSM agent stand-in) drive `worker::run` against a real
//! moto, with the stand-in (`tests/common/ssm_agent.rs`) playing the instances: it runs `AWSEC2-CreateVssSnapshot`
//! (one snapshot per attached volume in moto, with the document's own `Device`/`AppConsistent`/`AwsVssConfig`
//! tags) and answers invocations by rule. Every outcome is read back from moto itself: the snapshots with
//! DescribeSnapshots, the requests with moto's ListCommands (document, parameters, comment; instance ids as the
//! stand-in saw them sent, sorted), so a tag or parameter the code forgot shows up here, whatever the run report
//! says.
//!
//! Commands are polled every 50 ms rising to 250 ms instead of the daemon's 1 s to 5 s, so a test takes seconds;
//! the one exception waits out a pre script's 10 s timeout, the shortest the config accepts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use common::fault_proxy::{Fault, FaultProxy, Rule as FaultRule, When};
use common::ssm_agent::{
    parse_tags, End, Reply, Rule, SsmAgent, VSS_CONFIG_TAG, VSS_DOCUMENT, VSS_RESERVED_TAGS,
};
use common::Recorder;
use common::{
    filter, launch_instance, managed_tags, metric, metric_sum, moto_snapshot, Moto, ACCOUNT, REGION,
};
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::pace::PaceConfig;
use snapwarden::ec2::{
    TAG_APP_CONSISTENT, TAG_INSTANCE, TAG_MANAGED, TAG_POLICY, TAG_SCHEDULE, TAG_SLOT,
};
use snapwarden::notify::{self, Notifier, Publisher};
use snapwarden::report::{Problem, RunReport, RunResult};
use snapwarden::retention::Action;
use snapwarden::schedule::format_slot;
use snapwarden::ssm::batch::Polling;
use snapwarden::worker::{self, Completion, Outcome, Region};

/// A Saturday: `0 3 * * *` and `0 3 * * 6` both fire.
const SLOT: &str = "2026-11-21T03:00:00Z";
/// The root device of moto's instances (no AMI is loaded).
const BOOT: &str = "/dev/sda1";
const PRE: &str = "snapwarden-fsfreeze";
const POST: &str = "snapwarden-thaw";
const MOUNTS: &str = "/data /var/lib/postgresql";
const FAST: Polling = Polling {
    first: Duration::from_millis(50),
    max: Duration::from_millis(250),
};

fn slot() -> DateTime<Utc> {
    common::slot(SLOT)
}

/// The slot `days` daily fires before [`SLOT`], as tag text.
fn days_before(days: i64) -> String {
    format_slot(slot() - chrono::Duration::days(days))
}

/// A VSS policy of the instances tagged `Backup = name`, one daily schedule keeping `keep`; `vss`: the lines of
/// `[policy.vss]`.
fn vss_policy(name: &str, vss: &str, keep: &str) -> String {
    format!(
        r#"[[policy]]
name = "{name}"
target = {{ resource = "instance", tags = {{ Backup = "{name}" }} }}
consistency = "vss"
[policy.vss]
{vss}
[[policy.schedule]]
name = "daily"
cron = "0 3 * * *"
keep = {{ {keep} }}
"#
    )
}

/// A policy with the freeze and thaw scripts around ordinary snapshots; `pre`: extra lines of its pre script.
fn scripts_policy(name: &str, pre: &str) -> String {
    format!(
        r#"[[policy]]
name = "{name}"
target = {{ resource = "instance", tags = {{ Backup = "{name}" }} }}
[policy.scripts]
on-failure = "crash-consistent"
[policy.scripts.pre]
document = "{PRE}"
parameters = {{ MountPoints = "{MOUNTS}", AutoThawSeconds = "60" }}
{pre}
[policy.scripts.post]
document = "{POST}"
parameters = {{ MountPoints = "{MOUNTS}" }}
[[policy.schedule]]
name = "daily"
cron = "0 3 * * *"
keep = {{ last = 7 }}
"#
    )
}

/// moto, the stand-in in front of it, and the daemon's region through the stand-in (or a fault proxy in front of
/// it).
struct Bed {
    _moto: Moto,
    agent: SsmAgent,
    proxy: Option<FaultProxy>,
    /// Raw EC2 straight to moto: what the tests seed and read snapshots back with.
    ec2: aws_sdk_ec2::Client,
    /// Raw SSM through the stand-in, for moto's ListCommands with the instance ids each command named (moto's own
    /// list names every instance of the region; see `ssm_agent.rs`).
    ssm: aws_sdk_ssm::Client,
    shared: Shared,
    region: Arc<Region>,
}

async fn bed(policies: &str) -> Bed {
    bed_with(policies, false).await
}

/// `proxied`: the daemon reaches the stand-in through a fault proxy, which starts with no rules.
async fn bed_with(policies: &str, proxied: bool) -> Bed {
    let moto = Moto::start();
    let agent = SsmAgent::start(moto.port);
    let proxy = proxied.then(|| FaultProxy::start(agent.port, 14));
    let endpoint = proxy.as_ref().map_or(&agent.endpoint, |p| &p.endpoint);
    let text = format!(
        "[aws]\nendpoint-url = \"{endpoint}\"\nregions = [\"{REGION}\"]\nmax-attempts = 2\n\n{policies}"
    );
    let shared = Shared::new(
        config::from_toml_str(Path::new("app_consistent.toml"), &text, &[])
            .unwrap_or_else(|e| panic!("test config is valid: {e}")),
    );
    // moto has no rate limits: the daemon's pacing code with a larger budget, so 120 snapshots tag quickly.
    let pace = PaceConfig {
        budget_fraction: 20.0,
        ..daemon::pace_config(&shared.config)
    };
    let region = daemon::aws_regions_paced(&shared, &pace)
        .await
        .expect("the daemon's region through the stand-in")
        .remove(0);
    assert_eq!(region.account_id, ACCOUNT);
    Bed {
        ec2: moto.ec2().await,
        ssm: aws_sdk_ssm::Client::new(&common::sdk_config(&agent.endpoint).await),
        _moto: moto,
        agent,
        proxy,
        shared,
        region,
    }
}

/// A command as moto recorded it.
#[derive(Debug, Clone)]
struct Sent {
    document: String,
    parameters: BTreeMap<String, Vec<String>>,
    /// Sorted.
    instances: Vec<String>,
    comment: String,
}

impl Sent {
    fn param(&self, name: &str) -> &str {
        self.parameters
            .get(name)
            .and_then(|v| v.first())
            .map_or("", String::as_str)
    }
}

/// A snapshot in moto.
#[derive(Debug, Clone)]
struct Snap {
    id: String,
    volume: String,
    tags: BTreeMap<String, String>,
}

impl Snap {
    fn tag(&self, key: &str) -> &str {
        self.tags.get(key).map_or("", String::as_str)
    }
}

impl Bed {
    /// One run of `policy` at [`SLOT`] with all its schedules (every one here fires then), as the daemon runs it,
    /// polling fast.
    async fn run(&self, policy: &str) -> Outcome {
        let policy = self.shared.config.policy(policy).expect("policy in config");
        let ssm = self.region.ssm.as_deref().expect("SDK regions have SSM");
        let spec = self
            .region
            .spec(policy, slot())
            .ssm(ssm, FAST)
            .completion(Completion::within(Duration::from_secs(30)))
            .explain(true);
        worker::run(
            self.region.ec2.as_ref(),
            &spec,
            &self.shared.metrics,
            Utc::now,
        )
        .await
    }

    /// The commands moto recorded, in the order moto lists them.
    async fn sent(&self) -> Vec<Sent> {
        let out = self
            .ssm
            .list_commands()
            .send()
            .await
            .expect("ListCommands on moto");
        out.commands()
            .iter()
            .map(|c| {
                let mut instances = c.instance_ids().to_vec();
                instances.sort();
                Sent {
                    document: c.document_name().unwrap_or_default().to_string(),
                    parameters: c
                        .parameters()
                        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    instances,
                    comment: c.comment().unwrap_or_default().to_string(),
                }
            })
            .collect()
    }

    async fn sent_of(&self, document: &str) -> Vec<Sent> {
        let mut all = self.sent().await;
        all.retain(|c| c.document == document);
        all
    }

    /// Every snapshot of `volumes` in moto, by volume then slot.
    async fn snapshots(&self, volumes: &[String]) -> Vec<Snap> {
        let ids: Vec<&str> = volumes.iter().map(String::as_str).collect();
        let out = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("volume-id", &ids))
            .send()
            .await
            .expect("DescribeSnapshots on moto");
        let mut all: Vec<Snap> = out
            .snapshots()
            .iter()
            .map(|s| Snap {
                id: s.snapshot_id().unwrap().to_string(),
                volume: s.volume_id().unwrap().to_string(),
                tags: s
                    .tags()
                    .iter()
                    .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
                    .collect(),
            })
            .collect();
        all.sort_by(|a, b| (&a.volume, a.tag(TAG_SLOT)).cmp(&(&b.volume, b.tag(TAG_SLOT))));
        all
    }

    /// The snapshots of `volumes` with this slot's tag.
    async fn of_this_slot(&self, volumes: &[String]) -> Vec<Snap> {
        let mut all = self.snapshots(volumes).await;
        all.retain(|s| s.tag(TAG_SLOT) == SLOT);
        all
    }

    /// An instance tagged `Backup = policy` with a volume on each of `devices`.
    async fn instance(&self, policy: &str, devices: &[&str]) -> (String, Vec<String>) {
        launch_instance(&self.ec2, &[("Backup", policy)], devices).await
    }

    /// A managed snapshot of `volume` from an earlier slot, app-consistent or a fallback.
    async fn seed(&self, volume: &str, policy: &str, slot: &str, consistent: bool) -> String {
        let mut tags = managed_tags(policy, "daily", slot).to_vec();
        tags.push((
            TAG_APP_CONSISTENT,
            if consistent { "true" } else { "false" },
        ));
        moto_snapshot(&self.ec2, volume, &tags).await
    }
}

/// The problems of `report` about `resource`.
fn problems_of<'a>(report: &'a RunReport, resource: &str) -> Vec<&'a Problem> {
    report
        .problems
        .iter()
        .filter(|p| p.resource == resource)
        .collect()
}

/// The one problem about `resource`, as (operation, code), with its message.
fn problem(report: &RunReport, resource: &str) -> ((&'static str, String), String) {
    let found = problems_of(report, resource);
    let [p] = found.as_slice() else {
        panic!("one problem about {resource}: {:#?}", report.problems)
    };
    ((p.operation, p.code.clone()), p.message.clone())
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vss_success_is_one_tagged_snapshot_per_volume_made_by_the_document_and_retention_counts_it(
) {
    let policy = r#"[[policy]]
name = "sql"
target = { resource = "instance", tags = { Backup = "sql" } }
consistency = "vss"
[policy.vss]
copy-only = true
timeout = "5m"
[[policy.schedule]]
name = "daily"
cron = "0 3 * * *"
keep = { last = 2 }
[[policy.schedule]]
name = "weekly"
cron = "0 3 * * 6"
keep = { last = 4 }
"#;
    let b = bed(policy).await;
    let (a, a_vols) = b.instance("sql", &[BOOT, "/dev/sdf"]).await;
    let (c, c_vols) = b.instance("sql", &[BOOT, "/dev/sdf", "/dev/sdg"]).await;
    let volumes: Vec<String> = a_vols.iter().chain(&c_vols).cloned().collect();
    // Two earlier daily snapshots of every volume: `last = 2` keeps the new one and the newer of them.
    for v in &volumes {
        b.seed(v, "sql", &days_before(1), true).await;
        b.seed(v, "sql", &days_before(2), true).await;
    }

    let out = b.run("sql").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!(
        (r.targeted_volumes, r.created, r.app_consistent, r.fallback),
        (5, 5, 5, 0)
    );
    assert_eq!(r.deleted, 5, "one expired daily snapshot per volume");

    // The request, as moto recorded it: one VSS command for both instances, snapwarden's tags in `tags`.
    let sent = b.sent().await;
    let [vss] = sent.as_slice() else {
        panic!("one command: {sent:#?}")
    };
    assert_eq!(vss.document, VSS_DOCUMENT);
    assert_eq!(vss.instances, sorted(&[&a, &c]));
    assert_eq!(vss.comment, format!("snapwarden vss {SLOT} sql"));
    assert_eq!(
        (
            vss.param("ExcludeBootVolume"),
            vss.param("CopyOnly"),
            vss.param("NoWriters"),
            vss.param("executionTimeout"),
        ),
        ("False", "True", "False", "300")
    );
    assert!(vss.param("description").contains("sql"), "{vss:?}");
    let tags: BTreeMap<String, String> = parse_tags(vss.param("tags"))
        .expect("the tags parameter parses as the document reads it")
        .into_iter()
        .collect();
    let want: BTreeMap<String, String> = [
        (TAG_MANAGED, "true"),
        (TAG_POLICY, "sql"),
        (TAG_SCHEDULE, "daily+weekly"),
        (TAG_SLOT, SLOT),
        (TAG_APP_CONSISTENT, "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(tags, want);
    assert!(tags
        .keys()
        .all(|k| !VSS_RESERVED_TAGS.contains(&k.as_str())));

    // One snapshot per volume, each made by the document (its own tags), none by CreateSnapshot(s).
    let made = b.of_this_slot(&volumes).await;
    assert_eq!(
        made.iter()
            .map(|s| s.volume.clone())
            .collect::<BTreeSet<_>>(),
        volumes.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(made.len(), 5, "no second snapshot of any volume: {made:#?}");
    for s in &made {
        for (k, v) in &want {
            assert_eq!(s.tag(k), v, "{k} on {s:?}");
        }
        assert_eq!(s.tag("AppConsistent"), "true", "{s:?}");
        assert_eq!(s.tag("AwsVssConfig"), VSS_CONFIG_TAG, "{s:?}");
        assert!(s.tag("Device").starts_with("/dev/"), "{s:?}");
        // The per-volume tags the document's one tag set cannot carry, added by the run afterwards.
        let owner = if a_vols.contains(&s.volume) { &a } else { &c };
        assert_eq!(s.tag(TAG_INSTANCE), owner, "{s:?}");
    }
    assert_eq!(b.agent.count("SendCommand"), 1);
    // The daemon's own count of its calls agrees: no create call of its own, one SendCommand.
    let text = b.shared.metrics.render(Utc::now());
    let calls = |op: &str| metric_sum(&text, "snapwarden_aws_requests_total", &[("operation", op)]);
    assert_eq!(calls("CreateSnapshot").unwrap_or(0.0), 0.0);
    assert_eq!(calls("CreateSnapshots").unwrap_or(0.0), 0.0);
    assert_eq!(calls("SendCommand"), Some(1.0));
    let kind = |kind: &str| {
        metric(
            &text,
            "snapwarden_app_consistent_snapshots_total",
            &[("policy", "sql"), ("kind", kind)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((kind("app-consistent"), kind("fallback")), (5.0, 0.0));

    // Retention saw the new snapshots: each is kept by `last` of both schedules, and the day-2 snapshot went.
    for s in &made {
        let d = out
            .plan
            .iter()
            .find(|d| *d.snapshot_id == s.id)
            .unwrap_or_else(|| panic!("{} is in the plan", s.id));
        let reasons: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
        assert_eq!(d.action, Action::Keep);
        assert!(reasons.contains(&"last"), "{reasons:?}");
    }
    let left = b.snapshots(&volumes).await;
    for v in &volumes {
        let slots: Vec<&str> = left
            .iter()
            .filter(|s| &s.volume == v)
            .map(|s| s.tag(TAG_SLOT))
            .collect();
        assert_eq!(slots, [days_before(1).as_str(), SLOT], "{v}");
    }
}

/// The instances whose VSS command fails, one per way it fails, and the one whose succeeds; the rules saying so.
struct Failing {
    ok: (String, Vec<String>),
    missing: (String, Vec<String>),
    timed_out: (String, Vec<String>),
    undelivered: (String, Vec<String>),
}

impl Failing {
    async fn launch(b: &Bed, policy: &str) -> Failing {
        let f = Failing {
            ok: b.instance(policy, &[BOOT, "/dev/sdf"]).await,
            missing: b.instance(policy, &[BOOT, "/dev/sdf"]).await,
            timed_out: b.instance(policy, &[BOOT]).await,
            undelivered: b.instance(policy, &[BOOT]).await,
        };
        b.agent.set_rules(vec![
            Rule::instance(
                &f.missing.0,
                Reply::failed(
                    1,
                    "Cannot create VSS snapshot: the AwsVssComponents package is not installed",
                ),
            )
            .document(VSS_DOCUMENT),
            Rule::instance(&f.timed_out.0, Reply::ends(End::TimedOut)).document(VSS_DOCUMENT),
            Rule::instance(&f.undelivered.0, Reply::ends(End::Undeliverable))
                .document(VSS_DOCUMENT),
        ]);
        f
    }

    fn failed(&self) -> [&(String, Vec<String>); 3] {
        [&self.missing, &self.timed_out, &self.undelivered]
    }

    fn volumes(&self) -> Vec<String> {
        [&self.ok, &self.missing, &self.timed_out, &self.undelivered]
            .iter()
            .flat_map(|(_, v)| v.clone())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_vss_falls_back_to_crash_consistent_snapshots_and_the_alert_says_which_instance_and_why(
) {
    let b = bed(&vss_policy(
        "win",
        "on-failure = \"crash-consistent\"",
        "last = 7",
    ))
    .await;
    let f = Failing::launch(&b, "win").await;
    let recorder = Arc::new(Recorder::default());
    let (notifier, task) = Notifier::spawn(
        Some(recorder.clone() as Arc<dyn Publisher>),
        Duration::from_secs(3600),
        b.shared.metrics.clone(),
    );

    let out = b.run("win").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!(
        (r.created, r.app_consistent, r.fallback, r.failed_volumes()),
        (6, 2, 4, 0)
    );
    let causes = [
        (&f.missing.0, "vss-components-missing", "AwsVssComponents"),
        (&f.timed_out.0, "timed-out", "did not finish"),
        (&f.undelivered.0, "not-managed", "not managed by SSM"),
    ];
    for (instance, code, words) in causes {
        let ((operation, got), message) = problem(r, instance);
        assert_eq!((operation, got.as_str()), ("vss", code));
        assert!(message.contains(words), "{message}");
        assert!(message.contains("crash-consistent"), "{message}");
    }

    // In moto: the good instance's volumes by the document, the others' by CreateSnapshots, tagged as fallbacks.
    let made = b.of_this_slot(&f.volumes()).await;
    assert_eq!(made.len(), 6, "one snapshot per volume: {made:#?}");
    for s in &made {
        let consistent = f.ok.1.contains(&s.volume);
        assert_eq!(
            s.tag(TAG_APP_CONSISTENT),
            if consistent { "true" } else { "false" },
            "{s:?}"
        );
        assert_eq!(s.tags.contains_key("AwsVssConfig"), consistent, "{s:?}");
        assert_eq!(s.tag(TAG_SCHEDULE), "daily", "{s:?}");
    }
    let text = b.shared.metrics.render(Utc::now());
    let invocations = |outcome: &str| {
        metric(
            &text,
            "snapwarden_ssm_invocations_total",
            &[
                ("policy", "win"),
                ("document", VSS_DOCUMENT),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(invocations("success"), Some(1.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "snapwarden_app_consistent_snapshots_total",
            &[("policy", "win"), ("kind", "fallback")],
        ),
        Some(4.0)
    );
    // One VSS command named all four; the failures were not sent it again.
    let sent = b.sent().await;
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(
        sent[0].instances,
        sorted(&[&f.ok.0, &f.missing.0, &f.timed_out.0, &f.undelivered.0])
    );

    // The alert names each instance and says in words what to fix.
    notifier.submit(out.report.clone(), &b.shared.metrics);
    drop(notifier);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("notifier drains")
        .unwrap();
    let sent = recorder.sent.lock().unwrap().clone();
    let [alert] = sent.as_slice() else {
        panic!("one alert: {sent:#?}")
    };
    assert!(
        alert.subject.starts_with("snapwarden PARTIAL win/daily"),
        "{}",
        alert.subject
    );
    let summary = alert.body.split("--- JSON ---").next().unwrap();
    for (instance, code, words) in causes {
        let line = summary
            .lines()
            .find(|l| l.contains(instance.as_str()))
            .unwrap_or_else(|| panic!("{instance} in the summary:\n{summary}"));
        assert!(line.contains(code) && line.contains(words), "{line}");
    }
    let (_, advice) = summary.split_once("What to do:").unwrap();
    let (advice, _) = advice.split_once("Problems:").unwrap();
    for (code, words) in [
        ("not-managed", "AmazonSSMManagedInstanceCore"),
        ("vss-components-missing", "AWS-ConfigureAWSPackage"),
        ("timed-out", "timeout"),
    ] {
        assert!(
            advice
                .lines()
                .any(|l| l.starts_with(&format!("- {code}: ")) && l.contains(words)),
            "{code}: {advice}"
        );
    }
    assert!(
        !summary.contains(&f.ok.0),
        "the good instance is not named:\n{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_vss_with_skip_takes_no_snapshot_and_fails_the_instances_volumes() {
    let b = bed(&vss_policy("win", "on-failure = \"skip\"", "last = 7")).await;
    let f = Failing::launch(&b, "win").await;
    // An earlier snapshot of a failing volume is not touched by a run that failed it.
    let earlier = b.seed(&f.missing.1[1], "win", &days_before(9), true).await;

    let out = b.run("win").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!(
        (r.created, r.app_consistent, r.fallback, r.failed_volumes()),
        (2, 2, 0, 4)
    );
    for (instance, code) in [
        (&f.missing, "vss-components-missing"),
        (&f.timed_out, "timed-out"),
        (&f.undelivered, "not-managed"),
    ] {
        assert!(problems_of(r, &instance.0).is_empty(), "{r:#?}");
        for v in &instance.1 {
            let ((operation, got), message) = problem(r, v);
            assert_eq!((operation, got.as_str()), ("create", code));
            assert!(message.contains(&instance.0), "{message}");
            assert!(message.contains("skip"), "{message}");
        }
    }
    let made = b.of_this_slot(&f.volumes()).await;
    assert_eq!(
        made.iter()
            .map(|s| s.volume.clone())
            .collect::<BTreeSet<_>>(),
        f.ok.1.iter().cloned().collect::<BTreeSet<_>>(),
        "only the good instance has snapshots: {made:#?}"
    );
    assert!(made.iter().all(|s| s.tag(TAG_APP_CONSISTENT) == "true"));
    for (_, vols) in f.failed() {
        assert!(b.of_this_slot(vols).await.is_empty());
    }
    assert_eq!(b.snapshots(&f.missing.1).await.len(), 1);
    assert!(b.snapshots(&f.missing.1).await[0].id == earlier);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_hold_the_instance_around_its_snapshot_a_failed_pre_falls_back_and_a_failed_post_leaves_it(
) {
    let b = bed(&scripts_policy("pg", "")).await;
    let ok = b.instance("pg", &[BOOT, "/dev/sdf"]).await;
    let thaw_fails = b.instance("pg", &[BOOT, "/dev/sdf"]).await;
    let freeze_fails = b.instance("pg", &[BOOT]).await;
    let undelivered = b.instance("pg", &[BOOT]).await;
    b.agent.set_rules(vec![
        Rule::instance(
            &thaw_fails.0,
            Reply::failed(1, "fsfreeze --unfreeze /data: Invalid argument"),
        )
        .document(POST),
        Rule::instance(
            &freeze_fails.0,
            Reply::failed(1, "fsfreeze: /data: Device or resource busy"),
        )
        .document(PRE),
        Rule::instance(&undelivered.0, Reply::ends(End::Undeliverable)).document(PRE),
    ]);

    let out = b.run("pg").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!(
        (r.created, r.app_consistent, r.fallback, r.failed_volumes()),
        (6, 4, 2, 0)
    );
    let ((operation, code), message) = problem(r, &thaw_fails.0);
    assert_eq!((operation, code.as_str()), ("post", "script-failed"));
    assert!(message.contains("Invalid argument"), "{message}");
    let ((operation, code), message) = problem(r, &freeze_fails.0);
    assert_eq!((operation, code.as_str()), ("pre", "script-failed"));
    assert!(
        message.contains("exited with code 1: fsfreeze: /data: Device or resource busy"),
        "{message}"
    );
    let ((operation, code), _) = problem(r, &undelivered.0);
    assert_eq!((operation, code.as_str()), ("pre", "not-managed"));
    assert!(problems_of(r, &ok.0).is_empty());
    // The alert names the instances and what went wrong with each script.
    let alert = notify::digest(r).body;
    let summary = alert.split("--- JSON ---").next().unwrap();
    for (instance, words) in [
        (&thaw_fails.0, "post"),
        (&freeze_fails.0, "Device or resource busy"),
        (&undelivered.0, "not-managed"),
    ] {
        assert!(
            summary
                .lines()
                .any(|l| l.contains(instance.as_str()) && l.contains(words)),
            "{instance} {words}:\n{summary}"
        );
    }
    assert!(!summary.contains(&ok.0), "{summary}");

    // The snapshot of the instance whose thaw failed stands, consistent: the freeze held while it was taken.
    let all: Vec<String> = [&ok, &thaw_fails, &freeze_fails, &undelivered]
        .iter()
        .flat_map(|(_, v)| v.clone())
        .collect();
    let made = b.of_this_slot(&all).await;
    assert_eq!(made.len(), 6, "{made:#?}");
    for s in &made {
        let consistent = ok.1.contains(&s.volume) || thaw_fails.1.contains(&s.volume);
        assert_eq!(
            s.tag(TAG_APP_CONSISTENT),
            if consistent { "true" } else { "false" },
            "{s:?}"
        );
        assert!(!s.tags.contains_key("AwsVssConfig"), "no VSS here: {s:?}");
    }

    // The requests: the freeze to all four, the thaw wherever the freeze may have run (not where it was never
    // delivered), each with its own parameters; no VSS command.
    let pre = b.sent_of(PRE).await;
    let [pre] = pre.as_slice() else {
        panic!("one pre command: {pre:#?}")
    };
    assert_eq!(
        pre.instances,
        sorted(&[&ok.0, &thaw_fails.0, &freeze_fails.0, &undelivered.0])
    );
    assert_eq!(
        pre.parameters,
        BTreeMap::from([
            ("AutoThawSeconds".to_string(), vec!["60".to_string()]),
            ("MountPoints".to_string(), vec![MOUNTS.to_string()]),
        ])
    );
    assert_eq!(pre.comment, format!("snapwarden pre {SLOT} pg"));
    let post = b.sent_of(POST).await;
    let [post] = post.as_slice() else {
        panic!("one post command: {post:#?}")
    };
    assert_eq!(
        post.instances,
        sorted(&[&ok.0, &thaw_fails.0, &freeze_fails.0])
    );
    assert_eq!(
        post.parameters,
        BTreeMap::from([("MountPoints".to_string(), vec![MOUNTS.to_string()])])
    );
    assert!(b.sent_of(VSS_DOCUMENT).await.is_empty());
    let order: Vec<String> = b
        .agent
        .commands()
        .iter()
        .map(|c| c.document.clone())
        .collect();
    assert_eq!(order, [PRE, POST]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_script_still_running_at_its_timeout_falls_back_and_still_gets_its_post() {
    // 10 s is the shortest timeout the config accepts: this test waits it out.
    let b = bed(&scripts_policy("pg", "timeout = \"10s\"")).await;
    let stuck = b.instance("pg", &[BOOT, "/dev/sdf"]).await;
    let quick = b.instance("pg", &[BOOT]).await;
    b.agent.set_rules(vec![Rule::instance(
        &stuck.0,
        Reply::success().in_progress(1_000_000),
    )
    .document(PRE)]);

    let out = b.run("pg").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!((r.created, r.app_consistent, r.fallback), (3, 1, 2));
    let ((operation, code), message) = problem(r, &stuck.0);
    assert_eq!((operation, code.as_str()), ("pre", "timed-out"));
    assert!(message.contains("did not finish within 10s"), "{message}");
    assert!(problems_of(r, &quick.0).is_empty(), "{r:#?}");

    let made = b
        .of_this_slot(&[stuck.1.clone(), quick.1.clone()].concat())
        .await;
    assert_eq!(made.len(), 3, "{made:#?}");
    for s in &made {
        let want = if quick.1.contains(&s.volume) {
            "true"
        } else {
            "false"
        };
        assert_eq!(s.tag(TAG_APP_CONSISTENT), want, "{s:?}");
    }
    // The freeze may still be running there: the thaw goes to both.
    let post = b.sent_of(POST).await;
    assert_eq!(post.len(), 1, "{post:#?}");
    assert_eq!(post[0].instances, sorted(&[&stuck.0, &quick.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_ssm_does_not_list_yet_are_waited_for() {
    let b = bed(&format!(
        "{}\n{}",
        vss_policy("win", "", "last = 7"),
        scripts_policy("pg", "")
    ))
    .await;
    let (win, win_vols) = b.instance("win", &[BOOT, "/dev/sdf"]).await;
    let (pg, pg_vols) = b.instance("pg", &[BOOT]).await;
    // Right after SendCommand SSM may answer as if the invocation did not exist: three polls of each command.
    b.agent
        .set_rules(vec![Rule::any(Reply::success().missing(3))]);

    let out = b.run("win").await;
    assert_eq!(out.report.result(), RunResult::Success, "{:#?}", out.report);
    assert_eq!((out.report.created, out.report.app_consistent), (2, 2));
    let made = b.of_this_slot(&win_vols).await;
    assert_eq!(made.len(), 2);
    assert!(made.iter().all(|s| s.tag("AwsVssConfig") == VSS_CONFIG_TAG));

    let out = b.run("pg").await;
    assert_eq!(out.report.result(), RunResult::Success, "{:#?}", out.report);
    assert_eq!((out.report.created, out.report.app_consistent), (1, 1));
    assert_eq!(
        b.of_this_slot(&pg_vols).await[0].tag(TAG_APP_CONSISTENT),
        "true"
    );

    // Three commands (VSS, pre, post), each polled past its three missing answers.
    let polls = b.agent.count("ListCommandInvocations");
    assert!(polls >= 3 * 4, "{polls} polls");
    let sent = b.sent().await;
    assert_eq!(sent.len(), 3, "nothing sent twice: {sent:#?}");
    assert!(sent
        .iter()
        .all(|c| c.instances == [win.clone()] || c.instances == [pg.clone()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_slot_run_twice_sends_no_second_command_and_makes_no_duplicate() {
    let b = bed(&format!(
        "{}\n{}",
        vss_policy("win", "", "last = 7"),
        scripts_policy("pg", "")
    ))
    .await;
    let (_, win_vols) = b.instance("win", &[BOOT, "/dev/sdf"]).await;
    let (_, pg_vols) = b.instance("pg", &[BOOT, "/dev/sdf"]).await;
    let volumes = [win_vols, pg_vols].concat();

    for policy in ["win", "pg"] {
        let first = b.run(policy).await;
        assert_eq!(
            first.report.result(),
            RunResult::Success,
            "{:#?}",
            first.report
        );
        assert_eq!(first.report.created, 2);
    }
    let sent = b.sent().await;
    assert_eq!(sent.len(), 3, "VSS, pre, post: {sent:#?}");
    let before: Vec<String> = b
        .of_this_slot(&volumes)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(before.len(), 4);

    for policy in ["win", "pg"] {
        let again = b.run(policy).await;
        let r = &again.report;
        assert_eq!(r.result(), RunResult::Success, "{r:#?}");
        assert_eq!((r.created, r.already_done, r.deleted), (0, 2, 0));
    }
    assert_eq!(b.sent().await.len(), 3, "no second command");
    assert_eq!(b.agent.count("SendCommand"), 3);
    let after: Vec<String> = b
        .of_this_slot(&volumes)
        .await
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(after, before, "no duplicate snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_instances_go_out_in_two_vss_commands_and_every_volume_gets_its_snapshot() {
    use aws_sdk_ec2::types::{
        BlockDeviceMapping, EbsBlockDevice, InstanceType, ResourceType, Tag, TagSpecification,
    };
    let b = bed(&vss_policy("fleet", "", "last = 7")).await;
    let mut launch = b
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(60)
        .max_count(60)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("Backup").value("fleet").build())
                .build(),
        );
    for device in [BOOT, "/dev/sdf"] {
        launch = launch.block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(device)
                .ebs(EbsBlockDevice::builder().volume_size(8).build())
                .build(),
        );
    }
    let out = launch.send().await.expect("RunInstances");
    let mut instances: Vec<String> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    instances.sort();
    assert_eq!(instances.len(), 60);
    let ids: Vec<&str> = instances.iter().map(String::as_str).collect();
    let volumes: Vec<String> = b
        .ec2
        .describe_volumes()
        .filters(filter("attachment.instance-id", &ids))
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes()
        .iter()
        .filter_map(|v| v.volume_id().map(str::to_string))
        .collect();
    assert_eq!(volumes.len(), 120);

    let out = b.run("fleet").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!((r.created, r.app_consistent, r.fallback), (120, 120, 0));

    let sent = b.sent_of(VSS_DOCUMENT).await;
    let mut sizes: Vec<usize> = sent.iter().map(|c| c.instances.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [10, 50]);
    let mut named: Vec<String> = sent.iter().flat_map(|c| c.instances.clone()).collect();
    named.sort();
    assert_eq!(named, instances, "each instance in exactly one command");
    let made = b.of_this_slot(&volumes).await;
    assert_eq!(made.len(), 120);
    assert_eq!(
        made.iter()
            .map(|s| &s.volume)
            .collect::<BTreeSet<_>>()
            .len(),
        120,
        "one per volume"
    );
    assert!(made
        .iter()
        .all(|s| s.tag("AwsVssConfig") == VSS_CONFIG_TAG && s.tag(TAG_APP_CONSISTENT) == "true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_consistent_only_counts_consistent_snapshots_and_a_volumes_newest_fallback_survives() {
    let b = bed(&vss_policy(
        "win",
        "",
        "last = 2, app-consistent-only = true",
    ))
    .await;
    let (_, good) = b.instance("win", &[BOOT]).await;
    let (bad, bad_vols) = b.instance("win", &[BOOT]).await;
    b.agent.set_rules(vec![Rule::instance(
        &bad,
        Reply::failed(1, "AwsVssComponents is not installed"),
    )
    .document(VSS_DOCUMENT)]);
    let (good, bad_vol) = (good[0].clone(), bad_vols[0].clone());
    // (volume, days before, app-consistent)
    let history = [
        (&good, 1, true),
        (&good, 2, false),
        (&good, 3, true),
        (&bad_vol, 1, false),
        (&bad_vol, 2, true),
        (&bad_vol, 3, true),
        (&bad_vol, 4, false),
    ];
    let mut seeded = BTreeMap::new();
    for (v, d, consistent) in history {
        let id = b.seed(v, "win", &days_before(d), consistent).await;
        seeded.insert((v.clone(), d), id);
    }

    let out = b.run("win").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!(
        (r.app_consistent, r.fallback, r.deleted),
        (1, 1, 4),
        "{r:#?}"
    );

    // The good volume: its new snapshot and the newest consistent one are the two `last` counts; the fallback
    // between them counts for nothing. The bad volume: its two newest consistent ones, and its new fallback as
    // the volume's newest snapshot.
    let left = |v: &String, all: &[Snap]| -> Vec<String> {
        all.iter()
            .filter(|s| &s.volume == v)
            .map(|s| s.tag(TAG_SLOT).to_string())
            .collect()
    };
    let all = b.snapshots(&[good.clone(), bad_vol.clone()]).await;
    assert_eq!(left(&good, &all), [days_before(1), SLOT.to_string()]);
    assert_eq!(
        left(&bad_vol, &all),
        [days_before(3), days_before(2), SLOT.to_string()]
    );
    let reasons = |id: &str| -> (Action, Vec<&'static str>) {
        let d = out
            .plan
            .iter()
            .find(|d| &*d.snapshot_id == id)
            .unwrap_or_else(|| panic!("{id} in the plan"));
        (d.action, d.reasons.iter().map(|r| r.as_str()).collect())
    };
    for (key, want) in [
        (
            (good.clone(), 2),
            (Action::Delete, vec!["not-app-consistent"]),
        ),
        ((good.clone(), 3), (Action::Delete, vec!["expired"])),
        (
            (bad_vol.clone(), 1),
            (Action::Delete, vec!["not-app-consistent"]),
        ),
        (
            (bad_vol.clone(), 4),
            (Action::Delete, vec!["not-app-consistent"]),
        ),
    ] {
        assert_eq!(reasons(&seeded[&key]), want, "{key:?}");
    }
    let fallback = all
        .iter()
        .find(|s| s.volume == bad_vol && s.tag(TAG_SLOT) == SLOT)
        .unwrap();
    assert_eq!(fallback.tag(TAG_APP_CONSISTENT), "false");
    let (action, why) = reasons(&fallback.id);
    assert_eq!(
        (action, why.contains(&"newest")),
        (Action::Keep, true),
        "{why:?}"
    );

    // `plan --json` says per row whether the snapshot is application-consistent, as its tag does.
    let now = Utc::now();
    let gathered = snapwarden::plan::gather(
        std::slice::from_ref(&b.region),
        &snapwarden::plan::Request {
            new: &b.shared.config,
            current: None,
            policy: Some("win"),
            at: now,
            now,
        },
    )
    .await
    .expect("plan gathers");
    let shown = snapwarden::plan::output(&gathered, now, false, true).expect("plan JSON");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(rows.len(), all.len(), "{rows:#?}");
    for s in &all {
        let row = rows
            .iter()
            .find(|row| row["snapshot_id"] == s.id.as_str())
            .unwrap_or_else(|| panic!("a row for {}", s.id));
        assert_eq!(
            row["app_consistent"].as_bool(),
            Some(s.tag(TAG_APP_CONSISTENT) == "true"),
            "{row}"
        );
        assert_eq!(row["action"], "keep", "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_ssm_does_not_manage_falls_back_alone_and_its_batch_still_gets_vss() {
    let b = bed(&vss_policy("win", "", "last = 7")).await;
    let (a, a_vols) = b.instance("win", &[BOOT]).await;
    let (c, c_vols) = b.instance("win", &[BOOT, "/dev/sdf"]).await;
    let (gone, gone_vols) = b.instance("win", &[BOOT]).await;
    // No agent registered: SSM refuses a SendCommand naming it, whole.
    b.agent.set_unmanaged(&[&gone]);

    let out = b.run("win").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!(
        (r.created, r.app_consistent, r.fallback),
        (4, 3, 1),
        "{r:#?}"
    );
    let ((operation, code), message) = problem(r, &gone);
    assert_eq!((operation, code.as_str()), ("vss", "not-managed"));
    assert!(
        message.contains("AmazonSSMManagedInstanceCore"),
        "{message}"
    );
    assert!(
        problems_of(r, &a).is_empty() && problems_of(r, &c).is_empty(),
        "{r:#?}"
    );

    let made = b
        .of_this_slot(&[a_vols.clone(), c_vols.clone(), gone_vols.clone()].concat())
        .await;
    assert_eq!(made.len(), 4, "{made:#?}");
    for s in &made {
        let by_vss = !gone_vols.contains(&s.volume);
        assert_eq!(s.tags.contains_key("AwsVssConfig"), by_vss, "{s:?}");
        let want = if by_vss { "true" } else { "false" };
        assert_eq!(s.tag(TAG_APP_CONSISTENT), want, "{s:?}");
    }
    // The refused command never reached moto; the one sent without the unmanaged instance did.
    let sent = b.sent_of(VSS_DOCUMENT).await;
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].instances, sorted(&[&a, &c]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_send_command_is_followed_by_one_that_awaits_the_command_instead_of_resending_it(
) {
    // A short VSS timeout: were the earlier command taken to cover the instance that joined later, the run would
    // wait that long for an invocation that does not exist, then fall back.
    let b = bed(&vss_policy("win", "timeout = \"1m\"", "last = 7")).await;
    let (a, a_vols) = b.instance("win", &[BOOT, "/dev/sdf"]).await;
    // Not in the policy yet: it joins between the two runs.
    let (c, c_vols) = launch_instance(&b.ec2, &[("Backup", "later")], &[BOOT]).await;
    // The first process dies while its command is still running on the instance: it ends after a few more polls.
    b.agent
        .set_rules(vec![Rule::any(Reply::success().in_progress(5))]);
    let killed = async {
        b.run("win").await;
        panic!("the run ends only when the command does");
    };
    let sent = async {
        while b.agent.count("SendCommand") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = killed => {}
        _ = sent => {}
    }
    assert!(b.of_this_slot(&a_vols).await.is_empty(), "still running");
    // Meanwhile an instance joins the policy.
    b.agent.set_rules(Vec::new());
    b.ec2
        .create_tags()
        .resources(&c)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("Backup")
                .value("win")
                .build(),
        )
        .send()
        .await
        .expect("CreateTags");

    let out = b.run("win").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!((r.created, r.app_consistent, r.fallback), (3, 3, 0));
    // The earlier command is awaited for its instance; only the new one is sent a command.
    let sent = b.sent_of(VSS_DOCUMENT).await;
    let named: Vec<Vec<String>> = sent.iter().map(|c| c.instances.clone()).collect();
    assert_eq!(named, [vec![a.clone()], vec![c.clone()]]);
    assert!(sent
        .iter()
        .all(|s| s.comment == format!("snapwarden vss {SLOT} win")));
    let made = b.of_this_slot(&[a_vols.clone(), c_vols].concat()).await;
    assert_eq!(made.len(), 3, "one snapshot per volume: {made:#?}");
    for s in &made {
        assert_eq!(s.tag("AwsVssConfig"), VSS_CONFIG_TAG, "{s:?}");
        let owner = if a_vols.contains(&s.volume) { &a } else { &c };
        assert_eq!(s.tag(TAG_INSTANCE), owner, "{s:?}");
    }
    assert_eq!(b.agent.count("SendCommand"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_boot_volume_leaves_the_boot_volume_out_of_the_command_and_the_run() {
    let b = bed(&vss_policy("win", "exclude-boot-volume = true", "last = 7")).await;
    let (i, vols) = b.instance("win", &[BOOT, "/dev/sdf", "/dev/sdg"]).await;

    let out = b.run("win").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!(
        (r.targeted_volumes, r.created, r.app_consistent, r.fallback),
        (2, 2, 2, 0)
    );
    let sent = b.sent_of(VSS_DOCUMENT).await;
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].instances, sorted(&[&i]));
    assert_eq!(sent[0].param("ExcludeBootVolume"), "True");
    let made = b.of_this_slot(&vols).await;
    let devices: Vec<&str> = made
        .iter()
        .map(|s| s.tag("Device"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(devices, ["/dev/sdf", "/dev/sdg"], "{made:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_script_the_slot_still_owes_is_sent_by_its_next_run() {
    let b = bed_with(&scripts_policy("pg", ""), true).await;
    let (i, vols) = b.instance("pg", &[BOOT, "/dev/sdf"]).await;
    // The post's SendCommand (the run's second) fails on the server: never resent, so the run ends owing it.
    let proxy = b.proxy.as_ref().unwrap();
    proxy.set_rules(vec![FaultRule::new(
        &["SendCommand"],
        When::Calls(vec![2]),
        Fault::Error("InternalServerError"),
    )]);

    let first = b.run("pg").await;
    let r = &first.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!((r.created, r.app_consistent), (2, 2));
    let ((operation, code), _) = problem(r, &i);
    assert_eq!((operation, code.as_str()), ("post", "send-failed"));
    assert!(b.sent_of(POST).await.is_empty());

    // The next run of the slot has nothing to snapshot, and sends the thaw the freeze is still owed.
    let again = b.run("pg").await;
    let r = &again.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!((r.created, r.already_done), (0, 2));
    let post = b.sent_of(POST).await;
    assert_eq!(post.len(), 1, "{post:#?}");
    assert_eq!(post[0].instances, sorted(&[&i]));
    assert_eq!(post[0].comment, format!("snapwarden post {SLOT} pg"));
    assert_eq!(b.sent_of(PRE).await.len(), 1, "no second freeze");
    assert_eq!(b.of_this_slot(&vols).await.len(), 2, "no second snapshot");

    // Owed no more: a third run sends nothing.
    let third = b.run("pg").await;
    assert_eq!(third.report.result(), RunResult::Success);
    assert_eq!(b.sent().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thaw_that_finds_the_freeze_already_ended_untags_the_snapshot_and_retention_does_not_count_it(
) {
    let b = bed(&scripts_policy("pg", "").replace(
        "keep = { last = 7 }",
        "keep = { last = 2, app-consistent-only = true }",
    ))
    .await;
    let (i, vols) = b.instance("pg", &[BOOT]).await;
    let volume = &vols[0];
    let older = [
        b.seed(volume, "pg", &days_before(1), true).await,
        b.seed(volume, "pg", &days_before(2), true).await,
    ];
    // Exit code 3: the freeze's auto-thaw fired before the thaw ran, so the snapshot may not be consistent.
    b.agent.set_rules(vec![Rule::instance(
        &i,
        Reply::failed(3, "not frozen: AutoThawSeconds elapsed"),
    )
    .document(POST)]);

    let out = b.run("pg").await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    let ((operation, code), _) = problem(r, &i);
    assert_eq!((operation, code.as_str()), ("post", "thawed-early"));
    let new = b.of_this_slot(&vols).await;
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].tag(TAG_APP_CONSISTENT), "false", "{:?}", new[0]);
    // The two consistent snapshots are still the two `last` counts: the new one stands as the volume's newest.
    let left: Vec<String> = b.snapshots(&vols).await.into_iter().map(|s| s.id).collect();
    for id in &older {
        assert!(left.contains(id), "{id} deleted: {:#?}", out.plan);
    }
    assert_eq!(r.deleted, 0);
}
