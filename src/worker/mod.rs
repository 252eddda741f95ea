//! Snapshot and retention runs: the only module that mixes decisions with I/O. A run is one policy, one slot
//! (fire time) and one region, carried out as a sequence of phases over one run context (`run::Run`):
//!
//! 1. `survey`: what the region holds (targets, count tags, the policy's managed snapshots — one filtered,
//!    paginated sweep each), and what each copy destination holds of this region's snapshots (`copy::read`):
//!    the source snapshots a destination still wants copied are held from retention;
//! 2. `app`: for a policy with VSS or pre/post scripts, the SSM commands around (or, for VSS, instead of) the
//!    creates of the instances that can be made application-consistent; what falls back is left to `create`;
//! 3. `create`: the slot's missing snapshots, while `settle::poll` watches them complete;
//! 4. `settle`: this run's snapshots join the survey; `error` snapshots are reported and deleted, ones still
//!    pending at the deadline reported;
//! 5. `retain`: retention planned over that end state, its deletes sent;
//! 6. `copy`: the disaster-recovery copies each destination's plan wants, sent under its copy-concurrency gate
//!    and polled within the completion deadline, then the destination's retention of its copies;
//! 7. `record`: the estate's gauges, the `run finished` line, the run metrics.
//!
//! Retention's deletes do not wait for step 4: before anything is created the run plans the end state it expects
//! (`run::Flight`, `prune`), and a volume's deletes go out as soon as its new snapshot has completed, on a
//! queue drained beside every phase until `retain` closes it. Creates wait for room under the account's
//! pending-snapshot cap as completion polls find snapshots done (`create::Gate`).
//!
//! A phase decides and calls; everything it records goes through the context's event methods (`created`,
//! `deferred`, `create_failed`, `deleted`, `kept_in_use`, `cap_hit`, `app_failed`, `copy_created`, …), each
//! writing the log line, the metric and the report entry together. A new phase is a file of its own here with one
//! function over the context, and one line in `execute`; new events are context methods.
//!
//! Everything a run needs to know is read back from tags, so a retry or a restart after a crash finds the slot's
//! snapshots and does not duplicate them. Dry runs go through the same code with an `ec2::DryRun` backend; the
//! worker never checks a dry-run flag to decide what to call, and asks the backend ([`Ec2::dry_run`]) only what to
//! report.

mod app;
pub(crate) mod copy;
mod create;
mod findings;
mod prune;
mod record;
mod retain;
mod run;
mod settle;
mod survey;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::config::Policy;
use crate::ec2::Ec2;
use crate::metrics::Metrics;
use crate::report::RunReport;
use crate::retention::Decision;
use crate::schedule::format_slot;

pub use app::{THAWED_EARLY, VSS_DOCUMENT};
pub use copy::{destination_regions, Destinations};
pub use prune::plan_retention;
pub use survey::{slot_of, survey, Survey, TargetVolume};

/// Largest accepted count-tag value: beyond this a typo (`1e9`, `70000`) is more likely than intent.
pub(crate) const MAX_COUNT: u32 = 10_000;
/// EC2 allows 50 tags per resource.
const MAX_TAGS: usize = 50;
/// EC2 accepts up to 200 values per filter.
const FILTER_VALUES: usize = 200;

/// Parses a count-tag value: a whole number from 1 to [`MAX_COUNT`], surrounding blanks allowed.
pub(crate) fn parse_count(value: &str) -> Result<u32, String> {
    let v = value.trim();
    let shown = quoted(value);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{shown} is not a whole number; write a count from 1 to {MAX_COUNT}"
        ));
    }
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
        _ => Err(format!(
            "{shown} is out of range; write a count from 1 to {MAX_COUNT}"
        )),
    }
}

/// A tag value for a message: in backticks, cut to 40 characters (tag values reach 256, and every alert and log
/// line repeats it).
fn quoted(value: &str) -> String {
    const SHOWN: usize = 40;
    let n = value.chars().count();
    if n <= SHOWN {
        format!("`{value}`")
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("`{head}...` ({n} characters)")
    }
}

