//! Which accounts of the organisation the daemon serves, as a pure function of the listing and the config: a
//! [`Verdict`] per member, so the refresh's log lines say why an account is left out. No I/O, no AWS types.

use super::{Member, State};
use crate::config::{OrgId, Organization};

/// Why a member account is served by the organisation's role, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Served: its role is assumed in each of `aws.regions`.
    Serve,
    /// An `[[aws.account]]` entry serves it, with that entry's role, name and regions: the entry wins.
    Listed,
    /// The daemon's own account, which `aws.own-account` serves with the daemon's own credentials.
    Own,
    /// Suspended: left alone.
    Suspended,
    /// Not active for another reason (pending activation, pending closure, closed).
    Inactive,
    /// `exclude` names it, one of its OUs or its root.
    Excluded,
    /// `include` names neither it nor any of its OUs nor its root.
    NotIncluded,
}

impl Verdict {
    /// A log field's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Serve => "served",
            Verdict::Listed => "listed-in-aws-account",
            Verdict::Own => "own-account",
            Verdict::Suspended => "suspended",
            Verdict::Inactive => "not-active",
            Verdict::Excluded => "excluded",
            Verdict::NotIncluded => "not-included",
        }
    }
}

/// The verdict on each of `members`: `own` is the daemon's own account id when `aws.own-account` serves it, `listed`
/// the account ids of the `[[aws.account]]` entries. An explicit entry comes first (it serves the account whatever
/// the organisation says), then the own account, then the account's state, then `exclude` (which wins over
/// `include`), then `include` (empty: the whole organisation).
pub(crate) fn decide<'a>(
    members: &'a [Member],
    org: &Organization,
    own: Option<&str>,
    listed: &[String],
) -> Vec<(&'a Member, Verdict)> {
    members
        .iter()
        .map(|m| {
            let verdict = if listed.contains(&m.id) {
                Verdict::Listed
            } else if own == Some(m.id.as_str()) {
                Verdict::Own
            } else if m.state == State::Suspended {
                Verdict::Suspended
            } else if m.state != State::Active {
                Verdict::Inactive
            } else if org.exclude.iter().any(|id| names(id, m)) {
                Verdict::Excluded
            } else if !org.include.is_empty() && !org.include.iter().any(|id| names(id, m)) {
                Verdict::NotIncluded
            } else {
                Verdict::Serve
            };
            (m, verdict)
        })
        .collect()
}

