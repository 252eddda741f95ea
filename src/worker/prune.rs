//! Retention inside a run: planning it from a survey ([`plan_retention`], also for `plan` and `simulate`), the
//! early deletes ([`Early`]) and the delete queue ([`delete_all`]), which drains beside every phase of the run
//! until the retain phase (`super::retain`) has sent the end-of-run plan's deletes and closed it. The delete budget is the scarcest one at scale (one DeleteSnapshot per expired snapshot, at the same
//! rate EC2 allows creates), so it must not idle while snapshots are being made.
//!
//! How deletes start early without changing what gets deleted: before creating anything, the run plans retention
//! on the state it expects at the end — every snapshot it is waiting for (this slot's new ones, and any an earlier
//! run left pending) completed. A volume's deletes from that plan are held until every snapshot of the volume it
//! waited for has been seen `completed`; the volume's input to the planner is then exactly what the end-of-run
//! plan sees, so its deletes are the same. A volume whose wait ends otherwise (a failed or deferred create, an
//! `error` snapshot, one still pending at the deadline, or — under an `app-consistent-only` rule — a snapshot that
//! turned out application-consistent, which the expected plan counted as a fallback) is never released early: the end-of-run plan over the
//! actual state decides for it, as it decides for every volume when the run does not wait for completion. The
//! deletion caps apply to both plans: early deletes only happen when the expected plan is within them, and the
//! end-of-run plan can only delete less (a snapshot that did not complete keeps at least as much).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::run::Run;
use super::survey::Survey;
use crate::config::Policy;
use crate::ec2::{Ec2, Snapshot};
use crate::error::Error;
use crate::retention::{
    self, Action, Decision, Group, Interner, PlanInput, ScheduleRules, Snap, SnapState,
};

/// Plans retention over every managed snapshot of the policy in the region, targeted or not. `tz` is the zone
/// calendar keep rules take their days and weeks in (`policy.timezone`, i.e. `daemon.timezone`). With `kept`,
/// kept decisions go there and the plan holds only the rest ([`retention::plan_deletions`]).
pub fn plan_retention(
    policy: &Policy,
    survey: &Survey,
    frozen: &HashSet<String>,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
    kept: Option<&mut dyn FnMut(Decision)>,
) -> retention::Plan {
    let rules: Vec<ScheduleRules> = policy
        .schedules
        .iter()
        .map(|s| ScheduleRules {
            name: Arc::from(s.name.as_str()),
            keep: s.keep.clone(),
            count_from_tag: s.count_tag.is_some(),
        })
        .collect();
    let counts = counts(survey);
    let targeted = targeted(survey);
    let input = PlanInput {
        snapshots: &survey.snapshots,
        schedules: &rules,
        counts: &counts,
        frozen_volumes: frozen,
        tz,
        targeted: Some(&targeted),
        orphans: policy.orphans,
        caps: policy.caps,
        held: &survey.held,
    };
    match kept {
        Some(kept) => retention::plan_deletions(&input, now, kept),
        None => retention::plan(&input, now),
    }
}

/// The keep-last counts from count tags: the live targets', and for volumes no longer targeted (instance gone, tag
/// removed) the count their snapshots were made with — the count tag is copied onto each snapshot. A live resource
/// with a bad value is not second-guessed this way.
fn counts(survey: &Survey) -> HashMap<(String, String), u32> {
    let mut counts = survey.counts.clone();
    counts.extend(
        survey
            .snapshot_counts
            .iter()
            .filter(|(key, _)| !survey.seen.contains(*key))
            .map(|(key, &(_, n))| (key.clone(), n)),
    );
    counts
}

/// The group keys retention must not treat as orphans. A volume skipped only for a bad count-tag value is still
/// targeted: it must not become an orphan whose history `expire-after` deletes while the tag is being fixed. Nor
/// are copies of a targeted volume: `orphans.expire-after` must not delete them while their source is still being
/// snapshotted.
pub(super) fn targeted(survey: &Survey) -> HashSet<String> {
    let mut targeted: HashSet<String> = survey
        .targets
        .iter()
        .map(|t| t.volume.id.clone())
        .chain(survey.seen.iter().map(|(volume, _)| volume.clone()))
        .collect();
    let by_device = survey.targets.iter().filter_map(|t| {
        let (instance, device) = t.volume.attachment.as_ref()?;
        Some(super::survey::copy_key_at(instance, device))
    });
    let copies: Vec<String> = targeted
        .iter()
        .map(|volume| super::survey::copy_key(volume))
        .chain(by_device)
        .collect();
    targeted.extend(copies);
    targeted
}

