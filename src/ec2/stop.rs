//! The process's mutating EC2 calls (CreateSnapshot, CreateSnapshots, CopySnapshot, CreateTags, DeleteSnapshot)
//! at shutdown:
//! [`Mutations`] counts the calls in flight and, once stopped (the daemon stops it when the grace period is over),
//! refuses to start new ones; [`Guarded`] applies it to one backend and logs every mutating call with its outcome
//! the moment it answers. Describes pass through untouched: they change nothing.
//!
//! Where it sits: innermost, right above the backend, below `Instrumented`'s concurrency permit and `Paced`'s token
//! waits and backoff sleeps. The refusal is therefore checked for each attempt at the moment it would be sent, so a
//! call that queued for a permit, a token or a retry before the stop is never sent after it. The log line is written
//! here rather than in the worker so that a call is logged even when the run that sent it is abandoned.
//!
//! What it does not do: wait. The daemon waits for [`Mutations::idle`] (each call is bounded by the SDK's operation
//! timeout, `aws.operation-timeout`); a refused call is an [`Error::Stopped`], which the worker reports as not done.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::op::Op;
use super::{
    CopySnapshot, CreateSnapshot, CreateSnapshots, Ec2, Filter, Instance, Page, Snapshot, Tags,
    Volume, VolumeResult,
};
use crate::error::{Error, Result};

/// Mutating calls in flight, shared by every backend of the process, and whether new ones may start.
#[derive(Default)]
pub struct Mutations {
    state: Mutex<State>,
    idle: Notify,
}

#[derive(Default)]
struct State {
    stopped: bool,
    in_flight: usize,
}

impl Mutations {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mutation ledger poisoned")
    }

    /// No mutating call starts from now on; returns how many are in flight. Checked and counted under one lock
    /// with [`Mutations::begin`], so every call that started before the stop is in that count.
    pub(crate) fn stop(&self) -> usize {
        let mut st = self.state();
        st.stopped = true;
        st.in_flight
    }

    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    /// Returns once no mutating call is in flight.
    pub(crate) async fn idle(&self) {
        loop {
            let woken = self.idle.notified();
            tokio::pin!(woken);
            // Registered before looking, so an end in between is not missed.
            woken.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            woken.await;
        }
    }

    fn begin(&self) -> bool {
        let mut st = self.state();
        if st.stopped {
            return false;
        }
        st.in_flight += 1;
        true
    }

    fn end(&self) {
        let mut st = self.state();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            self.idle.notify_waiters();
        }
    }
}

/// One mutating call in flight. Dropped unanswered (its future cancelled, e.g. at runtime shutdown), it says so:
/// the call may or may not have been carried out.
struct InFlight<'a> {
    ledger: &'a Mutations,
    operation: Op,
    resource: &'a str,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            tracing::warn!(
                operation = self.operation.name(),
                resource = self.resource,
                outcome = "abandoned",
                "mutating EC2 call abandoned before its answer: it may or may not have been carried out"
            );
        }
        self.ledger.end();
    }
}

/// The [`Ec2`] decorator of this module; see the module docs.
pub(crate) struct Guarded {
    inner: Arc<dyn Ec2>,
    ledger: Arc<Mutations>,
}

impl Guarded {
    pub(crate) fn new(inner: Arc<dyn Ec2>, ledger: Arc<Mutations>) -> Self {
        Guarded { inner, ledger }
    }

    /// Sends `call` unless stopped, and logs its outcome; `made` names what an answered call produced.
    async fn mutate<T, F>(
        &self,
        operation: Op,
        resource: &str,
        made: impl FnOnce(&T) -> String,
        call: F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        if !self.ledger.begin() {
            tracing::debug!(
                operation = operation.name(),
                resource,
                "mutating EC2 call not sent: stopping"
            );
            return Err(Error::Stopped {
                operation,
                region: self.inner.region().to_string(),
            });
        }
        let mut flight = InFlight {
            ledger: &self.ledger,
            operation,
            resource,
            answered: false,
        };
        let started = Instant::now();
        let result = call.await;
        flight.answered = true;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(v) => tracing::info!(
                operation = operation.name(),
                resource,
                outcome = "ok",
                made = %made(v),
                seconds,
                "mutating EC2 call answered"
            ),
            // Throttled: not carried out, and `Paced` tries again; a storm of them is not a warning each.
            Err(e) if e.is_throttle() => tracing::info!(
                operation = operation.name(),
                resource,
                outcome = e.code(),
                kind = e.kind(),
                seconds,
                "mutating EC2 call answered"
            ),
            Err(e) => tracing::warn!(
                operation = operation.name(),
                resource,
                outcome = e.code(),
                kind = e.kind(),
                error = %e,
                seconds,
                "mutating EC2 call answered"
            ),
        }
        result
    }
}

/// The ids of several resources as one log field: the first few and how many in all.
fn ids(list: impl ExactSizeIterator<Item = impl AsRef<str>>) -> String {
    const SHOWN: usize = 3;
    let n = list.len();
    let mut out: Vec<String> = list.take(SHOWN).map(|s| s.as_ref().to_string()).collect();
    if n > SHOWN {
        out.push(format!("… ({n} in all)"));
    }
    out.join(",")
}

