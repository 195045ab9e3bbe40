//! The stream format's versions 1 and 2 through the real encoder and
//! decoder: sparse layouts round trip with their data maps, a version 1
//! request never sees an `S` record, every damaged version 2 stream is an
//! error, hostile `S` records are refused with their reasons.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::super::send;
use super::super::tree::{self, Modes, Policy};
use super::*;
use crate::provider::SendOptions;
use crate::provider::stream::HashWriter;

const BLOCK: u64 = 4096;
const GUID: u128 = 0x5eed;

/// Non-zero bytes, different at every offset (a zero chunk would be left a
/// hole by the receiver and change the data map).
fn pattern(offset: u64, n: u64) -> Vec<u8> {
    (offset..offset + n)
        .map(|i| ((i * 31 + 7) % 251) as u8 | 1)
        .collect()
}

/// A file of `len` bytes with data at `extents` (`[start, end)`), holes
/// elsewhere. An extent of [`ZEROS_AT`] has written zeros from there on (data
/// to `SEEK_DATA`, a hole to the receiver).
fn holey(path: &Path, len: u64, extents: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    for &(start, end) in extents {
        let mut data = pattern(start, end - start);
        if start == ZEROS_AT {
            data[usize::try_from(CHUNK_LEN).unwrap()..].fill(0);
        }
        f.write_all_at(&data, start).unwrap();
    }
    f.set_len(len).unwrap();
}

const CHUNK_LEN: u64 = crate::provider::stream::CHUNK as u64;
/// The offset of the extent that ends in a chunk of written zeros.
const ZEROS_AT: u64 = 3 * CHUNK_LEN;

/// The file's data ranges as `SEEK_DATA`/`SEEK_HOLE` report them.
fn data_map(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut map = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(start) = tree::seek_data(&f, pos, libc::SEEK_DATA).unwrap() else {
            break;
        };
        let end = tree::seek_data(&f, start, libc::SEEK_HOLE)
            .unwrap()
            .unwrap_or(len)
            .min(len);
        map.push((start, end));
        pos = end;
    }
    map
}

fn options(sparse: bool) -> SendOptions {
    SendOptions::default().with_sparse(sparse)
}

/// The stream of the tree `src`, version 2 if `sparse`; checked to be as
/// long as the stream's size estimate says (`send_size` is exact).
fn stream_of(src: &Path, sparse: bool) -> Vec<u8> {
    let modes = Modes::new(Policy::Plain);
    let mut out = Vec::new();
    let stats = send::send(src, &modes, GUID, None, options(sparse), &mut out).unwrap();
    assert_eq!(stats.bytes, out.len() as u64, "stats count every byte");
    let size = send::stream_size(src, &modes, GUID, options(sparse)).unwrap();
    assert_eq!(
        size,
        out.len() as u64,
        "the size estimate is the stream's size"
    );
    out
}

/// Applies `stream` to a new empty directory.
fn receive(stream: &[u8]) -> (tempfile::TempDir, Result<u64, ProviderError>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    fs::create_dir(&dir).unwrap();
    let applied = apply_stream(&mut &stream[..], &dir);
    (tmp, applied)
}

/// A sink that records each record's tag and path, reading content away.
struct Tags {
    tags: Vec<(u8, Vec<u8>)>,
    data: u64,
    modes: Modes,
}

