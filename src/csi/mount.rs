//! The node's system calls: bind mounts (`nosuid,nodev`, read-only on
//! request), unmounts, the mount table, file-system statistics and type.
//!
//! Blocking; the node service calls these on the blocking pool. Target paths
//! come from the CO (root, through the 0600 socket) and are checked by the
//! caller (absolute, no `..`); the volume's location comes from the journal.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Bound on the mount table read (hostile or huge tables get an error).
const MAX_MOUNTINFO_BYTES: u64 = 64 * 1024 * 1024;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Options of a bind mount beyond `nosuid,nodev` (always set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindOptions {
    pub readonly: bool,
    pub noexec: bool,
    pub noatime: bool,
}

impl BindOptions {
    fn flags(self) -> libc::c_ulong {
        let mut f = libc::MS_NOSUID | libc::MS_NODEV;
        if self.readonly {
            f |= libc::MS_RDONLY;
        }
        if self.noexec {
            f |= libc::MS_NOEXEC;
        }
        if self.noatime {
            f |= libc::MS_NOATIME;
        }
        f
    }
}

/// Bind-mounts `source` at `target`, then remounts it with `nosuid,nodev`
/// and the options (a bind mount takes its flags only on a remount). If the
/// remount fails the bind mount is undone.
pub fn bind(source: &Path, target: &Path, options: BindOptions) -> io::Result<()> {
    let src = cstring(source)?;
    let dst = cstring(target)?;
    // SAFETY: valid NUL-terminated paths; null fs type and data are allowed
    // for MS_BIND.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })?;
    // SAFETY: as above; a remount of the bind mount at `dst`.
    let remount = check(unsafe {
        libc::mount(
            std::ptr::null(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | options.flags(),
            std::ptr::null(),
        )
    });
    if let Err(e) = remount {
        let _ = unmount(target);
        return Err(e);
    }
    Ok(())
}

/// Unmounts `target` (the topmost mount there).
pub fn unmount(target: &Path) -> io::Result<()> {
    let dst = cstring(target)?;
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::umount2(dst.as_ptr(), libc::UMOUNT_NOFOLLOW) })
}

/// Undoes the octal escapes of a mountinfo path (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// One line of `/proc/self/mountinfo`: the mount's id and its parent's,
/// the device (`major:minor`) of the file system it shows, the path within
/// that file system that is the mount's root, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    id: u64,
    parent: u64,
    dev: String,
    /// As the kernel prints it: a root whose directory was removed since
    /// carries the suffix `//deleted`.
    root: Vec<u8>,
    point: PathBuf,
}

/// The mount table of this mount namespace.
fn mount_table() -> io::Result<Vec<MountEntry>> {
    let mut text = String::new();
    std::fs::File::open("/proc/self/mountinfo")?
        .take(MAX_MOUNTINFO_BYTES)
        .read_to_string(&mut text)?;
    Ok(parse_mount_table(&text))
}

/// The lines of a mount table; short or malformed lines are skipped.
fn parse_mount_table(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let dev = f.next()?.to_owned();
            let root = unescape(f.next()?).into_os_string().into_vec();
            let point = unescape(f.next()?);
            Some(MountEntry {
                id,
                parent,
                dev,
                root,
                point,
            })
        })
        .collect()
}

/// Mount points of this mount namespace (the fifth field of each line).
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(mount_table()?.into_iter().map(|e| e.point).collect())
}

/// The topmost of the mounts at `point` (the one no other mount there is
/// stacked on), if any.
fn topmost<'a>(table: &'a [MountEntry], point: &Path) -> Option<&'a MountEntry> {
    let at: Vec<&MountEntry> = table.iter().filter(|e| e.point == point).collect();
    at.iter()
        .rev()
        .find(|e| !at.iter().any(|o| o.parent == e.id))
        .or_else(|| at.last())
        .copied()
}

/// What a bind mount of a directory shows in the mount table: the device of
/// its file system and the directory's path within that file system.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BindSource {
    dev: String,
    root: PathBuf,
}

