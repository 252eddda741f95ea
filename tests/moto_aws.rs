//! The aws-sdk code against a real moto server: `ec2::sdk::SdkEc2` (built exactly as the daemon builds it, through
//! `config::from_toml_str` and `daemon::aws_regions`), the worker's snapshot and retention runs on top of it,
//! `notify::SnsPublisher` delivering digests through SNS into an SQS queue, and the credentials check. Moto is
//! seeded with the raw aws-sdk-ec2 client, and outcomes are read back from moto with that client as well as from the
//! run report, so a tag the SDK code forgot to send or a filter moto does not honour shows up as a failure.
//!
//! Moto facts these tests lean on (checked against moto 5.2.5): RunInstances with BlockDeviceMappings creates one
//! volume per mapping and no extra root volume; snapshots are `completed` at once with StartTime "now", so history
//! is seeded through the `snapwarden:slot` tag; RegisterImage ignores the mappings it is given and backs the AMI
//! with a fresh snapshot of a throw-away volume, and only that snapshot answers `InvalidSnapshot.InUse`; CopySnapshot
//! keeps the source's volume id; a TagSpecification without tags is rejected (`InvalidParameterValue`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use chrono::{DateTime, Utc};

use common::{filter, Moto, ACCOUNT, REGION};
use snapwarden::config::{self, Config};
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::hooked::{Call, Hooked, Step};
use snapwarden::ec2::op::Op;
use snapwarden::ec2::sdk::{check_sdk_config, SdkEc2};
use snapwarden::ec2::{self, CreateSnapshot, Ec2, Filter};
use snapwarden::error::Error;
use snapwarden::notify::Notifier;
use snapwarden::report::RunResult;
use snapwarden::retention::Action;
use snapwarden::worker::{self, Outcome, Region, RunSpec};

/// The slot every run in this file fires: a fire time of `30 4 * * *` in UTC.
const SLOT: &str = "2026-11-20T04:30:00Z";
const DAILY: &str = "cron = \"30 4 * * *\"";

fn slot() -> DateTime<Utc> {
    common::slot(SLOT)
}

/// The slot `days` daily fires before [`SLOT`], as the tag text snapwarden writes.
fn days_before(days: i64) -> String {
    snapwarden::schedule::format_slot(slot() - chrono::Duration::days(days))
}

fn config(moto: &Moto, rest: &str) -> Config {
    let text = format!(
        "[aws]\nendpoint-url = \"{}\"\nregions = [\"{REGION}\"]\nmax-attempts = 2\n\n{rest}",
        moto.endpoint
    );
    config::from_toml_str(Path::new("moto_aws.toml"), &text, &[])
        .unwrap_or_else(|e| panic!("test config is valid: {e}"))
}

/// The daemon's own path from config to a ready backend: SDK config, credentials check, account id.
async fn backend(moto: &Moto, rest: &str) -> (Shared, Arc<Region>) {
    let shared = Shared::new(config(moto, rest));
    let mut regions = daemon::aws_regions(&shared)
        .await
        .expect("aws_regions against moto");
    assert_eq!(regions.len(), 1);
    let region = regions.remove(0);
    assert_eq!(region.account_id, ACCOUNT, "STS GetCallerIdentity via moto");
    assert_eq!(region.ec2.region(), REGION);
    (shared, region)
}

async fn run(
    shared: &Shared,
    ec2: &dyn Ec2,
    account: &str,
    policy: &str,
    firing: &[&str],
) -> Outcome {
    let policy = shared.config.policy(policy).expect("policy in config");
    let spec = RunSpec::new(policy, slot(), account)
        .firing(firing.iter().copied())
        .concurrency(shared.config.daemon.max_concurrent_aws_calls)
        // moto completes snapshots at once but leaves State out of CreateSnapshots' answer (they read back as
        // pending); the daemon's completion poll finds them completed on its first look, as it would on EC2.
        .completion(worker::Completion::within(Duration::from_secs(30)))
        .explain(true);
    worker::run(ec2, &spec, &shared.metrics, Utc::now).await
}

fn raw_tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Launches one instance with one EBS volume per device and returns (instance id, [(volume id, device)]), after
/// checking moto really created and attached a volume for every mapping.
async fn launch(
    raw: &aws_sdk_ec2::Client,
    tags: &[(&str, &str)],
    devices: &[&str],
) -> (String, Vec<(String, String)>) {
    let (id, _) = common::launch_instance(raw, tags, devices).await;
    let vols = raw
        .describe_volumes()
        .filters(filter("attachment.instance-id", &[&id]))
        .send()
        .await
        .expect("DescribeVolumes");
    let mut attached: Vec<(String, String)> = vols
        .volumes()
        .iter()
        .map(|v| {
            let a = &v.attachments()[0];
            assert_eq!(a.instance_id(), Some(id.as_str()));
            (
                v.volume_id().unwrap().to_string(),
                a.device().unwrap().to_string(),
            )
        })
        .collect();
    attached.sort_by(|a, b| a.1.cmp(&b.1));
    let mut want: Vec<&str> = devices.to_vec();
    want.sort();
    assert_eq!(
        attached.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        want,
        "moto attaches one volume per block device mapping of {id}"
    );
    (id, attached)
}

