//! Component tests of one run (`worker::run`) against the in-memory `FakeEc2` and a fixed clock: which snapshots a
//! run creates and with which tags, that a retry of the same slot creates nothing, how co-firing schedules share one
//! snapshot, and what retention deletes and — more to the point — what it must never delete (pinned, pending, the
//! newest, other policies, other accounts, unmanaged snapshots, anything of a volume whose snapshot just failed,
//! anything when the region could not be read). Also covered: count-tag targets and their fallback once the
//! resource is gone, the `DryRun` backend, the metrics a run leaves behind and the alerts the notifier sends.
//!
//! History is seeded with past `snapwarden:slot` tags rather than by waiting, and every run is given `now` as a
//! value, so nothing here depends on the wall clock except the notifier's de-dup window (hours wide).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use common::metric;
use common::Recorder;
use snapwarden::config::{self, Config, Policy};
use snapwarden::daemon::firing_at;
use snapwarden::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use snapwarden::ec2::hooked::{Answer, Call, Hooked, Step};
use snapwarden::ec2::op::Op;
use snapwarden::ec2::{
    DryRun, Ec2, Snapshot, TAG_DEVICE, TAG_INSTANCE, TAG_KEEP, TAG_MANAGED, TAG_POLICY,
    TAG_SCHEDULE, TAG_SLOT,
};
use snapwarden::error::Error;
use snapwarden::metrics::Metrics;
use snapwarden::notify::{Message, Notifier, Publisher};
use snapwarden::report::RunResult;
use snapwarden::retention::{Action, Reason, SnapState};
use snapwarden::schedule::format_slot;
use snapwarden::worker::{self, Outcome, RunSpec};

const REGION: &str = "us-east-1";
const OTHER_ACCOUNT: &str = "210987654321";

fn at(rfc3339: &str) -> DateTime<Utc> {
    common::slot(rfc3339)
}

/// The slot every test fires: a Monday, so a weekly `30 4 * * 1` co-fires with a daily `30 4 * * *`.
fn slot() -> DateTime<Utc> {
    at("2026-03-02T04:30:00Z")
}

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

