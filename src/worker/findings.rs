//! What a run's retention plan set aside for an operator: snapshots whose slot lies in the future
//! ([`Reason::FutureSlot`]) and copies that record no source volume ([`Reason::UnplacedCopy`]). Both are kept, so
//! nothing is lost, but the policy does not judge them — a typo in a slot tag, a skewed clock, a copying tool that
//! wrote no source — so each kind becomes one warning line and one report problem per run (retention is then
//! `partial` and the SNS digest shows the line). How many there are is the same plan's
//! `snapwarden_kept_snapshots{reason="future-slot"|"unplaced-copy"}` gauge.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::report::{Problem, RunReport};
use crate::retention::{Decision, Reason, FUTURE_SLOT_ALLOWANCE};
use crate::schedule::format_slot;

/// Snapshots named in a problem's message: enough to find them, few enough for an alert.
const EXAMPLES: usize = 3;

#[derive(Default)]
pub(super) struct SetAside {
    future: Kind,
    unplaced: Kind,
}

#[derive(Default)]
struct Kind {
    count: usize,
    /// (snapshot, volume or group, slot)
    examples: Vec<(Arc<str>, Arc<str>, DateTime<Utc>)>,
}

impl SetAside {
    /// Notes `d` if the plan set it aside.
    pub(crate) fn add(&mut self, d: &Decision) {
        for r in &d.reasons {
            let kind = match r {
                Reason::FutureSlot => &mut self.future,
                Reason::UnplacedCopy => &mut self.unplaced,
                _ => continue,
            };
            kind.count += 1;
            if kind.examples.len() < EXAMPLES {
                kind.examples
                    .push((Arc::clone(&d.snapshot_id), Arc::clone(&d.volume_id), d.slot));
            }
        }
    }

    /// One warning line and one problem per kind found.
    pub(crate) fn report(&self, policy: &str, region: &str, report: &mut RunReport) {
        let allowance = FUTURE_SLOT_ALLOWANCE.num_minutes();
        if self.future.count > 0 {
            let message = format!(
                "policy {policy}: {} snapshot(s) carry a snapwarden:slot more than {allowance}m after now ({}): kept, \
                 but no keep rule counts them and they are no volume's newest. Set the tag to the slot the snapshot \
                 was taken for, or delete the snapshot by hand",
                self.future.count,
                examples(&self.future)
            );
            tracing::warn!(count = self.future.count, detail = %message, "snapshots with a future slot set aside");
            report.problems.push(Problem {
                resource: region.to_string(),
                operation: "retention",
                code: "future-slot".into(),
                message,
                aws: None,
            });
        }
        if self.unplaced.count > 0 {
            let message = format!(
                "policy {policy}: {} cop(ies) record no source volume ({}): EC2 gives every copy the volume id \
                 vol-ffffffff and they carry neither snapwarden:source-volume nor snapwarden:instance-id with \
                 snapwarden:device, so retention keeps them and never judges them. Tag them with \
                 snapwarden:source-volume to let the policy manage them",
                self.unplaced.count,
                examples(&self.unplaced)
            );
            tracing::warn!(count = self.unplaced.count, detail = %message, "copies of unknown volumes set aside");
            report.problems.push(Problem {
                resource: region.to_string(),
                operation: "retention",
                code: "unplaced-copy".into(),
                message,
                aws: None,
            });
        }
    }
}

fn examples(kind: &Kind) -> String {
    let mut shown: Vec<String> = kind
        .examples
        .iter()
        .map(|(id, volume, slot)| format!("{id} of {volume} slot {}", format_slot(*slot)))
        .collect();
    if kind.count > kind.examples.len() {
        shown.push(format!("and {} more", kind.count - kind.examples.len()));
    }
    shown.join(", ")
}
