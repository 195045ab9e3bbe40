//! Undoing a receive after its swap: the target's old content put back
//! (`unswap`), found by identity from the snapshot's `swapping` marker,
//! whether the receive failed in this process or a crash interrupted it
//! (`abort_partial`, a destroy of the half-made snapshot, a retry of the
//! same operation); and the start's sweep of the staging areas complete
//! receives left behind. The rule throughout: the old content is never
//! removed while it is not back in place (durably), and a `swapping`
//! marker stays as long as it is not, so a later undo can still find it.
//! An undo that cannot put the old content back takes the provider out of
//! service ([`ProviderError::OutOfService`]: the manager journals no outcome
//! for it, whatever the durability, and the reopen's recovery undoes it).
//! See `receive.rs` (the steps) and the parent module's "Receive".

use std::path::Path;
use std::sync::atomic::Ordering;

use super::layout::Identity;
use super::marker::{self, Marker, MarkerState};
use super::{DirProvider, check_id};
use crate::model::{OpId, VolumeKind};
use crate::provider::ProviderError;

impl DirProvider {
    /// Puts the old content of the target directory `tpath` back after
    /// the swap of the receive staged in `staging`, whose staged tree has
    /// device `dev` and inode `ino`, and makes that durable (`fsync` of
    /// both parents) before returning; removes nothing. By identity, so
    /// it is idempotent and finds every state a swap or an earlier undo
    /// (either interrupted by a crash) leaves:
    ///
    /// - `tpath` is the staged tree and `staging/new` exists (it holds the
    ///   old content after an exchange): exchanged back;
    /// - `tpath` is the staged tree and `staging/old` exists (the two
    ///   renames where exchange is unsupported): `tpath` → `staging/new`,
    ///   `fsync` of `staging`, `staging/old` → `tpath`;
    /// - `tpath` is absent and `staging/old` exists (between those two
    ///   renames, either way): `staging/old` → `tpath`;
    /// - anything else: not swapped, or already back; nothing moves (and
    ///   nothing is synced).
    ///
    /// `Ok(true)` if it moved something.
    pub(super) fn unswap(
        &self,
        tpath: &Path,
        staging: &Path,
        dev: u64,
        ino: u64,
    ) -> Result<bool, ProviderError> {
        let new = staging.join("new");
        let old = staging.join("old");
        let is_staged = |id: &Option<Identity>| {
            id.as_ref()
                .is_some_and(|id| id.dir && id.dev == dev && id.ino == ino)
        };
        let rename = |from: &Path, to: &Path| {
            self.layout.rename(from, to).map_err(|e| {
                ProviderError::io(
                    format!("putting back: {} to {}", from.display(), to.display()),
                    e,
                )
            })
        };
        let target = self.identity(tpath)?;
        if is_staged(&target) {
            // The staged tree leaves `data/`: moving a directory to
            // another parent needs write permission on it (its root has
            // the snapshot's true mode once completion began).
            if let Some(super::layout::Entry::Dir { mode }) = self.entry(tpath)? {
                self.owner_rwx_for_move(tpath, mode)?;
            }
            if self.is_dir(&new)? {
                let exchanged = self.layout.exchange(&new, tpath).map_err(|e| {
                    ProviderError::io(
                        format!("exchanging {} back with {}", tpath.display(), new.display()),
                        e,
                    )
                })?;
                if !exchanged {
                    return Err(ProviderError::Other(format!(
                        "cannot exchange {} back with {}: the file system no longer \
                         supports RENAME_EXCHANGE",
                        tpath.display(),
                        new.display()
                    )));
                }
            } else if self.is_dir(&old)? {
                rename(tpath, &new)?;
                // The staged tree leaves the target's name durably before
                // the old content takes it (as in the swap, `swap_in`): a
                // cut that kept the second rename without the first would
                // put the old content under a name the disk still gives
                // the staged tree (the power-cut sweep after a failed sync
                // saw the two trees merged under the target's name).
                self.sync_dir(staging)?;
                rename(&old, tpath)?;
            } else {
                tracing::warn!(target = %tpath.display(), staging = %staging.display(),
                    "a swapped receive's old content is nowhere in its staging area; nothing to put back");
                return Ok(false);
            }
        } else if target.is_none() && self.is_dir(&old)? {
            rename(&old, tpath)?;
        } else {
            return Ok(false);
        }
        self.sync_dir(tpath.parent().expect("has a parent"))?;
        self.sync_dir(staging)?;
        Ok(true)
    }

