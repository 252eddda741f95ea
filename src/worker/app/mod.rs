//! The app-consistency phase, before the ordinary creates: for a policy with `consistency = "vss"` or
//! `[policy.scripts]`, the SSM commands that make an instance's snapshots application-consistent.
//!
//! Per batch of at most 50 instances (all batches at once; SSM's bucket paces the sends): the pre script, then —
//! where it succeeded, or with no pre script — the snapshot (the VSS command, or the ordinary create calls made
//! right away, while the pre script holds the instance still), then the post script wherever the pre script may
//! have run, also where the snapshot failed. The snapshots the VSS commands made are found afterwards with one
//! filtered describe for the fire. An instance whose pre script or VSS command failed gets what `on-failure`
//! says: an ordinary snapshot left to the create phase (tagged `snapwarden:app-consistent = false`), or none.
//!
//! Everything is read back from AWS, so a restart after a crash does not repeat what an earlier process did: the
//! slot's snapshots are found by tag (the survey), commands already sent for the slot by their comment
//! (ListCommands; `ssm::batch` awaits them instead of sending again), and a post script an earlier process owed
//! (its pre ran, it died before the post) is sent now.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;

use super::create::{self, Created, Todo, Untagged};
use super::run::{Flight, Run};
use super::survey::TargetVolume;
use crate::config::{OnFailure, Policy, Script};
use crate::ec2::{self, Ec2, Filter, Snapshot, Tags};
use crate::schedule::format_slot;
use crate::ssm::batch::{self, Adopt, Cause, Outcome, Ran, Request};
use crate::ssm::{Sent, Ssm, MAX_INSTANCES};

/// The AWS document that takes VSS snapshots on Windows.
pub const VSS_DOCUMENT: &str = "AWSEC2-CreateVssSnapshot";
/// How long the VSS command may take to be delivered, on top of its `executionTimeout`.
const VSS_DELIVERY: Duration = Duration::from_secs(60);
/// The exit code with which a post script says the instance was no longer held still when it ran (the freeze
/// document's auto-thaw fired first, `deploy/ssm/snapwarden-thaw.yaml`): the snapshots taken under the pre
/// script may have been taken after the thaw, so they are tagged not consistent.
pub const THAWED_EARLY: i32 = 3;
/// Describes looking for the VSS snapshots before the missing ones count as not made (describe is eventually
/// consistent; the document reports success only after EC2 accepted the snapshots).
const FIND_TRIES: u32 = 3;

/// The stages of the phase, as problems and metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Pre,
    Vss,
    Post,
}

impl Stage {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Stage::Pre => "pre",
            Stage::Vss => "vss",
            Stage::Post => "post",
        }
    }
}

