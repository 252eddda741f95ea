//! `[[policy.schedule.copy]]`: a schedule's disaster-recovery copies to other regions — the destination, the keep
//! rules its copies are pruned by there, their encryption and whether the source's own tags go along — read and
//! checked with the same collector as the rest of the file.
//!
//! What it checks beyond types: the destination is a region code (by shape, like `aws.regions`, so a region AWS
//! opens next year needs no release); it is none of `aws.regions` (every region a policy snapshots copies to every
//! destination of its schedules, so a destination that is also a source would copy that region's snapshots within
//! it, which survives no region outage); it is in the same partition as those regions (CopySnapshot does not cross
//! from commercial AWS to China or GovCloud); it is listed once per schedule; a schedule has at most
//! [`MAX_COPY_DESTINATIONS`]; `keep` is the schedule's own keep table (the same parser, calendar rules included)
//! and not empty; `kms-key-id` is a key id, alias or ARN, an ARN in the destination region, and not next to
//! `encrypted = false`. With `aws.regions` empty the source region is the SDK's, known only when a run starts: the
//! run has to check it then. This module does not decide what to copy (`retention::copies` does) and copies
//! nothing.

use super::sections::{arn, check_region, is_account, keep};
use super::tree::{Collector, Field, Table};
use crate::retention::KeepRules;

/// Destinations per schedule. Data Lifecycle Manager's limit (three cross-Region copy rules per schedule), which
/// operators moving from it know. Every destination adds a survey and a completion poll per run and one more
/// plan that may hold source snapshots back from pruning (a region whose copies keep failing holds them), so the
/// number stays small; and starting strict is the reversible choice: raising the limit later breaks no config,
/// lowering it would.
pub(crate) const MAX_COPY_DESTINATIONS: usize = 3;

/// One destination of a schedule's copies.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRule {
    /// `region`: where the copies are made (CopySnapshot goes to this region's endpoint).
    pub region: String,
    /// `keep`: what the destination keeps of the copies, per source volume; judged like a schedule's rules.
    pub keep: KeepRules,
    pub encryption: Encryption,
    /// `copy-tags` (default false): whether the source snapshot's own tags go along; snapwarden's always do.
    pub copy_tags: bool,
}

/// How a copy is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// `encrypted = false` or absent: CopySnapshot gets no `Encrypted`, so the copy is encrypted when its source is
    /// (or when the destination encrypts new EBS data by default), with the destination's default EBS key.
    AsSource,
    /// `encrypted = true`, or a `kms-key-id` (which implies it): the copy is encrypted, with that key or else the
    /// destination's default EBS key.
    Encrypted { kms_key_id: Option<String> },
}

const EXAMPLE: &str =
    "[[policy.schedule.copy]] tables, each with region and keep, e.g. region = \"eu-west-1\", \
                       keep = { weekly = 4 }";
const KEEP_EXAMPLE: &str =
    "keep = { weekly = 4 } (or last = 7, daily = 7, monthly = 12, within = \"30d\", …)";

/// Reads the `copy` array of a schedule's table `schedule`: `Some(empty)` when there is none, `None` when an
/// entry is wrong (reported). `source_regions` is `aws.regions`, the regions the policy snapshots.
pub(super) fn copies(
    cx: &mut Collector<'_>,
    schedule: &mut Table<'_>,
    source_regions: &[String],
) -> Option<Vec<CopyRule>> {
    let Some(f) = schedule.get("copy") else {
        return Some(Vec::new());
    };
    let items = cx.array(&f, EXAMPLE)?;
    let mut complete = true;
    if items.len() > MAX_COPY_DESTINATIONS {
        cx.problem(
            &f,
            format!(
                "{} copy destinations: a schedule copies to at most {MAX_COPY_DESTINATIONS} regions",
                items.len()
            ),
            format!(
                "keep the {MAX_COPY_DESTINATIONS} regions that matter most for recovery, or give another schedule \
                 of the policy the others"
            ),
        );
        complete = false;
    }
    // Each destination with the position of the entry that named it first.
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            path: f.path.item(i, None),
            value: item,
        };
        let Some(mut t) = cx.table(&field, EXAMPLE) else {
            complete = false;
            continue;
        };
        let region = region(cx, &mut t, source_regions, &seen);
        if let Some(region) = &region {
            seen.push((region.clone(), i));
            // Labelled by its region from here on, as schedules are by name: `copy[eu-west-1].keep`.
            t.path = f.path.item(i, Some(region));
        }
        let rule = rule(cx, &mut t, region);
        t.finish(cx);
        match rule {
            Some(rule) => out.push(rule),
            None => complete = false,
        }
    }
    complete.then_some(out)
}

