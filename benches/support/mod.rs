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
        self.0.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
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
            // A rank: a small non-negative whole number of samples.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rank = (self.0.len() as f64 * q).ceil() as usize;
            let i = rank.clamp(1, self.0.len()) - 1;
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

    /// Joins the threads of a case started at `start`, each returning the
    /// latencies of its operations: one latency per operation done.
    pub fn join(threads: Vec<std::thread::JoinHandle<Latencies>>, start: Instant) -> Case {
        let mut case = Case::default();
        for t in threads {
            let lat = t.join().expect("a bench thread panicked");
            case.ops += lat.0.len() as u64;
            case.latencies.extend(lat);
        }
        case.secs = start.elapsed().as_secs_f64();
        case
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
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// One line naming the machine: CPUs, load, file system of `dir`.
pub fn machine_line(dir: &Path) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
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
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A keep-alive HTTP/1.1 connection speaking just enough to time requests.
/// Async, so one load-generator thread drives every client (threads of
/// their own would take the CPU of a small machine from the agent).
pub struct HttpConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    auth: String,
}

impl HttpConn {
    /// Connects to `addr`; `token` is sent as a bearer token when given.
    pub async fn connect(
        addr: std::net::SocketAddr,
        token: Option<&str>,
    ) -> std::io::Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
            auth: token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n")),
        })
    }

    /// Sends one request and reads the whole response; returns its status.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.auth,
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((status, end)) = parse_response(&self.buf)?
                && self.buf.len() >= end
            {
                return Ok(status);
            }
            let n = tokio::time::timeout(Duration::from_secs(60), self.stream.read(&mut chunk))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 60 s")
                })??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before the whole response",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The status and total length of the response at the start of `buf`, once
/// its head is complete (`None` before).
fn parse_response(buf: &[u8]) -> std::io::Result<Option<(u16, usize)>> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let Some(header_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..header_end]).map_err(|_| bad("head not UTF-8"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .ok_or_else(|| bad("no content-length"))?;
    Ok(Some((status, header_end + len)))
}

/// User + system CPU seconds process `pid` has used so far (from
/// `/proc/<pid>/stat`; 0 if unreadable).
pub fn cpu_secs_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// A `volmgr serve` child on 127.0.0.1 with its state directory; stopped
/// with SIGTERM when dropped.
pub struct AgentProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub state_dir: PathBuf,
}

impl AgentProcess {
    /// Starts the agent and waits (up to two minutes) for `200` from `/healthz`;
    /// returns it with the time that took.
    pub fn start(state_dir: &Path) -> (AgentProcess, Duration) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        // `VOLMGR_BENCH_AGENT`: another build's binary, to compare two
        // versions back to back in one run of this bench.
        let program = std::env::var_os("VOLMGR_BENCH_AGENT").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_volmgr")),
            PathBuf::from,
        );
        // `BENCH_WRITE_CYCLE=1`: the agent runs with `--write-cycle`.
        let cycle = std::env::var_os("BENCH_WRITE_CYCLE").is_some_and(|v| v == "1");
        let child = std::process::Command::new(program)
            .args(["serve", "--state-dir"])
            .arg(state_dir)
            .args(["--listen", &addr.to_string()])
            .args(cycle.then_some("--write-cycle"))
            .env("RUST_LOG", "off")
            .env_remove("VOLMGR_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("volmgr serve starts");
        let mut agent = AgentProcess {
            child,
            addr,
            state_dir: state_dir.to_owned(),
        };
        let deadline = started + Duration::from_secs(120);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the health checks");
        loop {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("volmgr serve exited early: {status}");
            }
            let token = agent.token();
            let healthy = runtime
                .block_on(async {
                    let mut c = HttpConn::connect(addr, token.as_deref()).await?;
                    c.request("GET", "/healthz", b"").await
                })
                .is_ok_and(|s| s == 200);
            if healthy {
                return (agent, started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "volmgr serve not healthy in 2 minutes"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The agent's bearer token, once it writes one to `<state-dir>/token`.
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.state_dir.join("token"))
            .ok()
            .map(|t| t.trim().to_owned())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
