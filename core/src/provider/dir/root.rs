//! The directory provider's claim on its root: the ownership marker written
//! before anything else, the refusal of a foreign non-empty root, and the
//! refusal of a root nested in another provider's tree (see the parent
//! module's "Layout").

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::layout::{Entry, Layout};
use super::{BatchSync, CONFIG_ROOT, DirProvider, MARKERS, STAGING};
use super::{trash, tree};
use crate::fsutil::{Dir, GroupSync, HeldLock};
use crate::model::{AgentId, VolumeKind};
use crate::provider::Durability;
use crate::provider::ProviderError;

/// The ownership marker of a provider root: `<root>/.volmgr/provider`.
pub(super) const ROOT_MARKER: &str = "provider";
/// The root's lock file, `<root>/.volmgr/lock`: locked (`flock`) by a
/// provider with an owner for as long as it lives, never renamed or
/// replaced (see the parent module's "The root's owner").
pub(super) const ROOT_LOCK: &str = "lock";
/// A root marker of format 1: no owner (written before agents had
/// identities, and still by a provider built without an owner).
pub(super) const ROOT_MARKER_TEXT: &str = "volmgr dir provider root (format 1)\n";
/// The first line of a root marker of format 2; the second is
/// `owner <agent id>\n` (see the parent module's "The root's owner").
const ROOT_MARKER_V2_HEAD: &str = "volmgr dir provider root (format 2)\n";
/// Length of a format-2 marker.
const ROOT_MARKER_V2_LEN: usize = ROOT_MARKER_V2_HEAD.len() + AgentId::OWNER_LINE_LEN;
const _: () = assert!(ROOT_MARKER_V2_LEN == 79);
/// Longest root marker read: more is damage, reported as such.
const ROOT_MARKER_MAX: u64 = 256;

/// What a root marker says about the root's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootOwner {
    /// Format 1: no owner named.
    Unnamed,
    /// Format 2: the agent it names.
    Named(AgentId),
}

/// The bytes of the root marker for `owner` (format 1 without one).
fn encode_root_marker(owner: Option<AgentId>) -> Vec<u8> {
    let text = match owner {
        None => ROOT_MARKER_TEXT.to_owned(),
        Some(id) => format!("{ROOT_MARKER_V2_HEAD}{}", id.owner_line()),
    };
    // Pair assertion: what is written is what `decode_root_marker` reads.
    debug_assert_eq!(
        decode_root_marker(text.as_bytes()),
        Ok(owner.map_or(RootOwner::Unnamed, RootOwner::Named))
    );
    text.into_bytes()
}

/// What a root marker's `bytes` say, or why they are not a marker.
fn decode_root_marker(bytes: &[u8]) -> Result<RootOwner, String> {
    if bytes == ROOT_MARKER_TEXT.as_bytes() {
        return Ok(RootOwner::Unnamed);
    }
    let Some(rest) = bytes.strip_prefix(ROOT_MARKER_V2_HEAD.as_bytes()) else {
        return Err(format!(
            "{} bytes that are neither format 1 ({ROOT_MARKER_TEXT:?}) nor format 2 \
             ({ROOT_MARKER_V2_HEAD:?} then an owner line)",
            bytes.len()
        ));
    };
    AgentId::from_owner_line(rest).map(RootOwner::Named)
}

/// Mode of every directory the provider keeps (`data/`, `snapshot/`,
/// `.volmgr/` and its directories, `.staging/`, `.trash/`), and of a root
/// it creates: no other user may list or traverse them, so a volume's
/// content is reached only through the bind mounts root makes (see the
/// parent module's "Modes").
pub(super) const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `root` (mode [`PRIVATE_DIR_MODE`]) and its missing ancestors
/// (0755: they only lead to it), each made durable in its parent: a power
/// cut must not take the root away, and everything under it with it. An
/// existing root is left as it is (its mode is the operator's).
fn create_root(layout: &dyn Layout, root: &Path) -> Result<(), ProviderError> {
    let examine = |p: &Path| {
        layout
            .entry(p)
            .map_err(|e| ProviderError::io(format!("examining {}", p.display()), e))
    };
    let mut missing = Vec::new();
    let mut probe = Some(root);
    while let Some(p) = probe
        && examine(p)?.is_none()
    {
        missing.push(p);
        probe = p.parent();
    }
    for dir in missing.into_iter().rev() {
        let mode = if dir == root { PRIVATE_DIR_MODE } else { 0o755 };
        match layout.create_dir(dir, mode) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ProviderError::io(format!("creating {}", dir.display()), e)),
        }
        if let Some(parent) = dir.parent() {
            layout.sync_dir(parent).map_err(|e| {
                ProviderError::io(format!("syncing directory {}", parent.display()), e)
            })?;
        }
    }
    Ok(())
}

