//! Whether a path is one that no other user can change: the rule the state
//! directory (and everything volmgr keeps in it) and a directory provider's
//! root must pass before volmgr, running as root, creates or reads anything
//! there (OpenSSH's `StrictModes`).
//!
//! The path, made absolute, is walked component by component with `lstat`,
//! from `/` down:
//! - every directory is owned by root or by the effective uid and is not
//!   group- or other-writable, except a *sticky* directory (like `/tmp`),
//!   trusted as an ancestor only: in it, another user can add entries but
//!   not remove or rename ours, and the next component must be ours (or
//!   root's) like every other;
//! - a symlink is followed only if it is owned by root or the effective
//!   uid (it lives in a directory that passed, so nobody else can swap it)
//!   and its target passes the same walk (at most [`MAX_SYMLINKS`] of
//!   them);
//! - the last directory is owned as its use requires ([`Last`]) and never
//!   group- or other-writable, sticky or not.
//!
//! So no entry the walk traverses lives in a directory another user can
//! change. The check is a snapshot: it is safe because what passed cannot
//! be changed afterwards by anyone but root and us.

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Most symlinks one walk follows (the kernel's own limit is 40).
pub const MAX_SYMLINKS: u32 = 40;

/// Group- and other-write permission bits.
const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// A path another user could change, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// The entry that failed (a directory, symlink or file on the walk).
    pub path: PathBuf,
    /// What was found (owner uid, mode) and what to do about it.
    pub reason: String,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for Untrusted {}

impl Untrusted {
    /// The refusal carried by `e` (made by [`Untrusted::into_io`]), if any.
    pub fn of(e: &io::Error) -> Option<&Untrusted> {
        e.get_ref()?.downcast_ref::<Untrusted>()
    }

    /// As an `io::Error` (kind `PermissionDenied`), for the storage seam.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, self)
    }
}

/// Who must own the last directory of a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    /// The effective uid: a directory volmgr keeps its own state in (the
    /// state directory).
    Euid,
    /// Root or the effective uid (a provider's root, which root may have
    /// made for us).
    RootOrEuid,
}

/// Whether the walked path exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    /// Every component exists and passed; the path it resolves to.
    Exists(PathBuf),
    /// A component is missing (from it on, volmgr creates the rest); every
    /// component before it passed.
    Missing,
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks `path` (made absolute against the current directory), which
/// must exist, by the rule of this module, its last directory owned as
/// `last` says.
pub fn check_dir_path(path: &Path, last: Last) -> Result<PathBuf, Untrusted> {
    match check_dir_path_to_create(path, last)? {
        Walked::Exists(real) => Ok(real),
        Walked::Missing => Err(Untrusted {
            path: path.to_owned(),
            reason: "does not exist (it vanished during the check)".into(),
        }),
    }
}

/// Like [`check_dir_path`], but a missing component is no refusal: the
/// existing components are checked (so volmgr may create the rest), and
/// [`Walked::Missing`] says the path is not whole yet (check it again once
/// created).
pub fn check_dir_path_to_create(path: &Path, last: Last) -> Result<Walked, Untrusted> {
    Walker::new(euid()).walk_absolute(path, last)
}

/// Checks a file volmgr keeps in a directory that passed: not a symlink
/// (never followed), owned by the effective uid, and (a regular file) not
/// group- or other-writable. `Ok(false)` if absent. Something else of ours
/// in its place (a directory, a FIFO) passes: its reader refuses it, naming
/// what it is.
pub fn check_own_file(path: &Path) -> Result<bool, Untrusted> {
    check_own_file_as(path, euid())
}

