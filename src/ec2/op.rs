//! The AWS vocabulary as types: [`Op`], every AWS operation snapwarden calls (its name as AWS spells it, its
//! rate-limit group, the IAM action it needs), and [`Code`], what an AWS error code means to snapwarden,
//! parsed once where an SDK error becomes an [`crate::error::Error`]. Pacing, retries, error kinds, the report
//! and the alert hints match on these; no other module compares AWS codes or operation names as strings. Pure:
//! no AWS crate, no I/O.

use std::fmt;

use super::pace::Group;

/// An AWS operation snapwarden calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    GetCallerIdentity,
    DescribeInstances,
    DescribeVolumes,
    DescribeSnapshots,
    CreateSnapshot,
    CreateSnapshots,
    CreateTags,
    DeleteSnapshot,
    Publish,
    SendCommand,
    ListCommandInvocations,
    ListCommands,
    CopySnapshot,
    ListRoots,
    ListAccounts,
    ListAccountsForParent,
    ListOrganizationalUnitsForParent,
}

impl Op {
    /// The EC2 operations, in the order `/metrics` lists their series before the first call. CopySnapshot is not
    /// among them: its series belong with the copies' configuration (none can be configured yet).
    pub(crate) const EC2: [Op; 7] = [
        Op::DescribeInstances,
        Op::DescribeVolumes,
        Op::DescribeSnapshots,
        Op::CreateSnapshot,
        Op::CreateSnapshots,
        Op::CreateTags,
        Op::DeleteSnapshot,
    ];

    /// The SSM Run Command operations (`crate::ssm`).
    pub(crate) const SSM: [Op; 3] = [
        Op::SendCommand,
        Op::ListCommandInvocations,
        Op::ListCommands,
    ];

