//! [`Dir`]: a directory handle (an open descriptor) through which every access
//! inside a volume's tree goes, so no path is ever resolved across content
//! that an untrusted process may change concurrently.
//!
//! The rules, which each method keeps:
//! - a method takes one *name* (a single path component: not empty, no `/`,
//!   no NUL, not `.` or `..`) relative to the handle, never a path; the one
//!   exception, [`Dir::open_beneath`], resolves a relative path with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, where the kernel
//!   lacks `openat2`, one `O_NOFOLLOW | O_DIRECTORY` step per component);
//! - nothing follows a symbolic link: directories are opened with
//!   `O_NOFOLLOW | O_DIRECTORY`, files with `O_NOFOLLOW`, stats use
//!   `AT_SYMLINK_NOFOLLOW`, removals are `unlinkat` on the parent handle;
//! - nothing blocks on content: files are opened `O_NONBLOCK` (a FIFO opens
//!   at once) and checked with `fstat` after the open, so a FIFO, socket or
//!   device swapped in for a regular file is refused, never read;
//! - every descriptor is `O_CLOEXEC`.
//!
//! A swap race (a directory exchanged with a symlink between two calls) can
//! make an operation fail; it can never make one act outside the handle's
//! tree. The type is deliberately small and `std`-like so the directory
//! provider's file operations can later be routed through the storage seam.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
    Unknown,
}

impl Kind {
    fn of(mode: libc::mode_t) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFCHR => Kind::CharDevice,
            _ => Kind::Unknown,
        }
    }

    /// "a directory", "a fifo", ... for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a regular file",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a fifo",
            Kind::Socket => "a socket",
            Kind::BlockDevice => "a block device",
            Kind::CharDevice => "a character device",
            Kind::Unknown => "an unknown file type",
        }
    }
}

/// What `fstat`/`fstatat` says about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub len: u64,
    /// Bytes the file system allocated for it (`st_blocks` × 512): less
    /// than `len` for a sparse file.
    pub allocated: u64,
    pub dev: u64,
    pub ino: u64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            kind: Kind::of(st.st_mode),
            mode: st.st_mode & 0o7777,
            len: u64::try_from(st.st_size).unwrap_or(0),
            allocated: u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// Whether two stats name the same inode.
    pub fn same_inode(&self, other: &Stat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// Free space of a file system, from `fstatvfs`, as an unprivileged writer
/// sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// `None` when the file system has no fixed inode count (btrfs, ZFS).
    pub total_inodes: Option<u64>,
    pub free_inodes: Option<u64>,
    /// The file system's block size (`f_bsize`; btrfs: its sector size).
    pub block_bytes: u64,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Checks that `name` is one path component and makes it a C string.
fn cname(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(invalid("not a single path component"));
    }
    CString::new(name).map_err(|_| invalid("name contains NUL"))
}