/// What a run did, with the retention plan it executed (for `once --dry-run` and logs).
pub struct Outcome {
    pub report: RunReport,
    pub plan: Vec<Decision>,
}

/// How long a run waits for snapshots to reach `completed` after its last create, and how often it looks (also
/// while creating): one filtered DescribeSnapshots per region per poll (ids in chunks of 200), the interval
/// doubling from `first_poll` up to `max_poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub deadline: Duration,
    pub first_poll: Duration,
    pub max_poll: Duration,
}

impl Completion {
    /// Polls every 2 s at first, slowing to every 30 s: small snapshots complete within seconds, big first
    /// snapshots take hours and should not cost a describe every 2 s. `deadline` is `daemon.completion-deadline`;
    /// zero means "do not wait for pending snapshots", not "do not look": the run still describes its new
    /// snapshots once after the last create, so one already in `error` fails its volume like any other (see
    /// `settle::phase`).
    pub fn within(deadline: Duration) -> Self {
        Completion {
            deadline,
            first_poll: Duration::from_secs(2),
            max_poll: Duration::from_secs(30),
        }
    }

    /// Whether the run waits for pending snapshots at all (a zero deadline only looks once).
    fn waits(&self) -> bool {
        !self.deadline.is_zero()
    }
}

/// What a run is asked to do. Built with [`RunSpec::new`] and the setters for what differs from the defaults.
pub struct RunSpec<'a> {
    pub(crate) policy: &'a Policy,
    /// The schedules firing at `slot` (one snapshot per volume serves all of them).
    pub(crate) firing: Vec<String>,
    pub(crate) slot: DateTime<Utc>,
    pub(crate) account_id: &'a str,
    /// The account's label ([`Region::account`]); `account_id` by default.
    pub(crate) account: &'a str,
    pub(crate) concurrency: usize,
    /// Poll pending snapshots (see `settle::poll`); None: create and move on without describing them
    /// (component tests on `FakeEc2`, `simulate`, which runs in simulated time). Dry runs never poll. Either way
    /// every state the run saw (survey, create answers, polls) is settled by `settle::phase`.
    pub(crate) completion: Option<Completion>,
    /// Runs SSM documents (VSS, pre/post scripts) for policies that ask for them; None: such a policy's
    /// instances fail their application-consistent step (and fall back as configured).
    pub(crate) ssm: Option<&'a dyn crate::ssm::Ssm>,
    /// How the app-consistency phase polls its commands.
    pub(crate) ssm_polling: crate::ssm::batch::Polling,
    /// The regions the policy's schedules copy to; None: none known (a policy with copy rules then copies
    /// nothing, reports each destination unreadable and holds what they would want).
    pub(crate) destinations: Option<&'a Destinations>,
    /// [`Outcome::plan`] holds every decision, kept ones with their reasons (tests, `simulate`); otherwise only
    /// the deletions, so a run over a large estate does not hold a decision per snapshot (~120 bytes each).
    pub(crate) explain: bool,
}

impl<'a> RunSpec<'a> {
    /// A run of every schedule of `policy` at `slot`, for `account_id`: 4 calls waiting at once, no completion
    /// polling, only the deletions in [`Outcome::plan`].
    pub fn new(policy: &'a Policy, slot: DateTime<Utc>, account_id: &'a str) -> Self {
        RunSpec {
            policy,
            firing: policy.schedules.iter().map(|s| s.name.clone()).collect(),
            slot,
            account_id,
            account: account_id,
            concurrency: 4,
            completion: None,
            ssm: None,
            ssm_polling: crate::ssm::batch::Polling::default(),
            destinations: None,
            explain: false,
        }
    }

