//! Facts about subvolumes straight from the kernel: `BTRFS_IOC_GET_SUBVOL_INFO`
//! (UUIDs, read-only flag) and the file system type (`statfs`).

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn is_subvolume(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == SUBVOL_ROOT_INO)
}

/// Facts about one subvolume, from `BTRFS_IOC_GET_SUBVOL_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubvolInfo {
    /// The subvolume's id (its tree's objectid).
    pub tree_id: u64,
    pub uuid: Uuid,
    pub parent_uuid: Option<Uuid>,
    pub received_uuid: Option<Uuid>,
    pub read_only: bool,
}

impl SubvolInfo {
    /// The identity `btrfs send` writes for this subvolume.
    pub fn guid(&self) -> Uuid {
        self.received_uuid.unwrap_or(self.uuid)
    }
}

#[repr(C)]
struct IoctlTimespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args` (linux/btrfs.h).
#[repr(C)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    times: [IoctlTimespec; 4],
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<GetSubvolInfoArgs>() == 504);
/// `_IOR(BTRFS_IOCTL_MAGIC, 60, struct btrfs_ioctl_get_subvol_info_args)`
/// (60 is `0x3c`).
const BTRFS_IOC_GET_SUBVOL_INFO: u64 = (2 << 30) | (504 << 16) | (0x94 << 8) | 0x3c;
/// `BTRFS_ROOT_SUBVOL_RDONLY` in the root item flags.
const BTRFS_ROOT_SUBVOL_RDONLY: u64 = 1;

/// Reads a subvolume's UUIDs and read-only flag (one ioctl, no process).
pub fn subvol_info(path: &Path) -> Result<SubvolInfo, ProviderError> {
    if !is_subvolume(path) {
        return Err(ProviderError::NotFound(format!(
            "subvolume {}",
            path.display()
        )));
    }
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    // SAFETY: the struct is plain data; zero is a valid value for every field.
    let mut args: GetSubvolInfoArgs = unsafe { std::mem::zeroed() };
    // SAFETY: the request matches the struct's size and layout (asserted).
    let r = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            BTRFS_IOC_GET_SUBVOL_INFO as _,
            &raw mut args,
        )
    };
    // The kernel may return a positive value on success (a b-tree search
    // result); only -1 is an error, as btrfs-progs' libbtrfsutil checks.
    if r < 0 {
        return Err(ProviderError::io(
            format!("BTRFS_IOC_GET_SUBVOL_INFO on {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    let opt = |b: [u8; 16]| (b != [0u8; 16]).then(|| Uuid::from_bytes(b));
    Ok(SubvolInfo {
        tree_id: args.treeid,
        uuid: Uuid::from_bytes(args.uuid),
        parent_uuid: opt(args.parent_uuid),
        received_uuid: opt(args.received_uuid),
        read_only: args.flags & BTRFS_ROOT_SUBVOL_RDONLY != 0,
    })
}

/// `_IOW(BTRFS_IOCTL_MAGIC, 26, __u64)` (26 is `0x1a`): sets a subvolume's
/// flags.
const BTRFS_IOC_SUBVOL_SETFLAGS: u64 = (1 << 30) | (8 << 16) | (0x94 << 8) | 0x1a;
/// `BTRFS_SUBVOL_RDONLY` in those flags.
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

/// Makes subvolume `path` read-only (one ioctl, no process).
pub fn make_read_only(path: &Path) -> Result<(), ProviderError> {
    set_read_only(path, true)
}

/// Sets (`true`) or clears the read-only flag of subvolume `path` (one
/// ioctl, no process). `path` is one of the provider's own, never one
/// inside a volume.
pub fn set_read_only(path: &Path, read_only: bool) -> Result<(), ProviderError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    set_read_only_fd(dir.as_raw_fd(), read_only).map_err(|e| {
        ProviderError::io(
            format!(
                "making {} {}",
                path.display(),
                if read_only { "read-only" } else { "writable" }
            ),
            e,
        )
    })
}

/// [`set_read_only`] of the subvolume whose root directory `fd` is.
pub(super) fn set_read_only_fd(fd: std::os::fd::RawFd, read_only: bool) -> io::Result<()> {
    let flags: u64 = if read_only { BTRFS_SUBVOL_RDONLY } else { 0 };
    // SAFETY: the request reads one u64 from `flags`.
    if unsafe { libc::ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS as _, &raw const flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `statfs` type of the file system holding `path`.
pub fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}
