//! Groups that no handle holds are closed past `Options::idle_groups_kept_open` and reopened
//! from their files by the next `Queue::group`: every test compares what a user of the
//! public API sees with and without that close. (Written by the session-21 review of the
//! change; six of these failed on its first version.)

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use segq::{GroupOptions, Options, Queue, SyncPolicy, fault};

const ZERO: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);

/// `close_idle` without creating a group each time: opens whichever of two spare groups is
/// closed (with `idle_groups_kept_open(0)` the one opened last is closed by the next call).
fn close_idle_alternating(q: &Queue, turn: usize) {
    drop(q.group(["zz-spare-a", "zz-spare-b"][turn % 2]).unwrap());
}

fn name(i: usize) -> String {
    format!("tenant-{i:03}")
}

// ---------------------------------------------------------------------------------------
// Leases that ran out but were not taken by another poll
// ---------------------------------------------------------------------------------------

/// The control for the next test: without a close, a lease that ran out still holds until
/// another poll takes the record (`Group::is_current`'s documented contract).
#[test]
fn control_a_lease_that_ran_out_still_holds_while_no_poll_took_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    q.append(b"job").unwrap();
    let d = q
        .group_with("w", GroupOptions::default().lease(Duration::from_millis(20)))
        .unwrap()
        .poll(ZERO)
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(60));
    common::close_idle_groups(&q); // the default bound (256): nothing is closed
    let g = q.group("w").unwrap();
    assert!(g.is_current(&d).unwrap());
    assert!(g.extend_delivery(&d, HOUR).unwrap());
    q.close().unwrap();
}

/// A worker polls with a short lease, drops the `Group` handle (it keeps the `Delivery`),
/// works past its lease, then gets the group again to check/extend before committing.
/// Nobody else polled, so `is_current` is documented to be true; the idle close ended the
/// lease instead. The worker abandons work it still owned (or, below, loses the record to
/// the dead letters).
#[test]
fn a_lease_that_ran_out_but_was_not_taken_still_holds_after_the_group_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(0)).unwrap();
    q.append(b"job").unwrap();
    let d = q
        .group_with("w", GroupOptions::default().lease(Duration::from_millis(20)))
        .unwrap()
        .poll(ZERO)
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(60));
    common::close_idle_groups(&q);
    let g = q.group("w").unwrap();
    assert!(g.is_current(&d).unwrap(), "no poll took the record: its lease still holds (Group::is_current)");
    assert!(g.extend_delivery(&d, HOUR).unwrap(), "extend_delivery refused a lease no one else took");
    q.close().unwrap();
}

/// Same, on the record's last allowed attempt: without the close, `extend_delivery` keeps
/// the record (it is acked later). After the close it is refused and the record becomes a
/// dead letter although its worker was still on it and nobody polled.
#[test]
fn extending_a_last_attempt_whose_lease_ran_out_keeps_it_from_the_dead_letters() {
    for kept in [256, 0] {
        let dir = tempfile::tempdir().unwrap();
        let q =
            Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(kept)).unwrap();
        q.append(b"job").unwrap();
        let opts = GroupOptions::default().lease(Duration::from_millis(20)).max_attempts(1);
        let d = q.group_with("w", opts).unwrap().poll(ZERO).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        common::close_idle_groups(&q);
        let g = q.group("w").unwrap();
        let extended = g.extend_delivery(&d, HOUR).unwrap();
        let dead = g.dead_letters().unwrap().len();
        assert!(extended && dead == 0, "kept {kept}: extended {extended}, dead letters {dead}");
        g.ack(d.offset()).unwrap();
        assert_eq!(g.ack_floor(), 1);
        q.close().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Cost of closing and reopening
// ---------------------------------------------------------------------------------------

/// A service that takes its tenants' groups round-robin (`q.group(t)` each turn, handle
/// dropped) with more tenants than the bound. Tenants with nothing to do change nothing,
/// and such a turn syncs nothing. (In 9990aa2 each turn reopened the group, found its
/// journal empty, and wrote its snapshot again with a sync of it, of `groups/` and of the
/// queue's directory.)
#[test]
fn taking_unchanged_groups_round_robin_past_the_bound_syncs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(2)).unwrap();
    for i in 0..8 {
        drop(q.group(&name(i)).unwrap());
    }
    fault::audit(dir.path());
    fault::take_synced(dir.path());
    let turns = 5 * 8;
    for _ in 0..5 {
        for i in 0..8 {
            let g = q.group(&name(i)).unwrap();
            assert!(g.poll(ZERO).unwrap().is_none(), "nothing to do");
        }
    }
    let synced = fault::take_synced(dir.path());
    let states =
        synced.iter().filter(|s| s.path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("state"))).count();
    assert!(synced.is_empty(), "{} syncs ({states} of snapshots) for {turns} turns that changed nothing", synced.len());
    q.close().unwrap();
}

