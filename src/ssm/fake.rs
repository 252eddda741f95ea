//! An in-memory SSM Run Command: records every command and answers ListCommandInvocations per instance. Without
//! a script an instance's invocation is `Success` with exit code 0 at once (what moto answers too). The knobs only
//! tests turn — a script of answers per instance, injected errors, what was sent and call counts — are compiled
//! with the `testing` feature alone, like [`crate::ec2::fake::FakeEc2`]'s. It runs no document and creates no
//! snapshot: a test that needs the agent's side effects puts them in place itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Command, Invocation, Sent as Listed, Ssm, Status};
use crate::ec2::fake::FakeEc2;
use crate::ec2::op::Op;
use crate::ec2::Ec2;
use crate::error::{Error, Result};

/// What one ListCommandInvocations shows of one instance's invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Not listed yet (SSM is eventually consistent right after SendCommand).
    Missing,
    /// Listed with this status, output and exit code.
    Answer {
        status: Status,
        output: String,
        exit_code: Option<i32>,
    },
}

impl Step {
    /// Finished with `exit_code`: `Success` for 0, else `Failed`.
    pub fn exited(exit_code: i32, output: &str) -> Step {
        Step::Answer {
            status: if exit_code == 0 {
                Status::Success
            } else {
                Status::Failed
            },
            output: output.to_string(),
            exit_code: Some(exit_code),
        }
    }

    /// `status` without output or exit code (pending, in progress, undeliverable, …).
    pub fn status(status: Status) -> Step {
        Step::Answer {
            status,
            output: String::new(),
            exit_code: None,
        }
    }
}

struct Sent {
    command: Command,
    requested: chrono::DateTime<chrono::Utc>,
    /// Per instance, the answers still to come: each ListCommandInvocations takes the first, the last one stays.
    steps: BTreeMap<String, VecDeque<Step>>,
}

#[derive(Default)]
struct State {
    /// By command id, in sending order (the ids count up).
    commands: BTreeMap<String, Sent>,
    next_id: u64,
    /// Instance id -> the answers its invocation of the next command gives.
    scripts: HashMap<String, Vec<Step>>,
    /// Operation -> (error code, calls it still fails).
    faults: HashMap<Op, (String, u32)>,
    calls: BTreeMap<Op, u64>,
}

pub struct FakeSsm {
    region: String,
    state: Mutex<State>,
}

