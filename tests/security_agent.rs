//! The agent's trust boundary, attacked (issue: the agent runs as root and
//! was found open to any local user on loopback, to SSRF and token leaks
//! through a pull's `source`, to redirects that kept the POST, to a source's
//! endless error body, and it echoed a source's claim of a resumed stream).
//!
//! Each test performs the attack for real: a local unprivileged user
//! (`setpriv --reuid=65534`) against a real `volmgr serve`, and fake peers
//! (test HTTP servers) that redirect, record the Authorization header, and
//! answer hostile bodies. Root-only tests print a skip line without root and
//! fail loudly with `VOLMGR_REQUIRE_ROOT=1` (CI).

mod agent_support;
#[path = "common/config.rs"]
mod config;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use agent_support::fake_peer::{FakePeer, Script};
use agent_support::process::{BIN, ServeProcess, describe as text, volmgr_command};
use agent_support::{TEST_TOKEN, TestAgent, assert_error, peers, raw, sim_config};
use serde_json::json;
use volmgr::agent::{Client, ClientError, PullFrom, ServeOptions};
use volmgr::provider::sim::SimProvider;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `true` to go on; `false` (after a skip line) without root, unless
/// `VOLMGR_REQUIRE_ROOT=1`, which makes it a failure.
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("VOLMGR_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("VOLMGR_REQUIRE_ROOT=1 but {test} needs root (setpriv to another user)");
    }
    println!("{test}: SKIPPED (needs root; VOLMGR_REQUIRE_ROOT=1 makes this a failure)");
    false
}

/// Runs `argv` as user and group 65534 (nobody), no supplementary groups.
fn as_nobody(argv: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .env_remove("VOLMGR_TOKEN")
        .env_remove("VOLMGR_STATE_DIR")
        .output()
        .expect("setpriv runs")
}

#[test]
fn a_local_unprivileged_user_is_refused_on_loopback_and_cannot_read_the_token() {
    if !root_or_skip("a_local_unprivileged_user_is_refused_on_loopback") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    // A state directory others may traverse: only the token file's own
    // mode keeps them out.
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = ServeProcess::start(state.path(), &[]);
    let token_path = state.path().join("token");
    let meta = std::fs::metadata(&token_path).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the token file is private"
    );
    assert_eq!(agent.token.len(), 64, "a generated token");

    // nobody cannot read the token...
    let cat = as_nobody(&["cat", token_path.to_str().unwrap()]);
    assert!(!cat.status.success(), "{}", text(&cat));
    assert!(!String::from_utf8_lossy(&cat.stdout).contains(&agent.token));
    // ...and every request it makes is refused 401, with no credential or
    // a guessed one; the CLI pointed at the agent's state directory cannot
    // read the token. The client is a copy of the binary that nobody may
    // run wherever the checkout lives.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("volmgr");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin.to_str().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let url = agent.url.as_str();
    let unauthorized = "(401 unauthorized)";
    for (argv, expected) in [
        (vec![bin, "volume", "--agent", url, "list"], unauthorized),
        (
            vec![bin, "volume", "--agent", url, "create", "--id", "pwned"],
            unauthorized,
        ),
        (
            vec![bin, "volume", "--agent", url, "--token", "guess", "list"],
            unauthorized,
        ),
        (
            vec![
                bin,
                "volume",
                "--agent",
                url,
                "--state-dir",
                state_dir,
                "list",
            ],
            "token: Permission denied",
        ),
    ] {
        let o = as_nobody(&argv);
        assert!(!o.status.success(), "{argv:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(expected),
            "{argv:?}: expected {expected:?}: {}",
            text(&o)
        );
    }
    // The owner's CLI reads the token from the state directory.
    let o = volmgr_command()
        .args(["volume", "--agent", &agent.url, "--state-dir", state_dir])
        .args(["create", "--id", "mine"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let client = Client::new(&agent.url, Some(agent.token.clone())).unwrap();
    let ids: Vec<String> = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.list())
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, ["mine"], "nothing nobody tried was done");
}

