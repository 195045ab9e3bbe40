//! The `volmgr` binary: the `volume` client against an agent on loopback,
//! and `serve` as a real process (refusals, SIGTERM during a burst).

mod agent_support;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Output, Stdio};

use agent_support::process::{ServeProcess, describe, volmgr_command};
use agent_support::{TEST_TOKEN, TestAgent, sim_config};
use volmgr::agent::ServeOptions;
use volmgr::agent::api::VolumeInfo;
use volmgr::cli::{EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE};
use volmgr::provider::sim::SimProvider;

/// Runs `volmgr` off the runtime's thread (the agent under test keeps
/// serving on it). `VOLMGR_TOKEN` is the test agents' token unless `env`
/// sets it (`""`: none).
async fn volmgr(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = volmgr_command();
        cmd.args(&args).env("VOLMGR_TOKEN", TEST_TOKEN);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("volmgr runs")
    })
    .await
    .unwrap()
}

fn args(agent: &str, rest: &[&str]) -> Vec<String> {
    ["volume", "--agent", agent]
        .iter()
        .chain(rest)
        .map(std::string::ToString::to_string)
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", describe(o));
}

#[tokio::test]
async fn the_volume_cli_drives_every_verb_and_reports_failures_by_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let agent = TestAgent::open(dir.path(), sim_config(&sim), ServeOptions::default()).await;
    let url = agent.url.as_str();

    let o = volmgr(
        args(url, &["create", "--id", "web", "--meta", "app=web"]),
        vec![],
    )
    .await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "web\n");

    let o = volmgr(args(url, &["create", "--json"]), vec![]).await;
    assert_exit(&o, 0);
    let anonymous: VolumeInfo = serde_json::from_slice(&o.stdout).unwrap();

    let o = volmgr(args(url, &["snapshot", "web"]), vec![]).await;
    assert_exit(&o, 0);
    let snap = stdout(&o).trim().to_owned();
    assert_eq!(
        agent.client.get(&snap).await.unwrap().parent.as_deref(),
        Some("web")
    );

    let o = volmgr(args(url, &["fork", &snap, "--id", "copy"]), vec![]).await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "copy\n");

    // Not a terminal: tab-separated rows, no header.
    let o = volmgr(args(url, &["list"]), vec![]).await;
    assert_exit(&o, 0);
    let rows: Vec<Vec<String>> = stdout(&o)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let web = rows.iter().find(|r| r[0] == "web").expect("web listed");
    assert_eq!(&web[1..5], ["data", "default", "-", "live"]);
    assert_eq!(web[6], "app=web", "the META column: {web:?}");
    let copy = rows.iter().find(|r| r[0] == "copy").expect("copy listed");
    assert_eq!(copy[3], snap);
    assert_eq!(copy[6], "-");
    // A snapshot comes right after its volume.
    let at = |id: &str| rows.iter().position(|r| r[0] == id).unwrap();
    assert_eq!(at(&snap), at("web") + 1, "{rows:?}");

    let o = volmgr(args(url, &["list", "--json"]), vec![]).await;
    assert_exit(&o, 0);
    let listed: Vec<VolumeInfo> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(listed.iter().any(|v| v.id == anonymous.id));

    let o = volmgr(args(url, &["inspect", "web"]), vec![]).await;
    assert_exit(&o, 0);
    let text = stdout(&o);
    assert!(
        text.lines()
            .any(|l| l.starts_with("id:") && l.ends_with(" web")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("meta:") && l.ends_with(r#" app="web""#)),
        "meta is quoted: {text}"
    );
    let o = volmgr(args(url, &["inspect", "web", "--json"]), vec![]).await;
    let inspected: VolumeInfo = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(inspected, agent.client.get("web").await.unwrap());

    // Pull, here from the agent itself into another data volume.
    agent
        .client
        .create_volume("default", Some("mirror"), BTreeMap::default())
        .await
        .unwrap();
    let o = volmgr(
        args(
            url,
            &["pull", "mirror", "--host", "self", "--snapshot", &snap],
        ),
        vec![],
    )
    .await;
    assert_exit(&o, 0);
    let received = agent.client.get(stdout(&o).trim()).await.unwrap();
    assert_eq!(received.parent.as_deref(), Some("mirror"));

    // Failures, by exit code.
    let o = volmgr(args(url, &["inspect", "nope"]), vec![]).await;
    assert_exit(&o, EXIT_NOT_FOUND);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such volume"));
    assert!(o.stdout.is_empty());
    let o = volmgr(args(url, &["destroy", "web"]), vec![]).await;
    assert_exit(&o, EXIT_CONFLICT);
    let o = volmgr(args(url, &["create", "--meta", "novalue"]), vec![]).await;
    assert_exit(&o, EXIT_USAGE);
    let o = volmgr(args(url, &["create", "--id", "../x"]), vec![]).await;
    assert_exit(&o, 1);
    let o = volmgr(args(url, &["frobnicate"]), vec![]).await;
    assert_exit(&o, EXIT_USAGE);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = volmgr(args(&format!("http://{closed}"), &["list"]), vec![]).await;
    assert_exit(&o, EXIT_UNAVAILABLE);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("connection refused"),
        "names the cause: {said}"
    );

    let o = volmgr(args(url, &["destroy", "copy"]), vec![]).await;
    assert_exit(&o, 0);
    assert!(o.stdout.is_empty());
    assert!(agent.client.get("copy").await.is_err());
    agent.shutdown().await;
}

