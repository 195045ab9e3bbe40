//! The byte tables of `journal-format.md`, checked against the code.
//!
//! Every structure is built here BY HAND from the spec: raw bytes pushed at the
//! offsets the tables give, with this file's own literals (not the constants of
//! `format.rs`) and its own CRC-32/IEEE computation. The results must equal the
//! encoders' output byte for byte, and the decoders must read them back.
//! If this test fails, either the code or the spec changed the wire format:
//! that is a format version change (see "Version changes" in the spec).

use volmgr::journal::format::{self, FrameHeader, Invalid};

/// Little-endian, as the spec states once for all integers.
fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn crc32_ieee(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

#[test]
fn crc32_is_the_ieee_polynomial_with_the_standard_check_value() {
    // CRC-32/ISO-HDLC ("IEEE", zlib, PNG): check value of "123456789".
    assert_eq!(crc32_ieee(&[b"123456789"]), 0xCBF4_3926);
}

#[test]
fn spec_constants_match_the_code() {
    assert_eq!(format::FORMAT_VERSION, 1);
    assert_eq!(&format::SEGMENT_MAGIC, b"VMGRJRNL");
    assert_eq!(&format::CHECKPOINT_MAGIC, b"VMGRCKPT");
    assert_eq!(format::SEGMENT_HEADER_LEN, 32);
    assert_eq!(format::FRAME_HEADER_LEN, 32);
    assert_eq!(format::CHECKPOINT_HEADER_LEN, 40);
    assert_eq!(format::FRAME_ALIGN, 8);
    assert_eq!(format::MAX_PAYLOAD_LEN, 1_048_576);
    assert_eq!(format::MAX_CHECKPOINT_PAYLOAD_LEN, 268_435_456);
    assert_eq!(format::MAX_SEGMENT_LEN, 1_073_741_824);
    assert_eq!(format::MIN_SEGMENT_LEN, 4096);
    assert_eq!(format::MAX_SEQ, u64::MAX - 1);
    // Offsets of the tables.
    assert_eq!(
        [
            format::SEG_MAGIC_OFFSET,
            format::SEG_VERSION_OFFSET,
            format::SEG_RESERVED_OFFSET,
            format::SEG_FIRST_SEQ_OFFSET,
            format::SEG_RESERVED2_OFFSET,
            format::SEG_CRC_OFFSET
        ],
        [0, 8, 12, 16, 24, 28]
    );
    assert_eq!(
        [
            format::FRAME_CRC_OFFSET,
            format::FRAME_LEN_OFFSET,
            format::FRAME_SEQ_OFFSET,
            format::FRAME_BATCH_OFFSET,
            format::FRAME_KIND_OFFSET,
            format::FRAME_RESERVED_OFFSET
        ],
        [0, 4, 8, 16, 24, 25]
    );
    assert_eq!(
        [
            format::CKPT_MAGIC_OFFSET,
            format::CKPT_VERSION_OFFSET,
            format::CKPT_RESERVED_OFFSET,
            format::CKPT_SEQ_OFFSET,
            format::CKPT_LEN_OFFSET,
            format::CKPT_CRC_OFFSET,
            format::CKPT_RESERVED2_OFFSET
        ],
        [0, 8, 12, 16, 24, 32, 36]
    );
}

#[test]
fn hand_built_segment_header_matches_the_encoder_and_decodes() {
    let first_seq: u64 = 0x0102_0304_0506_0708;
    let mut h = [0u8; 32];
    put(&mut h, 0, b"VMGRJRNL"); // magic
    put(&mut h, 8, &1u32.to_le_bytes()); // format version
    // 12..16 reserved, zero
    put(&mut h, 16, &first_seq.to_le_bytes()); // first sequence number
    // 24..28 reserved, zero
    let crc = crc32_ieee(&[&h[0..28]]); // CRC over bytes 0..28
    put(&mut h, 28, &crc.to_le_bytes());

    assert_eq!(format::encode_segment_header(first_seq), h);
    assert_eq!(format::decode_segment_header(&h), Ok(first_seq));
    // Little-endian: the low byte of first_seq comes first.
    assert_eq!(h[16], 0x08);
    assert_eq!(h[23], 0x01);
}

/// Builds a frame from the frame-header table.
fn hand_frame(seq: u64, batch_first_seq: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 32];
    put(
        &mut f,
        4,
        &u32::try_from(payload.len()).unwrap().to_le_bytes(),
    ); // payload length
    put(&mut f, 8, &seq.to_le_bytes()); // sequence number
    put(&mut f, 16, &batch_first_seq.to_le_bytes()); // batch's first sequence number
    f[24] = kind; // record kind
    // 25..32 reserved, zero
    f.extend_from_slice(payload);
    // CRC over header bytes 4..32 followed by the payload (not the padding).
    let crc = crc32_ieee(&[&f[4..32], payload]);
    put(&mut f, 0, &crc.to_le_bytes());
    // Zero padding up to the next multiple of 8.
    while !f.len().is_multiple_of(8) {
        f.push(0);
    }
    f
}