fn check_own_file_as(path: &Path, me: u32) -> Result<bool, Untrusted> {
    let Some(md) = lstat_not_symlink(path, "file")? else {
        return Ok(false);
    };
    let refuse = |reason: String| Untrusted {
        path: path.to_owned(),
        reason,
    };
    if md.uid() != me {
        return Err(refuse(format!(
            "is owned by uid {}, not uid {me} (the user volmgr runs as): another user made it; \
             remove it (volmgr creates it) or `chown {me}` it",
            md.uid()
        )));
    }
    if md.is_file() && md.mode() & GROUP_OTHER_WRITE != 0 {
        return Err(refuse(format!(
            "has mode {:o}: group or others may write it; `chmod go-w` it",
            md.mode() & 0o7777
        )));
    }
    Ok(true)
}

/// Checks a directory volmgr keeps private in a directory that passed
/// (`journal/`, `checkpoints/`): not a symlink, a directory, owned by the
/// effective uid. One more open than 0700 is then made 0700 (it is ours).
/// `Ok(false)` if absent.
pub fn restrict_own_dir(path: &Path) -> Result<bool, Untrusted> {
    restrict_own_dir_as(path, euid())
}

fn restrict_own_dir_as(path: &Path, me: u32) -> Result<bool, Untrusted> {
    let Some(md) = lstat_not_symlink(path, "directory")? else {
        return Ok(false);
    };
    let refuse = |reason: String| Untrusted {
        path: path.to_owned(),
        reason,
    };
    if !md.is_dir() {
        return Err(refuse(format!(
            "is not a directory (mode {:o}): remove it (volmgr creates the directory)",
            md.mode()
        )));
    }
    if md.uid() != me {
        return Err(refuse(format!(
            "is owned by uid {}, not uid {me} (the user volmgr runs as): another user made it \
             and may have planted what it holds; remove it (volmgr creates it)",
            md.uid()
        )));
    }
    if md.mode() & 0o7777 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| {
            refuse(format!(
                "has mode {:o} and cannot be made 0700: {e}",
                md.mode() & 0o7777
            ))
        })?;
    }
    Ok(true)
}

/// Makes a file volmgr keeps in a private directory of its own (a journal
/// segment, a checkpoint) 0600 if its mode differs: older versions wrote
/// them 0644. Only a regular file is changed; anything else there (a
/// symlink, never followed; a FIFO) is left to its reader, which refuses
/// it naming what it is. `Ok(true)` if a regular file is there. The
/// directory passed [`restrict_own_dir`], so no other user can swap the
/// entry between the `lstat` and the `chmod`.
pub fn restrict_own_file(path: &Path) -> Result<bool, Untrusted> {
    let Some(md) = lstat_if_present(path)? else {
        return Ok(false);
    };
    if !md.is_file() {
        return Ok(false);
    }
    if md.mode() & 0o7777 != 0o600 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| Untrusted {
            path: path.to_owned(),
            reason: format!(
                "has mode {:o} and cannot be made 0600: {e}",
                md.mode() & 0o7777
            ),
        })?;
    }
    Ok(true)
}

/// `path`'s own metadata if present; a symlink there (where volmgr makes
/// a `makes`, never through a link) is refused.
fn lstat_not_symlink(path: &Path, makes: &str) -> Result<Option<Metadata>, Untrusted> {
    let md = lstat_if_present(path)?;
    if md.as_ref().is_some_and(|md| md.file_type().is_symlink()) {
        return Err(Untrusted {
            path: path.to_owned(),
            reason: format!(
                "is a symlink, and volmgr never follows one here: remove it (volmgr creates the \
                 {makes})"
            ),
        });
    }
    Ok(md)
}

fn lstat_if_present(path: &Path) -> Result<Option<Metadata>, Untrusted> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Untrusted {
            path: path.to_owned(),
            reason: format!("cannot be examined: {e}"),
        }),
    }
}

/// One walk: the uid it trusts besides root, and the symlinks followed.
struct Walker {
    me: u32,
    symlinks: u32,
}

impl Walker {
    fn new(me: u32) -> Walker {
        Walker { me, symlinks: 0 }
    }

