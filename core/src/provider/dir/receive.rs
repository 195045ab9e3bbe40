//! The directory provider's receive after the staging area exists: the base
//! of an incremental stream, the decoder run into staging, the snapshot copy,
//! the atomic swap into the target and its completion (also after a crash),
//! or, on a failure after the swap, its undo (`undo.rs`).
//! See the parent module's "Receive".
//!
//! # File operations, in order
//!
//! `S` marks a sync point (where the power-cut sweep cuts). Every step goes
//! through the provider's `Layout` seam, by the method in parentheses; on the
//! kernel each is exactly the code that ran before the seam (same flags,
//! modes, syncs and no-follow rules). `T` is the target's `data/<target>`,
//! `N` the staged tree `.staging/<op>/new`, `P` the snapshot
//! `snapshot/<id>`.
//!
//! 1. Checks: the target's marker and directory, the snapshot's marker (a
//!    retry of the same op with `receiving`/`swapping` runs step 15, then
//!    removes `P` (`remove_tree`)), else `P` must be absent (`entry`).
//! 2. Staging: remove `.staging/<op>` (`remove_tree`), `mkdir` it with the
//!    default mode `0777` less the umask (`mkdir`). No sync.
//! 3. Header read, then `N`: full, `mkdir N 0700` (`mkdir`) and its stored
//!    root mode `0755` (`set_dir_mode`); incremental, the base found by
//!    marker, guid and directory (`read_file`, `entry`) and copied to `N`
//!    with `Policy::Staging`, no sync (`copy_tree`).
//! 4. The decoder writes into `N` (`apply_stream`): on the kernel every
//!    path opened beneath `N`'s handle without following a symlink,
//!    `mkdirat 0700` + `fchmodat`, file `0600` + content (a chunk of
//!    zeros skipped with `lseek`, a trailing hole by `ftruncate`) +
//!    `fchmod`, `symlinkat`, `fchmodat`, removal by handle, free space
//!    checked every 64 records and per 8 MiB of written data (`statvfs`).
//!    No sync.
//! 5. Space for the snapshot's copy (`statvfs`, reflink probe): on the
//!    kernel only, like the nested-root check (`is_kernel`).
//! 6. Marker `receiving`: temp file, `S` file, rename, `S` marker dir.
//! 7. Copy `N` → `P` (`Policy::Snapshot`), no sync (`copy_tree`).
//! 8. `P`'s mode manifest: temp file `S`, rename, `S` modes dir (or a stale
//!    one removed).
//! 9. `S` `snapshot/` (`sync_dir`).
//! 10. True modes on `N` except its root (`apply_true_modes`).
//! 11. `S` `syncfs` of the root (`syncfs`): `N` and `P` with everything in
//!     them durable.
//! 12. `N`'s device and inode (`identity`); marker `swapping` with them:
//!     `S` file, `S` dir.
//! 13. Swap: `T` given owner `rwx` if it lacks it (`entry`,
//!     `set_dir_mode`); `renameat2(N, T, RENAME_EXCHANGE)` (`exchange`),
//!     where unsupported `rename T → .staging/<op>/old`, `S`
//!     `.staging/<op>` (the old content leaves `T`'s name durably before
//!     anything takes it), `rename N → T` (`rename`); `S` `data/`, `S`
//!     `.staging/<op>` (`sync_dir`).
//! 14. Completion: `P`'s root mode (`entry`) with its manifest; `T`'s root
//!     set to it (`set_dir_mode`); `S` `T` (`sync_dir`); marker
//!     `complete`: `S` file, `S` dir. The receive is made here. Then
//!     `.staging/<op>` (the old content) renamed into the trash (`rename`,
//!     not synced) and removed (`remove_tree`), best-effort: nothing after
//!     the `complete` marker fails the receive; a staging area a crash or
//!     a failure leaves behind a complete receive is removed by the next
//!     start (`sweep_staging`).
//! 15. Undo, on any error in 13 or 14 before the `complete` marker is
//!     written (`undo.rs`, `unswap`, by identity): `T` is the staged tree
//!     and `N` exists: `exchange(N, T)` back; `T` is the staged tree and
//!     `.staging/<op>/old` exists: `rename T → N`, `S` `.staging/<op>`,
//!     `rename old → T`; `T`
//!     absent and `old` exists: `rename old → T`; then (if anything moved)
//!     `S` `data/`, `S` `.staging/<op>`, and `T`'s mode from before 13
//!     set again. Only then is `.staging/<op>` removed. A failed write of
//!     `complete` (its rename may have happened, its directory's sync
//!     failed) first writes `swapping` again (`S` file, `S` dir). If the
//!     undo fails (or that second marker write does), nothing is removed:
//!     `.staging/<op>` and the marker stay, the provider's rounds fail from
//!     then on and no receive's staging area (nor a snapshot that has one)
//!     is removed until it is reopened (`staging_removable`: the next
//!     start judges by what the disk kept), and the error says so: it is
//!     `ProviderError::OutOfService`, on which the manager journals no
//!     outcome, whatever the durability (the intent stays pending for the
//!     reopen's recovery, which puts the old content back; journaled as
//!     failed, durable on return, the half-made snapshot was an orphan at
//!     the reopen and the old content stayed in `.staging/<op>`: found by
//!     the manager's sweep of a failed sync then a failing move back).
//!     The undo's two renames have a sync of `.staging/<op>` between them,
//!     like the swap's: the staged tree leaves `T`'s name durably before
//!     the old content takes it (without it, a cut keeping the second
//!     rename and not the first merged the two trees under `T` in the
//!     simulation: found by the sweep of a failed sync then a power cut).
//!
//! A failure removes `.staging/<op>` (`remove_tree`) and settles that
//! removal (`S` `.staging` durable on return; batched, the round the
//! manager runs before it journals the failure) before the half-made
//! snapshot goes (`discard`): a cut that brought back a staging area its
//! marker no longer names would leave it to nothing (found by the sweep of
//! a failed sync before the swap, then a power cut in the cleanup, durable
//! on return). All after step 15 once the swap began. `finish` of a
//! `swapping` marker: `T` and `N` compared by identity (`identity`),
//! `rename N → T` if `T` is absent (`rename`), `S` `data/`, then step 14
//! (a failure there leaves the marker `swapping`). `abort_partial`, a
//! destroy of a snapshot whose marker says `swapping`, and a retry of the
//! same operation run step 15 from the marker (`receive_marker_of`: a
//! scan of the snapshot markers for the op, only when `.staging/<op>`
//! exists), then remove `.staging/<op>`. At start (`sweep_staging`): the
//! staging area of a complete receive is removed; a `swapping` one whose
//! `T` is absent with `old` present (a crash between the fallback's
//! renames) is put back, so the inventory does not find the target lost.
//!
//! Can a receive fail once its marker says `complete`? No: that marker's
//! write is the last step that may fail it (then step 15 runs); what
//! follows only logs.
//!
//! On the simulation (`SimLayout`): the decoder is the same
//! (`wire::decode`) with a sink that builds `N` entry by entry; `exchange`
//! is one atomic change of the two names (`SimStorage::exchange`, which
//! takes settled trees only: step 11 settles them; an exchange back of the
//! same names queues behind the first), or unsupported
//! (`SimStorage::set_exchange_supported`: the two renames); `identity` is the
//! simulated inode number; modes, symlinks and free space are not modelled
//! (a symlink record is an error there).