#[tokio::test]
async fn the_volume_cli_presents_the_token_from_a_flag_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let options = ServeOptions {
        token: Some("t0ken".into()),
        ..ServeOptions::default()
    };
    let agent = TestAgent::open(dir.path(), sim_config(&sim), options).await;
    let url = agent.url.as_str();
    let o = volmgr(args(url, &["list"]), vec![]).await;
    assert_exit(&o, 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"));
    let o = volmgr(args(url, &["list", "--token", "t0ken"]), vec![]).await;
    assert_exit(&o, 0);
    let file = dir.path().join("token");
    std::fs::write(&file, "t0ken\n").unwrap();
    let o = volmgr(
        args(url, &["list", "--token-file", file.to_str().unwrap()]),
        vec![],
    )
    .await;
    assert_exit(&o, 0);
    let o = volmgr(args(url, &["list"]), vec![("VOLMGR_TOKEN", "t0ken".into())]).await;
    assert_exit(&o, 0);
    // The agent's own token file, as `volmgr serve` keeps it.
    let state = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(state.path()).unwrap();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(state.path().join("token"))
            .unwrap();
        f.write_all(b"t0ken\n").unwrap();
    }
    let state_dir = state.path().to_str().unwrap();
    let o = volmgr(
        args(url, &["list", "--state-dir", state_dir]),
        vec![("VOLMGR_TOKEN", String::new())],
    )
    .await;
    assert_exit(&o, 0);
    let o = volmgr(
        args(url, &["list"]),
        vec![
            ("VOLMGR_TOKEN", String::new()),
            ("VOLMGR_STATE_DIR", state_dir.to_owned()),
        ],
    )
    .await;
    assert_exit(&o, 0);
    // A named state directory without a token file is a usage error.
    let empty = tempfile::tempdir().unwrap();
    let o = volmgr(
        args(
            url,
            &["list", "--state-dir", empty.path().to_str().unwrap()],
        ),
        vec![("VOLMGR_TOKEN", String::new())],
    )
    .await;
    assert_exit(&o, EXIT_USAGE);
    agent.shutdown().await;
}

