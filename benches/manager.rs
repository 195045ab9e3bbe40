//! Manager benchmark: `cargo bench --bench manager` (release build).
//!
//! Creates, then destroys, `BENCH_OPS` volumes on the directory provider
//! through `Manager` (no HTTP) at concurrency 1 and 16, the provider batched
//! (the default: shared rounds, `batch_sync = auto`), batched with rounds
//! that fsync what the provider changed (`b-fsync`) or run one `syncfs` of
//! the whole file system (`b-syncfs`), and durable on return (its own
//! fsyncs per verb), and
//! prints per verb: operations/s, p50/p99 latency, journal `fdatasync`s and
//! provider rounds per operation (group
//! commit at work when they fall below 2), the share of each operation's wall
//! time spent awaiting durable journal appends, and, at concurrency 1 (where
//! every commit carries one operation's record, so the attribution is exact),
//! the journal's overhead: that wait minus the time its own writes and syncs
//! took, as a share of the operation. The raw `fdatasync` loop runs before
//! the cases for scale, and the machine's load is printed.
//!
//! Environment: `BENCH_DIR` (scratch root, on the disk to measure),
//! `BENCH_OPS` (default 2000 per case), `BENCH_CONCURRENCY` (default `1,16`),
//! `BENCH_TENANT=1`: a thread plays a tenant writing into a file on the same
//! file system flat out (1 MiB buffered writes cycling over 1 GiB, no
//! fsync) during every case, as containers do into their volumes; its rate
//! is printed (use a small `BENCH_OPS`: `syncfs` rounds then take seconds).
//! `BENCH_BTRFS=1` (root, btrfs-progs, loop devices) adds the btrfs
//! provider's cases on a loop-mounted 4 GiB btrfs image (journal on the
//! bench disk): its batched sync a transaction commit (`btrfs commit`, the
//! default) or `syncfs` (`btrfs syncfs`), with the tenant, if any, writing
//! on the btrfs file system instead.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Case, Latencies};
use volmgr::manager::{Manager, ManagerConfig, ManagerStats};
use volmgr::provider::dir::{BatchSync, CONFIG_ROOT, DirProvider};
use volmgr::provider::{Durability, Provider, ProviderConfig};
use volmgr::state::Meta;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir_in(support::bench_root()).unwrap();
    let ops: usize = support::env_or("BENCH_OPS", 2000);
    let levels = support::env_list("BENCH_CONCURRENCY", "1,16");
    println!("manager bench: {}", support::machine_line(root.path()));
    let raw_dir = root.path().join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let mut raw = support::raw_fdatasync_loop(&raw_dir, Duration::from_secs(2));
    let (raw_p50, _, _) = raw.latencies.percentiles_us();
    println!(
        "raw pwrite+fdatasync loop: {:.0}/s, p50 {raw_p50:.0} us; {ops} operations per case",
        raw.rate()
    );
    println!();
    println!(
        "{:>11} {:<15} {:<8} | {:>8} {:>9} {:>9} | {:>12} {:>9} {:>14} {:>16}",
        "concurrency",
        "provider",
        "verb",
        "ops/s",
        "p50 us",
        "p99 us",
        "fdatasync/op",
        "rounds/op",
        "journal share",
        "journal overhead"
    );
    let with_tenant = support::env_or("BENCH_TENANT", 0u32) == 1;
    let tenant = with_tenant.then(|| Tenant::start(root.path()));
    let mut summary = Vec::new();
    for &concurrency in &levels {
        for (provider_name, durability, batch_sync) in [
            ("batched", Durability::Batched, BatchSync::Auto),
            ("b-fsync", Durability::Batched, BatchSync::Fsync),
            ("b-syncfs", Durability::Batched, BatchSync::Syncfs),
            ("on-return", Durability::OnReturn, BatchSync::Auto),
        ] {
            let dir = tempfile::tempdir_in(root.path()).unwrap();
            let volumes = dir.path().join("volumes").to_string_lossy().into_owned();
            let mut config = ManagerConfig {
                default_provider: Some(Box::new(move || {
                    Ok((
                        "dir".into(),
                        BTreeMap::from([(CONFIG_ROOT.into(), volumes)]),
                    ))
                })),
                ..ManagerConfig::default()
            };
            let built: Arc<Mutex<Option<Arc<DirProvider>>>> = Arc::default();
            let slot = built.clone();
            config.factories.insert(
                "dir".into(),
                Arc::new(
                    move |c: &ProviderConfig, _owner: &volmgr::provider::AgentId| {
                        let root = PathBuf::from(&c[CONFIG_ROOT]);
                        let p = Arc::new(match durability {
                            Durability::Batched => DirProvider::with_batch_sync(root, batch_sync)?,
                            Durability::OnReturn => DirProvider::with_durability(root, durability)?,
                        });
                        *slot.lock().unwrap() = Some(p.clone());
                        Ok(p as Arc<dyn Provider>)
                    },
                ),
            );
            let m = rt.block_on(Manager::open(dir.path(), config)).unwrap();
            let provider = built.lock().unwrap().clone().expect("the factory ran");
            // A provider's first round is a whole `syncfs` (what an earlier
            // instance may have left unsynced): once per open, not measured.
            provider.sync().unwrap();
            let rounds = || provider.syncfs_rounds();
            let label = format!("dir {provider_name}");
            summary.extend(rt.block_on(cases(&m, &label, concurrency, ops, &rounds)));
            rt.block_on(m.close());
        }
    }
    if let Some(t) = tenant {
        println!("tenant (dir cases): {}", t.stop());
    }
    if support::env_or("BENCH_BTRFS", 0u32) == 1 {
        summary.extend(btrfs_cases(&rt, root.path(), &levels, ops, with_tenant));
    }
    println!();
    for line in &summary {
        println!("summary: {line}");
    }
    println!("load average at the end: {}", support::load_avg());
}