/// The deletes of the expected plan, held per volume until the snapshots the volume waits for have completed.
#[derive(Default)]
pub(super) struct Early {
    /// Volume -> how many of the snapshots it waits for are not yet seen completed.
    waiting: HashMap<Arc<str>, usize>,
    /// Volume -> its deletes in the expected plan.
    held: HashMap<Arc<str>, Vec<Decision>>,
    /// Volumes whose deletes went out early: the end-of-run plan leaves them alone.
    pub(crate) released: HashSet<Arc<str>>,
    /// Volumes this run creates a snapshot for, not yet matched with one.
    creating: HashSet<Arc<str>>,
    /// Snapshot id -> volume, for the snapshots the expected plan assumed completed.
    expected: HashMap<Arc<str>, Arc<str>>,
    /// Snapshot id -> volume, for every snapshot whose state the run is waiting to learn.
    pub(crate) pending: HashMap<Arc<str>, Arc<str>>,
    /// States learnt since the survey, by snapshot id.
    pub(crate) states: HashMap<Arc<str>, SnapState>,
    /// Snapshots this run made (or found made for a volume attached since the survey), digested on arrival: a
    /// create's answer carries every tag, a kilobyte a snapshot.
    pub(crate) created: Vec<Snap>,
    /// Some schedule of the policy counts only app-consistent snapshots (`app-consistent-only`): whether this
    /// run's snapshot is one changes the plan, and the expected plan assumed it is not.
    judges_consistency: bool,
    interner: Interner,
    tx: Option<UnboundedSender<Decision>>,
}

/// How [`Early::reshape`] changed the survey's snapshots, to be undone once the expected plan is made.
struct Reshaped {
    /// The error-state snapshots taken out.
    errored: Vec<Snap>,
    /// Indices of the pending snapshots marked completed.
    completed_now: Vec<usize>,
    /// How many snapshots there were before this run's placeholders were added.
    placeholders: usize,
}

impl Reshaped {
    fn undo(self, snapshots: &mut Vec<Snap>) {
        snapshots.truncate(self.placeholders);
        for i in self.completed_now {
            snapshots[i].state = SnapState::Pending;
        }
        snapshots.extend(self.errored);
    }
}

impl Early {
    /// Plans the expected end state of the run: its survey with every pending snapshot completed and a completed
    /// snapshot of the slot for each volume of `creating`. Volumes waiting for nothing are released at once. A
    /// run that does not poll for completion plans nothing early: the end-of-run plan decides everything.
    pub(crate) fn plan(
        run: &mut Run<'_>,
        creating: &[(String, Vec<String>)],
        tx: UnboundedSender<Decision>,
    ) -> Early {
        let (policy, slot, now) = (run.spec.policy, run.spec.slot, run.now());
        let mut e = Early {
            tx: Some(tx),
            judges_consistency: policy.schedules.iter().any(|s| s.keep.app_consistent_only),
            ..Early::default()
        };
        if run.polls().is_none() {
            // Nothing completes while the run lasts, so only volumes waiting for nothing could go early; not
            // worth a second plan (`simulate` runs thousands of these).
            return e;
        }
        let (survey, frozen) = (&mut run.survey, &run.frozen);
        let reshaped = e.reshape(survey, creating, slot);
        // Only its deletions matter; the keeps are dropped as they are made.
        let plan = plan_retention(
            policy,
            survey,
            frozen,
            policy.timezone,
            now,
            Some(&mut drop),
        );
        reshaped.undo(&mut survey.snapshots);
        e.hold(plan);
        e
    }

    /// Reshapes the survey in place into the end state the run expects, noting what it waits for; [`Reshaped::undo`]
    /// puts it back. In place, because a copy of a large survey would double the run's memory for a moment.
    /// Error-state snapshots are out of the end-of-run plan (the settle phase deletes them).
    fn reshape(
        &mut self,
        survey: &mut Survey,
        creating: &[(String, Vec<String>)],
        slot: DateTime<Utc>,
    ) -> Reshaped {
        let errored: Vec<Snap> = survey
            .snapshots
            .iter()
            .filter(|s| s.state == SnapState::Error)
            .cloned()
            .collect();
        if !errored.is_empty() {
            survey.snapshots.retain(|s| s.state != SnapState::Error);
        }
        let mut completed_now = Vec::new();
        for (i, s) in survey.snapshots.iter_mut().enumerate() {
            if s.state == SnapState::Pending {
                s.state = SnapState::Completed;
                completed_now.push(i);
                *self.waiting.entry(Arc::clone(&s.volume_id)).or_default() += 1;
                self.expected
                    .insert(Arc::clone(&s.id), Arc::clone(&s.volume_id));
                self.pending
                    .insert(Arc::clone(&s.id), Arc::clone(&s.volume_id));
            }
        }
        let placeholders = survey.snapshots.len();
        for (volume, serves) in creating {
            let volume = survey.interner.str(volume);
            let schedules = survey.interner.schedules(&serves.join(","));
            *self.waiting.entry(Arc::clone(&volume)).or_default() += 1;
            self.creating.insert(Arc::clone(&volume));
            survey.snapshots.push(Snap {
                id: Arc::from(format!("(snapshot of this run for {volume})")),
                volume_id: volume,
                slot,
                schedules,
                state: SnapState::Completed,
                pinned: false,
                // Unknown until the snapshot is made (a VSS or pre failure falls back): judged as not consistent.
                // Under `app-consistent-only` rules a consistent one pushes older ones out, which this plan cannot
                // foresee: such a volume is not released early (see `created`).
                app_consistent: false,
                group: Group::Volume,
                // Started last of the volume's: never the one standing for a slot it repeats.
                started: u32::MAX,
            });
        }
        Reshaped {
            errored,
            completed_now,
            placeholders,
        }
    }

