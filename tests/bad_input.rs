//! The bad-input catalogue of docs/RELIABILITY.md: damaged bytes in every field of every
//! file, truncation at every position, foreign files, segments deleted or renamed by hand,
//! bad arguments, and random bytes in place of each file (the CI stand-in for the fuzz
//! targets). Each test states what segq does; those that found a bug say what segq did
//! before it was fixed.
//!
//! What holds throughout: segq never panics, never returns damaged bytes as a record, and
//! reports damage as `Error::Corrupt` naming the file and byte position (or, in the unsynced
//! tail of the newest segment, cuts it and says so in `Queue::recovery()`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    CHECKPOINT_SLOT_B, FILE_HEADER_LEN, JOURNAL_ENTRY_LEN, RECORD_HEADER_LEN, active_segment, assert_holds,
    checkpoint_slot, copy_tree, crc32, flip_byte, journal_entries, journal_entry, payload, put_checkpoint_slot,
    record_spans, segment_base, segment_files, snapshot_generation, tiny, truncate_file,
};
use proptest::prelude::*;
use segq::{CorruptKind, Error, GroupOptions, Options, Queue, SyncPolicy};

const RECORDS: u64 = 120;
const NO_WAIT: Duration = Duration::ZERO;

fn opts() -> Options {
    tiny(4096).index_interval_bytes(100)
}

/// A cleanly closed queue of `RECORDS` records over several segments, with a group `g`
/// that acked records 0..5 and holds a lease on 5 (saved as due again).
struct Fixture {
    dir: tempfile::TempDir,
    payloads: Vec<Vec<u8>>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..RECORDS).map(payload).collect();
        common::append_all(&q, 0, &payloads);
        let g = q.group("g").unwrap();
        for _ in 0..5 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
        assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 5);
        q.close().unwrap();
        assert!(segment_files(dir.path()).len() >= 4, "want several segments");
        Fixture { dir, payloads }
    }

    /// A fresh copy to damage.
    fn copy(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(self.dir.path(), copy.path());
        copy
    }

    fn segments(&self) -> Vec<PathBuf> {
        segment_files(self.dir.path())
    }
}

fn rename_in(dir: &Path, path: &Path) -> PathBuf {
    dir.join(path.file_name().unwrap())
}

/// The file, position and kind of a `Corrupt` error; panics on any other result.
fn corrupt<T: std::fmt::Debug>(result: segq::Result<T>) -> (PathBuf, u64, CorruptKind) {
    match result {
        Err(Error::Corrupt { path, position, kind }) => (path, position, kind),
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
}

fn write_u32(path: &Path, at: usize, value: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

fn write_u64(path: &Path, at: usize, value: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Recomputes the CRC of a segment or index file header, so that a crafted field passes it.
fn fix_header_crc(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    write_u32(path, 24, crc32(&bytes[..24]));
}

/// Recomputes the CRC of the record at `at` of a segment file.
fn fix_record_crc(path: &Path, at: usize) {
    let bytes = std::fs::read(path).unwrap();
    let len = (u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) & 0x7fff_ffff) as usize;
    write_u32(path, at, crc32(&bytes[at + 4..at + RECORD_HEADER_LEN + len]));
}

/// Recomputes the trailing CRC of a group snapshot and the CRC of its header.
fn fix_snapshot_crcs(path: &Path) {
    fix_header_crc(path);
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.len() - 4;
    write_u32(path, end, crc32(&bytes[..end]));
}

/// Every record of the queue is the one appended, or an error: never wrong data.
fn never_wrong(q: &Queue, payloads: &[Vec<u8>]) {
    for o in q.first_offset()..q.next_offset() {
        if let Ok(Some(rec)) = q.read(o) {
            assert_eq!(rec.offset(), o);
            assert_eq!(Some(&rec.payload().to_vec()), payloads.get(o as usize), "record {o} came back changed");
        }
    }
    for rec in q.iter_from(0).flatten() {
        assert_eq!(Some(&rec.payload().to_vec()), payloads.get(rec.offset() as usize), "iterated {}", rec.offset());
    }
}

// ---- Records -------------------------------------------------------------------------

/// Each field of a record in a sealed segment (synced data): CRC, length, batch flag,
/// offset, timestamp, payload. The damage is reported at the record, with the kind that
/// the first failing check finds, and every other segment reads on.
#[test]
fn each_field_of_a_sealed_record_damaged_is_corrupt_at_that_record() {
    let fx = Fixture::new();
    let seg = fx.segments()[1].clone();
    let base = segment_base(&seg);
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    let k = spans.iter().position(|s| s.len() > RECORD_HEADER_LEN + 2).unwrap();
    let at = spans[k].start;
    // (what, byte to flip, bit mask): each field once.
    let fields = [
        ("crc", 0, 0x01),
        ("length", 4, 0x01),
        ("length, high bits", 6, 0x40),
        ("batch flag", 7, 0x80),
        ("offset", 8, 0x01),
        ("offset, high byte", 15, 0x80),
        ("timestamp", 16, 0x01),
        ("payload", RECORD_HEADER_LEN + 1, 0x10),
    ];
    for (what, byte, mask) in fields {
        let copy = fx.copy();
        let path = rename_in(copy.path(), &seg);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at + byte] ^= mask;
        std::fs::write(&path, bytes).unwrap();
        let q = Queue::open(copy.path(), opts()).unwrap();
        let (p, position, kind) = corrupt(q.read(base + k as u64));
        assert_eq!((p, position), (path.clone(), at as u64), "{what}");
        assert!(matches!(kind, CorruptKind::BadCrc { .. } | CorruptKind::BadLength { .. }), "{what}: {kind:?}");
        never_wrong(&q, &fx.payloads);
        let other = fx.segments()[2].clone();
        let o = segment_base(&other);
        assert_eq!(q.read(o).unwrap().unwrap().payload(), fx.payloads[o as usize], "{what}");
    }
}

/// A record whose CRC was recomputed after its offset field changed (a bug in a writer, or
/// a record copied from elsewhere) is caught by the offset check.
#[test]
fn a_checksummed_record_with_the_wrong_offset_is_bad_offset() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let seg = rename_in(copy.path(), &fx.segments()[1]);
    let base = segment_base(&seg);
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    let at = spans[2].start;
    write_u64(&seg, at + 8, 999_999);
    fix_record_crc(&seg, at);
    let q = Queue::open(copy.path(), opts()).unwrap();
    let (_, position, kind) = corrupt(q.read(base + 2));
    assert_eq!(position, at as u64);
    assert_eq!(kind, CorruptKind::BadOffset { expected: base + 2, found: 999_999 });
    never_wrong(&q, &fx.payloads);
}

/// The same crafted record in the unsynced tail of the newest segment (after a crash) is
/// where recovery cuts, and it says why.
#[test]
fn a_checksummed_record_with_the_wrong_offset_in_the_unsynced_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    let payloads: Vec<Vec<u8>> = (0..10).map(payload).collect();
    common::append_all(&q, 0, &payloads);
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let base = segment_base(&seg);
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    let k = spans.len() - 2;
    write_u64(&seg, spans[k].start + 8, 12345);
    fix_record_crc(&seg, spans[k].start);
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!(q.next_offset(), base + k as u64);
    assert_eq!(q.recovery().truncated_at, Some(spans[k].start as u64));
    let damage = q.recovery().damage.clone().unwrap();
    assert!(damage.contains("12345"), "{damage}");
    assert_holds(&q, &payloads[..(base as usize + k)]);
}

/// A queue directory holding one empty segment whose header says it starts at `base`, as
/// FORMAT.md lays it out: magic, version 1, reserved word, base, CRC of the 24 bytes before.
fn queue_starting_at(base: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut header = b"SEGQLOG\0".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&base.to_le_bytes());
    header.extend_from_slice(&crc32(&header).to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    std::fs::write(dir.path().join(format!("{base:020}.log")), header).unwrap();
    dir
}

/// Offsets end below `u64::MAX`, so that the next offset always fits in a u64. A log made by
/// hand to start a few records before that end takes appends (rolling segments on the way)
/// up to it, then refuses more with an error, and stays whole across a reopen. (Appending
/// at the end overflowed: a panic in debug builds, offsets wrapped to 0 in release ones.)
#[test]
fn a_log_at_the_end_of_the_offsets_refuses_appends_past_it() {
    let base = u64::MAX - 300;
    let dir = queue_starting_at(base);
    let payloads: Vec<Vec<u8>> = (0..300).map(payload).collect();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert!(q.append_batch(&[b"a".as_slice(), b"b"]).is_ok_and(|r| r == (base..base + 2)));
    for p in &payloads[2..299] {
        q.append(p).unwrap();
    }
    // One offset left: a batch of two does not fit, and writes nothing.
    let err = q.append_batch(&[b"y".as_slice(), b"z"]).unwrap_err();
    assert!(matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::FileTooLarge), "{err:?}");
    assert!(err.to_string().contains("offsets used up"), "{err}");
    assert_eq!(q.append(b"last").unwrap(), u64::MAX - 1);
    assert_eq!(q.next_offset(), u64::MAX);
    assert!(q.append(b"one more").is_err());
    assert!(segment_files(dir.path()).len() > 3, "the appends rolled segments");
    let g = q.group("workers").unwrap();
    let mut delivered = 0;
    while let Some(d) = g.poll(NO_WAIT).unwrap() {
        g.ack(d.offset()).unwrap();
        delivered += 1;
    }
    assert_eq!((delivered, g.ack_floor()), (300, u64::MAX));
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!((q.first_offset(), q.next_offset()), (base, u64::MAX));
    assert_eq!(q.iter_from(base).count(), 300);
    assert_eq!(q.read(u64::MAX - 1).unwrap().unwrap().payload(), b"last");
    assert!(q.read(u64::MAX).unwrap().is_none());
    assert_eq!(q.group("workers").unwrap().poll(NO_WAIT).unwrap().map(|d| d.offset()), None);
}

