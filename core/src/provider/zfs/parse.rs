//! Parsers of what ZFS and peers say: dataset names, sizes, `zfs list -H -p`
//! rows, the `DRR_BEGIN` header of a send stream, resume tokens and the
//! `zfs send -nv -t` dry run. Every one is bounded and never panics (fuzzed:
//! `fuzz/fuzz_targets/zfs_*`).

#[allow(clippy::wildcard_imports)]
use super::*;

/// `DMU_BACKUP_MAGIC` of a send stream's begin record.
pub(super) const BACKUP_MAGIC: u64 = 0x2_f5ba_cbac;
/// Size of the `DRR_BEGIN` record (type, payload length, begin body).
pub(super) const BEGIN_LEN: usize = 8 + 8 + 8 + 8 + 4 + 4 + 8 + 8 + 256;

/// Checks a dataset name from the configuration.
pub fn check_dataset(name: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| {
        Err(ProviderError::InvalidConfig(format!(
            "{CONFIG_DATASET} {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1..=200 bytes");
    }
    if name.starts_with('-') {
        return bad("starts with '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')))
    {
        return bad(&format!("contains {c:?} (allowed: A-Z a-z 0-9 _ . : / -)"));
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('-'))
    {
        return bad("has an empty, '.', '..' or '-'-prefixed component");
    }
    Ok(())
}

/// Parses a size: bytes, or with a K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        'T' | 't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// One row of `zfs list -H -p -o COLUMNS`.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) name: String,
    pub(super) is_snapshot: bool,
    pub(super) guid: String,
    pub(super) createtxg: u64,
    pub(super) mounted: bool,
    pub(super) token: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) volume: Option<String>,
    pub(super) op: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) parent: Option<String>,
    pub(super) receiving: Option<String>,
}

impl Row {
    /// A snapshot's row from its name and the tags a channel program read
    /// (the columns the tag rule needs; the others empty).
    pub(super) fn snapshot(
        name: &str,
        owner: Option<String>,
        volume: Option<String>,
        op: Option<String>,
        kind: Option<String>,
    ) -> Row {
        Row {
            name: name.to_owned(),
            is_snapshot: true,
            guid: String::new(),
            createtxg: 0,
            mounted: false,
            token: None,
            owner,
            volume,
            op,
            kind,
            parent: None,
            receiving: None,
        }
    }
}

pub(super) fn prop(v: &str) -> Option<String> {
    (v != "-" && !v.is_empty()).then(|| v.to_owned())
}

pub(super) fn parse_rows(out: &str) -> Result<Vec<Row>, ProviderError> {
    let mut rows = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 13 {
            return Err(ProviderError::Other(format!(
                "unexpected `zfs list` line ({} fields): {line:?}",
                f.len()
            )));
        }
        rows.push(Row {
            name: f[0].to_owned(),
            is_snapshot: f[1] == "snapshot",
            guid: f[2].to_owned(),
            createtxg: f[3].parse().unwrap_or(0),
            mounted: f[5] == "yes",
            token: prop(f[6]),
            owner: prop(f[7]),
            volume: prop(f[8]),
            op: prop(f[9]),
            kind: prop(f[10]),
            parent: prop(f[11]),
            receiving: prop(f[12]),
        });
    }
    Ok(rows)
}

pub(super) fn stderr_of(e: &ProviderError) -> &str {
    match e {
        ProviderError::Command { stderr, .. } => stderr,
        _ => "",
    }
}

pub(super) fn is_not_found(e: &ProviderError) -> bool {
    let s = stderr_of(e);
    s.contains("does not exist") || s.contains("no such pool or dataset")
}

/// Whether a failed command said the pool or a quota had no room
/// (`ENOSPC`: "out of space"; `EDQUOT`: "quota exceeded").
pub(super) fn is_no_space(e: &ProviderError) -> bool {
    let s = stderr_of(e);
    s.contains("out of space") || s.contains("quota exceeded")
}

