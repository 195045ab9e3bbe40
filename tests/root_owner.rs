//! A provider root belongs to one agent.
//!
//! Story: the directory provider's root marker (`<root>/.volmgr/provider`)
//! said only "volmgr dir provider root (format 1)", naming no owner, so a
//! root another volmgr agent (another state directory) already used could be
//! added as a provider, by `POST /storage/providers` or in the startup
//! configuration. Both agents then acted on one tree: each took the other's
//! volumes for orphans (reported, then destroyable by an explicit command),
//! and the start-up clean-ups of one (staging areas, trash sweeps, the
//! removal of an interrupted create's directory, the undo of receives) could
//! remove what the other's operations in flight were making.
//!
//! Property: a state directory has a durable identity (`IDENTITY`), a
//! provider built by an agent's manager writes it into its root marker, and
//! a root whose marker names another agent is refused (400 `invalid_config`
//! over HTTP; unavailable at open) before anything under it is touched. A
//! format-1 marker is adopted by the first agent that opens it; the same
//! agent reopens its roots; a root changes hands only when the operator
//! removes its marker. (btrfs: `tests/btrfs_provider.rs`.)

mod common;
#[path = "agent_support/process.rs"]
mod process;

use std::collections::BTreeMap;
use std::path::Path;

use common::entry_image;
use process::{ServeProcess, serve_until_exit};
use uuid::Uuid;
use volmgr::journal::{IDENTITY_FILE, IDENTITY_LEN, Journal, JournalConfig, decode_identity};
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{AgentId, ProviderConfig, ProviderError};
use volmgr::state::{Action, Done, Meta, OpResult, ProviderRecord, Record};

const FORMAT_1: &[u8] = b"volmgr dir provider root (format 1)\n";

fn dir_config(root: &Path) -> ProviderConfig {
    ProviderConfig::from([("root".to_owned(), root.to_str().unwrap().to_owned())])
}

fn marker(root: &Path) -> Vec<u8> {
    std::fs::read(root.join(".volmgr/provider")).expect("the root marker")
}

fn format_2(owner: AgentId) -> Vec<u8> {
    format!("volmgr dir provider root (format 2)\nowner {owner}\n").into_bytes()
}

/// Agent A: provider `p` on `root`, data volume `v` holding `precious`,
/// snapshot `s` of it.
async fn first_agent(state: &Path, root: &Path) -> Manager {
    let a = Manager::open(state, ManagerConfig::default())
        .await
        .unwrap();
    a.add_provider("p", "dir", dir_config(root)).await.unwrap();
    let v = a.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("precious"), b"A's data").unwrap();
    a.create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .unwrap();
    a
}

/// What agent A shows: its volumes and the content of `v`.
fn first_agent_view(a: &Manager) -> (Vec<String>, Vec<u8>) {
    let ids = a.volumes().into_iter().map(|v| v.id).collect();
    let v = a.volume("v").unwrap();
    (
        ids,
        std::fs::read(Path::new(&v.location).join("precious")).unwrap(),
    )
}

