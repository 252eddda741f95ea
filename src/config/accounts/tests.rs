use figment::providers::{Format, Toml};
use figment::{Figment, Profile, Provider};

use super::*;
use crate::config::tree::KeyPath;
use crate::config::ConfigIssue;

const PROD: &str = "arn:aws:iam::111111111111:role/snapwarden";
const STAGING: &str = "arn:aws:iam::222222222222:role/ops/snapwarden";

/// Reads the `[aws]` table of `toml` (without its `regions`, given as `regions`) as `sections::aws` would.
fn read(toml: &str, regions: &[&str]) -> (Option<Accounts>, Vec<ConfigIssue>) {
    let figment = Figment::new().merge(Toml::string(toml));
    let mut data = Provider::data(&figment).expect("test TOML");
    let root = data.remove(&Profile::Default).unwrap_or_default();
    let mut cx = Collector::new(&figment);
    let mut root = Table::root(&root);
    let mut aws = root
        .get("aws")
        .map(|f| cx.table(&f, "[aws]").expect("[aws] is a table"));
    let regions: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
    let got = accounts(&mut cx, aws.as_mut(), &regions);
    if let Some(aws) = aws {
        aws.finish(&mut cx);
    }
    (got, cx.into_problems())
}

fn good(toml: &str, regions: &[&str]) -> Accounts {
    match read(toml, regions) {
        (Some(accounts), problems) if problems.is_empty() => accounts,
        (_, problems) => panic!("expected no problems, got {problems:#?}"),
    }
}

/// The only problem, which must be at `key`; the accounts are refused.
fn only_problem(toml: &str, regions: &[&str], key: &str) -> ConfigIssue {
    let (got, problems) = read(toml, regions);
    assert_eq!(got, None, "{problems:#?}");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, [key], "{problems:#?}");
    problems.into_iter().next().unwrap()
}

fn entry(fields: &str) -> String {
    format!("[[aws.account]]\n{fields}\n")
}

#[test]
fn without_any_key_the_daemon_serves_its_own_account_as_today() {
    assert_eq!(good("", &["us-east-1"]), Accounts::default());
    let own = good("[aws]\n", &[]);
    assert!(own.own && own.organization.is_none());
}

#[test]
fn every_account_key_is_read_and_the_defaults_are_filled_in() {
    let got = good(
        &format!(
            "[aws]\nown-account = false\n{}{}",
            entry(&format!(
                "role-arn = \"{PROD}\"\nname = \"prod\"\nexternal-id = \"snapwarden-7f3a:x/y=z\"\n\
                 session-name = \"backup@ops.example\"\nregions = [\"eu-west-1\"]"
            )),
            entry(&format!("role-arn = \"{STAGING}\"")),
        ),
        &["us-east-1", "us-west-2"],
    );
    assert!(!got.own);
    assert_eq!(got.organization, None);
    assert_eq!(
        got.listed,
        [
            Account {
                name: "prod".into(),
                role_arn: PROD.into(),
                account_id: "111111111111".into(),
                external_id: Some("snapwarden-7f3a:x/y=z".into()),
                session_name: "backup@ops.example".into(),
                regions: vec!["eu-west-1".into()],
            },
            Account {
                name: "222222222222".into(),
                role_arn: STAGING.into(),
                account_id: "222222222222".into(),
                external_id: None,
                session_name: DEFAULT_SESSION_NAME.into(),
                regions: vec!["us-east-1".into(), "us-west-2".into()],
            },
        ]
    );
}