/// The phase: returns what is left to the create phase (every volume of an instance that falls back, tagged
/// not consistent, and volumes with no instance). A policy with neither VSS nor scripts passes `todo` through.
pub(super) async fn phase(run: &mut Run<'_>, flight: &Flight, todo: Vec<Todo>) -> Vec<Todo> {
    let policy = run.spec.policy;
    if policy.vss.is_none() && policy.scripts.is_none() {
        return todo;
    }
    let (instances, mut plain) = by_instance(run, todo);
    // Nothing to snapshot: only a post an earlier process owed could be left to do.
    let posts = policy.scripts.as_ref().is_some_and(|s| s.post.is_some());
    if instances.is_empty() && !posts {
        return plain;
    }
    // A dry run sends no command: it reports the snapshots as the app-consistent path would make them.
    if run.ec2.dry_run() {
        for (_, items) in instances {
            plain.extend(items.into_iter().map(|t| tagged(t, true)));
        }
        return plain;
    }
    let Some(ssm) = run.spec.ssm else {
        let e = crate::error::Error::Other("no SSM client for this region".into());
        for (instance, items) in instances {
            let (stage, how) = stage_failed(policy);
            let cause = Ran::NotSent(e.clone()).cause("SSM", Duration::ZERO);
            plain.extend(fail_over(run, &instance, items, stage, how, cause));
        }
        return plain;
    };
    let cx = Cx::new(run, ssm).await;
    let owed = cx.owed_posts(&instances);
    let batches: Vec<Vec<(String, Vec<Todo>)>> = chunks(instances);
    let survey = &run.survey;
    let done = join_all(batches.into_iter().map(|b| cx.batch(b, survey, flight))).await;
    let post_owed = cx.post(&owed).await;
    let mut untagged = Untagged::new();
    let mut vss_ok: Vec<(String, Vec<Todo>)> = Vec::new();
    let mut untrue = Vec::new();
    for b in done {
        // Batches lacking the same tags share CreateTags calls (`extend` on the map would drop one's snapshots).
        for (tags, ids) in b.untagged {
            untagged.entry(tags).or_default().extend(ids);
        }
        for i in b.instances {
            plain.extend(settle_instance(run, &cx, i, &mut vss_ok, &mut untrue));
        }
    }
    retag_untrue(run, flight, untrue).await;
    for (instance, o) in &post_owed {
        run.ssm_ran(Stage::Post, cx.document(Stage::Post), instance, &o.ran);
        if !o.ran.succeeded() {
            run.post_failed(instance, cx.cause(Stage::Post, &o.ran));
        }
    }
    if !vss_ok.is_empty() {
        plain.extend(found(run, flight, vss_ok, &mut untagged).await);
    }
    create::tag_all(run, untagged).await;
    plain
}

/// What the phase knows for every batch: the backend, the requests, the commands SSM already has of the slot.
struct Cx<'a> {
    ssm: &'a dyn Ssm,
    ec2: &'a dyn Ec2,
    spec: &'a super::RunSpec<'a>,
    requests: HashMap<&'static str, Request>,
    earlier: HashMap<&'static str, Vec<Sent>>,
}

