//! A real block device that can start failing writes, for the tests that
//! put volmgr's files on one (`tests/dir_device_errors.rs`: a provider's
//! root; `tests/journal_device_errors.rs`: the manager's journal;
//! `tests/btrfs_device_errors.rs`: a btrfs provider's file system). A
//! [`Device`] is an ext4 (or a btrfs: [`Device::btrfs`]) on a
//! device-mapper device over a loop device over a sparse image;
//! [`Device::fail_writes`] switches its table to `dm-flakey`
//! with `error_writes` (every write fails with `EIO`, reads work),
//! [`Device::fail_writes_to`] only a range of it (an ext4's journal log:
//! [`Device::ext4_journal_log`]), and [`Device::restore`] back to `linear`. Every mount, device-mapper device
//! and loop device is undone by the guard's drop. The file system is made
//! without lazy initialisation, so no background writer of ext4's own
//! (`ext4lazyinit`) meets the failure at a moment the test did not choose.
//! Needs root, device-mapper with dm-flakey, `dmsetup`, `losetup` and
//! `mkfs.ext4` (`dumpe2fs` and `debugfs` for [`Device::ext4_journal_log`], `mkfs.btrfs` and the btrfs module for a btrfs) (the QEMU guest of `scripts/zfs-test`); without them
//! [`Device::new`] prints a SKIP line and returns `None`, or panics under
//! `VOLMGR_REQUIRE_DM=1`. Also the helpers that fill a volume durably and
//! read it back. Included with `mod device_support;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use volmgr::model::OpId;
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{
    Created, Durability, Found, PartialReceive, Provider, ProviderConfig, ProviderError,
    ProviderFactory, SendOptions, SendStats, VolumeRef, VolumeSpec,
};

/// Set to `1` (as `scripts/zfs-test` does), a missing facility fails the test.
pub const REQUIRE: &str = "VOLMGR_REQUIRE_DM";
/// Size of the sparse image under an ext4.
pub const IMAGE_BYTES: u64 = 64 << 20;
/// Size of the sparse image under a btrfs (`mkfs.btrfs` refuses much less
/// with its default profiles).
pub const BTRFS_IMAGE_BYTES: u64 = 256 << 20;

/// The file system made on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    /// Mounted `nosuid,nodev` (the btrfs provider's receives need them).
    Btrfs,
}

/// Runs `cmd`; its stdout, or an error naming the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        ))
    }
}

pub fn dmsetup(args: &[&str]) -> Result<String, String> {
    run(Command::new("dmsetup").args(args))
}

/// Prints the SKIP line (or panics under `VOLMGR_REQUIRE_DM=1`).
pub fn skip_or_fail(test: &str, why: &str) -> Option<Device> {
    if std::env::var(REQUIRE).as_deref() == Ok("1") {
        panic!("{REQUIRE}=1 but {test} cannot run: {why}");
    }
    println!(
        "SKIP {test}: {why} (needs root and device-mapper with dm-flakey; {REQUIRE}=1 makes this a failure)"
    );
    None
}

/// An ext4 on a device-mapper device over a loop device over a sparse
/// image; torn down on drop (unmount, remove the dm device, detach the
/// loop device), whatever happened.
pub struct Device {
    tmp: tempfile::TempDir,
    loop_dev: Option<String>,
    /// The dm device's name, once created.
    name: Option<String>,
    fs: Fs,
    /// `mount -o` options.
    options: String,
    mounted: bool,
}

impl Device {
    /// Sets everything up, or explains why it cannot (a SKIP, or a failure
    /// under `VOLMGR_REQUIRE_DM=1`).
    pub fn new(test: &str) -> Option<Device> {
        Device::with_options(test, "defaults")
    }

    /// Like [`Device::new`], mounted with `options`.
    pub fn with_options(test: &str, options: &str) -> Option<Device> {
        Device::make(test, Fs::Ext4, options)
    }

