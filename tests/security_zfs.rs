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
    // Traversable by the unprivileged user: o+rx added, nothing taken (this
    // set every directory above 0755 before, and the guest's /tmp lost its
    // sticky bit for every test after this one).
    let tmp = mode(Path::new("/tmp"));
    open_to_others(dst_dir);
    assert_eq!(mode(Path::new("/tmp")), tmp | 0o005, "/tmp keeps its mode");
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

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Adds o+rx to every directory above `path` (its own mode kept, the
/// sticky bit of /tmp too), so the unprivileged user can reach it.
fn open_to_others(path: &Path) {
    for dir in path.ancestors().skip(1) {
        let m = mode(dir);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m | 0o005)).unwrap();
    }
}

/// Story: `zfs mount` made the mount points' parents under the provider's
/// workdir 0755 (`<workdir>/mnt/data/<id>`; by default under
/// `/var/lib/volmgr/zfs`), so any local user listed and read every data
/// volume, and every snapshot through its `.zfs/snapshot/<id>`, through
/// the host path; and the workdir's path was not checked at all (root
/// mounts volumes there). The dir and btrfs twins:
/// `security_state_dir`'s and `btrfs_provider`'s
/// `a_local_user_cannot_list_or_read_..._through_the_host_path`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_user_cannot_list_or_read_a_zfs_volume_or_snapshot_through_the_host_path() {
    let test = "a_local_user_cannot_list_or_read_a_zfs_volume_or_snapshot_through_the_host_path";
    let Some(pool) = ZfsPool::for_test(test, 256) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let m = Manager::open(state.path(), manager_config(pool.provider_config()))
        .await
        .unwrap();
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    let v_dir = Path::new(&v.location).to_owned();
    std::fs::write(v_dir.join("secret"), b"tenant data").unwrap();
    std::fs::set_permissions(v_dir.join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
    let s_dir = Path::new(&s.location).to_owned();
    assert_eq!(std::fs::read(s_dir.join("secret")).unwrap(), b"tenant data");
    // Every directory from the workdir up traversable by others (o+rx
    // added, nothing taken: /tmp stays 1777): only the mounts directory's
    // own mode keeps them out.
    let mounts = pool.workdir.join("mnt");
    open_to_others(&mounts);
    let hidden = || {
        common::content_hidden_from_nobody(&[&v_dir, &s_dir]);
        let out = common::as_nobody(&["ls", mounts.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "ls {} as nobody: {out:?}",
            mounts.display()
        );
    };
    hidden();
    assert_eq!(mode(&mounts), 0o700);
    m.close().await;

    // What an older version left (`zfs mount` made it 0755): made private
    // at the next open.
    std::fs::set_permissions(&mounts, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = Manager::open(state.path(), manager_config(pool.provider_config()))
        .await
        .unwrap();
    assert_eq!(mode(&mounts), 0o700);
    hidden();
    m.close().await;

    // A workdir in a directory another user can write (not sticky) is
    // refused, naming it, before anything is made there.
    let shared = pool.workdir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut config = pool.provider_config();
    config.insert(
        "workdir".to_owned(),
        shared.join("work").to_str().unwrap().to_owned(),
    );
    let err = volmgr::provider::zfs::ZfsProvider::from_config(&config)
        .expect_err("a workdir another user can change");
    let text = err.to_string();
    assert!(
        text.contains("zfs workdir")
            && text.contains(&format!("{}: has mode 777", shared.display())),
        "{text}"
    );
    assert!(!shared.join("work").exists(), "nothing made");
}
