//! What a new user tripped on in their first hour (issue #11, §3), on the
//! real binary:
//! - `serve` on a state directory another agent held bound its port,
//!   logged `serving addr=...`, and only then failed on the lock;
//! - a fatal serve error was printed twice (a log line and
//!   `volmgr serve: ...`);
//! - `serve --listen foo` exited 1 with `invalid socket address`;
//! - client errors said only `error sending request for url (...)`;
//! - `volume destroy` could not take a volume's snapshots along;
//! - a pull's progress showed no total.

mod agent_support;
#[path = "common/config.rs"]
mod config;

use std::collections::BTreeMap;
use std::process::Output;

use agent_support::process::{ServeProcess, describe as text, serve_command, volmgr_command};
use agent_support::{TestAgent, assert_error, peers, raw, sim_config};
use serde_json::json;
use volmgr::agent::{PullFrom, ServeOptions};
use volmgr::cli::{EXIT_CONFLICT, EXIT_FAILURE, EXIT_UNAVAILABLE, EXIT_USAGE};
use volmgr::provider::sim::SimProvider;

fn volmgr(args: &[&str]) -> Output {
    volmgr_command().args(args).output().expect("volmgr runs")
}

#[test]
fn a_second_agent_on_a_held_state_directory_fails_on_the_lock_before_binding() {
    let state = tempfile::tempdir().unwrap();
    let first = ServeProcess::start(state.path(), &[]);
    let addr = first.url.trim_start_matches("http://").to_owned();
    // The same directory, and the first agent's very address: had the
    // second bound first, it would fail on the port, not on the lock.
    let o = volmgr(&[
        "serve",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert_eq!(o.status.code(), Some(EXIT_FAILURE), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("in use by another agent"), "{}", text(&o));
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "names the holder: {}",
        text(&o)
    );
    assert!(
        !stderr.contains("serving"),
        "nothing was served: {}",
        text(&o)
    );
    assert!(!stderr.contains("Address already in use"), "{}", text(&o));
    // Printed once.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("in use")).collect();
    assert_eq!(lines.len(), 1, "{}", text(&o));
    assert!(lines[0].starts_with("volmgr serve: "), "{}", text(&o));
}

#[test]
fn a_fatal_error_with_json_logs_is_one_log_line() {
    let state = tempfile::tempdir().unwrap();
    let first = ServeProcess::start(state.path(), &[]);
    let o = volmgr(&[
        "serve",
        "--log-format",
        "json",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(o.status.code(), Some(EXIT_FAILURE), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let mentions: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.contains("in use"))
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    assert_eq!(mentions.len(), 1, "{}", text(&o));
    assert_eq!(mentions[0]["level"], "ERROR");
    drop(first);
}

#[test]
fn a_listen_address_that_is_not_host_port_is_a_usage_error_saying_what_is_expected() {
    let state = tempfile::tempdir().unwrap();
    for bad in [
        "foo",
        "127.0.0.1",
        ":1113",
        "127.0.0.1:http",
        "[::1:1113",
        "a b:1",
    ] {
        let o = volmgr(&[
            "serve",
            "--state-dir",
            state.path().to_str().unwrap(),
            "--listen",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(EXIT_USAGE), "{bad}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("expected HOST:PORT"),
            "{bad}: {}",
            text(&o)
        );
    }
    assert!(
        std::fs::read_dir(state.path()).unwrap().next().is_none(),
        "nothing was created"
    );
    // A zero limit is a usage error too.
    let o = volmgr(&[
        "serve",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--max-sends",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(EXIT_USAGE), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-sends"));
}

#[test]
fn serve_and_volume_help_end_with_their_exit_codes() {
    for (command, rows) in [
        ("serve", &["0 ", "1 ", "2 "][..]),
        ("volume", &["0 ", "1 ", "2 ", "3 ", "4 ", "5 "][..]),
    ] {
        let o = volmgr(&[command, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        let help = String::from_utf8_lossy(&o.stdout);
        let table = help
            .split("Exit codes:")
            .nth(1)
            .unwrap_or_else(|| panic!("{command} --help: {help}"));
        for row in rows {
            assert!(
                table.lines().any(|l| l.trim_start().starts_with(row)),
                "{command}: row {row:?} in {table}"
            );
        }
    }
    let help = String::from_utf8_lossy(&volmgr(&["serve", "--help"]).stdout).into_owned();
    for flag in [
        "--max-connections",
        "--header-read-timeout",
        "--idle-timeout",
        "--write-timeout",
        "--max-sends",
        "--max-sends-per-client",
        "--max-pulls",
        "--max-subscribers",
        "--pull-min-rate",
        "--pull-stall-window",
        "--pull-deadline",
        "--shutdown-grace",
    ] {
        // The flag's entry: its line and the wrapped ones after it.
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} in serve --help"));
        let entry: String = lines[at..]
            .iter()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
            .map(|(_, l)| *l)
            .collect();
        assert!(entry.contains("[default: "), "{entry}");
    }
}

#[test]
fn client_errors_name_their_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (agent, cause) in [
        (format!("http://{closed}"), "connection refused"),
        (
            "http://no-such-host.invalid:1113".to_owned(),
            "no such host",
        ),
    ] {
        let o = volmgr(&["volume", "--agent", &agent, "--token", "t", "list"]);
        assert_eq!(o.status.code(), Some(EXIT_UNAVAILABLE), "{}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(cause), "{cause}: {}", text(&o));
        assert!(!stderr.contains("error sending request"), "{}", text(&o));
    }
}

#[tokio::test]
async fn a_pull_from_an_unreachable_peer_says_why() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let options = ServeOptions {
        peers: peers(&[("gone", &format!("http://{closed}"))]),
        ..ServeOptions::default()
    };
    let agent = TestAgent::open(dir.path(), sim_config(&sim), options).await;
    agent
        .client
        .create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    let body = json!({"host_id": "gone", "snapshot_id": "s"}).to_string();
    let url = format!("{}/storage/volumes/t/pull_snapshot", agent.url);
    let answer = raw("POST", &url, Some(&body), None).await;
    assert_error(&answer, 502, "source_unreachable");
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains("connection refused"), "{message}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_pull_reports_the_stream_size_the_source_announces() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let agent = TestAgent::open(dir.path(), sim_config(&sim), ServeOptions::default()).await;
    let c = &agent.client;
    c.create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    sim.write_file("v", "f", &vec![3u8; 300_000]);
    let s = c.snapshot("v", BTreeMap::default()).await.unwrap();
    c.create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let done = c
        .pull_with_progress("t", PullFrom::Host("self"), &s.id, |p| seen.push(p))
        .await
        .unwrap();
    let last = seen.last().expect("progress");
    assert_eq!(last.bytes, done.bytes);
    assert_eq!(
        last.total,
        Some(done.bytes),
        "the size was announced: {seen:?}"
    );
    agent.shutdown().await;
}

/// The directory provider announces the exact size of a full stream (a
/// walk of the snapshot's metadata), and none for an incremental one.
#[tokio::test]
async fn a_full_pull_from_the_directory_provider_announces_its_exact_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = config::serve_default(dir.path());
    let agent = TestAgent::open(dir.path(), config, ServeOptions::default()).await;
    let c = &agent.client;
    let v = c
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    let at = std::path::Path::new(&v.location);
    std::fs::create_dir_all(at.join("a/b")).unwrap();
    std::fs::write(at.join("a/b/big"), vec![9u8; 1 << 20]).unwrap();
    std::fs::write(at.join("small"), b"x").unwrap();
    std::fs::write(at.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("a/b/big", at.join("link")).unwrap();
    let s1 = c.snapshot("v", BTreeMap::default()).await.unwrap();
    c.create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let done = c
        .pull_with_progress("t", PullFrom::Host("self"), &s1.id, |p| seen.push(p))
        .await
        .unwrap();
    assert_eq!(seen.last().unwrap().total, Some(done.bytes), "{seen:?}");
    // Incremental: no size announced.
    std::fs::write(at.join("small"), b"changed").unwrap();
    let s2 = c.snapshot("v", BTreeMap::default()).await.unwrap();
    let mut seen = Vec::new();
    c.pull_with_progress("t", PullFrom::Host("self"), &s2.id, |p| seen.push(p))
        .await
        .unwrap();
    assert!(seen.iter().all(|p| p.total.is_none()), "{seen:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn destroy_recursive_takes_the_snapshots_along_and_refuses_when_forks_depend() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let agent = TestAgent::open(dir.path(), sim_config(&sim), ServeOptions::default()).await;
    let c = &agent.client;
    for id in ["a", "b"] {
        c.create_volume("default", Some(id), BTreeMap::default())
            .await
            .unwrap();
    }
    let a1 = c.snapshot("a", BTreeMap::default()).await.unwrap();
    let a2 = c.snapshot("a", BTreeMap::default()).await.unwrap();
    let b1 = c.snapshot("b", BTreeMap::default()).await.unwrap();
    c.fork(&b1.id, Some("b-fork"), BTreeMap::default())
        .await
        .unwrap();
    let url = agent.url.clone();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            volmgr_command()
                .args(&args)
                .env("VOLMGR_TOKEN", agent_support::TEST_TOKEN)
                .output()
                .unwrap()
        })
    };
    let args = |rest: &[&str]| -> Vec<String> {
        ["volume", "--agent", url.as_str()]
            .iter()
            .chain(rest)
            .map(std::string::ToString::to_string)
            .collect()
    };
    // b: a fork depends on its snapshot: refused, naming both, nothing gone.
    let o = run(args(&["destroy", "--recursive", "b"])).await.unwrap();
    assert_eq!(o.status.code(), Some(EXIT_CONFLICT), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("b-fork") && stderr.contains(&b1.id),
        "{}",
        text(&o)
    );
    assert!(c.get("b").await.is_ok() && c.get(&b1.id).await.is_ok());
    // Without --recursive: the agent refuses (has dependents).
    let o = run(args(&["destroy", "a"])).await.unwrap();
    assert_eq!(o.status.code(), Some(EXIT_CONFLICT), "{}", text(&o));
    // a: its snapshots, then a.
    let o = run(args(&["destroy", "-r", "a"])).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for id in ["a", a1.id.as_str(), a2.id.as_str()] {
        assert!(c.get(id).await.is_err(), "{id} destroyed");
    }
    let ids: Vec<String> = c.list().await.unwrap().into_iter().map(|v| v.id).collect();
    assert_eq!(ids.len(), 3, "b, its snapshot and the fork remain: {ids:?}");
    agent.shutdown().await;
}

/// `volmgr volume abort-receive .` sent `DELETE /storage/volumes/./receive`,
/// which URL parsing turns into `DELETE /storage/volumes/receive`: the
/// destroy of the volume named `receive` (exit 0). A `.` or `..` id names
/// another route whatever its encoding (`%2e` is a dot to the URL parser
/// too), so the client refuses it, as a usage error, before sending.
#[tokio::test]
async fn a_dot_segment_id_is_refused_by_the_client_and_never_reaches_another_route() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let agent = TestAgent::open(dir.path(), sim_config(&sim), ServeOptions::default()).await;
    let c = &agent.client;
    for id in ["receive", "snapshot", "fork", "volumes"] {
        c.create_volume("default", Some(id), BTreeMap::default())
            .await
            .unwrap();
    }
    let url = agent.url.clone();
    let o = tokio::task::spawn_blocking(move || {
        volmgr_command()
            .args(["volume", "--agent", url.as_str(), "abort-receive", "."])
            .env("VOLMGR_TOKEN", agent_support::TEST_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(EXIT_USAGE), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid id \".\""),
        "{}",
        text(&o)
    );
    for id in [".", ".."] {
        let refused = |r: Result<(), volmgr::agent::ClientError>, verb: &str| {
            let e = r.expect_err(verb);
            assert!(
                matches!(e, volmgr::agent::ClientError::Invalid(_)),
                "{verb} {id:?}: {e:?}"
            );
        };
        let none = BTreeMap::default;
        refused(c.abort_receive(id).await, "abort-receive");
        refused(c.destroy(id).await, "destroy");
        refused(c.get(id).await.map(drop), "get");
        refused(c.snapshot(id, none()).await.map(drop), "snapshot");
        refused(c.fork(id, None, none()).await.map(drop), "fork");
        refused(c.send(id, &[]).await.map(drop), "send");
        refused(c.pull(id, PullFrom::Host("a"), "s").await.map(drop), "pull");
        refused(
            c.create_volume(id, None, none()).await.map(drop),
            "create on provider",
        );
    }
    let mut ids: Vec<String> = c.list().await.unwrap().into_iter().map(|v| v.id).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["fork", "receive", "snapshot", "volumes"],
        "nothing destroyed or made"
    );
    agent.shutdown().await;
}

/// A request's text log line names its operation and volume once each
/// (a create recorded them twice: `op="create" volume="web" op="create"
/// volume="web"`), with the id given or chosen by the agent.
#[tokio::test]
async fn a_text_log_line_names_the_operation_and_volume_once() {
    use std::io::{BufRead, BufReader};
    let state = tempfile::tempdir().unwrap();
    let mut child = serve_command(state.path(), "text", &[]).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_line = || lines.next().expect("the agent logs").unwrap();
    let mut addr = None;
    loop {
        let line = next_line();
        if let Some(rest) = line.split(" serving addr=").nth(1) {
            addr = rest.split(' ').next().map(str::to_owned);
        }
        if line.ends_with(" ready") {
            break;
        }
    }
    let url = format!("http://{}", addr.expect("a serving line"));
    let token = volmgr::agent::credential::read_token_file(&state.path().join("token")).unwrap();
    for body in [r#"{"id": "web"}"#, "{}"] {
        let (status, _, _) = raw(
            "POST",
            &format!("{url}/storage/providers/default/volumes"),
            Some(body),
            Some(&token),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let done = loop {
            let line = next_line();
            if line.contains("request done") {
                break line;
            }
        };
        for field in ["op=", "volume="] {
            assert_eq!(done.matches(field).count(), 1, "{field} once: {done}");
        }
        assert!(done.contains(r#"op="create""#), "{done}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
