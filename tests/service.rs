//! Realistic programs built on segq, as a service would use it: a work queue, a
//! crash-looping worker, an outbox / event log, a service sharing one queue between threads,
//! the `segq` binary next to a live service. Each asserts what the README and the rustdoc
//! promise.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{child_test, process_lock};
use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};

const NO_WAIT: Duration = Duration::ZERO;
/// Generous bound to tell a hang from a slow machine.
const HANG: Duration = Duration::from_secs(30);

fn segq_bin() -> &'static str {
    env!("CARGO_BIN_EXE_segq")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr: {}", self.stdout, self.stderr))
    }
}

fn cli<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(segq_bin()).args(args).stdin(Stdio::null()).output().expect("segq runs");
    let run = Run {
        code: out.status.code().expect("segq exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "segq panicked:\n{}", run.stderr);
    run
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

// =======================================================================================
// 1. A work queue: producers, 4 workers with leases, out-of-order acks, nacks with delay,
//    lease extensions, dead letters and a redrive.
// =======================================================================================

/// What a job asks the worker to do, from its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Acked at once (in small out-of-order batches).
    Ok,
    /// Fails its first attempt (nack with a delay), succeeds the second.
    Flaky,
    /// Fails every attempt: a dead letter after max_attempts.
    Poison,
    /// Takes a while and extends its lease on the way.
    Slow,
}

fn kind_of(payload: &[u8]) -> Kind {
    let s = std::str::from_utf8(payload).unwrap();
    match s.rsplit(':').next().unwrap() {
        "ok" => Kind::Ok,
        "flaky" => Kind::Flaky,
        "poison" => Kind::Poison,
        "slow" => Kind::Slow,
        other => panic!("unknown job kind {other}"),
    }
}

fn job_payload(producer: u64, seq: u64) -> Vec<u8> {
    let kind = match (producer * 1000 + seq) % 17 {
        3 => "poison",
        5 | 11 => "flaky",
        7 => "slow",
        _ => "ok",
    };
    format!("job p{producer} s{seq}:{kind}").into_bytes()
}

#[derive(Default)]
struct Ledger {
    /// offset -> the worker holding it now (set on delivery, cleared just before ack/nack).
    held: HashMap<u64, usize>,
    /// offset -> attempts seen, in delivery order.
    attempts: BTreeMap<u64, Vec<u32>>,
    /// offset -> how many acks our workers made.
    acks: BTreeMap<u64, u32>,
    /// offsets that were nacked into a dead letter by the last allowed attempt.
    poisoned: BTreeSet<u64>,
    violations: Vec<String>,
}

#[test]
fn work_queue_with_four_workers_retries_dead_letters_and_redrive() {
    const PRODUCERS: u64 = 3;
    const PER_PRODUCER: u64 = 120;
    const MAX_ATTEMPTS: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(Queue::open(dir.path(), Options::default().segment_bytes(16 << 10)).unwrap());
    let g = q
        .group_with("jobs", GroupOptions::default().lease(Duration::from_secs(20)).max_attempts(MAX_ATTEMPTS))
        .unwrap();
    let producers_done = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // Redriven poison jobs are "fixed": a worker acks them.
    let fixed = Arc::new(AtomicBool::new(false));
    let all_done = Arc::new(AtomicBool::new(false));

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let q = q.clone();
        producers.push(std::thread::spawn(move || {
            let mut seq = 0;
            while seq < PER_PRODUCER {
                if seq % 10 == 0 {
                    let payloads: Vec<Vec<u8>> = (seq..seq + 4).map(|s| job_payload(p, s)).collect();
                    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                    let range = q.append_batch(&refs).unwrap();
                    assert_eq!(range.end - range.start, 4);
                    seq += 4;
                } else {
                    q.append(&job_payload(p, seq)).unwrap();
                    seq += 1;
                }
            }
        }));
    }

    let mut workers = Vec::new();
    for w in 0..4usize {
        let g = g.clone();
        let q = q.clone();
        let ledger = ledger.clone();
        let producers_done = producers_done.clone();
        let fixed = fixed.clone();
        let all_done = all_done.clone();
        workers.push(std::thread::spawn(move || {
            let mut pending_acks: Vec<u64> = Vec::new();
            let started = Instant::now();
            loop {
                assert!(started.elapsed() < Duration::from_secs(120), "worker {w} ran for two minutes: hang?");
                let job = match g.poll(Duration::from_millis(50)) {
                    Ok(job) => job,
                    Err(e) => panic!("worker {w}: poll failed: {e}"),
                };
                let Some(job) = job else {
                    // Flush the acks we were holding back.
                    for off in pending_acks.drain(..).rev() {
                        ledger.lock().unwrap().held.remove(&off);
                        *ledger.lock().unwrap().acks.entry(off).or_default() += 1;
                        g.ack(off).unwrap();
                    }
                    if all_done.load(Ordering::SeqCst) {
                        return;
                    }
                    if producers_done.load(Ordering::SeqCst) {
                        let s = g.stats();
                        if s.lag == 0 && s.leased == 0 && s.waiting == 0 && s.next_delivery == q.next_offset() {
                            return;
                        }
                    }
                    continue;
                };
                let off = job.offset();
                {
                    let mut l = ledger.lock().unwrap();
                    if let Some(other) = l.held.get(&off).copied() {
                        l.violations.push(format!(
                            "offset {off} delivered to worker {w} (attempt {}) while worker {other} holds it",
                            job.attempt()
                        ));
                    }
                    l.held.insert(off, w);
                    l.attempts.entry(off).or_default().push(job.attempt());
                }
                assert!(g.is_current(&job).unwrap(), "a fresh delivery is current");
                match kind_of(job.payload()) {
                    Kind::Ok => {
                        pending_acks.push(off);
                        if pending_acks.len() >= 3 {
                            // Ack out of order: newest first.
                            for off in pending_acks.drain(..).rev() {
                                ledger.lock().unwrap().held.remove(&off);
                                *ledger.lock().unwrap().acks.entry(off).or_default() += 1;
                                g.ack(off).unwrap();
                            }
                        }
                    }
                    Kind::Flaky => {
                        if job.attempt() == 1 {
                            ledger.lock().unwrap().held.remove(&off);
                            g.nack(off, Duration::from_millis(20)).unwrap();
                        } else {
                            ledger.lock().unwrap().held.remove(&off);
                            *ledger.lock().unwrap().acks.entry(off).or_default() += 1;
                            g.ack(off).unwrap();
                        }
                    }
                    Kind::Poison if !fixed.load(Ordering::SeqCst) => {
                        let mut l = ledger.lock().unwrap();
                        l.held.remove(&off);
                        if job.attempt() == MAX_ATTEMPTS {
                            l.poisoned.insert(off);
                        }
                        drop(l);
                        g.nack(off, Duration::from_millis(5)).unwrap();
                    }
                    Kind::Poison | Kind::Slow => {
                        std::thread::sleep(Duration::from_millis(10));
                        assert!(
                            g.extend_delivery(&job, Duration::from_secs(20)).unwrap(),
                            "lost a 20 s lease in 10 ms"
                        );
                        assert!(g.extend_lease(off, Duration::from_secs(20)).unwrap());
                        std::thread::sleep(Duration::from_millis(10));
                        ledger.lock().unwrap().held.remove(&off);
                        *ledger.lock().unwrap().acks.entry(off).or_default() += 1;
                        g.ack(off).unwrap();
                        assert!(!g.is_current(&job).unwrap(), "an acked delivery is not current");
                    }
                }
            }
        }));
    }

    for p in producers {
        p.join().unwrap();
    }
    let total = PRODUCERS * PER_PRODUCER;
    assert_eq!(q.next_offset(), total);
    assert_eq!(q.durable_offset(), total, "Always: every append is durable once it returned");
    producers_done.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }

    let payloads: Vec<Vec<u8>> = q.iter_from(0).map(|r| r.unwrap().payload().to_vec()).collect();
    assert_eq!(payloads.len() as u64, total);
    let poison: BTreeSet<u64> = (0..total).filter(|&o| kind_of(&payloads[o as usize]) == Kind::Poison).collect();
    assert!(!poison.is_empty());
    {
        let l = ledger.lock().unwrap();
        assert!(l.violations.is_empty(), "{:#?}", l.violations);
        assert!(l.held.is_empty(), "still held: {:?}", l.held);
        for o in 0..total {
            let kind = kind_of(&payloads[o as usize]);
            let attempts = l.attempts.get(&o).cloned().unwrap_or_default();
            match kind {
                Kind::Poison => {
                    assert_eq!(attempts, (1..=MAX_ATTEMPTS).collect::<Vec<_>>(), "poison {o}");
                    assert!(!l.acks.contains_key(&o), "poison {o} acked");
                }
                Kind::Flaky => {
                    assert_eq!(attempts, [1, 2], "flaky {o}");
                    assert_eq!(l.acks.get(&o), Some(&1), "flaky {o} acked once");
                }
                Kind::Ok | Kind::Slow => {
                    assert_eq!(attempts, [1], "{kind:?} {o}");
                    assert_eq!(l.acks.get(&o), Some(&1), "{kind:?} {o} acked once");
                }
            }
        }
        assert_eq!(l.poisoned, poison);
    }

    let dead = g.dead_letters().unwrap();
    let dead_offsets: BTreeSet<u64> = dead.iter().map(|d| d.offset()).collect();
    assert_eq!(dead_offsets, poison);
    assert!(dead.iter().all(|d| d.attempts() == MAX_ATTEMPTS));
    assert!(dead.windows(2).all(|w| w[0].offset() < w[1].offset()), "dead letters are by offset");
    let s = g.stats();
    assert_eq!(s.ack_floor, total, "dead letters do not hold back the floor");
    assert_eq!(g.ack_floor(), total);
    assert_eq!((s.next_delivery, s.lag, s.leased, s.waiting), (total, 0, 0, 0));
    assert_eq!(s.dead, poison.len() as u64);
    assert_eq!((s.lost, s.max_attempts, s.lease_ms), (0, MAX_ATTEMPTS, 20_000));
    let qs = q.stats();
    assert_eq!((qs.records, qs.first_offset, qs.next_offset, qs.durable_offset), (total, 0, total, total));

    // The bug is fixed: redrive every dead letter; the workers ack them now.
    fixed.store(true, Ordering::SeqCst);
    for d in &dead {
        assert!(g.redrive(d.offset()).unwrap());
    }
    let s = g.stats();
    assert_eq!(s.dead, 0);
    assert_eq!(s.waiting, poison.len() as u64, "redriven records wait for a delivery");
    assert_eq!(s.lag, poison.len() as u64, "redriven records are work to do again");
    assert_eq!(s.ack_floor, *poison.first().unwrap(), "a redriven record holds the floor back again");
    let mut redelivered = BTreeMap::new();
    while let Some(job) = g.poll(NO_WAIT).unwrap() {
        redelivered.insert(job.offset(), job.attempt());
        g.ack(job.offset()).unwrap();
    }
    assert_eq!(redelivered.keys().copied().collect::<BTreeSet<_>>(), poison);
    assert!(redelivered.values().all(|&a| a == 1), "a redrive starts the attempts over: {redelivered:?}");
    all_done.store(true, Ordering::SeqCst);
    let s = g.stats();
    assert_eq!((s.ack_floor, s.lag, s.dead, s.waiting, s.leased), (total, 0, 0, 0, 0));
    assert!(g.dead_letters().unwrap().is_empty());

    // And it all holds after a reopen.
    q.close().unwrap();
    drop(g);
    let Ok(q) = Arc::try_unwrap(q) else { panic!("all workers are gone") };
    drop(q);
    let q = Queue::open(dir.path(), Options::default().segment_bytes(16 << 10)).unwrap();
    assert!(q.recovery().clean);
    let g = q.group("jobs").unwrap();
    assert_eq!(g.options().get_max_attempts(), MAX_ATTEMPTS);
    let s = g.stats();
    assert_eq!((s.ack_floor, s.next_delivery, s.lag, s.dead, s.waiting, s.leased), (total, total, 0, 0, 0, 0));
    assert!(g.poll(NO_WAIT).unwrap().is_none(), "nothing acked is delivered again");
    q.close().unwrap();
}

