//! `SNAPWARDEN_…` environment overrides as a figment provider built from an injected list of variables.
//!
//! figment's own `Env` provider reads the process environment, which would make every test depend on the shell
//! that runs it; this provider applies the same rules (prefix stripped, `__` nests, values parsed the way `Env`
//! parses them) to the slice the caller passes. It also maps `_` inside a segment to `-`, because the file's keys
//! are kebab-case and environment variable names cannot contain `-`. Only names with a `__` are overrides (every
//! key lives in a section), so `SNAPWARDEN_CONFIG` and unrelated `SNAPWARDEN_*` variables pass through. It does
//! not validate keys: the unknown-key check runs on the merged tree, where the tag of each value tells which
//! variable set it.

use std::collections::BTreeMap;
use std::sync::Arc;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::{ConfigIssue, ENV_PREFIX};

/// The figment metadata name of values that came from the environment (used to recognise them again).
pub(super) const SOURCE_NAME: &str = "environment variable";

pub(super) struct EnvOverrides {
    dict: Dict,
    /// Key path (as inserted) -> the variable that set it, so messages can name the variable as written.
    names: Arc<BTreeMap<Vec<String>, String>>,
    /// Variables that cannot be mapped to a key at all.
    pub(super) problems: Vec<ConfigIssue>,
}

impl EnvOverrides {
    pub(super) fn from_vars(vars: &[(String, String)]) -> Self {
        let mut dict = Dict::new();
        let mut names = BTreeMap::new();
        let mut problems = Vec::new();

        // Sorted so that conflicts (SNAPWARDEN_LOG__FILE=… and SNAPWARDEN_LOG__FILE__PREFIX=…) resolve the same
        // way whatever order the OS lists variables in.
        let mut vars: Vec<&(String, String)> = vars.iter().collect();
        vars.sort();
        for (name, raw) in vars {
            // Case-insensitive prefix, as figment's `Env::prefixed` does.
            let Some(rest) = strip_prefix_ignore_case(name, ENV_PREFIX) else {
                continue;
            };
            // Every setting lives in a section, so an override always has a `__`. Names without one are not
            // overrides: SNAPWARDEN_CONFIG names the file, and other tools' variables (the test harness's
            // SNAPWARDEN_MOTO_SERVER) must not make the daemon's own config invalid.
            if !rest.contains("__") {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(segment_to_key).collect();
            if keys.iter().any(String::is_empty) {
                problems.push(ConfigIssue {
                    key: name.clone(),
                    message: "this environment variable does not name a config key (empty segment between `__`)"
                        .into(),
                    fix: "separate nested keys with exactly one `__`, e.g. SNAPWARDEN_DAEMON__LISTEN=0.0.0.0:9180, \
                          or unset it"
                        .into(),
                });
                continue;
            }
            let value: Value = raw.parse().unwrap_or_else(|never| match never {});
            if let Err(conflict) = insert(&mut dict, &keys, value) {
                let other = names.get(&keys[..conflict]).cloned().unwrap_or_default();
                problems.push(ConfigIssue {
                    key: name.clone(),
                    message: format!(
                        "conflicts with {other}, which sets the whole `{}`",
                        keys[..conflict].join(".")
                    ),
                    fix: format!("unset one of {other} and {name}"),
                });
                continue;
            }
            names.insert(keys, name.clone());
        }

        EnvOverrides {
            dict,
            names: Arc::new(names),
            problems,
        }
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

fn segment_to_key(segment: &str) -> String {
    segment.to_ascii_lowercase().replace('_', "-")
}

/// The variable name that would set `keys` (used to suggest a corrected name).
pub(super) fn var_name(keys: &[String]) -> String {
    let segments: Vec<String> = keys
        .iter()
        .map(|k| k.to_ascii_uppercase().replace('-', "_"))
        .collect();
    format!("{ENV_PREFIX}{}", segments.join("__"))
}

/// Inserts `value` at `keys`; on a clash with a non-table value set by an earlier variable, returns the length of
/// the clashing prefix.
fn insert(dict: &mut Dict, keys: &[String], value: Value) -> Result<(), usize> {
    let mut current = dict;
    for (depth, key) in keys[..keys.len() - 1].iter().enumerate() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        match entry {
            Value::Dict(_, inner) => current = inner,
            _ => return Err(depth + 1),
        }
    }
    let last = &keys[keys.len() - 1];
    if matches!(current.get(last), Some(Value::Dict(..))) {
        // A table already built from longer names: SNAPWARDEN_LOG__LEVEL was seen before SNAPWARDEN_LOG.
        return Err(keys.len());
    }
    current.insert(last.clone(), value);
    Ok(())
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        let names = Arc::clone(&self.names);
        Metadata::named(SOURCE_NAME).interpolater(move |_profile: &Profile, keys: &[&str]| {
            // The value may sit inside a table one variable set as a whole (SNAPWARDEN_NOTIFY__SNS={…}), so the
            // variable is the one for the longest recorded prefix of the path.
            (1..=keys.len())
                .rev()
                .find_map(|n| {
                    let prefix: Vec<String> = keys[..n].iter().map(|k| k.to_string()).collect();
                    names.get(&prefix).cloned()
                })
                .unwrap_or_else(|| {
                    var_name(&keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
                })
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nests_on_double_underscore_and_kebabs_single_underscores() {
        let env = EnvOverrides::from_vars(&vars(&[
            ("SNAPWARDEN_AWS__ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("SNAPWARDEN_DAEMON__MAX_CONCURRENT_AWS_CALLS", "4"),
            ("SNAPWARDEN_CONFIG", "/etc/other.toml"),
            ("SNAPWARDEN_MOTO_SERVER", "/usr/bin/moto_server"),
            ("HOME", "/root"),
            ("snapwarden_log__level", "debug"),
        ]));
        assert!(env.problems.is_empty(), "{:?}", env.problems);
        let aws = env.dict["aws"].as_dict().unwrap();
        assert_eq!(aws["endpoint-url"].as_str(), Some("http://127.0.0.1:5000"));
        let daemon = env.dict["daemon"].as_dict().unwrap();
        assert_eq!(daemon["max-concurrent-aws-calls"].to_u128(), Some(4));
        let log = env.dict["log"].as_dict().unwrap();
        assert_eq!(
            log["level"].as_str(),
            Some("debug"),
            "the prefix is case-insensitive"
        );
        assert_eq!(
            env.dict.len(),
            3,
            "names without `__` (SNAPWARDEN_CONFIG, SNAPWARDEN_MOTO_SERVER) are not overrides"
        );
    }

    #[test]
    fn empty_segments_and_conflicts_are_problems() {
        let env = EnvOverrides::from_vars(&vars(&[
            ("SNAPWARDEN_DAEMON____LISTEN", "x"),
            ("SNAPWARDEN_LOG__FILE", "off"),
            ("SNAPWARDEN_LOG__FILE__PREFIX", "x"),
        ]));
        let keys: Vec<&str> = env.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "SNAPWARDEN_DAEMON____LISTEN",
                "SNAPWARDEN_LOG__FILE__PREFIX"
            ]
        );
        let conflict = &env.problems[1].message;
        assert!(conflict.contains("SNAPWARDEN_LOG__FILE,"), "{conflict}");
    }

    #[test]
    fn var_name_round_trips_keys() {
        let keys = vec!["aws".to_string(), "endpoint-url".to_string()];
        assert_eq!(var_name(&keys), "SNAPWARDEN_AWS__ENDPOINT_URL");
    }
}
