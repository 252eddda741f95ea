//! `snapwarden plan`: what retention would do to every managed snapshot, and why, without changing anything — the
//! command an operator runs before a config change. One async function, [`gather`], reads live data (one survey
//! per policy and (account, region) pair the policy serves, and per config in diff mode; for a policy with copy rules, each destination too, as a
//! run reads it) and runs the daemon's own planners on it (`worker::plan_retention`, with the copies' hold, and
//! `worker::copy::plan_retention` for the copies in each destination), so `plan` can never disagree with what a
//! run would do. A copy is judged as the destination holds it now; the copies the next run would make
//! (`worker::copy::would_copy`) are listed apart, on their source rows. Everything else here is
//! pure: plans become [`Row`]s, rows become [`Totals`], two configs' rows become a [`Change`] list, and each of
//! them becomes a table.
//!
//! `--at` moves the clock only: ages and `orphans.expire-after` are measured from it and snapshots whose slot lies
//! after it are left out as not existing yet — except those whose slot lies after the real `now` too (beyond
//! `retention::FUTURE_SLOT_ALLOWANCE`): they exist today with a slot no run could have given them, and are listed
//! kept as `future-slot` whatever `--at` says. Targets, pins and snapshot states are today's — EC2 keeps no
//! history of them — so `--at` answers "what would today's fleet look like to the planner at that time".
//!
//! The JSON forms ([`Row`], [`Change`]) are a contract, documented in the README: field names are fixed and rows
//! are ordered by policy, account, region, volume id, slot (newest first) and snapshot id, so two runs over the
//! same data print the same bytes. `tests/fixtures/plan.json` pins it. The tables name the account (a column, and
//! `account/region` in the cap and copy lines) when more than one account is served, so a single-account plan
//! reads as it always has.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Policy};
use crate::error::Error;
use crate::retention::{Action, Plan, Snap};
use crate::schedule::format_slot;
use crate::worker::{self, Region};

/// One config's plan for one policy in one region of one account, with the snapshots it judged.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub(crate) policy: String,
    /// The account's label (`worker::Region::account`).
    pub(crate) account: String,
    pub(crate) region: String,
    /// The snapshots the plan judged (slot at or before `at`): where rows take state and schedules from.
    pub(crate) snapshots: Vec<Snap>,
    pub(crate) plan: Plan,
    /// The policy takes application-consistent snapshots (VSS or scripts): its rows say which are.
    pub(crate) app: bool,
    /// Set when the snapshots are disaster-recovery copies in `region`: where they were copied from.
    pub(crate) copy_of: Option<CopyOf>,
    /// Source snapshot id -> the destination regions the next run would copy it to.
    pub(crate) copy_to: HashMap<Arc<str>, Vec<String>>,
}

/// Where an evaluation's copies come from: the source region, and each copy's source snapshot id (its
/// `snapwarden:source-snapshot` tag).
#[derive(Debug, Clone)]
pub(crate) struct CopyOf {
    pub(crate) region: String,
    pub(crate) sources: HashMap<Arc<str>, Arc<str>>,
}

/// A plan over a deletion cap, with where it happened: nothing of that policy in that region would be deleted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapVerdict {
    pub policy: String,
    pub account: String,
    pub region: String,
    /// The config key to raise: `max-deletes-per-run` or `max-delete-fraction`.
    pub setting: &'static str,
    /// Its configured value.
    pub(crate) limit: String,
    /// The smallest value that lets this plan through.
    pub(crate) needed: String,
    pub message: String,
}

/// One managed snapshot and what a config does with it: one element of `plan --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Row {
    pub(crate) policy: String,
    /// The account's label (`worker::Region::account`): an `[[aws.account]]`'s name, or the own account's id.
    pub(crate) account: String,
    pub(crate) region: String,
    pub(crate) volume_id: String,
    pub(crate) snapshot_id: String,
    /// RFC 3339 UTC, from the `snapwarden:slot` tag (the start time when it has none).
    pub(crate) slot: String,
    /// `at - slot`.
    pub(crate) age_seconds: i64,
    /// `pending`, `completed` or `error`.
    pub(crate) state: &'static str,
    /// The schedules the snapshot serves (its `snapwarden:schedule` tag).
    pub(crate) schedules: Vec<String>,
    /// The policy no longer targets the volume.
    pub(crate) orphan: bool,
    /// `keep` or `delete`.
    pub(crate) action: &'static str,
    /// Why, for people (`daily last 2/7`, `hourly weekly 1/4`, `pinned`, `over deletion cap`); never empty.
    pub(crate) reasons: Vec<String>,
    /// The same reasons as bounded labels (`last`, `weekly`, `pinned`, `over-cap`, …), aligned with `reasons`.
    pub(crate) labels: Vec<&'static str>,
    /// Set when a deletion cap blocked this policy's plan in this region.
    pub(crate) cap_hit: Option<CapVerdict>,
    /// Under a policy with VSS or scripts: whether the snapshot is application-consistent (its
    /// `snapwarden:app-consistent` tag), or a crash-consistent fallback. Absent for other policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) app_consistent: Option<bool>,
    /// A disaster-recovery copy (in `region`, the destination): the region it was copied from. Absent on other
    /// rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_region: Option<String>,
    /// A copy: the id of the snapshot it was copied from (empty when its tag is missing). Absent on other rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_snapshot_id: Option<String>,
    /// The destination regions the next run would copy this snapshot to. Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) copy_to: Vec<String>,
}