    /// The name as AWS spells it: a metric label value, and the start of an API error's message.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::GetCallerIdentity => "GetCallerIdentity",
            Op::DescribeInstances => "DescribeInstances",
            Op::DescribeVolumes => "DescribeVolumes",
            Op::DescribeSnapshots => "DescribeSnapshots",
            Op::CreateSnapshot => "CreateSnapshot",
            Op::CreateSnapshots => "CreateSnapshots",
            Op::CreateTags => "CreateTags",
            Op::DeleteSnapshot => "DeleteSnapshot",
            Op::Publish => "Publish",
            Op::SendCommand => "SendCommand",
            Op::ListCommandInvocations => "ListCommandInvocations",
            Op::ListCommands => "ListCommands",
            Op::CopySnapshot => "CopySnapshot",
            Op::ListRoots => "ListRoots",
            Op::ListAccounts => "ListAccounts",
            Op::ListAccountsForParent => "ListAccountsForParent",
            Op::ListOrganizationalUnitsForParent => "ListOrganizationalUnitsForParent",
        }
    }

    /// The operation named `name`, for test doubles that are told which call to fail.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn from_name(name: &str) -> Option<Op> {
        Op::EC2
            .into_iter()
            .chain(Op::SSM)
            .chain([Op::CopySnapshot, Op::GetCallerIdentity, Op::Publish])
            .chain([
                Op::ListRoots,
                Op::ListAccounts,
                Op::ListAccountsForParent,
                Op::ListOrganizationalUnitsForParent,
            ])
            .find(|op| op.name() == name)
    }

    /// The API rate-limit group the call is paced in; None for calls outside the paced buckets (STS, SNS).
    pub fn group(self) -> Option<Group> {
        match self {
            Op::CreateSnapshot | Op::CreateSnapshots => Some(Group::Create),
            Op::DeleteSnapshot => Some(Group::Delete),
            Op::CreateTags => Some(Group::Tags),
            Op::DescribeInstances | Op::DescribeVolumes | Op::DescribeSnapshots => {
                Some(Group::Describe)
            }
            Op::SendCommand | Op::ListCommandInvocations | Op::ListCommands => Some(Group::Ssm),
            // AWS's throttling page puts CopySnapshot in no bucket of its own, so it spends the general bucket of
            // mutating actions — the destination region's, since the call is sent there (`Paced` is per region).
            Op::CopySnapshot => Some(Group::Mutating),
            // Organizations is listed once per refresh, retried by the SDK itself (`crate::org::sdk`).
            Op::GetCallerIdentity | Op::Publish => None,
            Op::ListRoots
            | Op::ListAccounts
            | Op::ListAccountsForParent
            | Op::ListOrganizationalUnitsForParent => None,
        }
    }

    /// Whether sending the call again after an answer that was lost or a server error could do its work twice:
    /// CreateSnapshot(s), CopySnapshot and SendCommand take no client token (aws-sdk-ec2's CopySnapshotInput has
    /// none to derive from the source and destination), so a repeat may make a second snapshot or copy, or run a
    /// command (a freeze, a VSS snapshot) a second time. Only a refusal that says it did nothing is retried; a copy
    /// is found again by its tags, as a snapshot is.
    pub(crate) fn repeat_may_duplicate(self) -> bool {
        matches!(
            self,
            Op::CreateSnapshot | Op::CreateSnapshots | Op::CopySnapshot | Op::SendCommand
        )
    }

    /// The IAM action the call needs, e.g. `ec2:CreateSnapshot`: what an access-denied alert says to grant.
    pub(crate) fn iam_action(self) -> &'static str {
        match self {
            Op::GetCallerIdentity => "sts:GetCallerIdentity",
            Op::DescribeInstances => "ec2:DescribeInstances",
            Op::DescribeVolumes => "ec2:DescribeVolumes",
            Op::DescribeSnapshots => "ec2:DescribeSnapshots",
            Op::CreateSnapshot => "ec2:CreateSnapshot",
            Op::CreateSnapshots => "ec2:CreateSnapshots",
            Op::CreateTags => "ec2:CreateTags",
            Op::DeleteSnapshot => "ec2:DeleteSnapshot",
            Op::Publish => "sns:Publish",
            Op::SendCommand => "ssm:SendCommand",
            Op::ListCommandInvocations => "ssm:ListCommandInvocations",
            Op::ListCommands => "ssm:ListCommands",
            Op::CopySnapshot => "ec2:CopySnapshot",
            Op::ListRoots => "organizations:ListRoots",
            Op::ListAccounts => "organizations:ListAccounts",
            Op::ListAccountsForParent => "organizations:ListAccountsForParent",
            Op::ListOrganizationalUnitsForParent => {
                "organizations:ListOrganizationalUnitsForParent"
            }
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`: a width in the format string (`{op:<18}`) applies.
        f.pad(self.name())
    }
}

/// What an AWS error code means to snapwarden. Several codes of one meaning share a variant (EC2, STS and SNS
/// spell "throttled" four ways); the code as AWS sent it stays on the error for messages and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// `RequestLimitExceeded`, `Throttling`, `ThrottlingException`, `Throttled`, `TooManyRequestsException`
    /// (Organizations): not executed; back off.
    Throttled,
    /// `UnauthorizedOperation`, `AccessDenied`, `AccessDeniedException`, `AuthFailure`, `AuthorizationError`:
    /// the credentials work but may not do this.
    AccessDenied,
    /// `InvalidClientTokenId`, `ExpiredToken`, `RequestExpired`, `SignatureDoesNotMatch`.
    Credentials,
    /// `InvalidSnapshot.NotFound`: already gone (describes are eventually consistent).
    SnapshotNotFound,
    /// `InvalidVolume.NotFound`: the volume went away during the run.
    VolumeNotFound,
    /// `NotFound` (SNS: the topic).
    NotFound,
    /// `InvalidSnapshot.InUse`: the snapshot backs an AMI.
    SnapshotInUse,
    /// `SnapshotCreationPerVolumeRateExceeded`: another snapshot of the volume started less than 15 s ago.
    VolumeRate,
    /// `ConcurrentSnapshotLimitExceeded`: too many pending snapshots on the volume or account.
    PendingLimit,
    /// `ResourceLimitExceeded` (CopySnapshot): too many copies in progress to the destination region — 20 by
    /// AWS's quota, "The limit is 5 for this destination region" in the message some accounts still get. Nothing
    /// was copied; the copy waits for the next run.
    CopyLimit,
    /// `pending-limit`: not AWS's but the daemon's own account cap on pending snapshots (`worker::create`), which
    /// holds a create back the way `ConcurrentSnapshotLimitExceeded` would.
    PendingCap,
    /// `IncorrectState`: e.g. the volume is detaching.
    IncorrectState,
    /// `KMSKeyNotAccessible`, `InvalidKMSKey.*`: the KMS key an encrypted copy (or its source) needs cannot be
    /// used: disabled, pending deletion, in another region, or its key policy or the role's does not allow it.
    KmsKey,
    /// `InvalidParameterValue`, `InvalidParameterCombination`: the request itself was refused as invalid; the
    /// message names the parameter. For a copy, nearly always its `kms-key-id` or encryption.
    InvalidParameter,
    /// `InvocationDoesNotExist` (SSM): the command's invocation is not visible yet (SSM is eventually consistent
    /// for a while after SendCommand) or never will be.
    InvocationNotFound,
    /// `InvalidInstanceId` (SSM): the instance is not managed by SSM — not running, no agent, the agent offline,
    /// or no instance profile letting it register.
    InvalidInstance,
    /// `InternalError`, `InternalFailure`, `InternalServerError` (SSM), `ServiceUnavailable`, `Unavailable`: AWS's
    /// side, transient.
    Internal,
    /// Any other code.
    Other,
}

impl Code {
    /// The one place AWS's error codes are read (with [`Code::of`] for the few whose meaning depends on the call).
    pub(crate) fn parse(code: &str) -> Code {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "Throttled"
            | "TooManyRequestsException" => Code::Throttled,
            "UnauthorizedOperation"
            | "AccessDenied"
            | "AccessDeniedException"
            | "AuthFailure"
            | "AuthorizationError" => Code::AccessDenied,
            "InvalidClientTokenId"
            | "ExpiredToken"
            | "RequestExpired"
            | "SignatureDoesNotMatch" => Code::Credentials,
            "InvalidSnapshot.NotFound" => Code::SnapshotNotFound,
            "InvalidVolume.NotFound" => Code::VolumeNotFound,
            "NotFound" => Code::NotFound,
            "InvalidSnapshot.InUse" => Code::SnapshotInUse,
            "SnapshotCreationPerVolumeRateExceeded" => Code::VolumeRate,
            "ConcurrentSnapshotLimitExceeded" => Code::PendingLimit,
            "pending-limit" => Code::PendingCap,
            "IncorrectState" => Code::IncorrectState,
            "KMSKeyNotAccessible" => Code::KmsKey,
            c if c.starts_with("InvalidKMSKey.") => Code::KmsKey,
            "InvalidParameterValue" | "InvalidParameterCombination" => Code::InvalidParameter,
            "InvocationDoesNotExist" => Code::InvocationNotFound,
            "InvalidInstanceId" => Code::InvalidInstance,
            "InternalError"
            | "InternalFailure"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "Unavailable" => Code::Internal,
            _ => Code::Other,
        }
    }

    /// What `code` means as the answer to `operation`: what [`Code::parse`] says, but for codes whose meaning
    /// depends on the call. `ResourceLimitExceeded` is EC2's answer to many quotas; only from CopySnapshot does it
    /// mean "the destination's copies in progress are at their limit" (and defer), so a create answered with it
    /// still fails as before.
    pub(crate) fn of(operation: Op, code: &str) -> Code {
        match (operation, code) {
            (Op::CopySnapshot, "ResourceLimitExceeded") => Code::CopyLimit,
            _ => Code::parse(code),
        }
    }

    /// The bounded label of [`crate::error::Error::kind`] for an API error with this code.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Code::Throttled => "throttled",
            Code::AccessDenied => "access-denied",
            Code::Credentials => "credentials",
            Code::SnapshotNotFound
            | Code::VolumeNotFound
            | Code::NotFound
            | Code::InvocationNotFound => "not-found",
            Code::InvalidInstance => "not-managed",
            Code::SnapshotInUse => "in-use",
            Code::VolumeRate | Code::PendingLimit | Code::CopyLimit => "limit",
            Code::IncorrectState => "incorrect-state",
            Code::Internal => "aws-internal",
            Code::PendingCap | Code::KmsKey | Code::InvalidParameter | Code::Other => "aws-api",
        }
    }

    /// Whether a create or copy refused with this code is put off to the next run instead of failing its volume.
    pub(crate) fn defers(self) -> bool {
        matches!(
            self,
            Code::PendingLimit | Code::PendingCap | Code::CopyLimit
        )
    }
}

/// When a failed call may be tried again (`Error::retry`; no retry at all when retrying cannot help, needs a
/// person, or could duplicate a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryAfter {
    /// A backoff with jitter.
    Backoff,
    /// The per-volume gap between snapshots of one volume.
    VolumeGap,
}

/// The AWS call that failed and what its code means: what a report problem keeps of an API error, so alerts
/// match on it rather than on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ApiFailure {
    pub(crate) operation: Op,
    pub(crate) code: Code,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_actions_name_the_service() {
        for op in Op::EC2.into_iter().chain(Op::SSM).chain([
            Op::CopySnapshot,
            Op::GetCallerIdentity,
            Op::Publish,
            Op::ListRoots,
            Op::ListAccounts,
            Op::ListAccountsForParent,
            Op::ListOrganizationalUnitsForParent,
        ]) {
            assert_eq!(Op::from_name(op.name()), Some(op));
            assert!(
                op.iam_action().ends_with(&format!(":{}", op.name())),
                "{op}"
            );
        }
        assert_eq!(Op::from_name("DeleteTags"), None);
        assert_eq!(Op::GetCallerIdentity.iam_action(), "sts:GetCallerIdentity");
        assert_eq!(Op::Publish.iam_action(), "sns:Publish");
        assert_eq!(Op::DescribeSnapshots.group(), Some(Group::Describe));
        assert_eq!(Op::CreateSnapshots.group(), Some(Group::Create));
        assert_eq!(Op::GetCallerIdentity.group(), None);
        assert_eq!(Op::SendCommand.iam_action(), "ssm:SendCommand");
        assert_eq!(
            Op::ListCommandInvocations.iam_action(),
            "ssm:ListCommandInvocations"
        );
    }

    #[test]
    fn ssm_calls_are_paced_apart_from_ec2_and_a_command_is_never_sent_twice_blindly() {
        for op in Op::SSM {
            assert_eq!(op.group(), Some(Group::Ssm), "{op}");
        }
        assert!(Op::EC2.into_iter().all(|op| op.group() != Some(Group::Ssm)));
        assert!(Op::SendCommand.repeat_may_duplicate());
        assert!(Op::CreateSnapshots.repeat_may_duplicate());
        assert!(!Op::ListCommandInvocations.repeat_may_duplicate());
        assert!(!Op::CreateTags.repeat_may_duplicate());
    }

    #[test]
    fn codes_of_one_meaning_share_a_variant() {
        for c in [
            "RequestLimitExceeded",
            "Throttling",
            "ThrottlingException",
            "Throttled",
            "TooManyRequestsException",
        ] {
            assert_eq!(Code::parse(c), Code::Throttled, "{c}");
        }
        assert_eq!(
            Code::parse("InvalidSnapshot.NotFound"),
            Code::SnapshotNotFound
        );
        assert_eq!(Code::parse("Whatever.New"), Code::Other);
        assert_eq!(Code::parse("AuthorizationError").label(), "access-denied");
        assert!(Code::parse("ConcurrentSnapshotLimitExceeded").defers());
        assert!(!Code::parse("SnapshotCreationPerVolumeRateExceeded").defers());
    }

    #[test]
    fn ssm_codes_are_read_once_like_ec2_codes() {
        assert_eq!(Code::parse("ThrottlingException"), Code::Throttled);
        assert_eq!(Code::parse("AccessDeniedException"), Code::AccessDenied);
        assert_eq!(
            Code::parse("InvocationDoesNotExist"),
            Code::InvocationNotFound
        );
        assert_eq!(Code::parse("InvocationDoesNotExist").label(), "not-found");
        assert_eq!(Code::parse("InvalidInstanceId"), Code::InvalidInstance);
        assert_eq!(Code::parse("InvalidInstanceId").label(), "not-managed");
        assert_eq!(Code::parse("InvalidDocument"), Code::Other);
    }

    #[test]
    fn a_key_a_copy_cannot_use_is_one_meaning_and_keeps_the_generic_label() {
        for c in [
            "KMSKeyNotAccessible",
            "InvalidKMSKey.NotFound",
            "InvalidKMSKey.State",
        ] {
            assert_eq!(Code::of(Op::CopySnapshot, c), Code::KmsKey, "{c}");
        }
        assert_eq!(Code::parse("InvalidKMSKey"), Code::Other);
        assert_eq!(Code::parse("InvalidParameterValue"), Code::InvalidParameter);
        // Bounded labels stay as they were: metrics and alert subjects see no new kind.
        assert_eq!(Code::KmsKey.label(), "aws-api");
        assert_eq!(Code::InvalidParameter.label(), "aws-api");
        assert!(!Code::KmsKey.defers());
    }

    #[test]
    fn a_copy_spends_the_mutating_bucket_and_is_never_resent_blindly() {
        assert_eq!(Op::CopySnapshot.group(), Some(Group::Mutating));
        assert_eq!(Op::CopySnapshot.iam_action(), "ec2:CopySnapshot");
        assert!(Op::CopySnapshot.repeat_may_duplicate());
        // Not among the series every config lists before the first call.
        assert!(!Op::EC2.contains(&Op::CopySnapshot));
        assert!(Op::EC2
            .into_iter()
            .chain(Op::SSM)
            .all(|op| op.group() != Some(Group::Mutating)));
    }

    #[test]
    fn a_full_destination_defers_the_copy_under_either_spelling_of_its_limit() {
        // The code AWS sends with today's message and with the older "limit is 5" one: one meaning, read once.
        assert_eq!(
            Code::of(Op::CopySnapshot, "ResourceLimitExceeded"),
            Code::CopyLimit
        );
        assert!(Code::CopyLimit.defers());
        // EC2's generic quota code means no such thing from a create, which fails as it always did.
        let create = Code::of(Op::CreateSnapshot, "ResourceLimitExceeded");
        assert_eq!(create, Code::Other);
        assert!(!create.defers());
        assert_eq!(
            Code::of(Op::CopySnapshot, "RequestLimitExceeded"),
            Code::Throttled
        );
        assert_eq!(Code::CopyLimit.label(), "limit");
        let old = crate::error::Error::api(
            Op::CopySnapshot,
            "eu-west-1",
            "ResourceLimitExceeded",
            "Too many snapshot copies in progress. The limit is 5 for this destination region.",
        );
        assert!(old.is(Code::CopyLimit));
        assert_eq!(
            old.retry(),
            None,
            "deferred to the next run, not retried here"
        );
        assert!(old.to_string().contains("next run"), "{old}");
    }
}