// =======================================================================================
// 2. Crash/restart: a worker process appends and consumes under SyncPolicy::Always and is
//    SIGKILLed at random points; the parent reopens and checks at-least-once delivery.
// =======================================================================================

const CRASH_DIR: &str = "REVIEW_USER_CRASH_DIR";
const CRASH_SEED: &str = "REVIEW_USER_CRASH_SEED";
const CRASH_DRAIN: &str = "REVIEW_USER_CRASH_DRAIN";
const CRASH_POLICY: &str = "REVIEW_USER_CRASH_POLICY";

fn crash_options(policy: &str) -> Options {
    let sync = match policy {
        "always" => SyncPolicy::Always,
        "never" => SyncPolicy::Never,
        other => panic!("policy {other}"),
    };
    Options::default().segment_bytes(8 << 10).index_interval_bytes(256).sync(sync)
}

fn crash_payload(offset: u64) -> Vec<u8> {
    let len = 20 + (offset * 37 % 200) as usize;
    let mut p = format!("rec {offset} ").into_bytes();
    p.resize(len, b'a' + (offset % 26) as u8);
    p
}

/// Child of `crash_looped_worker_under_always_never_loses_an_ack_or_a_record`: appends,
/// polls, acks, nacks and leaves some jobs leased, printing each call once it returned,
/// until it is killed (or, with CRASH_DRAIN set, drains the group and closes).
#[test]
#[ignore = "child process of crash_looped_worker_under_always_never_loses_an_ack_or_a_record"]
fn service_crash_child() {
    use std::io::Write;
    let Ok(dir) = std::env::var(CRASH_DIR) else { return };
    let mut rng: u64 = std::env::var(CRASH_SEED).unwrap().parse().unwrap();
    let drain = std::env::var(CRASH_DRAIN).is_ok();
    let policy = std::env::var(CRASH_POLICY).unwrap();
    let q = Queue::open(&dir, crash_options(&policy)).unwrap();
    let g = q.group_with("workers", GroupOptions::default().max_attempts(1000).lease(Duration::from_secs(60))).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out).unwrap();
    writeln!(out, "opened {}", q.next_offset()).unwrap();
    out.flush().unwrap();
    if drain {
        while let Some(d) = g.poll(NO_WAIT).unwrap() {
            assert_eq!(d.payload(), crash_payload(d.offset()).as_slice());
            writeln!(out, "got {} {}", d.offset(), d.attempt()).unwrap();
            g.ack(d.offset()).unwrap();
            writeln!(out, "acked {}", d.offset()).unwrap();
        }
        q.close().unwrap();
        writeln!(out, "done").unwrap();
        out.flush().unwrap();
        return;
    }
    for _ in 0..1_000_000 {
        rng = common::mix(rng);
        match rng % 10 {
            0..=3 => {
                let start = q.next_offset();
                let n = 1 + (rng >> 8) % 3;
                let payloads: Vec<Vec<u8>> = (start..start + n).map(crash_payload).collect();
                let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                let range = q.append_batch(&refs).unwrap();
                assert_eq!(range, start..start + n);
                for o in range {
                    writeln!(out, "appended {o}").unwrap();
                }
            }
            _ => {
                if let Some(d) = g.poll(NO_WAIT).unwrap() {
                    assert_eq!(d.payload(), crash_payload(d.offset()).as_slice());
                    writeln!(out, "got {} {}", d.offset(), d.attempt()).unwrap();
                    out.flush().unwrap();
                    match (rng >> 16) % 8 {
                        0 => {
                            g.nack(d.offset(), NO_WAIT).unwrap();
                            writeln!(out, "nacked {}", d.offset()).unwrap();
                        }
                        1 => {} // left leased: comes back after the restart
                        _ => {
                            g.ack(d.offset()).unwrap();
                            writeln!(out, "acked {}", d.offset()).unwrap();
                        }
                    }
                }
            }
        }
        out.flush().unwrap();
    }
}