    /// A btrfs instead of an ext4, mounted `nosuid,nodev`.
    pub fn btrfs(test: &str) -> Option<Device> {
        Device::make(test, Fs::Btrfs, "nosuid,nodev")
    }

    fn make(test: &str, fs: Fs, options: &str) -> Option<Device> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip_or_fail(test, "not root");
        }
        // Loaded on demand; already there (or impossible) elsewhere.
        for module in ["dm-flakey", "loop", "btrfs"] {
            let _ = Command::new("modprobe").arg(module).output();
        }
        match dmsetup(&["targets"]) {
            Ok(t) if t.lines().any(|l| l.starts_with("flakey")) => {}
            Ok(t) => {
                return skip_or_fail(
                    test,
                    &format!("device-mapper has no flakey target ({})", t.trim()),
                );
            }
            Err(e) => return skip_or_fail(test, &format!("no device-mapper: {e}")),
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut device = Device {
            tmp,
            loop_dev: None,
            name: None,
            fs,
            options: options.to_owned(),
            mounted: false,
        };
        if let Err(e) = device.set_up() {
            return skip_or_fail(test, &format!("setting up the device failed: {e}"));
        }
        Some(device)
    }

    fn set_up(&mut self) -> Result<(), String> {
        let image = self.tmp.path().join("fs.img");
        File::create(&image)
            .and_then(|f| f.set_len(self.image_bytes()))
            .map_err(|e| format!("sparse image: {e}"))?;
        let loop_dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
        self.loop_dev = Some(loop_dev.trim().to_owned());
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "volmgr-deverr-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        dmsetup(&[
            "create",
            "--noudevsync",
            &name,
            "--table",
            &self.table(false),
        ])?;
        self.name = Some(name);
        // The node, whether or not udev made it.
        dmsetup(&["mknodes", self.name()])?;
        match self.fs {
            // No lazy initialisation: `ext4lazyinit` would zero the inode
            // tables in the background after the mount, and its write
            // failing on the failed device aborts ext4's journal at a moment
            // no test chose (seen in the guest's kernel log after a failed
            // write).
            Fs::Ext4 => run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(self.dev_path()))?,
            Fs::Btrfs => run(Command::new("mkfs.btrfs")
                .args(["-q", "-f"])
                .arg(self.dev_path()))?,
        };
        fs::create_dir(self.mount_point()).map_err(|e| format!("mount point: {e}"))?;
        self.mount()
    }

    fn name(&self) -> &str {
        self.name.as_deref().expect("the dm device exists")
    }

    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(self.name())
    }

    pub fn mount_point(&self) -> PathBuf {
        self.tmp.path().join("mnt")
    }

    fn image_bytes(&self) -> u64 {
        match self.fs {
            Fs::Ext4 => IMAGE_BYTES,
            Fs::Btrfs => BTRFS_IMAGE_BYTES,
        }
    }

    /// The dm table: the whole loop device, linear, or failing every write.
    fn table(&self, failing: bool) -> String {
        let sectors = self.image_bytes() / 512;
        let dev = self.loop_dev.as_deref().expect("the loop device exists");
        if failing {
            // up 0 s, down 1 s: always down; reads pass, writes fail (EIO).
            format!("0 {sectors} flakey {dev} 0 0 1 1 error_writes")
        } else {
            format!("0 {sectors} linear {dev} 0")
        }
    }

    /// Replaces the live table: without freezing the file system first
    /// (`--nolockfs`: whatever is dirty stays dirty, to fail later), and
    /// without waiting for udev (the guest's udev handles no dm rules).
    fn switch(&self, failing: bool) -> Result<(), String> {
        self.load(&self.table(failing))
    }

    fn load(&self, table: &str) -> Result<(), String> {
        dmsetup(&["suspend", "--nolockfs", "--noudevsync", self.name()])?;
        let loaded = dmsetup(&["load", self.name(), "--table", table]);
        let resumed = dmsetup(&["resume", "--noudevsync", self.name()]);
        loaded.and(resumed).map(drop)
    }

    pub fn fail_writes(&self) {
        self.switch(true)
            .expect("switch the device to failing writes");
        let live = dmsetup(&["table", self.name()]).expect("dmsetup table");
        assert!(live.contains("error_writes"), "live table: {live}");
    }

    /// Fails every write to the `sectors` sectors from `first` (reads
    /// work); the rest of the device works: a disk with a few bad sectors.
    pub fn fail_writes_to(&self, first: u64, sectors: u64) {
        let total = self.image_bytes() / 512;
        let dev = self.loop_dev.as_deref().expect("the loop device exists");
        let end = first + sectors;
        assert!(
            first > 0 && end < total,
            "{first}+{sectors} inside 0..{total}"
        );
        let table = format!(
            "0 {first} linear {dev} 0\n{first} {sectors} flakey {dev} {first} 0 1 1 error_writes\n\
             {end} {} linear {dev} {end}",
            total - end
        );
        self.load(&table)
            .expect("switch part of the device to failing writes");
    }

    /// The sectors of an ext4's journal log: the blocks of its journal
    /// (inode 8, one extent on a new file system) after the first, which
    /// holds the journal's own superblock. `(first sector, sectors)`.
    pub fn ext4_journal_log(&self) -> (u64, u64) {
        let dev = self.dev_path();
        let head = run(Command::new("dumpe2fs").arg("-h").arg(&dev)).expect("dumpe2fs");
        let block: u64 = head
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no block size in {head}"));
        let stat =
            run(Command::new("debugfs").args(["-R", "stat <8>"]).arg(&dev)).expect("debugfs");
        // `(0-4095):16385-20480`
        let extents = stat
            .lines()
            .skip_while(|l| !l.starts_with("EXTENTS:"))
            .nth(1)
            .unwrap_or_else(|| panic!("no extents in {stat}"))
            .trim();
        let physical = extents
            .split_once("):")
            .map(|(_, p)| p)
            .filter(|p| !p.contains(','))
            .and_then(|p| p.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("the journal is not one extent: {extents}"));
        let per_block = block / 512;
        (
            (physical.0 + 1) * per_block,
            (physical.1 - physical.0) * per_block,
        )
    }

    pub fn restore(&self) {
        self.switch(false)
            .expect("switch the device back to linear");
    }

    pub fn mount(&mut self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-o", &self.options])
            .arg(self.dev_path())
            .arg(self.mount_point()))?;
        self.mounted = true;
        Ok(())
    }

    pub fn unmount(&mut self) -> Result<(), String> {
        run(Command::new("umount").arg(self.mount_point()))?;
        self.mounted = false;
        Ok(())
    }

    /// How the kernel mounts it now (`rw,...` or `ro,...`).
    pub fn mount_options(&self) -> String {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mp = self.mount_point();
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(&*mp.to_string_lossy()))
            .and_then(|l| l.split(' ').nth(3))
            .unwrap_or("not mounted")
            .to_owned()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.mounted {
            let mp = self.mount_point();
            if run(Command::new("umount").arg(&mp)).is_err() {
                let _ = run(Command::new("umount").arg("-l").arg(&mp));
            }
        }
        if let Some(name) = &self.name
            && dmsetup(&["remove", "--noudevsync", name]).is_err()
        {
            let _ = dmsetup(&["remove", "--noudevsync", "--force", name]);
        }
        if let Some(dev) = &self.loop_dev {
            let _ = run(Command::new("losetup").arg("-d").arg(dev));
        }
    }
}

