//! Walking the records of a segment: the one place that decides where valid data ends.

use crate::error::CorruptKind;
use crate::record::{self, FrameError};

/// Where a walk over a segment's bytes stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Position just past the last complete batch: the valid prefix ends here.
    pub end: usize,
    /// Offset of the first record not in the valid prefix.
    pub next_offset: u64,
    /// Records in the valid prefix that the walk went through.
    pub records: u64,
    /// The first damaged record, if the walk met one before a clean end (zeros or the end of
    /// the bytes). Its position may lie past `end` when it cut a batch short.
    pub damage: Option<(usize, CorruptKind)>,
}

/// Maps a frame decoding failure to what a [`crate::Error::Corrupt`] reports.
pub(crate) fn corrupt_kind(err: FrameError) -> CorruptKind {
    match err {
        FrameError::Truncated => CorruptKind::Truncated,
        FrameError::Zeroed => CorruptKind::Zeroed,
        FrameError::BadLength(len) => CorruptKind::BadLength { len },
        FrameError::BadCrc { expected, actual } => CorruptKind::BadCrc { expected, actual },
    }
}

/// Checks every record from `pos` on (CRC, length, offset sequence) and returns the longest
/// valid prefix that ends on a batch boundary. A zeroed header or the end of `bytes` is a
/// clean end; anything else is damage.
pub(crate) fn valid_prefix(bytes: &[u8], mut pos: usize, mut offset: u64) -> Scan {
    let mut scan = Scan { end: pos, next_offset: offset, records: 0, damage: None };
    let mut in_batch = 0;
    loop {
        // The end of the data in the middle of a batch is a torn batch, not a clean end.
        let end_kind = |kind| if in_batch > 0 { Some((pos, kind)) } else { None };
        if pos == bytes.len() {
            scan.damage = end_kind(CorruptKind::Truncated);
            return scan;
        }
        let frame = match record::decode(bytes, pos) {
            Ok(frame) => frame,
            Err(FrameError::Zeroed) => {
                scan.damage = end_kind(CorruptKind::Zeroed);
                return scan;
            }
            Err(e) => {
                scan.damage = Some((pos, corrupt_kind(e)));
                return scan;
            }
        };
        if frame.offset != offset {
            scan.damage = Some((pos, CorruptKind::BadOffset { expected: offset, found: frame.offset }));
            return scan;
        }
        let Some(next) = offset.checked_add(1) else {
            scan.damage = Some((pos, last_offset_damage(offset)));
            return scan;
        };
        pos = frame.end();
        offset = next;
        in_batch += 1;
        if !frame.batch_continues {
            scan.end = pos;
            scan.next_offset = offset;
            scan.records += in_batch;
            in_batch = 0;
        }
    }
}

/// A record at offset `u64::MAX`: offsets end below it, since the record after it would
/// have no offset to take, so no append ever writes one.
pub(crate) fn last_offset_damage(offset: u64) -> CorruptKind {
    CorruptKind::BadHeader(format!("offset {offset} is the last a u64 holds; no record can follow it"))
}

/// Where [`hop`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop {
    /// The position it stopped at: the end of the bytes, zeros, or a header that does not
    /// frame or does not carry the next offset.
    pub end: usize,
    /// The offset the record there should have.
    pub next: u64,
    /// Where the last record it stepped over starts, if any.
    pub last: Option<usize>,
}

impl Hop {
    /// Where to look for records again when the walk stopped at damage, as a position and
    /// the offset of the record there ([`resync`]'s `pos` and `offset`): the last record
    /// stepped over, whose length may be what is damaged (a length that still fits frames,
    /// and sends the walk astray), else where the walk stopped.
    pub fn damage(&self) -> (usize, u64) {
        match self.last {
            Some(last) => (last, self.next - 1),
            None => (self.end, self.next),
        }
    }
}

/// Steps from record to record without checking CRCs, calling `visit(position, offset)` for
/// each, until the end of `bytes`, a zeroed header or a record that does not frame. Used to
/// rebuild an index; the CRCs are checked when records are read.
pub(crate) fn hop(bytes: &[u8], mut pos: usize, mut offset: u64, mut visit: impl FnMut(usize, u64)) -> Hop {
    let mut last = None;
    while let Ok(frame) = record::peek(bytes, pos) {
        let Some(next) = offset.checked_add(1).filter(|_| frame.offset == offset) else {
            break;
        };
        visit(pos, offset);
        last = Some(pos);
        pos = frame.end();
        offset = next;
    }
    Hop { end: pos, next: offset, last }
}

