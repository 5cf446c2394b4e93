//! Consumer groups under concurrency and at their edges: clones and separate handles of a
//! group never share a live lease, wake-ups, the sync audit under `Always`, retention, and
//! odd arguments. Timing checks are one-sided (a wake-up comes well before a long timeout).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Rng;
use segq::{Error, Group, GroupOptions, Options, Queue, SyncPolicy, fault};

const NO_WAIT: Duration = Duration::ZERO;
/// Stands for "never" in a wake-up check: a lost wake-up sleeps the whole minute.
const LONG: Duration = Duration::from_secs(60);
/// A wake-up that works returns far sooner than this, even on a slow, loaded machine.
const WELL_BEFORE: Duration = Duration::from_secs(30);

fn queue(dir: &std::path::Path, sync: SyncPolicy) -> Queue {
    Queue::open(dir, Options::default().segment_bytes(64 << 10).sync(sync)).unwrap()
}

fn fill(q: &Queue, n: u64) {
    for i in 0..n {
        q.append(format!("record {i}").as_bytes()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Competing consumers on clones and on separate handles.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Ledger {
    /// Offsets held by a worker right now (delivered, not yet given back), with the worker.
    held: HashMap<u64, usize>,
    /// Attempts delivered per offset, in order.
    attempts: BTreeMap<u64, Vec<u32>>,
    /// Offsets whose ack returned.
    acked: HashSet<u64>,
    violations: Vec<String>,
}

/// Workers poll, ack, nack (with short delays) and check `is_current` on handles of one
/// group; the lease is long enough that nothing is handed out again unless given back.
fn run_competing(handles: Vec<Group>, n: u64, max_attempts: u32, seed: u64, use_batches: bool) -> Ledger {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let done = Arc::new(AtomicBool::new(false));
    let handles = &handles;
    std::thread::scope(|s| {
        for (w, g) in handles.iter().enumerate() {
            let ledger = ledger.clone();
            let done = done.clone();
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (w as u64 * 7919));
                let started = Instant::now();
                while !done.load(Ordering::Acquire) {
                    assert!(started.elapsed() < Duration::from_secs(120), "workers never finished");
                    let got = if use_batches && rng.chance(50) {
                        g.poll_batch(1 + rng.below(8) as usize, Duration::from_millis(20)).unwrap()
                    } else {
                        g.poll(Duration::from_millis(20)).unwrap().into_iter().collect()
                    };
                    for d in &got {
                        let mut l = ledger.lock().unwrap();
                        if let Some(other) = l.held.insert(d.offset(), w) {
                            l.violations.push(format!("offset {} delivered to {w} while {other} held it", d.offset()));
                        }
                        if l.acked.contains(&d.offset()) {
                            l.violations.push(format!("offset {} delivered after its ack", d.offset()));
                        }
                        l.attempts.entry(d.offset()).or_default().push(d.attempt());
                    }
                    let mut acks = Vec::new();
                    for d in got {
                        if !g.is_current(&d).unwrap() {
                            ledger
                                .lock()
                                .unwrap()
                                .violations
                                .push(format!("fresh delivery of {} not current", d.offset()));
                        }
                        match rng.below(10) {
                            0..=2 => {
                                ledger.lock().unwrap().held.remove(&d.offset());
                                let delay = Duration::from_millis(rng.below(3));
                                if rng.chance(50) {
                                    g.nack(d.offset(), delay).unwrap();
                                } else {
                                    assert!(g.nack_delivery(&d, delay).unwrap(), "nack of a held delivery");
                                }
                            }
                            _ => acks.push(d.offset()),
                        }
                    }
                    if !acks.is_empty() {
                        {
                            let mut l = ledger.lock().unwrap();
                            for a in &acks {
                                l.held.remove(a);
                            }
                        }
                        if use_batches && acks.len() > 1 {
                            g.ack_batch(&acks).unwrap();
                        } else {
                            for &a in &acks {
                                g.ack(a).unwrap();
                            }
                        }
                        let mut l = ledger.lock().unwrap();
                        l.acked.extend(acks);
                    }
                    // Done once everything is acked or dead.
                    let g0 = &handles[0];
                    if g0.ack_floor() >= n && g0.stats().lag == 0 {
                        done.store(true, Ordering::Release);
                    }
                }
            });
        }
    });
    let mut l = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    for (&offset, attempts) in &l.attempts {
        let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
        if *attempts != expected {
            l.violations.push(format!("offset {offset}: attempts {attempts:?}"));
        }
        if attempts.len() as u32 > max_attempts {
            l.violations.push(format!("offset {offset}: {} deliveries > max {max_attempts}", attempts.len()));
        }
    }
    l
}

