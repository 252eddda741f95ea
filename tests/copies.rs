//! Disaster-recovery copies (issue 15) against a real moto server with two regions, through the daemon's own AWS
//! path (`daemon::aws_regions_paced`, one paced backend per source and per destination region), `snapwarden once`
//! and the daemon binary. moto serves every region on one endpoint: a copy lands in the region whose client
//! (SigV4 signing region) sent CopySnapshot, `completed` at once (see tests/moto_copy.rs). Everything here goes
//! through the fault proxy of `common::fault_proxy`, which makes the destination look like AWS where moto does not:
//! a copy's `VolumeId` is answered as `vol-ffffffff` (moto keeps the source's, AWS gives an arbitrary one), so
//! anything that grouped copies by volume id instead of their `snapwarden:source-volume` tag would fail here. The
//! proxy also refuses, throttles or holds calls for one region only (it matches the SigV4 credential scope).
//!
//! What is read back is read from moto directly, not through the proxy, so a stand-in cannot hide what was sent:
//! every set asserted is the exact set of slots (as dates) per source volume on each side.
//!
//! Scenarios: copies with every tag and a rerun that copies nothing (`once`); co-firing schedules of which only
//! one copies; five weeks of daily runs with the
//! source keeping 7 and the destination 4 weeklies; a source snapshot whose copy is refused kept past its keep
//! (`copy-pending`) until copied, then pruned; a deleted source volume's copies following the orphan rule;
//! `ResourceLimitExceeded` deferring (no problem) and the next run copying oldest first; `copy-concurrency`
//! bounding the copies pending in the destination, the rest deferred to the next run; a copy ending in `error`
//! reported, deleted and made again; a copy whose answer is lost not sent again; two source regions sharing one destination, each pruning only its own
//! copies; a throttled destination
//! not holding back another policy's creates in the source region; kill -9 while copies are in flight and a
//! restart that finds them by their tags and copies nothing twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use aws_config::Region as SdkRegion;
use chrono::{DateTime, Duration, Utc};

use common::fault_proxy::{Fault, FaultProxy, Hit, Rule, When};
use common::process::{run_to_end, snapwarden, text, Daemon};
use common::{Moto, ACCOUNT, REGION};
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::pace::PaceConfig;
use snapwarden::ec2::COPY_VOLUME_ID;
use snapwarden::report::RunResult;
use snapwarden::retention::{Action, Reason};
use snapwarden::schedule::format_slot;
use snapwarden::worker::{self, Completion, Outcome};

/// The source region is [`REGION`]; copies go here.
const DR: &str = "us-west-2";
const COPY: &str = "CopySnapshot";
const CREATE: &str = "CreateSnapshot";
const DESCRIBE: &str = "DescribeSnapshots";

/// Every tag snapwarden puts on a copy, whatever `copy-tags` says.
const COPY_TAGS: [&str; 7] = [
    "snapwarden:managed",
    "snapwarden:policy",
    "snapwarden:schedule",
    "snapwarden:slot",
    "snapwarden:source-snapshot",
    "snapwarden:source-region",
    "snapwarden:source-volume",
];

/// Day `d` of the runs, 04:30 UTC: day 1 is Monday 5 October 2026 (ISO week 41).
fn day(d: i64) -> DateTime<Utc> {
    common::slot("2026-10-05T04:30:00Z") + Duration::days(d - 1)
}

/// The date of day `d`, as the sets compare them.
fn date(d: i64) -> String {
    format_slot(day(d))[..10].to_string()
}

fn dates(days: impl IntoIterator<Item = i64>) -> BTreeSet<String> {
    days.into_iter().map(date).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Estate and read-back (moto directly)
// ---------------------------------------------------------------------------------------------------------------

/// A snapshot of `policy` as moto holds it.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    volume: String,
    state: String,
    encrypted: bool,
    kms_key_id: Option<String>,
    tags: BTreeMap<String, String>,
}

impl Found {
    fn tag(&self, key: &str) -> &str {
        self.tags.get(key).map_or("", String::as_str)
    }

    fn date(&self) -> String {
        self.tag("snapwarden:slot").chars().take(10).collect()
    }
}

