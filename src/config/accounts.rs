//! Which AWS accounts the daemon serves: `aws.own-account` (its own, the one its credentials belong to),
//! `[[aws.account]]` entries (member accounts reached by AssumeRole, each with its role ARN, optional ExternalId,
//! session name, regions and a short `name` for metrics and alerts), `[aws.organization]` (member accounts found
//! in AWS Organizations at run time, by one role name), and a policy's `accounts = […]` list — read and checked
//! with the same collector as the rest of the file.
//!
//! What it checks beyond types: a role ARN is an IAM role ARN (`arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`) in the
//! partition of `aws.regions` (AssumeRole does not cross partitions; with `aws.regions` empty the partition is
//! the SDK region's, which a run has to check); an entry's own `regions` are region codes in its ARN's partition,
//! listed once; each account is listed once and each `name` (`[a-z0-9-]{1,32}`, default the account id) is used
//! once, is not `own` (the daemon's own account's name) and is not a 12-digit id other than its own account's;
//! `external-id` and `session-name` follow AWS's AssumeRole rules; the organization's `include` / `exclude` are
//! account, OU or root ids, each listed once and not in both; its `refresh` is 5m to 24h; and something is served
//! (`own-account = false` needs an account entry or the organization). A policy's `accounts` names are account
//! names: an entry's `name` (its account id when it has none) or `own`; with `[aws.organization]`, a 12-digit id
//! none of the entries has is accepted too, as discovered accounts are named by their id and are only known at
//! run time. This module assumes no role and lists no organization; whether a listed account is the daemon's own
//! (known from GetCallerIdentity) is for the run to check.
//!
//! Hooking it into loading (not done yet; nothing here changes what the daemon does today):
//! 1. `config/mod.rs`: drop the `allow(dead_code)` on `mod accounts;`; give `AwsConfig` a
//!    `pub(crate) accounts: accounts::Accounts` and `Policy` a `pub(crate) accounts: Option<Vec<String>>` (`None`:
//!    every served account, the default).
//! 2. `sections::aws` (which reads `[aws]`): after `regions`, set
//!    `a.accounts = accounts::accounts(cx, Some(t), &a.regions).unwrap_or_default()` (the file is refused anyway
//!    when it is `None`); its early return for an absent `[aws]` keeps `Accounts::default()` (own account only,
//!    exactly as today).
//! 3. `sections::policies` / `sections::policy`: pass `&aws.accounts` down (as `regions` is) and read
//!    `accounts: t.get("accounts").map(|f| accounts::policy_accounts(cx, &f, &aws.accounts))`, a `Some(None)`
//!    making the policy `None` like any other invalid key.
//! 4. `daemon::aws_regions_paced` (described, not done): today it builds one `worker::Region` per `aws.regions`
//!    entry (or the SDK's region) from the daemon's own SDK config. It must build one per (account, region) pair:
//!    the own account's pairs (when `own`) with today's config, and each `listed` account's pairs (its `regions`)
//!    with an SDK config whose credentials are an AssumeRole provider for `role_arn` (with `external_id`,
//!    `session_name`); each pair with its own `paced_region` (its own token buckets and pending-snapshot
//!    accounting: AWS's limits are per account per region) while the `max-concurrent-aws-calls` semaphore stays
//!    one for the process; the copy destinations likewise per account. `Region` gains the account's `name` for
//!    metrics, logs and the digest. The organization's accounts are added and removed by a task that lists the
//!    organization every `refresh` (skipping suspended accounts, the own account when `own`, and accounts already
//!    in `listed`, whose entry wins) and assumes `arn:PARTITION:iam::ID:role/ROLE-NAME` in each.
//! 5. README's multi-account section and a `config/examples/` file, once the keys do something.

use std::time::Duration;

use figment::value::Value;

use super::copy::partition;
use super::sections::{arn, duration_between, is_account, regions};
use super::tree::{Collector, Field, Table};

