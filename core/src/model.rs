//! The shared vocabulary of the state machine and the providers: volume ids
//! (one id rule, checked by [`VolumeId::new`]), operation ids, volume kinds
//! and provider details. Both `state` and `provider` import it; neither
//! imports the other.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Operation id: a `UUIDv7`, unique per mutating operation.
pub type OpId = Uuid;
/// Provider-specific facts about a volume (e.g. a ZFS snapshot's GUID).
pub type Details = std::collections::BTreeMap<String, String>;

/// Detail key of a snapshot's identity, used as a "have" in transfers.
pub const DETAIL_GUID: &str = "guid";

/// The identity of an agent: the random id of its state directory (the file
/// `IDENTITY` there, see `journal-format.md`), made once and kept for good.
/// A provider built by that agent's manager writes it into its root as the
/// root's owner, and refuses a root that names another owner: two agents
/// never act on one provider root. Written and read only in its canonical
/// text, a lowercase hyphenated UUID (36 bytes); never the nil UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentId(Uuid);

impl AgentId {
    /// Length of the canonical text, in bytes.
    pub const TEXT_LEN: usize = 36;

    /// A new random identity (UUID version 4).
    pub fn generate() -> AgentId {
        AgentId(Uuid::new_v4())
    }

    /// `uuid` as an identity; `None` for the nil UUID.
    pub fn from_uuid(uuid: Uuid) -> Option<AgentId> {
        (!uuid.is_nil()).then_some(AgentId(uuid))
    }

    /// Parses the canonical text only (lowercase, hyphenated, 36 bytes):
    /// the one spelling volmgr writes, so a marker or file holding any other
    /// spelling was not written by volmgr and is refused as damaged.
    pub fn parse(text: &str) -> Result<AgentId, String> {
        if text.len() != Self::TEXT_LEN {
            return Err(format!(
                "an agent id is {} bytes (a lowercase hyphenated UUID), not {}",
                Self::TEXT_LEN,
                text.len()
            ));
        }
        let uuid = Uuid::try_parse(text).map_err(|e| format!("not a UUID: {e}"))?;
        if uuid.hyphenated().to_string() != text {
            return Err("not in canonical form (lowercase, hyphenated)".into());
        }
        AgentId::from_uuid(uuid).ok_or_else(|| "the nil UUID is no agent id".into())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Length of [`AgentId::owner_line`].
    pub const OWNER_LINE_LEN: usize = "owner ".len() + Self::TEXT_LEN + 1;

    /// The line `owner <id>\n` that ends a provider root marker (the dir
    /// and btrfs providers'), naming this agent as the root's owner.
    pub fn owner_line(&self) -> String {
        format!("owner {self}\n")
    }

    /// The agent an owner line names: `line` must be exactly one
    /// [`AgentId::owner_line`], or why it is not.
    pub fn from_owner_line(line: &[u8]) -> Result<AgentId, String> {
        let text = line
            .strip_prefix(b"owner ")
            .and_then(|r| r.strip_suffix(b"\n"))
            .ok_or_else(|| {
                "the head is not followed by one line \"owner <agent id>\"".to_owned()
            })?;
        let text = std::str::from_utf8(text).map_err(|_| "its owner is not UTF-8".to_owned())?;
        AgentId::parse(text).map_err(|e| format!("its owner {text:?}: {e}"))
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// Longest volume or provider id, in bytes.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum VolumeKind {
    Data,
    Snapshot,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Data => "data",
            VolumeKind::Snapshot => "snapshot",
        }
    }
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId {
    pub id: String,
    pub reason: String,
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid id {:?}: {} (allowed: 1 to {MAX_ID_LEN} bytes of A-Z a-z 0-9 . _ -, not starting with '.' or '-')",
            self.id, self.reason
        )
    }
}

impl std::error::Error for InvalidId {}

/// The id rule, shared by volumes and providers: 1 to [`MAX_ID_LEN`] bytes
/// of `[A-Za-z0-9._-]`, not starting with `.` or `-`. So an id is always one
/// safe path component: never a flag, a hidden file, `.` or `..`.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("it is empty".into())
    } else if id.len() > MAX_ID_LEN {
        Some(format!("it is {} bytes, more than {MAX_ID_LEN}", id.len()))
    } else if id.starts_with('.') || id.starts_with('-') {
        Some("it starts with '.' or '-'".into())
    } else {
        id.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("it contains {c:?}"))
    }
}

/// A volume id that satisfies the id rule ([`id_problem`]). Borrowed form,
/// like `str`: `&VolumeId` is made only by [`VolumeId::new`].
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct VolumeId(str);

impl VolumeId {
    /// Checks `id` against the id rule.
    pub fn new(id: &str) -> Result<&VolumeId, InvalidId> {
        match id_problem(id) {
            // SAFETY: `VolumeId` is `repr(transparent)` over `str`, so the
            // pointer cast keeps layout and lifetime.
            None => Ok(unsafe { &*(std::ptr::from_ref::<str>(id) as *const VolumeId) }),
            Some(reason) => Err(InvalidId {
                id: id.chars().take(MAX_ID_LEN + 8).collect(),
                reason,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for VolumeId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for VolumeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for VolumeId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for VolumeId {
    fn eq(&self, other: &str) -> bool {
        &self.0 == other
    }
}

impl PartialEq<&str> for VolumeId {
    fn eq(&self, other: &&str) -> bool {
        &self.0 == *other
    }
}

impl PartialEq<VolumeId> for String {
    fn eq(&self, other: &VolumeId) -> bool {
        self.as_str() == &other.0
    }
}

impl PartialEq<&VolumeId> for String {
    fn eq(&self, other: &&VolumeId) -> bool {
        self.as_str() == &other.0
    }
}

impl PartialEq<VolumeId> for str {
    fn eq(&self, other: &VolumeId) -> bool {
        self == &other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_rule_at_its_limits() {
        let longest = "a".repeat(MAX_ID_LEN);
        for ok in ["a", "A.b_c-9", longest.as_str()] {
            assert_eq!(VolumeId::new(ok).unwrap().as_str(), ok);
        }
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            ".x",
            "-x",
            "a/b",
            "a b",
            "é",
            too_long.as_str(),
            "a\0",
        ] {
            assert!(VolumeId::new(bad).is_err(), "{bad:?}");
        }
    }
}
