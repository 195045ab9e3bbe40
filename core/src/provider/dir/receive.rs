//! The directory provider's receive after the staging area exists: the base
//! of an incremental stream, the decoder run into staging, the snapshot copy,
//! the atomic swap into the target and its completion (also after a crash).
//! See the parent module's "Receive".
//!
//! # File operations, in order
//!
//! `S` marks a sync point (what the power-cut sweep cuts at); `[L]` an
//! operation already on the `Layout` seam, `[K]` one that still goes to the
//! kernel directly (std::fs, `fsutil::Dir`, `tree::*`), with the Layout
//! method it is to use. `T` is the target's `data/<target>`, `N` the staged
//! tree `.staging/<op>/new`, `P` the snapshot `snapshot/<id>`.
//!
//! 1. Checks: the target's marker and directory, the snapshot's marker (a
//!    retry of the same op with `receiving`/`swapping` removes `P` [K
//!    `tree::remove_tree` → `remove_tree`]), else `P` must be absent [L].
//! 2. Staging: remove `.staging/<op>` [K → `remove_tree`], `mkdir` it with
//!    the default mode [K `fs::create_dir` → `create_dir_default`]. No sync.
//! 3. Header read, then `N`: full, `mkdir N 0700` and its stored root mode
//!    (`0755`) [K `DirBuilder`, `chmod_dir`]; incremental, the base found by
//!    marker and guid [L, but `is_real_dir` K → `entry`] and copied to `N`
//!    with `Policy::Staging`, no sync [K `tree::copy_tree` → `copy_tree`].
//!    Both become one coarse `stage`.
//! 4. The decoder (`wire::apply`) writes into `N`, every path opened beneath
//!    `N`'s handle without following a symlink: `mkdirat 0700` + `fchmodat`,
//!    file `0600` + content + `fchmod`, `symlinkat`, `fchmodat`, removal by
//!    handle; free space checked per record (`statvfs`). No sync [K →
//!    `apply_stream`: the real one is `wire::apply` unchanged; the
//!    simulation gets the same parser with a sink of its own].
//! 5. Space for the snapshot's copy (`statvfs`, reflink probe) [K; real
//!    file system only, like the nested-root check (`is_kernel`)].
//! 6. Marker `receiving`: temp file, `S` file, rename, `S` marker dir [L].
//! 7. Copy `N` → `P` (`Policy::Snapshot`), no sync [K → `copy_tree`].
//! 8. `P`'s mode manifest: temp file `S`, rename, `S` modes dir (or a stale
//!    one removed) [L].
//! 9. `S` `snapshot/` [K `tree::sync_dir` → `sync_dir`].
//! 10. True modes on `N` except its root [K → `apply_true_modes`].
//! 11. `S` `syncfs` of the root [K `tree::sync_fs` → `syncfs`]: `N` and `P`
//!     with everything in them durable.
//! 12. `N`'s device and inode [K `lstat` → `identity`]; marker `swapping`
//!     with them: `S` file, `S` dir [L].
//! 13. Swap: `T` given owner `rwx` if it lacks it [K → `entry` +
//!     `set_dir_mode`]; `renameat2(N, T, RENAME_EXCHANGE)` [K → `exchange`],
//!     where unsupported `rename T → .staging/<op>/old`, `rename N → T`
//!     [K → `rename`]; `S` `data/`, `S` `.staging/<op>` [K → `sync_dir`].
//! 14. Completion: `P`'s root mode [K `lstat` → `entry`] with its manifest
//!     [L]; `T`'s root set to it [K `chmod_dir` → `set_dir_mode`]; `S` `T`
//!     [K → `sync_dir`]; `.staging/<op>` renamed into the trash (`S`
//!     `.staging` when durable on return) [L]; marker `complete`: `S` file,
//!     `S` dir [L]; the trash entry removed [L].
//!
//! A failure removes `.staging/<op>` [K → `remove_tree`] and the half-made
//! snapshot (`discard`) [L]. `finish` of a `swapping` marker: `T` and `N`
//! compared by identity [K `lstat` → `identity`], `rename N → T` if `T` is
//! absent [K → `rename`], `S` `data/` [K → `sync_dir`], then step 14.
//! `abort_partial`: remove `.staging/<op>` [K → `remove_tree`].
//!
//! New `Layout` methods: `create_dir_default`, `stage`, `apply_stream`,
//! `apply_true_modes`, `identity`, `exchange`; the others exist. On the
//! kernel each delegates to exactly the code above (same flags, modes,
//! syncs and no-follow rules). On the simulation: `exchange` is one atomic
//! change of the two names (like its rename); `identity` needs directory
//! inode numbers; modes, symlinks and free space are not modelled (a
//! symlink record is an error there).

use std::fs::{self, DirBuilder};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use uuid::Uuid;

use super::marker::{self, MARKER_FORMAT, Marker, MarkerState};
use super::tree::{self, Modes, Policy, lstat, sync_dir};
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
    pub(super) fn swap_in(new: &Path, tpath: &Path) -> Result<(), ProviderError> {
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
    pub(super) fn receive_staged(
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
        let applied = wire::apply(&mut r, &new, &mut modes)?;
        // The snapshot is a copy of the staged tree: it must fit too (its
        // content costs nothing where the file system reflinks).
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
        let smodes = tree::copy_tree(&new, &modes, &snap, Policy::Snapshot, false)?;
        marker::write_manifest(&*self.layout, &self.modes_dir(), spec.id, &smodes)?;
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
        Self::swap_in(&new, tpath)?;
        self.complete_receive(&m, tpath, staging)
    }

    /// After the swap: the target root's true mode (from the snapshot), the
    /// old content to the trash, the marker complete.
    pub(super) fn complete_receive(
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
        self.empty_trash_entry(doomed);
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
