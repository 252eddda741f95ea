//! `snapwarden once`: which (account, region) pairs a run covers ([`select`]: `--account` and the policy's
//! `accounts`), the lines it prints for one pair's run — the run's counts, its problems and, for a dry run, what
//! would be created, copied and deleted — and, for that, the dry run's backends ([`DryRegion`]: the region and
//! each copy destination, every one recording instead of acting). Pure text from the run's outcome; `main`
//! resolves the slot, takes the host lock, runs the worker and picks the exit code.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::config::{Policy, OWN};
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

/// The pairs `once` runs `policy` in: those of the accounts named by `--account` (`accounts`; empty: every
/// account served), of which the policy serves. An account is named by its label (`[[aws.account]]`'s name, the
/// own account's id) or, for the daemon's own account, `own`, as in a policy's `accounts`. Errors, for the
/// command line: a name no served account has, listing those served; or no pair left to run.
pub fn select<'a>(
    regions: &'a [Arc<Region>],
    policy: &Policy,
    accounts: &[String],
) -> Result<Vec<&'a Arc<Region>>, String> {
    let named = |r: &Region, name: &str| r.account == name || (r.own && name == OWN);
    if let Some(unknown) = accounts
        .iter()
        .find(|&name| !regions.iter().any(|r| named(r, name)))
    {
        let mut served: Vec<String> = Vec::new();
        for r in regions {
            let label = if r.own {
                format!("{} ({OWN})", r.account)
            } else {
                r.account.clone()
            };
            if !served.contains(&label) {
                served.push(label);
            }
        }
        return Err(format!(
            "--account `{unknown}`: no account served by this config is called that; accounts served: {}",
            served.join(", ")
        ));
    }
    let chosen: Vec<&Arc<Region>> = regions
        .iter()
        .filter(|r| accounts.is_empty() || accounts.iter().any(|name| named(r, name)))
        .collect();
    let served: Vec<&Arc<Region>> = chosen
        .iter()
        .copied()
        .filter(|r| policy.serves(&r.account, r.own))
        .collect();
    if served.is_empty() {
        let mut names: Vec<&str> = chosen.iter().map(|r| r.account.as_str()).collect();
        names.dedup();
        return Err(format!(
            "policy `{}` serves none of the accounts {} (its accounts: {}); nothing to run",
            policy.name,
            names.join(", "),
            policy.accounts.as_deref().unwrap_or_default().join(", ")
        ));
    }
    Ok(served)
}

/// One (account, region) pair's summary line, a line per problem and, with `dry` (a dry run's logs), a line per snapshot it would
/// create, per copy it would make (source snapshot → destination region) and per deletion of its plan.
pub fn region_lines(outcome: &Outcome, dry: Option<&DryLogs>) -> String {
    let rep = &outcome.report;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{} {}/{} slot {}: {} — {} targeted, {} created, {} already present, {} failed, {} deleted, {} kept, {} kept (AMI)",
        rep.scope(), rep.policy, rep.schedule_label(), format_slot(rep.slot), rep.result().as_str(), rep.targeted_volumes, rep.created,
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

    fn pair(account: &str, own: bool, region: &str) -> Arc<Region> {
        Arc::new(Region {
            ec2: Arc::new(FakeEc2::new(region)),
            account_id: if own { FAKE_ACCOUNT } else { "222222222222" }.into(),
            account: account.into(),
            own,
            ssm: None,
            copies: Arc::new(Destinations::new(20, [])),
        })
    }

    fn scopes(pairs: &[&Arc<Region>]) -> Vec<String> {
        pairs
            .iter()
            .map(|r| format!("{}/{}", r.account, r.ec2.region()))
            .collect()
    }

    #[test]
    fn account_picks_the_pairs_the_policy_serves_and_an_unknown_name_lists_the_served_ones() {
        let config = crate::config::from_toml_str(
            std::path::Path::new("once.toml"),
            r#"
[[policy]]
name = "p"
target = { resource = "volume", tags = { Backup = "yes" } }
schedule = [{ name = "nightly", cron = "0 3 * * *", keep = { last = 7 } }]
"#,
            &[],
        )
        .unwrap();
        let mut policy = config.policies[0].clone();
        let regions = [
            pair(FAKE_ACCOUNT, true, "us-east-1"),
            pair("prod", false, "us-east-1"),
            pair("prod", false, "eu-west-1"),
            pair("staging", false, "us-east-1"),
        ];
        let all = select(&regions, &policy, &[]).unwrap();
        assert_eq!(all.len(), 4);
        let prod = select(&regions, &policy, &["prod".into()]).unwrap();
        assert_eq!(scopes(&prod), ["prod/us-east-1", "prod/eu-west-1"]);
        let own = select(&regions, &policy, &["own".into(), "staging".into()]).unwrap();
        assert_eq!(
            scopes(&own),
            [
                format!("{FAKE_ACCOUNT}/us-east-1"),
                "staging/us-east-1".into()
            ]
        );
        let by_id = select(&regions, &policy, &[FAKE_ACCOUNT.into()]).unwrap();
        assert_eq!(scopes(&by_id), [format!("{FAKE_ACCOUNT}/us-east-1")]);

        let err = select(&regions, &policy, &["prod".into(), "dev".into()])
            .err()
            .expect("an unknown name is refused");
        assert_eq!(
            err,
            format!(
                "--account `dev`: no account served by this config is called that; accounts served: \
                 {FAKE_ACCOUNT} (own), prod, staging"
            )
        );

        // A policy restricted to some accounts runs in those only, and says so when none is left.
        policy.accounts = Some(vec!["staging".into()]);
        let served = select(&regions, &policy, &[]).unwrap();
        assert_eq!(scopes(&served), ["staging/us-east-1"]);
        let err = select(&regions, &policy, &["prod".into()])
            .err()
            .expect("nothing left to run is refused");
        assert_eq!(
            err,
            "policy `p` serves none of the accounts prod (its accounts: staging); nothing to run"
        );
    }
}
