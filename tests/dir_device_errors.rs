//! The directory provider on a real block device that starts failing writes.
//!
//! The dir provider is `Batched`: its side effects become durable through
//! one shared `syncfs` of its root per round, and only then are their
//! outcomes journaled. Until now a failing `syncfs` was only simulated
//! (`SimStorage` returning `EIO`). Here the provider's root is an ext4 on a
//! device-mapper device over a loop device (the manager's journal stays on
//! another file system, so only the provider's sync can fail). Volumes are
//! created and filled while the device is healthy; then the device's table
//! is switched to `dm-flakey` with `error_writes` (every write fails with
//! `EIO`, reads work) and the first operation runs: concurrent creates, a
//! destroy, or a snapshot (one test each, since the first failure decides
//! what the kernel reports). Properties:
//!
//! - no operation is acknowledged (never `Ok`) once the device fails writes:
//!   the first fails with "provider unavailable" naming the failed `syncfs`
//!   and the I/O error, and every later operation on the provider is
//!   refused the same way without journaling an intent;
//! - reopening while the device still fails resolves nothing: the
//!   provider's pre-inventory sync fails, so it stays unavailable and its
//!   pending operations stay pending;
//! - once the device is restored and the file system remounted (ext4
//!   aborts its journal and goes read-only on the first failed write: it
//!   needs a remount, which replays its journal), a reopen reconciles:
//!   nothing pending, every acknowledged volume and snapshot present with
//!   its content, the attempted destroy finished, state and the provider's
//!   inventory agree (no orphan, no foreign or half-made item), and new
//!   operations work, including on the ids of the failed operations.
//!
//! Aborted journal (the `a_create_lost_with_an_aborted_ext4_journal_*`
//! tests): ext4 whose journal commit failed aborts its journal but stays
//! mounted `rw` (`errors=continue`; on the guest's 6.1 kernel even
//! `errors=remount-ro`) and refuses changes with `EROFS`, yet a later
//! `syncfs` or `fsync` finds no transaction left to commit and can return
//! 0. The test holds a create's round (a provider wrapper whose `sync`
//! waits at a gate) after its effect, writes its marker's data back
//! (`sync_file_range`: no journal commit), fails the device's writes, and
//! makes another caller's `syncfs` force the commit of the transaction
//! holding the create's `mkdir` and marker: it fails and the journal
//! aborts (the kernel log says so); then the round runs. With the whole
//! device failing, the abort's write of the journal's superblock fails too
//! and a `syncfs` on the provider's descriptor reports it, but an `fsync`
//! round returned 0; with only the journal's log failing (bad sectors),
//! both kinds of round returned 0, and the create was acknowledged and
//! gone after a remount. So a round ends with a probe, a change made after
//! its syncs (a `rename` of the empty file `.volmgr/.round-probe.a` to
//! `.round-probe.b` or back), which meets
//! the aborted journal: the create is refused as "provider unavailable", a
//! reopen while the device fails (a new descriptor, which hears of no
//! write-back error) resolves nothing, and once restored and remounted a
//! reopen undoes the create (`create-interrupted`), state and inventory
//! agreeing. With the probe removed, three of the four tests fail ("create
//! lost acknowledged by its own round ...; after a remount it is LOST").
//!
//! Needs root, a kernel with device-mapper and dm-flakey, `dmsetup`,
//! `losetup` and `mkfs.ext4`: that is the QEMU guest of `scripts/zfs-test`
//! (which sets `VOLMGR_REQUIRE_DM=1`). Elsewhere each test prints a SKIP
//! line and passes, unless `VOLMGR_REQUIRE_DM=1` makes it fail loudly. Every
//! mount, device-mapper device and loop device is undone by a drop guard
//! (`tests/device_support/`, shared with `tests/journal_device_errors.rs`).

mod device_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use std::os::fd::AsRawFd;

use uuid::Uuid;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::model::VolumeId;
use volmgr::provider::dir::{BatchSync, CONFIG_BATCH_SYNC, DirProvider};
use volmgr::provider::{Presence, Provider, ProviderConfig, ProviderError, VolumeSpec};
use volmgr::state::{Meta, VolumeKind};

use device_support::{
    Device, DirHooks, HookedDir, Tree, fill, reconciled_whole, state_kinds, whole_inventory,
};

const PROVIDER: &str = "p";

async fn open(state_dir: &Path) -> Result<Manager, ManagerError> {
    Manager::open(state_dir, ManagerConfig::default()).await
}

