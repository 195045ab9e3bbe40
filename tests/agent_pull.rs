//! Snapshot pulls between two agents on loopback.

mod agent_support;
#[path = "common/config.rs"]
mod config;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use agent_support::{TestAgent, assert_error, peers, raw, sim_config};
use serde_json::json;
use volmgr::agent::{PullFrom, ServeOptions};
use volmgr::provider::sim::{SimCall, SimFault, SimProvider, When};

/// Deterministic, poorly compressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
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
    let b = TestAgent::open(dir_b.path(), sim_config(&sim_b), peer_a(&a)).await;
    Pair {
        _dirs: (dir_a, dir_b),
        sim_a,
        sim_b,
        a,
        b,
    }
}

/// Options of an agent that has `a` as peer `a`.
fn peer_a(a: &TestAgent) -> ServeOptions {
    ServeOptions {
        peers: peers(&[("a", &a.url)]),
        ..ServeOptions::default()
    }
}

const FILES: [&str; 3] = ["big-1.bin", "big-2.bin", "config.txt"];

/// One entry of a file tree: what a transfer must carry.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Link { target: PathBuf },
}

/// Every entry under `root`, by relative path (symlinks not followed).
fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, Entry::Link { target });
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir { mode });
                walk(root, &path, out);
            } else {
                let content = std::fs::read(&path).unwrap();
                out.insert(rel, Entry::File { mode, content });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test]
