//! The retention planner: given every managed snapshot of one policy and the policy's schedules as configured
//! now, decide for each snapshot whether to keep or delete it, and say why. It is a pure function of its input:
//! it reads no clock, no tags and no AWS types, and it deletes nothing — the worker executes the plan, logs it and
//! counts it. Parsing tags into [`Snap`]s, reading the count tag and deciding which volumes failed this run belong
//! to the caller. Calendar rules (hourly/daily/… buckets) are not built yet; they slot into `rules.rs`.
//!
//! How a snapshot is judged, in order:
//! - Rails that always keep: `pinned` (a `snapwarden:keep` tag), `pending` (not finished, so not judged yet), and
//!   the newest completed snapshot of each volume across all of the policy's schedules, so a misconfigured rule can
//!   never leave a volume with no restorable snapshot.
//! - Schedule rules judge completed snapshots only. Each schedule sees only the snapshots that list it, and a
//!   snapshot is kept when *any* of its listed schedules keeps it (rules within a schedule combine as a union).
//!   A listed schedule that is no longer configured keeps the snapshot (`ScheduleRemoved`): removing a schedule
//!   from the config must not silently delete its history. A completed snapshot that lists no schedule at all is
//!   kept the same way, reported as `ScheduleRemoved { schedule: "" }`: we cannot tell which rules it was made
//!   under, and keeping is the only choice that cannot lose data.
//! - Error-state snapshots are never counted by a rule and are deleted (`ErrorState`): they restore nothing and
//!   still count toward EC2's per-volume pending-snapshot limit.
//! - A volume in `frozen_volumes` (one of its snapshots failed in this run) loses nothing: every snapshot that
//!   would otherwise be deleted is kept with `VolumeFailed`, so `plan` still shows exactly what the freeze saved.
//!
//! A `Delete` decision carries only delete reasons (`Expired`, `ErrorState`); a `Keep` decision carries every
//! keep reason that applies. Plans are idempotent: planning again without the deleted snapshots deletes nothing.

mod rules;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// One schedule's keep rules. Calendar rules (hourly/daily/weekly/monthly/quarterly/yearly counts, within-daily
/// windows) will join these as more fields; `rules.rs` is where each rule turns into keep reasons.
///
/// An empty rule set keeps nothing beyond the rails. Config validation is expected to reject that unless the
/// schedule takes its count from a tag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeepRules {
    /// Keep the N newest completed snapshots of the schedule, per volume.
    pub last: Option<u32>,
    /// Keep completed snapshots whose slot is within this long of the schedule's newest completed one, per volume.
    pub within: Option<Duration>,
    /// Keep every snapshot of the schedule.
    pub all: bool,
}

impl KeepRules {
    /// True when no rule is configured at all (`last = Some(0)` counts as configured: it was written on purpose).
    pub fn is_empty(&self) -> bool {
        self.last.is_none() && self.within.is_none() && !self.all
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapState {
    Pending,
    Completed,
    Error,
}

impl SnapState {
    /// EC2's own spelling of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapState::Pending => "pending",
            SnapState::Completed => "completed",
            SnapState::Error => "error",
        }
    }
}

/// A managed snapshot of one policy, as read back from its tags.
#[derive(Debug, Clone)]
pub struct Snap {
    pub id: String,
    pub volume_id: String,
    /// From the `snapwarden:slot` tag (StartTime when absent) — the caller resolves it.
    pub slot: DateTime<Utc>,
    /// From `snapwarden:schedule` (comma separated, already split). Compared with schedule names exactly.
    pub schedules: Vec<String>,
    pub state: SnapState,
    /// Carries a `snapwarden:keep` tag.
    pub pinned: bool,
}

#[derive(Debug, Clone)]
pub struct ScheduleRules {
    pub name: String,
    pub keep: KeepRules,
    /// The schedule uses a count tag: its keep-last count per volume comes from `PlanInput::counts`, not
    /// `keep.last`.
    pub count_from_tag: bool,
}

