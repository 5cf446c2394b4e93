//! Working out how to cut a queue back to the records before its first damage. Only the
//! plan is made here, reading as everything else in this module does; `segq repair --yes`
//! carries it out.

use std::path::{Path, PathBuf};

use super::dir::QueueDir;
use super::segment::{SegmentEnd, SegmentReport};
use super::verify::{seal_left_a_gap, verify};
use super::{Finding, Severity};
use crate::error::Result;

/// Cutting one segment file short.
///
/// ```
/// use segq::inspect::{QueueDir, plan_repair};
/// use std::os::unix::fs::FileExt;
/// # let dir = tempfile::tempdir()?;
/// // Segments of 4 KiB: 100 records of 100 B fill several.
/// let q = segq::Queue::open(dir.path(), segq::Options::default().segment_bytes(4096))?;
/// for _ in 0..100 {
///     q.append(&[7; 100])?;
/// }
/// q.close()?;
/// // Damage the second record of the first segment (records are 124 bytes from byte 32).
/// let first = dir.path().join("00000000000000000000.log");
/// std::fs::OpenOptions::new().write(true).open(&first)?.write_at(b"J", 32 + 124 + 30)?;
///
/// let plan = plan_repair(&QueueDir::open(dir.path())?)?;
///
/// let cut = plan.cut.expect("the first segment is cut");
/// assert_eq!(cut.file, first);
/// assert_eq!((cut.position, cut.next_offset), (32 + 124, 1)); // record 0 stays
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cut {
    /// The segment file to cut.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub file: PathBuf,
    /// Its new length: the end of the last complete batch before the damage.
    pub position: u64,
    /// The offset the next record appended after the repair gets.
    pub next_offset: u64,
    /// Bytes cut off (from `position` to the end of the file).
    pub bytes: u64,
    /// Where the cut bytes are kept.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub side_file: PathBuf,
}

/// Moving a whole segment file (or a folder in an index file's place) out of the queue.
///
/// ```
/// use segq::inspect::{QueueDir, plan_repair};
/// use std::os::unix::fs::FileExt;
/// # let dir = tempfile::tempdir()?;
/// // Segments of 4 KiB: 100 records of 100 B fill several.
/// let q = segq::Queue::open(dir.path(), segq::Options::default().segment_bytes(4096))?;
/// for _ in 0..100 {
///     q.append(&[7; 100])?;
/// }
/// q.close()?;
/// // Damage the second record of the first segment (records are 124 bytes from byte 32).
/// let first = dir.path().join("00000000000000000000.log");
/// std::fs::OpenOptions::new().write(true).open(&first)?.write_at(b"J", 32 + 124 + 30)?;
///
/// let plan = plan_repair(&QueueDir::open(dir.path())?)?;
///
/// assert!(!plan.moves.is_empty()); // every later segment is set aside
/// assert!(plan.moves.iter().all(|m| m.file != first && m.side_file != m.file));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Move {
    /// The segment file (or the folder).
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub file: PathBuf,
    /// Its new name, which segq does not read.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub side_file: PathBuf,
}

/// What `segq repair --truncate-at-first-damage` does: keep the records before the first
/// damage, set aside everything after it, and make the next open rescan.
///
/// ```
/// use segq::inspect::{QueueDir, plan_repair};
/// use std::os::unix::fs::FileExt;
/// # let dir = tempfile::tempdir()?;
/// // Segments of 4 KiB: 100 records of 100 B fill several.
/// let q = segq::Queue::open(dir.path(), segq::Options::default().segment_bytes(4096))?;
/// for _ in 0..100 {
///     q.append(&[7; 100])?;
/// }
/// q.close()?;
/// // Damage the second record of the first segment (records are 124 bytes from byte 32).
/// let first = dir.path().join("00000000000000000000.log");
/// std::fs::OpenOptions::new().write(true).open(&first)?.write_at(b"J", 32 + 124 + 30)?;
///
/// let plan = plan_repair(&QueueDir::open(dir.path())?)?;
///
/// assert_eq!(plan.damage.expect("damage").position, 32 + 124);
/// assert_eq!(plan.next_offset, 1);
/// assert!(plan.deletes.iter().any(|f| f.ends_with("checkpoint")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct RepairPlan {
    /// The first damage in the log, in offset order: what the cut is for.
    pub damage: Option<Finding>,
    /// The segment cut short, if the damage lies inside one with a readable header.
    pub cut: Option<Cut>,
    /// Segment files moved aside whole: those after the damage (and the damaged one itself
    /// when its header cannot be read); also a folder in an index file's place.
    pub moves: Vec<Move>,
    /// Files deleted: the indexes of the segments cut or moved (derived data, rebuilt by
    /// the next open), and the checkpoint, so that the next open
    /// scans the newest segment instead of trusting positions that may be gone.
    #[serde(serialize_with = "crate::inspect::lossy::paths")]
    pub deletes: Vec<PathBuf>,
    /// Offset the queue continues from after the repair.
    pub next_offset: u64,
    /// Damage that this repair does not mend, as [`verify`] reports it: in group files, or a
    /// checkpoint slot that says data was synced which is gone. Nothing is done about it.
    pub unrepaired: Vec<Finding>,
}

