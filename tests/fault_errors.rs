//! Errors with a cause and a fix, and alerts that survive an SNS outage, against moto behind the fault proxy of
//! `common::fault_proxy`. Covered: an access-denied answer (injected `UnauthorizedOperation`) on a create or a
//! describe gives a digest that names the IAM action to grant (`ec2:CreateSnapshot`, `ec2:DescribeVolumes`); a
//! region whose endpoint drops every connection fails only that region — the daemon's scheduler loop runs the
//! other one to success and alerts for the broken one alone; SNS refusing every Publish for a while: runs go on
//! without waiting, the alert is retried, a newer failure of the same policy/schedule/region replaces the older
//! undelivered one, and once SNS recovers exactly one message arrives (read back from an SQS queue subscribed to
//! the topic); and with `completion-deadline = "0s"` a new snapshot reported in `error` by the run's one describe
//! (the proxy rewrites moto's answers) fails its volume and prunes nothing, read back from moto.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::Recorder;
use common::{Moto, ACCOUNT, REGION};
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use snapwarden::ec2::pace::PaceConfig;
use snapwarden::metrics::Metrics;
use snapwarden::notify::{self, Delivery, Notifier, Publisher, SnsPublisher};
use snapwarden::report::{RunReport, RunResult};
use snapwarden::worker::{self, Region, RunSpec};

const OTHER_REGION: &str = "eu-west-1";

fn policy_text(endpoint: &str, region: &str) -> String {
    format!(
        "[aws]\nendpoint-url = \"{endpoint}\"\nregions = [\"{region}\"]\nmax-attempts = 2\n\n\
         [[policy]]\nname = \"prod\"\ntarget = {{ resource = \"instance\", tags = {{ Backup = \"true\" }} }}\n\
         consistency = \"volume\"\n\
         [[policy.schedule]]\nname = \"yearly\"\ncron = \"0 0 1 1 *\"\nkeep = {{ last = 3 }}\n"
    )
}

fn shared_for(endpoint: &str, region: &str) -> Shared {
    Shared::new(
        config::from_toml_str(
            Path::new("fault_errors.toml"),
            &policy_text(endpoint, region),
            &[],
        )
        .unwrap_or_else(|e| panic!("test config is valid: {e}")),
    )
}

/// Short backoffs and few attempts: a broken endpoint fails a run in well under a second.
fn quick_pace() -> PaceConfig {
    PaceConfig {
        budget_fraction: 1.0,
        max_attempts: 2,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        seed: Some(9),
        ..PaceConfig::default()
    }
}

/// The daemon's own paced region through `endpoint`.
async fn region_via(shared: &Shared) -> Arc<Region> {
    daemon::aws_regions_paced(shared, &quick_pace())
        .await
        .expect("region through the proxy")
        .remove(0)
}

/// One instance tagged `Backup = true` with two volumes, in moto's `region`.
async fn launch(moto: &Moto, region: &str) {
    let conf = moto
        .sdk_config()
        .await
        .to_builder()
        .region(aws_config::Region::new(region.to_string()))
        .build();
    let raw = aws_sdk_ec2::Client::new(&conf);
    common::launch_instance(&raw, &[("Backup", "true")], &["/dev/sdf", "/dev/sdg"]).await;
}

fn slot() -> DateTime<Utc> {
    common::slot("2026-01-01T00:00:00Z")
}

