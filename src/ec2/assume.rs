//! Credentials for a member account (issue 16): from the daemon's own SDK configuration, a configuration whose
//! credentials come from `sts:AssumeRole` into that account's role, refreshed before they expire, and the one
//! error an operator sees when STS refuses the role, naming the role and the trust-policy fix.
//!
//! Not used by runs yet. To hook it in: for each configured account, build `assumed_config(&base, &role)` from the
//! daemon's `sdk::sdk_config` of each region and hand it to `SdkEc2::new` (and the paced backend around it)
//! instead of the base config; an [`Error::AssumeRole`] from that account's calls fails that account's runs only.

use std::time::Duration;

use aws_config::identity::IdentityCache;
use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_sts::operation::assume_role::AssumeRoleError;

use crate::error::{cause_chain, find_cause, Error};

/// One hour. A role's maximum session length is set on the role in its own account, which we cannot read before
/// assuming it; one hour is what every role allows, and the most AWS grants at all when the caller's own
/// credentials are already a role session ("role chaining") — which on EC2 and ECS, where the daemon runs on an
/// instance profile or task role, they always are.
const SESSION: Duration = Duration::from_secs(3600);

/// How long before expiry the credentials are renewed: the next call after this point assumes the role again, so
/// no call is signed with credentials that expire while it is retried or paginated. (The SDK jitters it down
/// by up to half.)
const RENEW_AHEAD: Duration = Duration::from_secs(5 * 60);

/// The role to assume in a member account.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub arn: String,
    /// The `sts:ExternalId` the role's trust policy requires, if it requires one.
    pub external_id: Option<String>,
    /// Shown in the member account's CloudTrail as who did what.
    pub session_name: String,
}

/// `base` with its credentials replaced by `role`'s: every client built from the result signs as the role,
/// assuming it again (with `base`'s credentials, region and endpoint) shortly before the session ends. Nothing
/// is asked of STS until the first call.
pub async fn assumed_config(base: &SdkConfig, role: &Role) -> SdkConfig {
    let provider = AssumeRoleProvider::builder(role.arn.clone())
        .session_name(role.session_name.clone())
        .session_length(SESSION)
        .configure(base);
    let provider = match &role.external_id {
        Some(id) => provider.external_id(id.clone()),
        None => provider,
    }
    .build()
    .await;
    let assumed = Assumed {
        role_arn: role.arn.clone(),
        external_id: role.external_id.is_some(),
        provider,
        base: aws_sdk_sts::Client::new(base),
    };
    base.to_builder()
        .credentials_provider(SharedCredentialsProvider::new(assumed))
        // Its own cache: the clients of one account share it (one AssumeRole per session, not per client).
        .identity_cache(IdentityCache::lazy().buffer_time(RENEW_AHEAD).build())
        .build()
}

/// The assumed-role provider, with its failures turned into [`Error::AssumeRole`] so that any call that could not
/// get credentials says which role and what to fix (`sdk::sdk_error` finds it in the call's error).
#[derive(Debug)]
struct Assumed {
    role_arn: String,
    external_id: bool,
    provider: AssumeRoleProvider,
    /// The daemon's own identity, asked only when STS refuses, to name the principal the trust policy must allow.
    base: aws_sdk_sts::Client,
}

impl Assumed {
    async fn refused(&self, err: CredentialsError) -> Error {
        let Some(sts) = find_cause::<AssumeRoleError>(&err) else {
            // No answer from STS (or no base credentials): nothing about the trust policy is known.
            return Error::Credentials(format!(
                "AssumeRole into {}: {}",
                self.role_arn,
                cause_chain(&err)
            ));
        };
        let daemon = match self.base.get_caller_identity().send().await {
            Ok(me) => me.arn().map(trusted_principal),
            Err(_) => None,
        };
        Error::AssumeRole {
            role_arn: self.role_arn.clone(),
            external_id: self.external_id,
            daemon,
            code: sts.code().unwrap_or("unknown").to_string(),
            message: sts.message().unwrap_or_default().to_string(),
        }
    }
}

impl ProvideCredentials for Assumed {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            match self.provider.provide_credentials().await {
                Ok(creds) => Ok(creds),
                Err(e) => Err(CredentialsError::provider_error(self.refused(e).await)),
            }
        })
    }
}

