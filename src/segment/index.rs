//! The sparse offset index of one segment, in `<base>.index`.
//!
//! Grammar: `file header (32 bytes, INDEX_MAGIC) | entry*`, each entry
//! `relative_offset: u32 | position: u32` (little-endian): the record with offset
//! `base + relative_offset` starts at byte `position` of the segment. An entry is added when
//! a record starts at least `index_interval_bytes` past the previous entry (the segment
//! start counts as an entry), so a lookup scans at most one interval. The index is derived
//! data: anything that fails [`valid_len`] is rebuilt from the segment.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use byteorder::{ByteOrder, LittleEndian};

use super::header::{self, FILE_HEADER_LEN, INDEX_MAGIC};
use super::scan;
use crate::error::{IoContext, Result};
use crate::fs::{open_rw, rename, reserve, temp_path};
use crate::mmap::{MapWriter, Mapping};
use crate::record;

/// Bytes in one index entry.
pub(crate) const ENTRY_LEN: usize = 8;

/// Entry `i` of `entries` (the bytes after the header): `(relative offset, position)`.
pub(crate) fn entry(entries: &[u8], i: usize) -> (u32, u32) {
    let at = i * ENTRY_LEN;
    (LittleEndian::read_u32(&entries[at..]), LittleEndian::read_u32(&entries[at + 4..]))
}

/// The last entry at or before `rel`: where to start scanning for it. `None` means the
/// segment start.
///
/// Relative offsets grow about evenly with position, so a few interpolation probes land
/// next to the answer; a binary search finishes if they do not. A lookup thus touches one
/// or two cache lines of a large index instead of one per halving.
pub(crate) fn floor(entries: &[u8], rel: u64) -> Option<(u32, u32)> {
    let key = |i: usize| u64::from(entry(entries, i).0);
    let n = entries.len() / ENTRY_LEN;
    if n == 0 || key(0) > rel {
        return None;
    }
    // The answer is in lo..hi: key(lo) <= rel, and hi == n or key(hi) > rel.
    let (mut lo, mut hi) = (0, n);
    let mut guesses = 3;
    while hi - lo > 1 {
        let mid = if guesses > 0 {
            guesses -= 1;
            let (first, last) = (key(lo), key(hi - 1));
            if last <= rel {
                lo = hi - 1;
                break;
            }
            // first <= rel < last, so the guess falls in lo..hi - 1; probe it and the entry
            // after it, which usually share a cache line.
            // Keys are u32 and entries fewer than 2^32 / ENTRY_LEN, so the product fits a u64
            // (a u128 division is a slow library call).
            let guess = lo + ((rel - first) * (hi - 1 - lo) as u64 / (last - first)) as usize;
            if key(guess) > rel {
                hi = guess;
                continue;
            }
            lo = guess;
            guess + 1
        } else {
            lo + (hi - lo) / 2
        };
        if key(mid) <= rel { lo = mid } else { hi = mid }
    }
    Some(entry(entries, lo))
}

/// Where the record `rel` probably starts if records are all of one size, judged from the
/// newest entry (a line that stays cached): a hint for prefetching, never trusted.
pub(crate) fn guess_position(entries: &[u8], rel: u64) -> Option<usize> {
    let n = entries.len() / ENTRY_LEN;
    let (last_rel, last_pos) = entry(entries, n.checked_sub(1)?);
    let per_record = (last_pos as usize).checked_sub(FILE_HEADER_LEN)? / (last_rel as usize).max(1);
    Some(FILE_HEADER_LEN + per_record.saturating_mul(rel as usize))
}

/// How many of `entries` (ordered) have a position below `pos`.
pub(crate) fn count_below(entries: &[u8], pos: usize) -> usize {
    partition_point(entries, |(_, at)| (at as usize) < pos)
}

/// The last entry whose position is at or before `pos`.
pub(crate) fn floor_by_position(entries: &[u8], pos: usize) -> Option<(u32, u32)> {
    partition_point(entries, |(_, at)| at as usize <= pos).checked_sub(1).map(|i| entry(entries, i))
}

/// The entry before `e` (ordered entries); `None` if `e` is the first.
pub(crate) fn before(entries: &[u8], (rel, _): (u32, u32)) -> Option<(u32, u32)> {
    floor(entries, u64::from(rel).checked_sub(1)?)
}