/// One config's rows and cap verdicts, at one point in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub(crate) at: DateTime<Utc>,
    pub(crate) rows: Vec<Row>,
    pub caps: Vec<CapVerdict>,
    /// More than one account is served: the tables name the account of each row.
    pub(crate) accounts: bool,
}

impl Report {
    /// What `--fail-on-delete` fails on: a deletion, or a cap that blocks deletions (the daemon would alert).
    pub(crate) fn would_delete(&self) -> bool {
        !self.caps.is_empty() || self.rows.iter().any(|r| r.action == "delete")
    }
}

fn action_str(a: Action) -> &'static str {
    match a {
        Action::Keep => "keep",
        Action::Delete => "delete",
    }
}

/// Turns evaluations into rows, in the documented order whatever order the evaluations come in.
pub fn report(evaluations: &[Evaluation], at: DateTime<Utc>) -> Report {
    let mut evaluations: Vec<&Evaluation> = evaluations.iter().collect();
    // A region's own snapshots before the copies it holds of another region's.
    evaluations.sort_by(|a, b| {
        let key = |e: &Evaluation| {
            (
                e.policy.clone(),
                e.account.clone(),
                e.region.clone(),
                e.copy_of.as_ref().map(|c| c.region.clone()),
            )
        };
        key(a).cmp(&key(b))
    });
    let accounts = evaluations.windows(2).any(|w| w[0].account != w[1].account);
    let mut rows = Vec::new();
    let mut caps = Vec::new();
    for e in evaluations {
        let cap = e.plan.cap_hit.as_ref().map(|hit| CapVerdict {
            policy: e.policy.clone(),
            account: e.account.clone(),
            region: e.region.clone(),
            setting: hit.setting,
            limit: hit.limit.clone(),
            needed: hit.needed.clone(),
            message: hit.message.clone(),
        });
        let snaps: HashMap<&str, &Snap> = e.snapshots.iter().map(|s| (&*s.id, s)).collect();
        // The planner's order (volume, slot newest first, id) is the documented one within a policy and region.
        for d in &e.plan.decisions {
            let snap = snaps.get(&*d.snapshot_id);
            rows.push(Row {
                policy: e.policy.clone(),
                account: e.account.clone(),
                region: e.region.clone(),
                volume_id: d.volume_id.to_string(),
                snapshot_id: d.snapshot_id.to_string(),
                slot: format_slot(d.slot),
                age_seconds: (at - d.slot).num_seconds(),
                state: snap.map_or("completed", |s| s.state.as_str()),
                schedules: snap
                    .map(|s| s.schedules.iter().map(|n| n.to_string()).collect())
                    .unwrap_or_default(),
                orphan: d.orphan,
                action: action_str(d.action),
                reasons: d.reasons.iter().map(ToString::to_string).collect(),
                labels: d.reasons.iter().map(|r| r.as_str()).collect(),
                cap_hit: cap.clone(),
                app_consistent: snap.filter(|_| e.app).map(|s| s.app_consistent),
                source_region: e.copy_of.as_ref().map(|c| c.region.clone()),
                source_snapshot_id: e.copy_of.as_ref().map(|c| {
                    c.sources
                        .get(&d.snapshot_id)
                        .map_or_else(String::new, |s| s.to_string())
                }),
                copy_to: e.copy_to.get(&d.snapshot_id).cloned().unwrap_or_default(),
            });
        }
        caps.extend(cap);
    }
    Report {
        at,
        rows,
        caps,
        accounts,
    }
}

/// Where a row or verdict lies, as the tables name it: `account/region` when more than one account is served.
fn place(accounts: bool, account: &str, region: &str) -> String {
    if accounts {
        format!("{account}/{region}")
    } else {
        region.to_string()
    }
}

/// Keep and delete counts of one group of snapshots (a policy, a schedule, a volume).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Tally {
    pub(crate) keep: usize,
    pub(crate) delete: usize,
}

impl Tally {
    fn add(&mut self, action: &str) {
        if action == "delete" {
            self.delete += 1;
        } else {
            self.keep += 1;
        }
    }
}

/// Counts per policy (all regions), per schedule and per volume. A snapshot serving several schedules counts
/// under each of them (as in `/metrics`); one listing none counts under the schedule `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) all: Tally,
    pub(crate) policies: BTreeMap<String, Tally>,
    /// (policy, schedule)
    pub(crate) schedules: BTreeMap<(String, String), Tally>,
    /// (policy, account, region, volume id)
    pub(crate) volumes: BTreeMap<(String, String, String, String), Tally>,
    /// Per policy with VSS or scripts: (application-consistent, fallback) snapshots.
    pub(crate) consistency: BTreeMap<String, (usize, usize)>,
}