    fn walk_absolute(&mut self, path: &Path, last: Last) -> Result<Walked, Untrusted> {
        if path.is_absolute() {
            return self.walk(path, Some(last));
        }
        let cwd = std::env::current_dir().map_err(|e| Untrusted {
            path: path.to_owned(),
            reason: format!("relative, and the current directory is unknown: {e}"),
        })?;
        self.walk(&cwd.join(path), Some(last))
    }

    /// Walks the absolute `path`; its last component is checked as `last`
    /// says, or as an ancestor if `None`.
    fn walk(&mut self, path: &Path, last: Option<Last>) -> Result<Walked, Untrusted> {
        let components: Vec<Component<'_>> = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir | Component::Prefix(_)))
            .collect();
        let mut cur = PathBuf::from("/");
        let root = lstat_if_present(&cur)?.expect("/ exists");
        let only_root = components.iter().all(|c| matches!(c, Component::RootDir));
        self.check_dir(&cur, &root, if only_root { last } else { None })?;
        let end = components.len().saturating_sub(1);
        for (i, component) in components.iter().enumerate() {
            let this_last = if i == end { last } else { None };
            match component {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    // `cur` holds no symlink (each was replaced by its
                    // target), so its parent is the kernel's `..`, which
                    // passed as an ancestor; as the last one, check it again.
                    cur.pop();
                    if this_last.is_some() {
                        let md = lstat_if_present(&cur)?.ok_or_else(|| Untrusted {
                            path: cur.clone(),
                            reason: "vanished during the check".into(),
                        })?;
                        self.check_dir(&cur, &md, this_last)?;
                    }
                }
                Component::Normal(name) => {
                    let next = cur.join(name);
                    let Some(md) = lstat_if_present(&next)? else {
                        return Ok(Walked::Missing);
                    };
                    if md.file_type().is_symlink() {
                        match self.follow(&cur, &next, &md, this_last)? {
                            Walked::Exists(real) => cur = real,
                            Walked::Missing => return Ok(Walked::Missing),
                        }
                    } else if md.is_dir() {
                        self.check_dir(&next, &md, this_last)?;
                        cur = next;
                    } else {
                        return Err(Untrusted {
                            path: next,
                            reason: format!("is not a directory (mode {:o})", md.mode()),
                        });
                    }
                }
            }
        }
        Ok(Walked::Exists(cur))
    }

    /// A symlink `link` in the directory `dir` (which passed): trusted if
    /// root or we own it, then its target is walked.
    fn follow(
        &mut self,
        dir: &Path,
        link: &Path,
        md: &Metadata,
        last: Option<Last>,
    ) -> Result<Walked, Untrusted> {
        if md.uid() != 0 && md.uid() != self.me {
            return Err(Untrusted {
                path: link.to_owned(),
                reason: format!(
                    "is a symlink owned by uid {}, neither root nor uid {} (the user volmgr \
                     runs as): another user chose where it leads; remove it, or name the \
                     directory itself",
                    md.uid(),
                    self.me
                ),
            });
        }
        self.symlinks += 1;
        if self.symlinks > MAX_SYMLINKS {
            return Err(Untrusted {
                path: link.to_owned(),
                reason: format!("more than {MAX_SYMLINKS} symlinks on the way"),
            });
        }
        let target = fs::read_link(link).map_err(|e| Untrusted {
            path: link.to_owned(),
            reason: format!("cannot read the symlink: {e}"),
        })?;
        let target = if target.is_absolute() {
            target
        } else {
            dir.join(target)
        };
        self.walk(&target, last)
    }

    /// A directory on the walk: `last` for the walk's last one, `None` for
    /// an ancestor.
    fn check_dir(&self, path: &Path, md: &Metadata, last: Option<Last>) -> Result<(), Untrusted> {
        let refuse = |reason: String| {
            Err(Untrusted {
                path: path.to_owned(),
                reason,
            })
        };
        let (uid, me, mode) = (md.uid(), self.me, md.mode() & 0o7777);
        match last {
            Some(Last::Euid) if uid != me => {
                return refuse(format!(
                    "is owned by uid {uid}, not uid {me} (the user volmgr runs as): another \
                     user made it and may have planted what it holds; remove it (volmgr \
                     creates it), or `chown {me}` it if it is yours to trust"
                ));
            }
            _ if uid != 0 && uid != me => {
                return refuse(format!(
                    "is owned by uid {uid}, neither root nor uid {me} (the user volmgr runs \
                     as): that user can change what it holds; use another path, or `chown` it"
                ));
            }
            _ => {}
        }
        if mode & GROUP_OTHER_WRITE != 0 {
            let sticky = mode & STICKY != 0;
            if sticky && last.is_none() {
                return Ok(()); // like /tmp: others add entries, never change ours
            }
            let why = if sticky {
                "a sticky directory (like /tmp) is trusted on the way, never as the directory \
                 itself: use a directory inside it"
            } else {
                "group or others may replace what it holds; `chmod go-w` it, or use another \
                 path"
            };
            return refuse(format!("has mode {mode:o}: {why}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A uid that is neither root nor the walker's: `(walker uid, a
    /// directory owned by someone else)`. As root the directory is given
    /// to nobody; otherwise the walker trusts another uid than ours.
    fn foreign(path: &Path) -> u32 {
        if euid() == 0 {
            std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
            0
        } else {
            euid() + 1
        }
    }

    fn walk(path: &Path, me: u32, last: Last) -> Result<Walked, Untrusted> {
        Walker::new(me).walk(path, Some(last))
    }

    #[test]
    fn a_directory_of_ours_under_a_sticky_ancestor_passes() {
        // The temp dir lives in /tmp: sticky and world-writable.
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        let walked = walk(&state, euid(), Last::Euid).unwrap();
        assert_eq!(walked, Walked::Exists(state.clone()));
        // A sticky parent of our own is fine too.
        chmod(tmp.path(), 0o1777);
        assert!(walk(&state, euid(), Last::Euid).is_ok());
    }

    #[test]
    fn a_sticky_directory_is_refused_as_the_last_one() {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o1777);
        let e = walk(tmp.path(), euid(), Last::Euid).unwrap_err();
        assert_eq!(e.path, tmp.path());
        assert!(
            e.reason.contains("1777") && e.reason.contains("sticky"),
            "{e}"
        );
    }

    #[test]
    fn an_other_writable_ancestor_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("open");
        let state = parent.join("state");
        fs::create_dir_all(&state).unwrap();
        chmod(&parent, 0o777);
        let e = walk(&state, euid(), Last::Euid).unwrap_err();
        assert_eq!(e.path, parent);
        assert!(
            e.reason.contains("777") && e.reason.contains("chmod go-w"),
            "{e}"
        );
        // Group-writable is refused alike; a missing state directory too,
        // since its parent is what volmgr would create it in.
        chmod(&parent, 0o775);
        assert!(walk(&state, euid(), Last::Euid).is_err());
        fs::remove_dir(&state).unwrap();
        assert!(walk(&state, euid(), Last::Euid).is_err());
        chmod(&parent, 0o755);
        assert_eq!(walk(&state, euid(), Last::Euid), Ok(Walked::Missing));
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        let me = foreign(&state);
        let e = walk(&state, me, Last::Euid).unwrap_err();
        assert_eq!(e.path, state);
        assert!(
            e.reason.contains("owned by uid") && e.reason.contains("remove it"),
            "{e}"
        );
        assert!(walk(&state, me, Last::RootOrEuid).is_err());
        // As an ancestor, too.
        let inner = state.join("inner");
        fs::create_dir(&inner).unwrap();
        let e = walk(&inner, me, Last::RootOrEuid).unwrap_err();
        assert_eq!(e.path, state);
    }

    #[test]
    fn a_symlink_of_ours_in_a_trusted_directory_is_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        symlink("real", &link).unwrap();
        let walked = walk(&link.join("."), euid(), Last::Euid).unwrap();
        assert_eq!(walked, Walked::Exists(real.clone()));
        assert_eq!(walk(&link, euid(), Last::Euid), Ok(Walked::Exists(real)));
    }

    #[test]
    fn a_symlink_in_an_untrusted_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        let open = tmp.path().join("open");
        fs::create_dir(&real).unwrap();
        fs::create_dir(&open).unwrap();
        symlink(&real, open.join("link")).unwrap();
        chmod(&open, 0o777);
        let e = walk(&open.join("link"), euid(), Last::Euid).unwrap_err();
        assert_eq!(e.path, open);
    }

    #[test]
    fn a_symlink_owned_by_another_user_or_to_an_untrusted_target_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        symlink(&real, &link).unwrap();
        if euid() == 0 {
            std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
            let e = walk(&link, 0, Last::Euid).unwrap_err();
            assert_eq!(e.path, link);
            assert!(e.reason.contains("symlink owned by uid 65534"), "{e}");
            fs::remove_file(&link).unwrap();
            symlink(&real, &link).unwrap();
        }
        chmod(&real, 0o777);
        let e = walk(&link, euid(), Last::Euid).unwrap_err();
        assert_eq!(e.path, real, "the target is walked like the path");
    }

    #[test]
    fn a_symlink_loop_is_refused_not_followed_forever() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        symlink(tmp.path().join("b"), &a).unwrap();
        symlink(&a, tmp.path().join("b")).unwrap();
        let e = walk(&a.join("state"), euid(), Last::Euid).unwrap_err();
        assert!(e.reason.contains("symlinks"), "{e}");
    }

    #[test]
    fn own_files_and_directories_are_never_symlinks_nor_another_users() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("LOCK");
        assert_eq!(check_own_file_as(&file, euid()), Ok(false));
        fs::write(&file, b"").unwrap();
        chmod(&file, 0o644);
        assert_eq!(check_own_file_as(&file, euid()), Ok(true));
        chmod(&file, 0o666);
        assert!(check_own_file_as(&file, euid()).is_err());
        let link = tmp.path().join("IDENTITY");
        symlink(&file, &link).unwrap();
        assert!(
            check_own_file_as(&link, euid())
                .unwrap_err()
                .reason
                .contains("symlink")
        );
        let me = foreign(&file);
        assert!(
            check_own_file_as(&file, me)
                .unwrap_err()
                .reason
                .contains("owned by uid")
        );

        // Ours but not a file: left to its reader, which names what it is.
        let not_a_file = tmp.path().join("not-a-file");
        fs::create_dir(&not_a_file).unwrap();
        assert_eq!(check_own_file_as(&not_a_file, euid()), Ok(true));

        let dir = tmp.path().join("journal");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        assert_eq!(restrict_own_dir_as(&dir, euid()), Ok(true));
        assert_eq!(
            fs::metadata(&dir).unwrap().mode() & 0o7777,
            0o700,
            "made private"
        );
        let segment = dir.join("00000000000000000001.seg");
        assert_eq!(restrict_own_file(&segment), Ok(false));
        fs::write(&segment, b"").unwrap();
        chmod(&segment, 0o644);
        assert_eq!(restrict_own_file(&segment), Ok(true));
        assert_eq!(fs::metadata(&segment).unwrap().mode() & 0o7777, 0o600);
        let slink = dir.join("00000000000000000002.seg");
        symlink(&file, &slink).unwrap();
        chmod(&file, 0o644);
        assert_eq!(restrict_own_file(&slink), Ok(false), "never followed");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o644);
        let dlink = tmp.path().join("checkpoints");
        symlink(&dir, &dlink).unwrap();
        assert!(restrict_own_dir_as(&dlink, euid()).is_err());
        let me = foreign(&dir);
        assert!(restrict_own_dir_as(&dir, me).is_err());
    }
}