#[derive(Default)]
struct CrashLedger {
    appended: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    last_attempt: BTreeMap<u64, u32>,
}

impl CrashLedger {
    fn take(&mut self, line: &str, run: usize) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["appended", o] => {
                self.appended.insert(o.parse().unwrap());
            }
            ["got", o, a] => {
                let (o, a): (u64, u32) = (o.parse().unwrap(), a.parse().unwrap());
                assert!(
                    !self.acked.contains(&o),
                    "run {run}: offset {o} delivered (attempt {a}) after its ack returned"
                );
                if let Some(&before) = self.last_attempt.get(&o) {
                    assert!(a > before, "run {run}: offset {o} delivered with attempt {a} after attempt {before}");
                }
                self.last_attempt.insert(o, a);
            }
            ["acked", o] => {
                self.acked.insert(o.parse().unwrap());
            }
            _ => {}
        }
    }
}

#[test]
fn crash_looped_worker_under_always_never_loses_an_ack_or_a_record() {
    crash_loop("always", 12, 5, 400);
}

/// The same under SyncPolicy::Never: a crash of the *process* loses nothing that returned
/// (the journal is in the page cache), and with thousands of calls per run the kills land
/// during the groups' compactions (a snapshot every ~10,900 changes) too.
#[test]
fn crash_looped_worker_under_never_survives_kills_during_compactions() {
    crash_loop("never", 10, 2_000, 40_000);
}

fn crash_loop(policy: &str, runs: usize, min_lines: u64, max_lines: u64) {
    let _serial = process_lock();
    let dir = tempfile::tempdir().unwrap();
    let seed = common::test_seed("REVIEW_USER_SEED");
    let mut rng = seed;
    let mut ledger = CrashLedger::default();
    for run in 0..runs {
        rng = common::mix(rng);
        let kill_after = min_lines + rng % (max_lines - min_lines);
        let mut child = child_test(
            "service_crash_child",
            &[(CRASH_DIR, arg(dir.path())), (CRASH_SEED, (rng >> 3).to_string()), (CRASH_POLICY, policy.to_string())],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        let mut collected = Vec::new();
        while seen < kill_after {
            match lines.next() {
                Some(Ok(line)) => {
                    collected.push(line);
                    seen += 1;
                }
                _ => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        for line in lines.map_while(Result::ok) {
            collected.push(line);
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "{policy} seed {seed} run {run}: the child was meant to be killed");
        for line in &collected {
            ledger.take(line, run);
        }

        // The parent reopens between runs.
        let q = Queue::open(dir.path(), crash_options(policy)).unwrap();
        for &o in &ledger.appended {
            let r =
                q.read(o).unwrap().unwrap_or_else(|| panic!("{policy} seed {seed} run {run}: appended {o} is gone"));
            assert_eq!(r.payload(), crash_payload(o).as_slice(), "{policy} seed {seed}: payload of {o}");
        }
        for o in q.first_offset()..q.next_offset() {
            assert_eq!(q.read(o).unwrap().unwrap().payload(), crash_payload(o).as_slice());
        }
        if let Ok(g) = q.group("workers") {
            let s = g.stats();
            assert_eq!(s.leased, 0, "{policy} seed {seed} run {run}: no lease survives a restart");
            let first_open = (0..q.next_offset()).find(|o| !ledger.acked.contains(o)).unwrap_or(q.next_offset());
            assert!(
                s.ack_floor >= first_open,
                "{policy} seed {seed} run {run}: floor {} below {first_open}",
                s.ack_floor
            );
            assert!(s.next_delivery <= q.next_offset());
        }
        q.close().unwrap();
    }
    // A last worker drains the group and closes cleanly.
    let out = child_test(
        "service_crash_child",
        &[
            (CRASH_DIR, arg(dir.path())),
            (CRASH_SEED, "1".into()),
            (CRASH_DRAIN, "1".into()),
            (CRASH_POLICY, policy.to_string()),
        ],
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{policy} seed {seed}: drain failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines() {
        ledger.take(line, 99);
    }
    assert!(stdout.contains("done"));
    let q = Queue::open(dir.path(), crash_options(policy)).unwrap();
    assert!(q.recovery().clean);
    for o in 0..q.next_offset() {
        // An ack the child made just before it was killed may not have been printed, but
        // every record was delivered (and that printed) before it was acked.
        assert!(ledger.last_attempt.contains_key(&o), "{policy} seed {seed}: offset {o} never delivered");
    }
    let g = q.group("workers").unwrap();
    assert_eq!(g.ack_floor(), q.next_offset());
    assert_eq!(g.stats().lag, 0);
    assert!(!ledger.appended.is_empty() && !ledger.acked.is_empty());
}

// =======================================================================================
// 3. An outbox / event log: replay from a moment, groups at different speeds, seeks,
//    retention while consumers lag, reopen between phases, delete and re-create a group.
// =======================================================================================

fn event(i: u64) -> Vec<u8> {
    let mut p = format!("event {i:05} ").into_bytes();
    p.resize(180, b'e');
    p
}

fn log_options() -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(256).sync(SyncPolicy::Never)
}

/// Appends `n` events, returns the offset range.
fn burst(q: &Queue, n: u64) -> std::ops::Range<u64> {
    let start = q.next_offset();
    for i in start..start + n {
        assert_eq!(q.append(&event(i)).unwrap(), i);
    }
    start..start + n
}

#[test]
fn event_log_replay_seek_retention_and_groups_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    // Phase 1: bursts of events, 40 ms apart, remembering when each started.
    let mut bursts = Vec::new();
    {
        let q = Queue::open(dir.path(), log_options().retain_until_consumed(true)).unwrap();
        // Groups exist from the start, so that retain_until_consumed keeps what they need.
        q.group("billing").unwrap();
        q.group("analytics").unwrap();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(40));
            let since = SystemTime::now();
            let range = burst(&q, 60);
            bursts.push((since, range));
        }
        assert!(q.stats().segments > 5, "{:?}", q.stats());
        for (since, range) in &bursts {
            assert_eq!(q.offset_since(*since).unwrap(), range.start);
            let ts = q.read(range.start).unwrap().unwrap().timestamp_ms();
            assert_eq!(q.offset_at_time(ts).unwrap(), range.start);
        }
        assert_eq!(q.offset_since(SystemTime::UNIX_EPOCH).unwrap(), 0);
        assert_eq!(q.offset_since(SystemTime::now() + Duration::from_secs(3600)).unwrap(), q.next_offset());
        assert_eq!(q.offset_at_time(u64::MAX).unwrap(), q.next_offset());
        // Nothing is acked: retention deletes nothing.
        assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0);
        q.close().unwrap();
    }

    // Phase 2: billing consumes everything, analytics only the first two bursts.
    let total = bursts.last().unwrap().1.end;
    let analytics_upto = bursts[1].1.end;
    {
        let q = Queue::open(dir.path(), log_options().retain_until_consumed(true)).unwrap();
        assert!(q.recovery().clean);
        assert_eq!(q.groups().unwrap(), ["analytics", "billing"]);
        let billing = q.group("billing").unwrap();
        let analytics = q.group("analytics").unwrap();
        assert_eq!(billing.stats().lag, total);
        for d in billing.poll_batch(10_000, NO_WAIT).unwrap() {
            assert_eq!(d.payload(), event(d.offset()).as_slice());
            billing.ack(d.offset()).unwrap();
        }
        assert_eq!(billing.ack_floor(), total);
        let mut got = 0;
        while got < analytics_upto {
            let batch = analytics.poll_batch(7, NO_WAIT).unwrap();
            assert!(!batch.is_empty());
            let offsets: Vec<u64> = batch.iter().map(|d| d.offset()).filter(|&o| o < analytics_upto).collect();
            analytics.ack_batch(&offsets).unwrap();
            got += offsets.len() as u64;
            let beyond: Vec<u64> = batch.iter().map(|d| d.offset()).filter(|&o| o >= analytics_upto).collect();
            analytics.nack_batch(&beyond, Duration::from_secs(3600)).unwrap();
        }
        assert_eq!(analytics.ack_floor(), analytics_upto);
        let report = q.enforce_retention().unwrap();
        assert!(report.segments_deleted > 0, "analytics acked two bursts: {report:?}");
        assert!(q.first_offset() <= analytics_upto, "deleted records analytics has not acked");
        assert_eq!(report.first_offset, q.first_offset());
        assert_eq!(analytics.stats().lost, 0);
        assert_eq!(billing.stats().lost, 0);
        for o in q.first_offset()..total {
            assert_eq!(q.read(o).unwrap().unwrap().payload(), event(o).as_slice());
        }
        q.close().unwrap();
    }

    // Phase 3: replay from a moment with a new group, seek back and forth, delete and
    // re-create a group.
    {
        let q = Queue::open(dir.path(), log_options().retain_until_consumed(true)).unwrap();
        let first = q.first_offset();
        assert!(first > 0);
        // Replaying from before the first kept record starts at the first kept record.
        assert_eq!(q.offset_since(bursts[0].0).unwrap(), first);
        for (since, range) in &bursts {
            if range.start >= first {
                assert_eq!(q.offset_since(*since).unwrap(), range.start, "after a reopen and retention");
            }
        }
        let replay = q.group("replay").unwrap();
        assert_eq!(replay.stats().ack_floor, first, "a new group starts at the first offset");
        assert_eq!(replay.stats().lag, total - first);
        replay.seek(q.offset_since(bursts[3].0).unwrap()).unwrap();
        assert_eq!(replay.poll(NO_WAIT).unwrap().unwrap().offset(), bursts[3].1.start);
        replay.seek(bursts[4].1.start + 5).unwrap();
        let d = replay.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!((d.offset(), d.attempt()), (bursts[4].1.start + 5, 1));
        replay.seek(0).unwrap(); // before the first kept: the first kept
        assert_eq!(replay.ack_floor(), first);
        assert_eq!(replay.poll(NO_WAIT).unwrap().unwrap().offset(), first);
        assert!(
            matches!(replay.ack(bursts[4].1.start + 5), Err(Error::NotDelivered { .. })),
            "seek back forgets deliveries"
        );
        assert_eq!(q.groups().unwrap(), ["analytics", "billing", "replay"]);

        // analytics is abandoned: delete it and let retention move on.
        let stale = q.group("analytics").unwrap();
        q.delete_group("analytics").unwrap();
        assert!(matches!(stale.poll(NO_WAIT), Err(Error::GroupDeleted { .. })));
        assert_eq!(q.groups().unwrap(), ["billing", "replay"]);
        replay.seek(total).unwrap();
        let before = q.first_offset();
        let report = q.enforce_retention().unwrap();
        assert!(report.segments_deleted > 0, "only billing and replay count, both done: {report:?}");
        assert!(q.first_offset() > before);
        assert_eq!(q.stats().segments, 1, "every sealed segment is consumed");
        // Re-created: starts afresh at the first offset, nothing lost.
        let analytics = q.group("analytics").unwrap();
        let s = analytics.stats();
        assert_eq!(
            (s.ack_floor, s.next_delivery, s.lost, s.dead, s.waiting),
            (q.first_offset(), q.first_offset(), 0, 0, 0)
        );
        assert_eq!(s.lag, total - q.first_offset());
        assert!(matches!(stale.ack(0), Err(Error::GroupDeleted { .. })), "the old handle stays dead");
        q.close().unwrap();
    }

    // Phase 4: size retention (no retain_until_consumed) while analytics lags: it loses
    // records and counts them.
    {
        let q = Queue::open(dir.path(), log_options().retain_bytes(3 * 4096)).unwrap();
        let analytics = q.group("analytics").unwrap();
        let floor_before = analytics.ack_floor();
        let d = analytics.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!(d.offset(), floor_before);
        let kept = q.read(floor_before).unwrap().unwrap();
        burst(&q, 200);
        assert!(q.read(floor_before).unwrap().is_none(), "deleted by retention");
        assert_eq!(d.payload(), event(floor_before).as_slice(), "a delivery stays valid after retention");
        assert_eq!(kept.payload(), event(floor_before).as_slice(), "a record stays valid after retention");
        assert!(q.stats().bytes_on_disk <= 3 * 4096 + 4096);
        let first = q.first_offset();
        assert!(first > floor_before);
        let s = analytics.stats();
        assert_eq!(s.lost, first - floor_before, "every record deleted before analytics finished it: {s:?}");
        assert_eq!(s.ack_floor, first);
        assert_eq!(s.leased, 0);
        // The lost delivery can still be acked harmlessly.
        analytics.ack(d.offset()).unwrap();
        assert_eq!(analytics.poll(NO_WAIT).unwrap().unwrap().offset(), first);
        assert_eq!(analytics.stats().lost, first - floor_before, "an ack of a lost record changes nothing");
        q.close().unwrap();
    }
}

