//! Reading metric values out of Prometheus text (a `/metrics` body or `Metrics::render`), for every test that
//! checks a counter or gauge.

use std::collections::BTreeMap;

/// One sample line.
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The exposition format's sample lines (label values here never contain `,` or `"`).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label is k=\"v\"");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: value.parse().expect("sample value is a number"),
        });
    }
    out
}

fn matching<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = Sample> + 'a {
    samples(text).into_iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// The value of the one sample of `name` whose label set is exactly `labels` (in any order); None when there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    matching(text, name, labels)
        .find(|s| s.labels.len() == labels.len())
        .map(|s| s.value)
}

/// The sum over the samples of `name` whose labels include all of `labels` (other labels summed over); None when
/// there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    matching(text, name, labels)
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}
