//! The copy phase over linked in-memory regions (`FakeEc2::link_regions`): what a run copies, with which tags and
//! encryption, in which order; what the source keeps for a copy still to make; the destination's retention of its
//! copies; errored, refused, deferred and slow copies; the copy-concurrency gate under a large estate; dry runs;
//! and the copy metrics. Every CopySnapshot the destination receives is recorded (`Rig::sent`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};

use super::Destinations;
use crate::config::Policy;
use crate::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use crate::ec2::hooked::{Answer, Call, Hooked, Step};
use crate::ec2::{self, CopySnapshot, DryRun, Ec2, Snapshot, COPY_VOLUME_ID};
use crate::metrics::Metrics;
use crate::retention::{Action, Reason, SnapState};
use crate::schedule::format_slot;
use crate::worker::{self, Completion, Outcome, RunSpec};

const SOURCE: &str = "us-east-1";
const DR: &str = "eu-west-1";

/// A Monday, 04:30 UTC: the daily schedule's slot.
fn slot() -> DateTime<Utc> {
    "2026-03-02T04:30:00Z".parse().unwrap()
}

fn days(n: i64) -> Duration {
    Duration::days(n)
}

/// Policy `prod` over instances tagged `Backup = true`, one schedule `daily` keeping `keep` in the source, with
/// `copy` (its `[[policy.schedule.copy]]` tables) and `extra` (policy keys) added.
fn policy_with(keep: &str, copy: &str, extra: &str) -> Policy {
    in_source(&policy_toml(&format!("keep = {keep}"), copy, extra))
}

/// The policy of [`policy_with`] with the schedule's `keys` (its keep, or its count tag) given whole, no `[aws]`.
fn policy_toml(keys: &str, copy: &str, extra: &str) -> String {
    format!(
        r#"
[[policy]]
name = "prod"
target = {{ resource = "instance", tags = {{ Backup = "true" }} }}
{extra}

[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
{keys}
{copy}
"#
    )
}

/// The policy of `toml`, snapshotted in [`SOURCE`] (`aws.regions`).
fn in_source(toml: &str) -> Policy {
    load(&format!("[aws]\nregions = [\"{SOURCE}\"]\n{toml}"))
}

fn load(toml: &str) -> Policy {
    let config = crate::config::from_toml_str(std::path::Path::new("copy.toml"), toml, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    config.policies[0].clone()
}

/// A copy table to `region` with `keep` and further `keys`.
fn copy_table(region: &str, keep: &str, keys: &str) -> String {
    format!("[[policy.schedule.copy]]\nregion = \"{region}\"\nkeep = {keep}\n{keys}\n")
}

fn copy_to_dr(keep: &str, keys: &str) -> String {
    copy_table(DR, keep, keys)
}

fn policy(copy: &str) -> Policy {
    policy_with("{ last = 7 }", copy, "")
}

struct Rig {
    source: Arc<FakeEc2>,
    dr: Arc<FakeEc2>,
    destinations: Destinations,
    metrics: Metrics,
    /// Every CopySnapshot request the destination received, in order (refused ones too).
    sent: Arc<Mutex<Vec<CopySnapshot>>>,
    /// The most copies seen pending in the destination right after a CopySnapshot answer.
    most_pending: Arc<AtomicUsize>,
}

impl Rig {
    fn new(concurrency: usize) -> Self {
        let (source, dr) = (Arc::new(FakeEc2::new(SOURCE)), Arc::new(FakeEc2::new(DR)));
        FakeEc2::link_regions(&[source.clone(), dr.clone()]);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let most_pending = Arc::new(AtomicUsize::new(0));
        let (log, most, watched) = (sent.clone(), most_pending.clone(), dr.clone());
        let recorded = Hooked::new(dr.clone())
            .before(move |call| {
                if let Call::CopySnapshot(r) = call {
                    log.lock().unwrap().push((*r).clone());
                }
                Step::Go
            })
            .after(move |call, _: Answer<'_>| {
                if let Call::CopySnapshot(_) = call {
                    let pending = pending_copies(&watched).len();
                    most.fetch_max(pending, Ordering::SeqCst);
                }
                Step::Go
            });
        let destinations = Destinations::new(concurrency, [Arc::new(recorded) as Arc<dyn Ec2>]);
        Rig {
            source,
            dr,
            destinations,
            metrics: Metrics::new(),
            sent,
            most_pending,
        }
    }

    fn spec<'a>(&'a self, policy: &'a Policy, at: DateTime<Utc>) -> RunSpec<'a> {
        RunSpec::new(policy, at, FAKE_ACCOUNT)
            .destinations(&self.destinations)
            .explain(true)
    }

    async fn run(&self, policy: &Policy, at: DateTime<Utc>) -> Outcome {
        self.run_spec(at, self.spec(policy, at)).await
    }

    /// A run that polls its snapshots and copies within `deadline` (on tokio's clock: paused in these tests).
    async fn run_waiting(
        &self,
        policy: &Policy,
        at: DateTime<Utc>,
        deadline: StdDuration,
    ) -> Outcome {
        let spec = self
            .spec(policy, at)
            .completion(Completion::within(deadline));
        self.run_spec(at, spec).await
    }

    /// The run of `spec` with both regions' clocks and the run's clock at `at`.
    async fn run_spec(&self, at: DateTime<Utc>, spec: RunSpec<'_>) -> Outcome {
        self.source.set_clock(at);
        self.dr.set_clock(at);
        worker::run(self.source.as_ref(), &spec, &self.metrics, || at).await
    }

    /// An instance tagged for the policy with one volume; returns the volume.
    fn volume(&self) -> String {
        let (_, volumes) = self
            .source
            .add_instance(&[("Backup", "true")], &[("/dev/xvda", "gp3")]);
        volumes.into_iter().next().unwrap()
    }

    /// A completed snapshot of `volume` the policy made for slot `at`, with `extra` tags.
    fn snapshot(&self, volume: &str, at: DateTime<Utc>, extra: &[(&str, &str)]) -> String {
        let slot = format_slot(at);
        let mut tags = managed(&slot);
        tags.extend_from_slice(extra);
        self.source.set_clock(at);
        self.source
            .seed_snapshot(volume, SnapState::Completed, FAKE_ACCOUNT, &tags)
    }

    /// A completed snapshot of `volume` for each of the `n` days up to `last`, oldest first.
    fn dailies(&self, volume: &str, n: i64, last: DateTime<Utc>) -> Vec<String> {
        (0..n)
            .rev()
            .map(|d| self.snapshot(volume, last - days(d), &[]))
            .collect()
    }

    /// `n` volumes, each with a completed snapshot of today's slot; returns the snapshots.
    fn volumes_with_todays_snapshot(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| self.snapshot(&self.volume(), slot(), &[]))
            .collect()
    }

    /// A completed copy without further tags: see [`Rig::copy`].
    fn completed_copy(&self, source: &str, volume: &str, at: DateTime<Utc>) -> String {
        self.copy(source, volume, at, SnapState::Completed, &[])
    }

    /// A copy in the destination of `source` (a snapshot of `volume` for slot `at`), in `state`.
    fn copy(
        &self,
        source: &str,
        volume: &str,
        at: DateTime<Utc>,
        state: SnapState,
        extra: &[(&str, &str)],
    ) -> String {
        let slot = format_slot(at);
        let mut tags = managed(&slot);
        tags.extend_from_slice(&[
            (ec2::TAG_SOURCE_SNAPSHOT, source),
            (ec2::TAG_SOURCE_REGION, SOURCE),
            (ec2::TAG_SOURCE_VOLUME, volume),
        ]);
        tags.extend_from_slice(extra);
        self.dr.set_clock(at);
        self.dr
            .seed_snapshot(COPY_VOLUME_ID, state, FAKE_ACCOUNT, &tags)
    }

    /// The CopySnapshot requests the destination received so far, in order.
    fn requests(&self) -> Vec<CopySnapshot> {
        self.sent.lock().unwrap().clone()
    }

    /// The source snapshot ids the destination was asked to copy, in order.
    fn sent_sources(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| r.source_snapshot_id)
            .collect()
    }

    /// The destination's snapshots, by id.
    fn dr_ids(&self) -> BTreeSet<String> {
        ids_in(&self.dr)
    }

    /// The source snapshots the destination's copies record, whatever their state.
    fn copied_sources(&self) -> BTreeSet<String> {
        self.dr
            .snapshots()
            .iter()
            .filter_map(|s| tag(s, ec2::TAG_SOURCE_SNAPSHOT).map(String::from))
            .collect()
    }

    fn source_ids(&self) -> BTreeSet<String> {
        ids_in(&self.source)
    }
}

