//! Feeds arbitrary bytes to the segment reader.
//!
//! The input is used twice: as a whole segment file for
//! `journal::reader::scan_segment`, and (after a valid segment header is put in
//! front of it, so the frame loop is reached every time) again. Invariants:
//!
//! 1. No input panics, aborts, loops or allocates without bound.
//! 2. A successful scan's frames are in order: consecutive sequence numbers
//!    from the header's first sequence, strictly increasing 8-aligned offsets,
//!    each frame starting where the previous one ended, the first one right
//!    after the segment header.
//! 3. Every payload range lies inside the input, right after its frame header,
//!    and every frame's bytes decode again to the same header and payload.
//! 4. Each frame's batch start is at most its sequence number; a frame either
//!    starts its batch or continues the previous frame's batch.
//! 5. The end offset is where the last frame ended; a clean end has only zeros
//!    after it; an invalid end's `dirty_end` lies in the input, and a reported
//!    later-batch frame lies after the end offset, decodes, and belongs to a
//!    batch that starts after the sequence the reader expected there.
//! 6. `find_next_valid_frame` from any offset returns an 8-aligned offset at or
//!    after it, inside the input, where a frame with the returned header
//!    decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volmgr_core::journal::format::{self, FRAME_ALIGN, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use volmgr_core::journal::reader::{self, SegmentEnd};

fn check(bytes: &[u8]) {
    let Ok(scan) = reader::scan_segment(bytes) else {
        return;
    };
    assert_eq!(
        format::decode_segment_header(bytes),
        Ok(scan.first_seq),
        "scan accepted a header that does not decode"
    );
    let mut offset = SEGMENT_HEADER_LEN as u64;
    let mut batch: Option<u64> = None;
    for (i, frame) in scan.frames.iter().enumerate() {
        assert_eq!(frame.header.seq, scan.first_seq + i as u64, "sequence gap");
        assert_eq!(frame.offset, offset, "frame not where the previous ended");
        assert_eq!(frame.offset % FRAME_ALIGN as u64, 0, "frame not aligned");
        let start = frame.offset as usize + FRAME_HEADER_LEN;
        assert_eq!(frame.payload.start, start, "payload not after its header");
        assert!(frame.payload.end <= bytes.len(), "payload out of bounds");
        assert!(frame.payload.end - frame.payload.start <= format::MAX_PAYLOAD_LEN);
        let (header, payload, len) =
            format::decode_frame(&bytes[frame.offset as usize..], frame.header.seq)
                .expect("an accepted frame decodes again");
        assert_eq!(header, frame.header);
        assert_eq!(payload, &bytes[frame.payload.clone()]);
        assert!(header.batch_first_seq <= header.seq && header.batch_first_seq >= 1);
        assert!(
            header.batch_first_seq == header.seq || batch == Some(header.batch_first_seq),
            "frame neither starts nor continues a batch"
        );
        batch = Some(header.batch_first_seq);
        offset += len as u64;
    }
    match &scan.end {
        SegmentEnd::Clean { offset: end } => {
            assert_eq!(*end, offset);
            assert!(bytes[*end as usize..].iter().all(|&b| b == 0));
        }
        SegmentEnd::Invalid {
            offset: end,
            dirty_end,
            later_batch_frame,
            ..
        } => {
            assert_eq!(*end, offset);
            assert!(*dirty_end as usize <= bytes.len());
            assert!(
                *dirty_end > *end,
                "invalid end with nothing nonzero after it"
            );
            if let Some(at) = later_batch_frame {
                assert!(*at > *end && (*at as usize) < bytes.len());
                assert_eq!(*at % FRAME_ALIGN as u64, 0);
                let rest = &bytes[*at as usize..];
                let seq = u64::from_le_bytes(
                    rest[format::FRAME_SEQ_OFFSET..format::FRAME_SEQ_OFFSET + 8]
                        .try_into()
                        .unwrap(),
                );
                let (header, _, _) = format::decode_frame(rest, seq).expect("later frame decodes");
                assert!(header.batch_first_seq > scan.next_seq());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes behind a valid header, so the frame loop always runs.
    let mut seg = format::encode_segment_header(1).to_vec();
    seg.extend_from_slice(data);
    check(&seg);

    for from in [0, 1, SEGMENT_HEADER_LEN, data.len() / 2, data.len()] {
        if from > seg.len() {
            continue;
        }
        if let Some((at, header)) = reader::find_next_valid_frame(&seg, from) {
            assert!(at >= from && at % FRAME_ALIGN == 0 && at + FRAME_HEADER_LEN <= seg.len());
            let (again, _, _) =
                format::decode_frame(&seg[at..], header.seq).expect("found frame decodes");
            assert_eq!(again, header);
        }
    }
});