/// The entries after those at or before `rel`, in order.
pub(crate) fn after(entries: &[u8], rel: u64) -> impl Iterator<Item = (u32, u32)> + '_ {
    let first = partition_point(entries, |(r, _)| u64::from(r) <= rel);
    (first..entries.len() / ENTRY_LEN).map(move |i| entry(entries, i))
}

/// How many entries from the first satisfy `holds`, which holds for a prefix of them.
fn partition_point(entries: &[u8], holds: impl Fn((u32, u32)) -> bool) -> usize {
    let (mut lo, mut hi) = (0, entries.len() / ENTRY_LEN);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if holds(entry(entries, mid)) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

/// The index file of the active segment as the last run left it, mapped read-only: read
/// once on open, for the checkpoint check and for the writer to keep what it can.
#[derive(Debug)]
pub(crate) struct OldIndex {
    map: Option<Arc<Mapping>>,
}

impl OldIndex {
    /// Maps the index at `path` of the segment `base`; a missing or foreign file has no
    /// entries. `capacity` bounds how much is looked at.
    pub fn open(path: &Path, base: u64, capacity: usize) -> OldIndex {
        let limit = IndexWriter::file_len(capacity, 1);
        let map = crate::fs::open_regular(path).ok().and_then(|file| {
            let len = file.metadata().ok()?.len() as usize;
            let map = Mapping::read_only(&file, len.min(limit)).ok()?;
            header::check(map.readable(), INDEX_MAGIC, base).is_ok().then_some(map)
        });
        OldIndex { map }
    }

    /// Every entry slot after the header, trusted or not (unused slots are zero).
    pub fn slots(&self) -> &[u8] {
        let bytes = self.map.as_ref().map_or(&[][..], |m| m.readable());
        let slots = bytes.get(FILE_HEADER_LEN..).unwrap_or_default();
        &slots[..slots.len() / ENTRY_LEN * ENTRY_LEN]
    }

    /// The entries that can be trusted for a segment whose valid records are `data`: each
    /// is checked to land on its record. (Checking only their order, as for a sealed
    /// segment, would let an entry on a damaged header vouch for a clean shutdown.)
    pub fn trusted(&self, data: &[u8], base: u64) -> &[u8] {
        let slots = self.slots();
        &slots[..valid_len(slots, data, base, u64::MAX)]
    }
}

/// Length of the longest prefix of `entries` that can be trusted: relative offsets and
/// positions strictly increasing, relative offsets below `max_rel`, and each entry pointing
/// at the start of the record it names in `data` (the segment's valid bytes).
pub(crate) fn valid_len(entries: &[u8], data: &[u8], base: u64, max_rel: u64) -> usize {
    let mut prev = None;
    prefix_len(entries, data.len(), max_rel, |rel, pos| {
        let e = (rel, pos as u32);
        let kept = lands(data, base, e) || names_damaged_record(data, base, prev, e);
        prev = Some(e);
        kept
    })
}

/// Like [`valid_len`] without looking at the records: cheap enough for a sealed segment,
/// whose entries are then checked one by one as reads use them ([`lands`]).
pub(crate) fn ordered_len(entries: &[u8], data_len: usize, max_rel: u64) -> usize {
    prefix_len(entries, data_len, max_rel, |_, _| true)
}

/// Whether the entry `(rel, pos)` points at the record it names.
pub(crate) fn lands(data: &[u8], base: u64, (rel, pos): (u32, u32)) -> bool {
    record::peek(data, pos as usize).is_ok_and(|f| names(base, rel, f.offset))
}

/// Whether the entry `(rel, pos)`, which does not land, is right all the same: the records
/// from the entry before it (`prev`, trusted; else the segment's start) frame exactly up to
/// its position, with its offset next. Then the record there is damaged, not the index,
/// and stepping from the entry reports that damage.
#[cold]
pub(crate) fn names_damaged_record(data: &[u8], base: u64, prev: Option<(u32, u32)>, (rel, pos): (u32, u32)) -> bool {
    let (mut at, mut p) = match prev {
        // A damaged entry's offset may lie past what a u64 holds: it leads nowhere.
        Some((r, p)) => match base.checked_add(u64::from(r)) {
            Some(at) => (at, p as usize),
            None => return false,
        },
        None => (base, FILE_HEADER_LEN),
    };
    while p < pos as usize {
        match record::peek(data, p) {
            Ok(f) if f.offset == at && at < u64::MAX => (p, at) = (f.end(), at + 1),
            _ => return false,
        }
    }
    p == pos as usize && names(base, rel, at)
}

/// Whether an entry's relative offset `rel` in a segment starting at `base` names an offset
/// below `limit`.
pub(crate) fn names_below(base: u64, rel: u32, limit: u64) -> bool {
    base.checked_add(u64::from(rel)).is_some_and(|offset| offset < limit)
}

/// Whether an entry's relative offset `rel` in a segment starting at `base` names `offset`.
/// A damaged entry's `rel` may reach past the last offset a u64 holds: it names nothing.
pub(crate) fn names(base: u64, rel: u32, offset: u64) -> bool {
    base.checked_add(u64::from(rel)) == Some(offset)
}

fn prefix_len(entries: &[u8], data_len: usize, max_rel: u64, mut lands: impl FnMut(u32, usize) -> bool) -> usize {
    let mut prev: Option<(u32, u32)> = None;
    for i in 0..entries.len() / ENTRY_LEN {
        let (rel, pos) = entry(entries, i);
        let increasing = prev.is_none_or(|(r, p)| rel > r && pos > p);
        let inside = (FILE_HEADER_LEN..data_len).contains(&(pos as usize)) && u64::from(rel) < max_rel;
        if !(increasing && inside && lands(rel, pos as usize)) {
            return i * ENTRY_LEN;
        }
        prev = Some((rel, pos));
    }
    entries.len() / ENTRY_LEN * ENTRY_LEN
}

/// Builds the entries of a sealed segment whose records are `data` (the whole file's
/// bytes) and end below `end_offset`. Where a record does not frame, the records after the
/// damage are looked for ([`scan::resync`]) and the first found gets an entry, so that
/// reads and iterators reach them as they would with the index that was lost.
pub(crate) fn build(data: &[u8], base: u64, end_offset: u64, interval: u32) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut last = FILE_HEADER_LEN;
    let mut from = (FILE_HEADER_LEN, base);
    loop {
        let walk = scan::hop(data, from.0, from.1, |pos, offset| {
            if pos - last >= interval as usize {
                push(&mut entries, (offset - base) as u32, pos as u32);
                last = pos;
            }
        });
        if walk.next >= end_offset {
            return entries;
        }
        let (pos, offset) = walk.damage();
        let Some((at, offset)) = scan::resync(data, pos, offset, (data.len(), end_offset)) else {
            return entries;
        };
        push(&mut entries, (offset - base) as u32, at as u32);
        last = at;
        from = (at, offset);
    }
}

