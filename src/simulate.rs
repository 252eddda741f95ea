//! `snapwarden simulate`: a config's schedules and retention run over simulated time on the in-memory EC2
//! backend, so an operator sees what a config costs before deploying it: how many snapshots each schedule holds
//! per volume over time (peak and at the end) and which slots survive. It drives the real worker and planner —
//! the same code path as the daemon — with the clock set to each fire time; only the scheduler's sleeping and
//! AWS itself are replaced. Snapshots complete before the next fire, as they do on a healthy account. A policy
//! with copy rules gets one more in-memory region per destination, linked to the source as EC2's regions are:
//! copies are made by the run's copy phase and complete before the next fire too, and each destination's kept
//! copies are reported beside the source's snapshots.
//!
//! Each policy is simulated in every (account, region) pair it serves ([`pairs`]: the own account — called `own`,
//! its id being unknown offline — and each `[[aws.account]]`, in their regions), each pair a fleet of its own, as
//! the daemon runs them. Accounts an `[aws.organization]` would discover are only known at run time: not simulated.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, Utc};
use serde::Serialize;

use crate::config::{Config, Policy, ResourceKind};
use crate::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use crate::ec2::{self, Ec2, Filter};
use crate::metrics::Metrics;
use crate::retention::{Action, Decision, Reason};
use crate::schedule::{self, format_slot, Cron};
use crate::ssm::batch::Polling;
use crate::ssm::fake::FakeAgent;
use crate::worker::copy::{self, copy_key};
use crate::worker::{self, Destinations, RunSpec};

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub from: DateTime<Utc>,
    pub days: u32,
    /// Volumes per policy in each (account, region) pair (all alike: every figure is per volume).
    pub volumes: usize,
    /// The value given to count tags, for schedules that take their keep count from a tag.
    pub count_tag_value: u32,
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSim {
    pub(crate) policy: String,
    pub schedule: String,
    /// Snapshots of one volume kept by this schedule: the most at any time (during a run this includes the new,
    /// still pending snapshot, so it is one above the rule) and the steady state at the end.
    pub peak: usize,
    pub end: usize,
    /// Count at the end of each calendar month (UTC) of the simulation.
    pub(crate) monthly: Vec<(String, usize)>,
    /// Slots of the first volume's snapshots listing this schedule at the end, newest first.
    pub surviving: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicySim {
    pub(crate) policy: String,
    /// The account's label (`own` for the daemon's own account) and the region simulated.
    pub account: String,
    pub region: String,
    pub(crate) fires: usize,
    pub(crate) created: usize,
    pub(crate) deleted: usize,
    /// Distinct snapshots of one volume (a snapshot serving several schedules counts once).
    pub(crate) peak_per_volume: usize,
    pub end_per_volume: usize,
    pub schedules: Vec<ScheduleSim>,
    /// One per copy destination of the policy's schedules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationSim>,
    /// Copies made and deleted, over every destination and volume.
    pub(crate) copied: usize,
    pub(crate) copies_deleted: usize,
}

/// What one copy destination keeps of one volume's copies: per schedule copied there, as for the source (`peak`
/// counts the new copy while it is pending), by the copy rule's keep.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationSim {
    pub region: String,
    /// Distinct copies of one volume (a copy serving several schedules counts once).
    pub(crate) peak_per_volume: usize,
    pub end_per_volume: usize,
    pub schedules: Vec<ScheduleSim>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub(crate) from: DateTime<Utc>,
    pub(crate) until: DateTime<Utc>,
    pub(crate) volumes: usize,
    /// One per policy and (account, region) pair it serves, in the config's order.
    pub policies: Vec<PolicySim>,
    /// The config has an `[aws.organization]`, whose accounts are not simulated.
    pub(crate) organization: bool,
}

/// The region simulated for an account served in the SDK's region (`aws.regions` empty).
const SDK_REGION: &str = "sim-1";