/// `region`, checked against the policy's regions and the entries before it (`seen`).
fn region(
    cx: &mut Collector<'_>,
    t: &mut Table<'_>,
    source_regions: &[String],
    seen: &[(String, usize)],
) -> Option<String> {
    let Some(f) = t.get("region") else {
        cx.missing(
            &t.path.key("region"),
            "missing: the copy does not say which region to copy to",
            "add region = \"eu-west-1\" (a region the policy does not snapshot)",
        );
        return None;
    };
    let region = cx
        .string(&f, "region = \"eu-west-1\"")
        .and_then(|r| check_region(cx, &f, &r))?;
    if source_regions.contains(&region) {
        let others: Vec<&str> = source_regions
            .iter()
            .filter(|r| **r != region)
            .map(String::as_str)
            .collect();
        let fix = if others.is_empty() {
            "copy to another region (a copy in the same region is lost with it), or snapshot in another region"
                .to_string()
        } else {
            format!(
                "copy to a region aws.regions does not list (a copy in the same region is lost with it), or \
                 remove {region} from aws.regions if its volumes are not this policy's to snapshot; aws.regions \
                 also lists {}",
                others.join(", ")
            )
        };
        cx.problem(
            &f,
            format!(
                "`{region}` is one of aws.regions, which the policy snapshots: its snapshots would be copied \
                 within {region}"
            ),
            fix,
        );
        return None;
    }
    if let Some(source) = source_regions
        .iter()
        .find(|s| partition(s) != partition(&region))
    {
        cx.problem(
            &f,
            format!(
                "`{region}` is in partition {}, the policy's region {source} in {}: CopySnapshot does not copy \
                 between partitions",
                partition(&region),
                partition(source)
            ),
            format!(
                "copy to a region of partition {}; a partition's volumes are copied within it, by a snapwarden \
                 with that partition's credentials",
                partition(source)
            ),
        );
        return None;
    }
    if let Some((_, first)) = seen.iter().find(|(r, _)| *r == region) {
        cx.problem(
            &f,
            format!(
                "region `{region}` is already the destination of copy #{}",
                first + 1
            ),
            "list each destination once per schedule: one copy entry per region, with all its keep rules in one \
             keep table",
        );
        return None;
    }
    Some(region)
}

/// The rest of a copy entry; `region` is `None` when it was missing or wrong (already reported).
fn rule(cx: &mut Collector<'_>, t: &mut Table<'_>, region: Option<String>) -> Option<CopyRule> {
    let keep = match t.get("keep") {
        None => {
            cx.missing(
                &t.path.key("keep"),
                "missing: nothing says how many copies the destination keeps",
                format!("add {KEEP_EXAMPLE}"),
            );
            None
        }
        Some(f) => cx.table(&f, KEEP_EXAMPLE).and_then(|mut k| {
            let rules = keep(cx, &mut k);
            k.finish(cx);
            // `app-consistent-only` alone is no rule either: `is_empty` does not count it.
            if rules.as_ref().is_some_and(KeepRules::is_empty) {
                cx.problem(
                    &f,
                    "no keep rule: nothing says how many copies the destination keeps",
                    format!("write {KEEP_EXAMPLE}; copies have no count-tag"),
                );
                return None;
            }
            rules
        }),
    };

    let encrypted = t
        .get("encrypted")
        .map(|f| (cx.bool(&f, "encrypted = true"), f));
    // Outer `None`: not written; `Some(None)`: written but unusable (already reported).
    let kms_key_id: Option<Option<String>> = t.get("kms-key-id").map(|f| {
        let key = cx.string(&f, "kms-key-id = \"alias/dr-snapshots\"")?;
        match kms_key_problem(&key, region.as_deref()) {
            None => Some(key),
            Some((why, fix)) => {
                cx.problem(&f, format!("`{key}` {why}"), fix);
                None
            }
        }
    });
    let encryption = match (encrypted, kms_key_id) {
        (Some((None, _)), _) | (_, Some(None)) => None,
        (Some((Some(false), f)), Some(Some(_))) => {
            cx.problem(
                &f,
                "encrypted = false next to kms-key-id, which re-encrypts the copy with that key",
                "remove encrypted = false (kms-key-id implies encrypted = true), or remove kms-key-id to keep the \
                 source's encryption",
            );
            None
        }
        (_, Some(Some(key))) => Some(Encryption::Encrypted {
            kms_key_id: Some(key),
        }),
        (Some((Some(true), _)), None) => Some(Encryption::Encrypted { kms_key_id: None }),
        (Some((Some(false), _)) | None, None) => Some(Encryption::AsSource),
    };

    let copy_tags = match t.get("copy-tags") {
        None => Some(false),
        Some(f) => cx.bool(&f, "copy-tags = true"),
    };

    Some(CopyRule {
        region: region?,
        keep: keep?,
        encryption: encryption?,
        copy_tags: copy_tags?,
    })
}

