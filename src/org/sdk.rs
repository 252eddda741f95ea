//! The aws-sdk-organizations backend: the organisation walked down from its roots (per parent, one paginated
//! ListOrganizationalUnitsForParent and one ListAccountsForParent), checked against one paginated ListAccounts.
//! That is 1 + pages of ListAccounts + 2 × (OUs + roots) calls, where asking each account's parents (ListParents
//! up to the root) would be one call per account and per OU. SDK errors become [`crate::error::Error`] through
//! EC2's conversion ([`crate::ec2::sdk::sdk_error`]), so Organizations' codes are read once in
//! [`crate::ec2::op::Code::parse`].
//!
//! Built from the daemon's own SDK config with the SDK's standard retries (`ec2::sdk::sdk_config`): these calls
//! are not paced by `ec2::pace::Paced`, and one refresh an hour needs no pacing beyond backing off when throttled.

use std::collections::BTreeSet;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_organizations::types::Account;

use super::{Member, Organizations, State};
use crate::ec2::op::Op;
use crate::ec2::sdk::sdk_error;
use crate::error::{Error, Result};

pub(crate) struct SdkOrganizations {
    region: String,
    client: aws_sdk_organizations::Client,
}

impl SdkOrganizations {
    pub(crate) fn new(config: &SdkConfig) -> Self {
        SdkOrganizations {
            region: config.region().map(|r| r.to_string()).unwrap_or_default(),
            client: aws_sdk_organizations::Client::new(config),
        }
    }

    /// The ids of the children of `parent`: its OUs and its accounts (as members whose parents are `chain`).
    async fn children(&self, chain: &[String], members: &mut Vec<Member>) -> Result<Vec<String>> {
        let parent = &chain[0];
        let mut units = Vec::new();
        let mut pages = self
            .client
            .list_organizational_units_for_parent()
            .parent_id(parent)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| sdk_error(Op::ListOrganizationalUnitsForParent, &self.region, e))?;
            units.extend(
                page.organizational_units()
                    .iter()
                    .filter_map(|u| u.id().map(str::to_string)),
            );
        }
        let mut pages = self
            .client
            .list_accounts_for_parent()
            .parent_id(parent)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(Op::ListAccountsForParent, &self.region, e))?;
            for account in page.accounts() {
                members.push(member(account, chain)?);
            }
        }
        Ok(units)
    }
}

/// A listed account as a [`Member`] under `chain` (its parent first).
fn member(account: &Account, chain: &[String]) -> Result<Member> {
    let id = account.id().unwrap_or_default();
    let partition = account.arn().and_then(|arn| arn.split(':').nth(1));
    let Some(partition) = partition.filter(|_| !id.is_empty()) else {
        return Err(Error::Other(format!(
            "ListAccountsForParent of {} returned an account without an id or ARN ({account:?})",
            chain[0]
        )));
    };
    // `State` replaces `Status`, which AWS still sends; either says whether the account is active.
    let state = account
        .state()
        .map(|s| s.as_str())
        .or_else(|| account.status().map(|s| s.as_str()))
        .unwrap_or_default();
    Ok(Member {
        id: id.to_string(),
        partition: partition.to_string(),
        state: State::parse(state),
        parents: chain.to_vec(),
    })
}

#[async_trait]
impl Organizations for SdkOrganizations {
    async fn members(&self) -> Result<Vec<Member>> {
        let mut listed = BTreeSet::new();
        let mut pages = self.client.list_accounts().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(Op::ListAccounts, &self.region, e))?;
            listed.extend(
                page.accounts()
                    .iter()
                    .filter_map(|a| a.id().map(str::to_string)),
            );
        }
        // Parent chains still to visit, each nearest first.
        let mut todo: Vec<Vec<String>> = Vec::new();
        let mut pages = self.client.list_roots().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(Op::ListRoots, &self.region, e))?;
            todo.extend(
                page.roots()
                    .iter()
                    .filter_map(|r| Some(vec![r.id()?.to_string()])),
            );
        }
        let mut members = Vec::new();
        while let Some(chain) = todo.pop() {
            for unit in self.children(&chain, &mut members).await? {
                todo.push(std::iter::once(unit).chain(chain.iter().cloned()).collect());
            }
        }
        // An account moved between OUs while they were walked is seen twice or not at all: its place, and for the
        // second case its membership, are not known, so the listing as a whole is not used.
        let mut seen = BTreeSet::new();
        let twice = members.iter().find(|m| !seen.insert(m.id.as_str()));
        let missing = listed.iter().find(|id| !seen.contains(id.as_str()));
        if let Some(id) = twice.map(|m| &m.id).or(missing) {
            return Err(Error::Other(format!(
                "account {id} was not found in exactly one OU while the organisation was listed (moved meanwhile?); \
                 the accounts served stay as they were until the next listing"
            )));
        }
        Ok(members)
    }
}