/// Creates, then destroys, `ops` volumes on `m`'s default provider at
/// `concurrency`, printing a row per verb; `rounds` reads the provider's
/// sync rounds so far.
async fn cases(
    m: &Manager,
    label: &str,
    concurrency: usize,
    ops: usize,
    rounds: &dyn Fn() -> u64,
) -> Vec<String> {
    let mut lines = Vec::new();
    for verb in ["create", "destroy"] {
        let before = (m.stats(), rounds());
        let mut case = run(m, verb, concurrency, ops).await;
        let after = (m.stats(), rounds());
        lines.push(row(concurrency, label, verb, &mut case, &before, &after));
    }
    lines
}

/// The btrfs provider's cases (`BENCH_BTRFS=1`): its batched sync a
/// transaction commit (the default) or `syncfs`, on a loop-mounted btrfs
/// image in the temporary directory (the journal on the bench disk), with a tenant writing on that file
/// system when `tenant`.
fn btrfs_cases(
    rt: &tokio::runtime::Runtime,
    state_root: &std::path::Path,
    levels: &[usize],
    ops: usize,
    tenant: bool,
) -> Vec<String> {
    use volmgr::provider::btrfs;
    let fs = common::BtrfsFs::create(4096)
        .expect("BENCH_BTRFS=1 needs root, btrfs-progs and loop devices");
    println!(
        "btrfs cases: a 4 GiB btrfs image, loop-mounted on {}",
        fs.device()
    );
    let tenant = tenant.then(|| Tenant::start(fs.path()));
    let mut summary = Vec::new();
    for &concurrency in levels {
        for batch_sync in [btrfs::BatchSync::Commit, btrfs::BatchSync::Syncfs] {
            // The journal on the bench disk, as for the dir cases; the
            // volumes on the btrfs image.
            let state = tempfile::tempdir_in(state_root).unwrap();
            let volumes = fs
                .path()
                .join(format!("{}-{concurrency}", batch_sync.as_str()))
                .to_string_lossy()
                .into_owned();
            let config = ManagerConfig {
                default_provider: Some(Box::new(move || {
                    Ok((
                        btrfs::KIND.into(),
                        BTreeMap::from([
                            (btrfs::CONFIG_ROOT.into(), volumes),
                            (btrfs::CONFIG_BATCH_SYNC.into(), batch_sync.as_str().into()),
                        ]),
                    ))
                })),
                ..ManagerConfig::default()
            };
            let m = rt.block_on(Manager::open(state.path(), config)).unwrap();
            let stats = m.clone();
            let rounds = move || stats.stats().provider_syncs;
            let label = format!("btrfs {}", batch_sync.as_str());
            summary.extend(rt.block_on(cases(&m, &label, concurrency, ops, &rounds)));
            rt.block_on(m.close());
        }
    }
    if let Some(t) = tenant {
        println!("tenant (btrfs cases): {}", t.stop());
    }
    summary
}

