//! Feeds arbitrary bytes to the checkpoint decoder and the record codec.
//!
//! Invariants:
//!
//! 1. No input panics, aborts or allocates without bound
//!    (`format::decode_checkpoint` bounds the length before use; the codec's
//!    bincode configuration carries a byte limit).
//! 2. A decoded checkpoint's payload is the input after the 40-byte header,
//!    its sequence number is at most `MAX_SEQ`, and encoding the result again
//!    gives back the input byte for byte (there is one encoding of a
//!    checkpoint).
//! 3. Codec: whatever decodes as a record or as checkpoint state re-encodes to
//!    bytes that decode to the same value (decode . encode . decode = decode),
//!    and the decoders never accept trailing bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use volmgr_core::journal::{self, format};

/// A record shaped like the journal's real ones: nested enums, strings,
/// byte vectors, options, maps and integers of every width.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Record {
    Intent {
        op_id: u128,
        name: String,
        tags: Vec<String>,
    },
    Outcome {
        op_id: u128,
        result: Result<Option<u64>, String>,
    },
    Blob(Vec<u8>),
    Map(BTreeMap<String, (i32, bool, char)>),
    Unit,
    Small(u8, u16, i64),
}

/// Checkpoint state: a map of records.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct State {
    seq: u64,
    volumes: BTreeMap<u64, Record>,
}

fuzz_target!(|data: &[u8]| {
    if let Ok((seq, payload)) = format::decode_checkpoint(data) {
        assert!(seq <= format::MAX_SEQ);
        assert_eq!(payload, &data[format::CHECKPOINT_HEADER_LEN..]);
        assert_eq!(format::encode_checkpoint(seq, payload), data);
    }
    if let Ok(record) = journal::decode_record::<Record>(data) {
        let again = journal::encode_record(&record).expect("decoded record encodes");
        assert!(again.len() <= format::MAX_PAYLOAD_LEN);
        assert_eq!(journal::decode_record::<Record>(&again), Ok(record));
    }
    if let Ok(state) = journal::decode_checkpoint::<State>(data) {
        let again = journal::encode_checkpoint(&state).expect("decoded state encodes");
        assert_eq!(journal::decode_checkpoint::<State>(&again), Ok(state));
    }
    // Trailing bytes are refused.
    if !data.is_empty() && journal::decode_record::<Record>(&data[..data.len() - 1]).is_ok() {
        assert!(journal::decode_record::<Record>(data).is_err());
    }
});
