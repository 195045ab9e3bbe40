//! The disk guard of a btrfs receive: the peer's `btrfs send` stream is
//! parsed command by command on its way into `btrfs receive`, each command
//! is charged an upper bound of the disk it can make btrfs use, and the
//! charges are held against the free space before the command passes
//! (module doc, "A receive cannot fill the disk").
//!
//! # The stream (little-endian throughout)
//!
//! | field | offset | width | meaning |
//! |---|---|---|---|
//! | magic | 0 | 13 | `btrfs-stream\0` |
//! | version | 13 | 4 | 1, 2 or 3 |
//! | *then commands, each:* | | | |
//! | len | 0 | 4 | bytes of attributes after this 10-byte header |
//! | cmd | 4 | 2 | command number (1 to 26) |
//! | crc | 6 | 4 | crc32c of the command (checked by `btrfs receive`) |
//! | attributes | 10 | len | TLVs: `u16` type, `u16` length, value |
//!
//! From version 2, a `DATA` attribute (type 19) has no length field: it is
//! the command's last attribute and its value runs to the command's end.
//!
//! Nothing is allocated from a length in the stream: one command at a time
//! is read into a buffer of fixed size (the largest command `btrfs receive`
//! reads, [`MAX_COMMAND_V2`]), and a longer one is refused. Every violation
//! (bad magic or version, a command longer than that, a truncated command,
//! an unknown command or attribute, a duplicated attribute, a missing or
//! mis-sized one the charge needs, anything after `END`) is
//! [`ProviderError::Stream`]; the guard never panics on any input (fuzz
//! target `btrfs_stream_commands`).

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use super::super::ProviderError;
use super::super::dir::space::{SpaceGuard, reserve_bytes};
use crate::fsutil::Dir;

const MAGIC: &[u8; 13] = b"btrfs-stream\0";
/// Stream header: the magic, then the `u32` version.
pub const STREAM_HEADER_LEN: usize = MAGIC.len() + size_of::<u32>();
/// Command header: `u32` length, `u16` command, `u32` crc32c.
pub const COMMAND_HEADER_LEN: usize = size_of::<u32>() + size_of::<u16>() + size_of::<u32>();
/// The largest version 1 command, header included (`BTRFS_SEND_BUF_SIZE_V1`).
pub const MAX_COMMAND_V1: usize = 64 << 10;
/// The largest command of versions 2 and 3, header included
/// (`BTRFS_SEND_BUF_SIZE_V2`: 16 KiB and a 128 KiB compressed extent).
pub const MAX_COMMAND_V2: usize = (16 << 10) + (128 << 10);
const _: () = assert!(MAX_COMMAND_V1 <= MAX_COMMAND_V2);

/// Metadata one command may add besides its names and values: an inode
/// item (160 bytes), its inode ref, a directory item and index entry, a
/// file extent item and its back reference, a checksum item: under 512
/// bytes with their 25-byte leaf headers, twice for DUP metadata (the
/// default on one device), twice again for leaves only half full.
pub const META_PER_COMMAND: u64 = 2 << 10;
/// Metadata per byte of a command's attributes (its `DATA` excepted): a
/// name is stored at most three times (inode ref, directory item, index
/// entry), twice for DUP, twice for half-full leaves.
pub const META_PER_ATTR_BYTE: u64 = 12;
/// Data blocks charged again, divided by this, for their metadata: a block
/// that is an extent of its own costs a file extent item (78 bytes), a
/// back reference (53) and a checksum (4), 270 bytes with DUP, under the
/// 512 bytes this leaves for a 4 KiB block.
pub const DATA_META_DIVISOR: u64 = 8;
/// The largest unencoded extent `btrfs receive` may decompress for an
/// `ENCODED_WRITE` (`BTRFS_MAX_UNCOMPRESSED`); a larger one is refused.
pub const MAX_UNENCODED_LEN: u64 = 128 << 10;
/// Charges between two free-space checks.
pub const CHARGE_WINDOW: u64 = 8 << 20;

// Commands (`enum btrfs_send_cmd`).
const CMD_WRITE: u16 = 15;
const CMD_CLONE: u16 = 16;
const CMD_END: u16 = 21;
const CMD_FALLOCATE: u16 = 23;
const CMD_ENCODED_WRITE: u16 = 25;
const CMD_ENABLE_VERITY: u16 = 26;
const CMD_MAX: u16 = 26;

