//! The records of a send stream after its `DRR_BEGIN`, framed as the
//! kernel frames them (`OpenZFS` 2.1 `dmu_recv.c`, `receive_read_record`),
//! and what each may cost the receiving pool: the *charge* the receive's
//! space bound (`zfs/space.rs`) counts before it lets the record through.
//!
//! # Framing
//!
//! Every record is a fixed `dmu_replay_record_t` of [`RECORD_LEN`] bytes
//! (type `u32` at 0, `drr_payloadlen` `u32` at 4, the type's fields from 8),
//! in the byte order the begin record's magic showed, followed by a payload
//! whose length the kernel derives from the type's fields, never from
//! `drr_payloadlen` (except the begin record's own payload, an nvlist):
//!
//! | type | payload |
//! |------|---------|
//! | `OBJECT` (1) | `drr_raw_bonuslen` (u32 at 36) if not 0, else `drr_bonuslen` (u32 at 28) rounded up to 8 |
//! | `WRITE` (3) | `drr_compressed_size` (u64 at 96) if `drr_compressiontype` (u8 at 50) is not 0, else `drr_logical_size` (u64 at 32) |
//! | `SPILL` (7) | `drr_compressed_size` (u64 at 40) if not 0, else `drr_length` (u64 at 16) |
//! | `WRITE_EMBEDDED` (8) | `drr_psize` (u32 at 52) rounded up to 8 |
//! | `FREEOBJECTS` (2), `FREE` (4), `OBJECT_RANGE` (9), `REDACT` (10), `END` (5) | none |
//!
//! `BEGIN` (0) after the first record, `WRITE_BYREF` (6: a deduplicated
//! stream, which `OpenZFS` 2.1 no longer receives and whose records write
//! data the stream does not carry) and any other type are refused, and so
//! is a payload above [`MAX_PAYLOAD`] (`SPA_MAXBLOCKSIZE`, more than any
//! block): [`ProviderError::Stream`], never a panic. Bytes after `END` are
//! counted, never parsed: `zfs recv` reads no further.
//!
//! # Charges
//!
//! A record is charged its own bytes (header and payload: what it writes,
//! at most, when the stream is not compressed; a compressed block is
//! written as sent) plus what it may allocate beyond them:
//! - `OBJECT`: its dnode (`drr_dn_slots`, u8 at 34, times 512 bytes; at
//!   least one slot) and [`BLOCK_ALLOWANCE`];
//! - `WRITE`, `SPILL`, `WRITE_EMBEDDED`: [`BLOCK_ALLOWANCE`] (a data block
//!   rounded up to the pool's sector, and a new chain of indirect blocks,
//!   two copies each, when the block lands far from the previous one);
//! - `FREE`: [`FREE_ALLOWANCE`] (a range that starts or ends inside a block
//!   rewrites that block: two blocks of 128 KiB, the default record size);
//! - the others: their header only (they free, or change nothing).
//!
//! The charge is a bound of the record's cost only as far as those
//! allowances go: a `FREE` cutting into blocks larger than 128 KiB costs
//! more than it is charged. What the pool really has free is measured
//! again after every window of charges (see `zfs/space.rs`), so an
//! undercharge is seen one window later, not never.

use super::parse::BACKUP_MAGIC;
use crate::provider::ProviderError;

/// Size of every record (`sizeof (dmu_replay_record_t)`).
pub const RECORD_LEN: usize = 312;
/// The largest payload a record may carry (`SPA_MAXBLOCKSIZE`).
pub const MAX_PAYLOAD: u64 = 16 << 20;
/// Charged to every record that allocates a block, beyond its bytes: 13
/// sectors of 4 KiB (the data block's round-up, and six levels of
/// indirect blocks in two copies each).
pub const BLOCK_ALLOWANCE: u64 = 13 * 4096;
/// Charged to a `FREE` record: two partial blocks of 128 KiB rewritten.
pub const FREE_ALLOWANCE: u64 = 2 * (128 << 10);
/// Bytes of one dnode slot.
const DNODE_SLOT: u64 = 512;

