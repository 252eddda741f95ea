//! Configuration: one TOML file, overridden by `SNAPWARDEN_…` environment variables, turned into the validated
//! [`Config`] the rest of the daemon codes against.
//!
//! Both sources are merged through figment into a generic value tree, which is then walked once with a problem
//! collector (`tree`) by the section validators (`sections`). The walk never stops at the first mistake: unknown
//! keys, wrong types and semantic problems (bad cron, duplicate names, a schedule without a keep rule, …) in every
//! section are gathered into one [`ConfigError`], each naming the key path, what is wrong and what to write
//! instead, because an operator fixing a config by restarting a daemon once per typo is the failure this avoids.
//! Serde structs are deliberately not used for the raw layer: `deny_unknown_fields` stops at the first error.
//!
//! This module does not read the process environment except in [`resolve_path`], does not decide the log format
//! when the file leaves it out (the caller knows whether stdout is a TTY), and does not exit the process: the CLI
//! maps a [`ConfigError`] to [`ConfigError::EXIT_CODE`].

mod accounts;
mod copy;
mod env;
mod sections;
mod tree;

pub(crate) use accounts::{Account, Accounts, OrgId, Organization, OWN};
pub use copy::{CopyRule, Encryption};
pub use sections::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, DEFAULT_SHUTDOWN_GRACE};
pub(crate) use sections::{DEFAULT_DEDUP_WINDOW, DEFAULT_MAX_ATTEMPTS};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::{Figment, Profile, Provider};

use crate::retention::{Caps, KeepRules, OrphanPolicy};
use crate::schedule::Cron;

/// Where the daemon looks when neither `--config` nor `SNAPWARDEN_CONFIG` names a file.
pub(crate) const DEFAULT_PATH: &str = "/etc/snapwarden/snapwarden.toml";

/// The environment variable naming the config file; it is not an override of a key.
pub(crate) const CONFIG_PATH_ENV: &str = "SNAPWARDEN_CONFIG";

/// Prefix of environment variables that override keys of the file (`SNAPWARDEN_SECTION__KEY`; names without `__`
/// are not overrides).
pub(crate) const ENV_PREFIX: &str = "SNAPWARDEN_";

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (named in messages and in `/status`).
    pub source: PathBuf,
    pub daemon: DaemonConfig,
    pub aws: AwsConfig,
    pub notify: NotifyConfig,
    pub log: LogConfig,
    pub policies: Vec<Policy>,
}

impl Config {
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub timezone: chrono_tz::Tz,
    pub max_concurrent_aws_calls: usize,
    pub(crate) shutdown_grace: Duration,
    /// How long a run polls its new snapshots for `completed` before reporting the rest as still pending (the
    /// next run re-checks them). Zero: do not wait.
    pub completion_deadline: Duration,
    /// Fires (one policy, one slot, every region) executing at once; more wait in firing order, so after a
    /// downtime the early catch-up runs finish instead of every run advancing together.
    pub(crate) max_concurrent_runs: usize,
    /// First delay before a failed or partial run of the latest slot is retried (doubling per attempt, capped,
    /// jittered, never past the schedule's next fire). Zero: no retries.
    pub(crate) retry_backoff: Duration,
    /// Where `run` and `once` keep their host-wide locks (`lock::LockDir`); None: systemd's runtime directory,
    /// else /run/snapwarden.
    pub lock_dir: Option<PathBuf>,
    /// `copy-concurrency`: copies pending at once per destination region, process-wide, across policies.
    pub copy_concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// Empty means "the region the SDK's default chain finds".
    pub(crate) regions: Vec<String>,
    pub endpoint_url: Option<String>,
    pub max_attempts: u32,
    pub(crate) connect_timeout: Duration,
    /// The whole operation, retries included.
    pub(crate) operation_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    /// `own-account`, `[[aws.account]]` and `[aws.organization]`: the accounts served.
    pub(crate) accounts: Accounts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Without it, failures are only logged and counted.
    pub sns: Option<SnsConfig>,
}

