//! The manager's journal on a real block device that starts failing writes.
//!
//! Until now a failing journal write or `fdatasync` was only simulated
//! (`SimStorage` returning `EIO`) or met as `ENOSPC`. Here the manager's
//! state directory (its journal) is on an ext4 over a device-mapper device
//! over a loop device (`tests/device_support/`); the dir provider's root is
//! on another file system (`/tmp`) or on the same failing device (one disk,
//! a host's default). Volumes are created and filled while the device is
//! healthy; one operation (a create, or the destroy of `victim`) is then
//! held inside the provider with its intent durable; the device's table is
//! switched to `dm-flakey` with `error_writes` (every write fails with
//! `EIO`, reads work); then the journal commit that meets the failure is
//! the held operation's *outcome* (released first), the *intents* of
//! concurrent creates and a destroy (run first), or the held outcome after
//! *another writer* on the same file system met the failure first and made
//! ext4 abort its journal. Properties (each asserted):
//!
//! - no operation is acknowledged once the journal's write or `fdatasync`
//!   fails: every caller gets `ManagerError::Journal(Poisoned)`, whose
//!   message names the journal, the segment, the failed call and the error,
//!   and says what to do: "journal poisoned by an earlier write/sync failure
//!   (fdatasync of <state>/journal/<seq>.seg failed: Input/output error (os
//!   error 5)); reopen to recover" (`Read-only file system (os error 30)`
//!   once ext4 has aborted). With the provider on the same device the held
//!   create meets the provider's failed `syncfs` first and is refused as
//!   "provider unavailable" (no outcome journaled);
//! - every later operation is refused the same way before it claims or
//!   journals anything, with no provider call and no write or sync of the
//!   journal (no retry): an operation on the held id too (it answered "busy"
//!   before, pointing at an operation that never ends:
//!   `tests/manager_regression_poisoned_journal_is_named_first.rs`);
//! - the held operation's side effect is done (its intent was durable, the
//!   provider ran it) while its outcome is not journaled: it stays pending,
//!   and on `/tmp` the provider already holds the result;
//! - nothing panics or hangs: every call returns, the manager closes;
//! - `volmgr journal verify` while the device fails (reads work) exits 0
//!   and, where the `FAILED-COMMIT` marker exists, stands where the next
//!   open will (the last durable record, the held operation pending); it
//!   counted the failed batch from the page cache before
//!   (`tests/journal_regression_tool_reads_a_failed_commit_as_open_will.rs`).
//!   Where ext4 had aborted before the commit, no marker could be created
//!   and the tool reads the page cache's view until the remount that any
//!   open needs drops it;
//! - reopening while the device still fails is refused (never opened
//!   read-only: opening writes and syncs before it replays), with a
//!   `Journal(Io)` error naming a file on the failing device and the
//!   reason: "fsync directory <mount>: Input/output error" (the directory
//!   `fsync` forces ext4's journal commit, which fails and aborts it) or
//!   "lock <state>/LOCK: Read-only file system" (already aborted);
//! - once the device is restored and the file system remounted, a reopen
//!   reconciles: the failed batch is not there (never written; the
//!   `FAILED-COMMIT` marker, never synced, went with the page cache, and
//!   none is left after the open), nothing pending, exactly the held
//!   operation resolved (a create rolled forward when its effect reached the
//!   disk, undone when it did not; a destroy finished), every acknowledged
//!   volume present with its content, the refused creates and destroy not
//!   done, state and the provider's inventory agree (no orphan, no foreign
//!   or half-made item), `volmgr journal verify` exits 0, and new operations
//!   work, including on the ids of the failed ones;
//! - a failure that heals without a remount (the device comes back before
//!   ext4 commits its journal: mounted `commit=600`) leaves the failed
//!   batch readable from the page cache though it never reached the disk;
//!   the reopen discards it (the marker), so no never-durable intent or
//!   outcome is replayed, and the result survives a remount. Both heal-in-
//!   place tests failed with the discard's zeroing disabled (the refused
//!   create's intent came back as `create-interrupted failed-0`, the held
//!   create's outcome as already done) until opening (and the tool, which
//!   runs before the reopen here) read the last segment after dropping its
//!   cached pages: now they pass with the zeroing disabled too (checked),
//!   and `torture_regression_failed_commit_is_discarded_at_reopen` guards
//!   the zeroing with the drops ignored;
//! - a failed batch whose process died before it left its marker (the
//!   marker removed, as if never created), the device healed in place, a
//!   new handle that reopens and acknowledges more, then the page cache
//!   gone (unmount, mount): the reopen and the read-only reader read the
//!   batch as the disk holds it (not there: the last segment's cached
//!   pages are dropped before it is read), and the journal opens with every
//!   acknowledged record. Without the drop (checked: the walk reading
//!   through the cache) the reopen replayed the 4 failed records from the
//!   page cache (6 records, 2 durable) and, after the remount, the journal
//!   refused to open: "corrupt at offset 112: nonzero bytes after the end
//!   of the log, and a valid frame of a later write follows at offset
//!   24272" (the batch's pages wholly inside it never reached the disk;
//!   the page it shares with the next append was written with it).
//!
//! What the guest's kernel (Debian 12, 6.1) does, as seen here: the failed
//! `fdatasync` of the segment does not by itself abort ext4 (the marker is
//! created afterwards); the next commit of ext4's own journal (a directory
//! `fsync`, a `syncfs`, the periodic commit) fails and aborts it. From then
//! on changes are refused with `EROFS`, an `fdatasync` of a file with dirty
//! pages returns `EROFS`, a directory `fsync` returns 0, and `/proc/mounts`
//! still says `rw`: a remount is needed, which replays ext4's journal.
//! Mount options: `data=ordered,errors=remount-ro`, ext4's default data
//! mode and the error policy distributions put in fstab; an aborted journal
//! makes ext4 refuse changes whatever `errors=` says.
//!
//! Needs root, a kernel with device-mapper and dm-flakey, `dmsetup`,
//! `losetup` and `mkfs.ext4`: the QEMU guest of `scripts/zfs-test` (which
//! sets `VOLMGR_REQUIRE_DM=1`). Elsewhere each test prints a SKIP line and
//! passes, unless `VOLMGR_REQUIRE_DM=1` makes it fail loudly.

