//! The retention planner: given every managed snapshot of one policy and the policy's schedules as configured
//! now, decide for each snapshot whether to keep or delete it, and say why. It is a pure function of its input:
//! it reads no clock, no tags and no AWS types, and it deletes nothing — the worker executes the plan, logs it and
//! counts it. Parsing tags into [`Snap`]s, reading the count tag, deciding which volumes failed this run and which
//! are still targeted belong to the caller.
//!
//! How a snapshot is judged, in order:
//! - Set aside first, never judged by a rule, never the newest rail and never holding a place in `last`:
//!   `unplaced-copy` (a copy whose tags name no source volume: kept, each on its own), `future-slot` (a completed
//!   snapshot whose slot lies more than [`FUTURE_SLOT_ALLOWANCE`] after `now`: kept, so a typo in a slot tag can
//!   neither erase a volume's history through its `within` windows nor hold a place forever), and `duplicate`
//!   (a completed snapshot repeating the volume, slot and schedules of one EC2 started earlier, or of an
//!   app-consistent one: deleted, unless pinned or a rail keeps it; only among a real volume's snapshots, never
//!   copies).
//! - Rails that always keep: `pinned` (a `snapwarden:keep` tag), `pending` (not finished, so not judged yet), and
//!   the newest completed snapshot of each volume across all of the policy's schedules, so a misconfigured rule can
//!   never leave a volume with no restorable snapshot.
//! - Schedule rules judge completed snapshots only. Each schedule sees only the snapshots that list it, and a
//!   snapshot is kept when *any* of its listed schedules keeps it (rules within a schedule combine as a union:
//!   `last`, `within`, `all` and the calendar rules of `rules.rs`). A listed schedule that is no longer configured
//!   keeps the snapshot (`ScheduleRemoved`): removing a schedule from the config must not silently delete its
//!   history. A completed snapshot that lists no schedule at all is kept the same way, reported as
//!   `ScheduleRemoved { schedule: "" }`: we cannot tell which rules it was made under, and keeping is the only
//!   choice that cannot lose data.
//! - A schedule with `app-consistent-only` judges only the snapshots tagged app-consistent: the others hold no
//!   place in its `last`, start none of its `within` windows, fill none of its calendar periods, and are not kept
//!   by its `all`. The rails above still keep any snapshot, so a volume whose newest snapshot is a fallback keeps
//!   it. A fallback no rule keeps is deleted as `not-app-consistent`, which names the schedule that passed it over.
//! - Error-state snapshots are never counted by a rule and are deleted (`ErrorState`): they restore nothing and
//!   still count toward EC2's per-volume pending-snapshot limit.
//! - Orphans — volumes the policy no longer targets (`PlanInput::targeted`) — follow [`OrphanPolicy`]. Only
//!   `expire-after` can delete an orphan's newest snapshot, and it is the one rule that reads `now`: an orphan
//!   gets no new snapshots, so "no snapshot for 90 days" can only be measured against the clock.
//! - A volume in `frozen_volumes` (one of its snapshots failed in this run) loses nothing: every snapshot that
//!   would otherwise be deleted is kept with `VolumeFailed`, so `plan` still shows exactly what the freeze saved.
//! - A snapshot no rule or rail keeps is deleted as `duplicate` when it was set aside as one, else `expired`.
//!   Duplicates count toward `max-deletes-per-run` but not toward `max-delete-fraction` (see [`Caps`]).
//! - Deletion caps ([`Caps`]) judge the whole plan last: over either cap, nothing at all is deleted and every
//!   would-be delete is kept with `OverCap`; [`Plan::cap_hit`] names the setting to raise. All or nothing, because
//!   a partial prune of a plan that is wrong (a count typo) still loses the history it was wrong about.
//!
//! A `Delete` decision carries only delete reasons (`Expired`, `NotAppConsistent`, `ErrorState`, `OrphanExpired`,
//! `Duplicate`); a `Keep` decision
//! carries every keep reason that applies. Plans are idempotent: planning again without the deleted snapshots
//! deletes nothing and keeps the same snapshots for the same reasons, with one exception inherited from restic: a
//! `within-*` window that now reaches past the oldest remaining snapshot adds `Oldest` to it (it was kept anyway).

// The copy plan of disaster-recovery copies: used by its unit tests only until the worker's copy phase (the next
// step of issue 15) calls it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod copies;
mod rules;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rustc_hash::{FxHashMap, FxHashSet};

/// One schedule's keep rules, combined as a union.
///
/// An empty rule set keeps nothing beyond the rails. Config validation rejects that unless the schedule takes its
/// count from a tag, and rejects zero counts and zero windows; the planner still accepts them (`Some(0)` keeps
/// nothing by that rule) so that it is total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeepRules {
    /// Keep the N newest completed snapshots of the schedule, per volume.
    pub last: Option<u32>,
    /// Keep completed snapshots whose slot is within this long of the schedule's newest completed one, per volume
    /// (never one set aside: a future slot is not that reference).
    pub within: Option<Duration>,
    /// Keep every snapshot of the schedule.
    pub all: bool,
    /// Calendar rules: keep the newest snapshot of each of the N most recent non-empty periods.
    pub hourly: Option<Count>,
    pub daily: Option<Count>,
    pub weekly: Option<Count>,
    pub monthly: Option<Count>,
    pub(crate) quarterly: Option<Count>,
    pub yearly: Option<Count>,
    /// Calendar windows: keep the newest snapshot of each period that has a snapshot within this long of the
    /// schedule's newest completed one.
    pub(crate) within_hourly: Option<Duration>,
    pub(crate) within_daily: Option<Duration>,
    pub(crate) within_weekly: Option<Duration>,
    pub(crate) within_monthly: Option<Duration>,
    pub(crate) within_quarterly: Option<Duration>,
    pub(crate) within_yearly: Option<Duration>,
    /// `app-consistent-only`: only snapshots tagged `snapwarden:app-consistent = true` count toward (and are kept
    /// by) these rules; the rails (newest of a volume, pinned, pending) still apply to every snapshot.
    pub(crate) app_consistent_only: bool,
}

