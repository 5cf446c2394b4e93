//! `segq segments`: one row per segment file.

use std::io::Write;
use std::path::PathBuf;

use segq::inspect::{QueueDir, SegmentEnd, Severity, continuity, scan_segments};

use crate::Outcome;
use crate::output::{Align, Table, json, opt_timestamp};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory
    dir: PathBuf,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut impl Write) -> Outcome {
    let dir = QueueDir::open(&args.dir)?;
    if let Some(e) = &dir.groups_error {
        eprintln!("segq: note: the consumer groups cannot be listed ({e}); see `segq verify`");
    }
    let reports = scan_segments(&dir, true, &|_| {})?;
    // Between segments: one missing from the middle, or two that overlap.
    let between = continuity(&dir, &reports);
    let damaged = reports.iter().any(|r| r.is_damaged()) || between.iter().any(|f| f.severity == Severity::Damage);
    if args.json {
        let doc = serde_json::json!({ "dir": dir.path.to_string_lossy(), "segments": reports, "findings": between });
        json(out, &doc)?;
        return Ok(u8::from(damaged));
    }
    let mut table = Table::new(&[
        ("FILE", Align::Left),
        ("BASE", Align::Right),
        ("LAST", Align::Right),
        ("RECORDS", Align::Right),
        ("BYTES", Align::Right),
        ("FIRST TIMESTAMP", Align::Left),
        ("LAST TIMESTAMP", Align::Left),
        ("STATE", Align::Left),
        ("INDEX", Align::Right),
        ("END", Align::Left),
    ]);
    for r in &reports {
        let file =
            r.file.file_name().map_or_else(|| r.file.display().to_string(), |n| n.to_string_lossy().into_owned());
        let end = match &r.end {
            SegmentEnd::Clean => "clean".to_string(),
            SegmentEnd::Torn { position, .. } => format!("tail being written at {position}"),
            SegmentEnd::Damaged { position, .. } => format!("DAMAGED at {position}"),
            SegmentEnd::Unreadable { position, .. } => format!("UNREADABLE at {position}"),
            SegmentEnd::Gone => "deleted".to_string(),
            _ => "?".to_string(),
        };
        table.row(vec![
            file,
            r.base.to_string(),
            // Past damage: the last record that reads reach, and how many they reach.
            r.end_offset.checked_sub(1).filter(|&o| o >= r.base).map_or_else(|| "-".to_string(), |o| o.to_string()),
            r.readable.to_string(),
            r.bytes.to_string(),
            opt_timestamp(r.first_timestamp_ms),
            opt_timestamp(r.last_timestamp_ms),
            if r.active { "active" } else { "sealed" }.to_string(),
            r.index_entries.map_or_else(|| "-".to_string(), |n| n.to_string()),
            end,
        ]);
    }
    table.print(out)?;
    let findings: Vec<_> = reports.iter().flat_map(|r| &r.findings).chain(&between).collect();
    if !findings.is_empty() {
        writeln!(out)?;
        for f in findings {
            writeln!(out, "{f}")?;
        }
    }
    Ok(u8::from(damaged))
}
