//! Crash loop: a child process appends (single records and batches) under each sync policy
//! while consumer-group workers poll, ack and nack (one by one, and in batches), and the
//! parent kills it with SIGKILL at random moments, many times in a row on the same
//! directory. After every kill:
//!
//! - the directory opens without error;
//! - offsets are contiguous from `first_offset`, every record is one the child wrote, and
//!   no batch is kept in part;
//! - every append that returned is there with its exact bytes;
//! - no record whose ack returned is delivered again in that group;
//! - a record's attempt count never goes down, and never passes `max_attempts`.
//!
//! The child prints one line per event, after the call returned:
//! `appended <offset> <len> <seed>`, `delivered <group> <offset> <attempt> <start> <end>`,
//! `acked <group> <offset> <at>`. `<start>`, `<end>` and `<at>` come from one counter of the
//! child, taken before `poll` was called, after it returned and after `ack` returned: a
//! delivery whose `<start>` is above an ack's `<at>` began after that ack had returned.
//!
//! CI runs about 50 kills. `SEGQ_CRASH_KILLS=2000 cargo test --release --test crash_loop --
//! --nocapture` runs the long version; `SEGQ_CRASH_SEED` replays a seed (the kill moments
//! still depend on timing).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Rng, check_tagged_log, child_test, copy_tree, mix, process_lock, tagged, test_seed, untag};
use segq::{Group, GroupOptions, Options, Queue, SyncPolicy};

const CHILD: &str = "crash_loop_child";
const ENV_DIR: &str = "SEGQ_CRASH_LOOP_DIR";
const ENV_SYNC: &str = "SEGQ_CRASH_LOOP_SYNC";
const ENV_RUN: &str = "SEGQ_CRASH_LOOP_RUN";
const ENV_KILLS: &str = "SEGQ_CRASH_KILLS";
const ENV_SEED: &str = "SEGQ_CRASH_SEED";

/// Kills in CI, spread over the three policies.
const SHORT_KILLS: u64 = 48;
/// In the long run, a fresh directory after this many kills keeps the log (and the checks
/// after each kill) small.
const LONG_CHAIN: u64 = 40;

const POLICIES: [&str; 3] = ["always", "interval", "never"];
const GROUPS: [&str; 2] = ["g0", "g1"];
const WORKERS_PER_GROUP: u64 = 2;
const APPENDERS: u64 = 2;
const MAX_ATTEMPTS: u32 = 4;
const LEASE: Duration = Duration::from_millis(100);
/// A child that is never killed stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// Deliveries the parent takes from each group of a copy after a kill.
const CHECK_POLLS: usize = 400;

const SIGKILL: i32 = 9;

fn policy(name: &str) -> SyncPolicy {
    match name {
        "always" => SyncPolicy::Always,
        "interval" => SyncPolicy::Interval(Duration::from_millis(3)),
        "never" => SyncPolicy::Never,
        other => panic!("unknown sync policy {other}"),
    }
}

fn options(sync: SyncPolicy) -> Options {
    Options::default().segment_bytes(64 << 10).index_interval_bytes(1024).sync(sync)
}

fn group_options() -> GroupOptions {
    GroupOptions::default().lease(LEASE).max_attempts(MAX_ATTEMPTS)
}

// ---------------------------------------------------------------------------------------
// The child.

/// Writes whole lines to stdout, one `write` per call, so that a kill can only cut the last.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).unwrap();
    out.flush().unwrap();
}

