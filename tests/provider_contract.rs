//! The provider contract suite: one set of cases, run through the Manager
//! API on every real provider (see `common/backends.rs` for the selection by
//! `VOLMGR_CONTRACT_PROVIDER` and for adding a provider).
//!
//! Covered: every verb (create, list, inspect, snapshot, fork, destroy,
//! send, receive full and incremental with the data checked) and every error
//! (bad ids, no such volume/provider, wrong kind, has dependents, busy); the
//! provider trait's own idempotence and tagging; the reconciliation rows a
//! real provider can be put into (create rolled forward, create interrupted,
//! destroy finished, volume lost, orphan reported, foreign ignored), each
//! built from a hand-written journal plus real provider state; and Flynn's
//! two persistence tests with a host restart (unmount/mount, pool
//! export/import) between close and reopen.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::backends::Backend;
use common::{noise, tree};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;
use volmgr::journal::{Journal, JournalConfig};
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::model::VolumeId;
use volmgr::provider::{Presence, ProviderError, VolumeRef, VolumeSpec};
use volmgr::state::{
    Action, Case, DETAIL_GUID, Details, Done, Meta, OpResult, ProviderRecord, Record, VolumeKind,
    VolumeStatus,
};

/// Runs every case on the backend that `$setup` builds.
macro_rules! contract_suite {
    ($module:ident, $setup:path) => {
        mod $module {
            contract_suite!(@cases $module, $setup,
                create_inspect_list_and_destroy_round_trip,
                snapshot_is_a_frozen_read_only_copy_and_fork_a_writable_one,
                provider_calls_are_idempotent_and_tagged_with_their_operation,
                full_then_incremental_transfer_carries_the_data,
                a_stream_fits_only_a_target_whose_newest_snapshot_is_its_base,
                volumes_with_dependents_refuse_destroy_until_they_are_gone,
                operation_in_flight_makes_its_volume_busy_but_not_others,
                bad_input_gets_typed_errors_and_creates_or_journals_nothing,
                pending_create_found_tagged_rolls_forward,
                pending_create_found_absent_fails_as_interrupted,
                pending_destroy_of_present_volume_is_finished,
                volume_deleted_behind_the_managers_back_is_reported_lost,
                tagged_item_unknown_to_the_journal_is_reported_as_orphan,
                untagged_item_under_the_root_is_foreign_and_never_touched,
                volume_and_data_survive_host_restart_without_the_default_factory,
                snapshots_and_received_snapshot_survive_host_restart,
            );
        }
    };
    (@cases $module:ident, $setup:path, $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let test = stringify!($case);
                let _one_at_a_time = super::SERIAL.lock().await;
                if let Some(backend) = $setup(test) {
                    super::$case(backend).await;
                    println!("PASS {test} on {}", stringify!($module));
                }
            }
        )*
    };
}

contract_suite!(dir, crate::common::backends::dir);
contract_suite!(btrfs, crate::common::backends::btrfs);
contract_suite!(zfs, crate::common::backends::zfs);

/// The cases of this binary run one at a time. Run concurrently, a case that
/// closes its manager and at once reopens it can find the journal's `LOCK`
/// still held: the lock is an `flock` on an open file description, and a
/// child that another case's provider is spawning at that moment holds a copy
/// of every descriptor until its `exec` (close-on-exec releases it there).
/// One manager per process, as in a host agent, never meets this.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PROVIDER: &str = "p";

fn config(b: &dyn Backend) -> ManagerConfig {
    common::config::with_factory(b.kind(), b.factory())
}

/// Opens the manager; registers provider `p` on the first open.
async fn open(state: &Path, b: &dyn Backend) -> Manager {
    let m = Manager::open(state, config(b)).await.expect("open");
    if m.providers().is_empty() {
        m.add_provider(PROVIDER, b.kind(), b.config())
            .await
            .expect("add provider");
    }
    m
}