/// A tree's files: relative path to content.
pub type Tree = BTreeMap<PathBuf, Vec<u8>>;

/// Writes a file and a file in a subdirectory into the data volume at
/// `location`, durably (files and directories fsynced), as its user would.
pub fn fill(location: &Path, id: &str) -> Tree {
    let tree = Tree::from([
        (
            PathBuf::from("f"),
            format!("the content of {id}\n").into_bytes(),
        ),
        (
            PathBuf::from("d/g"),
            format!("{id}: a file in a directory\n")
                .repeat(100)
                .into_bytes(),
        ),
    ]);
    fs::create_dir(location.join("d")).expect("mkdir in the volume");
    for (rel, bytes) in &tree {
        let mut f = File::create(location.join(rel)).expect("create in the volume");
        f.write_all(bytes).expect("write");
        f.sync_all().expect("fsync");
    }
    for dir in [location.join("d"), location.to_owned()] {
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .expect("fsync dir");
    }
    tree
}

/// The regular files under `root`, with their content.
pub fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_owned();
                out.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// A reopened manager after the device was restored: the provider serves
/// again and nothing is left to decide (nothing unavailable, foreign,
/// pending or orphaned), and every volume of `content` but `gone` is live
/// with its content.
pub fn reconciled_whole(
    m: &volmgr::manager::Manager,
    content: &BTreeMap<String, Tree>,
    gone: Option<&str>,
) {
    let report = m.reconcile_report();
    assert!(
        report.unavailable.is_empty(),
        "the provider serves again: {:?}",
        report.unavailable
    );
    assert!(report.foreign.is_empty(), "foreign: {:?}", report.foreign);
    let pending = m.state().pending.clone();
    assert!(pending.is_empty(), "nothing pending: {pending:?}");
    assert!(m.orphans().is_empty(), "orphans: {:?}", m.orphans());
    for (id, tree) in content {
        if Some(id.as_str()) == gone {
            continue;
        }
        let v = m
            .volume(id)
            .unwrap_or_else(|e| panic!("acknowledged {id} is present: {e}"));
        assert_eq!(v.status, volmgr::state::VolumeStatus::Live, "{id} is live");
        assert_eq!(
            &read_tree(Path::new(&v.location)),
            tree,
            "{id} holds its content"
        );
    }
}

