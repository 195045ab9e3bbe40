//! The one bincode configuration of the journal, with its size limits.
//!
//! bincode 2.0.1 `standard()`: little-endian, variable-length integers
//! (journal-format.md spells out the encoding), and always a byte limit, so a
//! damaged length prefix inside a payload yields an error instead of a huge
//! allocation. Decoding also insists that the payload is consumed exactly.
//!
//! The limit is bincode's "bytes claimed", which counts every integer at its
//! in-memory width (8 for a u64, also for a length prefix) and a string's or
//! byte vector's bytes, not the bytes read: a payload smaller than the limit
//! may still exceed it. Encoding does not check the limit at all. So
//! `Journal::append_all` decodes every record before writing it,
//! [`encode_checkpoint`] checks the encoded size and `Journal::checkpoint_of`
//! decodes a checkpoint before storing it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::format::{MAX_CHECKPOINT_PAYLOAD_LEN, MAX_PAYLOAD_LEN};

const RECORD_CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD_LEN>,
> = bincode::config::standard()
    .with_little_endian()
    .with_variable_int_encoding()
    .with_limit::<MAX_PAYLOAD_LEN>();

// A constant: MAX_CHECKPOINT_PAYLOAD_LEN (a few MiB) fits in any usize.
#[allow(clippy::cast_possible_truncation)]
const CHECKPOINT_CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_CHECKPOINT_PAYLOAD_LEN as usize }>,
> = bincode::config::standard()
    .with_little_endian()
    .with_variable_int_encoding()
    .with_limit::<{ MAX_CHECKPOINT_PAYLOAD_LEN as usize }>();

/// Encodes a record payload.
pub fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, RECORD_CONFIG).map_err(|e| e.to_string())
}

/// Decodes a record payload; every byte must be used.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, RECORD_CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        ));
    }
    Ok(value)
}

/// Encodes a checkpoint payload (the caller's state).
/// Store the result through `Journal::checkpoint_of`, which decodes it once
/// ([`decode_checkpoint`]) first, for the reason in the module doc.
pub fn encode_checkpoint<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let bytes =
        bincode::serde::encode_to_vec(value, CHECKPOINT_CONFIG).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_CHECKPOINT_PAYLOAD_LEN {
        return Err(format!(
            "checkpoint of {} bytes exceeds the limit of {MAX_CHECKPOINT_PAYLOAD_LEN}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Decodes a checkpoint payload; every byte must be used.
pub fn decode_checkpoint<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, CHECKPOINT_CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        ));
    }
    Ok(value)
}
