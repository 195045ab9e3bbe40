//! Journal benchmark: `cargo bench --bench journal` (release build).
//!
//! Measures, in one run and on one disk:
//! - durable appends/s of 200-byte records through `Journal::append` with 1, 4,
//!   16 and 64 concurrent writers (tokio tasks on a 2-worker runtime);
//! - a raw loop of 200-byte `pwrite` + `fdatasync` on a file preallocated the
//!   way segments are (`fallocate` through the storage seam);
//! - SQLite (rusqlite, bundled, WAL, synchronous=FULL, one row per
//!   transaction); N writers are N threads sharing ONE connection behind a
//!   mutex (with a connection each, SQLite's busy handler sleeps between
//!   retries, which only makes it slower);
//! - redb 4 (one write transaction per record, `Durability::Immediate`); N
//!   writers are N threads sharing the `Database`;
//! - replay of 1,000,000 records into memory (warm page cache), and open time
//!   with a checkpoint plus a short tail.
//!
//! Prints figures and the ratios journal/raw, journal/sqlite, journal/redb.
//! Not a test: nothing here asserts a speed.
//!
//! Environment: `BENCH_DIR` (default: a temp dir under `target/`; a tmpfs is
//! reported, since fsync is free there), `BENCH_SECS` per case (default 4),
//! `BENCH_WRITERS` (default `1,4,16,64`), `BENCH_REPLAY_RECORDS` (default
//! 1000000).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use volmgr::journal::{Journal, JournalConfig, JournalRecord};
use volmgr::storage::{RealStorage, Storage};

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

const RECORD_LEN: usize = 200;

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

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of this process so far.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given; plain integers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The file system type the directory lives on, from /proc/mounts.
fn fs_type(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_, Some(point), Some(kind)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if dir.starts_with(point) && best.as_ref().is_none_or(|(len, _)| point.len() > *len) {
            best = Some((point.len(), kind.to_owned()));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, k)| k)
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

