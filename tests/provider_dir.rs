//! The directory provider against a real file system: idempotence, read-only
//! snapshots, forks, full and incremental transfers, hostile streams,
//! inventory and cleanup.

mod security_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use security_support::{Vol, create, fork, provider, snapshot, spec};
use uuid::Uuid;
use volmgr::model::VolumeId;
use volmgr::provider::dir::{self, DirProvider};
use volmgr::provider::{
    Durability, Presence, Provider, ProviderConfig, ProviderError, SendOptions, SendStats,
    VolumeRef, builtin_factories,
};
use volmgr::state::{DETAIL_GUID, OpId, VolumeKind};

// ---------------------------------------------------------------- helpers

/// A volume's GUID detail.
fn guid_of(v: &Vol) -> &str {
    &v.c.details[DETAIL_GUID]
}

/// Receives `stream` into `target` as snapshot `id`.
fn receive(p: &DirProvider, target: &Vol, id: &str, stream: &[u8]) -> Result<Vol, ProviderError> {
    security_support::receive(p, target, id, &mut &stream[..])
}

fn send(p: &DirProvider, snap: &Vol, base: Option<&Vol>) -> (Vec<u8>, SendStats) {
    let mut out = Vec::new();
    let base_ref = base.map(Vol::r);
    let stats = p
        .send_snapshot(
            &snap.r(),
            base_ref.as_ref(),
            &SendOptions::default(),
            &mut out,
        )
        .expect("send");
    assert_eq!(stats.bytes, out.len() as u64, "stats count every byte");
    (out, stats)
}

/// Deterministic pseudo-random bytes (xorshift), so copies are real copies.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File { mode: u32, len: u64, crc: u32 },
    Link(PathBuf),
    Other,
}

/// Every entry under `root` (relative path -> type, mode, content digest),
/// without following symlinks.
fn listing(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let md = fs::symlink_metadata(&path).unwrap();
        let mode = md.mode() & 0o7777;
        let entry = if md.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
            Entry::Dir(mode)
        } else if md.file_type().is_symlink() {
            Entry::Link(fs::read_link(&path).unwrap())
        } else if md.is_file() {
            Entry::File {
                mode,
                len: md.len(),
                crc: crc32fast::hash(&fs::read(&path).unwrap()),
            }
        } else {
            Entry::Other
        };
        out.insert(rel, entry);
    }
    out
}

/// The listing as a read-only snapshot stores it: no write bits.
fn without_write(l: &BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, Entry> {
    l.iter()
        .map(|(k, v)| {
            let v = match v.clone() {
                Entry::Dir(m) => Entry::Dir(m & !0o222),
                Entry::File { mode, len, crc } => Entry::File {
                    mode: mode & !0o222,
                    len,
                    crc,
                },
                other => other,
            };
            (k.clone(), v)
        })
        .collect()
}

/// A varied tree: nested dirs, a symlink, an empty file, a 3 MB file, a
/// read-only file, a group-writable directory, an executable.
fn fill_varied(root: &Path) {
    write(&root.join("hello.txt"), b"hello\n", 0o644);
    write(&root.join("empty"), b"", 0o644);
    write(&root.join("big.bin"), &noise(3 * 1024 * 1024, 7), 0o640);
    write(&root.join("a/b/c/deep.txt"), b"deep", 0o600);
    write(&root.join("a/ro.txt"), b"read only", 0o444);
    write(&root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    fs::create_dir_all(root.join("shared")).unwrap();
    // Sticky travels; setuid and setgid never do (see security_streams.rs).
    chmod(&root.join("shared"), 0o1775);
    write(&root.join("shared/notes"), b"team", 0o664);

    symlink("hello.txt", root.join("link-to-hello")).unwrap();
    symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9 \x01odd name");
    write(&root.join("a").join(latin1), b"not utf-8", 0o644);
}

fn is_stream_err(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Stream(_))
}

fn staging_entries(root: &Path) -> usize {
    fs::read_dir(root.join(".staging")).unwrap().count()
}

// ---------------------------------------------------------------- tests

#[test]
fn create_and_destroy_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let op = Uuid::now_v7();
    let first = p.create_volume(&spec("v1", op, VolumeKind::Data)).unwrap();
    assert_eq!(
        first.location,
        tmp.path().join("data/v1").to_str().unwrap(),
        "location is the volume's directory"
    );
    assert!(first.details.is_empty(), "a data volume has no guid");
    fs::write(Path::new(&first.location).join("f"), b"kept").unwrap();
    let again = p.create_volume(&spec("v1", op, VolumeKind::Data)).unwrap();
    assert_eq!(again, first, "same id and op: the same volume");
    assert_eq!(
        fs::read(Path::new(&first.location).join("f")).unwrap(),
        b"kept",
        "a repeated create does not reset the volume"
    );
    let other = p.create_volume(&spec("v1", Uuid::now_v7(), VolumeKind::Data));
    assert!(
        matches!(other, Err(ProviderError::AlreadyExists(_))),
        "{other:?}"
    );

    let v = Vol {
        id: "v1".into(),
        kind: VolumeKind::Data,
        parent: None,
        op,
        c: first,
    };
    p.destroy(&v.r()).unwrap();
    assert!(!v.path().exists());
    assert!(
        !tmp.path().join(".volmgr/data/v1").exists(),
        "marker removed"
    );
    p.destroy(&v.r()).unwrap();
    assert!(p.inventory().unwrap().is_empty());
    // Batched (the default), the tree leaves the trash at the next sync.
    p.sync().unwrap();
    assert_eq!(
        fs::read_dir(tmp.path().join(".trash")).unwrap().count(),
        0,
        "the trash is emptied"
    );

    // The id is free again, for a new operation.
    let v2 = create(&p, "v1");
    assert_ne!(v2.op, op);
}

#[test]
fn snapshot_is_read_only_and_equals_source() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let v = create(&p, "src");
    fill_varied(&v.path());
    let source = listing(&v.path());
    let s = snapshot(&p, &v, "snap").expect("snapshot");
    assert_eq!(s.path(), tmp.path().join("snapshot/snap"));
    let guid = guid_of(&s);
    assert_eq!(guid.len(), 32);
    assert!(guid.bytes().all(|b| b.is_ascii_hexdigit()));

    let snap = listing(&s.path());
    for (rel, e) in &snap {
        if let Entry::Dir(m) | Entry::File { mode: m, .. } = e {
            assert_eq!(m & 0o222, 0, "{rel:?} has write bits: {m:o}");
        }
    }
    assert_eq!(snap, without_write(&source), "same tree, modes minus w");

    // The source stays writable and unchanged; a new snapshot gets a new guid.
    assert_eq!(listing(&v.path()), source);
    let s2 = snapshot(&p, &v, "snap2").expect("snapshot");
    assert_ne!(guid_of(&s2), guid);

    // Idempotent with the same op; taken by another op: AlreadyExists.
    let again = p
        .create_snapshot(&v.r(), &spec("snap", s.op, VolumeKind::Snapshot))
        .unwrap();
    assert_eq!(again, s.c);
    let clash = p.create_snapshot(&v.r(), &spec("snap", Uuid::now_v7(), VolumeKind::Snapshot));
    assert!(
        matches!(clash, Err(ProviderError::AlreadyExists(_))),
        "{clash:?}"
    );

    // Destroy copes with the read-only tree.
    p.destroy(&s.r()).unwrap();
    assert!(!s.path().exists());
}