fn meta(pairs: &[(&str, &str)]) -> Meta {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn write(location: &str, name: &str, data: &[u8]) {
    std::fs::write(Path::new(location).join(name), data)
        .unwrap_or_else(|e| panic!("write {name} into {location}: {e}"));
}

fn read(location: &str, name: &str) -> Option<Vec<u8>> {
    std::fs::read(Path::new(location).join(name)).ok()
}

/// Tagged items the provider shows, by volume id.
fn tagged(b: &dyn Backend) -> BTreeMap<String, volmgr::provider::Found> {
    b.provider()
        .inventory()
        .expect("inventory")
        .into_iter()
        .filter_map(|f| f.tag.clone().map(|t| (t.volume, f)))
        .collect()
}

async fn send_to_vec(m: &Manager, snapshot: &str, haves: &[String]) -> (Vec<u8>, bool) {
    let mut stream = Vec::new();
    let stats = m
        .send_snapshot(snapshot, haves, &mut stream)
        .await
        .expect("send");
    assert_eq!(stats.bytes, stream.len() as u64, "stats count every byte");
    (stream, stats.incremental)
}

pub async fn create_inspect_list_and_destroy_round_trip(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    let v = m
        .create_volume(PROVIDER, Some("vol-1"), meta(&[("app", "web")]))
        .await
        .unwrap();
    assert_eq!(v.id, "vol-1");
    assert_eq!(v.kind, VolumeKind::Data);
    assert_eq!(v.provider, PROVIDER);
    assert_eq!(v.parent, None);
    assert_eq!(v.meta, meta(&[("app", "web")]));
    assert_eq!(v.status, VolumeStatus::Live);
    assert_eq!(
        m.volume("vol-1").unwrap(),
        v,
        "inspect returns what create did"
    );
    assert_eq!(m.volumes(), vec![v.clone()], "list shows it");
    assert!(
        Path::new(&v.location).is_dir(),
        "{} is a directory",
        v.location
    );
    write(&v.location, "hello", b"world");
    assert_eq!(read(&v.location, "hello").as_deref(), Some(&b"world"[..]));
    let items = tagged(&*b);
    let found = &items["vol-1"];
    assert_eq!(found.presence, Presence::Complete);
    assert_eq!(found.location, v.location);
    assert_eq!(found.tag.as_ref().unwrap().op, v.op, "tagged with its op");

    let auto = m.create_volume(PROVIDER, None, Meta::new()).await.unwrap();
    assert!(
        Uuid::parse_str(&auto.id).is_ok(),
        "generated id {}",
        auto.id
    );
    assert_ne!(auto.location, v.location);

    m.destroy_volume("vol-1").await.unwrap();
    assert!(matches!(
        m.volume("vol-1"),
        Err(ManagerError::NoSuchVolume(_))
    ));
    assert!(!Path::new(&v.location).exists(), "its storage is gone");
    assert!(!tagged(&*b).contains_key("vol-1"));
    assert!(matches!(
        m.destroy_volume("vol-1").await,
        Err(ManagerError::NoSuchVolume(_))
    ));
    assert_eq!(m.volumes(), vec![auto]);
    m.close().await;
}

pub async fn snapshot_is_a_frozen_read_only_copy_and_fork_a_writable_one(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    let v = m
        .create_volume(PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap();
    write(&v.location, "a", b"1");
    let s = m
        .create_snapshot("v", meta(&[("why", "test")]))
        .await
        .unwrap();
    assert_eq!(s.kind, VolumeKind::Snapshot);
    assert_eq!(s.parent.as_deref(), Some("v"));
    assert_eq!(s.meta, meta(&[("why", "test")]));
    assert!(
        s.details.get(DETAIL_GUID).is_some_and(|g| !g.is_empty()),
        "a snapshot has an identity: {:?}",
        s.details
    );
    write(&v.location, "a", b"2");
    assert_eq!(read(&s.location, "a").as_deref(), Some(&b"1"[..]), "frozen");
    if b.snapshots_refuse_writes() {
        assert!(
            std::fs::write(Path::new(&s.location).join("x"), b"no").is_err(),
            "a snapshot is read-only"
        );
    }

    let f = m.fork_volume(&s.id, Some("f"), Meta::new()).await.unwrap();
    assert_eq!(f.kind, VolumeKind::Data);
    assert_eq!(f.parent.as_deref(), Some(s.id.as_str()));
    assert_eq!(read(&f.location, "a").as_deref(), Some(&b"1"[..]));
    write(&f.location, "a", b"3");
    assert_eq!(read(&s.location, "a").as_deref(), Some(&b"1"[..]));
    assert_eq!(read(&v.location, "a").as_deref(), Some(&b"2"[..]));

    let s2 = m.create_snapshot("v", Meta::new()).await.unwrap();
    assert_ne!(s2.details.get(DETAIL_GUID), s.details.get(DETAIL_GUID));

    let err = m.create_snapshot(&s.id, Meta::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::WrongKind {
                expected: VolumeKind::Data,
                ..
            }
        ),
        "{err}"
    );
    let err = m.fork_volume("v", None, Meta::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::WrongKind {
                expected: VolumeKind::Snapshot,
                ..
            }
        ),
        "{err}"
    );
    let err = m
        .fork_volume(&s.id, Some("f"), Meta::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::AlreadyExists(_)), "{err}");
    m.close().await;
}