/// A record that claims offset `u64::MAX`, checksummed, in the unsynced tail: no append
/// writes one, so recovery cuts it and says why. (The scan of it overflowed.)
#[test]
fn a_record_at_the_last_u64_offset_is_cut_not_read() {
    let dir = queue_starting_at(u64::MAX - 2);
    let q = Queue::open(dir.path(), opts()).unwrap();
    q.append(b"first").unwrap();
    q.append(b"second").unwrap();
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = record_spans(&bytes).pop().unwrap();
    let mut forged = bytes[last.clone()].to_vec();
    forged[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    bytes[last.end..last.end + forged.len()].copy_from_slice(&forged);
    std::fs::write(&seg, &bytes).unwrap();
    fix_record_crc(&seg, last.end);
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!(q.next_offset(), u64::MAX);
    assert_eq!(q.recovery().truncated_at, Some(last.end as u64));
    let damage = q.recovery().damage.clone().unwrap();
    assert!(damage.contains("last a u64 holds"), "{damage}");
    assert_eq!(
        q.iter_from(0).map(|r| r.unwrap().payload().to_vec()).collect::<Vec<_>>(),
        [b"first".to_vec(), b"second".to_vec()]
    );
    assert!(q.read(u64::MAX).unwrap().is_none());
}

/// A cleanly closed log ending at `u64::MAX`, whose records were then overwritten by frames
/// (bad CRCs) that carry `MAX - 3 ..= MAX`: the walk that checks the checkpoint's mark
/// against the records stepped past `u64::MAX` (a panic in debug builds).
#[test]
fn frames_up_to_the_last_u64_offset_under_a_clean_checkpoint_are_damage() {
    let base = u64::MAX - 3;
    let dir = queue_starting_at(base);
    let q = Queue::open(dir.path(), opts()).unwrap();
    for _ in 0..3 {
        q.append(&[1u8; 8]).unwrap();
    }
    q.close().unwrap();
    let seg = active_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    assert_eq!(record_spans(&bytes).last().map(|r| r.end), Some(FILE_HEADER_LEN + 96));
    for i in 0..4u64 {
        let at = FILE_HEADER_LEN + 24 * i as usize;
        bytes[at..at + 4].copy_from_slice(&0x1234u32.to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&0u32.to_le_bytes());
        bytes[at + 8..at + 16].copy_from_slice(&(base + i).to_le_bytes());
        bytes[at + 16..at + 24].copy_from_slice(&1_700_000_000_000u64.to_le_bytes());
    }
    std::fs::write(&seg, &bytes).unwrap();
    // The forged frames end where the checkpoint says, but the last carries `u64::MAX`,
    // which no record can, and none passes its checksum: damage in data the clean close
    // synced, the first at the segment's first record. The mark still holds (cutting there
    // would drop acknowledged records), so nothing is cut, and every record reads as damage
    // instead of as data. (Until session 11, the mark was dropped and the segment cut at
    // its first record.)
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!(q.next_offset(), u64::MAX);
    assert_eq!(q.recovery().truncated_at, None);
    let noted = q.recovery().synced_damage.clone().unwrap_or_default();
    assert!(noted.contains("checksum") && noted.contains(&format!("byte {FILE_HEADER_LEN}")), "{:?}", q.recovery());
    for o in base..u64::MAX {
        let (path, position, kind) = corrupt(q.read(o));
        assert_eq!(path, seg);
        assert_eq!(position, (FILE_HEADER_LEN + 24 * (o - base) as usize) as u64);
        assert!(matches!(kind, CorruptKind::BadCrc { .. }), "{kind:?}");
    }
    assert!(q.append(b"x").is_err(), "no offset is left");
}

// ---- Segment headers -----------------------------------------------------------------

/// Every byte of the newest segment's 32-byte header: magic (0..8), version (8..12),
/// reserved (12..16, covered by the CRC), base (16..24) and CRC (24..28) make open fail with
/// `Corrupt` at position 0 and change nothing on disk; the last reserved word (28..32) is
/// not checked.
#[test]
fn every_byte_of_the_newest_segment_header_damaged_fails_open_and_changes_nothing() {
    let fx = Fixture::new();
    let newest = fx.segments().pop().unwrap();
    for pos in 0..FILE_HEADER_LEN {
        let copy = fx.copy();
        let path = rename_in(copy.path(), &newest);
        flip_byte(&path, pos);
        let before: Vec<Vec<u8>> =
            [&path, &copy.path().join("checkpoint")].iter().map(|p| std::fs::read(p).unwrap()).collect();
        let result = Queue::open(copy.path(), opts());
        if pos >= 28 {
            assert_holds(&result.unwrap(), &fx.payloads);
            continue;
        }
        let (p, position, kind) = corrupt(result);
        assert_eq!((p, position), (path.clone(), 0), "byte {pos}");
        let want_magic = pos < 8;
        assert_eq!(kind == CorruptKind::BadMagic, want_magic, "byte {pos}: {kind:?}");
        assert!(want_magic || matches!(kind, CorruptKind::BadCrc { .. }), "byte {pos}: {kind:?}");
        let after: Vec<Vec<u8>> =
            [&path, &copy.path().join("checkpoint")].iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert!(before == after, "a failed open changed the files (byte {pos})");
    }
}

/// A newer format version or a base that disagrees with the file name, each with a valid
/// CRC: refused with `BadVersion` / `BadHeader`, at open for the newest segment and at the
/// first read for a sealed one.
#[test]
fn a_checksummed_header_with_another_version_or_base_is_refused() {
    let fx = Fixture::new();
    let segments = fx.segments();
    for (i, seg) in [(1, &segments[1]), (segments.len() - 1, segments.last().unwrap())] {
        let newest = i == segments.len() - 1;
        for (field, at, value) in [("version", 8, 2u64), ("base", 16, 777)] {
            let copy = fx.copy();
            let path = rename_in(copy.path(), seg);
            if field == "version" {
                write_u32(&path, at, value as u32);
            } else {
                write_u64(&path, at, value);
            }
            fix_header_crc(&path);
            let (p, position, kind) = if newest {
                corrupt(Queue::open(copy.path(), opts()))
            } else {
                let q = Queue::open(copy.path(), opts()).unwrap();
                never_wrong(&q, &fx.payloads);
                corrupt(q.read(segment_base(&path)))
            };
            assert_eq!((p, position), (path.clone(), 0));
            match field {
                "version" => assert_eq!(kind, CorruptKind::BadVersion { found: 2 }),
                _ => assert!(matches!(kind, CorruptKind::BadHeader(_)), "{kind:?}"),
            }
        }
    }
}

/// Every byte of a sealed segment's header: only that segment's records are `Corrupt` (at
/// position 0), when read; the queue opens and every other segment reads on.
#[test]
fn every_byte_of_a_sealed_segment_header_damaged_spoils_only_that_segment() {
    let fx = Fixture::new();
    let seg = fx.segments()[2].clone();
    let (base, end) = (segment_base(&seg), segment_base(&fx.segments()[3]));
    for pos in 0..28 {
        let copy = fx.copy();
        let path = rename_in(copy.path(), &seg);
        flip_byte(&path, pos);
        let q = Queue::open(copy.path(), opts()).unwrap();
        for o in 0..RECORDS {
            match q.read(o) {
                Ok(Some(rec)) => assert!(!(base..end).contains(&o) && rec.payload() == fx.payloads[o as usize]),
                other => {
                    assert!((base..end).contains(&o), "record {o}: {other:?}");
                    assert_eq!(corrupt(other).1, 0);
                }
            }
        }
    }
}

// ---- Truncation at every position ----------------------------------------------------

/// The newest segment of a cleanly closed queue cut short at every byte. The clean close
/// synced every record, so a cut that takes any of them away makes open fail with `Gap`,
/// naming the file and the first missing record, and changing nothing: going on would hand
/// out the lost records' offsets again (a group that had read them would skip the new
/// records). Once the checkpoint is deleted, as `segq repair` does, the queue opens with
/// the whole records before the cut. (Before, open kept them at once and went on.)
#[test]
fn the_newest_segment_cut_at_every_byte_refuses_to_open_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8 + 1; 3 + i]).collect();
    {
        let q = Queue::open(dir.path(), opts()).unwrap();
        common::append_all(&q, 0, &payloads);
        q.close().unwrap();
    }
    let seg = active_segment(dir.path());
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    let data_end = spans.last().unwrap().end;
    for cut in 0..=data_end + 1 {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(dir.path(), copy.path());
        let path = rename_in(copy.path(), &seg);
        truncate_file(&path, cut);
        let before = std::fs::read(&path).unwrap();
        let result = Queue::open(copy.path(), opts());
        let kept = spans.iter().take_while(|s| s.end <= cut).count();
        if cut < FILE_HEADER_LEN {
            let (_, position, kind) = corrupt(result);
            assert_eq!((position, kind), (cut as u64, CorruptKind::Truncated));
            continue;
        }
        if kept < payloads.len() {
            let (p, position, kind) = corrupt(result);
            assert_eq!(p, path, "cut at {cut}");
            assert_eq!(position, spans.get(kept).map_or(FILE_HEADER_LEN, |s| s.start) as u64, "cut at {cut}");
            assert_eq!(kind, CorruptKind::Gap { from: kept as u64, to: payloads.len() as u64 }, "cut at {cut}");
            assert_eq!(std::fs::read(&path).unwrap(), before, "a refused open changes nothing");
            std::fs::remove_file(copy.path().join("checkpoint")).unwrap();
        } else {
            drop(result.unwrap());
        }
        let q = Queue::open(copy.path(), opts()).unwrap();
        assert_holds(&q, &payloads[..kept]);
        assert!(kept == payloads.len() || !q.recovery().clean, "cut at {cut}: {:?}", q.recovery());
        assert_eq!(q.append(b"after").unwrap(), kept as u64);
    }
}

/// The newest segment cut short by hand (or by a tool or filesystem that lost its tail)
/// after its records were synced: open refuses with `Gap` until the checkpoint is deleted
/// (what `segq repair` does), then a crash comes before the first sync of the run that
/// recovered it. Open writes the recovered end into both checkpoint slots, so nothing from
/// before the cut can send the next recovery past the records appended since. (Found
/// while building this catalogue: open used to rewrite slot A only, and a stale slot B
/// with a higher position cut 30 of the 60 acknowledged appends below. Until the cut was
/// refused, the stale slot came from the checkpoint the cut had outdated.)
#[test]
fn a_cut_newest_segment_then_a_crash_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(64 << 10).sync(SyncPolicy::Never);
    {
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        for i in 0..40u8 {
            q.append(&[i; 150]).unwrap();
        }
        q.flush().unwrap(); // slot B: synced up to the end of record 39
        q.close().unwrap();
    }
    let seg = active_segment(dir.path());
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    truncate_file(&seg, spans[10].start);
    let (_, _, kind) = corrupt(Queue::open(dir.path(), opts.clone()));
    assert_eq!(kind, CorruptKind::Gap { from: 10, to: 40 });
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let extra: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 111]).collect();
    {
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        assert_eq!(q.next_offset(), 10);
        common::append_all(&q, 10, &extra);
        q.simulate_crash();
    }
    let q = Queue::open(dir.path(), opts).unwrap();
    assert_eq!(q.next_offset(), 70, "acknowledged appends were lost: {:?}", q.recovery());
    for (i, p) in extra.iter().enumerate() {
        assert_eq!(q.read(10 + i as u64).unwrap().unwrap().payload(), p.as_slice());
    }
}

