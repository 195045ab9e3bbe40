//! Removal in the btrfs provider: subvolume deletion with the bounded
//! busy retry, the trash (an atomic rename out of the namespace) and its purge.

use super::nested::children;
#[allow(clippy::wildcard_imports)]
use super::*;

impl BtrfsProvider {
    /// Deletes subvolumes in one command, retrying while busy: first, for
    /// those holding subvolumes a tenant made inside them, the limits of
    /// their capacity groups are lifted (module `quota`) and, by id, those
    /// nested subvolumes deleted (btrfs deletes
    /// no subvolume that holds another: `nested.rs`); after, their groups
    /// are removed (by the ids read before). A failure sets the lifted
    /// limits again.
    pub(super) fn delete_subvolumes(&self, paths: &[PathBuf]) -> Result<(), ProviderError> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(paths.len());
        let mut lifted = Vec::new();
        let result = (|| {
            for path in paths {
                let id = subvol_info(path)?.tree_id;
                ids.push(id);
                // Only deleting nested subvolumes needs room in the volume
                // (the volume's own entry is in the provider's directory):
                // with none, the limit stays, so a tenant writing while the
                // deletion is refused (busy) stays bounded.
                let nested = children(self.handle.fd(), id).map_err(io_err(format!(
                    "listing the subvolumes inside {} (subvolume id {id})",
                    path.display()
                )))?;
                if nested.is_empty() {
                    continue;
                }
                if let Some(bytes) = self.lift_limit(id)? {
                    lifted.push((id, bytes));
                }
                self.remove_nested(path)?;
            }
            self.delete_now(paths)
        })();
        match result {
            Ok(()) => {
                for id in ids {
                    self.release_group(id)?;
                }
                Ok(())
            }
            Err(e) => {
                for (id, bytes) in lifted {
                    if let Err(again) = self.restore_limit(id, bytes) {
                        tracing::warn!(error = %again, "a volume whose deletion failed is unlimited");
                    }
                }
                Err(e)
            }
        }
    }

    /// `btrfs subvolume delete` of `paths` (holding no subvolume), retried
    /// while busy.
    fn delete_now(&self, paths: &[PathBuf]) -> Result<(), ProviderError> {
        // No `--commit-after`: the deletion is in the running transaction,
        // made durable by the batched sync (module doc, "Durability").
        let mut cmd = self.btrfs().arg("subvolume").arg("delete");
        for p in paths {
            cmd = cmd.path_arg(p)?;
        }
        let busy = |e: &ProviderError, _| matches!(e, ProviderError::Command { stderr, .. } if stderr.contains("busy"));
        let still = match fsutil::retry_busy(BUSY_ATTEMPTS, Duration::from_millis(20), busy, || {
            cmd.run()
        }) {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(ProviderError::Command { stderr, .. })) if stderr.contains("not permitted") => {
                fsutil::StillBusy {
                    last: stderr,
                    attempts: 1,
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(still) => fsutil::StillBusy {
                last: stderr_text(&still.last),
                attempts: still.attempts,
            },
        };
        Err(ProviderError::Busy {
            what: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cause: format!(
                "{} (after {} attempts; is it mounted, or being sent?)",
                still.last.trim(),
                still.attempts
            ),
        })
    }

    /// Moves `path` into trash (atomically out of the namespace), then
    /// deletes it. Deletion failures leave it in trash, purged later.
    pub(super) fn trash(&self, path: &Path) -> Result<(), ProviderError> {
        let dest = self.trash_root().join(Uuid::new_v4().to_string());
        fs::rename(path, &dest).map_err(io_err(format!("move {} to trash", path.display())))?;
        if let Err(e) = self.purge(&dest) {
            tracing::warn!(path = %dest.display(), error = %e, "trash not emptied; retried at next start");
        }
        Ok(())
    }

    /// Deletes a directory tree that may contain subvolumes (not descending
    /// into them).
    pub(super) fn purge(&self, dir: &Path) -> Result<(), ProviderError> {
        let mut subvolumes = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ProviderError::io(format!("read {}", d.display()), e)),
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if is_subvolume(&p) {
                    subvolumes.push(p);
                } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                }
            }
        }
        self.delete_subvolumes(&subvolumes)?;
        match fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProviderError::io(format!("remove {}", dir.display()), e)),
        }
    }

    pub(super) fn purge_trash(&self) {
        let Ok(entries) = fs::read_dir(self.trash_root()) else {
            return;
        };
        for entry in entries.flatten() {
            if let Err(e) = self.purge(&entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "trash not emptied");
            }
        }
    }
}