fn check_competing(q: &Queue, g: &Group, l: &Ledger, n: u64) {
    assert!(l.violations.is_empty(), "{:#?}", &l.violations[..l.violations.len().min(20)]);
    let dead: BTreeMap<u64, u32> = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
    for o in 0..n {
        let delivered = l.attempts.get(&o).map_or(0, Vec::len);
        assert!(delivered > 0, "offset {o} never delivered");
        assert!(
            l.acked.contains(&o) != dead.contains_key(&o),
            "offset {o}: acked {} dead {:?}",
            l.acked.contains(&o),
            dead.get(&o)
        );
        if let Some(&a) = dead.get(&o) {
            assert_eq!(a as usize, delivered, "dead letter {o} attempts");
        }
    }
    let s = g.stats();
    assert_eq!((s.ack_floor, s.lag, s.leased, s.waiting, s.dead), (n, 0, 0, 0, dead.len() as u64));
    assert!(g.poll(NO_WAIT).unwrap().is_none());
    let _ = q;
}

#[test]
fn clones_of_one_group_never_share_a_live_lease_and_count_attempts_exactly() {
    for (sync, batches) in [(SyncPolicy::Never, false), (SyncPolicy::Never, true), (SyncPolicy::Always, true)] {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path(), sync);
        let n = if sync == SyncPolicy::Always { 600 } else { 3000 };
        fill(&q, n);
        let g = q.group_with("g", GroupOptions::default().lease(Duration::from_secs(600)).max_attempts(3)).unwrap();
        let handles = (0..6).map(|_| g.clone()).collect();
        let l = run_competing(handles, n, 3, 0x5eed + n, batches);
        check_competing(&q, &g, &l, n);
    }
}

#[test]
fn separate_group_handles_of_one_name_never_share_a_live_lease() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    let n = 3000;
    fill(&q, n);
    q.group_with("g", GroupOptions::default().lease(Duration::from_secs(600)).max_attempts(4)).unwrap();
    let handles: Vec<Group> = (0..6).map(|_| q.group("g").unwrap()).collect();
    let g = handles[0].clone();
    let l = run_competing(handles, n, 4, 77, true);
    check_competing(&q, &g, &l, n);
}

/// Appends run while workers consume: every record is delivered, none to two at once.
#[test]
fn consumers_racing_appenders_get_every_record() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().segment_bytes(16 << 10).sync(sync)).unwrap();
        let g = q.group_with("g", GroupOptions::default().lease(Duration::from_secs(600)).max_attempts(3)).unwrap();
        let n = if sync == SyncPolicy::Always { 400 } else { 4000 };
        let l = std::thread::scope(|s| {
            let q = &q;
            s.spawn(move || {
                for i in 0..n {
                    q.append(format!("record {i}").as_bytes()).unwrap();
                }
            });
            run_competing((0..4).map(|_| g.clone()).collect(), n, 3, 99, true)
        });
        check_competing(&q, &g, &l, n);
    }
}

// ---------------------------------------------------------------------------------------
// Wake-ups: a poll that should wake must not sleep its whole timeout.
// ---------------------------------------------------------------------------------------

/// When a poll returned, and the offset and attempt it handed out.
type Polled = (Instant, segq::Result<Option<(u64, u32)>>);

fn poll_in_thread(g: &Group) -> std::thread::JoinHandle<Polled> {
    let g = g.clone();
    std::thread::spawn(move || {
        let r = g.poll(LONG).map(|d| d.map(|d| (d.offset(), d.attempt())));
        (Instant::now(), r)
    })
}

#[test]
fn a_nack_delay_wakes_a_poll_sleeping_with_no_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    fill(&q, 1);
    let g = q.group("g").unwrap();
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    // Extended far: the sleeper's first look sees a deadline in an hour.
    assert!(g.extend_lease(d.offset(), Duration::from_secs(3600)).unwrap());
    let t0 = Instant::now();
    let sleeper = poll_in_thread(&g);
    std::thread::sleep(Duration::from_millis(50));
    g.nack(d.offset(), Duration::from_millis(100)).unwrap();
    let (at, r) = sleeper.join().unwrap();
    assert_eq!(r.unwrap(), Some((0, 2)));
    assert!(at - t0 < WELL_BEFORE, "poll slept {:?}", at - t0);
    assert!(at - t0 >= Duration::from_millis(100));
}