/// A snapshot as snapwarden would have written it for `policy`/`daily` at `slot`.
async fn managed(raw: &aws_sdk_ec2::Client, volume: &str, policy: &str, slot: &str) -> String {
    common::moto_snapshot(raw, volume, &common::managed_tags(policy, "daily", slot)).await
}

#[derive(Debug)]
struct Seen {
    volume: String,
    description: String,
    tags: BTreeMap<String, String>,
}

/// Every snapshot moto holds for the account, read with the raw client.
async fn all_snapshots(raw: &aws_sdk_ec2::Client) -> BTreeMap<String, Seen> {
    let out = raw
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .expect("DescribeSnapshots");
    out.snapshots()
        .iter()
        .map(|s| {
            (
                s.snapshot_id().unwrap().to_string(),
                Seen {
                    volume: s.volume_id().unwrap_or_default().to_string(),
                    description: s.description().unwrap_or_default().to_string(),
                    tags: common::tag_map(s.tags()),
                },
            )
        })
        .collect()
}

fn ids_of_volume(all: &BTreeMap<String, Seen>, volume: &str) -> BTreeSet<String> {
    all.iter()
        .filter(|(_, s)| s.volume == volume)
        .map(|(id, _)| id.clone())
        .collect()
}

const PROD: &str = "[[policy]]\nname = \"prod\"\ntarget = { resource = \"instance\", tags = { Backup = \"true\" } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_per_attached_volume_with_all_tags_and_none_twice() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (web, web_vols) = launch(
        &raw,
        &[("Backup", "true"), ("Team", "data"), ("Name", "web-1")],
        &["/dev/xvda", "/dev/sdf", "/dev/sdg"],
    )
    .await;
    // Volume tags win over instance tags, and the volume's Name names the snapshot.
    let data_disk = &web_vols[1].0;
    raw.create_tags()
        .resources(data_disk)
        .set_tags(Some(raw_tags(&[
            ("Name", "data-disk"),
            ("Team", "storage"),
        ])))
        .send()
        .await
        .unwrap();
    let (db, db_vols) = launch(&raw, &[("Backup", "true")], &["/dev/sdh"]).await;
    // Stopped instances are still backed up; terminated ones, untagged ones and other values are not.
    let (stopped, stopped_vols) = launch(&raw, &[("Backup", "true")], &["/dev/sdf"]).await;
    raw.stop_instances()
        .instance_ids(&stopped)
        .send()
        .await
        .unwrap();
    let (gone, gone_vols) = launch(&raw, &[("Backup", "true")], &["/dev/sdf"]).await;
    raw.terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .unwrap();
    let (_, plain_vols) = launch(&raw, &[("Name", "untagged")], &["/dev/sdf", "/dev/sdg"]).await;
    let (_, off_vols) = launch(&raw, &[("Backup", "false")], &["/dev/sdf"]).await;
    let states = raw
        .describe_instances()
        .instance_ids(&stopped)
        .instance_ids(&gone)
        .send()
        .await
        .unwrap();
    let states: BTreeMap<String, String> = states
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.state().unwrap().name().unwrap().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(states[&stopped], "stopped", "moto stops at once");
    assert_eq!(states[&gone], "terminated", "moto terminates at once");

    let (shared, region) = backend(
        &moto,
        &format!(
            "{PROD}[[policy.schedule]]\nname = \"daily\"\n{DAILY}\nkeep = {{ last = 7 }}\n\
             [[policy.schedule]]\nname = \"weekly\"\ncron = \"30 4 * * 5\"\nkeep = {{ last = 4 }}\n"
        ),
    )
    .await;
    // 2026-11-20 is a Friday: both schedules fire, so one snapshot per volume serves both.
    let first = run(
        &shared,
        region.ec2.as_ref(),
        &region.account_id,
        "prod",
        &["daily", "weekly"],
    )
    .await;
    let r = &first.report;
    assert_eq!(r.problems, vec![], "{r:#?}");
    assert_eq!(r.fatal, None);
    assert_eq!(
        (r.targeted_volumes, r.created, r.already_done, r.deleted),
        (5, 5, 0, 0),
        "{r:#?}"
    );
    assert_eq!(r.result(), RunResult::Success);

    let all = all_snapshots(&raw).await;
    let expected: Vec<(&str, &(String, String))> = web_vols
        .iter()
        .map(|v| (web.as_str(), v))
        .chain(db_vols.iter().map(|v| (db.as_str(), v)))
        .chain(stopped_vols.iter().map(|v| (stopped.as_str(), v)))
        .collect();
    assert_eq!(
        all.len(),
        expected.len(),
        "exactly one snapshot per targeted volume: {all:#?}"
    );
    for (instance, (volume, device)) in expected {
        let mine: Vec<&Seen> = all.values().filter(|s| &s.volume == volume).collect();
        assert_eq!(mine.len(), 1, "one snapshot of {volume}");
        let s = mine[0];
        let mut want = owned(&[
            (ec2::TAG_MANAGED, "true"),
            (ec2::TAG_POLICY, "prod"),
            (ec2::TAG_SCHEDULE, "daily,weekly"),
            (ec2::TAG_SLOT, SLOT),
            (ec2::TAG_INSTANCE, instance),
            (ec2::TAG_DEVICE, device),
            ("Backup", "true"),
        ]);
        // Instance consistency names a snapshot without a Name of its own after its instance.
        let default_name = format!("snapwarden prod {instance}");
        if instance == web {
            want.insert("Team".into(), "data".into());
            want.insert("Name".into(), "web-1".into());
        } else {
            want.insert("Name".into(), default_name);
        }
        if volume == data_disk {
            want.insert("Team".into(), "storage".into());
            want.insert("Name".into(), "data-disk".into());
        }
        assert_eq!(s.tags, want, "tags of the snapshot of {volume}");
        // web's three volumes are one CreateSnapshots, which takes one description for all: no device in it.
        let place = if instance == web {
            instance.to_string()
        } else {
            format!("{instance} {device}")
        };
        assert_eq!(
            s.description,
            format!(
                "snapwarden {}: policy prod, schedule daily,weekly, slot {SLOT}, {place}",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
    for (v, _) in gone_vols.iter().chain(&plain_vols).chain(&off_vols) {
        assert!(
            ids_of_volume(&all, v).is_empty(),
            "{v} is not targeted but was snapshotted"
        );
    }

    // The same slot again (a retry, a restart, catch-up): everything is found by its slot tag.
    let second = run(
        &shared,
        region.ec2.as_ref(),
        &region.account_id,
        "prod",
        &["daily", "weekly"],
    )
    .await;
    let r = &second.report;
    assert_eq!(
        (r.targeted_volumes, r.created, r.already_done, r.deleted),
        (5, 0, 5, 0),
        "{r:#?}"
    );
    assert_eq!(r.result(), RunResult::Success);
    assert_eq!(all_snapshots(&raw).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_pruned_to_keep_last_and_foreign_snapshots_stay() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, vols) = launch(&raw, &[("Backup", "true")], &["/dev/sdf", "/dev/sdg"]).await;
    let (v1, v2) = (&vols[0].0, &vols[1].0);
    // slot index k = k days before SLOT.
    let mut hist1 = BTreeMap::new();
    let mut hist2 = BTreeMap::new();
    for k in 1..=10 {
        hist1.insert(k, managed(&raw, v1, "prod", &days_before(k)).await);
        hist2.insert(k, managed(&raw, v2, "prod", &days_before(k)).await);
    }
    // Pinned in the middle of the history: ranked like any other, kept by the rail.
    raw.create_tags()
        .resources(&hist1[&5])
        .tags(Tag::builder().key(ec2::TAG_KEEP).value("audit").build())
        .send()
        .await
        .unwrap();
    let old = days_before(40);
    let unmanaged = common::moto_snapshot(
        &raw,
        v1,
        &[
            (ec2::TAG_POLICY, "prod"),
            (ec2::TAG_SCHEDULE, "daily"),
            (ec2::TAG_SLOT, &old),
        ],
    )
    .await;
    let other_policy = managed(&raw, v1, "other", &old).await;
    let manual = common::moto_snapshot(&raw, v2, &[]).await;
    let not_true = common::moto_snapshot(
        &raw,
        v2,
        &[
            (ec2::TAG_MANAGED, "false"),
            (ec2::TAG_POLICY, "prod"),
            (ec2::TAG_SCHEDULE, "daily"),
            (ec2::TAG_SLOT, &old),
        ],
    )
    .await;

    let (shared, region) = backend(
        &moto,
        &format!("{PROD}[[policy.schedule]]\nname = \"daily\"\n{DAILY}\nkeep = {{ last = 3 }}\n"),
    )
    .await;
    let out = run(
        &shared,
        region.ec2.as_ref(),
        &region.account_id,
        "prod",
        &["daily"],
    )
    .await;
    let r = &out.report;
    assert_eq!(r.problems, vec![], "{r:#?}");
    // Per volume the new snapshot and the two newest seeded ones are the last 3; v1 also keeps its pinned one.
    assert_eq!(
        (r.created, r.deleted, r.kept, r.kept_in_use),
        (2, 7 + 8, 3 + 1 + 3, 0),
        "{r:#?}"
    );
    assert_eq!(r.result(), RunResult::Success);

    let all = all_snapshots(&raw).await;
    let new_of = |v: &str| -> String {
        let ids: Vec<&String> = all
            .iter()
            .filter(|(_, s)| {
                s.volume == v && s.tags.get(ec2::TAG_SLOT).map(String::as_str) == Some(SLOT)
            })
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids.len(), 1, "one new snapshot of {v}");
        ids[0].clone()
    };
    let want1: BTreeSet<String> = [
        new_of(v1),
        hist1[&1].clone(),
        hist1[&2].clone(),
        hist1[&5].clone(),
        unmanaged.clone(),
        other_policy.clone(),
    ]
    .into();
    let want2: BTreeSet<String> = [
        new_of(v2),
        hist2[&1].clone(),
        hist2[&2].clone(),
        manual.clone(),
        not_true.clone(),
    ]
    .into();
    assert_eq!(ids_of_volume(&all, v1), want1);
    assert_eq!(ids_of_volume(&all, v2), want2);

    // The reasons behind it, as `plan` and the logs show them.
    let reasons = |id: &str| -> Vec<String> {
        let d = out
            .plan
            .iter()
            .find(|d| &*d.snapshot_id == id)
            .unwrap_or_else(|| panic!("{id} planned"));
        d.reasons.iter().map(ToString::to_string).collect()
    };
    assert_eq!(reasons(&new_of(v1)), ["newest of volume", "daily last 1/3"]);
    assert_eq!(reasons(&hist1[&2]), ["daily last 3/3"]);
    assert_eq!(reasons(&hist1[&5]), ["pinned"]);
    assert_eq!(reasons(&hist2[&3]), ["expired"]);
    for id in [&unmanaged, &other_policy, &manual, &not_true] {
        assert!(
            out.plan.iter().all(|d| *d.snapshot_id != **id),
            "{id} is not the policy's to judge"
        );
    }

    // Pruned is pruned: a second run of the slot changes nothing.
    let again = run(
        &shared,
        region.ec2.as_ref(),
        &region.account_id,
        "prod",
        &["daily"],
    )
    .await;
    assert_eq!(
        (
            again.report.created,
            again.report.already_done,
            again.report.deleted
        ),
        (0, 2, 0)
    );
    assert_eq!(all_snapshots(&raw).await.len(), all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_backing_an_ami_is_kept_and_reported() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, vols) = launch(&raw, &[("Backup", "true")], &["/dev/sdf"]).await;
    let image = raw
        .register_image()
        .name("snapwarden-test-ami")
        .root_device_name("/dev/sda1")
        .send()
        .await
        .unwrap();
    let image = image.image_id().unwrap();
    let described = raw.describe_images().image_ids(image).send().await.unwrap();
    let backing = described.images()[0].block_device_mappings()[0]
        .ebs()
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    // Make the AMI's snapshot an old managed one, and give its volume a newer managed copy so retention
    // (keep last 1) wants to delete it. CopySnapshot keeps the source's volume id in moto.
    raw.create_tags()
        .resources(&backing)
        .set_tags(Some(raw_tags(&[
            (ec2::TAG_MANAGED, "true"),
            (ec2::TAG_POLICY, "prod"),
            (ec2::TAG_SCHEDULE, "daily"),
            (ec2::TAG_SLOT, &days_before(2)),
        ])))
        .send()
        .await
        .unwrap();
    let copy = raw
        .copy_snapshot()
        .source_snapshot_id(&backing)
        .source_region(REGION)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .set_tags(Some(raw_tags(&[
                    (ec2::TAG_MANAGED, "true"),
                    (ec2::TAG_POLICY, "prod"),
                    (ec2::TAG_SCHEDULE, "daily"),
                    (ec2::TAG_SLOT, &days_before(1)),
                ])))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    let before = all_snapshots(&raw).await;
    assert_eq!(
        before[&copy].volume, before[&backing].volume,
        "moto copies the source volume id"
    );

    let (shared, region) = backend(
        &moto,
        &format!("{PROD}[[policy.schedule]]\nname = \"daily\"\n{DAILY}\nkeep = {{ last = 1 }}\n"),
    )
    .await;
    let out = run(
        &shared,
        region.ec2.as_ref(),
        &region.account_id,
        "prod",
        &["daily"],
    )
    .await;
    let r = &out.report;
    assert_eq!(r.problems, vec![], "{r:#?}");
    assert_eq!((r.created, r.deleted, r.kept_in_use), (1, 0, 1), "{r:#?}");
    assert_eq!(
        r.result(),
        RunResult::Success,
        "an AMI-backed snapshot is not a failure"
    );
    let d = out
        .plan
        .iter()
        .find(|d| *d.snapshot_id == *backing)
        .unwrap();
    assert_eq!(
        d.action,
        Action::Delete,
        "the plan wanted it gone; EC2 refused"
    );
    let after = all_snapshots(&raw).await;
    assert!(after.contains_key(&backing) && after.contains_key(&copy));
    assert_eq!(ids_of_volume(&after, &vols[0].0).len(), 1);
    assert_eq!(
        shared
            .metrics
            .kept_in_use
            .with_label_values(&["prod", REGION])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tags_prune_good_values_and_report_bad_ones() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, good_vols) = launch(&raw, &[("SnapshotDaily", "2")], &["/dev/sdf", "/dev/sdg"]).await;
    let (abc, abc_vols) = launch(&raw, &[("SnapshotDaily", "abc")], &["/dev/sdf"]).await;
    let (zero, zero_vols) =
        launch(&raw, &[("SnapshotDaily", "0")], &["/dev/sdf", "/dev/sdg"]).await;
    let (_, none_vols) = launch(&raw, &[("Backup", "true")], &["/dev/sdf"]).await;
    let mut seeded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (v, _) in good_vols.iter().chain(&abc_vols).chain(&zero_vols) {
        for k in 1..=4 {
            let id = managed(&raw, v, "tagged", &days_before(k)).await;
            seeded.entry(v.clone()).or_default().push(id);
        }
    }

    let (shared, region) = backend(
        &moto,
        &format!(
            "[[policy]]\nname = \"tagged\"\ntarget = {{ resource = \"instance\", tags = {{}} }}\n\
             [[policy.schedule]]\nname = \"daily\"\n{DAILY}\ncount-tag = \"SnapshotDaily\"\n"
        ),
    )
    .await;
    let out = run(
        &shared,
        region.ec2.as_ref(),
        &region.account_id,
        "tagged",
        &["daily"],
    )
    .await;
    let r = &out.report;
    assert_eq!(
        (r.targeted_volumes, r.created, r.deleted),
        (2, 2, 2 * 3),
        "{r:#?}"
    );
    assert_eq!(
        r.result(),
        RunResult::Partial,
        "bad tags make the run partial, not failed"
    );
    let mut problems: Vec<(&str, &str, &str)> = r
        .problems
        .iter()
        .map(|p| (p.resource.as_str(), p.operation, p.code.as_str()))
        .collect();
    problems.sort();
    let mut want = vec![
        (abc.as_str(), "target", "bad-count-tag"),
        (zero.as_str(), "target", "bad-count-tag"),
    ];
    want.sort();
    assert_eq!(
        problems, want,
        "one problem per instance, not per volume: {r:#?}"
    );
    let abc_msg = &r
        .problems
        .iter()
        .find(|p| p.resource == abc)
        .unwrap()
        .message;
    assert!(
        abc_msg.contains("SnapshotDaily")
            && abc_msg.contains("`abc`")
            && abc_msg.contains("1 to 10000"),
        "{abc_msg}"
    );
    let zero_msg = &r
        .problems
        .iter()
        .find(|p| p.resource == zero)
        .unwrap()
        .message;
    assert!(
        zero_msg.contains("`0`") && zero_msg.contains("out of range"),
        "{zero_msg}"
    );
    assert_eq!(
        shared
            .metrics
            .skipped_resources
            .with_label_values(&["tagged", "daily", "bad-count-tag"])
            .get(),
        2
    );

    let all = all_snapshots(&raw).await;
    for (v, _) in &good_vols {
        let keep: BTreeSet<String> = ids_of_volume(&all, v);
        let new: Vec<&String> = keep
            .iter()
            .filter(|id| all[*id].tags[ec2::TAG_SLOT] == SLOT)
            .collect();
        assert_eq!(new.len(), 1);
        assert_eq!(
            all[new[0]].tags["SnapshotDaily"], "2",
            "the count travels with the snapshot"
        );
        // seeded[v][0] is one day old: with the new one, the last 2.
        assert_eq!(keep, [new[0].clone(), seeded[v][0].clone()].into(), "{v}");
    }
    for (v, _) in abc_vols.iter().chain(&zero_vols) {
        let have: BTreeSet<String> = ids_of_volume(&all, v);
        assert_eq!(
            have,
            seeded[v].iter().cloned().collect(),
            "{v}: skipped, neither snapshotted nor pruned"
        );
    }
    assert!(ids_of_volume(&all, &none_vols[0].0).is_empty());
}

/// Fails CreateSnapshot of `volume` the way EC2 does when the role lacks the permission, while `failing` is set, and
/// passes everything else through to the real backend, snapshotting one volume at a time.
fn fail_volume(inner: Arc<dyn Ec2>, volume: String, failing: Arc<AtomicBool>) -> Hooked {
    let region = inner.region().to_string();
    Hooked::new(inner)
        .one_volume_at_a_time()
        .before(move |call| match call {
            Call::CreateSnapshot(r) if r.volume_id == volume && failing.load(Ordering::SeqCst) => {
                Step::Fail(Error::api(
                    Op::CreateSnapshot,
                    region.clone(),
                    "UnauthorizedOperation",
                    "You are not authorized to perform this operation.",
                ))
            }
            _ => Step::Go,
        })
}

/// Waits for up to `within` for messages on the queue, returning (and deleting) what arrived.
async fn drain(sqs: &aws_sdk_sqs::Client, queue: &str, within: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            out.push(serde_json::from_str(m.body().unwrap()).expect("SNS envelope is JSON"));
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        if !out.is_empty() || Instant::now() >= deadline {
            return out;
        }
    }
}

