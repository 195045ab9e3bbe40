//! The state directory's trust boundary, attacked by a local user (issue:
//! the agent runs as root with `--state-dir DIR`, the README's command uses
//! `/tmp/volmgr`, and nothing checked who owns the state directory or its
//! parents; LOCK was made 0644 and the journal world-readable).
//!
//! - A user who made the state directory (or can write its parent) owns
//!   everything root then trusts: they plant segments (root replays a state
//!   of their choosing) or make `journal/` a symlink to /etc (root creates,
//!   truncates and removes files there). Refused before anything is created
//!   or read, by the agent, the library and `volmgr journal repair`.
//! - Any user could open LOCK read-only and hold its `flock`: no agent could
//!   ever start again. LOCK is 0600.
//! - Any user could read every segment and checkpoint (every volume's id,
//!   meta and provider configuration). `journal/` and `checkpoints/` are
//!   0700.
//! - A dir provider root in a directory another user can change is refused
//!   like the state directory.
//!
//! Each test performs the attack for real, as user `nobody` (65534) where
//! the attacker acts (`setpriv`), so each needs root: without it a test
//! prints a SKIP line, and fails with `VOLMGR_REQUIRE_ROOT=1` (CI).

mod common;
#[path = "agent_support/process.rs"]
mod process;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use process::{describe, serve_command, serve_until_exit, volmgr_command};
use volmgr::journal::{Journal, JournalConfig, JournalError};
use volmgr::provider::ProviderError;
use volmgr::provider::dir::DirProvider;
use volmgr::state::Record;

const NOBODY: u32 = 65534;

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    common::skip_or_fail(
        test,
        "root",
        "the attacks act as another user (chown, setpriv)",
        "VOLMGR_REQUIRE_ROOT",
    );
    false
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn give_to_nobody(path: &Path) {
    chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn open(state: &Path) -> Result<Journal<Record>, JournalError> {
    Journal::<Record>::open(state, JournalConfig::default()).map(|(journal, _)| journal)
}

/// `<dir>/state`, opened once by root, mode 0755: others may traverse it,
/// so only the modes of what volmgr made in it keep them out.
fn traversable_state(dir: &Path) -> std::path::PathBuf {
    let state = dir.join("state");
    fs::create_dir(&state).unwrap();
    chmod(&state, 0o755);
    drop(open(&state).unwrap());
    state
}

/// The names in `dir`, sorted (empty if it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn untrusted(e: &JournalError) -> (&Path, &str) {
    match e {
        JournalError::Untrusted { path, reason } => (path, reason),
        other => panic!("expected Untrusted, got {other:?}"),
    }
}

