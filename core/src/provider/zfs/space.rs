//! The bound of a receive on the pool's space: a received stream never
//! takes the pool's last 2%, whatever its bytes say (threat model: every
//! byte of a received stream is hostile; invariant 11: disk is bounded).
//!
//! The stream's records are charged as they pass into `zfs recv` (their
//! bytes plus an allowance for what they may allocate: [`super::stream`]).
//! Before the first byte, and again whenever the charges pass what the
//! last measurement granted, the pool's space is measured: the pool's root
//! dataset's `used` and `available` (`zfs get -Hp`; `available` already
//! leaves out ZFS's own slop space and every reservation). A measurement
//! during the receive first waits for the pool's dirty data to reach the
//! disk (`zpool sync`): `available` counts only synced space, and without
//! the sync the receive's own unsynced writes (up to `zfs_dirty_data_max`,
//! a tenth of the RAM) would be invisible. Records already passed that the
//! kernel may not have written yet (its receive queue,
//! `zfs_recv_queue_length` bytes of stream, and the pipe) are charged
//! again against that measurement. The room is
//! `available - reserve - that in-flight charge`, with the reserve 2% of
//! the pool (`used + available` of its root dataset), as the dir provider
//! keeps 2% of its file system. A room below [`MIN_ROOM`] (or below the
//! next record's charge) refuses the receive with
//! [`ProviderError::NoSpace`]; else the next [`MAX_GRANT`] bytes of
//! charges at most (never more than the room) pass before the next
//! measurement.
//!
//! What is not bounded: a record costing more than its charge (see
//! [`super::stream`], "Charges") overshoots by that much until the next
//! measurement; other writers to the pool (tenants, other receives) are
//! seen only at measurements, so concurrent receives each hold at most
//! their current grant beyond what was measured.

use std::collections::VecDeque;
use std::io::{self, Read};

use super::stream::StreamAccount;
use crate::provider::ProviderError;

/// The least room (bytes beyond the reserve) a measurement must find.
pub const MIN_ROOM: u64 = 8 << 20;
/// The most charges one measurement lets through.
pub const MAX_GRANT: u64 = 256 << 20;
/// Stream bytes the kernel may hold read but not written when
/// `/sys/module/zfs/parameters/zfs_recv_queue_length` cannot be read
/// (its default).
pub const DEFAULT_RECV_QUEUE: u64 = 16 << 20;
/// Stream bytes besides the kernel's queue that may be in flight: the
/// pipe's buffer and the pump's, rounded up.
const PIPE_SLACK: u64 = 1 << 20;
/// Stream bytes per bucket of the in-flight charges.
const BUCKET_SHIFT: u32 = 20;

/// The space of a pool's root dataset, as `zfs get -Hp used,available`
/// prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    pub used: u64,
    pub available: u64,
}

/// Measures the pool: `synced` asks for the pool's dirty data to be
/// written first.
pub trait Measure {
    fn measure(&mut self, synced: bool) -> Result<PoolSpace, ProviderError>;
}

/// The charges of one receive and what the last measurement granted.
#[derive(Debug)]
pub struct SpaceBound<M> {
    measure: M,
    account: StreamAccount,
    /// What the refused receive was refused for (the guard's own refusal:
    /// no space, or a record it could not read).
    pub refusal: Option<ProviderError>,
    /// Charges left before the next measurement.
    granted: u64,
    /// Stream bytes (after the begin record) passed so far.
    passed: u64,
    /// Charges of the last stream bytes, per 1 MiB of stream, oldest first.
    recent: VecDeque<(u64, u64)>,
    /// Stream bytes counted as in flight at a measurement.
    in_flight_bytes: u64,
    /// Measurements made.
    pub measurements: u32,
    /// Charges counted so far.
    pub charged: u64,
}