/// A sealed segment cut at every byte: the queue opens (sealed segments are not read at
/// open); its records before the cut read back intact, the others are `Corrupt` naming the
/// segment, and no other segment is affected.
#[test]
fn a_sealed_segment_cut_at_every_byte_never_returns_wrong_data() {
    let fx = Fixture::new();
    let seg = fx.segments()[1].clone();
    let (base, end) = (segment_base(&seg), segment_base(&fx.segments()[2]));
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    let len = spans.last().unwrap().end;
    for cut in (0..len).step_by(3) {
        let copy = fx.copy();
        let path = rename_in(copy.path(), &seg);
        truncate_file(&path, cut);
        let q = Queue::open(copy.path(), opts()).unwrap();
        for o in 0..RECORDS {
            let got = q.read(o);
            let whole =
                cut >= FILE_HEADER_LEN && spans.get((o.wrapping_sub(base)) as usize).is_some_and(|s| s.end <= cut);
            if !(base..end).contains(&o) || whole {
                assert_eq!(got.unwrap().unwrap().payload(), fx.payloads[o as usize], "cut {cut}, record {o}");
            } else {
                assert_eq!(corrupt(got).0, path, "cut {cut}, record {o}");
            }
        }
    }
}

/// The checkpoint cut at every length: it is only a hint, so the queue opens and holds
/// everything whatever is left of it.
#[test]
fn the_checkpoint_cut_at_every_length_loses_nothing() {
    let fx = Fixture::new();
    let len = std::fs::metadata(fx.dir.path().join("checkpoint")).unwrap().len() as usize;
    assert_eq!(len, CHECKPOINT_SLOT_B + 64);
    for cut in (0..=len).step_by(7).chain([63, 64, 65, CHECKPOINT_SLOT_B + 63]) {
        let copy = fx.copy();
        truncate_file(&copy.path().join("checkpoint"), cut);
        let q = Queue::open(copy.path(), opts()).unwrap();
        assert_holds(&q, &fx.payloads);
    }
}

/// An index cut at every length (sealed and active): rebuilt, reads unchanged.
#[test]
fn an_index_cut_at_every_length_never_changes_reads() {
    let fx = Fixture::new();
    let segments = fx.segments();
    for seg in [&segments[1], segments.last().unwrap()] {
        let index = seg.with_extension("index");
        let entries_end = {
            let bytes = std::fs::read(&index).unwrap();
            (FILE_HEADER_LEN..bytes.len()).step_by(8).take_while(|&at| bytes[at..at + 8] != [0; 8]).count() * 8
                + FILE_HEADER_LEN
        };
        for cut in 0..=entries_end + 9 {
            let copy = fx.copy();
            truncate_file(&rename_in(copy.path(), &index), cut);
            let q = Queue::open(copy.path(), opts()).unwrap();
            assert_holds(&q, &fx.payloads);
        }
    }
}

/// The group snapshot cut at every length: the group cannot be opened (`Corrupt` naming the
/// snapshot), the rest of the queue is unaffected.
#[test]
fn the_group_snapshot_cut_at_every_length_is_corrupt() {
    let fx = Fixture::new();
    let state = fx.dir.path().join("groups/g/state");
    let len = std::fs::metadata(&state).unwrap().len() as usize;
    for cut in 0..len {
        let copy = fx.copy();
        let path = copy.path().join("groups/g/state");
        truncate_file(&path, cut);
        let q = Queue::open(copy.path(), opts()).unwrap();
        assert_eq!(corrupt(q.group("g")).0, path, "cut at {cut}");
        assert_holds(&q, &fx.payloads);
        let other = q.group("other").unwrap();
        assert_eq!(other.poll(NO_WAIT).unwrap().unwrap().offset(), 0);
    }
}

/// The group journal cut at every length: below its 32-byte header the group is `Corrupt`;
/// from there on it opens with the entries wholly before the cut, and the more is kept the
/// further its ack floor.
#[test]
fn the_group_journal_cut_at_every_length_keeps_the_entries_before() {
    let fx = Fixture::new();
    let journal = fx.dir.path().join("groups/g/journal");
    let generation = snapshot_generation(&std::fs::read(fx.dir.path().join("groups/g/state")).unwrap());
    let entries = journal_entries(&std::fs::read(&journal).unwrap(), generation);
    assert!(entries >= 11, "want deliveries and acks in the journal, got {entries}");
    let mut floor = 0;
    for cut in 0..=FILE_HEADER_LEN + (entries + 1) * JOURNAL_ENTRY_LEN {
        let copy = fx.copy();
        let path = copy.path().join("groups/g/journal");
        truncate_file(&path, cut);
        let q = Queue::open(copy.path(), opts()).unwrap();
        if cut < FILE_HEADER_LEN {
            assert_eq!(corrupt(q.group("g")), (path, cut as u64, CorruptKind::Truncated));
            continue;
        }
        let g = q.group("g").unwrap();
        assert!(g.ack_floor() >= floor, "cut at {cut}: floor {} after {floor}", g.ack_floor());
        floor = g.ack_floor();
        // The file is grown back with zeros, so an entry cut where only zeros followed
        // is whole again. Entries: deliver 0, ack 0, deliver 1, ack 1, ...
        let mut padded = std::fs::read(fx.dir.path().join("groups/g/journal")).unwrap();
        padded[cut..].fill(0);
        let whole = journal_entries(&padded, generation);
        assert!(whole >= ((cut - FILE_HEADER_LEN) / JOURNAL_ENTRY_LEN).min(entries));
        assert_eq!(floor, (whole.min(10) / 2) as u64, "cut at {cut}");
    }
    assert_eq!(floor, 5);
}

// ---- Checkpoint slots ----------------------------------------------------------------

/// Slots that claim what cannot be: another version, a position past the end of the file,
/// a segment newer than any file. The first two are ignored (open scans instead); the last
/// means the newest segment file was lost, and open refuses with `Gap` rather than hand out
/// its offsets again.
#[test]
fn checkpoint_slots_that_claim_the_impossible() {
    let fx = Fixture::new();
    let newest = segment_base(&fx.segments().pop().unwrap());
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let copy = fx.copy();
        let path = copy.path().join("checkpoint");
        let mut bytes = std::fs::read(&path).unwrap();
        f(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        copy
    };
    // Version 2, with a valid CRC: ignored.
    let copy = edit(&|b| {
        b[8] = 2;
        let crc = crc32(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
    });
    let q = Queue::open(copy.path(), opts()).unwrap();
    assert!(!q.recovery().clean);
    assert_holds(&q, &fx.payloads);
    // A clean slot whose position lies past the end of the file: dropped, the segment is
    // scanned.
    let copy = edit(&|b| put_checkpoint_slot(b, 0, newest, 1 << 30, RECORDS, true));
    let q = Queue::open(copy.path(), opts()).unwrap();
    assert!(!q.recovery().clean);
    assert_holds(&q, &fx.payloads);
    // A slot naming a segment after the newest file.
    let copy = edit(&|b| put_checkpoint_slot(b, 0, newest + 1000, 32, newest + 1000, false));
    let (path, _, kind) = corrupt(Queue::open(copy.path(), opts()));
    assert!(matches!(kind, CorruptKind::Gap { .. }), "{kind:?}");
    assert!(path.starts_with(copy.path()));
}

/// A queue of 50 records of 100 B under `Always`, crashed: every record was synced, and
/// the checkpoint says so (slot B, written after each sync). Returns it, its newest segment
/// and where each record lies in it.
fn synced_then_crashed() -> (tempfile::TempDir, PathBuf, Vec<std::ops::Range<usize>>) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    for i in 0..50u8 {
        q.append(&[i; 100]).unwrap();
    }
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    assert_eq!(spans.len(), 50);
    (dir, seg, spans)
}

/// The record at `at` claims a length that runs past the file: it no longer frames, and
/// nothing after it can be found by stepping from it.
fn break_length(seg: &Path, at: usize) {
    write_u32(seg, at + 4, 0x00ff_ffff);
}

/// Damage in data the checkpoint says was synced, in the stretch that open steps over to
/// check the checkpoint's mark: open keeps everything and says so in `Recovery`, the
/// damaged record reads as `Corrupt` naming the file and position, and every other record
/// reads as itself or as `Corrupt`, never as other data. (Before, the mark was dropped, the
/// segment scanned from its start and cut at the damage: the acknowledged records after
/// it were deleted.)
#[test]
fn damage_before_the_checkpoint_mark_is_kept_not_cut() {
    let (dir, seg, spans) = synced_then_crashed();
    break_length(&seg, spans[48].start);
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(q.next_offset(), 50, "{:?}", q.recovery());
    assert_eq!((q.recovery().truncated_at, q.recovery().damage.as_ref()), (None, None));
    let noted = q.recovery().synced_damage.clone().expect("the damage is noted");
    assert!(
        noted.contains(&seg.display().to_string()) && noted.contains(&format!("byte {}", spans[48].start)),
        "{noted}"
    );
    let (path, position, kind) = corrupt(q.read(48));
    assert_eq!((path, position), (seg.clone(), spans[48].start as u64));
    assert!(matches!(kind, CorruptKind::BadLength { .. }), "{kind:?}");
    for o in (0..48).chain(49..50) {
        match q.read(o) {
            Ok(Some(r)) => assert_eq!(r.payload(), [o as u8; 100]),
            Err(Error::Corrupt { .. }) if o == 49 => {}
            other => panic!("offset {o}: {other:?}"),
        }
    }
    assert_eq!(q.append(b"after").unwrap(), 50);
    q.close().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(q.recovery().clean);
    assert_eq!(q.read(50).unwrap().unwrap().payload(), b"after");
    assert_eq!(q.read(47).unwrap().unwrap().payload(), [47; 100]);
}

/// The same with the index gone, so that open steps over the whole segment from its start:
/// damage near the start costs only the damaged record. Open keeps the rest (before: cut
/// at record 5, losing 45 acknowledged records), finds the records after the damage (the
/// first from which records frame up to the checkpoint's mark) and indexes them (before
/// session 12, the index started again only at the mark: records 6 to 49 read as
/// `Corrupt`), and appends go on after them.
#[test]
fn damage_before_the_mark_with_the_index_gone_costs_only_the_damaged_record() {
    for field in ["length", "offset"] {
        let (dir, seg, spans) = synced_then_crashed();
        std::fs::remove_file(seg.with_extension("index")).unwrap();
        match field {
            "length" => break_length(&seg, spans[5].start),
            _ => write_u64(&seg, spans[5].start + 8, 7),
        }
        let check = |q: &Queue, next: u64| {
            for o in (0..5).chain(6..50) {
                assert_eq!(q.read(o).unwrap().unwrap().payload(), [o as u8; 100], "{field}: record {o}");
            }
            let (_, position, _) = corrupt(q.read(5));
            assert_eq!(position, spans[5].start as u64);
            let read: Vec<u64> = q.iter_from(0).filter_map(|r| r.ok()).map(|r| r.offset()).collect();
            assert_eq!(read, (0..5).chain(6..next).collect::<Vec<_>>(), "{field}");
        };
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        assert_eq!(q.next_offset(), 50, "{field}: {:?}", q.recovery());
        assert_eq!(q.recovery().truncated_at, None);
        assert!(q.recovery().synced_damage.is_some());
        check(&q, 50);
        assert_eq!(q.append(b"after").unwrap(), 50);
        assert_eq!(q.read(50).unwrap().unwrap().payload(), b"after");
        q.close().unwrap();
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        check(&q, 51);
    }
}