#[test]
fn live_tail_with_next_timeout_follows_appends_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(Queue::open(dir.path(), log_options()).unwrap());
    burst(&q, 10);
    let mut tail = q.iter_from(q.next_offset());
    let t0 = Instant::now();
    assert!(tail.next_timeout(Duration::from_millis(30)).is_none());
    assert!(t0.elapsed() >= Duration::from_millis(30), "it waited for its timeout");
    let writer = {
        let q = q.clone();
        std::thread::spawn(move || {
            for i in 10..110 {
                std::thread::sleep(Duration::from_millis(1));
                assert_eq!(q.append(&event(i)).unwrap(), i);
            }
        })
    };
    let mut seen = Vec::new();
    let t0 = Instant::now();
    while seen.len() < 100 {
        assert!(t0.elapsed() < HANG);
        if let Some(r) = tail.next_timeout(HANG) {
            let r = r.unwrap();
            assert_eq!(r.payload(), event(r.offset()).as_slice());
            seen.push(r.offset());
        }
    }
    writer.join().unwrap();
    assert_eq!(seen, (10..110).collect::<Vec<_>>());
    assert_eq!(tail.next_offset(), 110);
    // Resume elsewhere from where the tail stopped.
    assert!(q.iter_from(tail.next_offset()).next().is_none());
}

// =======================================================================================
// 4. A service sharing one queue between threads: close and delete while others sleep in
//    poll / next_timeout, drop without close, errors as an operator reads them, and the
//    `segq` binary next to the live service.
// =======================================================================================

