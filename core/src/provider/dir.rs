//! The directory provider: the embedded default, plain directories, no
//! privileges needed.
//!
//! # Layout
//!
//! ```text
//! <root>/
//!   .volmgr/provider         ownership marker of the root (written first)
//!   .volmgr/lock             the root's lock, held by the agent running on it
//!   data/<id>/               a data volume (its `location`)
//!   snapshot/<id>/           a snapshot: a read-only copy
//!   .volmgr/data/<id>        ownership marker of data volume <id>
//!   .volmgr/snapshot/<id>    ownership marker of snapshot <id>
//!   .volmgr/modes/<id>       a snapshot's mode manifest (only if it has exceptions)
//!   .volmgr/.round-probe.a   an empty file renamed to .round-probe.b and back, one
//!                            rename after each round's syncs (see "Durability")
//!   .staging/<op>/           receive staging of operation <op>
//!   .trash/                  trees being removed (swept when the provider starts)
//! ```
//!
//! The root must be new or empty, or carry the ownership marker (a root made
//! by an earlier volmgr, with a `.volmgr` directory, is adopted): a
//! non-empty directory without it is refused, so the provider never sweeps
//! or lists as its own files it did not create. A root inside the tree of
//! another provider (any ancestor holding `.volmgr`) is refused too; the
//! manager also refuses overlapping roots and roots inside volumes.
//!
//! # Modes
//!
//! A local user must not list or read a volume through the host path, and
//! nobody needs to: containers reach a volume through the bind mount root
//! makes of its location (a CSI publish is such a bind mount too), which
//! needs no traversal of the parents by anyone else. So every directory
//! the provider keeps under the root (`data/`, `snapshot/`, `.volmgr/` and
//! its directories, `.staging/` with each receive's area, `.trash/`) is
//! 0700, made so when created and, at every open once the root is claimed
//! (under its lock), when an older version left it looser: they are ours.
//! A root the provider creates is 0700 too (its missing ancestors 0755);
//! an existing root is the operator's and keeps its mode. A volume's own
//! directory keeps the mode its tenant gives it (0755 when created): it is
//! what the container sees at the mount point.
//!
//! # The root's owner
//!
//! A root belongs to one agent (one state directory). A provider built by a
//! manager ([`DirProvider::for_owner`]) knows that agent's identity
//! ([`AgentId`]) and the root marker names it, byte for byte (format 2, 79
//! bytes):
//!
//! ```text
//! volmgr dir provider root (format 2)\n
//! owner <agent id: 36 bytes, lowercase hyphenated UUID>\n
//! ```
//!
//! Before anything under the root is touched (no directory made, no sweep),
//! the provider reads the marker: its own owner goes on; another owner is
//! refused ([`ProviderError::ForeignRoot`]), so two agents never act on one
//! tree (each would take the other's volumes for orphans, and sweep the
//! other's staging areas and trash while its operations run). A format-1
//! marker (`volmgr dir provider root (format 1)\n`, no owner: before owners
//! existed one agent could only have meant itself) and a marker-less root of
//! an earlier volmgr are adopted: the format-2 marker is written over them
//! durably (temp file, fsync, rename, fsync of `.volmgr`). A marker that is
//! neither is refused as damaged, naming the file. A provider built without
//! an owner (the other constructors: tools and tests outside a manager)
//! writes a format-1 marker on a new root and checks no owner. Handing a root
//! to another agent is the operator's deliberate act: README, "Handing a
//! provider root to another agent".
//!
//! Reading the marker, then writing it, would let two agents starting
//! together on one unowned root both read "no owner" and both claim it. So
//! a provider with an owner takes the root's lock first: an exclusive
//! `flock` ([`crate::fsutil::hold_lock`]) on `.volmgr/lock`, an empty file
//! created mode 0600 without following a symlink and never renamed (the
//! marker itself is replaced by rename, so a lock on it would be on an
//! inode the next opener no longer finds). The provider holds it until it
//! is dropped; another open of it (another agent, or another provider of
//! this process) is refused with [`ProviderError::RootInUse`] and changes
//! nothing. A marker naming another agent is refused before the lock, so a
//! foreign root gets no lock file either; the marker is judged again under
//! the lock. The lock lives in `.volmgr`, outside every volume, and only
//! root can open it, so neither a tenant nor a local user can hold it. On
//! the simulated layout (one process, power-cut sweeps) there is no lock.
//!
//! Ids are single safe path components (`[A-Za-z0-9._-]`, not starting with
//! `.` or `-`, at most 128 bytes; the manager's rule, checked again here), so
//! no id can name a file outside its directory or one of the dot-directories.
//! Markers live in a tree parallel to the volumes, outside anything a user of
//! the volume sees, and cannot collide with volume names whatever the id.
//!
//! # Ownership markers
//!
//! A marker is a small JSON document: format version, volume id, op id, kind,
//! parent (source of a snapshot, snapshot of a fork, target of a receive),
//! `guid` (snapshots only: 32 lowercase hex digits of a random `u128` chosen
//! when the snapshot is taken; a received snapshot keeps the *sender's* guid)
//! and a state: `complete`, or one of `creating`, `copying`, `receiving`,
//! `swapping` (half-made; but a data volume's `creating` marker with its
//! directory is whole, see "Durability"). Markers are written with temp
//! file and rename (fsyncs as "Durability" says), except a new data
//! volume's first one, created in place (a cut before its create's round may
//! leave it empty or cut short: unreadable, which recovery handles like a
//! lost marker). A marker is always written *before*
//! its directory appears and removed *after* it is gone, so the provider never
//! leaves an untagged directory of its own behind, and a directory without a
//! marker is foreign (reported with tag `None`, never touched, never destroyed).
//! One exception, after a power cut only: the empty directory of a create
//! the journal holds as interrupted, whose marker the cut lost (see
//! "Durability"), is removed at the next open.
//!
//! An item is [`Presence::Complete`](crate::provider::Presence::Complete) only if its marker says `complete` (or
//! `creating`, for a data volume) and its directory exists. A half-made marker is [`Presence::Incomplete`](crate::provider::Presence::Incomplete) with a
//! reason. A whole marker whose directory is gone is left out of the
//! inventory: the volume is absent (the manager reports it lost; destroying it
//! removes the marker).
//!
//! # Snapshots, forks, modes
//!
//! A snapshot or fork is a copy of the source tree: per regular file, a reflink
//! (`FICLONE`) where the file system supports it, else a kernel-side copy;
//! directories, regular files (mode preserved) and symlinks (copied as links,
//! never followed) are carried; a fifo, socket or device is an error naming
//! the path. Every copied file and directory is fsynced before the marker says
//! `complete` (a receive instead calls `syncfs` once). Hard links become
//! separate files, holes are not preserved unless reflinked, and owners,
//! timestamps, xattrs and ACLs are not carried. A snapshot of a data volume
//! that is being written to is not atomic: it copies files one at a time.
//!
//! A snapshot is made read-only by storing every file and directory without
//! write bits (`chmod a-w`). The root user ignores mode bits, so for root this
//! is a guard against accidents, not enforcement. Because the stored modes
//! lose the write bits, each snapshot keeps its *true* modes: the true mode is
//! the stored mode plus `u+w`, except for the entries listed in the snapshot's
//! mode manifest (a `0444` file, a group-writable `0775` directory). Forks and
//! sends use the true modes, so a fork is writable exactly where the source
//! was, and a receiver gets the sender's modes.
//!
//! # Receive
//!
//! Like `zfs recv -F`: the target data volume's content becomes the stream's.
//! The stream is applied to `<root>/.staging/<op>/new`, which starts empty
//! (full stream) or as a copy of the base: a snapshot on this provider whose
//! parent is the target and whose guid is the stream's base guid (none: a
//! `Stream` error, nothing left behind). Only when the end record holds:
//! marker `receiving` → copy the staged tree to `snapshot/<id>` (read-only,
//! fsynced) → `syncfs` → marker `swapping` (with the staged directory's inode)
//! → atomic exchange of the staged tree and the target's directory
//! (`renameat2(RENAME_EXCHANGE)`, two renames where unsupported, the first
//! durable before the second) → marker `complete` (the receive is made)
//! → the old content, now in the staging area, goes to the trash
//! (best-effort, not synced: the next start removes the staging area of a
//! complete receive).
//!
//! Like `zfs recv -F` (and the btrfs provider), a receive that fails
//! leaves the target as it was: an error after the exchange (a failed
//! sync, the mode of the target's root, the write of `complete`)
//! exchanges back before anything is removed (`dir/undo.rs`), so the
//! staging area holds the stream's tree again when it goes. A crash
//! leaves staging only (removed by [`Provider::abort_partial`]) or a
//! snapshot whose marker is half-made; its undo (`abort_partial`, then
//! `destroy`: what the manager's recovery runs) puts the target's old
//! content back by the staged tree's identity, which the `swapping`
//! marker records. If putting back fails (a failing device), nothing is
//! removed: the old content waits in `.staging/<op>` with the marker, the
//! provider's rounds fail until it is reopened (a batched provider goes
//! out of service at the manager's next shared sync), and the next undo
//! (the recovery at the next open, or a destroy of the snapshot) puts it
//! back. Nothing after the `complete` marker can fail a receive.
//!
//! The exchange replaces the target's directory *inode*: a process holding
//! the old directory open, or a bind mount of it, keeps seeing the old
//! content (now unlinked). Receive into a volume that is not in use.
//!
//! # What `finish` can complete
//!
//! - `creating` (an empty data volume): creates the directory if needed and
//!   marks it complete;
//! - `copying` of a fork: the source snapshot is immutable, so the copy is
//!   redone if that snapshot is still complete here;
//! - `swapping` of a receive: completes it if the target's directory is the
//!   staged one (checked by device and inode) or the staged tree is still
//!   waiting to be renamed in. The manager never asks for this (its
//!   recovery undoes a half-made receive); standalone users may.
//!
//! Everything else is refused with an error, so the manager treats it as not
//! done: a `copying` snapshot (the source's content at the time of the request
//! is unknown), `receiving` (the stream is gone).
//!
//! # Errors and cleanup
//!
//! A create, snapshot, fork or receive that fails removes what it made (tree,
//! manifest, marker, staging) before returning the error; a receive puts
//! the target's old content back first (see "Receive"). Destroy renames
//! the tree into `.trash` under a name recording kind, op and id
//! (`item.<kind>.<op>.<unique>.<id>`; atomic), removes the manifest and
//! marker, then the tree (batched: at the next [`Provider::sync`], see
//! "Durability"); it restores owner `rwx` on read-only directories as
//! it goes and never follows symlinks. If a crash interrupts it after the
//! rename, the marker is left without its directory (absent from the
//! inventory); the next start sweeps the trash and removes such a marker when
//! it still carries the op of the trashed tree, then the tree. Before its
//! sweeps a start runs one `syncfs`: what a killed process left in the page
//! cache (a marker's removal, a receive's `complete`) is then durable
//! before a sweep removes what it read as done with (found by cuts at the
//! reopen's sync points keeping a seeded part of what was not durable).
//!
//! # Durability
//!
//! The provider is [`Durability::Batched`] by default: its verbs return
//! before their changes are durable, and [`Provider::sync`] (one *round*
//! shared by every operation waiting for one: a
//! [`crate::fsutil::GroupSync`]) makes them durable before the manager
//! journals their outcomes. Each verb notes the files and directories it
//! changed (a marker's file and directory, a new volume's directory and its
//! parent, both directories of a rename); a round takes the paths noted
//! before it started and `fsync`s them, concurrently ([`BatchSync::Fsync`]),
//! or runs one `syncfs` of the root ([`BatchSync::Syncfs`]): one flush
//! instead of about four for a lone create, but it writes back every dirty
//! page of the file system, the tenants' files in their volumes too (with a
//! tenant writing flat out, each create waited about 0.9 s; 37 ms durable
//! on return). The default, [`BatchSync::Auto`], runs the `syncfs` only
//! while the machine's dirty page cache is at most
//! [`BatchSync::AUTO_SYNCFS_MAX_DIRTY`] (2 MiB), the `fsync`s otherwise;
//! the setting `batch_sync` (`auto`, `fsync`, `syncfs`) picks one. A
//! receive asks its round for a whole `syncfs` either way (its data is many
//! files). A `syncfs` runs on the root's descriptor held since open: one
//! opened afresh can miss a write-back error (`sync_root`). A failed
//! round fails every later one until the provider is reopened, durable on
//! return too (where only a receive runs rounds, its `syncfs`): the
//! descriptor is shared, so once one `syncfs` has reported a write-back
//! error, a later one returns `Ok` although pages another receive wrote
//! before it may be among those dropped. So after a failed `syncfs`, a
//! provider durable on return refuses receives until reopened while its
//! creates and destroys (their own `fsync`s, per file) go on; batched,
//! the manager takes it out of service at its next shared sync. A round
//! whose syncs returned fails too if the root's file system is read-only
//! or refuses a probe change made after them (a rename of the empty file
//! `.volmgr/.round-probe.a` to `.round-probe.b` or back): an ext4 whose
//! journal aborted on a failed commit stays `rw` and answers a `syncfs`
//! or `fsync` with success once the failed transaction, with the round's
//! changes, is gone.
//!
//! Without fsyncs between them, a power cut may keep any subset of a
//! round's changes, and a marker's content may be lost while its name
//! stays. So the verbs place **barriers** (a wait for a shared round that
//! started after the call) where order matters, and never rewrite a marker
//! after a barrier:
//!
//! - **create**: marker `creating` (no fsync) → `mkdir data/<id>` →
//!   return; the shared step makes both durable in one round (`fsync` of
//!   the marker, the new directory and both parents). A `creating`
//!   data-volume marker with its directory *is* a whole volume (an empty
//!   directory is all a new volume has), so the marker is never rewritten.
//!   A cut before the shared step may keep any part: no marker, a marker
//!   (perhaps unreadable) without its directory (absent from the
//!   inventory, replaced by the next create of the id), or the directory
//!   without a readable marker. The create was never acknowledged, so its
//!   intent is pending at the next open, and before the inventory the
//!   manager calls [`Provider::clear_interrupted_create`] for it, which
//!   removes that *empty* directory and the stale marker (an untagged
//!   directory is otherwise foreign for ever). Per create: one shared
//!   round and no fsync of its own (was five fsyncs).
//! - **destroy**: rename into the trash → barrier → remove the marker (and
//!   manifest) → queue the tree → return; the shared step ([`Provider::sync`])
//!   takes the queued trees, runs its round, then removes them: only
//!   trees queued before its round started, whose markers' removal it
//!   made durable (a tree queued while it runs waits for the next one). So
//!   the tree goes only once its marker's removal is durable, and the
//!   manager journals the outcome after that step: an acknowledged destroy's
//!   tree is removed (one whose removal fails stays in the trash for the
//!   next start). The removal runs inside the shared step: a large tree
//!   lengthens that step for every operation waiting on it. Per destroy: two
//!   shared rounds (the barrier and the shared step; was three)
//!   and no fsync. A cut leaves the tree in
//!   place with its marker, or in the trash with or without its marker (the
//!   start removes the marker if it is still that item's, then the tree);
//!   never a tree of ours without its marker outside the trash, nor a marker
//!   whose tree left no trace in the trash. Used without the manager, a
//!   batched provider's destroyed trees wait in the trash for the next
//!   `sync()` (which its caller runs anyway to make the destroy durable) or
//!   the next start; at most [`DirProvider::MAX_DEFERRED_REMOVALS`] wait,
//!   the destroy that would exceed them runs the step itself. The cleanup of
//!   a failed verb keeps the second barrier and removes the tree before the
//!   verb returns its error; so does every destroy durable on return.
//! - **snapshot, fork, receive** keep their own fsyncs (every copied file,
//!   the markers, `syncfs` for a receive): their content must be durable
//!   before the marker says `complete`. A receive's staging area (the
//!   target's old content) leaves after that marker, unsynced: a cut may
//!   bring it back, and the next start removes it (see `receive.rs`). The
//!   shared step adds one round.
//!
//! [`DirProvider::with_durability`] with [`Durability::OnReturn`] keeps the
//! old behaviour: every verb durable on return (a create is five fsyncs:
//! marker `creating` file and directory, the new directory's parent, marker
//! `complete` file and directory; a destroy two, three for a snapshot with
//! a mode manifest).
//!
//! Every operation on the provider's own names, and the copy of a
//! snapshot or fork, goes through a `Layout` (`dir/layout.rs`): the
//! kernel's file system, or a simulated one ([`DirProvider::simulated`]) on
//! which the power-cut sweep (`tests/torture_dir_powercut.rs`) runs this
//! code (create, destroy, snapshot, fork) and cuts the power at every sync
//! point, as `tests/torture_dir_receive.rs` does for a receive (full, then
//! incremental; its order of operations is in `dir/receive.rs`). Sends walk
//! the kernel's file system only. Creating a missing root fsyncs each new
//! directory's parent, so a cut cannot take the root (and all under it)
//! away.

