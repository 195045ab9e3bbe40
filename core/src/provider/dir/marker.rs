//! Ownership markers and snapshot mode manifests of the directory provider.
//!
//! A marker is a small JSON document, written atomically (temp file,
//! rename; fsyncs as the provider's durability says) through the
//! [`Layout`] seam, as manifests are written and read. A mode manifest lists a snapshot's mode
//! exceptions (see [`super::tree::Policy::Snapshot`]) in a checksummed binary
//! form: magic `VMGRMOD1`, `u64` count, then per entry `u16` path length, path
//! bytes and `u32` mode, then the CRC-32 of everything before it; big-endian.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::tree::{Modes, Policy};
use crate::model::{OpId, VolumeKind};
use crate::provider::ProviderError;
use crate::provider::stream::{HashReader, HashWriter};

/// Version of the marker document.
pub(crate) const MARKER_FORMAT: u32 = 1;
/// Markers are small; anything bigger is not one of ours.
const MAX_MARKER_BYTES: u64 = 64 * 1024;
const MANIFEST_MAGIC: &[u8; 8] = b"VMGRMOD1";
const MAX_PATH: usize = 4096;

/// Where an item stands. Only `Complete` (with its directory present) counts
/// as a whole volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MarkerState {
    Complete,
    /// An empty data volume being created.
    Creating,
    /// Content being copied from `parent` (a snapshot, or a fork).
    Copying,
    /// Content being built from a stream.
    Receiving,
    /// A received snapshot is whole; the target's content is being exchanged
    /// with the staged content, whose directory had this device and inode.
    Swapping {
        dev: u64,
        ino: u64,
    },
}

impl MarkerState {
    pub(crate) fn describe(&self, parent: Option<&str>) -> String {
        let parent = parent.unwrap_or("?");
        match self {
            MarkerState::Complete => "complete".into(),
            MarkerState::Creating => "create interrupted".into(),
            MarkerState::Copying => format!("copy from {parent} interrupted"),
            MarkerState::Receiving => format!("receive into {parent} interrupted"),
            MarkerState::Swapping { .. } => {
                format!("receive interrupted while replacing the content of {parent}")
            }
        }
    }
}

/// The ownership tag of one volume or snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub format: u32,
    pub volume: String,
    pub op: OpId,
    pub kind: VolumeKind,
    /// Source of a snapshot, snapshot of a fork, target of a receive.
    pub parent: Option<String>,
    /// Snapshot identity (32 lowercase hex digits); `None` for data volumes.
    pub guid: Option<String>,
    pub state: MarkerState,
}

impl Marker {
    /// Whether the item is whole once its directory exists: `complete`, or
    /// a data volume's `creating` (an empty directory is the whole of a new
    /// volume; a batched create never rewrites its marker, see the parent
    /// module's "Durability").
    pub(crate) fn is_whole(&self) -> bool {
        match self.state {
            MarkerState::Complete => true,
            MarkerState::Creating => self.kind == VolumeKind::Data,
            _ => false,
        }
    }

    pub(crate) fn with_state(&self, state: MarkerState) -> Marker {
        Marker {
            state,
            ..self.clone()
        }
    }
}

/// Reads the marker at `path`: `None` if absent; an error if it is not a
/// well-formed marker for (`kind`, `id`).
pub(crate) fn read(
    layout: &dyn Layout,
    path: &Path,
    kind: VolumeKind,
    id: &str,
) -> Result<Option<Marker>, ProviderError> {
    let Some(text) = layout
        .read_file(path, MAX_MARKER_BYTES)
        .map_err(|e| read_error(path, e))?
    else {
        return Ok(None);
    };
    parse(path, &text, kind, id).map(Some)
}

/// A marker's id with the marker, or why it is unreadable.
pub(crate) type MarkerRead = (String, Result<Marker, ProviderError>);

/// The error for a marker file that could not be read.
pub(crate) fn read_error(path: &Path, e: io::Error) -> ProviderError {
    ProviderError::io(format!("reading marker {}", path.display()), e)
}

