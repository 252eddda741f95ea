use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::fake::{FakeSsm, Step};
use super::*;

fn command(instances: usize) -> Command {
    Command {
        document: "AWSEC2-CreateVssSnapshot".into(),
        instance_ids: (0..instances).map(|i| format!("i-{i:03}")).collect(),
        parameters: BTreeMap::from([("ExcludeBootVolume".into(), vec!["False".into()])]),
        timeout: Duration::from_secs(600),
        comment: "snapwarden".into(),
    }
}

#[test]
fn statuses_parse_from_status_and_details() {
    for (status, details, want) in [
        ("Pending", "Pending", Status::Pending),
        ("InProgress", "In Progress", Status::InProgress),
        ("Delayed", "Delayed", Status::Delayed),
        ("Success", "Success", Status::Success),
        ("Cancelled", "Canceled", Status::Cancelled),
        ("TimedOut", "Execution Timed Out", Status::TimedOut),
        ("TimedOut", "Delivery Timed Out", Status::TimedOut),
        ("Failed", "Failed", Status::Failed),
        ("Cancelling", "Cancelling", Status::Cancelling),
        // Delivery failures are told apart only by their details.
        ("Failed", "Undeliverable", Status::Undeliverable),
        ("Failed", "Terminated", Status::Terminated),
        ("Paused", "", Status::Other("Paused".into())),
    ] {
        assert_eq!(Status::parse(status, details), want, "{status}/{details}");
    }
    assert!(Status::Undeliverable.is_final() && Status::TimedOut.is_final());
    assert!(!Status::Delayed.is_final() && !Status::Cancelling.is_final());
    assert!(!Status::Other("Paused".into()).is_final());
    assert_eq!(Status::Other("Paused".into()).as_str(), "other");
}

#[test]
fn a_command_names_one_to_fifty_instances_and_a_timeout_ssm_takes() {
    assert!(command(1).check().is_ok());
    assert!(command(MAX_INSTANCES).check().is_ok());
    let err = command(MAX_INSTANCES + 1).check().unwrap_err().to_string();
    assert!(err.contains("51 instances"), "{err}");
    assert!(err.contains("at most 50"), "{err}");
    assert!(err.contains("AWSEC2-CreateVssSnapshot"), "{err}");
    assert!(command(0).check().is_err());
    let short = Command {
        timeout: Duration::from_secs(29),
        ..command(1)
    };
    assert!(short.check().unwrap_err().to_string().contains("30 to"));
}

#[test]
fn the_output_excerpt_is_the_first_lines_bounded() {
    assert_eq!(excerpt("\n\n  ok\n"), "ok");
    let long: String = (1..=30).map(|n| format!("line {n}\n")).collect();
    let got = excerpt(&long);
    assert_eq!(got.lines().count(), OUTPUT_LINES);
    assert!(
        got.starts_with("line 1\n") && got.ends_with("line 10…"),
        "{got}"
    );
    let wide = "x".repeat(5_000);
    assert_eq!(excerpt(&wide).chars().count(), OUTPUT_CHARS + 1);
    // Cut on a character, never inside one.
    assert!(excerpt(&"ü".repeat(5_000)).ends_with("ü…"));
}

#[test]
fn the_exit_code_is_the_first_failing_plugins_and_minus_one_is_none() {
    assert_eq!(outcome(&[]), (None, String::new()));
    assert_eq!(outcome(&[(0, "a"), (0, "b")]), (Some(0), "b".into()));
    assert_eq!(
        outcome(&[(0, "a"), (2, "disk busy"), (-1, "")]),
        (Some(2), "disk busy".into())
    );
    assert_eq!(outcome(&[(-1, "")]), (None, String::new()));
}

#[tokio::test]
async fn the_fake_answers_each_instance_by_its_script_and_keeps_the_last_answer() {
    let ssm = FakeSsm::new("r");
    ssm.script(
        "i-000",
        vec![
            Step::Missing,
            Step::status(Status::InProgress),
            Step::exited(1, "thaw failed"),
        ],
    );
    ssm.script("i-001", vec![Step::status(Status::Undeliverable)]);
    let id = ssm.send_command(&command(3)).await.unwrap();
    let poll = || async {
        let list = ssm.list_command_invocations(&id).await.unwrap();
        list.into_iter()
            .map(|i| (i.instance_id, i.status, i.exit_code))
            .collect::<Vec<_>>()
    };
    let first = poll().await;
    assert_eq!(
        first,
        [
            ("i-001".into(), Status::Undeliverable, None),
            ("i-002".into(), Status::Success, Some(0)),
        ]
    );
    assert_eq!(poll().await[0], ("i-000".into(), Status::InProgress, None));
    for _ in 0..2 {
        let list = ssm.list_command_invocations(&id).await.unwrap();
        assert_eq!(list[0].status, Status::Failed);
        assert_eq!(list[0].output, "thaw failed");
        assert_eq!(list[0].exit_code, Some(1));
    }
    // A script is for the next command only.
    let again = ssm.send_command(&command(1)).await.unwrap();
    let list = ssm.list_command_invocations(&again).await.unwrap();
    assert_eq!(list[0].status, Status::Success);
    assert_eq!(ssm.sent().len(), 2);
    assert_eq!(ssm.sent()[0], (id, command(3)));
    let err = ssm.list_command_invocations("nope").await.unwrap_err();
    assert_eq!(err.code(), "InvalidCommandId");
}

#[tokio::test]
async fn the_fake_refuses_more_than_fifty_instances_and_records_nothing() {
    let ssm = FakeSsm::new("r");
    assert!(ssm.send_command(&command(60)).await.is_err());
    assert!(ssm.sent().is_empty());
}

fn quick() -> PaceConfig {
    PaceConfig {
        max_wait: Duration::from_secs(5),
        max_attempts: 6,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(40),
        seed: Some(1),
        ..PaceConfig::default()
    }
}

#[tokio::test]
async fn paced_ssm_retries_throttling_and_polls_but_never_resends_a_command_after_a_server_error() {
    let fake = Arc::new(FakeSsm::new("r"));
    let ssm = PacedSsm::new(fake.clone(), quick());

    fake.fail_next(Op::SendCommand, "ThrottlingException", 2);
    let id = ssm.send_command(&command(2)).await.unwrap();
    assert_eq!(fake.calls(Op::SendCommand), 3);

    fake.fail_next(Op::SendCommand, "InternalServerError", 1);
    assert!(ssm.send_command(&command(2)).await.is_err());
    assert_eq!(fake.calls(Op::SendCommand), 4, "not sent again");

    fake.fail_next(Op::ListCommandInvocations, "InternalServerError", 2);
    assert_eq!(ssm.list_command_invocations(&id).await.unwrap().len(), 2);
    assert_eq!(fake.calls(Op::ListCommandInvocations), 3);

    // Not visible yet: handed back for the caller's own polling, not retried here.
    fake.fail_next(Op::ListCommandInvocations, "InvocationDoesNotExist", 1);
    let err = ssm.list_command_invocations(&id).await.unwrap_err();
    assert!(err.is(crate::ec2::op::Code::InvocationNotFound), "{err}");

    // Refused before a token or a request is spent.
    assert!(ssm.send_command(&command(51)).await.is_err());
    assert_eq!(fake.calls(Op::SendCommand), 4);
}
