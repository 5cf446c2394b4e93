//! Fuzzes the record decoder through the public API: the input becomes a *sealed* segment
//! (and, optionally, its offset index) of a queue directory written to a temporary folder;
//! every offset the segment claims is read with `Queue::read` and by iteration.
//!
//! Must hold: no panic; a record returned is one that lies in the file as a whole frame
//! with a matching CRC, at the offset asked for; damage is an `Error`.
//!
//! Run with `cargo +nightly fuzz run record_decoder` from the repository root.

#![no_main]

mod common;

use common::{TempDir, file_header, steered_records, written};
use libfuzzer_sys::fuzz_target;
use segq::{Options, Queue, SyncPolicy};

fuzz_target!(|data: &[u8]| {
    // control | claimed record count | index length | index entries | segment body
    let [control, claimed, index_len, rest @ ..] = data else { return };
    let end = u64::from(*claimed % 100) + 1;
    let index_len = usize::from(*index_len).min(rest.len());
    let (index_body, body) = rest.split_at(index_len);
    let mut segment = file_header(b"SEGQLOG\0", 0);
    segment.extend_from_slice(&if control & 1 == 0 { steered_records(body, 0, true) } else { body.to_vec() });

    let dir = TempDir::new();
    let d = &dir.0;
    std::fs::write(d.join("00000000000000000000.log"), &segment).unwrap();
    if control & 2 != 0 {
        let mut index = file_header(b"SEGQIDX\0", 0);
        index.extend_from_slice(index_body);
        std::fs::write(d.join("00000000000000000000.index"), index).unwrap();
    }
    // The newest segment starts where the sealed one is said to end: empty, preallocated.
    let mut newest = file_header(b"SEGQLOG\0", end);
    newest.resize(4096, 0);
    std::fs::write(d.join(format!("{end:020}.log")), newest).unwrap();

    let opts = Options::default()
        .segment_bytes(4096)
        .index_interval_bytes(1 + u32::from(control >> 2))
        .sync(SyncPolicy::Never);
    let q = Queue::open(d, opts).expect("an intact newest segment opens");
    assert_eq!((q.first_offset(), q.next_offset()), (0, end));
    for o in 0..end {
        if let Ok(Some(rec)) = q.read(o) {
            assert_eq!(rec.offset(), o);
            assert!(written(&segment, o, rec.timestamp_ms(), rec.payload()), "read {o} returned bytes never written");
        }
    }
    let mut last = None;
    for rec in q.iter_from(0).take(200).flatten() {
        assert!(last.is_none_or(|l| rec.offset() > l), "iteration went back");
        assert!(
            written(&segment, rec.offset(), rec.timestamp_ms(), rec.payload()),
            "iteration returned bytes never written"
        );
        last = Some(rec.offset());
    }
});
