//! The free-space guard of receives and copies: a hostile stream, or a
//! volume whose copy would be larger than it looks (a file hard-linked a
//! thousand times becomes a thousand files), is refused with
//! [`ProviderError::NoSpace`] before it fills the file system.

use crate::fsutil::{Dir, Space};
use crate::provider::ProviderError;

/// Keeps a receive from filling its file system: before each entry, the
/// free inodes (every [`SPACE_CHECK_EVERY`] entries) and, for file content,
/// the free bytes are checked against what the entry needs plus a reserve of
/// 2% of the file system (at least [`MIN_RESERVE_INODES`] inodes), so a
/// hostile stream is refused with [`ProviderError::NoSpace`] instead of
/// leaving the host's disk full.
pub(crate) struct SpaceGuard {
    dir: Dir,
    since_check: u32,
    /// Entries and content bytes the stream staged so far (for a sparse
    /// file's pieces, the blocks they take: [`Self::content_taking`]).
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    /// Content bytes the last check found room for, not written yet
    /// ([`Self::content`]).
    granted: u64,
}

/// Entries between two inode checks (a file's content is checked every time).
pub const SPACE_CHECK_EVERY: u32 = 64;
/// Content bytes of a received file one free-space check covers.
pub const CONTENT_WINDOW: u64 = 8 << 20;
/// The bytes a receive or copy leaves free on a file system of
/// `total_bytes`: 2% of it.
pub(crate) fn reserve_bytes(total_bytes: u64) -> u64 {
    total_bytes / 50
}

/// Least number of inodes a receive leaves free.
pub const MIN_RESERVE_INODES: u64 = 2 * SPACE_CHECK_EVERY as u64;

impl SpaceGuard {
    pub(crate) fn new(dir: Dir) -> Self {
        SpaceGuard {
            dir,
            since_check: SPACE_CHECK_EVERY,
            entries: 0,
            bytes: 0,
            granted: 0,
        }
    }

    /// The file system's space now.
    pub(crate) fn space(&self) -> Result<Space, ProviderError> {
        self.dir
            .space()
            .map_err(|e| ProviderError::io("examining free space", e))
    }

    /// Checks that `entries` more entries holding `bytes` more bytes fit,
    /// leaving the reserve free.
    pub(crate) fn check(&self, what: &str, entries: u64, bytes: u64) -> Result<(), ProviderError> {
        let sp = self.space()?;
        let reserve_bytes = reserve_bytes(sp.total_bytes);
        if sp.free_bytes < bytes.saturating_add(reserve_bytes) {
            return Err(ProviderError::NoSpace {
                what: what.to_owned(),
                detail: format!(
                    "{bytes} more bytes needed, {} free, {reserve_bytes} kept in reserve",
                    sp.free_bytes
                ),
            });
        }
        if let (Some(free), Some(total)) = (sp.free_inodes, sp.total_inodes) {
            let reserve = (total / 50).max(MIN_RESERVE_INODES);
            if free < entries.saturating_add(reserve) {
                return Err(ProviderError::NoSpace {
                    what: what.to_owned(),
                    detail: format!(
                        "{entries} more inodes needed, {free} free, {reserve} kept in reserve"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Before `n` more content bytes of a file whose declared content has
    /// `left` bytes from there to its end: written data, not declared
    /// length, is what costs space (a received file's holes cost none).
    /// Free space is checked for the next [`CONTENT_WINDOW`] bytes of the
    /// file at a time (at most `left`), not for every chunk.
    pub(crate) fn content(&mut self, n: u64, left: u64) -> Result<(), ProviderError> {
        self.content_taking(n, left)
    }

    /// [`Self::content`] for content that takes `footprint` bytes of the
    /// file system: the whole blocks a piece of a sparse file is the first
    /// to touch (a byte alone in its block costs the block). The footprint,
    /// not the piece's length, is what the free-space checks count down and
    /// what is added to [`Self::bytes`], so data spread thin over holes is
    /// checked as often as the disk it takes, and a copy of the staged tree
    /// is expected to need that disk too.
    pub(crate) fn content_taking(
        &mut self,
        footprint: u64,
        left: u64,
    ) -> Result<(), ProviderError> {
        self.bytes = self.bytes.saturating_add(footprint);
        if self.granted < footprint {
            let window = left.min(CONTENT_WINDOW).max(footprint);
            self.check("the received stream", 0, window)?;
            self.granted = window;
        }
        self.granted -= footprint;
        Ok(())
    }

    /// Before one more entry with `len` bytes of content.
    pub(crate) fn entry(&mut self, len: u64) -> Result<(), ProviderError> {
        self.entry_for("the received stream", len)
    }

    /// [`Self::entry`] naming `what` in the error.
    pub(crate) fn entry_for(&mut self, what: &str, len: u64) -> Result<(), ProviderError> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(len);
        self.since_check += 1;
        if len > 0 || self.since_check >= SPACE_CHECK_EVERY {
            self.since_check = 0;
            self.check(what, u64::from(SPACE_CHECK_EVERY), len)?;
        }
        Ok(())
    }
}
