//! Validator tests: defaults, each check, problem collection across sections, and environment overrides.

use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[[policy]]
name = "prod"
[policy.target]
tags = { Backup = "true" }
[[policy.schedule]]
name = "daily"
cron = "30 4 * * *"
keep = { last = 7 }
"#;

fn parse(toml: &str) -> Result<Config, ConfigError> {
    from_toml_str(Path::new("/etc/snapwarden/test.toml"), toml, &[])
}

fn parse_env(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    from_toml_str(Path::new("/etc/snapwarden/test.toml"), toml, &env)
}

/// The problems, or a panic showing the config that unexpectedly validated.
fn problems(toml: &str) -> Vec<ConfigIssue> {
    match parse(toml) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(e) => e.problems,
    }
}

fn keys(problems: &[ConfigIssue]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

/// The only problem, which must be at `key`.
fn only_problem(toml: &str, key: &str) -> ConfigIssue {
    let problems = problems(toml);
    assert_eq!(keys(&problems), [key], "{problems:#?}");
    problems.into_iter().next().unwrap()
}

/// MINIMAL plus `extra` sections (TOML allows tables after the array of tables only if they are distinct).
fn with(extra: &str) -> String {
    format!("{extra}\n{MINIMAL}")
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.source, Path::new("/etc/snapwarden/test.toml"));
    assert_eq!(c.daemon.listen.to_string(), "127.0.0.1:9180");
    assert_eq!(c.daemon.timezone, chrono_tz::Tz::UTC);
    assert_eq!(c.policies[0].timezone, chrono_tz::Tz::UTC);
    assert_eq!(c.daemon.max_concurrent_aws_calls, 8);
    assert_eq!(c.daemon.shutdown_grace, Duration::from_secs(30));
    assert!(c.aws.regions.is_empty());
    assert_eq!(c.aws.endpoint_url, None);
    assert_eq!(c.aws.max_attempts, 5);
    assert_eq!(c.aws.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.aws.operation_timeout, Duration::from_secs(60));
    assert_eq!(c.aws.attempt_timeout, Duration::from_secs(20));
    assert!(c.notify.sns.is_none());
    assert_eq!(c.log.format, None);
    assert_eq!(c.log.level, "info");
    assert!(c.log.file.is_none());

    let policy = c.policy("prod").unwrap();
    assert_eq!(policy.target.resource, ResourceKind::Instance);
    assert_eq!(
        policy.target.tags.get("Backup").map(String::as_str),
        Some("true")
    );
    let daily = policy.schedule("daily").unwrap();
    assert_eq!(daily.keep.last, Some(7));
    assert_eq!(daily.count_tag, None);
    assert!(c.policy("nope").is_none());
    assert!(policy.schedule("nope").is_none());
}

#[test]
fn every_key_is_read() {
    let c = parse(&with(
        r#"
[daemon]
listen = "0.0.0.0:9999"
timezone = "Europe/Berlin"
max-concurrent-aws-calls = 16
shutdown-grace = "1m 30s"

[aws]
regions = ["eu-west-1", "us-east-1"]
endpoint-url = "http://127.0.0.1:5000"
max-attempts = 7
connect-timeout = "2s"
operation-timeout = "2m"
attempt-timeout = "30s"

[notify.sns]
topic-arn = "arn:aws:sns:eu-central-1:123456789012:snapwarden"
dedup-window = "12h"

[log]
format = "pretty"
level = "info,snapwarden=debug"
[log.file]
directory = "/var/log/sw"
prefix = "sw.log"
rotation = "hourly"
"#,
    ))
    .unwrap();
    assert_eq!(c.daemon.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(c.daemon.timezone, chrono_tz::Europe::Berlin);
    assert_eq!(c.policies[0].timezone, chrono_tz::Europe::Berlin);
    assert_eq!(c.daemon.max_concurrent_aws_calls, 16);
    assert_eq!(c.daemon.shutdown_grace, Duration::from_secs(90));
    assert_eq!(c.aws.regions, ["eu-west-1", "us-east-1"]);
    assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(c.aws.max_attempts, 7);
    assert_eq!(c.aws.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.aws.operation_timeout, Duration::from_secs(120));
    assert_eq!(c.aws.attempt_timeout, Duration::from_secs(30));
    let sns = c.notify.sns.unwrap();
    assert_eq!(sns.region, "eu-central-1");
    assert_eq!(sns.dedup_window, Duration::from_secs(12 * 3600));
    assert_eq!(c.log.format, Some(LogFormat::Pretty));
    assert_eq!(c.log.level, "info,snapwarden=debug");
    let file = c.log.file.unwrap();
    assert_eq!(file.directory, Path::new("/var/log/sw"));
    assert_eq!(file.prefix, "sw.log");
    assert_eq!(file.rotation, Rotation::Hourly);
}

#[test]
fn log_file_table_alone_takes_defaults() {
    let c = parse(&with("[log.file]")).unwrap();
    let file = c.log.file.unwrap();
    assert_eq!(file.directory, Path::new("/var/log/snapwarden"));
    assert_eq!(file.prefix, "snapwarden.log");
    assert_eq!(file.rotation, Rotation::Daily);
}

#[test]
fn problems_in_every_section_are_all_reported() {
    let problems = problems(
        r#"
[daemon]
listen = "localhost"
colour = "blue"
[aws]
max-attempts = "5"
[notify.sns]
dedup-window = "6h"
[log]
level = "inof"
[[policy]]
name = "prod"
[policy.target]
tags = { Backup = "true" }
[[policy.schedule]]
name = "daily"
cron = "0 3 * *"
"#,
    );
    assert_eq!(
        keys(&problems),
        [
            "daemon.listen",
            "daemon.colour",
            "aws.max-attempts",
            "notify.sns.topic-arn",
            "log.level",
            "policy[prod].schedule[daily].cron",
            "policy[prod].schedule[daily].keep",
        ],
        "{problems:#?}"
    );
    assert!(
        problems[2].message.contains("found string \"5\""),
        "{:?}",
        problems[2]
    );
    assert!(
        problems[2].fix.contains("max-attempts = 5"),
        "{:?}",
        problems[2]
    );
}

#[test]
fn display_has_a_count_line_then_key_message_fix_lines() {
    let err = parse("[daemon]\nlisten = 1\ntimezone = \"Mars/Olympus\"\n").unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "config file /etc/snapwarden/test.toml: 3 problems"
    );
    assert!(
        lines[1].starts_with("  daemon.listen: expected a string, found integer 1 — write "),
        "{text}"
    );
    assert!(
        lines[2].starts_with("  daemon.timezone: `Mars/Olympus` is not an IANA time zone — "),
        "{text}"
    );
    assert!(
        lines[3].starts_with("  policy: no policy is defined"),
        "{text}"
    );
    assert_eq!(lines.len(), 4);

    let one = ConfigError {
        file: "/x.toml".into(),
        problems: vec![ConfigIssue {
            key: String::new(),
            message: "m".into(),
            fix: "f".into(),
        }],
    };
    assert_eq!(one.to_string(), "config file /x.toml: 1 problem\n  m — f");
    assert_eq!(ConfigError::EXIT_CODE, 78);
}

#[test]
fn syntax_error_is_one_problem_with_line_and_column() {
    let err = parse("[daemon]\nlisten = \n").unwrap_err();
    assert_eq!(keys(&err.problems), ["line 2, column 10"]);
    assert!(err.problems[0].message.starts_with("not valid TOML"));
    assert!(!err.problems[0].message.contains('\n'));
}

#[test]
fn unknown_keys_get_suggestions_at_every_level() {
    let problems = problems(&with("[deamon]\n[log]\nLevel = \"info\"\n"));
    assert_eq!(keys(&problems), ["log.Level", "deamon"], "{problems:#?}");
    assert!(problems[0].fix.contains("did you mean `level`"));
    assert!(problems[1].fix.contains("did you mean `daemon`"));

    let p = only_problem(
        &MINIMAL.replace("keep = { last = 7 }", "keep = { last = 7, forever = true }"),
        "policy[prod].schedule[daily].keep.forever",
    );
    assert!(p.fix.contains("last, within, all"), "{p:?}");
}

