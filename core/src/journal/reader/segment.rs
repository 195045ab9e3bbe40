//! The one frame-reading loop of the code base.
//!
//! [`read_frames`] reads the frames of one segment's bytes from a [`Cursor`]:
//! every valid frame goes to the caller (who may reject it, e.g. because its
//! payload is not a record of its kind), and the first offset that does not
//! hold a valid next frame is classified as the format says: a clean end
//! (zeros to the end of the file), a torn tail (only in the last segment, and
//! only when no frame of a *later* write batch follows), or corruption. In
//! raw mode it then resumes at the next valid frame, as often as damage
//! recurs. Opening the journal, `journal verify`, `dump` (with `--raw` and
//! `--follow`), `stats`, `state` and `repair` all read frames here and nowhere
//! else (DESIGN.md invariant 12), through the segment walk in `walk.rs`.
//!
//! Every loop advances by at least one frame alignment per round, and both
//! forward scans (for a later batch's frame, and for the next valid frame)
//! draw on one checksum budget per segment that is linear in its size, so
//! crafted bytes cannot make a read quadratic.

use std::ops::Range;

use super::super::format::{
    self, FRAME_ALIGN, FRAME_BATCH_OFFSET, FRAME_HEADER_LEN, FRAME_LEN_OFFSET, FRAME_SEQ_OFFSET,
    FrameAt, FrameHeader, Invalid, SEGMENT_HEADER_LEN,
};

/// A position in a segment: where the next frame is expected and what it
/// must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Offset in the segment file (a multiple of 8, at least 32).
    pub offset: u64,
    /// The sequence number a frame at `offset` must carry.
    pub next_seq: u64,
    /// The write batch of the frame just before `offset`, if one is in this
    /// segment (a frame may continue it).
    pub batch_first_seq: Option<u64>,
}

impl Cursor {
    /// The first frame position of a segment whose header names `first_seq`.
    pub fn segment_start(first_seq: u64) -> Cursor {
        Cursor {
            offset: SEGMENT_HEADER_LEN as u64,
            next_seq: first_seq,
            batch_first_seq: None,
        }
    }
}

/// One valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    /// Offset of the frame header in the segment file.
    pub offset: u64,
    /// Bytes it occupies on disk: header, payload and padding.
    pub len: u64,
    pub payload: &'a [u8],
}

/// What a reader's caller answers for each item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop reading here (the caller has what it wanted, or cannot go on).
    Stop,
    /// Only for a frame: its bytes are valid, but its payload is not a record
    /// of its kind. That is corruption at the frame's offset (its checksum
    /// holds, so it is durable data, never a torn write).
    Reject(Invalid),
}

/// Damage at an offset of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spot {
    pub offset: u64,
    /// Why. In the last segment, [`Invalid::DurableDataFollows`] wraps the
    /// cause when a later batch's frame proves the bytes were once durable.
    pub reason: Invalid,
    /// `Some(len)` for a torn tail (what opening truncates): `len` bytes from
    /// `offset` to the last nonzero byte of the file. `None`: corruption.
    pub torn_len: Option<u64>,
    /// The sequence number a valid frame here would have carried.
    pub expected_seq: u64,
}

/// What [`read_frames`] hands its caller, in file order.
#[derive(Debug)]
pub enum Item<'a> {
    Frame(Frame<'a>),
    Damage(Spot),
    /// Raw mode: reading continues at this valid frame after damage.
    Resumed {
        offset: u64,
        header: FrameHeader,
        /// What the frame at the damaged spot should have carried.
        expected_seq: u64,
    },
    /// Raw mode: no valid frame follows the damage in this segment.
    NothingValidAfter {
        offset: u64,
    },
}

/// How the valid part of a segment ends: the first problem, or the clean end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// After the last frame, only zeros up to the end of the file.
    Clean { offset: u64 },
    /// The bytes at `offset` are not a valid next frame.
    Invalid {
        offset: u64,
        reason: Invalid,
        /// One past the last nonzero byte of the file (what a repair removes).
        dirty_end: u64,
        /// (Last segment only.) A valid frame of a later write batch found
        /// after `offset`, if any: proof that the invalid bytes were once
        /// durable.
        later_batch_frame: Option<u64>,
    },
}

