//! Scale benchmark (a `cargo bench` target, not a test): one full snapshot + retention pass of the real worker
//! behind the real `Paced` decorator over an estate of N volumes (instances of 1 to 4 volumes, H snapshots of
//! history each) on the in-memory EC2 backend, with a per-request latency and AWS's own token buckets answering
//! `RequestLimitExceeded` when empty. It runs on tokio's paused clock, so the hour of bucket waits a 10,000-volume
//! pass takes runs in seconds: it prints the virtual wall time and the real CPU time, the requests AWS saw per
//! operation (describe pages counted one by one), the floor those requests imply at the configured budget, peak
//! RSS and the worker's own heap. Also a planner micro-benchmark (1,000,000 snapshots) and, with `--moto`, the
//! same pass through the real SDK against moto to check that the request counts match the in-memory run. With
//! `--vss`, fires of N Windows instances with `consistency = "vss"`: SSM through the real `PacedSsm` over stand-in
//! agents that take `--agent-secs` and make the snapshots in the in-memory EC2, checked against the fire's targets.
//! With `--copies`, a pass of DR copies of N volumes to one destination region through the real copy phase, both
//! regions behind `Paced` and metered on their own buckets, the destination's copies pending `--copy-secs` each
//! under AWS's 20-pending limit, checked against the copy floor; and the same source pass without copies. With
//! `--pairs`, a fleet of that many account-regions of `--volumes` each (`--fairness`: one of 10 and one of 5,000
//! among them), each its own backend through `daemon::paced_region` on one shared concurrency semaphore, all run in
//! one fire, checked against each pair's own floor.
//!
//! ```text
//! cargo bench --bench scale -- --volumes 1000,5000,10000 --history 30 --latency-ms 50
//! cargo bench --bench scale -- --vss 200,1000 --agent-secs 60
//! cargo bench --bench scale -- --copies 10000 --copy-secs 120
//! cargo bench --bench scale -- --pairs 100 --volumes 1000 --history 30 --fairness
//! SNAPWARDEN_MOTO_SERVER=.venv/bin/moto_server cargo bench --bench scale -- --moto --moto-volumes 200 --planner 0 --volumes 0
//! ```
//! Results and how to read them: docs/PERFORMANCE.md.

#[path = "../common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use snapwarden::config::{self, Config};
use snapwarden::daemon;
use snapwarden::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use snapwarden::ec2::hooked::{Answer, Call, Hooked, Step};
use snapwarden::ec2::op::Op;
use snapwarden::ec2::pace::{Group, PaceConfig, Paced, TokenBucket};
use snapwarden::ec2::{self, Ec2, Instrumented, Snapshot, Tags};
use snapwarden::error::{Error, Result};
use snapwarden::metrics::Metrics;
use snapwarden::retention::{self, PlanInput, ScheduleRules, SnapState};
use snapwarden::schedule::format_slot;
use snapwarden::ssm::batch::Polling;
use snapwarden::ssm::{self, Command, Invocation, PacedSsm, Ssm, Status};
use snapwarden::worker::{self, Completion, RunSpec, Survey};

// --- heap accounting ---------------------------------------------------------------------------------------------

