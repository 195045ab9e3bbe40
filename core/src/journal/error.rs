//! The journal's error type: every variant names what failed and where.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::format::Invalid;

#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// An I/O call failed.
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// Another process (or another handle in this one) holds the state
    /// directory's lock file.
    Locked { lock_file: PathBuf, holder: String },
    /// Damage that is not a torn tail: open refuses.
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: Invalid,
    },
    /// A write or sync failed earlier; no append is accepted until the journal
    /// is reopened and replayed.
    Poisoned { cause: String },
    /// A record does not fit in a frame or in an empty segment.
    RecordTooLarge { len: usize, max: usize },
    /// A record could not be encoded.
    Encode(String),
    /// The configuration cannot work (e.g. segments smaller than the minimum).
    Config(String),
    /// A checkpoint was requested for a sequence number not yet durable.
    CheckpointAhead { seq: u64, durable: u64 },
    /// A checkpoint payload that open could not decode (see
    /// [`super::Journal::checkpoint_of`]): refused, nothing stored.
    CheckpointUndecodable {
        seq: u64,
        len: usize,
        reason: String,
    },
    /// Rebuilding the state at record `seq` from the journal for a
    /// checkpoint ([`super::Journal::checkpoint_rebuilt`]) failed: the
    /// caller refused a record or the checkpoint it started from, or the
    /// log ended before `seq`. Nothing is stored.
    Rebuild { seq: u64, reason: String },
    /// The state directory's identity file (`IDENTITY`) is not one this
    /// journal wrote: another length or spelling, or not a regular file.
    /// Open refuses; the file is never replaced (see `journal/identity.rs`).
    Identity { file: PathBuf, reason: String },
    /// The state directory, an ancestor of it, or what volmgr keeps in it
    /// (`journal/`, `checkpoints/`, `LOCK`, `IDENTITY`) could be changed by
    /// another user (`fsutil::trust` has the rule): open refuses before it
    /// creates or reads anything there.
    Untrusted { path: PathBuf, reason: String },
    /// The journal was closed.
    Closed,
}

impl JournalError {
    /// [`JournalError::Io`] of `action` on `path`, or
    /// [`JournalError::Untrusted`] if `source` is a trust refusal (see
    /// [`crate::storage::Storage::check_trusted`]).
    pub fn from_io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        Self::io(path, action, source)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        if let Some(u) = crate::fsutil::trust::Untrusted::of(&source) {
            return JournalError::Untrusted {
                path: u.path.clone(),
                reason: u.reason.clone(),
            };
        }
        JournalError::Io {
            path: path.into(),
            action,
            source,
        }
    }

    /// True for damage (not I/O trouble, not a lock).
    pub fn is_corruption(&self) -> bool {
        matches!(self, JournalError::Corrupt { .. })
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io {
                path,
                action,
                source,
            } => write!(f, "{action} {}: {source}", path.display()),
            JournalError::Locked { lock_file, holder } => {
                write!(
                    f,
                    "state directory is locked: {} is held by another opener",
                    lock_file.display()
                )?;
                if !holder.is_empty() {
                    write!(f, " ({holder})")?;
                }
                Ok(())
            }
            JournalError::Corrupt {
                file,
                offset,
                reason,
            } => write!(
                f,
                "journal corrupt: {} at offset {offset}: {reason}",
                file.display()
            ),
            JournalError::Poisoned { cause } => write!(
                f,
                "journal poisoned by an earlier write/sync failure ({cause}); reopen to recover"
            ),
            JournalError::RecordTooLarge { len, max } => {
                write!(f, "record of {len} bytes exceeds the limit of {max}")
            }
            JournalError::Encode(e) => write!(f, "record does not encode: {e}"),
            JournalError::Config(e) => write!(f, "invalid journal configuration: {e}"),
            JournalError::CheckpointAhead { seq, durable } => write!(
                f,
                "checkpoint at sequence {seq} requested but only {durable} is durable"
            ),
            JournalError::CheckpointUndecodable { seq, len, reason } => write!(
                f,
                "checkpoint at sequence {seq} ({len} bytes) refused: it would not decode on open: {reason}"
            ),
            JournalError::Rebuild { seq, reason } => write!(
                f,
                "rebuilding the state at sequence {seq} from the journal for a checkpoint failed: {reason}"
            ),
            JournalError::Identity { file, reason } => write!(
                f,
                "state directory identity {} is damaged: {reason}; it is never replaced, \
                 since it names this agent's provider roots as theirs: restore it (the \
                 `owner` line of one of those roots' markers holds it; README, \
                 \"Agent identity\")",
                file.display()
            ),
            JournalError::Untrusted { path, reason } => write!(
                f,
                "refusing an untrusted state directory: {} {reason} (volmgr runs as root: \
                 the state directory and every directory above it must be changeable by \
                 root and the agent's user only; README, \"State directory\")",
                path.display()
            ),
            JournalError::Closed => write!(f, "journal is closed"),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