#[test]
fn the_token_file_is_created_private_and_an_exposed_one_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let first = ServeProcess::start(state.path(), &[]);
    let token = first.token.clone();
    assert!(!token.is_empty(), "the agent created its token file");
    drop(first);
    // Restarts keep the token.
    let again = ServeProcess::start(state.path(), &[]);
    assert_eq!(again.token, token);
    drop(again);
    // A token file others could have read is not trusted.
    let path = state.path().join("token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = volmgr_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("lets group or others in"),
        "{}",
        text(&o)
    );
}

/// `serve --token-file` and `--peers-file` are files the operator gives the
/// root agent: a token file others can read hands its credential to every
/// local user, and a peers file (or a token file) others can write, or
/// one in a directory they can change, lets them name a peer of their own,
/// to which the agent presents its token. Each was read as it was. Now
/// each is refused at start (exit 2, nothing bound), naming the file and
/// why; a private token file and a peers file only root can write start.
#[test]
fn a_token_or_peers_file_others_could_read_or_change_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let private = |name: &str, content: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let token = private("token", "a-shared-cluster-token\n", 0o600);
    let peers = private("peers", "a = http://127.0.0.1:9\n", 0o644);
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let in_open = open_dir.join("token");
    std::fs::write(&in_open, "a-shared-cluster-token\n").unwrap();
    std::fs::set_permissions(&in_open, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&in_open, &link).unwrap();
    let readable = private("readable", "a-shared-cluster-token\n", 0o644);
    let writable_peers = private("writable-peers", "a = http://127.0.0.1:9\n", 0o666);
    // An agent that starts anyway is killed as soon as it says it serves
    // (and the test fails), rather than served until the test times out.
    let serve = |extra: &[&std::ffi::OsStr]| {
        use std::io::BufRead;
        let state = tempfile::tempdir().unwrap();
        let mut child = volmgr_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = Vec::new();
        for line in std::io::BufReader::new(child.stderr.take().unwrap()).split(b'\n') {
            let line = line.unwrap();
            if String::from_utf8_lossy(&line).contains("serving") {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!(
                    "{extra:?}: the agent started: {}",
                    String::from_utf8_lossy(&line)
                );
            }
            stderr.extend_from_slice(&line);
            stderr.push(b'\n');
        }
        Output {
            status: child.wait().unwrap(),
            stdout: Vec::new(),
            stderr,
        }
    };
    for (flag, file, why) in [
        ("--token-file", &readable, "lets group or others in"),
        ("--token-file", &in_open, "another user could change"),
        ("--token-file", &link, "another user could change"),
        (
            "--peers-file",
            &writable_peers,
            "lets group or others write it",
        ),
    ] {
        let o = serve(&[flag.as_ref(), file.as_os_str()]);
        assert_eq!(o.status.code(), Some(2), "{flag} {file:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(why) && err.contains(file.to_str().unwrap()),
            "{flag} {file:?}: {}",
            text(&o)
        );
    }
    // The same files, kept private, start an agent that takes the token.
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(
        state.path(),
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--peers-file",
            peers.to_str().unwrap(),
        ],
    );
    assert!(!agent.url.is_empty());
    assert!(
        !state.path().join("token").exists(),
        "the given token is used, none generated"
    );
}

#[test]
fn serving_without_auth_takes_an_explicit_flag_and_warns_at_every_start() {
    let state = tempfile::tempdir().unwrap();
    for start in 0..2 {
        let agent = ServeProcess::start(state.path(), &["--insecure-no-auth"]);
        assert!(!state.path().join("token").exists(), "no token generated");
        let warned = agent.logs().iter().any(|l| {
            l["level"] == "WARN"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("WITHOUT authentication"))
        });
        assert!(warned, "start {start}: no warning in {:?}", agent.logs());
    }
}

/// A test agent with `options`, on the simulated provider.
async fn sim_agent(options: ServeOptions) -> (tempfile::TempDir, SimProvider, TestAgent) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let agent = TestAgent::open(dir.path(), sim_config(&sim), options).await;
    agent
        .client
        .create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    (dir, sim, agent)
}

fn pull_url(agent: &TestAgent) -> String {
    format!("{}/storage/volumes/t/pull_snapshot", agent.url)
}

