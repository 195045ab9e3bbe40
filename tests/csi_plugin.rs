//! The CSI plugin's behaviour beyond the conformance suite, in process: a
//! `CsiServer` on a temporary socket over a manager on the dir provider (and
//! btrfs for capacity). Idempotency and `ALREADY_EXISTS`, hostile names,
//! clones and the delete order they impose, pagination tokens, the socket's
//! mode, readiness, capacity honesty on dir, capacity enforcement and
//! expansion on btrfs, and the node's bind mounts (root only: nosuid, nodev,
//! read-only, fs types, raw block, a target holding another volume).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use volmgr::csi::client::CsiClients;
use volmgr::csi::proto::{
    CapacityRange, ControllerExpandVolumeRequest, ControllerGetCapabilitiesRequest,
    CreateSnapshotRequest, CreateVolumeRequest, DeleteSnapshotRequest, DeleteVolumeRequest,
    ListSnapshotsRequest, ListVolumesRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
    ProbeRequest, ValidateVolumeCapabilitiesRequest, VolumeCapability, VolumeContentSource,
    controller_service_capability, volume_capability, volume_content_source,
};
use volmgr::csi::{CsiOptions, CsiServer, names};
use volmgr::manager::Manager;
use volmgr::provider::sim::{SimCall, SimProvider};
use volmgr::state::VolumeStatus;

struct Plugin {
    _dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    c: CsiClients,
    manager: Manager,
    stop: CancellationToken,
}

/// A plugin over a manager whose default provider is `kind` with `config`
/// (the dir provider under the temp dir when `None`).
async fn plugin_on(provider: Option<(&str, BTreeMap<String, String>)>) -> Plugin {
    plugin_with(provider, None).await
}

async fn plugin_with(
    provider: Option<(&str, BTreeMap<String, String>)>,
    sim: Option<&SimProvider>,
) -> Plugin {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("volumes");
    let mut manager_config = match provider {
        Some((kind, config)) => common::config::with_default_provider(kind, config),
        None => common::config::with_default_provider("dir", common::config::root_config(&root)),
    };
    if let Some(sim) = sim {
        manager_config.factories.insert("sim".into(), sim.factory());
    }
    serve_plugin(dir, root, manager_config, "csi.sock").await
}

/// Opens the manager of `dir`'s state and serves the plugin over it on
/// the socket `socket` in `dir`.
async fn serve_plugin(
    dir: tempfile::TempDir,
    root: PathBuf,
    manager_config: volmgr::manager::ManagerConfig,
    socket: &str,
) -> Plugin {
    let manager = Manager::open(dir.path().join("state"), manager_config)
        .await
        .unwrap();
    let socket = dir.path().join(socket);
    let server = CsiServer::new(CsiOptions::new("n1").unwrap());
    server.ready(manager.clone()).unwrap();
    let listener = CsiServer::bind(&socket).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone().cancelled_owned()));
    let c = CsiClients::connect(&socket).await.unwrap();
    Plugin {
        _dir: dir,
        root,
        socket,
        c,
        manager,
        stop,
    }
}

/// Stops the plugin of [`plugin`] (the dir provider), closes its manager
/// and opens it again, reconciling with the provider (a volume whose
/// directory was removed is marked lost), serving on a new socket.
async fn reopen(p: Plugin) -> Plugin {
    let Plugin {
        _dir: dir,
        root,
        manager,
        stop,
        ..
    } = p;
    stop.cancel();
    manager.close().await;
    let config = common::config::with_default_provider("dir", common::config::root_config(&root));
    serve_plugin(dir, root, config, "csi-reopened.sock").await
}

async fn plugin() -> Plugin {
    plugin_on(None).await
}

/// The HTTP API on the plugin's manager (the same process serves both);
/// returns a client of it.
async fn http_on(p: &Plugin) -> volmgr::agent::client::Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = "csi-plugin-test-token".to_owned();
    let agent = volmgr::agent::Agent::new(volmgr::agent::ServeOptions {
        token: Some(token.clone()),
        ..volmgr::agent::ServeOptions::default()
    })
    .unwrap();
    agent.ready(p.manager.clone()).unwrap();
    tokio::spawn(agent.serve(listener, p.stop.clone().cancelled_owned()));
    volmgr::agent::client::Client::new(&url, Some(token)).unwrap()
}

fn mount_cap(fs_type: &str, flags: &[&str]) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                fs_type: fs_type.to_owned(),
                mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                volume_mount_group: String::new(),
            },
        )),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        volume_capabilities: vec![mount_cap("", &[])],
        ..Default::default()
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Connects to the unix socket `path` as user and group 65534 (nobody):
/// `Ok` if the connection was made, else the connecting process's stderr.
fn connect_as_nobody(path: &Path) -> Result<(), String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "/usr/bin/python3",
            "-c",
            "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
        ])
        .arg(path)
        .output()
        .expect("setpriv and /usr/bin/python3 run (util-linux, python3)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A local user without root reaches the agent's CSI service only through
/// its socket: the socket's own mode must keep them out even where the
/// directory above it lets everyone through.
#[tokio::test]
async fn a_local_unprivileged_user_cannot_connect_to_the_csi_socket() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("VOLMGR_REQUIRE_ROOT").as_deref() != Ok("1"),
            "VOLMGR_REQUIRE_ROOT=1 but this test needs root (setpriv to nobody)"
        );
        println!("SKIP a_local_unprivileged_user_cannot_connect_to_the_csi_socket: needs root");
        return;
    }
    let p = plugin().await;
    let parent = p.socket.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = connect_as_nobody(&p.socket).expect_err("nobody connected to a 0600 socket");
    assert!(refused.contains("PermissionError"), "{refused}");
    // The same attempt succeeds once the socket's mode lets others in: the
    // refusal above comes from the socket's mode, not from the setup.
    std::fs::set_permissions(&p.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    connect_as_nobody(&p.socket).expect("nobody connects to a 0666 socket");
}

