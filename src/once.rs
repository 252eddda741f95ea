//! `snapwarden once`: the lines it prints for one region's run — the run's counts, its problems and, for a dry
//! run, what would be created, copied and deleted — and, for that, the dry run's backends ([`DryRegion`]: the region
//! and each copy destination, every one recording instead of acting). Pure text from the run's outcome; `main`
//! resolves the slot, takes the host lock, runs the worker and picks the exit code.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::ec2::{DryRun, DryRunLog, Ec2};
use crate::retention::Action;
use crate::schedule::format_slot;
use crate::worker::{Destinations, Outcome, Region};

/// A dry run's backends for one region's run: its own and its copy destinations', all wrapped in `DryRun`. A copy
/// is a call to the destination, so it lands in that destination's log: [`DryRegion::logs`] gathers them all.
pub struct DryRegion {
    pub ec2: Arc<DryRun>,
    /// For `RunSpec::destinations`: the region's destinations, pretending too.
    pub destinations: Destinations,
    dests: Vec<Arc<DryRun>>,
}

impl DryRegion {
    pub fn new(region: &Region) -> Self {
        let dests = Mutex::new(Vec::new());
        let destinations = region.copies.map(|e| {
            let d = Arc::new(DryRun::new(e));
            dests.lock().expect("dry-run destinations").push(d.clone());
            d as Arc<dyn Ec2>
        });
        DryRegion {
            ec2: Arc::new(DryRun::new(region.ec2.clone())),
            destinations,
            dests: dests.into_inner().expect("dry-run destinations"),
        }
    }

    /// What the run would have done, so far.
    pub fn logs(&self) -> DryLogs {
        DryLogs {
            region: self.ec2.log(),
            destinations: self
                .dests
                .iter()
                .map(|d| (d.region().to_string(), d.log()))
                .collect(),
        }
    }
}

/// A dry run's logs: the region's, and each copy destination's with its region.
pub struct DryLogs {
    pub region: DryRunLog,
    pub destinations: Vec<(String, DryRunLog)>,
}

/// One region's summary line, a line per problem and, with `dry` (a dry run's logs), a line per snapshot it would
/// create, per copy it would make (source snapshot → destination region) and per deletion of its plan.
pub fn region_lines(outcome: &Outcome, dry: Option<&DryLogs>) -> String {
    let rep = &outcome.report;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{} {}/{} slot {}: {} — {} targeted, {} created, {} already present, {} failed, {} deleted, {} kept, {} kept (AMI)",
        rep.region, rep.policy, rep.schedule_label(), format_slot(rep.slot), rep.result().as_str(), rep.targeted_volumes, rep.created,
        rep.already_done, rep.failed_volumes(), rep.deleted, rep.kept, rep.kept_in_use
    );
    for pr in rep.fatal.iter().chain(&rep.problems) {
        let _ = writeln!(
            out,
            "  problem: {} {}: {} {}",
            pr.operation, pr.resource, pr.code, pr.message
        );
    }
    if let Some(logs) = dry {
        for c in &logs.region.created {
            let _ = writeln!(
                out,
                "  would create: snapshot of {} ({})",
                c.volume_id, c.description
            );
        }
        for (region, log) in &logs.destinations {
            for c in &log.copied {
                let _ = writeln!(
                    out,
                    "  would copy: {} -> {region} ({})",
                    c.source_snapshot_id, c.description
                );
            }
        }
        for dec in outcome.plan.iter().filter(|d| d.action == Action::Delete) {
            let why: Vec<String> = dec.reasons.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  would delete: {} of {} slot {} ({})",
                dec.snapshot_id,
                dec.volume_id,
                format_slot(dec.slot),
                why.join("; ")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
    use crate::metrics::Metrics;
    use crate::retention::SnapState;
    use crate::worker;

    #[tokio::test]
    async fn a_dry_run_lists_the_copies_its_destinations_would_be_sent_and_sends_none() {
        let config = crate::config::from_toml_str(
            std::path::Path::new("once.toml"),
            r#"
[aws]
regions = ["us-east-1"]
[[policy]]
name = "p"
target = { resource = "volume", tags = { Backup = "yes" } }
[[policy.schedule]]
name = "nightly"
cron = "0 3 * * *"
keep = { last = 7 }
[[policy.schedule.copy]]
region = "eu-west-1"
keep = { last = 7 }
"#,
            &[],
        )
        .unwrap();
        let policy = &config.policies[0];
        let (src, dest) = (
            Arc::new(FakeEc2::new("us-east-1")),
            Arc::new(FakeEc2::new("eu-west-1")),
        );
        FakeEc2::link_regions(&[src.clone(), dest.clone()]);
        let slot = crate::schedule::parse_slot("2026-01-10T03:00:00Z").unwrap();
        src.set_clock(slot);
        let vol = src.add_volume(&[("Backup", "yes")]);
        let yesterday = src.seed_snapshot(
            &vol,
            SnapState::Completed,
            FAKE_ACCOUNT,
            &[
                ("snapwarden:managed", "true"),
                ("snapwarden:policy", "p"),
                ("snapwarden:schedule", "nightly"),
                ("snapwarden:slot", "2026-01-09T03:00:00Z"),
            ],
        );
        let region = Region {
            ec2: src.clone(),
            account_id: FAKE_ACCOUNT.into(),
            account: FAKE_ACCOUNT.into(),
            own: true,
            ssm: None,
            copies: Arc::new(Destinations::new(20, [dest.clone() as Arc<dyn Ec2>])),
        };
        let dry = DryRegion::new(&region);
        let spec = region.spec(policy, slot).destinations(&dry.destinations);
        let outcome = worker::run(&*dry.ec2, &spec, &Metrics::new(), || slot).await;
        let lines = region_lines(&outcome, Some(&dry.logs()));
        assert!(
            lines.contains(&format!(
                "  would copy: {yesterday} -> eu-west-1 (snapwarden "
            )),
            "{lines}"
        );
        assert_eq!(lines.matches("would copy:").count(), 1, "{lines}");
        assert!(lines.contains("  would create: snapshot of "), "{lines}");
        let copies = crate::ec2::all_snapshots(&*dest, &[]).await.unwrap();
        assert!(copies.is_empty(), "nothing copied: {copies:?}");
    }
}
