//! What each section of the file may contain, its defaults, and the checks that go beyond types.
//!
//! Each function reads its table through the collector and returns a value even when something is wrong (the
//! default stands in), so that later sections are still checked; `from_toml_str` throws the result away if any
//! problem was recorded. Cross-field rules live next to the fields they relate (attempt vs operation timeout,
//! empty target tags vs `count-tag`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::value::{Dict, Value};

use super::tree::{Collector, Field, KeyPath, Table};
use super::{
    AwsConfig, Config, Consistency, DaemonConfig, LogConfig, LogFileConfig, LogFormat,
    NotifyConfig, OnFailure, Policy, ResourceKind, Rotation, Schedule, Script, Scripts, SnsConfig,
    Target, Vss, DEFAULT_SCRIPT_TIMEOUT, DEFAULT_VSS_TIMEOUT, MAX_SCRIPT_RETRIES,
};
use crate::retention::{Caps, Count, KeepRules, OrphanPolicy, Period};
use crate::schedule::Cron;

const DEFAULT_LISTEN: &str = "127.0.0.1:9180";
const DEFAULT_MAX_CONCURRENT_AWS_CALLS: usize = 8;
/// Also the grace the deploy files' stop timeouts are checked against (tests/deploy_files.rs).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Long enough for small volumes' snapshots to complete, short enough that a run never holds its schedule long.
pub(crate) const DEFAULT_COMPLETION_DEADLINE: Duration = Duration::from_secs(600);
/// A few runs at once keep the AWS budget for the ones running, so they finish; a big fleet per policy is
/// bounded by `max-concurrent-aws-calls`, not by this.
pub(crate) const DEFAULT_MAX_CONCURRENT_RUNS: usize = 4;
/// AWS's own limit: at most 20 concurrent snapshot copies (pending) per destination region per account; the
/// 21st CopySnapshot is refused with `ResourceLimitExceeded`. Pacing to it makes no call that is bound to be
/// refused; a lower value leaves room for other tools copying into the same region.
pub(crate) const DEFAULT_COPY_CONCURRENCY: usize = 20;
/// Above AWS's default limit, for accounts whose limit was raised; beyond it a typo is more likely than intent.
const MAX_COPY_CONCURRENCY: i64 = 100;
/// Like DLM's retries within the hour: 1, 2, 4, 8 ... minutes.
pub(crate) const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// Also the pacing layer's own default (`PaceConfig::default`), so a backend built without a config retries as
/// the daemon does.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// `notify.sns.dedup-window`, and the window the notifier uses without a topic (counted, not sent) and in `once`.
pub(crate) const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(6 * 3600);
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_LOG_DIRECTORY: &str = "/var/log/snapwarden";
const DEFAULT_LOG_PREFIX: &str = "snapwarden.log";

/// EC2 tag limits: keys up to 128 characters, values up to 256.
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

pub(super) fn config(cx: &mut Collector<'_>, root: &Dict, source: &Path) -> Config {
    let mut t = Table::root(root);
    let daemon = section(cx, &mut t, "daemon", daemon);
    let aws = section(cx, &mut t, "aws", aws);
    let notify = section(cx, &mut t, "notify", notify);
    let log = section(cx, &mut t, "log", log);
    let policies = policies(cx, &mut t, daemon.timezone, &aws.regions, &aws.accounts);
    t.finish(cx);
    Config {
        source: source.to_path_buf(),
        daemon,
        aws,
        notify,
        log,
        policies,
    }
}

/// An optional top-level table: absent or mistyped means "all defaults" (the type error is recorded).
fn section<T>(
    cx: &mut Collector<'_>,
    root: &mut Table<'_>,
    key: &'static str,
    read: fn(&mut Collector<'_>, Option<&mut Table<'_>>) -> T,
) -> T {
    let mut table = root.get(key).and_then(|f| {
        cx.table(
            &f,
            &format!("a [{key}] table with one `key = value` per line"),
        )
    });
    let value = read(cx, table.as_mut());
    if let Some(table) = table {
        table.finish(cx);
    }
    value
}

fn daemon(cx: &mut Collector<'_>, t: Option<&mut Table<'_>>) -> DaemonConfig {
    let mut d = DaemonConfig {
        listen: DEFAULT_LISTEN
            .parse()
            .expect("default listen address parses"),
        timezone: chrono_tz::Tz::UTC,
        max_concurrent_aws_calls: DEFAULT_MAX_CONCURRENT_AWS_CALLS,
        shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        completion_deadline: DEFAULT_COMPLETION_DEADLINE,
        max_concurrent_runs: DEFAULT_MAX_CONCURRENT_RUNS,
        retry_backoff: DEFAULT_RETRY_BACKOFF,
        lock_dir: None,
        copy_concurrency: DEFAULT_COPY_CONCURRENCY,
    };
    let Some(t) = t else { return d };

    if let Some(f) = t.get("listen") {
        if let Some(text) = cx.string(&f, "listen = \"127.0.0.1:9180\"") {
            match SocketAddr::from_str(&text) {
                Ok(addr) => d.listen = addr,
                Err(_) => cx.problem(
                    &f,
                    format!("`{text}` is not an IP address with a port"),
                    "write listen = \"127.0.0.1:9180\" (or \"0.0.0.0:9180\" for every interface, \"[::]:9180\" \
                     for IPv6); host names are not resolved here",
                ),
            }
        }
    }
    if let Some(f) = t.get("timezone") {
        if let Some(tz) = cx
            .string(&f, "timezone = \"Europe/Berlin\"")
            .and_then(|text| timezone(cx, &f, &text))
        {
            d.timezone = tz;
        }
    }
    if let Some(f) = t.get("max-concurrent-aws-calls") {
        if let Some(n) = cx.integer(&f, 1..=256, "max-concurrent-aws-calls = 8") {
            d.max_concurrent_aws_calls = n as usize;
        }
    }
    if let Some(f) = t.get("shutdown-grace") {
        if let Some(grace) = cx.duration(&f, true, "shutdown-grace = \"30s\"") {
            d.shutdown_grace = grace;
        }
    }
    if let Some(f) = t.get("completion-deadline") {
        if let Some(deadline) = cx.duration(&f, true, "completion-deadline = \"10m\"") {
            d.completion_deadline = deadline;
        }
    }
    if let Some(f) = t.get("max-concurrent-runs") {
        if let Some(n) = cx.integer(&f, 1..=1024, "max-concurrent-runs = 4") {
            d.max_concurrent_runs = n as usize;
        }
    }
    if let Some(f) = t.get("retry-backoff") {
        if let Some(backoff) = cx.duration(&f, true, "retry-backoff = \"1m\"") {
            d.retry_backoff = backoff;
        }
    }
    if let Some(f) = t.get("copy-concurrency") {
        if let Some(n) = cx.integer(&f, 1..=MAX_COPY_CONCURRENCY, "copy-concurrency = 20") {
            d.copy_concurrency = n as usize;
        }
    }
    if let Some(f) = t.get("lock-dir") {
        if let Some(dir) = cx.string(&f, "lock-dir = \"/run/snapwarden\"") {
            // `once` and the daemon must name the same directory whatever their working directories.
            if Path::new(&dir).is_absolute() {
                d.lock_dir = Some(PathBuf::from(dir));
            } else {
                cx.problem(
                    &f,
                    format!("`{dir}` is not an absolute path"),
                    "write an absolute directory, e.g. lock-dir = \"/run/snapwarden\"",
                );
            }
        }
    }
    d
}

