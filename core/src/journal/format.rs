//! Byte layout of segments, frames and checkpoint files (see journal-format.md).
//!
//! All integers are little-endian. Every offset is derived from the previous
//! field's offset plus its width, and the totals are pinned by compile-time
//! asserts, so this file and the tables in `journal-format.md` cannot drift
//! silently: `tests/format_spec.rs` builds a frame by hand from the spec and
//! checks it against [`encode_frame`]. Decoding is pure (bytes in, typed result
//! out) and bounds every length before using it.

use crc32fast::Hasher;

/// Format version written into every segment and checkpoint header.
pub const FORMAT_VERSION: u32 = 1;

// ---------------------------------------------------------------- segment header
pub const SEGMENT_MAGIC: [u8; 8] = *b"VMGRJRNL";
pub const SEG_MAGIC_OFFSET: usize = 0;
pub const SEG_VERSION_OFFSET: usize = SEG_MAGIC_OFFSET + SEGMENT_MAGIC.len();
pub const SEG_RESERVED_OFFSET: usize = SEG_VERSION_OFFSET + size_of::<u32>();
pub const SEG_FIRST_SEQ_OFFSET: usize = SEG_RESERVED_OFFSET + size_of::<u32>();
pub const SEG_RESERVED2_OFFSET: usize = SEG_FIRST_SEQ_OFFSET + size_of::<u64>();
pub const SEG_CRC_OFFSET: usize = SEG_RESERVED2_OFFSET + size_of::<u32>();
pub const SEGMENT_HEADER_LEN: usize = SEG_CRC_OFFSET + size_of::<u32>();
const _: () = assert!(SEGMENT_HEADER_LEN == 32);

// ---------------------------------------------------------------- frame header
pub const FRAME_CRC_OFFSET: usize = 0;
pub const FRAME_LEN_OFFSET: usize = FRAME_CRC_OFFSET + size_of::<u32>();
pub const FRAME_SEQ_OFFSET: usize = FRAME_LEN_OFFSET + size_of::<u32>();
pub const FRAME_BATCH_OFFSET: usize = FRAME_SEQ_OFFSET + size_of::<u64>();
pub const FRAME_KIND_OFFSET: usize = FRAME_BATCH_OFFSET + size_of::<u64>();
pub const FRAME_RESERVED_OFFSET: usize = FRAME_KIND_OFFSET + size_of::<u8>();
pub const FRAME_RESERVED_LEN: usize = 7;
pub const FRAME_HEADER_LEN: usize = FRAME_RESERVED_OFFSET + FRAME_RESERVED_LEN;
const _: () = assert!(FRAME_HEADER_LEN == 32);
/// Frames start and end on multiples of this; padding bytes are zero.
pub const FRAME_ALIGN: usize = 8;
const _: () = assert!(FRAME_HEADER_LEN.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(FRAME_ALIGN));
/// Largest payload a frame may carry; also the bincode decode limit.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// Largest segment file a reader will load.
pub const MAX_SEGMENT_LEN: u64 = 1 << 30;
/// Smallest segment size the writer accepts.
pub const MIN_SEGMENT_LEN: u64 = 4096;
/// Sequence numbers of records run from 1 to this; `u64::MAX` is never a
/// record's, so "the sequence after the last one" always fits in a `u64`.
pub const MAX_SEQ: u64 = u64::MAX - 1;

// ---------------------------------------------------------------- checkpoint
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"VMGRCKPT";
pub const CKPT_MAGIC_OFFSET: usize = 0;
pub const CKPT_VERSION_OFFSET: usize = CKPT_MAGIC_OFFSET + CHECKPOINT_MAGIC.len();
pub const CKPT_RESERVED_OFFSET: usize = CKPT_VERSION_OFFSET + size_of::<u32>();
pub const CKPT_SEQ_OFFSET: usize = CKPT_RESERVED_OFFSET + size_of::<u32>();
pub const CKPT_LEN_OFFSET: usize = CKPT_SEQ_OFFSET + size_of::<u64>();
pub const CKPT_CRC_OFFSET: usize = CKPT_LEN_OFFSET + size_of::<u64>();
pub const CKPT_RESERVED2_OFFSET: usize = CKPT_CRC_OFFSET + size_of::<u32>();
pub const CHECKPOINT_HEADER_LEN: usize = CKPT_RESERVED2_OFFSET + size_of::<u32>();
const _: () = assert!(CHECKPOINT_HEADER_LEN == 40);
/// Largest checkpoint payload a reader will load.
pub const MAX_CHECKPOINT_PAYLOAD_LEN: u64 = 256 << 20;

