//! Unit tests of the btrfs provider that need no btrfs.

use super::tag::{format_tag, parse_tag};
use super::*;

#[test]
fn tags_round_trip_and_garbage_is_not_a_tag() {
    let tag = Tag {
        volume: "vol-1".into(),
        op: Uuid::from_u128(7),
        kind: VolumeKind::Snapshot,
        parent: Some("src".into()),
    };
    assert_eq!(parse_tag(&format_tag(&tag)), Some(tag.clone()));
    let data = Tag {
        kind: VolumeKind::Data,
        parent: None,
        ..tag
    };
    assert_eq!(parse_tag(&format_tag(&data)), Some(data));
    for bad in [
        "",
        "volume=a op=x kind=data parent=-\n",
        "volume=a kind=data parent=-\n",
        "volume=../a op=00000000-0000-0000-0000-000000000007 kind=data parent=-\n",
        "volume=a op=00000000-0000-0000-0000-000000000007 kind=zvol parent=-\n",
        "volume=a op=00000000-0000-0000-0000-000000000007 kind=data parent=-",
        "volume=a volume=b op=00000000-0000-0000-0000-000000000007 kind=data parent=-\n",
    ] {
        assert_eq!(parse_tag(bad), None, "{bad:?}");
    }
}

#[test]
fn a_root_that_is_not_btrfs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    if fs_type(dir.path()).unwrap() == BTRFS_SUPER_MAGIC {
        return;
    }
    let err = BtrfsProvider::new(dir.path()).unwrap_err();
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err}");
    let err = BtrfsProvider::new("relative/root").unwrap_err();
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err}");
}

/// A `btrfs send` head: stream header, then one command of `kind` with a
/// name, a UUID, a transid and, given `clone`, a clone UUID and transid.
fn send_head(kind: u16, uuid: Uuid, clone: Option<Uuid>) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut attr = |t: u16, v: &[u8]| {
        attrs.extend_from_slice(&t.to_le_bytes());
        attrs.extend_from_slice(&u16::try_from(v.len()).unwrap().to_le_bytes());
        attrs.extend_from_slice(v);
    };
    attr(15, b"vol");
    attr(1, uuid.as_bytes());
    attr(2, &9u64.to_le_bytes());
    if let Some(c) = clone {
        attr(20, c.as_bytes());
        attr(21, &8u64.to_le_bytes());
    }
    let mut head = b"btrfs-stream\0".to_vec();
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&u32::try_from(attrs.len()).unwrap().to_le_bytes());
    head.extend_from_slice(&kind.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&attrs);
    head
}

#[test]
fn a_send_streams_first_command_declares_its_snapshot_and_base() {
    let (to, from) = (Uuid::from_u128(0x1234), Uuid::from_u128(0x5678));
    assert_eq!(
        receive::stream_identity(&send_head(1, to, None)),
        Some(StreamIdentity {
            guid: to.to_string(),
            base: None
        })
    );
    let incremental = send_head(2, to, Some(from));
    assert_eq!(
        receive::stream_identity(&incremental),
        Some(StreamIdentity {
            guid: to.to_string(),
            base: Some(from.to_string())
        })
    );
    // Every cut of the head, and every byte of it damaged, declares
    // nothing or something, and never panics or reads past the head.
    for cut in 0..incremental.len() {
        assert_eq!(receive::stream_identity(&incremental[..cut]), None, "{cut}");
    }
    for at in 0..incremental.len() {
        let mut bad = incremental.clone();
        bad[at] ^= 0xff;
        let _ = receive::stream_identity(&bad);
    }
    // A SNAPSHOT command without its clone UUID, another first command,
    // and a command longer than its head declare nothing.
    assert_eq!(receive::stream_identity(&send_head(2, to, None)), None);
    assert_eq!(receive::stream_identity(&send_head(3, to, None)), None);
    let mut long = send_head(1, to, None);
    long[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(receive::stream_identity(&long), None);
}

#[test]
fn btrfs_receive_reporting_a_full_file_system_or_quota_is_no_space() {
    let failed = |stderr: &str| ProviderError::Command {
        command: "btrfs receive".into(),
        status: "exit status 1".into(),
        stderr: stderr.into(),
    };
    for full in [
        "ERROR: writing to f failed: No space left on device",
        "ERROR: fallocate: fallocate on f failed: Disk quota exceeded",
    ] {
        let e = receive::no_space_reported(failed(full));
        assert!(
            matches!(e, ProviderError::NoSpace { ref detail, .. } if detail.contains(full)),
            "{e:?}"
        );
    }
    let e = receive::no_space_reported(failed("ERROR: crc mismatch"));
    assert!(matches!(e, ProviderError::Command { .. }), "{e:?}");
}
