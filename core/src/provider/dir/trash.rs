//! Removal of the directory provider's items: the trash (an atomic rename
//! out of the namespace, then a removal by handle that never follows a
//! symlink), its sweep at start, and the cleanup of half-made items.

use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::marker::{Marker, MarkerState};
use super::tree::{self, lstat, remove_tree, sync_dir};
use super::{DirProvider, check_id, dir_name};
use crate::model::{OpId, VolumeKind};
use crate::provider::ProviderError;

impl DirProvider {
    /// Moves a tree into the trash under `name` (atomic; the parent is synced)
    /// and returns where it went; a non-directory is simply removed.
    pub(super) fn to_trash(
        &self,
        path: &Path,
        name: &str,
    ) -> Result<Option<PathBuf>, ProviderError> {
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
    pub(super) fn empty_trash_entry(doomed: Option<PathBuf>) {
        if let Some(doomed) = doomed
            && let Err(e) = remove_tree(&doomed)
        {
            tracing::warn!(path = %doomed.display(), error = %e, "could not empty the trash; retried at the next start");
        }
    }

    /// Trash name of an item's tree: `item.<kind>.<op>.<unique>.<id>`, so a
    /// start after a crash knows whose marker to remove.
    pub(super) fn item_trash_name(m: &Marker) -> String {
        format!(
            "item.{}.{}.{}.{}",
            dir_name(m.kind),
            m.op,
            Uuid::new_v4().simple(),
            m.volume
        )
    }

    pub(super) fn parse_item_trash_name(name: &str) -> Option<(VolumeKind, OpId, &str)> {
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
    pub(super) fn sweep_trash(&self) {
        let Ok(entries) = fs::read_dir(self.trash()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // Only what this provider put there (defence in depth: the root
            // carries our ownership marker, so the trash is ours anyway).
            let ours = name
                .to_str()
                .is_some_and(|n| n.starts_with("item.") || n.starts_with("staging."));
            if !ours {
                tracing::warn!(path = %entry.path().display(), "leaving an entry of the trash that volmgr did not name");
                continue;
            }
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
    pub(super) fn forget(&self, m: &Marker) -> Result<(), ProviderError> {
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
    pub(super) fn remove_item(&self, m: &Marker) -> Result<(), ProviderError> {
        let doomed = self.to_trash(&self.path(m.kind, &m.volume), &Self::item_trash_name(m))?;
        self.forget(m)?;
        Self::empty_trash_entry(doomed);
        Ok(())
    }

    /// Best-effort removal of a half-made item of operation `op` after a
    /// failure (the error being returned matters more than this one).
    pub(super) fn discard(&self, kind: VolumeKind, id: &str, op: OpId) {
        match self.marker(kind, id) {
            Ok(Some(m)) if m.op == op && m.state != MarkerState::Complete => {
                if let Err(e) = self.remove_item(&m) {
                    tracing::warn!(%kind, id, error = %e, "could not remove a half-made item");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%kind, id, error = %e, "could not read the marker of a half-made item");
            }
        }
    }
}
