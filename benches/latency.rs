//! How long single calls take, not how many fit in a second: the distribution of each call's
//! latency (p50 to the worst call) for appends under every sync policy, group commit,
//! random reads and consumption, each next to the same distribution of the plain-file
//! primitive it is built on. A service feels the tail: the append that rolls a segment,
//! the sync that waits for the disk.
//!
//! `cargo bench --bench latency` (about 15 s on a 2-core VM). Every workload runs three
//! times; each percentile printed is the median of the three runs' values, the worst call
//! the worst of all. Each call is timed with two `Instant::now()`, whose own cost is
//! printed first. Sizes can be changed with `LATENCY_FAST` (unsynced appends and consumed
//! records, default 2,000,000), `LATENCY_SYNCED` (synced appends per thread, default 2,000)
//! and `LATENCY_READS` (random reads over 1 M records, default 1,000,000).

mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use segq::{Queue, SyncPolicy};

use common::{Rng, fill, open, payload, temp_dir};

const RECORD: usize = 100;
const RUNS: usize = 3;
/// Records in the queue that random reads pick from (as in `benches/read.rs`).
const READ_SET: u64 = 1_000_000;
/// Appending threads for group commit.
const THREADS: usize = 16;

/// A size from the environment, at least 1 (a distribution needs a call).
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default).max(1)
}

/// Nanoseconds of each call of `op`, `n` calls.
fn each(n: u64, mut op: impl FnMut()) -> Vec<u64> {
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let start = Instant::now();
        op();
        times.push(start.elapsed().as_nanos() as u64);
    }
    times
}

/// The percentiles printed, as fractions.
const PERCENTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

/// One run's percentiles and worst call, in nanoseconds.
struct Summary {
    at: [u64; PERCENTILES.len()],
    max: u64,
    calls: usize,
}

fn summarize(mut times: Vec<u64>) -> Summary {
    times.sort_unstable();
    let rank = |p: f64| times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Summary { at: PERCENTILES.map(rank), max: *times.last().expect("at least one call"), calls: times.len() }
}

/// Runs `run` [`RUNS`] times and prints a row: the median of each percentile, the worst
/// call of all runs.
fn row(name: &str, mut run: impl FnMut() -> Vec<u64>) {
    let runs: Vec<Summary> = (0..RUNS).map(|_| summarize(run())).collect();
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mut line = format!("{name:<52}");
    for i in 0..PERCENTILES.len() {
        line += &format!(" {:>9}", show(median(runs.iter().map(|r| r.at[i]).collect())));
    }
    line += &format!(" {:>9} {:>10}", show(runs.iter().map(|r| r.max).max().unwrap_or(0)), runs[0].calls);
    println!("{line}");
}

fn show(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

/// Appends of one record at a time on a fresh queue (segments roll inside the run).
fn segq_appends(sync: SyncPolicy, n: u64) -> Vec<u64> {
    let dir = temp_dir();
    let q = open(dir.path(), sync);
    let data = payload(RECORD);
    let times = each(n, || {
        std::hint::black_box(q.append(&data).expect("append"));
    });
    q.simulate_crash();
    times
}

/// The baseline of unsynced appends: a length prefix and the record into a `BufWriter`.
fn bufwriter_appends(n: u64) -> Vec<u64> {
    let dir = temp_dir();
    let mut w = BufWriter::new(File::create(dir.path().join("log")).expect("create"));
    let data = payload(RECORD);
    let times = each(n, || {
        w.write_all(&(RECORD as u32).to_le_bytes()).expect("write");
        w.write_all(&data).expect("write");
    });
    w.flush().expect("flush");
    times
}

/// The baseline of durable appends: `write` + `fdatasync` of each record.
fn fdatasync_appends(n: u64) -> Vec<u64> {
    let dir = temp_dir();
    let mut file = File::create(dir.path().join("log")).expect("create");
    let mut frame = (RECORD as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&payload(RECORD));
    each(n, || {
        file.write_all(&frame).expect("write");
        file.sync_data().expect("fdatasync");
    })
}

/// `threads` appenders under `Always`, each call timed.
fn group_commit(threads: usize, per_thread: u64) -> Vec<u64> {
    let dir = temp_dir();
    let q = open(dir.path(), SyncPolicy::Always);
    let data = payload(RECORD);
    let start_line = std::sync::Barrier::new(threads);
    let times = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (q, data, start_line) = (&q, &data, &start_line);
                s.spawn(move || {
                    start_line.wait();
                    each(per_thread, || {
                        q.append(data).expect("append");
                    })
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("appender")).collect()
    });
    q.simulate_crash();
    times
}