#[test]
fn an_expiring_lease_of_another_worker_wakes_a_sleeping_poll() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    let g = q.group_with("g", GroupOptions::default().lease(Duration::from_millis(200))).unwrap();
    // The sleeper looks at an empty group: no deadline, it sleeps until notified.
    let t0 = Instant::now();
    let sleeper = poll_in_thread(&g);
    std::thread::sleep(Duration::from_millis(50));
    // The record is appended and taken by someone else before the sleeper gets it, perhaps;
    // either way the sleeper must have the record within well under a minute.
    q.append(b"x").unwrap();
    let other = g.poll(NO_WAIT).unwrap();
    let (at, r) = sleeper.join().unwrap();
    let r = r.unwrap();
    assert!(r.is_some(), "the sleeper got nothing: other={:?}", other.map(|d| d.offset()));
    assert!(at - t0 < WELL_BEFORE, "poll slept {:?}", at - t0);
}

#[test]
fn shortening_a_lease_by_extend_delivery_wakes_a_sleeping_poll() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    fill(&q, 1);
    let g = q.group_with("g", GroupOptions::default().lease(Duration::from_secs(3600))).unwrap();
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    let t0 = Instant::now();
    let sleeper = poll_in_thread(&g);
    std::thread::sleep(Duration::from_millis(50));
    assert!(g.extend_delivery(&d, Duration::from_millis(100)).unwrap());
    let (at, r) = sleeper.join().unwrap();
    assert_eq!(r.unwrap(), Some((0, 2)));
    assert!(at - t0 < WELL_BEFORE, "poll slept {:?}", at - t0);
}

#[test]
fn a_redrive_and_a_seek_wake_sleeping_polls() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Always);
    fill(&q, 2);
    let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    g.nack(d.offset(), NO_WAIT).unwrap();
    g.ack(g.poll(NO_WAIT).unwrap().unwrap().offset()).unwrap();
    let t0 = Instant::now();
    let sleeper = poll_in_thread(&g);
    std::thread::sleep(Duration::from_millis(50));
    assert!(g.redrive(0).unwrap());
    let (at, r) = sleeper.join().unwrap();
    assert_eq!(r.unwrap(), Some((0, 1)));
    assert!(at - t0 < WELL_BEFORE);
    g.ack(0).unwrap();
    let t0 = Instant::now();
    let sleeper = poll_in_thread(&g);
    std::thread::sleep(Duration::from_millis(50));
    g.seek(1).unwrap();
    let (at, r) = sleeper.join().unwrap();
    assert_eq!(r.unwrap(), Some((1, 1)));
    assert!(at - t0 < WELL_BEFORE);
}

/// Under `Always`, a poll sleeping for a record wakes when another thread's append of it
/// becomes durable.
#[test]
fn a_durable_append_wakes_a_poll_under_always() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path(), SyncPolicy::Always);
        let g = q.group("g").unwrap();
        let t0 = Instant::now();
        let sleeper = poll_in_thread(&g);
        std::thread::sleep(Duration::from_millis(20));
        q.append(b"x").unwrap();
        let (at, r) = sleeper.join().unwrap();
        assert_eq!(r.unwrap(), Some((0, 1)));
        assert!(at - t0 < WELL_BEFORE);
    }
}

// ---------------------------------------------------------------------------------------
// Stats against what polls and the other calls say.
// ---------------------------------------------------------------------------------------

/// A record whose last allowed lease ran out is a dead letter: `dead_letters` and
/// `ack_floor` say so at once, without a poll. `stats` must agree with them.
#[test]
fn stats_agree_with_ack_floor_and_dead_letters_after_a_last_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    fill(&q, 1);
    let g = q.group_with("g", GroupOptions::default().lease(Duration::from_millis(1)).max_attempts(1)).unwrap();
    g.poll(NO_WAIT).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let s = g.stats();
    let floor = g.ack_floor();
    let dead = g.dead_letters().unwrap().len() as u64;
    assert!(g.poll(NO_WAIT).unwrap().is_none(), "nothing left to hand out");
    assert_eq!((s.ack_floor, s.dead, s.waiting, s.lag), (floor, dead, 0, 0), "stats: {s:?}");
}

/// Stats of a record still leased, waiting, dead, and of records never delivered.
#[test]
fn stats_count_what_polls_hand_out() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    fill(&q, 10);
    let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
    let a = g.poll(NO_WAIT).unwrap().unwrap(); // leased
    let b = g.poll(NO_WAIT).unwrap().unwrap();
    g.nack(b.offset(), NO_WAIT).unwrap(); // dead (1 attempt)
    let c = g.poll(NO_WAIT).unwrap().unwrap();
    g.ack(c.offset()).unwrap();
    let s = g.stats();
    assert_eq!((s.leased, s.waiting, s.dead, s.lag, s.ack_floor, s.next_delivery), (1, 0, 1, 8, 0, 3));
    let mut polled = 0;
    while let Some(d) = g.poll(NO_WAIT).unwrap() {
        polled += 1;
        g.ack(d.offset()).unwrap();
    }
    assert_eq!(polled, 7);
    g.ack(a.offset()).unwrap();
    let s = g.stats();
    assert_eq!((s.leased, s.waiting, s.dead, s.lag, s.ack_floor), (0, 0, 1, 0, 10));
}