// Attributes (`enum btrfs_send_attr_type`).
const ATTR_SIZE: u16 = 4;
const ATTR_FILE_OFFSET: u16 = 18;
const ATTR_DATA: u16 = 19;
const ATTR_CLONE_LEN: u16 = 24;
const ATTR_FALLOCATE_MODE: u16 = 25;
const ATTR_UNENCODED_FILE_LEN: u16 = 27;
const ATTR_UNENCODED_LEN: u16 = 28;
const ATTR_MAX: u16 = 35;
const _: () = assert!(ATTR_MAX < 64, "attributes seen are kept in a u64 mask");

/// `FALLOC_FL_PUNCH_HOLE`: a hole punched frees data, it allocates none.
const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;

/// The largest command of stream `version`, header included.
fn max_command(version: u32) -> usize {
    if version >= 2 {
        MAX_COMMAND_V2
    } else {
        MAX_COMMAND_V1
    }
}

/// The attributes of one command the charge reads: each present at most
/// once (a duplicate is refused, so this parser and `btrfs receive`, which
/// keeps the last, cannot read different values).
struct Attrs<'a> {
    seen: u64,
    /// Bytes of every attribute but `DATA`, headers included.
    other_bytes: u64,
    data_len: Option<u64>,
    values: [Option<&'a [u8]>; READ_ATTRS.len()],
}

/// The attributes whose values a charge reads, by slot in [`Attrs::values`].
const READ_ATTRS: [u16; 6] = [
    ATTR_SIZE,
    ATTR_FILE_OFFSET,
    ATTR_CLONE_LEN,
    ATTR_FALLOCATE_MODE,
    ATTR_UNENCODED_FILE_LEN,
    ATTR_UNENCODED_LEN,
];

impl<'a> Attrs<'a> {
    fn parse(version: u32, mut rest: &'a [u8]) -> Result<Attrs<'a>, String> {
        let mut attrs = Attrs {
            seen: 0,
            other_bytes: 0,
            data_len: None,
            values: [None; READ_ATTRS.len()],
        };
        while !rest.is_empty() {
            let ty = le16(rest).ok_or("an attribute header is cut by the command's end")?;
            if ty == 0 || ty > ATTR_MAX {
                return Err(format!("unknown attribute type {ty}"));
            }
            if attrs.seen & (1 << ty) != 0 {
                return Err(format!("attribute type {ty} appears twice"));
            }
            attrs.seen |= 1 << ty;
            if version >= 2 && ty == ATTR_DATA {
                // No length: the value is the rest of the command.
                attrs.data_len = Some((rest.len() - 2) as u64);
                break;
            }
            let len = rest
                .get(2..4)
                .and_then(le16)
                .ok_or("an attribute header is cut by the command's end")?
                as usize;
            let value = rest
                .get(4..4 + len)
                .ok_or_else(|| format!("attribute type {ty} runs past the command's end"))?;
            if ty == ATTR_DATA {
                attrs.data_len = Some(len as u64);
            } else {
                attrs.other_bytes += 4 + len as u64;
                if let Some(slot) = READ_ATTRS.iter().position(|&t| t == ty) {
                    attrs.values[slot] = Some(value);
                }
            }
            rest = &rest[4 + len..];
        }
        Ok(attrs)
    }

    fn value(&self, ty: u16) -> Option<&'a [u8]> {
        let slot = READ_ATTRS.iter().position(|&t| t == ty)?;
        self.values[slot]
    }

    fn u64(&self, ty: u16, cmd: u16) -> Result<u64, String> {
        let v = self
            .value(ty)
            .ok_or_else(|| format!("command {cmd} lacks attribute {ty}"))?;
        Ok(u64::from_le_bytes(v.try_into().map_err(|_| {
            format!(
                "attribute {ty} of command {cmd} is {} bytes, not 8",
                v.len()
            )
        })?))
    }

    fn u32(&self, ty: u16, cmd: u16) -> Result<u32, String> {
        let v = self
            .value(ty)
            .ok_or_else(|| format!("command {cmd} lacks attribute {ty}"))?;
        Ok(u32::from_le_bytes(v.try_into().map_err(|_| {
            format!(
                "attribute {ty} of command {cmd} is {} bytes, not 4",
                v.len()
            )
        })?))
    }