/// The entries a sealed segment's lookups use once its index is distrusted: those rebuilt
/// from its `data` (`built`, see [`build`]), and between two of them the entries of `index`
/// that land on their records and fit there, in offset and in position. The rebuilt
/// entries come from walking the data, so they win where the two disagree: an index entry
/// that names an offset the rebuild has, or lies outside the gap its offset falls in, is
/// left out. The index's entries fill the gaps the rebuild leaves (between two damaged
/// places, where it finds nothing).
pub(crate) fn merged(index: &[u8], built: &[u8], data: &[u8], base: u64) -> Vec<u8> {
    let rebuilt: Vec<(u32, u32)> = (0..built.len() / ENTRY_LEN).map(|i| entry(built, i)).collect();
    let fits = |&(rel, pos): &(u32, u32)| {
        let i = rebuilt.partition_point(|&(r, _)| r < rel);
        let after_prev = i.checked_sub(1).is_none_or(|p| rebuilt[p].1 < pos);
        let before_next = rebuilt.get(i).is_none_or(|&(r, p)| r != rel && pos < p);
        after_prev && before_next
    };
    let from_index = (0..index.len() / ENTRY_LEN).map(|i| entry(index, i)).filter(|e| fits(e) && lands(data, base, *e));
    let mut all: Vec<(u32, u32)> = from_index.chain(rebuilt.iter().copied()).collect();
    all.sort_unstable();
    let mut out = Vec::new();
    let mut last: Option<(u32, u32)> = None;
    for (rel, pos) in all {
        if last.is_none_or(|(r, p)| rel > r && pos > p) {
            push(&mut out, rel, pos);
            last = Some((rel, pos));
        }
    }
    out
}

fn push(entries: &mut Vec<u8>, rel: u32, pos: u32) {
    let mut e = [0u8; ENTRY_LEN];
    LittleEndian::write_u32(&mut e, rel);
    LittleEndian::write_u32(&mut e[4..], pos);
    entries.extend_from_slice(&e);
}