pub(crate) fn totals(rows: &[Row]) -> Totals {
    let mut t = Totals::default();
    for r in rows {
        t.all.add(r.action);
        t.policies
            .entry(r.policy.clone())
            .or_default()
            .add(r.action);
        if r.schedules.is_empty() {
            t.schedules
                .entry((r.policy.clone(), String::new()))
                .or_default()
                .add(r.action);
        }
        for s in &r.schedules {
            t.schedules
                .entry((r.policy.clone(), s.clone()))
                .or_default()
                .add(r.action);
        }
        t.volumes
            .entry((
                r.policy.clone(),
                r.account.clone(),
                r.region.clone(),
                r.volume_id.clone(),
            ))
            .or_default()
            .add(r.action);
        if let Some(consistent) = r.app_consistent {
            let c = t.consistency.entry(r.policy.clone()).or_default();
            if consistent {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
    t
}

/// What one config does with one snapshot, in a [`Change`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub(crate) action: &'static str,
    pub(crate) orphan: bool,
    pub reasons: Vec<String>,
    pub(crate) labels: Vec<&'static str>,
}

impl Verdict {
    fn of(row: &Row) -> Verdict {
        Verdict {
            action: row.action,
            orphan: row.orphan,
            reasons: row.reasons.clone(),
            labels: row.labels.clone(),
        }
    }

    /// A config without the snapshot's policy never touches it.
    fn no_policy(policy: &str) -> Verdict {
        Verdict {
            action: "keep",
            orphan: false,
            reasons: vec![format!("no policy `{policy}` in this config")],
            labels: vec!["no-policy"],
        }
    }
}

/// A snapshot whose action differs between the current and the new config: one element of
/// `plan --against … --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub(crate) policy: String,
    pub(crate) account: String,
    pub(crate) region: String,
    pub(crate) volume_id: String,
    pub(crate) snapshot_id: String,
    pub slot: String,
    pub(crate) age_seconds: i64,
    /// `newly-deleted` (the new config deletes what the current one keeps) or `newly-kept` (the reverse).
    pub change: &'static str,
    pub current: Verdict,
    pub new: Verdict,
}

/// Snapshots whose action differs between the two reports, in the documented row order. A snapshot only one side
/// lists belongs to a policy the other config does not have, which therefore keeps it.
pub fn diff(current: &Report, new: &Report) -> Vec<Change> {
    let key = |r: &Row| {
        (
            r.policy.clone(),
            r.account.clone(),
            r.region.clone(),
            r.snapshot_id.clone(),
        )
    };
    let old: HashMap<_, &Row> = current.rows.iter().map(|r| (key(r), r)).collect();
    let mut seen = HashSet::new();
    let mut changes = Vec::new();
    for r in &new.rows {
        let k = key(r);
        let cur = match old.get(&k) {
            Some(c) => Verdict::of(c),
            None => Verdict::no_policy(&r.policy),
        };
        seen.insert(k);
        changes.extend(change(r, cur, Verdict::of(r)));
    }
    for r in current.rows.iter().filter(|r| !seen.contains(&key(r))) {
        changes.extend(change(r, Verdict::of(r), Verdict::no_policy(&r.policy)));
    }
    changes.sort_by(|a, b| {
        let k = |c: &Change| {
            (
                c.policy.clone(),
                c.account.clone(),
                c.region.clone(),
                c.volume_id.clone(),
                Reverse(c.slot.clone()),
                c.snapshot_id.clone(),
            )
        };
        k(a).cmp(&k(b))
    });
    changes
}

fn change(row: &Row, current: Verdict, new: Verdict) -> Option<Change> {
    let change = match (current.action, new.action) {
        ("keep", "delete") => "newly-deleted",
        ("delete", "keep") => "newly-kept",
        _ => return None,
    };
    Some(Change {
        policy: row.policy.clone(),
        account: row.account.clone(),
        region: row.region.clone(),
        volume_id: row.volume_id.clone(),
        snapshot_id: row.snapshot_id.clone(),
        slot: row.slot.clone(),
        age_seconds: row.age_seconds,
        change,
        current,
        new,
    })
}

/// What `--fail-on-delete` fails on in diff mode: the new config deletes something the current one keeps, or its
/// plan is over a deletion cap.
pub fn diff_would_delete(new: &Report, changes: &[Change]) -> bool {
    !new.caps.is_empty() || changes.iter().any(|c| c.change == "newly-deleted")
}

/// `3d 4h`, `5h 12m`, `40m`: enough to read retention at a glance; the JSON has the exact seconds.
pub(crate) fn format_age(seconds: i64) -> String {
    let (sign, s) = if seconds < 0 {
        ("-", -seconds)
    } else {
        ("", seconds)
    };
    let (d, h, m) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60);
    match (d, h) {
        (0, 0) => format!("{sign}{m}m"),
        (0, _) => format!("{sign}{h}h {m}m"),
        _ => format!("{sign}{d}d {h}h"),
    }
}

