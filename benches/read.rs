//! Reads over 1 M records of 100 B: a sequential `iter_from(0)` (owned records, and lent
//! ones through `Iter::next_ref`) and random `read(offset)`, warm (the queue is built once, outside the measurement, and stays in the page cache).
//!
//! `cargo bench --bench read`

mod common;

use std::hint::black_box;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use segq::SyncPolicy;

use common::{Rng, fill, open, payload, quick_group, temp_dir};

const RECORDS: u64 = 1_000_000;

fn read(c: &mut Criterion) {
    let dir = temp_dir();
    let q = open(dir.path(), SyncPolicy::Never);
    fill(&q, &payload(100), RECORDS);
    q.flush().expect("flush");

    let mut g = quick_group(c, "read/1M_x_100B", 10, 3);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(RECORDS));
    g.bench_function("iter_from_0", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let mut count = 0u64;
            for record in q.iter_from(0) {
                bytes += record.expect("read").payload().len();
                count += 1;
            }
            assert_eq!(count, RECORDS);
            black_box(bytes)
        })
    });

    g.bench_function("iter_from_0_next_ref", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let mut count = 0u64;
            let mut it = q.iter_from(0);
            while let Some(record) = it.next_ref() {
                bytes += record.expect("read").payload().len();
                count += 1;
            }
            assert_eq!(count, RECORDS);
            black_box(bytes)
        })
    });

    g.throughput(Throughput::Elements(1));
    let mut rng = Rng::new(42);
    g.bench_function("read_random", |b| {
        b.iter(|| {
            let record = q.read(rng.below(RECORDS)).expect("read").expect("in range");
            black_box(record.payload().len())
        })
    });
    g.finish();
    drop(q);
}

criterion_group!(benches, read);
criterion_main!(benches);
