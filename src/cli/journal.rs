//! `volmgr journal dump|verify|stats|state|repair`: the operator's view of a
//! state directory's journal, offline or beside a running agent, damaged or
//! not (conventions of pg_waldump and etcd-dump-logs).
//!
//! The read-only subcommands (`dump`, `verify`, `stats`, `state`) read through
//! a storage whose write calls fail, never take the state directory's lock,
//! and reuse the journal's bounded readers, so corrupt input yields a report
//! and an exit code, never a hang, a panic or an unbounded allocation.
//! `repair` is the only writer: explicit flags, the exclusive lock, and a
//! `.broken` copy of everything it removes.
//!
//! Exit codes (also in the README): 0 success / clean; 1 (verify) torn tail
//! only; 2 corruption found (or, for repair, damage the requested repair
//! cannot fix); 3 usage error, I/O error, lock held, or a request that cannot
//! be satisfied. A closed stdout (`| head`) ends the command with exit 0.

mod dump;
mod render;
mod repair;
mod scan;
mod stats;
mod verify;
mod view;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;

pub use render::{quote, rfc3339_ms};

/// Success; for `verify`, a clean journal.
pub const EXIT_OK: i32 = 0;
/// `verify`: the only problem is a torn tail (what opening would truncate).
pub const EXIT_TORN_TAIL: i32 = 1;
/// Corruption found.
pub const EXIT_CORRUPT: i32 = 2;
/// Usage error, I/O error, lock held, or a request that cannot be satisfied.
pub const EXIT_USAGE_OR_IO: i32 = 3;

const JOURNAL_HELP: &str = "\
Examples:
  volmgr journal verify /var/lib/volmgr
  volmgr journal dump /var/lib/volmgr --volume web-data
  volmgr journal dump /var/lib/volmgr --follow
  volmgr journal state /var/lib/volmgr --at-seq 1200

The read-only subcommands (dump, verify, stats, state) never take the state
directory's lock and never write: they work beside a running agent.

Exit codes: 0 ok/clean, 1 torn tail only (verify), 2 corruption found,
3 usage or I/O error (or lock held, or the request cannot be satisfied).";

const DUMP_HELP: &str = "\
Columns: SEQ, POSITION (segment:offset; the segment is named by its first
sequence number), TIME (UTC), KIND, VOLUME, OP, SUMMARY.

Examples:
  volmgr journal dump /var/lib/volmgr
  volmgr journal dump /var/lib/volmgr --from-seq 1000 --to-seq 1100
  volmgr journal dump /var/lib/volmgr --kind intent,reconciled --volume web-data
  volmgr journal dump /var/lib/volmgr --op 0190a1b2
  volmgr journal dump /var/lib/volmgr --format json | jq 'select(.kind == \"outcome\")'
  volmgr journal dump /var/lib/volmgr --follow
  volmgr journal dump /var/lib/volmgr --raw      # keep going past damage

Exit codes: 0 ok (a torn tail is noted on stderr), 2 corruption found (without
--raw the dump stops there), 3 usage or I/O error.";

const VERIFY_HELP: &str = "\
Checks every segment header, frame (length, sequence, checksum, batch, padding),
record payload and checkpoint, then replays the state as opening would. Segments
a checkpoint already covers are checked too: damage there (or in a checkpoint)
counts as corruption although opening might not read it.

Examples:
  volmgr journal verify /var/lib/volmgr
  volmgr journal verify /var/lib/volmgr --raw    # report every damaged spot

Exit codes: 0 clean; 1 torn tail only (an unfinished last write, which opening
the journal truncates); 2 corruption (each bad segment:offset is printed with
its reason); 3 usage or I/O error.";

const STATS_HELP: &str = "\
Examples:
  volmgr journal stats /var/lib/volmgr
  volmgr journal stats /var/lib/volmgr --format json

Exit codes: 0 ok, 2 corruption found (figures cover the records before it),
3 usage or I/O error.";

