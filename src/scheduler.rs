//! Pure scheduling decisions that take `now` as a value, tested by tables: which fires are due ([`Scheduler`]:
//! next fires, co-firing groups, catch-up at start, a long pause or a clock jump, skip-while-running) and when a
//! failed or partial run of the latest slot is tried again ([`retry_at`]). It hands out [`Fire`]s whose units of
//! work are (policy, slot, [`Scope`]); `daemon::schedule_loop` reads the clock, spawns them and reports back
//! when one ends. No tokio, no AWS types, no clock.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::Policy;
use crate::schedule::{self, Cron};

/// The longest wait between two retries of one slot: a daily schedule keeps trying every half hour or so after
/// the first few quick attempts, instead of waiting most of a day between the last ones.
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 60);

/// When retry number `attempt` (1 for the first) of a slot starts, or None when the slot is given up on.
///
/// The delay doubles from `base` per attempt up to [`MAX_RETRY_DELAY`] (never below `base`), and `jitter` in
/// [0, 1) places it between half and all of that, so daemons that failed together do not retry together, and
/// never sooner than half the backoff (an outage is not over a second later). A retry must leave one `base` before
/// `next_fire`: a retry still running when the schedule fires again would make that newer fire skip, and the newer
/// slot matters more. No `next_fire` (a cron that never fires again) or a zero `base` means no retries.
pub(crate) fn retry_at(
    attempt: u32,
    now: DateTime<Utc>,
    next_fire: Option<DateTime<Utc>>,
    base: Duration,
    jitter: f64,
) -> Option<DateTime<Utc>> {
    let next_fire = next_fire?;
    if base.is_zero() || attempt == 0 {
        return None;
    }
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(MAX_RETRY_DELAY.max(base));
    let delay = ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let at = now + chrono::Duration::from_std(delay).ok()?;
    let latest_start = next_fire - chrono::Duration::from_std(base).ok()?;
    (at <= latest_start).then_some(at)
}

/// Where a fire acts: one region of one account (AWS's limits, and a policy's `accounts`, are per account).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Scope {
    /// The account's label (`worker::Region::account`).
    pub(crate) account: String,
    /// The daemon's own account, which a policy's `accounts` calls `own`.
    pub(crate) own: bool,
    pub(crate) region: String,
}

impl Scope {
    /// A region of the daemon's own account (tests).
    #[cfg(test)]
    pub(crate) fn region(name: impl Into<String>) -> Self {
        Scope {
            account: "own".into(),
            own: true,
            region: name.into(),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.account, self.region)
    }
}

/// Why a fire starts: the `why` field of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The latest slot of each policy at start: runs already done for it find their snapshots and do nothing.
    CatchUp,
    Schedule,
}

impl Why {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Why::CatchUp => "catch-up",
            Why::Schedule => "schedule",
        }
    }
}

/// The unit of work: one policy's slot in one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unit<'a> {
    pub(crate) policy: &'a str,
    pub(crate) slot: DateTime<Utc>,
    pub(crate) scope: &'a Scope,
}

/// One fire: the schedules of one policy that fire at `slot` and are not still running (one snapshot per volume
/// serves them all), over every scope. Its units run together: they share one run permit, one host lock and one
/// retry loop per attempt. Until [`Scheduler::finished`] hears of it, its schedules count as running.
#[derive(Debug, Clone)]
pub(crate) struct Fire {
    /// The policy as it was when the fire started: a reload does not change a run in flight.
    pub(crate) policy: Policy,
    pub(crate) slot: DateTime<Utc>,
    pub(crate) schedules: Vec<String>,
    pub(crate) scopes: Vec<Scope>,
    pub(crate) why: Why,
}

impl Fire {
    pub(crate) fn units(&self) -> impl Iterator<Item = Unit<'_>> {
        self.scopes.iter().map(|scope| Unit {
            policy: &self.policy.name,
            slot: self.slot,
            scope,
        })
    }
}

