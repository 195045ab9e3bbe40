//! The seam under the directory provider's own layout: [`Layout`].
//!
//! Every file operation on the provider's *own* names (the root's
//! sub-directories, the ownership markers and mode manifests, the content
//! directories `data/<id>` and `snapshot/<id>` themselves, the trash, a
//! receive's staging) goes through a [`Layout`], like the journal's through
//! [`crate::storage::Storage`]. [`RealLayout`] maps them onto the
//! kernel (never following a symlink where a name could be one);
//! [`SimLayout`] maps them onto a [`SimStorage`], so the power-cut sweeps
//! can run the real provider's create, destroy, snapshot, fork and receive
//! and cut the power between any two of their syncs.
//!
//! The copy of a snapshot or fork is one call, [`Layout::copy_tree`]: on the
//! kernel it is [`tree::copy_tree`] (handles, reflinks, modes, space
//! checks), unchanged; on the simulation a recursive copy of directories and
//! regular files with the same sync points in the same order (each file
//! synced after its content, each directory after its entries). The
//! simulation models no modes, symlinks or free space: its copy records no
//! mode exceptions.
//!
//! A receive writes its staging tree with [`Layout::apply_stream`]: on the
//! kernel the stream decoder [`wire::apply`] unchanged (handles, no-follow,
//! space checks); on the simulation the same decoder ([`wire::decode`],
//! every record read and checked alike) with a sink that builds the tree
//! entry by entry (`sim_sink`), holding no modes and refusing symlinks. Its
//! swap is [`Layout::exchange`] (`renameat2(RENAME_EXCHANGE)`; on the
//! simulation one atomic change of the two names) and [`Layout::identity`]
//! tells the staged tree from the one it replaced. Sends walk volumes
//! through [`Dir`](crate::fsutil::Dir) handles on the real file system only.
//!
//! No call here syncs anything unless its name says so: the provider decides
//! where a sync goes (on return, or in a shared batched round).

use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs::{self, DirBuilder};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

mod sim_sink;

use super::tree::{self, Modes, Policy};
use super::wire::{self, Applied};
use crate::fsutil::{self, Dir};
use crate::provider::ProviderError;
use crate::provider::stream::HashReader;
use crate::storage::Storage;
use crate::storage::sim::SimStorage;

/// What a name of the layout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A real directory (not a symlink to one), with its permission bits.
    Dir { mode: u32 },
    /// A regular file.
    File,
    /// Anything else (a symlink, a fifo, ...).
    Other,
}

/// What [`Layout::read_files`] gives: each name read, with its content or
/// why it could not be read.
pub(crate) type FileReads = Vec<(Vec<u8>, io::Result<Vec<u8>>)>;

/// What identifies a file across renames: [`Layout::identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub dir: bool,
    pub dev: u64,
    pub ino: u64,
}