/// `session-name` when none is given: what CloudTrail shows as the session of every call made in the account.
pub(crate) const DEFAULT_SESSION_NAME: &str = "snapwarden";
/// `[aws.organization].refresh` when none is given, and its range: often enough that an account joining the
/// organisation is backed up the same hour, rarely enough that listing a large organisation stays cheap.
pub(crate) const DEFAULT_ORGANIZATION_REFRESH: Duration = Duration::from_secs(3600);
const ORGANIZATION_REFRESH: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(5 * 60)..=Duration::from_secs(24 * 3600);
/// The name a policy's `accounts` gives the daemon's own account; no entry may take it.
pub(crate) const OWN: &str = "own";
const MAX_NAME: usize = 32;

/// What the daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accounts {
    /// `aws.own-account` (default true): the account the daemon's own credentials belong to.
    pub(crate) own: bool,
    /// `[[aws.account]]`, in the file's order.
    pub(crate) listed: Vec<Account>,
    /// `[aws.organization]`.
    pub(crate) organization: Option<Organization>,
}

impl Default for Accounts {
    /// The daemon's own account only: what a config without any of these keys has always meant.
    fn default() -> Self {
        Accounts {
            own: true,
            listed: Vec::new(),
            organization: None,
        }
    }
}

/// One `[[aws.account]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// `name`, or the account id when it has none: the `account` label of metrics, alerts and `plan`.
    pub(crate) name: String,
    /// `role-arn`: the role assumed in the account.
    pub(crate) role_arn: String,
    /// The 12-digit account id, from `role_arn`.
    pub(crate) account_id: String,
    /// `external-id`: AssumeRole's `ExternalId`, when the role's trust policy asks for one.
    pub(crate) external_id: Option<String>,
    /// `session-name` (default [`DEFAULT_SESSION_NAME`]): AssumeRole's `RoleSessionName`.
    pub(crate) session_name: String,
    /// `regions` (default `aws.regions`): the regions served in this account.
    pub(crate) regions: Vec<String>,
}

/// `[aws.organization]`: the member accounts of the daemon's organisation, found at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Organization {
    /// `role-name`: the role assumed in each member, as `NAME` or `PATH/NAME`.
    pub(crate) role_name: String,
    /// `include` (default: the whole organisation): accounts, and accounts under these OUs or roots.
    pub(crate) include: Vec<OrgId>,
    /// `exclude`: left out even when `include` covers them.
    pub(crate) exclude: Vec<OrgId>,
    /// `refresh` (default 1h): how often the organisation is listed again.
    pub(crate) refresh: Duration,
    pub(crate) external_id: Option<String>,
    pub(crate) session_name: String,
}

/// An id in `include` / `exclude`, by its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OrgId {
    /// 12 digits.
    Account(String),
    /// `ou-` + 4–32 lowercase letters or digits (the root's) + `-` + 8–32 more.
    Unit(String),
    /// `r-` + 4–32 lowercase letters or digits.
    Root(String),
}

const ACCOUNT_EXAMPLE: &str = "[[aws.account]] tables, each with role-arn, e.g. role-arn = \
                               \"arn:aws:iam::111122223333:role/snapwarden\", name = \"prod\"";
const ROLE_ARN_EXAMPLE: &str = "role-arn = \"arn:aws:iam::111122223333:role/snapwarden\"";
const NAME_EXAMPLE: &str = "name = \"prod\" (1 to 32 lowercase letters, digits or `-`)";
const EXTERNAL_ID_EXAMPLE: &str =
    "external-id = \"snapwarden-7f3a\" (2 to 1224 letters, digits or any of _+=,.@:/-)";
const SESSION_NAME_EXAMPLE: &str =
    "session-name = \"snapwarden\" (2 to 64 letters, digits or any of _+=,.@-)";
const ORGANIZATION_EXAMPLE: &str =
    "[aws.organization] with role-name = \"snapwarden\" (and optionally include, exclude, refresh)";
const ORG_IDS_EXAMPLE: &str = "[\"111122223333\", \"ou-ab12-cdef3456\", \"r-ab12\"]";

