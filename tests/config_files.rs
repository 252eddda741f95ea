//! Every shipped config file validates, and bad files are rejected with every problem named by key.
//!
//! Shipped files are found by walking `config/`, so a new example is checked without touching this test. Bad
//! fixtures are inline and written to a temporary file, so they go through `load` exactly as a file on disk does.
//! The environment is always passed explicitly: nothing here depends on the shell running the tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use snapwarden::config::{
    self, Config, ConfigError, CopyRule, Encryption, LogFormat, ResourceKind, Rotation,
};
use snapwarden::retention::{Caps, Count, KeepRules, OrphanPolicy};

fn shipped_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        &mut files,
    );
    files.sort();
    files
}

fn load_shipped(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    config::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `toml` to a temporary file and loads it with `env`.
fn load_text(toml: &str, env: &[(&str, &str)]) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapwarden.toml");
    std::fs::write(&path, toml).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let result = config::load(&path, &env);
    (dir, result)
}

fn problems(toml: &str) -> ConfigError {
    match load_text(toml, &[]) {
        (_dir, Ok(config)) => panic!("expected problems, got {config:#?}"),
        (_dir, Err(e)) => e,
    }
}

fn keys(err: &ConfigError) -> Vec<&str> {
    err.problems.iter().map(|p| p.key.as_str()).collect()
}

const GOOD: &str = r#"
[[policy]]
name = "prod"
[policy.target]
tags = { Backup = "true" }
[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { last = 7 }
"#;

#[test]
fn every_shipped_config_file_validates() {
    let files = shipped_files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "snapwarden.example.toml",
        "gfs-by-count.toml",
        "tag-driven-counts.toml",
        "volume-generations.toml",
        "daily-quarterly-annual.toml",
        "windows-vss.toml",
        "linux-fsfreeze.toml",
        "dr-copy.toml",
        "multi-account.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from config/: {names:?}"
        );
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| config::load(f, &[]).err().map(|e| e.to_string()))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_examples_mean_what_their_comments_say() {
    let example = load_shipped("snapwarden.example.toml");
    assert_eq!(example.daemon.listen.to_string(), "127.0.0.1:9180");
    assert_eq!(example.log.format, None);
    assert!(example.notify.sns.is_none());

    let gfs = load_shipped("examples/gfs-by-count.toml");
    assert_eq!(gfs.daemon.timezone, chrono_tz::Europe::Berlin);
    let policy = &gfs.policies[0];
    let keep = &policy.schedules[0].keep;
    assert_eq!(
        [
            keep.hourly,
            keep.daily,
            keep.weekly,
            keep.monthly,
            keep.yearly
        ],
        [24, 7, 4, 12, 3].map(|n| Some(Count::N(n)))
    );
    assert_eq!(
        policy.caps,
        Caps {
            max_deletes_per_run: Some(30),
            max_delete_fraction: Some(0.5)
        }
    );
    assert_eq!(
        policy.orphans,
        OrphanPolicy::ExpireAfter(Duration::from_secs(180 * 86_400))
    );

    let four = load_shipped("examples/four-schedules-by-count.toml");
    let counts: Vec<(&str, Option<u32>)> = four.policies[0]
        .schedules
        .iter()
        .map(|s| (s.name.as_str(), s.keep.last))
        .collect();
    assert_eq!(
        counts,
        [
            ("hourly", Some(24)),
            ("daily", Some(7)),
            ("weekly", Some(4)),
            ("monthly", Some(12))
        ]
    );

    let tagged = load_shipped("examples/tag-driven-counts.toml");
    let policy = &tagged.policies[0];
    assert!(policy.target.tags.is_empty());
    let count_tags: Vec<Option<&str>> = policy
        .schedules
        .iter()
        .map(|s| s.count_tag.as_deref())
        .collect();
    assert_eq!(count_tags, [Some("SnapshotDaily"), Some("SnapshotHourly")]);

    let volumes = load_shipped("examples/volume-generations.toml");
    let policy = &volumes.policies[0];
    assert_eq!(policy.target.resource, ResourceKind::Volume);
    assert_eq!(
        policy.schedules[0].count_tag.as_deref(),
        Some("generations")
    );

    let dqa = load_shipped("examples/daily-quarterly-annual.toml");
    let policy = dqa.policy("finance").unwrap();
    assert_eq!(
        policy.schedule("daily").unwrap().keep.within,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(
        policy.schedule("quarterly").unwrap().keep.within,
        Some(Duration::from_secs(460 * 86_400))
    );
    assert!(policy.schedule("annual").unwrap().keep.all);
    assert_eq!(policy.target.tags["Compliance"], "*");
    let sns = dqa.notify.sns.as_ref().unwrap();
    assert_eq!(sns.region, "ap-southeast-2");
    assert_eq!(dqa.log.format, Some(LogFormat::Json));
    assert_eq!(dqa.log.file.as_ref().unwrap().rotation, Rotation::Daily);
}

/// The example documents optional settings as commented-out `# key = value` lines; switched on, they must
/// validate too, or the documentation teaches something the daemon rejects.
#[test]
fn commented_out_settings_in_the_example_validate_when_switched_on() {
    fn is_setting(line: &str) -> bool {
        let Some(rest) = line.strip_prefix("# ") else {
            return false;
        };
        let table = rest.starts_with('[') && rest.trim_end().ends_with(']') && !rest.contains(' ');
        let key = rest.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        });
        table || key
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/snapwarden.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut switched_on = 0;
    let lines: Vec<&str> = text
        .lines()
        .map(|line| {
            if is_setting(line) {
                switched_on += 1;
                &line[2..]
            } else {
                line
            }
        })
        .collect();
    // count-tag replaces keep.last, so the two cannot both be on in the first schedule; [policy.vss] needs
    // consistency = "vss".
    let on = lines
        .join("\n")
        .replacen("keep = { last = 7 }", "keep = { within = \"7d\" }", 1)
        .replacen(
            "\nconsistency = \"instance\"\n",
            "\nconsistency = \"vss\"\n",
            1,
        );
    assert!(
        switched_on >= 10,
        "only {switched_on} commented settings found"
    );
    let config = config::from_toml_str(&path, &on, &[]).unwrap_or_else(|e| panic!("{e}\n{on}"));
    assert!(config.notify.sns.is_some());
    assert!(config.log.file.is_some());
    assert_eq!(config.log.format, Some(LogFormat::Json));
    assert!(config.aws.endpoint_url.is_some());
    assert_eq!(
        config.policies[0].schedules[0].count_tag.as_deref(),
        Some("SnapshotDaily")
    );
    assert!(format!("{:?}", config.policies[0]).contains("vss: Some(Vss"));
    assert!(format!("{:?}", config.policies[0]).contains("post: Some(Script"));
    assert_eq!(config.policies[0].schedules[0].copies.len(), 1);
    assert_eq!(config.daemon.copy_concurrency, 20);
}

