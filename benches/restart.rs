//! Restart benchmark: `cargo bench --bench restart` (release build).
//!
//! Builds one state directory on the directory provider (as `volmgr serve`
//! lays it out: the provider's root is `<state-dir>/volumes`) and grows it to
//! 10,000, 50,000 and 100,000 volumes. At each size it reopens the manager
//! three times (warm page cache) and prints, for the median run, each phase of
//! `Manager::open` (journal open: lock, checkpoint read, segment walk;
//! checkpoint decode; replay of the records after the checkpoint; providers
//! built; provider inventory; reconciliation) and the total, the time to a
//! healthy manager. Then it starts the real agent (`volmgr serve`) on the
//! same directory as many times and prints the median time from its start
//! to the first `200` from `/healthz` (a new process: its memory is not
//! warm as the in-process manager's is).
//! Each phase's cost per volume is printed too, so linear growth shows as a
//! flat column. At each size it also times one encoding of the state as a
//! checkpoint (what the write path did with the state locked, once per
//! checkpoint interval, until checkpoints were rebuilt by the journal) and
//! prints its cost per record at a fixed 10,000-record interval and at the
//! interval grown to the state's entries; then a create that makes a
//! checkpoint due, timed, and that checkpoint's build on the blocking pool
//! (`ManagerStats::checkpoint_build_ns`: the journal's rebuild from its
//! newest checkpoint and the records after it, and the encoding).
//!
//! The volumes are created through the manager (64 at a time) with journal
//! syncs skipped (`UnsyncedStorage`): the fixture's durability does not
//! matter, and the disk is shared. Not a test: nothing here asserts a speed.
//!
//! Environment: `BENCH_DIR` (scratch root), `BENCH_VOLUMES` (default
//! `10000,50000,100000`), `BENCH_RESTARTS` (default 3), `BENCH_KEEP=1` keeps
//! the state directory (its path is printed) for profiling.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use volmgr::journal::encode_checkpoint;
use volmgr::manager::{Manager, ManagerConfig, OpenPhases};
use volmgr::state::Meta;
use volmgr::storage::RealStorage;
use volmgr::storage::unsynced::UnsyncedStorage;

fn config(state_dir: &Path, unsynced: bool) -> ManagerConfig {
    let root = state_dir.join("volumes").to_string_lossy().into_owned();
    ManagerConfig {
        default_provider: Some(Box::new(move || {
            Ok(("dir".into(), BTreeMap::from([("root".into(), root)])))
        })),
        storage: unsynced.then(|| {
            Arc::new(UnsyncedStorage::new(Arc::new(RealStorage)))
                as Arc<dyn volmgr::storage::Storage>
        }),
        ..ManagerConfig::default()
    }
}

/// Grows the fixture from `have` to `want` volumes; returns the seconds taken.
async fn grow(state_dir: &Path, have: usize, want: usize) -> f64 {
    let started = Instant::now();
    let m = Manager::open(state_dir, config(state_dir, true))
        .await
        .unwrap();
    let next = Arc::new(AtomicU64::new(have as u64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let m = m.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= want as u64 {
                    break;
                }
                let id = format!("vol-{i:07}");
                m.create_volume("default", Some(&id), Meta::new())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(m.volumes().len(), want);
    m.close().await;
    started.elapsed().as_secs_f64()
}

struct Restart {
    total: Duration,
    phases: OpenPhases,
    replayed: usize,
    /// One encoding of the opened state as a checkpoint payload.
    encode: Duration,
    entries: usize,
}

async fn restart(state_dir: &Path, volumes: usize) -> Restart {
    let started = Instant::now();
    let m = Manager::open(state_dir, config(state_dir, false))
        .await
        .unwrap();
    let total = started.elapsed();
    let report = m.reconcile_report();
    assert_eq!(m.volumes().len(), volumes);
    assert!(
        report.resolutions.is_empty(),
        "a clean restart resolves nothing: {:?}",
        report.resolutions.first()
    );
    let state = m.state();
    let encoding = Instant::now();
    let payload = encode_checkpoint(&state).unwrap();
    let encode = encoding.elapsed();
    assert!(!payload.is_empty());
    m.close().await;
    Restart {
        total,
        phases: report.phases,
        replayed: report.replayed_records,
        encode,
        entries: state.entries(),
    }
}

/// Creates measured around a checkpoint: opens the manager (which replays
/// `replayed` records, as the restart before it did), makes 20 creates to
/// warm up (the provider's first round after open is a whole `syncfs`),
/// then 800 from 16 tasks at once, each timed, the checkpoint interval set
/// so that one checkpoint comes due about halfway through them and no
/// other; closes (which waits for that checkpoint) and destroys them all
/// again in a second open (the fixture keeps its size). Returns the
/// creates' p50, p99 and slowest, and the checkpoint's build time.
async fn checkpoint_off_the_path(state_dir: &Path, replayed: usize) -> CheckpointRun {
    const WARM: u64 = 20;
    const MEASURED: u64 = 800;
    const TASKS: u64 = 16;
    let mut cfg = config(state_dir, false);
    cfg.checkpoint_every = replayed as u64 + 2 * WARM + MEASURED + 1;
    cfg.checkpoint_grows_with_state = false;
    let m = Manager::open(state_dir, cfg).await.unwrap();
    assert_eq!(m.reconcile_report().replayed_records, replayed);
    let id = |i: u64| format!("bench-checkpoint-{i:04}");
    for i in 0..WARM {
        m.create_volume("default", Some(&id(i)), Meta::new())
            .await
            .unwrap();
    }
    assert_eq!(m.stats().checkpoints, 0);
    let next = Arc::new(AtomicU64::new(WARM));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let m = m.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= WARM + MEASURED {
                    break took;
                }
                let started = Instant::now();
                m.create_volume("default", Some(&id(i)), Meta::new())
                    .await
                    .unwrap();
                took.push(started.elapsed());
            }
        }));
    }
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await.unwrap());
    }
    m.clone().close().await;
    let stats = m.stats();
    // The last handle: its providers (and their roots' locks) go with it.
    drop(m);
    assert_eq!(
        (stats.checkpoints, stats.checkpoint_failures),
        (1, 0),
        "{stats:?}"
    );
    let m = Manager::open(state_dir, config(state_dir, false))
        .await
        .unwrap();
    for i in 0..WARM + MEASURED {
        m.destroy_volume(&id(i)).await.unwrap();
    }
    m.close().await;
    took.sort();
    // Per mille: 500 the median, 990 the p99, 1000 the slowest.
    let at = |per_mille: usize| took[(took.len() - 1) * per_mille / 1000];
    CheckpointRun {
        p50: at(500),
        p99: at(990),
        slowest: at(1000),
        build: Duration::from_nanos(stats.checkpoint_build_ns),
    }
}