// ---------------------------------------------------------------------------------------
// API edges.
// ---------------------------------------------------------------------------------------

#[test]
fn poll_batch_of_zero_returns_at_once_even_with_a_long_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    let g = q.group("g").unwrap();
    let t0 = Instant::now();
    assert!(g.poll_batch(0, LONG).unwrap().is_empty());
    assert!(t0.elapsed() < WELL_BEFORE);
    fill(&q, 2);
    assert!(g.poll_batch(0, LONG).unwrap().is_empty());
    assert_eq!(g.stats().next_delivery, 0, "a batch of 0 takes nothing");
}

#[test]
fn ack_batch_of_duplicates_and_unknown_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Always);
    fill(&q, 5);
    let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
    let ds = g.poll_batch(4, NO_WAIT).unwrap();
    g.nack(ds[1].offset(), NO_WAIT).unwrap(); // dead
    // Duplicates, a dead letter, an acked one: fine.
    g.ack_batch(&[0, 0, 2, 2, 1, 1]).unwrap();
    assert!(g.dead_letters().unwrap().is_empty(), "acking a dead letter removes it");
    assert_eq!(g.ack_floor(), 3);
    // Offset 4 never delivered: nothing changes, not even offset 3.
    assert!(matches!(g.ack_batch(&[3, 4, 3]), Err(Error::NotDelivered { offset: 4 })));
    assert_eq!(g.stats().leased, 1);
    assert!(matches!(g.ack_batch(&[u64::MAX]), Err(Error::NotDelivered { offset: u64::MAX })));
    g.ack_batch(&[]).unwrap();
    g.nack_batch(&[3, 3], NO_WAIT).unwrap();
    assert_eq!(g.dead_letters().unwrap().len(), 1);
    q.close().unwrap();
    let q = queue(dir.path(), SyncPolicy::Always);
    let g = q.group("g").unwrap();
    assert_eq!(g.dead_letters().unwrap().iter().map(|d| d.offset()).collect::<Vec<_>>(), [3]);
    assert_eq!(g.ack_floor(), 4);
}

#[test]
fn nack_for_ever_stays_waiting_across_reopen_and_max_attempts_one_dies_on_first_nack() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = queue(dir.path(), SyncPolicy::Always);
        fill(&q, 3);
        let g = q.group_with("g", GroupOptions::default().max_attempts(2)).unwrap();
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        g.nack(d.offset(), Duration::MAX).unwrap();
        assert!(g.poll(NO_WAIT).unwrap().map(|d| d.offset()) == Some(1));
        let s = g.stats();
        assert_eq!((s.waiting, s.leased), (1, 1));
        // Reopen below, with the wall clock moved on a little.
        std::thread::sleep(Duration::from_millis(5));
    }
    let q = queue(dir.path(), SyncPolicy::Always);
    let g = q.group("g").unwrap();
    // Offset 1's lease ended with the restart: it is due. Offset 0 never is.
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (1, 2));
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (2, 1));
    assert!(g.poll(NO_WAIT).unwrap().is_none(), "a nack for ever is never due");
    assert_eq!(g.stats().waiting, 1);
    // nack with MAX on a record on its last attempt: a dead letter, not a wait.
    g.nack(1, Duration::MAX).unwrap();
    assert_eq!(g.dead_letters().unwrap().iter().map(|d| d.offset()).collect::<Vec<_>>(), [1]);
}

#[test]
fn invalid_group_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    assert!(matches!(q.group_with("g", GroupOptions::default().lease(Duration::ZERO)), Err(Error::InvalidOptions(_))));
    assert!(matches!(q.group_with("g", GroupOptions::default().max_attempts(0)), Err(Error::InvalidOptions(_))));
    assert!(q.groups().unwrap().is_empty());
    let g = q.group("g").unwrap();
    assert!(matches!(q.group_with("g", GroupOptions::default().max_attempts(0)), Err(Error::InvalidOptions(_))));
    assert_eq!(g.options(), GroupOptions::default());
}