pub async fn provider_calls_are_idempotent_and_tagged_with_their_operation(b: Box<dyn Backend>) {
    // The trait's contract, directly: the manager relies on it in recovery.
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    m.close().await;
    let p = b.provider();
    let op = Uuid::now_v7();
    let spec = VolumeSpec {
        id: VolumeId::new("x").unwrap(),
        op,
        kind: VolumeKind::Data,
    };
    let first = p.create_volume(&spec).unwrap();
    let again = p.create_volume(&spec).unwrap();
    assert_eq!(first, again, "same op: same result");
    let other = VolumeSpec {
        op: Uuid::now_v7(),
        ..spec
    };
    assert!(matches!(
        p.create_volume(&other),
        Err(ProviderError::AlreadyExists(_))
    ));
    let details = Details::new();
    let x = VolumeRef {
        id: VolumeId::new("x").unwrap(),
        kind: VolumeKind::Data,
        parent: None,
        location: &first.location,
        details: &details,
    };
    let snap_op = Uuid::now_v7();
    let snap_spec = VolumeSpec {
        id: VolumeId::new("x-snap").unwrap(),
        op: snap_op,
        kind: VolumeKind::Snapshot,
    };
    let snap = p.create_snapshot(&x, &snap_spec).unwrap();
    assert_eq!(p.create_snapshot(&x, &snap_spec).unwrap(), snap);
    let items = tagged(&*b);
    let tag = items["x-snap"].tag.clone().unwrap();
    assert_eq!(
        (tag.op, tag.kind, tag.parent.as_deref()),
        (snap_op, VolumeKind::Snapshot, Some("x"))
    );
    assert_eq!(items["x-snap"].details, snap.details, "inventory agrees");
    assert_eq!(items["x"].tag.as_ref().unwrap().op, op);
    let snap_ref = VolumeRef {
        id: VolumeId::new("x-snap").unwrap(),
        kind: VolumeKind::Snapshot,
        parent: Some("x"),
        location: &snap.location,
        details: &snap.details,
    };
    p.destroy(&snap_ref).unwrap();
    p.destroy(&snap_ref).unwrap();
    p.destroy(&x).unwrap();
    assert!(tagged(&*b).is_empty());
    // Nothing of an operation that never ran is left to abort.
    p.abort_partial(Uuid::now_v7()).unwrap();
}

pub async fn full_then_incremental_transfer_carries_the_data(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    let src = m
        .create_volume(PROVIDER, Some("src"), Meta::new())
        .await
        .unwrap();
    write(&src.location, "big", &noise(1, 2 << 20));
    std::fs::create_dir(Path::new(&src.location).join("dir")).unwrap();
    write(&src.location, "dir/small", b"v1");
    let s1 = m.create_snapshot("src", Meta::new()).await.unwrap();
    let dst = m
        .create_volume(PROVIDER, Some("dst"), Meta::new())
        .await
        .unwrap();
    write(&dst.location, "local", b"replaced by the receive");

    let haves = m.list_haves("dst").unwrap();
    assert!(haves.is_empty());
    let (full, incremental) = send_to_vec(&m, &s1.id, &haves).await;
    assert!(!incremental, "nothing in common: a full stream");
    let r1 = m.receive_snapshot("dst", full.as_slice()).await.unwrap();
    assert_eq!(r1.kind, VolumeKind::Snapshot);
    assert_eq!(r1.parent.as_deref(), Some("dst"));
    assert_eq!(
        r1.details.get(DETAIL_GUID),
        s1.details.get(DETAIL_GUID),
        "the received snapshot has the sender's identity"
    );
    assert_eq!(tree(Path::new(&r1.location)), tree(Path::new(&s1.location)));
    assert_eq!(
        tree(Path::new(&dst.location)),
        tree(Path::new(&s1.location)),
        "the target's content became the stream's"
    );

    write(&src.location, "dir/small", b"v2");
    write(&src.location, "change", &noise(2, 64 << 10));
    let s2 = m.create_snapshot("src", Meta::new()).await.unwrap();
    let haves = m.list_haves("dst").unwrap();
    assert_eq!(haves, vec![s1.details[DETAIL_GUID].clone()]);
    let (inc, incremental) = send_to_vec(&m, &s2.id, &haves).await;
    assert!(incremental, "the receiver has s1: an incremental stream");
    assert!(
        inc.len() * 4 < full.len(),
        "incremental {} bytes vs full {}",
        inc.len(),
        full.len()
    );
    let r2 = m.receive_snapshot("dst", inc.as_slice()).await.unwrap();
    assert_eq!(r2.details.get(DETAIL_GUID), s2.details.get(DETAIL_GUID));
    let expected = tree(Path::new(&s2.location));
    assert_eq!(tree(Path::new(&r2.location)), expected);
    assert_eq!(tree(Path::new(&dst.location)), expected);
    assert_eq!(
        tree(Path::new(&r1.location)),
        tree(Path::new(&s1.location)),
        "the first received snapshot is unchanged"
    );

    // A stream whose base the receiver lacks is refused and changes nothing.
    let other = m
        .create_volume(PROVIDER, Some("other"), Meta::new())
        .await
        .unwrap();
    write(&other.location, "mine", b"keep");
    let err = m
        .receive_snapshot("other", inc.as_slice())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::StreamDoesNotFit { .. }),
        "{err}"
    );
    assert_eq!(read(&other.location, "mine").as_deref(), Some(&b"keep"[..]));
    let err = m
        .receive_snapshot("other", &b"not a stream"[..])
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::Provider { .. }), "{err}");
    assert_eq!(read(&other.location, "mine").as_deref(), Some(&b"keep"[..]));
    assert!(
        m.list_haves("other").unwrap().is_empty(),
        "failed receives record nothing"
    );
    let items = tagged(&*b);
    assert_eq!(
        items.keys().cloned().collect::<Vec<_>>(),
        {
            let mut ids: Vec<String> = m.volumes().into_iter().map(|v| v.id).collect();
            ids.sort();
            ids
        },
        "failed receives leave nothing on the provider"
    );
    m.close().await;
}

