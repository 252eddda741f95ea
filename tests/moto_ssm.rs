//! `ssm::sdk::SdkSsm` against a real moto server: the SendCommand request the SDK code builds, read back with the
//! raw aws-sdk-ssm client from moto's ListCommands, so a parameter the code forgot or misspelled shows up here and
//! a stand-in agent that answers these commands cannot drift from what the real SDK sends. moto runs nothing and
//! answers ListCommandInvocations with HTTP 500, so invocations are tested on `FakeSsm` (`src/ssm/tests.rs`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Moto;
use snapwarden::ssm::sdk::SdkSsm;
use snapwarden::ssm::{Command, Ssm, MAX_INSTANCES};

const DOCUMENT: &str = "AWSEC2-CreateVssSnapshot";

#[tokio::test]
async fn send_command_reaches_ssm_with_document_parameters_instances_and_timeout() {
    let moto = Moto::start();
    let conf = moto.sdk_config().await;
    let raw_ec2 = moto.ec2().await;
    let (a, _) = common::launch_instance(&raw_ec2, &[("Backup", "vss")], &["/dev/sda1"]).await;
    let (b, _) = common::launch_instance(&raw_ec2, &[("Backup", "vss")], &["/dev/sda1"]).await;
    let ssm = SdkSsm::new(&conf);
    let command = Command {
        document: DOCUMENT.into(),
        instance_ids: vec![a.clone(), b.clone()],
        parameters: BTreeMap::from([
            ("ExcludeBootVolume".into(), vec!["False".into()]),
            ("CopyOnly".into(), vec!["True".into()]),
            (
                "tags".into(),
                vec!["Key=snapwarden:managed,Value=true;Key=snapwarden:policy,Value=db".into()],
            ),
        ]),
        timeout: Duration::from_secs(600),
        comment: "snapwarden db 2026-11-20T04:30:00Z".into(),
    };
    let id = ssm.send_command(&command).await.expect("SendCommand");
    assert!(!id.is_empty());

    // A batch too large is refused before anything is sent.
    let too_many = Command {
        instance_ids: (0..=MAX_INSTANCES).map(|i| format!("i-{i:017x}")).collect(),
        ..command.clone()
    };
    let err = ssm.send_command(&too_many).await.unwrap_err().to_string();
    assert!(err.contains("at most 50"), "{err}");

    let raw = aws_sdk_ssm::Client::new(&conf);
    let listed = raw.list_commands().send().await.expect("ListCommands");
    assert_eq!(listed.commands().len(), 1, "{:?}", listed.commands());
    let sent = &listed.commands()[0];
    assert_eq!(sent.command_id(), Some(id.as_str()));
    assert_eq!(sent.document_name(), Some(DOCUMENT));
    // moto does not keep the order the ids were sent in; SSM treats them as a set.
    let mut instances = sent.instance_ids().to_vec();
    instances.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(instances, want);
    let parameters: BTreeMap<String, Vec<String>> = sent
        .parameters()
        .expect("parameters sent")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(parameters, command.parameters);
    assert_eq!(sent.comment(), Some(command.comment.as_str()));
    assert_eq!(sent.timeout_seconds(), Some(600));
}
