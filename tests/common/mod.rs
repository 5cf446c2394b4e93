//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use segq::{Options, Queue, SyncPolicy};

/// Options with tiny segments, so that tests cross many segment boundaries.
pub fn tiny(segment_bytes: u64) -> Options {
    Options::default()
        .segment_bytes(segment_bytes)
        .index_interval_bytes(256)
        .sync(SyncPolicy::Never)
}

/// A payload whose bytes depend on `i`, of a length that varies with `i`.
pub fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// All payloads from offset 0, panicking on any error.
pub fn all_payloads(q: &Queue) -> Vec<Vec<u8>> {
    q.iter_from(0)
        .map(|r| r.unwrap().payload().to_vec())
        .collect()
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
