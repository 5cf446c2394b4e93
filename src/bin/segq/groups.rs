//! `segq groups`: where each consumer group stands.

use std::io::Write;
use std::path::PathBuf;

use segq::inspect::{self, GroupReport, QueueDir};

use crate::output::{Align, Table, json, key_values, timestamp};
use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory
    dir: PathBuf,
    /// Show only this group, in detail
    name: Option<String>,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

/// Lines of a long list shown in text; `--json` shows all.
const SHOWN: usize = 20;

pub fn run(args: &Args, out: &mut impl Write) -> Outcome {
    let dir = QueueDir::open(&args.dir)?;
    if let Some(e) = &dir.groups_error {
        // Not a directory, or a link to nothing: the queue's groups are broken (damage);
        // anything else is an I/O error.
        let message = format!("the consumer groups cannot be read: {e}");
        return Err(match dir.groups_damage() {
            Some(_) => Failure { code: 1, message, at: Some((dir.path.join("groups"), 0)) },
            None => Failure { code: 2, message, at: None },
        });
    }
    let names = match &args.name {
        Some(name) if dir.groups.contains(name) => vec![name.clone()],
        Some(name) => return Err(Failure::usage(format!("{}: no consumer group named {name:?}", dir.path.display()))),
        None => dir.groups.clone(),
    };
    // The lag counts up to the log's end; a log too damaged to say where it ends still
    // has groups worth showing.
    let mut failed = 0;
    // Listed again if retention deleted what the first listing found (a live queue).
    let (dir, log_next) = match inspect::open_info(&args.dir) {
        Ok((listed, info)) => (listed, Some(info.next_offset)),
        Err(e) => {
            // The newest segment cannot be read: the log ends at its base or later.
            eprintln!("segq: {e} (the log's end is not known: lag counts up to the newest segment's base)");
            failed = if matches!(e, segq::Error::Corrupt { .. }) { 1 } else { 2 };
            (dir, None)
        }
    };
    let at_least = dir.newest().map_or(0, |s| s.base);
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for name in &names {
        let report = match log_next {
            Some(next) => inspect::read_group(&dir, name, next),
            None => inspect::read_group_past(&dir, name, at_least),
        };
        match report {
            Ok(r) => reports.push(r),
            Err(e @ segq::Error::Corrupt { .. }) => errors.push(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    if args.json {
        if args.name.is_some() && errors.is_empty() {
            json(out, &reports[0])?;
        } else {
            json(
                out,
                &serde_json::json!({ "dir": dir.path.to_string_lossy(), "next_offset": log_next, "groups": reports, "errors": errors }),
            )?;
        }
    } else if args.name.is_some() {
        if let Some(r) = reports.first() {
            detail(out, r)?;
        }
    } else {
        let mut table = Table::new(&[
            ("GROUP", Align::Left),
            ("ACK FLOOR", Align::Right),
            ("NEXT", Align::Right),
            ("LAG", Align::Right),
            ("LEASED", Align::Right),
            ("WAITING", Align::Right),
            ("DEAD", Align::Right),
            ("LOST", Align::Right),
            ("LEASE MS", Align::Right),
            ("MAX ATTEMPTS", Align::Right),
        ]);
        for r in &reports {
            table.row(vec![
                r.name.clone(),
                r.ack_floor.to_string(),
                r.next_delivery.to_string(),
                r.lag.to_string(),
                r.leased.len().to_string(),
                r.waiting.len().to_string(),
                r.dead_letters.len().to_string(),
                r.lost.to_string(),
                r.lease_ms.to_string(),
                r.max_attempts.to_string(),
            ]);
        }
        if reports.is_empty() && errors.is_empty() {
            writeln!(out, "no consumer groups")?;
        } else {
            table.print(out)?;
        }
    }
    if !args.json {
        for r in &reports {
            for f in &r.findings {
                writeln!(out, "{f}")?;
            }
        }
    }
    for e in &errors {
        eprintln!("segq: {e}");
    }
    Ok(failed.max(u8::from(!errors.is_empty())))
}

/// Everything about one group.
fn detail(out: &mut impl Write, r: &GroupReport) -> std::io::Result<()> {
    key_values(
        out,
        &[
            ("group", r.name.clone()),
            ("ack floor", r.ack_floor.to_string()),
            ("next delivery", r.next_delivery.to_string()),
            ("lag", r.lag.to_string()),
            ("leased", r.leased.len().to_string()),
            ("waiting", r.waiting.len().to_string()),
            ("dead letters", r.dead_letters.len().to_string()),
            ("lost to retention", r.lost.to_string()),
            ("lease", format!("{} ms", r.lease_ms)),
            ("max attempts", r.max_attempts.to_string()),
            ("snapshot generation", r.generation.to_string()),
            ("journal entries", r.journal_entries.to_string()),
        ],
    )?;
    let more = |out: &mut dyn Write, n: usize| {
        if n > SHOWN { writeln!(out, "  … and {} more (see --json)", n - SHOWN) } else { Ok(()) }
    };
    if !r.leased.is_empty() {
        writeln!(out, "\nleased (not acked or nacked when last written):")?;
        let mut t = Table::new(&[("  OFFSET", Align::Right), ("ATTEMPTS", Align::Right)]);
        for l in r.leased.iter().take(SHOWN) {
            t.row(vec![l.offset.to_string(), l.attempts.to_string()]);
        }
        t.print(out)?;
        more(out, r.leased.len())?;
    }
    if !r.waiting.is_empty() {
        writeln!(out, "\nwaiting for another delivery:")?;
        let mut t = Table::new(&[("  OFFSET", Align::Right), ("ATTEMPTS", Align::Right), ("DUE", Align::Left)]);
        for w in r.waiting.iter().take(SHOWN) {
            t.row(vec![w.offset.to_string(), w.attempts.to_string(), timestamp(w.due_ms)]);
        }
        t.print(out)?;
        more(out, r.waiting.len())?;
    }
    if !r.dead_letters.is_empty() {
        writeln!(out, "\ndead letters:")?;
        let mut t = Table::new(&[("  OFFSET", Align::Right), ("ATTEMPTS", Align::Right)]);
        for d in r.dead_letters.iter().take(SHOWN) {
            t.row(vec![d.offset.to_string(), d.attempts.to_string()]);
        }
        t.print(out)?;
        more(out, r.dead_letters.len())?;
    }
    Ok(())
}