impl KeepRules {
    /// True when no rule is configured at all (`last = Some(0)` counts as configured: it was written on purpose).
    pub(crate) fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.within.is_none()
            && !self.all
            && Period::ALL
                .iter()
                .all(|&p| self.count(p).is_none() && self.window(p).is_none())
    }

    /// The calendar count rule for `period`.
    pub(crate) fn count(&self, period: Period) -> Option<Count> {
        match period {
            Period::Hour => self.hourly,
            Period::Day => self.daily,
            Period::Week => self.weekly,
            Period::Month => self.monthly,
            Period::Quarter => self.quarterly,
            Period::Year => self.yearly,
        }
    }

    pub(crate) fn count_mut(&mut self, period: Period) -> &mut Option<Count> {
        match period {
            Period::Hour => &mut self.hourly,
            Period::Day => &mut self.daily,
            Period::Week => &mut self.weekly,
            Period::Month => &mut self.monthly,
            Period::Quarter => &mut self.quarterly,
            Period::Year => &mut self.yearly,
        }
    }

    /// The calendar window rule (`within-daily`, …) for `period`.
    pub(crate) fn window(&self, period: Period) -> Option<Duration> {
        match period {
            Period::Hour => self.within_hourly,
            Period::Day => self.within_daily,
            Period::Week => self.within_weekly,
            Period::Month => self.within_monthly,
            Period::Quarter => self.within_quarterly,
            Period::Year => self.within_yearly,
        }
    }

    pub(crate) fn window_mut(&mut self, period: Period) -> &mut Option<Duration> {
        match period {
            Period::Hour => &mut self.within_hourly,
            Period::Day => &mut self.within_daily,
            Period::Week => &mut self.within_weekly,
            Period::Month => &mut self.within_monthly,
            Period::Quarter => &mut self.within_quarterly,
            Period::Year => &mut self.within_yearly,
        }
    }
}

/// How many periods a calendar rule keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    N(u32),
    /// Every period there is (restic's `-1`).
    All,
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::N(n) => write!(f, "{n}"),
            Count::All => f.write_str("all"),
        }
    }
}

/// The calendar period of a rule. Buckets are taken in the configured timezone, on the snapshot's slot time:
///
/// - `Hour`: the local wall-clock hour (date and hour as a clock on the wall shows them). On the night clocks go
///   back, the repeated hour (01:00–02:00 twice in New York) is ONE bucket, so its later half's newest snapshot
///   stands for both real hours. That is restic's behaviour (its key is year, month, day, hour of the local time)
///   and it matches what an operator reads in `plan`; the price is one hourly fewer on one night a year. An hour
///   skipped in spring simply has no snapshots.
/// - `Day`: the local date. `Week`: ISO week-year and week (Monday first), so a week spanning 1 January is one
///   bucket and 2020-W53 runs into January 2021. `Month`, `Quarter` (Jan–Mar, …), `Year`: local calendar ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Period {
    pub(crate) const ALL: [Period; 6] = [
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
        Period::Quarter,
        Period::Year,
    ];

    /// The count rule's config key, and its reason label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Quarter => "quarterly",
            Period::Year => "yearly",
        }
    }

    /// The window rule's config key, and its reason label.
    pub(crate) fn within_str(self) -> &'static str {
        match self {
            Period::Hour => "within-hourly",
            Period::Day => "within-daily",
            Period::Week => "within-weekly",
            Period::Month => "within-monthly",
            Period::Quarter => "within-quarterly",
            Period::Year => "within-yearly",
        }
    }
}

/// What to do with the snapshots of a volume the policy no longer targets (the volume was deleted, or it or its
/// instance lost the target tag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// The schedules' rules apply as if the volume were targeted; the newest rail keeps its newest forever.
    #[default]
    KeepRules,
    /// Keep every snapshot of the volume (error-state ones excepted: they hold no data).
    KeepAll,
    /// Keep-rules until the volume's newest completed snapshot is older than this (measured from `now`), then
    /// delete every snapshot of it except pinned and pending ones.
    ExpireAfter(Duration),
}

/// Per-run limits on deletion. Over either, the run deletes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Caps {
    /// At most this many deletions in one plan (one policy, one region).
    pub max_deletes_per_run: Option<u32>,
    /// At most this fraction (0 < f ≤ 1) of one volume's managed snapshots deleted by its rules in one plan.
    /// Error-state, duplicate and expired-orphan deletions do not count toward it: the first hold no data, the
    /// second repeat a slot that stays, the third delete a whole volume's history on purpose and would otherwise
    /// always exceed it.
    pub max_delete_fraction: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapState {
    Pending,
    Completed,
    Error,
}

impl SnapState {
    /// EC2's own spelling of the state.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SnapState::Pending => "pending",
            SnapState::Completed => "completed",
            SnapState::Error => "error",
        }
    }
}

/// How far past `now` a slot may lie and still be judged as usual: clocks of the hosts and tools that tag
/// snapshots drift a little, and a run tags its snapshots with its slot a moment before that slot's fire time
/// when it starts early. A slot beyond it cannot be a backup taken yet; see [`Reason::FutureSlot`].
pub const FUTURE_SLOT_ALLOWANCE: TimeDelta = TimeDelta::minutes(5);

/// What a snapshot's [`Snap::volume_id`] is, i.e. which snapshots it is grouped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// The volume id EC2 reports: the snapshot was taken of that volume.
    Volume,
    /// A copy (EC2 gives every copy the same placeholder volume id): the key names the source that
    /// snapwarden's tags record, so copies of one source are judged together and never with the source's own
    /// snapshots.
    Copy,
    /// A copy whose tags record no source: its key is its own, so it is never pooled, and it is kept.
    Unplaced,
}

