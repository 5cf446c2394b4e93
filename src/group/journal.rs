//! A group's journal: the changes made since its last snapshot, one fixed-size entry each,
//! appended through a memory mapping so that a change costs no system call.
//!
//! File: `file header (32 bytes, JOURNAL_MAGIC) | entry*`, preallocated to
//! [`JOURNAL_BYTES`]. Entry grammar (little-endian): `crc: u32 | kind: u8 | flags: u8 |
//! reserved: [u8; 2] | offset: u64 | arg: u64`, where `crc` is CRC-32 of the snapshot's
//! generation (8 bytes, little-endian) followed by the entry's bytes 4..24, and flag bit 0
//! ([`UNSYNCED_SNAPSHOT`]) says that the generation's snapshot was written without waiting
//! for its sync. Tying the checksum to the generation
//! means that when the journal is restarted after a snapshot, entries of the old
//! generation further on fail their check: replay stops at the first entry that does not
//! verify, which is also how a torn entry is cut.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use byteorder::{ByteOrder, LittleEndian};

use super::state::Op;
use crate::error::{Error, IoContext, Result};
use crate::fs::{rename, reserve, temp_path};
use crate::mmap::{MapWriter, Mapping};
use crate::segment::header::{self, FILE_HEADER_LEN};

/// Size of a journal file (10 921 entries); when full, the group writes a snapshot and
/// starts it over. A group's files are this and two small snapshots: well under the 1 MiB
/// that 100,000 acks may leave. Each snapshot costs an fsync, which under
/// [`crate::SyncPolicy::Never`] runs on a thread of its own (see `Locked::compact_lazily`).
pub(crate) const JOURNAL_BYTES: usize = 256 << 10;

/// The largest journal file a group opens (and `segq verify` reads): far more than segq
/// writes, and a bound on what a damaged or hostile file can cost.
pub(crate) const MAX_JOURNAL_FILE: u64 = 1 << 30;
/// Bytes in one journal entry.
pub(crate) const ENTRY_LEN: usize = 24;
/// Magic number of a journal file.
pub(crate) const JOURNAL_MAGIC: [u8; 8] = *b"SEGQJRN\0";

const KIND_AT: usize = 4;
/// Where an entry's flags are.
pub(crate) const FLAGS_AT: usize = 5;
const OFFSET_AT: usize = 8;
const ARG_AT: usize = 16;

const DELIVER: u8 = 1;
const ACK: u8 = 2;
const NACK: u8 = 3;
const DEAD: u8 = 4;
const REDRIVE: u8 = 5;
const SEEK: u8 = 6;
const SKIP: u8 = 7;

/// Entry flag: the snapshot of this entry's generation was written without waiting for its
/// sync, so a power loss may have lost it with nothing damaged.
pub(crate) const UNSYNCED_SNAPSHOT: u8 = 1;

/// Bytes of an entry that its CRC covers after the generation.
const COVERED: usize = ENTRY_LEN - KIND_AT;

/// `BYTE_CRCS[i][b]`: what byte `b` at position `i` of an entry's covered bytes adds to its
/// CRC. CRC-32 is linear, so for a fixed length the CRC of a message is the CRC of an
/// all-zero message XOR one such term per byte.
static BYTE_CRCS: LazyLock<[[u32; 256]; COVERED]> = LazyLock::new(|| {
    let mut t = [[0u32; 256]; COVERED];
    // The last byte: the reflected CRC-32 (IEEE) table.
    for (b, term) in t[COVERED - 1].iter_mut().enumerate() {
        *term = (0..8).fold(b as u32, |c, _| if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 });
    }
    // A byte one place earlier is followed by one more zero byte.
    for i in (0..COVERED - 1).rev() {
        for b in 0..256 {
            let after = t[i + 1][b];
            t[i][b] = (after >> 8) ^ t[COVERED - 1][(after & 0xff) as usize];
        }
    }
    t
});