const DRR_BEGIN: u32 = 0;
const DRR_OBJECT: u32 = 1;
const DRR_FREEOBJECTS: u32 = 2;
const DRR_WRITE: u32 = 3;
const DRR_FREE: u32 = 4;
const DRR_END: u32 = 5;
const DRR_WRITE_BYREF: u32 = 6;
const DRR_SPILL: u32 = 7;
const DRR_WRITE_EMBEDDED: u32 = 8;
const DRR_OBJECT_RANGE: u32 = 9;
const DRR_REDACT: u32 = 10;

/// Offsets of the fields read, from the record's start (the union of the
/// type's fields starts at 8, after `drr_type` and `drr_payloadlen`).
const TYPE_AT: usize = 0;
const PAYLOADLEN_AT: usize = TYPE_AT + 4;
const UNION_AT: usize = PAYLOADLEN_AT + 4;
// drr_object: object u64, type u32, bonustype u32, blksz u32, bonuslen u32,
// checksumtype u8, compress u8, dn_slots u8, flags u8, raw_bonuslen u32.
const OBJECT_BONUSLEN_AT: usize = UNION_AT + 8 + 4 + 4 + 4;
const OBJECT_DN_SLOTS_AT: usize = OBJECT_BONUSLEN_AT + 4 + 1 + 1;
const OBJECT_RAW_BONUSLEN_AT: usize = OBJECT_DN_SLOTS_AT + 1 + 1;
// drr_write: object u64, type u32, pad u32, offset u64, logical_size u64,
// toguid u64, checksumtype u8, flags u8, compressiontype u8, pad2[5],
// key (ddt_key_t: 4 u64 checksum, u64 prop), compressed_size u64.
const WRITE_LOGICAL_AT: usize = UNION_AT + 8 + 4 + 4 + 8;
const WRITE_COMPRESSIONTYPE_AT: usize = WRITE_LOGICAL_AT + 8 + 8 + 1 + 1;
const WRITE_COMPRESSED_AT: usize = WRITE_COMPRESSIONTYPE_AT + 1 + 5 + 40;
// drr_spill: object u64, length u64, toguid u64, flags u8,
// compressiontype u8, pad[6], compressed_size u64.
const SPILL_LENGTH_AT: usize = UNION_AT + 8;
const SPILL_COMPRESSED_AT: usize = SPILL_LENGTH_AT + 8 + 8 + 1 + 1 + 6;
// drr_write_embedded: object u64, offset u64, length u64, toguid u64,
// compression u8, etype u8, pad[6], lsize u32, psize u32.
const EMBEDDED_PSIZE_AT: usize = UNION_AT + 8 + 8 + 8 + 8 + 1 + 1 + 6 + 4;

const _: () = assert!(OBJECT_BONUSLEN_AT == 28);
const _: () = assert!(OBJECT_DN_SLOTS_AT == 34);
const _: () = assert!(OBJECT_RAW_BONUSLEN_AT == 36);
const _: () = assert!(WRITE_LOGICAL_AT == 32);
const _: () = assert!(WRITE_COMPRESSIONTYPE_AT == 50);
const _: () = assert!(WRITE_COMPRESSED_AT == 96);
const _: () = assert!(SPILL_COMPRESSED_AT == 40);
const _: () = assert!(EMBEDDED_PSIZE_AT == 52);
const _: () = assert!(EMBEDDED_PSIZE_AT + 4 <= RECORD_LEN);

/// One record header, judged: its payload's length and its charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub drr_type: u32,
    pub payload: u64,
    /// Bytes of pool this record may take (header and payload included).
    pub charge: u64,
}

/// Reads the fields of one record in the stream's byte order.
#[derive(Clone, Copy, Debug)]
struct Fields<'a> {
    b: &'a [u8; RECORD_LEN],
    big_endian: bool,
}

