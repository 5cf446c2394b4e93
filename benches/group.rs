//! Consumer groups: `poll` + `ack` of 100 B records by one worker and by 4 workers sharing
//! a group, under `Never` and `Always`; then the same with `poll_batch` + `ack_batch` of 64.
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

/// How a worker consumes: polls and acks until nothing is left; returns how many it took.
type Drain = fn(&Group) -> u64;

/// Records a worker takes and acks at once in the batch benches.
const BATCH: usize = 64;

/// [`drain`] with `poll_batch` + `ack_batch` of up to [`BATCH`].
fn drain_batches(g: &Group) -> u64 {
    let mut n = 0;
    let mut offsets = Vec::with_capacity(BATCH);
    loop {
        let batch = g.poll_batch(BATCH, Duration::ZERO).expect("poll_batch");
        if batch.is_empty() {
            return n;
        }
        offsets.clear();
        for d in &batch {
            black_box(d.payload().len());
            offsets.push(d.offset());
        }
        g.ack_batch(&offsets).expect("ack_batch");
        n += batch.len() as u64;
    }
}

/// Time for `workers` threads to consume and ack `iters` records appended beforehand
/// (untimed) to a fresh queue, each with `drain`.
fn consume(sync: SyncPolicy, workers: usize, iters: u64, drain: Drain) -> Duration {
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
    let ways: [(&str, Drain); 2] = [("group_poll_ack", drain), ("group_poll_ack_batch64", drain_batches)];
    for ((bench, drain), (name, sync)) in ways
        .into_iter()
        .flat_map(|way| [("never", SyncPolicy::Never), ("always", SyncPolicy::Always)].map(|policy| (way, policy)))
    {
        let mut g = quick_group(c, &format!("{bench}/{name}"), 10, 3);
        if sync == SyncPolicy::Always {
            g.sampling_mode(SamplingMode::Flat);
        }
        g.throughput(Throughput::Elements(1));
        for workers in [1usize, 4] {
            g.bench_with_input(BenchmarkId::new("workers", workers), &workers, |b, &workers| {
                b.iter_custom(|iters| consume(sync, workers, iters, drain))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, poll_ack);
criterion_main!(benches);
