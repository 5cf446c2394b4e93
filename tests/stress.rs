//! Concurrency stress: appenders, readers (`read` and live `iter_from`), consumer-group
//! workers (two groups, several threads each, polling, acking, nacking and letting leases
//! run out) and retention, all on their own threads at once, for a bounded time; then the
//! invariants:
//!
//! - every appended record is readable with its exact bytes unless it lies below
//!   `first_offset`, and offsets are contiguous;
//! - each group delivered every record at least once, unless retention took it first (and
//!   then the group counts it as lost);
//! - no record is delivered again after its ack returned, and attempts only go up;
//! - ack floors and the first offset never go backwards, and never pass the log's end;
//! - with `retain_until_consumed`, nothing a group has not acked is deleted, and everything
//!   consumed is;
//! - no thread panics.
//!
//! `SEGQ_STRESS_MS=<ms>` runs longer; `SEGQ_STRESS_SEED` replays a seed (timing differs).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Rng, check_tagged_log, mix, tagged, test_seed, untag};
use segq::{Group, GroupOptions, Options, Queue, SyncPolicy};

const RUN_MS: u64 = 2000;

/// One event seen by a group worker, stamped with a counter shared by every thread of the
/// queue: `start` before `poll`, `end` after it returned, `at` after `ack` returned.
#[derive(Debug, Clone, Copy)]
enum Event {
    Delivered { group: usize, offset: u64, attempt: u32, start: u64, end: u64 },
    Acked { group: usize, offset: u64, at: u64 },
}

