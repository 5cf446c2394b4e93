//! Working out how to cut a queue back to the records before its first damage. Only the
//! plan is made here, reading as everything else in this module does; `segq repair --yes`
//! carries it out.

use std::path::{Path, PathBuf};

use super::dir::QueueDir;
use super::segment::{SegmentEnd, scan_segment};
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

/// Moving a whole segment file out of the queue.
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
    /// The segment file.
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
    /// when its header cannot be read).
    pub moves: Vec<Move>,
    /// Files deleted: the indexes of the segments cut or moved and any damaged index (all
    /// derived data, rebuilt by the next open), and the checkpoint, so that the next open
    /// scans the newest segment instead of trusting positions that may be gone.
    #[serde(serialize_with = "crate::inspect::lossy::paths")]
    pub deletes: Vec<PathBuf>,
    /// Offset the queue continues from after the repair.
    pub next_offset: u64,
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

/// Works out the repair of the queue in `dir`: segments are scanned oldest first up to the
/// first one with damage. A torn tail of the newest segment is not damage (the next open
/// cuts it) and is left alone.
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
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`crate::Error::Io`] when a file cannot be read.
pub fn plan_repair(dir: &QueueDir) -> Result<RepairPlan> {
    let mut plan = RepairPlan::default();
    let mut first_bad: Option<usize> = None;
    let mut index_damage = Vec::new();
    let mut prev: Option<(u64, u64, PathBuf)> = None; // (next offset, data end, file) of the previous segment
    for i in 0..dir.segments.len() {
        let report = scan_segment(dir, i, true, &|_| {})?;
        if report.end == SegmentEnd::Gone {
            continue;
        }
        if let Some((next, end, file)) = &prev
            && *next != report.base
        {
            // Offsets do not follow on: keep the previous segment whole, set aside the rest.
            let what = if *next < report.base {
                format!("offsets {next}..{} are missing", report.base)
            } else {
                format!("offsets from {} are also in {}", report.base, report.file.display())
            };
            plan.damage = Some(Finding::damage(file, *end, what));
            plan.next_offset = *next;
            first_bad = Some(i);
            break;
        }
        for f in &report.findings {
            let is_index = dir.segments[i].index.as_deref() == Some(f.file.as_path());
            if f.severity == Severity::Damage && is_index {
                index_damage.push(f.file.clone());
            }
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
                    index_damage.push(index.clone());
                }
                first_bad = Some(i + 1);
                break;
            }
            SegmentEnd::Unreadable { position, what } => {
                plan.damage = Some(Finding::damage(&report.file, *position, what));
                plan.next_offset = prev.as_ref().map_or(report.base, |p| p.0);
                first_bad = Some(i);
                break;
            }
            _ => {}
        }
        plan.next_offset = report.next_offset;
        prev = Some((report.next_offset, report.data_end, report.file));
    }
    if first_bad == Some(0) {
        // No segment is left: the next open starts an empty queue at offset 0.
        plan.next_offset = 0;
    }
    if let Some(first) = first_bad {
        for seg in &dir.segments[first..] {
            plan.moves.push(Move { file: seg.path.clone(), side_file: side_name(&seg.path, 0) });
            if let Some(index) = &seg.index {
                index_damage.push(index.clone());
            }
        }
    }
    index_damage.sort();
    index_damage.dedup();
    plan.deletes = index_damage;
    let checkpoint_damaged = dir.checkpoint.slots().any(|(_, s)| dir.newest().is_none_or(|n| s.segment_base > n.base));
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
    Ok(plan)
}
