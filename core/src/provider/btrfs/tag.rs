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

/// Writes `<container>/tag` so that its content is in the running btrfs
/// transaction before this returns, with no sync: temp file `.tag.tmp`
/// (never through a symlink), written, then `sync_file_range` (write back
/// and wait), then renamed to `tag`.
///
/// Why the write-back: a btrfs transaction commit does not include file data
/// still in the page cache (only `flushoncommit` mounts do), so a tag merely
/// written could reach the disk as an empty file inside a container whose
/// rename into place was committed: after a power cut, an item of ours
/// without a valid tag, i.e. foreign for good. Writing it back puts its
/// content into the running transaction (a tag is a few dozen bytes, stored
/// inline in the metadata with the default `max_inline`), so every later
/// step of the verb is in that transaction or a later one. No flush, no log
/// tree: unlike an `fsync`, nothing becomes durable out of order. The rename
/// keeps a kill -9 mid-write from leaving a short `tag`.
pub(super) fn write_tag(container: &Path, tag: &Tag) -> Result<(), ProviderError> {
    let path = container.join(TAG_FILE);
    let tmp = container.join(format!(".{TAG_FILE}.tmp"));
    let context = || format!("write {}", path.display());
    let mut f = crate::fsutil::create_nofollow(&tmp, 0o644).map_err(io_err(context()))?;
    f.write_all(format_tag(tag).as_bytes())
        .map_err(io_err(context()))?;
    write_back(&f).map_err(io_err(format!("write back {}", tmp.display())))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(context()))
}

/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` of the whole file:
/// its dirty pages are written back (no cache flush, no metadata sync).
pub(super) fn write_back(file: &File) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on a descriptor owned for the call's duration.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