fn ids_in(region: &FakeEc2) -> BTreeSet<String> {
    region
        .snapshots()
        .iter()
        .map(|s| s.id.to_string())
        .collect()
}

/// The tags of a snapshot of policy `prod`, schedule `daily`, slot `slot`.
fn managed(slot: &str) -> Vec<(&'static str, &str)> {
    vec![
        (ec2::TAG_MANAGED, "true"),
        (ec2::TAG_POLICY, "prod"),
        (ec2::TAG_SCHEDULE, "daily"),
        (ec2::TAG_SLOT, slot),
    ]
}

fn pending_copies(dr: &FakeEc2) -> Vec<Snapshot> {
    dr.snapshots()
        .into_iter()
        .filter(|s| s.state == SnapState::Pending && &*s.volume_id == COPY_VOLUME_ID)
        .collect()
}

fn tag<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.tags.get(key).map(String::as_str)
}

fn ids<const N: usize>(ids: [&String; N]) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

#[track_caller]
fn assert_no_problems(outcome: &Outcome) {
    let problems = &outcome.report.problems;
    assert!(problems.is_empty(), "{problems:?}");
}

/// The exposition line of `snapwarden_copies_total` for `outcome` (prod/daily from the source to the
/// destination) with value `n`.
fn copies_total(outcome: &str, n: u32) -> String {
    format!(
        r#"snapwarden_copies_total{{account="{FAKE_ACCOUNT}",destination="{DR}",outcome="{outcome}",policy="prod",region="{SOURCE}",schedule="daily"}} {n}"#
    )
}

#[track_caller]
fn assert_has_line(text: &str, line: &str) {
    assert!(text.contains(line), "missing {line} in\n{text}");
}

/// (resource, operation, code) of each problem of `outcome`.
fn problems(outcome: &Outcome) -> Vec<(String, &'static str, String)> {
    outcome
        .report
        .problems
        .iter()
        .map(|p| (p.resource.clone(), p.operation, p.code.clone()))
        .collect()
}

