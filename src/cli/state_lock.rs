//! `volmgr serve` takes the state directory's lock before it binds its
//! port: a second agent on a directory that another holds fails at once,
//! having bound nothing and logged no `serving` line. The lock is the very
//! one the journal takes when the manager opens (the same file, taken
//! through the same storage call): [`Prelocked`] hands the held lock to the
//! journal instead of locking again (a second `flock` on the file from this
//! process would conflict with the first).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::journal::LOCK_FILE;
use crate::storage::{LockGuard, RealStorage, Storage, StorageFile, Trusted};

/// Takes `<state_dir>/LOCK` as the journal would; the error names the
/// holder.
pub fn take(state_dir: &Path) -> Result<Arc<Prelocked>, String> {
    let path = state_dir.join(LOCK_FILE);
    let holder = format!("pid {}", std::process::id());
    match RealStorage.lock_exclusive(&path, &holder) {
        Ok(guard) => Ok(Arc::new(Prelocked {
            inner: RealStorage,
            path,
            guard: Mutex::new(Some(guard)),
        })),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let by = e.to_string();
            let by = if by.is_empty() {
                String::new()
            } else {
                format!(" ({by})")
            };
            Err(format!(
                "state directory {} is in use by another agent{by}: stop it, or give another \
                 --state-dir",
                state_dir.display()
            ))
        }
        Err(e) => Err(crate::journal::JournalError::from_io(&path, "lock", e).to_string()),
    }
}

/// The real storage, with the state directory's lock already held: the
/// journal's `lock_exclusive` on that file gets the held lock (once).
pub struct Prelocked {
    inner: RealStorage,
    path: PathBuf,
    guard: Mutex<Option<LockGuard>>,
}

impl fmt::Debug for Prelocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prelocked")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Storage for Prelocked {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.inner.open(path)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.inner.create(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn check_trusted(&self, path: &Path, entry: Trusted) -> io::Result<()> {
        self.inner.check_trusted(path, entry)
    }
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        if path == self.path
            && let Some(guard) = self
                .guard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        {
            return Ok(guard);
        }
        self.inner.lock_exclusive(path, holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_state_directory_is_refused_by_name_and_the_journal_gets_the_held_lock() {
        let dir = tempfile::tempdir().unwrap();
        let held = take(dir.path()).unwrap();
        let e = take(dir.path()).unwrap_err();
        assert!(
            e.contains("in use by another agent")
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        let lock = dir.path().join(LOCK_FILE);
        let guard = held.lock_exclusive(&lock, "x").expect("the held lock");
        // Handed over once: a second take through the wrapper is a real
        // attempt, refused while the guard lives.
        assert!(held.lock_exclusive(&lock, "x").is_err());
        drop(guard);
        drop(held);
        assert!(take(dir.path()).is_ok(), "released with the guard");
    }
}
