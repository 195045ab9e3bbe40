//! The btrfs provider's batched durability, on a loop-mounted btrfs: its
//! verbs leave their changes in the running btrfs transaction, and its
//! `sync` (a transaction commit, or `syncfs` when configured so) is what
//! commits them. A *power-cut image* (a copy of
//! the loop device's backing file: what btrfs wrote so far, nothing of the
//! page cache), mounted read-only, shows what the next boot would find.
//! Through the manager, concurrent creates share provider syncs: fewer than
//! one per create, and each acknowledged create survives a power cut.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::BtrfsFs;
use uuid::Uuid;
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::model::VolumeId;
use volmgr::provider::btrfs::{BatchSync, BtrfsProvider, CONFIG_BATCH_SYNC, CONFIG_ROOT};
use volmgr::provider::{
    Created, Durability, Found, Presence, Provider, ProviderConfig, ProviderError, SendOptions,
    SendStats, VolumeRef, VolumeSpec,
};
use volmgr::state::{Details, Meta, OpId, VolumeKind};

/// The complete items of the provider rooted at `root` (on a power-cut
/// image): `(volume id, op)`.
fn complete_items(root: &Path) -> Vec<(String, OpId)> {
    let provider = BtrfsProvider::new(root).expect("the provider opens on the image");
    provider
        .inventory()
        .unwrap()
        .into_iter()
        .filter(|f| f.presence == Presence::Complete)
        .map(|f| {
            let tag = f
                .tag
                .unwrap_or_else(|| panic!("foreign item {} on the image", f.name));
            (tag.volume, tag.op)
        })
        .collect()
}

/// Creates data volume `id` by operation `op`; its location.
fn create(p: &BtrfsProvider, id: &str, op: OpId) -> String {
    let spec = VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op,
        kind: VolumeKind::Data,
    };
    p.create_volume(&spec).unwrap().location
}

/// Snapshots data volume `id` (at `location`) as `snap`, by operation `op`.
fn snapshot(p: &BtrfsProvider, id: &str, location: &str, snap: &str, op: OpId) {
    let source = VolumeRef {
        id: VolumeId::new(id).unwrap(),
        kind: VolumeKind::Data,
        parent: None,
        location,
        details: &Details::new(),
    };
    let spec = VolumeSpec {
        id: VolumeId::new(snap).unwrap(),
        op,
        kind: VolumeKind::Snapshot,
    };
    p.create_snapshot(&source, &spec).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_survives_a_power_cut_once_the_provider_synced_and_not_before() {
    let test = "a_create_survives_a_power_cut_once_the_provider_synced_and_not_before";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    // No periodic commit may make the create durable behind our back.
    fs.remount_with("commit=600");
    let root = fs.path().join("volumes");
    let provider = BtrfsProvider::new(&root).unwrap();
    assert_eq!(provider.durability(), Durability::Batched);
    provider.sync().unwrap();
    let op = Uuid::now_v7();
    create(&provider, "a", op);
    {
        // The create synced nothing by itself: a power cut now loses it
        // (at most its stage remains, which reconciliation undoes).
        let cut = fs.power_cut_image();
        let items = complete_items(&cut.path().join("volumes"));
        assert!(items.is_empty(), "durable before any sync: {items:?}");
    }
    provider.sync().unwrap();
    let cut = fs.power_cut_image();
    assert_eq!(
        complete_items(&cut.path().join("volumes")),
        vec![("a".to_owned(), op)]
    );
}

/// The data volume `id`'s file `name` on a power-cut image, if it has
/// content.
fn content_on(image_root: &Path, id: &str, name: &str) -> Option<Vec<u8>> {
    std::fs::read(image_root.join("data").join(id).join("vol").join(name))
        .ok()
        .filter(|c| !c.is_empty())
}

/// The batched sync is a transaction commit: the provider's items become
/// durable and a tenant's buffered writes stay in the page cache (the
/// tenant's to `fsync`), so a tenant writing flat out does not make every
/// round wait for its data; `batch_sync = syncfs` writes them back too
/// (the case beside it, so the test sees the difference it claims).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batched_commit_leaves_a_tenants_buffered_data_to_the_tenant_and_syncfs_writes_it() {
    let test =
        "the_batched_commit_leaves_a_tenants_buffered_data_to_the_tenant_and_syncfs_writes_it";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    fs.remount_with("commit=600");
    let root = fs.path().join("volumes");
    let commit = BtrfsProvider::new(&root).unwrap();
    let syncfs = BtrfsProvider::with_batch_sync(&root, BatchSync::Syncfs).unwrap();
    let a = create(&commit, "a", Uuid::now_v7());
    commit.sync().unwrap();
    std::fs::write(Path::new(&a).join("f"), b"tenant data").unwrap();
    create(&commit, "b", Uuid::now_v7());
    commit.sync().unwrap();
    let cut = fs.power_cut_image();
    let image_root = cut.path().join("volumes");
    let mut ids: Vec<String> = complete_items(&image_root)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"], "the commit made both creates durable");
    assert_eq!(
        content_on(&image_root, "a", "f"),
        None,
        "the commit wrote back the tenant's buffered data"
    );

    create(&syncfs, "c", Uuid::now_v7());
    syncfs.sync().unwrap();
    let cut = fs.power_cut_image();
    let image_root = cut.path().join("volumes");
    assert_eq!(complete_items(&image_root).len(), 3);
    assert_eq!(
        content_on(&image_root, "a", "f").as_deref(),
        Some(&b"tenant data"[..]),
        "a syncfs round writes back every dirty page of the file system"
    );
}

