//! Regression tests, each opening with the story of its bug.

use serde::{Deserialize, Serialize};
use volmgr::journal::{Journal, JournalConfig, JournalError, JournalRecord, LogEnd};

/// A record of many small integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counters(Vec<u64>);

impl JournalRecord for Counters {
    fn kind(&self) -> u8 {
        1
    }
}

/// The bug: bincode 2.0.1's decode limit counts every integer at its
/// in-memory width (8 bytes for a u64) while varint encoding writes small ones
/// in 1 byte, and encoding does not check the limit at all. A record of
/// 200,000 small u64s encodes to about 200 KB, under the 1 MiB frame limit, so
/// `append` wrote it durably; replay then claimed 1.6 MB against the limit,
/// got `LimitExceeded` and refused to open the journal, calling its own
/// acknowledged record corruption. Found by the property tests (a record
/// whose payload was within 16 bytes of the limit). Now `append` decodes every
/// record before writing it and refuses one that would not replay.
#[tokio::test]
async fn a_record_under_the_frame_limit_that_would_not_decode_is_refused_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_size: 4 << 20,
        ..JournalConfig::default()
    };
    let (journal, _) = Journal::<Counters>::open(dir.path(), config.clone()).unwrap();
    let fine = Counters(vec![7; 1000]);
    assert_eq!(journal.append(&fine).await.unwrap(), 1);
    let dense = Counters(vec![1; 200_000]);
    let encoded = volmgr::journal::encode_record(&dense).unwrap();
    assert!(encoded.len() < volmgr::journal::format::MAX_PAYLOAD_LEN);
    let err = journal.append(&dense).await.unwrap_err();
    assert!(matches!(err, JournalError::Encode(_)), "{err}");
    assert!(err.to_string().contains("would not decode"), "{err}");
    assert_eq!(journal.append(&fine).await.unwrap(), 2);
    journal.close().await;
    let (_journal, recovery) = Journal::<Counters>::open(dir.path(), config).unwrap();
    assert_eq!(recovery.end, LogEnd::Clean);
    assert_eq!(recovery.records, vec![(1, fine.clone()), (2, fine)]);
}

/// The bug: checkpoints were kept in call order, not sequence order. After
/// `checkpoint(100)`, `checkpoint(50)`, `checkpoint(120)`, retention dropped
/// the checkpoint at 100 (the first in the list) and kept 50 and 120, but the
/// segments covered by 100 were already deleted: a damaged checkpoint 120
/// then fell back to 50, whose history was gone, and open refused. Now a
/// checkpoint at or before the newest one is a no-op.
#[tokio::test]
async fn an_out_of_order_checkpoint_never_displaces_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_size: 4096,
        ..JournalConfig::default()
    };
    let (journal, _) = Journal::<Counters>::open(dir.path(), config.clone()).unwrap();
    for _ in 0..130 {
        journal.append(&Counters(vec![1; 20])).await.unwrap();
    }
    journal.checkpoint(100, b"at 100".to_vec()).await.unwrap();
    journal.checkpoint(50, b"at 50".to_vec()).await.unwrap();
    journal.checkpoint(120, b"at 120".to_vec()).await.unwrap();
    journal.close().await;
    let ckpt_dir = dir.path().join("checkpoints");
    let kept: Vec<u64> =
        volmgr::journal::reader::list_checkpoints(&volmgr::storage::RealStorage, &ckpt_dir)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
    assert_eq!(kept, [100, 120]);
    // Damage the newest: open falls back to 100 and replays 101..=130.
    let newest = ckpt_dir.join(volmgr::journal::format::checkpoint_file_name(120));
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[45] ^= 1;
    std::fs::write(&newest, bytes).unwrap();
    let (_journal, recovery) = Journal::<Counters>::open(dir.path(), config).unwrap();
    assert_eq!(recovery.checkpoint, Some((100, b"at 100".to_vec())));
    assert_eq!(recovery.rejected_checkpoints.len(), 1);
    assert_eq!(
        recovery.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (101..=130).collect::<Vec<_>>()
    );
}

/// The bug: after an invalid frame, the reader looks for a valid frame of a
/// later write batch (to tell damage from a torn write), and `dump --raw`
/// looks for the next valid frame; both tried every 8-byte offset and
/// checksummed the frame each one claimed. Crafted bytes where every offset
/// claims a 1 MiB frame made that quadratic: hours for a large segment (found
/// while building the journal tool). Both scans now have a checksum budget
/// linear in the bytes scanned; running out of it counts as "cannot be a torn
/// write" for the classifier and as "nothing further" for the raw dump.
#[test]
fn crafted_frames_claiming_huge_lengths_at_every_offset_scan_in_linear_time() {
    use volmgr::journal::format::{self, FRAME_ALIGN, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN};
    use volmgr::journal::reader::{self, SegmentEnd};

    let len = 24 << 20;
    let mut bytes = vec![0u8; len];
    bytes[..format::SEGMENT_HEADER_LEN].copy_from_slice(&format::encode_segment_header(1));
    let mut p = format::SEGMENT_HEADER_LEN;
    while p + FRAME_HEADER_LEN <= len {
        // crc 0 (wrong), len just under the limit, seq 9, batch 9.
        bytes[p + 4..p + 8].copy_from_slice(&((MAX_PAYLOAD_LEN - 64) as u32).to_le_bytes());
        bytes[p + 8..p + 16].copy_from_slice(&9u64.to_le_bytes());
        bytes[p + 16..p + 24].copy_from_slice(&9u64.to_le_bytes());
        p += FRAME_ALIGN;
    }
    let scan = reader::scan_segment(&bytes).expect("header is valid");
    match scan.end {
        SegmentEnd::Invalid {
            later_batch_frame, ..
        } => assert!(
            later_batch_frame.is_some(),
            "unclassifiable damage is never a torn tail"
        ),
        other => panic!("crafted bytes accepted: {other:?}"),
    }
    assert_eq!(
        reader::find_next_valid_frame(&bytes, format::SEGMENT_HEADER_LEN),
        None
    );
}
