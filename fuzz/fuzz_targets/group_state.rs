//! Fuzzes the decoding of consumer-group state through the public API: the input becomes a
//! group's snapshot (`groups/g/state`) and journal (`groups/g/journal`) in a queue of 40
//! records, either as raw bytes or as fields and entries with valid checksums (so that the
//! state machine behind them is reached), and the group is opened and used.
//!
//! Must hold: no panic; `Queue::group` succeeds or fails with an `Error`; once it succeeds
//! the group's floor and next delivery lie within the log, polling, acking and nacking work,
//! every delivery is a record of the log, and the group opens again after a close.
//!
//! In the structured mode, control bit 0x04 lets offsets take any value (else they stay
//! below 2^16, near the log). Huge offsets found a bug, now the regression test
//! `a_checksummed_snapshot_entry_far_past_the_log_is_dropped` in tests/bad_input.rs.
//!
//! Run with `cargo +nightly fuzz run group_state` from the repository root.

#![no_main]

mod common;

use std::time::Duration;

use common::{TempDir, file_header};
use libfuzzer_sys::fuzz_target;
use segq::{Options, Queue, SyncPolicy};

const RECORDS: u64 = 40;

/// Offsets in checksummed snapshots and journals stay below this unless the input says
/// otherwise (see the module comment).
const NEAR: u64 = 1 << 16;

fn opts() -> Options {
    Options::default().segment_bytes(4096).sync(SyncPolicy::Never)
}

/// The queue files every run starts from: 40 records, closed cleanly (made once).
fn template() -> &'static [(String, Vec<u8>)] {
    static FILES: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = TempDir::new();
        let q = Queue::open(&dir.0, opts()).unwrap();
        for i in 0..RECORDS {
            q.append(format!("record {i}").as_bytes()).unwrap();
        }
        q.close().unwrap();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir.0).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                files.push((entry.file_name().into_string().unwrap(), std::fs::read(entry.path()).unwrap()));
            }
        }
        files
    })
}

/// Reads little-endian numbers off the front of the input, zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u64 {
        u64::from(u16::from_le_bytes([self.u8(), self.u8()]))
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// A number that is usually small: near the log (0..64), else anything.
    fn offset(&mut self) -> u64 {
        let kind = self.u8();
        if kind & 0x80 == 0 { u64::from(kind & 0x3f) } else { self.u64() }
    }
}

/// A snapshot with valid checksums from fields of the input.
fn snapshot(inp: &mut Input, generation: u64, limit: u64) -> Vec<u8> {
    let mut b = file_header(b"SEGQGRP\0", generation);
    let lease_ms = if inp.u8() & 1 == 0 { inp.u16() } else { inp.u64() };
    b.extend_from_slice(&lease_ms.to_le_bytes());
    b.extend_from_slice(&u32::from(inp.u8() % 8).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for _ in 0..3 {
        let v = inp.offset() % limit;
        b.extend_from_slice(&v.to_le_bytes());
    }
    let count = usize::from(inp.u8() % 16);
    b.extend_from_slice(&(count as u64).to_le_bytes());
    for _ in 0..count {
        let offset = inp.offset() % limit;
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&u32::from(inp.u8() % 5).to_le_bytes());
        b.extend_from_slice(&u32::from(inp.u8()).to_le_bytes());
        b.extend_from_slice(&inp.u64().to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// A journal of entries with valid checksums for `generation`.
fn journal(inp: &mut Input, generation: u64, limit: u64) -> Vec<u8> {
    let mut b = file_header(b"SEGQJRN\0", 0);
    while !inp.0.is_empty() {
        let mut e = [0u8; 24];
        e[4] = inp.u8() % 9;
        let offset = inp.offset() % limit;
        e[8..16].copy_from_slice(&offset.to_le_bytes());
        let arg = if inp.u8() & 1 == 0 { inp.u16() } else { inp.u64() };
        e[16..24].copy_from_slice(&arg.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&generation.to_le_bytes());
        h.update(&e[4..]);
        e[..4].copy_from_slice(&h.finalize().to_le_bytes());
        b.extend_from_slice(&e);
    }
    b
}

fn use_group(q: &Queue, ops: &[u8]) {
    let Ok(g) = q.group("g") else { return };
    let next = q.next_offset();
    let st = g.stats();
    assert!(st.ack_floor <= next && st.next_delivery <= next, "group beyond the log: {st:?}");
    for &op in ops.iter().chain([0u8; 8].iter()).take(64) {
        match g.poll(Duration::ZERO) {
            Ok(Some(d)) => {
                assert!(d.offset() < next && d.attempt() >= 1);
                assert_eq!(d.payload(), format!("record {}", d.offset()).as_bytes());
                let _ = match op % 4 {
                    0 | 1 => g.ack(d.offset()),
                    2 => g.nack(d.offset(), Duration::ZERO),
                    _ => Ok(()),
                };
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    if let Ok(dead) = g.dead_letters() {
        for d in dead.iter().take(4) {
            let _ = g.redrive(d.offset());
        }
    }
    let _ = (g.ack_floor(), g.stats());
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let dir = TempDir::new();
    let d = &dir.0;
    for (name, bytes) in template() {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    let g = d.join("groups/g");
    std::fs::create_dir_all(&g).unwrap();
    let (state, journal_bytes) = if control & 1 == 0 {
        // Raw bytes: split where the second byte says.
        let at = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len());
        let (a, b) = rest.split_at(at);
        let mut j = if control & 2 == 0 { file_header(b"SEGQJRN\0", 0) } else { Vec::new() };
        j.extend_from_slice(b);
        (a.to_vec(), j)
    } else {
        let mut inp = Input(rest);
        let generation = u64::from(inp.u8() % 4);
        let limit = if control & 4 == 0 { NEAR } else { u64::MAX };
        let s = snapshot(&mut inp, generation, limit);
        (s, journal(&mut inp, if control & 2 == 0 { generation } else { generation + 1 }, limit))
    };
    std::fs::write(g.join("state"), state).unwrap();
    std::fs::write(g.join("journal"), journal_bytes).unwrap();

    let q = Queue::open(d, opts()).expect("the log is intact");
    let opened = q.group("g").is_ok();
    use_group(&q, data);
    q.close().unwrap();
    if opened {
        // Whatever the group accepted and rewrote must open again.
        let q = Queue::open(d, opts()).unwrap();
        let again = q.group("g");
        assert!(again.is_ok(), "the group opened once and not after a close: {again:?}");
        use_group(&q, data);
    }
});
