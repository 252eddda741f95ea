//! Pure scheduling decisions that take `now` as a value, tested by tables: for now, when a failed or partial run
//! of the latest slot is tried again. The due-fire decisions (catch-up, skip-while-running) still live in
//! `daemon::schedule_loop`. No tokio, no AWS types, no clock.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest wait between two retries of one slot: a daily schedule keeps trying every half hour or so after
/// the first few quick attempts, instead of waiting most of a day between the last ones.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 60);

/// When retry number `attempt` (1 for the first) of a slot starts, or None when the slot is given up on.
///
/// The delay doubles from `base` per attempt up to [`MAX_RETRY_DELAY`] (never below `base`), and `jitter` in
/// [0, 1) places it between half and all of that, so daemons that failed together do not retry together, and
/// never sooner than half the backoff (an outage is not over a second later). A retry must leave one `base` before
/// `next_fire`: a retry still running when the schedule fires again would make that newer fire skip, and the newer
/// slot matters more. No `next_fire` (a cron that never fires again) or a zero `base` means no retries.
pub fn retry_at(
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
}