impl Fields<'_> {
    fn u32_at(&self, at: usize) -> u32 {
        let v: [u8; 4] = self.b[at..at + 4].try_into().expect("4 bytes");
        if self.big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }

    fn u64_at(&self, at: usize) -> u64 {
        let v: [u8; 8] = self.b[at..at + 8].try_into().expect("8 bytes");
        if self.big_endian {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    }
}

/// The byte order of a stream from its begin record (`parse_begin` has
/// accepted it): `true` for big-endian.
pub fn big_endian_of(begin: &[u8]) -> bool {
    begin.len() >= 16
        && u64::from_le_bytes(begin[8..16].try_into().expect("8 bytes")) != BACKUP_MAGIC
}

/// The payload length of the begin record (`drr_payloadlen`: the nvlist
/// of a resumable stream), bounded by [`MAX_PAYLOAD`].
pub fn begin_payload(begin: &[u8; RECORD_LEN], big_endian: bool) -> Result<u64, ProviderError> {
    let f = Fields {
        b: begin,
        big_endian,
    };
    bounded(u64::from(f.u32_at(PAYLOADLEN_AT)), "BEGIN")
}

fn bounded(payload: u64, what: &str) -> Result<u64, ProviderError> {
    if payload > MAX_PAYLOAD {
        return Err(ProviderError::Stream(format!(
            "{what} record declares a payload of {payload} bytes, more than {MAX_PAYLOAD}"
        )));
    }
    Ok(payload)
}

/// Judges one record header (not the begin record): its payload's length,
/// as the kernel derives it, and its charge (see the module documentation).
/// `rewrites`: the stream changes existing objects (an incremental or a
/// resumed stream), so a `FREE` may rewrite a block.
pub fn record(
    b: &[u8; RECORD_LEN],
    big_endian: bool,
    rewrites: bool,
) -> Result<Record, ProviderError> {
    let f = Fields { b, big_endian };
    let drr_type = f.u32_at(TYPE_AT);
    let header = RECORD_LEN as u64;
    let (payload, allowance) = match drr_type {
        DRR_OBJECT => {
            let raw = f.u32_at(OBJECT_RAW_BONUSLEN_AT);
            let payload = if raw != 0 {
                u64::from(raw)
            } else {
                u64::from(f.u32_at(OBJECT_BONUSLEN_AT)).next_multiple_of(8)
            };
            let slots = u64::from(b[OBJECT_DN_SLOTS_AT]).max(1);
            (
                bounded(payload, "OBJECT")?,
                slots * DNODE_SLOT + BLOCK_ALLOWANCE,
            )
        }
        DRR_WRITE => {
            let payload = if b[WRITE_COMPRESSIONTYPE_AT] != 0 {
                f.u64_at(WRITE_COMPRESSED_AT)
            } else {
                f.u64_at(WRITE_LOGICAL_AT)
            };
            (bounded(payload, "WRITE")?, BLOCK_ALLOWANCE)
        }
        DRR_SPILL => {
            let compressed = f.u64_at(SPILL_COMPRESSED_AT);
            let payload = if compressed != 0 {
                compressed
            } else {
                f.u64_at(SPILL_LENGTH_AT)
            };
            (bounded(payload, "SPILL")?, BLOCK_ALLOWANCE)
        }
        DRR_WRITE_EMBEDDED => {
            let payload = u64::from(f.u32_at(EMBEDDED_PSIZE_AT)).next_multiple_of(8);
            (bounded(payload, "WRITE_EMBEDDED")?, BLOCK_ALLOWANCE)
        }
        DRR_FREE if rewrites => (0, FREE_ALLOWANCE),
        DRR_FREE | DRR_FREEOBJECTS | DRR_OBJECT_RANGE | DRR_REDACT | DRR_END => (0, 0),
        DRR_WRITE_BYREF => {
            return Err(ProviderError::Stream(
                "deduplicated stream (WRITE_BYREF record): not accepted".into(),
            ));
        }
        DRR_BEGIN => {
            return Err(ProviderError::Stream(
                "a second BEGIN record inside the stream".into(),
            ));
        }
        other => {
            return Err(ProviderError::Stream(format!(
                "unknown record type {other}"
            )));
        }
    };
    Ok(Record {
        drr_type,
        payload,
        charge: header + payload + allowance,
    })
}

