//! The btrfs provider on a real block device that starts failing writes.
//!
//! Story: the btrfs provider's batched sync became a commit of the running
//! btrfs transaction (`BTRFS_IOC_START_SYNC` + `BTRFS_IOC_WAIT_SYNC`)
//! instead of `syncfs`, so that a tenant's buffered writes no longer stall
//! every round. Its failure path had only been argued: a commit that cannot
//! write aborts the transaction, the ioctl reports it, and btrfs turns the
//! file system read-only. Here the provider's file system is a btrfs on a
//! device-mapper device over a loop device (the manager's journal stays on
//! another file system); volumes are created, filled and snapshotted while
//! the device is healthy, then its table is switched to `dm-flakey` with
//! `error_writes` and four creates run concurrently. Properties:
//!
//! - none of them is acknowledged: each fails with "provider unavailable"
//!   naming the failed commit and the I/O error (`EIO`, or `EROFS` once
//!   btrfs has aborted the transaction), and every later operation on the
//!   provider (create, destroy, snapshot, fork) is refused the same way
//!   without journaling an intent;
//! - reopening while the device still fails resolves nothing: the commit
//!   the provider runs before its inventory (`Provider::sync_at_open`)
//!   fails, so it stays unavailable and its pending operations pending;
//! - once the device is restored and the file system mounted again (btrfs
//!   stays read-only after an aborted transaction until then), a reopen
//!   reconciles: nothing pending, every acknowledged volume and snapshot
//!   present with its content, state and the provider's inventory agree
//!   (no orphan, foreign or half-made item), and new operations work,
//!   including on the ids of the failed creates.
//!
//! Needs root, a kernel with device-mapper, dm-flakey and btrfs,
//! `dmsetup`, `losetup` and `mkfs.btrfs`: the QEMU guest of
//! `scripts/zfs-test` (which sets `VOLMGR_REQUIRE_DM=1`). Elsewhere the test
//! prints a SKIP line and passes, unless `VOLMGR_REQUIRE_DM=1` makes it fail
//! loudly (`tests/device_support/`).

mod device_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::btrfs::{BtrfsProvider, CONFIG_ROOT};
use volmgr::provider::{Provider, ProviderConfig};
use volmgr::state::Meta;

use device_support::{Device, Tree, fill, reconciled_whole, state_kinds, whole_inventory};

const PROVIDER: &str = "b";
const KEPT: [&str; 3] = ["keep-0", "keep-1", "keep-2"];
const SNAP: &str = "snap-0";

fn failed_creates() -> Vec<String> {
    (0..4).map(|i| format!("failed-{i}")).collect()
}

