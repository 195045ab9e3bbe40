//! Flynn's two persistence tests, ported through the library API on the
//! directory provider: after close and reopen every volume is back with
//! identical info, the provider is restored from the journal without calling
//! the default factory, the data files are there, and a received snapshot is
//! still a snapshot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use volmgr::manager::{Manager, ManagerConfig};
use volmgr::state::{Meta, VolumeKind};

fn config(state_dir: &Path, factory_calls: Arc<AtomicUsize>) -> ManagerConfig {
    let root = state_dir.join("volumes").to_string_lossy().into_owned();
    ManagerConfig {
        default_provider: Some(Box::new(move || {
            factory_calls.fetch_add(1, Ordering::SeqCst);
            Ok((
                "dir".to_string(),
                BTreeMap::from([("root".to_string(), root)]),
            ))
        })),
        ..ManagerConfig::default()
    }
}

#[tokio::test]
async fn volume_and_its_data_survive_close_and_reopen_without_the_factory() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let m = Manager::open(dir.path(), config(dir.path(), calls.clone()))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "fresh journal: the factory registers the default provider"
    );
    let mut meta = Meta::new();
    meta.insert("app".into(), "db".into());
    let v = m.create_volume("default", None, meta).await.unwrap();
    std::fs::write(Path::new(&v.location).join("foo.txt"), b"data").unwrap();
    let before = m.volumes();
    m.close().await;

    let m = Manager::open(dir.path(), config(dir.path(), calls.clone()))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "provider restored from the journal, factory not called"
    );
    assert_eq!(m.volumes(), before, "identical info after reopen");
    assert_eq!(m.providers().len(), 1);
    assert_eq!(
        std::fs::read(Path::new(&m.volume(&v.id).unwrap().location).join("foo.txt")).unwrap(),
        b"data"
    );
    assert!(
        m.reconcile_report().resolutions.is_empty(),
        "nothing to reconcile after a clean close"
    );
    m.close().await;
}

#[tokio::test]
async fn transmitted_snapshot_is_still_a_snapshot_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let m = Manager::open(dir.path(), config(dir.path(), calls.clone()))
        .await
        .unwrap();
    let v1 = m.create_volume("default", None, Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v1.location).join("foo.txt"), b"data").unwrap();
    let s1 = m.create_snapshot(&v1.id, Meta::new()).await.unwrap();
    let v2 = m.create_volume("default", None, Meta::new()).await.unwrap();
    let haves = m.list_haves(&v2.id).unwrap();
    let mut stream = Vec::new();
    m.send_snapshot(&s1.id, &haves, &mut stream).await.unwrap();
    let s2 = m.receive_snapshot(&v2.id, stream.as_slice()).await.unwrap();
    assert_eq!(s2.kind, VolumeKind::Snapshot);
    let before = m.volumes();
    assert_eq!(before.len(), 4);
    m.close().await;

    let m = Manager::open(dir.path(), config(dir.path(), calls.clone()))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "factory not called on reopen"
    );
    assert_eq!(m.volumes(), before, "all four volumes back, identical");
    let s2 = m.volume(&s2.id).unwrap();
    assert_eq!(
        s2.kind,
        VolumeKind::Snapshot,
        "the received one is still a snapshot"
    );
    assert_eq!(
        std::fs::read(Path::new(&s2.location).join("foo.txt")).unwrap(),
        b"data"
    );
    assert_eq!(
        std::fs::read(Path::new(&m.volume(&v2.id).unwrap().location).join("foo.txt")).unwrap(),
        b"data"
    );
    m.close().await;
}
