//! `segq verify`: checks every byte of a queue directory.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use segq::inspect::{self, QueueDir, Severity};

use crate::Outcome;
use crate::output::{Align, Table, json, size};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory
    dir: PathBuf,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

/// Below this much data no progress bar is worth drawing.
const BAR_MIN_BYTES: u64 = 64 << 20;

pub fn run(args: &Args, out: &mut impl Write) -> Outcome {
    let dir = QueueDir::open(&args.dir)?;
    let total: u64 = dir.segments.iter().map(|s| s.len).sum();
    let bar = if !args.json && std::io::stderr().is_terminal() && total >= BAR_MIN_BYTES {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("verifying {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let report = inspect::verify(&dir, &|n| bar.inc(n))?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let damage = report.damage();
    // Offsets of the log that no read reaches (damaged records, and those damage hides).
    let unreadable = (report.next_offset - report.first_offset).saturating_sub(report.records);
    let mb_per_s = report.bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9);
    if args.json {
        let doc = serde_json::json!({
            "dir": report.dir.to_string_lossy(),
            "clean": damage == 0,
            "damage": damage,
            "warnings": report.findings.len() - damage,
            "segments": report.segments,
            "records": report.records,
            "unreadable": unreadable,
            "bytes": report.bytes,
            "first_offset": report.first_offset,
            "next_offset": report.next_offset,
            "groups": report.groups,
            "elapsed_ms": elapsed.as_millis() as u64,
            "mb_per_s": mb_per_s,
            "findings": report.findings,
        });
        json(out, &doc)?;
    } else {
        writeln!(
            out,
            "checked {} segments, {} records (offsets {}..{}), {} groups: {} in {:.2} s ({:.0} MB/s)",
            report.segments,
            report.records,
            report.first_offset,
            report.next_offset,
            report.groups,
            size(report.bytes),
            elapsed.as_secs_f64(),
            mb_per_s
        )?;
        if unreadable > 0 {
            writeln!(out, "{unreadable} of the offsets in that range cannot be read")?;
        }
        if !report.findings.is_empty() {
            let mut table = Table::new(&[
                ("SEVERITY", Align::Left),
                ("FILE", Align::Left),
                ("POSITION", Align::Right),
                ("WHAT", Align::Left),
            ]);
            for f in &report.findings {
                let severity = match f.severity {
                    Severity::Damage => "DAMAGE",
                    Severity::Warning => "warning",
                };
                let file = f.file.strip_prefix(&dir.path).unwrap_or(&f.file).display().to_string();
                table.row(vec![severity.to_string(), file, f.position.to_string(), f.what.clone()]);
            }
            writeln!(out)?;
            table.print(out)?;
        }
        writeln!(out)?;
        if damage == 0 {
            writeln!(out, "no damage found ({} warnings)", report.findings.len())?;
        } else {
            writeln!(out, "{damage} damaged places found: see `segq repair --help`")?;
        }
    }
    Ok(if damage == 0 { 0 } else { 1 })
}
