//! Bad input. Property tests feed `config::from_toml_str` random TOML built around the real schema (known section,
//! policy and schedule keys mixed with random ones, values of every TOML type, random nesting) and random bytes:
//! it never panics, and either accepts the file or returns a `ConfigError` whose every problem names a key, says
//! what is wrong and how to fix it. On the in-memory backend: count-tag values of every odd shape (empty, 10,000
//! characters, unicode digits, negative, float, exponent, sign, zero, over the maximum, control characters) are
//! reported once per instance and that instance skipped while the others are snapshotted; an instance with no
//! volumes, one with 40, and a volume detached between the survey and the create (the run goes on, the volume is
//! reported with EC2's `InvalidVolume.NotFound`), for both per-volume and per-instance creates.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use snapwarden::config::{self, Config};
use snapwarden::ec2::fake::{FakeEc2, FAKE_ACCOUNT};
use snapwarden::ec2::hooked::{Call, Hooked, Step};
use snapwarden::ec2::Ec2;
use snapwarden::metrics::Metrics;
use snapwarden::report::{RunReport, RunResult};
use snapwarden::worker::{self, RunSpec};

// ---------------------------------------------------------------------------------------------------------------
// Random TOML
// ---------------------------------------------------------------------------------------------------------------

/// Keys of the real schema, so random files hit the validators and not only the unknown-key check.
const KNOWN_KEYS: &[&str] = &[
    "daemon",
    "aws",
    "notify",
    "log",
    "policy",
    "schedule",
    "target",
    "sns",
    "file",
    "listen",
    "timezone",
    "max-concurrent-aws-calls",
    "shutdown-grace",
    "completion-deadline",
    "max-concurrent-runs",
    "retry-backoff",
    "regions",
    "endpoint-url",
    "max-attempts",
    "connect-timeout",
    "operation-timeout",
    "attempt-timeout",
    "topic-arn",
    "region",
    "dedup-window",
    "level",
    "format",
    "directory",
    "prefix",
    "rotation",
    "name",
    "resource",
    "tags",
    "cron",
    "keep",
    "count-tag",
    "last",
    "within",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "orphans",
    "caps",
    "consistency",
    "expire-after",
    "max-deletions",
    "copy",
    "encrypted",
    "kms-key-id",
    "copy-tags",
    "copy-concurrency",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KNOWN_KEYS).prop_map(String::from),
        1 => "[a-zA-Z_-]{1,12}",
        1 => "\\PC{0,8}",
    ]
}

fn scalar() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        (-1e12f64..1e12).prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        // Strings that look like what the schema wants, and anything at all.
        prop::sample::select(vec![
            "",
            "30s",
            "0s",
            "10m",
            "1e9",
            "UTC",
            "Europe/Berlin",
            "instance",
            "volume",
            "30 4 * * *",
            "*/5 * * * * *",
            "0 0 31 2 *",
            "127.0.0.1:9180",
            "http://127.0.0.1:5000",
            "us-east-1",
            "arn:aws:sns:us-east-1:123456789012:t",
            "delete",
            "keep-all",
            "info",
            "json",
            "daily",
        ])
        .prop_map(|s| toml::Value::String(s.to_string())),
        "\\PC{0,30}".prop_map(toml::Value::String),
    ]
}

fn value() -> impl Strategy<Value = toml::Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A whole file: top-level keys (mostly sections), sometimes a `policy` array of tables shaped like the schema.
fn document() -> impl Strategy<Value = String> {
    let schedule = prop::collection::btree_map(key(), value(), 0..5);
    let policy = (
        prop::collection::btree_map(key(), value(), 0..5),
        prop::collection::vec(schedule, 0..3),
    )
        .prop_map(|(mut p, schedules)| {
            p.insert(
                "schedule".into(),
                toml::Value::Array(
                    schedules
                        .into_iter()
                        .map(|s| toml::Value::Table(s.into_iter().collect()))
                        .collect(),
                ),
            );
            toml::Value::Table(p.into_iter().collect())
        });
    (
        prop::collection::btree_map(key(), value(), 0..6),
        prop::collection::vec(policy, 0..3),
    )
        .prop_map(|(mut root, policies): (BTreeMap<String, toml::Value>, _)| {
            if !policies.is_empty() {
                root.insert("policy".into(), toml::Value::Array(policies));
            }
            toml::to_string(&toml::Value::Table(root.into_iter().collect()))
                .unwrap_or_else(|_| "# unserializable shape\n".into())
        })
}