/// The commit no longer writes volumes' data back, so a snapshot must get
/// its source's buffered data from somewhere else: btrfs flushes a
/// subvolume's dirty data before snapshotting it. A snapshot taken after a
/// tenant's unsynced write holds that write on the disk once synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_snapshot_holds_what_the_tenant_wrote_before_it_even_unsynced() {
    let test = "a_synced_snapshot_holds_what_the_tenant_wrote_before_it_even_unsynced";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    fs.remount_with("commit=600");
    let root = fs.path().join("volumes");
    let provider = BtrfsProvider::new(&root).unwrap();
    let a = create(&provider, "a", Uuid::now_v7());
    provider.sync().unwrap();
    let payload = vec![0x5a_u8; 3 << 20];
    std::fs::write(Path::new(&a).join("f"), &payload).unwrap();
    snapshot(&provider, "a", &a, "s", Uuid::now_v7());
    provider.sync().unwrap();
    let cut = fs.power_cut_image();
    let image_root = cut.path().join("volumes");
    assert_eq!(
        std::fs::read(image_root.join("snapshot/s/vol/f")).unwrap(),
        payload,
        "the snapshot on the disk holds the tenant's write"
    );
}

/// A btrfs transaction commit does not write back file data (unless the
/// file system is mounted `flushoncommit`), and a snapshot commits one by
/// itself. A tag merely written before its container's rename into place
/// would reach the disk empty with that rename: after a power cut, a
/// container of ours without a valid tag, foreign for good. The tag's
/// content is written back before the rename, so it never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_between_syncs_never_leaves_a_placed_container_without_its_tag() {
    let test = "a_commit_between_syncs_never_leaves_a_placed_container_without_its_tag";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    fs.remount_with("commit=600");
    let root = fs.path().join("volumes");
    let provider = BtrfsProvider::new(&root).unwrap();
    provider.sync().unwrap();
    let (op, snap_op) = (Uuid::now_v7(), Uuid::now_v7());
    let a = create(&provider, "a", op);
    // The snapshot commits the transaction holding `a` in place; no sync.
    snapshot(&provider, "a", &a, "s", snap_op);
    let cut = fs.power_cut_image();
    // `complete_items` fails on a foreign item.
    assert_eq!(
        complete_items(&cut.path().join("volumes")),
        vec![("a".to_owned(), op)]
    );
}

/// Polls `done` until it holds; the deadline only bounds a failure.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::task::yield_now().await;
    }
}

