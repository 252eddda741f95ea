//! How the copy phase polls while a backlog waits for places under the destination's gate: copies are sent into
//! freed places soon after the copies before them complete, not up to the longest poll interval later.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::Destinations;
use crate::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use crate::ec2::hooked::{Answer, Call, Hooked, Step};
use crate::ec2::{self, Ec2};
use crate::metrics::Metrics;
use crate::retention::SnapState;
use crate::schedule::format_slot;
use crate::worker::{self, Completion, RunSpec};

fn slot() -> DateTime<Utc> {
    "2026-03-02T04:30:00Z".parse().unwrap()
}

/// Each copy is pending this long after CopySnapshot answered, then completed.
const COPY: Duration = Duration::from_secs(45);

/// When each CopySnapshot was answered, and the copy it made.
type Sent = Arc<Mutex<Vec<(Instant, Arc<str>)>>>;

/// A destination whose copies complete [`COPY`] after they were made (as the next call reaching it sees), noting
/// when each CopySnapshot was answered.
fn timed_destination(dr: Arc<FakeEc2>, sent: Sent) -> Hooked {
    let fake = dr.clone();
    let made = sent.clone();
    Hooked::new(dr)
        .before(move |_| {
            for (at, id) in made.lock().unwrap().iter() {
                if at.elapsed() >= COPY {
                    fake.set_snapshot_state(id, SnapState::Completed);
                }
            }
            Step::Go
        })
        .after(move |call, answer| {
            if let (Call::CopySnapshot(_), Answer::Created(Ok(copy))) = (call, answer) {
                sent.lock()
                    .unwrap()
                    .push((Instant::now(), Arc::clone(&copy.id)));
            }
            Step::Go
        })
}

#[tokio::test(start_paused = true)]
async fn a_backlog_is_sent_into_freed_places_within_a_fraction_of_a_copys_duration() {
    let source = Arc::new(FakeEc2::new("us-east-1"));
    let dr = Arc::new(FakeEc2::new("eu-west-1"));
    FakeEc2::link_regions(&[source.clone(), dr.clone()]);
    let at = format_slot(slot());
    // Four volumes, each with its completed snapshot of the slot: the run creates nothing and copies four.
    for _ in 0..4 {
        let (_, volumes) = source.add_instance(&[("Backup", "true")], &[("/dev/xvda", "gp3")]);
        let tags = [
            (ec2::TAG_MANAGED, "true"),
            (ec2::TAG_POLICY, "prod"),
            (ec2::TAG_SCHEDULE, "daily"),
            (ec2::TAG_SLOT, at.as_str()),
        ];
        source.seed_snapshot(&volumes[0], SnapState::Completed, FAKE_ACCOUNT, &tags);
    }
    let sent: Sent = Arc::default();
    let destination: Arc<dyn Ec2> = Arc::new(timed_destination(dr.clone(), sent.clone()));
    // Two places: the second pair waits for the first.
    let destinations = Destinations::new(2, [destination]);
    let toml = r#"
[aws]
regions = ["us-east-1"]

[[policy]]
name = "prod"
target = { resource = "instance", tags = { Backup = "true" } }

[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { last = 7 }

[[policy.schedule.copy]]
region = "eu-west-1"
keep = { last = 3 }
"#;
    let config = crate::config::from_toml_str(std::path::Path::new("copy.toml"), toml, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let spec = RunSpec::new(&config.policies[0], slot(), FAKE_ACCOUNT)
        .destinations(&destinations)
        .completion(Completion::within(Duration::from_secs(3600)));
    let out = worker::run(source.as_ref(), &spec, &Metrics::new(), slot).await;

    assert_eq!(out.report.copies.created, 4, "{:?}", out.report);
    assert_eq!(out.report.copies.pending, 0, "{:?}", out.report);
    let sent = sent.lock().unwrap();
    let first = sent[0].0;
    let second_pair: Vec<f64> = sent[2..]
        .iter()
        .map(|(at, _)| (*at - first).as_secs_f64())
        .collect();
    // The first pair completes at 45 s. Polling 2 s, then 4, 8, 16, 30 s saw it at 60 s: a third of a copy's
    // duration lost per batch of a backlog.
    assert!(
        second_pair.iter().all(|&t| t > 45.0 && t <= 45.0 * 1.1),
        "the second pair goes out within 10% of a copy's duration after the first completes, at {second_pair:?} s"
    );
}