/// What a bind mount of `path` (resolved, as the mount table names paths)
/// shows: the device of the topmost mount holding `path` and `path` within
/// it. `path` itself need not exist.
fn bind_source_of(table: &[MountEntry], path: &Path) -> Option<BindSource> {
    let point = table
        .iter()
        .map(|e| &e.point)
        .filter(|p| path.starts_with(p))
        .max_by_key(|p| p.components().count())?;
    let holder = topmost(table, point)?;
    let within = path.strip_prefix(&holder.point).ok()?;
    let root = PathBuf::from(std::ffi::OsStr::from_bytes(&holder.root));
    Some(BindSource {
        dev: holder.dev.clone(),
        root: if within.as_os_str().is_empty() {
            root
        } else {
            root.join(within)
        },
    })
}

/// What the mount `e` is a bind mount of: its device and root, the root
/// taken as it was before its directory was removed.
fn mounted_source(e: &MountEntry) -> BindSource {
    let root = e.root.strip_suffix(b"//deleted").unwrap_or(&e.root);
    BindSource {
        dev: e.dev.clone(),
        root: PathBuf::from(std::ffi::OsStr::from_bytes(root)),
    }
}

/// Whether the topmost mount at `target` is a bind mount of the directory
/// at `location`, or of the one that was there and has been removed since
/// (a lost volume's): the mount shows the same device, and as its root the
/// path `location` has within that device's file system. Needs no file at
/// `location`, only its parent directory; `false` when either path's parent
/// is gone or nothing is mounted at `target`.
pub fn holds_bind_of(target: &Path, location: &Path) -> io::Result<bool> {
    let (Some(target), Some(location)) = (resolve_parent(target)?, resolve_parent(location)?)
    else {
        return Ok(false);
    };
    let table = mount_table()?;
    let Some(mounted) = topmost(&table, &target) else {
        return Ok(false);
    };
    Ok(bind_source_of(&table, &location).is_some_and(|s| s == mounted_source(mounted)))
}

/// Whether the topmost mount at `target` is a bind mount of a directory
/// at or below `dir` (a volume under a provider's directory), including one
/// moved or removed since (the mount table shows a moved directory's new
/// path, and a removed one's with `//deleted` after it): same device, and
/// a root within `dir`'s path on it. `false` when nothing is mounted at
/// `target` or either path's parent is gone.
pub fn holds_bind_below(target: &Path, dir: &Path) -> io::Result<bool> {
    let (Some(target), Some(dir)) = (resolve_parent(target)?, resolve_parent(dir)?) else {
        return Ok(false);
    };
    let table = mount_table()?;
    let (Some(mounted), Some(below)) = (topmost(&table, &target), bind_source_of(&table, &dir))
    else {
        return Ok(false);
    };
    let mounted = mounted_source(mounted);
    Ok(mounted.dev == below.dev && mounted.root.starts_with(&below.root))
}

/// Whether `path` is a mount point. The mount table names mount points by
/// their resolved paths, so `path`'s parent directories are resolved first
/// (a target under a symlinked directory, such as a kubelet root or Nomad
/// data directory that is a symlink, is found); its last component is not
/// followed (a symlink there is no mount point).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let Some(resolved) = resolve_parent(path)? else {
        return Ok(false);
    };
    Ok(mount_points()?.contains(&resolved))
}

