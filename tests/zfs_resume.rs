//! Resumable receives on real ZFS (run inside the QEMU guest by
//! `scripts/zfs-test`; on a host without ZFS each test prints a SKIP line,
//! and fails under `VOLMGR_REQUIRE_ZFS=1`).
//!
//! An interrupted receive keeps its partial state (`zfs recv -s`), the
//! journal records the resume token, the sender continues the stream from
//! the token (`zfs send -t`) and only the rest crosses; a receive killed with
//! its manager is reconciled as resumable and the agent finishes the pull
//! when it is ready; a partial receive that can no longer be resumed is
//! discarded, so it never blocks its target.

mod agent_support;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::TestAgent;
use common::{ZfsPool, noise, tree};
use volmgr::agent::ServeOptions;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::cmd::CommandCount;
use volmgr::provider::zfs::ZfsProvider;
use volmgr::provider::{Provider, ProviderConfig, ProviderError};
use volmgr::state::{
    Case, DETAIL_GUID, DETAIL_RESUME_GUID, DETAIL_RESUME_SNAPSHOT, DETAIL_RESUME_SOURCE,
    DETAIL_RESUME_TOKEN, Event, META_PULL_SNAPSHOT, META_PULL_SOURCE, Meta, VolumeKind,
};

const ENV_STATE: &str = "VOLMGR_RESUME_CHILD_STATE";
const ENV_CONFIG: &str = "VOLMGR_RESUME_CHILD_CONFIG";
const ENV_TARGET: &str = "VOLMGR_RESUME_CHILD_TARGET";
const ENV_SOURCE: &str = "VOLMGR_RESUME_CHILD_SOURCE";
const ENV_SNAPSHOT: &str = "VOLMGR_RESUME_CHILD_SNAPSHOT";

/// Size of the file the snapshots carry.
const DATA_LEN: usize = 24 << 20;

fn manager_config(provider: ProviderConfig) -> ManagerConfig {
    common::config::with_default_provider("zfs", provider)
}