/// Raw loop: 200-byte positioned writes + fdatasync on a preallocated file.
fn raw_loop(bench: &mut Bench) -> f64 {
    let dir = bench.fresh_dir("raw");
    let path = dir.join("raw.dat");
    let file = RealStorage.create(&path).unwrap();
    let size = 256u64 << 20;
    file.allocate(size).unwrap();
    file.sync_all().unwrap();
    let buf = [0x5Au8; RECORD_LEN];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < bench.case {
        let offset = (n * RECORD_LEN as u64) % (size - RECORD_LEN as u64);
        file.write_all_at(&buf, offset).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_dir_all(&dir).unwrap();
    rate
}

fn journal_appends(bench: &mut Bench, writers: usize) -> (f64, f64) {
    let dir = bench.fresh_dir("journal");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let case = bench.case;
    let (rate, per_sync) = rt.block_on(async move {
        let (journal, _) = Journal::<BenchRec>::open(&dir, JournalConfig::default()).unwrap();
        let journal = Arc::new(journal);
        let total = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + case;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let journal = journal.clone();
            let total = total.clone();
            tasks.push(tokio::spawn(async move {
                let rec = record(w as u32);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    journal.append(&rec).await.unwrap();
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        let n = total.load(Ordering::Relaxed);
        let syncs = journal.sync_count().max(1);
        Arc::into_inner(journal).unwrap().close().await;
        std::fs::remove_dir_all(&dir).unwrap();
        (n as f64 / elapsed, n as f64 / syncs as f64)
    });
    (rate, per_sync)
}

fn sqlite_appends(bench: &mut Bench, writers: usize) -> f64 {
    let dir = bench.fresh_dir("sqlite");
    let conn = rusqlite::Connection::open(dir.join("bench.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute(
        "CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)",
        [],
    )
    .unwrap();
    let conn = Arc::new(Mutex::new(conn));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + bench.case;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let conn = conn.clone();
            let total = total.clone();
            std::thread::spawn(move || {
                let body = [0x5Au8; RECORD_LEN];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let conn = conn.lock().unwrap();
                    // Autocommit: one row, one transaction, one WAL fsync.
                    conn.prepare_cached("INSERT INTO records (body) VALUES (?1)")
                        .unwrap()
                        .execute([&body[..]])
                        .unwrap();
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rate = total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    drop(conn);
    std::fs::remove_dir_all(&dir).unwrap();
    rate
}

fn redb_appends(bench: &mut Bench, writers: usize) -> f64 {
    const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("records");
    let dir = bench.fresh_dir("redb");
    let db = Arc::new(redb::Database::create(dir.join("bench.redb")).unwrap());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + bench.case;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let db = db.clone();
            let next = next.clone();
            std::thread::spawn(move || {
                let body = [0x5Au8; RECORD_LEN];
                while Instant::now() < deadline {
                    let mut tx = db.begin_write().unwrap();
                    tx.set_durability(redb::Durability::Immediate).unwrap();
                    {
                        let mut table = tx.open_table(TABLE).unwrap();
                        let key = next.fetch_add(1, Ordering::Relaxed);
                        table.insert(key, &body[..]).unwrap();
                    }
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rate = next.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
    rate
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
            let n = (count - written).min(batch.len() as u64) as usize;
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
            journal.append(&record(i as u32)).await.unwrap();
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
    let root = match std::env::var_os("BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-tmp"),
    };
    std::fs::create_dir_all(&root).unwrap();
    let root = tempfile::tempdir_in(&root).unwrap();
    let fs = fs_type(root.path());
    println!(
        "journal bench in {} ({fs}){}",
        root.path().display(),
        if fs == "tmpfs" || fs == "ramfs" {
            ": WARNING, fsync costs nothing on this file system; set BENCH_DIR to a disk"
        } else {
            ""
        }
    );
    let mut bench = Bench {
        root: root.path().to_owned(),
        case: Duration::from_secs_f64(env_or("BENCH_SECS", 4.0)),
        n: 0,
    };
    let writers: Vec<usize> = std::env::var("BENCH_WRITERS")
        .unwrap_or_else(|_| "1,4,16,64".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    println!(
        "each case runs {:.1} s; records are {RECORD_LEN} bytes; journal: default config (16 MiB segments)",
        bench.case.as_secs_f64()
    );

    let raw = raw_loop(&mut bench);
    println!("raw pwrite+fdatasync loop (fallocated file): {raw:.0} records/s");
    println!();
    println!(
        "{:>7} | {:>11} {:>9} | {:>11} {:>11} | {:>9} | {:>8} {:>10} {:>9}",
        "writers",
        "journal/s",
        "rec/sync",
        "sqlite/s",
        "redb/s",
        "raw/s",
        "j/raw",
        "j/sqlite",
        "j/redb"
    );
    let mut raws = vec![raw];
    for &w in &writers {
        let (journal, per_sync) = journal_appends(&mut bench, w);
        let sqlite = sqlite_appends(&mut bench, w);
        let redb = redb_appends(&mut bench, w);
        // The disk is shared and drifts: compare with a raw loop run right
        // after this row, averaged with the one before it.
        let raw_now = raw_loop(&mut bench);
        let raw_row = (raws.last().unwrap() + raw_now) / 2.0;
        raws.push(raw_now);
        println!(
            "{w:>7} | {journal:>11.0} {per_sync:>9.1} | {sqlite:>11.0} {redb:>11.0} | {raw_row:>9.0} | {:>7.2}x {:>9.2}x {:>8.2}x",
            journal / raw_row,
            journal / sqlite,
            journal / redb
        );
    }
    let (lo, hi) = raws
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!();
    println!(
        "raw loop measured {} times: {lo:.0}..{hi:.0} records/s (the raw/s column is the mean of the runs \
         before and after each row)",
        raws.len()
    );
    println!();
    let replay_records: u64 = env_or("BENCH_REPLAY_RECORDS", 1_000_000);
    if replay_records > 0 {
        replay_and_open(&mut bench, replay_records);
    }
}
