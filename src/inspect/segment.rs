//! One segment file, scanned from end to end: what it holds, how it ends, and what is wrong.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::dir::{CheckpointInfo, CheckpointSlot, QueueDir, SegmentFile};
use super::index::IndexCheck;
use super::resume::Resume;
use super::walk::{EndReason, ScanEnd, SegmentReader};
use super::{Finding, Severity};
use crate::error::{CorruptKind, Error, Result};
use crate::segment::Landing;
use crate::segment::header::FILE_HEADER_LEN;

/// How often a damaged-looking end of the active segment is read again before it counts
/// (a writer may be in the middle of the record), and a damaged segment that may still be
/// sealing.
const LIVE_RETRIES: u32 = 3;
const LIVE_PAUSE: Duration = Duration::from_millis(30);
/// Progress is reported about this often (in bytes).
const PROGRESS_STEP: u64 = 1 << 20;

/// How a segment's data ends.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// // Flip a byte of the first record's payload: after the segment's 32-byte file header
/// // and the record's 24-byte header.
/// use std::os::unix::fs::FileExt;
/// let segment = dir.path().join("00000000000000000000.log");
/// std::fs::OpenOptions::new().write(true).open(&segment)?.write_at(b"J", 56)?;
/// use segq::inspect::{QueueDir, SegmentEnd, scan_segment};
///
/// let report = scan_segment(&QueueDir::open(dir.path())?, 0, true, &|_| {})?;
/// assert!(matches!(report.end, SegmentEnd::Damaged { position: 32, .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SegmentEnd {
    /// At the end of the file (a sealed segment) or at zeros (the unused part of the active
    /// segment).
    Clean,
    /// The active segment ends with an incomplete record or batch past the data known to be
    /// synced: a record being written, or the torn tail of a crash that the next open cuts.
    /// Not damage.
    Torn {
        /// Where the incomplete record or batch starts.
        position: u64,
        /// What is there.
        what: String,
    },
    /// Damaged records: the data stops at `position`, before the end of the segment.
    Damaged {
        /// Position of the first damaged record.
        position: u64,
        /// What is wrong there.
        what: String,
    },
    /// The file header is damaged or missing: nothing in the file can be read.
    Unreadable {
        /// Where the problem is.
        position: u64,
        /// What is wrong.
        what: String,
    },
    /// The file was deleted while it was being read (by retention, on a live queue).
    Gone,
}

/// What one segment file holds, from a walk over all of its records.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, SegmentEnd, scan_segment};
///
/// let report = scan_segment(&QueueDir::open(dir.path())?, 0, true, &|_| {})?;
/// assert!(report.active);
/// assert_eq!((report.records, report.last_offset, report.next_offset), (1, Some(0), 1));
/// assert_eq!(report.end, SegmentEnd::Clean);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentReport {
    /// The segment file.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub file: PathBuf,
    /// Its base offset (from its name).
    pub base: u64,
    /// Length of the file.
    pub bytes: u64,
    /// Whether it is the active (newest) segment; the others are sealed.
    pub active: bool,
    /// Records in its valid data (complete batches only).
    pub records: u64,
    /// Offset of its last valid record.
    pub last_offset: Option<u64>,
    /// Offset just past its valid data.
    pub next_offset: u64,
    /// Position just past its valid data.
    pub data_end: u64,
    /// Timestamp of its first valid record, in milliseconds since the Unix epoch.
    pub first_timestamp_ms: Option<u64>,
    /// Timestamp of its last valid record.
    pub last_timestamp_ms: Option<u64>,
    /// Entries in its `.index` file (`None` without an index file).
    pub index_entries: Option<u64>,
    /// How its data ends: where its valid data (`data_end`) stops, and why.
    pub end: SegmentEnd,
    /// Records that reads reach: `records`, and past damage, the records of a batch that the
    /// damage cuts short and those found again after it (see
    /// [`crate::inspect::PastDamage`]).
    pub readable: u64,
    /// Where the segment's offsets end as far as reads can tell: just past the last record
    /// read, or past a damaged last record whose frame is whole. `next_offset` unless the
    /// segment is damaged.
    pub end_offset: u64,
    /// Each stretch of records that damage makes unreadable, in the order of the file.
    pub lost: Vec<Lost>,
    /// Problems found in the segment, its index, or the checkpoint positions naming it.
    pub findings: Vec<Finding>,
}