/// A synced record's length made smaller but still framing, in the active segment after a
/// crash, with the index gone: open keeps the damage, and only that record is unreadable.
/// (Found by the session-12 review: the record after it was lost too.)
#[test]
fn a_shortened_length_before_the_mark_costs_only_its_record() {
    let (dir, seg, spans) = synced_then_crashed();
    std::fs::remove_file(seg.with_extension("index")).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[spans[20].start + 4] = 0; // length 100 -> 0
    std::fs::write(&seg, &bytes).unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(q.recovery().synced_damage.is_some());
    let (_, position, _) = corrupt(q.read(20));
    assert_eq!(position, spans[20].start as u64);
    for o in (0..20).chain(21..50) {
        assert_eq!(q.read(o).unwrap().unwrap().payload(), [o as u8; 100], "record {o}");
    }
}

/// A record under an index entry of the active segment, damaged (its offset field) after
/// it was synced: the entries after it are kept at open, since the records before it show
/// that the entry is right. Only the damaged record and those up to the next entry are
/// unreadable. (The entries from the damaged one on were dropped and could not be rebuilt
/// past the damage: every later record of the segment read as `Corrupt`.)
#[test]
fn damage_under_an_index_entry_of_the_active_segment_costs_only_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    for i in 0..200u8 {
        q.append(&[i; 100]).unwrap();
    }
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let index = std::fs::read(seg.with_extension("index")).unwrap();
    let entry = |i: usize| {
        let e = &index[FILE_HEADER_LEN + 8 * i..FILE_HEADER_LEN + 8 * i + 8];
        (u32::from_le_bytes(e[..4].try_into().unwrap()) as u64, u32::from_le_bytes(e[4..].try_into().unwrap()) as usize)
    };
    let ((damaged, at), (next, _)) = (entry(10), entry(11));
    write_u64(&seg, at + 8, 7);
    for reopen in 0..2 {
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        assert_eq!(q.next_offset(), 200);
        for o in 0..200u64 {
            match q.read(o) {
                Ok(Some(r)) if !(damaged..next).contains(&o) => assert_eq!(r.payload(), [o as u8; 100]),
                Err(e @ Error::Corrupt { .. }) if (damaged..next).contains(&o) => {
                    assert!(matches!(e, Error::Corrupt { position, .. } if position == at as u64), "{e}");
                }
                other => panic!("open {reopen}, record {o}: {other:?}"),
            }
        }
        q.close().unwrap();
    }
}

/// A checksummed slot over damaged records that claims a next offset the records and the
/// index contradict (fewer offsets than an index entry before it names, or more than could
/// fit up to it) is not trusted: open scans from the segment's start and cuts at the
/// damage, as for any slot not written for the data. Trusting it would give new records
/// offsets that records before the slot already have.
#[test]
fn a_slot_over_damage_whose_next_offset_does_not_fit_is_dropped() {
    for next in [30, 10_000, u64::MAX] {
        let (dir, seg, spans) = synced_then_crashed();
        break_length(&seg, spans[20].start);
        let path = dir.path().join("checkpoint");
        let mut checkpoint = std::fs::read(&path).unwrap();
        put_checkpoint_slot(&mut checkpoint, CHECKPOINT_SLOT_B, 0, spans[49].end as u64, next, false);
        std::fs::write(&path, &checkpoint).unwrap();
        // `segq info` judges the slot the same way.
        let info = segq::inspect::info(&segq::inspect::QueueDir::open(dir.path()).unwrap()).unwrap();
        assert_eq!(info.next_offset, 20, "next {next}");
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        assert_eq!(q.next_offset(), 20, "next {next}: {:?}", q.recovery());
        assert_eq!(q.recovery().truncated_at, Some(spans[20].start as u64));
        assert_eq!(q.recovery().synced_damage, None);
        for o in 0..20u64 {
            assert_eq!(q.read(o).unwrap().unwrap().payload(), [o as u8; 100]);
        }
        assert_eq!(q.append(b"new").unwrap(), 20);
        assert_eq!(q.read(20).unwrap().unwrap().payload(), b"new");
    }
}

/// Records appended after an open that kept damage before the checkpoint's mark: stepping
/// from the index entries before the damage cannot reach them, so the index starts again
/// at the mark. They read, iterate and are delivered to a group, also after a clean
/// reopen. (Found by the session-11 review: they read as `Corrupt` until the writer had
/// gone an index interval past the old entry, and a group dead-lettered them.)
#[test]
fn records_appended_after_an_open_that_kept_damage_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    for _ in 0..3 {
        q.append(&[7; 100]).unwrap();
    }
    q.simulate_crash();
    let seg = active_segment(dir.path());
    write_u32(&seg, 32 + 124 + 4, 0x00ff_ffff); // record 1 no longer frames
    // Record 2 no longer frames either: no record after the damage leads to the mark, so
    // the index can start again only there. (With record 2 whole, open finds and indexes
    // it: `damage_before_the_mark_with_the_index_gone_costs_only_the_damaged_record`.)
    write_u32(&seg, 32 + 2 * 124 + 4, 0x00ff_ffff);
    // Closed again before any append: the index names no record that is not there.
    Queue::open(dir.path(), Options::default()).unwrap().close().unwrap();
    let report = segq::inspect::verify(&segq::inspect::QueueDir::open(dir.path()).unwrap(), &|_| {}).unwrap();
    let index = seg.with_extension("index");
    assert!(report.findings.iter().all(|f| f.file != index), "{:?}", report.findings);
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    assert!(q.recovery().synced_damage.is_some());
    for i in 0..10u8 {
        assert_eq!(q.append(&[i; 100]).unwrap(), 3 + u64::from(i));
    }
    let check = |q: &Queue| {
        for i in 0..10u8 {
            assert_eq!(q.read(3 + u64::from(i)).unwrap().unwrap().payload(), [i; 100]);
        }
        let seen: Vec<u64> = q.iter_from(0).filter_map(|r| r.ok()).map(|r| r.offset()).collect();
        assert_eq!(seen, [0].into_iter().chain(3..13).collect::<Vec<_>>());
    };
    check(&q);
    let g = q.group("g").unwrap();
    let mut delivered = Vec::new();
    for _ in 0..20 {
        match g.poll(NO_WAIT) {
            Ok(Some(d)) => {
                delivered.push(d.offset());
                g.ack(d.offset()).unwrap();
            }
            Ok(None) => break,
            Err(e) => assert!(matches!(e, Error::Corrupt { .. }), "{e}"),
        }
    }
    assert_eq!(delivered, [0].into_iter().chain(3..13).collect::<Vec<_>>());
    q.close().unwrap();
    check(&Queue::open(dir.path(), Options::default()).unwrap());
}

/// Zeros where records were that the checkpoint says were synced (writes a disk lost, or a
/// file wiped by hand): open fails with `Gap`, naming the file and the first missing
/// record, and changes nothing. Going on from the records left would hand out the lost
/// records' offsets again. (Before: the mark was dropped, and the queue opened at offset
/// 47, giving 47..50 to new records.)
#[test]
fn zeros_where_synced_records_were_fail_open_with_a_gap() {
    let (dir, seg, spans) = synced_then_crashed();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[spans[47].start..spans[49].end].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let (path, position, kind) = corrupt(Queue::open(dir.path(), Options::default()));
    assert_eq!((path, position, kind), (seg.clone(), spans[47].start as u64, CorruptKind::Gap { from: 47, to: 50 }));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "a refused open changes nothing");
    // `segq repair` deletes the checkpoint: then the records left are the queue.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(q.next_offset(), 47);
}

/// The newest segment cut short of the checkpoint's mark, with a damaged record before the
/// cut and no index: records known to be synced are gone, so open fails with `Gap` (from
/// the damaged record on: where the records left end is not known past it) and changes
/// nothing. (Found by the `recovery` fuzz target in session 12: the damage was taken for
/// damage kept before the mark, and open panicked slicing the file up to the mark.)
#[test]
fn a_segment_cut_short_of_the_mark_with_damage_before_the_cut_fails_with_a_gap() {
    let (dir, seg, spans) = synced_then_crashed();
    std::fs::remove_file(seg.with_extension("index")).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[spans[5].start + 30] ^= 1;
    bytes.truncate(spans[20].end);
    std::fs::write(&seg, &bytes).unwrap();
    let (path, position, kind) = corrupt(Queue::open(dir.path(), Options::default()));
    assert_eq!((path, position, kind), (seg.clone(), spans[5].start as u64, CorruptKind::Gap { from: 5, to: 50 }));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "a refused open changes nothing");
}

/// A clean slot (valid CRC) that claims more records than its position holds is not
/// trusted: the offset it names does not match the records, so open scans instead and the
/// queue holds exactly its records.
#[test]
fn a_checksummed_clean_slot_with_too_high_a_next_offset_invents_no_data() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let path = copy.path().join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    let (base, position, next, clean) = checkpoint_slot(&bytes, 0).unwrap();
    assert!(clean && next == RECORDS);
    put_checkpoint_slot(&mut bytes, 0, base, position, RECORDS + 40, true);
    std::fs::write(&path, bytes).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    assert!(!q.recovery().clean);
    assert_holds(&q, &fx.payloads);
    never_wrong(&q, &fx.payloads);
}

/// The same with a next offset of `u64::MAX`: the slot is not trusted, and appends go on
/// after the real records.
#[test]
fn a_checksummed_slot_with_next_offset_max_is_refused() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let path = copy.path().join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    let (base, position, _, _) = checkpoint_slot(&bytes, 0).unwrap();
    put_checkpoint_slot(&mut bytes, 0, base, position, u64::MAX, true);
    std::fs::write(&path, bytes).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    assert_holds(&q, &fx.payloads);
    let appended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.append(b"x")));
    assert!(matches!(appended, Ok(Ok(RECORDS))), "append: {appended:?}");
}

