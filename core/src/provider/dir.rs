//! The directory provider: the embedded default, plain directories, no
//! privileges needed.
//!
//! # Layout
//!
//! ```text
//! <root>/
//!   data/<id>/               a data volume (its `location`)
//!   snapshot/<id>/           a snapshot: a read-only copy
//!   .volmgr/data/<id>        ownership marker of data volume <id>
//!   .volmgr/snapshot/<id>    ownership marker of snapshot <id>
//!   .volmgr/modes/<id>       a snapshot's mode manifest (only if it has exceptions)
//!   .staging/<op>/           receive staging of operation <op>
//!   .trash/                  trees being removed (swept when the provider starts)
//! ```
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
//! `swapping` (half-made). Markers are written with temp file,
//! fsync, rename, fsync of the directory. A marker is always written *before*
//! its directory appears and removed *after* it is gone, so the provider never
//! leaves an untagged directory of its own behind, and a directory without a
//! marker is foreign (reported with tag `None`, never touched, never destroyed).
//!
//! An item is [`Presence::Complete`] only if its marker says `complete` and its
//! directory exists. A half-made marker is [`Presence::Incomplete`] with a
//! reason. A `complete` marker whose directory is gone is left out of the
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
//! # Stream format (version 1)
//!
//! All integers big-endian. Paths are relative, `/`-separated bytes; the empty
//! path is the volume's root.
//!
//! ```text
//! header   magic "VMGRDIRS" (8) | version u16 = 1 | flags u16 (bit 0: incremental)
//!          | reserved u32 = 0 | guid u128 (the snapshot's) | base guid u128 (0 if full)
//! records  tag u8, then:
//!   'D' directory     path | mode u32            (creates it, or sets its mode)
//!   'F' regular file  path | mode u32 | len u64 | len bytes of content
//!   'L' symlink       path | target len u16 | target bytes
//!   'P' mode change   path | mode u32            (existing file or directory)
//!   'X' deletion      path                       (whatever is there, recursively)
//! end      'E' | count u64 (records before it) | crc32 u32 of every byte before it
//! path     len u16 | bytes
//! ```
//!
//! A full stream carries the whole tree in pre-order (a directory before its
//! entries, names in byte order). An incremental stream carries, relative to
//! the base snapshot: new entries in full; files whose size or content differs
//! (compared byte by byte; timestamps are unreliable after copies) in full; a
//! `P` record for a file whose only change is its mode; a `D` record for a
//! directory whose mode changed; changed symlinks; entries whose type changed
//! (in full: the receiver replaces them); and an `X` record per path present
//! in the base but not in the snapshot. Modes are the true modes (`0o7777`).
//!
//! The receiver trusts nothing: the magic, version, flags and reserved field
//! must match; a path must be 1..=4096 bytes, relative, without NUL, empty,
//! `.` or `..` components, and every ancestor must be a real directory of the
//! tree being built (never a symlink), so nothing is created, changed or
//! removed outside the staging tree; link targets are 1..=4096 bytes without
//! NUL (they are stored, never followed); a file declares at most 2^44 bytes
//! and its content is copied in 128 KiB chunks; a stream holds at most 2^26
//! records; the end record's count and CRC must hold. Any violation, and any
//! short read, is a [`ProviderError::Stream`] and the staging area is removed.
//! The receiver stops reading at the end record (it does not require EOF).
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
//! (`renameat2(RENAME_EXCHANGE)`, two renames where unsupported) → the old
//! content goes to the trash → marker `complete`. A crash leaves either
//! staging only (removed by [`Provider::abort_partial`]) or a snapshot whose
//! marker is half-made. A crash in the `swapping` window may leave the target
//! with the new content while the receive is reported failed (as with
//! `zfs recv -F`, the target's prior content was to be discarded anyway).
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
//!   waiting to be renamed in.
//!
//! Everything else is refused with an error, so the manager treats it as not
//! done: a `copying` snapshot (the source's content at the time of the request
//! is unknown), `receiving` (the stream is gone).
//!
//! # Errors and cleanup
//!
//! A create, snapshot, fork or receive that fails removes what it made (tree,
//! manifest, marker, staging) before returning the error. Destroy renames
//! the tree into `.trash` under a name recording kind, op and id
//! (`item.<kind>.<op>.<unique>.<id>`; atomic), removes the manifest and
//! marker, then the tree; it restores owner `rwx` on read-only directories as
//! it goes and never follows symlinks. If a crash interrupts it after the
//! rename, the marker is left without its directory (absent from the
//! inventory); the next start sweeps the trash and removes such a marker when
//! it still carries the op of the trashed tree.
//!
//! # Durability cost
//!
//! A create is five fsyncs (marker `creating`: file and directory; the new
//! directory's parent; marker `complete`: file and directory); a destroy is
//! two (the parent after the rename into the trash, the marker directory),
//! three for a snapshot with a mode manifest.

