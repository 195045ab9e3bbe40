//! The handles a [`SimStorage`](super::SimStorage) gives out: an open file
//! ([`SimFile`], which follows its inode across renames and removals, like a
//! file descriptor) and a lock guard ([`SimLock`], released on drop unless a
//! power cut already released it).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{Fs, idx};
use crate::storage::StorageFile;

/// Releases its lock on drop, unless a power cut already released it (the
/// token then no longer matches).
pub(super) struct SimLock {
    pub(super) fs: Arc<Mutex<Fs>>,
    pub(super) path: PathBuf,
    pub(super) token: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut fs = self
            .fs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if fs.locks.get(&self.path) == Some(&self.token) {
            fs.locks.remove(&self.path);
        }
    }
}

/// An open file of a [`SimStorage`]: it follows its inode across renames
/// and removals, like a file descriptor.
pub(super) struct SimFile {
    pub(super) fs: Arc<Mutex<Fs>>,
    pub(super) ino: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, Fs> {
        self.fs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().inode(self.ino).data.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut fs = self.lock();
        let data = &fs.inode(self.ino).data;
        let end = idx(offset) + buf.len();
        if end > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        buf.copy_from_slice(&data[idx(offset)..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.lock().write(self.ino, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.lock().sync_file(self.ino, "sync_data")
    }

    fn sync_all(&self) -> io::Result<()> {
        self.lock().sync_file(self.ino, "sync_all")
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.lock().set_len(self.ino, len)
    }

    fn drop_cache(&self) -> io::Result<()> {
        self.lock().drop_cache(self.ino);
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut fs = self.lock();
        let current = fs.inode(self.ino).data.len() as u64;
        if len <= current {
            return fs.check_live("allocate");
        }
        fs.set_len(self.ino, len)
    }
}
