//! `SdkEc2::copy_snapshot` against a real moto server with two regions: a snapshot made in region A is copied by
//! the client of region B (the same moto endpoint; the region in the SDK config decides where a copy lands, as
//! the endpoint does on AWS), and moto, read back with raw clients, has the copy in B with every requested tag and
//! not in A.
//!
//! What moto 5.2 does with CopySnapshot (moto/ec2/models/elastic_block_store.py, `copy_snapshot`, and
//! responses/elastic_block_store.py): it looks the source up in the backend of `SourceRegion` (an unknown id is
//! `InvalidSnapshot.NotFound`), creates the copy in the backend of the region the request was signed for,
//! `completed` at once, tags it with the request's TagSpecifications, and answers `SnapshotId` and `Tags`. It marks
//! the copy encrypted if the source is or a `KmsKeyId` is given, keeps that key id without checking it, ignores
//! `Encrypted`, and has no limit on concurrent copies (no `ResourceLimitExceeded`: that needs the fault proxy).
//! Unlike AWS, the copy keeps the source's `VolumeId` (AWS gives copies an arbitrary one, `vol-ffffffff`): against
//! moto a copy looks like a snapshot of the source volume, so code that keys anything on a copy's volume id can
//! pass here and fail on AWS. snapwarden's answer names `COPY_VOLUME_ID`, and the source volume travels in the
//! `snapwarden:source-volume` tag; the test pins moto's divergence so this note stays true.

mod common;

use aws_config::Region;
use common::{filter, moto_snapshot, Moto, REGION};
use snapwarden::ec2::sdk::SdkEc2;
use snapwarden::ec2::{CopySnapshot, Ec2, Tags, COPY_VOLUME_ID};
use snapwarden::retention::SnapState;

/// The destination: another region of the same moto server.
const DR_REGION: &str = "us-west-2";

/// [`DR_REGION`]'s config, and raw clients of the source region and of it, on one moto server.
async fn two_regions(
    moto: &Moto,
) -> (
    aws_config::SdkConfig,
    aws_sdk_ec2::Client,
    aws_sdk_ec2::Client,
) {
    let config_a = moto.sdk_config().await;
    let config_b = config_a.to_builder().region(Region::new(DR_REGION)).build();
    let (raw_a, raw_b) = (
        aws_sdk_ec2::Client::new(&config_a),
        aws_sdk_ec2::Client::new(&config_b),
    );
    (config_b, raw_a, raw_b)
}

/// The snapshots with `id` that `raw`'s region holds (none or one).
async fn snapshots_with_id(
    raw: &aws_sdk_ec2::Client,
    id: &str,
) -> Vec<aws_sdk_ec2::types::Snapshot> {
    raw.describe_snapshots()
        .owner_ids("self")
        .filters(filter("snapshot-id", &[id]))
        .send()
        .await
        .expect("DescribeSnapshots")
        .snapshots()
        .to_vec()
}

fn copy_tags(source: &str, volume: &str) -> Tags {
    [
        ("snapwarden:managed", "true"),
        ("snapwarden:policy", "db"),
        ("snapwarden:schedule", "daily"),
        ("snapwarden:slot", "2026-11-21T04:30:00Z"),
        ("snapwarden:source-snapshot", source),
        ("snapwarden:source-region", REGION),
        ("snapwarden:source-volume", volume),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn a_copy_sent_to_the_destination_lands_there_with_every_requested_tag_and_not_in_the_source_region(
) {
    let moto = Moto::start();
    let (config_b, raw_a, raw_b) = two_regions(&moto).await;
    let vol = common::moto_volume(&raw_a, &[("Name", "db")]).await;
    let source = moto_snapshot(
        &raw_a,
        &vol,
        &[("snapwarden:managed", "true"), ("team", "db")],
    )
    .await;

    let dr = SdkEc2::new(&config_b);
    assert_eq!(dr.region(), DR_REGION);
    let request = CopySnapshot {
        source_region: REGION.into(),
        source_snapshot_id: source.clone(),
        description: format!("snapwarden copy of {source} from {REGION}"),
        encrypted: false,
        kms_key_id: None,
        tags: copy_tags(&source, &vol),
    };
    let copy = dr.copy_snapshot(&request).await.expect("CopySnapshot");

    // The answer: a new snapshot, pending as a fresh copy is on AWS, never named by the source's volume.
    assert!(
        copy.id.starts_with("snap-") && *copy.id != *source,
        "{copy:?}"
    );
    assert_eq!(copy.state, SnapState::Pending);
    assert_eq!(&*copy.volume_id, COPY_VOLUME_ID);
    assert_eq!(*copy.tags, request.tags);

    // In B, with every tag asked for (and none of the source's own: `team` stays behind).
    let in_b = snapshots_with_id(&raw_b, &copy.id).await;
    assert_eq!(in_b.len(), 1, "the copy is in {DR_REGION}");
    assert_eq!(common::tag_map(in_b[0].tags()), request.tags);
    assert_eq!(in_b[0].description(), Some(request.description.as_str()));
    // Not in A, and the source did not move.
    assert!(
        snapshots_with_id(&raw_a, &copy.id).await.is_empty(),
        "no copy in {REGION}"
    );
    assert_eq!(snapshots_with_id(&raw_a, &source).await.len(), 1);
    assert!(snapshots_with_id(&raw_b, &source).await.is_empty());
    // moto's divergence from AWS (see the module docs): its copy keeps the source's volume id. The copy's source
    // volume is known from its tag, which is what snapwarden keys copies by.
    assert_eq!(in_b[0].volume_id(), Some(vol.as_str()));
    assert_eq!(copy.tags["snapwarden:source-volume"], vol);
}

#[tokio::test]
async fn a_reencrypting_copy_sends_its_kms_key_and_a_missing_source_is_named_by_aws_code() {
    let moto = Moto::start();
    let (config_b, raw_a, raw_b) = two_regions(&moto).await;
    let vol = common::moto_volume(&raw_a, &[("Name", "db")]).await;
    let source = moto_snapshot(&raw_a, &vol, &[]).await;
    let dr = SdkEc2::new(&config_b);
    let key = format!("arn:aws:kms:{DR_REGION}:123456789012:key/dr-copies");
    let request = CopySnapshot {
        source_region: REGION.into(),
        source_snapshot_id: source.clone(),
        description: "encrypted copy".into(),
        encrypted: true,
        kms_key_id: Some(key.clone()),
        tags: copy_tags(&source, &vol),
    };
    let copy = dr.copy_snapshot(&request).await.expect("CopySnapshot");
    let in_b = snapshots_with_id(&raw_b, &copy.id).await;
    assert_eq!(in_b.len(), 1);
    // moto checks neither key nor flag, but keeps the key it was sent: the request carried it.
    assert_eq!(in_b[0].kms_key_id(), Some(key.as_str()));
    assert_eq!(in_b[0].encrypted(), Some(true));

    let missing = CopySnapshot {
        source_snapshot_id: "snap-0123456789abcdef0".into(),
        ..request
    };
    let err = dr.copy_snapshot(&missing).await.unwrap_err();
    assert_eq!(err.code(), "InvalidSnapshot.NotFound", "{err}");
    assert_eq!(err.kind(), "not-found");
    assert!(
        err.to_string()
            .starts_with(&format!("CopySnapshot in {DR_REGION}:")),
        "{err}"
    );
}
