//! What the receive tests through the manager share
//! (`tests/torture_dir_receive_manager.rs`): the streams a real provider
//! sends (full, then incremental), a manager whose journal and dir provider
//! live on one [`SimStorage`], and the checks every reopened image must
//! pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use volmgr::journal::JournalConfig;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::model::{DETAIL_GUID, Details, VolumeId, VolumeKind};
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{
    Durability, Presence, Provider, ProviderConfig, ProviderFactory, VolumeRef, VolumeSpec,
};
use volmgr::state::{State, VolumeStatus};
use volmgr::storage::sim::SimStorage;

pub const STATE: &str = "/state";
pub const ROOT: &str = "/p";
pub const PROVIDER: &str = "p";
/// The data volume every stream is received into.
pub const TARGET: &str = "t";

/// A tree's content: relative path to the file's bytes (`None`: a
/// directory).
pub type Tree = BTreeMap<PathBuf, Option<Vec<u8>>>;

/// The provider each open builds, kept so the check can take its inventory.
pub type Slot = Arc<Mutex<Option<Arc<DirProvider>>>>;

/// A stream a real provider sent, the guid of the snapshot it carries and
/// the tree that snapshot holds.
#[derive(Clone)]
pub struct Sent {
    pub bytes: Vec<u8>,
    pub guid: String,
    pub tree: Tree,
}

/// The full stream of a snapshot holding `f` and `d/g`, and the incremental
/// one on top of it (`f` changed, `d/g` removed, `e/h` added), sent by a real
/// provider on a temporary directory.
pub fn streams() -> (Sent, Sent) {
    let tmp = tempfile::tempdir().unwrap();
    let p = DirProvider::new(tmp.path().join("src")).unwrap();
    let none = Details::new();
    let vref = |id: &'static str, kind| VolumeRef {
        id: VolumeId::new(id).unwrap(),
        kind,
        parent: None,
        location: "",
        details: &none,
    };
    let spec = |id: &'static str, kind| VolumeSpec {
        id: VolumeId::new(id).unwrap(),
        op: uuid::Uuid::now_v7(),
        kind,
    };
    let data = p.create_volume(&spec("v", VolumeKind::Data)).unwrap();
    let data = Path::new(&data.location);
    fs::create_dir(data.join("d")).unwrap();
    fs::write(data.join("f"), b"first version of f\n").unwrap();
    fs::write(data.join("d/g"), b"g, in a directory\n").unwrap();
    let snap = |s: &'static str| -> String {
        p.create_snapshot(&vref("v", VolumeKind::Data), &spec(s, VolumeKind::Snapshot))
            .unwrap()
            .details[DETAIL_GUID]
            .clone()
    };
    let g1 = snap("s1");
    fs::write(data.join("f"), b"second version of f, longer\n").unwrap();
    fs::remove_file(data.join("d/g")).unwrap();
    fs::create_dir(data.join("e")).unwrap();
    fs::write(data.join("e/h"), b"h is new\n").unwrap();
    let g2 = snap("s2");
    let mut full = Vec::new();
    p.send_snapshot(&vref("s1", VolumeKind::Snapshot), None, &mut full)
        .unwrap();
    let mut incr = Vec::new();
    p.send_snapshot(
        &vref("s2", VolumeKind::Snapshot),
        Some(&vref("s1", VolumeKind::Snapshot)),
        &mut incr,
    )
    .unwrap();
    let tree = |entries: &[(&str, Option<&[u8]>)]| -> Tree {
        entries
            .iter()
            .map(|(p, b)| (PathBuf::from(p), b.map(<[u8]>::to_vec)))
            .collect()
    };
    (
        Sent {
            bytes: full,
            guid: g1,
            tree: tree(&[
                ("d", None),
                ("d/g", Some(b"g, in a directory\n")),
                ("f", Some(b"first version of f\n")),
            ]),
        },
        Sent {
            bytes: incr,
            guid: g2,
            tree: tree(&[
                ("d", None),
                ("e", None),
                ("e/h", Some(b"h is new\n")),
                ("f", Some(b"second version of f, longer\n")),
            ]),
        },
    )
}

pub fn factory(storage: &SimStorage, durability: Durability, slot: &Slot) -> ProviderFactory {
    let (storage, slot) = (storage.clone(), slot.clone());
    Arc::new(move |config: &ProviderConfig| {
        let root = config.get("root").cloned().unwrap_or_default();
        let p = Arc::new(DirProvider::simulated(
            PathBuf::from(root),
            storage.clone(),
            durability,
        )?);
        *slot.lock().unwrap() = Some(p.clone());
        Ok(p as Arc<dyn Provider>)
    })
}

