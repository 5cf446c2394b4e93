//! A group's snapshot: its whole state at one moment. Snapshots alternate between two files
//! (`state` for even generations, `state.1` for odd ones), each written in place and
//! synced: a crash while one is written leaves the other, the previous generation, valid.
//! Only open records are listed; offsets below `next` that are not listed are acked.
//!
//! Grammar (little-endian): `file header (32 bytes, STATE_MAGIC, base field = generation) |
//! lease_ms: u64 | max_attempts: u32 | reserved: u32 | floor: u64 | next: u64 | lost: u64 |
//! count: u64 | entry * count | crc: u32`, each entry `offset: u64 | kind: u32 | attempts: u32 | at_ms: u64`
//! with kind 1 = to be delivered (again) at `at_ms`, 2 = acked (read, no longer written),
//! 3 = dead. `crc` covers every byte before it.

use std::path::Path;
use std::time::Duration;

use byteorder::{ByteOrder, LittleEndian};

use super::state::{Clock, GroupState, Slot};
use crate::error::{CorruptKind, IoContext, Result};
use crate::fs::{rename, sync_dir, temp_path};
use crate::segment::header::{self, FILE_HEADER_LEN};

/// The sync that makes a snapshot written by [`Snapshot::write_unsynced`] durable.
#[derive(Debug)]
pub(crate) struct SnapshotSync {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// The group's directory, if the file is new: its entry must be made durable too.
    dir: Option<std::path::PathBuf>,
}

impl SnapshotSync {
    /// Whether the sync covers the directory too.
    pub fn syncs_dir(&self) -> bool {
        self.dir.is_some()
    }

    pub fn run(self) -> Result<()> {
        crate::fs::sync_file(&self.file, &self.path)?;
        self.dir.as_deref().map_or(Ok(()), sync_dir)
    }
}

/// Magic number of a snapshot file.
pub(crate) const STATE_MAGIC: [u8; 8] = *b"SEGQGRP\0";

const FIXED_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8 + 8;
const ENTRY_LEN: usize = 24;

const WAITING: u32 = 1;
const ACKED: u32 = 2;
const DEAD: u32 = 3;

/// The decoded contents of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub generation: u64,
    pub lease: Duration,
    pub max_attempts: u32,
    pub floor: u64,
    pub next: u64,
    pub lost: u64,
    /// `(offset, kind, attempts, at_ms)`.
    pub entries: Vec<(u64, u32, u32, u64)>,
}

impl Snapshot {
    /// Captures `state`; leased records are saved as due at once, since no consumer holds
    /// a lease across a restart.
    pub fn of(state: &GroupState, generation: u64, max_attempts: u32, clock: &Clock) -> Snapshot {
        // Acked offsets are left out: whatever lies in `floor..next` unlisted is acked, so
        // the snapshot grows with the records still open, not with those done.
        let entries = state
            .exceptions()
            .filter_map(|(offset, slot)| match slot {
                Slot::Leased { attempts, .. } => Some((offset, WAITING, attempts, clock.now_ms())),
                Slot::Waiting { attempts, at } => Some((offset, WAITING, attempts, clock.ms_of(at))),
                Slot::Acked => None,
                Slot::Dead { attempts } => Some((offset, DEAD, attempts, 0)),
            })
            .chain(state.dead_letters().iter().filter(|&(&o, _)| o < state.floor()).map(|(&o, &a)| (o, DEAD, a, 0)))
            .collect();
        let (floor, next, lost) = (state.floor(), state.next(), state.lost);
        Snapshot { generation, lease: state.lease(), max_attempts, floor, next, lost, entries }
    }

