//! The SSM agent stand-in (`tests/common/ssm_agent.rs`) against moto, driven by the raw aws-sdk-ssm and
//! aws-sdk-ec2 clients: what the daemon's VSS and script tests stand on. A VSS run snapshots the attached volumes
//! with the requested tags and the document's own, invocations answer by rule in shapes the SDK parses, and moto's
//! own `ListCommands` shows what the SDK sent, so the stand-in cannot drift from the real request.

mod common;

use std::collections::BTreeMap;

use aws_sdk_ssm::types::CommandInvocationStatus;
use common::ssm_agent::{End, Reply, Rule, SsmAgent, VSS_CONFIG_TAG, VSS_DOCUMENT};
use common::{filter, launch_instance, Moto};

/// The boot device of moto's instances (no AMI is loaded, so every instance has this root device name).
const BOOT: &str = "/dev/sda1";

struct Stand {
    _moto: Moto,
    agent: SsmAgent,
    /// EC2 through the stand-in: proves it passes EC2 through.
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

async fn stand() -> Stand {
    let moto = Moto::start();
    let agent = SsmAgent::start(moto.port);
    let config = common::sdk_config(&agent.endpoint).await;
    Stand {
        _moto: moto,
        agent,
        ec2: aws_sdk_ec2::Client::new(&config),
        ssm: aws_sdk_ssm::Client::new(&config),
    }
}

async fn send(
    ssm: &aws_sdk_ssm::Client,
    document: &str,
    instances: &[&str],
    params: &[(&str, &str)],
) -> String {
    let mut req = ssm
        .send_command()
        .document_name(document)
        .timeout_seconds(600)
        .set_instance_ids(Some(instances.iter().map(|i| i.to_string()).collect()));
    for (k, v) in params {
        req = req.parameters(*k, vec![v.to_string()]);
    }
    let out = req.send().await.expect("SendCommand through the stand-in");
    out.command().unwrap().command_id().unwrap().to_string()
}

/// One ListCommandInvocations poll of `command` with details: instance -> (status, status details, response code,
/// output).
async fn poll(
    ssm: &aws_sdk_ssm::Client,
    command: &str,
) -> BTreeMap<String, (CommandInvocationStatus, String, i32, String)> {
    let out = ssm
        .list_command_invocations()
        .command_id(command)
        .details(true)
        .send()
        .await
        .expect("ListCommandInvocations through the stand-in");
    out.command_invocations()
        .iter()
        .map(|i| {
            let plugin = &i.command_plugins()[0];
            (
                i.instance_id().unwrap().to_string(),
                (
                    i.status().unwrap().clone(),
                    i.status_details().unwrap().to_string(),
                    plugin.response_code(),
                    plugin.output().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// The snapshots tagged `Run = run` in moto: (volume, tags as a map).
async fn snapshots(
    ec2: &aws_sdk_ec2::Client,
    run: &str,
) -> Vec<(String, BTreeMap<String, String>)> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter("tag:Run", &[run]))
        .send()
        .await
        .expect("DescribeSnapshots");
    let mut all: Vec<(String, BTreeMap<String, String>)> = out
        .snapshots()
        .iter()
        .map(|s| {
            let tags = s
                .tags()
                .iter()
                .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
                .collect();
            (s.volume_id().unwrap().to_string(), tags)
        })
        .collect();
    all.sort();
    all
}

/// Volume id by device of `instance`.
async fn devices(ec2: &aws_sdk_ec2::Client, instance: &str) -> BTreeMap<String, String> {
    let out = ec2
        .describe_volumes()
        .filters(filter("attachment.instance-id", &[instance]))
        .send()
        .await
        .expect("DescribeVolumes");
    out.volumes()
        .iter()
        .map(|v| {
            (
                v.attachments()[0].device().unwrap().to_string(),
                v.volume_id().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn vss_run_snapshots_every_attached_volume_with_the_requested_tags_and_the_documents_own() {
    let s = stand().await;
    let (id, _) =
        launch_instance(&s.ec2, &[("Name", "sql")], &[BOOT, "/dev/sdf", "/dev/sdg"]).await;
    let by_device = devices(&s.ec2, &id).await;

    let command = send(
        &s.ssm,
        VSS_DOCUMENT,
        &[&id],
        &[(
            "tags",
            "Key=Run,Value=all;Key=snapwarden:slot,Value=2026-12-05T03:00:00Z",
        )],
    )
    .await;

    let states = poll(&s.ssm, &command).await;
    assert_eq!(states[&id].0, CommandInvocationStatus::Success);
    let snaps = snapshots(&s.ec2, "all").await;
    assert_eq!(
        snaps.len(),
        3,
        "one snapshot per attached volume: {snaps:?}"
    );
    for (device, volume) in &by_device {
        let (_, tags) = snaps
            .iter()
            .find(|(v, _)| v == volume)
            .unwrap_or_else(|| panic!("no snapshot of {device} ({volume}): {snaps:?}"));
        assert_eq!(tags["snapwarden:slot"], "2026-12-05T03:00:00Z");
        assert_eq!(tags["Device"], *device);
        assert_eq!(tags["AppConsistent"], "true");
        assert_eq!(tags["AwsVssConfig"], VSS_CONFIG_TAG);
    }
    assert_eq!(s.agent.snapshots(&command, &id).len(), 3);
}

#[tokio::test]
async fn vss_run_leaves_the_boot_volume_out_when_asked() {
    let s = stand().await;
    let (id, _) = launch_instance(&s.ec2, &[], &[BOOT, "/dev/sdf", "/dev/sdg"]).await;
    let by_device = devices(&s.ec2, &id).await;

    let command = send(
        &s.ssm,
        VSS_DOCUMENT,
        &[&id],
        &[
            ("tags", "Key=Run,Value=data"),
            ("ExcludeBootVolume", "True"),
        ],
    )
    .await;

    // The instance works whether or not anybody polls.
    assert_eq!(s.agent.snapshots(&command, &id).len(), 2);
    assert_eq!(snapshots(&s.ec2, "data").await.len(), 2);
    assert_eq!(s.agent.count("ListCommandInvocations"), 0);
    assert_eq!(
        poll(&s.ssm, &command).await[&id].0,
        CommandInvocationStatus::Success
    );
    let snaps = snapshots(&s.ec2, "data").await;
    let volumes: Vec<&str> = snaps.iter().map(|(v, _)| v.as_str()).collect();
    let mut data = vec![
        by_device["/dev/sdf"].as_str(),
        by_device["/dev/sdg"].as_str(),
    ];
    data.sort();
    assert_eq!(
        volumes, data,
        "the boot volume {} is left out",
        by_device[BOOT]
    );
}

#[tokio::test]
async fn vss_run_fails_on_a_reserved_or_malformed_tag_and_creates_nothing() {
    let s = stand().await;
    let (a, _) = launch_instance(&s.ec2, &[], &[BOOT, "/dev/sdf"]).await;
    let (b, _) = launch_instance(&s.ec2, &[], &[BOOT, "/dev/sdf"]).await;

    let reserved = send(
        &s.ssm,
        VSS_DOCUMENT,
        &[&a],
        &[("tags", "Key=Run,Value=r;Key=AppConsistent,Value=true")],
    )
    .await;
    let malformed = send(&s.ssm, VSS_DOCUMENT, &[&b], &[("tags", "Run=r")]).await;

    let (status, _, code, output) = poll(&s.ssm, &reserved).await.remove(&a).unwrap();
    assert_eq!((status, code), (CommandInvocationStatus::Failed, 1));
    assert!(output.contains("AppConsistent"), "{output}");
    let (status, _, _, output) = poll(&s.ssm, &malformed).await.remove(&b).unwrap();
    assert_eq!(status, CommandInvocationStatus::Failed);
    assert!(output.contains("Run=r"), "{output}");
    assert!(snapshots(&s.ec2, "r").await.is_empty());
}

#[tokio::test]
async fn invocations_answer_by_rule_poll_by_poll() {
    let s = stand().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(launch_instance(&s.ec2, &[], &[BOOT, "/dev/sdf"]).await.0);
    }
    let [late, slow, failing, timing_out, unmanaged] = [0, 1, 2, 3, 4].map(|i| ids[i].as_str());
    s.agent.set_rules(vec![
        Rule::instance(late, Reply::success().missing(2)),
        Rule::instance(slow, Reply::success().in_progress(2)),
        Rule::instance(
            failing,
            Reply::failed(3, "VSS components missing: install AwsVssComponents"),
        ),
        Rule::instance(timing_out, Reply::ends(End::TimedOut)),
        Rule::instance(unmanaged, Reply::ends(End::Undeliverable)),
    ]);
    let command = send(
        &s.ssm,
        VSS_DOCUMENT,
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("tags", "Key=Run,Value=rules")],
    )
    .await;

    // Poll 1: the late one is missing from the list and GetCommandInvocation says it does not exist (that call is
    // its second poll); the slow one runs and has created nothing yet.
    let first = poll(&s.ssm, &command).await;
    assert!(!first.contains_key(late), "{first:?}");
    let err = s
        .ssm
        .get_command_invocation()
        .command_id(&command)
        .instance_id(late)
        .send()
        .await
        .expect_err("the late invocation does not exist yet");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_invocation_does_not_exist()),
        "{err:?}"
    );
    assert_eq!(first[slow].0, CommandInvocationStatus::InProgress);
    assert!(s.agent.snapshots(&command, slow).is_empty());
    assert_eq!(first[failing].0, CommandInvocationStatus::Failed);
    assert_eq!(first[failing].2, 3);
    assert_eq!(
        first[failing].3,
        "VSS components missing: install AwsVssComponents"
    );
    assert_eq!(first[timing_out].0, CommandInvocationStatus::TimedOut);
    assert_eq!(first[unmanaged].0, CommandInvocationStatus::Failed);
    assert_eq!(first[unmanaged].1, "Undeliverable");

    // Poll 2: the slow one still runs; poll 3: both have ended and snapshotted their volumes.
    assert_eq!(
        poll(&s.ssm, &command).await[slow].0,
        CommandInvocationStatus::InProgress
    );
    let third = poll(&s.ssm, &command).await;
    assert_eq!(third[late].0, CommandInvocationStatus::Success);
    assert_eq!(third[slow].0, CommandInvocationStatus::Success);
    assert_eq!(s.agent.snapshots(&command, slow).len(), 2);
    let got = s
        .ssm
        .get_command_invocation()
        .command_id(&command)
        .instance_id(failing)
        .send()
        .await
        .expect("GetCommandInvocation of an ended invocation");
    assert_eq!(got.status(), Some(&CommandInvocationStatus::Failed));
    assert_eq!(got.response_code(), 3);
    assert_eq!(
        got.standard_output_content(),
        Some("VSS components missing: install AwsVssComponents")
    );

    // Only the two successful runs created snapshots: two volumes each.
    assert_eq!(snapshots(&s.ec2, "rules").await.len(), 4);
    assert_eq!(s.agent.count("ListCommandInvocations"), 3);
    assert_eq!(s.agent.count("GetCommandInvocation"), 2);
}

#[tokio::test]
async fn a_rule_used_up_falls_through_and_finish_ends_runs_nobody_polls() {
    let s = stand().await;
    let (id, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    s.agent.set_rules(vec![
        Rule::any(Reply::failed(1, "fsfreeze: /data: Device or resource busy"))
            .document("Snapwarden-Freeze")
            .times(1),
        Rule::any(Reply::success().in_progress(5)).document(VSS_DOCUMENT),
    ]);
    let freeze = send(&s.ssm, "Snapwarden-Freeze", &[&id], &[("mounts", "/data")]).await;
    let again = send(&s.ssm, "Snapwarden-Freeze", &[&id], &[("mounts", "/data")]).await;
    assert_eq!(
        poll(&s.ssm, &freeze).await[&id].0,
        CommandInvocationStatus::Failed
    );
    assert_eq!(
        poll(&s.ssm, &again).await[&id].0,
        CommandInvocationStatus::Success
    );

    let vss = send(
        &s.ssm,
        VSS_DOCUMENT,
        &[&id],
        &[("tags", "Key=Run,Value=fin")],
    )
    .await;
    assert!(
        snapshots(&s.ec2, "fin").await.is_empty(),
        "still in progress"
    );
    s.agent.finish();
    assert_eq!(snapshots(&s.ec2, "fin").await.len(), 1);
    assert_eq!(
        poll(&s.ssm, &vss).await[&id].0,
        CommandInvocationStatus::Success
    );
}

#[tokio::test]
async fn moto_records_the_command_as_the_sdk_sent_it_and_sns_passes_through() {
    let s = stand().await;
    let (a, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    let (b, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    let params = [
        (
            "tags",
            "Key=Run,Value=shape;Key=snapwarden:policy,Value=sql",
        ),
        ("ExcludeBootVolume", "True"),
        ("CopyOnly", "False"),
        ("NoWriters", "False"),
    ];
    let command = send(&s.ssm, VSS_DOCUMENT, &[&a, &b], &params).await;

    let listed = s
        .ssm
        .list_commands()
        .command_id(&command)
        .send()
        .await
        .expect("ListCommands passes through to moto");
    let [moto] = listed.commands() else {
        panic!("one command in moto: {listed:?}")
    };
    let recorded = s.agent.commands_of(VSS_DOCUMENT);
    let [ours] = recorded.as_slice() else {
        panic!("one command recorded: {recorded:?}")
    };
    let sent: BTreeMap<String, Vec<String>> = params
        .iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect();
    let moto_params: BTreeMap<String, Vec<String>> = moto
        .parameters()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(moto.document_name(), Some(VSS_DOCUMENT));
    assert_eq!(moto_params, sent);
    assert_eq!(ours.id, command);
    assert_eq!(ours.document, VSS_DOCUMENT);
    assert_eq!(ours.parameters, sent);
    assert_eq!(ours.instance_ids, vec![a.clone(), b.clone()]);
    assert_eq!(ours.timeout_seconds, Some(600));
    // moto keeps instance ids as a set.
    let mut in_moto = moto.instance_ids().to_vec();
    in_moto.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(in_moto, expected);

    let sns = aws_sdk_sns::Client::new(&common::sdk_config(&s.agent.endpoint).await);
    let topic = sns
        .create_topic()
        .name("alerts")
        .send()
        .await
        .expect("SNS passes through");
    assert!(topic.topic_arn().unwrap().ends_with(":alerts"));
}

#[tokio::test]
async fn a_command_naming_an_unmanaged_instance_is_refused_whole_and_never_reaches_moto() {
    let s = stand().await;
    let (managed, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    let (stopped, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    s.agent.set_unmanaged(&[&stopped]);

    let err = s
        .ssm
        .send_command()
        .document_name(VSS_DOCUMENT)
        .instance_ids(&managed)
        .instance_ids(&stopped)
        .parameters("tags", vec!["Key=Run,Value=refused".into()])
        .send()
        .await
        .expect_err("SSM refuses a command naming an unmanaged instance");
    let service = err.as_service_error().expect("a modelled SSM error");
    assert!(service.is_invalid_instance_id(), "{err:?}");
    assert!(
        service.to_string().contains(&stopped) && !service.to_string().contains(&managed),
        "{service}"
    );
    assert!(s.agent.commands().is_empty());
    let in_moto = s.ssm.list_commands().send().await.expect("ListCommands");
    assert!(in_moto.commands().is_empty(), "{in_moto:?}");
    assert!(snapshots(&s.ec2, "refused").await.is_empty());

    // Commands by tag targets are not modelled: refused loudly rather than run nowhere.
    let err = s
        .ssm
        .send_command()
        .document_name(VSS_DOCUMENT)
        .targets(
            aws_sdk_ssm::types::Target::builder()
                .key("tag:Backup")
                .values("true")
                .build(),
        )
        .send()
        .await
        .expect_err("Targets are refused");
    assert!(
        format!("{err:?}").contains("ValidationException"),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_fault_proxy_in_front_throttles_ssm_calls_with_ssms_json_error() {
    use aws_sdk_ssm::error::ProvideErrorMetadata;
    use common::fault_proxy::{Fault, FaultProxy, Rule as FaultRule, When};
    let s = stand().await;
    let (id, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    let proxy = FaultProxy::start(s.agent.port, 7);
    proxy.set_rules(vec![FaultRule::new(
        &["ListCommandInvocations"],
        When::Calls(vec![1]),
        Fault::Error("ThrottlingException"),
    )]);
    // No retries, so the throttled answer reaches the test.
    let config = aws_sdk_ssm::config::Builder::from(&common::sdk_config(&proxy.endpoint).await)
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
        .build();
    let ssm = aws_sdk_ssm::Client::from_conf(config);
    let command = send(&ssm, "AWS-RunShellScript", &[&id], &[("commands", "true")]).await;

    let err = ssm
        .list_command_invocations()
        .command_id(&command)
        .send()
        .await
        .expect_err("the first poll is throttled");
    assert_eq!(err.code(), Some("ThrottlingException"), "{err:?}");
    assert_eq!(
        poll(&ssm, &command).await[&id].0,
        CommandInvocationStatus::Success
    );
    assert_eq!(
        proxy.count("ListCommandInvocations", "ThrottlingException"),
        1
    );
    assert_eq!(proxy.count("SendCommand", "forwarded"), 1);
    // The throttled call never reached the agent.
    assert_eq!(s.agent.count("ListCommandInvocations"), 1);
}

#[tokio::test]
async fn sixty_instances_in_two_commands_each_get_their_snapshot_and_polls_page_by_fifty() {
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceType};
    let s = stand().await;
    let out = s
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(60)
        .max_count(60)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(BOOT)
                .ebs(EbsBlockDevice::builder().volume_size(8).build())
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let ids: Vec<&str> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id())
        .collect();
    assert_eq!(ids.len(), 60);

    let first = send(
        &s.ssm,
        VSS_DOCUMENT,
        &ids[..50],
        &[("tags", "Key=Run,Value=sixty")],
    )
    .await;
    let second = send(
        &s.ssm,
        VSS_DOCUMENT,
        &ids[50..],
        &[("tags", "Key=Run,Value=sixty")],
    )
    .await;
    let page = s
        .ssm
        .list_command_invocations()
        .command_id(&first)
        .max_results(20)
        .send()
        .await
        .expect("ListCommandInvocations");
    assert_eq!(page.command_invocations().len(), 20);
    assert!(page.next_token().is_some());
    assert_eq!(poll(&s.ssm, &first).await.len(), 50);
    assert_eq!(poll(&s.ssm, &second).await.len(), 10);

    let snaps = snapshots(&s.ec2, "sixty").await;
    assert_eq!(snaps.len(), 60, "one boot-volume snapshot per instance");
    let commands = s.agent.commands_of(VSS_DOCUMENT);
    assert_eq!(
        commands
            .iter()
            .map(|c| c.instance_ids.len())
            .collect::<Vec<_>>(),
        vec![50, 10]
    );
}

#[tokio::test]
async fn a_held_run_says_in_progress_until_released_and_a_creating_one_snapshots_before_it_reports()
{
    let s = stand().await;
    let (early, _) = launch_instance(&s.ec2, &[], &["/dev/sdf", "/dev/sdg"]).await;
    let (late, _) = launch_instance(&s.ec2, &[], &["/dev/sdf"]).await;
    s.agent.set_rules(vec![
        Rule::instance(&early, Reply::success().held().creating()),
        Rule::any(Reply::success().held()).document(VSS_DOCUMENT),
    ]);
    let out = s
        .ssm
        .send_command()
        .document_name(VSS_DOCUMENT)
        .comment("snapwarden vss 2026-01-01T00:00:00Z p")
        .timeout_seconds(600)
        .instance_ids(&early)
        .instance_ids(&late)
        .parameters("tags", vec!["Key=Run,Value=held".into()])
        .send()
        .await
        .expect("SendCommand");
    let command = out.command().unwrap().command_id().unwrap().to_string();

    // However often it is polled, a held run is in progress; the creating one's snapshots exist meanwhile, the
    // other's do not.
    for _ in 0..5 {
        let states = poll(&s.ssm, &command).await;
        assert_eq!(states[&early].0, CommandInvocationStatus::InProgress);
        assert_eq!(states[&late].0, CommandInvocationStatus::InProgress);
    }
    assert_eq!(s.agent.polls_of(VSS_DOCUMENT), 10);
    assert_eq!(s.agent.snapshots(&command, &early).len(), 2);
    let volumes: Vec<String> = snapshots(&s.ec2, "held")
        .await
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(volumes.len(), 2, "only the creating run's: {volumes:?}");

    s.agent.release(VSS_DOCUMENT);
    let states = poll(&s.ssm, &command).await;
    assert_eq!(states[&early].0, CommandInvocationStatus::Success);
    assert_eq!(states[&late].0, CommandInvocationStatus::Success);
    assert_eq!(snapshots(&s.ec2, "held").await.len(), 3);

    // The comment is kept where the daemon looks for it (moto's ListCommands) and where the stand-in answers.
    let listed = s.ssm.list_commands().send().await.expect("ListCommands");
    assert_eq!(
        listed.commands()[0].comment(),
        Some("snapwarden vss 2026-01-01T00:00:00Z p")
    );
    assert_eq!(
        s.agent.commands()[0].comment,
        "snapwarden vss 2026-01-01T00:00:00Z p"
    );
    let invocations = s
        .ssm
        .list_command_invocations()
        .command_id(&command)
        .send()
        .await
        .expect("ListCommandInvocations");
    assert!(invocations
        .command_invocations()
        .iter()
        .all(|i| i.comment() == Some("snapwarden vss 2026-01-01T00:00:00Z p")));
}

#[tokio::test]
async fn list_commands_names_only_the_instances_each_command_was_sent_to() {
    let s = stand().await;
    let (a, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    let (b, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    let (c, _) = launch_instance(&s.ec2, &[], &[BOOT]).await;
    let to_a = send(
        &s.ssm,
        "snapwarden-fsfreeze",
        &[&a],
        &[("MountPoints", "/data")],
    )
    .await;
    let to_bc = send(
        &s.ssm,
        "snapwarden-thaw",
        &[&c, &b],
        &[("MountPoints", "/data")],
    )
    .await;

    let listed = s.ssm.list_commands().send().await.expect("ListCommands");
    let named: BTreeMap<String, (Vec<String>, i32)> = listed
        .commands()
        .iter()
        .map(|cmd| {
            let mut ids = cmd.instance_ids().to_vec();
            ids.sort();
            (
                cmd.command_id().unwrap().to_string(),
                (ids, cmd.target_count()),
            )
        })
        .collect();
    let mut bc = vec![b.clone(), c.clone()];
    bc.sort();
    assert_eq!(
        named,
        BTreeMap::from([
            (to_a.clone(), (vec![a.clone()], 1)),
            (to_bc.clone(), (bc, 2))
        ])
    );
    // The rest of the answer is moto's.
    assert!(listed
        .commands()
        .iter()
        .any(|cmd| cmd.document_name() == Some("snapwarden-thaw")
            && cmd.parameters().unwrap()["MountPoints"] == ["/data"]));

    let of_b = s
        .ssm
        .list_commands()
        .instance_id(&b)
        .send()
        .await
        .expect("ListCommands by instance");
    let ids: Vec<&str> = of_b
        .commands()
        .iter()
        .filter_map(|c| c.command_id())
        .collect();
    assert_eq!(ids, [to_bc.as_str()]);
}