async fn a_second_pull_between_dir_agents_is_incremental_and_the_trees_match() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestAgent::open(
        dir_a.path(),
        config::serve_default(dir_a.path()),
        ServeOptions::default(),
    )
    .await;
    let b = TestAgent::open(
        dir_b.path(),
        config::serve_default(dir_b.path()),
        peer_a(&a),
    )
    .await;

    let app = a
        .client
        .create_volume("default", Some("app"), BTreeMap::default())
        .await
        .unwrap();
    let loc = PathBuf::from(&app.location);
    std::fs::create_dir_all(loc.join("nested/deeper")).unwrap();
    std::fs::write(loc.join("big-1.bin"), noise(1, 512 * 1024)).unwrap();
    std::fs::write(loc.join("nested/big-2.bin"), noise(2, 512 * 1024)).unwrap();
    std::fs::write(loc.join("nested/deeper/config.txt"), "workers = 4\n").unwrap();
    std::fs::write(loc.join("obsolete.txt"), "remove me\n").unwrap();
    std::fs::write(loc.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(loc.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("nested/deeper/config.txt", loc.join("config")).unwrap();
    let snap1 = a
        .client
        .snapshot(&app.id, BTreeMap::default())
        .await
        .unwrap();

    let replica = b
        .client
        .create_volume("default", Some("app-replica"), BTreeMap::default())
        .await
        .unwrap();
    let full = b
        .client
        .pull(&replica.id, PullFrom::Host("a"), &snap1.id)
        .await
        .expect("full pull");
    assert_eq!(full.snapshot.parent.as_deref(), Some("app-replica"));
    assert_eq!(
        tree(Path::new(&full.snapshot.location)),
        tree(Path::new(&snap1.location)),
        "the received snapshot is the sent one"
    );
    assert_eq!(tree(Path::new(&replica.location)), tree(&loc));

    std::fs::write(loc.join("nested/deeper/config.txt"), "workers = 8\n").unwrap();
    std::fs::remove_file(loc.join("obsolete.txt")).unwrap();
    std::fs::write(loc.join("new.txt"), "new\n").unwrap();
    let snap2 = a
        .client
        .snapshot(&app.id, BTreeMap::default())
        .await
        .unwrap();
    let incremental = b
        .client
        .pull(&replica.id, PullFrom::Host("a"), &snap2.id)
        .await
        .expect("incremental pull");
    eprintln!(
        "dir provider: full pull {} bytes, incremental pull {} bytes",
        full.bytes, incremental.bytes
    );
    assert!(full.bytes > 1024 * 1024, "full: {}", full.bytes);
    assert!(
        incremental.bytes * 100 < full.bytes,
        "second transfer is not incremental: {} vs {} bytes",
        incremental.bytes,
        full.bytes
    );
    assert_eq!(
        tree(Path::new(&incremental.snapshot.location)),
        tree(Path::new(&snap2.location)),
        "the received snapshot is the sent one"
    );
    assert_eq!(
        tree(Path::new(&replica.location)),
        tree(&loc),
        "the target volume holds the sender's data"
    );
    // The first received snapshot is untouched by the second transfer.
    assert_eq!(
        tree(Path::new(&full.snapshot.location)),
        tree(Path::new(&snap1.location))
    );

    // Pulling either snapshot again (a retry after a lost answer, say) is a
    // conflict that changes nothing: the replica holds them already. (It
    // made a second snapshot of the same identity, or put the replica's
    // content back to the older one.)
    std::fs::write(replica.location.clone() + "/mine.txt", "local\n").unwrap();
    let listed = b.client.list().await.unwrap();
    for snap in [&snap2, &snap1] {
        let err = b
            .client
            .pull(&replica.id, PullFrom::Host("a"), &snap.id)
            .await
            .expect_err("a pull of a snapshot the target holds");
        assert_eq!(
            (err.status(), err.code()),
            (Some(409), Some("stream_does_not_fit")),
            "{err}"
        );
    }
    assert_eq!(b.client.list().await.unwrap(), listed);
    assert_eq!(
        std::fs::read_to_string(Path::new(&replica.location).join("mine.txt")).unwrap(),
        "local\n",
        "the replica's content is untouched"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_second_pull_between_simulated_agents_is_incremental_and_the_data_matches() {
    let Pair {
        _dirs,
        sim_a,
        sim_b,
        a,
        b,
    } = two_agents().await;
    let app = a
        .client
        .create_volume("default", Some("app"), BTreeMap::default())
        .await
        .unwrap();
    sim_a.write_file("app", FILES[0], &noise(1, 256 * 1024));
    sim_a.write_file("app", FILES[1], &noise(2, 256 * 1024));
    sim_a.write_file("app", FILES[2], b"workers = 4\n");
    let snap1 = a
        .client
        .snapshot(&app.id, BTreeMap::default())
        .await
        .unwrap();

    let replica = b
        .client
        .create_volume("default", Some("app-replica"), BTreeMap::default())
        .await
        .unwrap();
    let full = b
        .client
        .pull(&replica.id, PullFrom::Host("a"), &snap1.id)
        .await
        .expect("full pull");
    assert_eq!(full.snapshot.parent.as_deref(), Some("app-replica"));

    sim_a.write_file("app", FILES[2], b"workers = 8\n");
    let snap2 = a
        .client
        .snapshot(&app.id, BTreeMap::default())
        .await
        .unwrap();
    let incremental = b
        .client
        .pull(&replica.id, PullFrom::Host("a"), &snap2.id)
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

/// Two directory-provider agents, `b` with `a` as peer `a`.
async fn two_dir_agents() -> (tempfile::TempDir, tempfile::TempDir, TestAgent, TestAgent) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestAgent::open(
        dir_a.path(),
        config::serve_default(dir_a.path()),
        ServeOptions::default(),
    )
    .await;
    let b = TestAgent::open(
        dir_b.path(),
        config::serve_default(dir_b.path()),
        peer_a(&a),
    )
    .await;
    (dir_a, dir_b, a, b)
}

/// The data ranges of the file at `path` (`SEEK_DATA`/`SEEK_HOLE`).
fn data_map(path: &Path) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let seek = |at: u64, whence| {
        // SAFETY: lseek on a descriptor open for the call.
        let r = unsafe { libc::lseek(f.as_raw_fd(), i64::try_from(at).unwrap(), whence) };
        u64::try_from(r).ok()
    };
    let mut map = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(start) = seek(pos, libc::SEEK_DATA) else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        map.push((start, end));
        pos = end;
    }
    map
}

/// Whether two files hold the same bytes, compared a MiB at a time.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        let mut m = 0;
        while m < n {
            let k = fb.read(&mut bb[m..n]).unwrap();
            if k == 0 {
                return false;
            }
            m += k;
        }
        if ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}