#[test]
fn problems_in_several_sections_are_all_reported() {
    let err = problems(
        r#"
[daemon]
listen = "0.0.0.0"
timezone = "Europe/Berlín"
max-concurrent-aws-calls = 0

[aws]
regions = ["us-east-1a"]
max-attempts = "3"
attempt-timeout = "90s"

[notify.sns]
topic-arn = "arn:aws:sns:us-east-1:123456789012:a:b"

[log]
format = "text"
verbosity = "debug"

[[policy]]
name = "prod"
[policy.target]
resource = "instances"
tags = { Backup = "true" }
[[policy.schedule]]
name = "daily"
cron = "0 3 * *"
keep = { last = 7 }
[[policy.schedule]]
name = "weekly"
cron = "0 3 * * 0"
"#,
    );
    assert_eq!(
        keys(&err),
        [
            "daemon.listen",
            "daemon.timezone",
            "daemon.max-concurrent-aws-calls",
            "aws.regions[#1]",
            "aws.max-attempts",
            "aws.attempt-timeout",
            "notify.sns.topic-arn",
            "log.format",
            "log.verbosity",
            "policy[prod].target.resource",
            "policy[prod].schedule[daily].cron",
            "policy[prod].schedule[weekly].keep",
        ],
        "{err}"
    );
    // Every problem says what to write instead.
    assert!(
        err.problems
            .iter()
            .all(|p| !p.message.is_empty() && !p.fix.is_empty()),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "config file {}: 12 problems\n",
            err.file.display()
        )),
        "{text}"
    );
    assert!(text.contains("\n  aws.max-attempts: expected a whole number from 1 to 20, found string \"3\" — write max-attempts = 5"), "{text}");
}

#[test]
fn unknown_key_is_rejected_with_a_suggestion() {
    let err = problems(&format!(
        "[daemon]\nlisten-address = \"127.0.0.1:9180\"\n{GOOD}"
    ));
    assert_eq!(keys(&err), ["daemon.listen-address"], "{err}");
    assert!(err.problems[0].message.contains("unknown key"), "{err}");
    assert!(err.problems[0].fix.contains("`listen`"), "{err}");
}