/// Reads `own-account`, `account` and `organization` from the `[aws]` table `aws` (`None` when there is none);
/// `regions` is `aws.regions`. `None` when anything is wrong (reported).
pub(super) fn accounts(
    cx: &mut Collector<'_>,
    aws: Option<&mut Table<'_>>,
    regions: &[String],
) -> Option<Accounts> {
    let Some(t) = aws else {
        return Some(Accounts::default());
    };
    let before = cx.problem_count();
    let own_field = t.get("own-account");
    let own = match &own_field {
        None => true,
        Some(f) => cx.bool(f, "own-account = false").unwrap_or(true),
    };
    let listed_field = t.get("account");
    let listed = listed_field
        .as_ref()
        .map(|f| listed(cx, f, regions))
        .unwrap_or_default();
    let organization_field = t.get("organization");
    let organization = organization_field.as_ref().and_then(|f| {
        let mut o = cx.table(f, ORGANIZATION_EXAMPLE)?;
        let value = organization(cx, &mut o);
        o.finish(cx);
        value
    });
    // Judged on what was written: an entry already reported as wrong must not also read as "nothing served".
    if let (Some(f), false, None, None) = (&own_field, own, &listed_field, &organization_field) {
        cx.problem(
            f,
            "own-account = false with no [[aws.account]] and no [aws.organization]: no account is served, so the \
             daemon would back up nothing",
            "add an [[aws.account]] with role-arn = \"arn:aws:iam::111122223333:role/snapwarden\" (or an \
             [aws.organization] with role-name), or remove own-account = false to serve the daemon's own account",
        );
    }
    (cx.problem_count() == before).then_some(Accounts {
        own,
        listed,
        organization,
    })
}

