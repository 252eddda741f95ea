//! The aws-sdk-ssm backend: converts [`Command`] to a SendCommand request and ListCommandInvocations pages to
//! [`Invocation`]s; SDK errors become [`crate::error::Error`] through the same conversion as EC2's
//! ([`crate::ec2::sdk::sdk_error`]), so SSM's codes are read once in [`crate::ec2::op::Code::parse`].

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey, CommandInvocation};

use super::{outcome, Command, Invocation, Sent, Ssm, Status};
use crate::ec2::op::Op;
use crate::ec2::sdk::sdk_error;
use crate::error::{Error, Result};

/// SSM keeps at most this many characters of a command's comment and refuses longer ones.
const COMMENT_CHARS: usize = 100;

/// Build it from the SDK config `daemon::aws_regions_paced` gives `SdkEc2`, the one with the SDK's retries off:
/// [`super::PacedSsm`] is the one retrier, and an SDK retry of SendCommand could run a command twice.
pub struct SdkSsm {
    region: String,
    client: aws_sdk_ssm::Client,
}

impl SdkSsm {
    pub fn new(config: &SdkConfig) -> Self {
        SdkSsm {
            region: config.region().map(|r| r.to_string()).unwrap_or_default(),
            client: aws_sdk_ssm::Client::new(config),
        }
    }
}

/// The comment cut to what SSM accepts: it only labels the command, so a long one is not worth a refusal.
fn comment(text: &str) -> String {
    text.chars().take(COMMENT_CHARS).collect()
}

fn invocation_of(i: &CommandInvocation) -> Invocation {
    let plugins: Vec<(i32, &str)> = i
        .command_plugins()
        .iter()
        .map(|p| (p.response_code(), p.output().unwrap_or_default()))
        .collect();
    let (exit_code, output) = outcome(&plugins);
    Invocation {
        instance_id: i.instance_id().unwrap_or_default().to_string(),
        status: Status::parse(
            i.status().map(|s| s.as_str()).unwrap_or_default(),
            i.status_details().unwrap_or_default(),
        ),
        output,
        exit_code,
    }
}

#[async_trait]
impl Ssm for SdkSsm {
    fn region(&self) -> &str {
        &self.region
    }

    async fn send_command(&self, command: &Command) -> Result<String> {
        command.check()?;
        let out = self
            .client
            .send_command()
            .document_name(&command.document)
            .set_instance_ids(Some(command.instance_ids.clone()))
            .set_parameters(Some(
                command
                    .parameters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ))
            // `check` bounds it to SSM's range, well inside i32.
            .timeout_seconds(command.timeout.as_secs() as i32)
            .comment(comment(&command.comment))
            .send()
            .await
            .map_err(|e| sdk_error(Op::SendCommand, &self.region, e))?;
        out.command()
            .and_then(|c| c.command_id())
            .map(str::to_string)
            .ok_or_else(|| Error::Other("SendCommand returned no command id".into()))
    }

    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        // `details`: the plugins' exit codes and output come only with it.
        let mut pages = self
            .client
            .list_command_invocations()
            .command_id(command_id)
            .details(true)
            .max_results(50)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(Op::ListCommandInvocations, &self.region, e))?;
            out.extend(page.command_invocations().iter().map(invocation_of));
        }
        Ok(out)
    }

    async fn list_commands(
        &self,
        document: &str,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Sent>> {
        let filter = |key: CommandFilterKey, value: String| {
            CommandFilter::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| Error::Other(format!("ListCommands filter: {e}")))
        };
        let mut pages = self
            .client
            .list_commands()
            .filters(filter(
                CommandFilterKey::DocumentName,
                document.to_string(),
            )?)
            .filters(filter(
                CommandFilterKey::InvokedAfter,
                after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )?)
            .max_results(50)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(Op::ListCommands, &self.region, e))?;
            out.extend(page.commands().iter().map(|c| {
                Sent {
                    id: c.command_id().unwrap_or_default().to_string(),
                    document: c.document_name().unwrap_or_default().to_string(),
                    instance_ids: c.instance_ids().to_vec(),
                    comment: c.comment().unwrap_or_default().to_string(),
                    requested: c
                        .requested_date_time()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                        .unwrap_or_default(),
                }
            }));
        }
        // Not every SSM (moto's) applies the filters: the document is checked here too.
        out.retain(|c| c.document == document);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ssm::types::{CommandInvocationStatus, CommandPlugin};

    #[test]
    fn an_sdk_invocation_becomes_status_exit_code_and_output() {
        let plugin = |code: i32, output: &str| {
            CommandPlugin::builder()
                .response_code(code)
                .output(output)
                .build()
        };
        let i = CommandInvocation::builder()
            .instance_id("i-1")
            .status(CommandInvocationStatus::Failed)
            .status_details("Failed")
            .command_plugins(plugin(0, "prepared"))
            .command_plugins(plugin(3, "VSS components missing\nsee docs"))
            .build();
        assert_eq!(
            invocation_of(&i),
            Invocation {
                instance_id: "i-1".into(),
                status: Status::Failed,
                output: "VSS components missing\nsee docs".into(),
                exit_code: Some(3),
            }
        );
        let undelivered = CommandInvocation::builder()
            .instance_id("i-2")
            .status(CommandInvocationStatus::Failed)
            .status_details("Undeliverable")
            .build();
        let got = invocation_of(&undelivered);
        assert_eq!((got.status, got.exit_code), (Status::Undeliverable, None));
    }

    #[test]
    fn a_long_comment_is_cut_to_what_ssm_takes() {
        assert_eq!(comment(&"é".repeat(150)).chars().count(), COMMENT_CHARS);
        assert_eq!(comment("short"), "short");
    }
}