#[test]
fn wrong_table_types_are_reported_and_do_not_hide_later_sections() {
    let problems = problems(&with("daemon = 5\naws = \"x\"\n[log]\nformat = \"xml\"\n"));
    assert_eq!(
        keys(&problems),
        ["daemon", "aws", "log.format"],
        "{problems:#?}"
    );
}

#[test]
fn numbers_are_range_checked() {
    for (toml, key) in [
        (
            "[daemon]\nmax-concurrent-aws-calls = 0",
            "daemon.max-concurrent-aws-calls",
        ),
        (
            "[daemon]\nmax-concurrent-aws-calls = 257",
            "daemon.max-concurrent-aws-calls",
        ),
        ("[aws]\nmax-attempts = 21", "aws.max-attempts"),
        ("[aws]\nmax-attempts = 2.5", "aws.max-attempts"),
    ] {
        only_problem(&with(toml), key);
    }
    let p = only_problem(
        &MINIMAL.replace("last = 7", "last = 10001"),
        "policy[prod].schedule[daily].keep.last",
    );
    assert!(p.fix.contains("1 to 10000"), "{p:?}");
}

#[test]
fn durations_need_units_and_timeouts_must_fit() {
    let p = only_problem(
        &with("[daemon]\nshutdown-grace = 30"),
        "daemon.shutdown-grace",
    );
    assert!(p.fix.contains("\"30s\""), "{p:?}");
    only_problem(
        &with("[aws]\nconnect-timeout = \"3 parsecs\""),
        "aws.connect-timeout",
    );
    only_problem(
        &with("[aws]\nconnect-timeout = \"0s\""),
        "aws.connect-timeout",
    );
    let p = only_problem(
        &with("[aws]\noperation-timeout = \"10s\"\nattempt-timeout = \"20s\""),
        "aws.attempt-timeout",
    );
    assert!(
        p.message.contains("longer than operation-timeout 10s"),
        "{p:?}"
    );
    // Zero grace is a legitimate "stop now".
    assert!(parse(&with("[daemon]\nshutdown-grace = \"0s\"")).is_ok());
}

#[test]
fn completion_deadline_defaults_to_ten_minutes_and_needs_a_unit() {
    assert_eq!(
        parse(MINIMAL).unwrap().daemon.completion_deadline,
        Duration::from_secs(600)
    );
    let c = parse(&with("[daemon]\ncompletion-deadline = \"2m 30s\"")).unwrap();
    assert_eq!(c.daemon.completion_deadline, Duration::from_secs(150));
    // Zero means "do not wait", a legitimate choice.
    let c = parse(&with("[daemon]\ncompletion-deadline = \"0s\"")).unwrap();
    assert_eq!(c.daemon.completion_deadline, Duration::ZERO);
    let p = only_problem(
        &with("[daemon]\ncompletion-deadline = 600"),
        "daemon.completion-deadline",
    );
    assert!(p.fix.contains("\"600s\""), "{p:?}");
    let p = only_problem(
        &with("[daemon]\ncompletion_deadline = \"10m\""),
        "daemon.completion_deadline",
    );
    assert!(p.fix.contains("completion-deadline"), "{p:?}");
}

#[test]
fn run_bound_and_retry_backoff_have_defaults_and_limits() {
    let d = parse(MINIMAL).unwrap().daemon;
    assert_eq!(
        (d.max_concurrent_runs, d.retry_backoff),
        (4, Duration::from_secs(60))
    );
    let c = parse(&with(
        "[daemon]\nmax-concurrent-runs = 16\nretry-backoff = \"30s\"",
    ))
    .unwrap();
    assert_eq!(
        (c.daemon.max_concurrent_runs, c.daemon.retry_backoff),
        (16, Duration::from_secs(30))
    );
    // Zero turns retries off.
    let c = parse(&with("[daemon]\nretry-backoff = \"0s\"")).unwrap();
    assert_eq!(c.daemon.retry_backoff, Duration::ZERO);
    let p = only_problem(
        &with("[daemon]\nmax-concurrent-runs = 0"),
        "daemon.max-concurrent-runs",
    );
    assert!(p.fix.contains("max-concurrent-runs = 4"), "{p:?}");
    only_problem(
        &with("[daemon]\nretry-backoff = 60"),
        "daemon.retry-backoff",
    );
}

#[test]
fn timezone_suggests_the_right_case() {
    let p = only_problem(
        &with("[daemon]\ntimezone = \"america/new_york\""),
        "daemon.timezone",
    );
    assert!(p.fix.contains("\"America/New_York\""), "{p:?}");
    let p = only_problem(&with("[daemon]\ntimezone = \"CEST\""), "daemon.timezone");
    assert!(p.fix.contains("IANA"), "{p:?}");
}

#[test]
fn aws_regions_and_endpoint_are_checked() {
    let problems = problems(&with(
        "[aws]\nregions = [\"us-east-1a\", \"eu-west-1\", \"eu-west-1\", 3]\nendpoint-url = \"localhost:5000\"",
    ));
    assert_eq!(
        keys(&problems),
        [
            "aws.regions[#1]",
            "aws.regions[#3]",
            "aws.regions[#4]",
            "aws.endpoint-url"
        ],
        "{problems:#?}"
    );
}

#[test]
fn sns_table_is_optional_but_needs_a_valid_topic() {
    let p = only_problem(
        &with("[notify.sns]\ntopic-arn = \"arn:aws:sns:us-east-1:123:alerts\""),
        "notify.sns.topic-arn",
    );
    assert!(p.message.contains("12-digit"), "{p:?}");
    only_problem(&with("[notify]\nsns = true"), "notify.sns");
    assert!(parse(&with("[notify]")).unwrap().notify.sns.is_none());
}

#[test]
fn log_settings_are_checked() {
    let problems = problems(&with(
        "[log]\nformat = \"Pretty\"\nlevel = \"snapwarden=loud\"\n[log.file]\ndirectory = \"relative\"\nprefix = \"a/b\"\nrotation = \"weekly\"",
    ));
    assert_eq!(
        keys(&problems),
        [
            "log.format",
            "log.level",
            "log.file.directory",
            "log.file.prefix",
            "log.file.rotation"
        ],
        "{problems:#?}"
    );
    assert!(problems[0].fix.contains("\"pretty\" (lowercase)"));
}

#[test]
fn at_least_one_policy_is_required() {
    let p = only_problem("[daemon]\n", "policy");
    assert!(p.fix.contains("[[policy]]"));
    only_problem("policy = []", "policy");
    only_problem("policy = \"prod\"", "policy");
}

#[test]
fn policy_and_schedule_names_are_checked_and_unique() {
    let toml = r#"
[[policy]]
name = "prod"
[policy.target]
tags = { Backup = "true" }
[[policy.schedule]]
name = "daily"
cron = "0 3 * * *"
keep = { last = 7 }
[[policy.schedule]]
name = "daily"
cron = "0 4 * * *"
keep = { last = 7 }
[[policy.schedule]]
name = "a,b"
cron = "0 5 * * *"
keep = { last = 7 }

[[policy]]
name = "prod"
[policy.target]
tags = { Backup = "true" }
[[policy.schedule]]
name = "daily"
cron = "0 3 * * *"
keep = { last = 7 }

[[policy]]
[policy.target]
tags = { Backup = "true" }
[[policy.schedule]]
name = "this-name-is-much-longer-than-thirty-two"
cron = "0 3 * * *"
keep = { last = 7 }
"#;
    let problems = problems(toml);
    assert_eq!(
        keys(&problems),
        [
            "policy[prod].schedule[#2].name",
            "policy[prod].schedule[#3].name",
            "policy[#2].name",
            "policy[#3].name",
            "policy[#3].schedule[#1].name",
        ],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("already used by schedule #1"));
    assert!(problems[2].message.contains("already used by policy #1"));
    assert!(problems[3].message.starts_with("missing"));
    assert!(problems[4].message.contains("longer than 32"));
}

#[test]
fn policy_needs_target_and_schedules() {
    let found = problems("[[policy]]\nname = \"p\"\n");
    assert_eq!(keys(&found), ["policy[p].target", "policy[p].schedule"]);
    let found = problems(
        "[[policy]]\nname = \"p\"\nschedule = []\n[policy.target]\ntags = { A = \"b\" }\n",
    );
    assert_eq!(keys(&found), ["policy[p].schedule"]);
}