/// The operation that meets the failing device first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// Four concurrent creates (one shared round for all of them).
    Creates,
    /// The destroy of an acknowledged volume.
    Destroy,
    /// A snapshot of an acknowledged volume that holds content.
    Snapshot,
}

const KEPT: [&str; 3] = ["keep-0", "keep-1", "keep-2"];
const VICTIM: &str = "victim";
/// Taken while the device is healthy.
const SNAP: &str = "snap-0";
const FAILED_SNAP: &str = "snap-failed";

fn failed_creates() -> Vec<String> {
    (0..4).map(|i| format!("failed-{i}")).collect()
}

/// Whether `e` is "provider `p` unavailable" because its `syncfs` (or an
/// `fsync` of its round) failed with an I/O error, or with `EROFS`: once one
/// sync of the round has made ext4 abort its journal, a later `fsync` in the
/// same round meets the aborted file system (seen in the guest, with fsync
/// rounds: "fsync of <root>/.volmgr/data/failed-3: Read-only file system").
fn unavailable_for_syncfs(e: &ManagerError) -> bool {
    matches!(e, ManagerError::ProviderUnavailable { provider, reason }
        if provider == PROVIDER
            && (reason.contains("syncfs") || reason.contains("fsync of"))
            && (reason.contains("(os error 5)") || reason.contains("(os error 30)")))
}

/// Whether `e` is a provider call that failed on its own write because
/// the file system had failed (`EROFS` once ext4 aborted, or `EIO`).
fn failed_on_its_own_write(e: &ManagerError) -> bool {
    matches!(e, ManagerError::Provider { provider, error: ProviderError::Io { source, .. } }
        if provider == PROVIDER
            && matches!(source.raw_os_error(), Some(libc::EROFS | libc::EIO)))
}

/// Every operation after the first failure: all refused as unavailable,
/// none journaling an intent.
async fn later_operations_are_refused(m: &Manager) {
    let pending = m.state().pending.len();
    let mut outcomes = Vec::new();
    for id in ["later-0", "later-1"] {
        outcomes.push((
            format!("create {id}"),
            m.create_volume(PROVIDER, Some(id), Meta::new())
                .await
                .map(drop),
        ));
    }
    outcomes.push((
        "destroy keep-1".into(),
        m.destroy_volume("keep-1").await.map(drop),
    ));
    outcomes.push((
        "snapshot keep-2".into(),
        m.create_snapshot_as("keep-2", Some("snap-later"), Meta::new())
            .await
            .map(drop),
    ));
    outcomes.push((
        format!("fork {SNAP}"),
        m.fork_volume(SNAP, Some("fork-later"), Meta::new())
            .await
            .map(drop),
    ));
    for (what, r) in outcomes {
        match r {
            Ok(()) => panic!("{what} acknowledged on a provider whose syncfs failed"),
            Err(e) => assert!(
                unavailable_for_syncfs(&e),
                "{what} is refused as unavailable, naming the failed syncfs: {e}"
            ),
        }
    }
    assert_eq!(
        m.state().pending.len(),
        pending,
        "a refused operation journals no intent"
    );
}

