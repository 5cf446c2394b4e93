//! Review of c67bbb4 (idle group closes flush outside the queue's locks; `after_retention`;
//! `fault::Fault::stall`) and 60f62ff (`Stats::spare_bytes`, `Queue::flush` and deleted
//! groups, `offset_at_time` on a closed queue, `inspect` and segments deleted meanwhile,
//! iterators racing a close). Written by the session-22 review of those commits; one test
//! failed, now `a_roll_whose_spare_rename_fails_leaves_no_uncounted_spare`.
//!
//! No test asserts on timing: waits are bounded by a minute only to turn a hang into a
//! failure. Tests that arm faults or count open files take `common::process_lock()`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use segq::fault::{self, Fault, Point};
use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};

const ZERO: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);
const SPARE: &str = "spare.log.tmp";

/// Size of the spare file in `dir`, 0 if there is none.
fn spare_file(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(SPARE)).map_or(0, |m| m.len())
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

// ---------------------------------------------------------------------------------------
// Stats::spare_bytes
// ---------------------------------------------------------------------------------------

/// Appends 1000-byte records to a 4 KiB-segment queue until a spare is made, and waits
/// until `Stats::spare_bytes` says so.
fn queue_with_a_spare(dir: &Path, sync: SyncPolicy) -> Queue {
    let q = Queue::open(dir, Options::default().segment_bytes(4096).sync(sync)).unwrap();
    // Two records take the first segment past half full: the spare is asked for.
    q.append(&[1; 1000]).unwrap();
    q.append(&[2; 1000]).unwrap();
    common::wait_for("a spare", || q.stats().spare_bytes > 0 && spare_file(dir) > 0);
    q
}

/// A roll whose rename of the spare into place fails drops the spare, and its file: it
/// would take a whole segment on disk that `Stats::spare_bytes` no longer counts. (It was
/// left, until a later spare was made over it, also by `close`, which deleted the spare
/// only when it still held one.)
#[test]
fn a_roll_whose_spare_rename_fails_leaves_no_uncounted_spare() {
    let _serial = common::process_lock();
    for sync in [SyncPolicy::Always, SyncPolicy::Interval(HOUR)] {
        let dir = tempfile::tempdir().unwrap();
        let q = queue_with_a_spare(dir.path(), sync);
        q.append(&[3; 1000]).unwrap();
        let next = q.next_offset();
        // The next record does not fit: the roll renames the spare to the next segment.
        fault::inject(Fault::new(&segment_path(dir.path(), next), Point::Rename));
        let rolled = q.append(&[4; 1000]);
        fault::clear(&segment_path(dir.path(), next));
        assert!(matches!(rolled, Err(Error::Io(_))), "{sync:?}: the roll failed: {rolled:?}");
        let after_roll = (q.stats().spare_bytes, spare_file(dir.path()));
        q.close().unwrap();
        let after_close = (q.stats().spare_bytes, spare_file(dir.path()));
        assert!(
            after_roll.0 == after_roll.1 && after_close == (0, 0),
            "{sync:?}: (spare_bytes, spare file): after the failed roll {after_roll:?}, after close {after_close:?}"
        );
    }
}

/// Control for the test above: a roll with no fault takes the spare, and `spare_bytes`
/// follows the file through rolls under every policy (compared once the sealer thread is
/// quiet), through a close (none) and a crash and reopen (the leftover is deleted).
#[test]
fn spare_bytes_follows_the_spare_file_through_rolls_close_and_reopen() {
    for sync in [SyncPolicy::Always, SyncPolicy::Never, SyncPolicy::Interval(Duration::from_millis(5))] {
        let dir = tempfile::tempdir().unwrap();
        let q = queue_with_a_spare(dir.path(), sync);
        for i in 0..40u8 {
            q.append(&[i; 1000]).unwrap();
            // The spare is made on the sealer thread: wait until both agree.
            common::wait_for("spare_bytes to match the file", || q.stats().spare_bytes == spare_file(dir.path()));
        }
        // A record that needs a bigger segment than the spare: the spare is kept.
        let had = q.stats().spare_bytes;
        q.append(&[9; 6000]).unwrap();
        common::wait_for("spare_bytes to match the file", || q.stats().spare_bytes == spare_file(dir.path()));
        assert!(had == 0 || q.stats().spare_bytes > 0, "{sync:?}");
        q.close().unwrap();
        assert_eq!((q.stats().spare_bytes, spare_file(dir.path())), (0, 0), "{sync:?}");
        drop(q);

        let q = queue_with_a_spare(dir.path(), sync);
        q.simulate_crash();
        assert!(spare_file(dir.path()) > 0, "{sync:?}: a crash leaves the spare");
        let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).sync(sync)).unwrap();
        assert_eq!((q.stats().spare_bytes, spare_file(dir.path())), (0, 0), "{sync:?}: deleted at open");
        q.close().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Idle closes whose flush runs outside the queue's locks (c67bbb4)
