//! The btrfs provider's claim on its root: the root marker
//! `<root>/.volmgr/provider` naming the agent the root belongs to (see the
//! parent module's "The root's owner"). Read, and written if absent, before
//! anything under the root is touched.

#[allow(clippy::wildcard_imports)]
use super::*;
use std::os::unix::fs::DirBuilderExt;

use crate::fsutil::HeldLock;
use crate::model::AgentId;

/// The root marker's name, under `.volmgr`.
const ROOT_MARKER: &str = "provider";
/// The root's lock file, under `.volmgr`: locked (`flock`) by a provider
/// with an owner for as long as it lives, never renamed or replaced (see
/// the parent module's "The root's owner").
const ROOT_LOCK: &str = "lock";
/// Its first line; the second is `owner <agent id>\n`.
const ROOT_MARKER_HEAD: &str = "volmgr btrfs provider root (format 1)\n";
/// Length of a root marker.
const ROOT_MARKER_LEN: usize = ROOT_MARKER_HEAD.len() + AgentId::OWNER_LINE_LEN;
const _: () = assert!(ROOT_MARKER_LEN == 81);
/// Longest marker read: more is damage, reported as such.
const ROOT_MARKER_MAX: u64 = 256;

/// The bytes of the root marker naming `owner`.
fn encode_root_marker(owner: AgentId) -> Vec<u8> {
    let text = format!("{ROOT_MARKER_HEAD}{}", owner.owner_line());
    // Pair assertion: what is written is what `decode_root_marker` reads.
    debug_assert_eq!(decode_root_marker(text.as_bytes()), Ok(owner));
    text.into_bytes()
}

/// The owner a root marker's `bytes` name, or why they are not a marker.
fn decode_root_marker(bytes: &[u8]) -> Result<AgentId, String> {
    let rest = bytes
        .strip_prefix(ROOT_MARKER_HEAD.as_bytes())
        .ok_or_else(|| {
            format!(
                "{} bytes that are not {ROOT_MARKER_HEAD:?} followed by one line \
             \"owner <agent id>\"",
                bytes.len()
            )
        })?;
    AgentId::from_owner_line(rest)
}

impl BtrfsProvider {
    /// Claims the root for `owner`: a marker naming `owner` goes on, one
    /// naming another agent is [`ProviderError::ForeignRoot`], a damaged one
    /// is a configuration error naming the file; no marker (a new root, or
    /// one an earlier volmgr used, when one agent could only have meant
    /// itself) gets one, committed with the btrfs transaction before
    /// anything else happens under the root. The root's lock
    /// (`.volmgr/lock`) is taken before the marker is judged and returned,
    /// for the provider to hold as long as it lives: held by another agent
    /// running on the root, it is [`ProviderError::RootInUse`], even while
    /// the marker still names no one (two agents starting together).
    pub(super) fn claim_root(&self, owner: AgentId) -> Result<HeldLock, ProviderError> {
        let meta = self.root.join(META_DIR);
        match fs::symlink_metadata(&meta) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(ProviderError::InvalidConfig(format!(
                    "btrfs root {}: {} is not a directory",
                    self.root.display(),
                    meta.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new()
                    .mode(super::PRIVATE_DIR_MODE)
                    .create(&meta)
                {
                    Ok(()) => {}
                    // Another agent starting on the same new root made it:
                    // the lock below decides which of the two goes on.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(ProviderError::io(format!("create {}", meta.display()), e));
                    }
                }
            }
            Err(e) => return Err(ProviderError::io(format!("examine {}", meta.display()), e)),
        }
        let dir = fsutil::Dir::open(&meta).map_err(io_err(format!("open {}", meta.display())))?;
        // A root another agent owns is refused before anything is made in
        // it, even the lock file; judged again under the lock.
        self.judge_root_marker(&dir, owner)?;
        let lock_path = meta.join(ROOT_LOCK);
        let lock = fsutil::hold_lock(&dir, ROOT_LOCK.as_bytes())
            .map_err(io_err(format!("lock {}", lock_path.display())))?
            .ok_or_else(|| ProviderError::RootInUse {
                root: self.root.display().to_string(),
                lock: lock_path.display().to_string(),
            })?;
        if !self.judge_root_marker(&dir, owner)? {
            self.write_root_marker(&meta, owner)?;
            tracing::info!(root = %self.root.display(), %owner, "btrfs provider: root claimed for this agent");
        }
        Ok(lock)
    }

    /// Judges the root marker in `meta` for `owner`: `Ok(true)` if it
    /// names `owner`, `Ok(false)` if there is none; another agent's is
    /// [`ProviderError::ForeignRoot`], a damaged or unreadable one a
    /// configuration error naming the file.
    fn judge_root_marker(&self, meta: &fsutil::Dir, owner: AgentId) -> Result<bool, ProviderError> {
        let marker = self.root.join(META_DIR).join(ROOT_MARKER);
        match meta.open_file(ROOT_MARKER.as_bytes()) {
            Ok((file, _)) => {
                let mut bytes = Vec::new();
                file.take(ROOT_MARKER_MAX + 1)
                    .read_to_end(&mut bytes)
                    .map_err(io_err(format!("read {}", marker.display())))?;
                let named = decode_root_marker(&bytes).map_err(|why| {
                    ProviderError::InvalidConfig(format!(
                        "btrfs root {}: its ownership marker {} is damaged: {why}; nothing \
                         under the root was touched",
                        self.root.display(),
                        marker.display()
                    ))
                })?;
                if named != owner {
                    return Err(ProviderError::ForeignRoot {
                        root: self.root.display().to_string(),
                        owner: named.to_string(),
                    });
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ProviderError::InvalidConfig(format!(
                "btrfs root {}: its ownership marker {} cannot be read: {e}; nothing under the \
                 root was touched",
                self.root.display(),
                marker.display()
            ))),
        }
    }

    /// Writes the root marker as a tag is written (temp file, write-back,
    /// rename: whole or absent), then commits the transaction, so the claim
    /// is durable before the provider's first change under the root.
    fn write_root_marker(&self, meta: &Path, owner: AgentId) -> Result<(), ProviderError> {
        let path = meta.join(ROOT_MARKER);
        let tmp = meta.join(format!(".{ROOT_MARKER}.tmp"));
        let context = || format!("write {}", path.display());
        let mut f = crate::fsutil::create_nofollow(&tmp, 0o644).map_err(io_err(context()))?;
        f.write_all(&encode_root_marker(owner))
            .map_err(io_err(context()))?;
        tag::write_back(&f).map_err(io_err(format!("write back {}", tmp.display())))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err(context()))?;
        self.handle.batch_sync(BatchSync::Commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_marker_reads_back_its_owner() {
        let id = AgentId::generate();
        let bytes = encode_root_marker(id);
        assert_eq!(bytes.len(), ROOT_MARKER_LEN);
        assert_eq!(decode_root_marker(&bytes), Ok(id));
    }

    #[test]
    fn a_damaged_root_marker_is_refused_with_its_reason() {
        let id = AgentId::generate().to_string();
        let cases = [
            (String::new(), "not"),
            (
                format!("{ROOT_MARKER_HEAD}owner {id}"),
                "followed by one line",
            ),
            (format!("{ROOT_MARKER_HEAD}owner {id}\nx\n"), "owner \""),
            (
                format!("{ROOT_MARKER_HEAD}owner {}\n", id.to_uppercase()),
                "canonical",
            ),
            ("volmgr dir provider root (format 1)\n".to_owned(), "not"),
        ];
        for (text, why) in cases {
            let err = decode_root_marker(text.as_bytes()).expect_err("refused");
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