#[tokio::test]
async fn a_completed_snapshot_is_copied_once_with_every_tag() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    let volume = rig.volume();
    let first = rig.run(&policy, slot()).await;
    assert_eq!(first.report.created, 1);
    assert_eq!(
        first.report.copies.created, 0,
        "a pending source is not copied"
    );
    rig.source.complete_all();

    let second = rig.run(&policy, slot()).await;
    assert_eq!(second.report.copies.created, 1, "{:?}", second.report);
    let copies = rig.dr.snapshots();
    assert_eq!(copies.len(), 1);
    let source = &rig.source.snapshots()[0];
    let c = &copies[0];
    assert_eq!(tag(c, ec2::TAG_MANAGED), Some("true"));
    assert_eq!(tag(c, ec2::TAG_POLICY), Some("prod"));
    assert_eq!(tag(c, ec2::TAG_SCHEDULE), Some("daily"));
    assert_eq!(tag(c, ec2::TAG_SLOT), Some(format_slot(slot()).as_str()));
    assert_eq!(tag(c, ec2::TAG_SOURCE_SNAPSHOT), Some(&*source.id));
    assert_eq!(tag(c, ec2::TAG_SOURCE_REGION), Some(SOURCE));
    assert_eq!(tag(c, ec2::TAG_SOURCE_VOLUME), Some(volume.as_str()));
    assert_eq!(c.tags.len(), 7, "snapwarden's own tags only: {:?}", c.tags);
    let sent = rig.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (
            sent[0].source_region.as_str(),
            sent[0].encrypted,
            &sent[0].kms_key_id
        ),
        (SOURCE, false, &None),
        "no encryption asked: the copy is as its source"
    );

    rig.dr.complete_all();
    let third = rig.run(&policy, slot()).await;
    assert_eq!(third.report.copies.created, 0);
    assert_eq!(rig.dr.snapshots().len(), 1, "a rerun copies nothing");
    let next = slot() + days(1);
    rig.run(&policy, next).await;
    rig.source.complete_all();
    let fourth = rig.run(&policy, next).await;
    assert_eq!(fourth.report.copies.created, 1);
    assert_no_problems(&fourth);
}

#[tokio::test]
async fn copy_tags_carries_the_sources_user_tags_but_never_aws_ones_and_the_kms_key_reaches_the_request(
) {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr(
        "{ last = 3 }",
        "kms-key-id = \"alias/snapwarden-dr\"\ncopy-tags = true",
    ));
    let volume = rig.volume();
    let source = rig.snapshot(
        &volume,
        slot(),
        &[
            ("CostCenter", "42"),
            ("Owner", "db-team"),
            ("aws:backup:source-resource", "arn:aws:ec2:x"),
        ],
    );
    let out = rig.run(&policy, slot()).await;
    assert_eq!(out.report.copies.created, 1, "{:?}", out.report);
    assert_no_problems(&out);

    let sent = rig.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(
        (r.source_region.as_str(), r.source_snapshot_id.as_str()),
        (SOURCE, source.as_str())
    );
    assert!(r.encrypted, "a kms-key-id implies encrypted");
    assert_eq!(r.kms_key_id.as_deref(), Some("alias/snapwarden-dr"));
    let copy = &rig.dr.snapshots()[0];
    let keys: BTreeSet<&str> = copy.tags.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        ec2::TAG_MANAGED,
        ec2::TAG_POLICY,
        ec2::TAG_SCHEDULE,
        ec2::TAG_SLOT,
        ec2::TAG_SOURCE_SNAPSHOT,
        ec2::TAG_SOURCE_REGION,
        ec2::TAG_SOURCE_VOLUME,
        "CostCenter",
        "Owner",
        // What the run added to the slot's snapshot from its instance: user tags of the source like the others.
        "Backup",
        "Name",
    ]
    .into();
    assert_eq!(
        keys, expected,
        "never aws:*, nor the source's own snapwarden tags"
    );
    assert_eq!(tag(copy, "CostCenter"), Some("42"));
    assert_eq!(tag(copy, "Owner"), Some("db-team"));
}

#[tokio::test]
async fn encrypted_without_a_key_asks_for_the_destinations_default_key() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", "encrypted = true"));
    let volume = rig.volume();
    rig.snapshot(&volume, slot(), &[("CostCenter", "42")]);
    rig.run(&policy, slot()).await;
    let sent = rig.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].encrypted, &sent[0].kms_key_id), (true, &None));
    let copy = &rig.dr.snapshots()[0];
    assert_eq!(tag(copy, "CostCenter"), None, "copy-tags is off by default");
}

#[tokio::test]
async fn enabling_copies_on_a_schedule_with_history_copies_only_the_slots_the_destination_keeps_oldest_first(
) {
    let rig = Rig::new(20);
    // 14 dailies, Wednesday 18 February to Tuesday 3 March: ISO weeks 8 (5 days), 9 (7) and 10 (2).
    let now = slot() + days(1);
    let volume = rig.volume();
    let snaps = rig.dailies(&volume, 14, now);
    let policy = policy_with("{ last = 30 }", &copy_to_dr("{ weekly = 2 }", ""), "");

    let out = rig.run(&policy, now).await;
    assert_eq!(out.report.created, 0, "the slot has its snapshot");
    assert_no_problems(&out);
    // The newest of week 9 (Sunday 1 March) and of week 10 (Tuesday 3 March), the older first.
    let (sunday, tuesday) = (&snaps[11], &snaps[13]);
    assert_eq!(rig.sent_sources(), [sunday.clone(), tuesday.clone()]);
    assert_eq!(out.report.copies.created, 2);
    assert_eq!(rig.copied_sources(), ids([sunday, tuesday]));
    assert_eq!(rig.source_ids().len(), 14, "the source prunes nothing");

    rig.dr.complete_all();
    let again = rig.run(&policy, now).await;
    assert_eq!(again.report.copies.created, 0);
    assert_eq!(rig.requests().len(), 2, "a rerun copies nothing");
}

