//! A group's snapshot and journal files, read in bounded memory: a snapshot as the library
//! reads it (whole only once its length agrees with its entry count and its checksum
//! matches, checked a MiB at a time), and the journal [`CHUNK`] bytes at a time. A sparse
//! or hostile file of any length costs a bounded buffer, not its length.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};

use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::group::journal::{ENTRY_LEN, JOURNAL_MAGIC};
use crate::group::snapshot::{self, Snapshot};
use crate::segment::header::{self, FILE_HEADER_LEN};

/// Largest group file read: far more than any group writes, and a bound on how long a
/// damaged or hostile file can make a check take.
const MAX_GROUP_FILE: u64 = crate::group::journal::MAX_JOURNAL_FILE;
/// Bytes read from a group file at a time: a whole number of journal entries.
pub(super) const CHUNK: usize = ENTRY_LEN * 4096;

// The snapshot layout of FORMAT.md ("The snapshots"): `file header | fixed part (48 bytes)
// | entry (24 bytes) * count | crc: u32`.
/// Position of a snapshot's generation, in its file header's `base_offset` field.
const GENERATION_AT: usize = 16;
/// Position of a snapshot's `floor` field.
pub(super) const FLOOR_AT: u64 = FILE_HEADER_LEN as u64 + 16;
/// Position of a snapshot's `next` field.
pub(super) const NEXT_AT: u64 = FLOOR_AT + 8;

/// What one of a group's snapshot files holds.
#[derive(Debug)]
enum Slot {
    Missing,
    Damaged(Damaged),
    Valid(Snapshot),
}

/// A snapshot file that fails its checks.
#[derive(Debug)]
pub(super) struct Damaged {
    /// An [`Error::Corrupt`] naming the file, the position and what is wrong.
    pub error: Error,
    /// The generation in its header, when the header itself (which has a CRC of its own)
    /// passes its checks.
    pub generation: Option<u64>,
}

