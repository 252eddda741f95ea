//! The aws-sdk-ec2 backend and the shared AWS client setup (region, endpoint, retries, timeouts, credentials
//! check). Converts SDK types to the plain types of [`super`] and SDK errors to [`Error`] with the EC2 error code,
//! since the EC2 model has no modelled errors. Decisions about what to call live in the worker, not here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{self as ec2t, ResourceType, TagSpecification};
use chrono::{DateTime, Utc};

use super::op::Op;
use super::{
    CopySnapshot, CreateSnapshot, CreateSnapshots, Ec2, Filter, Instance, Page, Snapshot, Tags,
    Volume, VolumeResult, COPY_VOLUME_ID,
};
use crate::config::AwsConfig;
use crate::error::{Error, Result};
use crate::retention::SnapState;

/// Loads the SDK configuration for one region (None: the SDK's own region chain).
pub(crate) async fn sdk_config(aws: &AwsConfig, region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(aws.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(aws.connect_timeout)
                .operation_timeout(aws.operation_timeout)
                .operation_attempt_timeout(aws.attempt_timeout)
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// Fails fast, with what to do, when there is no region or no credentials: the default chain would otherwise end
/// in instance-metadata probes that take seconds to give up off EC2.
pub async fn check_sdk_config(config: &SdkConfig, within: Duration) -> Result<String> {
    let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
        Error::Other(
            "no AWS region: set aws.regions in the config, or AWS_REGION / AWS_DEFAULT_REGION in the environment"
                .into(),
        )
    })?;
    let provider = config
        .credentials_provider()
        .ok_or_else(|| Error::Credentials(NO_CREDS.into()))?;
    match tokio::time::timeout(within, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(region),
        // Display only: the chain's Debug form lists every provider's internals, which buries the fix.
        Ok(Err(e)) => Err(Error::Credentials(format!(
            "{NO_CREDS} (the SDK says: {e})"
        ))),
        Err(_) => Err(Error::Credentials(format!(
            "{NO_CREDS} (the credential chain gave no answer within {within:?})"
        ))),
    }
}

const NO_CREDS: &str =
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an EC2 instance \
                        profile / ECS task role";

pub struct SdkEc2 {
    region: String,
    ec2: aws_sdk_ec2::Client,
    sts: aws_sdk_sts::Client,
}

impl SdkEc2 {
    pub fn new(config: &SdkConfig) -> Self {
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        SdkEc2 {
            region,
            ec2: aws_sdk_ec2::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
        }
    }

    fn error<E, R>(&self, operation: Op, err: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        sdk_error(operation, &self.region, err)
    }
}

/// Maps any SDK error: service errors keep AWS's code, read here once ([`Error::api`]); the rest say which
/// transport step failed.
pub(crate) fn sdk_error<E, R>(operation: Op, region: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if let Some(code) = err.code() {
        return Error::api(operation, region, code, err.message().unwrap_or_default());
    }
    // Our own provider's refusal (`assume`) already says which role and what to fix.
    if let Some(refused) =
        crate::error::find_cause::<Error>(&err as &(dyn std::error::Error + 'static))
    {
        return refused.clone();
    }
    let text = crate::error::cause_chain(&err);
    let kind = match &err {
        SdkError::TimeoutError(_) => "timeout",
        SdkError::DispatchFailure(d) if d.is_timeout() => "timeout",
        _ if text.contains("credentials") => return Error::Credentials(text),
        _ => "transport",
    };
    Error::Transport {
        operation,
        region: region.to_string(),
        kind,
        message: text,
    }
}

fn sdk_filters(filters: &[Filter]) -> Vec<ec2t::Filter> {
    filters
        .iter()
        .map(|f| {
            ec2t::Filter::builder()
                .name(&f.name)
                .set_values(Some(f.values.clone()))
                .build()
        })
        .collect()
}

fn tags_of(tags: &[ec2t::Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().into())))
        .collect()
}

fn sdk_tags(tags: &Tags) -> Vec<ec2t::Tag> {
    tags.iter()
        .map(|(k, v)| ec2t::Tag::builder().key(k).value(v).build())
        .collect()
}

fn time_of(t: Option<&aws_sdk_ec2::primitives::DateTime>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or_else(Utc::now)
}

fn state_of(state: Option<&ec2t::SnapshotState>) -> SnapState {
    match state {
        Some(ec2t::SnapshotState::Completed) => SnapState::Completed,
        Some(ec2t::SnapshotState::Error) => SnapState::Error,
        // pending, recoverable, recovering, unknown: not (yet) a usable restore point.
        _ => SnapState::Pending,
    }
}

fn snapshot_of(s: &ec2t::Snapshot) -> Snapshot {
    Snapshot {
        id: s.snapshot_id().unwrap_or_default().into(),
        volume_id: s.volume_id().unwrap_or_default().into(),
        state: state_of(s.state()),
        start_time: time_of(s.start_time()),
        owner_id: s.owner_id().unwrap_or_default().into(),
        description: s.description().unwrap_or_default().into(),
        tags: Arc::new(tags_of(s.tags())),
    }
}

#[async_trait]
impl Ec2 for SdkEc2 {
    fn region(&self) -> &str {
        &self.region
    }
    fn dry_run(&self) -> bool {
        false
    }

