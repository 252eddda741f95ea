//! Publishing to SNS: the [`Publisher`] trait the sender task calls, and its aws-sdk-sns implementation.

use async_trait::async_trait;

use super::message::Message;
use crate::ec2::op::Op;
use crate::ec2::sdk::sdk_error;
use crate::error::{Error, Result};

#[async_trait]
pub trait Publisher: Send + Sync {
    async fn publish(&self, message: &Message) -> Result<()>;
}

pub struct SnsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
    region: String,
}

impl SnsPublisher {
    pub fn new(config: &aws_config::SdkConfig, topic_arn: &str) -> Self {
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        SnsPublisher {
            client: aws_sdk_sns::Client::new(config),
            topic_arn: topic_arn.to_string(),
            region,
        }
    }
}

#[async_trait]
impl Publisher for SnsPublisher {
    async fn publish(&self, message: &Message) -> Result<()> {
        use aws_sdk_sns::types::MessageAttributeValue;
        let mut req = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(&message.subject)
            .message(&message.body);
        for (k, v) in &message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| Error::Other(format!("SNS message attribute {k}: {e}")))?;
            req = req.message_attributes(k, value);
        }
        req.send()
            .await
            .map_err(|e| sdk_error(Op::Publish, &self.region, e))?;
        Ok(())
    }
}
