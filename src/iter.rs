//! Iteration over the records of the log, following it as it grows.

use std::sync::Arc;

use crate::error::Result;
use crate::log::Log;
use crate::mmap::Mapping;
use crate::record::{self, Record};
use crate::segment::Segment;

/// An iterator over records from an offset on; see [`crate::Queue::iter_from`].
///
/// It yields `Result<Record>`: a damaged record is an [`crate::Error::Corrupt`]. If only its
/// checksum fails and its frame still leads to the next record (a damaged payload), the
/// iterator goes on with that record; otherwise it goes on with the next segment (and the
/// rest of the damaged one is skipped, though [`crate::Queue::read`] may still read some).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
/// let mut seen = Vec::new();
/// for record in q.iter_from(1) {
///     seen.push(record?.payload().to_vec());
/// }
/// assert_eq!(seen, [b"b".to_vec(), b"c".to_vec()]);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug)]
pub struct Iter {
    log: Arc<Log>,
    next: u64,
    cursor: Option<Cursor>,
    done: bool,
    /// The last error skipped only the damaged record: go on in the same segment.
    resumed: bool,
}

#[derive(Debug)]
struct Cursor {
    segment: Arc<Segment>,
    map: Arc<Mapping>,
    pos: usize,
}

impl Iter {
    pub(crate) fn new(log: Arc<Log>, from: u64) -> Iter {
        Iter { log, next: from, cursor: None, done: false, resumed: false }
    }

    /// The offset the next call to `next` looks for.
    pub(crate) fn peek_offset(&self) -> u64 {
        self.next
    }

    /// Reads the record at `self.next`; `Ok(None)` if its segment was just deleted.
    fn step(&mut self) -> Result<Option<Record>> {
        self.resumed = false;
        let cursor = match &mut self.cursor {
            Some(c) if c.segment.end_offset().is_none_or(|end| self.next < end) => c,
            _ => {
                let Some(segment) = self.log.segment_for(self.next) else { return Ok(None) };
                let pos = segment.position_of(self.next)?;
                let map = segment.data()?.clone();
                self.cursor.insert(Cursor { segment, map, pos })
            }
        };
        let bytes = cursor.map.readable();
        let frame = match cursor.segment.frame_at(bytes, cursor.pos, self.next) {
            Ok(frame) => frame,
            Err(e) => {
                // A record whose checksum fails but whose frame still leads to the next
                // record (a damaged payload, typically) costs only itself.
                let resume = record::peek(bytes, cursor.pos).ok().filter(|f| {
                    f.offset == self.next
                        && (Some(self.next + 1) == cursor.segment.end_offset() && f.end() == bytes.len()
                            || record::decode(bytes, f.end()).is_ok_and(|n| n.offset == self.next + 1))
                });
                if let Some(damaged) = resume {
                    cursor.pos = damaged.end();
                    self.next += 1;
                    self.resumed = true;
                }
                return Err(e);
            }
        };
        cursor.pos = frame.end();
        self.next += 1;
        Ok(Some(Record::new(cursor.map.clone(), frame)))
    }
}

impl Iterator for Iter {
    type Item = Result<Record>;

    /// The next record, or `None` once the end of the log is reached. Iteration follows the
    /// live log: calling `next` again later yields records appended since. After a damaged
    /// record the iterator yields the error and goes on with the record after it when the
    /// damage left its frame intact, else with the next segment. Once the queue is closed it
    /// yields `None`.
    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            if self.done || self.log.is_closed() {
                return None;
            }
            // First move up past what retention deleted, then look for the end: the first
            // offset can equal the next one (a roll emptied the log of sealed segments).
            let first = self.log.first_offset();
            if self.next < first {
                self.next = first;
                self.cursor = None;
            }
            if self.next >= self.log.next_offset() {
                return None;
            }
            match self.step() {
                Ok(Some(record)) => return Some(Ok(record)),
                // Retention deleted the segment under us: go on from the new first offset.
                Ok(None) => self.cursor = None,
                Err(_) if self.next < self.log.first_offset() => self.cursor = None,
                Err(e) if std::mem::take(&mut self.resumed) => return Some(Err(e)),
                Err(e) => {
                    match self.log.segment_for(self.next).and_then(|s| s.end_offset()) {
                        Some(end) => self.next = end,
                        None => self.done = true,
                    }
                    self.cursor = None;
                    return Some(Err(e));
                }
            }
        }
    }
}