#[test]
fn fork_is_writable_and_independent_of_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let v = create(&p, "src");
    fill_varied(&v.path());
    let source = listing(&v.path());
    let s = snapshot(&p, &v, "snap").expect("snapshot");
    let snap_before = listing(&s.path());
    let f = fork(&p, &s, "fork").expect("fork");
    assert_eq!(
        listing(&f.path()),
        source,
        "a fork has the source's true modes back (0444 stays 0444, 1775 stays 1775)"
    );
    let md = fs::metadata(f.path().join("hello.txt")).unwrap();
    assert_ne!(md.mode() & 0o200, 0, "fork files are writable");

    fs::write(f.path().join("hello.txt"), b"changed").unwrap();
    fs::write(f.path().join("new"), b"new").unwrap();
    fs::remove_file(f.path().join("big.bin")).unwrap();
    assert_eq!(listing(&s.path()), snap_before, "the snapshot is untouched");

    let inv = p.inventory().unwrap();
    let tag = inv
        .iter()
        .find_map(|f| f.tag.as_ref().filter(|t| t.volume == "fork"))
        .expect("fork in inventory");
    assert_eq!(tag.parent.as_deref(), Some("snap"));
    assert_eq!(tag.kind, VolumeKind::Data);

    // Only snapshots can be forked.
    let bad = p.fork_volume(&v.r(), &spec("fork2", Uuid::now_v7(), VolumeKind::Data));
    assert!(bad.is_err());
    assert!(!tmp.path().join("data/fork2").exists());
}

#[test]
fn full_send_receive_between_two_providers_gives_identical_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let a = provider(&tmp.path().join("a"));
    let b = provider(&tmp.path().join("b"));
    let v = create(&a, "vol");
    fill_varied(&v.path());
    chmod(&v.path(), 0o750);
    let s = snapshot(&a, &v, "s1").expect("snapshot");

    let target = create(&b, "copy");
    write(&target.path().join("junk/old.txt"), b"goes away", 0o644);
    let (stream, stats) = send(&a, &s, None);
    assert!(!stats.incremental);
    let r = receive(&b, &target, "r1", &stream).unwrap();

    assert_eq!(listing(&r.path()), listing(&s.path()), "snapshot equal");
    assert_eq!(
        listing(&target.path()),
        listing(&v.path()),
        "target content is the stream's, with its true modes (recv -F)"
    );
    assert_eq!(
        guid_of(&r),
        guid_of(&s),
        "a received snapshot keeps the sender's guid"
    );
    assert_eq!(staging_entries(b.root()), 0);

    // Identical content gives an identical stream, whichever side sends.
    let (again, _) = send(&b, &r, None);
    assert_eq!(again, stream);

    let inv = b.inventory().unwrap();
    let found = inv
        .iter()
        .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == "r1"))
        .unwrap();
    assert_eq!(found.presence, Presence::Complete);
    assert_eq!(found.details[DETAIL_GUID], guid_of(&s));
    assert_eq!(found.location, r.c.location);
    assert_eq!(found.tag.as_ref().unwrap().parent.as_deref(), Some("copy"));
}

#[test]
fn incremental_send_carries_only_changes_and_deletions() {
    let tmp = tempfile::tempdir().unwrap();
    let a = provider(&tmp.path().join("a"));
    let b = provider(&tmp.path().join("b"));
    let v = create(&a, "vol");
    for i in 0..5 {
        write(
            &v.path().join(format!("blobs/{i}.bin")),
            &noise(1024 * 1024, i + 1),
            0o644,
        );
    }
    for i in 0..20 {
        write(
            &v.path().join(format!("small/{i}.txt")),
            format!("small file {i}\n").as_bytes(),
            0o644,
        );
    }
    let s1 = snapshot(&a, &v, "s1").expect("snapshot");
    let (full, fstats) = send(&a, &s1, None);
    let target = create(&b, "t");
    let r1 = receive(&b, &target, "r1", &full).unwrap();

    // Change one small file, add one, delete one, change one mode.
    fs::write(v.path().join("small/3.txt"), b"changed content\n").unwrap();
    write(&v.path().join("small/new.txt"), b"brand new\n", 0o600);
    fs::remove_file(v.path().join("small/7.txt")).unwrap();
    chmod(&v.path().join("small/9.txt"), 0o600);
    let s2 = snapshot(&a, &v, "s2").expect("snapshot");
    let (incr, istats) = send(&a, &s2, Some(&s1));
    assert!(istats.incremental);
    println!(
        "full stream: {} bytes; incremental stream: {} bytes ({:.4}%)",
        fstats.bytes,
        istats.bytes,
        100.0 * istats.bytes as f64 / fstats.bytes as f64
    );
    assert!(fstats.bytes > 5 * 1024 * 1024);
    assert!(
        istats.bytes * 5 < fstats.bytes,
        "incremental {} vs full {}",
        istats.bytes,
        fstats.bytes
    );
    assert!(istats.bytes < 1024, "only the small changes travel");

    let r2 = receive(&b, &target, "r2", &incr).unwrap();
    assert_eq!(listing(&r2.path()), listing(&s2.path()));
    assert_eq!(listing(&target.path()), listing(&v.path()));
    assert!(
        !target.path().join("small/7.txt").exists(),
        "deletion carried"
    );
    assert!(!r2.path().join("small/7.txt").exists());
    assert_eq!(guid_of(&r2), guid_of(&s2));
    assert_eq!(
        listing(&r1.path()),
        listing(&s1.path()),
        "the base snapshot is untouched"
    );
    let mode = fs::metadata(target.path().join("small/9.txt"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode change carried");

    // An incremental of nothing is tiny and changes nothing.
    let s3 = snapshot(&a, &v, "s3").expect("snapshot");
    let (nothing, _) = send(&a, &s3, Some(&s2));
    assert!(nothing.len() < 100, "{} bytes", nothing.len());
    receive(&b, &target, "r3", &nothing).unwrap();
    assert_eq!(listing(&target.path()), listing(&v.path()));
}

#[test]
fn incremental_stream_handles_type_changes_and_root_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let a = provider(&tmp.path().join("a"));
    let b = provider(&tmp.path().join("b"));
    let v = create(&a, "vol");
    write(&v.path().join("was-file"), b"file", 0o644);
    write(&v.path().join("was-dir/inner/x"), b"x", 0o644);
    symlink("one", v.path().join("link")).unwrap();
    write(&v.path().join("was-link"), b"", 0o644);
    fs::remove_file(v.path().join("was-link")).unwrap();
    symlink("somewhere", v.path().join("was-link")).unwrap();
    write(&v.path().join("gone-dir/a/b"), b"b", 0o644);
    let s1 = snapshot(&a, &v, "s1").expect("snapshot");
    let target = create(&b, "t");
    receive(&b, &target, "r1", &send(&a, &s1, None).0).unwrap();

    fs::remove_file(v.path().join("was-file")).unwrap();
    write(&v.path().join("was-file/now-inside"), b"inside", 0o644);
    fs::remove_dir_all(v.path().join("was-dir")).unwrap();
    write(&v.path().join("was-dir"), b"now a file", 0o644);
    fs::remove_file(v.path().join("link")).unwrap();
    symlink("two", v.path().join("link")).unwrap();
    fs::remove_file(v.path().join("was-link")).unwrap();
    fs::create_dir(v.path().join("was-link")).unwrap();
    fs::remove_dir_all(v.path().join("gone-dir")).unwrap();
    chmod(&v.path(), 0o700);
    let s2 = snapshot(&a, &v, "s2").expect("snapshot");
    let (incr, stats) = send(&a, &s2, Some(&s1));
    assert!(stats.incremental);
    let r2 = receive(&b, &target, "r2", &incr).unwrap();
    assert_eq!(listing(&r2.path()), listing(&s2.path()));
    assert_eq!(listing(&target.path()), listing(&v.path()));
}

#[test]
fn incremental_receive_without_its_base_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = provider(&tmp.path().join("a"));
    let b = provider(&tmp.path().join("b"));
    let v = create(&a, "vol");
    write(&v.path().join("f"), b"one", 0o644);
    let s1 = snapshot(&a, &v, "s1").expect("snapshot");
    fs::write(v.path().join("f"), b"two").unwrap();
    let s2 = snapshot(&a, &v, "s2").expect("snapshot");
    let (incr, _) = send(&a, &s2, Some(&s1));

    let target = create(&b, "t");
    write(&target.path().join("mine"), b"local", 0o644);
    let before = listing(b.root());
    let inv_before = b.inventory().unwrap();
    let err = receive(&b, &target, "r2", &incr).err().expect("must fail");
    assert!(is_stream_err(&err), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(guid_of(&s1)) && msg.contains("not present"),
        "the message names the missing base: {msg}"
    );
    assert_eq!(listing(b.root()), before, "nothing left behind");
    assert_eq!(b.inventory().unwrap(), inv_before);
    assert_eq!(staging_entries(b.root()), 0);

    // A snapshot with that guid but of another volume is not a base either.
    let other = create(&b, "other");
    let (full, _) = send(&a, &s1, None);
    receive(&b, &other, "r1", &full).unwrap();
    let err = receive(&b, &target, "r2", &incr).err().expect("must fail");
    assert!(is_stream_err(&err), "{err:?}");
}