    /// Rebuilds the state it captured, for a log whose next offset is `limit`.
    pub fn restore(&self, clock: &Clock, limit: u64) -> GroupState {
        let slots = self.entries.iter().map(|&(offset, kind, attempts, at_ms)| {
            let slot = match kind {
                ACKED => Slot::Acked,
                DEAD => Slot::Dead { attempts },
                _ => Slot::Waiting { attempts, at: clock.instant_of(at_ms) },
            };
            (offset, slot)
        });
        let mut state = GroupState::restore(self.floor, self.next, slots, self.lease, clock, limit);
        state.lost = self.lost;
        state
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FILE_HEADER_LEN + FIXED_LEN + self.entries.len() * ENTRY_LEN + 4);
        b.extend_from_slice(&header::encode(STATE_MAGIC, self.generation));
        let mut fixed = [0u8; FIXED_LEN];
        LittleEndian::write_u64(&mut fixed[0..], super::millis(self.lease));
        LittleEndian::write_u32(&mut fixed[8..], self.max_attempts);
        LittleEndian::write_u64(&mut fixed[16..], self.floor);
        LittleEndian::write_u64(&mut fixed[24..], self.next);
        LittleEndian::write_u64(&mut fixed[32..], self.lost);
        LittleEndian::write_u64(&mut fixed[40..], self.entries.len() as u64);
        b.extend_from_slice(&fixed);
        for &(offset, kind, attempts, at_ms) in &self.entries {
            let mut e = [0u8; ENTRY_LEN];
            LittleEndian::write_u64(&mut e[0..], offset);
            LittleEndian::write_u32(&mut e[8..], kind);
            LittleEndian::write_u32(&mut e[12..], attempts);
            LittleEndian::write_u64(&mut e[16..], at_ms);
            b.extend_from_slice(&e);
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a snapshot file's bytes; `Err` names the byte position and what is wrong.
    pub fn decode(b: &[u8]) -> Result<Snapshot, (u64, CorruptKind)> {
        if b.len() < FILE_HEADER_LEN + FIXED_LEN + 4 {
            return Err((b.len() as u64, CorruptKind::Truncated));
        }
        let body_end = b.len() - 4;
        let expected = LittleEndian::read_u32(&b[body_end..]);
        let actual = crc32fast::hash(&b[..body_end]);
        if expected != actual {
            return Err((body_end as u64, CorruptKind::BadCrc { expected, actual }));
        }
        let generation = LittleEndian::read_u64(&b[16..24]);
        header::check(b, STATE_MAGIC, generation).map_err(|kind| (0, kind))?;
        let f = &b[FILE_HEADER_LEN..];
        let count = LittleEndian::read_u64(&f[40..]);
        let entries_bytes = &b[FILE_HEADER_LEN + FIXED_LEN..body_end];
        if count.checked_mul(ENTRY_LEN as u64) != Some(entries_bytes.len() as u64) {
            return Err(((FILE_HEADER_LEN + 40) as u64, CorruptKind::BadLength { len: count }));
        }
        let entries = entries_bytes
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                (
                    LittleEndian::read_u64(e),
                    LittleEndian::read_u32(&e[8..]),
                    LittleEndian::read_u32(&e[12..]),
                    LittleEndian::read_u64(&e[16..]),
                )
            })
            .collect();
        Ok(Snapshot {
            generation,
            lease: Duration::from_millis(LittleEndian::read_u64(f)),
            max_attempts: LittleEndian::read_u32(&f[8..]),
            floor: LittleEndian::read_u64(&f[16..]),
            next: LittleEndian::read_u64(&f[24..]),
            lost: LittleEndian::read_u64(&f[32..]),
            entries,
        })
    }

    /// Writes this snapshot under a temporary name, synced, and renames it into place, then
    /// syncs the directory: the file holds the snapshot it held before or this one, whole.
    /// For the first snapshot of a new group (which then exists, with a valid snapshot, or
    /// not at all), and for the repair of one whose sync failed (see `Locked::rewrite`).
    pub fn write_new(&self, dir: &Path) -> Result<()> {
        let path = dir.join(file_for(self.generation));
        let tmp = temp_path(&path);
        let result = std::fs::File::create(&tmp).at(&tmp).and_then(|file| {
            crate::fs::write_at(&file, &tmp, &self.encode(), 0)?;
            crate::fs::sync_file(&file, &tmp)
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        rename(&tmp, &path)?;
        sync_dir(dir)
    }

    /// Writes this snapshot to its own file again, and syncs it and the directory: for a
    /// snapshot that an earlier run may not have made durable. Its sync may not have run, or
    /// may have failed, and a retried fsync can report success for pages a failed one
    /// dropped; or it was read from the other file, or is a copy of one cut short, whose
    /// run may have created the file without its name reaching the disk.
    pub fn write_again(&self, dir: &Path) -> Result<()> {
        self.write_unsynced(dir, true)?.run()
    }

    /// Writes this snapshot over the older of the group's two snapshot files and syncs it,
    /// and the directory too if the file is new or `sync_dir` says so. The newer file (the
    /// current generation) is untouched, so a write torn by a crash leaves it in charge: it
    /// fails its checksum, and the older generation wins.
    pub fn write_in_place(&self, dir: &Path, sync_dir: bool) -> Result<()> {
        self.write_unsynced(dir, sync_dir)?.run()
    }

    /// [`Snapshot::write_in_place`] without the sync, which the caller runs (on another
    /// thread, say) before it writes the next snapshot: that one goes over the other file.
    /// `sync_dir`: the directory is synced too, even if the file was there: a run that
    /// failed may have created it without its name reaching the disk.
    pub fn write_unsynced(&self, dir: &Path, sync_dir: bool) -> Result<SnapshotSync> {
        let path = dir.join(file_for(self.generation));
        let existed = path.exists();
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).at(&path)?;
        let bytes = self.encode();
        crate::fs::write_at(&file, &path, &bytes, 0)?;
        file.set_len(bytes.len() as u64).at(&path)?;
        let dir = (!existed || sync_dir).then(|| dir.to_path_buf());
        Ok(SnapshotSync { file, path, dir })
    }

    /// Reads the newest valid snapshot of the group in `dir`, and says which file held it.
    /// A file that cannot be read (other than missing) is an error: falling back to the
    /// other file could quietly undo the changes of a newer generation.
    pub fn read_latest(dir: &Path) -> Result<Latest> {
        let mut files = Vec::with_capacity(FILES.len());
        for name in FILES {
            let path = dir.join(name);
            let checked = match read_checked(&path, u64::MAX) {
                Ok(checked) => Some(checked),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                // Shorter than its length said when it was opened.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Some(Err((0, CorruptKind::Truncated))),
                Err(e) => return Err(crate::Error::io(&path, e)),
            };
            files.push((path, checked));
        }
        latest(&files)
    }
}

