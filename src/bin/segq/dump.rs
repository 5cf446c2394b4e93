//! `segq dump`: prints records, from a queue directory or from one segment file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use segq::inspect::{Finding, Lost, PastDamage, QueueDir, RecordView, Resume, SegmentEnd, SegmentReader, judge_end};

use crate::output::{hex, timestamp, utf8_line};
use crate::{Failure, Outcome};

/// How a record's payload is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    /// Lowercase hexadecimal
    Hex,
    /// Text (invalid UTF-8 replaced; in text output, control characters escaped)
    Utf8,
    /// Only its length (the LEN column, which every other choice also prints)
    Len,
    /// Nothing of it, not even its length: offsets, timestamps and positions only
    None,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A queue directory, or one segment file (`<base>.log`)
    path: PathBuf,
    /// First offset to print
    #[arg(long, value_name = "OFFSET")]
    from: Option<u64>,
    /// Print at most this many records
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// How to print payloads
    #[arg(long, value_enum, default_value_t = Payload::Utf8)]
    payload: Payload,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

/// One segment to read, and how to judge its end.
struct Target {
    path: PathBuf,
    base: Option<u64>,
    active: bool,
    trusted: u64,
    dir: Option<(QueueDir, usize)>,
}

/// A record held back until its batch is known to be complete.
struct Held {
    offset: u64,
    timestamp_ms: u64,
    position: u64,
    len: usize,
    payload: Vec<u8>,
}

/// Writes records as they come, in text or as the elements of a JSON array.
struct Printer<'a, W: Write> {
    out: &'a mut W,
    args: &'a Args,
    printed: u64,
    widths: (usize, usize),
}

impl<W: Write> Printer<'_, W> {
    fn done(&self) -> bool {
        self.args.limit.is_some_and(|l| self.printed >= l)
    }

    fn print(
        &mut self,
        offset: u64,
        timestamp_ms: u64,
        position: u64,
        len: usize,
        payload: &[u8],
    ) -> Result<(), Failure> {
        if self.done() {
            return Ok(());
        }
        if self.args.json {
            let mut rec = serde_json::json!({
                "offset": offset,
                "timestamp_ms": timestamp_ms,
                "position": position,
            });
            match self.args.payload {
                Payload::Hex => rec["payload"] = hex(payload).into(),
                Payload::Utf8 => rec["payload"] = String::from_utf8_lossy(payload).into(),
                Payload::Len | Payload::None => {}
            }
            if self.args.payload != Payload::None {
                rec["len"] = len.into();
            }
            if self.printed > 0 {
                write!(self.out, ",")?;
            }
            write!(self.out, "\n    ")?;
            serde_json::to_writer(&mut *self.out, &rec).map_err(std::io::Error::other)?;
        } else {
            let shown = match self.args.payload {
                Payload::Hex => hex(payload),
                Payload::Utf8 => utf8_line(payload),
                Payload::Len | Payload::None => String::new(),
            };
            let (ow, pw) = self.widths;
            let len = if self.args.payload == Payload::None { String::new() } else { format!("{len:>8}") };
            let line = format!("{offset:>ow$}  {}  {position:>pw$}  {len}  {shown}", timestamp(timestamp_ms));
            writeln!(self.out, "{}", line.trim_end())?;
        }
        self.printed += 1;
        Ok(())
    }

    fn view(&mut self, r: &RecordView<'_>) -> Result<(), Failure> {
        self.print(r.offset, r.timestamp_ms, r.position, r.payload.len(), r.payload)
    }

    fn held(&mut self, h: &Held) -> Result<(), Failure> {
        self.print(h.offset, h.timestamp_ms, h.position, h.len, &h.payload)
    }
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The segments to read for `args.path`.
fn targets(path: &Path, from: u64) -> Result<Vec<Target>, Failure> {
    let meta = std::fs::metadata(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        let dir = QueueDir::open(path)?;
        if let Some(e) = &dir.groups_error {
            eprintln!("segq: note: the consumer groups cannot be listed ({e}); see `segq verify`");
        }
        let n = dir.segments.len();
        let start = dir.segments.iter().rposition(|s| s.base <= from).unwrap_or(0);
        return Ok((start..n)
            .map(|i| Target {
                path: dir.segments[i].path.clone(),
                base: Some(dir.segments[i].base),
                active: dir.is_unsealed(i),
                trusted: if dir.is_unsealed(i) { dir.trusted_in(i).map_or(0, |t| t.0) } else { 0 },
                dir: Some((dir.clone(), i)),
            })
            .collect());
    }
    // One file: judge it as the active segment only if it is the newest of a queue directory.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if name.ends_with(".log")
        && let Ok(dir) = QueueDir::open(parent)
        && let Some(i) = dir.segments.iter().position(|s| s.path.file_name() == path.file_name())
    {
        let active = dir.is_unsealed(i);
        let trusted = if active { dir.trusted_in(i).map_or(0, |t| t.0) } else { 0 };
        let base = Some(dir.segments[i].base);
        return Ok(vec![Target { path: path.to_path_buf(), base, active, trusted, dir: Some((dir, i)) }]);
    }
    Ok(vec![Target { path: path.to_path_buf(), base: None, active: false, trusted: 0, dir: None }])
}

