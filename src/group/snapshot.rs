//! A group's snapshot: its whole state at one moment, replaced atomically (temporary file,
//! fsync, rename, directory fsync) so that a crash leaves either the old or the new one.
//!
//! Grammar (little-endian): `file header (32 bytes, STATE_MAGIC, base field = generation) |
//! lease_ms: u64 | max_attempts: u32 | reserved: u32 | floor: u64 | next: u64 | lost: u64 |
//! count: u64 | entry * count | crc: u32`, each entry `offset: u64 | kind: u32 | attempts: u32 | at_ms: u64`
//! with kind 1 = to be delivered (again) at `at_ms`, 2 = acked, 3 = dead. `crc` covers every
//! byte before it.

use std::path::Path;
use std::time::Duration;

use byteorder::{ByteOrder, LittleEndian};

use super::state::{Clock, GroupState, Slot};
use crate::error::{CorruptKind, IoContext, Result};
use crate::fs::{rename, sync_dir, temp_path};
use crate::segment::header::{self, FILE_HEADER_LEN};

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
    pub fn of(state: &GroupState, generation: u64, max_attempts: u32, clock: Clock) -> Snapshot {
        // Acked offsets are left out: whatever lies in `floor..next` unlisted is acked, so
        // the snapshot grows with the records still open, not with those done.
        let entries = state
            .exceptions()
            .filter_map(|(offset, slot)| match slot {
                Slot::Leased { attempts, .. } => Some((offset, WAITING, attempts, clock.now_ms)),
                Slot::Waiting { attempts, at } => Some((offset, WAITING, attempts, clock.ms_of(at))),
                Slot::Acked => None,
                Slot::Dead { attempts } => Some((offset, DEAD, attempts, 0)),
            })
            .chain(state.dead_letters().iter().filter(|&(&o, _)| o < state.floor()).map(|(&o, &a)| (o, DEAD, a, 0)))
            .collect();
        let (floor, next, lost) = (state.floor(), state.next(), state.lost);
        Snapshot { generation, lease: state.lease, max_attempts, floor, next, lost, entries }
    }

    /// Rebuilds the state it captured, for a log whose next offset is `limit`.
    pub fn restore(&self, clock: Clock, limit: u64) -> GroupState {
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
        LittleEndian::write_u64(&mut fixed[0..], self.lease.as_millis() as u64);
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

    /// Replaces the snapshot at `path` atomically and durably.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = temp_path(path);
        let result = std::fs::File::create(&tmp).at(&tmp).and_then(|file| {
            crate::fs::write_at(&file, &tmp, &self.encode(), 0)?;
            crate::fs::sync_file(&file, &tmp)
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        rename(&tmp, path)?;
        sync_dir(path.parent().expect("a snapshot lives in its group's directory"))
    }

    /// Reads the snapshot at `path`.
    pub fn read(path: &Path) -> Result<Snapshot> {
        let bytes = std::fs::read(path).at(path)?;
        Snapshot::decode(&bytes).map_err(|(position, kind)| crate::Error::corrupt(path, position, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::state::Op;

    #[test]
    fn a_snapshot_round_trips_and_detects_damage() {
        let c = Clock::now();
        let mut s = GroupState::new(10, Duration::from_secs(3));
        for o in 10..14 {
            s.apply(Op::Deliver { offset: o, attempt: 2 }, c);
        }
        s.apply(Op::Ack { offset: 11 }, c);
        s.apply(Op::Dead { offset: 10 }, c);
        let snap = Snapshot::of(&s, 4, 5, c);
        let bytes = snap.encode();
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snap);
        let restored = snap.restore(c, u64::MAX);
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
