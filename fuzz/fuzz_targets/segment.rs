//! Fuzzes the segment parser of the inspection layer (what `segq dump` and `segq verify`
//! read segments with): any bytes, read in any chunk size, judged as a sealed or an active
//! segment, must give records that lie inside the file or a damage report, never a panic
//! and never an allocation sized by a length field.
//!
//! Run with `cargo +nightly fuzz run segment` from the repository root.

#![no_main]

mod common;

use std::path::Path;

use common::{file_header, steered_records};
use libfuzzer_sys::fuzz_target;
use segq::inspect::{SegmentReader, judge_end};

/// A valid segment header for base 0, so that most inputs reach the record parser.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut out = file_header(b"SEGQLOG\0", 0);
    out.extend_from_slice(body);
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
    walk(with_header(&steered_records(body, 0, false)), chunk, active);
});
