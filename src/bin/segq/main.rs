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
    /// Per consumer group: ack floor, lag, leased, waiting for retry (with attempts), dead letters, lost to retention
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
    /// The damaged file and the byte position in it, when damage stopped the command.
    pub at: Option<(std::path::PathBuf, u64)>,
}

impl Failure {
    /// A usage error or a refusal: exit code 2.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 2, message: message.into(), at: None }
    }
}

impl From<segq::Error> for Failure {
    fn from(e: segq::Error) -> Failure {
        let (code, at) = match &e {
            segq::Error::Corrupt { path, position, .. } => (1, Some((path.clone(), *position))),
            _ => (2, None),
        };
        Failure { code, message: e.to_string(), at }
    }
}

impl From<io::Error> for Failure {
    /// An error writing the output. A closed pipe (`segq dump | head`) is no failure: the
    /// reader has all it wanted.
    fn from(e: io::Error) -> Failure {
        let code = if e.kind() == io::ErrorKind::BrokenPipe { 0 } else { 2 };
        Failure { code, message: format!("writing the output: {e}"), at: None }
    }
}

/// What `--json` prints when a command fails before printing anything, so that the output
/// is still one JSON document: `{"error": {"message", "exit_code", "file", "position"}}`.
#[derive(serde::Serialize)]
struct ErrorDocument<'a> {
    error: ErrorFields<'a>,
}

#[derive(serde::Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    exit_code: u8,
    file: Option<String>,
    position: Option<u64>,
}

/// Counts the bytes written through it: whether a command printed anything.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a command returns: its exit code, or why it failed.
pub type Outcome = Result<u8, Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let stdout = io::stdout();
    let mut out = Counting { inner: io::BufWriter::new(stdout.lock()), written: 0 };
    let (result, json) = match cli.command {
        Command::Info(args) => (info::run(&args, &mut out), args.json),
        Command::Segments(args) => (segments::run(&args, &mut out), args.json),
        Command::Dump(args) => (dump::run(&args, &mut out), args.json),
        Command::Verify(args) => (verify::run(&args, &mut out), args.json),
        Command::Groups(args) => (groups::run(&args, &mut out), args.json),
        Command::Repair(args) => (repair::run(&args, &mut out), args.json),
    };
    if let Err(f) = &result
        && json
        && f.code != 0
        && out.written == 0
    {
        let error = ErrorFields {
            message: &f.message,
            exit_code: f.code,
            file: f.at.as_ref().map(|(file, _)| file.to_string_lossy().into_owned()),
            position: f.at.as_ref().map(|&(_, position)| position),
        };
        // Failing to print it changes nothing: the error line below says the same.
        let _ = output::json(&mut out, &ErrorDocument { error });
    }
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

/// Arguments clap refused: its message on stderr as usual, and, when `--json` was asked
/// for, the error document on stdout too, so that a script reading it gets one document
/// whatever went wrong. `--help` and `--version` print as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let code = 2;
    if std::env::args_os().skip(1).any(|a| a == "--json") {
        let rendered = e.to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        let error = ErrorFields { message, exit_code: code, file: None, position: None };
        let mut out = io::stdout().lock();
        // Failing to print it changes nothing: clap's message below says the same.
        let _ = output::json(&mut out, &ErrorDocument { error }).and_then(|()| out.flush());
    }
    let _ = e.print();
    ExitCode::from(code)
}