impl<M: Measure> SpaceBound<M> {
    /// A bound for the records `account` follows; `recv_queue` stream
    /// bytes may wait in the kernel's receive queue.
    pub fn new(measure: M, account: StreamAccount, recv_queue: u64) -> Self {
        SpaceBound {
            measure,
            account,
            refusal: None,
            granted: 0,
            passed: 0,
            recent: VecDeque::new(),
            in_flight_bytes: recv_queue.saturating_add(PIPE_SLACK),
            measurements: 0,
            charged: 0,
        }
    }

    /// The first measurement, before the receive changes anything.
    pub fn start(&mut self) -> Result<(), ProviderError> {
        self.grant(0)
    }

    /// Charges of the records whose bytes may still wait in the kernel.
    fn in_flight(&self) -> u64 {
        self.recent.iter().map(|(_, c)| c).sum()
    }

    /// Measures and grants the next charges, at least `need`.
    fn grant(&mut self, need: u64) -> Result<(), ProviderError> {
        let synced = self.measurements > 0;
        let sp = self.measure.measure(synced)?;
        self.measurements += 1;
        let reserve = sp.used.saturating_add(sp.available) / 50;
        let in_flight = self.in_flight();
        let room = sp
            .available
            .saturating_sub(reserve)
            .saturating_sub(in_flight);
        if room < need.max(MIN_ROOM) {
            return Err(ProviderError::NoSpace {
                what: "the received stream".into(),
                detail: format!(
                    "{} bytes of it charged so far, {need} more needed; the pool has {} available \
                     ({in_flight} of them charged to records not yet written), {reserve} kept in \
                     reserve (2% of the pool), at least {MIN_ROOM} must be left beyond it",
                    self.charged, sp.available
                ),
            });
        }
        self.granted = room.min(MAX_GRANT);
        Ok(())
    }

    /// Records `charge` at the current stream offset.
    fn note(&mut self, charge: u64) {
        self.charged = self.charged.saturating_add(charge);
        self.granted -= charge;
        let bucket = self.passed >> BUCKET_SHIFT;
        match self.recent.back_mut() {
            Some((b, c)) if *b == bucket => *c = c.saturating_add(charge),
            _ => self.recent.push_back((bucket, charge)),
        }
        let keep = (self.in_flight_bytes >> BUCKET_SHIFT) + 1;
        while self
            .recent
            .front()
            .is_some_and(|(b, _)| b.saturating_add(keep) < bucket)
        {
            self.recent.pop_front();
        }
    }

    /// Lets the longest prefix of `buf` pass whose charges are granted
    /// (measuring again when the next record's charge is not): its length,
    /// at least 1 for a non-empty `buf`, or the refusal.
    fn pass(&mut self, buf: &[u8]) -> Result<usize, ProviderError> {
        let mut done = 0;
        while done < buf.len() {
            let (n, charge) = self.account.next_step(&buf[done..])?;
            if charge > self.granted {
                if done > 0 {
                    // The bytes before this record go first: what the
                    // kernel does with them is in the measurement.
                    return Ok(done);
                }
                self.grant(charge)?;
            }
            self.note(charge);
            self.account.advance(n)?;
            self.passed += n as u64;
            done += n;
        }
        Ok(done)
    }
}

/// `input` as it passes through `bound`: a refusal is kept in
/// [`SpaceBound::refusal`] and read as an I/O error, which makes the pump
/// kill `zfs recv`.
pub struct Bounded<'a, M> {
    pub input: &'a mut dyn Read,
    pub bound: &'a mut SpaceBound<M>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<'a, M: Measure> Bounded<'a, M> {
    pub fn new(input: &'a mut dyn Read, bound: &'a mut SpaceBound<M>) -> Self {
        Bounded {
            input,
            bound,
            buf: vec![0; 256 << 10],
            start: 0,
            end: 0,
        }
    }
}

impl<M: Measure> Read for Bounded<'_, M> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.bound.refusal.is_some() {
            return Err(io::Error::other("the receive was refused"));
        }
        if out.is_empty() {
            return Ok(0);
        }
        if self.start == self.end {
            let n = self.input.read(&mut self.buf)?;
            if n == 0 {
                return Ok(0);
            }
            self.start = 0;
            self.end = n;
        }
        let avail = (self.end - self.start).min(out.len());
        match self.bound.pass(&self.buf[self.start..self.start + avail]) {
            Ok(n) => {
                out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                Ok(n)
            }
            Err(e) => {
                let msg = e.to_string();
                self.bound.refusal = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }
}

