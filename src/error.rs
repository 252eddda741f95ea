//! The crate's one error type. Every fallible operation outside config loading returns [`Error`]; its
//! [`Error::kind`] is a bounded label used in metrics, alert subjects and log fields, and its message says what
//! failed, where, and — when we know — what the operator should do about it. Config problems have their own
//! report type (`config::ConfigError`) because they are collected in bulk rather than failing fast.

use std::fmt;

/// A failure talking to AWS or another outside party.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// AWS answered with an error code (EC2's `Code`, SNS's error type).
    #[error("{operation} in {region}: {code}: {message}{hint}", hint = Hint(code, operation))]
    Api {
        operation: &'static str,
        region: String,
        code: String,
        message: String,
    },
    /// No answer: DNS, connect, TLS, timeout or a response we could not read.
    #[error("{operation} in {region}: {kind}: {message}")]
    Transport {
        operation: &'static str,
        region: String,
        kind: &'static str,
        message: String,
    },
    /// The SDK's credential chain produced nothing usable.
    #[error("no usable AWS credentials: {0}")]
    Credentials(String),
    /// A mutating call not sent because the daemon is shutting down and its grace period is over
    /// (`ec2::stop`): nothing was asked of AWS, and the next run of the slot does it.
    #[error("{operation} in {region}: not sent: the daemon is shutting down and its grace period is over; the next run does it")]
    Stopped {
        operation: &'static str,
        region: String,
    },
    /// Anything else with a plain explanation (bad CLI input, I/O while starting).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Bounded label for metrics and alerts; never contains ids or free text.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Api { code, .. } => match code.as_str() {
                c if is_throttle_code(c) => "throttled",
                c if is_access_denied_code(c) => "access-denied",
                "InvalidClientTokenId"
                | "ExpiredToken"
                | "RequestExpired"
                | "SignatureDoesNotMatch" => "credentials",
                "InvalidSnapshot.NotFound" | "InvalidVolume.NotFound" | "NotFound" => "not-found",
                "InvalidSnapshot.InUse" => "in-use",
                "SnapshotCreationPerVolumeRateExceeded" | "ConcurrentSnapshotLimitExceeded" => {
                    "limit"
                }
                "IncorrectState" => "incorrect-state",
                "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => {
                    "aws-internal"
                }
                _ => "aws-api",
            },
            Error::Transport { kind, .. } => kind,
            Error::Credentials(_) => "credentials",
            Error::Stopped { .. } => "stopped",
            Error::Other(_) => "other",
        }
    }

    /// The AWS error code, or the kind label when AWS did not answer.
    pub fn code(&self) -> &str {
        match self {
            Error::Api { code, .. } => code,
            other => other.kind(),
        }
    }

    pub fn is_throttle(&self) -> bool {
        matches!(self, Error::Api { code, .. } if is_throttle_code(code))
    }

    /// Whether trying the same call again later can succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            "throttled" | "aws-internal" | "limit" | "timeout" | "transport"
        )
    }
}

fn is_throttle_code(code: &str) -> bool {
    matches!(
        code,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "Throttled"
    )
}

/// The IAM action an AWS operation needs: `ec2:CreateSnapshot`, `sts:GetCallerIdentity`, `sns:Publish`. What an
/// access-denied alert tells the operator to grant.
pub fn iam_action(operation: &str) -> String {
    let service = match operation {
        "GetCallerIdentity" => "sts",
        "Publish" => "sns",
        _ => "ec2",
    };
    format!("{service}:{operation}")
}

/// Whether an AWS error code means "the credentials work but may not do this".
pub fn is_access_denied_code(code: &str) -> bool {
    matches!(
        code,
        "UnauthorizedOperation"
            | "AccessDenied"
            | "AccessDeniedException"
            | "AuthFailure"
            | "AuthorizationError"
    )
}

/// A short "what to do" appended to API errors whose fix is always the same: (code, operation).
struct Hint<'a>(&'a str, &'a str);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = match self.0 {
            "UnauthorizedOperation" | "AccessDenied" | "AuthorizationError" => {
                return write!(
                    f,
                    " (grant {} to snapwarden's IAM role; see deploy/iam/policy.json)",
                    iam_action(self.1)
                );
            }
            "ExpiredToken" | "RequestExpired" | "InvalidClientTokenId" => {
                " (credentials expired or invalid; check the role or profile snapwarden runs with)"
            }
            "InvalidSnapshot.InUse" => {
                " (the snapshot backs an AMI; deregister the AMI to let it go)"
            }
            "SnapshotCreationPerVolumeRateExceeded" => {
                " (wait 15 s between snapshots of one volume)"
            }
            "ConcurrentSnapshotLimitExceeded" => {
                " (too many pending snapshots; the next run retries)"
            }
            _ => "",
        };
        f.write_str(hint)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes in words, `outer: cause: root cause`. The SDK's own `DisplayErrorContext` appends a
/// `Debug` dump of the whole error after the chain, which buries the one line an operator needs.
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        // Some layers already print their source; saying it twice adds nothing.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str) -> Error {
        Error::Api {
            operation: "CreateSnapshot",
            region: "us-east-1".into(),
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn kinds_are_bounded_and_classify_codes() {
        assert_eq!(api("RequestLimitExceeded").kind(), "throttled");
        assert!(api("RequestLimitExceeded").is_retryable());
        assert_eq!(api("UnauthorizedOperation").kind(), "access-denied");
        assert!(!api("UnauthorizedOperation").is_retryable());
        assert_eq!(api("Whatever.New").kind(), "aws-api");
        assert_eq!(api("InvalidSnapshot.InUse").kind(), "in-use");
    }

    #[test]
    fn cause_chain_is_words_without_a_debug_dump() {
        #[derive(Debug, thiserror::Error)]
        #[error("dispatch failure")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            cause_chain(&err),
            "dispatch failure: Connection refused (os error 111)"
        );
    }

    #[test]
    fn access_denied_message_says_what_to_do() {
        let text = api("UnauthorizedOperation").to_string();
        assert!(
            text.contains("CreateSnapshot in us-east-1: UnauthorizedOperation"),
            "{text}"
        );
        assert!(text.contains("deploy/iam/policy.json"), "{text}");
        assert!(text.contains("grant ec2:CreateSnapshot"), "{text}");
        assert_eq!(iam_action("GetCallerIdentity"), "sts:GetCallerIdentity");
        assert_eq!(iam_action("Publish"), "sns:Publish");
    }
}
