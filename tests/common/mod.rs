//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use segq::{Options, Queue, SyncPolicy};

/// Options with tiny segments, so that tests cross many segment boundaries.
pub fn tiny(segment_bytes: u64) -> Options {
    Options::default().segment_bytes(segment_bytes).index_interval_bytes(256).sync(SyncPolicy::Never)
}

/// A payload whose bytes depend on `i`, of a length that varies with `i`.
pub fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// All payloads from offset 0, panicking on any error.
pub fn all_payloads(q: &Queue) -> Vec<Vec<u8>> {
    q.iter_from(0).map(|r| r.unwrap().payload().to_vec()).collect()
}

/// The segment files in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Bytes in the header that starts every segment and index file.
pub const FILE_HEADER_LEN: usize = 32;
/// Bytes in a record frame's header: `crc u32 | len u32 | offset u64 | timestamp u64`.
pub const RECORD_HEADER_LEN: usize = 24;

/// The byte ranges of the record frames in a segment file's bytes, walking the length fields
/// from the file header until zeros or the end. Checks nothing else: only for files the test
/// knows to be intact.
pub fn record_spans(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut pos = FILE_HEADER_LEN;
    while let Some(header) = bytes.get(pos..pos + RECORD_HEADER_LEN) {
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) & 0x7fff_ffff;
        let end = pos + RECORD_HEADER_LEN + len as usize;
        assert!(end <= bytes.len(), "frame at {pos} runs past the file");
        spans.push(pos..end);
        pos = end;
    }
    spans
}

/// The newest segment file in `dir`.
pub fn active_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("a queue has a segment")
}

/// The base offset named by a segment file's name.
pub fn segment_base(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Copies the regular files of `from` into `to` (created if missing).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Inverts every bit of the byte at `pos` of the file.
pub fn flip_byte(path: &Path, pos: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[pos] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Cuts the file to `len` bytes.
pub fn truncate_file(path: &Path, len: usize) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len as u64).unwrap();
}

/// Overwrites the file with zeros from `pos` to its end, keeping its length.
pub fn zero_from(path: &Path, pos: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[pos..].fill(0);
    std::fs::write(path, bytes).unwrap();
}

/// Appends `payloads[i]` for each `i`, checking that offsets follow on from `first`.
pub fn append_all(q: &Queue, first: u64, payloads: &[Vec<u8>]) {
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(q.append(p).unwrap(), first + i as u64);
    }
}

/// Checks that the queue holds exactly `expected` from offset 0, through `read` and
/// iteration, and that `next_offset` is right after them.
pub fn assert_holds(q: &Queue, expected: &[Vec<u8>]) {
    assert_eq!(q.first_offset(), 0);
    assert_eq!(q.next_offset(), expected.len() as u64, "next offset");
    for (i, want) in expected.iter().enumerate() {
        let rec = q.read(i as u64).unwrap().unwrap_or_else(|| panic!("record {i} is missing"));
        assert_eq!(rec.offset(), i as u64);
        assert_eq!(rec.payload(), want.as_slice(), "payload of record {i}");
    }
    assert!(q.read(expected.len() as u64).unwrap().is_none());
    let got = all_payloads(q);
    assert_eq!(got.len(), expected.len(), "records seen by iteration");
    assert!(got == expected, "iteration returns other payloads");
}

/// A command that runs one `#[ignore]`d test of the current test binary in a child process,
/// with `env` set. The test must do nothing unless its environment is set.
pub fn child_test(test_name: &str, env: &[(&str, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test_name, "--nocapture", "--ignored"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null());
    cmd
}

/// Serialises the tests of one binary that spawn child processes: a child forked while
/// another test holds a queue open briefly inherits its lock file until it execs, which
/// could make that test's next open fail with `Error::Locked`.
pub fn process_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
