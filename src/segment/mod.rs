//! One segment: a `<base offset>.log` file of records and its `.index`.
//!
//! A segment file is `file header (32 bytes) | record*`, preallocated to its capacity while
//! it is active and cut to its data once sealed. [`Segment`] is the shared, read side;
//! [`Active`] is the writer of the newest segment.

pub(crate) mod header;
pub(crate) mod index;
pub(crate) mod scan;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use header::{FILE_HEADER_LEN, LOG_MAGIC};
use index::IndexWriter;

use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::fs::{open_rw, rename, reserve, sync_dir, temp_path};
use crate::mmap::{MapWriter, Mapping};
use crate::prefault::{self, Job};
use crate::record::{self, Frame, Record};
use std::sync::mpsc::Sender;

/// File name of the segment whose first offset is `base`.
pub(crate) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// File name of that segment's index.
pub(crate) fn index_name(base: u64) -> String {
    format!("{base:020}.index")
}

/// The base offset named by a segment file name, if `name` is one.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The read side of a segment, shared by readers and the writer.
#[derive(Debug)]
pub(crate) struct Segment {
    base: u64,
    path: PathBuf,
    index_path: PathBuf,
    interval: u32,
    /// Mapped on first read for sealed segments; from the start for the active one.
    data: OnceLock<Arc<Mapping>>,
    index: OnceLock<Arc<Mapping>>,
    /// Serialises the lazy opening of `data` and `index`.
    opening: Mutex<()>,
    /// First offset past this segment once sealed; `u64::MAX` while active.
    end_offset: AtomicU64,
    /// Data below this position is known to be on stable storage.
    synced: AtomicUsize,
    /// Pages below this position were written back at least once (see [`sync_data`]).
    written_back: AtomicUsize,
    /// Length of the file on disk.
    bytes: AtomicU64,
    /// An index entry was found not to point at its record: lookups ignore the index.
    index_distrusted: AtomicBool,
    /// Entries rebuilt from the data of a sealed segment whose index is distrusted: what
    /// lookups use then, as the next open would.
    rebuilt: OnceLock<Vec<u8>>,
    /// Index entries of a sealed segment rebuilt from its data but not stored (a full disk, a
    /// folder in the index file's place): lookups use them, as a distrusted index's.
    /// Kept by [`Segment::unmapped`]'s copies, so that they do not rebuild them and try to
    /// store them again at every remap: the next open does.
    unstored: OnceLock<Arc<[u8]>>,
    /// Sealed, index included: its files keep their size from now on, so a copy may map
    /// them afresh (see [`Segment::unmapped`]).
    settled: AtomicBool,
    /// Put in the list of a closed log: maps nothing any more (see [`Segment::retired`]).
    retired: AtomicBool,
}

impl Segment {
    /// A new segment for the same files as `other`, as if it had just been created.
    fn new_like(other: &Segment) -> Segment {
        Segment::new(other.path.parent().unwrap_or(Path::new("")), other.base, other.interval)
    }

    fn new(dir: &Path, base: u64, interval: u32) -> Segment {
        Segment {
            base,
            path: dir.join(log_name(base)),
            index_path: dir.join(index_name(base)),
            interval,
            data: OnceLock::new(),
            index: OnceLock::new(),
            opening: Mutex::new(()),
            end_offset: AtomicU64::new(u64::MAX),
            synced: AtomicUsize::new(0),
            written_back: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            index_distrusted: AtomicBool::new(false),
            rebuilt: OnceLock::new(),
            unstored: OnceLock::new(),
            settled: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }

    /// A sealed segment found on disk; nothing is read until it is used.
    pub fn sealed(dir: &Path, base: u64, end_offset: u64, interval: u32, bytes: u64) -> Arc<Segment> {
        let seg = Segment::new(dir, base, interval);
        seg.end_offset.store(end_offset, Ordering::Relaxed);
        seg.bytes.store(bytes, Ordering::Relaxed);
        seg.settle();
        Arc::new(seg)
    }

    /// The first offset in this segment.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, position: usize, kind: CorruptKind) -> Error {
        Error::corrupt(&self.path, position as u64, kind)
    }

    /// Whether its data and index are mapped: a read then does no I/O.
    pub fn is_mapped(&self) -> bool {
        self.data.get().is_some() && (self.index.get().is_some() || self.unstored.get().is_some())
    }

    /// Whether it holds a mapping of its data or of its index.
    pub fn holds_mappings(&self) -> bool {
        self.data.get().is_some() || self.index.get().is_some()
    }