fn timezone(cx: &mut Collector<'_>, f: &Field<'_>, text: &str) -> Option<chrono_tz::Tz> {
    if let Ok(tz) = text.parse::<chrono_tz::Tz>() {
        return Some(tz);
    }
    // chrono-tz's own case-insensitive lookup sits behind a feature; a scan of ~600 names once is fine.
    let same_but_case = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(text));
    let fix = match same_but_case {
        Some(tz) => format!("write timezone = \"{}\" (IANA names are case-sensitive)", tz.name()),
        None => "write an IANA zone name, e.g. \"UTC\", \"Europe/Berlin\", \"America/New_York\" (abbreviations \
                   like CEST or PST are not zones; `timedatectl list-timezones` lists them)"
            .to_string(),
    };
    cx.problem(f, format!("`{text}` is not an IANA time zone"), fix);
    None
}

fn aws(cx: &mut Collector<'_>, t: Option<&mut Table<'_>>) -> AwsConfig {
    let mut a = AwsConfig {
        regions: Vec::new(),
        endpoint_url: None,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        accounts: Default::default(),
    };
    let Some(t) = t else { return a };

    if let Some(f) = t.get("regions") {
        a.regions = regions(cx, &f);
    }
    // The file is refused anyway when this is None (its problems are reported).
    a.accounts = super::accounts::accounts(cx, Some(t), &a.regions).unwrap_or_default();
    if let Some(f) = t.get("endpoint-url") {
        if let Some(url) = cx.string(&f, "endpoint-url = \"http://127.0.0.1:5000\"") {
            match endpoint_problem(&url) {
                None => a.endpoint_url = Some(url),
                Some(why) => cx.problem(
                    &f,
                    format!("`{url}` is not a usable endpoint URL: {why}"),
                    "write an http(s) URL with a host, e.g. endpoint-url = \"http://127.0.0.1:5000\", or remove \
                     the key to use AWS's own endpoints",
                ),
            }
        }
    }
    if let Some(f) = t.get("max-attempts") {
        if let Some(n) = cx.integer(&f, 1..=20, "max-attempts = 5") {
            a.max_attempts = n as u32;
        }
    }
    if let Some(f) = t.get("connect-timeout") {
        if let Some(d) = cx.duration(&f, false, "connect-timeout = \"3s\"") {
            a.connect_timeout = d;
        }
    }
    let mut operation_set = false;
    if let Some(f) = t.get("operation-timeout") {
        if let Some(d) = cx.duration(&f, false, "operation-timeout = \"60s\"") {
            a.operation_timeout = d;
            operation_set = true;
        }
    }
    if let Some(f) = t.get("attempt-timeout") {
        if let Some(d) = cx.duration(&f, false, "attempt-timeout = \"20s\"") {
            a.attempt_timeout = d;
            // The operation timeout bounds all attempts together, so an attempt allowed longer than the whole
            // operation would never get its full time: the setting would silently mean something else.
            if d > a.operation_timeout {
                let fix = if operation_set {
                    "lower attempt-timeout or raise operation-timeout so that one attempt fits in the operation"
                        .to_string()
                } else {
                    format!(
                        "lower attempt-timeout, or set operation-timeout (default {}) above it",
                        humantime::format_duration(DEFAULT_OPERATION_TIMEOUT)
                    )
                };
                cx.problem(
                    &f,
                    format!(
                        "attempt-timeout {} is longer than operation-timeout {}",
                        humantime::format_duration(d),
                        humantime::format_duration(a.operation_timeout)
                    ),
                    fix,
                );
            }
        }
    }
    a
}

pub(super) fn regions(cx: &mut Collector<'_>, f: &Field<'_>) -> Vec<String> {
    const EXAMPLE: &str = "regions = [\"us-east-1\", \"eu-west-1\"]";
    // From the environment a single region is naturally written without brackets: SNAPWARDEN_AWS__REGIONS=eu-west-1.
    if let Value::String(_, one) = f.value {
        if cx.env_var(f).is_some() {
            return check_region(cx, f, one).into_iter().collect();
        }
    }
    let Some(items) = cx.array(f, EXAMPLE) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            path: f.path.item(i, None),
            value: item,
        };
        let Some(region) = cx
            .string(&field, EXAMPLE)
            .and_then(|r| check_region(cx, &field, &r))
        else {
            continue;
        };
        if out.contains(&region) {
            cx.problem(
                &field,
                format!("region `{region}` is listed twice"),
                "list each region once; every listed region is snapshotted separately",
            );
        } else {
            out.push(region);
        }
    }
    out
}

pub(super) fn check_region(cx: &mut Collector<'_>, f: &Field<'_>, region: &str) -> Option<String> {
    if is_region(region) {
        Some(region.to_string())
    } else {
        cx.problem(
            f,
            format!("`{region}` is not an AWS region code"),
            "write a region code such as \"us-east-1\", \"eu-central-1\" or \"us-gov-west-1\" (not an \
             availability zone like \"us-east-1a\", not a display name)",
        );
        None
    }
}

/// Shape of a region code: `us-east-1`, `ap-southeast-5`, `us-gov-west-1`, `cn-north-1`.
/// The region (empty for IAM, which is global), account and resource of `text` as an ARN of `service`
/// (`arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`), once the parts every ARN shares are checked; the account and
/// resource are the caller's to check (their rules differ by service). The error says what is wrong, verb first
/// ("has service `s3`, not kms"), for the caller to put after the value.
pub(super) fn arn<'a>(text: &'a str, service: &str) -> Result<(&'a str, &'a str, &'a str), String> {
    let Some(rest) = text.strip_prefix("arn:") else {
        return Err("does not start with `arn:`".into());
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [partition, found, region, account, resource] = parts[..] else {
        return Err(format!(
            "is not an ARN of 6 `:`-separated parts (it has {})",
            parts.len() + 1
        ));
    };
    if partition != "aws" && !partition.starts_with("aws-") {
        return Err(format!(
            "has partition `{partition}`, not aws, aws-cn or aws-us-gov"
        ));
    }
    if found != service {
        return Err(format!("has service `{found}`, not {service}"));
    }
    // IAM is global: its ARNs have an empty region part, and an IAM ARN with a region is a mistake.
    if service == "iam" && !region.is_empty() {
        return Err(format!(
            "has region part `{region}`; IAM ARNs have none (arn:aws:iam::ACCOUNT:…)"
        ));
    }
    if service != "iam" && !is_region(region) {
        return Err(format!("has region part `{region}`, not a region code"));
    }
    Ok((region, account, resource))
}

/// A 12-digit AWS account id.
pub(super) fn is_account(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| c.is_ascii_digit())
}

pub(super) fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// Why `url` is unusable as an endpoint, if it is.
fn endpoint_problem(url: &str) -> Option<&'static str> {
    let rest = match url.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some(_) => return Some("the scheme must be http or https"),
        None => return Some("it has no scheme (http:// or https://)"),
    };
    if url.chars().any(char::is_whitespace) {
        return Some("it contains whitespace");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Some("it has no host");
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Some("its port is not a number from 0 to 65535");
        }
    }
    None
}