/// Writes a complete index file under a temporary name and renames it into place, without
/// syncing it: the index is derived data, and one that is lost or torn in a crash is
/// rebuilt on the next open. (A sealed segment's index is synced when it is sealed.)
fn write_file(path: &Path, tmp: &Path, base: u64, entries: &[u8], reserve_to: u64) -> Result<File> {
    let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(tmp).at(tmp)?;
    let mut bytes = header::encode(INDEX_MAGIC, base).to_vec();
    bytes.extend_from_slice(entries);
    crate::fs::write_at(&file, tmp, &bytes, 0)?;
    if reserve_to > bytes.len() as u64 {
        reserve(&file, tmp, reserve_to)?;
    }
    rename(tmp, path)?;
    Ok(file)
}

/// A sealed segment's index, as opened.
pub(crate) enum Sealed {
    /// Its file: the one found, if it could be trusted, or the one rebuilt in its place.
    Stored(Arc<Mapping>),
    /// Entries rebuilt from the data that could not be stored (a full disk, a folder in the
    /// file's place): the next open tries again.
    Unstored(Vec<u8>),
}

/// Opens the index of a sealed segment, rebuilding it from `data` if it cannot be trusted.
pub(crate) fn open_sealed(path: &Path, base: u64, data: &[u8], max_rel: u64, interval: u32) -> Result<Sealed> {
    if let Ok(file) = crate::fs::open_regular(path) {
        let len = file.metadata().at(path)?.len() as usize;
        if len >= FILE_HEADER_LEN && (len - FILE_HEADER_LEN).is_multiple_of(ENTRY_LEN) {
            let map = Mapping::read_only(&file, len).at(path)?;
            let bytes = map.readable();
            let entries = &bytes[FILE_HEADER_LEN..];
            if header::check(bytes, INDEX_MAGIC, base).is_ok()
                && ordered_len(entries, data.len(), max_rel) == entries.len()
            {
                return Ok(Sealed::Stored(map));
            }
        }
    }
    let entries = build(data, base, base.saturating_add(max_rel), interval);
    // A temporary name of its own: two copies of the segment (the log's, and one an
    // iterator still holds) may rebuild at once, and one truncating the other's file after
    // its rename would cut a file that is mapped.
    static REBUILDS: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", REBUILDS.fetch_add(1, Ordering::Relaxed)));
    let tmp = PathBuf::from(tmp);
    let stored = write_file(path, &tmp, base, &entries, 0)
        .and_then(|file| Mapping::read_only(&file, FILE_HEADER_LEN + entries.len()).at(path));
    Ok(match stored {
        Ok(map) => Sealed::Stored(map),
        Err(_) => {
            let _ = fs::remove_file(&tmp);
            Sealed::Unstored(entries)
        }
    })
}

/// The index of the active segment, appended to as records are.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    path: PathBuf,
    file: File,
    writer: MapWriter,
    /// Bytes in use: header plus entries.
    len: usize,
    /// Position of the newest entry (the segment start before the first).
    last_pos: usize,
    interval: usize,
}

impl IndexWriter {
    /// Bytes an index may need for a segment of `capacity` bytes written with `interval`:
    /// one entry per interval, and never more than one per record.
    fn file_len(capacity: usize, interval: u32) -> usize {
        let entries = capacity / (interval as usize).max(record::HEADER_LEN) + 1;
        FILE_HEADER_LEN + entries * ENTRY_LEN
    }

    /// End of the part of the file that entries for the records below data position
    /// `data_end` can fill.
    pub fn room_for(&self, data_end: usize) -> usize {
        let entries = data_end / self.interval.max(record::HEADER_LEN) + 1;
        (FILE_HEADER_LEN + entries * ENTRY_LEN).min(self.writer.mapping().len())
    }

    /// Bytes in use: the header and the entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The mapping of the index file.
    pub fn mapping(&self) -> &Arc<Mapping> {
        self.writer.mapping()
    }

    /// Creates the index of a new, empty segment.
    pub fn create(path: PathBuf, base: u64, capacity: usize, interval: u32) -> Result<(Arc<Mapping>, IndexWriter)> {
        Self::open_with(path, base, capacity, interval, &[])
    }

