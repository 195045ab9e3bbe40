//! btrfs-only properties of the btrfs provider, on a loop-mounted btrfs:
//! crash states of a receive and of a create built by hand (exactly what a
//! process killed at that step leaves) and resolved by reconciliation;
//! snapshot identities as btrfs sees them; ownership refusals; the lookup
//! of one id against the inventory, in odd states.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::BtrfsFs;
use uuid::Uuid;
use volmgr::journal::{Journal, JournalConfig};
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::model::VolumeId;
use volmgr::provider::btrfs::BtrfsProvider;
use volmgr::provider::{Presence, Provider, ProviderConfig, VolumeRef, VolumeSpec};
use volmgr::state::{Action, Case, DETAIL_GUID, Details, Meta, Record, VolumeKind};

fn btrfs(args: &[&str], paths: &[&Path]) -> String {
    let out = Command::new("btrfs")
        .args(args)
        .args(paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "btrfs {args:?} {paths:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show_field(path: &Path, field: &str) -> String {
    btrfs(&["subvolume", "show"], &[path])
        .lines()
        .find_map(|l| l.trim().strip_prefix(field).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {field} for {}", path.display()))
}

fn exchange(a: &Path, b: &Path) {
    let (a, b) = (
        CString::new(a.as_os_str().as_bytes()).unwrap(),
        CString::new(b.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: two valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
}

async fn open_with_provider(state: &Path, root: &Path) -> Manager {
    let m = Manager::open(state, ManagerConfig::default())
        .await
        .unwrap();
    if m.providers().is_empty() {
        m.add_provider("p", "btrfs", common::config::root_config(root))
            .await
            .unwrap();
    }
    m
}

async fn append(state: &Path, record: Record) {
    let (journal, _) = Journal::<Record>::open(state, JournalConfig::default()).unwrap();
    journal.append(&record).await.unwrap();
    journal.close().await;
}

fn tag_line(volume: &str, op: Uuid, kind: &str, parent: &str) -> String {
    format!("volume={volume} op={op} kind={kind} parent={parent}\n")
}

fn cases(m: &Manager) -> Vec<(Case, Option<String>)> {
    m.reconcile_report()
        .resolutions
        .into_iter()
        .map(|(c, v, _)| (c, v))
        .collect()
}

/// Builds, by hand, what a receive of `stream` into `target` by op `op`
/// leaves when killed after exchanging the target's content (and, if
/// `placed`, after renaming the snapshot into place), then reopens. With
/// `read_only`, the tenant then made both contents read-only (the new one
/// through the target's path, the old one through a bind mount taken
/// before the exchange): btrfs moves no read-only subvolume to another
/// directory.
async fn receive_killed_after_exchange(placed: bool, read_only: bool) {
    let test = match (placed, read_only) {
        (true, _) => "receive_killed_after_placing_its_snapshot_is_undone_and_target_restored",
        (false, false) => {
            "receive_killed_after_exchanging_target_content_is_undone_and_target_restored"
        }
        (false, true) => {
            "receive_killed_after_exchange_is_undone_whatever_the_tenant_made_read_only"
        }
    };
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let state = tempfile::tempdir().unwrap();
    let m = open_with_provider(state.path(), &root).await;
    let t = m.create_volume("p", Some("t"), Meta::new()).await.unwrap();
    std::fs::write(Path::new(&t.location).join("who"), b"old").unwrap();
    let src = m
        .create_volume("p", Some("src"), Meta::new())
        .await
        .unwrap();
    std::fs::write(Path::new(&src.location).join("who"), b"new").unwrap();
    let s = m.create_snapshot("src", Meta::new()).await.unwrap();
    let mut stream = Vec::new();
    m.send_snapshot(&s.id, &[], &mut stream).await.unwrap();
    m.close().await;

    let op = Uuid::now_v7();
    append(
        state.path(),
        Record::Intent {
            op,
            at_ms: 1,
            action: Action::ReceiveSnapshot {
                target: "t".into(),
                snapshot: "r".into(),
                meta: Meta::new(),
            },
        },
    )
    .await;
    let stage = root.join(".volmgr/stage").join(op.to_string());
    std::fs::create_dir(&stage).unwrap();
    std::fs::write(stage.join("tag"), tag_line("r", op, "snapshot", "t")).unwrap();
    let incoming = stage.join("in");
    std::fs::create_dir(&incoming).unwrap();
    let mut child = Command::new("btrfs")
        .arg("receive")
        .arg(&incoming)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &stream).unwrap();
    assert!(child.wait().unwrap().success());
    let name = std::fs::read_dir(&incoming)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::rename(&name, incoming.join("vol")).unwrap();
    std::fs::write(incoming.join("tag"), tag_line("r", op, "snapshot", "t")).unwrap();
    let fresh = stage.join("new");
    btrfs(&["subvolume", "snapshot"], &[&incoming.join("vol"), &fresh]);
    exchange(&fresh, Path::new(&t.location));
    if read_only {
        for side in [&fresh, &PathBuf::from(&t.location)] {
            btrfs(
                &["property", "set", "-ts"],
                &[side, Path::new("ro"), Path::new("true")],
            );
        }
    }
    if placed {
        std::fs::rename(&incoming, root.join("snapshot/r")).unwrap();
    }
    assert_eq!(
        std::fs::read(Path::new(&t.location).join("who")).unwrap(),
        b"new"
    );

    let m = open_with_provider(state.path(), &root).await;
    assert_eq!(cases(&m), vec![(Case::DerivedUndone, Some("r".into()))]);
    assert!(m.volume("r").is_err());
    assert_eq!(
        std::fs::read(Path::new(&t.location).join("who")).unwrap(),
        b"old",
        "the target's content was exchanged back"
    );
    assert_eq!(
        fs.subvolume_count(),
        3,
        "t, src, and the snapshot: nothing leaked"
    );
    assert_eq!(
        std::fs::read_dir(root.join(".volmgr/stage"))
            .unwrap()
            .count(),
        0
    );
    // The target takes a receive afterwards as if nothing happened.
    let r = m.receive_snapshot("t", stream.as_slice()).await.unwrap();
    assert_eq!(r.details[DETAIL_GUID], s.details[DETAIL_GUID]);
    assert_eq!(
        std::fs::read(Path::new(&t.location).join("who")).unwrap(),
        b"new"
    );
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_killed_after_exchanging_target_content_is_undone_and_target_restored() {
    receive_killed_after_exchange(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_killed_after_exchange_is_undone_whatever_the_tenant_made_read_only() {
    receive_killed_after_exchange(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_killed_after_placing_its_snapshot_is_undone_and_target_restored() {
    receive_killed_after_exchange(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_killed_after_staging_its_tag_is_finished_by_reconciliation() {
    let test = "create_killed_after_staging_its_tag_is_finished_by_reconciliation";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let state = tempfile::tempdir().unwrap();
    open_with_provider(state.path(), &root).await.close().await;
    let op = Uuid::now_v7();
    append(
        state.path(),
        Record::Intent {
            op,
            at_ms: 1,
            action: Action::CreateVolume {
                provider: "p".into(),
                volume: "v".into(),
                meta: Meta::new(),
            },
        },
    )
    .await;
    let stage = root.join(".volmgr/stage").join(op.to_string());
    std::fs::create_dir(&stage).unwrap();
    std::fs::write(stage.join("tag"), tag_line("v", op, "data", "-")).unwrap();

    let m = open_with_provider(state.path(), &root).await;
    assert_eq!(cases(&m), vec![(Case::CreateFinished, Some("v".into()))]);
    let v = m.volume("v").unwrap();
    assert_eq!(v.op, op);
    std::fs::write(Path::new(&v.location).join("usable"), b"yes").unwrap();
    assert_eq!(fs.subvolume_count(), 1);
    assert_eq!(
        std::fs::read_dir(root.join(".volmgr/stage"))
            .unwrap()
            .count(),
        0
    );
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_identity_is_the_uuid_btrfs_send_carries() {
    let test = "snapshot_identity_is_the_uuid_btrfs_send_carries";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let state = tempfile::tempdir().unwrap();
    let m = open_with_provider(state.path(), &root).await;
    let src = m
        .create_volume("p", Some("src"), Meta::new())
        .await
        .unwrap();
    std::fs::write(Path::new(&src.location).join("f"), b"x").unwrap();
    let s = m.create_snapshot("src", Meta::new()).await.unwrap();
    let s_path = PathBuf::from(&s.location);
    assert_eq!(s.details[DETAIL_GUID], show_field(&s_path, "UUID:"));
    assert_eq!(
        btrfs(&["property", "get", "-ts"], &[&s_path]).trim(),
        "ro=true"
    );
    m.create_volume("p", Some("dst"), Meta::new())
        .await
        .unwrap();
    let mut stream = Vec::new();
    m.send_snapshot(&s.id, &[], &mut stream).await.unwrap();
    let r = m.receive_snapshot("dst", stream.as_slice()).await.unwrap();
    let r_path = PathBuf::from(&r.location);
    assert_eq!(
        show_field(&r_path, "Received UUID:"),
        s.details[DETAIL_GUID],
        "the receiver's received UUID is the sender's UUID"
    );
    assert_eq!(r.details[DETAIL_GUID], s.details[DETAIL_GUID]);
    assert_eq!(
        btrfs(&["property", "get", "-ts"], &[&r_path]).trim(),
        "ro=true"
    );
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_snapshot_is_incomplete_until_finished_and_untagged_subvolume_is_never_destroyed()
{
    let test =
        "writable_snapshot_is_incomplete_until_finished_and_untagged_subvolume_is_never_destroyed";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let state = tempfile::tempdir().unwrap();
    let m = open_with_provider(state.path(), &root).await;
    m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    let s = m.create_snapshot("v", Meta::new()).await.unwrap();
    m.close().await;
    let p = BtrfsProvider::new(&root).unwrap();
    let made_writable = Command::new("btrfs")
        .args(["property", "set", "-ts"])
        .arg(&s.location)
        .args(["ro", "false"])
        .status()
        .unwrap();
    assert!(made_writable.success());
    let found = p
        .inventory()
        .unwrap()
        .into_iter()
        .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == s.id))
        .unwrap();
    assert!(
        matches!(found.presence, Presence::Incomplete { .. }),
        "{found:?}"
    );
    let finished = p.finish(&found).unwrap();
    assert_eq!(finished.details, s.details);
    assert_eq!(
        btrfs(&["property", "get", "-ts"], &[Path::new(&s.location)]).trim(),
        "ro=true"
    );

    let theirs = root.join("data").join("theirs");
    btrfs(&["subvolume", "create"], &[&theirs]);
    let details = Details::new();
    let err = p
        .destroy(&VolumeRef {
            id: VolumeId::new("theirs").unwrap(),
            kind: VolumeKind::Data,
            parent: None,
            location: "",
            details: &details,
        })
        .unwrap_err();
    assert!(err.to_string().contains("no volmgr tag"), "{err}");
    assert!(theirs.is_dir(), "never touched");
}

/// Story: `btrfs receive` runs as root and recreates the setuid bits and
/// device nodes a stream describes; volmgr does not parse btrfs streams, so
/// only a `nosuid,nodev` mount makes them harmless. A receive on a file
/// system mounted without them is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_is_refused_on_a_btrfs_mounted_without_nosuid_and_nodev() {
    let test = "a_receive_is_refused_on_a_btrfs_mounted_without_nosuid_and_nodev";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let state = tempfile::tempdir().unwrap();
    let m = open_with_provider(state.path(), &root).await;
    let src = m
        .create_volume("p", Some("src"), Meta::new())
        .await
        .unwrap();
    std::fs::write(Path::new(&src.location).join("f"), b"x").unwrap();
    let s = m.create_snapshot("src", Meta::new()).await.unwrap();
    m.create_volume("p", Some("dst"), Meta::new())
        .await
        .unwrap();
    let mut stream = Vec::new();
    m.send_snapshot(&s.id, &[], &mut stream).await.unwrap();

    let remount = |opts: &str| {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(fs.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "remount {opts}: {out:?}");
    };
    remount("suid,dev");
    let err = m
        .receive_snapshot("dst", stream.as_slice())
        .await
        .expect_err("a receive on a suid,dev mount");
    let msg = err.to_string();
    assert!(msg.contains("nosuid,nodev"), "{msg}");
    assert!(
        std::fs::read_dir(Path::new(&m.volume("dst").unwrap().location))
            .unwrap()
            .next()
            .is_none(),
        "the target is untouched"
    );
    remount("nosuid,nodev");
    m.receive_snapshot("dst", stream.as_slice()).await.unwrap();
    m.close().await;
}

/// Story: after a failed call the manager asks `lookup` for one id, which
/// reads only the two containers that id can be and the stage. In every odd
/// state a crash or a user can leave (a stale container, a writable
/// snapshot, an item staged but not in place, a placed item whose receive
/// has not committed, a staged leftover shadowed by the item in place, one
/// id in both `data/` and `snapshot/`, tags naming another id or kind,
/// untagged subvolumes, stages without a tag or tagged by another op), the
/// lookup of each id, nothing included, is exactly the inventory's first
/// item tagged with it.
#[test]
fn the_lookup_of_each_id_is_the_inventory_item_tagged_with_it_in_every_odd_state() {
    let test = "the_lookup_of_each_id_is_the_inventory_item_tagged_with_it_in_every_odd_state";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let p = BtrfsProvider::new(&root).unwrap();
    let id = |s: &'static str| VolumeId::new(s).unwrap();
    let no_details = Details::new();
    let at = |s: &'static str, kind| VolumeRef {
        id: id(s),
        kind,
        parent: None,
        location: "",
        details: &no_details,
    };
    let spec = |s: &'static str, kind| VolumeSpec {
        id: id(s),
        op: Uuid::now_v7(),
        kind,
    };
    let (data, snapshot) = (VolumeKind::Data, VolumeKind::Snapshot);
    let stage_root = root.join(".volmgr/stage");
    let stage = |op: Uuid, tag: Option<String>| {
        let dir = stage_root.join(op.to_string());
        std::fs::create_dir(&dir).unwrap();
        if let Some(tag) = tag {
            std::fs::write(dir.join("tag"), tag).unwrap();
        }
        dir
    };
    let container = |kind: &str, name: &str, tag: String| {
        let dir = root.join(kind).join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tag"), tag).unwrap();
        btrfs(&["subvolume", "create"], &[&dir.join("vol")]);
    };

    // Complete: a volume, its snapshot, a fork of the snapshot.
    p.create_volume(&spec("vol", data)).unwrap();
    p.create_snapshot(&at("vol", data), &spec("snap", snapshot))
        .unwrap();
    p.fork_volume(&at("snap", snapshot), &spec("fork", data))
        .unwrap();
    // Stale: a tagged container whose subvolume is gone (absent).
    p.create_volume(&spec("stale", data)).unwrap();
    btrfs(&["subvolume", "delete"], &[&root.join("data/stale/vol")]);
    // A snapshot left writable (incomplete).
    let writable = p
        .create_snapshot(&at("vol", data), &spec("writable", snapshot))
        .unwrap();
    let made_writable = Command::new("btrfs")
        .args(["property", "set", "-ts"])
        .arg(&writable.location)
        .args(["ro", "false"])
        .status()
        .unwrap();
    assert!(made_writable.success());
    // Staged by an op in flight, not yet in place: a create with its
    // subvolume built, and one of an id whose container in place is stale
    // (which hides nothing).
    let staged_op = Uuid::now_v7();
    let staged = stage(staged_op, Some(tag_line("staged", staged_op, "data", "-")));
    btrfs(&["subvolume", "create"], &[&staged.join("vol")]);
    p.create_volume(&spec("restaged", data)).unwrap();
    btrfs(&["subvolume", "delete"], &[&root.join("data/restaged/vol")]);
    let restaged_op = Uuid::now_v7();
    stage(
        restaged_op,
        Some(tag_line("restaged", restaged_op, "data", "-")),
    );
    // A snapshot in place whose op still has its stage (a receive that has
    // not committed): incomplete, and its staged tag is hidden by it.
    let uncommitted = spec("uncommitted", snapshot);
    p.create_snapshot(&at("vol", data), &uncommitted).unwrap();
    stage(
        uncommitted.op,
        Some(tag_line("uncommitted", uncommitted.op, "snapshot", "vol")),
    );
    // A leftover stage of another op tagged as `vol`: hidden by `vol`.
    let shadow_op = Uuid::now_v7();
    stage(shadow_op, Some(tag_line("vol", shadow_op, "data", "-")));
    // One id as a data volume and as a snapshot: the data one comes first.
    p.create_volume(&spec("twin", data)).unwrap();
    p.create_snapshot(&at("vol", data), &spec("twin", snapshot))
        .unwrap();
    // Tags naming another id, or another kind, than their container's:
    // foreign.
    container(
        "data",
        "misnamed",
        tag_line("elsewhere", Uuid::now_v7(), "data", "-"),
    );
    container(
        "snapshot",
        "wrongkind",
        tag_line("wrongkind", Uuid::now_v7(), "data", "-"),
    );
    // Untagged: a bare subvolume, and a file.
    btrfs(&["subvolume", "create"], &[&root.join("data/theirs")]);
    std::fs::write(root.join("snapshot/a-file"), b"?").unwrap();
    // Stages that are no item: without a tag, and tagged by another op.
    stage(Uuid::now_v7(), None);
    stage(
        Uuid::now_v7(),
        Some(tag_line("mislabelled", Uuid::now_v7(), "data", "-")),
    );

    let inv = p.inventory().unwrap();
    let tagged = |id: &str| {
        inv.iter()
            .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == id))
    };
    let reason = |id: &str| match tagged(id).map(|f| &f.presence) {
        Some(Presence::Incomplete { reason }) => reason.clone(),
        other => panic!("{id}: {other:?} in {inv:#?}"),
    };
    // The fixture holds what it says (the inventory's own rule).
    for complete in ["vol", "snap", "fork", "twin"] {
        assert_eq!(
            tagged(complete).map(|f| &f.presence),
            Some(&Presence::Complete),
            "{complete}"
        );
    }
    assert_eq!(
        tagged("twin").unwrap().tag.as_ref().unwrap().kind,
        VolumeKind::Data
    );
    assert!(tagged("stale").is_none(), "{inv:#?}");
    assert!(reason("writable").contains("not read-only"));
    assert!(reason("staged").contains("not yet in place"));
    assert!(reason("restaged").contains("not yet in place"));
    assert!(reason("uncommitted").contains("not committed"));
    for nothing in [
        "misnamed",
        "elsewhere",
        "wrongkind",
        "theirs",
        "mislabelled",
    ] {
        assert!(tagged(nothing).is_none(), "{nothing}: {inv:#?}");
    }

    for id in [
        "vol",
        "snap",
        "fork",
        "stale",
        "writable",
        "staged",
        "restaged",
        "uncommitted",
        "twin",
        "misnamed",
        "elsewhere",
        "wrongkind",
        "theirs",
        "a-file",
        "mislabelled",
        "nothing",
    ] {
        let looked_up = p.lookup(VolumeId::new(id).unwrap()).unwrap();
        assert_eq!(looked_up.as_ref(), tagged(id), "lookup of {id}");
    }
}

/// The btrfs root marker naming `owner`, byte for byte.
fn btrfs_root_marker(owner: volmgr::provider::AgentId) -> Vec<u8> {
    format!("volmgr btrfs provider root (format 1)\nowner {owner}\n").into_bytes()
}

/// Asserts `err` refuses `root` as owned by agent `owner`, and says so.
#[track_caller]
fn assert_foreign_root(
    err: &volmgr::manager::ManagerError,
    root: &Path,
    owner: volmgr::provider::AgentId,
) {
    assert!(
        matches!(
            err,
            volmgr::manager::ManagerError::Provider {
                error: volmgr::provider::ProviderError::ForeignRoot { root: r, owner: o },
                ..
            } if r == root.to_str().unwrap() && *o == owner.to_string()
        ),
        "expected ForeignRoot of {}: {err:?}",
        root.display()
    );
    let text = err.to_string();
    assert!(
        text.contains("belongs to another volmgr agent") && text.contains(&owner.to_string()),
        "{text}"
    );
}

/// Two agents starting together on one unowned btrfs root (story:
/// `tests/root_owner.rs`, for the directory provider): the claim was
/// read-check-write, so both could read "no marker" and both claim it.
/// An agent's provider holds `.volmgr/lock` from before it reads the marker
/// until it is dropped: a second agent is refused while the first runs,
/// whatever the marker says at that instant, and changes nothing. The
/// instant between the first agent's read of "no marker" and its write is
/// made deterministic by removing the marker under the running first agent.
#[test]
fn a_second_agent_cannot_claim_an_unowned_btrfs_root_the_first_one_is_claiming() {
    use std::os::unix::fs::MetadataExt;
    let test = "a_second_agent_cannot_claim_an_unowned_btrfs_root_the_first_one_is_claiming";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let config = common::config::root_config(&root);
    let marker = root.join(".volmgr/provider");
    let (agent_a, agent_b) = (
        volmgr::provider::AgentId::generate(),
        volmgr::provider::AgentId::generate(),
    );
    let a = BtrfsProvider::for_owner(&config, &agent_a).unwrap();
    assert_eq!(std::fs::read(&marker).unwrap(), btrfs_root_marker(agent_a));
    let lock = root.join(".volmgr/lock");
    let md = std::fs::symlink_metadata(&lock).expect("the lock file");
    assert!(md.is_file() && md.mode() & 0o7777 == 0o600, "{md:?}");
    // A has read "no marker" and not written yet: what B would read.
    std::fs::remove_file(&marker).unwrap();
    let image = common::entry_image(&root);

    let err = BtrfsProvider::for_owner(&config, &agent_b).expect_err("A runs on the root");
    assert!(
        matches!(
            &err,
            volmgr::provider::ProviderError::RootInUse { root: r, lock: l }
                if r == root.to_str().unwrap() && l == lock.to_str().unwrap()
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("in use by another volmgr agent") && text.contains(lock.to_str().unwrap()),
        "{text}"
    );
    assert!(!marker.exists(), "B wrote no marker");
    assert_eq!(
        common::entry_image(&root),
        image,
        "nothing under the root changed"
    );

    // A stops: its lock goes with it (every clone of the provider shares
    // it), and the unowned root is B's.
    let clone = a.clone();
    drop(a);
    assert!(
        BtrfsProvider::for_owner(&config, &agent_b).is_err(),
        "a clone of A still holds it"
    );
    drop(clone);
    let b = BtrfsProvider::for_owner(&config, &agent_b).expect("A stopped");
    assert_eq!(std::fs::read(&marker).unwrap(), btrfs_root_marker(agent_b));
    drop(b);
    let err = BtrfsProvider::for_owner(&config, &agent_a).expect_err("B's root now");
    assert!(
        matches!(&err, volmgr::provider::ProviderError::ForeignRoot { owner, .. } if *owner == agent_b.to_string()),
        "{err:?}"
    );
}

/// A btrfs root belongs to one agent (story and property: `tests/root_owner.rs`,
/// there for the directory provider): a second agent's add of the root,
/// and a second agent configured with it, are refused, and nothing under
/// the root changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_add_or_open_on_a_btrfs_root_another_agent_owns() {
    let test = "a_second_agent_cannot_add_or_open_on_a_btrfs_root_another_agent_owns";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    let states = tempfile::tempdir().unwrap();
    let a = open_with_provider(&states.path().join("a"), &root).await;
    let v = a.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("precious"), b"A's data").unwrap();
    a.create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(root.join(".volmgr/provider")).unwrap(),
        btrfs_root_marker(a.agent_id())
    );
    let image = common::entry_image(&root);

    let b = Manager::open(states.path().join("b"), ManagerConfig::default())
        .await
        .unwrap();
    let err = b
        .add_provider("p", "btrfs", common::config::root_config(&root))
        .await
        .expect_err("a root A owns");
    assert_foreign_root(&err, &root, a.agent_id());
    assert!(b.providers().is_empty());
    b.close().await;
    let config = common::config::root_config(&root);
    let err = Manager::open(
        states.path().join("c"),
        ManagerConfig {
            default_provider: Some(Box::new(move || Ok(("btrfs".into(), config)))),
            ..ManagerConfig::default()
        },
    )
    .await
    .expect_err("C's default provider is A's root");
    assert_foreign_root(&err, &root, a.agent_id());
    assert_eq!(
        common::entry_image(&root),
        image,
        "nothing under the root changed"
    );

    let ids: Vec<String> = a.volumes().into_iter().map(|v| v.id).collect();
    assert_eq!(ids, ["s", "v"], "A's volumes as they were");
    assert_eq!(
        std::fs::read(Path::new(&v.location).join("precious")).unwrap(),
        b"A's data"
    );
    a.close().await;
}

/// Two agents from before owners shared a btrfs root (no marker): the first
/// to open claims it, and the other, whose journal holds the provider too,
/// finds it unavailable at open and touches nothing (not the first's stage
/// and trash, which its start would purge, not its volumes); the same agent
/// reopens its root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_btrfs_root_another_agent_claimed_is_unavailable_at_open_and_untouched() {
    let test = "a_journaled_btrfs_root_another_agent_claimed_is_unavailable_at_open_and_untouched";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let root = fs.path().join("volumes");
    drop(BtrfsProvider::new(&root).unwrap());
    assert!(!root.join(".volmgr/provider").exists(), "an old root");
    let states = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (states.path().join("a"), states.path().join("b"));
    let add = Uuid::from_u128(1);
    append(
        &state_b,
        Record::Intent {
            op: add,
            at_ms: 1,
            action: Action::AddProvider(volmgr::state::ProviderRecord {
                id: "p".into(),
                kind: "btrfs".into(),
                config: common::config::root_config(&root),
            }),
        },
    )
    .await;
    append(
        &state_b,
        Record::Outcome {
            op: add,
            at_ms: 1,
            result: volmgr::state::OpResult::Done(volmgr::state::Done::default()),
        },
    )
    .await;

    let a = open_with_provider(&state_a, &root).await;
    assert_eq!(
        std::fs::read(root.join(".volmgr/provider")).unwrap(),
        btrfs_root_marker(a.agent_id()),
        "claimed by A"
    );
    let v = a.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("precious"), b"A's data").unwrap();
    // What A's operations in flight would hold: B's start would purge both.
    std::fs::create_dir_all(root.join(".volmgr/stage").join(Uuid::now_v7().to_string())).unwrap();
    std::fs::create_dir_all(root.join(".volmgr/trash/in-flight/f")).unwrap();
    let image = common::entry_image(&root);

    let b = Manager::open(&state_b, ManagerConfig::default())
        .await
        .unwrap();
    let report = b.reconcile_report();
    assert!(
        report
            .unavailable
            .iter()
            .any(|(p, why)| p == "p" && why.contains(&a.agent_id().to_string())),
        "{report:?}"
    );
    assert!(
        report.resolutions.is_empty() && b.orphans().is_empty(),
        "{report:?}"
    );
    b.close().await;
    assert_eq!(
        common::entry_image(&root),
        image,
        "nothing under the root changed"
    );

    let agent = a.agent_id();
    a.close().await;
    let a = Manager::open(&state_a, ManagerConfig::default())
        .await
        .unwrap();
    assert_eq!(a.agent_id(), agent);
    assert!(a.reconcile_report().unavailable.is_empty());
    a.create_volume("p", Some("w"), Meta::new())
        .await
        .expect("A reopens its root");
    a.close().await;
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A btrfs root in a directory another user can write, or on a mount
/// point whose parent another user can write, was accepted (only `dir`
/// roots were walked): that user swaps the root for a symlink to a
/// directory of root's (here on the same btrfs, as `/etc` would be on a
/// root file system), and the agent, as root, makes its directories and
/// subvolumes there. Refused now like a `dir` root, naming the directory
/// and its mode, before anything is created.
#[test]
fn a_btrfs_root_another_user_could_change_is_refused() {
    let test = "a_btrfs_root_another_user_could_change_is_refused";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    let mnt = fs.path().to_owned();
    let above = mnt.parent().unwrap().to_owned();
    chmod(&above, 0o755); // nobody may reach the mount
    let shared = mnt.join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777); // not sticky
    let target = mnt.join("etc");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("passwd"), b"root:x:0:0").unwrap();
    let root = shared.join("volumes");
    let out = common::as_nobody(&["ln", "-s", target.to_str().unwrap(), root.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let refused = |root: &Path, culprit: &Path, shown_mode: &str| {
        let err = BtrfsProvider::new(root).expect_err("an untrusted btrfs root");
        assert!(
            matches!(err, volmgr::provider::ProviderError::InvalidConfig(_)),
            "{err:?}"
        );
        let text = err.to_string();
        for part in [
            &*format!("btrfs root {}", root.display()),
            &*format!("{}: has mode {shown_mode}", culprit.display()),
            "chmod go-w",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
    };
    refused(&root, &shared, "777");
    assert_eq!(names(&target), ["passwd"], "nothing made where it led");

    // The mount point's own parent, writable by others: refused for a new
    // root and for one that exists (made while it was not).
    let existing = mnt.join("volumes");
    drop(BtrfsProvider::new(&existing).expect("a trusted root"));
    chmod(&above, 0o777);
    refused(&existing, &above, "777");
    refused(&mnt.join("new"), &above, "777");
    assert!(!mnt.join("new").exists(), "nothing created");
    chmod(&above, 0o700);
}

/// The btrfs twin of `security_state_dir`'s
/// `a_local_user_cannot_list_or_read_a_volume_or_snapshot_through_the_host_path`:
/// `data/`, `snapshot/` and `.volmgr/` (stage, trash) were 0755, so any
/// local user listed and read every volume and snapshot through the host
/// path. They are 0700, and one an older version made 0755 is made 0700 at
/// the next open; a root the provider creates is 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_user_cannot_list_or_read_a_btrfs_volume_or_snapshot_through_the_host_path() {
    let test = "a_local_user_cannot_list_or_read_a_btrfs_volume_or_snapshot_through_the_host_path";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    // Everything above the root traversable by others: only the
    // provider's own modes keep them out.
    chmod(fs.path().parent().unwrap(), 0o755);
    chmod(fs.path(), 0o755);
    let root = fs.path().join("volumes");
    let state = tempfile::tempdir().unwrap();
    let hidden = |v: &Path, s: &Path| {
        common::content_hidden_from_nobody(&[v, s]);
        for own in ["data", "snapshot", ".volmgr"] {
            let out = common::as_nobody(&["ls", root.join(own).to_str().unwrap()]);
            assert!(!out.status.success(), "ls {own} as nobody: {out:?}");
        }
    };
    let m = open_with_provider(state.path(), &root).await;
    let v = m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    let v = PathBuf::from(v.location);
    std::fs::write(v.join("secret"), b"tenant data").unwrap();
    chmod(&v.join("secret"), 0o644);
    let s = m
        .create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .unwrap();
    let s = PathBuf::from(s.location);
    hidden(&v, &s);
    assert_eq!(mode(&root), 0o700, "a root the provider made");
    m.close().await;

    for dir in [
        "",
        "data",
        "snapshot",
        ".volmgr",
        ".volmgr/stage",
        ".volmgr/trash",
    ] {
        chmod(&root.join(dir), 0o755);
    }
    let m = open_with_provider(state.path(), &root).await;
    for dir in [
        "data",
        "snapshot",
        ".volmgr",
        ".volmgr/stage",
        ".volmgr/trash",
    ] {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
    }
    assert_eq!(mode(&root), 0o755, "an existing root is left as it is");
    hidden(&v, &s);
    assert_eq!(std::fs::read(v.join("secret")).unwrap(), b"tenant data");
    m.close().await;
}

/// A container's view of its volume: `volume` bind-mounted at a path that
/// `nobody` can reach (the provider's own directories are 0700, as they
/// should be); unmounted on drop.
struct Bound {
    at: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bound {
    fn new(volume: &Path) -> Bound {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(volume)
            .arg(&at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "bind mount of {}", volume.display());
        Bound { at, _dir: dir }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

/// A manager on a fresh btrfs (provider `p`) holding data volume `v`,
/// and `v`'s path; `None` when the test is skipped.
async fn one_volume(test: &str) -> Option<(BtrfsFs, tempfile::TempDir, Manager, PathBuf)> {
    let fs = BtrfsFs::for_test(test, 512)?;
    let state = tempfile::tempdir().unwrap();
    let m = open_with_provider(state.path(), &fs.path().join("volumes")).await;
    let v = m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    let v = PathBuf::from(v.location);
    Some((fs, state, m, v))
}

/// Makes, as `nobody` owning the volume's root and reaching it through a
/// bind mount (as a container does), three subvolumes inside volume
/// `v`: `inner`, `inner/deeper` (holding a file) and `dir/side`.
fn nest_subvolumes_as_a_tenant(v: &Path) {
    std::os::unix::fs::chown(v, Some(65534), Some(65534)).unwrap();
    let bound = Bound::new(v);
    let inside = |rel: &str| bound.at.join(rel).to_str().unwrap().to_owned();
    for (argv, what) in [
        (
            vec!["btrfs", "subvolume", "create", &inside("inner")],
            "inner",
        ),
        (
            vec!["btrfs", "subvolume", "create", &inside("inner/deeper")],
            "deeper",
        ),
        (vec!["mkdir", &inside("dir")], "dir"),
        (
            vec!["btrfs", "subvolume", "create", &inside("dir/side")],
            "side",
        ),
        (
            vec![
                "sh",
                "-c",
                &format!("echo data > {}", inside("inner/deeper/f")),
            ],
            "a file in deeper",
        ),
    ] {
        let out = common::as_nobody(&argv);
        assert!(out.status.success(), "nobody made {what}: {out:?}");
    }
}

/// The paths of every subvolume on `fs` (`btrfs subvolume list`).
fn subvolume_paths(fs: &BtrfsFs) -> Vec<String> {
    btrfs(&["subvolume", "list"], &[fs.path()])
        .lines()
        .filter_map(|l| l.split(" path ").nth(1).map(str::to_owned))
        .collect()
}

/// Any user who may write a directory on btrfs may create a subvolume
/// there, so a tenant can nest subvolumes in its volume. btrfs deletes no
/// subvolume that holds another, so the volume's destroy failed for good
/// ("Directory not empty"), as did a receive into it (its old content
/// stayed in the trash), and a snapshot held an empty directory in place
/// of each nested subvolume, its content silently missing from the
/// snapshot and from every transfer of it. Now a destroy, and the purge of
/// a receive's old content, delete them first, by id, never through a
/// path inside the volume; a snapshot is refused, naming how many it would
/// leave out, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subvolumes_a_tenant_nests_in_its_volume_neither_block_its_destroy_nor_vanish_from_a_snapshot()
 {
    let test = "subvolumes_a_tenant_nests_in_its_volume_neither_block_its_destroy_nor_vanish_from_a_snapshot";
    let Some((fs, _state, m, v)) = one_volume(test).await else {
        return;
    };
    nest_subvolumes_as_a_tenant(&v);
    let nested = |fs: &BtrfsFs| {
        subvolume_paths(fs)
            .into_iter()
            .filter(|p| p.contains("inner") || p.contains("side"))
            .count()
    };
    assert_eq!(nested(&fs), 3, "{:?}", subvolume_paths(&fs));
    let before = subvolume_paths(&fs);

    let err = m
        .create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .expect_err("a snapshot would leave the nested subvolumes out");
    let text = err.to_string();
    assert!(
        text.contains("2 btrfs subvolume(s) made inside it"),
        "the two directly inside v: {text}"
    );
    assert!(m.volume("s").is_err(), "no snapshot recorded");
    assert_eq!(
        subvolume_paths(&fs),
        before,
        "the refused snapshot left nothing"
    );

    // A receive replaces v's content: the old content, nested subvolumes
    // and all, is deleted.
    m.create_volume("p", Some("w"), Meta::new()).await.unwrap();
    m.create_snapshot_as("w", Some("sw"), Meta::new())
        .await
        .unwrap();
    let mut stream = Vec::new();
    m.send_snapshot("sw", &[], &mut stream).await.unwrap();
    let received = m.receive_snapshot("v", stream.as_slice()).await.unwrap();
    assert_eq!(nested(&fs), 0, "{:?}", subvolume_paths(&fs));
    assert!(!v.join("inner").exists());

    // More than one search of the root tree returns (about 60 a call).
    nest_subvolumes_as_a_tenant(&v);
    std::fs::create_dir(v.join("many")).unwrap();
    for i in 0..150 {
        let sub = v.join("many").join(format!("inner-{i}"));
        btrfs(&["subvolume", "create"], &[&sub]);
    }
    assert_eq!(nested(&fs), 153);
    let err = m
        .create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .expect_err("refused again");
    assert!(
        err.to_string()
            .contains("152 btrfs subvolume(s) made inside it"),
        "{err}"
    );
    m.destroy_volume(&received.id).await.unwrap();
    m.destroy_volume("v").await.unwrap();
    assert!(!v.exists());
    assert_eq!(nested(&fs), 0, "{:?}", subvolume_paths(&fs));
    m.close().await;
}

/// Runs ioctl `request` on directory `path` with argument `arg` (bytes,
/// written back by the kernel and discarded), as `nobody`: what a tenant
/// owning its volume can do from inside it. Only modules python3-minimal
/// carries (fcntl is built in).
fn ioctl_as_nobody(path: &Path, request: u64, arg: &[u8], what: &str) {
    const SCRIPT: &str = "import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.ioctl(fd, int(sys.argv[2]), bytearray.fromhex(sys.argv[3]))
";
    let hex = arg.iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    let out = common::as_nobody(&[
        "/usr/bin/python3",
        "-c",
        SCRIPT,
        path.to_str().unwrap(),
        &request.to_string(),
        &hex,
    ]);
    assert!(out.status.success(), "{what}: {out:?}");
}

/// Sets the received UUID of the subvolume at `path` to `uuid`, as
/// `nobody` (`BTRFS_IOC_SET_RECEIVED_SUBVOL`, which needs only ownership of
/// the subvolume's root).
fn set_received_uuid_as_nobody(path: &Path, uuid: Uuid) {
    // `struct btrfs_ioctl_received_subvol_args` (200 bytes): the UUID,
    // then stransid 5.
    let mut arg = [0u8; 200];
    arg[0..16].copy_from_slice(uuid.as_bytes());
    arg[16..24].copy_from_slice(&5u64.to_le_bytes());
    let request = (3 << 30) | (0xc8 << 16) | (0x94 << 8) | 0x25;
    ioctl_as_nobody(path, request, &arg, "set the received UUID");
}

/// A read-only btrfs snapshot keeps its source's received UUID, and the
/// owner of a subvolume's root may set one (`BTRFS_IOC_SET_RECEIVED_SUBVOL`):
/// a tenant owning its volume chose the identity (`details[guid]`, what a
/// send declares and what pulls and receives match on) of every snapshot
/// volmgr took of it. A snapshot is now taken writable (which drops a
/// received UUID) and then made read-only: its identity is its own UUID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_choose_the_identity_of_a_snapshot_of_its_volume() {
    let test = "a_tenant_cannot_choose_the_identity_of_a_snapshot_of_its_volume";
    let Some((_fs, _state, m, v)) = one_volume(test).await else {
        return;
    };
    std::os::unix::fs::chown(&v, Some(65534), Some(65534)).unwrap();
    let chosen = Uuid::from_u128(0x1122_3344_5566_7788_9900_aabb_ccdd_eeff);
    {
        let bound = Bound::new(&v);
        set_received_uuid_as_nobody(&bound.at, chosen);
    }
    assert_eq!(
        show_field(&v, "Received UUID:"),
        chosen.to_string(),
        "the tenant set it"
    );
    let s = m
        .create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .unwrap();
    let s_path = PathBuf::from(&s.location);
    assert_eq!(s.details[DETAIL_GUID], show_field(&s_path, "UUID:"));
    assert_ne!(s.details[DETAIL_GUID], chosen.to_string());
    assert_eq!(show_field(&s_path, "Received UUID:"), "-");
    assert_eq!(
        btrfs(&["property", "get", "-ts"], &[&s_path]).trim(),
        "ro=true"
    );
    let mut stream = Vec::new();
    m.send_snapshot("s", &[], &mut stream).await.unwrap();
    assert!(
        !stream
            .windows(16)
            .any(|w| w == chosen.as_bytes().as_slice()),
        "the stream does not declare the tenant's UUID"
    );
    m.close().await;
}

/// A snapshot is built writable and made read-only before it is placed
/// (see `a_tenant_cannot_choose_the_identity_of_a_snapshot_of_its_volume`);
/// a process killed in between leaves a staged writable snapshot. Whatever
/// places it (here `finish` of the staged item) makes it read-only first:
/// a snapshot is never in place writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_writable_snapshot_is_made_read_only_before_it_is_placed() {
    let test = "a_staged_writable_snapshot_is_made_read_only_before_it_is_placed";
    let Some((_fs, _state, m, v)) = one_volume(test).await else {
        return;
    };
    m.close().await;
    let root = v.parent().unwrap().parent().unwrap().parent().unwrap();
    let op = Uuid::now_v7();
    let stage = root.join(".volmgr/stage").join(op.to_string());
    std::fs::create_dir(&stage).unwrap();
    std::fs::write(stage.join("tag"), tag_line("s", op, "snapshot", "v")).unwrap();
    btrfs(&["subvolume", "snapshot"], &[&v, &stage.join("vol")]);
    let p = BtrfsProvider::new(root).unwrap();
    let found = p
        .inventory()
        .unwrap()
        .into_iter()
        .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == "s"))
        .expect("the staged snapshot is in the inventory");
    let placed = p.finish(&found).unwrap();
    let s = Path::new(&placed.location);
    assert_eq!(btrfs(&["property", "get", "-ts"], &[s]).trim(), "ro=true");
    assert_eq!(placed.details[DETAIL_GUID], show_field(s, "UUID:"));
}

/// Sets (or clears) the read-only flag of the subvolume at `path`, as
/// `nobody` (`BTRFS_IOC_SUBVOL_SETFLAGS`, which needs only ownership of the
/// subvolume's root).
fn set_read_only_as_nobody(path: &Path, ro: bool) {
    let flags: u64 = if ro { 2 } else { 0 };
    let request = (1 << 30) | (0x8 << 16) | (0x94 << 8) | 0x1a;
    ioctl_as_nobody(
        path,
        request,
        &flags.to_le_bytes(),
        "set the read-only flag",
    );
}

/// The owner of a volume's root may make its subvolume read-only from
/// inside (`BTRFS_IOC_SUBVOL_SETFLAGS`), and btrfs moves no read-only
/// subvolume to another directory: a receive into such a volume failed
/// with an internal `EROFS` at the exchange of its content, for as long as
/// the tenant kept it so. The content (and the flag set on it) is being
/// replaced: the receive makes it writable and goes on. Snapshot, fork,
/// send and destroy of such a volume need nothing of the kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_its_tenant_made_read_only_still_takes_a_receive() {
    let test = "a_volume_its_tenant_made_read_only_still_takes_a_receive";
    let Some((_fs, _state, m, v)) = one_volume(test).await else {
        return;
    };
    std::fs::write(v.join("f"), b"old").unwrap();
    let src = m
        .create_volume("p", Some("src"), Meta::new())
        .await
        .unwrap();
    std::fs::write(Path::new(&src.location).join("f"), b"new").unwrap();
    m.create_snapshot_as("src", Some("ss"), Meta::new())
        .await
        .unwrap();
    let mut stream = Vec::new();
    m.send_snapshot("ss", &[], &mut stream).await.unwrap();
    std::os::unix::fs::chown(&v, Some(65534), Some(65534)).unwrap();
    {
        let bound = Bound::new(&v);
        set_read_only_as_nobody(&bound.at, true);
    }
    assert_eq!(btrfs(&["property", "get", "-ts"], &[&v]).trim(), "ro=true");
    let r = m.receive_snapshot("v", stream.as_slice()).await.unwrap();
    assert_eq!(std::fs::read(v.join("f")).unwrap(), b"new");
    assert_eq!(btrfs(&["property", "get", "-ts"], &[&v]).trim(), "ro=false");
    // And the volume goes on like any other.
    let s = m
        .create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .unwrap();
    m.fork_volume("s", Some("f"), Meta::new()).await.unwrap();
    for id in ["f", "s", &r.id, "v"] {
        m.destroy_volume(id).await.unwrap();
    }
    assert!(m.volume(&s.id).is_err());
    m.close().await;
}