impl RepairPlan {
    /// Whether there is nothing to do.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::{QueueDir, plan_repair};
    ///
    /// assert!(plan_repair(&QueueDir::open(dir.path())?)?.is_empty()); // nothing damaged
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.cut.is_none() && self.moves.is_empty() && self.deletes.is_empty()
    }
}

/// A name for a side file next to `file` that holds its bytes from `position` on, and is
/// not taken yet.
fn side_name(file: &Path, position: u64) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".cut-{position}"));
    let first = PathBuf::from(&name);
    if !first.exists() {
        return first;
    }
    (1..).map(|n| PathBuf::from(format!("{}.{n}", first.display()))).find(|p| !p.exists()).expect("a free name")
}

/// Works out the repair of the queue in `dir` from what [`verify`] finds, so that the two
/// agree: segments are taken oldest first up to the first one with damage. What is not
/// damage is left alone: a torn tail of the newest segment (the next open cuts it), a newest
/// segment that a roll created but never wrote, or the segments after an unfinished seal
/// (the next open deletes them). Damage that a cut of the log does not mend (in group
/// files, or a checkpoint slot claiming data that is gone) is listed in
/// [`RepairPlan::unrepaired`].
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
/// use segq::inspect::{QueueDir, plan_repair};
///
/// let plan = plan_repair(&QueueDir::open(dir.path())?)?;
/// assert_eq!(plan.cut.expect("a cut").position, 32); // nothing before the damage to keep
/// assert_eq!(plan.next_offset, 0);
/// assert!(plan.unrepaired.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`crate::Error::Io`] when a file cannot be read.
pub fn plan_repair(dir: &QueueDir) -> Result<RepairPlan> {
    let verified = verify(dir, &|_| {})?;
    let mut plan = RepairPlan::default();
    let mut first_bad: Option<usize> = None;
    let mut deletes = Vec::new();
    let mut prev: Option<&SegmentReport> = None;
    for (i, report) in verified.segment_reports.iter().enumerate() {
        if report.end == SegmentEnd::Gone {
            continue;
        }
        if let Some(p) = prev
            && p.next_offset != report.base
        {
            if seal_left_a_gap(dir, p, report) {
                break; // the next open deletes this segment and those after it
            }
            // Offsets do not follow on: keep the previous segment whole, set aside the rest.
            let what = if p.next_offset < report.base {
                format!("offsets {}..{} are missing", p.next_offset, report.base)
            } else {
                format!("offsets from {} are also in {}", report.base, report.file.display())
            };
            plan.damage = Some(Finding::damage(&p.file, p.data_end, what));
            plan.next_offset = p.next_offset;
            first_bad = Some(i);
            break;
        }
        match &report.end {
            SegmentEnd::Damaged { position, what } => {
                plan.damage = Some(Finding::damage(&report.file, *position, what));
                plan.cut = Some(Cut {
                    file: report.file.clone(),
                    position: report.data_end,
                    next_offset: report.next_offset,
                    bytes: report.bytes - report.data_end,
                    side_file: side_name(&report.file, report.data_end),
                });
                plan.next_offset = report.next_offset;
                if let Some(index) = &dir.segments[i].index {
                    deletes.push(index.clone());
                }
                first_bad = Some(i + 1);
                break;
            }
            // The oldest segment's file is gone and only a link to it is left: as if
            // retention had deleted it. The link is set aside, and the queue starts at the
            // next segment (cutting there would hand out every later offset again).
            SegmentEnd::Unreadable { position, what }
                if prev.is_none()
                    && i + 1 < verified.segment_reports.len()
                    && super::walk::dangling_link(&report.file).is_some() =>
            {
                plan.damage.get_or_insert_with(|| Finding::damage(&report.file, *position, what));
                plan.moves.push(Move { file: report.file.clone(), side_file: side_name(&report.file, 0) });
                deletes.extend(dir.segments[i].index.clone());
                continue;
            }
            // A header that is not damage: a newest segment created by a roll and never
            // written, which the next open deletes.
            SegmentEnd::Unreadable { .. } if !report.is_damaged() => break,
            SegmentEnd::Unreadable { position, what } => {
                plan.damage = Some(Finding::damage(&report.file, *position, what));
                plan.next_offset = prev.map_or(report.base, |p| p.next_offset);
                first_bad = Some(i);
                break;
            }
            _ => {}
        }
        plan.next_offset = report.next_offset;
        prev = Some(report);
    }
    if first_bad == Some(0) {
        // No segment is left: the next open starts an empty queue at offset 0.
        plan.next_offset = 0;
    }
    if let Some(first) = first_bad {
        for seg in &dir.segments[first..] {
            plan.moves.push(Move { file: seg.path.clone(), side_file: side_name(&seg.path, 0) });
            if let Some(index) = &seg.index {
                deletes.push(index.clone());
            }
        }
    }
    // A damaged index is derived data: deleted, and rebuilt by the next open. A folder in
    // its place is not segq's to delete, and keeps the rebuilt index from being stored: it
    // is moved aside.
    let indexes: Vec<&Path> = dir.segments.iter().filter_map(|s| s.index.as_deref()).collect();
    let damaged = verified.findings.iter().filter(|f| f.severity == Severity::Damage);
    for f in damaged.filter(|f| indexes.contains(&f.file.as_path())) {
        if std::fs::symlink_metadata(&f.file).is_ok_and(|m| m.is_dir()) {
            plan.moves.push(Move { file: f.file.clone(), side_file: side_name(&f.file, 0) });
        } else {
            deletes.push(f.file.clone());
        }
        plan.damage.get_or_insert_with(|| f.clone());
    }
    deletes.sort();
    deletes.dedup();
    plan.deletes = deletes;
    // A checkpoint is a hint: one whose slots name a segment that is missing, or data
    // that is not there (findings in it), is deleted, and the next open scans instead.
    let in_checkpoint =
        verified.findings.iter().find(|f| f.severity == Severity::Damage && f.file == dir.checkpoint.path);
    if let Some(f) = in_checkpoint {
        plan.damage.get_or_insert_with(|| f.clone());
    }
    let checkpoint_damaged = in_checkpoint.is_some()
        || dir.checkpoint.slots().any(|(_, s)| dir.newest().is_none_or(|n| s.segment_base > n.base));
    if (first_bad.is_some() || checkpoint_damaged) && dir.checkpoint.present {
        plan.deletes.push(dir.checkpoint.path.clone());
        if plan.damage.is_none() {
            plan.damage = Some(Finding::damage(
                &dir.checkpoint.path,
                0,
                "the checkpoint names a segment that is missing, so the queue does not open",
            ));
        }
    }
    // Damage in the log is mended by the cut: in the segment cut, the segments moved, and a
    // gap or overlap at the cut. The rest stays.
    let touched = |f: &Path| {
        plan.cut.as_ref().is_some_and(|c| c.file == f)
            || plan.moves.iter().any(|m| m.file == f)
            || plan.deletes.iter().any(|d| d == f)
            || (plan.damage.is_some() && dir.segments.iter().any(|s| s.path == f))
    };
    plan.unrepaired =
        verified.findings.into_iter().filter(|f| f.severity == Severity::Damage && !touched(&f.file)).collect();
    Ok(plan)
}
