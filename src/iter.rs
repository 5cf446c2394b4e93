//! Iteration over the records of the log, following it as it grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::group::state::later;
use crate::log::Log;
use crate::mmap::Mapping;
use crate::record::{self, Frame, Record, RecordRef};
use crate::segment::Segment;

/// Most records checked ahead of the one asked for. An owned record costs an atomic
/// reference-count update, which waits for every instruction before it: checking several
/// records between two of them lets their CRCs overlap in the CPU (short ones are even
/// checksummed side by side, see [`record::decode_run`]). A cursor checks one record at
/// first, then twice as many each time, so that a reader after a single record pays for
/// that one.
const MAX_AHEAD: usize = 16;

/// An iterator over records from an offset on; see [`crate::Queue::iter_from`].
///
/// It yields `Result<Record>`: a damaged record is an [`crate::Error::Corrupt`]. If its
/// frame is whole and leads to the next record's header (a damaged payload, say), the
/// iterator goes on with that record. Otherwise it goes on with the first record after it
/// that the segment's index leads to (about one index interval on; in the active segment,
/// once appends have added such an entry), skipping the records in between, which
/// [`crate::Queue::read`] cannot reach either; without one, with the next segment.
///
/// Any other error (an [`crate::Error::Io`]: too many open files, say) moves nothing: the
/// call after it returns `None`, the end for now, so that a loop over the iterator stops
/// there, and the call after that tries the same record again.
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
///
/// [`Iter::next_ref`] walks the same way but lends each record instead of handing out an
/// owned one, which is cheaper when the record is not kept. At the end of the log,
/// [`Iter::next_timeout`] waits for the next append, and [`Iter::next_offset`] says where
/// to resume after a restart.
#[derive(Debug)]
pub struct Iter {
    log: Arc<Log>,
    /// The offset of the next record to hand out.
    next: u64,
    cursor: Option<Cursor>,
    /// Stopped at damage in the active segment, where no later record can be found until
    /// the segment is sealed: then iteration goes on after it.
    done: bool,
    /// The last error skipped only the damaged record: go on in the same segment.
    resumed: bool,
    /// The last call met an error that is not damage (too many open files, say) and did
    /// not move: the next call ends the iteration for now, and the one after tries again.
    failed: bool,
}

/// Where the iterator is in one segment.
#[derive(Debug)]
struct Cursor {
    segment: Arc<Segment>,
    map: Arc<Mapping>,
    /// Records from `Iter::next` on whose CRC was checked, oldest first:
    /// `checked[taken..filled]`. A fixed array that [`record::decode_run`] fills in place.
    checked: Box<[Frame]>,
    /// How many of `checked` were handed out.
    taken: usize,
    /// How many of `checked` hold records.
    filled: usize,
    /// Position of the first record not in `checked`.
    pos: usize,
    /// How many records the next check covers at most.
    ahead: usize,
    /// Offsets below this are in this segment and readable: the smaller of the segment's end
    /// and the log's next offset when last looked at. Below it, a step reads no shared state
    /// but the closed flag and the first offset.
    end: u64,
}

impl Iter {
    pub(crate) fn new(log: Arc<Log>, from: u64) -> Iter {
        Iter { log, next: from, cursor: None, done: false, resumed: false, failed: false }
    }

    /// The offset the next call to `next` looks for: where a consumer that keeps its own
    /// position would resume, with [`crate::Queue::iter_from`], after a restart. (If
    /// retention deletes that record first, the next call moves on to the first offset.)
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let mut records = q.iter_from(0);
    /// records.next().transpose()?;
    /// let resume_at = records.next_offset(); // store it with the work done
    /// assert_eq!(resume_at, 1);
    /// assert_eq!(q.iter_from(resume_at).next().transpose()?.map(|r| r.offset()), Some(1));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// The next record, waiting up to `timeout` for one to be appended when the iterator is
    /// at the end of the log: a consumer that follows the log without a consumer group
    /// (which has [`crate::Group::poll`]) sleeps here instead of polling in a loop. `None` if
    /// nothing came in time, or once the queue is closed, which ends the wait at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = std::sync::Arc::new(segq::Queue::open(dir.path(), segq::Options::default())?);
    /// let mut tail = q.iter_from(q.next_offset());
    /// assert!(tail.next_timeout(Duration::from_millis(1)).is_none()); // nothing yet
    /// let writer = { let q = q.clone(); std::thread::spawn(move || q.append(b"news")) };
    /// let record = tail.next_timeout(Duration::from_secs(60)).expect("appended meanwhile")?;
    /// assert_eq!(record.payload(), b"news");
    /// # writer.join().unwrap()?;
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<Record>> {
        let deadline = later(Instant::now(), timeout);
        loop {
            // Read before looking: an append after the look moves it, so the wait returns.
            let seen = self.log.notify.generation();
            if let Some(next) = self.next() {
                return Some(next);
            }
            // After damage in the active segment, nothing comes until it is sealed: wait on.
            if self.log.is_closed() || Instant::now() >= deadline {
                return None;
            }
            self.log.notify.wait(seen, deadline);
        }
    }