/// btrfs deletes no subvolume inside a read-only one (`EROFS`), and a
/// tenant may make read-only both its volume and a subvolume it nested in
/// it: the volume's destroy failed for good (an internal error at every
/// try). The parent of each nested subvolume is made writable, by id, and
/// the destroy completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_make_its_volume_undestroyable_by_making_subvolumes_read_only() {
    let test = "a_tenant_cannot_make_its_volume_undestroyable_by_making_subvolumes_read_only";
    let Some((fs, _state, m, v)) = one_volume(test).await else {
        return;
    };
    let before = fs.subvolume_count();
    nest_subvolumes_as_a_tenant(&v);
    {
        let bound = Bound::new(&v);
        // `inner` holds `deeper`; the volume holds `inner` and `dir/side`.
        set_read_only_as_nobody(&bound.at.join("inner"), true);
        set_read_only_as_nobody(&bound.at, true);
    }
    assert_eq!(fs.subvolume_count(), before + 3);
    m.destroy_volume("v").await.unwrap();
    assert!(m.volume("v").is_err());
    assert_eq!(
        fs.subvolume_count(),
        before - 1,
        "the volume and all three nested are gone"
    );
    let root = v.ancestors().nth(3).unwrap();
    assert_eq!(
        std::fs::read_dir(root.join(".volmgr/trash"))
            .unwrap()
            .count(),
        0
    );
    m.close().await;
}