/// The (account label, own account, region) pairs the config serves, as the daemon builds them: the own account
/// (`own`) unless `aws.own-account = false`, then each `[[aws.account]]`.
pub(crate) fn pairs(config: &Config) -> Vec<(String, bool, String)> {
    let accounts = &config.aws.accounts;
    let own = accounts
        .own
        .then(|| (crate::config::OWN.to_string(), true, &config.aws.regions));
    let listed = accounts
        .listed
        .iter()
        .map(|a| (a.name.clone(), false, &a.regions));
    let mut out = Vec::new();
    for (account, own, regions) in own.into_iter().chain(listed) {
        if regions.is_empty() {
            out.push((account.clone(), own, SDK_REGION.to_string()));
        }
        for r in regions {
            out.push((account.clone(), own, r.clone()));
        }
    }
    out
}

/// Target tags that make the simulated fleet match the policy: `*` needs any value.
fn fleet_tags(policy: &Policy, count: u32) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> = policy
        .target
        .tags
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if v == "*" {
                    "sim".to_string()
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    tags.extend(
        policy
            .schedules
            .iter()
            .filter_map(|s| s.count_tag.clone())
            .map(|t| (t, count.to_string())),
    );
    tags
}

fn fleet(policy: &Policy, opts: &SimOptions, region: &str) -> (Arc<FakeEc2>, String) {
    let fake = Arc::new(FakeEc2::new(region));
    let owned = fleet_tags(policy, opts.count_tag_value);
    let tags: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let n = opts.volumes.max(1);
    let first = match policy.target.resource {
        ResourceKind::Instance => {
            let devices: Vec<String> = (0..n)
                .map(|i| format!("/dev/xvd{}", (b'a' + (i % 26) as u8) as char))
                .collect();
            let devs: Vec<(&str, &str)> = devices.iter().map(|d| (d.as_str(), "gp3")).collect();
            fake.add_instance(&tags, &devs).1.remove(0)
        }
        ResourceKind::Volume => {
            let ids: Vec<String> = (0..n).map(|_| fake.add_volume(&tags)).collect();
            ids[0].clone()
        }
    };
    (fake, first)
}

/// The in-memory regions a policy copies to, linked with the source `fake`, and their backends for runs.
fn destinations(
    policy: &Policy,
    fake: &Arc<FakeEc2>,
    concurrency: usize,
) -> (Vec<Arc<FakeEc2>>, Destinations) {
    let fakes: Vec<Arc<FakeEc2>> = worker::destination_regions(policy)
        .into_iter()
        .map(|r| Arc::new(FakeEc2::new(r)))
        .collect();
    let mut all = fakes.clone();
    all.push(fake.clone());
    FakeEc2::link_regions(&all);
    let backends = fakes.iter().map(|f| f.clone() as Arc<dyn Ec2>);
    let dests = Destinations::new(concurrency, backends);
    (fakes, dests)
}

/// The copies of `volume` in `dest`, any state: what the destination holds right now.
async fn copies_held(dest: &FakeEc2, volume: &str) -> Vec<ec2::Snapshot> {
    let filter = [Filter::tag(ec2::TAG_SOURCE_VOLUME, volume)];
    ec2::all_snapshots(dest, &filter).await.unwrap_or_default()
}

fn lists(s: &ec2::Snapshot, schedule: &str) -> bool {
    s.tags
        .get(ec2::TAG_SCHEDULE)
        .is_some_and(|v| v.split(',').any(|n| n.trim() == schedule))
}

fn schedule_sims(policy: &Policy, names: impl IntoIterator<Item = String>) -> Vec<ScheduleSim> {
    names
        .into_iter()
        .map(|schedule| ScheduleSim {
            policy: policy.name.clone(),
            schedule,
            peak: 0,
            end: 0,
            monthly: Vec::new(),
            surviving: Vec::new(),
        })
        .collect()
}

