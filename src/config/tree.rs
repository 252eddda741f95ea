//! A reader over figment's merged value tree that records problems instead of returning at the first one.
//!
//! It knows about shapes (tables, strings, integers, durations, choices), key paths for messages, unknown-key
//! detection with "did you mean" suggestions, and which environment variable set a value. It knows nothing about
//! snapwarden's sections: `sections` says which keys exist and what they mean.

use std::ops::RangeInclusive;
use std::time::Duration;

use figment::value::{Dict, Num, Value};
use figment::{Figment, Profile};

use super::env;
use super::ConfigIssue;

/// A key path in two forms: for people (`policy[prod].schedule[daily].cron`) and as figment keys (for the
/// environment variable interpolater).
#[derive(Debug, Clone, Default)]
pub(super) struct KeyPath {
    display: String,
    raw: Vec<String>,
}

impl KeyPath {
    pub(super) fn key(&self, key: &str) -> KeyPath {
        let shown = if is_bare_key(key) {
            key.to_string()
        } else {
            format!("{key:?}")
        };
        let display = if self.display.is_empty() {
            shown
        } else {
            format!("{}.{shown}", self.display)
        };
        let mut raw = self.raw.clone();
        raw.push(key.to_string());
        KeyPath { display, raw }
    }

    /// An array element, shown by `label` (a policy or schedule name) when it has a usable one, else by its
    /// 1-based position as `[#2]` (names cannot contain `#`, so the two never look alike).
    pub(super) fn item(&self, index: usize, label: Option<&str>) -> KeyPath {
        let shown = match label {
            Some(label) => label.to_string(),
            None => format!("#{}", index + 1),
        };
        let mut raw = self.raw.clone();
        raw.push(index.to_string());
        KeyPath {
            display: format!("{}[{shown}]", self.display),
            raw,
        }
    }

    pub(super) fn as_str(&self) -> &str {
        &self.display
    }

    pub(super) fn raw(&self) -> &[String] {
        &self.raw
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A value found at a key path.
#[derive(Clone)]
pub(super) struct Field<'v> {
    pub(super) path: KeyPath,
    pub(super) value: &'v Value,
}

/// Collects problems; every check reports here and carries on.
pub(super) struct Collector<'f> {
    figment: &'f Figment,
    problems: Vec<ConfigIssue>,
}

impl<'f> Collector<'f> {
    pub(super) fn new(figment: &'f Figment) -> Self {
        Collector {
            figment,
            problems: Vec::new(),
        }
    }

    pub(super) fn into_problems(self) -> Vec<ConfigIssue> {
        self.problems
    }

    /// How many problems are recorded so far: a reader that reports as it goes compares it before and after to
    /// know whether what it read is whole.
    pub(super) fn problem_count(&self) -> usize {
        self.problems.len()
    }

    /// A problem with no value to point at (a required key is missing).
    pub(super) fn missing(
        &mut self,
        path: &KeyPath,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(ConfigIssue {
            key: path.as_str().to_string(),
            message: message.into(),
            fix: fix.into(),
        });
    }

    /// A problem with a value; when an environment variable set it, the message says which one, since the file
    /// alone would not explain it.
    pub(super) fn problem(
        &mut self,
        field: &Field<'_>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let mut message = message.into();
        if let Some(var) = self.env_var(field) {
            message.push_str(&format!(" (set by environment variable {var})"));
        }
        self.problems.push(ConfigIssue {
            key: field.path.as_str().to_string(),
            message,
            fix: fix.into(),
        });
    }

    /// The environment variable that set this value, if one did.
    pub(super) fn env_var(&self, field: &Field<'_>) -> Option<String> {
        let metadata = self.figment.get_metadata(field.value.tag())?;
        (metadata.name == env::SOURCE_NAME)
            .then(|| metadata.interpolate(&Profile::Default, field.path.raw()))
    }

    fn wrong_type(&mut self, field: &Field<'_>, expected: &str, example: &str) {
        self.problem(
            field,
            format!("expected {expected}, found {}", describe(field.value)),
            format!("write {example}"),
        );
    }