fn fixed(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Script {
    Script::Fixed {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.to_vec(),
    }
}

#[tokio::test]
async fn a_source_that_is_not_a_configured_peer_is_never_contacted() {
    let fake = FakePeer::start(fixed(200, &[], b"")).await;
    let port = fake.url.rsplit(':').next().unwrap().to_owned();
    let (_dir, _sim, agent) = sim_agent(ServeOptions::default()).await;
    for source in [
        fake.url.clone(),
        format!("http://2130706433:{port}"),
        format!("http://0x7f000001:{port}"),
        format!("http://127.1:{port}"),
        "http://169.254.169.254".to_owned(),
        "http://[::1]:1".to_owned(),
    ] {
        let body = json!({"source": source, "snapshot_id": "s"}).to_string();
        let answer = raw("POST", &pull_url(&agent), Some(&body), None).await;
        assert_error(&answer, 400, "source_not_allowed");
    }
    let body = json!({"host_id": "metadata", "snapshot_id": "s"}).to_string();
    assert_error(
        &raw("POST", &pull_url(&agent), Some(&body), None).await,
        400,
        "unknown_host",
    );
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    agent.shutdown().await;
}

#[tokio::test]
async fn the_token_goes_to_configured_peers_only() {
    let peer = FakePeer::start(fixed(404, &[], b"{}")).await;
    let stranger = FakePeer::start(fixed(404, &[], b"{}")).await;
    let options = ServeOptions {
        peers: peers(&[("peer", &peer.url)]),
        allow_any_source: true,
        ..ServeOptions::default()
    };
    let (_dir, _sim, agent) = sim_agent(options).await;
    for body in [
        json!({"host_id": "peer", "snapshot_id": "s"}),
        json!({"source": peer.url, "snapshot_id": "s"}),
        json!({"source": stranger.url, "snapshot_id": "s"}),
    ] {
        let answer = raw("POST", &pull_url(&agent), Some(&body.to_string()), None).await;
        assert_error(&answer, 404, "source_not_found");
    }
    let to_peer = peer.requests();
    assert_eq!(to_peer.len(), 2);
    for r in &to_peer {
        assert_eq!(r.path, "/storage/volumes/s/send");
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {TEST_TOKEN}"))
        );
    }
    let to_stranger = stranger.requests();
    assert_eq!(to_stranger.len(), 1, "an allowed arbitrary source is asked");
    assert_eq!(
        to_stranger[0].header("authorization"),
        None,
        "but never given the token"
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_redirects_is_not_followed() {
    let elsewhere = FakePeer::start(fixed(200, &[], b"")).await;
    for status in [301, 302, 303, 307, 308] {
        let location = format!("{}/steal", elsewhere.url);
        let peer = FakePeer::start(fixed(status, &[("location", &location)], b"")).await;
        let options = ServeOptions {
            peers: peers(&[("peer", &peer.url)]),
            ..ServeOptions::default()
        };
        let (_dir, _sim, agent) = sim_agent(options).await;
        let body = json!({"host_id": "peer", "snapshot_id": "s"}).to_string();
        let answer = raw("POST", &pull_url(&agent), Some(&body), None).await;
        assert_error(&answer, 502, "source_failed");
        assert!(
            answer.1["message"]
                .as_str()
                .unwrap()
                .contains("never followed"),
            "{}",
            answer.1
        );
        assert_eq!(peer.requests().len(), 1);
        agent.shutdown().await;
    }
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
}

#[tokio::test]
async fn an_endless_error_body_from_a_source_is_read_only_a_little() {
    let chunk =
        br#"{"code":"x","message":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"#
            .repeat(1000);
    let peer = FakePeer::start(Script::Endless {
        status: 500,
        chunk: chunk.clone(),
    })
    .await;
    let options = ServeOptions {
        peers: peers(&[("peer", &peer.url)]),
        ..ServeOptions::default()
    };
    let (_dir, _sim, agent) = sim_agent(options).await;
    let body = json!({"host_id": "peer", "snapshot_id": "s"}).to_string();
    // The pull is answered at all: the agent did not wait for the end of
    // an endless body.
    let answer = raw("POST", &pull_url(&agent), Some(&body), None).await;
    assert_error(&answer, 502, "source_failed");
    assert!(answer.2.len() < 1024, "{}", answer.2.len());
    // The client (CLI) reads a bounded prefix of an error answer too.
    let client = Client::new(&peer.url, None).unwrap();
    let e = client.list().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 500, message, .. } if message.len() <= 512),
        "{e:?}"
    );
    // What the fake managed to write before both hung up: socket buffers,
    // not the whole (endless) body.
    let written = *peer.endless_written.lock().unwrap();
    println!("endless error body: {written} bytes written before the readers hung up");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_hostile_error_body_is_not_echoed() {
    let hostile = json!({
        "code": "x",
        "message": format!("\u{1b}[2J\u{202e}evil\u{2028}{}", "B".repeat(10_000)),
        "volmgr_code": "\u{1b}]0;pwned\u{7}",
    })
    .to_string();
    for (status, code) in [
        (500, "source_failed"),
        (404, "source_not_found"),
        (409, "source_conflict"),
    ] {
        let peer = FakePeer::start(fixed(
            status,
            &[("content-type", "application/json")],
            hostile.as_bytes(),
        ))
        .await;
        let html = FakePeer::start(fixed(status, &[], b"<html>internal secret page</html>")).await;
        let options = ServeOptions {
            peers: peers(&[("peer", &peer.url), ("html", &html.url)]),
            ..ServeOptions::default()
        };
        let (_dir, _sim, agent) = sim_agent(options).await;
        for host in ["peer", "html"] {
            let body = json!({"host_id": host, "snapshot_id": "s"}).to_string();
            let answer = raw("POST", &pull_url(&agent), Some(&body), None).await;
            let expected_status = if status == 500 { 502 } else { status };
            assert_error(&answer, expected_status, code);
            let message = answer.1["message"].as_str().unwrap();
            assert!(message.len() < 400, "short: {}", message.len());
            assert!(
                message.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
                "sanitized: {message:?}"
            );
            assert!(!message.contains("secret"), "{message}");
        }
        agent.shutdown().await;
    }
}

