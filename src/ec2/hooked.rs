//! The test decorator for [`Ec2`]: forwards every call to the backend it wraps and lets a test step in before and
//! after any call — answer an error instead, wait, panic, change the in-memory backend between calls, or change an
//! answer. Tests describe only what differs from the backend (hooks that match on [`Call`]), so a new trait method
//! is forwarded here once for every test, instead of falling through to the trait's default in wrappers that each
//! forwarded some methods. Compiled for tests only (the `testing` feature).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::op::Op;
use super::{
    create_each, CopySnapshot, CreateSnapshot, CreateSnapshots, Ec2, Filter, Instance, Page,
    Snapshot, Tags, Volume, VolumeResult,
};
use crate::error::{Error, Result};

/// One call as a hook sees it: the operation and its arguments.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    AccountId,
    DescribeInstances(&'a [Filter]),
    DescribeVolumes(&'a [Filter]),
    /// Filters and page token.
    DescribeSnapshots(&'a [Filter], Option<&'a str>),
    CreateSnapshot(&'a CreateSnapshot),
    CreateSnapshots(&'a CreateSnapshots),
    /// Resource ids and tags.
    CreateTags(&'a [String], &'a Tags),
    DeleteSnapshot(&'a str),
    CopySnapshot(&'a CopySnapshot),
}

impl Call<'_> {
    /// The API action, as [`Error::Api`] and the request metrics name it.
    pub fn operation(&self) -> Op {
        match self {
            Call::AccountId => Op::GetCallerIdentity,
            Call::DescribeInstances(_) => Op::DescribeInstances,
            Call::DescribeVolumes(_) => Op::DescribeVolumes,
            Call::DescribeSnapshots(..) => Op::DescribeSnapshots,
            Call::CreateSnapshot(_) => Op::CreateSnapshot,
            Call::CreateSnapshots(_) => Op::CreateSnapshots,
            Call::CreateTags(..) => Op::CreateTags,
            Call::DeleteSnapshot(_) => Op::DeleteSnapshot,
            Call::CopySnapshot(_) => Op::CopySnapshot,
        }
    }
}

/// A call's answer, for an after hook to read or change in place.
pub enum Answer<'a> {
    AccountId(&'a mut Result<String>),
    Instances(&'a mut Result<Vec<Instance>>),
    Volumes(&'a mut Result<Vec<Volume>>),
    Snapshots(&'a mut Result<Page<Snapshot>>),
    /// CreateSnapshot, CopySnapshot.
    Created(&'a mut Result<Snapshot>),
    CreatedEach(&'a mut Result<Vec<VolumeResult>>),
    /// CreateTags, DeleteSnapshot.
    Done(&'a mut Result<()>),
}

/// What a hook has the call do next. A hook may also panic: the panic unwinds out of the call, as a bug in a
/// backend's would.
pub enum Step {
    /// Carry on: before a call, send it; after, return the answer.
    Go,
    /// Answer this error: before a call, instead of sending it; after, instead of the backend's answer.
    Fail(Error),
    /// Wait this long on tokio's clock (a paused test clock skips ahead), then carry on.
    Delay(Duration),
    /// Await this first (another call on the backend, a wait on a channel, …), then carry on, or answer its error.
    Run(BoxFuture<'static, Result<()>>),
}

impl Step {
    pub fn run(work: impl Future<Output = Result<()>> + Send + 'static) -> Step {
        Step::Run(Box::pin(work))
    }

    async fn take(self) -> Result<()> {
        match self {
            Step::Go => Ok(()),
            Step::Fail(e) => Err(e),
            Step::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Step::Run(work) => work.await,
        }
    }
}

type Before = Box<dyn Fn(&Call<'_>) -> Step + Send + Sync>;
type After = Box<dyn Fn(&Call<'_>, Answer<'_>) -> Step + Send + Sync>;

/// Forwards every [`Ec2`] method to `inner`, running the before hooks (in the order added) ahead of each call and
/// the after hooks on its answer.
pub struct Hooked {
    inner: Arc<dyn Ec2>,
    before: Vec<Before>,
    after: Vec<After>,
    one_volume_at_a_time: bool,
}

impl Hooked {
    pub fn new(inner: Arc<dyn Ec2>) -> Self {
        Hooked {
            inner,
            before: Vec::new(),
            after: Vec::new(),
            one_volume_at_a_time: false,
        }
    }

    /// Runs `hook` before every call, after the hooks added earlier; an error from any of them is the answer.
    pub fn before(mut self, hook: impl Fn(&Call<'_>) -> Step + Send + Sync + 'static) -> Self {
        self.before.push(Box::new(hook));
        self
    }

    /// Runs `hook` on every answer (an error included) before it is returned.
    pub fn after(
        mut self,
        hook: impl Fn(&Call<'_>, Answer<'_>) -> Step + Send + Sync + 'static,
    ) -> Self {
        self.after.push(Box::new(hook));
        self
    }

    /// Answers CreateSnapshots as a backend that snapshots one volume at a time does: one CreateSnapshot per
    /// volume, each through the hooks, instead of forwarding the multi-volume call.
    pub fn one_volume_at_a_time(mut self) -> Self {
        self.one_volume_at_a_time = true;
        self
    }

    async fn call<T: Send>(
        &self,
        call: Call<'_>,
        answer: fn(&mut Result<T>) -> Answer<'_>,
        backend: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        for hook in &self.before {
            hook(&call).take().await?;
        }
        let mut out = backend.await;
        for hook in &self.after {
            if let Err(e) = hook(&call, answer(&mut out)).take().await {
                out = Err(e);
            }
        }
        out
    }
}

#[async_trait]
impl Ec2 for Hooked {
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
        let backend = self.inner.account_id();
        self.call(Call::AccountId, |a| Answer::AccountId(a), backend)
            .await
    }
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>> {
        let backend = self.inner.describe_instances(filters);
        let call = Call::DescribeInstances(filters);
        self.call(call, |a| Answer::Instances(a), backend).await
    }
    async fn describe_volumes(&self, filters: &[Filter]) -> Result<Vec<Volume>> {
        let backend = self.inner.describe_volumes(filters);
        let call = Call::DescribeVolumes(filters);
        self.call(call, |a| Answer::Volumes(a), backend).await
    }
    async fn describe_snapshots(
        &self,
        filters: &[Filter],
        token: Option<&str>,
    ) -> Result<Page<Snapshot>> {
        let backend = self.inner.describe_snapshots(filters, token);
        let call = Call::DescribeSnapshots(filters, token);
        self.call(call, |a| Answer::Snapshots(a), backend).await
    }
    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot> {
        let backend = self.inner.create_snapshot(request);
        let call = Call::CreateSnapshot(request);
        self.call(call, |a| Answer::Created(a), backend).await
    }
    async fn create_snapshots(&self, request: &CreateSnapshots) -> Result<Vec<VolumeResult>> {
        if self.one_volume_at_a_time {
            return Ok(create_each(self, request).await);
        }
        let backend = self.inner.create_snapshots(request);
        let call = Call::CreateSnapshots(request);
        self.call(call, |a| Answer::CreatedEach(a), backend).await
    }
    async fn create_tags(&self, resource_ids: &[String], tags: &Tags) -> Result<()> {
        let backend = self.inner.create_tags(resource_ids, tags);
        let call = Call::CreateTags(resource_ids, tags);
        self.call(call, |a| Answer::Done(a), backend).await
    }
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        let backend = self.inner.delete_snapshot(snapshot_id);
        let call = Call::DeleteSnapshot(snapshot_id);
        self.call(call, |a| Answer::Done(a), backend).await
    }
    async fn copy_snapshot(&self, request: &CopySnapshot) -> Result<Snapshot> {
        let backend = self.inner.copy_snapshot(request);
        let call = Call::CopySnapshot(request);
        self.call(call, |a| Answer::Created(a), backend).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ec2::fake::FakeEc2;

    fn refused(call: &Call<'_>) -> Error {
        Error::api(
            call.operation(),
            "test-1",
            "UnauthorizedOperation",
            "refused by a hook",
        )
    }

    #[tokio::test]
    async fn hooks_see_every_call_and_can_refuse_it_or_change_its_answer() {
        let fake = Arc::new(FakeEc2::new("test-1"));
        let (instance, vols) = fake.add_instance(
            &[("Backup", "true")],
            &[("/dev/sdf", "gp3"), ("/dev/sdg", "gp3")],
        );
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        let ec2 = Hooked::new(fake.clone())
            .before(move |call| {
                counted.fetch_add(1, Ordering::SeqCst);
                match call {
                    Call::DeleteSnapshot(_) => Step::Fail(refused(call)),
                    _ => Step::Go,
                }
            })
            .after(|_, answer| {
                if let Answer::Instances(Ok(all)) = answer {
                    all.clear();
                }
                Step::Go
            });
        assert_eq!(
            ec2.account_id().await.unwrap(),
            crate::ec2::fake::FAKE_ACCOUNT
        );
        assert!(ec2.describe_instances(&[]).await.unwrap().is_empty());
        assert_eq!(ec2.describe_volumes(&[]).await.unwrap().len(), 2);
        let request = CreateSnapshots {
            instance_id: instance,
            description: "d".into(),
            tags: Tags::new(),
            volumes: vols.iter().map(|v| (v.clone(), Tags::new())).collect(),
        };
        let made = ec2.create_snapshots(&request).await.unwrap();
        let ids: Vec<String> = made
            .iter()
            .map(|(_, s)| s.as_ref().unwrap().id.to_string())
            .collect();
        ec2.create_tags(&ids, &Tags::new()).await.unwrap();
        assert_eq!(
            super::super::all_snapshots(&ec2, &[]).await.unwrap().len(),
            2
        );
        let err = ec2.delete_snapshot(&ids[0]).await.unwrap_err();
        assert_eq!(err.code(), "UnauthorizedOperation");
        assert_eq!(
            fake.calls("DeleteSnapshot"),
            0,
            "a refused call never reaches the backend"
        );
        assert_eq!(
            (fake.calls("CreateSnapshots"), fake.calls("CreateTags")),
            (1, 1)
        );
        assert_eq!(seen.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn one_volume_at_a_time_sends_each_volume_through_the_hooks() {
        let fake = Arc::new(FakeEc2::new("test-1"));
        let (instance, vols) = fake.add_instance(
            &[("Backup", "true")],
            &[("/dev/sdf", "gp3"), ("/dev/sdg", "gp3")],
        );
        let doomed = vols[1].clone();
        let ec2 = Hooked::new(fake.clone())
            .one_volume_at_a_time()
            .before(move |call| match call {
                Call::CreateSnapshot(r) if r.volume_id == doomed => Step::Fail(refused(call)),
                _ => Step::Go,
            });
        let request = CreateSnapshots {
            instance_id: instance,
            description: "d".into(),
            tags: Tags::new(),
            volumes: vols.iter().map(|v| (v.clone(), Tags::new())).collect(),
        };
        let made = ec2.create_snapshots(&request).await.unwrap();
        assert!(made[0].1.is_ok() && made[1].1.is_err(), "{made:?}");
        assert_eq!(
            (fake.calls("CreateSnapshots"), fake.calls("CreateSnapshot")),
            (0, 1)
        );
    }

    #[tokio::test]
    async fn a_hook_can_panic_inside_a_call_and_later_calls_go_on() {
        let fake = Arc::new(FakeEc2::new("test-1"));
        let ec2 = Arc::new(Hooked::new(fake).before(|call| match call {
            Call::DeleteSnapshot(id) => panic!("injected panic deleting {id}"),
            _ => Step::Go,
        }));
        let call = ec2.clone();
        let joined = tokio::spawn(async move { call.delete_snapshot("snap-1").await }).await;
        let panic = joined.unwrap_err().into_panic();
        assert_eq!(
            panic.downcast_ref::<String>().map(String::as_str),
            Some("injected panic deleting snap-1")
        );
        assert!(ec2.account_id().await.is_ok());
    }
}