impl<'a> Cx<'a> {
    async fn new(run: &Run<'a>, ssm: &'a dyn Ssm) -> Cx<'a> {
        let (spec, policy) = (run.spec, run.spec.policy);
        let slot = format_slot(spec.slot);
        let mut requests = HashMap::new();
        let scripts = policy.scripts.as_ref();
        let comment =
            |stage: Stage| format!("snapwarden {} {slot} {}", stage.as_str(), policy.name);
        if let Some(s) = scripts {
            let pre = script_request(&s.pre, comment(Stage::Pre), spec, Adopt::Running);
            requests.insert("pre", pre);
            if let Some(post) = &s.post {
                let post = script_request(post, comment(Stage::Post), spec, Adopt::Never);
                requests.insert("post", post);
            }
        }
        if let Some(v) = &policy.vss {
            let mut parameters = BTreeMap::new();
            let flag = |b: bool| vec![if b { "True" } else { "False" }.to_string()];
            parameters.insert("ExcludeBootVolume".into(), flag(v.exclude_boot_volume));
            parameters.insert("CopyOnly".into(), flag(v.copy_only));
            parameters.insert("NoWriters".into(), flag(v.no_writers));
            parameters.insert(
                "executionTimeout".into(),
                vec![v.timeout.as_secs().to_string()],
            );
            parameters.insert(
                "description".into(),
                vec![format!("snapwarden: policy {}, slot {slot}", policy.name)],
            );
            let request = Request {
                document: VSS_DOCUMENT.into(),
                parameters,
                wait: v.timeout + VSS_DELIVERY,
                comment: comment(Stage::Vss),
                retries: 0,
                polling: spec.ssm_polling,
                adopt: Adopt::RunningOrSucceeded,
            };
            requests.insert("vss", request);
        }
        let mut earlier = HashMap::new();
        for (stage, r) in &requests {
            // Commands of this slot were sent after its fire time.
            let listed = match ssm.list_commands(&r.document, spec.slot).await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(document = %r.document, error = %e, kind = e.kind(), "could not list the commands sent for this slot; an earlier process's command may run twice");
                    Vec::new()
                }
            };
            earlier.insert(*stage, listed);
        }
        Cx {
            ssm,
            ec2: run.ec2,
            spec,
            requests,
            earlier,
        }
    }

    fn request(&self, stage: Stage) -> Option<&Request> {
        self.requests.get(stage.as_str())
    }

    fn document(&self, stage: Stage) -> &str {
        self.request(stage).map_or("", |r| r.document.as_str())
    }

    fn cause(&self, stage: Stage, ran: &Ran) -> Cause {
        let (wait, document) = (
            self.request(stage).map_or(Duration::ZERO, |r| r.wait),
            self.document(stage),
        );
        match ran {
            Ran::Seen(i) if stage == Stage::Post && i.exit_code == Some(THAWED_EARLY) => Cause {
                code: "thawed-early",
                message: format!(
                    "{document} exited with code {THAWED_EARLY}: the instance was no longer held still when it ran \
                     (the freeze's auto-thaw fired first), so the snapshots taken under the pre script may not be \
                     consistent and are tagged snapwarden:app-consistent=false; raise AutoThawSeconds. Output: {}",
                    i.output
                ),
            },
            _ => ran.cause(document, wait),
        }
    }

    /// Runs `stage` on `instances` (nothing to run: no outcomes).
    async fn run(&self, stage: Stage, instances: &[String]) -> BTreeMap<String, Outcome> {
        match self.request(stage) {
            Some(r) => self.run_request(stage, r, instances).await,
            None => BTreeMap::new(),
        }
    }

    async fn run_request(
        &self,
        stage: Stage,
        r: &Request,
        instances: &[String],
    ) -> BTreeMap<String, Outcome> {
        if instances.is_empty() {
            return BTreeMap::new();
        }
        batch::run_on(self.ssm, r, instances, &self.earlier[stage.as_str()]).await
    }

    /// The VSS command for instances serving `serves`: snapwarden's own tags go in the document's `tags`
    /// parameter, so the snapshots are managed and slotted from the moment they exist. The parameter's format
    /// (`Key=k,Value=v;…`) cannot carry a comma in a value: the schedules are joined with `+` (read back like a
    /// comma). Every value here is a config name or the slot, neither of which holds `,`, `;` or `=`.
    async fn vss(&self, serves: &[String], instances: &[String]) -> BTreeMap<String, Outcome> {
        let Some(base) = self.request(Stage::Vss) else {
            return BTreeMap::new();
        };
        let policy = &self.spec.policy.name;
        let tags = [
            (ec2::TAG_MANAGED, "true".to_string()),
            (ec2::TAG_POLICY, policy.clone()),
            (ec2::TAG_SCHEDULE, serves.join("+")),
            (ec2::TAG_SLOT, format_slot(self.spec.slot)),
            (ec2::TAG_APP_CONSISTENT, "true".to_string()),
        ];
        let tags: Vec<String> = tags
            .iter()
            .map(|(k, v)| format!("Key={k},Value={v}"))
            .collect();
        let mut r = base.clone();
        r.parameters.insert("tags".into(), vec![tags.join(";")]);
        self.run_request(Stage::Vss, &r, instances).await
    }

    /// Instances an earlier process ran the pre script on for this slot and sent no post script to, which this
    /// run does not handle itself: their post is still owed.
    fn owed_posts(&self, handled: &BTreeMap<String, Vec<Todo>>) -> Vec<String> {
        let (Some(pre), Some(post)) = (self.request(Stage::Pre), self.request(Stage::Post)) else {
            return Vec::new();
        };
        // Per instance, the newest command of the stage for this slot.
        let newest = |stage: Stage, comment: &str| -> HashMap<&str, DateTime<Utc>> {
            let mut at: HashMap<&str, DateTime<Utc>> = HashMap::new();
            for c in self.earlier[stage.as_str()]
                .iter()
                .filter(|c| c.comment == comment)
            {
                for i in &c.instance_ids {
                    let t = at.entry(i.as_str()).or_insert(c.requested);
                    *t = (*t).max(c.requested);
                }
            }
            at
        };
        let posted = newest(Stage::Post, &post.comment);
        let mut owed: Vec<String> = newest(Stage::Pre, &pre.comment)
            .into_iter()
            .filter(|(i, at)| posted.get(i).is_none_or(|p| p < at) && !handled.contains_key(*i))
            .map(|(i, _)| i.to_string())
            .collect();
        owed.sort();
        owed
    }

    async fn post(&self, instances: &[String]) -> BTreeMap<String, Outcome> {
        if !instances.is_empty() {
            tracing::warn!(
                instances = instances.len(),
                "sending the post script an earlier run owed (it ran the pre script and stopped)"
            );
        }
        self.run(Stage::Post, instances).await
    }

    /// One batch: pre, the snapshot, post.
    async fn batch(
        &self,
        items: Vec<(String, Vec<Todo>)>,
        survey: &super::Survey,
        flight: &Flight,
    ) -> Batch {
        let ids: Vec<String> = items.iter().map(|(i, _)| i.clone()).collect();
        let pre = self.run(Stage::Pre, &ids).await;
        let ready: Vec<String> = ids
            .iter()
            .filter(|i| {
                self.request(Stage::Pre).is_none() || pre.get(*i).is_some_and(|o| o.ran.succeeded())
            })
            .cloned()
            .collect();
        let mut vss = BTreeMap::new();
        let mut made: HashMap<String, Vec<Created>> = HashMap::new();
        let mut untagged = Untagged::new();
        if self.request(Stage::Vss).is_some() {
            let serves = items
                .first()
                .and_then(|(_, t)| t.first())
                .map(|(_, s)| s.clone());
            vss = self.vss(&serves.unwrap_or_default(), &ready).await;
        } else if !ready.is_empty() {
            let todo: Vec<Todo> = items
                .iter()
                .filter(|(i, _)| ready.contains(i))
                .flat_map(|(_, t)| t.iter().cloned().map(|t| tagged(t, true)))
                .collect();
            let owner: HashMap<String, String> = items
                .iter()
                .flat_map(|(i, t)| t.iter().map(|(r, _)| (r.volume_id.clone(), i.clone())))
                .collect();
            let created = |s: &Snapshot| flight.lock().created(s);
            let (results, tags) =
                create::make(self.ec2, self.spec, survey, todo, None, &created).await;
            untagged = tags;
            for c in results {
                let i = owner.get(&c.0.volume_id).cloned().unwrap_or_default();
                made.entry(i).or_default().push(c);
            }
        }
        let ran_pre: Vec<String> = ids
            .iter()
            .filter(|i| pre.get(*i).is_some_and(|o| o.ran.may_have_run()))
            .cloned()
            .collect();
        let mut post = self.run(Stage::Post, &ran_pre).await;
        let mut pre = pre;
        let instances = items
            .into_iter()
            .map(|(id, todo)| Instance {
                pre: pre.remove(&id),
                vss: vss.remove(&id),
                post: post.remove(&id),
                made: made.remove(&id),
                id,
                todo,
            })
            .collect();
        Batch {
            instances,
            untagged,
        }
    }
}

