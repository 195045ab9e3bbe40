//! Shared by the benchmarks: the raw `fdatasync` reference loop, latency
//! percentiles, the machine's load and the file system a directory is on.
//! Not a benchmark itself (a subdirectory without `main.rs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use volmgr::storage::{RealStorage, Storage};

/// Record size of the raw loop and of the journal bench.
pub const RAW_RECORD_LEN: usize = 200;

/// Latencies of one case, in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(pub Vec<u64>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// p50, p99 and p999 in microseconds (0 when empty).
    pub fn percentiles_us(&mut self) -> (f64, f64, f64) {
        if self.0.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
            self.0[i] as f64 / 1e3
        };
        (at(0.50), at(0.99), at(0.999))
    }
}

/// One measured case: operations per second and per-operation latencies.
#[derive(Debug, Default, Clone)]
pub struct Case {
    pub ops: u64,
    pub secs: f64,
    pub latencies: Latencies,
}

impl Case {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
}

/// The reference: 200-byte positioned writes + `fdatasync` on a file
/// preallocated the way journal segments are (`fallocate`), for `secs`.
pub fn raw_fdatasync_loop(dir: &Path, secs: Duration) -> Case {
    let path = dir.join("raw-fdatasync.dat");
    let file = RealStorage.create(&path).unwrap();
    let size = 256u64 << 20;
    file.allocate(size).unwrap();
    file.sync_all().unwrap();
    let buf = [0x5Au8; RAW_RECORD_LEN];
    let mut case = Case::default();
    let start = Instant::now();
    while start.elapsed() < secs {
        let t = Instant::now();
        let offset = (case.ops * RAW_RECORD_LEN as u64) % (size - RAW_RECORD_LEN as u64);
        file.write_all_at(&buf, offset).unwrap();
        file.sync_data().unwrap();
        case.latencies.push(t.elapsed());
        case.ops += 1;
    }
    case.secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    case
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg prints them.
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One line naming the machine: CPUs, load, file system of `dir`.
pub fn machine_line(dir: &Path) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let fs = fs_type(dir);
    format!(
        "machine: {cpus} CPUs, load average {} (1/5/15 min), {} on {fs}{}",
        load_avg(),
        dir.display(),
        if fs == "tmpfs" || fs == "ramfs" {
            " (WARNING: fsync costs nothing here; set BENCH_DIR to a disk)"
        } else {
            ""
        }
    )
}

/// The file system type the directory lives on, from /proc/mounts.
pub fn fs_type(dir: &Path) -> String {
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

/// The benches' scratch root: `BENCH_DIR`, else `target/bench-tmp`.
pub fn bench_root() -> PathBuf {
    let root = match std::env::var_os("BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-tmp"),
    };
    std::fs::create_dir_all(&root).unwrap();
    root
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of numbers from the environment.
pub fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect()
}

/// User + system CPU seconds of this process so far.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given; plain integers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
