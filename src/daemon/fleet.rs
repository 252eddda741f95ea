//! The (account, region) pairs the daemon serves, and the organisation refresh that changes them. Without
//! `[aws.organization]` the pairs are fixed at start (the own account's and each `[[aws.account]]`'s). With it, the
//! organisation is listed with the daemon's own credentials at start — before the scheduler's catch-up — and then
//! every `refresh`: the accounts [`org::decide`] serves get their pairs built ([`Backends::account`], assuming
//! `role-name` in each), the ones that left the organisation or stopped being served (suspended, excluded) are
//! dropped, and the current list is published on a `watch` channel that the scheduler loop follows from its next
//! fires (fires in flight keep the pairs they started with). A listing that fails changes nothing: an account is
//! never dropped on a half-known organisation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Backends, Served};
use crate::config::Organization;
use crate::ec2;
use crate::error::{Error, Result};
use crate::org::{self, sdk::SdkOrganizations, Organizations, Verdict};
use crate::worker::Region;

/// After a failed listing the next one comes this soon (or at `refresh`, when that is sooner): a passing AWS error
/// should not leave a new account unserved for a whole day, and a missing permission is logged again every
/// few minutes until it is fixed.
const RETRY: Duration = Duration::from_secs(5 * 60);

/// What an operator has to fix when the organisation cannot be listed.
const LISTING_FIX: &str = "the daemon's own role needs organizations:ListAccounts, organizations:ListRoots, \
     organizations:ListOrganizationalUnitsForParent and organizations:ListAccountsForParent, and the daemon must run \
     in the organisation's management account or in a delegated administrator account of the organisation";

/// The pairs served right now.
pub type Pairs = Arc<Vec<Arc<Region>>>;

/// What the scheduler loop fires in: a fixed list of pairs (the demo, tests) or the one the organisation refresh
/// keeps current ([`Fleet::watch`]).
pub struct Serving(pub(crate) watch::Receiver<Pairs>);

impl From<Pairs> for Serving {
    fn from(pairs: Pairs) -> Self {
        Serving(watch::channel(pairs).1)
    }
}

impl From<watch::Receiver<Pairs>> for Serving {
    fn from(pairs: watch::Receiver<Pairs>) -> Self {
        Serving(pairs)
    }
}

/// The pairs served, and with `[aws.organization]` the refresh that keeps them current.
pub struct Fleet {
    pairs: watch::Sender<Pairs>,
    discovery: Option<Discovery>,
}

impl From<Vec<Arc<Region>>> for Fleet {
    /// A fixed list: nothing is ever added or dropped.
    fn from(regions: Vec<Arc<Region>>) -> Self {
        Fleet {
            pairs: watch::Sender::new(Arc::new(regions)),
            discovery: None,
        }
    }
}

impl Fleet {
    /// `fixed` (the own account's and the listed accounts' pairs), plus, with `[aws.organization]`, the accounts of
    /// the organisation's first listing.
    pub(crate) async fn start(backends: Backends, fixed: Vec<Arc<Region>>) -> Fleet {
        let config = backends.shared.config.clone();
        let Some(org) = config.aws.accounts.organization.clone() else {
            return Fleet::from(fixed);
        };
        let conf =
            ec2::sdk::sdk_config(&config.aws, config.aws.regions.first().map(String::as_str)).await;
        backends.shared.metrics.init_organization();
        let mut fleet = Fleet {
            pairs: watch::Sender::new(Arc::new(fixed.clone())),
            discovery: Some(Discovery {
                lister: Arc::new(SdkOrganizations::new(&conf)),
                // The own account is left to `aws.own-account` only when that serves it.
                own: fixed.iter().find(|r| r.own).map(|r| r.account_id.clone()),
                listed: config
                    .aws
                    .accounts
                    .listed
                    .iter()
                    .map(|a| a.account_id.clone())
                    .collect(),
                regions: config.aws.regions.clone(),
                org,
                backends,
                fixed,
                served: BTreeMap::new(),
            }),
        };
        fleet.refresh().await;
        fleet
    }

    /// The pairs served now.
    pub fn regions(&self) -> Pairs {
        self.pairs.borrow().clone()
    }

    /// The pairs served, as they change.
    pub fn watch(&self) -> watch::Receiver<Pairs> {
        // Spelled out: tests/deploy_files.rs would read the method-call form as a call of SNS Subscribe.
        watch::Sender::subscribe(&self.pairs)
    }