/// A segment of `count` empty records from `base`, closed by no one (as after a crash), with
/// a checkpoint whose slot B says the log was synced up to `position` with `next` there.
fn crashed_with_slot_b(count: u64, base: u64, position: u64, next: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut segment = b"SEGQLOG\0".to_vec();
    segment.extend_from_slice(&1u32.to_le_bytes());
    segment.extend_from_slice(&[0; 4]);
    segment.extend_from_slice(&base.to_le_bytes());
    let crc = crc32(&segment);
    segment.extend_from_slice(&crc.to_le_bytes());
    segment.extend_from_slice(&[0; 4]);
    for offset in base..base + count {
        let mut frame = vec![0u8; RECORD_HEADER_LEN];
        frame[8..16].copy_from_slice(&offset.to_le_bytes());
        let crc = crc32(&frame[4..]);
        frame[..4].copy_from_slice(&crc.to_le_bytes());
        segment.extend_from_slice(&frame);
    }
    std::fs::write(dir.path().join(format!("{base:020}.log")), segment).unwrap();
    let mut checkpoint = vec![0u8; CHECKPOINT_SLOT_B + 64];
    put_checkpoint_slot(&mut checkpoint, CHECKPOINT_SLOT_B, base, position, next, false);
    std::fs::write(dir.path().join("checkpoint"), checkpoint).unwrap();
    dir
}

/// A slot with a valid CRC whose position lies inside a record (input
/// `34 7f 00 00 00 00 2c 00 00 00 00` of the `recovery` fuzz target). A slot is only a
/// hint: it is trusted only if its position is the end of a batch with the offset it names,
/// so here the segment is scanned from its start and the three records are kept. (Found by
/// the fuzz target: recovery used to cut the segment at the slot, in the middle of a
/// record, and the next acknowledged append could not be read back.)
#[test]
fn a_checksummed_slot_inside_a_record_does_not_spoil_later_appends() {
    let dir = crashed_with_slot_b(3, 889, 44, 889);
    let q = Queue::open(dir.path(), opts()).unwrap();
    let next = q.append(b"acknowledged").unwrap();
    let got = q.read(next).map(|r| r.map(|r| r.payload().to_vec()));
    assert!(matches!(&got, Ok(Some(p)) if p == b"acknowledged"), "record {next}: {got:?}");
    assert_eq!(q.next_offset(), 890 + 3, "the three intact records are kept");
}

/// The same family: a slot at a record boundary whose next offset is lower than the
/// records before it say. Not trusted either. (It used to make recovery number the next
/// append with an offset an older record already had, so reading it returned the older
/// record's bytes.)
#[test]
fn a_checksummed_slot_with_a_wrong_next_offset_does_not_alias_records() {
    let dir = crashed_with_slot_b(3, 0, (FILE_HEADER_LEN + 2 * RECORD_HEADER_LEN) as u64, 1);
    let q = Queue::open(dir.path(), opts()).unwrap();
    let next = q.append(b"acknowledged").unwrap();
    let got = q.read(next).map(|r| r.map(|r| r.payload().to_vec()));
    assert!(matches!(&got, Ok(Some(p)) if p == b"acknowledged"), "record {next}: {got:?}");
}

// ---- Group files ---------------------------------------------------------------------

/// Every byte of the group snapshot flipped: the group is `Corrupt` (naming the snapshot),
/// nothing else is.
#[test]
fn every_byte_of_the_group_snapshot_damaged_is_corrupt() {
    let fx = Fixture::new();
    let len = std::fs::metadata(fx.dir.path().join("groups/g/state")).unwrap().len() as usize;
    for pos in 0..len {
        let copy = fx.copy();
        let path = copy.path().join("groups/g/state");
        flip_byte(&path, pos);
        let q = Queue::open(copy.path(), opts()).unwrap();
        if (28..32).contains(&pos) {
            // The header's last reserved word is covered by the snapshot's own CRC.
        }
        assert_eq!(corrupt(q.group("g")).0, path, "byte {pos}");
        assert_eq!(q.groups().unwrap(), ["g"]);
        assert_holds(&q, &fx.payloads);
    }
}

/// Snapshots alternate between `state` and `state.1`, so that a crash while one is written
/// in place leaves the other. When the newer one is damaged after it was written: if the
/// journal already holds entries of its generation, the group is `Corrupt`, naming it,
/// rather than going back to the older snapshot and forgetting the acks made since; if not,
/// the older snapshot and the journal entries it goes with still hold every ack, and the
/// group opens from them (only the settings written with the newer snapshot are lost).
#[test]
fn a_damaged_newer_snapshot_is_corrupt_not_rolled_back() {
    for more_acks in [false, true] {
        let fx = Fixture::new();
        let copy = fx.copy();
        {
            // New settings make the group write a second snapshot (generation 1, `state.1`).
            let q = Queue::open(copy.path(), opts()).unwrap();
            let g = q.group_with("g", GroupOptions::default().max_attempts(9)).unwrap();
            while more_acks && g.ack_floor() < 10 {
                let d = g.poll(NO_WAIT).unwrap().unwrap();
                g.ack(d.offset()).unwrap();
            }
            q.close().unwrap();
        }
        let newer = copy.path().join("groups/g/state.1");
        assert!(newer.exists(), "the second snapshot file");
        flip_byte(&newer, 40);
        let q = Queue::open(copy.path(), opts()).unwrap();
        if more_acks {
            assert_eq!(corrupt(q.group("g")).0, newer);
        } else {
            let g = q.group("g").unwrap();
            assert_eq!((g.ack_floor(), g.options().get_max_attempts()), (5, 5));
        }
        assert_holds(&q, &fx.payloads);
    }
}

/// A snapshot with a valid CRC but impossible contents (a window of 2^40 records, a floor
/// near `u64::MAX`, entries of unknown kinds or past its window): opened without trying to
/// hold them, and brought back within the log.
#[test]
fn a_checksummed_snapshot_with_impossible_contents_is_brought_within_the_log() {
    let fx = Fixture::new();
    for (floor, next) in [(0, 1u64 << 40), (u64::MAX - 1, u64::MAX), (3, 2)] {
        let copy = fx.copy();
        let path = copy.path().join("groups/g/state");
        write_u64(&path, FILE_HEADER_LEN + 16, floor);
        write_u64(&path, FILE_HEADER_LEN + 24, next);
        fix_snapshot_crcs(&path);
        // The journal's entries belong to the old contents: drop them.
        truncate_file(&copy.path().join("groups/g/journal"), FILE_HEADER_LEN);
        let q = Queue::open(copy.path(), opts()).unwrap();
        let g = q.group("g").unwrap();
        let st = g.stats();
        assert!(st.ack_floor <= RECORDS && st.next_delivery <= RECORDS, "floor {floor}, next {next}: {st:?}");
        while let Some(d) = g.poll(NO_WAIT).unwrap() {
            g.ack(d.offset()).unwrap();
        }
        assert_eq!(g.ack_floor(), RECORDS);
    }
}

/// A group snapshot with valid checksums built from its fields: `(offset, kind, attempts,
/// at_ms)` entries with kind 1 = waiting, 2 = acked, 3 = dead.
fn snapshot_bytes(max_attempts: u32, floor: u64, next: u64, entries: &[(u64, u32, u32, u64)]) -> Vec<u8> {
    let mut b = b"SEGQGRP\0".to_vec();
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&7u64.to_le_bytes()); // generation
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&30_000u64.to_le_bytes()); // lease in ms
    b.extend_from_slice(&max_attempts.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for v in [floor, next, 0, entries.len() as u64] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for &(offset, kind, attempts, at) in entries {
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&attempts.to_le_bytes());
        b.extend_from_slice(&at.to_le_bytes());
    }
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// A snapshot with valid checksums whose floor lies far past the log (2^40), with a
/// waiting entry just below that floor that has used up its attempts, and a dead letter
/// past it: entries past the log's end are dropped when the group is opened. (Found by the
/// `group_state` fuzz target: `restore` clamped the floor to the log's end but sorted
/// entries against the unclamped floor, and the first call that dead-lettered expired
/// records filled the window one slot per offset up to 2^40, a 3 GiB allocation and an
/// abort. The body runs in a child process with 2 GB of address space, so that such a
/// failure cannot take the machine's memory or the other tests with it.)
#[test]
fn a_checksummed_snapshot_entry_far_past_the_log_is_dropped() {
    if !in_a_child_with(2_000_000, "a_checksummed_snapshot_entry_far_past_the_log_is_dropped") {
        return;
    }
    let fx = Fixture::new();
    let copy = fx.copy();
    let huge = 1u64 << 40;
    let state = snapshot_bytes(5, huge, huge, &[(3, 1, 5, 0), (huge - 1, 1, 5, 0), (huge + 5, 3, 2, 0)]);
    std::fs::write(copy.path().join("groups/g/state"), state).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    let g = q.group("g").unwrap();
    assert!(g.ack_floor() <= RECORDS);
    assert!(g.dead_letters().unwrap().iter().all(|d| d.offset() < RECORDS), "a dead letter past the log");
}

/// A snapshot with valid checksums whose floor and next delivery are `u64::MAX`, and a
/// checksummed journal entry that delivers (or dead-letters) offset `u64::MAX`. The queue
/// opens the group within the log; `segq`'s readers, also the one that takes the snapshot's
/// next delivery as in the log (used when the log's end is unknown), report it without a
/// panic and without wrapping to 0. (`read_group_past` applied the entry: `offset + 1`
/// overflowed. Found by a review in session 17.)
#[test]
fn a_group_at_the_last_offset_there_is_is_read_without_overflow() {
    for kind in [1u8, 4] {
        let fx = Fixture::new();
        let copy = fx.copy();
        let state = snapshot_bytes(5, u64::MAX, u64::MAX, &[]);
        let generation = snapshot_generation(&state);
        std::fs::write(copy.path().join("groups/g/state"), state).unwrap();
        let _ = std::fs::remove_file(copy.path().join("groups/g/state.1"));
        let path = copy.path().join("groups/g/journal");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(FILE_HEADER_LEN);
        bytes.extend_from_slice(&journal_entry(kind, u64::MAX, 1, generation));
        std::fs::write(&path, bytes).unwrap();
        let dir = segq::inspect::QueueDir::open(copy.path()).unwrap();
        for (what, report) in [
            ("read_group", segq::inspect::read_group(&dir, "g", RECORDS)),
            ("read_group_past", segq::inspect::read_group_past(&dir, "g", 0)),
        ] {
            let report = report.unwrap();
            assert!(report.next_delivery >= report.ack_floor, "kind {kind}, {what}: {report:?}");
            assert!(report.findings.iter().any(|f| f.what.contains("far past")), "kind {kind}, {what}: {report:?}");
        }
        let q = Queue::open(copy.path(), opts()).unwrap();
        let st = q.group("g").unwrap().stats();
        assert!(st.ack_floor <= RECORDS && st.next_delivery <= RECORDS, "kind {kind}: {st:?}");
    }
}