/// Rounds `n` up to the frame alignment.
pub const fn align_up(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Bytes a frame with a payload of `payload_len` occupies on disk.
pub const fn frame_len(payload_len: usize) -> usize {
    align_up(FRAME_HEADER_LEN + payload_len)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// Why a piece of the journal is invalid. Carried by corruption errors together
/// with the file and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalid {
    BadMagic,
    UnsupportedVersion(u32),
    HeaderChecksum {
        stored: u32,
        computed: u32,
    },
    FrameChecksum {
        stored: u32,
        computed: u32,
    },
    PayloadTooLarge {
        len: u64,
        max: u64,
    },
    /// The frame runs past the end of the file.
    Truncated {
        needed: u64,
        available: u64,
    },
    ReservedNotZero,
    PaddingNotZero,
    SequenceMismatch {
        expected: u64,
        found: u64,
    },
    /// A sequence number outside `1..=MAX_SEQ` (a checkpoint's may also be 0).
    SequenceOutOfRange(u64),
    BatchField {
        seq: u64,
        batch_first_seq: u64,
    },
    /// Nonzero bytes after the end of the log in a segment.
    JunkAfterEnd,
    /// The segment's header names another first sequence than its file name.
    NameMismatch {
        name_seq: u64,
        header_seq: u64,
    },
    /// A segment that should exist does not (a hole in the log).
    MissingSegment {
        expected_first_seq: u64,
        found_first_seq: u64,
    },
    FileTooLarge {
        len: u64,
        max: u64,
    },
    /// A FIFO, device, socket or directory where a journal file belongs
    /// (refused without reading it, so it cannot block the reader).
    NotRegularFile(&'static str),
    /// The frame's kind byte is not the kind of the record its payload holds.
    KindMismatch {
        stored: u8,
        record: u8,
    },
    /// The checksum held but the payload does not decode as a record.
    Decode(String),
    /// A record the checkpoint covers is damaged: the checkpoint was taken
    /// only once it was durable, so this is damage, not a torn write.
    BeforeCheckpoint {
        cause: Box<Invalid>,
        checkpoint: u64,
    },
    /// A valid frame of a later write batch follows an invalid one, so the
    /// invalid one was once durable: this is damage, not a torn write.
    DurableDataFollows {
        cause: Box<Invalid>,
        valid_frame_at: u64,
    },
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::BadMagic => write!(f, "bad magic"),
            Invalid::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported format version {v} (this build reads {FORMAT_VERSION})"
                )
            }
            Invalid::HeaderChecksum { stored, computed } => {
                write!(
                    f,
                    "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Invalid::FrameChecksum { stored, computed } => {
                write!(
                    f,
                    "frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Invalid::PayloadTooLarge { len, max } => {
                write!(f, "length {len} exceeds the limit of {max}")
            }
            Invalid::Truncated { needed, available } => {
                write!(f, "frame needs {needed} bytes but only {available} remain")
            }
            Invalid::ReservedNotZero => write!(f, "reserved bytes are not zero"),
            Invalid::PaddingNotZero => write!(f, "padding bytes are not zero"),
            Invalid::SequenceMismatch { expected, found } => {
                write!(f, "sequence number {found}, expected {expected}")
            }
            Invalid::SequenceOutOfRange(seq) => {
                write!(f, "sequence number {seq} outside 1..={MAX_SEQ}")
            }
            Invalid::BatchField {
                seq,
                batch_first_seq,
            } => {
                write!(
                    f,
                    "batch start {batch_first_seq} impossible for sequence {seq}"
                )
            }
            Invalid::JunkAfterEnd => write!(f, "nonzero bytes after the end of the log"),
            Invalid::NameMismatch {
                name_seq,
                header_seq,
            } => write!(
                f,
                "file name says first sequence {name_seq}, header says {header_seq}"
            ),
            Invalid::MissingSegment {
                expected_first_seq,
                found_first_seq,
            } => write!(
                f,
                "missing segment: expected one starting at sequence {expected_first_seq}, found {found_first_seq}"
            ),
            Invalid::FileTooLarge { len, max } => {
                write!(f, "file is {len} bytes, more than the limit of {max}")
            }
            Invalid::NotRegularFile(what) => write!(f, "not a regular file ({what})"),
            Invalid::KindMismatch { stored, record } => write!(
                f,
                "frame kind byte {stored} but the payload is a record of kind {record}"
            ),
            Invalid::Decode(e) => write!(f, "payload does not decode: {e}"),
            Invalid::BeforeCheckpoint { cause, checkpoint } => write!(
                f,
                "{cause}, but the checkpoint at sequence {checkpoint} covers this record, \
                 so it was durable: this is damage, not a torn write"
            ),
            Invalid::DurableDataFollows {
                cause,
                valid_frame_at,
            } => write!(
                f,
                "{cause}, and a valid frame of a later write follows at offset {valid_frame_at}, \
                 so this is damage to durable data, not a torn write"
            ),
        }
    }
}