    fn data_len(&self, cmd: u16) -> Result<u64, String> {
        self.data_len
            .ok_or_else(|| format!("command {cmd} carries no data attribute"))
    }
}

fn le16(b: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(..2)?.try_into().ok()?))
}

fn le32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// The bytes of the whole `block`-byte blocks the range `offset..offset +
/// len` touches (a byte alone in its block costs the block).
fn blocks_touched(offset: u64, len: u64, block: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let last = offset.saturating_add(len - 1) / block;
    (last - offset / block + 1).saturating_mul(block)
}

/// An upper bound of the disk (bytes of `statvfs` free space) command `cmd`
/// of a version `version` stream, with attributes `attrs` (the bytes after
/// its header), can make btrfs use, on a file system of `block`-byte
/// blocks: [`META_PER_COMMAND`], [`META_PER_ATTR_BYTE`] for each byte of
/// its attributes but `DATA`, and for the commands that allocate data the
/// whole blocks they can take, plus an eighth of those for their metadata
/// ([`DATA_META_DIVISOR`]):
///
/// - `WRITE`: the blocks its data touches at its offset;
/// - `ENCODED_WRITE`: the blocks of the larger of its data and its
///   unencoded file length (what `btrfs receive` writes when it falls back
///   to decompressing); an unencoded length over [`MAX_UNENCODED_LEN`] is
///   refused;
/// - `FALLOCATE`: the blocks of its range, unless it punches a hole;
/// - `CLONE`: no new data but one block (an inline extent the kernel copies),
///   and the metadata of one extent per block of its length.
///
/// Every other command of versions 1 to 3 (creating, linking, renaming,
/// removing, setting attributes, `TRUNCATE`, which makes a hole, and
/// `UPDATE_EXTENT`, which `btrfs receive` ignores) allocates metadata only.
/// `ENABLE_VERITY` is refused (its Merkle tree grows with the file's
/// length, holes included, which a `TRUNCATE` makes as long as it likes),
/// as is any unknown command. The error says why, for
/// [`ProviderError::Stream`].
pub fn command_charge(version: u32, cmd: u16, attrs: &[u8], block: u64) -> Result<u64, String> {
    let block = block.max(1);
    let a = Attrs::parse(version, attrs)?;
    let mut extent_meta = 0;
    let data = match cmd {
        0 => return Err("command 0 (unspecified)".into()),
        CMD_ENABLE_VERITY => {
            return Err(
                "ENABLE_VERITY is refused: its Merkle tree grows with the file's \
                        length, which the guard cannot bound"
                    .into(),
            );
        }
        c if c > CMD_MAX => return Err(format!("unknown command {c}")),
        CMD_WRITE => blocks_touched(a.u64(ATTR_FILE_OFFSET, cmd)?, a.data_len(cmd)?, block),
        CMD_ENCODED_WRITE => {
            let unencoded = a.u64(ATTR_UNENCODED_LEN, cmd)?;
            if unencoded > MAX_UNENCODED_LEN {
                return Err(format!(
                    "ENCODED_WRITE of {unencoded} unencoded bytes (at most {MAX_UNENCODED_LEN})"
                ));
            }
            let len = a.data_len(cmd)?.max(a.u64(ATTR_UNENCODED_FILE_LEN, cmd)?);
            blocks_touched(a.u64(ATTR_FILE_OFFSET, cmd)?, len, block)
        }
        CMD_FALLOCATE => {
            let mode = a.u32(ATTR_FALLOCATE_MODE, cmd)?;
            let (offset, len) = (a.u64(ATTR_FILE_OFFSET, cmd)?, a.u64(ATTR_SIZE, cmd)?);
            if mode & FALLOC_FL_PUNCH_HOLE == 0 {
                blocks_touched(offset, len, block)
            } else {
                0
            }
        }
        CMD_CLONE => {
            // It shares data and allocates none but an inline extent's
            // copy; the metadata of one extent per block of its range, as
            // for data.
            let len = a.u64(ATTR_CLONE_LEN, cmd)?;
            extent_meta = len.div_ceil(block).saturating_mul(block) / DATA_META_DIVISOR;
            block
        }
        _ => 0,
    };
    Ok(META_PER_COMMAND
        .saturating_add(a.other_bytes.saturating_mul(META_PER_ATTR_BYTE))
        .saturating_add(data)
        .saturating_add(data / DATA_META_DIVISOR)
        .saturating_add(extent_meta))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Commands,
    Ended,
    Refused,
}

