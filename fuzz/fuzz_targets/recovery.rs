//! Fuzzes segment scanning and crash recovery through the public API: the input becomes the
//! newest segment of a queue directory (and, optionally, its checkpoint), which
//! `Queue::open` recovers as after a crash.
//!
//! Must hold: no panic; open succeeds or fails with an `Error`; after it succeeds, the
//! offsets from the first are contiguous, a record returned is one that lies in the input as
//! a whole frame with a matching CRC at its offset, an append is read back, and a clean
//! reopen (and a crash reopen) find the same records.
//!
//! Checkpoint slots are either written the way segq writes them (at the end of a batch,
//! with the offset there) or claim any position and offset (control bit 0x80). Free-form
//! slots found three bugs, now regression tests in tests/bad_input.rs:
//! `a_checksummed_slot_inside_a_record_*`, `a_checksummed_slot_with_a_wrong_next_offset_*`
//! and, for a slot past the end of the file that came back to life once open had grown the
//! file again, `a_cut_newest_segment_then_a_crash_loses_no_acknowledged_append`.
//!
//! Run with `cargo +nightly fuzz run recovery` from the repository root.

#![no_main]

mod common;

use common::{TempDir, file_header, steered_records, written};
use libfuzzer_sys::fuzz_target;
use segq::{Options, Queue, SyncPolicy};

/// A checkpoint slot with a valid CRC.
fn slot(base: u64, position: u64, next: u64, clean: bool) -> [u8; 64] {
    let mut s = [0u8; 64];
    s[..8].copy_from_slice(b"SEGQCKPT");
    s[8..12].copy_from_slice(&1u32.to_le_bytes());
    s[12..16].copy_from_slice(&u32::from(clean).to_le_bytes());
    s[16..24].copy_from_slice(&base.to_le_bytes());
    s[24..32].copy_from_slice(&position.to_le_bytes());
    s[32..40].copy_from_slice(&next.to_le_bytes());
    let crc = crc32fast::hash(&s[..40]);
    s[40..44].copy_from_slice(&crc.to_le_bytes());
    s
}

/// `(position, offset)` of each record start in `segment` from the header on, and of the
/// end of the last one: where segq could have written a slot (the ends of whole batches of
/// records with valid CRCs and consecutive offsets from `base`).
fn boundaries(segment: &[u8], base: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(32, base)];
    let (mut pos, mut offset) = (32usize, base);
    while let Some(h) = segment.get(pos..pos + 24) {
        let len = (u32::from_le_bytes(h[4..8].try_into().unwrap()) & 0x7fff_ffff) as usize;
        let Some(rest) = segment.get(pos + 4..pos + 24 + len) else { break };
        let crc_ok = u32::from_le_bytes(h[..4].try_into().unwrap()) == crc32fast::hash(rest);
        if !crc_ok || u64::from_le_bytes(h[8..16].try_into().unwrap()) != offset {
            break;
        }
        pos += 24 + len;
        offset += 1;
        // Slots name the ends of whole batches only.
        if h[7] & 0x80 == 0 {
            out.push((pos as u64, offset));
        }
    }
    out
}

fn opts() -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(64).sync(SyncPolicy::Never)
}

/// Every record from the first offset: offsets increasing, each written in `segment`.
fn records_of(q: &Queue, segment: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for rec in q.iter_from(0).flatten() {
        assert!(out.last().is_none_or(|(o, _)| rec.offset() > *o), "iteration went back");
        assert!(written(segment, rec.offset(), rec.timestamp_ms(), rec.payload()), "a record never written");
        out.push((rec.offset(), rec.payload().to_vec()));
    }
    if let Some(((first, _), (last, _))) = out.first().zip(out.last()) {
        assert!(*first >= q.first_offset() && *last < q.next_offset());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // control | base (1 byte) | slot A claim (2 bytes) | unused (2) | slot B claim (2) | segment body
    let [control, base, p0, p1, _, _, x0, x1, body @ ..] = data else { return };
    let base = u64::from(*base) * 7;
    let mut segment = if control & 1 == 0 { file_header(b"SEGQLOG\0", base) } else { Vec::new() };
    segment.extend_from_slice(&if control & 2 == 0 { steered_records(body, base, false) } else { body.to_vec() });
    let dir = TempDir::new();
    let d = &dir.0;
    std::fs::write(d.join(format!("{base:020}.log")), &segment).unwrap();
    // A checkpoint, sometimes: slot A and/or B with positions and offsets from the input.
    if control & 4 != 0 {
        let stops = boundaries(&segment, base);
        let claim = |a: u8, b: u8| -> (u64, u64) {
            let raw = u16::from_le_bytes([a, b]);
            if control & 0x80 != 0 {
                (u64::from(raw), base + u64::from(raw % 512))
            } else {
                stops[usize::from(raw) % stops.len()]
            }
        };
        let mut file = vec![0u8; 576];
        if control & 8 != 0 {
            let (position, next) = claim(*p0, *p1);
            file[..64].copy_from_slice(&slot(base, position, next, control & 16 != 0));
        }
        if control & 32 != 0 {
            let (position, next) = claim(*x0, *x1);
            file[512..].copy_from_slice(&slot(base, position, next, false));
        }
        std::fs::write(d.join("checkpoint"), file).unwrap();
    }
    let Ok(q) = Queue::open(d, opts()) else { return };
    let before = records_of(&q, &segment);
    let next = q.next_offset();
    if control & 64 != 0 {
        q.simulate_crash();
    } else {
        let appended = q.append(b"appended after recovery").expect("append after recovery");
        assert_eq!(appended, next);
        assert_eq!(q.read(next).unwrap().unwrap().payload(), b"appended after recovery");
        q.close().unwrap();
    }
    let q = Queue::open(d, opts()).expect("a queue that opened once opens again");
    assert!(q.next_offset() >= next, "offsets {}..{next} vanished at a reopen", q.next_offset());
    for (offset, payload) in before {
        let got = q.read(offset).map(|r| r.map(|r| r.payload().to_vec()));
        assert!(matches!(&got, Ok(Some(p)) if *p == payload), "record {offset} changed after a reopen: {got:?}");
    }
});
