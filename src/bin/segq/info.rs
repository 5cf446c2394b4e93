//! `segq info`: a one-screen summary of a queue directory.

use std::io::Write;
use std::path::PathBuf;

use segq::inspect::{self, SegmentEnd};

use crate::Outcome;
use crate::output::{json, key_values, size};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory
    dir: PathBuf,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

/// How a segment's data ends, in words.
pub fn describe_end(end: &SegmentEnd) -> String {
    match end {
        SegmentEnd::Clean => "clean".into(),
        SegmentEnd::Torn { position, what } => format!("incomplete tail at byte {position} (not damage): {what}"),
        SegmentEnd::Damaged { position, what } => format!("DAMAGED at byte {position}: {what}"),
        SegmentEnd::Unreadable { position, what } => format!("UNREADABLE at byte {position}: {what}"),
        SegmentEnd::Gone => "deleted while being read".into(),
        _ => "unknown".into(),
    }
}

pub fn run(args: &Args, out: &mut impl Write) -> Outcome {
    let (_, info) = inspect::open_info(&args.dir)?;
    let damaged = matches!(info.tail, SegmentEnd::Damaged { .. } | SegmentEnd::Unreadable { .. });
    if args.json {
        json(out, &info)?;
    } else {
        let state = match info.state.as_str() {
            "clean" => "clean (closed cleanly: the next open scans nothing)".to_string(),
            "open or crashed" => "open or crashed (not closed cleanly: the next open scans the tail)".to_string(),
            other => other.to_string(),
        };
        let groups = if let Some(e) = &info.groups_error {
            format!("unknown: {e}")
        } else if info.groups.is_empty() {
            "0".to_string()
        } else {
            format!("{} ({})", info.groups.len(), info.groups.join(", "))
        };
        let spare = info.stats.spare_bytes;
        let spare = if spare == 0 {
            "none".to_string()
        } else {
            format!("{} ({spare} bytes), preallocated for the next segment", size(spare))
        };
        key_values(
            out,
            &[
                ("queue", info.dir.display().to_string()),
                ("format version", info.format_version.to_string()),
                ("state", state),
                ("first offset", info.first_offset.to_string()),
                ("next offset", info.next_offset.to_string()),
                ("records", info.records.to_string()),
                ("segments", info.segments.to_string()),
                ("bytes", format!("{} ({} bytes)", size(info.bytes), info.bytes)),
                ("spare segment", spare),
                ("groups", groups),
                ("newest segment", describe_end(&info.tail)),
            ],
        )?;
    }
    Ok(if damaged { 1 } else { 0 })
}
