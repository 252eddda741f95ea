//! Many accounts from one daemon (issue 16) against a real moto server, through the daemon's own AWS path:
//! `daemon::aws_regions_paced` builds one paced backend per (account, region) pair from a config with
//! `[[aws.account]]` entries, and the runs go through `worker::run` per pair or through the daemon's scheduler loop
//! (`daemon::schedule_loop`, catch-up firing the latest slot at once). moto separates accounts by the credentials
//! a request is signed with: credentials from AssumeRole into `arn:aws:iam::222222222222:role/…` see and create
//! only that account's resources. The daemon talks to moto through the fault proxy (`common::fault_proxy`), which
//! refuses one role's AssumeRole when a test asks it to; what is seeded and read back goes to moto directly, each
//! account with its own credentials, so nothing the daemon's path does can hide what it did.
//!
//! Covered: three accounts (the daemon's own and two assumed) in two regions under one policy — each account's
//! volumes get their snapshots in that account, each account's history is pruned by its own retention, and each
//! report carries its account's label; a policy restricted to one account by `accounts = […]` fires there only;
//! an account whose role is refused fails alone (its reports fatal with code `assume-role`, the message naming
//! the role), with one digest per region naming the role and no false recovery from the other accounts' runs of
//! the same region; an `[[aws.account]]` for the daemon's own account is refused at start.
//!
//! Not covered here: credentials expiring mid-run through these backends. moto never expires credentials, so the
//! test needs the SDK's clock driven by hand, and `daemon::aws_regions_paced` builds its SDK configs with the
//! system clock and no way to give it another; tests/assume_role.rs drives `ec2::assume::assumed_config` on a fake
//! clock instead.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::{Moto, Recorder, ACCOUNT, REGION};
use snapwarden::config;
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::assume::{assumed_config, Role};
use snapwarden::ec2::pace::PaceConfig;
use snapwarden::notify::{Notifier, Publisher};
use snapwarden::report::{RunReport, RunResult};
use snapwarden::schedule::format_slot;
use snapwarden::worker::{self, Completion, Region};

/// The daemon's own account is [`ACCOUNT`] (what moto answers for the test keys); these two are assumed.
const PROD: &str = "222222222222";
const DATA: &str = "333333333333";
/// The second region; the first is [`REGION`].
const WEST: &str = "us-west-2";
const REGIONS: [&str; 2] = [REGION, WEST];

fn role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/snapwarden")
}

/// The `[[aws.account]]` entries of the member accounts: `prod` and `data`.
fn members() -> String {
    format!(
        "[[aws.account]]\nname = \"prod\"\nrole-arn = \"{}\"\n\n[[aws.account]]\nname = \"data\"\nrole-arn = \"{}\"\n",
        role_arn(PROD),
        role_arn(DATA)
    )
}

/// The account label a report of `account` carries: an entry's name, or the own account's id.
fn label(account: &str) -> &'static str {
    match account {
        PROD => "prod",
        DATA => "data",
        _ => ACCOUNT,
    }
}

/// A policy `name` over the volumes tagged `Backup = name`: one daily schedule keeping the last 2, and `extra`
/// policy lines.
fn policy(name: &str, extra: &str) -> String {
    format!(
        "[[policy]]\nname = \"{name}\"\n{extra}\ntarget = {{ resource = \"volume\", tags = {{ Backup = \"{name}\" }} }}\n\
         schedule = [{{ name = \"daily\", cron = \"0 4 * * *\", keep = {{ last = 2 }} }}]\n"
    )
}

