//! The keep rules of one schedule applied to one volume: which of that schedule's completed snapshots each rule
//! keeps, and why. It knows nothing of rails (pinned, pending, newest, frozen volumes), error snapshots or
//! removed schedules; `plan_volume` in the parent module handles those and combines the results.
//!
//! Each rule is one function over the same newest-first slice, and the schedule's result is their union. The
//! calendar rules still to come (hourly/daily/weekly/… counts) belong here as one more function each, computing
//! one bucket key per snapshot (e.g. ISO year and week together) rather than comparing neighbours, so a week that
//! spans 1 January stays one bucket.

use chrono::TimeDelta;

use super::{Reason, ScheduleRules, Snap};

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
) -> Vec<Vec<Reason>> {
    let mut reasons = vec![Vec::new(); completed.len()];
    let name = schedule.name.as_str();
    match last {
        LastCount::NotSet => {}
        LastCount::Count(n) => keep_last(name, n, &mut reasons),
        // A wrong guess here deletes backups; keeping costs only storage until the tag is fixed.
        LastCount::Unknown => {
            for r in &mut reasons {
                r.push(Reason::CountUnknown {
                    schedule: name.to_string(),
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
                schedule: name.to_string(),
            });
        }
    }
    reasons
}

fn keep_last(name: &str, n: u32, reasons: &mut [Vec<Reason>]) {
    for (rank, r) in (1..=n).zip(reasons.iter_mut()) {
        r.push(Reason::Last {
            schedule: name.to_string(),
            rank,
            of: n,
        });
    }
}

/// The window is anchored at the schedule's newest completed snapshot, not at `now`: if snapshot creation stops
/// for a month, a 7-day window still keeps the last 7 days that exist. The boundary is inclusive.
fn keep_within(
    name: &str,
    window: std::time::Duration,
    completed: &[&Snap],
    reasons: &mut [Vec<Reason>],
) {
    let Some(newest) = completed.first() else {
        return;
    };
    // A window too large for chrono (or reaching before its earliest date) covers every snapshot there is.
    let cutoff = TimeDelta::from_std(window)
        .ok()
        .and_then(|w| newest.slot.checked_sub_signed(w));
    for (snap, r) in completed.iter().zip(reasons.iter_mut()) {
        if cutoff.is_some_and(|c| snap.slot < c) {
            break; // newest first: everything after this is older still
        }
        r.push(Reason::Within {
            schedule: name.to_string(),
            window,
        });
    }
}