/// A snapshot file's bytes, read whole only once its length fits its entry count and its
/// checksum matches (both checked a chunk at a time), so that a damaged or sparse file of
/// any length costs no more memory than a chunk. `Err` inside: where it is damaged. A file
/// longer than `max_len` (whose length fits its count) is not read: too big.
pub(crate) fn read_checked(
    path: &Path,
    max_len: u64,
) -> std::io::Result<std::result::Result<Vec<u8>, (u64, CorruptKind)>> {
    use std::io::{Read, Seek, SeekFrom};
    let head_len = FILE_HEADER_LEN + FIXED_LEN;
    let mut file = crate::fs::open_regular(path)?;
    let len = file.metadata()?.len();
    if len < (head_len + 4) as u64 {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        return Ok(Ok(bytes)); // too short: `decode` says where
    }
    let mut head = vec![0u8; head_len];
    file.read_exact(&mut head)?;
    let count = LittleEndian::read_u64(&head[FILE_HEADER_LEN + 40..]);
    let fits = count.checked_mul(ENTRY_LEN as u64).and_then(|n| n.checked_add((head_len + 4) as u64));
    if fits != Some(len) {
        return Ok(Err(((FILE_HEADER_LEN + 40) as u64, CorruptKind::BadLength { len: count })));
    }
    if len > max_len {
        return Ok(Err((0, CorruptKind::BadHeader(format!("a group file of {len} bytes is too big")))));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    let mut left = len - 4 - head_len as u64;
    let mut chunk = vec![0u8; left.min(1 << 20) as usize];
    while left > 0 {
        let n = chunk.len().min(left as usize);
        file.read_exact(&mut chunk[..n])?;
        crc.update(&chunk[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; 4];
    file.read_exact(&mut trailer)?;
    let (expected, actual) = (u32::from_le_bytes(trailer), crc.finalize());
    if expected != actual {
        return Ok(Err((len - 4, CorruptKind::BadCrc { expected, actual })));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut bytes)?;
    Ok(Ok(bytes))
}

/// The two files a group's snapshots alternate between: generation `g` is written to
/// `FILES[g % 2]`, so the previous generation survives while the next is written.
pub(crate) const FILES: [&str; 2] = ["state", "state.1"];

/// The file that holds generation `generation`.
pub(crate) fn file_for(generation: u64) -> &'static str {
    FILES[(generation % 2) as usize]
}

/// Whether generation `a` comes after `b`. Generations compare as serial numbers, so that
/// the step from `u64::MAX` to 0 goes forward; of two exactly 2^63 apart, which serial
/// numbers leave unordered, the larger is later, so that no two differ without one of them
/// being later.
pub(crate) fn later(a: u64, b: u64) -> bool {
    let ahead = a.wrapping_sub(b);
    ahead != 0 && (ahead < 1 << 63 || (ahead == 1 << 63 && a > b))
}

/// Whether a valid snapshot of generation `a`, found in `path`, is used before one of
/// generation `b`: a later one, or a copy of the same one in its own file (the other file
/// is where the next generation will be written).
pub(crate) fn preferred(a: u64, path: &Path, b: u64) -> bool {
    later(a, b) || (a == b && path.file_name().is_some_and(|name| name == file_for(a)))
}

/// What [`read_checked`] made of one snapshot file (`None`: the file is missing).
type Checked = Option<std::result::Result<Vec<u8>, (u64, CorruptKind)>>;

/// The snapshot a group opens from.
#[derive(Debug)]
pub(crate) struct Latest {
    pub snap: Snapshot,
    /// The file it was read from.
    pub path: std::path::PathBuf,
    /// Whether the other file holds a valid snapshot of the same generation: a copy made
    /// at open (see [`Snapshot::write_again`]) may have been cut short before its sync.
    pub copied: bool,
}

/// The newest valid snapshot among a group's snapshot files, in [`FILES`] order. When none
/// is valid, the error names the first damaged file: `state` before `state.1`.
pub(crate) fn latest(files: &[(std::path::PathBuf, Checked)]) -> Result<Latest> {
    let mut best: Option<Latest> = None;
    let mut damage = None;
    for (path, checked) in files {
        let Some(checked) = checked else { continue };
        match checked.as_ref().map_err(Clone::clone).and_then(|bytes| Snapshot::decode(bytes)) {
            Ok(snap) => match &mut best {
                Some(b) if !preferred(snap.generation, path, b.snap.generation) => {
                    b.copied |= snap.generation == b.snap.generation;
                }
                _ => {
                    let copied = best.as_ref().is_some_and(|b| b.snap.generation == snap.generation);
                    best = Some(Latest { snap, path: path.clone(), copied });
                }
            },
            Err((position, kind)) => damage = damage.or(Some(crate::Error::corrupt(path, position, kind))),
        }
    }
    match (best, damage) {
        (Some(best), _) => Ok(best),
        (None, Some(e)) => Err(e),
        (None, None) => {
            let path = files.first().map(|(p, _)| p.as_path()).unwrap_or(Path::new("state"));
            Err(crate::Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::state::Op;

    #[test]
    fn a_snapshot_round_trips_and_detects_damage() {
        let c = Clock::lazy();
        let mut s = GroupState::new(10, Duration::from_secs(3));
        for o in 10..14 {
            s.apply(Op::Deliver { offset: o, attempt: 2 }, &c);
        }
        s.apply(Op::Ack { offset: 11 }, &c);
        s.apply(Op::Dead { offset: 10 }, &c);
        let snap = Snapshot::of(&s, 4, 5, &c);
        let bytes = snap.encode();
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snap);
        let restored = snap.restore(&c, u64::MAX);
        assert_eq!((restored.ack_floor(), restored.next()), (12, 14));
        assert_eq!(restored.dead_letters().get(&10), Some(&2));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Snapshot::decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(Snapshot::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}

#[cfg(test)]
mod alternation_tests {
    use super::*;

    fn snap(generation: u64) -> Snapshot {
        Snapshot {
            generation,
            lease: Duration::from_secs(1),
            max_attempts: 3,
            floor: 0,
            next: 0,
            lost: 0,
            entries: vec![],
        }
    }

    #[test]
    fn the_newest_valid_generation_wins_and_a_torn_one_is_passed_over() {
        let (a, b) = ("a".into(), "b".into());
        let four = snap(4).encode();
        let mut five = snap(5).encode();
        assert_eq!(latest(&[(a, Some(Ok(four.clone()))), (b, Some(Ok(five.clone())))]).unwrap().snap.generation, 5);
        five[40] ^= 1;
        let files = [("a".into(), Some(Ok(four))), ("b".into(), Some(Ok(five.clone())))];
        assert_eq!(latest(&files).unwrap().snap.generation, 4);
        let only_torn = [("a".into(), None), ("b".into(), Some(Ok(five.clone())))];
        assert!(matches!(latest(&only_torn), Err(crate::Error::Corrupt { .. })));
        // Neither valid: the first file is named, whatever check each failed.
        let both = [
            ("a".into(), Some(Err((80, CorruptKind::BadCrc { expected: 1, actual: 2 })))),
            ("b".into(), Some(Ok(five))),
        ];
        let Err(crate::Error::Corrupt { path, position, .. }) = latest(&both) else { panic!("not damage") };
        assert_eq!((path.to_str(), position), (Some("a"), 80));
    }

    #[test]
    fn in_place_writes_alternate_between_the_two_files() {
        let dir = tempfile::tempdir().unwrap();
        snap(0).write_new(dir.path()).unwrap();
        for generation in 1..5 {
            snap(generation).write_in_place(dir.path(), false).unwrap();
            assert_eq!(Snapshot::read_latest(dir.path()).unwrap().snap.generation, generation);
        }
        assert!(dir.path().join("state").exists() && dir.path().join("state.1").exists());
    }
}