pub struct PlanInput<'a> {
    /// Every managed snapshot of ONE policy, any volume, any order.
    pub snapshots: &'a [Snap],
    /// The policy's schedules as configured now. Names are expected to be unique; if one repeats, the first wins.
    pub schedules: &'a [ScheduleRules],
    /// (volume_id, schedule name) -> keep-last from the count tag.
    pub counts: &'a HashMap<(String, String), u32>,
    /// A snapshot of this volume failed in this run: delete nothing of it.
    pub frozen_volumes: &'a HashSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Carries a `snapwarden:keep` tag.
    Pinned,
    /// Not finished yet; judged once it completes.
    Pending,
    /// The newest completed snapshot of its volume, across all of the policy's schedules.
    Newest,
    /// A snapshot of this volume failed in this run; this one would otherwise have been deleted.
    VolumeFailed,
    /// Among the `of` newest completed snapshots of `schedule` on its volume, at position `rank` (1 = newest).
    Last {
        schedule: String,
        rank: u32,
        of: u32,
    },
    /// Within `window` of the newest completed snapshot of `schedule` on its volume.
    Within { schedule: String, window: Duration },
    /// `schedule` keeps everything.
    All { schedule: String },
    /// `schedule` takes its count from a tag and the volume has none: keep rather than guess.
    CountUnknown { schedule: String },
    /// The snapshot lists `schedule`, which is no longer configured (`""`: it lists no schedule at all).
    ScheduleRemoved { schedule: String },
    /// Delete: no listed schedule keeps it and no rail protects it.
    Expired,
    /// Delete: the snapshot ended in error.
    ErrorState,
}

impl Reason {
    /// A bounded label (one value per variant), safe as a metric label and a log field.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Pinned => "pinned",
            Reason::Pending => "pending",
            Reason::Newest => "newest",
            Reason::VolumeFailed => "volume-failed",
            Reason::Last { .. } => "last",
            Reason::Within { .. } => "within",
            Reason::All { .. } => "all",
            Reason::CountUnknown { .. } => "count-unknown",
            Reason::ScheduleRemoved { .. } => "schedule-removed",
            Reason::Expired => "expired",
            Reason::ErrorState => "error-state",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Pinned => f.write_str("pinned"),
            Reason::Pending => f.write_str("pending"),
            Reason::Newest => f.write_str("newest of volume"),
            Reason::VolumeFailed => f.write_str("volume failed this run"),
            Reason::Last { schedule, rank, of } => write!(f, "{schedule} last {rank}/{of}"),
            Reason::Within { schedule, window } => {
                write!(f, "{schedule} within {}", DisplayDuration(*window))
            }
            Reason::All { schedule } => write!(f, "{schedule} all"),
            Reason::CountUnknown { schedule } => write!(f, "{schedule} count unknown"),
            Reason::ScheduleRemoved { schedule } if schedule.is_empty() => {
                f.write_str("no schedule listed")
            }
            Reason::ScheduleRemoved { schedule } => write!(f, "{schedule} schedule removed"),
            Reason::Expired => f.write_str("expired"),
            Reason::ErrorState => f.write_str("error state"),
        }
    }
}

/// Formats a duration in the largest single unit that divides it exactly ("7d", "36h", "90m"), the way a user
/// writes it in the config; "1d 12h" would read as two rules.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if nanos != 0 {
            return if nanos % 1_000_000 == 0 {
                write!(f, "{}ms", self.0.as_millis())
            } else {
                write!(f, "{}ns", self.0.as_nanos())
            };
        }
        match secs {
            0 => f.write_str("0s"),
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub snapshot_id: String,
    pub volume_id: String,
    pub slot: DateTime<Utc>,
    pub action: Action,
    /// Every reason that applies; never empty.
    pub reasons: Vec<Reason>,
}

/// Plans one policy. Deterministic: the output has one decision per input snapshot, sorted by
/// (volume_id, slot descending, snapshot_id).
///
/// `now` is accepted for age-based orphan rules to come; today the result does not depend on it. Keep-within is
/// measured from the newest completed snapshot, never from `now`, so an outage of snapshot creation cannot
/// erase history.
pub fn plan(input: &PlanInput<'_>, now: DateTime<Utc>) -> Vec<Decision> {
    let _ = now;

    let mut configured: HashMap<&str, &ScheduleRules> =
        HashMap::with_capacity(input.schedules.len());
    for schedule in input.schedules {
        configured.entry(schedule.name.as_str()).or_insert(schedule);
    }

    let mut by_volume: HashMap<&str, Vec<&Snap>> = HashMap::new();
    for snap in input.snapshots {
        by_volume
            .entry(snap.volume_id.as_str())
            .or_default()
            .push(snap);
    }
    let mut volumes: Vec<(&str, Vec<&Snap>)> = by_volume.into_iter().collect();
    volumes.sort_unstable_by(|a, b| a.0.cmp(b.0));

    let mut decisions = Vec::with_capacity(input.snapshots.len());
    for (volume_id, mut snaps) in volumes {
        snaps.sort_by(|a, b| newest_first(a, b));
        plan_volume(volume_id, &snaps, &configured, input, &mut decisions);
    }
    decisions
}