#[test]
fn a_lease_for_ever_is_never_handed_out_again_and_extend_lease_max_works() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    fill(&q, 2);
    let g = q.group_with("g", GroupOptions::default().lease(Duration::MAX)).unwrap();
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert!(g.extend_lease(d.offset(), Duration::MAX).unwrap());
    assert!(g.extend_delivery(&d, Duration::MAX).unwrap());
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 1);
    assert!(g.poll(Duration::from_millis(20)).unwrap().is_none());
    assert_eq!(g.stats().leased, 2);
    assert!(matches!(g.extend_lease(2, Duration::MAX), Err(Error::NotDelivered { offset: 2 })));
}

#[test]
fn redrive_of_anything_but_a_dead_letter_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    fill(&q, 3);
    let g = q.group("g").unwrap();
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    for o in [0, 1, 2, 3, u64::MAX] {
        assert!(!g.redrive(o).unwrap(), "redrive {o}");
    }
    assert!(g.is_current(&d).unwrap());
    let s = g.stats();
    assert_eq!((s.leased, s.waiting, s.dead, s.next_delivery), (1, 0, 0, 1));
    g.ack(0).unwrap();
    assert!(!g.redrive(0).unwrap(), "an acked record");
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 1);
}

#[test]
fn seek_is_clamped_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), common::tiny(4096).retain_bytes(1)).unwrap();
    for i in 0..200u64 {
        q.append(&[i as u8; 100]).unwrap();
    }
    q.enforce_retention().unwrap();
    let first = q.first_offset();
    assert!(first > 0);
    let g = q.group("g").unwrap();
    g.seek(0).unwrap();
    assert_eq!(g.ack_floor(), first);
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), first);
    g.seek(u64::MAX).unwrap();
    assert_eq!(g.ack_floor(), q.next_offset());
    assert!(g.poll(NO_WAIT).unwrap().is_none());
    assert!(matches!(g.ack(q.next_offset()), Err(Error::NotDelivered { .. })));
    g.ack(first).unwrap(); // sought past: a no-op
    assert_eq!(g.stats().lag, 0);
    assert_eq!(g.stats().lost, 0);
}

// ---------------------------------------------------------------------------------------
// extend_delivery against lease expiry.
// ---------------------------------------------------------------------------------------

/// A worker whose `extend_delivery` returned true holds the record: no other worker may
/// get it before the extended lease ends, however short the group's own lease.
#[test]
fn an_extension_that_returned_true_is_never_overtaken_by_an_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), SyncPolicy::Never);
    let n = 3000;
    fill(&q, n);
    let g = q.group_with("g", GroupOptions::default().lease(Duration::from_millis(1)).max_attempts(u32::MAX)).unwrap();
    // offset -> (attempt, when the extension was asked) for extensions that returned true.
    let extended: Mutex<HashMap<u64, (u32, Instant)>> = Mutex::new(HashMap::new());
    let violations: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..3 {
            let (g, extended, violations, stop) = (&g, &extended, &violations, &stop);
            s.spawn(move || {
                let mut rng = Rng::new(w);
                while !stop.load(Ordering::Acquire) {
                    let Some(d) = g.poll(Duration::from_millis(5)).unwrap() else { continue };
                    let now = Instant::now();
                    if let Some(&(attempt, at)) = extended.lock().unwrap().get(&d.offset())
                        && d.attempt() > attempt
                        && now < at + Duration::from_secs(10)
                    {
                        violations.lock().unwrap().push(format!(
                            "offset {} attempt {} handed out {:?} after attempt {attempt} was extended by 10 s",
                            d.offset(),
                            d.attempt(),
                            now - at
                        ));
                    }
                    if rng.chance(30) {
                        std::thread::yield_now();
                    }
                    let asked = Instant::now();
                    if g.extend_delivery(&d, Duration::from_secs(10)).unwrap() {
                        extended.lock().unwrap().insert(d.offset(), (d.attempt(), asked));
                        if rng.chance(50) {
                            std::thread::sleep(Duration::from_micros(rng.below(300)));
                        }
                        g.ack(d.offset()).unwrap();
                    }
                    if g.ack_floor() >= n {
                        stop.store(true, Ordering::Release);
                    }
                }
            });
        }
    });
    let v = violations.into_inner().unwrap();
    assert!(v.is_empty(), "{:#?}", &v[..v.len().min(10)]);
    assert_eq!(g.ack_floor(), n);
}

// ---------------------------------------------------------------------------------------
// Chaos: seeks, redrives, deletes and closes while workers poll.
// ---------------------------------------------------------------------------------------

fn allowed(e: &Error) -> bool {
    matches!(e, Error::NotDelivered { .. } | Error::Closed | Error::GroupDeleted { .. })
}