    /// Opens the index of the active segment after recovery: keeps `kept` (entries of `old`
    /// trusted for the valid data, `data`) and indexes what they miss. When every entry of
    /// the old file is kept, the file is reused in place; otherwise it is rewritten without
    /// the rest. Also returns where stepping over the records stopped: the end of `data`,
    /// or damage.
    pub fn open_active(
        path: PathBuf,
        base: u64,
        capacity: usize,
        interval: u32,
        data: &[u8],
        old: &OldIndex,
        kept: &[u8],
    ) -> Result<(Arc<Mapping>, IndexWriter, scan::Hop)> {
        let nothing_dropped =
            old.slots().get(kept.len()..kept.len() + ENTRY_LEN).is_none_or(|e| e.iter().all(|&b| b == 0));
        let (map, mut writer) = if old.map.is_some() && nothing_dropped {
            Self::reuse(path, capacity, interval, kept)?
        } else {
            Self::open_with(path, base, capacity, interval, kept)?
        };
        let (start, offset) = match kept.len() {
            0 => (FILE_HEADER_LEN, base),
            n => {
                let (rel, pos) = entry(kept, n / ENTRY_LEN - 1);
                (pos as usize, base + u64::from(rel))
            }
        };
        let stopped = scan::hop(data, start, offset, |pos, offset| writer.note(offset - base, pos));
        Ok((map, writer, stopped))
    }

    /// Indexes the records of `data` from `pos` (a record boundary with offset `offset`, in
    /// a segment starting at `base`) on, starting with an entry there: for records past
    /// damage that stepping from the entries before it cannot cross. If no record is there
    /// yet, the next append, which lands there, gets that entry.
    pub fn resume_at(&mut self, data: &[u8], base: u64, (pos, offset): (usize, u64)) {
        if pos <= self.last_pos {
            return;
        }
        // As if the last entry were an interval before `pos` (wrapping below 0 if need be):
        // the record there is indexed, whenever it comes.
        self.last_pos = pos.wrapping_sub(self.interval);
        scan::hop(data, pos, offset, |pos, offset| self.note(offset - base, pos));
    }

    /// Goes on writing the existing file after its `kept` entries, which are all it holds:
    /// rewriting it would cost a copy and, on a filesystem that discards freed blocks, an
    /// unlink that waits for the discard.
    fn reuse(path: PathBuf, capacity: usize, interval: u32, kept: &[u8]) -> Result<(Arc<Mapping>, IndexWriter)> {
        let file = open_rw(&path, false)?;
        let file_len = kept.len() + Self::file_len(capacity, interval);
        if file.metadata().at(&path)?.len() < file_len as u64 {
            reserve(&file, &path, file_len as u64)?;
        }
        let len = FILE_HEADER_LEN + kept.len();
        let (map, writer) = Mapping::read_write(&file, file_len, len).at(&path)?;
        let last_pos =
            kept.len().checked_sub(ENTRY_LEN).map_or(FILE_HEADER_LEN, |at| entry(kept, at / ENTRY_LEN).1 as usize);
        Ok((map, IndexWriter { path, file, writer, len, last_pos, interval: interval as usize }))
    }

    fn open_with(
        path: PathBuf,
        base: u64,
        capacity: usize,
        interval: u32,
        entries: &[u8],
    ) -> Result<(Arc<Mapping>, IndexWriter)> {
        // Room for the kept entries and for every entry the segment's records could add.
        let file_len = entries.len() + Self::file_len(capacity, interval);
        let file = write_file(&path, &temp_path(&path), base, entries, file_len as u64)?;
        let len = FILE_HEADER_LEN + entries.len();
        let (map, writer) = Mapping::read_write(&file, file_len, len).at(&path)?;
        let last_pos = match entries.len() {
            0 => FILE_HEADER_LEN,
            n => entry(entries, n / ENTRY_LEN - 1).1 as usize,
        };
        Ok((map, IndexWriter { path, file, writer, len, last_pos, interval: interval as usize }))
    }

    /// Records that the record `base + rel` starts at `pos`, adding an entry if it is an
    /// interval or more past the previous one.
    pub fn note(&mut self, rel: u64, pos: usize) {
        if pos.wrapping_sub(self.last_pos) < self.interval {
            return;
        }
        let mut e = [0u8; ENTRY_LEN];
        LittleEndian::write_u32(&mut e, rel as u32);
        LittleEndian::write_u32(&mut e[4..], pos as u32);
        self.writer.write(self.len, &e);
        self.len += ENTRY_LEN;
        self.writer.publish(self.len);
        self.last_pos = pos;
    }