/// What one [`read_frames`] call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramesRead {
    /// How the valid prefix ends; `None` when the caller stopped first.
    pub end: Option<SegmentEnd>,
    /// The position after the valid prefix (before the first problem): where
    /// appends continue after opening.
    pub valid: Cursor,
    /// Where reading ended at zeros, after any resumption (raw mode): where
    /// the next frame of this segment would go. `None` if damage reached to
    /// the end or the caller stopped.
    pub clean_at: Option<Cursor>,
    /// Offset just after the last frame the caller accepted.
    pub used: u64,
    /// Frames the caller accepted, and the first and last of their sequence
    /// numbers.
    pub count: u64,
    pub records: Option<(u64, u64)>,
    pub stopped: bool,
}

/// Checksum work the forward scans of one segment may do: linear in its
/// bytes. Real damage needs few checksums (most garbage claims a length over
/// the limit or past the end, refused before any checksum), but crafted input
/// could make every 8-byte offset claim a frame that fits.
pub(crate) fn checksum_budget(bytes: &[u8]) -> usize {
    bytes.len().saturating_mul(8).saturating_add(64 << 20)
}

/// Checksum work of checking the candidate frame at `bytes[p..]`: its claimed
/// length if it fits in what remains (only then is a checksum computed).
fn candidate_cost(bytes: &[u8], p: usize) -> usize {
    let len = read_u32(bytes, p + FRAME_LEN_OFFSET) as usize;
    if len > format::MAX_PAYLOAD_LEN || format::frame_len(len) > bytes.len() - p {
        return FRAME_HEADER_LEN;
    }
    format::frame_len(len)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// One past the last nonzero byte.
pub(crate) fn dirty_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

/// Looks after `from` for a valid frame of a write batch later than the one
/// holding sequence `bad_seq` (its batch starts after `bad_seq`). Frames of
/// the same batch as the bad one prove nothing: one group commit's sectors
/// can reach the disk in any order before its sync completes.
///
/// `Some(offset)` means the damage cannot be taken for a torn write: a later
/// batch's frame starts at `offset`, or (only on crafted input) the checksum
/// budget ran out at `offset` before the scan could rule that out.
fn later_batch_frame(bytes: &[u8], from: usize, bad_seq: u64, budget: &mut usize) -> Option<usize> {
    let mut p = from + FRAME_ALIGN;
    while p + FRAME_HEADER_LEN <= bytes.len() {
        let seq = read_u64(bytes, p + FRAME_SEQ_OFFSET);
        let batch = read_u64(bytes, p + FRAME_BATCH_OFFSET);
        if batch > bad_seq && seq >= batch {
            let cost = candidate_cost(bytes, p);
            if cost > *budget {
                return Some(p);
            }
            *budget -= cost;
            if let Ok((header, _, _)) = format::decode_frame(&bytes[p..], seq)
                && header.batch_first_seq > bad_seq
            {
                return Some(p);
            }
        }
        p += FRAME_ALIGN;
    }
    None
}

/// Looks from `from` on for the next offset that holds a valid frame with
/// any sequence number. Gives up (`None`) once the budget is spent.
fn next_valid_frame(bytes: &[u8], from: usize, budget: &mut usize) -> Option<(usize, FrameHeader)> {
    let mut p = from.next_multiple_of(FRAME_ALIGN);
    while p + FRAME_HEADER_LEN <= bytes.len() {
        if bytes[p..p + FRAME_HEADER_LEN].iter().any(|&b| b != 0) {
            let cost = candidate_cost(bytes, p);
            if cost > *budget {
                return None;
            }
            *budget -= cost;
            let seq = read_u64(bytes, p + FRAME_SEQ_OFFSET);
            if let Ok((header, _, _)) = format::decode_frame(&bytes[p..], seq) {
                return Some((p, header));
            }
        }
        p += FRAME_ALIGN;
    }
    None
}

/// Looks after `from` for a valid frame of a later write batch than the one
/// holding `bad_seq` (see the format's torn-tail rule), with a fresh budget.
pub fn find_later_batch_frame(bytes: &[u8], from: usize, bad_seq: u64) -> Option<usize> {
    later_batch_frame(bytes, from, bad_seq, &mut checksum_budget(bytes))
}

/// The next offset at or after `from` that holds a valid frame with any
/// sequence number, with a fresh budget (`None` once it is spent).
pub fn find_next_valid_frame(bytes: &[u8], from: usize) -> Option<(usize, FrameHeader)> {
    next_valid_frame(bytes, from, &mut checksum_budget(bytes))
}

/// Reads the frames of `bytes` (a whole segment file) from `start`, handing
/// each valid frame, each damaged spot and each resumption to `visit`.
///
/// `is_last` says whether this is the last segment of the log: only there is
/// an invalid frame a torn tail, and only when no frame of a later write batch
/// follows it. Without `raw`, reading ends at the first problem; with it,
/// reading resumes at the next valid frame (never after a torn tail, and a
/// damaged spot after a resumption is always corruption). `search_from`
/// starts in raw search mode instead (after a damaged segment header).
pub fn read_frames(
    bytes: &[u8],
    start: Cursor,
    is_last: bool,
    raw: bool,
    search_from: Option<usize>,
    visit: &mut dyn FnMut(Item<'_>) -> Flow,
) -> FramesRead {
    assert!(
        start.offset >= SEGMENT_HEADER_LEN as u64
            && start.offset.is_multiple_of(FRAME_ALIGN as u64),
        "a frame cursor lies after the segment header, 8-aligned"
    );
    let mut out = FramesRead {
        end: None,
        valid: start,
        clean_at: None,
        used: start.offset,
        count: 0,
        records: None,
        stopped: false,
    };
    let mut cur = start;
    let mut budget = checksum_budget(bytes);
    let mut dirty: Option<usize> = None;
    // After damage (raw mode): where to search for a valid frame, and the
    // sequence number the damaged spot should have held.
    let mut search: Option<(usize, u64)> = search_from.map(|from| (from, start.next_seq));
    let mut damaged = search.is_some();
    // The first frame after a resumption is taken as it is (batch rule).
    let mut after_resume = false;
    // Bounded: every round either returns or moves `cur.offset` (or the
    // search start) forward by at least one frame alignment.
    loop {
        if let Some((from, expected_seq)) = search.take() {
            match next_valid_frame(bytes, from, &mut budget) {
                None => {
                    let offset = from.min(bytes.len()) as u64;
                    if visit(Item::NothingValidAfter { offset }) == Flow::Stop {
                        out.stopped = true;
                    }
                    return out;
                }
                Some((p, header)) => {
                    let item = Item::Resumed {
                        offset: p as u64,
                        header,
                        expected_seq,
                    };
                    if visit(item) == Flow::Stop {
                        out.stopped = true;
                        return out;
                    }
                    cur = Cursor {
                        offset: p as u64,
                        next_seq: header.seq,
                        batch_first_seq: None,
                    };
                    after_resume = true;
                }
            }
        }
        // An offset past the bytes (or past `usize`) leaves nothing to read.
        let at = usize::try_from(cur.offset).unwrap_or(usize::MAX);
        let rest = bytes.get(at..).unwrap_or_default();
        let invalid = match format::frame_at(rest, cur.next_seq) {
            Ok(FrameAt::End) => {
                if rest.iter().all(|&b| b == 0) {
                    out.clean_at = Some(cur);
                    out.end
                        .get_or_insert(SegmentEnd::Clean { offset: cur.offset });
                    return out;
                }
                Invalid::JunkAfterEnd
            }
            Ok(FrameAt::Frame(header, payload, len)) => {
                // A frame either starts a batch or continues the previous
                // frame's batch (batches never span segments); the first
                // frame after a resumption is taken as it is.
                let fits = after_resume
                    || header.batch_first_seq == header.seq
                    || cur.batch_first_seq == Some(header.batch_first_seq);
                if fits {
                    let frame = Frame {
                        header,
                        offset: cur.offset,
                        len: len as u64,
                        payload,
                    };
                    // Pair assertion (the writer checks the same before writing).
                    debug_assert!(
                        frame.header.seq == cur.next_seq
                            && (1..=frame.header.seq).contains(&frame.header.batch_first_seq)
                            && frame.len.is_multiple_of(FRAME_ALIGN as u64)
                            && at + len <= bytes.len()
                    );
                    let after = Cursor {
                        offset: cur.offset + len as u64,
                        // seq <= MAX_SEQ, so this cannot overflow.
                        next_seq: header.seq + 1,
                        batch_first_seq: Some(header.batch_first_seq),
                    };
                    match visit(Item::Frame(frame)) {
                        Flow::Continue => {
                            out.used = after.offset;
                            out.count += 1;
                            out.records = Some(match out.records {
                                None => (header.seq, header.seq),
                                Some((first, _)) => (first, header.seq),
                            });
                            cur = after;
                            if !damaged {
                                out.valid = cur;
                            }
                            after_resume = false;
                            continue;
                        }
                        Flow::Stop => {
                            out.stopped = true;
                            return out;
                        }
                        Flow::Reject(reason) => {
                            // Durable (its checksum holds): never torn.
                            let end_now = !raw;
                            let spot = Spot {
                                offset: cur.offset,
                                reason: reason.clone(),
                                torn_len: None,
                                expected_seq: cur.next_seq,
                            };
                            if !damaged {
                                let dirty_end = *dirty.get_or_insert_with(|| dirty_end(bytes));
                                out.end = Some(SegmentEnd::Invalid {
                                    offset: cur.offset,
                                    reason,
                                    dirty_end: dirty_end as u64,
                                    later_batch_frame: None,
                                });
                            }
                            damaged = true;
                            if visit(Item::Damage(spot)) == Flow::Stop {
                                out.stopped = true;
                                return out;
                            }
                            if end_now {
                                return out;
                            }
                            // The frame's structure holds: go on after it.
                            cur = after;
                            after_resume = false;
                            continue;
                        }
                    }
                }
                Invalid::BatchField {
                    seq: header.seq,
                    batch_first_seq: header.batch_first_seq,
                }
            }
            Err(reason) => reason,
        };

        // Classify the spot: only the first problem of the last segment may
        // be a torn tail, and only if no later batch's frame follows it.
        let dirty_end = *dirty.get_or_insert_with(|| dirty_end(bytes)) as u64;
        let later = if is_last && !damaged {
            later_batch_frame(bytes, at, cur.next_seq, &mut budget)
        } else {
            None
        };
        let torn = is_last && !damaged && later.is_none();
        let reason = match later {
            Some(valid_frame_at) => Invalid::DurableDataFollows {
                cause: Box::new(invalid.clone()),
                valid_frame_at: valid_frame_at as u64,
            },
            None => invalid.clone(),
        };
        if !damaged {
            out.end = Some(SegmentEnd::Invalid {
                offset: cur.offset,
                reason: invalid,
                dirty_end,
                later_batch_frame: later.map(|p| p as u64),
            });
        }
        damaged = true;
        let spot = Spot {
            offset: cur.offset,
            reason,
            torn_len: torn.then(|| dirty_end.saturating_sub(cur.offset)),
            expected_seq: cur.next_seq,
        };
        if visit(Item::Damage(spot)) == Flow::Stop {
            out.stopped = true;
            return out;
        }
        if torn || !raw {
            return out;
        }
        search = Some((at + FRAME_ALIGN, cur.next_seq));
    }
}

/// A valid frame found by [`scan_segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFrame {
    pub header: FrameHeader,
    /// Offset of the frame header within the segment file.
    pub offset: u64,
    /// Where the payload lies within the scanned bytes.
    pub payload: Range<usize>,
}

/// Everything one [`scan_segment`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub first_seq: u64,
    pub frames: Vec<ScannedFrame>,
    pub end: SegmentEnd,
}