impl FakeSsm {
    pub fn new(region: impl Into<String>) -> Self {
        FakeSsm {
            region: region.into(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake SSM state poisoned")
    }

    /// Counts the call and answers an injected error if one is due.
    fn enter(&self, st: &mut State, op: Op) -> Result<()> {
        *st.calls.entry(op).or_default() += 1;
        if let Some((code, left)) = st.faults.get_mut(&op) {
            let code = code.clone();
            *left -= 1;
            if *left == 0 {
                st.faults.remove(&op);
            }
            return Err(Error::api(op, &self.region, code, "injected by FakeSsm"));
        }
        Ok(())
    }

    /// The answers `instance_id`'s invocation of the next command sent to it gives, one per
    /// ListCommandInvocations, the last one for good (an empty script: the default, `Success` at once).
    #[cfg(any(test, feature = "testing"))]
    pub fn script(&self, instance_id: &str, steps: Vec<Step>) {
        self.state().scripts.insert(instance_id.to_string(), steps);
    }

    /// The next `times` calls of `operation` fail with AWS error `code`.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_next(&self, operation: Op, code: &str, times: u32) {
        if times > 0 {
            self.state()
                .faults
                .insert(operation, (code.to_string(), times));
        }
    }

    /// Every command sent, with its id, in sending order.
    #[cfg(any(test, feature = "testing"))]
    pub fn sent(&self) -> Vec<(String, Command)> {
        self.state()
            .commands
            .iter()
            .map(|(id, s)| (id.clone(), s.command.clone()))
            .collect()
    }

    /// Calls of `operation` so far, failed ones included.
    #[cfg(any(test, feature = "testing"))]
    pub fn calls(&self, operation: Op) -> u64 {
        self.state().calls.get(&operation).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Ssm for FakeSsm {
    fn region(&self) -> &str {
        &self.region
    }

    async fn send_command(&self, command: &Command) -> Result<String> {
        let mut st = self.state();
        self.enter(&mut st, Op::SendCommand)?;
        command.check()?;
        st.next_id += 1;
        // Zero-padded, so the map's order is the sending order.
        let id = format!("{:08x}-0000-4000-8000-000000000000", st.next_id);
        let steps = command
            .instance_ids
            .iter()
            .map(|i| {
                let script = st.scripts.remove(i).unwrap_or_default();
                (i.clone(), script.into())
            })
            .collect();
        st.commands.insert(
            id.clone(),
            Sent {
                command: command.clone(),
                requested: chrono::Utc::now(),
                steps,
            },
        );
        Ok(id)
    }

    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        let mut st = self.state();
        self.enter(&mut st, Op::ListCommandInvocations)?;
        let Some(sent) = st.commands.get_mut(command_id) else {
            return Err(Error::api(
                Op::ListCommandInvocations,
                &self.region,
                "InvalidCommandId",
                format!("no command {command_id}"),
            ));
        };
        let mut out = Vec::new();
        for (instance, steps) in &mut sent.steps {
            let step = if steps.len() > 1 {
                steps.pop_front()
            } else {
                steps.front().cloned()
            };
            match step.unwrap_or_else(|| Step::exited(0, "")) {
                Step::Missing => {}
                Step::Answer {
                    status,
                    output,
                    exit_code,
                } => out.push(Invocation {
                    instance_id: instance.clone(),
                    status,
                    output: super::excerpt(&output),
                    exit_code,
                }),
            }
        }
        Ok(out)
    }

    /// Every command of `document`: the fake keeps no send times, and a test's commands are all recent.
    async fn list_commands(
        &self,
        document: &str,
        _after: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Listed>> {
        let mut st = self.state();
        self.enter(&mut st, Op::ListCommands)?;
        Ok(st
            .commands
            .iter()
            .filter(|(_, s)| s.command.document == document)
            .map(|(id, s)| Listed {
                id: id.clone(),
                document: s.command.document.clone(),
                instance_ids: s.command.instance_ids.clone(),
                comment: s.command.comment.chars().take(100).collect(),
                requested: s.requested,
            })
            .collect())
    }
}

/// [`FakeSsm`] with the instance's side of `AWSEC2-CreateVssSnapshot` on a [`FakeEc2`]: when an instance's
/// invocation of a VSS command is first listed as `Success`, its attached volumes (the boot volume left out under
/// `ExcludeBootVolume = True`) get pending snapshots carrying the command's `tags` parameter and the document's
/// own `Device` and `AppConsistent`, made by the instance's role (not calls of the backend). Every other document
/// succeeds and does nothing. What `simulate` runs against, and what component tests script failures on.
pub struct FakeAgent {
    pub ssm: FakeSsm,
    ec2: Arc<FakeEc2>,
    /// VSS commands by id, with the instances whose snapshots are still to make.
    vss: Mutex<HashMap<String, (Command, Vec<String>)>>,
}

impl FakeAgent {
    pub fn new(ec2: Arc<FakeEc2>) -> Self {
        FakeAgent {
            ssm: FakeSsm::new(ec2.region()),
            ec2,
            vss: Mutex::default(),
        }
    }

    /// What the document does on `instance`.
    async fn snapshot(&self, instance: &str, command: &Command) -> Result<()> {
        let mut tags: Vec<(String, String)> = Vec::new();
        let given = command.parameters.get("tags").and_then(|t| t.first());
        for pair in given.map_or("", String::as_str).split(';') {
            let kv = pair
                .split_once(',')
                .and_then(|(k, v)| Some((k.strip_prefix("Key=")?, v.strip_prefix("Value=")?)));
            if let Some((k, v)) = kv {
                tags.push((k.to_string(), v.to_string()));
            }
        }
        tags.push(("AppConsistent".into(), "true".into()));
        let exclude_boot = command
            .parameters
            .get("ExcludeBootVolume")
            .is_some_and(|v| v.iter().any(|v| v == "True"));
        let instances = self.ec2.describe_instances(&[]).await?;
        let root = instances
            .iter()
            .find(|i| i.id == instance)
            .and_then(|i| i.root_device.clone());
        for v in self.ec2.describe_volumes(&[]).await? {
            let Some((i, device)) = &v.attachment else {
                continue;
            };
            if i != instance || (exclude_boot && root.as_deref() == Some(device.as_str())) {
                continue;
            }
            let mut tags = tags.clone();
            tags.push(("Device".into(), device.clone()));
            let tags: Vec<(&str, &str)> =
                tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            self.ec2.made_elsewhere(&v.id, &tags);
        }
        Ok(())
    }
}

#[async_trait]
impl Ssm for FakeAgent {
    fn region(&self) -> &str {
        self.ssm.region()
    }

    async fn send_command(&self, command: &Command) -> Result<String> {
        let id = self.ssm.send_command(command).await?;
        if command.document == crate::worker::VSS_DOCUMENT {
            let todo = command.instance_ids.clone();
            let mut vss = self.vss.lock().expect("fake agent poisoned");
            vss.insert(id.clone(), (command.clone(), todo));
        }
        Ok(id)
    }

    async fn list_command_invocations(&self, command_id: &str) -> Result<Vec<Invocation>> {
        let listed = self.ssm.list_command_invocations(command_id).await?;
        let done: Vec<(Command, String)> = {
            let mut vss = self.vss.lock().expect("fake agent poisoned");
            match vss.get_mut(command_id) {
                Some((command, todo)) => listed
                    .iter()
                    .filter(|i| i.status == Status::Success)
                    .filter_map(|i| {
                        let at = todo.iter().position(|t| *t == i.instance_id)?;
                        Some((command.clone(), todo.remove(at)))
                    })
                    .collect(),
                None => Vec::new(),
            }
        };
        for (command, instance) in done {
            self.snapshot(&instance, &command).await?;
        }
        Ok(listed)
    }

    async fn list_commands(
        &self,
        document: &str,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Listed>> {
        self.ssm.list_commands(document, after).await
    }
}