/// Everything the threads of one queue share.
struct Shared {
    stop: AtomicBool,
    clock: AtomicU64,
    /// `(offset, seed)` of every append that returned.
    appended: Mutex<Vec<(u64, u64)>>,
    events: Mutex<Vec<Event>>,
    reads: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            clock: AtomicU64::new(0),
            appended: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            reads: AtomicU64::new(0),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

fn appender(q: &Queue, sh: &Shared, id: u64, seed: u64, pause_us: u64) {
    let mut rng = Rng::new(mix(seed ^ id));
    let mut mine = Vec::new();
    let mut n = 0u64;
    while sh.running() {
        let count = if rng.chance(70) { 1 } else { rng.range(2..9) as u16 };
        let base = id << 40 | n << 5;
        n += 1;
        let payloads: Vec<Vec<u8>> = (0..count).map(|i| tagged(base + u64::from(i), i, count)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let first = if count == 1 { q.append(refs[0]).unwrap() } else { q.append_batch(&refs).unwrap().start };
        mine.extend((0..u64::from(count)).map(|i| (first + i, base + i)));
        if pause_us > 0 {
            std::thread::sleep(Duration::from_micros(rng.below(pause_us)));
        }
    }
    sh.appended.lock().unwrap().extend(mine);
}

/// Reads random offsets and short runs of records, checking each one it gets.
fn reader(q: &Queue, sh: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    while sh.running() {
        let (first, next) = (q.first_offset(), q.next_offset());
        if next == first {
            std::thread::yield_now();
            continue;
        }
        let o = rng.range(first..next);
        // `None` only if retention deleted it since `first` was read.
        match q.read(o).unwrap() {
            Some(rec) => {
                assert_eq!(rec.offset(), o);
                untag(rec.payload()).unwrap_or_else(|e| panic!("read {o}: {e}"));
            }
            None => assert!(o < q.first_offset(), "record {o} of {first}..{next} is missing"),
        }
        let mut expect = None;
        for rec in q.iter_from(rng.range(first..next)).take(40) {
            let rec = rec.unwrap_or_else(|e| panic!("iteration: {e}"));
            untag(rec.payload()).unwrap_or_else(|e| panic!("iterated {}: {e}", rec.offset()));
            if let Some(want) = expect {
                assert!(
                    rec.offset() == want || rec.offset() <= q.first_offset(),
                    "iteration skipped to {}",
                    rec.offset()
                );
            }
            expect = Some(rec.offset() + 1);
        }
        sh.reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// Follows the live log from offset 0 with one iterator for the whole run.
fn follower(q: &Queue, sh: &Shared) {
    let mut it = q.iter_from(0);
    let mut last: Option<u64> = None;
    while sh.running() {
        match it.next() {
            Some(rec) => {
                let rec = rec.unwrap();
                untag(rec.payload()).unwrap_or_else(|e| panic!("followed {}: {e}", rec.offset()));
                if let Some(prev) = last {
                    // A jump is allowed only up to where retention moved the first offset.
                    assert!(
                        rec.offset() == prev + 1 || (rec.offset() > prev && rec.offset() <= q.first_offset()),
                        "the live iterator went from {prev} to {}",
                        rec.offset()
                    );
                }
                last = Some(rec.offset());
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

fn worker(g: &Group, group: usize, sh: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut events = Vec::new();
    while sh.running() {
        let start = sh.tick();
        let Some(d) = g.poll(Duration::from_millis(10)).unwrap() else { continue };
        let end = sh.tick();
        let offset = d.offset();
        untag(d.payload()).unwrap_or_else(|e| panic!("delivered {offset}: {e}"));
        events.push(Event::Delivered { group, offset, attempt: d.attempt(), start, end });
        match rng.below(100) {
            0..80 => {
                g.ack(offset).unwrap();
                events.push(Event::Acked { group, offset, at: sh.tick() });
            }
            80..90 => g.nack(offset, Duration::from_millis(rng.below(5))).unwrap(),
            _ => {}
        }
    }
    sh.events.lock().unwrap().extend(events);
}

/// Watches that floors and the first offset never go backwards or past the end; with
/// `consumed`, that nothing a group still needs is deleted.
fn sampler(q: &Queue, groups: &[Group], sh: &Shared, consumed: bool) {
    let mut floors = vec![0u64; groups.len()];
    let mut first = 0;
    while sh.running() {
        let f = q.first_offset();
        assert!(f >= first, "the first offset went back from {first} to {f}");
        first = f;
        for (i, g) in groups.iter().enumerate() {
            let floor = g.ack_floor();
            assert!(floor >= floors[i], "{}: ack floor went back from {} to {floor}", g.name(), floors[i]);
            assert!(floor <= q.next_offset(), "{}: ack floor {floor} is past the end", g.name());
            if consumed {
                // Read after `f`, and floors only grow: a deletion past a floor shows here.
                assert!(f <= floor, "{}: offsets below {f} were deleted, the group needs {floor}", g.name());
            }
            floors[i] = floor;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn retention(q: &Queue, sh: &Shared) {
    while sh.running() {
        q.enforce_retention().unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Takes every record left in a group, acking each; returns the events.
fn drain(g: &Group, group: usize, sh: &Shared, lease: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let start = sh.tick();
        let Some(d) = g.poll(lease * 3).unwrap() else { break };
        let end = sh.tick();
        events.push(Event::Delivered { group, offset: d.offset(), attempt: d.attempt(), start, end });
        g.ack(d.offset()).unwrap();
        events.push(Event::Acked { group, offset: d.offset(), at: sh.tick() });
    }
    events
}

/// Checks the delivery invariants of one group's events; returns the offsets delivered.
fn check_deliveries(name: &str, events: &[Event], group: usize, max_attempts: u32) -> HashSet<u64> {
    let mut deliveries: HashMap<u64, Vec<(u32, u64, u64)>> = HashMap::new();
    let mut acks: HashMap<u64, u64> = HashMap::new();
    for e in events {
        match *e {
            Event::Delivered { group: g, offset, attempt, start, end } if g == group => {
                deliveries.entry(offset).or_default().push((attempt, start, end));
            }
            Event::Acked { group: g, offset, at } if g == group => {
                let first = acks.entry(offset).or_insert(at);
                *first = (*first).min(at);
            }
            _ => {}
        }
    }
    for (&o, list) in &deliveries {
        for &(attempt, start, end) in list {
            assert!((1..=max_attempts).contains(&attempt), "{name}: record {o} delivered with attempt {attempt}");
            if let Some(&at) = acks.get(&o) {
                assert!(start < at, "{name}: record {o} delivered again (attempt {attempt}) after its ack returned");
            }
            for &(a2, s2, _) in list {
                assert!(s2 <= end || a2 > attempt, "{name}: record {o} went from attempt {attempt} to {a2}");
            }
        }
    }
    deliveries.into_keys().collect()
}

/// The appends of one queue, sorted: they must be exactly offsets `0..next`.
fn check_appended(q: &Queue, sh: &Shared) -> Vec<u64> {
    let mut appended = std::mem::take(&mut *sh.appended.lock().unwrap());
    appended.sort_unstable();
    let next = q.next_offset();
    assert_eq!(appended.len() as u64, next, "appends that returned vs the log's end");
    let (first, mut seeds) = (q.first_offset(), Vec::new());
    for (i, &(o, seed)) in appended.iter().enumerate() {
        assert_eq!(o, i as u64, "offset {o} handed out twice or skipped");
        match q.read(o).unwrap() {
            Some(rec) => {
                assert!(o >= first);
                assert_eq!(untag(rec.payload()).unwrap().0, seed, "record {o} is not the one appended there");
            }
            None => assert!(o < first, "record {o} is gone but the first offset is {first}"),
        }
        seeds.push(seed);
    }
    let kept = check_tagged_log(q).unwrap();
    assert_eq!(kept, seeds[first as usize..], "iteration from the first offset");
    seeds
}

fn run_ms() -> Duration {
    Duration::from_millis(std::env::var("SEGQ_STRESS_MS").ok().map_or(RUN_MS, |m| m.parse().unwrap()))
}

/// A queue with a small size limit, appenders under `Always`, readers, two groups of
/// three workers each, and a retention thread.
#[test]
fn appenders_readers_groups_and_size_retention_at_once() {
    let seed = test_seed("SEGQ_STRESS_SEED");
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(16 << 10).index_interval_bytes(512).retain_bytes(64 << 10);
    let q = Queue::open(dir.path(), opts.sync(SyncPolicy::Always)).unwrap();
    let lease = Duration::from_millis(40);
    let max_attempts = 4;
    let groups: Vec<Group> = ["a", "b"]
        .iter()
        .map(|n| q.group_with(n, GroupOptions::default().lease(lease).max_attempts(max_attempts)).unwrap())
        .collect();
    let sh = Shared::new();
    let started = Instant::now();
    std::thread::scope(|s| {
        let (q, sh, groups) = (&q, &sh, &groups);
        for id in 0..3 {
            s.spawn(move || appender(q, sh, id, seed, 2000));
        }
        for r in 0..2 {
            s.spawn(move || reader(q, sh, mix(seed ^ (100 + r))));
        }
        s.spawn(move || follower(q, sh));
        for (gi, g) in groups.iter().enumerate() {
            for w in 0..3u64 {
                s.spawn(move || worker(g, gi, sh, mix(seed ^ (gi as u64) << 8 ^ w)));
            }
        }
        s.spawn(move || sampler(q, groups, sh, false));
        s.spawn(move || retention(q, sh));
        std::thread::sleep(run_ms());
        sh.stop.store(true, Ordering::Relaxed);
    });
    let seeds = check_appended(&q, &sh);
    let mut events = std::mem::take(&mut *sh.events.lock().unwrap());
    let next = q.next_offset();
    for (gi, g) in groups.iter().enumerate() {
        events.extend(drain(g, gi, &sh, lease));
        let delivered = check_deliveries(g.name(), &events, gi, max_attempts);
        let first = q.first_offset();
        let missed: Vec<u64> = (0..next).filter(|o| !delivered.contains(o)).collect();
        assert!(missed.iter().all(|&o| o < first), "{}: never delivered {missed:?} (first offset {first})", g.name());
        let st = g.stats();
        assert!(
            missed.len() as u64 <= st.lost,
            "{}: {} records never delivered, {} counted lost",
            g.name(),
            missed.len(),
            st.lost
        );
        assert_eq!(g.ack_floor(), next, "{}: after draining", g.name());
    }
    assert!(q.first_offset() > 0, "retention deleted nothing");
    let lost: Vec<u64> = groups.iter().map(|g| g.stats().lost).collect();
    eprintln!(
        "stress (size retention): {:.1} s, {} records, first offset {}, lost by the groups {lost:?}, {} deliveries, \
         {} reads",
        started.elapsed().as_secs_f64(),
        seeds.len(),
        q.first_offset(),
        events.iter().filter(|e| matches!(e, Event::Delivered { .. })).count(),
        sh.reads.load(Ordering::Relaxed)
    );
    q.close().unwrap();
}

/// A work queue: `retain_until_consumed` deletes what both groups acked and nothing else.
#[test]
fn retain_until_consumed_deletes_only_what_every_group_acked() {
    let seed = test_seed("SEGQ_STRESS_SEED");
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(16 << 10).index_interval_bytes(512).retain_until_consumed(true);
    let q = Queue::open(dir.path(), opts.sync(SyncPolicy::Interval(Duration::from_millis(2)))).unwrap();
    let lease = Duration::from_millis(40);
    // Enough attempts that no record becomes a dead letter, which would hold retention back.
    let max_attempts = 1000;
    let groups: Vec<Group> = ["x", "y"]
        .iter()
        .map(|n| q.group_with(n, GroupOptions::default().lease(lease).max_attempts(max_attempts)).unwrap())
        .collect();
    let sh = Shared::new();
    std::thread::scope(|s| {
        let (q, sh, groups) = (&q, &sh, &groups);
        for id in 0..2 {
            s.spawn(move || appender(q, sh, id, seed, 200));
        }
        s.spawn(move || reader(q, sh, mix(seed ^ 7)));
        for (gi, g) in groups.iter().enumerate() {
            for w in 0..2u64 {
                s.spawn(move || worker(g, gi, sh, mix(seed ^ (gi as u64) << 8 ^ w ^ 0xff)));
            }
        }
        s.spawn(move || sampler(q, groups, sh, true));
        s.spawn(move || retention(q, sh));
        std::thread::sleep(run_ms());
        sh.stop.store(true, Ordering::Relaxed);
    });
    check_appended(&q, &sh);
    let mut events = std::mem::take(&mut *sh.events.lock().unwrap());
    let next = q.next_offset();
    for (gi, g) in groups.iter().enumerate() {
        assert_eq!(g.stats().lost, 0, "{}: retention deleted records it had not acked", g.name());
        events.extend(drain(g, gi, &sh, lease));
        let delivered = check_deliveries(g.name(), &events, gi, max_attempts);
        assert_eq!(delivered.len() as u64, next, "{}: every record is delivered", g.name());
        assert_eq!(g.ack_floor(), next);
    }
    // Everything is consumed now: every sealed segment goes.
    q.enforce_retention().unwrap();
    let stats = q.stats();
    assert_eq!(stats.segments, 1, "consumed segments are kept: {stats:?}");
    for g in &groups {
        assert_eq!(g.stats().lost, 0);
    }
    q.close().unwrap();
}

/// A live iterator at the end of the log, while retention deletes every sealed segment as
/// soon as a roll seals it: between the roll (which lists the new, still empty active
/// segment) and the first record published in it, `first_offset` equals `next_offset`, and
/// the iterator must see the end there. (Found by
/// `retain_until_consumed_deletes_only_what_every_group_acked`: `Iter::next` checked the
/// end before it moved up to the first offset, then read a record that did not exist yet,
/// yielding `Corrupt { position: 32, Gap }` for an intact segment and ending for good.)
#[test]
fn a_live_iterator_never_reports_damage_when_retention_empties_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(4096).retain_bytes(1).sync(SyncPolicy::Never);
    let q = Queue::open(dir.path(), opts).unwrap();
    let stop = AtomicBool::new(false);
    let mut errors = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                q.append(&[7u8; 1000]).unwrap();
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                q.enforce_retention().unwrap();
            }
        });
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) && errors.is_empty() {
            errors.extend(q.iter_from(0).filter_map(Result::err).map(|e| e.to_string()));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(errors.is_empty(), "iteration of an intact log failed: {errors:?}");
}
