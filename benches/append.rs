//! Append throughput: one record per call under each sync policy and payload size, group
//! commit with several appending threads, and batches.
//!
//! `cargo bench --bench append`

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use segq::{Options, Queue, SyncPolicy};

use common::{open, payload, quick_group, settle, temp_dir};

/// Bytes appended to one queue before the bench starts over with a fresh one (untimed), so
/// a long run never fills the disk. Segments roll inside a chunk, so rolling is measured.
const CHUNK_BYTES: u64 = 256 << 20;

fn policies() -> [(&'static str, SyncPolicy); 3] {
    [
        ("never", SyncPolicy::Never),
        ("interval_10ms", SyncPolicy::Interval(Duration::from_millis(10))),
        ("always", SyncPolicy::Always),
    ]
}

/// Time to append `iters` records of `data` one call at a time.
fn append_one_by_one(sync: SyncPolicy, data: &[u8], iters: u64) -> Duration {
    let per_chunk = (CHUNK_BYTES / (data.len() as u64 + 24)).max(1);
    timed_in_chunks(sync, iters, per_chunk, |q| {
        black_box(q.append(data).expect("append"));
    })
}

/// Times `iters` calls of `op`, on fresh queues of `per_chunk` calls each (so that no queue
/// outgrows `CHUNK_BYTES`); each queue is dropped with `simulate_crash` afterwards (a
/// final sync would only cost untimed seconds) and its directory deleted.
fn timed_in_chunks(sync: SyncPolicy, iters: u64, per_chunk: u64, op: impl Fn(&Queue)) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_chunk);
        let dir = temp_dir();
        if sync != SyncPolicy::Never {
            settle();
        }
        let q = open(dir.path(), sync);
        let start = Instant::now();
        for _ in 0..n {
            op(&q);
        }
        total += start.elapsed();
        q.simulate_crash();
        left -= n;
    }
    total
}

fn append(c: &mut Criterion) {
    for (name, sync) in policies() {
        let always = sync == SyncPolicy::Always;
        let mut g = quick_group(c, &format!("append/{name}"), 10, 3);
        if always {
            g.sampling_mode(SamplingMode::Flat);
        }
        g.throughput(Throughput::Elements(1));
        for size in [100usize, 1024, 4096] {
            let data = payload(size);
            g.bench_with_input(BenchmarkId::from_parameter(format!("{size}B")), &data, |b, data| {
                b.iter_custom(|iters| append_one_by_one(sync, data, iters))
            });
        }
        g.finish();
    }
}

/// `Always`, 100 B records, `threads` appenders sharing the queue: group commit; then the
/// same with `Options::busy_wait_for_sync`.
fn append_threads(c: &mut Criterion) {
    let data = payload(100);
    for (name, busy_wait, counts) in [("always", false, &[1u64, 4, 16][..]), ("always_busy_wait", true, &[4, 16])] {
        let mut g = quick_group(c, &format!("append_threads/{name}/100B"), 10, 3);
        g.sampling_mode(SamplingMode::Flat).throughput(Throughput::Elements(1));
        for &threads in counts {
            append_threads_one(&mut g, &data, threads, busy_wait);
        }
        g.finish();
    }
}

fn append_threads_one(g: &mut BenchmarkGroup<'_, WallTime>, data: &[u8], threads: u64, busy_wait: bool) {
    g.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &threads| {
        b.iter_custom(|iters| {
            let dir = temp_dir();
            settle();
            let opts = Options::default().sync(SyncPolicy::Always).busy_wait_for_sync(busy_wait);
            let q = Queue::open(dir.path(), opts).expect("open the queue");
            let start_line = Barrier::new(threads as usize + 1);
            let elapsed = std::thread::scope(|s| {
                for t in 0..threads {
                    let count = iters / threads + u64::from(t < iters % threads);
                    let (q, start_line) = (&q, &start_line);
                    s.spawn(move || {
                        start_line.wait();
                        for _ in 0..count {
                            black_box(q.append(data).expect("append"));
                        }
                    });
                }
                start_line.wait();
                let start = Instant::now();
                // Leaving the scope joins every appender.
                start
            })
            .elapsed();
            q.simulate_crash();
            elapsed
        })
    });
}

/// `append_batch` of 64 and 512 records of 100 B, under `Always` (and `Never` for reference).
fn append_batch(c: &mut Criterion) {
    let data = payload(100);
    for (name, sync) in [("always", SyncPolicy::Always), ("never", SyncPolicy::Never)] {
        let mut g = quick_group(c, &format!("append_batch/{name}/100B"), 10, 3);
        if sync == SyncPolicy::Always {
            g.sampling_mode(SamplingMode::Flat);
        }
        for batch in [64usize, 512] {
            let payloads: Vec<&[u8]> = vec![&data; batch];
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(BenchmarkId::from_parameter(batch), &payloads, |b, payloads| {
                b.iter_custom(|iters| {
                    let per_chunk = (CHUNK_BYTES / (124 * batch as u64)).max(1);
                    timed_in_chunks(sync, iters, per_chunk, |q| {
                        black_box(q.append_batch(payloads).expect("append a batch"));
                    })
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, append, append_threads, append_batch);
criterion_main!(benches);
