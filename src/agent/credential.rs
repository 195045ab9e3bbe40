//! The agent's credential: one shared token, presented as
//! `Authorization: Bearer <token>` or, as Flynn's `httpclient` sends its
//! key, HTTP Basic with the token as the password (the user name is
//! ignored).
//!
//! `volmgr serve` keeps the token in `<state-dir>/token` unless one is
//! given: created on first start from the OS's random source, mode 0600
//! from the moment the file exists (it is written under a temporary name
//! opened with that mode, then hard-linked into place, so it is never
//! readable by others, never half-written, and two starts racing agree on
//! one token). The CLI reads the same file. A token file that group or
//! others can read, or that another user owns, is refused.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

/// Name of the token file in a state directory.
pub const TOKEN_FILE: &str = "token";
/// Longest token accepted (file, environment or header).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Random bytes of a generated token (hex-encoded: 64 characters).
const GENERATED_TOKEN_BYTES: usize = 32;

/// `<state-dir>/token`.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// Why a token could not be had.
#[derive(Debug)]
#[non_exhaustive]
pub enum CredentialError {
    Io {
        path: PathBuf,
        error: io::Error,
    },
    /// The token is empty, too long, or not a valid header value.
    Invalid {
        path: Option<PathBuf>,
        why: String,
    },
    /// The token file can be read by group or others, or belongs to
    /// another user.
    Exposed {
        path: PathBuf,
        why: String,
    },
}

