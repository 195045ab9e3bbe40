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
