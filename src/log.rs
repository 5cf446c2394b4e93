//! The log: the ordered segments of a queue directory, appends, reads and recovery.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use crate::checkpoint::{Checkpoint, Mark};
use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::fs::sync_dir;
use crate::notify::Notify;
use crate::options::{MAX_SEGMENT_BYTES, Options, SyncPolicy};
use crate::prefault::Prefaulter;
use crate::record::{self, Record, now_ms};
use crate::sealer::{After, Sealer};
use crate::segment::header::FILE_HEADER_LEN;
use crate::segment::{self, Active, Creation, Segment, Spare};
use crate::sync::GroupCommit;

/// How far past the synced data a small sync writes back the zeroed pages ahead, when it
/// writes back any (see `segment::sync_data`): larger costs a longer sync now and then,
/// smaller more of them.
const WRITE_BACK_AHEAD: usize = 256 << 10;

/// What [`crate::Queue::open`] found and did, from [`crate::Queue::recovery`].
///
/// ```
/// use segq::{Options, Queue};
/// # use segq::SyncPolicy;
/// # let dir = tempfile::tempdir()?;
/// # let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never))?;
/// # q.append_batch(&[b"first".as_slice(), b"second"])?;
/// # q.simulate_crash();
/// # let segment = dir.path().join("00000000000000000000.log");
/// # use std::os::unix::fs::FileExt;
/// # let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment)?;
/// # let mut head = [0; 4096];
/// # file.read_exact_at(&mut head, 0)?;
/// # let end = head.windows(6).position(|w| w == b"second").unwrap() + 6;
/// # file.write_all_at(&[0xff; 16], end as u64)?;
/// // The last process appended two records without syncing them, crashed while writing a
/// // third, and left the torn bytes of the third behind.
/// let q = Queue::open(dir.path(), Options::default())?;
/// let found = q.recovery();
/// assert!(!found.clean && found.scanned_bytes > 0);
/// assert!(found.truncated_at.is_some() && found.damage.is_some()); // the torn tail was cut
/// assert_eq!(q.next_offset(), 2); // the two whole records were kept
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Recovery {
    /// The queue had been closed cleanly, so nothing was scanned. False for a queue that
    /// did not exist before this open (see `created`).
    pub clean: bool,
    /// The directory held no segment, so this open started an empty queue: neither clean
    /// nor crashed. Tells a first start from an unclean one.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// assert!(q.recovery().created && !q.recovery().clean);
    /// q.close()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// assert!(!q.recovery().created && q.recovery().clean);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub created: bool,
    /// Bytes of records checked at open (those after the last known synced position).
    pub scanned_bytes: u64,
    /// Position in the newest segment kept where a damaged (torn) unsynced tail was cut, or
    /// where its data ended before the next segment's first offset (that segment, whose
    /// records would follow a gap, is then deleted); `None` when the data simply ended.
    pub truncated_at: Option<u64>,
    /// What was wrong at the cut.
    pub damage: Option<String>,
    /// Damage that open came upon in data the checkpoint records as synced (file, byte
    /// position and what), which it kept instead of cutting: records after it were
    /// acknowledged. Reads of the damaged record report it as [`crate::Error::Corrupt`].
    /// Open looks at only the stretch before the last synced position (about one index
    /// interval), so `None` is no check of the whole log: `segq verify` is.
    ///
    /// ```
    /// use segq::{Options, Queue, SyncPolicy};
    /// use std::os::unix::fs::FileExt;
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always))?;
    /// for _ in 0..3 {
    ///     q.append(&[7; 100])?; // durable when it returns
    /// }
    /// q.simulate_crash();
    /// // A bit flip in the length of the second record (records are 124 bytes from byte 32).
    /// let segment = dir.path().join("00000000000000000000.log");
    /// std::fs::OpenOptions::new().write(true).open(&segment)?.write_at(&[0xff], 32 + 124 + 6)?;
    ///
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// assert!(q.recovery().synced_damage.as_ref().is_some_and(|d| d.contains("byte 156")));
    /// assert_eq!(q.next_offset(), 3); // nothing was cut
    /// assert!(q.read(1).is_err()); // the damaged record reports itself
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub synced_damage: Option<String>,
}

/// The log of one queue directory.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    opts: Options,
    /// Every segment, oldest first; the last is the active one.
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    first_offset: AtomicU64,
    /// Records below this offset are readable (published after their bytes).
    next_offset: AtomicU64,
    commit: GroupCommit,
    checkpoint: Arc<Mutex<Checkpoint>>,
    /// Set by the first failed sync: writes are refused from then on.
    poisoned: Arc<OnceLock<String>>,
    recovery: Recovery,
    /// Wakes consumers waiting for records.
    pub(crate) notify: Notify,
    /// Requests to the thread that faults in pages ahead of the writer.
    prefault: Option<Prefaulter>,
    /// Set when a segment is sealed, so the queue knows to enforce retention.
    rolled: Arc<AtomicBool>,
    /// Seals rolled segments in the background.
    sealer: Sealer,
    /// The next segment, made ready by the sealer thread after each seal.
    spare: Arc<Mutex<Option<Spare>>>,
    /// Bytes the spare takes on disk, for [`Stats::spare_bytes`] (kept apart: the spare's
    /// lock is held while one is made).
    spare_bytes: Arc<AtomicU64>,
    /// Held for a retention pass, and by the changes that would lower what a pass may
    /// delete: see [`Log::retention_pass`].
    retention: Mutex<()>,
    /// Mirrors `Writer::closed` for readers, who should not take the writer's lock.
    closed: AtomicBool,
    /// Set when a close begins: consumer groups take no more changes, so that the close's
    /// flush of their journals covers every change that returned.
    closing: AtomicBool,
    /// Bases of the sealed segments mapped, in the order they were mapped (a base mapped
    /// again after being unmapped is listed again).
    mapped: Mutex<VecDeque<u64>>,
}