/// Refuses a root that lies inside the tree of a volmgr provider (its root,
/// a volume, a snapshot, the staging area): any strict ancestor holding a
/// `.volmgr` directory. Providers and volumes never nest.
pub(super) fn refuse_nested_root(root: &Path) -> Result<(), ProviderError> {
    let mut probe = root.to_path_buf();
    // Resolve the longest existing prefix, so a symlink cannot hide nesting.
    while fs::symlink_metadata(&probe).is_err() {
        if !probe.pop() {
            break;
        }
    }
    let real = fs::canonicalize(&probe).unwrap_or(probe);
    for ancestor in real.ancestors().chain(root.ancestors()) {
        if ancestor == root || ancestor == real {
            continue;
        }
        if tree::is_real_dir(&ancestor.join(MARKERS)).unwrap_or(false) {
            return Err(ProviderError::InvalidConfig(format!(
                "{CONFIG_ROOT} {} lies inside {}, the tree of another volmgr provider (a volume, \
                 a snapshot or its state): providers never nest",
                root.display(),
                ancestor.display()
            )));
        }
    }
    Ok(())
}

impl DirProvider {
    /// Builds the provider on `layout` (see [`DirProvider::new`]): checks
    /// the root's path, creates it if missing, claims it, creates the
    /// layout's directories and sweeps what interrupted removals left.
    pub(super) fn open(
        root: PathBuf,
        layout: Arc<dyn Layout>,
        durability: Durability,
        batch_sync: BatchSync,
        owner: Option<AgentId>,
    ) -> Result<Self, ProviderError> {
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
        if layout.is_kernel() {
            refuse_nested_root(&root)?;
            crate::provider::refuse_untrusted_root(CONFIG_ROOT, &root)?;
            // Not followed: the root is opened without following a
            // symlink (`Dir::open`), so a symlink would fail there as "Not
            // a directory", an I/O error for a configuration mistake.
            match fs::symlink_metadata(&root) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(invalid(
                        "is a symlink: name the directory itself (the root is never reached \
                         through a symlink)",
                    ));
                }
                Ok(_) => return Err(invalid("not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    create_root(&*layout, &root)?;
                    // What was missing may have been made by another user
                    // meanwhile (in a sticky parent).
                    crate::provider::refuse_untrusted_root(CONFIG_ROOT, &root)?;
                }
                Err(e) => {
                    return Err(ProviderError::io(
                        format!("examining {}", root.display()),
                        e,
                    ));
                }
            }
        } else {
            create_root(&*layout, &root)?;
        }
        // Opened before the provider changes anything, and kept: the
        // kernel reports a write-back error to `syncfs` on a descriptor
        // opened before the error was first seen, not on one opened after
        // (see `DirProvider::sync_root`).
        let root_fd = if layout.is_kernel() {
            Some(
                Dir::open(&root)
                    .map_err(|e| ProviderError::io(format!("opening {}", root.display()), e))?,
            )
        } else {
            None
        };
        let mut p = DirProvider {
            root,
            root_str,
            root_fd,
            layout,
            batched: durability == Durability::Batched,
            flush: GroupSync::new(),
            batch_sync,
            dirty: super::durability::Dirty::at_open(),
            round_workers: crate::fsutil::Workers::new(
                "volmgr-fsync",
                DirProvider::ROUND_THREADS - 1,
            ),
            doomed: trash::Doomed::default(),
            owner,
            undo_stuck: std::sync::atomic::AtomicBool::new(false),
            probe_at_second: std::sync::atomic::AtomicBool::new(false),
            root_lock: None,
        };
        p.root_lock = p.claim_root()?;
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
            match p.layout.create_dir(&sub, PRIVATE_DIR_MODE) {
                Ok(()) => {
                    created.insert(sub.parent().expect("has a parent").to_path_buf());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !p.is_dir(&sub)? {
                        return Err(ProviderError::InvalidConfig(format!(
                            "{} exists and is not a directory",
                            sub.display()
                        )));
                    }
                    // Ours (the root is claimed): one an older version
                    // made 0755 is made private, as a new one is.
                    p.layout.set_dir_mode(&sub, PRIVATE_DIR_MODE).map_err(|e| {
                        ProviderError::io(format!("making {} private", sub.display()), e)
                    })?;
                }
                Err(e) => {
                    return Err(ProviderError::io(format!("creating {}", sub.display()), e));
                }
            }
        }
        for dir in created {
            p.sync_dir(&dir)?;
        }
        p.place_round_probe()?;
        // What an earlier instance left unsynced (a killed process's last
        // changes, in the page cache) is durable before the sweeps act on
        // what they read: else a cut could keep their removals without it,
        // such as a trash item's tree gone while the removal of its marker
        // was lost (the marker of a volume that is gone), or a receive's
        // staging area with the target's old content removed while its
        // marker's `complete` was lost (an undo with nothing to put back).
        // Batched, this is the provider's first round, a whole `syncfs`
        // (`Dirty::at_open`) anyway.
        p.sync_root()?;
        p.sweep()?;
        p.sweep_staging()?;
        Ok(p)
    }

    /// Makes sure the root is ours before anything under it is touched: it
    /// carries our ownership marker, or it is empty (the marker is written
    /// first, durably), or it is a root made by an earlier volmgr (a
    /// `.volmgr` directory, adopted). Anything else is refused: volmgr never
    /// takes over, let alone empties, a directory it did not create. With an
    /// owner, a marker naming another agent is refused
    /// ([`ProviderError::ForeignRoot`]) and one naming none (format 1) is
    /// adopted (see the parent module's "The root's owner"); and the root's
    /// lock ([`ROOT_LOCK`]) is taken before the marker is judged and
    /// returned, for the provider to hold as long as it lives: an agent
    /// running on the root holds it, so a second one is refused
    /// ([`ProviderError::RootInUse`]) even while the marker it would read
    /// still names no one.
    pub(super) fn claim_root(&self) -> Result<Option<HeldLock>, ProviderError> {
        let root = &self.root;
        let markers = root.join(MARKERS);
        let marker = markers.join(ROOT_MARKER);
        // A root another agent owns is refused before anything is made in
        // it, even the lock file. Judged again under the lock: the marker
        // read here may be changing.
        if self.owner.is_some() && self.entry(&marker)? == Some(Entry::File) {
            self.judge_root_marker(&marker)?;
        }
        if !self.is_dir(&markers)? {
            let names = self
                .layout
                .names(root)
                .map_err(|e| ProviderError::io(format!("listing {}", root.display()), e))?;
            // A `.volmgr` there now (another agent starting on the same
            // empty root made it, and maybe more, since it was looked for)
            // makes this a volmgr root like any other: the lock below
            // decides which agent goes on.
            if !names.is_empty() && !self.is_dir(&markers)? {
                let shown: Vec<String> = names
                    .iter()
                    .take(3)
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect();
                return Err(ProviderError::InvalidConfig(format!(
                    "{CONFIG_ROOT} {} is not empty ({}{}) and carries no volmgr ownership \
                     marker ({MARKERS}/{ROOT_MARKER}): volmgr only uses a new or empty directory",
                    root.display(),
                    shown.join(", "),
                    if names.len() > 3 { ", ..." } else { "" }
                )));
            }
            match self.layout.create_dir(&markers, PRIVATE_DIR_MODE) {
                Ok(()) => {}
                // Another agent starting on the same empty root made it:
                // the lock below decides which of the two goes on.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.is_dir(&markers)? => {}
                Err(e) => {
                    return Err(ProviderError::io(
                        format!("creating {}", markers.display()),
                        e,
                    ));
                }
            }
            self.sync_dir(root)?;
        }
        let lock = self.lock_root(&markers)?;
        if self.entry(&marker)? == Some(Entry::File) {
            if let Some(me) = self.judge_root_marker(&marker)? {
                self.write_root_marker(&markers, Some(me))?;
                tracing::info!(root = %root.display(), owner = %me, "dir provider: format-1 root marker adopted for this agent");
            }
            return Ok(lock);
        }
        self.write_root_marker(&markers, self.owner)?;
        Ok(lock)
    }

    /// Judges the root marker at `marker` for this provider's owner: ours
    /// or no owner checked (`Ok(None)`), format 1 to adopt (`Ok(Some(owner))`),
    /// another agent's ([`ProviderError::ForeignRoot`]) or damaged.
    fn judge_root_marker(&self, marker: &Path) -> Result<Option<AgentId>, ProviderError> {
        let found = self.read_root_marker(marker)?;
        match (found, self.owner) {
            (_, None) => Ok(None),
            (RootOwner::Named(named), Some(me)) if named == me => Ok(None),
            (RootOwner::Named(named), Some(_)) => Err(ProviderError::ForeignRoot {
                root: self.root.display().to_string(),
                owner: named.to_string(),
            }),
            (RootOwner::Unnamed, Some(me)) => Ok(Some(me)),
        }
    }

    /// Takes the root's lock (`<root>/.volmgr/lock`, see "The root's
    /// owner") for a provider with an owner on the kernel's file system;
    /// `None` without an owner (no claim, no lock) or on the simulation
    /// (one process). Held by another open (another agent, or another
    /// provider of this process): [`ProviderError::RootInUse`], nothing
    /// changed.
    fn lock_root(&self, markers: &Path) -> Result<Option<HeldLock>, ProviderError> {
        if self.owner.is_none() || !self.layout.is_kernel() {
            return Ok(None);
        }
        let path = markers.join(ROOT_LOCK);
        let dir = Dir::open(markers)
            .map_err(|e| ProviderError::io(format!("opening {}", markers.display()), e))?;
        match crate::fsutil::hold_lock(&dir, ROOT_LOCK.as_bytes()) {
            Ok(Some(lock)) => Ok(Some(lock)),
            Ok(None) => Err(ProviderError::RootInUse {
                root: self.root.display().to_string(),
                lock: path.display().to_string(),
            }),
            Err(e) => Err(ProviderError::io(format!("locking {}", path.display()), e)),
        }
    }

    /// Reads the root marker at `marker`; damage is a configuration error
    /// naming the file and why.
    fn read_root_marker(&self, marker: &Path) -> Result<RootOwner, ProviderError> {
        let bytes = self
            .layout
            .read_file(marker, ROOT_MARKER_MAX)
            .map_err(|e| ProviderError::io(format!("reading {}", marker.display()), e))?
            .ok_or_else(|| {
                ProviderError::io(
                    format!("reading {}", marker.display()),
                    io::Error::from(io::ErrorKind::NotFound),
                )
            })?;
        decode_root_marker(&bytes).map_err(|why| {
            ProviderError::InvalidConfig(format!(
                "{CONFIG_ROOT} {}: its ownership marker {} is damaged: {why}; nothing under \
                 the root was touched",
                self.root.display(),
                marker.display()
            ))
        })
    }

    /// Writes the root marker for `owner` durably: temp file, fsync,
    /// rename (over a format-1 marker being adopted), fsync of `markers`.
    fn write_root_marker(
        &self,
        markers: &Path,
        owner: Option<AgentId>,
    ) -> Result<(), ProviderError> {
        self.layout
            .write_file(markers, ROOT_MARKER, &encode_root_marker(owner), true)
            .map_err(|e| {
                ProviderError::io(
                    format!("writing {}", markers.join(ROOT_MARKER).display()),
                    e,
                )
            })?;
        self.sync_dir(markers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_marker_reads_back_what_was_written() {
        let id = AgentId::generate();
        let v2 = encode_root_marker(Some(id));
        assert_eq!(v2.len(), ROOT_MARKER_V2_LEN);
        assert_eq!(decode_root_marker(&v2), Ok(RootOwner::Named(id)));
        assert_eq!(
            decode_root_marker(&encode_root_marker(None)),
            Ok(RootOwner::Unnamed)
        );
    }

    #[test]
    fn a_damaged_root_marker_is_refused_with_its_reason() {
        let id = AgentId::generate().to_string();
        let cases = [
            (String::new(), "neither format 1"),
            (
                "volmgr dir provider root (format 3)\n".to_owned(),
                "neither format 1",
            ),
            (format!("{ROOT_MARKER_V2_HEAD}owner {id}"), "one line"),
            (
                format!("{ROOT_MARKER_V2_HEAD}owner {id}\nmore\n"),
                "owner \"",
            ),
            (
                format!("{ROOT_MARKER_V2_HEAD}owner {}\n", id.to_uppercase()),
                "canonical",
            ),
            (format!("{ROOT_MARKER_V2_HEAD}owner -x\n"), "36 bytes"),
        ];
        for (text, why) in cases {
            let err = decode_root_marker(text.as_bytes()).expect_err("refused");
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
