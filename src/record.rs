//! The record frame: how one record is laid out in a segment, and the public [`Record`].
//!
//! Frame grammar (integers little-endian):
//! `crc: u32 | len_flags: u32 | offset: u64 | timestamp_ms: u64 | payload: [u8; len]`
//! where `len = len_flags & LEN_MASK`, bit 31 of `len_flags` says "another record of the
//! same batch follows", and `crc` is CRC-32 (IEEE) of every byte after it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use crate::crc;
use crate::mmap::Mapping;

const CRC_AT: usize = 0;
const LEN_AT: usize = CRC_AT + 4;
/// Where a record's offset lies in its header.
pub(crate) const OFFSET_AT: usize = LEN_AT + 4;
const TIMESTAMP_AT: usize = OFFSET_AT + 8;
/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = TIMESTAMP_AT + 8;

/// Bits of `len_flags` that hold the payload length.
const LEN_MASK: u32 = 0x7fff_ffff;
/// Bit of `len_flags` set on every record of a batch but its last.
const BATCH_CONTINUES: u32 = 0x8000_0000;

/// Wall-clock milliseconds since the Unix epoch, from the coarse clock: it is read on every
/// append, and costs a few nanoseconds instead of ~25 for the precise one, at a resolution
/// of a few milliseconds (one kernel tick).
pub(crate) fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    (t.tv_sec.max(0) as u64) * 1000 + (t.tv_nsec.max(0) as u64) / 1_000_000
}

/// How far a record's timestamp may lie behind the wall clock at its append: the coarse
/// clock moves once a tick (its resolution, 1–10 ms), and a tick can come late (5.9 ms
/// behind with 4 ms ticks was the most seen on this project's VMs), so two ticks, and a
/// millisecond for the rounding down of both readings.
pub(crate) fn timestamp_lag_ms() -> u64 {
    let tick = rustix::time::clock_getres(rustix::time::ClockId::RealtimeCoarse);
    let tick_ns = (tick.tv_sec.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(tick.tv_nsec.max(0) as u64);
    2 * tick_ns.div_ceil(1_000_000) + 1
}

/// Bytes a record with this payload length takes in a segment.
pub(crate) fn frame_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// Builds the header of a record; the payload follows it verbatim.
#[cfg(test)]
pub(crate) fn encode_header(offset: u64, timestamp_ms: u64, payload: &[u8], batch_continues: bool) -> [u8; HEADER_LEN] {
    let mut header = header_without_crc(offset, timestamp_ms, payload.len(), batch_continues);
    let mut hasher = crc::hasher();
    hasher.update(&header[LEN_AT..]);
    hasher.update(payload);
    LittleEndian::write_u32(&mut header[CRC_AT..], hasher.finalize());
    header
}

/// A header with its CRC field left zero, for a writer that checksums the frame in place
/// with [`frame_crc`] once the payload is next to it.
pub(crate) fn header_without_crc(
    offset: u64,
    timestamp_ms: u64,
    len: usize,
    batch_continues: bool,
) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    let len_flags = len as u32 | if batch_continues { BATCH_CONTINUES } else { 0 };
    LittleEndian::write_u32(&mut header[LEN_AT..], len_flags);
    LittleEndian::write_u64(&mut header[OFFSET_AT..], offset);
    LittleEndian::write_u64(&mut header[TIMESTAMP_AT..], timestamp_ms);
    header
}

/// The CRC of a whole frame (`frame` from its start to the end of its payload), to be
/// stored in its first four bytes. One pass over contiguous bytes is cheaper than two.
pub(crate) fn frame_crc(frame: &[u8]) -> [u8; 4] {
    crc::crc32(&frame[LEN_AT..]).to_le_bytes()
}

/// A record frame found in a byte buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    pub offset: u64,
    pub timestamp_ms: u64,
    /// Where the payload lies in the buffer that was decoded.
    pub payload: Range<usize>,
    pub batch_continues: bool,
}

impl Frame {
    /// Position just past this frame.
    pub fn end(&self) -> usize {
        self.payload.end
    }
}