/// About how many sealed segments a log keeps mapped. Each holds two mappings (data and
/// index), and a process may hold only so many (`vm.max_map_count`, 65,530 by default):
/// without a bound, a long-lived process that writes or reads tens of thousands of
/// segments would get `ENOMEM` from every new mapping. Past the bound, the segments mapped
/// longest ago are unmapped; the next read of one maps it again.
pub(crate) const MAX_MAPPED_SEALED: usize = 512;

/// What the queue holds, from [`crate::Queue::stats`]. Computed without reading any file.
///
/// ```
/// use segq::{Options, Queue};
/// # let dir = tempfile::tempdir()?;
/// let q = Queue::open(dir.path(), Options::default().segment_bytes(4096))?;
/// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
/// let s = q.stats();
/// assert_eq!((s.segments, s.bytes_on_disk), (1, 4096)); // the active segment is preallocated
/// assert_eq!((s.first_offset, s.next_offset, s.durable_offset, s.records), (0, 3, 3, 3));
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Segment files.
    pub segments: u64,
    /// Bytes the segment files take on disk (the active one is preallocated in full).
    pub bytes_on_disk: u64,
    /// Bytes the spare segment takes on disk: once the active segment is half full, the
    /// next one is made ready (preallocated in full, under a temporary name), so that the
    /// append that fills the active one need not wait for it; 0 when there is none, and
    /// after [`crate::Queue::close`], which deletes it. The log's files take
    /// `bytes_on_disk + spare_bytes`.
    pub spare_bytes: u64,
    /// Offset of the oldest record kept.
    pub first_offset: u64,
    /// Offset the next record will get.
    pub next_offset: u64,
    /// Offsets below this are durable.
    pub durable_offset: u64,
    /// Records kept (`next_offset - first_offset`).
    pub records: u64,
}

/// A retention pass in progress: see [`Log::retention_pass`].
pub(crate) struct RetentionPass<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

/// What one retention pass did, from [`crate::Queue::enforce_retention`].
///
/// ```
/// use segq::{Options, Queue};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).retain_until_consumed(true))?;
/// let g = q.group("workers")?;
/// for _ in 0..3 {
///     q.append(&[0; 3000])?; // one record per segment
/// }
/// while let Some(job) = g.poll(Duration::ZERO)? {
///     g.ack(job.offset())?;
/// }
/// let report = q.enforce_retention()?;
/// assert_eq!((report.segments_deleted, report.first_offset), (2, 2));
/// assert!(report.bytes_deleted > 2 * 3000);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Bytes of segment files deleted.
    pub bytes_deleted: u64,
    /// The queue's first offset after the pass.
    pub first_offset: u64,
}

#[derive(Debug)]
struct Writer {
    /// `None` after a segment was sealed but its successor could not be created (a full
    /// disk); the next append tries again.
    active: Option<Active>,
    closed: bool,
    /// Whether the active segment, once half full, has asked for a spare.
    spare_asked: bool,
}