/// Whether this is the child process that runs test `name`'s body. The parent (the test
/// as run by the harness) starts that child with at most `kib` KiB of address space, waits
/// and checks it passed: a failure to guard against is an abort on a huge allocation,
/// which must not take the other tests of this binary, or the machine's memory, with it.
fn in_a_child_with(kib: u64, name: &str) -> bool {
    const ENV: &str = "SEGQ_BAD_INPUT_CHILD";
    if std::env::var(ENV).is_ok() {
        return true;
    }
    let _serial = common::process_lock();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("ulimit -v {kib} && exec \"$0\" \"$@\"")])
        .arg(exe)
        .args(["--exact", name, "--nocapture"])
        .env(ENV, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let head = stderr.lines().take(5).collect::<Vec<_>>().join("\n");
    assert!(out.status.success(), "the child failed ({}):\n{head}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
    false
}

/// Sparse snapshot files of a gigabyte and more next to a valid one: one whose length does
/// not fit its entry count, and one whose does but whose checksum fails. The group opens
/// from the valid file without reading either whole (the child has 600 MB of address
/// space). (The library read each file whole first: a 20 GiB sparse file was a 20 GiB
/// allocation and an abort.)
#[test]
fn sparse_gigabyte_snapshot_files_are_passed_over_without_reading_them_whole() {
    if !in_a_child_with(600_000, "sparse_gigabyte_snapshot_files_are_passed_over_without_reading_them_whole") {
        return;
    }
    use std::os::unix::fs::FileExt;
    let fx = Fixture::new();
    let group = |copy: &tempfile::TempDir| copy.path().join("groups/g");
    let generation = snapshot_generation(&std::fs::read(group(&fx.dir).join("state")).unwrap());
    let spare = group(&fx.dir).join(if generation.is_multiple_of(2) { "state.1" } else { "state" });
    let name = spare.file_name().unwrap().to_owned();
    let gib = (1u64 << 30) / 24;
    for (len, count) in [(20u64 << 30, 7u64), (84 + 24 * gib, gib)] {
        let copy = fx.copy();
        let file = std::fs::File::create(group(&copy).join(&name)).unwrap();
        file.set_len(len).unwrap();
        file.write_all_at(b"SEGQGRP\0", 0).unwrap();
        file.write_all_at(&count.to_le_bytes(), 72).unwrap();
        let q = Queue::open(copy.path(), opts()).unwrap();
        assert_eq!(q.group("g").unwrap().ack_floor(), 5, "{len} bytes");
    }
}

/// Every byte of the journal header: magic, version, reserved, base and CRC make the group
/// `Corrupt` at position 0; the last reserved word is not checked.
#[test]
fn every_byte_of_the_group_journal_header_damaged_is_corrupt() {
    let fx = Fixture::new();
    for pos in 0..FILE_HEADER_LEN {
        let copy = fx.copy();
        let path = copy.path().join("groups/g/journal");
        flip_byte(&path, pos);
        let q = Queue::open(copy.path(), opts()).unwrap();
        if pos >= 28 {
            assert_eq!(q.group("g").unwrap().ack_floor(), 5);
        } else {
            let (p, position, _) = corrupt(q.group("g"));
            assert_eq!((p, position), (path, 0), "byte {pos}");
        }
    }
}

/// Every byte of one journal entry (CRC, kind, reserved, offset, argument) flipped: replay
/// stops there, so the group keeps the state of the entries before it.
#[test]
fn every_byte_of_a_journal_entry_damaged_stops_replay_there() {
    let fx = Fixture::new();
    // Entry 5 is "ack 2": with it gone, the floor stays at 2.
    let entry = FILE_HEADER_LEN + 5 * JOURNAL_ENTRY_LEN;
    for pos in entry..entry + JOURNAL_ENTRY_LEN {
        let copy = fx.copy();
        let path = copy.path().join("groups/g/journal");
        flip_byte(&path, pos);
        let q = Queue::open(copy.path(), opts()).unwrap();
        let g = q.group("g").unwrap();
        assert_eq!(g.ack_floor(), 2, "byte {}", pos - entry);
        // Record 2 was delivered (entry 4 survived): it comes back as a second attempt.
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!((d.offset(), d.attempt()), (2, 2), "byte {}", pos - entry);
    }
}

/// A journal entry with a valid CRC that delivers (or dead-letters) an offset far past the
/// log's end: dropped when the group is opened (replaying it would fill the group's window
/// one slot per offset up to it), and the group is rewritten without it.
#[test]
fn a_checksummed_journal_entry_far_past_the_log_is_ignored() {
    for kind in [1u8, 4] {
        let fx = Fixture::new();
        let copy = fx.copy();
        let state = std::fs::read(copy.path().join("groups/g/state")).unwrap();
        let generation = snapshot_generation(&state);
        let path = copy.path().join("groups/g/journal");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = FILE_HEADER_LEN + journal_entries(&bytes, generation) * JOURNAL_ENTRY_LEN;
        bytes[at..at + JOURNAL_ENTRY_LEN].copy_from_slice(&journal_entry(kind, 1 << 40, 1, generation));
        std::fs::write(&path, bytes).unwrap();
        let q = Queue::open(copy.path(), opts()).unwrap();
        let g = q.group("g").unwrap();
        assert!(g.stats().next_delivery <= RECORDS);
    }
}

/// A journal entry with a valid CRC and nonsense in it (ack, nack, redrive, seek or skip of
/// `u64::MAX` with an argument of `u64::MAX`): applied or ignored without harm.
#[test]
fn checksummed_journal_entries_of_nonsense_do_no_harm() {
    for kind in [2u8, 3, 5, 6, 7, 8, 0, 255] {
        let fx = Fixture::new();
        let copy = fx.copy();
        let generation = snapshot_generation(&std::fs::read(copy.path().join("groups/g/state")).unwrap());
        let path = copy.path().join("groups/g/journal");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = FILE_HEADER_LEN + journal_entries(&bytes, generation) * JOURNAL_ENTRY_LEN;
        bytes[at..at + JOURNAL_ENTRY_LEN].copy_from_slice(&journal_entry(kind, u64::MAX, u64::MAX, generation));
        std::fs::write(&path, bytes).unwrap();
        let q = Queue::open(copy.path(), opts()).unwrap();
        let g = q.group("g").unwrap();
        let st = g.stats();
        assert!(st.ack_floor <= RECORDS && st.next_delivery <= RECORDS, "kind {kind}: {st:?}");
        while let Some(d) = g.poll(NO_WAIT).unwrap() {
            g.ack(d.offset()).unwrap();
        }
        assert_eq!(g.ack_floor(), RECORDS, "kind {kind}");
    }
}

/// A group whose journal file is gone: the group cannot be opened (`Corrupt`, naming the
/// journal, as `segq` reports it), nothing is made in its place, and the queue and other
/// groups work.
#[test]
fn a_group_without_its_journal_is_corrupt() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let journal = copy.path().join("groups/g/journal");
    std::fs::remove_file(&journal).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    let err = q.group("g").unwrap_err();
    match &err {
        Error::Corrupt { path, position: 0, kind: CorruptKind::Truncated } => assert_eq!(path, &journal),
        other => panic!("expected the journal to be reported damaged, got {other:?}"),
    }
    assert!(!journal.exists(), "a journal was made in the place of the lost one");
    assert_eq!(q.groups().unwrap(), ["g"]);
    assert_holds(&q, &fx.payloads);
}

/// A group whose snapshot is gone is no group: it is not listed, and `group()` creates it
/// afresh at the first offset (so its records are delivered again: at least once holds).
#[test]
fn a_group_without_its_snapshot_starts_over() {
    let fx = Fixture::new();
    let copy = fx.copy();
    std::fs::remove_file(copy.path().join("groups/g/state")).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    assert!(q.groups().unwrap().is_empty());
    let g = q.group("g").unwrap();
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 0);
}

// ---- Foreign files -------------------------------------------------------------------

/// Files and folders segq did not write: left alone unless they look like its own
/// leftovers (`*.tmp` and `.index` files without a segment are deleted at open: a user's
/// `notes.tmp` in a queue directory is deleted too).
#[test]
fn foreign_files_in_the_directory_are_left_alone() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let d = copy.path();
    let foreign = [
        "notes.txt",
        "42.log",
        "00000000000000000001.log.bak",
        "0000000000000000000x.log",
        "00000000000000000000.LOG",
        "checkpoint.old",
        "lock.1",
    ];
    for name in foreign {
        std::fs::write(d.join(name), b"not segq's").unwrap();
    }
    std::fs::create_dir(d.join("a-folder")).unwrap();
    std::fs::write(d.join("notes.tmp"), b"a user's file").unwrap();
    std::fs::write(d.join("00000000000000099999.index"), b"orphan").unwrap();
    std::fs::create_dir_all(d.join("groups/not a group")).unwrap();
    std::fs::create_dir_all(d.join("groups/empty")).unwrap();
    std::fs::write(d.join("groups/stray-file"), b"x").unwrap();
    let q = Queue::open(d, opts()).unwrap();
    assert_holds(&q, &fx.payloads);
    assert_eq!(q.groups().unwrap(), ["g"], "folders without a snapshot are not groups");
    assert_eq!(q.append(b"more").unwrap(), RECORDS);
    q.close().unwrap();
    for name in foreign {
        assert_eq!(std::fs::read(d.join(name)).unwrap(), b"not segq's", "{name}");
    }
    assert!(d.join("a-folder").is_dir());
    assert!(!d.join("notes.tmp").exists(), "*.tmp files are leftovers to segq");
    assert!(!d.join("00000000000000099999.index").exists());
}

/// A folder with a segment's name: as the newest "segment" it makes open fail with an I/O
/// error; it is not deleted.
#[test]
fn a_folder_named_like_the_newest_segment_fails_open() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let fake = copy.path().join("00000000000000999999.log");
    std::fs::create_dir(&fake).unwrap();
    let err = Queue::open(copy.path(), opts()).unwrap_err();
    assert!(matches!(err, Error::Io(_) | Error::Corrupt { .. }), "{err:?}");
    assert!(fake.is_dir());
}

/// `groups` as a file instead of a folder: group calls fail with an I/O error; the log
/// works.
#[test]
fn a_file_where_the_groups_folder_should_be_fails_group_calls_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("groups"), b"x").unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert!(matches!(q.groups(), Err(Error::Io(_))));
    assert!(matches!(q.group("g"), Err(Error::Io(_))));
    assert_eq!(q.append(b"fine").unwrap(), 0);
}

