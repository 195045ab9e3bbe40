//! Helpers shared by the real-provider tests (and `benches/providers.rs`):
//! a loop-mounted btrfs file system (`nosuid,nodev`, as the btrfs provider
//! requires for receives) with a drop guard, skip-or-fail rules,
//! the per-provider backends of the contract suite, the SIGKILL crash test
//! of every provider (`crash`), and file-tree helpers.
#![allow(dead_code)]

pub mod backends;
pub mod config;
pub mod crash;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `VOLMGR_REQUIRE_BTRFS=1`: "no btrfs here" is a failure, not a skip.
pub const REQUIRE_BTRFS: &str = "VOLMGR_REQUIRE_BTRFS";

/// Reports a missing facility: a SKIP line, or a panic when `require_var=1`.
pub fn skip_or_fail(test: &str, what: &str, reason: &str, require_var: &str) {
    if std::env::var(require_var).is_ok_and(|v| v == "1") {
        panic!("{test}: {what} is required ({require_var}=1) but unavailable: {reason}");
    }
    println!(
        "SKIP {test}: {what} unavailable: {reason} (set {require_var}=1 to make this a failure)"
    );
}

/// Finds `program` on PATH, or in /usr/sbin and /sbin (where mkfs.btrfs and
/// losetup live, even when PATH lacks them).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let exe = which(program).ok_or_else(|| format!("{program} not found"))?;
    let out = Command::new(exe)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A btrfs file system on a sparse image, attached to a loop device and
/// mounted on a temporary directory. Unmounted, detached and deleted on drop
/// (also when the test panics).
pub struct BtrfsFs {
    dir: tempfile::TempDir,
    dev: String,
    mnt: PathBuf,
    mounted: bool,
}

