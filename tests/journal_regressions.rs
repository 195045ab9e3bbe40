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
