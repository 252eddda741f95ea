//! The deployment kit against what consumes it, where a Rust test is the right tool: the IAM policy against the
//! AWS operations the source actually calls (found by scanning `src/` for every operation the four AWS SDK crates
//! define), the ECS task definition's fields against the daemon (its environment is fed to `snapwarden validate`),
//! and the Grafana dashboard and alert rules against a real Prometheus scraping the real daemon, which runs
//! against moto with a two-second schedule. The linters (systemd-analyze, hadolint, cfn-lint, promtool rules and
//! their unit tests) run in `tests/deploy/check.sh`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, Moto};
use serde_json::Value;
use snapwarden::config;
use snapwarden::daemon::NOTIFIER_DRAIN;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The operation names (snake_case) an AWS SDK crate defines: one module per operation under `src/operation/`.
/// Read from the very crate versions Cargo.lock resolves, so a new SDK call cannot hide behind a stale list.
fn sdk_operations(crate_name: &str) -> BTreeSet<String> {
    // Only the host's dependencies: without the filter cargo wants every platform's crates, which are not
    // downloaded here, and the test must not download anything.
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let host = String::from_utf8(rustc.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc reports its host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            &host,
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == crate_name)
        .unwrap_or_else(|| panic!("{crate_name} is not a dependency"))["manifest_path"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = Path::new(&manifest).parent().unwrap().join("src/operation");
    let ops: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_string();
            (p.is_dir() || p.extension().is_some_and(|e| e == "rs")).then_some(name)
        })
        .collect();
    assert!(
        ops.len() > 5,
        "{crate_name}: found only {ops:?} in {}",
        dir.display()
    );
    ops
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect()
}

/// `Action` or `Resource` as a list, whether written as one string or an array.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_string()).collect(),
        other => panic!("expected a string or a list, got {other}"),
    }
}