#[tokio::test]
async fn the_socket_is_owner_only_and_a_stale_socket_is_replaced_but_a_file_is_not() {
    let p = plugin().await;
    let mode = std::fs::metadata(&p.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // A socket left by a killed agent is replaced ...
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(CsiServer::bind(&stale).is_ok());
    // ... but a regular file in its place is never removed.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"keep").unwrap();
    assert!(CsiServer::bind(&file).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    p.stop.cancel();
}

/// In a directory another user can change, a local user could put a socket
/// of its own at the plugin's path before the agent starts (or between two
/// runs) and take the CO's calls, or swap the socket for a symlink while
/// the agent set its mode by path (a chmod that followed it). The socket's
/// directory must pass the state directory's walk: `/tmp` itself (sticky,
/// world-writable), a group- or other-writable directory, one another user
/// owns, or a missing directory below one of those, is refused before
/// anything is created or removed there.
#[tokio::test]
async fn a_socket_directory_another_user_could_change_is_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = open.join("planted.sock");
    drop(std::os::unix::net::UnixListener::bind(&planted).unwrap());
    let in_tmp = std::env::temp_dir().join(format!("volmgr-csi-{}.sock", std::process::id()));
    for path in [
        in_tmp.clone(),
        open.join("csi.sock"),
        planted.clone(),
        open.join("missing").join("csi.sock"),
    ] {
        let e = CsiServer::bind(&path).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{path:?}: {e}"
        );
        assert!(
            e.to_string().contains("another user could change"),
            "{path:?}: {e}"
        );
    }
    assert!(!in_tmp.exists());
    assert!(!open.join("csi.sock").exists());
    assert!(!open.join("missing").exists(), "nothing created below it");
    assert!(
        planted.exists(),
        "a socket found there is not removed either"
    );
    // A directory another user owns, however narrow its mode.
    if volmgr::fsutil::trust::euid() == 0 {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = CsiServer::bind(&theirs.join("csi.sock")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    }
    // A private directory, created if missing, is fine.
    let ok = dir.path().join("private").join("csi.sock");
    assert!(CsiServer::bind(&ok).is_ok());
}

#[tokio::test]
async fn before_the_manager_is_open_probe_is_not_ready_and_calls_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let server = CsiServer::new(CsiOptions::new("n1").unwrap());
    let listener = CsiServer::bind(&socket).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(
        server
            .clone()
            .serve(listener, stop.clone().cancelled_owned()),
    );
    let mut c = CsiClients::connect(&socket).await.unwrap();
    let probe = c
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false));
    let r = c.controller.create_volume(create_req("pvc-1")).await;
    assert_eq!(code(r), Code::Unavailable);
    stop.cancel();
}

#[tokio::test]
async fn create_volume_is_idempotent_by_name_and_incompatible_retries_are_already_exists() {
    let mut p = plugin().await;
    let a =
        p.c.controller
            .create_volume(create_req("pvc-a"))
            .await
            .unwrap();
    let b =
        p.c.controller
            .create_volume(create_req("pvc-a"))
            .await
            .unwrap();
    assert_eq!(a.into_inner().volume, b.into_inner().volume);
    assert_eq!(p.manager.volumes().len(), 1, "one volume for one name");

    // Other parameters, another source: ALREADY_EXISTS.
    let mut other = create_req("pvc-a");
    other.parameters = HashMap::from([("provider".into(), "elsewhere".into())]);
    // (a provider that does not exist is INVALID_ARGUMENT before any lookup)
    assert_eq!(
        code(p.c.controller.create_volume(other).await),
        Code::InvalidArgument
    );
    let mut from_snap = create_req("pvc-a");
    from_snap.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "some-snap".into(),
            },
        )),
    });
    assert_eq!(
        code(p.c.controller.create_volume(from_snap).await),
        Code::AlreadyExists
    );
    // A volume made outside the plugin is not taken over.
    p.manager
        .create_volume("default", Some("by-hand"), BTreeMap::new())
        .await
        .unwrap();
    let r = p.c.controller.create_volume(create_req("by-hand")).await;
    assert_eq!(code(r), Code::AlreadyExists);
    p.stop.cancel();
}

#[tokio::test]
async fn hostile_names_become_valid_ids_under_the_provider_root() {
    let mut p = plugin().await;
    for name in [
        "../../etc/passwd",
        "-rf",
        ".hidden",
        &"x".repeat(300),
        "a b c",
    ] {
        let v =
            p.c.controller
                .create_volume(create_req(name))
                .await
                .unwrap();
        let id = v.into_inner().volume.unwrap().volume_id;
        assert_eq!(id, names::id_for_name(name));
        assert!(id.starts_with("csi-") && id.len() == 36, "{id}");
        let loc = PathBuf::from(p.manager.volume(&id).unwrap().location);
        assert!(
            loc.starts_with(&p.root),
            "{} escapes {}",
            loc.display(),
            p.root.display()
        );
        assert_eq!(p.manager.volume(&id).unwrap().meta[names::META_NAME], name);
    }
    let r =
        p.c.controller
            .create_volume(create_req("bad\u{7}name"))
            .await;
    assert_eq!(code(r), Code::InvalidArgument);
    p.stop.cancel();
}

