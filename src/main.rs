//! The `snapwarden` command line: parses arguments, loads the config (exit 78 on a bad one), sets up logging and
//! hands over to the library. Exit codes: 0 done, 1 runtime failure, 2 a one-shot run ended partial, 3 `plan
//! --fail-on-delete` found deletions, 64 bad arguments, 75 another snapwarden process holds the policy or slot,
//! 78 bad config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use snapwarden::config::{self, Config, ConfigError};
use snapwarden::daemon::{self, Shared};
use snapwarden::ec2::Ec2;
use snapwarden::lock::{Held, LockDir, Refused};
use snapwarden::logging::{self, Console};
use snapwarden::notify::Notifier;
use snapwarden::report::RunResult;
use snapwarden::schedule::{self, format_slot};
use snapwarden::worker;

/// mimalloc instead of glibc's malloc: a run digests, plans and drops a small record per snapshot, and `simulate`
/// does that thousands of times; allocation was a quarter of its time. Built without its transparent huge page
/// advice (`no_thp`): with it the idle daemon's RSS grew from 17 to 28 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "snapwarden",
    version,
    about = "Keeps EBS snapshots of tagged EC2 instances on schedule and prunes them by policy"
)]
struct Cli {
    /// Config file [default: $SNAPWARDEN_CONFIG, else /etc/snapwarden/snapwarden.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: scheduler, workers, HTTP (/healthz /readyz /metrics /status).
    Run,
    /// Check the config and exit (78 with every problem listed when it is bad).
    Validate,
    /// Run one schedule's latest slot (or --slot) now, then its retention.
    Once {
        #[arg(long)]
        policy: String,
        #[arg(long)]
        schedule: String,
        /// The slot to run, RFC 3339 (must be a fire time of the schedule) [default: its latest fire time]
        #[arg(long)]
        slot: Option<String>,
        /// Print what would be created and deleted; touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Accept a --slot later than now. Without it such a slot is refused (exit 64): it is far more often a
        /// typo than intent, and retention keeps its snapshots aside as `future-slot` until that time comes.
        #[arg(long)]
        allow_future_slot: bool,
        /// Only these accounts (repeat the flag or separate names with commas): an `[[aws.account]]` name, the
        /// own account's id, or `own` [default: every account served]
        #[arg(long = "account", value_name = "NAME", value_delimiter = ',')]
        accounts: Vec<String>,
    },
    /// The whole daemon against an in-memory EC2 fleet with fast schedules: watch /status and /metrics fill up.
    Demo {
        /// Listen address [default: the demo config's 127.0.0.1:9180]
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Every managed snapshot with keep/delete and the reasons, against live data. Changes nothing. With
    /// --against, the config given by --config is the new one and only what it changes is listed.
    Plan {
        #[arg(long)]
        policy: Option<String>,
        /// One JSON array: a row per snapshot (a change per snapshot with --against); see the README.
        #[arg(long)]
        json: bool,
        /// Evaluate as if now were this time (RFC 3339, or YYYY-MM-DD for midnight UTC): ages and orphan expiry
        /// are measured from it and snapshots with a later slot are left out.
        #[arg(long)]
        at: Option<String>,
        /// Diff mode: the config the daemon runs now. Lists what --config (the new file) would delete that this
        /// one keeps, and the reverse, with both reasons.
        #[arg(long, value_name = "CURRENT_CONFIG")]
        against: Option<PathBuf>,
        /// Exit 3 when anything would be deleted (with --against: anything the current config keeps) or a
        /// deletion cap blocks the plan.
        #[arg(long)]
        fail_on_delete: bool,
    },
    /// Runs the config's schedules and retention over simulated time on the in-memory backend: what it costs.
    Simulate {
        /// Start of simulated time (RFC 3339 or YYYY-MM-DD, UTC)
        #[arg(long)]
        from: String,
        #[arg(long, default_value_t = 400)]
        days: u32,
        /// Volumes per policy (alike: every figure but the created/deleted totals is per volume; time is linear
        /// in this)
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        volumes: u32,
        /// Value of count tags, for schedules that read their keep count from a tag
        #[arg(long, default_value_t = 7)]
        count_tag_value: u32,
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Upcoming fire times in the configured timezone.
    Next {
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Demo { listen } => demo_config(cli.config.as_deref(), *listen),
        _ => load(cli.config.as_deref()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(ConfigError::EXIT_CODE as u8);
        }
    };
    if let Command::Validate = cli.command {
        let schedules: usize = config.policies.iter().map(|p| p.schedules.len()).sum();
        println!(
            "{}: OK ({} policies, {schedules} schedules)",
            config.source.display(),
            config.policies.len()
        );
        return ExitCode::SUCCESS;
    }
    let console = if matches!(cli.command, Command::Run | Command::Demo { .. }) {
        Console::Stdout
    } else {
        Console::Stderr
    };
    let mut log = config.log.clone();
    if matches!(cli.command, Command::Simulate { .. }) {
        // Thousands of simulated runs: their per-run lines would bury the report.
        log.level = "warn".into();
    }
    let _guard = match logging::init(&log, console) {
        Ok(g) => g,
        Err(e) => {
            eprintln!(
                "{}: log: {e}; fix log.file.directory or its permissions",
                config.source.display()
            );
            return ExitCode::from(ConfigError::EXIT_CODE as u8);
        }
    };
    if matches!(cli.command, Command::Run | Command::Demo { .. }) {
        raise_fd_limit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("snapwarden: {e:#}");
            match e.downcast_ref::<snapwarden::error::Error>() {
                Some(snapwarden::error::Error::Config(_)) => {
                    ExitCode::from(ConfigError::EXIT_CODE as u8)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Raises the soft descriptor limit to the hard one before any thread starts: the common soft default of 1,024
/// is a leftover for select(2), which nothing here uses, and the hard limit is what the host grants. Both values
/// are logged; failing to raise (a seccomp filter, say) is a warning, not a reason to stop.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
        return;
    }
    let before = limit.rlim_cur;
    // An unlimited hard limit still stops at the kernel's fs.nr_open (2^20 by default).
    let target = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = target;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft = before, hard = limit.rlim_max, "cannot raise the open-file limit; set LimitNOFILE= (systemd) or --ulimit nofile= (containers)");
        }
    }
    tracing::info!(
        soft_before = before,
        soft = limit.rlim_cur,
        hard = limit.rlim_max,
        "open-file limit (RLIMIT_NOFILE)"
    );
}

/// Exit code when another snapwarden process holds a lock this one needs (EX_TEMPFAIL: try again later).
const LOCKED: u8 = 75;

/// The lock of every policy of the config, or why not: a second daemon with one of these policies would double
/// every slot. A lock directory that cannot be used is warned about and the daemon starts anyway.
async fn daemon_locks(config: &Config, locks: &LockDir) -> Result<Vec<Held>, String> {
    let mut held = Vec::new();
    for p in &config.policies {
        match locks.try_daemon(&p.name).await {
            Ok(h) => held.push(h),
            Err(e @ Refused::Busy { .. }) => {
                return Err(format!(
                    "policy `{}` is already run by another snapwarden daemon on this host: {e}; stop that one \
                     first, or remove the policy from {}",
                    p.name,
                    config.source.display()
                ))
            }
            Err(e) => {
                tracing::warn!(policy = %p.name, error = %e, "running without the host lock");
            }
        }
    }
    Ok(held)
}

fn load(cli: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let path = config::resolve_path(cli);
    let env: Vec<(String, String)> = std::env::vars().collect();
    config::load(&path, &env)
}

fn demo_config(
    cli: Option<&std::path::Path>,
    listen: Option<std::net::SocketAddr>,
) -> Result<Config, ConfigError> {
    let mut c = match cli {
        Some(path) => load(Some(path))?,
        None => config::from_toml_str(
            std::path::Path::new("(built-in demo config)"),
            snapwarden::demo::DEMO_CONFIG,
            &[],
        )?,
    };
    if let Some(l) = listen {
        c.daemon.listen = l;
    }
    Ok(c)
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate => unreachable!("handled before the runtime starts"),
        Command::Run => {
            let locks = LockDir::resolve(
                config.daemon.lock_dir.as_deref(),
                std::env::var("RUNTIME_DIRECTORY").ok().as_deref(),
            );
            let _daemon_locks = match daemon_locks(&config, &locks).await {
                Ok(held) => held,
                Err(message) => {
                    eprintln!("snapwarden: {message}");
                    return Ok(ExitCode::from(LOCKED));
                }
            };
            let mut shared = Shared::new(config);
            shared.locks = Some(locks);
            shared.sd = Arc::new(snapwarden::sdnotify::SdNotify::from_env(|k| {
                std::env::var(k).ok()
            }));
            let pace = daemon::pace_config(&shared.config);
            let fleet = daemon::aws_fleet(&shared, &pace)
                .await
                .context("cannot start")?;
            let publisher = daemon::sns_publisher(&shared.config).await;
            serve(shared, fleet, publisher).await
        }
        Command::Demo { .. } => {
            let shared = Shared::new(config);
            let fake = snapwarden::demo::fleet();
            let permits = Arc::new(tokio::sync::Semaphore::new(
                shared.config.daemon.max_concurrent_aws_calls,
            ));
            let region = daemon::region(&shared, fake.clone(), permits).await?;
            let stop = CancellationToken::new();
            tokio::spawn(snapwarden::demo::complete_snapshots(fake, stop.clone()));
            println!(
                "snapwarden demo: in-memory EC2 fleet, schedules firing every few seconds.\n  http://{0}/status\n  http://{0}/metrics\nCtrl-C to stop.",
                shared.config.daemon.listen
            );
            let code = serve(shared, vec![region], None).await;
            stop.cancel();
            code
        }
        Command::Once {
            policy,
            schedule,
            slot,
            dry_run,
            allow_future_slot,
            accounts,
        } => {
            if let Some(refused) =
                future_slot_refused(slot.as_deref(), allow_future_slot, Utc::now())
            {
                eprintln!("snapwarden: {refused}");
                return Ok(ExitCode::from(64));
            }
            let args = OnceArgs {
                policy: &policy,
                schedule: &schedule,
                slot: slot.as_deref(),
                dry_run,
                accounts: &accounts,
            };
            once(config, &args).await
        }
        Command::Plan {
            policy,
            json,
            at,
            against,
            fail_on_delete,
        } => {
            let current = match against.as_deref().map(|p| load(Some(p))).transpose() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("--against: {e}");
                    return Ok(ExitCode::from(ConfigError::EXIT_CODE as u8));
                }
            };
            let opts = PlanArgs {
                policy: policy.as_deref(),
                json,
                at: at.as_deref(),
                fail_on_delete,
            };
            plan(config, current, &opts).await
        }
        Command::Simulate {
            from,
            days,
            volumes,
            count_tag_value,
            policy,
            json,
        } => {
            let from = schedule::parse_slot(&from)
                .or_else(|| schedule::parse_slot(&format!("{from}T00:00:00Z")))
                .with_context(|| {
                    format!("--from `{from}`: write a date (2026-01-01) or RFC 3339 time")
                })?;
            if let Some(name) = &policy {
                if config.policy(name).is_none() {
                    bail!("no policy `{name}` in {}", config.source.display());
                }
            }
            let opts = snapwarden::simulate::SimOptions {
                from,
                days,
                volumes: volumes as usize,
                count_tag_value,
                policy,
            };
            let started = std::time::Instant::now();
            let report = snapwarden::simulate::simulate(&config, &opts).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", snapwarden::simulate::render(&report));
                println!("({:.2} s)", started.elapsed().as_secs_f64());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Next { count } => {
            print!("{}", snapwarden::next::upcoming(&config, Utc::now(), count));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT; a second signal exits at once.
async fn serve(
    shared: Shared,
    regions: impl Into<daemon::Fleet>,
    publisher: Option<Arc<dyn snapwarden::notify::Publisher>>,
) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    // Installed before READY=1: from then on systemd may send SIGHUP, whose default action ends the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    tokio::spawn(reloads(shared.clone(), hup));
    let drained = daemon::serve(shared, regions, publisher, true, shutdown).await?;
    tracing::info!(drained, "stopped");
    Ok(if drained {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: finishing in-flight runs (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!("second signal: exiting now");
    std::process::exit(130);
}

/// SIGHUP: re-reads the file the daemon started from (with the environment's overrides, as at start) and offers it
/// to the scheduler; `daemon::reload` decides and reports.
async fn reloads(shared: Shared, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!(file = %shared.config.source.display(), "SIGHUP: reloading the config");
        daemon::reload(&shared, load(Some(&shared.config.source)));
    }
}

/// Why `once --slot` refuses `slot`, if it does: a slot later than `now` (beyond the planner's skew allowance)
/// without `--allow-future-slot`.
fn future_slot_refused(slot: Option<&str>, allowed: bool, now: DateTime<Utc>) -> Option<String> {
    let t = schedule::parse_slot(slot?)?;
    let limit = now + snapwarden::retention::FUTURE_SLOT_ALLOWANCE;
    (t > limit && !allowed).then(|| {
        format!(
            "--slot {} is in the future (now is {}); snapshots tagged with it would be set aside by retention as \
             `future-slot`. Check the date, or pass --allow-future-slot if it is intended",
            format_slot(t),
            format_slot(now)
        )
    })
}

struct OnceArgs<'a> {
    policy: &'a str,
    schedule: &'a str,
    slot: Option<&'a str>,
    dry_run: bool,
    /// `--account`: empty for every account served.
    accounts: &'a [String],
}

async fn once(config: Config, args: &OnceArgs<'_>) -> anyhow::Result<ExitCode> {
    let (policy, schedule_name, slot, dry_run) =
        (args.policy, args.schedule, args.slot, args.dry_run);
    let tz = config.daemon.timezone;
    let Some(p) = config.policy(policy).cloned() else {
        let names: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no policy `{policy}` in {}; policies: {}",
            config.source.display(),
            names.join(", ")
        );
    };
    let Some(s) = p.schedule(schedule_name).cloned() else {
        let names: Vec<&str> = p.schedules.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "policy `{policy}` has no schedule `{schedule_name}`; schedules: {}",
            names.join(", ")
        );
    };
    let slot: DateTime<Utc> = match slot {
        Some(text) => {
            let t = schedule::parse_slot(text).with_context(|| {
                format!("--slot `{text}` is not RFC 3339; write e.g. 2026-11-21T04:30:00Z")
            })?;
            if s.cron.latest_at_or_before(t, tz) != Some(t) {
                let near = s
                    .cron
                    .latest_at_or_before(t, tz)
                    .map(format_slot)
                    .unwrap_or_default();
                bail!("--slot {text} is not a fire time of {policy}/{schedule_name} (`{}` in {tz}); the latest one before it is {near}", s.cron.as_str());
            }
            t
        }
        None => s
            .cron
            .latest_at_or_before(Utc::now(), tz)
            .context("the schedule has never fired")?,
    };
    let firing = daemon::firing_at(&p, slot, tz);
    // A dry run changes nothing, so it needs no lock and may look while a real run works.
    let _slot_lock = if dry_run {
        None
    } else {
        let locks = LockDir::resolve(
            config.daemon.lock_dir.as_deref(),
            std::env::var("RUNTIME_DIRECTORY").ok().as_deref(),
        );
        match locks.try_slot(policy, slot).await {
            Ok(held) => Some(held),
            Err(e @ Refused::Busy { .. }) => {
                eprintln!(
                    "snapwarden: {policy} slot {} is being worked on by another process: {e}; it creates the \
                     slot's snapshots — run `once` again after it has finished if it fails",
                    format_slot(slot)
                );
                return Ok(ExitCode::from(LOCKED));
            }
            Err(e) => {
                tracing::warn!(error = %e, "running without the host lock");
                None
            }
        }
    };
    let shared = Shared::new(config);
    let regions = daemon::aws_regions(&shared).await.context("cannot start")?;
    let regions = match snapwarden::once::select(&regions, &p, args.accounts) {
        Ok(chosen) => chosen,
        Err(message) => {
            eprintln!("snapwarden: {message}");
            return Ok(ExitCode::from(64));
        }
    };
    let (notifier, notify_task) = if dry_run {
        (None, None)
    } else {
        let (n, t) = Notifier::spawn(
            daemon::sns_publisher(&shared.config).await,
            shared.config.notify.dedup_window(),
            shared.metrics.clone(),
        );
        (Some(n), Some(t))
    };
    let mut worst = RunResult::Success;
    for r in regions {
        // A dry run copies nothing either: its destinations pretend too.
        let dry = dry_run.then(|| snapwarden::once::DryRegion::new(r));
        let ec2: &dyn Ec2 = match &dry {
            Some(d) => d.ec2.as_ref(),
            None => r.ec2.as_ref(),
        };
        // Only the deletions are printed: not explained.
        let mut spec = r.spec(&p, slot);
        if let Some(d) = &dry {
            spec = spec.destinations(&d.destinations);
        }
        let spec = spec
            .firing(firing.clone())
            .concurrency(shared.config.daemon.max_concurrent_aws_calls)
            .completion(worker::Completion::within(
                shared.config.daemon.completion_deadline,
            ));
        let outcome = worker::run(ec2, &spec, &shared.metrics, Utc::now).await;
        let logs = dry.as_ref().map(|d| d.logs());
        print!(
            "{}",
            snapwarden::once::region_lines(&outcome, logs.as_ref())
        );
        worst = worst.max_severity(outcome.report.result());
        if let Some(n) = &notifier {
            n.submit(outcome.report, &shared.metrics);
        }
    }
    drop(notifier);
    if let Some(t) = notify_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), t).await;
    }
    Ok(match worst {
        RunResult::Success => ExitCode::SUCCESS,
        RunResult::Partial => ExitCode::from(2),
        RunResult::Failure => ExitCode::FAILURE,
    })
}