/// Where a stream's parse stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// `have` bytes of the next record header read.
    Header { have: usize },
    /// `left` bytes of the current record's payload to pass.
    Payload { left: u64 },
    /// After `END`: the rest is counted, not parsed.
    Ended,
}

/// Follows a stream's records across arbitrary chunk boundaries, from the
/// first byte after the begin record.
#[derive(Debug, Clone)]
pub struct StreamAccount {
    big_endian: bool,
    rewrites: bool,
    at: At,
    header: [u8; RECORD_LEN],
    /// Records judged so far.
    pub records: u64,
}

impl StreamAccount {
    /// After a begin record whose payload is `begin_payload` bytes long;
    /// `rewrites` as [`record`] takes it.
    pub fn new(big_endian: bool, begin_payload: u64, rewrites: bool) -> Self {
        StreamAccount {
            big_endian,
            rewrites,
            at: if begin_payload > 0 {
                At::Payload {
                    left: begin_payload,
                }
            } else {
                At::Header { have: 0 }
            },
            header: [0; RECORD_LEN],
            records: 0,
        }
    }

    /// Whether the `END` record has been seen.
    pub fn ended(&self) -> bool {
        self.at == At::Ended
    }

    /// How many of `buf`'s bytes may pass as one step, and the charge due
    /// before they do: a header's bytes are held back (`0` charged) until
    /// the header is whole; the step that completes a header carries that
    /// record's whole charge. Call [`Self::advance`] with the count once
    /// the step is allowed. Never more than `buf.len()`; `0` only for an
    /// empty `buf`.
    pub fn next_step(&mut self, buf: &[u8]) -> Result<(usize, u64), ProviderError> {
        if buf.is_empty() {
            return Ok((0, 0));
        }
        match self.at {
            At::Ended => Ok((buf.len(), 0)),
            At::Payload { left } => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                Ok((n, 0))
            }
            At::Header { have } => {
                let n = (RECORD_LEN - have).min(buf.len());
                self.header[have..have + n].copy_from_slice(&buf[..n]);
                if have + n < RECORD_LEN {
                    return Ok((n, 0));
                }
                let r = record(&self.header, self.big_endian, self.rewrites)?;
                Ok((n, r.charge))
            }
        }
    }

    /// Moves past `n` bytes that [`Self::next_step`] returned.
    pub fn advance(&mut self, n: usize) -> Result<(), ProviderError> {
        self.at = match self.at {
            At::Ended => At::Ended,
            At::Payload { left } => {
                let left = left - n as u64;
                if left == 0 {
                    At::Header { have: 0 }
                } else {
                    At::Payload { left }
                }
            }
            At::Header { have } if have + n < RECORD_LEN => At::Header { have: have + n },
            At::Header { .. } => {
                let r = record(&self.header, self.big_endian, self.rewrites)?;
                self.records += 1;
                if r.drr_type == DRR_END {
                    At::Ended
                } else if r.payload > 0 {
                    At::Payload { left: r.payload }
                } else {
                    At::Header { have: 0 }
                }
            }
        };
        Ok(())
    }
}