/// The principal a trust policy names for the caller: a role session (`arn:aws:sts::A:assumed-role/R/S`, what
/// GetCallerIdentity says on an instance profile or task role) is trusted as its role `arn:aws:iam::A:role/R`;
/// users and roots as they are. (A role created with a path has it in its ARN but not in its sessions': the
/// operator then writes the path in.)
fn trusted_principal(caller: &str) -> String {
    let role = caller
        .split_once(":assumed-role/")
        .and_then(|(head, rest)| {
            let (name, _session) = rest.split_once('/')?;
            let (partition, account) = head.strip_prefix("arn:")?.split_once(":sts::")?;
            Some(format!("arn:{partition}:iam::{account}:role/{name}"))
        });
    role.unwrap_or_else(|| caller.to_string())
}

/// What [`Error::AssumeRole`] says: the role, STS's answer, and the fix on both sides of the trust.
pub(crate) fn refusal_text(
    role_arn: &str,
    external_id: bool,
    daemon: Option<&str>,
    code: &str,
    message: &str,
) -> String {
    let principal = match daemon {
        Some(arn) => format!("{arn} (snapwarden's own identity)"),
        None => "of snapwarden's own role (`aws sts get-caller-identity` where the daemon runs; trust it as \
                 arn:aws:iam::<account>:role/<name>)"
            .to_string(),
    };
    let condition = if external_id {
        ", with the condition StringEquals sts:ExternalId = the external-id configured for this account"
    } else {
        ""
    };
    format!(
        "cannot assume role {role_arn}: {code}: {message} (fix: the role's trust policy must allow sts:AssumeRole \
         to the principal {principal}{condition}; snapwarden's own policy must allow sts:AssumeRole on \
         {role_arn}; and no service control policy (SCP) of the organisation may deny sts:AssumeRole to either \
         account)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_role_and_the_trust_policy_fix() {
        let text = refusal_text(
            "arn:aws:iam::222222222222:role/snapwarden-member",
            true,
            Some("arn:aws:iam::111111111111:role/snapwarden"),
            "AccessDenied",
            "not authorized",
        );
        assert_eq!(
            text,
            "cannot assume role arn:aws:iam::222222222222:role/snapwarden-member: AccessDenied: not authorized \
             (fix: the role's trust policy must allow sts:AssumeRole to the principal \
             arn:aws:iam::111111111111:role/snapwarden (snapwarden's own identity), with the condition StringEquals sts:ExternalId = the \
             external-id configured for this account; snapwarden's own policy must allow sts:AssumeRole on \
             arn:aws:iam::222222222222:role/snapwarden-member; and no service control policy (SCP) of the \
             organisation may deny sts:AssumeRole to either account)"
        );
        let plain = refusal_text("arn:aws:iam::2:role/m", false, None, "AccessDenied", "no");
        assert!(!plain.contains("ExternalId"), "{plain}");
        assert!(plain.contains("aws sts get-caller-identity"), "{plain}");
    }

    #[test]
    fn a_role_session_is_trusted_as_its_role() {
        assert_eq!(
            trusted_principal("arn:aws:sts::111111111111:assumed-role/snapwarden/i-0abc"),
            "arn:aws:iam::111111111111:role/snapwarden"
        );
        assert_eq!(
            trusted_principal("arn:aws-cn:sts::111111111111:assumed-role/sw/s"),
            "arn:aws-cn:iam::111111111111:role/sw"
        );
        assert_eq!(
            trusted_principal("arn:aws:iam::111111111111:user/ops"),
            "arn:aws:iam::111111111111:user/ops"
        );
    }

    #[test]
    fn the_error_is_its_own_bounded_kind() {
        let err = Error::AssumeRole {
            role_arn: "arn:aws:iam::2:role/m".into(),
            external_id: false,
            daemon: None,
            code: "AccessDenied".into(),
            message: "no".into(),
        };
        assert_eq!(err.kind(), "assume-role");
        assert_eq!(err.code(), "AccessDenied");
        assert_eq!(err.retry(), None);
        assert!(err
            .to_string()
            .starts_with("cannot assume role arn:aws:iam::2:role/m"));
    }
}