/// A schedule due at `slot` whose previous run is still going: this fire of it is skipped (runs of one schedule
/// never overlap) and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skip {
    pub(crate) policy: String,
    pub(crate) schedule: String,
    pub(crate) slot: DateTime<Utc>,
}

/// The wall clock between two ticks did not move as a ticking loop's does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jump {
    /// Suspend and resume, a stopped process, or a clock set forward: each policy fires its latest slot once,
    /// never every slot it missed.
    Pause(chrono::Duration),
    /// The clock was set back: next fires are planned again from the new time. Slots fired in the skipped-back
    /// span may fire again when the clock reaches them; their runs find their snapshots and create nothing.
    Back(chrono::Duration),
}

/// A gap between ticks longer than this is a pause (the loop ticks at least once a second).
pub(crate) const PAUSE_AFTER: Duration = Duration::from_secs(60);
/// A clock set back by more than this plans again; less is noise (a stepped NTP correction).
pub(crate) const BACK_AFTER: Duration = Duration::from_secs(5);

/// What one look at the clock decided.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tick {
    pub(crate) fires: Vec<Fire>,
    pub(crate) skips: Vec<Skip>,
    pub(crate) jump: Option<Jump>,
}

/// The scheduler's state between ticks: the policies it fires from, each one's next fire instant, and which
/// schedules have a fire in flight. Every decision takes `now` as a value.
#[derive(Debug)]
pub(crate) struct Scheduler {
    tz: Tz,
    scopes: Vec<Scope>,
    policies: Vec<Policy>,
    next: Vec<Option<DateTime<Utc>>>,
    /// (policy, schedule) with a fire in flight: a removed schedule stays here until its fire ends, so a fire of
    /// it re-added meanwhile is skipped, not doubled.
    running: BTreeSet<(String, String)>,
    last_tick: Option<DateTime<Utc>>,
}

impl Scheduler {
    pub(crate) fn new(
        policies: Vec<Policy>,
        scopes: Vec<Scope>,
        tz: Tz,
        now: DateTime<Utc>,
    ) -> Self {
        let next = policies.iter().map(|p| next_fire(p, now, tz)).collect();
        Scheduler {
            tz,
            scopes,
            policies,
            next,
            running: BTreeSet::new(),
            last_tick: None,
        }
    }

    pub(crate) fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The scopes served from now on (an organisation refresh adds and removes accounts); fires in flight keep
    /// theirs.
    pub(crate) fn set_scopes(&mut self, scopes: Vec<Scope>) {
        self.scopes = scopes;
    }

    /// Catch-up at start: every policy's latest slot (its most recent fire time) fires now.
    pub(crate) fn catch_up(&mut self, now: DateTime<Utc>) -> Tick {
        let mut tick = Tick::default();
        for i in 0..self.policies.len() {
            self.fire_latest(i, now, Why::CatchUp, &mut tick);
        }
        self.last_tick = Some(now);
        tick
    }

    /// The fires due at `now`: each policy whose next fire has come fires its most recent slot (after a pause,
    /// that one only) and plans its next one.
    pub(crate) fn tick(&mut self, now: DateTime<Utc>) -> Tick {
        let mut tick = Tick {
            jump: self.last_tick.and_then(|last| jump(last, now)),
            ..Tick::default()
        };
        self.last_tick = Some(now);
        if let Some(Jump::Back(_)) = tick.jump {
            for (p, next) in self.policies.iter().zip(&mut self.next) {
                *next = next_fire(p, now, self.tz);
            }
        }
        for i in 0..self.policies.len() {
            if self.next[i].is_some_and(|t| t <= now) {
                self.fire_latest(i, now, Why::Schedule, &mut tick);
                self.next[i] = next_fire(&self.policies[i], now, self.tz);
            }
        }
        tick
    }

