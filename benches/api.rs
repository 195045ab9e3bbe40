//! HTTP API benchmark: `cargo bench --bench api` (release build).
//!
//! Starts the real agent (`volmgr serve`, the default directory provider
//! under its state directory) and times `POST /storage/providers/default/volumes`
//! (an empty body: the agent picks a UUID) from 1, 8 and 32 clients, each
//! with its own keep-alive connection, for `BENCH_SECS` per case. Every
//! client is a task on one load-generator thread (a thread per client took
//! about 44% of this 2-vCPU machine at 32 clients, starving the agent it
//! measures); the CPU the agent and the load generator used per create is
//! printed (from `/proc/<pid>/stat` and `getrusage`). Each
//! case gets a fresh state directory. The raw reference (one thread of
//! 200-byte `pwrite` + `fdatasync` on a preallocated file) runs before and
//! after every case on the same disk; a case is compared with the mean of
//! the two. Prints creates/s, p50/p99/p999 latency, the raw rate and the
//! ratio, and the machine's load. Not a test: nothing here asserts a speed.
//!
//! Beside each case runs the design's floor for that many clients
//! ([`design_floor_loop`]): the same disk work a create needs (intent
//! `fdatasync`, the provider's marker and directory, one shared `syncfs`,
//! outcome `fdatasync`) done by one thread in batches of `clients`, with no
//! HTTP, no threads, no journal or provider code. It shows how much of the
//! gap to the raw loop is the three flushes the write path's invariants
//! keep and how much is the agent's own; the ratio `vs floor` is the
//! agent's rate over the floor's. `1-flush/s` is the same work with one
//! `syncfs` a cycle covering intents, effects and outcomes
//! ([`Floor::SharedSyncfs`]): what a journal made durable by the
//! provider's flush could reach (not in the agent: README, "The design's
//! floor").
//!
//! Environment: `BENCH_DIR` (scratch root, on the disk to measure),
//! `BENCH_SECS` (default 4), `BENCH_CLIENTS` (default `1,8,32`),
//! `BENCH_WRITE_CYCLE=1` (the agent runs with `--write-cycle`),
//! `VOLMGR_BENCH_AGENT` (another build's `volmgr` binary to run instead of
//! this one: two versions compared back to back).

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{AgentProcess, Case, HttpConn, Latencies};
use volmgr::storage::{RealStorage, Storage};

const PATH: &str = "/storage/providers/default/volumes";

/// One case: `clients` concurrent connections creating for `secs`, all
/// driven by one load-generator thread. Returns the case and the CPU
/// seconds the agent and the load generator used during it.
fn creates(agent: &AgentProcess, clients: usize, secs: Duration) -> (Case, f64, f64) {
    let token = agent.token();
    let addr = agent.addr;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let agent_cpu = support::cpu_secs_of(agent.child.id());
    let own_cpu = support::cpu_secs();
    let start = Instant::now();
    let deadline = start + secs;
    let (latencies, failures) = runtime.block_on(async move {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let token = token.clone();
                tokio::spawn(async move {
                    let mut conn = HttpConn::connect(addr, token.as_deref())
                        .await
                        .expect("connects");
                    let (mut lat, mut failures) = (Latencies::default(), 0u64);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match conn.request("POST", PATH, b"").await {
                            Ok(200) => lat.push(t.elapsed()),
                            Ok(status) => {
                                failures += 1;
                                eprintln!("create answered {status}");
                            }
                            Err(e) => panic!("create failed: {e}"),
                        }
                    }
                    (lat, failures)
                })
            })
            .collect();
        let mut all = (Latencies::default(), 0u64);
        for t in tasks {
            let (lat, failures) = t.await.expect("a client task panicked");
            all.0.extend(lat);
            all.1 += failures;
        }
        all
    });
    let case = Case {
        secs: start.elapsed().as_secs_f64(),
        ops: latencies.0.len() as u64,
        latencies,
    };
    let agent_cpu = support::cpu_secs_of(agent.child.id()) - agent_cpu;
    let own_cpu = support::cpu_secs() - own_cpu;
    assert_eq!(failures, 0, "every create succeeds");
    (case, agent_cpu, own_cpu)
}

/// Bytes of an intent and of an outcome record as the agent frames a
/// create (read from `strace` of one: 112 and 128).
const INTENT_LEN: usize = 112;
const OUTCOME_LEN: usize = 128;
/// Bytes of a dir-provider ownership marker (its JSON document).
const MARKER_LEN: usize = 120;

/// How the floor makes a cycle durable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Floor {
    /// Today's write path: intents `fdatasync`, effects, one `syncfs`,
    /// outcomes `fdatasync`: three flushes in a row per batch.
    ThreeFlushes,
    /// A write path whose journal lives on the provider's file system and is
    /// made durable by the provider's `syncfs` (a prototype in the agent was
    /// slower: README, "The design's floor"): each cycle
    /// writes the intents of one batch and the outcomes of the batch two
    /// cycles back, makes the previous batch's effects, then one `syncfs`
    /// covers all three. The same order holds (an intent durable before its
    /// effect, an effect before its outcome) with one flush per cycle.
    SharedSyncfs,
}