fn config(toml: &str) -> Config {
    config::from_toml_str(Path::new("worker_fake.toml"), toml, &[])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One policy targeting instances tagged `Backup = "true"` with one `daily` schedule and the given keep rules.
fn daily_policy(keep: &str) -> Config {
    config(&format!(
        r#"
[[policy]]
name = "prod"
target = {{ resource = "instance", tags = {{ Backup = "true" }} }}

[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = {keep}
"#
    ))
}

/// A fake region whose snapshots start at `slot()`, as EC2 would stamp them when the run fires on time.
fn fleet() -> FakeEc2 {
    let fake = FakeEc2::new(REGION);
    fake.set_clock(slot());
    fake
}

/// One backed-up instance with `n` volumes; returns (instance id, volume ids).
fn backed_up_instance(fake: &FakeEc2, n: usize) -> (String, Vec<String>) {
    let devices = ["/dev/xvda", "/dev/sdf", "/dev/sdg", "/dev/sdh"];
    let devs: Vec<(&str, &str)> = devices[..n].iter().map(|d| (*d, "gp3")).collect();
    fake.add_instance(&[("Backup", "true")], &devs)
}

async fn run_at(
    ec2: &dyn Ec2,
    policy: &Policy,
    firing: &[&str],
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
    metrics: &Metrics,
) -> Outcome {
    let spec = RunSpec::new(policy, slot, FAKE_ACCOUNT)
        .firing(firing.iter().copied())
        .explain(true);
    worker::run(ec2, &spec, metrics, || now).await
}

/// Seeds a snapshot as snapwarden would have written it at `slot`, plus `extra` tags.
fn seed(
    fake: &FakeEc2,
    volume: &str,
    policy: &str,
    schedules: &str,
    slot: DateTime<Utc>,
    state: SnapState,
    extra: &[(&str, &str)],
) -> String {
    seed_owned(
        fake,
        FAKE_ACCOUNT,
        volume,
        policy,
        schedules,
        slot,
        state,
        extra,
    )
}

#[allow(clippy::too_many_arguments)]
fn seed_owned(
    fake: &FakeEc2,
    owner: &str,
    volume: &str,
    policy: &str,
    schedules: &str,
    slot: DateTime<Utc>,
    state: SnapState,
    extra: &[(&str, &str)],
) -> String {
    let slot = format_slot(slot);
    let tags = [&common::managed_tags(policy, schedules, &slot)[..], extra].concat();
    fake.seed_snapshot(volume, state, owner, &tags)
}

/// Completed `daily` snapshots of policy `prod` on `volume`, `ago` days before `slot()`; ids in the same order.
fn daily_history(fake: &FakeEc2, volume: &str, ago: &[i64]) -> Vec<String> {
    ago.iter()
        .map(|d| {
            seed(
                fake,
                volume,
                "prod",
                "daily",
                slot() - days(*d),
                SnapState::Completed,
                &[],
            )
        })
        .collect()
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn deleted_ids(outcome: &Outcome) -> BTreeSet<String> {
    outcome
        .plan
        .iter()
        .filter(|d| d.action == Action::Delete)
        .map(|d| d.snapshot_id.to_string())
        .collect()
}

fn reasons_of<'a>(outcome: &'a Outcome, id: &str) -> &'a [Reason] {
    let d = outcome
        .plan
        .iter()
        .find(|d| &*d.snapshot_id == id)
        .unwrap_or_else(|| panic!("{id} is not in the plan: {:#?}", outcome.plan));
    &d.reasons
}

fn action_of(outcome: &Outcome, id: &str) -> Action {
    outcome
        .plan
        .iter()
        .find(|d| &*d.snapshot_id == id)
        .unwrap_or_else(|| panic!("{id} is not in the plan"))
        .action
}

fn snapshot_ids(fake: &FakeEc2) -> BTreeSet<String> {
    fake.snapshots()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect()
}

fn snapshots_of(fake: &FakeEc2, volume: &str) -> Vec<Snapshot> {
    fake.snapshots()
        .into_iter()
        .filter(|s| *s.volume_id == *volume)
        .collect()
}

fn last(schedule: &str, rank: u32, of: u32) -> Reason {
    Reason::Last {
        schedule: schedule.into(),
        rank,
        of,
    }
}

#[tokio::test]
async fn instance_target_gets_one_fully_tagged_snapshot_per_volume_and_a_retry_creates_nothing() {
    let cfg = daily_policy("{ last = 7 }");
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (instance, vols) = fake.add_instance(
        &[
            ("Backup", "true"),
            ("Name", "web-1"),
            ("Owner", "alice"),
            ("Team", "infra"),
            ("aws:cloudformation:stack-name", "web"),
        ],
        &[
            ("/dev/xvda", "gp3"),
            ("/dev/sdf", "gp3"),
            ("/dev/sdg", "io2"),
        ],
    );
    // The volume's Name and Owner win over the instance's; its own `snapwarden:keep` must not be copied, or every
    // snapshot of the volume would be pinned forever.
    fake.set_volume_tags(
        &vols[0],
        &[
            ("Name", "web-1-root"),
            ("Owner", "bob"),
            ("aws:backup:source-resource", "x"),
            (TAG_KEEP, "volume tag"),
        ],
    );
    let (_, untargeted) = fake.add_instance(&[("Backup", "false")], &[("/dev/xvda", "gp3")]);

    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &Metrics::new()).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!(
        (r.targeted_volumes, r.created, r.already_done, r.deleted),
        (3, 3, 0, 0)
    );
    assert!(r.problems.is_empty() && r.fatal.is_none(), "{r:#?}");

    let snaps = fake.snapshots();
    assert_eq!(snaps.len(), 3, "{snaps:#?}");
    assert!(snaps.iter().all(|s| *s.volume_id != *untargeted[0]));
    let slot_tag = "2026-03-02T04:30:00Z";
    for (i, (volume, device)) in vols
        .iter()
        .zip(["/dev/xvda", "/dev/sdf", "/dev/sdg"])
        .enumerate()
    {
        let found: Vec<&Snapshot> = snaps.iter().filter(|s| *s.volume_id == **volume).collect();
        assert_eq!(found.len(), 1, "one snapshot of {volume}: {snaps:#?}");
        let s = found[0];
        let (name, owner) = if i == 0 {
            ("web-1-root", "bob")
        } else {
            ("web-1", "alice")
        };
        let want = tags(&[
            ("Backup", "true"),
            ("Team", "infra"),
            ("Name", name),
            ("Owner", owner),
            (TAG_MANAGED, "true"),
            (TAG_POLICY, "prod"),
            (TAG_SCHEDULE, "daily"),
            (TAG_SLOT, slot_tag),
            (TAG_INSTANCE, instance.as_str()),
            (TAG_DEVICE, device),
        ]);
        assert_eq!(*s.tags, want, "tags of the snapshot of {volume}");
        // One CreateSnapshots for the instance: one description for its snapshots; the device is in a tag.
        for part in [
            "policy prod",
            "schedule daily",
            &format!("slot {slot_tag}"),
            &instance,
        ] {
            assert!(
                s.description.contains(part),
                "{part:?} in {:?}",
                s.description
            );
        }
        assert_eq!((s.state, &*s.owner_id), (SnapState::Pending, FAKE_ACCOUNT));
    }

    // A retry of the slot (a restart, catch-up) finds the snapshots by their slot tag, pending or completed.
    let again = run_at(
        &fake,
        policy,
        &["daily"],
        slot(),
        slot() + chrono::Duration::minutes(3),
        &Metrics::new(),
    )
    .await;
    assert_eq!(
        (
            again.report.targeted_volumes,
            again.report.created,
            again.report.already_done
        ),
        (3, 0, 3)
    );
    fake.complete_all();
    let third = run_at(
        &fake,
        policy,
        &["daily"],
        slot(),
        slot() + chrono::Duration::minutes(10),
        &Metrics::new(),
    )
    .await;
    assert_eq!((third.report.created, third.report.already_done), (0, 3));
    assert_eq!(third.report.result(), RunResult::Success);
    // Instance consistency: one call for the instance's three volumes, then one CreateTags per distinct set of
    // per-volume tags (the root volume's own Name and Owner, and each device).
    assert_eq!(
        (fake.calls("CreateSnapshots"), fake.calls("CreateSnapshot")),
        (1, 0)
    );
    assert_eq!(fake.calls("CreateTags"), 3);
    assert_eq!(fake.snapshots().len(), 3);
}