fn script_request(s: &Script, comment: String, spec: &super::RunSpec<'_>, adopt: Adopt) -> Request {
    Request {
        document: s.document.clone(),
        parameters: s.parameters.clone(),
        wait: s.timeout,
        comment,
        retries: s.retries,
        polling: spec.ssm_polling,
        adopt,
    }
}

/// What one batch did.
struct Batch {
    instances: Vec<Instance>,
    untagged: Untagged,
}

/// What the phase did for one instance.
struct Instance {
    id: String,
    todo: Vec<Todo>,
    pre: Option<Outcome>,
    vss: Option<Outcome>,
    post: Option<Outcome>,
    /// The creates made while the pre script held the instance (scripts without VSS).
    made: Option<Vec<Created>>,
}

/// Records what happened to one instance and returns what falls back to the create phase; an instance whose VSS
/// command succeeded goes to `vss_ok`, whose snapshots are looked for next.
fn settle_instance(
    run: &mut Run<'_>,
    cx: &Cx<'_>,
    i: Instance,
    vss_ok: &mut Vec<(String, Vec<Todo>)>,
    untrue: &mut Vec<String>,
) -> Vec<Todo> {
    let policy = run.spec.policy;
    for (stage, o) in [
        (Stage::Pre, &i.pre),
        (Stage::Vss, &i.vss),
        (Stage::Post, &i.post),
    ] {
        if let Some(o) = o {
            run.ssm_ran(stage, cx.document(stage), &i.id, &o.ran);
        }
    }
    let thawed_early = i
        .post
        .as_ref()
        .is_some_and(|o| matches!(&o.ran, Ran::Seen(inv) if inv.exit_code == Some(THAWED_EARLY)));
    if let Some(post) = &i.post {
        if !post.ran.succeeded() {
            run.post_failed(&i.id, cx.cause(Stage::Post, &post.ran));
        }
        if let (Some(pre), true) = (&i.pre, post.ran.succeeded()) {
            if pre.ran.succeeded() {
                run.froze(&i.id, post.at.saturating_duration_since(pre.at));
            }
        }
    }
    let failed = match (&i.pre, &i.vss) {
        (Some(pre), _) if !pre.ran.succeeded() => Some((Stage::Pre, pre.ran.clone())),
        (_, Some(vss)) if !vss.ran.succeeded() => Some((Stage::Vss, vss.ran.clone())),
        // A policy with VSS whose pre failed has no VSS outcome: handled above.
        (_, None) if policy.vss.is_some() => Some((Stage::Vss, Ran::Unseen)),
        _ => None,
    };
    if let Some((stage, ran)) = failed {
        let how = on_failure(policy, stage);
        let cause = cx.cause(stage, &ran);
        return fail_over(run, &i.id, i.todo, stage, how, cause);
    }
    if let Some(made) = i.made {
        for (r, _, result) in &made {
            run.app_consistent
                .insert(r.volume_id.clone(), !thawed_early);
            if let (true, Ok(s)) = (thawed_early, result) {
                untrue.push(s.id.to_string());
            }
        }
        create::record(run, made);
        return Vec::new();
    }
    vss_ok.push((i.id, i.todo));
    Vec::new()
}