fn pace() -> PaceConfig {
    PaceConfig {
        budget_fraction: 1.0,
        max_attempts: 3,
        backoff_base: StdDuration::from_millis(10),
        backoff_cap: StdDuration::from_millis(50),
        per_volume_gap: StdDuration::from_millis(10),
        seed: Some(16),
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

struct Rig {
    moto: Moto,
    proxy: FaultProxy,
}

impl Rig {
    fn start(seed: u64) -> Rig {
        let moto = Moto::start();
        let proxy = FaultProxy::start(moto.port, seed);
        Rig { moto, proxy }
    }

    /// A raw EC2 client acting in `account` in `region`, straight to moto: the test's own keys for the daemon's
    /// account, a role assumed into the others (as the daemon assumes them, but not through the proxy).
    async fn raw(&self, account: &str, region: &str) -> aws_sdk_ec2::Client {
        let base = common::sdk_config(&self.moto.endpoint)
            .await
            .into_builder()
            .region(aws_config::Region::new(region.to_string()))
            .build();
        let conf = if account == ACCOUNT {
            base
        } else {
            let role = Role {
                arn: role_arn(account),
                external_id: None,
                session_name: "seeded-by-a-test".into(),
            };
            assumed_config(&base, &role).await
        };
        aws_sdk_ec2::Client::new(&conf)
    }

    /// The daemon's shared parts from a config against the proxy in both regions: `accounts` (the `[aws]` lines
    /// and `[[aws.account]]` tables), `policies` and `[daemon]` lines `daemon`.
    fn shared(&self, daemon: &str, accounts: &str, policies: &str) -> Shared {
        let text = format!(
            "[daemon]\n{daemon}\n\n[aws]\nendpoint-url = \"{}\"\nregions = [\"{REGION}\", \"{WEST}\"]\n{accounts}\n\n{policies}",
            self.proxy.endpoint
        );
        Shared::new(
            config::from_toml_str(Path::new("accounts.toml"), &text, &[])
                .expect("valid test config"),
        )
    }

    /// The AssumeRole requests for `account`'s role the proxy saw, any outcome.
    fn assumed(&self, account: &str) -> usize {
        let arn = role_arn(account).replace(':', "%3A").replace('/', "%2F");
        self.proxy
            .log()
            .iter()
            .filter(|h| h.action == "AssumeRole" && h.param("RoleArn").as_deref() == Some(&*arn))
            .count()
    }
}

/// A volume tagged `Backup = policy` in each (account, region), with snapshots of `policy`'s daily schedule at the
/// slots `history` gives for its account (days before `slot`); returns (account, region) -> volume id.
async fn seed(
    rig: &Rig,
    policy: &str,
    slot: DateTime<Utc>,
    history: &[(&str, &[i64])],
) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (account, days) in history {
        for region in REGIONS {
            let raw = rig.raw(account, region).await;
            let volume = common::moto_volume(&raw, &[("Backup", policy)]).await;
            for d in *days {
                let at = format_slot(slot - Duration::days(*d));
                common::moto_snapshot(&raw, &volume, &common::managed_tags(policy, "daily", &at))
                    .await;
            }
            out.insert((account.to_string(), region.to_string()), volume);
        }
    }
    out
}

/// A report's field as its JSON shows it (the account label and the region are not public fields).
fn field(report: &RunReport, key: &str) -> serde_json::Value {
    serde_json::to_value(report).expect("report serializes")[key].clone()
}

/// (account id, account label, region, own) of every pair the daemon built, in order.
fn pairs(regions: &[Arc<Region>]) -> Vec<(String, String, String, bool)> {
    regions
        .iter()
        .map(|r| {
            (
                r.account_id.clone(),
                r.account.clone(),
                r.ec2.region().to_string(),
                r.own,
            )
        })
        .collect()
}

/// One run of `policy` at `slot` in every pair at once, each with its clock five minutes after the slot; the
/// reports in the order of `regions`.
async fn run_all(
    shared: &Shared,
    regions: &[Arc<Region>],
    policy: &str,
    slot: DateTime<Utc>,
) -> Vec<RunReport> {
    let p = shared.config.policy(policy).expect("policy");
    let tz = shared.config.daemon.timezone;
    let runs = regions.iter().map(|r| async move {
        let spec = r
            .spec(p, slot)
            .firing(daemon::firing_at(p, slot, tz))
            .concurrency(4)
            .completion(quick());
        worker::run(r.ec2.as_ref(), &spec, &shared.metrics, move || {
            slot + Duration::minutes(5)
        })
        .await
        .report
    });
    futures::future::join_all(runs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_is_snapshotted_and_pruned_in_itself() {
    let rig = Rig::start(1);
    let slot = common::slot("2026-03-10T04:00:00Z");
    // Each account has a history of its own: keeping the last 2, the own account loses two, `prod` none and
    // `data` one. A run that saw another account's snapshots, or acted with another account's credentials, would
    // prune otherwise.
    let history: [(&str, &[i64]); 3] = [(ACCOUNT, &[1, 2, 3]), (PROD, &[1]), (DATA, &[1, 2])];
    let volumes = seed(&rig, "fleet", slot, &history).await;

    let shared = rig.shared("", &members(), &policy("fleet", ""));
    let regions = daemon::aws_regions_paced(&shared, &pace())
        .await
        .expect("three accounts in two regions");
    let want: Vec<_> = [ACCOUNT, PROD, DATA]
        .into_iter()
        .flat_map(|a| {
            REGIONS.map(|r| {
                (
                    a.to_string(),
                    label(a).to_string(),
                    r.to_string(),
                    a == ACCOUNT,
                )
            })
        })
        .collect();
    assert_eq!(pairs(&regions), want, "one pair per account and region");

    let reports = run_all(&shared, &regions, "fleet", slot).await;
    let deleted = |account: &str| match account {
        ACCOUNT => 2,
        PROD => 0,
        _ => 1,
    };
    for (r, report) in regions.iter().zip(&reports) {
        let what = format!("{}/{}: {report:?}", r.account, r.ec2.region());
        assert_eq!(report.result(), RunResult::Success, "{what}");
        assert_eq!(field(report, "account"), label(&r.account_id), "{what}");
        assert_eq!(field(report, "region"), r.ec2.region(), "{what}");
        assert_eq!(report.targeted_volumes, 1, "{what}");
        assert_eq!(report.created, 1, "{what}");
        assert_eq!(report.deleted, deleted(&r.account_id), "{what}");
    }

    // Read back per account with that account's own credentials: its volume holds the new slot and the one before,
    // every snapshot is owned by the account, and no other account's volume appears.
    let kept = vec![format_slot(slot - Duration::days(1)), format_slot(slot)];
    for account in [ACCOUNT, PROD, DATA] {
        for region in REGIONS {
            let raw = rig.raw(account, region).await;
            let volume = &volumes[&(account.to_string(), region.to_string())];
            let found = common::slots_by_volume(&raw, "fleet").await;
            assert_eq!(
                found,
                BTreeMap::from([(volume.clone(), kept.clone())]),
                "{account} {region}"
            );
            for s in common::policy_snapshots(&raw, "fleet").await {
                assert_eq!(s.owner_id(), Some(account), "{account} {region}: {s:?}");
            }
        }
    }

    // Each member's role was assumed, at most once per region (its session serves every call of the pair), and
    // no request failed.
    for account in [PROD, DATA] {
        let n = rig.assumed(account);
        assert!(
            (1..=REGIONS.len()).contains(&n),
            "{account}: {n} AssumeRole"
        );
    }
    let log = rig.proxy.log();
    assert!(log.iter().all(|h| h.outcome == "forwarded"), "{log:?}");
}

/// Runs the daemon's scheduler loop with catch-up (each policy's latest slot fires at once) over `regions`,
/// alerts going to `alerts`, until `done` says so (at most a minute); then shuts it down and waits for the alerts
/// still queued. Returns whether the loop drained its runs.
async fn run_loop(
    shared: &Shared,
    regions: Vec<Arc<Region>>,
    alerts: Arc<Recorder>,
    done: impl Fn() -> bool,
) -> bool {
    let (notifier, sender) = Notifier::spawn(
        Some(alerts as Arc<dyn Publisher>),
        StdDuration::from_secs(3600),
        shared.metrics.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon::schedule_loop(
        shared.clone(),
        Arc::new(regions),
        notifier,
        true,
        stop.clone(),
    ));
    let deadline = Instant::now() + StdDuration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the fire did not get there within a minute: {:?}",
            shared.status.snapshot()
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    stop.cancel();
    let drained = task.await.expect("the loop ends");
    // Every sender of the notifier is gone with the loop: its task publishes what is queued and ends.
    tokio::time::timeout(StdDuration::from_secs(10), sender)
        .await
        .expect("the notifier drains")
        .expect("the notifier task");
    drained
}

/// Whether `policy`'s daily schedule has run and its fire has ended, per `/status`.
fn fire_ended(shared: &Shared, policy: &str) -> bool {
    daily(shared, policy).is_some_and(|s| !s.running && !s.last_runs.is_empty())
}

/// `policy`'s daily schedule on `/status`, once the loop has registered it.
fn daily(shared: &Shared, policy: &str) -> Option<snapwarden::status::ScheduleStatus> {
    shared.status.snapshot().get(policy)?.get("daily").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_for_one_account_fires_in_that_account_only() {
    let rig = Rig::start(2);
    let slot = Utc::now();
    let everywhere: [(&str, &[i64]); 3] = [(ACCOUNT, &[]), (PROD, &[]), (DATA, &[])];
    let volumes = seed(&rig, "only-prod", slot, &everywhere).await;
    let shared = rig.shared(
        "completion-deadline = \"0s\"",
        &members(),
        &policy("only-prod", "accounts = [\"prod\"]"),
    );
    let p = shared.config.policy("only-prod").unwrap();
    assert!(p.serves("prod", false));
    assert!(!p.serves("data", false));
    assert!(!p.serves(ACCOUNT, true));

    let regions = daemon::aws_regions_paced(&shared, &pace()).await.unwrap();
    assert_eq!(regions.len(), 6);
    let alerts = Arc::new(Recorder::default());
    let drained = run_loop(&shared, regions, alerts.clone(), || {
        fire_ended(&shared, "only-prod")
    })
    .await;
    assert!(drained);
    assert!(alerts.sent.lock().unwrap().is_empty(), "no run failed");

    for account in [ACCOUNT, PROD, DATA] {
        for region in REGIONS {
            let raw = rig.raw(account, region).await;
            let found = common::slots_by_volume(&raw, "only-prod").await;
            let volume = &volumes[&(account.to_string(), region.to_string())];
            if account == PROD {
                assert_eq!(found.len(), 1, "{region}: {found:?}");
                assert_eq!(found[volume].len(), 1, "{region}: {found:?}");
            } else {
                assert!(
                    found.is_empty(),
                    "{account} {region} is not the policy's: {found:?}"
                );
            }
        }
    }
    // Nothing was asked of the account left out, not even its credentials.
    assert_eq!(rig.assumed(DATA), 0);
}

/// The proxy refuses AssumeRole into `data`'s role, as STS does when its trust policy does not trust the daemon.
fn refuse_data(rig: &Rig) {
    let arn = role_arn(DATA).replace(':', "%3A").replace('/', "%2F");
    rig.proxy.set_rules(vec![Rule::new(
        &["AssumeRole"],
        When::Always,
        Fault::Error("AccessDenied"),
    )
    .with_param("RoleArn", &arn)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_role_fails_its_account_alone() {
    let rig = Rig::start(3);
    let slot = common::slot("2026-03-10T04:00:00Z");
    let everywhere: [(&str, &[i64]); 3] = [(ACCOUNT, &[1]), (PROD, &[1]), (DATA, &[1])];
    seed(&rig, "fleet", slot, &everywhere).await;
    refuse_data(&rig);
    let shared = rig.shared("", &members(), &policy("fleet", ""));
    // Nothing asks STS at start: the refused account is built like the others.
    let regions = daemon::aws_regions_paced(&shared, &pace())
        .await
        .expect("a refused role does not stop the start");
    assert_eq!(regions.len(), 6);
    assert_eq!(rig.assumed(DATA), 0);

    let reports = run_all(&shared, &regions, "fleet", slot).await;
    for (r, report) in regions.iter().zip(&reports) {
        let what = format!("{}/{}: {report:?}", r.account, r.ec2.region());
        assert_eq!(field(report, "account"), label(&r.account_id), "{what}");
        if r.account_id == DATA {
            assert_eq!(report.result(), RunResult::Failure, "{what}");
            let fatal = report.fatal.as_ref().expect("fatal");
            assert_eq!(fatal.code, "assume-role", "{what}");
            assert!(
                fatal.message.starts_with(&format!(
                    "cannot assume role {}: AccessDenied",
                    role_arn(DATA)
                )),
                "{what}"
            );
            assert_eq!((report.created, report.deleted), (0, 0), "{what}");
        } else {
            assert_eq!(report.result(), RunResult::Success, "{what}");
            assert_eq!((report.created, report.deleted), (1, 0), "{what}");
        }
    }
    assert!(rig.assumed(DATA) >= 2, "each region of data asked STS");
    // The refusal is the only failed request: nothing was sent for data without credentials.
    let failed: Vec<_> = rig
        .proxy
        .log()
        .into_iter()
        .filter(|h| h.outcome != "forwarded")
        .collect();
    assert!(
        failed.iter().all(|h| h.action == "AssumeRole"),
        "{failed:?}"
    );
    // Untouched: data's history is as seeded.
    for region in REGIONS {
        let found = common::slots_by_volume(&rig.raw(DATA, region).await, "fleet").await;
        let slots: Vec<_> = found.values().flatten().cloned().collect();
        assert_eq!(slots, [format_slot(slot - Duration::days(1))], "{region}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_role_alerts_once_per_region_with_no_false_recovery() {
    let rig = Rig::start(4);
    let now = Utc::now();
    let everywhere: [(&str, &[i64]); 3] = [(ACCOUNT, &[]), (PROD, &[]), (DATA, &[])];
    seed(&rig, "fleet", now, &everywhere).await;
    refuse_data(&rig);
    let shared = rig.shared(
        "completion-deadline = \"0s\"",
        &members(),
        &policy("fleet", ""),
    );
    let regions = daemon::aws_regions_paced(&shared, &pace()).await.unwrap();

    // The fire runs the six pairs together; data's fail (and wait for a person: a refused role is not retried
    // within the slot), the others succeed. Every report is in once all six pairs have a last run.
    let alerts = Arc::new(Recorder::default());
    run_loop(&shared, regions, alerts.clone(), || {
        daily(&shared, "fleet").is_some_and(|s| s.last_runs.len() == 6)
    })
    .await;
    assert!(
        daily(&shared, "fleet").is_some_and(|s| s.retry.is_none()),
        "a refused role waits for a person, not for a retry"
    );

    for account in [ACCOUNT, PROD] {
        for region in REGIONS {
            let found = common::slots_by_volume(&rig.raw(account, region).await, "fleet").await;
            assert_eq!(
                found.values().flatten().count(),
                1,
                "{account} {region}: {found:?}"
            );
        }
    }
    // One digest per region of data, naming the role; the other accounts' successes in the same regions are no
    // recovery of data's failure (a recovery would also have superseded the digest before it was sent).
    let sent = alerts.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let mut regions_alerted = Vec::new();
    for m in &sent {
        assert!(m.body.contains(&role_arn(DATA)), "{}", m.body);
        let json: serde_json::Value = serde_json::from_str(
            m.body
                .split("--- JSON ---\n")
                .nth(1)
                .expect("the report as JSON"),
        )
        .unwrap();
        assert_eq!(json["account"], "data", "{}", m.body);
        assert_eq!(json["fatal"]["code"], "assume-role", "{}", m.body);
        regions_alerted.push(json["region"].as_str().unwrap().to_string());
    }
    regions_alerted.sort();
    assert_eq!(regions_alerted, [REGION, WEST]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_for_the_daemons_own_account_is_refused_at_start() {
    let rig = Rig::start(5);
    let entry = format!(
        "[[aws.account]]\nname = \"tooling\"\nrole-arn = \"{}\"\n",
        role_arn(ACCOUNT)
    );
    let shared = rig.shared("", &entry, &policy("fleet", ""));
    let err = match daemon::aws_regions_paced(&shared, &pace()).await {
        Ok(regions) => panic!("started with {:?}", pairs(&regions)),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("accounts.toml: "), "{err}");
    assert!(err.contains("`tooling`"), "{err}");
    assert!(err.contains(&role_arn(ACCOUNT)), "{err}");
    assert!(err.contains("aws.own-account = false"), "{err}");
    // Nothing was assumed: the own account is the one already served.
    assert_eq!(rig.assumed(ACCOUNT), 0);

    // With own-account = false the same entry is how the account is served.
    let shared = rig.shared(
        "",
        &format!("own-account = false\n{entry}"),
        &policy("fleet", ""),
    );
    let regions = daemon::aws_regions_paced(&shared, &pace()).await.unwrap();
    let want: Vec<_> = REGIONS
        .iter()
        .map(|r| {
            (
                ACCOUNT.to_string(),
                "tooling".to_string(),
                r.to_string(),
                false,
            )
        })
        .collect();
    assert_eq!(pairs(&regions), want);
}