impl Log {
    /// Opens the log in `dir` (which exists and is locked by the caller), recovering it.
    pub fn open(dir: &Path, opts: Options) -> Result<Log> {
        let files = list_segments(dir)?;
        let bases: Vec<u64> = files.iter().map(|&(base, _)| base).collect();
        let (mut checkpoint, slot_a, slot_b) = Checkpoint::open(dir)?;
        let interval = opts.index_interval_bytes;
        let min_capacity = opts.segment_bytes as usize;
        let mut recovery = Recovery::default();
        // A checkpoint naming a segment newer than the newest file means that file was lost:
        // starting over from an older one would hand out its offsets again.
        let newest_named = [slot_a, slot_b].into_iter().flatten().max_by_key(|m| (m.segment_base, m.next_offset));
        if let Some(mark) = newest_named.filter(|m| bases.last().is_none_or(|&last| m.segment_base > last)) {
            let missing = dir.join(segment::log_name(mark.segment_base));
            let from = bases.last().map_or(0, |_| mark.segment_base);
            if bases.last().is_some() || mark.next_offset > 0 {
                return Err(Error::corrupt(&missing, 0, CorruptKind::Gap { from, to: mark.next_offset.max(from) }));
            }
        }
        let (segments, active, next_offset) = match bases.split_last() {
            None => {
                recovery.created = true;
                (Vec::new(), Active::create(dir, 0, min_capacity, interval)?, 0)
            }
            Some((&newest, _)) => {
                let marks = [slot_a, slot_b].into_iter().flatten();
                let names = |base: u64| move |m: &Mark| m.segment_base == base && m.next_offset >= base;
                let mut files = files;
                let mut kept = None;
                // Marks name the newest segment only once the one before it is sealed, and
                // name that one from its creation on. If they name neither, the checkpoint
                // was damaged or lost: the segments are trusted as sealed, as reads check them.
                let prev = files.len().wrapping_sub(2);
                let named = |base: u64| marks.clone().any(|m| names(base)(&m));
                let unfinished = files.len() >= 2 && !named(newest) && named(files[prev].0);
                if unfinished && segment::never_written(dir, newest)? {
                    // Created by the roll, but the seal that makes it durable did not finish:
                    // it holds nothing that was durable.
                    remove_segment_files(dir, newest)?;
                    files.pop();
                } else if unfinished {
                    let trusted = marks.clone().filter(names(files[prev].0)).max_by_key(|m| m.position);
                    let trusted = trusted.map(|m| (m.position as usize, m.next_offset));
                    match finish_seal(dir, &opts, files[prev].0, newest, trusted, &mut recovery)? {
                        Unsealed::Sealed(Some(len)) => files[prev].1 = len,
                        Unsealed::Sealed(None) => {}
                        Unsealed::Newest(recovered) => {
                            files.pop();
                            kept = Some(*recovered);
                        }
                    }
                }
                let last = files[files.len() - 1].0;
                let clean = slot_a.filter(|m| m.clean && names(last)(m));
                let (active, found) = match kept {
                    Some(kept) => kept,
                    None => {
                        let trusted = clean.or_else(|| marks.filter(names(last)).max_by_key(|m| m.position));
                        let trusted = trusted.map(|m| (m.position as usize, m.next_offset));
                        let (active, found) =
                            Active::recover(dir, last, min_capacity, interval, trusted, clean.is_some())?;
                        if let Some((at, damage)) = &found.cut {
                            recovery.truncated_at = Some(*at);
                            recovery.damage = Some(damage.to_string());
                        }
                        note_kept_damage(&mut recovery, dir, last, &found);
                        (active, found)
                    }
                };
                recovery.clean = found.clean;
                recovery.scanned_bytes += found.scanned_bytes;
                let segments =
                    files.windows(2).map(|w| Segment::sealed(dir, w[0].0, w[1].0, interval, w[0].1)).collect();
                (segments, active, found.next_offset)
            }
        };
        let first_offset = segments.first().map_or(active.segment().base(), |s| s.base());
        // Names that a run which stopped early may not have synced (a roll's new segment
        // before its creation's sync, this directory before its parent's) are made durable
        // before anything is appended under them. A clean close proves the segments' names
        // durable; a checkpoint, that the first open got that far.
        if !recovery.clean && !recovery.created {
            sync_dir(dir)?;
        }
        if slot_a.is_none() && slot_b.is_none() {
            match sync_dir(crate::fs::parent_or_current(dir)) {
                // A parent that cannot be read was not synced when a first open made this
                // directory either: someone else made it, and made its name durable or not.
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => {}
                other => other?,
            }
        }
        // Until the next clean close, a crash must not be mistaken for one.
        checkpoint.write_both(Mark {
            segment_base: active.segment().base(),
            position: active.position() as u64,
            next_offset,
            clean: false,
        })?;
        let mut segments = segments;
        segments.push(active.segment().clone());
        let prefault = Prefaulter::start();
        let mut active = active;
        active.prefault_with(prefault.as_ref().map(Prefaulter::sender));
        let busy_wait = opts.busy_wait_for_sync;
        Ok(Log {
            dir: dir.to_path_buf(),
            opts,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer { active: Some(active), closed: false, spare_asked: false }),
            first_offset: AtomicU64::new(first_offset),
            next_offset: AtomicU64::new(next_offset),
            commit: GroupCommit::new(next_offset).busy_wait(busy_wait),
            checkpoint: Arc::new(Mutex::new(checkpoint)),
            poisoned: Arc::new(OnceLock::new()),
            recovery,
            notify: Notify::default(),
            prefault,
            rolled: Arc::new(AtomicBool::new(false)),
            sealer: Sealer::start(),
            spare: Arc::new(Mutex::new(None)),
            spare_bytes: Arc::new(AtomicU64::new(0)),
            retention: Mutex::new(()),
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            mapped: Mutex::new(VecDeque::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn first_offset(&self) -> u64 {
        self.first_offset.load(Ordering::Acquire)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn poison(&self, err: &Error) {
        let _ = self.poisoned.set(err.to_string());
    }

    fn poisoned_error(&self) -> Option<Error> {
        self.poisoned.get().map(|why| Error::Poisoned(format!("{why}; reopen the queue to recover")))
    }

    fn check_writable(&self, writer: &Writer) -> Result<()> {
        if writer.closed {
            return Err(Error::Closed);
        }
        self.poisoned_error().map_or(Ok(()), Err)
    }

    /// Appends the payloads as one batch: all of them or, on error, none.
    pub fn append(&self, payloads: &[&[u8]]) -> Result<Range<u64>> {
        let limit = self.opts.max_record_bytes;
        let mut needed = 0usize;
        for p in payloads {
            if p.len() > limit as usize {
                return Err(Error::RecordTooLarge { size: p.len() as u64, limit: u64::from(limit) });
            }
            needed += record::frame_len(p.len());
        }
        let max_batch = MAX_SEGMENT_BYTES as usize - FILE_HEADER_LEN;
        if needed > max_batch {
            return Err(Error::RecordTooLarge { size: needed as u64, limit: max_batch as u64 });
        }
        let range = {
            let mut w = self.writer();
            self.check_writable(&w)?;
            let first = self.next_offset.load(Ordering::Relaxed);
            if payloads.is_empty() {
                return Ok(first..first);
            }
            // Offsets end below u64::MAX, so that the log's next offset always fits in a u64.
            // Only a log whose files were made by hand gets here.
            if first.checked_add(payloads.len() as u64).is_none() {
                let why =
                    format!("offsets used up: {} records from offset {first} would pass u64::MAX", payloads.len());
                return Err(Error::Io(io::Error::new(io::ErrorKind::FileTooLarge, why)));
            }
            let active = self.make_room(&mut w, needed)?;
            let ts = now_ms();
            let last = payloads.len() - 1;
            for (i, p) in payloads.iter().enumerate() {
                active.write(first + i as u64, ts, p, i < last);
            }
            active.publish();
            let half_full = active.is_half_full();
            let next = first + payloads.len() as u64;
            self.next_offset.store(next, Ordering::Release);
            if half_full && !w.spare_asked {
                self.ask_for_spare(&mut w);
            }
            first..next
        };
        self.notify.notify();
        if self.opts.sync == SyncPolicy::Always {
            self.sync_to(range.end)?;
        }
        Ok(range)
    }

    /// Returns the active segment with at least `needed` bytes free, rolling if needed.
    fn make_room<'w>(&self, w: &'w mut Writer, needed: usize) -> Result<&'w mut Active> {
        if w.active.as_ref().is_some_and(|a| a.remaining() >= needed) {
            return Ok(w.active.as_mut().expect("checked above"));
        }
        let next = self.next_offset.load(Ordering::Relaxed);
        let capacity = (self.opts.segment_bytes as usize).max(FILE_HEADER_LEN + needed);
        let interval = self.opts.index_interval_bytes;
        match w.active.take() {
            Some(active) if active.is_empty() => {
                // Nothing is in it: make it big enough instead of sealing it empty.
                let active = w.active.insert(active);
                active.grow(capacity)?;
                active.prefault_with(self.prefault.as_ref().map(Prefaulter::sender));
                let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
                *segments.last_mut().expect("the active segment is listed") = active.segment().clone();
            }
            active => {
                let sealed_base = active.as_ref().map(|a| a.segment().base());
                // Recovery checks at most the segment before the newest: one seal at a time.
                self.sealer.wait();
                if let Some(err) = self.poisoned_error() {
                    w.active = active;
                    return Err(err);
                }
                // Under `Interval` at most about one period of appends may be lost; records
                // appended during a background seal would become durable only at its end,
                // tens of milliseconds later. So that policy seals on this thread.
                let active = match active {
                    Some(active) if matches!(self.opts.sync, SyncPolicy::Interval(_)) => {
                        self.seal_now(active, next)?;
                        None
                    }
                    active => active,
                };
                if let Some(active) = &active {
                    active.end_at(next);
                }
                // With a seal to run, the new segment is made durable by it: no record of the
                // new segment counts as durable before the seal is done anyway.
                // The spare's lock is held until its file is renamed: the sealer thread makes
                // a new spare under the same name only while it holds the lock.
                let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
                let created = match (&active, spare.take_if(|s| s.fits(capacity))) {
                    (Some(_), Some(ready)) => Active::from_spare(&self.dir, next, ready, interval),
                    (Some(_), None) => Active::create_unsynced(&self.dir, next, capacity, interval),
                    // Sealed already (under `Interval`, or the roll before failed): no seal
                    // makes the new segment durable, so this thread does.
                    (None, Some(ready)) => Active::from_spare(&self.dir, next, ready, interval)
                        .and_then(|created| created.creation().sync(&self.dir).map(|()| created)),
                    (None, None) => Active::create(&self.dir, next, capacity, interval),
                };
                self.spare_bytes.store(spare_bytes(&spare), Ordering::Relaxed);
                drop(spare);
                let mut created = match created {
                    Ok(created) => created,
                    Err(e) => {
                        // No successor to append to: seal now; the next append tries again.
                        if let Some(active) = active {
                            self.seal_now(active, next)?;
                        }
                        return Err(e);
                    }
                };
                created.prefault_with(self.prefault.as_ref().map(Prefaulter::sender));
                self.segments.write().unwrap_or_else(|e| e.into_inner()).push(created.segment().clone());
                let mark =
                    Mark { segment_base: next, position: FILE_HEADER_LEN as u64, next_offset: next, clean: false };
                match active {
                    Some(active) => self.seal_in_background(active, next, created.creation(), mark),
                    None => {
                        if let Err(e) = self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()).write_both(mark) {
                            self.poison(&e);
                        }
                    }
                }
                w.active = Some(created);
                w.spare_asked = false;
                // The sealed segment keeps the writer's mapping for its readers.
                if let Some(base) = sealed_base {
                    self.note_mapped(base);
                }
            }
        }
        Ok(w.active.as_mut().expect("set above"))
    }

    /// Has the sealer thread make a spare, unless the last seal made one already: the spare
    /// is otherwise made only after a background seal (never under `Interval`, which seals
    /// on the appending thread), so a roll would create its segment itself (5–30 ms here)
    /// and then wait for its first pages to be faulted in. Asked for at half full rather
    /// than at open, so that a queue that never fills a segment reserves no second one.
    fn ask_for_spare(&self, w: &mut Writer) {
        w.spare_asked = true;
        // Held only while a spare is being made or taken: then there is no need to ask.
        if self.spare.try_lock().is_ok_and(|spare| spare.is_none()) {
            self.sealer.run(self.ready_spare());
        }
    }

    /// Seals `active`, whose records end at `end_offset`, on this thread; its index, which
    /// no record's durability depends on (1.2–1.5 ms of a 3–4 ms seal here: an index is
    /// never synced before), is sealed on the sealer thread.
    fn seal_now(&self, active: Active, end_offset: u64) -> Result<()> {
        let segment = active.segment().clone();
        let mut index = match active.seal_data(end_offset) {
            Ok(index) => index,
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        };
        // A failure leaves an index that the next open or read rebuilds.
        self.sealer.run(Box::new(move || {
            if index.seal().is_ok() {
                segment.settle();
            }
        }));
        self.rolled.store(true, Ordering::Release);
        Ok(())
    }

    /// Hands `active`, whose records end at `end_offset`, to the sealer. Once it is sealed
    /// and its successor's `creation` is durable, `mark` (the successor's start) goes to
    /// both checkpoint slots: recovery then trusts the sealed segment. If any of it fails,
    /// the log is poisoned: a later sync must not make records of the successor durable
    /// while recovery could still think the sealed segment unfinished, and delete the
    /// successor.
    fn seal_in_background(&self, active: Active, end_offset: u64, creation: Creation, mark: Mark) {
        let (checkpoint, poisoned, rolled) = (self.checkpoint.clone(), self.poisoned.clone(), self.rolled.clone());
        let dir = self.dir.clone();
        let segment = active.segment().clone();
        let seal = move || {
            let sealed = active
                .seal(end_offset)
                .inspect(|()| segment.settle())
                .and_then(|()| creation.sync(&dir))
                .and_then(|()| checkpoint.lock().unwrap_or_else(|e| e.into_inner()).write_both(mark));
            match sealed {
                Ok(()) => rolled.store(true, Ordering::Release),
                Err(e) => {
                    let _ = poisoned.set(e.to_string());
                }
            }
        };
        // Then ready the next segment while appends fill this one; syncs do not wait for
        // that. Without a spare (a full disk, say) the next roll creates the segment itself.
        self.sealer.seal(Box::new(seal), self.ready_spare());
    }

    /// A job that makes the spare segment (see [`Spare`]) if there is none.
    fn ready_spare(&self) -> After {
        let (dir, spare, capacity) = (self.dir.clone(), self.spare.clone(), self.opts.segment_bytes as usize);
        let bytes = self.spare_bytes.clone();
        Box::new(move || {
            let mut spare = spare.lock().unwrap_or_else(|e| e.into_inner());
            if spare.is_none() {
                *spare = Spare::create(&dir, capacity).ok();
                bytes.store(spare_bytes(&spare), Ordering::Relaxed);
            }
        })
    }

    /// Returns once every record below `target` is durable.
    pub fn sync_to(&self, target: u64) -> Result<()> {
        self.commit.wait_for(target, || self.sync_now(), || self.poisoned_error())?;
        // Consumers under `SyncPolicy::Always` wait for durable records.
        self.notify.notify();
        Ok(())
    }

    /// Syncs everything appended so far; returns the offset it covered up to.
    fn sync_now(&self) -> Result<u64> {
        let (segment, end, next) = {
            // Records of a segment being sealed are durable once its seal is done. Waiting
            // first without the writer's lock keeps appends going meanwhile.
            self.sealer.wait();
            let w = self.writer();
            // A roll may have started another seal since. Under the lock no further roll
            // can: appenders rolling small segments would otherwise keep a flush waiting
            // for ever.
            self.sealer.wait();
            if let Some(err) = self.poisoned_error() {
                return Err(err);
            }
            let next = self.next_offset.load(Ordering::Relaxed);
            match &w.active {
                Some(active) => (active.segment().clone(), active.position(), next),
                // The newest segment was sealed (and so synced) when its successor could not
                // be created.
                None => return Ok(next),
            }
        };
        if let Err(e) = segment::sync_data(&segment, end, WRITE_BACK_AHEAD) {
            self.poison(&e);
            return Err(e);
        }
        let mark = Mark { segment_base: segment.base(), position: end as u64, next_offset: next, clean: false };
        self.note_synced(mark);
        Ok(next)
    }

    /// Records in the checkpoint that the log is synced up to `mark`.
    /// A hint that shortens the next recovery: the data is durable whether or not this
    /// write succeeds, so its errors are not reported.
    fn note_synced(&self, mark: Mark) {
        let _ = self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()).note_synced(mark);
    }

