//! segq side by side with the Rust queue crates a user would pick instead (yaque,
//! queue-file, commitlog) and a plain-file baseline, on the same workloads, in one process.
//! Prints one table: each figure is the median of 3 runs, with its ratio to the baseline.
//!
//! `cargo bench --bench peers` (runs in about a minute and a half on a 2-core VM).
//! Sizes can be changed with the environment variables `PEERS_SMALL` (100 B records, default
//! 1,000,000), `PEERS_LARGE` (4 KiB records, default 50,000), `PEERS_DURABLE` (synced
//! appends, default 1,000), `PEERS_CONSUME` (default 200,000) and `PEERS_REOPEN_MIB`
//! (default 1024).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use segq::{Options, Queue, SyncPolicy};

const SMALL: usize = 100;
const LARGE: usize = 4096;
const RUNS: usize = 3;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("segq-peers-").tempdir().expect("create a temp dir")
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

/// What one workload measured for one engine.
#[derive(Debug, Clone, Copy)]
enum Figure {
    /// Records per second.
    Rate(f64),
    /// A duration (for reopen).
    Time(Duration),
    /// Not measured, and why.
    None(&'static str),
}

/// Workloads, in table order.
const COLUMNS: [&str; 6] = [
    "100 B appends/s (no sync per record)",
    "4 KiB appends/s",
    "durable appends/s (sync each)",
    "sequential read rec/s",
    "consume + ack rec/s",
    "reopen",
];

#[derive(Debug, Clone, Copy)]
struct Sizes {
    small: u64,
    large: u64,
    durable: u64,
    consume: u64,
    reopen_bytes: u64,
}

/// The timings of one run of the 100 B workloads on one data set: append, then read it
/// all, then consume and ack a prefix of it.
struct SmallRun {
    append: Duration,
    read: Option<Duration>,
    consume: Option<Duration>,
}

trait Engine {
    fn name(&self) -> &'static str;
    /// What its flush or sync really guarantees, for the output.
    fn guarantee(&self) -> &'static str;
    fn small_run(&self, dir: &Path, s: &Sizes) -> SmallRun;
    /// Appends `n` records of 4 KiB, no sync per record.
    fn large_run(&self, dir: &Path, n: u64) -> Duration;
    /// Appends `n` records of 100 B, each durable before the next; `Err` says why not.
    fn durable_run(&self, dir: &Path, n: u64) -> Result<Duration, &'static str>;
    /// Fills `dir` with about `bytes` of 4 KiB records and closes it.
    fn build(&self, dir: &Path, bytes: u64);
    /// Opens what `build` left; `Err` says why it is not measured.
    fn reopen(&self, dir: &Path) -> Result<Duration, &'static str>;
}

// ---------------------------------------------------------------------------------------
// plain file: BufWriter + u32 length prefix; write + fdatasync per record when durable

struct Plain;

impl Engine for Plain {
    fn name(&self) -> &'static str {
        "plain file + BufWriter (baseline)"
    }
    fn guarantee(&self) -> &'static str {
        "BufWriter::flush only hands bytes to the kernel (a process crash keeps them); the durable column \
         does one write(2) + fdatasync per record on a growing file; no checksum, no index, no consumer"
    }
    fn small_run(&self, dir: &Path, s: &Sizes) -> SmallRun {
        let path = dir.join("log");
        let data = payload(SMALL);
        let append = append_plain(&path, &data, s.small);
        let (read, count) = timed(|| {
            let mut r = BufReader::new(File::open(&path).expect("open"));
            let mut len = [0u8; 4];
            let mut buf = Vec::with_capacity(SMALL);
            let mut count = 0u64;
            while r.read_exact(&mut len).is_ok() {
                buf.resize(u32::from_le_bytes(len) as usize, 0);
                r.read_exact(&mut buf).expect("read");
                std::hint::black_box(&buf);
                count += 1;
            }
            count
        });
        assert_eq!(count, s.small);
        SmallRun { append, read: Some(read), consume: None }
    }
    fn large_run(&self, dir: &Path, n: u64) -> Duration {
        append_plain(&dir.join("log"), &payload(LARGE), n)
    }
    fn durable_run(&self, dir: &Path, n: u64) -> Result<Duration, &'static str> {
        let mut file = File::create(dir.join("log")).expect("create");
        let data = payload(SMALL);
        let mut frame = (data.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&data);
        Ok(timed(|| {
            for _ in 0..n {
                file.write_all(&frame).expect("write");
                file.sync_data().expect("fdatasync");
            }
        })
        .0)
    }
    fn build(&self, _: &Path, _: u64) {}
    fn reopen(&self, _: &Path) -> Result<Duration, &'static str> {
        Err("—")
    }
}