/// Run in a child process by [`sigkill_at_random_moments_loses_nothing_acknowledged`];
/// does nothing when run on its own.
#[test]
#[ignore = "child process of sigkill_at_random_moments_loses_nothing_acknowledged"]
fn crash_loop_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else { return };
    let sync = policy(&std::env::var(ENV_SYNC).unwrap());
    let run: u64 = std::env::var(ENV_RUN).unwrap().parse().unwrap();
    // A panic on any thread is a failure the parent must see: not a silently dead worker.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("crash_loop child failed: {info}");
        std::process::abort();
    }));
    // libtest may have printed part of a line already.
    emit("\n");
    // Every other run busy-waits for group commits: how waiters wait must not change what
    // survives a kill.
    let q = Queue::open(&dir, options(sync).busy_wait_for_sync(run % 2 == 1)).unwrap();
    emit(&format!("opened {} {}\n", q.first_offset(), q.next_offset()));
    let groups: Vec<Group> = GROUPS.iter().map(|name| q.group_with(name, group_options()).unwrap()).collect();
    let clock = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..APPENDERS {
            let (q, stop) = (&q, &stop);
            s.spawn(move || appender(q, run, t, stop));
        }
        for (gi, g) in groups.iter().enumerate() {
            for w in 0..WORKERS_PER_GROUP {
                let (clock, stop) = (&clock, &stop);
                let seed = mix(run << 16 | (gi as u64) << 8 | w);
                // One worker of each group takes and acks in batches.
                let batched = w % 2 == 1;
                s.spawn(move || worker(g, GROUPS[gi], seed, batched, clock, stop));
            }
        }
        std::thread::sleep(CHILD_LIFETIME);
        stop.store(true, Ordering::Relaxed);
    });
    q.close().unwrap();
    emit("done\n");
}

/// Appends tagged records, alone or in batches of up to 8, and reports each offset once the
/// call has returned.
fn appender(q: &Queue, run: u64, thread: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(mix(run << 8 | thread));
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let count = if rng.chance(70) { 1 } else { rng.range(2..9) as u16 };
        // Unique across runs, threads and calls; the batch's records take seed + index.
        let seed = run << 40 | thread << 36 | counter << 5;
        counter += 1;
        let payloads: Vec<Vec<u8>> = (0..count).map(|i| tagged(seed + u64::from(i), i, count)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let first = if count == 1 && rng.chance(50) {
            q.append(&payloads[0]).unwrap()
        } else {
            let range = q.append_batch(&refs).unwrap();
            assert_eq!(range.end - range.start, u64::from(count));
            range.start
        };
        let mut lines = String::new();
        for (i, p) in payloads.iter().enumerate() {
            lines += &format!("appended {} {} {}\n", first + i as u64, p.len(), seed + i as u64);
        }
        emit(&lines);
        std::thread::sleep(Duration::from_micros(rng.below(400)));
    }
}

/// Polls, checks what it got, then acks (mostly), nacks or lets the lease run out. A
/// `batched` worker takes up to 8 records with `poll_batch`, and acks and nacks them with
/// one `ack_batch` and one `nack_batch`.
fn worker(g: &Group, name: &str, seed: u64, batched: bool, clock: &AtomicU64, stop: &AtomicBool) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let start = clock.fetch_add(1, Ordering::SeqCst);
        let deliveries = if batched {
            g.poll_batch(rng.range(1..9) as usize, Duration::from_millis(20)).unwrap()
        } else {
            g.poll(Duration::from_millis(20)).unwrap().into_iter().collect()
        };
        if deliveries.is_empty() {
            continue;
        }
        let end = clock.fetch_add(1, Ordering::SeqCst);
        let mut lines = String::new();
        for d in &deliveries {
            let offset = d.offset();
            if let Err(e) = untag(d.payload()) {
                panic!("group {name} delivered record {offset} with a wrong payload: {e}");
            }
            lines += &format!("delivered {name} {offset} {} {start} {end}\n", d.attempt());
        }
        emit(&lines);
        let (mut acks, mut nacks) = (Vec::new(), Vec::new());
        for d in &deliveries {
            let offset = d.offset();
            match rng.below(100) {
                0..80 if batched => acks.push(offset),
                0..80 => {
                    g.ack(offset).unwrap();
                    let at = clock.fetch_add(1, Ordering::SeqCst);
                    emit(&format!("acked {name} {offset} {at}\n"));
                }
                80..92 if batched => nacks.push(offset),
                80..92 => {
                    g.nack(offset, Duration::from_millis(rng.below(10))).unwrap();
                    emit(&format!("nacked {name} {offset}\n"));
                }
                // Let the lease expire: another worker gets it again.
                _ => {}
            }
        }
        if !acks.is_empty() {
            g.ack_batch(&acks).unwrap();
            let at = clock.fetch_add(1, Ordering::SeqCst);
            emit(&acks.iter().map(|offset| format!("acked {name} {offset} {at}\n")).collect::<String>());
        }
        if !nacks.is_empty() {
            g.nack_batch(&nacks, Duration::from_millis(rng.below(10))).unwrap();
            emit(&nacks.iter().map(|offset| format!("nacked {name} {offset}\n")).collect::<String>());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parent.

/// One line of the child's output.
#[derive(Debug)]
enum Event {
    Appended { offset: u64, len: usize, seed: u64 },
    Delivered { group: usize, offset: u64, attempt: u32, start: u64, end: u64 },
    Acked { group: usize, offset: u64, at: u64 },
}

fn group_index(name: &str) -> usize {
    GROUPS.iter().position(|g| *g == name).unwrap_or_else(|| panic!("unknown group {name}"))
}

fn parse(line: &str) -> Option<Event> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> u64 { words[i].parse().unwrap_or_else(|_| panic!("bad line {line:?}")) };
    match words.first().copied() {
        Some("appended") => Some(Event::Appended { offset: num(1), len: num(2) as usize, seed: num(3) }),
        Some("delivered") => Some(Event::Delivered {
            group: group_index(words[1]),
            offset: num(2),
            attempt: num(3) as u32,
            start: num(4),
            end: num(5),
        }),
        Some("acked") => Some(Event::Acked { group: group_index(words[1]), offset: num(2), at: num(3) }),
        _ => None,
    }
}

