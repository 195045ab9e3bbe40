//! The stream decoder's sink on the simulated file system: what
//! [`SimLayout::apply_stream`](super::SimLayout) gives
//! [`wire::decode`], so a receive on the simulation parses and checks the
//! stream with the real decoder and builds the staging tree entry by entry,
//! without a sync (as on the kernel). The simulation holds no modes (they
//! are tracked in [`Modes`] as on the kernel, never set) and no symlinks
//! (a symlink record is an error); a path's parent must be a directory of
//! the tree being built, as on the kernel.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::super::tree::Modes;
use super::super::wire::{self, Extents, Sink};
use super::SimLayout;
use crate::provider::ProviderError;
use crate::provider::stream::HashReader;
use crate::storage::{Storage, StorageFile};

/// Builds the staging tree `root` on the simulation.
pub(super) struct SimSink<'a> {
    pub(super) layout: &'a SimLayout,
    pub(super) root: &'a Path,
    pub(super) modes: &'a mut Modes,
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

/// Appends to a simulated file.
struct Appender {
    file: Box<dyn StorageFile>,
    at: u64,
}

impl Write for Appender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.at)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SimSink<'_> {
    fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn io(&self, what: &str, rel: &[u8], e: io::Error) -> ProviderError {
        ProviderError::io(format!("{what} {}", self.path(rel).display()), e)
    }

    /// Whether the parent of `rel` is a directory of the tree (every name
    /// of the simulation has a directory for a parent, so its ancestors
    /// are too).
    fn has_parent(&self, rel: &[u8]) -> bool {
        let parent = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => &rel[..i],
            None => &rel[..0],
        };
        self.layout.storage.is_dir(&self.path(parent)) == Some(true)
    }

    fn need_parent(&self, rel: &[u8]) -> Result<(), ProviderError> {
        if self.has_parent(rel) {
            Ok(())
        } else {
            Err(wire::no_parent(rel))
        }
    }

    /// Removes whatever is at `rel` (and its modes), unless it is a
    /// directory and `keep_dir`. Returns whether a directory was kept.
    fn clear(&mut self, rel: &[u8], keep_dir: bool) -> Result<bool, ProviderError> {
        let path = self.path(rel);
        match self.layout.storage.is_dir(&path) {
            None => Ok(false),
            Some(true) if keep_dir => Ok(true),
            Some(_) => {
                super::Layout::remove_tree(self.layout, &path)
                    .map_err(|e| self.io("removing", rel, e))?;
                self.modes.forget_subtree(rel);
                Ok(false)
            }
        }
    }

    fn count(&mut self, len: u64) {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(len);
    }
}

impl<R: Read> Sink<R> for SimSink<'_> {
    fn dir(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        self.count(0);
        if !rel.is_empty() {
            self.need_parent(rel)?;
            if !self.clear(rel, true)? {
                self.layout
                    .storage
                    .create_dir(&self.path(rel))
                    .map_err(|e| self.io("creating", rel, e))?;
            }
        }
        self.modes.record(rel, mode, true);
        Ok(())
    }

    fn file(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
    ) -> Result<(), ProviderError> {
        self.count(len);
        self.need_parent(rel)?;
        self.clear(rel, false)?;
        let file = self
            .layout
            .storage
            .create(&self.path(rel))
            .map_err(|e| self.io("creating", rel, e))?;
        r.copy_exact(len, &mut Appender { file, at: 0 }, "file content")?;
        self.modes.record(rel, mode, false);
        Ok(())
    }

    fn sparse(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        mode: u32,
        len: u64,
        extents: &mut Extents<'_>,
    ) -> Result<(), ProviderError> {
        self.count(0);
        self.need_parent(rel)?;
        self.clear(rel, false)?;
        let file = self
            .layout
            .storage
            .create(&self.path(rel))
            .map_err(|e| self.io("creating", rel, e))?;
        let mut out = Appender { file, at: 0 };
        while let Some((offset, n)) = extents.next(r)? {
            out.at = offset;
            r.copy_exact(n, &mut out, "file content")?;
            // Data written, not declared length, is what costs space.
            self.bytes = self.bytes.saturating_add(n);
        }
        out.file
            .set_len(len)
            .map_err(|e| self.io("writing", rel, e))?;
        self.modes.record(rel, mode, false);
        Ok(())
    }

    fn link(&mut self, rel: &[u8], _target: &[u8]) -> Result<(), ProviderError> {
        Err(ProviderError::Other(format!(
            "symlink {}: the simulated layout holds no symlinks",
            self.path(rel).display()
        )))
    }

    fn perm(&mut self, rel: &[u8], mode: u32) -> Result<(), ProviderError> {
        if rel.is_empty() {
            self.modes.record(rel, mode, true);
            return Ok(());
        }
        let Some(is_dir) = self.layout.storage.is_dir(&self.path(rel)) else {
            return Err(wire::not_in_base(rel));
        };
        self.modes.record(rel, mode, is_dir);
        Ok(())
    }

    fn delete(&mut self, rel: &[u8]) -> Result<(), ProviderError> {
        if self.has_parent(rel) {
            self.clear(rel, false)?;
        }
        Ok(())
    }

    fn modes(&self) -> &Modes {
        self.modes
    }

    fn totals(&self) -> (u64, u64) {
        (self.entries, self.bytes)
    }
}