impl SegmentScan {
    /// Sequence number the next frame after the valid ones would carry.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.frames.len() as u64
    }
}

/// Reads a whole segment file's bytes as the last segment of a log (so an
/// invalid end carries `later_batch_frame`): its header (an invalid one is an
/// error at offset 0), then its frames through [`read_frames`]. For tests,
/// tools and the fuzz target.
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan, (u64, Invalid)> {
    let first_seq = format::decode_segment_header(bytes).map_err(|e| (0, e))?;
    let mut frames = Vec::new();
    let read = read_frames(
        bytes,
        Cursor::segment_start(first_seq),
        true,
        false,
        None,
        &mut |item| {
            if let Item::Frame(f) = item {
                let start = usize::try_from(f.offset)
                    .expect("a frame read from memory lies within it")
                    + FRAME_HEADER_LEN;
                frames.push(ScannedFrame {
                    header: f.header,
                    offset: f.offset,
                    payload: start..start + f.payload.len(),
                });
            }
            Flow::Continue
        },
    );
    let end = read.end.unwrap_or(SegmentEnd::Clean { offset: read.used });
    Ok(SegmentScan {
        first_seq,
        frames,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(frames: &[(u64, u64)], size: usize) -> Vec<u8> {
        let mut bytes = format::encode_segment_header(frames.first().map_or(1, |f| f.0)).to_vec();
        for &(seq, batch) in frames {
            let header = FrameHeader {
                seq,
                batch_first_seq: batch,
                kind: 1,
            };
            format::encode_frame(&mut bytes, header, b"payload");
        }
        bytes.resize(size.max(bytes.len()), 0);
        bytes
    }

    fn collect(bytes: &[u8], is_last: bool, raw: bool) -> (Vec<String>, FramesRead) {
        let mut items = Vec::new();
        let read = read_frames(
            bytes,
            Cursor::segment_start(1),
            is_last,
            raw,
            None,
            &mut |i| {
                items.push(match i {
                    Item::Frame(f) => format!("frame {} at {}", f.header.seq, f.offset),
                    Item::Damage(s) => format!(
                        "damage at {} ({}) {}",
                        s.offset,
                        s.reason,
                        if s.torn_len.is_some() {
                            "torn"
                        } else {
                            "corrupt"
                        }
                    ),
                    Item::Resumed { offset, header, .. } => {
                        format!("resumed at {offset} seq {}", header.seq)
                    }
                    Item::NothingValidAfter { offset } => format!("nothing after {offset}"),
                });
                Flow::Continue
            },
        );
        (items, read)
    }

    #[test]
    fn a_clean_segment_ends_at_the_zeros_after_its_last_frame() {
        let bytes = segment(&[(1, 1), (2, 2), (3, 2)], 1024);
        let (items, read) = collect(&bytes, true, false);
        assert_eq!(items.len(), 3);
        assert_eq!(read.count, 3);
        assert_eq!(read.records, Some((1, 3)));
        assert_eq!(read.clean_at, Some(read.valid));
        assert_eq!(read.valid.next_seq, 4);
        assert_eq!(read.end, Some(SegmentEnd::Clean { offset: read.used }));
    }

    #[test]
    fn garbage_after_the_last_frame_is_torn_only_in_the_last_segment() {
        let mut bytes = segment(&[(1, 1), (2, 2)], 1024);
        let end = segment(&[(1, 1), (2, 2)], 0).len();
        bytes[end + 3] = 0x77;
        let (items, read) = collect(&bytes, true, true);
        assert!(items.last().unwrap().ends_with("torn"), "{items:?}");
        assert_eq!(read.valid.offset, end as u64);
        let (items, _) = collect(&bytes, false, false);
        assert!(items.last().unwrap().ends_with("corrupt"), "{items:?}");
    }

    #[test]
    fn raw_reading_resumes_after_a_damaged_frame_and_reports_a_later_batch_as_proof() {
        let mut bytes = segment(&[(1, 1), (2, 2), (3, 3), (4, 4)], 1024);
        let second = segment(&[(1, 1)], 0).len();
        bytes[second + 33] ^= 0x10;
        let (items, read) = collect(&bytes, true, true);
        assert_eq!(items[0], "frame 1 at 32");
        assert!(items[1].contains("later write follows"), "{items:?}");
        assert!(items[1].ends_with("corrupt"));
        assert!(items[2].starts_with("resumed at") && items[2].ends_with("seq 3"));
        assert_eq!(
            read.valid.next_seq, 2,
            "the valid prefix ends at the damage"
        );
        assert_eq!(read.clean_at.map(|c| c.next_seq), Some(5));
        assert_eq!(read.count, 3);
    }

    #[test]
    fn a_rejected_frame_is_corruption_and_raw_reading_goes_on_after_it() {
        let bytes = segment(&[(1, 1), (2, 2), (3, 3)], 1024);
        let mut seen = Vec::new();
        let read = read_frames(
            &bytes,
            Cursor::segment_start(1),
            true,
            true,
            None,
            &mut |i| match i {
                Item::Frame(f) if f.header.seq == 2 => Flow::Reject(Invalid::Decode("no".into())),
                Item::Frame(f) => {
                    seen.push(f.header.seq);
                    Flow::Continue
                }
                Item::Damage(s) => {
                    assert_eq!(s.torn_len, None, "a checksummed frame is never torn");
                    Flow::Continue
                }
                _ => Flow::Continue,
            },
        );
        assert_eq!(seen, [1, 3]);
        assert_eq!(read.valid.next_seq, 2);
        assert!(matches!(read.end, Some(SegmentEnd::Invalid { .. })));
    }
}
