//! The btrfs provider: volumes are subvolumes, snapshots are read-only
//! snapshots, forks are writable snapshots of a snapshot, transfers are
//! `btrfs send` / `btrfs receive` streams.
//!
//! # Configuration
//!
//! `root` (required): an absolute directory inside a mounted btrfs file system
//! (checked with `statfs`, magic `0x9123683E`). It is created if missing, but
//! only when its parent is already on btrfs (so an unmounted file system is an
//! error, not a directory silently made on the disk below it). Its path
//! (the mount point and every directory above it on the way) must be one no
//! other user can change, the walk of `fsutil::trust` a `dir` root passes:
//! else [`ProviderError::InvalidConfig`], before anything is created, on
//! every open. A root the provider creates is 0700, and so are `data/`,
//! `snapshot/` and `.volmgr/` (with `stage/` and `trash/`), tightened at
//! every open if an older version left them 0755: no other user lists or
//! reads a volume through the host path (containers reach it through the
//! bind mount root makes). Everything the provider owns lives under it:
//!
//! ```text
//! <root>/data/<id>/tag          ownership tag of data volume <id>
//! <root>/data/<id>/vol          its subvolume (writable): the volume's location
//! <root>/snapshot/<id>/tag      ownership tag of snapshot <id>
//! <root>/snapshot/<id>/vol      its read-only subvolume: the snapshot's location
//! <root>/.volmgr/provider       the root marker: the agent the root belongs to
//! <root>/.volmgr/lock           the root's lock, held by the agent running on it
//! <root>/.volmgr/stage/<op>/    an item being built by operation <op>
//! <root>/.volmgr/trash/<name>/  removed from the namespace, being deleted
//! ```
//!
//! Every item is a plain *container* directory holding a `tag` file and a
//! `vol` subvolume. A container is built under `stage/<op>` and renamed into
//! place (`renameat2(RENAME_NOREPLACE)`), so an item in `data/` or
//! `snapshot/` appears at once with its tag; and it leaves the namespace by a
//! rename into `trash/`. The container is a plain directory even around a
//! read-only snapshot, which is what makes the rename possible: btrfs refuses
//! to move a read-only subvolume to another directory (`EROFS`), but moving
//! the writable directory above it is fine.
//!
//! # The root's owner
//!
//! A root belongs to one agent (one state directory). A provider built by a
//! manager ([`BtrfsProvider::for_owner`]) knows that agent's identity
//! ([`AgentId`]) and claims the root before anything under it is touched
//! (no directory made, no trash purged): the root marker
//! `<root>/.volmgr/provider` names it, byte for byte (81 bytes):
//!
//! ```text
//! volmgr btrfs provider root (format 1)\n
//! owner <agent id: 36 bytes, lowercase hyphenated UUID>\n
//! ```
//!
//! A marker naming this agent goes on; one naming another agent is refused
//! ([`ProviderError::ForeignRoot`]: two agents on one root would each take
//! the other's items for orphans and purge the other's stage and trash); a
//! damaged one is refused naming the file. A root without a marker (new, or
//! used by a volmgr from before owners, when one agent could only have meant
//! itself) gets one: written like a tag (temp file, write-back, rename),
//! then the btrfs transaction committed. A provider built without an owner
//! ([`BtrfsProvider::new`]: tools and tests outside a manager) neither
//! checks nor writes it. Handing a root to another agent is the operator's
//! deliberate act: README, "Handing a provider root to another agent".
//!
//! The claim runs under the root's lock, so two agents starting together
//! on a root without a marker cannot both read "none" and both claim it:
//! an exclusive `flock` ([`crate::fsutil::hold_lock`]) on `.volmgr/lock`
//! (empty, mode 0600, created without following a symlink, never renamed:
//! the marker is replaced by rename, so it cannot carry the lock), taken
//! before the marker is judged and held until the provider and all its
//! clones are dropped. Held by another agent: [`ProviderError::RootInUse`],
//! nothing changed. A marker naming another agent is refused before the
//! lock file is made, and judged again under the lock.
//!
//! # Ownership tags
//!
//! The tag is the one-line file `tag`: `volume=<id> op=<uuid> kind=<data|snapshot> parent=<id|->`,
//! written temp + write-back + rename, with no sync (see "Durability": its
//! content enters the running transaction first). Extended attributes on
//! the subvolume root are not used on purpose: they travel with the data, so
//! every snapshot, fork and *received copy* (send streams carry xattrs) would
//! inherit a tag that lies about which volume it is; a read-only snapshot
//! cannot be tagged after creation; and a received snapshot cannot be made
//! writable to tag it without btrfs dropping its received UUID (which
//! incremental receives need). A tag file beside the subvolume has none of
//! these problems. An item is *ours* only if its container holds a valid tag
//! naming the container's own id and kind; anything else under the root
//! (untagged containers, bare subvolumes, files, other top-level entries) is
//! *foreign*: reported, never touched.
//!
//! # Complete, incomplete, absent
//!
//! For [`Provider::inventory`]:
//! - **Complete**: a tagged container in place whose `vol` is a subvolume
//!   (read-only for a snapshot) and whose operation has no stage left.
//! - **Incomplete**: a tagged container still under `stage/<op>` (the
//!   operation died before renaming it into place; it is reported with its
//!   final location); a snapshot in place that is not read-only; a received
//!   snapshot in place whose receive has not committed (its `stage/<op>` still
//!   exists: see below). [`Provider::finish`] completes a staged create,
//!   snapshot or fork and makes a writable snapshot read-only; an interrupted
//!   receive cannot be finished and is undone by reconciliation.
//! - **Absent**: no container, or a tagged container without its `vol`
//!   subvolume (the subvolume was deleted, by us in a destroy that died before
//!   removing the container, or behind our back: a live volume in that state
//!   is reported lost, not half-made). Such stale containers are replaced by a
//!   later create of the same id and removed by [`Provider::destroy`].
//!
//! # Verbs
//!
//! - create / snapshot / fork: stage `tag`, then `btrfs subvolume create`, or
//!   `snapshot <root>/data/<src>/vol` made read-only after
//!   (`BTRFS_IOC_SUBVOL_SETFLAGS`: a writable snapshot drops a received UUID
//!   the volume's owner may have set from inside it, which a read-only one
//!   would keep as its identity), or `snapshot <root>/snapshot/<s>/vol`,
//!   into `stage/<op>/vol`; rename into place. Idempotent: the same
//!   op finds its item in place (done) or its stage (finished); another op
//!   gets `AlreadyExists`.
//! - destroy: if the volume holds nested subvolumes, the limit of its
//!   capacity group `1/<subvolume id>` lifted (module `quota`: deleting
//!   them needs room in the volume), then `btrfs subvolume delete` of `vol` (retried a few times
//!   while busy, then [`ProviderError::Busy`], the limit set again), then
//!   the group removed (members first), then the container goes to trash.
//!   Every deletion (a receive's old content, the trash) does the same. A
//!   process killed after the lift leaves the volume unlimited with its
//!   destroy intent pending, which reconciliation runs again; killed
//!   after the deletion, an empty group with a limit, charged nothing
//!   (the deleted subvolume's qgroup leaves it when btrfs drops it): should
//!   btrfs give that id to a new subvolume after a remount, the group is
//!   taken over by its first capacity (members and limit set anew). Succeeds if absent; refuses an untagged item. A snapshot with
//!   forks can be deleted without harm (btrfs forks are independent
//!   copy-on-write subvolumes); refusing it is the manager's job.
//! - send: `btrfs send [-p <base>/vol] <snapshot>/vol` streamed to the writer.
//! - receive: like `zfs recv -F`. `btrfs receive --chroot stage/<op>/in` from
//!   the reader, through the disk guard ("A receive cannot fill the
//!   disk": each command is charged before it passes, and a shortfall
//!   kills `btrfs receive`); an incremental stream finds its parent by
//!   received UUID, which is why received snapshots are never moved or
//!   made writable. Check
//!   that exactly one read-only subvolume with a received UUID arrived; rename
//!   it to `in/vol` (same directory) and tag `in`; make a writable snapshot of
//!   it, give it the target's capacity (a group of its own with the same
//!   limit: module `quota`) and *exchange* it with the target's `vol`
//!   (`RENAME_EXCHANGE`, atomic);
//!   rename `in` to `snapshot/<id>`; `syncfs`; commit by moving `stage/<op>` to
//!   trash; delete the old target content. The target's path stays
//!   the same; processes holding files of the old content open keep reading
//!   the old content. If anything fails or the process dies before the commit,
//!   [`Provider::abort_partial`] exchanges the target's old content back, so a
//!   failed receive leaves the target as it was.
//!
//! # A receive cannot fill the disk
//!
//! Every byte of a received stream is hostile, and the file system it
//! lands on holds every other volume. The stream passes through a guard
//! (module `stream`, [`StreamGuard`]) on its way into `btrfs receive`: its
//! header (magic, version 1 to 3), then one command at a time, read whole
//! into a buffer of fixed size (a command is at most 64 KiB in version 1
//! and 144 KiB from version 2, the most `btrfs receive` reads; nothing is
//! allocated from a length in the stream). Each command is charged an upper
//! bound of the free space btrfs may use for it ([`command_charge`])
//! *before any byte of it passes* (`btrfs receive` runs no command before
//! it has all of it):
//!
//! - 2 KiB of metadata for the command, and 12 bytes for each byte of its
//!   attributes other than `DATA`: the items one command adds (inode item
//!   and ref, directory item and index entry, file extent item and back
//!   reference, checksum item) are under 512 bytes with their leaf headers,
//!   a name is stored at most three times, and each is counted twice for
//!   DUP metadata (the default on one device) and twice again for leaves
//!   only half full;
//! - `WRITE`: the whole blocks (the file system's sector size, at least
//!   4 KiB) its data touches, so one byte in each block costs the block;
//!   `ENCODED_WRITE`: the blocks of the larger of its data and its
//!   unencoded file length (`btrfs receive` writes that much if it falls
//!   back to decompressing; an unencoded length over 128 KiB is refused);
//!   `FALLOCATE`: the blocks of its range (the send-stream v2 command
//!   `btrfs receive` 6.2 runs as `fallocate(2)`: a command of under 50
//!   bytes would otherwise reserve all the free space), nothing if it punches a hole;
//!   `CLONE`: one block (an inline extent the kernel copies) and the
//!   metadata of one extent per block of its length (it shares data, it
//!   allocates none); and for all those blocks an eighth more, for their
//!   extent items and checksums;
//! - every other command allocates metadata only (`TRUNCATE` makes a hole,
//!   `btrfs receive` ignores `UPDATE_EXTENT`, removals free space).
//!
//! Refused as [`ProviderError::Stream`] (502): `ENABLE_VERITY` (its Merkle
//! tree grows with the file's length, holes included, which a `TRUNCATE`
//! sets at will), unknown commands and attributes, an attribute twice in a
//! command (the guard and `btrfs receive` must read the same values), a
//! missing or mis-sized attribute the charge needs, a command longer than
//! `btrfs receive` reads, a stream that ends before its `END` command or
//! goes on after it.
//!
//! Charges are granted by windows of 8 MiB (a larger command is its own
//! window). Before each, with a reserve of 2% of the file system (the `dir`
//! provider's rule), both must hold: (1) what this receive was granted,
//! the new window, and what the provider's other receives in progress were
//! granted fit the free bytes `fstatvfs` of the root reported when this
//! receive began, less the reserve; (2) the free bytes now, less the
//! reserve, hold the window. Rule (1) is the bound: btrfs's `statvfs` does
//! not count data still in the page cache (150 MiB written and not yet
//! written back left the free space unchanged, measured), so the free space
//! seen during a receive lags its writes; rule (2) sees what others wrote
//! and was written back meanwhile. A shortfall stops the pump, kills
//! `btrfs receive`, and the receive fails with [`ProviderError::NoSpace`]
//! (HTTP 507) naming the bytes charged, free and reserved; its stage is
//! undone like any failed receive's ([`Provider::abort_partial`]: the
//! target keeps its content, the stage goes to trash and is deleted). An
//! `ENOSPC` or `EDQUOT` that `btrfs receive` reports is `NoSpace` as well.
//!
//! Not bounded: writes by others during a receive (tenants in their
//! volumes, within their capacities; other users of the file system) as
//! far as `statvfs` does not show them yet, at the receive's start as
//! later; metadata profiles keeping more than two copies (`raid1c3`,
//! `raid1c4`), which cost more than the allowance. The charges are upper
//! bounds, not estimates: data is charged an eighth more than it takes,
//! and a tree of many small files several times its size, so a receive
//! that would just fit may be refused.
//!
//! # Identities (haves)
//!
//! `details[guid]` of a snapshot is the UUID `btrfs send` writes into streams
//! for it: its received UUID if it has one, else its own UUID. So a sender's
//! snapshot GUID equals the GUID of the snapshot received from it, on any
//! host, and chains (A sends to B, B sends on to C) keep the identity.
//!
//! # Inventory cost
//!
//! One directory scan of `data/`, `snapshot/` and `stage/`, one small file
//! read per tag, and one `BTRFS_IOC_GET_SUBVOL_INFO` ioctl per subvolume
//! (UUIDs, read-only flag): no process is started, whatever the number of
//! volumes. The subvolume test is `st_ino == 256` (every subvolume root has
//! that inode number). [`Provider::lookup`] of one id reads the stage and
//! the id's two possible containers only, judged by the inventory's rule.
//!
//! # Durability
//!
//! [`Durability::Batched`]: verbs return with their changes in the running
//! btrfs transaction, and [`Provider::sync`] commits that transaction
//! (`BTRFS_IOC_START_SYNC` + `BTRFS_IOC_WAIT_SYNC` on the root's descriptor,
//! held since open: module `commit`); the manager runs one for all the
//! operations whose outcomes go into the next journal commit. A commit
//! writes metadata only, not file data still in the page cache: a tenant's
//! buffered writes stay the tenant's to `fsync`, so a tenant writing flat
//! out does not make each round wait for its data (`syncfs` rounds did:
//! 0.2–5 s each, measured; `batch_sync = syncfs` keeps them, for
//! comparison or for an operator who wants them).
//!
//! The argument is the *transaction prefix*. Without `fsync`, btrfs persists
//! metadata only by committing whole transactions, in order; a power cut
//! leaves the state of the last committed one. The provider never `fsync`s
//! (an `fsync` writes the log tree and can make one file's change durable
//! ahead of earlier changes), so after a power cut the provider's namespace
//! holds a *prefix* of the steps of its verbs, in the order they ran. File
//! *data* is the exception: a commit does not include data still in the
//! page cache (unless mounted `flushoncommit`); the provider writes two
//! kinds of data, tags and received streams, and orders each below. Per verb,
//! what runs without syncs, what a power cut before the batched sync can
//! leave (every case is then resolved by reconciliation, since the outcome
//! was not journaled), and what the batched sync makes durable:
//!
//! - **tags**: written, written back (`sync_file_range`, no flush), renamed:
//!   the content is in the transaction before any later step, so a
//!   container that reached the disk has its whole tag.
//! - **create / snapshot / fork**: stage + tag, subvolume (a snapshot
//!   commits a transaction by itself, after the kernel wrote back the
//!   source's dirty data, so a snapshot holds a tenant's unsynced writes
//!   made before it; a create does not commit on recent kernels),
//!   rename into place. A power cut leaves nothing or an untagged stage (no
//!   item: aborted), a tagged stage (incomplete: finished or aborted), or
//!   the item in place with tag and subvolume (complete). The batched sync
//!   makes the item in place durable.
//! - **destroy**: subvolume deletion (no `--commit-after`), container to
//!   trash. A power cut leaves the item complete (destroyed again), a stale
//!   container (absent) or trash (purged at the next start). The batched
//!   sync makes the deletion durable.
//! - **receive**: everything up to placing the snapshot is metadata, except
//!   the received files' data, which `btrfs receive` writes through the
//!   page cache: one `syncfs` *inside* the verb (on the held descriptor,
//!   which sees every write-back error since open) writes it back and commits
//!   before the commit point (moving the stage to trash), so a committed
//!   receive never has missing content. Before it, a power cut leaves the
//!   stage, which [`Provider::abort_partial`] undoes (exchanging the
//!   target's old content back). The batched sync makes the commit point
//!   and the deletion of the old content durable.
//! - **`abort_partial`** (undo of a receive): the exchange back, then the
//!   stage to trash, with no sync between: a transaction holding the latter
//!   holds the former. **finish** (making a snapshot read-only, or a staged
//!   create) and **`set_capacity`** (qgroup create, assign and limit
//!   ioctls, in the running transaction, which it commits once to read the
//!   qgroup's numbers) are made durable by the batched sync as well (reconciliation
//!   syncs each provider it touched before journaling its resolutions).
//! - **send** changes nothing.
//!
//! An `fsync` by someone else (a user inside a volume, the journal if it
//! shares the file system) logs its own inodes and their new parent
//! entries, none of the provider's, or falls back to committing the whole
//! transaction, which keeps the prefix.
//!
//! # Limits
//!
//! Any user who may write a directory may create a subvolume there, so a
//! tenant can nest subvolumes *inside* its volume (`nested.rs`). btrfs
//! deletes no subvolume holding another, and a snapshot holds an empty
//! directory in place of each: a destroy (and the purge of a receive's old
//! content, or of the trash) deletes them first, by id through the root's
//! descriptor, never by a path inside the volume; a snapshot or fork of a
//! volume holding one is refused (`UnsupportedContent`, HTTP 409
//! `unsupported_content`), so none is silently left out of a snapshot or a
//! transfer. A capacity bounds them: it is a limit on the volume's level-1
//! qgroup `1/<subvolume id>`, of which, under *simple quotas* (Linux 6.7
//! and later; the provider enables them when it opens a file system
//! whose quotas are off), the kernel makes every subvolume nested in the
//! volume a member (module `quota`; before, with the limit on the
//! volume's own qgroup, 20 MiB were written in a nested subvolume of a
//! volume limited to 1 MiB). Where the kernel cannot do it, it is said:
//! full quotas already enabled (kept, never switched) or a kernel without
//! simple quotas bound only the subvolumes nested when the capacity was
//! set (a warning at open and at each capacity); and a tenant that gives
//! its own qgroup inheritance list when it creates a subvolume
//! (`btrfs subvolume create -i`) places it outside until the next capacity
//! set on the volume moves it back: only the container runtime can
//! forbid that (a seccomp filter on the subvolume-creating ioctls).
//! The owner of a subvolume's root may also make it read-only (no
//! capability needed), and btrfs neither deletes a subvolume inside a
//! read-only one nor moves a read-only subvolume to another directory
//! (`EROFS`): the deletion of nested subvolumes makes a read-only parent
//! writable (opened by its file handle, by id: `nested.rs`), and a receive
//! makes the target's content writable before exchanging it, and both
//! contents before an undo exchanges them back (`exchange_subvolumes`). The
//! flag was the tenant's, on content being replaced or deleted.
//! A tag is inline metadata only while it fits `max_inline` (default 2048
//! bytes; a tag is about 120): on a file system mounted `max_inline=0` its
//! extent is recorded when the write completes, which a racing commit may
//! miss, so a power cut could leave a staged or placed container with an
//! empty tag (reported foreign, never destroyed). A receive's `syncfs`
//! writes back every dirty file of the file system, users' data included
//! (so does every round with `batch_sync = syncfs`). The provider holds
//! its root open: unmounting the file system while a manager has the
//! provider open fails (`EBUSY`).
//!
//! `batch_sync` (optional): `commit` (the default) or `syncfs`, as above;
//! anything else is refused.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::cmd::Cmd;
use super::{
    Created, Durability, Found, Presence, Provider, ProviderConfig, ProviderError, ProviderFactory,
    SendOptions, SendStats, StreamIdentity, Tag, VolumeRef, VolumeSpec,
};
use crate::fsutil;