/// One rule on every provider (the one `zfs recv` applies): a target takes
/// a stream only on top of its newest snapshot. A second pull of a snapshot
/// it holds, a pull of an older snapshot (which would put its content back
/// behind newer snapshots), and a full stream into a target with snapshots
/// are refused before anything is journaled or changed.
pub async fn a_stream_fits_only_a_target_whose_newest_snapshot_is_its_base(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    let src = m
        .create_volume(PROVIDER, Some("src"), Meta::new())
        .await
        .unwrap();
    let mut snaps = Vec::new();
    for version in [&b"v1"[..], b"v2", b"v3"] {
        write(&src.location, "f", version);
        snaps.push(m.create_snapshot("src", Meta::new()).await.unwrap());
    }
    let dst = m
        .create_volume(PROVIDER, Some("dst"), Meta::new())
        .await
        .unwrap();
    // dst takes v1 in full, then v3 on top of it.
    for s in [&snaps[0], &snaps[2]] {
        let (stream, _) = send_to_vec(&m, &s.id, &m.list_haves("dst").unwrap()).await;
        m.receive_snapshot("dst", stream.as_slice()).await.unwrap();
    }
    write(&dst.location, "local", b"written after the last pull");
    let before = (m.volumes(), m.stats().operations);
    let refused = |err: ManagerError, why: &str| {
        assert!(
            matches!(&err, ManagerError::StreamDoesNotFit { target, .. } if target == "dst"),
            "{why}: {err}"
        );
    };

    // v3 again (incremental from v1, which dst has): dst holds its guid.
    let (again, incremental) = send_to_vec(&m, &snaps[2].id, &m.list_haves("dst").unwrap()).await;
    assert!(incremental);
    let err = m
        .receive_snapshot("dst", again.as_slice())
        .await
        .unwrap_err();
    refused(err, "a second pull of a held snapshot");
    // v2 (incremental from v1): dst's newest snapshot is v3, not v1.
    let (older, incremental) = send_to_vec(&m, &snaps[1].id, &m.list_haves("dst").unwrap()).await;
    assert!(incremental);
    let err = m
        .receive_snapshot("dst", older.as_slice())
        .await
        .unwrap_err();
    let text = err.to_string();
    refused(err, "an older snapshot");
    assert!(
        text.contains(&snaps[2].details[DETAIL_GUID]),
        "the message names the newest snapshot's guid: {text}"
    );
    // v2 in full: dst has snapshots.
    let (full, incremental) = send_to_vec(&m, &snaps[1].id, &[]).await;
    assert!(!incremental);
    let err = m
        .receive_snapshot("dst", full.as_slice())
        .await
        .unwrap_err();
    refused(err, "a full stream into a target with snapshots");

    assert_eq!(
        (m.volumes(), m.stats().operations),
        before,
        "nothing was journaled or recorded"
    );
    assert_eq!(read(&dst.location, "f").as_deref(), Some(&b"v3"[..]));
    assert_eq!(
        read(&dst.location, "local").as_deref(),
        Some(&b"written after the last pull"[..]),
        "the target's content is untouched"
    );
    // The rule is about the target, not the stream: v2 in full still goes
    // into a new volume.
    m.create_volume(PROVIDER, Some("fresh"), Meta::new())
        .await
        .unwrap();
    let r = m.receive_snapshot("fresh", full.as_slice()).await.unwrap();
    assert_eq!(
        r.details.get(DETAIL_GUID),
        snaps[1].details.get(DETAIL_GUID)
    );
}

