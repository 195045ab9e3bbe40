//! The providers the contract suite runs on: one small setup function per
//! provider, returning a [`Backend`] (or `None` after printing why the test
//! is skipped).
//!
//! Selection: `VOLMGR_CONTRACT_PROVIDER` is a comma-separated list of backend
//! names (`dir`, `btrfs`, `zfs`); unset means [`DEFAULT_BACKENDS`]. A backend
//! that is selected but unavailable prints SKIP, or fails when its
//! `VOLMGR_REQUIRE_*` variable is `1`.
//!
//! Adding ZFS: fill in [`zfs`] (a pool on a file vdev or on `ZFSVM_DISKS`, a
//! dataset from `VOLMGR_ZFS_DATASET`, `restart_host` = `zpool export` +
//! `zpool import`), then run
//! `VOLMGR_CONTRACT_PROVIDER=zfs cargo test --test provider_contract`
//! (inside the guest: `ZFS_TEST_TARGETS=provider_contract scripts/zfs-test`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use volmgr::provider::btrfs::BtrfsProvider;
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{AgentId, Provider, ProviderConfig, ProviderFactory};

use super::BtrfsFs;

pub const CONTRACT_PROVIDER: &str = "VOLMGR_CONTRACT_PROVIDER";
/// Backends run when `VOLMGR_CONTRACT_PROVIDER` is unset.
pub const DEFAULT_BACKENDS: &[&str] = &["dir", "btrfs"];

/// One provider under test, with the few provider-specific hooks the
/// contract suite needs.
pub trait Backend: Send + Sync {
    /// Backend name (`btrfs`), for messages.
    fn name(&self) -> &'static str;
    /// The provider kind to register.
    fn kind(&self) -> &'static str;
    /// Configuration of this test's provider (a fresh root/dataset).
    fn config(&self) -> ProviderConfig;
    /// The factory of the kind.
    fn factory(&self) -> ProviderFactory;
    /// A provider instance on the same root, for calls behind the manager's
    /// back: built without an owner, as a tool outside a manager (it checks
    /// no owner, and a dir root it makes gets a format-1 marker, which the
    /// manager's provider adopts).
    fn provider(&self) -> Arc<dyn Provider>;
    /// Puts an item under the provider's root that carries no ownership tag.
    fn plant_foreign(&self, name: &str);
    /// Whether that item is still there, untouched.
    fn foreign_present(&self, name: &str) -> bool;
    /// Simulated host shutdown and boot (unmount/mount, pool export/import).
    /// Called with no manager open.
    fn restart_host(&mut self);
    /// Whether writing into a snapshot fails for this process (the
    /// directory provider's read-only modes do not stop root).
    fn snapshots_refuse_writes(&self) -> bool {
        true
    }
}

/// Whether backend `name` is selected by `VOLMGR_CONTRACT_PROVIDER`.
pub fn selected(name: &str) -> bool {
    match std::env::var(CONTRACT_PROVIDER) {
        Ok(list) => list.split(',').any(|s| s.trim() == name),
        Err(_) => DEFAULT_BACKENDS.contains(&name),
    }
}

fn unselected(test: &str, name: &str) -> Option<Box<dyn Backend>> {
    println!("SKIP {test} on {name}: not selected by {CONTRACT_PROVIDER}");
    None
}

/// The directory provider on a fresh temporary directory per test.
pub struct Dir {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

pub fn dir(test: &str) -> Option<Box<dyn Backend>> {
    if !selected("dir") {
        return unselected(test, "dir");
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("volumes");
    Some(Box::new(Dir { _tmp: tmp, root }))
}

impl Backend for Dir {
    fn name(&self) -> &'static str {
        "dir"
    }
    fn kind(&self) -> &'static str {
        volmgr::provider::dir::KIND
    }
    fn config(&self) -> ProviderConfig {
        ProviderConfig::from([(
            volmgr::provider::dir::CONFIG_ROOT.to_owned(),
            self.root.to_string_lossy().into_owned(),
        )])
    }
    fn factory(&self) -> ProviderFactory {
        Arc::new(|config: &ProviderConfig, owner: &AgentId| {
            Ok(Arc::new(DirProvider::for_owner(config, owner)?) as Arc<dyn Provider>)
        })
    }
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::new(DirProvider::from_config(&self.config()).expect("provider builds"))
    }
    fn plant_foreign(&self, name: &str) {
        // A directory without an ownership marker where a data volume of
        // that name would live.
        let path = self.root.join("data").join(name);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("theirs"), b"not yours").unwrap();
    }
    fn foreign_present(&self, name: &str) -> bool {
        std::fs::read(self.root.join("data").join(name).join("theirs"))
            .is_ok_and(|b| b == b"not yours")
    }
    fn restart_host(&mut self) {
        // Plain directories: nothing to unmount; the reopen is the test.
    }
    fn snapshots_refuse_writes(&self) -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() != 0 }
    }
}