    /// Makes everything appended so far durable.
    pub fn flush(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.sync_to(self.next_offset())
    }

    /// Offsets below this are durable.
    pub fn durable_offset(&self) -> u64 {
        self.commit.durable()
    }

    /// Flushes and records a clean shutdown. Idempotent.
    pub fn close(&self) -> Result<()> {
        let mut w = self.writer();
        if w.closed {
            return Ok(());
        }
        self.closed.store(true, Ordering::Release);
        // Whatever happens below, this handle writes nothing more.
        w.closed = true;
        // Consumers waiting in `poll` look again, and see the queue closed.
        self.notify.notify();
        self.sealer.drain();
        // The spare is not part of the log. (Its file goes even with no spare held: one
        // whose roll failed part way may be left.)
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = fs::remove_file(self.dir.join(segment::SPARE_NAME));
        self.spare_bytes.store(0, Ordering::Relaxed);
        let recorded = self.record_clean_close(&w);
        self.release(&mut w);
        recorded
    }

    /// Syncs the active segment and records in the checkpoint where the log ends, clean.
    fn record_clean_close(&self, w: &Writer) -> Result<()> {
        if let Some(err) = self.poisoned_error() {
            return Err(err);
        }
        let next = self.next_offset.load(Ordering::Relaxed);
        let mark = match &w.active {
            Some(active) => {
                if let Err(e) = active.sync_all() {
                    self.poison(&e);
                    return Err(e);
                }
                Mark {
                    segment_base: active.segment().base(),
                    position: active.position() as u64,
                    next_offset: next,
                    clean: true,
                }
            }
            None => {
                // The newest segment is sealed: its data ends at its file's end.
                let last = self.segments().last().expect("a log has a segment").clone();
                let len = fs::metadata(last.path()).at(last.path())?.len();
                Mark { segment_base: last.base(), position: len, next_offset: next, clean: true }
            }
        };
        self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()).write_durable(mark)
    }

    /// Lets go of what only writing needed, once the log is closed: the sealer and prefault
    /// threads, the active segment's files and mappings, the checkpoint file, and the
    /// mappings of the listed segments. Handles kept past the close (iterators, groups,
    /// records) then hold only what they took themselves. (Kept iterators used to keep two
    /// threads, three files and the active segment mapped, for each queue closed.)
    fn release(&self, w: &mut Writer) {
        w.active = None;
        self.sealer.stop();
        if let Some(prefault) = &self.prefault {
            prefault.stop();
        }
        self.checkpoint.lock().unwrap_or_else(|e| e.into_inner()).close();
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        for segment in segments.iter_mut() {
            *segment = segment.retired();
        }
    }

    /// Stops all writing without syncing or recording a clean shutdown, as a crash would.
    pub fn abandon(&self) {
        let mut w = self.writer();
        w.closed = true;
        self.closed.store(true, Ordering::Release);
        self.notify.notify();
        // The sealer must leave the files alone once the directory can be opened again.
        self.sealer.drain();
        self.release(&mut w);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops consumer groups from taking changes: the first step of a close.
    pub fn begin_close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Whether a close has begun (or is done).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.is_closed()
    }

    /// The segment holding `offset`, which must be at or above the first offset.
    pub(crate) fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        holding(&self.segments(), offset).cloned()
    }

    /// Notes that the sealed segment `base` was just mapped, and unmaps those mapped
    /// longest ago while more than [`MAX_MAPPED_SEALED`] are: each is replaced in the list
    /// by a copy that maps nothing yet. Segments not settled yet (the writer's, and one
    /// whose seal is still running) are left alone and noted again for later. The caller
    /// must not hold the segment list's lock.
    pub(crate) fn note_mapped(&self, base: u64) {
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        mapped.push_back(base);
        if mapped.len() <= MAX_MAPPED_SEALED {
            return;
        }
        let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
        let mut unsettled = Vec::new();
        while mapped.len() > MAX_MAPPED_SEALED {
            let Some(oldest) = mapped.pop_front() else { break };
            // Not found: deleted by retention since.
            if let Ok(i) = segments.binary_search_by_key(&oldest, |s| s.base()) {
                if !segments[i].is_settled() {
                    unsettled.push(oldest);
                } else if segments[i].holds_mappings() {
                    segments[i] = segments[i].unmapped();
                }
            }
        }
        for base in unsettled.into_iter().rev() {
            mapped.push_front(base);
        }
    }

    /// Reads one record; `None` outside `first_offset()..next_offset()`.
    pub fn read(&self, offset: u64) -> Result<Option<Record>> {
        if offset >= self.next_offset() || offset < self.first_offset() {
            return Ok(None);
        }
        // A segment already mapped is read under the list's lock, without the two atomic
        // updates of cloning its `Arc` (shared by every reader). The first read of a sealed
        // segment maps its files and may rebuild its index: that one goes through a cloned
        // `Arc`, outside the lock, so that a roll need not wait for it. (A read of a mapped
        // segment does no I/O, except removing an index file found wrong.)
        let unmapped = {
            let segments = self.segments();
            match holding(&segments, offset) {
                Some(segment) if segment.is_mapped() => return segment.read(offset).map(Some),
                Some(segment) => segment.clone(),
                None => return Ok(None),
            }
        };
        let newly_mapped = !unmapped.holds_mappings();
        let read = unmapped.read(offset);
        // Also when the read failed on damage: the segment may be mapped all the same.
        if newly_mapped && unmapped.holds_mappings() {
            self.note_mapped(unmapped.base());
        }
        match read {
            Ok(record) => Ok(Some(record)),
            // Retention deleted the segment between the check above and the read.
            Err(_) if offset < self.first_offset() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Returns once the segment rolled last is sealed.
    pub fn wait_for_seal(&self) {
        self.sealer.wait();
    }

    /// Whether a segment was sealed since the last call.
    pub fn take_rolled(&self) -> bool {
        self.rolled.load(Ordering::Relaxed) && self.rolled.swap(false, Ordering::AcqRel)
    }

    /// Statistics kept in memory: no file is read.
    pub fn stats(&self) -> Stats {
        let segments = self.segments();
        let (first_offset, next_offset) = (self.first_offset(), self.next_offset());
        Stats {
            segments: segments.len() as u64,
            bytes_on_disk: segments.iter().map(|s| s.bytes()).sum(),
            spare_bytes: self.spare_bytes.load(Ordering::Relaxed),
            first_offset,
            next_offset,
            durable_offset: self.durable_offset(),
            records: next_offset - first_offset,
        }
    }

    /// Starts a retention pass, waiting for one in progress. What a pass decides from (the
    /// lowest offset a consumer group needs) holds while it is held: creating a group (at
    /// the first offset) and seeking one back take it too, so they wait for the pass
    /// instead of reaching back into segments it is deleting.
    pub fn retention_pass(&self) -> RetentionPass<'_> {
        RetentionPass(self.retention.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Deletes sealed segments, oldest first, for as long as `delete(segment, log_bytes)`
    /// says so; the newest segment is always kept. Each deletion is durable before the next
    /// starts, so a crash leaves a contiguous run of segments.
    pub fn retain(
        &self,
        _pass: &RetentionPass<'_>,
        mut delete: impl FnMut(&Segment, u64) -> Result<bool>,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        loop {
            let (oldest, total) = {
                let segments = self.segments();
                // The segment before the newest may still be sealing: it stays until it is sealed.
                if segments.len() < 2 || (segments.len() == 2 && self.sealer.is_sealing()) {
                    break;
                }
                (segments[0].clone(), segments.iter().map(|s| s.bytes()).sum())
            };
            // A close waits for the pass: stop rather than delete under a queue opened next.
            if self.is_closing() {
                return Err(Error::Closed);
            }
            let newly_mapped = !oldest.holds_mappings();
            let verdict = delete(&oldest, total);
            // Kept, it stays mapped if the verdict read it (its newest timestamp, say).
            if newly_mapped && oldest.holds_mappings() && !matches!(verdict, Ok(true)) {
                self.note_mapped(oldest.base());
            }
            if !verdict? {
                break;
            }
            {
                let mut segments = self.segments.write().unwrap_or_else(|e| e.into_inner());
                segments.remove(0);
                self.first_offset.store(segments[0].base(), Ordering::Release);
            }
            // A segment moved to another disk is a link to it: the file goes too, or nothing is
            // freed. The link goes first, so that a crash between the two leaves an orphan file
            // elsewhere, not a dangling link that open would refuse.
            let moved = linked_file(&self.dir, oldest.path());
            // Readers holding the segment keep its mapping; only the names go.
            fs::remove_file(oldest.path()).at(oldest.path())?;
            let _ = fs::remove_file(self.dir.join(segment::index_name(oldest.base())));
            sync_dir(&self.dir)?;
            if let Some(file) = moved {
                fs::remove_file(&file).at(&file)?;
                if let Some(parent) = file.parent() {
                    sync_dir(parent)?;
                }
            }
            report.segments_deleted += 1;
            report.bytes_deleted += oldest.bytes();
        }
        report.first_offset = self.first_offset();
        Ok(report)
    }
}

/// Bytes `spare` takes on disk.
fn spare_bytes(spare: &Option<Spare>) -> u64 {
    spare.as_ref().map_or(0, Spare::bytes)
}

/// What became of a segment that may not have been sealed when the log stopped.
enum Unsealed {
    /// It is sealed now, and holds this many bytes (`None`: its header is damaged, and reads
    /// report it as for any sealed segment).
    Sealed(Option<u64>),
    /// Its records end before the next segment starts, which was deleted: it is the newest.
    Newest(Box<(Active, segment::Recovered)>),
}

/// Finishes the seal of segment `base`, the one before the newest (`next`), when no
/// checkpoint mark says it was sealed: its records from `trusted` on are checked as for a
/// crashed active segment. If they reach `next`, it is sealed. If not, its tail was lost
/// with the crash, and the records of the newest segment would follow a gap: that segment
/// is deleted. What was cut is noted in `recovery`.
fn finish_seal(
    dir: &Path,
    opts: &Options,
    base: u64,
    next: u64,
    trusted: Option<(usize, u64)>,
    recovery: &mut Recovery,
) -> Result<Unsealed> {
    let capacity = opts.segment_bytes as usize;
    let (active, found) = match Active::recover(dir, base, capacity, opts.index_interval_bytes, trusted, false) {
        Ok(recovered) => recovered,
        // Synced records gone: as for the newest segment, the queue does not open.
        Err(e @ Error::Corrupt { kind: CorruptKind::Gap { .. }, .. }) => return Err(e),
        // A damaged header: taken as sealed, and reads report it.
        Err(Error::Corrupt { .. }) => return Ok(Unsealed::Sealed(None)),
        Err(e) => return Err(e),
    };
    note_kept_damage(recovery, dir, base, &found);
    if found.next_offset >= next {
        recovery.scanned_bytes += found.scanned_bytes;
        let len = active.position() as u64;
        active.seal(next)?;
        return Ok(Unsealed::Sealed(Some(len)));
    }
    // Only a segment created by a roll is deleted: not a file that merely has a segment's name.
    let newest = dir.join(segment::log_name(next));
    let mut head = [0u8; FILE_HEADER_LEN];
    let read =
        crate::fs::open_regular(&newest).and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(Error::corrupt(&newest, 0, CorruptKind::Truncated));
        }
        read => read.at(&newest)?,
    }
    segment::header::check(&head, segment::header::LOG_MAGIC, next).map_err(|kind| Error::corrupt(&newest, 0, kind))?;
    remove_segment_files(dir, next)?;
    let (at, what) = match &found.cut {
        Some((at, damage)) => (*at, damage.to_string()),
        None => (active.position() as u64, CorruptKind::Gap { from: found.next_offset, to: next }.to_string()),
    };
    recovery.truncated_at = Some(at);
    recovery.damage = Some(format!("{what}; the segment starting at offset {next} followed it and was deleted"));
    Ok(Unsealed::Newest(Box::new((active, found))))
}

