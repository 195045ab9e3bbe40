//! The `volmgr` command line.
//!
//! Temporary wiring of the `journal` subcommand until the agent's entry point
//! (serve, volume verbs) lands; the lead merges the two.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "volmgr", version, about = "Event-sourced host volume manager")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    Journal(volmgr::cli::journal::JournalArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(volmgr::cli::journal::parse_error_exit_code(&e)),
    };
    let code = match cli.command {
        Cmd::Journal(args) => volmgr::cli::journal::run(args),
    };
    std::process::exit(code);
}