#[tokio::test]
async fn cofiring_schedules_share_one_snapshot_and_it_is_deleted_only_when_no_listed_schedule_keeps_it(
) {
    let cfg = config(
        r#"
[[policy]]
name = "prod"
target = { resource = "instance", tags = { Backup = "true" } }

[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { last = 2 }

[[policy.schedule]]
name = "weekly"
cron = "30 4 * * 1"
keep = { last = 2 }
"#,
    );
    let policy = &cfg.policies[0];
    let tz = cfg.daemon.timezone;
    let firing = firing_at(policy, slot(), tz);
    assert_eq!(firing, ["daily", "weekly"]);
    assert_eq!(firing_at(policy, slot() + days(1), tz), ["daily"]);
    assert!(firing_at(policy, slot() + chrono::Duration::hours(1), tz).is_empty());

    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 2);
    let v = &vols[0];
    let two_weeks = seed(
        &fake,
        v,
        "prod",
        "daily,weekly",
        slot() - days(14),
        SnapState::Completed,
        &[],
    );
    let one_week = seed(
        &fake,
        v,
        "prod",
        "daily,weekly",
        slot() - days(7),
        SnapState::Completed,
        &[],
    );
    let tuesday = seed(
        &fake,
        v,
        "prod",
        "daily",
        slot() - days(6),
        SnapState::Completed,
        &[],
    );
    let wednesday = seed(
        &fake,
        v,
        "prod",
        "daily",
        slot() - days(5),
        SnapState::Completed,
        &[],
    );

    let firing: Vec<&str> = firing.iter().map(String::as_str).collect();
    let first = run_at(&fake, policy, &firing, slot(), slot(), &Metrics::new()).await;
    assert_eq!(
        (first.report.created, first.report.targeted_volumes),
        (2, 2)
    );
    let today: Vec<Snapshot> = fake
        .snapshots()
        .into_iter()
        .filter(|s| s.tags.get(TAG_SLOT).map(String::as_str) == Some("2026-03-02T04:30:00Z"))
        .collect();
    assert_eq!(today.len(), 2, "one snapshot per volume: {today:#?}");
    for s in &today {
        assert_eq!(s.tags[TAG_SCHEDULE], "daily,weekly");
    }
    // The new snapshot is pending, so it does not count yet: daily keeps Tue+Wed, weekly both Mondays.
    assert_eq!(first.report.deleted, 0);

    fake.complete_all();
    let second = run_at(
        &fake,
        policy,
        &firing,
        slot(),
        slot() + chrono::Duration::minutes(30),
        &Metrics::new(),
    )
    .await;
    let new = today.iter().find(|s| *s.volume_id == **v).unwrap();
    assert_eq!(second.report.already_done, 2);
    assert_eq!(deleted_ids(&second), set(&[&two_weeks, &tuesday]));
    assert_eq!(second.report.deleted, 2);
    // Last week's Monday is out of daily's two but inside weekly's: kept by weekly alone.
    assert_eq!(action_of(&second, &one_week), Action::Keep);
    assert_eq!(reasons_of(&second, &one_week), [last("weekly", 2, 2)]);
    assert_eq!(reasons_of(&second, &wednesday), [last("daily", 2, 2)]);
    assert_eq!(
        reasons_of(&second, &new.id),
        [Reason::Newest, last("daily", 1, 2), last("weekly", 1, 2)]
    );
    assert_eq!(reasons_of(&second, &two_weeks), [Reason::Expired]);
    let left: BTreeSet<String> = snapshots_of(&fake, v)
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(left, set(&[&new.id.to_string(), &wednesday, &one_week]));
}

#[tokio::test]
async fn keep_last_prunes_per_volume_and_never_touches_protected_or_foreign_snapshots() {
    let cfg = daily_policy("{ last = 3 }");
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 2);
    let (v1, v2) = (&vols[0], &vols[1]);

    let d = |n: i64| slot() - days(n);
    let pinned = seed(
        &fake,
        v1,
        "prod",
        "daily",
        d(6),
        SnapState::Completed,
        &[(TAG_KEEP, "")],
    );
    let v1_d5 = seed(&fake, v1, "prod", "daily", d(5), SnapState::Completed, &[]);
    let v1_d4 = seed(&fake, v1, "prod", "daily", d(4), SnapState::Completed, &[]);
    let pending = seed(&fake, v1, "prod", "daily", d(3), SnapState::Pending, &[]);
    let v1_d2 = seed(&fake, v1, "prod", "daily", d(2), SnapState::Completed, &[]);
    let v1_d1 = seed(&fake, v1, "prod", "daily", d(1), SnapState::Completed, &[]);
    let v2_hist = daily_history(&fake, v2, &[6, 5, 4, 3, 2, 1]);
    // Old enough to be deleted if the worker looked at them.
    let other_policy = seed(
        &fake,
        v1,
        "staging",
        "daily",
        d(30),
        SnapState::Completed,
        &[],
    );
    let other_owner = seed_owned(
        &fake,
        OTHER_ACCOUNT,
        v1,
        "prod",
        "daily",
        d(31),
        SnapState::Completed,
        &[],
    );
    let d32 = format_slot(d(32));
    let unmanaged = fake.seed_snapshot(
        v1,
        SnapState::Completed,
        FAKE_ACCOUNT,
        &[
            (TAG_POLICY, "prod"),
            (TAG_SCHEDULE, "daily"),
            (TAG_SLOT, &d32),
        ],
    );

    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &Metrics::new()).await;
    assert_eq!(out.report.result(), RunResult::Success, "{:#?}", out.report);
    assert_eq!(
        deleted_ids(&out),
        set(&[&v1_d5, &v2_hist[0], &v2_hist[1], &v2_hist[2]])
    );
    assert_eq!(out.report.deleted, 4);
    assert_eq!(fake.calls("DeleteSnapshot"), 4);

    assert_eq!(reasons_of(&out, &pinned), [Reason::Pinned]);
    assert_eq!(reasons_of(&out, &pending), [Reason::Pending]);
    assert_eq!(
        reasons_of(&out, &v1_d1),
        [Reason::Newest, last("daily", 1, 3)]
    );
    assert_eq!(reasons_of(&out, &v1_d4), [last("daily", 3, 3)]);
    for foreign in [&other_policy, &other_owner, &unmanaged] {
        assert!(
            out.plan.iter().all(|d| *d.snapshot_id != **foreign),
            "{foreign} must not even be planned"
        );
    }

    let after = snapshot_ids(&fake);
    for kept in [
        &pinned,
        &v1_d4,
        &pending,
        &v1_d2,
        &v1_d1,
        &v2_hist[3],
        &v2_hist[4],
        &v2_hist[5],
        &other_policy,
        &other_owner,
        &unmanaged,
    ] {
        assert!(after.contains(kept), "{kept} was deleted");
    }
    // Three completed by the rule per volume (the pinned one on top), plus today's pending one each.
    let completed = |v: &str| {
        snapshots_of(&fake, v)
            .iter()
            .filter(|s| {
                s.state == SnapState::Completed
                    && *s.owner_id == *FAKE_ACCOUNT
                    && s.tags.get(TAG_POLICY).map(String::as_str) == Some("prod")
                    && s.tags.contains_key(TAG_MANAGED)
                    && !s.tags.contains_key(TAG_KEEP)
            })
            .count()
    };
    assert_eq!((completed(v1), completed(v2)), (3, 3));
}