mod derive;
mod durability;
pub use durability::BatchSync;
/// The deepest tree the provider copies, sends or snapshots.
pub use tree::MAX_DEPTH;
mod inventory;
mod layout;
mod marker;
mod modes;
mod receive;
mod root;
mod send;
pub(crate) mod space;
mod trash;
mod tree;
mod undo;
pub mod wire;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::layout::{Entry, Layout, RealLayout, SimLayout};
use self::marker::{MARKER_FORMAT, Marker, MarkerState};
use self::tree::{Modes, Policy};
use super::{
    Created, Durability, Found, Provider, ProviderConfig, ProviderError, SendOptions, SendStats,
    StreamIdentity, VolumeRef, VolumeSpec,
};
use crate::fsutil::GroupSync;
use crate::model::{AgentId, DETAIL_GUID, Details, OpId, VolumeId, VolumeKind};
use crate::storage::sim::SimStorage;

/// The provider kind.
pub const KIND: &str = "dir";
/// The configuration key of the root directory (required, absolute).
pub const CONFIG_ROOT: &str = "root";
/// The configuration key of what a batched round runs ([`BatchSync`]:
/// `auto`, the default, `fsync` or `syncfs`).
pub const CONFIG_BATCH_SYNC: &str = "batch_sync";
/// Longest volume id accepted.
pub use crate::model::MAX_ID_LEN;

