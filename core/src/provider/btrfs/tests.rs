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

#[test]
fn the_referenced_bytes_are_read_from_the_subvolumes_own_qgroup() {
    let text = "Qgroupid    Referenced    Exclusive   Path \n\
                --------    ----------    ---------   ---- \n\
                0/256          8404992      8404992   volumes/data/v\n";
    assert_eq!(parse_referenced(text), Some(8_404_992));
    assert_eq!(parse_referenced("1/0 5 5 -\n0/257 x 1 v\n"), None);
    assert_eq!(parse_referenced(""), None);
}