impl<R: Read> Sink<R> for Tags {
    fn dir(&mut self, rel: &[u8], _mode: u32) -> Result<(), ProviderError> {
        self.tags.push((TAG_DIR, rel.to_vec()));
        Ok(())
    }
    fn file(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        _mode: u32,
        len: u64,
    ) -> Result<(), ProviderError> {
        r.copy_exact(len, &mut io::sink(), "content")?;
        self.data += len;
        self.tags.push((TAG_FILE, rel.to_vec()));
        Ok(())
    }
    fn sparse(
        &mut self,
        r: &mut HashReader<R>,
        rel: &[u8],
        _mode: u32,
        _len: u64,
        extents: &mut Extents<'_>,
    ) -> Result<(), ProviderError> {
        while let Some((_, n)) = extents.next(r)? {
            r.copy_exact(n, &mut io::sink(), "content")?;
            self.data += n;
        }
        self.tags.push((TAG_SPARSE, rel.to_vec()));
        Ok(())
    }
    fn link(&mut self, rel: &[u8], _target: &[u8]) -> Result<(), ProviderError> {
        self.tags.push((TAG_LINK, rel.to_vec()));
        Ok(())
    }
    fn perm(&mut self, rel: &[u8], _mode: u32) -> Result<(), ProviderError> {
        self.tags.push((TAG_PERM, rel.to_vec()));
        Ok(())
    }
    fn delete(&mut self, rel: &[u8]) -> Result<(), ProviderError> {
        self.tags.push((TAG_DELETE, rel.to_vec()));
        Ok(())
    }
    fn modes(&self) -> &Modes {
        &self.modes
    }
    fn totals(&self) -> (u64, u64) {
        (self.tags.len() as u64, self.data)
    }
}

/// The stream's version and its records' tags and paths.
fn tags_of(stream: &[u8]) -> (u16, Tags) {
    let mut r = HashReader::new(stream);
    let header = read_header(&mut r).unwrap();
    let mut tags = Tags {
        tags: Vec::new(),
        data: 0,
        modes: Modes::new(Policy::Staging),
    };
    decode(&mut r, &header, &mut tags).unwrap();
    (header.version, tags)
}

