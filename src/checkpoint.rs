//! The `checkpoint` file: where the log is known to be durable, and whether it was closed
//! cleanly. It bounds the work of recovery.
//!
//! Two slots of 64 bytes, each `magic: [u8; 8] | version: u32 | flags: u32 | segment_base:
//! u64 | position: u64 | next_offset: u64 | crc: u32 | zero padding`, with `crc` the CRC-32
//! of the 40 bytes before it:
//! - both slots are written and synced (flags 0) at open, and when a segment is sealed:
//!   then they name the start of its successor;
//! - slot A (byte 0) is also written and synced at a clean close (flags `CLEAN`);
//! - slot B (byte 512, another sector) is also written after syncs of the log, and synced
//!   itself at most once a second: it may lag behind, but it never claims more than what
//!   was synced.
//!
//! Any valid slot naming the newest segment is a position below which that segment's data
//! was synced; recovery scans from the highest such position. Slot A with `CLEAN` says the
//! data ends exactly there, so nothing is scanned. A slot names the newest segment only
//! once the segment before it is sealed, as seals run in the background: if none does,
//! recovery checks that segment too, from the highest position a slot names in it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{IoContext, Result};
use crate::fs::open_rw;
use crate::segment::header::FORMAT_VERSION;

/// Name of the checkpoint file in a queue directory.
pub(crate) const FILE_NAME: &str = "checkpoint";

const MAGIC: [u8; 8] = *b"SEGQCKPT";
const SLOT_A: u64 = 0;
const SLOT_B: u64 = 512;
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const FLAGS_AT: usize = VERSION_AT + 4;
const BASE_AT: usize = FLAGS_AT + 4;
const POSITION_AT: usize = BASE_AT + 8;
const NEXT_AT: usize = POSITION_AT + 8;
const CRC_AT: usize = NEXT_AT + 8;
const SLOT_LEN: usize = 64;
const CLEAN: u32 = 1;

/// One durable position of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Base offset of the segment the position is in.
    pub segment_base: u64,
    /// Byte position in that segment, just past a record.
    pub position: u64,
    /// Offset of the record that would start at `position`.
    pub next_offset: u64,
    /// The queue was closed cleanly with its data ending at `position`.
    pub clean: bool,
}

fn encode(mark: Mark) -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    s[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
    LittleEndian::write_u32(&mut s[VERSION_AT..], FORMAT_VERSION);
    LittleEndian::write_u32(&mut s[FLAGS_AT..], if mark.clean { CLEAN } else { 0 });
    LittleEndian::write_u64(&mut s[BASE_AT..], mark.segment_base);
    LittleEndian::write_u64(&mut s[POSITION_AT..], mark.position);
    LittleEndian::write_u64(&mut s[NEXT_AT..], mark.next_offset);
    let crc = crc32fast::hash(&s[..CRC_AT]);
    LittleEndian::write_u32(&mut s[CRC_AT..], crc);
    s
}

fn decode(s: &[u8]) -> Option<Mark> {
    let s = s.get(..SLOT_LEN)?;
    let valid = s[MAGIC_AT..VERSION_AT] == MAGIC
        && LittleEndian::read_u32(&s[VERSION_AT..]) == FORMAT_VERSION
        && LittleEndian::read_u32(&s[CRC_AT..]) == crc32fast::hash(&s[..CRC_AT]);
    valid.then(|| Mark {
        segment_base: LittleEndian::read_u64(&s[BASE_AT..]),
        position: LittleEndian::read_u64(&s[POSITION_AT..]),
        next_offset: LittleEndian::read_u64(&s[NEXT_AT..]),
        clean: LittleEndian::read_u32(&s[FLAGS_AT..]) & CLEAN != 0,
    })
}

/// Reads both slots of a checkpoint file's bytes: `(slot A, slot B)`, each `None` when
/// missing or damaged.
pub(crate) fn parse(bytes: &[u8]) -> (Option<Mark>, Option<Mark>) {
    (decode(&bytes[SLOT_A as usize..]), bytes.get(SLOT_B as usize..).and_then(decode))
}