fn notify(cx: &mut Collector<'_>, t: Option<&mut Table<'_>>) -> NotifyConfig {
    let mut n = NotifyConfig { sns: None };
    let Some(t) = t else { return n };
    let Some(f) = t.get("sns") else { return n };
    let Some(mut sns) = cx.table(
        &f,
        "a [notify.sns] table with topic-arn = \"arn:aws:sns:…\"",
    ) else {
        return n;
    };

    let topic = sns.get("topic-arn");
    let dedup = sns.get("dedup-window");
    let dedup_window = dedup
        .and_then(|f| cx.duration(&f, true, "dedup-window = \"6h\""))
        .unwrap_or(DEFAULT_DEDUP_WINDOW);
    match topic {
        None => cx.missing(
            &sns.path.key("topic-arn"),
            "missing: [notify.sns] needs the topic to publish to",
            "add topic-arn = \"arn:aws:sns:REGION:ACCOUNT:TOPIC\", or remove [notify.sns] to only log and count \
             failures",
        ),
        Some(f) => {
            if let Some(arn) = cx.string(&f, "topic-arn = \"arn:aws:sns:us-east-1:123456789012:snapwarden\"") {
                match parse_topic_arn(&arn) {
                    Ok(region) => {
                        n.sns = Some(SnsConfig {
                            topic_arn: arn,
                            region,
                            dedup_window,
                        })
                    }
                    Err(why) => cx.problem(
                        &f,
                        format!("`{arn}` is not an SNS topic ARN: {why}"),
                        "write topic-arn = \"arn:aws:sns:REGION:ACCOUNT:TOPIC\" as shown by `aws sns list-topics`, \
                         e.g. \"arn:aws:sns:us-east-1:123456789012:snapwarden\"",
                    ),
                }
            }
        }
    }
    sns.finish(cx);
    n
}

/// Checks `arn:PARTITION:sns:REGION:ACCOUNT:TOPIC` and returns the region.
fn parse_topic_arn(arn: &str) -> Result<String, String> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() != 6 {
        let hint = if parts.len() == 7 {
            " (a subscription ARN has a 7th part; use the topic's ARN)"
        } else {
            ""
        };
        return Err(format!(
            "it has {} `:`-separated parts, not 6{hint}",
            parts.len()
        ));
    }
    let [arn_word, partition, service, region, account, topic] =
        [parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]];
    if arn_word != "arn" {
        return Err("it must start with `arn:`".into());
    }
    if partition != "aws" && !partition.starts_with("aws-") {
        return Err(format!(
            "partition `{partition}` is not aws, aws-cn or aws-us-gov"
        ));
    }
    if service != "sns" {
        return Err(format!("service `{service}` is not sns"));
    }
    if !is_region(region) {
        return Err(format!("region part `{region}` is not a region code"));
    }
    if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "account part `{account}` is not a 12-digit account id"
        ));
    }
    let name = topic.strip_suffix(".fifo").unwrap_or(topic);
    if name.is_empty()
        || topic.len() > 256
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "topic name `{topic}` must be 1-256 letters, digits, `-` or `_` (optionally ending in .fifo)"
        ));
    }
    Ok(region.to_string())
}

fn log(cx: &mut Collector<'_>, t: Option<&mut Table<'_>>) -> LogConfig {
    let mut l = LogConfig {
        format: None,
        level: DEFAULT_LOG_LEVEL.to_string(),
        file: None,
    };
    let Some(t) = t else { return l };

    if let Some(f) = t.get("format") {
        l.format = cx.choice(
            &f,
            &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
        );
    }
    if let Some(f) = t.get("level") {
        if let Some(level) = cx.string(&f, "level = \"info\"") {
            match level_problem(&level) {
                None => l.level = level,
                Some((message, fix)) => cx.problem(&f, message, fix),
            }
        }
    }
    if let Some(f) = t.get("file") {
        if let Some(mut file) = cx.table(
            &f,
            "a [log.file] table with directory = \"/var/log/snapwarden\"",
        ) {
            l.file = Some(log_file(cx, &mut file));
            file.finish(cx);
        }
    }
    l
}

/// Checks an `EnvFilter` directive string. `EnvFilter` itself accepts a bare word as a *target* name, so the
/// typo `level = "inof"` would silently mean "trace everything from a module called inof"; a bare word must
/// therefore be a level here, and a target is written `target=level`.
fn level_problem(level: &str) -> Option<(String, String)> {
    use tracing_subscriber::filter::LevelFilter;
    const FIX: &str =
        "write a level (trace, debug, info, warn, error, off), optionally followed by per-target \
                       levels: level = \"info,snapwarden=debug\"";
    if level.trim().is_empty() {
        return Some(("the level is empty".into(), FIX.into()));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.chars().any(char::is_whitespace) {
            return Some((
                format!("directive `{directive}` contains whitespace"),
                FIX.into(),
            ));
        }
        if !directive.contains('=')
            && !directive.contains('[')
            && directive.parse::<LevelFilter>().is_err()
        {
            return Some((
                format!("`{directive}` is not a level"),
                format!("{FIX}; to enable a target at every level write `{directive}=trace`"),
            ));
        }
    }
    match tracing_subscriber::EnvFilter::builder().parse(level) {
        Ok(_) => None,
        Err(e) => Some((format!("`{level}` is not a valid filter ({e})"), FIX.into())),
    }
}

fn log_file(cx: &mut Collector<'_>, t: &mut Table<'_>) -> LogFileConfig {
    let mut file = LogFileConfig {
        directory: PathBuf::from(DEFAULT_LOG_DIRECTORY),
        prefix: DEFAULT_LOG_PREFIX.to_string(),
        rotation: Rotation::Daily,
    };
    if let Some(f) = t.get("directory") {
        if let Some(dir) = cx.string(&f, "directory = \"/var/log/snapwarden\"") {
            // A relative directory would depend on the daemon's working directory, which systemd sets to `/`.
            if Path::new(&dir).is_absolute() {
                file.directory = PathBuf::from(dir);
            } else {
                cx.problem(
                    &f,
                    format!("`{dir}` is not an absolute path"),
                    "write an absolute directory, e.g. directory = \"/var/log/snapwarden\"",
                );
            }
        }
    }
    if let Some(f) = t.get("prefix") {
        if let Some(prefix) = cx.string(&f, "prefix = \"snapwarden.log\"") {
            if prefix.is_empty() || prefix.contains('/') {
                cx.problem(
                    &f,
                    format!("`{prefix}` is not a file name"),
                    "write a file name without `/`, e.g. prefix = \"snapwarden.log\"; the directory goes in \
                     `directory`",
                );
            } else {
                file.prefix = prefix;
            }
        }
    }
    if let Some(f) = t.get("rotation") {
        if let Some(r) = cx.choice(
            &f,
            &[
                ("minutely", Rotation::Minutely),
                ("hourly", Rotation::Hourly),
                ("daily", Rotation::Daily),
                ("never", Rotation::Never),
            ],
        ) {
            file.rotation = r;
        }
    }
    file
}

const POLICY_EXAMPLE: &str =
    "[[policy]] tables, each with name = \"…\", a [policy.target] table and \
                              [[policy.schedule]] tables";