/// The file operations on the provider's own names. See the module
/// documentation.
pub(crate) trait Layout: Send + Sync + Debug {
    /// Whether this is the kernel's file system (checks that probe the real
    /// file system, like the refusal of nested roots, run only then).
    fn is_kernel(&self) -> bool {
        false
    }
    /// `lstat`: what `path` is, `None` if absent.
    fn entry(&self, path: &Path) -> io::Result<Option<Entry>>;
    /// Reads a regular file of at most `max_len` bytes (one more is read,
    /// so a longer file shows as longer), never following a symlink and
    /// never blocking on a fifo. `None` if absent.
    fn read_file(&self, path: &Path, max_len: u64) -> io::Result<Option<Vec<u8>>>;
    /// Replaces `dir/name` with `bytes`: a temp file `.<name>.tmp` (created
    /// without following a symlink), fsynced if `sync_file`, renamed over
    /// `name`. The directory is not synced.
    fn write_file(&self, dir: &Path, name: &str, bytes: &[u8], sync_file: bool) -> io::Result<()>;
    /// Creates `dir/name` with `bytes`, fsynced if `sync_file`, never over
    /// an existing entry (`AlreadyExists`) nor through a symlink. Not
    /// atomic: a crash may leave the file empty or with part of `bytes`
    /// (what only a reader that treats such a file as unreadable may use).
    /// A failed write removes the file. The directory is not synced.
    fn write_new_file(
        &self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
        sync_file: bool,
    ) -> io::Result<()>;
    /// Removes a file; `Ok(false)` if it was absent.
    fn remove_file(&self, path: &Path) -> io::Result<bool>;
    /// `mkdir` with `mode` (then set exactly, whatever the umask).
    fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// `rmdir`: removes a directory only if it is empty (atomically: a
    /// directory with entries is an error and stays as it is).
    fn remove_empty_dir(&self, path: &Path) -> io::Result<()>;
    /// Sets a directory's permission bits, never following a symlink.
    fn set_dir_mode(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// `rename(2)` within the layout.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names of a directory's entries, sorted bytewise.
    fn names(&self, dir: &Path) -> io::Result<Vec<Vec<u8>>>;
    /// The entries of `dir`, sorted bytewise, each with whether it is a
    /// real directory (not a symlink to one). On the kernel one listing,
    /// no system call per entry where the file system gives each entry's
    /// type (`d_type`); by default [`Layout::names`] and an
    /// [`Layout::entry`] each.
    fn listing(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, bool)>> {
        listing_by_entry(self, dir)
    }
    /// Reads, through one handle of `dir`, each entry whose name `wanted`
    /// accepts: sorted by name, with its content (at most `max_len` bytes;
    /// one more is read, so a longer file shows as longer) or why it could
    /// not be read (not a regular file, say). Never follows a symlink nor
    /// blocks on a fifo, as [`Layout::read_file`]; an entry gone since the
    /// listing is left out. By default [`Layout::names`] and an
    /// [`Layout::entry`] and [`Layout::read_file`] each.
    fn read_files(
        &self,
        dir: &Path,
        wanted: &dyn Fn(&[u8]) -> bool,
        max_len: u64,
    ) -> io::Result<FileReads> {
        read_files_by_entry(self, dir, wanted, max_len)
    }
    /// `fsync` of a directory: its creations, renames and removals are
    /// durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// `syncfs` of the file system holding `path`: everything done on it
    /// before the call is durable.
    fn syncfs(&self, path: &Path) -> io::Result<()>;
    /// `fsync` of the regular file or directory at `path`, never following
    /// a symlink (an error) nor blocking on a fifo (an error).
    fn sync_path(&self, path: &Path) -> io::Result<()>;
    /// The machine's dirty page cache in bytes (what a `syncfs` may have
    /// to write back at most), `None` if unknown.
    fn dirty_bytes(&self) -> Option<u64>;
    /// Removes the tree at `path` (absent is fine), never following a
    /// symlink inside it.
    fn remove_tree(&self, path: &Path) -> io::Result<()>;
    /// Opens a regular file for reading, never following a symlink nor
    /// blocking on a fifo: the reader and the file's length, `None` if
    /// absent. The caller bounds what it reads.
    fn open_read(&self, path: &Path) -> io::Result<Option<(Box<dyn Read>, u64)>>;
    /// `mkdir(2)` with `mode`, less the umask, not set afterwards.
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Device and inode of `path` (never following a symlink), and whether
    /// it is a directory; `None` if absent. What tells the staged tree of a
    /// receive from the tree it replaces, across renames.
    fn identity(&self, path: &Path) -> io::Result<Option<Identity>>;
    /// Exchanges the names `a` and `b` of two directories as one atomic
    /// change (`renameat2(RENAME_EXCHANGE)`); `Ok(false)` where the file
    /// system does not support it (nothing changed).
    fn exchange(&self, a: &Path, b: &Path) -> io::Result<bool>;
    /// Applies the records of a stream (after its header) to the staging
    /// tree `root`, whose modes `modes` tracks, through its end record: see
    /// [`wire::apply`]. Nothing is synced.
    fn apply_stream(
        &self,
        r: &mut HashReader<&mut dyn Read>,
        header: &wire::Header,
        root: &Path,
        modes: &mut Modes,
    ) -> Result<Applied, ProviderError>;
    /// Sets the true modes `modes` holds on the staging tree `root`, its
    /// root's too unless `skip_root`: see [`Modes::apply_true_modes`].
    fn apply_true_modes(
        &self,
        root: &Path,
        modes: &Modes,
        skip_root: bool,
    ) -> Result<(), ProviderError>;
    /// Copies the tree `src` (true modes per `src_modes`) to the new
    /// directory `dst` (absent; its parent exists), storing modes per
    /// `dst_policy`, every file and directory synced if `durable`; returns
    /// the copy's mode exceptions. See [`tree::copy_tree`].
    fn copy_tree(
        &self,
        src: &Path,
        src_modes: &Modes,
        dst: &Path,
        dst_policy: Policy,
        durable: bool,
    ) -> Result<Modes, ProviderError>;
}

/// One of the provider's own regular files, opened for reading without
/// following a symlink nor blocking on a fifo; `None` if absent.
fn open_if_present(path: &Path) -> io::Result<Option<fs::File>> {
    match tree::open_file_nofollow(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
/// [`Layout::listing`] by [`Layout::names`] and an [`Layout::entry`] each.
fn listing_by_entry<L: Layout + ?Sized>(
    layout: &L,
    dir: &Path,
) -> io::Result<Vec<(Vec<u8>, bool)>> {
    let mut out = Vec::new();
    for name in layout.names(dir)? {
        match layout.entry(&dir.join(OsStr::from_bytes(&name)))? {
            Some(entry) => out.push((name, matches!(entry, Entry::Dir { .. }))),
            None => continue,
        }
    }
    Ok(out)
}

/// [`Layout::read_files`] by [`Layout::names`] and an [`Layout::entry`] and
/// [`Layout::read_file`] each.
fn read_files_by_entry<L: Layout + ?Sized>(
    layout: &L,
    dir: &Path,
    wanted: &dyn Fn(&[u8]) -> bool,
    max_len: u64,
) -> io::Result<FileReads> {
    let mut out = Vec::new();
    for name in layout.names(dir)? {
        if !wanted(&name) {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(&name));
        let read = match layout.entry(&path) {
            Ok(None) => continue,
            Ok(Some(Entry::File)) => match layout.read_file(&path, max_len) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => continue,
                Err(e) => Err(e),
            },
            Ok(Some(_)) => Err(io::Error::other("not a regular file")),
            Err(e) => Err(e),
        };
        out.push((name, read));
    }
    Ok(out)
}

/// Reads at most `max_len + 1` bytes of `file` (one more than allowed, so
/// a longer file shows as longer) into a buffer its length `len` sizes: one
/// read of the content and one that finds its end, where an empty buffer
/// would take a probe and growing reads.
fn read_capped(file: fs::File, len: u64, max_len: u64) -> io::Result<Vec<u8>> {
    let cap = usize::try_from(len.min(max_len) + 1).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(cap);
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The kernel's file system.
#[derive(Debug, Default)]
pub(crate) struct RealLayout;

impl Layout for RealLayout {
    fn is_kernel(&self) -> bool {
        true
    }

    fn entry(&self, path: &Path) -> io::Result<Option<Entry>> {
        match fs::symlink_metadata(path) {
            Ok(md) => {
                let t = md.file_type();
                Ok(Some(if t.is_dir() {
                    Entry::Dir {
                        mode: md.mode() & tree::PERM_BITS,
                    }
                } else if t.is_file() {
                    Entry::File
                } else {
                    Entry::Other
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_file(&self, path: &Path, max_len: u64) -> io::Result<Option<Vec<u8>>> {
        let (parent, name) = tree::split(path)?;
        match Dir::open(parent).and_then(|d| d.open_file(name)) {
            Ok((file, st)) => read_capped(file, st.len, max_len).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_file(&self, dir: &Path, name: &str, bytes: &[u8], sync_file: bool) -> io::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = fsutil::create_nofollow(&tmp, 0o644)?;
        f.write_all(bytes)?;
        if sync_file {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, dir.join(name))
    }

    fn write_new_file(
        &self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
        sync_file: bool,
    ) -> io::Result<()> {
        let path = dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        let written = f
            .write_all(bytes)
            .and_then(|()| if sync_file { f.sync_all() } else { Ok(()) });
        if written.is_err() {
            drop(f);
            let _ = fs::remove_file(&path);
        }
        written
    }

    fn remove_file(&self, path: &Path) -> io::Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()> {
        DirBuilder::new().mode(mode).create(path)?;
        self.set_dir_mode(path, mode)
    }

    fn remove_empty_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn set_dir_mode(&self, path: &Path, mode: u32) -> io::Result<()> {
        // The usual case first, in one `lstat` (the provider's own path; the
        // last component is not followed): a directory whose mode is
        // already exact needs nothing, so no parent is opened.
        if let Ok(md) = fs::symlink_metadata(path)
            && md.file_type().is_dir()
            && md.mode() & tree::PERM_BITS == mode
        {
            return Ok(());
        }
        let (parent, name) = tree::split(path)?;
        let d = Dir::open(parent)?;
        match d.stat_at(name)? {
            // Already exact (a `mkdir` the umask left alone, as usual): no
            // `fchmodat`, which glibc runs as four system calls (an `O_PATH`
            // open, `fstat`, `chmod` of its `/proc/self/fd` path, `close`)
            // on every create.
            Some(st) if st.kind == fsutil::Kind::Dir && st.mode == mode => Ok(()),
            Some(st) if st.kind == fsutil::Kind::Dir => d.set_mode_at(name, mode),
            Some(st) => Err(io::Error::other(format!("is {}", st.kind.describe()))),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn names(&self, dir: &Path) -> io::Result<Vec<Vec<u8>>> {
        Dir::open(dir)?.names()
    }

    fn listing(&self, dir: &Path) -> io::Result<Vec<(Vec<u8>, bool)>> {
        let d = Dir::open(dir)?;
        let mut out = Vec::new();
        for (name, kind) in d.entries()? {
            let kind = match kind {
                Some(kind) => kind,
                // The file system did not say: examine it (gone since: left out).
                None => match d.stat_at(&name)? {
                    Some(st) => st.kind,
                    None => continue,
                },
            };
            out.push((name, kind == fsutil::Kind::Dir));
        }
        Ok(out)
    }

    fn read_files(
        &self,
        dir: &Path,
        wanted: &dyn Fn(&[u8]) -> bool,
        max_len: u64,
    ) -> io::Result<FileReads> {
        let d = Dir::open(dir)?;
        let mut out = Vec::new();
        for (name, kind) in d.entries()? {
            if !wanted(&name) {
                continue;
            }
            let read = d
                .open_listed_file(&name, kind)
                .and_then(|(file, st)| read_capped(file, st.len, max_len));
            match read {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                read => out.push((name, read)),
            }
        }
        Ok(out)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fsutil::fsync_dir(path)
    }

    fn syncfs(&self, path: &Path) -> io::Result<()> {
        fsutil::syncfs(path)
    }

    fn sync_path(&self, path: &Path) -> io::Result<()> {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let kind = f.metadata()?.file_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(io::Error::other("neither a regular file nor a directory"));
        }
        f.sync_all()
    }

    fn dirty_bytes(&self) -> Option<u64> {
        fsutil::dirty_page_cache_bytes()
    }

    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        let (parent, name) = tree::split(path)?;
        let dir = match Dir::open(parent) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        tree::remove_entry(&dir, name)
    }

    fn open_read(&self, path: &Path) -> io::Result<Option<(Box<dyn Read>, u64)>> {
        let Some(file) = open_if_present(path)? else {
            return Ok(None);
        };
        let len = file.metadata()?.len();
        Ok(Some((Box::new(file), len)))
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        DirBuilder::new().mode(mode).create(path)
    }

    fn identity(&self, path: &Path) -> io::Result<Option<Identity>> {
        match fs::symlink_metadata(path) {
            Ok(md) => Ok(Some(Identity {
                dir: md.file_type().is_dir(),
                dev: md.dev(),
                ino: md.ino(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn exchange(&self, a: &Path, b: &Path) -> io::Result<bool> {
        fsutil::exchange(a, b)
    }

    fn apply_stream(
        &self,
        r: &mut HashReader<&mut dyn Read>,
        header: &wire::Header,
        root: &Path,
        modes: &mut Modes,
    ) -> Result<Applied, ProviderError> {
        wire::apply(r, header, root, modes)
    }

    fn apply_true_modes(
        &self,
        root: &Path,
        modes: &Modes,
        skip_root: bool,
    ) -> Result<(), ProviderError> {
        modes.apply_true_modes(root, skip_root)
    }

    fn copy_tree(
        &self,
        src: &Path,
        src_modes: &Modes,
        dst: &Path,
        dst_policy: Policy,
        durable: bool,
    ) -> Result<Modes, ProviderError> {
        tree::copy_tree(src, src_modes, dst, dst_policy, durable)
    }
}

/// A [`SimStorage`] as the provider's file system: a test seam, named as
/// such, for power-cut sweeps of the real provider. Modes are not modelled
/// (every directory reads as `0755`, a copy records no mode exceptions);
/// a tree is removed entry by entry and copied entry by entry.
#[derive(Debug, Clone)]
pub(crate) struct SimLayout {
    storage: SimStorage,
}

impl SimLayout {
    pub(crate) fn new(storage: SimStorage) -> Self {
        SimLayout { storage }
    }

    /// The whole content of the file at `path`.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let f = self.storage.open(path)?;
        let mut bytes = vec![0; usize::try_from(f.len()?).map_err(io::Error::other)?];
        f.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    /// The simulated copy: `mkdir dst`, then each entry of `src` in name
    /// order (a directory copied the same way, depth first; a file created,
    /// written and, if `durable`, synced), then, if `durable`, the sync of
    /// `dst`: the sync points of [`tree::copy_tree`] in its order. An entry
    /// that vanishes meanwhile is left out, and a directory nested deeper
    /// than [`tree::MAX_DEPTH`] refused (`depth` counts `src` and its
    /// ancestors in the copy), as there.
    fn copy_dir(
        &self,
        src: &Path,
        dst: &Path,
        durable: bool,
        depth: usize,
    ) -> Result<(), ProviderError> {
        let io =
            |e| ProviderError::io(format!("copying {} to {}", src.display(), dst.display()), e);
        self.storage.create_dir(dst).map_err(io)?;
        for name in self.names(src).map_err(io)? {
            let name = OsStr::from_bytes(&name);
            let (from, to) = (src.join(name), dst.join(name));
            match self.storage.is_dir(&from) {
                None => {}
                Some(true) => {
                    if depth >= tree::MAX_DEPTH {
                        return Err(tree::too_deep(&from.display().to_string()));
                    }
                    self.copy_dir(&from, &to, durable, depth + 1)?;
                }
                Some(false) => {
                    let bytes = self.read_all(&from).map_err(io)?;
                    let f = self.storage.create(&to).map_err(io)?;
                    f.write_all_at(&bytes, 0).map_err(io)?;
                    if durable {
                        f.sync_all().map_err(io)?;
                    }
                }
            }
        }
        if durable {
            self.storage.sync_dir(dst).map_err(io)?;
        }
        Ok(())
    }
}

impl Layout for SimLayout {
    fn entry(&self, path: &Path) -> io::Result<Option<Entry>> {
        Ok(self.storage.is_dir(path).map(|dir| {
            if dir {
                Entry::Dir { mode: 0o755 }
            } else {
                Entry::File
            }
        }))
    }

    fn read_file(&self, path: &Path, max_len: u64) -> io::Result<Option<Vec<u8>>> {
        if self.storage.is_dir(path).is_none() {
            return Ok(None);
        }
        let f = self.storage.open(path)?;
        let len = f.len()?.min(max_len + 1);
        let mut bytes = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        f.read_exact_at(&mut bytes, 0)?;
        Ok(Some(bytes))
    }

    fn write_file(&self, dir: &Path, name: &str, bytes: &[u8], sync_file: bool) -> io::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        let f = self.storage.create(&tmp)?;
        f.write_all_at(bytes, 0)?;
        if sync_file {
            f.sync_all()?;
        }
        drop(f);
        self.storage.rename(&tmp, &dir.join(name))
    }

    fn write_new_file(
        &self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
        sync_file: bool,
    ) -> io::Result<()> {
        let path = dir.join(name);
        if self.storage.is_dir(&path).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let f = self.storage.create(&path)?;
        let written = f
            .write_all_at(bytes, 0)
            .and_then(|()| if sync_file { f.sync_all() } else { Ok(()) });
        if written.is_err() {
            drop(f);
            let _ = self.storage.remove_file(&path);
        }
        written
    }

    fn remove_file(&self, path: &Path) -> io::Result<bool> {
        match self.storage.remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_dir(&self, path: &Path, _mode: u32) -> io::Result<()> {
        self.storage.create_dir(path)
    }

    fn remove_empty_dir(&self, path: &Path) -> io::Result<()> {
        self.storage.remove_dir(path)
    }

    fn set_dir_mode(&self, path: &Path, _mode: u32) -> io::Result<()> {
        match self.storage.is_dir(path) {
            Some(true) => Ok(()),
            Some(false) => Err(io::Error::other("is a regular file")),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.storage.rename(from, to)
    }

    fn names(&self, dir: &Path) -> io::Result<Vec<Vec<u8>>> {
        let mut names: Vec<Vec<u8>> = self
            .storage
            .list_dir(dir)?
            .into_iter()
            .map(String::into_bytes)
            .collect();
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.storage.sync_dir(path)
    }

    fn syncfs(&self, _path: &Path) -> io::Result<()> {
        self.storage.syncfs()
    }

    /// Unknown: an `Auto` provider runs `fsync` rounds on the simulation
    /// (its sweeps run `syncfs` rounds by asking for them).
    fn dirty_bytes(&self) -> Option<u64> {
        None
    }

    fn sync_path(&self, path: &Path) -> io::Result<()> {
        match self.storage.is_dir(path) {
            Some(true) => self.storage.sync_dir(path),
            Some(false) => self.storage.open(path)?.sync_all(),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        match self.storage.is_dir(path) {
            None => Ok(()),
            Some(false) => self.storage.remove_file(path),
            Some(true) => {
                for name in self.names(path)? {
                    let child: PathBuf = path.join(OsStr::from_bytes(&name));
                    self.remove_tree(&child)?;
                }
                self.storage.remove_dir(path)
            }
        }
    }

    fn open_read(&self, path: &Path) -> io::Result<Option<(Box<dyn Read>, u64)>> {
        match self.storage.is_dir(path) {
            None => Ok(None),
            Some(true) => Err(io::Error::other("is a directory")),
            Some(false) => {
                let bytes = self.read_all(path)?;
                let len = bytes.len() as u64;
                Ok(Some((Box::new(Cursor::new(bytes)), len)))
            }
        }
    }

    fn mkdir(&self, path: &Path, _mode: u32) -> io::Result<()> {
        self.storage.create_dir(path)
    }

    fn identity(&self, path: &Path) -> io::Result<Option<Identity>> {
        Ok(self
            .storage
            .identity(path)
            .map(|(dir, ino)| Identity { dir, dev: 0, ino }))
    }

    fn exchange(&self, a: &Path, b: &Path) -> io::Result<bool> {
        match self.storage.exchange(a, b) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn apply_stream(
        &self,
        r: &mut HashReader<&mut dyn Read>,
        header: &wire::Header,
        root: &Path,
        modes: &mut Modes,
    ) -> Result<Applied, ProviderError> {
        let mut sink = sim_sink::SimSink {
            layout: self,
            root,
            modes,
            entries: 0,
            bytes: 0,
        };
        wire::decode(r, header, &mut sink)
    }

    fn apply_true_modes(
        &self,
        _root: &Path,
        _modes: &Modes,
        _skip_root: bool,
    ) -> Result<(), ProviderError> {
        // No modes in the simulation.
        Ok(())
    }

    fn copy_tree(
        &self,
        src: &Path,
        _src_modes: &Modes,
        dst: &Path,
        dst_policy: Policy,
        durable: bool,
    ) -> Result<Modes, ProviderError> {
        self.copy_dir(src, dst, durable, 1)?;
        // No modes in the simulation: what the real copy records for a
        // tree without exceptions.
        Ok(Modes::new(dst_policy))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::{Layout, RealLayout, listing_by_entry, read_files_by_entry};

    fn mode_of(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// `mkdir` under a setgid directory gives the new one the setgid bit
    /// too (and the umask may take bits away): `create_dir` ends with the
    /// mode asked for, whatever `mkdir` left.
    #[test]
    fn create_dir_sets_the_exact_mode_when_mkdir_gives_other_bits() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("setgid");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o2755)).unwrap();
        let layout = RealLayout;
        let child = parent.join("v");
        layout.create_dir(&child, 0o755).unwrap();
        assert_eq!(
            mode_of(&child),
            0o755,
            "the inherited setgid bit is cleared"
        );
        let plain = tmp.path().join("plain");
        layout.create_dir(&plain, 0o700).unwrap();
        assert_eq!(mode_of(&plain), 0o700);
    }

    /// A new file is created in place and never over what is there: not an
    /// existing file (its bytes stay), not a symlink (not followed: its
    /// target is not created), and a directory's sync is the caller's.
    #[test]
    fn write_new_file_never_replaces_nor_follows_an_existing_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let layout = RealLayout;
        layout.write_new_file(dir, "m", b"first", false).unwrap();
        assert_eq!(std::fs::read(dir.join("m")).unwrap(), b"first");
        let again = layout
            .write_new_file(dir, "m", b"second", true)
            .unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(dir.join("m")).unwrap(), b"first");
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        let link = layout.write_new_file(dir, "link", b"x", false).unwrap_err();
        assert_eq!(link.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!dir.join("target").exists(), "the symlink was followed");
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            2,
            "no temp file is left"
        );
    }

    /// The kernel's one-handle scan ([`Layout::listing`],
    /// [`Layout::read_files`], which trust the listing's entry types) gives
    /// what a lookup of each name by path gives, over every kind of entry:
    /// a file read whole, an empty one, one longer than the cap (read to one
    /// byte past it), and a directory, symlinks and a fifo refused (never
    /// followed, never blocked on).
    #[test]
    fn the_one_handle_scan_agrees_with_a_lookup_of_each_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("small"), b"{\"a\":1}").unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        std::fs::write(dir.join("long"), vec![b'x'; 100]).unwrap();
        std::fs::write(dir.join(".hidden"), b"temp").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.join("small"), dir.join("to-file")).unwrap();
        std::os::unix::fs::symlink(dir.join("sub"), dir.join("to-dir")).unwrap();
        let fifo =
            std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let layout = RealLayout;
        let wanted = |name: &[u8]| !name.starts_with(b".");
        let scanned = layout.read_files(dir, &wanted, 10).unwrap();
        let looked_up = read_files_by_entry(&layout, dir, &wanted, 10).unwrap();
        let shown = |reads: &super::FileReads| -> Vec<(String, Option<Vec<u8>>)> {
            reads
                .iter()
                .map(|(name, read)| {
                    (
                        String::from_utf8(name.clone()).unwrap(),
                        read.as_ref().ok().cloned(),
                    )
                })
                .collect()
        };
        assert_eq!(shown(&scanned), shown(&looked_up));
        let expected: Vec<(String, Option<Vec<u8>>)> = vec![
            ("empty".into(), Some(Vec::new())),
            ("fifo".into(), None),
            ("long".into(), Some(vec![b'x'; 11])),
            ("small".into(), Some(b"{\"a\":1}".to_vec())),
            ("sub".into(), None),
            ("to-dir".into(), None),
            ("to-file".into(), None),
        ];
        assert_eq!(shown(&scanned), expected);
        assert_eq!(
            layout.listing(dir).unwrap(),
            listing_by_entry(&layout, dir).unwrap()
        );
        let dirs: Vec<Vec<u8>> = layout
            .listing(dir)
            .unwrap()
            .into_iter()
            .filter(|(_, is_dir)| *is_dir)
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            dirs,
            vec![b"sub".to_vec()],
            "a symlink to a directory is none"
        );
    }
}
