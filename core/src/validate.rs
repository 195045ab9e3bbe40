//! Validation of every user-supplied string before anything is journaled.
//!
//! Limits (documented in the README): a volume or provider id is 1 to
//! [`MAX_ID_LEN`] characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`
//! (so it can never be a flag, a hidden file or `..`). Metadata holds at most
//! [`MAX_META_ENTRIES`] entries; keys are 1 to [`MAX_META_KEY_LEN`] characters
//! of `[A-Za-z0-9._:/-]`; values are at most [`MAX_META_VALUE_LEN`] bytes of
//! UTF-8 without NUL or other control characters except tab, and without the
//! characters that can make a terminal show something else than the bytes
//! say ([`is_deceptive`]: bidirectional overrides, embeddings, isolates and
//! marks, line and paragraph separators); the whole map is at most
//! [`MAX_META_BYTES`] bytes. Provider configuration values obey the same
//! character rule, without the tab.

pub use crate::model::MAX_ID_LEN;
use crate::state::Meta;
pub const MAX_META_ENTRIES: usize = 64;
pub const MAX_META_KEY_LEN: usize = 128;
pub const MAX_META_VALUE_LEN: usize = 4096;
pub const MAX_META_BYTES: usize = 16 * 1024;
/// Resume tokens (ZFS's are a few hundred bytes).
pub const MAX_RESUME_TOKEN_LEN: usize = 4096;
/// Provider configuration values (paths, dataset names).
pub const MAX_CONFIG_VALUE_LEN: usize = 1024;

/// Checks a volume or provider id; the error says why it is refused.
/// The one id rule is [`crate::model::id_problem`].
pub fn id(id: &str) -> Result<(), String> {
    match crate::model::id_problem(id) {
        None => Ok(()),
        Some(why) => Err(format!(
            "id refused: {why} (allowed: 1 to {MAX_ID_LEN} bytes of A-Z a-z 0-9 . _ -, not starting with '.' or '-')"
        )),
    }
}

/// Characters that make displayed text lie about its bytes: bidirectional
/// embeddings, overrides, isolates and marks (U+202A..U+202E,
/// U+2066..U+2069, U+200E, U+200F, U+061C) and the line and paragraph
/// separators U+2028 and U+2029 (which some terminals and log viewers treat
/// as new lines).
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Checks a resume token a caller hands back: 1 to [`MAX_RESUME_TOKEN_LEN`]
/// characters of `[A-Za-z0-9_-]`, starting with an alphanumeric (never a
/// flag). Providers check their own token syntax on top.
pub fn resume_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_RESUME_TOKEN_LEN {
        return Err(format!(
            "resume token is {} bytes; allowed 1..={MAX_RESUME_TOKEN_LEN}",
            token.len()
        ));
    }
    if !token.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("resume token must start with a letter or digit".into());
    }
    if let Some(c) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(format!(
            "resume token contains {c:?}; allowed: A-Z a-z 0-9 _ -"
        ));
    }
    Ok(())
}

/// Checks a metadata map.
pub fn meta(meta: &Meta) -> Result<(), String> {
    if meta.len() > MAX_META_ENTRIES {
        return Err(format!(
            "{} metadata entries, more than {MAX_META_ENTRIES}",
            meta.len()
        ));
    }
    let mut total = 0usize;
    for (key, value) in meta {
        if key.is_empty() || key.len() > MAX_META_KEY_LEN {
            return Err(format!(
                "metadata key length must be 1..={MAX_META_KEY_LEN}"
            ));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
        {
            return Err(format!("metadata key {key:?} contains {c:?}"));
        }
        if value.len() > MAX_META_VALUE_LEN {
            return Err(format!(
                "metadata value of {key:?} is {} bytes, more than {MAX_META_VALUE_LEN}",
                value.len()
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!(
                "metadata value of {key:?} contains a control character"
            ));
        }
        if let Some(c) = value.chars().find(|&c| is_deceptive(c)) {
            return Err(format!(
                "metadata value of {key:?} contains U+{:04X} (a bidirectional control or line separator)",
                c as u32
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_META_BYTES {
        return Err(format!(
            "metadata is {total} bytes, more than {MAX_META_BYTES}"
        ));
    }
    Ok(())
}

/// Checks a provider kind name and configuration map.
pub fn provider_config(
    kind: &str,
    config: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    id(kind).map_err(|e| format!("provider kind: {e}"))?;
    if config.len() > MAX_META_ENTRIES {
        return Err("too many provider configuration entries".into());
    }
    for (key, value) in config {
        id(key).map_err(|e| format!("provider configuration key: {e}"))?;
        if value.len() > MAX_CONFIG_VALUE_LEN
            || value.chars().any(|c| c.is_control() || is_deceptive(c))
        {
            return Err(format!(
                "provider configuration value of {key:?} is too long or has control, bidirectional or line-separator characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ids_are_refused() {
        let long = "a".repeat(300);
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            ".",
            "-rf",
            "a\0b",
            "a b",
            long.as_str(),
            "é",
        ] {
            assert!(id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "vol-1", "A.b_c", "0123456789abcdef"] {
            assert!(id(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn resume_tokens_that_could_be_flags_or_carry_other_bytes_are_refused() {
        let long = "1".repeat(MAX_RESUME_TOKEN_LEN + 1);
        for bad in ["", "-t", "1 2", "1-ab;rm", "1-a\nb", "é1", long.as_str()] {
            assert!(resume_token(bad).is_err(), "{bad:?} accepted");
        }
        assert!(resume_token("1-9924c2c09-b8-789c6360").is_ok());
    }

    #[test]
    fn oversized_or_control_meta_is_refused() {
        let mut m = Meta::new();
        m.insert("k".into(), "x".repeat(MAX_META_VALUE_LEN + 1));
        assert!(meta(&m).is_err());
        let mut m = Meta::new();
        m.insert("k".into(), "a\0b".into());
        assert!(meta(&m).is_err());
        let m: Meta = (0..=MAX_META_ENTRIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(meta(&m).is_err());
        let mut m = Meta::new();
        m.insert("app/name".into(), "web\tfront".into());
        assert!(meta(&m).is_ok());
    }

    #[test]
    fn meta_and_config_values_that_spoof_terminal_output_are_refused() {
        for bad in [
            "invoice\u{202E}fdp.exe",
            "a\u{2028}b",
            "a\u{2029}b",
            "\u{2066}x\u{2069}",
            "\u{200F}",
            "\u{061C}",
        ] {
            let m: Meta = [("k".to_owned(), bad.to_owned())].into();
            let e = meta(&m).unwrap_err();
            assert!(e.contains("U+"), "{e}");
            let c = [("root".to_owned(), format!("/srv/{bad}"))].into();
            assert!(provider_config("dir", &c).is_err(), "{bad:?}");
        }
        let m: Meta = [("k".to_owned(), "héllo wörld ✓ 日本".to_owned())].into();
        assert!(meta(&m).is_ok(), "ordinary non-ASCII text stays allowed");
    }
}
