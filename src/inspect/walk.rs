//! Walking the records of one segment file with positional reads, in bounded chunks.

use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};

use super::source::{Source, Window};
use crate::error::{CorruptKind, Error, Result};
use crate::options::MAX_RECORD_LIMIT;
use crate::record::{self, FrameError, HEADER_LEN};
use crate::segment::header::{self, FILE_HEADER_LEN, LOG_MAGIC};
use crate::segment::scan::{self, corrupt_kind, last_offset_damage};

/// Bytes read at a time unless a record needs more.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::SegmentReader;
///
/// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
///
/// use segq::inspect::DEFAULT_CHUNK;
/// // Reads of DEFAULT_CHUNK bytes at a time unless told otherwise.
/// let mut small = SegmentReader::open(reader.path())?.with_chunk_size(DEFAULT_CHUNK / 1024);
/// assert_eq!(small.next_record()?.expect("offset 0").payload, b"hello");
/// # Ok::<(), segq::Error>(())
/// ```
pub const DEFAULT_CHUNK: usize = 4 << 20;

/// Largest frame the walker reads: no payload can be longer than
/// [`crate::Options::max_record_bytes`] allows, so a longer length field is damage and never
/// sizes a read.
const MAX_FRAME: u64 = MAX_RECORD_LIMIT as u64 + HEADER_LEN as u64;

/// Longest stretch [`SegmentReader::resync`] reads into memory to search for records after
/// damage: a whole segment of the default size, several times over.
pub(crate) const MAX_RESYNC_SPAN: u64 = 256 << 20;

/// One record found by [`SegmentReader::next_record`], its checksum and offset checked.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::SegmentReader;
///
/// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
///
/// let record = reader.next_record()?.expect("offset 0");
/// assert_eq!((record.offset, record.position, record.payload), (0, 32, &b"hello"[..]));
/// assert!(!record.batch_continues);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's offset in the queue.
    pub offset: u64,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Byte position of the record's header in the segment file.
    pub position: u64,
    /// Another record of the same batch follows it.
    pub batch_continues: bool,
    /// The payload.
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// Position just past this record in the segment file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// let record = reader.next_record()?.expect("offset 0");
    /// assert_eq!(record.end(), 32 + 24 + 5);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn end(&self) -> u64 {
        self.position + HEADER_LEN as u64 + self.payload.len() as u64
    }
}

/// Why a walk over a segment stopped.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::SegmentReader;
///
/// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
///
/// use segq::inspect::EndReason;
///
/// while reader.next_record()?.is_some() {}
/// // The active segment is preallocated: zeros follow its last record.
/// assert_eq!(reader.end().expect("stopped").reason, EndReason::Zeros);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The file ends right after the last record.
    EndOfFile,
    /// An all-zero record header: nothing was written past this point.
    Zeros,
    /// The bytes at the stop position are not the next record.
    Damage(CorruptKind),
}

/// Where and why a walk over a segment stopped.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::SegmentReader;
///
/// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
///
/// while reader.next_record()?.is_some() {}
/// let end = reader.end().expect("stopped");
/// assert_eq!((end.position, end.next_offset), (61, 1));
/// assert_eq!((end.valid_end, end.valid_next_offset), (61, 1)); // no batch left unfinished
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Position where the walk stopped: just past the last record read.
    pub position: u64,
    /// Offset the record at `position` should have carried.
    pub next_offset: u64,
    /// Why the walk stopped there.
    pub reason: EndReason,
    /// End of the last complete batch: the valid data ends here. Below `position` when the
    /// records after it belong to a batch whose last record is missing.
    pub valid_end: u64,
    /// Offset of the first record past `valid_end`.
    pub valid_next_offset: u64,
}

/// Reads the records of one segment file in order, checking each one's CRC and offset.
///
/// It reads with positional reads in chunks (never a memory map) and never takes the queue's
/// lock, so it is safe on a queue that a writer has open. No buffer is sized by a length
/// read from the file beyond what the file holds and the largest record segq writes.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// use segq::inspect::SegmentReader;
///
/// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
/// while let Some(record) = reader.next_record()? {
///     println!("{} at byte {}: {} bytes", record.offset, record.position, record.payload.len());
/// }
/// println!("stopped: {:?}", reader.end());
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug)]
pub struct SegmentReader {
    path: PathBuf,
    src: Source,
    /// Length of the file as last known.
    len: u64,
    base: u64,
    window: Window,
    chunk: usize,
    pos: u64,
    next_offset: u64,
    valid_end: u64,
    valid_next_offset: u64,
    end: Option<ScanEnd>,
}