#[tokio::test]
async fn the_source_keeps_what_the_destination_still_wants_until_its_copies_have_completed() {
    let rig = Rig::new(20);
    let policy = policy_with("{ last = 2 }", &copy_to_dr("{ last = 5 }", ""), "");
    let volume = rig.volume();
    // s[0] oldest … s[5] the slot's own.
    let s = rig.dailies(&volume, 6, slot());
    rig.dr
        .fail_operation("CopySnapshot", "UnauthorizedOperation");

    let first = rig.run(&policy, slot()).await;
    let held: BTreeSet<String> = first
        .plan
        .iter()
        .filter(|d| {
            d.action == Action::Keep
                && d.reasons
                    == [Reason::CopyPending {
                        region: Arc::from(DR),
                    }]
        })
        .map(|d| d.snapshot_id.to_string())
        .collect();
    assert_eq!(held, ids([&s[1], &s[2], &s[3]]), "{:#?}", first.plan);
    let labels: BTreeSet<&str> = first
        .plan
        .iter()
        .filter(|d| held.contains(&*d.snapshot_id))
        .map(|d| d.reasons[0].as_str())
        .collect();
    assert_eq!(labels, BTreeSet::from(["copy-pending"]));
    assert_eq!(
        rig.source_ids(),
        ids([&s[1], &s[2], &s[3], &s[4], &s[5]]),
        "the one no copy wants goes"
    );
    let refused: Vec<_> = s[1..]
        .iter()
        .map(|id| (id.clone(), "copy", "UnauthorizedOperation".to_string()))
        .collect();
    assert_eq!(problems(&first), refused, "each refusal is a problem");
    assert!(first.report.problems.iter().all(|p| p.message.contains(DR)));
    assert_eq!(first.report.copies.created, 0);

    // Copies made, still pending: the source still holds their sources.
    rig.dr.clear_faults();
    let second = rig.run(&policy, slot()).await;
    assert_eq!(second.report.copies.created, 5, "{:?}", second.report);
    assert_eq!(rig.sent_sources()[5..], s[1..], "oldest first");
    assert_eq!(rig.source_ids().len(), 5);
    assert_eq!(second.report.deleted, 0);

    // Completed: the source prunes down to its own rules.
    rig.dr.complete_all();
    let third = rig.run(&policy, slot()).await;
    assert_eq!(third.report.deleted, 3, "{:?}", third.report);
    assert_eq!(rig.source_ids(), ids([&s[4], &s[5]]));
    assert_eq!(third.report.copies.created, 0);
    assert_eq!(rig.dr.snapshots().len(), 5, "the destination keeps its 5");
    assert_no_problems(&third);
}

#[tokio::test]
async fn a_destination_that_cannot_be_read_gets_nothing_copied_or_deleted_and_the_source_holds() {
    let rig = Rig::new(20);
    let policy = policy_with("{ last = 2 }", &copy_to_dr("{ last = 5 }", ""), "");
    let volume = rig.volume();
    let s = rig.dailies(&volume, 6, slot());
    // An old copy the destination's rules would otherwise prune.
    let old = rig.completed_copy("snap-gone", &volume, slot() - days(30));
    rig.dr
        .fail_operation("DescribeSnapshots", "UnauthorizedOperation");

    let out = rig.run(&policy, slot()).await;
    assert_eq!(
        problems(&out),
        [(DR.to_string(), "copy", "UnauthorizedOperation".to_string())]
    );
    assert!(out.report.problems[0].message.contains(DR));
    assert_eq!(rig.dr.calls("CopySnapshot"), 0);
    assert_eq!(rig.dr.calls("DeleteSnapshot"), 0);
    assert_eq!(rig.dr_ids(), BTreeSet::from([old]));
    assert_eq!(
        rig.source_ids(),
        ids([&s[1], &s[2], &s[3], &s[4], &s[5]]),
        "the source holds what the destination would want with no copies"
    );
    assert_eq!(out.report.copies, Default::default());
}

#[tokio::test]
async fn copies_are_pruned_per_source_volume_with_the_sources_rails_and_the_orphan_rule() {
    let rig = Rig::new(20);
    let policy = policy_with(
        "{ last = 7 }",
        &copy_to_dr("{ last = 2 }", ""),
        "orphans = { expire-after = \"30d\" }",
    );
    let s = slot();
    let a = rig.volume();
    let a_now = rig.snapshot(&a, s, &[]);
    // Volume a: its copies of the last five days (the newest is today's), an older pinned one, an older pending
    // one.
    let a_copies: Vec<String> = (0..5)
        .rev()
        .map(|d| {
            let source = if d == 0 {
                a_now.clone()
            } else {
                format!("snap-a{d}")
            };
            rig.completed_copy(&source, &a, s - days(d))
        })
        .collect();
    let pinned = rig.copy(
        "snap-a6",
        &a,
        s - days(6),
        SnapState::Completed,
        &[(ec2::TAG_KEEP, "")],
    );
    let pending = rig.copy("snap-a7", &a, s - days(7), SnapState::Pending, &[]);
    // A volume deleted 40 days ago: its copies expire, the pinned one stays.
    let b = "vol-deleted-long-ago";
    for d in 40..43 {
        rig.completed_copy(&format!("snap-b{d}"), b, s - days(d));
    }
    let b_pinned = rig.copy(
        "snap-b44",
        b,
        s - days(44),
        SnapState::Completed,
        &[(ec2::TAG_KEEP, "")],
    );
    // A volume deleted yesterday: not expired, the keep rules still apply.
    let c = "vol-deleted-yesterday";
    let c_copies: Vec<String> = (1..4)
        .map(|d| rig.completed_copy(&format!("snap-c{d}"), c, s - days(d)))
        .collect();

    let out = rig.run(&policy, s).await;
    assert_no_problems(&out);
    assert_eq!(
        out.report.copies.created, 0,
        "today's slot is copied already"
    );
    let kept = ids([
        &a_copies[3],
        &a_copies[4],
        &pinned,
        &pending,
        &b_pinned,
        &c_copies[0],
        &c_copies[1],
    ]);
    assert_eq!(rig.dr_ids(), kept);
    assert_eq!(out.report.copies.deleted, 3 + 3 + 1);
    assert_eq!(out.report.copies.pending, 1);
    assert_eq!(rig.source.calls("DeleteSnapshot"), 0);
    let text = rig.metrics.render(s);
    let line = format!(
        r#"snapwarden_snapshots_deleted_total{{account="{FAKE_ACCOUNT}",policy="prod",region="{DR}",schedule="daily"}} 7"#
    );
    assert_has_line(&text, &line);

    let again = rig.run(&policy, s).await;
    assert_eq!(again.report.copies.deleted, 0, "the plan is idempotent");
    assert_eq!(rig.dr_ids(), kept);
}