/// The `[[aws.account]]` entries that are whole; the others are reported.
fn listed(cx: &mut Collector<'_>, f: &Field<'_>, aws_regions: &[String]) -> Vec<Account> {
    let Some(items) = cx.array(f, ACCOUNT_EXAMPLE) else {
        return Vec::new();
    };
    if items.is_empty() {
        cx.problem(
            f,
            "the account list is empty",
            format!(
                "write {ACCOUNT_EXAMPLE}, or remove the key to serve only the daemon's own account"
            ),
        );
    }
    let mut out: Vec<Account> = Vec::new();
    // Labels of entries, by position, for "already served by aws.account[…]".
    let mut labels: Vec<String> = Vec::new();
    // Every entry's name and account id as written (when usable), for duplicates among entries that are
    // themselves wrong elsewhere: one mistake must not hide another.
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut ids: Vec<(String, usize)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            path: f.path.item(i, None),
            value: item,
        };
        let Some(mut t) = cx.table(&field, ACCOUNT_EXAMPLE) else {
            labels.push(field.path.as_str().to_string());
            continue;
        };
        let name_f = t.get("name");
        let arn_f = t.get("role-arn");
        // Labelled by its name from here on (`aws.account[prod].role-arn`), or by its account id when it has no
        // name, as policies are by theirs; a label already taken keeps the position, so two stay distinguishable.
        let written = |f: &Option<Field<'_>>| match f.as_ref().map(|f| f.value) {
            Some(Value::String(_, s)) => Some(s.clone()),
            _ => None,
        };
        // A name that cannot be one is no label: the entry then goes by its account id.
        let id =
            written(&arn_f).and_then(|arn| role_arn_parts(&arn).ok().map(|(_, id)| id.to_string()));
        let label = written(&name_f)
            .filter(|name| name_problem(name, id.as_deref()).is_none())
            .or(id);
        if let Some(label) = label.filter(|l| !names.iter().any(|(n, _)| n == l)) {
            t.path = f.path.item(i, Some(&label));
        }
        labels.push(t.path.as_str().to_string());
        let name_f = name_f.map(|f| Field {
            path: t.path.key("name"),
            value: f.value,
        });
        let arn_f = arn_f.map(|f| Field {
            path: t.path.key("role-arn"),
            value: f.value,
        });

        let role = match &arn_f {
            None => {
                cx.missing(
                    &t.path.key("role-arn"),
                    "missing: the entry does not say which role to assume in the account",
                    format!("add {ROLE_ARN_EXAMPLE} (the role the member account trusts the daemon to assume)"),
                );
                None
            }
            Some(f) => role_arn(cx, f, aws_regions),
        };
        let mut id_twice = false;
        if let Some(Role { account_id: id, .. }) = &role {
            if let Some((_, first)) = ids.iter().find(|(other, _)| other == id) {
                id_twice = true;
                cx.problem(
                    arn_f.as_ref().expect("a role was read from it"),
                    format!("account {id} is already served by {}", labels[*first]),
                    "list each account once: one [[aws.account]] per account, with all its regions in its regions \
                     list",
                );
            } else {
                ids.push((id.clone(), i));
            }
        }
        let account_id = role.as_ref().map(|r| r.account_id.as_str());
        let name = match &name_f {
            None => account_id.map(str::to_string),
            Some(f) => {
                cx.string(f, NAME_EXAMPLE)
                    .and_then(|name| match name_problem(&name, account_id) {
                        None => Some(name),
                        Some(why) => {
                            cx.problem(
                                f,
                                format!("account name `{name}` {why}"),
                                format!("write {NAME_EXAMPLE}"),
                            );
                            None
                        }
                    })
            }
        };
        // An entry without a name is named by its account id: a second one is the account listed twice, reported
        // above.
        if let Some(name) = name.as_ref().filter(|_| name_f.is_some() || !id_twice) {
            if let Some((_, first)) = names.iter().find(|(other, _)| other == name) {
                let at = name_f
                    .as_ref()
                    .or(arn_f.as_ref())
                    .expect("a name comes from one of them");
                let fix = if name_f.is_some() {
                    "give each [[aws.account]] a different name"
                } else {
                    "give one of them a name = \"…\" (an entry without one is named by its account id)"
                };
                cx.problem(
                    at,
                    format!(
                        "account name `{name}` is already used by {}",
                        labels[*first]
                    ),
                    fix,
                );
            } else {
                names.push((name.clone(), i));
            }
        }
        let external_id = optional_id(cx, &mut t, "external-id");
        let session_name = session_name(cx, &mut t);
        let regions = match t.get("regions") {
            None => Some(aws_regions.to_vec()),
            Some(f) => own_regions(cx, &f, role.as_ref().map(|r| r.partition.as_str())),
        };
        t.finish(cx);
        if let (Some(role), Some(name), Some(external_id), Some(session_name), Some(regions)) =
            (role, name, external_id, session_name, regions)
        {
            out.push(Account {
                name,
                role_arn: role.arn,
                account_id: role.account_id,
                external_id,
                session_name,
                regions,
            });
        }
    }
    out
}

/// A checked `role-arn`.
struct Role {
    arn: String,
    partition: String,
    account_id: String,
}

/// `role-arn`, once checked against `aws.regions`' partition.
fn role_arn(cx: &mut Collector<'_>, f: &Field<'_>, aws_regions: &[String]) -> Option<Role> {
    let text = cx.string(f, ROLE_ARN_EXAMPLE)?;
    let (arn_partition, id) = match role_arn_parts(&text) {
        Ok(parts) => parts,
        Err(why) => {
            cx.problem(
                f,
                format!("`{text}` {why}"),
                format!("write the ARN of the role in the member account, e.g. {ROLE_ARN_EXAMPLE}"),
            );
            return None;
        }
    };
    if let Some(region) = aws_regions.iter().find(|r| partition(r) != arn_partition) {
        cx.problem(
            f,
            format!(
                "`{text}` is a role in partition {arn_partition}, but aws.regions' {region} is in {}: AssumeRole \
                 does not cross partitions",
                partition(region)
            ),
            format!(
                "use a role ARN of partition {} (arn:{}:iam::…); a partition's accounts are served by a \
                 snapwarden with that partition's credentials",
                partition(region),
                partition(region)
            ),
        );
        return None;
    }
    Some(Role {
        partition: arn_partition.to_string(),
        account_id: id.to_string(),
        arn: text.clone(),
    })
}

