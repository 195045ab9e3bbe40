//! The storage seam under the journal and checkpoints.
//!
//! Everything the journal does to the filesystem goes through [`Storage`] and
//! [`StorageFile`]: reads, positioned writes, `fdatasync`, renames, directory
//! syncs, removals and the state-directory lock. [`RealStorage`] maps them onto
//! `std::fs`; [`fault::FaultyStorage`] wraps any storage and fails a chosen call,
//! which is how the poison and failpoint tests inject errors. A simulated
//! storage that models unsynced bytes (power-cut tests) implements the same
//! traits. Nothing here knows about frames or records.

use std::any::Any;
use std::fmt;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

pub mod fault;
pub mod sim;
pub mod unsynced;

/// A held exclusive lock; dropping it releases the lock.
pub type LockGuard = Box<dyn Any + Send + Sync>;

/// The file-system operations the journal needs, and nothing more.
pub trait Storage: Send + Sync + Debug + 'static {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of a directory, unsorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing regular file for reading and writing. Anything
    /// else (a FIFO, a device, a socket, a directory) is refused with a
    /// [`NotRegularFile`] error, without blocking on it.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive, non-blocking lock on `path` (created if absent) and
    /// records `holder` in it. On contention returns `WouldBlock` and the
    /// current holder's text as the error message.
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard>;
    /// Refuses `path` if another user could change it (the state directory
    /// and what volmgr keeps in it; `crate::fsutil::trust` has the rule),
    /// with a [`crate::fsutil::trust::Untrusted`] error. An absent entry
    /// passes (the caller creates it, then checks again). Storages that
    /// model no owners (simulations) accept; wrappers delegate.
    fn check_trusted(&self, path: &Path, entry: Trusted) -> io::Result<()>;
}

/// What [`Storage::check_trusted`] checks `path` as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trusted {
    /// The state directory: it and every ancestor (the walk of
    /// `fsutil::trust`), the directory itself owned by the effective uid.
    StateDir,
    /// A directory volmgr keeps private in the state directory (`journal/`,
    /// `checkpoints/`): never a symlink, ours, made 0700 if more open.
    PrivateDir,
    /// A file volmgr keeps in the state directory (`LOCK`, `IDENTITY`):
    /// never a symlink, a regular file, ours, not group/other-writable.
    OwnFile,
    /// A file in a private directory (a segment in `journal/`, a
    /// checkpoint): a regular file is made 0600 if its mode differs (older
    /// versions wrote them 0644); anything else is left to its reader.
    /// Checked by an open that holds the lock.
    PrivateFile,
}

/// An open file: positioned I/O only, so concurrent readers need no cursor.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync + Debug {
    fn len(&self) -> io::Result<u64>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the written bytes (not necessarily metadata) are durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: bytes and metadata (size) are durable.
    fn sync_all(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves `len` bytes of zeros (fallocate), falling back to `set_len`.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Drops the file's clean cached pages (`posix_fadvise(POSIX_FADV_DONTNEED)`
    /// over the whole file), so the next reads return what the disk holds.
    /// After a failed write-back Linux keeps the pages it could not write,
    /// marked clean, in the page cache: reads return bytes that were never
    /// durable, and no later sync writes them. Pages not yet written back
    /// (dirty, or under write-back) are kept: sync first to have every page
    /// dropped. Reads only, never writes the file.
    fn drop_cache(&self) -> io::Result<()>;
}

/// Why a journal file was refused: it is not a regular file. A FIFO in place
/// of a segment would otherwise block every reader (and the agent's open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRegularFile {
    /// `a FIFO`, `a directory`, `a character device`, ...
    pub what: &'static str,
}

impl fmt::Display for NotRegularFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a regular file ({})", self.what)
    }
}

impl std::error::Error for NotRegularFile {}

impl NotRegularFile {
    /// The refusal carried by `e`, if it is one.
    pub fn of(e: &io::Error) -> Option<&NotRegularFile> {
        e.get_ref()?.downcast_ref::<NotRegularFile>()
    }
}

/// Opens `path` with `options` plus `O_NONBLOCK` (so a FIFO cannot block the
/// open) and refuses anything that `fstat` does not call a regular file.
/// `O_NONBLOCK` has no effect on regular files.
pub fn open_regular(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let file = options.custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "an unknown file type"
    };
    Err(io::Error::other(NotRegularFile { what }))
}

/// Reads a whole file, refusing (before allocating) one longer than `max_len`.
pub fn read_bounded(storage: &dyn Storage, path: &Path, max_len: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_bounded_into(storage, path, max_len, Cache::Keep, &mut buf)?;
    Ok(buf)
}

