//! Provider figures, through the Manager API (journal included): per provider,
//! the median latency of create, snapshot, fork and destroy, and the time and
//! bytes of a full send of a 100 MiB volume and of an incremental send of a
//! 10 MiB change (plus the receives of both streams on the same provider).
//!
//! Run: `cargo bench --bench providers` (release). Environment:
//! `VOLMGR_CONTRACT_PROVIDER` picks the providers as for the contract suite
//! (default `dir,btrfs`; btrfs needs root, btrfs-progs and loop devices),
//! `BENCH_SAMPLES` the samples per verb (default 30), `BENCH_SEND_MIB` the
//! volume size (default 100) and `BENCH_CHANGE_MIB` the change (default 10).
//! The data was just written, so sends read it from the page cache.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::backends::{self, Backend};
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::state::Meta;

const MIB: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let samples = env_usize("BENCH_SAMPLES", 30);
    let send_mib = env_usize("BENCH_SEND_MIB", 100);
    let change_mib = env_usize("BENCH_CHANGE_MIB", 10);
    println!(
        "provider figures: median of {samples} samples per verb (ms); full send of a \
         {send_mib} MiB volume, incremental send of a {change_mib} MiB change"
    );
    println!(
        "{:<6} {:>9} {:>11} {:>8} {:>10} | {:>11} {:>13} {:>11} | {:>11} {:>11} {:>11}",
        "kind",
        "create",
        "snapshot",
        "fork",
        "destroy",
        "full send s",
        "full bytes",
        "full recv s",
        "incr send s",
        "incr bytes",
        "incr recv s"
    );
    type Setup = fn(&str) -> Option<Box<dyn Backend>>;
    let setups: [(&str, Setup); 2] = [("dir", backends::dir), ("btrfs", backends::btrfs)];
    for (name, setup) in setups {
        // The file system must hold the volume, its snapshots and a received
        // copy; the btrfs backend's 512 MiB image holds the defaults.
        let Some(backend) = setup(&format!("bench providers ({name})")) else {
            continue;
        };
        rt.block_on(measure(&*backend, samples, send_mib, change_mib));
    }
}

async fn measure(b: &dyn Backend, samples: usize, send_mib: usize, change_mib: usize) {
    let state = tempfile::tempdir().unwrap();
    let mut config = ManagerConfig::default();
    config.factories.insert(b.kind().into(), b.factory());
    let m = Manager::open(state.path(), config).await.unwrap();
    m.add_provider("p", b.kind(), b.config()).await.unwrap();

    let (mut create, mut snapshot, mut fork, mut destroy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..samples {
        let id = format!("lat-{i}");
        let t = Instant::now();
        let v = m.create_volume("p", Some(&id), Meta::new()).await.unwrap();
        create.push(t.elapsed());
        std::fs::write(Path::new(&v.location).join("f"), b"some data").unwrap();
        let t = Instant::now();
        let s = m.create_snapshot(&id, Meta::new()).await.unwrap();
        snapshot.push(t.elapsed());
        let t = Instant::now();
        let f = m.fork_volume(&s.id, None, Meta::new()).await.unwrap();
        fork.push(t.elapsed());
        for victim in [&f.id, &s.id, &id] {
            let t = Instant::now();
            m.destroy_volume(victim).await.unwrap();
            destroy.push(t.elapsed());
        }
    }

    // Transfers: a volume of `send_mib` MiB of incompressible data.
    let src = m
        .create_volume("p", Some("src"), Meta::new())
        .await
        .unwrap();
    let file = Path::new(&src.location).join("data");
    std::fs::write(&file, common::noise(42, send_mib * MIB)).unwrap();
    let s1 = m.create_snapshot("src", Meta::new()).await.unwrap();
    m.create_volume("p", Some("dst"), Meta::new())
        .await
        .unwrap();
    let haves = m.list_haves("dst").unwrap();
    let mut full = Vec::with_capacity(send_mib * MIB + MIB);
    let t = Instant::now();
    let full_stats = m.send_snapshot(&s1.id, &haves, &mut full).await.unwrap();
    let full_send = t.elapsed();
    assert!(!full_stats.incremental);
    let t = Instant::now();
    m.receive_snapshot("dst", full.as_slice()).await.unwrap();
    let full_recv = t.elapsed();
    drop(full);

    let mut f = OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start((send_mib * MIB / 2) as u64))
        .unwrap();
    f.write_all(&common::noise(43, change_mib * MIB)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let s2 = m.create_snapshot("src", Meta::new()).await.unwrap();
    let haves = m.list_haves("dst").unwrap();
    let mut inc = Vec::new();
    let t = Instant::now();
    let inc_stats = m.send_snapshot(&s2.id, &haves, &mut inc).await.unwrap();
    let inc_send = t.elapsed();
    assert!(inc_stats.incremental, "the receiver has s1");
    let t = Instant::now();
    m.receive_snapshot("dst", inc.as_slice()).await.unwrap();
    let inc_recv = t.elapsed();

    println!(
        "{:<6} {:>9.2} {:>11.2} {:>8.2} {:>10.2} | {:>11.3} {:>13} {:>11.3} | {:>11.3} {:>11} {:>11.3}",
        b.name(),
        median(create),
        median(snapshot),
        median(fork),
        median(destroy),
        full_send.as_secs_f64(),
        full_stats.bytes,
        full_recv.as_secs_f64(),
        inc_send.as_secs_f64(),
        inc_stats.bytes,
        inc_recv.as_secs_f64(),
    );
    m.close().await;
}