#[tokio::test]
async fn keep_within_is_measured_from_the_newest_completed_snapshot_not_from_now() {
    let cfg = daily_policy(r#"{ within = "7d" }"#);
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 1);
    let v = &vols[0];
    // Creation stopped 60 days ago; the history before that is eleven daily snapshots.
    let newest = slot() - days(60);
    let hist: Vec<String> = (0..=10)
        .map(|k| {
            seed(
                &fake,
                v,
                "prod",
                "daily",
                newest - days(k),
                SnapState::Completed,
                &[],
            )
        })
        .collect();

    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &Metrics::new()).await;
    // Today's snapshot is still pending, so the window still hangs off the snapshot of 60 days ago: days 0..=7
    // before it stay (the boundary is inclusive), only 8, 9 and 10 go.
    assert_eq!(out.report.created, 1);
    assert_eq!(deleted_ids(&out), set(&[&hist[8], &hist[9], &hist[10]]));
    for id in &hist[..=7] {
        assert_eq!(action_of(&out, id), Action::Keep, "{id}");
        assert!(
            reasons_of(&out, id)
                .iter()
                .any(|r| matches!(r, Reason::Within { schedule, .. } if &**schedule == "daily")),
            "{id}: {:?}",
            reasons_of(&out, id)
        );
    }
    let left: BTreeSet<String> = snapshots_of(&fake, v)
        .into_iter()
        .filter(|s| s.state == SnapState::Completed)
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(left, hist[..=7].iter().cloned().collect());

    // Once today's snapshot has completed it is the anchor, and the old history is outside its 7 days.
    fake.complete_all();
    let later = run_at(
        &fake,
        policy,
        &["daily"],
        slot(),
        slot() + chrono::Duration::hours(1),
        &Metrics::new(),
    )
    .await;
    assert_eq!(deleted_ids(&later), hist[..=7].iter().cloned().collect());
    assert_eq!(snapshots_of(&fake, v).len(), 1);
}

#[tokio::test]
async fn a_failed_create_fails_only_its_volume_and_freezes_its_history() {
    let cfg = daily_policy("{ last = 2 }");
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 3);
    let hist: Vec<Vec<String>> = vols
        .iter()
        .map(|v| daily_history(&fake, v, &[5, 4, 3, 2, 1]))
        .collect();
    fake.fail_create_for(&vols[1], "IncorrectState");

    let m = Metrics::new();
    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &m).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!(
        (r.targeted_volumes, r.created, r.failed_volumes()),
        (3, 2, 1)
    );
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    let p = &r.problems[0];
    assert_eq!(
        (p.resource.as_str(), p.operation, p.code.as_str()),
        (vols[1].as_str(), "create", "IncorrectState")
    );
    assert_eq!(
        m.snapshots_failed
            .with_label_values(&["prod", "daily", REGION, "create"])
            .get(),
        1
    );

    // The other volumes are pruned to two completed; the failed one keeps all five although its count says two.
    let want: BTreeSet<String> = [&hist[0], &hist[2]]
        .iter()
        .flat_map(|h| h[..3].iter().cloned())
        .collect();
    assert_eq!(deleted_ids(&out), want);
    assert_eq!(r.deleted, 6);
    for id in &hist[1][..3] {
        assert_eq!(reasons_of(&out, id), [Reason::VolumeFailed], "{id}");
    }
    let failed_left: BTreeSet<String> = snapshots_of(&fake, &vols[1])
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(failed_left, hist[1].iter().cloned().collect());
    for v in [&vols[0], &vols[2]] {
        assert_eq!(snapshots_of(&fake, v).len(), 3, "two old + today's on {v}");
    }
}

#[tokio::test]
async fn a_snapshot_backing_an_ami_is_kept_in_use_and_is_not_a_problem() {
    let cfg = daily_policy("{ last = 1 }");
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 1);
    let hist = daily_history(&fake, &vols[0], &[3, 2, 1]);
    fake.mark_in_use(&hist[0]);

    let m = Metrics::new();
    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &m).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert!(r.problems.is_empty(), "{r:#?}");
    assert_eq!((r.deleted, r.kept_in_use), (1, 1));
    assert_eq!(fake.calls("DeleteSnapshot"), 2);
    let left = snapshot_ids(&fake);
    assert!(left.contains(&hist[0]) && !left.contains(&hist[1]) && left.contains(&hist[2]));
    assert_eq!(m.kept_in_use.with_label_values(&["prod", REGION]).get(), 1);
    assert_eq!(
        m.snapshots_failed
            .with_label_values(&["prod", "daily", REGION, "delete"])
            .get(),
        0
    );
}

