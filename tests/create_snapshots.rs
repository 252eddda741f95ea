//! Instance-consistent snapshots and the call budget of a run, on the in-memory EC2: one CreateSnapshots per
//! multi-volume instance (one CreateSnapshot per single-volume instance or under `consistency = "volume"`), the
//! per-volume tags CreateSnapshots cannot set added by CreateTags batched by identical tag sets, a volume missing
//! from a CreateSnapshots answer failing alone, tags a crash or a failed CreateTags left out completed by the next
//! run of the slot, dry runs recording per volume, and the survey reading a large region in a few describe calls.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::DEVICES;
use snapwarden::config::{self, Config, Policy};
use snapwarden::ec2::fake::FakeEc2;
use snapwarden::ec2::hooked::{Answer, Hooked, Step};
use snapwarden::ec2::{DryRun, Ec2, Snapshot, Tags, TAG_DEVICE, TAG_INSTANCE, TAG_SLOT};
use snapwarden::metrics::Metrics;
use snapwarden::report::RunResult;
use snapwarden::worker::{self, Outcome, RunSpec};

fn slot() -> DateTime<Utc> {
    common::slot("2026-03-02T04:30:00Z")
}

fn config(consistency: Option<&str>) -> Config {
    let line = consistency.map_or(String::new(), |c| format!("consistency = \"{c}\"\n"));
    let toml = format!(
        "[[policy]]\nname = \"prod\"\n{line}[policy.target]\ntags = {{ Backup = \"true\" }}\n\
         [[policy.schedule]]\nname = \"daily\"\ncron = \"30 4 * * *\"\nkeep = {{ last = 7 }}\n"
    );
    config::from_toml_str(Path::new("create_snapshots.toml"), &toml, &[]).expect("valid config")
}

async fn run(ec2: &dyn Ec2, policy: &Policy) -> Outcome {
    let spec = RunSpec::new(policy, slot(), snapwarden::ec2::fake::FAKE_ACCOUNT).firing(["daily"]);
    worker::run(ec2, &spec, &Metrics::new(), slot).await
}

/// Instances named `web-<i>` with 1, 2, 3, 4, 1, … volumes; returns (instance, volume ids) per instance.
fn estate(fake: &FakeEc2, instances: usize) -> Vec<(String, Vec<String>)> {
    common::web_fleet(fake, (0..instances).map(|i| 1 + i % 4))
}

fn calls(fake: &FakeEc2) -> [u64; 3] {
    [
        fake.calls("CreateSnapshots"),
        fake.calls("CreateSnapshot"),
        fake.calls("CreateTags"),
    ]
}

#[tokio::test]
async fn one_create_call_per_instance_and_per_volume_tags_in_one_batch_per_tag_set() {
    let cfg = config(None);
    let fake = FakeEc2::new("cs-1");
    let fleet = estate(&fake, 8);
    let out = run(&fake, &cfg.policies[0]).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!((r.targeted_volumes, r.created), (20, 20));
    // 6 of the 8 instances have several volumes; 2 have one. The per-volume tags are the device alone (the Name is
    // the instance's), so the snapshots of all instances share one CreateTags per device that needs one: /dev/xvda,
    // /dev/sdf, /dev/sdg, /dev/sdh.
    assert_eq!(calls(&fake), [6, 2, 4]);

    let snaps = fake.snapshots();
    assert_eq!(snaps.len(), 20);
    for (instance, vols) in &fleet {
        for (v, dev) in vols.iter().zip(DEVICES) {
            let s: Vec<&Snapshot> = snaps.iter().filter(|s| *s.volume_id == **v).collect();
            assert_eq!(s.len(), 1, "{v}");
            let t = &s[0].tags;
            assert_eq!(t[TAG_DEVICE], dev, "{v}");
            assert_eq!(&t[TAG_INSTANCE], instance, "{v}");
            assert_eq!(t[TAG_SLOT], "2026-03-02T04:30:00Z");
            assert!(t["Name"].starts_with("web-"), "{t:?}");
        }
    }

    // The slot is done: a retry creates nothing and has nothing left to tag.
    let again = run(&fake, &cfg.policies[0]).await;
    assert_eq!((again.report.created, again.report.already_done), (0, 20));
    assert_eq!(calls(&fake), [6, 2, 4]);
}

#[tokio::test]
async fn volume_consistency_makes_one_fully_tagged_create_per_volume() {
    let cfg = config(Some("volume"));
    let fake = FakeEc2::new("cs-2");
    estate(&fake, 4);
    let out = run(&fake, &cfg.policies[0]).await;
    assert_eq!(out.report.result(), RunResult::Success);
    assert_eq!(calls(&fake), [0, 10, 0]);
    assert!(fake
        .snapshots()
        .iter()
        .all(|s| s.tags.contains_key(TAG_DEVICE) && s.description.contains("/dev/")));
}

/// Passes everything through but leaves `dropped` out of every CreateSnapshots answer, as EC2 may for a volume
/// detached while the call ran.
fn drops_one(fake: Arc<FakeEc2>, dropped: String) -> Hooked {
    Hooked::new(fake).after(move |_, answer| {
        if let Answer::CreatedEach(Ok(answer)) = answer {
            answer.retain(|(v, _)| *v != dropped);
        }
        Step::Go
    })
}