const STATE_HELP: &str = "\
Replays the newest usable checkpoint at or before the requested sequence number
plus the records after it, and prints the volume table, pending intents and
orphans as they were then.

Examples:
  volmgr journal state /var/lib/volmgr
  volmgr journal state /var/lib/volmgr --at-seq 1200
  volmgr journal state /var/lib/volmgr --format json | jq '.volumes'

Exit codes: 0 ok, 2 corruption found (the state shown is as of the last good
record), 3 usage or I/O error, or the history before N was compacted away.";

const REPAIR_HELP: &str = "\
Repair never runs implicitly. It takes the state directory's exclusive lock
(stop the agent first) and copies every byte it removes to a .broken file
beside the segment before zeroing it; whole segments and checkpoints past the
cut are renamed to <name>.broken.

Examples:
  volmgr journal repair /var/lib/volmgr --truncate-torn-tail
  volmgr journal repair /var/lib/volmgr --truncate-at 1234            # shows the plan
  volmgr journal repair /var/lib/volmgr --truncate-at 1234 --yes-destroy-records-after

Exit codes: 0 repaired (or nothing to do), 2 the damage is not what the chosen
repair may remove (e.g. corruption before the tail with --truncate-torn-tail),
3 usage or I/O error, lock held, or confirmation missing.";