/// Adds the decisions kept on `volume` to `kept` by the schedules their reasons name; returns how many.
fn tally<'a>(
    decisions: impl IntoIterator<Item = &'a Decision>,
    volume: &str,
    kept: &mut BTreeMap<String, Vec<DateTime<Utc>>>,
) -> usize {
    let mut total = 0;
    for d in decisions
        .into_iter()
        .filter(|d| &*d.volume_id == volume && d.action == Action::Keep)
    {
        total += 1;
        let mut by: Vec<&str> = d.reasons.iter().filter_map(|r| r.schedule()).collect();
        by.sort_unstable();
        by.dedup();
        for name in by {
            if let Some(slots) = kept.get_mut(name) {
                slots.push(d.slot);
            }
        }
    }
    total
}

/// Schedule -> the slots its rules keep on one volume, newest first.
type Kept = BTreeMap<String, Vec<DateTime<Utc>>>;

/// What the rules keep on one volume, by schedule.
struct Census {
    /// Slots kept by each schedule's rules (a Monday snapshot listing daily and weekly counts for weekly only
    /// once daily lets it go), newest first.
    kept: BTreeMap<String, Vec<DateTime<Utc>>>,
    /// Distinct snapshots kept.
    total: usize,
    /// Per destination (by region): its copy rules' keep over the volume's copies there.
    copies: BTreeMap<String, (Kept, usize)>,
}

/// Planned afresh on the completed state: after a run's deletions this is exactly what the next run keeps. (Right
/// after a run the volume also holds the new snapshot's predecessor that was kept only because the new one was
/// still pending; the next run lets it go.)
async fn census(
    fake: &FakeEc2,
    dests: &Destinations,
    policy: &Policy,
    volume: &str,
    now: DateTime<Utc>,
) -> Census {
    let mut kept: BTreeMap<String, Vec<DateTime<Utc>>> = policy
        .schedules
        .iter()
        .map(|s| (s.name.clone(), Vec::new()))
        .collect();
    let Ok(mut survey) = worker::survey(fake, policy, FAKE_ACCOUNT, None).await else {
        return Census {
            kept,
            total: 0,
            copies: BTreeMap::new(),
        };
    };
    // As a run reads them: the destinations' copies, and what the source holds for them.
    copy::survey(
        Some(dests),
        policy,
        fake.region(),
        FAKE_ACCOUNT,
        &mut survey,
        now,
        |_, _| {},
    )
    .await;
    let plan = worker::plan_retention(
        policy,
        &survey,
        &Default::default(),
        policy.timezone,
        now,
        None,
    );
    let total = tally(&plan.decisions, volume, &mut kept);
    let mut copies = BTreeMap::new();
    let key = copy_key(volume);
    for d in &survey.copies {
        let snaps: Vec<_> = d.copies.iter().flatten().map(|c| c.snap.clone()).collect();
        let plan = copy::plan_retention(policy, d, &snaps, &survey, &Default::default(), now);
        let mut kept: BTreeMap<String, Vec<DateTime<Utc>>> = d
            .rules
            .iter()
            .map(|r| (r.name.to_string(), Vec::new()))
            .collect();
        let total = tally(&plan.decisions, &key, &mut kept);
        copies.insert(d.region.to_string(), (kept, total));
    }
    Census {
        kept,
        total,
        copies,
    }
}

/// Where a policy is simulated: the account's label and the region.
struct Pair<'a> {
    account: &'a str,
    region: &'a str,
}