/// Deletes `victim` right after the survey has listed it, as another actor (or EC2's eventually consistent
/// describe) can: the worker's own delete then answers `InvalidSnapshot.NotFound`.
fn vanish_after_describe(fake: Arc<FakeEc2>, victim: String) -> Hooked {
    let victim = Mutex::new(Some(victim));
    Hooked::new(fake.clone()).after(move |call, answer| {
        let (Call::DescribeSnapshots(..), Answer::Snapshots(Ok(listed))) = (call, answer) else {
            return Step::Go;
        };
        let Some(id) = victim.lock().unwrap().take() else {
            return Step::Go;
        };
        assert!(
            listed.items.iter().any(|s| *s.id == *id),
            "{id} must be listed first"
        );
        let fake = fake.clone();
        Step::run(async move { fake.delete_snapshot(&id).await })
    })
}

#[tokio::test]
async fn a_snapshot_already_gone_counts_as_deleted() {
    let cfg = daily_policy("{ last = 1 }");
    let policy = &cfg.policies[0];
    let fake = Arc::new(fleet());
    let (_, vols) = backed_up_instance(&fake, 1);
    let hist = daily_history(&fake, &vols[0], &[3, 2, 1]);
    let ec2 = vanish_after_describe(fake.clone(), hist[1].clone());

    let m = Metrics::new();
    let out = run_at(&ec2, policy, &["daily"], slot(), slot(), &m).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert!(r.problems.is_empty(), "{r:#?}");
    assert_eq!((r.deleted, r.kept_in_use), (2, 0));
    assert_eq!(deleted_ids(&out), set(&[&hist[0], &hist[1]]));
    // The vanishing delete plus the worker's two, one of which found nothing.
    assert_eq!(fake.calls("DeleteSnapshot"), 3);
    assert_eq!(
        m.snapshots_deleted
            .with_label_values(&["prod", "daily", REGION])
            .get(),
        2
    );
    let left = snapshot_ids(&fake);
    assert!(!left.contains(&hist[0]) && !left.contains(&hist[1]) && left.contains(&hist[2]));
}

const COUNT_TAG_POLICY: &str = r#"
[[policy]]
name = "tagged"
target = { resource = "instance", tags = {} }

[[policy.schedule]]
name = "daily"
cron = "@daily"
count-tag = "SnapshotDaily"
"#;

/// Completed `daily` snapshots of policy `tagged`, `ago` days before `slot()`, carrying `extra` tags.
fn tagged_history(
    fake: &FakeEc2,
    volume: &str,
    ago: &[i64],
    extra: &[(&str, &str)],
) -> Vec<String> {
    ago.iter()
        .map(|d| {
            seed(
                fake,
                volume,
                "tagged",
                "daily",
                slot() - days(*d),
                SnapState::Completed,
                extra,
            )
        })
        .collect()
}

#[tokio::test]
async fn count_tags_set_each_instances_keep_count_and_bad_values_skip_only_their_instance() {
    let cfg = config(COUNT_TAG_POLICY);
    let policy = &cfg.policies[0];
    let fake = fleet();
    let slot = at("2026-03-02T00:00:00Z");
    let one = [("/dev/xvda", "gp3")];
    let (_, three) = fake.add_instance(&[("SnapshotDaily", "3")], &one);
    let (_, five) = fake.add_instance(&[("SnapshotDaily", " 5 ")], &one);
    let three_hist = tagged_history(&fake, &three[0], &[5, 4, 3, 2, 1], &[]);
    let five_hist = tagged_history(&fake, &five[0], &[7, 6, 5, 4, 3, 2, 1], &[]);

    let mut bad_instances = BTreeSet::new();
    let mut bad_history = Vec::new();
    for value in ["abc", "-1", "0", "1e9"] {
        // Two volumes on the first: a bad tag is still reported once per instance, not per volume.
        let devices: &[(&str, &str)] = if value == "abc" {
            &[("/dev/xvda", "gp3"), ("/dev/sdf", "gp3")]
        } else {
            &one
        };
        let (id, vols) = fake.add_instance(&[("SnapshotDaily", value)], devices);
        bad_instances.insert(id);
        for v in &vols {
            bad_history.extend(tagged_history(&fake, v, &[4, 3, 2, 1], &[]));
        }
    }
    let (_, untagged) = fake.add_instance(&[("Env", "prod")], &one);

    let m = Metrics::new();
    let out = run_at(&fake, policy, &["daily"], slot, slot, &m).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Partial, "{r:#?}");
    assert_eq!(
        (r.targeted_volumes, r.created, r.failed_volumes()),
        (2, 2, 0)
    );
    assert_eq!(r.problems.len(), 4, "{r:#?}");
    let mut reported = BTreeSet::new();
    for p in &r.problems {
        assert_eq!(
            (p.operation, p.code.as_str()),
            ("target", "bad-count-tag"),
            "{p:#?}"
        );
        assert!(p.message.contains("SnapshotDaily"), "{p:#?}");
        reported.insert(p.resource.clone());
    }
    assert_eq!(reported, bad_instances);
    assert_eq!(
        m.skipped_resources
            .with_label_values(&["tagged", "daily", "bad-count-tag"])
            .get(),
        4
    );

    let created: Vec<Snapshot> = fake
        .snapshots()
        .into_iter()
        .filter(|s| s.state == SnapState::Pending)
        .collect();
    let created_on: BTreeSet<String> = created.iter().map(|s| s.volume_id.to_string()).collect();
    assert_eq!(created_on, set(&[&three[0], &five[0]]));
    assert!(!created_on.contains(&untagged[0]));
    // The count travels with the snapshot: it is what retention falls back to once the instance is gone.
    let on_three = created.iter().find(|s| *s.volume_id == *three[0]).unwrap();
    assert_eq!(on_three.tags["SnapshotDaily"], "3");

    assert_eq!(
        deleted_ids(&out),
        set(&[&three_hist[0], &three_hist[1], &five_hist[0], &five_hist[1]])
    );
    // A skipped instance's history is left alone: its count is unknown, and guessing could delete backups.
    let left = snapshot_ids(&fake);
    for id in &bad_history {
        assert!(left.contains(id), "{id} of a bad-tag instance was deleted");
        assert!(
            reasons_of(&out, id)
                .iter()
                .any(|r| matches!(r, Reason::CountUnknown { .. })),
            "{id}: {:?}",
            reasons_of(&out, id)
        );
    }
}