#[test]
fn a_state_directory_another_user_made_is_refused_before_anything_is_read_or_created() {
    if !root_or_skip("a_state_directory_another_user_made_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // As in /tmp: sticky and world-writable, so nobody could make it first.
    chmod(tmp.path(), 0o1777);
    let state = tmp.path().join("volmgr");
    fs::create_dir(&state).unwrap();
    // The attacker's planted journal: an empty directory is enough to show
    // root would read it.
    fs::create_dir(state.join("journal")).unwrap();
    give_to_nobody(&state.join("journal"));
    give_to_nobody(&state);

    let e = open(&state).expect_err("a state directory nobody made");
    let (path, reason) = untrusted(&e);
    assert_eq!(path, state);
    assert!(
        reason.contains("owned by uid 65534") && reason.contains("remove it"),
        "{e}"
    );
    assert!(e.to_string().contains(&state.display().to_string()), "{e}");
    assert_eq!(names(&state), ["journal"], "nothing created");

    // The agent exits 1 with it, having bound nothing and made nothing.
    let (status, messages) = serve_until_exit(&state, &[]);
    assert_eq!(status.code(), Some(1), "{messages:?}");
    let stderr = messages.join("\n");
    assert!(
        stderr.contains("untrusted state directory") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    assert!(!stderr.contains("serving"), "{stderr}");
    assert_eq!(names(&state), ["journal"], "nothing created");

    // Made fresh by root in the same sticky directory, it is trusted (the
    // README's `--state-dir /tmp/volmgr` on a fresh machine).
    let fresh = tmp.path().join("fresh");
    open(&fresh).expect("a state directory root makes in a sticky one");
}

/// Another user's symlink at the state directory's name (free in a sticky
/// directory such as /tmp, so anyone may plant it, before the agent's
/// first start or between its check and its `mkdir`), pointing at a
/// directory root trusts (here a fresh root-owned 0755 one, in the attack
/// /etc): the agent refuses the path as given, never the symlink's
/// target, and creates nothing there.
#[test]
fn a_symlink_another_user_planted_at_the_state_directory_name_is_refused() {
    if !root_or_skip("a_symlink_another_user_planted_at_the_state_directory_name_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o1777);
    let target = tmp.path().join("etc");
    fs::create_dir(&target).unwrap();
    chmod(&target, 0o755);
    let state = tmp.path().join("volmgr");
    let out = common::as_nobody(&[
        "ln",
        "-s",
        target.to_str().unwrap(),
        state.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fs::symlink_metadata(&state).unwrap().uid(), NOBODY);

    let e = open(&state).expect_err("another user's symlink");
    let (path, _) = untrusted(&e);
    assert_eq!(path, state, "{e}");
    let (status, messages) = serve_until_exit(&state, &[]);
    assert_eq!(status.code(), Some(1), "{messages:?}");
    let stderr = messages.join("\n");
    assert!(
        stderr.contains("untrusted state directory") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    assert_eq!(
        names(&target),
        Vec::<String>::new(),
        "nothing created in the target"
    );
}

#[test]
fn a_state_directory_whose_parent_others_can_write_is_refused() {
    if !root_or_skip("a_state_directory_whose_parent_others_can_write_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("shared");
    fs::create_dir(&parent).unwrap();
    chmod(&parent, 0o777); // not sticky: anyone can rename our state away
    let state = parent.join("state");
    for exists in [false, true] {
        if exists {
            fs::create_dir(&state).unwrap();
        }
        let e = open(&state).expect_err("an other-writable parent");
        let (path, reason) = untrusted(&e);
        assert_eq!(path, parent, "{e}");
        assert!(
            reason.contains("777") && reason.contains("chmod go-w"),
            "{e}"
        );
        assert_eq!(names(&state), Vec::<String>::new(), "nothing created");
    }
}

#[test]
fn a_journal_directory_that_is_a_symlink_is_refused_and_its_target_untouched() {
    if !root_or_skip("a_journal_directory_that_is_a_symlink_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let etc = tmp.path().join("etc");
    fs::create_dir(&state).unwrap();
    fs::create_dir(&etc).unwrap();
    // What root would remove there as one of its temporary files.
    fs::write(etc.join(".passwd.tmp"), b"keep").unwrap();
    for dir in ["journal", "checkpoints"] {
        let link = state.join(dir);
        symlink(&etc, &link).unwrap();
        let e = open(&state).expect_err("a symlinked journal directory");
        let (path, reason) = untrusted(&e);
        assert_eq!(path, link);
        assert!(reason.contains("symlink"), "{e}");
        assert_eq!(
            names(&etc),
            [".passwd.tmp"],
            "nothing made or removed there"
        );
        fs::remove_file(&link).unwrap();
        fs::create_dir(&link).unwrap();
    }
    // LOCK and IDENTITY are never followed either.
    for file in ["LOCK", "IDENTITY"] {
        let link = state.join(file);
        symlink(etc.join(".passwd.tmp"), &link).unwrap();
        let e = open(&state).expect_err("a symlinked state file");
        assert_eq!(untrusted(&e).0, link, "{e}");
        assert_eq!(fs::read(etc.join(".passwd.tmp")).unwrap(), b"keep");
        fs::remove_file(&link).unwrap();
    }
    open(&state).expect("the repaired state directory opens");
}

/// Opens LOCK read-only as nobody and tries to hold its `flock`; prints
/// `held` and keeps it until stdin closes.
const SQUAT: &str = "import fcntl, sys
f = open(sys.argv[1], 'rb')
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print('held', flush=True)
sys.stdin.read()";

#[test]
fn a_local_user_cannot_hold_the_state_directory_lock() {
    if !root_or_skip("a_local_user_cannot_hold_the_state_directory_lock") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = traversable_state(tmp.path());
    assert_eq!(mode(&state.join("LOCK")), 0o600);

    let lock = state.join("LOCK");
    let mut squatter = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", SQUAT])
        .arg(&lock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv and python3 run");
    let mut line = String::new();
    BufReader::new(squatter.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.trim() == "held" {
        // The attack worked: show what it does to the agent.
        let out = serve_command(&state, "text", &[]).output().unwrap();
        drop(squatter.stdin.take());
        let _ = squatter.wait();
        panic!(
            "nobody holds the flock of {}; the agent then: {}",
            lock.display(),
            describe(&out)
        );
    }
    let out = squatter.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PermissionError"), "{stderr}");

    // A LOCK an older version made 0644 is made 0600 once held.
    chmod(&lock, 0o644);
    let journal = open(&state).unwrap();
    assert_eq!(mode(&lock), 0o600);
    drop(journal);
}

#[test]
fn a_local_user_cannot_list_or_read_the_journal() {
    if !root_or_skip("a_local_user_cannot_list_or_read_the_journal") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = traversable_state(tmp.path());
    let journal = state.join("journal");
    let segment = journal.join(&names(&journal)[0]);
    for (dir, argv) in [
        (&journal, vec!["ls", journal.to_str().unwrap()]),
        (&journal, vec!["cat", segment.to_str().unwrap()]),
        (
            &state.join("checkpoints"),
            vec!["ls", state.join("checkpoints").to_str().unwrap()],
        ),
    ] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        let out = common::as_nobody(&argv);
        assert!(!out.status.success(), "{argv:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{argv:?}: {}",
            describe(&out)
        );
    }
    assert_eq!(mode(&segment), 0o600, "the segment itself is private too");

    // Directories an older version made 0755 are made 0700 at the next open.
    chmod(&journal, 0o755);
    chmod(&state.join("checkpoints"), 0o755);
    drop(open(&state).unwrap());
    assert_eq!(mode(&journal), 0o700);
    assert_eq!(mode(&state.join("checkpoints")), 0o700);
}

#[test]
fn journal_repair_refuses_a_state_directory_another_user_owns() {
    if !root_or_skip("journal_repair_refuses_a_state_directory_another_user_owns") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    drop(open(&state).unwrap());
    give_to_nobody(&state);
    let before = names(&state.join("journal"));
    let out = volmgr_command()
        .args(["journal", "repair", "--truncate-torn-tail"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("untrusted state directory") && stderr.contains("uid 65534"),
        "{}",
        describe(&out)
    );
    assert_eq!(names(&state.join("journal")), before);
    // The read-only tools still read it.
    let out = volmgr_command()
        .args(["journal", "verify"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn a_dir_provider_root_another_user_can_change_is_refused() {
    if !root_or_skip("a_dir_provider_root_another_user_can_change_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A root to be made in a directory anyone can write (not sticky).
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let root = shared.join("volumes");
    let err = DirProvider::new(root.clone()).expect_err("an other-writable parent");
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&shared.display().to_string()) && text.contains("777"),
        "{text}"
    );
    assert!(!root.exists(), "nothing created");

    // An existing root another user owns is refused too, and says so.
    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    give_to_nobody(&theirs);
    let err = DirProvider::new(theirs.clone()).expect_err("a root nobody owns");
    assert!(matches!(err, ProviderError::InvalidConfig(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("uid 65534") && text.contains("existing root is refused too"),
        "{text}"
    );
    assert_eq!(names(&theirs), Vec::<String>::new(), "nothing created");

    // Root's own, in a sticky directory: accepted.
    chmod(tmp.path(), 0o1777);
    DirProvider::new(tmp.path().join("ours")).expect("a root of ours");
}

/// Every way into the content of `v` (holding `secret`) and of its snapshot
/// `s` through `root`, and the provider's own areas (markers, staging of
/// received streams, trash), refused to nobody.
fn assert_volumes_hidden_from_nobody(root: &Path, v: &Path, s: &Path) {
    common::content_hidden_from_nobody(&[v, s]);
    for own in ["data", "snapshot", ".volmgr", ".staging", ".trash"] {
        common::refused_to_nobody(&["ls", root.join(own).to_str().unwrap()]);
    }
}

/// A local user listed and read every volume and snapshot through the host
/// path: the state directory was made 0755 by the agent, and the dir
/// provider's root and all its directories (`data/`, `snapshot/`,
/// `.volmgr/`, `.staging/`, `.trash/`) 0755 too. Containers reach a volume
/// through the bind mount root makes, so nobody needs to traverse them: the
/// provider makes its directories 0700 (and tightens those an older version
/// made looser once it holds the root), and a root it creates 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_user_cannot_list_or_read_a_volume_or_snapshot_through_the_host_path() {
    use volmgr::manager::{Manager, ManagerConfig};
    use volmgr::state::Meta;
    if !root_or_skip("a_local_user_cannot_list_or_read_a_volume_or_snapshot_through_the_host_path")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    // A state directory others may traverse (the operator's choice, or
    // made by an older agent): only the provider's own modes protect.
    let state = traversable_state(tmp.path());
    let root = state.join("volumes");
    let config = [("root".to_owned(), root.to_str().unwrap().to_owned())]
        .into_iter()
        .collect();
    let m = Manager::open(&state, ManagerConfig::default())
        .await
        .unwrap();
    m.add_provider("p", "dir", config).await.unwrap();
    let v = m.create_volume("p", Some("v"), Meta::new()).await.unwrap();
    let v = std::path::PathBuf::from(&v.location);
    fs::write(v.join("secret"), b"tenant data").unwrap();
    chmod(&v.join("secret"), 0o644);
    let s = m
        .create_snapshot_as("v", Some("s"), Meta::new())
        .await
        .unwrap();
    let s = std::path::PathBuf::from(&s.location);
    assert_eq!(fs::read(s.join("secret")).unwrap(), b"tenant data");
    assert_volumes_hidden_from_nobody(&root, &v, &s);
    assert_eq!(mode(&root), 0o700, "a root the provider made");
    m.close().await;

    // What an older version left: every directory 0755. The root is the
    // operator's to set; the provider's own directories are tightened.
    for dir in [
        "",
        "data",
        "snapshot",
        ".volmgr",
        ".volmgr/data",
        ".volmgr/snapshot",
        ".volmgr/modes",
        ".staging",
        ".trash",
    ] {
        chmod(&root.join(dir), 0o755);
    }
    let m = Manager::open(&state, ManagerConfig::default())
        .await
        .unwrap();
    assert_eq!(mode(&root), 0o755, "an existing root is left as it is");
    for dir in ["data", "snapshot", ".volmgr", ".staging", ".trash"] {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
    }
    assert_volumes_hidden_from_nobody(&root, &v, &s);
    // Through a bind mount root makes (a container's, a CSI publish), any
    // user the volume's own modes let in still reads it.
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    let mounted = BindMount::new(&v, &target);
    let out = common::as_nobody(&["cat", target.join("secret").to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(out.stdout, b"tenant data");
    drop(mounted);
    m.close().await;
}

/// A bind mount of `source` at `target`, unmounted on drop.
struct BindMount(std::path::PathBuf);

impl BindMount {
    fn new(source: &Path, target: &Path) -> BindMount {
        let out = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        BindMount(target.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The agent made its state directory 0755 (`create_dir_all`), where the
/// library makes it 0700: with the default provider root under it, every
/// volume was one `ls` away. Made 0700 like the library's.
#[test]
fn the_agent_makes_its_state_directory_private() {
    if !root_or_skip("the_agent_makes_its_state_directory_private") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o1777);
    let state = tmp.path().join("volmgr");
    let mut agent = process::ServeProcess::start(&state, &[]);
    common::refused_to_nobody(&["ls", state.to_str().unwrap()]);
    common::refused_to_nobody(&["ls", state.join("volumes/data").to_str().unwrap()]);
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&state.join("volumes")), 0o700, "the default root");
    assert!(agent.terminate().success());
}

/// Segments and checkpoints written before files were made 0600 stayed
/// 0644 for good (only new files got 0600): any user who could reach them
/// (a `journal/` an older version left 0755, or one an operator opened)
/// read every volume's id, meta and provider configuration. Opening the
/// journal for writing makes every file in `journal/` and `checkpoints/`
/// 0600, once it holds the lock.
#[tokio::test]
async fn segments_and_checkpoints_an_older_version_left_readable_are_made_private_at_open() {
    use volmgr::state::{Done, OpResult};
    if !root_or_skip(
        "segments_and_checkpoints_an_older_version_left_readable_are_made_private_at_open",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    let state = traversable_state(tmp.path());
    let journal = open(&state).unwrap();
    let record = Record::Outcome {
        op: uuid::Uuid::from_u128(1),
        at_ms: 1,
        result: OpResult::Done(Done::default()),
    };
    let seq = journal.append(&record).await.unwrap();
    journal.checkpoint(seq, vec![1, 2, 3]).await.unwrap();
    journal.close().await;
    let files: Vec<std::path::PathBuf> = ["journal", "checkpoints"]
        .iter()
        .flat_map(|dir| {
            let dir = state.join(dir);
            names(&dir).into_iter().map(move |n| dir.join(n))
        })
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "ckpt")),
        "{files:?}"
    );
    // What an older version left.
    for file in &files {
        chmod(file, 0o644);
    }
    chmod(&state.join("journal"), 0o755);
    chmod(&state.join("checkpoints"), 0o755);

    let journal = open(&state).unwrap();
    // Reachable again (an operator's `chmod`, a backup tool's copy of the
    // directory modes): the files' own modes keep others out.
    chmod(&state.join("journal"), 0o755);
    chmod(&state.join("checkpoints"), 0o755);
    for file in &files {
        common::refused_to_nobody(&["cat", file.to_str().unwrap()]);
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    journal.close().await;
}
