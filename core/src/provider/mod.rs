//! Storage providers: the trait the manager drives, and its implementations.
//!
//! A provider knows its file system and its commands, never the journal or
//! the state. Every side effect is idempotent and tagged with the volume id and
//! the operation id that made it (the ownership tag), so reconciliation can
//! tell done from not done and ours from foreign. Methods are blocking; the
//! manager calls them on the blocking pool. Implementations: [`dir`] (the
//! embedded default, plain directories), btrfs and zfs.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

pub use crate::model::{AgentId, VolumeId};
use crate::model::{Details, OpId, VolumeKind};

pub mod btrfs;
pub mod cmd;
pub mod dir;
pub mod sim;
pub mod stream;
pub mod zfs;

/// Checks that `id` is a valid volume id (the one id rule,
/// [`crate::model::id_problem`]): one safe path component, never a flag.
pub fn check_id(id: &str) -> Result<(), ProviderError> {
    volume_id(id).map(drop)
}

/// `id` as a [`VolumeId`], or the provider error refusing it.
pub fn volume_id(id: &str) -> Result<&VolumeId, ProviderError> {
    VolumeId::new(id).map_err(|e| ProviderError::Other(format!("refusing volume id: {e}")))
}

/// Configuration of a provider as journaled: string keys and values.
pub type ProviderConfig = BTreeMap<String, String>;

/// Identity of a volume to create: what the ownership tag records.
#[derive(Debug, Clone, Copy)]
pub struct VolumeSpec<'a> {
    pub id: &'a VolumeId,
    pub op: OpId,
    pub kind: VolumeKind,
}

/// An existing volume, as the state (or an inventory) knows it.
#[derive(Debug, Clone, Copy)]
pub struct VolumeRef<'a> {
    pub id: &'a VolumeId,
    pub kind: VolumeKind,
    /// The volume this one derives from (source of a snapshot, origin of a fork).
    pub parent: Option<&'a str>,
    pub location: &'a str,
    pub details: &'a Details,
}

/// What a successful create/snapshot/fork/receive produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Created {
    pub location: String,
    pub details: Details,
}

/// The ownership tag found on provider data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub volume: String,
    pub op: OpId,
    pub kind: VolumeKind,
    pub parent: Option<String>,
}

/// Whether a found item is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Complete,
    /// Exists but half-made (e.g. created but not mounted; a partial receive).
    Incomplete {
        reason: String,
    },
}

/// One item of a provider's inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Provider-native name (a path, a dataset name).
    pub name: String,
    /// `None`: not ours (foreign), never touched.
    pub tag: Option<Tag>,
    pub presence: Presence,
    pub location: String,
    pub details: Details,
    /// A resumable partial receive held by this item (data volumes only).
    pub partial: Option<PartialReceive>,
}

/// What an interrupted, resumable receive left on its target: the state a
/// sender needs to continue the stream where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialReceive {
    /// The provider's resume token (ZFS `receive_resume_token`), opaque here.
    pub token: String,
    /// Identity (`details[guid]`) of the snapshot the stream carries.
    pub guid: String,
    /// The operation whose receive left it, if the provider knows.
    pub op: Option<OpId>,
}

/// What a stream's first bytes declare it carries, in the form of the
/// provider's `details[guid]`: the snapshot's identity and, for an
/// incremental stream, its base's. The manager checks it against the
/// target's snapshots before a receive begins (see
/// [`Provider::stream_identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIdentity {
    pub guid: String,
    /// `None` for a full stream.
    pub base: Option<String>,
}

