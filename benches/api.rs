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
//! Environment: `BENCH_DIR` (scratch root, on the disk to measure),
//! `BENCH_SECS` (default 4), `BENCH_CLIENTS` (default `1,8,32`),
//! `VOLMGR_BENCH_AGENT` (another build's `volmgr` binary to run instead of
//! this one: two versions compared back to back).

mod support;

use std::time::{Duration, Instant};

use support::{AgentProcess, Case, HttpConn, Latencies};

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
        "{:>7} | {:>10} {:>9} {:>9} {:>9} | {:>9} {:>8} | {:>11} {:>12} | {:>9}",
        "clients",
        "creates/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "raw/s",
        "vs raw",
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
        raw_before = raw_after;
        let (p50, p99, p999) = case.latencies.percentiles_us();
        println!(
            "{n:>7} | {:>10.0} {p50:>9.0} {p99:>9.0} {p999:>9.0} | {raw:>9.0} {:>7.3}x | {:>9.0}us {:>10.0}us | {:>9.0}",
            case.rate(),
            case.rate() / raw,
            agent_cpu * 1e6 / case.ops.max(1) as f64,
            client_cpu * 1e6 / case.ops.max(1) as f64,
            started.as_secs_f64() * 1e3
        );
        summary.push(format!(
            "{n} clients: {:.0} creates/s = {:.3}x raw fdatasync ({raw:.0}/s), p99 {p99:.0} us",
            case.rate(),
            case.rate() / raw
        ));
    }
    println!();
    for line in &summary {
        println!("summary: {line}");
    }
    println!("load average at the end: {}", support::load_avg());
}