/// The layouts of the round trip.
/// A layout: name, length, data extents `[start, end)`.
type Layout = (&'static str, u64, Vec<(u64, u64)>);

fn layouts() -> Vec<Layout> {
    let b = BLOCK;
    vec![
        ("hole_at_start", 64 * b, vec![(32 * b, 64 * b)]),
        ("hole_in_middle", 64 * b, vec![(0, 8 * b), (40 * b, 64 * b)]),
        ("hole_at_end", 64 * b, vec![(0, 8 * b)]),
        ("hole_at_unaligned_end", 64 * b + 17, vec![(0, b)]),
        ("all_hole", 64 * b, vec![]),
        ("no_hole", 64 * b, vec![(0, 64 * b)]),
        ("empty", 0, vec![]),
        // The receiver leaves the zeros a hole, and keeps what came before.
        (
            "zeros_ending_a_late_extent",
            8 * CHUNK_LEN,
            vec![(0, b), (ZEROS_AT, ZEROS_AT + 2 * CHUNK_LEN)],
        ),
        (
            "many_extents",
            64 * b,
            (0..16)
                .map(|i| (2 * i * b + b, 2 * i * b + 2 * b))
                .collect(),
        ),
    ]
}

#[test]
fn sparse_layouts_round_trip_through_version_2_with_their_data_maps() {
    let src = tempfile::tempdir().unwrap();
    for (name, len, extents) in layouts() {
        holey(&src.path().join(name), len, &extents);
        assert_eq!(data_map(&src.path().join(name)), extents, "{name}: source");
    }
    let stream = stream_of(src.path(), true);
    let (version, tags) = tags_of(&stream);
    assert_eq!(version, VERSION_SPARSE);
    for (name, len, extents) in layouts() {
        let has_hole = extents != [(0, len)] && len > 0;
        let tag = tags
            .tags
            .iter()
            .find(|(_, rel)| rel == name.as_bytes())
            .unwrap()
            .0;
        let want = if has_hole { TAG_SPARSE } else { TAG_FILE };
        assert_eq!(tag, want, "{name}: record");
    }
    let data: u64 = layouts()
        .iter()
        .flat_map(|(_, _, e)| e.iter().map(|(s, e)| e - s))
        .sum();
    assert_eq!(
        tags.data, data,
        "the stream carries the data and nothing else"
    );
    let (tmp, applied) = receive(&stream);
    applied.unwrap();
    for (name, len, extents) in layouts() {
        let got = tmp.path().join("r").join(name);
        let want = fs::read(src.path().join(name)).unwrap();
        assert_eq!(fs::metadata(&got).unwrap().len(), len, "{name}: length");
        assert!(fs::read(&got).unwrap() == want, "{name}: content");
        let map = if name == "zeros_ending_a_late_extent" {
            vec![(0, BLOCK), (ZEROS_AT, ZEROS_AT + CHUNK_LEN)]
        } else {
            extents
        };
        assert_eq!(data_map(&got), map, "{name}: data map");
    }
}

#[test]
fn a_version_1_request_gets_version_1_byte_for_byte_with_holes_as_zeros() {
    let src = tempfile::tempdir().unwrap();
    let len = 8 * BLOCK;
    holey(&src.path().join("f"), len, &[(2 * BLOCK, 3 * BLOCK)]);
    fs::set_permissions(src.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.path().join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    let stream = stream_of(src.path(), false);
    let (version, tags) = tags_of(&stream);
    assert_eq!(version, VERSION);
    assert!(
        tags.tags.iter().all(|(tag, _)| *tag != TAG_SPARSE),
        "no S record in a version 1 stream"
    );
    // What a receiver that predates version 2 (Flynn's) has always read.
    let mut w = HashWriter::new(Vec::new());
    w.write_all(MAGIC).unwrap();
    w.write_all(&1u16.to_be_bytes()).unwrap();
    w.write_all(&0u16.to_be_bytes()).unwrap();
    w.write_all(&0u32.to_be_bytes()).unwrap();
    w.write_all(&GUID.to_be_bytes()).unwrap();
    w.write_all(&0u128.to_be_bytes()).unwrap();
    w.write_all(&[b'D', 0, 0]).unwrap();
    w.write_all(&0o755u32.to_be_bytes()).unwrap();
    w.write_all(&[b'F', 0, 1, b'f']).unwrap();
    w.write_all(&0o644u32.to_be_bytes()).unwrap();
    w.write_all(&len.to_be_bytes()).unwrap();
    w.write_all(&fs::read(src.path().join("f")).unwrap())
        .unwrap();
    w.write_all(b"E").unwrap();
    w.write_all(&2u64.to_be_bytes()).unwrap();
    let crc = w.crc();
    w.write_unhashed(&crc.to_be_bytes()).unwrap();
    assert!(stream == w.into_inner(), "the version 1 stream is today's");
}

/// A small version 2 stream: a directory, a sparse file with two extents,
/// a plain file.
fn small_v2() -> Vec<u8> {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    let f = File::create(src.path().join("d/s")).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 5 * BLOCK).unwrap();
    f.set_len(8 * BLOCK).unwrap();
    fs::write(src.path().join("p"), b"plain").unwrap();
    let stream = stream_of(src.path(), true);
    let (_, tags) = tags_of(&stream);
    assert!(tags.tags.iter().any(|(t, _)| *t == TAG_SPARSE));
    stream
}

#[test]
fn every_cut_and_flipped_byte_of_a_version_2_stream_is_an_error() {
    let stream = small_v2();
    let (_tmp, whole) = receive(&stream);
    whole.unwrap();
    for cut in 0..stream.len() {
        let (_tmp, applied) = receive(&stream[..cut]);
        assert!(
            matches!(applied, Err(ProviderError::Stream(_))),
            "cut at {cut}: {applied:?}"
        );
    }
    // One flip per byte, the lowest, highest or every bit by turns.
    for at in 0..stream.len() {
        let flip = [0x01u8, 0x80, 0xff][at % 3];
        let mut bad = stream.clone();
        bad[at] ^= flip;
        let (_tmp, applied) = receive(&bad);
        assert!(
            matches!(applied, Err(ProviderError::Stream(_))),
            "byte {at} ^ {flip:#x}: {applied:?}"
        );
    }
}

/// A stream of a root directory and one `S` record for `f` whose body
/// (after its mode) is `body`, with a valid end record.
fn with_sparse_record(version: u16, body: &[u8]) -> Vec<u8> {
    let mut w = HashWriter::new(Vec::new());
    w.write_all(MAGIC).unwrap();
    w.write_all(&version.to_be_bytes()).unwrap();
    w.write_all(&0u16.to_be_bytes()).unwrap();
    w.write_all(&0u32.to_be_bytes()).unwrap();
    w.write_all(&GUID.to_be_bytes()).unwrap();
    w.write_all(&0u128.to_be_bytes()).unwrap();
    w.write_all(&[TAG_DIR, 0, 0]).unwrap();
    w.write_all(&0o755u32.to_be_bytes()).unwrap();
    w.write_all(&[TAG_SPARSE, 0, 1, b'f']).unwrap();
    w.write_all(&0o644u32.to_be_bytes()).unwrap();
    w.write_all(body).unwrap();
    w.write_all(&[TAG_END]).unwrap();
    w.write_all(&2u64.to_be_bytes()).unwrap();
    let crc = w.crc();
    w.write_unhashed(&crc.to_be_bytes()).unwrap();
    w.into_inner()
}

/// An `S` record body: `len`, then each extent with `n` bytes of data
/// (none past `data_max` bytes: a stream that ends there), then the
/// terminator `(end_offset, 0)`.
fn body(len: u64, extents: &[(u64, u64)], end_offset: u64) -> Vec<u8> {
    let mut b = len.to_be_bytes().to_vec();
    for &(offset, n) in extents {
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend(std::iter::repeat_n(
            0xab,
            usize::try_from(n.min(64)).unwrap(),
        ));
    }
    b.extend_from_slice(&end_offset.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b
}

#[test]
fn hostile_sparse_records_are_refused_with_their_reasons() {
    let cases: Vec<(&str, u16, Vec<u8>, &str)> = vec![
        (
            "a well-formed record (control)",
            VERSION_SPARSE,
            body(100, &[(0, 10), (10, 10), (50, 50)], 0),
            "",
        ),
        (
            "offset beyond len",
            VERSION_SPARSE,
            body(100, &[(200, 1)], 0),
            "ends beyond the file's length 100",
        ),
        (
            "extent running past len",
            VERSION_SPARSE,
            body(100, &[(90, 11)], 0),
            "ends beyond the file's length 100",
        ),
        (
            "overlapping extents",
            VERSION_SPARSE,
            body(100, &[(0, 10), (5, 10)], 0),
            "before the end 10 of the one before",
        ),
        (
            "extents out of order",
            VERSION_SPARSE,
            body(100, &[(50, 10), (0, 10)], 0),
            "before the end 60 of the one before",
        ),
        (
            "huge n",
            VERSION_SPARSE,
            body(100, &[(0, u64::MAX)], 0),
            "ends beyond the file's length",
        ),
        (
            "offset + n overflows",
            VERSION_SPARSE,
            body(MAX_FILE_LEN, &[(u64::MAX - 1, 5)], 0),
            "ends beyond the file's length",
        ),
        (
            "len beyond the limit",
            VERSION_SPARSE,
            body(MAX_FILE_LEN + 1, &[], 0),
            "more than the limit",
        ),
        (
            "terminator with an offset",
            VERSION_SPARSE,
            body(100, &[(0, 10)], 7),
            "terminator",
        ),
        (
            "a large extent the stream does not hold",
            VERSION_SPARSE,
            body(1 << 40, &[(0, 1 << 40)], 0),
            "truncated stream",
        ),
        (
            "an S record in a version 1 stream",
            VERSION,
            body(100, &[(0, 10)], 0),
            "version 1 stream",
        ),
    ];
    for (what, version, body, reason) in cases {
        let (_tmp, applied) = receive(&with_sparse_record(version, &body));
        if reason.is_empty() {
            applied.unwrap_or_else(|e| panic!("{what}: {e}"));
            continue;
        }
        match applied {
            Err(ProviderError::Stream(msg)) => {
                assert!(msg.contains(reason), "{what}: {msg}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn a_huge_sparse_file_costs_its_data_blocks_not_its_length_in_the_space_guard() {
    // 1 TiB declared, 4 KiB of data: far more than the file system holds
    // if its length were counted.
    let len = 1u64 << 40;
    let stream = with_sparse_record(
        VERSION_SPARSE,
        &body(len, &[(len / 2, 64), (len - 64, 64)], 0),
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    fs::create_dir(&dir).unwrap();
    let mut r = HashReader::new(&stream[..]);
    let header = read_header(&mut r).unwrap();
    let mut modes = Modes::new(Policy::Staging);
    let applied = apply(&mut r, &header, &dir, &mut modes).unwrap();
    let block = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join("f"))
            .unwrap()
            .blksize()
            .clamp(MIN_BLOCK, MAX_BLOCK)
    };
    assert_eq!(
        applied.bytes,
        2 * block,
        "the blocks the two 64-byte extents take, not the declared length"
    );
    assert_eq!(fs::metadata(dir.join("f")).unwrap().len(), len);
    assert_eq!(
        data_map(&dir.join("f")),
        vec![
            (len / 2 - len / 2 % BLOCK, len / 2 + BLOCK - len / 2 % BLOCK),
            (len - BLOCK, len)
        ]
    );
}

/// A writer races the sender: it fills, punches, shortens and lengthens the
/// file while version 2 streams of it are sent. Every send either fails
/// saying the file changed, or gives a stream the decoder accepts (extents
/// in order, within the length the file had when opened).
#[test]
fn a_file_changing_under_a_sparse_send_gives_a_well_formed_stream_or_a_clear_error() {
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("f");
    let len = 64 * BLOCK;
    holey(&path, len, &[(0, BLOCK), (32 * BLOCK, 40 * BLOCK)]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = (i * 7 % 64) * BLOCK;
                match i % 4 {
                    0 => f.write_all_at(&pattern(at, BLOCK), at).unwrap(),
                    1 => {
                        // SAFETY: fallocate on a descriptor open for the call.
                        let r = unsafe {
                            libc::fallocate(
                                f.as_raw_fd(),
                                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                                i64::try_from(at).unwrap(),
                                i64::try_from(8 * BLOCK).unwrap(),
                            )
                        };
                        assert_eq!(r, 0, "{}", io::Error::last_os_error());
                    }
                    2 => f.set_len(at).unwrap(),
                    _ => f.set_len(len + at).unwrap(),
                }
                i += 1;
            }
            i
        })
    };
    let (mut sent, mut refused) = (0, 0);
    for _ in 0..300 {
        let mut out = Vec::new();
        let modes = Modes::new(Policy::Plain);
        match send::send(src.path(), &modes, GUID, None, options(true), &mut out) {
            Ok(_) => {
                let (_tmp, applied) = receive(&out);
                applied.unwrap_or_else(|e| panic!("a sent stream is refused: {e}"));
                sent += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("while being sent"), "{e}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let changes = writer.join().unwrap();
    assert!(changes > 0, "the writer never ran");
    eprintln!("{sent} sent, {refused} refused, {changes} changes");
}

/// The simulated file system's sink reads version 2 as the kernel's does:
/// each layout arrives with its length and content.
#[test]
fn the_simulated_sink_reads_sparse_records_with_their_content() {
    use super::super::layout::{Layout, SimLayout};
    use crate::storage::Storage;
    use crate::storage::sim::SimStorage;
    let src = tempfile::tempdir().unwrap();
    for (name, len, extents) in layouts() {
        holey(&src.path().join(name), len, &extents);
    }
    let stream = stream_of(src.path(), true);
    let storage = SimStorage::new();
    let root = Path::new("/staged");
    storage.create_dir_all(root).unwrap();
    let layout = SimLayout::new(storage.clone());
    let mut bytes: &[u8] = &stream;
    let input: &mut dyn Read = &mut bytes;
    let mut r = HashReader::new(input);
    let header = read_header(&mut r).unwrap();
    let mut modes = Modes::new(Policy::Staging);
    let applied = layout
        .apply_stream(&mut r, &header, root, &mut modes)
        .unwrap();
    let data: u64 = layouts()
        .iter()
        .flat_map(|(_, _, e)| e.iter().map(|(s, e)| e - s))
        .sum();
    assert_eq!(applied.bytes, data, "data counted, not lengths");
    for (name, len, _) in layouts() {
        let f = storage.open(&root.join(name)).unwrap();
        assert_eq!(f.len().unwrap(), len, "{name}: length");
        let mut got = vec![0u8; usize::try_from(len).unwrap()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(
            got == fs::read(src.path().join(name)).unwrap(),
            "{name}: content"
        );
    }
}

/// Writes the `dir_stream` fuzz target's seeds into the directory named by
/// `VOLMGR_FUZZ_SEEDS` (see `fuzz/README.md`): a version 1 full stream with
/// every record type a full stream has, version 1 and 2 incremental streams
/// over a tree laid like the target's base (every record type), a version 2
/// full stream whose `S` records have holes at the start, middle and end and
/// several extents, and a hand-made version 2 stream with byte-sized
/// extents (small, so the fuzzer mutates it cheaply). Each is checked to
/// apply before it is written.
#[test]
#[ignore = "writes fuzz seeds; run with VOLMGR_FUZZ_SEEDS=DIR"]
fn write_dir_stream_fuzz_seeds() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let out = std::path::PathBuf::from(
        std::env::var_os("VOLMGR_FUZZ_SEEDS").expect("VOLMGR_FUZZ_SEEDS names the corpus dir"),
    );
    fs::create_dir_all(&out).unwrap();
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    // The incremental streams' base (and the snapshot's starting point).
    let lay_base = |bp: &Path| {
        fs::create_dir_all(bp.join("a/b")).unwrap();
        fs::write(bp.join("a/file"), b"base").unwrap();
        fs::write(bp.join("a/gone"), b"gone").unwrap();
        fs::create_dir(bp.join("ro")).unwrap();
        mode(&bp.join("ro"), 0o500);
    };
    let save = |name: &str, stream: &[u8], incremental: bool| {
        let (_tmp, applied) = if incremental {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("r");
            lay_base(&dir);
            let applied = apply_stream(&mut &stream[..], &dir);
            mode(&dir.join("ro"), 0o755);
            (tmp, applied)
        } else {
            receive(stream)
        };
        applied.unwrap_or_else(|e| panic!("seed {name} does not apply: {e}"));
        fs::write(out.join(name), stream).unwrap();
    };
    let b = BLOCK;

    // Version 1, full: directories (one without owner write), files (empty,
    // read-only), a symlink, nesting.
    let full = tempfile::tempdir().unwrap();
    let f = full.path();
    fs::create_dir_all(f.join("a/b")).unwrap();
    fs::write(f.join("a/file"), b"some content").unwrap();
    fs::write(f.join("a/b/empty"), b"").unwrap();
    fs::write(f.join("ro_file"), b"read only").unwrap();
    mode(&f.join("ro_file"), 0o400);
    symlink("a/file", f.join("link")).unwrap();
    fs::create_dir(f.join("ro")).unwrap();
    fs::write(f.join("ro/inner"), b"x").unwrap();
    mode(&f.join("ro"), 0o555);
    save("v1_full", &stream_of(f, false), false);

    // Version 2, full: holes at the start, middle and end; several extents.
    let sparse = tempfile::tempdir().unwrap();
    let s = sparse.path();
    fs::create_dir(s.join("d")).unwrap();
    holey(&s.join("d/holes"), 6 * b, &[(b, b + 8), (3 * b, 3 * b + 8)]);
    holey(
        &s.join("many"),
        5 * b + 5,
        &[(0, 8), (2 * b, 2 * b + 8), (4 * b, 4 * b + 8)],
    );
    fs::write(s.join("plain"), b"plain").unwrap();
    fs::write(s.join("empty"), b"").unwrap();
    symlink("plain", s.join("l")).unwrap();
    let v2 = stream_of(s, true);
    assert_eq!(tags_of(&v2).0, VERSION_SPARSE);
    save("v2_full_sparse", &v2, false);

    // Incremental, over a base laid like the fuzz target's (without its
    // symlinks out and FIFO, which a sender refuses): `X`, `P`, `D`, `F`,
    // `L`, a type change, and (version 2) `S`.
    let base = tempfile::tempdir().unwrap();
    let bp = base.path();
    lay_base(bp);
    let snap = tempfile::tempdir().unwrap();
    let sp = snap.path();
    fs::create_dir_all(sp.join("a")).unwrap();
    fs::write(sp.join("a/b"), b"was a directory").unwrap();
    fs::write(sp.join("a/file"), b"base").unwrap();
    mode(&sp.join("a/file"), 0o600);
    fs::write(sp.join("new"), b"new").unwrap();
    holey(&sp.join("a/sparse"), 2 * b + 16, &[(b, b + 8)]);
    symlink("new", sp.join("l")).unwrap();
    fs::create_dir(sp.join("ro")).unwrap();
    mode(&sp.join("ro"), 0o755);
    for (name, sparse) in [("v1_incremental", false), ("v2_incremental", true)] {
        let (bm, sm) = (Modes::new(Policy::Plain), Modes::new(Policy::Plain));
        let mut stream = Vec::new();
        send::send(
            sp,
            &sm,
            GUID,
            Some((bp, &bm, 1)),
            options(sparse),
            &mut stream,
        )
        .unwrap();
        let (_, tags) = tags_of(&stream);
        for t in [TAG_DELETE, TAG_PERM, TAG_DIR, TAG_FILE, TAG_LINK] {
            assert!(
                tags.tags.iter().any(|(g, _)| *g == t),
                "{name} has {}",
                t as char
            );
        }
        assert_eq!(
            tags.tags.iter().any(|(g, _)| *g == TAG_SPARSE),
            sparse,
            "{name}"
        );
        save(name, &stream, true);
    }

    // Version 2 by hand: byte-sized extents, holes at start, middle, end.
    save(
        "v2_small_extents",
        &with_sparse_record(VERSION_SPARSE, &body(100, &[(2, 3), (10, 5), (60, 4)], 0)),
        false,
    );
    mode(&f.join("ro"), 0o755);
    mode(&bp.join("ro"), 0o755);
    mode(&sp.join("ro"), 0o755);
}

/// A tmpfs of `size` (root only), unmounted on drop; `None` (a skip line)
/// when not root, a failure then under `VOLMGR_REQUIRE_ROOT=1`.
struct SmallFs {
    dir: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallFs {
    fn mount(test: &str, size: &str) -> Option<SmallFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("VOLMGR_REQUIRE_ROOT").is_none(),
                "VOLMGR_REQUIRE_ROOT is set but {test} does not run as root"
            );
            eprintln!("SKIP {test}: mounting a tmpfs needs root");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mnt");
        fs::create_dir(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs on {}", dir.display());
        Some(SmallFs { dir, _tmp: tmp })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Extents of one byte, a block apart, take a block of the disk each: the
/// free-space guard counts those blocks, not the bytes, so a stream of
/// them is refused with `NoSpace` while the file system still has its
/// reserve, instead of filling it (16 MiB of tmpfs, 32 MiB of blocks
/// asked for by 8192 one-byte extents, 136 KiB of stream).
#[test]
fn one_byte_extents_a_block_apart_are_charged_their_blocks_and_refused_before_the_disk_fills() {
    use std::os::unix::fs::MetadataExt;
    let test = "one_byte_extents_a_block_apart_are_charged_their_blocks";
    let Some(small) = SmallFs::mount(test, "16m") else {
        return;
    };
    let n = 8192u64;
    let extents: Vec<(u64, u64)> = (0..n).map(|i| (i * BLOCK, 1)).collect();
    let stream = with_sparse_record(VERSION_SPARSE, &body(n * BLOCK, &extents, 0));
    let dir = small.dir.join("r");
    fs::create_dir(&dir).unwrap();
    let err = apply_stream(&mut &stream[..], &dir).unwrap_err();
    assert!(
        matches!(err, ProviderError::NoSpace { .. }),
        "the guard refuses before the file system is full, not ENOSPC: {err}"
    );
    let allocated = fs::metadata(dir.join("f")).unwrap().blocks() * 512;
    assert!(
        allocated <= 8 << 20,
        "at most one check window was written: {allocated} bytes allocated"
    );
}