/// The same for groups that did work once (their journal has entries): each close of a
/// reopened group syncs its journal again, though nothing changed since the last close
/// (`GroupCommit::new(0)` at open: nothing is known durable).
#[test]
fn taking_groups_with_journaled_acks_round_robin_past_the_bound_syncs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(2)).unwrap();
    q.append(b"job").unwrap();
    for i in 0..8 {
        let g = q.group(&name(i)).unwrap();
        g.ack(g.poll(ZERO).unwrap().unwrap().offset()).unwrap();
    }
    q.flush().unwrap();
    fault::audit(dir.path());
    fault::take_synced(dir.path());
    for _ in 0..5 {
        for i in 0..8 {
            let g = q.group(&name(i)).unwrap();
            assert!(g.poll(ZERO).unwrap().is_none(), "nothing to do");
        }
    }
    let synced = fault::take_synced(dir.path());
    assert!(synced.is_empty(), "{} syncs for 40 turns that changed nothing", synced.len());
    q.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// Behaviour kept across a close (passing tests)
// ---------------------------------------------------------------------------------------

/// Differential: the same random script of polls, acks, nacks (now or far ahead), seeks,
/// redrives, `group_with` changes and dead letters on two queues, one that never closes a
/// group and one that closes every idle group between steps. Every observable answer
/// (deliveries and their attempts, ack floors, stats, dead letters) agrees.
#[test]
fn a_script_of_group_calls_gives_the_same_answers_whether_groups_are_closed_between_calls() {
    let seed = common::test_seed("REVIEW_IDLE_SEED");
    println!("seed {seed}");
    let mut rng = common::Rng::new(seed);
    for sync in [SyncPolicy::Never, SyncPolicy::Always, SyncPolicy::Interval(Duration::from_millis(5))] {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let qa = Queue::open(da.path(), Options::default().sync(sync)).unwrap();
        let qb = Queue::open(db.path(), Options::default().sync(sync).idle_groups_kept_open(0)).unwrap();
        for i in 0..40u8 {
            qa.append(&[i]).unwrap();
            qb.append(&[i]).unwrap();
        }
        let names = ["a", "b", "c"];
        for step in 0..70 {
            let n = names[rng.below(3) as usize];
            let (ga, gb) = (qa.group(n).unwrap(), qb.group(n).unwrap());
            let what = rng.below(10);
            let ctx = format!("{sync:?} step {step} group {n} op {what}");
            match what {
                0..=4 => {
                    // Poll a few; ack, nack far ahead, or nack now and take the retry at once
                    // (so that at most one retry is ever due: see the next test for the
                    // order of several).
                    for _ in 0..rng.range(1..4) {
                        let (a, b) = (ga.poll(ZERO).unwrap(), gb.poll(ZERO).unwrap());
                        assert_eq!(
                            a.as_ref().map(|d| (d.offset(), d.attempt())),
                            b.as_ref().map(|d| (d.offset(), d.attempt())),
                            "{ctx}"
                        );
                        let (Some(mut a), Some(_)) = (a, b) else { break };
                        loop {
                            let act = rng.below(3);
                            println!(
                                "{ctx}: polled {} attempt {}, then {}",
                                a.offset(),
                                a.attempt(),
                                ["ack", "nack an hour", "nack now"][act as usize]
                            );
                            match act {
                                0 => {
                                    ga.ack(a.offset()).unwrap();
                                    gb.ack(a.offset()).unwrap();
                                    break;
                                }
                                1 => {
                                    ga.nack(a.offset(), HOUR).unwrap();
                                    gb.nack(a.offset(), HOUR).unwrap();
                                    break;
                                }
                                _ => {
                                    ga.nack(a.offset(), ZERO).unwrap();
                                    gb.nack(a.offset(), ZERO).unwrap();
                                    drop((ga.clone(), gb.clone()));
                                    close_idle_alternating(&qb, step); // held: closes nothing
                                    let (x, y) = (ga.poll(ZERO).unwrap(), gb.poll(ZERO).unwrap());
                                    assert_eq!(
                                        x.as_ref().map(|d| (d.offset(), d.attempt())),
                                        y.as_ref().map(|d| (d.offset(), d.attempt())),
                                        "{ctx}"
                                    );
                                    match x {
                                        Some(x) => a = x,
                                        None => break,
                                    }
                                }
                            }
                        }
                    }
                }
                5 => {
                    let to = rng.range(0..41);
                    println!("{ctx}: seek {to}");
                    ga.seek(to).unwrap();
                    gb.seek(to).unwrap();
                }
                6 => {
                    let dead: Vec<u64> = ga.dead_letters().unwrap().iter().map(|d| d.offset()).collect();
                    if let Some(&o) = dead.first() {
                        println!("{ctx}: redrive {o}");
                        assert_eq!(ga.redrive(o).unwrap(), gb.redrive(o).unwrap(), "{ctx}");
                        // Taken at once: at most one retry is due at a time.
                        let (x, y) = (ga.poll(ZERO).unwrap(), gb.poll(ZERO).unwrap());
                        assert_eq!(
                            x.as_ref().map(|d| (d.offset(), d.attempt())),
                            y.as_ref().map(|d| (d.offset(), d.attempt())),
                            "{ctx}"
                        );
                        if let Some(x) = x {
                            ga.nack(x.offset(), HOUR).unwrap();
                            gb.nack(x.offset(), HOUR).unwrap();
                        }
                    }
                }
                7 => {
                    let o = GroupOptions::default().max_attempts(rng.range(1..4) as u32).lease(HOUR);
                    println!("{ctx}: group_with {o:?}");
                    drop((ga, gb));
                    let (ga2, gb2) = (qa.group_with(n, o).unwrap(), qb.group_with(n, o).unwrap());
                    assert_eq!(ga2.options(), gb2.options(), "{ctx}");
                    continue;
                }
                8 => {
                    let off = rng.range(0..40);
                    let (a, b) = (ga.ack(off), gb.ack(off));
                    println!("{ctx}: ack {off}: {a:?}");
                    assert_eq!(a.is_ok(), b.is_ok(), "{ctx}");
                }
                _ => {
                    qa.append(&[step as u8]).unwrap();
                    qb.append(&[step as u8]).unwrap();
                }
            }
            let (sa, sb) = (ga.stats(), gb.stats());
            assert_eq!(
                (sa.ack_floor, sa.next_delivery, sa.lag, sa.leased, sa.waiting, sa.dead, sa.lost, sa.max_attempts),
                (sb.ack_floor, sb.next_delivery, sb.lag, sb.leased, sb.waiting, sb.dead, sb.lost, sb.max_attempts),
                "{ctx}"
            );
            let dl = |g: &segq::Group| {
                g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>()
            };
            assert_eq!(dl(&ga), dl(&gb), "{ctx}");
            drop((ga, gb));
            close_idle_alternating(&qb, step + 1);
            // (Under `Interval` the flusher holds clones while it flushes: a close may skip
            // the group then, which is harmless.)
            if !matches!(sync, SyncPolicy::Interval(_)) {
                assert!(!common::group_is_open(db.path(), n), "{ctx}: closed between steps");
            }
        }
        qa.close().unwrap();
        qb.close().unwrap();
    }
}

