//! `volmgr journal dump|verify|stats|state|repair`: the operator's view of a
//! state directory's journal, offline or beside a running agent, damaged or
//! not (conventions of `pg_waldump` and etcd-dump-logs).
//!
//! Every subcommand judges the journal through the core reader
//! (`journal::reader`), the one that opening the journal uses: the same
//! checkpoint choice, frame loop and classification, so the tool and the
//! agent reach the same verdict at the same offset (DESIGN.md invariant 12).
//! The read-only subcommands (`dump`, `verify`, `stats`, `state`) read through
//! a storage whose write calls fail and that opens regular files only, never
//! take the state directory's lock, and keep at most two decoded checkpoints
//! in memory, so corrupt or hostile input yields a report and an exit code,
//! never a hang, a panic or an unbounded allocation. `repair` is the only
//! writer: explicit flags, the exclusive lock, and a `.broken` copy of
//! everything it removes.
//!
//! Exit codes (the table of every `volmgr` subcommand, /work/coord's
//! `EXIT_CODES` and the README): 0 success / clean; 1 I/O error, lock held, or
//! a request that cannot be met; 2 usage; 6 (verify) torn tail only;
//! 7 corruption found (or, for repair, damage the chosen mode may not
//! remove). A closed stdout (`| head`) ends the command with exit 0.

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
/// An I/O error, the lock is held, or a request that cannot be met.
pub const EXIT_FAILURE: i32 = super::EXIT_FAILURE;
/// Usage: bad flags or arguments (clap's errors included).
pub const EXIT_USAGE: i32 = super::EXIT_USAGE;
/// `verify`: the only problem is a torn tail (what opening would truncate).
pub const EXIT_TORN_TAIL: i32 = super::EXIT_TORN_TAIL;
/// Corruption found.
pub const EXIT_CORRUPT: i32 = super::EXIT_CORRUPT;

/// The exit-code rows every journal subcommand's help ends with.
macro_rules! exit_codes {
    () => {
        "
Exit codes:
  0  success (verify: a clean journal; repair: repaired or nothing to do)
  1  an I/O error, the state directory is locked or (repair) another user could
     change it, or the request cannot be met (e.g. state --at-seq N past the
     end, or before compacted history)
  2  usage: bad flags or arguments, a path that is not a state directory,
     a missing --yes-destroy-records-after
  6  verify: the only problem is a torn tail (opening the journal truncates it)
  7  corruption found (dump/stats/state print what precedes it; repair: damage
     the chosen mode may not remove)"
    };
}

const JOURNAL_HELP: &str = concat!(
    "\
Examples:
  volmgr journal verify /var/lib/volmgr
  volmgr journal dump /var/lib/volmgr --volume web-data
  volmgr journal dump /var/lib/volmgr --follow
  volmgr journal state /var/lib/volmgr --at-seq 1200

The read-only subcommands (dump, verify, stats, state) never take the state
directory's lock and never write: they work beside a running agent. Every
subcommand judges the journal with the reader the agent opens it with: the
same verdict (clean, torn tail, corrupt) at the same offset.
",
    exit_codes!()
);

const DUMP_HELP: &str = concat!(
    "\
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

A torn tail is noted on stderr (exit 0); without --raw the dump stops at the
first corruption (exit 7). --format json: one object per record with seq,
segment, offset, time (RFC 3339), kind, volume, op, summary and record (the
record as stored: see README, \"The journal tool\").
",
    exit_codes!()
);

const VERIFY_HELP: &str = concat!(
    "\
Checks every segment header, frame (length, sequence, checksum, batch, padding),
record payload and checkpoint, replays the state as opening would, and says
what opening does (the `open` row): open cleanly, truncate a torn tail, or
refuse, naming the segment and offset. Segments a checkpoint already covers,
and older checkpoints, are checked too: damage there counts as corruption
(opening does not read it, but a fallback to an older checkpoint would).
A damaged IDENTITY (the state directory's identity, which opening reads and
never replaces) gets an `identity` row and makes opening refuse (exit 7). It
may run while the agent writes: a checkpoint or covered segment the agent
removes meanwhile is read as never there, not as damage.

Examples:
  volmgr journal verify /var/lib/volmgr
  volmgr journal verify /var/lib/volmgr --raw    # report every damaged spot
",
    exit_codes!()
);

const STATS_HELP: &str = concat!(
    "\
Examples:
  volmgr journal stats /var/lib/volmgr
  volmgr journal stats /var/lib/volmgr --format json

With corruption, the figures cover the records before it (exit 7).
",
    exit_codes!()
);

const STATE_HELP: &str = concat!(
    "\
Replays the newest usable checkpoint at or before the requested sequence number
plus the records after it, as opening would, and prints the volume table,
pending intents and orphans as they were then. --format json speaks the HTTP
API's volume vocabulary (kind data|snapshot, status live|lost, created_at in
RFC 3339).

Examples:
  volmgr journal state /var/lib/volmgr
  volmgr journal state /var/lib/volmgr --at-seq 1200
  volmgr journal state /var/lib/volmgr --format json | jq '.volumes'

With corruption, the state shown is as of the last good record (exit 7);
--at-seq past the end of the journal, or before compacted history, exits 1.
",
    exit_codes!()
);

const REPAIR_HELP: &str = concat!(
    "\
Repair never runs implicitly. It takes the state directory's exclusive lock
(stop the agent first) and copies every byte it removes to a .broken file
beside the segment before zeroing it; whole segments and checkpoints past the
cut are renamed to <name>.broken.

Examples:
  volmgr journal repair /var/lib/volmgr --truncate-torn-tail
  volmgr journal repair /var/lib/volmgr --truncate-at 1234            # shows the plan
  volmgr journal repair /var/lib/volmgr --truncate-at 1234 --yes-destroy-records-after

--truncate-torn-tail refuses corruption before the tail (exit 7); --truncate-at
without the confirmation prints the plan and exits 2.
",
    exit_codes!()
);

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
    /// An I/O error, a held lock, or a request that cannot be met: exit 1.
    pub(crate) fn io(message: impl Into<String>) -> Self {
        CliError::Fail {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }

    /// A request the journal cannot satisfy (e.g. `--at-seq` past its end).
    pub(crate) fn unmet(message: impl Into<String>) -> Self {
        CliError::io(message)
    }

    /// Bad flags or arguments: exit 2.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError::Fail {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        CliError::Fail {
            code: EXIT_CORRUPT,
            message: message.into(),
        }
    }

    // A `map_err` adapter: it takes the error the way `map_err` hands it over.
    #[allow(clippy::needless_pass_by_value)]
    pub(crate) fn from_write(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::io(format!("write to stdout: {e}"))
        }
    }
}

/// Runs a parsed `volmgr journal` command and returns the process exit code.
pub fn run(args: &JournalArgs) -> i32 {
    run_to(args, Box::new(io::stdout()))
}

/// Like [`run`], writing the normal output to `sink`.
pub fn run_to(args: &JournalArgs, sink: Box<dyn Write>) -> i32 {
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