#[test]
fn hand_built_frames_match_the_encoder_and_decode() {
    let payloads: [&[u8]; 5] = [b"", b"a", b"1234567", b"12345678", &[0xA5; 301]];
    for (i, payload) in payloads.iter().enumerate() {
        let seq = 1000 + i as u64;
        let batch = 1000;
        let kind = 0x40 + u8::try_from(i).unwrap();
        let hand = hand_frame(seq, batch, kind, payload);
        assert_eq!(hand.len(), (32 + payload.len()).div_ceil(8) * 8);
        assert_eq!(hand.len(), format::frame_len(payload.len()));

        let mut encoded = Vec::new();
        format::encode_frame(
            &mut encoded,
            FrameHeader {
                seq,
                batch_first_seq: batch,
                kind,
            },
            payload,
        );
        assert_eq!(encoded, hand, "frame with a {}-byte payload", payload.len());

        let (header, decoded, len) = format::decode_frame(&hand, seq).unwrap();
        assert_eq!(
            header,
            FrameHeader {
                seq,
                batch_first_seq: batch,
                kind
            }
        );
        assert_eq!(decoded, *payload);
        assert_eq!(len, hand.len());
    }
}

#[test]
fn frame_checksum_covers_header_fields_and_payload_but_padding_must_be_zero() {
    let good = hand_frame(7, 5, 3, b"hello");
    // Every byte from 4 to the end of the payload is under the CRC.
    for i in 4..32 + 5 {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(format::decode_frame(&bad, 7).is_err(), "byte {i}");
    }
    // The CRC field itself.
    let mut bad = good.clone();
    bad[0] ^= 0x80;
    assert!(matches!(
        format::decode_frame(&bad, 7),
        Err(Invalid::FrameChecksum { .. })
    ));
    // Padding is outside the CRC but must be zero.
    let mut bad = good.clone();
    *bad.last_mut().unwrap() = 1;
    assert_eq!(format::decode_frame(&bad, 7), Err(Invalid::PaddingNotZero));
    // The expected sequence number is checked.
    assert!(matches!(
        format::decode_frame(&good, 8),
        Err(Invalid::SequenceMismatch {
            expected: 8,
            found: 7
        })
    ));
}

#[test]
fn hand_built_checkpoint_matches_the_encoder_and_decodes() {
    let seq: u64 = 4242;
    let payload = b"state bytes, any length";
    let mut c = vec![0u8; 40];
    put(&mut c, 0, b"VMGRCKPT"); // magic
    put(&mut c, 8, &1u32.to_le_bytes()); // format version
    // 12..16 reserved, zero
    put(&mut c, 16, &seq.to_le_bytes()); // sequence number covered
    put(&mut c, 24, &(payload.len() as u64).to_le_bytes()); // payload length
    // 36..40 reserved, zero (outside the CRC, checked to be zero)
    let crc = crc32_ieee(&[&c[0..32], payload]); // header 0..32, then payload
    put(&mut c, 32, &crc.to_le_bytes());
    c.extend_from_slice(payload);

    assert_eq!(format::encode_checkpoint(seq, payload), c);
    assert_eq!(format::decode_checkpoint(&c), Ok((seq, &payload[..])));
}

#[test]
fn file_names_are_twenty_digit_sequence_numbers() {
    assert_eq!(format::segment_file_name(1), "00000000000000000001.seg");
    assert_eq!(
        format::checkpoint_file_name(42),
        "00000000000000000042.ckpt"
    );
    assert_eq!(
        format::parse_numbered_name("00000000000000000042.ckpt", "ckpt"),
        Some(42)
    );
    assert_eq!(
        format::parse_numbered_name(".00000000000000000001.seg.tmp", "seg"),
        None
    );
    assert_eq!(
        format::parse_numbered_name("00000000000000000001.seg.at-64.broken", "seg"),
        None
    );
}