/// Builds streams by hand, following the documented format.
struct Craft {
    b: Vec<u8>,
    n: u64,
}

impl Craft {
    fn new(guid: u128, base: Option<u128>) -> Self {
        let mut b = Vec::new();
        b.extend_from_slice(b"VMGRDIRS");
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&u16::from(base.is_some()).to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&guid.to_be_bytes());
        b.extend_from_slice(&base.unwrap_or(0).to_be_bytes());
        Craft { b, n: 0 }
    }

    fn rec(mut self, tag: u8, path: &[u8]) -> Self {
        self.n += 1;
        self.b.push(tag);
        self.b
            .extend_from_slice(&u16::try_from(path.len()).unwrap().to_be_bytes());
        self.b.extend_from_slice(path);
        self
    }

    fn u32(mut self, v: u32) -> Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Self {
        self.b.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn raw(mut self, bytes: &[u8]) -> Self {
        self.b.extend_from_slice(bytes);
        self
    }

    fn dir(self, path: &str, mode: u32) -> Self {
        self.rec(b'D', path.as_bytes()).u32(mode)
    }

    fn file(self, path: &str, mode: u32, content: &[u8]) -> Self {
        self.rec(b'F', path.as_bytes())
            .u32(mode)
            .u64(content.len() as u64)
            .raw(content)
    }

    fn link(self, path: &str, target: &str) -> Self {
        self.rec(b'L', path.as_bytes())
            .raw(&u16::try_from(target.len()).unwrap().to_be_bytes())
            .raw(target.as_bytes())
    }

    fn end(self) -> Vec<u8> {
        let n = self.n;
        let mut b = self.raw(b"E").u64(n).b;
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }
}

