//! Flynn's own client works against volmgr unchanged (issue: Flynn's Go
//! client, pkg/cluster `Host`, failed 17 of its 29 calls: `unknown field
//! type` on create, no `type` in answers, 204 on DELETE, volmgr's own error
//! codes, `null` haves refused, `host_id` refused, events Flynn's reader
//! decoded as empty).
//!
//! Every request here is written byte for byte as Go's net/http writes it
//! for that client, and every answer is judged by the client's rules
//! (`agent_support::flynn`): status exactly 200, errors decoded as
//! httphelper's `JSONError` and tested by code as `IsObjectNotFoundError`
//! and friends do, volumes decoded as `volume.Info`, the event stream read
//! the way pkg/sse reads it. Calls: `CreateVolume`, `GetVolume`, `ListVolumes`,
//! `CreateSnapshot`, `SendSnapshot`, `PullSnapshot` (by host id, between two
//! `volmgr serve` processes configured with `--peer`/`--peers-file`),
//! `StreamVolumes`, `DestroyVolume`; plus Flynn's `ProviderSpec`.

mod agent_support;

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;

use agent_support::flynn::{
    Answer, EMPTY_INFO, FlynnError, FlynnHost, SseItem, SseReader, assert_info, info_json,
};
use agent_support::process::ServeProcess;
use agent_support::{TEST_TOKEN, TestAgent, sim_config};
use serde_json::{Value, json};
use volmgr::agent::ServeOptions;
use volmgr::provider::sim::SimProvider;