use std::io::Read;
use std::path::Path;

use uuid::Uuid;

use super::layout::{Entry, Identity};
use super::marker::{self, MARKER_FORMAT, Marker, MarkerState};
use super::tree::{self, Modes, Policy};
use super::{DirProvider, check_id, guid_hex, wire};
use crate::fsutil;
use crate::model::VolumeKind;
use crate::provider::stream::HashReader;
use crate::provider::{Created, ProviderError, VolumeSpec};

impl DirProvider {
    /// A complete snapshot whose parent is `target` and whose guid is `guid`.
    pub(super) fn find_base(
        &self,
        target: &str,
        guid: u128,
    ) -> Result<Option<String>, ProviderError> {
        let want = guid_hex(guid);
        for id in marker::list(&*self.layout, &self.marker_dir(VolumeKind::Snapshot))? {
            if check_id(&id).is_err() {
                continue;
            }
            let Ok(Some(m)) = self.marker(VolumeKind::Snapshot, &id) else {
                continue;
            };
            if m.state == MarkerState::Complete
                && m.parent.as_deref() == Some(target)
                && m.guid.as_deref() == Some(want.as_str())
                && self.is_dir(&self.path(VolumeKind::Snapshot, &id))?
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Puts the staged tree `new` in place of the target directory `tpath`:
    /// an atomic exchange, or (unsupported) two renames. Afterwards `new`
    /// holds the old content (or is absent).
    pub(super) fn swap_in(&self, new: &Path, tpath: &Path) -> Result<(), ProviderError> {
        if let Some(Entry::Dir { mode }) = self.entry(tpath)? {
            self.owner_rwx_for_move(tpath, mode)?;
        }
        let exchanged = self.layout.exchange(new, tpath).map_err(|e| {
            ProviderError::io(
                format!("exchanging {} and {}", new.display(), tpath.display()),
                e,
            )
        })?;
        if !exchanged {
            let old = new.with_file_name("old");
            self.layout
                .rename(tpath, &old)
                .map_err(|e| ProviderError::io(format!("moving {} aside", tpath.display()), e))?;
            // The old content is out of the target's name durably before
            // anything takes that name: no cut keeps the second rename
            // without the first (which would lose the old content).
            self.sync_dir(new.parent().expect("has a parent"))?;
            self.layout.rename(new, tpath).map_err(|e| {
                ProviderError::io(
                    format!("moving the received tree to {}", tpath.display()),
                    e,
                )
            })?;
        }
        self.sync_dir(tpath.parent().expect("has a parent"))?;
        self.sync_dir(new.parent().expect("has a parent"))
    }

    /// The steps of a receive after the staging area exists. A failure
    /// after the swap puts the target's old content back first (see
    /// [`Failed`]).
    pub(super) fn receive_staged(
        &self,
        target: &str,
        tpath: &Path,
        spec: &VolumeSpec<'_>,
        staging: &Path,
        input: &mut dyn Read,
    ) -> Result<Created, Failed> {
        let mut r = HashReader::new(input);
        let header = wire::read_header(&mut r)?;
        let new = staging.join("new");
        let mut modes = match header.base {
            None => {
                self.layout
                    .mkdir(&new, 0o700)
                    .map_err(|e| ProviderError::io(format!("creating {}", new.display()), e))?;
                let mut modes = Modes::new(Policy::Staging);
                let stored = modes.record(b"", 0o755, true);
                self.set_dir_mode(&new, stored)?;
                modes
            }
            Some(base) => {
                let Some(base_id) = self.find_base(target, base)? else {
                    return Err(ProviderError::Stream(format!(
                        "incremental stream base {} not present on target {target}: no complete \
                         snapshot of {target} here has that guid (send a full stream)",
                        guid_hex(base)
                    ))
                    .into());
                };
                let bpath = self.path(VolumeKind::Snapshot, &base_id);
                let bmodes = self.modes_of(VolumeKind::Snapshot, &base_id)?;
                self.layout
                    .copy_tree(&bpath, &bmodes, &new, Policy::Staging, false)?
            }
        };
        let applied = self
            .layout
            .apply_stream(&mut r, &header, &new, &mut modes)?;
        // The snapshot is a copy of the staged tree: it must fit too (its
        // content costs nothing where the file system reflinks). The
        // simulation models no free space (its writes fail when full).
        if self.layout.is_kernel() {
            let staged = fsutil::Dir::open(staging)
                .map_err(|e| ProviderError::io(format!("opening {}", staging.display()), e))?;
            let bytes = if tree::reflinks(&staged) {
                0
            } else {
                applied.bytes
            };
            super::space::SpaceGuard::new(staged).check(
                "the received snapshot",
                applied.entries,
                bytes,
            )?;
        }

        // The stream is whole and verified: make the snapshot.
        let m = Marker {
            format: MARKER_FORMAT,
            volume: spec.id.to_string(),
            op: spec.op,
            kind: VolumeKind::Snapshot,
            parent: Some(target.to_owned()),
            guid: Some(guid_hex(header.guid)),
            state: MarkerState::Receiving,
        };
        self.put_marker(&m)?;
        let snap = self.path(VolumeKind::Snapshot, spec.id);
        let smodes = self
            .layout
            .copy_tree(&new, &modes, &snap, Policy::Snapshot, false)?;
        marker::write_manifest(&*self.layout, &self.modes_dir(), spec.id, &smodes)?;
        self.sync_dir(&self.content_dir(VolumeKind::Snapshot))?;

        // Then the target's content: true modes on the staged tree (its root
        // keeps owner rwx until it is in place), durable, swapped in.
        self.layout.apply_true_modes(&new, &modes, true)?;
        self.sync_root()?;
        let id = self
            .identity(&new)?
            .ok_or_else(|| ProviderError::Other(format!("{} vanished", new.display())))?;
        let m = m.with_state(MarkerState::Swapping {
            dev: id.dev,
            ino: id.ino,
        });
        self.put_marker(&m)?;
        // The target's mode before `swap_in` gives its owner `rwx`: an
        // undo sets it again.
        let prior = match self.entry(tpath)? {
            Some(Entry::Dir { mode }) => Some(mode),
            _ => None,
        };
        self.swap_in(&new, tpath)
            .map_err(Failed::from)
            .and_then(|()| self.complete_receive(&m, tpath, staging))
            .map_err(|f| {
                if f.kept {
                    f
                } else {
                    self.undo_swap(f.error, tpath, staging, &id, prior)
                }
            })
    }

    /// After `error` at or after the swap (the marker says `swapping`, with
    /// the staged tree's identity `id`): the target's old content put back
    /// ([`Self::unswap`]) and its mode `prior` set again. If putting back
    /// fails, the staging area (holding the old content) and the marker
    /// are kept, and the provider goes out of service
    /// ([`Self::out_of_service`]).
    fn undo_swap(
        &self,
        error: ProviderError,
        tpath: &Path,
        staging: &Path,
        id: &Identity,
        prior: Option<u32>,
    ) -> Failed {
        if let Err(e) = self.unswap(tpath, staging, id.dev, id.ino) {
            let why = self.out_of_service(tpath, staging, &e);
            return Failed {
                error: ProviderError::OutOfService(format!("{error}; then {why}")),
                kept: true,
            };
        }
        if let Some(mode) = prior
            && let Err(e) = self.set_dir_mode(tpath, mode)
        {
            tracing::warn!(path = %tpath.display(), error = %e, "could not set the target's mode back");
        }
        Failed { error, kept: false }
    }

    /// After the swap: the target root's true mode (from the snapshot), the
    /// marker complete (the receive is made), then the old content to the
    /// trash and removed, best-effort and unsynced (a failure there is
    /// logged, not returned: the start's sweep removes the staging area of
    /// a complete receive, [`Self::sweep_staging`]). So nothing can fail a
    /// receive after its marker says `complete`. A failed write of that
    /// marker may have renamed it in place (its directory's sync failed):
    /// the `swapping` marker is written again before anything is undone,
    /// and if that fails too, nothing is undone (`kept`: whichever marker
    /// the disk keeps, the next start finds the target and the staging
    /// area consistent with it).
    pub(super) fn complete_receive(
        &self,
        m: &Marker,
        tpath: &Path,
        staging: &Path,
    ) -> Result<Created, Failed> {
        let snap = self.path(VolumeKind::Snapshot, &m.volume);
        let stored = match self.entry(&snap)? {
            Some(Entry::Dir { mode }) => mode,
            Some(_) => {
                return Err(
                    ProviderError::Other(format!("{} is not a directory", snap.display())).into(),
                );
            }
            None => {
                return Err(ProviderError::Other(format!("{} vanished", snap.display())).into());
            }
        };
        let root_mode = self
            .modes_of(VolumeKind::Snapshot, &m.volume)?
            .true_mode(b"", stored);
        self.set_dir_mode(tpath, root_mode)?;
        self.sync_dir(tpath)?;
        let done = m.with_state(MarkerState::Complete);
        if let Err(error) = self.put_marker(&done) {
            if let Err(e) = self.put_marker(m) {
                let why = format!(
                    "{error}; then writing the `swapping` marker again failed ({e}), so the \
                     receive of {} is neither undone nor made: {} holds the stream's content, \
                     {} its old content, and the next start decides by the marker the disk \
                     kept (`complete`: made; `swapping`: undone); the provider is out of \
                     service until reopened",
                    m.volume,
                    tpath.display(),
                    staging.display()
                );
                self.stop_undoing(&why);
                return Err(Failed {
                    error: ProviderError::OutOfService(why),
                    kept: true,
                });
            }
            return Err(error.into());
        }
        // Made. The old content goes; nothing here may fail the receive.
        let doomed = self
            .trash()
            .join(format!("staging.{}", Uuid::new_v4().simple()));
        match self.layout.rename(staging, &doomed) {
            Ok(()) => {
                self.changed(&self.trash());
                self.changed(staging.parent().expect("has a parent"));
                self.empty_trash_entry(Some(doomed));
            }
            Err(e) => {
                tracing::warn!(path = %staging.display(), error = %e, "could not remove the staging area of a complete receive; the next start does");
            }
        }
        Ok(self.created(&done))
    }

    /// `finish` for a received snapshot whose marker says `swapping`.
    pub(super) fn finish_swap(
        &self,
        m: &Marker,
        dev: u64,
        ino: u64,
    ) -> Result<Created, ProviderError> {
        let target = m.parent.as_deref().ok_or_else(|| {
            ProviderError::Other(format!("received snapshot {} names no target", m.volume))
        })?;
        check_id(target)?;
        let tpath = self.path(VolumeKind::Data, target);
        let staging = self.staging(m.op);
        let new = staging.join("new");
        let is_staged = |id: &Identity| id.dir && id.dev == dev && id.ino == ino;
        match self.identity(&tpath)? {
            Some(id) if is_staged(&id) => {}
            None if self.identity(&new)?.is_some_and(|id| is_staged(&id)) => {
                self.layout.rename(&new, &tpath).map_err(|e| {
                    ProviderError::io(
                        format!("moving the received tree to {}", tpath.display()),
                        e,
                    )
                })?;
                self.sync_dir(&self.content_dir(VolumeKind::Data))?;
            }
            _ => {
                return Err(ProviderError::Other(format!(
                    "cannot finish receive of {}: the content of {target} was not replaced",
                    m.volume
                )));
            }
        }
        // A failure leaves the marker `swapping` and the staging area: an
        // undo (`abort_partial`) or another `finish` still can.
        self.complete_receive(m, &tpath, &staging)
            .map_err(|f| f.error)
    }
}

/// A receive that failed: its error, and whether the staging area and the
/// snapshot's marker must stay (`kept`: they hold the target's old content
/// and what finds it, which could not be put back; see `undo.rs`). Else
/// the caller removes the staging area and the half-made snapshot.
pub(super) struct Failed {
    pub(super) error: ProviderError,
    pub(super) kept: bool,
}

impl From<ProviderError> for Failed {
    fn from(error: ProviderError) -> Self {
        Failed { error, kept: false }
    }
}