#[test]
fn role_arns_of_other_partitions_follow_aws_regions() {
    let got = good(
        &entry("role-arn = \"arn:aws-us-gov:iam::111111111111:role/snapwarden\""),
        &["us-gov-west-1"],
    );
    assert_eq!(got.listed[0].account_id, "111111111111");
    let got = good(
        &entry("role-arn = \"arn:aws-cn:iam::111111111111:role/snapwarden\"\nregions = [\"cn-north-1\"]"),
        &[],
    );
    assert_eq!(got.listed[0].regions, ["cn-north-1"]);

    let p = only_problem(
        &entry(&format!("role-arn = \"{PROD}\"")),
        &["us-gov-west-1"],
        "aws.account[111111111111].role-arn",
    );
    assert!(
        p.message.contains(
            "is a role in partition aws, but aws.regions' us-gov-west-1 is in aws-us-gov"
        ),
        "{p}"
    );
    assert!(p.fix.contains("arn:aws-us-gov:iam::"), "{p}");

    let p = only_problem(
        &entry(&format!(
            "role-arn = \"{PROD}\"\nname = \"prod\"\nregions = [\"cn-north-1\"]"
        )),
        &[],
        "aws.account[prod].regions",
    );
    assert!(
        p.message
            .contains("`cn-north-1` is in partition aws-cn, the account's role in aws"),
        "{p}"
    );
}

#[test]
fn a_bad_role_arn_names_the_key_what_is_wrong_and_an_example() {
    for (arn, why) in [
        ("snapwarden", "does not start with `arn:`"),
        ("arn:aws:iam::111111111111", "6 `:`-separated parts"),
        ("arn:aws:sts::111111111111:role/x", "service `sts`, not iam"),
        (
            "arn:aws:iam:us-east-1:111111111111:role/x",
            "IAM ARNs have none",
        ),
        ("arn:aws:iam::1111:role/x", "not a 12-digit account id"),
        ("arn:aws:iam::111111111111:user/x", "not role/NAME"),
        ("arn:aws:iam::111111111111:role/", "no role name"),
        ("arn:aws:iam::111111111111:role/bad name", "no role name"),
        (
            "arn:aws:iam::111111111111:role/ops//x",
            "a path that is not",
        ),
    ] {
        let p = only_problem(
            &entry(&format!("role-arn = \"{arn}\"\nname = \"prod\"")),
            &["us-east-1"],
            "aws.account[prod].role-arn",
        );
        assert!(p.message.starts_with(&format!("`{arn}` ")), "{p}");
        assert!(p.message.contains(why), "{arn}: {p}");
        assert!(
            p.fix.contains("arn:aws:iam::111122223333:role/snapwarden"),
            "{p}"
        );
    }
    let p = only_problem(
        &entry("name = \"prod\""),
        &["us-east-1"],
        "aws.account[prod].role-arn",
    );
    assert!(p.message.starts_with("missing"), "{p}");
    // An entry with neither a usable name nor ARN keeps its position label.
    let p = only_problem(
        &entry("role-arn = \"nope\""),
        &["us-east-1"],
        "aws.account[#1].role-arn",
    );
    assert!(p.message.contains("does not start with `arn:`"), "{p}");
}

#[test]
fn names_are_short_lowercase_labels_and_not_own() {
    for (name, why) in [
        ("Prod", "lowercase letters, digits or `-`"),
        ("prod_eu", "lowercase letters, digits or `-`"),
        ("", "lowercase letters, digits or `-`"),
        (
            "a-name-longer-than-thirty-two-chars",
            "1 to 32 lowercase letters",
        ),
        ("own", "the name of the daemon's own account"),
        (
            "222222222222",
            "is another account's id (the role is in 111111111111)",
        ),
    ] {
        let p = only_problem(
            &entry(&format!("role-arn = \"{PROD}\"\nname = \"{name}\"")),
            &["us-east-1"],
            // A name that cannot be one is no label either: the entry goes by its account id.
            "aws.account[111111111111].name",
        );
        assert!(p.message.contains(why), "{name}: {p}");
        assert!(p.fix.contains("name = \"prod\""), "{p}");
    }
    // Its own account id is a fine name: it is the default.
    let got = good(
        &entry(&format!("role-arn = \"{PROD}\"\nname = \"111111111111\"")),
        &["us-east-1"],
    );
    assert_eq!(got.listed[0].name, "111111111111");
}