fn append_plain(path: &Path, data: &[u8], n: u64) -> Duration {
    let file = File::create(path).expect("create");
    timed(|| {
        let mut w = BufWriter::new(file);
        for _ in 0..n {
            w.write_all(&(data.len() as u32).to_le_bytes()).expect("write");
            w.write_all(data).expect("write");
        }
        w.flush().expect("flush");
    })
    .0
}

// ---------------------------------------------------------------------------------------
// segq

struct Segq;

fn segq_open(dir: &Path, sync: SyncPolicy) -> Queue {
    Queue::open(dir, Options::default().sync(sync)).expect("open segq")
}

impl Engine for Segq {
    fn name(&self) -> &'static str {
        "segq"
    }
    fn guarantee(&self) -> &'static str {
        "Never: append stores into a mapped, preallocated segment (a process crash keeps it), flush()/close() \
         msync the data and the checkpoint; Always: append returns after msync(MS_SYNC) of its bytes, with \
         group commit; CRC-32 per record; group poll/ack journaled (synced only under Always)"
    }
    fn small_run(&self, dir: &Path, s: &Sizes) -> SmallRun {
        let q = segq_open(dir, SyncPolicy::Never);
        let data = payload(SMALL);
        let (append, ()) = timed(|| {
            for _ in 0..s.small {
                q.append(&data).expect("append");
            }
        });
        // A rolled segment is sealed in the background; its write-back would run during the
        // reads below. The other engines' data is written back by the kernel after the run,
        // so finish segq's first (untimed).
        q.flush().expect("flush");
        let (read, count) = timed(|| {
            let mut count = 0u64;
            for r in q.iter_from(0) {
                std::hint::black_box(r.expect("read").payload());
                count += 1;
            }
            count
        });
        assert_eq!(count, s.small);
        let g = q.group("peers").expect("group");
        let (consume, ()) = timed(|| {
            for _ in 0..s.consume {
                let d = g.poll(Duration::ZERO).expect("poll").expect("a record");
                std::hint::black_box(d.payload());
                g.ack(d.offset()).expect("ack");
            }
        });
        q.simulate_crash();
        SmallRun { append, read: Some(read), consume: Some(consume) }
    }
    fn large_run(&self, dir: &Path, n: u64) -> Duration {
        let q = segq_open(dir, SyncPolicy::Never);
        let data = payload(LARGE);
        let (t, ()) = timed(|| {
            for _ in 0..n {
                q.append(&data).expect("append");
            }
        });
        q.simulate_crash();
        t
    }
    fn durable_run(&self, dir: &Path, n: u64) -> Result<Duration, &'static str> {
        let q = segq_open(dir, SyncPolicy::Always);
        let data = payload(SMALL);
        let (t, ()) = timed(|| {
            for _ in 0..n {
                q.append(&data).expect("append");
            }
        });
        q.close().expect("close");
        Ok(t)
    }
    fn build(&self, dir: &Path, bytes: u64) {
        let q = segq_open(dir, SyncPolicy::Never);
        let data = payload(LARGE);
        let batch: Vec<&[u8]> = vec![&data; 64];
        for _ in 0..bytes / (LARGE as u64 * 64) {
            q.append_batch(&batch).expect("append");
        }
        q.close().expect("close");
    }
    fn reopen(&self, dir: &Path) -> Result<Duration, &'static str> {
        let (t, q) = timed(|| segq_open(dir, SyncPolicy::Never));
        assert!(q.recovery().clean);
        q.close().expect("close");
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------
// yaque

struct Yaque;