/// Runs the scenario whose first operation on the failing device is
/// `first`; see the module doc.
async fn failed_syncfs_acknowledges_nothing_and_a_reopen_reconciles(
    test: &str,
    first: First,
    batch_sync: BatchSync,
) {
    let started = Instant::now();
    let Some(mut device) = Device::new(test) else {
        return;
    };
    // The journal on /tmp, off the failing device.
    let state_tmp = tempfile::tempdir().expect("state tempdir");
    let state_dir = state_tmp.path().join("state");
    let root = device.mount_point().join("root");

    // Healthy: volumes acknowledged, filled durably; one snapshot.
    let m = open(&state_dir).await.expect("open");
    m.add_provider(
        PROVIDER,
        "dir",
        ProviderConfig::from([
            ("root".to_owned(), root.display().to_string()),
            (CONFIG_BATCH_SYNC.to_owned(), batch_sync.as_str().to_owned()),
        ]),
    )
    .await
    .expect("add the dir provider");
    let mut content: BTreeMap<String, Tree> = BTreeMap::new();
    for id in KEPT.iter().chain([&VICTIM]) {
        let v = m
            .create_volume(PROVIDER, Some(id), Meta::new())
            .await
            .expect("create while healthy");
        content.insert((*id).to_owned(), fill(Path::new(&v.location), id));
    }
    m.create_snapshot_as("keep-0", Some(SNAP), Meta::new())
        .await
        .expect("snapshot while healthy");
    content.insert(SNAP.to_owned(), content["keep-0"].clone());
    let acknowledged: BTreeSet<String> = m.state().volumes.keys().cloned().collect();
    assert_eq!(acknowledged.len(), KEPT.len() + 2);

    // The device fails every write from here on.
    device.fail_writes();
    let first_errors: Vec<(String, ManagerError)> = match first {
        First::Creates => {
            let tasks: Vec<_> = failed_creates()
                .into_iter()
                .map(|id| {
                    let m = m.clone();
                    tokio::spawn(async move {
                        let r = m.create_volume(PROVIDER, Some(&id), Meta::new()).await;
                        (id, r)
                    })
                })
                .collect();
            let mut errors = Vec::new();
            for t in tasks {
                let (id, r) = t.await.expect("no panic");
                match r {
                    Ok(v) => panic!("create {id} acknowledged on a failing device: {v:?}"),
                    Err(e) => errors.push((format!("create {id}"), e)),
                }
            }
            errors
        }
        First::Destroy => match m.destroy_volume(VICTIM).await {
            Ok(()) => panic!("destroy of {VICTIM} acknowledged on a failing device"),
            Err(e) => vec![(format!("destroy {VICTIM}"), e)],
        },
        First::Snapshot => {
            match m
                .create_snapshot_as("keep-0", Some(FAILED_SNAP), Meta::new())
                .await
            {
                Ok(v) => panic!("snapshot acknowledged on a failing device: {v:?}"),
                Err(e) => vec![(format!("snapshot {FAILED_SNAP}"), e)],
            }
        }
    };
    for (what, e) in &first_errors {
        // One of several concurrent creates may meet the file system after
        // ext4 aborted (its own marker write fails with `EROFS`) and fail
        // by itself, journaled as failed: not acknowledged either. (Its
        // round's sync may even succeed: an aborted ext4 can answer a
        // `syncfs` with success; the round's probe fails it, see "Aborted
        // journal" in the module doc.)
        assert!(
            unavailable_for_syncfs(e) || (first == First::Creates && failed_on_its_own_write(e)),
            "{what}: the provider is taken out of service, the reason naming the failed \
             syncfs and the I/O error: {e}"
        );
    }
    let reason = first_errors
        .iter()
        .find(|(_, e)| unavailable_for_syncfs(e))
        .map(|(_, e)| e.to_string())
        .expect("at least one operation met the failed sync");
    let pending_after_failure = m.state().pending.len();
    // A create that started after another's sync failed is refused before
    // its intent; each of the others stays pending.
    assert!(
        (1..=first_errors.len()).contains(&pending_after_failure),
        "the failed operations' intents stay pending: {pending_after_failure} of {}",
        first_errors.len()
    );
    later_operations_are_refused(&m).await;
    let volumes: BTreeSet<String> = m.state().volumes.keys().cloned().collect();
    assert_eq!(volumes, acknowledged, "nothing applied after the failure");
    m.close().await;
    let ext4_after_failure = format!(
        "mounted {}, mkdir {}",
        device.mount_options(),
        match fs::create_dir(device.mount_point().join("probe")) {
            Ok(()) => "works".to_owned(),
            Err(e) => format!("fails: {e}"),
        }
    );

    // Reopened while the device still fails: nothing is decided.
    let still_failing = match open(&state_dir).await {
        Ok(m) => {
            let report = m.reconcile_report();
            assert!(
                report.resolutions.is_empty(),
                "nothing resolved on a failing device: {:?}",
                report.resolutions
            );
            let Some((_, why)) = report.unavailable.iter().find(|(p, _)| p == PROVIDER) else {
                panic!(
                    "the provider is unavailable while its device fails: {:?}",
                    report.unavailable
                );
            };
            assert_eq!(
                m.state().pending.len(),
                pending_after_failure,
                "pending operations stay pending"
            );
            let seq = m.stats().durable_seq;
            match m
                .create_volume(PROVIDER, Some("later-0"), Meta::new())
                .await
            {
                Ok(v) => panic!("create acknowledged on a failing device after a reopen: {v:?}"),
                Err(e) => assert!(
                    matches!(e, ManagerError::ProviderUnavailable { .. }),
                    "refused as unavailable: {e}"
                ),
            }
            assert_eq!(
                m.stats().durable_seq,
                seq,
                "a provider reported unavailable at open journals no intent"
            );
            m.close().await;
            format!("reopened, provider unavailable ({why})")
        }
        Err(e) => format!("open refused ({e})"),
    };

    // Restored: the file system needs a remount (ext4 aborted its journal).
    device.restore();
    device.unmount().expect("unmount the failed file system");
    device.mount().expect("mount the restored device");
    let m = open(&state_dir).await.expect("reopen once restored");
    let report = m.reconcile_report();
    reconciled_whole(&m, &content, (first == First::Destroy).then_some(VICTIM));
    if first == First::Destroy {
        assert!(
            m.volume(VICTIM).is_err(),
            "the attempted destroy was finished at the reopen"
        );
    }

    // The failed operations' items: rolled forward whole, or gone.
    let failed_ids: Vec<String> = match first {
        First::Creates => failed_creates(),
        First::Destroy => vec![VICTIM.to_owned()],
        First::Snapshot => vec![FAILED_SNAP.to_owned()],
    };
    let rolled_forward: Vec<&String> = failed_ids
        .iter()
        .filter(|id| m.volume(id).is_ok())
        .collect();
    let outcome_of_failed = format!(
        "{} of {} failed operations' items present after reconcile ({})",
        rolled_forward.len(),
        failed_ids.len(),
        report
            .resolutions
            .iter()
            .map(|(case, volume, _)| format!(
                "{} {}",
                case.name(),
                volume.as_deref().unwrap_or("-")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // New operations work, on new ids and on those of the failed ones.
    for id in failed_ids.iter().filter(|id| m.volume(id).is_err()) {
        if id == FAILED_SNAP {
            m.create_snapshot_as("keep-0", Some(id), Meta::new())
                .await
                .expect("a snapshot under the failed snapshot's id");
        } else {
            m.create_volume(PROVIDER, Some(id), Meta::new())
                .await
                .expect("a create under a failed operation's id");
        }
    }
    m.create_volume(PROVIDER, Some("after"), Meta::new())
        .await
        .expect("a new create");
    m.create_snapshot_as("keep-2", Some("snap-after"), Meta::new())
        .await
        .expect("a new snapshot");
    m.destroy_volume("keep-1")
        .await
        .expect("a destroy of an acknowledged volume");
    let state = m.state();
    m.close().await;

    // State and the provider's own inventory agree.
    let provider = DirProvider::new(root.clone()).expect("the provider opens");
    let found = provider.inventory().expect("inventory");
    let on_provider = whole_inventory(&found);
    let in_state = state_kinds(&state);
    assert_eq!(on_provider, in_state, "state and inventory agree");
    drop(provider);
    device.unmount().expect("unmount");
    println!(
        "dir device errors, first {first:?}: acknowledged before {}, failed {} (intents journaled {pending_after_failure}), \
         first error: {reason}; ext4 after the failure: {ext4_after_failure}; reopen while failing: \
         {still_failing}; after restore: {outcome_of_failed}, pending 0, acknowledged lost 0, \
         state and inventory agree ({} items); {:.1}s",
        acknowledged.len(),
        first_errors.len(),
        on_provider.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_sharing_a_failed_syncfs_are_never_acknowledged_and_a_reopen_reconciles() {
    failed_syncfs_acknowledges_nothing_and_a_reopen_reconciles(
        "creates_sharing_a_failed_syncfs_are_never_acknowledged_and_a_reopen_reconciles",
        First::Creates,
        BatchSync::Syncfs,
    )
    .await;
}

/// The same with rounds of `fsync`s (`batch_sync = "fsync"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_sharing_a_failed_syncfs_are_never_acknowledged_and_a_reopen_reconciles_with_fsync_rounds()
 {
    failed_syncfs_acknowledges_nothing_and_a_reopen_reconciles(
        "creates_sharing_a_failed_syncfs_are_never_acknowledged_and_a_reopen_reconciles_with_fsync_rounds",
        First::Creates,
        BatchSync::Fsync,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_on_a_failing_device_is_never_acknowledged_and_a_reopen_finishes_it() {
    failed_syncfs_acknowledges_nothing_and_a_reopen_reconciles(
        "a_destroy_on_a_failing_device_is_never_acknowledged_and_a_reopen_finishes_it",
        First::Destroy,
        BatchSync::Syncfs,
    )
    .await;
}

/// The same with rounds of `fsync`s (`batch_sync = "fsync"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_on_a_failing_device_is_never_acknowledged_and_a_reopen_finishes_it_with_fsync_rounds()
 {
    failed_syncfs_acknowledges_nothing_and_a_reopen_reconciles(
        "a_destroy_on_a_failing_device_is_never_acknowledged_and_a_reopen_finishes_it_with_fsync_rounds",
        First::Destroy,
        BatchSync::Fsync,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_on_a_failing_device_is_never_acknowledged_and_a_reopen_reconciles() {
    failed_syncfs_acknowledges_nothing_and_a_reopen_reconciles(
        "a_snapshot_on_a_failing_device_is_never_acknowledged_and_a_reopen_reconciles",
        First::Snapshot,
        BatchSync::Syncfs,
    )
    .await;
}

/// The same with rounds of `fsync`s (`batch_sync = "fsync"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_on_a_failing_device_is_never_acknowledged_and_a_reopen_reconciles_with_fsync_rounds()
 {
    failed_syncfs_acknowledges_nothing_and_a_reopen_reconciles(
        "a_snapshot_on_a_failing_device_is_never_acknowledged_and_a_reopen_reconciles_with_fsync_rounds",
        First::Snapshot,
        BatchSync::Fsync,
    )
    .await;
}

/// The provider's sync must report a write-back error even when another
/// caller saw it first. The kernel reports a write-back error to `syncfs`
/// through the file system's error sequence, to every descriptor opened
/// before the error was first seen, and to none opened after: a `syncfs` on
/// a descriptor opened afresh for each call (as the dir provider did) returns
/// `Ok` once anyone else (another process, another provider on the same
/// file system) has run a `syncfs` that saw the error. Mounted `nobarrier`,
/// so that the cache flush (which dm-flakey also fails) does not mask that:
/// a real disk's failed sectors with a working flush behave the same.
#[test]
fn a_write_error_another_syncfs_caller_saw_first_still_fails_the_providers_sync() {
    error_seen_first_by_another_caller(
        "a_write_error_another_syncfs_caller_saw_first_still_fails_the_providers_sync",
        BatchSync::Syncfs,
    );
}

/// The same with rounds of `fsync`s: each `fsync` runs on a descriptor
/// opened for it, which still reports an error of its file that nobody saw
/// through that file.
#[test]
fn a_write_error_another_syncfs_caller_saw_first_still_fails_an_fsync_round() {
    error_seen_first_by_another_caller(
        "a_write_error_another_syncfs_caller_saw_first_still_fails_an_fsync_round",
        BatchSync::Fsync,
    );
}

fn error_seen_first_by_another_caller(test: &str, batch_sync: BatchSync) {
    let started = Instant::now();
    let Some(mut device) = Device::with_options(test, "nobarrier") else {
        return;
    };
    let root = device.mount_point().join("root");
    let provider =
        DirProvider::with_batch_sync(root.clone(), batch_sync).expect("the provider opens");
    let (kept, lost) = (
        VolumeId::new("kept").unwrap(),
        VolumeId::new("lost").unwrap(),
    );
    let spec = |id| VolumeSpec {
        id,
        op: Uuid::now_v7(),
        kind: VolumeKind::Data,
    };
    provider.create_volume(&spec(kept)).expect("create");
    provider.sync().expect("a healthy sync");

    device.fail_writes();
    provider
        .create_volume(&spec(lost))
        .expect("the create's effect lands in the page cache");
    // Someone else's syncfs of the same file system meets the error first.
    let other = File::open(device.mount_point()).expect("open the mount point");
    // SAFETY: a valid descriptor, owned by `other` for the call.
    let seen = unsafe { libc::syncfs(other.as_raw_fd()) };
    let seen_by_other = if seen == 0 {
        "returned 0".to_owned()
    } else {
        std::io::Error::last_os_error().to_string()
    };
    let r = provider.sync();
    assert!(
        r.is_err(),
        "the provider's sync reported durable a create whose write-back failed \
         (another caller's syncfs saw the error first: {seen_by_other})"
    );

    // Indeed not durable: gone once the device is restored and remounted.
    drop((provider, other));
    device.restore();
    device.unmount().expect("unmount");
    device.mount().expect("mount the restored device");
    let provider = DirProvider::new(root).expect("the provider opens");
    let found: BTreeSet<String> = provider
        .inventory()
        .expect("inventory")
        .into_iter()
        .filter(|f| f.presence == Presence::Complete)
        .filter_map(|f| f.tag.map(|t| t.volume))
        .collect();
    assert!(
        found.contains("kept"),
        "the synced create is durable: {found:?}"
    );
    assert!(
        !found.contains("lost"),
        "the failed create never reached the disk: {found:?}"
    );
    drop(provider);
    device.unmount().expect("unmount");
    println!(
        "dir device errors, error seen first by another syncfs ({seen_by_other}), {} rounds: the \
         provider's sync failed: {}; {:.1}s",
        batch_sync.as_str(),
        r.map_or_else(|e| e.to_string(), |()| "no".into()),
        started.elapsed().as_secs_f64()
    );
}

/// What fails writes when ext4's journal aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// The whole device: the journal's superblock write at the abort fails
    /// too, which records a write-back error on the file system that a
    /// `syncfs` on a descriptor opened before reports.
    Device,
    /// The journal's log only (a few bad sectors): the abort's superblock
    /// write succeeds, nothing records an error, and a `syncfs` returns 0.
    JournalLog,
}

/// The dir provider registered under this kind holds its next `sync()`
/// once armed (see [`Gate`]).
const GATED_KIND: &str = "gated-dir";
/// The create whose journal transaction is lost before its round.
const LOST: &str = "lost";
/// ext4 options of the aborted-journal tests: `errors=continue` (ext4 stays
/// `rw` after its journal aborts), `commit=600` (no periodic commit of the
/// journal before the test forces one) and `nobarrier` (the cache flush,
/// which dm-flakey fails too, does not report the failure: a disk whose
/// failed sectors hold the journal while its flush works behaves so).
const ABORT_OPTIONS: &str = "nobarrier,errors=continue,commit=600";

/// Holds the next `sync()` after [`Gate::arm`] until the test releases it.
#[derive(Debug, Default)]
struct Gate {
    armed: AtomicBool,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl DirHooks for Gate {
    fn before_sync(&self) {
        self.pass();
    }
}

impl Gate {
    /// Arms the gate: the receiver told when the next `sync()` enters, and
    /// the sender that lets it run (dropping it does too).
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.entered.lock().unwrap() = Some(entered_tx);
        *self.release.lock().unwrap() = Some(release_rx);
        self.armed.store(true, Ordering::SeqCst);
        (entered_rx, release_tx)
    }

    fn pass(&self) {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return;
        }
        let entered = self.entered.lock().unwrap().take();
        let release = self.release.lock().unwrap().take();
        if let (Some(entered), Some(release)) = (entered, release) {
            let _ = entered.send(());
            let _ = release.recv();
        }
    }
}

/// A manager whose factory for [`GATED_KIND`] builds the dir provider
/// whose `sync()` waits at `gate` once armed.
async fn open_gated(state_dir: &Path, gate: &Arc<Gate>) -> Result<Manager, ManagerError> {
    let mut config = ManagerConfig::default();
    config
        .factories
        .insert(GATED_KIND.into(), HookedDir::factory(GATED_KIND, gate));
    Manager::open(state_dir, config).await
}

/// `syncfs` of the file system holding `path`, on a descriptor opened for
/// the call (another caller than the provider).
fn syncfs_of(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: a valid descriptor, owned by `f` for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes the file at `path`'s dirty pages to the disk and waits for
/// them, without a journal commit (`sync_file_range`).
fn write_back_data(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid descriptor, owned by `f` for the call.
    if unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A reconcile report's resolutions, as `case volume, ...`.
fn resolutions(report: &volmgr::manager::ReconcileReport) -> String {
    report
        .resolutions
        .iter()
        .map(|(case, volume, _)| format!("{} {}", case.name(), volume.as_deref().unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lines of the kernel log saying that the journal of the ext4 on `dev`
/// (its internal journal, `<dm-N>-8`) aborted.
fn journal_aborts_logged(dev: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let rdev = fs::metadata(dev).expect("stat the dm device").rdev();
    // glibc's `minor()`: bits 0-7 and 20-31 of the device number.
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    let needle = format!("Aborting journal on device dm-{minor}-8");
    device_support::run(&mut std::process::Command::new("dmesg"))
        .expect("dmesg")
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// The hole an aborted ext4 opens under a batched round (see "Aborted
/// journal" in the module doc): a create's `mkdir` and marker are in the
/// running ext4 transaction, its marker's data already on the disk; the
/// device starts failing writes and another caller's `syncfs` forces that
/// transaction's commit, which fails and aborts ext4's journal (the
/// transaction, with the create, is gone); then the create's round runs.
/// Its `fsync`s, or its `syncfs` when only the journal's log fails
/// ([`Bad`]), find nothing to commit and return success, and the file
/// system stays `rw`; only the round's probe (a change after the syncs)
/// meets the aborted journal. Properties: the create is never
/// acknowledged (the provider is taken out of service, its intent stays
/// pending), and once the device is restored and remounted it is indeed
/// gone, and a reopen reconciles: nothing pending, every acknowledged
/// volume present with its content, state and inventory agree.
async fn create_lost_with_an_aborted_journal_is_never_acknowledged(
    test: &str,
    batch_sync: BatchSync,
    bad: Bad,
) {
    let started = Instant::now();
    let Some(mut device) = Device::with_options(test, ABORT_OPTIONS) else {
        return;
    };
    // The journal on /tmp, off the failing device.
    let state_tmp = tempfile::tempdir().expect("state tempdir");
    let state_dir = state_tmp.path().join("state");
    let root = device.mount_point().join("root");
    let gate = Arc::new(Gate::default());

    // Healthy: volumes acknowledged, filled durably.
    let m = open_gated(&state_dir, &gate).await.expect("open");
    m.add_provider(
        PROVIDER,
        GATED_KIND,
        ProviderConfig::from([
            ("root".to_owned(), root.display().to_string()),
            (CONFIG_BATCH_SYNC.to_owned(), batch_sync.as_str().to_owned()),
        ]),
    )
    .await
    .expect("add the dir provider");
    let mut content: BTreeMap<String, Tree> = BTreeMap::new();
    for id in KEPT {
        let v = m
            .create_volume(PROVIDER, Some(id), Meta::new())
            .await
            .expect("create while healthy");
        content.insert(id.to_owned(), fill(Path::new(&v.location), id));
    }
    // Everything on the disk (ext4's journal committed, its checkpoint
    // written): the failed device meets only what follows.
    syncfs_of(&device.mount_point()).expect("a healthy syncfs");

    let journal_log = device.ext4_journal_log();

    // The create's effect, its round held.
    let (entered, release) = gate.arm();
    let task = {
        let m = m.clone();
        tokio::spawn(async move { m.create_volume(PROVIDER, Some(LOST), Meta::new()).await })
    };
    tokio::task::spawn_blocking(move || entered.recv())
        .await
        .expect("no panic")
        .expect("the create's round reaches the provider");
    // Its marker's data on the disk (the transaction that names it is not).
    write_back_data(&root.join(".volmgr/data").join(LOST)).expect("write back the marker");
    let aborts_before = journal_aborts_logged(&device.dev_path());
    match bad {
        Bad::Device => device.fail_writes(),
        Bad::JournalLog => {
            let (first, sectors) = journal_log;
            device.fail_writes_to(first, sectors);
        }
    }
    // Another caller forces the running transaction's commit: it fails,
    // and ext4's journal aborts.
    let other = syncfs_of(&device.mount_point());
    let aborts = journal_aborts_logged(&device.dev_path()) - aborts_before;
    assert_eq!(
        aborts, 1,
        "the forced commit aborted ext4's journal (the other syncfs: {other:?})"
    );
    let mounted = device.mount_options();
    drop(release);
    let created = task.await.expect("no panic");
    // How `lost` came to be acknowledged, if it did.
    let mut acknowledged_by = Vec::new();
    let reason = match &created {
        Ok(_) => {
            acknowledged_by.push("its own round".to_owned());
            "acknowledged".to_owned()
        }
        Err(e) => {
            assert!(
                matches!(e, ManagerError::ProviderUnavailable { provider, .. } if provider == PROVIDER),
                "the create's failed round takes the provider out of service: {e}"
            );
            e.to_string()
        }
    };
    let pending_after = m.state().pending.len();
    m.close().await;

    // Reopened while the device still fails: a new provider, whose root
    // descriptor, opened after the abort, hears of no write-back error;
    // its round at open must not let the inventory roll the create forward.
    let m = open_gated(&state_dir, &gate)
        .await
        .expect("reopen while failing");
    let report = m.reconcile_report();
    let while_failing = match report.unavailable.iter().find(|(p, _)| p == PROVIDER) {
        Some((_, why)) => format!("provider unavailable ({why})"),
        None => format!("provider serving, resolutions: {}", resolutions(&report)),
    };
    if created.is_err() && m.volume(LOST).is_ok() {
        acknowledged_by.push(format!(
            "the reopen while the device failed: {while_failing}"
        ));
    }
    if acknowledged_by.is_empty() {
        assert!(
            report.resolutions.is_empty(),
            "nothing resolved on an aborted ext4: {while_failing}"
        );
        assert!(
            while_failing.starts_with("provider unavailable"),
            "the provider is unavailable while its ext4 is aborted: {while_failing}"
        );
        assert_eq!(pending_after, 1, "the create's intent stays pending");
        assert_eq!(
            m.state().pending.len(),
            1,
            "and stays pending at the reopen"
        );
    }
    m.close().await;
    let probe_by_test = match fs::create_dir(device.mount_point().join("probe")) {
        Ok(()) => "works".to_owned(),
        Err(e) => format!("fails: {e}"),
    };

    // Restored and remounted (ext4 replays its journal): is the create there?
    device.restore();
    device.unmount().expect("unmount the aborted file system");
    device.mount().expect("mount the restored device");
    let lost_is_on_disk = {
        let provider = DirProvider::new(root.clone()).expect("the provider opens");
        let found = provider.inventory().expect("inventory");
        whole_inventory(&found).contains_key(LOST)
    };
    assert!(
        acknowledged_by.is_empty(),
        "create {LOST} acknowledged by {acknowledged_by:?} on an ext4 whose journal had aborted \
         (mounted {mounted}, the other syncfs: {other:?}); after a remount it is {}",
        if lost_is_on_disk { "present" } else { "LOST" }
    );
    assert!(
        !lost_is_on_disk,
        "the create's transaction was lost with the aborted journal"
    );

    let m = open_gated(&state_dir, &gate)
        .await
        .expect("reopen once restored");
    let report = m.reconcile_report();
    reconciled_whole(&m, &content, None);
    assert!(
        m.volume(LOST).is_err(),
        "the unacknowledged create is undone"
    );
    m.create_volume(PROVIDER, Some(LOST), Meta::new())
        .await
        .expect("a create under the lost create's id");
    let state = m.state();
    m.close().await;
    let provider = DirProvider::new(root.clone()).expect("the provider opens");
    let on_provider = whole_inventory(&provider.inventory().expect("inventory"));
    assert_eq!(
        on_provider,
        state_kinds(&state),
        "state and inventory agree"
    );
    drop(provider);
    device.unmount().expect("unmount");
    println!(
        "dir device errors, create lost with an aborted ext4 journal, {bad:?} failing, {} rounds: the other \
         syncfs {other:?}, mounted {mounted}; the create: {reason}; reopened while failing: \
         {while_failing}; a mkdir by the test then: {probe_by_test}; after restore: {} (resolutions: {}), state and inventory agree \
         ({} items); {:.1}s",
        batch_sync.as_str(),
        if lost_is_on_disk { "present" } else { "gone" },
        resolutions(&report),
        on_provider.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_lost_with_an_aborted_ext4_journal_is_never_acknowledged() {
    create_lost_with_an_aborted_journal_is_never_acknowledged(
        "a_create_lost_with_an_aborted_ext4_journal_is_never_acknowledged",
        BatchSync::Syncfs,
        Bad::JournalLog,
    )
    .await;
}

/// The same with rounds of `fsync`s (`batch_sync = "fsync"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_lost_with_an_aborted_ext4_journal_is_never_acknowledged_with_fsync_rounds() {
    create_lost_with_an_aborted_journal_is_never_acknowledged(
        "a_create_lost_with_an_aborted_ext4_journal_is_never_acknowledged_with_fsync_rounds",
        BatchSync::Fsync,
        Bad::JournalLog,
    )
    .await;
}

/// The same with the whole device failing writes (`syncfs` rounds: the
/// failed write of the journal's superblock is reported to the round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_lost_with_an_aborted_ext4_journal_on_a_failed_device_is_never_acknowledged() {
    create_lost_with_an_aborted_journal_is_never_acknowledged(
        "a_create_lost_with_an_aborted_ext4_journal_on_a_failed_device_is_never_acknowledged",
        BatchSync::Syncfs,
        Bad::Device,
    )
    .await;
}

/// The same with rounds of `fsync`s, which hear of no such error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_lost_with_an_aborted_ext4_journal_on_a_failed_device_is_never_acknowledged_with_fsync_rounds()
 {
    create_lost_with_an_aborted_journal_is_never_acknowledged(
        "a_create_lost_with_an_aborted_ext4_journal_on_a_failed_device_is_never_acknowledged_with_fsync_rounds",
        BatchSync::Fsync,
        Bad::Device,
    )
    .await;
}