/// Columns padded to their widest cell; `right` lists the right-aligned ones; the last column is not padded.
fn table(header: &[&str], right: &[usize], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i + 1 == r.len() {
                if right.contains(&i) {
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str(cell);
            } else if right.contains(&i) {
                let _ = write!(line, "{}{cell}", " ".repeat(pad));
            } else {
                let _ = write!(line, "{cell}{}", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cap_lines(caps: &[CapVerdict], which: &str, accounts: bool) -> String {
    let mut out = String::new();
    for c in caps {
        let _ = writeln!(
            out,
            "!! DELETION CAP{which}: policy {} in {}: {}",
            c.policy,
            place(accounts, &c.account, &c.region),
            c.message
        );
    }
    out
}

/// The human form of a plan: cap verdicts first (they decide whether anything is deleted at all), every snapshot,
/// then totals per policy, schedule and volume.
pub(crate) fn render_table(report: &Report) -> String {
    let mut out = format!(
        "plan at {} (ages from it; snapshots with a later slot are not counted)\n",
        format_slot(report.at)
    );
    out.push_str(&cap_lines(&report.caps, "", report.accounts));
    out.push('\n');
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.policy.clone(),
                r.account.clone(),
                r.region.clone(),
                r.volume_id.clone(),
                if r.orphan { "yes" } else { "-" }.to_string(),
                r.snapshot_id.clone(),
                r.slot.clone(),
                format_age(r.age_seconds),
                r.action.to_string(),
                r.reasons.join("; "),
            ];
            if !report.accounts {
                row.remove(1);
            }
            row
        })
        .collect();
    let (header, age) = if report.accounts {
        (
            &[
                "POLICY", "ACCOUNT", "REGION", "VOLUME", "ORPHAN", "SNAPSHOT", "SLOT", "AGE",
                "ACTION", "REASONS",
            ][..],
            7,
        )
    } else {
        (
            &[
                "POLICY", "REGION", "VOLUME", "ORPHAN", "SNAPSHOT", "SLOT", "AGE", "ACTION",
                "REASONS",
            ][..],
            6,
        )
    };
    out.push_str(&table(header, &[age], &rows));
    out.push_str(&copy_lines(&report.rows, report.accounts));
    out.push('\n');
    out.push_str(&render_totals(&totals(&report.rows), report.accounts));
    out.push_str(&cap_lines(&report.caps, "", report.accounts));
    out
}

/// The copies the next run would make, oldest first (the order it sends them in): nothing when there are none.
fn copy_lines(rows: &[Row], accounts: bool) -> String {
    let mut wanted: Vec<&Row> = rows.iter().filter(|r| !r.copy_to.is_empty()).collect();
    if wanted.is_empty() {
        return String::new();
    }
    wanted.sort_by(|a, b| (&a.slot, &a.volume_id).cmp(&(&b.slot, &b.volume_id)));
    let mut out = String::from("\ncopies the next run would make, oldest first:\n");
    for r in wanted {
        for to in &r.copy_to {
            let _ = writeln!(
                out,
                "  would copy {} ({} slot {}) of policy {} from {} to {to}",
                r.snapshot_id,
                r.volume_id,
                r.slot,
                r.policy,
                place(accounts, &r.account, &r.region)
            );
        }
    }
    out
}

fn render_totals(t: &Totals, accounts: bool) -> String {
    let mut rows = Vec::new();
    for (p, c) in &t.policies {
        rows.push(vec![
            "policy".into(),
            p.clone(),
            c.keep.to_string(),
            c.delete.to_string(),
        ]);
    }
    for ((p, s), c) in &t.schedules {
        let s = if s.is_empty() { "(none listed)" } else { s };
        rows.push(vec![
            "schedule".into(),
            format!("{p}/{s}"),
            c.keep.to_string(),
            c.delete.to_string(),
        ]);
    }
    for ((p, a, r, v), c) in &t.volumes {
        rows.push(vec![
            "volume".into(),
            format!("{p} {} {v}", place(accounts, a, r)),
            c.keep.to_string(),
            c.delete.to_string(),
        ]);
    }
    let mut out = table(&["TOTALS", "", "KEEP", "DELETE"], &[2, 3], &rows);
    let _ = writeln!(
        out,
        "{} snapshots: {} keep, {} delete",
        t.all.keep + t.all.delete,
        t.all.keep,
        t.all.delete
    );
    for (p, (consistent, fallback)) in &t.consistency {
        let _ = writeln!(
            out,
            "policy {p}: {consistent} application-consistent, {fallback} crash-consistent fallback"
        );
    }
    out
}

/// The human form of a diff: what changes, with both configs' reasons, then each config's totals.
pub(crate) fn render_diff(current: &Report, new: &Report, changes: &[Change]) -> String {
    let mut out = format!(
        "diff at {}: the new config (--config) against the current one (--against)\n",
        format_slot(new.at)
    );
    let accounts = new.accounts || current.accounts;
    out.push_str(&cap_lines(&new.caps, " (new config)", accounts));
    out.push_str(&cap_lines(&current.caps, " (current config)", accounts));
    out.push('\n');
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            let side = |v: &Verdict| format!("{}: {}", v.action, v.reasons.join("; "));
            let mut row = vec![
                c.policy.clone(),
                c.account.clone(),
                c.region.clone(),
                c.volume_id.clone(),
                c.snapshot_id.clone(),
                c.slot.clone(),
                format_age(c.age_seconds),
                c.change.to_string(),
                side(&c.current),
                side(&c.new),
            ];
            if !accounts {
                row.remove(1);
            }
            row
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no snapshot changes action\n");
    } else if accounts {
        out.push_str(&table(
            &[
                "POLICY", "ACCOUNT", "REGION", "VOLUME", "SNAPSHOT", "SLOT", "AGE", "CHANGE",
                "CURRENT", "NEW",
            ],
            &[6],
            &rows,
        ));
    } else {
        out.push_str(&table(
            &[
                "POLICY", "REGION", "VOLUME", "SNAPSHOT", "SLOT", "AGE", "CHANGE", "CURRENT", "NEW",
            ],
            &[5],
            &rows,
        ));
    }
    let newly = |what: &str| changes.iter().filter(|c| c.change == what).count();
    let (cur, new_t) = (totals(&current.rows).all, totals(&new.rows).all);
    let _ = writeln!(
        out,
        "\nthe new config deletes {} snapshots the current one keeps and keeps {} it deletes\ncurrent config: {} keep, {} delete\nnew config:     {} keep, {} delete",
        newly("newly-deleted"),
        newly("newly-kept"),
        cur.keep,
        cur.delete,
        new_t.keep,
        new_t.delete
    );
    out
}

