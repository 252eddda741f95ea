//! The crate's one error type. Every fallible operation outside config loading returns [`Error`]; its
//! [`Error::kind`] is a bounded label used in metrics, alert subjects and log fields, and its message says what
//! failed, where, and — when we know — what the operator should do about it. Config problems have their own
//! report type (`config::ConfigError`) because they are collected in bulk rather than failing fast.

use std::fmt;

use crate::ec2::op::{ApiFailure, Code, Op, RetryAfter};

/// A failure talking to AWS or another outside party. Clone: one call's error is shared by every volume it
/// covered (a CreateSnapshots that failed as a whole).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// AWS answered with an error code (EC2's `Code`, SNS's error type): `raw_code` as sent, `code` what it means.
    #[error("{operation} in {region}: {raw_code}: {message}{hint}", hint = Hint(*code, *operation))]
    Api {
        operation: Op,
        region: String,
        code: Code,
        raw_code: String,
        message: String,
    },
    /// No answer: DNS, connect, TLS, timeout or a response we could not read.
    #[error("{operation} in {region}: {kind}: {message}")]
    Transport {
        operation: Op,
        region: String,
        kind: &'static str,
        message: String,
    },
    /// STS refused to let the daemon assume a member account's role (`ec2::assume`): that account cannot be
    /// served until the trust is fixed. `daemon`: the principal the trust policy must name, when known.
    #[error("{}", crate::ec2::assume::refusal_text(role_arn, *external_id, daemon.as_deref(), code, message))]
    AssumeRole {
        role_arn: String,
        external_id: bool,
        daemon: Option<String>,
        code: String,
        message: String,
    },
    /// The SDK's credential chain produced nothing usable.
    #[error("no usable AWS credentials: {0}")]
    Credentials(String),
    /// A mutating call not sent because the daemon is shutting down and its grace period is over
    /// (`ec2::stop`): nothing was asked of AWS, and the next run of the slot does it.
    #[error("{operation} in {region}: not sent: the daemon is shutting down and its grace period is over; the next run does it")]
    Stopped { operation: Op, region: String },
    /// Anything else with a plain explanation (bad CLI input, I/O while starting).
    #[error("{0}")]
    Other(String),
    /// The config contradicts what AWS told the daemon at start (e.g. an `[[aws.account]]` that is its own
    /// account): a config problem known only at run time, exiting 78 like any other, with the file, key and fix.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// An API error with AWS's code, read once here ([`Code::of`]).
    pub fn api(
        operation: Op,
        region: impl Into<String>,
        raw_code: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        let raw_code = raw_code.into();
        Error::Api {
            operation,
            region: region.into(),
            code: Code::of(operation, &raw_code),
            raw_code,
            message: message.into(),
        }
    }

    /// Bounded label for metrics and alerts; never contains ids or free text.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Api { code, .. } => code.label(),
            Error::Transport { kind, .. } => kind,
            Error::AssumeRole { .. } => "assume-role",
            Error::Credentials(_) => "credentials",
            Error::Stopped { .. } => "stopped",
            Error::Other(_) => "other",
            Error::Config(_) => "config",
        }
    }

    /// The AWS error code as AWS sent it, or the kind label when AWS did not answer.
    pub fn code(&self) -> &str {
        match self {
            Error::Api { raw_code, .. } => raw_code,
            Error::AssumeRole { code, .. } => code,
            other => other.kind(),
        }
    }

    /// Whether AWS answered with an error code of this meaning.
    pub(crate) fn is(&self, code: Code) -> bool {
        matches!(self, Error::Api { code: c, .. } if *c == code)
    }

    pub(crate) fn is_throttle(&self) -> bool {
        self.is(Code::Throttled)
    }

    /// The call and the meaning of its code, for an API error.
    pub(crate) fn api_failure(&self) -> Option<ApiFailure> {
        match self {
            Error::Api {
                operation, code, ..
            } => Some(ApiFailure {
                operation: *operation,
                code: *code,
            }),
            _ => None,
        }
    }

    /// Whether trying the same call again can succeed without anyone changing anything, and after what wait
    /// (None: give the error back): the one classification `ec2::pace::Paced`, the only retrier, acts on.
    pub(crate) fn retry(&self) -> Option<RetryAfter> {
        let create = |op: &Op| op.group() == Some(crate::ec2::pace::Group::Create);
        match self {
            // A throttled request was not executed, whatever the action.
            Error::Api {
                code: Code::Throttled,
                ..
            } => Some(RetryAfter::Backoff),
            Error::Api {
                operation,
                code: Code::VolumeRate,
                ..
            } if create(operation) => Some(RetryAfter::VolumeGap),
            // CreateSnapshot and SendCommand have no client token: after a 5xx or a lost answer the snapshot
            // may exist or the command may run, and a retry could do it twice (see `ec2::pace`).
            Error::Api { operation, .. } | Error::Transport { operation, .. }
                if operation.repeat_may_duplicate() =>
            {
                None
            }
            Error::Api {
                code: Code::Internal,
                ..
            }
            | Error::Transport { .. } => Some(RetryAfter::Backoff),
            _ => None,
        }
    }
}