mod marker;
mod tree;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

use self::marker::{MARKER_FORMAT, Marker, MarkerState};
use self::tree::{Modes, Policy, lstat, remove_tree, sync_dir};
use super::stream::HashReader;
use super::{
    Created, Found, Presence, Provider, ProviderConfig, ProviderError, SendStats, Tag, VolumeRef,
    VolumeSpec,
};
use crate::state::{DETAIL_GUID, Details, OpId, VolumeKind};

/// The provider kind.
pub const KIND: &str = "dir";
/// The configuration key of the root directory (required, absolute).
pub const CONFIG_ROOT: &str = "root";
/// Longest volume id accepted.
pub const MAX_ID_LEN: usize = 128;

const MARKERS: &str = ".volmgr";
const MODES: &str = "modes";
const STAGING: &str = ".staging";
const TRASH: &str = ".trash";

/// Checks that `id` is one safe path component (the manager's id rule).
pub fn check_id(id: &str) -> Result<(), ProviderError> {
    let why = if id.is_empty() {
        Some("it is empty".to_owned())
    } else if id.len() > MAX_ID_LEN {
        Some(format!("it is longer than {MAX_ID_LEN} bytes"))
    } else if id.starts_with('.') || id.starts_with('-') {
        Some("it starts with '.' or '-'".to_owned())
    } else {
        id.bytes()
            .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
            .map(|b| format!("it contains {:?}", b as char))
    };
    match why {
        Some(why) => Err(ProviderError::Other(format!(
            "refusing volume id {id:?}: {why} (allowed: one path component of A-Z a-z 0-9 . _ -)"
        ))),
        None => Ok(()),
    }
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
}

impl DirProvider {
    /// Opens (creating if missing) the provider rooted at `root`, an absolute
    /// path without `..`. Sweeps the trash left by interrupted removals.
    pub fn new(root: PathBuf) -> Result<Self, ProviderError> {
        let invalid = |why: &str| {
            ProviderError::InvalidConfig(format!("{CONFIG_ROOT} {}: {why}", root.display()))
        };
        if !root.is_absolute() {
            return Err(invalid("not an absolute path"));
        }
        if root.components().any(|c| c == Component::ParentDir) {
            return Err(invalid("contains '..'"));
        }
        let Some(root_str) = root.to_str().map(str::to_owned) else {
            return Err(invalid("not valid UTF-8"));
        };
        if root_str.contains('\0') {
            return Err(invalid("contains NUL"));
        }
        match fs::metadata(&root) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(invalid("not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&root)
                    .map_err(|e| ProviderError::io(format!("creating {}", root.display()), e))?;
            }
            Err(e) => {
                return Err(ProviderError::io(
                    format!("examining {}", root.display()),
                    e,
                ));
            }
        }
        let p = DirProvider { root, root_str };
        let mut created = BTreeSet::new();
        for sub in [
            p.root.join("data"),
            p.root.join("snapshot"),
            p.root.join(MARKERS),
            p.marker_dir(VolumeKind::Data),
            p.marker_dir(VolumeKind::Snapshot),
            p.modes_dir(),
            p.root.join(STAGING),
            p.trash(),
        ] {
            match DirBuilder::new().mode(0o755).create(&sub) {
                Ok(()) => {
                    created.insert(sub.parent().expect("has a parent").to_path_buf());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !tree::is_real_dir(&sub)? {
                        return Err(ProviderError::InvalidConfig(format!(
                            "{} exists and is not a directory",
                            sub.display()
                        )));
                    }
                }
                Err(e) => {
                    return Err(ProviderError::io(format!("creating {}", sub.display()), e));
                }
            }
        }
        for dir in created {
            sync_dir(&dir)?;
        }
        p.sweep_trash();
        Ok(p)
    }

