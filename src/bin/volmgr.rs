//! `volmgr`: the host agent (`serve`), its client (`volume`) and the
//! offline journal tool (`journal`). Exit codes are in the README.

use std::process::ExitCode;

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
    /// Inspect and repair a journal directory offline
    Journal(cli::journal::JournalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Volume(args) => cli::volume::run(args),
        Command::Journal(args) => cli::journal::run(args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
