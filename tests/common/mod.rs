//! Test support shared by the integration tests: a real moto server on a free loopback port (one per test, killed
//! on drop), SDK clients pointed at it, and a config whose `aws.endpoint-url` names it. A test that needs moto and
//! cannot find it fails with the command that installs it; it never skips. Also what every test file would
//! otherwise write again: a slot from its text, metric values out of Prometheus text (`prom.rs`), and estates to
//! seed (instances and volumes in moto or `FakeEc2`, snapshots tagged as snapwarden tags its own). In front of moto,
//! a fault-injecting proxy (`fault_proxy.rs`) and a stand-in for the instances' SSM agents (`ssm_agent.rs`).
#![allow(dead_code)]

pub mod fault_proxy;
pub mod process;
pub mod prom;
pub mod ssm_agent;

// Not every test binary reads metrics.
#[allow(unused_imports)]
pub use prom::{metric, metric_sum};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use chrono::{DateTime, Utc};

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";

/// A time from its RFC 3339 text: the slot (or the clock) a test runs at.
pub fn slot(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .to_utc()
}

pub struct Moto {
    child: Child,
    pub port: u16,
    pub endpoint: String,
}

pub fn moto_binary() -> PathBuf {
    let bin = std::env::var_os("SNAPWARDEN_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"));
    assert!(
        bin.exists(),
        "moto_server not found at {}: run the tests with `bash tests/run.sh`, which installs the pinned moto[server] \
         into .venv, or point SNAPWARDEN_MOTO_SERVER at a moto_server binary",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Environment for anything talking to moto: fixed fake credentials, no instance-metadata probing.
pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

impl Moto {
    pub fn start() -> Moto {
        for (k, v) in aws_env() {
            // Same values from every test thread, so concurrent writes cannot disagree.
            std::env::set_var(k, v);
        }
        let port = free_port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if moto.get("/moto-api/").is_some() {
                return moto;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not answer on port {port} within 60 s");
    }

    /// A plain HTTP GET against moto; None when it does not answer.
    pub fn get(&self, path: &str) -> Option<String> {
        http_get(self.port, path).map(|(_, body)| body)
    }

    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config(&self.endpoint).await
    }

    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk_config().await)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SDK config for raw clients against `endpoint` (moto, or a proxy in front of it): [`REGION`], fixed test
/// credentials.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await
}

/// A config file for the real binary, written into `dir`: `[daemon]` listening on 127.0.0.1:`port` plus the lines
/// `daemon`, `[aws]` in [`REGION`] against `endpoint` plus the lines `aws`, then `rest` (policies, other sections).
pub fn write_config(
    dir: &Path,
    port: u16,
    daemon: &str,
    endpoint: &str,
    aws: &str,
    rest: &str,
) -> PathBuf {
    let path = dir.join("snapwarden.toml");
    let text = format!(
        "[daemon]\nlisten = \"127.0.0.1:{port}\"\n{daemon}\n\n[aws]\nregions = [\"{REGION}\"]\n\
         endpoint-url = \"{endpoint}\"\n{aws}\n\n{rest}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A `[[policy]]` of the instances tagged `Backup = tag`, with one schedule `schedule` on `cron` keeping `keep`
/// (the inside of the keep table, e.g. `last = 7`).
pub fn instance_policy(name: &str, tag: &str, schedule: &str, cron: &str, keep: &str) -> String {
    format!(
        r#"[[policy]]
name = "{name}"
[policy.target]
resource = "instance"
tags = {{ Backup = "{tag}" }}

[[policy.schedule]]
name = "{schedule}"
cron = "{cron}"
keep = {{ {keep} }}
"#
    )
}

/// Minimal HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// An EC2 describe filter for the raw SDK client.
/// An SDK tag list as a map.
pub fn tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> std::collections::BTreeMap<String, String> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub fn filter(name: &str, values: &[&str]) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

/// The snapshots tagged `snapwarden:policy = policy` in the region of `raw`, read from moto.
pub async fn policy_snapshots(
    raw: &aws_sdk_ec2::Client,
    policy: &str,
) -> Vec<aws_sdk_ec2::types::Snapshot> {
    raw.describe_snapshots()
        .owner_ids("self")
        .filters(filter("tag:snapwarden:policy", &[policy]))
        .send()
        .await
        .expect("DescribeSnapshots")
        .snapshots
        .unwrap_or_default()
}

/// A policy's snapshots in moto, read with the raw client: volume -> its slot tags, sorted, one per snapshot
/// (`-` for a snapshot without one).
pub async fn slots_by_volume(
    raw: &aws_sdk_ec2::Client,
    policy: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut by: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for s in policy_snapshots(raw, policy).await {
        let slot = s
            .tags()
            .iter()
            .find(|t| t.key() == Some("snapwarden:slot"))
            .and_then(|t| t.value())
            .unwrap_or("-")
            .to_string();
        by.entry(s.volume_id().unwrap_or_default().to_string())
            .or_default()
            .push(slot);
    }
    for v in by.values_mut() {
        v.sort();
    }
    by
}

/// The tags snapwarden writes on its snapshots of `policy` for `schedules` (comma-separated) at `slot` (the slot's
/// tag text): what every history a test seeds carries, in moto or in `FakeEc2`.
pub fn managed_tags<'a>(
    policy: &'a str,
    schedules: &'a str,
    slot: &'a str,
) -> [(&'a str, &'a str); 4] {
    use snapwarden::ec2::{TAG_MANAGED, TAG_POLICY, TAG_SCHEDULE, TAG_SLOT};
    [
        (TAG_MANAGED, "true"),
        (TAG_POLICY, policy),
        (TAG_SCHEDULE, schedules),
        (TAG_SLOT, slot),
    ]
}

/// Device names of the volumes of [`web_fleet`]'s instances, in order.
pub const DEVICES: [&str; 4] = ["/dev/xvda", "/dev/sdf", "/dev/sdg", "/dev/sdh"];

/// Instances named `web-<i>` and tagged `Backup = "true"` in `fake`, the i-th with `volumes[i]` gp3 volumes (1 to 4,
/// on [`DEVICES`]); returns (instance id, volume ids) per instance.
pub fn web_fleet(
    fake: &snapwarden::ec2::fake::FakeEc2,
    volumes: impl IntoIterator<Item = usize>,
) -> Vec<(String, Vec<String>)> {
    volumes
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let devs: Vec<(&str, &str)> = DEVICES[..k].iter().map(|d| (*d, "gp3")).collect();
            let name = format!("web-{i}");
            fake.add_instance(&[("Backup", "true"), ("Name", &name)], &devs)
        })
        .collect()
}