/// A 1 GiB file holding 1 MiB of data crosses between two directory
/// agents as about 1 MiB (the puller asks for holes as holes), arrives
/// byte-identical and as sparse as it was, and the size the source
/// announced is the size it sent.
#[tokio::test]
async fn a_pull_of_a_sparse_file_carries_its_data_not_its_holes() {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let (_da, _db, a, b) = two_dir_agents().await;
    let v = a
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    let file = Path::new(&v.location).join("disk.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&file).unwrap();
        let half = noise(7, usize::try_from(MIB / 2).unwrap());
        f.write_all_at(&half, 100 * MIB).unwrap();
        f.write_all_at(&half, GIB - MIB / 2).unwrap();
        f.set_len(GIB).unwrap();
    }
    let sent_map = data_map(&file);
    assert_eq!(
        sent_map,
        vec![(100 * MIB, 100 * MIB + MIB / 2), (GIB - MIB / 2, GIB)]
    );
    let snap = a.client.snapshot("v", BTreeMap::default()).await.unwrap();
    let t = b
        .client
        .create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let done = b
        .client
        .pull_with_progress("t", PullFrom::Host("a"), &snap.id, |p| seen.push(p))
        .await
        .unwrap();
    eprintln!(
        "a 1 GiB file with 1 MiB of data: {} bytes crossed",
        done.bytes
    );
    assert!(
        done.bytes >= MIB && done.bytes < MIB + 64 * 1024,
        "{} bytes crossed for 1 MiB of data",
        done.bytes
    );
    assert_eq!(
        seen.last().unwrap().total,
        Some(done.bytes),
        "the announced size is the sent size"
    );
    for got in [
        Path::new(&t.location).join("disk.img"),
        Path::new(&done.snapshot.location).join("disk.img"),
    ] {
        assert_eq!(std::fs::metadata(&got).unwrap().len(), GIB);
        assert_eq!(data_map(&got), sent_map, "{} is as sparse", got.display());
        assert!(
            same_bytes(&got, &file),
            "{} is byte-identical",
            got.display()
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A send asked without `x-volmgr-stream-features` (Flynn's client) is a
/// version 1 stream with the holes as zeros; asked with `sparse`, a version
/// 2 stream with the data only. Each announces its exact size.
#[tokio::test]
async fn a_send_is_sparse_only_when_the_request_asks_for_it() {
    let (_da, _db, a, b) = two_dir_agents().await;
    let v = a
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    let file = Path::new(&v.location).join("holey");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&file).unwrap();
        f.write_all_at(b"data", 1 << 20).unwrap();
        f.set_len(4 << 20).unwrap();
    }
    let snap = a.client.snapshot("v", BTreeMap::default()).await.unwrap();
    let url = format!("{}/storage/volumes/{}/send", a.url, snap.id);
    let token = agent_support::token_for(&a.url);
    for features in [None, Some("sparse"), Some("other, SPARSE")] {
        let mut request = reqwest::Client::new().post(&url).body("null");
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        if let Some(f) = features {
            request = request.header("x-volmgr-stream-features", f);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let size: u64 = response.headers()["x-volmgr-stream-size"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = response.bytes().await.unwrap();
        assert_eq!(size, body.len() as u64, "{features:?}: announced size");
        assert_eq!(&body[..8], b"VMGRDIRS");
        let version = u16::from_be_bytes([body[8], body[9]]);
        if features.is_none() {
            assert_eq!(version, 1, "no features asked: version 1");
            assert!(body.len() > 4 << 20, "holes as zeros: {}", body.len());
        } else {
            assert_eq!(version, 2, "{features:?}");
            assert!(body.len() < 64 * 1024, "{features:?}: {}", body.len());
        }
    }
    // volmgr's client's send (as Flynn's: no such header) is version 1 too.
    let flynn = a.client.send(&snap.id, &[]).await.unwrap();
    assert_eq!(u16::from_be_bytes([flynn[8], flynn[9]]), 1);
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
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    sim_a.write_file("v", "data", &noise(3, 128 * 1024));
    let snap = a.client.snapshot("v", BTreeMap::default()).await.unwrap();
    b.client
        .create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let done = b
        .client
        .pull_with_progress("t", PullFrom::Host("a"), &snap.id, |p| seen.push(p.bytes))
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
        .pull_with_progress("t", PullFrom::Url(&a.url), "no-such-snapshot", |_| {})
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
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    sim_a.write_file("v", "data", &noise(4, len));
    let snap = a.client.snapshot("v", BTreeMap::default()).await.unwrap();
    b.client
        .create_volume("default", Some("t"), BTreeMap::default())
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

/// A source volume `src` with one snapshot of `len` bytes of noise, a
/// target `dst` on `b`, and a resumable simulated provider on `b`.
async fn resumable_pair(len: usize) -> (Pair, String) {
    let p = two_agents().await;
    p.sim_b.set_resumable(true);
    p.a.client
        .create_volume("default", Some("src"), BTreeMap::default())
        .await
        .unwrap();
    p.sim_a.write_file("src", "f", &noise(5, len));
    let s =
        p.a.client
            .snapshot("src", BTreeMap::default())
            .await
            .unwrap();
    p.b.client
        .create_volume("default", Some("dst"), BTreeMap::default())
        .await
        .unwrap();
    (p, s.id)
}

fn pull_body(source: &str, snapshot: &str) -> String {
    json!({"source": source, "snapshot_id": snapshot}).to_string()
}

#[tokio::test]
async fn a_broken_pull_is_kept_resumable_and_the_next_pull_sends_only_the_rest() {
    let (p, snap) = resumable_pair(200_000).await;
    let whole = p.a.client.send(&snap, &[]).await.unwrap().len();
    let cut = whole / 3;
    p.sim_a.cut_sends(Some(cut));
    let url = format!("{}/storage/volumes/dst/pull_snapshot", p.b.url);
    let broken = raw("POST", &url, Some(&pull_body(&p.a.url, &snap)), None).await;
    assert_error(&broken, 502, "transfer_interrupted");
    p.sim_a.cut_sends(None);
    let dst = p.b.client.get("dst").await.unwrap();
    assert!(dst.details["resume-token"].starts_with("1_"), "{dst:?}");
    assert_eq!(dst.details["resume-source"], p.a.url);
    assert_eq!(dst.details["resume-snapshot"], snap);
    assert!(p.sim_b.partial("dst").is_some());

    let done =
        p.b.client
            .pull("dst", PullFrom::Url(&p.a.url), &snap)
            .await
            .unwrap();
    assert!(done.resumed, "{done:?}");
    assert_eq!(
        usize::try_from(done.bytes).unwrap(),
        whole - cut,
        "only the rest crossed (whole stream {whole} bytes, cut at {cut})"
    );
    assert_eq!(
        p.sim_b.read_file(&done.snapshot.id, "f").unwrap(),
        noise(5, 200_000)
    );
    let dst = p.b.client.get("dst").await.unwrap();
    assert!(!dst.details.contains_key("resume-token"), "{dst:?}");
    assert!(p.sim_b.partial("dst").is_none());
}

#[tokio::test]
async fn an_agent_resumes_an_interrupted_pull_when_ready_and_discards_one_it_cannot() {
    let (p, snap) = resumable_pair(100_000).await;
    // A second target whose source snapshot goes away before the restart.
    let gone =
        p.a.client
            .snapshot("src", BTreeMap::default())
            .await
            .unwrap();
    p.b.client
        .create_volume("default", Some("dst2"), BTreeMap::default())
        .await
        .unwrap();
    p.sim_a.cut_sends(Some(30_000));
    for (target, snapshot) in [("dst", &snap), ("dst2", &gone.id)] {
        let url = format!("{}/storage/volumes/{target}/pull_snapshot", p.b.url);
        let broken = raw("POST", &url, Some(&pull_body(&p.a.url, snapshot)), None).await;
        assert_error(&broken, 502, "transfer_interrupted");
    }
    p.sim_a.cut_sends(None);
    p.a.client.destroy(&gone.id).await.unwrap();
    let Pair {
        _dirs: dirs,
        sim_a: _sim_a,
        sim_b,
        a,
        b,
    } = p;
    b.shutdown().await;

    // Restart: the agent resumes the pull into dst by itself...
    let manager = volmgr::manager::Manager::open(dirs.1.path(), sim_config(&sim_b))
        .await
        .unwrap();
    let mut events = manager.subscribe();
    let b = TestAgent::serve(manager, peer_a(&a)).await;
    let received = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(volmgr::state::Event::Created(v)) if v.parent.as_deref() == Some("dst") => {
                    break v;
                }
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("the interrupted pull is finished");
    assert_eq!(
        sim_b.read_file(&received.id, "f").unwrap(),
        noise(5, 100_000)
    );
    // ...and discards the one whose source snapshot is gone (the resume
    // task is tracked: it has finished once the agent has shut down).
    b.shutdown().await;
    let manager = volmgr::manager::Manager::open(dirs.1.path(), sim_config(&sim_b))
        .await
        .unwrap();
    for target in ["dst", "dst2"] {
        let v = manager.volume(target).unwrap();
        assert!(!v.details.contains_key("resume-token"), "{v:?}");
        assert!(sim_b.partial(target).is_none(), "{target}");
    }
    assert_eq!(
        manager
            .volumes()
            .iter()
            .filter(|v| v.parent.as_deref() == Some("dst2"))
            .count(),
        0
    );
    manager.close().await;
    a.shutdown().await;
}