#[test]
fn bincode_configuration_is_standard_little_endian_varint() {
    // The byte rules the spec lists for the varint encoding.
    let enc = |v: u64| volmgr::journal::encode_record(&v).unwrap();
    assert_eq!(enc(0), [0]);
    assert_eq!(enc(250), [250]);
    assert_eq!(enc(251), [251, 251, 0]);
    assert_eq!(enc(0xFFFF), [251, 0xFF, 0xFF]);
    assert_eq!(enc(0x1_0000), [252, 0, 0, 1, 0]);
    assert_eq!(enc(0x1_0000_0000), [253, 0, 0, 0, 0, 1, 0, 0, 0]);
    // Signed integers are zigzag-encoded first.
    assert_eq!(volmgr::journal::encode_record(&-1i64).unwrap(), [1]);
    assert_eq!(volmgr::journal::encode_record(&1i64).unwrap(), [2]);
    // Strings and byte vectors: varint length, then the bytes.
    assert_eq!(
        volmgr::journal::encode_record(&"ab").unwrap(),
        [2, b'a', b'b']
    );
    // Enum variants: varint variant index (u32), then the fields.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum E {
        A,
        B(u16),
    }
    assert_eq!(
        volmgr::journal::encode_record(&E::B(300)).unwrap(),
        [1, 251, 44, 1]
    );
    assert_eq!(volmgr::journal::encode_record(&E::A).unwrap(), [0]);
    // Option: 0 = None, 1 = Some then the value. bool: one byte 0/1.
    assert_eq!(volmgr::journal::encode_record(&Some(true)).unwrap(), [1, 1]);
    assert_eq!(volmgr::journal::encode_record(&None::<bool>).unwrap(), [0]);
    // u8/i8 are one raw byte, never a varint; u16 255 is a varint.
    assert_eq!(volmgr::journal::encode_record(&255u8).unwrap(), [255]);
    assert_eq!(volmgr::journal::encode_record(&-2i8).unwrap(), [0xFE]);
    assert_eq!(
        volmgr::journal::encode_record(&255u16).unwrap(),
        [251, 255, 0]
    );
    // char: its UTF-8 bytes.
    assert_eq!(volmgr::journal::encode_record(&'é').unwrap(), [0xC3, 0xA9]);
    // Fixed-width little endian is NOT used for integers: u32 7 is one byte.
    assert_eq!(volmgr::journal::encode_record(&7u32).unwrap(), [7]);
    // Trailing bytes are refused.
    assert!(volmgr::journal::decode_record::<u8>(&[1, 2]).is_err());
}

#[test]
fn record_decoder_refuses_lengths_over_the_limit_before_allocating() {
    // A byte vector claiming u64::MAX elements: an error, not an abort.
    let mut bytes = vec![253];
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(volmgr::journal::decode_record::<Vec<u8>>(&bytes).is_err());
    // A claimed length just over 1 MiB with too few bytes after it.
    let mut bytes = vec![252];
    bytes.extend_from_slice(&((1u32 << 20) + 1).to_le_bytes());
    assert!(volmgr::journal::decode_record::<Vec<u8>>(&bytes).is_err());
}

/// The reconciliation cases are `Case`'s variant indices on disk (spec:
/// "Record schema changes"): `DestroyFailed`, added for a destroy refused
/// at open, is index 18, one byte `0x12` where the record's `case` field
/// is, and every older case keeps its index, so a journal written before
/// reads as before.
#[test]
fn a_destroy_failed_reconciliation_is_case_18_and_the_older_cases_keep_their_bytes() {
    use volmgr::state::{Case, Effect, OpId, OpResult, Record};
    let older = [
        Case::CreateRolledForward,
        Case::CreateInterrupted,
        Case::CreateFinished,
        Case::DestroyFinished,
        Case::DestroyAlreadyGone,
        Case::DerivedRolledForward,
        Case::DerivedUndone,
        Case::VolumeLost,
        Case::LostVolumeFound,
        Case::OrphanReported,
        Case::OrphanGone,
        Case::ForeignIgnored,
        Case::ProviderAddInterrupted,
        Case::AdoptInterrupted,
        Case::ReceiveSuspended,
        Case::AbortReceiveFinished,
        Case::AttributesReapplied,
        Case::AttributesInterrupted,
    ];
    for (index, case) in (0u8..).zip(older) {
        assert_eq!(volmgr::journal::encode_record(&case).unwrap(), [index]);
    }
    assert_eq!(
        volmgr::journal::encode_record(&Case::DestroyFailed).unwrap(),
        [18]
    );
    let op = OpId::from_u128(1);
    let record = |case| Record::Reconciled {
        at_ms: 5,
        case,
        detail: "d".into(),
        effect: Effect::Resolve {
            op,
            result: OpResult::Failed { error: "e".into() },
        },
    };
    // Record variant 2 (Reconciled), at_ms, case, detail, effect Resolve
    // (0), op (a UUID: its 16 bytes with their length), Failed (1), error.
    let mut bytes = vec![2, 5, 18, 1, b'd', 0, 16];
    bytes.extend_from_slice(op.as_bytes());
    bytes.extend_from_slice(&[1, 1, b'e']);
    assert_eq!(
        volmgr::journal::encode_record(&record(Case::DestroyFailed)).unwrap(),
        bytes
    );
    assert_eq!(
        volmgr::journal::decode_record::<Record>(&bytes).unwrap(),
        record(Case::DestroyFailed)
    );
    // The same record as an older volmgr wrote it: byte 3, destroy-finished.
    bytes[2] = 3;
    assert_eq!(
        volmgr::journal::decode_record::<Record>(&bytes).unwrap(),
        record(Case::DestroyFinished)
    );
    // One past the last case is refused (what an older volmgr does with 18).
    bytes[2] = 19;
    assert!(volmgr::journal::decode_record::<Record>(&bytes).is_err());
}