/// A managed snapshot of one policy, as read back from its tags.
#[derive(Debug, Clone)]
pub struct Snap {
    /// Shared (`Arc`) with the decisions about it and, for the volume, with every snapshot of the volume: a
    /// survey holds hundreds of thousands of these.
    pub(crate) id: Arc<str>,
    /// The grouping key: the volume id, or for a copy the key [`Group`] describes. Shown as the volume in plans
    /// and logs.
    pub(crate) volume_id: Arc<str>,
    /// From the `snapwarden:slot` tag (StartTime when absent) — the caller resolves it.
    pub(crate) slot: DateTime<Utc>,
    /// From `snapwarden:schedule` (comma separated, already split). Compared with schedule names exactly. Shared:
    /// every snapshot with the same tag value holds the same list (see [`Interner`]).
    pub(crate) schedules: Arc<[Arc<str>]>,
    pub(crate) state: SnapState,
    /// Carries a `snapwarden:keep` tag.
    pub(crate) pinned: bool,
    /// Carries `snapwarden:app-consistent = true` (VSS, or taken while a pre script held the instance still).
    pub(crate) app_consistent: bool,
    pub(crate) group: Group,
    /// EC2's StartTime, in whole seconds since 1970 (`u32` lasts until 2106): what tells the older of two
    /// snapshots of one slot. Four bytes, not a `DateTime`'s twelve: a survey holds hundreds of thousands.
    pub(crate) started: u32,
}

impl Snap {
    /// `started` from EC2's StartTime, clamped to what it can hold.
    pub(crate) fn started_secs(start_time: DateTime<Utc>) -> u32 {
        u32::try_from(start_time.timestamp().max(0)).unwrap_or(u32::MAX)
    }
}

/// Shares the strings of a survey: volume ids (one per volume, not per snapshot) and `snapwarden:schedule` tag
/// values, parsed once per distinct value (a policy has a handful) instead of once per snapshot.
///
/// Hashed with `FxHash`: every snapshot of every survey is looked up twice, SipHash's resistance to chosen keys
/// buys nothing for ids EC2 hands out, and it costs several times more on strings this short.
#[derive(Debug, Default)]
pub struct Interner {
    strs: FxHashSet<Arc<str>>,
    lists: FxHashMap<String, Arc<[Arc<str>]>>,
}

impl Interner {
    pub(crate) fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(v) = self.strs.get(s) {
            return Arc::clone(v);
        }
        let v: Arc<str> = Arc::from(s);
        self.strs.insert(Arc::clone(&v));
        v
    }

    /// A `snapwarden:schedule` value split on commas, blanks trimmed and empty names dropped.
    pub(crate) fn schedules(&mut self, tag: &str) -> Arc<[Arc<str>]> {
        if let Some(v) = self.lists.get(tag) {
            return Arc::clone(v);
        }
        // `+` as well: the VSS document's tags parameter cannot carry a comma in a value.
        let names: Vec<&str> = tag
            .split([',', '+'])
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .collect();
        let list: Arc<[Arc<str>]> = names.into_iter().map(|n| self.str(n)).collect();
        self.lists.insert(tag.to_string(), Arc::clone(&list));
        list
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleRules {
    pub name: Arc<str>,
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
    /// The timezone calendar buckets are taken in (`daemon.timezone`).
    pub tz: chrono_tz::Tz,
    /// Volume ids the policy targets right now. `None`: not known, and then no volume is treated as an orphan.
    pub targeted: Option<&'a HashSet<String>>,
    pub orphans: OrphanPolicy,
    pub caps: Caps,
    /// Snapshot id -> the destination region whose copy of it is wanted and not completed: kept
    /// ([`Reason::CopyPending`]) whatever else the plan says, orphan expiry included.
    pub held: &'a Held,
}

/// See [`PlanInput::held`].
pub type Held = HashMap<Arc<str>, Arc<str>>;

/// No snapshot held: the plans of policies that copy nowhere.
pub static NOTHING_HELD: std::sync::LazyLock<Held> = std::sync::LazyLock::new(Held::new);

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
        schedule: Arc<str>,
        rank: u32,
        of: u32,
    },
    /// Within `window` of the newest completed snapshot of `schedule` on its volume.
    Within {
        schedule: Arc<str>,
        window: Duration,
    },
    /// `schedule` keeps everything.
    All { schedule: Arc<str> },
    /// `schedule` takes its count from a tag and the volume has none: keep rather than guess.
    CountUnknown { schedule: Arc<str> },
    /// The snapshot lists `schedule`, which is no longer configured (`""`: it lists no schedule at all).
    ScheduleRemoved { schedule: Arc<str> },
    /// The newest snapshot of the `rank`-th most recent non-empty `period` of `schedule` on its volume (1 = the
    /// newest period); `of` is the rule's count, `None` for `all`.
    Calendar {
        schedule: Arc<str>,
        period: Period,
        rank: u32,
        of: Option<u32>,
    },
    /// The newest snapshot of its `period`, and that period has snapshots within `window` of the newest completed
    /// snapshot of `schedule` on its volume.
    WithinCalendar {
        schedule: Arc<str>,
        period: Period,
        window: Duration,
    },
    /// The calendar rule `period` (a `within-*` window when `window` is set) still had room after its last
    /// period, so it also keeps the schedule's oldest snapshot on the volume, stretching history as far back as
    /// the rule allows. restic's `forget` does the same.
    Oldest {
        schedule: Arc<str>,
        period: Period,
        window: Option<Duration>,
    },
    /// The volume is an orphan and the policy says `orphans = "keep-all"`.
    OrphanKeepAll,
    /// The slot lies after `now` (beyond [`FUTURE_SLOT_ALLOWANCE`]): a hand-edited or mistyped tag, or a skewed
    /// clock. Kept, and set aside: it is not the volume's newest, no rule counts it and no `within` window is
    /// measured from it, so it can neither erase the volume's history nor hold one of `last`'s places.
    FutureSlot,
    /// A copy whose tags name no source volume (neither `snapwarden:source-volume` nor instance and device):
    /// there is nothing to judge it with, so it is kept rather than pooled with other copies.
    UnplacedCopy,
    /// Kept only because deleting would exceed a deletion cap ([`Plan::cap_hit`] says which).
    OverCap,
    /// A disaster-recovery copy to `region` wants this snapshot and has not completed yet: deleting it first
    /// would leave a slot the destination keeps without a copy ([`PlanInput::held`]).
    CopyPending { region: Arc<str> },
    /// Delete: no listed schedule keeps it and no rail protects it.
    Expired,
    /// Delete: the snapshot ended in error.
    ErrorState,
    /// Delete: the volume is an orphan whose newest snapshot is older than `after` (`orphans.expire-after`).
    OrphanExpired { after: Duration },
    /// Delete: a second completed snapshot of the same volume, slot and schedules (a create retried after a
    /// timeout, or two hosts running one policy); an app-consistent one, else the one EC2 started first, stands
    /// for the slot.
    Duplicate,
    /// Delete: as `Expired`, for a snapshot that is not app-consistent (a crash-consistent fallback) and lists
    /// `schedule`, whose rules count only app-consistent snapshots (`app-consistent-only`): the operator sees that
    /// it went for what it is, not for its age.
    NotAppConsistent { schedule: Arc<str> },
}