/// A queue of [`READ_SET`] records of 100 B, written back and warm in the page cache.
fn read_set() -> (tempfile::TempDir, Queue) {
    let dir = temp_dir();
    let q = open(dir.path(), SyncPolicy::Never);
    fill(&q, &payload(RECORD), READ_SET);
    q.flush().expect("flush");
    (dir, q)
}

/// `poll` + `ack` of one record at a time, `n` records appended first (untimed).
fn poll_ack(sync: SyncPolicy, n: u64) -> Vec<u64> {
    let dir = temp_dir();
    let q = open(dir.path(), SyncPolicy::Never);
    fill(&q, &payload(RECORD), n);
    q.close().expect("close");
    let q = open(dir.path(), sync);
    let g = q.group("latency").expect("group");
    let times = each(n, || {
        let d = g.poll(Duration::ZERO).expect("poll").expect("a record is ready");
        g.ack(d.offset()).expect("ack");
    });
    q.simulate_crash();
    times
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags are not supported.
    let fast = env_or("LATENCY_FAST", 2_000_000);
    let synced = env_or("LATENCY_SYNCED", 2_000);
    let reads = env_or("LATENCY_READS", 1_000_000);
    let timer = summarize(each(1_000_000, || {}));
    println!(
        "Per-call latency, {RECORD} B records; median of {RUNS} runs per percentile, worst call of all runs. \
         Timer overhead (an empty call timed): p50 {}, p99 {}.\n",
        show(timer.at[0]),
        show(timer.at[2])
    );
    let mut header = format!("{:<52}", "operation");
    for p in PERCENTILES {
        header += &format!(" {:>9}", format!("p{}", p * 100.0));
    }
    header += &format!(" {:>9} {:>10}", "max", "calls/run");
    println!("{header}");

    row("append, Never (segq)", || segq_appends(SyncPolicy::Never, fast));
    row("  BufWriter write, no sync (baseline)", || bufwriter_appends(fast));
    row("append, Interval(10 ms) (segq)", || segq_appends(SyncPolicy::Interval(Duration::from_millis(10)), fast));
    row("append, Always, 1 thread (segq)", || segq_appends(SyncPolicy::Always, synced));
    row("  write + fdatasync per record (baseline)", || fdatasync_appends(synced));
    row(&format!("append, Always, {THREADS} threads (segq, group commit)"), || group_commit(THREADS, synced));
    {
        let (_dir, q) = read_set();
        let mut rng = Rng::new(42);
        let mut random_reads = || {
            each(reads, || {
                std::hint::black_box(q.read(rng.below(READ_SET)).expect("read").expect("in range").payload().len());
            })
        };
        // Warm as in `benches/read.rs` after criterion's warm-up: every page mapped again
        // (the flush's sync released the pages' entries).
        random_reads();
        row("read(offset), random over 1 M, warm (segq)", random_reads);
    }
    row("poll + ack, Never, 1 worker (segq)", || poll_ack(SyncPolicy::Never, (fast / 4).max(1)));
    row("poll + ack, Always, 1 worker (segq)", || poll_ack(SyncPolicy::Always, synced));
    println!(
        "\nBaselines: BufWriter hands bytes to the kernel every 8 KiB and never syncs; write + fdatasync \
         appends to a growing file, no checksum or index. segq's unsynced appends include segment rolls \
         (64 MiB, sealed in the background); Always appends return once their bytes are synced."
    );
}