pub async fn volumes_with_dependents_refuse_destroy_until_they_are_gone(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    m.create_volume(PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap();
    let s = m.create_snapshot("v", Meta::new()).await.unwrap();
    let f = m.fork_volume(&s.id, Some("f"), Meta::new()).await.unwrap();
    match m.destroy_volume("v").await.unwrap_err() {
        ManagerError::HasDependents { dependents, .. } => {
            assert_eq!(dependents, vec![s.id.clone()]);
        }
        other => panic!("expected HasDependents, got {other}"),
    }
    match m.destroy_volume(&s.id).await.unwrap_err() {
        ManagerError::HasDependents { dependents, .. } => {
            assert_eq!(dependents, vec!["f".to_string()]);
        }
        other => panic!("expected HasDependents, got {other}"),
    }
    assert_eq!(tagged(&*b).len(), 3, "refusals touched nothing");
    m.destroy_volume(&f.id).await.unwrap();
    m.destroy_volume(&s.id).await.unwrap();
    m.destroy_volume("v").await.unwrap();
    assert!(m.volumes().is_empty());
    assert!(tagged(&*b).is_empty());
    m.close().await;
}

pub async fn operation_in_flight_makes_its_volume_busy_but_not_others(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    let src = m
        .create_volume(PROVIDER, Some("src"), Meta::new())
        .await
        .unwrap();
    write(&src.location, "data", &noise(3, 1 << 20));
    let s = m.create_snapshot("src", Meta::new()).await.unwrap();
    m.create_volume(PROVIDER, Some("dst"), Meta::new())
        .await
        .unwrap();
    let (stream, _) = send_to_vec(&m, &s.id, &[]).await;
    assert!(stream.len() > 64 << 10);

    // A receive whose stream arrives slowly is in flight on "dst": once part
    // of the stream has been consumed (a write into a 4 KiB pipe completes
    // only then), its claim on the volume is taken.
    let (mut writer, reader) = tokio::io::duplex(4096);
    let m2 = m.clone();
    let receive = tokio::spawn(async move { m2.receive_snapshot("dst", reader).await });
    let half = stream.len() / 2;
    writer.write_all(&stream[..half]).await.unwrap();

    let err = m.destroy_volume("dst").await.unwrap_err();
    assert!(
        matches!(err, ManagerError::Busy(ref id) if id == "dst"),
        "{err}"
    );
    let err = m.create_snapshot("dst", Meta::new()).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::Busy(ref id) if id == "dst"),
        "{err}"
    );
    // Other volumes are not blocked meanwhile.
    m.create_volume(PROVIDER, Some("other"), Meta::new())
        .await
        .unwrap();
    m.create_snapshot("src", Meta::new()).await.unwrap();

    writer.write_all(&stream[half..]).await.unwrap();
    writer.shutdown().await.unwrap();
    drop(writer);
    let r = receive.await.unwrap().unwrap();
    assert_eq!(tree(Path::new(&r.location)), tree(Path::new(&s.location)));
    m.destroy_volume(&r.id).await.unwrap();
    m.destroy_volume("dst").await.unwrap();
    m.close().await;
}