#[tokio::test]
async fn a_sources_claim_of_a_resumed_stream_is_not_echoed() {
    // A real directory stream, served by a fake peer that claims it
    // continues an interrupted one.
    let dir_a = tempfile::tempdir().unwrap();
    let a = TestAgent::open(
        dir_a.path(),
        config::serve_default(dir_a.path()),
        ServeOptions::default(),
    )
    .await;
    let v = a
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    std::fs::write(Path::new(&v.location).join("f"), b"content").unwrap();
    let s = a.client.snapshot("v", BTreeMap::default()).await.unwrap();
    let stream = a.client.send(&s.id, &[]).await.unwrap();
    a.shutdown().await;
    let liar = FakePeer::start(fixed(
        200,
        &[
            ("content-type", "application/octet-stream"),
            ("x-volmgr-resumed", "true"),
        ],
        &stream,
    ))
    .await;
    let dir_b = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        peers: peers(&[("liar", &liar.url)]),
        ..ServeOptions::default()
    };
    let b = TestAgent::open(dir_b.path(), config::serve_default(dir_b.path()), options).await;
    b.client
        .create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    let done = b
        .client
        .pull("t", PullFrom::Host("liar"), &s.id)
        .await
        .unwrap();
    assert!(!done.resumed, "the receiver resumed nothing: {done:?}");
    assert_eq!(done.bytes, stream.len() as u64);
    let t = b.client.get("t").await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&t.location).join("f")).unwrap(),
        b"content"
    );
    b.shutdown().await;
}

/// Sends `request` as raw bytes on a new connection to `agent` and returns
/// the whole answer (the request asks the agent to close the connection).
fn exchange(agent: &ServeProcess, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let addr = agent.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    answer
}