#[test]
fn target_is_checked() {
    let problems = problems(&MINIMAL.replace(
        "tags = { Backup = \"true\" }",
        "resource = \"instances\"\ntags = { Backup = true, Copies = 3, \"\" = \"x\" }",
    ));
    assert_eq!(
        keys(&problems),
        [
            "policy[prod].target.resource",
            "policy[prod].target.tags.\"\"",
            "policy[prod].target.tags.Backup",
            "policy[prod].target.tags.Copies",
        ],
        "{problems:#?}"
    );
    assert!(
        problems[2].fix.contains("Backup = \"true\""),
        "{:?}",
        problems[2]
    );
}

#[test]
fn volume_targets_and_wildcard_tags() {
    let c = parse(&MINIMAL.replace(
        "tags = { Backup = \"true\" }",
        "resource = \"volume\"\ntags = { Backup = \"*\" }",
    ))
    .unwrap();
    let target = &c.policies[0].target;
    assert_eq!(target.resource, ResourceKind::Volume);
    assert_eq!(target.resource.as_str(), "volume");
    assert_eq!(target.tags["Backup"], "*");
}

#[test]
fn bad_cron_uses_the_schedule_parsers_fix() {
    let p = only_problem(
        &MINIMAL.replace("30 4 * * *", "0 3 * *"),
        "policy[prod].schedule[daily].cron",
    );
    assert_eq!(p.message, "`0 3 * *` is not a valid cron expression");
    assert_eq!(Some(p.fix), crate::schedule::Cron::parse("0 3 * *").err());
}

#[test]
fn schedule_without_keep_rule_is_an_error_unless_count_tag() {
    only_problem(
        &MINIMAL.replace("keep = { last = 7 }", ""),
        "policy[prod].schedule[daily].keep",
    );
    only_problem(
        &MINIMAL.replace("keep = { last = 7 }", "keep = {}"),
        "policy[prod].schedule[daily].keep",
    );
    only_problem(
        &MINIMAL.replace("keep = { last = 7 }", "keep = { all = false }"),
        "policy[prod].schedule[daily].keep",
    );

    let c =
        parse(&MINIMAL.replace("keep = { last = 7 }", "count-tag = \"SnapshotDaily\"")).unwrap();
    let s = &c.policies[0].schedules[0];
    assert!(s.keep.is_empty());
    assert_eq!(s.count_tag.as_deref(), Some("SnapshotDaily"));

    let c = parse(&MINIMAL.replace(
        "keep = { last = 7 }",
        "keep = { within = \"7d\", all = true }",
    ))
    .unwrap();
    let keep = &c.policies[0].schedules[0].keep;
    assert_eq!(keep.within, Some(Duration::from_secs(7 * 86_400)));
    assert!(keep.all);

    let c = parse(&MINIMAL.replace(
        "keep = { last = 7 }",
        "count-tag = \"SnapshotDaily\"\nkeep = { within = \"2d\" }",
    ))
    .unwrap();
    assert_eq!(
        c.policies[0].schedules[0].keep.within,
        Some(Duration::from_secs(2 * 86_400))
    );
    let p = only_problem(
        &MINIMAL.replace(
            "keep = { last = 7 }",
            "count-tag = \"SnapshotDaily\"\nkeep = { last = 7 }",
        ),
        "policy[prod].schedule[daily].keep.last",
    );
    assert!(p.message.contains("ignored"), "{p:?}");

    only_problem(
        &MINIMAL.replace("keep = { last = 7 }", "count-tag = \"\""),
        "policy[prod].schedule[daily].count-tag",
    );
}

#[test]
fn empty_tags_need_a_count_tag_on_every_schedule() {
    let counted = r#"
[[policy]]
name = "by-tag"
[policy.target]
[[policy.schedule]]
name = "daily"
cron = "0 3 * * *"
count-tag = "SnapshotDaily"
"#;
    let c = parse(counted).unwrap();
    assert!(c.policies[0].target.tags.is_empty());

    let mixed = format!("{counted}[[policy.schedule]]\nname = \"hourly\"\ncron = \"0 * * * *\"\nkeep = {{ last = 24 }}\n");
    let p = only_problem(&mixed, "policy[by-tag].target.tags");
    assert!(p.message.contains("hourly"), "{p:?}");
    assert!(!p.message.contains("daily,"), "{p:?}");

    let explicit_empty = MINIMAL.replace("tags = { Backup = \"true\" }", "tags = {}");
    only_problem(&explicit_empty, "policy[prod].target.tags");
}

