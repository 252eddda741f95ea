//! Organizations discovery (`[aws.organization]`, issue 16) against moto's Organizations, set up through the
//! aws-sdk-organizations client as a management account would: CreateOrganization, OUs (one nested in another),
//! CreateAccount, MoveAccount, CloseAccount (which moto marks SUSPENDED) and RemoveAccountFromOrganization. Covered:
//! the daemon's pairs at start are its own account's and those of the organisation's accounts that are included
//! (an account two OUs down is, one in an excluded OU is not); an account added to the organisation is served
//! at the next refresh, with the organisation's role in it (calls act in that account); suspended and removed
//! accounts stop being served; a listing that fails (the fault proxy refuses ListRoots) keeps the accounts served
//! as they were, counted as a failure; and end to end, the scheduler loop fires in an account that joined while
//! it ran, making its snapshot in that account.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_organizations::Client as Orgs;
use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::{Moto, ACCOUNT};
use snapwarden::config;
use snapwarden::daemon::{self, Fleet, Shared};
use snapwarden::ec2::assume::{assumed_config, Role};
use snapwarden::ec2::pace::PaceConfig;
use snapwarden::notify::Notifier;
use snapwarden::worker::Region;
use tokio_util::sync::CancellationToken;

const ROLE_NAME: &str = "snapwarden-member";

/// An organisation in moto, managed by the test's own account ([`ACCOUNT`], the daemon's too).
struct Org {
    client: Orgs,
    root: String,
}

impl Org {
    async fn create(endpoint: &str) -> Org {
        let client = Orgs::new(&common::sdk_config(endpoint).await);
        client
            .create_organization()
            .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
            .send()
            .await
            .expect("CreateOrganization");
        let roots = client.list_roots().send().await.expect("ListRoots");
        let root = roots.roots()[0].id().unwrap().to_string();
        Org { client, root }
    }

    async fn unit(&self, name: &str, parent: &str) -> String {
        self.client
            .create_organizational_unit()
            .parent_id(parent)
            .name(name)
            .send()
            .await
            .expect("CreateOrganizationalUnit")
            .organizational_unit()
            .unwrap()
            .id()
            .unwrap()
            .to_string()
    }

    /// A new account, moved under `parent` unless that is the root; its id.
    async fn account(&self, name: &str, parent: &str) -> String {
        let created = self
            .client
            .create_account()
            .account_name(name)
            .email(format!("{name}@example.com"))
            .send()
            .await
            .expect("CreateAccount");
        let id = created
            .create_account_status()
            .and_then(|s| s.account_id())
            .expect("moto creates the account at once")
            .to_string();
        if parent != self.root {
            self.client
                .move_account()
                .account_id(&id)
                .source_parent_id(&self.root)
                .destination_parent_id(parent)
                .send()
                .await
                .expect("MoveAccount");
        }
        id
    }
}

fn quick_pace() -> PaceConfig {
    PaceConfig {
        budget_fraction: 1.0,
        max_attempts: 2,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(50),
        seed: Some(16),
        ..PaceConfig::default()
    }
}

/// The daemon's config against `endpoint`: `[aws]` plus `aws` lines, `[aws.organization]` plus `organization`
/// lines, and `policy`.
fn shared(endpoint: &str, aws: &str, organization: &str, policy: &str) -> Shared {
    let text = format!(
        "[aws]\nregions = [\"{}\"]\nendpoint-url = \"{endpoint}\"\n{aws}\n\n[aws.organization]\n\
         role-name = \"{ROLE_NAME}\"\n{organization}\n\n{policy}",
        common::REGION
    );
    let config = config::from_toml_str(std::path::Path::new("organization.toml"), &text, &[])
        .expect("valid test config");
    Shared::new(config)
}

/// `account:account_id` of each pair, own account first then by label.
fn served(regions: &[Arc<Region>]) -> Vec<String> {
    let mut out: Vec<String> = regions
        .iter()
        .map(|r| {
            assert_eq!(
                r.account, r.account_id,
                "a discovered account is named by its id"
            );
            format!("{}{}", if r.own { "own:" } else { "" }, r.account)
        })
        .collect();
    out.sort();
    out
}

/// The pair of account `id` (served in one region).
fn pair(fleet: &Fleet, id: &str) -> Arc<Region> {
    fleet
        .regions()
        .iter()
        .find(|r| r.account == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} served"))
}

