//! Placeholder for the offline journal tool (`volmgr journal ...`), written
//! on another branch; that branch replaces this file.

/// Arguments of `volmgr journal`.
#[derive(clap::Args, Debug)]
pub struct JournalArgs {}

/// Runs `volmgr journal`; returns the process exit code.
pub fn run(_args: JournalArgs) -> i32 {
    eprintln!("volmgr journal: not built in this branch");
    3
}