#[test]
fn env_overrides_nest_and_map_to_kebab_case() {
    let c = parse_env(
        MINIMAL,
        &[
            ("SNAPWARDEN_DAEMON__LISTEN", "0.0.0.0:9180"),
            ("SNAPWARDEN_DAEMON__MAX_CONCURRENT_AWS_CALLS", "4"),
            ("SNAPWARDEN_AWS__ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("SNAPWARDEN_AWS__REGIONS", "[eu-west-1, us-east-1]"),
            ("SNAPWARDEN_LOG__LEVEL", "info,snapwarden=debug"),
            ("SNAPWARDEN_CONFIG", "/somewhere/else.toml"),
            ("PATH", "/usr/bin"),
        ],
    )
    .unwrap();
    assert_eq!(c.daemon.listen.to_string(), "0.0.0.0:9180");
    assert_eq!(c.daemon.max_concurrent_aws_calls, 4);
    assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
    assert_eq!(c.aws.regions, ["eu-west-1", "us-east-1"]);
    assert_eq!(c.log.level, "info,snapwarden=debug");
}

#[test]
fn env_overrides_win_over_the_file_and_keep_its_other_keys() {
    let c = parse_env(
        &with("[daemon]\nlisten = \"127.0.0.1:1\"\ntimezone = \"Europe/Paris\""),
        &[("SNAPWARDEN_DAEMON__LISTEN", "0.0.0.0:2")],
    )
    .unwrap();
    assert_eq!(c.daemon.listen.to_string(), "0.0.0.0:2");
    assert_eq!(c.daemon.timezone, chrono_tz::Europe::Paris);
}

#[test]
fn env_values_are_read_as_the_operator_meant() {
    let c = parse_env(
        MINIMAL,
        &[
            ("SNAPWARDEN_AWS__REGIONS", "eu-west-1"),
            ("SNAPWARDEN_LOG__LEVEL", "5"),
        ],
    )
    .unwrap();
    assert_eq!(c.aws.regions, ["eu-west-1"]);
    assert_eq!(c.log.level, "5");
    // The same leniency does not apply to the file, where TOML has types.
    only_problem(&with("[aws]\nregions = \"eu-west-1\""), "aws.regions");
}

#[test]
fn env_problems_name_the_variable() {
    let err = parse_env(
        MINIMAL,
        &[
            ("SNAPWARDEN_DAEMON__LISTN", "0.0.0.0:9180"),
            ("SNAPWARDEN_AWS__MAX_ATTEMPTS", "99"),
            ("SNAPWARDEN_AWS____X", "1"),
        ],
    )
    .unwrap_err();
    assert_eq!(
        keys(&err.problems),
        ["SNAPWARDEN_AWS____X", "daemon.listn", "aws.max-attempts"],
        "{err}"
    );
    assert!(err.problems[1]
        .message
        .contains("(set by environment variable SNAPWARDEN_DAEMON__LISTN)"));
    assert!(
        err.problems[1].fix.contains("SNAPWARDEN_DAEMON__LISTEN"),
        "{err}"
    );
    assert!(err.problems[2]
        .message
        .contains("(set by environment variable SNAPWARDEN_AWS__MAX_ATTEMPTS)"));
}

#[test]
fn env_table_values_name_the_variable_that_set_the_table() {
    let err = parse_env(
        MINIMAL,
        &[(
            "SNAPWARDEN_NOTIFY__SNS",
            "{topic-arn=\"arn:aws:sns:x:1:t\"}",
        )],
    )
    .unwrap_err();
    assert_eq!(keys(&err.problems), ["notify.sns.topic-arn"], "{err}");
    assert!(
        err.problems[0].message.contains("SNAPWARDEN_NOTIFY__SNS)"),
        "{err}"
    );
}

#[test]
fn file_values_are_not_attributed_to_the_environment() {
    let err = parse_env(
        &with("[daemon]\nlisten = \"nope\""),
        &[("SNAPWARDEN_DAEMON__TIMEZONE", "UTC")],
    )
    .unwrap_err();
    assert_eq!(keys(&err.problems), ["daemon.listen"]);
    assert!(!err.problems[0].message.contains("environment"), "{err}");
}

#[test]
fn resolve_path_prefers_cli_then_env_then_default() {
    let cli = Path::new("/cli.toml");
    assert_eq!(resolve_path_from(Some(cli), Some("/env.toml".into())), cli);
    assert_eq!(
        resolve_path_from(None, Some("/env.toml".into())),
        Path::new("/env.toml")
    );
    assert_eq!(
        resolve_path_from(None, Some("".into())),
        Path::new(DEFAULT_PATH)
    );
    assert_eq!(resolve_path_from(None, None), Path::new(DEFAULT_PATH));
    assert_eq!(resolve_path(Some(cli)), cli);
}

#[test]
fn load_reports_a_missing_file_as_one_problem() {
    let err = load(Path::new("/nonexistent/snapwarden.toml"), &[]).unwrap_err();
    assert_eq!(err.file, Path::new("/nonexistent/snapwarden.toml"));
    assert_eq!(keys(&err.problems), [""]);
    assert!(err.problems[0]
        .message
        .contains("/nonexistent/snapwarden.toml"));
    assert!(err.problems[0].fix.contains("--config"));
}

/// The built-in demo config (inline-table style) must keep validating.
#[test]
fn the_demo_config_validates() {
    let c = parse(crate::demo::DEMO_CONFIG).unwrap();
    assert_eq!(c.policies.len(), 2);
    assert_eq!(
        c.policy("tagged").unwrap().schedules[0]
            .count_tag
            .as_deref(),
        Some("SnapshotCount")
    );
}

#[test]
fn calendar_keep_rules_are_read() {
    use crate::retention::{Count, Period};
    let c = parse(&MINIMAL.replace(
        "keep = { last = 7 }",
        "keep = { hourly = 24, daily = 7, weekly = 4, monthly = 12, quarterly = 8, yearly = \"all\", \
         within-hourly = \"2d\", within-daily = \"30d\", within-weekly = \"8w\", within-monthly = \"365d\", \
         within-quarterly = \"730d\", within-yearly = \"3650d\" }",
    ))
    .unwrap();
    let keep = &c.policies[0].schedules[0].keep;
    assert_eq!(keep.hourly, Some(Count::N(24)));
    assert_eq!(keep.daily, Some(Count::N(7)));
    assert_eq!(keep.weekly, Some(Count::N(4)));
    assert_eq!(keep.monthly, Some(Count::N(12)));
    assert_eq!(keep.quarterly, Some(Count::N(8)));
    assert_eq!(keep.yearly, Some(Count::All));
    assert_eq!(keep.within_hourly, Some(Duration::from_secs(2 * 86_400)));
    assert_eq!(keep.within_daily, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(keep.within_weekly, Some(Duration::from_secs(56 * 86_400)));
    assert_eq!(
        keep.window(Period::Month),
        Some(Duration::from_secs(365 * 86_400))
    );
    assert_eq!(
        keep.within_quarterly,
        Some(Duration::from_secs(730 * 86_400))
    );
    assert_eq!(keep.within_yearly, Some(Duration::from_secs(3650 * 86_400)));
    assert_eq!(keep.last, None);

    // A calendar rule alone is a keep rule, also next to count-tag.
    let c = parse(&MINIMAL.replace(
        "keep = { last = 7 }",
        "count-tag = \"SnapshotDaily\"\nkeep = { monthly = 3 }",
    ))
    .unwrap();
    assert_eq!(c.policies[0].schedules[0].keep.monthly, Some(Count::N(3)));
}

#[test]
fn rules_that_keep_nothing_are_refused_all_at_once() {
    let found = problems(&MINIMAL.replace(
        "keep = { last = 7 }",
        "keep = { last = 0, daily = 0, weekly = \"All\", monthly = \"12\", yearly = \"forever\", \
         quarterly = 10001, within-daily = \"0d\", within-weekly = 30, hourly = -1 }",
    ));
    let by_key: BTreeMap<&str, &ConfigIssue> = found.iter().map(|p| (p.key.as_str(), p)).collect();
    let k = "policy[prod].schedule[daily].keep";
    assert_eq!(
        keys(&found),
        [
            format!("{k}.last"),
            format!("{k}.hourly"),
            format!("{k}.daily"),
            format!("{k}.weekly"),
            format!("{k}.monthly"),
            format!("{k}.quarterly"),
            format!("{k}.yearly"),
            format!("{k}.within-daily"),
            format!("{k}.within-weekly"),
        ],
        "{found:#?}"
    );
    let last = by_key[format!("{k}.last").as_str()];
    assert_eq!(last.message, "last = 0 keeps nothing by this rule");
    assert!(last.fix.contains("at least 1"), "{last:?}");
    assert!(!last.fix.contains("all"), "last has no \"all\": {last:?}");
    let daily = by_key[format!("{k}.daily").as_str()];
    assert!(daily.fix.contains("remove daily"), "{daily:?}");
    assert!(by_key[format!("{k}.weekly").as_str()]
        .fix
        .contains("(lowercase)"));
    assert!(by_key[format!("{k}.monthly").as_str()]
        .fix
        .contains("without quotes: monthly = 12"));
    assert!(by_key[format!("{k}.yearly").as_str()]
        .message
        .contains("neither a count nor \"all\""));
    assert!(by_key[format!("{k}.quarterly").as_str()]
        .message
        .contains("out of range"));
    assert!(by_key[format!("{k}.within-daily").as_str()]
        .message
        .contains("is zero"));
    assert!(by_key[format!("{k}.within-weekly").as_str()]
        .message
        .contains("bare number 30"));
    assert!(by_key[format!("{k}.hourly").as_str()]
        .message
        .contains("out of range"));
}

#[test]
fn keep_typos_are_unknown_keys_with_suggestions() {
    let p = only_problem(
        &MINIMAL.replace(
            "keep = { last = 7 }",
            "keep = { last = 7, within_daily = \"30d\" }",
        ),
        "policy[prod].schedule[daily].keep.within_daily",
    );
    assert!(p.fix.contains("did you mean `within-daily`"), "{p:?}");
    let p = only_problem(
        &MINIMAL.replace("keep = { last = 7 }", "keep = { last = 7, weeks = 4 }"),
        "policy[prod].schedule[daily].keep.weeks",
    );
    assert!(p.fix.contains("weekly"), "{p:?}");
}

#[test]
fn no_keep_rule_mentions_calendar_rules() {
    let p = only_problem(
        &MINIMAL.replace("keep = { last = 7 }", "keep = {}"),
        "policy[prod].schedule[daily].keep",
    );
    assert!(p.fix.contains("daily = 7, weekly = 4"), "{p:?}");
}

#[test]
fn orphans_and_caps_default_and_parse() {
    use crate::retention::{Caps, OrphanPolicy};
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.policies[0].orphans, OrphanPolicy::KeepRules);
    assert_eq!(c.policies[0].caps, Caps::default());

    let policy_keys =
        |extra: &str| MINIMAL.replace("name = \"prod\"", &format!("name = \"prod\"\n{extra}"));
    for (line, want) in [
        ("orphans = \"keep-rules\"", OrphanPolicy::KeepRules),
        ("orphans = \"keep-all\"", OrphanPolicy::KeepAll),
        (
            "orphans = { expire-after = \"90d\" }",
            OrphanPolicy::ExpireAfter(Duration::from_secs(90 * 86_400)),
        ),
    ] {
        assert_eq!(
            parse(&policy_keys(line)).unwrap().policies[0].orphans,
            want,
            "{line}"
        );
    }
    let c = parse(&policy_keys(
        "max-deletes-per-run = 50\nmax-delete-fraction = 0.5",
    ))
    .unwrap();
    assert_eq!(
        c.policies[0].caps,
        Caps {
            max_deletes_per_run: Some(50),
            max_delete_fraction: Some(0.5),
        }
    );
    let c = parse(&policy_keys("max-delete-fraction = 1")).unwrap();
    assert_eq!(c.policies[0].caps.max_delete_fraction, Some(1.0));
}

#[test]
fn bad_orphans_and_caps_are_all_reported() {
    let toml = MINIMAL.replace(
        "name = \"prod\"",
        "name = \"prod\"\norphans = \"Keep-All\"\nmax-deletes-per-run = 0\nmax-delete-fraction = 50",
    );
    let found = problems(&toml);
    assert_eq!(
        keys(&found),
        [
            "policy[prod].orphans",
            "policy[prod].max-deletes-per-run",
            "policy[prod].max-delete-fraction",
        ],
        "{found:#?}"
    );
    assert!(
        found[0].fix.contains("\"keep-all\" (lowercase)"),
        "{:?}",
        found[0]
    );
    assert!(
        found[2]
            .fix
            .contains("not a percentage: write max-delete-fraction = 0.5"),
        "{:?}",
        found[2]
    );

    for (line, key, needle) in [
        (
            "orphans = { expire-after = \"0d\" }",
            "policy[prod].orphans.expire-after",
            "is zero",
        ),
        (
            "orphans = {}",
            "policy[prod].orphans.expire-after",
            "missing",
        ),
        (
            "orphans = { expire = \"9d\" }",
            "policy[prod].orphans.expire",
            "unknown key",
        ),
        ("orphans = 90", "policy[prod].orphans", "a word or a table"),
        (
            "orphans = \"forever\"",
            "policy[prod].orphans",
            "is not one of",
        ),
        (
            "max-delete-fraction = 0",
            "policy[prod].max-delete-fraction",
            "between 0",
        ),
        (
            "max-delete-fraction = -0.5",
            "policy[prod].max-delete-fraction",
            "between 0",
        ),
        (
            "max-delete-fraction = \"half\"",
            "policy[prod].max-delete-fraction",
            "expected a number",
        ),
        (
            "max-deletes-per-run = 2.5",
            "policy[prod].max-deletes-per-run",
            "whole number",
        ),
    ] {
        let toml = MINIMAL.replace("name = \"prod\"", &format!("name = \"prod\"\n{line}"));
        let all = problems(&toml);
        let p = all
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("{line}: no problem at {key}: {all:#?}"));
        assert!(p.message.contains(needle), "{line}: {p:?}");
    }
}

