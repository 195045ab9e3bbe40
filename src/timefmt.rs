//! Time stamps as people read them: the journal records milliseconds since
//! the Unix epoch, and both the HTTP API (`created_at`) and the journal tool
//! (`dump`, `state`, `stats`) print them as RFC 3339 UTC with milliseconds,
//! through this one function, so the two always agree.

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with
/// milliseconds, e.g. `2026-01-01T00:00:00.000Z`. Total: every `u64` gives a
/// well-formed string (years past 9999 have more digits).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let (y, m, d) = civil_from_days((secs / 86_400).cast_signed());
    let sod = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("a day of the month, 1 to 31");
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("a month, 1 to 12");
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn known_instants_format_as_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_ms(1_764_083_520_123), "2025-11-25T15:12:00.123Z");
        assert_eq!(rfc3339_ms(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn the_largest_timestamp_still_formats() {
        assert!(rfc3339_ms(u64::MAX).ends_with('Z'));
    }
}