#[tokio::test]
async fn the_dir_provider_reports_capacity_unknown_takes_no_options_and_cannot_expand() {
    let mut p = plugin().await;
    let mut req = create_req("pvc-sized");
    req.capacity_range = Some(CapacityRange {
        required_bytes: 1 << 30,
        limit_bytes: 0,
    });
    let v = p.c.controller.create_volume(req.clone()).await.unwrap();
    assert_eq!(
        v.into_inner().volume.unwrap().capacity_bytes,
        0,
        "never pretend"
    );
    // A retry asking for more than was recorded is incompatible.
    req.capacity_range = Some(CapacityRange {
        required_bytes: 2 << 30,
        limit_bytes: 2 << 30,
    });
    assert_eq!(
        code(p.c.controller.create_volume(req).await),
        Code::AlreadyExists
    );

    let mut opt = create_req("pvc-opt");
    opt.parameters = HashMap::from([("compression".into(), "lz4".into())]);
    assert_eq!(
        code(p.c.controller.create_volume(opt).await),
        Code::InvalidArgument
    );

    // The HTTP create refuses a capacity the provider cannot enforce.
    let http = http_on(&p).await;
    let err = http
        .create_volume_sized(
            "default",
            Some("http-sized"),
            BTreeMap::new(),
            Some(1 << 20),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, volmgr::agent::client::ClientError::Api { status: 400, code, .. } if code == "invalid_input"),
        "{err}"
    );
    assert!(p.manager.volume("http-sized").is_err(), "nothing made");

    let caps =
        p.c.controller
            .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities;
    let expand = controller_service_capability::rpc::Type::ExpandVolume as i32;
    assert!(!caps.iter().any(|c| matches!(
        &c.r#type,
        Some(controller_service_capability::Type::Rpc(r)) if r.r#type == expand
    )));
    let r =
        p.c.controller
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: "pvc-sized".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 2 << 30,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    p.stop.cancel();
}

#[tokio::test]
async fn a_clone_keeps_its_source_until_deleted_and_takes_its_internal_snapshot_along() {
    let mut p = plugin().await;
    p.c.controller
        .create_volume(create_req("src"))
        .await
        .unwrap();
    std::fs::write(
        Path::new(&p.manager.volume("src").unwrap().location).join("f"),
        b"data",
    )
    .unwrap();
    let mut clone = create_req("clone");
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "src".into(),
            },
        )),
    });
    let v =
        p.c.controller
            .create_volume(clone.clone())
            .await
            .unwrap()
            .into_inner();
    assert!(v.volume.unwrap().content_source.is_some());
    let again =
        p.c.controller
            .create_volume(clone)
            .await
            .unwrap()
            .into_inner();
    assert_eq!(again.volume.unwrap().volume_id, "clone");
    let copied = Path::new(&p.manager.volume("clone").unwrap().location).join("f");
    assert_eq!(std::fs::read(copied).unwrap(), b"data");

    // The internal snapshot is no CSI snapshot.
    let listed =
        p.c.controller
            .list_snapshots(ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert!(listed.entries.is_empty());

    let del = |id: &str| DeleteVolumeRequest {
        volume_id: id.to_owned(),
        ..Default::default()
    };
    assert_eq!(
        code(p.c.controller.delete_volume(del("src")).await),
        Code::FailedPrecondition
    );
    p.c.controller.delete_volume(del("clone")).await.unwrap();
    assert!(p.manager.volume(&names::clone_source_id("clone")).is_err());
    p.c.controller.delete_volume(del("src")).await.unwrap();
    p.c.controller.delete_volume(del("src")).await.unwrap();
    assert!(p.manager.volumes().is_empty());
    p.stop.cancel();
}

#[tokio::test]
async fn snapshots_are_idempotent_by_name_and_block_their_source_and_restores() {
    let mut p = plugin().await;
    p.c.controller
        .create_volume(create_req("v1"))
        .await
        .unwrap();
    p.c.controller
        .create_volume(create_req("v2"))
        .await
        .unwrap();
    let snap = |name: &str, src: &str| CreateSnapshotRequest {
        name: name.to_owned(),
        source_volume_id: src.to_owned(),
        ..Default::default()
    };
    let a =
        p.c.controller
            .create_snapshot(snap("s1", "v1"))
            .await
            .unwrap()
            .into_inner();
    let b =
        p.c.controller
            .create_snapshot(snap("s1", "v1"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(a.snapshot, b.snapshot);
    assert_eq!(
        code(p.c.controller.create_snapshot(snap("s1", "v2")).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(p.c.controller.create_snapshot(snap("s2", "nope")).await),
        Code::NotFound
    );
    // A snapshot name taken by a volume is ALREADY_EXISTS, not that volume.
    assert_eq!(
        code(p.c.controller.create_snapshot(snap("v2", "v1")).await),
        Code::AlreadyExists
    );

    let mut restore = create_req("restored");
    restore.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "s1".into(),
            },
        )),
    });
    p.c.controller.create_volume(restore).await.unwrap();
    let del_snap = DeleteSnapshotRequest {
        snapshot_id: "s1".into(),
        ..Default::default()
    };
    assert_eq!(
        code(p.c.controller.delete_snapshot(del_snap.clone()).await),
        Code::FailedPrecondition
    );
    p.c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: "restored".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    p.c.controller
        .delete_snapshot(del_snap.clone())
        .await
        .unwrap();
    p.c.controller.delete_snapshot(del_snap).await.unwrap();
    p.stop.cancel();
}