impl SegmentReader {
    /// Opens the segment file at `path` and checks its 32-byte header. The base offset is
    /// the one in the file name when it is a segment name (`<20 digits>.log`), else the one
    /// in the header.
    ///
    /// ```
    /// use segq::inspect::SegmentReader;
    /// # let dir = tempfile::tempdir()?;
    /// let not_a_segment = dir.path().join("00000000000000000000.log");
    /// std::fs::write(&not_a_segment, b"hello")?;
    /// assert!(SegmentReader::open(&not_a_segment).is_err()); // shorter than a header
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::Corrupt`] naming the file and the
    /// position if it is shorter than a header or its header is wrong (magic, checksum,
    /// version, base offset).
    pub fn open(path: &Path) -> Result<SegmentReader> {
        let file = crate::fs::open_regular(path).map_err(|e| match dangling_link(path) {
            Some(target) if e.kind() == std::io::ErrorKind::NotFound => Error::io(
                path,
                std::io::Error::new(e.kind(), format!("a symbolic link to {}, which does not exist", target.display())),
            ),
            _ => Error::io(path, e),
        })?;
        SegmentReader::new(path, Source::File(file))
    }

    /// A reader over a segment file's bytes held in memory (for tests and fuzzing); `path`
    /// only names it in errors.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let path = dir.path().join("00000000000000000000.log");
    /// let mut reader = SegmentReader::from_bytes(&path, std::fs::read(&path)?)?;
    /// assert_eq!(reader.next_record()?.expect("offset 0").payload, b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`SegmentReader::open`].
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<SegmentReader> {
        SegmentReader::new(path, Source::Bytes(bytes))
    }

    fn new(path: &Path, src: Source) -> Result<SegmentReader> {
        let len = src.len().map_err(|e| Error::io(path, e))?;
        let mut reader = SegmentReader {
            path: path.to_path_buf(),
            src,
            len,
            base: 0,
            window: Window::default(),
            chunk: DEFAULT_CHUNK,
            pos: FILE_HEADER_LEN as u64,
            next_offset: 0,
            valid_end: FILE_HEADER_LEN as u64,
            valid_next_offset: 0,
            end: None,
        };
        reader.fill(0, FILE_HEADER_LEN)?;
        let (bytes, _) = reader.window.bytes();
        if bytes.len() < FILE_HEADER_LEN {
            return Err(Error::corrupt(path, bytes.len() as u64, CorruptKind::Truncated));
        }
        let named = path.file_name().and_then(|n| n.to_str()).and_then(crate::segment::parse_log_name);
        let base = named.unwrap_or_else(|| LittleEndian::read_u64(&bytes[16..24]));
        header::check(bytes, LOG_MAGIC, base).map_err(|kind| Error::corrupt(path, 0, kind))?;
        reader.base = base;
        reader.seek(FILE_HEADER_LEN as u64, base);
        Ok(reader)
    }

    /// Reads `chunk` bytes at a time (at least a record header's worth) instead of
    /// [`DEFAULT_CHUNK`]. Small chunks are for tests of the chunk boundaries.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// // Tiny reads, to exercise records that straddle two chunks.
    /// let mut tiny = SegmentReader::open(reader.path())?.with_chunk_size(7);
    /// assert_eq!(tiny.next_record()?.expect("offset 0").payload, b"hello");
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn with_chunk_size(mut self, chunk: usize) -> SegmentReader {
        self.chunk = chunk.max(HEADER_LEN);
        self
    }

    /// The segment file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert!(reader.path().ends_with("00000000000000000000.log"));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment's base offset: the offset of its first record.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert_eq!(reader.base(), 0);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length of the file as last seen (it shrinks if a writer cuts the file).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// // The active segment is preallocated to its full size (64 MiB by default).
    /// assert_eq!(reader.file_len(), 64 << 20);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Goes on from `position`, where the record with offset `offset` should start (an
    /// index entry, a checkpoint position, or the end of a previous walk to look for
    /// records appended since). Bytes read before are read again.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// while reader.next_record()?.is_some() {}
    /// reader.seek(32, 0); // back to the first record
    /// assert_eq!(reader.next_record()?.expect("offset 0").offset, 0);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn seek(&mut self, position: u64, offset: u64) {
        self.go_on_at(position, offset);
        self.window.clear();
        if let Ok(len) = self.src.len() {
            self.len = len;
        }
    }

    /// [`SegmentReader::seek`] that keeps the bytes already read: to go on past damage
    /// within the bytes just looked at.
    pub(crate) fn go_on_at(&mut self, position: u64, offset: u64) {
        self.pos = position.max(FILE_HEADER_LEN as u64);
        self.next_offset = offset;
        self.valid_end = self.pos;
        self.valid_next_offset = offset;
        self.end = None;
    }

    /// Where and why the walk stopped, once [`SegmentReader::next_record`] returned `None`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert!(reader.end().is_none()); // still walking
    /// while reader.next_record()?.is_some() {}
    /// assert_eq!(reader.end().expect("stopped").position, 61);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn end(&self) -> Option<&ScanEnd> {
        self.end.as_ref()
    }

    /// Offset the next record should carry.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert_eq!(reader.next_offset(), 0);
    /// reader.next_record()?;
    /// assert_eq!(reader.next_offset(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Position of the next record.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert_eq!(reader.position(), 32); // just past the file header
    /// reader.next_record()?;
    /// assert_eq!(reader.position(), 61);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn fill(&mut self, pos: u64, need: usize) -> Result<()> {
        self.window.ensure(&self.src, &mut self.len, pos, need, self.chunk).map_err(|e| Error::io(&self.path, e))
    }

    fn stop(&mut self, reason: EndReason) {
        self.end = Some(ScanEnd {
            position: self.pos,
            next_offset: self.next_offset,
            reason,
            valid_end: self.valid_end,
            valid_next_offset: self.valid_next_offset,
        });
    }

    /// The next record, or `None` when the walk has stopped: see [`SegmentReader::end`]
    /// for where and why. Damage ends the walk; it is not an error.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert_eq!(reader.next_record()?.map(|r| r.payload.to_vec()), Some(b"hello".to_vec()));
    /// assert!(reader.next_record()?.is_none());
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// Only [`Error::Io`], when a read fails.
    pub fn next_record(&mut self) -> Result<Option<RecordView<'_>>> {
        if self.end.is_some() {
            return Ok(None);
        }
        loop {
            let pos = self.pos;
            if pos >= self.len {
                self.stop(EndReason::EndOfFile);
                return Ok(None);
            }
            self.fill(pos, HEADER_LEN)?;
            let (bytes, start) = self.window.bytes();
            let at = (pos - start) as usize;
            let frame = match record::decode(bytes, at) {
                Ok(frame) => frame,
                Err(FrameError::Zeroed) => {
                    self.stop(EndReason::Zeros);
                    return Ok(None);
                }
                Err(FrameError::BadLength(len)) => {
                    let frame_end = pos.saturating_add(HEADER_LEN as u64).saturating_add(len);
                    if len + (HEADER_LEN as u64) <= MAX_FRAME && frame_end <= self.len && self.window.end() < frame_end
                    {
                        self.fill(pos, HEADER_LEN + len as usize)?;
                        continue;
                    }
                    self.stop(EndReason::Damage(CorruptKind::BadLength { len }));
                    return Ok(None);
                }
                Err(e) => {
                    self.stop(EndReason::Damage(corrupt_kind(e)));
                    return Ok(None);
                }
            };
            if frame.offset != self.next_offset {
                let kind = CorruptKind::BadOffset { expected: self.next_offset, found: frame.offset };
                self.stop(EndReason::Damage(kind));
                return Ok(None);
            }
            let Some(next) = frame.offset.checked_add(1) else {
                self.stop(EndReason::Damage(last_offset_damage(frame.offset)));
                return Ok(None);
            };
            self.pos = start + frame.end() as u64;
            self.next_offset = next;
            if !frame.batch_continues {
                self.valid_end = self.pos;
                self.valid_next_offset = self.next_offset;
            }
            let (bytes, _) = self.window.bytes();
            return Ok(Some(RecordView {
                offset: frame.offset,
                timestamp_ms: frame.timestamp_ms,
                position: pos,
                batch_continues: frame.batch_continues,
                payload: &bytes[frame.payload],
            }));
        }
    }

    /// Where the record whose header is at `position` claims to end, judging by its length
    /// field alone (no checksum): where the next record would start. `None` when no record
    /// header is there.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert_eq!(reader.claimed_frame_end(32)?, Some(61));
    /// assert_eq!(reader.claimed_frame_end(61)?, None); // zeros: no record header there
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when a read fails.
    pub fn claimed_frame_end(&mut self, position: u64) -> Result<Option<u64>> {
        self.fill(position, HEADER_LEN)?;
        let (bytes, start) = self.window.bytes();
        let Some(at) = position.checked_sub(start) else { return Ok(None) };
        Ok(match record::peek(bytes, at as usize) {
            Ok(frame) => Some(start + frame.end() as u64),
            Err(FrameError::BadLength(len)) => Some(position + HEADER_LEN as u64 + len),
            Err(_) => None,
        })
    }

    /// The record whose header is at `position`, framed by its length alone (no checksum),
    /// as its offset and the position just past it; `None` if no record frames there (no
    /// header, or a length that runs past the file). Reads the header only.
    pub(crate) fn frame_at(&mut self, position: u64) -> Result<Option<(u64, u64)>> {
        let mut header = [0u8; HEADER_LEN];
        let read = self.src.read_full(&mut header, position).map_err(|e| Error::io(&self.path, e))?;
        if read < HEADER_LEN {
            return Ok(None);
        }
        Ok(record::claims(&header)
            .and_then(|(offset, len)| Some((offset, position.checked_add(len as u64)?)))
            .filter(|&(_, end)| end <= self.len))
    }

    /// [`scan::resync`] over the bytes from `position` (where the record with offset
    /// `offset` should start, and does not frame) to `end`, a record boundary known from
    /// elsewhere, with the offset there. `None` also when that stretch is longer than
    /// [`MAX_RESYNC_SPAN`], which is not read. The stretch is read into a buffer of its own,
    /// one such search at a time in the process: its memory is given back at once.
    pub(crate) fn resync(&mut self, position: u64, offset: u64, end: (u64, u64)) -> Result<Option<(u64, u64)>> {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let Some(span) = end.0.checked_sub(position).filter(|&span| span <= MAX_RESYNC_SPAN) else { return Ok(None) };
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = vec![0u8; span as usize];
        let read = self.src.read_full(&mut bytes, position).map_err(|e| Error::io(&self.path, e))?;
        bytes.truncate(read);
        let found = scan::resync(&bytes, 0, offset, (span as usize, end.1));
        Ok(found.map(|(at, offset)| (position + at as u64, offset)))
    }

    /// Position of the first byte that is not zero at or after `from`, reading to the end of
    /// the file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::SegmentReader;
    ///
    /// let mut reader = SegmentReader::open(&dir.path().join("00000000000000000000.log"))?;
    ///
    /// assert_eq!(reader.first_nonzero(0)?, Some(0)); // the file header
    /// assert_eq!(reader.first_nonzero(61)?, None); // zeros to the end of the file
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] when a read fails.
    pub fn first_nonzero(&mut self, from: u64) -> Result<Option<u64>> {
        for run in self.src.data_runs(from, self.len, MAX_DATA_RUNS) {
            let mut pos = run.start;
            while pos < run.end.min(self.len) {
                self.fill(pos, self.chunk)?;
                let (bytes, start) = self.window.bytes();
                let slice = &bytes[(pos - start) as usize..];
                let slice = &slice[..slice.len().min((run.end - pos) as usize)];
                if slice.is_empty() {
                    return Ok(None); // the file is shorter now
                }
                if let Some(i) = first_nonzero(slice) {
                    return Ok(Some(pos + i as u64));
                }
                pos += slice.len() as u64;
            }
        }
        Ok(None)
    }
}

/// How many stretches of data [`SegmentReader::first_nonzero`] asks the file system for
/// before it reads the rest of the file whole: a file of many small holes costs a bounded
/// number of calls, and no more reading than a file without holes.
const MAX_DATA_RUNS: usize = 4096;

/// Where the symbolic link at `path` points, if it is one and what it points to does not
/// exist: then `path` is not gone (deleted by retention) but broken.
pub(crate) fn dangling_link(path: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(path).ok()?;
    let broken = matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    broken.then_some(target)
}

/// Index of the first byte that is not zero, checking 16 bytes at a time.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(16);
    for (i, c) in chunks.by_ref().enumerate() {
        if u128::from_ne_bytes(c.try_into().expect("16 bytes")) != 0 {
            return c.iter().position(|&b| b != 0).map(|j| i * 16 + j);
        }
    }
    let done = bytes.len() - chunks.remainder().len();
    chunks.remainder().iter().position(|&b| b != 0).map(|j| done + j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::scan;
    use proptest::prelude::*;

    fn segment(base: u64, records: &[(Vec<u8>, bool)]) -> Vec<u8> {
        let mut bytes = header::encode(LOG_MAGIC, base).to_vec();
        for (i, (payload, more)) in records.iter().enumerate() {
            bytes.extend_from_slice(&record::encode_header(base + i as u64, 1000 + i as u64, payload, *more));
            bytes.extend_from_slice(payload);
        }
        bytes
    }

    fn walk(bytes: &[u8], chunk: usize) -> (Vec<(u64, u64, Vec<u8>)>, ScanEnd) {
        let name = Path::new("00000000000000000007.log");
        let mut r = SegmentReader::from_bytes(name, bytes.to_vec()).unwrap().with_chunk_size(chunk);
        let mut seen = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            seen.push((rec.offset, rec.position, rec.payload.to_vec()));
        }
        (seen, r.end().unwrap().clone())
    }

    #[test]
    fn records_across_chunk_boundaries_are_read_whole() {
        let records: Vec<_> = (0..20).map(|i| (vec![i as u8; i * 7], i % 3 == 1)).collect();
        let bytes = segment(7, &records);
        for chunk in [1, 24, 25, 31, 100, 1 << 20] {
            let (seen, end) = walk(&bytes, chunk);
            assert_eq!(seen.len(), 20, "chunk {chunk}");
            assert_eq!(seen[5].2, vec![5u8; 35]);
            assert_eq!((end.reason, end.position, end.next_offset), (EndReason::EndOfFile, bytes.len() as u64, 27));
        }
    }

    #[test]
    fn a_huge_length_is_damage_not_an_allocation() {
        let mut bytes = segment(7, &[(b"abc".to_vec(), false)]);
        let at = bytes.len();
        bytes.extend_from_slice(&record::encode_header(8, 0, b"", false));
        LittleEndian::write_u32(&mut bytes[at + 4..], u32::MAX);
        let (seen, end) = walk(&bytes, 64);
        assert_eq!(seen.len(), 1);
        assert_eq!(end.reason, EndReason::Damage(CorruptKind::BadLength { len: 0x7fff_ffff }));
        assert_eq!(end.position, at as u64);
    }

    #[test]
    fn hostile_headers_name_the_position() {
        let name = Path::new("x.log");
        let short = SegmentReader::from_bytes(name, vec![1; 10]).unwrap_err();
        assert!(matches!(short, Error::Corrupt { position: 10, kind: CorruptKind::Truncated, .. }));
        let magic = SegmentReader::from_bytes(name, vec![0; 64]).unwrap_err();
        assert!(matches!(magic, Error::Corrupt { position: 0, kind: CorruptKind::BadMagic, .. }));
        let empty = SegmentReader::from_bytes(name, vec![]).unwrap_err();
        assert!(matches!(empty, Error::Corrupt { position: 0, kind: CorruptKind::Truncated, .. }));
    }

    /// Past the data of a sparse file, holes are skipped and a stray byte after one is
    /// still found (a hostile file may be a terabyte of hole: reading it took minutes).
    #[test]
    fn a_sparse_file_is_searched_for_stray_bytes_without_reading_its_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000007.log");
        let bytes = segment(7, &[(b"a".to_vec(), false), (b"b".to_vec(), false)]);
        let end = bytes.len() as u64;
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(8 << 30).unwrap();
        let mut r = SegmentReader::open(&path).unwrap();
        while r.next_record().unwrap().is_some() {}
        assert_eq!(r.first_nonzero(end).unwrap(), None);
        file.write_all_at(b"x", 6 << 30).unwrap();
        let mut r = SegmentReader::open(&path).unwrap();
        while r.next_record().unwrap().is_some() {}
        assert_eq!(r.first_nonzero(end).unwrap(), Some(6 << 30));
    }

    /// Past the data of a preallocated file (a segment's room: unwritten blocks), the
    /// blocks are skipped, though reading the records had the kernel read ahead into them:
    /// zeros in the page cache count as data for `SEEK_DATA`, so asking again after each
    /// chunk read the whole room (4 GiB in 24 s for `segq verify` of a closed queue with
    /// the largest segments). Checked by the page cache: reading the room fills it.
    #[test]
    fn a_preallocated_file_is_searched_for_stray_bytes_without_reading_its_room() {
        use std::os::unix::fs::FileExt;
        const ROOM: u64 = 1 << 30;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000007.log");
        // Whether the file system sees data (blocks or cached pages) halfway into the room.
        let far = || rustix::fs::seek(std::fs::File::open(&path).unwrap(), rustix::fs::SeekFrom::Data(ROOM / 2)).ok();
        let bytes = segment(7, &[(b"a".to_vec(), false), (b"b".to_vec(), false)]);
        let end = bytes.len() as u64;
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        crate::fs::reserve(&file, &path, ROOM).unwrap();
        if far().is_some() {
            eprintln!("this file system does not tell unwritten blocks from data: nothing to check");
            return;
        }
        let mut r = SegmentReader::open(&path).unwrap();
        while r.next_record().unwrap().is_some() {}
        assert_eq!(r.first_nonzero(end).unwrap(), None);
        assert_eq!(far(), None, "the search read the preallocated room");
        // A stray byte in the room is still found.
        file.write_all_at(b"x", ROOM - 1).unwrap();
        let mut r = SegmentReader::open(&path).unwrap();
        while r.next_record().unwrap().is_some() {}
        assert_eq!(r.first_nonzero(end).unwrap(), Some(ROOM - 1));
    }

    #[test]
    fn first_nonzero_finds_the_first_byte() {
        let mut v = vec![0u8; 100];
        assert_eq!(first_nonzero(&v), None);
        v[99] = 1;
        assert_eq!(first_nonzero(&v), Some(99));
        v[17] = 3;
        assert_eq!(first_nonzero(&v), Some(17));
    }

    /// Records, then optionally a damaged byte and trailing zeros.
    fn arb_segment() -> impl Strategy<Value = Vec<u8>> {
        let records = prop::collection::vec((prop::collection::vec(any::<u8>(), 0..80), any::<bool>()), 0..12);
        (records, any::<Option<(prop::sample::Index, u8)>>(), 0..64usize, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(records, flip, zeros, junk)| {
                let mut bytes = segment(7, &records);
                if let Some((i, x)) = flip {
                    let i = FILE_HEADER_LEN + i.index(bytes.len() - FILE_HEADER_LEN + 1);
                    if i < bytes.len() {
                        bytes[i] ^= x | 1;
                    }
                }
                bytes.extend(std::iter::repeat_n(0, zeros));
                bytes.extend(junk);
                bytes
            })
    }

    proptest! {
        /// The chunked walk agrees with the crate's own scan over the whole bytes, whatever
        /// the chunk size.
        #[test]
        fn the_chunked_walk_agrees_with_valid_prefix(bytes in arb_segment(), chunk in 1usize..200) {
            let scan = scan::valid_prefix(&bytes, FILE_HEADER_LEN, 7);
            let (_, end) = walk(&bytes, chunk);
            prop_assert_eq!(end.valid_end, scan.end as u64);
            prop_assert_eq!(end.valid_next_offset, scan.next_offset);
            match (&end.reason, &scan.damage) {
                (EndReason::Damage(kind), Some((pos, expected))) => {
                    prop_assert_eq!(kind, expected);
                    prop_assert_eq!(end.position, *pos as u64);
                }
                (EndReason::EndOfFile | EndReason::Zeros, None) => {}
                // The data ended inside a batch: the scan reports the torn batch as damage.
                (EndReason::EndOfFile | EndReason::Zeros, Some((pos, _))) if end.valid_end < end.position => {
                    prop_assert_eq!(end.position, *pos as u64);
                }
                (reason, damage) => prop_assert!(false, "walk ended with {:?}, scan with {:?}", reason, damage),
            }
        }
    }
}
