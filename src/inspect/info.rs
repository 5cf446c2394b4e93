//! A one-screen summary of a queue directory.

use std::path::PathBuf;

use super::dir::{CheckpointInfo, QueueDir};
use super::segment::{SegmentEnd, scan_from};
use super::walk::SegmentReader;
use crate::error::{CorruptKind, Error, Result};
use crate::segment::Landing;
use crate::segment::header::FORMAT_VERSION;

/// What `segq info` shows.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, SegmentEnd, info};
///
/// let info = info(&QueueDir::open(dir.path())?)?;
/// assert_eq!((info.first_offset, info.next_offset, info.records), (0, 1, 1));
/// assert!(info.clean);
/// assert_eq!(info.tail, SegmentEnd::Clean);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Info {
    /// The queue directory.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub dir: PathBuf,
    /// On-disk format version of the segments (checked in the newest segment's header).
    pub format_version: u32,
    /// Offset of the oldest record kept: the first segment's base.
    pub first_offset: u64,
    /// Offset the next appended record gets: just past the newest segment's valid data.
    pub next_offset: u64,
    /// Records kept (`next_offset - first_offset`).
    pub records: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes the segment files take (the active one is preallocated in full).
    pub bytes: u64,
    /// Names of the consumer groups.
    pub groups: Vec<String>,
    /// Why the groups could not be listed (see [`QueueDir::groups_error`]).
    pub groups_error: Option<String>,
    /// The queue was closed cleanly (checkpoint slot A carries the clean flag for the
    /// newest segment). `false` while a writer has it open, and after a crash.
    pub clean: bool,
    /// `clean`, `open or crashed` (slot A without the clean flag) or `no checkpoint`.
    pub state: String,
    /// How the newest segment's data ends.
    pub tail: SegmentEnd,
    /// The checkpoint file.
    pub checkpoint: CheckpointInfo,
    /// The figures [`crate::Queue::stats`] gives the process that has the queue open, as far
    /// as the files tell: `durable_offset` is what the checkpoint records as synced.
    pub stats: crate::Stats,
}

/// [`QueueDir::open`] and [`info`], for a queue that may be live: a writer of small segments
/// can roll several times, and its retention delete the segment the listing found newest,
/// before that segment is read. The directory is then listed again (a few times at most).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// use segq::inspect::open_info;
///
/// let (listed, info) = open_info(dir.path())?; // the queue is still open: that is fine
/// assert_eq!((listed.segments.len(), info.stats.next_offset), (1, 1));
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// As [`QueueDir::open`] and [`info`].
pub fn open_info(path: impl AsRef<std::path::Path>) -> Result<(QueueDir, Info)> {
    let path = path.as_ref();
    let mut tries = 0;
    loop {
        tries += 1;
        let dir = QueueDir::open(path)?;
        match info(&dir) {
            Err(Error::Io(e))
                if e.kind() == std::io::ErrorKind::NotFound
                    && tries < 5
                    && dir.segments.first().is_some_and(|s| !s.path.exists()) =>
            {
                continue;
            }
            result => return result.map(|info| (dir, info)),
        }
    }
}

