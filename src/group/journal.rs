//! A group's journal: the changes made since its last snapshot, one fixed-size entry each,
//! appended through a memory mapping so that a change costs no system call.
//!
//! File: `file header (32 bytes, JOURNAL_MAGIC) | entry*`, preallocated to
//! [`JOURNAL_BYTES`]. Entry grammar (little-endian): `crc: u32 | kind: u8 | reserved: [u8; 3]
//! | offset: u64 | arg: u64`, where `crc` is CRC-32 of the snapshot's generation (8 bytes,
//! little-endian) followed by the entry's bytes 4..24. Tying the checksum to the generation
//! means that when the journal is restarted after a snapshot, entries of the old
//! generation further on fail their check: replay stops at the first entry that does not
//! verify, which is also how a torn entry is cut.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use byteorder::{ByteOrder, LittleEndian};

use super::state::Op;
use crate::error::{Error, IoContext, Result};
use crate::fs::{rename, reserve, temp_path};
use crate::mmap::{MapWriter, Mapping};
use crate::segment::header::{self, FILE_HEADER_LEN};

/// Size of a journal file; when full, the group writes a snapshot and starts it over.
pub(crate) const JOURNAL_BYTES: usize = 256 << 10;
/// Bytes in one journal entry.
pub(crate) const ENTRY_LEN: usize = 24;
/// Magic number of a journal file.
pub(crate) const JOURNAL_MAGIC: [u8; 8] = *b"SEGQJRN\0";

const KIND_AT: usize = 4;
const OFFSET_AT: usize = 8;
const ARG_AT: usize = 16;

const DELIVER: u8 = 1;
const ACK: u8 = 2;
const NACK: u8 = 3;
const DEAD: u8 = 4;
const REDRIVE: u8 = 5;
const SEEK: u8 = 6;
const SKIP: u8 = 7;

fn crc(generation: u64, entry: &[u8]) -> u32 {
    let mut covered = [0u8; 8 + ENTRY_LEN - KIND_AT];
    covered[..8].copy_from_slice(&generation.to_le_bytes());
    covered[8..].copy_from_slice(&entry[KIND_AT..ENTRY_LEN]);
    let mut h = crate::record::hasher();
    h.update(&covered);
    h.finalize()
}

/// Encodes one change for the given generation.
pub(crate) fn encode(op: Op, generation: u64) -> [u8; ENTRY_LEN] {
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
    LittleEndian::write_u64(&mut e[OFFSET_AT..], offset);
    LittleEndian::write_u64(&mut e[ARG_AT..], arg);
    let crc = crc(generation, &e);
    LittleEndian::write_u32(&mut e, crc);
    e
}

/// Decodes one entry, or `None` if it does not verify for this generation.
pub(crate) fn decode(e: &[u8], generation: u64) -> Option<Op> {
    let e = e.get(..ENTRY_LEN)?;
    if LittleEndian::read_u32(e) != crc(generation, e) {
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
    let mut ops = Vec::new();
    let mut pos = FILE_HEADER_LEN;
    while let Some(op) = bytes.get(pos..).and_then(|e| decode(e, generation)) {
        ops.push(op);
        pos += ENTRY_LEN;
    }
    (ops, pos)
}

/// The open journal of one group.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    writer: MapWriter,
    generation: u64,
    pos: usize,
    /// Entries before this position are on stable storage.
    synced: usize,
    /// Entries written since the group was opened, across restarts of the file: what group
    /// commit counts.
    seq: u64,
    /// The first entry verifies for the next generation (see `written_by_next_generation`).
    newer: bool,
}

/// What a sync of the journal has to write back.
pub(crate) struct SyncJob {
    path: PathBuf,
    map: Arc<Mapping>,
    range: Range<usize>,
    generation: u64,
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
    /// the caller must start a new generation first.
    pub fn open(path: &Path, generation: u64) -> Result<(Journal, Vec<Op>, bool)> {
        let file = crate::fs::open_rw(path, false)?;
        let len = file.metadata().at(path)?.len() as usize;
        if len < FILE_HEADER_LEN {
            return Err(Error::corrupt(path, len as u64, crate::error::CorruptKind::Truncated));
        }
        if len < JOURNAL_BYTES {
            reserve(&file, path, JOURNAL_BYTES as u64)?;
        }
        let len = len.max(JOURNAL_BYTES);
        let (ops, end, stale, newer) = {
            let view = Mapping::read_only(&file, len).at(path)?;
            let bytes = view.readable();
            header::check(bytes, JOURNAL_MAGIC, 0).map_err(|kind| Error::corrupt(path, 0, kind))?;
            let (ops, end) = replay(bytes, generation);
            let stale = bytes[end..].chunks_exact(ENTRY_LEN).any(|e| decode(e, generation).is_some());
            let newer = decode(&bytes[FILE_HEADER_LEN..], generation + 1).is_some();
            (ops, end, stale, newer)
        };
        let (_, writer) = Mapping::read_write(&file, len, end).at(path)?;
        let journal =
            Journal { path: path.to_path_buf(), file, writer, generation, pos: end, synced: end, seq: 0, newer };
        Ok((journal, ops, stale))
    }

    /// Whether the first entry is of the generation after this one: the journal was
    /// restarted for a newer snapshot than the one being opened.
    pub fn written_by_next_generation(&self) -> bool {
        self.newer
    }

    /// Whether another entry fits.
    pub fn has_room(&self) -> bool {
        self.pos + ENTRY_LEN <= self.writer.mapping().len()
    }

    /// Appends one change (the caller checked [`Journal::has_room`]); returns its sequence
    /// number for [`Journal::sync_job`].
    pub fn append(&mut self, op: Op) -> u64 {
        self.writer.write(self.pos, &encode(op, self.generation));
        self.pos += ENTRY_LEN;
        self.writer.publish(self.pos);
        self.seq += 1;
        self.seq
    }

    /// Starts the file over for a new generation, after a snapshot of that generation made
    /// every entry so far redundant.
    pub fn restart(&mut self, generation: u64) -> Result<()> {
        let len = self.writer.mapping().len();
        let (_, writer) = Mapping::read_write(&self.file, len, FILE_HEADER_LEN).at(&self.path)?;
        self.writer = writer;
        self.generation = generation;
        self.pos = FILE_HEADER_LEN;
        self.synced = FILE_HEADER_LEN;
        Ok(())
    }

    /// What must be synced for every entry so far to be durable.
    pub fn sync_job(&self) -> SyncJob {
        SyncJob {
            path: self.path.clone(),
            map: self.writer.mapping().clone(),
            range: self.synced..self.pos,
            generation: self.generation,
            seq: self.seq,
        }
    }

    /// Records that a sync job finished.
    pub fn synced(&mut self, job: &SyncJob) {
        if job.generation == self.generation {
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
            let e = encode(op, 7);
            assert_eq!(decode(&e, 7), Some(op));
            assert_eq!(decode(&e, 8), None);
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
        j.restart(1).unwrap();
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
