//! Unit tests of the ZFS provider that run no command.

use super::*;

#[test]
fn dataset_names_that_could_be_flags_or_escape_are_refused() {
    for bad in [
        "",
        "-o",
        "tank/-x",
        "tank//a",
        "tank/../x",
        "tank/a b",
        "tank@s",
        "/tank",
        "t%a",
    ] {
        assert!(check_dataset(bad).is_err(), "{bad:?} accepted");
    }
    for good in ["tank", "tank/volmgr", "t_1/a.b:c-d"] {
        check_dataset(good).unwrap();
    }
}

#[test]
fn volume_options_are_checked_before_any_command() {
    for (k, v) in [
        ("compression", "lz4"),
        ("compression", "zstd-19"),
        ("compression", "off"),
        ("recordsize", "128K"),
        ("recordsize", "512"),
        ("recordsize", "1M"),
    ] {
        assert!(check_volume_option(k, v).is_ok(), "{k}={v}");
    }
    for (k, v) in [
        ("compression", "zstd-20"),
        ("compression", "-o"),
        ("compression", "lz4 mountpoint=/"),
        ("recordsize", "100K"),
        ("recordsize", "2M"),
        ("recordsize", "256"),
        ("mountpoint", "/etc"),
        ("refquota", "1"),
    ] {
        assert!(check_volume_option(k, v).is_err(), "{k}={v}");
    }
}

#[test]
fn sizes_parse_with_suffixes() {
    assert_eq!(parse_size("100"), Some(100));
    assert_eq!(parse_size("64M"), Some(64 << 20));
    assert_eq!(parse_size("2G"), Some(2 << 30));
    assert_eq!(parse_size("x"), None);
    assert_eq!(parse_size("-1"), None);
}

#[test]
fn stream_header_gives_guids_and_name() {
    let mut b = vec![0u8; BEGIN_LEN];
    b[8..16].copy_from_slice(&BACKUP_MAGIC.to_le_bytes());
    b[16..24].copy_from_slice(&1u64.to_le_bytes());
    b[40..48].copy_from_slice(&42u64.to_le_bytes());
    b[48..56].copy_from_slice(&7u64.to_le_bytes());
    b[56..62].copy_from_slice(b"p/a@s1");
    let h = parse_begin(&b).unwrap();
    assert_eq!((h.toguid, h.fromguid, h.toname.as_str()), (42, 7, "p/a@s1"));
    b[8] ^= 1;
    assert!(matches!(parse_begin(&b), Err(ProviderError::Stream(_))));
    assert!(parse_begin(&b[..10]).is_err());
}

#[test]
fn a_resumed_stream_is_told_by_its_header_feature_flag() {
    let mut b = vec![0u8; BEGIN_LEN];
    b[8..16].copy_from_slice(&BACKUP_MAGIC.to_le_bytes());
    // versioninfo of a real `zfs send -t` stream (OpenZFS 2.1).
    b[16..24].copy_from_slice(&0x0040_0011u64.to_le_bytes());
    assert!(parse_begin(&b).unwrap().resuming);
    b[16..24].copy_from_slice(&0x0000_0011u64.to_le_bytes());
    assert!(!parse_begin(&b).unwrap().resuming);
}