    /// Writes the entries back and cuts the file to them, for a segment that is sealed.
    pub fn seal(&mut self) -> Result<()> {
        crate::fs::sync_mapping(self.writer.mapping(), &self.path, 0..self.len)?;
        self.file.set_len(self.len as u64).at(&self.path)?;
        crate::fs::sync_file(&self.file, &self.path)
    }

    /// Writes the entries back (at a clean close).
    pub fn sync(&self) -> Result<()> {
        crate::fs::sync_mapping(self.writer.mapping(), &self.path, 0..self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(u32, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(rel, pos) in list {
            push(&mut v, rel, pos);
        }
        v
    }

    #[test]
    fn floor_finds_the_last_entry_at_or_before() {
        let e = entries(&[(10, 100), (20, 200), (30, 300)]);
        assert_eq!(floor(&e, 5), None);
        assert_eq!(floor(&e, 10), Some((10, 100)));
        assert_eq!(floor(&e, 29), Some((20, 200)));
        assert_eq!(floor(&e, 1000), Some((30, 300)));
        assert_eq!(floor(&[], 3), None);
    }

    proptest::proptest! {
        /// Interpolation must find what a plain scan finds, however unevenly the entries
        /// are spread (records of very different sizes, long runs, single entries).
        #[test]
        fn floor_agrees_with_a_linear_scan(
            gaps in proptest::collection::vec((1u32..5000, 1u32..3), 0..200),
            probes in proptest::collection::vec(0u64..400_000, 1..20),
        ) {
            let mut list = Vec::new();
            let (mut rel, mut pos) = (0u32, FILE_HEADER_LEN as u32);
            for (g, p) in gaps {
                rel += g;
                pos += p * 24;
                list.push((rel, pos));
            }
            let e = entries(&list);
            for probe in probes {
                let expected = list.iter().rev().find(|&&(r, _)| u64::from(r) <= probe).copied();
                proptest::prop_assert_eq!(floor(&e, probe), expected);
                // Only a hint, but it must never panic or overflow.
                let _ = guess_position(&e, probe);
            }
        }
    }

    /// A segment's bytes with records of `len`-byte payloads for offsets `base..base + n`,
    /// and the position of each.
    fn segment(base: u64, n: u64, len: usize) -> (Vec<u8>, Vec<u32>) {
        let mut data = vec![0u8; FILE_HEADER_LEN];
        let mut positions = Vec::new();
        for o in base..base + n {
            positions.push(data.len() as u32);
            data.extend_from_slice(&record::encode_header(o, 0, &vec![1; len], false));
            data.extend_from_slice(&vec![1; len]);
        }
        (data, positions)
    }

    #[test]
    fn valid_len_stops_at_the_first_untrustworthy_entry() {
        let (data, pos) = segment(100, 10, 40);
        let good = [(1, pos[1]), (3, pos[3]), (7, pos[7])];
        assert_eq!(valid_len(&entries(&good), &data, 100, 10), 3 * ENTRY_LEN);
        assert_eq!(valid_len(&entries(&good), &data, 100, 5), 2 * ENTRY_LEN, "relative offset past the end");
        let not_increasing = [(1, pos[1]), (3, pos[3]), (3, pos[3])];
        assert_eq!(valid_len(&entries(&not_increasing), &data, 100, 10), 2 * ENTRY_LEN);
        let wrong_record = [(1, pos[1]), (4, pos[3])];
        assert_eq!(valid_len(&entries(&wrong_record), &data, 100, 10), ENTRY_LEN);
        let mid_record = [(1, pos[1] + 8)];
        assert_eq!(valid_len(&entries(&mid_record), &data, 100, 10), 0);
        assert_eq!(valid_len(&entries(&[(0, 0)]), &data, 100, 10), 0);
        assert_eq!(valid_len(&entries(&good), &data[..pos[3] as usize], 100, 10), ENTRY_LEN, "past the data");
    }

    #[test]
    fn build_indexes_one_record_per_interval() {
        let (data, pos) = segment(0, 20, 40);
        let built = build(&data, 0, 20, 128);
        assert_eq!(valid_len(&built, &data, 0, 20), built.len());
        assert_eq!(floor(&built, 0), None);
        let (rel, at) = floor(&built, 19).unwrap();
        assert_eq!(pos[rel as usize], at);
        assert!(19 - rel <= 2);
    }
}
