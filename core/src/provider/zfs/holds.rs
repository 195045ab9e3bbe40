//! User holds on a snapshot (`zfs hold TAG SNAPSHOT`), as the snapshot's
//! destroy program reports them when ZFS refuses the destroy as busy
//! (`lua/destroy_snapshot.lua`: `zfs.list.holds`, in the same sync task as
//! the refused `zfs.sync.destroy`, so no command is added).
//!
//! A hold keeps a snapshot from being destroyed until it is released
//! (`zfs release`); waiting does not release it, so a destroy that finds one
//! is not retried. One kind of hold does pass by itself (measured in the
//! guest, `OpenZFS` 2.1.11, `zfs holds` during a stalled send): libzfs's
//! `zfs send -R` holds each snapshot it sends under the temporary tag
//! `.send-<pid>-<n>`, released when the send ends. A plain `zfs send`
//! (with or without `-i`, `-p`, `-c`, `-w`, `-L -e`) and a resumed one
//! (`-t`) hold nothing: the snapshot is busy without a hold (`userrefs` 0),
//! which the retries are for.
//!
//! Tags are data: any bytes ZFS accepted (up to 255; a tab, a newline,
//! a byte that is not UTF-8, a leading `-`), carried in hex by the program,
//! never put on a command line, and shown escaped and cut short
//! ([`Holds::describe`]).

use super::ProviderError;

/// How many tags the destroy program returns (the first in
/// `zfs.list.holds` order); it counts all of them. Equal to `MAX_HOLDS`
/// in `lua/destroy_snapshot.lua`.
pub(super) const MAX_HOLDS: usize = 16;

/// How many tags an error names, and how many characters of each.
const NAMED_HOLDS: usize = 4;
const TAG_CHARS_MAX: usize = 64;

/// The user holds of a snapshot the destroy program found busy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Holds {
    /// The first [`MAX_HOLDS`] tags, as bytes.
    tags: Vec<Vec<u8>>,
    /// How many holds it has (all of them).
    count: u64,
}

impl Holds {
    /// The program's answer: `hex` the first tags, hex-encoded and comma
    /// separated (empty: none), `count` how many holds there are.
    pub(super) fn parse(hex: &str, count: u64) -> Result<Holds, ProviderError> {
        let bad = |why: &str| {
            ProviderError::Other(format!(
                "the snapshot destroy program returned hold tags that {why} ({} bytes)",
                hex.len()
            ))
        };
        let tags: Vec<Vec<u8>> = if hex.is_empty() {
            Vec::new()
        } else {
            hex.split(',')
                .map(unhex)
                .collect::<Option<_>>()
                .ok_or_else(|| bad("are not hex"))?
        };
        if tags.len() > MAX_HOLDS || u64::try_from(tags.len()).map_or(true, |n| n > count) {
            return Err(bad(&format!("do not fit its count {count}")));
        }
        Ok(Holds { tags, count })
    }

    /// The tags of holds that waiting does not release: all but a running
    /// `zfs send -R`'s ([`is_transient`]). Empty if there are none among
    /// the tags returned (with more holds than [`MAX_HOLDS`] and all of
    /// those transient, the rest are taken for transient too: the destroy
    /// is retried, as before holds were read).
    pub(super) fn lasting(&self) -> Vec<&[u8]> {
        self.tags
            .iter()
            .map(Vec::as_slice)
            .filter(|t| !is_transient(t))
            .collect()
    }

    /// The lasting holds for an error message: at most [`NAMED_HOLDS`]
    /// tags, each escaped (`{:?}` of its text, bytes that are not UTF-8 as
    /// U+FFFD) and cut to [`TAG_CHARS_MAX`] characters, then how many more
    /// there are (lasting ones not named, and holds beyond the tags read;
    /// a running send's are left out).
    pub(super) fn describe(&self) -> String {
        let lasting = self.lasting();
        let mut named: Vec<String> = lasting.iter().take(NAMED_HOLDS).map(|t| shown(t)).collect();
        // The lasting ones not named, and those beyond the tags returned.
        let unread = self.count.saturating_sub(self.tags.len() as u64);
        let more = unread + (lasting.len() - named.len()) as u64;
        if more > 0 {
            named.push(format!("and {more} more"));
        }
        named.join(", ")
    }
}