impl NotifyConfig {
    /// The window the notifier de-duplicates alerts in: the topic's, else the default (alerts are then counted,
    /// not sent, and de-duplicated alike). The daemon and `once` both ask here.
    pub fn dedup_window(&self) -> Duration {
        self.sns
            .as_ref()
            .map_or(DEFAULT_DEDUP_WINDOW, |s| s.dedup_window)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsConfig {
    pub(crate) topic_arn: String,
    /// Parsed from the ARN: the topic must be called in its own region.
    pub region: String,
    pub dedup_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `None` when the file leaves it out: the caller picks json unless stdout is a TTY.
    pub format: Option<LogFormat>,
    /// A `tracing_subscriber::EnvFilter` directive string, already checked to parse.
    pub level: String,
    pub file: Option<LogFileConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Minutely,
    Hourly,
    Daily,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileConfig {
    pub(crate) directory: PathBuf,
    pub(crate) prefix: String,
    pub rotation: Rotation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Instance,
    Volume,
}

impl ResourceKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Instance => "instance",
            ResourceKind::Volume => "volume",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub resource: ResourceKind,
    /// All must match; a value of `"*"` means "tag present, any value".
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub target: Target,
    pub schedules: Vec<Schedule>,
    /// `daemon.timezone`, copied here because it is part of what the policy means: its cron times and its
    /// calendar keep rules (which day, week, … a snapshot belongs to) are read in it.
    pub timezone: chrono_tz::Tz,
    /// What happens to snapshots of volumes the policy no longer targets (`orphans`).
    pub orphans: OrphanPolicy,
    /// `max-deletes-per-run` and `max-delete-fraction`.
    pub caps: Caps,
    /// `consistency`: how an instance target's volumes are snapshotted.
    pub(crate) consistency: Consistency,
    /// `[policy.vss]`: the VSS command's parameters. Set exactly when `consistency = "vss"` (defaults filled in).
    pub(crate) vss: Option<Vss>,
    /// `[policy.scripts]`: pre/post scripts around the snapshot (instance targets only).
    pub(crate) scripts: Option<Scripts>,
    /// `accounts`: the names of the accounts the policy serves (an entry's name, `own`, or a discovered account's
    /// id); None: every account served.
    pub accounts: Option<Vec<String>>,
}

impl Policy {
    /// Whether the policy applies in the account named `name` (`own`: the daemon's own account).
    pub fn serves(&self, name: &str, own: bool) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|list| list.iter().any(|a| a == name || (own && a == OWN)))
    }
}

/// How the volumes of one instance are snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consistency {
    /// One CreateSnapshots per instance: its volumes are captured at one instant (crash-consistent across them),
    /// and it costs one create call per instance instead of one per volume. The default for instance targets.
    Instance,
    /// One CreateSnapshot per volume, each at its own instant. The only choice for volume targets.
    Volume,
    /// Windows VSS: the instance snapshots its own volumes through SSM's `AWSEC2-CreateVssSnapshot`, with the
    /// writers' data flushed (application-consistent). Instance targets only.
    Vss,
}

/// What happens to an instance whose VSS command or pre script failed or timed out (`on-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum OnFailure {
    /// Take an ordinary (crash-consistent) snapshot instead, tagged `snapwarden:app-consistent = false`. The
    /// default, as Data Lifecycle Manager's.
    #[default]
    CrashConsistent,
    /// Take no snapshot of the instance: its volumes fail for this slot.
    Skip,
}

/// `[policy.vss]`: the parameters of `AWSEC2-CreateVssSnapshot` snapwarden exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vss {
    /// `exclude-boot-volume` (default false): the document's `ExcludeBootVolume`.
    pub(crate) exclude_boot_volume: bool,
    /// `copy-only` (default false): `CopyOnly`, a VSS copy-only backup (leaves the writers' backup history alone).
    pub(crate) copy_only: bool,
    /// `no-writers` (default false): `NoWriters`, snapshots without asking the VSS writers (faster, not
    /// application-consistent for their data).
    pub(crate) no_writers: bool,
    /// `timeout` (default [`DEFAULT_VSS_TIMEOUT`]): the document's `executionTimeout`, and how long the run waits
    /// for the command before it counts it as timed out.
    pub(crate) timeout: std::time::Duration,
    pub(crate) on_failure: OnFailure,
}

/// How long the VSS document may run by default: the AWS document's own default `executionTimeout`.
pub(crate) const DEFAULT_VSS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `[policy.scripts]`: SSM documents run on every target instance before (`pre`) and after (`post`) its
/// snapshot. `post` runs wherever `pre` ran, also when the snapshot failed. `pre` is required when `post` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scripts {
    pub(crate) pre: Script,
    pub(crate) post: Option<Script>,
    /// What an instance whose `pre` failed gets.
    pub(crate) on_failure: OnFailure,
}

/// One script: an SSM document (a name or an ARN) with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Script {
    pub(crate) document: String,
    /// SSM's parameter map (each parameter takes a list of strings; a TOML string is a list of one).
    pub(crate) parameters: BTreeMap<String, Vec<String>>,
    /// `timeout` (default [`DEFAULT_SCRIPT_TIMEOUT`], 10 s to 1 h): how long the run waits for the script on an
    /// instance, delivery included, before it counts as timed out.
    pub(crate) timeout: std::time::Duration,
    /// `retries` (default 0, at most 3): how many more times a failed or timed-out script is sent to the
    /// instances it failed on.
    pub(crate) retries: u32,
}

