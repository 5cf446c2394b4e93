//! Checking a segment's sparse index against its records, entry by entry, as the records
//! are walked.
//!
//! An index is derived data: the library checks it against its segment and rebuilds it (or
//! steps from the segment's start) when it does not fit, losing nothing. A problem found
//! here is still damage (its bytes are not what segq wrote: a disk or a tool changed them),
//! reported in the index, which `repair` deletes for the next open to rebuild.

use std::io;
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};

use super::Finding;
use super::source::{Source, Window};
use crate::segment::header::{self, FILE_HEADER_LEN, INDEX_MAGIC};
use crate::segment::index::{ENTRY_LEN, names};

const CHUNK: usize = 1 << 20;
const REBUILT: &str = "segq rebuilds the index when it next reads the segment";

/// Walks the entries of one index file alongside the records of its segment.
#[derive(Debug)]
pub(crate) struct IndexCheck {
    path: PathBuf,
    src: Source,
    len: u64,
    window: Window,
    base: u64,
    /// Position of the next entry in the index file.
    pos: u64,
    prev: Option<(u32, u32)>,
    /// Entries read so far.
    pub entries: u64,
    /// No more entries to check: the end of the file, an unused (zero) entry, or the first
    /// bad entry (what follows a bad entry is not trusted either).
    done: bool,
    active: bool,
    /// The active segment of a queue closed cleanly: no writer adds entries past its data.
    closed: bool,
    pub findings: Vec<Finding>,
}

impl IndexCheck {
    /// Opens the index of a segment and checks its header. `None` (with the reason in
    /// `findings`) when there is nothing to check. `active`: the segment may still be
    /// written to; `closed`: it is the active segment of a queue closed cleanly, so that
    /// entries past its data are not being written but left over.
    pub fn open(path: &Path, base: u64, active: bool, closed: bool, findings: &mut Vec<Finding>) -> Option<IndexCheck> {
        let file = match crate::fs::open_regular(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                findings.push(Finding::damage(path, 0, format!("cannot read the index: {e}")));
                return None;
            }
        };
        let mut check = IndexCheck {
            path: path.to_path_buf(),
            len: file.metadata().map(|m| m.len()).unwrap_or(0),
            src: Source::File(file),
            window: Window::default(),
            base,
            pos: FILE_HEADER_LEN as u64,
            prev: None,
            entries: 0,
            done: false,
            active,
            closed,
            findings: Vec::new(),
        };
        if let Err(e) = check.window.ensure(&check.src, &mut check.len, 0, FILE_HEADER_LEN, CHUNK) {
            findings.push(Finding::damage(path, 0, format!("cannot read the index: {e}")));
            return None;
        }
        let (bytes, _) = check.window.bytes();
        if bytes.len() < FILE_HEADER_LEN {
            findings.push(Finding::damage(
                path,
                bytes.len() as u64,
                format!("index file is shorter than its header; {REBUILT}"),
            ));
            return None;
        }
        if let Err(kind) = header::check(bytes, INDEX_MAGIC, base) {
            findings.push(Finding::damage(path, 0, format!("{kind}; {REBUILT}")));
            return None;
        }
        if !active && !(check.len - FILE_HEADER_LEN as u64).is_multiple_of(ENTRY_LEN as u64) {
            findings.push(Finding::damage(
                path,
                check.len,
                format!("a sealed index holds whole 8-byte entries, but the file is {} bytes; {REBUILT}", check.len),
            ));
        }
        Some(check)
    }

    /// The offset an entry names, in full even where it passes `u64::MAX` (a damaged entry).
    fn named(&self, rel: u32) -> u128 {
        u128::from(self.base) + u128::from(rel)
    }

    fn bad(&mut self, what: String) {
        self.findings.push(Finding::damage(&self.path, self.pos, format!("{what}; {REBUILT}")));
        self.done = true;
    }

    /// The next entry, without consuming it.
    fn peek(&mut self) -> Option<(u32, u32)> {
        if self.done {
            return None;
        }
        if let Err(e) = self.window.ensure(&self.src, &mut self.len, self.pos, ENTRY_LEN, CHUNK) {
            self.findings.push(Finding::damage(&self.path, self.pos, format!("cannot read the index: {e}")));
            self.done = true;
            return None;
        }
        let (bytes, start) = self.window.bytes();
        let Some(e) = bytes.get((self.pos - start) as usize..).and_then(|b| b.get(..ENTRY_LEN)) else {
            self.done = true;
            return None;
        };
        let entry = (LittleEndian::read_u32(e), LittleEndian::read_u32(&e[4..]));
        if entry == (0, 0) {
            if !self.active {
                self.at_zeros();
            }
            self.done = true;
            return None;
        }
        Some(entry)
    }

    /// Judges a zero entry of a sealed index. A cut index holds its entries and nothing
    /// else, and no entry is zero (every position lies past the header). Zeros from here to
    /// the end of the file are its preallocated room: the seal's cut of the index never
    /// ran, as when a process stops between a roll under `Interval` and the sealer thread's
    /// cut; segq wrote them, and nothing is lost. Anything after them is damage.
    fn at_zeros(&mut self) {
        let mut pos = self.pos;
        while pos < self.len {
            if let Err(e) = self.window.ensure(&self.src, &mut self.len, pos, 1, CHUNK) {
                self.findings.push(Finding::damage(&self.path, pos, format!("cannot read the index: {e}")));
                return;
            }
            let (bytes, start) = self.window.bytes();
            let rest = &bytes[(pos - start) as usize..];
            if rest.is_empty() {
                break;
            }
            if let Some(i) = rest.iter().position(|&b| b != 0) {
                let what = format!("an unused (zero) entry before bytes at {} in a sealed index", pos + i as u64);
                return self.bad(what);
            }
            pos += rest.len() as u64;
        }
        let what = format!("unused (zero) entries: the index was never cut to its entries; {REBUILT}");
        self.findings.push(Finding::warning(&self.path, self.pos, what));
    }

    fn consume(&mut self, entry: (u32, u32)) {
        self.prev = Some(entry);
        self.entries += 1;
        self.pos += ENTRY_LEN as u64;
    }

    /// Checks every entry that points at or before the record at `position` with `offset`.
    pub fn at_record(&mut self, position: u64, offset: u64) {
        while let Some((rel, pos)) = self.peek() {
            let pos64 = u64::from(pos);
            if pos64 > position {
                return;
            }
            if let Some((r, p)) = self.prev
                && !(rel > r && pos > p)
            {
                return self.bad(format!("entry ({rel}, {pos}) does not follow entry ({r}, {p}) in order"));
            }
            if pos64 < position || pos64 < FILE_HEADER_LEN as u64 {
                return self.bad(format!("entry for offset {} points at byte {pos}, inside a record", self.named(rel)));
            }
            if !names(self.base, rel, offset) {
                return self.bad(format!(
                    "entry for offset {} points at byte {pos}, where the record with offset {offset} starts",
                    self.named(rel)
                ));
            }
            self.consume((rel, pos));
        }
    }

    /// Checks the entries left once the records end at `data_end`: in a sealed segment none
    /// may be left; in the active one, entries past the data belong to records being written
    /// (unless the queue was closed cleanly). With `data_damaged`, the records stop at
    /// damage: entries past it index the records the damage hides, and are not checked.
    pub fn finish(&mut self, data_end: u64, data_damaged: bool) {
        if data_damaged {
            self.done = true;
            return;
        }
        while let Some((rel, pos)) = self.peek() {
            let in_order = self.prev.is_none_or(|(r, p)| rel > r && pos > p);
            if self.closed {
                let what = format!(
                    "entry ({rel}, {pos}) lies past the data (which ends at byte {data_end}) of a queue closed cleanly; \
                     the next open drops it"
                );
                self.findings.push(Finding::damage(&self.path, self.pos, what));
                self.done = true;
                return;
            }
            if self.active && !in_order {
                // A writer may be writing this entry right now: past the data, entries of
                // the active segment are not checked.
                self.done = true;
                return;
            }
            if !in_order {
                return self.bad(format!("entry ({rel}, {pos}) is out of order"));
            }
            if !self.active {
                return self.bad(format!(
                    "entry for offset {} points at byte {pos}, past the segment's records (which end at byte {data_end})",
                    self.named(rel)
                ));
            }
            self.consume((rel, pos));
        }
    }
}