#[test]
fn iam_policy_allows_every_aws_operation_the_source_calls_and_nothing_broader() {
    // Every fluent-builder call `.operation()` in src/ whose name is an operation of the EC2, SNS, STS or SSM SDK.
    // Calls take no arguments there; the trait methods of the same names (Ec2::describe_instances(filters))
    // take some, so they do not match.
    let mut files = Vec::new();
    rust_sources(&root().join("src"), &mut files);
    let source: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut called = BTreeSet::new();
    for (krate, service) in [
        ("aws-sdk-ec2", "ec2"),
        ("aws-sdk-sns", "sns"),
        ("aws-sdk-sts", "sts"),
        ("aws-sdk-ssm", "ssm"),
    ] {
        for op in sdk_operations(krate) {
            if source.contains(&format!(".{op}()")) {
                called.insert(format!("{service}:{}", pascal(&op)));
            }
        }
    }
    // The scan must see the calls we know of, or it proves nothing.
    for known in [
        "ec2:CreateSnapshot",
        "ec2:DeleteSnapshot",
        "ec2:DescribeSnapshots",
        "ec2:CopySnapshot",
        "sns:Publish",
        "ssm:SendCommand",
        "ssm:ListCommandInvocations",
    ] {
        assert!(
            called.contains(known),
            "scan missed {known}; found {called:?}"
        );
    }

    let policy = read_json("deploy/iam/policy.json");
    assert_eq!(policy["Version"], "2012-10-17");
    let statements = policy["Statement"].as_array().unwrap();
    let mut granted = BTreeSet::new();
    let mut tag_grants = BTreeSet::new();
    let mut send_grants = BTreeSet::new();
    let mut copy_grants = BTreeSet::new();
    let mut kms_grants = BTreeSet::new();
    for s in statements {
        let sid = s["Sid"].as_str().unwrap_or("?");
        assert_eq!(
            s["Effect"], "Allow",
            "{sid}: only Allow statements expected"
        );
        for key in ["NotAction", "NotResource", "Principal"] {
            assert!(
                s.get(key).is_none(),
                "{sid}: {key} widens a policy beyond what can be reviewed"
            );
        }
        let actions = strings(&s["Action"]);
        let resources = strings(&s["Resource"]);
        for a in &actions {
            assert!(!a.contains('*'), "{sid}: wildcard action {a}");
            granted.insert(a.clone());
            // Describe* calls and SSM's command listings support no resource-level permissions, so "*" is the
            // only possible resource for them; every other action must name its resource type.
            if resources.iter().any(|r| r == "*") {
                assert!(
                    a.starts_with("ec2:Describe")
                        || a == "ssm:ListCommandInvocations"
                        || a == "ssm:ListCommands",
                    "{sid}: {a} granted on every resource"
                );
            }
            match a.as_str() {
                "ec2:CreateTags" => {
                    assert_eq!(resources, ["arn:aws:ec2:*::snapshot/*"], "{sid}");
                    let cond = &s["Condition"];
                    if let Some(at) = cond["StringEquals"].get("ec2:CreateAction") {
                        // Tagging while creating: the tags of the TagSpecifications of CreateSnapshot(s) and
                        // CopySnapshot.
                        assert_eq!(
                            strings(at),
                            ["CreateSnapshot", "CreateSnapshots", "CopySnapshot"],
                            "{sid}: CreateTags only while creating or copying a snapshot"
                        );
                        tag_grants.insert("at-creation");
                    } else {
                        // Tagging afterwards (what CreateSnapshots cannot tag per volume): only snapshots that are
                        // already snapwarden's, and never the tags their identity and retention depend on.
                        assert_eq!(
                            cond["StringEquals"]["aws:ResourceTag/snapwarden:managed"], "true",
                            "{sid}: CreateTags on existing snapshots only when they are managed"
                        );
                        let protected =
                            strings(&cond["ForAllValues:StringNotEquals"]["aws:TagKeys"]);
                        for key in [
                            "snapwarden:managed",
                            "snapwarden:policy",
                            "snapwarden:schedule",
                            "snapwarden:slot",
                            "snapwarden:keep",
                        ] {
                            assert!(
                                protected.iter().any(|k| k == key),
                                "{sid}: CreateTags could rewrite {key}"
                            );
                        }
                        assert_eq!(cond.as_object().unwrap().len(), 2, "{sid}: {cond}");
                        tag_grants.insert("managed");
                    }
                }
                "ec2:CreateSnapshots" => {
                    let want = [
                        "arn:aws:ec2:*::snapshot/*",
                        "arn:aws:ec2:*:*:instance/*",
                        "arn:aws:ec2:*:*:volume/*",
                    ];
                    assert_eq!(resources, want, "{sid}");
                }
                "ec2:DeleteSnapshot" => {
                    assert_eq!(resources, ["arn:aws:ec2:*::snapshot/*"], "{sid}");
                    assert_eq!(
                        s["Condition"]["StringEquals"]["aws:ResourceTag/snapwarden:managed"],
                        "true",
                        "{sid}: deletes only snapshots tagged snapwarden:managed=true"
                    );
                }
                "ec2:CreateSnapshot" => {
                    let want = ["arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*:*:volume/*"];
                    assert_eq!(resources, want, "{sid}");
                }
                // CopySnapshot is authorised on both snapshots: the source (its id in the ARN) may only be a
                // managed one, and the new copy (a literal "*" for its id, matched by ${*}) must be created
                // managed. One statement for both would let either condition stand in for the other.
                "ec2:CopySnapshot" => {
                    assert_eq!(
                        actions.len(),
                        1,
                        "{sid}: CopySnapshot in a statement of its own"
                    );
                    let cond = s["Condition"].as_object().expect("a tag condition");
                    assert_eq!(cond.len(), 1, "{sid}: {cond:?}");
                    let equals = &cond["StringEquals"];
                    match resources.as_slice() {
                        [r] if r == "arn:aws:ec2:*::snapshot/snap-*" => {
                            assert_eq!(
                                equals["aws:ResourceTag/snapwarden:managed"], "true",
                                "{sid}: copies only of managed snapshots"
                            );
                            copy_grants.insert("source");
                        }
                        [r] if r == "arn:aws:ec2:*::snapshot/${*}" => {
                            assert_eq!(
                                equals["aws:RequestTag/snapwarden:managed"], "true",
                                "{sid}: copies are created managed"
                            );
                            copy_grants.insert("copy");
                        }
                        other => panic!("{sid}: CopySnapshot on {other:?}"),
                    }
                    assert_eq!(equals.as_object().unwrap().len(), 1, "{sid}: {equals}");
                }
                // SendCommand is authorised on the document and on each instance: a command on any instance, or
                // of any document (AWS-RunShellScript is a root shell), would be a grant of everything.
                "ssm:SendCommand" => {
                    if resources.iter().all(|r| r.contains(":document/")) {
                        assert_eq!(
                            resources,
                            [
                                "arn:aws:ssm:*::document/AWSEC2-CreateVssSnapshot",
                                "arn:aws:ssm:*:*:document/snapwarden-*"
                            ],
                            "{sid}: SendCommand of the VSS document and snapwarden's own only"
                        );
                        assert!(s.get("Condition").is_none(), "{sid}");
                        send_grants.insert("documents");
                    } else {
                        assert_eq!(resources, ["arn:aws:ec2:*:*:instance/*"], "{sid}");
                        // The key the SSM user guide documents for SendCommand on instances.
                        let cond = s["Condition"].as_object().expect("a tag condition");
                        assert_eq!(cond.len(), 1, "{sid}: {cond:?}");
                        let (op, tests) = cond.iter().next().unwrap();
                        assert!(op == "StringLike" || op == "StringEquals", "{sid}: {op}");
                        let tests = tests.as_object().unwrap();
                        assert!(
                            !tests.is_empty()
                                && tests.keys().all(|k| k.starts_with("ssm:resourceTag/")),
                            "{sid}: SendCommand only on instances carrying a tag: {tests:?}"
                        );
                        send_grants.insert("tagged-instances");
                    }
                }
                // KMS for encrypted copies: named keys only (a key ARN, never a wildcard), and only through EC2
                // (`kms:ViaService`), so the role cannot decrypt anything with the key by calling KMS itself.
                // CreateGrant (EBS keeps a grant on the key for the copy) only for AWS resources.
                kms if kms.starts_with("kms:") => {
                    for r in &resources {
                        let parts: Vec<&str> = r.split(':').collect();
                        assert!(
                            parts.len() == 6
                                && parts[..3] == ["arn", "aws", "kms"]
                                && !parts[3].is_empty()
                                && parts[4].len() == 12
                                && parts[5].starts_with("key/")
                                && !r.contains('*'),
                            "{sid}: {kms} on {r}: name the keys by ARN"
                        );
                    }
                    let cond = s["Condition"]
                        .as_object()
                        .expect("a kms:ViaService condition");
                    assert_eq!(
                        cond.get("StringLike").map(|c| &c["kms:ViaService"]),
                        Some(&Value::from("ec2.*.amazonaws.com")),
                        "{sid}: {kms} only through EC2"
                    );
                    assert_eq!(cond["StringLike"].as_object().unwrap().len(), 1, "{sid}");
                    if kms == "kms:CreateGrant" {
                        assert_eq!(
                            actions.len(),
                            1,
                            "{sid}: CreateGrant in a statement of its own"
                        );
                        assert_eq!(
                            cond.get("Bool").map(|c| &c["kms:GrantIsForAWSResource"]),
                            Some(&Value::from("true")),
                            "{sid}: grants only for AWS resources (EBS)"
                        );
                        assert_eq!(cond.len(), 2, "{sid}: {cond:?}");
                        kms_grants.insert("grant");
                    } else {
                        assert_eq!(cond.len(), 1, "{sid}: {cond:?}");
                        kms_grants.insert("use");
                    }
                }
                // AssumeRole into the member accounts' role, named in the ARN (any account: the member roles'
                // trust policies, which name the daemon's role and an ExternalId, say which accounts), never any
                // role.
                "sts:AssumeRole" => {
                    assert_eq!(
                        actions.len(),
                        1,
                        "{sid}: AssumeRole in a statement of its own"
                    );
                    for r in &resources {
                        let role = r.strip_prefix("arn:aws:iam::").and_then(|rest| {
                            let (account, role) = rest.split_once(":role/")?;
                            (account == "*" || account.len() == 12).then_some(role)
                        });
                        assert!(
                            role.is_some_and(|name| !name.is_empty() && !name.contains('*')),
                            "{sid}: AssumeRole on {r}: name the member role"
                        );
                    }
                    assert!(s.get("Condition").is_none(), "{sid}");
                }
                "sns:Publish" => {
                    assert_eq!(resources.len(), 1, "{sid}");
                    let arn = &resources[0];
                    assert!(
                        arn.starts_with("arn:aws:sns:")
                            && arn.split(':').count() == 6
                            && !arn.contains('*'),
                        "{sid}: Publish on one topic only, not {arn}"
                    );
                }
                _ => {}
            }
        }
    }

    // GetCallerIdentity is allowed to every principal by AWS and cannot be denied, so it needs no grant.
    let mut needs_grant: BTreeSet<_> = called
        .iter()
        .filter(|a| *a != "sts:GetCallerIdentity")
        .cloned()
        .collect();
    // AssumeRole into member accounts is sent by aws-config's AssumeRoleProvider, inside aws-config, so the scan of
    // src/ for fluent calls cannot see it: the provider's use stands for the call.
    if source.contains("AssumeRoleProvider::builder(") {
        needs_grant.insert("sts:AssumeRole".into());
    }
    let missing: Vec<_> = needs_grant.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the source calls {missing:?}, which deploy/iam/policy.json does not allow"
    );
    // CreateTags is granted twice: for TagSpecifications of CreateSnapshot(s), which IAM authorises as
    // ec2:CreateTags on the new snapshot, and for the per-volume tags added after a CreateSnapshots.
    let mut justified = needs_grant.clone();
    assert!(
        source.contains(".tag_specifications("),
        "CreateTags is granted but nothing tags at creation"
    );
    justified.insert("ec2:CreateTags".into());
    assert!(
        called.contains("ec2:CreateSnapshots") && called.contains("ec2:CreateTags"),
        "the source calls CreateSnapshots and CreateTags: {called:?}"
    );
    assert_eq!(
        tag_grants,
        BTreeSet::from(["at-creation", "managed"]),
        "one CreateTags statement for tagging at creation, one for managed snapshots"
    );
    if called.contains("ec2:CopySnapshot") {
        assert_eq!(
            copy_grants,
            BTreeSet::from(["copy", "source"]),
            "CopySnapshot needs a grant on its source and one on the copy it creates"
        );
    }
    // KMS is not called by the daemon but by EBS on its behalf, for copies re-encrypted with a kms-key-id: the
    // keys' use is justified when CopySnapshot sends one.
    if called.contains("ec2:CopySnapshot") && source.contains(".set_kms_key_id(") {
        assert_eq!(
            kms_grants,
            BTreeSet::from(["grant", "use"]),
            "encrypted copies need the keys' use through EC2 and a grant for EBS"
        );
        justified.extend(
            [
                "kms:CreateGrant",
                "kms:Decrypt",
                "kms:Encrypt",
                "kms:ReEncryptFrom",
                "kms:ReEncryptTo",
                "kms:GenerateDataKeyWithoutPlaintext",
                "kms:DescribeKey",
            ]
            .map(String::from),
        );
    }
    if called.contains("ssm:SendCommand") {
        assert_eq!(
            send_grants,
            BTreeSet::from(["documents", "tagged-instances"]),
            "SendCommand needs a grant on its documents and one on the tagged instances"
        );
        assert!(
            source.contains("\"AWSEC2-CreateVssSnapshot\""),
            "the policy grants AWSEC2-CreateVssSnapshot, which the source never names"
        );
        // The documents the policy's `snapwarden-*` grants: the ones deploy/ssm/ ships.
        for e in std::fs::read_dir(root().join("deploy/ssm")).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                name.starts_with("snapwarden-") && name.ends_with(".yaml"),
                "deploy/ssm/{name}: the policy lets the daemon send only snapwarden-* documents"
            );
        }
    }
    let extra: Vec<_> = granted.difference(&justified).collect();
    assert!(
        extra.is_empty(),
        "deploy/iam/policy.json grants {extra:?}, which the source never calls"
    );
}