    /// Builds the provider from its journaled configuration: `root` (required,
    /// absolute). Unknown keys are refused.
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        if let Some(key) = config.keys().find(|k| k.as_str() != CONFIG_ROOT) {
            return Err(ProviderError::InvalidConfig(format!(
                "unknown key {key:?} (the dir provider takes only {CONFIG_ROOT:?})"
            )));
        }
        let root = config.get(CONFIG_ROOT).ok_or_else(|| {
            ProviderError::InvalidConfig(format!("missing {CONFIG_ROOT:?} (an absolute path)"))
        })?;
        DirProvider::new(PathBuf::from(root))
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
        marker::read(&self.marker_dir(kind).join(id), kind, id)
    }

    fn put_marker(&self, m: &Marker) -> Result<(), ProviderError> {
        marker::write(&self.marker_dir(m.kind), m)
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
        if m.state != MarkerState::Complete {
            return Err(ProviderError::Other(format!(
                "{} {} is half-made: {}",
                v.kind,
                v.id,
                m.state.describe(m.parent.as_deref())
            )));
        }
        if !tree::is_real_dir(&path)? {
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
            VolumeKind::Snapshot => marker::read_manifest(&self.modes_dir(), id),
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

    /// Moves a tree into the trash under `name` (atomic; the parent is synced)
    /// and returns where it went; a non-directory is simply removed.
    fn to_trash(&self, path: &Path, name: &str) -> Result<Option<PathBuf>, ProviderError> {
        let Some(md) = lstat(path)? else {
            return Ok(None);
        };
        let parent = path.parent().expect("not the root").to_path_buf();
        if !md.file_type().is_dir() {
            tree::remove_file_if_present(path)?;
            sync_dir(&parent)?;
            return Ok(None);
        }
        // Moving a directory to another parent needs write permission on it.
        tree::ensure_owner_rwx(path, &md)?;
        let doomed = self.trash().join(name);
        fs::rename(path, &doomed)
            .map_err(|e| ProviderError::io(format!("moving {} to the trash", path.display()), e))?;
        sync_dir(&parent)?;
        Ok(Some(doomed))
    }

    /// Removes a tree from the trash; one that resists stays for the next start.
    fn empty_trash_entry(doomed: Option<PathBuf>) {
        if let Some(doomed) = doomed
            && let Err(e) = remove_tree(&doomed)
        {
            tracing::warn!(path = %doomed.display(), error = %e, "could not empty the trash; retried at the next start");
        }
    }

    /// Trash name of an item's tree: `item.<kind>.<op>.<unique>.<id>`, so a
    /// start after a crash knows whose marker to remove.
    fn item_trash_name(m: &Marker) -> String {
        format!(
            "item.{}.{}.{}.{}",
            dir_name(m.kind),
            m.op,
            Uuid::new_v4().simple(),
            m.volume
        )
    }

    fn parse_item_trash_name(name: &str) -> Option<(VolumeKind, OpId, &str)> {
        let mut parts = name.splitn(5, '.');
        if parts.next()? != "item" {
            return None;
        }
        let kind = match parts.next()? {
            "data" => VolumeKind::Data,
            "snapshot" => VolumeKind::Snapshot,
            _ => return None,
        };
        let op = parts.next()?.parse().ok()?;
        parts.next()?;
        let id = parts.next()?;
        check_id(id).ok()?;
        Some((kind, op, id))
    }

    /// Empties the trash. An item moved there by a destroy that was
    /// interrupted before its marker went loses its marker now (if the marker
    /// is still that operation's and nothing took the item's place).
    fn sweep_trash(&self) {
        let Ok(entries) = fs::read_dir(self.trash()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some((kind, op, id)) = name.to_str().and_then(Self::parse_item_trash_name)
                && let Ok(Some(m)) = self.marker(kind, id)
                && m.op == op
                && matches!(lstat(&self.path(kind, id)), Ok(None))
                && let Err(e) = self.forget(&m)
            {
                tracing::warn!(%kind, id, error = %e, "could not remove the marker of a destroyed item");
            }
            Self::empty_trash_entry(Some(entry.path()));
        }
    }

    /// Removes an item's manifest and marker (its tree being gone).
    fn forget(&self, m: &Marker) -> Result<(), ProviderError> {
        if m.kind == VolumeKind::Snapshot
            && tree::remove_file_if_present(&self.modes_dir().join(&m.volume))?
        {
            sync_dir(&self.modes_dir())?;
        }
        let dir = self.marker_dir(m.kind);
        tree::remove_file_if_present(&dir.join(&m.volume))?;
        sync_dir(&dir)
    }

    /// Removes an item that carries marker `m`: its tree into the trash
    /// (atomic, named after the item), then the manifest and the marker, then
    /// the tree. A crash in between leaves a marker without a directory,
    /// which the next start removes (see [`Self::sweep_trash`]).
    fn remove_item(&self, m: &Marker) -> Result<(), ProviderError> {
        let doomed = self.to_trash(&self.path(m.kind, &m.volume), &Self::item_trash_name(m))?;
        self.forget(m)?;
        Self::empty_trash_entry(doomed);
        Ok(())
    }

    /// Best-effort removal of a half-made item of operation `op` after a
    /// failure (the error being returned matters more than this one).
    fn discard(&self, kind: VolumeKind, id: &str, op: OpId) {
        match self.marker(kind, id) {
            Ok(Some(m)) if m.op == op && m.state != MarkerState::Complete => {
                if let Err(e) = self.remove_item(&m) {
                    tracing::warn!(%kind, id, error = %e, "could not remove a half-made item");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%kind, id, error = %e, "could not read the marker of a half-made item")
            }
        }
    }

    /// Creates the directory of a `creating` data volume and marks it complete.
    fn finish_create(&self, m: &Marker) -> Result<Created, ProviderError> {
        let path = self.path(VolumeKind::Data, &m.volume);
        match lstat(&path)? {
            Some(md) if md.file_type().is_dir() => {}
            Some(_) => {
                return Err(ProviderError::Other(format!(
                    "{} exists and is not a directory",
                    path.display()
                )));
            }
            None => {
                DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(|e| ProviderError::io(format!("creating {}", path.display()), e))?;
                tree::chmod_dir(&path, 0o755)?;
            }
        }
        sync_dir(&self.content_dir(VolumeKind::Data))?;
        let done = m.with_state(MarkerState::Complete);
        self.put_marker(&done)?;
        Ok(self.created(&done))
    }

    /// Copies `src` (kind `src_kind`, id `src_id`) into the item of marker
    /// `m` (state `copying`, directory absent) and marks it complete.
    fn copy_into(
        &self,
        src_kind: VolumeKind,
        src_id: &str,
        src: &Path,
        m: &Marker,
    ) -> Result<Created, ProviderError> {
        let src_modes = self.modes_of(src_kind, src_id)?;
        let dst = self.path(m.kind, &m.volume);
        let policy = match m.kind {
            VolumeKind::Data => Policy::Plain,
            VolumeKind::Snapshot => Policy::Snapshot,
        };
        let modes = tree::copy_tree(src, &src_modes, &dst, policy, true)?;
        if m.kind == VolumeKind::Snapshot {
            marker::write_manifest(&self.modes_dir(), &m.volume, &modes)?;
        }
        sync_dir(&self.content_dir(m.kind))?;
        let done = m.with_state(MarkerState::Complete);
        self.put_marker(&done)?;
        Ok(self.created(&done))
    }

    /// Snapshot and fork: a copy of `source` as a new item of kind `kind`.
    fn derive(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        kind: VolumeKind,
    ) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if spec.kind != kind {
            return Err(ProviderError::Other(format!(
                "asked to make {} {} as a {kind}",
                spec.kind, spec.id
            )));
        }
        let (_, src) = self.require(source)?;
        let dst = self.path(kind, spec.id);
        let m = match self.marker(kind, spec.id)? {
            Some(m) if m.op != spec.op => {
                return Err(ProviderError::AlreadyExists(format!(
                    "{kind} {} (made by operation {})",
                    spec.id, m.op
                )));
            }
            Some(m) if m.state == MarkerState::Complete => {
                if tree::is_real_dir(&dst)? {
                    return Ok(self.created(&m));
                }
                return Err(ProviderError::Other(format!(
                    "{kind} {} is marked complete but {} is missing",
                    spec.id,
                    dst.display()
                )));
            }
            Some(m) if m.state == MarkerState::Copying => {
                // Retried by the same operation: start the copy over.
                remove_tree(&dst)?;
                m
            }
            Some(m) => {
                return Err(ProviderError::Other(format!(
                    "{kind} {}: {}",
                    spec.id,
                    m.state.describe(m.parent.as_deref())
                )));
            }
            None => {
                if lstat(&dst)?.is_some() {
                    return Err(ProviderError::AlreadyExists(format!(
                        "{} (not tagged as ours)",
                        dst.display()
                    )));
                }
                let m = Marker {
                    format: MARKER_FORMAT,
                    volume: spec.id.to_owned(),
                    op: spec.op,
                    kind,
                    parent: Some(source.id.to_owned()),
                    guid: (kind == VolumeKind::Snapshot)
                        .then(|| guid_hex(Uuid::new_v4().as_u128())),
                    state: MarkerState::Copying,
                };
                self.put_marker(&m)?;
                m
            }
        };
        self.copy_into(source.kind, source.id, &src, &m)
            .inspect_err(|_| self.discard(kind, spec.id, spec.op))
    }

    /// A complete snapshot whose parent is `target` and whose guid is `guid`.
    fn find_base(&self, target: &str, guid: u128) -> Result<Option<String>, ProviderError> {
        let want = guid_hex(guid);
        for id in marker::list(&self.marker_dir(VolumeKind::Snapshot))? {
            if check_id(&id).is_err() {
                continue;
            }
            let Ok(Some(m)) = self.marker(VolumeKind::Snapshot, &id) else {
                continue;
            };
            if m.state == MarkerState::Complete
                && m.parent.as_deref() == Some(target)
                && m.guid.as_deref() == Some(want.as_str())
                && tree::is_real_dir(&self.path(VolumeKind::Snapshot, &id))?
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Puts the staged tree `new` in place of the target directory `tpath`:
    /// an atomic exchange, or (unsupported) two renames. Afterwards `new`
    /// holds the old content (or is absent).
    fn swap_in(&self, new: &Path, tpath: &Path) -> Result<(), ProviderError> {
        if let Some(md) = lstat(tpath)? {
            tree::ensure_owner_rwx(tpath, &md)?;
        }
        if !tree::exchange(new, tpath)? {
            let old = new.with_file_name("old");
            fs::rename(tpath, &old)
                .map_err(|e| ProviderError::io(format!("moving {} aside", tpath.display()), e))?;
            fs::rename(new, tpath).map_err(|e| {
                ProviderError::io(
                    format!("moving the received tree to {}", tpath.display()),
                    e,
                )
            })?;
        }
        sync_dir(tpath.parent().expect("has a parent"))?;
        sync_dir(new.parent().expect("has a parent"))
    }

    /// The steps of a receive after the staging area exists.
    fn receive_staged(
        &self,
        target: &str,
        tpath: &Path,
        spec: &VolumeSpec<'_>,
        staging: &Path,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        let mut r = HashReader::new(input);
        let header = wire::read_header(&mut r)?;
        let new = staging.join("new");
        let mut modes = match header.base {
            None => {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&new)
                    .map_err(|e| ProviderError::io(format!("creating {}", new.display()), e))?;
                let mut modes = Modes::new(Policy::Staging);
                let stored = modes.record(b"", 0o755, true);
                tree::chmod_dir(&new, stored)?;
                modes
            }
            Some(base) => {
                let Some(base_id) = self.find_base(target, base)? else {
                    return Err(ProviderError::Stream(format!(
                        "incremental stream base {} not present on target {target}: no complete \
                         snapshot of {target} here has that guid (send a full stream)",
                        guid_hex(base)
                    )));
                };
                let bpath = self.path(VolumeKind::Snapshot, &base_id);
                let bmodes = self.modes_of(VolumeKind::Snapshot, &base_id)?;
                tree::copy_tree(&bpath, &bmodes, &new, Policy::Staging, false)?
            }
        };
        wire::apply(&mut r, &new, &mut modes)?;

        // The stream is whole and verified: make the snapshot.
        let m = Marker {
            format: MARKER_FORMAT,
            volume: spec.id.to_owned(),
            op: spec.op,
            kind: VolumeKind::Snapshot,
            parent: Some(target.to_owned()),
            guid: Some(guid_hex(header.guid)),
            state: MarkerState::Receiving,
        };
        self.put_marker(&m)?;
        let snap = self.path(VolumeKind::Snapshot, spec.id);
        let smodes = tree::copy_tree(&new, &modes, &snap, Policy::Snapshot, false)?;
        marker::write_manifest(&self.modes_dir(), spec.id, &smodes)?;
        sync_dir(&self.content_dir(VolumeKind::Snapshot))?;

        // Then the target's content: true modes on the staged tree (its root
        // keeps owner rwx until it is in place), durable, swapped in.
        modes.apply_true_modes(&new, true)?;
        tree::sync_fs(&self.root)?;
        let md = lstat(&new)?
            .ok_or_else(|| ProviderError::Other(format!("{} vanished", new.display())))?;
        let m = m.with_state(MarkerState::Swapping {
            dev: md.dev(),
            ino: md.ino(),
        });
        self.put_marker(&m)?;
        self.swap_in(&new, tpath)?;
        self.complete_receive(&m, tpath, staging)
    }

    /// After the swap: the target root's true mode (from the snapshot), the
    /// old content to the trash, the marker complete.
    fn complete_receive(
        &self,
        m: &Marker,
        tpath: &Path,
        staging: &Path,
    ) -> Result<Created, ProviderError> {
        let snap = self.path(VolumeKind::Snapshot, &m.volume);
        let smd = lstat(&snap)?
            .ok_or_else(|| ProviderError::Other(format!("{} vanished", snap.display())))?;
        let root_mode = self
            .modes_of(VolumeKind::Snapshot, &m.volume)?
            .true_mode(b"", smd.mode());
        tree::chmod_dir(tpath, root_mode)?;
        sync_dir(tpath)?;
        let doomed = self.to_trash(staging, &format!("staging.{}", Uuid::new_v4().simple()))?;
        let done = m.with_state(MarkerState::Complete);
        self.put_marker(&done)?;
        Self::empty_trash_entry(doomed);
        Ok(self.created(&done))
    }

    /// `finish` for a received snapshot whose marker says `swapping`.
    fn finish_swap(&self, m: &Marker, dev: u64, ino: u64) -> Result<Created, ProviderError> {
        let target = m.parent.as_deref().ok_or_else(|| {
            ProviderError::Other(format!("received snapshot {} names no target", m.volume))
        })?;
        check_id(target)?;
        let tpath = self.path(VolumeKind::Data, target);
        let staging = self.staging(m.op);
        let new = staging.join("new");
        let is_staged =
            |md: &fs::Metadata| md.file_type().is_dir() && md.dev() == dev && md.ino() == ino;
        match lstat(&tpath)? {
            Some(md) if is_staged(&md) => {}
            None if lstat(&new)?.is_some_and(|md| is_staged(&md)) => {
                fs::rename(&new, &tpath).map_err(|e| {
                    ProviderError::io(
                        format!("moving the received tree to {}", tpath.display()),
                        e,
                    )
                })?;
                sync_dir(&self.content_dir(VolumeKind::Data))?;
            }
            _ => {
                return Err(ProviderError::Other(format!(
                    "cannot finish receive of {}: the content of {target} was not replaced",
                    m.volume
                )));
            }
        }
        self.complete_receive(m, &tpath, &staging)
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
        BTreeMap::from([(CONFIG_ROOT.to_owned(), self.root_str.clone())])
    }

    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        check_id(spec.id)?;
        if spec.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "create_volume makes data volumes, not a {}",
                spec.kind
            )));
        }
        let path = self.path(VolumeKind::Data, spec.id);
        let m = match self.marker(VolumeKind::Data, spec.id)? {
            Some(m) if m.op != spec.op => {
                return Err(ProviderError::AlreadyExists(format!(
                    "volume {} (made by operation {})",
                    spec.id, m.op
                )));
            }
            Some(m) if m.state == MarkerState::Complete => {
                if tree::is_real_dir(&path)? {
                    return Ok(self.created(&m));
                }
                return Err(ProviderError::Other(format!(
                    "volume {} is marked complete but {} is missing",
                    spec.id,
                    path.display()
                )));
            }
            Some(m) if m.state == MarkerState::Creating => m,
            Some(m) => {
                return Err(ProviderError::Other(format!(
                    "volume {}: {}",
                    spec.id,
                    m.state.describe(m.parent.as_deref())
                )));
            }
            None => {
                if lstat(&path)?.is_some() {
                    return Err(ProviderError::AlreadyExists(format!(
                        "{} (not tagged as ours)",
                        path.display()
                    )));
                }
                let m = Marker {
                    format: MARKER_FORMAT,
                    volume: spec.id.to_owned(),
                    op: spec.op,
                    kind: VolumeKind::Data,
                    parent: None,
                    guid: None,
                    state: MarkerState::Creating,
                };
                self.put_marker(&m)?;
                m
            }
        };
        self.finish_create(&m)
            .inspect_err(|_| self.discard(VolumeKind::Data, spec.id, spec.op))
    }

    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.derive(source, spec, VolumeKind::Snapshot)
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
        self.derive(snapshot, spec, VolumeKind::Data)
    }

    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        check_id(volume.id)?;
        match self.marker(volume.kind, volume.id)? {
            Some(m) => self.remove_item(&m),
            None => {
                let path = self.path(volume.kind, volume.id);
                if lstat(&path)?.is_some() {
                    return Err(ProviderError::Other(format!(
                        "refusing to destroy {}: it carries no ownership marker",
                        path.display()
                    )));
                }
                Ok(())
            }
        }
    }

    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
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
        wire::send(
            &path,
            &modes,
            guid,
            base.as_ref().map(|(p, m, g)| (p.as_path(), m, *g)),
            out,
        )
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
            Some(m) if m.state == MarkerState::Complete && tree::is_real_dir(&snap)? => {
                return Ok(self.created(&m));
            }
            Some(m)
                if matches!(
                    m.state,
                    MarkerState::Receiving | MarkerState::Swapping { .. }
                ) =>
            {
                // Retried by the same operation: start over.
                remove_tree(&snap)?;
            }
            Some(m) => {
                return Err(ProviderError::Other(format!(
                    "snapshot {}: {}",
                    spec.id,
                    m.state.describe(m.parent.as_deref())
                )));
            }
            None => {
                if lstat(&snap)?.is_some() {
                    return Err(ProviderError::AlreadyExists(format!(
                        "{} (not tagged as ours)",
                        snap.display()
                    )));
                }
            }
        }
        let staging = self.staging(spec.op);
        remove_tree(&staging)?;
        fs::create_dir(&staging)
            .map_err(|e| ProviderError::io(format!("creating {}", staging.display()), e))?;
        self.receive_staged(target.id, &tpath, spec, &staging, input)
            .inspect_err(|_| {
                if let Err(e) = remove_tree(&staging) {
                    tracing::warn!(path = %staging.display(), error = %e, "could not remove staging");
                }
                self.discard(VolumeKind::Snapshot, spec.id, spec.op);
            })
    }

    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        let mut found = Vec::new();
        for kind in [VolumeKind::Data, VolumeKind::Snapshot] {
            let content = self.content_dir(kind);
            let mut names: BTreeSet<Vec<u8>> = tree::sorted_names(&content)?.into_iter().collect();
            names.extend(
                marker::list(&self.marker_dir(kind))?
                    .into_iter()
                    .map(String::into_bytes),
            );
            for name in names {
                let path = content.join(std::ffi::OsStr::from_bytes(&name));
                let shown = path.to_string_lossy().into_owned();
                let present = lstat(&path)?;
                let marker = match std::str::from_utf8(&name) {
                    Ok(id) if check_id(id).is_ok() => self.marker(kind, id).transpose(),
                    _ => None,
                };
                let item = |tag, presence, details| Found {
                    name: shown.clone(),
                    tag,
                    presence,
                    location: shown.clone(),
                    details,
                    partial: None,
                };
                match marker {
                    None => {
                        // Untagged: foreign. Reported, never touched.
                        if present.is_some() {
                            found.push(item(None, Presence::Complete, Details::new()));
                        }
                    }
                    Some(Err(e)) => found.push(item(
                        None,
                        Presence::Incomplete {
                            reason: e.to_string(),
                        },
                        Details::new(),
                    )),
                    Some(Ok(m)) => {
                        let created = self.created(&m);
                        let tag = Some(Tag {
                            volume: m.volume.clone(),
                            op: m.op,
                            kind: m.kind,
                            parent: m.parent.clone(),
                        });
                        let presence = match (&m.state, &present) {
                            (MarkerState::Complete, None) => continue,
                            (MarkerState::Complete, Some(md)) if md.file_type().is_dir() => {
                                Presence::Complete
                            }
                            (MarkerState::Complete, Some(_)) => Presence::Incomplete {
                                reason: format!("{shown} is not a directory"),
                            },
                            (state, _) => Presence::Incomplete {
                                reason: state.describe(m.parent.as_deref()),
                            },
                        };
                        found.push(Found {
                            name: shown.clone(),
                            tag,
                            presence,
                            location: created.location,
                            details: created.details,
                            partial: None,
                        });
                    }
                }
            }
        }
        Ok(found)
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
                if tree::is_real_dir(&path)? {
                    Ok(self.created(&m))
                } else {
                    refuse("its directory is missing")
                }
            }
            (MarkerState::Creating, VolumeKind::Data) => self.finish_create(&m),
            (MarkerState::Copying, VolumeKind::Data) => {
                let Some(parent) = m.parent.as_deref() else {
                    return refuse("it names no source snapshot");
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
                remove_tree(&path)?;
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

    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        remove_tree(&self.staging(op))
    }
}