/// The open checkpoint file.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    path: PathBuf,
    /// `None` once closed.
    file: Option<File>,
    /// Newest position written to slot B, so an older one never overwrites it.
    progress: Option<(u64, u64)>,
    /// When slot B was last synced.
    synced_at: Instant,
}

/// How often slot B is made durable. Between two such syncs, a machine crash can make
/// recovery scan (and treat as unsynced) up to this much of the most recently synced data.
const SYNC_EVERY: Duration = Duration::from_secs(1);

impl Checkpoint {
    /// Opens (or creates) the checkpoint of the queue in `dir` and reads its slots.
    pub fn open(dir: &Path) -> Result<(Checkpoint, Option<Mark>, Option<Mark>)> {
        let path = dir.join(FILE_NAME);
        let created = !path.exists();
        let file = open_rw(&path, true)?;
        if created {
            crate::fs::sync_dir(dir)?;
        }
        let mut bytes = vec![0u8; SLOT_B as usize + SLOT_LEN];
        let read = read_up_to(&file, &mut bytes).at(&path)?;
        bytes.truncate(read);
        let (a, b) = if bytes.len() >= SLOT_LEN { parse(&bytes) } else { (None, None) };
        Ok((Checkpoint { path, file: Some(file), progress: None, synced_at: Instant::now() }, a, b))
    }

    /// Writes `mark` to both slots and waits until it is durable: where a freshly opened log
    /// ends (slot B may name a position of data that recovery has since cut, a tail torn in
    /// a crash or a file cut by hand, and must never send a later recovery past records
    /// appended from here on), or where the successor of a just sealed segment starts.
    pub fn write_both(&mut self, mark: Mark) -> Result<()> {
        let mark = Mark { clean: false, ..mark };
        crate::fs::write_at(self.file()?, &self.path, &encode(mark), SLOT_B)?;
        self.progress = Some((mark.segment_base, mark.position));
        self.synced_at = Instant::now();
        self.write_durable(mark)
    }

    /// Writes slot A and waits until it is durable.
    pub fn write_durable(&mut self, mark: Mark) -> Result<()> {
        let file = self.file()?;
        crate::fs::write_at(file, &self.path, &encode(mark), SLOT_A)?;
        crate::fs::sync_file_data(file, &self.path)
    }

    /// Closes the file: the log wrote its last mark.
    pub fn close(&mut self) {
        self.file = None;
    }

    fn file(&self) -> Result<&File> {
        match &self.file {
            Some(file) => Ok(file),
            None => Err(crate::Error::Closed),
        }
    }

    /// Notes in slot B that the log is synced up to `mark`. The slot itself is synced when a
    /// second has passed since it last was.
    pub fn note_synced(&mut self, mark: Mark) -> Result<()> {
        let key = (mark.segment_base, mark.position);
        if self.progress.is_some_and(|p| p >= key) {
            return Ok(());
        }
        let Some(file) = &self.file else { return Err(crate::Error::Closed) };
        crate::fs::write_at(file, &self.path, &encode(Mark { clean: false, ..mark }), SLOT_B)?;
        self.progress = Some(key);
        if self.synced_at.elapsed() >= SYNC_EVERY {
            crate::fs::sync_file_data(file, &self.path)?;
            self.synced_at = Instant::now();
        }
        Ok(())
    }
}

fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_damage_is_ignored() {
        let mark = Mark { segment_base: 7, position: 4096, next_offset: 99, clean: true };
        let mut bytes = vec![0u8; SLOT_B as usize + SLOT_LEN];
        bytes[..SLOT_LEN].copy_from_slice(&encode(mark));
        assert_eq!(parse(&bytes), (Some(mark), None));
        bytes[POSITION_AT] ^= 1;
        assert_eq!(parse(&bytes), (None, None));
    }

    #[test]
    fn slot_b_never_goes_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ck, _, _) = Checkpoint::open(dir.path()).unwrap();
        let at = |position| Mark { segment_base: 0, position, next_offset: position, clean: false };
        ck.note_synced(at(200)).unwrap();
        ck.note_synced(at(100)).unwrap();
        let (_, _, b) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(b, Some(at(200)));
    }
}