async fn simulate_policy(
    policy: &Policy,
    opts: &SimOptions,
    until: DateTime<Utc>,
    copy_concurrency: usize,
    pair: Pair<'_>,
) -> PolicySim {
    let (fake, volume) = fleet(policy, opts, pair.region);
    let (dest_fakes, dests) = destinations(policy, &fake, copy_concurrency);
    // A healthy fleet: every VSS command and script succeeds at once, and the VSS document makes the snapshots.
    let agent = FakeAgent::new(fake.clone());
    let crons: Vec<&Cron> = policy.schedules.iter().map(|s| &s.cron).collect();
    let metrics = Metrics::new();
    let mut sim = PolicySim {
        policy: policy.name.clone(),
        account: pair.account.to_string(),
        region: pair.region.to_string(),
        fires: 0,
        created: 0,
        deleted: 0,
        peak_per_volume: 0,
        end_per_volume: 0,
        schedules: policy
            .schedules
            .iter()
            .map(|s| ScheduleSim {
                policy: policy.name.clone(),
                schedule: s.name.clone(),
                peak: 0,
                end: 0,
                monthly: Vec::new(),
                surviving: Vec::new(),
            })
            .collect(),
        destinations: dest_fakes
            .iter()
            .map(|d| DestinationSim {
                region: d.region().to_string(),
                peak_per_volume: 0,
                end_per_volume: 0,
                schedules: schedule_sims(
                    policy,
                    policy
                        .schedules
                        .iter()
                        .filter(|s| s.copies.iter().any(|c| c.region == d.region()))
                        .map(|s| s.name.clone()),
                ),
            })
            .collect(),
        copied: 0,
        copies_deleted: 0,
    };
    let mut cursor = opts.from - Duration::seconds(1);
    let mut month = (opts.from.year(), opts.from.month());
    while let Some((slot, idx)) = schedule::next_group(&crons, cursor, policy.timezone) {
        if slot > until {
            break;
        }
        if (slot.year(), slot.month()) != month {
            let label = format!("{:04}-{:02}", month.0, month.1);
            for s in all_schedules(&mut sim) {
                s.monthly.push((label.clone(), s.end));
            }
            month = (slot.year(), slot.month());
        }
        fake.set_clock(slot);
        for d in &dest_fakes {
            d.set_clock(slot);
        }
        // Simulated time: no completion polling (waiting would sleep in real time; the simulation completes
        // snapshots itself). The peaks come from the kept decisions: explained.
        let spec = RunSpec::new(policy, slot, FAKE_ACCOUNT)
            .firing(idx.iter().map(|&i| policy.schedules[i].name.clone()))
            .concurrency(8)
            .explain(true)
            .ssm(&agent, Polling::default())
            .destinations(&dests);
        let outcome = worker::run(&*fake as &dyn Ec2, &spec, &metrics, || slot).await;
        sim.fires += 1;
        sim.created += outcome.report.created;
        sim.deleted += outcome.report.deleted;
        sim.copied += outcome.report.copies.created;
        sim.copies_deleted += outcome.report.copies.deleted;
        // What each destination holds once the run is over, the new copy still pending.
        for (d, dsim) in dest_fakes.iter().zip(&mut sim.destinations) {
            let held = copies_held(d, &volume).await;
            dsim.peak_per_volume = dsim.peak_per_volume.max(held.len());
            for s in &mut dsim.schedules {
                let n = held.iter().filter(|c| lists(c, &s.schedule)).count();
                s.peak = s.peak.max(n);
                s.end = n;
            }
            d.complete_all();
        }
        fake.complete_all();
        // Peaks from the run's own plan: what existed while it ran, the new (pending) snapshot included.
        let mine: Vec<&Decision> = outcome
            .plan
            .iter()
            .filter(|d| *d.volume_id == *volume)
            .collect();
        sim.peak_per_volume = sim.peak_per_volume.max(mine.len());
        for s in &mut sim.schedules {
            let held = mine
                .iter()
                .filter(|d| {
                    d.action == Action::Keep
                        && (d.reasons.iter().any(|r| r.schedule() == Some(&s.schedule))
                            || (d.reasons.contains(&Reason::Pending)
                                && spec.firing.contains(&s.schedule)))
                })
                .count();
            s.peak = s.peak.max(held);
            s.end = held;
        }
        cursor = slot;
    }
    // The steady state: what the rules keep once the last snapshot has completed.
    let c = census(&fake, &dests, policy, &volume, cursor).await;
    sim.end_per_volume = c.total;
    for s in &mut sim.schedules {
        settle(s, &c.kept);
    }
    for d in &mut sim.destinations {
        if let Some((kept, total)) = c.copies.get(&d.region) {
            d.end_per_volume = *total;
            for s in &mut d.schedules {
                settle(s, kept);
            }
        }
    }
    let label = format!("{:04}-{:02}", month.0, month.1);
    for s in all_schedules(&mut sim) {
        s.monthly.push((label.clone(), s.end));
    }
    sim
}

