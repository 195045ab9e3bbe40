//! Attacks from inside a volume: a process that can write a volume's content
//! (a container) races the agent, which runs as root. Each test performs the
//! attack for real and checks that nothing outside the volume was read,
//! changed or removed, and that no operation blocked on volume content.

#[path = "common/config.rs"]
mod config;
mod security_support;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use security_support::*;
use volmgr::manager::{Manager, ManagerConfig, ManagerError};
use volmgr::provider::dir::DirProvider;
use volmgr::provider::{Provider, ProviderError, SendOptions};
use volmgr::state::Meta;

const SECRET: &[u8] = b"TOPSECRET-do-not-copy";
const KEEP: &[u8] = b"keep me";

/// `outside/` with `keep.txt` and a 0700 `secret/secret.txt`.
fn outside(tmp: &Path) -> std::path::PathBuf {
    let out = tmp.join("outside");
    fs::create_dir_all(out.join("secret")).unwrap();
    fs::write(out.join("keep.txt"), KEEP).unwrap();
    fs::write(out.join("secret/secret.txt"), SECRET).unwrap();
    fs::set_permissions(out.join("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    out
}

fn assert_outside_intact(out: &Path) {
    assert_eq!(
        fs::read(out.join("keep.txt")).unwrap(),
        KEEP,
        "keep.txt was removed or changed"
    );
    assert_eq!(
        fs::read(out.join("secret/secret.txt")).unwrap(),
        SECRET,
        "the secret was removed or changed"
    );
}

/// Fails if any file under `root` holds the secret.
fn assert_no_secret(root: &Path) {
    for (path, _) in listing(root) {
        if let Ok(md) = path.symlink_metadata()
            && md.is_file()
        {
            let content = fs::read(&path).unwrap();
            assert!(
                !content.windows(SECRET.len()).any(|w| w == SECRET),
                "{} holds the secret from outside the volume",
                path.display()
            );
        }
    }
}

/// A racer inside a volume: through a handle on the volume's directory (as a
/// container's bind mount would), exchanges `a` and `b` as fast as it can
/// until told to stop. Counts its successful swaps.
struct Racer {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Racer {
    fn start(dir: &Path, a: &str, b: &str) -> Racer {
        let fd = fs::File::open(dir).unwrap();
        let (a, b) = (CString::new(a).unwrap(), CString::new(b).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (stop2, swaps2) = (stop.clone(), swaps.clone());
        let thread = std::thread::spawn(move || {
            use std::os::unix::io::AsRawFd;
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: valid descriptor and names.
                let rc = unsafe {
                    libc::renameat2(
                        fd.as_raw_fd(),
                        a.as_ptr(),
                        fd.as_raw_fd(),
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                if rc == 0 {
                    swaps2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Racer {
            stop,
            swaps,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.swaps.load(Ordering::Relaxed)
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fills `vol` with the race's pair: `d/` (a directory of files) and `s`, a
/// symlink to `outside`.
fn arm(vol: &Path, outside: &Path, files: usize) {
    fs::create_dir(vol.join("d")).unwrap();
    for i in 0..files {
        fs::write(vol.join(format!("d/f{i}")), b"ordinary").unwrap();
    }
    fs::create_dir(vol.join("d/secret")).unwrap();
    fs::write(vol.join("d/keep.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink(outside, vol.join("s")).unwrap();
}

const ROUNDS: usize = 40;

#[test]
fn a_symlink_swap_race_never_makes_snapshot_fork_send_receive_or_destroy_act_outside_the_volume() {
    if !have_root("symlink swap race") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = outside(tmp.path());
    let p = provider(&tmp.path().join("root"));
    let v = create(&p, "v");
    arm(&v.path(), &out, 50);

    // Snapshots of a volume whose content races.
    let racer = Racer::start(&v.path(), "d", "s");
    let mut snaps = Vec::new();
    for i in 0..ROUNDS {
        if let Ok(s) = snapshot(&p, &v, &format!("s{i}")) {
            snaps.push(s);
        }
    }
    let swaps = racer.stop();
    assert!(swaps > 0, "the racer never swapped");
    for s in &snaps {
        assert_no_secret(&s.path());
    }
    assert_outside_intact(&out);

    // A clean snapshot, then forks and sends of it while its tree races
    // (root can rename inside a read-only tree).
    let clean = snapshot(&p, &v, "clean").expect("snapshot without a race");
    let racer = Racer::start(&clean.path(), "d", "s");
    let mut streams = Vec::new();
    for i in 0..ROUNDS {
        if let Ok(f) = fork(&p, &clean, &format!("f{i}")) {
            assert_no_secret(&f.path());
            p.destroy(&f.r()).unwrap();
        }
        // Both stream versions (version 2 finds extents by `SEEK_DATA`).
        for sparse in [false, true] {
            let mut stream = Vec::new();
            let options = SendOptions::default().with_sparse(sparse);
            if p.send_snapshot(&clean.r(), None, &options, &mut stream)
                .is_ok()
            {
                streams.push(stream);
            }
        }
    }
    racer.stop();
    for s in &streams {
        assert!(
            !s.windows(SECRET.len()).any(|w| w == SECRET),
            "a sent stream carries the secret"
        );
    }
    assert_outside_intact(&out);

    // Receives into a volume whose old content races (the old content goes
    // to the trash and is removed while the racer swaps inside it).
    let mut stream = Vec::new();
    p.send_snapshot(&clean.r(), None, &SendOptions::default(), &mut stream)
        .unwrap();
    for i in 0..ROUNDS / 4 {
        let t = create(&p, &format!("t{i}"));
        arm(&t.path(), &out, 200);
        let racer = Racer::start(&t.path(), "d", "s");
        let _ = receive(&p, &t, &format!("r{i}"), &mut stream.as_slice());
        racer.stop();
        assert_outside_intact(&out);
    }

    // Destroys of volumes whose content races.
    for i in 0..ROUNDS / 4 {
        let victim = create(&p, &format!("x{i}"));
        arm(&victim.path(), &out, 500);
        let racer = Racer::start(&victim.path(), "d", "s");
        let _ = p.destroy(&victim.r());
        // Batched: the tree leaves the trash at the sync, racer still running.
        let _ = p.sync();
        racer.stop();
        assert_outside_intact(&out);
    }
    // Whatever a racer left in the trash is swept at the next start, still
    // without touching anything outside.
    drop(p);
    let p = provider(&tmp.path().join("root"));
    drop(p);
    assert_outside_intact(&out);
}

/// Runs `f` on another thread; a hang becomes a failure instead of a stuck
/// test (a watchdog, not a timing assertion).
fn must_return<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|_| panic!("{what} blocked on volume content"))
}

#[test]
fn a_fifo_swapped_in_for_a_regular_file_never_blocks_a_snapshot_and_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Arc::new(provider(&tmp.path().join("root")));
    let v = create(&*p, "v");
    fs::write(v.path().join("r"), b"regular").unwrap();
    let fifo = CString::new(v.path().join("p").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    // A FIFO alone: refused at once, naming it.
    let p2 = p.clone();
    let vr = (v.id.clone(), v.c.clone());
    let err = must_return("a snapshot of a volume holding a fifo", move || {
        let v = Vol {
            id: vr.0,
            kind: volmgr::state::VolumeKind::Data,
            parent: None,
            op: uuid::Uuid::now_v7(),
            c: vr.1,
        };
        snapshot(&*p2, &v, "once").err()
    })
    .expect("a fifo cannot be snapshotted");
    assert!(err.to_string().contains("is a fifo"), "{err}");
    assert!(
        matches!(err, ProviderError::UnsupportedContent(_)),
        "the tenant's content, not a provider failure: {err:?}"
    );

    // Swapped in and out for the regular file while snapshots run.
    let racer = Racer::start(&v.path(), "r", "p");
    let p2 = p.clone();
    let vr = (v.id.clone(), v.c.clone());
    let outcomes = must_return("snapshots racing a fifo swap", move || {
        let v = Vol {
            id: vr.0,
            kind: volmgr::state::VolumeKind::Data,
            parent: None,
            op: uuid::Uuid::now_v7(),
            c: vr.1,
        };
        (0..ROUNDS)
            .map(|i| {
                snapshot(&*p2, &v, &format!("s{i}"))
                    .err()
                    .map(|e| e.to_string())
            })
            .collect::<Vec<_>>()
    });
    assert!(racer.stop() > 0, "the racer never swapped");
    for e in outcomes.into_iter().flatten() {
        assert!(e.contains("is a fifo"), "unexpected error: {e}");
    }
}

#[test]
fn a_tree_deeper_than_the_limit_is_refused_by_snapshot_and_still_destroyed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(&tmp.path().join("root"));
    let v = create(&p, "v");
    // 600 levels, built relative to the previous level (the whole path is
    // longer than PATH_MAX, as a container can make it).
    let mut d = volmgr::fsutil::Dir::open(&v.path()).unwrap();
    for _ in 0..600 {
        d.create_dir(b"level-of-a-deep-tree", 0o755).unwrap();
        d = d.open_dir(b"level-of-a-deep-tree").unwrap();
    }
    drop(d);
    let err = snapshot(&p, &v, "s").err().expect("too deep to copy");
    assert!(err.to_string().contains("directories deep"), "{err}");
    assert!(
        matches!(err, ProviderError::UnsupportedContent(_)),
        "{err:?}"
    );
    p.destroy(&v.r()).unwrap();
    assert!(!v.path().exists());
    // Batched (the default): removed from the trash by the next sync.
    p.sync().unwrap();
    assert!(
        fs::read_dir(tmp.path().join("root/.trash"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// Story: a copy makes every hard link a file of its own, so a volume user
/// can make a snapshot (or a fork) far larger than the volume: one 8 MB file
/// linked 100 times is 800 MB of copy. The copy checks free space as it
/// goes and is refused with `NoSpace` before the disk is full, leaving
/// nothing behind.
/// Snapshot `s` of `v` is refused as `NoSpace` on `small` and leaves no
/// inode, no space (1 MiB of slack) and no snapshot behind; returns the
/// refusal's text.
fn snapshot_refused_for_space_leaving_nothing(small: &SmallFs, p: &DirProvider, v: &Vol) -> String {
    let (bytes0, inodes0) = small.free();
    let detail = match snapshot(p, v, "s") {
        Err(ProviderError::NoSpace { what, detail }) => format!("{what}: {detail}"),
        Err(other) => panic!("wanted NoSpace, got {other:?}"),
        Ok(_) => panic!("the copy fit on a 64 MB file system"),
    };
    let (bytes1, inodes1) = small.free();
    assert_eq!(inodes1, inodes0, "the refused snapshot left inodes in use");
    assert!(
        bytes1 + (1 << 20) >= bytes0,
        "space left behind: {bytes0} -> {bytes1}"
    );
    assert!(!small.mnt.join("root/snapshot/s").exists());
    detail
}

#[test]
fn hard_links_cannot_make_a_snapshot_fill_the_disk() {
    if !have_root("loop-mounted ext4") {
        return;
    }
    let small = SmallFs::new(64, 4096);
    let p = provider(&small.mnt.join("root"));
    let v = create(&p, "v");
    fs::write(v.path().join("big"), vec![3u8; 8 << 20]).unwrap();
    for i in 0..100 {
        fs::hard_link(v.path().join("big"), v.path().join(format!("link{i}"))).unwrap();
    }
    let detail = snapshot_refused_for_space_leaving_nothing(&small, &p, &v);
    eprintln!("refused: {detail}");
    // A snapshot of what fits still works.
    for i in 0..100 {
        fs::remove_file(v.path().join(format!("link{i}"))).unwrap();
    }
    snapshot(&p, &v, "s").unwrap();
}

/// Story: the copy assumed a reflink until a clone failed, so on a file
/// system that cannot clone (ext4) the first file it copied had no space
/// check: a volume holding one sparse file (`truncate -s 100G`, no blocks)
/// made a snapshot write zeros until the host's disk was full (4 minutes,
/// 44 GB, then `ENOSPC`). A file whose clone fails is checked before its
/// bytes are copied, like every other, so the copy is refused up front by
/// the guard (its detail names the reserve), not by a full disk. (Holes
/// are no longer copied as zeros, below; the file here is dense.)
#[test]
fn a_file_that_is_not_cloned_is_checked_for_space_before_its_bytes_are_copied() {
    if !have_root("loop-mounted ext4") {
        return;
    }
    let small = SmallFs::new(64, 4096);
    let p = provider(&small.mnt.join("root"));
    let v = create(&p, "v");
    fs::write(v.path().join("dense"), vec![7u8; 40 << 20]).unwrap();
    let detail = snapshot_refused_for_space_leaving_nothing(&small, &p, &v);
    assert!(
        detail.contains("kept in reserve"),
        "refused by a full disk, not before the copy: {detail}"
    );
    // A file that fits is still copied.
    fs::write(v.path().join("dense"), vec![7u8; 1 << 20]).unwrap();
    snapshot(&p, &v, "s").unwrap();
}

/// A volume holding a sparse file (a 1 GiB file with three small written
/// ranges, as a VM image or a preallocated database file has) was copied
/// with its holes written as zeros: 1 GiB per snapshot or fork, refused on
/// a small file system or filling a large one. The copy writes only the
/// data ranges: the snapshot of it fits on a 64 MB file system, reads the
/// same bytes, has the same length, and allocates about what the source does.
#[test]
fn a_sparse_file_is_copied_with_its_holes_kept() {
    if !have_root("loop-mounted ext4") {
        return;
    }
    let small = SmallFs::new(64, 4096);
    let p = provider(&small.mnt.join("root"));
    let v = create(&p, "v");
    let path = v.path().join("image");
    write_sparse_image(&path);
    let snap = snapshot(&p, &v, "s").expect("holes cost nothing");
    assert_same_sparse_file(&path, &snap.path().join("image"));
}

/// A version 1 stream carries a file's holes as zeros; the receiver writes
/// them as holes again (a version 2 stream carries the data only): the 1 GiB sparse file of the test above, sent from one
/// provider, is received by another on a 64 MB file system (twice its
/// data: the target and the snapshot), byte for byte, its holes kept.
#[test]
fn a_sparse_file_is_received_with_its_holes_kept() {
    if !have_root("loop-mounted ext4") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let source = provider(&tmp.path().join("source"));
    let v = create(&source, "v");
    let path = v.path().join("image");
    write_sparse_image(&path);
    let snap = snapshot(&source, &v, "s").unwrap();
    let mut stream = Vec::new();
    let stats = source
        .send_snapshot(&snap.r(), None, &SendOptions::default(), &mut stream)
        .unwrap();
    assert!(
        stream.len() > 1 << 30,
        "the stream carries the holes as zeros"
    );
    assert!(
        stats.read_bytes < 1 << 20,
        "the sender wrote the holes' zeros without reading them, but read {} bytes",
        stats.read_bytes
    );

    let small = SmallFs::new(64, 4096);
    let target = provider(&small.mnt.join("root"));
    let t = create(&target, "t");
    let got = receive(&target, &t, "r", &mut stream.as_slice()).expect("holes cost nothing");
    assert_same_sparse_file(&path, &got.path().join("image"));
    assert_same_sparse_file(&path, &t.path().join("image"));

    // Version 2 (asked for): the data ranges only, the same file received.
    let mut sparse = Vec::new();
    let options = SendOptions::default().with_sparse(true);
    source
        .send_snapshot(&snap.r(), None, &options, &mut sparse)
        .unwrap();
    assert!(
        sparse.len() < 1 << 20,
        "a version 2 stream carries the data only: {} bytes",
        sparse.len()
    );
    let t2 = create(&target, "t2");
    let got = receive(&target, &t2, "r2", &mut sparse.as_slice()).expect("holes cost nothing");
    assert_same_sparse_file(&path, &got.path().join("image"));
    assert_same_sparse_file(&path, &t2.path().join("image"));
}

/// A 1 GiB file of three small data ranges (one at each end) and holes.
fn write_sparse_image(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path).unwrap();
    f.set_len(1 << 30).unwrap();
    for (at, len, byte) in [
        (0u64, 70_000, 1u8),
        (300 << 20, 70_000, 2),
        ((1 << 30) - 5000, 5000, 3),
    ] {
        f.write_all_at(&vec![byte; len], at).unwrap();
    }
}

/// `copy` reads as `original`, byte for byte, with its length, and
/// allocates about what it does (its holes were not written).
fn assert_same_sparse_file(original: &Path, copy: &Path) {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let (src, dst) = (fs::metadata(original).unwrap(), fs::metadata(copy).unwrap());
    assert_eq!(dst.len(), src.len());
    assert!(
        dst.blocks() * 512 <= src.blocks() * 512 + (1 << 20),
        "holes written: {} bytes allocated for {} in the original",
        dst.blocks() * 512,
        src.blocks() * 512
    );
    // Byte for byte, holes included (read in 1 MiB pieces).
    let (a, b) = (
        fs::File::open(original).unwrap(),
        fs::File::open(copy).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for i in 0..src.len().div_ceil(1 << 20) {
        let n = (src.len() - (i << 20)).min(1 << 20) as usize;
        a.read_exact_at(&mut x[..n], i << 20).unwrap();
        b.read_exact_at(&mut y[..n], i << 20).unwrap();
        assert!(x[..n] == y[..n], "the copy differs in MiB {i}");
    }
}

/// Story: an incremental send compared a file present in both snapshots
/// with its base byte by byte, holes read as zeros: a tenant's sparse file
/// of several TiB holding a few KiB of data, in the base snapshot and in
/// the next one with one byte changed (or only its mtime), made the sender
/// read its whole length twice: hours of disk and CPU for a stream of a
/// few KiB. The compare follows both files' data extents
/// (`SEEK_DATA`/`SEEK_HOLE`): a range that is a hole in both is equal
/// without being read. The sends read about the files' data
/// (`SendStats::read_bytes`), the announced size is counted without
/// reading, and the receiver gets the same files, holes kept.
#[test]
fn an_incremental_send_of_a_huge_sparse_file_reads_only_its_data() {
    const HUGE: u64 = 4 << 40;
    const PIECE: u64 = 64 << 10;
    // Data at the start, in the middle and at the end; holes elsewhere.
    const DATA: [u64; 3] = [0, HUGE / 2, HUGE - PIECE];
    const DATA_BYTES: u64 = 3 * PIECE;
    let tmp = tempfile::tempdir().unwrap();
    let src = provider(&tmp.path().join("src"));
    let dst = provider(&tmp.path().join("dst"));
    let v = create(&src, "v");
    for (i, name) in ["changed", "touched"].into_iter().enumerate() {
        let f = fs::File::create(v.path().join(name)).unwrap();
        f.set_len(HUGE).unwrap();
        for (j, at) in DATA.into_iter().enumerate() {
            let byte = u8::try_from(1 + i * 3 + j).unwrap();
            std::os::unix::fs::FileExt::write_all_at(
                &f,
                &vec![byte; usize::try_from(PIECE).unwrap()],
                at,
            )
            .unwrap();
        }
    }
    let s1 = snapshot(&src, &v, "s1").expect("holes cost nothing to copy");
    // One byte changed in the middle piece; the other file only touched.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(v.path().join("changed"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", DATA[1] + 100).unwrap();
    drop(f);
    fs::File::options()
        .write(true)
        .open(v.path().join("touched"))
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    let s2 = snapshot(&src, &v, "s2").unwrap();

    let options = SendOptions::default().with_sparse(true);
    let mut full = Vec::new();
    let fstats = src
        .send_snapshot(&s1.r(), None, &options, &mut full)
        .unwrap();
    assert!(
        fstats.read_bytes <= 2 * DATA_BYTES,
        "a full send read {} bytes of files holding {} bytes of data",
        fstats.read_bytes,
        2 * DATA_BYTES
    );
    // The announced sizes are counted from metadata and extents, never
    // read: version 2 exactly the stream, version 1 with the holes' zeros.
    assert_eq!(
        src.send_size(&s1.r(), None, &options).unwrap(),
        Some(full.len() as u64)
    );
    let v1 = src
        .send_size(&s1.r(), None, &SendOptions::default())
        .unwrap()
        .unwrap();
    assert!(v1 > 2 * HUGE, "a version 1 stream carries the holes: {v1}");

    let mut incr = Vec::new();
    let istats = src
        .send_snapshot(&s2.r(), Some(&s1.r()), &options, &mut incr)
        .unwrap();
    // Compared: both files in both snapshots; sent: the changed one.
    assert!(
        istats.read_bytes <= 5 * DATA_BYTES,
        "an incremental send read {} bytes to compare files holding {} bytes of data \
         (holes read as zeros)",
        istats.read_bytes,
        2 * DATA_BYTES
    );
    eprintln!(
        "files of {HUGE} bytes holding {DATA_BYTES} of data: a full send read {} bytes, \
         an incremental one {}",
        fstats.read_bytes, istats.read_bytes
    );
    assert!(
        (incr.len() as u64) < DATA_BYTES + 4096,
        "only the changed file travels: {} bytes",
        incr.len()
    );

    let t = create(&dst, "t");
    receive(&dst, &t, "r1", &mut full.as_slice()).unwrap();
    let r2 = receive(&dst, &t, "r2", &mut incr.as_slice()).unwrap();
    for name in ["changed", "touched"] {
        let want = s2.path().join(name);
        assert_same_data_and_holes(&want, &r2.path().join(name));
        assert_same_data_and_holes(&want, &t.path().join(name));
    }
}

/// `copy` has `original`'s length, the same data extents and the same
/// bytes in them (holes elsewhere in both), found by `SEEK_DATA` and
/// `SEEK_HOLE`: a file of terabytes is compared by its data only.
fn assert_same_data_and_holes(original: &Path, copy: &Path) {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    fn extents(f: &fs::File, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = 0i64;
        while u64::try_from(pos).unwrap() < len {
            // SAFETY: lseek on an open descriptor.
            let start = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
            // ENXIO: only a hole is left.
            let Ok(start) = u64::try_from(start) else {
                break;
            };
            // SAFETY: as above.
            let end = unsafe {
                libc::lseek(
                    f.as_raw_fd(),
                    i64::try_from(start).unwrap(),
                    libc::SEEK_HOLE,
                )
            };
            let end = u64::try_from(end).expect("SEEK_HOLE after data");
            assert!(end > start, "a data extent at {start} ends at {end}");
            out.push((start, end));
            pos = i64::try_from(end).unwrap();
        }
        out
    }
    let (a, b) = (
        fs::File::open(original).unwrap(),
        fs::File::open(copy).unwrap(),
    );
    let len = a.metadata().unwrap().len();
    assert_eq!(b.metadata().unwrap().len(), len, "{}", copy.display());
    let (ea, eb) = (extents(&a, len), extents(&b, len));
    assert_eq!(ea, eb, "data extents of {}", copy.display());
    for (start, end) in ea {
        let n = usize::try_from(end - start).unwrap();
        assert!(n <= 16 << 20, "a data extent of {n} bytes");
        let (mut x, mut y) = (vec![0u8; n], vec![0u8; n]);
        a.read_exact_at(&mut x, start).unwrap();
        b.read_exact_at(&mut y, start).unwrap();
        assert!(x == y, "{} differs in [{start}, {end})", copy.display());
    }
}

#[test]
fn a_provider_never_deletes_files_it_did_not_create() {
    let tmp = tempfile::tempdir().unwrap();
    let some = tmp.path().join("some/dir");
    fs::create_dir_all(some.join(".trash/precious")).unwrap();
    fs::write(some.join(".trash/precious/file"), b"mine").unwrap();
    fs::write(some.join(".trash/top"), b"mine too").unwrap();
    let before = listing(tmp.path());

    let err = DirProvider::new(some.clone()).expect_err("a foreign non-empty root");
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("ownership marker"), "{err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let m = Manager::open(tmp.path().join("state"), ManagerConfig::default())
            .await
            .unwrap();
        let err = m
            .add_provider("p", "dir", config::root_config(&some))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ownership marker"), "{err}");
        m.close().await;
    });
    assert_eq!(
        listing(tmp.path())
            .into_iter()
            .filter(|(p, _)| p.starts_with(&some))
            .collect::<Vec<_>>(),
        before
            .into_iter()
            .filter(|(p, _)| p.starts_with(&some))
            .collect::<Vec<_>>(),
        "files under the refused root changed"
    );

    // An empty directory is taken, and marked first.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    DirProvider::new(empty.clone()).unwrap();
    assert!(empty.join(".volmgr/provider").is_file());
}

#[test]
fn a_provider_root_inside_a_volume_or_another_provider_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let m = Manager::open(tmp.path().join("state"), ManagerConfig::default())
            .await
            .unwrap();
        let p1 = tmp.path().join("p1");
        m.add_provider("p1", "dir", config::root_config(&p1))
            .await
            .unwrap();
        let v = m.create_volume("p1", Some("v"), Meta::new()).await.unwrap();
        let inside_volume = Path::new(&v.location).join("sub");
        for (what, root) in [
            ("inside a volume", inside_volume.clone()),
            ("the same root", p1.clone()),
            ("inside the provider", p1.join("nested")),
            ("holding the provider", tmp.path().to_path_buf()),
        ] {
            let err = m
                .add_provider("p2", "dir", config::root_config(&root))
                .await
                .expect_err(what);
            assert!(
                matches!(err, ManagerError::InvalidInput(_)),
                "{what}: {err:?}"
            );
        }
        // Through a symlink to the volume, too.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&v.location, &link).unwrap();
        let err = m
            .add_provider("p2", "dir", config::root_config(&link.join("x")))
            .await
            .expect_err("a symlink into a volume");
        assert!(matches!(err, ManagerError::InvalidInput(_)), "{err:?}");
        assert!(
            !inside_volume.exists(),
            "nothing was created inside the volume"
        );
        m.close().await;
    });
    // The provider on its own refuses a root inside another provider's tree.
    let err = DirProvider::new(tmp.path().join("p1/data/v/sub")).expect_err("nested");
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err:?}");
    assert!(!tmp.path().join("p1/data/v/sub").exists());
    // A sibling is fine.
    DirProvider::new(tmp.path().join("p3")).unwrap();
}

// Keep the trait in scope for the Arc<DirProvider> calls above.
#[allow(dead_code)]
fn _uses(p: &dyn Provider) -> &'static str {
    p.kind()
}