/// A client without the token put raw bytes of its request path into the
/// agent's log: U+202E (right-to-left override), U+2028 (line separator),
/// U+0085 (next line), which the agent refuses in any metadata because they
/// make displayed text lie. The logged path keeps printable ASCII and
/// percent-encodes every other byte.
#[test]
fn a_request_path_is_logged_as_printable_ascii_whatever_bytes_it_holds() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(state.path(), &[]);
    let mut request =
        b"GET /storage/volumes/a\xe2\x80\xaeb\xe2\x80\xa8c\xc2\x85d HTTP/1.1\r\n".to_vec();
    request.extend_from_slice(b"Host: x\r\nConnection: close\r\n\r\n");
    let answer = exchange(&agent, &request);
    assert!(
        answer.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let done = agent.wait_for("request done");
    assert_eq!(
        done["span"]["path"].as_str(),
        Some("/storage/volumes/a%E2%80%AEb%E2%80%A8c%C2%85d"),
        "{done}"
    );
}

/// The log line of an error answer, by its volmgr code.
fn logged_error(agent: &ServeProcess, code: &str) -> serde_json::Value {
    loop {
        if let Some(line) = agent
            .logs()
            .into_iter()
            .find(|l| l["fields"]["code"] == code)
        {
            return line;
        }
        // Each request's `request done` follows its error line; an earlier
        // request's may come first (panics if none comes in time).
        agent.wait_for("request done");
    }
}

/// An error answer was logged with the error's text in a field named
/// `message`, the name of the event's own message: a JSON log line held
/// `"message"` twice, and a JSON reader kept the error's text, losing
/// `request refused` (a filter on it found nothing). The text is `error`.
#[test]
fn an_error_answer_is_logged_with_one_message_and_its_text_under_error() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(state.path(), &[]);
    let request = format!(
        "GET /storage/volumes/nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Connection: close\r\n\r\n",
        agent.token
    );
    let answer = exchange(&agent, request.as_bytes());
    assert!(
        answer.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let line = logged_error(&agent, "no_such_volume");
    assert_eq!(line["fields"]["message"], "request refused", "{line}");
    assert_eq!(line["fields"]["error"], "no such volume: nope", "{line}");
}

/// An error's text can quote the caller's input (serde names an unknown
/// field as it was sent), so a caller put U+2028, U+202E and U+0085 into
/// the log through it. The logged text escapes controls, bidirectional
/// controls and line separators (the answer itself is the caller's own).
#[test]
fn an_error_text_quoting_the_callers_input_is_logged_escaped() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(state.path(), &[]);
    let body = "{\"a\u{2028}b\u{202e}c\u{85}d\": 1}";
    let request = format!(
        "POST /storage/providers/default/volumes HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        agent.token,
        body.len()
    );
    let answer = exchange(&agent, request.as_bytes());
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let line = logged_error(&agent, "bad_body");
    let error = line["fields"]["error"].as_str().unwrap();
    assert!(error.contains(r"a\u{2028}b\u{202e}c\u{85}d"), "{line}");
    assert!(
        !error
            .chars()
            .any(|c| c.is_control() || volmgr::validate::is_deceptive(c)),
        "{line}"
    );
}

/// What a tenant puts in its volume is not the agent's failure: a snapshot
/// of a volume holding a FIFO was a 500 `provider_failed` logged at ERROR.
/// It is a 409 `unsupported_content` naming the entry (the CLI's exit 5,
/// conflict), logged at INFO like any refusal, and the volume is
/// snapshotted once the FIFO is gone.
#[test]
fn content_the_provider_cannot_carry_is_a_409_refusal_not_a_server_failure() {
    use std::os::unix::ffi::OsStrExt;
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(state.path(), &[]);
    let cli = |args: &[&str]| {
        volmgr_command()
            .args(["volume", "--agent", &agent.url, "--token", &agent.token])
            .args(args)
            .output()
            .unwrap()
    };
    let created = cli(&["create", "--id", "v"]);
    assert!(created.status.success(), "{}", text(&created));
    let fifo = state.path().join("volumes/data/v/pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let refused = cli(&["snapshot", "v"]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("pipe is a fifo") && stderr.contains("409 unsupported_content"),
        "{}",
        text(&refused)
    );
    let line = logged_error(&agent, "unsupported_content");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["status"], 409, "{line}");

    std::fs::remove_file(&fifo).unwrap();
    let snapped = cli(&["snapshot", "v"]);
    assert!(snapped.status.success(), "{}", text(&snapped));
}