#[test]
fn close_wakes_every_sleeper_poll_poll_batch_and_next_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(Queue::open(dir.path(), Options::default()).unwrap());
    let a = q.group("a").unwrap();
    let b = q.group_with("b", GroupOptions::default().lease(Duration::from_secs(3600))).unwrap();
    q.append(b"only").unwrap();
    let held = b.poll(NO_WAIT).unwrap().unwrap(); // b has nothing more to hand out
    assert!(a.poll(NO_WAIT).unwrap().is_some()); // nor a
    let started = Arc::new(AtomicU64::new(0));
    let mut sleepers: Vec<std::thread::JoinHandle<String>> = Vec::new();
    for i in 0..2 {
        let a = a.clone();
        let started = started.clone();
        sleepers.push(std::thread::spawn(move || {
            started.fetch_add(1, Ordering::SeqCst);
            let t0 = Instant::now();
            let r = if i == 0 {
                a.poll(Duration::from_secs(600)).map(|d| d.is_some())
            } else {
                a.poll_batch(5, Duration::from_secs(600)).map(|v| !v.is_empty())
            };
            assert!(t0.elapsed() < HANG, "poll returned only after {:?}", t0.elapsed());
            format!("{r:?}")
        }));
    }
    {
        let b = b.clone();
        let started = started.clone();
        sleepers.push(std::thread::spawn(move || {
            started.fetch_add(1, Ordering::SeqCst);
            let t0 = Instant::now();
            let r = b.poll(Duration::MAX);
            assert!(t0.elapsed() < HANG, "poll(MAX) returned only after {:?}", t0.elapsed());
            format!("{:?}", r.map(|d| d.is_some()))
        }));
    }
    {
        let q = q.clone();
        let started = started.clone();
        sleepers.push(std::thread::spawn(move || {
            let mut tail = q.iter_from(q.next_offset());
            started.fetch_add(1, Ordering::SeqCst);
            let t0 = Instant::now();
            let r = tail.next_timeout(Duration::from_secs(600));
            assert!(t0.elapsed() < HANG, "next_timeout returned only after {:?}", t0.elapsed());
            format!("{:?}", r.map(|r| r.map(|r| r.offset())))
        }));
    }
    while started.load(Ordering::SeqCst) < 4 {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(200)); // let them fall asleep
    q.close().unwrap();
    let results: Vec<String> = sleepers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results[0], "Err(Closed)");
    assert_eq!(results[1], "Err(Closed)");
    assert_eq!(results[2], "Err(Closed)");
    assert_eq!(results[3], "None");
    // Everything after close fails cleanly, and the handles still answer from memory.
    assert!(matches!(a.poll(Duration::from_secs(600)), Err(Error::Closed)));
    assert!(matches!(b.extend_delivery(&held, Duration::from_secs(1)), Err(Error::Closed)));
    assert!(matches!(b.is_current(&held), Err(Error::Closed)));
    assert_eq!(b.stats().leased, 1, "stats answer with the group as it stood at the close");
    assert_eq!(q.groups().unwrap(), ["a", "b"], "groups() reads the directory only");
    assert!(matches!(q.offset_at_time(0), Err(Error::Closed)));
    assert!(matches!(q.enforce_retention(), Err(Error::Closed)));
    assert_eq!(held.payload(), b"only");
}

#[test]
fn delete_group_wakes_its_sleeping_consumers_with_group_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("doomed").unwrap();
    let other = q.group("survivor").unwrap();
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| {
            let t0 = Instant::now();
            let r = g.poll(Duration::from_secs(600));
            assert!(t0.elapsed() < HANG);
            r
        });
        let batch = s.spawn(|| g.poll_batch(3, Duration::from_secs(600)));
        std::thread::sleep(Duration::from_millis(200));
        q.delete_group("doomed").unwrap();
        assert!(matches!(sleeper.join().unwrap(), Err(Error::GroupDeleted { name }) if name == "doomed"));
        assert!(matches!(batch.join().unwrap(), Err(Error::GroupDeleted { .. })));
    });
    q.append(b"x").unwrap();
    assert_eq!(other.poll(NO_WAIT).unwrap().unwrap().offset(), 0, "other groups go on");
    assert_eq!(q.groups().unwrap(), ["survivor"]);
    assert!(!dir.path().join("groups/doomed").exists());
}

#[test]
fn dropping_the_last_arc_closes_cleanly_and_keeps_unsynced_group_work() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(8192).sync(SyncPolicy::Never);
    {
        let q = Arc::new(Queue::open(dir.path(), opts.clone()).unwrap());
        let g = q.group("w").unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        q.append(format!("t{t} i{i}").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..150 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        g.nack(d.offset(), Duration::from_secs(3600)).unwrap();
        // No close, no flush: the last Arc and the group handle just go out of scope.
    }
    let q = Queue::open(dir.path(), opts).unwrap();
    assert!(q.recovery().clean, "Dropping a queue closes it too: {:?}", q.recovery());
    assert_eq!(q.next_offset(), 400);
    let mut per_thread: HashMap<String, Vec<u64>> = HashMap::new();
    for r in q.iter_from(0) {
        let r = r.unwrap();
        let text = String::from_utf8(r.payload().to_vec()).unwrap();
        let (t, i) = text.split_once(' ').unwrap();
        per_thread.entry(t.to_string()).or_default().push(i[1..].parse().unwrap());
    }
    for (t, seq) in per_thread {
        assert_eq!(seq, (0..100).collect::<Vec<_>>(), "thread {t}'s appends are in its order");
    }
    let g = q.group("w").unwrap();
    let s = g.stats();
    assert_eq!((s.ack_floor, s.next_delivery, s.waiting, s.leased), (150, 151, 1, 0));
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 151, "the nacked record still waits its hour");
}

#[test]
fn errors_name_the_file_and_the_byte_position_for_damage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        q.append(b"first record").unwrap();
        q.append(b"second record, to be damaged").unwrap();
        q.append(b"third record").unwrap();
        q.group("w").unwrap();
        q.close().unwrap();
    }
    let seg = dir.path().join("00000000000000000000.log");
    let bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(6).position(|w| w == b"second").unwrap();
    common::flip_byte(&seg, at + 3);
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let err = q.read(1).unwrap_err();
    let Error::Corrupt { path, position, .. } = &err else { panic!("expected Corrupt, got {err:?}") };
    assert_eq!(path, &seg);
    assert!(*position as usize <= at);
    let text = err.to_string();
    assert!(text.contains(&seg.display().to_string()), "{text}");
    assert!(text.contains(&format!("at byte {position}")), "{text}");
    // Iteration reports it too and goes on with the record after it.
    let items: Vec<_> = q.iter_from(0).collect();
    assert_eq!(items.len(), 3);
    assert!(items[1].as_ref().is_err_and(|e| e.to_string().contains(&seg.display().to_string())));
    assert_eq!(items[2].as_ref().unwrap().payload(), b"third record");
    // A consumer group dead-letters it with 0 attempts and moves on.
    let g = q.group("w").unwrap();
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 0);
    assert!(matches!(g.poll(NO_WAIT), Err(Error::Corrupt { .. })));
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 2);
    let dead = g.dead_letters().unwrap();
    assert_eq!(dead.iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(), [(1, 0)]);
    // Locked names the lock file; Io names the path.
    let locked = Queue::open(dir.path(), Options::default()).unwrap_err();
    assert!(locked.to_string().contains(&dir.path().join("lock").display().to_string()), "{locked}");
    std::fs::write(dir.path().join("plain-file"), b"").unwrap();
    let io = Queue::open(dir.path().join("plain-file/q"), Options::default()).unwrap_err();
    assert!(io.to_string().contains("plain-file/q"), "{io}");
}