/// The tag specification that creates a `resource` with `tags`; none for no tags, which moto refuses.
fn tagged(resource: ResourceType, tags: &[(&str, &str)]) -> Option<Vec<TagSpecification>> {
    (!tags.is_empty()).then(|| {
        vec![TagSpecification::builder()
            .resource_type(resource)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                    .collect(),
            ))
            .build()]
    })
}

/// A standalone 8 GiB volume tagged `tags` in zone `a` of the region of `raw`; returns its id.
pub async fn moto_volume(raw: &aws_sdk_ec2::Client, tags: &[(&str, &str)]) -> String {
    let region = raw.config().region().expect("the client's region");
    raw.create_volume()
        .availability_zone(format!("{region}a"))
        .size(8)
        .set_tag_specifications(tagged(ResourceType::Volume, tags))
        .send()
        .await
        .expect("CreateVolume on moto")
        .volume_id()
        .unwrap()
        .to_string()
}

/// A snapshot of `volume` in moto with `tags` at creation (moto completes it at once); returns its id.
pub async fn moto_snapshot(
    raw: &aws_sdk_ec2::Client,
    volume: &str,
    tags: &[(&str, &str)],
) -> String {
    raw.create_snapshot()
        .volume_id(volume)
        .description("seeded by a test")
        .set_tag_specifications(tagged(ResourceType::Snapshot, tags))
        .send()
        .await
        .expect("CreateSnapshot on moto")
        .snapshot_id()
        .unwrap()
        .to_string()
}

/// Launches one instance tagged `tags` with one 8 GiB EBS volume per device; returns (instance id, volume ids).
/// moto makes no root volume when block device mappings are given: one volume per device, checked.
pub async fn launch_instance(
    raw: &aws_sdk_ec2::Client,
    tags: &[(&str, &str)],
    devices: &[&str],
) -> (String, Vec<String>) {
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceType};
    let mut req = raw
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .set_tag_specifications(tagged(ResourceType::Instance, tags));
    for d in devices {
        req = req.block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(*d)
                .ebs(EbsBlockDevice::builder().volume_size(8).build())
                .build(),
        );
    }
    let out = req.send().await.expect("RunInstances");
    let id = out.instances()[0].instance_id().unwrap().to_string();
    let vols = raw
        .describe_volumes()
        .filters(filter("attachment.instance-id", &[&id]))
        .send()
        .await
        .expect("DescribeVolumes");
    let volumes: Vec<String> = vols
        .volumes()
        .iter()
        .filter_map(|v| v.volume_id())
        .map(String::from)
        .collect();
    if !devices.is_empty() {
        assert_eq!(
            volumes.len(),
            devices.len(),
            "moto made one volume per mapping of {id}"
        );
    }
    (id, volumes)
}

/// A publisher that publishes nothing anywhere and keeps what the notifier sends it.
#[derive(Default)]
pub struct Recorder {
    pub sent: std::sync::Mutex<Vec<snapwarden::notify::Message>>,
}

#[async_trait::async_trait]
impl snapwarden::notify::Publisher for Recorder {
    async fn publish(
        &self,
        message: &snapwarden::notify::Message,
    ) -> snapwarden::error::Result<()> {
        self.sent.lock().unwrap().push(message.clone());
        Ok(())
    }
}
