//! `simulate` over the shipped example configs: after long enough, each schedule holds exactly what its rules
//! say, and the distinct total per volume is the sum of the rule counts minus the snapshots that serve several
//! rules — worked out by hand in each test.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use snapwarden::simulate::{simulate, SimOptions, SimReport};

async fn run(example: &str, days: u32) -> SimReport {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(example);
    let config = snapwarden::config::load(&path, &[]).expect("example validates");
    let opts = SimOptions {
        from: common::slot("2026-01-01T00:00:00Z"),
        days,
        volumes: 2,
        count_tag_value: 7,
        policy: None,
    };
    simulate(&config, &opts).await
}

fn ends(report: &SimReport) -> BTreeMap<&str, usize> {
    report.policies[0]
        .schedules
        .iter()
        .map(|s| (s.schedule.as_str(), s.end))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_schedules_by_count_settle_at_their_counts() {
    // A year and a few days: the monthly tier has filled.
    let r = run("four-schedules-by-count.toml", 370).await;
    assert_eq!(
        ends(&r),
        BTreeMap::from([("hourly", 24), ("daily", 7), ("weekly", 4), ("monthly", 12)])
    );
    // The four crons never fire at the same instant, so nothing overlaps.
    assert_eq!(r.policies[0].end_per_volume, 24 + 7 + 4 + 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gfs_calendar_rules_keep_the_sum_minus_overlaps() {
    let r = run("gfs-by-count.toml", 400).await;
    let p = &r.policies[0];
    // Ends 2027-02-05 01:00 Berlin, last fire 00:15 Berlin (Friday). hourly 24: the last 24 fires. daily 7: Berlin
    // days 5 Feb back to 30 Jan; 5 and 4 Feb's newest are already hourly ones → 5 new. weekly 4: ISO weeks 5..2;
    // weeks 5 and 4 end on daily ones → 2 new (24 and 17 Jan). monthly 12: Feb 2027 back to Mar 2026; Feb and Jan
    // are daily ones → 10 new. yearly 3: 2027 and 2026 exist, both already kept; the rule has room left, so (as
    // restic does) it also keeps the oldest snapshot, 2026-01-01 01:15 Berlin → 1 new.
    assert_eq!(p.end_per_volume, 24 + 5 + 2 + 10 + 1);
    assert_eq!(
        p.schedules[0].surviving.last().map(String::as_str),
        Some("2026-01-01T00:15:00Z")
    );
    assert!(p.end_per_volume < 24 + 7 + 4 + 12 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_quarterly_annual_windows_and_all() {
    let r = run("daily-quarterly-annual.toml", 400).await;
    // Sydney time: daily within 7d of the newest is 8 snapshots (the boundary is inclusive); the quarterly fires of
    // April, July, October 2026 and January 2027 are all within 460 days (1 January 2026 02:00 Sydney fell before
    // the start); the one 31 December fire is kept for ever.
    assert_eq!(
        ends(&r),
        BTreeMap::from([("daily", 8), ("quarterly", 4), ("annual", 1)])
    );
    assert_eq!(r.policies[0].end_per_volume, 8 + 4 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_driven_counts_follow_the_tag_value() {
    let r = run("tag-driven-counts.toml", 10).await;
    // Count tags set to 7 on the simulated instance; hourly also keeps everything within 12 h of its newest (13).
    assert_eq!(ends(&r), BTreeMap::from([("daily", 7), ("hourly", 13)]));
    assert_eq!(r.policies[0].end_per_volume, 7 + 13);
    let r = run("volume-generations.toml", 20).await;
    assert_eq!(r.policies[0].schedules[0].end, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peaks_exceed_the_steady_state_by_the_pending_snapshot_only() {
    let r = run("four-schedules-by-count.toml", 10).await;
    let hourly = &r.policies[0].schedules[0];
    assert_eq!((hourly.end, hourly.peak), (24, 25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_vss_recipe_keeps_five_days_three_weeks_two_months_of_consistent_snapshots() {
    // simulate's fleet is healthy: every VSS command succeeds and the document makes the snapshots, so all are
    // application-consistent and `app-consistent-only` counts every one.
    let r = run("windows-vss.toml", 400).await;
    let p = &r.policies[0];
    // Ends 2027-02-04 01:00 London (a Thursday). daily 5: 4 Feb back to 31 Jan. weekly 3: ISO weeks 5, 4, 3 end
    // on 4 Feb, 31 Jan (both daily ones) and 24 Jan → 1 new. monthly 2: February and January end on daily ones.
    assert_eq!(p.end_per_volume, 5 + 1);
    assert_eq!(
        p.schedules[0].surviving.last().map(String::as_str),
        Some("2027-01-24T01:00:00Z")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linux_fsfreeze_recipe_keeps_its_calendar_of_frozen_snapshots() {
    let r = run("linux-fsfreeze.toml", 400).await;
    let p = &r.policies[0];
    // Ends 2027-02-04 02:15 New York. daily 7: 4 Feb back to 29 Jan. weekly 4: weeks 5..2 end on 4 Feb, 31 Jan
    // (daily ones), 24 and 17 Jan → 2 new. monthly 6: Feb and Jan are daily ones; Dec back to Sep → 4 new.
    assert_eq!(p.end_per_volume, 7 + 2 + 4);
    assert_eq!(
        p.schedules[0].surviving.last().map(String::as_str),
        Some("2026-09-30T06:15:00Z")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dr_copy_recipe_keeps_a_week_at_the_source_and_four_weeklies_and_three_monthlies_in_the_destination(
) {
    let r = run("dr-copy.toml", 100).await;
    let p = &r.policies[0];
    // The source: nightly's last 7 and hourly's last 24 (the 02:15 hourly and the 02:30 nightly are apart).
    assert_eq!(ends(&r), BTreeMap::from([("nightly", 7), ("hourly", 24)]));
    assert_eq!(p.end_per_volume, 7 + 24);
    assert_eq!(
        p.destinations.len(),
        1,
        "only nightly copies, to one region"
    );
    let d = &p.destinations[0];
    assert_eq!(d.region, "eu-central-1");
    // Ends 2026-04-11 00:00 UTC; the last nightly is Friday 10 April, copied at the 03:15 hourly run. weekly 4:
    // ISO weeks 15..12 end on 10 April, Sunday 5 April, 29 and 22 March. monthly 3: April (10 April, a weekly one
    // already), March 31 and February 28. Nothing else: each night's copy replaced the one before it in its week.
    let weeklies = [
        "2026-04-10T02:30:00Z",
        "2026-04-05T02:30:00Z",
        "2026-03-29T02:30:00Z",
        "2026-03-22T02:30:00Z",
    ];
    let monthlies = [
        "2026-04-10T02:30:00Z",
        "2026-03-31T02:30:00Z",
        "2026-02-28T02:30:00Z",
    ];
    let mut expected: Vec<&str> = weeklies.iter().chain(&monthlies).copied().collect();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    expected.dedup();
    let nightly = &d.schedules[0];
    assert_eq!(nightly.schedule, "nightly");
    assert_eq!(nightly.surviving, expected);
    assert_eq!((nightly.end, d.end_per_volume), (4 + 3 - 1, 4 + 3 - 1));
    assert!(
        snapwarden::simulate::render(&r).contains("copies in eu-central-1"),
        "the destination is shown"
    );
}
