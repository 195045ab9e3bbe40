//! Snapshot pulls between two agents on loopback.

mod agent_support;

use agent_support::{TestAgent, assert_error, raw, sim_config};
use serde_json::json;
use volmgr::agent::ServeOptions;
use volmgr::provider::sim::{SimCall, SimFault, SimProvider, When};

/// Deterministic, poorly compressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    sim_a: SimProvider,
    sim_b: SimProvider,
    a: TestAgent,
    b: TestAgent,
}

async fn two_agents() -> Pair {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sim_a, sim_b) = (SimProvider::new(), SimProvider::new());
    let a = TestAgent::open(dir_a.path(), sim_config(&sim_a), ServeOptions::default()).await;
    let b = TestAgent::open(dir_b.path(), sim_config(&sim_b), ServeOptions::default()).await;
    Pair {
        _dirs: (dir_a, dir_b),
        sim_a,
        sim_b,
        a,
        b,
    }
}

const FILES: [&str; 3] = ["big-1.bin", "big-2.bin", "config.txt"];

#[tokio::test]
async fn a_second_pull_is_incremental_and_the_receiver_ends_up_with_the_senders_data() {
    let Pair {
        _dirs,
        sim_a,
        sim_b,
        a,
        b,
    } = two_agents().await;
    let app = a
        .client
        .create_volume("default", Some("app"), Default::default())
        .await
        .unwrap();
    sim_a.write_file("app", FILES[0], &noise(1, 256 * 1024));
    sim_a.write_file("app", FILES[1], &noise(2, 256 * 1024));
    sim_a.write_file("app", FILES[2], b"workers = 4\n");
    let snap1 = a
        .client
        .snapshot(&app.id, Default::default())
        .await
        .unwrap();

    let replica = b
        .client
        .create_volume("default", Some("app-replica"), Default::default())
        .await
        .unwrap();
    let full = b
        .client
        .pull(&replica.id, &a.url, &snap1.id)
        .await
        .expect("full pull");
    assert_eq!(full.snapshot.parent.as_deref(), Some("app-replica"));

    sim_a.write_file("app", FILES[2], b"workers = 8\n");
    let snap2 = a
        .client
        .snapshot(&app.id, Default::default())
        .await
        .unwrap();
    let incremental = b
        .client
        .pull(&replica.id, &a.url, &snap2.id)
        .await
        .expect("incremental pull");
    eprintln!(
        "full pull: {} bytes; incremental pull: {} bytes",
        full.bytes, incremental.bytes
    );
    assert!(full.bytes > 512 * 1024, "full: {}", full.bytes);
    assert!(
        incremental.bytes * 100 < full.bytes,
        "second transfer is not incremental: {} vs {} bytes",
        incremental.bytes,
        full.bytes
    );

    for name in FILES {
        let sent = sim_a.read_file(&snap2.id, name).unwrap();
        assert_eq!(
            sim_b.read_file(&incremental.snapshot.id, name).as_ref(),
            Some(&sent),
            "{name} differs in the received snapshot"
        );
        assert_eq!(
            sim_b.read_file(&replica.id, name).as_ref(),
            Some(&sent),
            "{name} differs in the target volume"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_pull_streams_progress_events_then_its_result() {
    let Pair {
        _dirs,
        sim_a,
        sim_b: _,
        a,
        b,
    } = two_agents().await;
    a.client
        .create_volume("default", Some("v"), Default::default())
        .await
        .unwrap();
    sim_a.write_file("v", "data", &noise(3, 128 * 1024));
    let snap = a.client.snapshot("v", Default::default()).await.unwrap();
    b.client
        .create_volume("default", Some("t"), Default::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let done = b
        .client
        .pull_with_progress("t", &a.url, &snap.id, |bytes| seen.push(bytes))
        .await
        .unwrap();
    assert_eq!(seen.last(), Some(&done.bytes));
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(
        b.client.get(&done.snapshot.id).await.unwrap(),
        done.snapshot
    );

    // A failure is an `error` event carrying the status and code.
    let err = b
        .client
        .pull_with_progress("t", &a.url, "no-such-snapshot", |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(404), Some("source_not_found"))
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The sender's provider fails after writing `len` bytes of file data
/// (the manager forwards its output in 256 KiB chunks): the pull must fail
/// with `code`, and the receiver must hold no new snapshot.
async fn failed_send_leaves_no_snapshot(len: usize, code: &str) {
    let Pair {
        _dirs,
        sim_a,
        sim_b: _,
        a,
        b,
    } = two_agents().await;
    a.client
        .create_volume("default", Some("v"), Default::default())
        .await
        .unwrap();
    sim_a.write_file("v", "data", &noise(4, len));
    let snap = a.client.snapshot("v", Default::default()).await.unwrap();
    b.client
        .create_volume("default", Some("t"), Default::default())
        .await
        .unwrap();
    sim_a.set_fault(Some(SimFault {
        call: SimCall::Send,
        when: When::After,
        nth: 1,
    }));
    let answer = raw(
        "POST",
        &format!("{}/storage/volumes/t/pull_snapshot", b.url),
        Some(&json!({"source": a.url, "snapshot_id": snap.id}).to_string()),
        None,
    )
    .await;
    assert_error(&answer, 502, code);
    let volumes = b.client.list().await.unwrap();
    assert_eq!(
        volumes.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        ["t"],
        "a failed transfer must not leave a snapshot"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_send_that_fails_before_its_first_byte_is_a_502_with_the_sources_error() {
    failed_send_leaves_no_snapshot(16 * 1024, "source_failed").await;
}

#[tokio::test]
async fn a_send_that_fails_mid_stream_aborts_the_transfer_and_leaves_no_snapshot() {
    failed_send_leaves_no_snapshot(512 * 1024, "source_stream_failed").await;
}