/// A provider failure, carrying the provider's own message.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProviderError {
    NotFound(String),
    AlreadyExists(String),
    /// The target stayed busy after bounded retries.
    Busy {
        what: String,
        cause: String,
    },
    HasDependents {
        what: String,
        dependents: Vec<String>,
    },
    InvalidConfig(String),
    /// The provider's root belongs to another volmgr agent: its root marker
    /// (a dir or btrfs root) or root dataset (ZFS) names `owner`, another
    /// agent's identity. (ZFS also refuses a root dataset that would
    /// contain another agent's root: then `root` is that dataset below the
    /// configured one, and `owner` its agent.) Nothing under it was
    /// touched. A root changes hands only by an operator's deliberate act
    /// (README, "Handing a provider root to another agent"). (HTTP: 400
    /// `invalid_config`.)
    ForeignRoot {
        /// The root directory or dataset.
        root: String,
        /// The identity its marker names.
        owner: String,
    },
    /// Another volmgr agent on this host is running a provider on this
    /// root: it holds the root's lock (a dir or btrfs root:
    /// `<root>/.volmgr/lock`; ZFS: a host-local lock file of the root
    /// dataset), held for a provider's whole life. Checked before the root
    /// marker is read, so two agents starting together on an unowned root
    /// cannot both claim it. Nothing under it was touched. (HTTP: 400
    /// `invalid_config`, like [`ProviderError::ForeignRoot`].)
    RootInUse {
        /// The root directory or dataset.
        root: String,
        /// The lock file another agent holds.
        lock: String,
    },
    Io {
        context: String,
        source: std::io::Error,
    },
    /// An external command failed.
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A transfer stream is malformed or does not fit the target.
    Stream(String),
    /// A receive stopped part-way and its target keeps the partial state,
    /// resumable from `partial.token` (nothing else of the target changed).
    Suspended {
        what: String,
        partial: Box<PartialReceive>,
        cause: String,
    },
    /// The file system cannot hold what an operation would write (checked
    /// before and during a receive, and the mapping of `ENOSPC`/`EDQUOT`
    /// there). Nothing of the operation is left behind. (HTTP: 507.)
    NoSpace {
        what: String,
        detail: String,
    },
    /// The provider left its storage in a state only a reopen may judge
    /// (the dir provider: a receive whose target's old content could not
    /// be put back, kept in its staging area with the marker that finds
    /// it) and fails its rounds until it is reopened. The manager treats
    /// it like a failed shared sync, whatever the durability: no outcome
    /// is journaled (the intent stays pending, for the reopen's recovery
    /// to reconcile), and the provider is out of service until then. The
    /// message says where what could not be put back waits.
    OutOfService(String),
    /// The volume holds what the provider cannot carry (the directory
    /// provider: a FIFO, device or socket, or a tree deeper than its
    /// limit). The content's owner can change it; the provider did not
    /// fail. (HTTP: 409 `unsupported_content`; CSI: `FAILED_PRECONDITION`.)
    UnsupportedContent(String),
    /// A capacity below what the volume already holds: refused, nothing
    /// changed (a limit under the data would leave every write failing).
    /// (HTTP: 409 `capacity_below_usage`; CSI: `OUT_OF_RANGE`.)
    CapacityBelowUsage {
        what: String,
        used: u64,
        capacity: u64,
    },
    /// Anything else the provider reports.
    Other(String),
}

impl ProviderError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ProviderError::Io {
            context: context.into(),
            source,
        }
    }

    /// This error with an I/O failure that means "the file system is full"
    /// (`ENOSPC`, `EDQUOT`) turned into [`ProviderError::NoSpace`] for `what`.
    pub fn or_no_space(self, what: &str) -> Self {
        match self {
            ProviderError::Io { context, source }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                ProviderError::NoSpace {
                    what: what.to_owned(),
                    detail: format!("{context}: {source}"),
                }
            }
            other => other,
        }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderError::NotFound(what) => write!(f, "{what} not found"),
            ProviderError::AlreadyExists(what) => write!(f, "{what} already exists"),
            ProviderError::Busy { what, cause } => write!(f, "{what} is busy: {cause}"),
            ProviderError::HasDependents { what, dependents } => {
                write!(f, "{what} has dependents: {}", dependents.join(", "))
            }
            ProviderError::InvalidConfig(e) => write!(f, "invalid provider configuration: {e}"),
            ProviderError::ForeignRoot { root, owner } => write!(
                f,
                "invalid provider configuration: {root} belongs to another volmgr agent \
                 (owner {owner}): an agent never acts on a root another one owns; nothing \
                 under it was touched (to hand the root over, see README, \"Handing a \
                 provider root to another agent\")"
            ),
            ProviderError::RootInUse { root, lock } => write!(
                f,
                "invalid provider configuration: {root} is in use by another volmgr agent on \
                 this host (it holds the lock {lock}): two agents never run on one root; \
                 nothing under it was touched"
            ),
            ProviderError::Io { context, source } => write!(f, "{context}: {source}"),
            ProviderError::Command {
                command,
                status,
                stderr,
            } => write!(f, "`{command}` failed ({status}): {}", stderr.trim()),
            ProviderError::Stream(e) => write!(f, "bad snapshot stream: {e}"),
            ProviderError::Suspended {
                what,
                partial,
                cause,
            } => write!(
                f,
                "receive into {what} interrupted, resumable (token {}): {cause}",
                partial.token
            ),
            ProviderError::NoSpace { what, detail } => {
                write!(f, "not enough space for {what}: {detail}")
            }
            ProviderError::CapacityBelowUsage {
                what,
                used,
                capacity,
            } => write!(
                f,
                "{what} holds {used} bytes, more than the capacity of {capacity} bytes asked"
            ),
            ProviderError::OutOfService(e)
            | ProviderError::UnsupportedContent(e)
            | ProviderError::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ProviderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProviderError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What the receiver of a send can read beyond a provider's oldest stream
