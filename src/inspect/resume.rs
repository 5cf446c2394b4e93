//! Where records can be read again after damage: the records past a damaged one that
//! `verify` counts and `dump` prints are those the library reads.

use super::dir::QueueDir;
use super::walk::{EndReason, SegmentReader};
use crate::error::Result;

/// Finds where reads reach records again past damage in segment `i` of a queue directory,
/// as the library does. One `PastDamage` serves every damaged place of a walk over the
/// segment: its index is read once.
///
/// The library reaches the same records:
///
/// - a damaged record whose frame is whole and leads to the next record costs only itself;
/// - else reads go on at the first entry of the segment's index past the damage that lands
///   on the record it names;
/// - without a readable index (the library then rebuilds it), or in a segment still being
///   written, at the first later record from which records frame, offset after offset,
///   exactly up to where the segment is known to end: the next segment's base for a sealed
///   one, the checkpoint's synced mark for the newest. See `scan::resync` for what that
///   search cannot tell apart.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let opts = segq::Options::default().segment_bytes(4096).index_interval_bytes(256);
/// let q = segq::Queue::open(dir.path(), opts)?;
/// for _ in 0..100 {
///     q.append(&[7; 100])?;
/// }
/// q.close()?;
/// // Break the length of record 3 (124 bytes a frame, after a 32-byte file header).
/// use std::os::unix::fs::FileExt;
/// let segment = dir.path().join("00000000000000000000.log");
/// std::fs::OpenOptions::new().write(true).open(&segment)?.write_at(&[0xff], 32 + 3 * 124 + 6)?;
///
/// use segq::inspect::{PastDamage, QueueDir, SegmentReader};
///
/// let queue = QueueDir::open(dir.path())?;
/// let mut reader = SegmentReader::open(&segment)?;
/// let mut past_damage = PastDamage::new(&queue, 0);
/// while reader.next_record()?.is_some() {}
/// assert_eq!(reader.end().expect("stopped").next_offset, 3);
/// // The next index entry leads to the records after the damage.
/// let (position, offset) = past_damage.resume(&mut reader)?.expect("records after it");
/// assert!(offset > 3);
/// let record = reader.next_record()?.expect("a record");
/// assert_eq!((record.position, record.offset), (position, offset));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PastDamage<'a> {
    dir: &'a QueueDir,
    i: usize,
    /// The used entries of the segment's index once read; `Some(None)` if it has no
    /// readable index.
    entries: Option<Option<Vec<u8>>>,
}

impl<'a> PastDamage<'a> {
    /// For segment `i` of `dir`; nothing is read yet.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::{PastDamage, QueueDir, SegmentReader};
    ///
    /// let queue = QueueDir::open(dir.path())?;
    /// let mut reader = SegmentReader::open(&queue.segments[0].path)?;
    /// while reader.next_record()?.is_some() {}
    /// // An intact segment: its walk ends at zeros, not at damage.
    /// assert_eq!(PastDamage::new(&queue, 0).resume(&mut reader)?, None);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn new(dir: &'a QueueDir, i: usize) -> PastDamage<'a> {
        PastDamage { dir, i, entries: None }
    }

    /// Moves the walk of `reader` (over this segment), stopped at damage, to the first
    /// record that reads reach again, and returns its position and offset; `None` (and the
    /// walk stays stopped) if no later record of the segment can be read, or if the walk
    /// did not stop at damage.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when a read fails.
    pub fn resume(&mut self, reader: &mut SegmentReader) -> Result<Option<(u64, u64)>> {
        let found = self.find(reader)?;
        if let Some((position, offset)) = found {
            reader.go_on_at(position, offset);
        }
        Ok(found)
    }

    fn find(&mut self, reader: &mut SegmentReader) -> Result<Option<(u64, u64)>> {
        let (dir, i) = (self.dir, self.i);
        let Some(end) = reader.end().cloned() else { return Ok(None) };
        let Some(seg) = dir.segments.get(i) else { return Ok(None) };
        let (position, offset) = (end.position, end.next_offset);
        let unsealed = dir.is_unsealed(i);
        // A boundary known from elsewhere, past the damage.
        let known_end = if unsealed {
            dir.trusted_in(i)
        } else {
            dir.segments.get(i + 1).map(|next| (reader.file_len(), next.base))
        }
        .filter(|&(end, end_offset)| end > position && end_offset > offset);
        match end.reason {
            EndReason::Damage(_) => {}
            // Zeros before the known end: records may follow them.
            EndReason::Zeros if known_end.is_some() => {}
            _ => return Ok(None),
        }
        if let Some((offset_there, frame_end)) = reader.frame_at(position)?
            && offset_there == offset
            && let Some(next) = offset.checked_add(1)
        {
            let leads_on = known_end.is_some_and(|(end, _)| end == frame_end)
                || reader.frame_at(frame_end)?.is_some_and(|(o, _)| o == next);
            if leads_on {
                return Ok(Some((frame_end, next)));
            }
        }
        let entries = self
            .entries
            .get_or_insert_with(|| seg.index.as_deref().and_then(|path| super::index::used_entries(path, seg.base)));
        if let Some(entries) = entries {
            for (rel, pos) in crate::segment::index::after(entries, offset.saturating_sub(seg.base)) {
                // A damaged entry may name an offset past what a u64 holds: it leads nowhere.
                let Some(named) = seg.base.checked_add(u64::from(rel)) else { continue };
                if u64::from(pos) > position && reader.frame_at(u64::from(pos))?.is_some_and(|(o, _)| o == named) {
                    return Ok(Some((u64::from(pos), named)));
                }
            }
        }
        match known_end {
            Some(known_end) if entries.is_none() || unsealed => reader.resync(position, offset, known_end),
            _ => Ok(None),
        }
    }
}
