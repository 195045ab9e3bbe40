//! File-system primitives shared by the providers: durable updates (directory
//! fsync, `syncfs`, atomic small-file writes, the `renameat2` exchange), the
//! bounded busy-retry loop, and [`Dir`], the directory handle through which
//! every access *inside a volume* goes.
//!
//! Durability rules: a creation, rename or removal is durable once the parent
//! directory is fsynced ([`fsync_dir`]); a small file is replaced atomically
//! by writing a temp file (never through a symlink), fsyncing it, renaming it
//! over the target and fsyncing the directory ([`write_atomic`]).
//!
//! The paths taken here are the provider's *own* paths (its root and the
//! fixed names under it), resolved by the kernel as given. Paths inside a
//! volume's tree are never resolved from here: see [`dir`].

pub mod dir;
pub mod group_sync;
pub mod trust;
pub mod workers;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

pub use dir::{Dir, Kind, Space, Stat};
pub use group_sync::{GroupSync, Ticket};
pub use workers::Workers;

/// `fsync` of a directory: makes its entries (creations, renames, removals)
/// durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?
        .sync_all()
}

/// Tries, and the pause between them, before a lock found held is reported
/// as held (see [`try_lock_confirmed`]): 2 s in all.
const LOCK_CONFIRM_TRIES: u32 = 100;
const LOCK_CONFIRM_PAUSE: Duration = Duration::from_millis(20);

/// `file.try_lock()` (an exclusive `flock`), with contention confirmed over
/// a bounded window before it is reported. A process that forks (to run a
/// command) while it holds a lock shares the lock's open file until its
/// child calls exec: a lock just released (its provider dropped, its
/// journal closed) can look held for that instant, and on a loaded machine
/// the child may wait a second or more for a CPU before it execs (seen: 32
/// of 300 journal reopens refused under a 100 ms window). A real holder
/// keeps the lock far longer; a second opener is told after the window.
pub fn try_lock_confirmed(file: &File) -> Result<(), std::fs::TryLockError> {
    let mut attempt = 0;
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if attempt < LOCK_CONFIRM_TRIES => {
                attempt += 1;
                std::thread::sleep(LOCK_CONFIRM_PAUSE);
            }
            other => return other,
        }
    }
}

/// An exclusive lock on a lock file ([`hold_lock`]), held until this value
/// is dropped (closing the file releases the `flock`).
#[derive(Debug)]
pub struct HeldLock {
    _file: File,
}