/// A reader of a `btrfs send` stream that passes on each command only once
/// `charge` accepted its [`command_charge`]: `btrfs receive` cannot run a
/// command before it has all of it. A refusal (a malformed stream, or the
/// charge's error) is kept for [`StreamGuard::take_refusal`] and reported
/// to the reader as an I/O error, so [`super::super::cmd::Cmd::run_from`]
/// stops the pump and kills `btrfs receive`. An I/O error of `inner` is
/// passed on as it is.
pub struct StreamGuard<'a, F> {
    inner: &'a mut dyn Read,
    charge: F,
    block: u64,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    version: u32,
    phase: Phase,
    refusal: Option<ProviderError>,
    commands: u64,
    charged: u64,
}

impl<'a, F> StreamGuard<'a, F>
where
    F: FnMut(u64) -> Result<(), ProviderError>,
{
    /// Guards `inner`, on a file system of `block`-byte blocks.
    pub fn new(inner: &'a mut dyn Read, block: u64, charge: F) -> Self {
        StreamGuard {
            inner,
            charge,
            block,
            buf: vec![0; MAX_COMMAND_V2].into_boxed_slice(),
            pos: 0,
            end: 0,
            version: 0,
            phase: Phase::Head,
            refusal: None,
            commands: 0,
            charged: 0,
        }
    }

    /// Why the stream was refused, if it was.
    pub fn take_refusal(&mut self) -> Option<ProviderError> {
        self.refusal.take()
    }

    /// Commands passed on so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// The sum of their charges.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// Whether the stream's `END` command passed.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    fn refuse(&mut self, e: ProviderError) -> io::Error {
        let err = io::Error::other(e.to_string());
        self.refusal = Some(e);
        self.phase = Phase::Refused;
        err
    }

    fn bad(&mut self, why: impl Into<String>) -> io::Error {
        self.refuse(ProviderError::Stream(format!(
            "btrfs send stream, command {}: {}",
            self.commands,
            why.into()
        )))
    }

    /// Fills `buf[from..to]` from `inner`; the bytes read (fewer at EOF).
    fn fill(&mut self, from: usize, to: usize) -> io::Result<usize> {
        let mut at = from;
        while at < to {
            match self.inner.read(&mut self.buf[at..to]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(at - from)
    }

    /// Reads the next unit (the header, or one command), judged and
    /// charged, into `buf[..end]`; `Ok(false)` at the stream's proper end.
    fn next_unit(&mut self) -> io::Result<bool> {
        self.pos = 0;
        self.end = 0;
        match self.phase {
            Phase::Refused => Err(io::Error::other("the stream was refused")),
            Phase::Ended => {
                if self.fill(0, 1)? == 0 {
                    Ok(false)
                } else {
                    Err(self.bad("bytes follow the END command"))
                }
            }
            Phase::Head => {
                let got = self.fill(0, STREAM_HEADER_LEN)?;
                if got < STREAM_HEADER_LEN {
                    return Err(self.bad(format!("the stream ends after {got} bytes")));
                }
                if &self.buf[..MAGIC.len()] != MAGIC {
                    return Err(self.bad("not a btrfs send stream (no magic)"));
                }
                let version = le32(&self.buf[MAGIC.len()..]).unwrap_or(0);
                if !(1..=3).contains(&version) {
                    return Err(self.bad(format!("stream version {version} (1 to 3 known)")));
                }
                self.version = version;
                self.phase = Phase::Commands;
                self.end = STREAM_HEADER_LEN;
                Ok(true)
            }
            Phase::Commands => {
                let got = self.fill(0, COMMAND_HEADER_LEN)?;
                if got == 0 {
                    return Err(self.bad("the stream ends before its END command"));
                }
                if got < COMMAND_HEADER_LEN {
                    return Err(self.bad("the stream ends inside a command header"));
                }
                let len = le32(&self.buf).unwrap_or(u32::MAX) as usize;
                let cmd = le16(&self.buf[4..]).unwrap_or(0);
                let max = max_command(self.version);
                let total = match COMMAND_HEADER_LEN.checked_add(len) {
                    Some(t) if t <= max => t,
                    _ => {
                        return Err(self.bad(format!(
                            "command {cmd} of {len} bytes (at most {} in a version {} stream)",
                            max - COMMAND_HEADER_LEN,
                            self.version
                        )));
                    }
                };
                if self.fill(COMMAND_HEADER_LEN, total)? < len {
                    return Err(self.bad(format!("the stream ends inside command {cmd}")));
                }
                let charge = match command_charge(
                    self.version,
                    cmd,
                    &self.buf[COMMAND_HEADER_LEN..total],
                    self.block,
                ) {
                    Ok(c) => c,
                    Err(why) => return Err(self.bad(why)),
                };
                if let Err(e) = (self.charge)(charge) {
                    return Err(self.refuse(e));
                }
                self.commands += 1;
                self.charged = self.charged.saturating_add(charge);
                if cmd == CMD_END {
                    self.phase = Phase::Ended;
                }
                self.end = total;
                Ok(true)
            }
        }
    }
}

impl<F> Read for StreamGuard<'_, F>
where
    F: FnMut(u64) -> Result<(), ProviderError>,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.end && !self.next_unit()? {
            return Ok(0);
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What the receives of one provider (and its clones) were granted and
/// have not finished: each receive's budget counts the others'.
#[derive(Debug, Default)]
pub(super) struct Ledger(Mutex<u64>);

/// The free space one receive may take: its commands' charges, granted by
/// windows of [`CHARGE_WINDOW`], must fit
///
/// 1. what was free when the receive began, less the reserve (2% of the
///    file system, as for the `dir` provider) and less what the provider's
///    other receives in progress were granted: btrfs's `statvfs` does not
///    count data still in the page cache (150 MiB written and not yet
///    written back left its free space unchanged, measured), so the
///    receive's own charges, not the free space seen later, bound it;
/// 2. and the free space now, less the reserve (what others wrote
///    meanwhile, as far as `statvfs` sees it).
pub(super) struct ReceiveBudget {
    space: SpaceGuard,
    ledger: Arc<Ledger>,
    free_at_start: u64,
    reserve: u64,
    granted: u64,
    left: u64,
    charged: u64,
    pub(super) block: u64,
}

impl ReceiveBudget {
    pub(super) fn new(root: Dir, ledger: Arc<Ledger>) -> Result<Self, ProviderError> {
        let space = SpaceGuard::new(root);
        let now = space.space()?;
        Ok(ReceiveBudget {
            space,
            ledger,
            free_at_start: now.free_bytes,
            reserve: reserve_bytes(now.total_bytes),
            granted: 0,
            left: 0,
            charged: 0,
            block: now.block_bytes.max(4096),
        })
    }

    /// Takes `bytes` of the budget, checking the free space first when they
    /// exceed what the last check granted.
    pub(super) fn charge(&mut self, bytes: u64) -> Result<(), ProviderError> {
        self.charged = self.charged.saturating_add(bytes);
        if bytes <= self.left {
            self.left -= bytes;
            return Ok(());
        }
        let window = (bytes - self.left).max(CHARGE_WINDOW);
        let mut total = self.ledger.0.lock().unwrap_or_else(PoisonError::into_inner);
        let others = total.saturating_sub(self.granted);
        let need = self
            .granted
            .saturating_add(window)
            .saturating_add(others)
            .saturating_add(self.reserve);
        if self.free_at_start < need {
            return Err(ProviderError::NoSpace {
                what: "the received stream".into(),
                detail: format!(
                    "its commands so far may make btrfs use {} bytes ({} with the window \
                     checked ahead), {} were free when it began, {others} are promised to \
                     other receives, {} kept in reserve",
                    self.charged,
                    self.granted.saturating_add(window),
                    self.free_at_start,
                    self.reserve
                ),
            });
        }
        self.space.check("the received stream", 0, window)?;
        *total = total.saturating_add(window);
        self.granted = self.granted.saturating_add(window);
        self.left = self.left.saturating_add(window) - bytes;
        Ok(())
    }
}

impl Drop for ReceiveBudget {
    fn drop(&mut self) {
        let mut total = self.ledger.0.lock().unwrap_or_else(PoisonError::into_inner);
        *total = total.saturating_sub(self.granted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend_from_slice(&u16::try_from(value.len()).unwrap().to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    fn command(cmd: u16, attrs: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(attrs.len()).unwrap().to_le_bytes().to_vec();
        v.extend_from_slice(&cmd.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(attrs);
        v
    }

    fn stream(version: u32, commands: &[Vec<u8>]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&version.to_le_bytes());
        for c in commands {
            v.extend_from_slice(c);
        }
        v
    }

    /// Runs `bytes` through a guard with an unlimited budget.
    fn run(bytes: &[u8]) -> (Vec<u8>, Option<ProviderError>, u64) {
        let mut input = bytes;
        let mut g = StreamGuard::new(&mut input, 4096, |_| Ok(()));
        let mut out = Vec::new();
        let r = g.read_to_end(&mut out);
        let refusal = g.take_refusal();
        assert_eq!(r.is_err(), refusal.is_some(), "{r:?}");
        (out, refusal, g.charged())
    }

    fn fallocate(mode: u32, offset: u64, len: u64) -> Vec<u8> {
        let mut a = attr(15, b"f");
        a.extend(attr(ATTR_FALLOCATE_MODE, &mode.to_le_bytes()));
        a.extend(attr(ATTR_FILE_OFFSET, &offset.to_le_bytes()));
        a.extend(attr(ATTR_SIZE, &len.to_le_bytes()));
        command(CMD_FALLOCATE, &a)
    }

    #[test]
    fn a_well_formed_stream_passes_byte_for_byte() {
        let mut w = attr(15, b"file");
        w.extend(attr(ATTR_FILE_OFFSET, &0u64.to_le_bytes()));
        w.extend(attr(ATTR_DATA, &[7; 100]));
        let s = stream(
            1,
            &[
                command(1, &attr(15, b"s")),
                command(CMD_WRITE, &w),
                command(CMD_END, &[]),
            ],
        );
        let (out, refusal, charged) = run(&s);
        assert!(refusal.is_none(), "{refusal:?}");
        assert_eq!(out, s);
        assert!(charged >= 3 * META_PER_COMMAND + 4096, "{charged}");
    }

    #[test]
    fn a_write_is_charged_every_block_it_touches() {
        let mut a = attr(15, b"f");
        a.extend(attr(ATTR_FILE_OFFSET, &4095u64.to_le_bytes()));
        a.extend_from_slice(&ATTR_DATA.to_le_bytes());
        a.extend_from_slice(&[1, 2]);
        // Version 2: DATA runs to the end; two bytes astride a block edge.
        let c = command_charge(2, CMD_WRITE, &a, 4096).unwrap();
        let meta = META_PER_COMMAND + 12 * (5 + 12);
        assert_eq!(c, meta + 8192 + 8192 / DATA_META_DIVISOR);
    }

    #[test]
    fn a_fallocate_is_charged_its_length_and_a_punched_hole_is_not() {
        let big = 1u64 << 40;
        let a = &fallocate(0, 0, big)[COMMAND_HEADER_LEN..];
        assert!(command_charge(2, CMD_FALLOCATE, a, 4096).unwrap() > big);
        let a = &fallocate(3, 0, big)[COMMAND_HEADER_LEN..];
        assert!(command_charge(2, CMD_FALLOCATE, a, 4096).unwrap() < 8192);
        // An offset near the end of the u64 range saturates, never wraps.
        let a = &fallocate(0, u64::MAX - 1, u64::MAX)[COMMAND_HEADER_LEN..];
        assert!(command_charge(2, CMD_FALLOCATE, a, 4096).unwrap() >= 4096);
    }

    #[test]
    fn a_clone_is_charged_one_block_and_an_extents_metadata_per_block() {
        let mut a = attr(15, b"f");
        a.extend(attr(ATTR_FILE_OFFSET, &0u64.to_le_bytes()));
        a.extend(attr(ATTR_CLONE_LEN, &(1u64 << 30).to_le_bytes()));
        let c = command_charge(1, CMD_CLONE, &a, 4096).unwrap();
        let meta = META_PER_COMMAND + 12 * (5 + 12 + 12);
        assert_eq!(c, meta + 4096 + 4096 / 8 + (1 << 30) / DATA_META_DIVISOR);
    }

    #[test]
    fn a_charge_refused_stops_the_stream_before_the_command_passes() {
        let s = stream(2, &[command(1, &attr(15, b"s")), fallocate(0, 0, 1 << 30)]);
        let mut input = s.as_slice();
        let mut g = StreamGuard::new(&mut input, 4096, |c| {
            if c > 1 << 20 {
                Err(ProviderError::NoSpace {
                    what: "t".into(),
                    detail: "full".into(),
                })
            } else {
                Ok(())
            }
        });
        let mut out = Vec::new();
        assert!(g.read_to_end(&mut out).is_err());
        assert!(matches!(
            g.take_refusal(),
            Some(ProviderError::NoSpace { .. })
        ));
        let first = STREAM_HEADER_LEN + COMMAND_HEADER_LEN + 5;
        assert_eq!(out, &s[..first], "nothing of the FALLOCATE passed");
    }

    #[test]
    fn malformed_streams_are_refused_as_bad_streams() {
        let ok = command(1, &attr(15, b"s"));
        let mut long = command(1, &[]);
        long[..4].copy_from_slice(&u32::try_from(MAX_COMMAND_V1).unwrap().to_le_bytes());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("no magic", b"btrfs-strean\0\x01\0\0\0".to_vec()),
            ("version 4", stream(4, &[])),
            ("no END", stream(1, std::slice::from_ref(&ok))),
            ("cut header", {
                let mut s = stream(1, std::slice::from_ref(&ok));
                s.extend_from_slice(&[1, 0, 0]);
                s
            }),
            ("too long", stream(1, &[long])),
            ("unknown command", stream(1, &[command(27, &[])])),
            (
                "verity",
                stream(3, &[command(CMD_ENABLE_VERITY, &attr(15, b"f"))]),
            ),
            (
                "twice",
                stream(1, &[command(1, &[attr(15, b"a"), attr(15, b"b")].concat())]),
            ),
            ("attribute 0", stream(1, &[command(1, &attr(0, b""))])),
            (
                "attribute past end",
                stream(1, &[command(1, &attr(15, b"abc")[..5])]),
            ),
            (
                "write without offset",
                stream(1, &[command(CMD_WRITE, &attr(ATTR_DATA, b"x"))]),
            ),
            ("offset of 4 bytes", {
                let mut a = attr(ATTR_FILE_OFFSET, &[0; 4]);
                a.extend(attr(ATTR_DATA, b"x"));
                stream(1, &[command(CMD_WRITE, &a)])
            }),
            ("after END", {
                let mut s = stream(1, &[ok.clone(), command(CMD_END, &[])]);
                s.push(0);
                s
            }),
            ("huge ENCODED_WRITE", {
                let mut a = attr(ATTR_FILE_OFFSET, &0u64.to_le_bytes());
                a.extend(attr(ATTR_UNENCODED_FILE_LEN, &4096u64.to_le_bytes()));
                a.extend(attr(ATTR_UNENCODED_LEN, &(1u64 << 40).to_le_bytes()));
                stream(2, &[command(CMD_ENCODED_WRITE, &a)])
            }),
        ];
        for (name, s) in cases {
            let (_, refusal, _) = run(&s);
            assert!(
                matches!(refusal, Some(ProviderError::Stream(_))),
                "{name}: {refusal:?}"
            );
        }
    }

    /// Two receives in progress on one provider share the free space: the
    /// second is refused what the first was granted, and gets it once the
    /// first is over.
    #[test]
    fn concurrent_receives_are_granted_the_free_space_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::default());
        let budget = || ReceiveBudget::new(Dir::open(dir.path()).unwrap(), ledger.clone()).unwrap();
        let mut first = budget();
        let usable = first.free_at_start - first.reserve;
        // Three fifths of the free space: each alone fits, both do not.
        let share = usable / 5 * 3;
        first.charge(share).unwrap();
        let mut second = budget();
        let err = second.charge(share).unwrap_err();
        assert!(
            matches!(err, ProviderError::NoSpace { ref detail, .. } if detail.contains("promised to other receives")),
            "{err:?}"
        );
        drop(first);
        let mut third = budget();
        third.charge(share).unwrap();
        // Within a window already granted, no new check is needed.
        third.charge(third.left).unwrap();
        assert_eq!(third.left, 0);
    }
}