#[test]
fn consistency_defaults_by_target_and_rejects_instance_for_volume_targets() {
    use crate::config::Consistency;
    let policy_keys =
        |extra: &str| MINIMAL.replace("name = \"prod\"", &format!("name = \"prod\"\n{extra}"));
    assert_eq!(
        parse(MINIMAL).unwrap().policies[0].consistency,
        Consistency::Instance
    );
    assert_eq!(
        parse(&policy_keys("consistency = \"volume\""))
            .unwrap()
            .policies[0]
            .consistency,
        Consistency::Volume
    );
    let volumes = MINIMAL.replace(
        "[policy.target]\n",
        "[policy.target]\nresource = \"volume\"\n",
    );
    assert_ne!(volumes, MINIMAL);
    assert_eq!(
        parse(&volumes).unwrap().policies[0].consistency,
        Consistency::Volume
    );
    let p = only_problem(
        &volumes.replace(
            "name = \"prod\"",
            "name = \"prod\"\nconsistency = \"instance\"",
        ),
        "policy[prod].consistency",
    );
    assert!(p.fix.contains("remove consistency"), "{p:?}");
    let p = only_problem(
        &policy_keys("consistency = \"crash\""),
        "policy[prod].consistency",
    );
    assert!(p.message.contains("is not one of"), "{p:?}");
}

#[test]
fn the_dedup_window_default_is_written_down_as_the_constant_says() {
    let default = humantime::format_duration(DEFAULT_DEDUP_WINDOW).to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("config/snapwarden.example.toml")).unwrap();
    assert!(
        readme.contains(&format!("`notify.sns.dedup-window` (default {default})")),
        "README.md must state the de-dup window default {default}"
    );
    assert!(
        example.contains(&format!(
            "Default: \"{default}\".\n# dedup-window = \"{default}\""
        )),
        "config/snapwarden.example.toml must state the de-dup window default {default}"
    );
    let toml = MINIMAL.replace(
        "[[policy]]",
        "[notify.sns]\ntopic-arn = \"arn:aws:sns:us-east-1:123456789012:t\"\n\n[[policy]]",
    );
    assert_ne!(toml, MINIMAL);
    let sns = parse(&toml).unwrap().notify.sns.unwrap();
    assert_eq!(sns.dedup_window, DEFAULT_DEDUP_WINDOW);
}

#[test]
fn the_readme_states_the_daemon_defaults_the_loader_uses() {
    use super::sections::{
        DEFAULT_COMPLETION_DEADLINE, DEFAULT_MAX_CONCURRENT_RUNS, DEFAULT_RETRY_BACKOFF,
    };
    let human = |d: Duration| humantime::format_duration(d).to_string();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for stated in [
        format!(
            "`daemon.retry-backoff` (default `{}`",
            human(DEFAULT_RETRY_BACKOFF)
        ),
        format!(
            "`daemon.completion-deadline` (default {})",
            human(DEFAULT_COMPLETION_DEADLINE)
        ),
        format!(
            "`daemon.max-concurrent-runs` fires (one policy, one slot, all regions; default \
             {DEFAULT_MAX_CONCURRENT_RUNS})"
        ),
        format!("the {} s grace", DEFAULT_SHUTDOWN_GRACE.as_secs()),
        format!(
            "`daemon.copy-concurrency` (default {}, 1 to 100)",
            super::sections::DEFAULT_COPY_CONCURRENCY
        ),
        format!(
            "capped at {} minutes",
            crate::scheduler::MAX_RETRY_DELAY.as_secs() / 60
        ),
    ] {
        assert!(readme.contains(&stated), "README.md must say {stated:?}");
    }
    let d = parse(MINIMAL).unwrap().daemon;
    assert_eq!(
        (
            d.retry_backoff,
            d.completion_deadline,
            d.max_concurrent_runs,
            d.shutdown_grace
        ),
        (
            DEFAULT_RETRY_BACKOFF,
            DEFAULT_COMPLETION_DEADLINE,
            DEFAULT_MAX_CONCURRENT_RUNS,
            DEFAULT_SHUTDOWN_GRACE
        )
    );
}

/// The example config states each key's default twice, as `Default: …` and as the key's value: both must be what
/// the loader takes when the key is left out, so writing either one changes nothing.
#[test]
fn the_example_config_states_the_defaults_the_loader_uses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/snapwarden.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut section = String::new();
    let mut stated: Option<String> = None;
    let mut checked = Vec::new();
    for line in text.lines() {
        if line.starts_with("[[policy]]") {
            break;
        }
        let bare = line.strip_prefix("# ").unwrap_or(line);
        if let Some(name) = bare.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if let Some((_, value)) = line.rsplit_once("Default: ") {
            // Only a TOML value ("unset, which means…" and "systemd's $RUNTIME_DIRECTORY" are prose).
            stated = value
                .strip_suffix('.')
                .filter(|v| toml::from_str::<toml::Table>(&format!("v = {v}")).is_ok())
                .map(str::to_string);
            continue;
        }
        let Some((key, value)) = bare.split_once(" = ") else {
            continue;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            continue;
        }
        let Some(default) = stated.take() else {
            continue;
        };
        assert_eq!(
            value, default,
            "[{section}] {key}: the value shown is the stated default"
        );
        // Tables the loader only fills in when present; the SNS table needs its topic.
        let table = match section.as_str() {
            "notify.sns" => {
                "[notify.sns]\ntopic-arn = \"arn:aws:sns:us-east-1:123456789012:t\"\n".to_string()
            }
            other => format!("[{other}]\n"),
        };
        let left_out = parse(&with(&table)).unwrap();
        let written = parse(&with(&format!("{table}{key} = {default}\n")))
            .unwrap_or_else(|e| panic!("[{section}] {key} = {default}: {e}"));
        assert_eq!(
            format!("{written:?}"),
            format!("{left_out:?}"),
            "[{section}] {key}: the stated default {default} is not what the loader takes without the key"
        );
        checked.push(format!("{section}.{key}"));
    }
    // The defaults of [daemon], [aws], [notify.sns], [log] and [log.file] that have a value.
    assert_eq!(checked.len(), 18, "{checked:?}");
}

