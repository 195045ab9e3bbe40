//! Validation of every user-supplied string before anything is journaled.
//!
//! Limits (documented in the README): a volume or provider id is 1 to
//! [`MAX_ID_LEN`] characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`
//! (so it can never be a flag, a hidden file or `..`). Metadata holds at most
//! [`MAX_META_ENTRIES`] entries; keys are 1 to [`MAX_META_KEY_LEN`] characters
//! of `[A-Za-z0-9._:/-]`; values are at most [`MAX_META_VALUE_LEN`] bytes of
//! UTF-8 without NUL or other control characters except tab; the whole map is
//! at most [`MAX_META_BYTES`] bytes.

use crate::state::Meta;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_META_ENTRIES: usize = 64;
pub const MAX_META_KEY_LEN: usize = 128;
pub const MAX_META_VALUE_LEN: usize = 4096;
pub const MAX_META_BYTES: usize = 16 * 1024;
/// Resume tokens (ZFS's are a few hundred bytes).
pub const MAX_RESUME_TOKEN_LEN: usize = 4096;
/// Provider configuration values (paths, dataset names).
pub const MAX_CONFIG_VALUE_LEN: usize = 1024;

/// Checks a volume or provider id; the error says why it is refused.
pub fn id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("id is {} bytes, more than {MAX_ID_LEN}", id.len()));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err("id must not start with '.' or '-'".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("id contains {c:?}; allowed: A-Z a-z 0-9 . _ -"));
    }
    Ok(())
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
        if value.len() > MAX_CONFIG_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(format!(
                "provider configuration value of {key:?} is too long or has control characters"
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
}
