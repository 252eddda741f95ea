//! The keep rules of one schedule applied to one volume: which of that schedule's completed snapshots each rule
//! keeps, and why. It knows nothing of rails (pinned, pending, newest, frozen volumes), error snapshots, orphans,
//! caps or removed schedules; `plan_volume` in the parent module handles those and combines the results.
//!
//! Each rule is one function over the same newest-first slice, and the schedule's result is their union.
//! Calendar rules compute one bucket key per snapshot (ISO week-year and week together, the local date, …) once,
//! then walk the slice; they never compare a snapshot's fields with its neighbour's, which is how other tools
//! split a week that spans 1 January in two (calendar year next to ISO week) or merge equal hours of different
//! days. The semantics are restic's `forget` (0.16 and later), rule for rule, including its one surprise: a rule
//! that still has room after its last bucket also keeps the oldest snapshot (see [`Reason::Oldest`]; restic 0.14
//! and 0.15 lack that). Where we differ, we keep more: our windows include their boundary (restic's exclude it),
//! and a window is a fixed length ("30d" is 720 hours; restic counts calendar days and months).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{Datelike, NaiveDateTime, TimeDelta, Timelike};

use super::{Count, Period, Reason, ScheduleRules, Snap};

/// Where this volume's keep-last count for the schedule stands, resolved by the caller from `keep.last` or the
/// count tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LastCount {
    /// No keep-last rule.
    NotSet,
    Count(u32),
    /// The schedule takes its count from a tag and this volume has none.
    Unknown,
}

/// `completed`: the schedule's completed snapshots on one volume, newest first (never empty in practice, but an
/// empty slice is fine). Returns the keep reasons of each entry, aligned with `completed`; an empty list means
/// this schedule does not keep that snapshot.
pub(super) fn keep_reasons(
    schedule: &ScheduleRules,
    last: LastCount,
    completed: &[&Snap],
    tz: chrono_tz::Tz,
) -> Vec<Vec<Reason>> {
    let mut reasons = vec![Vec::new(); completed.len()];
    let name = &schedule.name;
    match last {
        LastCount::NotSet => {}
        LastCount::Count(n) => keep_last(name, n, &mut reasons),
        // A wrong guess here deletes backups; keeping costs only storage until the tag is fixed.
        LastCount::Unknown => {
            for r in &mut reasons {
                r.push(Reason::CountUnknown {
                    schedule: name.clone(),
                });
            }
        }
    }
    if let Some(window) = schedule.keep.within {
        keep_within(name, window, completed, &mut reasons);
    }
    if schedule.keep.all {
        for r in &mut reasons {
            r.push(Reason::All {
                schedule: name.clone(),
            });
        }
    }
    let calendar = Period::ALL
        .iter()
        .any(|&p| schedule.keep.count(p).is_some() || schedule.keep.window(p).is_some());
    if calendar {
        // The local wall-clock time of every slot, converted once for all rules.
        let local: Vec<NaiveDateTime> = completed
            .iter()
            .map(|s| s.slot.with_timezone(&tz).naive_local())
            .collect();
        for period in Period::ALL {
            let count = schedule.keep.count(period);
            let window = schedule.keep.window(period);
            if count.is_none() && window.is_none() {
                continue;
            }
            let keys: Vec<i64> = local.iter().map(|t| bucket(period, t)).collect();
            if let Some(count) = count {
                keep_calendar(name, period, count, &keys, &mut reasons);
            }
            if let Some(window) = window {
                let inside = within_len(window, completed);
                keep_within_calendar(name, period, window, &keys[..inside], &mut reasons);
            }
        }
    }
    reasons
}

/// The bucket of a local wall-clock time; equal keys are the same period. Keys grow with local time, which is
/// all the rules need (they only test equality; the order is used nowhere).
pub(super) fn bucket(period: Period, t: &NaiveDateTime) -> i64 {
    let date = t.date();
    match period {
        // Date and hour of the wall clock: the repeated hour of a fall-back night is one bucket (see `Period`).
        Period::Hour => i64::from(date.num_days_from_ce()) * 24 + i64::from(t.hour()),
        Period::Day => i64::from(date.num_days_from_ce()),
        // ISO week-year, not the calendar year: 2024-12-30 is in 2025-W01 together with 2025-01-05.
        Period::Week => {
            let week = date.iso_week();
            i64::from(week.year()) * 100 + i64::from(week.week())
        }
        Period::Month => i64::from(date.year()) * 12 + i64::from(date.month0()),
        Period::Quarter => i64::from(date.year()) * 4 + i64::from(date.month0() / 3),
        Period::Year => i64::from(date.year()),
    }
}

