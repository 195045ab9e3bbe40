//! Feeds arbitrary bytes to the directory provider's stream decoder
//! (versions 1 and 2: `S` sparse-file records with their extents), applied
//! into a scratch directory that holds a base tree (with symlinks pointing
//! out of it, a read-only directory and a FIFO), as a receive would.
//!
//! Invariants:
//!
//! 1. No input panics, aborts, blocks or allocates without bound.
//! 2. Nothing outside the scratch directory changes: a sibling `outside/`
//!    tree (a canary file, a directory the base's symlinks point to) is
//!    byte-for-byte and mode-for-mode what it was.
//! 3. Nothing inside ends up setuid or setgid, and every entry is a
//!    directory, regular file or symlink (no FIFO, device or socket was
//!    created; the FIFO of the base may only have been removed).
#![no_main]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use libfuzzer_sys::fuzz_target;
use volmgr_core::provider::dir::wire;

struct Scratch {
    _tmp: PathBuf,
    outside: PathBuf,
    inside: PathBuf,
    fingerprint: Vec<(PathBuf, u32, Vec<u8>)>,
}

/// Every entry under `root` with its mode and, if `content`, a regular
/// file's bytes. The inside tree is walked without content: an `S` record
/// may leave a file of up to 2^44 bytes there that is all hole, which the
/// decoder rightly accepts and no harness should read whole.
fn walk(root: &Path, content: bool) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let md = e.path().symlink_metadata().unwrap();
            let content = if content && md.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            out.push((e.path(), md.mode(), content));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        let tmp =
            std::env::temp_dir().join(format!("volmgr-fuzz-dir-stream-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let outside = tmp.join("outside");
        fs::create_dir_all(outside.join("d")).unwrap();
        fs::write(outside.join("canary"), b"canary").unwrap();
        fs::write(outside.join("d/f"), b"f").unwrap();
        let inside = tmp.join("in");
        let fp = walk(&outside, true);
        Scratch {
            _tmp: tmp,
            outside,
            inside,
            fingerprint: fp,
        }
    })
}

/// The base tree an incremental stream applies to.
fn lay_base(s: &Scratch) {
    let i = &s.inside;
    if i.exists() {
        let mut stack = vec![i.clone()];
        while let Some(d) = stack.pop() {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        fs::remove_dir_all(i).unwrap();
    }
    fs::create_dir_all(i.join("a/b")).unwrap();
    fs::write(i.join("a/file"), b"base").unwrap();
    symlink(&s.outside, i.join("out")).unwrap();
    symlink("../../outside/d", i.join("a/up")).unwrap();
    fs::create_dir(i.join("ro")).unwrap();
    fs::set_permissions(i.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
    let fifo =
        std::ffi::CString::new(i.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
}

/// Whether the last input may have changed the base tree (it got past the
/// 48-byte header), so the base is laid again before the next one.
static DIRTY: AtomicBool = AtomicBool::new(true);

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    if DIRTY.swap(false, Ordering::Relaxed) {
        lay_base(s);
    }
    let mut input = data;
    let _ = wire::apply_stream(&mut input, &s.inside);
    assert!(
        walk(&s.outside, true) == s.fingerprint,
        "something outside the scratch tree changed"
    );
    if data.len() <= 48 || !data.starts_with(b"VMGRDIRS") {
        return;
    }
    DIRTY.store(true, Ordering::Relaxed);
    for (path, mode, _) in walk(&s.inside, false) {
        assert_eq!(mode & 0o6000, 0, "{} is setuid or setgid", path.display());
        let t = mode & libc::S_IFMT;
        assert!(
            t == libc::S_IFDIR
                || t == libc::S_IFREG
                || t == libc::S_IFLNK
                || path.ends_with("fifo"),
            "{} has type {t:o}",
            path.display()
        );
    }
});
