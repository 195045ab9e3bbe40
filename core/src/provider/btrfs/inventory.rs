//! The btrfs provider's inventory: one scan of `data/`, `snapshot/` and the
//! stage, one tag read and one subvolume ioctl per item.

#[allow(clippy::wildcard_imports)]
use super::*;

impl BtrfsProvider {
    /// See [`crate::provider::Provider::inventory`].
    pub(super) fn inventory_items(&self) -> Result<Vec<Found>, ProviderError> {
        let mut found = Vec::new();
        let staged_ops: BTreeSet<String> = fs::read_dir(self.stage_root())
            .map_err(io_err(format!("read {}", self.stage_root().display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut placed = BTreeSet::new();
        for kind in [VolumeKind::Data, VolumeKind::Snapshot] {
            let dir = self.root.join(kind_dir(kind));
            let entries = fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))?;
            for entry in entries {
                let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
                let path = entry.path();
                let name = entry.file_name();
                let tag = match entry.file_type() {
                    Ok(t) if t.is_dir() => read_tag(&path)
                        .filter(|t| t.kind == kind && OsStr::new(&t.volume) == name.as_os_str()),
                    _ => None,
                };
                let Some(tag) = tag else {
                    found.push(Self::foreign(&path));
                    continue;
                };
                let vol = path.join(VOL);
                if !is_subvolume(&vol) {
                    continue; // stale container: absent
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
                placed.insert(tag.volume.clone());
                found.push(Found {
                    name: path.to_string_lossy().into_owned(),
                    tag: Some(tag),
                    presence,
                    location: vol.to_string_lossy().into_owned(),
                    details,
                    partial: None,
                });
            }
        }
        for op in &staged_ops {
            let stage = self.stage_root().join(op);
            let Some(tag) = read_tag(&stage).filter(|t| t.op.to_string() == *op) else {
                continue; // nothing tagged was made yet: ours, empty, not an item
            };
            if placed.contains(&tag.volume) {
                continue;
            }
            let location = self.location(tag.kind, &tag.volume);
            found.push(Found {
                name: stage.to_string_lossy().into_owned(),
                presence: Presence::Incomplete {
                    reason: format!("staged by op {}, not yet in place", tag.op),
                },
                tag: Some(tag),
                location: location.to_string_lossy().into_owned(),
                details: Details::new(),
                partial: None,
            });
        }
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
}