/// `regions` is `aws.regions`: the regions every policy snapshots, which its copies must leave.
fn policies(
    cx: &mut Collector<'_>,
    root: &mut Table<'_>,
    timezone: chrono_tz::Tz,
    regions: &[String],
    accounts: &super::Accounts,
) -> Vec<Policy> {
    let path = root.path.key("policy");
    let Some(f) = root.get("policy") else {
        cx.missing(
            &path,
            "no policy is defined, so the daemon would do nothing",
            "add at least one [[policy]] with name = \"…\", a [policy.target] and a [[policy.schedule]] (see \
             config/examples/)",
        );
        return Vec::new();
    };
    let Some(items) = cx.array(&f, POLICY_EXAMPLE) else {
        return Vec::new();
    };
    if items.is_empty() {
        cx.problem(
            &f,
            "the policy list is empty",
            format!("write {POLICY_EXAMPLE}"),
        );
    }

    let mut names = Names::default();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            path: path.item(i, None),
            value: item,
        };
        let Some(mut t) = cx.table(&field, POLICY_EXAMPLE) else {
            continue;
        };
        let name = name(cx, &mut t, &mut names, &path, i, 64, "policy");
        if let Some(policy) = policy(cx, &mut t, name, timezone, regions, accounts) {
            out.push(policy);
        }
        t.finish(cx);
    }
    out
}

/// Names seen so far in one list, to label items and catch duplicates.
#[derive(Default)]
struct Names(BTreeMap<String, usize>);

/// Reads and checks `name` (`[A-Za-z0-9_-]{1,max}`, unique in `names`), then relabels the table's path with it.
/// Items without a usable name keep their `[#n]` label, which is what keeps two duplicates distinguishable.
fn name(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    names: &mut Names,
    list: &KeyPath,
    index: usize,
    max: usize,
    what: &str,
) -> Option<String> {
    let sample = if what == "policy" { "prod" } else { "daily" };
    let example = format!("name = \"{sample}\" (letters, digits, `-`, `_`; at most {max})");
    let Some(f) = t.get("name") else {
        cx.missing(
            &t.path.key("name"),
            format!(
                "missing: every {what} needs a name (it appears in logs, metrics, tags and `plan`)"
            ),
            format!("add {example}"),
        );
        return None;
    };
    let name = cx.string(&f, &example)?;
    let valid = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        let why = if name.is_empty() {
            "is empty".to_string()
        } else if name.chars().count() > max {
            format!("is longer than {max} characters")
        } else {
            "may only contain letters, digits, `-` and `_` (it becomes part of tag values and metric labels)"
                .to_string()
        };
        cx.problem(
            &f,
            format!("{what} name `{name}` {why}"),
            format!("write {example}"),
        );
        return None;
    }
    if let Some(first) = names.0.get(&name) {
        cx.problem(
            &f,
            format!(
                "{what} name `{name}` is already used by {what} #{}",
                first + 1
            ),
            format!(
                "give each {what} a different name{}",
                if what == "schedule" {
                    " within the policy"
                } else {
                    ""
                }
            ),
        );
        return None;
    }
    names.0.insert(name.clone(), index);
    t.path = list.item(index, Some(&name));
    Some(name)
}

fn policy(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    name: Option<String>,
    timezone: chrono_tz::Tz,
    regions: &[String],
    accounts: &super::Accounts,
) -> Option<Policy> {
    let target_path = t.path.key("target");
    let target = match t.get("target") {
        None => {
            cx.missing(
                &target_path,
                "missing: the policy does not say what to snapshot",
                "add [policy.target] with resource = \"instance\" and tags = { Backup = \"true\" }",
            );
            None
        }
        Some(f) => cx
            .table(&f, "[policy.target] with resource and tags")
            .map(|mut target| {
                let value = target_table(cx, &mut target);
                target.finish(cx);
                value
            }),
    };

    let schedules_path = t.path.key("schedule");
    let schedules = match t.get("schedule") {
        None => {
            cx.missing(
                &schedules_path,
                "missing: the policy has no schedule, so it would never take a snapshot",
                "add a [[policy.schedule]] with name, cron and keep, e.g. name = \"daily\", cron = \"30 4 * * *\", \
                 keep = { last = 7 }",
            );
            None
        }
        Some(f) => schedules(cx, &f, regions),
    };

    // With no tags the target is every instance (or volume) in the account; that is only a deliberate choice when
    // each schedule narrows it with its count-tag.
    if let (Some((target, tags_field)), Some(schedules)) = (&target, &schedules) {
        // Judged on what was written, not on what validated: a mistyped tag is already reported and must not also
        // read as "no tags".
        let tags_written =
            matches!(tags_field, Some(Field { value: Value::Dict(_, d), .. }) if !d.is_empty());
        let uncounted: Vec<&str> = schedules
            .iter()
            .filter(|s| s.count_tag.is_none())
            .map(|s| s.name.as_str())
            .collect();
        if !tags_written && !uncounted.is_empty() {
            let path = target_path.key("tags");
            let message = format!(
                "no tags: schedule(s) {} would snapshot every {} in the account",
                uncounted.join(", "),
                target.resource.as_str()
            );
            let fix = "add tags = { Backup = \"true\" } (all must match; \"*\" matches any value), or give every \
                       schedule a count-tag";
            match tags_field {
                Some(f) => cx.problem(f, message, fix),
                None => cx.missing(&path, message, fix),
            }
        }
    }

    let orphans = t.get("orphans").and_then(|f| orphans(cx, &f));
    let served = match t.get("accounts") {
        None => Some(None),
        Some(f) => super::accounts::policy_accounts(cx, &f, accounts).map(Some),
    };
    let caps = caps(cx, t);
    let resource = target.as_ref().map(|(t, _)| t.resource);
    let consistency = consistency(cx, t, resource);
    let vss = vss(cx, t, consistency);
    let scripts = scripts(cx, t, resource);
    // Judged on what was written: a consistency or scripts table already reported as wrong is not reported again.
    let takes_app_consistent =
        consistency.is_none_or(|c| c == Consistency::Vss) || !matches!(scripts, Some(None));
    if let (false, Some(schedules)) = (takes_app_consistent, &schedules) {
        app_consistent_only(cx, schedules, &schedules_path);
    }

    Some(Policy {
        name: name?,
        target: target?.0,
        schedules: schedules?,
        timezone,
        orphans: orphans.unwrap_or_default(),
        caps: caps?,
        consistency: consistency?,
        vss: vss?,
        scripts: scripts?,
        accounts: served?,
    })
}