fn on_failure(policy: &Policy, stage: Stage) -> OnFailure {
    match stage {
        Stage::Vss => policy.vss.as_ref().map(|v| v.on_failure),
        _ => policy.scripts.as_ref().map(|s| s.on_failure),
    }
    .unwrap_or_default()
}

/// Tags `snapwarden:app-consistent = false` on snapshots taken under a freeze that had ended by the time the post
/// script ran ([`THAWED_EARLY`]): the tag must not claim what may not hold. A failed CreateTags is a `tag` problem;
/// the post's own problem already says the snapshots may not be consistent. This run's retention judges them as
/// tagged now: counted by an `app-consistent-only` rule, one would push out a consistent snapshot.
async fn retag_untrue(run: &mut Run<'_>, flight: &Flight, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let untrue: HashSet<&str> = ids.iter().map(String::as_str).collect();
    for s in flight.lock().created.iter_mut() {
        if untrue.contains(&*s.id) {
            s.app_consistent = false;
        }
    }
    let tags = Tags::from([(ec2::TAG_APP_CONSISTENT.to_string(), "false".to_string())]);
    for chunk in ids.chunks(create::TAG_BATCH) {
        if let Err(e) = run.ec2.create_tags(chunk, &tags).await {
            run.tag_failed(chunk.to_vec(), &e);
        }
    }
}

/// The stage a policy's instances fail at when SSM cannot be used at all.
fn stage_failed(policy: &Policy) -> (Stage, OnFailure) {
    let stage = if policy.scripts.is_some() {
        Stage::Pre
    } else {
        Stage::Vss
    };
    (stage, on_failure(policy, stage))
}

/// An instance whose pre script or VSS command failed: reported, and its volumes fall back or fail.
fn fail_over(
    run: &mut Run<'_>,
    instance: &str,
    todo: Vec<Todo>,
    stage: Stage,
    how: OnFailure,
    cause: Cause,
) -> Vec<Todo> {
    run.app_failed(instance, &todo, stage, how, cause);
    match how {
        OnFailure::CrashConsistent => todo.into_iter().map(|t| tagged(t, false)).collect(),
        OnFailure::Skip => Vec::new(),
    }
}