/// `path` with its parent directories resolved (symlinks followed), its
/// last component kept; `None` if the parent does not exist.
fn resolve_parent(path: &Path) -> io::Result<Option<PathBuf>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Some(path.to_owned())); // the root
    };
    match std::fs::canonicalize(parent) {
        Ok(p) => Ok(Some(p.join(name))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether `a` and `b` are the same directory (a bind mount's root is the
/// source directory itself: same device and inode).
pub fn same_dir(a: &Path, b: &Path) -> io::Result<bool> {
    let (ma, mb) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

/// File-system statistics of the file system holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub bytes_used: u64,
    pub inodes_total: u64,
    pub inodes_available: u64,
    pub inodes_used: u64,
    pub readonly: bool,
    pub noexec: bool,
    pub noatime: bool,
}

pub fn stats(path: &Path) -> io::Result<FsStats> {
    let p = cstring(path)?;
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    check(unsafe { libc::statvfs(p.as_ptr(), &raw mut s) })?;
    let frsize = s.f_frsize as u64;
    let total = (s.f_blocks as u64).saturating_mul(frsize);
    let free = (s.f_bfree as u64).saturating_mul(frsize);
    Ok(FsStats {
        bytes_total: total,
        bytes_available: (s.f_bavail as u64).saturating_mul(frsize),
        bytes_used: total.saturating_sub(free),
        inodes_total: s.f_files as u64,
        inodes_available: s.f_favail as u64,
        inodes_used: (s.f_files as u64).saturating_sub(s.f_ffree as u64),
        readonly: s.f_flag & libc::ST_RDONLY != 0,
        noexec: s.f_flag & libc::ST_NOEXEC != 0,
        noatime: s.f_flag & libc::ST_NOATIME != 0,
    })
}

/// The name of the file system type holding `path`, for the ones a volume
/// can live on (an fs type a mount capability may name).
pub fn fs_type(path: &Path) -> io::Result<Option<&'static str>> {
    let p = cstring(path)?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    check(unsafe { libc::statfs(p.as_ptr(), &raw mut s) })?;
    #[allow(clippy::unnecessary_cast)]
    let magic = s.f_type as i64;
    Ok(match magic {
        0xEF53 => Some("ext4"),
        0x9123_683E => Some("btrfs"),
        0x5846_5342 => Some("xfs"),
        0x2FC1_2FC1 => Some("zfs"),
        0x0102_1994 => Some("tmpfs"),
        0x794C_7630 => Some("overlay"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped_and_short_lines_skipped() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    garbage\n\
                    37 35 98:0 / / rw - ext4 /dev/sda rw\n\
                    38 35 0:1 / /x\\134y rw - tmpfs t rw\n\
                    39 35 0:1 / /end\\04 rw - tmpfs t rw\n";
        let points: Vec<PathBuf> = parse_mount_table(text)
            .into_iter()
            .map(|e| e.point)
            .collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/mnt/a b"),
                PathBuf::from("/"),
                PathBuf::from("/x\\y"),
                PathBuf::from("/end\\04"),
            ]
        );
    }

    /// A bind mount of a directory of a file system mounted with a root of
    /// its own (`subvol=`): the mount shows the file system's device and
    /// the directory's path in it, removed or not; another directory, or
    /// the same path on another device, is not that mount.
    #[test]
    fn a_bind_mount_is_matched_by_device_and_root_even_after_its_directory_is_removed() {
        let text = "20 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 20 0:50 /@vols /srv rw - btrfs /dev/loop0 rw\n\
                    40 20 0:50 /@vols/data/v1 /k/t1 rw - btrfs /dev/loop0 rw\n\
                    41 20 0:50 /@vols/data/v2//deleted /k/t2 rw - btrfs /dev/loop0 rw\n\
                    42 20 8:1 /srv/data/v1 /k/t3 rw - ext4 /dev/sda1 rw\n\
                    43 40 8:1 /tmp /k/t1 rw - ext4 /dev/sda1 rw\n";
        let table = parse_mount_table(text);
        let source = |p: &str| bind_source_of(&table, Path::new(p)).unwrap();
        let at = |p: &str| mounted_source(topmost(&table, Path::new(p)).unwrap());
        assert_eq!(
            source("/srv/data/v2"),
            BindSource {
                dev: "0:50".into(),
                root: "/@vols/data/v2".into()
            }
        );
        assert_eq!(at("/k/t2"), source("/srv/data/v2"), "removed since");
        assert_ne!(at("/k/t3"), source("/srv/data/v1"), "another device");
        assert_eq!(
            at("/k/t1"),
            BindSource {
                dev: "8:1".into(),
                root: "/tmp".into()
            },
            "the mount stacked on top counts"
        );
        assert_eq!(source("/srv"), at("/srv"));
        assert!(topmost(&table, Path::new("/k")).is_none());
    }

    #[test]
    fn a_path_resolves_through_symlinked_parents_but_not_its_last_component() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let under = dir.path().join("link").join("target");
        assert_eq!(resolve_parent(&under).unwrap(), Some(real.join("target")));
        let last = dir.path().join("link");
        assert_eq!(
            resolve_parent(&last).unwrap(),
            Some(real.parent().unwrap().join("link"))
        );
        assert_eq!(resolve_parent(&real.join("gone/target")).unwrap(), None);
        assert_eq!(resolve_parent(Path::new("/")).unwrap(), Some("/".into()));
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()).unwrap());
        let s = stats(dir.path()).unwrap();
        assert!(s.bytes_total >= s.bytes_available && s.inodes_total >= s.inodes_used);
    }
}