#[async_trait]
impl Ec2 for Guarded {
    fn region(&self) -> &str {
        self.inner.region()
    }
    fn max_pending_snapshots(&self) -> Option<usize> {
        self.inner.max_pending_snapshots()
    }
    fn dry_run(&self) -> bool {
        self.inner.dry_run()
    }
    async fn account_id(&self) -> Result<String> {
        self.inner.account_id().await
    }
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>> {
        self.inner.describe_instances(filters).await
    }
    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>> {
        self.inner.describe_volumes(filters).await
    }
    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>> {
        self.inner.describe_snapshots(filters, token).await
    }
    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot> {
        self.mutate(
            Op::CreateSnapshot,
            &request.volume_id,
            |s: &Snapshot| s.id.to_string(),
            self.inner.create_snapshot(request),
        )
        .await
    }
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        self.mutate(
            Op::CreateSnapshots,
            &request.instance_id,
            |answer: &Vec<VolumeResult>| {
                ids(answer
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok().map(|s| s.id.clone()))
                    .collect::<Vec<_>>()
                    .iter())
            },
            self.inner.create_snapshots(request),
        )
        .await
    }
    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        self.mutate(
            Op::CreateTags,
            &ids(resource_ids.iter()),
            |_| String::new(),
            self.inner.create_tags(resource_ids, tags),
        )
        .await
    }
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.mutate(
            Op::DeleteSnapshot,
            snapshot_id,
            |_| String::new(),
            self.inner.delete_snapshot(snapshot_id),
        )
        .await
    }
    /// Logged under the source snapshot (the copy's id is what it made): in the destination's log, the line that
    /// says which source a copy came from.
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot> {
        self.mutate(
            Op::CopySnapshot,
            &request.source_snapshot_id,
            |s: &Snapshot| s.id.to_string(),
            self.inner.copy_snapshot(request),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::fake::FakeEc2;
    use crate::ec2::hooked::{Call, Hooked, Step};
    use crate::ec2::pace::{PaceConfig, Paced};
    use crate::retention::SnapState;

    /// Throttles the first DeleteSnapshot and stops the ledger at that moment: the stop arrives while `Paced` has
    /// the call between two attempts (in backoff).
    fn stop_while_throttled(fake: Arc<FakeEc2>, ledger: Arc<Mutations>) -> Hooked {
        let throttle = fake.clone();
        Hooked::new(fake.clone())
            .before(move |call| {
                if let Call::DeleteSnapshot(_) = call {
                    throttle.fail_operation("DeleteSnapshot", "RequestLimitExceeded");
                }
                Step::Go
            })
            .after(move |call, _| {
                if let Call::DeleteSnapshot(_) = call {
                    fake.clear_faults();
                    ledger.stop();
                }
                Step::Go
            })
    }

    #[tokio::test]
    async fn a_call_in_backoff_when_the_stop_comes_is_not_sent_again() {
        let ledger = Arc::new(Mutations::default());
        let fake = Arc::new(FakeEc2::new("test-1"));
        let (_, vols) = fake.add_instance(&[("Backup", "true")], &[("/dev/sdf", "gp3")]);
        let snap = fake.seed_snapshot(&vols[0], SnapState::Completed, "1", &[]);
        let backend = Arc::new(stop_while_throttled(fake.clone(), ledger.clone()));
        let pace = PaceConfig {
            backoff_base: std::time::Duration::from_millis(1),
            backoff_cap: std::time::Duration::from_millis(5),
            seed: Some(1),
            ..PaceConfig::default()
        };
        let ec2 = Paced::new(
            Arc::new(Guarded::new(backend.clone(), ledger.clone())),
            pace,
        );
        let err = ec2.delete_snapshot(&snap).await.unwrap_err();
        assert_eq!(err.kind(), "stopped", "{err}");
        assert_eq!(fake.calls("DeleteSnapshot"), 1, "the retry was not sent");
        assert_eq!(fake.snapshots().len(), 1, "nothing deleted");
        assert_eq!(ledger.in_flight(), 0);
    }

    #[tokio::test]
    async fn once_stopped_no_mutating_call_starts_but_describes_go_on() {
        let fake = Arc::new(FakeEc2::new("test-1"));
        let (_, vols) = fake.add_instance(&[("Backup", "true")], &[("/dev/sdf", "gp3")]);
        let snap = fake.seed_snapshot(&vols[0], SnapState::Completed, "1", &[]);
        let ledger = Arc::new(Mutations::default());
        let ec2 = Guarded::new(fake.clone(), ledger.clone());
        let request = CreateSnapshot {
            volume_id: vols[0].clone(),
            description: "d".into(),
            tags: Tags::new(),
        };
        ec2.create_snapshot(&request)
            .await
            .expect("sent before the stop");
        assert_eq!(ledger.in_flight(), 0);
        ledger.idle().await;

        assert_eq!(ledger.stop(), 0);
        let refused = ec2.delete_snapshot(&snap).await.unwrap_err();
        assert_eq!(refused.kind(), "stopped");
        assert_eq!(refused.retry(), None);
        assert!(ec2.create_snapshot(&request).await.is_err());
        assert!(ec2
            .create_tags(std::slice::from_ref(&snap), &Tags::new())
            .await
            .is_err());
        let copy = CopySnapshot {
            source_region: "test-1".into(),
            source_snapshot_id: snap.clone(),
            description: "d".into(),
            encrypted: false,
            kms_key_id: None,
            tags: Tags::new(),
        };
        assert_eq!(
            ec2.copy_snapshot(&copy).await.unwrap_err().kind(),
            "stopped"
        );
        assert_eq!(
            (
                fake.calls("DeleteSnapshot"),
                fake.calls("CreateSnapshot"),
                fake.calls("CreateTags"),
                fake.calls("CopySnapshot")
            ),
            (0, 1, 0, 0),
            "nothing reached the backend after the stop"
        );
        assert_eq!(
            crate::ec2::all_snapshots(&ec2, &[]).await.unwrap().len(),
            2,
            "describes are not mutations"
        );
    }
}