#[test]
fn segq_binary_next_to_a_live_service_agrees_with_the_library() {
    let _serial = process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(8192)).unwrap();
    for i in 0..120u64 {
        q.append(format!("order {i:03} {}", "x".repeat(50)).as_bytes()).unwrap();
    }
    let g = q.group_with("billing", GroupOptions::default().max_attempts(2).lease(Duration::from_secs(600))).unwrap();
    let jobs = g.poll_batch(10, NO_WAIT).unwrap();
    for j in &jobs[..5] {
        g.ack(j.offset()).unwrap();
    }
    g.ack(jobs[7].offset()).unwrap(); // out of order
    g.nack(jobs[5].offset(), Duration::from_secs(3600)).unwrap(); // waiting
    g.nack(jobs[6].offset(), NO_WAIT).unwrap();
    let again = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((again.offset(), again.attempt()), (6, 2));
    g.nack(6, NO_WAIT).unwrap(); // dead
    // 8 and 9 stay leased.
    q.group("audit").unwrap();
    let stats = g.stats();
    assert_eq!((stats.ack_floor, stats.next_delivery, stats.leased, stats.waiting, stats.dead), (5, 10, 2, 1, 1));

    let info = cli(["info", &arg(dir.path()), "--json"]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    let j = info.json();
    assert_eq!(j["next_offset"].as_u64(), Some(q.next_offset()));
    assert_eq!(j["first_offset"].as_u64(), Some(q.first_offset()));
    assert_eq!(j["clean"].as_bool(), Some(false), "open, so not clean");
    assert_eq!(j["groups"], serde_json::json!(["audit", "billing"]));

    let groups = cli(["groups", &arg(dir.path()), "billing", "--json"]);
    assert_eq!(groups.code, 0, "{}", groups.stderr);
    let j = groups.json();
    assert_eq!(j["ack_floor"].as_u64(), Some(stats.ack_floor), "{j}");
    assert_eq!(j["next_delivery"].as_u64(), Some(stats.next_delivery), "{j}");
    assert_eq!(j["lag"].as_u64(), Some(stats.lag), "{j}");
    assert_eq!(j["dead_letters"], serde_json::json!([{ "offset": 6, "attempts": 2 }]), "{j}");
    assert_eq!(j["leased"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(j["waiting"][0]["offset"].as_u64(), Some(5), "{j}");
    assert_eq!(j["max_attempts"].as_u64(), Some(2), "{j}");

    let segs = cli(["segments", &arg(dir.path()), "--json"]);
    assert_eq!(segs.code, 0, "{}", segs.stderr);
    let total: u64 = segs.json()["segments"].as_array().unwrap().iter().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(total, q.stats().records);
    assert_eq!(segs.json()["segments"].as_array().unwrap().len() as u64, q.stats().segments);

    let verify = cli(["verify", &arg(dir.path())]);
    assert_eq!(verify.code, 0, "a live queue is not damaged:\n{}{}", verify.stdout, verify.stderr);

    let dump = cli(["dump", &arg(dir.path()), "--from", "100", "--limit", "3", "--payload", "utf8", "--json"]);
    assert_eq!(dump.code, 0, "{}", dump.stderr);
    let recs = dump.json()["records"].as_array().unwrap().clone();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["offset"].as_u64(), Some(100));
    assert_eq!(recs[0]["timestamp_ms"].as_u64(), Some(q.read(100).unwrap().unwrap().timestamp_ms()));

    let repair = cli(["repair", &arg(dir.path()), "--truncate-at-first-damage", "--yes"]);
    assert_eq!(repair.code, 2, "repair refuses while a writer has the queue open: {}{}", repair.stdout, repair.stderr);
    // The service goes on as if nothing happened.
    q.append(b"after the cli").unwrap();
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 10);
    q.close().unwrap();
    let info = cli(["info", &arg(dir.path()), "--json"]).json();
    assert_eq!(info["clean"].as_bool(), Some(true));
    assert_eq!(info["next_offset"].as_u64(), Some(121));
}

// =======================================================================================
// 5. Other things a careful user tries.
// =======================================================================================

#[test]
fn stats_count_an_expired_lease_as_waiting_and_an_expired_last_lease_as_dead() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    q.append_batch(&[b"a".as_slice(), b"b"]).unwrap();
    let g = q.group_with("w", GroupOptions::default().lease(Duration::from_millis(5)).max_attempts(2)).unwrap();
    let a = g.poll(NO_WAIT).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let s = g.stats();
    // GroupStats::waiting: "Records waiting for a retry (after a nack or an expired lease)".
    assert_eq!((s.leased, s.waiting, s.lag, s.dead), (0, 1, 2, 0), "{s:?}");
    assert!(g.is_current(&a).unwrap(), "ran out, but nobody took it yet");
    let a2 = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((a2.offset(), a2.attempt()), (0, 2));
    std::thread::sleep(Duration::from_millis(50));
    // Its last allowed lease ran out: dead, as dead_letters() would say.
    let s = g.stats();
    assert_eq!((s.leased, s.waiting, s.dead, s.ack_floor, s.lag), (0, 0, 1, 1, 1), "{s:?}");
    assert_eq!(g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(), [(0, 2)]);
    // Acking a dead letter takes it out of the dead letters.
    g.ack(0).unwrap();
    assert!(g.dead_letters().unwrap().is_empty());
    assert_eq!(g.stats().dead, 0);
}

#[test]
fn a_dead_letter_deleted_by_size_retention_is_lost_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let q =
        Queue::open(dir.path(), Options::default().segment_bytes(4096).retain_bytes(2 * 4096).sync(SyncPolicy::Never))
            .unwrap();
    q.append(&[1; 3000]).unwrap();
    let g = q.group_with("w", GroupOptions::default().max_attempts(1)).unwrap();
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    g.nack(d.offset(), NO_WAIT).unwrap();
    assert_eq!(g.dead_letters().unwrap().len(), 1);
    for _ in 0..4 {
        q.append(&[2; 3000]).unwrap(); // one record per segment
    }
    assert!(q.first_offset() > 0);
    assert!(g.dead_letters().unwrap().is_empty(), "its record is gone");
    let s = g.stats();
    assert_eq!(s.dead, 0);
    assert_eq!(s.lost, q.first_offset(), "{s:?}");
    assert!(!g.redrive(0).unwrap(), "nothing to redrive");
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), q.first_offset());
}

#[test]
fn seek_back_forgets_dead_letters_at_or_above_and_keeps_those_below() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    for i in 0..6u8 {
        q.append(&[i]).unwrap();
    }
    let g = q.group_with("w", GroupOptions::default().max_attempts(2)).unwrap();
    while let Some(d) = g.poll(NO_WAIT).unwrap() {
        if d.offset() == 1 || d.offset() == 4 {
            g.nack(d.offset(), NO_WAIT).unwrap();
        } else {
            g.ack(d.offset()).unwrap();
        }
    }
    assert_eq!(g.dead_letters().unwrap().iter().map(|d| d.offset()).collect::<Vec<_>>(), [1, 4]);
    g.seek(3).unwrap();
    assert_eq!(g.dead_letters().unwrap().iter().map(|d| d.offset()).collect::<Vec<_>>(), [1]);
    let again: Vec<(u64, u32)> =
        std::iter::from_fn(|| g.poll(NO_WAIT).unwrap()).map(|d| (d.offset(), d.attempt())).collect();
    assert_eq!(again, [(3, 1), (4, 1), (5, 1)]);
    q.flush().unwrap();
    drop(g);
    q.close().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("w").unwrap();
    assert_eq!(g.dead_letters().unwrap().iter().map(|d| d.offset()).collect::<Vec<_>>(), [1]);
    assert_eq!(g.stats().leased, 0);
    // The three leased at the close come back at once, with their next attempt.
    let back: Vec<(u64, u32)> =
        std::iter::from_fn(|| g.poll(NO_WAIT).unwrap()).map(|d| (d.offset(), d.attempt())).collect();
    assert_eq!(back, [(3, 2), (4, 2), (5, 2)]);
    // Their last allowed leases: once those end (at the next reopen), they are dead.
    drop(g);
    q.close().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("w").unwrap();
    assert_eq!(
        g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(),
        [(1, 2), (3, 2), (4, 2), (5, 2)]
    );
    assert_eq!(g.stats().dead, 4);
    assert_eq!(g.ack_floor(), 6);
}