/// Records of a segment that reads cannot reach past a damaged place, and where they can
/// read again.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let opts = segq::Options::default().segment_bytes(4096).index_interval_bytes(256);
/// let q = segq::Queue::open(dir.path(), opts)?;
/// for _ in 0..40 {
///     q.append(&[7; 100])?;
/// }
/// q.close()?;
/// // Records 0..32 fill the first segment, now sealed. Flip a payload byte of record 2
/// // (124 bytes a frame, after a 32-byte file header).
/// use std::os::unix::fs::FileExt;
/// let segment = dir.path().join("00000000000000000000.log");
/// std::fs::OpenOptions::new().write(true).open(&segment)?.write_at(b"J", 32 + 2 * 124 + 30)?;
/// use segq::inspect::{QueueDir, Resume, scan_segment};
///
/// let report = scan_segment(&QueueDir::open(dir.path())?, 0, true, &|_| {})?;
/// // Its frame is whole and leads to record 3: the damage costs that one record.
/// let lost = &report.lost[0];
/// assert_eq!((lost.position, lost.from), (32 + 2 * 124, 2));
/// assert_eq!(lost.resume, Resume::At { position: 32 + 3 * 124, offset: 3 });
/// assert_eq!((report.records, report.readable, report.end_offset), (2, 31, 32));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lost {
    /// Position of the damaged record.
    pub position: u64,
    /// Offset of the first record that cannot be read.
    pub from: u64,
    /// Where reads reach records again: with [`Resume::At`], offsets `from..offset` cannot
    /// be read.
    pub resume: Resume,
}

/// The lost records and where reads go on, in words.
///
/// ```
/// use segq::inspect::{Lost, Resume};
///
/// let lost = Lost { position: 280, from: 2, resume: Resume::At { position: 652, offset: 5 } };
/// assert_eq!(lost.to_string(), "offsets 2..5 cannot be read; records go on at byte 652 (offset 5)");
/// ```
impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = self.from;
        match self.resume {
            Resume::At { position, offset } if Some(offset) == from.checked_add(1) => {
                write!(f, "record {from} cannot be read; records go on at byte {position} (offset {offset})")
            }
            Resume::At { position, offset } => {
                write!(f, "offsets {from}..{offset} cannot be read; records go on at byte {position} (offset {offset})")
            }
            Resume::Nowhere => write!(f, "no record of the segment from offset {from} on can be read"),
            Resume::NotSearched => write!(
                f,
                "records from offset {from} on are not looked for (in a segment being written, or more than 256 MiB \
                 on): reads may reach some of them"
            ),
        }
    }
}

impl SegmentReport {
    /// Whether a finding of this report is damage.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// // Flip a byte of the first record's payload: after the segment's 32-byte file header
    /// // and the record's 24-byte header.
    /// use std::os::unix::fs::FileExt;
    /// let segment = dir.path().join("00000000000000000000.log");
    /// std::fs::OpenOptions::new().write(true).open(&segment)?.write_at(b"J", 56)?;
    /// use segq::inspect::{QueueDir, scan_segment};
    ///
    /// assert!(scan_segment(&QueueDir::open(dir.path())?, 0, false, &|_| {})?.is_damaged());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_damaged(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Damage)
    }

    /// Whether what was found may be a seal in progress: damage, or any problem with the
    /// index (a seal cuts the index's unused entries after its data).
    /// `segment` is the one this report is of.
    fn needs_another_look(&self, segment: &SegmentFile) -> bool {
        let index = segment.index.as_deref();
        self.is_damaged() || self.findings.iter().any(|f| Some(f.file.as_path()) == index)
    }
}