#[test]
fn an_account_listed_twice_names_both_entries() {
    let p = only_problem(
        &format!(
            "{}{}",
            entry(&format!("role-arn = \"{PROD}\"\nname = \"prod\"")),
            entry("role-arn = \"arn:aws:iam::111111111111:role/other\"\nname = \"prod-eu\""),
        ),
        &["us-east-1"],
        "aws.account[prod-eu].role-arn",
    );
    assert!(
        p.message
            .contains("account 111111111111 is already served by aws.account[prod]"),
        "{p}"
    );
    assert!(p.fix.contains("all its regions in its regions list"), "{p}");

    // Two without names: reported once, as the same account, the second by its position.
    let p = only_problem(
        &format!(
            "{}{}",
            entry(&format!("role-arn = \"{PROD}\"")),
            entry(&format!("role-arn = \"{PROD}\"")),
        ),
        &["us-east-1"],
        "aws.account[#2].role-arn",
    );
    assert!(
        p.message
            .contains("already served by aws.account[111111111111]"),
        "{p}"
    );
}

#[test]
fn a_name_used_twice_names_the_first() {
    let p = only_problem(
        &format!(
            "{}{}",
            entry(&format!("role-arn = \"{PROD}\"\nname = \"prod\"")),
            entry(&format!("role-arn = \"{STAGING}\"\nname = \"prod\"")),
        ),
        &["us-east-1"],
        "aws.account[#2].name",
    );
    assert!(
        p.message
            .contains("account name `prod` is already used by aws.account[prod]"),
        "{p}"
    );
    assert!(p.fix.contains("a different name"), "{p}");
}

#[test]
fn external_ids_and_session_names_follow_assume_roles_rules() {
    for (key, value, why) in [
        ("external-id", "x", "not an ExternalId"),
        ("external-id", "has space", "not an ExternalId"),
        ("external-id", &"x".repeat(1225), "not an ExternalId"),
        ("session-name", "a", "not a RoleSessionName"),
        ("session-name", "a/b", "not a RoleSessionName"),
        ("session-name", &"s".repeat(65), "not a RoleSessionName"),
    ] {
        let p = only_problem(
            &entry(&format!(
                "role-arn = \"{PROD}\"\nname = \"prod\"\n{key} = \"{value}\""
            )),
            &["us-east-1"],
            &format!("aws.account[prod].{key}"),
        );
        assert!(p.message.contains(why), "{key} = {value}: {p}");
        assert!(p.fix.contains(key), "{p}");
    }
    let got = good(
        &entry(&format!(
            "role-arn = \"{PROD}\"\nexternal-id = \"{}\"\nsession-name = \"{}\"",
            "e".repeat(1224),
            "s".repeat(64)
        )),
        &["us-east-1"],
    );
    assert_eq!(
        got.listed[0].external_id.as_deref().map(str::len),
        Some(1224)
    );
}

#[test]
fn an_entrys_regions_are_read_like_aws_regions() {
    let p = only_problem(
        &entry(&format!(
            "role-arn = \"{PROD}\"\nname = \"prod\"\nregions = [\"us-east-1a\"]"
        )),
        &["us-east-1"],
        "aws.account[prod].regions[#1]",
    );
    assert!(p.message.contains("is not an AWS region code"), "{p}");
    let p = only_problem(
        &entry(&format!(
            "role-arn = \"{PROD}\"\nname = \"prod\"\nregions = [\"eu-west-1\", \"eu-west-1\"]"
        )),
        &["us-east-1"],
        "aws.account[prod].regions[#2]",
    );
    assert!(p.message.contains("listed twice"), "{p}");
    let p = only_problem(
        &entry(&format!(
            "role-arn = \"{PROD}\"\nname = \"prod\"\nregions = []"
        )),
        &["us-east-1"],
        "aws.account[prod].regions",
    );
    assert!(p.fix.contains("remove the key to serve aws.regions"), "{p}");
}