const MARKERS: &str = ".volmgr";
const MODES: &str = "modes";
const STAGING: &str = ".staging";
const TRASH: &str = ".trash";

/// Checks that `id` is one safe path component: the one id rule
/// ([`crate::model::id_problem`]).
pub fn check_id(id: &str) -> Result<(), ProviderError> {
    super::check_id(id)
}

fn guid_hex(guid: u128) -> String {
    format!("{guid:032x}")
}

fn parse_guid(s: &str) -> Option<u128> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u128::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn dir_name(kind: VolumeKind) -> &'static str {
    match kind {
        VolumeKind::Data => "data",
        VolumeKind::Snapshot => "snapshot",
    }
}

/// Plain directories under a root. See the module documentation.
#[derive(Debug)]
pub struct DirProvider {
    root: PathBuf,
    root_str: String,
    /// The root held open since open (kernel file system): `syncfs` runs on it.
    root_fd: Option<crate::fsutil::Dir>,
    /// The file operations on the provider's own names.
    layout: Arc<dyn Layout>,
    /// [`Durability::Batched`] (the default) or on return.
    batched: bool,
    /// The shared rounds of the batched step (see `durability`).
    flush: GroupSync,
    /// What a round runs.
    batch_sync: BatchSync,
    /// What the next round must sync.
    dirty: durability::Dirty,
    /// The threads a round's `fsync`s run on beside the round's own (kept
    /// between rounds: spawning them per round cost more than the syncs).
    round_workers: crate::fsutil::Workers,
    /// Trees batched destroys left in the trash, removed by the next
    /// [`Provider::sync`] (see `trash`).
    doomed: trash::Doomed,
    /// The agent the root belongs to (`None`: built outside a manager,
    /// no owner checked or written; see "The root's owner").
    owner: Option<AgentId>,
    /// Set once a receive's target could not be put back (`undo.rs`):
    /// until the provider is reopened, no receive's staging area is
    /// removed, nor a snapshot that has one.
    undo_stuck: std::sync::atomic::AtomicBool,
    /// Which of its two names the round's probe file has, as far as this
    /// provider knows (see `durability`).
    probe_at_second: std::sync::atomic::AtomicBool,
    /// The root's lock, held for the provider's life (with an owner, on
    /// the kernel's file system; see "The root's owner"): released when the
    /// provider is dropped.
    root_lock: Option<crate::fsutil::HeldLock>,
}

