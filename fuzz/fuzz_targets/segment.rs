//! Fuzzes the segment parser of the inspection layer (what `segq dump` and `segq verify`
//! read segments with): any bytes, read in any chunk size, judged as a sealed or an active
//! segment, must give records that lie inside the file or a damage report, never a panic
//! and never an allocation sized by a length field.
//!
//! Run with `cargo +nightly fuzz run segment` from the repository root.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use segq::inspect::{SegmentReader, judge_end};

/// A valid segment header for base 0, so that most inputs reach the record parser.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut h = Vec::from(*b"SEGQLOG\0");
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(body);
    h
}

/// Well-formed records (so that checksums pass and the batch and offset logic is reached)
/// steered by `body`: each control byte gives a payload length, the batch flag, a skipped
/// offset, or raw bytes in place of a record.
fn records(body: &[u8]) -> Vec<u8> {
    let mut out = with_header(&[]);
    let mut offset = 0u64;
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        let len = usize::from(c & 0x1f).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        if c & 0xc0 == 0xc0 {
            out.extend_from_slice(payload); // garbage where a record should be
            continue;
        }
        let mut frame = Vec::with_capacity(24 + len);
        let len_flags = len as u32 | if c & 0x20 != 0 { 0x8000_0000 } else { 0 };
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&len_flags.to_le_bytes());
        frame.extend_from_slice(&offset.to_le_bytes());
        frame.extend_from_slice(&u64::from(c).to_le_bytes());
        frame.extend_from_slice(payload);
        let crc = crc32fast::hash(&frame[4..]);
        frame[..4].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&frame);
        offset += if c & 0xc0 == 0x40 { 2 } else { 1 };
    }
    out
}

fn walk(bytes: Vec<u8>, chunk: usize, active: bool) {
    let len = bytes.len() as u64;
    let Ok(reader) = SegmentReader::from_bytes(Path::new("00000000000000000000.log"), bytes) else { return };
    let mut reader = reader.with_chunk_size(chunk);
    let mut expected = 32;
    while let Some(rec) = reader.next_record().expect("no I/O in memory") {
        assert_eq!(rec.position, expected);
        assert!(rec.end() <= len);
        expected = rec.end();
    }
    let end = reader.end().expect("the walk ended").clone();
    assert!(end.valid_end <= end.position && end.position <= len);
    judge_end(&mut reader, active, 32).expect("no I/O in memory");
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size and whether the segment is the active one.
    let Some((&control, body)) = data.split_first() else { return };
    let chunk = 1 + usize::from(control & 0x7f) * 3;
    let active = control & 0x80 != 0;
    walk(body.to_vec(), chunk, active);
    walk(with_header(body), chunk, active);
    walk(records(body), chunk, active);
});
