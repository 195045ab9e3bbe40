//! Feeds arbitrary text to the ZFS provider's resume-token handling: the
//! check of a token a peer hands back, and the parser of the
//! `zfs send -nv -t TOKEN` output that says what a token continues.
//!
//! Invariants: no input panics; a token that passes `check_token` is
//! non-empty, bounded, starts with a digit and holds only hex digits and
//! dashes (so it can never be read as a flag); parsed contents come only
//! from `toguid = ` and `toname = ` lines of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volmgr_core::provider::zfs;
use volmgr_core::validate::MAX_RESUME_TOKEN_LEN;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if zfs::check_token(text).is_ok() {
        assert!(!text.is_empty() && text.len() <= MAX_RESUME_TOKEN_LEN);
        assert!(text.starts_with(|c: char| c.is_ascii_digit()));
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
    }
    if let Some(c) = zfs::parse_token_contents(text) {
        assert!(text.contains("toguid = ") && text.contains("toname = "));
        assert!(text.contains(c.toname.as_str()));
    }
});