/// btrfs on a fresh loop-mounted file system per test.
pub struct Btrfs {
    pub fs: BtrfsFs,
    pub root: PathBuf,
}

impl Btrfs {
    pub fn new(fs: BtrfsFs) -> Btrfs {
        let root = fs.path().join("volumes");
        Btrfs { fs, root }
    }
}

pub fn btrfs(test: &str) -> Option<Box<dyn Backend>> {
    if !selected("btrfs") {
        return unselected(test, "btrfs");
    }
    let fs = BtrfsFs::for_test(test, 512)?;
    Some(Box::new(Btrfs::new(fs)))
}

impl Backend for Btrfs {
    fn name(&self) -> &'static str {
        "btrfs"
    }
    fn kind(&self) -> &'static str {
        volmgr::provider::btrfs::KIND
    }
    fn config(&self) -> ProviderConfig {
        ProviderConfig::from([(
            volmgr::provider::btrfs::CONFIG_ROOT.to_owned(),
            self.root.to_string_lossy().into_owned(),
        )])
    }
    fn factory(&self) -> ProviderFactory {
        BtrfsProvider::factory()
    }
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::new(BtrfsProvider::from_config(&self.config()).expect("provider builds"))
    }
    fn plant_foreign(&self, name: &str) {
        // The most tempting kind of foreign item: an untagged subvolume right
        // where a data volume of that name would live.
        let _ = std::fs::create_dir_all(self.root.join("data"));
        let path = self.root.join("data").join(name);
        let out = Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::write(path.join("theirs"), b"not yours").unwrap();
    }
    fn foreign_present(&self, name: &str) -> bool {
        std::fs::read(self.root.join("data").join(name).join("theirs"))
            .is_ok_and(|b| b == b"not yours")
    }
    fn restart_host(&mut self) {
        self.fs.remount();
    }
}

/// ZFS: selected only explicitly (`VOLMGR_CONTRACT_PROVIDER=zfs`): a fresh
/// pool per test on a sparse file vdev under `/tmp`, created by the provider
/// itself (`pool_vdev`); `restart_host` exports the pool and leaves the
/// re-import to the provider when the manager reopens (the "re-import an
/// existing vdev file" path).
pub fn zfs(test: &str) -> Option<Box<dyn Backend>> {
    if !selected("zfs") {
        return unselected(test, "zfs");
    }
    let pool = super::ZfsPool::for_test(test, 512)?;
    Some(Box::new(pool))
}

impl Backend for super::ZfsPool {
    fn name(&self) -> &'static str {
        "zfs"
    }
    fn kind(&self) -> &'static str {
        volmgr::provider::zfs::KIND
    }
    fn config(&self) -> ProviderConfig {
        self.provider_config()
    }
    fn factory(&self) -> ProviderFactory {
        volmgr::provider::zfs::ZfsProvider::factory()
    }
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::new(
            volmgr::provider::zfs::ZfsProvider::from_config(&self.config())
                .expect("provider builds"),
        )
    }
    fn plant_foreign(&self, name: &str) {
        // An untagged dataset right where a data volume of that name would live.
        let mnt = self.workdir.join("foreign").join(name);
        let ds = format!("{}/data/{name}", self.dataset());
        let out = Command::new("zfs")
            .arg("create")
            .arg("-o")
            .arg(format!("mountpoint={}", mnt.display()))
            .arg(&ds)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::write(mnt.join("theirs"), b"not yours").unwrap();
    }
    fn foreign_present(&self, name: &str) -> bool {
        std::fs::read(self.workdir.join("foreign").join(name).join("theirs"))
            .is_ok_and(|b| b == b"not yours")
    }
    fn restart_host(&mut self) {
        self.export();
    }
}