/// `volmgr journal ...`
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Inspect, verify and repair a state directory's journal",
    after_help = JOURNAL_HELP
)]
pub struct JournalArgs {
    #[command(subcommand)]
    pub command: JournalCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum JournalCommand {
    /// Print one line per record (sequence, position, time, kind, volumes, op, summary)
    #[command(after_help = DUMP_HELP)]
    Dump(DumpArgs),
    /// Check every frame and checkpoint; the exit code says clean, torn or corrupt
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Records and bytes per kind, segments, checkpoints, volumes, pending intents
    #[command(after_help = STATS_HELP)]
    Stats(StatsArgs),
    /// Replay the journal (up to a sequence number) and print the volume table
    #[command(after_help = STATE_HELP)]
    State(StateArgs),
    /// Cut off a torn tail or, explicitly confirmed, everything from a record on
    #[command(after_help = REPAIR_HELP)]
    Repair(RepairArgs),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Align {
    /// Pad columns on a terminal, separate them with tabs when piped
    #[default]
    Auto,
    /// Always pad columns
    Always,
    /// Always separate columns with one tab
    Never,
}

impl Align {
    fn aligned(self) -> bool {
        match self {
            Align::Auto => io::stdout().is_terminal(),
            Align::Always => true,
            Align::Never => false,
        }
    }
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Column layout of text output
    #[arg(long, value_enum, default_value_t)]
    pub align: Align,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Intent,
    Outcome,
    Reconciled,
}

impl KindArg {
    fn byte(self) -> u8 {
        match self {
            KindArg::Intent => crate::state::KIND_INTENT,
            KindArg::Outcome => crate::state::KIND_OUTCOME,
            KindArg::Reconciled => crate::state::KIND_RECONCILED,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    /// The agent's state directory (it holds journal/ and checkpoints/)
    pub state_dir: PathBuf,
    /// Only records with a sequence number of at least N
    #[arg(long, value_name = "N")]
    pub from_seq: Option<u64>,
    /// Only records with a sequence number of at most N
    #[arg(long, value_name = "N")]
    pub to_seq: Option<u64>,
    /// Only records of these kinds (comma-separated or repeated)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "KIND")]
    pub kind: Vec<KindArg>,
    /// Only records naming this volume id (repeatable: any of them)
    #[arg(long, value_name = "ID")]
    pub volume: Vec<String>,
    /// Only records of this operation id (a prefix is enough)
    #[arg(long, value_name = "OP")]
    pub op: Option<String>,
    /// Keep printing records as they are appended (also across segment
    /// rotations) until interrupted
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Continue past corruption: report each bad segment:offset and resume at
    /// the next valid frame
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The agent's state directory
    pub state_dir: PathBuf,
    /// Continue past corruption to report every damaged spot and what follows
    #[arg(long)]
    pub raw: bool,
    /// Column layout
    #[arg(long, value_enum, default_value_t)]
    pub align: Align,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    /// The agent's state directory
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// The agent's state directory
    pub state_dir: PathBuf,
    /// Show the state as it was after record N (default: the latest)
    #[arg(long, value_name = "N")]
    pub at_seq: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("mode").required(true).args(["truncate_torn_tail", "truncate_at"])
))]
pub struct RepairArgs {
    /// The agent's state directory (the agent must be stopped)
    pub state_dir: PathBuf,
    /// Remove an unfinished write at the end of the last segment, exactly what
    /// opening the journal would truncate
    #[arg(long)]
    pub truncate_torn_tail: bool,
    /// Remove record SEQ and every record after it (also corruption); without
    /// the confirmation flag only prints what would be removed
    #[arg(long, value_name = "SEQ")]
    pub truncate_at: Option<u64>,
    /// Confirms --truncate-at: the records from SEQ on are destroyed (their
    /// bytes are kept in .broken files)
    #[arg(long, requires = "truncate_at")]
    pub yes_destroy_records_after: bool,
}

/// How a subcommand fails. Messages go to stderr; a broken pipe is silent.
#[derive(Debug)]
pub(crate) enum CliError {
    /// stdout was closed by the reader: stop quietly, exit 0.
    BrokenPipe,
    Fail {
        code: i32,
        message: String,
    },
}

impl CliError {
    pub(crate) fn io(message: impl Into<String>) -> Self {
        CliError::Fail {
            code: EXIT_USAGE_OR_IO,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError::io(message)
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        CliError::Fail {
            code: EXIT_CORRUPT,
            message: message.into(),
        }
    }

    pub(crate) fn from_write(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::io(format!("write to stdout: {e}"))
        }
    }
}

/// Runs a parsed `volmgr journal` command and returns the process exit code.
pub fn run(args: JournalArgs) -> i32 {
    run_to(args, Box::new(io::stdout()))
}

/// Like [`run`], writing the normal output to `sink`.
pub fn run_to(args: JournalArgs, sink: Box<dyn Write>) -> i32 {
    let aligned = match &args.command {
        JournalCommand::Dump(a) => a.output.align.aligned(),
        JournalCommand::Verify(a) => a.align.aligned(),
        JournalCommand::Stats(a) => a.output.align.aligned(),
        JournalCommand::State(a) => a.output.align.aligned(),
        JournalCommand::Repair(_) => false,
    };
    let mut out = render::Out::new(sink, aligned);
    let result = match &args.command {
        JournalCommand::Dump(a) => dump::run(a, &mut out),
        JournalCommand::Verify(a) => verify::run(a, &mut out),
        JournalCommand::Stats(a) => stats::run(a, &mut out),
        JournalCommand::State(a) => view::run(a, &mut out),
        JournalCommand::Repair(a) => repair::run(a, &mut out),
    };
    let flushed = out.flush();
    match result.and_then(|code| flushed.map(|()| code)) {
        Ok(code) => code,
        Err(CliError::BrokenPipe) => EXIT_OK,
        Err(CliError::Fail { code, message }) => {
            render::warn(&message);
            code
        }
    }
}

/// The exit code for a command line that does not parse: 0 for `--help` and
/// `--version`, else [`EXIT_USAGE_OR_IO`] (clap's own default, 2, would
/// collide with "corruption found"). Prints clap's message first.
pub fn parse_error_exit_code(err: &clap::Error) -> i32 {
    let _ = err.print();
    match err.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => EXIT_OK,
        _ => EXIT_USAGE_OR_IO,
    }
}
