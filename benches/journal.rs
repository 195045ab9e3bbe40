//! Journal benchmark: `cargo bench --bench journal` (release build).
//!
//! Measures, in one run and on one disk, for 1, 4, 16 and 64 concurrent
//! writers, throughput and the p50/p99/p999 latency of each durable append:
//! - `Journal::append` of 200-byte records (tokio tasks on a 2-worker
//!   runtime), with records per `fdatasync` (group commit at work);
//! - SQLite (rusqlite, bundled, WAL, synchronous=FULL, one row per
//!   transaction); N writers are N threads sharing ONE connection behind a
//!   mutex (with a connection each, SQLite's busy handler sleeps between
//!   retries, which only makes it slower);
//! - redb 4 (one write transaction per record, `Durability::Immediate`); N
//!   writers are N threads sharing the `Database`;
//! - the raw reference: one thread doing 200-byte `pwrite` + `fdatasync` on a
//!   file preallocated the way segments are.
//!
//! The disk is shared and drifts, so the four systems of a row are not run
//! one after the other: each runs `BENCH_SLICES` (default 8) slices of
//! `BENCH_SECS / BENCH_SLICES`, interleaved with the others in a rotating
//! order, and each system's slices are summed. Every ratio compares figures
//! measured under the same drift.
//!
//! Then replay of 1,000,000 records into memory (warm page cache), and open
//! time with a checkpoint plus a short tail.
//!
//! Prints figures and the ratios journal/raw, journal/sqlite, journal/redb,
//! and the machine's load before and after. Not a test: nothing here asserts
//! a speed.
//!
//! Environment: `BENCH_DIR` (default: a temp dir under `target/`; a tmpfs is
//! reported, since fsync is free there), `BENCH_SECS` per system and row
//! (default 4), `BENCH_SLICES` (default 8),
//! `BENCH_WRITERS` (default `1,4,16,64`), `BENCH_REPLAY_RECORDS` (default
//! 1000000).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use support::{Case, Latencies, cpu_secs, env_list, env_or};
use volmgr::journal::{Journal, JournalConfig, JournalRecord};
use volmgr::storage::{RealStorage, Storage, StorageFile};

/// A 200-byte record (its bincode payload is exactly 200 bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchRec {
    id: [u8; 4],
    body: String,
}

impl JournalRecord for BenchRec {
    fn kind(&self) -> u8 {
        1
    }
}

const RECORD_LEN: usize = support::RAW_RECORD_LEN;

fn record(i: u32) -> BenchRec {
    let r = BenchRec {
        id: i.to_le_bytes(),
        body: "v".repeat(RECORD_LEN - 5),
    };
    debug_assert_eq!(
        volmgr::journal::encode_record(&r).unwrap().len(),
        RECORD_LEN
    );
    r
}

struct Bench {
    root: PathBuf,
    case: Duration,
    n: u64,
}

