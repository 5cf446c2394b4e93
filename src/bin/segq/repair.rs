//! `segq repair --truncate-at-first-damage`: cuts the queue back to the records before its
//! first damage, keeping every byte it removes in side files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use segq::inspect::{QueueDir, RepairPlan, WriterLock, plan_repair};

use crate::output::json;
use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Without --yes, prints what it would do and changes nothing (exit code 1 if there is damage,
as for verify). Warnings of verify are not damage and are left alone.
With --yes it takes the queue's lock (refusing, with exit code 2, while a writer has the queue
open), then: deletes the checkpoint so that the next open scans the newest segment; copies
the bytes after the cut to <segment>.cut-<position> and cuts the segment there, at the end of
the last complete batch before the damage; renames every later segment to
<segment>.cut-0; deletes the index files of the segments it changed (they are rebuilt).
A damaged index or checkpoint is deleted (the next open rebuilds or scans), a folder in an
index file's place is moved aside to <index>.cut-0, and a link to a
file that is gone in place of the oldest segment is renamed aside, as if retention had
deleted that segment. Nothing is removed that is not kept in a side file, apart from derived
data. Damage that a cut of the log does not mend (in group files, say) is listed and left;
the exit code is then 1 even with --yes.")]
pub struct Args {
    /// The queue directory
    dir: PathBuf,
    /// Cut the log at its first damaged record (the only repair there is)
    #[arg(long)]
    truncate_at_first_damage: bool,
    /// Do it; without this, only print what would be done
    #[arg(long)]
    yes: bool,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

/// Takes the queue's lock, or says who has it. `create` makes the lock file if missing (a
/// queue without one has never been opened by a writer).
fn lock(dir: &Path, create: bool) -> Result<WriterLock, Failure> {
    WriterLock::acquire(dir, create).map_err(|e| match e {
        segq::Error::Locked { path } => Failure::usage(format!(
            "{} is locked: a writer has this queue open; close it before repairing",
            path.display()
        )),
        e => Failure::usage(e.to_string()),
    })
}

fn describe(out: &mut impl Write, plan: &RepairPlan, done: bool) -> io::Result<()> {
    let (cut, moved, deleted) =
        if done { ("cut", "moved", "deleted") } else { ("would cut", "would move", "would delete") };
    if let Some(d) = &plan.damage {
        writeln!(out, "first damage: {} at byte {}: {}", d.file.display(), d.position, d.what)?;
    }
    if let Some(c) = &plan.cut {
        writeln!(
            out,
            "{cut} {} at byte {} (the queue continues at offset {}); {} bytes kept in {}",
            c.file.display(),
            c.position,
            c.next_offset,
            c.bytes,
            c.side_file.display()
        )?;
    }
    for m in &plan.moves {
        writeln!(out, "{moved} {} to {}", m.file.display(), m.side_file.display())?;
    }
    for d in &plan.deletes {
        writeln!(out, "{deleted} {}", d.display())?;
    }
    if !plan.is_empty() {
        writeln!(out, "the next open continues at offset {}", plan.next_offset)?;
    }
    if !done && !plan.is_empty() {
        writeln!(out, "nothing was changed: run again with --yes to do it")?;
    }
    if !plan.unrepaired.is_empty() {
        writeln!(out, "damage that cutting the log does not mend (left as it is; see `segq verify`):")?;
        for f in &plan.unrepaired {
            writeln!(out, "  {} at byte {}: {}", f.file.display(), f.position, f.what)?;
        }
    }
    Ok(())
}

pub fn run(args: &Args, out: &mut impl Write) -> Outcome {
    if !args.truncate_at_first_damage {
        return Err(Failure::usage("repair needs --truncate-at-first-damage (the only repair there is); see --help"));
    }
    let dir = QueueDir::open(&args.dir)?;
    // With --yes the lock is held from here on, so no writer opens the queue half-repaired;
    // a dry run only checks that no writer has it and lets go at once.
    let held = if args.yes { Some(lock(&dir.path, true)?) } else { lock(&dir.path, false).map(|_| None)? };
    let dir = QueueDir::open(&args.dir)?;
    let plan = plan_repair(&dir)?;
    if args.yes && !plan.is_empty() {
        apply(&dir, &plan).map_err(|e| Failure::usage(format!("repair failed part-way: {e}; run it again")))?;
    }
    if args.json {
        json(
            out,
            &serde_json::json!({ "dir": dir.path.to_string_lossy(), "applied": args.yes && !plan.is_empty(), "plan": plan }),
        )?;
    } else if plan.is_empty() && plan.unrepaired.is_empty() {
        writeln!(out, "no damage found: nothing to repair")?;
    } else {
        if plan.is_empty() {
            writeln!(out, "nothing to cut in the log")?;
        }
        describe(out, &plan, args.yes)?;
    }
    drop(held);
    // As `verify`: 1 while damage is left, here or because the plan was not carried out.
    let left = !plan.unrepaired.is_empty() || (!plan.is_empty() && !args.yes);
    Ok(u8::from(left))
}

/// Carries out the plan. Each step leaves a queue that opens: the checkpoint goes first
/// (so nothing refers to a segment about to go), later segments go newest first (so the
/// log stays a prefix), and the cut segment is cut last.
fn apply(dir: &QueueDir, plan: &RepairPlan) -> io::Result<()> {
    let at = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let checkpoint = &dir.checkpoint.path;
    if plan.deletes.contains(checkpoint) {
        remove(checkpoint).map_err(|e| at(checkpoint, e))?;
        sync_dir(&dir.path)?;
    }
    for m in plan.moves.iter().rev() {
        fs::rename(&m.file, &m.side_file).map_err(|e| at(&m.file, e))?;
    }
    if let Some(c) = &plan.cut {
        let file = OpenOptions::new().read(true).write(true).open(&c.file).map_err(|e| at(&c.file, e))?;
        let mut side =
            OpenOptions::new().write(true).create_new(true).open(&c.side_file).map_err(|e| at(&c.side_file, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = c.position;
        loop {
            let n = file.read_at(&mut buf, pos).map_err(|e| at(&c.file, e))?;
            if n == 0 {
                break;
            }
            side.write_all(&buf[..n]).map_err(|e| at(&c.side_file, e))?;
            pos += n as u64;
        }
        side.sync_all().map_err(|e| at(&c.side_file, e))?;
        file.set_len(c.position).map_err(|e| at(&c.file, e))?;
        file.sync_all().map_err(|e| at(&c.file, e))?;
    }
    for d in plan.deletes.iter().filter(|d| *d != checkpoint) {
        remove(d).map_err(|e| at(d, e))?;
    }
    sync_dir(&dir.path)
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}
