//! Member-account credentials (`ec2::assume`, issue 16) against moto behind the fault proxy, which counts the
//! AssumeRole calls and refuses them on demand. Covered: a configuration assumed into account 222222222222 creates
//! a volume and a snapshot there that the daemon's own credentials (account 123456789012) do not see, and answers
//! 222222222222 to GetCallerIdentity; credentials are assumed once, reused, and assumed again before they expire
//! with no failed call (the SDK's clock is driven by hand: moto never expires credentials); a refused AssumeRole
//! gives, on the EC2 call that needed it, the error that names the role and the trust-policy fix.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_smithy_async::time::TimeSource;
use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::{Moto, ACCOUNT};
use snapwarden::ec2::assume::{assumed_config, Role};
use snapwarden::ec2::sdk::SdkEc2;
use snapwarden::ec2::{CreateSnapshot, Ec2};
use snapwarden::error::Error;

const MEMBER: &str = "222222222222";
const ROLE: &str = "arn:aws:iam::222222222222:role/snapwarden-member";

fn role(external_id: Option<&str>) -> Role {
    Role {
        arn: ROLE.into(),
        external_id: external_id.map(str::to_string),
        session_name: "snapwarden".into(),
    }
}

/// The SDK's clock, moved by the test.
#[derive(Debug, Clone)]
struct Clock(Arc<Mutex<SystemTime>>);

impl Clock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl TimeSource for Clock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

async fn snapshot_ids(ec2: &SdkEc2) -> Vec<String> {
    snapwarden::ec2::all_snapshots(ec2, &[])
        .await
        .expect("describe")
        .iter()
        .map(|s| s.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assumed_role_works_in_the_member_account_only() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port, 1);
    let base = common::sdk_config(&proxy.endpoint).await;
    let member = assumed_config(&base, &role(Some("from-the-config"))).await;

    let ec2 = SdkEc2::new(&member);
    assert_eq!(ec2.account_id().await.unwrap(), MEMBER);
    let volume = common::moto_volume(&aws_sdk_ec2::Client::new(&member), &[("app", "db")]).await;
    let snapshot = ec2
        .create_snapshot(&CreateSnapshot {
            volume_id: volume.clone(),
            description: "member".into(),
            tags: [("app".to_string(), "db".to_string())].into(),
        })
        .await
        .expect("CreateSnapshot as the member role");
    assert_eq!(&*snapshot.owner_id, MEMBER);
    assert!(snapshot_ids(&ec2).await.contains(&snapshot.id.to_string()));

    let own = SdkEc2::new(&base);
    assert_eq!(own.account_id().await.unwrap(), ACCOUNT);
    assert!(!snapshot_ids(&own).await.contains(&snapshot.id.to_string()));
    let own_volumes = own.describe_volumes(&[]).await.unwrap();
    assert!(
        own_volumes.iter().all(|v| v.id != volume),
        "{own_volumes:?}"
    );

    // The request carried the role, its external id and the one-hour session; then reused for every call.
    let assumes: Vec<_> = proxy
        .log()
        .into_iter()
        .filter(|h| h.action == "AssumeRole")
        .collect();
    assert_eq!(assumes.len(), 1, "{assumes:?}");
    let sent = &assumes[0];
    assert_eq!(
        sent.param("RoleArn").as_deref(),
        Some("arn%3Aaws%3Aiam%3A%3A222222222222%3Arole%2Fsnapwarden-member")
    );
    assert_eq!(sent.param("ExternalId").as_deref(), Some("from-the-config"));
    assert_eq!(sent.param("DurationSeconds").as_deref(), Some("3600"));
    assert_eq!(sent.param("RoleSessionName").as_deref(), Some("snapwarden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_assumed_again_before_they_expire() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port, 2);
    let clock = Clock(Arc::new(Mutex::new(SystemTime::now())));
    let base = common::sdk_config(&proxy.endpoint)
        .await
        .into_builder()
        .time_source(clock.clone())
        .build();
    let ec2 = SdkEc2::new(&assumed_config(&base, &role(None)).await);
    let assumed = || proxy.count("AssumeRole", "forwarded");

    assert_eq!(ec2.account_id().await.unwrap(), MEMBER);
    assert_eq!(assumed(), 1);
    // Half-way through the hour: the session is reused.
    clock.advance(Duration::from_secs(30 * 60));
    assert_eq!(ec2.account_id().await.unwrap(), MEMBER);
    assert_eq!(assumed(), 1);
    // Two minutes before the end (moto's Expiration is an hour after the AssumeRole): renewed first, and the call
    // made with the new session succeeds.
    clock.advance(Duration::from_secs(28 * 60));
    ec2.describe_volumes(&[])
        .await
        .expect("describe with the renewed session");
    assert_eq!(assumed(), 2, "{:?}", proxy.log());
    let log = proxy.log();
    assert!(
        log.iter().all(|h| h.outcome == "forwarded"),
        "no call failed: {log:?}"
    );
    let gets = log
        .iter()
        .filter(|h| h.action == "GetCallerIdentity")
        .count();
    assert_eq!(gets, 2, "each call made once, none retried: {log:?}");
    assert_eq!(
        log.iter().filter(|h| h.action == "DescribeVolumes").count(),
        1,
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_assume_role_names_the_role_and_the_fix() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port, 3);
    proxy.set_rules(vec![Rule::new(
        &["AssumeRole"],
        When::Always,
        Fault::Error("AccessDenied"),
    )]);
    let base = common::sdk_config(&proxy.endpoint).await;
    let ec2 = SdkEc2::new(&assumed_config(&base, &role(Some("x"))).await);

    let err = ec2.describe_volumes(&[]).await.expect_err("refused");
    assert_eq!(err.kind(), "assume-role", "{err:?}");
    assert_eq!(err.code(), "AccessDenied");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot assume role {ROLE}: AccessDenied")),
        "{text}"
    );
    assert!(
        text.contains("trust policy must allow sts:AssumeRole to the principal"),
        "{text}"
    );
    // moto's caller for the test keys is a user; on EC2 it is the role the instance profile gives.
    assert!(
        text.contains(&format!("arn:aws:sts::{ACCOUNT}:user/moto")),
        "{text}"
    );
    assert!(text.contains("sts:ExternalId"), "{text}");
    assert!(text.contains("(SCP)"), "{text}");
    assert!(matches!(err, Error::AssumeRole { .. }));
    assert_eq!(
        proxy.count("DescribeVolumes", "forwarded"),
        0,
        "nothing sent unsigned"
    );
}