/// The steady state of `s` from a census: what its rules keep.
fn settle(s: &mut ScheduleSim, kept: &BTreeMap<String, Vec<DateTime<Utc>>>) {
    let slots = kept.get(&s.schedule).map_or(&[][..], |v| &v[..]);
    s.end = slots.len();
    s.surviving = slots.iter().copied().map(format_slot).collect();
}

/// The source's schedules and every destination's.
fn all_schedules(sim: &mut PolicySim) -> impl Iterator<Item = &mut ScheduleSim> {
    sim.schedules.iter_mut().chain(
        sim.destinations
            .iter_mut()
            .flat_map(|d| d.schedules.iter_mut()),
    )
}

pub async fn simulate(config: &Config, opts: &SimOptions) -> SimReport {
    let until = opts.from + Duration::days(i64::from(opts.days));
    let pairs = pairs(config);
    let mut policies = Vec::new();
    for p in config
        .policies
        .iter()
        .filter(|p| opts.policy.as_deref().is_none_or(|n| n == p.name))
    {
        for (account, _, region) in pairs.iter().filter(|(a, own, _)| p.serves(a, *own)) {
            let pair = Pair { account, region };
            policies
                .push(simulate_policy(p, opts, until, config.daemon.copy_concurrency, pair).await);
        }
    }
    SimReport {
        from: opts.from,
        until,
        volumes: opts.volumes.max(1),
        policies,
        organization: config.aws.accounts.organization.is_some(),
    }
}

/// Per schedule peak and end, month by month, and the surviving slots, each line indented by `indent`.
fn schedule_lines(schedules: &[ScheduleSim], indent: &str) -> String {
    let mut out = format!("{indent}{:<16} {:>6} {:>6}\n", "SCHEDULE", "PEAK", "END");
    for s in schedules {
        out.push_str(&format!(
            "{indent}{:<16} {:>6} {:>6}\n",
            s.schedule, s.peak, s.end
        ));
    }
    if let Some(first) = schedules.first() {
        out.push_str(&format!("{indent}end of month:"));
        for (i, (m, _)) in first.monthly.iter().enumerate() {
            let counts: Vec<String> = schedules
                .iter()
                .map(|s| format!("{}={}", s.schedule, s.monthly[i].1))
                .collect();
            out.push_str(&format!("\n{indent}  {m}  {}", counts.join(" ")));
        }
        out.push('\n');
    }
    for s in schedules {
        out.push_str(&format!(
            "{indent}surviving {} ({}): {}\n",
            s.schedule,
            s.surviving.len(),
            s.surviving.join(" ")
        ));
    }
    out
}