/// What `plan` prints on stdout, and what it tells the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub stdout: String,
    /// The verdict of `--fail-on-delete` ([`Report::would_delete`], [`diff_would_delete`] in diff mode).
    pub would_delete: bool,
    /// The new config's cap verdicts, for stderr.
    pub caps: Vec<CapVerdict>,
}

/// Everything `plan` prints, from what [`gather`] read: rows or (`diff`) changes, as a table or JSON.
pub fn output(
    gathered: &Gathered,
    at: DateTime<Utc>,
    diff_mode: bool,
    json: bool,
) -> serde_json::Result<Output> {
    // Every account served, not only those with rows: a plan of one account among several still names it.
    let accounts = gathered.accounts.len() > 1;
    let mut new = report(&gathered.new, at);
    new.accounts |= accounts;
    let (stdout, would_delete) = if diff_mode {
        let mut current = report(&gathered.current, at);
        current.accounts |= accounts;
        let changes = diff(&current, &new);
        let text = if json {
            serde_json::to_string_pretty(&changes)? + "\n"
        } else {
            render_diff(&current, &new, &changes)
        };
        (text, diff_would_delete(&new, &changes))
    } else {
        let text = if json {
            serde_json::to_string_pretty(&new.rows)? + "\n"
        } else {
            render_table(&new)
        };
        (text, new.would_delete())
    };
    Ok(Output {
        stdout,
        would_delete,
        caps: new.caps,
    })
}

/// What to evaluate: the config under test (`new`, the global `--config`), optionally the one running now.
pub struct Request<'a> {
    pub new: &'a Config,
    pub current: Option<&'a Config>,
    /// Only this policy.
    pub policy: Option<&'a str>,
    /// Evaluate as if now were this time.
    pub at: DateTime<Utc>,
    /// The real time: a snapshot with a slot after it exists with a slot in the future, whatever `at` is.
    pub now: DateTime<Utc>,
}

/// Both configs' evaluations; `current` is empty outside diff mode.
#[derive(Debug, Default)]
pub struct Gathered {
    pub new: Vec<Evaluation>,
    pub current: Vec<Evaluation>,
    /// The labels of the accounts served (planned or not).
    pub accounts: std::collections::BTreeSet<String>,
}

/// A survey failed; nothing is shown, because a plan over half-read data would show deletions that are not.
#[derive(Debug, thiserror::Error)]
#[error("policy `{policy}`: {error}")]
pub struct GatherError {
    pub(crate) policy: String,
    pub(crate) error: Error,
}