pub async fn bad_input_gets_typed_errors_and_creates_or_journals_nothing(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    let v = m
        .create_volume(PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap();
    let s = m.create_snapshot("v", Meta::new()).await.unwrap();
    let before_seq = m.stats().durable_seq;
    let before_items = tagged(&*b);
    let long = "x".repeat(300);
    for bad in [
        "../x",
        "a/b",
        "",
        long.as_str(),
        "a\0b",
        "-rf",
        "--help",
        ".hidden",
        "a b",
    ] {
        let err = m
            .create_volume(PROVIDER, Some(bad), Meta::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ManagerError::InvalidId { .. }),
            "{bad:?}: {err}"
        );
        let err = m
            .fork_volume(&s.id, Some(bad), Meta::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ManagerError::InvalidId { .. }),
            "{bad:?}: {err}"
        );
        let err = m.destroy_volume(bad).await.unwrap_err();
        assert!(
            matches!(err, ManagerError::InvalidId { .. }),
            "{bad:?}: {err}"
        );
    }
    let mut huge = Meta::new();
    huge.insert("k".into(), "v".repeat(100_000));
    let err = m
        .create_volume(PROVIDER, Some("ok"), huge)
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::InvalidMeta(_)), "{err}");
    let err = m
        .create_volume("nope", Some("ok"), Meta::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::NoSuchProvider(_)), "{err}");
    let err = m
        .create_volume(PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::AlreadyExists(_)), "{err}");
    for err in [
        m.destroy_volume("missing").await.unwrap_err(),
        m.create_snapshot("missing", Meta::new()).await.unwrap_err(),
        m.fork_volume("missing", None, Meta::new())
            .await
            .unwrap_err(),
        m.list_haves("missing").unwrap_err(),
        m.send_snapshot("missing", &[], Vec::new())
            .await
            .unwrap_err(),
        m.receive_snapshot("missing", &b""[..]).await.unwrap_err(),
    ] {
        assert!(matches!(err, ManagerError::NoSuchVolume(_)), "{err}");
    }
    let err = m.send_snapshot("v", &[], Vec::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::WrongKind {
                expected: VolumeKind::Snapshot,
                ..
            }
        ),
        "{err}"
    );
    let err = m.receive_snapshot(&s.id, &b""[..]).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::WrongKind {
                expected: VolumeKind::Data,
                ..
            }
        ),
        "{err}"
    );
    let err = m
        .add_provider(
            "q",
            b.kind(),
            BTreeMap::from([("root".into(), "relative".into())]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::Provider { .. }), "{err}");
    assert_eq!(
        m.stats().durable_seq,
        before_seq + 2,
        "only the failed add-provider was journaled"
    );
    assert_eq!(
        tagged(&*b).keys().collect::<Vec<_>>(),
        before_items.keys().collect::<Vec<_>>()
    );
    assert_eq!(m.volumes().len(), 2);
    assert_eq!(read(&v.location, "nothing"), None);
    m.close().await;
}

// --- reconciliation rows on a real provider ---------------------------------

const T0: u64 = 1_700_000_000_000;

fn provider_records(b: &dyn Backend, op: Uuid) -> Vec<Record> {
    vec![
        Record::Intent {
            op,
            at_ms: T0,
            action: Action::AddProvider(ProviderRecord {
                id: PROVIDER.into(),
                kind: b.kind().into(),
                config: b.config(),
            }),
        },
        Record::Outcome {
            op,
            at_ms: T0,
            result: OpResult::Done(Done::default()),
        },
    ]
}

fn create_intent(op: Uuid, volume: &str) -> Record {
    Record::Intent {
        op,
        at_ms: T0 + 1,
        action: Action::CreateVolume {
            provider: PROVIDER.into(),
            volume: volume.into(),
            meta: Meta::new(),
        },
    }
}

async fn write_journal(dir: &Path, records: &[Record]) {
    let (journal, _) = Journal::<Record>::open(dir, JournalConfig::default()).unwrap();
    for r in records {
        journal.append(r).await.unwrap();
    }
    journal.close().await;
}

fn cases(m: &Manager) -> Vec<(Case, Option<String>)> {
    m.reconcile_report()
        .resolutions
        .into_iter()
        .map(|(c, v, _)| (c, v))
        .collect()
}

fn data_spec(id: &str, op: Uuid) -> VolumeSpec<'_> {
    VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op,
        kind: VolumeKind::Data,
    }
}

pub async fn pending_create_found_tagged_rolls_forward(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let op = Uuid::now_v7();
    let mut records = provider_records(&*b, Uuid::now_v7());
    records.push(create_intent(op, "v"));
    write_journal(state.path(), &records).await;
    // The side effect happened; the process died before the outcome.
    let created = b.provider().create_volume(&data_spec("v", op)).unwrap();

    let m = Manager::open(state.path(), config(&*b)).await.unwrap();
    assert_eq!(
        cases(&m),
        vec![(Case::CreateRolledForward, Some("v".into()))]
    );
    let v = m.volume("v").unwrap();
    assert_eq!((v.status, v.op), (VolumeStatus::Live, op));
    assert_eq!(v.location, created.location);
    assert!(m.state().pending.is_empty());
    write(&v.location, "usable", b"yes");
    m.close().await;
}