/// The partition a region code belongs to, by its shape: `cn-…` (aws-cn), `us-gov-…` (aws-us-gov), `us-iso-…`,
/// `us-isob-…`, `eu-isoe-…` (aws-iso, aws-iso-b, aws-iso-e, …), else aws.
pub(super) fn partition(region: &str) -> String {
    let mut parts = region.split('-');
    let (first, second) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (first, second) {
        ("cn", _) => "aws-cn".to_string(),
        (_, "gov") => "aws-us-gov".to_string(),
        (_, "iso") => "aws-iso".to_string(),
        (_, iso) if iso.starts_with("iso") => format!("aws-iso-{}", &iso[3..]),
        _ => "aws".to_string(),
    }
}

/// Why `key` cannot be CopySnapshot's `KmsKeyId` in `region` (the destination, when known), with the fix: it
/// must be a key id (a UUID, or `mrk-` and 32 hex digits for a multi-Region key), an alias (`alias/NAME`), or
/// the ARN of either — and an ARN must name the destination region, where the copy is encrypted.
fn kms_key_problem(key: &str, region: Option<&str>) -> Option<(String, String)> {
    const FIX: &str = "write a key id (1234abcd-12ab-34cd-56ef-1234567890ab, or mrk-… for a multi-Region key), an \
                       alias (alias/dr-snapshots) or the ARN of either \
                       (arn:aws:kms:eu-west-1:123456789012:key/…)";
    let problem = |why: String| Some((why, FIX.to_string()));
    if !key.starts_with("arn:") {
        return match key.strip_prefix("alias/") {
            Some(name) => alias_problem(name).and_then(|why| problem(why.to_string())),
            None if is_key_id(key) => None,
            None => problem("is neither a key id, an alias/NAME nor a key or alias ARN".into()),
        };
    };
    let (arn_region, account, resource) = match arn(key, "kms") {
        Ok(parts) => parts,
        Err(why) => return problem(why),
    };
    if !is_account(account) {
        return problem(format!(
            "has account part `{account}`, not a 12-digit account id"
        ));
    }
    let resource_ok = match (
        resource.strip_prefix("key/"),
        resource.strip_prefix("alias/"),
    ) {
        (Some(id), _) => is_key_id(id),
        (_, Some(name)) => alias_problem(name).is_none(),
        _ => false,
    };
    if !resource_ok {
        return problem(format!(
            "ends in `{resource}`, neither key/KEY-ID nor alias/NAME"
        ));
    }
    match region {
        Some(region) if region != arn_region => Some((
            format!("is a key in {arn_region}, but the copy is made and encrypted in {region}"),
            format!(
                "use a key in {region} (a multi-Region key's replica there will do), or its alias or id alone, \
                 which {region} resolves"
            ),
        )),
        _ => None,
    }
}

/// A KMS key id: a UUID, or `mrk-` and 32 hex digits.
fn is_key_id(id: &str) -> bool {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(mrk) = id.strip_prefix("mrk-") {
        return mrk.len() == 32 && hex(mrk);
    }
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g))
}