/// Surveys every (account, region) pair for every policy of `new` (and of `current`, by name) that serves the
/// account, and plans them at `req.at`.
/// In diff mode both configs judge the same snapshot list (the new side's), so a snapshot created between the two
/// surveys cannot show up as a change; each side reads its own targets, since the new config may target other
/// volumes.
pub async fn gather(regions: &[Arc<Region>], req: &Request<'_>) -> Result<Gathered, GatherError> {
    let mut names: Vec<&str> = req.new.policies.iter().map(|p| p.name.as_str()).collect();
    for p in req.current.iter().flat_map(|c| &c.policies) {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    names.retain(|n| req.policy.is_none_or(|only| only == *n));
    let mut out = Gathered::default();
    for region in regions {
        out.accounts.insert(region.account.clone());
        let serves = |p: &&Policy| p.serves(&region.account, region.own);
        for &name in &names {
            let wrap = |error| GatherError {
                policy: name.to_string(),
                error,
            };
            let mut listed = None;
            if let Some(p) = req.new.policy(name).filter(serves) {
                let (e, snaps) = evaluate(region, p, None, req).await.map_err(wrap)?;
                listed = Some(snaps);
                out.new.extend(e);
            }
            if let Some(p) = req.current.and_then(|c| c.policy(name)).filter(serves) {
                // The backends are the new config's destinations: the current one's copies elsewhere are not
                // read (neither config's plan for them could differ from what is there now).
                let mut p = p.clone();
                for s in &mut p.schedules {
                    s.copies
                        .retain(|c| region.copies.names().any(|n| n == c.region));
                }
                let (e, _) = evaluate(region, &p, listed, req).await.map_err(wrap)?;
                out.current.extend(e);
            }
        }
    }
    Ok(out)
}

/// One policy in one region: survey (the region, then each copy destination, as a run does), leave out what does
/// not exist yet at `at`, plan. `snapshots` replaces the survey's list when given. The region's own evaluation
/// comes first, then one per copy destination: its copies of this region's snapshots and their retention.
async fn evaluate(
    region: &Region,
    policy: &Policy,
    snapshots: Option<Vec<Snap>>,
    req: &Request<'_>,
) -> Result<(Vec<Evaluation>, Vec<Snap>), Error> {
    let at = req.at;
    let mut survey = worker::survey(region.ec2.as_ref(), policy, &region.account_id, None).await?;
    let future = req.now + crate::retention::FUTURE_SLOT_ALLOWANCE;
    let exists = |s: &Snap| s.slot <= at || s.slot > future;
    match snapshots {
        Some(s) => survey.snapshots = s,
        None => survey.snapshots.retain(exists),
    }
    let name = region.ec2.region().to_string();
    // A run goes on without a destination it cannot read (holding what it might want); a plan does not, since
    // it would show neither that destination's copies nor what it would be sent.
    let mut unread = None;
    worker::copy::survey(
        Some(&region.copies),
        policy,
        &name,
        &region.account_id,
        &mut survey,
        at,
        |dest, e| {
            unread.get_or_insert_with(|| {
                Error::Other(format!("copy destination {dest} cannot be read: {e}"))
            });
        },
    )
    .await;
    if let Some(e) = unread {
        return Err(e);
    }
    let plan = worker::plan_retention(policy, &survey, &HashSet::new(), policy.timezone, at, None);
    let app = policy.vss.is_some() || policy.scripts.is_some();
    let listed = survey.snapshots.clone();
    // What the copy phase sees: the source after its retention.
    let deleted: HashSet<&str> = plan
        .decisions
        .iter()
        .filter(|d| d.action == Action::Delete)
        .map(|d| &*d.snapshot_id)
        .collect();
    survey.snapshots.retain(|s| !deleted.contains(&*s.id));
    let mut copy_to: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    let mut copies = Vec::new();
    for d in &survey.copies {
        for c in worker::copy::would_copy(d, &survey, policy.timezone, at) {
            copy_to
                .entry(c.source)
                .or_default()
                .push(d.region.to_string());
        }
        let copied = d.copies.as_deref().unwrap_or_default();
        let snaps: Vec<Snap> = copied
            .iter()
            .map(|c| c.snap.clone())
            .filter(exists)
            .collect();
        let plan = worker::copy::plan_retention(policy, d, &snaps, &survey, &HashSet::new(), at);
        copies.push(Evaluation {
            policy: policy.name.clone(),
            account: region.account.clone(),
            region: d.region.to_string(),
            snapshots: snaps,
            plan,
            app,
            copy_of: Some(CopyOf {
                region: name.clone(),
                sources: copied
                    .iter()
                    .map(|c| (Arc::clone(&c.snap.id), Arc::clone(&c.source)))
                    .collect(),
            }),
            copy_to: HashMap::new(),
        });
    }
    let own = Evaluation {
        policy: policy.name.clone(),
        account: region.account.clone(),
        region: name,
        snapshots: listed.clone(),
        plan,
        app,
        copy_of: None,
        copy_to,
    };
    Ok((std::iter::once(own).chain(copies).collect(), listed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::{self, Caps, KeepRules, PlanInput, ScheduleRules, SnapState};
    use crate::schedule::parse_slot;
    use std::sync::Arc;

    fn t(s: &str) -> DateTime<Utc> {
        parse_slot(s).unwrap()
    }

    fn snap(id: &str, volume: &str, slot: &str, schedules: &[&str]) -> Snap {
        Snap {
            id: id.into(),
            volume_id: volume.into(),
            slot: t(slot),
            schedules: schedules.iter().map(|&s| Arc::from(s)).collect(),
            state: SnapState::Completed,
            pinned: false,
            app_consistent: false,
            group: retention::Group::Volume,
            started: 0,
        }
    }

    /// Plans `snapshots` with the real planner: `last` per schedule name, `targeted` volumes (others are orphans).
    fn evaluation(
        policy: &str,
        region: &str,
        snapshots: Vec<Snap>,
        last: &[(&str, u32)],
        caps: Caps,
        targeted: &[&str],
    ) -> Evaluation {
        let schedules: Vec<ScheduleRules> = last
            .iter()
            .map(|(name, n)| ScheduleRules {
                name: Arc::from(*name),
                keep: KeepRules {
                    last: Some(*n),
                    ..KeepRules::default()
                },
                count_from_tag: false,
            })
            .collect();
        let targeted: HashSet<String> = targeted.iter().map(|v| v.to_string()).collect();
        let input = PlanInput {
            snapshots: &snapshots,
            schedules: &schedules,
            counts: &HashMap::new(),
            frozen_volumes: &HashSet::new(),
            tz: chrono_tz::UTC,
            targeted: Some(&targeted),
            orphans: Default::default(),
            caps,
            held: &retention::NOTHING_HELD,
        };
        let plan = retention::plan(&input, t(AT));
        Evaluation {
            policy: policy.into(),
            account: "own".into(),
            region: region.into(),
            snapshots,
            plan,
            app: false,
            copy_of: None,
            copy_to: HashMap::new(),
        }
    }

    const AT: &str = "2026-01-10T12:00:00Z";

    #[test]
    fn a_policy_with_vss_or_scripts_counts_consistent_and_fallback_snapshots() {
        let mut snaps = history();
        for s in snaps.iter_mut().skip(1) {
            s.app_consistent = true;
        }
        let mut app = evaluation(
            "app",
            "r-1",
            snaps,
            &[("daily", 9)],
            Caps::default(),
            &["vol-a"],
        );
        app.app = true;
        let plain = evaluation(
            "prod",
            "r-1",
            history(),
            &[("daily", 9)],
            Caps::default(),
            &["vol-a"],
        );
        let r = report(&[app, plain], t(AT));
        let json = serde_json::to_value(&r.rows).unwrap();
        let flags: Vec<Option<bool>> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.get("app_consistent")
                    .and_then(serde_json::Value::as_bool)
            })
            .collect();
        assert_eq!(flags.iter().filter(|f| **f == Some(true)).count(), 4);
        assert_eq!(flags.iter().filter(|f| **f == Some(false)).count(), 1);
        assert_eq!(
            flags.iter().filter(|f| f.is_none()).count(),
            5,
            "other policies' rows do not say"
        );
        let table = render_table(&r);
        assert!(
            table.contains("policy app: 4 application-consistent, 1 crash-consistent fallback"),
            "{table}"
        );
        assert!(!table.contains("policy prod:"), "{table}");
    }

    /// vol-a: four daily snapshots, the Monday one also weekly; vol-b: one snapshot, no longer targeted.
    fn history() -> Vec<Snap> {
        vec![
            snap("snap-3", "vol-a", "2026-01-07T03:00:00Z", &["daily"]),
            snap(
                "snap-1",
                "vol-a",
                "2026-01-05T03:00:00Z",
                &["daily", "weekly"],
            ),
            snap("snap-4", "vol-a", "2026-01-09T03:00:00Z", &["daily"]),
            snap("snap-2", "vol-a", "2026-01-06T03:00:00Z", &["daily"]),
            snap("snap-9", "vol-b", "2025-12-01T03:00:00Z", &["daily"]),
        ]
    }

    #[test]
    fn rows_follow_the_documented_order_and_carry_text_labels_and_ages() {
        let b = evaluation(
            "prod",
            "us-west-2",
            history(),
            &[("daily", 2)],
            Caps::default(),
            &["vol-a"],
        );
        let a = evaluation(
            "prod",
            "eu-west-1",
            history(),
            &[("daily", 2)],
            Caps::default(),
            &["vol-a"],
        );
        let c = evaluation(
            "app",
            "us-west-2",
            history(),
            &[("daily", 2)],
            Caps::default(),
            &["vol-a"],
        );
        let r = report(&[b, a, c], t(AT));
        let order: Vec<(&str, &str, &str)> = r
            .rows
            .iter()
            .map(|r| (r.policy.as_str(), r.region.as_str(), r.snapshot_id.as_str()))
            .collect();
        let ids = ["snap-4", "snap-3", "snap-2", "snap-1", "snap-9"];
        let mut expected = Vec::new();
        for (p, reg) in [
            ("app", "us-west-2"),
            ("prod", "eu-west-1"),
            ("prod", "us-west-2"),
        ] {
            expected.extend(ids.iter().map(|id| (p, reg, *id)));
        }
        assert_eq!(order, expected);

        let row = |id: &str| r.rows.iter().find(|x| x.snapshot_id == id).unwrap();
        let newest = row("snap-4");
        assert_eq!(newest.slot, "2026-01-09T03:00:00Z");
        assert_eq!(newest.age_seconds, 33 * 3600);
        assert_eq!(newest.action, "keep");
        assert_eq!(newest.reasons, ["newest of volume", "daily last 1/2"]);
        assert_eq!(newest.labels, ["newest", "last"]);
        assert_eq!(newest.state, "completed");
        assert!(!newest.orphan);
        let monday = row("snap-1");
        assert_eq!(monday.schedules, ["daily", "weekly"]);
        // `weekly` is no longer configured: removing a schedule keeps its history.
        assert_eq!(monday.action, "keep");
        assert_eq!(monday.labels, ["schedule-removed"]);
        let expired = row("snap-2");
        assert_eq!(
            (expired.action, expired.labels.as_slice()),
            ("delete", &["expired"][..])
        );
        let orphan = row("snap-9");
        assert!(orphan.orphan);
        assert_eq!(orphan.labels, ["newest", "last"]);
        assert!(r.caps.is_empty() && r.rows.iter().all(|x| x.cap_hit.is_none()));
        assert!(r.would_delete());
    }

    #[test]
    fn a_cap_hit_is_on_every_row_of_its_policy_and_region_and_counts_as_would_delete() {
        let caps = Caps {
            max_deletes_per_run: Some(0),
            max_delete_fraction: None,
        };
        let capped = evaluation("prod", "r1", history(), &[("daily", 1)], caps, &["vol-a"]);
        let free = evaluation("prod", "r2", history(), &[("daily", 9)], caps, &["vol-a"]);
        let r = report(&[capped, free], t(AT));
        assert_eq!(r.caps.len(), 1, "{:?}", r.caps);
        let cap = &r.caps[0];
        assert_eq!((cap.policy.as_str(), cap.region.as_str()), ("prod", "r1"));
        assert_eq!(
            (cap.setting, cap.limit.as_str(), cap.needed.as_str()),
            ("max-deletes-per-run", "0", "2")
        );
        assert!(
            cap.message.contains("raise max-deletes-per-run to 2"),
            "{}",
            cap.message
        );
        for row in &r.rows {
            assert_eq!(row.cap_hit.is_some(), row.region == "r1", "{row:?}");
            assert_eq!(
                row.action, "keep",
                "nothing is deleted under a cap: {row:?}"
            );
        }
        assert!(r.rows.iter().any(|x| x.labels == ["over-cap"]));
        assert!(
            r.would_delete(),
            "a blocked plan would alert: CI must hear of it"
        );
        let text = render_table(&r);
        let first_line = text.lines().nth(1).unwrap();
        assert!(
            first_line.starts_with("!! DELETION CAP: policy prod in r1:")
                && first_line.contains("max-deletes-per-run"),
            "the verdict heads the table:\n{text}"
        );
    }

    #[test]
    fn totals_count_a_snapshot_under_each_schedule_it_serves() {
        let mut snaps = history();
        snaps.push(snap("snap-0", "vol-a", "2026-01-01T03:00:00Z", &[]));
        let e = evaluation(
            "prod",
            "r1",
            snaps,
            &[("daily", 2), ("weekly", 1)],
            Caps::default(),
            &["vol-a"],
        );
        let r = report(&[e], t(AT));
        let tot = totals(&r.rows);
        assert_eq!(tot.all, Tally { keep: 5, delete: 1 }, "{:#?}", r.rows);
        assert_eq!(tot.policies["prod"], tot.all);
        let sched = |s: &str| tot.schedules[&("prod".to_string(), s.to_string())];
        assert_eq!(sched("daily"), Tally { keep: 4, delete: 1 });
        assert_eq!(sched("weekly"), Tally { keep: 1, delete: 0 });
        assert_eq!(
            sched(""),
            Tally { keep: 1, delete: 0 },
            "a snapshot listing no schedule"
        );
        let vol = |v: &str| {
            tot.volumes[&(
                "prod".to_string(),
                "own".to_string(),
                "r1".to_string(),
                v.to_string(),
            )]
        };
        assert_eq!(vol("vol-a"), Tally { keep: 4, delete: 1 });
        assert_eq!(vol("vol-b"), Tally { keep: 1, delete: 0 });
        let text = render_table(&r);
        assert!(text.contains("6 snapshots: 5 keep, 1 delete"), "{text}");
        assert!(text.contains("prod/(none listed)"), "{text}");
    }

    #[test]
    fn diff_lists_only_changed_actions_with_both_reasons() {
        let cur = report(
            &[evaluation(
                "prod",
                "r1",
                history(),
                &[("daily", 3)],
                Caps::default(),
                &["vol-a"],
            )],
            t(AT),
        );
        let new = report(
            &[evaluation(
                "prod",
                "r1",
                history(),
                &[("daily", 1)],
                Caps::default(),
                &["vol-a"],
            )],
            t(AT),
        );
        let changes = diff(&cur, &new);
        let ids: Vec<&str> = changes.iter().map(|c| c.snapshot_id.as_str()).collect();
        assert_eq!(
            ids,
            ["snap-3", "snap-2"],
            "newest first; unchanged ones left out"
        );
        let c = &changes[1];
        assert_eq!(c.change, "newly-deleted");
        assert_eq!(
            (c.current.action, c.current.reasons.as_slice()),
            ("keep", &["daily last 3/3".to_string()][..])
        );
        assert_eq!(
            (c.new.action, c.new.labels.as_slice()),
            ("delete", &["expired"][..])
        );
        assert!(diff_would_delete(&new, &changes));

        // The reverse direction: the same pair read the other way round keeps what it used to delete.
        let back = diff(&new, &cur);
        assert!(back.iter().all(|c| c.change == "newly-kept"), "{back:?}");
        assert!(!diff_would_delete(&cur, &back));
        assert!(diff(&cur, &cur).is_empty());
        let text = render_diff(&cur, &cur, &[]);
        assert!(text.contains("no snapshot changes action"), "{text}");
        assert!(
            render_diff(&cur, &new, &changes).contains("deletes 2 snapshots the current one keeps")
        );
    }

    #[test]
    fn a_policy_only_one_config_has_is_kept_by_the_other() {
        let only_new = report(
            &[evaluation(
                "new",
                "r1",
                history(),
                &[("daily", 1)],
                Caps::default(),
                &["vol-a"],
            )],
            t(AT),
        );
        let empty = report(&[], t(AT));
        let added = diff(&empty, &only_new);
        assert_eq!(
            added.len(),
            2,
            "the two snapshots the new policy deletes: {added:?}"
        );
        for c in &added {
            assert_eq!(c.change, "newly-deleted");
            assert_eq!(c.current.labels, ["no-policy"]);
            assert_eq!(c.current.reasons, ["no policy `new` in this config"]);
        }
        let removed = diff(&only_new, &empty);
        assert!(removed
            .iter()
            .all(|c| c.change == "newly-kept" && c.new.labels == ["no-policy"]));
        assert_eq!(removed.len(), 2);
    }

    #[test]
    fn ages_read_in_the_largest_units() {
        assert_eq!(format_age(0), "0m");
        assert_eq!(format_age(59), "0m");
        assert_eq!(format_age(40 * 60), "40m");
        assert_eq!(format_age(5 * 3600 + 12 * 60 + 5), "5h 12m");
        assert_eq!(format_age(3 * 86_400 + 4 * 3600 + 59 * 60), "3d 4h");
        assert_eq!(format_age(-90 * 60), "-1h 30m");
    }

    #[test]
    fn table_columns_line_up() {
        let text = table(
            &["A", "NUM", "LAST"],
            &[1],
            &[
                vec!["long-cell".into(), "7".into(), "x".into()],
                vec!["b".into(), "1234".into(), "".into()],
            ],
        );
        assert_eq!(
            text,
            "A           NUM  LAST\nlong-cell     7  x\nb          1234\n"
        );
    }
}