impl std::fmt::Display for CredentialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialError::Io { path, error } => {
                write!(f, "token file {}: {error}", path.display())
            }
            CredentialError::Invalid {
                path: Some(path),
                why,
            } => write!(f, "token file {}: {why}", path.display()),
            CredentialError::Invalid { path: None, why } => write!(f, "token: {why}"),
            CredentialError::Exposed { path, why } => write!(
                f,
                "token file {}: {why}; refusing to use a credential others may have read \
                 (chmod 600 it, or remove it to have a new one generated)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CredentialError {}

impl CredentialError {
    /// The file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CredentialError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }
}

/// Checks a token's text: non-empty after trimming, at most
/// [`MAX_TOKEN_BYTES`], printable ASCII without spaces (so it fits a
/// header and a Basic password).
pub fn check_token(token: &str) -> Result<&str, String> {
    let t = token.trim();
    if t.is_empty() {
        return Err("it is empty".into());
    }
    if t.len() > MAX_TOKEN_BYTES {
        return Err(format!("it is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it holds a character other than printable ASCII".into());
    }
    Ok(t)
}

/// Opens a file the operator gives the agent (`serve --token-file`,
/// `--peers-file`), which runs as root, refusing one another user could
/// have read (when `secret`) or changed: every directory on the way to it
/// and to where its symlinks lead must pass the state directory's walk
/// (`fsutil::trust`: owned by root or this user, not group- or
/// other-writable, a sticky one like `/tmp` as an ancestor only), and the
/// file be a regular file owned by root or this user that group and others
/// cannot write (nor read, when `secret`). A token others can read is the
/// agent's credential handed to every local user; a peers file others can
/// write names where the agent sends that token (a peer of theirs).
/// Symlinks are followed only through directories that pass.
pub fn open_operator_file(path: &Path, secret: bool) -> Result<File, String> {
    use volmgr_core::fsutil::trust::{Last, check_dir_path, euid};
    let shown = path.display();
    let abs = std::path::absolute(path).map_err(|e| format!("{shown}: {e}"))?;
    let walk = |p: &Path| {
        let dir = p.parent().unwrap_or(Path::new("/"));
        check_dir_path(dir, Last::RootOrEuid)
            .map(drop)
            .map_err(|e| {
                format!(
                    "{shown}: a directory on its way is one another user could change ({e}); \
                 keep it in a directory only root can write"
                )
            })
    };
    walk(&abs)?;
    let real = std::fs::canonicalize(&abs).map_err(|e| format!("{shown}: {e}"))?;
    if real != abs {
        // Where its symlinks lead, walked too.
        walk(&real)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&real)
        .map_err(|e| format!("{shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    let me = euid();
    let refused = if !meta.file_type().is_file() {
        Some("not a regular file".to_owned())
    } else if meta.uid() != 0 && meta.uid() != me {
        Some(format!(
            "owned by uid {}, neither root nor this user",
            meta.uid()
        ))
    } else if meta.mode() & if secret { 0o077 } else { 0o022 } != 0 {
        Some(format!(
            "mode {:04o} lets group or others {}",
            meta.mode() & 0o7777,
            if secret { "in" } else { "write it" }
        ))
    } else {
        None
    };
    match refused {
        Some(why) => Err(format!(
            "{shown}: {why}; refusing a {} others may have {} (chmod {} it)",
            if secret { "credential" } else { "file" },
            if secret { "read" } else { "changed" },
            if secret { "600" } else { "644" },
        )),
        None => Ok(file),
    }
}

/// Reads the token `volmgr serve --token-file` names, as
/// [`open_operator_file`] allows (a secret): its trimmed content.
pub fn read_agent_token_file(path: &Path) -> Result<String, String> {
    let file = open_operator_file(path, true).map_err(|e| format!("token file {e}"))?;
    read_token(file, path).map_err(|e| e.to_string())
}

/// Reads a token file (as the CLI's `--token-file` does): its trimmed
/// content.
pub fn read_token_file(path: &Path) -> Result<String, CredentialError> {
    let file = File::open(path).map_err(|error| CredentialError::Io {
        path: path.to_owned(),
        error,
    })?;
    read_token(file, path)
}

/// The trimmed, checked token in `file` (read up to a bound).
fn read_token(file: File, path: &Path) -> Result<String, CredentialError> {
    let mut text = String::new();
    file.take(MAX_TOKEN_BYTES as u64 + 2)
        .read_to_string(&mut text)
        .map_err(|error| CredentialError::Io {
            path: path.to_owned(),
            error,
        })?;
    check_token(&text)
        .map(str::to_owned)
        .map_err(|why| CredentialError::Invalid {
            path: Some(path.to_owned()),
            why,
        })
}

/// The token of the state directory: read from `<state-dir>/token`, or
/// generated there on first start. Returns the token and whether it was
/// created now.
pub fn load_or_create(state_dir: &Path) -> Result<(String, bool), CredentialError> {
    let path = token_path(state_dir);
    match read_private(&path) {
        Ok(token) => return Ok((token, false)),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let token = generate().map_err(|error| CredentialError::Io {
        path: path.clone(),
        error,
    })?;
    match create_private(&path, &token) {
        Ok(()) => Ok((token, true)),
        // Another start created it first: use that one.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read_private(&path).map(|token| (token, false))
        }
        Err(error) => Err(CredentialError::Io { path, error }),
    }
}

/// Reads a token file that must be private: a regular file (not a
/// symlink: opened `O_NOFOLLOW`, checked by `fstat`), owned by this user,
/// no permission for group or others.
fn read_private(path: &Path) -> Result<String, CredentialError> {
    let io_err = |error| CredentialError::Io {
        path: path.to_owned(),
        error,
    };
    let exposed = |why: String| CredentialError::Exposed {
        path: path.to_owned(),
        why,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => exposed("a symbolic link".into()),
            _ => io_err(e),
        })?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(exposed("not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(exposed(format!(
            "owned by uid {}, not by this user (uid {euid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(exposed(format!(
            "mode {:04o} lets group or others in",
            meta.mode() & 0o7777
        )));
    }
    read_token(file, path)
}

/// A new random token: [`GENERATED_TOKEN_BYTES`] from the OS, hex.
fn generate() -> io::Result<String> {
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    let mut hex = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

/// Writes `token` to `path`, mode 0600 from creation, atomically: a
/// temporary file opened `O_EXCL` with mode 0600, written and synced, then
/// hard-linked to `path` (which fails if `path` exists), then the directory
/// synced.
fn create_private(path: &Path, token: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{TOKEN_FILE}.tmp.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The credential a request presents: the Bearer token, or the password of
/// HTTP Basic. `None` if the header is absent or of another scheme.
pub fn presented(authorization: &str) -> Option<String> {
    let (scheme, rest) = authorization.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        if rest.len() > 2 * MAX_TOKEN_BYTES {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_with_the_token_as_password_are_understood() {
        let basic = base64::engine::general_purpose::STANDARD.encode(":s3cret");
        assert_eq!(
            presented(&format!("Basic {basic}")).as_deref(),
            Some("s3cret")
        );
        let named = base64::engine::general_purpose::STANDARD.encode("flynn:s3cret");
        assert_eq!(
            presented(&format!("basic {named}")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(presented("Bearer s3cret").as_deref(), Some("s3cret"));
        assert_eq!(presented("Digest x"), None);
        assert_eq!(presented("Basic !!!"), None);
        assert_eq!(presented("Basic"), None);
    }

    #[test]
    fn a_generated_token_file_is_private_and_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (token, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_eq!(token.len(), 2 * GENERATED_TOKEN_BYTES);
        let meta = std::fs::metadata(token_path(dir.path())).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), (token, false));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [TOKEN_FILE], "no temporary file is left");
    }

    #[test]
    fn a_token_file_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "guessable\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, token_path(dir.path())).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, CredentialError::Exposed { .. }), "{e}");
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = token_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, CredentialError::Exposed { .. }), "{e}");
    }
}