fn zfs_out(args: &[&str]) -> String {
    let out = Command::new("zfs").args(args).output().unwrap();
    assert!(out.status.success(), "zfs {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn token_on_disk(pool: &ZfsPool, volume: &str) -> String {
    let name = format!("{}/data/{volume}", pool.dataset());
    zfs_out(&["get", "-H", "-o", "value", "receive_resume_token", &name])
}

/// Two pools standing in for two hosts (file vdevs).
fn two_pools(test: &str) -> Option<(ZfsPool, ZfsPool)> {
    let a = ZfsPool::for_test(&format!("{test}-a"), 384)?;
    let b = ZfsPool::for_test(&format!("{test}-b"), 384)?;
    Some((a, b))
}

/// A source manager with one snapshot of [`DATA_LEN`] bytes of noise.
async fn source(pool: &ZfsPool, dir: &Path) -> (Manager, volmgr::state::Volume) {
    let m = Manager::open(dir, manager_config(pool.provider_config()))
        .await
        .unwrap();
    let v = m.create_volume("default", None, Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("f"), noise(11, DATA_LEN)).unwrap();
    let s = m.create_snapshot(&v.id, Meta::new()).await.unwrap();
    (m, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_receive_is_journaled_resumable_and_the_resume_sends_only_the_rest() {
    let test = "interrupted_receive_is_journaled_resumable_and_the_resume_sends_only_the_rest";
    let Some((pa, pb)) = two_pools(test) else {
        return;
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, s) = source(&pa, sa.path()).await;
    let b = Manager::open(sb.path(), manager_config(pb.provider_config()))
        .await
        .unwrap();
    let dst = b.create_volume("default", None, Meta::new()).await.unwrap();
    let mut stream = Vec::new();
    let whole = a.send_snapshot(&s.id, &[], &mut stream).await.unwrap();
    assert!(!whole.resumed);

    // The transfer breaks after 40%: the partial receive is kept, resumable.
    let cut = stream.len() * 2 / 5;
    let err = b
        .receive_snapshot(&dst.id, &stream[..cut])
        .await
        .unwrap_err();
    let ManagerError::Provider {
        error: ProviderError::Suspended { partial, .. },
        ..
    } = &err
    else {
        panic!("a cut stream is a suspended receive, got {err}");
    };
    assert_eq!(partial.guid, s.details[DETAIL_GUID]);
    assert_eq!(partial.token, token_on_disk(&pb, &dst.id));
    let details = b.volume(&dst.id).unwrap().details;
    assert_eq!(details[DETAIL_RESUME_TOKEN], partial.token);
    assert_eq!(details[DETAIL_RESUME_GUID], s.details[DETAIL_GUID]);
    assert!(
        b.volumes().iter().all(|v| v.kind == VolumeKind::Data),
        "no snapshot was recorded"
    );

    // The token is in the journal: it survives a reopen, and reconciliation
    // leaves the (whole, mounted) target and its partial receive alone.
    b.close().await;
    let b = Manager::open(sb.path(), manager_config(pb.provider_config()))
        .await
        .unwrap();
    assert!(
        b.reconcile_report().resolutions.is_empty(),
        "{:?}",
        b.reconcile_report()
    );
    let token = b.volume(&dst.id).unwrap().details[DETAIL_RESUME_TOKEN].clone();
    assert_eq!(token, partial.token);

    // A token of another stream does not fit; junk is refused as input.
    let v2 = a.volume(s.parent.as_deref().unwrap()).unwrap();
    let s_other = a.create_snapshot(&v2.id, Meta::new()).await.unwrap();
    assert!(!a.resume_fits(&s_other.id, &token).await.unwrap());
    assert!(matches!(
        a.resume_fits(&s.id, "-x; rm -rf /").await,
        Err(ManagerError::InvalidInput(_))
    ));
    assert!(a.resume_fits(&s.id, &token).await.unwrap());

    // The sender continues from the token: only the rest crosses.
    let t = Instant::now();
    let mut rest = Vec::new();
    let resumed = a
        .send_snapshot_resuming(&s.id, &[], Some(&token), &mut rest)
        .await
        .unwrap();
    assert!(resumed.resumed);
    assert!(
        (rest.len() as u64) < whole.bytes - whole.bytes / 4,
        "a resumed stream carries the rest: {} of {} bytes",
        rest.len(),
        whole.bytes
    );
    let before = CommandCount::snapshot();
    let r = b.receive_snapshot(&dst.id, rest.as_slice()).await.unwrap();
    let took = t.elapsed();
    assert_eq!(
        CommandCount::snapshot().since(before).zfs,
        5,
        "a resumed receive runs the commands of a new one: `zfs recv` names its snapshot too, no rename"
    );
    assert_eq!(r.details[DETAIL_GUID], s.details[DETAIL_GUID]);
    assert_eq!(tree(Path::new(&r.location)), tree(Path::new(&s.location)));
    assert_eq!(tree(Path::new(&dst.location)), tree(Path::new(&s.location)));
    let details = b.volume(&dst.id).unwrap().details;
    assert!(!details.contains_key(DETAIL_RESUME_TOKEN), "{details:?}");
    assert_eq!(token_on_disk(&pb, &dst.id), "-");
    println!(
        "FIGURE zfs resumed receive: whole stream {} bytes, cut at {cut}, resumed stream {} bytes in {took:.2?}",
        whole.bytes,
        rest.len()
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_receive_that_cannot_resume_is_discarded_and_never_blocks_the_target() {
    let test = "a_partial_receive_that_cannot_resume_is_discarded_and_never_blocks_the_target";
    let Some((pa, pb)) = two_pools(test) else {
        return;
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, s) = source(&pa, sa.path()).await;
    let b = Manager::open(sb.path(), manager_config(pb.provider_config()))
        .await
        .unwrap();
    let dst = b.create_volume("default", None, Meta::new()).await.unwrap();
    let mut stream = Vec::new();
    a.send_snapshot(&s.id, &[], &mut stream).await.unwrap();
    let cut = &stream[..stream.len() / 2];

    // 1. The operator discards it.
    b.receive_snapshot(&dst.id, cut).await.unwrap_err();
    assert_ne!(token_on_disk(&pb, &dst.id), "-");
    b.abort_receive(&dst.id).await.unwrap();
    assert_eq!(token_on_disk(&pb, &dst.id), "-");
    assert!(
        !b.volume(&dst.id)
            .unwrap()
            .details
            .contains_key(DETAIL_RESUME_TOKEN)
    );
    b.abort_receive(&dst.id).await.unwrap(); // idempotent

    // 2. A whole stream replaces it.
    b.receive_snapshot(&dst.id, cut).await.unwrap_err();
    let r = b
        .receive_snapshot(&dst.id, stream.as_slice())
        .await
        .unwrap();
    assert_eq!(r.details[DETAIL_GUID], s.details[DETAIL_GUID]);
    assert_eq!(token_on_disk(&pb, &dst.id), "-");

    // 3. A resumed stream that no longer fits the target (it took a
    //    snapshot of its own meanwhile) is refused and the partial receive
    //    discarded: the target takes other streams again.
    let dst2 = b.create_volume("default", None, Meta::new()).await.unwrap();
    b.receive_snapshot(&dst2.id, cut).await.unwrap_err();
    let token = b.volume(&dst2.id).unwrap().details[DETAIL_RESUME_TOKEN].clone();
    b.create_snapshot(&dst2.id, Meta::new()).await.unwrap();
    let mut rest = Vec::new();
    let stats = a
        .send_snapshot_resuming(&s.id, &[], Some(&token), &mut rest)
        .await
        .unwrap();
    assert!(stats.resumed);
    let err = b
        .receive_snapshot(&dst2.id, rest.as_slice())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Provider {
                error: ProviderError::Stream(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(token_on_disk(&pb, &dst2.id), "-", "discarded");
    assert!(
        !b.volume(&dst2.id)
            .unwrap()
            .details
            .contains_key(DETAIL_RESUME_TOKEN)
    );
    // 4. Destroying a target with a partial receive works.
    let dst3 = b.create_volume("default", None, Meta::new()).await.unwrap();
    b.receive_snapshot(&dst3.id, cut).await.unwrap_err();
    b.destroy_volume(&dst3.id).await.unwrap();
    let p = ZfsProvider::from_config(&pb.provider_config()).unwrap();
    assert!(
        p.inventory().unwrap().iter().all(|f| f.partial.is_none()),
        "{:?}",
        p.inventory()
    );
    a.close().await;
    b.close().await;
}

// --- a receive killed with its manager ------------------------------------------

/// Child of the kill test: opens the manager and receives its stdin into the
/// target as a pull from the source would (same meta), until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of killed_pull_is_reconciled_resumable_and_the_agent_finishes_it_when_ready"]
async fn resume_child_receiver() {
    let state = std::env::var(ENV_STATE).expect("run only as the kill test's child");
    let config: ProviderConfig = serde_json::from_str(&std::env::var(ENV_CONFIG).unwrap()).unwrap();
    let target = std::env::var(ENV_TARGET).unwrap();
    let meta = Meta::from([
        (
            META_PULL_SOURCE.to_owned(),
            std::env::var(ENV_SOURCE).unwrap(),
        ),
        (
            META_PULL_SNAPSHOT.to_owned(),
            std::env::var(ENV_SNAPSHOT).unwrap(),
        ),
    ]);
    let m = Manager::open(&state, manager_config(config)).await.unwrap();
    println!("READY");
    let _ = std::io::stdout().flush();
    let r = m
        .receive_snapshot_with(&target, meta, tokio::io::stdin())
        .await;
    println!("RECEIVED {r:?}");
}

/// Processes of process group `pgid` named `comm`.
fn group_processes(pgid: i32, comm: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        let pgrp = tail.split_whitespace().nth(2).and_then(|p| p.parse().ok());
        if name == comm && pgrp == Some(pgid) {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, tail)| tail.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pull_is_reconciled_resumable_and_the_agent_finishes_it_when_ready() {
    let test = "killed_pull_is_reconciled_resumable_and_the_agent_finishes_it_when_ready";
    let Some((pa, pb)) = two_pools(test) else {
        return;
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, s) = source(&pa, sa.path()).await;
    let source_agent = TestAgent::serve(a, ServeOptions::default()).await;
    let whole = source_agent.client.send(&s.id, &[]).await.unwrap();
    let b = Manager::open(sb.path(), manager_config(pb.provider_config()))
        .await
        .unwrap();
    let dst = b.create_volume("default", None, Meta::new()).await.unwrap();
    b.close().await;

    // The receiving manager runs in a child; it is SIGKILLed (with its
    // `zfs recv`) once ZFS has read part of the stream.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "resume_child_receiver",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_STATE, sb.path())
        .env(
            ENV_CONFIG,
            serde_json::to_string(&pb.provider_config()).unwrap(),
        )
        .env(ENV_TARGET, &dst.id)
        .env(ENV_SOURCE, &source_agent.url)
        .env(ENV_SNAPSHOT, &s.id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id().cast_signed();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The test harness prints its own lines first.
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.ends_with("READY"));
    assert!(ready, "the child opened the manager");
    // Once 2/3 of the stream is written, `zfs recv` has read all of it
    // but what the pipes and the manager's channel hold (under 5 MiB).
    let mut stdin = child.stdin.take().unwrap();
    let first = whole.len() * 2 / 3;
    assert!(first > 12 << 20);
    stdin.write_all(&whole[..first]).unwrap();
    let recv = group_processes(pgid, "zfs");
    assert_eq!(recv.len(), 1, "one zfs recv runs: {recv:?}");
    // SAFETY: signalling our own child's process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
    drop(stdin);
    // ZFS saves the partial state as the killed `zfs recv` exits; it is not
    // our child, so its exit is watched in /proc (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !exited(recv[0]) {
        assert!(
            Instant::now() < deadline,
            "the killed zfs recv did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(
        token_on_disk(&pb, &dst.id),
        "-",
        "the killed receive left partial state"
    );

    // Reopen: reconciliation records the interrupted receive as resumable.
    let b = Manager::open(sb.path(), manager_config(pb.provider_config()))
        .await
        .unwrap();
    let report = b.reconcile_report();
    assert!(
        report
            .resolutions
            .iter()
            .any(|(case, _, _)| *case == Case::ReceiveSuspended),
        "{report:?}"
    );
    let details = b.volume(&dst.id).unwrap().details;
    assert_eq!(details[DETAIL_RESUME_TOKEN], token_on_disk(&pb, &dst.id));
    assert_eq!(details[DETAIL_RESUME_SOURCE], source_agent.url);
    assert_eq!(details[DETAIL_RESUME_SNAPSHOT], s.id);
    assert!(
        Path::new(&dst.location).is_dir(),
        "the target is mounted again"
    );

    // The agent, once ready, finishes the pull from where it stopped.
    let mut events = b.subscribe();
    // The source is a configured peer: the agent may pull from it and
    // present the shared token.
    let options = ServeOptions {
        peers: agent_support::peers(&[("source", &source_agent.url)]),
        ..ServeOptions::default()
    };
    let agent = TestAgent::serve(b, options).await;
    let received = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            match events.recv().await {
                Ok(Event::Created(v)) if v.parent.as_deref() == Some(dst.id.as_str()) => {
                    break v;
                }
                Ok(_) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("the resumed pull finishes");
    assert_eq!(received.details[DETAIL_GUID], s.details[DETAIL_GUID]);
    assert_eq!(received.meta[META_PULL_SOURCE], source_agent.url);
    assert_eq!(
        tree(Path::new(&received.location)),
        tree(Path::new(&s.location))
    );
    let info = agent.client.get(&dst.id).await.unwrap();
    assert!(
        !info.details.contains_key(DETAIL_RESUME_TOKEN),
        "{:?}",
        info.details
    );
    assert_eq!(token_on_disk(&pb, &dst.id), "-");
    agent.shutdown().await;
    source_agent.shutdown().await;
}
