//! The btrfs provider's inventory: one scan of `data/`, `snapshot/` and the
//! stage, one tag read and one subvolume ioctl per item. One item's lookup
//! reads its two possible containers and the stage, and judges each entry
//! by the same rule ([`BtrfsProvider::classify`], [`BtrfsProvider::staged`]).

#[allow(clippy::wildcard_imports)]
use super::*;

impl BtrfsProvider {
    /// See [`crate::provider::Provider::inventory`].
    pub(super) fn inventory_items(&self) -> Result<Vec<Found>, ProviderError> {
        let mut found = Vec::new();
        let staged_ops = self.staged_ops()?;
        let mut placed = BTreeSet::new();
        for kind in [VolumeKind::Data, VolumeKind::Snapshot] {
            let dir = self.root.join(kind_dir(kind));
            let entries = fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))?;
            for entry in entries {
                let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
                let path = entry.path();
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let item = Self::classify(kind, &path, &entry.file_name(), is_dir, &staged_ops);
                if let Some(tag) = item.as_ref().and_then(|f| f.tag.as_ref()) {
                    placed.insert(tag.volume.clone());
                }
                found.extend(item);
            }
        }
        found.extend(
            staged_ops
                .iter()
                .filter_map(|op| self.staged(op))
                .filter(|f| f.tag.as_ref().is_some_and(|t| !placed.contains(&t.volume))),
        );
        for entry in fs::read_dir(&self.root)
            .map_err(io_err(format!("read {}", self.root.display())))?
            .flatten()
        {
            let name = entry.file_name();
            if !matches!(name.as_bytes(), b"data" | b"snapshot" | b".volmgr") {
                found.push(Self::foreign(&entry.path()));
            }
        }
        Ok(found)
    }

    /// The item tagged as `id`, as [`Self::inventory_items`] reports it
    /// (see [`crate::provider::Provider::lookup`]): the stage's listing,
    /// then `data/<id>` and `snapshot/<id>` (an `lstat` each), then the
    /// stage's entries, in the inventory's order and judged by the same
    /// [`Self::classify`] and [`Self::staged`]. Foreign entries carry no
    /// tag, so the root's other entries are not read.
    pub(super) fn lookup_item(&self, id: &VolumeId) -> Result<Option<Found>, ProviderError> {
        let id = id.as_str();
        let staged_ops = self.staged_ops()?;
        for kind in [VolumeKind::Data, VolumeKind::Snapshot] {
            let path = self.container(kind, id);
            // Nothing there, or nothing `lstat` can read (the inventory's
            // listing would show it untagged at most): no item of `id`.
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let is_dir = meta.is_dir();
            if let Some(item) = Self::classify(kind, &path, OsStr::new(id), is_dir, &staged_ops)
                && item.tag.as_ref().is_some_and(|t| t.volume == id)
            {
                return Ok(Some(item));
            }
        }
        // Nothing in place for `id`, so no staged item of it is hidden.
        Ok(staged_ops
            .iter()
            .filter_map(|op| self.staged(op))
            .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == id)))
    }

    /// The names under the stage: one per operation in flight.
    fn staged_ops(&self) -> Result<BTreeSet<String>, ProviderError> {
        Ok(fs::read_dir(self.stage_root())
            .map_err(io_err(format!("read {}", self.stage_root().display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// What the inventory reports for the entry `name` of `kind`'s
    /// directory, at `path` (`is_dir`: a directory, not through a symlink):
    /// ours only with a tag naming `name` and `kind`, else foreign (no tag);
    /// `None` (absent) when ours without its subvolume (a stale container);
    /// incomplete when its subvolume cannot be inspected, its operation
    /// still has a stage (an uncommitted receive: `staged_ops`), or it is a
    /// snapshot that is not read-only. A snapshot's `details[guid]` is its
    /// send identity.
    fn classify(
        kind: VolumeKind,
        path: &Path,
        name: &OsStr,
        is_dir: bool,
        staged_ops: &BTreeSet<String>,
    ) -> Option<Found> {
        let tag = is_dir
            .then(|| read_tag(path))
            .flatten()
            .filter(|t| t.kind == kind && OsStr::new(&t.volume) == name);
        let Some(tag) = tag else {
            return Some(Self::foreign(path));
        };
        let vol = path.join(VOL);
        if !is_subvolume(&vol) {
            return None;
        }
        let mut details = Details::new();
        let presence = match subvol_info(&vol) {
            Err(e) => Presence::Incomplete {
                reason: format!("cannot inspect the subvolume: {e}"),
            },
            Ok(_) if staged_ops.contains(&tag.op.to_string()) => Presence::Incomplete {
                reason: format!("receive of op {} not committed", tag.op),
            },
            Ok(info) => {
                if kind == VolumeKind::Snapshot {
                    details.insert(DETAIL_GUID.into(), info.guid().to_string());
                }
                if kind == VolumeKind::Snapshot && !info.read_only {
                    Presence::Incomplete {
                        reason: "snapshot is not read-only".into(),
                    }
                } else {
                    Presence::Complete
                }
            }
        };
        Some(Found {
            name: path.to_string_lossy().into_owned(),
            tag: Some(tag),
            presence,
            location: vol.to_string_lossy().into_owned(),
            details,
            partial: None,
        })
    }

    /// The item staged by operation `op` (`stage/<op>` tagged by `op`),
    /// reported with its final location; `None` when nothing tagged was
    /// made yet (ours, empty, not an item). The inventory reports it only
    /// when nothing of its id is in place.
    fn staged(&self, op: &str) -> Option<Found> {
        let stage = self.stage_root().join(op);
        let tag = read_tag(&stage).filter(|t| t.op.to_string() == op)?;
        let location = self.location(tag.kind, &tag.volume);
        Some(Found {
            name: stage.to_string_lossy().into_owned(),
            presence: Presence::Incomplete {
                reason: format!("staged by op {}, not yet in place", tag.op),
            },
            tag: Some(tag),
            location: location.to_string_lossy().into_owned(),
            details: Details::new(),
            partial: None,
        })
    }
}