/// Why the bytes at a position are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes remain than a header needs.
    Truncated,
    /// The header is all zeros: nothing was ever written here (the end of the data).
    Zeroed,
    /// The length runs past the end of the buffer.
    BadLength(u64),
    /// The checksum does not match.
    BadCrc { expected: u32, actual: u32 },
}

/// Reads the header at `pos` without checking the CRC: enough to step to the next record.
#[inline]
pub(crate) fn peek(bytes: &[u8], pos: usize) -> Result<Frame, FrameError> {
    let Some(header) =
        bytes.get(pos..pos.saturating_add(HEADER_LEN)).and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
    else {
        return Err(short_tail(bytes, pos));
    };
    let crc_len = LittleEndian::read_u64(&header[CRC_AT..]);
    let offset = LittleEndian::read_u64(&header[OFFSET_AT..]);
    let timestamp_ms = LittleEndian::read_u64(&header[TIMESTAMP_AT..]);
    if crc_len | offset | timestamp_ms == 0 {
        return Err(FrameError::Zeroed);
    }
    let len_flags = (crc_len >> 32) as u32;
    let len = (len_flags & LEN_MASK) as usize;
    let start = pos + HEADER_LEN;
    if len > bytes.len() - start {
        return Err(FrameError::BadLength(len as u64));
    }
    Ok(Frame { offset, timestamp_ms, payload: start..start + len, batch_continues: len_flags & BATCH_CONTINUES != 0 })
}

/// The offset a record header claims and the length of its whole frame, for a reader that
/// holds only the header; `None` for a zeroed one. Whether the frame fits is the caller's.
pub(crate) fn claims(header: &[u8; HEADER_LEN]) -> Option<(u64, usize)> {
    let frame = peek(header, 0);
    let len = match frame {
        Ok(f) => f.payload.len(),
        Err(FrameError::BadLength(len)) => usize::try_from(len).ok()?,
        Err(_) => return None,
    };
    Some((LittleEndian::read_u64(&header[OFFSET_AT..]), HEADER_LEN + len))
}

/// Fewer bytes than a header are left at `pos`. Zeros are the end of the data: a record
/// filled the segment to within a header of its end. Anything else is a header cut short.
#[cold]
fn short_tail(bytes: &[u8], pos: usize) -> FrameError {
    match bytes.get(pos..) {
        Some(rest) if !rest.is_empty() && rest.iter().all(|&b| b == 0) => FrameError::Zeroed,
        _ => FrameError::Truncated,
    }
}