/// The system allocator, counting live and peak bytes: the worker's own memory, apart from the in-memory EC2's copy
/// of the estate that shares the process.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new) };
        if !q.is_null() {
            if new >= layout.size() {
                grew(new - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// (VmHWM, VmRSS) in bytes.
fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so each pass reports its own peak.
fn reset_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// User + system CPU time of the process.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in clock ticks (USER_HZ = 100).
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

// --- an EC2 region as AWS meters it ------------------------------------------------------------------------------

/// What AWS sees: every request (each describe page is one) waits `latency`, then takes a token from AWS's bucket
/// for its group — the whole account's budget, not snapwarden's share — or is refused with
/// `RequestLimitExceeded`, as EC2 does. Counts requests and refusals per operation. Wraps any backend: the
/// in-memory one (latency and buckets on) or the SDK against moto (both off: counting only).
struct Metered {
    /// The backend behind the meter.
    ec2: Arc<dyn Ec2>,
    meter: Arc<Meter>,
}

struct Meter {
    region: String,
    latency: Duration,
    aws: Option<Mutex<BTreeMap<Group, TokenBucket>>>,
    requests: Mutex<BTreeMap<Op, u64>>,
    throttled: Mutex<BTreeMap<Op, u64>>,
    /// When the first and the last request of each operation were answered.
    answered: Mutex<BTreeMap<Op, (tokio::time::Instant, tokio::time::Instant)>>,
}

impl Metered {
    fn new(inner: Arc<dyn Ec2>, latency: Duration, buckets: bool) -> Self {
        let t = tokio::time::Instant::now().into_std();
        let aws = buckets.then(|| {
            Mutex::new(
                Group::ALL
                    .iter()
                    .map(|&g| {
                        let (burst, rate) = g.aws_bucket();
                        (g, TokenBucket::new(burst, rate, t))
                    })
                    .collect(),
            )
        });
        let meter = Arc::new(Meter {
            region: inner.region().to_string(),
            latency,
            aws,
            requests: Mutex::new(BTreeMap::new()),
            throttled: Mutex::new(BTreeMap::new()),
            answered: Mutex::new(BTreeMap::new()),
        });
        let (before, after) = (meter.clone(), meter.clone());
        let ec2 = Hooked::new(inner)
            .before(move |call| match call {
                // Paginated describes: counted once the answer says how many pages it took.
                Call::DescribeInstances(_) | Call::DescribeVolumes(_) => Step::Go,
                // DescribeSnapshots is paged by the caller: one request per page, like every other call.
                _ => Step::run(before.clone().requests(call.operation(), 1)),
            })
            .after(move |call, answer| {
                let n = match answer {
                    Answer::Instances(Ok(all)) => all.len(),
                    Answer::Volumes(Ok(all)) => all.len(),
                    _ => return Step::Go,
                };
                // One request per 1,000 objects (at least one); a refused page fails the sweep.
                let pages = n.div_ceil(1000).max(1);
                Step::run(after.clone().requests(call.operation(), pages))
            });
        Metered {
            ec2: Arc::new(ec2),
            meter,
        }
    }

    fn requests(&self) -> BTreeMap<Op, u64> {
        self.meter.requests.lock().unwrap().clone()
    }

    fn throttled(&self) -> u64 {
        self.meter.throttled.lock().unwrap().values().sum()
    }

    /// When the first and the last request of `op` were answered, if any was.
    fn answered(&self, op: Op) -> Option<(tokio::time::Instant, tokio::time::Instant)> {
        self.meter.answered.lock().unwrap().get(&op).copied()
    }
}

impl Meter {
    /// `n` requests of `operation`, one after the other; the first refused ends them.
    async fn requests(self: Arc<Self>, operation: Op, n: usize) -> Result<()> {
        for _ in 0..n {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            *self.requests.lock().unwrap().entry(operation).or_default() += 1;
            let now = tokio::time::Instant::now();
            let mut answered = self.answered.lock().unwrap();
            answered.entry(operation).or_insert((now, now)).1 = now;
            drop(answered);
            if let (Some(aws), Some(group)) = (&self.aws, operation.group()) {
                let now = tokio::time::Instant::now().into_std();
                let refused = aws
                    .lock()
                    .unwrap()
                    .get_mut(&group)
                    .expect("a bucket per group")
                    .try_take(now)
                    .is_err();
                if refused {
                    *self.throttled.lock().unwrap().entry(operation).or_default() += 1;
                    return Err(Error::api(
                        operation,
                        self.region.clone(),
                        "RequestLimitExceeded",
                        "Request limit exceeded (benchmark bucket)",
                    ));
                }
            }
        }
        Ok(())
    }
}

// --- the estate --------------------------------------------------------------------------------------------------

fn slot() -> DateTime<Utc> {
    common::slot("2026-03-02T04:30:00Z")
}

/// Volumes per instance: 1, 2, 3, 4, 1, 2, … (2.5 on average), the last instance cut to reach exactly `volumes`.
fn shape(volumes: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = volumes;
    let mut i = 0;
    while left > 0 {
        let k = (1 + i % 4).min(left);
        out.push(k);
        left -= k;
        i += 1;
    }
    out
}

/// The tags of a history snapshot of `device` of `instance`, `day` days before the slot, as snapwarden writes them.
fn history_tags(instance: &str, device: &str, day: i64) -> Vec<(String, String)> {
    let at = format_slot(slot() - chrono::Duration::days(day));
    let name = format!("web-{instance}");
    let own = [
        ("Name", name.as_str()),
        (ec2::TAG_INSTANCE, instance),
        (ec2::TAG_DEVICE, device),
        ("Backup", "true"),
    ];
    common::managed_tags("prod", "daily", &at)
        .iter()
        .chain(&own)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn fake_estate(region: &str, volumes: usize, history: usize) -> (Arc<FakeEc2>, usize) {
    let fake = Arc::new(FakeEc2::new(region));
    fake.set_clock(slot());
    let fleet = common::web_fleet(&fake, shape(volumes));
    for (id, vols) in &fleet {
        for (v, dev) in vols.iter().zip(common::DEVICES) {
            for day in 1..=history as i64 {
                let tags = history_tags(id, dev, day);
                let tags: Vec<(&str, &str)> =
                    tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                fake.seed_snapshot(v, SnapState::Completed, FAKE_ACCOUNT, &tags);
            }
        }
    }
    (fake, fleet.len())
}

fn policy_config(history: usize, consistency: &str) -> Config {
    config::from_toml_str(
        std::path::Path::new("bench.toml"),
        &policy_toml(history, consistency),
        &[],
    )
    .expect("bench config")
}

fn policy_toml(history: usize, consistency: &str) -> String {
    format!(
        "[[policy]]\nname = \"prod\"\nconsistency = \"{consistency}\"\n[policy.target]\n\
         tags = {{ Backup = \"true\" }}\n[[policy.schedule]]\nname = \"daily\"\ncron = \"30 4 * * *\"\n\
         keep = {{ last = {history} }}\n"
    )
}

// --- one pass ----------------------------------------------------------------------------------------------------

struct Args {
    volumes: Vec<usize>,
    history: usize,
    latency: Duration,
    budget: f64,
    consistency: String,
    planner: usize,
    moto: bool,
    moto_volumes: usize,
    moto_history: usize,
    vss: Vec<usize>,
    agent: Duration,
    polling: Polling,
    copies: Vec<usize>,
    copy: Duration,
    /// The copy pass's completion deadline; None: long enough for one run to make every copy.
    copy_deadline: Option<Duration>,
    /// Account-regions of the fleet pass (0: none); each of `pair_volumes` volumes (`--volumes` with `--pairs`).
    pairs: usize,
    pair_volumes: usize,
    fairness: bool,
}

fn args() -> Args {
    let mut a = Args {
        volumes: vec![1000],
        history: 30,
        latency: Duration::from_millis(50),
        budget: PaceConfig::default().budget_fraction,
        consistency: "instance".into(),
        planner: 1_000_000,
        moto: false,
        moto_volumes: 200,
        moto_history: 3,
        vss: Vec::new(),
        agent: Duration::from_secs(60),
        polling: Polling::default(),
        copies: Vec::new(),
        copy: Duration::from_secs(120),
        copy_deadline: None,
        pairs: 0,
        pair_volumes: 1000,
        fairness: false,
    };
    let (mut volumes, mut planner) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--volumes" => volumes = Some(list(&value(), "--volumes N[,N…]")),
            "--history" => a.history = value().parse().expect("--history H"),
            "--latency-ms" => {
                a.latency = Duration::from_millis(value().parse().expect("--latency-ms MS"))
            }
            "--budget" => a.budget = value().parse().expect("--budget FRACTION"),
            "--consistency" => a.consistency = value(),
            "--planner" => {
                planner = Some(value().parse().expect("--planner SNAPSHOTS (0: skip)"))
            }
            "--moto" => a.moto = true,
            "--moto-volumes" => a.moto_volumes = value().parse().expect("--moto-volumes N"),
            "--moto-history" => a.moto_history = value().parse().expect("--moto-history H"),
            "--vss" => a.vss = list(&value(), "--vss INSTANCES[,INSTANCES…]"),
            "--agent-secs" => {
                a.agent = Duration::from_secs_f64(value().parse().expect("--agent-secs S"))
            }
            "--poll-first-ms" => {
                a.polling.first = Duration::from_millis(value().parse().expect("--poll-first-ms MS"))
            }
            "--poll-max-ms" => {
                a.polling.max = Duration::from_millis(value().parse().expect("--poll-max-ms MS"))
            }
            "--copies" => a.copies = list(&value(), "--copies VOLUMES[,VOLUMES…]"),
            "--copy-secs" => {
                a.copy = Duration::from_secs_f64(value().parse().expect("--copy-secs S"))
            }
            "--copy-deadline-secs" => {
                a.copy_deadline = Some(Duration::from_secs_f64(
                    value().parse().expect("--copy-deadline-secs S"),
                ))
            }
            "--pairs" => a.pairs = value().parse().expect("--pairs N"),
            "--fairness" => a.fairness = true,
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            other => panic!(
                "unknown argument {other}; use --volumes N[,N…] --history H --latency-ms MS --budget F \
                 --consistency instance|volume --planner N --moto --moto-volumes N --moto-history H \
                 --vss INSTANCES[,INSTANCES…] --agent-secs S --poll-first-ms MS --poll-max-ms MS \
                 --copies VOLUMES[,VOLUMES…] --copy-secs S --copy-deadline-secs S \
                 --pairs N [--fairness]"
            ),
        }
    }
    // With `--pairs`, `--volumes` is each pair's size (the first value), and the fleet is all that is measured.
    if a.pairs > 0 {
        if let Some(&n) = volumes.as_ref().and_then(|v| v.first()) {
            a.pair_volumes = n;
        }
        volumes = Some(Vec::new());
    }
    // `--vss`, `--copies` or `--pairs` alone measures only the VSS fires, the copy passes or the fleet.
    let only = !a.vss.is_empty() || !a.copies.is_empty() || a.pairs > 0;
    a.volumes = volumes.unwrap_or(if only { Vec::new() } else { a.volumes });
    a.planner = planner.unwrap_or(if only { 0 } else { a.planner });
    a
}

/// `N[,N…]`, zeros dropped.
fn list(value: &str, usage: &str) -> Vec<usize> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().unwrap_or_else(|_| panic!("{usage}")))
        .filter(|&n| n > 0)
        .collect()
}

fn pace(budget: f64) -> PaceConfig {
    PaceConfig {
        budget_fraction: budget,
        seed: Some(6),
        // The account-wide pending cap is a guard for small accounts; at this scale creates are paced by the
        // Create bucket, and EBS completes snapshots behind them (see docs/PERFORMANCE.md).
        max_pending_per_account: usize::MAX,
        ..PaceConfig::default()
    }
}

struct Pass {
    requests: BTreeMap<Op, u64>,
    throttled: u64,
    /// When the run began, on tokio's clock, and how long it took.
    start: tokio::time::Instant,
    wall: Duration,
    report: snapwarden::report::RunReport,
}

/// The completion deadline of the benchmark's runs: long enough for any pass it measures to finish.
const DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// One run of the worker for the slot through `Paced(Instrumented(metered))`, timed on tokio's clock, with
/// `completion` as its completion deadline; `ssm`: the region's SSM (already paced) and how commands are polled;
/// `dr`: the region the policy's copies go to, paced on its own buckets as the daemon paces a destination.
async fn pass(
    metered: Arc<Metered>,
    config: &Config,
    pace: PaceConfig,
    ssm: Option<(&dyn Ssm, Polling)>,
    dr: Option<&Metered>,
    completion: Duration,
) -> Pass {
    let permits = Arc::new(tokio::sync::Semaphore::new(
        config.daemon.max_concurrent_aws_calls,
    ));
    let metrics = Arc::new(Metrics::new());
    // Every backend guarded, instrumented and paced as `daemon::aws_regions_paced` builds it: the calls waiting at
    // once are bounded across regions, the buckets are each region's own.
    let paced = |backend: Arc<dyn Ec2>| {
        let instrumented: Arc<dyn Ec2> =
            Arc::new(Instrumented::new(backend, permits.clone(), metrics.clone()));
        Paced::new(instrumented, pace.clone())
    };
    let source = paced(metered.ec2.clone());
    let destinations = worker::Destinations::new(
        config.daemon.copy_concurrency,
        dr.map(|dr| Arc::new(paced(dr.ec2.clone())) as Arc<dyn Ec2>),
    );
    let t0 = tokio::time::Instant::now();
    let account = source.account_id().await.expect("account id");
    let policy = &config.policies[0];
    let spec = RunSpec::new(policy, slot(), &account)
        .firing(["daily"])
        .concurrency(config.daemon.max_concurrent_aws_calls)
        .completion(Completion::within(completion))
        .destinations(&destinations);
    let spec = match ssm {
        Some((ssm, polling)) => spec.ssm(ssm, polling),
        None => spec,
    };
    let now = move || slot() + chrono::Duration::from_std(t0.elapsed()).unwrap_or_default();
    let out = worker::run(&source, &spec, &metrics, now).await;
    Pass {
        requests: metered.requests(),
        throttled: metered.throttled(),
        start: t0,
        wall: t0.elapsed(),
        report: out.report,
    }
}