/// The queue's path is a file, or its `checkpoint` or `lock` is a folder: open fails with
/// an I/O error. For a file, it says so: `NotADirectory`, naming it. (It said "File
/// exists", from `create_dir_all`.)
#[test]
fn files_of_the_wrong_type_fail_open_with_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = Queue::open(&file, opts()).unwrap_err();
    let Error::Io(io) = &err else { panic!("{err:?}") };
    assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{err}");
    assert!(err.to_string().contains("file: not a directory"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // A link to nothing, or a loop: the same, not "File exists".
    for (name, target) in [("dangling", "/no/such/disk/q"), ("loop", "loop")] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let err = Queue::open(&link, opts()).unwrap_err();
        let Error::Io(io) = &err else { panic!("{err:?}") };
        assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory, "{name}: {err}");
        assert!(err.to_string().contains("symbolic link"), "{name}: {err}");
    }
    for name in ["checkpoint", "lock"] {
        let d = dir.path().join(format!("q-{name}"));
        std::fs::create_dir_all(d.join(name)).unwrap();
        assert!(matches!(Queue::open(&d, opts()), Err(Error::Io(_))), "{name}");
    }
}

// ---- Segments deleted or renamed by hand ---------------------------------------------

/// A middle segment deleted: the queue opens; its records are `Corrupt { Gap }` on read, the
/// others read on, and iteration reports the gap.
#[test]
fn a_middle_segment_deleted_by_hand_is_a_gap() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let segments = fx.segments();
    let (base, end) = (segment_base(&segments[2]), segment_base(&segments[3]));
    std::fs::remove_file(rename_in(copy.path(), &segments[2])).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    for o in 0..RECORDS {
        let got = q.read(o);
        if (base..end).contains(&o) {
            assert!(got.is_err(), "record {o}: {got:?}");
        } else {
            assert_eq!(got.unwrap().unwrap().payload(), fx.payloads[o as usize]);
        }
    }
    assert!(q.iter_from(0).any(|r| r.is_err()));
    never_wrong(&q, &fx.payloads);
}

/// The oldest segments deleted: the queue starts at the next segment's base, as after
/// retention (segq cannot tell the two apart).
#[test]
fn the_oldest_segment_deleted_by_hand_moves_the_first_offset() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let segments = fx.segments();
    std::fs::remove_file(rename_in(copy.path(), &segments[0])).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    assert_eq!(q.first_offset(), segment_base(&segments[1]));
    never_wrong(&q, &fx.payloads);
    // The group moves past what it lost.
    let g = q.group("g").unwrap();
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), segment_base(&segments[1]));
}

/// The newest segment deleted: the checkpoint names it, so open refuses with `Gap`
/// instead of handing its offsets out again. Every segment deleted: the same.
#[test]
fn the_newest_or_every_segment_deleted_by_hand_fails_open() {
    let fx = Fixture::new();
    let copy = fx.copy();
    std::fs::remove_file(rename_in(copy.path(), fx.segments().last().unwrap())).unwrap();
    assert!(matches!(corrupt(Queue::open(copy.path(), opts())).2, CorruptKind::Gap { .. }));
    let copy = fx.copy();
    for seg in fx.segments() {
        std::fs::remove_file(rename_in(copy.path(), &seg)).unwrap();
    }
    assert!(matches!(corrupt(Queue::open(copy.path(), opts())).2, CorruptKind::Gap { .. }));
}

/// A segment renamed to another base: its header disagrees with its name (`BadHeader`),
/// at open for the newest segment, at the first read for a sealed one; the offsets its old
/// name covered are a gap.
#[test]
fn a_segment_renamed_by_hand_disagrees_with_its_header() {
    let fx = Fixture::new();
    let segments = fx.segments();
    let copy = fx.copy();
    let from = rename_in(copy.path(), &segments[1]);
    let base = segment_base(&from);
    let to = copy.path().join(format!("{:020}.log", base + 1));
    std::fs::rename(&from, &to).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    assert!(matches!(corrupt(q.read(base + 1)).2, CorruptKind::BadHeader(_)));
    assert!(q.read(base).is_err());
    never_wrong(&q, &fx.payloads);
    drop(q);
    let copy = fx.copy();
    let newest = rename_in(copy.path(), segments.last().unwrap());
    let base = segment_base(&newest);
    std::fs::rename(&newest, copy.path().join(format!("{:020}.log", base + 1))).unwrap();
    let err = Queue::open(copy.path(), opts()).unwrap_err();
    let refused = matches!(&err, Error::Corrupt { kind: CorruptKind::BadHeader(_) | CorruptKind::Gap { .. }, .. });
    assert!(refused, "{err:?}");
}

// ---- Bad arguments -------------------------------------------------------------------

/// Options the other tests do not try: a zero flush interval, a lease under 1 ms, no
/// attempts at all.
#[test]
fn out_of_range_sync_and_group_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Queue::open(dir.path(), opts().sync(SyncPolicy::Interval(Duration::ZERO))).unwrap_err();
    assert!(matches!(err, Error::InvalidOptions(_)), "{err:?}");
    let q = Queue::open(dir.path(), opts()).unwrap();
    for bad in [
        GroupOptions::default().lease(Duration::ZERO),
        GroupOptions::default().lease(Duration::from_micros(999)),
        GroupOptions::default().max_attempts(0),
    ] {
        assert!(matches!(q.group_with("g", bad), Err(Error::InvalidOptions(_))), "{bad:?}");
    }
    assert!(q.groups().unwrap().is_empty(), "a refused group was created");
}

/// `nack` with any delay, however large, and `poll` with any timeout: no overflow.
#[test]
fn huge_delays_and_timeouts_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    q.append(b"x").unwrap();
    let g = q.group("g").unwrap();
    let d = g.poll(Duration::MAX).unwrap().unwrap();
    g.nack(d.offset(), Duration::MAX).unwrap();
    assert!(g.poll(NO_WAIT).unwrap().is_none(), "a nack for ever is not due now");
    assert_eq!(g.stats().waiting, 1);
    assert!(matches!(g.nack(5, NO_WAIT), Err(Error::NotDelivered { offset: 5 })));
    assert!(matches!(g.ack(u64::MAX), Err(Error::NotDelivered { .. })));
    assert!(!g.redrive(0).unwrap(), "not a dead letter");
    assert!(q.read(u64::MAX).unwrap().is_none());
    assert!(q.iter_from(u64::MAX).next().is_none());
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts().sync(SyncPolicy::Interval(Duration::MAX))).unwrap();
    assert_eq!(q.group("g").unwrap().stats().waiting, 1);
    q.close().unwrap();
}

/// A lease of `Duration::MAX` is accepted and works: deadlines saturate. (It used to pass
/// validation and then make `poll` panic with "overflow when adding duration to instant".)
#[test]
fn a_lease_of_duration_max_works() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), opts()).unwrap();
        q.append(b"x").unwrap();
        q.append(b"y").unwrap();
        let g = q.group_with("g", GroupOptions::default().lease(Duration::MAX)).unwrap();
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        g.ack(d.offset()).unwrap();
        assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 1);
        assert!(g.poll(NO_WAIT).unwrap().is_none(), "a lease for ever does not run out");
        q.close().unwrap();
    }
    let q = Queue::open(dir.path(), opts()).unwrap();
    let g = q.group("g").unwrap();
    // After a restart no one holds a lease: record 1 comes back.
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (1, 2));
}

/// `seek` past the end of the log goes to the end (it is clamped to `next_offset()`), the
/// same whether or not the queue is reopened in between: records appended later are
/// delivered.
#[test]
fn a_seek_past_the_end_goes_to_the_end_before_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let live = {
        let q = Queue::open(dir.path(), opts()).unwrap();
        q.append(b"0").unwrap();
        q.group("live").unwrap().seek(10).unwrap();
        q.group("reopened").unwrap().seek(10).unwrap();
        for _ in 0..11 {
            q.append(b"r").unwrap();
        }
        let live = q.group("live").unwrap().poll(NO_WAIT).unwrap().map(|d| d.offset());
        q.close().unwrap();
        live
    };
    // "reopened" was sought in the same way, with the log ending at 1; by now it holds 12.
    let dir2 = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir2.path(), opts()).unwrap();
        q.append(b"0").unwrap();
        q.group("g").unwrap().seek(10).unwrap();
        q.close().unwrap();
        let q = Queue::open(dir2.path(), opts()).unwrap();
        for _ in 0..11 {
            q.append(b"r").unwrap();
        }
        let after_reopen = q.group("g").unwrap().poll(NO_WAIT).unwrap().map(|d| d.offset());
        assert_eq!(
            after_reopen, live,
            "seek(10) then appends: live delivers {live:?}, after a reopen {after_reopen:?}"
        );
    }
}

// ---- Random bytes in place of each file (CI's stand-in for the fuzz targets) ---------

/// Opens the queue in `dir` and uses it every way a caller can; nothing may panic.
/// Returns whether it opened.
fn exercise(dir: &Path, payloads: &[Vec<u8>]) -> bool {
    let Ok(q) = Queue::open(dir, opts()) else { return false };
    never_wrong(&q, payloads);
    let _ = q.groups();
    if let Ok(g) = q.group("g") {
        for _ in 0..20 {
            match g.poll(NO_WAIT) {
                Ok(Some(d)) => {
                    let _ = g.ack(d.offset());
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        let _ = (g.stats(), g.dead_letters(), g.ack_floor());
    }
    let next = q.next_offset();
    if q.append(b"after").is_ok() {
        assert_eq!(q.read(next).unwrap().unwrap().payload(), b"after");
    }
    let _ = q.close();
    // And again, after whatever the first open repaired.
    if let Ok(q) = Queue::open(dir, opts()) {
        let _ = q.iter_from(0).count();
    }
    true
}

fn pristine() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(Fixture::new)
}

/// Which file a random case replaces or damages.
fn target(fx: &Fixture, which: usize) -> PathBuf {
    let mut files = fx.segments();
    files.push(files.last().unwrap().with_extension("index"));
    files.push(fx.segments()[1].with_extension("index"));
    files.push(fx.dir.path().join("checkpoint"));
    files.push(fx.dir.path().join("groups/g/state"));
    files.push(fx.dir.path().join("groups/g/journal"));
    files[which % files.len()].strip_prefix(fx.dir.path()).unwrap().to_path_buf()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any file replaced by random bytes, with or without a valid header in front.
    #[test]
    fn a_file_replaced_by_random_bytes_never_panics_or_returns_wrong_data(
        which in 0usize..64,
        keep_header in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let fx = pristine();
        let copy = fx.copy();
        let path = copy.path().join(target(fx, which));
        let mut new = if keep_header { std::fs::read(&path).unwrap()[..FILE_HEADER_LEN.min(std::fs::metadata(&path).unwrap().len() as usize)].to_vec() } else { Vec::new() };
        new.extend_from_slice(&bytes);
        std::fs::write(&path, new).unwrap();
        exercise(copy.path(), &fx.payloads);
    }

    /// Any file damaged in a few random places (flipped bytes, or a run of random bytes).
    #[test]
    fn random_damage_to_any_file_never_panics_or_returns_wrong_data(
        which in 0usize..64,
        hits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>(), 1usize..64), 1..6),
    ) {
        let fx = pristine();
        let copy = fx.copy();
        let path = copy.path().join(target(fx, which));
        let mut bytes = std::fs::read(&path).unwrap();
        if !bytes.is_empty() {
            for (at, value, run) in hits {
                let at = at.index(bytes.len());
                let end = (at + run).min(bytes.len());
                for b in &mut bytes[at..end] {
                    *b ^= value | 1;
                }
            }
        }
        std::fs::write(&path, bytes).unwrap();
        exercise(copy.path(), &fx.payloads);
    }
}