/// `consistency`: "instance" (default for instance targets), "volume" or "vss". A volume target has no instance to be
/// consistent across and no instance to run VSS on, so "instance" and "vss" there are mistakes worth reporting.
/// `None` when invalid (reported).
fn consistency(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    resource: Option<ResourceKind>,
) -> Option<Consistency> {
    let default = match resource {
        Some(ResourceKind::Volume) => Consistency::Volume,
        _ => Consistency::Instance,
    };
    let Some(f) = t.get("consistency") else {
        return Some(default);
    };
    let value = cx.choice(
        &f,
        &[
            ("instance", Consistency::Instance),
            ("volume", Consistency::Volume),
            ("vss", Consistency::Vss),
        ],
    )?;
    if value == Consistency::Vss && resource == Some(ResourceKind::Volume) {
        cx.problem(
            &f,
            "consistency = \"vss\" needs an instance target (the instance snapshots its own volumes through SSM), \
             but this policy targets volumes",
            "set [policy.target] resource = \"instance\" and tag the instances, or remove consistency (volume \
             targets are snapshotted one volume at a time, crash-consistent)",
        );
        return None;
    }
    if value == Consistency::Instance && resource == Some(ResourceKind::Volume) {
        cx.problem(
            &f,
            "consistency = \"instance\" needs an instance target, but this policy targets volumes",
            "remove consistency (volume targets are snapshotted one volume at a time), or set [policy.target] \
             resource = \"instance\"",
        );
        return None;
    }
    Some(value)
}

/// `[policy.vss]`: read whenever present (so its own mistakes are reported), used only with `consistency = "vss"`,
/// which gets every default when the table is absent. `None` when invalid (reported), `Some(None)` when the
/// policy does not use VSS.
fn vss(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    consistency: Option<Consistency>,
) -> Option<Option<Vss>> {
    let mut vss = Vss {
        exclude_boot_volume: false,
        copy_only: false,
        no_writers: false,
        timeout: DEFAULT_VSS_TIMEOUT,
        on_failure: OnFailure::default(),
    };
    let field = t.get("vss");
    let mut valid = true;
    if let Some(f) = &field {
        let mut table = cx.table(f, "[policy.vss] with timeout = \"10m\"")?;
        for (key, slot) in [
            ("exclude-boot-volume", &mut vss.exclude_boot_volume),
            ("copy-only", &mut vss.copy_only),
            ("no-writers", &mut vss.no_writers),
        ] {
            if let Some(f) = table.get(key) {
                match cx.bool(&f, &format!("{key} = true")) {
                    Some(b) => *slot = b,
                    None => valid = false,
                }
            }
        }
        if let Some(f) = table.get("timeout") {
            match duration_between(cx, &f, VSS_TIMEOUTS, "timeout = \"10m\"") {
                Some(d) => vss.timeout = d,
                None => valid = false,
            }
        }
        match on_failure(cx, &mut table) {
            Some(o) => vss.on_failure = o,
            None => valid = false,
        }
        table.finish(cx);
    }
    match (consistency?, field) {
        (Consistency::Vss, _) => valid.then_some(Some(vss)),
        (_, None) => Some(None),
        // Settings that silently do nothing are the mistake strict validation exists to catch.
        (_, Some(f)) => {
            cx.problem(
                &f,
                "[policy.vss] is set, but the policy's consistency is not \"vss\", so nothing would use it",
                "add consistency = \"vss\" to the policy (Windows instances with the SSM agent and \
                 AwsVssComponents), or remove [policy.vss]",
            );
            None
        }
    }
}

/// The VSS command's timeout. The document starts PowerShell, asks every VSS writer to flush and creates a
/// snapshot per volume, which takes more than a few seconds on a healthy instance, so under a minute would fail
/// them; past two hours a daily schedule has usually given up on the slot's point in time anyway.
const VSS_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(2 * 3600);
/// A script's timeout, delivery included: SSM rarely delivers within a few seconds, and a freeze held longer than
/// an hour is an outage, not a backup.
const SCRIPT_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(3600);

/// `on-failure` of `[policy.vss]` or `[policy.scripts]`; the default when absent, `None` when invalid (reported).
fn on_failure(cx: &mut Collector<'_>, t: &mut Table<'_>) -> Option<OnFailure> {
    let Some(f) = t.get("on-failure") else {
        return Some(OnFailure::default());
    };
    cx.choice(
        &f,
        &[
            ("crash-consistent", OnFailure::CrashConsistent),
            ("skip", OnFailure::Skip),
        ],
    )
}

/// A duration within `range`, both ends included; `None` when invalid (reported).
pub(super) fn duration_between(
    cx: &mut Collector<'_>,
    f: &Field<'_>,
    range: std::ops::RangeInclusive<Duration>,
    example: &str,
) -> Option<Duration> {
    let d = cx.duration(f, false, example)?;
    if range.contains(&d) {
        return Some(d);
    }
    let human = |d: Duration| humantime::format_duration(d).to_string();
    cx.problem(
        f,
        format!(
            "{} is outside {} to {}",
            human(d),
            human(*range.start()),
            human(*range.end())
        ),
        format!(
            "write a duration from {} to {}, e.g. {example}",
            human(*range.start()),
            human(*range.end())
        ),
    );
    None
}

/// `[policy.scripts]`: `None` when invalid (reported), `Some(None)` when absent.
fn scripts(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    resource: Option<ResourceKind>,
) -> Option<Option<Scripts>> {
    let Some(f) = t.get("scripts") else {
        return Some(None);
    };
    let mut table = cx.table(
        &f,
        "[policy.scripts.pre] with document = \"snapwarden-fsfreeze\"",
    )?;
    let on_failure = on_failure(cx, &mut table);
    let pre_field = table.get("pre");
    let post_field = table.get("post");
    let pre = pre_field.as_ref().map(|f| script(cx, f, "pre"));
    let post = post_field.as_ref().map(|f| script(cx, f, "post"));
    table.finish(cx);

    let mut valid = true;
    if resource == Some(ResourceKind::Volume) {
        cx.problem(
            &f,
            "scripts run on an instance through SSM, but this policy targets volumes",
            "set [policy.target] resource = \"instance\" and tag the instances, or remove [policy.scripts]",
        );
        valid = false;
    }
    match (&pre_field, &post_field) {
        (None, None) => {
            cx.problem(
                &f,
                "[policy.scripts] has neither a pre nor a post script",
                "add [policy.scripts.pre] with document = \"snapwarden-fsfreeze\" (and [policy.scripts.post] with \
                 document = \"snapwarden-thaw\"), or remove [policy.scripts]",
            );
            valid = false;
        }
        // Post runs wherever pre ran; without a pre there is nothing to undo and no instance it is known to be
        // needed on.
        (None, Some(post)) => {
            cx.problem(
                post,
                "a post script without a pre script: post runs only where pre ran",
                "add [policy.scripts.pre] (the freeze this script undoes), or rename [policy.scripts.post] to \
                 [policy.scripts.pre] if it is meant to run before the snapshot",
            );
            valid = false;
        }
        (Some(_), _) => {}
    }
    let pre = pre??;
    let post = match post {
        None => None,
        Some(post) => Some(post?),
    };
    valid.then_some(Some(Scripts {
        pre,
        post,
        on_failure: on_failure?,
    }))
}

