//! When the directory provider's changes become durable: the batched step
//! (one `syncfs` of the root shared by concurrent operations), the barriers
//! a verb needs inside it, and the layout calls that sync or not as the
//! provider's durability says. The protocol is described in the parent
//! module's "Durability" section; this module holds its primitives.

use std::path::Path;

use super::layout::{Entry, Identity};
use super::marker::{self, Marker};
use super::{DirProvider, check_id};
use crate::model::VolumeKind;
use crate::provider::{ProviderError, VolumeSpec};

impl DirProvider {
    /// `syncfs` rounds run so far (the batched step and the barriers; each
    /// serves every operation waiting for it). For benches.
    pub fn syncfs_rounds(&self) -> u64 {
        self.flush.flushes()
    }

    /// `lstat` of one of the provider's own names.
    pub(super) fn entry(&self, path: &Path) -> Result<Option<Entry>, ProviderError> {
        self.layout
            .entry(path)
            .map_err(|e| ProviderError::io(format!("examining {}", path.display()), e))
    }

    /// Whether `path` is a real directory (not a symlink to one).
    pub(super) fn is_dir(&self, path: &Path) -> Result<bool, ProviderError> {
        Ok(matches!(self.entry(path)?, Some(Entry::Dir { .. })))
    }

    /// `fsync` of a directory, whatever the durability.
    pub(super) fn sync_dir(&self, path: &Path) -> Result<(), ProviderError> {
        self.layout
            .sync_dir(path)
            .map_err(|e| ProviderError::io(format!("syncing directory {}", path.display()), e))
    }

    /// Sets a directory's mode, never following a symlink.
    pub(super) fn set_dir_mode(&self, path: &Path, mode: u32) -> Result<(), ProviderError> {
        self.layout
            .set_dir_mode(path, mode)
            .map_err(|e| ProviderError::io(format!("setting the mode of {}", path.display()), e))
    }

    /// Gives the owner `rwx` on directory `path` (whose mode is `mode`) if
    /// it lacks any: moving a directory to another parent needs write
    /// permission on it.
    pub(super) fn owner_rwx_for_move(&self, path: &Path, mode: u32) -> Result<(), ProviderError> {
        if mode & 0o700 == 0o700 {
            return Ok(());
        }
        self.set_dir_mode(path, mode | 0o700)
    }

    /// Device and inode of one of the provider's own names.
    pub(super) fn identity(&self, path: &Path) -> Result<Option<Identity>, ProviderError> {
        self.layout
            .identity(path)
            .map_err(|e| ProviderError::io(format!("examining {}", path.display()), e))
    }

    /// Removes the tree at one of the provider's own paths (absent is
    /// fine), never following a symlink inside it.
    pub(super) fn remove_own_tree(&self, path: &Path) -> Result<(), ProviderError> {
        self.layout
            .remove_tree(path)
            .map_err(|e| ProviderError::io(format!("removing {}", path.display()), e))
    }

    /// After a change to `dir`'s entries: durable on return, `fsync` it now;
    /// batched, nothing (a barrier or the shared step covers it).
    pub(super) fn settle_dir(&self, dir: &Path) -> Result<(), ProviderError> {
        if self.batched {
            Ok(())
        } else {
            self.sync_dir(dir)
        }
    }

    /// Batched: returns once a `syncfs` of the root that started after the
    /// call has returned, so everything done before it is durable; one
    /// `syncfs` serves every caller waiting at the time. A failed `syncfs`
    /// fails every later call (see [`crate::fsutil::GroupSync`]). Durable on
    /// return: nothing to do.
    pub(super) fn barrier(&self) -> Result<(), ProviderError> {
        if !self.batched {
            return Ok(());
        }
        self.sync_root()
    }

    /// A `syncfs` of the root, whatever the durability, through the shared
    /// rounds: concurrent callers share one, and a failed one fails every
    /// later call (after a write-back error a retry could succeed and lie).
    ///
    /// On the kernel's file system it runs on the root's descriptor opened
    /// when the provider was: `syncfs` reports a write-back error (through
    /// the file system's error sequence) only to descriptors opened before
    /// anyone saw it, so on a descriptor opened afresh it returns `Ok` once
    /// another caller's `syncfs` of the same file system (another process,
    /// another provider) has seen the error first, and effects that never
    /// reached the disk would be acknowledged (`tests/dir_device_errors.rs`).
    pub(super) fn sync_root(&self) -> Result<(), ProviderError> {
        self.flush
            .sync_after("syncfs of the provider root", || match &self.root_fd {
                Some(root) => root.syncfs(),
                None => self.layout.syncfs(&self.root),
            })
            .map_err(ProviderError::Other)
    }

