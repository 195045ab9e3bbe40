//! Incremental send/receive between two btrfs file systems standing in for
//! two hosts, each with its own manager and state directory: the first
//! transfer is a full stream, the second an incremental one whose size is
//! that of the change (not of the volume), and the receiver ends up with the
//! sender's data, byte for byte, under the sender's snapshot identities.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{BtrfsFs, noise, tree};
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::state::{DETAIL_GUID, Meta, VolumeKind};

const MIB: usize = 1 << 20;

async fn host(state: &Path, fs: &BtrfsFs) -> Manager {
    let m = Manager::open(state, ManagerConfig::default())
        .await
        .unwrap();
    let root = common::config::root_config(&fs.path().join("volumes"));
    m.add_provider("local", "btrfs", root).await.unwrap();
    m
}

async fn transfer(
    from: &Manager,
    snapshot: &str,
    to: &Manager,
    target: &str,
) -> (usize, bool, String) {
    let haves = to.list_haves(target).unwrap();
    let mut stream = Vec::new();
    let stats = from
        .send_snapshot(snapshot, &haves, &mut stream)
        .await
        .unwrap();
    let received = to
        .receive_snapshot(target, stream.as_slice())
        .await
        .unwrap();
    assert_eq!(received.kind, VolumeKind::Snapshot);
    (stream.len(), stats.incremental, received.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_transfer_between_hosts_is_incremental_and_carries_the_data() {
    let test = "second_transfer_between_hosts_is_incremental_and_carries_the_data";
    let Some(fs_a) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let Some(fs_b) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host(state_a.path(), &fs_a).await;
    let b = host(state_b.path(), &fs_b).await;

    let src = a
        .create_volume("local", Some("app"), Meta::new())
        .await
        .unwrap();
    let big = Path::new(&src.location).join("big");
    std::fs::write(&big, noise(10, 16 * MIB)).unwrap();
    std::fs::write(Path::new(&src.location).join("config"), b"v1").unwrap();
    let s1 = a.create_snapshot("app", Meta::new()).await.unwrap();
    let replica = b
        .create_volume("local", Some("app-replica"), Meta::new())
        .await
        .unwrap();

    let (full_bytes, incremental, r1) = transfer(&a, &s1.id, &b, "app-replica").await;
    assert!(!incremental, "first transfer: nothing in common");
    assert!(
        full_bytes >= 16 * MIB,
        "a full stream carries the volume: {full_bytes}"
    );
    let r1 = b.volume(&r1).unwrap();
    assert_eq!(r1.details[DETAIL_GUID], s1.details[DETAIL_GUID]);
    assert_eq!(tree(Path::new(&r1.location)), tree(Path::new(&s1.location)));

    // Change 1 MiB in the middle of the big file, and the small one.
    let mut f = OpenOptions::new().write(true).open(&big).unwrap();
    f.seek(SeekFrom::Start(8 * MIB as u64)).unwrap();
    f.write_all(&noise(11, MIB)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::write(Path::new(&src.location).join("config"), b"v2").unwrap();
    let s2 = a.create_snapshot("app", Meta::new()).await.unwrap();

    let (inc_bytes, incremental, r2) = transfer(&a, &s2.id, &b, "app-replica").await;
    assert!(incremental, "the replica has s1: incremental");
    assert!(
        (MIB..2 * MIB).contains(&inc_bytes),
        "the incremental stream is the size of the change: {inc_bytes} bytes"
    );
    println!(
        "btrfs two hosts: full stream {full_bytes} bytes (16 MiB volume), incremental {inc_bytes} bytes (1 MiB change)"
    );
    let r2 = b.volume(&r2).unwrap();
    assert_eq!(r2.details[DETAIL_GUID], s2.details[DETAIL_GUID]);
    let expected = tree(Path::new(&s2.location));
    assert_eq!(
        tree(Path::new(&r2.location)),
        expected,
        "received snapshot == sent"
    );
    assert_eq!(
        tree(Path::new(&replica.location)),
        expected,
        "the replica volume's content is the sender's"
    );
    assert_eq!(
        tree(Path::new(&r1.location)),
        tree(Path::new(&s1.location)),
        "the older received snapshot is untouched"
    );
    assert_eq!(
        b.list_haves("app-replica").unwrap(),
        vec![
            s1.details[DETAIL_GUID].clone(),
            s2.details[DETAIL_GUID].clone()
        ]
    );

    // The replica can be forked, and sent on from host B to a third volume
    // incrementally, keeping the identities (a chain A -> B -> B').
    let fork = b
        .fork_volume(&r2.id, Some("app-fork"), Meta::new())
        .await
        .unwrap();
    assert_eq!(tree(Path::new(&fork.location)), expected);
    b.create_volume("local", Some("chain"), Meta::new())
        .await
        .unwrap();
    let (_, inc, c1) = transfer(&b, &r1.id, &b, "chain").await;
    assert!(!inc);
    let (chain_bytes, inc, c2) = transfer(&b, &r2.id, &b, "chain").await;
    assert!(inc, "chained transfer is incremental too");
    assert!(chain_bytes < 2 * MIB, "{chain_bytes}");
    assert_eq!(
        b.volume(&c1).unwrap().details[DETAIL_GUID],
        s1.details[DETAIL_GUID]
    );
    assert_eq!(tree(Path::new(&b.volume(&c2).unwrap().location)), expected);
    a.close().await;
    b.close().await;
}