impl Reason {
    /// The schedule whose rule gave this reason, for the reasons that come from one.
    pub(crate) fn schedule(&self) -> Option<&str> {
        match self {
            Reason::Last { schedule, .. }
            | Reason::Within { schedule, .. }
            | Reason::All { schedule }
            | Reason::CountUnknown { schedule }
            | Reason::Calendar { schedule, .. }
            | Reason::WithinCalendar { schedule, .. }
            | Reason::Oldest { schedule, .. } => Some(schedule),
            _ => None,
        }
    }

    /// Every label [`Reason::as_str`] gives, in [`Reason::label_index`] order: the labels of kept snapshots (the
    /// first [`Reason::KEEP_LABELS`]), then those of deleted ones.
    pub(crate) const LABELS: [&'static str; 32] = [
        "pinned",
        "pending",
        "newest",
        "volume-failed",
        "last",
        "within",
        "all",
        "count-unknown",
        "schedule-removed",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "quarterly",
        "yearly",
        "within-hourly",
        "within-daily",
        "within-weekly",
        "within-monthly",
        "within-quarterly",
        "within-yearly",
        "oldest",
        "orphan-keep-all",
        "future-slot",
        "unplaced-copy",
        "over-cap",
        "copy-pending",
        "expired",
        "error-state",
        "orphan-expired",
        "duplicate",
        "not-app-consistent",
    ];
    /// Where the calendar rules' labels start in [`Reason::LABELS`] (one per period, in [`Period::ALL`] order), then
    /// the window rules', then the labels after them.
    const CALENDAR_LABELS: usize = 9;
    const WINDOW_LABELS: usize = Self::CALENDAR_LABELS + Period::ALL.len();
    const AFTER_PERIOD_LABELS: usize = Self::WINDOW_LABELS + Period::ALL.len();
    /// How many of [`Reason::LABELS`] are reasons to keep: up to `copy-pending`.
    pub(crate) const KEEP_LABELS: usize = Self::AFTER_PERIOD_LABELS + 6;

    /// The position of this reason's label in [`Reason::LABELS`]: what tallies per label index by, instead of
    /// comparing label strings for every reason of every snapshot.
    pub(crate) fn label_index(&self) -> usize {
        let after = Self::AFTER_PERIOD_LABELS;
        match self {
            Reason::Pinned => 0,
            Reason::Pending => 1,
            Reason::Newest => 2,
            Reason::VolumeFailed => 3,
            Reason::Last { .. } => 4,
            Reason::Within { .. } => 5,
            Reason::All { .. } => 6,
            Reason::CountUnknown { .. } => 7,
            Reason::ScheduleRemoved { .. } => 8,
            Reason::Calendar { period, .. } => Self::CALENDAR_LABELS + *period as usize,
            Reason::WithinCalendar { period, .. } => Self::WINDOW_LABELS + *period as usize,
            Reason::Oldest { .. } => after,
            Reason::OrphanKeepAll => after + 1,
            Reason::FutureSlot => after + 2,
            Reason::UnplacedCopy => after + 3,
            Reason::OverCap => after + 4,
            Reason::CopyPending { .. } => after + 5,
            Reason::Expired => after + 6,
            Reason::ErrorState => after + 7,
            Reason::OrphanExpired { .. } => after + 8,
            Reason::Duplicate => after + 9,
            Reason::NotAppConsistent { .. } => after + 10,
        }
    }

