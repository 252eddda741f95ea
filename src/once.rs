//! `snapwarden once`: the lines it prints for one region's run — the run's counts, its problems and, for a dry
//! run, what would be created and deleted. Pure text from the run's outcome; `main` resolves the slot, takes the
//! host lock, runs the worker and picks the exit code.

use std::fmt::Write as _;

use crate::ec2::DryRunLog;
use crate::retention::Action;
use crate::schedule::format_slot;
use crate::worker::Outcome;

/// One region's summary line, a line per problem and, with `dry` (a dry run's log), a line per snapshot it would
/// create, per copy it would make in this region and per deletion of its plan.
pub fn region_lines(outcome: &Outcome, dry: Option<&DryRunLog>) -> String {
    let rep = &outcome.report;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{} {}/{} slot {}: {} — {} targeted, {} created, {} already present, {} failed, {} deleted, {} kept, {} kept (AMI)",
        rep.region, rep.policy, rep.schedule_label(), format_slot(rep.slot), rep.result().as_str(), rep.targeted_volumes, rep.created,
        rep.already_done, rep.failed_volumes(), rep.deleted, rep.kept, rep.kept_in_use
    );
    for pr in rep.fatal.iter().chain(&rep.problems) {
        let _ = writeln!(
            out,
            "  problem: {} {}: {} {}",
            pr.operation, pr.resource, pr.code, pr.message
        );
    }
    if let Some(log) = dry {
        for c in &log.created {
            let _ = writeln!(
                out,
                "  would create: snapshot of {} ({})",
                c.volume_id, c.description
            );
        }
        for c in &log.copied {
            let _ = writeln!(
                out,
                "  would copy: {} from {} ({})",
                c.source_snapshot_id, c.source_region, c.description
            );
        }
        for dec in outcome.plan.iter().filter(|d| d.action == Action::Delete) {
            let why: Vec<String> = dec.reasons.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "  would delete: {} of {} slot {} ({})",
                dec.snapshot_id,
                dec.volume_id,
                format_slot(dec.slot),
                why.join("; ")
            );
        }
    }
    out
}
