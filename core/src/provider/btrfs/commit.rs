//! How the btrfs provider makes its verbs durable: the batched sync is a
//! commit of the running btrfs transaction (`BTRFS_IOC_START_SYNC`, then
//! `BTRFS_IOC_WAIT_SYNC` for that transaction), which writes the
//! transaction's metadata and superblocks and nobody's file data; where a
//! verb needs file data durable too (a receive's files) it runs `syncfs`.
//! Both go through the root's descriptor, held since the provider opened:
//! `syncfs` reports a write-back error to a descriptor only if it happened
//! after that descriptor was opened (the file system's `errseq`), so a
//! descriptor opened for each call could miss an error another caller saw
//! first. [`BatchSync::Syncfs`] keeps the old batched sync (`syncfs`, which
//! also writes back every dirty page of the file system, tenants' data
//! included: a tenant writing flat out made each round take 0.2–5 s,
//! against about 1 ms for a commit; measured by `benches/manager.rs`).

use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::fsutil::Dir;
use crate::provider::ProviderError;

/// What the btrfs provider's batched sync runs (configuration key
/// `batch_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSync {
    /// Commit the running transaction: every verb's namespace change, tag
    /// and subvolume operation is in it; file data a tenant wrote is not
    /// written back (it is the tenant's to `fsync`).
    #[default]
    Commit,
    /// `syncfs`: write back every dirty page of the file system, then
    /// commit. Durable the same way, but a round waits for every tenant's
    /// buffered writes.
    Syncfs,
}

impl BatchSync {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchSync::Commit => "commit",
            BatchSync::Syncfs => "syncfs",
        }
    }

    /// Parses a configuration value (exactly `commit` or `syncfs`).
    pub fn parse(value: &str) -> Option<Self> {
        [BatchSync::Commit, BatchSync::Syncfs]
            .into_iter()
            .find(|b| b.as_str() == value)
    }
}

/// `_IOR(BTRFS_IOCTL_MAGIC, 24, __u64)` (24 is `0x18`): commits the running transaction
/// asynchronously and returns its id (or, with none running, the id of the
/// last committed one, after waiting for one being committed).
const BTRFS_IOC_START_SYNC: u64 = (2 << 30) | (8 << 16) | (0x94 << 8) | 0x18;
/// `_IOW(BTRFS_IOCTL_MAGIC, 22, __u64)` (22 is `0x16`): waits until the transaction with
/// that id is committed; an aborted transaction is an error.
const BTRFS_IOC_WAIT_SYNC: u64 = (1 << 30) | (8 << 16) | (0x94 << 8) | 0x16;

/// The provider root's descriptor, open for the provider's lifetime.
#[derive(Debug)]
pub(super) struct Root {
    path: PathBuf,
    dir: Dir,
}

impl Root {
    /// Opens `path` (a directory, not through a final symlink).
    pub(super) fn open(path: &Path) -> io::Result<Root> {
        Ok(Root {
            path: path.to_owned(),
            dir: Dir::open(path)?,
        })
    }

    /// The descriptor, for ioctls that name their object by id
    /// ([`super::nested`]).
    pub(super) fn fd(&self) -> std::os::unix::io::RawFd {
        self.dir.as_raw_fd()
    }

    /// Commits the running transaction and waits until it is on disk.
    pub(super) fn commit(&self) -> io::Result<()> {
        let mut transid: u64 = 0;
        // SAFETY: the request writes one u64 into `transid`.
        if unsafe {
            libc::ioctl(
                self.dir.as_raw_fd(),
                BTRFS_IOC_START_SYNC as _,
                &raw mut transid,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the request reads one u64 from `transid`.
        if unsafe {
            libc::ioctl(
                self.dir.as_raw_fd(),
                BTRFS_IOC_WAIT_SYNC as _,
                &raw const transid,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs the batched sync `how`; the error names the call and the root.
    pub(super) fn batch_sync(&self, how: BatchSync) -> Result<(), ProviderError> {
        let (what, r) = match how {
            BatchSync::Commit => ("committing the btrfs transaction", self.commit()),
            BatchSync::Syncfs => ("syncfs", self.dir.syncfs()),
        };
        r.map_err(|e| ProviderError::io(format!("{what} of {}", self.path.display()), e))
    }

    /// `syncfs` with an error naming the root.
    pub(super) fn sync_all(&self) -> Result<(), ProviderError> {
        self.batch_sync(BatchSync::Syncfs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sync_values_parse_exactly_and_round_trip() {
        for b in [BatchSync::Commit, BatchSync::Syncfs] {
            assert_eq!(BatchSync::parse(b.as_str()), Some(b));
        }
        for bad in ["", "Commit", " commit", "--help", "fsync", "auto"] {
            assert_eq!(BatchSync::parse(bad), None, "{bad:?}");
        }
        assert_eq!(BatchSync::default(), BatchSync::Commit);
    }

    #[test]
    fn ioctl_numbers_match_linux_btrfs_h() {
        // linux/btrfs.h: START_SYNC _IOR(0x94, 24, __u64), WAIT_SYNC
        // _IOW(0x94, 22, __u64).
        assert_eq!(BTRFS_IOC_START_SYNC, 0x8008_9418);
        assert_eq!(BTRFS_IOC_WAIT_SYNC, 0x4008_9416);
    }
}