    /// A bounded label (one value per variant), safe as a metric label and a log field.
    pub fn as_str(&self) -> &'static str {
        Self::LABELS[self.label_index()]
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
            Reason::Calendar {
                schedule,
                period,
                rank,
                of,
            } => match of {
                Some(of) => write!(f, "{schedule} {} {rank}/{of}", period.as_str()),
                None => write!(f, "{schedule} {} {rank}/all", period.as_str()),
            },
            Reason::WithinCalendar {
                schedule,
                period,
                window,
            } => write!(
                f,
                "{schedule} {} {}",
                period.within_str(),
                DisplayDuration(*window)
            ),
            Reason::Oldest {
                schedule,
                period,
                window: None,
            } => write!(f, "{schedule} {} oldest", period.as_str()),
            Reason::Oldest {
                schedule,
                period,
                window: Some(window),
            } => write!(
                f,
                "{schedule} {} {} oldest",
                period.within_str(),
                DisplayDuration(*window)
            ),
            Reason::OrphanKeepAll => f.write_str("orphan: keep-all"),
            Reason::FutureSlot => f.write_str("slot in the future"),
            Reason::UnplacedCopy => f.write_str("copy of unknown volume"),
            Reason::OverCap => f.write_str("over deletion cap"),
            Reason::CopyPending { region } => write!(f, "copy to {region} not made yet"),
            Reason::Expired => f.write_str("expired"),
            Reason::ErrorState => f.write_str("error state"),
            Reason::Duplicate => f.write_str("duplicate of slot"),
            Reason::NotAppConsistent { schedule } => write!(
                f,
                "not app-consistent ({schedule} keeps only app-consistent snapshots)"
            ),
            Reason::OrphanExpired { after } => {
                write!(f, "orphan expired after {}", DisplayDuration(*after))
            }
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
    pub snapshot_id: Arc<str>,
    pub volume_id: Arc<str>,
    pub slot: DateTime<Utc>,
    pub action: Action,
    /// Every reason that applies; never empty.
    pub reasons: Vec<Reason>,
    /// The volume is not targeted by the policy any more (only ever set when `PlanInput::targeted` is known).
    pub orphan: bool,
}

/// A plan over a deletion cap: nothing is deleted, and this says what to change if the deletions are intended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CapHit {
    /// The config key to raise: `max-deletes-per-run` or `max-delete-fraction`.
    pub(crate) setting: &'static str,
    /// Its configured value, as written in the config (`50`, `0.5`).
    pub(crate) limit: String,
    /// The smallest value that would let this plan through.
    pub(crate) needed: String,
    /// One line for logs and alerts: what the plan wanted, the cap, and the fix.
    pub(crate) message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One per input snapshot, sorted by (volume_id, slot descending, snapshot_id).
    pub decisions: Vec<Decision>,
    /// Set when a cap blocked the plan; every decision is then `Keep`.
    pub(crate) cap_hit: Option<CapHit>,
}

impl Plan {
    pub fn deletes(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Delete)
    }
}

/// Plans one policy. Deterministic: one decision per input snapshot, in the order [`Plan::decisions`] documents.
///
/// `now` is read by `orphans = { expire-after }` and by the future-slot check; with any other orphan setting
/// and no slot after `now` (plus [`FUTURE_SLOT_ALLOWANCE`]) the result does not depend on it. Every `within` window is measured from the newest completed snapshot, never from `now`, so an
/// outage of snapshot creation cannot erase history.
pub fn plan(input: &PlanInput<'_>, now: DateTime<Utc>) -> Plan {
    plan_with(input, now, None)
}

/// [`plan`] for a caller that acts only on the deletions: each `Keep` decision goes to `kept` as soon as its
/// volume is planned, and the plan returned holds the rest — the deletions or, when a cap blocked them, the same
/// snapshots kept for `OverCap` (in its documented order). The decisions are exactly [`plan`]'s; what differs is
/// memory: a volume's worth of decisions at a time instead of one per snapshot (a run over 300,000 snapshots held
/// ~40 MB of them).
pub(crate) fn plan_deletions(
    input: &PlanInput<'_>,
    now: DateTime<Utc>,
    kept: &mut dyn FnMut(Decision),
) -> Plan {
    plan_with(input, now, Some(kept))
}

fn plan_with(
    input: &PlanInput<'_>,
    now: DateTime<Utc>,
    mut kept: Option<&mut dyn FnMut(Decision)>,
) -> Plan {
    let configured = Configured::new(input.schedules);
    let (mut sorted, ends) = by_volume(input.snapshots);
    let mut scratch = Scratch::new(input.tz);
    let mut decisions = Vec::with_capacity(if kept.is_some() {
        0
    } else {
        input.snapshots.len()
    });
    let mut volume = Vec::new();
    let mut tally = Tally::default();
    let mut start = 0;
    for end in ends {
        let snaps = &mut sorted[start..end];
        // Sorted here rather than with the grouping, so the snapshots are still in cache when they are planned.
        // Stable, so exact duplicates keep their input order; a survey's are often in order already.
        if !snaps.is_sorted_by(|a, b| newest_first(a, b) != Ordering::Greater) {
            snaps.sort_by(|a, b| newest_first(a, b));
        }
        let snaps = &*snaps;
        let out = if kept.is_some() {
            &mut volume
        } else {
            &mut decisions
        };
        let deletes = plan_volume(snaps, &configured, input, now, &mut scratch, out);
        if let Some(kept) = kept.as_mut() {
            for d in volume.drain(..) {
                match d.action {
                    Action::Keep => kept(d),
                    Action::Delete => decisions.push(d),
                }
            }
        }
        tally.deletes += deletes.all;
        if input.caps.max_delete_fraction.is_some() {
            tally.volumes.push(VolumeTally {
                volume: &snaps[0].volume_id,
                managed: snaps.len(),
                deleted: deletes.by_rules,
            });
        }
        start = end;
    }
    let cap_hit = check_caps(&tally, input.caps);
    if cap_hit.is_some() {
        for d in decisions.iter_mut().filter(|d| d.action == Action::Delete) {
            d.action = Action::Keep;
            d.reasons = vec![Reason::OverCap];
        }
    }
    Plan { decisions, cap_hit }
}

/// The one order used everywhere: ranks, the newest rail and the output. Equal slots tie-break by id so the
/// plan never depends on the order EC2 listed the snapshots in.
fn newest_first(a: &Snap, b: &Snap) -> Ordering {
    b.slot.cmp(&a.slot).then_with(|| a.id.cmp(&b.id))
}

/// The configured schedules by name, for the volumes' listed names to look up; a repeated name keeps its first.
struct Configured<'a>(Vec<(&'a str, &'a ScheduleRules)>);