/// Two retries due at once are handed out earliest due first (a record nacked 30 ms
/// before another comes back before it). After an idle close the reopened group hands them
/// out by offset instead: `Snapshot` stores due times in ms and `Clock::ms_of` saturates
/// every past due time to "now" at the reopen, so the due order of all records already
/// due is lost. The same happens at a queue restart, but the idle close now does it at any
/// moment of a running service, for groups nobody holds (e.g. a nack-and-forget worker).
#[test]
fn retries_already_due_keep_their_order_across_an_idle_close() {
    for kept in [256, 0] {
        let dir = tempfile::tempdir().unwrap();
        let q =
            Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(kept)).unwrap();
        q.append_batch(&[b"a".as_slice(), b"b"]).unwrap();
        let g = q.group("w").unwrap();
        let (d0, d1) = (g.poll(ZERO).unwrap().unwrap(), g.poll(ZERO).unwrap().unwrap());
        g.nack(d1.offset(), ZERO).unwrap(); // due first
        std::thread::sleep(Duration::from_millis(30));
        g.nack(d0.offset(), ZERO).unwrap();
        drop(g);
        common::close_idle_groups(&q);
        let g = q.group("w").unwrap();
        let first = g.poll(ZERO).unwrap().unwrap();
        assert_eq!(first.offset(), 1, "kept {kept}: the retry due first comes first");
        q.close().unwrap();
    }
}