fn metric(shared: &Shared, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric(&shared.metrics.render(chrono::Utc::now()), name, labels).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_joining_or_leaving_the_organisation_are_served_from_the_next_refresh() {
    let moto = Moto::start();
    let org = Org::create(&moto.endpoint).await;
    let apps = org.unit("apps", &org.root).await;
    let prod = org.unit("prod", &apps).await;
    let sandbox = org.unit("sandbox", &org.root).await;
    let deep = org.account("deep", &prod).await;
    let top = org.account("top", &org.root).await;
    let excluded = org.account("play", &sandbox).await;

    let shared = shared(
        &moto.endpoint,
        "",
        &format!("exclude = [\"{sandbox}\"]"),
        &common::instance_policy("p", "org", "s", "0 4 * * *", "last = 3"),
    );
    let mut fleet = daemon::aws_fleet(&shared, &quick_pace())
        .await
        .expect("start");
    let sorted = |ids: &[&str]| {
        let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    // The management account is the daemon's own, served as such; the account in the excluded OU is not.
    let mut want = sorted(&[&format!("own:{ACCOUNT}"), &deep, &top]);
    assert_eq!(served(&fleet.regions()), want);
    assert!(!served(&fleet.regions()).contains(&excluded));

    // The organisation's role in the account, assumed with the daemon's own credentials: calls act there.
    assert_eq!(pair(&fleet, &deep).ec2.account_id().await.unwrap(), deep);
    assert_eq!(pair(&fleet, &deep).ec2.region(), common::REGION);
    assert!(!pair(&fleet, &deep).own);

    // Joins: not served until the next refresh, then served; the scheduler's watch sees the change.
    let watch = fleet.watch();
    let joined = org.account("joined", &apps).await;
    assert_eq!(served(&fleet.regions()), want);
    assert!(fleet.refresh().await);
    want = sorted(&[&format!("own:{ACCOUNT}"), &deep, &top, &joined]);
    assert_eq!(served(&fleet.regions()), want);
    assert!(watch.has_changed().unwrap(), "published");
    assert_eq!(
        pair(&fleet, &joined).ec2.account_id().await.unwrap(),
        joined
    );
    // The pairs of accounts that stay are the same backends (their pacing and copy gates carry on).
    let before = pair(&fleet, &deep);
    assert!(fleet.refresh().await);
    assert!(Arc::ptr_eq(&before, &pair(&fleet, &deep)));

    // Suspended (CloseAccount) and removed accounts stop being served.
    org.client
        .close_account()
        .account_id(&deep)
        .send()
        .await
        .expect("CloseAccount");
    org.client
        .remove_account_from_organization()
        .account_id(&top)
        .send()
        .await
        .expect("RemoveAccountFromOrganization");
    assert!(fleet.refresh().await);
    assert_eq!(
        served(&fleet.regions()),
        sorted(&[&format!("own:{ACCOUNT}"), &joined])
    );

    assert_eq!(
        metric(
            &shared,
            "snapwarden_organization_refreshes_total",
            &[("outcome", "success")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &shared,
            "snapwarden_organization_refreshes_total",
            &[("outcome", "failure")]
        ),
        0.0
    );
    assert_eq!(
        metric(&shared, "snapwarden_organization_accounts", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_fails_keeps_the_accounts_served() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port, 16);
    let org = Org::create(&moto.endpoint).await;
    let first = org.account("first", &org.root).await;
    // The own account left out: the management account is then served through the role like any other.
    let shared = shared(
        &proxy.endpoint,
        "own-account = false",
        "",
        &common::instance_policy("p", "org", "s", "0 4 * * *", "last = 3"),
    );
    let mut fleet = daemon::aws_fleet(&shared, &quick_pace())
        .await
        .expect("start");
    let ids = |fleet: &Fleet| -> BTreeSet<String> {
        fleet.regions().iter().map(|r| r.account.clone()).collect()
    };
    let start = ids(&fleet);
    assert_eq!(start, BTreeSet::from([ACCOUNT.to_string(), first.clone()]));

    // A refused listing (a missing permission, or the daemon outside the management account) changes nothing,
    // even though the organisation has changed meanwhile: the listing is not half-used.
    proxy.set_rules(vec![Rule::new(
        &["ListRoots"],
        When::Always,
        Fault::Error("AccessDeniedException"),
    )]);
    let second = org.account("second", &org.root).await;
    org.client
        .remove_account_from_organization()
        .account_id(&first)
        .send()
        .await
        .expect("RemoveAccountFromOrganization");
    assert!(!fleet.refresh().await);
    assert_eq!(ids(&fleet), start);
    assert_eq!(
        metric(
            &shared,
            "snapwarden_organization_refreshes_total",
            &[("outcome", "failure")]
        ),
        1.0
    );
    assert_eq!(
        metric(&shared, "snapwarden_organization_accounts", &[]),
        2.0
    );

    proxy.set_rules(Vec::new());
    assert!(fleet.refresh().await);
    assert_eq!(
        ids(&fleet),
        BTreeSet::from([ACCOUNT.to_string(), second.clone()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_fires_in_an_account_that_joined_while_it_ran() {
    let moto = Moto::start();
    let org = Org::create(&moto.endpoint).await;
    let shared = shared(
        &moto.endpoint,
        "",
        "",
        &common::instance_policy("p", "org", "s", "*/2 * * * * *", "last = 3"),
    );
    let mut fleet = daemon::aws_fleet(&shared, &quick_pace())
        .await
        .expect("start");
    assert_eq!(fleet.regions().len(), 1, "the own account only");
    let stop = CancellationToken::new();
    let notifier = Notifier::spawn(None, Duration::from_secs(3600), shared.metrics.clone()).0;
    let task = tokio::spawn(daemon::schedule_loop(
        shared.clone(),
        fleet.watch(),
        notifier,
        false,
        stop.clone(),
    ));

    // A new account with an instance to back up, made with the organisation's role in it.
    let joined = org.account("joined", &org.root).await;
    let member = assumed_config(
        &common::sdk_config(&moto.endpoint).await,
        &Role {
            arn: format!("arn:aws:iam::{joined}:role/{ROLE_NAME}"),
            external_id: None,
            session_name: "test".into(),
        },
    )
    .await;
    let ec2 = aws_sdk_ec2::Client::new(&member);
    let (_, volumes) = common::launch_instance(&ec2, &[("Backup", "org")], &["/dev/sdf"]).await;
    assert!(fleet.refresh().await);

    let deadline = Instant::now() + Duration::from_secs(60);
    let snapshots = loop {
        let found = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(common::filter("tag:snapwarden:policy", &["p"]))
            .send()
            .await
            .expect("DescribeSnapshots in the new account");
        let snapshots = found.snapshots().to_vec();
        if !snapshots.is_empty() || Instant::now() > deadline {
            break snapshots;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.cancel();
    assert!(task.await.unwrap(), "drained");
    assert!(!snapshots.is_empty(), "a run made a snapshot in {joined}");
    assert!(snapshots
        .iter()
        .all(|s| s.volume_id() == Some(volumes[0].as_str()) && s.owner_id() == Some(&*joined)));
}