/// The partition and account id of an IAM role ARN, or why it is not one (verb first, to follow the value).
fn role_arn_parts(text: &str) -> Result<(&str, &str), String> {
    let (_, account, resource) = arn(text, "iam")?;
    if !is_account(account) {
        return Err(format!(
            "has account part `{account}`, not a 12-digit account id"
        ));
    }
    let Some(role) = resource.strip_prefix("role/") else {
        return Err(format!(
            "ends in `{resource}`, not role/NAME (the ARN of a role, not a user or policy)"
        ));
    };
    if let Some(why) = role_name_problem(role) {
        return Err(format!("ends in role/{role}, which {why}"));
    }
    // `arn` has checked there are six parts, the second the partition.
    Ok((text.split(':').nth(1).unwrap_or_default(), account))
}

/// Why `role` (`NAME` or `PATH/NAME`, as after `role/` in an ARN) is not an IAM role name: the name is 1 to 64
/// letters, digits or `_+=,.@-`; the path's parts are printable ASCII, and the path at most 510 characters.
fn role_name_problem(role: &str) -> Option<&'static str> {
    let (path, name) = role.rsplit_once('/').unwrap_or(("", role));
    let name_ok =
        (1..=64).contains(&name.len()) && name.chars().all(|c| is_word(c) || "+=,.@-".contains(c));
    if !name_ok {
        return Some(
            "has no role name of 1 to 64 letters, digits or any of _+=,.@- after its last `/`",
        );
    }
    let path_ok = path.is_empty()
        || (path.len() <= 510
            && path
                .split('/')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_graphic())));
    (!path_ok).then_some("has a path that is not `/`-separated parts of printable characters")
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Why `name` cannot be an account's name, `account_id` being the account's own id when known.
fn name_problem(name: &str, account_id: Option<&str>) -> Option<String> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Some(format!(
            "is not 1 to {MAX_NAME} lowercase letters, digits or `-` (it becomes a metric label and a digest \
             subject)"
        ));
    }
    if name == OWN {
        return Some(format!(
            "is `{OWN}`, the name of the daemon's own account in a policy's accounts"
        ));
    }
    // A name that reads as an account id must be the entry's own, or the dashboard would name the wrong account.
    if is_account(name) && account_id.is_some_and(|id| id != name) {
        return Some(format!(
            "is another account's id (the role is in {})",
            account_id.unwrap_or_default()
        ));
    }
    None
}

/// `external-id`: AssumeRole's ExternalId, 2 to 1224 letters, digits or `_+=,.@:/-`. Outer `None`: wrong
/// (reported); `Some(None)`: not given.
fn optional_id(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    key: &'static str,
) -> Option<Option<String>> {
    let Some(f) = t.get(key) else {
        return Some(None);
    };
    let id = cx.string(&f, EXTERNAL_ID_EXAMPLE)?;
    let ok =
        (2..=1224).contains(&id.len()) && id.chars().all(|c| is_word(c) || "+=,.@:/-".contains(c));
    if !ok {
        cx.problem(
            &f,
            format!("`{id}` is not an ExternalId AssumeRole accepts"),
            format!("write {EXTERNAL_ID_EXAMPLE}, the same as the role's trust policy's sts:ExternalId condition"),
        );
        return None;
    }
    Some(Some(id))
}