#[test]
fn segment_size_changes_across_reopens_and_oversized_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let sizes = [4096u64, 1 << 20, 4096, 65536, 4096];
    for (round, &size) in sizes.iter().enumerate() {
        let q = Queue::open(dir.path(), Options::default().segment_bytes(size).sync(SyncPolicy::Never)).unwrap();
        assert_eq!(q.next_offset(), expected.len() as u64, "round {round}");
        let g = q.group("w").unwrap();
        for i in 0..50u64 {
            let len = if i == 25 { 20_000 } else { 100 + (i as usize * 13) % 300 };
            let p: Vec<u8> = (0..len).map(|j| (j as u64 + i + round as u64) as u8).collect();
            q.append(&p).unwrap();
            expected.push(p);
        }
        // A batch bigger than a small segment gets a segment of its own.
        let big: Vec<Vec<u8>> = (0..3).map(|k| vec![k as u8 + round as u8; 3000]).collect();
        let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
        q.append_batch(&refs).unwrap();
        expected.extend(big);
        while let Some(d) = g.poll(NO_WAIT).unwrap() {
            assert_eq!(d.payload(), expected[d.offset() as usize].as_slice());
            g.ack(d.offset()).unwrap();
        }
        assert_eq!(g.ack_floor(), expected.len() as u64);
        if round % 2 == 0 {
            q.close().unwrap();
        } // else: dropped without close
    }
    let q = Queue::open(dir.path(), Options::default().segment_bytes(4096)).unwrap();
    common::assert_holds(&q, &expected);
    drop(q);
    let verify = cli(["verify", &arg(dir.path())]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
}

#[test]
fn group_with_on_a_busy_group_lowers_max_attempts_for_records_already_retried() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    q.append(b"job").unwrap();
    let g = q.group_with("w", GroupOptions::default().max_attempts(5)).unwrap();
    for attempt in 1..=3 {
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!(d.attempt(), attempt);
        g.nack(0, NO_WAIT).unwrap();
    }
    // An operator lowers the limit to 2: the record had 3 deliveries already.
    let again = q.group_with("w", GroupOptions::default().max_attempts(2)).unwrap();
    assert_eq!(g.options().get_max_attempts(), 2, "handles share the settings");
    assert!(again.poll(NO_WAIT).unwrap().is_none(), "out of attempts: dead, not delivered a 4th time");
    assert_eq!(g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(), [(0, 3)]);
}

/// One job left open (nacked for an hour) while 70,000 later ones are acked: past the
/// group's 2^16-slot window. Everything the docs say about the floor, lag, retention and the
/// CLI still holds, across a reopen.
#[test]
fn one_job_open_while_seventy_thousand_after_it_are_acked() {
    const N: u64 = 70_000;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(256 << 10).sync(SyncPolicy::Never).retain_until_consumed(true);
    {
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        let g = q.group_with("w", GroupOptions::default().max_attempts(3)).unwrap();
        let payloads: Vec<Vec<u8>> = (0..N).map(|i| format!("{i}").into_bytes()).collect();
        for chunk in payloads.chunks(1000) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            q.append_batch(&refs).unwrap();
        }
        let first = g.poll(NO_WAIT).unwrap().unwrap();
        g.nack(first.offset(), Duration::from_secs(3600)).unwrap();
        // A dead letter deep in the middle, then redriven after the window moved past it.
        loop {
            let batch = g.poll_batch(512, NO_WAIT).unwrap();
            if batch.is_empty() {
                break;
            }
            let mut acks = Vec::new();
            for d in batch {
                if d.offset() == 100 {
                    g.nack(100, NO_WAIT).unwrap();
                } else {
                    acks.push(d.offset());
                }
            }
            g.ack_batch(&acks).unwrap();
        }
        let s = g.stats();
        assert_eq!(s.dead, 1, "{s:?}");
        assert_eq!((s.ack_floor, s.next_delivery, s.waiting, s.leased, s.lag), (0, N, 1, 0, 1), "{s:?}");
        assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0, "offset 0 is still needed");
        assert!(g.redrive(100).unwrap());
        let s = g.stats();
        assert_eq!((s.ack_floor, s.waiting, s.dead, s.lag), (0, 2, 0, 2), "{s:?}");
        let r = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!((r.offset(), r.attempt()), (100, 1));
        assert!(g.poll(NO_WAIT).unwrap().is_none());
        q.close().unwrap();
    }
    let live = cli(["groups", &arg(dir.path()), "w", "--json"]);
    assert_eq!(live.code, 0, "{}", live.stderr);
    let j = live.json();
    assert_eq!(j["ack_floor"].as_u64(), Some(0), "{j}");
    assert_eq!(j["next_delivery"].as_u64(), Some(N), "{j}");
    assert_eq!(j["lag"].as_u64(), Some(2), "{j}");
    {
        let q = Queue::open(dir.path(), opts).unwrap();
        let g = q.group("w").unwrap();
        let s = g.stats();
        assert_eq!((s.ack_floor, s.next_delivery, s.waiting, s.leased, s.dead, s.lag), (0, N, 2, 0, 0, 2), "{s:?}");
        // 100's lease ended with the close: due again at once, with its next attempt.
        let r = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!((r.offset(), r.attempt()), (100, 2));
        g.ack(100).unwrap();
        assert_eq!(g.ack_floor(), 0);
        g.ack(0).unwrap();
        assert_eq!(g.ack_floor(), N);
        assert_eq!(g.stats().lag, 0);
        assert!(q.enforce_retention().unwrap().segments_deleted > 0);
        q.close().unwrap();
    }
}

#[test]
fn dropping_the_queue_wakes_group_handles_sleeping_on_other_threads() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("w").unwrap();
    let sleeper = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = g.poll(Duration::from_secs(600));
        (t0.elapsed(), format!("{:?}", r.map(|d| d.is_some())), g)
    });
    std::thread::sleep(Duration::from_millis(200));
    drop(q);
    let (took, result, g) = sleeper.join().unwrap();
    assert!(took < HANG, "{took:?}");
    assert_eq!(result, "Err(Closed)");
    // A new queue on the same directory is not touched by the old handle.
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    q.append(b"new").unwrap();
    let fresh = q.group("w").unwrap();
    let d = fresh.poll(NO_WAIT).unwrap().unwrap();
    assert!(matches!(g.ack(d.offset()), Err(Error::Closed)));
    assert!(matches!(g.seek(5), Err(Error::Closed)));
    assert!(fresh.is_current(&d).unwrap());
    assert!(!g.is_current(&d).unwrap_or(false));
    assert_eq!(fresh.stats().leased, 1);
}

/// A long-lived reader service over a log of ~750 small segments: more than the queue keeps
/// mapped at once. A live iterator, random reads by offset and a consumer group all run
/// side by side with the appender, and `Stats::bytes_on_disk` matches the files.
#[test]
fn readers_iterators_and_a_group_over_hundreds_of_segments() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(
        dir.path(),
        Options::default().segment_bytes(4096).index_interval_bytes(512).sync(SyncPolicy::Never),
    )
    .unwrap();
    const N: u64 = 3000;
    let rec = |i: u64| -> Vec<u8> {
        let mut p = format!("segment-heavy {i} ").into_bytes();
        p.resize(900 + (i % 7) as usize * 10, (i % 251) as u8);
        p
    };
    let g = q.group("w").unwrap();
    let appended = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..N {
                assert_eq!(q.append(&rec(i)).unwrap(), i);
                appended.store(i + 1, Ordering::Release);
            }
        });
        // Live iterator.
        s.spawn(|| {
            let mut it = q.iter_from(0);
            let mut next = 0;
            let mut kept = Vec::new();
            while next < N {
                match it.next_timeout(HANG) {
                    Some(r) => {
                        let r = r.unwrap();
                        assert_eq!(r.offset(), next);
                        assert_eq!(r.payload(), rec(next).as_slice());
                        if next % 97 == 0 {
                            kept.push(r);
                        }
                        next += 1;
                    }
                    None => panic!("the live iterator waited 30 s at {next}"),
                }
            }
            for r in kept {
                assert_eq!(r.payload(), rec(r.offset()).as_slice(), "a kept record stays valid");
            }
        });
        // Random reads.
        s.spawn(|| {
            let mut x = 12345u64;
            let mut done = 0;
            while done < 20_000 {
                let upto = appended.load(Ordering::Acquire);
                if upto == 0 {
                    continue;
                }
                x = common::mix(x);
                let o = x % upto;
                let r = q.read(o).unwrap().unwrap_or_else(|| panic!("offset {o} below {upto} not found"));
                assert_eq!(r.payload(), rec(o).as_slice());
                done += 1;
            }
        });
        // A group consumer.
        s.spawn(|| {
            let mut got = 0;
            while got < N {
                let batch = g.poll_batch(50, HANG).unwrap();
                assert!(!batch.is_empty(), "poll_batch waited 30 s at {got}");
                for d in &batch {
                    assert_eq!(d.offset(), got);
                    assert_eq!(d.payload(), rec(got).as_slice());
                    got += 1;
                }
                g.ack_batch(&batch.iter().map(|d| d.offset()).collect::<Vec<_>>()).unwrap();
            }
        });
    });
    assert_eq!(g.ack_floor(), N);
    // Waits for a seal still running in the background (which cuts the file to its data).
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0);
    let stats = q.stats();
    assert!(stats.segments > 600, "{stats:?}");
    let on_disk: u64 = common::segment_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(stats.bytes_on_disk, on_disk, "Stats::bytes_on_disk: bytes the segment files take");
    assert_eq!(stats.segments, common::segment_files(dir.path()).len() as u64);
    q.close().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(4096)).unwrap();
    let on_disk: u64 = common::segment_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(q.stats().bytes_on_disk, on_disk, "after a reopen");
    assert_eq!(q.stats().records, N);
}

