//! Fault injection storage: wraps a [`Storage`] and fails one chosen call.
//!
//! A [`FaultPlan`] names an operation kind and the 1-based occurrence of that
//! kind to fail (and, with `sticky`, every later one too). The wrapper counts
//! calls across all files it opened. It also plays a concurrent writer's
//! removals ([`FaultyStorage::remove_once_listed`]): what a reader of a live
//! journal meets. It is a test seam, named as such; the real journal code
//! paths run unchanged above it.

use super::{LockGuard, Storage, StorageFile, Trusted};
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The operations a plan can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    Write,
    SyncData,
    SyncAll,
    Rename,
    SyncDir,
    Create,
    Remove,
    Allocate,
}

impl FaultOp {
    pub const ALL: [FaultOp; 8] = [
        FaultOp::Write,
        FaultOp::SyncData,
        FaultOp::SyncAll,
        FaultOp::Rename,
        FaultOp::SyncDir,
        FaultOp::Create,
        FaultOp::Remove,
        FaultOp::Allocate,
    ];
}

/// How the injected failure looks to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`.
    Io,
    /// `ENOSPC`.
    NoSpace,
}

#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub op: FaultOp,
    /// 1-based occurrence of `op` that fails.
    pub nth: u64,
    /// Fail every occurrence from `nth` on, not just that one.
    pub sticky: bool,
    pub kind: FaultKind,
}

#[derive(Debug, Default)]
struct Injector {
    plan: Option<FaultPlan>,
    calls: HashMap<FaultOp, u64>,
    fired: u64,
}

impl Injector {
    fn check(&mut self, op: FaultOp) -> io::Result<()> {
        let n = {
            let c = self.calls.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        if let Some(plan) = self.plan.as_ref()
            && plan.op == op
            && (n == plan.nth || (plan.sticky && n > plan.nth))
        {
            self.fired += 1;
            return Err(match plan.kind {
                FaultKind::Io => io::Error::other(format!("injected fault: {op:?} #{n}")),
                FaultKind::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        Ok(())
    }
}

type Shared = Arc<Mutex<Injector>>;

fn check(injector: &Shared, op: FaultOp) -> io::Result<()> {
    injector
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .check(op)
}

/// A storage that fails the call its plan names.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    injector: Shared,
    /// Files removed (through `inner`) the moment a listing of their
    /// directory has named them.
    doomed: Arc<Mutex<Vec<std::path::PathBuf>>>,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultyStorage {
            inner,
            injector: Arc::default(),
            doomed: Arc::default(),
        }
    }

    /// Removes each of `paths` right after the next listing of its
    /// directory has named it: a live journal's writer removing an older
    /// checkpoint and the segments it covers while a reader goes through
    /// what it listed.
    pub fn remove_once_listed(&self, paths: impl IntoIterator<Item = std::path::PathBuf>) {
        self.doomed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(paths);
    }

    /// Arms (or with `None`, disarms) the plan; call counts restart at zero.
    pub fn set_plan(&self, plan: Option<FaultPlan>) {
        let mut injector = self
            .injector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *injector = Injector {
            plan,
            ..Injector::default()
        };
    }

    /// How many injected failures have fired since the plan was set.
    pub fn fired(&self) -> u64 {
        self.injector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fired
    }

    /// How many calls of `op` were made since the plan was set.
    pub fn calls(&self, op: FaultOp) -> u64 {
        let injector = self
            .injector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        injector.calls.get(&op).copied().unwrap_or(0)
    }

    fn wrap(&self, inner: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(FaultyFile {
            inner,
            injector: self.injector.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn StorageFile>,
    injector: Shared,
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let names = self.inner.list_dir(path)?;
        let mut doomed = self
            .doomed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut failed = None;
        doomed.retain(|d| {
            if d.parent() != Some(path) {
                return true;
            }
            if let Err(e) = self.inner.remove_file(d) {
                failed = Some(e);
            }
            false
        });
        failed.map_or(Ok(names), Err)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(self.inner.open(path)?))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        check(&self.injector, FaultOp::Create)?;
        Ok(self.wrap(self.inner.create(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        check(&self.injector, FaultOp::Rename)?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        check(&self.injector, FaultOp::Remove)?;
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        check(&self.injector, FaultOp::SyncDir)?;
        self.inner.sync_dir(path)
    }
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        self.inner.lock_exclusive(path, holder)
    }
    fn check_trusted(&self, path: &Path, entry: Trusted) -> io::Result<()> {
        self.inner.check_trusted(path, entry)
    }
}

impl StorageFile for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check(&self.injector, FaultOp::Write)?;
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        check(&self.injector, FaultOp::SyncData)?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        check(&self.injector, FaultOp::SyncAll)?;
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        check(&self.injector, FaultOp::Allocate)?;
        self.inner.allocate(len)
    }
    fn drop_cache(&self) -> io::Result<()> {
        self.inner.drop_cache()
    }
}
