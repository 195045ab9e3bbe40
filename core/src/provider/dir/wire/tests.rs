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
fn a_huge_sparse_file_costs_its_data_not_its_length_in_the_space_guard() {
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
    assert_eq!(
        applied.bytes, 128,
        "the data written, not the declared length"
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