/// format (negotiated by the caller: volmgr's puller asks with the
/// `x-volmgr-stream-features` request header, Flynn's client never does).
/// The default asks for nothing new: the stream is exactly what a receiver
/// that predates every option reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// The receiver reads holes as holes: the directory provider writes
    /// version 2 of its stream, where a file with holes is an `S` record
    /// carrying only its data extents. btrfs, ZFS and the simulation ignore
    /// it (their tools' streams are sparse-aware already).
    pub sparse: bool,
}

impl SendOptions {
    /// With holes sent as holes ([`SendOptions::sparse`]) or not.
    #[must_use]
    pub fn with_sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }
}

/// Statistics of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SendStats {
    pub bytes: u64,
    pub incremental: bool,
    /// The stream continues an interrupted one ([`Provider::send_resumed`]).
    pub resumed: bool,
    /// File content bytes the provider read to make the stream: the data
    /// it sent and the data it compared with the base. The directory
    /// provider never reads a hole (so a huge sparse file costs its data,
    /// not its length); 0 where a tool makes the stream (btrfs, ZFS) and
    /// in the simulation.
    pub read_bytes: u64,
}

/// When a provider's side effects are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A verb returns only once its side effect is durable (ZFS: `zfs create`
    /// and `zfs snapshot` return after their transaction group synced).
    OnReturn,
    /// Verbs return before their side effects are durable, and
    /// [`Provider::sync`] makes every side effect completed before it
    /// durable. The manager runs one `sync` for all the operations whose
    /// outcomes go into the next journal commit, and journals an outcome
    /// only after the `sync` covering its side effect returned.
    Batched,
}

/// A storage provider. All methods block; all side effects are idempotent.
pub trait Provider: Send + Sync + fmt::Debug {
    /// `dir`, `btrfs`, `zfs`, ...
    fn kind(&self) -> &'static str;

    /// When this provider's side effects are durable (see [`Durability`]).
    fn durability(&self) -> Durability {
        Durability::OnReturn
    }

    /// With [`Durability::Batched`]: makes every side effect that completed
    /// before this call durable. A failure means some may not be: the
    /// manager then journals none of their outcomes. `OnReturn` providers
    /// have nothing to do.
    fn sync(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Called by the manager when it opens, before the inventory: makes
    /// durable everything on the provider's storage, including what an
    /// earlier instance (a killed process) left unsynced, so that whatever
    /// the inventory finds and reconciliation journals (a create rolled
    /// forward, say) is on the disk first. The default: [`Provider::sync`]
    /// for a `Batched` provider (which must cover an earlier instance's
    /// effects too), nothing for an `OnReturn` one whose effects are
    /// durable when its calls return, even when the calling process dies
    /// (ZFS: a `zfs` command finishes its transaction group itself).
    fn sync_at_open(&self) -> Result<(), ProviderError> {
        if self.durability() == Durability::Batched {
            self.sync()
        } else {
            Ok(())
        }
    }

    /// The configuration to journal so the provider can be rebuilt at open.
    fn config(&self) -> ProviderConfig;

    /// Creates an empty data volume tagged with `spec`. Succeeds if it already
    /// exists with the same tag (idempotent), finishing it if half-made.
    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError>;

    /// Takes a read-only snapshot of `source`, tagged with `spec`.
    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError>;

    /// Makes a writable volume from a snapshot, tagged with `spec`.
    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError>;

    /// Destroys a volume or snapshot. Succeeds if it is already gone.
    /// [`ProviderError::Busy`] means nothing was destroyed: the item is
    /// still there, as it was (the manager then looks nothing up; any other
    /// error may come after a side effect, and it looks the item up).
    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError>;

    /// Writes a stream of `snapshot`; incremental from `base` when given (a
    /// snapshot the receiver also has, found by the manager from its haves),
    /// in the form `options` says the receiver reads.
    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
        out: &mut dyn Write,
    ) -> Result<SendStats, ProviderError>;

