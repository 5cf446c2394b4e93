//! Helpers shared by the criterion benches (each bench includes this with `mod common;`).
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use segq::{Options, Queue, SyncPolicy};
use tempfile::TempDir;

/// A fresh directory under the default temp dir (on this machine: the same ext4 as /work).
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("segq-bench-").tempdir().expect("create a temp dir")
}

/// A payload of `len` bytes that is not all one value.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Opens a queue in `dir` with the given policy and the default segment size.
pub fn open(dir: &Path, sync: SyncPolicy) -> Queue {
    Queue::open(dir, Options::default().sync(sync)).expect("open the queue")
}

/// A group with short, suite-friendly timings: a few seconds of measurement, few samples.
pub fn quick_group<'c>(c: &'c mut Criterion, name: &str, samples: usize, secs: u64) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(samples).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(secs));
    g
}

/// Appends `count` records of `payload` in batches of up to 512, whatever the policy.
pub fn fill(q: &Queue, payload: &[u8], count: u64) {
    let batch: Vec<&[u8]> = vec![payload; 512];
    let mut left = count;
    while left > 0 {
        let n = left.min(512) as usize;
        q.append_batch(&batch[..n]).expect("append a batch");
        left -= n as u64;
    }
}

/// Writes back everything dirty in the page cache (`sync(2)`), so that a durable bench does
/// not pay for the writeback of what an earlier bench (or the build) left behind. Untimed.
pub fn settle() {
    rustix::fs::sync();
}

/// A cheap, deterministic pseudo-random sequence (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