/// One of `[policy.scripts.pre]` / `[policy.scripts.post]`; `None` when invalid (reported).
fn script(cx: &mut Collector<'_>, f: &Field<'_>, stage: &str) -> Option<Script> {
    let example = if stage == "pre" {
        "[policy.scripts.pre] with document = \"snapwarden-fsfreeze\""
    } else {
        "[policy.scripts.post] with document = \"snapwarden-thaw\""
    };
    let mut t = cx.table(f, example)?;
    let document = match t.get("document") {
        None => {
            cx.missing(
                &t.path.key("document"),
                "missing: the script names no SSM document to run",
                format!(
                    "add document = \"{}\" (the name of a document in the account, or its ARN)",
                    if stage == "pre" {
                        "snapwarden-fsfreeze"
                    } else {
                        "snapwarden-thaw"
                    }
                ),
            );
            None
        }
        Some(f) => cx
            .string(&f, "document = \"snapwarden-fsfreeze\"")
            .and_then(|d| match document_problem(&d) {
                None => Some(d),
                Some(why) => {
                    cx.problem(
                        &f,
                        format!("`{d}` is not an SSM document name or ARN: {why}"),
                        "write the document's name as `aws ssm list-documents` shows it (3 to 128 letters, \
                         digits, `_`, `-`, `.`), e.g. document = \"snapwarden-fsfreeze\", or its ARN \
                         \"arn:aws:ssm:REGION:ACCOUNT:document/NAME\"",
                    );
                    None
                }
            }),
    };
    let parameters = match t.get("parameters") {
        None => Some(BTreeMap::new()),
        Some(f) => parameters(cx, &f),
    };
    let timeout = match t.get("timeout") {
        None => Some(DEFAULT_SCRIPT_TIMEOUT),
        Some(f) => duration_between(cx, &f, SCRIPT_TIMEOUTS, "timeout = \"60s\""),
    };
    let retries = match t.get("retries") {
        None => Some(0),
        Some(f) => cx
            .integer(&f, 0..=i64::from(MAX_SCRIPT_RETRIES), "retries = 1")
            .map(|n| n as u32),
    };
    t.finish(cx);
    Some(Script {
        document: document?,
        parameters: parameters?,
        timeout: timeout?,
        retries: retries?,
    })
}

/// Why `document` is neither an SSM document name (`[a-zA-Z0-9_.-]{3,128}`) nor a document ARN
/// (`arn:PARTITION:ssm:REGION:ACCOUNT:document/NAME`, ACCOUNT empty for AWS's own documents), if it is neither.
fn document_problem(document: &str) -> Option<String> {
    fn name_problem(name: &str) -> Option<String> {
        let chars_ok = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if (3..=128).contains(&name.len()) && chars_ok {
            None
        } else {
            Some(format!(
                "the name `{name}` must be 3 to 128 letters, digits, `_`, `-` or `.`"
            ))
        }
    }
    if !document.starts_with("arn:") {
        return name_problem(document);
    }
    let (_, account, resource) = match arn(document, "ssm") {
        Ok(parts) => parts,
        Err(why) => return Some(why),
    };
    if !account.is_empty() && !is_account(account) {
        return Some(format!(
            "has account part `{account}`, neither empty (AWS's own documents) nor a 12-digit account id"
        ));
    }
    match resource.strip_prefix("document/") {
        Some(name) => name_problem(name),
        None => Some(format!("resource `{resource}` is not document/NAME")),
    }
}

/// A script's `parameters`: each value a string or a list of strings (SSM takes a list per parameter; a string is a
/// list of one). Names are the document's, so they are data, not keys to check. `None` when invalid (reported).
fn parameters(cx: &mut Collector<'_>, f: &Field<'_>) -> Option<BTreeMap<String, Vec<String>>> {
    let table = cx.table(
        f,
        "parameters = { MountPoints = \"/data\", AutoThawSeconds = \"60\" }",
    )?;
    let mut out = BTreeMap::new();
    let mut valid = true;
    for entry in table.entries() {
        let name = entry.path.raw().last().cloned().unwrap_or_default();
        let example = |value: &Value| match value {
            Value::Num(..) | Value::Bool(..) => {
                format!("the value in quotes, e.g. {name} = \"60\" (SSM parameters are strings)")
            }
            _ => format!("{name} = \"value\", or {name} = [\"one\", \"two\"]"),
        };
        let values = match entry.value {
            Value::Array(_, items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = Field {
                        path: entry.path.item(i, None),
                        value: item,
                    };
                    cx.string(&field, &example(item))
                })
                .collect::<Option<Vec<String>>>(),
            _ => cx.string(&entry, &example(entry.value)).map(|s| vec![s]),
        };
        match values {
            Some(values) => {
                out.insert(name, values);
            }
            None => valid = false,
        }
    }
    // Keys of the parameters table are the document's parameter names, so there is no unknown-key check.
    valid.then_some(out)
}

/// Reports every `app-consistent-only` of a policy that takes no app-consistent snapshot (neither VSS nor
/// scripts): such a rule counts only snapshots tagged app-consistent, so it would never keep one.
fn app_consistent_only(cx: &mut Collector<'_>, schedules: &[Schedule], schedules_path: &KeyPath) {
    for (i, s) in schedules.iter().enumerate() {
        if s.keep.app_consistent_only {
            cx.missing(
                &schedules_path
                    .item(i, Some(&s.name))
                    .key("keep")
                    .key("app-consistent-only"),
                "app-consistent-only counts only application-consistent snapshots, but this policy takes none \
                 (it has neither consistency = \"vss\" nor a pre script), so the rule would never keep one",
                "add consistency = \"vss\" (Windows) or a [policy.scripts.pre] script (e.g. document = \
                 \"snapwarden-fsfreeze\") to the policy, or remove app-consistent-only",
            );
        }
    }
}

const ORPHANS_EXAMPLE: &str =
    "orphans = \"keep-rules\" (or \"keep-all\", or { expire-after = \"90d\" })";

/// `orphans`: a word, or a table with `expire-after`. `None` when invalid (reported) or absent.
fn orphans(cx: &mut Collector<'_>, f: &Field<'_>) -> Option<OrphanPolicy> {
    match f.value {
        Value::Dict(..) => {
            let mut t = cx.table(f, ORPHANS_EXAMPLE)?;
            let after = match t.get("expire-after") {
                None => {
                    cx.missing(
                        &t.path.key("expire-after"),
                        "missing: the orphans table needs expire-after",
                        "write orphans = { expire-after = \"90d\" } (delete an orphaned volume's snapshots once \
                         its newest is that old), or orphans = \"keep-rules\"",
                    );
                    None
                }
                Some(f) => cx.duration(&f, false, "orphans = { expire-after = \"90d\" }"),
            };
            t.finish(cx);
            after.map(OrphanPolicy::ExpireAfter)
        }
        Value::String(..) => cx.choice(
            f,
            &[
                ("keep-rules", OrphanPolicy::KeepRules),
                ("keep-all", OrphanPolicy::KeepAll),
            ],
        ),
        _ => {
            cx.problem(
                f,
                "expected a word or a table",
                format!("write {ORPHANS_EXAMPLE}"),
            );
            None
        }
    }
}