/// Seconds the budgeted buckets need for `requests`, per group: (requests − burst) / refill, at least 0.
fn floors(requests: &BTreeMap<Op, u64>, pace: &PaceConfig) -> BTreeMap<Group, f64> {
    let mut per_group: BTreeMap<Group, u64> = BTreeMap::new();
    for (op, n) in requests {
        if let Some(g) = op.group() {
            *per_group.entry(g).or_default() += n;
        }
    }
    per_group
        .into_iter()
        .map(|(g, n)| {
            let b = pace.bucket(g, Instant::now());
            (g, ((n as f64 - b.capacity) / b.refill_per_sec).max(0.0))
        })
        .collect()
}

fn in_memory(a: &Args, volumes: usize) {
    let live_before_estate = LIVE.load(Relaxed);
    let built = Instant::now();
    let region = format!("bench-{volumes}");
    let (fake, instances) = fake_estate(&region, volumes, a.history);
    let estate_heap = LIVE.load(Relaxed) - live_before_estate;
    let build_secs = built.elapsed().as_secs_f64();

    let config = policy_config(a.history, &a.consistency);
    // What the worker holds per managed snapshot: a whole survey (targets included) over its snapshots.
    let before = LIVE.load(Relaxed);
    let once = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let survey = once
        .block_on(worker::survey(
            fake.as_ref(),
            &config.policies[0],
            FAKE_ACCOUNT,
            None,
        ))
        .unwrap();
    let per_snapshot = (LIVE.load(Relaxed) - before) as f64 / survey.snapshots.len().max(1) as f64;
    drop(survey);

    let pace = pace(a.budget);
    let metered = Arc::new(Metered::new(fake.clone(), a.latency, true));
    fake.complete_after_describes(Some(1));

    reset_hwm();
    let (_, rss_before) = rss();
    let live_before = LIVE.load(Relaxed);
    PEAK.store(live_before, Relaxed);
    let cpu0 = cpu();
    let real0 = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let p = rt.block_on(pass(metered, &config, pace.clone(), None, None, DEADLINE));
    let real = real0.elapsed();
    let cpu = cpu() - cpu0;
    let worker_peak = PEAK.load(Relaxed).saturating_sub(live_before);
    let (hwm, _) = rss();

    let r = &p.report;
    let total: u64 = p
        .requests
        .iter()
        .filter(|(op, _)| op.group().is_some())
        .map(|(_, n)| n)
        .sum();
    let floors = floors(&p.requests, &pace);
    let floor = floors.values().cloned().fold(0.0, f64::max);
    let phased: f64 = floors.values().sum();
    let wall = p.wall.as_secs_f64();
    println!("== in-memory pass: {volumes} volumes ==");
    println!(
        "estate: {instances} instances, {volumes} volumes, {} snapshots of history ({} per volume); built in {build_secs:.1} s, {:.1} MiB of heap",
        volumes * a.history,
        a.history,
        mib(estate_heap)
    );
    println!(
        "run: result {}, targeted {}, created {}, already done {}, deleted {}, kept {}, problems {}",
        r.result().as_str(),
        r.targeted_volumes,
        r.created,
        r.already_done,
        r.deleted,
        r.kept,
        r.problems.len()
    );
    println!(
        "consistency {}, latency {} ms, budget {:.0}% of AWS's buckets, AWS refusals (RequestLimitExceeded) {}",
        a.consistency,
        a.latency.as_millis(),
        a.budget * 100.0,
        p.throttled
    );
    println!("requests AWS saw (describe pages counted one by one):");
    for (op, n) in &p.requests {
        println!(
            "  {op:<18} {n:>7}  ({:.3} per volume)",
            *n as f64 / volumes as f64
        );
    }
    println!(
        "  {:<18} {total:>7}  ({:.3} per volume)",
        "EC2 total",
        total as f64 / volumes as f64
    );
    for (g, f) in &floors {
        println!("  floor {g:?}: {f:.0} s");
    }
    println!(
        "wall (virtual) {wall:.0} s = {:.1} min; floor (buckets in parallel, the largest group) {floor:.0} s, \
         wall/floor {:.3}; floor with the groups one after another (create, then delete) {phased:.0} s, \
         wall/that {:.3}",
        wall / 60.0,
        wall / floor.max(1e-9),
        wall / phased.max(1e-9)
    );
    println!(
        "real time {:.2} s, CPU {:.2} s; peak RSS {:.1} MiB (before the pass {:.1} MiB, the in-memory EC2's \
         estate included); worker heap peak {:.1} MiB; {:.0} bytes per managed snapshot held",
        real.as_secs_f64(),
        cpu.as_secs_f64(),
        mib(hwm),
        mib(rss_before),
        mib(worker_peak),
        per_snapshot
    );
    println!();
}

// --- a fire of VSS instances -------------------------------------------------------------------------------------

/// Stand-in for SSM Run Command and the agents behind it, on the in-memory EC2: an instance's invocation of a
/// command is `InProgress` until `duration` after SSM received the command, then `Success`. The first
/// ListCommandInvocations that reports a command's `Success` first makes its instances' snapshots in the in-memory
/// EC2, as `AWSEC2-CreateVssSnapshot` does (one per attached volume, with the `tags` parameter's tags and the
/// document's own `Device`, `AppConsistent`, `AwsVssConfig`), so they exist once the run sees the success. Every
/// call waits `latency`. Counts calls per operation and polls per command, and notes when each command's agents
/// finished and when the run first saw them finished.
struct Agents {
    region: String,
    ec2: Arc<FakeEc2>,
    /// Instance id -> its (volume id, device).
    volumes: HashMap<String, Vec<(String, String)>>,
    duration: Duration,
    latency: Duration,
    start: tokio::time::Instant,
    state: Mutex<AgentState>,
}

#[derive(Default)]
struct AgentState {
    commands: BTreeMap<String, Running>,
    calls: BTreeMap<Op, u64>,
    instances_sent: usize,
}

struct Running {
    instances: Vec<String>,
    tags: Vec<(String, String)>,
    /// When SSM received it, and when its agents are done (seconds since the fire began).
    sent: f64,
    done: f64,
    polls: u64,
    /// When a ListCommandInvocations first reported it done (its snapshots exist from then on).
    seen: Option<f64>,
}

/// The VSS document's `tags` parameter, `Key=k,Value=v;…`.
fn vss_tags(parameter: &str) -> Vec<(String, String)> {
    parameter
        .split(';')
        .filter_map(|pair| {
            let (k, v) = pair.split_once(',')?;
            Some((
                k.strip_prefix("Key=")?.to_string(),
                v.strip_prefix("Value=")?.to_string(),
            ))
        })
        .collect()
}

impl Agents {
    fn at(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    async fn enter(&self, op: Op) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        *self.state.lock().unwrap().calls.entry(op).or_default() += 1;
    }

    fn snapshots(&self, instances: &[String], tags: &[(String, String)]) {
        for i in instances {
            for (volume, device) in self.volumes.get(i).into_iter().flatten() {
                let mut all: Vec<(&str, &str)> =
                    tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                all.extend([
                    ("Device", device.as_str()),
                    ("AppConsistent", "true"),
                    ("AwsVssConfig", "CopyOnly=False"),
                ]);
                self.ec2
                    .seed_snapshot(volume, SnapState::Pending, FAKE_ACCOUNT, &all);
            }
        }
    }
}

