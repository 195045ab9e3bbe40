//! Removal of the directory provider's items: the trash (an atomic rename
//! out of the namespace, then a removal by handle that never follows a
//! symlink), its sweep at start, and the cleanup of half-made items.
//!
//! Order, whatever the durability: the tree leaves the namespace (rename
//! into the trash), *then* its marker goes, *then* the tree is removed, each
//! step durable before the next one starts, so a power cut never leaves a
//! tree of ours without its marker (foreign for ever) nor a marker whose
//! tree vanished without a trace in the trash (nothing would remove it).
//! That holds when the tree is no longer at its name when the removal
//! starts too (an earlier removal of the item whose barrier failed after
//! its move, or a destroy killed after its move, found by the start's
//! sweep): its absence is settled first (its parent directory noted or
//! synced, then a barrier), since that move may still be only in the page
//! cache. Found by the manager's sweep of a failed `syncfs` in a receive
//! then a power cut: the receive's cleanup moved the half-made snapshot
//! into the trash and its barrier failed; the manager's destroy of the
//! same item found no tree and removed the marker, and a cut keeping that
//! removal without the move left the snapshot's directory marker-less. A
//! success path never meets an absent tree, so this costs it nothing.
//! Durable on return, fsyncs order the steps and a destroy removes its tree
//! before it returns. Batched, a barrier orders the first two; the third
//! waits for the shared step: the destroy queues its tree ([`Doomed`]) and
//! returns, and the next [`Provider::sync`](crate::provider::Provider::sync)
//! removes, once its `syncfs` has returned, the trees queued *before* it
//! started (their markers' removals are then durable; a tree queued while
//! a `syncfs` runs waits for the next one). The queue is bounded
//! ([`DirProvider::MAX_DEFERRED_REMOVALS`]): the destroy that overfills it
//! runs that step itself. A tree still queued when the process dies, the
//! provider is dropped or a `syncfs` fails, or whose removal fails, stays in
//! the trash under its name (kind, op, id), and the next start's sweep
//! finishes the destroy. The cleanup of a failed verb (a half-made item)
//! does not defer: it runs the second barrier and removes the tree before
//! the verb returns its error, so nothing it made is left behind.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use super::layout::Entry;
use super::marker::{Marker, MarkerState};
use super::{DirProvider, check_id, dir_name};
use crate::model::{OpId, VolumeKind};
use crate::provider::ProviderError;

#[cfg(test)]
mod tests;

/// Trees batched destroys moved to the trash whose removal waits for the
/// next shared `syncfs` (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Doomed(Mutex<Vec<PathBuf>>);

impl Doomed {
    fn lock(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a tree whose marker removal has happened; returns how many
    /// are queued now.
    fn push(&self, tree: PathBuf) -> usize {
        let mut queued = self.lock();
        queued.push(tree);
        queued.len()
    }

    /// Takes every tree queued so far.
    fn take(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.lock())
    }
}

impl DirProvider {
    /// Most trees batched destroys leave queued in the trash for the next
    /// [`Provider::sync`](crate::provider::Provider::sync) (plus those of
    /// destroys in flight): the destroy that queues one more runs the sync
    /// itself. Nothing else bounds them when the provider is used without
    /// its shared step (the manager runs one after every operation).
    pub const MAX_DEFERRED_REMOVALS: usize = 64;

    /// The batched step ([`Provider::sync`](crate::provider::Provider::sync)):
    /// a barrier, then the removal of the trees queued before it started.
    pub(super) fn sync_and_empty_trash(&self) -> Result<(), ProviderError> {
        // Taken before the barrier: a tree queued from now on may have had
        // its marker removed after the barrier's `syncfs` started, so it
        // waits for the next one. Should the barrier fail, these stay in
        // the trash for the next start's sweep.
        let ready = self.doomed.take();
        self.barrier()?;
        for tree in ready {
            self.empty_trash_entry(Some(tree));
        }
        Ok(())
    }

