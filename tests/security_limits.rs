//! The agent's resource limits, attacked (issue #16, items 5, 6, 7, 12).
//! The agent was found to fall over to cheap attacks, all by clients or
//! peers holding something without bound:
//! - a source sending 1 byte every 20 s held a pull forever: the target
//!   stayed busy, could not be cancelled, and SIGTERM did not stop the
//!   agent within 80 s;
//! - 530 `POST .../send` never read took RSS from 173 MB to 2.8 GB with 516
//!   threads, and creates of unrelated volumes timed out; a destroy of the
//!   snapshot being sent succeeded;
//! - 20,000 idle TCP connections used up the file descriptors before any
//!   auth check, and `/healthz` timed out;
//! - 300 event-stream subscribers that never read added 690 MB.
//!
//! Each test performs the attack for real (raw sockets that never read,
//! idle or half-sent requests, a fake peer that trickles) against a real
//! `volmgr serve` process, or an in-process agent for the pulls, and
//! asserts the agent stays healthy while it runs: `/healthz` and a create
//! of another volume succeed, and its threads, memory and descriptors (from
//! `/proc/<pid>`) stay under the stated bounds. Nothing sleeps to
//! synchronise: waits are for events, or polls with a bound.

mod agent_support;
#[path = "common/config.rs"]
mod config;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_support::fake_peer::{FakePeer, Script};
use agent_support::process::ServeProcess;
use agent_support::{TestAgent, assert_error, peers, raw, sim_config};
use serde_json::json;
use volmgr::agent::{Limits, ServeOptions};
use volmgr::provider::sim::SimProvider;

/// Bound on polls for what the agent does by itself (timeouts firing,
/// claims released): generous, ends as soon as the condition holds.
const POLL_BOUND: Duration = Duration::from_secs(60);

/// Polls `condition` every 20 ms until it holds, at most [`POLL_BOUND`].
#[track_caller]
fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < POLL_BOUND,
            "{what}: not within {POLL_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of `/proc/<pid>/status` in its unit (`Threads`, `VmRSS` in kB).
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A TCP connection from `from` (any 127.x address) with a receive buffer
/// of `rcvbuf` bytes, set before connecting so the window stays small: a
/// client that reads nothing holds the server's writes at once.
fn connect_from(from: Ipv4Addr, to: SocketAddr, rcvbuf: i32) -> TcpStream {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap();
    // SAFETY: plain socket calls on a descriptor we own; the addresses are
    // valid sockaddr_in values of the given length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let buf = rcvbuf;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const buf).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<i32>()).unwrap(),
        );
        let local = sockaddr(from, 0);
        assert_eq!(
            libc::bind(fd, (&raw const local).cast(), len),
            0,
            "bind {from}: {}",
            std::io::Error::last_os_error()
        );
        let remote = sockaddr(*to.ip(), to.port());
        assert_eq!(
            libc::connect(fd, (&raw const remote).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        TcpStream::from_raw_fd(fd)
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// Writes a request on `conn` and reads the status line only: the client
/// then reads nothing more.
fn request_status(conn: &mut TcpStream, method: &str, path: &str, token: &str) -> u16 {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         accept: text/event-stream\r\ncontent-length: 0\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).unwrap();
    conn.set_read_timeout(Some(POLL_BOUND)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert!(line.len() < 64, "no status line: {line:?}");
        assert_eq!(
            conn.read(&mut byte).unwrap(),
            1,
            "closed before the status line"
        );
        line.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&line);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Where a process agent listens, and its token.
struct Endpoint {
    addr: SocketAddr,
    token: String,
}

impl Endpoint {
    fn of(agent: &ServeProcess) -> Endpoint {
        Endpoint {
            addr: addr_of(&agent.url),
            token: agent.token.clone(),
        }
    }
}

/// One request on a new connection (`connection: close`), answered within
/// the poll bound: (status, body as JSON or Null).
fn call(
    agent: &Endpoint,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut conn = TcpStream::connect(agent.addr).unwrap();
    conn.set_read_timeout(Some(POLL_BOUND)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        agent.token,
        body.len()
    );
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).expect("answered");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk: its size line, then the data.
        rest.split_once("\r\n")
            .and_then(|(_, d)| d.rsplit_once("\r\n0\r\n"))
            .map(|(d, _)| d.trim_end().to_owned())
    } else {
        Some(rest.to_owned())
    };
    let json = json
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[track_caller]
fn healthy(agent: &ServeProcess, new_volume: &str) {
    let (status, body) = call(&Endpoint::of(agent), "GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &Endpoint::of(agent),
        "POST",
        "/storage/providers/default/volumes",
        Some(json!({ "id": new_volume })),
    );
    assert_eq!(status, 200, "{body}");
}

/// Whether the server closed `conn` (EOF or reset) within the poll bound.
fn closed_by_server(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(POLL_BOUND)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match conn.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("closed_by_server: the read failed otherwise: {e:?}");
                return false;
            }
        }
    }
}