pub async fn pending_create_found_absent_fails_as_interrupted(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let mut records = provider_records(&*b, Uuid::now_v7());
    records.push(create_intent(Uuid::now_v7(), "v"));
    write_journal(state.path(), &records).await;

    let m = Manager::open(state.path(), config(&*b)).await.unwrap();
    assert_eq!(cases(&m), vec![(Case::CreateInterrupted, Some("v".into()))]);
    assert!(matches!(m.volume("v"), Err(ManagerError::NoSuchVolume(_))));
    assert!(m.state().pending.is_empty());
    assert!(tagged(&*b).is_empty());
    // The id is free again.
    m.create_volume(PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap();
    m.close().await;
}

pub async fn pending_destroy_of_present_volume_is_finished(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let create_op = Uuid::now_v7();
    let created = b
        .provider()
        .create_volume(&data_spec("v", create_op))
        .unwrap();
    let mut records = provider_records(&*b, Uuid::now_v7());
    records.extend([
        create_intent(create_op, "v"),
        Record::Outcome {
            op: create_op,
            at_ms: T0 + 1,
            result: OpResult::Done(Done {
                location: created.location.clone(),
                details: created.details.clone(),
            }),
        },
        Record::Intent {
            op: Uuid::now_v7(),
            at_ms: T0 + 2,
            action: Action::DestroyVolume { volume: "v".into() },
        },
    ]);
    write_journal(state.path(), &records).await;

    let m = Manager::open(state.path(), config(&*b)).await.unwrap();
    assert_eq!(cases(&m), vec![(Case::DestroyFinished, Some("v".into()))]);
    assert!(matches!(m.volume("v"), Err(ManagerError::NoSuchVolume(_))));
    assert!(tagged(&*b).is_empty(), "the destroy was carried out");
    assert!(!Path::new(&created.location).exists());
    m.close().await;
}

pub async fn volume_deleted_behind_the_managers_back_is_reported_lost(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    let v = m
        .create_volume(PROVIDER, Some("v"), Meta::new())
        .await
        .unwrap();
    let keep = m
        .create_volume(PROVIDER, Some("keep"), Meta::new())
        .await
        .unwrap();
    m.close().await;
    let details = Details::new();
    b.provider()
        .destroy(&VolumeRef {
            id: VolumeId::new("v").unwrap(),
            kind: VolumeKind::Data,
            parent: None,
            location: &v.location,
            details: &details,
        })
        .unwrap();

    let m = open(state.path(), &*b).await;
    assert_eq!(cases(&m), vec![(Case::VolumeLost, Some("v".into()))]);
    let lost = m.volume("v").unwrap();
    assert_eq!(
        lost.status,
        VolumeStatus::Lost,
        "kept and reported, never dropped"
    );
    assert_eq!(m.volume("keep").unwrap(), keep);
    let err = m.create_snapshot("v", Meta::new()).await.unwrap_err();
    assert!(matches!(err, ManagerError::VolumeLost(_)), "{err}");
    m.close().await;
    // Reported once: the next open journals nothing new.
    let m = open(state.path(), &*b).await;
    assert!(cases(&m).is_empty(), "{:?}", cases(&m));
    // An operator may forget it.
    m.destroy_volume("v").await.unwrap();
    assert!(matches!(m.volume("v"), Err(ManagerError::NoSuchVolume(_))));
    m.close().await;
}

pub async fn tagged_item_unknown_to_the_journal_is_reported_as_orphan(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    m.close().await;
    let op = Uuid::now_v7();
    let made = b.provider().create_volume(&data_spec("o", op)).unwrap();
    write(&made.location, "precious", b"data");

    let m = open(state.path(), &*b).await;
    assert_eq!(cases(&m), vec![(Case::OrphanReported, Some("o".into()))]);
    let orphans = m.orphans();
    assert_eq!(orphans.len(), 1);
    assert_eq!(
        (orphans[0].volume.as_str(), orphans[0].tagged_op),
        ("o", op)
    );
    assert!(matches!(m.volume("o"), Err(ManagerError::NoSuchVolume(_))));
    assert!(tagged(&*b).contains_key("o"), "left alone");
    m.close().await;

    let m = open(state.path(), &*b).await;
    assert!(cases(&m).is_empty(), "reported once: {:?}", cases(&m));
    let v = m.adopt_orphan(PROVIDER, "o").await.unwrap();
    assert_eq!((v.op, v.location.as_str()), (op, made.location.as_str()));
    assert_eq!(read(&v.location, "precious").as_deref(), Some(&b"data"[..]));
    assert!(m.orphans().is_empty());
    m.close().await;
}

pub async fn untagged_item_under_the_root_is_foreign_and_never_touched(b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let m = open(state.path(), &*b).await;
    m.create_volume(PROVIDER, Some("mine"), Meta::new())
        .await
        .unwrap();
    m.close().await;
    b.plant_foreign("intruder");

    let m = open(state.path(), &*b).await;
    let report = m.reconcile_report();
    assert!(report.resolutions.is_empty(), "{:?}", report.resolutions);
    assert!(
        report
            .foreign
            .iter()
            .any(|(name, _)| name.contains("intruder")),
        "reported: {:?}",
        report.foreign
    );
    assert!(m.orphans().is_empty());
    // A volume of that very name cannot take its place.
    let err = m
        .create_volume(PROVIDER, Some("intruder"), Meta::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::Provider { .. }), "{err}");
    m.close().await;
    let m = open(state.path(), &*b).await;
    assert!(m.reconcile_report().resolutions.is_empty());
    m.close().await;
    assert!(b.foreign_present("intruder"), "never touched");
}

