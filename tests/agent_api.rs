//! The HTTP API over real loopback connections: every route's success
//! answer and every error status (400, 401, 404, 405, 409, 413, 500, 502,
//! 503), on the simulated provider.

mod agent_support;

use agent_support::{Auth, TestAgent, assert_error, gate_provider, peers, raw, raw_as, sim_config};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use volmgr::agent::api::{Kind, VolumeEvent, VolumeInfo};
use volmgr::agent::{Agent, AgentError, PullFrom, ServeOptions};
use volmgr::manager::{Manager, ManagerConfig};
use volmgr::provider::sim::{SimCall, SimFault, SimProvider, When};

async fn sim_agent() -> (tempfile::TempDir, SimProvider, TestAgent) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let agent = TestAgent::open(dir.path(), sim_config(&sim), ServeOptions::default()).await;
    (dir, sim, agent)
}

fn volume(v: &Value) -> VolumeInfo {
    serde_json::from_value(v.clone()).expect("a volume object")
}

#[tokio::test]
async fn every_route_answers_its_success_status_with_the_documented_json() {
    let (_dir, sim, agent) = sim_agent().await;
    let url = &agent.url;

    let health = raw("GET", &format!("{url}/healthz"), None, None).await;
    assert_eq!((health.0, &health.1), (200, &json!({"status": "ok"})));

    let added = raw(
        "POST",
        &format!("{url}/storage/providers"),
        Some(r#"{"id": "second", "kind": "sim", "config": {"pool": "p1"}}"#),
        None,
    )
    .await;
    assert_eq!(
        (added.0, &added.1),
        (
            200,
            &json!({"id": "second", "kind": "sim", "metadata": {"pool": "p1"}})
        )
    );

    // An empty body is allowed: a UUID id, no metadata.
    let created = raw(
        "POST",
        &format!("{url}/storage/providers/default/volumes"),
        None,
        None,
    )
    .await;
    assert_eq!(created.0, 200, "{}", created.1);
    let anonymous = volume(&created.1);
    assert!(uuid::Uuid::parse_str(&anonymous.id).is_ok());
    assert_eq!(created.1["type"], "data", "Flynn's volume type");
    assert_eq!(anonymous.kind, Kind::Data);
    assert_eq!(anonymous.provider, "default");
    assert_eq!(anonymous.parent, None);
    for key in [
        "id",
        "type",
        "provider",
        "kind",
        "parent",
        "meta",
        "created_at",
        "location",
        "status",
    ] {
        assert!(created.1.get(key).is_some(), "{key} missing: {}", created.1);
    }
    assert!(
        anonymous.created_at.ends_with('Z') && anonymous.created_at.len() == 24,
        "RFC 3339 with milliseconds: {}",
        anonymous.created_at
    );

    let created = raw(
        "POST",
        &format!("{url}/storage/providers/second/volumes"),
        Some(r#"{"id": "web", "meta": {"app": "web"}}"#),
        None,
    )
    .await;
    assert_eq!(created.0, 200, "{}", created.1);
    let web = volume(&created.1);
    assert_eq!((web.id.as_str(), web.provider.as_str()), ("web", "second"));
    assert_eq!(web.meta.get("app").map(String::as_str), Some("web"));
    sim.write_file("web", "index.html", b"<h1>hello</h1>");

    let got = raw("GET", &format!("{url}/storage/volumes/web"), None, None).await;
    assert_eq!((got.0, volume(&got.1)), (200, web.clone()));

    let snap = raw(
        "PUT",
        &format!("{url}/storage/volumes/web/snapshot"),
        Some(r#"{"meta": {"why": "test"}}"#),
        None,
    )
    .await;
    assert_eq!(snap.0, 200, "{}", snap.1);
    let snap = volume(&snap.1);
    assert_eq!(snap.kind, Kind::Snapshot);
    assert_eq!(snap.parent.as_deref(), Some("web"));
    let snap_bare = raw(
        "PUT",
        &format!("{url}/storage/volumes/web/snapshot"),
        None,
        None,
    )
    .await;
    assert_eq!(snap_bare.0, 200, "{}", snap_bare.1);

    let fork = raw(
        "POST",
        &format!("{url}/storage/volumes/{}/fork", snap.id),
        Some(r#"{"id": "web-copy"}"#),
        None,
    )
    .await;
    assert_eq!(fork.0, 200, "{}", fork.1);
    let fork = volume(&fork.1);
    assert_eq!(
        (fork.id.as_str(), fork.kind, fork.parent.as_deref()),
        ("web-copy", Kind::Data, Some(snap.id.as_str()))
    );
    assert_eq!(
        sim.read_file("web-copy", "index.html").as_deref(),
        Some(&b"<h1>hello</h1>"[..])
    );

    let list = raw("GET", &format!("{url}/storage/volumes"), None, None).await;
    assert_eq!(list.0, 200);
    let ids: Vec<&str> = list
        .1
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    for id in [anonymous.id.as_str(), "web", &snap.id, "web-copy"] {
        assert!(ids.contains(&id), "{id} not listed in {ids:?}");
    }

    // send: GET and POST, with or without haves.
    for method in ["GET", "POST"] {
        let sent = raw(
            method,
            &format!("{url}/storage/volumes/{}/send", snap.id),
            Some(r#"{"haves": []}"#),
            None,
        )
        .await;
        assert_eq!(sent.0, 200);
        assert!(!sent.2.is_empty());
    }
    let bare = raw(
        "POST",
        &format!("{url}/storage/volumes/{}/send", snap.id),
        None,
        None,
    )
    .await;
    assert_eq!(bare.0, 200);

    // pull_snapshot, here from the agent itself into another data volume.
    let target = raw(
        "POST",
        &format!("{url}/storage/providers/second/volumes"),
        Some(r#"{"id": "mirror"}"#),
        None,
    )
    .await;
    assert_eq!(target.0, 200);
    let pulled = raw(
        "POST",
        &format!("{url}/storage/volumes/mirror/pull_snapshot"),
        Some(&json!({"source": url, "snapshot_id": snap.id}).to_string()),
        None,
    )
    .await;
    assert_eq!(pulled.0, 200, "{}", pulled.1);
    let received = volume(&pulled.1);
    assert_eq!(received.kind, Kind::Snapshot);
    assert_eq!(received.parent.as_deref(), Some("mirror"));
    assert_eq!(pulled.1["bytes"].as_u64(), Some(bare.2.len() as u64));
    assert_eq!(
        sim.read_file("mirror", "index.html").as_deref(),
        Some(&b"<h1>hello</h1>"[..])
    );

    let deleted = raw(
        "DELETE",
        &format!("{url}/storage/volumes/web-copy"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (deleted.0, deleted.2.len()),
        (200, 0),
        "Flynn's 200, no body"
    );
    let gone = raw(
        "GET",
        &format!("{url}/storage/volumes/web-copy"),
        None,
        None,
    )
    .await;
    assert_error(&gone, 404, "no_such_volume");

    let stats = raw("GET", &format!("{url}/stats"), None, None).await;
    // Ten writes: the default provider added at open, then the provider,
    // three creates, two snapshots, the fork, the pull and the destroy
    // above; an intent and an outcome each, each its own commit. No
    // checkpoint yet (one comes after 10,000 records).
    assert_eq!(
        (stats.0, &stats.1),
        (
            200,
            &json!({
                "durable_seq": 20,
                "checkpoint_seq": 0,
                "checkpoints": 0,
                "checkpoint_failures": 0,
                "operations": 10,
                "journal_syncs": 20,
                "provider_syncs": 0,
            })
        )
    );
    let typed = agent.client.stats().await.unwrap();
    assert_eq!((typed.durable_seq, typed.operations), (20, 10));
    agent.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_answered_400_with_a_code_never_500() {
    let (_dir, _sim, agent) = sim_agent().await;
    let url = &agent.url;
    let create = format!("{url}/storage/providers/default/volumes");
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        ("POST", create.clone(), Some("{"), "bad_json"),
        ("POST", create.clone(), Some("[1, 2]"), "bad_body"),
        ("POST", create.clone(), Some(r#"{"idd": "x"}"#), "bad_body"),
        ("POST", create.clone(), Some(r#"{"id": 7}"#), "bad_body"),
        (
            "POST",
            create.clone(),
            Some(r#"{"id": "../etc"}"#),
            "invalid_id",
        ),
        (
            "POST",
            create.clone(),
            Some(r#"{"id": "-rf"}"#),
            "invalid_id",
        ),
        (
            "POST",
            create.clone(),
            Some(r#"{"meta": {"k": "a\u0000b"}}"#),
            "invalid_meta",
        ),
        (
            "POST",
            create.clone(),
            Some(r#"{"meta": {"bad key": "v"}}"#),
            "invalid_meta",
        ),
        (
            "POST",
            format!("{url}/storage/providers/bad%20id/volumes"),
            None,
            "invalid_id",
        ),
        (
            "GET",
            format!("{url}/storage/volumes/a%20b"),
            None,
            "invalid_id",
        ),
        (
            "DELETE",
            format!("{url}/storage/volumes/..%2Fx"),
            None,
            "invalid_id",
        ),
        (
            "PUT",
            format!("{url}/storage/volumes/%E2%98%83/snapshot"),
            None,
            "invalid_id",
        ),
        ("POST", format!("{url}/storage/providers"), None, "bad_json"),
        (
            "POST",
            format!("{url}/storage/providers"),
            Some(r#"{"id": "p", "kind": "no-such-kind"}"#),
            "invalid_input",
        ),
        (
            "POST",
            format!("{url}/storage/providers"),
            Some(r#"{"id": "p/q", "kind": "sim"}"#),
            "invalid_id",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/x/send"),
            Some(r#"{"haves": "nope"}"#),
            "bad_body",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/x/pull_snapshot"),
            Some(r#"{"source": "not a url", "snapshot_id": "s"}"#),
            "invalid_source",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/x/pull_snapshot"),
            Some(r#"{"source": "ftp://h/", "snapshot_id": "s"}"#),
            "invalid_source",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/x/pull_snapshot"),
            Some(r#"{"source": "http://127.0.0.1:1", "snapshot_id": "../s"}"#),
            "invalid_id",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/x/pull_snapshot"),
            None,
            "bad_json",
        ),
    ];
    for (method, url, body, code) in cases {
        let answer = raw(method, &url, body, None).await;
        assert!(
            answer.0 == 400,
            "{method} {url} {body:?}: {} {}",
            answer.0,
            answer.1
        );
        assert_error(&answer, 400, code);
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_providers_and_routes_are_answered_404() {
    let (_dir, _sim, agent) = sim_agent().await;
    let url = &agent.url;
    let data = agent
        .client
        .create_volume("default", Some("data"), BTreeMap::default())
        .await
        .unwrap();
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "GET",
            format!("{url}/storage/volumes/nope"),
            None,
            "no_such_volume",
        ),
        (
            "DELETE",
            format!("{url}/storage/volumes/nope"),
            None,
            "no_such_volume",
        ),
        (
            "PUT",
            format!("{url}/storage/volumes/nope/snapshot"),
            None,
            "no_such_volume",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/nope/fork"),
            None,
            "no_such_volume",
        ),
        (
            "GET",
            format!("{url}/storage/volumes/nope/send"),
            None,
            "no_such_volume",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/nope/pull_snapshot"),
            Some(json!({"source": url, "snapshot_id": "s"}).to_string()),
            "no_such_volume",
        ),
        (
            "POST",
            format!("{url}/storage/providers/nope/volumes"),
            None,
            "no_such_provider",
        ),
        ("GET", format!("{url}/storage"), None, "no_such_route"),
        ("GET", format!("{url}/"), None, "no_such_route"),
        // The source agent does not know the snapshot.
        (
            "POST",
            format!("{url}/storage/volumes/{}/pull_snapshot", data.id),
            Some(json!({"source": url, "snapshot_id": "missing"}).to_string()),
            "source_not_found",
        ),
    ];
    for (method, url, body, code) in cases {
        let answer = raw(method, &url, body.as_deref(), None).await;
        assert_error(&answer, 404, code);
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn conflicts_with_the_current_state_are_answered_409() {
    let (_dir, _sim, agent) = sim_agent().await;
    let url = &agent.url;
    let c = &agent.client;
    let data = c
        .create_volume("default", Some("data"), BTreeMap::default())
        .await
        .unwrap();
    let snap = c.snapshot(&data.id, BTreeMap::default()).await.unwrap();
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "POST",
            format!("{url}/storage/providers/default/volumes"),
            Some(r#"{"id": "data"}"#.into()),
            "already_exists",
        ),
        (
            "POST",
            format!("{url}/storage/providers"),
            Some(r#"{"id": "default", "kind": "sim"}"#.into()),
            "already_exists",
        ),
        (
            "DELETE",
            format!("{url}/storage/volumes/data"),
            None,
            "has_dependents",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/{}/fork", snap.id),
            Some(r#"{"id": "data"}"#.into()),
            "already_exists",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/data/fork"),
            None,
            "wrong_kind",
        ),
        (
            "PUT",
            format!("{url}/storage/volumes/{}/snapshot", snap.id),
            None,
            "wrong_kind",
        ),
        (
            "GET",
            format!("{url}/storage/volumes/data/send"),
            None,
            "wrong_kind",
        ),
        (
            "POST",
            format!("{url}/storage/volumes/{}/pull_snapshot", snap.id),
            Some(json!({"source": url, "snapshot_id": snap.id}).to_string()),
            "wrong_kind",
        ),
        // The source agent refuses to send a data volume.
        (
            "POST",
            format!("{url}/storage/volumes/data/pull_snapshot"),
            Some(json!({"source": url, "snapshot_id": "data"}).to_string()),
            "source_conflict",
        ),
    ];
    for (method, url, body, code) in cases {
        let answer = raw(method, &url, body.as_deref(), None).await;
        assert_error(&answer, 409, code);
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn a_volume_with_an_operation_in_flight_is_answered_409_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, mut held) = gate_provider(SimProvider::new());
    let mut config = ManagerConfig::default();
    config.factories.insert("gate".into(), gate.factory());
    config.default_provider = Some(Box::new(|| Ok(("gate".into(), BTreeMap::default()))));
    let agent = TestAgent::open(dir.path(), config, ServeOptions::default()).await;
    let url = agent.url.clone();
    agent
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    let client = agent.client.clone();
    let snapshot = tokio::spawn(async move { client.snapshot("v", BTreeMap::default()).await });
    held.entered
        .recv()
        .await
        .expect("the snapshot reached the provider");
    for (method, path) in [
        ("DELETE", "/storage/volumes/v"),
        ("PUT", "/storage/volumes/v/snapshot"),
    ] {
        let answer = raw(method, &format!("{url}{path}"), None, None).await;
        assert_error(&answer, 409, "busy");
    }
    held.release.send(()).unwrap();
    let snap = snapshot.await.unwrap().expect("the held snapshot finishes");
    assert_eq!(snap.parent.as_deref(), Some("v"));
    agent.shutdown().await;
}

#[tokio::test]
async fn a_lost_volume_is_listed_as_lost_and_operations_on_it_are_409() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let manager = Manager::open(dir.path(), sim_config(&sim)).await.unwrap();
    manager
        .create_volume("default", Some("gone"), BTreeMap::default())
        .await
        .unwrap();
    manager.close().await;
    sim.remove_behind_back("gone");
    let agent = TestAgent::open(dir.path(), sim_config(&sim), ServeOptions::default()).await;
    let got = agent.client.get("gone").await.unwrap();
    assert_eq!(got.status, volmgr::agent::api::Status::Lost);
    let answer = raw(
        "PUT",
        &format!("{}/storage/volumes/gone/snapshot", agent.url),
        None,
        None,
    )
    .await;
    assert_error(&answer, 409, "volume_lost");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_answered_413() {
    let (_dir, _sim, agent) = sim_agent().await;
    let big = format!(
        r#"{{"meta": {{"k": "{}"}}}}"#,
        "x".repeat(volmgr::agent::MAX_JSON_BODY_BYTES)
    );
    let answer = raw(
        "POST",
        &format!("{}/storage/providers/default/volumes", agent.url),
        Some(&big),
        None,
    )
    .await;
    assert_error(&answer, 413, "body_too_large");
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains("64 KiB"), "names the limit: {message}");
    agent.shutdown().await;
}

/// A new user's report: valid JSON of the wrong shape was answered
/// `bad_json` (documented as `bad_body`), with serde's Rust type names in
/// the message (`expected struct SnapshotRequest`).
#[tokio::test]
async fn json_of_the_wrong_shape_is_bad_body_and_no_message_names_a_rust_type() {
    let (_dir, _sim, agent) = sim_agent().await;
    let v = agent
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    let url = &agent.url;
    let cases = [
        (
            format!("{url}/storage/volumes/{}/snapshot", v.id),
            "PUT",
            r#""x""#,
            "bad_body",
        ),
        (
            format!("{url}/storage/volumes/{}/snapshot", v.id),
            "PUT",
            "[]",
            "bad_body",
        ),
        (
            format!("{url}/storage/volumes/{}/snapshot", v.id),
            "PUT",
            r#"{"meta": 5}"#,
            "bad_body",
        ),
        (
            format!("{url}/storage/volumes/{}/snapshot", v.id),
            "PUT",
            r#"{"mета": {}}"#,
            "bad_body",
        ),
        (
            format!("{url}/storage/volumes/{}/pull_snapshot", v.id),
            "POST",
            r#"{"host_id": "a"}"#,
            "bad_body",
        ),
        (format!("{url}/storage/providers"), "POST", "7", "bad_body"),
        (
            format!("{url}/storage/volumes/{}/snapshot", v.id),
            "PUT",
            r#"{"meta": "#,
            "bad_json",
        ),
        (
            format!("{url}/storage/volumes/{}/snapshot", v.id),
            "PUT",
            "{]",
            "bad_json",
        ),
    ];
    for (url, method, body, code) in cases {
        let answer = raw(method, &url, Some(body), None).await;
        assert_error(&answer, 400, code);
        let message = answer.1["message"].as_str().unwrap();
        for rust in [
            "Request",
            "struct ",
            "enum ",
            "StringMap",
            "BTreeMap",
            "Option<",
            "Vec<",
        ] {
            assert!(!message.contains(rust), "{method} {body}: {message}");
        }
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn a_wrong_method_is_answered_405() {
    let (_dir, _sim, agent) = sim_agent().await;
    for (method, path) in [
        ("PATCH", "/storage/volumes"),
        ("POST", "/storage/volumes/x"),
        ("GET", "/storage/volumes/x/snapshot"),
        ("DELETE", "/storage/providers"),
    ] {
        let answer = raw(method, &format!("{}{path}", agent.url), None, None).await;
        assert_error(&answer, 405, "method_not_allowed");
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn with_a_token_every_route_refuses_requests_without_it_401() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let options = ServeOptions {
        token: Some("s3cret".into()),
        ..ServeOptions::default()
    };
    let agent = TestAgent::open(dir.path(), sim_config(&sim), options).await;
    let url = &agent.url;
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/stats"),
        ("POST", "/storage/providers"),
        ("POST", "/storage/providers/default/volumes"),
        ("GET", "/storage/volumes"),
        ("GET", "/storage/volumes/x"),
        ("DELETE", "/storage/volumes/x"),
        ("PUT", "/storage/volumes/x/snapshot"),
        ("POST", "/storage/volumes/x/fork"),
        ("GET", "/storage/volumes/x/send"),
        ("POST", "/storage/volumes/x/send"),
        ("POST", "/storage/volumes/x/pull_snapshot"),
        ("GET", "/no/such/route"),
    ] {
        for auth in [
            Auth::None,
            Auth::Bearer("wrong"),
            Auth::Basic("wrong"),
            Auth::Bearer("s3cre"),
            Auth::Bearer("s3crett"),
        ] {
            let answer = raw_as(method, &format!("{url}{path}"), None, auth).await;
            assert_error(&answer, 401, "unauthorized");
        }
    }
    for auth in [Auth::Bearer("s3cret"), Auth::Basic("s3cret")] {
        let ok = raw_as("GET", &format!("{url}/healthz"), None, auth).await;
        assert_eq!(ok.0, 200, "{auth:?}");
    }
    // The client presents it; pulls present it to the source agent too.
    let v = agent
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    let snap = agent
        .client
        .snapshot(&v.id, BTreeMap::default())
        .await
        .unwrap();
    let target = agent
        .client
        .create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    agent
        .client
        .pull(&target.id, PullFrom::Host("self"), &snap.id)
        .await
        .expect("a pull between agents sharing the token");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_non_loopback_listener_without_a_token_refuses_to_serve() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let agent = Agent::new(ServeOptions::default()).unwrap();
    let result = agent.serve(listener, std::future::pending()).await;
    assert!(
        matches!(result, Err(AgentError::TokenRequired(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_agent_answers_503_while_starting_and_while_stopping() {
    let agent = TestAgent::starting(ServeOptions::default()).await;
    let url = agent.url.clone();
    for path in ["/healthz", "/storage/volumes", "/storage/volumes/x"] {
        let answer = raw("GET", &format!("{url}{path}"), None, None).await;
        assert_error(&answer, 503, "starting");
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let manager = Manager::open(dir.path(), sim_config(&sim)).await.unwrap();
    agent.agent.ready(manager).unwrap();
    let ok = raw("GET", &format!("{url}/healthz"), None, None).await;
    assert_eq!(ok.0, 200);

    agent.agent.begin_stopping();
    for path in ["/healthz", "/storage/volumes"] {
        let answer = raw("GET", &format!("{url}{path}"), None, None).await;
        assert_error(&answer, 503, "stopping");
    }
    let answer = raw(
        "POST",
        &format!("{url}/storage/providers/default/volumes"),
        None,
        None,
    )
    .await;
    assert_error(&answer, 503, "stopping");
    agent.shutdown().await;
    // The manager was closed: the state directory opens again.
    Manager::open(dir.path(), sim_config(&sim))
        .await
        .expect("the lock was released")
        .close()
        .await;
}

#[tokio::test]
async fn a_provider_that_could_not_be_built_is_answered_503() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    Manager::open(dir.path(), sim_config(&sim))
        .await
        .unwrap()
        .close()
        .await;
    // Reopened without the "sim" kind: provider `default` is unavailable.
    let agent = TestAgent::open(
        dir.path(),
        ManagerConfig::default(),
        ServeOptions::default(),
    )
    .await;
    let answer = raw(
        "POST",
        &format!("{}/storage/providers/default/volumes", agent.url),
        None,
        None,
    )
    .await;
    assert_error(&answer, 503, "provider_unavailable");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_failing_provider_is_a_500_and_leaves_no_volume() {
    let (_dir, sim, agent) = sim_agent().await;
    sim.set_fault(Some(SimFault {
        call: SimCall::Create,
        when: When::Before,
        nth: 1,
    }));
    let answer = raw(
        "POST",
        &format!("{}/storage/providers/default/volumes", agent.url),
        Some(r#"{"id": "v"}"#),
        None,
    )
    .await;
    assert_error(&answer, 500, "provider_failed");
    let missing = raw(
        "GET",
        &format!("{}/storage/volumes/v", agent.url),
        None,
        None,
    )
    .await;
    assert_error(&missing, 404, "no_such_volume");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_pull_from_an_unreachable_source_is_answered_502() {
    // A peer on a port nobody listens on: bound, then released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let options = ServeOptions {
        peers: peers(&[("down", &format!("http://{closed}"))]),
        ..ServeOptions::default()
    };
    let agent = TestAgent::open(dir.path(), sim_config(&sim), options).await;
    agent
        .client
        .create_volume("default", Some("t"), BTreeMap::default())
        .await
        .unwrap();
    let answer = raw(
        "POST",
        &format!("{}/storage/volumes/t/pull_snapshot", agent.url),
        Some(&json!({"host_id": "down", "snapshot_id": "s"}).to_string()),
        None,
    )
    .await;
    assert_error(&answer, 502, "source_unreachable");
    agent.shutdown().await;
}

#[tokio::test]
async fn the_volume_event_stream_lists_then_follows_creates_and_destroys() {
    let (_dir, _sim, agent) = sim_agent().await;
    let c = &agent.client;
    c.create_volume("default", Some("before"), BTreeMap::default())
        .await
        .unwrap();
    let mut events = c.events().await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.event, "create");
    let before = match first.json::<VolumeEvent>().unwrap() {
        VolumeEvent::Create { volume } => volume,
        other => panic!("{other:?}"),
    };
    assert_eq!(before.id, "before");
    let current = events.next().await.unwrap().unwrap();
    assert_eq!(
        (current.event.as_str(), current.json::<Value>().unwrap()),
        ("current", json!({"type": "current"}))
    );

    c.create_volume("default", Some("after"), BTreeMap::default())
        .await
        .unwrap();
    let created = events.next().await.unwrap().unwrap();
    assert_eq!(created.event, "create");
    assert!(
        matches!(created.json::<VolumeEvent>().unwrap(), VolumeEvent::Create { volume } if volume.id == "after")
    );

    c.destroy("before").await.unwrap();
    let destroyed = events.next().await.unwrap().unwrap();
    assert_eq!(destroyed.event, "destroy");
    assert_eq!(
        destroyed.json::<VolumeEvent>().unwrap(),
        VolumeEvent::Destroy { volume: before },
        "a destroy carries the volume's info"
    );

    // Shutdown ends the stream instead of waiting for it.
    agent.shutdown().await;
    while let Some(Ok(_)) = events.next().await {}
}

#[tokio::test]
async fn abort_receive_discards_the_partial_receive_and_a_token_that_does_not_fit_gets_a_whole_stream()
 {
    let (_dir, sim, agent) = sim_agent().await;
    let url = &agent.url;
    let v = agent
        .client
        .create_volume("default", Some("v"), BTreeMap::default())
        .await
        .unwrap();
    sim.plant_partial(&v.id, uuid::Uuid::from_u128(9), "77", "1-abc");
    let answer = raw(
        "DELETE",
        &format!("{url}/storage/volumes/v/receive"),
        None,
        None,
    )
    .await;
    assert_eq!((answer.0, answer.2.len()), (200, 0), "{:?}", answer.1);
    assert!(sim.partial("v").is_none(), "discarded");
    let again = raw(
        "DELETE",
        &format!("{url}/storage/volumes/v/receive"),
        None,
        None,
    )
    .await;
    assert_eq!(again.0, 200, "idempotent");
    let missing = raw(
        "DELETE",
        &format!("{url}/storage/volumes/nope/receive"),
        None,
        None,
    )
    .await;
    assert_error(&missing, 404, "no_such_volume");

    // The simulated provider resumes nothing: the token is ignored and a
    // whole stream is sent, marked as not resumed.
    let s = agent
        .client
        .snapshot("v", BTreeMap::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{url}/storage/volumes/{}/send", s.id))
        .bearer_auth(agent.token.as_deref().unwrap())
        .body(r#"{"haves": [], "resume_token": "1-abc"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-volmgr-resumed"], "false");
    assert!(!response.bytes().await.unwrap().is_empty());
    let hostile = raw(
        "POST",
        &format!("{url}/storage/volumes/{}/send", s.id),
        Some(r#"{"resume_token": "-t; rm -rf /"}"#),
        None,
    )
    .await;
    assert_error(&hostile, 400, "invalid_input");
    agent.shutdown().await;
}

/// Go encodes a nil map as `null`, so a client's `{"meta": null}` means no
/// metadata. Create took it; snapshot and fork answered 400 `bad_body`
/// ("invalid type: null, expected a map").
#[tokio::test]
async fn a_null_meta_is_no_metadata_on_create_snapshot_and_fork() {
    let (_dir, _sim, agent) = sim_agent().await;
    let url = &agent.url;
    let created = raw(
        "POST",
        &format!("{url}/storage/providers/default/volumes"),
        Some(r#"{"id": "v", "meta": null}"#),
        None,
    )
    .await;
    assert_eq!(created.0, 200, "{}", String::from_utf8_lossy(&created.2));
    let snapshot = raw(
        "PUT",
        &format!("{url}/storage/volumes/v/snapshot"),
        Some(r#"{"meta": null}"#),
        None,
    )
    .await;
    assert_eq!(snapshot.0, 200, "{}", String::from_utf8_lossy(&snapshot.2));
    let snapshot = volume(&snapshot.1);
    let fork = raw(
        "POST",
        &format!("{url}/storage/volumes/{}/fork", snapshot.id),
        Some(r#"{"id": "f", "meta": null}"#),
        None,
    )
    .await;
    assert_eq!(fork.0, 200, "{}", String::from_utf8_lossy(&fork.2));
    for v in [volume(&created.1), snapshot, volume(&fork.1)] {
        assert!(v.meta.is_empty(), "{v:?}");
    }
    agent.shutdown().await;
}

/// Sends a request head declaring a body of `len` bytes (none of it sent)
/// and returns the first line of the agent's first answer.
async fn first_answer_to_a_declared_body(url: &str, len: usize, expect: bool) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let token = agent_support::token_for(url).unwrap_or_default();
    let head = format!(
        "POST /storage/providers/default/volumes HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {len}\r\n{}\r\n",
        if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        }
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.unwrap();
    line.trim_end().to_owned()
}

/// A body declared larger than the limit was read (and, with `Expect:
/// 100-continue`, invited: `100 Continue`) until 64 KiB of it arrived, or
/// answered 408 `body_timeout` after `--header-read-timeout` if the client
/// waited for a go-ahead: the 413 is answered from the head alone.
#[tokio::test]
async fn a_body_declared_over_the_limit_is_answered_413_before_any_of_it_is_sent() {
    let (_dir, _sim, agent) = sim_agent().await;
    let over = volmgr::agent::MAX_JSON_BODY_BYTES + 1;
    for expect in [true, false] {
        assert_eq!(
            first_answer_to_a_declared_body(&agent.url, over, expect).await,
            "HTTP/1.1 413 Payload Too Large",
            "Expect: 100-continue {expect}"
        );
    }
    // At the limit, the body is invited.
    assert_eq!(
        first_answer_to_a_declared_body(&agent.url, volmgr::agent::MAX_JSON_BODY_BYTES, true).await,
        "HTTP/1.1 100 Continue"
    );
    agent.shutdown().await;
}
