//! `snapwarden next`: the upcoming fire times of every schedule, a line each (`policy/schedule`, the time in the
//! configured timezone, the slot tag it would get), tab-separated for `cut` and `awk`. Pure: `now` is a value.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::schedule::format_slot;

/// The next `count` fires after `now` of each schedule, in config order.
pub fn upcoming(config: &Config, now: DateTime<Utc>, count: usize) -> String {
    let tz = config.daemon.timezone;
    let mut out = String::new();
    for p in &config.policies {
        for s in &p.schedules {
            for t in s.cron.upcoming(now, tz, count) {
                // Writing to a String cannot fail.
                let _ = writeln!(
                    out,
                    "{}/{}\t{}\t{}",
                    p.name,
                    s.name,
                    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
                    format_slot(t)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tab_separated_line_per_fire_in_the_configured_zone() {
        let text = "[daemon]\ntimezone = \"Europe/Berlin\"\n[[policy]]\nname = \"p\"\n\
                    target = { resource = \"instance\", tags = { Backup = \"p\" } }\n\
                    schedule = [{ name = \"daily\", cron = \"30 4 * * *\", keep = { last = 3 } }]\n";
        let config =
            crate::config::from_toml_str(std::path::Path::new("t.toml"), text, &[]).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-03-02T12:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            upcoming(&config, now, 2),
            "p/daily\t2026-03-03 04:30:00 CET\t2026-03-03T03:30:00Z\n\
             p/daily\t2026-03-04 04:30:00 CET\t2026-03-04T03:30:00Z\n"
        );
    }
}