#[tokio::test]
async fn a_volume_whose_copy_failed_this_run_loses_no_copy() {
    let rig = Rig::new(20);
    let policy = policy_with("{ last = 7 }", &copy_to_dr("{ last = 1 }", ""), "");
    let volume = rig.volume();
    let yesterday = rig.snapshot(&volume, slot() - days(1), &[]);
    rig.snapshot(&volume, slot(), &[]);
    let old = rig.completed_copy(&yesterday, &volume, slot() - days(1));
    rig.dr
        .fail_operation("CopySnapshot", "InvalidParameterValue");
    let out = rig.run(&policy, slot()).await;
    assert_eq!(out.report.problems.len(), 1, "{:?}", out.report.problems);
    assert_eq!(out.report.problems[0].code, "InvalidParameterValue");
    assert_eq!(rig.dr_ids(), BTreeSet::from([old]), "its last copy stays");
}

#[tokio::test(start_paused = true)]
async fn a_copy_that_ends_in_error_is_reported_deleted_and_copied_again_by_the_next_run() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    let volume = rig.volume();
    let source = rig.snapshot(&volume, slot(), &[]);
    rig.dr.complete_after_describes(Some(2));
    rig.dr.error_snapshots_of(COPY_VOLUME_ID);

    let first = rig
        .run_waiting(&policy, slot(), StdDuration::from_secs(600))
        .await;
    assert_eq!(first.report.copies.created, 1);
    assert_eq!(
        problems(&first),
        [(source.clone(), "copy", "copy-error".to_string())]
    );
    assert!(
        first.report.problems[0].message.contains(DR),
        "{}",
        first.report.problems[0].message
    );
    assert!(rig.dr.snapshots().is_empty(), "the errored copy is deleted");
    assert_eq!(first.report.copies.pending, 0);
    let text = rig.metrics.render(slot());
    assert_has_line(&text, &copies_total("failed", 1));

    rig.dr.clear_faults();
    let second = rig
        .run_waiting(&policy, slot(), StdDuration::from_secs(600))
        .await;
    assert_eq!(second.report.copies.created, 1, "{:?}", second.report);
    assert_no_problems(&second);
    assert_eq!(rig.sent_sources(), [source.clone(), source.clone()]);
    let copies = rig.dr.snapshots();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].state, SnapState::Completed);
    assert_eq!(
        tag(&copies[0], ec2::TAG_SOURCE_SNAPSHOT),
        Some(source.as_str())
    );
}

#[tokio::test]
async fn a_copy_found_in_error_by_the_survey_is_deleted_and_its_source_copied_again() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    let volume = rig.volume();
    let source = rig.snapshot(&volume, slot(), &[]);
    let broken = rig.copy(&source, &volume, slot(), SnapState::Error, &[]);
    let out = rig.run(&policy, slot()).await;
    assert_eq!(
        problems(&out),
        [(source.clone(), "copy", "copy-error".to_string())]
    );
    assert_eq!(out.report.copies.created, 1);
    assert!(!rig.dr_ids().contains(&broken));
    assert_eq!(rig.copied_sources(), BTreeSet::from([source]));
    assert_eq!(rig.dr.snapshots().len(), 1);
}

#[tokio::test]
async fn resource_limit_exceeded_defers_the_rest_without_a_problem_and_later_runs_finish_the_backlog(
) {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    let sources = rig.volumes_with_todays_snapshot(5);
    // Something else copies into the region too: AWS's limit binds before the gate.
    rig.dr.set_max_pending_copies(Some(2));

    let first = rig.run(&policy, slot()).await;
    assert_eq!(
        (first.report.copies.created, first.report.copies.deferred),
        (2, 3)
    );
    assert_no_problems(&first);
    let text = rig.metrics.render(slot());
    for (outcome, n) in [("created", 2), ("deferred", 3)] {
        assert_has_line(&text, &copies_total(outcome, n));
    }
    assert_eq!(
        rig.dr.calls("CopySnapshot"),
        3,
        "one refusal, then nothing more"
    );

    rig.dr.complete_all();
    let second = rig.run(&policy, slot()).await;
    assert_eq!(
        (second.report.copies.created, second.report.copies.deferred),
        (2, 1)
    );
    rig.dr.complete_all();
    let third = rig.run(&policy, slot()).await;
    assert_eq!(
        (third.report.copies.created, third.report.copies.deferred),
        (1, 0)
    );
    assert_eq!(rig.copied_sources(), sources.iter().cloned().collect());
    assert_eq!(rig.dr.snapshots().len(), 5, "no copy twice");
}