/// The error for an entry of an unexpected type.
fn wrong_kind(found: Kind, want: &str) -> io::Error {
    io::Error::other(format!("is {}, not {want}", found.describe()))
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

/// Set once the kernel has answered `ENOSYS` to `openat2`.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// An open directory. See the module documentation.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// For calls this module does not wrap (a file system's own `ioctl`s).
impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl Dir {
    fn from_raw(fd: RawFd) -> Dir {
        // SAFETY: `fd` was just returned by a successful open and is owned by
        // no one else.
        Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Opens a directory by a *trusted* path (the provider's root or a fixed
    /// name under it): ancestors are resolved as given, the last component
    /// must not be a symlink.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c =
            CString::new(path.as_os_str().as_bytes()).map_err(|_| invalid("path contains NUL"))?;
        // SAFETY: a valid NUL-terminated path.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })?;
        Ok(Dir::from_raw(fd))
    }

    /// Opens the subdirectory `name`; a symlink (`ELOOP`) or anything else
    /// that is not a directory (`ENOTDIR`) is an error.
    pub fn open_dir(&self, name: &[u8]) -> io::Result<Dir> {
        let c = cname(name)?;
        // SAFETY: a valid descriptor and NUL-terminated name.
        let fd = cvt(unsafe { libc::openat(self.raw(), c.as_ptr(), DIR_FLAGS) })?;
        let d = Dir::from_raw(fd);
        let st = d.stat()?;
        if st.kind != Kind::Dir {
            return Err(wrong_kind(st.kind, "a directory"));
        }
        Ok(d)
    }

    /// Opens the directory at relative path `rel` (`/`-separated components,
    /// none empty, `.` or `..`; empty means this directory) without leaving
    /// this directory's tree and without following any symlink.
    pub fn open_beneath(&self, rel: &[u8]) -> io::Result<Dir> {
        if rel.is_empty() {
            return self.try_clone();
        }
        for comp in rel.split(|&b| b == b'/') {
            cname(comp)?;
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            match self.openat2_beneath(rel) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        self.walk_beneath(rel)
    }

    fn openat2_beneath(&self, rel: &[u8]) -> io::Result<Dir> {
        let c = CString::new(rel).map_err(|_| invalid("path contains NUL"))?;
        // SAFETY: `open_how` is plain integers; all-zero is its empty value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = DIR_FLAGS as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // A concurrent rename anywhere can make openat2 answer EAGAIN: retry.
        for _ in 0..16 {
            // SAFETY: valid descriptor, path and `open_how` of the size given.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.raw(),
                    c.as_ptr(),
                    &raw const how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if rc >= 0 {
                let fd = RawFd::try_from(rc).map_err(|_| {
                    io::Error::other(format!("openat2 returned {rc}, not a descriptor"))
                })?;
                let d = Dir::from_raw(fd);
                let st = d.stat()?;
                if st.kind != Kind::Dir {
                    return Err(wrong_kind(st.kind, "a directory"));
                }
                return Ok(d);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
        }
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }

    /// The `openat2`-less path of [`Dir::open_beneath`]: one
    /// `O_NOFOLLOW | O_DIRECTORY` open per component.
    pub(crate) fn walk_beneath(&self, rel: &[u8]) -> io::Result<Dir> {
        let mut cur = self.try_clone()?;
        for comp in rel.split(|&b| b == b'/') {
            cur = cur.open_dir(comp)?;
        }
        Ok(cur)
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// `fstat` of this directory.
    pub fn stat(&self) -> io::Result<Stat> {
        fstat(self.raw())
    }

    /// `fstatat(name, AT_SYMLINK_NOFOLLOW)`; absent is `None`.
    pub fn stat_at(&self, name: &[u8]) -> io::Result<Option<Stat>> {
        let c = cname(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid descriptor, name and output buffer.
        let rc = unsafe {
            libc::fstatat(
                self.raw(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(e);
        }
        // SAFETY: fstatat succeeded and filled the buffer.
        let st = unsafe { st.assume_init() };
        Ok(Some(Stat::from_raw(&st)))
    }

    /// Opens the regular file `name` for reading. It is opened `O_NONBLOCK`
    /// and `O_NOFOLLOW` and checked with `fstat` after the open: a symlink,
    /// FIFO, socket or device is refused without blocking or reading.
    pub fn open_file(&self, name: &[u8]) -> io::Result<(File, Stat)> {
        self.open_listed_file(name, None)
    }

    /// [`Dir::open_file`] for an entry that a listing ([`Dir::entries`])
    /// gave as `listed`: a listed regular file is opened without the
    /// `fstatat` before the open (the `fstat` after it still refuses
    /// anything else swapped in since), a listed other type is refused
    /// without a system call; `None` (type not given) examines it first as
    /// [`Dir::open_file`] does.
    pub fn open_listed_file(&self, name: &[u8], listed: Option<Kind>) -> io::Result<(File, Stat)> {
        let c = cname(name)?;
        // Refuse what is visibly not a regular file before opening it (an
        // open of a device node can have effects of its own).
        // Nothing there: `NotFound` as the open would say (one system call
        // fewer on the common path of a lookup that finds nothing).
        let kind = match listed {
            Some(kind) => kind,
            None => match self.stat_at(name)? {
                None => return Err(io::ErrorKind::NotFound.into()),
                Some(st) => st.kind,
            },
        };
        if kind != Kind::File {
            return Err(wrong_kind(kind, "a regular file"));
        }
        let flags =
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and name.
        let fd = cvt(unsafe { libc::openat(self.raw(), c.as_ptr(), flags) })?;
        // SAFETY: just opened, owned by no one else.
        let f = unsafe { File::from_raw_fd(fd) };
        let st = fstat(fd)?;
        if st.kind != Kind::File {
            return Err(wrong_kind(st.kind, "a regular file"));
        }
        Ok((f, st))
    }

    /// Creates the new regular file `name` (never over an existing entry,
    /// never through a symlink), open for writing, with `mode`.
    pub fn create_file(&self, name: &[u8], mode: u32) -> io::Result<File> {
        let c = cname(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and name.
        let fd = cvt(unsafe { libc::openat(self.raw(), c.as_ptr(), flags, mode as libc::c_uint) })?;
        // SAFETY: just opened, owned by no one else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Opens the regular file `name` for reading and writing, creating it
    /// with `mode` if absent (never through a symlink, never blocking: a
    /// FIFO, socket or device found there is refused by the `fstat` after
    /// the open). For a lock file, which is never renamed or replaced.
    pub fn open_or_create_file(&self, name: &[u8], mode: u32) -> io::Result<File> {
        let c = cname(name)?;
        let flags = libc::O_RDWR
            | libc::O_CREAT
            | libc::O_NOFOLLOW
            | libc::O_NONBLOCK
            | libc::O_NOCTTY
            | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and name.
        let fd = cvt(unsafe { libc::openat(self.raw(), c.as_ptr(), flags, mode as libc::c_uint) })?;
        // SAFETY: just opened, owned by no one else.
        let f = unsafe { File::from_raw_fd(fd) };
        let st = fstat(fd)?;
        if st.kind != Kind::File {
            return Err(wrong_kind(st.kind, "a regular file"));
        }
        Ok(f)
    }

    /// `mkdirat(name, mode)`.
    pub fn create_dir(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and name.
        cvt(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
    }

    /// `symlinkat(target, name)`: the target is stored, never resolved.
    pub fn symlink(&self, target: &[u8], name: &[u8]) -> io::Result<()> {
        let c = cname(name)?;
        let t = CString::new(target).map_err(|_| invalid("link target contains NUL"))?;
        // SAFETY: valid strings and descriptor.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) }).map(drop)
    }

    /// `readlinkat(name)`; an entry that is not a symlink is an error.
    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let c = cname(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: valid descriptor and name; the buffer is writable for its length.
        let n =
            unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        // Negative: failed, with errno set.
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        buf.truncate(n);
        Ok(buf)
    }

    /// `unlinkat(name, 0)`: removes a non-directory entry (a symlink itself,
    /// never its target).
    pub fn remove_file(&self, name: &[u8]) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and name.
        cvt(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }).map(drop)
    }

    /// `unlinkat(name, AT_REMOVEDIR)`: removes an empty directory.
    pub fn remove_dir(&self, name: &[u8]) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and name.
        cvt(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    /// `renameat2(self/name, to/to_name, flags)`.
    pub fn rename(
        &self,
        name: &[u8],
        to: &Dir,
        to_name: &[u8],
        flags: libc::c_uint,
    ) -> io::Result<()> {
        let (a, b) = (cname(name)?, cname(to_name)?);
        // SAFETY: valid descriptors and names.
        cvt(unsafe { libc::renameat2(self.raw(), a.as_ptr(), to.raw(), b.as_ptr(), flags) })
            .map(drop)
    }

    /// Sets the mode of entry `name` without following a symlink (a symlink
    /// is an error; its own mode means nothing on Linux).
    pub fn set_mode_at(&self, name: &[u8], mode: u32) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: valid descriptor and name.
        cvt(unsafe {
            libc::fchmodat(
                self.raw(),
                c.as_ptr(),
                mode as libc::mode_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// `fchmod` of this directory.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        // SAFETY: valid descriptor.
        cvt(unsafe { libc::fchmod(self.raw(), mode as libc::mode_t) }).map(drop)
    }

    /// `fsync` of this directory (makes its entries durable).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: valid descriptor.
        cvt(unsafe { libc::fsync(self.raw()) }).map(drop)
    }

    /// `syncfs` of the file system holding this directory.
    pub fn syncfs(&self) -> io::Result<()> {
        // SAFETY: valid descriptor.
        cvt(unsafe { libc::syncfs(self.raw()) }).map(drop)
    }

    /// Free space and inodes of the file system holding this directory.
    pub fn space(&self) -> io::Result<Space> {
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: valid descriptor and output buffer.
        cvt(unsafe { libc::fstatvfs(self.raw(), st.as_mut_ptr()) })?;
        // SAFETY: fstatvfs succeeded.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::unnecessary_cast)]
        let (bsize, frsize, blocks, bavail, files, favail) = (
            st.f_bsize as u64,
            st.f_frsize as u64,
            st.f_blocks as u64,
            st.f_bavail as u64,
            st.f_files as u64,
            st.f_favail as u64,
        );
        Ok(Space {
            total_bytes: blocks.saturating_mul(frsize),
            free_bytes: bavail.saturating_mul(frsize),
            total_inodes: (files != 0).then_some(files),
            free_inodes: (files != 0).then_some(favail),
            block_bytes: bsize,
        })
    }

    /// Whether the file system holding this directory is read-only now
    /// (`ST_RDONLY`: mounted so, or remounted so by the kernel after it
    /// aborted on a failed write).
    pub fn is_read_only(&self) -> io::Result<bool> {
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: valid descriptor and output buffer.
        cvt(unsafe { libc::fstatvfs(self.raw(), st.as_mut_ptr()) })?;
        // SAFETY: fstatvfs succeeded.
        let st = unsafe { st.assume_init() };
        Ok(st.f_flag & libc::ST_RDONLY != 0)
    }

    /// Names of the entries (without `.` and `..`), sorted bytewise.
    pub fn names(&self) -> io::Result<Vec<Vec<u8>>> {
        Ok(self.entries()?.into_iter().map(|(name, _)| name).collect())
    }

    /// Names of the entries (without `.` and `..`), sorted bytewise, each
    /// with the type the listing itself gives (`d_type`; `None` where the
    /// file system does not say). Costs no system call per entry; the type
    /// is as of the listing, so a caller that acts on it still checks the
    /// entry it opens.
    pub fn entries(&self) -> io::Result<Vec<(Vec<u8>, Option<Kind>)>> {
        // `fdopendir` takes ownership of its descriptor: give it a duplicate,
        // rewound, so this handle stays usable and listable again.
        // SAFETY: valid descriptor.
        let dup = cvt(unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `dup` is an open directory descriptor we own.
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `dup` is still ours to close.
            unsafe { libc::close(dup) };
            return Err(e);
        }
        // SAFETY: `dirp` is a valid stream until closedir below.
        unsafe { libc::rewinddir(dirp) };
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: resetting errno to tell end-of-stream from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: valid stream.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: readdir returned a valid entry with a NUL-terminated name.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                // SAFETY: as above.
                let kind = match unsafe { (*ent).d_type } {
                    libc::DT_DIR => Some(Kind::Dir),
                    libc::DT_REG => Some(Kind::File),
                    libc::DT_LNK => Some(Kind::Symlink),
                    libc::DT_FIFO => Some(Kind::Fifo),
                    libc::DT_SOCK => Some(Kind::Socket),
                    libc::DT_BLK => Some(Kind::BlockDevice),
                    libc::DT_CHR => Some(Kind::CharDevice),
                    _ => None,
                };
                names.push((name.to_vec(), kind));
            }
        };
        // SAFETY: valid stream, closed once (this also closes `dup`).
        unsafe { libc::closedir(dirp) };
        result?;
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(names)
    }
}

fn fstat(fd: RawFd) -> io::Result<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid descriptor and output buffer.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled the buffer.
    let st = unsafe { st.assume_init() };
    Ok(Stat::from_raw(&st))
}

/// `fstat` of an open file.
pub fn stat_file(f: &File) -> io::Result<Stat> {
    fstat(f.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("in/a/b")).unwrap();
        std::fs::create_dir(t.path().join("secret")).unwrap();
        std::fs::write(t.path().join("secret/s"), b"s").unwrap();
        symlink(t.path().join("secret"), t.path().join("in/a/link")).unwrap();
        symlink("../..", t.path().join("in/a/up")).unwrap();
        let d = Dir::open(&t.path().join("in")).unwrap();
        (t, d)
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        let (_t, d) = setup();
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert_eq!(
                d.stat_at(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_beneath_never_follows_a_symlink_nor_leaves_the_tree() {
        let (_t, d) = setup();
        for walk in [false, true] {
            let open = |rel: &[u8]| {
                if walk {
                    d.walk_beneath(rel)
                } else {
                    d.open_beneath(rel)
                }
            };
            assert!(open(b"a/b").is_ok());
            assert!(open(b"a/link").is_err(), "walk={walk}");
            assert!(open(b"a/up").is_err(), "walk={walk}");
            assert!(open(b"a/../..").is_err(), "walk={walk}");
            assert!(open(b"/etc").is_err(), "walk={walk}");
        }
        assert!(d.open_dir(b"a").unwrap().open_dir(b"link").is_err());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (t, d) = setup();
        let fifo = CString::new(t.path().join("in/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = d.open_file(b"fifo").unwrap_err();
        assert!(e.to_string().contains("a fifo"), "{e}");
        let e = d.open_dir(b"a").unwrap().open_file(b"link").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn listing_twice_and_removal_act_on_the_handle() {
        let (_t, d) = setup();
        let a = d.open_dir(b"a").unwrap();
        assert_eq!(a.names().unwrap(), a.names().unwrap());
        assert_eq!(a.names().unwrap(), [&b"b"[..], b"link", b"up"]);
        a.remove_file(b"link").unwrap();
        a.remove_dir(b"b").unwrap();
        assert_eq!(a.names().unwrap(), [&b"up"[..]]);
        assert!(a.stat_at(b"b").unwrap().is_none());
    }

    /// A listing's entry types come from the listing itself, and a file
    /// opened on the listing's word is still checked after the open: a fifo
    /// swapped in for a listed regular file is refused (not blocked on), a
    /// listed symlink refused without being opened.
    #[test]
    fn a_listed_file_is_checked_after_its_open_whatever_the_listing_said() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        symlink("f", tmp.path().join("l")).unwrap();
        let fifo =
            std::ffi::CString::new(tmp.path().join("p").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let d = Dir::open(tmp.path()).unwrap();
        let entries = d.entries().unwrap();
        let kinds: Vec<(&[u8], Option<Kind>)> =
            entries.iter().map(|(n, k)| (n.as_slice(), *k)).collect();
        // tmpfs and ext4 give every entry's type.
        assert_eq!(
            kinds,
            vec![
                (&b"d"[..], Some(Kind::Dir)),
                (&b"f"[..], Some(Kind::File)),
                (&b"l"[..], Some(Kind::Symlink)),
                (&b"p"[..], Some(Kind::Fifo)),
            ]
        );
        assert_eq!(
            d.names().unwrap(),
            vec![b"d".to_vec(), b"f".to_vec(), b"l".to_vec(), b"p".to_vec()]
        );
        let (_, st) = d.open_listed_file(b"f", Some(Kind::File)).unwrap();
        assert_eq!(st.len, 1);
        let lied = d.open_listed_file(b"p", Some(Kind::File)).unwrap_err();
        assert!(lied.to_string().contains("is a fifo"), "{lied}");
        let link = d.open_listed_file(b"l", Some(Kind::Symlink)).unwrap_err();
        assert!(link.to_string().contains("is a symlink"), "{link}");
        let unknown = d.open_listed_file(b"l", None).unwrap_err();
        assert!(unknown.to_string().contains("is a symlink"), "{unknown}");
    }
}