/// Reads every marker of `dir` (the directory of one kind's markers)
/// through one handle of it: each valid id's name with its marker (or why
/// it is unreadable). Temp files and names that are no id are left out.
/// What the inventory uses: a handful of system calls a marker, no path
/// resolved twice.
pub(crate) fn read_all(
    layout: &dyn Layout,
    dir: &Path,
    kind: VolumeKind,
) -> Result<Vec<MarkerRead>, ProviderError> {
    let is_id = |name: &[u8]| std::str::from_utf8(name).is_ok_and(|id| super::check_id(id).is_ok());
    let files = layout
        .read_files(dir, &is_id, MAX_MARKER_BYTES)
        .map_err(|e| ProviderError::io(format!("listing {}", dir.display()), e))?;
    Ok(files
        .into_iter()
        .filter_map(|(name, text)| {
            // `is_id` accepted it: valid UTF-8.
            let id = String::from_utf8(name).ok()?;
            let path = dir.join(&id);
            let m = text
                .map_err(|e| read_error(&path, e))
                .and_then(|text| parse(&path, &text, kind, &id));
            Some((id, m))
        })
        .collect())
}

/// Decodes and checks the marker read from `path`, which must name `kind`
/// `id` and be at most [`MAX_MARKER_BYTES`] long.
fn parse(path: &Path, text: &[u8], kind: VolumeKind, id: &str) -> Result<Marker, ProviderError> {
    let bad = |why: String| {
        ProviderError::Other(format!(
            "unreadable ownership marker {}: {why}",
            path.display()
        ))
    };
    if text.len() as u64 > MAX_MARKER_BYTES {
        return Err(bad(format!("longer than {MAX_MARKER_BYTES} bytes")));
    }
    let m: Marker = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
    if m.format != MARKER_FORMAT {
        return Err(bad(format!("unknown format {}", m.format)));
    }
    if m.volume != id || m.kind != kind {
        return Err(bad(format!(
            "it names {} {}, not {kind} {id}",
            m.kind, m.volume
        )));
    }
    Ok(m)
}

/// Writes a marker (temp file, fsynced if `sync_file`, renamed over the
/// marker); the directory is not synced.
pub(crate) fn write(
    layout: &dyn Layout,
    dir: &Path,
    m: &Marker,
    sync_file: bool,
) -> Result<(), ProviderError> {
    let text = encode(m)?;
    layout
        .write_file(dir, &m.volume, &text, sync_file)
        .map_err(|e| write_error(dir, m, e))
}

/// Writes the first marker of a new data volume: created in place (no temp
/// file, no rename: a create's marker is new, and the rename cost a create
/// about as much as the file's creation), fsynced if `sync_file`; over a
/// stale marker (one [`read`]'s caller has decided to replace) by [`write`].
/// A crash may leave the new file empty or cut short: [`read`] calls it
/// unreadable, which is what a create interrupted before its round is
/// allowed to leave (`DirProvider::clear_create_remnant`, `live_marker`).
pub(crate) fn write_first(
    layout: &dyn Layout,
    dir: &Path,
    m: &Marker,
    sync_file: bool,
) -> Result<(), ProviderError> {
    if write_new(layout, dir, m, sync_file)? {
        return Ok(());
    }
    write(layout, dir, m, sync_file)
}

/// Creates a marker in place as [`write_first`] does, but only where no
/// entry has its name: `false` (nothing written) if one has.
pub(crate) fn write_new(
    layout: &dyn Layout,
    dir: &Path,
    m: &Marker,
    sync_file: bool,
) -> Result<bool, ProviderError> {
    let text = encode(m)?;
    match layout.write_new_file(dir, &m.volume, &text, sync_file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(write_error(dir, m, e)),
    }
}

fn encode(m: &Marker) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec_pretty(m).map_err(|e| ProviderError::Other(format!("encoding marker: {e}")))
}