/// `session-name` (default [`DEFAULT_SESSION_NAME`]): 2 to 64 letters, digits or `_+=,.@-`.
fn session_name(cx: &mut Collector<'_>, t: &mut Table<'_>) -> Option<String> {
    let Some(f) = t.get("session-name") else {
        return Some(DEFAULT_SESSION_NAME.to_string());
    };
    let name = cx.string(&f, SESSION_NAME_EXAMPLE)?;
    let ok =
        (2..=64).contains(&name.len()) && name.chars().all(|c| is_word(c) || "+=,.@-".contains(c));
    if !ok {
        cx.problem(
            &f,
            format!("`{name}` is not a RoleSessionName AssumeRole accepts"),
            format!("write {SESSION_NAME_EXAMPLE}"),
        );
        return None;
    }
    Some(name)
}

/// An entry's own `regions`: read as `aws.regions` is, not empty, and in its role's partition (when known).
fn own_regions(
    cx: &mut Collector<'_>,
    f: &Field<'_>,
    arn_partition: Option<&str>,
) -> Option<Vec<String>> {
    let before = cx.problem_count();
    let list = regions(cx, f);
    if cx.problem_count() > before {
        return None;
    }
    if list.is_empty() {
        cx.problem(
            f,
            "the region list is empty: nothing would be served in the account",
            "list the account's regions, e.g. regions = [\"us-east-1\"], or remove the key to serve aws.regions",
        );
        return None;
    }
    if let Some(p) = arn_partition {
        if let Some(region) = list.iter().find(|r| partition(r) != p) {
            cx.problem(
                f,
                format!("`{region}` is in partition {}, the account's role in {p}", partition(region)),
                format!("list regions of partition {p}; a role is assumed and used within its partition"),
            );
            return None;
        }
    }
    Some(list)
}

/// The rest of `[aws.organization]`.
fn organization(cx: &mut Collector<'_>, t: &mut Table<'_>) -> Option<Organization> {
    let role_name = match t.get("role-name") {
        None => {
            cx.missing(
                &t.path.key("role-name"),
                "missing: nothing says which role to assume in each member account",
                "add role-name = \"snapwarden\" (the role's name, or path/name, the same in every member)",
            );
            None
        }
        Some(f) => cx.string(&f, "role-name = \"snapwarden\"").and_then(|name| {
            let why = if name.starts_with("arn:") {
                Some("is an ARN; the account id comes from each member account")
            } else {
                role_name_problem(&name)
            };
            match why {
                None => Some(name),
                Some(why) => {
                    cx.problem(
                        &f,
                        format!("`{name}` {why}"),
                        "write the role's name alone, e.g. role-name = \"snapwarden\" (or path/name: \
                         \"ops/snapwarden\")",
                    );
                    None
                }
            }
        }),
    };
    let include = t.get("include").map(|f| org_ids(cx, &f, &[]));
    let exclude = t.get("exclude").map(|f| {
        let included = match &include {
            Some(Some(ids)) => ids.as_slice(),
            _ => &[],
        };
        org_ids(cx, &f, included)
    });
    let refresh = match t.get("refresh") {
        None => Some(DEFAULT_ORGANIZATION_REFRESH),
        Some(f) => duration_between(cx, &f, ORGANIZATION_REFRESH, "refresh = \"1h\""),
    };
    let external_id = optional_id(cx, t, "external-id");
    let session_name = session_name(cx, t);
    Some(Organization {
        role_name: role_name?,
        include: include.unwrap_or(Some(Vec::new()))?,
        exclude: exclude.unwrap_or(Some(Vec::new()))?,
        refresh: refresh?,
        external_id: external_id?,
        session_name: session_name?,
    })
}