/// Keeps the newest snapshot of each of the `count` most recent non-empty buckets. `keys` is newest first, so
/// the first snapshot seen of a bucket is its newest; a period without snapshots never gets a rank.
fn keep_calendar(
    name: &Arc<str>,
    period: Period,
    count: Count,
    keys: &[i64],
    reasons: &mut [Vec<Reason>],
) {
    let limit = match count {
        Count::N(n) => Some(n),
        Count::All => None,
    };
    let mut seen = HashSet::new();
    let mut rank = 0u32;
    for (key, r) in keys.iter().zip(reasons.iter_mut()) {
        if limit.is_some_and(|n| rank >= n) {
            return; // full: no room left, so no oldest either
        }
        if seen.insert(*key) {
            rank += 1;
            r.push(Reason::Calendar {
                schedule: name.clone(),
                period,
                rank,
                of: limit,
            });
        }
    }
    // Every bucket has its newest kept and the rule still has room (or is `all`): restic then keeps the oldest
    // snapshot too, so the history reaches as far back as it exists. Nothing to add when the oldest already
    // heads its own bucket (or the rule keeps nothing at all, `daily = 0`).
    if limit.is_none_or(|n| rank < n) {
        keep_oldest(name, period, None, keys.len(), reasons);
    }
}

/// Keeps the newest snapshot of every bucket among `keys` — the prefix of the schedule's snapshots inside the
/// window — and, as restic does, the oldest snapshot when the window reaches back past it.
fn keep_within_calendar(
    name: &Arc<str>,
    period: Period,
    window: std::time::Duration,
    keys: &[i64],
    reasons: &mut [Vec<Reason>],
) {
    let mut seen = HashSet::new();
    for (key, r) in keys.iter().zip(reasons.iter_mut()) {
        if seen.insert(*key) {
            r.push(Reason::WithinCalendar {
                schedule: name.clone(),
                period,
                window,
            });
        }
    }
    if keys.len() == reasons.len() {
        keep_oldest(name, period, Some(window), keys.len(), reasons);
    }
}

/// Adds `Oldest` to the last of the first `len` entries unless this rule already keeps it.
fn keep_oldest(
    name: &Arc<str>,
    period: Period,
    window: Option<std::time::Duration>,
    len: usize,
    reasons: &mut [Vec<Reason>],
) {
    let Some(oldest) = len.checked_sub(1).and_then(|i| reasons.get_mut(i)) else {
        return;
    };
    let kept = oldest.iter().any(|r| match r {
        Reason::Calendar { period: p, .. } => window.is_none() && *p == period,
        Reason::WithinCalendar { period: p, .. } => window.is_some() && *p == period,
        _ => false,
    });
    if !kept {
        oldest.push(Reason::Oldest {
            schedule: name.clone(),
            period,
            window,
        });
    }
}

/// How many of `completed` (newest first) lie within `window` of the newest, boundary inclusive.
fn within_len(window: std::time::Duration, completed: &[&Snap]) -> usize {
    let Some(newest) = completed.first() else {
        return 0;
    };
    // A window too large for chrono (or reaching before its earliest date) covers every snapshot there is.
    let Some(cutoff) = TimeDelta::from_std(window)
        .ok()
        .and_then(|w| newest.slot.checked_sub_signed(w))
    else {
        return completed.len();
    };
    completed.partition_point(|s| s.slot >= cutoff)
}

fn keep_last(name: &Arc<str>, n: u32, reasons: &mut [Vec<Reason>]) {
    for (rank, r) in (1..=n).zip(reasons.iter_mut()) {
        r.push(Reason::Last {
            schedule: name.clone(),
            rank,
            of: n,
        });
    }
}

/// The window is anchored at the schedule's newest completed snapshot, not at `now`: if snapshot creation stops
/// for a month, a 7-day window still keeps the last 7 days that exist. The boundary is inclusive (restic's is
/// exclusive: a snapshot exactly 7 days older than the newest is kept here, deleted there).
fn keep_within(
    name: &Arc<str>,
    window: std::time::Duration,
    completed: &[&Snap],
    reasons: &mut [Vec<Reason>],
) {
    let inside = within_len(window, completed);
    for r in &mut reasons[..inside] {
        r.push(Reason::Within {
            schedule: name.clone(),
            window,
        });
    }
}
