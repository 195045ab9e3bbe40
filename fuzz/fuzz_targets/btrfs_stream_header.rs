//! Feeds arbitrary bytes to the btrfs provider's parser of a `btrfs send`
//! stream's first command, which a receive reads from the peer's stream
//! before anything runs (the manager passes it at most `STREAM_HEAD_LEN`
//! bytes).
//!
//! Invariants: no input panics; an identity is accepted only from a stream
//! that starts with the magic and a version 1 to 3, and it depends only on
//! the bytes up to the end of the first command (17 bytes of stream header,
//! 10 of command header, then the command's declared length); its guid and
//! base are UUIDs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volmgr_core::provider::btrfs;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(btrfs::STREAM_HEAD_LEN)];
    let Some(id) = btrfs::stream_identity(data) else {
        return;
    };
    assert!(data.starts_with(b"btrfs-stream\0"));
    let len = u32::from_le_bytes(data[17..21].try_into().unwrap()) as usize;
    let end = 27 + len;
    assert!(data.len() >= end, "accepted before the command's end");
    assert_eq!(btrfs::stream_identity(&data[..end]), Some(id.clone()));
    assert!(is_uuid(&id.guid), "{id:?}");
    if let Some(base) = &id.base {
        assert!(is_uuid(base), "{id:?}");
    }
});

/// The hyphenated lowercase form: 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}
