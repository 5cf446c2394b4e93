//! Concurrency and lifecycle review: races between `close`, appends, rolls, polls,
//! retention, group deletion and idle group closes; wake-ups of blocked consumers; what a
//! process keeps across many open/close cycles; acknowledged appends across an abort.
//!
//! (Written by the session-22 review; all passed but for one, now
//! `a_queue_flush_racing_a_group_deletion_succeeds`, which its random runs found.)
//!
//! Every test takes `serial()`: the leak test counts the process's threads, files and
//! mappings, and the machine is small. No test asserts on timing: a watchdog aborts the
//! process (with a message) when something hangs.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};

const LONG: Duration = Duration::from_secs(600);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts the process with `what` unless dropped within `secs` seconds: a hang detector.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

fn watchdog(secs: u64, what: &str) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
            let _ = writeln!(std::io::stderr(), "WATCHDOG: hung for {secs} s: {what}");
            std::process::abort();
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// The payload thread `t` appends as its `i`-th record (`i` from 0), 16 bytes of tag then
/// a filler whose length varies.
fn tagged(t: u64, i: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + 200);
    p.extend_from_slice(&t.to_le_bytes());
    p.extend_from_slice(&i.to_le_bytes());
    let fill = ((t * 131 + i * 17) % 200) as usize;
    p.extend((0..fill).map(|j| (t as usize * 7 + i as usize + j) as u8));
    p
}

#[allow(dead_code)]
fn untag(p: &[u8]) -> (u64, u64) {
    (u64::from_le_bytes(p[..8].try_into().unwrap()), u64::from_le_bytes(p[8..16].try_into().unwrap()))
}