/// One delivery as the child saw it: `(attempt, start, end)`.
type Attempt = (u32, u64, u64);

/// What one child said before it died.
struct RunOutput {
    /// Complete lines only: a line cut by the kill is dropped.
    lines: Vec<String>,
    stderr: String,
    killed: bool,
}

/// Starts a child on `dir`, kills it after `delay` and collects what it printed.
fn run_child(dir: &Path, sync: &str, run: u64, delay: Duration) -> RunOutput {
    let mut child = child_test(
        CHILD,
        &[(ENV_DIR, dir.display().to_string()), (ENV_SYNC, sync.to_string()), (ENV_RUN, run.to_string())],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') {
                lines.push(std::mem::take(&mut line));
            }
        }
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    std::thread::sleep(delay);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let lines = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let killed = status.signal() == Some(SIGKILL);
    assert!(
        killed || status.success(),
        "run {run} ({sync}): the child died by itself ({status}) before it was killed:\n{stderr}"
    );
    RunOutput { lines, stderr, killed }
}

/// One directory that children are started on, killed and checked, again and again.
struct Chain {
    dir: PathBuf,
    tmp: tempfile::TempDir,
    sync: &'static str,
    /// Every append that returned, in any run: offset → (payload length, seed).
    appended: HashMap<u64, (usize, u64)>,
    /// `(group, offset)` whose ack returned in an earlier run.
    acked: HashSet<(usize, u64)>,
    /// Highest attempt delivered in earlier runs, by `(group, offset)`.
    attempts: HashMap<(usize, u64), u32>,
    runs: u64,
}

/// Totals over the whole test, for the summary line.
#[derive(Default, Debug)]
struct Totals {
    kills: u64,
    finished_alone: u64,
    appends: u64,
    deliveries: u64,
    acks: u64,
    checked_copies: u64,
    checked_in_place: u64,
    copy_deliveries: u64,
    max_records: u64,
}

impl Chain {
    fn new(sync: &'static str) -> Chain {
        let keep = tempfile::tempdir().unwrap();
        Chain {
            dir: keep.path().join("q"),
            tmp: keep,
            sync,
            appended: HashMap::new(),
            acked: HashSet::new(),
            attempts: HashMap::new(),
            runs: 0,
        }
    }