/// The role of a Windows instance that snapwarden sends `AWSEC2-CreateVssSnapshot` to: the instance creates its
/// own snapshots, so its role needs to read its volumes, create snapshots and tag them, and nothing more — no
/// delete, and no tagging afterwards beyond the tags the document adds itself, so it cannot rewrite the tags
/// snapwarden's retention reads.
#[test]
fn vss_instance_role_creates_and_tags_snapshots_and_can_rewrite_no_snapwarden_tag() {
    const VSS_OWN_TAGS: [&str; 3] = ["Device", "AppConsistent", "AwsVssConfig"];
    let policy = read_json("deploy/iam/instance-role-vss.json");
    assert_eq!(policy["Version"], "2012-10-17");
    let mut granted = BTreeSet::new();
    let mut tag_grants = BTreeSet::new();
    for s in policy["Statement"].as_array().unwrap() {
        let sid = s["Sid"].as_str().unwrap_or("?");
        assert_eq!(s["Effect"], "Allow", "{sid}");
        for key in ["NotAction", "NotResource", "Principal"] {
            assert!(s.get(key).is_none(), "{sid}: {key}");
        }
        let resources = strings(&s["Resource"]);
        for a in strings(&s["Action"]) {
            assert!(!a.contains('*'), "{sid}: wildcard action {a}");
            if resources.iter().any(|r| r == "*") {
                assert!(
                    a.starts_with("ec2:Describe"),
                    "{sid}: {a} on every resource"
                );
            }
            if a == "ec2:CreateTags" {
                assert_eq!(resources, ["arn:aws:ec2:*::snapshot/*"], "{sid}");
                let cond = &s["Condition"];
                if let Some(at) = cond["StringEquals"].get("ec2:CreateAction") {
                    assert_eq!(strings(at), ["CreateSnapshot", "CreateSnapshots"], "{sid}");
                    tag_grants.insert("at-creation");
                } else {
                    let keys = strings(&cond["ForAllValues:StringEquals"]["aws:TagKeys"]);
                    assert!(
                        !keys.is_empty() && keys.iter().all(|k| VSS_OWN_TAGS.contains(&k.as_str())),
                        "{sid}: CreateTags after creation only for the document's own tags, not {keys:?}"
                    );
                    assert_eq!(cond.as_object().unwrap().len(), 1, "{sid}: {cond}");
                    tag_grants.insert("vss-tags");
                }
            }
            granted.insert(a);
        }
    }
    let want = [
        "ec2:CreateSnapshot",
        "ec2:CreateSnapshots",
        "ec2:CreateTags",
        "ec2:DescribeInstanceAttribute",
        "ec2:DescribeInstances",
    ];
    assert_eq!(granted, BTreeSet::from(want.map(String::from)));
    assert_eq!(tag_grants, BTreeSet::from(["at-creation", "vss-tags"]));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for needed in [
        "deploy/iam/instance-role-vss.json",
        "AmazonSSMManagedInstanceCore",
    ] {
        assert!(
            readme.contains(needed),
            "the README must tell operators about {needed}"
        );
    }
}