#[track_caller]
fn flynn_error(answer: &Answer, status: u16, code: &str) -> Value {
    match answer.flynn_result() {
        Err(FlynnError::Json {
            status: s,
            code: c,
            body,
        }) => {
            assert_eq!((s, c.as_str()), (status, code), "{body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            body
        }
        other => panic!(
            "expected JSONError {code}, got {other:?}: {}",
            String::from_utf8_lossy(&answer.body)
        ),
    }
}

#[test]
fn flynns_volume_calls_get_the_answers_flynns_client_expects() {
    let state = tempfile::tempdir().unwrap();
    let agent = ServeProcess::start(state.path(), &[]);
    let host = FlynnHost::new(&agent.url, &agent.token);
    let create = "/storage/providers/default/volumes";

    // CreateVolume(&volume.Info{}): an empty id means "generate one".
    let anon = host.send("POST", create, Some(EMPTY_INFO)).info();
    assert!(uuid::Uuid::parse_str(anon["id"].as_str().unwrap()).is_ok());
    // With an id and meta; with type "data".
    let body = info_json("flynn-a", "", Some(("flynn-controller.app", "web")));
    let a = host.send("POST", create, Some(&body)).info();
    assert_eq!(
        (&a["id"], &a["meta"]),
        (&json!("flynn-a"), &json!({"flynn-controller.app": "web"}))
    );
    let b = host
        .send("POST", create, Some(&info_json("flynn-b", "data", None)))
        .info();
    assert_eq!(b["id"], "flynn-b");
    // created_at on input is ignored: the agent stamps its own.
    let stamped = host
        .send(
            "POST",
            create,
            Some(r#"{"id":"flynn-t","type":"","created_at":"2001-02-03T04:05:06Z"}"#),
        )
        .info();
    assert!(!stamped["created_at"].as_str().unwrap().starts_with("2001"));
    // Old clients send no body at all.
    host.send("POST", create, None).info();

    // Errors, as httphelper's helpers test them.
    flynn_error(
        &host.send("POST", create, Some(&info_json("flynn-a", "", None))),
        409,
        "object_exists",
    );
    flynn_error(
        &host.send("POST", "/storage/providers/nope/volumes", Some(EMPTY_INFO)),
        404,
        "object_not_found",
    );
    let squash = flynn_error(
        &host.send("POST", create, Some(&info_json("", "squashfs", None))),
        400,
        "validation_error",
    );
    assert_eq!(squash["detail"], json!({"field": "type"}));
    assert_eq!(squash["volmgr_code"], "unsupported_type");

    // GetVolume, ListVolumes.
    let got = host.send("GET", "/storage/volumes/flynn-a", None).info();
    assert_eq!(got, a);
    flynn_error(
        &host.send("GET", "/storage/volumes/nope", None),
        404,
        "object_not_found",
    );
    let list: Vec<Value> = serde_json::from_slice(
        host.send("GET", "/storage/volumes", None)
            .flynn_result()
            .unwrap(),
    )
    .unwrap();
    list.iter().for_each(assert_info);
    let ids: Vec<&str> = list.iter().map(|v| v["id"].as_str().unwrap()).collect();
    for id in ["flynn-a", "flynn-b", anon["id"].as_str().unwrap()] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }

    // CreateSnapshot: a PUT without body; the snapshot is type "data" too.
    let snap = host
        .send("PUT", "/storage/volumes/flynn-a/snapshot", None)
        .info();
    flynn_error(
        &host.send("PUT", "/storage/volumes/nope/snapshot", None),
        404,
        "object_not_found",
    );

    // DestroyVolume: 200 with an empty body; Flynn's codes for refusals,
    // volmgr's own beside them.
    let refused = flynn_error(
        &host.send("DELETE", "/storage/volumes/flynn-a", None),
        409,
        "conflict",
    );
    assert_eq!(refused["volmgr_code"], "has_dependents");
    let snap_path = format!("/storage/volumes/{}", snap["id"].as_str().unwrap());
    let destroyed = host.send("DELETE", &snap_path, None);
    assert_eq!((destroyed.status, destroyed.body.len()), (200, 0));
    assert!(destroyed.flynn_result().is_ok());
    let destroyed = host.send("DELETE", "/storage/volumes/flynn-a", None);
    assert_eq!(destroyed.status, 200);
    flynn_error(
        &host.send("DELETE", "/storage/volumes/flynn-a", None),
        404,
        "object_not_found",
    );

    // ProviderSpec {"id","kind","metadata"}: an empty id is generated.
    let root = state.path().join("second");
    let spec = json!({"id": "", "kind": "dir", "metadata": {"root": root}}).to_string();
    let added = host.send("POST", "/storage/providers", Some(&spec));
    let added: Value = serde_json::from_slice(added.flynn_result().unwrap()).unwrap();
    assert!(
        uuid::Uuid::parse_str(added["id"].as_str().unwrap()).is_ok(),
        "{added}"
    );
    assert_eq!(
        (&added["kind"], &added["metadata"]),
        (&json!("dir"), &json!({"root": root}))
    );
    let blank = flynn_error(
        &host.send(
            "POST",
            "/storage/providers",
            Some(r#"{"id":"p","kind":""}"#),
        ),
        400,
        "validation_error",
    );
    assert_eq!(blank["detail"], json!({"field": "kind"}));

    // Basic auth with the key; without it, or with another, a 401
    // JSONError.
    for key in ["", "wrong"] {
        let stranger = FlynnHost::new(&agent.url, key);
        flynn_error(
            &stranger.send("GET", "/storage/volumes", None),
            401,
            "unauthorized",
        );
    }
}

/// Writes `files` into the directory volume at `location`.
fn write_files(location: &str, files: &[(&str, &[u8])]) {
    for (name, content) in files {
        std::fs::write(Path::new(location).join(name), content).unwrap();
    }
}

#[test]
fn flynns_send_and_pull_by_host_id_work_between_two_agents_configured_with_peers() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServeProcess::start(dir_a.path(), &[]);
    // One token per cluster: b serves with a's token and presents it to a.
    let peers_file = dir_b.path().join("peers");
    std::fs::write(&peers_file, format!("# the cluster\na = {}\n", a.url)).unwrap();
    let token_file = dir_a.path().join("token");
    let b = ServeProcess::start(
        dir_b.path(),
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--peers-file",
            peers_file.to_str().unwrap(),
            "--peer",
            "elsewhere=http://127.0.0.1:9",
        ],
    );
    let (ha, hb) = (
        FlynnHost::new(&a.url, &a.token),
        FlynnHost::new(&b.url, &a.token),
    );
    let create = "/storage/providers/default/volumes";
    let src = ha
        .send("POST", create, Some(&info_json("src", "", None)))
        .info();
    let src_dir = src["location"].as_str().unwrap().to_owned();
    write_files(
        &src_dir,
        &[("one.txt", b"one\n"), ("big.bin", &vec![7u8; 300_000])],
    );
    let s1 = ha.send("PUT", "/storage/volumes/src/snapshot", None).info();
    let s1_id = s1["id"].as_str().unwrap();

    // SendSnapshot: nil haves (`null`), raw JSON haves (Flynn's ZFS haves
    // are objects: they match nothing here, so a whole stream).
    let whole = ha.send_snapshot(s1_id, "null");
    let whole_len = whole.flynn_result().expect("200").len();
    assert!(whole_len > 300_000);
    let raw_haves = ha.send_snapshot(s1_id, r#"[{"snap_id":"x"},"not-a-guid"]"#);
    assert_eq!(raw_haves.flynn_result().expect("200").len(), whole_len);
    flynn_error(&ha.send_snapshot("nope", "null"), 404, "object_not_found");
    flynn_error(&ha.send_snapshot("src", "null"), 409, "conflict");

    // PullSnapshot(receiveVolID, hostID, snapID) on b, from peer a.
    hb.send("POST", create, Some(&info_json("dst", "", None)))
        .info();
    let pull = |snap: &str| {
        hb.send(
            "POST",
            "/storage/volumes/dst/pull_snapshot",
            Some(&json!({"host_id": "a", "snapshot_id": snap}).to_string()),
        )
    };
    let p1 = pull(s1_id).info();
    assert_ne!(p1["id"], s1["id"]);
    let dst = hb.send("GET", "/storage/volumes/dst", None).info();
    let dst_dir = dst["location"].as_str().unwrap().to_owned();
    assert_eq!(
        std::fs::read(Path::new(&dst_dir).join("one.txt")).unwrap(),
        b"one\n"
    );

    // Again, incremental: only the change crosses.
    write_files(&src_dir, &[("two.txt", b"two\n")]);
    let s2 = ha.send("PUT", "/storage/volumes/src/snapshot", None).info();
    let p2 = pull(s2["id"].as_str().unwrap()).info();
    assert!(
        p2["bytes"].as_u64().unwrap() < p1["bytes"].as_u64().unwrap() / 10,
        "incremental: {} then {} bytes",
        p1["bytes"],
        p2["bytes"]
    );
    assert_eq!(
        std::fs::read(Path::new(&dst_dir).join("two.txt")).unwrap(),
        b"two\n"
    );

    // Refusals with Flynn's codes.
    let unknown = flynn_error(
        &hb.send(
            "POST",
            "/storage/volumes/dst/pull_snapshot",
            Some(r#"{"host_id":"no-such-host","snapshot_id":"s"}"#),
        ),
        400,
        "validation_error",
    );
    assert_eq!(unknown["detail"], json!({"field": "host_id"}));
    assert_eq!(unknown["volmgr_code"], "unknown_host");
    flynn_error(&pull("no-such-snapshot"), 404, "object_not_found");
    flynn_error(
        &hb.send(
            "POST",
            "/storage/volumes/nope/pull_snapshot",
            Some(&json!({"host_id": "a", "snapshot_id": s1_id}).to_string()),
        ),
        404,
        "object_not_found",
    );
    // The other configured peer is down: a 502 with Flynn's unknown_error.
    let down = flynn_error(
        &hb.send(
            "POST",
            "/storage/volumes/dst/pull_snapshot",
            Some(&json!({"host_id": "elsewhere", "snapshot_id": s1_id}).to_string()),
        ),
        502,
        "unknown_error",
    );
    assert_eq!(down["volmgr_code"], "source_unreachable");
    assert_eq!(down["retry"], true);
}

/// Reads an event stream's raw bytes on a thread, chunk by chunk.
fn pump(mut body: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = body.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Appends chunks from `rx` to `seen` until `done(seen)`.
fn read_until(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    while !done(seen) {
        let chunk = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("stream stalled ({e}): {}", String::from_utf8_lossy(seen)));
        seen.extend_from_slice(&chunk);
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Everything pkg/sse's reader gets out of `bytes`.
fn flynn_events(bytes: &[u8]) -> Vec<SseItem> {
    let mut reader = SseReader::new(bytes);
    let mut out = Vec::new();
    while let Some(item) = reader.next().unwrap() {
        out.push(item);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flynns_event_stream_reader_gets_create_and_destroy_with_the_volume_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    // Keep-alives every few milliseconds, so the idle stream carries them.
    let options = ServeOptions {
        event_keep_alive: std::time::Duration::from_millis(5),
        ..ServeOptions::default()
    };
    let agent = TestAgent::open(dir.path(), sim_config(&sim), options).await;
    let host = FlynnHost::new(&agent.url, TEST_TOKEN);
    let create = "/storage/providers/default/volumes";
    let (host2, seen) = tokio::task::spawn_blocking(move || {
        let before = host
            .send(
                "POST",
                create,
                Some(&info_json("before", "", Some(("app", "web")))),
            )
            .info();
        let (status, headers, body) = host.stream_volumes();
        assert_eq!(status, 200);
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")),
            "{headers:?}"
        );
        let rx = pump(body);
        let mut seen = Vec::new();
        // The listing, the extension event `current`, then keep-alives.
        read_until(&rx, &mut seen, |s| contains(s, "event: current\r"));
        let listed = seen.len();
        read_until(&rx, &mut seen, |s| {
            s.len() > listed + 4 && s.ends_with(b":\n")
        });
        host.send("POST", create, Some(&info_json("after", "", None)))
            .info();
        let gone = host.send("DELETE", "/storage/volumes/before", None);
        assert_eq!(gone.status, 200);
        read_until(&rx, &mut seen, |s| contains(s, "event: destroy"));
        (host, (before, seen))
    })
    .await
    .unwrap();
    let (before, seen) = seen;
    assert!(
        contains(&seen, "event: current\rdata: {\"type\":\"current\"}\r\r"),
        "the extension event, CR-framed"
    );
    assert!(contains(&seen, "\n:\n"), "keep-alive lines");

    // What Flynn's reader makes of it: exactly the three volume events.
    let items = flynn_events(&seen);
    let events: Vec<&Value> = items
        .iter()
        .map(|item| match item {
            SseItem::Event(v) => v,
            other => panic!("Flynn's reader would drop the stream: {other:?}"),
        })
        .collect();
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            assert_info(&e["volume"]);
            (
                e["type"].as_str().unwrap(),
                e["volume"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create", "before"),
            ("create", "after"),
            ("destroy", "before")
        ]
    );
    assert_eq!(
        events[2]["volume"], before,
        "a destroy carries the volume's info"
    );

    // A reconnect (Last-Event-Id of Flynn's resuming stream) starts with
    // the whole listing again.
    let seen = tokio::task::spawn_blocking(move || {
        let (status, _, body) = host2.open(
            "GET",
            "/storage/volumes",
            &[("Accept", "text/event-stream"), ("Last-Event-Id", "7")],
            None,
        );
        assert_eq!(status, 200);
        let rx = pump(body);
        let mut seen = Vec::new();
        read_until(&rx, &mut seen, |s| contains(s, "event: current\r"));
        seen
    })
    .await
    .unwrap();
    // Flynn's reader is still inside the extension event's line (it waits
    // for a `\n`); it has delivered the listing.
    let items = flynn_events(&seen);
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(&items[0], SseItem::Event(e) if e["type"] == "create" && e["volume"]["id"] == "after")
    );
    agent.shutdown().await;
}

#[test]
fn the_pkg_sse_model_drops_a_stream_on_a_standard_keep_alive_as_flynn_does() {
    // Why the agent's keep-alive is a bare `:\n`: a standard `:\n\n` block
    // has no data, and Flynn's reader fails to decode it.
    let standard = b"data: {\"type\":\"create\"}\n\n:\n\n";
    let items = flynn_events(standard);
    assert!(matches!(items[0], SseItem::Event(_)));
    assert!(matches!(items[1], SseItem::Undecodable(_)), "{items:?}");
    let flynn_style = b"data: {\"type\":\"create\"}\n\n:\n:\ndata: {\"type\":\"destroy\"}\n\n";
    let items = flynn_events(flynn_style);
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items.iter().all(|i| matches!(i, SseItem::Event(_))));
    // An event named error is a server error to Flynn's reader.
    let error = b"event: error\ndata: boom\n\n";
    assert_eq!(flynn_events(error), [SseItem::ServerError("boom".into())]);
}