fn check_stats_sane(q: &Queue, g: &Group, what: &str) {
    let s = g.stats();
    assert!(s.ack_floor <= s.next_delivery, "{what}: {s:?}");
    assert!(s.next_delivery <= q.next_offset(), "{what}: {s:?}");
    assert!(s.leased + s.waiting <= s.next_delivery - s.ack_floor, "{what}: {s:?}");
    assert_eq!(s.lag, q.next_offset() - s.next_delivery + s.leased + s.waiting, "{what}: {s:?}");
}

#[test]
fn seeks_redrives_and_stats_while_workers_poll_then_delete_or_close() {
    for (round, sync) in
        [SyncPolicy::Never, SyncPolicy::Always, SyncPolicy::Never, SyncPolicy::Interval(Duration::from_millis(3))]
            .into_iter()
            .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().segment_bytes(16 << 10).sync(sync)).unwrap();
        let n = 1500;
        fill(&q, n);
        let g = q.group_with("g", GroupOptions::default().lease(Duration::from_millis(30)).max_attempts(2)).unwrap();
        let stop = AtomicBool::new(false);
        let ended = AtomicBool::new(false);
        std::thread::scope(|s| {
            let (q, g, stop, ended) = (&q, &g, &stop, &ended);
            for w in 0..4u64 {
                s.spawn(move || {
                    let mut rng = Rng::new(round as u64 * 100 + w);
                    let h = if w % 2 == 0 { g.clone() } else { q.group("g").unwrap_or_else(|_| g.clone()) };
                    loop {
                        let r = (|| -> segq::Result<()> {
                            let batch = h.poll_batch(1 + rng.below(4) as usize, Duration::from_millis(10))?;
                            for d in batch {
                                match rng.below(6) {
                                    0 => {
                                        h.nack(d.offset(), Duration::from_millis(rng.below(5)))?;
                                    }
                                    1 => {
                                        h.nack_delivery(&d, Duration::ZERO)?;
                                    }
                                    2 => {} // let the lease run out
                                    3 => {
                                        h.extend_delivery(&d, Duration::from_millis(50))?;
                                        h.ack(d.offset())?;
                                    }
                                    _ => h.ack(d.offset())?,
                                }
                            }
                            Ok(())
                        })();
                        match r {
                            Ok(()) => {}
                            Err(e) if allowed(&e) => {
                                if matches!(e, Error::Closed | Error::GroupDeleted { .. }) {
                                    assert!(ended.load(Ordering::Acquire), "{e} before the end");
                                    return;
                                }
                            }
                            Err(e) => panic!("worker {w}: {e}"),
                        }
                        if stop.load(Ordering::Acquire) && ended.load(Ordering::Acquire) {
                            // Give the end a chance to reach us through an error.
                        }
                    }
                });
            }
            s.spawn(move || {
                let mut rng = Rng::new(round as u64);
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(600) {
                    match rng.below(5) {
                        0 => g.seek(rng.below(n + 10)).unwrap(),
                        1 => {
                            for d in g.dead_letters().unwrap() {
                                if rng.chance(50) {
                                    g.redrive(d.offset()).unwrap();
                                }
                            }
                        }
                        2 => check_stats_sane(q, g, "chaos"),
                        3 => {
                            let _ = g.ack_floor();
                        }
                        _ => {
                            q.append(b"more").unwrap();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(rng.below(5)));
                }
                stop.store(true, Ordering::Release);
                ended.store(true, Ordering::Release);
                if round % 2 == 0 {
                    q.delete_group("g").unwrap();
                } else {
                    q.close().unwrap();
                }
            });
        });
        if round % 2 == 0 {
            assert!(matches!(g.poll(NO_WAIT), Err(Error::GroupDeleted { .. })));
            // A new group of that name starts over at the first offset.
            let fresh = q.group("g").unwrap();
            assert_eq!(fresh.poll(NO_WAIT).unwrap().unwrap().offset(), 0);
            assert_eq!(fresh.stats().lost, 0);
        } else {
            assert!(matches!(g.poll(NO_WAIT), Err(Error::Closed)));
            let q = Queue::open(dir.path(), Options::default().segment_bytes(16 << 10).sync(sync)).unwrap();
            let g = q.group("g").unwrap();
            check_stats_sane(&q, &g, "reopened");
            // Drain: everything still open comes out, with attempts counted on.
            let mut seen = 0;
            while let Some(d) = g.poll(NO_WAIT).unwrap() {
                assert!(d.attempt() <= 2);
                g.ack(d.offset()).unwrap();
                seen += 1;
                assert!(seen <= q.next_offset() + 10);
            }
            let s = g.stats();
            assert_eq!((s.lag, s.leased, s.waiting, s.ack_floor), (0, 0, 0, q.next_offset()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Durability under `Always`, checked with the sync audit.
// ---------------------------------------------------------------------------------------

/// The byte range where two versions of a file differ (lengths may differ too).
fn changed(before: &[u8], after: &[u8]) -> Option<std::ops::Range<u64>> {
    let len = before.len().max(after.len());
    let at = |b: &[u8], i: usize| b.get(i).copied();
    let first = (0..len).find(|&i| at(before, i) != at(after, i))?;
    let last = (0..len).rev().find(|&i| at(before, i) != at(after, i))?;
    Some(first as u64..last as u64 + 1)
}

/// Every group call below, including those that write a snapshot (the journal fills up
/// after ~10,900 changes), syncs what it wrote to the group's files before returning.
#[test]
fn group_calls_under_always_sync_journal_and_snapshots_through_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(1 << 20).sync(SyncPolicy::Always)).unwrap();
    let n = 8000u64;
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
    for chunk in payloads.chunks(500) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        q.append_batch(&refs).unwrap();
    }
    let g = q.group_with("g", GroupOptions::default().max_attempts(2)).unwrap();
    let gdir = dir.path().join("groups").join("g");
    let files = [gdir.join("journal"), gdir.join("state"), gdir.join("state.1")];
    fault::audit(dir.path());
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    let mut snapshots = 0;
    let mut check = |what: &str, call: &mut dyn FnMut()| {
        let before: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
        fault::take_synced(dir.path());
        call();
        let synced = fault::take_synced(dir.path());
        let after: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
        let snapshot_written = (1..3).any(|i| changed(&before[i], &after[i]).is_some());
        for (i, (p, b)) in files.iter().zip(&before).enumerate() {
            if let Some(mut span) = changed(b, &after[i]) {
                if i > 0 {
                    snapshots += 1;
                } else if snapshot_written {
                    // Entries of the old generation written before the snapshot need no
                    // sync: the snapshot holds them. What counts is the new generation's
                    // run of entries from the journal's front.
                    let a = &after[0];
                    let mut end = span.start as usize;
                    while end < a.len() && (end..(end + 24).min(a.len())).any(|j| b.get(j) != a.get(j)) {
                        end += 1;
                    }
                    span = span.start..end as u64;
                }
                assert!(common::covered(&synced, p, &span), "{what}: {p:?} bytes {span:?} not synced: {synced:?}");
            }
        }
    };
    let mut rng = Rng::new(5);
    let mut round = 0;
    loop {
        round += 1;
        let mut taken = Vec::new();
        check("poll_batch", &mut || taken = g.poll_batch(64, NO_WAIT).unwrap());
        if taken.is_empty() {
            break;
        }
        let offsets: Vec<u64> = taken.iter().map(|d| d.offset()).collect();
        let (nack, ack): (Vec<u64>, Vec<u64>) = offsets.iter().partition(|_| rng.chance(5));
        check("ack_batch", &mut || g.ack_batch(&ack).unwrap());
        check("nack_batch", &mut || g.nack_batch(&nack, NO_WAIT).unwrap());
        if round % 10 == 0 {
            check("poll", &mut || {
                if let Some(d) = g.poll(NO_WAIT).unwrap() {
                    assert!(g.nack_delivery(&d, NO_WAIT).unwrap());
                }
            });
            let dead = g.dead_letters().unwrap();
            if let Some(d) = dead.first() {
                check("redrive", &mut || assert!(g.redrive(d.offset()).unwrap()));
            }
        }
        if round == 60 {
            check("seek", &mut || g.seek(1000).unwrap());
        }
        assert!(round < 10_000);
    }
    assert!(snapshots > 0, "the test meant to cross a compaction");
}

/// Under `Always`, `poll` hands out only records whose bytes were synced before it
/// returned, while another thread appends.
#[test]
fn poll_under_always_hands_out_only_synced_records() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), common::tiny(16 << 10).sync(SyncPolicy::Always)).unwrap();
    fault::audit(dir.path());
    let g = q.group("g").unwrap();
    let n = 400u64;
    let mut synced = Vec::new();
    let mut got = Vec::new();
    std::thread::scope(|s| {
        let q = &q;
        s.spawn(move || {
            for i in 0..n {
                if i % 5 == 0 {
                    let p: Vec<Vec<u8>> = (0..3).map(|j| common::payload(i * 3 + j)).collect();
                    let refs: Vec<&[u8]> = p.iter().map(Vec::as_slice).collect();
                    q.append_batch(&refs).unwrap();
                } else {
                    q.append(&common::payload(i)).unwrap();
                }
            }
        });
        let total = n + 2 * (n / 5);
        while (got.len() as u64) < total {
            let batch = g.poll_batch(4, Duration::from_secs(30)).unwrap();
            assert!(!batch.is_empty(), "nothing within 30 s");
            // Syncs made so far, by any thread.
            synced.extend(fault::take_synced(dir.path()));
            for d in batch {
                // Located after the fact: the bytes are where they were when synced.
                got.push((d.offset(), synced.len()));
                g.ack(d.offset()).unwrap();
            }
        }
    });
    for (offset, known) in got {
        let path =
            common::segment_files(dir.path()).into_iter().rev().find(|p| common::segment_base(p) <= offset).unwrap();
        let spans = common::record_spans(&std::fs::read(&path).unwrap());
        let span = spans[(offset - common::segment_base(&path)) as usize].clone();
        let span = span.start as u64..span.end as u64;
        assert!(common::covered(&synced[..known], &path, &span), "record {offset} handed out before it was synced");
    }
}