#[async_trait::async_trait]
impl Ssm for Agents {
    fn region(&self) -> &str {
        &self.region
    }

    async fn send_command(&self, command: &Command) -> Result<String> {
        self.enter(Op::SendCommand).await;
        let sent = self.at();
        let tags = command
            .parameters
            .get("tags")
            .and_then(|t| t.first())
            .map_or_else(Vec::new, |t| vss_tags(t));
        let mut st = self.state.lock().unwrap();
        st.instances_sent += command.instance_ids.len();
        let id = format!("{:08x}-0000-4000-8000-000000000000", st.commands.len() + 1);
        st.commands.insert(
            id.clone(),
            Running {
                instances: command.instance_ids.clone(),
                tags,
                sent,
                done: sent + self.duration.as_secs_f64(),
                polls: 0,
                seen: None,
            },
        );
        Ok(id)
    }

    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        self.enter(Op::ListCommandInvocations).await;
        let now = self.at();
        let mut st = self.state.lock().unwrap();
        let Some(c) = st.commands.get_mut(command_id) else {
            return Err(Error::api(
                Op::ListCommandInvocations,
                self.region.clone(),
                "InvalidCommandId",
                "no such command (benchmark stand-in)",
            ));
        };
        c.polls += 1;
        let status = if now >= c.done {
            if c.seen.is_none() {
                c.seen = Some(now);
                self.snapshots(&c.instances, &c.tags);
            }
            Status::Success
        } else {
            Status::InProgress
        };
        Ok(c.instances
            .iter()
            .map(|i| Invocation {
                instance_id: i.clone(),
                status: status.clone(),
                output: String::new(),
                exit_code: (status == Status::Success).then_some(0),
            })
            .collect())
    }

    /// A fresh slot: no command of an earlier process to await.
    async fn list_commands(&self, _: &str, _: DateTime<Utc>) -> Result<Vec<ssm::Sent>> {
        self.enter(Op::ListCommands).await;
        Ok(Vec::new())
    }
}

fn vss_config() -> Config {
    let toml = "[[policy]]\nname = \"prod\"\nconsistency = \"vss\"\n[policy.target]\n\
                resource = \"instance\"\ntags = { Backup = \"true\" }\n[[policy.schedule]]\nname = \"daily\"\n\
                cron = \"30 4 * * *\"\nkeep = { last = 30 }\n";
    config::from_toml_str(std::path::Path::new("bench.toml"), toml, &[]).expect("bench config")
}

/// `ok` as the word a target line ends with.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// One fire of `instances` VSS instances (volumes 1, 2, 3, 4, 1, … each, no history) through the real worker,
/// `Paced` EC2 over the metered in-memory backend and `PacedSsm` over the stand-in agents; prints the calls, the
/// timeline and the targets (docs/PERFORMANCE.md, "VSS fire").
fn vss_fire(a: &Args, instances: usize) {
    let region = format!("bench-vss-{instances}");
    let fake = Arc::new(FakeEc2::new(&region));
    fake.set_clock(slot());
    let shape: Vec<usize> = (0..instances).map(|i| 1 + i % 4).collect();
    let volumes: usize = shape.iter().sum();
    let fleet = common::web_fleet(&fake, shape);
    // The VSS snapshots are pending when the run first describes them and complete on the next describe.
    fake.complete_after_describes(Some(2));
    let config = vss_config();
    let pace = pace(a.budget);
    let metered = Arc::new(Metered::new(fake.clone(), a.latency, true));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (p, agents) = rt.block_on(async {
        let agents = Arc::new(Agents {
            region: region.clone(),
            ec2: fake.clone(),
            volumes: fleet
                .iter()
                .map(|(id, vols)| {
                    let vols = vols.iter().zip(common::DEVICES);
                    (
                        id.clone(),
                        vols.map(|(v, d)| (v.clone(), d.to_string())).collect(),
                    )
                })
                .collect(),
            duration: a.agent,
            latency: a.latency,
            start: tokio::time::Instant::now(),
            state: Mutex::default(),
        });
        let counted = ssm::Instrumented::new(agents.clone(), Arc::new(Metrics::new()));
        let paced = PacedSsm::new(Arc::new(counted), pace.clone());
        let p = pass(
            metered,
            &config,
            pace.clone(),
            Some((&paced, a.polling)),
            None,
            DEADLINE,
        )
        .await;
        (p, agents)
    });

    let st = agents.state.lock().unwrap();
    let ssm_calls = |op: Op| st.calls.get(&op).copied().unwrap_or(0);
    let ec2_calls = |op: Op| p.requests.get(&op).copied().unwrap_or(0);
    let (sends, polls, lists) = (
        ssm_calls(Op::SendCommand),
        ssm_calls(Op::ListCommandInvocations),
        ssm_calls(Op::ListCommands),
    );
    let commands = st.commands.len() as u64;
    let rounds = st.commands.values().map(|c| c.polls).max().unwrap_or(0);
    let last =
        |f: fn(&Running) -> Option<f64>| st.commands.values().filter_map(f).fold(0.0, f64::max);
    let last_sent = last(|c| Some(c.sent));
    let last_done = last(|c| Some(c.done));
    let last_seen = last(|c| c.seen);
    let unseen = st.commands.values().filter(|c| c.seen.is_none()).count();
    // How long after its agents finished each command was seen done: the poll interval's cost.
    let lags: Vec<f64> = st
        .commands
        .values()
        .filter_map(|c| Some(c.seen? - c.done))
        .collect();
    let max_lag = lags.iter().cloned().fold(0.0, f64::max);
    let mean_lag = lags.iter().sum::<f64>() / lags.len().max(1) as f64;

    // Describes a fire needs by pagination alone: the survey (instances and volumes 1,000 a page, one page of
    // this policy's snapshots: no history), the sweep finding the VSS snapshots (1,000 a page), and one completion
    // poll of them (200 ids a call).
    let pages = |n: usize, per: usize| n.div_ceil(per).max(1) as u64;
    let describes = ec2_calls(Op::DescribeInstances)
        + ec2_calls(Op::DescribeVolumes)
        + ec2_calls(Op::DescribeSnapshots);
    let paginated = pages(instances, 1000)
        + pages(volumes, 1000)
        + 1
        + pages(volumes, 1000)
        + pages(volumes, 200);
    let tags = ec2_calls(Op::CreateTags);

    // The floor (docs/PERFORMANCE.md): the survey's pages one after another, ListCommands, the last SendCommand's
    // token in the SSM bucket, the agents, one ListCommandInvocations, the pages finding the snapshots, the
    // CreateTags calls beyond the tags bucket's burst; each request `latency`.
    let l = a.latency.as_secs_f64();
    let t0 = Instant::now();
    let s = pace.bucket(Group::Ssm, t0);
    let t = pace.bucket(Group::Tags, t0);
    let send_wait = ((lists + sends) as f64 - s.capacity).max(0.0) / s.refill_per_sec;
    let tag_wait = (tags as f64 - t.capacity).max(0.0) / t.refill_per_sec;
    let survey = (pages(instances, 1000) + pages(volumes, 1000) + 1) as f64 * l;
    let floor = survey
        + lists as f64 * l
        + send_wait
        + l
        + a.agent.as_secs_f64()
        + l
        + pages(volumes, 1000) as f64 * l
        + if tags > 0 { tag_wait + l } else { 0.0 };
    let wall = p.wall.as_secs_f64();
    let r = &p.report;

    println!("== VSS fire: {instances} instances, {volumes} volumes ==");
    println!(
        "run: result {}, created {}, app-consistent {}, fallback {}, problems {}; agents {:.0} s, latency {} ms, \
         budget {:.0}%, polling {:?} doubling to {:?}, AWS refusals (EC2) {}",
        r.result().as_str(),
        r.created,
        r.app_consistent,
        r.fallback,
        r.problems.len(),
        a.agent.as_secs_f64(),
        a.latency.as_millis(),
        a.budget * 100.0,
        a.polling.first,
        a.polling.max,
        p.throttled
    );
    println!("requests (SSM at the stand-in, EC2 at the meter; describe pages one by one):");
    for (op, n) in st.calls.iter().chain(&p.requests) {
        println!("  {op:<24} {n:>6}");
    }
    println!(
        "timeline (s): last send {last_sent:.1}, last agent done {last_done:.1}, last seen done {last_seen:.1} \
         (commands never seen done: {unseen}), fire over {wall:.1}; seen done after the agents: mean {mean_lag:.1} s, \
         max {max_lag:.1} s"
    );
    println!(
        "floor {floor:.1} s = survey {survey:.2} + ListCommands {:.2} + sends beyond the SSM burst {send_wait:.1} + \
         send {l:.2} + agents {:.0} + poll {l:.2} + finding the snapshots {:.2} + CreateTags beyond the tags burst \
         {tag_wait:.1} + {l:.2}",
        lists as f64 * l,
        a.agent.as_secs_f64(),
        pages(volumes, 1000) as f64 * l
    );
    let expected_sends = instances.div_ceil(ssm::MAX_INSTANCES) as u64;
    println!(
        "target SendCommand = ceil(instances / 50): {sends} = {expected_sends}: {}",
        verdict(sends == expected_sends && st.instances_sent == instances)
    );
    println!(
        "target ListCommandInvocations per poll round = commands: {polls} calls in {rounds} rounds = {:.2} per round, \
         {commands} commands: {}",
        polls as f64 / rounds.max(1) as f64,
        verdict(polls <= rounds * commands)
    );
    println!(
        "target describes independent of instances beyond pagination: {describes} = {paginated} by pagination \
         (survey, finding the snapshots, one completion poll): {}",
        verdict(describes == paginated)
    );
    println!(
        "target wall <= 1.10 x floor: wall {wall:.1} s / floor {floor:.1} s = {:.3}: {}; the poll interval's \
         share (last seen done - last agent done) {:.1} s = {:.3} of the floor",
        wall / floor,
        verdict(wall <= 1.10 * floor),
        last_seen - last_done,
        (last_seen - last_done) / floor
    );
    println!();
}