#[tokio::test]
async fn lists_page_through_every_volume_once_and_refuse_foreign_tokens() {
    let mut p = plugin().await;
    for i in 0..7 {
        p.c.controller
            .create_volume(create_req(&format!("pvc-{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page =
            p.c.controller
                .list_volumes(ListVolumesRequest {
                    max_entries: 3,
                    starting_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
        assert!(page.entries.len() <= 3);
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        token = page.next_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("pvc-{i}")).collect();
    assert_eq!(seen, expected);
    for bad in ["invalid-token", "after:../x", "3"] {
        let r =
            p.c.controller
                .list_volumes(ListVolumesRequest {
                    max_entries: 0,
                    starting_token: bad.into(),
                })
                .await;
        assert_eq!(code(r), Code::Aborted, "{bad}");
    }
    let r =
        p.c.controller
            .list_volumes(ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new(),
            })
            .await;
    assert_eq!(code(r), Code::InvalidArgument);
    p.stop.cancel();
}

fn mount_options(target: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == target.to_str())
        .map(|l| l.split(' ').nth(5).unwrap_or_default().to_owned())
}

#[tokio::test]
async fn published_volumes_are_nosuid_nodev_bind_mounts_and_honour_readonly() {
    let test = "published_volumes_are_nosuid_nodev_bind_mounts_and_honour_readonly";
    if !csi_root(test) {
        return;
    }
    let mut p = plugin_with_volume("pub").await;
    p.c.controller
        .create_volume(create_req("other"))
        .await
        .unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let target = mnt.path().join("target");
    let publish = |cap: VolumeCapability, readonly: bool, id: &str| NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    };
    // Raw block and a foreign fs type are refused before anything is mounted.
    let block = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: mount_cap("", &[]).access_mode,
    };
    assert_eq!(
        code(
            p.c.node
                .node_publish_volume(publish(block, false, "pub"))
                .await
        ),
        Code::InvalidArgument
    );
    let r =
        p.c.node
            .node_publish_volume(publish(mount_cap("vfat", &[]), false, "pub"))
            .await;
    assert_eq!(code(r), Code::InvalidArgument);
    assert_eq!(mount_options(&target), None);

    p.c.node
        .node_publish_volume(publish(mount_cap("", &[]), true, "pub"))
        .await
        .unwrap();
    p.c.node
        .node_publish_volume(publish(mount_cap("", &[]), true, "pub"))
        .await
        .unwrap();
    let opts = mount_options(&target).expect("mounted");
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(
            opts.split(',').any(|o| o == flag),
            "{flag} missing from {opts}"
        );
    }
    assert!(
        std::fs::write(target.join("x"), b"no").is_err(),
        "read-only for root too"
    );
    // Another volume, or other options, at the same target: ALREADY_EXISTS.
    let r =
        p.c.node
            .node_publish_volume(publish(mount_cap("", &[]), true, "other"))
            .await;
    assert_eq!(code(r), Code::AlreadyExists);
    let r =
        p.c.node
            .node_publish_volume(publish(mount_cap("", &[]), false, "pub"))
            .await;
    assert_eq!(code(r), Code::AlreadyExists);

    let unpublish = NodeUnpublishVolumeRequest {
        volume_id: "pub".into(),
        target_path: target.to_string_lossy().into_owned(),
    };
    p.c.node
        .node_unpublish_volume(unpublish.clone())
        .await
        .unwrap();
    assert_eq!(mount_options(&target), None);
    assert!(!target.exists(), "the target is removed");
    p.c.node.node_unpublish_volume(unpublish).await.unwrap();

    // Writable publish: files land in the volume.
    p.c.node
        .node_publish_volume(publish(mount_cap("", &["noexec"]), false, "pub"))
        .await
        .unwrap();
    std::fs::write(target.join("hello"), b"hi").unwrap();
    let loc = PathBuf::from(p.manager.volume("pub").unwrap().location);
    assert_eq!(std::fs::read(loc.join("hello")).unwrap(), b"hi");
    let opts = mount_options(&target).unwrap();
    assert!(opts.split(',').any(|o| o == "noexec"), "{opts}");
    unpublish_ok(&mut p, "pub", &target).await;
    p.stop.cancel();
}

/// A plugin on the directory provider with data volume `name` created.
async fn plugin_with_volume(name: &str) -> Plugin {
    let mut p = plugin().await;
    p.c.controller
        .create_volume(create_req(name))
        .await
        .unwrap();
    p
}

/// Unpublishes volume `id` from `target`; it must succeed.
async fn unpublish_ok(p: &mut Plugin, id: &str, target: &Path) {
    p.c.node
        .node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
        })
        .await
        .unwrap();
}

/// Mounts stacked at `path` (as the mount table names it: resolved).
fn mounts_at(path: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == path.to_str())
        .count()
}

/// Detaches whatever a failed test left mounted at its path.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        while mounts_at(&self.0) > 0 {
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
    }
}

/// A target under a symlinked directory (a kubelet root or Nomad data
/// directory that is a symlink): the mount table names the resolved path,
/// and the plugin still sees its own mount there, so a second publish is
/// the idempotent OK without stacking a mount and unpublish removes it.
#[tokio::test]
async fn a_target_under_a_symlinked_directory_is_published_once_and_unpublished() {
    let test = "a_target_under_a_symlinked_directory_is_published_once_and_unpublished";
    if !csi_root(test) {
        return;
    }
    let mut p = plugin_with_volume("pub").await;
    let mnt = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(mnt.path()).unwrap().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, mnt.path().join("link")).unwrap();
    let target = mnt.path().join("link").join("target");
    let resolved = real.join("target");
    let _cleanup = Unmount(resolved.clone());
    let publish = NodePublishVolumeRequest {
        volume_id: "pub".into(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(mount_cap("", &[])),
        ..Default::default()
    };
    p.c.node.node_publish_volume(publish.clone()).await.unwrap();
    p.c.node.node_publish_volume(publish).await.unwrap();
    assert_eq!(mounts_at(&resolved), 1, "a second publish stacked a mount");

    unpublish_ok(&mut p, "pub", &target).await;
    assert_eq!(mounts_at(&resolved), 0);
    assert!(!resolved.exists(), "the target is removed");
    p.stop.cancel();
}