/// Whether `e` is "provider `b` unavailable" because its transaction
/// commit failed with an I/O error, or with `EROFS` (the transaction
/// already aborted).
fn unavailable_for_commit(e: &ManagerError) -> bool {
    matches!(e, ManagerError::ProviderUnavailable { provider, reason }
        if provider == PROVIDER
            && reason.contains("committing the btrfs transaction")
            && (reason.contains("(os error 5)") || reason.contains("(os error 30)")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_on_a_failing_btrfs_are_never_acknowledged_and_a_reopen_reconciles() {
    let test = "creates_on_a_failing_btrfs_are_never_acknowledged_and_a_reopen_reconciles";
    let Some(mut device) = Device::btrfs(test) else {
        return;
    };
    let state_tmp = tempfile::tempdir().expect("state tempdir");
    let state_dir = state_tmp.path().join("state");
    let root = device.mount_point().join("root");
    let open = || Manager::open(&state_dir, ManagerConfig::default());

    // Healthy: volumes acknowledged, filled durably; one snapshot.
    let m = open().await.expect("open");
    m.add_provider(
        PROVIDER,
        "btrfs",
        ProviderConfig::from([(CONFIG_ROOT.to_owned(), root.display().to_string())]),
    )
    .await
    .expect("add the btrfs provider");
    let mut content: BTreeMap<String, Tree> = BTreeMap::new();
    for id in KEPT {
        let v = m
            .create_volume(PROVIDER, Some(id), Meta::new())
            .await
            .expect("create while healthy");
        content.insert(id.to_owned(), fill(Path::new(&v.location), id));
    }
    m.create_snapshot_as("keep-0", Some(SNAP), Meta::new())
        .await
        .expect("snapshot while healthy");
    content.insert(SNAP.to_owned(), content["keep-0"].clone());
    let acknowledged: BTreeSet<String> = m.state().volumes.keys().cloned().collect();

    // The device fails every write from here on.
    device.fail_writes();
    let tasks: Vec<_> = failed_creates()
        .into_iter()
        .map(|id| {
            let m = m.clone();
            tokio::spawn(async move {
                (
                    id.clone(),
                    m.create_volume(PROVIDER, Some(&id), Meta::new()).await,
                )
            })
        })
        .collect();
    let mut first_error = None;
    for t in tasks {
        let (id, r) = t.await.expect("no panic");
        match r {
            Ok(v) => panic!("create {id} acknowledged on a failing device: {v:?}"),
            Err(e) => {
                assert!(
                    unavailable_for_commit(&e),
                    "create {id}: the provider is taken out of service, the reason naming \
                     the failed commit and the I/O error: {e}"
                );
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let pending_after_failure = m.state().pending.len();
    assert!(
        (1..=4).contains(&pending_after_failure),
        "the failed creates' intents stay pending: {pending_after_failure}"
    );
    let later = [
        m.create_volume(PROVIDER, Some("later-0"), Meta::new())
            .await
            .map(drop),
        m.destroy_volume("keep-1").await.map(drop),
        m.create_snapshot_as("keep-2", Some("snap-later"), Meta::new())
            .await
            .map(drop),
        m.fork_volume(SNAP, Some("fork-later"), Meta::new())
            .await
            .map(drop),
    ];
    for r in later {
        let e = r.expect_err("acknowledged on a provider whose commit failed");
        assert!(unavailable_for_commit(&e), "refused as unavailable: {e}");
    }
    assert_eq!(
        m.state().pending.len(),
        pending_after_failure,
        "a refused operation journals no intent"
    );
    let volumes: BTreeSet<String> = m.state().volumes.keys().cloned().collect();
    assert_eq!(volumes, acknowledged, "nothing applied after the failure");
    m.close().await;
    let btrfs_after_failure = device.mount_options();

    // Reopened while the device still fails: nothing is decided.
    let m = open().await.expect("reopen while failing");
    let report = m.reconcile_report();
    assert!(
        report.resolutions.is_empty(),
        "nothing resolved on a failing device: {:?}",
        report.resolutions
    );
    let why = report
        .unavailable
        .iter()
        .find(|(p, _)| p == PROVIDER)
        .map(|(_, why)| why.clone())
        .expect("the provider is unavailable while its device fails");
    assert_eq!(m.state().pending.len(), pending_after_failure);
    m.close().await;

    // Restored: btrfs stays read-only after the abort until mounted again.
    device.restore();
    device.unmount().expect("unmount the failed file system");
    device.mount().expect("mount the restored device");
    let m = open().await.expect("reopen once restored");
    reconciled_whole(&m, &content, None);
    let rolled_forward = failed_creates()
        .iter()
        .filter(|id| m.volume(id).is_ok())
        .count();
    for id in failed_creates().iter().filter(|id| m.volume(id).is_err()) {
        m.create_volume(PROVIDER, Some(id), Meta::new())
            .await
            .expect("a create under a failed create's id");
    }
    m.create_snapshot_as("keep-2", Some("snap-after"), Meta::new())
        .await
        .expect("a new snapshot");
    m.destroy_volume("keep-1")
        .await
        .expect("a destroy of an acknowledged volume");
    let state = m.state();
    m.close().await;

    // State and the provider's own inventory agree.
    let provider = BtrfsProvider::new(&root).expect("the provider opens");
    let found = provider.inventory().expect("inventory");
    drop(provider);
    let on_provider = whole_inventory(&found);
    let in_state = state_kinds(&state);
    assert_eq!(on_provider, in_state, "state and inventory agree");
    device.unmount().expect("unmount");
    println!(
        "btrfs device errors: acknowledged before {}, failed creates 4 (intents journaled \
         {pending_after_failure}), first error: {}; btrfs after the failure: mounted \
         {btrfs_after_failure}; reopen while failing: provider unavailable ({why}); after \
         restore: {rolled_forward} of 4 failed creates rolled forward, pending 0, acknowledged \
         lost 0, state and inventory agree ({} items)",
        acknowledged.len(),
        first_error.unwrap_or_default(),
        on_provider.len()
    );
}