/// Decodes and checksums the record at `pos`.
#[inline]
pub(crate) fn decode(bytes: &[u8], pos: usize) -> Result<Frame, FrameError> {
    let frame = peek(bytes, pos)?;
    let expected = LittleEndian::read_u32(&bytes[pos + CRC_AT..]);
    let actual = crc::crc32(&bytes[pos + LEN_AT..frame.end()]);
    if actual != expected {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(frame)
}

/// Most records [`decode_run`] checksums side by side.
const MAX_SIDE_BY_SIDE: usize = 16;
/// Records are checksummed side by side while they cover fewer bytes than this together,
/// each at most [`SIDE_BY_SIDE_SPAN`]. Framing them first reads ahead of the checksums, and
/// checksumming them side by side reads them as so many streams at once: over more than a
/// few kilobytes (or for longer records), the hardware prefetcher no longer keeps up, and
/// reading from memory costs more than the side-by-side CRCs save.
const SIDE_BY_SIDE_BYTES: usize = 2048;
/// See [`SIDE_BY_SIDE_BYTES`].
const SIDE_BY_SIDE_SPAN: usize = 300;

/// Decodes records from `pos` on, whose offsets must run from `offset` on, into `frames`
/// until it is full; returns how many, having stopped before the first that is not whole,
/// does not check or has another offset. It builds no error ([`decode`] tells why). The
/// iterator's fast path: the CRCs of consecutive records are independent, so it frames a
/// few short ones with [`peek`], then checksums them side by side where the CPU can (see
/// [`crc::side_by_side`]); other records one by one.
#[inline]
pub(crate) fn decode_run(bytes: &[u8], mut pos: usize, offset: u64, frames: &mut [Frame]) -> usize {
    let side_by_side = crc::side_by_side();
    let mut done = 0;
    while done < frames.len() {
        let expected = offset.checked_add(done as u64);
        let Some(frame) = peek(bytes, pos).ok().filter(|f| Some(f.offset) == expected) else { break };
        let span = &bytes[pos + LEN_AT..frame.end()];
        if span.len() > SIDE_BY_SIDE_SPAN || !side_by_side {
            // Alone, as `decode` checks it.
            if crc::crc32(span) != LittleEndian::read_u32(&bytes[pos + CRC_AT..]) {
                break;
            }
            pos = frame.end();
            frames[done] = frame;
            done += 1;
            continue;
        }
        // Where the next records lie does not wait for the checksums: a failure takes a branch.
        match decode_side_by_side(bytes, pos, frame.offset, &mut frames[done..]) {
            Ok((framed, end)) => (done, pos) = (done + framed, end),
            Err(checked) => return done + checked,
        }
    }
    done
}

/// Frames short records from `pos` on into `frames` within the side-by-side limits (the
/// first is known to be one), and checksums them together: how many it framed and where
/// they end, or how many check before the first that does not.
#[inline]
fn decode_side_by_side(bytes: &[u8], pos: usize, offset: u64, frames: &mut [Frame]) -> Result<(usize, usize), usize> {
    let mut spans: [&[u8]; MAX_SIDE_BY_SIDE] = [&[]; MAX_SIDE_BY_SIDE];
    let mut stored = [0; MAX_SIDE_BY_SIDE];
    let (mut framed, mut at) = (0, pos);
    // Not `offset..`: stepping past `u64::MAX` panics in a debug build; no record follows it.
    let offsets = (0..MAX_SIDE_BY_SIDE as u64).map_while(|i| offset.checked_add(i));
    for (slot, offset) in frames.iter_mut().take(MAX_SIDE_BY_SIDE).zip(offsets) {
        let Some(frame) = peek(bytes, at).ok().filter(|f| f.offset == offset) else { break };
        let span = &bytes[at + LEN_AT..frame.end()];
        if span.len() > SIDE_BY_SIDE_SPAN {
            break;
        }
        (spans[framed], stored[framed]) = (span, LittleEndian::read_u32(&bytes[at + CRC_AT..]));
        at = frame.end();
        *slot = frame;
        framed += 1;
        if at - pos >= SIDE_BY_SIDE_BYTES {
            break;
        }
    }
    let mut actual = [0; MAX_SIDE_BY_SIDE];
    crc::crc32_each(&spans[..framed], &mut actual[..framed]);
    match actual[..framed].iter().zip(&stored).position(|(actual, stored)| actual != stored) {
        Some(checked) => Err(checked),
        None => Ok((framed, at)),
    }
}

/// One record read from the queue.
///
/// The payload is not copied: it is read straight from the memory-mapped segment, which the
/// record keeps alive, so a `Record` stays valid even after its segment is deleted by
/// retention or the queue is closed.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let q = segq::Queue::open(dir.path(), segq::Options::default()).unwrap();
/// let off = q.append(b"hello")?;
/// let rec = q.read(off)?.expect("just appended");
/// assert_eq!(rec.offset(), off);
/// assert_eq!(rec.payload(), b"hello");
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Clone)]
pub struct Record {
    map: Arc<Mapping>,
    payload: Range<usize>,
    offset: u64,
    timestamp_ms: u64,
}

impl Record {
    pub(crate) fn new(map: Arc<Mapping>, frame: Frame) -> Record {
        Record { map, payload: frame.payload, offset: frame.offset, timestamp_ms: frame.timestamp_ms }
    }

    /// The record's offset: its position in the queue, counted from 0.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let offsets: Vec<u64> = q.iter_from(1).map(|r| r.map(|r| r.offset())).collect::<Result<_, _>>()?;
    /// assert_eq!(offsets, [1, 2]);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[inline]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// When it was appended, in milliseconds since the Unix epoch (the appender's clock).
    ///
    /// It is read from a coarse clock, to a few milliseconds: it may be a little earlier
    /// than a [`std::time::SystemTime::now`] taken just before the append. All the records of
    /// one batch carry the same timestamp.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let rec = q.read(q.append(b"tick")?)?.expect("just appended");
    /// let appended = UNIX_EPOCH + Duration::from_millis(rec.timestamp_ms());
    /// let age = SystemTime::now().duration_since(appended)?;
    /// assert!(age < Duration::from_secs(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The bytes that were appended.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let rec = q.read(q.append(b"hello")?)?.expect("just appended");
    /// q.close()?;
    /// assert_eq!(rec.payload(), b"hello"); // the record keeps its segment mapped
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.map.bytes(self.payload.clone()).expect("a record only covers published bytes")
    }
}