    /// Moves a tree into the trash under `name` (atomic; durable on return,
    /// the parent is synced: a journaling file system commits both names'
    /// change in one transaction) and returns where it went; a
    /// non-directory is simply removed.
    pub(super) fn to_trash(
        &self,
        path: &Path,
        name: &str,
    ) -> Result<Option<PathBuf>, ProviderError> {
        let Some(entry) = self.entry(path)? else {
            return Ok(None);
        };
        let parent = path.parent().expect("not the root").to_path_buf();
        let Entry::Dir { mode } = entry else {
            self.layout
                .remove_file(path)
                .map_err(|e| ProviderError::io(format!("removing {}", path.display()), e))?;
            self.settle_dir(&parent)?;
            return Ok(None);
        };
        self.owner_rwx_for_move(path, mode)?;
        let doomed = self.trash().join(name);
        self.layout
            .rename(path, &doomed)
            .map_err(|e| ProviderError::io(format!("moving {} to the trash", path.display()), e))?;
        self.changed(&self.trash());
        self.settle_dir(&parent)?;
        Ok(Some(doomed))
    }

    /// Removes a tree from the trash; one that resists stays for the next start.
    pub(super) fn empty_trash_entry(&self, doomed: Option<PathBuf>) {
        if let Some(doomed) = doomed
            && let Err(e) = self.layout.remove_tree(&doomed)
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

    /// Cleans up at start: removes the markers of items a destroy moved to
    /// the trash but was interrupted before their marker went (if the marker
    /// is still that operation's and nothing took the item's place), once
    /// those moves are durable (the destroy may have been killed before its
    /// barrier); then, once the removals are durable, empties the trash.
    pub(super) fn sweep(&self) -> Result<(), ProviderError> {
        let trash = self.trash();
        let names = self
            .layout
            .names(&trash)
            .map_err(|e| ProviderError::io(format!("listing {}", trash.display()), e))?;
        let mut doomed = Vec::new();
        let mut markers = Vec::new();
        for name in names {
            let path = trash.join(OsStr::from_bytes(&name));
            let name = std::str::from_utf8(&name).ok();
            // Only what this provider put there (defence in depth: the root
            // carries our ownership marker, so the trash is ours anyway).
            if !name.is_some_and(|n| n.starts_with("item.") || n.starts_with("staging.")) {
                tracing::warn!(path = %path.display(), "leaving an entry of the trash that volmgr did not name");
                continue;
            }
            if let Some((kind, op, id)) = name.and_then(Self::parse_item_trash_name)
                && let Ok(Some(m)) = self.marker(kind, id)
                && m.op == op
                && matches!(self.entry(&self.path(kind, id)), Ok(None))
            {
                markers.push(m);
            }
            doomed.push(path);
        }
        // The trees' moves into the trash durable before their markers go:
        // a destroy killed after its move left it in the page cache, and a
        // cut keeping a marker's removal without it would leave the tree
        // at its name without its marker (foreign).
        let kinds: BTreeSet<VolumeKind> = markers.iter().map(|m| m.kind).collect();
        for kind in kinds {
            self.settle_dir(&self.content_dir(kind))?;
        }
        if !markers.is_empty() {
            self.barrier()?;
        }
        for m in markers {
            if let Err(e) = self.forget(&m) {
                tracing::warn!(kind = %m.kind, id = %m.volume, error = %e, "could not remove the marker of a destroyed item");
            }
        }
        if !doomed.is_empty() {
            self.barrier()?;
        }
        for path in doomed {
            self.empty_trash_entry(Some(path));
        }
        Ok(())
    }

    /// Removes an item's manifest and marker (its tree being gone).
    pub(super) fn forget(&self, m: &Marker) -> Result<(), ProviderError> {
        let remove = |path: &Path| {
            self.layout
                .remove_file(path)
                .map_err(|e| ProviderError::io(format!("removing {}", path.display()), e))
        };
        if m.kind == VolumeKind::Snapshot && remove(&self.modes_dir().join(&m.volume))? {
            self.settle_dir(&self.modes_dir())?;
        }
        let dir = self.marker_dir(m.kind);
        remove(&dir.join(&m.volume))?;
        self.settle_dir(&dir)
    }

    /// Removes an item that carries marker `m`: its tree into the trash
    /// (atomic, named after the item), then the manifest and the marker, then
    /// the tree: at once when durable on return; batched, by the next
    /// [`Self::sync_and_empty_trash`] (see the module documentation for the
    /// order). A crash in between leaves a marker without a directory, or a
    /// tree in the trash, which the next start removes (see [`Self::sweep`]).
    pub(super) fn remove_item(&self, m: &Marker) -> Result<(), ProviderError> {
        let Some(tree) = self.retire(m)? else {
            return Ok(());
        };
        if !self.batched {
            // `forget` synced the marker's removal.
            self.empty_trash_entry(Some(tree));
        } else if self.doomed.push(tree) > Self::MAX_DEFERRED_REMOVALS {
            self.sync_and_empty_trash()?;
        }
        Ok(())
    }

    /// Like [`Self::remove_item`], but the tree is gone on return, batched
    /// too (one more barrier): the cleanup of a failed verb, which leaves
    /// nothing behind when it returns its error.
    fn remove_item_at_once(&self, m: &Marker) -> Result<(), ProviderError> {
        let Some(tree) = self.retire(m)? else {
            return Ok(());
        };
        // The marker's removal is durable before the tree goes.
        self.barrier()?;
        self.empty_trash_entry(Some(tree));
        Ok(())
    }

    /// The first steps of a removal: the tree into the trash, durably
    /// before the manifest and the marker go. Returns where the tree went.
    fn retire(&self, m: &Marker) -> Result<Option<PathBuf>, ProviderError> {
        // A half-made receive whose swap may have happened: the target's
        // old content back (and the staging area gone) before the marker
        // that finds it goes (see `undo.rs`); nothing of it while a
        // put-back failed in this instance.
        if m.kind == VolumeKind::Snapshot {
            self.staging_removable(&self.staging(m.op))?;
        }
        if matches!(m.state, MarkerState::Swapping { .. }) {
            self.abort_received(m)?;
        }
        let path = self.path(m.kind, &m.volume);
        let Some(tree) = self.to_trash(&path, &Self::item_trash_name(m))? else {
            // No tree at its name: its absence durable before the marker
            // goes, as after a move into the trash. An earlier removal
            // whose barrier failed (the cleanup of a receive after a
            // failed `syncfs`, then the manager's destroy of the same
            // item) left its move unsynced, and a cut keeping the
            // marker's removal without that move left the directory
            // marker-less: foreign (found by the sweep of a failed sync
            // then a power cut, batched, at every point).
            self.settle_dir(&self.content_dir(m.kind))?;
            self.barrier()?;
            self.forget(m)?;
            return Ok(None);
        };
        self.barrier()?;
        self.forget(m)?;
        Ok(Some(tree))
    }

    /// Best-effort removal of a half-made item of operation `op` after a
    /// failure (the error being returned matters more than this one).
    pub(super) fn discard(&self, kind: VolumeKind, id: &str, op: OpId) {
        self.discard_if(kind, id, op, |m| m.state != MarkerState::Complete);
    }

    /// Like [`Self::discard`], whatever the marker's state (a receive whose
    /// write of `complete` failed after renaming it in place).
    pub(super) fn discard_any_state(&self, kind: VolumeKind, id: &str, op: OpId) {
        self.discard_if(kind, id, op, |_| true);
    }

    fn discard_if(&self, kind: VolumeKind, id: &str, op: OpId, wanted: impl Fn(&Marker) -> bool) {
        match self.marker(kind, id) {
            Ok(Some(m)) if m.op == op && wanted(&m) => {
                if let Err(e) = self.remove_item_at_once(&m) {
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