async fn wait_for_count(what: &str, get: impl Fn() -> u64, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get() < want {
        assert!(Instant::now() < deadline, "{what} never reached {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_digest_is_sent_once_then_recovery() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let sdk = moto.sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let topic = sns
        .create_topic()
        .name("snapwarden-alerts")
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let queue = sqs
        .create_queue()
        .queue_name("alerts")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    // Not raw: the SNS envelope is what carries Subject and MessageAttributes to the queue.
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "false")
        .send()
        .await
        .unwrap();
    let (_, vols) = launch(
        &raw,
        &[("Backup", "true")],
        &["/dev/sdf", "/dev/sdg", "/dev/sdh"],
    )
    .await;
    let doomed = vols[1].0.clone();

    let (shared, region) = backend(
        &moto,
        &format!(
            "[notify.sns]\ntopic-arn = \"{topic}\"\ndedup-window = \"1h\"\n\n\
             {PROD}[[policy.schedule]]\nname = \"daily\"\n{DAILY}\nkeep = {{ last = 3 }}\n"
        ),
    )
    .await;
    let publisher = daemon::sns_publisher(&shared.config).await;
    assert!(publisher.is_some(), "[notify.sns] configures a publisher");
    let window = shared.config.notify.sns.as_ref().unwrap().dedup_window;
    assert_eq!(window, Duration::from_secs(3600));
    let (notifier, task) = Notifier::spawn(publisher, window, shared.metrics.clone());
    let failing = Arc::new(AtomicBool::new(true));
    let ec2 = fail_volume(region.ec2.clone(), doomed.clone(), failing.clone());
    let notes = |outcome: &str| {
        shared
            .metrics
            .notifications
            .with_label_values(&[outcome])
            .get()
    };

    let partial = run(&shared, &ec2, &region.account_id, "prod", &["daily"]).await;
    assert_eq!(partial.report.result(), RunResult::Partial);
    assert_eq!(
        (partial.report.created, partial.report.failed_volumes()),
        (2, 1)
    );
    notifier.submit(partial.report.clone(), &shared.metrics);
    let got = drain(&sqs, &queue, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let m = &got[0];
    assert_eq!(m["Type"], "Notification");
    assert_eq!(m["TopicArn"], topic.as_str());
    assert_eq!(
        m["Subject"],
        format!("snapwarden PARTIAL prod/daily {ACCOUNT}/us-east-1: 1 of 3 volumes")
    );
    let attrs = &m["MessageAttributes"];
    for (k, v) in [
        ("policy", "prod"),
        ("schedule", "daily"),
        ("region", REGION),
        ("severity", "warning"),
    ] {
        assert_eq!(attrs[k]["Type"], "String", "{attrs}");
        assert_eq!(attrs[k]["Value"], v, "{attrs}");
    }
    let body = m["Message"].as_str().unwrap();
    assert!(
        body.starts_with("snapwarden run PARTIAL for policy prod schedule daily in us-east-1"),
        "{body}"
    );
    assert!(
        body.contains("- UnauthorizedOperation: grant ec2:CreateSnapshot to snapwarden's IAM role"),
        "{body}"
    );
    let json: serde_json::Value =
        serde_json::from_str(body.split("--- JSON ---\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["problems"][0]["resource"], doomed.as_str());
    assert_eq!(json["problems"][0]["operation"], "create");
    assert_eq!(json["run_id"], partial.report.run_id.as_str());

    // The next run of the slot fails the same way: within the window, nothing more is sent.
    let again = run(&shared, &ec2, &region.account_id, "prod", &["daily"]).await;
    assert_eq!(
        (again.report.already_done, again.report.failed_volumes()),
        (2, 1)
    );
    notifier.submit(again.report, &shared.metrics);
    wait_for_count("deduplicated notifications", || notes("deduplicated"), 1).await;
    assert!(drain(&sqs, &queue, Duration::from_secs(2)).await.is_empty());

    // Permission granted: the missing snapshot is made and a recovery follows.
    failing.store(false, Ordering::SeqCst);
    let fixed = run(&shared, &ec2, &region.account_id, "prod", &["daily"]).await;
    assert_eq!((fixed.report.created, fixed.report.already_done), (1, 2));
    assert_eq!(fixed.report.result(), RunResult::Success);
    notifier.submit(fixed.report, &shared.metrics);
    let got = drain(&sqs, &queue, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0]["Subject"],
        format!("snapwarden RECOVERED prod/daily {ACCOUNT}/us-east-1")
    );
    assert_eq!(got[0]["MessageAttributes"]["severity"]["Value"], "info");
    assert!(got[0]["Message"]
        .as_str()
        .unwrap()
        .contains("succeeded again"));
    assert_eq!(
        (notes("sent"), notes("failed"), notes("dropped")),
        (2, 0, 0)
    );

    drop(notifier);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("notifier drains")
        .unwrap();
}

/// Never answers: a credential chain stuck on an unreachable metadata endpoint.
#[derive(Debug)]
struct Silent;

impl aws_credential_types::provider::ProvideCredentials for Silent {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(std::future::pending())
    }
}

/// Answers "nothing found", as the default chain does once every provider in it has come up empty.
#[derive(Debug)]
struct Empty;

impl aws_credential_types::provider::ProvideCredentials for Empty {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            ),
        ))
    }
}