/// The create request with `snapwarden:app-consistent` set.
fn tagged((mut r, serves): Todo, consistent: bool) -> Todo {
    r.tags
        .insert(ec2::TAG_APP_CONSISTENT.into(), consistent.to_string());
    (r, serves)
}

/// `todo` by the instance whose volume each item is; items of volumes with no instance (a volume detached since
/// the survey) are returned apart, tagged not consistent.
fn by_instance(run: &Run<'_>, todo: Vec<Todo>) -> (BTreeMap<String, Vec<Todo>>, Vec<Todo>) {
    let owner: HashMap<&str, &TargetVolume> = run
        .survey
        .targets
        .iter()
        .map(|t| (t.volume.id.as_str(), t))
        .collect();
    let mut instances: BTreeMap<String, Vec<Todo>> = BTreeMap::new();
    let mut plain = Vec::new();
    for item in todo {
        match owner
            .get(item.0.volume_id.as_str())
            .and_then(|t| t.instance.as_ref())
        {
            Some(i) => instances.entry(i.id.clone()).or_default().push(item),
            None => plain.push(tagged(item, false)),
        }
    }
    (instances, plain)
}

/// Batches of at most [`MAX_INSTANCES`] instances serving the same schedules (one VSS command carries one tag
/// set, the schedules included).
fn chunks(instances: BTreeMap<String, Vec<Todo>>) -> Vec<Vec<(String, Vec<Todo>)>> {
    let mut by_serves: BTreeMap<Vec<String>, Vec<(String, Vec<Todo>)>> = BTreeMap::new();
    for (instance, todo) in instances {
        let serves = todo.first().map(|(_, s)| s.clone()).unwrap_or_default();
        by_serves.entry(serves).or_default().push((instance, todo));
    }
    let mut out: Vec<Vec<(String, Vec<Todo>)>> = Vec::new();
    for group in by_serves.into_values() {
        let mut group = group.into_iter().peekable();
        while group.peek().is_some() {
            out.push(group.by_ref().take(MAX_INSTANCES).collect());
        }
    }
    out
}