mod commit;
mod inventory;
mod make;
mod nested;
mod owner;
mod quota;
mod receive;
pub mod stream;
mod subvol;
mod tag;
mod trash;

use crate::fsutil::rename2;
use crate::model::{AgentId, DETAIL_GUID, Details, OpId, VolumeId, VolumeKind};
pub use commit::BatchSync;
/// The parser of a `btrfs send` stream's first command, which a receive
/// reads from the peer before anything runs (exposed for the fuzz target
/// `btrfs_stream_header`), and how many bytes of the stream it is given.
pub use receive::{STREAM_HEAD_LEN, stream_identity};
/// The guard of a received stream's commands (exposed for the fuzz target
/// `btrfs_stream_commands`; module doc, "A receive cannot fill the disk").
pub use stream::{StreamGuard, command_charge};
use subvol::is_subvolume;
pub use subvol::{SubvolInfo, fs_type, subvol_info};
use tag::{check_id, read_tag, write_tag};

pub const KIND: &str = "btrfs";
/// Configuration key of the root directory.
pub const CONFIG_ROOT: &str = "root";
/// Configuration key of what the batched sync runs ([`BatchSync`]:
/// `commit`, the default, or `syncfs`).
pub const CONFIG_BATCH_SYNC: &str = "batch_sync";
/// `statfs` magic of btrfs.
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