/// A log reader that stops reading (a stalled journald, a pipe nobody
/// drains) does not stop the agent. Its stderr was written from the worker
/// threads, so once the 64 KiB pipe was full (237 creates, one request line
/// each) every request and `/healthz` hung. Here the test stops reading the
/// agent's stderr, 1,500 creates (each logging a line of about 400 bytes:
/// about 9 times the pipe, more than the agent's queue of lines) and a
/// health probe all answer, and once the reading resumes the agent reports
/// how many lines it dropped.
#[test]
fn a_log_reader_that_stops_reading_never_stops_the_agent() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(state.path(), &[]);
    let endpoint = Endpoint::of(&agent);
    let stalled = agent.stall_logs();
    for i in 0..1500 {
        let (status, body) = call(
            &endpoint,
            "POST",
            "/storage/providers/default/volumes",
            Some(json!({ "id": format!("v{i}") })),
        );
        assert_eq!(status, 200, "create {i} while stderr is not read: {body}");
    }
    healthy(&agent, "after-the-stall");
    drop(stalled);
    let report = agent.wait_for("log lines dropped: stderr was not read fast enough");
    let dropped = report["fields"]["dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "{report}");
    healthy(&agent, "after-the-resume");
}

#[test]
fn a_flood_of_idle_connections_cannot_lock_out_health_probes_or_creates() {
    let state = tempfile::tempdir().unwrap();
    let max = 64;
    let agent = ServeProcess::start(state.path(), &["--max-connections", &max.to_string()]);
    let pid = agent.child.id();
    let before = open_fds(pid);
    let target = addr_of(&agent.url);
    // 2,000 connections that never send a byte (20,000 in the issue: the
    // cap makes the count irrelevant), all held open by this test.
    let flood: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(target).expect("the agent keeps accepting"))
        .collect();
    healthy(&agent, "during-the-flood");
    let fds = open_fds(pid);
    println!(
        "idle flood: {} connections held, agent fds {before} before, {fds} during (cap {max})",
        flood.len()
    );
    assert!(
        fds <= before + max + 8,
        "descriptors bounded by the cap: {fds}"
    );
    // The connections the cap evicted were closed by the agent.
    let mut flood = flood;
    assert!(
        closed_by_server(&mut flood[0]),
        "the oldest idle connection was evicted"
    );
}

#[test]
fn slow_or_silent_requests_and_idle_keep_alives_are_closed_by_their_timeouts() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(
        state.path(),
        &["--header-read-timeout", "1s", "--idle-timeout", "2s"],
    );
    let target = addr_of(&agent.url);
    // A slow-loris head: started, never finished.
    let mut slow = TcpStream::connect(target).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    // A connection that never says anything.
    let mut silent = TcpStream::connect(target).unwrap();
    // A keep-alive connection after one answered request.
    let mut kept = TcpStream::connect(target).unwrap();
    assert_eq!(
        request_status(&mut kept, "GET", "/healthz", &agent.token),
        200
    );
    for (name, conn) in [
        ("slow head", &mut slow),
        ("silent", &mut silent),
        ("kept alive", &mut kept),
    ] {
        assert!(closed_by_server(conn), "{name}: not closed by the agent");
    }
    healthy(&agent, "after-the-timeouts");
}