/// Notes in `recovery` the damage that the recovery of segment `base` kept.
fn note_kept_damage(recovery: &mut Recovery, dir: &Path, base: u64, found: &segment::Recovered) {
    if let Some((at, kind)) = &found.kept_damage {
        let path = dir.join(segment::log_name(base));
        recovery.synced_damage = Some(format!("{}: {kind} at byte {at}", path.display()));
    }
}

/// The file outside `dir` that the segment file `path` is a symbolic link to, if it is one.
/// (A link to another name in `dir` is not followed: that name may be another segment.
/// Directories are compared by device and inode, which a bind mount does not change.)
fn linked_file(dir: &Path, path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return None;
    }
    let file = fs::canonicalize(path).ok()?;
    let (parent, dir) = (fs::metadata(file.parent()?).ok()?, fs::metadata(dir).ok()?);
    ((parent.dev(), parent.ino()) != (dir.dev(), dir.ino())).then_some(file)
}

/// Deletes the segment `base` and its index from `dir`, durably.
fn remove_segment_files(dir: &Path, base: u64) -> Result<()> {
    for name in [segment::log_name(base), segment::index_name(base)] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
            _ => {}
        }
    }
    sync_dir(dir)
}

/// Base offsets of the segment files in `dir`, sorted; removes leftovers of interrupted
/// file creation (`*.tmp`) and index files whose segment is gone.
fn list_segments(dir: &Path) -> Result<Vec<(u64, u64)>> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_log_name(name) {
            // The file itself, not a symbolic link to it (a segment moved to another disk).
            bases.push((base, fs::metadata(entry.path()).at(&entry.path())?.len()));
        } else if name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        } else if let Some(digits) = name.strip_suffix(".index")
            && let Some(base) = segment::parse_log_name(&format!("{digits}.log"))
        {
            indexes.push(base);
        }
    }
    bases.sort_unstable();
    for base in indexes {
        if bases.binary_search_by_key(&base, |&(b, _)| b).is_err() {
            let _ = fs::remove_file(dir.join(segment::index_name(base)));
        }
    }
    Ok(bases)
}