const TAG_FILE: &str = "tag";
const VOL: &str = "vol";
const META_DIR: &str = ".volmgr";
/// Inode number of every subvolume root.
const SUBVOL_ROOT_INO: u64 = 256;
/// Attempts of a `subvolume delete` that reports the subvolume busy.
const BUSY_ATTEMPTS: u32 = 5;
const MAX_TAG_BYTES: u64 = 4096;

/// The btrfs provider. See the module documentation.
#[derive(Debug, Clone)]
pub struct BtrfsProvider {
    root: PathBuf,
    program: String,
    /// The root's descriptor, held for every sync (see `commit`).
    handle: Arc<commit::Root>,
    batch_sync: BatchSync,
    /// The root's lock, held as long as the provider (and every clone of
    /// it) lives; `None` without an owner (see "The root's owner").
    root_lock: Option<Arc<crate::fsutil::HeldLock>>,
    /// What the receives in progress were granted of the free space
    /// (shared by clones: "A receive cannot fill the disk").
    receiving: Arc<stream::Ledger>,
}

fn kind_dir(kind: VolumeKind) -> &'static str {
    match kind {
        VolumeKind::Data => "data",
        VolumeKind::Snapshot => "snapshot",
    }
}

fn stderr_text(e: &ProviderError) -> String {
    match e {
        ProviderError::Command { stderr, .. } => stderr.clone(),
        other => other.to_string(),
    }
}