#[tokio::test]
async fn a_gone_count_tag_target_keeps_the_count_written_on_its_newest_snapshot() {
    let cfg = config(COUNT_TAG_POLICY);
    let policy = &cfg.policies[0];
    let fake = fleet();
    let slot = at("2026-03-02T00:00:00Z");
    let one = [("/dev/xvda", "gp3")];
    let (untagged, untagged_vols) = fake.add_instance(&[("SnapshotDaily", "2")], &one);
    let (_, gone_vols) = fake.add_instance(&[("SnapshotDaily", "2")], &one);
    let mut hist = Vec::new();
    for v in [&untagged_vols[0], &gone_vols[0]] {
        // The owner lowered the count from 4 to 2 before the instance went away: the newest snapshot's count rules.
        let mut h = tagged_history(&fake, v, &[5, 4, 3], &[("SnapshotDaily", "4")]);
        h.extend(tagged_history(&fake, v, &[2, 1], &[("SnapshotDaily", "2")]));
        hist.push(h);
    }
    fake.set_instance_tags(&untagged, &[("Env", "prod")]);
    fake.remove_volume(&gone_vols[0]);

    let out = run_at(&fake, policy, &["daily"], slot, slot, &Metrics::new()).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!((r.targeted_volumes, r.created, r.deleted), (0, 0, 6));
    let want: BTreeSet<String> = hist.iter().flat_map(|h| h[..3].iter().cloned()).collect();
    assert_eq!(deleted_ids(&out), want);
    for h in &hist {
        assert_eq!(
            reasons_of(&out, &h[4]),
            [Reason::Newest, last("daily", 1, 2)]
        );
        assert_eq!(reasons_of(&out, &h[3]), [last("daily", 2, 2)]);
    }
    assert_eq!(
        snapshot_ids(&fake),
        hist.iter().flat_map(|h| h[3..].iter().cloned()).collect()
    );
}

#[tokio::test]
async fn a_failed_describe_fails_the_run_and_touches_nothing() {
    let cfg = daily_policy("{ last = 1 }");
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 2);
    for v in &vols {
        daily_history(&fake, v, &[3, 2, 1]);
    }
    let before = fake.snapshots();
    fake.fail_operation("DescribeSnapshots", "InternalError");

    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &Metrics::new()).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Failure, "{r:#?}");
    let fatal = r.fatal.as_ref().expect("a fatal problem");
    assert_eq!(
        (
            fatal.resource.as_str(),
            fatal.operation,
            fatal.code.as_str()
        ),
        (REGION, "describe", "InternalError")
    );
    assert!(r.retention_skipped.is_some());
    assert_eq!((r.created, r.deleted), (0, 0));
    assert!(out.plan.is_empty());
    assert_eq!(
        (fake.calls("CreateSnapshot"), fake.calls("DeleteSnapshot")),
        (0, 0)
    );
    assert_eq!(fake.snapshots(), before);
}

#[tokio::test]
async fn a_dry_run_reports_what_it_would_do_and_changes_nothing() {
    let cfg = daily_policy("{ last = 2 }");
    let policy = &cfg.policies[0];
    let fake = Arc::new(fleet());
    let (_, vols) = backed_up_instance(&fake, 2);
    let hist: Vec<Vec<String>> = vols
        .iter()
        .map(|v| daily_history(&fake, v, &[4, 3, 2, 1]))
        .collect();
    let before = fake.snapshots();
    let dry = DryRun::new(fake.clone());

    let spec = RunSpec::new(policy, slot(), FAKE_ACCOUNT)
        .firing(["daily"])
        .explain(true);
    let now = slot();
    let out = worker::run(&dry, &spec, &Metrics::new(), || now).await;
    let r = &out.report;
    assert!(r.dry_run);
    assert_eq!((r.created, r.deleted), (2, 4), "{r:#?}");

    let log = dry.log();
    let would_create: BTreeSet<String> = log.created.iter().map(|c| c.volume_id.clone()).collect();
    assert_eq!(would_create, vols.iter().cloned().collect());
    for c in &log.created {
        assert_eq!(c.tags[TAG_SLOT], "2026-03-02T04:30:00Z");
        assert_eq!(c.tags[TAG_SCHEDULE], "daily");
    }
    let would_delete: BTreeSet<String> = log.deleted.iter().cloned().collect();
    assert_eq!(log.deleted.len(), 4);
    assert_eq!(
        would_delete,
        set(&[&hist[0][0], &hist[0][1], &hist[1][0], &hist[1][1]])
    );
    assert_eq!(deleted_ids(&out), would_delete);

    assert_eq!(fake.snapshots(), before);
    assert_eq!(
        (fake.calls("CreateSnapshot"), fake.calls("DeleteSnapshot")),
        (0, 0)
    );
}

