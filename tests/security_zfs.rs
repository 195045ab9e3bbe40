//! Real-ZFS security properties (run in the QEMU guest by `scripts/zfs-test`;
//! SKIP on a host without ZFS, a failure under `VOLMGR_REQUIRE_ZFS=1`).
//!
//! Story: a peer sends a stream whose dataset holds a setuid-root copy of
//! `id` and a character device. ZFS streams carry modes and device nodes
//! faithfully, so the receiver must make them harmless: every dataset volmgr
//! creates or receives has `setuid=off` and `devices=off`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::ZfsPool;
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::provider::ProviderConfig;
use volmgr::provider::zfs::KIND;
use volmgr::state::Meta;

fn manager_config(provider: ProviderConfig) -> ManagerConfig {
    common::crash::manager_config(KIND, provider)
}

fn zfs_get(prop: &str, dataset: &str) -> String {
    let out = Command::new("zfs")
        .args(["get", "-H", "-o", "value", prop, dataset])
        .output()
        .unwrap();
    assert!(out.status.success(), "zfs get {prop} {dataset}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_and_created_datasets_run_no_setuid_binary_and_open_no_device() {
    let test = "received_and_created_datasets_run_no_setuid_binary_and_open_no_device";
    let Some(pa) = ZfsPool::for_test(&format!("{test}-a"), 256) else {
        return;
    };
    let Some(pb) = ZfsPool::for_test(&format!("{test}-b"), 256) else {
        return;
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Manager::open(sa.path(), manager_config(pa.provider_config()))
        .await
        .unwrap();
    let b = Manager::open(sb.path(), manager_config(pb.provider_config()))
        .await
        .unwrap();

    // The sender's volume: a setuid-root `id` and a device node, made by
    // root on the sending host (its own dataset has setuid=off too, which
    // hides nothing from the stream: modes and nodes travel as they are).
    let src = a.create_volume("default", None, Meta::new()).await.unwrap();
    let src_dir = Path::new(&src.location);
    std::fs::copy("/usr/bin/id", src_dir.join("id")).unwrap();
    std::fs::set_permissions(src_dir.join("id"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let status = Command::new("mknod")
        .arg(src_dir.join("mem"))
        .args(["c", "1", "1"])
        .status()
        .unwrap();
    assert!(status.success(), "mknod");
    let snap = a.create_snapshot(&src.id, Meta::new()).await.unwrap();

    let dst = b.create_volume("default", None, Meta::new()).await.unwrap();
    let mut stream = Vec::new();
    a.send_snapshot(&snap.id, &[], &mut stream).await.unwrap();
    b.receive_snapshot(&dst.id, stream.as_slice())
        .await
        .unwrap();

    let dst_dataset = format!("{}/data/{}", pb.dataset(), dst.id);
    for ds in [pb.dataset(), pa.dataset(), dst_dataset.clone()] {
        assert_eq!(zfs_get("setuid", &ds), "off", "{ds}");
        assert_eq!(zfs_get("devices", &ds), "off", "{ds}");
    }

    let dst_dir = Path::new(&dst.location);
    // Traversable by the unprivileged user.
    let mut p = dst_dir.to_path_buf();
    while p.pop() {
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        if p == Path::new("/") {
            break;
        }
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(dst_dir.join("id"))
        .arg("-u")
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "65534",
        "the received setuid binary ran with another euid"
    );
    let err = std::fs::File::open(dst_dir.join("mem")).expect_err("a device node opened");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");

    a.close().await;
    b.close().await;
}