    /// A fire's run has ended (finished, given up, or panicked): its schedules may fire again.
    pub(crate) fn finished(&mut self, policy: &str, schedules: &[String]) {
        for s in schedules {
            self.running.remove(&(policy.to_string(), s.clone()));
        }
    }

    /// A reloaded config: a policy whose schedules are unchanged keeps its pending fire (one due just now still
    /// fires), the others plan from `now`. Fires in flight keep their schedules running.
    pub(crate) fn reload(&mut self, policies: Vec<Policy>, now: DateTime<Utc>) {
        self.next = rescheduled(&self.policies, &self.next, &policies, now, self.tz);
        self.policies = policies;
    }

    /// The earliest pending fire instant of any policy, to sleep until.
    pub(crate) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.next.iter().flatten().min().copied()
    }

    fn fire_latest(&mut self, i: usize, now: DateTime<Utc>, why: Why, tick: &mut Tick) {
        let p = &self.policies[i];
        let Some((slot, members)) = schedule::latest_group(&crons(p), now, self.tz) else {
            return;
        };
        let mut schedules = Vec::new();
        for m in members {
            let name = &p.schedules[m].name;
            if self.running.insert((p.name.clone(), name.clone())) {
                schedules.push(name.clone());
            } else {
                tick.skips.push(Skip {
                    policy: p.name.clone(),
                    schedule: name.clone(),
                    slot,
                });
            }
        }
        if !schedules.is_empty() {
            tick.fires.push(Fire {
                policy: p.clone(),
                slot,
                schedules,
                scopes: self
                    .scopes
                    .iter()
                    .filter(|s| p.serves(&s.account, s.own))
                    .cloned()
                    .collect(),
                why,
            });
        }
    }
}

fn jump(last: DateTime<Utc>, now: DateTime<Utc>) -> Option<Jump> {
    let gap = now - last;
    let limit = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    if gap > limit(PAUSE_AFTER) {
        Some(Jump::Pause(gap))
    } else if -gap > limit(BACK_AFTER) {
        Some(Jump::Back(-gap))
    } else {
        None
    }
}

fn crons(policy: &Policy) -> Vec<&Cron> {
    policy.schedules.iter().map(|s| &s.cron).collect()
}

fn next_fire(policy: &Policy, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    schedule::next_group(&crons(policy), now, tz).map(|g| g.0)
}

/// Next fire per policy of a reloaded config: a policy whose schedules are unchanged keeps its pending fire (one
/// due just now still fires), the others start from `now`.
fn rescheduled(
    old: &[Policy],
    next: &[Option<DateTime<Utc>>],
    new: &[Policy],
    now: DateTime<Utc>,
    tz: Tz,
) -> Vec<Option<DateTime<Utc>>> {
    new.iter()
        .map(|p| {
            let same = old
                .iter()
                .position(|o| o.name == p.name && same_crons(o, p));
            match same {
                Some(i) => next[i],
                None => next_fire(p, now, tz),
            }
        })
        .collect()
}