mod device_support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use volmgr::journal::{
    FAILED_COMMIT_FILE, JOURNAL_DIR, Journal, JournalConfig, JournalError, JournalRecord, format,
};
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{Provider, ProviderConfig};
use volmgr::state::{Meta, VolumeKind, VolumeStatus};
use volmgr::storage::RealStorage;

use device_support::{
    Device, DirHooks, HookedDir, Tree, fill, reconciled_whole, state_kinds, whole_inventory,
};

const PROVIDER: &str = "p";
/// The dir provider with a hold (see [`Hold`]).
const HELD_KIND: &str = "held-dir";
/// The create held inside the provider while the device starts failing.
const HELD: &str = "held";
const KEPT: [&str; 3] = ["keep-0", "keep-1", "keep-2"];
const VICTIM: &str = "victim";
const MOUNT_OPTIONS: &str = "data=ordered,errors=remount-ro";

/// The operation held inside the provider, its intent durable, while the
/// device starts failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The create of [`HELD`].
    Create,
    /// The destroy of [`VICTIM`].
    Destroy,
}

impl Held {
    /// The volume id it works on.
    fn id(self) -> &'static str {
        match self {
            Held::Create => HELD,
            Held::Destroy => VICTIM,
        }
    }

    /// The volume the concurrent destroy (refused) aims at.
    fn concurrent_destroy(self) -> &'static str {
        match self {
            Held::Create => VICTIM,
            Held::Destroy => "keep-0",
        }
    }
}

fn failed_creates() -> Vec<String> {
    (0..4).map(|i| format!("failed-{i}")).collect()
}

/// Holds the first `held` operation inside the provider, before its side
/// effect, until the test releases it.
#[derive(Debug)]
struct Hold {
    held: Held,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl DirHooks for Hold {
    fn before_create(&self, id: &str) {
        self.pass(Held::Create, id);
    }
    fn before_destroy(&self, id: &str) {
        self.pass(Held::Destroy, id);
    }
}

impl Hold {
    /// The hold, the receiver told when the create enters, and the sender
    /// that releases it (dropping it releases too).
    fn new(held: Held) -> (Arc<Hold>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let hold = Hold {
            held,
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(Some(release_rx)),
        };
        (Arc::new(hold), entered_rx, release_tx)
    }