/// The btrfs provider, whose first sync after [`HeldFirstSync::arm`] waits
/// until `creates` creates have finished their side effects or
/// [`HeldFirstSync::release`] is called.
#[derive(Debug)]
struct HeldFirstSync {
    inner: BtrfsProvider,
    creates: usize,
    armed: AtomicBool,
    done: Mutex<usize>,
    changed: Condvar,
    /// Whether the armed sync is waiting, and whether it was released.
    held: AtomicBool,
    released: AtomicBool,
}

impl HeldFirstSync {
    fn arm(&self) {
        *self.done.lock().unwrap() = 0;
        self.released.store(false, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        let _done = self.done.lock().unwrap();
        self.released.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

impl Provider for HeldFirstSync {
    fn kind(&self) -> &'static str {
        "btrfs-held"
    }
    fn durability(&self) -> Durability {
        self.inner.durability()
    }
    fn sync(&self) -> Result<(), ProviderError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            // The timeout only bounds a failure (a path that never finishes
            // its creates); a passing run goes on when the last one is done.
            let done = self.done.lock().unwrap();
            self.held.store(true, Ordering::SeqCst);
            let (done, _) = self
                .changed
                .wait_timeout_while(done, Duration::from_secs(60), |n| {
                    *n < self.creates && !self.released.load(Ordering::SeqCst)
                })
                .unwrap();
            assert!(
                *done >= self.creates || self.released.load(Ordering::SeqCst),
                "every create's effect finished, or the test released the sync"
            );
        }
        self.inner.sync()
    }
    fn config(&self) -> ProviderConfig {
        self.inner.config()
    }
    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        let created = self.inner.create_volume(spec);
        *self.done.lock().unwrap() += 1;
        self.changed.notify_all();
        created
    }
    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.inner.create_snapshot(source, spec)
    }
    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.inner.fork_volume(snapshot, spec)
    }
    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.inner.destroy(volume)
    }
    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
        out: &mut dyn std::io::Write,
    ) -> Result<SendStats, ProviderError> {
        self.inner.send_snapshot(snapshot, base, options, out)
    }
    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn std::io::Read,
    ) -> Result<Created, ProviderError> {
        self.inner.receive_snapshot(target, spec, input)
    }
    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.inner.inventory()
    }
    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        self.inner.finish(found)
    }
    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        self.inner.abort_partial(op)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_btrfs_syncs_and_each_acknowledged_one_survives_a_power_cut() {
    concurrent_creates(
        "concurrent_creates_share_btrfs_syncs_and_each_acknowledged_one_survives_a_power_cut",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_write_cycle_queued_creates_share_one_btrfs_sync_and_each_acknowledged_one_survives_a_power_cut()
 {
    concurrent_creates(
        "with_the_write_cycle_queued_creates_share_one_btrfs_sync_and_each_acknowledged_one_survives_a_power_cut",
        true,
    )
    .await;
}

/// Creates one at a time, then `N` at once with the first sync held; then a
/// power cut. `write_cycle`: through the provider's write cycle.
async fn concurrent_creates(test: &str, write_cycle: bool) {
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    fs.remount_with("commit=600");
    const SEQUENTIAL: usize = 4;
    const N: usize = 16;
    let provider = Arc::new(HeldFirstSync {
        inner: BtrfsProvider::new(fs.path().join("volumes")).unwrap(),
        // The write cycle runs no effect of a later cycle while a round
        // is held: the test releases it.
        creates: if write_cycle { usize::MAX } else { N },
        armed: AtomicBool::new(false),
        done: Mutex::new(0),
        changed: Condvar::new(),
        held: AtomicBool::new(false),
        released: AtomicBool::new(false),
    });
    let mut config = ManagerConfig {
        default_provider: Some(Box::new(|| {
            Ok(("btrfs-held".into(), ProviderConfig::new()))
        })),
        write_cycle,
        ..ManagerConfig::default()
    };
    let factory = provider.clone();
    config.factories.insert(
        "btrfs-held".into(),
        Arc::new(move |_: &ProviderConfig, _: &volmgr::provider::AgentId| {
            Ok(factory.clone() as Arc<dyn Provider>)
        }),
    );
    let state = tempfile::tempdir().unwrap();
    let m = Manager::open(state.path(), config).await.unwrap();

    // One at a time, every create runs a provider sync of its own: the
    // counter counts real syncs, and no create is acknowledged without one.
    for i in 0..SEQUENTIAL {
        let before = m.stats().provider_syncs;
        m.create_volume("default", Some(&format!("s{i}")), Meta::new())
            .await
            .unwrap();
        assert_eq!(m.stats().provider_syncs, before + 1, "create s{i}");
    }

    let before = m.stats().provider_syncs;
    provider.arm();
    let create = |i: usize| {
        let m = m.clone();
        tokio::spawn(async move {
            m.create_volume("default", Some(&format!("c{i}")), Meta::new())
                .await
        })
    };
    if write_cycle {
        // The first create waits in its held round; every other one is
        // queued behind it, and the next cycle takes them all.
        let mut creates = vec![create(0)];
        wait_until("the first round is held", || {
            provider.held.load(Ordering::SeqCst)
        })
        .await;
        creates.extend((1..N).map(create));
        wait_until("every create waits for a provider round", || {
            m.stats().provider_sync_waiting >= N
        })
        .await;
        provider.release();
        for c in creates {
            c.await.unwrap().expect("acknowledged");
        }
        assert_eq!(
            m.stats().provider_syncs - before,
            2,
            "{N} creates shared two provider syncs"
        );
    } else {
        // The first sync is held until every create's effect is done, so
        // the others find it running and share the next one.
        let creates: Vec<_> = (0..N).map(create).collect();
        for c in creates {
            c.await.unwrap().expect("acknowledged");
        }
        let syncs = m.stats().provider_syncs - before;
        // The held sync covered the first effect, the next one the rest (a
        // thread descheduled between its effect and its sync may need one
        // more). One sync per create would be N.
        assert!(
            (1..N as u64 / 2).contains(&syncs),
            "{N} concurrent creates ran {syncs} provider syncs"
        );
    }
    m.close().await;

    // Every acknowledged create is on the disk.
    let cut = fs.power_cut_image();
    let mut ids: Vec<String> = complete_items(&cut.path().join("volumes"))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..SEQUENTIAL)
        .map(|i| format!("s{i}"))
        .chain((0..N).map(|i| format!("c{i}")))
        .collect();
    expected.sort();
    assert_eq!(ids, expected);
}

/// `batch_sync` is validated like every provider setting (exact values
/// only: a flag-looking or misspelt value is refused, naming the key) and
/// journaled only when it is not the default, so a configuration journaled
/// before the setting existed reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sync_is_validated_and_journaled_only_when_not_the_default() {
    let test = "batch_sync_is_validated_and_journaled_only_when_not_the_default";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes").to_string_lossy().into_owned();
    let config = |value: Option<&str>| {
        let mut c = ProviderConfig::from([(CONFIG_ROOT.to_owned(), root.clone())]);
        if let Some(v) = value {
            c.insert(CONFIG_BATCH_SYNC.to_owned(), v.to_owned());
        }
        c
    };
    for bad in ["--help", "Commit", "fsync", "", " syncfs"] {
        match BtrfsProvider::from_config(&config(Some(bad))) {
            Err(ProviderError::InvalidConfig(msg)) => {
                assert!(msg.contains(CONFIG_BATCH_SYNC), "{bad:?}: {msg}");
            }
            other => panic!("{bad:?} accepted or wrong error: {other:?}"),
        }
    }
    let default = BtrfsProvider::from_config(&config(None)).unwrap();
    assert_eq!(default.config(), config(None));
    assert_eq!(
        BtrfsProvider::from_config(&config(Some("commit")))
            .unwrap()
            .config(),
        config(None),
        "the default is not journaled"
    );
    let syncfs = BtrfsProvider::from_config(&config(Some("syncfs"))).unwrap();
    assert_eq!(syncfs.config(), config(Some("syncfs")));
    syncfs.sync().unwrap();
}
