//! Shared knobs of the torture suites (`tests/torture_*.rs`).
//!
//! `VOLMGR_TORTURE_SCALE` (default 1) multiplies each suite's iteration
//! counts (seeds per crash point, failpoint triggers, kills) for long runs;
//! `VOLMGR_TORTURE_SEED` fixes the base seed (default: a constant for the
//! simulated suites, the clock for the kill -9 suite). Every suite prints the
//! seed it used, so any failure can be replayed.

#![allow(dead_code)]

/// The iteration multiplier from `VOLMGR_TORTURE_SCALE` (at least 1).
pub fn scale() -> u64 {
    match std::env::var("VOLMGR_TORTURE_SCALE") {
        Ok(v) => {
            let n: u64 = v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("VOLMGR_TORTURE_SCALE={v:?} is not a positive integer"));
            assert!(n >= 1, "VOLMGR_TORTURE_SCALE must be at least 1");
            n
        }
        Err(_) => 1,
    }
}

/// The base seed from `VOLMGR_TORTURE_SEED`, or `default`.
pub fn seed(default: u64) -> u64 {
    match std::env::var("VOLMGR_TORTURE_SEED") {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("VOLMGR_TORTURE_SEED={v:?} is not a u64"))
        }
        Err(_) => default,
    }
}

pub mod manager_workload;

use volmgr::storage::sim::CutPolicy;

/// The cut policies tried at each crash point, with their seeds: nothing
/// unsynced kept, everything kept, then `3 * scale` seeded random cuts of
/// each directory policy (forget all, keep a random prefix).
pub fn cut_policies(base_seed: u64, point: u64, scale: u64) -> Vec<(u64, CutPolicy)> {
    let mut out = vec![(0, CutPolicy::KEEP_NOTHING), (0, CutPolicy::KEEP_ALL)];
    for i in 0..3 * scale {
        let seed = base_seed ^ (point << 20) ^ (i << 8);
        out.push((seed, CutPolicy::RANDOM));
        out.push((seed ^ 1, CutPolicy::RANDOM_PREFIX));
    }
    out
}

/// A tmpfs mounted for a test (root only); unmounted on drop, whatever
/// happened. `None` when not root or the mount fails.
pub struct Tmpfs {
    pub dir: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let tmp = tempfile::tempdir().ok()?;
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir, _tmp: tmp })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}