/// Bind-mounts `source` at `target` (the test's stand-in for a mount the
/// plugin did not make).
fn bind_mount(source: &Path, target: &Path) {
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let (src, dst) = (c(source), c(target));
    // SAFETY: valid NUL-terminated paths; null fs type and data for MS_BIND.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Publishes volume `id` at `target` with a plain mount capability.
async fn publish_ok(p: &mut Plugin, id: &str, target: &Path) {
    p.c.node
        .node_publish_volume(NodePublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(mount_cap("", &[])),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A volume lost while published (its directory removed behind the
/// manager's back, marked `Lost` at the next open) is still unpublished:
/// its directory is gone, but the mount table shows the mount's device and
/// root, which are the volume location's. Else the CO would retry forever
/// and the pod would never end.
#[tokio::test]
async fn a_lost_volume_that_is_still_published_is_unpublished() {
    let test = "a_lost_volume_that_is_still_published_is_unpublished";
    if !csi_root(test) {
        return;
    }
    let mut p = plugin_with_volume("pub").await;
    let mnt = tempfile::tempdir().unwrap();
    let target = std::fs::canonicalize(mnt.path()).unwrap().join("target");
    let _cleanup = Unmount(target.clone());
    publish_ok(&mut p, "pub", &target).await;
    let location = PathBuf::from(p.manager.volume("pub").unwrap().location);
    std::fs::remove_dir(&location).unwrap();

    let mut p = reopen(p).await;
    assert_eq!(
        p.manager.volume("pub").unwrap().status,
        VolumeStatus::Lost,
        "reconciliation marks it lost"
    );
    unpublish_ok(&mut p, "pub", &target).await;
    assert_eq!(mounts_at(&target), 0);
    assert!(!target.exists(), "the target is removed");
    unpublish_ok(&mut p, "pub", &target).await;
    p.stop.cancel();
}

/// A target with a mount no provider made: directory `foreign` bind
/// mounted at `target`, both in a fresh temporary directory (returned, with
/// the guard that unmounts whatever a failed test leaves).
fn foreign_mount_at_a_target() -> (tempfile::TempDir, PathBuf, PathBuf, Unmount) {
    let mnt = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(mnt.path()).unwrap();
    let (foreign, target) = (base.join("foreign"), base.join("target"));
    std::fs::create_dir(&foreign).unwrap();
    std::fs::create_dir(&target).unwrap();
    let cleanup = Unmount(target.clone());
    bind_mount(&foreign, &target);
    (mnt, foreign, target, cleanup)
}

/// A mount at the target that is not the volume's (another directory bind
/// mounted there) is never unmounted by the volume's unpublish, whether the
/// volume is live or lost, nor when that directory was removed too.
#[tokio::test]
async fn unpublish_refuses_a_foreign_mount_at_the_target_even_for_a_lost_volume() {
    let test = "unpublish_refuses_a_foreign_mount_at_the_target_even_for_a_lost_volume";
    if !csi_root(test) {
        return;
    }
    let mut p = plugin_with_volume("pub").await;
    let (_mnt, foreign, target, _cleanup) = foreign_mount_at_a_target();
    let unpublish = NodeUnpublishVolumeRequest {
        volume_id: "pub".into(),
        target_path: target.to_string_lossy().into_owned(),
    };
    let r = p.c.node.node_unpublish_volume(unpublish.clone()).await;
    assert_eq!(code(r), Code::FailedPrecondition, "live volume");
    assert_eq!(mounts_at(&target), 1);

    let location = PathBuf::from(p.manager.volume("pub").unwrap().location);
    std::fs::remove_dir(&location).unwrap();
    std::fs::remove_dir(&foreign).unwrap();
    let mut p = reopen(p).await;
    assert_eq!(p.manager.volume("pub").unwrap().status, VolumeStatus::Lost);
    let r = p.c.node.node_unpublish_volume(unpublish).await;
    assert_eq!(code(r), Code::FailedPrecondition, "lost volume");
    assert_eq!(mounts_at(&target), 1, "the foreign mount stays");
    p.stop.cancel();
}

/// `NodeUnpublishVolume` of a volume id the manager has no record of used to
/// unmount whatever was mounted at the target: a caller naming an unknown
/// id and another driver's volume, a `/proc`, any mount point, had it
/// unmounted as root. Now only a bind mount of something below a
/// provider's directory is removed for an unrecorded id (a volume deleted
/// while still published: the next test); anything else is
/// `FAILED_PRECONDITION` and stays mounted.
#[tokio::test]
async fn unpublish_of_an_unrecorded_volume_id_never_unmounts_a_mount_no_provider_made() {
    let test = "unpublish_of_an_unrecorded_volume_id_never_unmounts_a_mount_no_provider_made";
    if !csi_root(test) {
        return;
    }
    let mut p = plugin_with_volume("pub").await;
    let (_mnt, _foreign, target, _cleanup) = foreign_mount_at_a_target();
    let r =
        p.c.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: "pvc-5b7c6a52-7f0e-4a8e-9d2c-3f1e2d4c5b6a".into(),
                target_path: target.to_string_lossy().into_owned(),
            })
            .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert_eq!(mounts_at(&target), 1, "the foreign mount stays");
    p.stop.cancel();
}

/// A volume deleted while still published (`DeleteVolume` does not look at
/// the node's mounts, and the CO may force it) leaves no record, but its
/// bind mount, of a directory since moved to the provider's trash and
/// removed, is below the provider's directory: the unpublish removes it,
/// else the CO would retry forever.
#[tokio::test]
async fn a_volume_deleted_while_published_is_still_unpublished() {
    let test = "a_volume_deleted_while_published_is_still_unpublished";
    if !csi_root(test) {
        return;
    }
    let mut p = plugin_with_volume("pub").await;
    let mnt = tempfile::tempdir().unwrap();
    let target = std::fs::canonicalize(mnt.path()).unwrap().join("target");
    let _cleanup = Unmount(target.clone());
    publish_ok(&mut p, "pub", &target).await;
    p.c.controller
        .delete_volume(DeleteVolumeRequest {
            volume_id: "pub".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(p.manager.volume("pub").is_err(), "no record left");
    assert_eq!(mounts_at(&target), 1);
    unpublish_ok(&mut p, "pub", &target).await;
    assert_eq!(mounts_at(&target), 0);
    assert!(!target.exists(), "the target is removed");
    p.stop.cancel();
}

/// The spec has the SP delete only the file or directory it created at the
/// target, and publish only ever creates a directory: a regular file or a
/// symlink at the target (the operator's or the CO's) is left as it is,
/// and the unpublish answers OK (nothing of the volume is published there).
#[tokio::test]
async fn unpublish_leaves_a_file_or_symlink_it_did_not_create_at_the_target() {
    let mut p = plugin_with_volume("pub").await;
    let mnt = tempfile::tempdir().unwrap();
    let (file, link) = (mnt.path().join("file"), mnt.path().join("link"));
    std::fs::write(&file, b"not the plugin's").unwrap();
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for target in [&file, &link] {
        unpublish_ok(&mut p, "pub", target).await;
        assert!(
            target.symlink_metadata().is_ok(),
            "{} was removed",
            target.display()
        );
    }
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&file).unwrap(), b"not the plugin's");
    p.stop.cancel();
}

/// The spec's `NodePublishVolume`: published alike is OK, published with
/// another capability is `ALREADY_EXISTS`; the mount flags are part of the
/// capability, not only `readonly`.
#[tokio::test]
async fn republishing_with_other_mount_flags_is_already_exists_and_alike_is_ok() {
    let test = "republishing_with_other_mount_flags_is_already_exists_and_alike_is_ok";
    if !csi_root(test) {
        return;
    }
    let mut p = plugin_with_volume("pub").await;
    let mnt = tempfile::tempdir().unwrap();
    let target = std::fs::canonicalize(mnt.path()).unwrap().join("target");
    let _cleanup = Unmount(target.clone());
    let publish = |flags: &[&str]| NodePublishVolumeRequest {
        volume_id: "pub".into(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(mount_cap("", flags)),
        ..Default::default()
    };
    p.c.node
        .node_publish_volume(publish(&["noexec"]))
        .await
        .unwrap();
    p.c.node
        .node_publish_volume(publish(&["noexec", "rw"]))
        .await
        .unwrap();
    for other in [&[][..], &["exec"], &["noexec", "noatime"]] {
        let r = p.c.node.node_publish_volume(publish(other)).await;
        assert_eq!(code(r), Code::AlreadyExists, "{other:?}");
    }
    assert_eq!(mounts_at(&target), 1);
    let opts = mount_options(&target).unwrap();
    assert!(opts.split(',').any(|o| o == "noexec"), "{opts}");
    unpublish_ok(&mut p, "pub", &target).await;
    p.stop.cancel();
}

/// `ValidateVolumeCapabilities` confirms a capability only if `NodePublishVolume`
/// would honour it: an fs type other than the volume's file system is not
/// confirmed (Nomad validates at `volume register` and claims later).
#[tokio::test]
async fn validation_confirms_no_fs_type_that_publish_refuses() {
    let mut p = plugin().await;
    p.c.controller
        .create_volume(create_req("pvc-v"))
        .await
        .unwrap();
    let validate = |fs: &str| ValidateVolumeCapabilitiesRequest {
        volume_id: "pvc-v".into(),
        volume_capabilities: vec![mount_cap("", &[]), mount_cap(fs, &[])],
        ..Default::default()
    };
    let any =
        p.c.controller
            .validate_volume_capabilities(validate(""))
            .await
            .unwrap()
            .into_inner();
    assert!(any.confirmed.is_some(), "{}", any.message);
    let foreign =
        p.c.controller
            .validate_volume_capabilities(validate("vfat"))
            .await
            .unwrap()
            .into_inner();
    assert!(foreign.confirmed.is_none(), "vfat confirmed");
    assert!(foreign.message.contains("vfat"), "{}", foreign.message);
    p.stop.cancel();
}

/// `ValidateVolumeCapabilities` checks `parameters` as `CreateVolume` does
/// and confirms only those it accepts and the volume has: an option the
/// provider refuses, an unknown provider, another provider than the
/// volume's, a malformed key, or mutable parameters are not confirmed (the
/// message says why); the volume's own provider and the sidecars' keys are.
#[tokio::test]
async fn validation_confirms_only_parameters_that_create_volume_accepts() {
    let mut p = plugin().await;
    p.c.controller
        .create_volume(create_req("pvc-v"))
        .await
        .unwrap();
    let pairs = |kv: &[(&str, &str)]| -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let validate = |parameters: HashMap<String, String>, mutable: HashMap<String, String>| {
        ValidateVolumeCapabilitiesRequest {
            volume_id: "pvc-v".into(),
            volume_capabilities: vec![mount_cap("", &[])],
            parameters,
            mutable_parameters: mutable,
            ..Default::default()
        }
    };
    let refused = [
        (
            pairs(&[("compression", "lz4")]),
            HashMap::new(),
            "compression",
        ),
        (pairs(&[("provider", "nope")]), HashMap::new(), "nope"),
        (pairs(&[("-o", "x")]), HashMap::new(), "\"-o\""),
        (HashMap::new(), pairs(&[("iops", "10")]), "mutable"),
    ];
    for (parameters, mutable, why) in refused {
        let asked = format!("{parameters:?} {mutable:?}");
        let create = CreateVolumeRequest {
            parameters: parameters.clone(),
            mutable_parameters: mutable.clone(),
            ..create_req("pvc-other")
        };
        let r = p.c.controller.create_volume(create).await;
        assert_eq!(code(r), Code::InvalidArgument, "create {asked}");
        let answer =
            p.c.controller
                .validate_volume_capabilities(validate(parameters, mutable))
                .await
                .unwrap()
                .into_inner();
        assert!(answer.confirmed.is_none(), "{asked} confirmed");
        assert!(answer.message.contains(why), "{asked}: {}", answer.message);
    }
    // Parameters CreateVolume accepts, but not for this volume.
    let other_root = p.root.with_file_name("other-volumes");
    p.manager
        .add_provider("other", "dir", common::config::root_config(&other_root))
        .await
        .unwrap();
    let answer =
        p.c.controller
            .validate_volume_capabilities(validate(pairs(&[("provider", "other")]), HashMap::new()))
            .await
            .unwrap()
            .into_inner();
    assert!(answer.confirmed.is_none(), "another provider confirmed");
    assert!(answer.message.contains("other"), "{}", answer.message);
    for parameters in [
        HashMap::new(),
        pairs(&[
            ("provider", "default"),
            ("csi.storage.k8s.io/pvc/name", "x"),
        ]),
    ] {
        let answer =
            p.c.controller
                .validate_volume_capabilities(validate(parameters.clone(), HashMap::new()))
                .await
                .unwrap()
                .into_inner();
        let confirmed = answer.confirmed.expect(&answer.message);
        assert_eq!(confirmed.parameters, parameters);
    }
    p.stop.cancel();
}

/// `ValidateVolumeCapabilities` confirms no `volume_context`: `CreateVolume`
/// returns none and nothing reads one, so a context the caller brings (a
/// Nomad volume registered with `context`) is not echoed back as confirmed;
/// the message names its keys. Without one, the same request is confirmed.
#[tokio::test]
async fn validation_confirms_no_volume_context_the_plugin_never_gave() {
    let mut p = plugin().await;
    p.c.controller
        .create_volume(create_req("pvc-c"))
        .await
        .unwrap();
    let validate = |context: &[(&str, &str)]| ValidateVolumeCapabilitiesRequest {
        volume_id: "pvc-c".into(),
        volume_capabilities: vec![mount_cap("", &[])],
        volume_context: context
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    let foreign =
        p.c.controller
            .validate_volume_capabilities(validate(&[("server", "10.0.0.1"), ("share", "/x")]))
            .await
            .unwrap()
            .into_inner();
    assert!(foreign.confirmed.is_none(), "a context was confirmed");
    assert!(
        foreign.message.contains("\"server\"") && foreign.message.contains("\"share\""),
        "{}",
        foreign.message
    );
    let plain =
        p.c.controller
            .validate_volume_capabilities(validate(&[]))
            .await
            .unwrap()
            .into_inner();
    let confirmed = plain.confirmed.expect(&plain.message);
    assert!(confirmed.volume_context.is_empty());
    p.stop.cancel();
}

fn csi_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    common::skip_or_fail(test, "root", "bind mounts need root", "VOLMGR_REQUIRE_ROOT");
    false
}

#[tokio::test]
async fn btrfs_enforces_the_requested_capacity_and_expansion_raises_it() {
    let test = "btrfs_enforces_the_requested_capacity_and_expansion_raises_it";
    let Some(fs) = common::BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let config = common::config::root_config(&root);
    let mut p = plugin_on(Some(("btrfs", config))).await;
    let mut req = create_req("pvc-q");
    req.capacity_range = Some(CapacityRange {
        required_bytes: 8 << 20,
        limit_bytes: 0,
    });
    let v =
        p.c.controller
            .create_volume(req)
            .await
            .unwrap()
            .into_inner();
    assert_eq!(v.volume.unwrap().capacity_bytes, 8 << 20);
    let loc = PathBuf::from(p.manager.volume("pvc-q").unwrap().location);
    let write = |name: &str, mb: usize| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(loc.join(name))?;
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..mb {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    };
    let err = write("big", 16).expect_err("16 MiB into an 8 MiB volume");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    std::fs::remove_file(loc.join("big")).unwrap();
    // Let btrfs account the freed space before the next writes.
    let dir = std::fs::File::open(&loc).unwrap();
    // SAFETY: a valid open descriptor.
    assert_eq!(
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) },
        0
    );

    let r =
        p.c.controller
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: "pvc-q".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 64 << 20,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.capacity_bytes, 64 << 20);
    assert!(!r.node_expansion_required);
    write("fits", 16).expect("16 MiB into a 64 MiB volume");

    // The HTTP API shows the capacity, and its create enforces one too.
    let http = http_on(&p).await;
    assert_eq!(
        http.get("pvc-q").await.unwrap().capacity_bytes,
        Some(64 << 20)
    );
    let v = http
        .create_volume_sized("default", Some("http-q"), BTreeMap::new(), Some(4 << 20))
        .await
        .unwrap();
    assert_eq!(v.capacity_bytes, Some(4 << 20));
    let http_loc = PathBuf::from(&v.location);
    let err = std::fs::write(http_loc.join("big"), vec![1u8; 16 << 20])
        .and_then(|()| std::fs::File::open(http_loc.join("big"))?.sync_all())
        .expect_err("16 MiB into a 4 MiB volume");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert_eq!(
        p.manager.volume("pvc-q").unwrap().details["capacity-bytes"],
        (64u64 << 20).to_string()
    );
    p.stop.cancel();
}