#[test]
fn unknown_keys_and_wrong_shapes_are_reported_at_their_path() {
    let (got, problems) = read(
        &entry(&format!(
            "role-arn = \"{PROD}\"\nname = \"prod\"\nexternal_id = \"abc\""
        )),
        &["us-east-1"],
    );
    assert_eq!(got, None);
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["aws.account[prod].external_id"], "{problems:#?}");
    assert!(
        problems[0].fix.contains("did you mean `external-id`"),
        "{problems:#?}"
    );

    let p = only_problem(
        &format!("[aws.account]\nrole-arn = \"{PROD}\"\n"),
        &["us-east-1"],
        "aws.account",
    );
    assert!(p.message.contains("expected an array"), "{p}");
    assert!(p.fix.contains("[[aws.account]]"), "{p}");
    let p = only_problem(
        "[aws]\nown-account = \"no\"\n",
        &["us-east-1"],
        "aws.own-account",
    );
    assert!(p.message.contains("expected true or false"), "{p}");
}

#[test]
fn leaving_out_the_own_account_needs_something_else_to_serve() {
    let p = only_problem(
        "[aws]\nown-account = false\n",
        &["us-east-1"],
        "aws.own-account",
    );
    assert!(p.message.contains("no account is served"), "{p}");
    assert!(p.fix.contains("[[aws.account]]"), "{p}");
    assert!(p.fix.contains("[aws.organization]"), "{p}");
    assert!(p.fix.contains("remove own-account = false"), "{p}");

    // A wrong entry is reported as itself, not also as "nothing served".
    let p = only_problem(
        &format!(
            "[aws]\nown-account = false\n{}",
            entry("role-arn = \"nope\"")
        ),
        &["us-east-1"],
        "aws.account[#1].role-arn",
    );
    assert!(p.message.contains("nope"), "{p}");

    let got = good(
        "[aws]\nown-account = false\n[aws.organization]\nrole-name = \"snapwarden\"\n",
        &["us-east-1"],
    );
    assert!(!got.own && got.listed.is_empty());
}

#[test]
fn the_organization_is_read_with_its_defaults() {
    let got = good(
        "[aws.organization]\nrole-name = \"snapwarden\"\n",
        &["us-east-1"],
    );
    assert_eq!(
        got.organization,
        Some(Organization {
            role_name: "snapwarden".into(),
            include: vec![],
            exclude: vec![],
            refresh: DEFAULT_ORGANIZATION_REFRESH,
            external_id: None,
            session_name: DEFAULT_SESSION_NAME.into(),
        })
    );
    let got = good(
        "[aws.organization]\nrole-name = \"ops/snapwarden\"\n\
         include = [\"r-ab12\", \"ou-ab12-cdef3456\"]\nexclude = [\"111111111111\", \"ou-ab12-99999999\"]\n\
         refresh = \"15m\"\nexternal-id = \"org-7f3a\"\nsession-name = \"snapwarden-org\"\n",
        &["us-east-1"],
    );
    assert_eq!(
        got.organization,
        Some(Organization {
            role_name: "ops/snapwarden".into(),
            include: vec![
                OrgId::Root("r-ab12".into()),
                OrgId::Unit("ou-ab12-cdef3456".into())
            ],
            exclude: vec![
                OrgId::Account("111111111111".into()),
                OrgId::Unit("ou-ab12-99999999".into())
            ],
            refresh: Duration::from_secs(15 * 60),
            external_id: Some("org-7f3a".into()),
            session_name: "snapwarden-org".into(),
        })
    );
}