/// The segment of `segments` (ordered by base) that holds `offset`, if any.
fn holding(segments: &[Arc<Segment>], offset: u64) -> Option<&Arc<Segment>> {
    segments.partition_point(|s| s.base() <= offset).checked_sub(1).map(|i| &segments[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the bound, segments give up their mappings, the oldest mapped first, but only
    /// settled ones: not the writer's, and not one whose seal may still be running (the
    /// sealer is about to cut its files, and a fresh mapping would fault past the cut).
    #[test]
    fn only_settled_segments_give_up_their_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), Options::default().segment_bytes(4096).sync(SyncPolicy::Never)).unwrap();
        // Three records a segment; each roll leaves the sealed segment mapped.
        while log.segments().len() < MAX_MAPPED_SEALED + 60 {
            log.append(&[&[7u8; 1000]]).unwrap();
        }
        log.wait_for_seal();
        let read_one_of_each = |segments: &[Arc<Segment>]| {
            for segment in segments {
                assert!(log.read(segment.base()).unwrap().is_some());
            }
        };
        let listed = log.segments().clone();
        assert!(!listed[0].holds_mappings(), "the oldest were unmapped while appending");
        // Map the oldest ten again, then pretend their seal is still running.
        read_one_of_each(&listed[..10]);
        let unsettled: Vec<Arc<Segment>> = log.segments()[..10].to_vec();
        unsettled.iter().for_each(|s| s.unsettle());
        // Reading all the others maps more than the bound after them.
        let others = log.segments()[10..].to_vec();
        read_one_of_each(&others);

        let now = log.segments().clone();
        for (then, now) in unsettled.iter().zip(&now) {
            assert!(Arc::ptr_eq(then, now) && now.holds_mappings(), "an unsettled segment was unmapped");
        }
        assert!(Arc::ptr_eq(listed.last().unwrap(), now.last().unwrap()), "the writer's segment was replaced");
        let mapped = now.iter().filter(|s| s.holds_mappings()).count();
        assert!((MAX_MAPPED_SEALED..=MAX_MAPPED_SEALED + 12).contains(&mapped), "{mapped} segments mapped");
        // Every record still reads, the unmapped segments mapped again on the way.
        for segment in &now {
            let record = log.read(segment.base()).unwrap().unwrap();
            assert_eq!(record.payload(), [7u8; 1000]);
        }
    }
}
