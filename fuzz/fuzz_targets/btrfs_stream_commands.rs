//! Feeds arbitrary bytes to the btrfs provider's guard of a received
//! stream (`StreamGuard`: the parser of a `btrfs send` stream's commands
//! and their disk charges, which stands between the peer and `btrfs
//! receive`). The first 4 bytes of the input are a budget in KiB (what the
//! charge callback grants in all), the rest the stream, read through the
//! guard in reads of varying sizes.
//!
//! Invariants: no input panics or allocates from a length it carries; the
//! bytes passed on are a prefix of the stream, made of whole units (its
//! header, then whole commands: nothing of a command passes before its
//! charge was accepted); the charges accepted never exceed the budget, and
//! each command is charged at least `META_PER_COMMAND`; a refusal is
//! `Stream` or the callback's `NoSpace`, and it is the only way the stream
//! stops short; a stream passed whole ended with its `END` command.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use volmgr_core::provider::ProviderError;
use volmgr_core::provider::btrfs::{StreamGuard, command_charge};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let budget = u64::from(u32::from_le_bytes(data[..4].try_into().unwrap())) << 10;
    let stream = &data[4..];
    let mut input = stream;
    let mut spent = 0u64;
    let mut guard = StreamGuard::new(&mut input, 4096, |n| {
        if spent.saturating_add(n) > budget {
            return Err(ProviderError::NoSpace {
                what: "fuzz".into(),
                detail: format!("{n} over the budget"),
            });
        }
        spent += n;
        Ok(())
    });
    let mut out = Vec::new();
    let mut chunk = [0u8; 7919];
    let mut size = 1;
    let result = loop {
        match guard.read(&mut chunk[..size]) {
            Ok(0) => break Ok(()),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e),
        }
        size = size % chunk.len() + 1 + size / 3;
        size = size.min(chunk.len());
    };
    let (commands, charged, ended) = (guard.commands(), guard.charged(), guard.ended());
    let refusal = guard.take_refusal();
    assert!(stream.starts_with(&out), "passed bytes are the stream's");
    assert!(charged <= budget, "{charged} charged over {budget}");
    assert!(charged >= commands * 2048, "{charged} for {commands} commands");
    match (&result, &refusal) {
        (Ok(()), None) => {
            assert_eq!(out.len(), stream.len(), "a whole stream passes whole");
            assert!(ended, "a stream passed whole ended with END");
        }
        (Err(_), Some(ProviderError::Stream(_) | ProviderError::NoSpace { .. })) => {}
        other => panic!("{other:?}"),
    }
    // Whole units: the header, then commands whose lengths add up.
    if !out.is_empty() {
        assert!(out.len() >= 17, "header passed whole");
        let mut at = 17;
        let mut n = 0;
        while at < out.len() {
            let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            let cmd = u16::from_le_bytes(out[at + 4..at + 6].try_into().unwrap());
            let version = u32::from_le_bytes(out[13..17].try_into().unwrap());
            let end = at + 10 + len;
            assert!(end <= out.len(), "a command passed whole");
            assert!(command_charge(version, cmd, &out[at + 10..end], 4096).is_ok());
            at = end;
            n += 1;
        }
        assert_eq!(n, commands);
    }
});