pub(super) fn is_busy(e: &ProviderError) -> bool {
    stderr_of(e).contains("is busy")
}

pub(super) fn kv(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// The header of a send stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub toguid: u64,
    pub fromguid: u64,
    pub toname: String,
    /// A resumed stream (`zfs send -t`): it continues a partial receive.
    pub resuming: bool,
}

/// `DMU_BACKUP_FEATURE_RESUMING` as a bit of the begin record's versioninfo
/// (feature flags start at bit 2).
pub(super) const FEATURE_RESUMING: u64 = 1 << 22;

/// `DMU_BACKUP_FEATURE_DEDUP` as a bit of the begin record's versioninfo.
pub(super) const FEATURE_DEDUP: u64 = 1 << 2;

/// Checks a resume token from a caller: `<version>-<hex>-<hex>-<hex>`, ASCII
/// hex digits and dashes only, bounded, never flag-like.
pub fn check_token(token: &str) -> Result<(), ProviderError> {
    let ok = !token.is_empty()
        && token.len() <= MAX_RESUME_TOKEN_LEN
        && token.starts_with(|c: char| c.is_ascii_digit())
        && token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProviderError::Stream(format!(
            "invalid resume token ({} bytes): expected hex digits and dashes, at most {MAX_RESUME_TOKEN_LEN}",
            token.len()
        )))
    }
}

/// What `zfs send -nvP -t TOKEN` says a token continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenContents {
    pub toguid: u64,
    pub fromguid: Option<u64>,
    pub toname: String,
}

/// Parses the `resume token contents:` nvlist dump of `zfs send -nv -t`.
pub fn parse_token_contents(text: &str) -> Option<TokenContents> {
    let mut toguid = None;
    let mut fromguid = None;
    let mut toname = None;
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(" = ") else {
            continue;
        };
        let hex = |v: &str| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok();
        match k {
            "toguid" => toguid = hex(v),
            "fromguid" => fromguid = hex(v),
            "toname" => toname = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    Some(TokenContents {
        toguid: toguid?,
        fromguid,
        toname: toname?,
    })
}

/// Parses the `DRR_BEGIN` record at the start of a (non-compound) stream.
pub fn parse_begin(b: &[u8]) -> Result<StreamHeader, ProviderError> {
    if b.len() < BEGIN_LEN {
        return Err(ProviderError::Stream(
            "shorter than a ZFS stream header".into(),
        ));
    }
    let le = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let be = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u64_at: &dyn Fn(usize) -> u64 = if le(8) == BACKUP_MAGIC {
        &le
    } else if be(8) == BACKUP_MAGIC {
        &be
    } else {
        return Err(ProviderError::Stream(
            "not a ZFS send stream (bad magic)".into(),
        ));
    };
    let drr_type = u64_at(0) & 0xffff_ffff;
    let drr_type_be = u64_at(0) >> 32;
    if drr_type != 0 && drr_type_be != 0 {
        return Err(ProviderError::Stream(
            "stream does not start with BEGIN".into(),
        ));
    }
    // DMU_GET_STREAM_HDRTYPE: 1 substream, 2 compound (send -R).
    if u64_at(16) & 0x3 == 2 {
        return Err(ProviderError::Stream(
            "compound (send -R) streams are not accepted".into(),
        ));
    }
    if u64_at(16) & FEATURE_DEDUP != 0 {
        return Err(ProviderError::Stream(
            "deduplicated (send -D) streams are not accepted: their WRITE_BYREF records \
             write data the stream does not carry"
                .into(),
        ));
    }
    let name = &b[56..56 + 256];
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok(StreamHeader {
        toguid: u64_at(40),
        fromguid: u64_at(48),
        toname: String::from_utf8_lossy(&name[..end]).into_owned(),
        resuming: u64_at(16) & FEATURE_RESUMING != 0,
    })
}
