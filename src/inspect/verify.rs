//! Checking every byte of a queue directory.

use std::path::PathBuf;

use super::dir::QueueDir;
use super::groups::{read_group, read_group_past};
use super::segment::{SegmentEnd, SegmentReport, scan_segments};
use super::{Finding, Severity};
use crate::error::{CorruptKind, Error, Result};
use crate::segment::log_name;

/// What `segq verify` found.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, verify};
///
/// let report = verify(&QueueDir::open(dir.path())?, &|_bytes| {})?;
/// assert_eq!((report.segments, report.records, report.next_offset), (1, 1, 1));
/// assert!(report.findings.is_empty());
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// The queue directory.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub dir: PathBuf,
    /// Segment files checked.
    pub segments: u64,
    /// Records checked (CRC and offset) that reads reach.
    pub records: u64,
    /// Bytes of segment files read.
    pub bytes: u64,
    /// Offset of the oldest record.
    pub first_offset: u64,
    /// Offset just past the newest record.
    pub next_offset: u64,
    /// Consumer groups checked.
    pub groups: u64,
    /// Everything found, damage first, each naming the file and the byte position.
    pub findings: Vec<Finding>,
    /// Per segment: what it holds and how it ends.
    pub segment_reports: Vec<SegmentReport>,
}

impl VerifyReport {
    /// Findings that are damage.
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
    /// use segq::inspect::{QueueDir, verify};
    ///
    /// let report = verify(&QueueDir::open(dir.path())?, &|_| {})?;
    /// // The record, and each checkpoint slot that says it was synced past it.
    /// assert_eq!(report.damage(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn damage(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Damage).count()
    }
}

/// Whether the records of `b` follow a gap after `a` because the seal of `a` did not finish
/// (its tail was lost with a crash, or torn): recovery then deletes `b` and any segment after
/// it, which held nothing durable. Not damage.
pub(crate) fn seal_left_a_gap(dir: &QueueDir, a: &SegmentReport, b: &SegmentReport) -> bool {
    let ended = matches!(a.end, SegmentEnd::Clean | SegmentEnd::Torn { .. });
    // Recovery deletes `b` only with a valid header; otherwise the queue does not open.
    let readable = !matches!(b.end, SegmentEnd::Unreadable { .. });
    let unsealed = || dir.segments.binary_search_by_key(&a.base, |s| s.base).is_ok_and(|i| dir.is_unsealed(i));
    a.next_offset < b.base && ended && readable && unsealed()
}

/// Where the offsets of one segment do not follow on from those of the segment before
/// (`reports` as [`scan_segments`] made them for `dir`): a segment missing from the middle,
/// or two that overlap, as damage; the unfinished seal that recovery deletes after, as a
/// warning. A segment's own damage is left to its report.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default().segment_bytes(4096))?;
/// # for _ in 0..100 { q.append(&[7; 100])?; }
/// # q.close()?;
/// use segq::inspect::{QueueDir, Severity, continuity, scan_segments};
///
/// let second = std::fs::read_dir(dir.path())?
///     .map(|e| e.map(|e| e.path()))
///     .collect::<Result<std::collections::BTreeSet<_>, _>>()?
///     .into_iter()
///     .filter(|p| p.extension().is_some_and(|x| x == "log"))
///     .nth(1)
///     .expect("three segments or more");
/// std::fs::remove_file(&second)?; // a segment deleted by hand from the middle of the log
/// let queue = QueueDir::open(dir.path())?;
/// let findings = continuity(&queue, &scan_segments(&queue, true, &|_| {})?);
/// assert_eq!(findings.len(), 1);
/// assert_eq!(findings[0].severity, Severity::Damage);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn continuity(dir: &QueueDir, reports: &[SegmentReport]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let live: Vec<&SegmentReport> = reports.iter().filter(|r| r.end != SegmentEnd::Gone).collect();
    for pair in live.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if seal_left_a_gap(dir, a, b) {
            // A segment whose seal did not finish: the records past its end never became
            // durable, and those of the next segment (made durable by that seal) would follow
            // a gap. Recovery deletes them, as the end of a torn tail.
            findings.push(Finding::warning(
                &b.file,
                0,
                format!(
                    "the seal of {} did not finish and its data ends at offset {}: the next open deletes this segment and any after it (offsets {}..)",
                    a.file.display(),
                    a.next_offset,
                    b.base
                ),
            ));
            continue;
        }
        if !matches!(a.end, SegmentEnd::Clean) {
            continue; // its damage is already reported; the offsets after it are lost with it
        }
        // The listing of a live queue is not one moment: it can miss the segment a roll
        // renamed into place while it was read, and list the next one. A gap counts only if
        // the segment that should follow is still missing, and `a` still there.
        let missed = || dir.path.join(log_name(a.next_offset)).exists() || !a.file.exists();
        if a.next_offset < b.base && !missed() {
            let kind = CorruptKind::Gap { from: a.next_offset, to: b.base };
            findings.push(Finding::damage(
                &a.file,
                a.data_end,
                format!("{kind}: the segment ends before the next one starts"),
            ));
        } else if a.next_offset > b.base {
            findings.push(Finding::damage(
                &a.file,
                a.data_end,
                format!(
                    "the segment holds offsets up to {}, but the next segment ({}) starts at {}",
                    a.next_offset - 1,
                    b.file.display(),
                    b.base
                ),
            ));
        }
    }
    findings
}