/// A capacity is never set below what a volume already holds (a limit
/// under its data would leave every write failing): a volume made without
/// one (unlimited) and holding 8 MiB is not limited to 4 MiB by a
/// `ControllerExpandVolume`, a `CreateVolume` retry or a clone asking 4 MiB
/// (each `OUT_OF_RANGE`, as the spec answers a capacity smaller than the
/// source; the volume stays unlimited and writable, no clone is left);
/// 64 MiB is set.
#[tokio::test]
async fn btrfs_never_sets_a_capacity_below_what_the_volume_holds() {
    let test = "btrfs_never_sets_a_capacity_below_what_the_volume_holds";
    let Some(fs) = common::BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let mut p = plugin_on(Some(("btrfs", common::config::root_config(&root)))).await;
    p.c.controller
        .create_volume(create_req("pvc-u"))
        .await
        .unwrap();
    let loc = PathBuf::from(p.manager.volume("pvc-u").unwrap().location);
    let write = |name: &str, mb: usize| -> std::io::Result<()> {
        let f = std::fs::File::create(loc.join(name))?;
        std::io::Write::write_all(&mut &f, &vec![7u8; mb << 20])?;
        f.sync_all()
    };
    write("data", 8).unwrap();
    let range = |bytes: i64| {
        Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        })
    };
    let expand = |bytes: i64| ControllerExpandVolumeRequest {
        volume_id: "pvc-u".into(),
        capacity_range: range(bytes),
        ..Default::default()
    };

    let r =
        p.c.controller
            .controller_expand_volume(expand(4 << 20))
            .await;
    assert_eq!(code(r), Code::OutOfRange, "expand");
    let retry = CreateVolumeRequest {
        capacity_range: range(4 << 20),
        ..create_req("pvc-u")
    };
    let r = p.c.controller.create_volume(retry).await;
    assert_eq!(code(r), Code::OutOfRange, "CreateVolume retry");
    let clone = CreateVolumeRequest {
        capacity_range: range(4 << 20),
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Volume(
                volume_content_source::VolumeSource {
                    volume_id: "pvc-u".into(),
                },
            )),
        }),
        ..create_req("pvc-clone")
    };
    let r = p.c.controller.create_volume(clone).await;
    assert_eq!(code(r), Code::OutOfRange, "clone");
    assert_eq!(
        p.manager
            .volumes()
            .iter()
            .map(|v| v.id.as_str())
            .collect::<Vec<_>>(),
        ["pvc-u"],
        "no clone or clone source is left"
    );
    assert_eq!(
        p.manager
            .volume("pvc-u")
            .unwrap()
            .details
            .get("capacity-bytes"),
        None,
        "still unlimited"
    );
    write("more", 8).expect("the volume is still writable past 4 MiB");

    let r =
        p.c.controller
            .controller_expand_volume(expand(64 << 20))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.capacity_bytes, 64 << 20);
    p.stop.cancel();
}