#[tokio::test]
async fn the_volume_cli_exits_cleanly_when_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProvider::new();
    let agent = TestAgent::open(dir.path(), sim_config(&sim), ServeOptions::default()).await;
    for i in 0..20 {
        agent
            .client
            .create_volume("default", Some(&format!("v{i}")), BTreeMap::default())
            .await
            .unwrap();
    }
    let url = agent.url.clone();
    let o = tokio::task::spawn_blocking(move || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        volmgr_command()
            .args(["volume", "--agent", &url, "list"])
            .env("VOLMGR_TOKEN", TEST_TOKEN)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_exit(&o, 0);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    agent.shutdown().await;
}

#[test]
fn serve_refuses_a_non_loopback_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let o = volmgr_command()
        .args(["serve", "--insecure-no-auth", "--state-dir"])
        .arg(dir.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_exit(&o, EXIT_USAGE);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("without a token"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !dir.path().join("journal").exists(),
        "the state directory must not be opened"
    );
}

/// Names of the entries of a directory (empty if it does not exist).
fn entries(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_of_creates_keeps_every_acknowledged_volume_and_leaks_none() {
    let state = tempfile::tempdir().unwrap();
    let mut server = tokio::task::block_in_place(|| ServeProcess::start(state.path(), &[]));
    let url = server.url.clone();
    let token = server.token.clone();
    assert!(
        !token.is_empty(),
        "the agent keeps a token in its state directory"
    );

    // Workers create volumes back to back until the agent stops answering.
    const WORKERS: usize = 16;
    const PER_WORKER_MAX: usize = 500;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let url = url.clone();
        let token = token.clone();
        let acked = acked_tx.clone();
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut refused = None;
            for n in 0..PER_WORKER_MAX {
                let id = format!("w{w:02}-{n:03}");
                let answer = http
                    .post(format!("{url}/storage/providers/default/volumes"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "id": id }))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 200 => {
                        let _ = acked.send(id);
                    }
                    Ok(r) => {
                        refused = Some(format!("{}", r.status()));
                        break;
                    }
                    Err(e) => {
                        refused = Some(e.to_string());
                        break;
                    }
                }
            }
            refused
        }));
    }
    drop(acked_tx);
    let mut acked = BTreeSet::new();
    while acked.len() < 20 {
        acked.insert(acked_rx.recv().await.expect("creates are acknowledged"));
    }
    server.signal(libc::SIGTERM);
    let mut refusals = Vec::new();
    for w in workers {
        refusals.extend(w.await.unwrap());
    }
    while let Some(id) = acked_rx.recv().await {
        acked.insert(id);
    }
    let status = tokio::task::block_in_place(|| server.child.wait()).unwrap();
    assert!(status.success(), "clean shutdown after SIGTERM: {status}");
    let answered_503 = refusals.iter().filter(|r| r.starts_with("503")).count();
    eprintln!(
        "{} creates acknowledged; workers stopped by 503 stopping: {answered_503}, \
         by a closed connection: {}",
        acked.len(),
        refusals.len() - answered_503
    );

    let mut server = tokio::task::block_in_place(|| ServeProcess::start(state.path(), &[]));
    let report = server
        .logged("opened and reconciled")
        .expect("a reconciliation report before ready");
    assert_eq!(
        report["fields"]["resolutions"], 0,
        "a clean shutdown leaves nothing to reconcile: {report}"
    );
    assert_eq!(report["fields"]["orphans"], 0, "{report}");
    assert_eq!(server.token, token, "the token survives a restart");
    let listed: Vec<VolumeInfo> = reqwest::Client::new()
        .get(format!("{}/storage/volumes", server.url))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recorded: BTreeSet<String> = listed.iter().map(|v| v.id.clone()).collect();
    let missing: Vec<&String> = acked.difference(&recorded).collect();
    assert!(missing.is_empty(), "acknowledged but gone: {missing:?}");
    eprintln!("{} volumes recorded after the restart", recorded.len());
    let root = state.path().join("volumes");
    assert_eq!(
        entries(&root.join("data")),
        recorded,
        "the provider holds exactly the recorded volumes"
    );
    assert!(entries(&root.join("snapshot")).is_empty());
    assert!(tokio::task::block_in_place(|| server.terminate()).success());
}