/// A dir volume holding `mib` MiB, and a snapshot of it.
fn big_snapshot(agent: &ServeProcess, id: &str, mib: usize) -> String {
    let (status, v) = call(
        &Endpoint::of(agent),
        "POST",
        "/storage/providers/default/volumes",
        Some(json!({ "id": id })),
    );
    assert_eq!(status, 200, "{v}");
    let location = v["location"].as_str().unwrap();
    let block: Vec<u8> = (0..1 << 20)
        .map(|i| u8::try_from(i * 7 % 251).unwrap())
        .collect();
    let mut file = std::fs::File::create(Path::new(location).join("big")).unwrap();
    for _ in 0..mib {
        file.write_all(&block).unwrap();
    }
    drop(file);
    let (status, s) = call(
        &Endpoint::of(agent),
        "PUT",
        &format!("/storage/volumes/{id}/snapshot"),
        None,
    );
    assert_eq!(status, 200, "{s}");
    s["id"].as_str().unwrap().to_owned()
}

#[test]
fn unread_sends_are_capped_per_agent_and_client_and_let_go_after_the_write_timeout() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(
        state.path(),
        &[
            "--max-sends",
            "6",
            "--max-sends-per-client",
            "4",
            "--idle-timeout",
            "5s",
            "--write-timeout",
            "2s",
        ],
    );
    let pid = agent.child.id();
    let snap = big_snapshot(&agent, "big", 24);
    let rss_before = proc_status(pid, "VmRSS");
    let target = addr_of(&agent.url);
    let path = format!("/storage/volumes/{snap}/send");
    // 20 sends from one address and 10 from another, none ever read.
    let mut held = Vec::new();
    let statuses = |from: Ipv4Addr, n: usize, held: &mut Vec<TcpStream>| {
        let mut seen = std::collections::BTreeMap::<u16, usize>::new();
        for _ in 0..n {
            let mut conn = connect_from(from, target, 4096);
            *seen
                .entry(request_status(&mut conn, "POST", &path, &agent.token))
                .or_default() += 1;
            held.push(conn);
        }
        seen
    };
    let first = statuses(Ipv4Addr::new(127, 0, 0, 1), 20, &mut held);
    assert_eq!(first, [(200, 4), (429, 16)].into(), "per-client cap");
    let second = statuses(Ipv4Addr::new(127, 0, 0, 2), 10, &mut held);
    assert_eq!(second, [(200, 2), (503, 8)].into(), "agent-wide cap");

    // While they are held: unrelated work goes on, the snapshot being sent
    // cannot be destroyed, and threads and memory stay bounded.
    healthy(&agent, "during-the-sends");
    let destroy = || {
        call(
            &Endpoint::of(&agent),
            "DELETE",
            &format!("/storage/volumes/{snap}"),
            None,
        )
    };
    let (status, answer) = destroy();
    assert_eq!(
        (status, &answer["volmgr_code"]),
        (409, &json!("busy")),
        "{answer}"
    );
    let threads = proc_status(pid, "Threads");
    let rss = proc_status(pid, "VmRSS");
    println!(
        "unread sends: {} held, threads {threads}, RSS {} MiB -> {} MiB",
        held.len(),
        rss_before / 1024,
        rss / 1024
    );
    assert!(threads <= 48, "threads bounded: {threads}");
    assert!(rss < rss_before + 128 * 1024, "memory bounded: {rss} kB");

    // The stalled sends lose their connections after the write timeout:
    // their claims go, and the snapshot can be destroyed.
    poll_until("the stalled sends let go of the snapshot", || {
        destroy().0 == 200
    });
    for conn in &mut held {
        assert!(closed_by_server(conn));
    }
}

#[test]
fn stalled_event_subscribers_are_capped_and_cost_little_memory() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(state.path(), &["--max-subscribers", "32"]);
    let pid = agent.child.id();
    for n in 0..300 {
        let (status, answer) = call(
            &Endpoint::of(&agent),
            "POST",
            "/storage/providers/default/volumes",
            Some(json!({ "id": format!("v{n:03}"), "meta": {"app": "x".repeat(1000)} })),
        );
        assert_eq!(status, 200, "{answer}");
    }
    let rss_before = proc_status(pid, "VmRSS");
    let target = addr_of(&agent.url);
    let mut held = Vec::new();
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..300 {
        let mut conn = connect_from(Ipv4Addr::LOCALHOST, target, 4096);
        *seen
            .entry(request_status(
                &mut conn,
                "GET",
                "/storage/volumes",
                &agent.token,
            ))
            .or_default() += 1;
        held.push(conn);
    }
    assert_eq!(seen, [(200, 32), (503, 268)].into());
    healthy(&agent, "during-the-subscribers");
    let rss = proc_status(pid, "VmRSS");
    println!(
        "stalled subscribers: 300 asked, 32 served, RSS {} MiB -> {} MiB",
        rss_before / 1024,
        rss / 1024
    );
    assert!(rss < rss_before + 64 * 1024, "memory bounded: {rss} kB");
}