impl DirProvider {
    /// Opens (creating if missing) the provider rooted at `root`, an absolute
    /// path without `..`, with batched durability (the default: see
    /// "Durability"). Sweeps the trash left by interrupted removals.
    pub fn new(root: PathBuf) -> Result<Self, ProviderError> {
        Self::with_durability(root, Durability::Batched)
    }

    /// Like [`DirProvider::new`], with the given durability: `OnReturn`
    /// makes every verb durable before it returns (five fsyncs per create),
    /// as before batching; kept for comparison in benches and tests.
    pub fn with_durability(root: PathBuf, durability: Durability) -> Result<Self, ProviderError> {
        Self::open(
            root,
            Arc::new(RealLayout),
            durability,
            BatchSync::default(),
            None,
        )
    }

    /// Batched, with rounds that run `batch_sync` (see [`BatchSync`]).
    pub fn with_batch_sync(root: PathBuf, batch_sync: BatchSync) -> Result<Self, ProviderError> {
        Self::open(
            root,
            Arc::new(RealLayout),
            Durability::Batched,
            batch_sync,
            None,
        )
    }

    /// The provider on a simulated file system: a test seam, named as such,
    /// for power-cut sweeps of the real provider code (create, destroy,
    /// snapshot, fork, receive, inventory, finish, the trash). `root` is a
    /// path in `storage`. The simulation holds directories and regular
    /// files but no modes or symlinks (a snapshot records no mode
    /// exceptions; a stream with a symlink is refused); sends need the real
    /// file system.
    pub fn simulated(
        root: PathBuf,
        storage: SimStorage,
        durability: Durability,
    ) -> Result<Self, ProviderError> {
        Self::simulated_with(root, storage, durability, BatchSync::default())
    }