/// Summarises the queue in `dir`, reading only the newest segment, and of it only what
/// follows the last position the checkpoint records as synced.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, info};
///
/// let info = info(&QueueDir::open(dir.path())?)?;
/// assert_eq!(info.state, "clean");
/// assert_eq!(info.stats.next_offset, 1);
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// [`crate::Error::Corrupt`] if the newest segment's header is damaged (the queue would
/// not open either); [`crate::Error::Io`] if a file cannot be read.
pub fn info(dir: &QueueDir) -> Result<Info> {
    // As the library's open: a slot naming a segment newer than the newest file means that
    // file was lost, and the queue does not open (starting over from an older segment would
    // hand out its offsets again).
    let newest_named = dir.checkpoint.slots().map(|(_, s)| s).max_by_key(|s| (s.segment_base, s.next_offset));
    let newest = dir.newest().map(|s| s.base);
    if let Some(mark) = newest_named.filter(|m| newest.is_none_or(|base| m.segment_base > base))
        && (newest.is_some() || mark.next_offset > 0)
    {
        let missing = dir.path.join(crate::segment::log_name(mark.segment_base));
        let from = newest.map_or(0, |_| mark.segment_base);
        return Err(Error::corrupt(&missing, 0, CorruptKind::Gap { from, to: mark.next_offset.max(from) }));
    }
    let bytes = dir.segments.iter().map(|s| s.len).sum();
    let first_offset = dir.segments.first().map_or(0, |s| s.base);
    let n = dir.segments.len();
    // A crash while the segment before the newest was sealing can leave the newest without
    // its header (the seal makes it durable): it holds nothing, and the next open deletes
    // it. The data then ends in the segment before it.
    let unwritten = n >= 2
        && dir.is_unsealed(n - 2)
        && crate::segment::never_written(&dir.path, dir.segments[n - 1].base).unwrap_or(false);
    // As the library's open: records a slot says were synced, gone from the segment whose
    // seal a crash interrupted, stop the open as they do in the newest.
    if n >= 2
        && !unwritten
        && dir.is_unsealed(n - 2)
        && let Some((_, next, Landing::Missing(at, from))) = dir.mark_landing(n - 2)?
    {
        let path = &dir.segments[n - 2].path;
        return Err(crate::segment::records_gone(path, at, from, next));
    }
    let mut landed = true;
    let (next_offset, tail) = match n.checked_sub(if unwritten { 2 } else { 1 }) {
        None => (0, SegmentEnd::Clean),
        Some(last) => {
            // Fails with the header's damage, named by file and position.
            SegmentReader::open(&dir.segments[last].path)?;
            // As recovery: a mark that holds is where the scan starts; one written for other
            // data is dropped, and the whole segment scanned; one whose records are gone
            // stops the open.
            let from = match dir.mark_landing(last)? {
                None => None,
                Some((pos, next, Landing::Lands | Landing::Damaged(..))) => Some((pos, next)),
                Some((_, _, Landing::Elsewhere)) => {
                    landed = false;
                    None
                }
                Some((_, next, Landing::Missing(at, from))) => {
                    let path = &dir.segments[last].path;
                    return Err(crate::segment::records_gone(path, at, from, next));
                }
            };
            let report = scan_from(dir, last, from, false, &|_| {})?;
            (report.next_offset, report.end)
        }
    };
    let state = if dir.is_clean() && landed {
        "clean"
    } else if dir.checkpoint.slot_a.is_some() {
        "open or crashed"
    } else {
        "no checkpoint"
    };
    // While the segment before the newest is being sealed, the slots name only that one.
    let sealing = (n >= 2 && dir.is_unsealed(n - 2)).then(|| dir.trusted_in(n - 2)).flatten();
    let trusted = dir.trusted().filter(|_| landed);
    let durable_offset =
        if dir.is_clean() && landed { next_offset } else { trusted.or(sealing).map_or(first_offset, |(_, next)| next) };
    let stats = crate::Stats {
        segments: dir.segments.len() as u64,
        bytes_on_disk: bytes,
        // Made ready by a live queue, or left by a crash for the next open to delete.
        spare_bytes: std::fs::metadata(dir.path.join(crate::segment::SPARE_NAME)).map_or(0, |m| m.len()),
        first_offset,
        next_offset,
        durable_offset: durable_offset.min(next_offset),
        records: next_offset.saturating_sub(first_offset),
    };
    Ok(Info {
        stats,
        dir: dir.path.clone(),
        format_version: FORMAT_VERSION,
        first_offset,
        next_offset,
        records: next_offset.saturating_sub(first_offset),
        segments: dir.segments.len() as u64,
        bytes,
        groups: dir.groups.clone(),
        groups_error: dir.groups_error.clone(),
        clean: dir.is_clean() && landed,
        state: state.to_string(),
        tail,
        checkpoint: dir.checkpoint.clone(),
    })
}