#[tokio::test(start_paused = true)]
async fn the_copy_concurrency_gate_keeps_a_thousand_volume_estate_under_the_destinations_limit() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    let sources: BTreeSet<String> = rig.volumes_with_todays_snapshot(1000).into_iter().collect();
    rig.dr.set_max_pending_copies(Some(20));
    // A copy completes in the third DescribeSnapshots answer that shows it.
    rig.dr.complete_after_describes(Some(3));

    let mut runs = 0;
    let mut created = 0;
    while rig.copied_sources().len() < 1000 {
        runs += 1;
        assert!(runs <= 10, "1,000 copies not done in 10 runs");
        let out = rig
            .run_waiting(&policy, slot(), StdDuration::from_secs(120))
            .await;
        assert_no_problems(&out);
        created += out.report.copies.created;
        if runs == 1 {
            assert!(
                out.report.copies.created > 100,
                "the run keeps sending as completions free places: {:?}",
                out.report.copies
            );
        }
    }
    assert!(runs > 1, "the backlog outlasts one run's deadline");
    assert_eq!(rig.copied_sources(), sources);
    assert_eq!(created, 1000);
    assert_eq!(
        rig.dr.calls("CopySnapshot"),
        1000,
        "no call refused for the destination's limit"
    );
    assert_eq!(rig.dr.snapshots().len(), 1000, "no copy twice");
    assert_eq!(rig.most_pending.load(Ordering::SeqCst), 20);
}

#[tokio::test(start_paused = true)]
async fn a_copy_pending_past_the_completion_deadline_is_left_pending_and_checked_again_by_the_next_run(
) {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    let volume = rig.volume();
    rig.snapshot(&volume, slot(), &[]);
    let first = rig
        .run_waiting(&policy, slot(), StdDuration::from_secs(60))
        .await;
    assert_eq!(first.report.copies.created, 1);
    assert_eq!(first.report.copies.pending, 1);
    assert_no_problems(&first);
    let polls = rig.dr.calls("DescribeSnapshots");
    assert!(polls > 2, "polled until the deadline: {polls} describes");
    assert_eq!(pending_copies(&rig.dr).len(), 1);

    // Shown pending by the next run's survey, completed by its poll.
    rig.dr.complete_after_describes(Some(2));
    let second = rig
        .run_waiting(&policy, slot(), StdDuration::from_secs(60))
        .await;
    assert_eq!(second.report.copies.created, 0, "no duplicate copy");
    assert_eq!(second.report.copies.pending, 0, "{:?}", second.report);
    assert_eq!(rig.dr.calls("CopySnapshot"), 1);
    assert_eq!(rig.dr.snapshots()[0].state, SnapState::Completed);
}

#[tokio::test]
async fn a_dry_run_sends_no_copy_and_deletes_no_copy_but_reports_what_it_would_do() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 2 }", ""));
    let volume = rig.volume();
    let today = rig.snapshot(&volume, slot(), &[]);
    let old: Vec<String> = (1..4)
        .rev()
        .map(|d| rig.completed_copy(&format!("snap-{d}"), &volume, slot() - days(d)))
        .collect();
    let dry_dr: Mutex<Option<Arc<DryRun>>> = Mutex::new(None);
    let destinations = rig.destinations.map(|e| {
        let d = Arc::new(DryRun::new(e));
        *dry_dr.lock().unwrap() = Some(d.clone());
        d as Arc<dyn Ec2>
    });
    let dry_dr = dry_dr
        .into_inner()
        .unwrap()
        .expect("the destination wrapped");
    let source = DryRun::new(rig.source.clone());
    let spec = RunSpec::new(&policy, slot(), FAKE_ACCOUNT)
        .destinations(&destinations)
        .completion(Completion::within(StdDuration::from_secs(60)));
    let out = worker::run(&source, &spec, &rig.metrics, slot).await;

    assert!(out.report.dry_run);
    assert_eq!(rig.dr.calls("CopySnapshot"), 0);
    assert_eq!(rig.dr.calls("DeleteSnapshot"), 0);
    assert_eq!(rig.source.calls("DeleteSnapshot"), 0);
    assert_eq!(rig.dr_ids(), old.iter().cloned().collect());
    let log = dry_dr.log();
    let would: Vec<&str> = log
        .copied
        .iter()
        .map(|r| r.source_snapshot_id.as_str())
        .collect();
    assert_eq!(would, [today.as_str()]);
    assert_eq!(log.deleted, [old[0].clone()], "the oldest of last = 2 goes");
    assert_eq!(
        (out.report.copies.created, out.report.copies.deleted),
        (1, 1)
    );
    assert_no_problems(&out);
}