/// The human report: per schedule peak and end, month by month, and the surviving slots; the same for each copy
/// destination's copies.
pub fn render(report: &SimReport) -> String {
    let mut out = format!(
        "simulated {} to {} with {} volume(s) per policy; figures are per volume\n",
        format_slot(report.from),
        format_slot(report.until),
        report.volumes
    );
    for p in &report.policies {
        out.push_str(&format!(
            "\npolicy {} in {}/{}: {} fires, {} snapshots created, {} deleted; distinct snapshots per volume: peak {}, end {}\n",
            p.policy,
            p.account,
            p.region,
            p.fires,
            p.created,
            p.deleted,
            p.peak_per_volume,
            p.end_per_volume
        ));
        out.push_str(&schedule_lines(&p.schedules, "  "));
        for d in &p.destinations {
            out.push_str(&format!(
                "  copies in {}: distinct copies per volume: peak {}, end {}\n",
                d.region, d.peak_per_volume, d.end_per_volume
            ));
            out.push_str(&schedule_lines(&d.schedules, "    "));
        }
        if !p.destinations.is_empty() {
            out.push_str(&format!(
                "  {} copies made, {} deleted\n",
                p.copied, p.copies_deleted
            ));
        }
    }
    if report.organization {
        out.push_str(
            "\naccounts of [aws.organization] are found at run time and not simulated; each would show as the \
             pairs above do\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        crate::config::from_toml_str(std::path::Path::new("sim.toml"), toml, &[]).unwrap()
    }

    fn opts(days: u32) -> SimOptions {
        SimOptions {
            from: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .to_utc(),
            days,
            volumes: 2,
            count_tag_value: 5,
            policy: None,
        }
    }

    #[tokio::test]
    async fn counts_settle_at_the_keep_rules() {
        let c = config(
            r#"
[[policy]]
name = "p"
target = { resource = "instance", tags = { Backup = "*" } }
schedule = [
  { name = "daily", cron = "30 4 * * *", keep = { last = 7 } },
  { name = "weekly", cron = "30 4 * * 1", keep = { last = 4 } },
  { name = "tagged", cron = "0 12 * * *", count-tag = "Keep" },
]
"#,
        );
        let r = simulate(&c, &opts(60)).await;
        let p = &r.policies[0];
        let by: BTreeMap<&str, &ScheduleSim> = p
            .schedules
            .iter()
            .map(|s| (s.schedule.as_str(), s))
            .collect();
        // Peaks include the new snapshot while it is pending.
        assert_eq!((by["daily"].end, by["daily"].peak), (7, 8));
        assert_eq!((by["weekly"].end, by["weekly"].peak), (4, 5));
        assert_eq!(by["tagged"].end, 5, "count tag value");
        // The last daily Monday also serves weekly: one overlap.
        assert_eq!(p.end_per_volume, 7 + 4 + 5 - 1);
        assert_eq!(by["daily"].surviving.len(), 7);
        assert_eq!(by["daily"].surviving[0], "2026-03-01T04:30:00Z");
        // Two fires a day (04:30 and 12:00); Monday's weekly coincides with the daily one.
        assert_eq!(p.fires, 120);
        assert!(render(&r).contains("surviving weekly (4)"));
    }

    #[tokio::test]
    async fn each_account_and_region_a_policy_serves_is_simulated_and_named() {
        let c = config(
            r#"
[aws]
regions = ["us-east-1"]

[[aws.account]]
name = "prod"
role-arn = "arn:aws:iam::222222222222:role/snapwarden"
regions = ["us-east-1", "eu-west-1"]

[[aws.account]]
name = "staging"
role-arn = "arn:aws:iam::333333333333:role/snapwarden"

[[policy]]
name = "everywhere"
target = { resource = "volume", tags = { Backup = "yes" } }
schedule = [{ name = "daily", cron = "30 4 * * *", keep = { last = 3 } }]

[[policy]]
name = "prod-only"
accounts = ["prod"]
target = { resource = "volume", tags = { Backup = "prod" } }
schedule = [{ name = "daily", cron = "0 5 * * *", keep = { last = 2 } }]
"#,
        );
        let r = simulate(&c, &opts(10)).await;
        let simulated: Vec<(&str, &str, &str)> = r
            .policies
            .iter()
            .map(|p| (p.policy.as_str(), p.account.as_str(), p.region.as_str()))
            .collect();
        assert_eq!(
            simulated,
            [
                ("everywhere", "own", "us-east-1"),
                ("everywhere", "prod", "us-east-1"),
                ("everywhere", "prod", "eu-west-1"),
                ("everywhere", "staging", "us-east-1"),
                ("prod-only", "prod", "us-east-1"),
                ("prod-only", "prod", "eu-west-1"),
            ]
        );
        // Each pair is a fleet of its own, run in full.
        for p in &r.policies {
            assert_eq!(p.fires, 10, "{}/{}", p.account, p.region);
            assert_eq!(p.created, 10 * 2, "{}/{}", p.account, p.region);
        }
        let text = render(&r);
        assert!(
            text.contains("\npolicy prod-only in prod/eu-west-1: 10 fires"),
            "{text}"
        );
        assert!(!text.contains("prod-only in staging"), "{text}");
        assert!(!text.contains("[aws.organization]"), "{text}");
    }
}