// ---------------------------------------------------------------- segment header

/// Encodes a segment header.
pub fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    assert!(
        (1..=MAX_SEQ).contains(&first_seq),
        "segment first sequence out of range"
    );
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[SEG_MAGIC_OFFSET..SEG_VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    h[SEG_VERSION_OFFSET..SEG_RESERVED_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[SEG_FIRST_SEQ_OFFSET..SEG_RESERVED2_OFFSET].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..SEG_CRC_OFFSET]);
    h[SEG_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header, returning its first sequence number.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, Invalid> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(Invalid::Truncated {
            needed: SEGMENT_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let h = &bytes[..SEGMENT_HEADER_LEN];
    if h[SEG_MAGIC_OFFSET..SEG_VERSION_OFFSET] != SEGMENT_MAGIC {
        return Err(Invalid::BadMagic);
    }
    let stored = u32_at(h, SEG_CRC_OFFSET);
    let computed = crc32fast::hash(&h[..SEG_CRC_OFFSET]);
    if stored != computed {
        return Err(Invalid::HeaderChecksum { stored, computed });
    }
    let version = u32_at(h, SEG_VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(Invalid::UnsupportedVersion(version));
    }
    if u32_at(h, SEG_RESERVED_OFFSET) != 0 || u32_at(h, SEG_RESERVED2_OFFSET) != 0 {
        return Err(Invalid::ReservedNotZero);
    }
    let first_seq = u64_at(h, SEG_FIRST_SEQ_OFFSET);
    if !(1..=MAX_SEQ).contains(&first_seq) {
        return Err(Invalid::SequenceOutOfRange(first_seq));
    }
    Ok(first_seq)
}

// ---------------------------------------------------------------- frames

/// The header fields of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub seq: u64,
    /// Sequence number of the first frame written by the same group commit.
    pub batch_first_seq: u64,
    pub kind: u8,
}

/// Appends one frame (header, payload, zero padding) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, header: FrameHeader, payload: &[u8]) {
    assert!(
        payload.len() <= MAX_PAYLOAD_LEN,
        "payload over the frame limit"
    );
    assert!(
        header.batch_first_seq <= header.seq,
        "batch start after the frame"
    );
    assert!(
        header.batch_first_seq >= 1 && header.seq <= MAX_SEQ,
        "sequence number out of range"
    );
    let start = out.len();
    out.resize(start + FRAME_HEADER_LEN, 0);
    {
        let h = &mut out[start..start + FRAME_HEADER_LEN];
        h[FRAME_LEN_OFFSET..FRAME_SEQ_OFFSET].copy_from_slice(
            &u32::try_from(payload.len())
                .expect("MAX_PAYLOAD_LEN fits in u32 (asserted above)")
                .to_le_bytes(),
        );
        h[FRAME_SEQ_OFFSET..FRAME_BATCH_OFFSET].copy_from_slice(&header.seq.to_le_bytes());
        h[FRAME_BATCH_OFFSET..FRAME_KIND_OFFSET]
            .copy_from_slice(&header.batch_first_seq.to_le_bytes());
        h[FRAME_KIND_OFFSET] = header.kind;
    }
    out.extend_from_slice(payload);
    let mut hasher = Hasher::new();
    hasher.update(&out[start + FRAME_LEN_OFFSET..]);
    let crc = hasher.finalize();
    out[start + FRAME_CRC_OFFSET..start + FRAME_LEN_OFFSET].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + frame_len(payload.len()), 0);
    debug_assert_eq!(
        decode_frame(&out[start..], header.seq).map(|(h, p, _)| (h, p.len())),
        Ok((header, payload.len()))
    );
}