fn same_crons(a: &Policy, b: &Policy) -> bool {
    let names = |p: &Policy| -> Vec<(String, String)> {
        p.schedules
            .iter()
            .map(|s| (s.name.clone(), s.cron.as_str().to_string()))
            .collect()
    };
    names(a) == names(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    const MIN: Duration = Duration::from_secs(60);

    /// name, attempt, next fire, base, jitter, expected start.
    type Case = (
        &'static str,
        u32,
        Option<DateTime<Utc>>,
        Duration,
        f64,
        Option<&'static str>,
    );

    #[test]
    fn backoff_doubles_is_capped_jittered_and_stops_before_the_next_fire() {
        let now = t("2026-03-02T04:31:00Z");
        let daily = Some(t("2026-03-03T04:30:00Z"));
        let hourly = Some(t("2026-03-02T05:00:00Z"));
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("first retry, no jitter: one base",        1, daily,  MIN, 1.0, Some("2026-03-02T04:32:00Z")),
            ("jitter 0: half the backoff",              1, daily,  MIN, 0.0,       Some("2026-03-02T04:31:30Z")),
            ("second retry doubles",                    2, daily,  MIN, 1.0, Some("2026-03-02T04:33:00Z")),
            ("fourth: 8 minutes",                       4, daily,  MIN, 1.0, Some("2026-03-02T04:39:00Z")),
            ("tenth: capped at 30 minutes",             10, daily, MIN, 1.0, Some("2026-03-02T05:01:00Z")),
            ("huge attempt numbers do not overflow",    u32::MAX, daily, MIN, 0.0, Some("2026-03-02T04:46:00Z")),
            ("a base above the cap is the delay",       3, daily, Duration::from_secs(3600), 1.0, Some("2026-03-02T05:31:00Z")),
            ("hourly: 32 min passes the next fire",      6, hourly, MIN, 1.0, None),
            ("hourly: 16 min + 1 min margin fits",                     5, hourly, MIN, 1.0, Some("2026-03-02T04:47:00Z")),
            ("must leave one base before the next fire",1, Some(t("2026-03-02T04:32:30Z")), MIN, 1.0, None),
            ("exactly one base before the next fire",   1, Some(t("2026-03-02T04:33:00Z")), MIN, 1.0, Some("2026-03-02T04:32:00Z")),
            ("no next fire: no retries",                1, None,   MIN, 0.5,       None),
            ("zero base: retries off",                  1, daily,  Duration::ZERO, 0.5, None),
            ("attempt 0 is the run itself",             0, daily,  MIN, 0.5,       None),
        ];
        for (name, attempt, next, base, jitter, want) in cases {
            let got = retry_at(*attempt, now, *next, *base, *jitter)
                .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string());
            assert_eq!(got.as_deref(), *want, "{name}");
        }
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let now = t("2026-03-02T04:31:00Z");
        let next = Some(t("2026-03-03T04:30:00Z"));
        for j in [0.0, 0.1, 0.5, 0.9, 0.999, 1.0, -3.0, 7.0] {
            let at = retry_at(3, now, next, MIN, j).unwrap();
            let wait = (at - now).num_milliseconds();
            assert!((120_000..=240_000).contains(&wait), "jitter {j}: {wait} ms");
        }
    }

    fn policies(toml: &str) -> Vec<Policy> {
        crate::config::from_toml_str(std::path::Path::new("t.toml"), toml, &[])
            .unwrap()
            .policies
    }

    /// One policy `p` with schedules (name, cron).
    fn policy(schedules: &[(&str, &str)]) -> String {
        let list: Vec<String> = schedules
            .iter()
            .map(|(n, c)| format!("{{ name = \"{n}\", cron = \"{c}\", keep = {{ last = 3 }} }}"))
            .collect();
        format!(
            "[[policy]]\nname = \"p\"\ntarget = {{ resource = \"instance\", tags = {{ Backup = \"p\" }} }}\n\
             schedule = [{}]\n",
            list.join(", ")
        )
    }

    #[derive(Clone, Copy)]
    enum Step {
        CatchUp(&'static str),
        Tick(&'static str),
        Finished(&'static [&'static str]),
        NextDue,
    }

    /// A tick's decisions as text: `fire <slot> <schedules> <why> <scopes>`, `skip <schedule> <slot>`, `pause
    /// <seconds>`, `back <seconds>`.
    fn render(tick: Tick) -> Vec<String> {
        let mut out = Vec::new();
        match tick.jump {
            Some(Jump::Pause(d)) => out.push(format!("pause {}", d.num_seconds())),
            Some(Jump::Back(d)) => out.push(format!("back {}", d.num_seconds())),
            None => {}
        }
        for s in tick.skips {
            out.push(format!(
                "skip {} {}",
                s.schedule,
                schedule::format_slot(s.slot)
            ));
        }
        for f in tick.fires {
            let units: Vec<String> = f
                .units()
                .map(|u| format!("{}@{}", u.policy, u.scope))
                .collect();
            out.push(format!(
                "fire {} {} {} {}",
                schedule::format_slot(f.slot),
                f.schedules.join(","),
                f.why.as_str(),
                units.join(",")
            ));
        }
        out
    }

    type Scenario = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static [(Step, &'static [&'static str])],
    );

    #[test]
    fn due_fires_follow_the_clock_they_are_given() {
        use Step::*;
        const DAILY_WEEKLY: &[(&str, &str)] = &[("daily", "30 4 * * *"), ("weekly", "30 4 * * 1")];
        // 2026-03-02 is a Monday.
        #[rustfmt::skip]
        let scenarios: &[Scenario] = &[
            ("nothing before the first fire, then exactly one", &[("daily", "30 4 * * *")], "2026-03-02T04:29:00Z", &[
                (Tick("2026-03-02T04:29:01Z"), &[]),
                (Tick("2026-03-02T04:29:59Z"), &[]),
                (Tick("2026-03-02T04:30:00Z"), &["fire 2026-03-02T04:30:00Z daily schedule p@own/r1"]),
                (Tick("2026-03-02T04:30:01Z"), &[]),
                (NextDue, &["next 2026-03-03T04:30:00Z"]),
            ]),
            ("schedules firing at one slot are one fire", DAILY_WEEKLY, "2026-03-02T04:29:59Z", &[
                (Tick("2026-03-02T04:30:00Z"), &["fire 2026-03-02T04:30:00Z daily,weekly schedule p@own/r1"]),
            ]),
            ("catch-up fires the latest slot at start, once", DAILY_WEEKLY, "2026-03-02T10:00:00Z", &[
                (CatchUp("2026-03-02T10:00:00Z"), &["fire 2026-03-02T04:30:00Z daily,weekly catch-up p@own/r1"]),
                (Finished(&["daily", "weekly"]), &[]),
                (Tick("2026-03-02T10:00:01Z"), &[]),
                (NextDue, &["next 2026-03-03T04:30:00Z"]),
            ]),
            ("without catch-up nothing fires before the next fire", DAILY_WEEKLY, "2026-03-02T10:00:00Z", &[
                (Tick("2026-03-02T10:00:01Z"), &[]),
                (NextDue, &["next 2026-03-03T04:30:00Z"]),
            ]),
            ("a schedule still running is skipped, then fires again once finished", &[("m", "* * * * *")], "2026-03-02T04:29:30Z", &[
                (Tick("2026-03-02T04:30:00Z"), &["fire 2026-03-02T04:30:00Z m schedule p@own/r1"]),
                (Tick("2026-03-02T04:31:00Z"), &["skip m 2026-03-02T04:31:00Z"]),
                (Finished(&["m"]), &[]),
                (Tick("2026-03-02T04:31:30Z"), &[]),
                (Tick("2026-03-02T04:32:00Z"), &["fire 2026-03-02T04:32:00Z m schedule p@own/r1"]),
            ]),
            ("a running member of a group is skipped, the others fire", DAILY_WEEKLY, "2026-03-01T04:29:59Z", &[
                (Tick("2026-03-01T04:30:00Z"), &["fire 2026-03-01T04:30:00Z daily schedule p@own/r1"]),
                (Tick("2026-03-02T04:29:59Z"), &["pause 86399"]),
                (Tick("2026-03-02T04:30:00Z"), &["skip daily 2026-03-02T04:30:00Z", "fire 2026-03-02T04:30:00Z weekly schedule p@own/r1"]),
            ]),
            ("after a pause only the latest missed slot fires", &[("daily", "30 4 * * *")], "2026-03-02T04:00:00Z", &[
                (Tick("2026-03-02T04:00:01Z"), &[]),
                (Tick("2026-03-05T12:00:00Z"), &["pause 287999", "fire 2026-03-05T04:30:00Z daily schedule p@own/r1"]),
                (Finished(&["daily"]), &[]),
                (Tick("2026-03-05T12:00:01Z"), &[]),
                (NextDue, &["next 2026-03-06T04:30:00Z"]),
            ]),
            ("a gap of a minute is not a pause", &[("daily", "30 4 * * *")], "2026-03-02T04:29:00Z", &[
                (Tick("2026-03-02T04:29:00Z"), &[]),
                (Tick("2026-03-02T04:30:00Z"), &["fire 2026-03-02T04:30:00Z daily schedule p@own/r1"]),
            ]),
            ("a clock set back plans again from the new time", &[("hourly", "0 * * * *")], "2026-03-02T09:59:59Z", &[
                (Tick("2026-03-02T10:00:00Z"), &["fire 2026-03-02T10:00:00Z hourly schedule p@own/r1"]),
                (Finished(&["hourly"]), &[]),
                (Tick("2026-03-02T08:59:59Z"), &["back 3601"]),
                // Without planning again the next fire would stay at 11:00 and 09:00 would be lost.
                (NextDue, &["next 2026-03-02T09:00:00Z"]),
                (Tick("2026-03-02T09:00:00Z"), &["fire 2026-03-02T09:00:00Z hourly schedule p@own/r1"]),
            ]),
            ("a clock set back by a second changes nothing", &[("hourly", "0 * * * *")], "2026-03-02T09:59:00Z", &[
                (Tick("2026-03-02T09:59:30Z"), &[]),
                (Tick("2026-03-02T09:59:29Z"), &[]),
                (Tick("2026-03-02T10:00:00Z"), &["fire 2026-03-02T10:00:00Z hourly schedule p@own/r1"]),
            ]),
        ];
        for (name, schedules, start, steps) in scenarios {
            let mut s = Scheduler::new(
                policies(&policy(schedules)),
                vec![Scope::region("r1")],
                Tz::UTC,
                t(start),
            );
            for (i, (step, want)) in steps.iter().enumerate() {
                let got = match *step {
                    CatchUp(now) => render(s.catch_up(t(now))),
                    Tick(now) => render(s.tick(t(now))),
                    Finished(names) => {
                        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                        s.finished("p", &names);
                        Vec::new()
                    }
                    NextDue => vec![format!(
                        "next {}",
                        s.next_due().map_or("none".into(), schedule::format_slot)
                    )],
                };
                assert_eq!(got, *want, "{name}: step {i}");
            }
        }
    }

    #[test]
    fn a_fire_hands_out_one_unit_per_scope() {
        let mut s = Scheduler::new(
            policies(&policy(&[("daily", "30 4 * * *")])),
            vec![Scope::region("eu-west-1"), Scope::region("us-east-1")],
            Tz::UTC,
            t("2026-03-02T04:00:00Z"),
        );
        assert_eq!(s.next_due(), Some(t("2026-03-02T04:30:00Z")));
        assert_eq!(
            render(s.tick(t("2026-03-02T04:30:00Z"))),
            ["fire 2026-03-02T04:30:00Z daily schedule p@own/eu-west-1,p@own/us-east-1"]
        );
        // No scope (no region configured): the fire still claims its schedules and does nothing.
        let mut none = Scheduler::new(
            policies(&policy(&[("daily", "30 4 * * *")])),
            Vec::new(),
            Tz::UTC,
            t("2026-03-02T04:00:00Z"),
        );
        assert_eq!(
            none.tick(t("2026-03-02T04:30:00Z")).fires[0]
                .units()
                .count(),
            0
        );
    }

    #[test]
    fn a_policy_with_accounts_fires_in_those_accounts_only_and_scopes_follow_the_organisation() {
        let scope = |account: &str, own: bool| Scope {
            account: account.into(),
            own,
            region: "r1".into(),
        };
        let toml = "[aws]\n[[aws.account]]\nrole-arn = \"arn:aws:iam::222222222222:role/s\"\n\
                    name = \"prod\"\n[[aws.account]]\nrole-arn = \"arn:aws:iam::333333333333:role/s\"\n\
                    name = \"data\"\n"
            .to_string()
            + &policy(&[("daily", "30 4 * * *")]).replace("[[policy]]\n", "[[policy]]\naccounts = [\"prod\", \"own\"]\n");
        let mut s = Scheduler::new(
            policies(&toml),
            vec![
                scope("111111111111", true),
                scope("prod", false),
                scope("data", false),
            ],
            Tz::UTC,
            t("2026-03-02T04:00:00Z"),
        );
        assert_eq!(
            render(s.tick(t("2026-03-02T04:30:00Z"))),
            ["fire 2026-03-02T04:30:00Z daily schedule p@111111111111/r1,p@prod/r1"]
        );
        s.finished("p", &["daily".to_string()]);
        // An account that leaves (or joins) is out of (or in) the next fire.
        s.set_scopes(vec![scope("data", false), scope("prod", false)]);
        assert_eq!(
            render(s.tick(t("2026-03-03T04:30:00Z"))),
            [
                "pause 86400",
                "fire 2026-03-03T04:30:00Z daily schedule p@prod/r1"
            ]
        );
    }

    #[test]
    fn a_reload_keeps_running_schedules_running() {
        let mut s = Scheduler::new(
            policies(&policy(&[("m", "* * * * *")])),
            vec![Scope::region("r1")],
            Tz::UTC,
            t("2026-03-02T04:29:30Z"),
        );
        assert_eq!(s.tick(t("2026-03-02T04:30:00Z")).fires.len(), 1);
        // Removed while its fire runs, then added back: its next fire is skipped, not doubled.
        s.reload(Vec::new(), t("2026-03-02T04:30:10Z"));
        assert!(s.tick(t("2026-03-02T04:30:20Z")).fires.is_empty());
        s.reload(
            policies(&policy(&[("m", "* * * * *")])),
            t("2026-03-02T04:30:30Z"),
        );
        assert_eq!(
            render(s.tick(t("2026-03-02T04:31:00Z"))),
            ["skip m 2026-03-02T04:31:00Z"]
        );
        s.finished("p", &["m".to_string()]);
        assert_eq!(s.tick(t("2026-03-02T04:32:00Z")).fires.len(), 1);
    }

    #[test]
    fn a_reload_keeps_the_pending_fire_of_unchanged_policies() {
        let tz = chrono_tz::Tz::UTC;
        let named = |name: &str, cron: &str| {
            policy(&[("s", cron)]).replace("\"p\"", &format!("\"{name}\""))
        };
        let old = policies(&(named("a", "0 4 * * *") + &named("b", "0 4 * * *")));
        let now = DateTime::parse_from_rfc3339("2026-03-02T04:00:30Z")
            .unwrap()
            .to_utc();
        // `a`'s 04:00 fire is due but not yet handled by the loop: it must still happen.
        let due = DateTime::parse_from_rfc3339("2026-03-02T04:00:00Z")
            .unwrap()
            .to_utc();
        let next = vec![Some(due), Some(due)];
        let new = policies(
            &(named("a", "0 4 * * *") + &named("b", "0 5 * * *") + &named("c", "0 6 * * *")),
        );
        let got = rescheduled(&old, &next, &new, now, tz);
        let at = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        assert_eq!(
            got,
            vec![
                Some(due),
                at("2026-03-02T05:00:00Z"),
                at("2026-03-02T06:00:00Z")
            ]
        );
        // The same through the scheduler: `a` fires its due slot at the next tick, `b` and `c` wait.
        let mut s = Scheduler::new(
            old,
            vec![Scope::region("r1")],
            tz,
            t("2026-03-02T03:59:00Z"),
        );
        s.reload(new, now);
        let fired: Vec<String> = s
            .tick(now)
            .fires
            .iter()
            .map(|f| f.policy.name.clone())
            .collect();
        assert_eq!(fired, ["a"]);
    }
}
