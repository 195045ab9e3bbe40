//! Provider figures, through the Manager API (journal included): per provider,
//! the median latency of create, snapshot, fork and destroy, and the time and
//! bytes of a full send of a 100 MiB volume and of an incremental send of a
//! 10 MiB change (plus the receives of both streams on the same provider);
//! then the external commands (`zfs`, `zpool`, `btrfs`, other) each verb ran,
//! counted by `volmgr::provider::cmd::CommandCount` around the call (the
//! most over the samples; a spread is printed as `min..max` of the total).
//!
//! Run: `cargo bench --bench providers` (release). Environment:
//! `VOLMGR_CONTRACT_PROVIDER` picks the providers as for the contract suite
//! (default `dir,btrfs`; btrfs needs root, btrfs-progs and loop devices; `zfs`
//! needs ZFS, i.e. the QEMU guest: build with `cargo test --bench providers
//! --no-run` (or `cargo bench --no-run`) and run the binary it names with
//! `VOLMGR_CONTRACT_PROVIDER=zfs scripts/zfs-test --script BINARY`),
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
use volmgr::provider::cmd::CommandCount;
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
    let setups: [(&str, Setup); 3] = [
        ("dir", backends::dir),
        ("btrfs", backends::btrfs),
        ("zfs", backends::zfs),
    ];
    let mut commands = Vec::new();
    for (name, setup) in setups {
        // The file system must hold the volume, its snapshots and a received
        // copy; the btrfs backend's 512 MiB image and the ZFS backend's
        // 512 MiB pool hold the defaults.
        let Some(backend) = setup(&format!("bench providers ({name})")) else {
            continue;
        };
        let counts = rt.block_on(measure(&*backend, samples, send_mib, change_mib));
        commands.push((backend.name(), counts));
    }
    println!(
        "external commands per verb (as counted by CommandCount around each call; \
         the most over the samples)"
    );
    for (name, counts) in commands {
        let row: Vec<String> = counts
            .iter()
            .map(|(verb, seen)| format!("{verb} {}", spread(seen)))
            .collect();
        println!("{name:<6} {}", row.join(" | "));
    }
}

/// Commands one verb ran over its samples: the largest count by program,
/// with the spread of the total when the samples differ.
fn spread(seen: &[CommandCount]) -> String {
    let most = seen
        .iter()
        .max_by_key(|c| c.total())
        .copied()
        .unwrap_or_default();
    let least = seen.iter().map(CommandCount::total).min().unwrap_or(0);
    let mut parts: Vec<String> = [
        ("zfs", most.zfs),
        ("zpool", most.zpool),
        ("btrfs", most.btrfs),
        ("other", most.other),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(p, n)| format!("{n} {p}"))
    .collect();
    if parts.is_empty() {
        parts.push("0".into());
    }
    let all = parts.join(" + ");
    if least == most.total() {
        all
    } else {
        format!("{all} ({least}..{} total)", most.total())
    }
}

/// Commands run while `f` runs: nothing else in this process runs any.
async fn counted<T>(into: &mut Vec<CommandCount>, f: impl Future<Output = T>) -> T {
    let before = CommandCount::snapshot();
    let out = f.await;
    into.push(CommandCount::snapshot().since(before));
    out
}

type VerbCounts = Vec<(&'static str, Vec<CommandCount>)>;

async fn measure(
    b: &dyn Backend,
    samples: usize,
    send_mib: usize,
    change_mib: usize,
) -> VerbCounts {
    let state = tempfile::tempdir().unwrap();
    let mut config = ManagerConfig::default();
    config.factories.insert(b.kind().into(), b.factory());
    let m = Manager::open(state.path(), config).await.unwrap();
    m.add_provider("p", b.kind(), b.config()).await.unwrap();

    let (mut create, mut snapshot, mut fork, mut destroy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut n: [Vec<CommandCount>; 10] = std::array::from_fn(|_| Vec::new());
    for i in 0..samples {
        let id = format!("lat-{i}");
        let t = Instant::now();
        let v = counted(&mut n[0], m.create_volume("p", Some(&id), Meta::new()))
            .await
            .unwrap();
        create.push(t.elapsed());
        std::fs::write(Path::new(&v.location).join("f"), b"some data").unwrap();
        let t = Instant::now();
        let s = counted(&mut n[1], m.create_snapshot(&id, Meta::new()))
            .await
            .unwrap();
        snapshot.push(t.elapsed());
        let t = Instant::now();
        let f = counted(&mut n[2], m.fork_volume(&s.id, None, Meta::new()))
            .await
            .unwrap();
        fork.push(t.elapsed());
        for (victim, slot) in [(&f.id, 3), (&s.id, 4), (&id, 5)] {
            let t = Instant::now();
            counted(&mut n[slot], m.destroy_volume(victim))
                .await
                .unwrap();
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
    let full_stats = counted(&mut n[6], m.send_snapshot(&s1.id, &haves, &mut full))
        .await
        .unwrap();
    let full_send = t.elapsed();
    assert!(!full_stats.incremental);
    let t = Instant::now();
    counted(&mut n[7], m.receive_snapshot("dst", full.as_slice()))
        .await
        .unwrap();
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
    let inc_stats = counted(&mut n[8], m.send_snapshot(&s2.id, &haves, &mut inc))
        .await
        .unwrap();
    let inc_send = t.elapsed();
    assert!(inc_stats.incremental, "the receiver has s1");
    let t = Instant::now();
    counted(&mut n[9], m.receive_snapshot("dst", inc.as_slice()))
        .await
        .unwrap();
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
    let names = [
        "create",
        "snapshot",
        "fork",
        "destroy fork",
        "destroy snapshot",
        "destroy volume",
        "full send",
        "full recv",
        "incr send",
        "incr recv",
    ];
    names.into_iter().zip(n).collect()
}
