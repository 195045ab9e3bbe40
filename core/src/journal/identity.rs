//! The state directory's identity: a random id made once, at the first open,
//! and kept for good in `<state-dir>/IDENTITY` (see `journal-format.md`,
//! "Directory layout"). The journal only makes, keeps and reads it; what it
//! identifies is the owner's business (the manager names its providers'
//! roots with it).
//!
//! The file is exactly [`IDENTITY_LEN`] bytes: a UUID in its canonical text
//! (lowercase, hyphenated, 36 bytes, never the nil UUID) and a line feed.
//! It is made like every new file of the journal (invariant 5): a temp file
//! `.IDENTITY.tmp`, written, fsynced, renamed into place, the directory
//! fsynced; so it is either absent or whole, and once an open returned it is
//! durable. Anything else in its place (another length, another spelling, not
//! a regular file) is [`JournalError::Identity`], naming the file and why:
//! never replaced, since the roots the agent owns are named by the old id.

use std::io;
use std::path::Path;

use uuid::Uuid;

use super::JournalError;
use super::writer::{sync_dir, write_new_file};
use crate::model::AgentId;
use crate::storage::{NotRegularFile, Storage, read_bounded};

/// The identity file, under the state directory.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// Length of the identity file: 36 bytes of UUID and a line feed.
pub const IDENTITY_LEN: usize = AgentId::TEXT_LEN + 1;

/// The bytes of the identity file holding `id`.
pub fn encode_identity(id: Uuid) -> Vec<u8> {
    let text = format!("{}\n", id.hyphenated());
    // Pair assertion: what is written is what `decode_identity` accepts.
    assert_eq!(text.len(), IDENTITY_LEN, "the identity file's length");
    text.into_bytes()
}

/// The id the identity file's `bytes` hold, or why they hold none.
pub fn decode_identity(bytes: &[u8]) -> Result<Uuid, String> {
    if bytes.len() != IDENTITY_LEN {
        return Err(format!(
            "{} bytes, not {IDENTITY_LEN} (a lowercase hyphenated UUID and a line feed)",
            bytes.len()
        ));
    }
    let (text, end) = bytes.split_at(AgentId::TEXT_LEN);
    if end != b"\n" {
        return Err("the UUID is not followed by a line feed".into());
    }
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_owned())?;
    AgentId::parse(text).map(|id| id.as_uuid())
}

/// Reads the identity of `state_dir`: `Ok(None)` if the file is absent.
/// Writes nothing (the offline journal tool reads it through this too).
pub fn read_identity(
    storage: &dyn Storage,
    state_dir: &Path,
) -> Result<Option<Uuid>, JournalError> {
    let path = state_dir.join(IDENTITY_FILE);
    let damaged = |reason: String| JournalError::Identity {
        file: path.clone(),
        reason,
    };
    // One byte over the limit is enough to tell a longer file apart.
    let bytes = match read_bounded(storage, &path, IDENTITY_LEN as u64) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(damaged(e.to_string())),
        Err(e) if NotRegularFile::of(&e).is_some() => return Err(damaged(e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            return Err(damaged("a directory".into()));
        }
        Err(e) => return Err(JournalError::io(&path, "read", e)),
    };
    decode_identity(&bytes).map(Some).map_err(damaged)
}

/// The identity of `state_dir`, made now if it has none (an older state
/// directory, or a new one). Called with the state directory's lock held.
/// Returns only once the file is durable: an existing file may have been
/// renamed into place by a process killed before it synced the directory,
/// so the directory is synced again before the id is handed out.
pub(super) fn open_identity(storage: &dyn Storage, state_dir: &Path) -> Result<Uuid, JournalError> {
    if let Some(id) = read_identity(storage, state_dir)? {
        sync_dir(storage, state_dir)?;
        return Ok(id);
    }
    let id = Uuid::new_v4();
    write_new_file(storage, state_dir, IDENTITY_FILE, &encode_identity(id))?;
    tracing::info!(state_dir = %state_dir.display(), identity = %id, "journal: state directory identity made");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_identity_decodes_to_itself() {
        let id = Uuid::new_v4();
        let bytes = encode_identity(id);
        assert_eq!(bytes.len(), IDENTITY_LEN);
        assert_eq!(decode_identity(&bytes), Ok(id));
    }

    #[test]
    fn every_other_spelling_is_refused_with_its_reason() {
        let id = Uuid::new_v4();
        let upper = format!("{}\n", id.hyphenated()).to_uppercase();
        let cases: [(&[u8], &str); 6] = [
            (b"", "0 bytes"),
            (&encode_identity(id)[..36], "36 bytes"),
            (upper.as_bytes(), "canonical"),
            (b"00000000-0000-0000-0000-000000000000\n", "nil"),
            (b"0123456789abcdef0123456789abcdef0123\n", "not a UUID"),
            (b"01234567-89ab-cdef-0123-456789abcdef\r", "line feed"),
        ];
        for (bytes, why) in cases {
            let err = decode_identity(bytes).expect_err("refused");
            assert!(err.contains(why), "{bytes:?}: {err}");
        }
    }
}