/// A worker holding a running lease but no `Group` handle: the group stays open, and the
/// worker's later `q.group(name)` finds its lease: is_current, extend, nack_delivery work.
#[test]
fn a_worker_with_a_running_lease_and_no_handle_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(0)).unwrap();
    q.append_batch(&[b"a".as_slice(), b"b"]).unwrap();
    let g = q.group_with("w", GroupOptions::default().lease(HOUR)).unwrap();
    let (d0, d1) = (g.poll(ZERO).unwrap().unwrap(), g.poll(ZERO).unwrap().unwrap());
    drop(g);
    for _ in 0..5 {
        common::close_idle_groups(&q);
    }
    assert!(common::group_is_open(dir.path(), "w"));
    let g = q.group("w").unwrap();
    assert!(g.is_current(&d0).unwrap() && g.is_current(&d1).unwrap());
    assert!(g.extend_delivery(&d0, HOUR).unwrap());
    assert!(g.nack_delivery(&d1, HOUR).unwrap());
    g.ack(d0.offset()).unwrap();
    drop(g);
    // Now no lease runs: it is closed, and reopens with record 1 waiting an hour.
    common::close_idle_groups(&q);
    assert!(!common::group_is_open(dir.path(), "w"));
    let g = q.group("w").unwrap();
    assert_eq!((g.ack_floor(), g.stats().waiting), (1, 1));
    assert!(g.poll(ZERO).unwrap().is_none());
    q.close().unwrap();
}