// --- Flynn's persistence tests, with a host restart --------------------------

struct Counted {
    calls: Arc<AtomicUsize>,
}

impl Counted {
    /// A manager configuration whose default-provider factory counts its calls.
    fn config(&self, b: &dyn Backend) -> ManagerConfig {
        let calls = self.calls.clone();
        let kind = b.kind().to_owned();
        let provider_config = b.config();
        let mut config = config(b);
        config.default_provider = Some(Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok((kind, provider_config))
        }));
        config
    }
}

pub async fn volume_and_data_survive_host_restart_without_the_default_factory(
    mut b: Box<dyn Backend>,
) {
    let state = tempfile::tempdir().unwrap();
    let counted = Counted {
        calls: Arc::default(),
    };
    let m = Manager::open(state.path(), counted.config(&*b))
        .await
        .unwrap();
    assert_eq!(
        counted.calls.load(Ordering::SeqCst),
        1,
        "fresh state: factory runs"
    );
    let v = m
        .create_volume("default", None, meta(&[("owner", "flynn")]))
        .await
        .unwrap();
    write(&v.location, "file", b"data");
    let providers = m.providers();
    let volumes = m.volumes();
    m.close().await;

    b.restart_host();

    let m = Manager::open(state.path(), counted.config(&*b))
        .await
        .unwrap();
    assert_eq!(
        counted.calls.load(Ordering::SeqCst),
        1,
        "the provider was restored from the journal, not from the factory"
    );
    assert_eq!(m.providers(), providers);
    assert_eq!(m.volumes(), volumes, "identical info");
    assert!(m.reconcile_report().resolutions.is_empty());
    assert_eq!(read(&v.location, "file").as_deref(), Some(&b"data"[..]));
    m.close().await;
}

pub async fn snapshots_and_received_snapshot_survive_host_restart(mut b: Box<dyn Backend>) {
    let state = tempfile::tempdir().unwrap();
    let counted = Counted {
        calls: Arc::default(),
    };
    let m = Manager::open(state.path(), counted.config(&*b))
        .await
        .unwrap();
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    write(&v.location, "file", b"data");
    let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
    let v2 = m.create_volume("default", None, Meta::new()).await.unwrap();
    let haves = m.list_haves(&v2.id).unwrap();
    let (stream, _) = send_to_vec(&m, &s.id, &haves).await;
    let r = m.receive_snapshot(&v2.id, stream.as_slice()).await.unwrap();
    let volumes = m.volumes();
    assert_eq!(volumes.len(), 4);
    m.close().await;

    b.restart_host();

    let m = Manager::open(state.path(), counted.config(&*b))
        .await
        .unwrap();
    assert_eq!(counted.calls.load(Ordering::SeqCst), 1);
    assert_eq!(m.volumes(), volumes, "all four back, identical");
    assert!(m.reconcile_report().resolutions.is_empty());
    let r_again = m.volume(&r.id).unwrap();
    assert_eq!(r_again.kind, VolumeKind::Snapshot, "still a snapshot");
    assert_eq!(
        read(&r_again.location, "file").as_deref(),
        Some(&b"data"[..])
    );
    assert_eq!(read(&v2.location, "file").as_deref(), Some(&b"data"[..]));
    assert_eq!(read(&s.location, "file").as_deref(), Some(&b"data"[..]));
    assert_eq!(
        m.list_haves(&v2.id).unwrap(),
        vec![s.details[DETAIL_GUID].clone()]
    );
    m.close().await;
}