#[test]
fn pacing_retries_a_call_as_often_as_the_config_default_says() {
    // A backend paced without a config (tests, the benchmark) retries as the daemon does by default.
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        crate::ec2::pace::PaceConfig::default().max_attempts,
        c.aws.max_attempts
    );
    assert_eq!(
        crate::daemon::pace_config(&c).max_attempts,
        c.aws.max_attempts
    );
}

#[test]
fn the_notifier_window_is_the_topics_else_the_default() {
    assert_eq!(
        parse(MINIMAL).unwrap().notify.dedup_window(),
        DEFAULT_DEDUP_WINDOW
    );
    let toml = with(
        "[notify.sns]\ntopic-arn = \"arn:aws:sns:us-east-1:123456789012:t\"\ndedup-window = \"2h\"",
    );
    assert_eq!(
        parse(&toml).unwrap().notify.dedup_window(),
        Duration::from_secs(2 * 3600)
    );
}

/// MINIMAL with `keys` added to the policy and `tables` (`[policy.vss]`, …) before its schedule.
fn policy_with(keys: &str, tables: &str) -> String {
    let toml = MINIMAL
        .replace("name = \"prod\"", &format!("name = \"prod\"\n{keys}"))
        .replace(
            "[[policy.schedule]]",
            &format!("{tables}\n[[policy.schedule]]"),
        );
    assert_ne!(toml, MINIMAL);
    toml
}

/// The same, with the policy targeting volumes.
fn volume_policy_with(keys: &str, tables: &str) -> String {
    policy_with(keys, tables).replace(
        "[policy.target]\n",
        "[policy.target]\nresource = \"volume\"\n",
    )
}

#[test]
fn vss_without_its_table_gets_every_default() {
    let c = parse(&policy_with("consistency = \"vss\"", "")).unwrap();
    let p = &c.policies[0];
    assert_eq!(p.consistency, Consistency::Vss);
    assert_eq!(
        p.vss,
        Some(Vss {
            exclude_boot_volume: false,
            copy_only: false,
            no_writers: false,
            timeout: DEFAULT_VSS_TIMEOUT,
            on_failure: OnFailure::CrashConsistent,
        })
    );
    assert_eq!(p.scripts, None);
    // Without consistency = "vss" there is no VSS at all.
    let plain = parse(MINIMAL).unwrap();
    assert_eq!(
        (
            plain.policies[0].vss.as_ref(),
            plain.policies[0].scripts.as_ref()
        ),
        (None, None)
    );
}

#[test]
fn every_vss_and_script_key_is_read() {
    let c = parse(&policy_with(
        "consistency = \"vss\"",
        r#"
[policy.vss]
exclude-boot-volume = true
copy-only = true
no-writers = true
timeout = "2h"
on-failure = "skip"

[policy.scripts]
on-failure = "skip"
[policy.scripts.pre]
document = "snapwarden-fsfreeze"
parameters = { MountPoints = "/data /var/lib/postgresql", AutoThawSeconds = "60", Flags = ["-a", "-b"] }
timeout = "10s"
retries = 3
[policy.scripts.post]
document = "arn:aws:ssm:eu-west-1:123456789012:document/snapwarden-thaw"
timeout = "1h"
"#,
    ))
    .unwrap();
    let p = &c.policies[0];
    assert_eq!(
        p.vss,
        Some(Vss {
            exclude_boot_volume: true,
            copy_only: true,
            no_writers: true,
            timeout: Duration::from_secs(2 * 3600),
            on_failure: OnFailure::Skip,
        })
    );
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        p.scripts,
        Some(Scripts {
            pre: Script {
                document: "snapwarden-fsfreeze".into(),
                parameters: BTreeMap::from([
                    ("AutoThawSeconds".to_string(), strings(&["60"])),
                    ("Flags".to_string(), strings(&["-a", "-b"])),
                    (
                        "MountPoints".to_string(),
                        strings(&["/data /var/lib/postgresql"])
                    ),
                ]),
                timeout: Duration::from_secs(10),
                retries: MAX_SCRIPT_RETRIES,
            },
            post: Some(Script {
                document: "arn:aws:ssm:eu-west-1:123456789012:document/snapwarden-thaw".into(),
                parameters: BTreeMap::new(),
                timeout: Duration::from_secs(3600),
                retries: 0,
            }),
            on_failure: OnFailure::Skip,
        })
    );
}

#[test]
fn a_pre_script_alone_gets_the_defaults_on_any_instance_consistency() {
    for consistency in ["", "consistency = \"instance\"", "consistency = \"volume\""] {
        let c = parse(&policy_with(
            consistency,
            "[policy.scripts.pre]\ndocument = \"AWS-RunShellScript\"",
        ))
        .unwrap_or_else(|e| panic!("{consistency}: {e}"));
        let scripts = c.policies[0].scripts.clone().unwrap();
        assert_eq!(scripts.on_failure, OnFailure::CrashConsistent);
        assert_eq!(scripts.post, None);
        assert_eq!(scripts.pre.timeout, DEFAULT_SCRIPT_TIMEOUT);
        assert_eq!(scripts.pre.retries, 0);
        assert!(scripts.pre.parameters.is_empty());
        assert_eq!(c.policies[0].vss, None);
    }
}