/// A record lent by [`crate::Iter::next_ref`]: like a [`Record`], but borrowed from the
/// iterator, so that handing it out touches no reference count.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append_batch(&[b"skip".as_slice(), b"keep"])?;
/// let mut it = q.iter_from(0);
/// let mut kept = Vec::new();
/// while let Some(record) = it.next_ref() {
///     let record = record?;
///     if record.payload() == b"keep" {
///         kept.push(record.to_record()); // outlives the iterator
///     }
/// }
/// drop(it);
/// assert_eq!(kept[0].offset(), 1);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    map: &'a Arc<Mapping>,
    payload: &'a [u8],
    /// Where `payload` starts in `map`, for `to_record`.
    start: usize,
    offset: u64,
    timestamp_ms: u64,
}

impl<'a> RecordRef<'a> {
    pub(crate) fn new(map: &'a Arc<Mapping>, frame: Frame) -> RecordRef<'a> {
        let start = frame.payload.start;
        let payload = map.bytes(frame.payload).expect("a record only covers published bytes");
        RecordRef { map, payload, start, offset: frame.offset, timestamp_ms: frame.timestamp_ms }
    }

    /// The record's offset: its position in the queue, counted from 0.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let mut it = q.iter_from(1);
    /// assert_eq!(it.next_ref().expect("offset 1")?.offset(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[inline]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// When it was appended, in milliseconds since the Unix epoch; see
    /// [`Record::timestamp_ms`].
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// use std::time::{SystemTime, UNIX_EPOCH};
    ///
    /// q.append(b"event")?;
    /// let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    /// let mut it = q.iter_from(0);
    /// assert!(it.next_ref().expect("offset 0")?.timestamp_ms() <= now_ms);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[inline]
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The bytes that were appended, straight from the memory-mapped segment.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"invoice 17")?;
    /// let mut it = q.iter_from(0);
    /// assert_eq!(it.next_ref().expect("offset 0")?.payload(), b"invoice 17");
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// An owned [`Record`] of the same bytes, which keeps the segment mapped (no copy).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"kept")?;
    /// let mut it = q.iter_from(0);
    /// let record = it.next_ref().expect("offset 0")?.to_record();
    /// drop(it);
    /// assert_eq!(record.payload(), b"kept");
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn to_record(&self) -> Record {
        Record {
            map: self.map.clone(),
            payload: self.start..self.start + self.payload.len(),
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordRef")
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(offset: u64, payload: &[u8], more: bool) -> Vec<u8> {
        let mut buf = encode_header(offset, 1234, payload, more).to_vec();
        buf.extend_from_slice(payload);
        buf
    }

    #[test]
    fn round_trips_offset_timestamp_payload_and_batch_flag() {
        let buf = frame_bytes(42, b"payload", true);
        let frame = decode(&buf, 0).unwrap();
        assert_eq!(frame.offset, 42);
        assert_eq!(frame.timestamp_ms, 1234);
        assert_eq!(&buf[frame.payload.clone()], b"payload");
        assert!(frame.batch_continues);
        assert_eq!(frame.end(), buf.len());
    }

    #[test]
    fn empty_payload_is_a_valid_record() {
        let buf = frame_bytes(0, b"", false);
        assert_eq!(decode(&buf, 0).unwrap().payload, HEADER_LEN..HEADER_LEN);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let buf = frame_bytes(7, b"some bytes", false);
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad, 0).is_err(), "flip of bit {bit} in byte {i} went unnoticed");
            }
        }
    }

    /// Records up to offset `u64::MAX` (only a hand-made file has them) and one more, numbered
    /// as if offsets wrapped: decoded up to `u64::MAX`, without stepping past it (a panic in
    /// a debug build).
    #[test]
    fn a_run_ends_at_offset_u64_max() {
        let mut buf = Vec::new();
        for offset in [u64::MAX - 2, u64::MAX - 1, u64::MAX, 0] {
            buf.extend(frame_bytes(offset, b"short", false));
        }
        let mut frames = vec![Frame { offset: 0, timestamp_ms: 0, payload: 0..0, batch_continues: false }; 8];
        assert_eq!(decode_run(&buf, 0, u64::MAX - 2, &mut frames), 3);
        assert_eq!(frames[2].offset, u64::MAX);
    }

    /// Records of these payload lengths one after another, offsets from 10 on.
    fn run_bytes(lens: &[usize]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            buf.extend(frame_bytes(10 + i as u64, &payload, false));
        }
        buf
    }

    /// `decode_run` over `buf` for up to `count` records: the frames it found.
    fn run(buf: &[u8], count: usize) -> Vec<Frame> {
        let mut frames = vec![Frame::default(); count];
        let found = decode_run(buf, 0, 10, &mut frames);
        frames.truncate(found);
        frames
    }

    /// What `decode` finds one record after another, up to `count`.
    fn one_by_one(buf: &[u8], count: usize) -> Vec<Frame> {
        let mut frames: Vec<Frame> = Vec::new();
        let mut pos = 0;
        while frames.len() < count {
            let Ok(frame) = decode(buf, pos) else { break };
            if frame.offset != 10 + frames.len() as u64 {
                break;
            }
            pos = frame.end();
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn a_run_finds_what_decode_finds_for_short_long_and_mixed_records() {
        let cases: [&[usize]; 6] = [
            &[100; 40],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            &[281, 280, 279, 2000, 100, 100, 5000, 0, 280, 281],
            &[100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 2],
            &[17, 40, 250, 33, 120, 1000, 64, 65, 90, 18, 19, 1],
            &[],
        ];
        for lens in cases {
            let buf = run_bytes(lens);
            for count in [1, 2, 5, 8, 9, 16] {
                assert_eq!(run(&buf, count), one_by_one(&buf, count), "{count} of {lens:?}");
            }
        }
    }

    #[test]
    fn a_run_stops_before_damage_a_wrong_offset_or_the_end() {
        let layouts: [&[usize]; 2] = [&[100; 16], &[100, 400, 100, 100, 2000, 100, 30, 30]];
        for lens in layouts {
            let buf = run_bytes(lens);
            let mut start = 0;
            for (damaged, len) in lens.iter().enumerate() {
                // A flipped payload bit, then a flipped offset (its CRC fails too, but the
                // offset is looked at first).
                for at in [start + HEADER_LEN + len / 2, start + OFFSET_AT] {
                    let mut bad = buf.clone();
                    bad[at] ^= 4;
                    assert_eq!(run(&bad, 16).len(), damaged, "damage at byte {at} of {lens:?}");
                }
                start += frame_len(*len);
            }
            let mut wrong_offset = run_bytes(&lens[..5]);
            wrong_offset.extend(frame_bytes(99, &[1; 100], false));
            assert_eq!(run(&wrong_offset, 16).len(), 5);
            assert_eq!(run(&buf[..buf.len() - 1], 16).len(), lens.len() - 1, "a truncated last record");
            assert_eq!(run(&buf, 16).len(), lens.len());
        }
    }

    #[test]
    fn zeros_truncation_and_overlong_lengths_are_told_apart() {
        assert_eq!(decode(&[0u8; 64], 0), Err(FrameError::Zeroed));
        assert_eq!(decode(&[1u8; 10], 0), Err(FrameError::Truncated));
        // Fewer zeros than a header after the last record: the end of the data.
        assert_eq!(decode(&[0u8; 10], 0), Err(FrameError::Zeroed));
        assert_eq!(decode(&[0u8; 10], 10), Err(FrameError::Truncated));
        let buf = frame_bytes(1, b"abc", false);
        assert_eq!(decode(&buf[..buf.len() - 1], 0), Err(FrameError::BadLength(3)));
        let mut huge = buf.clone();
        LittleEndian::write_u32(&mut huge[LEN_AT..], LEN_MASK);
        assert!(matches!(decode(&huge, 0), Err(FrameError::BadLength(_))));
    }
}
