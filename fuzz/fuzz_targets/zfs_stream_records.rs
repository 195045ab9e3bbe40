//! Feeds arbitrary bytes, as the records after a send stream's begin
//! record, to the ZFS provider's stream accounting (what the receive's
//! space bound charges before it lets a record into `zfs recv`).
//!
//! Invariants: no input panics (every length is bounded before use:
//! a payload above 16 MiB is an error); the total charge does not depend
//! on how the bytes are chunked (1 byte, 311, 312, 4096, all at once: the
//! same total, or the same error); a whole record is charged at least its
//! 312-byte header; and a full stream's charge never exceeds an
//! incremental's (only an incremental's FREE may rewrite a block).
#![no_main]

use libfuzzer_sys::fuzz_target;
use volmgr_core::provider::zfs::stream::{RECORD_LEN, charge_of};

fuzz_target!(|data: &[u8]| {
    let big_endian = data.first().is_some_and(|b| b & 1 == 1);
    let data = data.get(1..).unwrap_or_default();
    let whole = charge_of(data, big_endian, true, data.len().max(1));
    for chunk in [1, RECORD_LEN - 1, RECORD_LEN, 4096] {
        let c = charge_of(data, big_endian, true, chunk);
        assert_eq!(c.is_ok(), whole.is_ok(), "chunk {chunk}");
        if let (Ok(a), Ok(b)) = (&c, &whole) {
            assert_eq!(a, b, "chunk {chunk}");
        }
    }
    if let Ok(total) = whole {
        if data.len() >= RECORD_LEN {
            assert!(total >= RECORD_LEN as u64, "a whole record costs its header");
        }
        let full = charge_of(data, big_endian, false, data.len().max(1)).unwrap();
        assert!(full <= total);
    }
});
