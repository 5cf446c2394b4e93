//! Where records can be read again after damage: the records past a damaged one of a sealed
//! segment that `verify` counts and `dump` prints are those the library reads.

use super::dir::QueueDir;
use super::walk::{EndReason, MAX_RESYNC_SPAN, SegmentReader};
use crate::error::Result;

/// Where a walk over a segment that stopped at damage goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resume {
    /// At the record at `position` with `offset`: the first one past the damage that
    /// reads reach.
    At {
        /// Position of the record in the segment file.
        position: u64,
        /// Its offset.
        offset: u64,
    },
    /// No later record of the segment can be read.
    Nowhere,
    /// Not looked for: the damage lies in a segment still being written (the next open's
    /// recovery decides what it keeps there, and it may read records after the damage),
    /// or the search would have read more than 256 MiB.
    NotSearched,
}

/// Finds where reads reach records again past damage in sealed segment `i` of a queue
/// directory, as the library does. One `PastDamage` serves every damaged place of a walk
/// over the segment: its index is read once.
///
/// The library reaches the same records:
///
/// - a damaged record whose frame is whole and leads to the next record costs only itself;
/// - else reads go on at the first entry of the segment's index past the damage that lands
///   on the record it names, if the index is one the library uses (header, length and
///   entries in order, inside the segment);
/// - else (the library then rebuilds the index) at the first later record from which
///   records frame, offset after offset, exactly up to the segment's end, where the next
///   segment's base follows. See `scan::resync` for what that search cannot tell apart.
///
/// The newest segment (and one whose seal did not finish) is not searched: what the
/// library reads there after damage depends on what the next open's recovery keeps.
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
/// use segq::inspect::{PastDamage, QueueDir, Resume, SegmentReader};
///
/// let queue = QueueDir::open(dir.path())?;
/// let mut reader = SegmentReader::open(&segment)?;
/// let mut past_damage = PastDamage::new(&queue, 0);
/// while reader.next_record()?.is_some() {}
/// assert_eq!(reader.end().expect("stopped").next_offset, 3);
/// // The next index entry leads to the records after the damage.
/// let Resume::At { position, offset } = past_damage.resume(&mut reader)? else { panic!("records after it") };
/// assert!(offset > 3);
/// let record = reader.next_record()?.expect("a record");
/// assert_eq!((record.position, record.offset), (position, offset));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PastDamage<'a> {
    dir: &'a QueueDir,
    i: usize,
    /// The entries of the segment's index once read; `Some(None)` if it has none that the
    /// library would use.
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
    /// use segq::inspect::{PastDamage, QueueDir, Resume, SegmentReader};
    ///
    /// let queue = QueueDir::open(dir.path())?;
    /// let mut reader = SegmentReader::open(&queue.segments[0].path)?;
    /// while reader.next_record()?.is_some() {}
    /// // An intact segment: its walk ends at zeros, not at damage.
    /// assert_eq!(PastDamage::new(&queue, 0).resume(&mut reader)?, Resume::Nowhere);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn new(dir: &'a QueueDir, i: usize) -> PastDamage<'a> {
        PastDamage { dir, i, entries: None }
    }

    /// Moves the walk of `reader` (over this segment), stopped at damage, to the first
    /// record past it that reads reach, and says where that is. The walk stays stopped
    /// unless [`Resume::At`] is returned; [`Resume::Nowhere`] too if it did not stop at
    /// damage.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when a read fails.
    pub fn resume(&mut self, reader: &mut SegmentReader) -> Result<Resume> {
        let found = self.find(reader)?;
        if let Resume::At { position, offset } = found {
            reader.go_on_at(position, offset);
        }
        Ok(found)
    }

    fn find(&mut self, reader: &mut SegmentReader) -> Result<Resume> {
        let (dir, i) = (self.dir, self.i);
        let Some(end) = reader.end().cloned() else { return Ok(Resume::Nowhere) };
        let Some(seg) = dir.segments.get(i) else { return Ok(Resume::Nowhere) };
        let (position, offset) = (end.position, end.next_offset);
        if dir.is_unsealed(i) {
            // Damage, or zeros before what the checkpoint says was synced.
            let synced_after = dir.trusted_in(i).is_some_and(|(mark, _)| mark > position);
            return Ok(match end.reason {
                EndReason::Damage(_) => Resume::NotSearched,
                EndReason::Zeros if synced_after => Resume::NotSearched,
                EndReason::Zeros | EndReason::EndOfFile => Resume::Nowhere,
            });
        }
        // The segment's end, where the next segment's base follows.
        let Some((data_end, end_offset)) = dir.segments.get(i + 1).map(|next| (reader.file_len(), next.base)) else {
            return Ok(Resume::Nowhere);
        };
        match end.reason {
            EndReason::Damage(_) | EndReason::Zeros if position < data_end && offset < end_offset => {}
            _ => return Ok(Resume::Nowhere),
        }
        if let Some((offset_there, frame_end)) = reader.frame_at(position)?
            && offset_there == offset
            && let Some(next) = offset.checked_add(1)
        {
            let leads_on = frame_end == data_end || reader.frame_at(frame_end)?.is_some_and(|(o, _)| o == next);
            if leads_on {
                return Ok(Resume::At { position: frame_end, offset: next });
            }
        }
        let entries = self.entries.get_or_insert_with(|| {
            let max_rel = end_offset.saturating_sub(seg.base);
            seg.index.as_deref().and_then(|path| super::index::sealed_entries(path, seg.base, data_end, max_rel))
        });
        if let Some(entries) = entries {
            // The index is the library's: past the damage, it goes on where an entry lands.
            for (rel, pos) in crate::segment::index::after(entries, offset.saturating_sub(seg.base)) {
                let named = seg.base + u64::from(rel);
                if u64::from(pos) > position && reader.frame_at(u64::from(pos))?.is_some_and(|(o, _)| o == named) {
                    return Ok(Resume::At { position: u64::from(pos), offset: named });
                }
            }
            return Ok(Resume::Nowhere);
        }
        if data_end - position > MAX_RESYNC_SPAN {
            return Ok(Resume::NotSearched);
        }
        Ok(match reader.resync(position, offset, (data_end, end_offset))? {
            Some((position, offset)) => Resume::At { position, offset },
            None => Resume::Nowhere,
        })
    }
}
