//! CSI names and volume ids, the meta keys the plugin records on the
//! volumes it makes, and list pagination tokens.
//!
//! A CSI name (`pvc-<uuid>`, `snapshot-<uuid>`) that is a valid volmgr id
//! is the volume id itself; any other name (too long, other characters)
//! maps to `csi-<32 hex digits>`, a 128-bit FNV-1a hash of the name, and the
//! name itself is kept in meta under [`META_NAME`] so a hash collision is
//! detected (`ALREADY_EXISTS`), never confused. Either way the mapping is a
//! pure function of the name: a retry after a crash finds what the first
//! attempt recorded in the journal.

use crate::state::{Meta, Volume};
use crate::validate;

/// Meta key: the CSI name the volume or snapshot was created under.
pub const META_NAME: &str = "csi.volmgr/name";
/// Meta key: the content source, `snapshot:<id>` or `volume:<id>`.
pub const META_SOURCE: &str = "csi.volmgr/source";
/// Meta key: the canonical provider options of the `CreateVolume` parameters
/// (`key=value` pairs joined by `,`), compared on a retry.
pub const META_OPTIONS: &str = "csi.volmgr/options";
/// Meta key: the capacity the `CreateVolume` asked for, in bytes: where
/// the provider cannot enforce it, kept to judge a retry's compatibility;
/// where it can, it tells a volume whose create died before its limit was
/// set (removed by a retry that cannot set it) from one made without a
/// limit (volumes made before this key was written for such providers are
/// taken for the latter).
pub const META_REQUESTED_BYTES: &str = "csi.volmgr/requested-bytes";
/// Meta key on the plugin's internal snapshots (the source of a clone):
/// the clone's volume id. They are hidden from `ListSnapshots`.
pub const META_CLONE_OF: &str = "csi.volmgr/clone-source-of";

/// Prefix of ids derived from names that are not valid ids.
const HASHED_PREFIX: &str = "csi-";
/// Prefix of the internal snapshot a clone is made through.
const CLONE_SOURCE_PREFIX: &str = "csi-clone-src-";
/// Prefix of list tokens; the rest is the last id of the previous page.
const TOKEN_PREFIX: &str = "after:";

/// 128-bit FNV-1a: stable across versions and platforms (a journaled id
/// depends on it), not cryptographic (collisions are detected, see above).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// The volume id a CSI name maps to.
pub fn id_for_name(name: &str) -> String {
    if validate::id(name).is_ok() && !name.starts_with(CLONE_SOURCE_PREFIX) {
        name.to_owned()
    } else {
        format!("{HASHED_PREFIX}{:032x}", fnv1a_128(name.as_bytes()))
    }
}

/// The id of the internal snapshot a clone with id `clone_id` is made from.
pub fn clone_source_id(clone_id: &str) -> String {
    format!(
        "{CLONE_SOURCE_PREFIX}{:032x}",
        fnv1a_128(clone_id.as_bytes())
    )
}

/// Whether `v` was made by the plugin under CSI name `name`.
pub fn made_for(v: &Volume, name: &str) -> bool {
    v.meta.get(META_NAME).map(String::as_str) == Some(name)
}

/// Whether `v` is an internal clone-source snapshot.
pub fn is_internal(v: &Volume) -> bool {
    v.meta.contains_key(META_CLONE_OF)
}

/// Meta for a new volume or snapshot made under CSI `name`.
pub fn meta_for(name: &str) -> Meta {
    Meta::from([(META_NAME.to_owned(), name.to_owned())])
}

/// A list token that resumes after `last_id`.
pub fn token_after(last_id: &str) -> String {
    format!("{TOKEN_PREFIX}{last_id}")
}

/// The id a token resumes after; `None` for a token this plugin never
/// issued (the caller answers ABORTED).
pub fn parse_token(token: &str) -> Option<&str> {
    let id = token.strip_prefix(TOKEN_PREFIX)?;
    validate::id(id).ok().map(|()| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_name_is_its_own_id_and_any_other_name_hashes_to_a_valid_id() {
        assert_eq!(id_for_name("pvc-0f3a"), "pvc-0f3a");
        for name in [
            "a".repeat(200),
            "sanity+1".into(),
            "ünïcode".into(),
            ".x".into(),
        ] {
            let id = id_for_name(&name);
            assert!(validate::id(&id).is_ok(), "{id}");
            assert_eq!(id, id_for_name(&name), "stable");
            assert_ne!(id, name);
        }
        assert_ne!(id_for_name("a+b"), id_for_name("a+c"));
    }

    #[test]
    fn a_name_that_looks_like_an_internal_snapshot_cannot_take_its_id() {
        let internal = clone_source_id("pvc-1");
        assert_ne!(id_for_name(&internal), internal);
        assert!(validate::id(&internal).is_ok());
    }

    #[test]
    fn tokens_round_trip_and_foreign_tokens_are_refused() {
        assert_eq!(parse_token(&token_after("pvc-9")), Some("pvc-9"));
        for bad in ["invalid-token", "", "after:", "after:../x", "after:a b"] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fnv1a_128_matches_the_published_test_vector() {
        // FNV-1a 128 of "a" (from the reference implementation's test suite).
        assert_eq!(fnv1a_128(b"a"), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }
}