/// The deletion caps; `None` when one of them is invalid (already reported).
fn caps(cx: &mut Collector<'_>, t: &mut Table<'_>) -> Option<Caps> {
    let mut caps = Caps::default();
    let mut valid = true;
    if let Some(f) = t.get("max-deletes-per-run") {
        caps.max_deletes_per_run = cx
            .integer(&f, 1..=1_000_000, "max-deletes-per-run = 50")
            .map(|n| n as u32);
        valid &= caps.max_deletes_per_run.is_some();
    }
    if let Some(f) = t.get("max-delete-fraction") {
        const EXAMPLE: &str = "max-delete-fraction = 0.5";
        caps.max_delete_fraction = cx.number(&f, EXAMPLE).and_then(|x| {
            if x > 0.0 && x <= 1.0 {
                return Some(x);
            }
            let fix = if x > 1.0 && x <= 100.0 {
                format!(
                    "it is a fraction, not a percentage: write max-delete-fraction = {}",
                    x / 100.0
                )
            } else {
                format!(
                    "write a fraction above 0 and at most 1, e.g. {EXAMPLE} (1 allows deleting all but the rails)"
                )
            };
            cx.problem(&f, format!("{x} is not a fraction between 0 (exclusive) and 1"), fix);
            None
        });
        valid &= caps.max_delete_fraction.is_some();
    }
    valid.then_some(caps)
}

/// The target and, when present, the `tags` field (for pointing a later cross-check at it).
fn target_table<'v>(cx: &mut Collector<'_>, t: &mut Table<'v>) -> (Target, Option<Field<'v>>) {
    let mut target = Target {
        resource: ResourceKind::Instance,
        tags: BTreeMap::new(),
    };
    if let Some(f) = t.get("resource") {
        if let Some(r) = cx.choice(
            &f,
            &[
                ("instance", ResourceKind::Instance),
                ("volume", ResourceKind::Volume),
            ],
        ) {
            target.resource = r;
        }
    }
    let tags_field = t.get("tags");
    if let Some(f) = &tags_field {
        if let Some(tags) = cx.table(f, "tags = { Backup = \"true\", Env = \"prod\" }") {
            for entry in tags.entries() {
                let key = entry.path.raw().last().cloned().unwrap_or_default();
                if key.is_empty() || key.chars().count() > MAX_TAG_KEY {
                    cx.problem(
                        &entry,
                        format!("tag key `{key}` must be 1 to {MAX_TAG_KEY} characters"),
                        "write the tag key exactly as it appears on the resource",
                    );
                    continue;
                }
                let example = match entry.value {
                    Value::Bool(_, b) => {
                        format!("{key} = \"{b}\" (tag values are strings, quote them)")
                    }
                    Value::Num(..) => {
                        format!("the number in quotes, e.g. {key} = \"1\" (tag values are strings)")
                    }
                    _ => format!("{key} = \"value\", or \"*\" for any value"),
                };
                let Some(value) = cx.string(&entry, &example) else {
                    continue;
                };
                if value.chars().count() > MAX_TAG_VALUE {
                    cx.problem(
                        &entry,
                        format!("tag value is longer than {MAX_TAG_VALUE} characters"),
                        "write the tag value exactly as it appears on the resource",
                    );
                    continue;
                }
                target.tags.insert(key, value);
            }
            // Keys of the tags table are data (tag names), so there is no unknown-key check to finish.
        }
    }
    (target, tags_field)
}

fn schedules(cx: &mut Collector<'_>, f: &Field<'_>, regions: &[String]) -> Option<Vec<Schedule>> {
    const EXAMPLE: &str = "[[policy.schedule]] tables, each with name, cron and keep";
    let items = cx.array(f, EXAMPLE)?;
    if items.is_empty() {
        cx.problem(f, "the schedule list is empty", format!("write {EXAMPLE}"));
        return None;
    }
    let mut names = Names::default();
    let mut out = Vec::new();
    let mut complete = true;
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            path: f.path.item(i, None),
            value: item,
        };
        let Some(mut t) = cx.table(&field, EXAMPLE) else {
            complete = false;
            continue;
        };
        let name = name(cx, &mut t, &mut names, &f.path, i, 32, "schedule");
        match schedule(cx, &mut t, name, regions) {
            Some(s) => out.push(s),
            None => complete = false,
        }
        t.finish(cx);
    }
    // A partial list would make the tags cross-check judge only the schedules that happened to be valid.
    complete.then_some(out)
}

fn schedule(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    name: Option<String>,
    regions: &[String],
) -> Option<Schedule> {
    let cron = match t.get("cron") {
        None => {
            cx.missing(
                &t.path.key("cron"),
                "missing: the schedule has no cron expression",
                "add cron = \"30 4 * * *\" (min hour day-of-month month day-of-week, in daemon.timezone)",
            );
            None
        }
        Some(f) => {
            cx.string(&f, "cron = \"30 4 * * *\"")
                .and_then(|expr| match Cron::parse(&expr) {
                    Ok(cron) => Some(cron),
                    Err(fix) => {
                        cx.problem(&f, format!("`{expr}` is not a valid cron expression"), fix);
                        None
                    }
                })
        }
    };

    let keep_field = t.get("keep");
    let keep = match &keep_field {
        None => Some(KeepRules::default()),
        Some(f) => cx
            .table(
                f,
                "keep = { last = 7 } (or daily = 7, weekly = 4, within = \"7d\", within-daily = \"30d\", \
                 all = true)",
            )
            .and_then(|mut k| {
                let rules = keep(cx, &mut k);
                k.finish(cx);
                rules
            }),
    };

    // Outer `None`: no count-tag; `Some(None)`: one was given but is unusable (already reported).
    let count_tag: Option<Option<String>> = t.get("count-tag").map(|f| {
        let tag = cx.string(&f, "count-tag = \"SnapshotDaily\"")?;
        if tag.is_empty() || tag.chars().count() > MAX_TAG_KEY {
            cx.problem(
                &f,
                format!("count-tag `{tag}` must be a tag key of 1 to {MAX_TAG_KEY} characters"),
                "write the tag key whose value holds the count, e.g. count-tag = \"SnapshotDaily\"",
            );
            return None;
        }
        Some(tag)
    });

    if let Some(rules) = &keep {
        // It qualifies the rules next to it (a count tag is one); alone it would read as a rule that keeps the
        // app-consistent snapshots, and keep none.
        if rules.is_empty() && count_tag.is_none() && rules.app_consistent_only {
            cx.missing(
                &t.path.key("keep").key("app-consistent-only"),
                "app-consistent-only is the only key of keep: it says which snapshots the other rules count, and \
                 there is no other rule",
                "add the rule it qualifies, e.g. keep = { daily = 7, app-consistent-only = true }",
            );
        } else if rules.is_empty() && count_tag.is_none() {
            let message = "no keep rule: nothing says how many snapshots to keep";
            let fix = "add keep = { last = 7 } (count), keep = { daily = 7, weekly = 4, monthly = 12 } (calendar), \
                       keep = { within = \"7d\" } (age), keep = { all = true } (never prune), or count-tag = \
                       \"TagName\" to read the count from each resource's tag";
            match &keep_field {
                Some(f) => cx.problem(f, message, fix),
                None => cx.missing(&t.path.key("keep"), message, fix),
            }
        }
        // The planner takes the keep-last count from the tag and ignores `keep.last` on such a schedule; accepting
        // both would let an operator believe a count applies that never does.
        if rules.last.is_some() && count_tag.is_some() {
            cx.missing(
                &t.path.key("keep").key("last"),
                "keep.last is ignored on a schedule with count-tag: the tag's value is the count",
                "remove keep.last (within and all still apply next to count-tag), or remove count-tag",
            );
        }
    }

    let copies = super::copy::copies(cx, t, regions);

    Some(Schedule {
        name: name?,
        cron: cron?,
        keep: keep?,
        count_tag: match count_tag {
            None => None,
            Some(tag) => Some(tag?),
        },
        copies: copies?,
    })
}

