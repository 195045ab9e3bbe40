//! The btrfs provider's ownership tag: the one-line `tag` file beside each
//! item's subvolume (format, parse, durable write). See the parent module.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn parse_kind(s: &str) -> Option<VolumeKind> {
    match s {
        "data" => Some(VolumeKind::Data),
        "snapshot" => Some(VolumeKind::Snapshot),
        _ => None,
    }
}

/// Refuses an id that could escape its directory or be read as a flag. The
/// manager validates ids already; this guards the provider used on its own.
pub(super) fn check_id(id: &str) -> Result<(), ProviderError> {
    crate::validate::id(id)
        .map_err(|reason| ProviderError::Other(format!("refusing volume id {id:?}: {reason}")))?;
    crate::provider::cmd::guard(id)?;
    Ok(())
}

pub(super) fn format_tag(tag: &Tag) -> String {
    format!(
        "volume={} op={} kind={} parent={}\n",
        tag.volume,
        tag.op,
        tag.kind.as_str(),
        tag.parent.as_deref().unwrap_or("-")
    )
}

pub(super) fn parse_tag(text: &str) -> Option<Tag> {
    let line = text.strip_suffix('\n')?;
    if line.contains('\n') {
        return None;
    }
    let mut volume = None;
    let mut op = None;
    let mut kind = None;
    let mut parent = None;
    for field in line.split(' ') {
        let (k, v) = field.split_once('=')?;
        match k {
            "volume" if volume.is_none() => volume = Some(v.to_owned()),
            "op" if op.is_none() => op = Some(Uuid::parse_str(v).ok()?),
            "kind" if kind.is_none() => kind = Some(parse_kind(v)?),
            "parent" if parent.is_none() => {
                parent = Some(if v == "-" { None } else { Some(v.to_owned()) });
            }
            _ => return None,
        }
    }
    let tag = Tag {
        volume: volume?,
        op: op?,
        kind: kind?,
        parent: parent?,
    };
    crate::validate::id(&tag.volume).ok()?;
    if let Some(p) = &tag.parent {
        crate::validate::id(p).ok()?;
    }
    Some(tag)
}

pub(super) fn read_tag(container: &Path) -> Option<Tag> {
    let file = File::open(container.join(TAG_FILE)).ok()?;
    let mut text = String::new();
    file.take(MAX_TAG_BYTES).read_to_string(&mut text).ok()?;
    parse_tag(&text)
}

/// Writes `<container>/tag` durably ([`fsutil::write_atomic`]: temp file
/// never through a symlink, fsync, rename, directory fsync).
pub(super) fn write_tag(container: &Path, tag: &Tag) -> Result<(), ProviderError> {
    fsutil::write_atomic(container, TAG_FILE, format_tag(tag).as_bytes(), 0o644).map_err(io_err(
        format!("write {}", container.join(TAG_FILE).display()),
    ))
}