    /// Runs one child, kills it at a random moment and checks everything.
    fn kill_once(&mut self, rng: &mut Rng, run: u64, totals: &mut Totals) -> Result<(), String> {
        // Some kills land while the child is still starting or recovering.
        let delay = if rng.chance(15) { rng.below(40) } else { rng.range(40..350) };
        let out = run_child(&self.dir, self.sync, run, Duration::from_millis(delay));
        totals.kills += u64::from(out.killed);
        totals.finished_alone += u64::from(!out.killed);
        self.runs += 1;
        let max_delivered = self.check_run(&out, totals).map_err(|e| format!("{e}\nchild stderr:\n{}", out.stderr))?;
        // Mostly on a copy, so that the next child recovers from the crash itself; now and
        // then in place, so that it starts from a queue the parent reopened and closed.
        let in_place = rng.chance(20);
        self.check_dir(in_place, max_delivered, totals)
    }

    /// The checks that need only the child's output; returns the highest offset delivered.
    fn check_run(&mut self, out: &RunOutput, totals: &mut Totals) -> Result<Option<u64>, String> {
        let events: Vec<Event> = out.lines.iter().filter_map(|l| parse(l)).collect();
        let mut deliveries: HashMap<(usize, u64), Vec<Attempt>> = HashMap::new();
        let mut acks: HashMap<(usize, u64), u64> = HashMap::new();
        let mut max_delivered = None;
        for e in &events {
            match *e {
                Event::Appended { offset, len, seed } => {
                    totals.appends += 1;
                    if let Some(old) = self.appended.insert(offset, (len, seed)) {
                        return Err(format!("offset {offset} was handed out twice: {old:?}, then {:?}", (len, seed)));
                    }
                }
                Event::Delivered { group, offset, attempt, start, end } => {
                    totals.deliveries += 1;
                    deliveries.entry((group, offset)).or_default().push((attempt, start, end));
                    max_delivered = max_delivered.max(Some(offset));
                }
                Event::Acked { group, offset, at } => {
                    totals.acks += 1;
                    let first = acks.entry((group, offset)).or_insert(at);
                    *first = (*first).min(at);
                }
            }
        }
        for (&(group, offset), list) in &deliveries {
            let g = GROUPS[group];
            if self.acked.contains(&(group, offset)) {
                return Err(format!("{g}: record {offset} was acked in an earlier run and delivered again"));
            }
            let before = self.attempts.get(&(group, offset)).copied().unwrap_or(0);
            for &(attempt, start, _) in list {
                if attempt <= before || attempt > MAX_ATTEMPTS {
                    return Err(format!(
                        "{g}: record {offset} delivered with attempt {attempt}; earlier runs reached {before}, \
                         the limit is {MAX_ATTEMPTS}"
                    ));
                }
                if let Some(&at) = acks.get(&(group, offset))
                    && start > at
                {
                    return Err(format!("{g}: record {offset} was delivered again (attempt {attempt}) after its ack"));
                }
            }
            for a in list {
                for b in list {
                    if b.1 > a.2 && b.0 <= a.0 {
                        return Err(format!(
                            "{g}: record {offset} was delivered with attempt {}, then with attempt {}",
                            a.0, b.0
                        ));
                    }
                }
            }
        }
        for ((group, offset), list) in deliveries {
            let top = list.iter().map(|d| d.0).max().unwrap();
            let slot = self.attempts.entry((group, offset)).or_insert(0);
            *slot = (*slot).max(top);
        }
        self.acked.extend(acks.into_keys());
        Ok(max_delivered)
    }