/// What the reader finds at an offset where a frame may start.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameAt<'a> {
    /// A valid frame: header, payload, bytes it occupies.
    Frame(FrameHeader, &'a [u8], usize),
    /// A zeroed header: the written part of the segment ends here.
    End,
}

/// Decodes the frame at the start of `bytes`, expecting sequence `expected_seq`.
/// Returns `Ok((header, payload, on_disk_len))`, or why the bytes are not one.
/// A header of all zeros is reported as [`Invalid::Truncated`] only when fewer
/// than a header's bytes remain; use [`frame_at`] to tell the end of the log.
pub fn decode_frame(
    bytes: &[u8],
    expected_seq: u64,
) -> Result<(FrameHeader, &[u8], usize), Invalid> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(Invalid::Truncated {
            needed: FRAME_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let h = &bytes[..FRAME_HEADER_LEN];
    let len = u32_at(h, FRAME_LEN_OFFSET) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(Invalid::PayloadTooLarge {
            len: len as u64,
            max: MAX_PAYLOAD_LEN as u64,
        });
    }
    let total = frame_len(len);
    if total > bytes.len() {
        return Err(Invalid::Truncated {
            needed: total as u64,
            available: bytes.len() as u64,
        });
    }
    let stored = u32_at(h, FRAME_CRC_OFFSET);
    let computed = crc32fast::hash(&bytes[FRAME_LEN_OFFSET..FRAME_HEADER_LEN + len]);
    if stored != computed {
        return Err(Invalid::FrameChecksum { stored, computed });
    }
    if h[FRAME_RESERVED_OFFSET..FRAME_HEADER_LEN]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(Invalid::ReservedNotZero);
    }
    if bytes[FRAME_HEADER_LEN + len..total].iter().any(|&b| b != 0) {
        return Err(Invalid::PaddingNotZero);
    }
    let header = FrameHeader {
        seq: u64_at(h, FRAME_SEQ_OFFSET),
        batch_first_seq: u64_at(h, FRAME_BATCH_OFFSET),
        kind: h[FRAME_KIND_OFFSET],
    };
    if !(1..=MAX_SEQ).contains(&header.seq) {
        return Err(Invalid::SequenceOutOfRange(header.seq));
    }
    if header.seq != expected_seq {
        return Err(Invalid::SequenceMismatch {
            expected: expected_seq,
            found: header.seq,
        });
    }
    if header.batch_first_seq > header.seq || header.batch_first_seq == 0 {
        return Err(Invalid::BatchField {
            seq: header.seq,
            batch_first_seq: header.batch_first_seq,
        });
    }
    Ok((
        header,
        &bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len],
        total,
    ))
}