/// Where records start again after damage that stepping cannot cross: the record at `pos`
/// should have had offset `offset`, and `end` is a record boundary known from elsewhere,
/// with the offset there (a sealed segment's end, or a synced mark). Returns the first
/// later position holding a record with a higher offset from which records frame, with
/// offsets that run on without a break, exactly up to `end` (or to zeros before it, with
/// the offset there). Checksums are not looked at: reads check each record's.
///
/// Demanding the whole way to `end` keeps the image of records inside some payload (a
/// queue of queue files, say) from being taken for the real ones: such an image would have
/// to lead, record by record, into the real records after it, or end where the segment
/// ends, with their offsets. The one place where that cannot be told apart is the damage
/// itself: frames in the payload of the damaged record (or of the one before it, whose
/// length may be what is damaged) that carry the offsets of the records the damage
/// destroyed and lead on to the real records look like those records. Only a payload built
/// to imitate this queue's records, with the offsets they would have, can do that.
///
/// A candidate whose records stop framing at a second damaged place is given up, and the
/// search goes on from the last of its records: records between two damaged places are not
/// found, only those after the last one.
pub(crate) fn resync(bytes: &[u8], pos: usize, offset: u64, (end, end_offset): (usize, u64)) -> Option<(usize, u64)> {
    let bytes = bytes.get(..end)?;
    let mut at = pos + 1;
    let mut walks_to_the_end = MAX_RESYNC_WALKS_TO_THE_END;
    while at + record::HEADER_LEN <= end {
        if let Some(past) = zero_offset_field_from(bytes, at) {
            at = past;
            continue;
        }
        let Ok(frame) = record::peek(bytes, at) else {
            at += 1;
            continue;
        };
        let claimed = frame.offset;
        // Records `offset..claimed` lie in `pos..at` and records `claimed..end_offset` in
        // `at..end`, each at least a header long.
        let fits = |records: u64, bytes: usize| records <= (bytes / record::HEADER_LEN) as u64;
        if claimed <= offset
            || claimed >= end_offset
            || !fits(claimed - offset, at - pos)
            || !fits(end_offset - claimed, end - at)
        {
            at += 1;
            continue;
        }
        let walk = hop(bytes, at, claimed, |_, _| {});
        let clean_end = walk.end == end || record::peek(bytes, walk.end) == Err(FrameError::Zeroed);
        if clean_end && walk.next == end_offset {
            return Some((at, claimed));
        }
        if walk.end < end {
            // Records that follow on from one another lead to the same break: go on after
            // the start of the last of them, whose length may be what is wrong. (Not after
            // the break: frames copied into a payload, cut short, can claim a length that
            // runs over the records looked for.)
            at = walk.last.filter(|&last| last > at).unwrap_or(at) + 1;
            continue;
        }
        // Frames that end exactly where the data ends, with other offsets: rare, but each
        // such walk may cross the rest of the segment.
        walks_to_the_end -= 1;
        if walks_to_the_end == 0 {
            return None;
        }
        at += 1;
    }
    None
}

/// If the offset field of a record starting at `at` would be all zeros: the first later
/// position whose offset field is not, or the end of `bytes`. A record that [`resync`]
/// looks for has an offset above another one, so not 0; the zeros a lost write or a sparse
/// file leaves are passed over a word at a time, not a byte at a time (a 1 GiB segment
/// zeroed from its damage on took seconds per byte-wise pass).
fn zero_offset_field_from(bytes: &[u8], at: usize) -> Option<usize> {
    let field = at + record::OFFSET_AT;
    if bytes.get(field..field + 8)? != [0; 8] {
        return None;
    }
    // The first non-zero byte at or after the field; any offset field holding it starts
    // at most 7 bytes before it, so records start no earlier than 15 bytes before it.
    let nonzero = first_nonzero(&bytes[field..]).map_or(bytes.len(), |i| field + i);
    Some(nonzero.saturating_sub(record::OFFSET_AT + 7).max(at + 1))
}

/// Index of the first non-zero byte of `bytes`, looked for 64 bytes at a time.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(64);
    let mut base = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            break;
        }
        base += 64;
    }
    bytes[base..].iter().position(|&b| b != 0).map(|i| base + i)
}