    async fn account_id(&self) -> Result<String> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| sdk_error(Op::GetCallerIdentity, &self.region, e))?;
        out.account()
            .map(str::to_string)
            .ok_or_else(|| Error::Other("GetCallerIdentity returned no account".into()))
    }

    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>> {
        let mut pages = self
            .ec2
            .describe_instances()
            .set_filters(Some(sdk_filters(filters)))
            .max_results(1000)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(Op::DescribeInstances, e))?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                out.push(Instance {
                    id: i.instance_id().unwrap_or_default().into(),
                    tags: tags_of(i.tags()),
                    root_device: i.root_device_name().map(str::to_string),
                });
            }
        }
        Ok(out)
    }

    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>> {
        let mut pages = self
            .ec2
            .describe_volumes()
            .set_filters(Some(sdk_filters(filters)))
            .max_results(1000)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(Op::DescribeVolumes, e))?;
            for v in page.volumes() {
                let attachment = v
                    .attachments()
                    .iter()
                    .find(|a| !matches!(a.state(), Some(ec2t::VolumeAttachmentState::Detached)))
                    .and_then(|a| {
                        Some((
                            a.instance_id()?.to_string(),
                            a.device().unwrap_or_default().into(),
                        ))
                    });
                out.push(Volume {
                    id: v.volume_id().unwrap_or_default().into(),
                    tags: tags_of(v.tags()),
                    volume_type: v
                        .volume_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    attachment,
                });
            }
        }
        Ok(out)
    }

    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>> {
        let page = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(sdk_filters(filters)))
            .max_results(1000)
            .set_next_token(token.map(String::from))
            .send()
            .await
            .map_err(|e| self.error(Op::DescribeSnapshots, e))?;
        Ok(Page {
            items: page.snapshots().iter().map(snapshot_of).collect(),
            next: page.next_token().map(String::from),
        })
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot> {
        let tags = sdk_tags(&request.tags);
        let out = self
            .ec2
            .create_snapshot()
            .volume_id(&request.volume_id)
            .description(&request.description)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(tags))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error(Op::CreateSnapshot, e))?;
        Ok(Snapshot {
            id: out.snapshot_id().unwrap_or_default().into(),
            volume_id: request.volume_id.as_str().into(),
            state: state_of(out.state()),
            start_time: time_of(out.start_time()),
            owner_id: out.owner_id().unwrap_or_default().into(),
            description: request.description.as_str().into(),
            tags: Arc::new(request.tags.clone()),
        })
    }

    /// Every attached EBS volume, boot volume included; tags common to all at creation. Volume tags are not copied
    /// by EC2 (`CopyTagsFromSource`): which of them a snapshot gets is the worker's decision, as for CreateSnapshot.
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        let out = self
            .ec2
            .create_snapshots()
            .instance_specification(
                ec2t::InstanceSpecification::builder()
                    .instance_id(&request.instance_id)
                    .exclude_boot_volume(false)
                    .build(),
            )
            .description(&request.description)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(sdk_tags(&request.tags)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error(Op::CreateSnapshots, e))?;
        Ok(out
            .snapshots()
            .iter()
            .map(|s| {
                let volume = s.volume_id().unwrap_or_default().to_string();
                let tags = tags_of(s.tags());
                let snapshot = Snapshot {
                    id: s.snapshot_id().unwrap_or_default().into(),
                    volume_id: volume.as_str().into(),
                    state: state_of(s.state()),
                    start_time: time_of(s.start_time()),
                    owner_id: s.owner_id().unwrap_or_default().into(),
                    description: request.description.as_str().into(),
                    // Some endpoints leave the tags out of the answer; what was asked for at creation is there.
                    tags: Arc::new(if tags.is_empty() {
                        request.tags.clone()
                    } else {
                        tags
                    }),
                };
                (volume, Ok(snapshot))
            })
            .collect())
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        self.ec2
            .create_tags()
            .set_resources(Some(resource_ids.to_vec()))
            .set_tags(Some(sdk_tags(tags)))
            .send()
            .await
            .map_err(|e| self.error(Op::CreateTags, e))?;
        Ok(())
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.ec2
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send()
            .await
            .map_err(|e| self.error(Op::DeleteSnapshot, e))?;
        Ok(())
    }

    /// Sent to this client's region, the destination: EC2 copies into the region whose endpoint receives the
    /// call. No `PresignedUrl` (AWS once wanted one for encrypted sources; smithy-rs#133 was closed as "deprecated
    /// by service") and no `DestinationRegion` (only meaningful inside one). The answer holds the copy's id and
    /// tags only: the rest is what EC2 documents for a new copy — pending, started now, EC2's placeholder volume
    /// id. The owner is left empty (unknown until a describe says), which never makes a deletion candidate.
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot> {
        let mut call = self
            .ec2
            .copy_snapshot()
            .source_region(&request.source_region)
            .source_snapshot_id(&request.source_snapshot_id)
            .description(&request.description)
            .set_kms_key_id(request.kms_key_id.clone())
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(sdk_tags(&request.tags)))
                    .build(),
            );
        // EC2 refuses Encrypted=false ("you cannot set this parameter to false"): absent means "as the source".
        if request.encrypted {
            call = call.encrypted(true);
        }
        let out = call
            .send()
            .await
            .map_err(|e| self.error(Op::CopySnapshot, e))?;
        let tags = tags_of(out.tags());
        Ok(Snapshot {
            id: out.snapshot_id().unwrap_or_default().into(),
            volume_id: COPY_VOLUME_ID.into(),
            state: SnapState::Pending,
            start_time: Utc::now(),
            owner_id: "".into(),
            description: request.description.as_str().into(),
            tags: Arc::new(if tags.is_empty() {
                request.tags.clone()
            } else {
                tags
            }),
        })
    }
}