/// Takes the exclusive lock of the lock file `name` in `dir`, creating it
/// (mode 0600: no other user can even open it, so none can hold its lock)
/// if absent, never through a symlink ([`Dir::open_or_create_file`]).
/// `Ok(None)`: another open file description holds it (confirmed over
/// [`try_lock_confirmed`]'s window). The file's content is never used: the
/// lock is on its inode, which must never be renamed over or replaced (a
/// rename would give the next opener another inode, and another lock).
pub fn hold_lock(dir: &Dir, name: &[u8]) -> io::Result<Option<HeldLock>> {
    let file = dir.open_or_create_file(name, 0o600)?;
    match try_lock_confirmed(&file) {
        Ok(()) => Ok(Some(HeldLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the exclusive lock of the lock file `name` in `dir` as
/// [`hold_lock`] does, but waits while another open file description holds
/// it (a blocking `flock`): for a lock held only across a few steps, which
/// a second taker must wait out rather than be refused by.
pub fn wait_lock(dir: &Dir, name: &[u8]) -> io::Result<HeldLock> {
    let file = dir.open_or_create_file(name, 0o600)?;
    file.lock()?;
    Ok(HeldLock { _file: file })
}

/// The machine's dirty page cache in bytes: `nr_dirty` + `nr_writeback`
/// pages of `/proc/vmstat` (every file system's), `None` if unreadable. An
/// upper bound on what a `syncfs` of one file system may write back.
pub fn dirty_page_cache_bytes() -> Option<u64> {
    use std::os::unix::fs::FileExt;
    use std::sync::OnceLock;
    // Opened once: a round reads it with one `pread` instead of an open, two
    // reads and a close (the fields come early in the file; a read stops as
    // soon as both are found, and only whole lines are parsed).
    static VMSTAT: OnceLock<Option<File>> = OnceLock::new();
    let file = VMSTAT
        .get_or_init(|| File::open("/proc/vmstat").ok())
        .as_ref()?;
    // Bounded: /proc/vmstat is a few KiB (its length reads as 0).
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0;
    loop {
        let n = file.read_at(&mut buf[len..], len as u64).ok()?;
        len += n;
        if let Some(pages) = dirty_pages_in_whole_lines(&buf[..len]) {
            return Some(pages.saturating_mul(page_size()));
        }
        if n == 0 || len == buf.len() {
            return None;
        }
    }
}

/// [`dirty_pages_in_vmstat`] of the whole lines of a prefix of
/// `/proc/vmstat` (a line cut by the end of a read is not parsed: `nr_dirty
/// 12` cut after its `1` is not 1 page).
fn dirty_pages_in_whole_lines(prefix: &[u8]) -> Option<u64> {
    let end = prefix.iter().rposition(|&b| b == b'\n')?;
    dirty_pages_in_vmstat(std::str::from_utf8(&prefix[..=end]).ok()?)
}

/// `nr_dirty` + `nr_writeback` from the text of `/proc/vmstat`; `None`
/// unless both are there.
fn dirty_pages_in_vmstat(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    field("nr_dirty")?.checked_add(field("nr_writeback")?)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096)
}

/// `syncfs`: flushes the whole file system holding `path` (on btrfs, commits
/// its transaction).
pub fn syncfs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: plain syscall on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates (or truncates) `path` for writing with `mode`, never through a
/// symlink: the temp file of an atomic replace.
pub fn create_nofollow(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Replaces `dir/name` with `bytes` durably: temp file `.<name>.tmp` (created
/// without following a symlink), fsync, rename, fsync of `dir`. The temp name
/// starts with a dot, so no listing of ours mistakes it for an entry.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = create_nofollow(&tmp, mode)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `renameat2(from, to, flags)` on two paths.
pub fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (a, b) = (cpath(from)?, cpath(to)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an error from `renameat2` means the file system (or kernel) does
/// not support the flag, rather than a failure of the rename itself.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Atomically exchanges two entries (`renameat2(RENAME_EXCHANGE)`). Returns
/// `Ok(false)` if the file system does not support the exchange.
pub fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    match rename2(a, b, libc::RENAME_EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e) if is_unsupported(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The mount flags (`ST_NOSUID`, `ST_NODEV`, `ST_RDONLY`, ...) of the file
/// system holding `path`, from `statvfs`.
pub fn mount_flags(path: &Path) -> io::Result<u64> {
    let c = cpath(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid path and output buffer.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_flag as u64)
}

/// Outcome of [`retry_busy`] when every attempt was busy.
#[derive(Debug)]
pub struct StillBusy<E> {
    /// The last attempt's error.
    pub last: E,
    pub attempts: u32,
}

/// Runs `f` up to `attempts` times while `is_busy` (given the error and the
/// attempt that returned it, from 1) says its error is a transient "busy",
/// sleeping `first_delay`, then twice as long each time (at most 16 times
/// `first_delay`) between attempts. Any other outcome is returned at once;
/// the last busy error comes back as [`StillBusy`].
pub fn retry_busy<T, E>(
    attempts: u32,
    first_delay: Duration,
    mut is_busy: impl FnMut(&E, u32) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<Result<T, E>, StillBusy<E>> {
    assert!(attempts > 0, "retry_busy needs at least one attempt");
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f() {
            Err(e) if is_busy(&e, attempt) => {
                if attempt >= attempts {
                    return Err(StillBusy {
                        last: e,
                        attempts: attempt,
                    });
                }
                std::thread::sleep(first_delay * (1 << (attempt - 1).min(4)));
            }
            other => return Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_pages_are_read_from_vmstat_and_never_guessed() {
        let text = "nr_free_pages 100\nnr_dirty 7194\nnr_writeback 6\nnr_dirty_threshold 1\n";
        assert_eq!(dirty_pages_in_vmstat(text), Some(7200));
        // A prefix of another field's name is not the field.
        assert_eq!(
            dirty_pages_in_vmstat("nr_dirty_threshold 5\nnr_writeback 1\n"),
            None
        );
        assert_eq!(dirty_pages_in_vmstat("nr_dirty 1\n"), None);
        assert_eq!(dirty_pages_in_vmstat("nr_dirty x\nnr_writeback 1\n"), None);
        assert_eq!(
            dirty_pages_in_vmstat(&format!("nr_dirty {}\nnr_writeback 1\n", u64::MAX)),
            None
        );
        // This machine's kernel has both fields (read twice: the file stays
        // open and is read again from its start).
        assert!(dirty_page_cache_bytes().is_some());
        assert!(dirty_page_cache_bytes().is_some());
    }

    #[test]
    fn a_read_that_ends_inside_a_line_never_parses_that_line() {
        let text = b"nr_dirty 12\nnr_writeback 3\n";
        assert_eq!(dirty_pages_in_whole_lines(text), Some(15));
        // Cut inside `3`'s line, then inside `12`: no guess from a part.
        assert_eq!(dirty_pages_in_whole_lines(&text[..text.len() - 1]), None);
        assert_eq!(dirty_pages_in_whole_lines(&text[..10]), None);
        assert_eq!(dirty_pages_in_whole_lines(b""), None);
    }

    #[test]
    fn retry_busy_stops_at_success_other_errors_and_the_bound() {
        let mut calls = 0;
        let r: Result<Result<u32, &str>, _> = retry_busy(
            5,
            Duration::ZERO,
            |e: &&str, _| *e == "busy",
            || {
                calls += 1;
                if calls < 3 { Err("busy") } else { Ok(calls) }
            },
        );
        assert_eq!(r.unwrap().unwrap(), 3);

        let r: Result<Result<(), &str>, _> =
            retry_busy(5, Duration::ZERO, |e: &&str, _| *e == "busy", || Err("no"));
        assert_eq!(r.unwrap().unwrap_err(), "no");

        let mut calls = 0;
        let r: Result<Result<(), &str>, _> = retry_busy(
            2,
            Duration::ZERO,
            |e: &&str, _| *e == "busy",
            || {
                calls += 1;
                Err("busy")
            },
        );
        let still = r.unwrap_err();
        assert_eq!((still.last, still.attempts, calls), ("busy", 2, 2));
    }

    #[test]
    fn write_atomic_replaces_and_never_writes_through_a_symlinked_temp() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "f", b"one", 0o644).unwrap();
        write_atomic(d.path(), "f", b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"two");
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join(".g.tmp")).unwrap();
        assert!(write_atomic(d.path(), "g", b"evil", 0o644).is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
    }
}