    /// Writes the first marker of a new data volume, before its directory
    /// is made: durable on return, with fsyncs; batched, without any (the
    /// shared step makes marker and directory durable together; a power
    /// cut before it may keep the directory without its marker, which
    /// [`Self::clear_create_remnant`] removes at the next open).
    pub(super) fn put_marker_first(&self, m: &Marker) -> Result<(), ProviderError> {
        if !self.batched {
            return self.put_marker(m);
        }
        marker::write(&*self.layout, &self.marker_dir(m.kind), m, false)
    }

    /// What a create of `spec` interrupted by a power cut (its intent
    /// durable, no outcome) may have left that carries no readable marker:
    /// an *empty* directory at the volume's path whose marker is absent or
    /// unreadable is removed, with the unreadable marker; a marker of this
    /// very op (or an unreadable one) without its directory is removed. A
    /// marker of another op, a complete volume (marker and directory: rolled
    /// forward), a directory with entries (foreign, reported) and anything
    /// that is not a directory stay as they are. Idempotent.
    ///
    /// Why an empty directory without its marker is ours to remove: the
    /// journal holds the durable intent to create exactly this path and no
    /// outcome, no one was ever given the path (a create is acknowledged
    /// only after its directory and marker are durable), and `rmdir`
    /// removes nothing but an empty directory.
    pub(super) fn clear_create_remnant(&self, spec: &VolumeSpec<'_>) -> Result<(), ProviderError> {
        check_id(spec.id)?;
        if spec.kind != VolumeKind::Data {
            return Ok(());
        }
        let path = self.path(VolumeKind::Data, spec.id);
        let marker_path = self.marker_dir(VolumeKind::Data).join(spec.id.as_str());
        let readable = match self.marker(VolumeKind::Data, spec.id) {
            Ok(Some(m)) if m.op != spec.op => return Ok(()),
            Ok(m) => m,
            Err(e) => {
                tracing::info!(volume = %spec.id, error = %e, "an interrupted create left an unreadable marker");
                None
            }
        };
        match self.entry(&path)? {
            // This op's marker with its directory: a whole volume, the
            // table rolls it forward.
            Some(Entry::Dir { .. }) if readable.is_some() => return Ok(()),
            Some(Entry::Dir { .. }) => {
                match self.layout.remove_empty_dir(&path) {
                    Ok(()) => {
                        tracing::info!(volume = %spec.id, path = %path.display(), "removed the empty directory of an interrupted create (its marker was lost)");
                    }
                    // Entries in it: not what a create leaves; foreign.
                    Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => return Ok(()),
                    Err(e) => {
                        return Err(ProviderError::io(format!("removing {}", path.display()), e));
                    }
                }
                self.settle_dir(&self.content_dir(VolumeKind::Data))?;
            }
            Some(_) => return Ok(()),
            None => {}
        }
        let removed = self.layout.remove_file(&marker_path).map_err(|e| {
            ProviderError::io(format!("removing marker {}", marker_path.display()), e)
        })?;
        if removed {
            self.settle_dir(&self.marker_dir(VolumeKind::Data))?;
        }
        Ok(())
    }

    /// The marker of `kind` `id`, unless it is stale: a marker whose
    /// directory is absent, of another operation, or one a power cut left
    /// unreadable with no directory (a marker write that never became
    /// durable). The manager asks for a new item only under an id its state
    /// does not hold, so such a marker names nothing anyone owns; it is
    /// replaced. A half-made marker keeps its claim (the caller decides);
    /// an unreadable marker whose directory exists is an error.
    pub(super) fn live_marker(
        &self,
        kind: VolumeKind,
        id: &str,
    ) -> Result<Option<Marker>, ProviderError> {
        let read = self.marker(kind, id);
        let no_dir =
            || -> Result<bool, ProviderError> { Ok(self.entry(&self.path(kind, id))?.is_none()) };
        match read {
            Ok(Some(m)) if m.is_whole() && no_dir()? => {
                tracing::info!(%kind, id, op = %m.op, "replacing the marker of an item whose directory is gone");
                Ok(None)
            }
            Ok(other) => Ok(other),
            Err(e) if no_dir()? => {
                tracing::warn!(%kind, id, error = %e, "replacing an unreadable marker whose directory is absent");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