    /// Opens the directory (or a copy) and checks the log and the groups.
    fn check_dir(&mut self, in_place: bool, max_delivered: Option<u64>, totals: &mut Totals) -> Result<(), String> {
        if !self.dir.exists() {
            // Killed before it created the directory: nothing can have been acknowledged.
            return if self.appended.is_empty() { Ok(()) } else { Err("the queue directory is gone".into()) };
        }
        let copy = tempfile::tempdir().unwrap();
        let target = if in_place {
            totals.checked_in_place += 1;
            self.dir.clone()
        } else {
            totals.checked_copies += 1;
            copy_tree(&self.dir, copy.path());
            copy.path().to_path_buf()
        };
        // The sync policy is not stored; checking under `Never` saves a sync per poll.
        let q = Queue::open(&target, options(SyncPolicy::Never)).map_err(|e| format!("open failed: {e}"))?;
        let (first, next) = (q.first_offset(), q.next_offset());
        if first != 0 {
            return Err(format!("first offset is {first}, not 0 (nothing deletes records here)"));
        }
        totals.max_records = totals.max_records.max(next);
        let seeds = check_tagged_log(&q)?;
        for (&offset, &(len, seed)) in &self.appended {
            let Some(&found) = seeds.get(offset as usize) else {
                return Err(format!("record {offset} was appended but the queue ends at {next}"));
            };
            if found != seed {
                return Err(format!("record {offset} has seed {found:#x}, {seed:#x} was appended there"));
            }
            // The same record through `read` (index lookup) rather than iteration.
            let rec = q.read(offset).map_err(|e| format!("read {offset}: {e}"))?.ok_or("read gave None")?;
            let (read_seed, _, _) = untag(rec.payload()).map_err(|e| format!("read {offset}: {e}"))?;
            if read_seed != seed || rec.payload().len() != len {
                return Err(format!(
                    "read {offset}: {} bytes of seed {read_seed:#x}, {len} of {seed:#x} were appended",
                    rec.payload().len()
                ));
            }
        }
        if let Some(o) = max_delivered.filter(|&o| o >= next) {
            return Err(format!("record {o} was delivered but the queue ends at {next}"));
        }
        let present = q.groups().map_err(|e| e.to_string())?;
        for (gi, name) in GROUPS.iter().enumerate() {
            if !present.iter().any(|p| p == name) {
                continue;
            }
            let g = q.group(name).map_err(|e| format!("open group {name}: {e}"))?;
            let st = g.stats();
            if st.ack_floor > next || st.next_delivery > next || st.lost != 0 {
                return Err(format!("{name}: stats out of range for a log of {next} records: {st:?}"));
            }
            if let Some(&(_, o)) = self.acked.iter().find(|&&(g, o)| g == gi && o >= st.next_delivery) {
                return Err(format!("{name}: record {o} was acked but the group has not delivered it: {st:?}"));
            }
            if in_place {
                // Polling here would hand out leases the next child cannot know of.
                continue;
            }
            for _ in 0..CHECK_POLLS {
                let d = match g.poll(Duration::ZERO) {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(e) => return Err(format!("{name}: poll after the crash: {e}")),
                };
                totals.copy_deliveries += 1;
                let o = d.offset();
                if self.acked.contains(&(gi, o)) {
                    return Err(format!("{name}: record {o} was acked and is delivered again after the crash"));
                }
                let before = self.attempts.get(&(gi, o)).copied().unwrap_or(0);
                if d.attempt() <= before || d.attempt() > MAX_ATTEMPTS {
                    return Err(format!(
                        "{name}: record {o} comes back with attempt {} after reaching {before}",
                        d.attempt()
                    ));
                }
                untag(d.payload()).map_err(|e| format!("{name}: record {o}: {e}"))?;
            }
        }
        q.close().map_err(|e| format!("close: {e}"))
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let _serial = process_lock();
    let kills: u64 = std::env::var(ENV_KILLS).ok().map_or(SHORT_KILLS, |k| k.parse().expect("SEGQ_CRASH_KILLS"));
    let seed = test_seed(ENV_SEED);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut run = 1u64;
    for (p, sync) in POLICIES.iter().enumerate() {
        let share = kills / 3 + u64::from((p as u64) < kills % 3);
        let chain_len = if kills > SHORT_KILLS { LONG_CHAIN } else { share.max(1) };
        let mut done = 0;
        while done < share {
            let mut chain = Chain::new(sync);
            while done < share && chain.runs < chain_len {
                if let Err(e) = chain.kill_once(&mut rng, run, &mut totals) {
                    let kept = chain.tmp.keep();
                    panic!(
                        "{sync}, run {run} ({} on this directory): {e}\nseed {ENV_SEED}={seed}; directory kept at {}",
                        chain.runs,
                        kept.display()
                    );
                }
                run += 1;
                done += 1;
            }
        }
    }
    eprintln!("crash loop: {:.1} s, seed {seed}, {totals:?}", started.elapsed().as_secs_f64());
    assert!(totals.appends > 0 && totals.acks > 0, "the children did no work: {totals:?}");
}