/// The checksum of the entries of one generation: CRC-32 of the generation's 8 bytes and
/// an entry's bytes 4..24. Computed by table, one lookup per entry byte, all independent of
/// each other: the generic CRC of so short an input is a chain of dependent steps that takes
/// about twice as long.
#[derive(Debug, Clone)]
pub(crate) struct EntryCrc {
    /// The CRC of the generation followed by 20 zero bytes.
    zeros: u32,
}

impl EntryCrc {
    pub fn new(generation: u64) -> EntryCrc {
        let mut h = crate::crc::hasher();
        h.update(&generation.to_le_bytes());
        h.update(&[0; COVERED]);
        EntryCrc { zeros: h.finalize() }
    }

    fn of(&self, entry: &[u8; ENTRY_LEN]) -> u32 {
        let tables = &*BYTE_CRCS;
        entry[KIND_AT..].iter().zip(tables).fold(self.zeros, |crc, (&b, terms)| crc ^ terms[usize::from(b)])
    }
}

/// Encodes one change for the generation `crc` belongs to, with `flags`.
pub(crate) fn encode(op: Op, crc: &EntryCrc, flags: u8) -> [u8; ENTRY_LEN] {
    let (kind, offset, arg) = match op {
        Op::Deliver { offset, attempt } => (DELIVER, offset, u64::from(attempt)),
        Op::Ack { offset } => (ACK, offset, 0),
        Op::Nack { offset, at_ms } => (NACK, offset, at_ms),
        Op::Dead { offset } => (DEAD, offset, 0),
        Op::Redrive { offset } => (REDRIVE, offset, 0),
        Op::Seek { offset } => (SEEK, offset, 0),
        Op::Skip { offset } => (SKIP, offset, 0),
    };
    let mut e = [0u8; ENTRY_LEN];
    e[KIND_AT] = kind;
    e[FLAGS_AT] = flags;
    LittleEndian::write_u64(&mut e[OFFSET_AT..], offset);
    LittleEndian::write_u64(&mut e[ARG_AT..], arg);
    let crc = crc.of(&e);
    LittleEndian::write_u32(&mut e, crc);
    e
}

/// Decodes one entry, or `None` if it does not verify for the generation `crc` belongs to.
pub(crate) fn decode(e: &[u8], crc: &EntryCrc) -> Option<Op> {
    let e: &[u8; ENTRY_LEN] = e.get(..ENTRY_LEN)?.try_into().ok()?;
    if LittleEndian::read_u32(e) != crc.of(e) {
        return None;
    }
    let offset = LittleEndian::read_u64(&e[OFFSET_AT..]);
    let arg = LittleEndian::read_u64(&e[ARG_AT..]);
    Some(match e[KIND_AT] {
        DELIVER => Op::Deliver { offset, attempt: u32::try_from(arg).ok()? },
        ACK => Op::Ack { offset },
        NACK => Op::Nack { offset, at_ms: arg },
        DEAD => Op::Dead { offset },
        REDRIVE => Op::Redrive { offset },
        SEEK => Op::Seek { offset },
        SKIP => Op::Skip { offset },
        _ => return None,
    })
}

/// The changes recorded in a journal's bytes for `generation`, and where they end.
pub(crate) fn replay(bytes: &[u8], generation: u64) -> (Vec<Op>, usize) {
    let crc = EntryCrc::new(generation);
    let mut ops = Vec::new();
    let mut pos = FILE_HEADER_LEN;
    while let Some(op) = bytes.get(pos..).and_then(|e| decode(e, &crc)) {
        ops.push(op);
        pos += ENTRY_LEN;
    }
    (ops, pos)
}