/// Whether an `include` / `exclude` id covers `member`: its own id, or any OU above it (however deep), or its root.
fn names(id: &OrgId, member: &Member) -> bool {
    match id {
        OrgId::Account(a) => *a == member.id,
        OrgId::Unit(p) | OrgId::Root(p) => member.parents.contains(p),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ROOT: &str = "r-ab12";
    const APPS: &str = "ou-ab12-apps0001";
    /// Under APPS.
    const PROD: &str = "ou-ab12-prod0001";
    const SANDBOX: &str = "ou-ab12-sand0001";

    fn member(id: &str, state: State, parents: &[&str]) -> Member {
        Member {
            id: id.to_string(),
            partition: "aws".into(),
            state,
            parents: parents.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// An organisation: the management account and a suspended one at the root, one account in APPS, one in PROD
    /// (two levels down: PROD is in APPS), one in SANDBOX, one still joining.
    fn organisation() -> Vec<Member> {
        vec![
            member("111111111111", State::Active, &[ROOT]),
            member("222222222222", State::Active, &[APPS, ROOT]),
            member("333333333333", State::Active, &[PROD, APPS, ROOT]),
            member("444444444444", State::Active, &[SANDBOX, ROOT]),
            member("555555555555", State::Suspended, &[ROOT]),
            member(
                "666666666666",
                State::Other("PENDING_ACTIVATION".into()),
                &[ROOT],
            ),
        ]
    }

    fn id(text: &str) -> OrgId {
        if text.starts_with("ou-") {
            OrgId::Unit(text.into())
        } else if text.starts_with("r-") {
            OrgId::Root(text.into())
        } else {
            OrgId::Account(text.into())
        }
    }

    fn org(include: &[&str], exclude: &[&str]) -> Organization {
        Organization {
            role_name: "snapwarden".into(),
            include: include.iter().map(|i| id(i)).collect(),
            exclude: exclude.iter().map(|i| id(i)).collect(),
            refresh: Duration::from_secs(3600),
            external_id: None,
            session_name: "snapwarden".into(),
        }
    }

    /// `id:verdict` of every member, in the listing's order.
    fn render(org: &Organization, own: Option<&str>, listed: &[&str]) -> Vec<String> {
        let members = organisation();
        let listed: Vec<String> = listed.iter().map(|l| l.to_string()).collect();
        decide(&members, org, own, &listed)
            .into_iter()
            .map(|(m, v)| format!("{}:{}", &m.id[..1], v.as_str()))
            .collect()
    }

    /// (name, organisation config, own account id, listed ids, verdict per member).
    type Case<'a> = (
        &'a str,
        Organization,
        Option<&'a str>,
        &'a [&'a str],
        [&'a str; 6],
    );

    #[test]
    fn members_are_served_by_account_ou_or_root_unless_excluded_suspended_own_or_listed() {
        let own = Some("111111111111");
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("the whole organisation; the own account is served as such", org(&[], &[]), own, &[],
                ["1:own-account", "2:served", "3:served", "4:served", "5:suspended", "6:not-active"]),
            ("own-account = false: the management account through the role", org(&[], &[]), None, &[],
                ["1:served", "2:served", "3:served", "4:served", "5:suspended", "6:not-active"]),
            ("an [[aws.account]] entry wins", org(&[], &[]), own, &["333333333333"],
                ["1:own-account", "2:served", "3:listed-in-aws-account", "4:served", "5:suspended", "6:not-active"]),
            ("include an account", org(&["444444444444"], &[]), own, &[],
                ["1:own-account", "2:not-included", "3:not-included", "4:served", "5:suspended", "6:not-active"]),
            ("include an OU: its accounts, also two levels down", org(&[APPS], &[]), own, &[],
                ["1:own-account", "2:served", "3:served", "4:not-included", "5:suspended", "6:not-active"]),
            ("include the nested OU only", org(&[PROD], &[]), own, &[],
                ["1:own-account", "2:not-included", "3:served", "4:not-included", "5:suspended", "6:not-active"]),
            ("include the root", org(&[ROOT], &[]), None, &[],
                ["1:served", "2:served", "3:served", "4:served", "5:suspended", "6:not-active"]),
            ("include a root of another organisation", org(&["r-zz99"], &[]), None, &[],
                ["1:not-included", "2:not-included", "3:not-included", "4:not-included", "5:suspended", "6:not-active"]),
            ("exclude an account", org(&[], &["222222222222"]), own, &[],
                ["1:own-account", "2:excluded", "3:served", "4:served", "5:suspended", "6:not-active"]),
            ("exclude an OU: also its nested OU", org(&[], &[APPS]), own, &[],
                ["1:own-account", "2:excluded", "3:excluded", "4:served", "5:suspended", "6:not-active"]),
            ("exclude the nested OU inside an included one", org(&[APPS], &[PROD]), own, &[],
                ["1:own-account", "2:served", "3:excluded", "4:not-included", "5:suspended", "6:not-active"]),
            ("exclude the root", org(&[], &[ROOT]), own, &[],
                ["1:own-account", "2:excluded", "3:excluded", "4:excluded", "5:suspended", "6:not-active"]),
            ("a listed account is served by its entry even when excluded", org(&[], &[APPS]), own, &["222222222222"],
                ["1:own-account", "2:listed-in-aws-account", "3:excluded", "4:served", "5:suspended", "6:not-active"]),
            ("a suspended account stays alone even when included by id", org(&["555555555555"], &[]), own, &[],
                ["1:own-account", "2:not-included", "3:not-included", "4:not-included", "5:suspended", "6:not-active"]),
        ];
        for (name, org, own, listed, want) in cases {
            assert_eq!(render(org, *own, listed), *want, "{name}");
        }
    }

    #[test]
    fn states_are_read_as_organizations_spells_them() {
        assert_eq!(State::parse("ACTIVE"), State::Active);
        assert_eq!(State::parse("SUSPENDED"), State::Suspended);
        assert_eq!(
            State::parse("PENDING_CLOSURE"),
            State::Other("PENDING_CLOSURE".into())
        );
    }
}