/// Why `name` (after `alias/`) is not a KMS alias name: 1 to 250 letters, digits, `/`, `_` or `-`.
fn alias_problem(name: &str) -> Option<&'static str> {
    let ok = (1..=250).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-'));
    (!ok).then_some("is not alias/NAME with a NAME of 1 to 250 letters, digits, `/`, `_` or `-`")
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};
    use figment::{Figment, Profile, Provider};

    use super::*;
    use crate::config::tree::KeyPath;
    use crate::config::ConfigIssue;
    use crate::retention::Count;

    /// Reads the `copy` entries of a schedule written as `toml` (its `[[copy]]` tables), as policy `prod`'s schedule
    /// `daily` in a config whose `aws.regions` is `regions`.
    fn read(toml: &str, regions: &[&str]) -> (Option<Vec<CopyRule>>, Vec<ConfigIssue>) {
        let figment = Figment::new().merge(Toml::string(toml));
        let mut data = Provider::data(&figment).expect("test TOML");
        let root = data.remove(&Profile::Default).unwrap_or_default();
        let mut cx = Collector::new(&figment);
        let mut t = Table::root(&root);
        t.path = KeyPath::default()
            .key("policy")
            .item(0, Some("prod"))
            .key("schedule")
            .item(0, Some("daily"));
        let regions: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        let rules = copies(&mut cx, &mut t, &regions);
        t.finish(&mut cx);
        (rules, cx.into_problems())
    }

    fn rules(toml: &str, regions: &[&str]) -> Vec<CopyRule> {
        match read(toml, regions) {
            (Some(rules), problems) if problems.is_empty() => rules,
            (_, problems) => panic!("expected no problems, got {problems:#?}"),
        }
    }

    /// The only problem, which must be at `key`; the entries are refused.
    fn only_problem(toml: &str, regions: &[&str], key: &str) -> ConfigIssue {
        let (rules, problems) = read(toml, regions);
        assert_eq!(rules, None, "{problems:#?}");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, [key], "{problems:#?}");
        problems.into_iter().next().unwrap()
    }

    #[test]
    fn a_schedule_without_copies_has_none() {
        assert_eq!(rules("", &["us-east-1"]), []);
    }

    #[test]
    fn every_key_is_read_and_the_defaults_are_as_source_without_tags() {
        let got = rules(
            r#"
[[copy]]
region = "eu-west-1"
keep = { weekly = 4, monthly = 12, within-daily = "7d" }
[[copy]]
region = "ap-southeast-4"
keep = { last = 3 }
encrypted = true
copy-tags = true
[[copy]]
region = "eu-central-2"
keep = { all = true }
kms-key-id = "arn:aws:kms:eu-central-2:123456789012:key/mrk-0123456789abcdef0123456789abcdef"
"#,
            &["us-east-1", "us-west-2"],
        );
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].region, "eu-west-1");
        assert_eq!(got[0].keep.weekly, Some(Count::N(4)));
        assert_eq!(got[0].keep.monthly, Some(Count::N(12)));
        assert_eq!(
            got[0].keep.within_daily,
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert_eq!(got[0].encryption, Encryption::AsSource);
        assert!(!got[0].copy_tags);
        assert_eq!(got[1].region, "ap-southeast-4");
        assert_eq!(got[1].keep.last, Some(3));
        assert_eq!(
            got[1].encryption,
            Encryption::Encrypted { kms_key_id: None }
        );
        assert!(got[1].copy_tags);
        assert!(got[2].keep.all);
        assert_eq!(
            got[2].encryption,
            Encryption::Encrypted {
                kms_key_id: Some(
                    "arn:aws:kms:eu-central-2:123456789012:key/mrk-0123456789abcdef0123456789abcdef".into()
                )
            }
        );
    }

    #[test]
    fn with_no_aws_regions_any_region_code_is_a_destination() {
        // The SDK's region is only known at run time; the run checks it there.
        let got = rules(
            "[[copy]]\nregion = \"us-east-1\"\nkeep = { last = 7 }\n",
            &[],
        );
        assert_eq!(got[0].region, "us-east-1");
    }

    #[test]
    fn destinations_are_region_codes_of_any_partition_by_shape() {
        for region in [
            "us-east-1",
            "eu-central-2",
            "ap-southeast-4",
            "mx-central-1",
            "il-central-1",
        ] {
            let got = rules(
                &format!("[[copy]]\nregion = \"{region}\"\nkeep = {{ last = 7 }}\n"),
                &["eu-west-1"],
            );
            assert_eq!(got[0].region, region);
        }
        // Within their own partitions.
        for (source, region) in [
            ("us-gov-east-1", "us-gov-west-1"),
            ("cn-north-1", "cn-northwest-1"),
        ] {
            let got = rules(
                &format!("[[copy]]\nregion = \"{region}\"\nkeep = {{ last = 7 }}\n"),
                &[source],
            );
            assert_eq!(got[0].region, region);
        }
        for bad in ["eu-west-1a", "Europe (Ireland)", "EU-WEST-1", "eu-west"] {
            let p = only_problem(
                &format!("[[copy]]\nregion = \"{bad}\"\nkeep = {{ last = 7 }}\n"),
                &["us-east-1"],
                "policy[prod].schedule[daily].copy[#1].region",
            );
            assert!(p.message.contains("is not an AWS region code"), "{p}");
            assert!(p.fix.contains("us-east-1"), "{p}");
        }
    }

    #[test]
    fn a_copy_to_one_of_the_policys_own_regions_is_refused() {
        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7 }\n",
            &["us-east-1", "eu-west-1"],
            "policy[prod].schedule[daily].copy[#1].region",
        );
        assert!(
            p.message
                .contains("`eu-west-1` is one of aws.regions, which the policy snapshots"),
            "{p}"
        );
        assert!(p.message.contains("copied within eu-west-1"), "{p}");
        assert!(
            p.fix.contains("copy to a region aws.regions does not list"),
            "{p}"
        );
        assert!(p.fix.contains("also lists us-east-1"), "{p}");

        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7 }\n",
            &["eu-west-1"],
            "policy[prod].schedule[daily].copy[#1].region",
        );
        assert!(p.fix.starts_with("copy to another region"), "{p}");
    }

    #[test]
    fn a_copy_across_partitions_is_refused() {
        let p = only_problem(
            "[[copy]]\nregion = \"us-gov-west-1\"\nkeep = { last = 7 }\n",
            &["us-east-1"],
            "policy[prod].schedule[daily].copy[#1].region",
        );
        assert!(
            p.message.contains(
                "`us-gov-west-1` is in partition aws-us-gov, the policy's region us-east-1 in aws"
            ),
            "{p}"
        );
        assert!(p.fix.contains("a region of partition aws"), "{p}");
        for (source, region, partition) in [
            ("cn-north-1", "eu-west-1", "aws"),
            ("us-east-1", "us-isob-east-1", "aws-iso-b"),
            ("us-east-1", "us-iso-east-1", "aws-iso"),
        ] {
            let p = only_problem(
                &format!("[[copy]]\nregion = \"{region}\"\nkeep = {{ last = 7 }}\n"),
                &[source],
                "policy[prod].schedule[daily].copy[#1].region",
            );
            assert!(
                p.message.contains(&format!("is in partition {partition},")),
                "{p}"
            );
        }
    }

    #[test]
    fn more_than_three_destinations_are_refused() {
        let four: String = ["eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1"]
            .iter()
            .map(|r| format!("[[copy]]\nregion = \"{r}\"\nkeep = {{ last = 7 }}\n"))
            .collect();
        let p = only_problem(&four, &["us-east-1"], "policy[prod].schedule[daily].copy");
        assert!(
            p.message
                .contains("4 copy destinations: a schedule copies to at most 3 regions"),
            "{p}"
        );
        assert!(p.fix.contains("another schedule"), "{p}");
    }

    #[test]
    fn a_destination_listed_twice_is_refused_naming_the_first() {
        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { weekly = 4 }\n\
             [[copy]]\nregion = \"eu-west-1\"\nkeep = { monthly = 12 }\n",
            &["us-east-1"],
            // The second keeps its position label: two `copy[eu-west-1]` could not be told apart.
            "policy[prod].schedule[daily].copy[#2].region",
        );
        assert!(
            p.message
                .contains("region `eu-west-1` is already the destination of copy #1"),
            "{p}"
        );
        assert!(p.fix.contains("one keep table"), "{p}");
    }

    #[test]
    fn kms_key_id_with_encrypted_false_is_refused() {
        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7 }\nencrypted = false\nkms-key-id = \"alias/dr\"\n",
            &["us-east-1"],
            "policy[prod].schedule[daily].copy[eu-west-1].encrypted",
        );
        assert!(
            p.message.contains("encrypted = false next to kms-key-id"),
            "{p}"
        );
        assert!(p.fix.contains("kms-key-id implies encrypted = true"), "{p}");
    }

    #[test]
    fn kms_key_id_alone_implies_encrypted() {
        let got = rules(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7 }\nkms-key-id = \"alias/dr-snapshots\"\n",
            &["us-east-1"],
        );
        assert_eq!(
            got[0].encryption,
            Encryption::Encrypted {
                kms_key_id: Some("alias/dr-snapshots".into())
            }
        );
    }

    #[test]
    fn kms_key_ids_aliases_and_arns() {
        for good in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/dr-snapshots",
            "alias/aws/ebs",
            "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:123456789012:alias/dr",
        ] {
            assert_eq!(kms_key_problem(good, Some("eu-west-1")), None, "{good}");
        }
        for (bad, why) in [
            ("dr-snapshots", "neither a key id"),
            ("1234abcd-12ab-34cd-56ef-1234567890", "neither a key id"),
            ("mrk-1234", "neither a key id"),
            ("alias/", "alias/NAME"),
            ("alias/dr snapshots", "alias/NAME"),
            (
                "arn:aws:kms:eu-west-1:123456789012",
                "6 `:`-separated parts",
            ),
            (
                "arn:aws:s3:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "service `s3`",
            ),
            (
                "arn:aws:kms:eu-west-1:1234:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "12-digit",
            ),
            ("arn:aws:kms:eu-west-1:123456789012:key/dr", "key/KEY-ID"),
            (
                "arn:aws:kms:us-east-1:123456789012:alias/dr",
                "a key in us-east-1, but the copy is made and encrypted in eu-west-1",
            ),
        ] {
            let (message, _) =
                kms_key_problem(bad, Some("eu-west-1")).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(message.contains(why), "{bad}: {message}");
        }
    }

    #[test]
    fn a_bad_kms_key_id_names_the_key_and_the_fix() {
        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7 }\nkms-key-id = \"my-key\"\n",
            &["us-east-1"],
            "policy[prod].schedule[daily].copy[eu-west-1].kms-key-id",
        );
        assert!(p.message.starts_with("`my-key` is neither a key id"), "{p}");
        assert!(p.fix.contains("alias/dr-snapshots"), "{p}");
    }

    #[test]
    fn keep_is_required_and_read_by_the_schedules_parser() {
        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\n",
            &["us-east-1"],
            "policy[prod].schedule[daily].copy[eu-west-1].keep",
        );
        assert!(p.message.contains("nothing says how many copies"), "{p}");
        assert!(p.fix.contains("weekly = 4"), "{p}");
        // The schedules' keep parser: its range checks and its unknown-key suggestions.
        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { weekly = 0 }\n",
            &["us-east-1"],
            "policy[prod].schedule[daily].copy[eu-west-1].keep.weekly",
        );
        assert!(p.message.contains("weekly = 0 keeps nothing"), "{p}");
        // An unknown key is reported by the table (the whole file is then refused), not by the rule.
        let (_, problems) = read(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7, weekely = 4 }\n",
            &["us-east-1"],
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["policy[prod].schedule[daily].copy[eu-west-1].keep.weekely"]
        );
        assert!(
            problems[0].fix.contains("did you mean `weekly`"),
            "{problems:#?}"
        );
        let p = only_problem(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { app-consistent-only = true }\n",
            &["us-east-1"],
            "policy[prod].schedule[daily].copy[eu-west-1].keep",
        );
        assert!(p.message.contains("no keep rule"), "{p}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_reported_at_their_path() {
        let (rules, problems) = read(
            "[[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7 }\nencrypted = \"yes\"\ncopy_tags = true\n",
            &["us-east-1"],
        );
        assert_eq!(rules, None);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "policy[prod].schedule[daily].copy[eu-west-1].encrypted",
                "policy[prod].schedule[daily].copy[eu-west-1].copy_tags",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[1].fix.contains("did you mean `copy-tags`"),
            "{problems:#?}"
        );
        let p = only_problem(
            "copy = { region = \"eu-west-1\" }\n",
            &["us-east-1"],
            "policy[prod].schedule[daily].copy",
        );
        assert!(p.message.contains("expected an array"), "{p}");
    }

    #[test]
    fn every_problem_of_every_entry_is_reported() {
        let (rules, problems) = read(
            "[[copy]]\nregion = \"us-east-1\"\n\
             [[copy]]\nregion = \"eu-west-1\"\nkeep = { last = 7 }\nkms-key-id = \"nope\"\n",
            &["us-east-1"],
        );
        assert_eq!(rules, None);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "policy[prod].schedule[daily].copy[#1].region",
                "policy[prod].schedule[daily].copy[#1].keep",
                "policy[prod].schedule[daily].copy[eu-west-1].kms-key-id",
            ],
            "{problems:#?}"
        );
    }
}