/// Whether `bytes`, a journal opened for `generation`, holds entries of the next one:
/// `Some(true)` if every one of them carries [`UNSYNCED_SNAPSHOT`], `Some(false)` if one
/// does not. They lie at the front when the journal was restarted for a newer snapshot, and
/// further on when a roll-back's [`Journal::erase`] was cut short with only the zeros of
/// the front on disk: the whole file is searched. An entry of the generation after the next
/// is `Some(false)` too: that one's snapshot was written only once the next one's was
/// synced, so the next one's loss is damage (an old copy of `state` put back, say).
pub(crate) fn next_generation_written(bytes: &[u8], generation: u64) -> Option<bool> {
    let next = EntryCrc::new(generation.wrapping_add(1));
    let after = EntryCrc::new(generation.wrapping_add(2));
    let mut found = None;
    // Most of a journal is zeros, which never decode (kind 0): skipped without a checksum.
    for entry in bytes.get(FILE_HEADER_LEN..)?.chunks_exact(ENTRY_LEN).filter(|e| *e != [0; ENTRY_LEN]) {
        if decode(entry, &next).is_some() {
            found = Some(found.unwrap_or(true) && entry[FLAGS_AT] & UNSYNCED_SNAPSHOT != 0);
        } else if decode(entry, &after).is_some() {
            return Some(false);
        }
    }
    found
}

/// The open journal of one group.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    writer: MapWriter,
    generation: u64,
    crc: EntryCrc,
    pos: usize,
    /// Entries before this position are on stable storage. Not those found at open: a run
    /// that crashed may have left them in the page cache only, and a later sync of entries
    /// after them would not make them durable.
    synced: usize,
    /// Times the file was started over from its front: a sync that began before does not
    /// cover the entries written since. (Not the generation: the repair of a failed
    /// snapshot sync starts the file over for the same one.)
    rewinds: u64,
    /// Changes written since the group was opened, across restarts of the file: what group
    /// commit counts, from 0. The entries found at open count as one, not yet durable.
    seq: u64,
    /// Entries of the next generation were found at open: whether every one of them
    /// carries [`UNSYNCED_SNAPSHOT`] (see `written_by_next_generation`).
    newer: Option<bool>,
    /// Flags of the entries written from now on.
    flags: u8,
    /// Where the entries without [`UNSYNCED_SNAPSHOT`] start in this generation; `None`
    /// while every entry carries it.
    unflagged_from: Option<usize>,
    /// Entries of this generation were promised durable: by a flush, or by an earlier run
    /// (at open, every entry found is taken as promised).
    promised: bool,
}

/// What a sync of the journal has to write back.
pub(crate) struct SyncJob {
    path: PathBuf,
    map: Arc<Mapping>,
    range: Range<usize>,
    rewinds: u64,
    pub seq: u64,
}

impl SyncJob {
    pub fn run(&self) -> Result<()> {
        crate::fs::sync_mapping(&self.map, &self.path, self.range.clone())
    }
}