/// `Queue::iter_from`: "Once the queue is closed the iterator yields nothing more (no
/// Error::Closed)", also for an iterator part way through a segment whose next records it
/// has already checked.
#[test]
fn an_iterator_part_way_yields_nothing_once_the_queue_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    for i in 0..100u32 {
        q.append(&i.to_le_bytes()).unwrap();
    }
    let mut owned = q.iter_from(0);
    let mut borrowed = q.iter_from(0);
    for _ in 0..10 {
        owned.next().unwrap().unwrap();
        borrowed.next_ref().unwrap().unwrap();
    }
    let mut waiting = q.iter_from(0);
    for _ in 0..100 {
        waiting.next().unwrap().unwrap();
    }
    q.close().unwrap();
    assert!(owned.next().is_none(), "owned iterator after close");
    assert!(borrowed.next_ref().is_none(), "borrowing iterator after close");
    let t0 = Instant::now();
    assert!(waiting.next_timeout(Duration::from_secs(600)).is_none());
    assert!(t0.elapsed() < HANG);
    assert!(q.iter_from(50).next().is_none());
}

/// A consumer service that is down (its group exists on disk but is not opened in this
/// process) holds back `retain_until_consumed`; under size retention it counts what it
/// lost once it is opened again.
#[test]
fn a_group_not_opened_in_this_process_holds_retention_and_counts_losses_later() {
    let dir = tempfile::tempdir().unwrap();
    let consumed = || Options::default().segment_bytes(4096).sync(SyncPolicy::Never).retain_until_consumed(true);
    {
        let q = Queue::open(dir.path(), consumed()).unwrap();
        q.group("slow").unwrap();
        q.group("fast").unwrap();
        q.close().unwrap();
    }
    {
        let q = Queue::open(dir.path(), consumed()).unwrap();
        let fast = q.group("fast").unwrap();
        for _ in 0..6 {
            q.append(&[3; 3000]).unwrap(); // one record per segment
        }
        while let Some(d) = fast.poll(NO_WAIT).unwrap() {
            fast.ack(d.offset()).unwrap();
        }
        assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0, "slow has acked nothing");
        assert_eq!(q.first_offset(), 0);
        q.close().unwrap();
    }
    {
        // Size retention now, still without opening "slow".
        let q = Queue::open(
            dir.path(),
            Options::default().segment_bytes(4096).sync(SyncPolicy::Never).retain_bytes(2 * 4096),
        )
        .unwrap();
        let report = q.enforce_retention().unwrap();
        assert!(report.segments_deleted > 0);
        let first = q.first_offset();
        assert!(first > 0);
        q.close().unwrap();
        // The operator looks first: the binary says what the queue will find.
        let run = cli(["groups", &arg(dir.path()), "slow", "--json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let j = run.json();
        assert_eq!((j["ack_floor"].as_u64(), j["lost"].as_u64()), (Some(first), Some(first)), "{j}");
        let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
        let slow = q.group("slow").unwrap();
        let s = slow.stats();
        assert_eq!((s.ack_floor, s.lost, s.next_delivery), (first, first, first), "{s:?}");
        assert_eq!(slow.poll(NO_WAIT).unwrap().unwrap().offset(), first);
        let fast = q.group("fast").unwrap();
        assert_eq!(fast.stats().lost, 0, "fast had acked everything");
    }
}

/// Many threads of a service ask for the same new group at once: one group, each record
/// delivered once.
#[test]
fn threads_racing_to_create_one_group_share_it() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    for i in 0..400u32 {
        q.append(&i.to_le_bytes()).unwrap();
    }
    let delivered = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let g = q.group("new").unwrap();
                while let Some(d) = g.poll(NO_WAIT).unwrap() {
                    delivered.lock().unwrap().push(d.offset());
                    g.ack(d.offset()).unwrap();
                }
            });
        }
    });
    let mut d = delivered.into_inner().unwrap();
    d.sort_unstable();
    assert_eq!(d, (0..400).collect::<Vec<_>>());
    assert_eq!(q.groups().unwrap(), ["new"]);
    assert_eq!(q.group("new").unwrap().ack_floor(), 400);
}

/// Deliveries whose attempt numbers repeat (a redrive starts them over, a seek forgets
/// them, another group has its own): only the newest holds the lease.
#[test]
fn only_the_newest_delivery_is_current_when_attempt_numbers_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    q.append_batch(&[b"a".as_slice(), b"b"]).unwrap();
    let g = q.group_with("w", GroupOptions::default().max_attempts(1)).unwrap();
    let other = q.group_with("other", GroupOptions::default().max_attempts(1)).unwrap();
    let d1 = g.poll(NO_WAIT).unwrap().unwrap();
    let o1 = other.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d1.offset(), d1.attempt(), o1.offset(), o1.attempt()), (0, 1, 0, 1));
    assert!(!g.is_current(&o1).unwrap(), "a delivery of another group");
    assert!(!g.nack_delivery(&o1, NO_WAIT).unwrap());
    assert!(g.is_current(&d1).unwrap());
    g.nack(0, NO_WAIT).unwrap(); // its only attempt: dead
    assert!(g.redrive(0).unwrap());
    let d2 = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d2.offset(), d2.attempt()), (0, 1));
    assert!(!g.is_current(&d1).unwrap(), "from before the redrive");
    assert!(!g.extend_delivery(&d1, Duration::from_secs(1)).unwrap());
    assert!(!g.nack_delivery(&d1, NO_WAIT).unwrap());
    assert!(g.is_current(&d2).unwrap());
    assert!(g.dead_letters().unwrap().is_empty(), "d1's nack changed nothing");
    // And once more round.
    assert!(g.nack_delivery(&d2, NO_WAIT).unwrap());
    assert!(g.redrive(0).unwrap());
    let d3 = g.poll(NO_WAIT).unwrap().unwrap();
    assert!(!g.is_current(&d2).unwrap() && !g.is_current(&d1).unwrap() && g.is_current(&d3).unwrap());
    // A seek starts a new epoch: nothing from before is current.
    g.seek(0).unwrap();
    let d4 = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d4.offset(), d4.attempt()), (0, 1));
    assert!(!g.is_current(&d3).unwrap() && g.is_current(&d4).unwrap());
    // Across a reopen, nothing from the earlier open is current.
    q.close().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("w").unwrap();
    assert!(!g.is_current(&d4).unwrap());
    assert!(!g.nack_delivery(&d4, NO_WAIT).unwrap());
    // d4 was the last allowed attempt: its lease ended at the close, so it is dead now.
    assert_eq!(g.dead_letters().unwrap().len(), 1);
}