/// An in-process agent (simulated provider) with `limits` and the fake
/// peer `fake`, holding data volumes `t` and `u`.
async fn pulling_agent(limits: Limits, fake: &FakePeer) -> (tempfile::TempDir, TestAgent) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let options = ServeOptions {
        peers: peers(&[("fake", &fake.url)]),
        limits,
        ..ServeOptions::default()
    };
    let agent = TestAgent::open(dir.path(), sim_config(&sim), options).await;
    for id in ["t", "u"] {
        agent
            .client
            .create_volume("default", Some(id), BTreeMap::default())
            .await
            .unwrap();
    }
    (dir, agent)
}

fn trickle(every: Duration) -> Script {
    Script::Trickle {
        prefix: b"volmgr".to_vec(),
        rest: b"x".to_vec(),
        every,
    }
}

async fn pull(agent: &TestAgent, target: &str) -> (u16, serde_json::Value, Vec<u8>) {
    let body = json!({"host_id": "fake", "snapshot_id": "s"}).to_string();
    let url = format!("{}/storage/volumes/{target}/pull_snapshot", agent.url);
    raw("POST", &url, Some(&body), None).await
}

/// Waits (polling, bounded) until the fake peer has `n` requests: a pull
/// registers itself before asking its source.
async fn source_asked(fake: &FakePeer, n: usize) {
    let started = Instant::now();
    while fake.requests().len() < n {
        assert!(started.elapsed() < POLL_BOUND, "the source was never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_source_trickling_bytes_is_stopped_by_the_minimum_rate_and_frees_its_target() {
    // 20 bytes a second: each read is fast (no read timeout fires), the
    // rate is far below 1 KiB/s.
    let fake = FakePeer::start(trickle(Duration::from_millis(50))).await;
    let limits = Limits {
        pull_min_rate: 1024,
        pull_stall_window: Duration::from_secs(1),
        ..Limits::default()
    };
    let (_dir, agent) = pulling_agent(limits, &fake).await;
    let answer = pull(&agent, "t").await;
    assert_error(&answer, 504, "transfer_stalled");
    assert_eq!(answer.1["retry"], true);
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains("--pull-min-rate"), "{message}");
    // The target is free: not busy, and a new operation on it succeeds.
    agent
        .client
        .snapshot("t", BTreeMap::default())
        .await
        .unwrap();
    agent.shutdown().await;
}

#[tokio::test]
async fn a_pull_past_its_deadline_is_stopped() {
    let fake = FakePeer::start(trickle(Duration::from_millis(5))).await;
    let limits = Limits {
        pull_min_rate: 0,
        pull_deadline: Duration::from_secs(1),
        ..Limits::default()
    };
    let (_dir, agent) = pulling_agent(limits, &fake).await;
    assert_error(&pull(&agent, "t").await, 504, "transfer_deadline");
    agent
        .client
        .snapshot("t", BTreeMap::default())
        .await
        .unwrap();
    agent.shutdown().await;
}

#[tokio::test]
async fn a_pull_in_flight_is_cancelled_by_delete_receive_and_pulls_are_capped() {
    let fake = FakePeer::start(trickle(Duration::from_millis(100))).await;
    let limits = Limits {
        pull_min_rate: 0,
        max_pulls: 1,
        ..Limits::default()
    };
    let (_dir, agent) = pulling_agent(limits, &fake).await;
    let in_flight = tokio::spawn({
        let url = agent.url.clone();
        async move {
            let body = json!({"host_id": "fake", "snapshot_id": "s"}).to_string();
            raw(
                "POST",
                &format!("{url}/storage/volumes/t/pull_snapshot"),
                Some(&body),
                None,
            )
            .await
        }
    });
    source_asked(&fake, 1).await;
    // The same target: busy; another one: over the cap.
    assert_error(&pull(&agent, "t").await, 409, "busy");
    assert_error(&pull(&agent, "u").await, 503, "too_many_pulls");
    // Cancel: the pull answers once its outcome is journaled.
    let url = format!("{}/storage/volumes/t/receive", agent.url);
    let cancelled = raw("DELETE", &url, None, None).await;
    assert_eq!(cancelled.0, 200, "{}", cancelled.1);
    assert_error(&in_flight.await.unwrap(), 409, "cancelled");
    agent
        .client
        .snapshot("t", BTreeMap::default())
        .await
        .unwrap();
    // The slot is free again.
    let fake_ok = fake.requests().len();
    let again = tokio::spawn({
        let url = agent.url.clone();
        async move {
            let body = json!({"host_id": "fake", "snapshot_id": "s"}).to_string();
            raw(
                "POST",
                &format!("{url}/storage/volumes/u/pull_snapshot"),
                Some(&body),
                None,
            )
            .await
        }
    });
    source_asked(&fake, fake_ok + 1).await;
    let url = format!("{}/storage/volumes/u/receive", agent.url);
    assert_eq!(raw("DELETE", &url, None, None).await.0, 200);
    assert_error(&again.await.unwrap(), 409, "cancelled");
    agent.shutdown().await;
}

/// A real directory stream: a volume with one file, snapshotted and sent
/// by an in-process agent on the directory provider.
async fn dir_stream() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let config = config::serve_default(dir.path());
    let agent = TestAgent::open(dir.path(), config, ServeOptions::default()).await;
    let v = agent
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    std::fs::write(Path::new(&v.location).join("f"), vec![7u8; 64 * 1024]).unwrap();
    let s = agent
        .client
        .snapshot("v", BTreeMap::default())
        .await
        .unwrap();
    let stream = agent.client.send(&s.id, &[]).await.unwrap().to_vec();
    agent.shutdown().await;
    stream
}