// --- a pass of DR copies -----------------------------------------------------------------------------------------

/// The regions of the copy pass: region codes, as copy rules require.
const DR_SOURCE: &str = "eu-west-1";
const DR_DESTINATION: &str = "eu-central-1";
/// AWS's limit on copies pending at once per destination region and account (and `daemon.copy-concurrency`'s
/// default).
const AWS_COPY_LIMIT: usize = 20;

/// The destination region as EBS runs copies, in front of its in-memory EC2 (behind the region's meter): a copy is
/// pending for `duration` after its CopySnapshot was answered and completed from then on, as the next call reaching
/// the region sees; at most [`AWS_COPY_LIMIT`] copies are pending at once (the in-memory EC2 refuses one more with
/// `ResourceLimitExceeded`, counted here). Notes when each copy completed and when a DescribeSnapshots first
/// showed it completed: how late the run learnt of it.
struct DrRegion {
    fake: Arc<FakeEc2>,
    duration: Duration,
    state: Mutex<DrState>,
}

#[derive(Default)]
struct DrState {
    /// Pending copies in the order made, each with when it completes (one duration for all, so in order).
    pending: VecDeque<(tokio::time::Instant, Arc<str>)>,
    /// Completed copies no describe has shown completed yet, with when they completed.
    unseen: HashMap<Arc<str>, tokio::time::Instant>,
    copied: u64,
    /// `ResourceLimitExceeded` answers.
    refused: u64,
    most_pending: usize,
    last_done: Option<tokio::time::Instant>,
    last_seen: Option<tokio::time::Instant>,
    /// Per copy, seen completed − completed: summed, the largest, how many.
    lag_sum: f64,
    lag_max: f64,
    seen: u64,
}

impl DrRegion {
    /// The destination region over `fake`, and its backend as the run sees it: AWS's meter (latency, buckets) in
    /// front of the copies' clock in front of the in-memory EC2.
    fn new(fake: Arc<FakeEc2>, duration: Duration, latency: Duration) -> (Arc<DrRegion>, Metered) {
        fake.set_max_pending_copies(Some(AWS_COPY_LIMIT));
        let dr = Arc::new(DrRegion {
            fake: fake.clone(),
            duration,
            state: Mutex::default(),
        });
        let (before, after) = (dr.clone(), dr.clone());
        let clocked = Hooked::new(fake)
            .before(move |call| {
                if matches!(call, Call::CopySnapshot(_) | Call::DescribeSnapshots(..)) {
                    before.complete_due();
                }
                Step::Go
            })
            .after(move |call, answer| {
                after.note(call, answer);
                Step::Go
            });
        (dr, Metered::new(Arc::new(clocked), latency, true))
    }

    /// Completes the copies whose time has come, so the call about to reach the in-memory EC2 sees them completed
    /// (and the copy limit counts them no more).
    fn complete_due(&self) {
        let now = tokio::time::Instant::now();
        let mut st = self.state.lock().unwrap();
        while st.pending.front().is_some_and(|(at, _)| *at <= now) {
            let (at, id) = st.pending.pop_front().expect("a pending copy");
            self.fake.set_snapshot_state(&id, SnapState::Completed);
            st.unseen.insert(id, at);
            st.last_done = Some(at);
        }
    }