/// Sets data volume `id`'s capacity through the manager.
async fn set_capacity(m: &Manager, id: &str, bytes: u64) -> Result<(), ManagerError> {
    m.set_volume_attributes(id, Some(bytes), ProviderConfig::new())
        .await
        .map(drop)
}

/// The qgroups `btrfs qgroup show` lists, as `(id, referenced bytes,
/// members)`.
fn qgroups(fs: &BtrfsFs) -> Vec<(String, u64, String)> {
    btrfs(&["qgroup", "show", "--raw", "-c", "--sync"], &[fs.path()])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rfer = f.get(1)?.parse().ok()?;
            Some((f[0].to_owned(), rfer, f.get(3)?.to_string()))
        })
        .collect()
}

/// Writes zeros into `file` (as `nobody` if `tenant`), 64 KiB at a time
/// and synced, up to `mib` MiB or until a write fails; returns the bytes
/// the file then holds and `dd`'s complaint.
fn fill(file: &Path, mib: usize, tenant: bool) -> (u64, String) {
    let (of, count) = (
        format!("of={}", file.display()),
        format!("count={}", mib * 16),
    );
    let argv = ["dd", "if=/dev/zero", &of, "bs=64K", &count, "conv=fsync"];
    let out = if tenant {
        common::as_nobody(&argv)
    } else {
        Command::new(argv[0]).args(&argv[1..]).output().unwrap()
    };
    let written = std::fs::metadata(file).map_or(0, |m| m.len());
    (written, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Story: a volume's capacity was a qgroup limit on its subvolume's own
/// qgroup `0/<id>`. Any user who may write a directory may create a btrfs
/// subvolume there, whose qgroup is its own: a tenant nested one in its
/// volume limited to 1 MiB and wrote 20 MiB into it (or as much as it
/// liked) on the file system every tenant shares.
///
/// Property: the limit is on the volume's group `1/<id>`, and under simple
/// quotas the kernel makes every subvolume nested in the volume a member
/// of it, however deep: the tenant's writes in a nested subvolume (made
/// the plain way, as `nobody` through a bind mount) and in one nested in
/// that stop at `EDQUOT` within the capacity, both together; the
/// volume's usage counts them (a capacity below it is refused); its
/// destroy leaves no qgroup of the volume behind, and a reopen is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_bounds_the_subvolumes_a_tenant_nests_in_its_volume() {
    let test = "a_capacity_bounds_the_subvolumes_a_tenant_nests_in_its_volume";
    let Some((fs, state, m, v)) = one_volume(test).await else {
        return;
    };
    const CAPACITY: u64 = 1 << 20;
    set_capacity(&m, "v", CAPACITY).await.unwrap();
    std::os::unix::fs::chown(&v, Some(65534), Some(65534)).unwrap();
    let bound = Bound::new(&v);
    for sub in ["inner", "inner/deeper"] {
        let path = bound.at.join(sub);
        let out = common::as_nobody(&["btrfs", "subvolume", "create", path.to_str().unwrap()]);
        assert!(out.status.success(), "nobody made {sub}: {out:?}");
    }
    let (deep, complaint) = fill(&bound.at.join("inner/deeper/f"), 20, true);
    assert!(
        complaint.contains("Disk quota exceeded"),
        "writes in a subvolume nested twice stop at the volume's capacity: {deep} bytes \
         written, {complaint}"
    );
    let (inner, complaint) = fill(&bound.at.join("inner/f"), 20, true);
    assert!(complaint.contains("Disk quota exceeded"), "{complaint}");
    // btrfs reserves data before it writes it (the qgroup's reservation is
    // checked in the write), so what is written never passes the limit:
    // measured 960 KiB of 1 MiB, the rest the subvolumes' metadata.
    println!("FIGURE written in nested subvolumes: {deep} + {inner} bytes of {CAPACITY}");
    assert!(
        deep + inner <= CAPACITY,
        "{deep} + {inner} bytes written in nested subvolumes of a volume of {CAPACITY} bytes"
    );

    // The volume's usage counts what its nested subvolumes hold.
    let err = set_capacity(&m, "v", 64 << 10)
        .await
        .expect_err("below what the nested subvolumes hold");
    let text = err.to_string();
    let used: u64 = text
        .split(" holds ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a CapacityBelowUsage: {text}"));
    assert!(
        used >= deep + inner && used <= CAPACITY,
        "usage {used} counts {deep} + {inner} bytes"
    );
    let id = show_field(&v, "Subvolume ID:");
    let group = format!("1/{id}");
    assert!(
        qgroups(&fs).iter().any(|(q, _, _)| *q == group),
        "{:?}",
        qgroups(&fs)
    );

    drop(bound);
    m.destroy_volume("v").await.unwrap();
    btrfs(&["subvolume", "sync"], &[fs.path()]);
    let left: Vec<_> = qgroups(&fs)
        .into_iter()
        .filter(|(q, _, _)| q.starts_with("1/") || q.as_str() != "0/5")
        .collect();
    assert!(
        left.is_empty(),
        "qgroups left by the destroyed volume: {left:?}"
    );
    m.close().await;
    let m = open_with_provider(state.path(), &fs.path().join("volumes")).await;
    assert_eq!(cases(&m), [], "a clean reopen");
    assert!(m.volume("v").is_err());
    m.close().await;
}