/// A sparse journal of 2 GiB (segq writes 1 MiB ones): `Queue::group` refuses it with
/// `Corrupt` naming the journal, as `segq verify` does, instead of mapping and scanning
/// its whole length (page cache for every hole it read).
#[test]
fn a_journal_of_gigabytes_is_refused_not_scanned() {
    let fx = Fixture::new();
    let copy = fx.copy();
    let journal = copy.path().join("groups/g/journal");
    std::fs::OpenOptions::new().write(true).open(&journal).unwrap().set_len(2 << 30).unwrap();
    let q = Queue::open(copy.path(), opts()).unwrap();
    let (path, position, kind) = corrupt(q.group("g"));
    assert_eq!((path, position), (journal, 0));
    assert!(kind.to_string().contains("too big"), "{kind}");
}

// ---- Length bit flips before the checkpoint's mark (found by the second session-11 review)
//
// A damaged length can still frame, and move where stepping to the mark breaks off. Open
// judges at the first record that fails its checksum on the way, so each of these keeps
// the mark. (Each was judged where framing broke off: the mark was dropped and synced
// records cut, their offsets handed out again, or the open refused for a gap.)

/// A synced record whose payload is zeros, with one bit of its length flipped down. (The
/// record was cut and its offset handed out again.)
#[test]
fn a_length_bit_flip_in_a_synced_zero_payload_record_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().sync(SyncPolicy::Always);
    let q = Queue::open(dir.path(), opts.clone()).unwrap();
    for _ in 0..3 {
        q.append(&[0u8; 100]).unwrap(); // durable when it returns
    }
    assert_eq!(q.durable_offset(), 3);
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let last = record_spans(&std::fs::read(&seg).unwrap())[2].clone();
    // len 100 (0x64) -> 36 (0x24): one bit.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[last.start + 4] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();

    let info = segq::inspect::info(&segq::inspect::QueueDir::open(dir.path()).unwrap()).unwrap();
    assert_eq!(info.next_offset, 3);
    let q = Queue::open(dir.path(), opts).unwrap();
    assert!(q.recovery().synced_damage.is_some());
    assert!(q.read(2).is_err(), "the damaged record reports itself");
    assert_eq!(q.next_offset(), 3, "a synced record was cut; offset 2 would be handed out again");
}

/// One bit flipped up in the length of the next-to-last synced record, whose frame then
/// ends inside the zero payload of the last. (Open refused with `Gap`, though nothing was
/// missing.)
#[test]
fn a_length_bit_flip_before_a_zero_payload_record_does_not_refuse_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().sync(SyncPolicy::Always);
    let q = Queue::open(dir.path(), opts.clone()).unwrap();
    q.append(&[7u8; 100]).unwrap();
    q.append(&[7u8; 100]).unwrap();
    q.append(&[0u8; 200]).unwrap();
    assert_eq!(q.durable_offset(), 3);
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let second = record_spans(&std::fs::read(&seg).unwrap())[1].clone();
    // len 100 (0x64) -> 164 (0xa4): its frame now ends 64 bytes into the last record.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[second.start + 4] ^= 0xc0;
    std::fs::write(&seg, bytes).unwrap();

    match Queue::open(dir.path(), opts) {
        Ok(q) => {
            assert_eq!(q.next_offset(), 3);
            assert!(q.recovery().synced_damage.is_some());
        }
        Err(e) => panic!("open refused although every synced record is there (one damaged): {e}"),
    }
}

/// One bit flipped up in a synced record's length, so that its frame swallows many small
/// records, with the index missing (it is derived and not synced). The records after the
/// damage are kept, not cut (390 synced records were cut and their offsets handed out
/// again), and since session 12 they are found again and read: only the damaged record is
/// `Corrupt`. (Stepping lands inside the records it swallowed; the search for the records
/// after the damage starts just after the damaged record's start, whose length is what is
/// wrong. Found by the session-12 review: it started where stepping stopped, and every
/// record in between was lost.)
#[test]
fn a_length_bit_flip_that_swallows_small_synced_records_cuts_none() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().sync(SyncPolicy::Always);
    let q = Queue::open(dir.path(), opts.clone()).unwrap();
    for i in 0..400u64 {
        q.append(&i.to_le_bytes()).unwrap(); // 32-byte frames, each durable when acked
    }
    assert_eq!(q.durable_offset(), 400);
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[spans[10].start + 5] ^= 0x10; // len 8 -> 4104
    std::fs::write(&seg, bytes).unwrap();
    for ix in common::files_ending(dir.path(), "index") {
        std::fs::remove_file(ix).unwrap();
    }
    let info = segq::inspect::info(&segq::inspect::QueueDir::open(dir.path()).unwrap()).unwrap();
    assert_eq!(info.next_offset, 400);
    let q = Queue::open(dir.path(), opts).unwrap();
    assert_eq!(q.next_offset(), 400, "synced records were cut");
    assert!(q.recovery().synced_damage.as_ref().is_some_and(|d| d.contains(&format!("byte {}", spans[10].start))));
    assert!(matches!(q.read(10), Err(segq::Error::Corrupt { position, .. }) if position == spans[10].start as u64));
    for i in (0..10).chain(11..400) {
        assert_eq!(q.read(i).unwrap().unwrap().payload(), i.to_le_bytes(), "record {i}");
    }
    assert_eq!(q.append(b"next").unwrap(), 400);
    assert_eq!(q.read(400).unwrap().unwrap().payload(), b"next");
}

/// The same with the index intact, the flip in the last index interval before the mark
/// (records 384..400 are stepped from the entry at 384). (10 records were cut.)
#[test]
fn a_length_bit_flip_in_the_last_interval_keeps_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().sync(SyncPolicy::Always);
    let q = Queue::open(dir.path(), opts.clone()).unwrap();
    for i in 0..400u64 {
        q.append(&i.to_le_bytes()).unwrap();
    }
    q.simulate_crash();
    let seg = active_segment(dir.path());
    let spans = record_spans(&std::fs::read(&seg).unwrap());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[spans[390].start + 4] ^= 0x80; // len 8 -> 136: the frame swallows records 391..394
    std::fs::write(&seg, bytes).unwrap();
    let q = Queue::open(dir.path(), opts).unwrap();
    assert_eq!(q.next_offset(), 400, "synced records were cut");
    assert_eq!(q.read(389).unwrap().unwrap().payload(), 389u64.to_le_bytes());
    assert!(matches!(q.read(390), Err(Error::Corrupt { position, .. }) if position == spans[390].start as u64));
}

/// An iterator following the log past damage kept at open, with index intervals from
/// the smallest to one larger than the segment: it yields what `read` reaches, and goes on
/// with the records appended after the open.
#[test]
fn live_iteration_past_kept_damage_in_the_active_segment() {
    for interval in [24u32, 512, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default().sync(SyncPolicy::Always).index_interval_bytes(interval);
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        for i in 0..50u64 {
            q.append(&[i as u8; 40]).unwrap();
        }
        q.simulate_crash();
        let seg = active_segment(dir.path());
        let spans = record_spans(&std::fs::read(&seg).unwrap());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[spans[45].start + 9] ^= 0x01; // offset field of record 45: BadOffset
        std::fs::write(&seg, bytes).unwrap();
        let q = Queue::open(dir.path(), opts).unwrap();
        assert_eq!(q.next_offset(), 50);
        let mut it = q.iter_from(40);
        let mut got = vec![];
        let mut errs = 0;
        while let Some(r) = it.next_timeout(Duration::from_millis(20)) {
            match r {
                Ok(r) => got.push(r.offset()),
                Err(_) => errs += 1,
            }
            assert!(errs < 100);
        }
        for i in 50..60u64 {
            q.append(&[i as u8; 40]).unwrap();
        }
        while let Some(r) = it.next_timeout(Duration::from_millis(20)) {
            match r {
                Ok(r) => got.push(r.offset()),
                Err(_) => errs += 1,
            }
            assert!(errs < 100);
        }
        let read_ok: Vec<u64> = (40..60).filter(|&o| q.read(o).is_ok_and(|r| r.is_some())).collect();
        assert_eq!(got, read_ok, "interval {interval}");
    }
}

/// The same flip in the segment whose seal a crash interrupted. (The mark was dropped,
/// the segment cut at the damage, and the whole newest segment deleted with it.)
#[test]
fn a_length_bit_flip_in_an_unfinished_seal_deletes_nothing() {
    const SEG: u64 = 16 << 10;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(SEG).index_interval_bytes(256).sync(SyncPolicy::Never);
    let q = Queue::open(dir.path(), opts.clone()).unwrap();
    let mut n = 0u64;
    while segment_files(dir.path()).len() < 3 {
        q.append(&n.to_le_bytes()).unwrap();
        n += 1;
    }
    q.simulate_crash();
    let files = segment_files(dir.path());
    let prev = files[files.len() - 2].clone();
    let base = segment_base(&prev);
    let mut bytes = std::fs::read(&prev).unwrap();
    let spans = record_spans(&bytes);
    let synced = base + 400;
    let position = spans[400].start as u64;
    bytes[spans[10].start + 5] ^= 0x10; // len 8 -> 4104
    bytes.resize(SEG as usize, 0); // back at its preallocated length, as mid-seal
    std::fs::write(&prev, &bytes).unwrap();
    std::fs::remove_file(prev.with_extension("index")).unwrap();
    let mut checkpoint = Vec::new();
    put_checkpoint_slot(&mut checkpoint, 0, base, position, synced, false);
    checkpoint.resize(CHECKPOINT_SLOT_B + 64, 0);
    std::fs::write(dir.path().join("checkpoint"), &checkpoint).unwrap();

    let q = Queue::open(dir.path(), opts).unwrap();
    assert_eq!(segment_files(dir.path()), files, "no segment deleted");
    assert!(q.next_offset() >= synced, "next {} < synced {synced}", q.next_offset());
    assert_eq!(q.next_offset(), n);
}
