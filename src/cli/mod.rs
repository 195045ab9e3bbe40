//! Command-line front ends of the library (the binary's subcommands).

pub mod journal;