/// The property: no panic, and a rejection explains itself completely.
fn check(text: &str) -> std::result::Result<(), TestCaseError> {
    match config::from_toml_str(Path::new("/etc/snapwarden/random.toml"), text, &[]) {
        Ok(_) => Ok(()),
        Err(e) => {
            prop_assert!(
                !e.problems.is_empty(),
                "an error without problems for\n{text}"
            );
            for p in &e.problems {
                prop_assert!(
                    !p.key.trim().is_empty(),
                    "problem without a key: {p:?}\n{text}"
                );
                prop_assert!(
                    !p.message.trim().is_empty(),
                    "problem without a message: {p:?}\n{text}"
                );
                prop_assert!(
                    !p.fix.trim().is_empty(),
                    "problem without a fix: {p:?}\n{text}"
                );
            }
            // The report names the file.
            prop_assert!(e.to_string().contains("random.toml"), "{e}");
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_schema_shaped_toml_never_panics_and_every_problem_has_key_message_and_fix(text in document()) {
        check(&text)?;
    }

    #[test]
    fn random_bytes_never_panic_and_every_problem_has_key_message_and_fix(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn a_valid_file_with_one_line_mangled_never_panics(cut in 0usize..400, junk in "\\PC{0,12}") {
        let good = include_str!("../config/snapwarden.example.toml");
        let lines: Vec<&str> = good.lines().collect();
        let i = cut % lines.len();
        let mut out = lines.clone();
        let mangled = format!("{}{junk}", &lines[i][..lines[i].len() / 2]);
        out[i] = &mangled;
        check(&out.join("\n"))?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Odd count tags, odd fleets
// ---------------------------------------------------------------------------------------------------------------

fn slot() -> DateTime<Utc> {
    common::slot("2026-11-20T04:30:00Z")
}

fn config_with(extra_policy: &str, schedule: &str) -> Config {
    config::from_toml_str(
        Path::new("bad_input.toml"),
        &format!(
            "[[policy]]\nname = \"prod\"\ntarget = {{ resource = \"instance\", tags = {{ Backup = \"true\" }} }}\n\
             {extra_policy}\n[[policy.schedule]]\nname = \"daily\"\ncron = \"30 4 * * *\"\n{schedule}\n"
        ),
        &[],
    )
    .unwrap_or_else(|e| panic!("test config is valid: {e}"))
}

async fn run(ec2: &dyn Ec2, cfg: &Config) -> RunReport {
    let spec = RunSpec::new(cfg.policy("prod").unwrap(), slot(), FAKE_ACCOUNT).firing(["daily"]);
    worker::run(ec2, &spec, &Metrics::new(), slot).await.report
}

fn snapshotted(fake: &FakeEc2) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in fake.snapshots() {
        *out.entry(s.volume_id.to_string()).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn odd_count_tag_values_are_reported_and_skipped_while_the_rest_run() {
    let fake = FakeEc2::new("us-east-1");
    let cfg = config_with("", "count-tag = \"SnapshotCount\"");
    let huge = "9".repeat(10_000);
    let bad: Vec<&str> = vec![
        "",
        " ",
        "\t",
        huge.as_str(),
        "７",
        "٣",
        "-3",
        "2.5",
        "1e3",
        "+5",
        "0",
        "00",
        "10001",
        "4294967296",
        "five",
        "5 5",
        "\u{0}",
        "NaN",
        "0x10",
    ];
    // Whole numbers in range, with blanks around them or a leading zero, are accepted (`parse_count`).
    let good: Vec<(&str, &str)> = vec![
        ("7", "plain"),
        (" 5 ", "blanks"),
        ("5\n", "a trailing newline is a blank"),
        ("07", "leading zero"),
        ("10000", "max"),
    ];
    let mut bad_ids = Vec::new();
    for v in &bad {
        let (id, _) = fake.add_instance(
            &[("Backup", "true"), ("SnapshotCount", v)],
            &[("/dev/sdf", "gp3"), ("/dev/sdg", "gp3")],
        );
        bad_ids.push(id);
    }
    let mut good_vols = Vec::new();
    for (v, _) in &good {
        let (_, vols) = fake.add_instance(
            &[("Backup", "true"), ("SnapshotCount", v)],
            &[("/dev/sdf", "gp3")],
        );
        good_vols.extend(vols);
    }
    let report = run(&fake, &cfg).await;
    // One problem per instance, whatever its number of volumes, each with a message that says what to write.
    let mut reported: Vec<&str> = report
        .problems
        .iter()
        .filter(|p| p.code == "bad-count-tag")
        .map(|p| p.resource.as_str())
        .collect();
    reported.sort();
    let mut expected: Vec<&str> = bad_ids.iter().map(String::as_str).collect();
    expected.sort();
    let missed: Vec<&str> = bad
        .iter()
        .zip(&bad_ids)
        .filter(|(_, id)| !reported.contains(&id.as_str()))
        .map(|(v, _)| *v)
        .collect();
    assert!(missed.is_empty(), "accepted: {missed:?}");
    assert_eq!(reported, expected, "{report:#?}");
    assert_eq!(report.result(), RunResult::Partial, "{report:#?}");
    assert_eq!(report.created, good.len(), "{report:#?}");
    for p in &report.problems {
        assert!(p.message.contains("write a count from 1 to 10000"), "{p:?}");
        // A 10k-character value is quoted shortened, not in full, in every alert.
        assert!(p.message.len() < 200, "{}", p.message);
    }
    let made = snapshotted(&fake);
    assert_eq!(made.len(), good_vols.len(), "{made:?}");
    assert!(good_vols.iter().all(|v| made.get(v) == Some(&1)));
    // The alert tells how to fix it.
    let digest = snapwarden::notify::digest(&report);
    assert!(
        digest.body.contains("bad-count-tag: fix the tag value"),
        "{}",
        digest.body
    );
}

#[tokio::test]
async fn instances_with_no_volumes_and_with_forty_are_handled() {
    for consistency in ["volume", "instance"] {
        let fake = FakeEc2::new("us-east-1");
        let cfg = config_with(
            &format!("consistency = \"{consistency}\""),
            "keep = { last = 3 }",
        );
        let (_, none) = fake.add_instance(&[("Backup", "true")], &[]);
        assert!(none.is_empty());
        let devices: Vec<String> = (0..40).map(|i| format!("/dev/sd{i:02}")).collect();
        let devs: Vec<(&str, &str)> = devices.iter().map(|d| (d.as_str(), "gp3")).collect();
        let (_, forty) = fake.add_instance(&[("Backup", "true")], &devs);
        let report = run(&fake, &cfg).await;
        assert_eq!(
            report.result(),
            RunResult::Success,
            "{consistency}: {report:#?}"
        );
        assert_eq!(
            (report.targeted_volumes, report.created),
            (40, 40),
            "{consistency}: {report:#?}"
        );
        let made = snapshotted(&fake);
        assert!(
            forty.iter().all(|v| made.get(v) == Some(&1)),
            "{consistency}: {made:?}"
        );
        // A second run of the slot is a no-op.
        let again = run(&fake, &cfg).await;
        assert_eq!(
            (again.created, again.already_done),
            (0, 40),
            "{consistency}: {again:#?}"
        );
    }
}

/// Passes everything to the fake, but detaches (removes) `victim` right after the survey's last describe, so the
/// create meets a volume that was there a moment ago.
fn detach_after_survey(fake: Arc<FakeEc2>, victim: String) -> Hooked {
    Hooked::new(fake.clone()).after(move |call, _| {
        if let Call::DescribeSnapshots(..) = call {
            fake.remove_volume(&victim);
        }
        Step::Go
    })
}

#[tokio::test]
async fn a_volume_detached_mid_run_is_reported_and_the_run_goes_on() {
    for consistency in ["volume", "instance"] {
        let fake = Arc::new(FakeEc2::new("us-east-1"));
        let cfg = config_with(
            &format!("consistency = \"{consistency}\""),
            "keep = { last = 3 }",
        );
        let (_, vols) = fake.add_instance(
            &[("Backup", "true")],
            &[
                ("/dev/sdf", "gp3"),
                ("/dev/sdg", "gp3"),
                ("/dev/sdh", "gp3"),
            ],
        );
        let (_, other) = fake.add_instance(&[("Backup", "true")], &[("/dev/sdf", "gp3")]);
        let ec2 = detach_after_survey(fake.clone(), vols[1].clone());
        let report = run(&ec2, &cfg).await;
        assert_eq!(
            report.result(),
            RunResult::Partial,
            "{consistency}: {report:#?}"
        );
        assert_eq!(
            (report.targeted_volumes, report.created),
            (4, 3),
            "{consistency}: {report:#?}"
        );
        assert_eq!(report.failed_volumes(), 1, "{consistency}: {report:#?}");
        let p = report
            .problems
            .iter()
            .find(|p| p.operation == "create")
            .unwrap();
        assert_eq!(p.resource, vols[1], "{consistency}: {report:#?}");
        if consistency == "volume" {
            assert_eq!(p.code, "InvalidVolume.NotFound", "{report:#?}");
        } else {
            // CreateSnapshots just leaves the volume out; the worker reports it as missing from the answer.
            assert!(p.message.contains("detached"), "{report:#?}");
        }
        let made = snapshotted(&fake);
        for v in [&vols[0], &vols[2], &other[0]] {
            assert_eq!(made.get(v), Some(&1), "{consistency}: {made:?}");
        }
        assert_eq!(made.get(&vols[1]), None);
        if consistency == "volume" {
            let digest = snapwarden::notify::digest(&report);
            assert!(
                digest
                    .body
                    .contains("the volume was deleted or detached during the run"),
                "{}",
                digest.body
            );
        }
    }
}