/// `"45s"`-style durations as written in the environment of the task definition.
fn seconds(text: &str) -> u64 {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {text}"));
    match unit {
        "s" | "" => n,
        "m" => n * 60,
        other => panic!("unexpected unit {other} in {text}"),
    }
}

/// systemd's TimeoutStopSec must, like ECS's stopTimeout below, outlast what the daemon takes to stop with its
/// default settings (the unit sets none): the shutdown grace, the wait for calls already sent and the notifier's
/// drain, with a 5 s margin.
#[test]
fn systemd_stop_timeout_outlasts_the_daemons_own_shutdown_defaults() {
    let unit = std::fs::read_to_string(root().join("systemd/snapwarden.service")).unwrap();
    assert!(
        !unit.contains("SNAPWARDEN_DAEMON__SHUTDOWN_GRACE") && !unit.contains("SNAPWARDEN_AWS__"),
        "the unit overrides a shutdown setting; check TimeoutStopSec against it"
    );
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(seconds)
        .expect("TimeoutStopSec");
    let needs = config::DEFAULT_SHUTDOWN_GRACE
        + config::DEFAULT_OPERATION_TIMEOUT
        + config::DEFAULT_CONNECT_TIMEOUT
        + NOTIFIER_DRAIN
        + Duration::from_secs(5);
    assert!(
        stop >= needs.as_secs(),
        "TimeoutStopSec={stop}s is below the {}s the daemon may take to stop",
        needs.as_secs()
    );
}