/// The one order used everywhere: ranks, the newest rail and the output. Equal slots tie-break by id so the
/// plan never depends on the order EC2 listed the snapshots in.
fn newest_first(a: &Snap, b: &Snap) -> Ordering {
    b.slot.cmp(&a.slot).then_with(|| a.id.cmp(&b.id))
}

/// `snaps`: one volume's snapshots, newest first.
fn plan_volume(
    volume_id: &str,
    snaps: &[&Snap],
    configured: &HashMap<&str, &ScheduleRules>,
    input: &PlanInput<'_>,
    out: &mut Vec<Decision>,
) {
    // Completed snapshots per listed schedule, newest first. A BTreeMap so each snapshot's rule reasons come out
    // in schedule-name order; a schedule listed twice on one snapshot counts once.
    let mut per_schedule: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut rule_reasons: Vec<Vec<Reason>> = vec![Vec::new(); snaps.len()];
    for (i, snap) in snaps.iter().enumerate() {
        if snap.state != SnapState::Completed {
            continue;
        }
        if snap.schedules.is_empty() {
            rule_reasons[i].push(Reason::ScheduleRemoved {
                schedule: String::new(),
            });
        }
        for name in &snap.schedules {
            let list = per_schedule.entry(name.as_str()).or_default();
            // All of snapshot i's names are handled before i+1, so a repeat of a name shows up as `i` already last.
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }

    for (name, indices) in &per_schedule {
        let completed: Vec<&Snap> = indices.iter().map(|&i| snaps[i]).collect();
        let reasons = match configured.get(name) {
            None => completed
                .iter()
                .map(|_| {
                    vec![Reason::ScheduleRemoved {
                        schedule: (*name).to_string(),
                    }]
                })
                .collect(),
            Some(schedule) => {
                let last = if schedule.count_from_tag {
                    match input
                        .counts
                        .get(&(volume_id.to_string(), schedule.name.clone()))
                    {
                        Some(&n) => rules::LastCount::Count(n),
                        None => rules::LastCount::Unknown,
                    }
                } else {
                    schedule
                        .keep
                        .last
                        .map_or(rules::LastCount::NotSet, rules::LastCount::Count)
                };
                rules::keep_reasons(schedule, last, &completed)
            }
        };
        for (&i, reasons) in indices.iter().zip(reasons) {
            rule_reasons[i].extend(reasons);
        }
    }

    let newest_completed = snaps.iter().position(|s| s.state == SnapState::Completed);
    let frozen = input.frozen_volumes.contains(volume_id);

    for (i, (snap, from_rules)) in snaps.iter().zip(rule_reasons).enumerate() {
        let mut reasons = Vec::new();
        if snap.pinned {
            reasons.push(Reason::Pinned);
        }
        match snap.state {
            SnapState::Pending => reasons.push(Reason::Pending),
            SnapState::Completed => {
                if newest_completed == Some(i) {
                    reasons.push(Reason::Newest);
                }
                reasons.extend(from_rules);
            }
            // Rules never count an error snapshot, so nothing but a rail keeps it.
            SnapState::Error => {}
        }
        let action = if !reasons.is_empty() {
            Action::Keep
        } else if frozen {
            reasons.push(Reason::VolumeFailed);
            Action::Keep
        } else {
            reasons.push(match snap.state {
                SnapState::Error => Reason::ErrorState,
                _ => Reason::Expired,
            });
            Action::Delete
        };
        out.push(Decision {
            snapshot_id: snap.id.clone(),
            volume_id: snap.volume_id.clone(),
            slot: snap.slot,
            action,
            reasons,
        });
    }
}
