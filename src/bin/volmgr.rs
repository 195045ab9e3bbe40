//! `volmgr`: the host agent (`serve`), its client (`volume`) and the
//! offline journal tool (`journal`). Exit codes are in the README.

// A panic in the agent or the library is a bug, never a reply: no unwrap
// outside tests (clippy.toml allows it in #[test] code). Issue 15.
#![warn(clippy::unwrap_used)]

use clap::{Parser, Subcommand};
use volmgr::cli;

#[derive(Parser, Debug)]
#[command(name = "volmgr", version, about = "Event-sourced host volume manager")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host agent (HTTP API) on a state directory
    Serve(cli::serve::ServeArgs),
    /// Create, list, snapshot, fork, destroy and pull volumes on a running agent
    Volume(cli::volume::VolumeArgs),
    /// Inspect, verify and repair a state directory's journal (dump, verify, stats and state also beside a running agent)
    Journal(cli::journal::JournalArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(parse_error_exit_code(&e)),
    };
    let code = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Volume(args) => cli::volume::run(args),
        Command::Journal(args) => cli::journal::run(&args),
    };
    std::process::exit(code);
}

/// Prints a parse error (or help); returns the exit code: clap's (2 for a
/// usage error, 0 for help and version), the same for every subcommand.
fn parse_error_exit_code(e: &clap::Error) -> i32 {
    let _ = e.print();
    e.exit_code()
}
