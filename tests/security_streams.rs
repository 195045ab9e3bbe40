//! Attacks through a received stream: every byte of it is hostile. A sender
//! tries to plant setuid executables and a setuid/setgid, world-writable
//! volume root; to make the receiver fail with an internal error on names
//! the kernel refuses; and to fill the receiver's disk. Each test sends the
//! attack to a real directory provider.

mod security_support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use security_support::*;
use volmgr::provider::ProviderError;

/// A stream whose root is 07777 and which carries a 04755 copy of
/// /usr/bin/id, a 02755 file and a 06777 directory.
fn setuid_stream() -> Vec<u8> {
    let id = fs::read("/usr/bin/id").expect("/usr/bin/id");
    Craft::new(0x5e7_0001)
        .dir(b"", 0o7777)
        .file(b"id", 0o4755, &id)
        .file(b"gid", 0o2755, &id)
        .dir(b"sub", 0o6777)
        .file(b"sub/id", 0o6755, &id)
        .end()
}

#[test]
fn a_received_stream_creates_no_setuid_or_setgid_file_and_the_root_keeps_only_sticky() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(&tmp.path().join("root"));
    let target = create(&p, "t");
    let snap = receive(&p, &target, "s", &mut setuid_stream().as_slice()).unwrap();
    for tree in [target.path(), snap.path()] {
        let root_mode = fs::metadata(&tree).unwrap().mode() & 0o7777;
        assert_eq!(root_mode & 0o6000, 0, "{} is {root_mode:o}", tree.display());
        for (path, mode) in listing(&tree) {
            assert_eq!(
                mode & 0o6000,
                0,
                "{} kept {:o}",
                path.display(),
                mode & 0o7777
            );
        }
    }
    // The sticky bit stays (documented): 07777 arrives as 01777, never as
    // drwsrwsrwt.
    assert_eq!(fs::metadata(target.path()).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(
        fs::metadata(target.path().join("id")).unwrap().mode() & 0o7777,
        0o755
    );

    // A fork of the received snapshot and a snapshot of the target carry no
    // setuid bit either.
    let f = fork(&p, &snap, "f").unwrap();
    let s2 = snapshot(&p, &target, "s2").unwrap();
    for tree in [f.path(), s2.path()] {
        for (path, mode) in listing(&tree) {
            assert_eq!(
                mode & 0o6000,
                0,
                "{} kept {:o}",
                path.display(),
                mode & 0o7777
            );
        }
    }
}

#[test]
fn a_received_setuid_binary_run_by_an_unprivileged_user_has_no_root_euid() {
    if !have_root("setuid binary from a stream") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let p = provider(&tmp.path().join("root"));
    let target = create(&p, "t");
    receive(&p, &target, "s", &mut setuid_stream().as_slice()).unwrap();
    for bin in [target.path().join("id"), target.path().join("sub/id")] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("-u")
            .output()
            .expect("setpriv runs");
        assert!(out.status.success(), "{}: {out:?}", bin.display());
        let euid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(euid, "65534", "{} ran with euid {euid}", bin.display());
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("-g")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    }
}