/// A closed group is still listed, deleted like an open one (and not resurrected with its
/// old state by a later `group`), and the close of the queue afterwards is clean.
#[test]
fn closed_groups_are_listed_deleted_and_recreated_fresh() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(0)).unwrap();
    q.append_batch(&[b"a".as_slice(), b"b"]).unwrap();
    let g = q.group("gone").unwrap();
    g.ack(g.poll(ZERO).unwrap().unwrap().offset()).unwrap();
    drop(g);
    common::close_idle_groups(&q);
    assert!(!common::group_is_open(dir.path(), "gone"));
    assert!(q.groups().unwrap().contains(&"gone".to_string()));
    q.delete_group("gone").unwrap();
    assert!(!q.groups().unwrap().contains(&"gone".to_string()));
    assert_eq!(q.group("gone").unwrap().ack_floor(), 0, "a new group, not the deleted one");
    q.close().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(q.recovery().clean);
    assert_eq!(q.group("gone").unwrap().ack_floor(), 0);
}

/// Closed under `Never` (or `Interval` with a long period), a group's acks survive a
/// process crash that follows at once and a power loss (only synced bytes are relied on:
/// checked with the sync audit: the ack's journal entry was covered by a sync).
#[test]
fn a_closed_groups_acks_are_durable() {
    let _serial = common::process_lock();
    for sync in [SyncPolicy::Never, SyncPolicy::Interval(HOUR)] {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().sync(sync).idle_groups_kept_open(0)).unwrap();
        q.append_batch(&[b"a".as_slice(), b"b", b"c"]).unwrap();
        q.flush().unwrap();
        fault::audit(dir.path());
        let g = q.group("g").unwrap();
        for _ in 0..2 {
            g.ack(g.poll(ZERO).unwrap().unwrap().offset()).unwrap();
        }
        drop(g);
        fault::take_synced(dir.path());
        common::close_idle_groups(&q);
        let synced = fault::take_synced(dir.path());
        let journal = dir.path().join("groups/g/journal");
        assert!(synced.iter().any(|s| s.path == journal), "{sync:?}: the close synced the journal: {synced:?}");
        let image = tempfile::tempdir().unwrap();
        common::copy_tree(dir.path(), image.path());
        q.simulate_crash();
        let q = Queue::open(image.path(), Options::default()).unwrap();
        assert_eq!(q.group("g").unwrap().ack_floor(), 2, "{sync:?}");
    }
}

/// A close whose flush fails keeps the group open with its state; the error surfaces on
/// the group's next call (which heals it) or in `Queue::flush`, and nothing is lost.
#[test]
fn a_close_whose_flush_fails_keeps_the_group() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(0)).unwrap();
    q.append_batch(&[b"a".as_slice(), b"b", b"c"]).unwrap();
    q.flush().unwrap();
    let g = q.group("g").unwrap();
    g.ack(g.poll(ZERO).unwrap().unwrap().offset()).unwrap();
    drop(g);
    let gdir = dir.path().join("groups/g");
    fault::inject(fault::Fault::new(&gdir, fault::Point::Sync));
    common::close_idle_groups(&q);
    fault::clear(&gdir);
    assert!(common::group_is_open(dir.path(), "g"), "kept open after the failed flush");
    // Other closes leave it be (it failed), until a call heals it.
    common::close_idle_groups(&q);
    assert!(common::group_is_open(dir.path(), "g"));
    let g = q.group("g").unwrap();
    assert_eq!(g.ack_floor(), 1);
    let d = g.poll(ZERO).unwrap().unwrap(); // heals
    assert_eq!((d.offset(), d.attempt()), (1, 1));
    g.ack(1).unwrap();
    drop(g);
    common::close_idle_groups(&q);
    assert!(!common::group_is_open(dir.path(), "g"), "healed: closed like the others");
    q.simulate_crash();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(q.group("g").unwrap().ack_floor(), 2);
}

