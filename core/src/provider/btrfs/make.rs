//! Building an item of the btrfs provider: stage its container and tag,
//! build its subvolume, rename the container into place (create, snapshot,
//! fork, and the finishing of a staged create). No step syncs: see the parent
//! module's "Verbs" and "Durability".

#[allow(clippy::wildcard_imports)]
use super::*;

impl BtrfsProvider {
    /// Stages (or resumes) the container of `tag`, builds its subvolume with
    /// `build` unless present, and renames it into place.
    pub(super) fn make(
        &self,
        tag: &Tag,
        build: impl FnOnce(&Path) -> Result<(), ProviderError>,
    ) -> Result<Created, ProviderError> {
        check_id(&tag.volume)?;
        match self.in_place(tag.kind, &tag.volume) {
            InPlace::Ours {
                tag: t,
                has_vol: true,
            } => {
                return if t.op == tag.op {
                    self.created(tag.kind, &tag.volume)
                } else {
                    Err(ProviderError::AlreadyExists(format!(
                        "{} {} (made by op {})",
                        tag.kind, tag.volume, t.op
                    )))
                };
            }
            InPlace::Ours { has_vol: false, .. } => {
                // A stale container whose subvolume is gone: replace it.
                self.trash(&self.container(tag.kind, &tag.volume))?;
            }
            InPlace::Foreign => {
                return Err(ProviderError::AlreadyExists(format!(
                    "{} (not tagged as ours; left alone)",
                    self.container(tag.kind, &tag.volume).display()
                )));
            }
            InPlace::Absent => {}
        }
        let stage = self.stage(tag.op);
        if stage.exists() && read_tag(&stage).as_ref() != Some(tag) {
            self.trash(&stage)?;
        }
        if !stage.exists() {
            fs::create_dir(&stage).map_err(io_err(format!("create {}", stage.display())))?;
            write_tag(&stage, tag)?;
        }
        let vol = stage.join(VOL);
        // No sync here: the tag's content is in the running transaction
        // (see `write_tag`), so whatever transaction holds the rename below
        // holds the tag and the subvolume too (module doc, "Durability").
        let result = (|| {
            if !is_subvolume(&vol) {
                build(&vol)?;
            }
            // A snapshot is placed read-only, however it was built (a
            // stage resumed after a crash between its snapshot and this
            // flag included).
            if tag.kind == VolumeKind::Snapshot && !subvol::subvol_info(&vol)?.read_only {
                subvol::make_read_only(&vol)?;
            }
            self.commit(&stage, tag.kind, &tag.volume)
        })();
        if let Err(e) = result {
            if stage.exists() {
                let _ = self.trash(&stage);
            }
            return Err(e);
        }
        self.created(tag.kind, &tag.volume)
    }

    /// Renames a staged container into place (never over anything).
    pub(super) fn commit(
        &self,
        staged: &Path,
        kind: VolumeKind,
        id: &str,
    ) -> Result<(), ProviderError> {
        let place = self.container(kind, id);
        rename2(staged, &place, libc::RENAME_NOREPLACE).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                ProviderError::AlreadyExists(place.display().to_string())
            } else {
                ProviderError::io(format!("rename into {}", place.display()), e)
            }
        })
    }

    /// A btrfs snapshot of the `from` subvolume `source` as the new volume of
    /// `kind` (read-only for a snapshot, writable for a fork), tagged with
    /// `source` as its parent: the one body of `create_snapshot` and
    /// `fork_volume`.
    pub(super) fn snapshot_of(
        &self,
        from: VolumeKind,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        kind: VolumeKind,
    ) -> Result<Created, ProviderError> {
        check_id(source.id)?;
        let src = self.location(from, source.id);
        let tag = Tag {
            volume: spec.id.to_string(),
            op: spec.op,
            kind,
            parent: Some(source.id.to_string()),
        };
        let what = match from {
            VolumeKind::Data => "volume",
            VolumeKind::Snapshot => "snapshot",
        };
        self.make(&tag, |vol| {
            if !is_subvolume(&src) {
                return Err(ProviderError::NotFound(format!("{what} {}", source.id)));
            }
            // Writable, for a snapshot too (`make` makes it read-only
            // before placing it): btrfs keeps the source's received UUID in
            // a read-only snapshot and drops it in a writable one, and the
            // owner of a volume's root can set one from inside it
            // (`BTRFS_IOC_SET_RECEIVED_SUBVOL` needs only ownership), which
            // would make the tenant choose the snapshot's identity
            // (`SubvolInfo::guid`). The stage is ours alone: no one writes
            // it in between, and a crash leaves it to be aborted.
            self.btrfs()
                .arg("subvolume")
                .arg("snapshot")
                .path_arg(&src)?
                .path_arg(vol)?
                .run()?;
            // After the snapshot, so that a subvolume made just before it
            // is seen; on refusal `make` moves the stage, snapshot
            // included, to the trash.
            self.refuse_nested(&src, &format!("{what} {}", source.id))
        })
    }
}