#[test]
fn hostile_streams_fail_cleanly_without_touching_anything_outside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    write(&outside.join("precious"), b"do not touch", 0o644);
    let p = provider(&tmp.path().join("root"));
    let target = create(&p, "t");
    write(&target.path().join("mine"), b"local", 0o644);
    let before = listing(tmp.path());
    let check_clean = |what: &str| {
        assert_eq!(listing(tmp.path()), before, "{what}: something changed");
    };

    // A small valid stream, crafted by hand: it is accepted as a whole...
    let valid = Craft::new(0x00ab_cdef, None)
        .dir("", 0o755)
        .dir("d", 0o755)
        .file("d/f", 0o644, b"content")
        .link("l", "d/f")
        .end();
    // ...and refused when truncated at every byte.
    for cut in 0..valid.len() {
        let err = receive(&p, &target, "cut", &valid[..cut])
            .err()
            .unwrap_or_else(|| panic!("a stream cut at byte {cut} was accepted"));
        assert!(is_stream_err(&err), "cut at {cut}: {err:?}");
        check_clean(&format!("cut at {cut}"));
    }

    let bad_magic = {
        let mut b = valid.clone();
        b[0] = b'X';
        b
    };
    let bad_crc = {
        let mut b = valid.clone();
        let n = b.len();
        b[n - 1] ^= 0xff;
        b
    };
    let flipped_content = {
        let mut b = valid.clone();
        let at = b.windows(7).position(|w| w == b"content").unwrap();
        b[at] = b'C';
        b
    };
    let escape_to = format!("{}/evil", outside.display());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad magic", bad_magic),
        ("bad checksum", bad_crc),
        ("content changed in flight", flipped_content),
        (
            "../escape",
            Craft::new(1, None)
                .dir("", 0o755)
                .file("../escape", 0o644, b"x")
                .end(),
        ),
        (
            "nested ..",
            Craft::new(1, None)
                .dir("", 0o755)
                .dir("a", 0o755)
                .file("a/../../../../outside/evil", 0o644, b"x")
                .end(),
        ),
        (
            "absolute path",
            Craft::new(1, None)
                .dir("", 0o755)
                .file(&escape_to, 0o644, b"x")
                .end(),
        ),
        (
            "NUL in a path",
            Craft::new(1, None)
                .dir("", 0o755)
                .file("a\0b", 0o644, b"x")
                .end(),
        ),
        (
            "write through a symlink",
            Craft::new(1, None)
                .dir("", 0o755)
                .link("l", outside.to_str().unwrap())
                .file("l/evil", 0o644, b"x")
                .end(),
        ),
        (
            "directory through a symlink",
            Craft::new(1, None)
                .dir("", 0o755)
                .link("l", outside.to_str().unwrap())
                .dir("l/evil", 0o755)
                .end(),
        ),
        (
            "huge declared file length",
            Craft::new(1, None)
                .dir("", 0o755)
                .rec(b'F', b"f")
                .u32(0o644)
                .u64(u64::MAX)
                .raw(b"tiny")
                .end(),
        ),
        (
            "declared 1 GiB, carries 4 bytes",
            Craft::new(1, None)
                .dir("", 0o755)
                .rec(b'F', b"f")
                .u32(0o644)
                .u64(1 << 30)
                .raw(b"tiny")
                .end(),
        ),
        (
            "path longer than 4096",
            Craft::new(1, None)
                .dir("", 0o755)
                .file(&"a".repeat(5000), 0o644, b"x")
                .end(),
        ),
        (
            "huge link target",
            Craft::new(1, None)
                .dir("", 0o755)
                .rec(b'L', b"l")
                .raw(&u16::MAX.to_be_bytes())
                .raw(b"short")
                .end(),
        ),
        (
            "mode with file-type bits",
            Craft::new(1, None).dir("", 0o40755).end(),
        ),
        (
            "unknown record",
            Craft::new(1, None).dir("", 0o755).rec(b'Z', b"x").end(),
        ),
        (
            "entry count mismatch",
            Craft::new(1, None)
                .dir("", 0o755)
                .raw(b"E")
                .u64(7)
                .raw(&[0, 0, 0, 0])
                .b,
        ),
        ("full stream naming a base", {
            let mut b = Craft::new(1, None).dir("", 0o755).end();
            b[8 + 2 + 2 + 4 + 16 + 15] = 1;
            b
        }),
        ("empty input", Vec::new()),
    ];
    for (what, stream) in &cases {
        let err = receive(&p, &target, "evil", stream)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(is_stream_err(&err), "{what}: {err:?}");
        check_clean(what);
    }

    let ok = receive(&p, &target, "fine", &valid).unwrap();
    assert_eq!(fs::read(ok.path().join("d/f")).unwrap(), b"content");
    assert_eq!(
        fs::read_link(target.path().join("l")).unwrap(),
        PathBuf::from("d/f")
    );
    assert!(!target.path().join("mine").exists(), "target replaced");
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"do not touch");
}

/// `Provider::lookup` of each id (the manager's question after a failed
/// call) gives exactly what the inventory reports as tagged with it, or
/// nothing when the inventory has nothing tagged so.
#[track_caller]
fn the_lookup_of_each_id_agrees_with_the_inventory(p: &DirProvider, ids: &[&str]) {
    let inv = p.inventory().unwrap();
    for id in ids {
        let from_inventory = inv
            .iter()
            .find(|f| f.tag.as_ref().is_some_and(|t| t.volume == *id));
        let looked_up = p.lookup(VolumeId::new(id).unwrap()).unwrap();
        assert_eq!(looked_up.as_ref(), from_inventory, "lookup of {id}");
    }
}

#[test]
fn a_lookup_judges_a_marker_beside_a_file_a_symlink_or_nothing_as_the_inventory_does() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = provider(root);
    let vol = create(&p, "vol");
    let _snap = snapshot(&p, &vol, "snap").expect("snapshot");
    // Whole markers whose path holds a file, a symlink to a directory, or
    // nothing; half-made markers with and without their directory.
    for (id, state) in [
        ("file", "complete"),
        ("link", "complete"),
        ("nothing", "complete"),
        ("creating-bare", "creating"),
        ("receiving-bare", "receiving"),
    ] {
        hand_marker(root, "data", id, Uuid::now_v7(), None, state);
    }
    fs::write(root.join("data/file"), b"not a directory").unwrap();
    symlink(root.join("data/vol"), root.join("data/link")).unwrap();
    // A snapshot marker copying beside a directory, and one with the id of
    // a data volume (the data one is reported first, by both).
    hand_marker(
        root,
        "snapshot",
        "copying",
        Uuid::now_v7(),
        Some("vol"),
        "copying",
    );
    fs::create_dir(root.join("snapshot/copying")).unwrap();
    hand_marker(
        root,
        "snapshot",
        "vol",
        Uuid::now_v7(),
        Some("vol"),
        "copying",
    );
    let inv = p.inventory().unwrap();
    assert!(
        inv.iter().any(|f| f.name.ends_with("data/file")
            && matches!(&f.presence, Presence::Incomplete { reason } if reason.contains("not a directory"))),
        "{inv:#?}"
    );
    the_lookup_of_each_id_agrees_with_the_inventory(
        &p,
        &[
            "vol",
            "snap",
            "file",
            "link",
            "nothing",
            "creating-bare",
            "receiving-bare",
            "copying",
            "absent",
        ],
    );
}

/// Writes a marker by hand (the documented JSON), as a crash would leave it.
fn hand_marker(root: &Path, kind: &str, id: &str, op: OpId, parent: Option<&str>, state: &str) {
    let parent = parent.map_or("null".to_owned(), |p| format!("\"{p}\""));
    let json = format!(
        r#"{{"format":1,"volume":"{id}","op":"{op}","kind":"{}","parent":{parent},"guid":null,"state":"{state}"}}"#,
        if kind == "data" { "Data" } else { "Snapshot" }
    );
    fs::write(root.join(".volmgr").join(kind).join(id), json).unwrap();
}