/// Like [`decode_frame`], but a zeroed header (or fewer than a header's bytes,
/// all zero) is the end of the log rather than an error.
pub fn frame_at(bytes: &[u8], expected_seq: u64) -> Result<FrameAt<'_>, Invalid> {
    let head = &bytes[..bytes.len().min(FRAME_HEADER_LEN)];
    if head.iter().all(|&b| b == 0) {
        return Ok(FrameAt::End);
    }
    decode_frame(bytes, expected_seq).map(|(h, p, n)| FrameAt::Frame(h, p, n))
}

// ---------------------------------------------------------------- checkpoint

/// Encodes a checkpoint file: header followed by the payload.
pub fn encode_checkpoint(seq: u64, payload: &[u8]) -> Vec<u8> {
    assert!(seq <= MAX_SEQ, "checkpoint sequence out of range");
    assert!(
        payload.len() as u64 <= MAX_CHECKPOINT_PAYLOAD_LEN,
        "checkpoint payload over the limit"
    );
    let mut out = vec![0u8; CHECKPOINT_HEADER_LEN];
    out[CKPT_MAGIC_OFFSET..CKPT_VERSION_OFFSET].copy_from_slice(&CHECKPOINT_MAGIC);
    out[CKPT_VERSION_OFFSET..CKPT_RESERVED_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[CKPT_SEQ_OFFSET..CKPT_LEN_OFFSET].copy_from_slice(&seq.to_le_bytes());
    out[CKPT_LEN_OFFSET..CKPT_CRC_OFFSET].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let mut hasher = Hasher::new();
    hasher.update(&out[..CKPT_CRC_OFFSET]);
    hasher.update(payload);
    let crc = hasher.finalize();
    out[CKPT_CRC_OFFSET..CKPT_RESERVED2_OFFSET].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a checkpoint file, returning its sequence number and payload.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<(u64, &[u8]), Invalid> {
    if bytes.len() < CHECKPOINT_HEADER_LEN {
        return Err(Invalid::Truncated {
            needed: CHECKPOINT_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let h = &bytes[..CHECKPOINT_HEADER_LEN];
    if h[..CKPT_VERSION_OFFSET] != CHECKPOINT_MAGIC {
        return Err(Invalid::BadMagic);
    }
    let len = u64_at(h, CKPT_LEN_OFFSET);
    if len > MAX_CHECKPOINT_PAYLOAD_LEN {
        return Err(Invalid::PayloadTooLarge {
            len,
            max: MAX_CHECKPOINT_PAYLOAD_LEN,
        });
    }
    let available = (bytes.len() - CHECKPOINT_HEADER_LEN) as u64;
    if len != available {
        return Err(Invalid::Truncated {
            needed: len,
            available,
        });
    }
    let payload = &bytes[CHECKPOINT_HEADER_LEN..];
    let stored = u32_at(h, CKPT_CRC_OFFSET);
    let mut hasher = Hasher::new();
    hasher.update(&h[..CKPT_CRC_OFFSET]);
    hasher.update(payload);
    let computed = hasher.finalize();
    if stored != computed {
        return Err(Invalid::HeaderChecksum { stored, computed });
    }
    let version = u32_at(h, CKPT_VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(Invalid::UnsupportedVersion(version));
    }
    if u32_at(h, CKPT_RESERVED_OFFSET) != 0 || u32_at(h, CKPT_RESERVED2_OFFSET) != 0 {
        return Err(Invalid::ReservedNotZero);
    }
    let seq = u64_at(h, CKPT_SEQ_OFFSET);
    if seq > MAX_SEQ {
        return Err(Invalid::SequenceOutOfRange(seq));
    }
    Ok((seq, payload))
}

// ---------------------------------------------------------------- file names

/// `00000000000000000001.seg`: the first sequence number, 20 digits.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// `00000000000000000042.ckpt`: the sequence number the state covers.
pub fn checkpoint_file_name(seq: u64) -> String {
    format!("{seq:020}.ckpt")
}

/// Parses `<20 digits>.<ext>`; anything else (temp files, `.broken`) is `None`.
pub fn parse_numbered_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}