/// How many candidates whose frames reach the end with the wrong offsets [`resync`] tries
/// before it gives up: each walk may cross the rest of the segment, and only a hostile
/// layout makes more than one.
const MAX_RESYNC_WALKS_TO_THE_END: u32 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_header;

    fn log(records: &[(&[u8], bool)]) -> Vec<u8> {
        let mut buf = vec![0u8; 8];
        for (i, (payload, more)) in records.iter().enumerate() {
            buf.extend_from_slice(&encode_header(10 + i as u64, 5, payload, *more));
            buf.extend_from_slice(payload);
        }
        buf
    }

    #[test]
    fn stops_cleanly_at_zeros_and_at_the_end() {
        let mut buf = log(&[(b"a", false), (b"bb", false)]);
        let len = buf.len();
        let scan = valid_prefix(&buf, 8, 10);
        assert_eq!((scan.end, scan.next_offset, scan.records, scan.damage), (len, 12, 2, None));
        buf.resize(len + 100, 0);
        assert_eq!(valid_prefix(&buf, 8, 10).end, len);
    }

    #[test]
    fn an_unfinished_batch_is_not_part_of_the_prefix_and_is_reported() {
        let buf = log(&[(b"a", false), (b"b", true), (b"c", true)]);
        let scan = valid_prefix(&buf, 8, 10);
        assert_eq!(scan.next_offset, 11);
        assert_eq!(scan.end, 8 + record::frame_len(1));
        assert_eq!(scan.damage, Some((buf.len(), CorruptKind::Truncated)));
        let mut zeroed = buf.clone();
        zeroed.resize(buf.len() + 64, 0);
        assert_eq!(valid_prefix(&zeroed, 8, 10).damage, Some((buf.len(), CorruptKind::Zeroed)));
    }

    #[test]
    fn damage_and_wrong_offsets_stop_the_walk() {
        let mut buf = log(&[(b"a", false), (b"b", false), (b"c", false)]);
        let second = 8 + record::frame_len(1);
        buf[second + 24] ^= 0xff;
        let scan = valid_prefix(&buf, 8, 10);
        assert_eq!(scan.end, second);
        assert!(matches!(scan.damage, Some((p, CorruptKind::BadCrc { .. })) if p == second));
        let scan = valid_prefix(&buf, 8, 11);
        assert!(matches!(scan.damage, Some((8, CorruptKind::BadOffset { expected: 11, found: 10 }))));
    }

    #[test]
    fn resync_finds_the_record_after_damage_that_leads_to_the_end() {
        let mut buf = log(&[(b"aaaa", false), (b"bbbbbbbbbb", false), (b"c", false), (b"dd", false)]);
        let second = 8 + record::frame_len(4);
        let third = second + record::frame_len(10);
        buf[second + 6] = 0x7f; // the length runs past the end
        let end = (buf.len(), 14);
        let walk = hop(&buf, 8, 10, |_, _| {});
        assert_eq!((walk.end, walk.next, walk.last), (second, 11, Some(8)));
        assert_eq!(resync(&buf, second, 11, end), Some((third, 12)));
        // The end must be reached with the offset there.
        assert_eq!(resync(&buf, second, 11, (buf.len(), 15)), None);
        // A record after it that fails its checksum still frames: reads report it.
        let last = third + record::frame_len(1);
        buf[last + 24] ^= 1;
        assert_eq!(resync(&buf, second, 11, end), Some((third, 12)));
        // One that no longer frames breaks the way to the end: nothing after it is left.
        buf[last + 6] = 0x7f;
        assert_eq!(resync(&buf, second, 11, end), None);
        assert_eq!(resync(&buf, buf.len(), 14, end), None);
    }

    #[test]
    fn resync_is_not_led_past_the_records_by_a_frame_in_a_payload() {
        // Record 11's payload holds a header that claims offset 12 and a length that runs
        // over records 12 and 13, and leads nowhere.
        let fake = encode_header(12, 5, &[0; 60], false);
        let mut payload = fake.to_vec();
        payload.extend_from_slice(&[1; 8]);
        let mut buf = log(&[(b"a", false), (&payload, false), (&[2; 20], false), (&[3; 20], false), (b"e", false)]);
        let second = 8 + record::frame_len(1);
        let third = second + record::frame_len(payload.len());
        buf[second + 6] = 0x7f;
        assert_eq!(resync(&buf, second, 11, (buf.len(), 15)), Some((third, 12)));
    }

    #[test]
    fn hop_visits_every_record() {
        let buf = log(&[(b"a", false), (b"bbb", false)]);
        let mut seen = vec![];
        let walk = hop(&buf, 8, 10, |pos, off| seen.push((pos, off)));
        let end = (walk.end, walk.next);
        assert_eq!(seen, vec![(8, 10), (8 + record::frame_len(1), 11)]);
        assert_eq!(end, (buf.len(), 12));
    }
}