    /// Lists the organisation now and publishes the pairs it leads to; false when the listing failed (and nothing
    /// changed). Without `[aws.organization]`, nothing to do (true).
    pub async fn refresh(&mut self) -> bool {
        let Some(discovery) = &mut self.discovery else {
            return true;
        };
        let ok = discovery.refresh().await;
        if ok {
            let pairs = discovery.pairs();
            self.pairs.send_if_modified(|current| {
                let changed = !same(current, &pairs);
                if changed {
                    *current = pairs;
                }
                changed
            });
        }
        ok
    }

    /// Lists the organisation again every `refresh` (after a failure, sooner: [`RETRY`]) until `shutdown`; at once
    /// without `[aws.organization]`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let Some(every) = self.discovery.as_ref().map(|d| d.org.refresh) else {
            return;
        };
        let mut wait = every;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let ok = tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = self.refresh() => ok,
            };
            wait = if ok { every } else { every.min(RETRY) };
        }
    }
}

/// Whether two lists hold the same pairs (the same backends, not merely equal names).
fn same(a: &[Arc<Region>], b: &[Arc<Region>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// The organisation's accounts as served: the listing, the decision, the pairs of each account served.
struct Discovery {
    lister: Arc<dyn Organizations>,
    backends: Backends,
    org: Organization,
    /// `aws.regions`: where each discovered account is served (empty: the SDK's region).
    regions: Vec<String>,
    /// The daemon's own account id, when `aws.own-account` serves it.
    own: Option<String>,
    /// The `[[aws.account]]` entries' account ids.
    listed: Vec<String>,
    /// The own account's and the entries' pairs, served whatever the organisation says.
    fixed: Vec<Arc<Region>>,
    /// The discovered accounts served, by id, with their pairs.
    served: BTreeMap<String, Vec<Arc<Region>>>,
}

impl Discovery {
    fn pairs(&self) -> Pairs {
        Arc::new(
            self.fixed
                .iter()
                .chain(self.served.values().flatten())
                .cloned()
                .collect(),
        )
    }

    /// One listing and what it changes; the event "the organisation was listed" (its log line and metric) either
    /// way. False when it failed.
    async fn refresh(&mut self) -> bool {
        let outcome = self.apply().await;
        let metrics = &self.backends.shared.metrics;
        match &outcome {
            Ok(change) => {
                metrics.organization_listed("success", self.served.len());
                tracing::info!(
                    members = change.members,
                    served = self.served.len(),
                    joined = change.joined,
                    left = change.left,
                    "organisation listed"
                );
            }
            Err(e) => {
                metrics.organization_listed("failure", self.served.len());
                let retry = self.org.refresh.min(RETRY);
                tracing::error!(error = %e, kind = e.kind(), served = self.served.len(), retry_in_seconds = retry.as_secs(), fix = LISTING_FIX, "organisation listing failed: the accounts served stay as they were");
            }
        }
        outcome.is_ok()
    }

    /// Lists the organisation and serves what [`org::decide`] says: the pairs of every account that joins are built
    /// before anything changes, so a listing or a build that fails leaves the accounts served as they were.
    async fn apply(&mut self) -> Result<Change, Error> {
        let members = self.lister.members().await?;
        let verdicts = org::decide(&members, &self.org, self.own.as_deref(), &self.listed);
        let mut joined = Vec::new();
        for (member, _) in verdicts.iter().filter(|(_, v)| *v == Verdict::Serve) {
            if !self.served.contains_key(&member.id) {
                let served = Served::discovered(member, &self.org, &self.regions);
                joined.push((member.id.clone(), self.backends.account(&served).await?));
            }
        }
        let serve = |id: &str| verdicts.iter().find(|(m, _)| m.id == id).map(|(_, v)| *v);
        let left: Vec<String> = self
            .served
            .keys()
            .filter(|id| serve(id) != Some(Verdict::Serve))
            .cloned()
            .collect();
        for id in &left {
            self.served.remove(id);
            let reason = serve(id).map_or("left-organisation", Verdict::as_str);
            tracing::info!(account = %id, reason, "organisation: account no longer served; its runs in flight finish");
            // Its series would otherwise stay at their last values forever (a discovered account's label is its id).
            self.backends.shared.metrics.forget_account(id);
        }
        let change = Change {
            members: members.len(),
            joined: joined.len(),
            left: left.len(),
        };
        for (id, pairs) in joined {
            let regions: Vec<&str> = pairs.iter().map(|r| r.ec2.region()).collect();
            tracing::info!(account = %id, regions = %regions.join(","), "organisation: account served from its policies' next fires");
            self.served.insert(id, pairs);
        }
        Ok(change)
    }
}

/// What one listing changed, for its log line.
struct Change {
    members: usize,
    joined: usize,
    left: usize,
}