/// Whether a hold of tag `tag` passes by itself: libzfs's temporary hold
/// of a snapshot `zfs send -R` is sending, `.send-<pid>-<n>` (decimal
/// digits), released when that send ends.
pub(super) fn is_transient(tag: &[u8]) -> bool {
    let Some(rest) = tag.strip_prefix(b".send-") else {
        return false;
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let mut parts = rest.splitn(2, |b| *b == b'-');
    matches!((parts.next(), parts.next()), (Some(pid), Some(n)) if digits(pid) && digits(n))
}

/// A tag as an error shows it: quoted and escaped, at most
/// [`TAG_CHARS_MAX`] characters of it.
fn shown(tag: &[u8]) -> String {
    let text = String::from_utf8_lossy(tag);
    let mut cut: String = text.chars().take(TAG_CHARS_MAX).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 2 * 255 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(tag: &[u8]) -> String {
        use std::fmt::Write;
        tag.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    #[test]
    fn the_programs_hex_tags_are_read_as_bytes_and_bounded() {
        // What the guest's program printed for `keep`, a non-UTF-8 tag
        // and one with a newline.
        let h = Holds::parse("6b656570,626164ff62797465,6e6c0a78", 3).unwrap();
        assert_eq!(h.lasting(), [b"keep".as_slice(), b"bad\xffbyte", b"nl\nx"]);
        assert_eq!(Holds::parse("", 0).unwrap(), Holds::default());
        // More holds than tags returned: fine (the program returns 16).
        assert_eq!(Holds::parse("6b656570", 23).unwrap().count, 23);
        for bad in ["6b65657", "zz", "6b,", ",6b", "6b,,6b"] {
            assert!(Holds::parse(bad, 3).is_err(), "{bad}");
        }
        assert!(Holds::parse("6b656570", 0).is_err(), "more tags than holds");
        let seventeen = vec!["6b"; MAX_HOLDS + 1].join(",");
        assert!(
            Holds::parse(&seventeen, 17).is_err(),
            "more tags than returned"
        );
        assert!(
            Holds::parse(&"61".repeat(256), 1).is_err(),
            "a tag ZFS refuses"
        );
        assert!(Holds::parse(&"61".repeat(255), 1).is_ok());
    }

    #[test]
    fn only_a_running_send_r_hold_passes_by_itself() {
        for t in [".send-588-1", ".send-1-23"] {
            assert!(is_transient(t.as_bytes()), "{t}");
        }
        for t in [
            "keep",
            ".send-",
            ".send-588",
            ".send-588-",
            ".send--1",
            ".send-58a-1",
            ".send-588-1-2",
            ".send-588-1 ",
            "x.send-588-1",
            ".SEND-588-1",
        ] {
            assert!(!is_transient(t.as_bytes()), "{t}");
        }
        let h = Holds::parse(&format!("{},{}", hex(b".send-9-1"), hex(b"keep")), 2).unwrap();
        assert_eq!(h.lasting(), [b"keep".as_slice()]);
        let h = Holds::parse(&hex(b".send-9-1"), 1).unwrap();
        assert!(h.lasting().is_empty(), "a send's hold alone: retried");
    }

    #[test]
    fn an_error_names_a_few_tags_escaped_and_cut_short() {
        let tags = [
            b"keep".as_slice(),
            b"-f",
            b"nl\nx\t\"q\"",
            b"bad\xff",
            b"fifth",
        ];
        let list: Vec<String> = tags.iter().map(|t| hex(t)).collect();
        let h = Holds::parse(&list.join(","), 7).unwrap();
        assert_eq!(
            h.describe(),
            "\"keep\", \"-f\", \"nl\\nx\\t\\\"q\\\"\", \"bad\u{fffd}\", and 3 more"
        );
        let long = Holds::parse(&hex(&[b'L'; 255]), 1).unwrap().describe();
        assert_eq!(long, format!("\"{}…\"", "L".repeat(TAG_CHARS_MAX)));
        // A send's hold is not named among those that last.
        let h = Holds::parse(&format!("{},{}", hex(b".send-9-1"), hex(b"keep")), 2).unwrap();
        assert_eq!(h.describe(), r#""keep""#);
    }
}