/// How the kernel accounts quotas on `fs`: `squota` (simple), `qgroup`
/// (full) or `none` (`/sys/fs/btrfs/<uuid>/qgroups/mode`).
fn quota_mode(fs: &BtrfsFs) -> String {
    let uuid = btrfs(&["filesystem", "show"], &[fs.path()])
        .split("uuid: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .expect("a uuid")
        .to_owned();
    std::fs::read_to_string(format!("/sys/fs/btrfs/{uuid}/qgroups/mode"))
        .map_or_else(|_| "none".into(), |m| m.trim().to_owned())
}

/// The members of qgroup `group` (`btrfs qgroup show -c`).
fn members(fs: &BtrfsFs, group: &str) -> Vec<String> {
    qgroups(fs)
        .into_iter()
        .find(|(q, _, _)| q == group)
        .map(|(_, _, m)| {
            m.split(',')
                .filter(|m| *m != "-")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The kernel takes an inheritance list from any creator of a subvolume,
/// and an explicit one replaces the automatic membership of simple quotas:
/// a tenant (`nobody`) naming another volume's group with `btrfs subvolume
/// create -i` places its nested subvolume outside its own group, charged
/// to the other volume. The kernel cannot refuse it (module doc); the
/// volume's next capacity change moves the subvolume back into the
/// volume's group and out of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_subvolume_placed_in_another_group_is_moved_back_by_the_next_capacity_change() {
    let test =
        "a_nested_subvolume_placed_in_another_group_is_moved_back_by_the_next_capacity_change";
    let Some((fs, _state, m, v)) = one_volume(test).await else {
        return;
    };
    assert_eq!(
        quota_mode(&fs),
        "squota",
        "enabled when the provider opened"
    );
    let w = PathBuf::from(
        m.create_volume("p", Some("w"), Meta::new())
            .await
            .unwrap()
            .location,
    );
    for volume in ["v", "w"] {
        set_capacity(&m, volume, 8 << 20).await.unwrap();
    }
    let (v_group, w_group) = (
        format!("1/{}", show_field(&v, "Subvolume ID:")),
        format!("1/{}", show_field(&w, "Subvolume ID:")),
    );
    std::os::unix::fs::chown(&v, Some(65534), Some(65534)).unwrap();
    let bound = Bound::new(&v);
    let inner = bound.at.join("inner");
    let out = common::as_nobody(&[
        "btrfs",
        "subvolume",
        "create",
        "-i",
        &w_group,
        inner.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let inner_qgroup = format!("0/{}", show_field(&v.join("inner"), "Subvolume ID:"));
    assert!(
        members(&fs, &w_group).contains(&inner_qgroup),
        "{:?}",
        qgroups(&fs)
    );
    assert!(!members(&fs, &v_group).contains(&inner_qgroup));

    set_capacity(&m, "v", 16 << 20).await.unwrap();
    assert!(
        members(&fs, &v_group).contains(&inner_qgroup),
        "{:?}",
        qgroups(&fs)
    );
    assert!(
        !members(&fs, &w_group).contains(&inner_qgroup),
        "{:?}",
        qgroups(&fs)
    );
    drop(bound);
    m.close().await;
}

/// Full quotas an operator (or a volmgr before groups) enabled are kept:
/// the provider never switches the mode. A capacity then bounds the
/// subvolumes nested in the volume when it is set (made members of its
/// group), and a limit the old provider left on the volume's own qgroup
/// is cleared so it cannot cap the new capacity; a subvolume nested later
/// is outside the group, which full quotas never extend (documented, and
/// warned at open and at each capacity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_quotas_are_kept_and_bound_what_was_nested_when_the_capacity_was_set() {
    let test = "full_quotas_are_kept_and_bound_what_was_nested_when_the_capacity_was_set";
    let Some(fs) = BtrfsFs::for_test(test, 512) else {
        return;
    };
    btrfs(&["quota", "enable"], &[fs.path()]);
    let state = tempfile::tempdir().unwrap();
    let m = open_with_provider(state.path(), &fs.path().join("volumes")).await;
    assert_eq!(quota_mode(&fs), "qgroup", "full quotas kept");
    let v = PathBuf::from(
        m.create_volume("p", Some("v"), Meta::new())
            .await
            .unwrap()
            .location,
    );
    btrfs(&["subvolume", "create"], &[&v.join("inner")]);
    // What the provider before groups set: a limit on 0/<id>.
    btrfs(&["qgroup", "limit", "1M"], &[&v]);
    const CAPACITY: u64 = 4 << 20;
    set_capacity(&m, "v", CAPACITY).await.unwrap();
    let own = format!("0/{}", show_field(&v, "Subvolume ID:"));
    let limits = btrfs(&["qgroup", "show", "--raw", "-r"], &[fs.path()]);
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with(&format!("{own} ")) && l.contains("none")),
        "the old limit on {own} is cleared: {limits}"
    );
    btrfs(&["subvolume", "create"], &[&v.join("later")]);
    let group = format!("1/{}", show_field(&v, "Subvolume ID:"));
    let later = format!("0/{}", show_field(&v.join("later"), "Subvolume ID:"));
    assert!(
        !members(&fs, &group).contains(&later),
        "full quotas do not extend the group: {:?}",
        qgroups(&fs)
    );
    let (written, complaint) = fill(&v.join("inner/f"), 8, false);
    assert!(
        complaint.contains("Disk quota exceeded"),
        "{written}: {complaint}"
    );
    assert!(
        written <= CAPACITY,
        "{written} bytes in a volume of {CAPACITY}"
    );
    m.destroy_volume("v").await.unwrap();
    assert!(
        qgroups(&fs).iter().all(|(q, _, _)| *q != group),
        "{:?}",
        qgroups(&fs)
    );
    m.close().await;
}

/// Story: a receive replaces a volume's subvolume by a new one (a new
/// subvolume id), and the capacity was a limit on the old subvolume's
/// qgroup: after a receive the volume was unlimited (its journal still
/// saying otherwise).
///
/// Property: the new content gets the capacity (a group of its own, with
/// the same limit) before it is exchanged in; the old content's group goes
/// with it; writes in the volume, and in a subvolume nested in it, stop at
/// the capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_survives_a_receive_into_its_volume() {
    let test = "a_capacity_survives_a_receive_into_its_volume";
    let Some((fs, _state, m, v)) = one_volume(test).await else {
        return;
    };
    const CAPACITY: u64 = 1 << 20;
    set_capacity(&m, "v", CAPACITY).await.unwrap();
    let before = format!("1/{}", show_field(&v, "Subvolume ID:"));
    m.create_volume("p", Some("w"), Meta::new()).await.unwrap();
    m.create_snapshot_as("w", Some("sw"), Meta::new())
        .await
        .unwrap();
    let mut stream = Vec::new();
    m.send_snapshot("sw", &[], &mut stream).await.unwrap();
    m.receive_snapshot("v", stream.as_slice()).await.unwrap();
    let after = format!("1/{}", show_field(&v, "Subvolume ID:"));
    assert_ne!(before, after, "a receive gives the volume a new subvolume");
    let groups: Vec<String> = qgroups(&fs)
        .into_iter()
        .map(|(q, _, _)| q)
        .filter(|q| q.starts_with("1/"))
        .collect();
    assert_eq!(groups, [after], "the old content's group went with it");

    btrfs(&["subvolume", "create"], &[&v.join("inner")]);
    let (written, complaint) = fill(&v.join("inner/f"), 4, false);
    assert!(
        complaint.contains("Disk quota exceeded") && written <= CAPACITY,
        "{written} bytes written after a receive into a volume of {CAPACITY}: {complaint}"
    );
    m.close().await;
}