#[tokio::test]
async fn volume_targets_snapshot_tagged_volumes_with_a_device_only_when_attached() {
    let cfg = config(
        r#"
[[policy]]
name = "data"
target = { resource = "volume", tags = { Backup = "daily" } }

[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { last = 7 }
"#,
    );
    let policy = &cfg.policies[0];
    let fake = fleet();
    let loose = fake.add_volume(&[("Backup", "daily"), ("Name", "scratch")]);
    let _untagged_loose = fake.add_volume(&[("Team", "data")]);
    let (instance, vols) = fake.add_instance(
        &[("Backup", "daily"), ("Name", "db-1")],
        &[("/dev/xvda", "gp3"), ("/dev/sdf", "io2")],
    );
    fake.set_volume_tags(&vols[1], &[("Backup", "daily")]);

    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &Metrics::new()).await;
    let r = &out.report;
    assert_eq!(r.result(), RunResult::Success, "{r:#?}");
    assert_eq!((r.targeted_volumes, r.created), (2, 2));
    let snaps = fake.snapshots();
    let on: BTreeSet<String> = snaps.iter().map(|s| s.volume_id.to_string()).collect();
    // The instance's tag does not make its untagged root volume a target: only the volume's own tags count.
    assert_eq!(on, set(&[&loose, &vols[1]]));

    let loose_snap = snaps.iter().find(|s| *s.volume_id == *loose).unwrap();
    assert!(
        !loose_snap.tags.contains_key(TAG_DEVICE),
        "{:?}",
        loose_snap.tags
    );
    assert!(
        !loose_snap.tags.contains_key(TAG_INSTANCE),
        "{:?}",
        loose_snap.tags
    );
    assert_eq!(loose_snap.tags["Name"], "scratch");
    assert_eq!(loose_snap.tags["Backup"], "daily");
    assert_eq!(loose_snap.tags[TAG_POLICY], "data");

    let attached = snaps.iter().find(|s| *s.volume_id == *vols[1]).unwrap();
    assert_eq!(attached.tags[TAG_DEVICE], "/dev/sdf");
    // A volume target copies the volume's tags only; without a Name of its own it gets snapwarden's.
    assert_eq!(
        attached.tags["Name"],
        format!("snapwarden data {}", vols[1])
    );
    assert!(attached
        .description
        .contains(&format!("{instance} /dev/sdf")));
}

#[tokio::test]
async fn a_run_leaves_created_deleted_staleness_and_unprotected_metrics() {
    let cfg = config(
        r#"
[[policy]]
name = "prod"
target = { resource = "instance", tags = { Backup = "true" } }

[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { last = 1 }

[[policy.schedule]]
name = "weekly"
cron = "30 4 * * 1"
keep = { last = 4 }
"#,
    );
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 2);
    // Only the first volume has history, and only daily history: the second is unprotected by both schedules.
    let hist = daily_history(&fake, &vols[0], &[3, 1]);
    let m = Metrics::new();
    let now = slot() + chrono::Duration::minutes(5);

    let out = run_at(&fake, policy, &["daily", "weekly"], slot(), now, &m).await;
    assert_eq!(deleted_ids(&out), set(&[&hist[0]]));
    let text = m.render(now);
    let pss = |s| {
        [
            ("policy", "prod"),
            ("schedule", s),
            ("account", FAKE_ACCOUNT),
            ("region", REGION),
        ]
    };
    let ps = |s| {
        [
            ("policy", "prod"),
            ("schedule", s),
            ("account", FAKE_ACCOUNT),
        ]
    };
    // One snapshot per volume serves both schedules and counts once under each.
    assert_eq!(
        metric(&text, "snapwarden_snapshots_created_total", &pss("daily")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "snapwarden_snapshots_created_total", &pss("weekly")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "snapwarden_snapshots_deleted_total", &pss("daily")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "snapwarden_snapshots_deleted_total", &pss("weekly")),
        None,
        "{text}"
    );
    // New snapshots are pending: daily's worst volume is the first one's snapshot of a day ago (plus 5 minutes),
    // and the second volume has nothing completed. Weekly has no completed snapshot anywhere.
    assert_eq!(
        metric(&text, "snapwarden_staleness_seconds", &ps("daily")),
        Some(86_400.0 + 300.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "snapwarden_unprotected_volumes", &ps("daily")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "snapwarden_staleness_seconds", &ps("weekly")),
        None,
        "{text}"
    );
    assert_eq!(
        metric(&text, "snapwarden_unprotected_volumes", &ps("weekly")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "snapwarden_managed_snapshots",
            &[
                ("policy", "prod"),
                ("account", FAKE_ACCOUNT),
                ("region", REGION)
            ]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "snapwarden_runs_total",
            &[
                ("policy", "prod"),
                ("schedule", "daily"),
                ("kind", "snapshot"),
                ("result", "success")
            ]
        ),
        Some(1.0),
        "{text}"
    );

    // Once today's snapshots complete, a retry of the slot refreshes the figures; staleness then grows with the
    // scrape time, not the run time.
    fake.complete_all();
    let later = slot() + chrono::Duration::minutes(10);
    run_at(&fake, policy, &["daily", "weekly"], slot(), later, &m).await;
    let text = m.render(later + chrono::Duration::hours(1));
    for s in ["daily", "weekly"] {
        assert_eq!(
            metric(&text, "snapwarden_staleness_seconds", &ps(s)),
            Some(3_600.0 + 600.0),
            "{text}"
        );
        assert_eq!(
            metric(&text, "snapwarden_unprotected_volumes", &ps(s)),
            Some(0.0),
            "{text}"
        );
    }
    assert_eq!(
        metric(&text, "snapwarden_snapshots_created_total", &pss("daily")),
        Some(2.0),
        "{text}"
    );
    // The first volume's snapshot of yesterday is now surplus to daily's one.
    assert_eq!(
        metric(&text, "snapwarden_snapshots_deleted_total", &pss("daily")),
        Some(2.0),
        "{text}"
    );
}