#[test]
fn inventory_reports_tagged_foreign_and_incomplete_items() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = provider(root);
    let v = create(&p, "vol");
    let s = snapshot(&p, &v, "snap").expect("snapshot");
    fs::create_dir(root.join("data/foreign")).unwrap();
    fs::write(root.join("snapshot/stray-file"), b"?").unwrap();

    // A create interrupted after its marker: marker "creating", no
    // directory: absent (the create did not happen; the marker is stale).
    let op_create = Uuid::now_v7();
    hand_marker(root, "data", "half", op_create, None, "creating");
    // A snapshot interrupted mid-copy.
    let op_copy = Uuid::now_v7();
    hand_marker(
        root,
        "snapshot",
        "mid-copy",
        op_copy,
        Some("vol"),
        "copying",
    );
    write(&root.join("snapshot/mid-copy/partial"), b"part", 0o444);
    // A damaged marker: not provably ours.
    fs::create_dir(root.join("data/damaged")).unwrap();
    fs::write(root.join(".volmgr/data/damaged"), b"{not json").unwrap();
    // A marker a power cut garbled before its directory was made: absent.
    fs::write(root.join(".volmgr/data/torn"), b"\0\0\0").unwrap();
    // A complete marker whose directory is gone: absent (lost), not listed.
    let gone = create(&p, "gone");
    fs::remove_dir(gone.path()).unwrap();

    let inv = p.inventory().unwrap();
    let by_name = |n: &str| {
        inv.iter()
            .find(|f| f.name.ends_with(n))
            .unwrap_or_else(|| panic!("{n} not in {inv:#?}"))
    };
    let vol = by_name("data/vol");
    assert_eq!(vol.presence, Presence::Complete);
    let tag = vol.tag.as_ref().unwrap();
    assert_eq!(
        (tag.volume.as_str(), tag.op, tag.kind),
        ("vol", v.op, VolumeKind::Data)
    );
    let snap = by_name("snapshot/snap");
    assert_eq!(snap.presence, Presence::Complete);
    assert_eq!(snap.details[DETAIL_GUID], guid_of(&s));
    assert_eq!(snap.tag.as_ref().unwrap().parent.as_deref(), Some("vol"));

    let foreign = by_name("data/foreign");
    assert_eq!(foreign.tag, None, "untagged: foreign");
    assert_eq!(by_name("snapshot/stray-file").tag, None);
    let damaged = by_name("data/damaged");
    assert_eq!(damaged.tag, None, "a damaged marker proves nothing");
    assert!(matches!(damaged.presence, Presence::Incomplete { .. }));

    assert!(
        !inv.iter().any(|f| f.name.ends_with("data/half")),
        "a creating marker without its directory is absent: {inv:#?}"
    );
    let mid = by_name("snapshot/mid-copy");
    assert!(
        matches!(&mid.presence, Presence::Incomplete { reason } if reason.contains("copy")),
        "{mid:?}"
    );
    assert!(!inv.iter().any(|f| f.name.ends_with("data/gone")));
    assert_eq!(inv.len(), 6, "{inv:#?}");
    assert!(!inv.iter().any(|f| f.name.ends_with("data/torn")));
    the_lookup_of_each_id_agrees_with_the_inventory(
        &p,
        &[
            "vol",
            "snap",
            "foreign",
            "stray-file",
            "damaged",
            "torn",
            "half",
            "mid-copy",
            "gone",
            "never",
        ],
    );
    // ... and a create of its id replaces it.
    assert!(create(&p, "torn").path().is_dir());

    // A new create of the id replaces the stale marker of operation
    // `op_create`; a creating marker with its directory is whole.
    let again = create(&p, "half");
    assert_ne!(again.op, op_create);
    assert!(again.path().is_dir());
    // finish: the half-made copy cannot be finished.
    assert!(p.finish(mid).is_err());
    assert!(
        p.finish(foreign).is_err(),
        "foreign items are never touched"
    );
    let inv = p.inventory().unwrap();
    assert_eq!(by_name_in(&inv, "data/half").presence, Presence::Complete);

    // Destroy removes half-made items (read-only partial content included),
    // and refuses what it cannot prove is ours.
    let mid_ref = VolumeRef {
        id: VolumeId::new("mid-copy").unwrap(),
        kind: VolumeKind::Snapshot,
        parent: Some("vol"),
        location: &mid.location,
        details: &mid.details,
    };
    p.destroy(&mid_ref).unwrap();
    assert!(!root.join("snapshot/mid-copy").exists());
    assert!(!root.join(".volmgr/snapshot/mid-copy").exists());
    let foreign_ref = VolumeRef {
        id: VolumeId::new("foreign").unwrap(),
        kind: VolumeKind::Data,
        parent: None,
        location: &foreign.location,
        details: &foreign.details,
    };
    assert!(p.destroy(&foreign_ref).is_err());
    assert!(root.join("data/foreign").is_dir(), "foreign data untouched");
    let damaged_ref = VolumeRef {
        id: VolumeId::new("damaged").unwrap(),
        ..foreign_ref
    };
    assert!(p.destroy(&damaged_ref).is_err());
    assert!(root.join("data/damaged").is_dir());
    // The lost volume's marker goes with an explicit destroy.
    p.destroy(&gone.r()).unwrap();
    assert!(!root.join(".volmgr/data/gone").exists());
}

/// A create's first marker is made in place, and a stale one under its
/// name (empty or cut short as a crash leaves a new file, or whole but
/// naming another op whose directory is gone) is replaced, not kept:
/// batched and durable on return alike, the new volume's marker names the
/// new op and the inventory reports it whole.
#[test]
fn a_create_replaces_a_stale_marker_left_under_its_name() {
    for durability in [Durability::Batched, Durability::OnReturn] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let p = DirProvider::with_durability(root.to_path_buf(), durability).unwrap();
        let marker = |id: &str| root.join(".volmgr/data").join(id);
        fs::write(marker("empty"), b"").unwrap();
        fs::write(marker("cut"), b"{\n  \"format\": 1,\n  \"vol").unwrap();
        hand_marker(root, "data", "gone", Uuid::now_v7(), None, "complete");
        for id in ["empty", "cut", "gone", "new"] {
            let v = create(&p, id);
            let text = fs::read_to_string(marker(id)).unwrap();
            assert!(
                text.contains(&v.op.to_string()),
                "{durability:?} {id}: the marker names the new op: {text}"
            );
            assert!(v.path().is_dir(), "{durability:?} {id}");
        }
        p.sync().unwrap();
        let inv = p.inventory().unwrap();
        assert_eq!(inv.len(), 4, "{durability:?}: {inv:?}");
        assert!(
            inv.iter()
                .all(|f| f.tag.is_some() && f.presence == Presence::Complete),
            "{durability:?}: {inv:?}"
        );
        let names: Vec<_> = fs::read_dir(root.join(".volmgr/data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            4,
            "{durability:?}: no temp file left: {names:?}"
        );
    }
}