    /// The size in bytes of the stream [`Provider::send_snapshot`] would
    /// write with the same arguments, if known before sending (progress
    /// displays show a total and a percentage then). `None` by default.
    fn send_size(
        &self,
        _snapshot: &VolumeRef<'_>,
        _base: Option<&VolumeRef<'_>>,
        _options: &SendOptions,
    ) -> Result<Option<u64>, ProviderError> {
        Ok(None)
    }

    /// Receives a stream into data volume `target` (its content becomes the
    /// stream's) and records the result as snapshot `spec` of it. The
    /// snapshot's `details[guid]` is the sender's snapshot identity. On the
    /// dir, btrfs and ZFS providers a receive that fails (other than
    /// [`ProviderError::Suspended`]) leaves the target's content as it was,
    /// like `zfs recv -F` (the simulated provider does not model this: its
    /// target keeps what a failed receive wrote). Whether the stream fits
    /// the target (not a snapshot it holds, on top of its newest snapshot)
    /// the manager checks before it calls, from
    /// [`Provider::stream_identity`].
    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError>;

    /// Everything under the provider's root, in one call.
    fn inventory(&self) -> Result<Vec<Found>, ProviderError>;

    /// The item tagged as volume `id` (data volume or snapshot), exactly as
    /// [`Provider::inventory`] would report it, or `None`. What the manager
    /// asks after a failed call (did the destroy happen? what did the failed
    /// create leave?): a provider that can read one item without listing
    /// all overrides it (the directory provider: two `lstat`s and two marker
    /// reads, where its inventory reads every marker; btrfs: two `lstat`s
    /// and the stage, where its inventory lists every item; ZFS: one
    /// read-only channel program naming the datasets that can carry the
    /// id's tag, then one `zfs list` of those, where its inventory lists
    /// every dataset and snapshot). A failure to read is an error, never
    /// `None`. By default the inventory, filtered.
    fn lookup(&self, id: &VolumeId) -> Result<Option<Found>, ProviderError> {
        Ok(self
            .inventory()?
            .into_iter()
            .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == id.as_str())))
    }

    /// Completes a half-made item found by [`Provider::inventory`]. (The
    /// manager's recovery calls it for a half-made create, and for the
    /// target of a suspended receive; a half-made snapshot, fork or receive
    /// it undoes: [`Provider::abort_partial`], then [`Provider::destroy`].)
    fn finish(&self, found: &Found) -> Result<Created, ProviderError>;

    /// Removes partial state an interrupted operation `op` may have left
    /// outside the inventory (staging areas, partial receives). Idempotent.
    /// For a receive that may have changed its target, the target's old
    /// content is put back first; if that fails, nothing of it is removed
    /// (an error, and the next call can still put it back).
    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError>;

    /// Called at open, before the inventory, for each create whose intent
    /// is durable and has no outcome: removes what that create (`spec`:
    /// its id and op) may have left *without a readable tag*, which the
    /// inventory could otherwise only report as foreign. For the directory
    /// provider, whose batched create writes its marker and makes the
    /// directory in one durability round, that is an empty directory at the
    /// volume's path whose marker a power cut lost or garbled (and the
    /// garbled marker, or a marker of this op without its directory). It
    /// never touches an item tagged by another operation, a complete item
    /// (rolled forward by the table), or a directory with entries.
    /// Idempotent. Nothing by default: a provider whose creates tag
    /// atomically leaves no such remnant.
    fn clear_interrupted_create(&self, _spec: &VolumeSpec<'_>) -> Result<(), ProviderError> {
        Ok(())
    }

    /// The resumable partial receive data volume `target` holds, if any.
    /// Providers without resumable receives hold none.
    fn partial_receive(
        &self,
        _target: &VolumeRef<'_>,
    ) -> Result<Option<PartialReceive>, ProviderError> {
        Ok(None)
    }

    /// Discards the partial receive `target` holds. Idempotent.
    fn abort_receive(&self, _target: &VolumeRef<'_>) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Whether `token` (a receiver's [`PartialReceive::token`]) continues a
    /// stream of `snapshot`, so [`Provider::send_resumed`] can serve it.
    fn resume_fits(&self, _snapshot: &VolumeRef<'_>, _token: &str) -> Result<bool, ProviderError> {
        Ok(false)
    }

    /// The most leading bytes of a stream [`Provider::stream_identity`]
    /// needs (0: the provider cannot tell a stream's identity from its
    /// head, and the manager reads none ahead).
    fn stream_head_len(&self) -> usize {
        0
    }

    /// The identity a stream's head declares (`head`: its first
    /// [`Provider::stream_head_len`] bytes, fewer if the stream is shorter),
    /// or `None` where the head does not tell (a resumed ZFS stream, which
    /// continues a partial receive, or a head that is not a valid stream:
    /// the receive itself then refuses it, as it always did). The bytes are
    /// hostile: this never panics and reads nothing past `head`.
    fn stream_identity(&self, head: &[u8]) -> Option<StreamIdentity> {
        let _ = head;
        None
    }

    /// Whether this provider enforces a data volume's capacity (a write past
    /// it fails), so a capacity can be promised and expanded. The default: no.
    fn enforces_capacity(&self) -> bool {
        false
    }

    /// Sets (or raises) the capacity limit of data volume `volume` to
    /// `bytes`. Idempotent. Providers that do not enforce capacity refuse;
    /// those that do refuse a capacity below what the volume already holds
    /// ([`ProviderError::CapacityBelowUsage`]).
    fn set_capacity(&self, volume: &VolumeRef<'_>, bytes: u64) -> Result<(), ProviderError> {
        let _ = bytes;
        Err(ProviderError::Other(format!(
            "the {} provider cannot enforce the capacity of {}",
            self.kind(),
            volume.id
        )))
    }

    /// Bytes available for new volumes, if the provider can tell.
    fn free_bytes(&self) -> Result<Option<u64>, ProviderError> {
        Ok(None)
    }

    /// Checks provider-specific options of a new data volume (such as ZFS
    /// `compression` or `recordsize`) without acting. The default accepts none.
    fn check_volume_options(&self, options: &ProviderConfig) -> Result<(), ProviderError> {
        match options.keys().next() {
            None => Ok(()),
            Some(key) => Err(ProviderError::InvalidConfig(format!(
                "the {} provider has no volume option {key:?}",
                self.kind()
            ))),
        }
    }

    /// Applies options [`Provider::check_volume_options`] accepted to data
    /// volume `volume`. Idempotent. The default accepts none.
    fn set_volume_options(
        &self,
        volume: &VolumeRef<'_>,
        options: &ProviderConfig,
    ) -> Result<(), ProviderError> {
        let _ = volume;
        self.check_volume_options(options)
    }

    /// Writes the rest of a stream of `snapshot` from where the receiver's
    /// `token` says it stopped. `None`, with nothing written, if the token
    /// does not continue a stream of `snapshot` (or the provider cannot
    /// resume at all): the caller then sends a whole stream.
    fn send_resumed(
        &self,
        _snapshot: &VolumeRef<'_>,
        _token: &str,
        _out: &mut dyn Write,
    ) -> Result<Option<SendStats>, ProviderError> {
        Ok(None)
    }
}