/// Fails every publish, and holds each one until the test opens the gate, so a run can be shown not to wait on it.
struct Broken {
    gate: tokio::sync::Semaphore,
    attempts: AtomicUsize,
}

#[async_trait]
impl Publisher for Broken {
    async fn publish(&self, _message: &Message) -> snapwarden::error::Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let _permit = self.gate.acquire().await.unwrap();
        Err(Error::api(
            Op::Publish,
            REGION,
            "InternalError",
            "SNS is down",
        ))
    }
}

#[tokio::test]
async fn a_partial_run_alerts_once_and_the_next_success_sends_recovered() {
    let cfg = daily_policy("{ last = 7 }");
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 2);
    fake.fail_create_for(&vols[1], "IncorrectState");
    let metrics = Arc::new(Metrics::new());
    let recorder = Arc::new(Recorder::default());
    let (notifier, task) = Notifier::spawn(
        Some(recorder.clone() as Arc<dyn Publisher>),
        Duration::from_secs(6 * 3600),
        metrics.clone(),
    );

    for day in 0..2 {
        let s = slot() + days(day);
        let out = run_at(&fake, policy, &["daily"], s, s, &metrics).await;
        assert_eq!(out.report.result(), RunResult::Partial);
        notifier.submit(out.report, &metrics);
    }
    fake.clear_faults();
    let s = slot() + days(2);
    let out = run_at(&fake, policy, &["daily"], s, s, &metrics).await;
    assert_eq!(out.report.result(), RunResult::Success);
    notifier.submit(out.report, &metrics);
    // Closing the queue lets the sender task finish once it has handled everything submitted, in order.
    drop(notifier);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("notifier drains")
        .unwrap();

    let sent = recorder.sent.lock().unwrap().clone();
    let subjects: Vec<&str> = sent.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            format!("snapwarden PARTIAL prod/daily {FAKE_ACCOUNT}/us-east-1: 1 of 2 volumes"),
            format!("snapwarden RECOVERED prod/daily {FAKE_ACCOUNT}/us-east-1"),
        ]
    );
    assert_eq!(sent[0].attributes["severity"], "warning");
    assert!(sent[0].body.contains(&vols[1]), "{}", sent[0].body);
    assert!(sent[0].body.contains("IncorrectState"), "{}", sent[0].body);
    let n = |outcome: &str| metrics.notifications.with_label_values(&[outcome]).get();
    assert_eq!((n("sent"), n("deduplicated"), n("failed")), (2, 1, 0));
}

#[tokio::test]
async fn a_broken_publisher_neither_blocks_nor_fails_runs() {
    let cfg = daily_policy("{ last = 7 }");
    let policy = &cfg.policies[0];
    let fake = fleet();
    let (_, vols) = backed_up_instance(&fake, 2);
    fake.fail_create_for(&vols[1], "IncorrectState");
    let metrics = Arc::new(Metrics::new());
    let broken = Arc::new(Broken {
        gate: tokio::sync::Semaphore::new(0),
        attempts: AtomicUsize::new(0),
    });
    let (notifier, task) = Notifier::spawn(
        Some(broken.clone() as Arc<dyn Publisher>),
        Duration::from_secs(6 * 3600),
        metrics.clone(),
    );

    let out = run_at(&fake, policy, &["daily"], slot(), slot(), &metrics).await;
    assert_eq!(out.report.result(), RunResult::Partial);
    notifier.submit(out.report, &metrics);
    tokio::time::timeout(Duration::from_secs(10), async {
        while broken.attempts.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the digest reaches the publisher");

    // SNS is now stuck on the digest; the next run and its hand-off still finish at once and report as usual.
    fake.clear_faults();
    let next = slot() + days(1);
    let out = tokio::time::timeout(Duration::from_secs(5), async {
        let out = run_at(&fake, policy, &["daily"], next, next, &metrics).await;
        notifier.submit(out.report.clone(), &metrics);
        out
    })
    .await
    .expect("a run does not wait on SNS");
    assert_eq!(out.report.result(), RunResult::Success);
    assert_eq!(out.report.created, 2);

    broken.gate.add_permits(10);
    drop(notifier);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("notifier drains")
        .unwrap();
    // The digest failed and was counted; the recovery that followed superseded it while it waited for its retry,
    // and since nobody was told of the failure, nothing is left to send (see `notify::Outbox`). The runs were
    // unaffected throughout.
    assert_eq!(broken.attempts.load(Ordering::SeqCst), 1);
    let n = |outcome: &str| metrics.notifications.with_label_values(&[outcome]).get();
    assert_eq!(
        (n("failed"), n("sent"), n("dropped"), n("superseded")),
        (1, 0, 0, 1)
    );
}