/// The total charge of `bytes`, the records after a begin record, as
/// [`StreamAccount`] counts them fed in chunks of `chunk` bytes (at least
/// 1); for tests and the fuzz target.
#[doc(hidden)]
pub fn charge_of(
    bytes: &[u8],
    big_endian: bool,
    rewrites: bool,
    chunk: usize,
) -> Result<u64, ProviderError> {
    let mut a = StreamAccount::new(big_endian, 0, rewrites);
    let mut total = 0u64;
    for piece in bytes.chunks(chunk.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            let (n, charge) = a.next_step(rest)?;
            total = total.saturating_add(charge);
            a.advance(n)?;
            rest = &rest[n..];
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian record of type `t` with `fields` (offset, bytes).
    fn rec(t: u32, fields: &[(usize, &[u8])]) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[..4].copy_from_slice(&t.to_le_bytes());
        for (at, v) in fields {
            b[*at..*at + v.len()].copy_from_slice(v);
        }
        b
    }

    fn write(logical: u64, compressed: Option<u64>) -> [u8; RECORD_LEN] {
        match compressed {
            None => rec(DRR_WRITE, &[(32, &logical.to_le_bytes())]),
            Some(c) => rec(
                DRR_WRITE,
                &[
                    (32, &logical.to_le_bytes()),
                    (50, &[4]),
                    (96, &c.to_le_bytes()),
                ],
            ),
        }
    }

    /// Header, payload of `payload` bytes.
    fn with_payload(h: [u8; RECORD_LEN], payload: usize) -> Vec<u8> {
        let mut v = h.to_vec();
        v.extend(std::iter::repeat_n(0xa5, payload));
        v
    }

    #[test]
    fn payload_lengths_are_derived_from_each_types_fields_as_the_kernel_does() {
        let h = RECORD_LEN as u64;
        let object = rec(DRR_OBJECT, &[(28, &13u32.to_le_bytes()), (34, &[2])]);
        assert_eq!(
            record(&object, false, true).unwrap(),
            Record {
                drr_type: DRR_OBJECT,
                payload: 16,
                charge: h + 16 + 2 * DNODE_SLOT + BLOCK_ALLOWANCE
            },
            "bonus rounded up to 8, two dnode slots"
        );
        let raw = rec(
            DRR_OBJECT,
            &[(28, &13u32.to_le_bytes()), (36, &21u32.to_le_bytes())],
        );
        assert_eq!(
            record(&raw, false, true).unwrap().payload,
            21,
            "raw bonus as is"
        );
        assert_eq!(
            record(&write(4096, None), false, true).unwrap().payload,
            4096
        );
        assert_eq!(
            record(&write(131_072, Some(700)), false, true)
                .unwrap()
                .payload,
            700,
            "a compressed block is sent, and written, at its compressed size"
        );
        let spill = rec(DRR_SPILL, &[(16, &512u64.to_le_bytes())]);
        assert_eq!(record(&spill, false, true).unwrap().payload, 512);
        let spill_c = rec(
            DRR_SPILL,
            &[(16, &512u64.to_le_bytes()), (40, &100u64.to_le_bytes())],
        );
        assert_eq!(record(&spill_c, false, true).unwrap().payload, 100);
        let embedded = rec(DRR_WRITE_EMBEDDED, &[(52, &13u32.to_le_bytes())]);
        assert_eq!(record(&embedded, false, true).unwrap().payload, 16);
        let free = rec(DRR_FREE, &[(24, &u64::MAX.to_le_bytes())]);
        assert_eq!(
            record(&free, false, true).unwrap(),
            Record {
                drr_type: DRR_FREE,
                payload: 0,
                charge: h + FREE_ALLOWANCE
            }
        );
        assert_eq!(
            record(&free, false, false).unwrap().charge,
            h,
            "a full stream's objects are new: a FREE rewrites nothing"
        );
        for t in [DRR_FREEOBJECTS, DRR_OBJECT_RANGE, DRR_REDACT, DRR_END] {
            assert_eq!(record(&rec(t, &[]), false, true).unwrap().charge, h);
        }
    }

    #[test]
    fn a_big_endian_stream_is_read_in_its_own_byte_order() {
        let mut b = [0u8; RECORD_LEN];
        b[..4].copy_from_slice(&DRR_WRITE.to_be_bytes());
        b[32..40].copy_from_slice(&4096u64.to_be_bytes());
        assert_eq!(record(&b, true, true).unwrap().payload, 4096);
        assert!(
            record(&b, false, true).is_err(),
            "type read little-endian: unknown"
        );
        let mut begin = vec![0u8; RECORD_LEN];
        begin[8..16].copy_from_slice(&BACKUP_MAGIC.to_be_bytes());
        assert!(big_endian_of(&begin));
        begin[8..16].copy_from_slice(&BACKUP_MAGIC.to_le_bytes());
        assert!(!big_endian_of(&begin));
    }

    #[test]
    fn records_that_would_break_the_accounting_are_refused_as_stream_errors() {
        let cases = [
            (rec(DRR_WRITE_BYREF, &[]), "deduplicated"),
            (rec(DRR_BEGIN, &[]), "second BEGIN"),
            (rec(11, &[]), "unknown record type 11"),
            (rec(u32::MAX, &[]), "unknown record type"),
            (write(MAX_PAYLOAD + 1, None), "payload"),
            (write(4096, Some(MAX_PAYLOAD + 1)), "payload"),
            (rec(DRR_SPILL, &[(16, &u64::MAX.to_le_bytes())]), "payload"),
        ];
        for (b, want) in cases {
            match record(&b, false, true) {
                Err(ProviderError::Stream(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        let mut begin = [0u8; RECORD_LEN];
        begin[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(begin_payload(&begin, false).is_err());
        begin[4..8].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(begin_payload(&begin, false).unwrap(), 100);
    }

    /// `OBJECT` (bonus 8), `WRITE` 4096, `FREE`, `WRITE_EMBEDDED` 8, `END`, then
    /// trailing bytes; and its total charge.
    fn sample() -> (Vec<u8>, u64) {
        let h = RECORD_LEN as u64;
        let mut s = Vec::new();
        s.extend(with_payload(
            rec(DRR_OBJECT, &[(28, &8u32.to_le_bytes())]),
            8,
        ));
        s.extend(with_payload(write(4096, None), 4096));
        s.extend(rec(DRR_FREE, &[]));
        s.extend(with_payload(
            rec(DRR_WRITE_EMBEDDED, &[(52, &8u32.to_le_bytes())]),
            8,
        ));
        s.extend(rec(DRR_END, &[]));
        s.extend([0xffu8; 1000]);
        let charge = (h + 8 + DNODE_SLOT + BLOCK_ALLOWANCE)
            + (h + 4096 + BLOCK_ALLOWANCE)
            + (h + FREE_ALLOWANCE)
            + (h + 8 + BLOCK_ALLOWANCE)
            + h;
        (s, charge)
    }

    #[test]
    fn the_charge_of_a_stream_does_not_depend_on_how_it_is_chunked() {
        let (s, want) = sample();
        for chunk in [1, 7, 311, 312, 313, 4096, s.len()] {
            assert_eq!(
                charge_of(&s, false, true, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn bytes_after_end_are_counted_not_parsed() {
        let (s, want) = sample();
        let mut a = StreamAccount::new(false, 0, true);
        let (mut rest, mut total) = (&s[..], 0);
        while !rest.is_empty() {
            let (n, c) = a.next_step(rest).unwrap();
            total += c;
            a.advance(n).unwrap();
            rest = &rest[n..];
        }
        assert!(a.ended());
        assert_eq!(a.records, 5);
        assert_eq!(total, want, "the 1000 bytes of 0xff after END cost nothing");
    }

    #[test]
    fn a_begin_payload_is_passed_before_the_first_record() {
        let mut s = vec![0u8; 40];
        s.extend(rec(DRR_END, &[]));
        let mut a = StreamAccount::new(false, 40, true);
        let (n, c) = a.next_step(&s).unwrap();
        assert_eq!((n, c), (40, 0));
        a.advance(n).unwrap();
        let (n, c) = a.next_step(&s[40..]).unwrap();
        assert_eq!((n, c), (RECORD_LEN, RECORD_LEN as u64));
        a.advance(n).unwrap();
        assert!(a.ended());
    }
}
