//! Helpers shared by the tests of the `segq` binary.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use segq::{GroupOptions, Options, Queue, SyncPolicy};

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The standard output parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `segq` with `args`, checking that it did not panic.
pub fn segq<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_segq")).args(args).output().expect("the binary runs");
    let run = Run {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "segq panicked:\n{}", run.stderr);
    run
}

/// Shorthand for a path argument.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// Serialises the tests of one binary: a child spawned while another test holds a queue
/// open inherits its lock until it execs, which could make that test's open fail.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options with small segments, so that a test queue has several.
pub fn small() -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(256).sync(SyncPolicy::Never)
}

/// The payload of record `i` of [`make_queue`] (records 0..100; 100..103 are a batch).
pub fn payload(i: u64) -> String {
    format!("record {i:04} {}", "x".repeat(100))
}

/// Records in the queue made by [`make_queue`].
pub const RECORDS: u64 = 103;

/// Makes a closed queue of 103 records over several segments, with two groups: `audit`,
/// untouched, and `billing` with offsets 0..3 acked, 3 nacked for an hour (waiting), 4
/// leased, and 5 dead after two attempts.
pub fn make_queue(dir: &Path) {
    let q = Queue::open(dir, small()).unwrap();
    for i in 0..100 {
        q.append(payload(i).as_bytes()).unwrap();
    }
    q.append_batch(&[b"batch a".as_slice(), b"batch b", b"batch c"]).unwrap();
    q.group("audit").unwrap();
    let g = q.group_with("billing", GroupOptions::default().max_attempts(2)).unwrap();
    let got: Vec<u64> = (0..6).map(|_| g.poll(Duration::ZERO).unwrap().unwrap().offset()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    for o in 0..3 {
        g.ack(o).unwrap();
    }
    g.nack(3, Duration::from_secs(3600)).unwrap();
    g.nack(5, Duration::ZERO).unwrap();
    let again = g.poll(Duration::ZERO).unwrap().unwrap();
    assert_eq!((again.offset(), again.attempt()), (5, 2));
    g.nack(5, Duration::ZERO).unwrap();
    assert_eq!(g.dead_letters().unwrap().len(), 1);
    q.close().unwrap();
}

/// The base offset in a segment file's name.
pub fn base_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// The segment files of a queue directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Positions of the records in a segment file's bytes (walking the length fields).
pub fn record_positions(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 32;
    while let Some(h) = bytes.get(pos..pos + 24) {
        if h.iter().all(|&b| b == 0) {
            break;
        }
        out.push(pos);
        pos += 24 + (u32::from_le_bytes(h[4..8].try_into().unwrap()) & 0x7fff_ffff) as usize;
    }
    out
}

/// Writes a valid checkpoint slot (`'A'` at byte 0, `'B'` at byte 512) into the queue's
/// checkpoint file, as FORMAT.md lays it out.
pub fn put_slot(dir: &Path, slot: char, base: u64, position: u64, next: u64, clean: bool) {
    let path = dir.join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = if slot == 'A' { 0 } else { common::CHECKPOINT_SLOT_B };
    common::put_checkpoint_slot(&mut bytes, at, base, position, next, clean);
    std::fs::write(&path, bytes).unwrap();
}

pub use common::copy_tree;
// Not every test of the binary builds frames by hand.
#[allow(unused_imports)]
pub use common::frame;

/// What the library's open makes of a copy of the queue in `dir`: `(next offset, whether
/// recovery found a clean close)`, or the error.
pub fn library_open(dir: &Path) -> Result<(u64, bool), segq::Error> {
    let copy = tempfile::tempdir().unwrap();
    copy_tree(dir, copy.path());
    let q = Queue::open(copy.path(), small())?;
    let found = (q.next_offset(), q.recovery().clean);
    q.close()?;
    Ok(found)
}

/// Writes a valid group snapshot with no entries (lease 30 s, 5 attempts), as FORMAT.md
/// lays it out, to `path`.
pub fn put_snapshot(path: &Path, generation: u64, floor: u64, next: u64) {
    let mut b = Vec::with_capacity(84);
    b.extend_from_slice(b"SEGQGRP\0");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&30_000u64.to_le_bytes());
    b.extend_from_slice(&5u32.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    for field in [floor, next, 0, 0] {
        b.extend_from_slice(&field.to_le_bytes()); // floor, next, lost, count
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(path, b).unwrap();
}