const MINIMAL_POLICY: &str = r#"
[[policy]]
name = "prod"
target = { resource = "instance", tags = { Backup = "true" } }
[[policy.schedule]]
name = "daily"
cron = "@daily"
keep = { last = 7 }
"#;

#[test]
fn ecs_task_definition_has_role_logs_health_check_stop_timeout_env_config_and_read_only_root() {
    let td = read_json("deploy/ecs/task-definition.json");
    assert!(
        td["taskRoleArn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:iam::"),
        "task role"
    );
    assert!(
        td["executionRoleArn"].as_str().is_some(),
        "execution role (pulls the image, ships logs)"
    );
    let containers = td["containerDefinitions"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["readonlyRootFilesystem"], true);
    assert_eq!(c["essential"], true);

    let env: Vec<(String, String)> = c["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let listen = var("SNAPWARDEN_DAEMON__LISTEN").expect("listen address set by environment");
    let port: u16 = listen
        .strip_prefix("0.0.0.0:")
        .expect("listens on every interface in the task")
        .parse()
        .unwrap();
    assert_eq!(c["portMappings"][0]["containerPort"], port);
    assert_eq!(
        var("SNAPWARDEN_LOG__FORMAT").as_deref(),
        Some("json"),
        "JSON logs for awslogs"
    );

    // The daemon drains in-flight runs for shutdown-grace, then waits for the mutating calls already sent (each
    // bounded by operation-timeout after connect-timeout) so each is answered and logged, then gives the notifier
    // up to NOTIFIER_DRAIN: ECS must wait longer than all of them (and a 5 s margin) before its SIGKILL. Unset
    // keys take the daemon's own defaults.
    let or_default =
        |key: &str, default: Duration| var(key).map_or(default.as_secs(), |g| seconds(&g));
    let grace = or_default(
        "SNAPWARDEN_DAEMON__SHUTDOWN_GRACE",
        config::DEFAULT_SHUTDOWN_GRACE,
    );
    let calls = or_default(
        "SNAPWARDEN_AWS__OPERATION_TIMEOUT",
        config::DEFAULT_OPERATION_TIMEOUT,
    ) + or_default(
        "SNAPWARDEN_AWS__CONNECT_TIMEOUT",
        config::DEFAULT_CONNECT_TIMEOUT,
    );
    let stop = c["stopTimeout"].as_u64().expect("stopTimeout");
    assert!(
        stop >= grace + calls + NOTIFIER_DRAIN.as_secs() + 5,
        "stopTimeout {stop}s leaves no margin over shutdown-grace {grace}s plus {calls}s for calls in flight"
    );
    assert!(stop <= 120, "Fargate caps stopTimeout at 120 s");

    let hc = strings(&c["healthCheck"]["command"]);
    assert_eq!(
        hc[0], "CMD",
        "exec form: the image has no need for a shell here"
    );
    assert!(
        hc.iter()
            .any(|a| a == &format!("http://127.0.0.1:{port}/healthz")),
        "health check must probe /healthz on the listen port: {hc:?}"
    );
    assert!(
        c["healthCheck"]["startPeriod"].as_u64().unwrap() >= 60,
        "readiness waits on AWS"
    );

    let log = &c["logConfiguration"];
    assert_eq!(log["logDriver"], "awslogs");
    for key in ["awslogs-group", "awslogs-region", "awslogs-stream-prefix"] {
        assert!(
            log["options"][key].as_str().is_some_and(|v| !v.is_empty()),
            "{key}"
        );
    }

    // The same non-root identity the Dockerfile declares.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("USER in Dockerfile");
    assert_eq!(c["user"], user.trim());
    assert!(!user.starts_with("0:") && user.trim() != "0" && user.trim() != "root");

    // The environment is the config: the daemon must accept every variable as set here.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("snapwarden.toml");
    std::fs::write(&config, MINIMAL_POLICY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snapwarden"))
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snapwarden validate with the task's environment: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let svc = read_json("deploy/ecs/service.json");
    assert_eq!(svc["desiredCount"], 1);
    assert_eq!(
        svc["deploymentConfiguration"]["maximumPercent"], 100,
        "never two daemons at once during a deploy"
    );
    assert_eq!(svc["taskDefinition"], td["family"]);
}

fn tool(var: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(name));
    let ok = Command::new(&path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "{name} not found ({var} or PATH): install the Debian package `prometheus` (tests/deploy/check.sh does: \
         apt-get install -y --no-install-recommends prometheus)"
    );
    path
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/api/v1/query`: Ok(result array or scalar) when the expression parsed and evaluated, Err(message) otherwise.
fn query(port: u16, expr: &str) -> Result<Value, String> {
    let (code, body) = http_get(port, &format!("/api/v1/query?query={}", url_encode(expr)))
        .ok_or_else(|| "Prometheus did not answer".to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("HTTP {code}: {} {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].clone())
}

fn has_data(result: &Value) -> bool {
    match result {
        // A vector or matrix: its series; a scalar or string: [time, value].
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// Waits until `expr` returns data, or panics with what it last saw.
fn wait_for(port: u16, expr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = query(port, expr);
        if last.as_ref().is_ok_and(has_data) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("`{expr}` had no data within {within:?}: {last:?}");
}

/// Metric names in a PromQL expression: identifiers that start a selector (followed by `{`, `[`, `)`, space or
/// the end) and are not functions, keywords or label names inside braces/`by (...)`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut depth_braces = 0;
    let mut i = 0;
    let b = expr.as_bytes();
    while i < b.len() {
        let c = b[i] as char;
        if c == '{' {
            depth_braces += 1;
        } else if c == '}' {
            depth_braces -= 1;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
        } else if depth_braces == 0 && (c.is_ascii_alphabetic() || c == '_') {
            let start = i;
            while i < b.len()
                && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("snapwarden_") || word == "up" {
                names.insert(word.to_string());
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Splits `lhs OP rhs` at the last comparison operator outside parentheses and braces.
fn split_comparison(expr: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let b = expr.as_bytes();
    let mut found = None;
    for (i, &ch) in b.iter().enumerate() {
        match ch {
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            _ if depth == 0 => {
                for op in [" > ", " < ", " == ", " != ", " >= ", " <= "] {
                    if expr[i..].starts_with(op) {
                        found = Some((i, op.len()));
                    }
                }
            }
            _ => {}
        }
    }
    found.map(|(i, n)| (expr[..i].trim(), without_matching(expr[i + n..].trim())))
}

/// The right side of a comparison without its vector matching (`on (a, b) group_left`, `ignoring (c)`), which
/// belongs to the operator, not to the expression on its right.
fn without_matching(rhs: &str) -> &str {
    // A keyword, then an optional label list in parentheses.
    fn skip<'a>(text: &'a str, keywords: &[&str]) -> &'a str {
        let Some(rest) = keywords
            .iter()
            .find_map(|k| text.strip_prefix(k).filter(|r| r.starts_with([' ', '('])))
        else {
            return text;
        };
        let rest = rest.trim_start();
        match rest.strip_prefix('(') {
            Some(list) => list
                .split_once(')')
                .map_or(rest, |(_, after)| after.trim_start()),
            None => rest,
        }
    }
    let rest = skip(rhs, &["on", "ignoring"]);
    if rest.len() == rhs.len() {
        return rhs;
    }
    skip(rest, &["group_left", "group_right"])
}

#[test]
fn comparisons_split_into_two_expressions_without_the_operators_vector_matching() {
    for (expr, lhs, rhs) in [
        ("a > b", "a", "b"),
        (
            "sum by (x) (rate(a[1m])) > 0.05",
            "sum by (x) (rate(a[1m]))",
            "0.05",
        ),
        ("a > on (i, p) group_left b", "a", "b"),
        ("a > on(i) group_left(d) b{c=\"1\"}", "a", "b{c=\"1\"}"),
        ("a >= ignoring (d) b", "a", "b"),
        ("a > only_b", "a", "only_b"),
        ("a > on_b", "a", "on_b"),
    ] {
        assert_eq!(split_comparison(expr), Some((lhs, rhs)), "{expr}");
    }
}

#[test]
fn real_prometheus_evaluates_every_dashboard_query_and_alert_expression_against_the_daemon() {
    let prometheus = tool("SNAPWARDEN_PROMETHEUS", "prometheus");
    let promtool = tool("SNAPWARDEN_PROMTOOL", "promtool");
    let moto = Moto::start();

    // One tagged instance with one volume, so every run creates a snapshot and retention has work, and copies it
    // to a second region (moto completes copies at once), so the DR panels and alerts have data.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        moto.ec2()
            .await
            .run_instances()
            .image_id("ami-12345678")
            .min_count(1)
            .max_count(1)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key("Backup").value("true").build())
                    .build(),
            )
            .send()
            .await
            .expect("moto runs the instance");
    });

    let dir = tempfile::tempdir().unwrap();
    let daemon_port = free_port();
    let config = dir.path().join("snapwarden.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
listen = "127.0.0.1:{daemon_port}"
lock-dir = "{locks}"
[aws]
regions = ["us-east-1"]
endpoint-url = "{endpoint}"
max-attempts = 1
[[policy]]
name = "prod"
target = {{ resource = "instance", tags = {{ Backup = "true" }} }}
[[policy.schedule]]
name = "fast"
cron = "*/2 * * * * *"
keep = {{ last = 2 }}
[[policy.schedule.copy]]
region = "us-west-2"
keep = {{ last = 2 }}
"#,
            endpoint = moto.endpoint,
            locks = dir.path().display()
        ),
    )
    .unwrap();
    // The daemon's output goes nowhere, so a config it would refuse is named here rather than as a missing `up`.
    let validate = Command::new(env!("CARGO_BIN_EXE_snapwarden"))
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "the test's daemon config: {}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let _daemon = Killed(
        Command::new(env!("CARGO_BIN_EXE_snapwarden"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let prom_port = free_port();
    let rules = root().join("deploy/prometheus/alerts.yml");
    let prom_config = dir.path().join("prometheus.yml");
    // Job name `snapwarden` as in deploy/prometheus/prometheus.yml: the "down" alerts select on it.
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: snapwarden\n    static_configs:\n      - targets: [\"127.0.0.1:{daemon_port}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let tsdb = dir.path().join("tsdb");
    let _prom = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!("--storage.tsdb.path={}", tsdb.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // A few scrapes with runs behind them: a successful snapshot run, a staleness figure, a duration sample.
    let within = Duration::from_secs(60);
    wait_for(prom_port, "up{job=\"snapwarden\"} == 1", within);
    wait_for(
        prom_port,
        "snapwarden_runs_total{result=\"success\", kind=\"snapshot\"} > 0",
        within,
    );
    wait_for(prom_port, "snapwarden_staleness_seconds", within);
    wait_for(prom_port, "snapwarden_dr_staleness_seconds", within);
    wait_for(
        prom_port,
        "snapwarden_copies_total{outcome=\"created\"} > 0",
        within,
    );
    wait_for(
        prom_port,
        "snapwarden_run_duration_seconds_count > 0",
        within,
    );
    // rate() and increase() need two samples of the series in their window.
    wait_for(
        prom_port,
        "count_over_time(snapwarden_staleness_seconds[1m]) > 3",
        within,
    );

    let (code, metrics) = http_get(daemon_port, "/metrics").expect("daemon serves /metrics");
    assert_eq!(code, 200);
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "promtool check metrics: {lint}"
    );

    // Dashboard: Grafana variables become the values a user would pick, so a query whose label does not exist
    // returns nothing instead of matching everything as `.*` would.
    let instance = format!("127.0.0.1:{daemon_port}");
    let dashboard = read_json("deploy/grafana/snapwarden.json");
    let substitute = |e: &str| {
        e.replace("$__rate_interval", "1m")
            .replace("$instance", &instance)
            .replace("$policy", "prod")
            // moto's account: the daemon serves its own account only, named by its id.
            .replace("$account", "123456789012")
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        // A row only groups the panels below it.
        if panel["type"] == "row" {
            assert!(panel.get("targets").is_none(), "row {}", panel["title"]);
            continue;
        }
        for target in panel["targets"].as_array().unwrap() {
            let expr = substitute(target["expr"].as_str().unwrap());
            assert!(!expr.contains('$'), "unreplaced Grafana variable in {expr}");
            checked += 1;
            match query(prom_port, &expr) {
                Ok(r) if has_data(&r) => {}
                Ok(_) => failures.push(format!("panel {:?}: no data: {expr}", panel["title"])),
                Err(e) => failures.push(format!("panel {:?}: {e}: {expr}", panel["title"])),
            }
        }
    }
    assert!(checked >= 20, "only {checked} dashboard queries found");
    // The template variables' label_values() must find the labels the panels filter on.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(def) = var["definition"].as_str() {
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .unwrap();
            let (metric, label) = inner.split_once(", ").unwrap();
            match query(prom_port, &format!("count by ({label}) ({metric})")) {
                Ok(r) if has_data(&r) && r[0]["metric"][label].is_string() => {}
                other => failures.push(format!("variable {def}: {other:?}")),
            }
        }
    }

    // Rules and panels group by `kind`; `by (kind)` would silently give empty groups if the
    // daemon did not export it.
    wait_for(
        prom_port,
        "snapwarden_runs_total{kind=\"retention\"}",
        within,
    );

    // Alerts: a rule is a comparison (or absent()) that is empty while it does not fire, and nothing fires
    // here. So for each rule: the whole expression must parse and evaluate, each side of the comparison (the
    // argument of absent()) must return data, and each metric it names must have data. That catches a
    // misspelled metric or a grouping that matches nothing, which the empty result alone would hide.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let mut exprs = Vec::new();
    for line in rules_text.lines() {
        if let Some(e) = line.trim().strip_prefix("expr: ") {
            exprs.push(e.to_string());
        }
    }
    assert!(
        exprs.len() >= 6,
        "only {} alert expressions found",
        exprs.len()
    );
    for expr in &exprs {
        if let Err(e) = query(prom_port, expr) {
            failures.push(format!("alert: {e}: {expr}"));
            continue;
        }
        let parts: Vec<&str> = match (split_comparison(expr), expr.strip_prefix("absent(")) {
            (Some((l, r)), _) => vec![l, r],
            (None, Some(inner)) => vec![inner.strip_suffix(')').unwrap()],
            (None, None) => vec![expr.as_str()],
        };
        for part in parts
            .into_iter()
            .chain(metric_names(expr).iter().map(String::as_str))
        {
            match query(prom_port, part) {
                Ok(r) if has_data(&r) => {}
                other => failures.push(format!("alert `{expr}`: `{part}` has no data: {other:?}")),
            }
        }
    }

    // Prometheus itself loaded and evaluated every rule without error.
    let (_, body) = http_get(prom_port, "/api/v1/rules").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let loaded: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), exprs.len(), "rules loaded by Prometheus");
    for r in loaded {
        if r["health"] != "ok" {
            failures.push(format!(
                "rule {}: health {} {}",
                r["name"], r["health"], r["lastError"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