#[test]
fn a_create_over_an_entry_it_did_not_make_is_refused_and_tags_nothing() {
    for durability in [Durability::Batched, Durability::OnReturn] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let p = DirProvider::with_durability(root.to_path_buf(), durability).unwrap();
        let marker = |id: &str| root.join(".volmgr/data").join(id);
        // Untagged entries at the volume's path: a directory, a file.
        fs::create_dir(root.join("data/dir")).unwrap();
        fs::write(root.join("data/dir/tenant"), b"theirs").unwrap();
        fs::write(root.join("data/file"), b"theirs").unwrap();
        for id in ["dir", "file"] {
            let made = p.create_volume(&spec(id, Uuid::now_v7(), VolumeKind::Data));
            assert!(
                matches!(made, Err(ProviderError::AlreadyExists(_))),
                "{durability:?} {id}: {made:?}"
            );
            assert!(
                fs::symlink_metadata(marker(id)).is_err(),
                "{durability:?} {id}: no marker for an entry the provider did not make"
            );
        }
        assert_eq!(fs::read(root.join("data/dir/tenant")).unwrap(), b"theirs");
        assert_eq!(fs::read(root.join("data/file")).unwrap(), b"theirs");
        // A whole volume of another operation: refused, its marker unchanged.
        let v = create(&p, "taken");
        let before = fs::read(marker("taken")).unwrap();
        let again = p.create_volume(&spec("taken", Uuid::now_v7(), VolumeKind::Data));
        assert!(
            matches!(again, Err(ProviderError::AlreadyExists(_))),
            "{durability:?}: {again:?}"
        );
        assert_eq!(fs::read(marker("taken")).unwrap(), before, "{durability:?}");
        // Its own operation's retry answers as the first call did.
        let retried = p
            .create_volume(&spec("taken", v.op, VolumeKind::Data))
            .unwrap();
        assert_eq!(retried.location, v.c.location, "{durability:?}");
    }
}

/// What a batched create interrupted by a power cut may leave untagged (its
/// marker and directory become durable in one round, so the cut may keep
/// the directory alone, or with a garbled marker) is removed by
/// `clear_interrupted_create` for that create's id and op; nothing else is:
/// not a complete volume of that op, not another op's volume, not a
/// directory with entries, not a non-directory.
#[test]
fn an_interrupted_create_leaves_nothing_untagged_but_foreign_items_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("p");
    let p = provider(&root);
    let op = Uuid::now_v7();
    let marker = |id: &str| root.join(".volmgr/data").join(id);
    let data = |id: &str| root.join("data").join(id);

    // The directory alone, and the directory with a garbled marker.
    fs::create_dir(data("alone")).unwrap();
    fs::create_dir(data("garbled")).unwrap();
    fs::write(marker("garbled"), b"{\"format\":1,\"vol").unwrap();
    // A marker of this op whose directory never became durable.
    hand_marker(&root, "data", "no-dir", op, None, "creating");
    for id in ["alone", "garbled", "no-dir"] {
        p.clear_interrupted_create(&spec(id, op, VolumeKind::Data))
            .expect("cleared");
        assert!(!data(id).exists(), "{id}: the untagged directory is gone");
        assert!(!marker(id).exists(), "{id}: the stale marker is gone");
        // Idempotent, and the id is free again.
        p.clear_interrupted_create(&spec(id, op, VolumeKind::Data))
            .expect("again");
        create(&p, id);
    }
    assert!(
        p.inventory().unwrap().iter().all(|f| f.tag.is_some()),
        "nothing foreign is left"
    );

    // A whole volume of this op: the table rolls it forward; left alone.
    let whole = Uuid::now_v7();
    p.create_volume(&spec("whole", whole, VolumeKind::Data))
        .unwrap();
    p.clear_interrupted_create(&spec("whole", whole, VolumeKind::Data))
        .unwrap();
    assert!(data("whole").is_dir() && marker("whole").is_file());
    // Another op's volume (made earlier, full): left alone.
    p.clear_interrupted_create(&spec("whole", op, VolumeKind::Data))
        .unwrap();
    assert!(data("whole").is_dir() && marker("whole").is_file());
    // Untagged content, a non-directory, and a symlink to an empty
    // directory elsewhere: foreign, never touched (nor followed).
    write(&data("content").join("precious"), b"keep", 0o644);
    fs::write(data("file"), b"keep").unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, data("link")).unwrap();
    for id in ["content", "file", "link"] {
        p.clear_interrupted_create(&spec(id, op, VolumeKind::Data))
            .unwrap();
    }
    assert_eq!(fs::read(data("content").join("precious")).unwrap(), b"keep");
    assert_eq!(fs::read(data("file")).unwrap(), b"keep");
    assert!(elsewhere.is_dir() && data("link").is_symlink());
    let foreign: Vec<_> = p
        .inventory()
        .unwrap()
        .into_iter()
        .filter(|f| f.tag.is_none())
        .map(|f| f.name)
        .collect();
    assert_eq!(foreign.len(), 3, "all still reported foreign: {foreign:?}");
}

fn by_name_in<'a>(inv: &'a [volmgr::provider::Found], n: &str) -> &'a volmgr::provider::Found {
    inv.iter().find(|f| f.name.ends_with(n)).unwrap()
}

#[test]
fn finish_redoes_an_interrupted_fork_from_its_immutable_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = provider(root);
    let v = create(&p, "vol");
    fill_varied(&v.path());
    let s = snapshot(&p, &v, "snap").expect("snapshot");
    let op = Uuid::now_v7();
    hand_marker(root, "data", "fk", op, Some("snap"), "copying");
    write(&root.join("data/fk/partial"), b"half", 0o644);
    let inv = p.inventory().unwrap();
    let found = by_name_in(&inv, "data/fk");
    assert!(matches!(found.presence, Presence::Incomplete { .. }));
    let created = p.finish(found).unwrap();
    assert_eq!(listing(Path::new(&created.location)), listing(&v.path()));
    let _ = s;
}

#[test]
fn abort_partial_removes_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let op = Uuid::now_v7();
    let staging = tmp.path().join(".staging").join(op.to_string());
    write(&staging.join("new/a/b/file"), b"x", 0o444);
    chmod(&staging.join("new/a/b"), 0o555);
    chmod(&staging.join("new/a"), 0o500);
    let outside = tmp.path().join("outside-target");
    write(&outside.join("keep"), b"keep", 0o644);
    symlink(&outside, staging.join("new/link-out")).unwrap();
    let other = tmp.path().join(".staging").join(Uuid::now_v7().to_string());
    fs::create_dir_all(&other).unwrap();

    p.abort_partial(op).unwrap();
    assert!(!staging.exists());
    assert!(other.exists(), "only that operation's staging");
    assert_eq!(
        fs::read(outside.join("keep")).unwrap(),
        b"keep",
        "links not followed"
    );
    p.abort_partial(op).unwrap();
}

#[test]
fn special_files_are_refused_naming_the_path_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let v = create(&p, "vol");
    write(&v.path().join("ok"), b"fine", 0o644);
    let fifo = v.path().join("sub/pipe");
    fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = p
        .create_snapshot(&v.r(), &spec("s", Uuid::now_v7(), VolumeKind::Snapshot))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sub/pipe") && msg.contains("fifo"), "{msg}");
    assert!(!tmp.path().join("snapshot/s").exists());
    assert!(!tmp.path().join(".volmgr/snapshot/s").exists());
    assert_eq!(p.inventory().unwrap().len(), 1);
}