#[tokio::test]
async fn a_volume_missing_from_the_answer_fails_alone() {
    let cfg = config(None);
    let fake = Arc::new(FakeEc2::new("cs-3"));
    let (_, vols) = fake.add_instance(
        &[("Backup", "true")],
        &[
            ("/dev/xvda", "gp3"),
            ("/dev/sdf", "gp3"),
            ("/dev/sdg", "gp3"),
        ],
    );
    // The fake did snapshot it; the answer did not say so. The worker fails that volume (it cannot know), and the
    // next run of the slot finds the snapshot by its slot tag.
    let ec2 = drops_one(fake.clone(), vols[1].clone());
    let out = run(&ec2, &cfg.policies[0]).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!((r.created, r.failed_volumes()), (2, 1));
    assert_eq!(r.problems[0].resource, vols[1]);
    assert!(
        r.problems[0].message.contains("returned no snapshot"),
        "{r:#?}"
    );
    let again = run(fake.as_ref(), &cfg.policies[0]).await;
    assert_eq!((again.report.created, again.report.already_done), (0, 3));
    assert_eq!(again.report.result(), RunResult::Success);
}

#[tokio::test]
async fn tags_a_failed_create_tags_left_out_are_added_by_the_next_run_of_the_slot() {
    let cfg = config(None);
    let fake = FakeEc2::new("cs-4");
    let (_, vols) = fake.add_instance(
        &[("Backup", "true")],
        &[("/dev/xvda", "gp3"), ("/dev/sdf", "gp3")],
    );
    fake.set_volume_tags(&vols[1], &[("Team", "data")]);
    fake.fail_operation("CreateTags", "InternalError");
    let out = run(&fake, &cfg.policies[0]).await;
    let r = &out.report;
    assert_eq!(r.created, 2);
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert!(r.problems.iter().all(|p| p.operation == "tag"), "{r:#?}");
    assert!(fake
        .snapshots()
        .iter()
        .all(|s| !s.tags.contains_key(TAG_DEVICE)));

    fake.clear_faults();
    let again = run(&fake, &cfg.policies[0]).await;
    assert_eq!(
        again.report.result(),
        RunResult::Success,
        "{:#?}",
        again.report
    );
    assert_eq!((again.report.created, again.report.already_done), (0, 2));
    let by_volume: BTreeMap<String, Tags> = fake
        .snapshots()
        .into_iter()
        .map(|s| (s.volume_id.to_string(), Tags::clone(&s.tags)))
        .collect();
    assert_eq!(by_volume[&vols[0]][TAG_DEVICE], "/dev/xvda");
    assert_eq!(by_volume[&vols[1]][TAG_DEVICE], "/dev/sdf");
    assert_eq!(by_volume[&vols[1]]["Team"], "data");
    assert!(!by_volume[&vols[0]].contains_key("Team"));
    // Nothing is left to add: a third run tags nothing.
    let tags_before = fake.calls("CreateTags");
    run(&fake, &cfg.policies[0]).await;
    assert_eq!(fake.calls("CreateTags"), tags_before);
}

#[tokio::test]
async fn a_dry_run_records_each_volume_fully_tagged_and_calls_nothing() {
    let cfg = config(None);
    let fake = Arc::new(FakeEc2::new("cs-5"));
    estate(&fake, 3);
    let dry = DryRun::new(fake.clone());
    let out = run(&dry, &cfg.policies[0]).await;
    assert_eq!(out.report.created, 6);
    let log = dry.log();
    assert_eq!(log.created.len(), 6);
    assert!(log.created.iter().all(|c| c.tags.contains_key(TAG_DEVICE)));
    assert!(log.tagged.is_empty(), "{:?}", log.tagged);
    assert_eq!(calls(&fake), [0, 0, 0]);
    assert!(fake.snapshots().is_empty());
}

#[tokio::test]
async fn a_large_region_is_read_in_a_few_describe_calls() {
    // 600 instances, 1,500 volumes: three filtered DescribeVolumes of 200 instance ids, or one sweep of the
    // region's attached volumes (two pages on EC2). The first run sweeps and learns the size; so does the next.
    let cfg = config(None);
    let fake = FakeEc2::new("cs-6");
    estate(&fake, 600);
    let out = run(&fake, &cfg.policies[0]).await;
    assert_eq!(out.report.targeted_volumes, 1500);
    let describes = |f: &FakeEc2| {
        [
            f.calls("DescribeInstances"),
            f.calls("DescribeVolumes"),
            f.calls("DescribeSnapshots"),
        ]
    };
    assert_eq!(describes(&fake), [1, 1, 1]);
    // 450 multi-volume instances, 150 single-volume ones: one create call per instance.
    assert_eq!(
        fake.calls("CreateSnapshots") + fake.calls("CreateSnapshot"),
        600
    );
    run(&fake, &cfg.policies[0]).await;
    // The second survey reads the first run's 1,500 snapshots: two pages of 1,000.
    assert_eq!(describes(&fake), [2, 2, 3]);

    // A region where the policy covers a fifth of the attached volumes: the first run's sweep finds 3,623
    // (four pages on EC2), more than two filtered calls for 250 instances, so the next run filters.
    let mixed = FakeEc2::new("cs-7");
    estate(&mixed, 250);
    for _ in 0..3000 {
        mixed.add_instance(&[("Backup", "false")], &[("/dev/xvda", "gp3")]);
    }
    run(&mixed, &cfg.policies[0]).await;
    assert_eq!(describes(&mixed), [1, 1, 1]);
    let out = run(&mixed, &cfg.policies[0]).await;
    assert_eq!(out.report.already_done, 623);
    assert_eq!(describes(&mixed), [2, 3, 2]);
}
