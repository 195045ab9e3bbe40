//! What the receive tests through the manager share
//! (`tests/torture_dir_receive_manager.rs`): the streams a real provider
//! sends (full, then incremental) and the checks every reopened image
//! must pass on top of `tests/dir_sweep_support`'s (which opens the manager
//! whose journal and dir provider live on one [`SimStorage`]).

use std::fs;
use std::path::{Path, PathBuf};

use volmgr::manager::{Manager, ManagerError};
use volmgr::model::{DETAIL_GUID, Details, VolumeId, VolumeKind};
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{Provider, SendOptions, VolumeRef, VolumeSpec};
use volmgr::state::State;
use volmgr::storage::sim::SimStorage;

use crate::dir_sweep_support::{Slot, Tree, agrees, left_in, shown, tree_of};

/// The data volume every stream is received into.
pub const TARGET: &str = "t";

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
    p.send_snapshot(
        &vref("s1", VolumeKind::Snapshot),
        None,
        &SendOptions::default(),
        &mut full,
    )
    .unwrap();
    let mut incr = Vec::new();
    p.send_snapshot(
        &vref("s2", VolumeKind::Snapshot),
        Some(&vref("s1", VolumeKind::Snapshot)),
        &SendOptions::default(),
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

/// Receives `stream` into the target; the received snapshot's id.
pub async fn receive(m: &Manager, stream: &Sent) -> Result<String, ManagerError> {
    m.receive_snapshot(TARGET, stream.bytes.as_slice())
        .await
        .map(|v| v.id)
}

/// Receives `stream` into the target again, after destroying the target's
/// received snapshots other than `base` (the stream's base, `None` for a
/// full stream), newest first: a target takes a stream only on top of its
/// newest snapshot, and holds the stream's own snapshot already if an
/// earlier receive of it rolled forward; an operator makes room the same
/// way. The received snapshot's id.
pub async fn receive_again(
    m: &Manager,
    base: Option<&Sent>,
    stream: &Sent,
) -> Result<String, ManagerError> {
    let state = m.state();
    let mut newer: Vec<&volmgr::state::Volume> = received(&state)
        .into_iter()
        .filter(|v| base.is_none_or(|b| v.details.get(DETAIL_GUID) != Some(&b.guid)))
        .collect();
    newer.sort_by_key(|v| std::cmp::Reverse((v.created_at_ms, v.op)));
    for v in newer {
        m.destroy_volume(&v.id).await?;
    }
    receive(m, stream).await
}

/// The checks every reopened image shares: nothing pending, orphaned or not
/// live in the state; the provider's inventory all tagged, whole and equal
/// to the state; every received snapshot of the target holding exactly the
/// content of the sent snapshot whose guid it carries (`sent`); `.staging`
/// and the trash empty.
pub fn consistent(m: &Manager, image: &SimStorage, slot: &Slot, sent: &[&Sent]) -> Vec<String> {
    let mut problems = agrees(m, slot);
    let state = m.state();
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