/// A tenant writing flat out into a file on the measured file system.
struct Tenant {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, f64)>,
}

impl Tenant {
    fn start(dir: &std::path::Path) -> Tenant {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(dir.join("tenant.dat")).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let chunk = vec![0xab_u8; 1 << 20];
            let started = Instant::now();
            let mut written = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all_at(&chunk, (written % 1024) << 20).unwrap();
                written += 1;
            }
            (written, started.elapsed().as_secs_f64())
        });
        // Let its dirty pages build up to the kernel's dirty limits first,
        // as on a host where a tenant has been writing for a while.
        std::thread::sleep(Duration::from_secs(10));
        Tenant { stop, thread }
    }

    fn stop(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mib, secs) = self.thread.join().unwrap();
        format!(
            "wrote {mib} MiB in {secs:.1} s ({:.0} MiB/s, buffered)",
            mib as f64 / secs
        )
    }
}

async fn run(m: &Manager, verb: &'static str, concurrency: usize, ops: usize) -> Case {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let m = m.clone();
        let n = ops / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            for i in 0..n {
                let id = format!("b{t}-{i}");
                let op_started = Instant::now();
                match verb {
                    "create" => {
                        m.create_volume("default", Some(&id), Meta::new())
                            .await
                            .unwrap();
                    }
                    _ => m.destroy_volume(&id).await.unwrap(),
                }
                lat.push(op_started.elapsed());
            }
            lat
        }));
    }
    let mut case = Case::default();
    for t in tasks {
        let lat = t.await.unwrap();
        case.ops += lat.0.len() as u64;
        case.latencies.extend(lat);
    }
    case.secs = started.elapsed().as_secs_f64();
    case
}

fn row(
    concurrency: usize,
    provider: &str,
    verb: &str,
    case: &mut Case,
    (before, syncfs_before): &(ManagerStats, u64),
    (after, syncfs_after): &(ManagerStats, u64),
) -> String {
    let ops = (after.operations - before.operations).max(1) as f64;
    let syncs = (after.syncs - before.syncs) as f64;
    // The provider's own syncfs rounds: its barriers and the manager's
    // shared sync (none when durable on return: it fsyncs instead).
    let psyncs = (syncfs_after - syncfs_before) as f64;
    let op_ns = (after.operation_ns - before.operation_ns).max(1) as f64;
    let wait_ns = (after.journal_wait_ns - before.journal_wait_ns) as f64;
    let sync_ns = (after.journal_sync_ns - before.journal_sync_ns) as f64;
    let share = wait_ns / op_ns;
    let overhead = (concurrency == 1).then(|| (wait_ns - sync_ns).max(0.0) / op_ns);
    let (p50, p99, _) = case.latencies.percentiles_us();
    println!(
        "{concurrency:>11} {provider:<15} {verb:<8} | {:>8.0} {p50:>9.0} {p99:>9.0} | {:>12.2} {:>9.2} {:>13.1}% {:>16}",
        case.rate(),
        syncs / ops,
        psyncs / ops,
        share * 100.0,
        overhead.map_or_else(|| "-".into(), |o| format!("{:.1}%", o * 100.0))
    );
    format!(
        "{verb} at concurrency {concurrency}, {provider}: {:.0}/s, {:.2} journal fdatasyncs/op, {:.2} provider rounds/op, journal share {:.1}%{}",
        case.rate(),
        syncs / ops,
        psyncs / ops,
        share * 100.0,
        overhead.map_or_else(String::new, |o| format!(
            ", journal overhead beyond its syncs {:.1}%",
            o * 100.0
        ))
    )
}