    /// Opens a table; `example` shows how to write it.
    pub(super) fn table<'v>(&mut self, field: &Field<'v>, example: &str) -> Option<Table<'v>> {
        match field.value {
            Value::Dict(_, dict) => Some(Table {
                path: field.path.clone(),
                dict,
                known: Vec::new(),
            }),
            _ => {
                self.wrong_type(field, "a table", example);
                None
            }
        }
    }

    pub(super) fn array<'v>(&mut self, field: &Field<'v>, example: &str) -> Option<&'v [Value]> {
        match field.value {
            Value::Array(_, items) => Some(items),
            _ => {
                self.wrong_type(field, "an array", example);
                None
            }
        }
    }

    pub(super) fn string(&mut self, field: &Field<'_>, example: &str) -> Option<String> {
        match field.value {
            Value::String(_, s) => Some(s.clone()),
            Value::Char(_, c) => Some(c.to_string()),
            // An environment variable is text; figment guessed a number or boolean from it. Where a string is
            // wanted (`SNAPWARDEN_LOG__LEVEL=5`), the text is what the operator meant.
            Value::Num(_, n) if self.env_var(field).is_some() => num_text(*n),
            Value::Bool(_, b) if self.env_var(field).is_some() => Some(b.to_string()),
            _ => {
                self.wrong_type(field, "a string", example);
                None
            }
        }
    }

    pub(super) fn bool(&mut self, field: &Field<'_>, example: &str) -> Option<bool> {
        match field.value {
            Value::Bool(_, b) => Some(*b),
            _ => {
                self.wrong_type(field, "true or false", example);
                None
            }
        }
    }

    /// A whole number within `range`; `example` is a complete `key = value` line.
    pub(super) fn integer(
        &mut self,
        field: &Field<'_>,
        range: RangeInclusive<i64>,
        example: &str,
    ) -> Option<i64> {
        let n = match field.value {
            Value::Num(_, n) => whole(*n),
            _ => None,
        };
        let Some(n) = n else {
            self.wrong_type(
                field,
                &format!("a whole number from {} to {}", range.start(), range.end()),
                example,
            );
            return None;
        };
        if (*range.start() as i128..=*range.end() as i128).contains(&n) {
            Some(n as i64)
        } else {
            self.problem(
                field,
                format!("{n} is out of range"),
                format!(
                    "write a whole number from {} to {}, e.g. {example}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    /// A number, whole or not (`0.5`, `1`); the caller checks the range.
    pub(super) fn number(&mut self, field: &Field<'_>, example: &str) -> Option<f64> {
        match field.value {
            Value::Num(_, Num::F32(f)) => Some(f64::from(*f)),
            Value::Num(_, Num::F64(f)) => Some(*f),
            Value::Num(_, n) => whole(*n).map(|i| i as f64),
            _ => {
                self.wrong_type(field, "a number", example);
                None
            }
        }
    }

    /// A humantime duration string ("30s", "6h", "7d"); zero is refused when `allow_zero` is false.
    pub(super) fn duration(
        &mut self,
        field: &Field<'_>,
        allow_zero: bool,
        example: &str,
    ) -> Option<Duration> {
        let text = match field.value {
            Value::String(_, s) => s,
            Value::Num(_, n) => {
                let n = num_text(*n).unwrap_or_default();
                self.problem(
                    field,
                    format!("expected a duration with a unit, found the bare number {n}"),
                    format!(
                        "write it in quotes with a unit, \"{n}s\" or \"{n}m\" (e.g. {example})"
                    ),
                );
                return None;
            }
            _ => {
                self.wrong_type(field, "a duration such as \"30s\"", example);
                return None;
            }
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.problem(
                    field,
                    format!("`{text}` is zero"),
                    format!("write a positive duration, e.g. {example}"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    field,
                    format!("`{text}` is not a duration ({e})"),
                    format!(
                        "write a number and a unit (s, m, h, d, w), e.g. {example}; several parts add up: \"1h 30m\""
                    ),
                );
                None
            }
        }
    }

    /// One of a fixed set of lowercase words.
    pub(super) fn choice<T: Copy>(
        &mut self,
        field: &Field<'_>,
        options: &[(&str, T)],
    ) -> Option<T> {
        let words: Vec<String> = options.iter().map(|(w, _)| format!("\"{w}\"")).collect();
        let words = words.join(" | ");
        let text = self.string(field, &words)?;
        if let Some((_, v)) = options.iter().find(|(w, _)| *w == text) {
            return Some(*v);
        }
        let fix = match options.iter().find(|(w, _)| w.eq_ignore_ascii_case(&text)) {
            Some((w, _)) => format!("write \"{w}\" (lowercase)"),
            None => format!("write one of {words}"),
        };
        self.problem(field, format!("`{text}` is not one of {words}"), fix);
        None
    }
}

/// A table being read: every key asked for with [`Table::get`] counts as known, and [`Table::finish`] reports the
/// rest as unknown. Every known key must therefore be asked for, present or not.
pub(super) struct Table<'v> {
    pub(super) path: KeyPath,
    dict: &'v Dict,
    known: Vec<&'static str>,
}

impl<'v> Table<'v> {
    pub(super) fn root(dict: &'v Dict) -> Self {
        Table {
            path: KeyPath::default(),
            dict,
            known: Vec::new(),
        }
    }

    pub(super) fn get(&mut self, key: &'static str) -> Option<Field<'v>> {
        self.known.push(key);
        self.dict.get(key).map(|value| Field {
            path: self.path.key(key),
            value,
        })
    }

    /// All entries, for tables whose keys are data (tags), not settings.
    pub(super) fn entries(&self) -> impl Iterator<Item = Field<'v>> + '_ {
        self.dict.iter().map(|(k, value)| Field {
            path: self.path.key(k),
            value,
        })
    }

    /// Reports every key that was never asked for.
    pub(super) fn finish(self, cx: &mut Collector<'_>) {
        for (key, value) in self.dict {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let field = Field {
                path: self.path.key(key),
                value,
            };
            let known = self.known.join(", ");
            let suggestion = suggest(key, &self.known);
            let fix = match (suggestion, cx.env_var(&field)) {
                (Some(good), Some(_)) => {
                    let mut keys = self.path.raw().to_vec();
                    keys.push(good.to_string());
                    format!(
                        "did you mean `{good}`? Name the variable {}",
                        env::var_name(&keys)
                    )
                }
                (Some(good), None) => {
                    format!("did you mean `{good}`? (keys are kebab-case; allowed here: {known})")
                }
                (None, _) if known.is_empty() => "remove it".to_string(),
                (None, _) => format!("remove it; the keys allowed here are: {known}"),
            };
            cx.problem(&field, format!("unknown key `{key}`"), fix);
        }
    }
}

/// The closest known key, when it is close enough to be a typo (or a snake_case / wrong-case spelling).
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let normalized = key.to_ascii_lowercase().replace('_', "-");
    if let Some(exact) = known.iter().find(|k| **k == normalized) {
        return Some(exact);
    }
    known
        .iter()
        .map(|k| {
            (
                edit_distance(&normalized, k),
                common_prefix(&normalized, k),
                *k,
            )
        })
        .filter(|(d, p, _)| *d <= 2 || *p >= 4)
        .min_by_key(|(d, p, _)| (*d, std::cmp::Reverse(*p)))
        .map(|(_, _, k)| k)
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

fn whole(n: Num) -> Option<i128> {
    match n {
        Num::F32(_) | Num::F64(_) => None,
        Num::U128(u) => i128::try_from(u).ok(),
        other => other
            .to_i128()
            .or_else(|| other.to_u128().and_then(|u| i128::try_from(u).ok())),
    }
}

fn num_text(n: Num) -> Option<String> {
    match n {
        Num::F32(f) => Some(f.to_string()),
        Num::F64(f) => Some(f.to_string()),
        other => whole(other).map(|i| i.to_string()),
    }
}

/// "string \"x\"", "integer 8", "a table", … for "expected …, found …".
fn describe(value: &Value) -> String {
    match value {
        Value::String(_, s) => {
            let shown: String = s.chars().take(60).collect();
            let ellipsis = if s.chars().count() > 60 { "…" } else { "" };
            format!("string \"{shown}{ellipsis}\"")
        }
        Value::Char(_, c) => format!("string \"{c}\""),
        Value::Bool(_, b) => format!("boolean {b}"),
        Value::Num(_, n @ (Num::F32(_) | Num::F64(_))) => {
            format!("number {}", num_text(*n).unwrap_or_default())
        }
        Value::Num(_, n) => format!("integer {}", num_text(*n).unwrap_or_default()),
        Value::Empty(..) => "nothing".to_string(),
        Value::Dict(..) => "a table".to_string(),
        Value::Array(..) => "an array".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_typos_snake_case_and_plurals() {
        let known = [
            "listen",
            "timezone",
            "max-concurrent-aws-calls",
            "shutdown-grace",
        ];
        assert_eq!(suggest("listn", &known), Some("listen"));
        assert_eq!(
            suggest("max_concurrent_aws_calls", &known),
            Some("max-concurrent-aws-calls")
        );
        assert_eq!(suggest("TimeZone", &known), Some("timezone"));
        assert_eq!(suggest("policies", &["daemon", "policy"]), Some("policy"));
        assert_eq!(suggest("colour", &known), None);
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn key_paths_quote_odd_keys_and_label_items() {
        let root = KeyPath::default();
        let policy = root.key("policy").item(0, Some("prod"));
        assert_eq!(
            policy
                .key("target")
                .key("tags")
                .key("aws:cloudformation:stack-name")
                .as_str(),
            "policy[prod].target.tags.\"aws:cloudformation:stack-name\""
        );
        assert_eq!(root.key("policy").item(1, None).as_str(), "policy[#2]");
        assert_eq!(policy.raw(), ["policy", "0"]);
    }
}
