//! Reopening a queue of 128 MiB and of 1 GiB: after a clean `close`, and after a crash that
//! left an unsynced tail of 1 MiB (which recovery must scan). Also prints the resident
//! memory after opening and reading each queue, to show it does not grow with the log.
//!
//! `cargo bench --bench reopen`

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use segq::{Queue, SyncPolicy};

use common::{fill, open, payload, quick_group, settle, temp_dir};

const RECORD: usize = 1024;
const TAIL_BYTES: u64 = 1 << 20;

/// Resident anonymous and file-backed memory of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

/// Appends ~1 MiB that is never synced, then stops as a crash of the process would.
fn crash_with_tail(q: Queue, data: &[u8]) {
    fill(&q, data, TAIL_BYTES / RECORD as u64);
    q.simulate_crash();
}

fn report_memory(dir: &Path, label: &str) {
    let before = rss_kib();
    let q = open(dir, SyncPolicy::Never);
    let opened = rss_kib();
    let mut n = 0u64;
    for r in q.iter_from(0) {
        n += r.expect("read").payload().len() as u64;
    }
    let read = rss_kib();
    q.close().expect("close");
    eprintln!(
        "memory {label}: RssAnon {} -> {} (open) -> {} KiB (after reading {} MiB); RssFile {} -> {} -> {} KiB",
        before.0,
        opened.0,
        read.0,
        n >> 20,
        before.1,
        opened.1,
        read.1
    );
}

/// The time `iters` opens of `dir` take, each followed (untimed) by `after`, which must
/// leave the directory closed or crashed.
fn timed_opens(dir: &Path, iters: u64, after: impl Fn(Queue)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let q = open(dir, SyncPolicy::Never);
        total += start.elapsed();
        after(q);
    }
    total
}

fn reopen(c: &mut Criterion) {
    let data = payload(RECORD);
    let mut g = quick_group(c, "reopen", 10, 2);
    g.sampling_mode(SamplingMode::Flat);
    for (label, bytes) in [("128MiB", 128u64 << 20), ("1GiB", 1 << 30)] {
        let dir = temp_dir();
        let q = open(dir.path(), SyncPolicy::Never);
        fill(&q, &data, bytes / RECORD as u64);
        q.close().expect("close");
        drop(q);
        settle();
        report_memory(dir.path(), label);

        g.bench_function(BenchmarkId::new("after_close", label), |b| {
            b.iter_custom(|iters| {
                timed_opens(dir.path(), iters, |q| {
                    assert!(q.recovery().clean);
                    q.close().expect("close");
                })
            })
        });

        crash_with_tail(open(dir.path(), SyncPolicy::Never), &data);
        g.bench_function(BenchmarkId::new("after_crash_1MiB_tail", label), |b| {
            b.iter_custom(|iters| {
                timed_opens(dir.path(), iters, |q| {
                    let rec = q.recovery();
                    assert!(!rec.clean && rec.scanned_bytes >= TAIL_BYTES / 2, "{rec:?}");
                    crash_with_tail(q, &data);
                })
            })
        });
        // Leave the directory closed cleanly before it is deleted.
        open(dir.path(), SyncPolicy::Never).close().expect("close");
    }
    g.finish();
}

criterion_group!(benches, reopen);
criterion_main!(benches);