/// Reads as much of `buf` as the file still holds; `Ok(false)` if it ends first (a file cut
/// while it is read, by a live group writing a snapshot in its place).
fn fill(file: &mut File, path: &Path, buf: &mut [u8]) -> Result<bool> {
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads and checks one snapshot file as opening the group does (`snapshot::read_checked`,
/// then `Snapshot::decode`), refusing to read one over [`MAX_GROUP_FILE`].
fn read_slot(path: &Path) -> Result<Slot> {
    let checked = match snapshot::read_checked(path, MAX_GROUP_FILE) {
        Ok(checked) => checked,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Slot::Missing),
        // Cut while it was read (a live group writing a snapshot in its place).
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err((0, CorruptKind::Truncated)),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(match checked.and_then(|bytes| Snapshot::decode(&bytes)) {
        Ok(snap) => Slot::Valid(snap),
        Err((position, kind)) => {
            Slot::Damaged(Damaged { error: Error::corrupt(path, position, kind), generation: generation_of(path) })
        }
    })
}

/// The generation in a snapshot file's header, if the header (which has a CRC of its own)
/// passes its checks.
fn generation_of(path: &Path) -> Option<u64> {
    let mut head = [0u8; FILE_HEADER_LEN];
    crate::fs::open_regular(path).ok()?.read_exact(&mut head).ok()?;
    let claimed = LittleEndian::read_u64(&head[GENERATION_AT..]);
    header::check(&head, snapshot::STATE_MAGIC, claimed).ok().map(|()| claimed)
}

/// The snapshot that opening the group would use.
#[derive(Debug)]
pub(super) struct Snapshots {
    /// The newest valid snapshot.
    pub snap: Snapshot,
    /// The file it is in.
    pub path: PathBuf,
    /// The other file, when it fails its checks and is passed over.
    pub passed_over: Option<Damaged>,
}

/// The newest valid snapshot of the group whose first snapshot file is `state_path`, as
/// `snapshot::latest` picks it: of the files that pass their checks, the one of the later
/// generation (`snapshot::preferred`); when none does, the error of the first damaged file
/// (`state` before `state.1`).
///
/// # Errors
/// [`Error::Corrupt`] if no file holds a valid snapshot; [`Error::Io`] if a file cannot be
/// read (`NotFound` if neither exists).
pub(super) fn read_snapshots(state_path: &Path) -> Result<Snapshots> {
    let dir = state_path.parent().unwrap_or(Path::new("."));
    let mut best: Option<(Snapshot, PathBuf)> = None;
    let mut damage = None;
    for name in snapshot::FILES {
        let path = dir.join(name);
        match read_slot(&path)? {
            Slot::Missing => {}
            Slot::Damaged(d) => damage = damage.or(Some(d)),
            Slot::Valid(snap) => {
                if best.as_ref().is_none_or(|(b, _)| snapshot::preferred(snap.generation, &path, b.generation)) {
                    best = Some((snap, path));
                }
            }
        }
    }
    match (best, damage) {
        (Some((snap, path)), passed_over) => Ok(Snapshots { snap, path, passed_over }),
        (None, Some(d)) => Err(d.error),
        (None, None) => Err(Error::io(state_path, io::Error::from(io::ErrorKind::NotFound))),
    }
}

/// A group's journal, read a chunk of whole entries at a time.
pub(super) struct JournalReader {
    file: io::Take<File>,
    path: PathBuf,
    buf: Vec<u8>,
    /// Position in the file of the next chunk.
    pos: u64,
}

impl JournalReader {
    /// Opens the journal at `path` and checks its header.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the file is missing, shorter than its header, larger than
    /// [`MAX_GROUP_FILE`] or its header is damaged, as the queue refuses to open the group;
    /// [`Error::Io`] if it cannot be read.
    pub fn open(path: &Path) -> Result<JournalReader> {
        let mut file = match crate::fs::open_regular(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::corrupt(path, 0, CorruptKind::Truncated));
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let len = file.metadata().at(path)?.len();
        if len > MAX_GROUP_FILE {
            let why = format!("a group file of {len} bytes is too big");
            return Err(Error::corrupt(path, 0, CorruptKind::BadHeader(why)));
        }
        let mut head = [0u8; FILE_HEADER_LEN];
        if len < FILE_HEADER_LEN as u64 || !fill(&mut file, path, &mut head)? {
            return Err(Error::corrupt(path, len, CorruptKind::Truncated));
        }
        header::check(&head, JOURNAL_MAGIC, 0).map_err(|kind| Error::corrupt(path, 0, kind))?;
        let file = file.take(MAX_GROUP_FILE - FILE_HEADER_LEN as u64);
        Ok(JournalReader { file, path: path.to_path_buf(), buf: vec![0; CHUNK], pos: FILE_HEADER_LEN as u64 })
    }

    /// The next chunk of entries and the position of its first, or `None` at the end of
    /// the file. A chunk holds a whole number of entries, except the last one of the file,
    /// which may end with part of one (read as the queue reads it: see `replay_journal`).
    pub fn next_chunk(&mut self) -> Result<Option<(u64, &[u8])>> {
        let mut filled = 0;
        while filled < self.buf.len() {
            match self.file.read(&mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        let at = self.pos;
        self.pos += filled as u64;
        Ok(Some((at, &self.buf[..filled])))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_snapshot_file_is_valid_exactly_when_the_queue_decodes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let snap = Snapshot {
            generation: 3,
            lease: Duration::from_secs(5),
            max_attempts: 4,
            floor: 10,
            next: 20,
            lost: 1,
            entries: vec![(12, 1, 2, 99), (15, 3, 4, 0)],
        };
        let bytes = snap.encode();
        let mut cases = vec![bytes.clone(), bytes[..bytes.len() - 1].to_vec(), bytes[..40].to_vec()];
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            cases.push(bad);
        }
        let mut longer = bytes.clone();
        longer.resize(1 << 20, 0);
        cases.push(longer);
        for case in cases {
            std::fs::write(&path, &case).unwrap();
            match (read_slot(&path).unwrap(), Snapshot::decode(&case)) {
                (Slot::Valid(s), Ok(d)) => assert_eq!(s, d),
                (Slot::Damaged(Damaged { error: Error::Corrupt { .. }, .. }), Err(_)) => {}
                (got, want) => panic!("{} bytes: read as {got:?}, decoded as {want:?}", case.len()),
            }
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read_slot(&path).unwrap(), Slot::Missing));
    }
}