/// Opens the manager on `storage` (journal and provider root), adding the
/// provider on a first open; a checkpoint every `checkpoint_every` records.
pub async fn open(
    storage: &SimStorage,
    durability: Durability,
    slot: &Slot,
    checkpoint_every: u64,
) -> Result<Manager, ManagerError> {
    let mut config = ManagerConfig {
        journal: JournalConfig {
            segment_size: 4096,
            max_batch_bytes: 2048,
            queue_depth: 64,
        },
        checkpoint_every,
        storage: Some(Arc::new(storage.clone())),
        ..ManagerConfig::default()
    };
    config
        .factories
        .insert("dir".into(), factory(storage, durability, slot));
    let m = Manager::open(Path::new(STATE), config).await?;
    if m.providers().is_empty() {
        m.add_provider(
            PROVIDER,
            "dir",
            ProviderConfig::from([("root".to_owned(), ROOT.to_owned())]),
        )
        .await?;
    }
    Ok(m)
}

/// What the tree at `location` holds in `image`.
pub fn tree_of(image: &SimStorage, location: &str) -> Tree {
    let root = Path::new(location);
    image
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(root) && p != root)
        .map(|p| {
            let content = image.read(&p);
            (
                p.strip_prefix(root).expect("under the root").to_owned(),
                content,
            )
        })
        .collect()
}

/// Every path under `<root>/<dir>`.
pub fn left_in(image: &SimStorage, dir: &str) -> Vec<PathBuf> {
    let top = Path::new(ROOT).join(dir);
    image
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(&top) && *p != top)
        .collect()
}

/// A tree for messages: its paths and contents.
pub fn shown(tree: &Tree) -> Vec<(String, Option<String>)> {
    tree.iter()
        .map(|(p, c)| {
            let text = c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
            (p.display().to_string(), text)
        })
        .collect()
}

/// Receives `stream` into the target; the received snapshot's id.
pub async fn receive(m: &Manager, stream: &Sent) -> Result<String, ManagerError> {
    m.receive_snapshot(TARGET, stream.bytes.as_slice())
        .await
        .map(|v| v.id)
}

/// The checks every reopened image shares: nothing pending, orphaned or not
/// live in the state; the provider's inventory all tagged, whole and equal
/// to the state; every received snapshot of the target holding exactly the
/// content of the sent snapshot whose guid it carries (`sent`); `.staging`
/// and the trash empty.
pub fn consistent(m: &Manager, image: &SimStorage, slot: &Slot, sent: &[&Sent]) -> Vec<String> {
    let mut problems = Vec::new();
    let state = m.state();
    if !state.pending.is_empty() {
        problems.push(format!("{} operations pending", state.pending.len()));
    }
    if !state.orphans.is_empty() {
        let orphans: Vec<&String> = state.orphans.keys().collect();
        problems.push(format!("orphans {orphans:?}"));
    }
    for v in state.volumes.values() {
        if v.status != VolumeStatus::Live {
            problems.push(format!("{} is {:?}", v.id, v.status));
        }
    }
    let in_state: BTreeSet<String> = state.volumes.keys().cloned().collect();
    let provider = slot.lock().unwrap().clone().expect("the factory ran");
    match provider.inventory() {
        Err(e) => problems.push(format!("inventory failed: {e}")),
        Ok(found) => {
            let mut whole = BTreeSet::new();
            for f in found {
                match (&f.tag, &f.presence) {
                    (None, _) => problems.push(format!("foreign item {}", f.name)),
                    (Some(_), Presence::Incomplete { reason }) => {
                        problems.push(format!("half-made item {}: {reason}", f.name));
                    }
                    (Some(tag), Presence::Complete) => {
                        whole.insert(tag.volume.clone());
                    }
                }
            }
            if whole != in_state {
                problems.push(format!(
                    "state and provider disagree: only in state {:?}, only on the provider {:?}",
                    in_state.difference(&whole).collect::<Vec<_>>(),
                    whole.difference(&in_state).collect::<Vec<_>>()
                ));
            }
        }
    }
    for v in received(&state) {
        let guid = v.details.get(DETAIL_GUID);
        match sent.iter().find(|s| Some(&s.guid) == guid) {
            None => problems.push(format!("received snapshot {} carries guid {guid:?}", v.id)),
            Some(s) => {
                let have = tree_of(image, &v.location);
                if have != s.tree {
                    problems.push(format!(
                        "received snapshot {} holds {:?}, not the sent snapshot's {:?}",
                        v.id,
                        shown(&have),
                        shown(&s.tree)
                    ));
                }
            }
        }
    }
    for dir in [".staging", ".trash"] {
        let left = left_in(image, dir);
        if !left.is_empty() {
            problems.push(format!("{dir} holds {left:?}"));
        }
    }
    problems
}

/// The snapshots received into the target.
pub fn received(state: &State) -> Vec<&volmgr::state::Volume> {
    state
        .volumes
        .values()
        .filter(|v| v.kind == VolumeKind::Snapshot && v.parent.as_deref() == Some(TARGET))
        .collect()
}

/// The target's content in `image`, per the state's location of it.
pub fn target_tree(state: &State, image: &SimStorage) -> Option<Tree> {
    state
        .volumes
        .get(TARGET)
        .map(|t| tree_of(image, &t.location))
}