/// `include` or `exclude`: ids by their shape, each once, none of `included` (for `exclude`).
fn org_ids(cx: &mut Collector<'_>, f: &Field<'_>, included: &[OrgId]) -> Option<Vec<OrgId>> {
    let key = f
        .path
        .as_str()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let example = format!("{key} = {ORG_IDS_EXAMPLE}");
    let items = cx.array(f, &example)?;
    if items.is_empty() {
        let fix = if key == "include" {
            "list what to include, or remove the key to include the whole organisation"
        } else {
            "list what to leave out, or remove the key"
        };
        cx.problem(f, format!("`{key}` is empty"), fix);
        return None;
    }
    let before = cx.problem_count();
    let mut out: Vec<OrgId> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            path: f.path.item(i, None),
            value: item,
        };
        let Some(text) = cx.string(&field, &example) else {
            continue;
        };
        let Some(id) = org_id(&text) else {
            cx.problem(
                &field,
                format!("`{text}` is not an account id, an OU id or a root id"),
                "write an account id (12 digits, 111122223333), an OU id (ou-ab12-cdef3456) or a root id \
                 (r-ab12), as the Organizations console shows them",
            );
            continue;
        };
        if out.contains(&id) {
            cx.problem(
                &field,
                format!("`{text}` is listed twice"),
                "list each id once",
            );
        } else if included.contains(&id) {
            cx.problem(
                &field,
                format!("`{text}` is also in include"),
                "remove it from one of the two lists: an id both included and excluded says two things",
            );
        } else {
            out.push(id);
        }
    }
    (cx.problem_count() == before).then_some(out)
}

/// An id of `include` / `exclude`, by its shape.
fn org_id(text: &str) -> Option<OrgId> {
    let alnum = |s: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    if is_account(text) {
        return Some(OrgId::Account(text.to_string()));
    }
    if let Some(rest) = text.strip_prefix("ou-") {
        let (root, unit) = rest.split_once('-')?;
        return (alnum(root, 4..=32) && alnum(unit, 8..=32)).then(|| OrgId::Unit(text.to_string()));
    }
    let root = text.strip_prefix("r-")?;
    alnum(root, 4..=32).then(|| OrgId::Root(text.to_string()))
}

/// A policy's `accounts` (the field `f`): each an account name of `accounts` — an entry's `name` (its account id
/// when it has none) or [`OWN`] — listed once, the list not empty. With `[aws.organization]` a 12-digit id that
/// no entry has is accepted too: discovered accounts are named by their id and known only at run time. `None`
/// when something is wrong (reported).
pub(super) fn policy_accounts(
    cx: &mut Collector<'_>,
    f: &Field<'_>,
    accounts: &Accounts,
) -> Option<Vec<String>> {
    const EXAMPLE: &str = "accounts = [\"prod\", \"own\"]";
    let items = cx.array(f, EXAMPLE)?;
    if items.is_empty() {
        cx.problem(
            f,
            "the account list is empty: the policy would serve no account",
            "list the accounts the policy applies to, or remove the key to apply it to every account",
        );
        return None;
    }
    let known: Vec<&str> = accounts
        .own
        .then_some(OWN)
        .into_iter()
        .chain(accounts.listed.iter().map(|a| a.name.as_str()))
        .collect();
    let known_text = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    let before = cx.problem_count();
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            path: f.path.item(i, None),
            value: item,
        };
        let Some(name) = cx.string(&field, EXAMPLE) else {
            continue;
        };
        let discovered = accounts.organization.is_some() && is_account(&name);
        if out.contains(&name) {
            cx.problem(
                &field,
                format!("account `{name}` is listed twice"),
                "list each account once",
            );
        } else if known.contains(&name.as_str()) || discovered {
            out.push(name);
        } else if name == OWN {
            cx.problem(
                &field,
                "`own` is the daemon's own account, which aws.own-account = false leaves out",
                format!("remove it, or set aws.own-account = true; the accounts served are: {known_text}"),
            );
        } else if let Some(named) = accounts.listed.iter().find(|a| a.account_id == name) {
            cx.problem(
                &field,
                format!("account {name} is named `{}`", named.name),
                format!(
                    "write \"{}\": a policy names accounts by their name",
                    named.name
                ),
            );
        } else {
            cx.problem(
                &field,
                format!("`{name}` is not an account the daemon serves"),
                format!(
                    "write one of: {known_text} (an [[aws.account]]'s name, its account id when it has none, or \
                     \"own\" for the daemon's own account)"
                ),
            );
        }
    }
    (cx.problem_count() == before).then_some(out)
}

#[cfg(test)]
mod tests;