/// Story: a `CreateVolume` from a snapshot (or a clone) makes the volume,
/// then sets its limit: two journaled operations. A create that died
/// between them, retried with a capacity below what the snapshot holds,
/// answered `OUT_OF_RANGE` and left the volume behind with no limit at all
/// (never answered to the CO, which then fixes the capacity and finds an
/// unlimited volume under the name, or gives up and leaks it).
///
/// Property: a retry that cannot set the limit of a volume its create never
/// limited removes it, as the first attempt does when its limit fails:
/// `OUT_OF_RANGE`, nothing left; the next create with a capacity that fits
/// makes it afresh, limited. (A volume made without a limit and answered
/// stays: `btrfs_never_sets_a_capacity_below_what_the_volume_holds`.)
#[tokio::test]
async fn a_create_retry_that_cannot_limit_a_half_made_volume_leaves_no_unlimited_volume() {
    let test = "a_create_retry_that_cannot_limit_a_half_made_volume_leaves_no_unlimited_volume";
    let Some(fs) = common::BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let mut p = plugin_on(Some(("btrfs", common::config::root_config(&root)))).await;
    p.c.controller
        .create_volume(create_req("pvc-src"))
        .await
        .unwrap();
    let loc = PathBuf::from(p.manager.volume("pvc-src").unwrap().location);
    let f = std::fs::File::create(loc.join("data")).unwrap();
    std::io::Write::write_all(&mut &f, &vec![7u8; 8 << 20]).unwrap();
    f.sync_all().unwrap();
    let snap =
        p.c.controller
            .create_snapshot(CreateSnapshotRequest {
                name: "snap-8m".into(),
                source_volume_id: "pvc-src".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap()
            .snapshot_id;
    let request = |bytes: i64| CreateVolumeRequest {
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: snap.clone(),
                },
            )),
        }),
        ..create_req("pvc-c")
    };
    // What the first attempt, asking 4 MiB, journaled before it died: the
    // volume made from the snapshot, with the meta the plugin writes, and
    // no limit yet.
    let mut meta = names::meta_for("pvc-c");
    meta.insert(names::META_SOURCE.into(), format!("snapshot:{snap}"));
    meta.insert(names::META_REQUESTED_BYTES.into(), (4u64 << 20).to_string());
    p.manager
        .fork_volume(&snap, Some("pvc-c"), meta)
        .await
        .unwrap();

    let r = p.c.controller.create_volume(request(4 << 20)).await;
    assert_eq!(code(r), Code::OutOfRange, "4 MiB cannot hold the snapshot");
    assert!(
        p.manager.volume("pvc-c").is_err(),
        "no volume is left without its limit: {:?}",
        p.manager.volume("pvc-c")
    );

    let v =
        p.c.controller
            .create_volume(request(64 << 20))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
    assert_eq!(v.capacity_bytes, 64 << 20);
    let made = p.manager.volume("pvc-c").unwrap();
    assert_eq!(made.details["capacity-bytes"], (64u64 << 20).to_string());
    // The meta the plugin writes is the meta the half-made volume above had.
    let mut expected = names::meta_for("pvc-c");
    expected.insert(names::META_SOURCE.into(), format!("snapshot:{snap}"));
    expected.insert(
        names::META_REQUESTED_BYTES.into(),
        (64u64 << 20).to_string(),
    );
    assert_eq!(made.meta, expected);
    p.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_volume_with_an_operation_in_flight_are_aborted() {
    let sim = SimProvider::new();
    let mut p = plugin_with(Some(("sim", BTreeMap::new())), Some(&sim)).await;
    let gate = sim.hold_next(SimCall::Create);
    let mut first = p.c.clone();
    let held =
        tokio::spawn(async move { first.controller.create_volume(create_req("pvc-x")).await });
    let g = gate.clone();
    tokio::task::spawn_blocking(move || g.wait_entered())
        .await
        .unwrap();

    let again = p.c.controller.create_volume(create_req("pvc-x")).await;
    assert_eq!(code(again), Code::Aborted);
    let delete =
        p.c.controller
            .delete_volume(DeleteVolumeRequest {
                volume_id: "pvc-x".into(),
                ..Default::default()
            })
            .await;
    assert_eq!(
        code(delete),
        Code::Aborted,
        "never OK for a volume being made"
    );
    let snap =
        p.c.controller
            .create_snapshot(CreateSnapshotRequest {
                name: "s".into(),
                source_volume_id: "pvc-x".into(),
                ..Default::default()
            })
            .await;
    assert_eq!(code(snap), Code::NotFound, "not made yet");

    gate.release();
    let v = held.await.unwrap().unwrap().into_inner().volume.unwrap();
    assert_eq!(v.volume_id, "pvc-x");
    assert_eq!(p.manager.volumes().len(), 1);
    p.stop.cancel();
}

#[test]
fn serve_refuses_a_relative_endpoint_and_a_bad_node_id_as_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}", dir.path().join("csi.sock").display());
    for extra in [
        vec!["--csi-endpoint", "relative.sock"],
        vec!["--csi-endpoint", "unix://relative.sock"],
        vec!["--csi-endpoint", sock.as_str(), "--node-id", "two words"],
        vec!["--csi-endpoint", sock.as_str(), "--node-id", ""],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_volmgr"))
            .arg("serve")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        assert!(!dir.path().join("csi.sock").exists(), "{extra:?}");
    }
}