// The directories the provider keeps under its root (`data/`, `snapshot/`,
// `.volmgr/` with `stage/` and `trash/`) and a root it creates are
// `PRIVATE_DIR_MODE`, made with `make_private_dir`.
use super::{PRIVATE_DIR_MODE, make_private_dir};

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ProviderError {
    let context = context.into();
    move |e| ProviderError::io(context, e)
}

/// What sits at an item's place in `data/` or `snapshot/`.
enum InPlace {
    Absent,
    /// Tagged; `has_vol` tells whether its subvolume exists.
    Ours {
        tag: Tag,
        has_vol: bool,
    },
    Foreign,
}

impl BtrfsProvider {
    /// Opens (and prepares) the provider at `root`, its batched sync a
    /// transaction commit. See the module doc.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, ProviderError> {
        Self::with_batch_sync(root, BatchSync::default())
    }

    /// [`BtrfsProvider::new`] with the batched sync `batch_sync`.
    pub fn with_batch_sync(
        root: impl Into<PathBuf>,
        batch_sync: BatchSync,
    ) -> Result<Self, ProviderError> {
        Self::open(root.into(), batch_sync, None)
    }

    /// Opens the provider; with an `owner`, claims the root for it before
    /// anything under the root is touched (see "The root's owner").
    fn open(
        root: PathBuf,
        batch_sync: BatchSync,
        owner: Option<AgentId>,
    ) -> Result<Self, ProviderError> {
        if !root.is_absolute() {
            return Err(ProviderError::InvalidConfig(format!(
                "btrfs root {} is not an absolute path",
                root.display()
            )));
        }
        let on_btrfs = |p: &Path| -> Result<(), ProviderError> {
            let t = fs_type(p).map_err(io_err(format!("statfs {}", p.display())))?;
            if t != BTRFS_SUPER_MAGIC {
                return Err(ProviderError::InvalidConfig(format!(
                    "{} is not on a btrfs file system (statfs type {t:#x}); is it mounted?",
                    p.display()
                )));
            }
            Ok(())
        };
        // Before anything is created or read there: the root, the mount
        // point and every ancestor must be beyond other users' reach, as a
        // `dir` root's are (the agent, as root, creates and deletes
        // subvolumes there). Again once made: what was missing may have
        // been made by another user meanwhile (in a sticky parent).
        super::refuse_untrusted_root("btrfs root", &root)?;
        if !root.exists() {
            let parent = root.parent().ok_or_else(|| {
                ProviderError::InvalidConfig(format!("btrfs root {} has no parent", root.display()))
            })?;
            on_btrfs(parent)?;
            make_private_dir(&root, false)?;
            super::refuse_untrusted_root("btrfs root", &root)?;
        }
        on_btrfs(&root)?;
        let handle =
            commit::Root::open(&root).map_err(io_err(format!("open {}", root.display())))?;
        let mut provider = BtrfsProvider {
            root,
            program: "btrfs".into(),
            handle: Arc::new(handle),
            batch_sync,
            root_lock: None,
            receiving: Arc::default(),
        };
        provider
            .btrfs()
            .arg("--version")
            .run()
            .map_err(|e| ProviderError::InvalidConfig(format!("btrfs-progs is not usable: {e}")))?;
        if let Some(owner) = owner {
            provider.root_lock = Some(Arc::new(provider.claim_root(owner)?));
        }
        for dir in [
            provider.root.join("data"),
            provider.root.join("snapshot"),
            provider.stage_root(),
            provider.trash_root(),
        ] {
            make_private_dir(&dir, true)?;
        }
        // Ours (the root is claimed): made private however an older
        // version left them (README, "State directory").
        make_private_dir(&provider.root.join(META_DIR), true)?;
        if let Err(e) = provider.refuse_unsafe_mount() {
            tracing::warn!(error = %e, "receives into this btrfs provider are refused");
        }
        provider.prepare_quotas();
        provider.purge_trash();
        Ok(provider)
    }

    /// Receives need the file system mounted `nosuid,nodev`: `btrfs receive`
    /// (run as root) recreates the setuid bits and device nodes a stream
    /// describes, which volmgr does not parse, so only the mount options
    /// make them harmless. volmgr does not mount btrfs itself; the operator
    /// does, and is told here.
    fn refuse_unsafe_mount(&self) -> Result<(), ProviderError> {
        let flags = crate::fsutil::mount_flags(&self.root)
            .map_err(io_err(format!("statvfs {}", self.root.display())))?;
        let missing: Vec<&str> = [(libc::ST_NOSUID, "nosuid"), (libc::ST_NODEV, "nodev")]
            .into_iter()
            .filter(|(bit, _)| flags & bit == 0)
            .map(|(_, name)| name)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ProviderError::InvalidConfig(format!(
            "the btrfs file system holding {} is mounted without {}: a received stream could \
             plant setuid executables or device nodes; remount it with -o nosuid,nodev",
            self.root.display(),
            missing.join(",")
        )))
    }

    /// Builds the provider from its journaled configuration. No owner:
    /// see [`BtrfsProvider::for_owner`].
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let (root, batch_sync) = Self::parse_config(config)?;
        Self::with_batch_sync(root, batch_sync)
    }

    /// [`BtrfsProvider::from_config`] for the agent `owner` (what the
    /// manager's factory builds): the root is claimed for `owner`, and a
    /// root another agent owns is refused with
    /// [`ProviderError::ForeignRoot`] before anything under it is touched.
    pub fn for_owner(config: &ProviderConfig, owner: &AgentId) -> Result<Self, ProviderError> {
        let (root, batch_sync) = Self::parse_config(config)?;
        Self::open(PathBuf::from(root), batch_sync, Some(*owner))
    }

    fn parse_config(config: &ProviderConfig) -> Result<(&str, BatchSync), ProviderError> {
        let root = config.get(CONFIG_ROOT).ok_or_else(|| {
            ProviderError::InvalidConfig(format!("btrfs provider needs {CONFIG_ROOT:?}"))
        })?;
        if let Some(k) = config
            .keys()
            .find(|k| k.as_str() != CONFIG_ROOT && k.as_str() != CONFIG_BATCH_SYNC)
        {
            return Err(ProviderError::InvalidConfig(format!(
                "unknown btrfs configuration key {k:?} (the btrfs provider takes \
                 {CONFIG_ROOT:?} and {CONFIG_BATCH_SYNC:?})"
            )));
        }
        let batch_sync = match config.get(CONFIG_BATCH_SYNC) {
            None => BatchSync::default(),
            Some(v) => BatchSync::parse(v).ok_or_else(|| {
                ProviderError::InvalidConfig(format!(
                    "{CONFIG_BATCH_SYNC} {v:?}: not \"commit\" or \"syncfs\""
                ))
            })?,
        };
        Ok((root.as_str(), batch_sync))
    }

    /// The factory of kind `btrfs`.
    pub fn factory() -> ProviderFactory {
        Arc::new(|config: &ProviderConfig, owner: &AgentId| {
            Ok(Arc::new(BtrfsProvider::for_owner(config, owner)?) as Arc<dyn Provider>)
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn btrfs(&self) -> Cmd {
        Cmd::new(&self.program)
    }

    fn stage_root(&self) -> PathBuf {
        self.root.join(META_DIR).join("stage")
    }

    fn trash_root(&self) -> PathBuf {
        self.root.join(META_DIR).join("trash")
    }

    fn stage(&self, op: OpId) -> PathBuf {
        self.stage_root().join(op.to_string())
    }

    /// `<root>/<data|snapshot>/<id>`.
    pub fn container(&self, kind: VolumeKind, id: &str) -> PathBuf {
        self.root.join(kind_dir(kind)).join(id)
    }

    /// The subvolume (location) of an item.
    pub fn location(&self, kind: VolumeKind, id: &str) -> PathBuf {
        self.container(kind, id).join(VOL)
    }

    fn in_place(&self, kind: VolumeKind, id: &str) -> InPlace {
        let place = self.container(kind, id);
        match fs::symlink_metadata(&place) {
            Err(_) => InPlace::Absent,
            Ok(m) if !m.is_dir() => InPlace::Foreign,
            Ok(_) => match read_tag(&place) {
                Some(tag) if tag.volume == id && tag.kind == kind => InPlace::Ours {
                    tag,
                    has_vol: is_subvolume(&place.join(VOL)),
                },
                _ => InPlace::Foreign,
            },
        }
    }

    fn created(&self, kind: VolumeKind, id: &str) -> Result<Created, ProviderError> {
        let location = self.location(kind, id);
        let mut details = Details::new();
        if kind == VolumeKind::Snapshot {
            let info = subvol_info(&location)?;
            details.insert(DETAIL_GUID.into(), info.guid().to_string());
        }
        Ok(Created {
            location: location.to_string_lossy().into_owned(),
            details,
        })
    }

    fn foreign(path: &Path) -> Found {
        let name = path.to_string_lossy().into_owned();
        Found {
            name: name.clone(),
            tag: None,
            presence: Presence::Complete,
            location: name,
            details: Details::new(),
            partial: None,
        }
    }
}

impl Provider for BtrfsProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// Batched: verbs leave their changes in the running btrfs transaction
    /// (module doc, "Durability").
    fn durability(&self) -> Durability {
        Durability::Batched
    }

    /// Commits the running transaction (or, configured so, `syncfs` of
    /// the root), so every verb that returned before is durable, as a
    /// whole.
    fn sync(&self) -> Result<(), ProviderError> {
        self.handle.batch_sync(self.batch_sync)
    }

    fn enforces_capacity(&self) -> bool {
        true
    }

    /// A limit on the volume's level-1 qgroup `1/<subvolume id>`, whose
    /// members are the volume's qgroup and those of the subvolumes nested
    /// in it (module `quota`), never below what the volume holds
    /// ([`ProviderError::CapacityBelowUsage`]: a volume made without a
    /// capacity, or forked from a fuller snapshot, keeps its data
    /// writable). A write racing the call may still take the volume past
    /// the new limit; further writes then fail (`EDQUOT`).
    fn set_capacity(&self, volume: &VolumeRef<'_>, bytes: u64) -> Result<(), ProviderError> {
        check_id(volume.id)?;
        if volume.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "a capacity is set on data volumes, not on snapshot {}",
                volume.id
            )));
        }
        if !matches!(
            self.in_place(VolumeKind::Data, volume.id),
            InPlace::Ours { has_vol: true, .. }
        ) {
            return Err(ProviderError::NotFound(format!(
                "data volume {}",
                volume.id
            )));
        }
        let path = self.location(VolumeKind::Data, volume.id);
        self.limit_volume(&format!("data volume {}", volume.id), &path, bytes)
    }

    fn free_bytes(&self) -> Result<Option<u64>, ProviderError> {
        super::statvfs_available(&self.root).map(Some)
    }

    /// The root, and `batch_sync` only when it is not the default (so a
    /// journaled configuration from before the setting reads the same).
    fn config(&self) -> ProviderConfig {
        let mut config = ProviderConfig::from([(
            CONFIG_ROOT.to_owned(),
            self.root.to_string_lossy().into_owned(),
        )]);
        if self.batch_sync != BatchSync::default() {
            config.insert(
                CONFIG_BATCH_SYNC.to_owned(),
                self.batch_sync.as_str().to_owned(),
            );
        }
        config
    }

    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        let tag = Tag {
            volume: spec.id.to_string(),
            op: spec.op,
            kind: VolumeKind::Data,
            parent: None,
        };
        self.make(&tag, |vol| {
            self.btrfs()
                .arg("subvolume")
                .arg("create")
                .path_arg(vol)?
                .run()
                .map(drop)
        })
    }

    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.snapshot_of(VolumeKind::Data, source, spec, VolumeKind::Snapshot)
    }

    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.snapshot_of(VolumeKind::Snapshot, snapshot, spec, VolumeKind::Data)
    }

    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        check_id(volume.id)?;
        // Staged leftovers of this volume (an interrupted create) go too.
        if let Ok(entries) = fs::read_dir(self.stage_root()) {
            for entry in entries.flatten() {
                if read_tag(&entry.path()).is_some_and(|t| t.volume == volume.id) {
                    self.trash(&entry.path())?;
                }
            }
        }
        let place = self.container(volume.kind, volume.id);
        match self.in_place(volume.kind, volume.id) {
            InPlace::Absent => Ok(()),
            InPlace::Foreign => Err(ProviderError::Other(format!(
                "refusing to destroy {}: it carries no volmgr tag for {}",
                place.display(),
                volume.id
            ))),
            InPlace::Ours { has_vol, .. } => {
                if has_vol {
                    self.delete_subvolumes(&[place.join(VOL)])?;
                }
                self.trash(&place)
            }
        }
    }

    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        _options: &SendOptions,
        out: &mut dyn Write,
    ) -> Result<SendStats, ProviderError> {
        check_id(snapshot.id)?;
        let path = self.location(VolumeKind::Snapshot, snapshot.id);
        if !is_subvolume(&path) {
            return Err(ProviderError::NotFound(format!("snapshot {}", snapshot.id)));
        }
        let mut cmd = self.btrfs().arg("send").arg("-q");
        if let Some(base) = base {
            check_id(base.id)?;
            let base_path = self.location(VolumeKind::Snapshot, base.id);
            if !is_subvolume(&base_path) {
                return Err(ProviderError::NotFound(format!(
                    "base snapshot {}",
                    base.id
                )));
            }
            cmd = cmd.arg("-p").path_arg(&base_path)?;
        }
        let (bytes, _) = cmd.path_arg(&path)?.run_to(out)?;
        Ok(SendStats {
            bytes,
            incremental: base.is_some(),
            resumed: false,
            read_bytes: 0,
        })
    }

    fn stream_head_len(&self) -> usize {
        receive::STREAM_HEAD_LEN
    }

    fn stream_identity(&self, head: &[u8]) -> Option<StreamIdentity> {
        receive::stream_identity(head)
    }

    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        check_id(target.id)?;
        check_id(spec.id)?;
        self.refuse_unsafe_mount()?;
        match self.in_place(VolumeKind::Data, target.id) {
            InPlace::Ours { has_vol: true, .. } => {}
            _ => return Err(ProviderError::NotFound(format!("volume {}", target.id))),
        }
        if !matches!(
            self.in_place(VolumeKind::Snapshot, spec.id),
            InPlace::Absent
        ) {
            return Err(ProviderError::AlreadyExists(format!(
                "snapshot {}",
                spec.id
            )));
        }
        let stage = self.stage(spec.op);
        if stage.exists() {
            self.abort_partial(spec.op)?;
        }
        match self.receive_steps(target.id, spec, input) {
            Ok(created) => Ok(created),
            Err(e) => {
                if let Err(undo) = self.abort_partial(spec.op) {
                    tracing::warn!(op = %spec.op, error = %undo, "undo of a failed receive failed");
                }
                if let InPlace::Ours { tag, .. } = self.in_place(VolumeKind::Snapshot, spec.id)
                    && tag.op == spec.op
                {
                    let _ = self.destroy(&VolumeRef {
                        id: spec.id,
                        kind: VolumeKind::Snapshot,
                        parent: Some(target.id),
                        location: "",
                        details: &Details::new(),
                    });
                }
                Err(e)
            }
        }
    }

    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.inventory_items()
    }

    /// The stage's listing and two `lstat`s, then a tag read and one
    /// ioctl per candidate: never a scan of `data/` or `snapshot/`.
    fn lookup(&self, id: &VolumeId) -> Result<Option<Found>, ProviderError> {
        self.lookup_item(id)
    }

    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        let tag = found
            .tag
            .clone()
            .ok_or_else(|| ProviderError::Other(format!("{} is not ours", found.name)))?;
        check_id(&tag.volume)?;
        let stage = self.stage(tag.op);
        if stage.join("in").exists() || stage.join("new").exists() {
            return Err(ProviderError::Other(format!(
                "an interrupted receive ({}) cannot be finished",
                tag.op
            )));
        }
        match self.in_place(tag.kind, &tag.volume) {
            InPlace::Ours {
                tag: t,
                has_vol: true,
            } if t.op == tag.op => {
                let vol = self.location(tag.kind, &tag.volume);
                if tag.kind == VolumeKind::Snapshot && !subvol_info(&vol)?.read_only {
                    self.btrfs()
                        .arg("property")
                        .arg("set")
                        .arg("-ts")
                        .path_arg(&vol)?
                        .arg("ro")
                        .arg("true")
                        .run()?;
                }
                return self.created(tag.kind, &tag.volume);
            }
            InPlace::Absent => {}
            _ => {
                return Err(ProviderError::AlreadyExists(format!(
                    "{} {}",
                    tag.kind, tag.volume
                )));
            }
        }
        if read_tag(&stage).as_ref() != Some(&tag) {
            return Err(ProviderError::NotFound(format!(
                "staged {} {} of op {}",
                tag.kind, tag.volume, tag.op
            )));
        }
        // A staged create is rebuilt; a staged snapshot or fork only if its
        // subvolume was made (its source may have changed since).
        let can_build = tag.kind == VolumeKind::Data && tag.parent.is_none();
        let vol = stage.join(VOL);
        if !is_subvolume(&vol) && !can_build {
            return Err(ProviderError::Other(format!(
                "staged {} {} has no subvolume; cannot finish",
                tag.kind, tag.volume
            )));
        }
        self.make(&tag, |vol| {
            self.btrfs()
                .arg("subvolume")
                .arg("create")
                .path_arg(vol)?
                .run()
                .map(drop)
        })
    }

    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        let stage = self.stage(op);
        if !stage.exists() {
            return Ok(());
        }
        // An interrupted receive may have exchanged the target's content:
        // exchange it back (the stage's `new` then holds the old content).
        let fresh = stage.join("new");
        if is_subvolume(&fresh)
            && let Some(tag) = read_tag(&stage).filter(|t| t.op == op)
            && let Some(target) = tag.parent.as_deref()
            && check_id(target).is_ok()
            && let Some(received) = self.received_vol(op, &tag.volume)
        {
            let target_vol = self.location(VolumeKind::Data, target);
            let received = subvol_info(&received)?;
            if subvol_info(&target_vol).is_ok_and(|t| t.parent_uuid == Some(received.uuid)) {
                // No sync between the exchange and the trashing of the
                // stage: a transaction holding the latter holds the former.
                receive::exchange_subvolumes(&fresh, &target_vol)
                    .map_err(io_err(format!("restore {}", target_vol.display())))?;
            }
        }
        self.trash(&stage)
    }
}

#[cfg(test)]
mod tests;