struct CheckpointRun {
    p50: Duration,
    p99: Duration,
    slowest: Duration,
    build: Duration,
}

/// Starts `volmgr serve` on the state directory, times it to a healthy
/// `/healthz`, then stops it with SIGTERM.
fn agent_to_healthy(state_dir: &Path) -> Duration {
    let (agent, took) = support::AgentProcess::start(state_dir);
    drop(agent);
    took
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir_in(support::bench_root()).unwrap();
    let state_dir = root.path().join("state");
    let sizes = support::env_list("BENCH_VOLUMES", "10000,50000,100000");
    let restarts: usize = support::env_or("BENCH_RESTARTS", 3).max(1);
    println!("restart bench: {}", support::machine_line(root.path()));
    println!(
        "dir provider; median of {restarts} warm restarts per size; phases of Manager::open in ms \
         (per-volume cost in us in brackets)"
    );
    println!(
        "{:>8} | {:>14} {:>14} {:>14} {:>10} {:>14} {:>14} | {:>9} {:>9} | {:>10}",
        "volumes",
        "journal open",
        "ckpt decode",
        "replay",
        "providers",
        "inventory",
        "reconcile",
        "healthy",
        "per vol",
        "agent /healthz"
    );
    let mut have = 0;
    let mut summary = Vec::new();
    for &n in &sizes {
        if n > have {
            let secs = rt.block_on(grow(&state_dir, have, n));
            eprintln!(
                "(fixture: {} volumes created in {secs:.1} s, {:.0}/s)",
                n - have,
                (n - have) as f64 / secs
            );
            have = n;
        }
        let mut runs: Vec<Restart> = (0..restarts)
            .map(|_| rt.block_on(restart(&state_dir, n)))
            .collect();
        runs.sort_by_key(|r| r.total);
        let r = &runs[runs.len() / 2];
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        let cell = |d: Duration| format!("{:.0} [{:.2}]", ms(d), per(d));
        let p = r.phases;
        let mut agents: Vec<Duration> = (0..restarts)
            .map(|_| agent_to_healthy(&state_dir))
            .collect();
        agents.sort();
        let agent = agents[agents.len() / 2];
        println!(
            "{n:>8} | {:>14} {:>14} {:>14} {:>10.0} {:>14} {:>14} | {:>7.0}ms {:>7.1}us | {:>10}",
            cell(p.journal_open),
            cell(p.checkpoint_decode),
            cell(p.replay),
            ms(p.providers),
            cell(p.inventory),
            cell(p.reconcile),
            ms(r.total),
            per(r.total),
            format!("{:.0}ms", ms(agent))
        );
        summary.push(format!(
            "{n} volumes: healthy manager in {:.2} s (agent /healthz {:.2} s), {} records replayed after the checkpoint",
            r.total.as_secs_f64(),
            agent.as_secs_f64(),
            r.replayed
        ));
        let grown = ManagerConfig::default()
            .checkpoint_every
            .max(r.entries as u64);
        let per_record = |interval: u64| r.encode.as_secs_f64() * 1e6 / interval as f64;
        summary.push(format!(
            "{n} volumes: the state encodes in {:.1} ms (the stall when it was encoded with the state locked); \
             {:.2} us a record at a fixed 10,000-record interval, {:.2} us at the grown one ({grown} records)",
            ms(r.encode),
            per_record(10_000),
            per_record(grown)
        ));
        let c = rt.block_on(checkpoint_off_the_path(&state_dir, r.replayed));
        summary.push(format!(
            "{n} volumes: 800 creates from 16 tasks around a checkpoint: p50 {:.2} ms, p99 {:.2} ms, \
             slowest {:.2} ms; the checkpoint's build took {:.1} ms",
            ms(c.p50),
            ms(c.p99),
            ms(c.slowest),
            ms(c.build)
        ));
    }
    println!();
    for line in &summary {
        println!("summary: {line}");
    }
    println!("load average at the end: {}", support::load_avg());
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("kept: {}", state_dir.display());
        std::mem::forget(root);
    }
}