fn write_error(dir: &Path, m: &Marker, e: std::io::Error) -> ProviderError {
    ProviderError::io(
        format!("writing marker {}", dir.join(&m.volume).display()),
        e,
    )
}

/// Writes a snapshot's mode exceptions durably (or removes a stale manifest
/// when there are none).
pub(crate) fn write_manifest(
    layout: &dyn Layout,
    dir: &Path,
    id: &str,
    modes: &Modes,
) -> Result<(), ProviderError> {
    let path = dir.join(id);
    if modes.exceptions.is_empty() {
        layout
            .remove_file(&path)
            .map_err(|e| ProviderError::io(format!("removing {}", path.display()), e))?;
        return Ok(());
    }
    let mut w = HashWriter::new(Vec::with_capacity(
        16 + modes.key_bytes() + 6 * modes.exceptions.len(),
    ));
    let mut put = |b: &[u8]| io::Write::write_all(&mut w, b).expect("writing to a Vec");
    put(MANIFEST_MAGIC);
    put(&(modes.exceptions.len() as u64).to_be_bytes());
    for (rel, mode) in &modes.exceptions {
        let len = u16::try_from(rel.len()).map_err(|_| {
            ProviderError::Other(format!(
                "mode manifest of {id}: a path of {} bytes is longer than the format's {}",
                rel.len(),
                u16::MAX
            ))
        })?;
        put(&len.to_be_bytes());
        put(rel);
        put(&mode.to_be_bytes());
    }
    let crc = w.crc();
    w.write_unhashed(&crc.to_be_bytes())
        .expect("writing to a Vec");
    // Temp file, fsynced, renamed over the manifest, directory fsynced.
    layout
        .write_file(dir, id, &w.into_inner(), true)
        .and_then(|()| layout.sync_dir(dir))
        .map_err(|e| ProviderError::io(format!("writing {}", path.display()), e))
}

/// Reads a snapshot's mode exceptions (none if there is no manifest).
pub(crate) fn read_manifest(
    layout: &dyn Layout,
    dir: &Path,
    id: &str,
) -> Result<Modes, ProviderError> {
    let path = dir.join(id);
    let mut modes = Modes::new(Policy::Snapshot);
    let Some((file, len)) = layout
        .open_read(&path)
        .map_err(|e| ProviderError::io(format!("opening {}", path.display()), e))?
    else {
        return Ok(modes);
    };
    let bad = |e: ProviderError| {
        ProviderError::Other(format!("damaged mode manifest {}: {e}", path.display()))
    };
    let mut r = HashReader::new(io::BufReader::new(file));
    let magic = r.read_bytes(8, 8, "magic").map_err(bad)?;
    if magic != MANIFEST_MAGIC {
        return Err(bad(ProviderError::Other("bad magic".into())));
    }
    let count = r.read_u64("count").map_err(bad)?;
    // Each entry takes at least 6 bytes: a count beyond the file is a lie.
    if count > len / 6 {
        return Err(bad(ProviderError::Other(format!(
            "count {count} does not fit in {len} bytes"
        ))));
    }
    for _ in 0..count {
        let n = r.read_u16("path length").map_err(bad)? as usize;
        let rel = r.read_bytes(n, MAX_PATH, "path").map_err(bad)?;
        let mode = r.read_u32("mode").map_err(bad)?;
        modes.record(&rel, mode, false);
    }
    let want = r.crc();
    let crc = r.read_u32("checksum").map_err(bad)?;
    if crc != want {
        return Err(bad(ProviderError::Other("checksum mismatch".into())));
    }
    Ok(modes)
}

/// Lists the names in a marker directory (dot-names are temp files).
pub(crate) fn list(layout: &dyn Layout, dir: &Path) -> Result<Vec<String>, ProviderError> {
    Ok(layout
        .names(dir)
        .map_err(|e| ProviderError::io(format!("listing {}", dir.display()), e))?
        .into_iter()
        .filter_map(|name| String::from_utf8(name).ok())
        .filter(|name| !name.starts_with('.'))
        .collect())
}