/// A script's default timeout: DLM's range ends at 120 s; one minute leaves SSM's delivery a margin.
pub(crate) const DEFAULT_SCRIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most retries of a script (DLM's `MaximumRetryCount` range).
pub(crate) const MAX_SCRIPT_RETRIES: u32 = 3;

impl Policy {
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: Cron,
    /// Empty only when `count_tag` is set: the tag's value is then the keep-last count.
    pub keep: KeepRules,
    /// When set, the schedule covers exactly the targeted resources carrying this tag.
    pub count_tag: Option<String>,
    /// `[[policy.schedule.copy]]`: the regions its snapshots are copied to (at most three), each with the keep
    /// rules its copies are pruned by there. Empty: no copies.
    pub copies: Vec<CopyRule>,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path such as `policy[prod].schedule[daily].cron`; empty for file-level problems (unreadable, syntax).
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub fix: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{} — {}", self.message, self.fix)
    }
}

/// Everything wrong with one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigIssue>,
}

impl ConfigError {
    /// `EX_CONFIG` from sysexits.h; systemd and supervisors read it as "do not restart, fix the config".
    pub const EXIT_CODE: i32 = 78;

    fn single(file: &Path, problem: ConfigIssue) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![problem],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "config file {}: {} problem{}",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Which file: `cli` (`--config`) else env `SNAPWARDEN_CONFIG` else [`DEFAULT_PATH`].
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    resolve_path_from(cli, std::env::var_os(CONFIG_PATH_ENV))
}

fn resolve_path_from(cli: Option<&Path>, env: Option<std::ffi::OsString>) -> PathBuf {
    match (cli, env) {
        (Some(path), _) => path.to_path_buf(),
        // An empty variable is what `SNAPWARDEN_CONFIG=` in a unit file leaves behind; treat it as unset.
        (None, Some(env)) if !env.is_empty() => PathBuf::from(env),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Load the file at `path`, apply `SNAPWARDEN_*` overrides from `env`, and validate everything.
///
/// `env` is passed in rather than read from the process so that tests are hermetic; `main` passes
/// `std::env::vars().collect::<Vec<_>>()`.
pub fn load(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "create it (config/snapwarden.example.toml documents every key), or point --config or \
                 {CONFIG_PATH_ENV} at the file you meant"
            ),
            std::io::ErrorKind::PermissionDenied => {
                "make it readable by the user the daemon runs as (e.g. chmod 0640 and chgrp to its group)".into()
            }
            _ => format!("check that {} is a readable UTF-8 text file", path.display()),
        };
        ConfigError::single(
            path,
            ConfigIssue {
                key: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
                fix,
            },
        )
    })?;
    from_toml_str(path, &text, env)
}

/// As [`load`], from TOML text; `source` is the name used in messages and stored in [`Config::source`].
pub fn from_toml_str(
    source: &Path,
    toml: &str,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    // figment's own TOML error loses the position; parsing once with `toml` keeps line and column, which is the
    // only useful key for a syntax error. Nothing else can be checked in a file that does not parse.
    if let Err(e) = toml.parse::<toml::Table>() {
        return Err(ConfigError::single(source, syntax_problem(toml, &e)));
    }

    let overrides = env::EnvOverrides::from_vars(env);
    let mut problems = overrides.problems.clone();
    let figment = Figment::new().merge(Toml::string(toml)).merge(overrides);
    let mut data = match Provider::data(&figment) {
        Ok(data) => data,
        // Unreachable after the parse above, but a figment error must still surface as a problem, not a panic.
        Err(e) => {
            problems.push(ConfigIssue {
                key: String::new(),
                message: e.to_string(),
                fix: "fix the TOML syntax".into(),
            });
            return Err(ConfigError {
                file: source.to_path_buf(),
                problems,
            });
        }
    };
    let root = data.remove(&Profile::Default).unwrap_or_default();

    let mut cx = tree::Collector::new(&figment);
    let validated = sections::config(&mut cx, &root, source);
    problems.extend(cx.into_problems());
    if problems.is_empty() {
        Ok(validated)
    } else {
        Err(ConfigError {
            file: source.to_path_buf(),
            problems,
        })
    }
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> ConfigIssue {
    let key = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        }
        None => String::new(),
    };
    ConfigIssue {
        key,
        // toml's message spans lines ("invalid string\nexpected `\"`"); a problem is one line.
        message: format!("not valid TOML: {}", e.message().trim().replace('\n', "; ")),
        fix: "fix the syntax there: strings need double quotes, tables are written [daemon], each policy starts \
              with [[policy]] and each of its schedules with [[policy.schedule]]"
            .into(),
    }
}

#[cfg(test)]
mod tests;
