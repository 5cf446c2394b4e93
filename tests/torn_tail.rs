//! Recovery after a crash under `SyncPolicy::Never` keeps exactly the records wholly before a
//! torn, zeroed or damaged unsynced tail, appends go on at the right offset, and records cut
//! off never come back after a later crash.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};

use common::{
    active_segment, append_all, assert_holds, copy_dir, flip_byte, record_spans, segment_base, segment_files, tiny,
    truncate_file, zero_from,
};
use segq::{Options, Queue, SyncPolicy};

/// A small payload with no zero byte, so that zeroing any of its bytes changes it.
fn small(i: u64) -> Vec<u8> {
    let len = 1 + (i % 13) as usize;
    (0..len).map(|j| ((i as usize * 31 + j * 7) % 255 + 1) as u8).collect()
}

fn opts() -> Options {
    tiny(4096)
}

/// A queue directory whose writer crashed (no sync, no clean shutdown) after appending
/// `count` small records across a few segments.
struct Crashed {
    dir: tempfile::TempDir,
    payloads: Vec<Vec<u8>>,
    /// The newest segment file's name, its base offset and its record frames.
    active_name: std::ffi::OsString,
    base: u64,
    spans: Vec<Range<usize>>,
}

impl Crashed {
    fn new(count: u64) -> Crashed {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..count).map(small).collect();
        append_all(&q, 0, &payloads);
        q.simulate_crash();
        let active = active_segment(dir.path());
        let spans = record_spans(&std::fs::read(&active).unwrap());
        let base = segment_base(&active);
        assert_eq!(base + spans.len() as u64, count);
        Crashed { active_name: active.file_name().unwrap().to_owned(), base, spans, payloads, dir }
    }

    /// A fresh copy of the crashed directory, and the path of its active segment.
    fn copy(&self) -> (tempfile::TempDir, PathBuf) {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(self.dir.path(), copy.path());
        let active = copy.path().join(&self.active_name);
        (copy, active)
    }

    /// How many records are wholly before byte `pos` of the active segment, counting from 0.
    fn kept_before(&self, pos: usize) -> usize {
        self.base as usize + self.spans.iter().filter(|s| s.end <= pos).count()
    }

    /// Byte positions inside the last two records of the active segment.
    fn last_two(&self) -> Range<usize> {
        let n = self.spans.len();
        assert!(n >= 2);
        self.spans[n - 2].start..self.spans[n - 1].end
    }
}

/// Opens `dir`, checks it holds exactly `expected`, appends one record at the next offset,
/// crashes again and checks the record is there and nothing past it came back.
fn reopen_and_append(dir: &Path, expected: &[Vec<u8>]) {
    let q = Queue::open(dir, opts()).unwrap();
    assert_holds(&q, expected);
    let extra = b"after the cut".to_vec();
    assert_eq!(q.append(&extra).unwrap(), expected.len() as u64);
    q.simulate_crash();

    let q = Queue::open(dir, opts()).unwrap();
    let mut with_extra = expected.to_vec();
    with_extra.push(extra);
    assert_holds(&q, &with_extra);
}

#[test]
fn an_undamaged_crash_keeps_every_record_across_segments() {
    let crashed = Crashed::new(300);
    assert!(segment_files(crashed.dir.path()).len() >= 2);
    assert!(crashed.base > 0);
    assert!(crashed.spans.len() >= 6, "{} records", crashed.spans.len());
    let q = Queue::open(crashed.dir.path(), opts()).unwrap();
    assert!(!q.recovery().clean);
    assert_holds(&q, &crashed.payloads);
}

#[test]
fn truncation_at_every_byte_of_the_last_two_records_keeps_the_whole_records_before() {
    let crashed = Crashed::new(300);
    let range = crashed.last_two();
    for len in range.start..=range.end {
        let (copy, active) = crashed.copy();
        truncate_file(&active, len);
        let kept = crashed.kept_before(len);
        reopen_and_append(copy.path(), &crashed.payloads[..kept]);
    }
}

#[test]
fn zeros_from_every_byte_of_the_last_two_records_keep_the_whole_records_before() {
    let crashed = Crashed::new(300);
    let original = std::fs::read(crashed.dir.path().join(&crashed.active_name)).unwrap();
    for from in crashed.last_two() {
        let (copy, active) = crashed.copy();
        zero_from(&active, from);
        // Zeros written over zeros change nothing: the damage starts at the first byte that
        // was not zero already.
        let changed = (from..original.len()).find(|&i| original[i] != 0).unwrap_or(original.len());
        let kept = crashed.kept_before(changed);
        assert!(kept < crashed.payloads.len());
        reopen_and_append(copy.path(), &crashed.payloads[..kept]);
    }
}

#[test]
fn a_flipped_byte_in_the_unsynced_tail_cuts_from_the_damaged_record_on() {
    let crashed = Crashed::new(300);
    let n = crashed.spans.len();
    for k in [0, n / 2, n - 1] {
        let span = crashed.spans[k].clone();
        for pos in span.clone() {
            let (copy, active) = crashed.copy();
            flip_byte(&active, pos);
            let q = Queue::open(copy.path(), opts()).unwrap();
            let kept = crashed.base as usize + k;
            assert_holds(&q, &crashed.payloads[..kept]);
            assert_eq!(q.recovery().truncated_at, Some(span.start as u64), "flip at {pos} in record {k}");
            assert!(q.recovery().damage.is_some(), "flip at {pos} in record {k} is not reported as damage");
            drop(q);
            reopen_and_append(copy.path(), &crashed.payloads[..kept]);
        }
    }
}