/// Each bad line: (policy keys, tables, volume target, key of the problem, in the message, in the fix).
#[test]
fn vss_and_script_problems_name_the_key_and_the_fix() {
    let vss = "consistency = \"vss\"";
    let pre = "[policy.scripts.pre]\ndocument = \"snapwarden-fsfreeze\"\n";
    let cases: &[(&str, &str, bool, &str, &str, &str)] = &[
        (
            vss,
            "",
            true,
            "policy[prod].consistency",
            "needs an instance target",
            "resource = \"instance\"",
        ),
        (
            "",
            "[policy.vss]\ncopy-only = true",
            false,
            "policy[prod].vss",
            "not \"vss\"",
            "add consistency = \"vss\"",
        ),
        (
            "consistency = \"instance\"",
            "[policy.vss]",
            false,
            "policy[prod].vss",
            "not \"vss\"",
            "or remove [policy.vss]",
        ),
        (
            vss,
            "[policy.vss]\ntimeout = \"30s\"",
            false,
            "policy[prod].vss.timeout",
            "30s is outside 1m to 2h",
            "from 1m to 2h",
        ),
        (
            vss,
            "[policy.vss]\ntimeout = \"3h\"",
            false,
            "policy[prod].vss.timeout",
            "outside",
            "timeout = \"10m\"",
        ),
        (
            vss,
            "[policy.vss]\ntimeout = 600",
            false,
            "policy[prod].vss.timeout",
            "bare number",
            "\"600s\"",
        ),
        (
            vss,
            "[policy.vss]\non-failure = \"retry\"",
            false,
            "policy[prod].vss.on-failure",
            "is not one of",
            "\"crash-consistent\" | \"skip\"",
        ),
        (
            vss,
            "[policy.vss]\ncopy-only = \"yes\"",
            false,
            "policy[prod].vss.copy-only",
            "true or false",
            "copy-only = true",
        ),
        (
            vss,
            "[policy.vss]\nexclude_boot_volume = true",
            false,
            "policy[prod].vss.exclude_boot_volume",
            "unknown key",
            "did you mean `exclude-boot-volume`",
        ),
        (
            "consistency = \"vss\"\nvss = true",
            "",
            false,
            "policy[prod].vss",
            "expected a table",
            "[policy.vss]",
        ),
        (
            "",
            pre,
            true,
            "policy[prod].scripts",
            "targets volumes",
            "remove [policy.scripts]",
        ),
        (
            "",
            "[policy.scripts]\non-failure = \"skip\"",
            false,
            "policy[prod].scripts",
            "neither a pre nor a post",
            "add [policy.scripts.pre]",
        ),
        (
            "",
            "[policy.scripts.post]\ndocument = \"snapwarden-thaw\"",
            false,
            "policy[prod].scripts.post",
            "without a pre script",
            "rename [policy.scripts.post] to [policy.scripts.pre]",
        ),
        (
            "",
            "[policy.scripts.pre]\ntimeout = \"1m\"",
            false,
            "policy[prod].scripts.pre.document",
            "missing",
            "document = \"snapwarden-fsfreeze\"",
        ),
        (
            "",
            "[policy.scripts.pre]\ndocument = \"fs\"",
            false,
            "policy[prod].scripts.pre.document",
            "3 to 128",
            "aws ssm list-documents",
        ),
        (
            "",
            "[policy.scripts.pre]\ndocument = \"my freeze\"",
            false,
            "policy[prod].scripts.pre.document",
            "not an SSM document",
            "snapwarden-fsfreeze",
        ),
        (
            "",
            "[policy.scripts.pre]\ndocument = \"arn:aws:ec2:eu-west-1:123456789012:document/x-y\"",
            false,
            "policy[prod].scripts.pre.document",
            "service `ec2`",
            "document/NAME",
        ),
        (
            "",
            "[policy.scripts.pre]\ndocument = \"arn:aws:ssm:eu-west-1:1234:document/freeze\"",
            false,
            "policy[prod].scripts.pre.document",
            "12-digit",
            "ARN",
        ),
        (
            "",
            &format!("{pre}parameters = {{ AutoThawSeconds = 60 }}"),
            false,
            "policy[prod].scripts.pre.parameters.AutoThawSeconds",
            "expected a string",
            "AutoThawSeconds = \"60\"",
        ),
        (
            "",
            &format!("{pre}parameters = {{ MountPoints = [\"/data\", 2] }}"),
            false,
            "policy[prod].scripts.pre.parameters.MountPoints[#2]",
            "expected a string",
            "quotes",
        ),
        (
            "",
            &format!("{pre}parameters = \"MountPoints=/data\""),
            false,
            "policy[prod].scripts.pre.parameters",
            "expected a table",
            "MountPoints = \"/data\"",
        ),
        (
            "",
            &format!("{pre}timeout = \"5s\""),
            false,
            "policy[prod].scripts.pre.timeout",
            "5s is outside 10s to 1h",
            "from 10s to 1h",
        ),
        (
            "",
            &format!("{pre}timeout = \"2h\""),
            false,
            "policy[prod].scripts.pre.timeout",
            "outside",
            "timeout = \"60s\"",
        ),
        (
            "",
            &format!("{pre}retries = 4"),
            false,
            "policy[prod].scripts.pre.retries",
            "out of range",
            "from 0 to 3",
        ),
        (
            "",
            &format!("{pre}retries = -1"),
            false,
            "policy[prod].scripts.pre.retries",
            "out of range",
            "from 0 to 3",
        ),
        (
            "",
            &format!("{pre}params = {{}}"),
            false,
            "policy[prod].scripts.pre.params",
            "unknown key",
            "did you mean `parameters`",
        ),
        (
            "",
            &format!("[policy.scripts]\nonfailure = \"skip\"\n{pre}"),
            false,
            "policy[prod].scripts.onfailure",
            "unknown key",
            "did you mean `on-failure`",
        ),
        (
            "",
            &format!("[policy.scripts]\non-failure = \"crash\"\n{pre}"),
            false,
            "policy[prod].scripts.on-failure",
            "is not one of",
            "\"skip\"",
        ),
    ];
    let more: &[(&str, &str, bool, &str, &str, &str)] = &[
        (
            vss,
            "[policy.vs]\ncopy-only = true",
            false,
            "policy[prod].vs",
            "unknown key",
            "did you mean `vss`?",
        ),
        (
            "",
            "[policy.scriptz.pre]\ndocument = \"x-y-z\"",
            false,
            "policy[prod].scriptz",
            "unknown key",
            "did you mean `scripts`?",
        ),
    ];
    for &(keys, tables, volume, key, message, fix) in cases.iter().chain(more) {
        let toml = if volume {
            volume_policy_with(keys, tables)
        } else {
            policy_with(keys, tables)
        };
        let p = only_problem(&toml, key);
        assert!(p.message.contains(message), "{keys} {tables}: {p:?}");
        assert!(p.fix.contains(fix), "{keys} {tables}: {p:?}");
    }
}

#[test]
fn app_consistent_only_qualifies_the_rules_of_a_policy_that_takes_app_consistent_snapshots() {
    let keep = "keep = { daily = 7, app-consistent-only = true }";
    let with_keep = |toml: String| toml.replace("keep = { last = 7 }", keep);
    // Accepted with VSS and with a pre script.
    for (keys, tables) in [
        ("consistency = \"vss\"", ""),
        (
            "",
            "[policy.scripts.pre]\ndocument = \"snapwarden-fsfreeze\"",
        ),
    ] {
        let c = parse(&with_keep(policy_with(keys, tables)))
            .unwrap_or_else(|e| panic!("{keys} {tables}: {e}"));
        let rules = &c.policies[0].schedules[0].keep;
        assert!(rules.app_consistent_only);
        assert_eq!(rules.daily, Some(crate::retention::Count::N(7)));
    }
    // The default is off.
    let c = parse(&policy_with("consistency = \"vss\"", "")).unwrap();
    assert!(!c.policies[0].schedules[0].keep.app_consistent_only);
    // A count tag is a rule it qualifies (the tag's count then ranks app-consistent snapshots only).
    let tagged = policy_with("consistency = \"vss\"", "").replace(
        "keep = { last = 7 }",
        "keep = { app-consistent-only = true }\ncount-tag = \"SnapshotDaily\"",
    );
    let c = parse(&tagged).unwrap();
    assert!(c.policies[0].schedules[0].keep.app_consistent_only);

    // Refused where no snapshot could ever count.
    let p = only_problem(
        &with_keep(MINIMAL.to_string()),
        "policy[prod].schedule[daily].keep.app-consistent-only",
    );
    assert!(p.message.contains("would never keep one"), "{p:?}");
    assert!(
        p.fix.contains("consistency = \"vss\"") && p.fix.contains("[policy.scripts.pre]"),
        "{p:?}"
    );
    // Refused alone: one problem, not also "no keep rule".
    let alone = policy_with("consistency = \"vss\"", "").replace(
        "keep = { last = 7 }",
        "keep = { app-consistent-only = true }",
    );
    let p = only_problem(
        &alone,
        "policy[prod].schedule[daily].keep.app-consistent-only",
    );
    assert!(p.message.contains("only key"), "{p:?}");
    assert!(p.fix.contains(keep.trim_start_matches("keep = ")), "{p:?}");
    // Mistyped.
    let p = only_problem(
        &policy_with("consistency = \"vss\"", "").replace(
            "keep = { last = 7 }",
            "keep = { last = 7, app-consistent-only = \"yes\" }",
        ),
        "policy[prod].schedule[daily].keep.app-consistent-only",
    );
    assert!(p.message.contains("true or false"), "{p:?}");
}

/// The README and the example config state the defaults and limits of `[policy.vss]` and `[policy.scripts]` as
/// the constants have them.
#[test]
fn the_vss_and_script_defaults_are_written_down_as_the_constants_say() {
    let human = |d: Duration| humantime::format_duration(d).to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("config/snapwarden.example.toml")).unwrap();
    for stated in [
        format!("`timeout` (default {}", human(DEFAULT_VSS_TIMEOUT)),
        format!("`timeout` (default {}", human(DEFAULT_SCRIPT_TIMEOUT)),
        format!("`retries` (0 to {MAX_SCRIPT_RETRIES}, default 0)"),
    ] {
        assert!(readme.contains(&stated), "README.md must say {stated:?}");
    }
    for stated in [
        format!(
            "Default: \"{}\".\n# timeout = \"{}\"",
            human(DEFAULT_VSS_TIMEOUT),
            human(DEFAULT_VSS_TIMEOUT)
        ),
        format!(
            "Default: \"{}\".\n# timeout = \"{}\"",
            human(DEFAULT_SCRIPT_TIMEOUT),
            human(DEFAULT_SCRIPT_TIMEOUT)
        ),
        format!("0 to {MAX_SCRIPT_RETRIES}. Default: 0.\n# retries = 0"),
    ] {
        assert!(
            example.contains(&stated),
            "config/snapwarden.example.toml must say {stated:?}"
        );
    }
}