    /// The marker of the snapshot received by operation `op`, if any (a
    /// scan of the snapshots' markers: only after a failure or a crash;
    /// unreadable markers are skipped).
    pub(super) fn receive_marker_of(&self, op: OpId) -> Result<Option<Marker>, ProviderError> {
        for id in marker::list(&*self.layout, &self.marker_dir(VolumeKind::Snapshot))? {
            if check_id(&id).is_err() {
                continue;
            }
            if let Ok(Some(m)) = self.marker(VolumeKind::Snapshot, &id)
                && m.op == op
            {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Undoes what the receive of marker `m` left in its staging area: a
    /// `swapping` marker's target gets its old content back ([`Self::unswap`]),
    /// then the staging area is removed. If putting back fails, nothing is
    /// removed, the provider's rounds fail from then on
    /// ([`Self::out_of_service`]) and the error says where the old content is.
    pub(super) fn abort_received(&self, m: &Marker) -> Result<(), ProviderError> {
        let staging = self.staging(m.op);
        self.staging_removable(&staging)?;
        if let MarkerState::Swapping { dev, ino } = m.state {
            let target = m.parent.as_deref().ok_or_else(|| {
                ProviderError::Other(format!("received snapshot {} names no target", m.volume))
            })?;
            check_id(target)?;
            let tpath = self.path(VolumeKind::Data, target);
            if let Err(e) = self.unswap(&tpath, &staging, dev, ino) {
                return Err(self.out_of_service(&tpath, &staging, &e));
            }
        }
        self.remove_staging(&staging)
    }

    /// Removes an undone receive's staging area and settles the removal
    /// (durable on return: now; batched: in the round the manager runs
    /// before it journals the undo). Unsettled, a power cut after the
    /// snapshot's marker is gone would bring back a staging area that no
    /// marker names, which nothing removes (found by the manager's sweep:
    /// a kill -9 in a receive, a reopen that undoes it, then a power cut).
    pub(super) fn remove_staging(&self, staging: &Path) -> Result<(), ProviderError> {
        self.remove_own_tree(staging)?;
        self.settle_dir(&self.root.join(super::STAGING))
    }

    /// [`Provider::abort_partial`](crate::provider::Provider::abort_partial):
    /// the staging area of `op` removed, after the target's old content is
    /// put back if `op` is a receive whose marker says `swapping`.
    pub(super) fn abort_staging(&self, op: OpId) -> Result<(), ProviderError> {
        let staging = self.staging(op);
        if self.entry(&staging)?.is_none() {
            return Ok(());
        }
        self.staging_removable(&staging)?;
        match self.receive_marker_of(op)? {
            Some(m) => self.abort_received(&m),
            None => self.remove_staging(&staging),
        }
    }

    /// Refuses while a put-back failed in this instance
    /// ([`Self::out_of_service`]) and `staging` exists: what the disk
    /// holds then (which marker a failed write left durable, where the old
    /// content is) is for the next start to judge, so nothing of a
    /// receive's staging goes, nor the snapshot that finds it.
    pub(super) fn staging_removable(&self, staging: &Path) -> Result<(), ProviderError> {
        if self.undo_stuck.load(Ordering::SeqCst) && self.entry(staging)?.is_some() {
            return Err(ProviderError::Other(format!(
                "{} stays: a receive's target could not be put back, the provider is out of \
                 service until reopened",
                staging.display()
            )));
        }
        Ok(())
    }

    /// After a failure to put a target's old content back: every later
    /// round of the provider fails (the manager takes a batched provider
    /// out of service at its next shared sync; a receive on a provider
    /// durable on return fails at its `syncfs`), until it is reopened.
    /// Returns the error to report, which says where the old content
    /// waits and what puts it back.
    pub(super) fn out_of_service(
        &self,
        tpath: &Path,
        staging: &Path,
        cause: &ProviderError,
    ) -> ProviderError {
        let why = format!(
            "the old content of {} could not be put back ({cause}); it stays in {} with the \
             received snapshot's `swapping` marker, which the manager's recovery at the next \
             open (or a destroy of that snapshot) uses to put it back; the provider is out of \
             service until reopened",
            tpath.display(),
            staging.display()
        );
        self.stop_undoing(&why);
        ProviderError::OutOfService(why)
    }

    /// Fails every later round with `why` and keeps every receive's
    /// staging area until the provider is reopened
    /// ([`Self::staging_removable`]).
    pub(super) fn stop_undoing(&self, why: &str) {
        self.undo_stuck.store(true, Ordering::SeqCst);
        let _ = self
            .flush
            .sync_after("putting a receive's target back", || Err(why.to_owned()));
    }

    /// At start: removes the staging areas of complete receives (the old
    /// content of a target, left when a crash or a failure came between
    /// the `complete` marker and the staging area's removal, which is not
    /// synced); and puts back the old content of a target whose name a
    /// crash left empty between the two renames of a swap or of its undo
    /// where exchange is unsupported (so the inventory does not report
    /// the target lost; the receive stays half-made, for `abort_partial`).
    /// Any other staging area stays for `abort_partial`.
    pub(super) fn sweep_staging(&self) -> Result<(), ProviderError> {
        let dir = self.root.join(super::STAGING);
        let names = self
            .layout
            .names(&dir)
            .map_err(|e| ProviderError::io(format!("listing {}", dir.display()), e))?;
        for name in names {
            let Some(op) = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| n.parse::<OpId>().ok())
            else {
                continue;
            };
            let Some(m) = self.receive_marker_of(op)? else {
                continue;
            };
            let staging = self.staging(op);
            match (&m.state, m.parent.as_deref()) {
                (MarkerState::Complete, _) => {
                    if let Err(e) = self.remove_own_tree(&staging) {
                        tracing::warn!(%op, error = %e, "could not remove the staging area of a complete receive");
                    }
                }
                (MarkerState::Swapping { dev, ino }, Some(target)) if check_id(target).is_ok() => {
                    let tpath = self.path(VolumeKind::Data, target);
                    if self.entry(&tpath)?.is_none() && self.is_dir(&staging.join("old"))? {
                        self.unswap(&tpath, &staging, *dev, *ino)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