fn expect_stream_error(r: Result<Vol, ProviderError>, what: &str) {
    match r {
        Err(ProviderError::Stream(msg)) => eprintln!("{what}: refused: {msg}"),
        Err(other) => panic!("{what}: wanted a bad-stream error, got {other:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn names_the_kernel_refuses_are_a_bad_stream_not_an_internal_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(&tmp.path().join("root"));
    let target = create(&p, "t");
    fs::write(target.path().join("mine"), b"kept").unwrap();

    let long = vec![b'a'; 300];
    let s = Craft::new(1).dir(b"", 0o755).file(&long, 0o644, b"x").end();
    expect_stream_error(
        receive(&p, &target, "a", &mut s.as_slice()),
        "300-byte component",
    );

    // 2,040 levels deep (4,079 bytes: within the path limit).
    let mut c = Craft::new(2).dir(b"", 0o755);
    let mut path = Vec::new();
    for _ in 0..2040 {
        if !path.is_empty() {
            path.push(b'/');
        }
        path.push(b'd');
        c = c.dir(&path, 0o755);
    }
    expect_stream_error(
        receive(&p, &target, "b", &mut c.end().as_slice()),
        "2,040 levels",
    );

    // A link target of 4,096 bytes (PATH_MAX counts the NUL).
    let target_bytes = vec![b'x'; 4096];
    let s = Craft::new(3)
        .dir(b"", 0o755)
        .rec(b'L', b"l")
        .raw(&4096u16.to_be_bytes())
        .raw(&target_bytes)
        .end();
    expect_stream_error(
        receive(&p, &target, "c", &mut s.as_slice()),
        "4,096-byte link",
    );

    assert_eq!(fs::read(target.path().join("mine")).unwrap(), b"kept");
    assert!(
        fs::read_dir(tmp.path().join("root/.staging"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// Story: a peer's stream declaring a file of 2^44 bytes (the format's
/// limit) got `EFBIG` from ext4, whose files hold at most 2^44 - 4096
/// bytes with 4 KiB blocks (fewer with 1 KiB blocks), and the receive
/// failed with an I/O error (HTTP 500, "provider failed"): the agent's
/// fault, though the stream asked for what the file system cannot hold.
/// It is a bad stream (HTTP 502 `bad_stream`, as any refused stream)
/// naming the file and its length, and leaves nothing behind: whether the
/// length is set past the limit, an extent sought past it, or written
/// across it.
#[test]
fn a_file_longer_than_the_file_system_holds_is_a_bad_stream_naming_it_and_its_length() {
    if !have_root("loop-mounted ext4") {
        return;
    }
    let small = SmallFs::new(64, 4096);
    let p = provider(&small.mnt.join("root"));
    let target = create(&p, "t");
    fs::write(target.path().join("mine"), b"kept").unwrap();
    const LEN: u64 = 1 << 44;
    // The longest file this ext4 holds (its block size decides): the
    // largest length `ftruncate` accepts.
    let probe = fs::File::create(small.mnt.join("probe")).unwrap();
    let (mut max, mut over) = (0u64, LEN);
    while over - max > 1 {
        let mid = max + (over - max) / 2;
        if probe.set_len(mid).is_ok() {
            max = mid;
        } else {
            over = mid;
        }
    }
    drop(probe);
    fs::remove_file(small.mnt.join("probe")).unwrap();
    assert!(max < LEN, "this ext4 holds files of {max} bytes");
    // (what, the extents: offset and content)
    type Case<'a> = (&'a str, &'a [(u64, &'a [u8])]);
    let cases: [Case; 4] = [
        ("only a hole", &[]),
        ("a byte at the limit", &[(max, b"x")]),
        ("a byte sought past the limit", &[(max + 1, b"x")]),
        ("data written across the limit", &[(max - 1, b"xy")]),
    ];
    for (i, (what, extents)) in cases.into_iter().enumerate() {
        let s = Craft::new(0xb16_0000 + i as u128)
            .version(2)
            .dir(b"", 0o755)
            .file(b"small", 0o644, b"fits")
            .sparse(b"huge", 0o644, LEN, extents)
            .end();
        match receive(&p, &target, &format!("s{i}"), &mut s.as_slice()) {
            Err(ProviderError::Stream(msg)) => {
                eprintln!("{what}: refused: {msg}");
                assert!(
                    msg.contains("\"huge\"") && msg.contains(&LEN.to_string()),
                    "{what}: the refusal names neither the file nor its length: {msg}"
                );
            }
            Err(other) => panic!("{what}: wanted a bad-stream error, got {other:?}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    assert_eq!(fs::read(target.path().join("mine")).unwrap(), b"kept");
    assert!(
        fs::read_dir(small.mnt.join("root/.staging"))
            .unwrap()
            .next()
            .is_none(),
        "the staging area is removed"
    );
}

fn expect_no_space(r: Result<Vol, ProviderError>, what: &str) {
    match r {
        Err(ProviderError::NoSpace { what: w, detail }) => {
            eprintln!("{what}: refused: not enough space for {w}: {detail}");
        }
        Err(other) => panic!("{what}: wanted NoSpace, got {other:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

/// A stream of one file of `len` bytes whose content is generated, not
/// held in memory (its checksum is wrong: it is meant to be refused first).
fn big_file_stream(len: u64) -> impl Read {
    let head = Craft::new(9)
        .dir(b"", 0o755)
        .file_header(b"big", 0o644, len)
        .b;
    std::io::Cursor::new(head)
        .chain(std::io::repeat(0x5a).take(len))
        .chain(std::io::Cursor::new(
            b"E\0\0\0\0\0\0\0\x02\0\0\0\0".to_vec(),
        ))
}

#[test]
fn a_receive_that_would_fill_the_disk_is_refused_with_no_space_and_leaves_nothing() {
    if !have_root("loop-mounted ext4") {
        return;
    }
    let small = SmallFs::new(64, 4096);
    let p = provider(&small.mnt.join("root"));
    let target = create(&p, "t");
    fs::write(target.path().join("mine"), b"kept").unwrap();
    let (bytes0, inodes0) = small.free();

    // 20,000 empty files (a few hundred KB of stream) against 4,096 inodes.
    let mut c = Craft::new(1).dir(b"", 0o755);
    for i in 0..20_000 {
        c = c.file(format!("f{i}").as_bytes(), 0o644, b"");
    }
    let s = c.end();
    assert!(s.len() < 1 << 20);
    expect_no_space(
        receive(&p, &target, "a", &mut s.as_slice()),
        "20,000 empty files",
    );
    let (_, inodes1) = small.free();
    assert_eq!(inodes1, inodes0, "the refused receive left inodes in use");

    // One file larger than the file system.
    expect_no_space(
        receive(&p, &target, "b", &mut big_file_stream(200 << 20)),
        "200 MB file",
    );

    // A file that fits once but not twice (staging plus the snapshot copy).
    let len = bytes0 * 6 / 10;
    let s = Craft::new(2)
        .dir(b"", 0o755)
        .file(b"big", 0o644, &vec![7u8; len as usize])
        .end();
    expect_no_space(
        receive(&p, &target, "c", &mut s.as_slice()),
        "a file fitting once",
    );

    let (bytes1, inodes1) = small.free();
    assert_eq!(inodes1, inodes0, "inodes left behind");
    assert!(
        bytes1 + (1 << 20) >= bytes0,
        "space left behind: {bytes0} -> {bytes1}"
    );
    assert_eq!(fs::read(target.path().join("mine")).unwrap(), b"kept");

    // What fits is received.
    let s = Craft::new(3)
        .dir(b"", 0o755)
        .file(b"small", 0o644, &[1u8; 4096])
        .end();
    receive(&p, &target, "d", &mut s.as_slice()).unwrap();
    assert_eq!(
        fs::read(target.path().join("small")).unwrap(),
        vec![1u8; 4096]
    );
}