async fn run_once(shared: &Shared, region: &Region) -> RunReport {
    let spec = RunSpec::new(
        shared.config.policy("prod").unwrap(),
        slot(),
        &region.account_id,
    )
    .firing(["yearly"]);
    worker::run(region.ec2.as_ref(), &spec, &shared.metrics, Utc::now)
        .await
        .report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_alerts_name_the_iam_action_to_grant() {
    let moto = Moto::start();
    launch(&moto, REGION).await;
    let proxy = FaultProxy::start(moto.port, 1);
    let shared = shared_for(&proxy.endpoint, REGION);
    let region = region_via(&shared).await;
    assert_eq!(region.account_id, ACCOUNT);

    // Creates refused: every volume fails, and the digest says which action the role lacks.
    proxy.set_rules(vec![Rule::new(
        &["CreateSnapshot"],
        When::Always,
        Fault::Error("UnauthorizedOperation"),
    )]);
    let report = run_once(&shared, &region).await;
    assert_eq!(report.result(), RunResult::Failure, "{report:#?}");
    assert_eq!(report.failed_volumes(), 2, "{report:#?}");
    // Not retried: it needs a person.
    assert_eq!(proxy.count("CreateSnapshot", "UnauthorizedOperation"), 2);
    let body = notify::digest(&report).body;
    assert!(
        body.contains("- UnauthorizedOperation: grant ec2:CreateSnapshot to snapwarden's IAM role"),
        "{body}"
    );
    assert!(
        report.problems[0]
            .message
            .contains("grant ec2:CreateSnapshot"),
        "{report:#?}"
    );

    // A describe refused: the run fails before acting, and the digest names the describe.
    proxy.set_rules(vec![Rule::new(
        &["DescribeVolumes"],
        When::Always,
        Fault::Error("UnauthorizedOperation"),
    )]);
    let report = run_once(&shared, &region).await;
    assert!(report.fatal.is_some(), "{report:#?}");
    let m = notify::digest(&report);
    assert!(
        m.subject.starts_with("snapwarden FAILED prod/yearly"),
        "{}",
        m.subject
    );
    assert!(
        m.body.contains(
            "- UnauthorizedOperation: grant ec2:DescribeVolumes to snapwarden's IAM role"
        ),
        "{}",
        m.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_region_fails_alone_in_the_daemon_loop() {
    let moto = Moto::start();
    launch(&moto, REGION).await;
    launch(&moto, OTHER_REGION).await;
    let good = FaultProxy::start(moto.port, 2);
    let bad = FaultProxy::start(moto.port, 3);
    let shared = shared_for(&good.endpoint, REGION);
    let good_region = region_via(&shared).await;
    let bad_region = region_via(&shared_for(&bad.endpoint, OTHER_REGION)).await;
    assert_eq!(bad_region.ec2.region(), OTHER_REGION);
    // From now on the second region's endpoint drops every connection without an answer.
    bad.set_rules(vec![Rule::new(&[], When::Always, Fault::Reset)]);

    let recorder = Arc::new(Recorder::default());
    let (notifier, task) = Notifier::spawn(
        Some(recorder.clone() as Arc<dyn Publisher>),
        Duration::from_secs(3600),
        shared.metrics.clone(),
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    // Catch-up fires the yearly slot once in both regions.
    let lp = tokio::spawn(daemon::schedule_loop(
        shared.clone(),
        Arc::new(vec![good_region, bad_region]),
        notifier,
        true,
        stop.clone(),
    ));
    let runs = loop {
        let st = shared.status.snapshot();
        // The loop registers its schedules when it starts, which may be after the first look.
        if let Some(sched) = st.get("prod").and_then(|p| p.get("yearly")) {
            // The failed region's retry waits (a minute by default), so the fire is still running then.
            if sched.last_runs.len() == 2 && sched.retry.is_some() {
                break sched.last_runs.clone();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{st:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    assert!(lp.await.unwrap(), "the loop drained its runs");
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;

    let ok = &runs[&format!("{ACCOUNT}/{REGION}")];
    assert_eq!(ok.result, RunResult::Success, "{runs:#?}");
    assert_eq!(ok.created, 2, "{runs:#?}");
    let failed = &runs[&format!("{ACCOUNT}/{OTHER_REGION}")];
    assert_eq!(failed.result, RunResult::Failure, "{runs:#?}");
    assert_eq!(failed.created, 0, "{runs:#?}");
    assert!(bad.count("DescribeInstances", "reset") >= 1);

    let sent = recorder.sent.lock().unwrap().clone();
    assert_eq!(
        sent.len(),
        1,
        "one alert, for the broken region only: {sent:#?}"
    );
    assert!(
        sent[0].subject.starts_with(&format!(
            "snapwarden FAILED prod/yearly {ACCOUNT}/{OTHER_REGION}"
        )),
        "{}",
        sent[0].subject
    );
    assert!(
        sent[0]
            .body
            .contains("transport: AWS could not be reached in this region"),
        "{}",
        sent[0].body
    );
}

/// A run on the in-memory backend after adding an instance with two volumes, the first failing with `code` (a
/// partial run); returns how long the run and the hand-over to the notifier took together.
async fn failing_run(
    fake: &FakeEc2,
    code: &str,
    metrics: &Metrics,
    notifier: &Notifier,
) -> Duration {
    let cfg = config::from_toml_str(
        Path::new("fault_errors.toml"),
        &policy_text("http://127.0.0.1:9", REGION),
        &[],
    )
    .unwrap();
    let (_, vols) = fake.add_instance(
        &[("Backup", "true")],
        &[("/dev/sdf", "gp3"), ("/dev/sdg", "gp3")],
    );
    fake.fail_create_for(&vols[0], code);
    let spec = RunSpec::new(cfg.policy("prod").unwrap(), slot(), FAKE_ACCOUNT).firing(["yearly"]);
    let started = Instant::now();
    let outcome = worker::run(fake, &spec, metrics, Utc::now).await;
    assert_eq!(
        outcome.report.result(),
        RunResult::Partial,
        "{:#?}",
        outcome.report
    );
    notifier.submit(outcome.report, metrics);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sns_outage_runs_go_on_and_the_latest_alert_arrives_once_after_recovery() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port, 4);
    let conf = moto.sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let topic = sns.create_topic().name("alerts").send().await.unwrap();
    let topic_arn = topic.topic_arn().unwrap().to_string();
    let queue_url = sqs
        .create_queue()
        .queue_name("alerts")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let queue_arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:alerts");
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .send()
        .await
        .unwrap();

    // The daemon's publisher, through the proxy, with the SDK's own retries off so attempts are countable.
    let via_proxy = conf
        .to_builder()
        .endpoint_url(&proxy.endpoint)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let publisher: Arc<dyn Publisher> = Arc::new(SnsPublisher::new(&via_proxy, &topic_arn));
    proxy.set_rules(vec![Rule::new(
        &["Publish"],
        When::Always,
        Fault::Error("ServiceUnavailable"),
    )]);
    let metrics = Arc::new(Metrics::new());
    let (notifier, task) = Notifier::spawn_with(
        Some(publisher),
        Duration::from_secs(3600),
        metrics.clone(),
        Delivery {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            outbox: 10,
            attempt_timeout: Duration::from_secs(5),
        },
    );

    // SNS down: runs finish at their own pace, the hand-over never waits.
    let fake = FakeEc2::new(REGION);
    let took = failing_run(&fake, "IncorrectState", &metrics, &notifier).await;
    assert!(
        took < Duration::from_millis(500),
        "run + submit took {took:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.count("Publish", "ServiceUnavailable") < 3 {
        assert!(
            Instant::now() < deadline,
            "no Publish retries: {:?}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A newer, different failure of the same policy/schedule/region replaces the undelivered one.
    let took = failing_run(&fake, "InvalidVolume.NotFound", &metrics, &notifier).await;
    assert!(
        took < Duration::from_millis(500),
        "run + submit took {took:?}"
    );
    let before = proxy.count("Publish", "ServiceUnavailable");
    while proxy.count("Publish", "ServiceUnavailable") < before + 2 {
        assert!(
            Instant::now() < deadline,
            "no Publish retries: {:?}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SNS back.
    proxy.set_rules(Vec::new());
    let mut received = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    // Read until one message arrived, then keep reading a while to catch a second one.
    let mut quiet_after: Option<Instant> = None;
    while Instant::now() < until && quiet_after.is_none_or(|t| Instant::now() < t) {
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            let envelope: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            received.push(envelope);
            quiet_after.get_or_insert(Instant::now() + Duration::from_millis(1500));
        }
    }
    drop(notifier);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;

    let failed = proxy.count("Publish", "ServiceUnavailable");
    let forwarded = proxy.count("Publish", "forwarded");
    println!(
        "sns outage figures: Publish refused {failed} times (100% during the outage), forwarded {forwarded}, \
         messages received {}",
        received.len()
    );
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(forwarded, 1);
    let subject = received[0]["Subject"].as_str().unwrap_or_default();
    assert!(
        subject.starts_with("snapwarden PARTIAL prod/yearly"),
        "{subject}"
    );
    let body = received[0]["Message"].as_str().unwrap_or_default();
    assert!(
        body.contains("InvalidVolume.NotFound"),
        "the newer failure: {body}"
    );
    let text = metrics.render(Utc::now());
    for (outcome, at_least) in [("superseded", 1.0), ("sent", 1.0), ("failed", 3.0)] {
        let v = common::metric(
            &text,
            "snapwarden_notifications_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(0.0);
        assert!(v >= at_least, "{outcome}: {v}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_zero_completion_deadline_a_snapshot_in_error_at_its_one_describe_fails_the_volume()
{
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    use snapwarden::ec2::{TAG_MANAGED, TAG_POLICY, TAG_SCHEDULE, TAG_SLOT};

    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, vols) = common::launch_instance(&raw, &[("Backup", "true")], &["/dev/sdf"]).await;
    // Four earlier years: keep last 3 over a good new snapshot would delete the two oldest.
    let mut seeded = std::collections::BTreeSet::new();
    for year in 2021..2025 {
        let mut tags = TagSpecification::builder().resource_type(ResourceType::Snapshot);
        let slot = format!("{year}-01-01T00:00:00Z");
        for (k, v) in [
            (TAG_MANAGED, "true"),
            (TAG_POLICY, "prod"),
            (TAG_SCHEDULE, "yearly"),
            (TAG_SLOT, slot.as_str()),
        ] {
            tags = tags.tags(Tag::builder().key(k).value(v).build());
        }
        let s = raw
            .create_snapshot()
            .volume_id(&vols[0])
            .tag_specifications(tags.build())
            .send()
            .await
            .expect("seed CreateSnapshot");
        seeded.insert(s.snapshot_id().unwrap().to_string());
    }
    let proxy = FaultProxy::start(moto.port, 5);
    let shared = shared_for(&proxy.endpoint, REGION);
    let region = region_via(&shared).await;
    // CreateSnapshot answers `pending`, as EC2's does (moto's says `completed`). The survey is the first
    // DescribeSnapshots; the second is the run's one look at its new snapshot, which EBS (here: the proxy) reports
    // in `error`.
    proxy.set_rules(vec![
        Rule::new(
            &["CreateSnapshot"],
            When::Always,
            Fault::Rewrite(vec![(
                "<status>completed</status>".into(),
                "<status>pending</status>".into(),
            )]),
        ),
        Rule::new(
            &["DescribeSnapshots"],
            When::Calls(vec![2]),
            Fault::Rewrite(vec![(
                "<status>completed</status>".into(),
                "<status>error</status>".into(),
            )]),
        ),
    ]);
    let spec = RunSpec::new(
        shared.config.policy("prod").unwrap(),
        slot(),
        &region.account_id,
    )
    .firing(["yearly"])
    .completion(worker::Completion::within(Duration::ZERO));
    let report = worker::run(region.ec2.as_ref(), &spec, &shared.metrics, Utc::now)
        .await
        .report;
    assert_eq!(
        proxy.count("DescribeSnapshots", "rewritten"),
        1,
        "{:?}",
        proxy.log()
    );
    assert_eq!(report.result(), RunResult::Failure, "{report:#?}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.code == "snapshot-error" && p.operation == "create"),
        "{report:#?}"
    );
    // From moto: the history is untouched, and the snapshot that restores nothing is gone.
    let left: std::collections::BTreeSet<String> = raw
        .describe_snapshots()
        .owner_ids("self")
        .filters(common::filter("tag:snapwarden:policy", &["prod"]))
        .send()
        .await
        .expect("DescribeSnapshots")
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(String::from))
        .collect();
    assert_eq!(left, seeded, "{report:#?}");
}