pub fn run(args: &Args, out: &mut impl Write) -> Outcome {
    let from = args.from.unwrap_or(0);
    let targets = targets(&args.path, from)?;
    let max_offset = targets.last().map_or(0, |t| {
        let len = std::fs::metadata(&t.path).map_or(0, |m| m.len());
        t.base.unwrap_or(0).saturating_add(len / 24)
    });
    let max_len = targets.iter().filter_map(|t| std::fs::metadata(&t.path).ok()).map(|m| m.len()).max().unwrap_or(0);
    let mut printer = Printer { out, args, printed: 0, widths: (digits(max_offset).max(6), digits(max_len).max(8)) };
    if args.json {
        write!(printer.out, "{{\n  \"records\": [")?;
    } else {
        let (ow, pw) = printer.widths;
        let header = format!("{:>ow$}  {:<24}  {:>pw$}  {:>8}  PAYLOAD", "OFFSET", "TIMESTAMP", "POSITION", "LEN");
        let header = match args.payload {
            Payload::Len => header.replace("  PAYLOAD", ""),
            Payload::None => header.replace("  PAYLOAD", "").replace("       LEN", ""),
            Payload::Hex | Payload::Utf8 => header,
        };
        writeln!(printer.out, "{header}")?;
    }
    let mut findings: Vec<Finding> = Vec::new();
    let mut expected: Option<u64> = None;
    // An error stops the walk; the JSON document is still closed, with the error in it.
    let walked = (|| -> Result<(), Failure> {
        for target in &targets {
            if printer.done() {
                break;
            }
            let mut reader = match SegmentReader::open(&target.path) {
                Ok(r) => r,
                Err(segq::Error::Corrupt { path, position, kind }) => {
                    findings.push(Finding::damage(path, position, kind));
                    expected = None;
                    continue;
                }
                Err(segq::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && target.dir.is_some() => {
                    // Deleted by retention since the listing: the records go on in the next one.
                    expected = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let base = reader.base();
            if let Some(exp) = expected
                && exp != base
            {
                let what = format!("the previous segment ends at offset {exp}, but this one starts at {base}");
                findings.push(Finding::damage(&target.path, 0, what));
            }
            if from > base
                && let Some((dir, i)) = &target.dir
                && let Some((position, offset)) = dir.segments[*i].index_floor(from)
            {
                reader.seek(position, offset);
            }
            let mut held: Vec<Held> = Vec::new();
            let mut past_damage = target.dir.as_ref().map(|(dir, i)| PastDamage::new(dir, *i));
            let mut retries = 0;
            let mut started = reader.position() == 32;
            // Past damage, the walk goes on where reads do (`PastDamage`).
            loop {
                let end = loop {
                    while let Some(rec) = reader.next_record()? {
                        started = true;
                        if rec.offset < from {
                            continue;
                        }
                        if rec.batch_continues {
                            let keep = matches!(args.payload, Payload::Hex | Payload::Utf8);
                            held.push(Held {
                                offset: rec.offset,
                                timestamp_ms: rec.timestamp_ms,
                                position: rec.position,
                                len: rec.payload.len(),
                                payload: if keep { rec.payload.to_vec() } else { Vec::new() },
                            });
                            continue;
                        }
                        for h in held.drain(..) {
                            printer.held(&h)?;
                        }
                        printer.view(&rec)?;
                        if printer.done() {
                            break;
                        }
                    }
                    if printer.done() {
                        break SegmentEnd::Clean;
                    }
                    if !started {
                        // The index entry did not lead to a record: read from the segment start.
                        started = true;
                        reader.seek(32, base);
                        continue;
                    }
                    let verdict = judge_end(&mut reader, target.active, target.trusted)?;
                    let scan_end = reader.end().cloned().expect("the walk ended");
                    if target.active && matches!(verdict, SegmentEnd::Damaged { .. }) && retries < 3 {
                        // A writer may be writing the record right now: look again in a moment.
                        retries += 1;
                        std::thread::sleep(Duration::from_millis(30));
                        held.clear();
                        reader.seek(scan_end.valid_end, scan_end.valid_next_offset);
                        continue;
                    }
                    expected = Some(scan_end.valid_next_offset);
                    break verdict;
                };
                match end {
                    SegmentEnd::Damaged { position, what } => {
                        // The records of a batch cut short are readable in a sealed segment.
                        for h in held.drain(..) {
                            printer.held(&h)?;
                        }
                        let stop = reader.end().cloned().expect("the walk ended");
                        let resume = match past_damage.as_mut() {
                            Some(past_damage) => past_damage.resume(&mut reader)?,
                            None => Resume::NotSearched,
                        };
                        let lost = Lost { position: stop.position, from: stop.next_offset, resume };
                        findings.push(Finding::damage(&target.path, position, format!("{what}; {lost}")));
                        expected = None;
                        if matches!(resume, Resume::At { .. }) {
                            retries = 0;
                            continue;
                        }
                    }
                    SegmentEnd::Unreadable { position, what } => {
                        findings.push(Finding::damage(&target.path, position, what));
                        expected = None;
                    }
                    _ => {}
                }
                break;
            }
        }
        Ok(())
    })();
    if args.json {
        if printer.printed > 0 {
            write!(printer.out, "\n  ")?;
        }
        writeln!(printer.out, "],")?;
        let mut rest = serde_json::json!({ "printed": printer.printed, "findings": findings });
        if let Err(failure) = &walked {
            rest["error"] = failure.message.clone().into();
        }
        let text = serde_json::to_string_pretty(&rest).map_err(std::io::Error::other)?;
        // Splice the rest of the fields into the object opened above.
        let inner = text.trim_start_matches('{').trim_end_matches('}').trim_matches('\n');
        writeln!(printer.out, "{inner}\n}}")?;
    } else {
        for f in &findings {
            eprintln!("segq: {f}");
        }
    }
    walked?;
    Ok(u8::from(!findings.is_empty()))
}