/// A provider's inventory as volume id to kind; panics on a half-made or
/// foreign item.
pub fn whole_inventory(
    found: &[volmgr::provider::Found],
) -> BTreeMap<String, volmgr::state::VolumeKind> {
    let half_made: Vec<_> = found
        .iter()
        .filter(|f| f.presence != volmgr::provider::Presence::Complete || f.tag.is_none())
        .collect();
    assert!(
        half_made.is_empty(),
        "no half-made or foreign item: {half_made:?}"
    );
    found
        .iter()
        .filter_map(|f| f.tag.as_ref().map(|t| (t.volume.clone(), t.kind)))
        .collect()
}

/// The state's volumes as volume id to kind.
pub fn state_kinds(state: &volmgr::state::State) -> BTreeMap<String, volmgr::state::VolumeKind> {
    state
        .volumes
        .values()
        .map(|v| (v.id.clone(), v.kind))
        .collect()
}

/// What a [`HookedDir`] runs before it forwards a call to the dir provider
/// (nothing, unless implemented): how a test stops an operation at a moment
/// it chooses.
pub trait DirHooks: std::fmt::Debug + Send + Sync + 'static {
    /// Before `sync` (a batched round).
    fn before_sync(&self) {}
    /// Before `create_volume` of volume `id`.
    fn before_create(&self, _id: &str) {}
    /// Before `destroy` of volume `id`.
    fn before_destroy(&self, _id: &str) {}
}

/// The dir provider under provider kind `kind`, forwarding every call,
/// after its [`DirHooks`].
#[derive(Debug)]
pub struct HookedDir<H> {
    kind: &'static str,
    dir: DirProvider,
    hooks: Arc<H>,
}

impl<H: DirHooks> HookedDir<H> {
    /// The factory a manager registers for `kind`: a dir provider built from
    /// its configuration, with `hooks`.
    pub fn factory(kind: &'static str, hooks: &Arc<H>) -> ProviderFactory {
        let hooks = hooks.clone();
        Arc::new(
            move |c: &ProviderConfig, owner: &volmgr::provider::AgentId| {
                Ok(Arc::new(HookedDir {
                    kind,
                    dir: DirProvider::for_owner(c, owner)?,
                    hooks: hooks.clone(),
                }) as Arc<dyn Provider>)
            },
        )
    }
}