#[test]
fn organization_problems_name_their_key_and_fix() {
    let org = |body: &str| format!("[aws.organization]\n{body}\n");
    let p = only_problem(
        &org("refresh = \"1h\""),
        &["us-east-1"],
        "aws.organization.role-name",
    );
    assert!(p.message.starts_with("missing"), "{p}");
    assert!(p.fix.contains("role-name = \"snapwarden\""), "{p}");

    let p = only_problem(
        &org(&format!("role-name = \"{PROD}\"")),
        &["us-east-1"],
        "aws.organization.role-name",
    );
    assert!(p.message.contains("is an ARN"), "{p}");
    assert!(p.fix.contains("the role's name alone"), "{p}");
    let p = only_problem(
        &org("role-name = \"snap warden\""),
        &["us-east-1"],
        "aws.organization.role-name",
    );
    assert!(p.message.contains("no role name"), "{p}");

    for (refresh, why) in [("1m", "outside 5m to 1day"), ("2d", "outside 5m to 1day")] {
        let p = only_problem(
            &org(&format!(
                "role-name = \"snapwarden\"\nrefresh = \"{refresh}\""
            )),
            &["us-east-1"],
            "aws.organization.refresh",
        );
        assert!(p.message.contains(why), "{refresh}: {p}");
        assert!(p.fix.contains("refresh = \"1h\""), "{p}");
    }

    for bad in [
        "11111111111",
        "ou-ab1-cdef3456",
        "ou-ab12-cdef345",
        "ou-AB12-cdef3456",
        "r-ab1",
        "o-ab12cd34ef",
    ] {
        let p = only_problem(
            &org(&format!(
                "role-name = \"snapwarden\"\ninclude = [\"{bad}\"]"
            )),
            &["us-east-1"],
            "aws.organization.include[#1]",
        );
        assert!(
            p.message
                .contains("is not an account id, an OU id or a root id"),
            "{bad}: {p}"
        );
        assert!(p.fix.contains("ou-ab12-cdef3456"), "{p}");
    }

    let p = only_problem(
        &org("role-name = \"snapwarden\"\ninclude = [\"r-ab12\", \"r-ab12\"]"),
        &["us-east-1"],
        "aws.organization.include[#2]",
    );
    assert!(p.message.contains("listed twice"), "{p}");
    let p = only_problem(
        &org("role-name = \"snapwarden\"\ninclude = [\"ou-ab12-cdef3456\"]\nexclude = [\"ou-ab12-cdef3456\"]"),
        &["us-east-1"],
        "aws.organization.exclude[#1]",
    );
    assert!(p.message.contains("also in include"), "{p}");
    let p = only_problem(
        &org("role-name = \"snapwarden\"\ninclude = []"),
        &["us-east-1"],
        "aws.organization.include",
    );
    assert!(p.fix.contains("include the whole organisation"), "{p}");
    let p = only_problem(
        &org("role-name = \"snapwarden\"\nexternal-id = \"x\""),
        &["us-east-1"],
        "aws.organization.external-id",
    );
    assert!(p.message.contains("not an ExternalId"), "{p}");
}

/// Checks `accounts = …` (`list`, TOML) of policy `web` against `accounts`.
fn policy(list: &str, accounts: &Accounts) -> (Option<Vec<String>>, Vec<ConfigIssue>) {
    let toml = format!("accounts = {list}\n");
    let figment = Figment::new().merge(Toml::string(&toml));
    let mut data = Provider::data(&figment).expect("test TOML");
    let root = data.remove(&Profile::Default).unwrap_or_default();
    let mut cx = Collector::new(&figment);
    let mut t = Table::root(&root);
    t.path = KeyPath::default().key("policy").item(0, Some("web"));
    let f = t.get("accounts").expect("written above");
    let got = policy_accounts(&mut cx, &f, accounts);
    (got, cx.into_problems())
}

fn served() -> Accounts {
    good(
        &format!(
            "{}{}",
            entry(&format!("role-arn = \"{PROD}\"\nname = \"prod\"")),
            entry(&format!("role-arn = \"{STAGING}\"")),
        ),
        &["us-east-1"],
    )
}

fn policy_problem(list: &str, accounts: &Accounts, key: &str) -> ConfigIssue {
    let (got, problems) = policy(list, accounts);
    assert_eq!(got, None, "{problems:#?}");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, [key], "{problems:#?}");
    problems.into_iter().next().unwrap()
}