/// Walks every record of segment `i` of `dir`, checking each CRC and offset, and, with
/// `check_index`, each index entry and each checkpoint position that names the segment.
/// `progress` is called with the bytes read since its last call.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, scan_segment};
///
/// let queue = QueueDir::open(dir.path())?;
/// for i in 0..queue.segments.len() {
///     let report = scan_segment(&queue, i, true, &|_bytes| {})?;
///     assert!(!report.is_damaged());
/// }
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when a read fails. Damage is not an error: it is in the report.
pub fn scan_segment(
    dir: &QueueDir,
    i: usize,
    check_index: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SegmentReport> {
    scan_from(dir, i, None, check_index, progress)
}

/// [`scan_segment`] for every segment of `dir`, on up to as many threads as there are CPUs
/// (at most 4), with the reports in the order of `dir.segments`.
///
/// On a live queue a segment may still be sealing while it is judged sealed: the seal of the
/// newest but one runs after the roll, and under `Interval` the index of any segment may be
/// cut a little after its data. Such a segment shows zeros past its data, or unused index
/// entries. A seal cuts only those, and nothing else changes a sealed segment, so a segment
/// found damaged is looked at again, up to 3 times 30 ms apart, and damage counts only if
/// it stays.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default().segment_bytes(4096))?;
/// # for _ in 0..100 {
/// #     q.append(&[7; 100])?;
/// # }
/// # q.close()?;
/// use segq::inspect::{QueueDir, scan_segments};
///
/// let queue = QueueDir::open(dir.path())?;
/// let reports = scan_segments(&queue, true, &|_bytes| {})?;
/// assert_eq!(reports.len(), queue.segments.len());
/// assert_eq!(reports.iter().map(|r| r.records).sum::<u64>(), 100);
/// assert!(reports.iter().all(|r| !r.is_damaged()));
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when a read fails. Damage is not an error: it is in the reports.
pub fn scan_segments(dir: &QueueDir, check_index: bool, progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<SegmentReport>> {
    scan_settled(dir, check_index, progress, &|| std::thread::sleep(LIVE_PAUSE))
}

/// [`scan_segments`], calling `pause` before each new look at the segments found damaged.
fn scan_settled(
    dir: &QueueDir,
    check_index: bool,
    progress: &(dyn Fn(u64) + Sync),
    pause: &dyn Fn(),
) -> Result<Vec<SegmentReport>> {
    let all: Vec<usize> = (0..dir.segments.len()).collect();
    let mut reports = scan_many(dir, &all, check_index, progress)?;
    for _ in 0..LIVE_RETRIES {
        // Segments judged unsealed are looked at again by `scan_from` itself.
        let damaged: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| reports[i].needs_another_look(&dir.segments[i]) && !dir.is_unsealed(i))
            .collect();
        if damaged.is_empty() {
            break;
        }
        pause();
        for (i, report) in damaged.iter().zip(scan_many(dir, &damaged, check_index, &|_| {})?) {
            reports[*i] = report;
        }
    }
    Ok(reports)
}

/// Scans segments `which` of `dir` on up to 4 threads; the reports come in that order.
fn scan_many(
    dir: &QueueDir,
    which: &[usize],
    check_index: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<SegmentReport>> {
    let n = which.len();
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).clamp(1, 4).min(n.max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<SegmentReport>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = which.get(k) else { break };
                    let r = scan_from(dir, i, None, check_index, progress);
                    results.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every segment was scanned"))
        .collect()
}

/// [`scan_segment`] starting at `from` (a position and the offset there) instead of the
/// first record: the counts and timestamps then cover only what follows it.
pub(crate) fn scan_from(
    dir: &QueueDir,
    i: usize,
    from: Option<(u64, u64)>,
    check_index: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SegmentReport> {
    let seg: &SegmentFile = &dir.segments[i];
    let active = i + 1 == dir.segments.len();
    let unsealed = dir.is_unsealed(i);
    let mut report = SegmentReport {
        file: seg.path.clone(),
        base: seg.base,
        bytes: seg.len,
        active,
        records: 0,
        last_offset: None,
        next_offset: seg.base,
        data_end: FILE_HEADER_LEN as u64,
        first_timestamp_ms: None,
        last_timestamp_ms: None,
        index_entries: None,
        end: SegmentEnd::Clean,
        readable: 0,
        end_offset: seg.base,
        lost: Vec::new(),
        findings: Vec::new(),
    };
    let mut reader = match SegmentReader::open(&seg.path) {
        Ok(r) => r,
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(target) = super::walk::dangling_link(&seg.path) {
                // Not deleted: a link to nothing, and the queue does not open.
                let what = format!("a symbolic link to {}, which does not exist", target.display());
                report.data_end = 0;
                report.findings.push(Finding::damage(&seg.path, 0, &what));
                report.end = SegmentEnd::Unreadable { position: 0, what };
                return Ok(report);
            }
            report.end = SegmentEnd::Gone;
            return Ok(report);
        }
        Err(Error::Corrupt { position, kind, .. }) => {
            report.data_end = 0;
            report.end = SegmentEnd::Unreadable { position, what: kind.to_string() };
            // A roll creates the next segment unsynced; the seal of the one before makes it
            // durable. A crash in between can leave it without its header.
            let unwritten = active
                && i >= 1
                && dir.is_unsealed(i - 1)
                && crate::segment::never_written(&dir.path, seg.base).unwrap_or(false);
            report.findings.push(if unwritten {
                let what = "created by a roll whose seal did not finish, and never written: the next open deletes it";
                Finding::warning(&seg.path, position, what)
            } else {
                Finding::damage(&seg.path, position, kind)
            });
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.bytes = reader.file_len();
    if let Some((position, offset)) = from {
        reader.seek(position, offset);
    }
    let mut index = match (&seg.index, check_index) {
        (Some(path), true) => {
            let closed = active && dir.is_clean();
            IndexCheck::open(path, seg.base, unsealed, closed, &mut report.findings)
        }
        _ => None,
    };
    let marks: Vec<(&str, CheckpointSlot)> = if check_index {
        // A slot whose next offset is below the base names no segment: recovery ignores it,
        // and `verify` says so once.
        dir.checkpoint.slots().filter(|(_, s)| s.names(seg.base)).collect()
    } else {
        Vec::new()
    };
    let mut matched = vec![false; marks.len()];
    let mut check_boundary = |pos: u64, next: u64| {
        for (m, (_, slot)) in marks.iter().enumerate() {
            if slot.position == pos && slot.next_offset == next {
                matched[m] = true;
            }
        }
    };
    check_boundary(FILE_HEADER_LEN as u64, seg.base);
    let trusted = if unsealed { dir.trusted_in(i).map_or(FILE_HEADER_LEN as u64, |(p, _)| p) } else { 0 };
    let mut first_ts = None;
    let mut last_committed_ts = None;
    let mut reported = FILE_HEADER_LEN as u64;
    let mut retries = 0;
    let end = loop {
        while let Some(rec) = reader.next_record()? {
            if let Some(ix) = index.as_mut() {
                ix.at_record(rec.position, rec.offset);
            }
            first_ts.get_or_insert(rec.timestamp_ms);
            let end = rec.end();
            if !rec.batch_continues {
                last_committed_ts = Some(rec.timestamp_ms);
                check_boundary(end, rec.offset + 1);
            }
            if end - reported >= PROGRESS_STEP {
                progress(end - reported);
                reported = end;
            }
        }
        let end = reader.end().expect("the walk stopped").clone();
        let verdict = judge(&mut reader, &end, unsealed, trusted)?;
        let suspicious = matches!(verdict.0, SegmentEnd::Damaged { .. }) || verdict.1.is_some();
        if unsealed && suspicious && retries < LIVE_RETRIES {
            // A writer may be writing there right now: look again in a moment.
            retries += 1;
            std::thread::sleep(LIVE_PAUSE);
            reader.seek(end.valid_end, end.valid_next_offset);
            continue;
        }
        break (end, verdict);
    };
    let (end, (verdict, stray)) = end;
    // The rest of the file (zeros of the active segment, damage) was read or is skipped.
    progress(reader.file_len().max(reported) - reported);
    report.bytes = reader.file_len();
    report.records = end.valid_next_offset - from.map_or(seg.base, |(_, offset)| offset);
    report.next_offset = end.valid_next_offset;
    report.last_offset = end.valid_next_offset.checked_sub(1).filter(|&o| o >= seg.base);
    report.data_end = end.valid_end;
    report.readable = report.records;
    report.end_offset = end.valid_next_offset;
    if report.records > 0 {
        report.first_timestamp_ms = first_ts;
        report.last_timestamp_ms = last_committed_ts;
    }
    match &verdict {
        SegmentEnd::Damaged { position, what } => {
            let at = report.findings.len();
            follow_damage(&mut reader, dir, i, &mut report)?;
            let lost = report.lost.first().map_or(String::new(), |l| format!("; {}", l));
            report.findings.insert(at, Finding::damage(&seg.path, *position, format!("{what}{lost}")));
        }
        SegmentEnd::Torn { .. } | SegmentEnd::Clean | SegmentEnd::Unreadable { .. } | SegmentEnd::Gone => {}
    }
    if let Some(stray) = stray {
        report.findings.push(stray);
    }
    report.end = verdict;
    // What a clean close promises (nothing past slot A, no index entries past the data)
    // holds only until a writer opens the queue: if the checkpoint changed since it was
    // read, a writer did, and findings that rest on the old promise describe a moment
    // that has passed.
    let still_closed = || CheckpointInfo::read(&dir.path).is_ok_and(|now| now == dir.checkpoint);
    if let Some(mut ix) = index {
        let before = ix.findings.len();
        ix.finish(end.valid_end, matches!(report.end, SegmentEnd::Damaged { .. }));
        if active && dir.is_clean() && ix.findings.len() > before && !still_closed() {
            ix.findings.truncate(before);
        }
        report.index_entries = Some(ix.entries);
        report.findings.append(&mut ix.findings);
    }
    let ck = &dir.checkpoint.path;
    // What the next open makes of the slot it checks (FORMAT.md, step 3).
    let chosen = match (unsealed && !marks.is_empty()).then(|| dir.mark_landing(i)) {
        None => None,
        // Sealed and deleted by retention since the listing: the data read is what is judged.
        Some(Err(Error::Io(e))) if e.kind() == std::io::ErrorKind::NotFound => None,
        Some(landing) => landing?,
    };
    for ((name, slot), ok) in marks.iter().zip(matched) {
        let position = if *name == "A" { 0 } else { 512 };
        if slot.position > end.valid_end {
            // Data the checkpoint says was synced is not there (or not valid) any more.
            let mut what = format!(
                "slot {name} says the data of {} was synced up to byte {} (offset {}), but its valid data ends at byte {}",
                seg.path.display(),
                slot.position,
                slot.next_offset,
                end.valid_end
            );
            match &chosen {
                Some((pos, next, Landing::Missing(_, from))) if (*pos, *next) == (slot.position, slot.next_offset) => {
                    what += &format!(
                        "; offsets {from}..{next} are gone, and the queue does not open while the checkpoint says so (`segq repair` deletes it)"
                    );
                }
                Some((pos, next, Landing::Lands | Landing::Damaged(..)))
                    if (*pos, *next) == (slot.position, slot.next_offset) =>
                {
                    what += "; the next open keeps the data up to the slot, and reads report the damage";
                }
                _ => {}
            }
            report.findings.push(Finding::damage(ck, position, what));
        } else if !ok {
            // Recovery drops a slot that does not land (FORMAT.md, step 3) and scans the
            // segment from its start: nothing is lost.
            let what = format!(
                "slot {name} names byte {} of {} with next offset {}, which is not the end of a batch there; segq ignores it",
                slot.position,
                seg.path.display(),
                slot.next_offset
            );
            report.findings.push(Finding::warning(ck, position, what));
        } else if *name == "A" && slot.clean && active && end.valid_end > slot.position && still_closed() {
            // FORMAT.md, step 4: a clean slot A with records after it is only where the scan
            // starts, and the records are kept.
            let what = format!(
                "slot A says the queue was closed cleanly with its data ending at byte {} of {}, but records go on to byte {}; the next open scans them and keeps them",
                slot.position,
                seg.path.display(),
                end.valid_end
            );
            report.findings.push(Finding::warning(ck, position, what));
        }
    }
    Ok(report)
}

/// Goes on past the damage that stopped `reader` in segment `i`, where reads do: the records
/// found again are counted in `report`, each stretch they cannot reach is one of its `lost`,
/// and each further damaged place a finding.
fn follow_damage(reader: &mut SegmentReader, dir: &QueueDir, i: usize, report: &mut SegmentReport) -> Result<()> {
    let seg = &dir.segments[i];
    let mut past_damage = super::PastDamage::new(dir, i);
    loop {
        let end = reader.end().expect("the walk stopped").clone();
        // A batch that the damage cuts short: its records before the damage read.
        report.readable += end.next_offset - end.valid_next_offset;
        report.end_offset = end.next_offset;
        let resume = past_damage.resume(reader)?;
        let lost = Lost { position: end.position, from: end.next_offset, resume };
        if !report.lost.is_empty() {
            report.findings.push(Finding::damage(&seg.path, end.position, format!("{}; {}", damage_words(&end), lost)));
        }
        report.lost.push(lost);
        let offset = match resume {
            Resume::At { offset, .. } => offset,
            Resume::Nowhere => return Ok(()),
            Resume::NotSearched => {
                // The offsets up to the synced mark exist, readable or not.
                if let Some((_, mark)) = dir.trusted_in(i).filter(|_| dir.is_unsealed(i)) {
                    report.end_offset = report.end_offset.max(mark);
                }
                return Ok(());
            }
        };
        while reader.next_record()?.is_some() {}
        let end = reader.end().expect("the walk stopped").clone();
        report.readable += end.valid_next_offset - offset;
        report.end_offset = end.valid_next_offset;
        // A sealed segment ends at the end of its file, after its last batch.
        let more = match end.reason {
            EndReason::EndOfFile => end.valid_end < end.position,
            EndReason::Zeros | EndReason::Damage(_) => true,
        };
        if !more {
            return Ok(());
        }
    }
}

/// What stopped a walk at damage, in words.
fn damage_words(end: &ScanEnd) -> String {
    match &end.reason {
        EndReason::Damage(kind) => kind.to_string(),
        EndReason::Zeros => CorruptKind::Zeroed.to_string(),
        EndReason::EndOfFile => format!(
            "a batch starting with offset {} has no last record (it ends at byte {})",
            end.valid_next_offset, end.position
        ),
    }
}

/// What the end of `reader`'s walk means, once [`SegmentReader::next_record`] returned
/// `None`: in a sealed segment anything but the end of the file is damage; in the `active`
/// one, an incomplete record or batch at or past `trusted` (the position the checkpoint
/// records as synced) with only zeros after it is the tail being written, or torn by a
/// crash, and not damage. [`SegmentEnd::Clean`] if the walk has not ended.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, SegmentEnd, SegmentReader, judge_end};
///
/// let queue = QueueDir::open(dir.path())?;
/// let (trusted, _) = queue.trusted().expect("a clean close");
/// let mut reader = SegmentReader::open(&queue.segments[0].path)?;
/// while reader.next_record()?.is_some() {}
/// // The rest of the preallocated segment is zeros: the data ends cleanly.
/// assert_eq!(judge_end(&mut reader, true, trusted)?, SegmentEnd::Clean);
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when a read fails.
pub fn judge_end(reader: &mut SegmentReader, active: bool, trusted: u64) -> Result<SegmentEnd> {
    let Some(end) = reader.end().cloned() else { return Ok(SegmentEnd::Clean) };
    Ok(judge(reader, &end, active, trusted)?.0)
}

/// Decides what the end of a walk means: in a sealed segment anything but the end of the
/// file is damage; in the active one, an incomplete record or batch past the synced data is
/// the tail being written (or torn by a crash), as long as only zeros follow it.
/// Also returns a warning for stray bytes past the end of the active segment's data.
fn judge(
    reader: &mut SegmentReader,
    end: &ScanEnd,
    active: bool,
    trusted: u64,
) -> Result<(SegmentEnd, Option<Finding>)> {
    let unfinished = end.valid_end < end.position;
    let batch_cut = || {
        format!(
            "a batch starting with offset {} has no last record (it ends at byte {})",
            end.valid_next_offset, end.position
        )
    };
    if !active {
        let verdict = match &end.reason {
            EndReason::EndOfFile if !unfinished => SegmentEnd::Clean,
            EndReason::EndOfFile => SegmentEnd::Damaged { position: end.valid_end, what: batch_cut() },
            EndReason::Zeros => SegmentEnd::Damaged { position: end.position, what: CorruptKind::Zeroed.to_string() },
            EndReason::Damage(kind) => SegmentEnd::Damaged { position: end.position, what: kind.to_string() },
        };
        return Ok((verdict, None));
    }
    let after = match &end.reason {
        EndReason::EndOfFile => None,
        EndReason::Zeros => Some(end.position),
        EndReason::Damage(kind @ CorruptKind::BadOffset { .. }) => {
            // A whole, checksummed record with the wrong offset is not a write in progress.
            return Ok((SegmentEnd::Damaged { position: end.position, what: kind.to_string() }, None));
        }
        EndReason::Damage(_) => {
            let claimed = reader.claimed_frame_end(end.position)?;
            Some(claimed.filter(|&e| e <= reader.file_len()).unwrap_or(end.position + crate::record::HEADER_LEN as u64))
        }
    };
    let stray = match after {
        Some(from) => reader.first_nonzero(from.min(reader.file_len()))?,
        None => None,
    };
    let damage_at = match &end.reason {
        EndReason::Damage(kind) => Some((end.position, kind.to_string())),
        _ => None,
    };
    if let Some((position, what)) = damage_at {
        if position < trusted || stray.is_some() {
            return Ok((SegmentEnd::Damaged { position, what }, None));
        }
        let start = if unfinished { end.valid_end } else { position };
        return Ok((
            SegmentEnd::Torn { position: start, what: format!("incomplete record at byte {position}: {what}") },
            None,
        ));
    }
    if end.position < trusted {
        let what = format!(
            "{} (the checkpoint says data was synced up to byte {trusted})",
            if unfinished { batch_cut() } else { CorruptKind::Zeroed.to_string() }
        );
        return Ok((
            SegmentEnd::Damaged { position: if unfinished { end.valid_end } else { end.position }, what },
            None,
        ));
    }
    let verdict =
        if unfinished { SegmentEnd::Torn { position: end.valid_end, what: batch_cut() } } else { SegmentEnd::Clean };
    let stray = stray.map(|at| {
        Finding::warning(
            reader.path(),
            at,
            format!(
                "bytes that are not zero lie past the end of the data (byte {}); the next open drops them",
                end.position
            ),
        )
    });
    Ok((verdict, stray))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fs::OpenOptions;
    use std::path::Path;

    use super::*;

    /// A closed queue of several 4 KiB segments.
    fn queue_of_small_segments() -> (tempfile::TempDir, QueueDir) {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options::default().segment_bytes(4096).index_interval_bytes(256);
        let q = crate::Queue::open(dir.path(), opts).unwrap();
        for i in 0..200u8 {
            q.append(&[i; 100]).unwrap();
        }
        q.close().unwrap();
        let queue = QueueDir::open(dir.path()).unwrap();
        assert!(queue.segments.len() >= 4);
        (dir, queue)
    }

    fn set_len(path: &Path, len: u64) {
        OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
    }

    /// Puts segment `i` back as it is between its roll and the end of its seal: its data and
    /// its index followed by zeros. Returns the files with their sealed lengths.
    fn unseal(queue: &QueueDir, i: usize) -> Vec<(PathBuf, u64)> {
        let seg = &queue.segments[i];
        let files = [seg.path.clone(), seg.index.clone().expect("a sealed segment has an index")];
        files
            .into_iter()
            .map(|path| {
                let len = std::fs::metadata(&path).unwrap().len();
                set_len(&path, len + 4096);
                (path, len)
            })
            .collect()
    }

    /// Scans every segment of `queue`, counting the pauses; `pause` runs at each.
    fn scan(queue: &QueueDir, pause: impl Fn()) -> (Vec<SegmentReport>, u32) {
        let pauses = Cell::new(0);
        let reports = scan_settled(queue, true, &|_| {}, &|| {
            pauses.set(pauses.get() + 1);
            pause();
        });
        (reports.unwrap(), pauses.get())
    }

    #[test]
    fn a_seal_that_ends_between_two_looks_is_not_damage() {
        let (_dir, queue) = queue_of_small_segments();
        let n = queue.segments.len();
        // The newest but one in the middle of its seal, and an older index not yet cut.
        let mut sealed = unseal(&queue, n - 2);
        let [(data, len), index] = <[_; 2]>::try_from(unseal(&queue, 1)).unwrap();
        set_len(&data, len);
        sealed.push(index);
        let seal_ends = || {
            for (path, len) in &sealed {
                set_len(path, *len);
            }
        };
        let (reports, pauses) = scan(&queue, seal_ends);
        assert_eq!(pauses, 1, "the first look found the zeros");
        for report in &reports {
            assert!(report.findings.is_empty(), "{:?}", report.findings);
            assert_eq!(report.end, SegmentEnd::Clean);
        }
        assert_eq!(reports.iter().map(|r| r.records).sum::<u64>(), 200);
    }

    #[test]
    fn damage_that_stays_is_reported_after_a_few_looks() {
        let (_dir, queue) = queue_of_small_segments();
        let i = queue.segments.len() - 2;
        unseal(&queue, i);
        let (reports, pauses) = scan(&queue, || {});
        assert_eq!(pauses, LIVE_RETRIES);
        assert!(matches!(reports[i].end, SegmentEnd::Damaged { .. }), "{:?}", reports[i].end);
        let index = queue.segments[i].index.as_ref().unwrap();
        assert!(reports[i].findings.iter().any(|f| &f.file == index), "{:?}", reports[i].findings);
        assert!(reports.iter().enumerate().all(|(j, r)| j == i || !r.is_damaged()));
    }

    #[test]
    fn a_healthy_queue_is_looked_at_once() {
        let (_dir, queue) = queue_of_small_segments();
        let (reports, pauses) = scan(&queue, || {});
        assert_eq!(pauses, 0);
        assert!(reports.iter().all(|r| r.findings.is_empty()));
    }
}