impl<'a> Configured<'a> {
    fn new(schedules: &'a [ScheduleRules]) -> Self {
        let mut by_name: Vec<_> = schedules.iter().map(|s| (&*s.name, s)).collect();
        // A stable sort keeps repeats in config order, and `dedup_by` keeps the first of each run.
        by_name.sort_by(|a, b| a.0.cmp(b.0));
        by_name.dedup_by(|later, first| later.0 == first.0);
        Configured(by_name)
    }

    fn get(&self, name: &str) -> Option<&'a ScheduleRules> {
        let at = self.0.binary_search_by(|(n, _)| (*n).cmp(name)).ok()?;
        Some(self.0[at].1)
    }
}

/// The snapshots grouped by volume, volumes in id order and each volume's in input order, with the end of each
/// volume's stretch in it.
fn by_volume(snaps: &[Snap]) -> (Vec<&Snap>, Vec<usize>) {
    let Some(any) = snaps.first() else {
        return (Vec::new(), Vec::new());
    };
    // Volumes numbered in order of first appearance, and the input cut into runs of one volume, each kept as
    // (volume number, length): 8 bytes a run however the input is ordered. A survey often lists a volume's
    // snapshots together and shares one id among them, so a run usually costs a pointer comparison per snapshot
    // and one lookup by name; interleaved volumes cost a lookup per snapshot, as a map of volumes would.
    let mut numbers: FxHashMap<&str, u32> = FxHashMap::default();
    let mut ids: Vec<&str> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for run in
        snaps.chunk_by(|a, b| Arc::ptr_eq(&a.volume_id, &b.volume_id) || a.volume_id == b.volume_id)
    {
        let id: &str = &run[0].volume_id;
        let v = *numbers.entry(id).or_insert_with(|| {
            ids.push(id);
            sizes.push(0);
            u32_len(ids.len() - 1)
        });
        sizes[v as usize] += run.len();
        runs.push((v, u32_len(run.len())));
    }
    // A counting sort by volume id: each volume gets its stretch of the output, filled run by run in input order.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_unstable_by_key(|&v| ids[v]);
    let mut next = vec![0; ids.len()];
    let mut ends = Vec::with_capacity(ids.len());
    let mut end = 0;
    for &v in &order {
        next[v] = end;
        end += sizes[v];
        ends.push(end);
    }
    let mut sorted = vec![any; snaps.len()];
    let mut from = 0;
    for &(v, len) in &runs {
        let (v, len) = (v as usize, len as usize);
        let to = next[v];
        for (to, snap) in sorted[to..to + len]
            .iter_mut()
            .zip(&snaps[from..from + len])
        {
            *to = snap;
        }
        next[v] += len;
        from += len;
    }
    (sorted, ends)
}

/// `n` as a `u32`, for counts of snapshots: 2^32 of them would take 256 GiB of `Snap`s alone.
fn u32_len(n: usize) -> u32 {
    u32::try_from(n).expect("fewer than 2^32 snapshots")
}

/// Buffers reused from one volume to the next, so that planning allocates little beyond the decisions.
struct Scratch<'a> {
    /// The rule reasons of each of the volume's snapshots, aligned with them; every entry is empty again once the
    /// volume's decisions are made.
    reasons: Vec<Vec<Reason>>,
    /// The schedule names the volume's completed snapshots list, each with the positions of those snapshots,
    /// newest first; only the first `used` entries of a `schedule_reasons` call are the volume's.
    listed: Vec<Listed<'a>>,
    rules: rules::Scratch,
    /// The `counts` key being looked up, rebuilt in place.
    count_key: (String, String),
    /// The schedule name of `ScheduleRemoved` for a snapshot that lists none.
    no_schedule: Arc<str>,
    /// Why each of the volume's snapshots is set aside from judging, aligned with them.
    aside: Vec<Aside>,
}

/// Why a snapshot is kept out of the rules, the newest rail and `last`'s ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aside {
    /// Judged as usual.
    No,
    Future,
    Duplicate,
    Unplaced,
}

struct Listed<'a> {
    name: &'a Arc<str>,
    snaps: Vec<usize>,
}

impl Scratch<'_> {
    fn new(tz: chrono_tz::Tz) -> Self {
        Scratch {
            reasons: Vec::new(),
            listed: Vec::new(),
            rules: rules::Scratch::new(tz),
            count_key: (String::new(), String::new()),
            no_schedule: Arc::from(""),
            aside: Vec::new(),
        }
    }
}

/// What a volume's decisions delete: in all, and by its rules (`Expired`, what `max-delete-fraction` counts).
/// A `Duplicate` counts toward `max-deletes-per-run` (it is a DeleteSnapshot call like any other) but not toward
/// the fraction: the slot it repeats stays, so no history is lost, and on a young volume one extra would
/// otherwise exceed any fraction.
struct Deletes {
    all: usize,
    by_rules: usize,
}

/// The plan's deletions, for the caps.
#[derive(Default)]
struct Tally<'a> {
    deletes: usize,
    /// Per volume, in output order; only filled when `max-delete-fraction` is set.
    volumes: Vec<VolumeTally<'a>>,
}

struct VolumeTally<'a> {
    volume: &'a str,
    managed: usize,
    deleted: usize,
}

