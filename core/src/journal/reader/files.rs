//! The files of a state directory as readers see them: segments and
//! checkpoints listed by name, each read whole but bounded (segments up to
//! 1 GiB, checkpoints up to 256 MiB + 64 bytes) and only if it is a regular
//! file (a FIFO would block the reader), and the choice of the checkpoint
//! replay starts from, newest first, one file in memory at a time.

use std::path::{Path, PathBuf};

use super::super::JournalError;
use super::super::format::{self, Invalid, MAX_SEGMENT_LEN};
use crate::storage::{self, Cache, NotRegularFile, Storage};

/// Segment files of a journal directory, sorted by the first sequence number
/// in their names. Other files (temp files, `.broken` copies) are ignored.
pub fn list_segments(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    list_numbered(storage, dir, "seg")
}

/// Checkpoint files of a directory, sorted by sequence number.
pub fn list_checkpoints(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    list_numbered(storage, dir, "ckpt")
}

fn list_numbered(
    storage: &dyn Storage,
    dir: &Path,
    ext: &str,
) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let names = match storage.list_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(JournalError::io(dir, "list directory", e)),
    };
    let mut out: Vec<(u64, PathBuf)> = names
        .iter()
        .filter_map(|n| format::parse_numbered_name(n, ext).map(|s| (s, dir.join(n))))
        .collect();
    out.sort();
    Ok(out)
}

/// Reads one segment file, bounded.
pub fn read_segment(storage: &dyn Storage, path: &Path) -> Result<Vec<u8>, JournalError> {
    let mut buf = Vec::new();
    read_segment_into(storage, path, Cache::Keep, &mut buf)?;
    Ok(buf)
}

/// Reads one segment file, bounded, into `buf` (its old content is replaced),
/// after dropping its clean cached pages if `cache` says so (what the walk
/// does for the last segment: see [`super::walk::read`]). A file over 1 GiB,
/// or one that is not a regular file, is corruption at offset 0; other
/// failures are I/O errors.
pub fn read_segment_into(
    storage: &dyn Storage,
    path: &Path,
    cache: Cache,
    buf: &mut Vec<u8>,
) -> Result<(), JournalError> {
    storage::read_bounded_into(storage, path, MAX_SEGMENT_LEN, cache, buf).map_err(|e| {
        let reason = if let Some(refused) = NotRegularFile::of(&e) {
            Invalid::NotRegularFile(refused.what)
        } else if e.kind() == std::io::ErrorKind::InvalidData {
            let len = storage.open(path).and_then(|f| f.len()).unwrap_or(0);
            Invalid::FileTooLarge {
                len,
                max: MAX_SEGMENT_LEN,
            }
        } else {
            return JournalError::io(path, "read segment", e);
        };
        JournalError::Corrupt {
            file: path.to_owned(),
            offset: 0,
            reason,
        }
    })
}

/// Largest checkpoint file a reader loads.
pub const MAX_CHECKPOINT_FILE_LEN: u64 =
    format::MAX_CHECKPOINT_PAYLOAD_LEN + format::CHECKPOINT_HEADER_LEN as u64 + 24;

/// Reads checkpoint file `path`, named for sequence `name_seq`, and checks
/// it (size bound, regular file, header, checksum, exact length, the name).
/// Returns its payload, or why it cannot be used. Only this file is in
/// memory: the header is cut off in place, not copied.
pub fn read_checkpoint(
    storage: &dyn Storage,
    path: &Path,
    name_seq: u64,
) -> Result<Vec<u8>, String> {
    let mut bytes = match storage::read_bounded(storage, path, MAX_CHECKPOINT_FILE_LEN) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Err(match NotRegularFile::of(&e) {
                Some(refused) => refused.to_string(),
                None => format!("unreadable: {e}"),
            });
        }
    };
    match format::decode_checkpoint(&bytes) {
        Err(reason) => return Err(reason.to_string()),
        Ok((stored_seq, _)) if stored_seq != name_seq => {
            return Err(format!(
                "file name says sequence {name_seq}, header says {stored_seq}"
            ));
        }
        Ok(_) => {}
    }
    bytes.drain(..format::CHECKPOINT_HEADER_LEN);
    Ok(bytes)
}

/// A newest-first attempt to load a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointAttempt {
    pub path: PathBuf,
    pub seq: u64,
    /// Why it was not used, if it was not.
    pub rejected: Option<String>,
}

/// The checkpoint replay starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub seq: u64,
    pub path: PathBuf,
    pub payload: Vec<u8>,
}

/// Picks the newest checkpoint at or before `at_most` (any, if `None`) that
/// reads and checks, trying the files newest first; returns it (if any) and
/// every attempt made, in order. Opening the journal and the journal tool
/// both choose here, so they replay from the same checkpoint.
pub fn choose_checkpoint(
    storage: &dyn Storage,
    state_dir: &Path,
    at_most: Option<u64>,
) -> Result<(Option<Chosen>, Vec<CheckpointAttempt>), JournalError> {
    let dir = state_dir.join(super::super::CHECKPOINT_DIR);
    let mut attempts = Vec::new();
    // A live journal's writer stores a newer checkpoint and removes older
    // ones while this reads: a listed file that is gone means "list again"
    // (bounded: each round the writer must have stored another checkpoint).
    let mut listings = 0;
    'listing: loop {
        listings += 1;
        attempts.clear();
        for (seq, path) in list_checkpoints(storage, &dir)?.into_iter().rev() {
            if at_most.is_some_and(|limit| seq > limit) {
                continue;
            }
            let read = read_checkpoint(storage, &path, seq);
            if read.is_err() && listings < MAX_LISTINGS && is_gone(storage, &path) {
                continue 'listing;
            }
            match read {
                Ok(payload) => {
                    attempts.push(CheckpointAttempt {
                        path: path.clone(),
                        seq,
                        rejected: None,
                    });
                    return Ok((Some(Chosen { seq, path, payload }), attempts));
                }
                Err(why) => attempts.push(CheckpointAttempt {
                    path,
                    seq,
                    rejected: Some(why),
                }),
            }
        }
        return Ok((None, attempts));
    }
}

/// Listings of the checkpoints a reader makes at most when listed files
/// keep disappearing under it.
const MAX_LISTINGS: u32 = 4;

/// Whether `path`, listed a moment ago, is gone now (removed by a live
/// journal's writer), as opposed to present but unreadable or damaged.
pub fn is_gone(storage: &dyn Storage, path: &Path) -> bool {
    matches!(storage.open(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}