/// The write path's disk work for creates, `batch` at a time, on one
/// thread: per create a 112-byte intent and a 128-byte outcome appended to
/// a preallocated file, a marker file (`O_EXCL`, 120 bytes) and a
/// directory, as the dir provider makes them; flushed as `floor` says.
/// What no implementation keeping invariants 1 and 2 with these files can
/// do without, and nothing else: a floor to read the agent against (one
/// overlapping the stages of different batches could beat
/// [`Floor::ThreeFlushes`], one with more calls not). `dir` is made here;
/// journal and "provider" share its file system.
fn design_floor_loop(dir: &Path, secs: Duration, batch: usize, floor: Floor) -> Case {
    fs::create_dir(dir).unwrap();
    let journal_path = dir.join("journal.dat");
    let journal = RealStorage.create(&journal_path).unwrap();
    // As the raw loop's file: 256 MiB, written round (a 4 s case writes
    // about 10 MB).
    let size = 256u64 << 20;
    journal.allocate(size).unwrap();
    journal.sync_all().unwrap();
    let (markers, data) = (dir.join("markers"), dir.join("data"));
    fs::create_dir(&markers).unwrap();
    fs::create_dir(&data).unwrap();
    let root = File::open(dir).unwrap();
    let syncfs = || {
        // SAFETY: syncfs on a file descriptor this function owns.
        assert_eq!(unsafe { libc::syncfs(root.as_raw_fd()) }, 0, "syncfs");
    };
    let intents = vec![0x49u8; INTENT_LEN * batch];
    let outcomes = vec![0x4Fu8; OUTCOME_LEN * batch];
    let marker = [0x7Bu8; MARKER_LEN];
    let (mut case, mut offset) = (Case::default(), 0u64);
    let start = Instant::now();
    while start.elapsed() < secs {
        let t = Instant::now();
        journal.write_all_at(&intents, offset).unwrap();
        offset += intents.len() as u64;
        if floor == Floor::ThreeFlushes {
            journal.sync_data().unwrap();
        } else {
            journal.write_all_at(&outcomes, offset).unwrap();
            offset += outcomes.len() as u64;
        }
        for i in 0..batch as u64 {
            let name = format!("{}", case.ops + i);
            let mut m = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(markers.join(&name))
                .unwrap();
            m.write_all(&marker).unwrap();
            fs::create_dir(data.join(&name)).unwrap();
        }
        syncfs();
        if floor == Floor::ThreeFlushes {
            journal.write_all_at(&outcomes, offset).unwrap();
            offset += outcomes.len() as u64;
            journal.sync_data().unwrap();
        }
        offset %= size / 2;
        for _ in 0..batch {
            case.latencies.push(t.elapsed());
        }
        case.ops += batch as u64;
    }
    case.secs = start.elapsed().as_secs_f64();
    drop(journal);
    fs::remove_file(&journal_path).unwrap();
    case
}

fn main() {
    let root = tempfile::tempdir_in(support::bench_root()).unwrap();
    let secs = Duration::from_secs_f64(support::env_or("BENCH_SECS", 4.0));
    let clients = support::env_list("BENCH_CLIENTS", "1,8,32");
    println!("api bench: {}", support::machine_line(root.path()));
    println!(
        "POST {PATH} through `volmgr serve` (dir provider), {:.1} s per case, keep-alive \
         connections, every client on one load-generator thread; latencies in microseconds",
        secs.as_secs_f64()
    );
    println!();
    println!(
        "{:>7} | {:>10} {:>9} {:>9} {:>9} | {:>9} {:>8} | {:>9} {:>8} {:>9} {:>9} | {:>11} {:>12} | {:>9}",
        "clients",
        "creates/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "raw/s",
        "vs raw",
        "floor/s",
        "vs raw",
        "vs floor",
        "1-flush/s",
        "agent cpu/op",
        "client cpu/op",
        "start ms"
    );
    let raw_dir = root.path().join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let mut raw_before = support::raw_fdatasync_loop(&raw_dir, secs).rate();
    let mut summary = Vec::new();
    for (i, &n) in clients.iter().enumerate() {
        let state_dir = root.path().join(format!("state-{i}"));
        let (agent, started) = AgentProcess::start(&state_dir);
        let (mut case, agent_cpu, client_cpu) = creates(&agent, n, secs);
        // The state directory stays until the end: removing thousands of
        // inodes just before the next case would slow its creates (ext4
        // without a journal skips inodes deleted in the last 30 s when it
        // allocates, one inode-table lookup each).
        drop(agent);
        let raw_after = support::raw_fdatasync_loop(&raw_dir, secs).rate();
        let raw = (raw_before + raw_after) / 2.0;
        let floor_dir = root.path().join(format!("floor-{i}"));
        std::fs::create_dir(&floor_dir).unwrap();
        let floor =
            design_floor_loop(&floor_dir.join("three"), secs, n, Floor::ThreeFlushes).rate();
        let shared =
            design_floor_loop(&floor_dir.join("shared"), secs, n, Floor::SharedSyncfs).rate();
        raw_before = support::raw_fdatasync_loop(&raw_dir, secs).rate();
        let (p50, p99, p999) = case.latencies.percentiles_us();
        println!(
            "{n:>7} | {:>10.0} {p50:>9.0} {p99:>9.0} {p999:>9.0} | {raw:>9.0} {:>7.3}x | {floor:>9.0} {:>7.3}x {:>8.3}x {shared:>9.0} | {:>9.0}us {:>10.0}us | {:>9.0}",
            case.rate(),
            case.rate() / raw,
            floor / raw,
            case.rate() / floor,
            agent_cpu * 1e6 / case.ops.max(1) as f64,
            client_cpu * 1e6 / case.ops.max(1) as f64,
            started.as_secs_f64() * 1e3
        );
        summary.push(format!(
            "{n} clients: {:.0} creates/s = {:.3}x raw fdatasync ({raw:.0}/s), p99 {p99:.0} us; \
             the design's floor {floor:.0}/s = {:.3}x raw, the agent {:.2} of it; \
             one shared syncfs a cycle {shared:.0}/s = {:.3}x raw",
            case.rate(),
            case.rate() / raw,
            floor / raw,
            case.rate() / floor,
            shared / raw
        ));
    }
    println!();
    for line in &summary {
        println!("summary: {line}");
    }
    println!("load average at the end: {}", support::load_avg());
}