// ---------------------------------------------------------------------------------------
// Retention.
// ---------------------------------------------------------------------------------------

fn small_records(q: &Queue, n: u64) {
    for i in 0..n {
        q.append(&[i as u8; 200]).unwrap();
    }
}

/// A record leased (or waiting) while every later one is acked holds its segment under
/// `retain_until_consumed`, in every group; deleting the group that lags frees it.
#[test]
fn retain_until_consumed_keeps_a_leased_record_and_forgets_a_deleted_group() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), common::tiny(4096).retain_until_consumed(true)).unwrap();
    small_records(&q, 300);
    let a = q.group_with("a", GroupOptions::default().lease(Duration::from_secs(600))).unwrap();
    let b = q.group("b").unwrap();
    let _c = q.group("c").unwrap();
    // a: holds offset 5 leased and acks everything else.
    let mut held = None;
    while let Some(d) = a.poll(NO_WAIT).unwrap() {
        if d.offset() == 5 { held = Some(d) } else { a.ack(d.offset()).unwrap() }
    }
    // b: nacks offset 7 far ahead, acks the rest.
    while let Some(d) = b.poll(NO_WAIT).unwrap() {
        if d.offset() == 7 { b.nack(7, Duration::from_secs(3600)).unwrap() } else { b.ack(d.offset()).unwrap() }
    }
    // c: acks nothing at all.
    q.enforce_retention().unwrap();
    assert_eq!(q.first_offset(), 0, "c has consumed nothing");
    q.delete_group("c").unwrap();
    q.enforce_retention().unwrap();
    let first = q.first_offset();
    assert!(first <= 5, "a still holds offset 5 leased: first {first}");
    assert!(q.read(5).unwrap().is_some());
    a.ack(held.unwrap().offset()).unwrap();
    q.enforce_retention().unwrap();
    assert!(q.first_offset() <= 7, "b still waits to retry 7: first {}", q.first_offset());
    b.ack(7).unwrap();
    q.enforce_retention().unwrap();
    assert!(q.first_offset() > 7);
    for g in [&a, &b] {
        assert_eq!(g.stats().lost, 0);
        assert_eq!(g.ack_floor(), 300);
    }
}