fn assert_says_what_to_set(e: &Error) {
    let text = e.to_string();
    assert_eq!(e.kind(), "credentials", "{text}");
    for hint in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "instance profile",
    ] {
        assert!(text.contains(hint), "`{hint}` missing from: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_fail_fast_and_say_what_to_set() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let loader = || {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
    };

    let started = Instant::now();
    let none = loader().no_credentials().load().await;
    let e = check_sdk_config(&none, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_says_what_to_set(&e);
    let e = check_sdk_config(
        &loader().credentials_provider(Empty).load().await,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert_says_what_to_set(&e);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let e = check_sdk_config(
        &loader().credentials_provider(Silent).load().await,
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_says_what_to_set(&e);
    assert!(e.to_string().contains("gave no answer within 500ms"), "{e}");

    let no_region = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(None::<aws_config::Region>)
        .no_credentials()
        .load()
        .await;
    let e = check_sdk_config(&no_region, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("aws.regions") && e.to_string().contains("AWS_REGION"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_lists_every_managed_snapshot_of_the_policy_with_reasons() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let (_, vols) = launch(&raw, &[("Backup", "true")], &["/dev/sdf"]).await;
    let v = &vols[0].0;
    let hist: Vec<String> = history(&raw, v, "prod", 5).await;
    let pinned = &hist[4];
    raw.create_tags()
        .resources(pinned)
        .tags(Tag::builder().key(ec2::TAG_KEEP).value("").build())
        .send()
        .await
        .unwrap();
    // A volume the policy no longer targets still has history, and its newest is kept forever.
    let (_, former) = launch(&raw, &[("Backup", "no")], &["/dev/sdf"]).await;
    let orphan: Vec<String> = history(&raw, &former[0].0, "prod", 2).await;
    let foreign = managed(&raw, v, "other", &days_before(1)).await;
    let before = all_snapshots(&raw).await;

    let (shared, region) = backend(
        &moto,
        &format!("{PROD}[[policy.schedule]]\nname = \"daily\"\n{DAILY}\nkeep = {{ last = 3 }}\n"),
    )
    .await;
    let policy = shared.config.policy("prod").unwrap();
    let survey = worker::survey(region.ec2.as_ref(), policy, &region.account_id, None)
        .await
        .expect("survey");
    assert_eq!(
        survey
            .targets
            .iter()
            .map(|t| t.volume.id.as_str())
            .collect::<Vec<_>>(),
        [v.as_str()]
    );
    let plan = worker::plan_retention(
        policy,
        &survey,
        &HashSet::new(),
        policy.timezone,
        Utc::now(),
        None,
    )
    .decisions;

    let planned: BTreeSet<&str> = plan.iter().map(|d| &*d.snapshot_id).collect();
    let want: BTreeSet<&str> = hist.iter().chain(&orphan).map(String::as_str).collect();
    assert_eq!(
        planned, want,
        "every managed snapshot of prod, nothing of `other` ({foreign})"
    );
    let row = |id: &str| {
        let d = plan.iter().find(|d| &*d.snapshot_id == id).unwrap();
        let labels: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
        let text: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        (d.action, labels, text)
    };
    assert_eq!(
        row(&hist[0]),
        (
            Action::Keep,
            vec!["newest", "last"],
            vec!["newest of volume".into(), "daily last 1/3".into()]
        )
    );
    assert_eq!(
        row(&hist[1]),
        (Action::Keep, vec!["last"], vec!["daily last 2/3".into()])
    );
    assert_eq!(
        row(&hist[2]),
        (Action::Keep, vec!["last"], vec!["daily last 3/3".into()])
    );
    assert_eq!(
        row(&hist[3]),
        (Action::Delete, vec!["expired"], vec!["expired".into()])
    );
    assert_eq!(
        row(&hist[4]),
        (Action::Keep, vec!["pinned"], vec!["pinned".into()])
    );
    assert_eq!(row(&orphan[0]).1, ["newest", "last"]);
    assert_eq!(row(&orphan[1]).2, ["daily last 2/3"]);
    // Decisions come sorted by volume, then newest first.
    let slots: Vec<DateTime<Utc>> = plan
        .iter()
        .filter(|d| *d.volume_id == **v)
        .map(|d| d.slot)
        .collect();
    assert!(slots.windows(2).all(|w| w[0] > w[1]), "{slots:?}");

    let after = all_snapshots(&raw).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "planning changes nothing"
    );
}

/// `n` managed daily snapshots of `volume`, 1 to `n` days before the slot, newest first.
async fn history(raw: &aws_sdk_ec2::Client, volume: &str, policy: &str, n: i64) -> Vec<String> {
    let mut out = Vec::new();
    for k in 1..=n {
        out.push(managed(raw, volume, policy, &days_before(k)).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_targets_use_volume_tag_filters() {
    let moto = Moto::start();
    let raw = moto.ec2().await;
    let make = |tags: Vec<Tag>| {
        let raw = raw.clone();
        async move {
            let mut req = raw.create_volume().availability_zone("us-east-1a").size(4);
            if !tags.is_empty() {
                req = req.tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Volume)
                        .set_tags(Some(tags))
                        .build(),
                );
            }
            req.send().await.unwrap().volume_id().unwrap().to_string()
        }
    };
    let detached = make(raw_tags(&[
        ("Env", "prod"),
        ("generations", "2"),
        ("Name", "scratch"),
    ]))
    .await;
    let other_value = make(raw_tags(&[("Env", "prod"), ("generations", "x")])).await;
    let dev = make(raw_tags(&[("Env", "dev"), ("generations", "2")])).await;
    let untagged = make(vec![]).await;
    // An attached volume of an untagged instance: its own tags are what count.
    let (inst, attached) = launch(&raw, &[], &["/dev/sdf"]).await;
    raw.create_tags()
        .resources(&attached[0].0)
        .set_tags(Some(raw_tags(&[("Env", "prod"), ("generations", "3")])))
        .send()
        .await
        .unwrap();
    let seeded = history(&raw, &detached, "vols", 3).await;

    let (shared, region) = backend(
        &moto,
        &format!(
            "[[policy]]\nname = \"vols\"\ntarget = {{ resource = \"volume\", tags = {{ Env = \"prod\" }} }}\n\
             [[policy.schedule]]\nname = \"daily\"\n{DAILY}\ncount-tag = \"generations\"\n"
        ),
    )
    .await;
    let out = run(
        &shared,
        region.ec2.as_ref(),
        &region.account_id,
        "vols",
        &["daily"],
    )
    .await;
    let r = &out.report;
    assert_eq!(
        (r.targeted_volumes, r.created, r.deleted),
        (2, 2, 2),
        "{r:#?}"
    );
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    assert_eq!(
        (r.problems[0].resource.as_str(), r.problems[0].code.as_str()),
        (other_value.as_str(), "bad-count-tag")
    );

    let all = all_snapshots(&raw).await;
    let of = |v: &str| -> Vec<&Seen> { all.values().filter(|s| s.volume == v).collect() };
    let new: Vec<&String> = all
        .iter()
        .filter(|(_, s)| {
            s.volume == detached && s.tags.get(ec2::TAG_SLOT).map(String::as_str) == Some(SLOT)
        })
        .map(|(id, _)| id)
        .collect();
    assert_eq!(new.len(), 1);
    let tags = &all[new[0]].tags;
    assert_eq!(
        (tags["Name"].as_str(), tags["generations"].as_str()),
        ("scratch", "2")
    );
    assert!(
        !tags.contains_key(ec2::TAG_INSTANCE) && !tags.contains_key(ec2::TAG_DEVICE),
        "a detached volume has neither instance nor device: {tags:?}"
    );
    // The volume's own count tag (2) prunes its history: the new one and the newest seeded one stay.
    assert_eq!(
        ids_of_volume(&all, &detached),
        [new[0].clone(), seeded[0].clone()].into()
    );
    let a = of(&attached[0].0);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].tags[ec2::TAG_DEVICE], "/dev/sdf");
    // Volume targets record where the volume hangs, as instance targets do.
    assert_eq!(a[0].tags[ec2::TAG_INSTANCE], inst, "{:?}", a[0].tags);
    for v in [&other_value, &dev, &untagged] {
        assert!(of(v).is_empty(), "{v} is not a target");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_errors_keep_the_ec2_error_code() {
    let moto = Moto::start();
    let sdk = SdkEc2::new(&moto.sdk_config().await);
    assert_eq!(sdk.account_id().await.unwrap(), ACCOUNT);
    let e = sdk
        .create_snapshot(&CreateSnapshot {
            volume_id: "vol-0123456789abcdef0".into(),
            description: "x".into(),
            // EC2 rejects a TagSpecification without tags; the worker always sends at least snapwarden's own.
            tags: [(ec2::TAG_MANAGED.to_string(), "true".to_string())].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.kind()),
        ("InvalidVolume.NotFound", "not-found"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("CreateSnapshot in us-east-1: InvalidVolume.NotFound"),
        "{e}"
    );
    let e = sdk
        .delete_snapshot("snap-0123456789abcdef0")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "InvalidSnapshot.NotFound", "{e}");
    assert!(
        ec2::all_snapshots(&sdk, &[Filter::tag(ec2::TAG_MANAGED, "true")])
            .await
            .unwrap()
            .is_empty()
    );
}