    /// Notes that its seal is done, index included: its files keep their size from now on.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Release);
    }

    /// Makes it look as if its seal were still running.
    #[cfg(test)]
    pub fn unsettle(&self) {
        self.settled.store(false, Ordering::Release);
    }

    /// Whether [`Segment::settle`] was called: only then may [`Segment::unmapped`] stand in
    /// for it. (Mapping a file that the sealer is about to cut would fault on the cut part.)
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The same settled segment with nothing mapped yet, to take this one's place in the
    /// log's list when the log keeps too many segments mapped. Whoever holds this one (an
    /// iterator, a record through its mapping) keeps its mappings until they let go.
    pub fn unmapped(&self) -> Arc<Segment> {
        Arc::new(Segment {
            base: self.base,
            path: self.path.clone(),
            index_path: self.index_path.clone(),
            interval: self.interval,
            data: OnceLock::new(),
            index: OnceLock::new(),
            opening: Mutex::new(()),
            end_offset: AtomicU64::new(self.end_offset.load(Ordering::Acquire)),
            synced: AtomicUsize::new(self.synced.load(Ordering::Acquire)),
            written_back: AtomicUsize::new(self.written_back.load(Ordering::Acquire)),
            bytes: AtomicU64::new(self.bytes.load(Ordering::Acquire)),
            index_distrusted: AtomicBool::new(self.index_distrusted.load(Ordering::Relaxed)),
            rebuilt: OnceLock::new(),
            unstored: self.unstored.clone(),
            settled: AtomicBool::new(self.is_settled()),
            retired: AtomicBool::new(false),
        })
    }

    /// A copy with nothing mapped that never maps its files: it takes this one's place in
    /// the list of a closed log. A read that raced the close gets `Closed` from it, rather
    /// than mapping the files again (and rebuilding the index of a segment that was still
    /// being written, under a queue opened next).
    pub fn retired(&self) -> Arc<Segment> {
        let copy = self.unmapped();
        copy.retired.store(true, Ordering::Release);
        copy
    }

    /// The segment's readable bytes, mapping the file on first use.
    pub fn data(&self) -> Result<&Arc<Mapping>> {
        if let Some(map) = self.data.get() {
            return Ok(map);
        }
        let _guard = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = self.data.get() {
            return Ok(map);
        }
        if self.retired.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let file = match crate::fs::open_regular(&self.path) {
            Ok(file) => file,
            // Deleted by hand, or something else in its place (retention retires a segment
            // before deleting it): its records are missing, as when a segment is found
            // missing at open. Other errors (too many open files, say) pass.
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidInput) => {
                let to = self.end_offset.load(Ordering::Acquire);
                return Err(self.corrupt(0, CorruptKind::Gap { from: self.base, to }));
            }
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let len = file.metadata().at(&self.path)?.len() as usize;
        if len < FILE_HEADER_LEN {
            return Err(self.corrupt(len, CorruptKind::Truncated));
        }
        let map = Mapping::read_only(&file, len).at(&self.path)?;
        header::check(map.readable(), LOG_MAGIC, self.base).map_err(|kind| self.corrupt(0, kind))?;
        Ok(self.data.get_or_init(|| map))
    }

    /// The segment's index, opened (and checked or rebuilt) on first use; `None` if the
    /// rebuilt index could not be stored (its entries are then in `unstored`).
    #[inline]
    fn index(&self, data: &[u8]) -> Result<Option<&Arc<Mapping>>> {
        match self.index.get() {
            Some(map) => Ok(Some(map)),
            None => self.open_index(data),
        }
    }

    #[cold]
    fn open_index(&self, data: &[u8]) -> Result<Option<&Arc<Mapping>>> {
        let _guard = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = self.index.get() {
            return Ok(Some(map));
        }
        if self.unstored.get().is_some() {
            return Ok(None);
        }
        if self.retired.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let max_rel = self.end_offset.load(Ordering::Acquire).saturating_sub(self.base);
        match index::open_sealed(&self.index_path, self.base, data, max_rel, self.interval)? {
            index::Sealed::Stored(map) => Ok(Some(self.index.get_or_init(|| map))),
            index::Sealed::Unstored(entries) => {
                // Derived data: the index costs no read for want of a place to keep it.
                let _ = self.unstored.set(entries.into());
                self.index_distrusted.store(true, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Reads the record with this offset, which the caller knows belongs to this segment.
    pub fn read(&self, offset: u64) -> Result<Record> {
        let data = self.data()?;
        let bytes = data.readable();
        let (start_offset, start) = self.scan_start(bytes, offset)?;
        let pos = self.step_to(bytes, start, start_offset, offset)?;
        let frame = self.frame_at(bytes, pos, offset)?;
        Ok(Record::new(data.clone(), frame))
    }

    /// Where to start stepping to `offset`: the index entry at or before it, as
    /// `(offset, position)`. Entries that do not point at the records they name, again and
    /// again, make the whole index untrusted (see [`Segment::start_before`]).
    fn scan_start(&self, bytes: &[u8], offset: u64) -> Result<(u64, usize)> {
        let from_start = (self.base, FILE_HEADER_LEN);
        if self.index_distrusted.load(Ordering::Relaxed) {
            return Ok(self.start_without_index(bytes, offset));
        }
        let Some(index) = self.index(bytes)? else { return Ok(self.start_without_index(bytes, offset)) };
        let entries = index.readable().get(FILE_HEADER_LEN..).unwrap_or_default();
        // The record's line is a cache miss that does not depend on the index lookup:
        // start it now, with the lines the walk from the entry before it will cross, so the
        // index and data misses overlap instead of following each other.
        if let Some(guess) = index::guess_position(entries, offset - self.base) {
            let walk = (self.interval as usize).min(MAX_TOUCH_BEFORE) + 64;
            touch(bytes, guess.saturating_sub(walk)..guess.saturating_add(128));
        }
        match index::floor(entries, offset - self.base) {
            Some(e) if index::lands(bytes, self.base, e) => Ok((self.base + u64::from(e.0), e.1 as usize)),
            Some(e) => {
                let start = self.start_before(bytes, entries, e);
                if self.index_distrusted.load(Ordering::Relaxed) {
                    return Ok(self.start_without_index(bytes, offset));
                }
                Ok(start)
            }
            None => Ok(from_start),
        }
    }

    /// [`Segment::scan_start`] once the index is distrusted: a sealed segment's lookups use
    /// entries rebuilt from its data, as the next open would (which crosses damage, see
    /// [`index::build`]); the active segment's step from its start.
    #[cold]
    fn start_without_index(&self, bytes: &[u8], offset: u64) -> (u64, usize) {
        let from_start = (self.base, FILE_HEADER_LEN);
        let Some(entries) = self.rebuilt_entries(bytes) else { return from_start };
        match index::floor(entries, offset - self.base) {
            Some(e) if index::lands(bytes, self.base, e) => (self.base + u64::from(e.0), e.1 as usize),
            _ => from_start,
        }
    }

    /// The entries a sealed segment whose index is distrusted looks records up in: entries
    /// rebuilt from its data, with those of its index that land and fit between them
    /// ([`index::merged`]); `None` for the active segment.
    #[cold]
    fn rebuilt_entries(&self, bytes: &[u8]) -> Option<&[u8]> {
        let end = self.end_offset()?;
        if let Some(entries) = self.unstored.get() {
            return Some(entries);
        }
        Some(self.rebuilt.get_or_init(|| {
            let built = index::build(bytes, self.base, end, self.interval);
            let index = self.index(bytes).ok().flatten();
            index::merged(
                index.map(|map| map.readable().get(FILE_HEADER_LEN..).unwrap_or_default()).unwrap_or_default(),
                &built,
                bytes,
                self.base,
            )
        }))
    }

    /// Where to start stepping when the entry `e` does not land. If the records before it
    /// frame up to it, the record there is damaged, not the index: stepping from the entry
    /// reports that. Otherwise the entry is wrong, or damage spans more than its record:
    /// an earlier entry that lands will do. Only an index that is wrong again and again (or
    /// damage over many records) makes the whole index distrusted: a sealed segment's
    /// lookups then use its entries that land, with entries rebuilt from its data between
    /// them; the active segment's lookups step from its start. The index file is left as it
    /// is: the fault is as likely in the data, and the entries that land are kept anyway.
    #[cold]
    fn start_before(&self, bytes: &[u8], entries: &[u8], e: (u32, u32)) -> (u64, usize) {
        let entry = |e: (u32, u32)| (self.base + u64::from(e.0), e.1 as usize);
        if index::names_damaged_record(bytes, self.base, index::before(entries, e), e) {
            return entry(e);
        }
        let mut at = e;
        for _ in 0..MAX_ENTRIES_BACK {
            match index::before(entries, at) {
                Some(prev) if index::lands(bytes, self.base, prev) => return entry(prev),
                Some(prev) => at = prev,
                None => return (self.base, FILE_HEADER_LEN),
            }
        }
        self.index_distrusted.store(true, Ordering::Relaxed);
        (self.base, FILE_HEADER_LEN)
    }

    /// Steps from the record at `pos` (offset `at`) to the position of `target`. Records on
    /// the way are only framed; if one does not frame, the walk is redone with CRCs to name
    /// the first damaged record precisely.
    fn step_to(&self, bytes: &[u8], mut pos: usize, mut at: u64, target: u64) -> Result<usize> {
        let start = (pos, at);
        while at < target {
            match record::peek(bytes, pos) {
                Ok(frame) if frame.offset == at => {
                    pos = frame.end();
                    at += 1;
                }
                _ => return Err(self.damage_between(bytes, start, target)),
            }
        }
        Ok(pos)
    }

    fn damage_between(&self, bytes: &[u8], (pos, at): (usize, u64), target: u64) -> Error {
        let scan = scan::valid_prefix(bytes, pos, at);
        match scan.damage {
            Some((pos, kind)) => self.corrupt(pos, kind),
            None => self.corrupt(scan.end, CorruptKind::Gap { from: scan.next_offset, to: target + 1 }),
        }
    }

    /// Decodes the record at `pos` with its CRC and checks its offset.
    pub fn frame_at(&self, bytes: &[u8], pos: usize, offset: u64) -> Result<Frame> {
        let frame = record::decode(bytes, pos).map_err(|e| match e {
            record::FrameError::Truncated if pos == bytes.len() => {
                self.corrupt(pos, CorruptKind::Gap { from: offset, to: self.end_offset.load(Ordering::Acquire) })
            }
            e => self.corrupt(pos, scan::corrupt_kind(e)),
        })?;
        if frame.offset != offset {
            return Err(self.corrupt(pos, CorruptKind::BadOffset { expected: offset, found: frame.offset }));
        }
        Ok(frame)
    }

    /// The first record past the damaged one at offset `damaged` that an index entry lands
    /// on: where iteration can go on in this segment when the damage hides where the next
    /// record starts (reads reach the records from there on too; the iterator checks each
    /// as it goes). `None` if no entry does (yet, while active).
    #[cold]
    pub fn resume_after(&self, damaged: u64) -> Option<u64> {
        let bytes = self.data().ok()?.readable();
        let entries = if self.index_distrusted.load(Ordering::Relaxed) {
            self.rebuilt_entries(bytes)?
        } else {
            self.index(bytes).ok()??.readable().get(FILE_HEADER_LEN..).unwrap_or_default()
        };
        let mut after = index::after(entries, damaged.checked_sub(self.base)?);
        let (rel, _) = after.find(|&e| index::lands(bytes, self.base, e))?;
        Some(self.base + u64::from(rel))
    }

    /// Position of the record with this offset, for iteration.
    pub fn position_of(&self, offset: u64) -> Result<usize> {
        let data = self.data()?;
        let bytes = data.readable();
        let (at, pos) = self.scan_start(bytes, offset)?;
        self.step_to(bytes, pos, at, offset)
    }

    /// Length of the segment file on disk: its capacity while active, its data once sealed.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Timestamp of the newest record of a sealed segment (`None` if it is active or empty).
    pub fn newest_timestamp(&self) -> Result<Option<u64>> {
        let Some(end) = self.end_offset().filter(|&end| end > self.base) else { return Ok(None) };
        let pos = self.position_of(end - 1)?;
        let data = self.data()?;
        Ok(Some(self.frame_at(data.readable(), pos, end - 1)?.timestamp_ms))
    }

    /// First offset past this segment, once sealed.
    pub fn end_offset(&self) -> Option<u64> {
        match self.end_offset.load(Ordering::Acquire) {
            u64::MAX => None,
            end => Some(end),
        }
    }
}

/// The writer of the newest segment.
#[derive(Debug)]
pub(crate) struct Active {
    seg: Arc<Segment>,
    file: Arc<File>,
    data: MapWriter,
    index: IndexWriter,
    /// End of the data written so far.
    pos: usize,
    capacity: usize,
    /// Where pages are (being) faulted in up to, by the prefault thread.
    prefaulted: usize,
    /// The same in the index file.
    index_prefaulted: usize,
    prefault: Option<Sender<Job>>,
}

/// Name of the spare segment file: the next segment, created and partly faulted in ahead of
/// the roll that will use it. Its `.tmp` suffix makes the next open delete it.
pub(crate) const SPARE_NAME: &str = "spare.log.tmp";

/// How much of a spare is faulted in ahead: the prefault thread takes over from there.
const SPARE_PREFAULTED: usize = 4 << 20;

/// A preallocated file, mapped, with its first pages faulted in, waiting to become the
/// next segment: a roll then neither reserves blocks nor waits for the first page faults.
#[derive(Debug)]
pub(crate) struct Spare {
    file: File,
    map: MapWriter,
    capacity: usize,
}

impl Spare {
    /// Creates the spare file in `dir`, able to hold `capacity` bytes.
    pub fn create(dir: &Path, capacity: usize) -> Result<Spare> {
        let path = dir.join(SPARE_NAME);
        let made = (|| {
            let file =
                std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).at(&path)?;
            reserve(&file, &path, capacity as u64)?;
            let (map, writer) = Mapping::read_write(&file, capacity, 0).at(&path)?;
            map.populate_write(0..SPARE_PREFAULTED);
            Ok(Spare { file, map: writer, capacity })
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        made
    }

    /// Whether it can hold a segment of `capacity` bytes.
    pub fn fits(&self, capacity: usize) -> bool {
        self.capacity >= capacity
    }

    /// Bytes the file takes on disk: it is preallocated in full.
    pub fn bytes(&self) -> u64 {
        self.capacity as u64
    }
}

/// A created segment whose creation is not durable yet (see [`Active::create_unsynced`]).
#[derive(Debug)]
pub(crate) struct Creation {
    path: PathBuf,
    base: u64,
}

impl Creation {
    /// Makes the segment's header, reserved blocks and name in `dir` durable. The appender
    /// is writing records into the segment meanwhile, and the prefault thread dirtying pages
    /// ahead of it: only the header's page is written back, with the file's metadata.
    pub fn sync(&self, dir: &Path) -> Result<()> {
        crate::fs::write_durably_at(&self.path, &header::encode(LOG_MAGIC, self.base), 0)?;
        sync_dir(dir)
    }
}

/// Whether the segment file of `base` in `dir` never got its header to the disk: shorter
/// than a header, or a header of zeros. Only a roll whose creation was not yet durable
/// leaves one (see [`Active::create_unsynced`]).
pub(crate) fn never_written(dir: &Path, base: u64) -> Result<bool> {
    let path = dir.join(log_name(base));
    let file = crate::fs::open_regular(&path).at(&path)?;
    let mut head = [0u8; FILE_HEADER_LEN];
    match std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0) {
        Ok(()) => Ok(head.iter().all(|&b| b == 0)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(crate::error::Error::io(&path, e)),
    }
}

/// How the active segment was recovered on open.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recovered {
    pub next_offset: u64,
    /// Bytes of records checked with their CRC.
    pub scanned_bytes: u64,
    /// The data ends exactly where a clean shutdown said: nothing was scanned.
    pub clean: bool,
    /// Position where a damaged, unsynced tail was cut, and what was wrong there.
    pub cut: Option<(u64, CorruptKind)>,
    /// Damage met in data the checkpoint records as synced, kept as it is: position and kind.
    pub kept_damage: Option<(u64, CorruptKind)>,
}

impl Active {
    /// Creates a segment starting at `base`, able to hold `capacity` bytes (header included),
    /// and makes it durable before returning: file contents, reserved blocks and name.
    /// An existing segment of that name (an empty one being resized) is replaced.
    pub fn create(dir: &Path, base: u64, capacity: usize, interval: u32) -> Result<Active> {
        let active = Self::create_unsynced(dir, base, capacity, interval)?;
        active.creation().sync(dir)?;
        Ok(active)
    }

    /// [`Active::create`] without making anything durable: [`Creation::sync`] does, and
    /// must have returned before any record of the segment counts as durable. Until
    /// then a crash may leave the file missing, empty or with a zero header.
    pub fn create_unsynced(dir: &Path, base: u64, capacity: usize, interval: u32) -> Result<Active> {
        let seg = Segment::new(dir, base, interval);
        let tmp = temp_path(&seg.path);
        let result = (|| {
            let file =
                std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).at(&tmp)?;
            crate::fs::write_at(&file, &tmp, &header::encode(LOG_MAGIC, base), 0)?;
            reserve(&file, &tmp, capacity as u64)?;
            Ok(file)
        })();
        let file = match result {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        rename(&tmp, &seg.path)?;
        let (index_map, index) = IndexWriter::create(seg.index_path.clone(), base, capacity, interval)?;
        let (_, data) = Mapping::read_write(&file, capacity, FILE_HEADER_LEN).at(&seg.path)?;
        Ok(Self::finish(seg, file, capacity, FILE_HEADER_LEN, index_map, index, data))
    }

    /// Gives this segment, which holds no record yet, room for `capacity` bytes in place:
    /// its file is reserved further and mapped again, with an index sized for it. Its name
    /// and header stay as they are, so nothing that a roll or an open made durable is
    /// replaced, and on failure the segment goes on as it was. (Replacing the file under
    /// its name instead left the writer appending, on a failure after the rename, to a file
    /// no longer in the directory.) The prefault thread is to be asked again.
    pub fn grow(&mut self, capacity: usize) -> Result<()> {
        debug_assert!(self.is_empty() && capacity >= self.capacity);
        let seg = Segment::new_like(&self.seg);
        reserve(&self.file, &seg.path, capacity as u64)?;
        let (_, data) = Mapping::read_write(&self.file, capacity, FILE_HEADER_LEN).at(&seg.path)?;
        let (index_map, index) = IndexWriter::create(seg.index_path.clone(), seg.base, capacity, seg.interval)?;
        *self = Self::finish(seg, self.file.clone(), capacity, FILE_HEADER_LEN, index_map, index, data);
        Ok(())
    }

    /// [`Active::create_unsynced`] from a spare (see [`Spare`]): its header is written and
    /// it is renamed into place.
    pub fn from_spare(dir: &Path, base: u64, spare: Spare, interval: u32) -> Result<Active> {
        let seg = Segment::new(dir, base, interval);
        let Spare { file, map: mut data, capacity } = spare;
        data.write(0, &header::encode(LOG_MAGIC, base));
        data.publish(FILE_HEADER_LEN);
        if let Err(e) = rename(&dir.join(SPARE_NAME), &seg.path) {
            // The spare is dropped: its file would take a segment's room, counted nowhere.
            let _ = std::fs::remove_file(dir.join(SPARE_NAME));
            return Err(e);
        }
        let (index_map, index) = IndexWriter::create(seg.index_path.clone(), base, capacity, interval)?;
        let mut active = Self::finish(seg, file, capacity, FILE_HEADER_LEN, index_map, index, data);
        active.prefaulted = SPARE_PREFAULTED.min(capacity);
        Ok(active)
    }

    /// What makes the segment's creation durable, to run on another thread.
    pub fn creation(&self) -> Creation {
        Creation { path: self.seg.path.clone(), base: self.seg.base }
    }

    /// Reopens the newest segment after the queue was closed or crashed.
    ///
    /// `trusted` is a position known to be on stable storage with the next offset there
    /// (from the checkpoint). With `clean` the data ends exactly there; otherwise the records
    /// after it are checked and the segment is cut after the last valid one, with everything
    /// past the cut zeroed so that old bytes can never parse as records again.
    pub fn recover(
        dir: &Path,
        base: u64,
        min_capacity: usize,
        interval: u32,
        trusted: Option<(usize, u64)>,
        clean: bool,
    ) -> Result<(Active, Recovered)> {
        let seg = Segment::new(dir, base, interval);
        let path = seg.path.clone();
        let file = open_rw(&path, false)?;
        let len = file.metadata().at(&path)?.len() as usize;
        if len < FILE_HEADER_LEN {
            return Err(Error::corrupt(&path, len as u64, CorruptKind::Truncated));
        }
        let view = Mapping::read_only(&file, len).at(&path)?;
        let bytes = view.readable();
        header::check(bytes, LOG_MAGIC, base).map_err(|kind| Error::corrupt(&path, 0, kind))?;
        // The checkpoint is a hint: its position must fall on a batch boundary with the
        // offset it names, and a clean end must have nothing after it.
        let old_index = index::OldIndex::open(&seg.index_path, base, len.max(min_capacity));
        let entries = old_index.trusted(bytes, base);
        let mut kept_damage = None;
        let trusted = match trusted.filter(|&(pos, _)| pos >= FILE_HEADER_LEN) {
            None => None,
            Some((pos, next)) => match landing(bytes, base, entries, pos, next) {
                Landing::Lands => Some((pos, next)),
                Landing::Elsewhere => None,
                // Cutting there would drop records that were acknowledged as durable.
                Landing::Damaged(at, kind) => {
                    kept_damage = Some((at as u64, kind));
                    Some((pos, next))
                }
                // Going on from the records left would hand out their offsets again.
                Landing::Missing(at, from) => {
                    return Err(records_gone(&path, at, from, next));
                }
            },
        };
        let nothing_after = |pos| {
            let next = record::peek(bytes, pos);
            next.is_err_and(|e| e == record::FrameError::Zeroed || e == record::FrameError::Truncated)
        };
        let clean = clean && trusted.is_some_and(|(pos, _)| nothing_after(pos));
        let (start, start_offset) = trusted.unwrap_or((FILE_HEADER_LEN, base));
        let mut recovered = Recovered { next_offset: start_offset, clean, kept_damage, ..Default::default() };
        let end = if recovered.clean {
            start
        } else {
            let scan = scan::valid_prefix(bytes, start, start_offset);
            recovered.next_offset = scan.next_offset;
            recovered.scanned_bytes = (scan.end - start) as u64;
            if let Some((_, kind)) = scan.damage {
                recovered.cut = Some((scan.end as u64, kind));
            }
            scan.end
        };
        // segq never writes a segment past the format's limit (positions are `u32` in the
        // index): records there are not its own, and a longer file's tail is not reserved.
        let limit = crate::options::MAX_SEGMENT_BYTES as usize;
        if end > limit {
            let why = format!("records reach byte {end}, past the format's limit of {limit} bytes a segment");
            return Err(Error::corrupt(&path, limit as u64, CorruptKind::BadHeader(why)));
        }
        let capacity = len.max(min_capacity).min(limit);
        let data = &bytes[..end];
        // Entries landed on records of the whole file; the valid ones start below `end`.
        let kept = &entries[..index::count_below(entries, end) * index::ENTRY_LEN];
        let (index_map, mut index, stopped) =
            IndexWriter::open_active(seg.index_path.clone(), base, capacity, interval, data, &old_index, kept)?;
        // Past damage kept before the mark, stepping cannot find the records after it: the
        // index starts again at the first of them that leads to the mark, else at the mark.
        if let Some(mark) = trusted.filter(|&(pos, _)| recovered.kept_damage.is_some() && stopped.end < pos) {
            let (pos, offset) = stopped.damage();
            index.resume_at(data, base, scan::resync(data, pos, offset, mark).unwrap_or(mark));
        }
        drop(old_index);
        drop(view);
        if !recovered.clean || len > capacity {
            // Bytes past the end may hold records of the crashed run beyond a torn or zeroed
            // stretch; they must never parse as records once new ones are appended before
            // them. Drop those blocks and reserve fresh, zeroed ones.
            file.set_len(end as u64).at(&path)?;
        }
        reserve(&file, &path, capacity as u64)?;
        crate::fs::sync_file_covering(&file, &path, 0..end as u64)?;
        let (_, data) = Mapping::read_write(&file, capacity, end).at(&path)?;
        Ok((Self::finish(seg, file, capacity, end, index_map, index, data), recovered))
    }

    /// The writer of `seg`, whose data `data` maps, readable up to `end`.
    fn finish(
        seg: Segment,
        file: impl Into<Arc<File>>,
        capacity: usize,
        end: usize,
        index_map: Arc<Mapping>,
        index: IndexWriter,
        data: MapWriter,
    ) -> Active {
        seg.synced.store(end, Ordering::Relaxed);
        seg.bytes.store(capacity as u64, Ordering::Relaxed);
        let _ = seg.data.set(data.mapping().clone());
        let _ = seg.index.set(index_map);
        let file = file.into();
        let index_prefaulted = index.len();
        Active {
            seg: Arc::new(seg),
            file,
            data,
            index,
            pos: end,
            capacity,
            prefaulted: end,
            index_prefaulted,
            prefault: None,
        }
    }

    /// The shared side of this segment.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.capacity - self.pos
    }

    /// Whether no record has been written to it.
    pub fn is_empty(&self) -> bool {
        self.pos == FILE_HEADER_LEN
    }

    /// Whether at least half of the segment's room is used.
    pub fn is_half_full(&self) -> bool {
        self.pos >= self.capacity / 2
    }

    /// End of the data written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Writes one record; it becomes readable at the next [`Active::publish`]. The caller
    /// has checked that it fits.
    pub fn write(&mut self, offset: u64, timestamp_ms: u64, payload: &[u8], batch_continues: bool) {
        let header = record::header_without_crc(offset, timestamp_ms, payload.len(), batch_continues);
        let end = self.pos + record::frame_len(payload.len());
        self.index.note(offset - self.seg.base, self.pos);
        self.data.prefetch_for_write(self.pos + WRITE_AHEAD);
        self.data.write(self.pos, &header);
        self.data.write(self.pos + header.len(), payload);
        let crc = record::frame_crc(self.data.unpublished(self.pos..end));
        self.data.write(self.pos, &crc);
        self.pos = end;
    }

    /// Makes everything written so far readable.
    pub fn publish(&mut self) {
        self.data.publish(self.pos);
        if self.pos + prefault::ahead(self.capacity) > self.prefaulted && self.prefaulted < self.capacity {
            self.request_prefault();
        }
    }

    /// Has `tx`'s thread fault in pages ahead of the writer.
    pub fn prefault_with(&mut self, tx: Option<Sender<Job>>) {
        self.prefault = tx;
        self.request_prefault();
    }

    fn request_prefault(&mut self) {
        let Some(tx) = &self.prefault else { return };
        let range = self.prefaulted..(self.prefaulted + prefault::CHUNK).min(self.capacity);
        if range.is_empty() {
            return;
        }
        // The index pages the chunk's records can fill come first: they are needed sooner
        // (one index page takes ~256 KiB of records), and the first store into a fresh
        // one can stall the writer for a millisecond while the kernel zeroes its folio.
        let index_range = self.index_prefaulted..self.index.room_for(range.end);
        if !index_range.is_empty() && tx.send(Job::Populate(self.index.mapping().clone(), index_range.clone())).is_ok()
        {
            self.index_prefaulted = index_range.end;
        }
        if tx.send(Job::Populate(self.data.mapping().clone(), range.clone())).is_ok() {
            self.prefaulted = range.end;
        }
    }

    /// Tells readers that the segment's records end before `end_offset`: nothing more is
    /// written to it, though it may not be sealed yet.
    pub fn end_at(&self, end_offset: u64) {
        self.seg.end_offset.store(end_offset, Ordering::Release);
    }

    /// Seals the segment: syncs its data, cuts the file to the data and syncs the index.
    /// `end_offset` is the first offset past it.
    pub fn seal(self, end_offset: u64) -> Result<()> {
        self.seal_data(end_offset)?.seal()
    }

    /// [`Active::seal`] of the data only: the index, which the caller seals when it suits
    /// it ([`IndexWriter::seal`]), is derived data. Until it is sealed (and after a crash
    /// that comes first) its file is longer than its entries, or they are not durable, and
    /// the next open or read that needs it rebuilds it; in-process readers use its mapping.
    pub fn seal_data(self, end_offset: u64) -> Result<IndexWriter> {
        self.end_at(end_offset);
        // Nothing writes to it again: unmapped, its pages are written back without cleaning
        // page-table entries one by one (each with a TLB flush on every CPU running the
        // process), and the cut below unmaps nothing. Readers fault pages back as they go.
        self.data.mapping().release_pages(0..self.capacity);
        sync_data(&self.seg, self.pos, 0)?;
        self.file.set_len(self.pos as u64).at(&self.seg.path)?;
        // Counted as cut from the cut on, not after its sync: `Stats::bytes_on_disk` sums it.
        self.seg.bytes.store(self.pos as u64, Ordering::Release);
        crate::fs::sync_file(&self.file, &self.seg.path)?;
        Ok(self.index)
    }

    /// Syncs data and index for a clean close.
    pub fn sync_all(&self) -> Result<()> {
        sync_data(&self.seg, self.pos, 0)?;
        self.index.sync()
    }
}

/// What stepping from the last trusted index entry before a checkpoint mark up to the mark
/// finds (framing and offsets only: at most about one index interval while the index holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Landing {
    /// The mark is the end of a batch there, with the next offset it names.
    Lands,
    /// Whole records that do not end a batch at the mark with its offset, or damage that
    /// the mark's next offset does not fit: the mark was not written for this data (by
    /// hand, or for another file), and is dropped.
    Elsewhere,
    /// A damaged record at this position (one that does not frame, or the first on the way
    /// whose checksum fails): damage in data that the mark says was synced. The mark was
    /// written only after that sync, so it still holds.
    Damaged(usize, CorruptKind),
    /// Only zeros, or the end of the file, from this position (where this offset should
    /// start, below the mark's) up to the mark: records the mark says were synced are gone.
    Missing(usize, u64),
}

/// The error for [`Landing::Missing`] at `at` (offset `from`) in the segment file `path`,
/// under a mark that names `next`: the offsets in between are gone.
pub(crate) fn records_gone(path: &Path, at: usize, from: u64, next: u64) -> Error {
    Error::corrupt(path, at as u64, CorruptKind::Gap { from, to: next.max(from) })
}

/// Checks the mark `(pos, next)` against the records of `bytes` (see [`Landing`]), stepping
/// from the last of `entries` (index entries trusted to land) before `pos`.
pub(crate) fn landing(bytes: &[u8], base: u64, entries: &[u8], pos: usize, next: u64) -> Landing {
    // From an entry strictly before `pos`, so that the record ending at `pos` is stepped
    // over and its batch flag seen.
    let start = index::floor_by_position(entries, pos.saturating_sub(1))
        .map_or((FILE_HEADER_LEN, base), |(rel, entry_pos)| (entry_pos as usize, base + u64::from(rel)));
    // Where the records stop framing, the mark's next offset must fit what is known: the
    // records before are there, no more records fit up to the mark than headers do, and
    // the index entries before the mark name records below it. A mark that does not fit
    // was not written for this data (and trusting it could hand out offsets twice).
    let fits = |p: usize, at: u64| {
        let room = ((pos - p) / record::HEADER_LEN) as u64;
        let below = index::count_below(entries, pos);
        let entry_below = below.checked_sub(1).map(|i| index::entry(entries, i));
        next >= at && next - at <= room && entry_below.is_none_or(|(rel, _)| index::names_below(base, rel, next))
    };
    let (mut p, mut at) = start;
    let mut in_batch = false;
    while p < pos {
        let kind = match record::peek(bytes, p) {
            Ok(f) if f.offset == at && at < u64::MAX => {
                p = f.end();
                at += 1;
                in_batch = f.batch_continues;
                continue;
            }
            Ok(f) if f.offset != at => CorruptKind::BadOffset { expected: at, found: f.offset },
            // A record at u64::MAX is damage: no offset can follow it.
            Ok(_) => scan::last_offset_damage(at),
            Err(e) => scan::corrupt_kind(e),
        };
        // A damaged length can still frame, and move where framing breaks off: the first
        // record that fails its checksum on the way is where the damage is.
        if let Some((q, a, kind)) = crc_damage(bytes, start, p) {
            return match fits(q, a) {
                false => Landing::Elsewhere,
                // A file cut short of the mark lost synced records, wherever the damage.
                true if pos > bytes.len() => Landing::Missing(q, a),
                true => Landing::Damaged(q, kind),
            };
        }
        let gone = pos > bytes.len() || bytes[p..pos].iter().all(|&b| b == 0);
        return match (gone, fits(p, at)) {
            // Every offset the mark names is there (only its position is wrong), or it
            // claims what cannot be.
            (true, _) if at >= next => Landing::Elsewhere,
            (_, false) => Landing::Elsewhere,
            (true, true) => Landing::Missing(p, at),
            (false, true) => Landing::Damaged(p, kind),
        };
    }
    if p == pos && at == next && !in_batch {
        return Landing::Lands;
    }
    // A damaged length or flag can step over the mark too: only whole records that pass
    // their checksums say that the mark was not written for them.
    match crc_damage(bytes, start, pos) {
        Some((q, a, kind)) if fits(q, a) => Landing::Damaged(q, kind),
        _ => Landing::Elsewhere,
    }
}

/// The first record from `start` (position, offset) on, before `end`, that fails its
/// checksum: its position, offset and what is wrong. Records are stepped by their lengths,
/// which the caller found to frame up to `end`.
#[cold]
fn crc_damage(bytes: &[u8], (mut p, mut at): (usize, u64), end: usize) -> Option<(usize, u64, CorruptKind)> {
    while p < end {
        match record::decode(bytes, p) {
            Ok(f) => (p, at) = (f.end(), at.saturating_add(1)),
            Err(e) => return Some((p, at, scan::corrupt_kind(e))),
        }
    }
    None
}

/// How many entries before one that does not land a lookup tries, looking for one that
/// does, before it distrusts the whole index: more than damage to a few records explains.
const MAX_ENTRIES_BACK: usize = 16;

/// How far before a guessed record position [`touch`] loads lines: beyond this, the walk
/// from an index entry is long enough for the hardware prefetcher to follow on its own.
const MAX_TOUCH_BEFORE: usize = 1024;

/// How far ahead of its position an append has the CPU fetch lines for writing: a page, so
/// that the lines (zeroed by the prefault thread long before, on the other CPU) and the
/// page's translation are at hand some 30 appends of 100 B later.
const WRITE_AHEAD: usize = 4096;

/// Loads one byte of every cache line of `range` with independent loads, so that the
/// misses overlap instead of being taken one at a time by a walk whose every step depends
/// on the length read by the one before.
fn touch(bytes: &[u8], range: std::ops::Range<usize>) {
    let lines = bytes.get(range.start..range.end.min(bytes.len())).unwrap_or_default();
    let mut acc = 0u8;
    for chunk in lines.chunks(64) {
        acc ^= chunk[0];
    }
    std::hint::black_box(acc);
}

/// The page size the kernel maps (and cleans) files by. Where pages are larger, a release
/// (see [`sync_data`]) grows to whole pages and may take the writer's current page too:
/// that costs it a page fault, never a byte.
const PAGE: usize = 4096;

/// Syncs from this size on release the pages they cover first (see [`sync_data`]).
const RELEASE_BEFORE_SYNC: usize = 64 << 10;

/// Makes the data of `seg` below `end` durable, syncing only what is not yet synced.
///
/// A sync of less than `ahead` bytes that reaches past the pages written back so far also
/// writes back up to `ahead` bytes after `end` that the prefault thread has faulted in,
/// still zero. `fallocate` reserves blocks as unwritten extents, and the first sync into
/// each such block must also convert its extent and write that metadata: ~55 µs here, on
/// top of the ~80 µs of a sync into a block written before. Small syncs (one record, or 16
/// threads' worth in half a block) would pay that every block or every other sync; this
/// way one sync pays it once for `ahead` bytes, with one larger write. Larger syncs convert
/// once for many blocks anyway, and writing zeros ahead of them would only add to what a
/// fast writer sends the disk.
///
/// A sync of at least [`RELEASE_BEFORE_SYNC`] bytes first drops the mapping's page-table
/// entries for the pages below `end` (see [`Mapping::release_pages`]): they are written for
/// good, as appends only go forward. Writing back a page still mapped cleans its entry,
/// with a TLB flush on every CPU that runs the process, one page at a time (under
/// `Interval`, some 1,800 of them every 10 ms at full speed, each interrupting the
/// appender). Readers that come back to those pages map them again.
pub(crate) fn sync_data(seg: &Segment, end: usize, ahead: usize) -> Result<()> {
    let from = seg.synced.load(Ordering::Acquire);
    if from >= end {
        return Ok(());
    }
    let map = seg.data.get().expect("the active segment is mapped from its creation");
    let written_for_good = from / PAGE * PAGE..end / PAGE * PAGE;
    if written_for_good.len() >= RELEASE_BEFORE_SYNC {
        map.release_pages(written_for_good);
    }
    let to = match seg.written_back.load(Ordering::Acquire) {
        written if end > written && end - from < ahead => end.saturating_add(ahead).min(map.populated()).max(end),
        _ => end,
    };
    crate::fs::sync_mapping(map, &seg.path, from..to)?;
    seg.written_back.fetch_max(to, Ordering::AcqRel);
    seg.synced.fetch_max(end, Ordering::AcqRel);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_look_alikes() {
        assert_eq!(log_name(42), "00000000000000000042.log");
        assert_eq!(parse_log_name(&log_name(42)), Some(42));
        assert_eq!(parse_log_name(&log_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.index",
            "00000000000000000042.log.tmp",
            "99999999999999999999.log",
        ] {
            assert_eq!(parse_log_name(bad), None, "{bad}");
        }
    }

    /// Each chunk of data asked to be faulted in comes after the index pages its records
    /// can fill, and every page of the index is asked for once, in order.
    #[test]
    fn the_prefault_thread_is_asked_for_index_pages_before_the_data_that_fills_them() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 3 * prefault::CHUNK;
        let mut active = Active::create(dir.path(), 0, capacity, 512).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        active.prefault_with(Some(tx));
        let (index_map, data_map) = (active.index.mapping().clone(), active.data.mapping().clone());
        let (mut index_end, mut data_end) = (FILE_HEADER_LEN, FILE_HEADER_LEN);
        while data_end < capacity {
            match rx.try_recv() {
                Ok(Job::Populate(map, range)) if Arc::ptr_eq(&map, &index_map) => {
                    assert_eq!(range.start, index_end);
                    index_end = range.end;
                }
                Ok(Job::Populate(map, range)) if Arc::ptr_eq(&map, &data_map) => {
                    assert_eq!(range.start, data_end);
                    assert!(index_end >= FILE_HEADER_LEN + (range.end / 512) * 8, "index pages asked for late");
                    data_end = range.end;
                }
                Ok(_) => panic!("an unexpected job"),
                // Ask for more as a writer far along would.
                Err(_) => active.request_prefault(),
            }
        }
        assert_eq!(index_end, index_map.len());
    }

    /// A sync into blocks not written back before also writes back the faulted-in pages
    /// after the data, once; later syncs below them write only the data, and the bytes past
    /// the data read as zero throughout.
    #[test]
    fn a_sync_into_new_blocks_writes_back_the_faulted_in_pages_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut active = Active::create(dir.path(), 0, 1 << 20, 512).unwrap();
        let seg = active.segment().clone();
        let map = seg.data.get().unwrap().clone();
        map.populate_write(0..256 << 10);
        if map.populated() == 0 {
            return; // a kernel without MADV_POPULATE_WRITE (before 5.14): nothing is ahead
        }
        let written_back = || seg.written_back.load(Ordering::Acquire);

        active.write(0, 1, b"first", false);
        active.publish();
        sync_data(&seg, active.position(), 0).unwrap();
        assert_eq!(written_back(), active.position(), "no write-back ahead was asked for");

        active.write(1, 1, b"second", false);
        active.publish();
        sync_data(&seg, active.position(), 64 << 10).unwrap();
        assert_eq!(written_back(), active.position() + (64 << 10));
        let ahead = written_back();

        active.write(2, 1, b"third", false);
        active.publish();
        sync_data(&seg, active.position(), 64 << 10).unwrap();
        assert_eq!(written_back(), ahead, "the blocks were written back already");
        assert_eq!(seg.synced.load(Ordering::Acquire), active.position());

        // Not past the pages faulted in: those past them are not written back yet.
        seg.written_back.store(0, Ordering::Release);
        seg.synced.store(0, Ordering::Release);
        sync_data(&seg, active.position(), 1 << 20).unwrap();
        assert_eq!(written_back(), 256 << 10);

        // A sync of `ahead` bytes or more writes back only its own range.
        seg.written_back.store(0, Ordering::Release);
        seg.synced.store(0, Ordering::Release);
        sync_data(&seg, active.position(), 16).unwrap();
        assert_eq!(written_back(), active.position());

        let on_disk = std::fs::read(&seg.path).unwrap();
        assert!(on_disk[active.position()..].iter().all(|&b| b == 0));
        assert_eq!(seg.read(2).unwrap().payload(), b"third");
    }
}