// ---------------------------------------------------------------------------------------

/// A queue under `Never` with 3 records whose group "a" acked the first and is held by no
/// handle; then the next new group's idle close chooses "a" and its flush is held (the
/// first sync under `groups/a`; later ones pass) on a thread of its own, which the
/// returned handle joins. `idle_groups_kept_open(0)`.
fn close_of_a_held(dir: &Path) -> Queue {
    let q = Queue::open(dir, Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(0)).unwrap();
    q.append_batch(&[b"r0".as_slice(), b"r1", b"r2"]).unwrap();
    q.flush().unwrap();
    let g = q.group_with("a", GroupOptions::default().lease(HOUR)).unwrap();
    g.ack(g.poll(ZERO).unwrap().unwrap().offset()).unwrap();
    drop(g);
    q
}

/// Runs `during` while the flush of an idle close of "a" is held, then lets it go and
/// waits for the close to end. `during` runs on another thread, so that a hang in it (it
/// waiting for the held flush) fails the test instead of blocking it.
fn while_the_close_of_a_is_held(q: &Queue, during: impl FnOnce(&Queue) + Send) {
    let gdir = q.dir().join("groups/a");
    fault::inject(Fault::new(&gdir, Point::Sync).stall());
    std::thread::scope(|s| {
        let closer = s.spawn(|| common::close_idle_groups(q));
        common::wait_for("the flush of the idle close held", || fault::held(&gdir) > 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = s.spawn(move || {
            during(q);
            tx.send(()).unwrap();
        });
        let done = rx.recv_timeout(Duration::from_secs(60));
        fault::clear(&gdir);
        worker.join().unwrap();
        assert!(done.is_ok(), "the calls made meanwhile waited for the held flush");
        closer.join().unwrap();
    });
}

/// A handle made while the close's flush is held acks, under `Never`, and is dropped: the
/// close then goes ahead, and the ack was synced before the group was closed
/// (sync audit), as the settled reopen that follows relies on; a reopen finds it.
#[test]
fn a_handle_made_and_dropped_during_the_held_flush_keeps_its_ack_durable() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = close_of_a_held(dir.path());
    let journal = dir.path().join("groups/a/journal");
    while_the_close_of_a_is_held(&q, |q| {
        let g = q.group("a").unwrap();
        let d = g.poll(ZERO).unwrap().unwrap();
        assert_eq!(d.offset(), 1);
        fault::audit(q.dir());
        g.ack(1).unwrap();
        let _ = fault::take_synced(q.dir());
    });
    let synced = fault::take_synced(dir.path());
    // No handle left when the close resumed: it closed the group, after syncing the ack.
    assert!(!common::group_is_open(dir.path(), "a"));
    assert!(synced.iter().any(|s| s.path == journal), "closed without syncing the ack: {synced:?}");
    // The settled reopen (if it was closed) writes nothing, and sees the ack.
    assert_eq!(q.group("a").unwrap().ack_floor(), 2);
    q.simulate_crash();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(q.group("a").unwrap().ack_floor(), 2);
}

/// A handle taken during the held flush and still held when the close resumes: the group
/// stays open and the handle works; it is closed by a later turn once dropped.
#[test]
fn a_handle_held_across_the_held_flush_keeps_the_group_open() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = close_of_a_held(dir.path());
    let (tx, rx) = std::sync::mpsc::channel();
    while_the_close_of_a_is_held(&q, move |q| tx.send(q.group("a").unwrap()).unwrap());
    let g = rx.recv().unwrap();
    assert!(common::group_is_open(dir.path(), "a"));
    let d = g.poll(ZERO).unwrap().unwrap();
    g.ack(d.offset()).unwrap();
    assert_eq!(g.ack_floor(), 2);
    drop(g);
    common::close_idle_groups(&q);
    assert!(!common::group_is_open(dir.path(), "a"));
    assert_eq!(q.group("a").unwrap().ack_floor(), 2);
}

/// The group is deleted and created again under its name while the close's flush is
/// held: the close leaves the new group alone (open, its own state, no floor put in
/// `resting` for it), and the old one's held flush writes nothing back.
#[test]
fn a_group_deleted_and_created_again_during_the_held_flush_is_left_alone() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = close_of_a_held(dir.path());
    while_the_close_of_a_is_held(&q, |q| {
        q.delete_group("a").unwrap();
        let g = q.group("a").unwrap();
        assert_eq!(g.ack_floor(), 0, "created fresh");
        let d = g.poll(ZERO).unwrap().unwrap();
        assert_eq!((d.offset(), d.attempt()), (0, 1));
        // Left leased, held by no handle: a close would have to keep it.
    });
    assert!(common::group_is_open(dir.path(), "a"), "the new group, with a leased record, was closed");
    let g = q.group("a").unwrap();
    assert_eq!((g.ack_floor(), g.stats().leased), (0, 1));
    g.ack(0).unwrap();
    drop(g);
    q.close().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("a").unwrap();
    assert_eq!(g.ack_floor(), 1);
    assert_eq!(g.poll(ZERO).unwrap().unwrap().offset(), 1);
}