impl Engine for Yaque {
    fn name(&self) -> &'static str {
        "yaque 0.6"
    }
    fn guarantee(&self) -> &'static str {
        "never fsyncs: try_send flushes its BufWriter (one write(2) per record) and that is all; no payload \
         checksum; the receiver saves its position every 250 items, so a crash redelivers up to that many"
    }
    fn small_run(&self, dir: &Path, s: &Sizes) -> SmallRun {
        let data = payload(SMALL);
        let mut tx = yaque::Sender::open(dir).expect("open yaque sender");
        let (append, ()) = timed(|| {
            for _ in 0..s.small {
                tx.try_send(&data).map_err(|e| e.unwrap_io()).expect("send");
            }
        });
        let (read, count) = timed(|| {
            let mut count = 0u64;
            for item in yaque::QueueIter::open(dir).expect("open yaque iter").take(s.small as usize) {
                std::hint::black_box(item.expect("read"));
                count += 1;
            }
            count
        });
        assert_eq!(count, s.small);
        let mut rx = yaque::Receiver::open(dir).expect("open yaque receiver");
        let (consume, ()) = timed(|| {
            for _ in 0..s.consume {
                let guard = rx.try_recv().expect("a record");
                std::hint::black_box(&*guard);
                guard.commit().expect("commit");
            }
        });
        SmallRun { append, read: Some(read), consume: Some(consume) }
    }
    fn large_run(&self, dir: &Path, n: u64) -> Duration {
        let data = payload(LARGE);
        let mut tx = yaque::Sender::open(dir).expect("open yaque sender");
        timed(|| {
            for _ in 0..n {
                tx.try_send(&data).map_err(|e| e.unwrap_io()).expect("send");
            }
        })
        .0
    }
    fn durable_run(&self, _: &Path, _: u64) -> Result<Duration, &'static str> {
        Err("never fsyncs")
    }
    fn build(&self, dir: &Path, bytes: u64) {
        let data = payload(LARGE);
        let mut tx = yaque::Sender::open(dir).expect("open yaque sender");
        for _ in 0..bytes / (LARGE as u64 * 64) {
            tx.try_send_batch(std::iter::repeat_n(&data, 64)).map_err(|e| e.unwrap_io()).expect("send");
        }
    }
    fn reopen(&self, dir: &Path) -> Result<Duration, &'static str> {
        let (t, (tx, rx)) = timed(|| yaque::channel(dir).expect("open yaque"));
        drop((tx, rx));
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------
// queue-file

struct QueueFile;

fn qf_path(dir: &Path) -> PathBuf {
    dir.join("queue")
}

fn qf_open(dir: &Path, sync: bool) -> queue_file::QueueFile {
    let mut q = queue_file::QueueFile::open(qf_path(dir)).expect("open queue-file");
    q.set_sync_writes(sync);
    q
}

impl Engine for QueueFile {
    fn name(&self) -> &'static str {
        "queue-file 2.0"
    }
    fn guarantee(&self) -> &'static str {
        "fsync per add/remove by default (set_sync_writes(true), the durable column); the other columns turn \
         it off; CRC on headers and elements; one FIFO head, no consumer groups"
    }
    fn small_run(&self, dir: &Path, s: &Sizes) -> SmallRun {
        let data = payload(SMALL);
        let mut q = qf_open(dir, false);
        let (append, ()) = timed(|| {
            for _ in 0..s.small {
                q.add(&data).expect("add");
            }
        });
        let (read, count) = timed(|| {
            let mut it = q.iter();
            let mut count = 0u64;
            while let Some(item) = it.borrowed_next() {
                std::hint::black_box(item);
                count += 1;
            }
            count
        });
        assert_eq!(count, s.small);
        let mut buf = Vec::new();
        let (consume, ()) = timed(|| {
            for _ in 0..s.consume {
                assert!(q.peek_into(&mut buf).expect("peek"));
                std::hint::black_box(&buf);
                q.remove().expect("remove");
            }
        });
        SmallRun { append, read: Some(read), consume: Some(consume) }
    }
    fn large_run(&self, dir: &Path, n: u64) -> Duration {
        let data = payload(LARGE);
        let mut q = qf_open(dir, false);
        timed(|| {
            for _ in 0..n {
                q.add(&data).expect("add");
            }
        })
        .0
    }
    fn durable_run(&self, dir: &Path, n: u64) -> Result<Duration, &'static str> {
        let data = payload(SMALL);
        let mut q = qf_open(dir, true);
        Ok(timed(|| {
            for _ in 0..n {
                q.add(&data).expect("add");
            }
        })
        .0)
    }
    fn build(&self, dir: &Path, bytes: u64) {
        let data = payload(LARGE);
        let mut q = qf_open(dir, false);
        for _ in 0..bytes / (LARGE as u64 * 64) {
            q.add_n(std::iter::repeat_n(&data, 64)).expect("add");
        }
        q.sync_all().expect("sync");
    }
    fn reopen(&self, dir: &Path) -> Result<Duration, &'static str> {
        let (t, q) = timed(|| queue_file::QueueFile::open(qf_path(dir)).expect("open queue-file"));
        drop(q);
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------
// commitlog