#[tokio::test]
async fn the_copy_metrics_count_copies_pending_copies_and_the_dr_staleness() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    let volume = rig.volume();
    let yesterday = rig.snapshot(&volume, slot() - days(1), &[]);
    rig.snapshot(&volume, slot(), &[]);
    rig.completed_copy(&yesterday, &volume, slot() - days(1));

    let out = rig.run(&policy, slot()).await;
    assert_eq!(out.report.copies.created, 1);
    let labels =
        format!(r#"account="{FAKE_ACCOUNT}",destination="{DR}",policy="prod",region="{SOURCE}""#);
    let metric = |text: &str, name: &str, labels: &str| -> Option<f64> {
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    };
    let hour = 3600.0;
    let text = rig.metrics.render(slot() + Duration::hours(1));
    let created = format!(
        r#"account="{FAKE_ACCOUNT}",destination="{DR}",outcome="created",policy="prod",region="{SOURCE}",schedule="daily""#
    );
    assert_eq!(
        metric(&text, "snapwarden_copies_total", &created),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "snapwarden_copies_pending", &labels),
        Some(1.0),
        "{text}"
    );
    let stale = format!(
        r#"account="{FAKE_ACCOUNT}",destination="{DR}",policy="prod",region="{SOURCE}",schedule="daily""#
    );
    // Today's copy is pending: yesterday's is the newest completed one, 25 hours old.
    assert_eq!(
        metric(&text, "snapwarden_dr_staleness_seconds", &stale),
        Some(25.0 * hour),
        "{text}"
    );
    let later = rig.metrics.render(slot() + Duration::hours(3));
    assert_eq!(
        metric(&later, "snapwarden_dr_staleness_seconds", &stale),
        Some(27.0 * hour),
        "the age grows with the clock"
    );

    rig.dr.complete_all();
    rig.run(&policy, slot()).await;
    let text = rig.metrics.render(slot() + Duration::hours(1));
    assert_eq!(
        metric(&text, "snapwarden_copies_pending", &labels),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "snapwarden_dr_staleness_seconds", &stale),
        Some(hour),
        "today's copy completed"
    );
    assert_eq!(
        metric(&text, "snapwarden_copies_total", &created),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_destination_that_is_the_sdks_own_region_is_a_problem_and_gets_nothing() {
    // No aws.regions: the source is the SDK's region, known only when the run starts.
    let policy = load(&policy_toml(
        "keep = { last = 1 }",
        &copy_table(SOURCE, "{ last = 5 }", ""),
        "",
    ));
    let source = Arc::new(FakeEc2::new(SOURCE));
    let destinations = Destinations::new(20, [source.clone() as Arc<dyn Ec2>]);
    let (_, volumes) = source.add_instance(&[("Backup", "true")], &[("/dev/xvda", "gp3")]);
    source.set_clock(slot());
    let at = format_slot(slot());
    let tags = managed(&at);
    source.seed_snapshot(&volumes[0], SnapState::Completed, FAKE_ACCOUNT, &tags);
    let spec = RunSpec::new(&policy, slot(), FAKE_ACCOUNT).destinations(&destinations);
    let out = worker::run(source.as_ref(), &spec, &Metrics::new(), slot).await;
    let p: Vec<(&str, &str)> = out
        .report
        .problems
        .iter()
        .map(|p| (p.resource.as_str(), p.operation))
        .collect();
    assert_eq!(p, [(SOURCE, "copy")]);
    assert!(
        out.report.problems[0].message.contains("another region"),
        "{}",
        out.report.problems[0].message
    );
    assert_eq!(out.report.problems[0].code, "copy-destination");
    assert!(
        !out.report.worth_retrying(),
        "only a person can fix the rule"
    );
    assert_eq!(source.calls("CopySnapshot"), 0);
    assert_eq!(out.report.copies, Default::default());
}

#[tokio::test]
async fn copies_of_a_volume_skipped_for_a_bad_count_tag_are_not_orphans() {
    let policy = in_source(&policy_toml(
        "count-tag = \"SnapshotDaily\"",
        &copy_to_dr("{ last = 3 }", ""),
        "orphans = { expire-after = \"30d\" }",
    ));
    let rig = Rig::new(20);
    // The count tag mistyped: the volume is skipped until it is fixed, and must not lose its history meanwhile.
    let (_, volumes) = rig.source.add_instance(
        &[("Backup", "true"), ("SnapshotDaily", "seven")],
        &[("/dev/xvda", "gp3")],
    );
    let volume = &volumes[0];
    let old: BTreeSet<String> = (40..43)
        .map(|d| {
            let source = rig.snapshot(volume, slot() - days(d), &[]);
            rig.completed_copy(&source, volume, slot() - days(d))
        })
        .collect();
    let out = rig.run(&policy, slot()).await;
    assert_eq!(
        problems(&out),
        [(
            out.report.problems[0].resource.clone(),
            "target",
            "bad-count-tag".to_string()
        )]
    );
    assert_eq!(rig.source_ids().len(), 3, "the source keeps its history");
    assert_eq!(rig.dr_ids(), old, "and so does the destination");
    assert_eq!(out.report.copies.deleted, 0);
}

#[tokio::test]
async fn copy_retention_over_a_deletion_cap_deletes_nothing_and_names_the_destination() {
    let rig = Rig::new(20);
    let policy = policy_with(
        "{ last = 7 }",
        &copy_to_dr("{ last = 1 }", ""),
        "max-deletes-per-run = 2",
    );
    let volume = rig.volume();
    let today = rig.snapshot(&volume, slot(), &[]);
    let mut copies: BTreeSet<String> = (1..4)
        .map(|d| rig.completed_copy(&format!("snap-{d}"), &volume, slot() - days(d)))
        .collect();
    copies.insert(rig.completed_copy(&today, &volume, slot()));
    let out = rig.run(&policy, slot()).await;
    assert_eq!(rig.dr_ids(), copies, "nothing deleted");
    assert_eq!(
        problems(&out),
        [(DR.to_string(), "retention", "deletion-cap".to_string())]
    );
    let message = &out.report.problems[0].message;
    assert!(
        message.contains(&format!("copies in {DR}")) && message.contains("max-deletes-per-run"),
        "{message}"
    );
    assert_eq!(out.report.copies.deleted, 0);
}

#[tokio::test]
async fn a_copy_backing_an_ami_is_kept_and_counted_in_its_destination() {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 1 }", ""));
    let volume = rig.volume();
    let today = rig.snapshot(&volume, slot(), &[]);
    let newest = rig.completed_copy(&today, &volume, slot());
    let ami = rig.completed_copy("snap-1", &volume, slot() - days(1));
    rig.dr.mark_in_use(&ami);
    let out = rig.run(&policy, slot()).await;
    assert_no_problems(&out);
    assert_eq!(rig.dr_ids(), BTreeSet::from([newest, ami]));
    assert_eq!((out.report.kept_in_use, out.report.copies.deleted), (1, 0));
    let text = rig.metrics.render(slot());
    let line = format!(
        r#"snapwarden_snapshots_kept_in_use_total{{account="{FAKE_ACCOUNT}",policy="prod",region="{DR}"}} 1"#
    );
    assert_has_line(&text, &line);
}