    /// Like [`Iterator::next`], but lends the record instead of handing it out: nothing is
    /// copied or counted, and the borrow ends at the next call. Use [`RecordRef::to_record`]
    /// to keep one. Damage, the end of the log and a closed queue are met as by `next`, and
    /// the two can be mixed on one iterator.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"bb", b"ccc"])?;
    /// let mut it = q.iter_from(0);
    /// let mut total = 0;
    /// while let Some(record) = it.next_ref() {
    ///     total += record?.payload().len();
    /// }
    /// assert_eq!(total, 6);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[inline]
    pub fn next_ref(&mut self) -> Option<Result<RecordRef<'_>>> {
        self.advance().map(|r| r.map(|(map, frame)| RecordRef::new(map, frame)))
    }

    /// Moves past the next record and returns it, with the mapping it lies in.
    fn advance(&mut self) -> Option<Result<(&Arc<Mapping>, Frame)>> {
        if (self.done && !self.resume_past_damage()) || self.log.is_closed() {
            return None;
        }
        // Retention may have deleted the cursor's segment: then the slow path moves on.
        let within = |c: &Cursor| self.next < c.end && self.next >= self.log.first_offset();
        let frame = match &mut self.cursor {
            Some(c) if within(c) => c.take_checked(self.next),
            _ => None,
        };
        let frame = match frame {
            Some(frame) => frame,
            // Damage, another segment, retention or the end of what was known readable.
            None => match self.step_slowly()? {
                Ok(frame) => frame,
                Err(e) => return Some(Err(e)),
            },
        };
        let cursor = self.cursor.as_ref().expect("a frame is read through the cursor");
        self.next += 1;
        Some(Ok((&cursor.map, frame)))
    }

    /// Goes on after the damage that stopped the iterator in the active segment: at a
    /// record an index entry leads to past it (appends add entries), at the segment's end
    /// once it is sealed, or past retention; false while none of these is there.
    #[cold]
    fn resume_past_damage(&mut self) -> bool {
        if self.next >= self.log.first_offset() && !self.skip_damage() {
            return false;
        }
        self.done = false;
        self.cursor = None;
        true
    }

    /// Moves past the damaged record at `self.next`, whose frame hides where the next one
    /// starts: to the first record after it that the segment's index leads to, else to the
    /// next segment. False if neither is known yet (the active segment).
    #[cold]
    fn skip_damage(&mut self) -> bool {
        self.cursor = None;
        let segment = self.log.segment_for(self.next);
        let Some(segment) = segment else { return true };
        match segment.resume_after(self.next).or_else(|| segment.end_offset()) {
            Some(next) => {
                self.next = next;
                true
            }
            None => false,
        }
    }

    /// Finds the record at `self.next` when [`Iter::advance`]'s quick look did not: moves
    /// to the next segment or past retention as needed, and reports damage. `None` at the
    /// end; with a frame, the cursor has moved past it.
    fn step_slowly(&mut self) -> Option<Result<Frame>> {
        // (An error left no cursor: the call after it always comes here.)
        if std::mem::take(&mut self.failed) {
            return None;
        }
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
            let limit = self.log.next_offset();
            if self.next >= limit {
                return None;
            }
            match self.step(limit) {
                Ok(Some(frame)) => return Some(Ok(frame)),
                // Retention deleted the segment under us: go on from the new first offset.
                Ok(None) => self.cursor = None,
                Err(_) if self.next < self.log.first_offset() => self.cursor = None,
                // A close that ran whole since the check above ended the mappings: the
                // iterator ends, as it would have at the check.
                Err(Error::Closed) => {
                    self.cursor = None;
                    return None;
                }
                Err(e) if !matches!(e, Error::Corrupt { .. }) => {
                    // Not the record's fault: nothing is skipped, and a loop over the
                    // iterator ends here rather than meet the same error for ever.
                    self.cursor = None;
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(e) if std::mem::take(&mut self.resumed) => return Some(Err(e)),
                Err(e) => {
                    self.done = !self.skip_damage();
                    return Some(Err(e));
                }
            }
        }
    }

    /// Reads the record at `self.next`, below `limit`; `Ok(None)` if its segment was just
    /// deleted.
    fn step(&mut self, limit: u64) -> Result<Option<Frame>> {
        self.resumed = false;
        let cursor = match &mut self.cursor {
            Some(c) if c.segment.end_offset().is_none_or(|end| self.next < end) => c,
            _ => {
                let Some(segment) = self.log.segment_for(self.next) else { return Ok(None) };
                let newly_mapped = !segment.holds_mappings();
                let found = segment.position_of(self.next).and_then(|pos| Ok((pos, segment.data()?.clone())));
                // Also when damage was found: the segment may be mapped all the same.
                if newly_mapped && segment.holds_mappings() {
                    self.log.note_mapped(segment.base());
                }
                let (pos, map) = found?;
                let checked = vec![Frame::default(); MAX_AHEAD].into_boxed_slice();
                self.cursor.insert(Cursor { segment, map, checked, taken: 0, filled: 0, pos, ahead: 1, end: 0 })
            }
        };
        // `limit` was loaded before the published length: the bytes of every record below
        // it are readable.
        cursor.end = cursor.segment.end_offset().map_or(limit, |end| end.min(limit));
        let bytes = cursor.map.readable();
        let frame = match cursor.segment.frame_at(bytes, cursor.pos, self.next) {
            Ok(frame) => {
                cursor.pos = frame.end();
                frame
            }
            Err(e) => {
                // A record whose frame is whole (a damaged payload or timestamp, typically)
                // costs only itself when it leads to the next record's header, or to the end
                // of what is readable: reads step over it the same way. The next record is
                // checked in its turn.
                let resume = record::peek(bytes, cursor.pos).ok().filter(|f| {
                    f.offset == self.next
                        && (f.end() == bytes.len()
                            || record::peek(bytes, f.end()).is_ok_and(|n| n.offset == self.next + 1))
                });
                if let Some(damaged) = resume {
                    cursor.pos = damaged.end();
                    self.next += 1;
                    self.resumed = true;
                }
                return Err(e);
            }
        };
        Ok(Some(frame))
    }
}