    /// Holds the expected plan's deletes per volume, and releases those of volumes waiting for nothing. Over a
    /// deletion cap nothing goes early; the end-of-run plan reports the cap.
    fn hold(&mut self, plan: retention::Plan) {
        if plan.cap_hit.is_some() {
            return;
        }
        let placeholder_deleted: HashSet<Arc<str>> = plan
            .deletes()
            .filter(|d| d.snapshot_id.starts_with('('))
            .map(|d| Arc::clone(&d.volume_id))
            .collect();
        for d in plan.decisions {
            if d.action == Action::Delete && !placeholder_deleted.contains(&d.volume_id) {
                self.held
                    .entry(Arc::clone(&d.volume_id))
                    .or_default()
                    .push(d);
            }
        }
        // A volume the expected plan would take this run's snapshot from is not one the plans can agree on.
        for v in placeholder_deleted {
            self.waiting.insert(v, usize::MAX);
        }
        let ready: Vec<Arc<str>> = self
            .held
            .keys()
            .filter(|v| !self.waiting.contains_key(*v))
            .cloned()
            .collect();
        for v in ready {
            self.release(&v);
        }
    }

    fn release(&mut self, volume: &Arc<str>) {
        let Some(deletes) = self.held.remove(volume) else {
            return;
        };
        self.released.insert(Arc::clone(volume));
        if let Some(tx) = &self.tx {
            for d in deletes {
                // The receiver lives as long as the run; a send can only fail once it is over.
                let _ = tx.send(d);
            }
        }
    }

    /// A snapshot a create call returned.
    pub(crate) fn created(&mut self, s: &Snapshot) {
        let volume: Option<Arc<str>> = self.creating.take(&*s.volume_id);
        if let Some(v) = volume {
            self.expected.insert(Arc::clone(&s.id), v);
        }
        let snap = super::survey::digest(&mut self.interner, s);
        let volume = Arc::clone(&s.volume_id);
        if self.judges_consistency && snap.app_consistent {
            // The expected plan judged this run's snapshot a fallback; the end-of-run plan decides for the volume.
            if let Some(left) = self.waiting.get_mut(&volume) {
                *left = usize::MAX;
            }
        }
        self.created.push(snap);
        match s.state {
            SnapState::Pending => {
                self.pending.insert(Arc::clone(&s.id), volume);
            }
            state => self.learnt(&s.id, state),
        }
    }

    /// A state learnt by polling (or by creating).
    pub(crate) fn learnt(&mut self, id: &Arc<str>, state: SnapState) {
        if state == SnapState::Pending {
            return;
        }
        self.pending.remove(id);
        self.states.insert(Arc::clone(id), state);
        let Some(volume) = self.expected.remove(id) else {
            return;
        };
        let Some(left) = self.waiting.get_mut(&volume) else {
            return;
        };
        if state == SnapState::Completed && *left != usize::MAX {
            *left -= 1;
            if *left == 0 {
                self.waiting.remove(&volume);
                self.release(&volume);
            }
        } else {
            // An error snapshot: the expected plan counted it as a keeper; it is not one.
            *left = usize::MAX;
        }
    }

    /// Sends the end-of-run plan's deletes of every volume not released early, and closes the queue.
    pub(crate) fn finish(&mut self, plan: &[Decision]) {
        if let Some(tx) = self.tx.take() {
            for d in plan.iter().filter(|d| d.action == Action::Delete) {
                if !self.released.contains(&d.volume_id) {
                    let _ = tx.send(d.clone());
                }
            }
        }
    }

    /// Closes the queue without sending more.
    pub(crate) fn close(&mut self) {
        self.tx = None;
    }
}

/// Deletes what arrives on `rx` until it closes, up to `concurrency` calls waiting at once (the backend's token
/// bucket paces them).
pub(super) async fn delete_all(
    ec2: &dyn Ec2,
    rx: UnboundedReceiver<Decision>,
    concurrency: usize,
) -> Vec<(Decision, Result<(), Error>)> {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) })
        .map(|d| async move {
            let result = ec2.delete_snapshot(&d.snapshot_id).await;
            (d, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}