/// How the tail is damaged before the first reopen.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
}

/// What the second session appends after the first recovery cut the tail.
#[derive(Debug, Clone)]
struct Shape {
    /// Records written before the first crash, all in one segment.
    old: Vec<usize>,
    /// Index of the record damaged in the unsynced tail.
    damaged: usize,
    damage: Damage,
    /// Lengths of the records the second session appends, one batch each.
    new: Vec<Vec<usize>>,
    /// Sync policy of the second session.
    sync: SyncPolicy,
}

fn filled(len: usize, byte: u8) -> Vec<u8> {
    vec![byte; len]
}

/// Crash, damage, recover, append the shape's new records, crash again, recover: only the
/// old prefix and the new records are there.
fn double_crash(shape: &Shape) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    let old: Vec<Vec<u8>> = shape.old.iter().enumerate().map(|(i, &len)| filled(len, 0x10 + i as u8)).collect();
    append_all(&q, 0, &old);
    q.simulate_crash();
    assert_eq!(segment_files(dir.path()).len(), 1, "{shape:?}");

    let active = active_segment(dir.path());
    let spans = record_spans(&std::fs::read(&active).unwrap());
    let span = spans[shape.damaged].clone();
    match shape.damage {
        Damage::Flip => flip_byte(&active, span.end - 1),
        Damage::Truncate => truncate_file(&active, span.start + (span.len() / 2).max(1)),
    }

    let q = Queue::open(dir.path(), opts().sync(shape.sync)).unwrap();
    let mut expected = old[..shape.damaged].to_vec();
    assert_holds(&q, &expected);
    for (b, batch) in shape.new.iter().enumerate() {
        let payloads: Vec<Vec<u8>> =
            batch.iter().enumerate().map(|(i, &len)| filled(len, 0xa0 + (b * 8 + i) as u8)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let first = expected.len() as u64;
        assert_eq!(q.append_batch(&refs).unwrap(), first..first + batch.len() as u64);
        expected.extend(payloads);
    }
    q.simulate_crash();

    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_holds(&q, &expected);
    q.simulate_crash();
    // And once more: recovering a recovered queue changes nothing.
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_holds(&q, &expected);
}

#[test]
fn a_second_crash_never_brings_back_records_cut_by_the_first_recovery() {
    let old = vec![5, 9, 3, 12, 7, 7, 20, 1, 0, 30];
    let base = Shape { old: old.clone(), damaged: 3, damage: Damage::Flip, new: vec![], sync: SyncPolicy::Never };
    let shapes = [
        // Nothing appended between the crashes.
        base.clone(),
        // One record as long as the damaged one: the old record 4 would follow it exactly,
        // with the right offset, if its bytes were still there.
        Shape { new: vec![vec![old[3]]], ..base.clone() },
        // Two records matching the old ones' lengths, then old record 5 would line up.
        Shape { new: vec![vec![old[3]], vec![old[4]]], ..base.clone() },
        // The same as one batch.
        Shape { new: vec![vec![old[3], old[4]]], ..base.clone() },
        // Fewer and shorter records than were cut.
        Shape { new: vec![vec![1], vec![0], vec![2]], ..base.clone() },
        // The very first record damaged.
        Shape { damaged: 0, new: vec![vec![old[0]]], ..base.clone() },
        // Torn rather than flipped.
        Shape { damage: Damage::Truncate, new: vec![vec![old[3]]], ..base.clone() },
        Shape { damage: Damage::Truncate, damaged: 9, new: vec![vec![2]], ..base.clone() },
        // The second session syncs what it appends.
        Shape { new: vec![vec![old[3]], vec![old[4]]], sync: SyncPolicy::Always, ..base.clone() },
        Shape { sync: SyncPolicy::Always, ..base.clone() },
    ];
    for shape in &shapes {
        double_crash(shape);
    }
}

#[test]
fn a_crash_right_after_open_keeps_everything() {
    let crashed = Crashed::new(50);
    let q = Queue::open(crashed.dir.path(), opts()).unwrap();
    q.simulate_crash();
    let q = Queue::open(crashed.dir.path(), opts()).unwrap();
    assert_holds(&q, &crashed.payloads);
}

/// A record that fills a segment to within a header's length of its end leaves fewer than
/// 24 zero bytes after it: after a crash that is the end of the data, not damage, for every
/// gap from 1 to 23 bytes. (Recovery reported "file ends inside a structure" there.)
#[test]
fn a_segment_filled_to_within_a_header_of_its_end_recovers_without_damage() {
    for left in 1..24 {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts()).unwrap();
        // 32-byte file header, 24-byte record header, payload: `left` bytes to spare.
        let payload = vec![7u8; 4096 - 32 - 24 - left];
        q.append(&payload).unwrap();
        q.simulate_crash();
        let q = Queue::open(dir.path(), opts()).unwrap();
        let recovery = q.recovery();
        assert_eq!((recovery.truncated_at, recovery.damage.clone()), (None, None), "{left} bytes left");
        assert_eq!(q.next_offset(), 1);
        assert_eq!(q.read(0).unwrap().unwrap().payload(), payload);
        assert_eq!(q.append(b"next").unwrap(), 1);
        q.close().unwrap();
    }
}