impl Bench {
    fn fresh_dir(&mut self, name: &str) -> PathBuf {
        self.n += 1;
        let dir = self.root.join(format!("{}-{name}", self.n));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// Threads running `op` for `secs`; each call timed.
// `op` arrives as a fresh `Arc` of a closure (unsized here); each thread clones it.
#[allow(clippy::needless_pass_by_value)]
fn threads_case(writers: usize, secs: Duration, op: Arc<dyn Fn() + Send + Sync>) -> Case {
    let start = Instant::now();
    let deadline = start + secs;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let op = op.clone();
            std::thread::spawn(move || {
                let mut lat = Latencies::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    Case::join(threads, start)
}

/// One system under test, kept open across the slices of a row.
trait System {
    /// Runs `writers` concurrent appenders for `secs`.
    fn run(&mut self, writers: usize, secs: Duration) -> Case;
    /// Records per sync so far, if the system counts its syncs.
    fn per_sync(&self) -> Option<f64> {
        None
    }
}

/// The raw reference: one thread of 200-byte pwrite + fdatasync on a file
/// preallocated the way segments are.
struct Raw {
    file: Box<dyn StorageFile>,
    offset: u64,
}

const RAW_FILE_LEN: u64 = 256 << 20;

impl Raw {
    fn new(dir: &Path) -> Raw {
        let file = RealStorage.create(&dir.join("raw.dat")).unwrap();
        file.allocate(RAW_FILE_LEN).unwrap();
        file.sync_all().unwrap();
        Raw { file, offset: 0 }
    }
}

impl System for Raw {
    fn run(&mut self, _writers: usize, secs: Duration) -> Case {
        let buf = [0x5Au8; RECORD_LEN];
        let mut case = Case::default();
        let start = Instant::now();
        while start.elapsed() < secs {
            let t = Instant::now();
            self.file.write_all_at(&buf, self.offset).unwrap();
            self.file.sync_data().unwrap();
            case.latencies.push(t.elapsed());
            case.ops += 1;
            // Always fresh (unwritten) blocks, as a segment's appends are.
            self.offset = (self.offset + RECORD_LEN as u64) % (RAW_FILE_LEN - RECORD_LEN as u64);
        }
        case.secs = start.elapsed().as_secs_f64();
        case
    }
}

struct JournalSystem {
    rt: tokio::runtime::Runtime,
    journal: Option<Arc<Journal<BenchRec>>>,
    ops: u64,
    syncs_before: u64,
}

impl JournalSystem {
    fn new(dir: &Path) -> JournalSystem {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (journal, _) = Journal::<BenchRec>::open(dir, JournalConfig::default()).unwrap();
        let syncs_before = journal.sync_count();
        JournalSystem {
            rt,
            journal: Some(Arc::new(journal)),
            ops: 0,
            syncs_before,
        }
    }

    fn journal(&self) -> &Arc<Journal<BenchRec>> {
        self.journal.as_ref().expect("open")
    }
}

impl System for JournalSystem {
    fn run(&mut self, writers: usize, secs: Duration) -> Case {
        let journal = self.journal().clone();
        let case = self.rt.block_on(async move {
            let start = Instant::now();
            let deadline = start + secs;
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let journal = journal.clone();
                    tokio::spawn(async move {
                        let rec = record(u32::try_from(w).unwrap());
                        let mut lat = Latencies::default();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            journal.append(&rec).await.unwrap();
                            lat.push(t.elapsed());
                        }
                        lat
                    })
                })
                .collect();
            let mut case = Case::default();
            for t in tasks {
                let lat = t.await.unwrap();
                case.ops += lat.0.len() as u64;
                case.latencies.extend(lat);
            }
            case.secs = start.elapsed().as_secs_f64();
            case
        });
        self.ops += case.ops;
        case
    }

    fn per_sync(&self) -> Option<f64> {
        let syncs = (self.journal().sync_count() - self.syncs_before).max(1);
        Some(self.ops as f64 / syncs as f64)
    }
}

impl Drop for JournalSystem {
    fn drop(&mut self) {
        if let Some(journal) = self.journal.take() {
            self.rt
                .block_on(Arc::into_inner(journal).expect("no appender left").close());
        }
    }
}

struct Sqlite(Arc<Mutex<rusqlite::Connection>>);

impl Sqlite {
    fn new(dir: &Path) -> Sqlite {
        let conn = rusqlite::Connection::open(dir.join("bench.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)",
            [],
        )
        .unwrap();
        Sqlite(Arc::new(Mutex::new(conn)))
    }
}

impl System for Sqlite {
    fn run(&mut self, writers: usize, secs: Duration) -> Case {
        let conn = self.0.clone();
        threads_case(
            writers,
            secs,
            Arc::new(move || {
                let body = [0x5Au8; RECORD_LEN];
                let conn = conn.lock().unwrap();
                // Autocommit: one row, one transaction, one WAL fsync.
                conn.prepare_cached("INSERT INTO records (body) VALUES (?1)")
                    .unwrap()
                    .execute([&body[..]])
                    .unwrap();
            }),
        )
    }
}

struct Redb {
    db: Arc<redb::Database>,
    next: Arc<AtomicU64>,
}

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("records");

impl Redb {
    fn new(dir: &Path) -> Redb {
        Redb {
            db: Arc::new(redb::Database::create(dir.join("bench.redb")).unwrap()),
            next: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl System for Redb {
    fn run(&mut self, writers: usize, secs: Duration) -> Case {
        let (db, next) = (self.db.clone(), self.next.clone());
        threads_case(
            writers,
            secs,
            Arc::new(move || {
                let body = [0x5Au8; RECORD_LEN];
                let mut tx = db.begin_write().unwrap();
                tx.set_durability(redb::Durability::Immediate).unwrap();
                {
                    let mut table = tx.open_table(REDB_TABLE).unwrap();
                    let key = next.fetch_add(1, Ordering::Relaxed);
                    table.insert(key, &body[..]).unwrap();
                }
                tx.commit().unwrap();
            }),
        )
    }
}

const SYSTEMS: [&str; 4] = ["journal", "sqlite", "redb", "raw"];

/// One row: every system runs `slices` times for `case / slices`, in an
/// order that rotates each slice, so disk drift hits all of them alike.
fn row(bench: &mut Bench, writers: usize, slices: u32) -> Vec<(Case, Option<f64>)> {
    let dirs: Vec<PathBuf> = SYSTEMS.iter().map(|n| bench.fresh_dir(n)).collect();
    let mut systems: Vec<Box<dyn System>> = vec![
        Box::new(JournalSystem::new(&dirs[0])),
        Box::new(Sqlite::new(&dirs[1])),
        Box::new(Redb::new(&dirs[2])),
        Box::new(Raw::new(&dirs[3])),
    ];
    let slice = bench.case / slices;
    let mut cases = vec![Case::default(); systems.len()];
    for i in 0..slices as usize {
        for k in 0..systems.len() {
            let s = (i + k) % systems.len();
            let c = systems[s].run(writers, slice);
            let total = &mut cases[s];
            total.ops += c.ops;
            total.secs += c.secs;
            total.latencies.extend(c.latencies);
        }
    }
    let out = cases
        .into_iter()
        .zip(&systems)
        .map(|(c, s)| (c, s.per_sync()))
        .collect();
    drop(systems);
    for dir in dirs {
        std::fs::remove_dir_all(dir).unwrap();
    }
    out
}

fn print_row(writers: usize, system: &str, case: &mut Case, per_sync: Option<f64>, raw: f64) {
    let (p50, p99, p999) = case.latencies.percentiles_us();
    let per_sync = per_sync.map_or_else(|| "-".into(), |p| format!("{p:.1}"));
    println!(
        "{writers:>7} {system:<8} {:>10.0} {p50:>9.0} {p99:>9.0} {p999:>9.0} {per_sync:>9} {:>7.2}x",
        case.rate(),
        case.rate() / raw
    );
}

/// Replay of `count` records (warm) and open time with a checkpoint + tail.
fn replay_and_open(bench: &mut Bench, count: u64) {
    let dir = bench.fresh_dir("replay");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = JournalConfig::default();
    let write_start = Instant::now();
    rt.block_on(async {
        let (journal, _) = Journal::<BenchRec>::open(&dir, config.clone()).unwrap();
        let batch: Vec<BenchRec> = (0..1000).map(record).collect();
        let mut written = 0;
        while written < count {
            let n = usize::try_from((count - written).min(batch.len() as u64)).unwrap();
            journal.append_all(&batch[..n]).await.unwrap();
            written += n as u64;
        }
        journal.close().await;
    });
    let write_secs = write_start.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let frame_bytes = count * volmgr::journal::format::frame_len(RECORD_LEN) as u64;

    let mut timings = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..3 {
        let cpu_before = cpu_secs();
        let t = Instant::now();
        let (journal, recovery) = Journal::<BenchRec>::open(&dir, config.clone()).unwrap();
        let secs = t.elapsed().as_secs_f64();
        cpu.push(cpu_secs() - cpu_before);
        assert_eq!(recovery.records.len() as u64, count);
        drop(recovery);
        drop(journal);
        timings.push(secs);
    }
    let warm = timings[1..].iter().copied().fold(f64::MAX, f64::min);
    let warm_cpu = cpu[1..].iter().copied().fold(f64::MAX, f64::min);
    println!(
        "replay: {count} records ({:.1} MB of frames, {:.1} MB of segment files) written in {write_secs:.1} s \
         (batches of 1000)",
        frame_bytes as f64 / 1e6,
        bytes as f64 / 1e6
    );
    println!(
        "replay (Journal::open into memory, warm, best of 2): {:.3} s = {:.0} records/s, {:.0} MB/s of frames \
         (first open {:.3} s); CPU time of the open {:.3} s = {:.0} records/s per CPU second",
        warm,
        count as f64 / warm,
        frame_bytes as f64 / 1e6 / warm,
        timings[0],
        warm_cpu,
        count as f64 / warm_cpu
    );

    // The journal's own share: the same walk (read, CRC, frame checks) with
    // a visitor that only touches the payload, no record decoding.
    let mut walk_secs = f64::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let mut n = 0u64;
        let mut sum = 0u64;
        volmgr::journal::reader::walk(&RealStorage, &dir, |_, _, payload, _, _| {
            n += 1;
            sum += u64::from(payload[0]);
            Ok(())
        })
        .unwrap();
        walk_secs = walk_secs.min(t.elapsed().as_secs_f64());
        assert_eq!(n, count);
        std::hint::black_box(sum);
    }
    println!(
        "frame replay without decoding records (reader::walk, warm): {:.3} s = {:.0} records/s, {:.0} MB/s",
        walk_secs,
        count as f64 / walk_secs,
        frame_bytes as f64 / 1e6 / walk_secs
    );

    // Checkpoint at the end, then a short tail.
    let tail = 1000u64;
    rt.block_on(async {
        let (journal, recovery) = Journal::<BenchRec>::open(&dir, config.clone()).unwrap();
        drop(recovery);
        let state = vec![0xC5u8; 1 << 20];
        journal.checkpoint(count, state).await.unwrap();
        for i in 0..tail {
            journal
                .append(&record(u32::try_from(i).unwrap()))
                .await
                .unwrap();
        }
        journal.close().await;
    });
    let mut open_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (journal, recovery) = Journal::<BenchRec>::open(&dir, config.clone()).unwrap();
        open_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(recovery.records.len() as u64, tail);
        assert_eq!(recovery.checkpoint.as_ref().map(|c| c.0), Some(count));
        drop(journal);
    }
    open_ms.sort_by(f64::total_cmp);
    println!(
        "open with a checkpoint (1 MiB state at seq {count}) plus a {tail}-record tail: median {:.2} ms \
         (min {:.2}, max {:.2}; history {count} records)",
        open_ms[open_ms.len() / 2],
        open_ms[0],
        open_ms[open_ms.len() - 1]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let root = tempfile::tempdir_in(support::bench_root()).unwrap();
    println!("journal bench: {}", support::machine_line(root.path()));
    let mut bench = Bench {
        root: root.path().to_owned(),
        case: Duration::from_secs_f64(env_or("BENCH_SECS", 4.0)),
        n: 0,
    };
    let slices: u32 = env_or("BENCH_SLICES", 8u32).max(1);
    let writers = env_list("BENCH_WRITERS", "1,4,16,64");
    println!(
        "each system runs {:.1} s per row, in {slices} slices interleaved with the others (the disk drifts; \
         interleaving exposes all to the same drift); records are {RECORD_LEN} bytes; journal: default \
         config (16 MiB segments); raw: one thread of pwrite+fdatasync on a preallocated file; latencies \
         in microseconds",
        bench.case.as_secs_f64()
    );
    println!();
    println!(
        "{:>7} {:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "writers", "system", "ops/s", "p50 us", "p99 us", "p999 us", "rec/sync", "vs raw"
    );
    let mut summary = Vec::new();
    for &w in &writers {
        let mut cases = row(&mut bench, w, slices);
        let raw = cases[3].0.rate();
        for (name, (case, per_sync)) in SYSTEMS.iter().zip(cases.iter_mut()) {
            print_row(w, name, case, *per_sync, raw);
        }
        let (journal, sqlite, redb) = (cases[0].0.rate(), cases[1].0.rate(), cases[2].0.rate());
        let line = format!(
            "{w:>2} writers: journal/raw {:.2}x, journal/sqlite {:.2}x, journal/redb {:.2}x, journal p99 {:.0} us \
             (raw {raw:.0}/s, p50 {:.0} us)",
            journal / raw,
            journal / sqlite,
            journal / redb,
            cases[0].0.latencies.percentiles_us().1,
            cases[3].0.latencies.percentiles_us().0,
        );
        println!("        {line}");
        summary.push(line);
    }
    println!();
    for line in &summary {
        println!("summary: {line}");
    }
    println!(
        "load average after the append cases: {}",
        support::load_avg()
    );
    println!();
    let replay_records: u64 = env_or("BENCH_REPLAY_RECORDS", 1_000_000);
    if replay_records > 0 {
        replay_and_open(&mut bench, replay_records);
    }
}
