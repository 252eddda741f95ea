//! AWS Organizations, for `[aws.organization]` (issue 16): what the daemon needs to know of its organisation — every
//! member account with its state and the OUs and root above it — behind a one-method trait, [`Organizations`].
//! Its backend is [`sdk::SdkOrganizations`] (aws-sdk-organizations, the daemon's own credentials), tested against
//! moto's Organizations (tests/organization.rs). Which of the members are served is the pure [`decide`]; the refresh task that lists
//! the organisation every `refresh` and adds or drops accounts is `daemon::organization`. This module assumes no
//! role and builds no EC2 backend.

mod decide;
pub(crate) mod sdk;

use async_trait::async_trait;

pub(crate) use decide::{decide, Verdict};

use crate::error::Result;

/// A member account as the listing found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The 12-digit account id.
    pub(crate) id: String,
    /// The partition of the account's ARN (`aws`, `aws-cn`, `aws-us-gov`): the partition of the role assumed in it.
    pub(crate) partition: String,
    pub(crate) state: State,
    /// The OUs the account sits in, nearest first, then the root: what `include` / `exclude` match besides its id.
    pub(crate) parents: Vec<String>,
}

/// An account's state in the organisation (Organizations' `State`, or the older `Status` where `State` is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    Active,
    /// Closed by its owner or by AWS: EC2 refuses its calls and it is left alone.
    Suspended,
    /// Anything else (pending activation, pending closure, closed, a state AWS adds later), as AWS spells it: not
    /// served either, since none of them is an account that can be backed up.
    Other(String),
}

impl State {
    /// Organizations' spelling: `ACTIVE`, `SUSPENDED`, anything else kept as it is.
    pub(crate) fn parse(text: &str) -> State {
        match text {
            "ACTIVE" => State::Active,
            "SUSPENDED" => State::Suspended,
            other => State::Other(other.to_string()),
        }
    }
}

/// What the daemon needs from AWS Organizations.
#[async_trait]
pub(crate) trait Organizations: Send + Sync {
    /// Every account of the organisation, with its state and parents. An error when any part could not be read: a
    /// half-read organisation would read as accounts that left.
    async fn members(&self) -> Result<Vec<Member>>;
}