#[test]
fn a_deduplicated_stream_is_refused_by_its_header() {
    let mut b = vec![0u8; BEGIN_LEN];
    b[8..16].copy_from_slice(&BACKUP_MAGIC.to_le_bytes());
    // A substream (1) with DMU_BACKUP_FEATURE_DEDUP (bit 0 of the
    // features, bit 2 of versioninfo).
    b[16..24].copy_from_slice(&(0x0000_0011u64 | FEATURE_DEDUP).to_le_bytes());
    match parse_begin(&b) {
        Err(ProviderError::Stream(m)) => assert!(m.contains("deduplicated"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn token_contents_are_read_from_the_dry_run_and_junk_tokens_refused() {
    // As `zfs send -nvP -t` prints it (OpenZFS 2.1.11).
    let out = "resume token contents:\nnvlist version: 0\n\tfromguid = 0xdf70feb473014f96\n\tobject = 0x80\n\toffset = 0x2a0000\n\tbytes = 0x2c3c20\n\ttoguid = 0xcdd3b5a9c1c885cc\n\ttoname = tank/src@s2\nincremental\ttank/src@s1\ttank/src@s2\t7613904\nsize\t7613904\n";
    let c = parse_token_contents(out).unwrap();
    assert_eq!(c.toguid, 0xcdd3_b5a9_c1c8_85cc);
    assert_eq!(c.fromguid, Some(0xdf70_feb4_7301_4f96));
    assert_eq!(c.toname, "tank/src@s2");
    assert!(parse_token_contents("cannot resume send: resume token is corrupt").is_none());
    for bad in ["", "-t", "x-1", "1-ab cd", "1-ab/../cd"] {
        assert!(check_token(bad).is_err(), "{bad:?} accepted");
    }
    assert!(check_token("1-9924c2c09-b8-789c636064").is_ok());
}

#[test]
fn unknown_and_bad_configuration_is_refused_before_any_command() {
    let cfg = |pairs: &[(&str, &str)]| -> ProviderConfig {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    for bad in [
        cfg(&[]),
        cfg(&[("dataset", "-rf")]),
        cfg(&[("dataset", "tank/v"), ("colour", "red")]),
        cfg(&[("dataset", "tank/v"), ("pool_name", "other")]),
        cfg(&[("dataset", "tank/v"), ("workdir", "relative")]),
        cfg(&[
            ("dataset", "tank/v"),
            ("pool_size", "1K"),
            ("pool_vdev", "/x"),
        ]),
        cfg(&[("dataset", "tank/v"), ("pool_vdev", "rel/file")]),
    ] {
        assert!(
            matches!(
                ZfsProvider::from_config(&bad),
                Err(ProviderError::InvalidConfig(_))
            ),
            "{bad:?}"
        );
    }
}

/// On a host without ZFS, adding a zfs provider ran `zpool`/`zfs` and
/// answered their failure as a 500. It is refused as configuration the host
/// cannot serve, naming the missing device.
#[test]
fn a_host_without_the_zfs_device_is_refused_as_configuration_naming_it() {
    let missing = Path::new("/nonexistent/dev/zfs");
    match setup::zfs_available(missing) {
        Err(ProviderError::InvalidConfig(m)) => {
            assert!(
                m.contains("/nonexistent/dev/zfs is missing") && m.contains("kernel module"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    let present = tempfile::NamedTempFile::new().unwrap();
    assert!(setup::zfs_available(present.path()).is_ok());
}

#[test]
fn a_root_lock_name_is_one_plain_component_one_to_one_with_the_dataset() {
    let cases = [
        ("tank", "tank.lock"),
        ("tank/volmgr", "tank%volmgr.lock"),
        ("tank/a.b/c", "tank%a.b%c.lock"),
        ("t_1/a.b:c-d", "t_1%a.b:c-d.lock"),
    ];
    for (dataset, name) in cases {
        assert_eq!(setup::root_lock_name(dataset).unwrap(), name);
    }
    // Names that are no dataset never become a path.
    for bad in ["", "tank/../x", "..", "tank/.", "a%b", "tank/a\0b", "/tank"] {
        assert!(setup::root_lock_name(bad).is_err(), "{bad:?}");
    }
    let longest = format!("{}/{}", "a".repeat(99), "b".repeat(100));
    let name = setup::root_lock_name(&longest).unwrap();
    assert!(name.len() <= 255 && !name.contains('/'), "{name}");
}

#[test]
fn a_root_dataset_lock_is_refused_to_a_second_holder_until_the_first_drops_it() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("volmgr/zfs-roots");
    let first = setup::lock_root_dataset(&dir, "tank/a").unwrap();
    for d in [dir.parent().unwrap(), &dir] {
        let md = std::fs::symlink_metadata(d).unwrap();
        assert!(md.is_dir() && md.mode() & 0o7777 == 0o700, "{md:?}");
    }
    let lock = dir.join("tank%a.lock");
    assert_eq!(
        std::fs::symlink_metadata(&lock).unwrap().mode() & 0o7777,
        0o600
    );
    match setup::lock_root_dataset(&dir, "tank/a") {
        Err(ProviderError::RootInUse { root, lock: l }) => {
            assert_eq!(
                (root.as_str(), l.as_str()),
                ("tank/a", lock.to_str().unwrap())
            );
        }
        other => panic!("expected RootInUse: {other:?}"),
    }
    // Another root dataset, even one below it, has a lock of its own.
    let other = setup::lock_root_dataset(&dir, "tank/a/b").unwrap();
    drop(first);
    let again = setup::lock_root_dataset(&dir, "tank/a").expect("released on drop");
    drop((again, other));
}

#[test]
fn a_pool_claim_lock_is_one_plain_component_per_pool_and_released_after_the_claim() {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(setup::pool_claim_lock_name("tank").unwrap(), "tank.lock");
    assert_eq!(
        setup::pool_claim_lock_name("t_1.a:b-c").unwrap(),
        "t_1.a:b-c.lock"
    );
    for bad in ["", "tank/a", "..", "a%b", "-x", "a\0b"] {
        assert!(setup::pool_claim_lock_name(bad).is_err(), "{bad:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("volmgr/zfs-pools");
    let claim = setup::lock_pool_claim(&dir, "tank").unwrap();
    let md = std::fs::symlink_metadata(dir.join("tank.lock")).unwrap();
    assert!(md.is_file() && md.mode() & 0o7777 == 0o600, "{md:?}");
    // Held: no one else takes it; dropped: the next claim takes it.
    let file = std::fs::File::open(dir.join("tank.lock")).unwrap();
    assert!(file.try_lock().is_err(), "held during the claim");
    drop(claim);
    assert!(file.try_lock().is_ok(), "released after it");
    drop(file);
    drop(setup::lock_pool_claim(&dir, "tank").unwrap());
}

#[test]
fn a_root_lock_directory_others_could_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = setup::lock_root_dataset(&open.join("zfs-roots"), "tank").unwrap_err();
    assert!(
        matches!(&err, ProviderError::InvalidConfig(m) if m.contains(open.to_str().unwrap())),
        "{err:?}"
    );
    assert!(!open.join("zfs-roots").exists(), "nothing made below it");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let err = setup::lock_root_dataset(&link.join("zfs-roots"), "tank").unwrap_err();
    assert!(
        matches!(&err, ProviderError::InvalidConfig(m) if m.contains("a symlink")),
        "{err:?}"
    );
    assert!(
        !elsewhere.join("zfs-roots").exists(),
        "nothing made through it"
    );
}

#[test]
fn the_mounts_directory_is_private_and_its_path_beyond_other_users() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    let tmp = tempfile::tempdir().unwrap();
    let workdir = tmp.path().join("work");
    setup::private_mounts(&workdir).unwrap();
    assert_eq!(mode(&workdir.join("mnt")), 0o700, "made private");
    // `zfs mount` made it 0755 before: made private at the next open.
    chmod(&workdir.join("mnt"), 0o755);
    setup::private_mounts(&workdir).unwrap();
    assert_eq!(mode(&workdir.join("mnt")), 0o700, "tightened");

    // A workdir in a directory anyone can write (not sticky): refused,
    // naming it, existing or not, and nothing made.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    for exists in [false, true] {
        let workdir = open.join("work");
        if exists {
            std::fs::create_dir(&workdir).unwrap();
        }
        let err = setup::private_mounts(&workdir).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ProviderError::InvalidConfig(_))
                && text.contains("zfs workdir")
                && text.contains(&format!("{}: has mode 777", open.display())),
            "{err:?}"
        );
        assert!(!workdir.join("mnt").exists(), "nothing made");
    }
}