fn policies() -> [(&'static str, SyncPolicy); 3] {
    [
        ("always", SyncPolicy::Always),
        ("interval", SyncPolicy::Interval(Duration::from_millis(1))),
        ("never", SyncPolicy::Never),
    ]
}

fn is_closed(e: &Error) -> bool {
    matches!(e, Error::Closed)
}

// ---------------------------------------------------------------------------------------
// close() racing appends (every policy), rolls, readers holding records, iterators
// ---------------------------------------------------------------------------------------

/// Appenders (single records and batches) on tiny segments, so that rolls and seals are
/// under way, readers that keep `Record`s, and a follower blocked in `next_timeout`, while
/// the queue is closed under them. Every call returns (no hang), every append after the
/// close fails with `Closed`, records kept stay readable, and the reopened queue holds
/// every append that returned `Ok`, with its bytes, at its offset.
#[test]
fn close_racing_appends_rolls_readers_and_followers_keeps_every_acknowledged_append() {
    let _s = serial();
    for (name, sync) in policies() {
        for round in 0..3u64 {
            let _w = watchdog(120, &format!("{name}: close racing appenders"));
            let dir = tempfile::tempdir().unwrap();
            let opts = Options::default().segment_bytes(4096).index_interval_bytes(256).sync(sync);
            let q = Queue::open(dir.path(), opts.clone()).unwrap();
            let acked: Mutex<BTreeMap<u64, Vec<u8>>> = Mutex::default();
            let kept: Mutex<Vec<(u64, Vec<u8>, segq::Record)>> = Mutex::default();
            let started = AtomicU64::new(0);
            std::thread::scope(|s| {
                for t in 0..3u64 {
                    let (q, acked, started) = (&q, &acked, &started);
                    s.spawn(move || {
                        let mut i = 0;
                        loop {
                            let batch = (i + t) % 4 == 0;
                            let n = if batch { 3 } else { 1 };
                            let payloads: Vec<Vec<u8>> = (i..i + n).map(|i| tagged(t, i)).collect();
                            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                            match q.append_batch(&refs) {
                                Ok(range) => {
                                    let mut a = acked.lock().unwrap();
                                    for (off, p) in range.zip(payloads) {
                                        a.insert(off, p);
                                    }
                                }
                                Err(e) if is_closed(&e) => return,
                                Err(e) => panic!("{name}: append failed: {e}"),
                            }
                            i += n;
                            started.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                // A reader that keeps some records it read, to check after the close.
                {
                    let (q, kept) = (&q, &kept);
                    s.spawn(move || {
                        let mut n = 0u64;
                        loop {
                            let next = q.next_offset();
                            if next == 0 {
                                std::thread::yield_now();
                                continue;
                            }
                            let off = (n * 7919) % next;
                            n += 1;
                            match q.read(off) {
                                Ok(Some(r)) => {
                                    if n.is_multiple_of(16) {
                                        kept.lock().unwrap().push((off, r.payload().to_vec(), r));
                                    }
                                }
                                Ok(None) => {}
                                Err(e) if is_closed(&e) => return,
                                Err(e) => panic!("{name}: read {off}: {e}"),
                            }
                        }
                    });
                }
                // A follower blocked at the end of the log most of the time.
                {
                    let q = &q;
                    s.spawn(move || {
                        let mut it = q.iter_from(0);
                        let mut expect = 0;
                        while let Some(r) = it.next_timeout(LONG) {
                            let r = r.unwrap_or_else(|e| panic!("{name}: follower: {e}"));
                            assert_eq!(r.offset(), expect);
                            expect += 1;
                        }
                    });
                }
                while started.load(Ordering::Relaxed) < 200 + round * 150 {
                    std::thread::yield_now();
                }
                q.close().unwrap_or_else(|e| panic!("{name}: close: {e}"));
            });
            assert!(matches!(q.append(b"late"), Err(Error::Closed)));
            assert!(matches!(q.flush(), Err(Error::Closed)));
            assert!(matches!(q.read(0), Err(Error::Closed)));
            for (off, bytes, rec) in kept.into_inner().unwrap() {
                assert_eq!(rec.offset(), off);
                assert_eq!(rec.payload(), bytes, "{name}: a record kept past the close changed");
            }
            drop(q);
            let acked = acked.into_inner().unwrap();
            let q = Queue::open(dir.path(), opts).unwrap();
            assert!(q.recovery().clean, "{name}: close did not record a clean shutdown");
            let last = acked.keys().next_back().copied().unwrap();
            assert!(q.next_offset() > last, "{name}: acked offset {last}, queue ends at {}", q.next_offset());
            for (off, p) in &acked {
                let r = q.read(*off).unwrap().unwrap_or_else(|| panic!("{name}: acked {off} missing"));
                assert_eq!(r.payload(), &p[..], "{name}: payload of {off}");
            }
            q.close().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// close() and delete_group() wake every blocked consumer
// ---------------------------------------------------------------------------------------

/// Pollers blocked in `poll(600 s)` and `poll_batch`, on several groups, and an iterator in
/// `next_timeout(600 s)`: `close` from another thread ends every wait with `Closed` (the
/// iterator with `None`).
#[test]
fn close_ends_every_blocked_poll_and_iterator_wait() {
    let _s = serial();
    for (name, sync) in policies() {
        let _w = watchdog(60, &format!("{name}: blocked pollers after close"));
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
        let groups: Vec<_> = (0..4).map(|i| q.group(&format!("g{i}")).unwrap()).collect();
        let waiting = AtomicU64::new(0);
        std::thread::scope(|s| {
            for (i, g) in groups.iter().enumerate() {
                let waiting = &waiting;
                s.spawn(move || {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    let r = if i % 2 == 0 {
                        g.poll(LONG).map(|d| d.is_some())
                    } else {
                        g.poll_batch(8, LONG).map(|b| !b.is_empty())
                    };
                    assert!(matches!(r, Err(Error::Closed)), "{name}: a poll blocked over a close returned {r:?}");
                });
            }
            let (q, waiting) = (&q, &waiting);
            s.spawn(move || {
                let mut it = q.iter_from(0);
                waiting.fetch_add(1, Ordering::SeqCst);
                assert!(it.next_timeout(LONG).is_none());
            });
            while waiting.load(Ordering::SeqCst) < 5 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(20));
            q.close().unwrap();
        });
    }
}

/// Pollers blocked in `poll(600 s)` are woken by `delete_group` and get `GroupDeleted`; an
/// `ack` racing the delete gets `Ok` or `GroupDeleted`, never hangs.
#[test]
fn delete_group_ends_blocked_polls_and_racing_acks() {
    let _s = serial();
    for (name, sync) in policies() {
        let _w = watchdog(60, &format!("{name}: delete_group vs pollers"));
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
        for round in 0..20 {
            let g = q.group("doomed").unwrap();
            q.append_batch(&[b"a".as_slice(), b"b", b"c"]).unwrap();
            q.flush().unwrap();
            // A group made again starts at the first offset: take everything there is.
            let ds = g.poll_batch(1000, Duration::ZERO).unwrap();
            assert_eq!(ds.len(), 3 * (round + 1));
            let waiting = AtomicU64::new(0);
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let (g, waiting) = (g.clone(), &waiting);
                    s.spawn(move || {
                        waiting.fetch_add(1, Ordering::SeqCst);
                        let r = g.poll(LONG);
                        assert!(
                            matches!(r, Err(Error::GroupDeleted { .. })),
                            "{name} round {round}: poll over a delete returned {r:?}"
                        );
                    });
                }
                for d in &ds {
                    let (g, off) = (g.clone(), d.offset());
                    s.spawn(move || match g.ack(off) {
                        Ok(()) | Err(Error::GroupDeleted { .. }) => {}
                        Err(e) => panic!("{name}: ack racing a delete: {e}"),
                    });
                }
                while waiting.load(Ordering::SeqCst) < 2 {
                    std::thread::yield_now();
                }
                q.delete_group("doomed").unwrap();
            });
            assert!(q.groups().unwrap().is_empty());
        }
        q.close().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Poll wake-ups
// ---------------------------------------------------------------------------------------

/// A consumer blocked in `poll(600 s)` is woken by an append made from another thread at
/// any moment around its going to sleep (no lost wake-up), under every policy; also by a
/// nack's delay running out and by a lease running out, with no other event to wake it.
#[test]
fn blocked_polls_are_woken_by_appends_nack_delays_and_lease_expiry() {
    let _s = serial();
    for (name, sync) in policies() {
        let _w = watchdog(120, &format!("{name}: lost wake-up of a blocked poll"));
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
        let g = q.group_with("w", GroupOptions::default().lease(Duration::from_millis(30)).max_attempts(1000)).unwrap();
        // Appends racing the consumer's going to sleep: spin a varying while first.
        for i in 0..150u64 {
            std::thread::scope(|s| {
                let q = &q;
                s.spawn(move || {
                    for _ in 0..(i % 17) * 50 {
                        std::hint::spin_loop();
                    }
                    q.append(&i.to_le_bytes()).unwrap();
                });
                let d = g.poll(LONG).unwrap().expect("woken with the record");
                assert_eq!(d.offset(), i);
                g.ack(d.offset()).unwrap();
            });
        }
        // A nack with a delay: nothing else happens, the delay alone must wake the poll.
        q.append(b"nacked").unwrap();
        let d = g.poll(LONG).unwrap().unwrap();
        g.nack(d.offset(), Duration::from_millis(40)).unwrap();
        let again = g.poll(LONG).unwrap().expect("the nacked record once due");
        assert_eq!(again.offset(), d.offset());
        assert_eq!(again.attempt(), 2);
        // A lease that runs out, with the poll started by another thread before it does.
        std::thread::scope(|s| {
            let g2 = g.clone();
            let h = s.spawn(move || g2.poll(LONG).unwrap().expect("the record whose lease ran out"));
            let taken = h.join().unwrap();
            assert_eq!(taken.offset(), d.offset());
            assert_eq!(taken.attempt(), 3);
        });
        // A nack racing a poll that is going to sleep, from another handle and thread.
        for _ in 0..100 {
            let d = g.poll(LONG).unwrap().unwrap();
            std::thread::scope(|s| {
                let g2 = g.clone();
                let off = d.offset();
                s.spawn(move || g2.nack(off, Duration::ZERO).unwrap());
                let back = g.poll(LONG).unwrap().expect("woken by the nack");
                assert_eq!(back.offset(), off);
            });
        }
        q.close().unwrap();
    }
}

/// `Iter::next_timeout(600 s)` racing appends from another thread: never misses one.
#[test]
fn a_follower_blocked_at_the_end_sees_every_append() {
    let _s = serial();
    let _w = watchdog(60, "lost wake-up of next_timeout");
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).sync(SyncPolicy::Never)).unwrap();
    let mut it = q.iter_from(0);
    for i in 0..2000u64 {
        std::thread::scope(|s| {
            let q = &q;
            s.spawn(move || {
                for _ in 0..(i % 13) * 40 {
                    std::hint::spin_loop();
                }
                q.append(&[7u8; 300]).unwrap();
            });
            let r = it.next_timeout(LONG).expect("woken by the append").unwrap();
            assert_eq!(r.offset(), i);
        });
    }
    q.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// close() racing retention passes, group creation and deletion, idle group closes, the
// `Interval` flusher and `Queue::flush`
// ---------------------------------------------------------------------------------------

/// Everything that takes the queue's locks at once: appenders rolling 4 KiB segments,
/// workers that take the group through `q.group` for every record (so that it is closed
/// and reopened as idle all the time, `idle_groups_kept_open(1)`), a thread creating and
/// deleting groups, `enforce_retention` and `flush` in loops, the `Interval` flusher (or
/// group commit), and then `close` from the main thread. Nothing hangs, every call after the
/// close fails with `Closed`, and after a reopen no record whose ack returned `Ok` is
/// delivered again, and every append that returned is there.
#[test]
fn close_racing_retention_group_churn_idle_closes_and_flushes() {
    let _s = serial();
    for (name, sync) in policies() {
        for consumed in [true, false] {
            let _w = watchdog(180, &format!("{name}: close racing retention and group churn"));
            let dir = tempfile::tempdir().unwrap();
            let mut opts =
                Options::default().segment_bytes(4096).index_interval_bytes(256).sync(sync).idle_groups_kept_open(1);
            opts = if consumed { opts.retain_until_consumed(true) } else { opts.retain_bytes(16 << 10) };
            let q = Queue::open(dir.path(), opts.clone()).unwrap();
            q.group("main").unwrap();
            let acked: Mutex<HashSet<u64>> = Mutex::default();
            let appended: Mutex<BTreeMap<u64, Vec<u8>>> = Mutex::default();
            let progress = AtomicU64::new(0);
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                let (q, acked, appended, progress, stop) = (&q, &acked, &appended, &progress, &stop);
                for t in 0..2u64 {
                    s.spawn(move || {
                        for i in 0.. {
                            let p = tagged(t, i);
                            match q.append(&p) {
                                Ok(off) => {
                                    appended.lock().unwrap().insert(off, p);
                                }
                                Err(e) if is_closed(&e) => return,
                                Err(e) => panic!("{name}: append: {e}"),
                            }
                        }
                    });
                }
                for _ in 0..2 {
                    s.spawn(move || {
                        loop {
                            let g = match q.group("main") {
                                Ok(g) => g,
                                Err(e) if is_closed(&e) => return,
                                Err(e) => panic!("{name}: group: {e}"),
                            };
                            let d = match g.poll(Duration::from_millis(5)) {
                                Ok(Some(d)) => d,
                                Ok(None) => continue,
                                Err(e) if is_closed(&e) => return,
                                Err(e) => panic!("{name}: poll: {e}"),
                            };
                            drop(g);
                            let g = match q.group("main") {
                                Ok(g) => g,
                                Err(e) if is_closed(&e) => return,
                                Err(e) => panic!("{name}: group: {e}"),
                            };
                            match g.ack(d.offset()) {
                                Ok(()) => {
                                    acked.lock().unwrap().insert(d.offset());
                                    progress.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) if is_closed(&e) => return,
                                Err(e) => panic!("{name}: ack: {e}"),
                            }
                        }
                    });
                }
                s.spawn(move || {
                    for i in 0u64.. {
                        let gname = format!("tmp-{}", i % 3);
                        let r = if i % 2 == 0 {
                            q.group(&gname).and_then(|g| g.poll(Duration::ZERO).map(drop))
                        } else {
                            q.delete_group(&gname)
                        };
                        match r {
                            Ok(()) => {}
                            Err(e) if is_closed(&e) => return,
                            Err(e) => panic!("{name}: group churn: {e}"),
                        }
                    }
                });
                s.spawn(move || {
                    loop {
                        match q.enforce_retention() {
                            Ok(_) => {}
                            Err(e) if is_closed(&e) => return,
                            Err(e) => panic!("{name}: retention: {e}"),
                        }
                        match q.flush() {
                            Ok(()) => {}
                            Err(e) if is_closed(&e) => return,
                            Err(e) => panic!("{name}: flush: {e}"),
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                });
                while progress.load(Ordering::Relaxed) < 150 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                q.close().unwrap_or_else(|e| panic!("{name}: close: {e}"));
                stop.store(true, Ordering::Relaxed);
            });
            assert!(matches!(q.group("main"), Err(Error::Closed)));
            assert!(matches!(q.delete_group("main"), Err(Error::Closed)));
            assert!(matches!(q.enforce_retention(), Err(Error::Closed)));
            drop(q);
            let q = Queue::open(dir.path(), opts).unwrap();
            assert!(q.recovery().clean);
            let appended = appended.into_inner().unwrap();
            for (off, p) in &appended {
                if *off >= q.first_offset() {
                    let r = q.read(*off).unwrap().unwrap_or_else(|| panic!("{name}: appended {off} missing"));
                    assert_eq!(r.payload(), &p[..]);
                }
            }
            assert!(q.next_offset() > *appended.keys().next_back().unwrap());
            let acked = acked.into_inner().unwrap();
            let g = q.group("main").unwrap();
            while let Some(d) = g.poll(Duration::ZERO).unwrap() {
                assert!(!acked.contains(&d.offset()), "{name}: offset {} was acked, delivered again", d.offset());
                g.ack(d.offset()).unwrap();
            }
            q.close().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// What many open/close cycles in one process keep
// ---------------------------------------------------------------------------------------

/// (open files, mappings, threads) of this process.
fn held() -> (usize, usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap().lines().count();
    (count("/proc/self/fd"), maps, count("/proc/self/task"))
}

/// One busy life of a queue: rolls, a spare segment, groups past the idle bound (closed and
/// reopened), snapshots (full journals), retention, threads polling when it is closed or
/// dropped. Half of the lives end in `drop` without `close`, one in ten in a failed second
/// open first.
fn one_life(dir: &std::path::Path, sync: SyncPolicy, life: u64) {
    let opts = Options::default()
        .segment_bytes(8192)
        .index_interval_bytes(256)
        .sync(sync)
        .idle_groups_kept_open(2)
        .retain_bytes(64 << 10);
    let q = Queue::open(dir, opts.clone()).unwrap();
    if life.is_multiple_of(10) {
        assert!(matches!(Queue::open(dir, opts), Err(Error::Locked { .. })));
    }
    for i in 0..200u64 {
        q.append(&tagged(life, i)).unwrap();
    }
    for t in 0..4 {
        let g = q.group(&format!("t{t}")).unwrap();
        for d in g.poll_batch(64, Duration::ZERO).unwrap() {
            g.ack(d.offset()).unwrap();
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (q, stop) = (&q, &stop);
        s.spawn(move || {
            let g = q.group("t0").unwrap();
            while !stop.load(Ordering::Relaxed) {
                match g.poll(Duration::from_millis(2)) {
                    Ok(Some(d)) => {
                        let _ = g.ack(d.offset());
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        });
        for i in 200..400u64 {
            q.append(&tagged(life, i)).unwrap();
        }
        let _ = q.enforce_retention();
        stop.store(true, Ordering::Relaxed);
    });
    if life.is_multiple_of(2) {
        q.close().unwrap();
    } else {
        drop(q);
    }
}

/// Fourteen lives of a queue in one process, under every policy: the process ends with the
/// threads, files and mappings it had after the first few, and no spare segment is left
/// in the directory.
#[test]
fn many_open_close_cycles_keep_no_thread_file_or_mapping() {
    let _s = serial();
    for (name, sync) in policies() {
        let _w = watchdog(300, &format!("{name}: open/close cycles"));
        let dir = tempfile::tempdir().unwrap();
        for life in 0..4 {
            one_life(dir.path(), sync, life);
        }
        std::thread::sleep(Duration::from_millis(50));
        let before = held();
        for life in 4..14 {
            one_life(dir.path(), sync, life);
        }
        std::thread::sleep(Duration::from_millis(100));
        let after = held();
        assert!(
            after.0 <= before.0 && after.1 <= before.1 + 2 && after.2 <= before.2,
            "{name}: 10 lives of a queue: (files, mappings, threads) {before:?} -> {after:?}"
        );
        let spare = dir.path().join("spare.log.tmp");
        assert!(!spare.exists(), "{name}: a closed queue left its spare segment behind");
    }
}

// ---------------------------------------------------------------------------------------
// Group commit under `Always` with many threads and rolls, across an abort
// ---------------------------------------------------------------------------------------

const CRASH_CHILD: &str = "crash_child_many_appenders_roll_and_abort";
const ENV_DIR: &str = "SEGQ_RACE_REVIEW_DIR";
const ENV_BUSY: &str = "SEGQ_RACE_REVIEW_BUSY";
const ENV_ABORT: &str = "SEGQ_RACE_REVIEW_ABORT_AFTER";

fn crash_options(busy: bool) -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(256).sync(SyncPolicy::Always).busy_wait_for_sync(busy)
}

/// Run in a child process by the test below; does nothing on its own. Eight threads
/// append (records and batches) under `Always` on 4 KiB segments, printing `acked <t> <i>
/// <offset>` once each call returned, and the process aborts once `ENV_ABORT` calls in all
/// returned, from whichever thread got there, while the others are mid-append.
#[test]
#[ignore = "child process of many_appenders_under_always_lose_nothing_acked_across_aborts"]
fn crash_child_many_appenders_roll_and_abort() {
    let Ok(dir) = std::env::var(ENV_DIR) else { return };
    let busy = std::env::var(ENV_BUSY).unwrap() == "1";
    let abort_after: u64 = std::env::var(ENV_ABORT).unwrap().parse().unwrap();
    let q = Queue::open(&dir, crash_options(busy)).unwrap();
    let base = q.next_offset();
    let calls = AtomicU64::new(0);
    let out = Mutex::new(std::io::stdout());
    writeln!(out.lock().unwrap(), "\nstart {base}").unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (q, calls, out) = (&q, &calls, &out);
            s.spawn(move || {
                let mut i = base * 16 + t * 1_000_000;
                loop {
                    let n = if i.is_multiple_of(3) { 2 } else { 1 };
                    let payloads: Vec<Vec<u8>> = (i..i + n).map(|i| tagged(t, i)).collect();
                    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                    let range = q.append_batch(&refs).unwrap();
                    {
                        let mut out = out.lock().unwrap();
                        for (k, off) in range.enumerate() {
                            writeln!(out, "acked {t} {} {off}", i + k as u64).unwrap();
                        }
                        out.flush().unwrap();
                    }
                    i += n;
                    if calls.fetch_add(1, Ordering::SeqCst) + 1 == abort_after {
                        std::process::abort();
                    }
                }
            });
        }
    });
}

/// Eight appenders under `Always`, segments rolling every few records, the process
/// aborted while appends are in flight, five times on one directory, with and without
/// `busy_wait_for_sync`: every append that returned is there after the reopen, at the
/// offset it was given, with its bytes.
#[test]
fn many_appenders_under_always_lose_nothing_acked_across_aborts() {
    let _s = serial();
    let _p = common::process_lock();
    for busy in [false, true] {
        let _w = watchdog(300, "crash children");
        let dir = tempfile::tempdir().unwrap();
        let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for round in 0..5u64 {
            let out = common::child_test(
                CRASH_CHILD,
                &[
                    (ENV_DIR, dir.path().display().to_string()),
                    (ENV_BUSY, if busy { "1" } else { "0" }.to_string()),
                    (ENV_ABORT, (300 + round * 97).to_string()),
                ],
            )
            .output()
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("start "), "the child did not run: {}", String::from_utf8_lossy(&out.stderr));
            for line in stdout.lines() {
                let Some(rest) = line.strip_prefix("acked ") else { continue };
                let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                assert!(acked.insert(v[2], (v[0], v[1])).is_none(), "offset {} acked twice", v[2]);
            }
            let q = Queue::open(dir.path(), crash_options(busy)).unwrap();
            let last = *acked.keys().next_back().unwrap();
            assert!(
                q.next_offset() > last,
                "busy {busy} round {round}: acked {last}, queue ends at {}",
                q.next_offset()
            );
            for (&off, &(t, i)) in &acked {
                let r = q.read(off).unwrap().unwrap_or_else(|| panic!("round {round}: acked offset {off} missing"));
                assert_eq!(r.payload(), tagged(t, i), "round {round}: payload at {off}");
            }
            q.close().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Group commit under `Always`, many threads, rolls: checked against the syncs made
// ---------------------------------------------------------------------------------------

/// With the sync audit of `segq::fault`: six threads append under `Always` on 4 KiB
/// segments (a roll every dozen records, seals in the background, spares), and each notes,
/// when its call returns, how many syncs had been recorded by then. Every record acknowledged
/// lies in bytes synced before its call returned, whichever thread led the sync.
#[test]
fn every_append_acknowledged_under_always_was_synced_before_it_returned() {
    let _s = serial();
    for busy in [false, true] {
        let _w = watchdog(120, "audited appenders");
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), crash_options(busy)).unwrap();
        segq::fault::audit(dir.path());
        let synced: Mutex<Vec<segq::fault::Synced>> = Mutex::default();
        let acked: Mutex<Vec<(u64, usize)>> = Mutex::default();
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let (q, synced, acked, dir) = (&q, &synced, &acked, dir.path());
                s.spawn(move || {
                    for i in 0..150u64 {
                        let n = if (i + t) % 5 == 0 { 3 } else { 1 };
                        let payloads: Vec<Vec<u8>> = (0..n).map(|k| tagged(t, i * 4 + k)).collect();
                        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                        let range = q.append_batch(&refs).unwrap();
                        let seen = {
                            let mut synced = synced.lock().unwrap();
                            synced.extend(segq::fault::take_synced(dir));
                            synced.len()
                        };
                        acked.lock().unwrap().extend(range.map(|off| (off, seen)));
                    }
                });
            }
        });
        let synced = synced.into_inner().unwrap();
        let files = common::segment_files(dir.path());
        assert!(files.len() > 20, "the test meant to cross many rolls");
        let mut spans = BTreeMap::new();
        for path in &files {
            let base = common::segment_base(path);
            for (i, span) in common::record_spans(&std::fs::read(path).unwrap()).into_iter().enumerate() {
                spans.insert(base + i as u64, (path.clone(), span.start as u64..span.end as u64));
            }
        }
        for (off, seen) in acked.into_inner().unwrap() {
            let (path, span) = &spans[&off];
            assert!(
                common::covered(&synced[..seen], path, span),
                "busy {busy}: record {off} ({span:?} of {path:?}) acknowledged before any sync covered it"
            );
        }
        q.close().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Every group operation at once, with busy-waiting group commit, then a close
// ---------------------------------------------------------------------------------------

/// Workers of group `inv` (poll, poll_batch, ack, ack_batch, nack, nack_delivery,
/// extend_delivery), an operator on group `chaos` (seek back and forth, redrive,
/// `group_with` changes, dead letters), appenders, retention under `retain_until_consumed`
/// (which a seek back holds off), idle group closes at every `q.group`, with
/// `busy_wait_for_sync` under `Always`; then a close. No call fails but with `Closed`,
/// nothing hangs, and after a reopen no record of `inv` whose ack returned is delivered
/// again.
#[test]
fn every_group_operation_at_once_then_close() {
    let _s = serial();
    for (name, sync) in policies() {
        for busy in [false, true] {
            let _w = watchdog(180, &format!("{name}: group chaos"));
            let dir = tempfile::tempdir().unwrap();
            let opts = Options::default()
                .segment_bytes(4096)
                .index_interval_bytes(256)
                .sync(sync)
                .busy_wait_for_sync(busy)
                .idle_groups_kept_open(0)
                .retain_until_consumed(true);
            let q = Queue::open(dir.path(), opts.clone()).unwrap();
            let gopts = GroupOptions::default().lease(Duration::from_millis(20)).max_attempts(3);
            q.group_with("inv", gopts).unwrap();
            q.group_with("chaos", gopts).unwrap();
            let acked: Mutex<HashSet<u64>> = Mutex::default();
            let progress = AtomicU64::new(0);
            macro_rules! ok_or_closed {
                ($e:expr, $what:expr) => {
                    match $e {
                        Ok(v) => v,
                        Err(e) if is_closed(&e) => return,
                        Err(e) => panic!("{name} busy {busy}: {}: {e}", $what),
                    }
                };
            }
            std::thread::scope(|s| {
                let (q, acked, progress) = (&q, &acked, &progress);
                s.spawn(move || {
                    for i in 0u64.. {
                        ok_or_closed!(q.append(&tagged(9, i)), "append");
                    }
                });
                for w in 0..3u64 {
                    s.spawn(move || {
                        for i in 0u64.. {
                            let g = ok_or_closed!(q.group("inv"), "group inv");
                            let batch = ok_or_closed!(
                                g.poll_batch(1 + (i % 4) as usize, Duration::from_millis(5)),
                                "poll_batch"
                            );
                            let mut acks = Vec::new();
                            for (k, d) in batch.iter().enumerate() {
                                match (i + k as u64 + w) % 7 {
                                    0 => {
                                        ok_or_closed!(g.nack(d.offset(), Duration::from_millis(1)), "nack");
                                    }
                                    1 => {
                                        ok_or_closed!(g.nack_delivery(d, Duration::ZERO), "nack_delivery");
                                    }
                                    2 => {
                                        if ok_or_closed!(g.extend_delivery(d, Duration::from_millis(50)), "extend") {
                                            ok_or_closed!(g.ack(d.offset()), "ack");
                                            acked.lock().unwrap().insert(d.offset());
                                        }
                                    }
                                    _ => acks.push(d.offset()),
                                }
                            }
                            ok_or_closed!(g.ack_batch(&acks), "ack_batch");
                            let mut a = acked.lock().unwrap();
                            a.extend(acks);
                            progress.store(a.len() as u64, Ordering::Relaxed);
                        }
                    });
                }
                s.spawn(move || {
                    for i in 0u64.. {
                        let g = ok_or_closed!(q.group("chaos"), "group chaos");
                        match i % 6 {
                            0 => ok_or_closed!(g.seek(q.first_offset()), "seek back"),
                            1 => ok_or_closed!(g.seek(q.next_offset()), "seek forward"),
                            2 => {
                                for d in ok_or_closed!(g.dead_letters(), "dead_letters") {
                                    ok_or_closed!(g.redrive(d.offset()), "redrive");
                                }
                            }
                            3 => {
                                let lease = Duration::from_millis(10 + i % 20);
                                let _ = ok_or_closed!(q.group_with("chaos", gopts.lease(lease)), "group_with");
                            }
                            _ => {
                                if let Some(d) = ok_or_closed!(g.poll(Duration::from_millis(2)), "poll chaos") {
                                    ok_or_closed!(g.nack(d.offset(), Duration::ZERO), "nack chaos");
                                }
                            }
                        }
                        let _ = g.stats();
                        let _ = g.ack_floor();
                    }
                });
                s.spawn(move || {
                    loop {
                        let _ = ok_or_closed!(q.enforce_retention(), "retention");
                        let _ = ok_or_closed!(q.group(&format!("idle-{}", q.next_offset() % 5)), "idle group");
                    }
                });
                while progress.load(Ordering::Relaxed) < 250 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                q.close().unwrap_or_else(|e| panic!("{name}: close: {e}"));
            });
            drop(q);
            let q = Queue::open(dir.path(), opts).unwrap();
            let acked = acked.into_inner().unwrap();
            let g = q.group("inv").unwrap();
            while let Some(d) = g.poll(Duration::ZERO).unwrap() {
                assert!(
                    !acked.contains(&d.offset()),
                    "{name} busy {busy}: offset {} acked, delivered again",
                    d.offset()
                );
                g.ack(d.offset()).unwrap();
            }
            q.close().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// After close (or drop): every call says so
// ---------------------------------------------------------------------------------------

/// Every call of a closed queue, and of group handles and iterators kept past its close or
/// its drop, fails with `Closed` (or, for iterators, ends), at once.
#[test]
fn every_call_after_close_or_drop_fails_with_closed() {
    let _s = serial();
    for by_drop in [false, true] {
        let _w = watchdog(60, "calls after close");
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
        q.append_batch(&[b"a".as_slice(), b"b", b"c"]).unwrap();
        let g = q.group("g").unwrap();
        let d = g.poll(Duration::ZERO).unwrap().unwrap();
        let mut it = q.iter_from(0);
        assert!(it.next().is_some());
        let rec = q.read(1).unwrap().unwrap();
        if by_drop {
            drop(q);
        } else {
            q.close().unwrap();
            let closed = |r: Result<(), Error>, what: &str| assert!(matches!(r, Err(Error::Closed)), "{what}: {r:?}");
            closed(q.append(b"x").map(drop), "append");
            closed(q.append_batch(&[b"x".as_slice()]).map(drop), "append_batch");
            closed(q.flush(), "flush");
            closed(q.read(0).map(drop), "read");
            closed(q.group("g").map(drop), "group");
            closed(q.group_with("h", GroupOptions::default()).map(drop), "group_with");
            closed(q.delete_group("g"), "delete_group");
            closed(q.enforce_retention().map(drop), "enforce_retention");
            closed(q.offset_at_time(0).map(drop), "offset_at_time");
            assert!(q.iter_from(0).next().is_none());
            q.close().unwrap();
        }
        let closed = |r: Result<(), Error>, what: &str| assert!(matches!(r, Err(Error::Closed)), "{what}: {r:?}");
        closed(g.poll(LONG).map(drop), "poll");
        closed(g.poll_batch(3, LONG).map(drop), "poll_batch");
        closed(g.ack(d.offset()), "ack");
        closed(g.ack_batch(&[d.offset()]), "ack_batch");
        closed(g.nack(d.offset(), Duration::ZERO), "nack");
        closed(g.nack_batch(&[d.offset()], Duration::ZERO), "nack_batch");
        closed(g.extend_lease(d.offset(), LONG).map(drop), "extend_lease");
        closed(g.is_current(&d).map(drop), "is_current");
        closed(g.nack_delivery(&d, Duration::ZERO).map(drop), "nack_delivery");
        closed(g.extend_delivery(&d, LONG).map(drop), "extend_delivery");
        closed(g.dead_letters().map(drop), "dead_letters");
        closed(g.redrive(0).map(drop), "redrive");
        closed(g.seek(0), "seek");
        closed(g.flush(), "flush");
        assert_eq!(g.stats().leased, 1);
        assert!(it.next().is_none() && it.next_timeout(LONG).is_none());
        assert_eq!(rec.payload(), b"b");
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        assert!(q.recovery().clean);
        assert_eq!(q.next_offset(), 3);
        q.close().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Iterators racing close
// ---------------------------------------------------------------------------------------

/// Iterators crossing one-record segments (each step into a segment maps it) while the
/// queue is closed: `Queue::iter_from` promises that once the queue is closed the iterator
/// yields nothing more, no `Error::Closed`; any other error is wrong too.
#[test]
fn iterators_racing_close_end_without_an_error() {
    let _s = serial();
    let _w = watchdog(240, "iterators racing close");
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(4096).sync(SyncPolicy::Never);
    {
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        for i in 0..400u64 {
            q.append(&[i as u8; 3000]).unwrap();
        }
        q.close().unwrap();
    }
    let mut errors = Vec::new();
    for cycle in 0..60u64 {
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        let seen: Mutex<Vec<String>> = Mutex::default();
        let running = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let (q, seen, running) = (&q, &seen, &running);
                s.spawn(move || {
                    running.fetch_add(1, Ordering::SeqCst);
                    loop {
                        let mut it = q.iter_from((t * 61 + cycle * 7) % 400);
                        let mut n = 0;
                        loop {
                            match it.next() {
                                Some(Ok(_)) => n += 1,
                                Some(Err(e)) => {
                                    seen.lock().unwrap().push(format!("{e:?}"));
                                    return;
                                }
                                None => break,
                            }
                        }
                        if n == 0 && q.next_offset() > 0 && q.read(0).is_err() {
                            return; // closed
                        }
                    }
                });
            }
            while running.load(Ordering::SeqCst) < 6 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_micros(500 + cycle * 97 % 4000));
            q.close().unwrap();
        });
        errors.extend(seen.into_inner().unwrap());
    }
    assert!(errors.is_empty(), "iterators yielded errors racing close: {errors:?}");
}

/// `Queue::flush` makes every open group durable: one deleted while its flush waited has
/// nothing left to make durable, and is no error of the queue's. (It returned
/// `GroupDeleted`, found by the test above now and then.)
#[test]
fn a_queue_flush_racing_a_group_deletion_succeeds() {
    use segq::fault::{self, Fault, Point};
    let _s = serial();
    let _w = watchdog(120, "a queue flush racing a group deletion");
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    q.append_batch(&[b"a".as_slice(), b"b"]).unwrap();
    let g = q.group("g").unwrap();
    let first = g.poll(Duration::ZERO).unwrap().unwrap();
    g.ack(first.offset()).unwrap();
    let journal = dir.path().join("groups").join("g").join("journal");
    fault::inject(Fault::new(&journal, Point::Sync).stall());
    std::thread::scope(|s| {
        // A flush of the group whose sync is held...
        let held = s.spawn(|| g.flush());
        while fault::held(&journal) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...a change it does not cover, and a queue flush that waits for it to end...
        let second = g.poll(Duration::ZERO).unwrap().unwrap();
        g.ack(second.offset()).unwrap();
        let queue_flush = s.spawn(|| q.flush());
        std::thread::sleep(Duration::from_millis(200));
        // ...then the group is deleted under both.
        q.delete_group("g").unwrap();
        fault::clear(&journal);
        assert!(matches!(held.join().unwrap(), Ok(()) | Err(Error::GroupDeleted { .. })));
        queue_flush.join().unwrap().unwrap();
    });
    q.close().unwrap();
}