/// Whether a read first drops the file's clean cached pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Read through the page cache as it is.
    Keep,
    /// [`StorageFile::drop_cache`] first: the read returns what the disk
    /// holds, and what is not yet written back (dirty pages stay cached).
    Drop,
}

/// Like [`read_bounded`], into a caller's buffer (replaced, not appended to),
/// so a walk over many segments reuses one allocation instead of faulting in
/// fresh pages for every file.
pub fn read_bounded_into(
    storage: &dyn Storage,
    path: &Path,
    max_len: u64,
    cache: Cache,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let file = storage.open(path)?;
    if cache == Cache::Drop {
        file.drop_cache()?;
    }
    let len = file.len()?;
    if len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, more than the limit of {max_len}"),
        ));
    }
    let len = usize::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, more than memory can hold"),
        )
    })?;
    buf.clear();
    buf.resize(len, 0);
    file.read_exact_at(buf, 0)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealStorage;

#[derive(Debug)]
struct RealFile(File);

impl Storage for RealStorage {
    /// Directories are made 0700 (before the umask): the journal's
    /// directories are private ([`Trusted::PrivateDir`]).
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = open_regular(OpenOptions::new().read(true).write(true), path)?;
        Ok(Box::new(RealFile(file)))
    }

    /// Files are made 0600: segments and checkpoints hold every volume's
    /// configuration, for root's eyes only.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn check_trusted(&self, path: &Path, entry: Trusted) -> io::Result<()> {
        use crate::fsutil::trust;
        match entry {
            Trusted::StateDir => trust::check_dir_path_to_create(path, trust::Last::Euid).map(drop),
            Trusted::PrivateDir => trust::restrict_own_dir(path).map(drop),
            Trusted::OwnFile => trust::check_own_file(path).map(drop),
            Trusted::PrivateFile => trust::restrict_own_file(path).map(drop),
        }
        .map_err(trust::Untrusted::into_io)
    }

    /// The lock file is made 0600 and never opened through a symlink: a
    /// user who could open it could hold its `flock` and keep every agent
    /// out. An existing one (older versions made it 0644) must be a
    /// regular file of ours, and is made 0600 once the lock is held.
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let untrusted = |reason: String| {
            crate::fsutil::trust::Untrusted {
                path: path.to_owned(),
                reason,
            }
            .into_io()
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    untrusted("is a symlink, and volmgr never follows one here: remove it (volmgr creates the file)".into())
                } else {
                    e
                }
            })?;
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(untrusted(format!(
                "is not a regular file (mode {:o}): remove it (volmgr creates the file)",
                md.mode()
            )));
        }
        let me = crate::fsutil::trust::euid();
        if md.uid() != me {
            return Err(untrusted(format!(
                "is owned by uid {}, not uid {me} (the user volmgr runs as): another user made                  it and can hold its lock; remove it (volmgr creates it)",
                md.uid()
            )));
        }
        // Contention confirmed over a bounded window: a lock just released
        // can look held while a forked child has not exec'd yet.
        let locked = crate::fsutil::try_lock_confirmed(&file);
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let current = fs::read_to_string(path).unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    current.trim().to_owned(),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        if md.mode() & 0o7777 != 0o600 {
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        // Write, then cut to length: truncating to zero first would make
        // ext4 (auto_da_alloc) flush the file when it is closed.
        file.write_all_at(holder.as_bytes(), 0)?;
        file.set_len(holder.len() as u64)?;
        Ok(Box::new(file))
    }
}

impl StorageFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len_i64 = i64::try_from(len).map_err(|_| io::Error::other("allocation too large"))?;
        // SAFETY: fallocate on a valid, owned file descriptor with plain integers.
        let rc = unsafe { libc::fallocate(self.0.as_raw_fd(), 0, 0, len_i64) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => self.0.set_len(len),
            _ => Err(err),
        }
    }

    fn drop_cache(&self) -> io::Result<()> {
        drop_cached_pages(&self.0)
    }
}

/// `posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`: the whole file (offset 0
/// and length 0, to its end, so no partial page at either end is kept).
/// Linux starts the write-back of dirty pages, then drops every cached page
/// that is clean, unmapped, unlocked and not under write-back (draining the
/// per-CPU LRU caches and trying again for those it missed).
pub fn drop_cached_pages(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on a valid, owned file descriptor with plain
    // integers; it returns the error number instead of setting errno.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