/// The snapshots the VSS commands made, found by the slot's tags with one filtered describe (a couple more when
/// some are not listed yet): each joins the run like a snapshot it created, and gets the per-volume tags the
/// document's one tag set could not carry. A volume of an instance whose command succeeded and that has no
/// snapshot falls back like a failed command (or fails, with `skip`).
async fn found(
    run: &mut Run<'_>,
    flight: &Flight,
    vss_ok: Vec<(String, Vec<Todo>)>,
    untagged: &mut Untagged,
) -> Vec<Todo> {
    let (spec, policy) = (run.spec, run.spec.policy);
    let slot = format_slot(spec.slot);
    let wanted: HashSet<String> = vss_ok
        .iter()
        .flat_map(|(_, t)| t.iter().map(|(r, _)| r.volume_id.clone()))
        .collect();
    let filters = [
        Filter::new(format!("tag:{}", ec2::TAG_MANAGED), vec!["true".into()]),
        Filter::new(
            format!("tag:{}", ec2::TAG_POLICY),
            vec![policy.name.clone()],
        ),
        Filter::new(format!("tag:{}", ec2::TAG_SLOT), vec![slot.clone()]),
    ];
    let mut by_volume: HashMap<String, Snapshot> = HashMap::new();
    for attempt in 0..FIND_TRIES {
        if attempt > 0 {
            tokio::time::sleep(spec.ssm_polling.first).await;
        }
        match ec2::all_snapshots(run.ec2, &filters).await {
            Ok(all) => {
                for s in all {
                    if &*s.owner_id == spec.account_id || s.owner_id.is_empty() {
                        by_volume.entry(s.volume_id.to_string()).or_insert(s);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "describing the VSS snapshots failed; trying again")
            }
        }
        if wanted.iter().all(|v| by_volume.contains_key(v)) {
            break;
        }
    }
    let already: HashSet<std::sync::Arc<str>> = run
        .survey
        .snapshots
        .iter()
        .filter(|s| s.slot == spec.slot)
        .map(|s| std::sync::Arc::clone(&s.id))
        .collect();
    let mut joined: Vec<(String, String, Snapshot, Vec<String>, Tags)> = Vec::new();
    let mut fall = Vec::new();
    for (instance, todo) in vss_ok {
        let (have, missing): (Vec<Todo>, Vec<Todo>) = todo
            .into_iter()
            .partition(|(r, _)| by_volume.contains_key(&r.volume_id));
        for (r, serves) in have {
            if let Some(s) = by_volume.remove(&r.volume_id) {
                joined.push((instance.clone(), r.volume_id.clone(), s, serves, r.tags));
            }
        }
        if !missing.is_empty() {
            let volumes: Vec<&str> = missing.iter().map(|(r, _)| r.volume_id.as_str()).collect();
            let cause = Cause {
                code: "vss-no-snapshot",
                message: format!(
                    "{VSS_DOCUMENT} reported success but no snapshot of {} carries this slot's tags (detached \
                     meanwhile, or the document was told to exclude it)",
                    volumes.join(", ")
                ),
            };
            let how = on_failure(policy, Stage::Vss);
            fall.extend(fail_over(run, &instance, missing, Stage::Vss, how, cause));
        }
    }
    // Snapshots of the slot nobody asked for (a volume attached since the survey, a second VSS snapshot of a
    // volume done before) join the run too, so retention sees them; ones the survey already had are not new.
    let extra: Vec<Snapshot> = by_volume
        .into_values()
        .filter(|s| !already.contains(&*s.id))
        .collect();
    drop(already);
    let mut adds: BTreeMap<String, Vec<(String, Tags)>> = BTreeMap::new();
    for (instance, volume, s, serves, want) in joined {
        flight.lock().created(&s);
        let mut want = want;
        want.insert(ec2::TAG_APP_CONSISTENT.into(), "true".into());
        let add: Tags = want
            .into_iter()
            .filter(|(k, _)| !s.tags.contains_key(k))
            .collect();
        adds.entry(instance)
            .or_default()
            .push((s.id.to_string(), add));
        run.app_consistent.insert(volume.clone(), true);
        run.created(&volume, &s.id, &serves);
    }
    untagged_by_instance(adds, untagged);
    for s in extra {
        flight.lock().created(&s);
    }
    fall
}

/// Adds the tags the VSS snapshots lack (per instance: snapshot id and tags) to `untagged` in few CreateTags
/// calls. The document gives a whole command's snapshots one tag set, so each lacks its instance's tags (id, Name,
/// user tags) and its volume's (device): batched by full tag set, that is one call per snapshot, which at the tags
/// bucket's 5 calls a second was most of a 1,000-instance fire (docs/PERFORMANCE.md, "VSS fire"). What all of an
/// instance's snapshots lack alike goes in one call for the instance; the rest (the device) is batched with every
/// other snapshot lacking the same.
fn untagged_by_instance(adds: BTreeMap<String, Vec<(String, Tags)>>, untagged: &mut Untagged) {
    for snaps in adds.into_values() {
        let Some((_, first)) = snaps.first() else {
            continue;
        };
        let shared: Tags = first
            .iter()
            .filter(|(k, v)| snaps.iter().all(|(_, t)| t.get(*k) == Some(*v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut ids = Vec::with_capacity(snaps.len());
        for (id, tags) in snaps {
            let rest: Tags = tags
                .into_iter()
                .filter(|(k, _)| !shared.contains_key(k))
                .collect();
            if !rest.is_empty() {
                untagged.entry(rest).or_default().push(id.clone());
            }
            ids.push(id);
        }
        if !shared.is_empty() {
            untagged.entry(shared).or_default().extend(ids);
        }
    }
}

#[cfg(test)]
mod tests;