impl BtrfsFs {
    /// Makes one of `size_mb` MiB. Errors say why btrfs is unavailable.
    pub fn create(size_mb: u64) -> Result<BtrfsFs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root (mount and losetup need it)".into());
        }
        for program in ["mkfs.btrfs", "btrfs", "losetup", "mount", "umount"] {
            if which(program).is_none() {
                return Err(format!(
                    "{program} not found (install btrfs-progs / util-linux)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("volmgr-btrfs-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let image = dir.path().join("fs.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(size_mb << 20))
            .map_err(|e| format!("sparse image: {e}"))?;
        let image_s = image.to_str().ok_or("temp path is not UTF-8")?;
        run("mkfs.btrfs", &["-q", "-f", image_s])?;
        let dev = run("losetup", &["-f", "--show", image_s])?;
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        if let Err(e) = run(
            "mount",
            &[
                "-t",
                "btrfs",
                "-o",
                "nosuid,nodev",
                &dev,
                mnt.to_str().unwrap(),
            ],
        ) {
            let _ = run("losetup", &["-d", &dev]);
            return Err(e);
        }
        Ok(BtrfsFs {
            dir,
            dev,
            mnt,
            mounted: true,
        })
    }

    /// Like [`BtrfsFs::create`], but prints SKIP (or fails under
    /// `VOLMGR_REQUIRE_BTRFS=1`) and returns `None` when btrfs is unavailable.
    pub fn for_test(test: &str, size_mb: u64) -> Option<BtrfsFs> {
        match BtrfsFs::create(size_mb) {
            Ok(fs) => Some(fs),
            Err(reason) => {
                skip_or_fail(test, "btrfs", &reason, REQUIRE_BTRFS);
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn device(&self) -> &str {
        &self.dev
    }

    /// How many subvolumes the file system holds (`btrfs subvolume list`).
    pub fn subvolume_count(&self) -> usize {
        let mnt = self.mnt.to_str().unwrap();
        run("btrfs", &["subvolume", "list", mnt])
            .expect("btrfs subvolume list")
            .lines()
            .count()
    }

    /// A host shutdown and boot, as far as the file system sees it: unmount,
    /// then mount the same device again.
    pub fn remount(&mut self) {
        run("umount", &[self.mnt.to_str().unwrap()]).expect("unmount");
        self.mounted = false;
        run(
            "mount",
            &[
                "-t",
                "btrfs",
                "-o",
                "nosuid,nodev",
                &self.dev,
                self.mnt.to_str().unwrap(),
            ],
        )
        .expect("mount");
        self.mounted = true;
    }
}

impl BtrfsFs {
    /// Remounts with extra `options` (say `commit=600`, so no periodic
    /// transaction commit happens during a test).
    pub fn remount_with(&self, options: &str) {
        run(
            "mount",
            &[
                "-o",
                &format!("remount,{options}"),
                self.mnt.to_str().unwrap(),
            ],
        )
        .expect("remount");
    }

    /// What a power cut at this instant leaves: a copy of the image holding
    /// what btrfs has written to the device so far (its committed
    /// transactions and log tree; nothing of the page cache), mounted
    /// read-only elsewhere. Take it while nothing runs on the file system.
    /// The kernel mounts such a clone of a mounted single-device btrfs under
    /// a temporary fsid (Linux 6.7 and later).
    pub fn power_cut_image(&self) -> PowerCutImage {
        let n = self.dir.path().read_dir().unwrap().count();
        let image = self.dir.path().join(format!("cut-{n}.img"));
        let (from, to) = (self.dir.path().join("fs.img"), image.clone());
        run(
            "cp",
            &[
                "--sparse=always",
                from.to_str().unwrap(),
                to.to_str().unwrap(),
            ],
        )
        .expect("copy the image");
        let dev =
            run("losetup", &["-f", "--show", image.to_str().unwrap()]).expect("attach the copy");
        let mnt = self.dir.path().join(format!("cut-{n}"));
        fs::create_dir(&mnt).unwrap();
        let mounted = run(
            "mount",
            &[
                "-t",
                "btrfs",
                "-o",
                "ro,nosuid,nodev",
                &dev,
                mnt.to_str().unwrap(),
            ],
        );
        let cut = PowerCutImage { dev, mnt, image };
        if let Err(e) = mounted {
            drop(cut);
            panic!(
                "mounting the power-cut image (needs Linux 6.7+ for a clone's temporary fsid): {e}"
            );
        }
        cut
    }
}

/// A power-cut image of a [`BtrfsFs`], mounted read-only; unmounted,
/// detached and deleted on drop.
pub struct PowerCutImage {
    dev: String,
    mnt: PathBuf,
    image: PathBuf,
}

impl PowerCutImage {
    /// The mount point: the file system as the next boot would find it.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for PowerCutImage {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap_or_default();
        if run("umount", &[mnt]).is_err() {
            // Still held (a panicking test's open file): detach lazily, as
            // `BtrfsFs` does, rather than leave the mount behind.
            let _ = run("umount", &["-l", mnt]);
        }
        let _ = run("losetup", &["-d", &self.dev]);
        let _ = fs::remove_file(&self.image);
    }
}

impl Drop for BtrfsFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap_or_default().to_owned();
        if self.mounted && run("umount", &[&mnt]).is_err() {
            // Something still holds it (a panicking test): detach lazily.
            let _ = run("umount", &["-l", &mnt]);
        }
        if let Err(e) = run("losetup", &["-d", &self.dev]) {
            eprintln!("warning: could not detach {}: {e}", self.dev);
        }
        let _ = &self.dir;
    }
}

/// Every regular file under `root`, by relative path, with its content.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let entry = entry.unwrap();
            let t = entry.file_type().unwrap();
            if t.is_dir() {
                stack.push(entry.path());
            } else if t.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

/// Every entry under `root` (directories, files, symlinks, anything),
/// by relative path, as one line of what a change to it would alter: type,
/// mode, owner, inode, size, modification and change times (ns), and a
/// regular file's content. Two equal images mean nothing under `root` was
/// created, removed, renamed, written or chmod-ed in between (reads and
/// access times aside). Symlinks are not followed.
pub fn entry_image(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let md = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("examine {}: {e}", path.display()));
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let content = if md.is_file() {
            format!("{:?}", fs::read(&path).unwrap())
        } else {
            String::new()
        };
        out.insert(
            rel,
            format!(
                "type={:?} mode={:o} uid={} gid={} ino={} size={} mtime={}.{} ctime={}.{} {content}",
                md.file_type(),
                md.mode(),
                md.uid(),
                md.gid(),
                md.ino(),
                md.size(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec()
            ),
        );
        if md.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out
}

/// Deterministic incompressible bytes (splitmix64).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `VOLMGR_REQUIRE_ZFS=1`: "no ZFS here" is a failure, not a skip.
pub const REQUIRE_ZFS: &str = "VOLMGR_REQUIRE_ZFS";

/// Why ZFS is unusable here, or `None` if `zfs`/`zpool` work.
pub fn zfs_unusable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/zfs").exists() {
        return Some("/dev/zfs is missing (no zfs kernel module)".into());
    }
    for program in ["zfs", "zpool"] {
        if which(program).is_none() {
            return Some(format!("{program} not found (install zfsutils-linux)"));
        }
    }
    run("zpool", &["list", "-H"]).err()
}

/// A throw-away pool for one test. Either on a sparse file vdev under
/// `/tmp/volmgr-zfs` made by the provider itself (`pool_vdev`, re-imported
/// by the provider after [`ZfsPool::export`]), or on a whole disk.
/// Destroyed (and its file removed) on drop, also when the test panics.
pub struct ZfsPool {
    pub pool: String,
    pub vdev: PathBuf,
    pub workdir: PathBuf,
    pub size_mb: u64,
    on_disk: bool,
}

impl ZfsPool {
    /// A pool name from the test name: short, starts with a letter, unique per test.
    pub fn name_for(test: &str) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        test.hash(&mut h);
        format!("vt{:08x}", h.finish() & 0xffff_ffff)
    }

    /// Prints SKIP (or panics under `VOLMGR_REQUIRE_ZFS=1`) when ZFS is unusable.
    pub fn for_test(test: &str, size_mb: u64) -> Option<ZfsPool> {
        if let Some(why) = zfs_unusable() {
            skip_or_fail(test, "zfs", &why, REQUIRE_ZFS);
            return None;
        }
        let pool = Self::name_for(test);
        let base = PathBuf::from("/tmp/volmgr-zfs");
        let p = ZfsPool {
            vdev: base.join(format!("{pool}.img")),
            workdir: base.join(format!("{pool}-work")),
            pool,
            size_mb,
            on_disk: false,
        };
        p.cleanup();
        Some(p)
    }

    /// A pool created by the test on a whole disk (`/dev/vdX` in the guest).
    pub fn on_disk(test: &str, name: &str, disk: &str) -> Option<ZfsPool> {
        if let Some(why) = zfs_unusable() {
            skip_or_fail(test, "zfs", &why, REQUIRE_ZFS);
            return None;
        }
        let p = ZfsPool {
            pool: name.to_owned(),
            vdev: PathBuf::from(disk),
            workdir: PathBuf::from("/tmp/volmgr-zfs").join(format!("{name}-work")),
            size_mb: 0,
            on_disk: true,
        };
        p.cleanup();
        run("zpool", &["create", "-f", "-m", "none", name, disk]).expect("zpool create on disk");
        Some(p)
    }

    pub fn dataset(&self) -> String {
        format!("{}/volmgr", self.pool)
    }

    pub fn provider_config(&self) -> BTreeMap<String, String> {
        let mut c = BTreeMap::from([
            ("dataset".to_owned(), self.dataset()),
            (
                "workdir".to_owned(),
                self.workdir.to_string_lossy().into_owned(),
            ),
        ]);
        if !self.on_disk {
            c.insert(
                "pool_vdev".to_owned(),
                self.vdev.to_string_lossy().into_owned(),
            );
            c.insert("pool_size".to_owned(), format!("{}M", self.size_mb));
        }
        c
    }

    /// Simulated host shutdown: the pool goes away (its datasets unmount).
    pub fn export(&self) {
        run("zpool", &["export", &self.pool]).expect("zpool export");
    }

    /// Simulated boot for a pool the provider does not import itself.
    pub fn import(&self) {
        let dir = if self.on_disk {
            "/dev".to_owned()
        } else {
            self.vdev.to_string_lossy().into_owned()
        };
        run("zpool", &["import", "-d", &dir, &self.pool]).expect("zpool import");
    }

    pub fn imported(&self) -> bool {
        run("zpool", &["list", "-H", "-o", "name", &self.pool]).is_ok()
    }

    fn cleanup(&self) {
        let _ = run("zpool", &["destroy", "-f", &self.pool]);
        if !self.on_disk {
            let _ = fs::remove_file(&self.vdev);
        }
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        if !self.imported() && !self.on_disk && self.vdev.exists() {
            let _ = run(
                "zpool",
                &["import", "-d", &self.vdev.to_string_lossy(), &self.pool],
            );
        }
        self.cleanup();
    }
}

/// Runs `argv` as user and group nobody (65534), no supplementary groups:
/// a local user without the credential.
pub fn as_nobody(argv: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .output()
        .expect("setpriv runs (util-linux)")
}

/// Asserts that `argv`, run as nobody, is refused by a mode ("Permission
/// denied").
#[track_caller]
pub fn refused_to_nobody(argv: &[&str]) {
    let out = as_nobody(argv);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{argv:?} as nobody: {out:?}"
    );
}

/// Asserts that nobody can neither list any of `dirs` (a volume, a
/// snapshot) nor read the file `secret` in it through the host path.
#[track_caller]
pub fn content_hidden_from_nobody(dirs: &[&Path]) {
    for dir in dirs {
        let dir = dir.to_str().expect("a UTF-8 path");
        refused_to_nobody(&["ls", dir]);
        refused_to_nobody(&["cat", &format!("{dir}/secret")]);
    }
}