#[test]
fn a_policy_names_accounts_by_name_the_unnamed_by_id_and_its_own_as_own() {
    let (got, problems) = policy(r#"["prod", "222222222222", "own"]"#, &served());
    assert_eq!(problems, []);
    assert_eq!(
        got,
        Some(vec!["prod".into(), "222222222222".into(), "own".into()])
    );
}

#[test]
fn a_policys_unknown_account_names_the_known_ones() {
    let p = policy_problem(
        r#"["prod", "staging"]"#,
        &served(),
        "policy[web].accounts[#2]",
    );
    assert!(
        p.message
            .contains("`staging` is not an account the daemon serves"),
        "{p}"
    );
    assert!(
        p.fix.contains("write one of: own, prod, 222222222222"),
        "{p}"
    );

    // A named account's id points at its name.
    let p = policy_problem(r#"["111111111111"]"#, &served(), "policy[web].accounts[#1]");
    assert!(
        p.message.contains("account 111111111111 is named `prod`"),
        "{p}"
    );
    assert!(p.fix.contains("write \"prod\""), "{p}");

    let mut without_own = served();
    without_own.own = false;
    let p = policy_problem(r#"["own"]"#, &without_own, "policy[web].accounts[#1]");
    assert!(
        p.message.contains("aws.own-account = false leaves out"),
        "{p}"
    );
    assert!(
        p.fix
            .contains("the accounts served are: prod, 222222222222"),
        "{p}"
    );

    let p = policy_problem(r#"["prod", "prod"]"#, &served(), "policy[web].accounts[#2]");
    assert!(p.message.contains("listed twice"), "{p}");
    let p = policy_problem("[]", &served(), "policy[web].accounts");
    assert!(
        p.fix
            .contains("remove the key to apply it to every account"),
        "{p}"
    );
    let p = policy_problem(r#""prod""#, &served(), "policy[web].accounts");
    assert!(p.message.contains("expected an array"), "{p}");
}

#[test]
fn with_an_organization_a_policy_may_name_a_discovered_account_by_id() {
    let mut accounts = served();
    // Without discovery an unknown id is no account the daemon serves.
    let p = policy_problem(r#"["333333333333"]"#, &accounts, "policy[web].accounts[#1]");
    assert!(
        p.message.contains("not an account the daemon serves"),
        "{p}"
    );
    accounts.organization = good(
        "[aws.organization]\nrole-name = \"snapwarden\"\n",
        &["us-east-1"],
    )
    .organization;
    let (got, problems) = policy(r#"["333333333333", "prod"]"#, &accounts);
    assert_eq!(problems, []);
    assert_eq!(got, Some(vec!["333333333333".into(), "prod".into()]));
    // A name still has to be one.
    policy_problem(r#"["stagin"]"#, &accounts, "policy[web].accounts[#1]");
}

/// The shipped example of README's "Many accounts" means what its comments say.
#[test]
fn the_multi_account_example_serves_its_own_account_two_listed_ones_and_an_ou() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/multi-account.toml");
    let config = crate::config::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
    let accounts = &config.aws.accounts;
    assert!(accounts.own);
    // (name, account id, external id, session name, regions)
    type Entry<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, Vec<&'a str>);
    let listed: Vec<Entry> = accounts
        .listed
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.account_id.as_str(),
                a.external_id.as_deref(),
                a.session_name.as_str(),
                a.regions.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let id = Some("snapwarden-7f3a91c2");
    assert_eq!(
        listed,
        [
            (
                "prod",
                "111122223333",
                id,
                "snapwarden",
                vec!["us-east-1", "eu-west-1"]
            ),
            (
                "staging",
                "444455556666",
                id,
                "snapwarden",
                vec!["us-east-1"]
            ),
        ]
    );
    assert_eq!(
        accounts.organization,
        Some(Organization {
            role_name: "snapwarden".into(),
            include: vec![OrgId::Unit("ou-ab12-workload1".into())],
            exclude: vec![
                OrgId::Unit("ou-ab12-sandbox01".into()),
                OrgId::Account("777788889999".into())
            ],
            refresh: DEFAULT_ORGANIZATION_REFRESH,
            external_id: id.map(String::from),
            session_name: DEFAULT_SESSION_NAME.into(),
        })
    );
    let served: Vec<Option<Vec<String>>> =
        config.policies.iter().map(|p| p.accounts.clone()).collect();
    let prod_and_own: Vec<String> = vec!["prod".into(), OWN.into()];
    assert_eq!(served, [None, Some(prod_and_own)]);
}