impl Journal {
    /// Creates an empty journal file, durable with its name once the caller syncs the
    /// directory.
    pub fn create(path: &Path) -> Result<()> {
        let tmp = temp_path(path);
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).at(&tmp)?;
        crate::fs::write_at(&file, &tmp, &header::encode(JOURNAL_MAGIC, 0), 0)?;
        reserve(&file, &tmp, JOURNAL_BYTES as u64)?;
        crate::fs::sync_file(&file, &tmp)?;
        rename(&tmp, path)
    }

    /// Opens the journal and returns the changes it holds for `generation`; new entries go
    /// after them. The flag says whether entries of this generation lie past the first one
    /// that failed its check (a torn or lost write in the middle): new entries would
    /// overwrite them one by one, and the rest would be replayed again at the next open, so
    /// the caller must start a new generation first. A journal shorter than
    /// [`JOURNAL_BYTES`] is read as if it were grown with zeros, and must be grown with
    /// [`Journal::grow`] before it is written.
    pub fn open(path: &Path, generation: u64) -> Result<(Journal, Vec<Op>, bool)> {
        let file = match crate::fs::open_rw(path, false) {
            // The journal is made durable before the snapshot that names the group: with the
            // snapshot there, a journal that is gone is damage, as `segq` reports it.
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::corrupt(path, 0, crate::error::CorruptKind::Truncated));
            }
            other => other?,
        };
        let len = file.metadata().at(path)?.len();
        if len > MAX_JOURNAL_FILE {
            // segq writes journals of JOURNAL_BYTES; a file this big is not one of them, and
            // mapping and scanning it would cost its whole length.
            let why = format!("a group file of {len} bytes is too big");
            return Err(Error::corrupt(path, 0, crate::error::CorruptKind::BadHeader(why)));
        }
        let len = len as usize;
        if len < FILE_HEADER_LEN {
            return Err(Error::corrupt(path, len as u64, crate::error::CorruptKind::Truncated));
        }
        let crc = EntryCrc::new(generation);
        let (ops, end, stale, newer, unflagged_from) = {
            let view = Mapping::read_only(&file, len).at(path)?;
            // A journal cut short (by damage or by hand) is read as the zeros `grow` brings
            // it to size with, once the group has decided to open: not before an error that
            // should change nothing.
            let mut padded = Vec::new();
            let bytes = if len < JOURNAL_BYTES {
                padded.extend_from_slice(view.readable());
                padded.resize(JOURNAL_BYTES, 0);
                &padded[..]
            } else {
                view.readable()
            };
            header::check(bytes, JOURNAL_MAGIC, 0).map_err(|kind| Error::corrupt(path, 0, kind))?;
            let (ops, end) = replay(bytes, generation);
            let flagged = |e: &[u8]| e[FLAGS_AT] & UNSYNCED_SNAPSHOT != 0;
            let replayed = bytes[FILE_HEADER_LEN..end].chunks_exact(ENTRY_LEN);
            let unflagged_from = match replayed.clone().position(|e| !flagged(e)) {
                Some(i) => Some(FILE_HEADER_LEN + i * ENTRY_LEN),
                None if end > FILE_HEADER_LEN => None,
                None => Some(FILE_HEADER_LEN),
            };
            let stale = bytes[end..].chunks_exact(ENTRY_LEN).any(|e| decode(e, &crc).is_some());
            let newer = next_generation_written(bytes, generation);
            (ops, end, stale, newer, unflagged_from)
        };
        // (`end` is past `len` when zeros made a cut entry whole: `grow` maps that far.)
        let (_, writer) = Mapping::read_write(&file, len, end.min(len)).at(path)?;
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            writer,
            generation,
            crc,
            pos: end,
            synced: FILE_HEADER_LEN,
            rewinds: 0,
            seq: u64::from(end > FILE_HEADER_LEN),
            newer,
            flags: 0,
            unflagged_from,
            promised: end > FILE_HEADER_LEN,
        };
        Ok((journal, ops, stale))
    }

    /// Whether the snapshot may not have been synced, as far as the entries replayed at open
    /// can tell: a run that wrote it without waiting for its sync stopped before it saw the
    /// sync done, and flagged its entries; or it stopped before any entry of the generation
    /// was written. Only an unflagged first entry proves the snapshot synced.
    pub fn snapshot_maybe_unsynced(&self) -> bool {
        self.pos == FILE_HEADER_LEN || self.unflagged_from != Some(FILE_HEADER_LEN)
    }

    /// Takes the entries found at open as durable: the group was flushed and closed by this
    /// process (see `Group::open`), so no crash can have left them in the page cache only.
    pub fn assume_synced(&mut self) {
        self.synced = self.pos;
    }

    /// Brings a journal shorter than [`JOURNAL_BYTES`] to its size, its blocks reserved
    /// and the rest zeros, once its group has decided to open. Needed before any write.
    pub fn grow(&mut self) -> Result<()> {
        if self.writer.mapping().len() >= JOURNAL_BYTES {
            return Ok(());
        }
        reserve(&self.file, &self.path, JOURNAL_BYTES as u64)?;
        let (_, writer) = Mapping::read_write(&self.file, JOURNAL_BYTES, self.pos).at(&self.path)?;
        self.writer = writer;
        Ok(())
    }

    /// Zeroes every entry and syncs the zeros, so that no entry written so far can verify
    /// again, for any generation: before a group that rolled back reuses the generation
    /// numbers of the entries left in the journal. New entries go from the front again.
    pub fn erase(&mut self) -> Result<()> {
        // Entries of the older generation may have been replayed from the front (a power
        // loss kept their page, not the newer entries written over it): below the
        // writer's published length, which only a rewind lowers.
        self.rewind()?;
        let len = self.writer.mapping().len();
        self.writer.write(FILE_HEADER_LEN, &vec![0; len - FILE_HEADER_LEN]);
        crate::fs::sync_mapping(self.writer.mapping(), &self.path, FILE_HEADER_LEN..len)?;
        self.rewind()
    }

    /// Makes the whole journal writable again from its front, on a new mapping if a sync
    /// still holds this one.
    fn rewind(&mut self) -> Result<()> {
        // The mapping is reused unless a sync still holds it: a new one costs an mmap, an
        // munmap and a page fault per page written, about as much as the snapshot's fsync.
        if !self.writer.rewind(FILE_HEADER_LEN) {
            let len = self.writer.mapping().len();
            let (_, writer) = Mapping::read_write(&self.file, len, FILE_HEADER_LEN).at(&self.path)?;
            self.writer = writer;
        }
        self.pos = FILE_HEADER_LEN;
        self.synced = FILE_HEADER_LEN;
        self.rewinds += 1;
        Ok(())
    }

    /// Whether entries of the generation after this one were found at open, the journal
    /// restarted for a newer snapshot than the one being opened: `Some(true)` if every
    /// entry of that generation was written before its snapshot was synced (a power loss
    /// may have lost the snapshot, with nothing damaged), `Some(false)` if one was written
    /// after.
    pub fn written_by_next_generation(&self) -> Option<bool> {
        self.newer
    }

    /// Stops marking entries [`UNSYNCED_SNAPSHOT`]: the snapshot is synced now.
    pub fn snapshot_synced(&mut self) {
        self.flags &= !UNSYNCED_SNAPSHOT;
        self.unflagged_from.get_or_insert(self.pos);
    }

    /// Whether the entries written now say their snapshot may be unsynced: its sync has
    /// not been seen to succeed.
    pub fn snapshot_unsynced(&self) -> bool {
        self.flags & UNSYNCED_SNAPSHOT != 0
    }

    /// Notes that the entries so far are promised durable (a flush is syncing them).
    pub fn promise(&mut self) {
        self.promised |= self.pos > FILE_HEADER_LEN;
    }

    /// Whether entries of this generation were promised durable: restarting over them
    /// before the next snapshot is durable could lose them.
    pub fn promised(&self) -> bool {
        self.promised
    }

    /// Whether this generation has entries and all of them carry [`UNSYNCED_SNAPSHOT`]:
    /// then a lost snapshot would roll the group back past them, even once they are synced.
    pub fn only_unsynced_entries(&self) -> bool {
        self.pos > FILE_HEADER_LEN && self.unflagged_from.is_none_or(|from| self.pos <= from)
    }

    /// Whether the file is longer than [`JOURNAL_BYTES`]: written by an older build, whose
    /// journals were 1 MiB.
    pub fn oversized(&self) -> bool {
        self.writer.mapping().len() > JOURNAL_BYTES
    }

    /// Cuts an [oversized](Journal::oversized) file to [`JOURNAL_BYTES`], right after a
    /// restart at open: its entries fit, and no sync holds the old mapping yet.
    pub fn shrink(&mut self) -> Result<()> {
        if !self.oversized() || self.pos > JOURNAL_BYTES {
            return Ok(());
        }
        let (_, writer) = Mapping::read_write(&self.file, JOURNAL_BYTES, self.pos).at(&self.path)?;
        self.writer = writer;
        self.file.set_len(JOURNAL_BYTES as u64).at(&self.path)?;
        crate::fs::sync_file(&self.file, &self.path)
    }

    /// Whether another entry fits.
    pub fn has_room(&self) -> bool {
        self.pos + ENTRY_LEN <= self.writer.mapping().len()
    }

    /// Appends one change (the caller checked [`Journal::has_room`]); returns its sequence
    /// number for [`Journal::sync_job`].
    pub fn append(&mut self, op: Op) -> u64 {
        self.writer.write(self.pos, &encode(op, &self.crc, self.flags));
        self.pos += ENTRY_LEN;
        self.writer.publish(self.pos);
        self.seq += 1;
        self.seq
    }

    /// Starts the file over for a new generation, after a snapshot of that generation made
    /// every entry so far redundant. `flags` go on every entry of the generation.
    pub fn restart(&mut self, generation: u64, flags: u8) -> Result<()> {
        self.rewind()?;
        self.generation = generation;
        self.crc = EntryCrc::new(generation);
        self.flags = flags;
        self.unflagged_from = (flags & UNSYNCED_SNAPSHOT == 0).then_some(FILE_HEADER_LEN);
        self.promised = false;
        Ok(())
    }

    /// What must be synced for every entry so far to be durable.
    pub fn sync_job(&self) -> SyncJob {
        SyncJob {
            path: self.path.clone(),
            map: self.writer.mapping().clone(),
            range: self.synced..self.pos,
            rewinds: self.rewinds,
            seq: self.seq,
        }
    }

    /// Records that a sync job finished.
    pub fn synced(&mut self, job: &SyncJob) {
        // Not if the file was started over meanwhile: the range holds other entries now.
        if job.rewinds == self.rewinds {
            self.synced = self.synced.max(job.range.end);
        }
    }

    /// Entries written so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_only_in_their_generation() {
        let ops = [
            Op::Deliver { offset: 1, attempt: 3 },
            Op::Ack { offset: 2 },
            Op::Nack { offset: 3, at_ms: 99 },
            Op::Dead { offset: 4 },
            Op::Redrive { offset: 5 },
            Op::Seek { offset: 6 },
            Op::Skip { offset: 7 },
        ];
        for op in ops {
            let e = encode(op, &EntryCrc::new(7), 0);
            assert_eq!(decode(&e, &EntryCrc::new(7)), Some(op));
            assert_eq!(decode(&e, &EntryCrc::new(8)), None);
        }
    }

    #[test]
    fn the_table_crc_is_crc32_of_the_generation_and_the_entry() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for generation in [0, 1, 7, u64::MAX] {
            for _ in 0..200 {
                let mut entry = [0u8; ENTRY_LEN];
                for b in &mut entry {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let mut covered = generation.to_le_bytes().to_vec();
                covered.extend_from_slice(&entry[KIND_AT..]);
                assert_eq!(EntryCrc::new(generation).of(&entry), crc32fast::hash(&covered));
            }
        }
    }

    #[test]
    fn replay_stops_at_a_torn_entry_and_a_restart_hides_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        Journal::create(&path).unwrap();
        let (mut j, ops, _) = Journal::open(&path, 0).unwrap();
        assert!(ops.is_empty());
        for o in 0..3 {
            j.append(Op::Ack { offset: o });
        }
        j.restart(1, 0).unwrap();
        j.append(Op::Seek { offset: 9 });
        drop(j);
        let (_, ops, stale) = Journal::open(&path, 1).unwrap();
        assert!(!stale, "entries of generation 0 are not this generation's");
        assert_eq!(ops, vec![Op::Seek { offset: 9 }]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FILE_HEADER_LEN + 5] ^= 1;
        assert_eq!(replay(&bytes, 1).0, vec![]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, ops, stale) = Journal::open(&path, 1).unwrap();
        assert!(ops.is_empty());
        assert!(!stale);
    }
}