/// Threads polling and acking through handles they clone and drop all the time, threads
/// opening new groups (which closes idle ones), and the `Interval` flusher at 1 ms: no
/// call fails, no record is delivered twice within a group while no lease ran out, and
/// every group ends with everything acked, as its files say after a reopen.
#[test]
fn workers_cloning_and_dropping_handles_race_the_closes_and_the_flusher() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().sync(SyncPolicy::Interval(Duration::from_millis(1))).idle_groups_kept_open(1);
    let q = Queue::open(dir.path(), opts).unwrap();
    let records = 200u64;
    for i in 0..records {
        q.append(&i.to_le_bytes()).unwrap();
    }
    let finished = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..3 {
            let (q, finished) = (&q, &finished);
            s.spawn(move || {
                let n = name(w);
                let mut acked = 0;
                while acked < records {
                    let g = q.group_with(&n, GroupOptions::default().lease(HOUR)).unwrap();
                    let h = g.clone();
                    drop(g);
                    match h.poll(ZERO).unwrap() {
                        Some(d) => {
                            assert_eq!(d.attempt(), 1, "{n}: delivered again at {}", d.offset());
                            drop(h);
                            let g = q.group(&n).unwrap();
                            assert!(g.is_current(&d).unwrap(), "{n}: lease lost at {}", d.offset());
                            g.ack(d.offset()).unwrap();
                            acked += 1;
                        }
                        None => panic!("{n}: nothing to poll with {acked} acked"),
                    }
                }
                finished.fetch_add(1, Ordering::Relaxed);
            });
        }
        s.spawn(|| {
            while finished.load(Ordering::Relaxed) < 3 {
                common::close_idle_groups(&q);
            }
        });
    });
    q.close().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    for w in 0..3 {
        assert_eq!(q.group(&name(w)).unwrap().ack_floor(), records);
    }
}

/// Retention under `retain_until_consumed` while groups are closed and reopened and
/// appends roll segments: no group ever loses a record (a deleted segment it still
/// needed), whatever interleaving of passes, closes and reopens.
#[test]
fn retention_never_deletes_what_a_closed_group_needs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .segment_bytes(4096)
        .sync(SyncPolicy::Never)
        .retain_until_consumed(true)
        .idle_groups_kept_open(0);
    let q = Queue::open(dir.path(), opts).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300u64 {
                q.append(&[i as u8; 1000]).unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        for w in 0..2usize {
            let (q, done) = (&q, &done);
            s.spawn(move || {
                let mut rng = common::Rng::new(w as u64 + 1);
                while !done.load(Ordering::Relaxed) {
                    let n = name(rng.below(6) as usize);
                    let g = q.group(&n).unwrap();
                    // Acks some, leaves some: some groups hold retention back.
                    for _ in 0..rng.below(8) {
                        let Some(d) = g.poll(ZERO).unwrap() else { break };
                        if rng.chance(80) { g.ack(d.offset()).unwrap() } else { g.nack(d.offset(), ZERO).unwrap() }
                    }
                    assert_eq!(g.stats().lost, 0, "{n} lost records to retention");
                    drop(g);
                    common::close_idle_groups(q);
                }
            });
        }
    });
    for i in 0..6 {
        assert_eq!(q.group(&name(i)).unwrap().stats().lost, 0);
    }
    q.enforce_retention().unwrap();
    for i in 0..6 {
        assert_eq!(q.group(&name(i)).unwrap().stats().lost, 0);
    }
    q.close().unwrap();
}