impl<H: DirHooks> Provider for HookedDir<H> {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn durability(&self) -> Durability {
        self.dir.durability()
    }
    fn sync(&self) -> Result<(), ProviderError> {
        self.hooks.before_sync();
        self.dir.sync()
    }
    fn sync_at_open(&self) -> Result<(), ProviderError> {
        self.dir.sync_at_open()
    }
    fn config(&self) -> ProviderConfig {
        self.dir.config()
    }
    fn create_volume(&self, spec: &VolumeSpec<'_>) -> Result<Created, ProviderError> {
        self.hooks.before_create(spec.id.as_str());
        self.dir.create_volume(spec)
    }
    fn create_snapshot(
        &self,
        source: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.dir.create_snapshot(source, spec)
    }
    fn fork_volume(
        &self,
        snapshot: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
    ) -> Result<Created, ProviderError> {
        self.dir.fork_volume(snapshot, spec)
    }
    fn destroy(&self, volume: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.hooks.before_destroy(volume.id.as_str());
        self.dir.destroy(volume)
    }
    fn send_snapshot(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
        out: &mut dyn Write,
    ) -> Result<SendStats, ProviderError> {
        self.dir.send_snapshot(snapshot, base, options, out)
    }
    fn send_size(
        &self,
        snapshot: &VolumeRef<'_>,
        base: Option<&VolumeRef<'_>>,
        options: &SendOptions,
    ) -> Result<Option<u64>, ProviderError> {
        self.dir.send_size(snapshot, base, options)
    }
    fn receive_snapshot(
        &self,
        target: &VolumeRef<'_>,
        spec: &VolumeSpec<'_>,
        input: &mut dyn Read,
    ) -> Result<Created, ProviderError> {
        self.dir.receive_snapshot(target, spec, input)
    }
    fn inventory(&self) -> Result<Vec<Found>, ProviderError> {
        self.dir.inventory()
    }
    fn finish(&self, found: &Found) -> Result<Created, ProviderError> {
        self.dir.finish(found)
    }
    fn abort_partial(&self, op: OpId) -> Result<(), ProviderError> {
        self.dir.abort_partial(op)
    }
    fn clear_interrupted_create(&self, spec: &VolumeSpec<'_>) -> Result<(), ProviderError> {
        self.dir.clear_interrupted_create(spec)
    }
    fn partial_receive(
        &self,
        target: &VolumeRef<'_>,
    ) -> Result<Option<PartialReceive>, ProviderError> {
        self.dir.partial_receive(target)
    }
    fn abort_receive(&self, target: &VolumeRef<'_>) -> Result<(), ProviderError> {
        self.dir.abort_receive(target)
    }
    fn resume_fits(&self, snapshot: &VolumeRef<'_>, token: &str) -> Result<bool, ProviderError> {
        self.dir.resume_fits(snapshot, token)
    }
    fn enforces_capacity(&self) -> bool {
        self.dir.enforces_capacity()
    }
    fn set_capacity(&self, volume: &VolumeRef<'_>, bytes: u64) -> Result<(), ProviderError> {
        self.dir.set_capacity(volume, bytes)
    }
    fn free_bytes(&self) -> Result<Option<u64>, ProviderError> {
        self.dir.free_bytes()
    }
    fn check_volume_options(&self, options: &ProviderConfig) -> Result<(), ProviderError> {
        self.dir.check_volume_options(options)
    }
    fn set_volume_options(
        &self,
        volume: &VolumeRef<'_>,
        options: &ProviderConfig,
    ) -> Result<(), ProviderError> {
        self.dir.set_volume_options(volume, options)
    }
    fn send_resumed(
        &self,
        snapshot: &VolumeRef<'_>,
        token: &str,
        out: &mut dyn Write,
    ) -> Result<Option<SendStats>, ProviderError> {
        self.dir.send_resumed(snapshot, token, out)
    }
}