/// Asserts `err` is the refusal of `root`, owned by `owner`, and says so.
#[track_caller]
fn assert_foreign_root(err: &ManagerError, root: &Path, owner: AgentId) {
    match err {
        ManagerError::Provider {
            error: ProviderError::ForeignRoot { root: r, owner: o },
            ..
        } => {
            assert_eq!(
                (r.as_str(), o.as_str()),
                (root.to_str().unwrap(), &*owner.to_string())
            );
        }
        other => panic!("expected ForeignRoot of {}: {other:?}", root.display()),
    }
    let text = err.to_string();
    for part in [
        root.to_str().unwrap(),
        "belongs to another volmgr agent",
        &owner.to_string(),
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

/// The records of an agent that registered provider `p` on `root` (op 1),
/// as the journal of an agent from before owners holds them.
fn provider_records(root: &Path) -> Vec<Record> {
    let op = Uuid::from_u128(1);
    vec![
        Record::Intent {
            op,
            at_ms: 1_700_000_000_000,
            action: Action::AddProvider(ProviderRecord {
                id: "p".into(),
                kind: "dir".into(),
                config: dir_config(root),
            }),
        },
        Record::Outcome {
            op,
            at_ms: 1_700_000_000_000,
            result: OpResult::Done(Done::default()),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_add_a_dir_root_another_agent_owns() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    let a = first_agent(&tmp.path().join("a"), &root).await;
    assert_eq!(marker(&root), format_2(a.agent_id()), "A's marker names A");
    let image = entry_image(&root);
    let view = first_agent_view(&a);

    let b = Manager::open(tmp.path().join("b"), ManagerConfig::default())
        .await
        .unwrap();
    assert_ne!(
        a.agent_id(),
        b.agent_id(),
        "two state directories, two agents"
    );
    let err = b
        .add_provider("p", "dir", dir_config(&root))
        .await
        .expect_err("a root A owns");
    assert_foreign_root(&err, &root, a.agent_id());
    assert!(b.providers().is_empty(), "B has no provider on the root");
    assert_eq!(entry_image(&root), image, "nothing under the root changed");

    assert_eq!(first_agent_view(&a), view, "A's volumes and data untouched");
    a.create_volume("p", Some("w"), Meta::new())
        .await
        .expect("A still serves its root");
    b.close().await;
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_configured_with_a_dir_root_another_agent_owns_does_not_open_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    let a = first_agent(&tmp.path().join("a"), &root).await;
    let image = entry_image(&root);
    let view = first_agent_view(&a);

    let config = dir_config(&root);
    let b = Manager::open(
        tmp.path().join("b"),
        ManagerConfig {
            default_provider: Some(Box::new(move || Ok(("dir".into(), config)))),
            ..ManagerConfig::default()
        },
    )
    .await
    .expect_err("B's default provider is A's root");
    assert_foreign_root(&b, &root, a.agent_id());
    assert_eq!(entry_image(&root), image, "nothing under the root changed");
    assert_eq!(first_agent_view(&a), view, "A's volumes and data untouched");
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_root_another_agent_adopted_is_unavailable_at_open_and_untouched() {
    // Before owners, two agents could share a format-1 root. After the
    // change, the first to open adopts it; the other, whose journal holds
    // the provider too, must find it unavailable and touch nothing: not
    // A's staging area or trash (its operations in flight), not A's
    // volumes (no orphans), not its own pending create on it.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    drop(DirProvider::new(root.clone()).unwrap());
    assert_eq!(marker(&root), FORMAT_1, "an old root");
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (journal, _) = Journal::<Record>::open(&state_b, JournalConfig::default()).unwrap();
    let mut records = provider_records(&root);
    records.push(Record::Intent {
        op: Uuid::from_u128(2),
        at_ms: 1_700_000_000_000,
        action: Action::CreateVolume {
            provider: "p".into(),
            volume: "mine".into(),
            meta: Meta::new(),
        },
    });
    journal.append_all(&records).await.unwrap();
    journal.close().await;

    let a = Manager::open(&state_a, ManagerConfig::default())
        .await
        .unwrap();
    a.add_provider("p", "dir", dir_config(&root)).await.unwrap();
    assert_eq!(
        marker(&root),
        format_2(a.agent_id()),
        "the format-1 root adopted by A"
    );
    let v = a.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    std::fs::write(Path::new(&v.location).join("precious"), b"A's data").unwrap();
    // What A's operations in flight would have made (B's start would sweep
    // both if it acted on the root), and an empty directory where B's
    // interrupted create would be (which B's start would remove).
    std::fs::create_dir_all(
        root.join(".staging")
            .join(Uuid::now_v7().to_string())
            .join("f"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join(".trash/in-flight/f")).unwrap();
    std::fs::create_dir_all(root.join("data/mine")).unwrap();
    let image = entry_image(&root);
    let view = first_agent_view(&a);

    let b = Manager::open(&state_b, ManagerConfig::default())
        .await
        .unwrap();
    let report = b.reconcile_report();
    let (_, reason) = report
        .unavailable
        .iter()
        .find(|(p, _)| p == "p")
        .unwrap_or_else(|| panic!("p is unavailable to B: {report:?}"));
    for part in [
        root.to_str().unwrap(),
        "belongs to another volmgr agent",
        &a.agent_id().to_string(),
    ] {
        assert!(reason.contains(part), "{part:?} missing from: {reason}");
    }
    assert!(
        report.resolutions.is_empty(),
        "nothing resolved on p: {report:?}"
    );
    assert!(b.orphans().is_empty(), "A's volumes are no orphans of B");
    assert_eq!(b.state().pending.len(), 1, "B's create stays pending");
    let refused = b.create_volume("p", Some("x"), Meta::new()).await;
    assert!(
        matches!(refused, Err(ManagerError::ProviderUnavailable { .. })),
        "{refused:?}"
    );
    assert_eq!(entry_image(&root), image, "nothing under the root changed");
    assert_eq!(first_agent_view(&a), view, "A's volumes and data untouched");
    b.close().await;
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_state_dir_gets_an_identity_and_keeps_its_format_one_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, root) = (tmp.path().join("state"), tmp.path().join("volumes"));
    // An agent from before identities: a format-1 root, a journal holding
    // its provider, no IDENTITY file.
    let old = DirProvider::new(root.clone()).unwrap();
    drop(old);
    let (journal, _) = Journal::<Record>::open(&state, JournalConfig::default()).unwrap();
    journal.append_all(&provider_records(&root)).await.unwrap();
    journal.close().await;
    std::fs::remove_file(state.join(IDENTITY_FILE)).unwrap();

    let m = Manager::open(&state, ManagerConfig::default())
        .await
        .unwrap();
    assert!(m.reconcile_report().unavailable.is_empty());
    let identity = std::fs::read(state.join(IDENTITY_FILE)).expect("made at open");
    assert_eq!(identity.len(), IDENTITY_LEN);
    assert_eq!(decode_identity(&identity), Ok(m.agent_id().as_uuid()));
    assert_eq!(identity, format!("{}\n", m.agent_id()).into_bytes());
    assert_eq!(marker(&root), format_2(m.agent_id()), "adopted");
    m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    let agent = m.agent_id();
    m.close().await;

    // The same agent reopens: same identity, its root still its own.
    let m = Manager::open(&state, ManagerConfig::default())
        .await
        .unwrap();
    assert_eq!(m.agent_id(), agent);
    assert!(m.reconcile_report().unavailable.is_empty());
    assert_eq!(
        m.volumes().into_iter().map(|v| v.id).collect::<Vec<_>>(),
        ["v"]
    );
    m.create_volume("p", Some("w"), Meta::new()).await.unwrap();
    m.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_is_handed_over_only_by_removing_its_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = first_agent(&state_a, &root).await;
    let agent_a = a.agent_id();
    a.close().await;
    // README, "Handing a provider root to another agent": both stopped,
    // the marker removed.
    std::fs::remove_file(root.join(".volmgr/provider")).unwrap();

    let b = Manager::open(&state_b, ManagerConfig::default())
        .await
        .unwrap();
    b.add_provider("p", "dir", dir_config(&root)).await.unwrap();
    assert_eq!(marker(&root), format_2(b.agent_id()), "B owns the root");
    let agent_b = b.agent_id();
    b.close().await;
    let b = Manager::open(&state_b, ManagerConfig::default())
        .await
        .unwrap();
    let orphans: Vec<String> = b.orphans().into_iter().map(|o| o.volume).collect();
    assert_eq!(
        orphans,
        ["s", "v"],
        "A's volumes are B's to adopt or destroy"
    );
    b.close().await;

    let a = Manager::open(&state_a, ManagerConfig::default())
        .await
        .unwrap();
    let unavailable = a.reconcile_report().unavailable;
    assert!(
        unavailable
            .iter()
            .any(|(p, why)| p == "p" && why.contains(&agent_b.to_string())),
        "A's former root is unavailable to A: {unavailable:?}"
    );
    assert_eq!(a.agent_id(), agent_a);
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_identity_file_is_refused_naming_the_file_and_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    Manager::open(&state, ManagerConfig::default())
        .await
        .unwrap()
        .close()
        .await;
    let path = state.join(IDENTITY_FILE);
    let good = std::fs::read(&path).unwrap();
    let cases: [(&[u8], &str); 3] = [
        (&good[..20], "20 bytes, not 37"),
        (b"not an identity at all, 37 bytes....\n", "not a UUID"),
        (b"", "0 bytes"),
    ];
    for (bytes, why) in cases {
        std::fs::write(&path, bytes).unwrap();
        let err = Manager::open(&state, ManagerConfig::default())
            .await
            .expect_err("a damaged identity");
        let text = err.to_string();
        for part in [path.to_str().unwrap(), "is damaged", why] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "never replaced");
    }
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = Manager::open(&state, ManagerConfig::default())
        .await
        .expect_err("a directory in its place");
    assert!(
        err.to_string().contains("is damaged") && err.to_string().contains("a directory"),
        "{err}"
    );
}

/// Real `volmgr serve` processes: B, asked over HTTP to add A's root, gets
/// 400 `invalid_config` whether the marker names A (another agent's root)
/// or, the instant A would read it, no one (A's lock: in use); C, started
/// on A's root, does not open; nothing under the root changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_process_is_refused_a_dir_root_the_first_one_owns() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    let root_s = root.to_str().unwrap();
    let provider = format!("root={root_s}");
    let a = ServeProcess::start(
        &tmp.path().join("a"),
        &["--provider-kind", "dir", "--provider-config", &provider],
    );
    let client = volmgr::agent::Client::new(&a.url, Some(a.token.clone())).unwrap();
    let created = reqwest::Client::new()
        .post(format!("{}/storage/providers/default/volumes", a.url))
        .bearer_auth(&a.token)
        .body(r#"{"id": "v"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    std::fs::write(root.join("data/v/precious"), b"A's data").unwrap();
    let image = entry_image(&root);

    // B, serving its own state directory, is asked to add A's root.
    let b = ServeProcess::start(&tmp.path().join("b"), &[]);
    let body = serde_json::json!({"id": "stolen", "kind": "dir", "config": {"root": root_s}});
    let answer = reqwest::Client::new()
        .post(format!("{}/storage/providers", b.url))
        .bearer_auth(&b.token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let json: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        (status, json["volmgr_code"].as_str()),
        (400, Some("invalid_config")),
        "{json}"
    );
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains(root_s) && message.contains("belongs to another volmgr agent"),
        "{message}"
    );
    assert_eq!(entry_image(&root), image, "nothing under the root changed");

    // The instant A would have read "no owner" (its marker put back to
    // format 1 under it): B is refused by A's lock, the same answer.
    let a_marker = marker(&root);
    std::fs::write(root.join(".volmgr/provider"), FORMAT_1).unwrap();
    let unowned = entry_image(&root);
    let answer = reqwest::Client::new()
        .post(format!("{}/storage/providers", b.url))
        .bearer_auth(&b.token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let json: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        (status, json["volmgr_code"].as_str()),
        (400, Some("invalid_config")),
        "{json}"
    );
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains(root_s) && message.contains("in use by another volmgr agent"),
        "{message}"
    );
    assert_eq!(
        entry_image(&root),
        unowned,
        "B wrote no marker, changed nothing"
    );
    std::fs::write(root.join(".volmgr/provider"), a_marker).unwrap();
    let image = entry_image(&root);

    // C is started with A's root as its default provider: it does not open.
    let (status, messages) = serve_until_exit(
        &tmp.path().join("c"),
        &["--provider-kind", "dir", "--provider-config", &provider],
    );
    assert!(!status.success(), "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains(root_s) && m.contains("belongs to another volmgr agent")),
        "C says why: {messages:?}"
    );
    assert_eq!(entry_image(&root), image, "nothing under the root changed");

    let listed: BTreeMap<String, String> = client
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.id, v.provider))
        .collect();
    assert_eq!(
        listed,
        BTreeMap::from([("v".to_owned(), "default".to_owned())]),
        "A's volumes as they were"
    );
    assert_eq!(
        std::fs::read(root.join("data/v/precious")).unwrap(),
        b"A's data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_dir_root_marker_is_refused_naming_the_file_and_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("volumes");
    drop(DirProvider::new(root.clone()).unwrap());
    let path = root.join(".volmgr/provider");
    std::fs::write(
        &path,
        b"volmgr dir provider root (format 2)\nowner nobody\n",
    )
    .unwrap();
    let image = entry_image(&root);
    let m = Manager::open(tmp.path().join("state"), ManagerConfig::default())
        .await
        .unwrap();
    let err = m
        .add_provider("p", "dir", dir_config(&root))
        .await
        .expect_err("a damaged marker");
    assert!(
        matches!(
            &err,
            ManagerError::Provider {
                error: ProviderError::InvalidConfig(_),
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    for part in [path.to_str().unwrap(), "is damaged", "\"nobody\""] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert_eq!(entry_image(&root), image, "nothing under the root changed");
    m.close().await;
}

/// Asserts `err` refuses `root` as in use by another agent (its lock held),
/// and says so.
#[track_caller]
fn assert_root_in_use(err: &ProviderError, root: &Path) {
    let lock = root.join(".volmgr/lock");
    match err {
        ProviderError::RootInUse { root: r, lock: l } => assert_eq!(
            (r.as_str(), l.as_str()),
            (root.to_str().unwrap(), lock.to_str().unwrap())
        ),
        other => panic!("expected RootInUse of {}: {other:?}", root.display()),
    }
    let text = err.to_string();
    for part in [
        root.to_str().unwrap(),
        "in use by another volmgr agent",
        lock.to_str().unwrap(),
        "nothing under it was touched",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

/// Story: the claim of a root was read-check-write. Two agents starting
/// together on one unowned root (format 1, or new) could both read "no
/// owner", both write their marker, the last rename winning, and both run
/// on the root, each taking the other's volumes for orphans.
///
/// Property: an agent's provider holds the root's lock (`.volmgr/lock`)
/// from before it reads the marker until it is dropped, so a second agent
/// is refused while the first runs, whatever the marker says at that
/// instant, and changes nothing. The instant between the first agent's
/// read of "no owner" and its write is made deterministic here by putting
/// the format-1 marker back under the running first agent.
#[test]
fn a_second_agent_cannot_claim_an_unowned_dir_root_the_first_one_is_claiming() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    drop(DirProvider::new(root.clone()).unwrap());
    let config = dir_config(&root);
    let (agent_a, agent_b) = (AgentId::generate(), AgentId::generate());
    let a = DirProvider::for_owner(&config, &agent_a).unwrap();
    assert_eq!(marker(&root), format_2(agent_a), "A adopted the root");
    // A has read "no owner" and not written yet: what B would read.
    std::fs::write(root.join(".volmgr/provider"), FORMAT_1).unwrap();
    let image = entry_image(&root);

    let err = DirProvider::for_owner(&config, &agent_b).expect_err("A runs on the root");
    assert_root_in_use(&err, &root);
    assert_eq!(marker(&root), FORMAT_1, "B wrote no marker");
    assert_eq!(entry_image(&root), image, "nothing under the root changed");

    // A stops: its lock goes with it, and the unowned root is B's to adopt.
    drop(a);
    let b = DirProvider::for_owner(&config, &agent_b).expect("A stopped");
    assert_eq!(marker(&root), format_2(agent_b), "B adopted the root");
    drop(b);
    // The ownership itself is unchanged by the lock: A's former root is
    // now B's (handed over only by removing the marker).
    let err = DirProvider::for_owner(&config, &agent_a).expect_err("B's root");
    assert!(
        matches!(&err, ProviderError::ForeignRoot { owner, .. } if *owner == agent_b.to_string()),
        "{err:?}"
    );
}

/// Two agents starting together on one new, empty root: exactly one gets
/// it, whichever runs first; the other is refused (the root is in use, or
/// already owned) and the marker names the winner.
#[test]
fn of_two_agents_starting_together_on_a_new_dir_root_exactly_one_wins() {
    for round in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("new");
        let config = dir_config(&root);
        let barrier = std::sync::Barrier::new(2);
        let agents = [AgentId::generate(), AgentId::generate()];
        let results: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = agents
                .iter()
                .map(|id| {
                    let (barrier, config) = (&barrier, &config);
                    s.spawn(move || {
                        barrier.wait();
                        DirProvider::for_owner(config, id)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let winners: Vec<AgentId> = agents
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert_eq!(marker(&root), format_2(winners[0]), "round {round}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        ProviderError::RootInUse { .. } | ProviderError::ForeignRoot { .. }
                    ),
                    "round {round}: {e:?}"
                );
            }
        }
    }
}

/// The lock file is the provider's own, out of every tenant's reach: under
/// `.volmgr`, in no volume or snapshot directory, readable and writable by
/// root only (no local user can open it, so none can hold its lock and keep
/// the agent off its root), and never reached through a symlink: one
/// planted in its place is refused and its target left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dir_root_lock_is_out_of_every_volume_and_never_followed() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    let a = first_agent(&tmp.path().join("a"), &root).await;
    let lock = root.join(".volmgr/lock");
    let md = std::fs::symlink_metadata(&lock).expect("the lock file");
    assert!(md.is_file());
    assert_eq!(md.mode() & 0o7777, 0o600, "root's only");
    let lock = std::fs::canonicalize(&lock).unwrap();
    for v in a.volumes() {
        let location = std::fs::canonicalize(&v.location).unwrap();
        assert!(
            !lock.starts_with(&location),
            "{} lies in volume {}",
            lock.display(),
            v.id
        );
    }
    a.close().await;

    let elsewhere = tmp.path().join("elsewhere");
    std::fs::write(&elsewhere, b"not volmgr's").unwrap();
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &lock).unwrap();
    let config = dir_config(&root);
    let a = Manager::open(tmp.path().join("a"), ManagerConfig::default())
        .await
        .unwrap();
    let unavailable = a.reconcile_report().unavailable;
    assert!(
        unavailable
            .iter()
            .any(|(p, why)| p == "p" && why.contains(lock.to_str().unwrap())),
        "{unavailable:?}"
    );
    a.close().await;
    assert!(DirProvider::for_owner(&config, &AgentId::generate()).is_err());
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"not volmgr's");
    assert_eq!(
        std::fs::symlink_metadata(&elsewhere).unwrap().mode() & 0o7777,
        0o644
    );
}