#[test]
fn destroy_never_follows_symlinks_out_of_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    write(&outside.join("precious"), b"keep", 0o444);
    let p = provider(&tmp.path().join("root"));
    let v = create(&p, "vol");
    symlink(&outside, v.path().join("out")).unwrap();
    symlink(outside.join("precious"), v.path().join("file-out")).unwrap();
    write(&v.path().join("ro/inner"), b"x", 0o444);
    chmod(&v.path().join("ro"), 0o555);
    let s = snapshot(&p, &v, "snap").expect("snapshot");
    assert_eq!(
        fs::read_link(s.path().join("out")).unwrap(),
        outside,
        "links are copied as links"
    );
    p.destroy(&s.r()).unwrap();
    p.destroy(&v.r()).unwrap();
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep");
    assert!(
        p.inventory().unwrap().is_empty(),
        "{:?}",
        p.inventory().unwrap()
    );
}

#[test]
fn unsafe_ids_are_refused_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let long = "x".repeat(300);
    for id in [
        "../x",
        "a/b",
        "",
        ".hidden",
        "-flag",
        "..",
        "a\0b",
        "sp ace",
        long.as_str(),
    ] {
        // The provider interface takes a `VolumeId`, which cannot hold an
        // unsafe id; the provider's own check refuses it too.
        assert!(VolumeId::new(id).is_err(), "{id:?} is a VolumeId");
        let err = dir::check_id(id);
        assert!(
            matches!(err, Err(ProviderError::Other(_))),
            "{id:?}: {err:?}"
        );
    }
    assert!(p.inventory().unwrap().is_empty());
    assert_eq!(fs::read_dir(tmp.path().join("data")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(tmp.path().join(".volmgr/data"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn config_requires_one_absolute_root_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nested/root");
    let cfg = ProviderConfig::from([("root".to_owned(), root.to_str().unwrap().to_owned())]);
    let p = DirProvider::from_config(&cfg).unwrap();
    assert!(root.join("data").is_dir(), "the root is created");
    assert_eq!(p.config(), cfg);
    assert_eq!(p.kind(), dir::KIND);

    let factory = builtin_factories()
        .remove(dir::KIND)
        .expect("dir is a built-in");
    let built = factory(&cfg, &volmgr::provider::AgentId::generate()).unwrap();
    assert_eq!(built.config(), cfg);

    for bad in [
        ProviderConfig::new(),
        ProviderConfig::from([("root".to_owned(), "relative/path".to_owned())]),
        ProviderConfig::from([("root".to_owned(), "/a/../b".to_owned())]),
        ProviderConfig::from([
            ("root".to_owned(), root.to_str().unwrap().to_owned()),
            ("bogus".to_owned(), "1".to_owned()),
        ]),
    ] {
        let r = DirProvider::from_config(&bad);
        assert!(
            matches!(r, Err(ProviderError::InvalidConfig(_))),
            "{bad:?}: {r:?}"
        );
    }
    let file = tmp.path().join("a-file");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        DirProvider::new(file),
        Err(ProviderError::InvalidConfig(_))
    ));
}

#[test]
fn a_destroy_interrupted_after_the_trash_rename_is_finished_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = provider(root);
    let v = create(&p, "vol");
    write(&v.path().join("f"), b"x", 0o444);
    let keep = create(&p, "keep");
    // The crash: the tree went to the trash, the marker stayed.
    let trashed = root.join(format!(".trash/item.data.{}.0123.vol", v.op));
    fs::rename(v.path(), &trashed).unwrap();
    // A stale trash entry of an older op must not take a newer marker along.
    let stale = root.join(format!(".trash/item.data.{}.4567.keep", Uuid::now_v7()));
    fs::create_dir(&stale).unwrap();
    let inv = p.inventory().unwrap();
    assert!(
        !inv.iter().any(|f| f.name.ends_with("data/vol")),
        "a marker without its directory is absent: {inv:#?}"
    );
    drop(p);

    let p = provider(root);
    assert!(
        !root.join(".volmgr/data/vol").exists(),
        "marker removed by the sweep"
    );
    assert_eq!(fs::read_dir(root.join(".trash")).unwrap().count(), 0);
    let inv = p.inventory().unwrap();
    assert_eq!(inv.len(), 1, "{inv:#?}");
    assert_eq!(inv[0].tag.as_ref().unwrap().op, keep.op, "keep survives");
    // The id is free again.
    create(&p, "vol");
}

/// The names in the provider's trash.
fn trash_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join(".trash"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_batched_destroy_leaves_its_tree_in_the_trash_until_the_next_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = provider(root);
    let v = create(&p, "vol");
    write(&v.path().join("d/f"), b"content", 0o444);
    p.destroy(&v.r()).unwrap();
    assert!(!v.path().exists(), "out of the namespace on return");
    assert!(
        !root.join(".volmgr/data/vol").exists(),
        "marker removed on return"
    );
    assert!(p.inventory().unwrap().is_empty());
    let names = trash_names(root);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with(&format!("item.data.{}.", v.op))
            && names[0].rsplit('.').next() == Some("vol"),
        "named after the item, for the start's sweep: {names:?}"
    );
    assert_eq!(
        fs::read(root.join(".trash").join(&names[0]).join("d/f")).unwrap(),
        b"content"
    );
    // The id is free at once, while the old tree waits.
    let again = create(&p, "vol");
    p.sync().unwrap();
    assert_eq!(
        trash_names(root),
        Vec::<String>::new(),
        "the sync removed it"
    );
    assert!(again.path().is_dir(), "the new volume is untouched");
}

#[test]
fn a_destroy_durable_on_return_empties_the_trash_before_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = DirProvider::with_durability(root.to_path_buf(), Durability::OnReturn).unwrap();
    let v = create(&p, "vol");
    write(&v.path().join("f"), b"x", 0o644);
    p.destroy(&v.r()).unwrap();
    assert!(!v.path().exists());
    assert!(!root.join(".volmgr/data/vol").exists());
    assert_eq!(trash_names(root), Vec::<String>::new());
}

#[test]
fn a_tree_a_batched_destroy_left_in_the_trash_is_removed_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = provider(root);
    let v = create(&p, "vol");
    write(&v.path().join("f"), b"x", 0o444);
    p.destroy(&v.r()).unwrap();
    // Dropped (or killed) before any sync: the tree stays in the trash.
    drop(p);
    assert_eq!(trash_names(root).len(), 1);
    let p = provider(root);
    assert_eq!(trash_names(root), Vec::<String>::new(), "swept at start");
    assert!(p.inventory().unwrap().is_empty());
    create(&p, "vol");
}