/// A short "what to do" appended to API errors whose fix is always the same.
struct Hint(Code, Op);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = match self.0 {
            Code::AccessDenied => {
                return write!(
                    f,
                    " (grant {} to snapwarden's IAM role; see deploy/iam/policy.json)",
                    self.1.iam_action()
                );
            }
            Code::Credentials => {
                " (credentials expired or invalid; check the role or profile snapwarden runs with)"
            }
            Code::SnapshotInUse => " (the snapshot backs an AMI; deregister the AMI to let it go)",
            Code::VolumeRate => " (wait 15 s between snapshots of one volume)",
            Code::PendingLimit => " (too many pending snapshots; the next run retries)",
            Code::CopyLimit => {
                " (too many snapshot copies in progress to this region; the next run copies it. AWS allows 20 per \
                 destination region by default; a quota increase raises it)"
            }
            Code::InvalidInstance => {
                " (the instance is not managed by SSM: check that it runs, that its SSM agent is online and that \
                 its instance profile lets the agent register, e.g. AmazonSSMManagedInstanceCore)"
            }
            _ => "",
        };
        f.write_str(hint)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The first error of type `T` in `err`'s chain of causes: an error of ours a credentials provider handed the
/// SDK ([`Error::AssumeRole`]) comes back out of the failed call this way.
pub(crate) fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        next = e.source();
    }
    None
}

/// An error and its causes in words, `outer: cause: root cause`. The SDK's own `DisplayErrorContext` appends a
/// `Debug` dump of the whole error after the chain, which buries the one line an operator needs.
pub(crate) fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
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
        Error::api(Op::CreateSnapshot, "us-east-1", code, "m")
    }

    #[test]
    fn kinds_are_bounded_and_classify_codes() {
        assert_eq!(api("RequestLimitExceeded").kind(), "throttled");
        assert_eq!(
            api("RequestLimitExceeded").retry(),
            Some(RetryAfter::Backoff)
        );
        assert_eq!(api("UnauthorizedOperation").kind(), "access-denied");
        assert_eq!(api("UnauthorizedOperation").retry(), None);
        assert_eq!(api("Whatever.New").kind(), "aws-api");
        assert_eq!(api("Whatever.New").code(), "Whatever.New");
        assert_eq!(api("InvalidSnapshot.InUse").kind(), "in-use");
        assert_eq!(api("pending-limit").kind(), "aws-api");
        assert_eq!(api("ConcurrentSnapshotLimitExceeded").kind(), "limit");
    }

    #[test]
    fn a_command_is_retried_only_when_ssm_says_it_did_not_run_it() {
        let send = |code| Error::api(Op::SendCommand, "r", code, "m");
        let list = |code| Error::api(Op::ListCommandInvocations, "r", code, "m");
        assert_eq!(
            send("ThrottlingException").retry(),
            Some(RetryAfter::Backoff)
        );
        assert_eq!(send("InternalServerError").retry(), None);
        assert_eq!(send("InternalError").retry(), None);
        let lost = Error::Transport {
            operation: Op::SendCommand,
            region: "r".into(),
            kind: "timeout",
            message: "m".into(),
        };
        assert_eq!(lost.retry(), None);
        assert_eq!(
            list("InternalServerError").retry(),
            Some(RetryAfter::Backoff)
        );
        // Not yet visible: the caller polls again on its own schedule, not Paced's backoff.
        assert_eq!(list("InvocationDoesNotExist").retry(), None);
        let text = send("InvalidInstanceId").to_string();
        assert!(text.contains("not managed by SSM"), "{text}");
        assert_eq!(send("InvalidInstanceId").kind(), "not-managed");
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
    }

    #[test]
    fn every_access_denied_code_says_what_to_grant() {
        for code in [
            "UnauthorizedOperation",
            "AccessDenied",
            "AccessDeniedException",
            "AuthorizationError",
        ] {
            let text = Error::api(Op::Publish, "us-east-1", code, "no").to_string();
            assert!(text.contains("grant sns:Publish"), "{text}");
        }
    }
}
