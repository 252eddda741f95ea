//! In-memory view of the daemon for `/status`, `/healthz` and `/readyz`: per policy/schedule the next fire and
//! the last run, the scheduler's heartbeat, and the readiness milestones. It is a cache of what the scheduler
//! and workers did in this process, never a source of truth: after a restart everything is read back from AWS.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::report::{Problem, RunReport, RunResult};

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub(crate) run_id: String,
    /// The account's label (`worker::Region::account`).
    pub(crate) account: String,
    pub(crate) region: String,
    pub(crate) slot: DateTime<Utc>,
    pub result: RunResult,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
    pub(crate) targeted_volumes: usize,
    pub created: usize,
    pub(crate) already_done: usize,
    /// Made but not yet complete when a run that does not wait ended (`completion-deadline = "0s"`).
    pub(crate) pending: usize,
    pub(crate) failed: usize,
    pub(crate) deleted: usize,
    pub(crate) kept: usize,
    /// Of `created`, for VSS and script policies: application-consistent snapshots and crash-consistent
    /// fallbacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) app_consistent: Option<AppConsistent>,
    /// For policies with disaster-recovery copies: what the run did about them, over its destinations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) copies: Option<crate::report::CopyTally>,
    /// What ended the run before its end, when something did: the region could not be read, or the run
    /// panicked (code `panic`, the panic's message).
    pub(crate) error: Option<Problem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct AppConsistent {
    pub(crate) consistent: usize,
    pub(crate) fallback: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScheduleStatus {
    pub(crate) cron: String,
    pub(crate) next_fire: Option<DateTime<Utc>>,
    pub running: bool,
    pub(crate) skipped_fires: u64,
    /// Latest run per account and region, keyed `account/region` (two accounts may share a region).
    pub last_runs: BTreeMap<String, LastRun>,
    /// Set while a failed or partial run of the latest slot waits for its next try.
    pub retry: Option<Retry>,
    /// Removed by a reload while its run was going: dropped from the board when the run finishes.
    #[serde(skip)]
    retired: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retry {
    pub(crate) slot: DateTime<Utc>,
    /// 1 for the slot's first retry.
    pub(crate) attempt: u32,
    pub(crate) next_at: DateTime<Utc>,
}

/// Readiness milestones and the scheduler heartbeat.
#[derive(Debug, Default)]
pub struct Health {
    heartbeat_ms: AtomicI64,
    pub(crate) config_loaded: AtomicBool,
    pub(crate) credentials_resolved: AtomicBool,
    pub(crate) aws_reachable: AtomicBool,
}

impl Health {
    pub(crate) fn beat(&self, now: DateTime<Utc>) {
        self.heartbeat_ms
            .store(now.timestamp_millis(), Ordering::Relaxed);
    }

    /// Seconds since the scheduler loop last ticked; None before its first tick.
    pub fn heartbeat_age(&self, now: DateTime<Utc>) -> Option<f64> {
        match self.heartbeat_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((now.timestamp_millis() - ms).max(0) as f64 / 1000.0),
        }
    }

    pub(crate) fn ready(&self) -> bool {
        [
            &self.config_loaded,
            &self.credentials_resolved,
            &self.aws_reachable,
        ]
        .iter()
        .all(|b| b.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Default)]
pub struct StatusBoard {
    schedules: Mutex<BTreeMap<String, BTreeMap<String, ScheduleStatus>>>,
}

impl StatusBoard {
    fn with<R>(&self, policy: &str, schedule: &str, f: impl FnOnce(&mut ScheduleStatus) -> R) -> R {
        let mut all = self.schedules.lock().expect("status poisoned");
        f(all
            .entry(policy.to_string())
            .or_default()
            .entry(schedule.to_string())
            .or_default())
    }

    pub(crate) fn register(&self, policy: &str, schedule: &str, cron: &str) {
        self.with(policy, schedule, |s| {
            s.cron = cron.to_string();
            s.retired = false;
        });
    }

    /// Drops every schedule `keep` rejects (a reload removed it); one whose run is going stays, marked, until
    /// [`StatusBoard::finish`], so a fire of a schedule re-added meanwhile still sees it running.
    pub(crate) fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut all = self.schedules.lock().expect("status poisoned");
        for (policy, schedules) in all.iter_mut() {
            schedules.retain(|name, s| {
                s.retired = !keep(policy, name);
                !s.retired || s.running
            });
        }
        all.retain(|_, schedules| !schedules.is_empty());
    }

    pub(crate) fn set_retry(&self, policy: &str, schedule: &str, retry: Option<Retry>) {
        self.with(policy, schedule, |s| s.retry = retry);
    }

    pub(crate) fn set_next(&self, policy: &str, schedule: &str, next: Option<DateTime<Utc>>) {
        self.with(policy, schedule, |s| s.next_fire = next);
    }

    /// Marks a schedule running; false when it already is (the caller skips the fire).
    pub(crate) fn try_start(&self, policy: &str, schedule: &str) -> bool {
        self.with(policy, schedule, |s| {
            if s.running {
                s.skipped_fires += 1;
                false
            } else {
                s.running = true;
                true
            }
        })
    }

    /// Counts a fire skipped because the schedule's previous run is still going.
    pub(crate) fn skipped(&self, policy: &str, schedule: &str) {
        self.with(policy, schedule, |s| s.skipped_fires += 1);
    }

    pub(crate) fn finish(&self, policy: &str, schedule: &str) {
        let mut all = self.schedules.lock().expect("status poisoned");
        let Some(schedules) = all.get_mut(policy) else {
            return;
        };
        if let Some(s) = schedules.get_mut(schedule) {
            s.running = false;
            s.retry = None;
            if s.retired {
                schedules.remove(schedule);
            }
        }
        if schedules.is_empty() {
            all.remove(policy);
        }
    }

    pub(crate) fn record(&self, report: &RunReport) {
        let last = LastRun {
            run_id: report.run_id.clone(),
            account: report.account.clone(),
            region: report.region.clone(),
            slot: report.slot,
            result: report.result(),
            started_at: report.started_at,
            finished_at: report.finished_at,
            targeted_volumes: report.targeted_volumes,
            created: report.created,
            already_done: report.already_done,
            pending: report.pending,
            failed: report.failed_volumes(),
            deleted: report.deleted,
            kept: report.kept,
            app_consistent: (report.app_consistent + report.fallback > 0).then_some(
                AppConsistent {
                    consistent: report.app_consistent,
                    fallback: report.fallback,
                },
            ),
            copies: (report.copies != Default::default()).then(|| report.copies.clone()),
            error: report.fatal.clone(),
        };
        for s in &report.schedules {
            self.with(&report.policy, s, |st| {
                st.last_runs.insert(report.scope(), last.clone())
            });
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, ScheduleStatus>> {
        self.schedules.lock().expect("status poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_removed_by_a_reload_leaves_the_board_when_its_run_ends() {
        let board = StatusBoard::default();
        board.register("p", "kept", "0 4 * * *");
        board.register("p", "idle", "0 5 * * *");
        board.register("p", "busy", "0 6 * * *");
        assert!(board.try_start("p", "busy"));
        board.retain(|_, s| s == "kept");
        let names =
            |b: &StatusBoard| -> Vec<String> { b.snapshot()["p"].keys().cloned().collect() };
        // The running one stays (still running: a fire of it, re-added meanwhile, is skipped, not doubled).
        assert_eq!(names(&board), ["busy", "kept"]);
        assert!(!board.try_start("p", "busy"));
        board.finish("p", "busy");
        assert_eq!(names(&board), ["kept"]);
        // A schedule re-registered before its run ends is kept.
        assert!(board.try_start("p", "kept"));
        board.retain(|_, _| false);
        board.register("p", "kept", "0 7 * * *");
        board.finish("p", "kept");
        assert_eq!(board.snapshot()["p"]["kept"].cron, "0 7 * * *");
        // A whole policy goes when its last schedule does.
        board.retain(|_, _| false);
        assert!(board.snapshot().is_empty());
    }

    #[test]
    fn a_skipped_fire_is_counted_and_leaves_the_flag_alone() {
        let board = StatusBoard::default();
        board.register("p", "s", "0 4 * * *");
        board.skipped("p", "s");
        let st = &board.snapshot()["p"]["s"];
        assert_eq!((st.skipped_fires, st.running), (1, false));
        assert!(board.try_start("p", "s"));
        board.skipped("p", "s");
        let st = &board.snapshot()["p"]["s"];
        assert_eq!((st.skipped_fires, st.running), (2, true));
    }

    #[test]
    fn finish_clears_a_pending_retry() {
        let board = StatusBoard::default();
        board.register("p", "s", "0 4 * * *");
        assert!(board.try_start("p", "s"));
        let at = Utc::now();
        let retry = Retry {
            slot: at,
            attempt: 1,
            next_at: at,
        };
        board.set_retry("p", "s", Some(retry.clone()));
        assert_eq!(board.snapshot()["p"]["s"].retry, Some(retry));
        board.finish("p", "s");
        assert_eq!(board.snapshot()["p"]["s"].retry, None);
    }

    #[test]
    fn last_runs_of_app_consistent_policies_carry_their_counts() {
        let board = StatusBoard::default();
        board.register("p", "s", "0 4 * * *");
        let at = Utc::now();
        let mut report = RunReport::new("r".into(), "p", vec!["s".into()], "r-1", at, at);
        report.account = "a".into();
        board.record(&report);
        let json = serde_json::to_value(board.snapshot()).unwrap();
        let last = &json["p"]["s"]["last_runs"]["a/r-1"];
        assert!(last.get("app_consistent").is_none(), "{last}");
        (report.created, report.app_consistent, report.fallback) = (3, 2, 1);
        board.record(&report);
        let json = serde_json::to_value(board.snapshot()).unwrap();
        let counts = &json["p"]["s"]["last_runs"]["a/r-1"]["app_consistent"];
        assert_eq!(counts, &serde_json::json!({"consistent": 2, "fallback": 1}));
        assert!(json["p"]["s"]["last_runs"]["a/r-1"].get("copies").is_none());
        (report.copies.created, report.copies.deferred) = (5, 2);
        board.record(&report);
        let json = serde_json::to_value(board.snapshot()).unwrap();
        let copies = &json["p"]["s"]["last_runs"]["a/r-1"]["copies"];
        assert_eq!(
            copies,
            &serde_json::json!({"created": 5, "deferred": 2, "pending": 0, "deleted": 0})
        );
    }

    #[test]
    fn two_accounts_in_one_region_keep_a_last_run_each() {
        let board = StatusBoard::default();
        board.register("p", "s", "0 4 * * *");
        let at = Utc::now();
        for (account, created) in [("prod", 3), ("staging", 5)] {
            let mut report = RunReport::new(
                format!("run-{account}"),
                "p",
                vec!["s".into()],
                "eu-west-1",
                at,
                at,
            );
            report.account = account.into();
            report.created = created;
            board.record(&report);
        }
        let json = serde_json::to_value(board.snapshot()).unwrap();
        let runs = json["p"]["s"]["last_runs"].as_object().unwrap();
        assert_eq!(
            runs.keys().collect::<Vec<_>>(),
            ["prod/eu-west-1", "staging/eu-west-1"]
        );
        for (key, account, created) in [
            ("prod/eu-west-1", "prod", 3),
            ("staging/eu-west-1", "staging", 5),
        ] {
            assert_eq!(runs[key]["account"], account);
            assert_eq!(runs[key]["region"], "eu-west-1");
            assert_eq!(runs[key]["created"], created);
        }
    }
}