/// The `segq` binary on a queue whose groups were closed and reopened many times: `verify`
/// finds nothing wrong and `groups` shows the state the library has.
#[test]
fn the_binary_agrees_with_the_library_after_many_closes() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(2)).unwrap();
    for i in 0..20u8 {
        q.append(&[i]).unwrap();
    }
    for round in 0..4 {
        for i in 0..8 {
            let g = q.group(&name(i)).unwrap();
            for _ in 0..(i % 3) {
                let d = g.poll(ZERO).unwrap().unwrap();
                if round % 2 == 0 { g.ack(d.offset()).unwrap() } else { g.nack(d.offset(), HOUR).unwrap() }
            }
        }
    }
    let floors: Vec<u64> = (0..8).map(|i| q.group(&name(i)).unwrap().ack_floor()).collect();
    q.close().unwrap();
    drop(q);
    let bin = env!("CARGO_BIN_EXE_segq");
    let verify = std::process::Command::new(bin).args(["verify", &dir.path().display().to_string()]).output().unwrap();
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let groups =
        std::process::Command::new(bin).args(["groups", &dir.path().display().to_string(), "--json"]).output().unwrap();
    assert!(groups.status.success(), "groups: {}", String::from_utf8_lossy(&groups.stderr));
    let text = String::from_utf8_lossy(&groups.stdout);
    for (i, floor) in floors.iter().enumerate() {
        assert!(text.contains(&name(i)), "{text}");
        let _ = floor;
    }
    let json: serde_json::Value = serde_json::from_slice(&groups.stdout).unwrap();
    let list = json.get("groups").and_then(|g| g.as_array()).cloned().unwrap_or_default();
    for g in list {
        let Some(n) = g.get("name").and_then(|n| n.as_str()) else { continue };
        if let Some(i) = (0..8).find(|&i| name(i) == n) {
            assert_eq!(g.get("ack_floor").and_then(|f| f.as_u64()), Some(floors[i]), "{n}: {g}");
        }
    }
}

/// Under a size limit, retention deletes records a group had not consumed. An open group
/// counts them as lost at its next call; a closed one at its reopen: the same count, the
/// same ack floor and the same next delivery either way.
#[test]
fn records_deleted_while_a_group_is_closed_count_as_lost_as_for_an_open_one() {
    let mut seen = Vec::new();
    for kept in [256, 0] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default()
            .segment_bytes(4096)
            .retain_bytes(8192)
            .sync(SyncPolicy::Never)
            .idle_groups_kept_open(kept);
        let q = Queue::open(dir.path(), opts).unwrap();
        q.append(&[0; 3000]).unwrap();
        let g = q.group("slow").unwrap();
        let d = g.poll(ZERO).unwrap().unwrap();
        g.nack(d.offset(), HOUR).unwrap();
        drop(g);
        common::close_idle_groups(&q);
        assert_eq!(common::group_is_open(dir.path(), "slow"), kept > 0);
        for i in 1..8u8 {
            q.append(&[i; 3000]).unwrap();
        }
        q.enforce_retention().unwrap();
        let g = q.group("slow").unwrap();
        let s = g.stats();
        let next = g.poll(ZERO).unwrap().map(|d| (d.offset(), d.attempt()));
        seen.push((q.first_offset(), s.ack_floor, s.lost, s.waiting, next));
        q.close().unwrap();
    }
    assert_eq!(seen[0], seen[1], "open vs closed");
}

/// Groups that cannot be closed (a consumer holds a lease) count towards the bound all the
/// same: with 6 of them in use (their workers come back through `q.group` to check their
/// leases) and a bound of 4, the 3 tenants taken round-robin, fewer than the bound, are
/// closed and reopened at every turn although nothing needs their descriptors.
#[test]
fn groups_that_cannot_be_closed_do_not_make_the_others_thrash() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(4)).unwrap();
    q.append(b"job").unwrap();
    let leases: Vec<(String, segq::Delivery)> = (0..6)
        .map(|i| {
            let n = format!("leased-{i}");
            let d = q.group_with(&n, GroupOptions::default().lease(HOUR)).unwrap().poll(ZERO).unwrap().unwrap();
            (n, d)
        })
        .collect();
    let mut reopened = 0;
    for turn in 0..12 {
        for (n, d) in &leases {
            assert!(q.group(n).unwrap().is_current(d).unwrap());
        }
        let t = name(turn % 3);
        if turn >= 3 && !common::group_is_open(dir.path(), &t) {
            reopened += 1;
        }
        drop(q.group(&t).unwrap());
    }
    assert_eq!(reopened, 0, "3 tenants under a bound of 4 were reopened {reopened} times in 9 turns");
    q.close().unwrap();
}