/// `policy`'s snapshots in the region of `raw`, read from moto.
async fn found(raw: &aws_sdk_ec2::Client, policy: &str) -> Vec<Found> {
    common::policy_snapshots(raw, policy)
        .await
        .iter()
        .map(|s| Found {
            id: s.snapshot_id().unwrap_or_default().to_string(),
            volume: s.volume_id().unwrap_or_default().to_string(),
            state: s
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            encrypted: s.encrypted().unwrap_or_default(),
            kms_key_id: s.kms_key_id().map(String::from),
            tags: s
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_string(),
                        t.value().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The rig: moto, the proxy, the daemon's paced backends through it
// ---------------------------------------------------------------------------------------------------------------

struct Rig {
    proxy: FaultProxy,
    /// Straight to moto, in the source region and in [`DR`].
    raw: aws_sdk_ec2::Client,
    raw_dr: aws_sdk_ec2::Client,
    volumes: Vec<String>,
    moto: Moto,
}

impl Rig {
    /// moto with `volumes` volumes tagged `Backup = dr` (each also `team = db` and a Name), the proxy in front.
    async fn new(seed: u64, volumes: usize) -> Rig {
        let moto = Moto::start();
        let conf = moto.sdk_config().await;
        let raw = aws_sdk_ec2::Client::new(&conf);
        let raw_dr =
            aws_sdk_ec2::Client::new(&conf.to_builder().region(SdkRegion::new(DR)).build());
        let mut vols = Vec::new();
        for i in 0..volumes {
            let name = format!("db-{i}");
            let tags = [("Backup", "dr"), ("team", "db"), ("Name", &name)];
            vols.push(common::moto_volume(&raw, &tags).await);
        }
        vols.sort();
        let proxy = FaultProxy::start(moto.port, seed);
        let rig = Rig {
            proxy,
            raw,
            raw_dr,
            volumes: vols,
            moto,
        };
        rig.proxy.set_rules(rig.aws_like(Vec::new()));
        rig
    }

    /// Source side: volume -> the dates of the `dr` policy's snapshots.
    async fn sources(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in found(&self.raw, "dr").await {
            out.entry(s.volume.clone()).or_default().insert(s.date());
        }
        out
    }

    /// Destination side: source volume (by the copy's tag) -> the dates of its copies. Panics on two copies of one
    /// slot: a copy is made once.
    async fn copies(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in found(&self.raw_dr, "dr").await {
            let volume = c.tag("snapwarden:source-volume").to_string();
            assert!(
                out.entry(volume).or_default().insert(c.date()),
                "two copies of one slot: {c:?}"
            );
        }
        out
    }

    /// The expected read-back: `volumes[i]` -> its dates for each `(i, dates)`, leaving out empty sets (a volume
    /// with nothing left does not appear in what moto lists).
    fn each(&self, sets: &[(usize, BTreeSet<String>)]) -> BTreeMap<String, BTreeSet<String>> {
        sets.iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| (self.volumes[*i].clone(), s.clone()))
            .collect()
    }

    /// The expected read-back when every volume of the rig holds `dates`.
    fn all(&self, dates: BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
        let every: Vec<_> = (0..self.volumes.len())
            .map(|i| (i, dates.clone()))
            .collect();
        self.each(&every)
    }

    /// `rules`, then what makes the destination answer as AWS does: a copy's volume id is not its source's.
    fn aws_like(&self, mut rules: Vec<Rule>) -> Vec<Rule> {
        rules.push(self.copy_volume_ids(Vec::new()));
        rules
    }

    /// The destination's DescribeSnapshots with every source volume id replaced by [`COPY_VOLUME_ID`] (only the
    /// `volumeId` element: the `snapwarden:source-volume` tag keeps the real one), and `more` replacements.
    fn copy_volume_ids(&self, more: Vec<(String, String)>) -> Rule {
        let mut pairs: Vec<(String, String)> = self
            .volumes
            .iter()
            .map(|v| {
                (
                    format!("<volumeId>{v}</volumeId>"),
                    format!("<volumeId>{COPY_VOLUME_ID}</volumeId>"),
                )
            })
            .collect();
        pairs.extend(more);
        Rule::new(&[DESCRIBE], When::Always, Fault::Rewrite(pairs)).in_region(DR)
    }

    /// The destination's DescribeSnapshots showing every copy in `state` (`pending`, `error`), as AWS does when a
    /// copy takes minutes or fails; moto completes them at once.
    fn copies_shown(&self, state: &str) -> Rule {
        self.copy_volume_ids(vec![(
            "<status>completed</status>".into(),
            format!("<status>{state}</status>"),
        )])
    }

    /// The backend of a [`dr_policy`] keeping `keep` and copied with `copy`, with no daemon settings.
    async fn dr_backend(&self, keep: &str, copy: &str) -> Backend {
        self.backend("", &dr_policy(keep, copy, ""), pace()).await
    }

    /// The daemon's region for `policies`, through the proxy (fast backoff, AWS's full budget: moto has none).
    async fn backend(&self, daemon: &str, policies: &str, pace: PaceConfig) -> Backend {
        self.backends(&[REGION], daemon, policies, pace)
            .await
            .remove(0)
    }

    /// [`Rig::backend`] for each of the source regions `sources`.
    async fn backends(
        &self,
        sources: &[&str],
        daemon: &str,
        policies: &str,
        pace: PaceConfig,
    ) -> Vec<Backend> {
        let regions: Vec<String> = sources.iter().map(|r| format!("\"{r}\"")).collect();
        let text = format!(
            "[daemon]\n{daemon}\n\n[aws]\nendpoint-url = \"{}\"\nregions = [{}]\n\n{policies}",
            self.proxy.endpoint,
            regions.join(", ")
        );
        let shared = Arc::new(Shared::new(
            config::from_toml_str(Path::new("copies.toml"), &text, &[]).expect("valid test config"),
        ));
        let regions = daemon::aws_regions_paced(&shared, &pace)
            .await
            .expect("the source regions through the proxy");
        assert_eq!(regions.len(), sources.len());
        for region in &regions {
            assert_eq!(
                region.copies.names().collect::<Vec<_>>(),
                [DR],
                "one destination backend, shared"
            );
        }
        regions
            .into_iter()
            .map(|region| Backend {
                shared: shared.clone(),
                region,
            })
            .collect()
    }

    /// The CopySnapshot requests the proxy saw (any outcome), in order.
    fn copy_calls(&self) -> Vec<Hit> {
        self.proxy
            .log()
            .into_iter()
            .filter(|h| h.action == COPY)
            .collect()
    }
}

fn pace() -> PaceConfig {
    PaceConfig {
        budget_fraction: 1.0,
        max_attempts: 3,
        backoff_base: StdDuration::from_millis(10),
        backoff_cap: StdDuration::from_millis(50),
        per_volume_gap: StdDuration::from_millis(10),
        seed: Some(15),
        ..PaceConfig::default()
    }
}

/// Polls soon and often: moto completes everything at once.
fn quick() -> Completion {
    Completion {
        deadline: StdDuration::from_secs(10),
        first_poll: StdDuration::from_millis(20),
        max_poll: StdDuration::from_millis(200),
    }
}

struct Backend {
    shared: Arc<Shared>,
    region: Arc<worker::Region>,
}

impl Backend {
    /// One run of policy `policy` at `slot`, its clock five minutes after the slot.
    async fn run(&self, policy: &str, slot: DateTime<Utc>) -> Outcome {
        self.run_within(policy, slot, quick()).await
    }

    /// [`Backend::run`] waiting for completion as `completion` says.
    async fn run_within(
        &self,
        policy: &str,
        slot: DateTime<Utc>,
        completion: Completion,
    ) -> Outcome {
        let p = self.shared.config.policy(policy).expect("policy");
        let tz = self.shared.config.daemon.timezone;
        let spec = self
            .region
            .spec(p, slot)
            .firing(daemon::firing_at(p, slot, tz))
            .concurrency(4)
            .completion(completion)
            .explain(true);
        worker::run(
            self.region.ec2.as_ref(),
            &spec,
            &self.shared.metrics,
            move || slot + Duration::minutes(5),
        )
        .await
    }
}

/// A `dr` policy over the rig's volumes: a daily schedule keeping `keep`, copied to [`DR`] with `copy` (the
/// inside of the copy table after `region`), and `extra` policy lines.
fn dr_policy(keep: &str, copy: &str, extra: &str) -> String {
    dr_policy_of(
        extra,
        &[dr_schedule("daily", "30 4 * * *", keep, Some(copy))],
    )
}

/// A `dr` policy over the volumes tagged `Backup = dr` with `extra` policy lines and `schedules`.
fn dr_policy_of(extra: &str, schedules: &[String]) -> String {
    format!(
        r#"[[policy]]
name = "dr"
target = {{ resource = "volume", tags = {{ Backup = "dr" }} }}
{extra}
{}"#,
        schedules.concat()
    )
}

/// A schedule `name` on `cron` keeping `keep`, copied to [`DR`] with `copy` when it is given.
fn dr_schedule(name: &str, cron: &str, keep: &str, copy: Option<&str>) -> String {
    let copy = copy.map_or(String::new(), |c| {
        format!("\n[[policy.schedule.copy]]\nregion = \"{DR}\"\n{c}\n")
    });
    format!(
        "\n[[policy.schedule]]\nname = \"{name}\"\ncron = \"{cron}\"\nkeep = {{ {keep} }}\n{copy}"
    )
}

/// `snapwarden once` of `dr`'s `schedule` at `slot` with the config file `config`, to its end.
fn once(config: &Path, schedule: &str, slot: &str) -> std::process::Output {
    run_to_end(
        snapwarden().arg("--config").arg(config).args([
            "once",
            "--policy",
            "dr",
            "--schedule",
            schedule,
            "--slot",
            slot,
        ]),
        StdDuration::from_secs(60),
    )
}

/// `snapwarden_dr_staleness_seconds` of `dr`/`daily` from the source region to [`DR`], scraped at `at`.
fn dr_staleness(b: &Backend, at: DateTime<Utc>) -> Option<f64> {
    common::metric(
        &b.shared.metrics.render(at),
        "snapwarden_dr_staleness_seconds",
        &[
            ("policy", "dr"),
            ("schedule", "daily"),
            ("account", ACCOUNT),
            ("region", REGION),
            ("destination", DR),
        ],
    )
}

fn assert_clean(out: &Outcome, what: &str) {
    let rep = &out.report;
    assert_eq!(rep.result(), RunResult::Success, "{what}: {rep:#?}");
    assert!(rep.problems.is_empty(), "{what}: {:#?}", rep.problems);
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Every tag and the configured key, and a rerun copies nothing (`snapwarden once`)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_copies_each_new_snapshot_with_every_tag_and_a_rerun_copies_nothing() {
    let rig = Rig::new(1, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dr_policy(
        "last = 7",
        "keep = { last = 7 }\ncopy-tags = true\nkms-key-id = \"alias/snapwarden-dr\"",
        "",
    );
    let config = common::write_config(
        dir.path(),
        common::free_port(),
        "completion-deadline = \"10s\"",
        &rig.proxy.endpoint,
        "max-attempts = 2",
        &policy,
    );
    let slot = "2026-11-21T04:30:00Z";

    let out = once(&config, "daily", slot);
    assert!(out.status.success(), "{}", text(&out));
    let sources = found(&rig.raw, "dr").await;
    let copies = found(&rig.raw_dr, "dr").await;
    assert_eq!(sources.len(), 2, "{sources:#?}");
    assert_eq!(copies.len(), 2, "one copy per source snapshot: {copies:#?}");
    for c in &copies {
        let source = sources
            .iter()
            .find(|s| s.id == c.tag("snapwarden:source-snapshot"))
            .unwrap_or_else(|| panic!("the copy names a source snapshot of the slot: {c:?}"));
        // snapwarden's own tags, and (copy-tags = true) the source's user tags: Backup, team, Name.
        let mut want: BTreeMap<String, String> = [
            ("snapwarden:managed", "true"),
            ("snapwarden:policy", "dr"),
            ("snapwarden:schedule", "daily"),
            ("snapwarden:slot", slot),
            ("snapwarden:source-snapshot", &source.id),
            ("snapwarden:source-region", REGION),
            ("snapwarden:source-volume", &source.volume),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let user: BTreeMap<String, String> = source
            .tags
            .iter()
            .filter(|(k, _)| !k.starts_with("snapwarden:"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            user.keys().map(String::as_str).collect::<Vec<_>>(),
            ["Backup", "Name", "team"],
            "{source:?}"
        );
        want.extend(user);
        assert_eq!(c.tags, want, "{c:?}");
        assert_eq!(c.state, "completed");
        // Re-encrypted with the configured key (moto keeps the key it was sent without checking it).
        assert!(!source.encrypted, "{source:?}");
        assert_eq!(
            c.kms_key_id.as_deref(),
            Some("alias/snapwarden-dr"),
            "{c:?}"
        );
        assert!(c.encrypted, "{c:?}");
    }
    let sourced: BTreeSet<&str> = copies
        .iter()
        .map(|c| c.tag("snapwarden:source-volume"))
        .collect();
    assert_eq!(
        sourced,
        rig.volumes
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
    );
    // Nothing landed in the source region but the sources, and every CopySnapshot was signed for the destination.
    assert!(sources
        .iter()
        .all(|s| !s.tags.contains_key("snapwarden:source-snapshot")));
    let calls = rig.copy_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls.iter().all(|h| h.region == DR
            && h.param("SourceRegion").as_deref() == Some(REGION)
            && h.param("Encrypted").as_deref() == Some("true")),
        "{calls:?}"
    );

    // The same slot again: the slot's snapshots and their copies are found by their tags; nothing is sent.
    rig.proxy.clear_log();
    let again = once(&config, "daily", slot);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(rig.copy_calls().len(), 0, "{:?}", rig.proxy.log());
    assert_eq!(rig.proxy.count(CREATE, "forwarded"), 0);
    let after = found(&rig.raw_dr, "dr").await;
    let ids = |v: &[Found]| v.iter().map(|c| c.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&after), ids(&copies));
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Source keeps 7 days, copies keep 4 weeklies
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_runs_with_the_source_keeping_7_and_copies_4_weeklies_end_with_exactly_those_sets() {
    let rig = Rig::new(2, 2).await;
    let b = rig.dr_backend("last = 7", "keep = { weekly = 4 }").await;
    // Monday 5 October (ISO week 41) to Wednesday 11 November (week 46): 38 daily runs.
    let mut copied = 0;
    let mut copies_deleted = 0;
    for d in 1..=38 {
        let out = b.run("dr", day(d)).await;
        assert_clean(&out, &format!("day {d}"));
        assert_eq!(out.report.created, 2, "day {d}");
        // Each day's snapshot is the newest of its week: copied at once, and the copy it supersedes in the same
        // week goes.
        assert_eq!(out.report.copies.created, 2, "day {d}: {:#?}", out.report);
        assert_eq!(out.report.copies.pending, 0, "day {d}");
        copied += out.report.copies.created;
        copies_deleted += out.report.copies.deleted;
    }
    // Source: the last 7 days, 5 to 11 November.
    let source = dates(32..=38);
    assert_eq!(rig.sources().await, rig.all(source));
    // Destination: the newest copy of each of the last four ISO weeks — W46 (Wed 11 Nov), W45 (Sun 8 Nov),
    // W44 (Sun 1 Nov), W43 (Sun 25 Oct).
    let weekly: BTreeSet<String> = ["2026-11-11", "2026-11-08", "2026-11-01", "2026-10-25"]
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(weekly, dates([38, 35, 28, 21]));
    assert_eq!(rig.copies().await, rig.all(weekly));
    assert_eq!((copied, copies_deleted), (76, 76 - 8));
    // The RPO after losing the source region: both volumes' newest completed copies are of day 38.
    assert_eq!(dr_staleness(&b, day(38) + Duration::hours(1)), Some(3600.0));
    // One CopySnapshot per copy made: none refused, none repeated.
    assert_eq!(rig.copy_calls().len(), 76);
    // Without `copy-tags`, a copy carries snapwarden's tags and nothing else.
    for c in found(&rig.raw_dr, "dr").await {
        assert_eq!(
            c.tags.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            COPY_TAGS.into_iter().collect::<BTreeSet<_>>(),
            "{c:?}"
        );
    }
    // moto's copies keep their source's volume id; the proxy answered AWS's placeholder instead.
    assert!(rig.proxy.count(DESCRIBE, "rewritten") > 0);

    // Planning again changes nothing on either side.
    let again = b.run("dr", day(38)).await;
    assert_clean(&again, "rerun");
    assert_eq!(
        (
            again.report.created,
            again.report.deleted,
            again.report.copies.created,
            again.report.copies.deleted
        ),
        (0, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_schedule_with_a_copy_rule_is_copied_when_schedules_co_fire() {
    let rig = Rig::new(12, 1).await;
    // Nightly snapshots stay in the source; Sunday's, which serve the weekly schedule too, are copied.
    let policy = dr_policy_of(
        "",
        &[
            dr_schedule("daily", "30 4 * * *", "last = 7", None),
            dr_schedule(
                "weekly",
                "30 4 * * 0",
                "last = 4",
                Some("keep = { last = 4 }"),
            ),
        ],
    );
    let b = rig.backend("", &policy, pace()).await;
    // Monday 5 to Sunday 18 October: two Sundays.
    for d in 1..=14 {
        let out = b.run("dr", day(d)).await;
        assert_clean(&out, &format!("day {d}"));
        let sunday = d % 7 == 0;
        assert_eq!(
            out.report.copies.created,
            usize::from(sunday),
            "day {d}: {:#?}",
            out.report
        );
    }
    assert_eq!(rig.sources().await, rig.all(dates(7..=14)));
    assert_eq!(rig.copies().await, rig.all(dates([7, 14])));
    // A copy lists the schedules that copy it, not every schedule its source served: a schedule listed without a
    // copy rule would keep the copy for ever.
    for c in found(&rig.raw_dr, "dr").await {
        assert_eq!(c.tag("snapwarden:schedule"), "weekly", "{c:?}");
    }
    for s in found(&rig.raw, "dr")
        .await
        .iter()
        .filter(|s| s.date() == date(14))
    {
        assert_eq!(s.tag("snapwarden:schedule"), "daily,weekly", "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. A source snapshot whose copy is missing is not pruned
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_snapshot_whose_copy_is_refused_is_kept_past_its_keep_until_copied_then_pruned() {
    let rig = Rig::new(3, 1).await;
    let b = rig.dr_backend("last = 2", "keep = { last = 7 }").await;
    // The destination refuses every copy for four days (a role without ec2:CopySnapshot there).
    rig.proxy.set_rules(rig.aws_like(vec![
        Rule::new(&[COPY], When::Always, Fault::Error("UnauthorizedOperation")).in_region(DR),
    ]));
    let mut last = None;
    for d in 1..=4 {
        let out = b.run("dr", day(d)).await;
        let rep = &out.report;
        assert_eq!(rep.created, 1, "day {d}");
        assert_eq!(
            rep.deleted, 0,
            "day {d}: nothing the destination still wants is pruned"
        );
        assert_eq!(rep.result(), RunResult::Partial, "day {d}: {rep:#?}");
        // Every source snapshot the destination wants is tried again, and each refusal is a problem naming the
        // AWS code, the source snapshot and the destination.
        let problems: Vec<_> = rep
            .problems
            .iter()
            .filter(|p| p.operation == "copy")
            .collect();
        assert_eq!(problems.len(), d as usize, "day {d}: {:#?}", rep.problems);
        assert_eq!(rep.problems.len(), problems.len(), "{:#?}", rep.problems);
        for p in &problems {
            assert_eq!(p.code, "UnauthorizedOperation", "{p:?}");
            assert!(p.resource.starts_with("snap-"), "{p:?}");
            assert!(p.message.contains(DR), "{p:?}");
        }
        last = Some(out);
    }
    let last = last.unwrap();
    assert_eq!(rig.sources().await, rig.all(dates(1..=4)));
    assert!(rig.copies().await.is_empty());
    // With no copy at all, the destination cannot restore anything since the oldest source snapshot, day 1.
    assert_eq!(
        dr_staleness(&b, day(4) + Duration::hours(1)),
        Some((Duration::days(3) + Duration::hours(1)).num_seconds() as f64)
    );
    // Days 1 and 2 are beyond `last = 2`: kept only because their copy is not made yet.
    for d in [1, 2] {
        let dec = last
            .plan
            .iter()
            .find(|x| x.slot == day(d))
            .unwrap_or_else(|| panic!("a decision for day {d}: {:#?}", last.plan));
        assert_eq!(dec.action, Action::Keep, "{dec:?}");
        assert!(
            dec.reasons
                .iter()
                .any(|r| matches!(r, Reason::CopyPending { region } if &**region == DR)),
            "{dec:?}"
        );
        assert!(
            dec.reasons.iter().any(|r| r.as_str() == "copy-pending"),
            "{dec:?}"
        );
    }
    assert_eq!(rig.copy_calls().len(), 1 + 2 + 3 + 4);

    // The permission is granted: day 5 copies the whole backlog, oldest first. The source's own retention ran
    // before the copies, so it still holds all five.
    rig.proxy.set_rules(rig.aws_like(Vec::new()));
    rig.proxy.clear_log();
    let out = b.run("dr", day(5)).await;
    assert_clean(&out, "day 5");
    assert_eq!((out.report.copies.created, out.report.deleted), (5, 0));
    let sources = found(&rig.raw, "dr").await;
    let slot_of = |id: &str| {
        sources
            .iter()
            .find(|s| s.id == id)
            .map(Found::date)
            .unwrap_or_default()
    };
    let order: Vec<String> = rig
        .copy_calls()
        .iter()
        .map(|h| slot_of(&h.param("SourceSnapshotId").unwrap_or_default()))
        .collect();
    assert_eq!(
        order,
        dates(1..=5).into_iter().collect::<Vec<_>>(),
        "oldest first"
    );
    assert_eq!(rig.copies().await, rig.all(dates(1..=5)));
    assert_eq!(rig.sources().await, rig.all(dates(1..=5)));

    // The next run of the slot finds every copy completed: the source falls back to its own keep.
    let out = b.run("dr", day(5)).await;
    assert_clean(&out, "day 5 again");
    assert_eq!(
        (
            out.report.created,
            out.report.deleted,
            out.report.copies.created
        ),
        (0, 3, 0)
    );
    assert_eq!(rig.sources().await, rig.all(dates(4..=5)));
    assert_eq!(rig.copies().await, rig.all(dates(1..=5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_ends_in_error_is_reported_deleted_and_made_again_by_the_next_run() {
    let rig = Rig::new(9, 1).await;
    let b = rig.dr_backend("last = 2", "keep = { last = 7 }").await;
    // The destination's first DescribeSnapshots is the run's survey of it; the second, the first completion poll,
    // finds the new copy in `error` (on AWS: nearly always the KMS key policy).
    rig.proxy.set_rules(vec![
        Rule {
            when: When::Calls(vec![2]),
            ..rig.copies_shown("error")
        },
        rig.copy_volume_ids(Vec::new()),
    ]);
    let out = b.run("dr", day(1)).await;
    let rep = &out.report;
    assert_eq!(rep.result(), RunResult::Partial, "{rep:#?}");
    assert_eq!(rep.problems.len(), 1, "{:#?}", rep.problems);
    let p = &rep.problems[0];
    let source = found(&rig.raw, "dr").await;
    assert_eq!(source.len(), 1);
    assert_eq!(
        (p.operation, p.code.as_str(), p.resource.as_str()),
        ("copy", "copy-error", source[0].id.as_str()),
        "{p:?}"
    );
    assert!(p.message.contains(DR), "{p:?}");
    // The errored copy restores nothing: it is gone from the destination.
    assert!(rig.copies().await.is_empty());
    assert_eq!(rig.proxy.count("DeleteSnapshot", "forwarded"), 1);

    // The next run copies the source again.
    let out = b.run("dr", day(1)).await;
    assert_clean(&out, "day 1 again");
    assert_eq!(out.report.copies.created, 1);
    assert_eq!(rig.copies().await, rig.all(dates([1])));
    assert_eq!(rig.copy_calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_source_regions_copying_to_one_destination_each_keep_and_prune_only_their_own_copies() {
    const EU: &str = "eu-west-1";
    let mut rig = Rig::new(10, 2).await;
    let conf = rig.moto.sdk_config().await;
    let raw_eu = aws_sdk_ec2::Client::new(&conf.to_builder().region(SdkRegion::new(EU)).build());
    let mut eu = Vec::new();
    for i in 0..2 {
        let name = format!("db-eu-{i}");
        eu.push(common::moto_volume(&raw_eu, &[("Backup", "dr"), ("Name", &name)]).await);
    }
    eu.sort();
    // Both regions' volumes answered as AWS would in the destination.
    rig.volumes.extend(eu.iter().cloned());
    rig.proxy.set_rules(rig.aws_like(Vec::new()));
    let both = rig
        .backends(
            &[REGION, EU],
            "",
            &dr_policy("last = 7", "keep = { last = 2 }", ""),
            pace(),
        )
        .await;
    for d in 1..=3 {
        for b in &both {
            let out = b.run("dr", day(d)).await;
            assert_clean(&out, &format!("{} day {d}", b.region.ec2.region()));
            // Each region copies its own two volumes and prunes only its own copies.
            assert_eq!(out.report.copies.created, 2, "day {d}");
            assert_eq!(
                out.report.copies.deleted,
                if d == 3 { 2 } else { 0 },
                "day {d}"
            );
        }
    }
    let copies = found(&rig.raw_dr, "dr").await;
    let mut by: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for c in &copies {
        by.entry((
            c.tag("snapwarden:source-region").to_string(),
            c.tag("snapwarden:source-volume").to_string(),
        ))
        .or_default()
        .insert(c.date());
    }
    let want: BTreeMap<(String, String), BTreeSet<String>> = rig.volumes[..2]
        .iter()
        .map(|v| (REGION, v))
        .chain(eu.iter().map(|v| (EU, v)))
        .map(|(r, v)| ((r.to_string(), v.clone()), dates(2..=3)))
        .collect();
    assert_eq!(by, want);
    assert_eq!(copies.len(), 8);
    // Each CopySnapshot named the region its source is in.
    for h in rig.copy_calls() {
        let source = h.param("SourceSnapshotId").unwrap_or_default();
        let region = h.param("SourceRegion").unwrap_or_default();
        let in_eu = found(&raw_eu, "dr").await.iter().any(|s| s.id == source);
        assert_eq!(region, if in_eu { EU } else { REGION }, "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_answer_is_lost_is_not_sent_again_and_the_next_run_finds_it_by_its_tags() {
    let rig = Rig::new(11, 3).await;
    let b = rig.dr_backend("last = 7", "keep = { last = 7 }").await;
    // moto makes the first copy, and the connection drops before its answer (CopySnapshot has no client token).
    rig.proxy.set_rules(rig.aws_like(vec![
        Rule::new(&[COPY], When::Calls(vec![1]), Fault::Lost).in_region(DR),
    ]));
    let out = b.run("dr", day(1)).await;
    let rep = &out.report;
    assert_eq!(rep.result(), RunResult::Partial, "{rep:#?}");
    assert_eq!(rep.copies.created, 2, "{rep:#?}");
    let lost = &rig.copy_calls()[0];
    assert_eq!(lost.outcome, "lost");
    let source = lost.param("SourceSnapshotId").unwrap();
    assert_eq!(rep.problems.len(), 1, "{:#?}", rep.problems);
    assert_eq!(
        (rep.problems[0].operation, rep.problems[0].resource.as_str()),
        ("copy", source.as_str()),
        "{:?}",
        rep.problems[0]
    );
    // Not retried: a repeat could have made a second copy.
    assert_eq!(rig.copy_calls().len(), 3);
    let all = rig.all(dates([1]));
    assert_eq!(rig.copies().await, all, "the lost answer's copy exists");

    rig.proxy.set_rules(rig.aws_like(Vec::new()));
    let out = b.run("dr", day(1)).await;
    assert_clean(&out, "day 1 again");
    assert_eq!(out.report.copies.created, 0);
    assert_eq!(rig.copy_calls().len(), 3, "nothing copied twice");
    assert_eq!(rig.copies().await, all);
}

// ---------------------------------------------------------------------------------------------------------------
// 4. A deleted source volume's copies follow the orphan rule
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copies_of_a_deleted_source_volume_follow_the_orphan_rule() {
    let rig = Rig::new(4, 2).await;
    let b = rig
        .backend(
            "",
            &dr_policy(
                "last = 3",
                "keep = { last = 3 }",
                "orphans = { expire-after = \"10d\" }",
            ),
            pace(),
        )
        .await;
    for d in 1..=4 {
        assert_clean(&b.run("dr", day(d)).await, &format!("day {d}"));
    }
    let both = rig.all(dates(2..=4));
    assert_eq!(rig.sources().await, both);
    assert_eq!(rig.copies().await, both);

    // The second volume is deleted after day 4.
    let gone = rig.volumes[1].clone();
    rig.raw
        .delete_volume()
        .volume_id(&gone)
        .send()
        .await
        .unwrap();

    // Day 5: its newest snapshot is a day old, younger than expire-after: the keep rules still apply on both sides
    // (nothing new to keep, nothing dropped), while the other volume moves on.
    let out = b.run("dr", day(5)).await;
    assert_clean(&out, "day 5");
    assert_eq!(out.report.targeted_volumes, 1);
    let day5 = rig.each(&[(0, dates(3..=5)), (1, dates(2..=4))]);
    assert_eq!(rig.sources().await, day5);
    assert_eq!(rig.copies().await, day5);

    // Day 16: its newest is 12 days old, past expire-after: every snapshot of it goes, in the source and in the
    // destination; the live volume keeps its last three on each side.
    let out = b.run("dr", day(16)).await;
    assert_clean(&out, "day 16");
    let live = dates([4, 5, 16]);
    let day16 = rig.each(&[(0, live.clone()), (1, BTreeSet::new())]);
    assert_eq!(rig.sources().await, day16);
    assert_eq!(rig.copies().await, day16);
    // The gone volume's three copies and the live volume's copy of day 3.
    assert_eq!(out.report.copies.deleted, 4, "{:#?}", out.report);
    assert_eq!(out.report.deleted, 3 + 1, "{:#?}", out.report);
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Through the fault proxy: the copy limit defers; a throttled destination does not slow the source
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limit_exceeded_defers_the_copies_and_the_next_run_copies_them_oldest_first() {
    let rig = Rig::new(5, 3).await;
    let b = rig.dr_backend("last = 7", "keep = { last = 7 }").await;
    let limit = |when| {
        rig.aws_like(vec![Rule::new(
            &[COPY],
            when,
            Fault::Error("ResourceLimitExceeded"),
        )
        .in_region(DR)])
    };
    let sent_and_deferred = |out: &Outcome| (out.report.copies.created, out.report.copies.deferred);

    // Day 1: the destination is at its limit (copies someone else started): the first refusal defers the rest.
    rig.proxy.set_rules(limit(When::Always));
    let out = b.run("dr", day(1)).await;
    assert_clean(&out, "day 1: a deferral is no problem");
    assert_eq!(out.report.created, 3);
    assert_eq!(sent_and_deferred(&out), (0, 3));
    assert_eq!(
        rig.copy_calls().len(),
        1,
        "one refusal, no retry, no more calls"
    );
    assert!(rig.copies().await.is_empty());
    let metrics = b.shared.metrics.render(Utc::now());
    let copies_total =
        |outcome| common::metric_sum(&metrics, "snapwarden_copies_total", &[("outcome", outcome)]);
    assert_eq!(copies_total("deferred"), Some(3.0), "{metrics}");
    assert_eq!(copies_total("failed").unwrap_or(0.0), 0.0);

    // Day 2: room for three: day 1's three go first, the fourth call is refused and day 2's wait.
    rig.proxy.set_rules(limit(When::Calls(vec![4])));
    rig.proxy.clear_log();
    let out = b.run("dr", day(2)).await;
    assert_clean(&out, "day 2");
    assert_eq!(sent_and_deferred(&out), (3, 3));
    assert_eq!(rig.copies().await, rig.all(dates(1..=1)));
    let calls = rig.copy_calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[3].outcome, "ResourceLimitExceeded");

    // The next run finishes the copies.
    rig.proxy.set_rules(rig.aws_like(Vec::new()));
    let out = b.run("dr", day(2)).await;
    assert_clean(&out, "day 2 again");
    assert_eq!(sent_and_deferred(&out), (3, 0));
    assert_eq!(rig.copies().await, rig.all(dates(1..=2)));
    assert_eq!(rig.sources().await, rig.all(dates(1..=2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_concurrency_bounds_the_copies_pending_there_and_the_next_run_sends_the_rest() {
    let rig = Rig::new(8, 4).await;
    let b = rig
        .backend(
            "copy-concurrency = 2",
            &dr_policy("last = 7", "keep = { last = 7 }", ""),
            pace(),
        )
        .await;
    // Copies stay pending in the destination (as they do on AWS for minutes), so the two places never free up
    // within the run's completion deadline.
    rig.proxy.set_rules(vec![rig.copies_shown("pending")]);
    let short = Completion {
        deadline: StdDuration::from_millis(500),
        ..quick()
    };
    let out = b.run_within("dr", day(1), short).await;
    assert_clean(&out, "day 1: deferred copies are no problem");
    assert_eq!(out.report.created, 4);
    let c = &out.report.copies;
    assert_eq!((c.created, c.deferred, c.pending), (2, 2, 2), "{c:?}");
    assert_eq!(rig.copy_calls().len(), 2);
    let metrics = b.shared.metrics.render(Utc::now());
    assert_eq!(
        common::metric(
            &metrics,
            "snapwarden_copies_pending",
            &[
                ("policy", "dr"),
                ("account", ACCOUNT),
                ("region", REGION),
                ("destination", DR)
            ]
        ),
        Some(2.0),
        "{metrics}"
    );
    let copies = rig.copies().await;
    assert_eq!(copies.len(), 2, "{copies:?}");

    // The copies complete: the next run of the slot sees them done and sends the other two.
    rig.proxy.set_rules(rig.aws_like(Vec::new()));
    let out = b.run_within("dr", day(1), short).await;
    assert_clean(&out, "day 1 again");
    let c = &out.report.copies;
    assert_eq!((c.created, c.deferred, c.pending), (2, 0, 0), "{c:?}");
    assert_eq!(rig.copies().await, rig.all(dates([1])));
    assert_eq!(rig.copy_calls().len(), 4, "none sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_destination_does_not_hold_back_creates_in_the_source_region() {
    let rig = Rig::new(6, 2).await;
    // A second policy in the source region over two volumes of its own, copying nothing.
    let mut local = Vec::new();
    for _ in 0..2 {
        local.push(common::moto_volume(&rig.raw, &[("Backup", "local")]).await);
    }
    let policies = format!(
        "{}\n{}",
        dr_policy("last = 7", "keep = { last = 7 }", ""),
        common::instance_policy("local", "local", "daily", "30 4 * * *", "last = 7")
            .replace("resource = \"instance\"", "resource = \"volume\"")
    );
    // One AWS call at a time for the whole process: a throttled copy that held its place while backing off
    // would stop every other call.
    let b = rig
        .backend(
            "max-concurrent-aws-calls = 1",
            &policies,
            PaceConfig {
                max_attempts: 100_000,
                backoff_base: StdDuration::from_millis(20),
                backoff_cap: StdDuration::from_millis(100),
                ..pace()
            },
        )
        .await;
    rig.proxy.set_rules(rig.aws_like(vec![
        Rule::new(&[COPY], When::Always, Fault::Error("RequestLimitExceeded")).in_region(DR),
    ]));

    let proxy = &rig.proxy;
    let throttled = |p: &FaultProxy| {
        p.log()
            .iter()
            .filter(|h| h.action == COPY && h.outcome == "RequestLimitExceeded")
            .count()
    };
    // `dr` reaches its copies and is throttled there; meanwhile `local` runs in the source region. The throttling
    // is lifted only once `local` has finished: had its creates waited for the destination, it never would.
    let dr_run = b.run("dr", day(1));
    let local_run = async {
        let deadline = Instant::now() + StdDuration::from_secs(60);
        while throttled(proxy) < 2 {
            assert!(
                Instant::now() < deadline,
                "no throttled copy: {:?}",
                proxy.log()
            );
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        let out = tokio::time::timeout(StdDuration::from_secs(60), b.run("local", day(1)))
            .await
            .expect("the source region's run finishes while the destination is throttled");
        let during = throttled(proxy);
        proxy.set_rules(rig.aws_like(Vec::new()));
        (out, during)
    };
    let (dr, (local_out, throttled_during)) = tokio::join!(dr_run, local_run);

    assert_clean(&local_out, "local");
    assert_eq!(local_out.report.created, 2);
    assert_clean(&dr, "dr: throttling is retried, not a problem");
    assert_eq!(dr.report.copies.created, 2);
    assert_eq!(rig.copies().await, rig.all(dates([1])));

    let log = proxy.log();
    let local_creates: Vec<&Hit> = log
        .iter()
        .filter(|h| h.action == CREATE && local.contains(&h.param("VolumeId").unwrap_or_default()))
        .collect();
    let throttles: Vec<&Hit> = log
        .iter()
        .filter(|h| h.outcome == "RequestLimitExceeded")
        .collect();
    // One create per volume, each answered the first time, all while the destination was being throttled.
    assert_eq!(local_creates.len(), 2, "{log:?}");
    assert!(local_creates
        .iter()
        .all(|h| h.region == REGION && h.outcome == "forwarded"));
    // The first copy the destination let through came after them: until then it refused every copy.
    let answered = log
        .iter()
        .find(|h| h.action == COPY && h.outcome == "forwarded")
        .expect("the copies went through once the throttling was lifted")
        .at;
    assert!(
        local_creates
            .iter()
            .all(|h| throttles[0].at < h.at && h.at < answered),
        "the creates came while the destination was throttled: {log:?}"
    );
    // The throttling stayed in the destination.
    assert!(throttles.iter().all(|h| h.region == DR && h.action == COPY));
    assert!(throttled_during >= 2, "{throttled_during}");
    // Of the destination's calls, each copy was answered once.
    assert_eq!(
        log.iter()
            .filter(|h| h.action == COPY && h.outcome == "forwarded")
            .count(),
        2
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 6. kill -9 during copies, then restart: no duplicate copy (the daemon binary)
// ---------------------------------------------------------------------------------------------------------------

/// How long the proxy holds each CopySnapshot answer (after moto has made the copy) while the kill is set up.
const HOLD: StdDuration = StdDuration::from_millis(800);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_copies_are_in_flight_the_restart_finds_them_by_tag_and_copies_none_twice() {
    let rig = Rig::new(7, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // A yearly schedule: only catch-up fires during the test, always this year's slot.
    let policy = dr_policy_of(
        "",
        &[dr_schedule(
            "yearly",
            "0 0 1 1 *",
            "last = 3",
            Some("keep = { last = 3 }"),
        )],
    );
    let config = common::write_config(
        dir.path(),
        port,
        "completion-deadline = \"2s\"",
        &rig.proxy.endpoint,
        "max-attempts = 3",
        &policy,
    );
    // Every copy looks pending in the destination (as a fresh copy does on AWS for minutes), and each
    // CopySnapshot's answer comes late: moto has made the copy, the daemon has not heard yet.
    rig.proxy.set_rules(vec![
        Rule::new(&[COPY], When::Always, Fault::Late(HOLD)).in_region(DR),
        rig.copies_shown("pending"),
    ]);
    let start = || Daemon::spawn(snapwarden().arg("--config").arg(&config).arg("run"));

    let mut d = start();
    // The second CopySnapshot has reached moto: the first copy's answer came back, the second's has not.
    let deadline = Instant::now() + StdDuration::from_secs(60);
    while rig.copy_calls().len() < 2 {
        assert!(d.is_running(), "the daemon exited\n{}", d.logs());
        assert!(
            Instant::now() < deadline,
            "no second copy within 60 s: {:?}\n{}",
            rig.proxy.log(),
            d.logs()
        );
        std::thread::sleep(StdDuration::from_millis(5));
    }
    d.kill9();
    // The held answer goes nowhere; the copy it was for exists.
    std::thread::sleep(HOLD + StdDuration::from_millis(300));
    let sources = found(&rig.raw, "dr").await;
    assert_eq!(
        sources.len(),
        4,
        "the slot's snapshots were made before the copies"
    );
    let before = found(&rig.raw_dr, "dr").await;
    assert_eq!(
        before.len(),
        2,
        "two copies made before the kill: {before:#?}"
    );
    let first_calls: BTreeSet<String> = rig
        .copy_calls()
        .iter()
        .filter_map(|h| h.param("SourceSnapshotId"))
        .collect();
    assert_eq!(first_calls.len(), 2);
    assert_eq!(
        before
            .iter()
            .map(|c| c.tag("snapwarden:source-snapshot").to_string())
            .collect::<BTreeSet<_>>(),
        first_calls,
        "the copy whose answer the daemon never heard is among them"
    );

    // Restart, answers no longer held; the copies still look pending. Catch-up fires the same slot.
    rig.proxy.set_rules(vec![rig.copies_shown("pending")]);
    let mut d = start();
    let (result, _) = d.wait_for_run(port, "dr", "yearly", REGION);
    assert_eq!(result, "success", "{}", d.logs());
    d.stop();
    let calls = rig.copy_calls();
    let second_calls: BTreeSet<String> = calls[2..]
        .iter()
        .filter_map(|h| h.param("SourceSnapshotId"))
        .collect();
    // The restart copied only the two sources no copy names; the pending ones, whether their answer reached the
    // daemon or not, were found by their `snapwarden:source-snapshot` tag.
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(first_calls.is_disjoint(&second_calls), "{calls:?}");
    let copies = found(&rig.raw_dr, "dr").await;
    let copied: Vec<&str> = copies
        .iter()
        .map(|c| c.tag("snapwarden:source-snapshot"))
        .collect();
    let unique: BTreeSet<&str> = copied.iter().copied().collect();
    assert_eq!(copied.len(), unique.len(), "a duplicate copy: {copies:#?}");
    assert_eq!(
        unique,
        sources
            .iter()
            .map(|s| s.id.as_str())
            .collect::<BTreeSet<_>>(),
        "one copy per source snapshot"
    );

    // Once the copies are seen completed, the slot again copies nothing.
    rig.proxy.set_rules(rig.aws_like(Vec::new()));
    let slot = format_slot(
        snapwarden::schedule::Cron::parse("0 0 1 1 *")
            .unwrap()
            .latest_at_or_before(Utc::now(), chrono_tz::Tz::UTC)
            .unwrap(),
    );
    let out = once(&config, "yearly", &slot);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rig.copy_calls().len(), 4);
    assert_eq!(found(&rig.raw_dr, "dr").await.len(), 4);
}