/// Largest index file read whole for a lookup.
const MAX_LOOKUP_INDEX: u64 = 64 << 20;

/// The last entry of the index at `path` whose relative offset is at most `rel`, as
/// `(position, offset)`; `None` if the index is missing, damaged or too big to read whole.
pub(crate) fn floor(path: &Path, base: u64, rel: u64) -> Option<(u64, u64)> {
    let entries = used_entries(path, base)?;
    let (r, pos) = crate::segment::index::floor(&entries, rel)?;
    as_found(base, (r, pos))
}

/// The last entry of the index at `path` whose position is below `position`, as
/// `(position, offset)`; `None` as for [`floor`].
pub(crate) fn floor_below(path: &Path, base: u64, position: u64) -> Option<(u64, u64)> {
    let entries = used_entries(path, base)?;
    let below = usize::try_from(position.checked_sub(1)?).unwrap_or(usize::MAX);
    as_found(base, crate::segment::index::floor_by_position(&entries, below)?)
}

/// The entries of the sealed index at `path`, if the library would use it (its header
/// passes, it holds whole entries, and they are in order and inside the segment's
/// `data_len` bytes and `max_rel` offsets); `None` if it would rebuild it, and for an index
/// too big to read whole.
pub(crate) fn sealed_entries(path: &Path, base: u64, data_len: u64, max_rel: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = crate::fs::open_regular(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len > MAX_LOOKUP_INDEX || len < FILE_HEADER_LEN as u64 || !(len - FILE_HEADER_LEN as u64).is_multiple_of(8) {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(len).read_to_end(&mut bytes).ok()?;
    header::check(&bytes, INDEX_MAGIC, base).ok()?;
    let entries = bytes.split_off(FILE_HEADER_LEN);
    let data_len = usize::try_from(data_len).unwrap_or(usize::MAX);
    (crate::segment::index::ordered_len(&entries, data_len, max_rel) == entries.len()).then_some(entries)
}

/// The entries of the index at `path` before the first unused (zero) one: those that are
/// sorted.
fn used_entries(path: &Path, base: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = crate::fs::open_regular(path).ok()?;
    if file.metadata().ok()?.len() > MAX_LOOKUP_INDEX {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_LOOKUP_INDEX).read_to_end(&mut bytes).ok()?;
    header::check(&bytes, INDEX_MAGIC, base).ok()?;
    let entries = &bytes[FILE_HEADER_LEN..];
    let used =
        entries.chunks_exact(ENTRY_LEN).position(|e| e.iter().all(|&b| b == 0)).unwrap_or(entries.len() / ENTRY_LEN);
    Some(entries[..used * ENTRY_LEN].to_vec())
}

fn as_found(base: u64, (rel, pos): (u32, u32)) -> Option<(u64, u64)> {
    let offset = base.checked_add(u64::from(rel))?;
    (pos as usize >= FILE_HEADER_LEN).then_some((u64::from(pos), offset))
}