    /// Like [`DirProvider::simulated`], with rounds that run `batch_sync`.
    pub fn simulated_with(
        root: PathBuf,
        storage: SimStorage,
        durability: Durability,
        batch_sync: BatchSync,
    ) -> Result<Self, ProviderError> {
        Self::open(
            root,
            Arc::new(SimLayout::new(storage)),
            durability,
            batch_sync,
            None,
        )
    }

    /// Builds the provider from its journaled configuration: `root` (required,
    /// absolute) and `batch_sync` (optional: `auto`, the default, `fsync` or
    /// `syncfs`; see [`BatchSync`]). Unknown keys are refused. No owner:
    /// see [`DirProvider::for_owner`].
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let (root, batch_sync) = Self::parse_config(config)?;
        DirProvider::with_batch_sync(root, batch_sync)
    }

    /// [`DirProvider::from_config`] for the agent `owner` (what the
    /// manager's factory builds): the root is claimed for `owner`, and a
    /// root another agent owns is refused with
    /// [`ProviderError::ForeignRoot`] before anything under it is touched
    /// (see "The root's owner").
    pub fn for_owner(config: &ProviderConfig, owner: &AgentId) -> Result<Self, ProviderError> {
        let (root, batch_sync) = Self::parse_config(config)?;
        Self::open(
            root,
            Arc::new(RealLayout),
            Durability::Batched,
            batch_sync,
            Some(*owner),
        )
    }

    fn parse_config(config: &ProviderConfig) -> Result<(PathBuf, BatchSync), ProviderError> {
        if let Some(key) = config
            .keys()
            .find(|k| k.as_str() != CONFIG_ROOT && k.as_str() != CONFIG_BATCH_SYNC)
        {
            return Err(ProviderError::InvalidConfig(format!(
                "unknown key {key:?} (the dir provider takes {CONFIG_ROOT:?} and {CONFIG_BATCH_SYNC:?})"
            )));
        }
        let root = config.get(CONFIG_ROOT).ok_or_else(|| {
            ProviderError::InvalidConfig(format!("missing {CONFIG_ROOT:?} (an absolute path)"))
        })?;
        let batch_sync = match config.get(CONFIG_BATCH_SYNC) {
            None => BatchSync::default(),
            Some(v) => BatchSync::parse(v).ok_or_else(|| {
                ProviderError::InvalidConfig(format!(
                    "{CONFIG_BATCH_SYNC} {v:?}: not \"auto\", \"fsync\" or \"syncfs\""
                ))
            })?,
        };
        Ok((PathBuf::from(root), batch_sync))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn content_dir(&self, kind: VolumeKind) -> PathBuf {
        self.root.join(dir_name(kind))
    }

    fn path(&self, kind: VolumeKind, id: &str) -> PathBuf {
        self.content_dir(kind).join(id)
    }

    fn location(&self, kind: VolumeKind, id: &str) -> String {
        format!(
            "{}/{}/{id}",
            self.root_str.trim_end_matches('/'),
            dir_name(kind)
        )
    }

    fn marker_dir(&self, kind: VolumeKind) -> PathBuf {
        self.root.join(MARKERS).join(dir_name(kind))
    }

    fn modes_dir(&self) -> PathBuf {
        self.root.join(MARKERS).join(MODES)
    }

    fn staging(&self, op: OpId) -> PathBuf {
        self.root.join(STAGING).join(op.to_string())
    }

    fn trash(&self) -> PathBuf {
        self.root.join(TRASH)
    }

    fn marker(&self, kind: VolumeKind, id: &str) -> Result<Option<Marker>, ProviderError> {
        marker::read(&*self.layout, &self.marker_dir(kind).join(id), kind, id)
    }

    /// Writes a marker durably (file fsync, rename, directory fsync).
    fn put_marker(&self, m: &Marker) -> Result<(), ProviderError> {
        marker::write(&*self.layout, &self.marker_dir(m.kind), m, true)?;
        self.sync_dir(&self.marker_dir(m.kind))
    }

    fn created(&self, m: &Marker) -> Created {
        let mut details = Details::new();
        if let Some(guid) = &m.guid {
            details.insert(DETAIL_GUID.to_owned(), guid.clone());
        }
        Created {
            location: self.location(m.kind, &m.volume),
            details,
        }
    }

    /// A volume the caller names as an input: it must be ours and complete.
    fn require(&self, v: &VolumeRef<'_>) -> Result<(Marker, PathBuf), ProviderError> {
        check_id(v.id)?;
        let m = self.marker(v.kind, v.id)?.ok_or_else(|| {
            ProviderError::NotFound(format!("{} {} (no ownership marker)", v.kind, v.id))
        })?;
        let path = self.path(v.kind, v.id);
        if !m.is_whole() {
            return Err(ProviderError::Other(format!(
                "{} {} is half-made: {}",
                v.kind,
                v.id,
                m.state.describe(m.parent.as_deref())
            )));
        }
        if !self.is_dir(&path)? {
            return Err(ProviderError::NotFound(format!(
                "{} {} (directory {} missing)",
                v.kind,
                v.id,
                path.display()
            )));
        }
        Ok((m, path))
    }

    fn modes_of(&self, kind: VolumeKind, id: &str) -> Result<Modes, ProviderError> {
        match kind {
            VolumeKind::Data => Ok(Modes::new(Policy::Plain)),
            VolumeKind::Snapshot => marker::read_manifest(&*self.layout, &self.modes_dir(), id),
        }
    }

    fn guid_of(m: &Marker) -> Result<u128, ProviderError> {
        m.guid.as_deref().and_then(parse_guid).ok_or_else(|| {
            ProviderError::Other(format!(
                "snapshot {} has no valid guid in its marker",
                m.volume
            ))
        })
    }

    /// Creates the directory of a `creating` data volume (whose marker is
    /// durable) and, durable on return, marks it complete. Batched, a
    /// `creating` marker with its directory *is* complete (see
    /// "Durability"): the directory's entry is made durable by the shared
    /// step.
    /// `absent`: the caller has just seen no entry at the volume's path (a
    /// new create), so it is not examined again; a `mkdir` over an entry
    /// that appeared since fails.
    fn finish_create(&self, m: &Marker, absent: bool) -> Result<Created, ProviderError> {
        let path = self.path(VolumeKind::Data, &m.volume);
        match if absent { None } else { self.entry(&path)? } {
            Some(Entry::Dir { .. }) => {}
            Some(_) => {
                return Err(ProviderError::Other(format!(
                    "{} exists and is not a directory",
                    path.display()
                )));
            }
            None => {
                self.layout
                    .create_dir(&path, 0o755)
                    .map_err(|e| ProviderError::io(format!("creating {}", path.display()), e))?;
            }
        }
        if self.batched {
            self.changed(&path);
            self.changed(&self.content_dir(VolumeKind::Data));
            return Ok(self.created(m));
        }
        self.sync_dir(&self.content_dir(VolumeKind::Data))?;
        let done = m.with_state(MarkerState::Complete);
        self.put_marker(&done)?;
        Ok(self.created(&done))
    }

    /// [`Provider::create_volume`] (see "Durability").
    fn create_data(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if spec.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "create_volume makes data volumes, not a {}",
                spec.kind
            )));
        }
        let path = self.path(VolumeKind::Data, spec.id);
        let new = Marker {
            format: MARKER_FORMAT,
            volume: spec.id.to_string(),
            op: spec.op,
            kind: VolumeKind::Data,
            parent: None,
            guid: None,
            state: MarkerState::Creating,
        };
        // A new id, the common case: nothing at the volume's path, and the
        // marker created where no entry has its name (`O_EXCL`), with no
        // lookup of it first. Anything found at either name takes the
        // examination below (a retry, a stale marker, a foreign entry).
        let (m, absent) = if self.entry(&path)?.is_none() && self.put_marker_new(&new)? {
            (new, true)
        } else {
            match self.live_marker(VolumeKind::Data, spec.id)? {
                Some(m) if m.op != spec.op => {
                    return Err(ProviderError::AlreadyExists(format!(
                        "volume {} (made by operation {})",
                        spec.id, m.op
                    )));
                }
                Some(m) if m.state == MarkerState::Complete => {
                    if self.is_dir(&path)? {
                        return Ok(self.created(&m));
                    }
                    return Err(ProviderError::Other(format!(
                        "volume {} is marked complete but {} is missing",
                        spec.id,
                        path.display()
                    )));
                }
                Some(m) if m.state == MarkerState::Creating => {
                    // Retried by the same operation. Durable on return, its
                    // marker already is; batched, marker and directory become
                    // durable in the same round (see "Durability").
                    (m, false)
                }
                Some(m) => {
                    return Err(ProviderError::Other(format!(
                        "volume {}: {}",
                        spec.id,
                        m.state.describe(m.parent.as_deref())
                    )));
                }
                None => {
                    if self.entry(&path)?.is_some() {
                        return Err(ProviderError::AlreadyExists(format!(
                            "{} (not tagged as ours)",
                            path.display()
                        )));
                    }
                    self.put_marker_first(&new)?;
                    (new, true)
                }
            }
        };
        self.finish_create(&m, absent)
            .inspect_err(|_| self.discard(VolumeKind::Data, spec.id, spec.op))
    }

    /// [`Provider::destroy`].
    fn destroy_item(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        check_id(volume.id)?;
        if let Some(m) = self.marker(volume.kind, volume.id)? {
            self.remove_item(&m)
        } else {
            let path = self.path(volume.kind, volume.id);
            if self.entry(&path)?.is_some() {
                return Err(ProviderError::Other(format!(
                    "refusing to destroy {}: it carries no ownership marker",
                    path.display()
                )));
            }
            Ok(())
        }
    }
}