/// Checks the queue in `dir`: every record's CRC and offset, the offsets' continuity within
/// and across segments, every index entry against the records, the checkpoint's positions,
/// and every group's snapshot and journal. Segments are checked by [`scan_segments`], which
/// tells a seal in progress on a live queue from damage. `progress` is called with the
/// bytes read since its last call.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, verify};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let read = AtomicU64::new(0);
/// let report = verify(&QueueDir::open(dir.path())?, &|bytes| {
///     read.fetch_add(bytes, Ordering::Relaxed);
/// })?;
/// assert_eq!(report.damage(), 0);
/// assert!(read.load(Ordering::Relaxed) > 0);
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when a file cannot be read. Damage is not an error: it is in the report.
pub fn verify(dir: &QueueDir, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
    let reports = scan_segments(dir, true, progress)?;
    let mut findings: Vec<Finding> = Vec::new();
    for r in &reports {
        findings.extend(r.findings.iter().cloned());
    }
    findings.extend(continuity(dir, &reports));
    let live: Vec<&SegmentReport> = reports.iter().filter(|r| r.end != SegmentEnd::Gone).collect();
    let ck = &dir.checkpoint;
    for (name, damaged, position) in [("A", ck.slot_a_damaged, 0), ("B", ck.slot_b_damaged, 512)] {
        if damaged {
            let what =
                format!("checkpoint slot {name} does not verify; segq ignores it and scans more at the next open");
            findings.push(Finding::warning(&ck.path, position, what));
        }
    }
    let newest = dir.newest().map(|s| s.base);
    for (name, slot) in ck.slots() {
        if newest.is_none_or(|base| slot.segment_base > base) && (newest.is_some() || slot.next_offset > 0) {
            let missing = dir.path.join(log_name(slot.segment_base));
            let what = format!(
                "slot {name} names segment {} (offsets up to {}), which is missing: the queue will not open",
                missing.display(),
                slot.next_offset
            );
            findings.push(Finding::damage(&ck.path, if name == "A" { 0 } else { 512 }, what));
        } else if !slot.names(slot.segment_base) {
            let what = format!(
                "slot {name} names segment {} with next offset {}, below that segment's base: it names no segment, and segq ignores it",
                dir.path.join(log_name(slot.segment_base)).display(),
                slot.next_offset
            );
            findings.push(Finding::warning(&ck.path, if name == "A" { 0 } else { 512 }, what));
        }
    }
    if !ck.present && !dir.segments.is_empty() {
        findings.push(Finding::warning(&ck.path, 0, "no checkpoint file; the next open scans the newest segment"));
    }
    for leftover in &dir.leftovers {
        findings.push(Finding::warning(leftover, 0, "left over from an interrupted write; the next open deletes it"));
    }
    for group_dir in &dir.incomplete_groups {
        findings.push(Finding::warning(
            group_dir,
            0,
            "a group folder without a snapshot (half created or deleted); ignored",
        ));
    }
    if let Some(e) = &dir.groups_error {
        let groups = dir.path.join(crate::group::GROUPS_DIR);
        if let Some(damage) = dir.groups_damage() {
            let what = format!(
                "{damage}, so no consumer group can be read or created: the queue opens, but every group call \
                 fails ({e})"
            );
            findings.push(Finding::damage(groups, 0, what));
        } else {
            return Err(Error::Io(std::io::Error::other(format!("cannot list the consumer groups: {e}"))));
        }
    }
    let next_offset = live.last().map_or(0, |r| r.end_offset);
    // A newest segment that cannot be read hides where the log ends: at its base or later.
    let end_known = live.last().is_none_or(|r| !(matches!(r.end, SegmentEnd::Unreadable { .. }) && r.is_damaged()));
    for name in &dir.groups {
        let read = if end_known { read_group(dir, name, next_offset) } else { read_group_past(dir, name, next_offset) };
        match read {
            Ok(report) => findings.extend(report.findings),
            Err(Error::Corrupt { path, position, kind }) => findings.push(Finding::damage(path, position, kind)),
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {} // deleted meanwhile
            Err(e) => return Err(e),
        }
    }
    findings.sort_by_key(|f| f.severity);
    Ok(VerifyReport {
        dir: dir.path.clone(),
        segments: reports.len() as u64,
        records: live.iter().map(|r| r.readable).sum(),
        bytes: reports.iter().map(|r| r.bytes).sum(),
        first_offset: live.first().map_or(0, |r| r.base),
        next_offset,
        groups: dir.groups.len() as u64,
        findings,
        segment_reports: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, Queue};

    /// Three segments of a closed queue, scanned.
    fn three_segments(dir: &std::path::Path) -> (QueueDir, Vec<SegmentReport>) {
        let q = Queue::open(dir, Options::default().segment_bytes(4096)).unwrap();
        for _ in 0..100 {
            q.append(&[7; 100]).unwrap();
        }
        q.close().unwrap();
        let queue = QueueDir::open(dir).unwrap();
        let reports = scan_segments(&queue, true, &|_| {}).unwrap();
        assert!(reports.len() >= 3);
        (queue, reports)
    }

    /// On a live queue, retention can delete two segments while they are scanned: the
    /// older one after it was read, the next one before. The gap that leaves between the
    /// older one and the segment after the deleted one is retention's, not damage. (It was
    /// reported as damage by `verify` next to such a writer, now and then.)
    #[test]
    fn segments_deleted_by_retention_during_the_scan_leave_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, mut reports) = three_segments(dir.path());
        reports[1].end = SegmentEnd::Gone;
        std::fs::remove_file(&reports[1].file).unwrap();
        assert_eq!(continuity(&queue, &reports).len(), 1, "a segment missing from the middle is damage");
        std::fs::remove_file(&reports[0].file).unwrap();
        assert!(continuity(&queue, &reports).is_empty(), "{:?}", continuity(&queue, &reports));
    }
}