    /// Holds `verb` of `id` if it is the held operation (once).
    fn pass(&self, verb: Held, id: &str) {
        if verb != self.held || id != self.held.id() {
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

fn config(hold: &Arc<Hold>) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config
        .factories
        .insert(HELD_KIND.into(), HookedDir::factory(HELD_KIND, hold));
    config
}

/// Where the provider's root lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// On `/tmp`, off the failing device.
    Apart,
    /// On the failing device, beside the journal.
    Shared,
}

/// The journal commit that meets the failing device first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// The outcome of the held create (its intent durable, its side effect
    /// done).
    Outcome,
    /// The intents of concurrent creates and a destroy.
    Intents,
    /// The outcome of the held create, after another writer on the same
    /// file system met the failure first: its `syncfs` made ext4 abort its
    /// journal, so the journal's write lands in the page cache of a file
    /// system that accepts nothing more, and its `fdatasync` must say so.
    Aborted,
}

/// The refusal of a poisoned journal whose write or `fdatasync` met the
/// device's I/O error, its message naming the segment and saying what to
/// do.
fn journal_refused(e: &ManagerError, state_dir: &Path) -> bool {
    let journal_dir = state_dir.join(JOURNAL_DIR);
    let text = e.to_string();
    matches!(e, ManagerError::Journal(JournalError::Poisoned { cause })
        if (cause.starts_with("fdatasync of ") || cause.starts_with("write to "))
            && cause.contains(&*journal_dir.to_string_lossy())
            && cause.contains(".seg failed: ")
            && (cause.contains("(os error 5)") || cause.contains("(os error 30)")))
        && text.starts_with("journal poisoned by an earlier write/sync failure (")
        && text.ends_with("; reopen to recover")
}

/// Runs concurrent creates of [`failed_creates`] and the destroy of
/// `destroy_id`; none may be acknowledged.
async fn concurrent_operations(
    m: &Manager,
    destroy_id: &'static str,
) -> Vec<(String, ManagerError)> {
    let mut tasks: Vec<_> = failed_creates()
        .into_iter()
        .map(|id| {
            let m = m.clone();
            tokio::spawn(async move {
                let r = m
                    .create_volume(PROVIDER, Some(&id), Meta::new())
                    .await
                    .map(drop);
                (format!("create {id}"), r)
            })
        })
        .collect();
    let destroy = m.clone();
    tasks.push(tokio::spawn(async move {
        (
            format!("destroy {destroy_id}"),
            destroy.destroy_volume(destroy_id).await,
        )
    }));
    let mut errors = Vec::new();
    for t in tasks {
        let (what, r) = t.await.expect("no panic");
        match r {
            Ok(()) => panic!("{what} acknowledged after the journal's device failed"),
            Err(e) => errors.push((what, e)),
        }
    }
    errors
}

/// Every operation after the failure: refused by the journal (or, with
/// `unavailable_too`, as provider unavailable: its sync failed on the same
/// device), nothing journaled, nothing applied.
async fn later_operations_are_refused(
    m: &Manager,
    state_dir: &Path,
    unavailable_too: bool,
    held_id: &str,
) {
    let seq = m.stats().durable_seq;
    let syncs = m.stats().syncs;
    let pending = m.state().pending.len();
    let volumes = m.state().volumes.len();
    let mut outcomes = Vec::new();
    for id in ["later-0", held_id] {
        outcomes.push((
            format!("create {id}"),
            m.create_volume(PROVIDER, Some(id), Meta::new())
                .await
                .map(drop),
        ));
    }
    for id in ["keep-1", held_id] {
        outcomes.push((format!("destroy {id}"), m.destroy_volume(id).await));
    }
    outcomes.push((
        "snapshot keep-2".into(),
        m.create_snapshot_as("keep-2", Some("snap-later"), Meta::new())
            .await
            .map(drop),
    ));
    for (what, r) in outcomes {
        match r {
            Ok(()) => panic!("{what} acknowledged on a poisoned journal"),
            Err(e) => assert!(
                journal_refused(&e, state_dir)
                    || (unavailable_too && matches!(e, ManagerError::ProviderUnavailable { .. })),
                "{what} is refused naming the poisoned journal: {e}"
            ),
        }
    }
    assert_eq!(m.stats().durable_seq, seq, "nothing journaled");
    assert_eq!(
        m.stats().syncs,
        syncs,
        "no refused operation writes or syncs the journal (no retry of a failed sync)"
    );
    assert_eq!(m.state().pending.len(), pending, "no intent applied");
    assert_eq!(m.state().volumes.len(), volumes, "nothing applied");
}

/// The provider's complete, tagged items (volume id to kind); panics on a
/// half-made or foreign item.
fn inventory(root: &Path) -> BTreeMap<String, VolumeKind> {
    let provider = DirProvider::new(root.to_owned()).expect("the provider opens");
    whole_inventory(&provider.inventory().expect("inventory"))
}

/// `volmgr journal verify STATE_DIR`: its exit code and output.
fn journal_verify(state_dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_volmgr"))
        .args(["journal", "verify"])
        .arg(state_dir)
        .output()
        .expect("run volmgr journal verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The device, the directories and what was acknowledged while healthy.
struct Rig {
    device: Device,
    state_dir: PathBuf,
    root: PathBuf,
    /// Holds the root with [`Layout::Apart`].
    _elsewhere: tempfile::TempDir,
    hold: Arc<Hold>,
    held: Held,
    content: BTreeMap<String, Tree>,
    acknowledged: BTreeSet<String>,
}

/// The manager with the held operation held inside the provider.
struct Running {
    m: Manager,
    held: tokio::task::JoinHandle<Result<(), ManagerError>>,
    release: mpsc::Sender<()>,
}

/// A manager on a healthy device: the provider added, volumes acknowledged
/// and filled, the `held` operation held inside the provider with its
/// intent durable.
async fn healthy(test: &str, layout: Layout, options: &str, held: Held) -> Option<(Rig, Running)> {
    let device = Device::with_options(test, options)?;
    let state_dir = device.mount_point().join("state");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = match layout {
        Layout::Apart => elsewhere.path().join("root"),
        Layout::Shared => device.mount_point().join("root"),
    };
    let (hold, entered, release) = Hold::new(held);
    let m = Manager::open(&state_dir, config(&hold))
        .await
        .expect("open");
    m.add_provider(
        PROVIDER,
        HELD_KIND,
        ProviderConfig::from([("root".to_owned(), root.display().to_string())]),
    )
    .await
    .expect("add the provider");
    let mut content: BTreeMap<String, Tree> = BTreeMap::new();
    for id in KEPT.iter().chain([&VICTIM]) {
        let v = m
            .create_volume(PROVIDER, Some(id), Meta::new())
            .await
            .expect("create while healthy");
        content.insert((*id).to_owned(), fill(Path::new(&v.location), id));
    }
    let acknowledged: BTreeSet<String> = m.state().volumes.keys().cloned().collect();
    let task = {
        let m = m.clone();
        tokio::spawn(async move {
            match held {
                Held::Create => m
                    .create_volume(PROVIDER, Some(HELD), Meta::new())
                    .await
                    .map(drop),
                Held::Destroy => m.destroy_volume(VICTIM).await,
            }
        })
    };
    tokio::task::spawn_blocking(move || entered.recv())
        .await
        .expect("no panic")
        .expect("the held operation reaches the provider");
    assert_eq!(
        m.state().pending.len(),
        1,
        "the held operation's intent is durable and applied"
    );
    let rig = Rig {
        device,
        state_dir,
        root,
        _elsewhere: elsewhere,
        hold,
        held,
        content,
        acknowledged,
    };
    let running = Running {
        m,
        held: task,
        release,
    };
    Some((rig, running))
}

/// What the failure phase saw.
struct Failed {
    held_error: String,
    refused: usize,
    first_error: String,
    held_side_effect: &'static str,
    marker_after_failure: bool,
    /// The journal's durable sequence number when the device failed.
    durable: u64,
    ext4_accepts_changes: bool,
    ext4_after_failure: String,
}

/// Fails the device's writes, runs the operations (`first` decides which
/// commit meets the failure), checks every one is refused, closes the
/// manager, and checks what the provider holds.
async fn fail_and_refuse(rig: &Rig, running: Running, layout: Layout, first: First) -> Failed {
    let Running { m, held, release } = running;
    let state_dir = &rig.state_dir;
    let durable_before = m.stats().durable_seq;
    rig.device.fail_writes();
    let release_held = || async {
        release.send(()).expect("the held create waits");
        held.await.expect("no panic")
    };
    if first == First::Aborted {
        abort_by_another_writer(&rig.device);
    }
    let (held_result, concurrent) = match first {
        First::Outcome | First::Aborted => {
            let r = release_held().await;
            (
                r,
                concurrent_operations(&m, rig.held.concurrent_destroy()).await,
            )
        }
        First::Intents => {
            let errors = concurrent_operations(&m, rig.held.concurrent_destroy()).await;
            (release_held().await, errors)
        }
    };
    let held_error = match held_result {
        Ok(v) => panic!("the held create was acknowledged after the device failed: {v:?}"),
        Err(e) => e,
    };
    match layout {
        Layout::Apart => assert!(
            journal_refused(&held_error, state_dir),
            "the held create's outcome commit is refused by the journal: {held_error}"
        ),
        // Its side effect and the provider's sync run on the failing device
        // too: refused by whichever fails first.
        Layout::Shared => assert!(
            journal_refused(&held_error, state_dir)
                || matches!(&held_error, ManagerError::ProviderUnavailable { provider, .. } if provider == PROVIDER),
            "the held create is refused by the journal or as provider unavailable: {held_error}"
        ),
    }
    for (what, e) in &concurrent {
        assert!(
            journal_refused(e, state_dir),
            "{what} is refused by the poisoned journal, naming the segment and the I/O error: {e}"
        );
    }
    assert_eq!(
        m.stats().durable_seq,
        durable_before,
        "nothing became durable after the device failed"
    );
    assert_eq!(
        m.state().pending.len(),
        1,
        "only the held create's intent is pending"
    );
    later_operations_are_refused(&m, state_dir, layout == Layout::Shared, rig.held.id()).await;
    let first_error = concurrent[0].1.to_string();
    m.close().await;

    let marker_after_failure = marker(state_dir).exists();
    // `/proc/mounts` says `rw` even once ext4 has aborted: ask it.
    let probe = std::fs::File::create(rig.device.mount_point().join("probe-after-failure"));
    let ext4_accepts_changes = probe.is_ok();
    let ext4_after_failure = format!(
        "{} in /proc/mounts, a new file {}",
        rig.device.mount_options(),
        probe.map_or_else(|e| format!("refused ({e})"), |_| "accepted".to_owned())
    );
    // The provider was asked for nothing after the failure but the held
    // create: on /tmp its side effect is there (and durable).
    let held_side_effect = if layout == Layout::Apart {
        let mut expected: BTreeMap<String, VolumeKind> = rig
            .acknowledged
            .iter()
            .map(|id| (id.clone(), VolumeKind::Data))
            .collect();
        match rig.held {
            Held::Create => expected.insert(HELD.to_owned(), VolumeKind::Data),
            Held::Destroy => expected.remove(VICTIM),
        };
        assert_eq!(
            inventory(&rig.root),
            expected,
            "the provider holds the acknowledged volumes and the held create's side effect, \
             nothing of the refused operations"
        );
        "done"
    } else {
        "on the failing device"
    };
    Failed {
        held_error: held_error.to_string(),
        refused: concurrent.len(),
        first_error,
        held_side_effect,
        marker_after_failure,
        durable: durable_before,
        ext4_accepts_changes,
        ext4_after_failure,
    }
}

/// `volmgr journal verify` while the device fails (reads still work): with
/// the `FAILED-COMMIT` marker, what the next open will stand on, not the
/// failed batch the page cache still returns
/// (`tests/journal_regression_tool_reads_a_failed_commit_as_open_will.rs`).
/// Without it (ext4 had aborted and refused to create it) the tool reads
/// the page cache's view until the remount that any open needs (the lock
/// file cannot be opened for writing) drops it: it exits 0 either way.
/// Returns the `open` row's verdict.
fn verify_reads_what_open_will(state_dir: &Path, failed: &Failed) -> String {
    let (code, verify) = journal_verify(state_dir);
    assert_eq!(code, 0, "verify reads a clean journal:\n{verify}");
    assert_eq!(
        verify.contains(&format!("failed\t{FAILED_COMMIT_FILE}\tdiscard\t")),
        failed.marker_after_failure,
        "verify shows the failed-commit marker when there is one:\n{verify}"
    );
    if failed.marker_after_failure {
        assert!(
            verify.contains(&format!("opens at seq {}\n", failed.durable))
                && verify.contains(", 1 pending,"),
            "verify stands where open will (seq {}, the held operation pending):\n{verify}",
            failed.durable
        );
    }
    let open = verify
        .lines()
        .find(|l| l.starts_with("open\t"))
        .and_then(|l| l.rsplit('\t').next())
        .unwrap_or("no open row")
        .to_owned();
    format!("{open} (durable {})", failed.durable)
}

/// Another writer on the device's file system meets the failure first: its
/// `syncfs` fails and ext4 aborts its journal (from then on it refuses every
/// change with `EROFS`, though `/proc/mounts` still says `rw`).
fn abort_by_another_writer(device: &Device) {
    let mount = device.mount_point();
    std::fs::write(mount.join("another"), b"another writer's file")
        .expect("a write to the page cache");
    let dir = std::fs::File::open(&mount).expect("open the mount point");
    // SAFETY: a valid descriptor, owned by `dir` for the call.
    let synced = unsafe { libc::syncfs(dir.as_raw_fd()) };
    assert_ne!(
        synced, 0,
        "another writer's syncfs fails on the failing device"
    );
    match std::fs::File::create(mount.join("probe")) {
        Ok(_) => panic!("ext4 still accepts changes after a failed syncfs"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "ext4 aborted its journal: {e}"
        ),
    }
}

fn marker(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL_DIR).join(FAILED_COMMIT_FILE)
}

/// Reopens the restored journal and checks the reconciliation; runs new
/// operations; checks the journal tool and the inventory. Returns a summary.
async fn reopen_reconciles(rig: &Rig, layout: Layout) -> String {
    let m = Manager::open(&rig.state_dir, config(&rig.hold))
        .await
        .expect("reopen once restored");
    assert!(
        !marker(&rig.state_dir).exists(),
        "no failed-commit marker is left after the open"
    );
    let report = m.reconcile_report();
    reconciled_whole(
        &m,
        &rig.content,
        (rig.held == Held::Destroy).then_some(VICTIM),
    );
    for id in failed_creates() {
        assert!(
            m.volume(&id).is_err(),
            "the refused create of {id} is not done"
        );
    }
    let held_after = match rig.held {
        Held::Create => match m.volume(HELD) {
            Ok(v) => {
                assert_eq!(v.status, VolumeStatus::Live, "{HELD} is live");
                "rolled forward"
            }
            Err(_) => "undone",
        },
        // Idempotent: finished whether or not its effect reached the disk.
        Held::Destroy => {
            assert!(
                m.volume(VICTIM).is_err(),
                "the held destroy is finished at the reopen"
            );
            "finished"
        }
    };
    if layout == Layout::Apart && rig.held == Held::Create {
        assert_eq!(
            held_after, "rolled forward",
            "the held create's durable side effect is rolled forward"
        );
    }
    let resolutions = report
        .resolutions
        .iter()
        .map(|(case, volume, _)| format!("{} {}", case.name(), volume.as_deref().unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        report.resolutions.len() == 1 && report.resolutions[0].1.as_deref() == Some(rig.held.id()),
        "exactly the held operation is resolved (a refused operation's intent is not replayed): \
         {resolutions}"
    );

    // New operations work, on the failed ones' ids too.
    for id in failed_creates()
        .into_iter()
        .chain((held_after == "undone").then(|| HELD.to_owned()))
        .chain((held_after == "finished").then(|| VICTIM.to_owned()))
    {
        m.create_volume(PROVIDER, Some(&id), Meta::new())
            .await
            .unwrap_or_else(|e| panic!("a create under the failed id {id}: {e}"));
    }
    let destroyed = rig.held.concurrent_destroy();
    m.destroy_volume(destroyed)
        .await
        .unwrap_or_else(|e| panic!("the destroy of {destroyed} that failed, again: {e}"));
    m.create_volume(PROVIDER, Some("after"), Meta::new())
        .await
        .expect("a new create");
    m.create_snapshot_as("keep-2", Some("snap-after"), Meta::new())
        .await
        .expect("a new snapshot");
    let state = m.state();
    m.close().await;

    // The journal tool agrees, and state and the inventory agree.
    let (code, verify) = journal_verify(&rig.state_dir);
    assert_eq!(code, 0, "volmgr journal verify passes:\n{verify}");
    let in_state = state_kinds(&state);
    assert_eq!(inventory(&rig.root), in_state, "state and inventory agree");
    format!(
        "{resolutions}, held {:?} {held_after}, pending 0, acknowledged lost 0, verify exit 0, \
         state and inventory agree ({} items)",
        rig.held,
        in_state.len()
    )
}

/// Runs one scenario; see the module doc.
async fn failed_journal_acknowledges_nothing_and_a_reopen_loses_nothing(
    test: &str,
    layout: Layout,
    first: First,
    held: Held,
) {
    let started = Instant::now();
    let Some((mut rig, running)) = healthy(test, layout, MOUNT_OPTIONS, held).await else {
        return;
    };
    let failed = fail_and_refuse(&rig, running, layout, first).await;

    // Reopened while the device still fails: refused, naming the file.
    let reopen_while_failing = match Manager::open(&rig.state_dir, config(&rig.hold)).await {
        Ok(m) => {
            let report = m.reconcile_report();
            m.close().await;
            panic!(
                "the manager opened on a journal whose device fails writes: {:?}",
                report.resolutions
            );
        }
        Err(e) => {
            let text = e.to_string();
            let mount = rig.device.mount_point();
            assert!(
                matches!(&e, ManagerError::Journal(JournalError::Io { path, .. }) if path.starts_with(&mount))
                    && (text.contains("Read-only file system")
                        || text.contains("Input/output error")),
                "open refuses naming a file on the failing device and the reason: {text}"
            );
            text
        }
    };

    let verify_while_failing = verify_reads_what_open_will(&rig.state_dir, &failed);

    // Restored: ext4 needs a remount (it aborted its journal).
    rig.device.restore();
    rig.device
        .unmount()
        .expect("unmount the failed file system");
    rig.device.mount().expect("mount the restored device");
    let marker_after_remount = marker(&rig.state_dir).exists();
    let after = reopen_reconciles(&rig, layout).await;
    rig.device.unmount().expect("unmount");
    println!(
        "journal device errors, provider {layout:?}, first failing commit {first:?}, held \
         {held:?}: acknowledged before {}, refused {} + the held operation ({}); first error: {}; \
         held operation's side effect \
         {}; FAILED-COMMIT after the failure {}, after the remount {marker_after_remount}; ext4 \
         after the failure: {}; verify while failing: {verify_while_failing}; reopen while \
         failing: {reopen_while_failing}; after restore and \
         remount: {after}; {:.1}s",
        rig.acknowledged.len(),
        failed.refused,
        failed.held_error,
        failed.first_error,
        failed.held_side_effect,
        failed.marker_after_failure,
        failed.ext4_after_failure,
        started.elapsed().as_secs_f64()
    );
}

/// A failure that heals without a remount (a path that comes back, a thin
/// pool that is extended): ext4 has not aborted (a failed data write-back
/// does not abort it, and nothing forced a commit of its journal: mounted
/// `commit=600` so that its periodic commit does not either), so the page
/// cache survives, and with it the failed batch: reads return its bytes
/// though they never reached the disk. The reopen must discard it (the
/// `FAILED-COMMIT` marker), or it would replay intents that were never
/// durable and build new records on bytes a power cut takes away.
async fn healed_in_place_discards_the_failed_batch(test: &str, first: First) {
    let started = Instant::now();
    let options = format!("{MOUNT_OPTIONS},commit=600");
    let Some((mut rig, running)) = healthy(test, Layout::Apart, &options, Held::Create).await
    else {
        return;
    };
    let failed = fail_and_refuse(&rig, running, Layout::Apart, first).await;
    assert!(
        failed.ext4_accepts_changes,
        "ext4 did not abort its journal: {}",
        failed.ext4_after_failure
    );
    // The marker names the failed batch; the page cache still returns it
    // (looked at before the tool runs: it drops the segment's clean cached
    // pages, as an open does, and the batch with them).
    let text =
        std::fs::read_to_string(marker(&rig.state_dir)).expect("the failed commit left its marker");
    let mut fields = text.split_whitespace();
    let (seq, offset): (u64, u64) = (
        fields.next().and_then(|s| s.parse().ok()).expect("seq"),
        fields.next().and_then(|s| s.parse().ok()).expect("offset"),
    );
    let segment = rig
        .state_dir
        .join(JOURNAL_DIR)
        .join(format::segment_file_name(seq));
    let bytes = std::fs::read(&segment).expect("read the segment");
    let cached = usize::try_from(offset).expect("offset fits");
    assert!(
        bytes[cached..].iter().take(64).any(|&b| b != 0),
        "the failed batch is readable from the page cache at offset {offset} of {}",
        segment.display()
    );
    let verify_while_failing = verify_reads_what_open_will(&rig.state_dir, &failed);
    rig.device.restore();
    let after = reopen_reconciles(&rig, Layout::Apart).await;
    // Durably: the same after the page cache is gone.
    rig.device.unmount().expect("unmount");
    rig.device.mount().expect("mount");
    let m = Manager::open(&rig.state_dir, config(&rig.hold))
        .await
        .expect("reopen after a remount");
    assert!(
        m.reconcile_report().resolutions.is_empty() && m.state().pending.is_empty(),
        "nothing left to decide"
    );
    for id in rig
        .acknowledged
        .iter()
        .map(String::as_str)
        .chain([HELD, "after"])
    {
        if id != VICTIM {
            assert!(m.volume(id).is_ok(), "{id} is durable");
        }
    }
    m.close().await;
    let (code, verify) = journal_verify(&rig.state_dir);
    assert_eq!(code, 0, "volmgr journal verify passes:\n{verify}");
    rig.device.unmount().expect("unmount");
    println!(
        "journal device errors, healed in place, first failing commit {first:?}: refused {} + the \
         held create ({}); failed batch at offset {offset} of {} still in the page cache; ext4 \
         after the failure: {}; verify while failing: {verify_while_failing}; after the reopen: \
         {after}; durable across a remount; {:.1}s",
        failed.refused,
        failed.held_error,
        segment.display(),
        failed.ext4_after_failure,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_outcome_commit_is_never_acknowledged_and_a_reopen_rolls_its_side_effect_forward()
{
    failed_journal_acknowledges_nothing_and_a_reopen_loses_nothing(
        "a_failed_outcome_commit_is_never_acknowledged_and_a_reopen_rolls_its_side_effect_forward",
        Layout::Apart,
        First::Outcome,
        Held::Create,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_intents_whose_commit_failed_are_never_acknowledged_and_a_reopen_loses_nothing()
{
    failed_journal_acknowledges_nothing_and_a_reopen_loses_nothing(
        "concurrent_intents_whose_commit_failed_are_never_acknowledged_and_a_reopen_loses_nothing",
        Layout::Apart,
        First::Intents,
        Held::Create,
    )
    .await;
}

/// The journal and the provider's root on one failing disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_and_provider_sharing_a_failing_disk_acknowledge_nothing_and_a_reopen_loses_nothing()
 {
    failed_journal_acknowledges_nothing_and_a_reopen_loses_nothing(
        "a_journal_and_provider_sharing_a_failing_disk_acknowledge_nothing_and_a_reopen_loses_nothing",
        Layout::Shared,
        First::Intents,
        Held::Create,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_healed_without_a_remount_discards_the_failed_intents_batch_at_reopen() {
    healed_in_place_discards_the_failed_batch(
        "a_failure_healed_without_a_remount_discards_the_failed_intents_batch_at_reopen",
        First::Intents,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_healed_without_a_remount_discards_the_failed_outcome_batch_at_reopen() {
    healed_in_place_discards_the_failed_batch(
        "a_failure_healed_without_a_remount_discards_the_failed_outcome_batch_at_reopen",
        First::Outcome,
    )
    .await;
}

/// The journal on a file system that another writer's failure made abort
/// its journal before the manager wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_on_a_file_system_another_writer_aborted_acknowledges_nothing_and_a_reopen_loses_nothing()
 {
    failed_journal_acknowledges_nothing_and_a_reopen_loses_nothing(
        "a_journal_on_a_file_system_another_writer_aborted_acknowledges_nothing_and_a_reopen_loses_nothing",
        Layout::Apart,
        First::Aborted,
        Held::Create,
    )
    .await;
}

/// The held operation is a destroy: its intent durable, the directory
/// removed, its outcome commit failed; the reopen finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_whose_outcome_commit_failed_is_never_acknowledged_and_a_reopen_finishes_it() {
    failed_journal_acknowledges_nothing_and_a_reopen_loses_nothing(
        "a_destroy_whose_outcome_commit_failed_is_never_acknowledged_and_a_reopen_finishes_it",
        Layout::Apart,
        First::Outcome,
        Held::Destroy,
    )
    .await;
}

/// A record of the journal alone (no manager): the test writes batches of
/// several pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec(String);

impl JournalRecord for Rec {
    fn kind(&self) -> u8 {
        0
    }
}

/// Records as an assertion shows them: a failed batch's 6000-byte ones cut
/// to their first bytes and length.
fn short(records: &[String]) -> Vec<String> {
    records
        .iter()
        .map(|r| match r.get(..8) {
            Some(head) if r.len() > 8 => format!("{head}... ({} bytes)", r.len()),
            _ => r.clone(),
        })
        .collect()
}

/// The records a journal handle replays at open, or why it refused.
fn open_journal(state_dir: &Path) -> Result<(Journal<Rec>, Vec<String>), JournalError> {
    let (journal, recovery) = Journal::<Rec>::open(state_dir, JournalConfig::default())?;
    let replayed = recovery.records.into_iter().map(|(_, r)| r.0).collect();
    Ok((journal, replayed))
}

/// The real attack behind
/// `tests/torture_regression_failed_commit_without_marker_is_read_from_disk.rs`.
/// The journal on an ext4 mounted `commit=600` (so that nothing commits
/// ext4's own journal while the device fails: it does not abort, the page
/// cache survives); the device fails writes during a batch's `fdatasync`
/// (a batch of several pages: a later append rewrites the page it shares
/// with the batch, so only pages wholly inside it can be lost); the process
/// that saw the failure dies before it writes anything else (its
/// `FAILED-COMMIT` marker removed, as if it had never been created: the
/// unlink stays in memory like the creation did); the device heals in place;
/// a new handle reopens (the failed `fdatasync` has already reported the
/// error, so a new descriptor's sync reports none), appends and
/// acknowledges records; then the page cache goes as a power cut takes it
/// (unmount, which writes what is dirty and drops every page, and mount).
/// Properties: the read-only reader and the reopen read the batch as the
/// disk holds it (not there); the journal opens after the remount with
/// every acknowledged record, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_whose_process_died_before_its_marker_is_read_from_disk_and_acknowledged_records_survive_the_page_cache()
 {
    let test = "a_failed_batch_whose_process_died_before_its_marker_is_read_from_disk_and_acknowledged_records_survive_the_page_cache";
    let started = Instant::now();
    let options = format!("{MOUNT_OPTIONS},commit=600");
    let Some(mut device) = Device::with_options(test, &options) else {
        return;
    };
    let state_dir = device.mount_point().join("state");
    let (journal, _) = open_journal(&state_dir).expect("opens on the healthy device");
    for r in ["a", "b"] {
        journal.append(&Rec(r.into())).await.expect("acknowledged");
    }
    let durable = journal.durable_seq();
    device.fail_writes();
    // Four records of 6000 bytes: about 24 KiB, pages wholly inside it.
    let batch: Vec<Rec> = (0..4)
        .map(|i| Rec(char::from(b'w' + i).to_string().repeat(6000)))
        .collect();
    let failed = journal
        .append_all(&batch)
        .await
        .expect_err("the commit fails");
    assert!(
        matches!(failed, JournalError::Poisoned { ref cause } if cause.contains("fdatasync")),
        "the batch's fdatasync failed: {failed}"
    );
    drop(journal);
    // The process dies before its marker: none is left.
    std::fs::remove_file(marker(&state_dir)).expect("the failed commit left its marker");
    let segment = state_dir
        .join(JOURNAL_DIR)
        .join(format::segment_file_name(1));
    let cached = std::fs::read(&segment).expect("read the segment");
    let batch_text = "x".repeat(6000);
    assert!(
        cached
            .windows(batch_text.len())
            .any(|w| w == batch_text.as_bytes()),
        "the failed batch is readable from the page cache"
    );
    device.restore();

    // What the read-only reader (the tool's) makes of it now.
    let mut tool = Vec::new();
    let read = volmgr::journal::reader::read_log::<Rec>(&RealStorage, &state_dir, |_, r| {
        tool.push(r.0);
    })
    .expect("the reader reads");
    let tool_end = read.walked.verdict.clone();
    // A new handle in the same boot reopens and acknowledges more.
    let (journal, replayed) = open_journal(&state_dir).expect("reopens once restored");
    let mut acknowledged: Vec<String> = replayed.clone();
    for r in ["c", "d"] {
        journal.append(&Rec(r.into())).await.expect("acknowledged");
        acknowledged.push(r.into());
    }
    journal.close().await;

    // The page cache goes, as a power cut takes it.
    device.unmount().expect("unmount");
    device.mount().expect("mount");
    let after = open_journal(&state_dir).map(|(_, records)| records);
    println!(
        "journal device errors, a failed batch whose process died before its marker: the tool \
         read {} records ({tool_end:?}), the reopen replayed {} (durable {durable}), acknowledged \
         after it {:?}; after a remount: {}; {:.1}s",
        tool.len(),
        replayed.len(),
        &acknowledged[replayed.len()..],
        match &after {
            Ok(records) => format!("opens with {} records", records.len()),
            Err(e) => format!("refuses to open: {e}"),
        },
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        short(&tool),
        ["a", "b"],
        "the tool reads what the disk holds"
    );
    assert_eq!(
        short(&replayed),
        ["a", "b"],
        "the failed batch is not replayed"
    );
    assert_eq!(
        short(&after.expect("opens after the page cache went")),
        ["a", "b", "c", "d"],
        "every acknowledged record, in order"
    );
    device.unmount().expect("unmount");
}