impl Provider for DirProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn free_bytes(&self) -> Result<Option<u64>, ProviderError> {
        super::statvfs_available(&self.root).map(Some)
    }

    fn config(&self) -> ProviderConfig {
        let mut config = BTreeMap::from([(CONFIG_ROOT.to_owned(), self.root_str.clone())]);
        if self.batch_sync != BatchSync::default() {
            config.insert(
                CONFIG_BATCH_SYNC.to_owned(),
                self.batch_sync.as_str().to_owned(),
            );
        }
        config
    }

    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        self.note_failure(self.create_data(spec))
    }

    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.note_failure(self.derive(source, spec, VolumeKind::Snapshot))
    }

    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        if snapshot.kind != VolumeKind::Snapshot {
            return Err(ProviderError::Other(format!(
                "only snapshots can be forked; {} is a {}",
                snapshot.id, snapshot.kind
            )));
        }
        self.note_failure(self.derive(snapshot, spec, VolumeKind::Data))
    }

    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.note_failure(self.destroy_item(volume))
    }

    /// Exact for a full stream (a walk of the snapshot's metadata and, for
    /// a sparse stream, of its files' data extents: `SEEK_DATA`/`SEEK_HOLE`,
    /// no content read); `None` for an incremental one (its size is known
    /// only by comparing contents). Exact if the snapshot does not change
    /// meanwhile.
    fn send_size(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
    ) -> Result<Option<u64>, ProviderError> {
        if base.is_some() || snapshot.kind != VolumeKind::Snapshot {
            return Ok(None);
        }
        let (m, path) = self.require(snapshot)?;
        let guid = Self::guid_of(&m)?;
        let modes = self.modes_of(VolumeKind::Snapshot, snapshot.id)?;
        send::stream_size(&path, &modes, guid, *options).map(Some)
    }

    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
        out: &mut dyn std::io::Write,
    ) -> Result<SendStats, ProviderError> {
        if snapshot.kind != VolumeKind::Snapshot {
            return Err(ProviderError::Other(format!(
                "only snapshots can be sent; {} is a {}",
                snapshot.id, snapshot.kind
            )));
        }
        let (m, path) = self.require(snapshot)?;
        let guid = Self::guid_of(&m)?;
        let modes = self.modes_of(VolumeKind::Snapshot, snapshot.id)?;
        let base = match base {
            None => None,
            Some(b) => {
                if b.kind != VolumeKind::Snapshot {
                    return Err(ProviderError::Other(format!(
                        "the base of an incremental send must be a snapshot; {} is a {}",
                        b.id, b.kind
                    )));
                }
                let (bm, bpath) = self.require(b)?;
                Some((
                    bpath,
                    self.modes_of(VolumeKind::Snapshot, b.id)?,
                    Self::guid_of(&bm)?,
                ))
            }
        };
        send::send(
            &path,
            &modes,
            guid,
            base.as_ref().map(|(p, m, g)| (p.as_path(), m, *g)),
            *options,
            out,
        )
    }

    fn stream_head_len(&self) -> usize {
        wire::HEADER_LEN
    }

    fn stream_identity(&self, head: &[u8]) -> Option<StreamIdentity> {
        let header = wire::header_of(head).ok()?;
        Some(StreamIdentity {
            guid: guid_hex(header.guid),
            base: header.base.map(guid_hex),
        })
    }

    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if target.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "a stream is received into a data volume; {} is a {}",
                target.id, target.kind
            )));
        }
        if spec.kind != VolumeKind::Snapshot {
            return Err(ProviderError::Other(format!(
                "a receive makes a snapshot, not a {}",
                spec.kind
            )));
        }
        let (_, tpath) = self.require(target)?;
        let snap = self.path(VolumeKind::Snapshot, spec.id);
        match self.marker(VolumeKind::Snapshot, spec.id)? {
            Some(m) if m.op != spec.op => {
                return Err(ProviderError::AlreadyExists(format!(
                    "snapshot {} (made by operation {})",
                    spec.id, m.op
                )));
            }
            Some(m) if m.state == MarkerState::Complete && self.is_dir(&snap)? => {
                return Ok(self.created(&m));
            }
            Some(m)
                if matches!(
                    m.state,
                    MarkerState::Receiving | MarkerState::Swapping { .. }
                ) =>
            {
                // Retried by the same operation: start over, the target's
                // old content back first (see `undo.rs`).
                self.abort_received(&m)?;
                self.remove_own_tree(&snap)?;
            }
            Some(m) => {
                return Err(ProviderError::Other(format!(
                    "snapshot {}: {}",
                    spec.id,
                    m.state.describe(m.parent.as_deref())
                )));
            }
            None => {
                if self.entry(&snap)?.is_some() {
                    return Err(ProviderError::AlreadyExists(format!(
                        "{} (not tagged as ours)",
                        snap.display()
                    )));
                }
            }
        }
        let staging = self.staging(spec.op);
        self.remove_own_tree(&staging)?;
        self.layout
            .mkdir(&staging, root::PRIVATE_DIR_MODE)
            .map_err(|e| ProviderError::io(format!("creating {}", staging.display()), e))?;
        let received = self
            .receive_staged(target.id, &tpath, spec, &staging, input)
            .map_err(|failed| {
                // Kept: the staging area holds the target's old content,
                // which could not be put back (see `undo.rs`).
                if !failed.kept {
                    // Settled before the marker goes (`remove_staging`): a
                    // staging area a cut brings back without a marker
                    // naming it is removed by nothing (found by the sweep
                    // of a failed sync then a power cut, durable on
                    // return).
                    if let Err(e) = self.remove_staging(&staging) {
                        tracing::warn!(path = %staging.display(), error = %e, "could not remove staging");
                    }
                    // Whatever its state: a failed write of `complete` may
                    // have renamed that marker in place.
                    self.discard_any_state(VolumeKind::Snapshot, spec.id, spec.op);
                }
                failed
                    .error
                    .or_no_space(&format!("the receive into {}", target.id))
            });
        self.note_failure(received)
    }

    fn durability(&self) -> Durability {
        if self.batched {
            Durability::Batched
        } else {
            Durability::OnReturn
        }
    }

    /// The batched step: one round (see [`BatchSync`]), shared by
    /// concurrent callers, then the removal of the trees destroys queued before it
    /// (see "Durability").
    fn sync(&self) -> Result<(), ProviderError> {
        self.sync_and_empty_trash()
    }

    /// A whole `syncfs`, whatever the durability: a process killed in the
    /// middle of a durable-on-return verb left its changes before the
    /// verb's own fsyncs in the page cache, where the inventory sees them
    /// (found by `torture_dir_powercut`'s cut after a kill -9 and a reopen:
    /// creates rolled forward, then lost).
    fn sync_at_open(&self) -> Result<(), ProviderError> {
        self.sync_root()
    }

    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.inventory_items()
    }

    fn lookup(&self, id: &VolumeId) -> Result<Option<Found>, ProviderError> {
        self.lookup_item(id)
    }

    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        let tag = found.tag.as_ref().ok_or_else(|| {
            ProviderError::Other(format!(
                "{} is not tagged as ours; not touching it",
                found.name
            ))
        })?;
        check_id(&tag.volume)?;
        let m = self
            .marker(tag.kind, &tag.volume)?
            .ok_or_else(|| ProviderError::NotFound(format!("{} {}", tag.kind, tag.volume)))?;
        if m.op != tag.op {
            return Err(ProviderError::Other(format!(
                "{} {} is tagged by operation {}, not {}",
                tag.kind, tag.volume, m.op, tag.op
            )));
        }
        let path = self.path(m.kind, &m.volume);
        let refuse = |why: &str| {
            Err(ProviderError::Other(format!(
                "cannot finish {} {} ({}): {why}",
                m.kind,
                m.volume,
                m.state.describe(m.parent.as_deref())
            )))
        };
        match (&m.state, m.kind) {
            (MarkerState::Complete, _) => {
                if self.is_dir(&path)? {
                    Ok(self.created(&m))
                } else {
                    refuse("its directory is missing")
                }
            }
            // Its marker is durable: recovery syncs a batched provider
            // before taking its inventory.
            (MarkerState::Creating, VolumeKind::Data) => self.finish_create(&m, false),
            (MarkerState::Copying, VolumeKind::Data) => {
                let Some(parent) = m.parent.as_deref() else {
                    return refuse("it names no source snapshot");
                };
                let Ok(parent) = VolumeId::new(parent) else {
                    return refuse("its source snapshot id is not valid");
                };
                let source = VolumeRef {
                    id: parent,
                    kind: VolumeKind::Snapshot,
                    parent: None,
                    location: "",
                    details: &Details::new(),
                };
                let Ok((_, src)) = self.require(&source) else {
                    return refuse("its source snapshot is not here any more");
                };
                self.remove_own_tree(&path)?;
                self.copy_into(VolumeKind::Snapshot, parent, &src, &m)
            }
            (MarkerState::Copying, VolumeKind::Snapshot) => {
                refuse("the source's content at the time of the request is unknown")
            }
            (MarkerState::Swapping { dev, ino }, VolumeKind::Snapshot) => {
                self.finish_swap(&m, *dev, *ino)
            }
            (MarkerState::Receiving, _) => refuse("the stream is gone"),
            _ => refuse("nothing to finish; destroy it"),
        }
    }

    /// Removes the staging area of `op`; for a receive whose marker says
    /// `swapping`, after putting the target's old content back (see
    /// `undo.rs`): what the manager's undo of a failed or interrupted
    /// receive runs before destroying the half-made snapshot. The removal
    /// is settled like a destroy's (durable on return: now; batched: by the
    /// next round), so no staging area outlives the marker that names it.
    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        self.abort_staging(op)
    }

    fn clear_interrupted_create(&self, spec: &VolumeSpec<'_>) -> Result<(), ProviderError> {
        self.clear_create_remnant(spec)
    }
}
