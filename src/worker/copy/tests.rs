//! The copy phase over linked in-memory regions (`FakeEc2::link_regions`): what a run copies, with which tags,
//! that a rerun copies nothing, and what the source keeps for a copy still to make.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::Destinations;
use crate::config::Policy;
use crate::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use crate::ec2::{self, Ec2, Snapshot};
use crate::metrics::Metrics;
use crate::schedule::format_slot;
use crate::worker::{self, Outcome, RunSpec};

const SOURCE: &str = "us-east-1";
const DR: &str = "eu-west-1";

fn slot() -> DateTime<Utc> {
    "2026-03-02T04:30:00Z".parse().unwrap()
}

fn policy(copy: &str) -> Policy {
    let toml = format!(
        r#"
[aws]
regions = ["{SOURCE}"]

[[policy]]
name = "prod"
target = {{ resource = "instance", tags = {{ Backup = "true" }} }}

[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = {{ last = 7 }}
{copy}
"#
    );
    let config = crate::config::from_toml_str(std::path::Path::new("copy.toml"), &toml, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    config.policies[0].clone()
}

struct Rig {
    source: Arc<FakeEc2>,
    dr: Arc<FakeEc2>,
    destinations: Destinations,
    metrics: Metrics,
}

impl Rig {
    fn new(concurrency: usize) -> Self {
        let (source, dr) = (Arc::new(FakeEc2::new(SOURCE)), Arc::new(FakeEc2::new(DR)));
        FakeEc2::link_regions(&[source.clone(), dr.clone()]);
        let destinations = Destinations::new(concurrency, [dr.clone() as Arc<dyn Ec2>]);
        Rig {
            source,
            dr,
            destinations,
            metrics: Metrics::new(),
        }
    }

    async fn run(&self, policy: &Policy, at: DateTime<Utc>) -> Outcome {
        let spec = RunSpec::new(policy, at, FAKE_ACCOUNT)
            .destinations(&self.destinations)
            .explain(true);
        worker::run(self.source.as_ref(), &spec, &self.metrics, || at).await
    }
}

fn tag<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.tags.get(key).map(String::as_str)
}

#[tokio::test]
async fn a_completed_snapshot_is_copied_once_with_every_tag() {
    let rig = Rig::new(20);
    let policy = policy(&format!(
        "[[policy.schedule.copy]]\nregion = \"{DR}\"\nkeep = {{ last = 3 }}\n"
    ));
    let (_, volumes) = rig
        .source
        .add_instance(&[("Backup", "true")], &[("/dev/xvda", "gp3")]);
    rig.source.set_clock(slot());
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
    assert_eq!(tag(c, ec2::TAG_SOURCE_VOLUME), Some(volumes[0].as_str()));

    rig.dr.complete_all();
    let third = rig.run(&policy, slot()).await;
    assert_eq!(third.report.copies.created, 0);
    assert_eq!(rig.dr.snapshots().len(), 1, "a rerun copies nothing");
    let next = slot() + Duration::days(1);
    rig.source.set_clock(next);
    rig.run(&policy, next).await;
    rig.source.complete_all();
    let fourth = rig.run(&policy, next).await;
    assert_eq!(fourth.report.copies.created, 1);
    assert!(
        fourth.report.problems.is_empty(),
        "{:?}",
        fourth.report.problems
    );
}