struct PlanArgs<'a> {
    policy: Option<&'a str>,
    json: bool,
    at: Option<&'a str>,
    fail_on_delete: bool,
}

async fn plan(
    config: Config,
    current: Option<Config>,
    args: &PlanArgs<'_>,
) -> anyhow::Result<ExitCode> {
    if let Some(name) = args.policy {
        let known = |c: &Config| c.policy(name).is_some();
        if !known(&config) && !current.as_ref().is_some_and(known) {
            bail!("no policy `{name}` in {}", config.source.display());
        }
    }
    let at = match args.at {
        Some(text) => schedule::parse_slot(text)
            .or_else(|| schedule::parse_slot(&format!("{text}T00:00:00Z")))
            .with_context(|| {
                format!("--at `{text}`: write an RFC 3339 time (2026-03-01T12:00:00Z) or a date")
            })?,
        None => Utc::now(),
    };
    let shared = Shared::new(config);
    let regions = daemon::aws_regions(&shared).await.context("cannot start")?;
    let req = snapwarden::plan::Request {
        new: &shared.config,
        current: current.as_ref(),
        policy: args.policy,
        at,
        now: Utc::now(),
    };
    let gathered = snapwarden::plan::gather(&regions, &req).await?;
    let out = snapwarden::plan::output(&gathered, at, current.is_some(), args.json)?;
    // On stderr as well, so a cap verdict is seen even when stdout goes to a file or a JSON parser.
    for c in &out.caps {
        eprintln!(
            "deletion cap: policy {} in {}/{}: {}",
            c.policy, c.account, c.region, c.message
        );
    }
    print!("{}", out.stdout);
    Ok(if args.fail_on_delete && out.would_delete {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