/// `snaps`: one volume's snapshots, newest first.
fn plan_volume<'a>(
    snaps: &[&'a Snap],
    configured: &Configured<'_>,
    input: &PlanInput<'_>,
    now: DateTime<Utc>,
    scratch: &mut Scratch<'a>,
    out: &mut Vec<Decision>,
) -> Deletes {
    let volume_id: &str = &snaps[0].volume_id;
    set_aside(snaps, now, &mut scratch.aside);
    let aside = &scratch.aside;
    let newest_completed = (0..snaps.len())
        .position(|i| snaps[i].state == SnapState::Completed && aside[i] == Aside::No);
    let frozen = !input.frozen_volumes.is_empty() && input.frozen_volumes.contains(volume_id);
    // An unplaced copy has no volume to be targeted or not.
    let orphan =
        snaps[0].group != Group::Unplaced && input.targeted.is_some_and(|t| !t.contains(volume_id));
    let expired_after = match input.orphans {
        OrphanPolicy::ExpireAfter(after) if orphan => {
            newest_completed.and_then(|i| older_than(snaps[i].slot, after, now).then_some(after))
        }
        _ => None,
    };
    let keep_all = orphan && input.orphans == OrphanPolicy::KeepAll;

    if scratch.reasons.len() < snaps.len() {
        scratch.reasons.resize_with(snaps.len(), Vec::new);
    }
    // No rule can keep anything of an expired orphan, so they are not even evaluated.
    if expired_after.is_none() {
        schedule_reasons(volume_id, snaps, configured, input, scratch);
    }
    let aside = &scratch.aside;

    let mut deletes = Deletes {
        all: 0,
        by_rules: 0,
    };
    for (i, (snap, from_rules)) in snaps.iter().zip(&mut scratch.reasons).enumerate() {
        // Rules only ever judge completed snapshots, so `from_rules` is empty for the others.
        let rail = match snap.state {
            _ if aside[i] == Aside::Unplaced => Some(Reason::UnplacedCopy),
            _ if aside[i] == Aside::Future => Some(Reason::FutureSlot),
            SnapState::Pending => Some(Reason::Pending),
            // Expiry overrides the newest rail: that rail exists for volumes still being snapshotted.
            SnapState::Completed if expired_after.is_none() && newest_completed == Some(i) => {
                Some(Reason::Newest)
            }
            SnapState::Completed if !input.held.is_empty() => {
                input.held.get(&snap.id).map(|region| Reason::CopyPending {
                    region: Arc::clone(region),
                })
            }
            SnapState::Completed | SnapState::Error => None,
        };
        let keep_all = keep_all && snap.state != SnapState::Error;
        let kept = usize::from(snap.pinned)
            + usize::from(rail.is_some())
            + from_rules.len()
            + usize::from(keep_all);
        // Exactly the room needed: a plan holds a million of these.
        let mut reasons = Vec::with_capacity(kept.max(1));
        if snap.pinned {
            reasons.push(Reason::Pinned);
        }
        reasons.extend(rail);
        reasons.append(from_rules);
        if keep_all {
            reasons.push(Reason::OrphanKeepAll);
        }
        let action = if kept > 0 {
            Action::Keep
        } else if frozen {
            reasons.push(Reason::VolumeFailed);
            Action::Keep
        } else {
            deletes.all += 1;
            reasons.push(match (snap.state, expired_after) {
                (SnapState::Error, _) => Reason::ErrorState,
                (_, Some(after)) => Reason::OrphanExpired { after },
                _ if aside[i] == Aside::Duplicate => Reason::Duplicate,
                (_, None) => {
                    deletes.by_rules += 1;
                    match passed_over(snap, configured) {
                        Some(schedule) => Reason::NotAppConsistent { schedule },
                        None => Reason::Expired,
                    }
                }
            });
            Action::Delete
        };
        out.push(Decision {
            snapshot_id: snap.id.clone(),
            volume_id: snap.volume_id.clone(),
            slot: snap.slot,
            action,
            reasons,
            orphan,
        });
    }
    deletes
}

/// Fills `aside` (aligned with `snaps`, one volume newest first) with why each snapshot is not judged: an
/// unplaced copy; a completed one whose slot lies beyond [`FUTURE_SLOT_ALLOWANCE`] after `now`; a completed one
/// that repeats the volume, slot and schedule list of another completed one that stands before it
/// ([`stands_before`]). Duplicates are only looked for among a real volume's snapshots: copies of one source made by
/// different tools are not extras of each other.
fn set_aside(snaps: &[&Snap], now: DateTime<Utc>, aside: &mut Vec<Aside>) {
    let limit = now.checked_add_signed(FUTURE_SLOT_ALLOWANCE);
    aside.clear();
    aside.extend(snaps.iter().map(|s| match s.group {
        Group::Unplaced => Aside::Unplaced,
        _ if s.state == SnapState::Completed && limit.is_some_and(|l| s.slot > l) => Aside::Future,
        _ => Aside::No,
    }));
    if snaps[0].group != Group::Volume {
        return;
    }
    // Newest first, so one slot's snapshots sit together; a slot usually has one, and the pairwise look below
    // only runs for the rare few that have more.
    let mut start = 0;
    while start < snaps.len() {
        let end = start + snaps[start..].partition_point(|s| s.slot == snaps[start].slot);
        if end - start > 1 {
            let judged = |i: usize| snaps[i].state == SnapState::Completed && aside[i] == Aside::No;
            let extra = |i: usize| {
                judged(i)
                    && (start..end).any(|j| {
                        j != i
                            && judged(j)
                            && (Arc::ptr_eq(&snaps[j].schedules, &snaps[i].schedules)
                                || snaps[j].schedules == snaps[i].schedules)
                            && stands_before(snaps[j], snaps[i])
                    })
            };
            let extras: Vec<usize> = (start..end).filter(|&i| extra(i)).collect();
            for i in extras {
                aside[i] = Aside::Duplicate;
            }
        }
        start = end;
    }
}

/// The first schedule `snap` lists (in its tag's order) that counts only app-consistent snapshots, when `snap` is
/// not one: what kept it from being judged by that schedule's rules.
fn passed_over(snap: &Snap, configured: &Configured<'_>) -> Option<Arc<str>> {
    if snap.app_consistent {
        return None;
    }
    snap.schedules
        .iter()
        .find(|name| {
            configured
                .get(name)
                .is_some_and(|s| s.keep.app_consistent_only)
        })
        .cloned()
}

