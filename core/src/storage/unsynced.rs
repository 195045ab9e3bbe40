//! A storage whose syncs are no-ops: for tests about bytes, not durability.
//!
//! [`UnsyncedStorage`] passes every call through to its inner storage except
//! `fdatasync`, `fsync` and directory syncs, which return `Ok` at once. Sweeps
//! that open a journal thousands of times (truncation, corruption) use it so
//! that they measure the journal's decisions, not the disk's flush latency;
//! the code paths above the seam are the same. It is a test seam, named as
//! such: state kept through it is not crash-safe.

use super::{LockGuard, Storage, StorageFile, Trusted};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Wraps a storage and skips its syncs.
#[derive(Debug, Clone)]
pub struct UnsyncedStorage {
    inner: Arc<dyn Storage>,
}

impl UnsyncedStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        UnsyncedStorage { inner }
    }
}

#[derive(Debug)]
struct UnsyncedFile(Box<dyn StorageFile>);

impl Storage for UnsyncedStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(UnsyncedFile(self.inner.open(path)?)))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(UnsyncedFile(self.inner.create(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        self.inner.lock_exclusive(path, holder)
    }
    fn check_trusted(&self, path: &Path, entry: Trusted) -> io::Result<()> {
        self.inner.check_trusted(path, entry)
    }
}

impl StorageFile for UnsyncedFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.0.allocate(len)
    }
    fn drop_cache(&self) -> io::Result<()> {
        self.0.drop_cache()
    }
}
