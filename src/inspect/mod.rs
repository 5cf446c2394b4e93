//! Read-only inspection of a queue directory: what the `segq` debug binary shows.
//!
//! Everything here reads files with positional reads in bounded chunks: nothing is mapped,
//! no lock is taken and nothing is written. It is therefore safe on a queue that a writer
//! has open: a segment that the writer seals (cutting it) or retention deletes while it is
//! read just looks shorter or gone. A record half-written at the end of the newest segment
//! is reported as where the data ends, not as damage.
//!
//! The bytes are decoded by the same functions the queue itself uses (record frames, file
//! headers, the checkpoint, group snapshots and journals), so the two can never disagree
//! on the format. Hostile files (random bytes, truncated headers, absurd lengths) give
//! [`crate::Error::Corrupt`] or a [`Finding`] naming the file and the byte position; no
//! buffer is ever sized by a length read from a file beyond what the file holds.
//!
//! ```
//! # let dir = tempfile::tempdir()?;
//! # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
//! # q.append(b"hello")?;
//! # q.close()?;
//! use segq::inspect::{QueueDir, verify};
//!
//! let queue = QueueDir::open(dir.path())?;
//! let report = verify(&queue, &|_bytes| {})?;
//! assert!(report.findings.is_empty());
//! assert_eq!(report.next_offset, 1);
//! # Ok::<(), segq::Error>(())
//! ```

mod dir;
mod group_files;
mod groups;
mod index;
mod info;
mod lossy;
mod repair;
mod resume;
mod segment;
mod source;
mod verify;
mod walk;
mod writer_lock;

use std::fmt;
use std::path::PathBuf;

pub use dir::{CheckpointInfo, CheckpointSlot, QueueDir, SegmentFile};
pub use groups::{GroupReport, Lease, Retry, read_group, read_group_past};
pub use info::{Info, info, open_info};
pub use repair::{Cut, Move, RepairPlan, plan_repair};
pub use resume::{PastDamage, Resume};
pub use segment::{Lost, SegmentEnd, SegmentReport, judge_end, scan_segment, scan_segments};
pub use verify::{VerifyReport, continuity, verify};
pub use walk::{DEFAULT_CHUNK, EndReason, RecordView, ScanEnd, SegmentReader};
pub use writer_lock::WriterLock;

/// How serious a [`Finding`] is.
///
/// ```
/// use segq::inspect::{Finding, Severity};
///
/// let stray = Finding::warning("/q/00000000000000000000.log.tmp", 0, "a leftover temporary file");
/// assert_eq!(stray.severity, Severity::Warning);
/// assert!(Severity::Damage < Severity::Warning); // damage sorts first
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Bytes are not what segq wrote, or files disagree: reads may fail or data may be lost.
    Damage,
    /// Something unusual that segq copes with by itself, losing nothing (a leftover
    /// temporary file, an ignored checkpoint slot, stray bytes past the end of the data).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Damage => "damage",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a queue directory: the file, the byte position in it, and what is
/// wrong there.
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
/// let damage = &report.findings[0];
/// assert_eq!(damage.file, segment);
/// assert_eq!(damage.position, 32); // where the damaged record starts
/// println!("{damage}"); // "damage: <dir>/00000000000000000000.log at byte 32: ..."
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// The file concerned.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub file: PathBuf,
    /// Byte position in that file where the problem starts (0 for the whole file).
    pub position: u64,
    /// What is wrong, in words.
    pub what: String,
}

impl Finding {
    /// A finding of [`Severity::Damage`].
    ///
    /// ```
    /// use segq::inspect::{Finding, Severity};
    ///
    /// let f = Finding::damage("/q/checkpoint", 512, "slot B does not verify");
    /// assert_eq!(f.severity, Severity::Damage);
    /// assert_eq!(f.to_string(), "damage: /q/checkpoint at byte 512: slot B does not verify");
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn damage(file: impl Into<PathBuf>, position: u64, what: impl fmt::Display) -> Finding {
        Finding { severity: Severity::Damage, file: file.into(), position, what: what.to_string() }
    }

    /// A finding of [`Severity::Warning`].
    ///
    /// ```
    /// use segq::inspect::{Finding, Severity};
    ///
    /// let f = Finding::warning("/q/00000000000000000000.index", 0, "an index without its segment");
    /// assert_eq!((f.severity, f.position), (Severity::Warning, 0));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn warning(file: impl Into<PathBuf>, position: u64, what: impl fmt::Display) -> Finding {
        Finding { severity: Severity::Warning, file: file.into(), position, what: what.to_string() }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} at byte {}: {}", self.severity, self.file.display(), self.position, self.what)
    }
}