/// Of two snapshots repeating one slot, whether `a` stands for it rather than `b`: an app-consistent one (the
/// agent's VSS snapshot that arrived after the run had given up on it and taken a fallback is the better backup),
/// else the one EC2 started first, else the smaller id.
pub(crate) fn stands_before(a: &Snap, b: &Snap) -> bool {
    (!a.app_consistent, a.started, &a.id) < (!b.app_consistent, b.started, &b.id)
}

/// `now - slot > after`, strictly; a duration too large for chrono is never exceeded.
fn older_than(slot: DateTime<Utc>, after: Duration, now: DateTime<Utc>) -> bool {
    TimeDelta::from_std(after)
        .ok()
        .and_then(|after| slot.checked_add_signed(after))
        .is_some_and(|limit| now > limit)
}

/// Appends the schedule rules' keep reasons of each of `snaps` (newest first) to `scratch.reasons`, aligned with
/// it: a snapshot's reasons come schedule by schedule in name order, and a schedule listed twice on one snapshot
/// counts once.
fn schedule_reasons<'a>(
    volume_id: &str,
    snaps: &[&'a Snap],
    configured: &Configured<'_>,
    input: &PlanInput<'_>,
    scratch: &mut Scratch<'a>,
) {
    let reasons = &mut scratch.reasons[..snaps.len()];
    let listed = &mut scratch.listed;
    let mut used = 0;
    for (i, snap) in snaps.iter().enumerate() {
        if snap.state != SnapState::Completed || scratch.aside[i] != Aside::No {
            continue;
        }
        if snap.schedules.is_empty() {
            reasons[i].push(Reason::ScheduleRemoved {
                schedule: scratch.no_schedule.clone(),
            });
        }
        for name in snap.schedules.iter() {
            // A volume's snapshots list a handful of names at most, and mostly the same shared ones.
            let found = listed[..used]
                .iter()
                .position(|l| Arc::ptr_eq(l.name, name) || **l.name == **name);
            let at = found.unwrap_or_else(|| {
                match listed.get_mut(used) {
                    Some(l) => {
                        l.name = name;
                        l.snaps.clear();
                    }
                    None => listed.push(Listed {
                        name,
                        snaps: Vec::new(),
                    }),
                }
                used += 1;
                used - 1
            });
            let list = &mut listed[at].snaps;
            // All of snapshot i's names are handled before i+1, so a repeat of a name shows up as `i` already last.
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }

    let listed = &mut listed[..used];
    listed.sort_unstable_by(|a, b| a.name.cmp(b.name));
    for l in listed.iter_mut() {
        let Some(schedule) = configured.get(l.name) else {
            for &i in &l.snaps {
                reasons[i].push(Reason::ScheduleRemoved {
                    schedule: Arc::clone(l.name),
                });
            }
            continue;
        };
        // Such a schedule's rules see only the app-consistent snapshots, so a fallback neither counts toward them
        // nor is kept by them (not even by a count from a tag that is missing: no count would keep it).
        if schedule.keep.app_consistent_only {
            l.snaps.retain(|&i| snaps[i].app_consistent);
        }
        let last = if schedule.count_from_tag {
            let key = &mut scratch.count_key;
            key.0.clear();
            key.0.push_str(volume_id);
            key.1.clear();
            key.1.push_str(&schedule.name);
            match input.counts.get(key) {
                Some(&n) => rules::LastCount::Count(n),
                None => rules::LastCount::Unknown,
            }
        } else {
            schedule
                .keep
                .last
                .map_or(rules::LastCount::NotSet, rules::LastCount::Count)
        };
        let volume = rules::Volume {
            snaps,
            list: &l.snaps,
            out: reasons,
        };
        rules::keep_reasons(schedule, last, volume, &mut scratch.rules);
    }
}

/// The first cap the plan exceeds, if any; the absolute cap is checked first because raising the fraction alone
/// would not let a plan over it through.
fn check_caps(tally: &Tally<'_>, caps: Caps) -> Option<CapHit> {
    let deletes = tally.deletes;
    if let Some(max) = caps.max_deletes_per_run {
        if deletes > max as usize {
            return Some(CapHit {
                setting: "max-deletes-per-run",
                limit: max.to_string(),
                needed: deletes.to_string(),
                message: format!(
                    "the plan would delete {deletes} snapshots, over max-deletes-per-run = {max}; nothing was \
                     deleted. Check the plan (snapwarden plan); if these deletions are intended, raise \
                     max-deletes-per-run to {deletes} for one run"
                ),
            });
        }
    }
    let fraction = caps.max_delete_fraction?;
    // (volume, managed, deleted by rules)
    let mut worst: Option<(&str, usize, usize)> = None;
    for v in &tally.volumes {
        let (managed, deleted) = (v.managed, v.deleted);
        let over = deleted as f64 / managed as f64 > fraction;
        // The worst volume is the one that needs the highest fraction; ties go to the first volume id.
        if over && worst.is_none_or(|(_, m, d)| deleted * m > d * managed) {
            worst = Some((v.volume, managed, deleted));
        }
    }
    let (volume, managed, deleted) = worst?;
    // Rounded up to whole percent, so the value we tell the operator to write is really enough.
    let percent = (deleted * 100).div_ceil(managed);
    let needed = match percent {
        100.. => "1".to_string(),
        p if p % 10 == 0 => format!("0.{}", p / 10),
        p => format!("0.{p:02}"),
    };
    Some(CapHit {
        setting: "max-delete-fraction",
        limit: fraction.to_string(),
        needed: needed.clone(),
        message: format!(
            "the plan would delete {deleted} of the {managed} snapshots of volume {volume}, over \
             max-delete-fraction = {fraction}; nothing was deleted. Check the plan (snapwarden plan); if these \
             deletions are intended, raise max-delete-fraction to {needed} for one run"
        ),
    })
}