/// The two application-consistency examples say what their comments (and the issue's recipe) say. Here rather than
/// in tests/config_files.rs because the VSS and script settings are crate-private.
#[test]
fn the_consistency_examples_mean_what_their_comments_say() {
    use crate::retention::Count;
    let load = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/examples")
            .join(name);
        load(&path, &[]).unwrap_or_else(|e| panic!("{e}"))
    };

    let windows = load("windows-vss.toml");
    assert!(windows.notify.sns.is_some());
    let p = &windows.policies[0];
    assert_eq!(p.target.resource, ResourceKind::Instance);
    assert_eq!(p.target.tags["Backup"], "vss");
    assert_eq!(p.consistency, Consistency::Vss);
    let vss = p.vss.as_ref().unwrap();
    assert!(!vss.exclude_boot_volume && vss.copy_only && !vss.no_writers);
    assert_eq!(
        (vss.timeout, vss.on_failure),
        (DEFAULT_VSS_TIMEOUT, OnFailure::CrashConsistent)
    );
    assert_eq!(p.scripts, None);
    // One daily schedule carries the Day / Week / Month tiers of 5 / 3 / 2.
    assert_eq!(p.schedules.len(), 1);
    let keep = &p.schedules[0].keep;
    assert_eq!(
        (keep.daily, keep.weekly, keep.monthly),
        (Some(Count::N(5)), Some(Count::N(3)), Some(Count::N(2)))
    );
    assert!(keep.app_consistent_only);

    let linux = load("linux-fsfreeze.toml");
    let p = &linux.policies[0];
    assert_eq!(p.consistency, Consistency::Instance);
    assert_eq!(p.vss, None);
    let scripts = p.scripts.as_ref().unwrap();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(scripts.pre.document, "snapwarden-fsfreeze");
    assert_eq!(
        scripts.pre.parameters,
        BTreeMap::from([
            ("AutoThawSeconds".to_string(), strings(&["60"])),
            ("MountPoints".to_string(), strings(&["/data"])),
        ])
    );
    let post = scripts.post.as_ref().unwrap();
    assert_eq!(post.document, "snapwarden-thaw");
    assert_eq!(
        post.parameters,
        BTreeMap::from([("MountPoints".to_string(), strings(&["/data"]))])
    );
    assert_eq!(scripts.on_failure, OnFailure::CrashConsistent);
    assert!(p.schedules[0].keep.app_consistent_only);
}

#[test]
fn copy_concurrency_defaults_to_awss_per_region_limit_and_is_bounded() {
    assert_eq!(parse(MINIMAL).unwrap().daemon.copy_concurrency, 20);
    for n in [1, 100] {
        let c = parse(&with(&format!("[daemon]\ncopy-concurrency = {n}"))).unwrap();
        assert_eq!(c.daemon.copy_concurrency, n);
    }
    let c = parse_env(MINIMAL, &[("SNAPWARDEN_DAEMON__COPY_CONCURRENCY", "5")]).unwrap();
    assert_eq!(c.daemon.copy_concurrency, 5);
    for bad in ["0", "101", "\"20\""] {
        let p = only_problem(
            &with(&format!("[daemon]\ncopy-concurrency = {bad}")),
            "daemon.copy-concurrency",
        );
        assert!(p.fix.contains("copy-concurrency = 20"), "{bad}: {p:?}");
        assert!(p.to_string().contains("1 to 100"), "{bad}: {p:?}");
    }
}

/// MINIMAL's policy and schedule with `copies` (the schedule's `[[policy.schedule.copy]]` tables) and
/// `aws.regions` = `regions`.
fn with_copies(regions: &str, copies: &str) -> String {
    format!("[aws]\nregions = {regions}\n{MINIMAL}{copies}")
}

#[test]
fn schedule_copies_are_read_by_the_loader() {
    let c = parse(&with_copies(
        r#"["us-east-1"]"#,
        r#"
[[policy.schedule.copy]]
region = "eu-west-1"
keep = { weekly = 4, monthly = 3 }
kms-key-id = "alias/dr-snapshots"
copy-tags = true
[[policy.schedule.copy]]
region = "us-west-2"
keep = { last = 2 }
"#,
    ))
    .unwrap();
    let copies = &c.policy("prod").unwrap().schedule("daily").unwrap().copies;
    assert_eq!(
        copies,
        &[
            CopyRule {
                region: "eu-west-1".into(),
                keep: KeepRules {
                    weekly: Some(crate::retention::Count::N(4)),
                    monthly: Some(crate::retention::Count::N(3)),
                    ..KeepRules::default()
                },
                encryption: Encryption::Encrypted {
                    kms_key_id: Some("alias/dr-snapshots".into())
                },
                copy_tags: true,
            },
            CopyRule {
                region: "us-west-2".into(),
                keep: KeepRules {
                    last: Some(2),
                    ..KeepRules::default()
                },
                encryption: Encryption::AsSource,
                copy_tags: false,
            },
        ]
    );
    // A schedule without copy tables copies nothing.
    assert!(parse(MINIMAL).unwrap().policies[0].schedules[0]
        .copies
        .is_empty());
}

#[test]
fn the_loader_refuses_impossible_copies_naming_the_key_and_the_fix() {
    let copy = |region: &str, rest: &str| {
        format!("[[policy.schedule.copy]]\nregion = \"{region}\"\nkeep = {{ weekly = 4 }}\n{rest}")
    };
    let at = |region: &str, key: &str| format!("policy[prod].schedule[daily].copy[{region}].{key}");

    // To the region it snapshots: the copy dies with it.
    let p = only_problem(
        &with_copies(r#"["us-east-1"]"#, &copy("us-east-1", "")),
        "policy[prod].schedule[daily].copy[#1].region",
    );
    assert!(
        p.message.contains("`us-east-1` is one of aws.regions"),
        "{p}"
    );
    assert!(p.fix.contains("copy to another region"), "{p}");

    // Not a region code.
    let p = only_problem(
        &with_copies(r#"["us-east-1"]"#, &copy("eu-west-1a", "")),
        "policy[prod].schedule[daily].copy[#1].region",
    );
    assert!(p.message.contains("is not an AWS region code"), "{p}");

    // A key next to encrypted = false.
    let p = only_problem(
        &with_copies(
            r#"["us-east-1"]"#,
            &copy("eu-west-1", "encrypted = false\nkms-key-id = \"alias/dr\""),
        ),
        &at("eu-west-1", "encrypted"),
    );
    assert!(p.fix.contains("kms-key-id implies encrypted = true"), "{p}");

    // A key ARN of another region than the destination.
    let p = only_problem(
        &with_copies(
            r#"["us-east-1"]"#,
            &copy(
                "eu-west-1",
                "kms-key-id = \"arn:aws:kms:us-east-1:123456789012:alias/dr\"",
            ),
        ),
        &at("eu-west-1", "kms-key-id"),
    );
    assert!(
        p.message
            .contains("a key in us-east-1, but the copy is made and encrypted in eu-west-1"),
        "{p}"
    );
    assert!(p.fix.contains("use a key in eu-west-1"), "{p}");

    // Four destinations.
    let four: String = ["eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1"]
        .iter()
        .map(|r| copy(r, ""))
        .collect();
    let p = only_problem(
        &with_copies(r#"["us-east-1"]"#, &four),
        "policy[prod].schedule[daily].copy",
    );
    assert!(p.message.contains("at most 3 regions"), "{p}");

    // With aws.regions empty the source is the SDK's region, known only when a run starts: any region loads.
    let c = parse(&format!("{MINIMAL}{}", copy("us-east-1", ""))).unwrap();
    assert_eq!(c.policies[0].schedules[0].copies[0].region, "us-east-1");
}