/// Reads `zfs_recv_queue_length` of the loaded module (bounded to 1 GiB),
/// else [`DEFAULT_RECV_QUEUE`].
pub fn recv_queue_bytes() -> u64 {
    std::fs::read_to_string("/sys/module/zfs/parameters/zfs_recv_queue_length")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RECV_QUEUE, |n| n.min(1 << 30))
}

/// The measurement of a real pool: `zpool sync POOL` (when asked), then
/// `zfs get -Hp -o value used,available POOL`.
#[derive(Debug)]
pub struct PoolMeasure {
    pub pool: String,
}

impl Measure for PoolMeasure {
    fn measure(&mut self, synced: bool) -> Result<PoolSpace, ProviderError> {
        use super::{Cmd, ZfsProvider};
        if synced {
            Cmd::new("zpool").arg("sync").user_arg(&self.pool)?.run()?;
        }
        parse_pool_space(&ZfsProvider::prop_values(&self.pool, "used,available")?)
    }
}

/// Parses the two lines of `zfs get -Hp -o value used,available`.
pub fn parse_pool_space(text: &str) -> Result<PoolSpace, ProviderError> {
    let mut lines = text.lines().map(|l| l.trim().parse::<u64>());
    match (lines.next(), lines.next(), lines.next()) {
        (Some(Ok(used)), Some(Ok(available)), None) => Ok(PoolSpace { used, available }),
        _ => Err(ProviderError::Other(format!(
            "zfs get used,available: expected two numbers, got {text:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::stream::{BLOCK_ALLOWANCE, RECORD_LEN};
    use super::*;

    /// A pool whose stream writes (`written`, what passed into the fake
    /// kernel) show in `available` only at a synced measurement; records
    /// the calls.
    struct FakePool {
        used: u64,
        available: u64,
        written: std::rc::Rc<std::cell::Cell<u64>>,
        seen: u64,
        calls: Vec<bool>,
    }

    impl FakePool {
        fn new(used: u64, available: u64) -> Self {
            FakePool {
                used,
                available,
                written: std::rc::Rc::default(),
                seen: 0,
                calls: vec![],
            }
        }
    }

    impl Measure for &mut FakePool {
        fn measure(&mut self, synced: bool) -> Result<PoolSpace, ProviderError> {
            self.calls.push(synced);
            if synced {
                self.seen = self.written.get();
            }
            Ok(PoolSpace {
                used: self.used + self.seen,
                available: self.available.saturating_sub(self.seen),
            })
        }
    }

    /// `n` uncompressed WRITE records of `block` bytes.
    fn writes(n: usize, block: u64) -> Vec<u8> {
        let mut s = Vec::new();
        for _ in 0..n {
            let mut h = [0u8; RECORD_LEN];
            h[..4].copy_from_slice(&3u32.to_le_bytes());
            h[32..40].copy_from_slice(&block.to_le_bytes());
            s.extend(h);
            s.extend(std::iter::repeat_n(1u8, usize::try_from(block).unwrap()));
        }
        s
    }

    /// Reads `input` through `bound` to its end or refusal; the bytes
    /// read count as written to the pool at once.
    fn pass_all(
        input: &[u8],
        bound: &mut SpaceBound<&mut FakePool>,
        written: &std::cell::Cell<u64>,
    ) -> (usize, io::Result<()>) {
        let mut r = input;
        let mut b = Bounded::new(&mut r, bound);
        let mut out = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            match b.read(&mut out) {
                Ok(0) => return (total, Ok(())),
                Ok(n) => {
                    total += n;
                    written.set(written.get() + n as u64);
                }
                Err(e) => return (total, Err(e)),
            }
        }
    }

    /// The bound of a full stream on `pool`, with the default receive queue.
    fn full_stream_bound(pool: &mut FakePool) -> SpaceBound<&mut FakePool> {
        SpaceBound::new(
            pool,
            StreamAccount::new(false, 0, false),
            DEFAULT_RECV_QUEUE,
        )
    }

    const GIB: u64 = 1 << 30;
    const RESERVE: u64 = GIB / 50;

    #[test]
    fn a_stream_within_the_room_passes_after_one_unsynced_measurement() {
        let mut pool = FakePool::new(0, GIB);
        let written = pool.written.clone();
        let s = writes(100, 128 << 10);
        let mut bound = full_stream_bound(&mut pool);
        bound.start().unwrap();
        let (n, r) = pass_all(&s, &mut bound, &written);
        r.unwrap();
        assert_eq!(n, s.len());
        assert!(bound.refusal.is_none());
        drop(bound);
        assert_eq!(pool.calls, vec![false]);
    }

    #[test]
    fn a_pool_without_room_beyond_the_reserve_is_refused_before_any_byte() {
        let free = RESERVE + MIN_ROOM - 1;
        let mut pool = FakePool::new(GIB - free, free);
        let mut bound = full_stream_bound(&mut pool);
        match bound.start() {
            Err(ProviderError::NoSpace { detail, .. }) => assert!(detail.contains("reserve")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stream_larger_than_the_room_is_refused_by_synced_measurements_before_the_reserve() {
        let room = 64u64 << 20;
        let mut pool = FakePool::new(GIB - RESERVE - room, RESERVE + room);
        let written = pool.written.clone();
        let s = writes(1000, 128 << 10);
        let mut bound = full_stream_bound(&mut pool);
        bound.start().unwrap();
        let (n, r) = pass_all(&s, &mut bound, &written);
        assert!(r.is_err());
        assert!(matches!(bound.refusal, Some(ProviderError::NoSpace { .. })));
        assert!(
            (n as u64) < room,
            "{n} bytes passed: the reserve was never reached"
        );
        assert!(
            n as u64 > room / 2,
            "{n} bytes passed: most of the room was usable"
        );
        drop(bound);
        assert_eq!(pool.calls.first(), Some(&false));
        assert!(pool.calls.len() > 1);
        assert!(pool.calls[1..].iter().all(|s| *s), "{:?}", pool.calls);
    }

    #[test]
    fn records_the_kernel_may_not_have_written_are_charged_against_a_synced_measurement() {
        // A pool that never shows the writes (all of them still in the
        // kernel's queue): only the in-flight charges stop the stream.
        let room = 100u64 << 20;
        let mut pool = FakePool::new(GIB - RESERVE - room, RESERVE + room);
        let never = std::cell::Cell::new(0);
        let block = 128u64 << 10;
        let s = writes(1000, block);
        let mut bound = full_stream_bound(&mut pool);
        bound.start().unwrap();
        let (_, r) = pass_all(&s, &mut bound, &never);
        assert!(r.is_ok(), "with nothing written, the room lasts");
        let in_flight = bound.in_flight();
        assert!(
            in_flight >= DEFAULT_RECV_QUEUE,
            "at least the queue's worth of charges in flight: {in_flight}"
        );
        let per_byte_max = (RECORD_LEN as u64 + block + BLOCK_ALLOWANCE) as f64
            / (RECORD_LEN as u64 + block) as f64;
        assert!(
            (in_flight as f64)
                <= (DEFAULT_RECV_QUEUE + PIPE_SLACK + (2 << 20)) as f64 * per_byte_max,
            "no more than the queue, the pipe and two buckets: {in_flight}"
        );
        drop(bound);
        assert!(pool.calls.len() > 1, "measured again: {:?}", pool.calls);
    }

    #[test]
    fn pool_space_is_two_numbers_or_an_error() {
        assert_eq!(
            parse_pool_space("100\n200\n").unwrap(),
            PoolSpace {
                used: 100,
                available: 200
            }
        );
        for bad in ["", "100\n", "a\nb\n", "1\n2\n3\n", "-1\n2\n"] {
            assert!(parse_pool_space(bad).is_err(), "{bad:?}");
        }
    }
}