#[test]
fn four_field_cron_is_rejected_with_the_parsers_advice() {
    let err = problems(&GOOD.replace("30 4 * * *", "0 3 * *"));
    assert_eq!(keys(&err), ["policy[prod].schedule[daily].cron"], "{err}");
    let line = err.to_string().lines().nth(1).unwrap().to_string();
    assert!(
        line.starts_with(
            "  policy[prod].schedule[daily].cron: `0 3 * *` is not a valid cron expression — "
        ),
        "{line}"
    );
    assert!(line.contains("4 fields"), "{line}");
    assert!(line.contains("write 5"), "{line}");
}

#[test]
fn schedule_without_keep_rule_is_rejected() {
    let err = problems(&GOOD.replace("keep = { last = 7 }", ""));
    assert_eq!(keys(&err), ["policy[prod].schedule[daily].keep"], "{err}");
    assert!(err.problems[0].fix.contains("count-tag"), "{err}");
}

#[test]
fn bad_timezone_is_rejected() {
    let err = problems(&format!("[daemon]\ntimezone = \"Berlin\"\n{GOOD}"));
    assert_eq!(keys(&err), ["daemon.timezone"], "{err}");
    assert!(err.problems[0].fix.contains("Europe/Berlin"), "{err}");
}

#[test]
fn duplicate_names_are_rejected() {
    let twice = format!("{GOOD}{GOOD}");
    let err = problems(&twice);
    assert_eq!(keys(&err), ["policy[#2].name"], "{err}");
    assert!(err.problems[0].message.contains("already used"), "{err}");

    let err = problems(&format!("{GOOD}[[policy.schedule]]\nname = \"daily\"\ncron = \"0 * * * *\"\nkeep = {{ last = 1 }}\n"));
    assert_eq!(keys(&err), ["policy[prod].schedule[#2].name"], "{err}");
}

#[test]
fn env_overrides_apply_with_nesting_and_kebab_case() {
    let (_dir, result) = load_text(
        GOOD,
        &[
            ("SNAPWARDEN_DAEMON__LISTEN", "0.0.0.0:9180"),
            ("SNAPWARDEN_AWS__ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("SNAPWARDEN_AWS__MAX_ATTEMPTS", "2"),
            (
                "SNAPWARDEN_NOTIFY__SNS__TOPIC_ARN",
                "arn:aws:sns:eu-west-1:123456789012:alerts",
            ),
            ("SNAPWARDEN_CONFIG", "/not/this/one.toml"),
            // Not an override (no `__`): the test harness sets it, and it must not invalidate the config.
            ("SNAPWARDEN_MOTO_SERVER", "/usr/bin/moto_server"),
        ],
    );
    let config = result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.daemon.listen.to_string(), "0.0.0.0:9180");
    assert_eq!(
        config.aws.endpoint_url.as_deref(),
        Some("http://127.0.0.1:5000")
    );
    assert_eq!(config.aws.max_attempts, 2);
    let sns = config.notify.sns.unwrap();
    assert_eq!(sns.region, "eu-west-1");
    assert_eq!(sns.dedup_window, Duration::from_secs(6 * 3600));
}

#[test]
fn env_override_with_an_unknown_key_is_rejected() {
    let (_dir, result) = load_text(
        GOOD,
        &[("SNAPWARDEN_AWS__ENDPOINT", "http://127.0.0.1:5000")],
    );
    let err = result.unwrap_err();
    assert_eq!(keys(&err), ["aws.endpoint"], "{err}");
    let p = &err.problems[0];
    assert!(p.message.contains("SNAPWARDEN_AWS__ENDPOINT"), "{err}");
    assert!(p.fix.contains("SNAPWARDEN_AWS__ENDPOINT_URL"), "{err}");
}

#[test]
fn missing_file_is_one_problem_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = config::load(&path, &[]).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("config file {}: 1 problem\n", path.display())),
        "{text}"
    );
    assert!(
        err.problems[0]
            .message
            .contains(&path.display().to_string()),
        "{text}"
    );
    assert_eq!(ConfigError::EXIT_CODE, 78);
}

#[test]
fn the_dr_copy_example_copies_the_nightly_schedule_only() {
    let dr = load_shipped("examples/dr-copy.toml");
    assert_eq!(dr.daemon.copy_concurrency, 20);
    let policy = dr.policy("databases").unwrap();
    let nightly = policy.schedule("nightly").unwrap();
    assert_eq!(nightly.keep.last, Some(7));
    let mut keep = KeepRules::default();
    keep.weekly = Some(Count::N(4));
    keep.monthly = Some(Count::N(3));
    assert_eq!(
        nightly.copies,
        [CopyRule {
            region: "eu-central-1".into(),
            keep,
            encryption: Encryption::Encrypted {
                kms_key_id: Some("alias/snapwarden-dr".into())
            },
            copy_tags: true,
        }]
    );
    let hourly = policy.schedule("hourly").unwrap();
    assert_eq!(hourly.keep.last, Some(24));
    assert!(hourly.copies.is_empty());
}