/// Mode of the directories a provider keeps (and of a root it creates): no
/// other user lists or traverses them, so a volume is reached only through
/// the bind mounts root makes (README, "State directory").
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` ([`PRIVATE_DIR_MODE`]; with `recursive`, its missing
/// parents too, and an existing one is no error), then makes an existing
/// directory that is more open private, through a handle opened without
/// following a symlink (`O_NOFOLLOW | O_DIRECTORY`, then `fstat` and
/// `fchmod`): a directory swapped for a symlink meanwhile is never
/// followed. A symlink or anything else at `dir` is left as it is, to the
/// caller's later open, which refuses it.
pub(crate) fn make_private_dir(
    dir: &std::path::Path,
    recursive: bool,
) -> Result<(), ProviderError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let failed = |action: &str| {
        let context = format!("{action} {}", dir.display());
        move |e| ProviderError::io(context, e)
    };
    std::fs::DirBuilder::new()
        .recursive(recursive)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(failed("create"))?;
    let handle = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
    {
        Ok(handle) => handle,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => return Ok(()),
        Err(e) => return Err(failed("open")(e)),
    };
    let md = handle.metadata().map_err(failed("examine"))?;
    if md.mode() & 0o7777 != PRIVATE_DIR_MODE {
        handle
            .set_permissions(std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(failed("make private (0700)"))?;
    }
    Ok(())
}

/// Refuses a provider root whose path another user could change (the rule
/// of `fsutil::trust`, the one the state directory passes; the root itself
/// owned by root or the effective uid): volmgr, as root, creates, renames
/// and removes volumes there, so a user who can swap a directory on the
/// way (a btrfs mount point's parent, say) could point that at any place.
/// A missing root passes if its existing ancestors do (the provider then
/// creates it and checks again). Every open checks: an existing root that
/// fails is refused too. `label` names the root in the error (`root`,
/// `btrfs root`, `zfs workdir`).
pub(crate) fn refuse_untrusted_root(
    label: &str,
    root: &std::path::Path,
) -> Result<(), ProviderError> {
    use crate::fsutil::trust::{Last, check_dir_path_to_create};
    check_dir_path_to_create(root, Last::RootOrEuid)
        .map(drop)
        .map_err(|u| {
            ProviderError::InvalidConfig(format!(
                "{label} {}: another user could change its path: {u} (an existing {label} is \
                 refused too: fix the owner or mode named, or choose another {label}; README, \
                 \"State directory\")",
                root.display()
            ))
        })
}

/// Bytes available to an unprivileged writer on the file system holding
/// `path` (statvfs `f_bavail * f_frsize`).
pub fn statvfs_available(path: &std::path::Path) -> Result<u64, ProviderError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ProviderError::Other(format!("{} contains a NUL byte", path.display())))?;
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut s) } != 0 {
        return Err(ProviderError::io(
            format!("statvfs {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// Builds a provider of a kind from its journaled configuration, for the
/// agent whose identity is given: a built-in provider claims its root for
/// that agent and refuses a root another agent owns
/// ([`ProviderError::ForeignRoot`]).
pub type ProviderFactory = Arc<
    dyn Fn(&ProviderConfig, &AgentId) -> Result<Arc<dyn Provider>, ProviderError> + Send + Sync,
>;

/// The factories of the built-in provider kinds.
pub fn builtin_factories() -> BTreeMap<String, ProviderFactory> {
    let mut factories: BTreeMap<String, ProviderFactory> = BTreeMap::new();
    factories.insert(
        dir::KIND.to_owned(),
        Arc::new(|config: &ProviderConfig, owner: &AgentId| {
            Ok(Arc::new(dir::DirProvider::for_owner(config, owner)?) as Arc<dyn Provider>)
        }),
    );
    factories.insert(btrfs::KIND.to_owned(), btrfs::BtrfsProvider::factory());
    factories.insert(zfs::KIND.to_owned(), zfs::ZfsProvider::factory());
    factories
}

#[cfg(test)]
mod private_dir_tests {
    use super::make_private_dir;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn mode(p: &std::path::Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A directory is made 0700, an existing looser one is tightened, and a
    /// symlink at the name (say, swapped in by whoever could) is never
    /// followed: its target keeps its mode.
    #[test]
    fn a_private_dir_is_tightened_but_a_symlink_at_its_name_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let made = tmp.path().join("a/b");
        make_private_dir(&made, true).unwrap();
        assert_eq!(mode(&made), 0o700);
        fs::set_permissions(&made, fs::Permissions::from_mode(0o755)).unwrap();
        make_private_dir(&made, true).unwrap();
        assert_eq!(mode(&made), 0o700, "tightened");

        let target = tmp.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("link");
        symlink(&target, &link).unwrap();
        make_private_dir(&link, true).unwrap();
        assert_eq!(mode(&target), 0o755, "the symlink's target untouched");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