    /// The SSM backend of the run's region, and how often commands are polled.
    pub fn ssm(
        mut self,
        ssm: &'a dyn crate::ssm::Ssm,
        polling: crate::ssm::batch::Polling,
    ) -> Self {
        self.ssm = Some(ssm);
        self.ssm_polling = polling;
        self
    }

    /// The backends of the regions the policy copies to.
    pub fn destinations(mut self, destinations: &'a Destinations) -> Self {
        self.destinations = Some(destinations);
        self
    }

    /// The schedules firing at the slot.
    pub fn firing<S: Into<String>>(mut self, firing: impl IntoIterator<Item = S>) -> Self {
        self.firing = firing.into_iter().map(Into::into).collect();
        self
    }

    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    pub fn completion(mut self, completion: Completion) -> Self {
        self.completion = Some(completion);
        self
    }

    pub fn explain(mut self, explain: bool) -> Self {
        self.explain = explain;
        self
    }
}

pub(crate) fn new_run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// One full run. Never fails as a whole: problems end up in the report.
pub async fn run(
    ec2: &dyn Ec2,
    spec: &RunSpec<'_>,
    metrics: &Metrics,
    now: impl Fn() -> DateTime<Utc> + Sync,
) -> Outcome {
    let mut run = run::Run::new(ec2, spec, metrics, &now);
    let r = &run.report;
    let span = tracing::info_span!("run", run_id = %r.run_id, policy = %spec.policy.name, schedule = %spec.firing.join(","), region = %ec2.region(), slot = %format_slot(spec.slot));
    async {
        let plan = execute(&mut run).await;
        Outcome {
            report: record::finish(run),
            plan,
        }
    }
    .instrument(span)
    .await
}

/// The phases of a run, in order. The delete queue is drained beside them from the first create on.
async fn execute(run: &mut run::Run<'_>) -> Vec<Decision> {
    if !survey::phase(run).await {
        return Vec::new();
    }
    copy::read(run).await;
    let todo = create::prepare(run);
    let (flight, deletes) = run::Flight::start(run, &todo);
    let deleting = prune::delete_all(run.ec2, deletes, run.spec.concurrency);
    let phases = async {
        let todo = app::phase(run, &flight, todo).await;
        let last_poll_error = create::phase(run, &flight, todo).await;
        settle::phase(run, &flight, last_poll_error).await;
        retain::phase(run, &flight)
    };
    let (plan, deleted) = tokio::join!(phases, deleting);
    retain::deleted(run, deleted);
    copy::phase(run).await;
    record::estate(run);
    plan
}

/// Shared by every run of the process: backends per region and the account they act for.
pub struct Region {
    pub ec2: Arc<dyn Ec2>,
    pub account_id: String,
    /// The `account` label of metrics, `/status`, `plan` and the digest: an `[[aws.account]]`'s name (its id by
    /// default), or the own account's id.
    pub account: String,
    /// The daemon's own account (a policy's `accounts` calls it `own`).
    pub own: bool,
    /// SSM Run Command in the region, for VSS and script policies; None on the in-memory backends.
    pub ssm: Option<Arc<dyn crate::ssm::Ssm>>,
    /// The regions the policies copy to, shared by every source region (their gates are per destination).
    pub copies: Arc<Destinations>,
}

impl Region {
    /// Where this region's runs act, for the scheduler.
    pub(crate) fn scope(&self) -> crate::scheduler::Scope {
        crate::scheduler::Scope {
            account: self.account.clone(),
            own: self.own,
            region: self.ec2.region().to_string(),
        }
    }

    /// A run of `policy` at `slot` in this region, with its SSM backend when it has one.
    pub fn spec<'a>(&'a self, policy: &'a Policy, slot: DateTime<Utc>) -> RunSpec<'a> {
        let mut spec = RunSpec::new(policy, slot, &self.account_id).destinations(&self.copies);
        spec.account = &self.account;
        match &self.ssm {
            Some(ssm) => spec.ssm(ssm.as_ref(), crate::ssm::batch::Polling::default()),
            None => spec,
        }
    }
}
