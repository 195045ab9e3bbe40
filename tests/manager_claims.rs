//! Shared claims (issue #16, item 6): a destroy of a snapshot during its
//! send used to succeed, pulling the snapshot out from under the stream. A
//! send now holds a shared claim on its snapshot for as long as it runs:
//! a destroy is refused `Busy`, while other sends and forks (which only
//! read the snapshot) go on beside it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::SendStats;
use volmgr::provider::sim::SimProvider;
use volmgr::state::Meta;

async fn open(dir: &std::path::Path, sim: &SimProvider) -> Manager {
    let mut config = ManagerConfig::default();
    config.factories.insert("sim".into(), sim.factory());
    let manager = Manager::open(dir, config).await.unwrap();
    manager
        .add_provider("p", "sim", BTreeMap::default())
        .await
        .unwrap();
    manager
}

/// A manager whose volume `v` holds a 100,000-byte file of `fill`, its
/// snapshot, and a send of that snapshot into a 64-byte pipe whose first 16
/// bytes have been read: the send is in progress and holds its claim.
struct SendInProgress {
    m: Manager,
    snapshot: String,
    first: [u8; 16],
    reader: tokio::io::DuplexStream,
    sending: tokio::task::JoinHandle<Result<SendStats, ManagerError>>,
}

async fn send_in_progress(dir: &std::path::Path, fill: u8) -> SendInProgress {
    let sim = SimProvider::new();
    let m = open(dir, &sim).await;
    m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    sim.write_file("v", "f", &vec![fill; 100_000]);
    let s = m.create_snapshot("v", Meta::new()).await.unwrap();
    let (writer, mut reader) = tokio::io::duplex(64);
    let sending = tokio::spawn({
        let m = m.clone();
        let id = s.id.clone();
        async move { m.send_snapshot(&id, &[], writer).await }
    });
    let mut first = [0u8; 16];
    reader.read_exact(&mut first).await.unwrap();
    SendInProgress {
        m,
        snapshot: s.id,
        first,
        reader,
        sending,
    }
}

#[tokio::test]
async fn a_snapshot_being_sent_cannot_be_destroyed_but_can_be_sent_and_forked_again() {
    let dir = tempfile::tempdir().unwrap();
    // A send into a pipe nobody reads stays in progress; its first bytes
    // arrived, so it holds its claim now.
    let SendInProgress {
        m,
        snapshot,
        first,
        mut reader,
        sending,
    } = send_in_progress(dir.path(), 7).await;

    let err = m.destroy_volume(&snapshot).await.unwrap_err();
    assert!(
        matches!(&err, ManagerError::BeingRead { id, readers: 1 } if *id == snapshot),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("being read by 1 send(s) or fork(s)"),
        "the refusal says what holds the snapshot: {err}"
    );
    // Readers share it.
    let mut other = Vec::new();
    m.send_snapshot(&snapshot, &[], &mut other).await.unwrap();
    assert!(other.len() > 100_000);
    let fork = m
        .fork_volume(&snapshot, Some("f"), Meta::new())
        .await
        .unwrap();
    let fork2 = m
        .fork_volume(&snapshot, Some("g"), Meta::new())
        .await
        .unwrap();
    // A snapshot of the volume (not the one being sent) is not held up.
    m.create_snapshot("v", Meta::new()).await.unwrap();

    // The receiver reads to the end: the send finishes, the claim goes.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).await.unwrap();
    let stats = sending.await.unwrap().unwrap();
    assert_eq!(
        usize::try_from(stats.bytes).unwrap(),
        first.len() + rest.len()
    );
    for id in [&fork.id, &fork2.id] {
        m.destroy_volume(id).await.unwrap();
    }
    m.destroy_volume(&snapshot).await.unwrap();
}

#[tokio::test]
async fn a_send_whose_receiver_goes_away_releases_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let SendInProgress {
        m,
        snapshot,
        reader,
        sending,
        ..
    } = send_in_progress(dir.path(), 1).await;
    assert!(matches!(
        m.destroy_volume(&snapshot).await,
        Err(ManagerError::BeingRead { .. })
    ));
    drop(reader);
    let err = tokio::time::timeout(Duration::from_secs(60), sending)
        .await
        .expect("the send ends once its receiver is gone")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ManagerError::Stream(_)), "{err}");
    m.destroy_volume(&snapshot).await.unwrap();
}