/// Size retention deletes a record while a worker holds it: the group moves on and counts
/// it lost; the worker's late ack, nack and extension change nothing and fail nothing.
#[test]
fn a_leased_record_deleted_by_size_retention_is_lost_once_and_late_calls_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), common::tiny(4096).retain_bytes(1)).unwrap();
    small_records(&q, 10);
    let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
    let held = g.poll(NO_WAIT).unwrap().unwrap();
    let dead = g.poll(NO_WAIT).unwrap().unwrap();
    g.nack(dead.offset(), NO_WAIT).unwrap(); // a dead letter
    small_records(&q, 300);
    q.enforce_retention().unwrap();
    let first = q.first_offset();
    assert!(first > 1);
    assert!(!g.is_current(&held).unwrap());
    g.ack(held.offset()).unwrap();
    g.nack(held.offset(), NO_WAIT).unwrap();
    assert!(!g.extend_lease(held.offset(), Duration::from_secs(1)).unwrap());
    assert!(!g.nack_delivery(&held, NO_WAIT).unwrap());
    assert!(!g.redrive(dead.offset()).unwrap(), "a deleted dead letter is gone");
    let s = g.stats();
    assert_eq!((s.lost, s.dead, s.leased, s.waiting, s.ack_floor), (first, 0, 0, 0, first), "{s:?}");
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), first);
}