impl Cursor {
    /// The record at `next` (the first not handed out), checking the records from there on
    /// below `self.end` if none is checked yet. `None` if it does not check.
    fn take_checked(&mut self, next: u64) -> Option<Frame> {
        if self.taken == self.filled {
            let bytes = self.map.readable();
            let count = self.end.saturating_sub(next).min(self.ahead as u64) as usize;
            self.ahead = (self.ahead * 2).min(MAX_AHEAD);
            // Stops before a record that does not check: the slow path reports it once the
            // records before it are handed out.
            self.filled = record::decode_run(bytes, self.pos, next, &mut self.checked[..count]);
            self.taken = 0;
            self.pos = self.checked[..self.filled].last()?.end();
        }
        let frame = self.checked[self.taken].clone();
        self.taken += 1;
        Some(frame)
    }
}

impl Iterator for Iter {
    type Item = Result<Record>;

    /// The next record, or `None` once the end of the log is reached. Iteration follows the
    /// live log: calling `next` again later yields records appended since. After a damaged
    /// record the iterator yields the error and goes on with the record after it when the
    /// damage left its frame intact, else with the first record after it that the index
    /// leads to, or the next segment (see [`Iter`]). Once the queue is closed it
    /// yields `None`.
    #[inline]
    fn next(&mut self) -> Option<Result<Record>> {
        self.advance().map(|r| r.map(|(map, frame)| Record::new(map.clone(), frame)))
    }
}