    fn note(&self, call: &Call<'_>, answer: Answer<'_>) {
        let now = tokio::time::Instant::now();
        let mut st = self.state.lock().unwrap();
        match (call, answer) {
            (Call::CopySnapshot(_), Answer::Created(Ok(copy))) => {
                st.pending
                    .push_back((now + self.duration, Arc::clone(&copy.id)));
                st.copied += 1;
                st.most_pending = st.most_pending.max(st.pending.len());
            }
            (Call::CopySnapshot(_), Answer::Created(Err(e)))
                if e.code() == "ResourceLimitExceeded" =>
            {
                st.refused += 1
            }
            (Call::DescribeSnapshots(..), Answer::Snapshots(Ok(page))) => {
                for s in &page.items {
                    if let Some(done) = st.unseen.remove(&s.id) {
                        let lag = (now - done).as_secs_f64();
                        st.lag_sum += lag;
                        st.lag_max = st.lag_max.max(lag);
                        st.seen += 1;
                        st.last_seen = Some(now);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The pass policy with one copy rule: the newest snapshot of every volume to [`DR_DESTINATION`] (`keep = { last =
/// 1 }`), so a pass over a fresh destination copies one snapshot per volume.
fn copy_config(history: usize, consistency: &str) -> Config {
    let toml = format!(
        "{}[[policy.schedule.copy]]\nregion = \"{DR_DESTINATION}\"\nkeep = {{ last = 1 }}\n",
        policy_toml(history, consistency)
    );
    config::from_toml_str(std::path::Path::new("bench.toml"), &toml, &[]).expect("bench config")
}

/// The source side of a pass: when its last create or delete was answered (seconds from the run's start) and the
/// floor its requests imply (the largest group, as for `--volumes`).
fn source_side(p: &Pass, source: &Metered, pace: &PaceConfig) -> (f64, f64) {
    let end = [Op::CreateSnapshot, Op::CreateSnapshots, Op::DeleteSnapshot]
        .into_iter()
        .filter_map(|op| source.answered(op).map(|(_, last)| last))
        .max()
        .map_or(0.0, |last| (last - p.start).as_secs_f64());
    let floor = floors(&p.requests, pace).into_values().fold(0.0, f64::max);
    (end, floor)
}

/// A copy pass of `volumes` volumes to one destination, through the real worker (the copy phase under the
/// destination's copy-concurrency gate) and `Paced` for both regions, each region metered on its own buckets; and
/// the same source pass without copies, to compare the source side. Prints the copy calls, the refusals, the
/// timeline and the targets (docs/PERFORMANCE.md, "DR copies").
fn dr_copies(a: &Args, volumes: usize) {
    let pace = pace(a.budget);
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let d = a.copy.as_secs_f64();
    let l = a.latency.as_secs_f64();
    // The floor of `copies` copies in `calls` CopySnapshot calls: AWS's 20 pending copies, each pending `d`, and
    // the budgeted mutating bucket the calls take their tokens from.
    let m = pace.bucket(Group::Mutating, Instant::now());
    let floor_of = |copies: u64, calls: u64| {
        let gate = copies as f64 * d / AWS_COPY_LIMIT as f64;
        let bucket = ((calls as f64 - m.capacity) / m.refill_per_sec).max(0.0);
        (gate, bucket)
    };
    // One run makes every copy: its completion deadline (which bounds the copy phase too) is set past the pass,
    // unless `--copy-deadline-secs` gives the daemon's.
    let (gate, bucket) = floor_of(volumes as u64, volumes as u64);
    let deadline = a
        .copy_deadline
        .unwrap_or(DEADLINE + Duration::from_secs_f64(2.0 * gate.max(bucket)));

    let plain = {
        let (fake, _) = fake_estate(DR_SOURCE, volumes, a.history);
        fake.complete_after_describes(Some(1));
        let source = Arc::new(Metered::new(fake, a.latency, true));
        let config = policy_config(a.history, &a.consistency);
        let p = paused().block_on(pass(
            source.clone(),
            &config,
            pace.clone(),
            None,
            None,
            deadline,
        ));
        source_side(&p, &source, &pace)
    };

    let (fake, instances) = fake_estate(DR_SOURCE, volumes, a.history);
    fake.complete_after_describes(Some(1));
    let dest = Arc::new(FakeEc2::new(DR_DESTINATION));
    dest.set_clock(slot());
    FakeEc2::link_regions(&[fake.clone(), dest.clone()]);
    let source = Arc::new(Metered::new(fake, a.latency, true));
    let (dr, dr_metered) = DrRegion::new(dest, a.copy, a.latency);
    let config = copy_config(a.history, &a.consistency);
    let p = paused().block_on(pass(
        source.clone(),
        &config,
        pace.clone(),
        None,
        Some(&dr_metered),
        deadline,
    ));
    let copying = source_side(&p, &source, &pace);

    let st = dr.state.lock().unwrap();
    let dr_requests = dr_metered.requests();
    let calls = dr_requests.get(&Op::CopySnapshot).copied().unwrap_or(0);
    let (gate, bucket) = floor_of(st.copied, calls);
    let floor = gate.max(bucket);
    let end = p.start + p.wall;
    let since = |t: tokio::time::Instant| (t - p.start).as_secs_f64();
    // The copy phase from the first CopySnapshot sent (answered − latency) to the run's end.
    let first = dr_metered
        .answered(Op::CopySnapshot)
        .map_or(p.wall.as_secs_f64(), |(first, _)| since(first) - l);
    let wall = since(end) - first;
    let c = &p.report.copies;

    println!("== DR copies: {volumes} volumes ({instances} instances), {DR_SOURCE} -> {DR_DESTINATION} ==");
    println!(
        "run: result {}, created {}, deleted {}, problems {}; copies created {}, deferred {}, pending at the end {}; \
         copies pending {d:.0} s each, copy-concurrency {}, latency {} ms, budget {:.0}%, completion deadline {:.0} s",
        p.report.result().as_str(),
        p.report.created,
        p.report.deleted,
        p.report.problems.len(),
        c.created,
        c.deferred,
        c.pending,
        config.daemon.copy_concurrency,
        a.latency.as_millis(),
        a.budget * 100.0,
        deadline.as_secs_f64()
    );
    println!("requests the destination saw:");
    for (op, n) in &dr_requests {
        println!("  {op:<18} {n:>7}");
    }
    println!(
        "timeline (s from the run's start): source creates and deletes done {:.0}, first copy sent {first:.0}, last \
         copy completed {:.0}, last seen completed {:.0}, run over {:.0}; seen completed after completing: mean \
         {:.1} s, max {:.1} s over {} copies; most copies pending at once {}",
        copying.0,
        st.last_done.map_or(0.0, since),
        st.last_seen.map_or(0.0, since),
        since(end),
        st.lag_sum / st.seen.max(1) as f64,
        st.lag_max,
        st.seen,
        st.most_pending
    );
    println!(
        "copy floor {floor:.0} s = max(copies x {d:.0} s / {AWS_COPY_LIMIT} pending = {gate:.0} s, mutating bucket \
         ({calls} calls - {:.0} burst) / {:.1}/s = {bucket:.0} s)",
        m.capacity, m.refill_per_sec
    );
    if st.copied == volumes as u64 {
        println!(
            "target copy pass wall <= 1.10 x floor: {wall:.0} s / {floor:.0} s = {:.3}: {}",
            wall / floor.max(1e-9),
            verdict(wall <= 1.10 * floor)
        );
    } else {
        // The deadline ended the copy phase: the rest waits for the next runs.
        println!(
            "the completion deadline ended the pass: {} of {volumes} copies made by one run, {} deferred; at that \
             many a run, a backlog of {volumes} takes {} runs",
            st.copied,
            c.deferred,
            (volumes as u64).div_ceil(st.copied.max(1))
        );
    }
    println!(
        "target CopySnapshot calls = snapshots copied: {calls} calls, {} copied: {}",
        st.copied,
        verdict(calls == st.copied)
    );
    println!(
        "target ResourceLimitExceeded = 0: {} (and RequestLimitExceeded at the destination {}): {}",
        st.refused,
        dr_metered.throttled(),
        verdict(st.refused == 0)
    );
    let ratio = |(end, floor): (f64, f64)| end / floor.max(1e-9);
    println!(
        "target source pass unchanged by copies: creates and deletes done at {:.0} s / floor {:.0} s = {:.3} without \
         copies, {:.0} s / {:.0} s = {:.3} with: {}",
        plain.0,
        plain.1,
        ratio(plain),
        copying.0,
        copying.1,
        ratio(copying),
        verdict((ratio(copying) - ratio(plain)).abs() <= 0.01)
    );
    println!();
}

// --- planner micro-benchmark -------------------------------------------------------------------------------------

fn planner(n: usize) {
    let per_volume = 30;
    let volumes = n.div_ceil(per_volume);
    let config = {
        let toml = "[[policy]]\nname = \"prod\"\n[policy.target]\ntags = { Backup = \"true\" }\n\
                    [[policy.schedule]]\nname = \"daily\"\ncron = \"30 4 * * *\"\n\
                    keep = { last = 7, daily = 14, weekly = 8, monthly = 12 }\n";
        config::from_toml_str(std::path::Path::new("bench.toml"), toml, &[]).unwrap()
    };
    let policy = &config.policies[0];
    // The snapshots as a describe returns them, then as the survey digests them (tags parsed once, strings shared).
    let mut listed = Vec::with_capacity(n);
    'outer: for v in 0..volumes {
        let volume = format!("vol-{v:017x}");
        for d in 0..per_volume {
            if listed.len() == n {
                break 'outer;
            }
            let at = slot() - chrono::Duration::days(d as i64);
            listed.push(Snapshot {
                id: format!("snap-{:017x}", listed.len()).into(),
                volume_id: volume.as_str().into(),
                state: SnapState::Completed,
                start_time: at,
                owner_id: FAKE_ACCOUNT.into(),
                description: "".into(),
                tags: Tags::from([
                    (ec2::TAG_MANAGED.into(), "true".into()),
                    (ec2::TAG_POLICY.into(), "prod".into()),
                    (ec2::TAG_SCHEDULE.into(), "daily".into()),
                    (ec2::TAG_SLOT.into(), format_slot(at)),
                ])
                .into(),
            });
        }
    }
    let mut survey = Survey::default();
    let t = Instant::now();
    for s in &listed {
        let snap = survey.digest(s);
        survey.snapshots.push(snap);
    }
    let digest = t.elapsed();
    drop(listed);
    let rules: Vec<ScheduleRules> = policy
        .schedules
        .iter()
        .map(|s| ScheduleRules {
            name: s.name.as_str().into(),
            keep: s.keep.clone(),
            count_from_tag: false,
        })
        .collect();
    let counts = Default::default();
    let frozen = HashSet::new();
    let input = PlanInput {
        held: &snapwarden::retention::NOTHING_HELD,
        snapshots: &survey.snapshots,
        schedules: &rules,
        counts: &counts,
        frozen_volumes: &frozen,
        tz: policy.timezone,
        targeted: None,
        orphans: policy.orphans,
        caps: policy.caps,
    };
    // Best of three: the machine is shared.
    let mut pure = Duration::MAX;
    let mut deletes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let plan = retention::plan(&input, slot());
        pure = pure.min(t.elapsed());
        deletes = plan.deletes().count();
    }
    let t = Instant::now();
    let plan = worker::plan_retention(policy, &survey, &frozen, policy.timezone, slot(), None);
    let full = t.elapsed();
    // The worker's plan treats the (absent) targets as orphans under keep-rules: the same deletes.
    assert_eq!(plan.deletes().count(), deletes, "same plan both ways");
    println!("== planner: {n} snapshots ({volumes} volumes × {per_volume}), keep last 7 + daily 14 + weekly 8 + monthly 12 ==");
    println!(
        "retention::plan {:.3} s (best of 3; {deletes} deletes); worker::plan_retention {:.3} s; digesting the \
         described snapshots into the survey (once per survey, page by page) {:.3} s",
        pure.as_secs_f64(),
        full.as_secs_f64(),
        digest.as_secs_f64()
    );
    println!();
}

// --- the same pass against moto ----------------------------------------------------------------------------------

/// Builds the estate shape in moto through the raw SDK (instances with their volumes, H tagged history snapshots per
/// volume), runs the pass through `SdkEc2`, and compares the requests with an in-memory pass of the same shape.
fn moto(a: &Args) {
    let moto = common::Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let shape = shape(a.moto_volumes);
    let config = policy_config(a.moto_history, &a.consistency);
    let fast = PaceConfig {
        per_volume_gap: Duration::ZERO,
        ..pace(1.0)
    };
    let (moto_requests, report) = rt.block_on(async {
        let conf = moto.sdk_config().await;
        let raw = aws_sdk_ec2::Client::new(&conf);
        for (i, &k) in shape.iter().enumerate() {
            let name = format!("web-{i}");
            let tags = [("Backup", "true"), ("Name", name.as_str())];
            let (id, _) = common::launch_instance(&raw, &tags, &common::DEVICES[..k]).await;
            let vols = raw
                .describe_volumes()
                .filters(common::filter("attachment.instance-id", &[&id]))
                .send()
                .await
                .expect("DescribeVolumes");
            for v in vols.volumes() {
                let device = v.attachments()[0].device().unwrap_or_default().to_string();
                for day in 1..=a.moto_history as i64 {
                    let tags = history_tags(&id, &device, day);
                    let tags: Vec<(&str, &str)> =
                        tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    common::moto_snapshot(&raw, v.volume_id().unwrap(), &tags).await;
                }
            }
        }
        let sdk: Arc<dyn Ec2> = Arc::new(ec2::sdk::SdkEc2::new(&conf));
        let metered = Arc::new(Metered::new(sdk, Duration::ZERO, false));
        let p = pass(metered, &config, fast.clone(), None, None, DEADLINE).await;
        (p.requests, p.report)
    });
    drop(moto);

    let (fake, _) = fake_estate("bench-moto", a.moto_volumes, a.moto_history);
    fake.complete_after_describes(Some(1));
    let metered = Arc::new(Metered::new(fake, Duration::ZERO, false));
    let memory = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(pass(metered, &config, fast, None, None, DEADLINE))
        .requests;

    println!(
        "== moto: {} instances, {} volumes, {} snapshots of history each; result {}, created {}, deleted {} ==",
        shape.len(),
        a.moto_volumes,
        a.moto_history,
        report.result().as_str(),
        report.created,
        report.deleted
    );
    let ops: std::collections::BTreeSet<Op> =
        moto_requests.keys().chain(memory.keys()).copied().collect();
    let mut same = true;
    println!("  {:<18} {:>7} {:>9}", "operation", "moto", "in-memory");
    for op in ops {
        let (m, f) = (
            moto_requests.get(&op).copied().unwrap_or(0),
            memory.get(&op).copied().unwrap_or(0),
        );
        same &= m == f;
        println!(
            "  {op:<18} {m:>7} {f:>9}{}",
            if m == f { "" } else { "  differs" }
        );
    }
    println!(
        "request counts {}",
        if same { "match" } else { "DIFFER (see above)" }
    );
    println!();
}

// --- a fleet of account-regions ----------------------------------------------------------------------------------

/// The fairness case's two odd pairs (`--fairness`): a small account next to a big one, among the others.
const FAIRNESS: [usize; 2] = [10, 5000];

/// What one pair did in a fleet pass.
struct PairRun {
    volumes: usize,
    /// When its run ended, from the start of the fire (tokio's clock).
    took: Duration,
    requests: BTreeMap<Op, u64>,
    throttled: u64,
    report: snapwarden::report::RunReport,
}

/// The volumes of each pair: `--volumes` each, the first two `FAIRNESS` with `--fairness`.
fn fleet_sizes(a: &Args) -> Vec<usize> {
    let mut sizes = vec![a.pair_volumes; a.pairs];
    if a.fairness {
        for (size, odd) in sizes.iter_mut().zip(FAIRNESS) {
            *size = odd;
        }
    }
    sizes
}

/// One fire over `pairs` (each an estate's meter): every pair its own backend through `daemon::paced_region` — its
/// own token buckets and pending accounting, the process's one `max-concurrent-aws-calls` semaphore — and every
/// pair's `worker::run` joined, as `daemon::fire` runs a policy's scopes.
async fn fleet_fire(
    pairs: &[(usize, Arc<Metered>)],
    config: &Config,
    pace: &PaceConfig,
) -> Vec<PairRun> {
    let shared = daemon::Shared::new(config.clone());
    let permits = Arc::new(tokio::sync::Semaphore::new(
        config.daemon.max_concurrent_aws_calls,
    ));
    let mut regions = Vec::new();
    for (_, metered) in pairs {
        let region =
            daemon::paced_region(&shared, metered.ec2.clone(), permits.clone(), pace.clone())
                .await
                .expect("a pair's region");
        regions.push(region);
    }
    let policy = &config.policies[0];
    let t0 = tokio::time::Instant::now();
    let runs = regions.iter().zip(pairs).map(|(r, (volumes, metered))| {
        let spec = r
            .spec(policy, slot())
            .firing(["daily"])
            .concurrency(config.daemon.max_concurrent_aws_calls)
            .completion(Completion::within(DEADLINE));
        let metrics = shared.metrics.clone();
        async move {
            let now = move || slot() + chrono::Duration::from_std(t0.elapsed()).unwrap_or_default();
            let out = worker::run(r.ec2.as_ref(), &spec, &metrics, now).await;
            PairRun {
                volumes: *volumes,
                took: t0.elapsed(),
                requests: metered.requests(),
                throttled: metered.throttled(),
                report: out.report,
            }
        }
    });
    futures::future::join_all(runs).await
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A pair's estate behind AWS's meter, completing each snapshot on its first poll as the single pass does.
fn fleet_pair(i: usize, volumes: usize, history: usize, latency: Duration) -> Arc<Metered> {
    let (fake, _) = fake_estate(&format!("bench-fleet-{i:03}"), volumes, history);
    fake.complete_after_describes(Some(1));
    Arc::new(Metered::new(fake, latency, true))
}

/// The largest group's bucket floor of `requests`, in seconds (as the single pass computes it).
fn floor_of(requests: &BTreeMap<Op, u64>, pace: &PaceConfig) -> f64 {
    floors(requests, pace).values().cloned().fold(0.0, f64::max)
}

/// A fleet of `--pairs` account-regions in one process (docs/PERFORMANCE.md, "Many accounts"): first each distinct
/// pair size alone (its own fire, its own semaphore), then all of them in one fire; prints the fire's wall time
/// against the slowest pair's floor, every pair's time against its own floor and its time alone, the AWS refusals,
/// the worker heap peak and the CPU.
fn fleet(a: &Args) {
    let sizes = fleet_sizes(a);
    let config = policy_config(a.history, &a.consistency);
    let pace = pace(a.budget);
    let calls = config.daemon.max_concurrent_aws_calls;

    // Each size alone: the reference for a pair whose bucket floor is within the buckets' bursts (0 s).
    let mut alone: BTreeMap<usize, Duration> = BTreeMap::new();
    for &volumes in sizes.iter().collect::<std::collections::BTreeSet<_>>() {
        let pair = fleet_pair(0, volumes, a.history, a.latency);
        let runs = paused().block_on(fleet_fire(&[(volumes, pair)], &config, &pace));
        alone.insert(volumes, runs[0].took);
    }

    let built = Instant::now();
    let live_before_estate = LIVE.load(Relaxed);
    let pairs: Vec<(usize, Arc<Metered>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &volumes)| (volumes, fleet_pair(i, volumes, a.history, a.latency)))
        .collect();
    let estate_heap = LIVE.load(Relaxed) - live_before_estate;
    let build_secs = built.elapsed().as_secs_f64();

    reset_hwm();
    let (_, rss_before) = rss();
    let live_before = LIVE.load(Relaxed);
    PEAK.store(live_before, Relaxed);
    let cpu0 = cpu();
    let real0 = Instant::now();
    let runs = paused().block_on(fleet_fire(&pairs, &config, &pace));
    let real = real0.elapsed();
    let cpu = cpu() - cpu0;
    let worker_peak = PEAK.load(Relaxed).saturating_sub(live_before);
    let (hwm, _) = rss();

    let volumes: usize = sizes.iter().sum();
    println!(
        "== fleet: {} account-regions, {volumes} volumes, {} snapshots of history ==",
        sizes.len(),
        volumes * a.history
    );
    println!(
        "estates built in {build_secs:.1} s, {:.1} MiB of heap; consistency {}, latency {} ms, budget {:.0}% of \
         AWS's buckets, max-concurrent-aws-calls {calls} (one semaphore for the process)",
        mib(estate_heap),
        a.consistency,
        a.latency.as_millis(),
        a.budget * 100.0
    );
    let wall = runs
        .iter()
        .map(|r| r.took)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let floor = runs
        .iter()
        .map(|r| floor_of(&r.requests, &pace))
        .fold(0.0, f64::max);
    // A pair's target: its own bucket floor, or its time alone when that is longer (a floor within the bursts
    // leaves only the latency of its calls one after another, which no concurrency removes).
    let mut worst: Option<(f64, usize)> = None;
    println!(
        "  {:>4} {:>7} {:<8} {:>7} {:>7} {:>8} {:>7} {:>7} {:>8} {:>9}",
        "pair",
        "volumes",
        "result",
        "created",
        "deleted",
        "requests",
        "refused",
        "floor",
        "alone",
        "fleet"
    );
    let show = |i: usize, r: &PairRun| {
        let f = floor_of(&r.requests, &pace);
        let own = alone[&r.volumes].as_secs_f64();
        let took = r.took.as_secs_f64();
        let total: u64 = r.requests.values().sum();
        println!(
            "  {i:>4} {:>7} {:<8} {:>7} {:>7} {total:>8} {:>7} {f:>6.0}s {own:>7.1}s {took:>8.1}s  \
             fleet/floor {:.3}, fleet/alone {:.3}",
            r.volumes,
            r.report.result().as_str(),
            r.report.created,
            r.report.deleted,
            r.throttled,
            took / f.max(1e-9),
            took / own.max(1e-9),
        );
    };
    for (i, r) in runs.iter().enumerate() {
        let own = floor_of(&r.requests, &pace).max(alone[&r.volumes].as_secs_f64());
        let ratio = r.took.as_secs_f64() / own.max(1e-9);
        if worst.is_none_or(|(w, _)| ratio > w) {
            worst = Some((ratio, i));
        }
        // The odd pairs and the first and last of the others; every pair is in the summary below.
        if i < 3 || i + 1 == runs.len() || r.volumes != a.pair_volumes {
            show(i, r);
        }
    }
    let ok = runs
        .iter()
        .all(|r| r.report.result().as_str() == "success" && r.throttled == 0);
    println!(
        "every run ok and no AWS refusal: {}",
        if ok { "yes" } else { "NO (see above)" }
    );
    println!(
        "wall (virtual) {wall:.0} s = {:.1} min; the slowest pair's floor {floor:.0} s, wall/floor {:.3} \
         (target ≤ 1.05: {})",
        wall / 60.0,
        wall / floor.max(1e-9),
        verdict(wall <= 1.05 * floor)
    );
    if let Some((ratio, i)) = worst {
        println!(
            "every pair within 1.05 × its own floor (its time alone when that is longer): worst pair {i} \
             ({} volumes) {ratio:.3} ({})",
            runs[i].volumes,
            verdict(ratio <= 1.05)
        );
    }
    println!(
        "real time {:.2} s, CPU {:.2} s; peak RSS {:.1} MiB (before the fire {:.1} MiB, the in-memory EC2s' \
         estates included); worker heap peak {:.1} MiB (target ≤ 300 MiB: {})",
        real.as_secs_f64(),
        cpu.as_secs_f64(),
        mib(hwm),
        mib(rss_before),
        mib(worker_peak),
        verdict(mib(worker_peak) <= 300.0)
    );
    println!();
}

/// Each measurement runs in a process of its own: freed memory is not handed back to the OS at once, so a pass
/// after a bigger one would report the bigger one's RSS.
fn main() {
    let a = args();
    let mut jobs: Vec<Vec<String>> = Vec::new();
    if a.planner > 0 {
        jobs.push(vec![
            "--planner".into(),
            a.planner.to_string(),
            "--volumes".into(),
            "0".into(),
        ]);
    }
    for &n in &a.volumes {
        jobs.push(vec![
            "--planner".into(),
            "0".into(),
            "--volumes".into(),
            n.to_string(),
        ]);
    }
    for &n in &a.vss {
        jobs.push(vec![
            "--planner".into(),
            "0".into(),
            "--volumes".into(),
            "0".into(),
            "--vss".into(),
            n.to_string(),
        ]);
    }
    for &n in &a.copies {
        jobs.push(vec![
            "--planner".into(),
            "0".into(),
            "--volumes".into(),
            "0".into(),
            "--copies".into(),
            n.to_string(),
        ]);
    }
    if a.pairs > 0 {
        let mut job: Vec<String> = ["--planner", "0", "--pairs"].map(String::from).into();
        job.extend([
            a.pairs.to_string(),
            "--volumes".into(),
            a.pair_volumes.to_string(),
        ]);
        if a.fairness {
            job.push("--fairness".into());
        }
        jobs.push(job);
    }
    if std::env::var_os("SNAPWARDEN_SCALE_CHILD").is_some() || jobs.len() + a.moto as usize <= 1 {
        if a.planner > 0 {
            planner(a.planner);
        }
        for &n in &a.volumes {
            in_memory(&a, n);
        }
        for &n in &a.vss {
            vss_fire(&a, n);
        }
        for &n in &a.copies {
            dr_copies(&a, n);
        }
        if a.pairs > 0 {
            fleet(&a);
        }
        if a.moto {
            moto(&a);
        }
        return;
    }
    let common = [
        "--history".to_string(),
        a.history.to_string(),
        "--latency-ms".into(),
        a.latency.as_millis().to_string(),
        "--budget".into(),
        a.budget.to_string(),
        "--consistency".into(),
        a.consistency.clone(),
        "--moto-volumes".into(),
        a.moto_volumes.to_string(),
        "--moto-history".into(),
        a.moto_history.to_string(),
        "--agent-secs".into(),
        a.agent.as_secs_f64().to_string(),
        "--poll-first-ms".into(),
        a.polling.first.as_millis().to_string(),
        "--poll-max-ms".into(),
        a.polling.max.as_millis().to_string(),
        "--copy-secs".into(),
        a.copy.as_secs_f64().to_string(),
    ];
    let common: Vec<String> = common
        .into_iter()
        .chain(
            a.copy_deadline
                .iter()
                .flat_map(|d| ["--copy-deadline-secs".into(), d.as_secs_f64().to_string()]),
        )
        .collect();
    if a.moto {
        jobs.push(vec![
            "--planner".into(),
            "0".into(),
            "--volumes".into(),
            "0".into(),
            "--moto".into(),
        ]);
    }
    let me = std::env::current_exe().expect("own path");
    for job in jobs {
        let status = std::process::Command::new(&me)
            .args(&job)
            .args(&common)
            .env("SNAPWARDEN_SCALE_CHILD", "1")
            .status()
            .expect("benchmark child starts");
        assert!(status.success(), "benchmark job {job:?} failed: {status}");
    }
}
