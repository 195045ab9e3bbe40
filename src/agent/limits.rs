//! The agent's resource limits (DESIGN.md invariant 11: every resource a
//! client or peer can hold is bounded, and holding it never blocks
//! operations on other volumes), their defaults, and the parsers of their
//! `volmgr serve` flags.
//!
//! What each bounds, and where it is enforced:
//! - connections ([`Limits::max_connections`], `conn.rs`): at the cap the
//!   connection idle the longest is closed for a new one (a flood of idle
//!   connections cannot lock out a health probe), or the new one is closed
//!   if every connection has a request in flight;
//! - time on a connection (`conn.rs`): a request head (and a JSON body,
//!   `routes.rs`) must arrive within [`Limits::header_read_timeout`] of its
//!   first byte, a connection without a request in flight is closed after
//!   [`Limits::idle_timeout`], and a write that makes no progress for
//!   [`Limits::write_timeout`] closes the connection (a client that stops
//!   reading a send or an event stream lets go of it);
//! - sends ([`Limits::max_sends`], [`Limits::max_sends_per_client`]): each
//!   holds a blocking thread and about 5 MiB of buffers while its client
//!   reads;
//! - pulls ([`Limits::max_pulls`]), each with a minimum rate over a window
//!   ([`Limits::pull_min_rate`], [`Limits::pull_stall_window`]) and an
//!   overall deadline ([`Limits::pull_deadline`]);
//! - event-stream subscribers ([`Limits::max_subscribers`]), whose initial
//!   listing is streamed page by page rather than built per subscriber;
//! - shutdown ([`Limits::shutdown_grace`]): transfers still running after
//!   the grace period are cancelled (the journal records their outcome).

use std::time::Duration;

/// Every limit of one agent. [`Limits::default`] holds the defaults that
/// `volmgr serve --help` and the README list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// From a request's first byte to the end of its head (and of a JSON
    /// body).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// A response write that makes no progress this long closes the
    /// connection.
    pub write_timeout: Duration,
    /// Sends (snapshot streams served) at once, all clients together.
    pub max_sends: usize,
    /// Sends at once to one client address.
    pub max_sends_per_client: usize,
    /// Pulls (snapshot streams received) at once.
    pub max_pulls: usize,
    /// Volume event-stream subscribers at once.
    pub max_subscribers: usize,
    /// A pull receiving fewer than this many bytes per second, measured over
    /// [`Limits::pull_stall_window`], is stopped as stalled.
    pub pull_min_rate: u64,
    /// The window of the minimum rate (also the longest wait for the
    /// source's answer).
    pub pull_stall_window: Duration,
    /// A pull still running this long after it started is stopped.
    pub pull_deadline: Duration,
    /// On shutdown, transfers still running after this are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_sends: 16,
            max_sends_per_client: 4,
            max_pulls: 16,
            max_subscribers: 128,
            pull_min_rate: 4096,
            pull_stall_window: Duration::from_secs(60),
            pull_deadline: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Why these limits cannot serve, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let counts = [
            ("max-connections", self.max_connections),
            ("max-sends", self.max_sends),
            ("max-sends-per-client", self.max_sends_per_client),
            ("max-pulls", self.max_pulls),
            ("max-subscribers", self.max_subscribers),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(format!("--{name} must be at least 1"));
        }
        let times = [
            ("header-read-timeout", self.header_read_timeout),
            ("idle-timeout", self.idle_timeout),
            ("write-timeout", self.write_timeout),
            ("pull-stall-window", self.pull_stall_window),
            ("pull-deadline", self.pull_deadline),
        ];
        if let Some((name, _)) = times.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("--{name} must be longer than zero"));
        }
        Ok(())
    }

    /// Bytes a pull must receive in each stall window.
    pub fn pull_min_bytes_per_window(&self) -> u64 {
        let per_ms = u128::from(self.pull_min_rate) * self.pull_stall_window.as_millis() / 1000;
        u64::try_from(per_ms).unwrap_or(u64::MAX)
    }
}

/// Most a duration flag may say (about 31 years): keeps deadlines
/// representable as instants.
const MAX_DURATION: Duration = Duration::from_secs(1 << 30);

/// Parses a duration flag: a number with a unit, `ms`, `s`, `m` or `h`
/// (`500ms`, `30s`, `5m`, `24h`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = "expected a number with a unit: ms, s, m or h (e.g. 30s, 5m, 24h)";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: {expected}"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?}: {expected}")),
    };
    let d = n
        .checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("{text:?}: longer than {} s", MAX_DURATION.as_secs()))?;
    Ok(d)
}

/// Parses a byte count: a number, optionally with `K`/`KiB` (1024) or
/// `M`/`MiB` (1024²).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let expected = "expected a number of bytes, optionally with KiB or MiB (e.g. 4096, 64KiB)";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: {expected}"))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        _ => return Err(format!("{text:?}: {expected}")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// A duration as the flags spell it (`30s`, `24h`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_seconds_and_refuse_anything_else() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "",
            "s",
            "1.5s",
            "-1s",
            "10d",
            "1 s",
            "99999999999999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("expected") || e.contains("longer"), "{bad}: {e}");
        }
        for d in [30, 60, 86_400, 1] {
            let d = Duration::from_secs(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn byte_counts_take_binary_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("2M"), Ok(2 << 20));
        for bad in ["", "4kb", "1.5M", "-1", "99999999999999999999"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_refuse_zeroes_and_the_defaults_pass() {
        assert_eq!(Limits::default().check(), Ok(()));
        let zero = Limits {
            max_sends: 0,
            ..Limits::default()
        };
        assert!(zero.check().unwrap_err().contains("--max-sends"));
        let zero = Limits {
            write_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert!(zero.check().unwrap_err().contains("--write-timeout"));
        assert_eq!(Limits::default().pull_min_bytes_per_window(), 4096 * 60);
    }
}