#[test]
fn finish_completes_a_receive_interrupted_after_the_swap_and_refuses_before() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = provider(root);
    let target = create(&p, "t");
    write(&target.path().join("old"), b"old", 0o644);
    let swapped_marker = |id: &str, op: OpId, dev: u64, ino: u64| {
        let json = format!(
            r#"{{"format":1,"volume":"{id}","op":"{op}","kind":"Snapshot","parent":"t","guid":"{:032x}","state":{{"swapping":{{"dev":{dev},"ino":{ino}}}}}}}"#,
            0x1234u128
        );
        fs::write(root.join(".volmgr/snapshot").join(id), json).unwrap();
    };

    // Crash before the exchange: the staged tree is still in staging.
    let op = Uuid::now_v7();
    let new = root.join(".staging").join(op.to_string()).join("new");
    write(&new.join("fresh"), b"new", 0o644);
    write(&root.join("snapshot/before/fresh"), b"new", 0o444);
    let md = fs::metadata(&new).unwrap();
    swapped_marker("before", op, md.dev(), md.ino());
    let inv = p.inventory().unwrap();
    let found = by_name_in(&inv, "snapshot/before");
    assert!(matches!(found.presence, Presence::Incomplete { .. }));
    assert!(p.finish(found).is_err(), "the target was not replaced");
    assert!(target.path().join("old").exists());
    p.abort_partial(op).unwrap();
    p.destroy(&VolumeRef {
        id: VolumeId::new("before").unwrap(),
        kind: VolumeKind::Snapshot,
        parent: Some("t"),
        location: &found.location,
        details: &found.details,
    })
    .unwrap();

    // Crash after the exchange: the target's directory is the staged one.
    let op = Uuid::now_v7();
    let staging = root.join(".staging").join(op.to_string());
    let new = staging.join("new");
    write(&new.join("fresh"), b"new", 0o644);
    chmod(&new, 0o700);
    write(&root.join("snapshot/after/fresh"), b"new", 0o444);
    chmod(&root.join("snapshot/after"), 0o555);
    let md = fs::metadata(&new).unwrap();
    swapped_marker("after", op, md.dev(), md.ino());
    fs::rename(target.path(), staging.join("old")).unwrap();
    fs::rename(&new, target.path()).unwrap();
    let inv = p.inventory().unwrap();
    let found = by_name_in(&inv, "snapshot/after");
    let created = p.finish(found).unwrap();
    assert_eq!(created.details[DETAIL_GUID], format!("{:032x}", 0x1234u128));
    assert_eq!(fs::read(target.path().join("fresh")).unwrap(), b"new");
    assert!(!target.path().join("old").exists());
    assert_eq!(
        fs::metadata(target.path()).unwrap().mode() & 0o7777,
        0o755,
        "the target root gets the snapshot's true root mode"
    );
    assert!(!staging.exists(), "staging (the old content) removed");
    let inv = p.inventory().unwrap();
    assert_eq!(
        by_name_in(&inv, "snapshot/after").presence,
        Presence::Complete
    );
}

#[test]
fn restrictive_modes_survive_receive_send_and_fork_even_unprivileged() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let t = create(&p, "t");
    let stream = Craft::new(0x5eed, None)
        .dir("", 0o751)
        .dir("locked", 0o300)
        .file("locked/secret", 0o000, b"s3cret")
        .file("locked/wo", 0o200, b"write only")
        .file("plain", 0o644, b"plain")
        .end();
    let r = receive(&p, &t, "r", &stream).unwrap();
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    // Stored in the snapshot: no write bits, but readable by its owner.
    assert_eq!(mode(&r.path().join("locked")), 0o500);
    assert_eq!(mode(&r.path().join("locked/secret")), 0o400);
    assert_eq!(mode(&r.path().join("locked/wo")), 0o400);
    assert_eq!(mode(&r.path()), 0o551);
    // The target carries the true modes.
    assert_eq!(mode(&t.path()), 0o751);
    assert_eq!(mode(&t.path().join("locked")), 0o300);
    assert_eq!(mode(&t.path().join("locked/secret")), 0o000);
    assert_eq!(mode(&t.path().join("locked/wo")), 0o200);
    // Sending the snapshot gives back the very same bytes (same guid, same
    // true modes, same order).
    let (again, _) = send(&p, &r, None);
    assert_eq!(again, stream);
    // A fork has the true modes.
    let f = fork(&p, &r, "f").expect("fork");
    assert_eq!(mode(&f.path().join("locked")), 0o300);
    assert_eq!(mode(&f.path().join("locked/secret")), 0o000);
    // Everything goes away cleanly.
    for v in [&f, &r, &t] {
        p.destroy(&v.r()).unwrap();
    }
    assert!(p.inventory().unwrap().is_empty());
}

/// The inventory reads every marker through one handle of its directory,
/// trusting the listing's entry type to skip a `stat` before each open. A
/// marker replaced by a fifo is refused without blocking the scan (so a
/// start never hangs on it), and one replaced by a symlink to a valid
/// marker of the same volume elsewhere is not followed: both volumes show
/// as incomplete, untagged, naming what their marker is; the others stay
/// whole.
#[test]
fn the_inventory_never_blocks_on_nor_follows_a_marker_that_is_no_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let p = provider(&root);
    create(&p, "whole");
    create(&p, "piped");
    create(&p, "linked");
    let markers = root.join(".volmgr/data");
    // A copy of `linked`'s own marker outside the marker directory.
    let elsewhere = tmp.path().join("linked-marker");
    fs::copy(markers.join("linked"), &elsewhere).unwrap();
    fs::remove_file(markers.join("linked")).unwrap();
    symlink(&elsewhere, markers.join("linked")).unwrap();
    fs::remove_file(markers.join("piped")).unwrap();
    let fifo = std::ffi::CString::new(markers.join("piped").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(p.inventory());
    });
    let inv = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the inventory returns: it never blocks on a fifo")
        .unwrap();
    let by_name = |suffix: &str| {
        inv.iter()
            .find(|f| f.name.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} in {inv:#?}"))
    };
    assert_eq!(by_name("data/whole").presence, Presence::Complete);
    for (name, what) in [("data/piped", "is a fifo"), ("data/linked", "is a symlink")] {
        let f = by_name(name);
        assert_eq!(f.tag, None, "{name}: no tag taken from it");
        assert!(
            matches!(&f.presence, Presence::Incomplete { reason } if reason.contains(what)),
            "{name}: {f:?}"
        );
    }
    assert_eq!(inv.len(), 3, "{inv:#?}");
}

/// A root that is a symlink to a directory passed the configuration check
/// (which followed it), then failed to open (`O_NOFOLLOW`): 500
/// `provider_failed`, "Not a directory", for a configuration mistake. It is
/// refused as invalid configuration, saying it is a symlink, and nothing is
/// created where it points.
#[test]
fn a_root_that_is_a_symlink_is_invalid_configuration_naming_the_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    let link = tmp.path().join("link");
    symlink(&target, &link).unwrap();
    let err = DirProvider::new(link.clone()).expect_err("a symlink root");
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(
        fs::read_dir(&target).unwrap().next().is_none(),
        "nothing made where the symlink points"
    );
}