/// Largest count a rule accepts: beyond it a typo (`70000`) is more likely than intent.
const MAX_RULE_COUNT: i64 = 10_000;

/// The keep rules, or `None` when one of them is invalid (already reported): an invalid rule must not also be
/// reported as "no keep rule". Zero counts and zero windows are refused: a rule that keeps nothing was never
/// what was meant, and a `daily = 0` next to nothing else would leave only the newest rail.
pub(super) fn keep(cx: &mut Collector<'_>, t: &mut Table<'_>) -> Option<KeepRules> {
    let mut rules = KeepRules::default();
    let mut valid = true;
    if let Some(f) = t.get("last") {
        rules.last = count(cx, &f, "last", false).and_then(|c| match c {
            Count::N(n) => Some(n),
            Count::All => None, // refused by `count` already
        });
        valid &= rules.last.is_some();
    }
    if let Some(f) = t.get("within") {
        rules.within = cx.duration(&f, false, "keep = { within = \"7d\" }");
        valid &= rules.within.is_some();
    }
    if let Some(f) = t.get("all") {
        match cx.bool(&f, "keep = { all = true }") {
            Some(all) => rules.all = all,
            None => valid = false,
        }
    }
    if let Some(f) = t.get("app-consistent-only") {
        match cx.bool(&f, "keep = { daily = 7, app-consistent-only = true }") {
            Some(only) => rules.app_consistent_only = only,
            None => valid = false,
        }
    }
    for period in Period::ALL {
        if let Some(f) = t.get(period.as_str()) {
            *rules.count_mut(period) = count(cx, &f, period.as_str(), true);
            valid &= rules.count(period).is_some();
        }
    }
    for period in Period::ALL {
        if let Some(f) = t.get(period.within_str()) {
            let example = format!("keep = {{ {} = \"30d\" }}", period.within_str());
            *rules.window_mut(period) = cx.duration(&f, false, &example);
            valid &= rules.window(period).is_some();
        }
    }
    valid.then_some(rules)
}

/// A rule's count: 1 to [`MAX_RULE_COUNT`], or `"all"` where `allow_all`.
fn count(cx: &mut Collector<'_>, f: &Field<'_>, key: &str, allow_all: bool) -> Option<Count> {
    let example = if allow_all {
        format!("keep = {{ {key} = 7 }} (or {key} = \"all\")")
    } else {
        format!("keep = {{ {key} = 7 }}")
    };
    match f.value {
        Value::String(_, s) if allow_all && s == "all" => Some(Count::All),
        Value::String(_, s) if allow_all => {
            let fix = if s.eq_ignore_ascii_case("all") {
                format!("write {key} = \"all\" (lowercase)")
            } else if s.trim().parse::<u32>().is_ok() {
                format!("write the number without quotes: {key} = {}", s.trim())
            } else {
                format!("write {example}")
            };
            cx.problem(f, format!("`{s}` is neither a count nor \"all\""), fix);
            None
        }
        Value::Num(_, n) if n.to_i128() == Some(0) || n.to_u128() == Some(0) => {
            cx.problem(
                f,
                format!("{key} = 0 keeps nothing by this rule"),
                format!(
                    "write a count of at least 1 (e.g. {example}), or remove {key} if the rule is not wanted"
                ),
            );
            None
        }
        _ => cx
            .integer(f, 1..=MAX_RULE_COUNT, &example)
            .map(|n| Count::N(n as u32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_shapes() {
        for good in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-5",
        ] {
            assert!(is_region(good), "{good}");
        }
        for bad in [
            "us-east-1a",
            "US-EAST-1",
            "useast1",
            "us-east",
            "",
            "eu-west-",
            "europe-west-1",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn endpoint_urls() {
        assert_eq!(endpoint_problem("http://127.0.0.1:5000"), None);
        assert_eq!(
            endpoint_problem("https://ec2.eu-west-1.amazonaws.com/"),
            None
        );
        assert_eq!(endpoint_problem("http://[::1]:5000"), None);
        assert!(endpoint_problem("127.0.0.1:5000").is_some());
        assert!(endpoint_problem("ftp://host").is_some());
        assert!(endpoint_problem("http://").is_some());
        assert!(endpoint_problem("http://host:port").is_some());
        assert!(endpoint_problem("http://ho st").is_some());
    }

    #[test]
    fn topic_arns() {
        assert_eq!(
            parse_topic_arn("arn:aws:sns:eu-west-1:123456789012:snapwarden").as_deref(),
            Ok("eu-west-1")
        );
        assert!(
            parse_topic_arn("arn:aws-us-gov:sns:us-gov-west-1:123456789012:alerts.fifo").is_ok()
        );
        for (bad, why) in [
            (
                "arn:aws:sns:eu-west-1:123456789012:t:sub-id",
                "subscription",
            ),
            ("arn:aws:sqs:eu-west-1:123456789012:t", "service"),
            ("arn:aws:sns:eu-west-1:1234:t", "12-digit"),
            ("arn:aws:sns:europe:123456789012:t", "region"),
            ("arn:aws:sns:eu-west-1:123456789012:", "topic name"),
            ("urn:aws:sns:eu-west-1:123456789012:t", "arn:"),
        ] {
            let err = parse_topic_arn(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn ssm_document_names_and_arns() {
        for good in [
            "snapwarden-fsfreeze",
            "AWS-RunShellScript",
            "a.b_c",
            &"x".repeat(128),
            "arn:aws:ssm:eu-west-1:123456789012:document/snapwarden-thaw",
            "arn:aws:ssm:us-east-1::document/AWSEC2-CreateVssSnapshot",
            "arn:aws-us-gov:ssm:us-gov-west-1:123456789012:document/freeze",
        ] {
            assert_eq!(document_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("ab", "3 to 128"),
            (&"x".repeat(129), "3 to 128"),
            ("my freeze", "3 to 128"),
            ("freeze/now", "3 to 128"),
            ("arn:aws:ssm:eu-west-1:123456789012:freeze", "document/NAME"),
            ("arn:aws:ssm:eu-west-1:123456789012:document/a", "3 to 128"),
            (
                "arn:aws:ssm:eu-west-1:document/freeze",
                "6 `:`-separated parts",
            ),
            (
                "arn:aws:sns:eu-west-1:123456789012:document/freeze",
                "service",
            ),
            (
                "arn:gcp:ssm:eu-west-1:123456789012:document/freeze",
                "partition",
            ),
            ("arn:aws:ssm:europe:123456789012:document/freeze", "region"),
            ("arn:aws:ssm:eu-west-1:12345:document/freeze", "12-digit"),
        ] {
            let err = document_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn log_levels() {
        assert_eq!(level_problem("info"), None);
        assert_eq!(level_problem("info,snapwarden=debug"), None);
        assert_eq!(
            level_problem("warn,snapwarden::worker[run{policy=prod}]=trace"),
            None
        );
        assert!(level_problem("inof")
            .unwrap()
            .0
            .contains("`inof` is not a level"));
        assert!(level_problem("snapwarden=loud").is_some());
        assert!(level_problem("").is_some());
        assert!(level_problem("info, debug x").is_some());
    }
}