struct Commitlog;

fn cl_open(dir: &Path) -> commitlog::CommitLog {
    commitlog::CommitLog::new(commitlog::LogOptions::new(dir)).expect("open commitlog")
}

impl Engine for Commitlog {
    fn name(&self) -> &'static str {
        "commitlog 0.2"
    }
    fn guarantee(&self) -> &'static str {
        "flush() msyncs only the index and calls File::flush on the log, a no-op: data is never synced; \
         CRC-32C per message; no consumer model"
    }
    fn small_run(&self, dir: &Path, s: &Sizes) -> SmallRun {
        use commitlog::message::MessageSet;
        let data = payload(SMALL);
        let mut log = cl_open(dir);
        let (append, ()) = timed(|| {
            for _ in 0..s.small {
                log.append_msg(&data).expect("append");
            }
        });
        let (read, count) = timed(|| {
            let mut count = 0u64;
            let mut next = 0u64;
            while next < s.small {
                let buf = log.read(next, commitlog::ReadLimit::max_bytes(1 << 20)).expect("read");
                for m in buf.iter() {
                    std::hint::black_box(m.payload());
                    next = m.offset() + 1;
                    count += 1;
                }
            }
            count
        });
        assert_eq!(count, s.small);
        SmallRun { append, read: Some(read), consume: None }
    }
    fn large_run(&self, dir: &Path, n: u64) -> Duration {
        let data = payload(LARGE);
        let mut log = cl_open(dir);
        timed(|| {
            for _ in 0..n {
                log.append_msg(&data).expect("append");
            }
        })
        .0
    }
    fn durable_run(&self, _: &Path, _: u64) -> Result<Duration, &'static str> {
        Err("flush does not sync data")
    }
    fn build(&self, dir: &Path, bytes: u64) {
        let data = payload(LARGE);
        let mut log = cl_open(dir);
        for _ in 0..bytes / (LARGE as u64 * 64) {
            let mut buf = commitlog::message::MessageBuf::default();
            for _ in 0..64 {
                buf.push(&data).expect("push");
            }
            log.append(&mut buf).expect("append");
        }
        log.flush().expect("flush");
    }
    fn reopen(&self, dir: &Path) -> Result<Duration, &'static str> {
        let (t, log) = timed(|| cl_open(dir));
        drop(log);
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------
// the run and the table

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn rate(n: u64, t: Duration) -> Figure {
    Figure::Rate(n as f64 / t.as_secs_f64())
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_time(t: Duration) -> String {
    let ms = t.as_secs_f64() * 1e3;
    if ms >= 10.0 { format!("{ms:.0} ms") } else { format!("{ms:.2} ms") }
}

fn cell(f: Figure, base: Figure) -> String {
    match (f, base) {
        (Figure::Rate(r), Figure::Rate(b)) => format!("{} ({:.2}×)", fmt_rate(r), r / b),
        (Figure::Rate(r), _) => fmt_rate(r),
        (Figure::Time(t), Figure::Time(b)) => format!("{} ({:.2}×)", fmt_time(t), t.as_secs_f64() / b.as_secs_f64()),
        (Figure::Time(t), _) => fmt_time(t),
        (Figure::None(why), _) => why.to_string(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let sizes = Sizes {
        small: env_or("PEERS_SMALL", 1_000_000),
        large: env_or("PEERS_LARGE", 50_000),
        durable: env_or("PEERS_DURABLE", 1_000),
        consume: env_or("PEERS_CONSUME", 200_000),
        reopen_bytes: env_or("PEERS_REOPEN_MIB", 1024) << 20,
    };
    assert!(sizes.consume <= sizes.small, "PEERS_CONSUME must not exceed PEERS_SMALL");
    let engines: Vec<Box<dyn Engine>> =
        vec![Box::new(Plain), Box::new(Segq), Box::new(Yaque), Box::new(QueueFile), Box::new(Commitlog)];
    let started = Instant::now();
    eprintln!(
        "peers: {} × 100 B appends then read and {} consumed, {} × 4 KiB, {} durable, reopen of {} MiB; \
         median of {RUNS} runs",
        sizes.small,
        sizes.consume,
        sizes.large,
        sizes.durable,
        sizes.reopen_bytes >> 20
    );

    // samples[engine][column]
    let mut samples: Vec<[Vec<Duration>; 5]> = engines.iter().map(|_| Default::default()).collect();
    let mut missing: Vec<[Option<&'static str>; 6]> = engines.iter().map(|_| [None; 6]).collect();
    for run in 0..RUNS {
        for (e, engine) in engines.iter().enumerate() {
            let dir = temp_dir();
            let small = engine.small_run(dir.path(), &sizes);
            drop(dir);
            samples[e][0].push(small.append);
            match small.read {
                Some(t) => samples[e][3].push(t),
                None => missing[e][3] = Some("—"),
            }
            match small.consume {
                Some(t) => samples[e][4].push(t),
                None => missing[e][4] = Some("—"),
            }
            let dir = temp_dir();
            samples[e][1].push(engine.large_run(dir.path(), sizes.large));
            drop(dir);
            let dir = temp_dir();
            // Write back what the runs before left dirty, so the syncs measured are this run's.
            rustix::fs::sync();
            match engine.durable_run(dir.path(), sizes.durable) {
                Ok(t) => samples[e][2].push(t),
                Err(why) => missing[e][2] = Some(why),
            }
            drop(dir);
        }
        eprintln!("run {} of {RUNS} done at {:.1} s", run + 1, started.elapsed().as_secs_f64());
    }
    let mut reopen: Vec<Figure> = Vec::new();
    for engine in &engines {
        let dir = temp_dir();
        engine.build(dir.path(), sizes.reopen_bytes);
        let mut times = Vec::new();
        let mut why = None;
        for _ in 0..5 {
            match engine.reopen(dir.path()) {
                Ok(t) => times.push(t),
                Err(w) => why = Some(w),
            }
        }
        reopen.push(why.map_or_else(|| Figure::Time(median(times)), Figure::None));
        drop(dir);
    }
    eprintln!("reopen done at {:.1} s", started.elapsed().as_secs_f64());

    let counts = [sizes.small, sizes.large, sizes.durable, sizes.small, sizes.consume];
    let figures: Vec<[Figure; 6]> = (0..engines.len())
        .map(|e| {
            let mut row = [Figure::None("—"); 6];
            for c in 0..5 {
                row[c] = match missing[e][c] {
                    Some(why) => Figure::None(why),
                    None => rate(counts[c], median(samples[e][c].clone())),
                };
            }
            row[5] = reopen[e];
            row
        })
        .collect();

    println!();
    println!("| engine | {} |", COLUMNS.join(" | "));
    println!("|---|{}", "---|".repeat(COLUMNS.len()));
    for (e, engine) in engines.iter().enumerate() {
        let cells: Vec<String> = (0..6).map(|c| cell(figures[e][c], figures[0][c])).collect();
        println!("| {} | {} |", engine.name(), cells.join(" | "));
    }
    println!();
    println!(
        "Ratios (×) are to the plain-file baseline in the same column. Reopen: {} MiB of 4 KiB records, \
         median of 5 opens after a clean shutdown.",
        sizes.reopen_bytes >> 20
    );
    println!();
    println!("What each engine's flush really guarantees:");
    for engine in &engines {
        println!("- {}: {}", engine.name(), engine.guarantee());
    }
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
}
