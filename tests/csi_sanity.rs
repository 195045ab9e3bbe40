//! Conformance: the Kubernetes CSI sanity suite (kubernetes-csi/csi-test
//! v5.4.0, `csi-sanity`) against `volmgr serve --csi-endpoint` on the dir
//! provider, on btrfs (a loop-mounted file system) and on ZFS (in the QEMU
//! guest). Each test prints csi-sanity's summary (`Ran N of M Specs ...`,
//! `N Passed | 0 Failed ...`) and fails unless every spec passed.
//!
//! The suite binary comes from `CSI_SANITY` (a path), else the cache of
//! `../shared/tools/csi-sanity.sh build`. Missing binary, root (bind mounts)
//! or provider: SKIP, or a failure under `VOLMGR_REQUIRE_CSI_SANITY=1`,
//! `VOLMGR_REQUIRE_ROOT=1`, `VOLMGR_REQUIRE_BTRFS=1`, `VOLMGR_REQUIRE_ZFS=1`.
//! In the ZFS guest (`ZFSVM_IN_VM=1`) only the ZFS case runs; on a host the
//! ZFS case runs only under `VOLMGR_REQUIRE_ZFS=1`.

mod common;
mod csi_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BtrfsFs, REQUIRE_ZFS, ZfsPool, skip_or_fail};
use csi_support::{CsiAgent, is_root};

const REQUIRE_CSI_SANITY: &str = "VOLMGR_REQUIRE_CSI_SANITY";
const REQUIRE_ROOT: &str = "VOLMGR_REQUIRE_ROOT";
const DEFAULT_BINARY: &str = "/var/cache/volmgr-csi-sanity/csi-sanity-v5.4.0";

fn in_guest() -> bool {
    std::env::var("ZFSVM_IN_VM").is_ok_and(|v| v == "1")
}

fn sanity_binary(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("CSI_SANITY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(
        test,
        "csi-sanity",
        &format!(
            "{} is missing (run ../shared/tools/csi-sanity.sh build, or set CSI_SANITY)",
            path.display()
        ),
        REQUIRE_CSI_SANITY,
    );
    None
}

fn root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip_or_fail(test, "root", "bind mounts need root", REQUIRE_ROOT);
    false
}

/// Runs csi-sanity against an agent started with `extra` serve flags;
/// returns the summary lines.
fn run_sanity(test: &str, binary: &Path, work: &Path, extra: &[String]) -> String {
    let state = work.join("state");
    let socket = work.join("csi.sock");
    let mut agent = CsiAgent::start(&state, &socket, extra);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(agent.ready());
    let out = Command::new(binary)
        .arg(format!("-csi.endpoint=unix://{}", socket.display()))
        .arg(format!("-csi.mountdir={}", work.join("mnt").display()))
        .arg(format!(
            "-csi.stagingdir={}",
            work.join("staging").display()
        ))
        .arg(format!("-csi.testvolumesize={}", 1u64 << 30))
        .arg("-ginkgo.timeout=30m")
        .arg("-ginkgo.no-color")
        .output()
        .expect("run csi-sanity");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("Ran ") || l.contains(" Passed | "))
        .collect();
    let summary = summary.join(" ");
    // Straight to the process's stdout, past the test harness's capture, so
    // CI's log shows the suite's summary line.
    let _ = writeln!(std::io::stdout().lock(), "csi-sanity {test}: {summary}");
    let stopped = agent.stop();
    if !out.status.success() || !summary.contains(" 0 Failed") {
        panic!(
            "csi-sanity failed ({}):\n{stdout}\n{}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            agent.log_text()
        );
    }
    assert_eq!(stopped, Some(0), "agent exit; log:\n{}", agent.log_text());
    summary
}

#[test]
fn csi_sanity_passes_on_the_dir_provider() {
    let test = "csi_sanity_passes_on_the_dir_provider";
    if in_guest() {
        println!("SKIP {test}: the guest runs the ZFS case");
        return;
    }
    let Some(binary) = sanity_binary(test) else {
        return;
    };
    if !root(test) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    run_sanity(test, &binary, work.path(), &[]);
}

#[test]
fn csi_sanity_passes_on_btrfs() {
    let test = "csi_sanity_passes_on_btrfs";
    if in_guest() {
        println!("SKIP {test}: the guest runs the ZFS case");
        return;
    }
    let Some(binary) = sanity_binary(test) else {
        return;
    };
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let root = fs.path().join("volumes");
    run_sanity(
        test,
        &binary,
        work.path(),
        &[
            "--provider-kind".into(),
            "btrfs".into(),
            "--provider-config".into(),
            format!("root={}", root.display()),
        ],
    );
}

#[test]
fn csi_sanity_passes_on_zfs() {
    let test = "csi_sanity_passes_on_zfs";
    if !in_guest() && std::env::var(REQUIRE_ZFS).map_or(true, |v| v != "1") {
        println!("SKIP {test}: ZFS runs in the guest (scripts/zfs-test)");
        return;
    }
    let Some(binary) = sanity_binary(test) else {
        return;
    };
    let Some(pool) = ZfsPool::for_test(test, 512) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut extra = vec!["--provider-kind".to_owned(), "zfs".to_owned()];
    for (k, v) in pool.provider_config() {
        extra.push("--provider-config".into());
        extra.push(format!("{k}={v}"));
    }
    run_sanity(test, &binary, work.path(), &extra);
}