/// GOOD with `aws.regions = ["us-east-1"]` and `copies` appended to its schedule.
fn with_copies(copies: &str) -> String {
    format!("[aws]\nregions = [\"us-east-1\"]\n{GOOD}{copies}")
}

fn copy_to(region: &str, rest: &str) -> String {
    format!("[[policy.schedule.copy]]\nregion = \"{region}\"\nkeep = {{ weekly = 4 }}\n{rest}\n")
}

/// The only problem of `toml`, which must be at `key`; the report names the file.
fn only_problem_in_file(toml: &str, key: &str) -> config::ConfigIssue {
    let err = problems(toml);
    assert_eq!(keys(&err), [key], "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("config file {}: 1 problem\n", err.file.display())),
        "{text}"
    );
    assert!(!err.problems[0].fix.is_empty(), "{err}");
    err.problems.into_iter().next().unwrap()
}

#[test]
fn a_copy_to_the_snapshotted_region_is_refused() {
    let p = only_problem_in_file(
        &with_copies(&copy_to("us-east-1", "")),
        "policy[prod].schedule[daily].copy[#1].region",
    );
    assert!(
        p.message
            .contains("`us-east-1` is one of aws.regions, which the policy snapshots"),
        "{p}"
    );
    assert!(p.fix.starts_with("copy to another region"), "{p}");
}

#[test]
fn a_copy_destination_that_is_not_a_region_is_refused() {
    let p = only_problem_in_file(
        &with_copies(&copy_to("Frankfurt", "")),
        "policy[prod].schedule[daily].copy[#1].region",
    );
    assert!(p.message.contains("is not an AWS region code"), "{p}");
}

#[test]
fn a_copy_with_a_kms_key_and_encrypted_false_is_refused() {
    let p = only_problem_in_file(
        &with_copies(&copy_to(
            "eu-west-1",
            "encrypted = false\nkms-key-id = \"alias/dr\"",
        )),
        "policy[prod].schedule[daily].copy[eu-west-1].encrypted",
    );
    assert!(
        p.message.contains("encrypted = false next to kms-key-id"),
        "{p}"
    );
    assert!(p.fix.contains("kms-key-id implies encrypted = true"), "{p}");
}

#[test]
fn more_than_three_copy_destinations_are_refused() {
    let four: String = ["eu-west-1", "eu-west-2", "eu-central-1", "ap-south-1"]
        .iter()
        .map(|r| copy_to(r, ""))
        .collect();
    let p = only_problem_in_file(&with_copies(&four), "policy[prod].schedule[daily].copy");
    assert!(
        p.message
            .contains("4 copy destinations: a schedule copies to at most 3 regions"),
        "{p}"
    );
    assert!(p.fix.contains("another schedule"), "{p}");
}

#[test]
fn a_kms_key_arn_of_another_region_than_the_destination_is_refused() {
    let p = only_problem_in_file(
        &with_copies(&copy_to(
            "eu-west-1",
            "kms-key-id = \"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab\"",
        )),
        "policy[prod].schedule[daily].copy[eu-west-1].kms-key-id",
    );
    assert!(
        p.message
            .contains("is a key in us-east-1, but the copy is made and encrypted in eu-west-1"),
        "{p}"
    );
    assert!(p.fix.contains("use a key in eu-west-1"), "{p}");
}

#[test]
fn every_copy_problem_of_a_file_is_reported_at_once() {
    let err = problems(&with_copies(&format!(
        "{}{}",
        copy_to("us-east-1", ""),
        copy_to(
            "eu-west-1",
            "kms-key-id = \"arn:aws:kms:eu-west-2:123456789012:alias/dr\""
        ),
    )));
    assert_eq!(
        keys(&err),
        [
            "policy[prod].schedule[daily].copy[#1].region",
            "policy[prod].schedule[daily].copy[eu-west-1].kms-key-id",
        ],
        "{err}"
    );
}

#[test]
fn copy_concurrency_out_of_range_names_the_key_and_the_fix() {
    let p = only_problem_in_file(
        &format!("[daemon]\ncopy-concurrency = 0\n{GOOD}"),
        "daemon.copy-concurrency",
    );
    assert_eq!(
        p.to_string(),
        "daemon.copy-concurrency: 0 is out of range — write a whole number from 1 to 100, e.g. \
         copy-concurrency = 20"
    );
}