/// `Queue::close` during the held flush waits for it (the same group's sync) and then
/// returns `Ok`; nothing of the group stays open and its ack is kept.
#[test]
fn a_close_during_the_held_flush_completes_and_keeps_the_ack() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = close_of_a_held(dir.path());
    let gdir = dir.path().join("groups/a");
    fault::inject(Fault::new(&gdir, Point::Sync).stall());
    std::thread::scope(|s| {
        let q = &q;
        let closer = s.spawn(|| common::close_idle_groups(q));
        common::wait_for("the flush of the idle close held", || fault::held(&gdir) > 0);
        let close = s.spawn(|| q.close());
        // Give the close time to reach the held sync (not a timing assertion: either order passes).
        std::thread::sleep(Duration::from_millis(50));
        fault::clear(&gdir);
        close.join().unwrap().unwrap();
        closer.join().unwrap();
    });
    assert!(!common::group_is_open(dir.path(), "a"));
    drop(q);
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(q.recovery().clean);
    assert_eq!(q.group("a").unwrap().ack_floor(), 1);
}

/// Worker threads each consuming their own group through handles taken and dropped per
/// record, an appender rolling 4 KiB segments under `retain_until_consumed` (a pass at
/// every roll), threads running `enforce_retention`, `Queue::flush`, new groups (idle
/// closes with a bound of 1) and a group deleted and created again, all at once under the
/// 1 ms `Interval` flusher: no call fails, every group gets every record once and in
/// order (retention never deleted one it needed: nothing lost), and after a close and
/// reopen every group stands where it was.
#[test]
fn idle_closes_racing_group_calls_deletes_flushes_and_retention_lose_nothing() {
    let _serial = common::process_lock();
    for sync in [SyncPolicy::Interval(Duration::from_millis(1)), SyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let opts =
            Options::default().segment_bytes(4096).sync(sync).retain_until_consumed(true).idle_groups_kept_open(1);
        let q = Queue::open(dir.path(), opts).unwrap();
        const RECORDS: u64 = 1500;
        const WORKERS: u64 = 3;
        let workers_done = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        // Every worker group exists before the first append: retention keeps everything.
        for w in 0..WORKERS {
            drop(q.group_with(&format!("w{w}"), GroupOptions::default().lease(HOUR)).unwrap());
        }
        std::thread::scope(|s| {
            let (q, stop, workers_done) = (&q, &stop, &workers_done);
            s.spawn(move || {
                for i in 0..RECORDS {
                    q.append(&[(i % 251) as u8; 300]).unwrap();
                }
            });
            for w in 0..WORKERS {
                s.spawn(move || {
                    let name = format!("w{w}");
                    let mut expected = 0;
                    let start = std::time::Instant::now();
                    while expected < RECORDS {
                        assert!(start.elapsed() < Duration::from_secs(300), "{name}: stuck at {expected}");
                        let g = q.group(&name).unwrap();
                        match g.poll(ZERO).unwrap() {
                            Some(d) => {
                                assert_eq!((d.offset(), d.attempt()), (expected, 1), "{name}");
                                assert_eq!(d.payload(), &[(expected % 251) as u8; 300][..], "{name}");
                                if expected % 7 == 0 {
                                    drop(g);
                                    q.group(&name).unwrap().ack(d.offset()).unwrap();
                                } else {
                                    g.ack(d.offset()).unwrap();
                                }
                                expected += 1;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                    let g = q.group(&name).unwrap();
                    assert_eq!((g.ack_floor(), g.stats().lost), (RECORDS, 0), "{name}");
                    workers_done.fetch_add(1, Ordering::SeqCst);
                });
            }
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // Its own group: deleted and created again, fresh each time.
                    let g = q.group("churn").unwrap();
                    assert_eq!(g.stats().lost, 0);
                    if let Some(d) = g.poll(ZERO).unwrap() {
                        g.ack(d.offset()).unwrap();
                    }
                    drop(g);
                    if n.is_multiple_of(3) {
                        q.delete_group("churn").unwrap();
                    }
                    common::close_idle_groups(q);
                    n += 1;
                }
            });
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    q.flush().unwrap();
                    match q.enforce_retention() {
                        Ok(_) => {}
                        Err(e) => panic!("retention: {e}"),
                    }
                }
            });
            while workers_done.load(Ordering::SeqCst) < WORKERS {
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
        });
        q.close().unwrap();
        drop(q);
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        for w in 0..WORKERS {
            let g = q.group(&format!("w{w}")).unwrap();
            assert_eq!((g.ack_floor(), g.stats().lost), (RECORDS, 0), "{sync:?}: w{w}");
        }
    }
}