#[test]
fn shutdown_cancels_a_pull_after_the_grace_period_and_the_next_start_is_clean() {
    let fake = tokio::runtime::Runtime::new().unwrap();
    // A source that sends the first half of a real stream, then one byte
    // every 100 ms: the receive is well under way, and never ends.
    let stream = fake.block_on(dir_stream());
    let half = stream.len() / 2;
    let peer = fake.block_on(FakePeer::start(Script::Trickle {
        prefix: stream[..half].to_vec(),
        rest: stream[half..].to_vec(),
        every: Duration::from_millis(100),
    }));
    let state = tempfile::tempdir().unwrap();
    let peer_arg = format!("fake={}", peer.url);
    let mut agent = ServeProcess::start(
        state.path(),
        &[
            "--peer",
            &peer_arg,
            "--shutdown-grace",
            "1s",
            "--pull-min-rate",
            "0",
        ],
    );
    let (status, created) = call(
        &Endpoint::of(&agent),
        "POST",
        "/storage/providers/default/volumes",
        Some(json!({"id": "t"})),
    );
    assert_eq!(status, 200, "{created}");
    let endpoint = Endpoint::of(&agent);
    let pulling = std::thread::scope(|scope| {
        let pulling = scope.spawn(|| {
            call(
                &endpoint,
                "POST",
                "/storage/volumes/t/pull_snapshot",
                Some(json!({"host_id": "fake", "snapshot_id": "s"})),
            )
        });
        poll_until("the pull asked its source", || !peer.requests().is_empty());
        agent.signal(libc::SIGTERM);
        pulling.join().unwrap()
    });
    let mut status = None;
    poll_until("the agent stopped after SIGTERM", || {
        status = agent.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "a clean exit: {status:?}");
    let (code, body) = pulling;
    assert_eq!(
        (code, &body["volmgr_code"]),
        (503, &json!("stopping")),
        "{body}"
    );
    drop(agent);

    // The journal holds the pull's outcome: nothing to reconcile, and the
    // target is live and usable.
    let again = ServeProcess::start(state.path(), &["--peer", &peer_arg]);
    let report = again
        .logged("opened and reconciled")
        .expect("a reconciliation report");
    assert_eq!(report["fields"]["resolutions"], 0, "{report}");
    assert_eq!(report["fields"]["orphans"], 0, "{report}");
    healthy(&again, "after-the-restart");
    let (status, snap) = call(
        &Endpoint::of(&again),
        "PUT",
        "/storage/volumes/t/snapshot",
        None,
    );
    assert_eq!(status, 200, "{snap}");
}