#[tokio::test]
async fn behind_a_full_gate_the_source_lets_each_snapshot_go_only_once_its_copy_has_completed() {
    // One copy pending at a time in the destination.
    let rig = Rig::new(1);
    let policy = policy_with("{ last = 2 }", &copy_to_dr("{ last = 5 }", ""), "");
    let volume = rig.volume();
    let s = rig.dailies(&volume, 6, slot());
    let first = rig.run(&policy, slot()).await;
    assert_eq!(
        (first.report.copies.created, first.report.copies.deferred),
        (1, 4)
    );
    assert_no_problems(&first);
    assert_eq!(rig.source_ids(), ids([&s[1], &s[2], &s[3], &s[4], &s[5]]));

    // The copy still pending holds the gate's one place: nothing more is sent, nothing pruned.
    let second = rig.run(&policy, slot()).await;
    assert_eq!(
        (second.report.copies.created, second.report.copies.deferred),
        (0, 4)
    );
    assert_eq!(rig.source_ids().len(), 5);

    // Each completed copy lets its source go (beyond the source's own last 2) and makes room for the next.
    let mut left = s[1..].to_vec();
    for i in 2..=5 {
        rig.dr.complete_all();
        let out = rig.run(&policy, slot()).await;
        assert_eq!(out.report.copies.created, 1, "{:?}", out.report);
        if left.len() > 2 {
            left.remove(0);
        }
        let expected: BTreeSet<String> = left.iter().cloned().collect();
        assert_eq!(
            rig.source_ids(),
            expected,
            "after the copy of s[{i}] was sent"
        );
    }
    assert_eq!(rig.sent_sources(), s[1..]);
    rig.dr.complete_all();
    let last = rig.run(&policy, slot()).await;
    assert_eq!(last.report.copies, Default::default());
    assert_eq!(rig.source_ids(), ids([&s[4], &s[5]]));
    assert_eq!(rig.copied_sources(), s[1..].iter().cloned().collect());
}

#[tokio::test]
async fn a_destination_without_a_backend_holds_the_source_while_the_others_get_their_copies() {
    const DR2: &str = "eu-central-1";
    let rig = Rig::new(20);
    let copies = copy_to_dr("{ last = 2 }", "") + &copy_table(DR2, "{ last = 4 }", "");
    let policy = policy_with("{ last = 2 }", &copies, "");
    let volume = rig.volume();
    let s = rig.dailies(&volume, 5, slot());
    let out = rig.run(&policy, slot()).await;
    assert_eq!(
        problems(&out),
        [(DR2.to_string(), "copy", "copy-destination".to_string())]
    );
    assert!(out.report.problems[0].message.contains(DR2));
    assert_eq!(rig.sent_sources(), [s[3].clone(), s[4].clone()]);
    assert_eq!(
        rig.source_ids(),
        ids([&s[1], &s[2], &s[3], &s[4]]),
        "what {DR2} would want stays"
    );
    let held: Vec<&str> = out
        .plan
        .iter()
        .filter(|d| d.snapshot_id.as_ref() == s[1] || d.snapshot_id.as_ref() == s[2])
        .flat_map(|d| d.reasons.iter())
        .map(|r| match r {
            Reason::CopyPending { region } => region.as_ref(),
            _ => "other",
        })
        .collect();
    assert_eq!(held, [DR2, DR2]);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_that_completes_during_its_run_is_copied_by_that_run_and_the_copy_watched_to_completion(
) {
    let rig = Rig::new(20);
    let policy = policy(&copy_to_dr("{ last = 3 }", ""));
    rig.volume();
    rig.source.complete_after_describes(Some(2));
    rig.dr.complete_after_describes(Some(2));
    let out = rig
        .run_waiting(&policy, slot(), StdDuration::from_secs(600))
        .await;
    assert_no_problems(&out);
    assert_eq!(
        (
            out.report.created,
            out.report.copies.created,
            out.report.copies.pending
        ),
        (1, 1, 0)
    );
    let source = &rig.source.snapshots()[0];
    assert_eq!(source.state, SnapState::Completed);
    assert_eq!(rig.sent_sources(), [source.id.to_string()]);
    let copy = &rig.dr.snapshots()[0];
    assert_eq!(copy.state, SnapState::Completed);
    assert_eq!(tag(copy, ec2::TAG_SOURCE_SNAPSHOT), Some(&*source.id));
}

#[tokio::test(start_paused = true)]
async fn the_early_deletes_of_a_waiting_run_hold_what_the_destination_wants_too() {
    let rig = Rig::new(20);
    let policy = policy_with("{ last = 2 }", &copy_to_dr("{ last = 5 }", ""), "");
    let volume = rig.volume();
    let s = rig.dailies(&volume, 6, slot() - days(1));
    rig.source.complete_after_describes(Some(1));
    rig.dr
        .fail_operation("CopySnapshot", "UnauthorizedOperation");
    let out = rig
        .run_waiting(&policy, slot(), StdDuration::from_secs(600))
        .await;
    assert_eq!((out.report.created, out.report.deleted), (1, 1));
    let today = rig
        .source_ids()
        .into_iter()
        .find(|id| !s.contains(id))
        .expect("today's snapshot");
    let mut expected = ids([&s[1], &s[2], &s[3], &s[4], &s[5]]);
    expected.insert(today.clone());
    assert_eq!(
        rig.source_ids(),
        expected,
        "only the one no copy wants goes"
    );
    // The copies wanted now: today's and the four before it; each refused.
    let refused: BTreeSet<String> = out
        .report
        .problems
        .iter()
        .filter(|p| p.operation == "copy")
        .map(|p| p.resource.clone())
        .collect();
    let mut wanted = ids([&s[2], &s[3], &s[4], &s[5]]);
    wanted.insert(today);
    assert_eq!(refused, wanted);
}
