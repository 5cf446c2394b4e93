//! Consumer groups: `poll` + `ack` of 100 B records by one worker and by 4 workers sharing
//! a group, under `Never` and `Always`.
//!
//! `cargo bench --bench group`

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use segq::{Group, SyncPolicy};

use common::{fill, open, payload, quick_group, settle, temp_dir};

/// Polls and acks until nothing is left to deliver; returns how many records it took.
fn drain(g: &Group) -> u64 {
    let mut n = 0;
    while let Some(d) = g.poll(Duration::ZERO).expect("poll") {
        black_box(d.payload().len());
        g.ack(d.offset()).expect("ack");
        n += 1;
    }
    n
}

/// Time for `workers` threads to consume and ack `iters` records appended beforehand
/// (untimed) to a fresh queue.
fn consume(sync: SyncPolicy, workers: usize, iters: u64) -> Duration {
    let dir = temp_dir();
    let q = open(dir.path(), sync);
    fill(&q, &payload(100), iters);
    let g = q.group("bench").expect("group");
    // The fill's write-back (segments sealed in the background, and the rest) is not part
    // of consuming: finish it before the clock starts.
    q.flush().expect("flush");
    settle();
    let start_line = Barrier::new(workers + 1);
    let (elapsed, taken) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (g, start_line) = (g.clone(), &start_line);
                s.spawn(move || {
                    start_line.wait();
                    drain(&g)
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let taken: u64 = handles.into_iter().map(|h| h.join().expect("worker")).sum();
        (start.elapsed(), taken)
    });
    assert_eq!(taken, iters);
    q.simulate_crash();
    elapsed
}

fn poll_ack(c: &mut Criterion) {
    for (name, sync) in [("never", SyncPolicy::Never), ("always", SyncPolicy::Always)] {
        let mut g = quick_group(c, &format!("group_poll_ack/{name}"), 10, 3);
        if sync == SyncPolicy::Always {
            g.sampling_mode(SamplingMode::Flat);
        }
        g.throughput(Throughput::Elements(1));
        for workers in [1usize, 4] {
            g.bench_with_input(BenchmarkId::new("workers", workers), &workers, |b, &workers| {
                b.iter_custom(|iters| consume(sync, workers, iters))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, poll_ack);
criterion_main!(benches);
