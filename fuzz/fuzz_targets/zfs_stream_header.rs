//! Feeds arbitrary bytes to the ZFS provider's parser of the `DRR_BEGIN`
//! record a receive reads from the peer's stream before anything runs.
//!
//! Invariants: no input panics; a header is accepted only from a whole begin
//! record (312 bytes: any shorter prefix is refused), and its name is the
//! record's NUL-terminated name field (at most 256 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use volmgr_core::provider::zfs;

const BEGIN_LEN: usize = 312;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = zfs::parse_begin(data) {
        assert!(data.len() >= BEGIN_LEN);
        assert!(zfs::parse_begin(&data[..BEGIN_LEN - 1]).is_err());
        assert!(
            h.toname.len() <= 256 * 3,
            "lossy UTF-8 of at most 256 bytes"
        );
        assert_eq!(zfs::parse_begin(&data[..BEGIN_LEN]).unwrap(), h);
    }
});
