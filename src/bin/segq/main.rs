//! `segq`: inspect, dump, verify and repair a segq queue directory.
//!
//! Every command but `repair` only reads, with plain file reads and without the queue's
//! lock, so it is safe to run next to a live writer. Each command prints aligned text, or
//! one JSON document with `--json`.

mod dump;
mod groups;
mod info;
mod output;
mod repair;
mod segments;
mod verify;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shown at the end of every `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success; for verify: no damage found
  1  damage found (each finding names the file, the byte position and what is wrong)
  2  usage error, I/O error, or (repair) the queue is open by a writer";

#[derive(Debug, Parser)]
#[command(
    name = "segq",
    version,
    about = "Inspect, dump, verify and repair a segq queue directory",
    long_about = "Inspect, dump, verify and repair a segq queue directory.\n\n\
        The read commands (info, segments, dump, verify, groups) use plain file reads and take no lock, \
        so they are safe on a queue that a writer has open.",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Format version, first and next offset, segments, bytes, groups, clean or crashed
    #[command(after_help = EXIT_CODES)]
    Info(info::Args),
    /// One row per segment: base and last offset, records, bytes, timestamps, sealed or active, index entries
    #[command(after_help = EXIT_CODES)]
    Segments(segments::Args),
    /// Print records of a queue directory or of one segment file
    #[command(after_help = EXIT_CODES)]
    Dump(dump::Args),
    /// Check every CRC, the offset sequence, every index entry, the checkpoint and group state
    #[command(after_help = EXIT_CODES)]
    Verify(verify::Args),
    /// Per consumer group: ack floor, lag, leased, waiting for retry (with attempts), dead letters
    #[command(after_help = EXIT_CODES)]
    Groups(groups::Args),
    /// Cut the queue at its first damaged record, keeping the cut bytes in side files
    #[command(after_help = EXIT_CODES)]
    Repair(repair::Args),
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A usage error or a refusal: exit code 2.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 2, message: message.into() }
    }
}

impl From<segq::Error> for Failure {
    fn from(e: segq::Error) -> Failure {
        let code = if matches!(e, segq::Error::Corrupt { .. }) { 1 } else { 2 };
        Failure { code, message: e.to_string() }
    }
}

impl From<io::Error> for Failure {
    /// An error writing the output. A closed pipe (`segq dump | head`) is no failure: the
    /// reader has all it wanted.
    fn from(e: io::Error) -> Failure {
        let code = if e.kind() == io::ErrorKind::BrokenPipe { 0 } else { 2 };
        Failure { code, message: format!("writing the output: {e}") }
    }
}

/// What a command returns: its exit code, or why it failed.
pub type Outcome = Result<u8, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match cli.command {
        Command::Info(args) => info::run(&args, &mut out),
        Command::Segments(args) => segments::run(&args, &mut out),
        Command::Dump(args) => dump::run(&args, &mut out),
        Command::Verify(args) => verify::run(&args, &mut out),
        Command::Groups(args) => groups::run(&args, &mut out),
        Command::Repair(args) => repair::run(&args, &mut out),
    };
    let flushed = out.flush();
    let code = match (result, flushed) {
        (Ok(code), Ok(())) => code,
        // The reader of our output went away (`segq dump | head`): nothing more to say.
        (Err(f), _) if f.code == 0 => 0,
        (_, Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        (Err(f), _) => {
            eprintln!("segq: error: {}", f.message);
            f.code
        }
        (Ok(_), Err(e)) => {
            eprintln!("segq: error: writing the output: {e}");
            2
        }
    };
    ExitCode::from(code)
}
