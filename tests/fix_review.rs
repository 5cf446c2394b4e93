//! Review of ee5e090: under `retain_until_consumed` a pass flushes the open groups (clones
//! taken under the groups' lock, flushed outside it) in its verdict on the first segment it
//! is about to delete, and only then. (Written by the session-22 review of that fix; all
//! passed, and five failed with the flush taken out.)
//!
//! Durability is judged by the sync audit (`segq::fault::audit` / `take_synced`) and a
//! power loss simulated from it: each group's journal keeps what its syncs covered, nothing
//! after. A segment deleted on acks no sync covered shows up after the reopen as records
//! the group lost. Stalled syncs (`Fault::stall`) hold the pass inside its flush so that
//! other calls can run against it there. No test asserts on timing. Every test takes
//! `common::process_lock()` (faults and the audit are process-wide).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::payload;
use segq::fault::{self, Fault, Point};
use segq::{Error, Options, Queue, SyncPolicy};

const ZERO: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);

fn opts(sync: SyncPolicy) -> Options {
    Options::default().segment_bytes(4096).sync(sync).retain_until_consumed(true)
}

fn journal(dir: &Path, group: &str) -> PathBuf {
    dir.join("groups").join(group).join("journal")
}

/// Polls and acks everything `g` can get now.
fn consume_all(g: &segq::Group) {
    while let Some(d) = g.poll(ZERO).unwrap() {
        g.ack(d.offset()).unwrap();
    }
}

/// Starts the sync audit of `dir`'s groups, forgetting syncs recorded before.
fn start_audit(dir: &Path) -> PathBuf {
    let groups_dir = dir.join("groups");
    fault::audit(&groups_dir);
    let _ = fault::take_synced(&groups_dir);
    groups_dir
}

/// A power loss after `q` stopped as a crash would: each journal of `groups` keeps what
/// the syncs in `synced` covered (they must cover the group's whole life), nothing after.
/// Reopens the queue and returns, for each group, `(lost, ack floor)`, with the first offset.
fn power_loss(q: Queue, synced: &[fault::Synced], groups: &[&str], o: Options) -> (Vec<(u64, u64)>, u64) {
    let dir = q.dir().to_path_buf();
    q.simulate_crash();
    for name in groups {
        let journal = journal(&dir, name);
        let end = synced
            .iter()
            .filter(|s| s.path == journal)
            .map(|s| s.range.end)
            .max()
            .unwrap_or(0)
            .max(common::FILE_HEADER_LEN as u64);
        let len = std::fs::metadata(&journal).unwrap().len();
        common::zero_from(&journal, end.min(len) as usize);
    }
    let q = Queue::open(&dir, o).unwrap();
    let after = groups
        .iter()
        .map(|name| {
            let g = q.group(name).unwrap();
            let s = g.stats();
            (s.lost, s.ack_floor)
        })
        .collect();
    let first = q.first_offset();
    q.close().unwrap();
    (after, first)
}

/// Open groups (a handle held; and one whose handle was dropped), a group closed as idle
/// (its floor kept in `resting`) and a group only on disk (opened by the pass for its
/// floor) all consume several segments without a sync (`Never` and `Interval`); one pass
/// deletes them. After a power loss that keeps only what was synced, no group lost a
/// record: every ack the deletion relied on was durable.
#[test]
fn every_kind_of_group_keeps_the_acks_a_deletion_relied_on_through_a_power_loss() {
    let _serial = common::process_lock();
    for sync in [SyncPolicy::Never, SyncPolicy::Interval(HOUR)] {
        let dir = tempfile::tempdir().unwrap();
        // "disk" consumes in an earlier run, closed cleanly.
        {
            let q = Queue::open(dir.path(), opts(sync)).unwrap();
            for i in 0..300 {
                q.append(&payload(i)).unwrap();
            }
            consume_all(&q.group("disk").unwrap());
            q.close().unwrap();
        }
        let o = opts(sync).idle_groups_kept_open(0);
        let q = Queue::open(dir.path(), o.clone()).unwrap();
        let groups_dir = start_audit(dir.path());
        let mut synced = Vec::new();
        let held = q.group("held").unwrap();
        let dropped = q.group("dropped").unwrap();
        let rest = q.group("rest").unwrap();
        for g in [&held, &dropped, &rest] {
            consume_all(g);
        }
        drop(rest);
        // Closes "rest" (and "dropped", which is then in `resting` too), then the churn
        // group, which starts at 0, goes.
        common::close_idle_groups(&q);
        assert!(!common::group_is_open(dir.path(), "rest"), "{sync:?}");
        for name in q.groups().unwrap().into_iter().filter(|n| n.starts_with("zz-churn-")) {
            q.delete_group(&name).unwrap();
        }
        // "dropped" acks more after a reopen (settled: writes nothing), unsynced.
        drop(dropped);
        let dropped = q.group("dropped").unwrap();
        q.append(&payload(300)).unwrap();
        consume_all(&dropped);
        consume_all(&held);
        drop(dropped);
        synced.extend(fault::take_synced(&groups_dir));
        let report = q.enforce_retention().unwrap();
        assert!(report.segments_deleted > 0, "{sync:?}: {report:?}");
        synced.extend(fault::take_synced(&groups_dir));
        let first = q.first_offset();
        drop(held);
        let (after, first_after) = power_loss(q, &synced, &["held", "dropped", "rest", "disk"], o);
        assert_eq!(first_after, first, "{sync:?}");
        for ((lost, floor), name) in after.iter().zip(["held", "dropped", "rest", "disk"]) {
            assert_eq!(*lost, 0, "{sync:?}: {name} lost records after the power loss (ack floor {floor})");
            assert!(*floor >= first, "{sync:?}: {name}");
        }
    }
}

/// Several groups consumed past the first segments; the sync of the last one listed
/// ("c") fails. The pass has synced "a" and "b" by then, and deletes nothing: the error
/// comes before the first deletion. As documented on `enforce_retention`: `Io` from the
/// failing sync, then `Poisoned` while the group cannot write its state again (each such
/// pass tries), and once it can, the pass deletes.
#[test]
fn a_flush_that_fails_on_the_last_group_deletes_nothing_and_retries_each_pass() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts(SyncPolicy::Never)).unwrap();
    let groups: Vec<_> = ["a", "b", "c"].iter().map(|n| q.group(n).unwrap()).collect();
    for i in 0..300 {
        q.append(&payload(i)).unwrap();
    }
    for g in &groups {
        consume_all(g);
    }
    let segments = q.stats().segments;
    assert!(segments >= 3);
    let groups_dir = start_audit(dir.path());
    let c_dir = groups_dir.join("c");
    let _unstall = Unstall(c_dir.clone());
    fault::inject(Fault::new(&c_dir, Point::Sync).times(u64::MAX));
    let first = q.enforce_retention();
    let synced = fault::take_synced(&groups_dir);
    assert!(matches!(&first, Err(Error::Io(_))), "{first:?}");
    assert_eq!((q.first_offset(), q.stats().segments), (0, segments), "deleted despite the failed flush");
    for name in ["a", "b"] {
        assert!(synced.iter().any(|s| s.path == journal(dir.path(), name)), "{name} flushed first: {synced:?}");
    }
    let second = q.enforce_retention();
    assert!(matches!(&second, Err(Error::Poisoned(_))), "{second:?}");
    assert_eq!((q.first_offset(), q.stats().segments), (0, segments));
    fault::clear(&c_dir);
    let third = q.enforce_retention().unwrap();
    assert!(third.segments_deleted > 0, "{third:?}");
    let synced = fault::take_synced(&groups_dir);
    assert!(synced.iter().any(|s| s.path.starts_with(&c_dir)), "c's state written again: {synced:?}");
    drop(groups);
    q.close().unwrap();
}

/// Disarms the faults under its directory when dropped: a failed assertion does not leave
/// a sync held, which the queue's close on unwinding would wait for.
struct Unstall(PathBuf);

impl Drop for Unstall {
    fn drop(&mut self) {
        fault::clear(&self.0);
    }
}

/// Runs `enforce_retention` on another thread while the sync of group "a"'s journal is
/// held: returns once the pass is inside its flush (its floors read, no segment deleted).
fn stall_the_pass_in_its_flush<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    q: &'s Queue,
    a_dir: &Path,
) -> std::thread::ScopedJoinHandle<'s, segq::Result<segq::RetentionReport>> {
    fault::inject(Fault::new(a_dir, Point::Sync).stall().times(u64::MAX));
    let pass = s.spawn(move || q.enforce_retention());
    common::wait_for("the pass to sync group a", || fault::held(a_dir) > 0);
    assert_eq!(q.first_offset(), 0, "deleted before its flush was done");
    pass
}

/// A pass held inside its flush (floors read): an ack made meanwhile on a group flushed
/// after the held one; `delete_group` and the reopen of a group closed as idle wait for
/// the pass (they take the pass's lock), so neither runs against it: the pass flushes the
/// group it listed, not a deleted one (no `GroupDeleted`), and deletes no further than the
/// resting group's floor. Then a power loss: no group lost a record.
#[test]
fn delete_group_and_a_reopen_wait_for_a_pass_held_in_its_flush() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let o = opts(SyncPolicy::Never).idle_groups_kept_open(0);
    let q = Queue::open(dir.path(), o.clone()).unwrap();
    let groups_dir = start_audit(dir.path());
    let mut synced = Vec::new();
    let (a, b, c) = (q.group("a").unwrap(), q.group("b").unwrap(), q.group("c").unwrap());
    let r = q.group("r").unwrap();
    for i in 0..300 {
        q.append(&payload(i)).unwrap();
    }
    for _ in 0..200 {
        let d = r.poll(ZERO).unwrap().unwrap();
        r.ack(d.offset()).unwrap();
    }
    drop(r);
    common::close_idle_groups(&q);
    for name in q.groups().unwrap().into_iter().filter(|n| n.starts_with("zz-churn-")) {
        q.delete_group(&name).unwrap();
    }
    assert!(!common::group_is_open(dir.path(), "r"));
    let r_floor = 200;
    for g in [&a, &b, &c] {
        let batch = g.poll_batch(150, ZERO).unwrap();
        g.ack_batch(&batch.iter().map(|d| d.offset()).collect::<Vec<_>>()).unwrap();
    }
    let a_dir = groups_dir.join("a");
    let _unstall = Unstall(a_dir.clone());
    let deleted_c = AtomicBool::new(false);
    let reopened_r = AtomicBool::new(false);
    std::thread::scope(|s| {
        let pass = stall_the_pass_in_its_flush(s, &q, &a_dir);
        // "b" acks on after the pass read its floor, before the pass flushes it.
        consume_all(&b);
        let delete = s.spawn(|| {
            let done = q.delete_group("c");
            deleted_c.store(true, Ordering::SeqCst);
            done
        });
        let reopen = s.spawn(|| {
            let g = q.group("r");
            reopened_r.store(true, Ordering::SeqCst);
            g.map(|g| g.ack_floor())
        });
        // Not a timing check: were they not to wait, they would have nothing to wait for.
        std::thread::sleep(Duration::from_millis(50));
        let early = (deleted_c.load(Ordering::SeqCst), reopened_r.load(Ordering::SeqCst));
        fault::clear(&a_dir);
        let report = pass.join().unwrap();
        assert_eq!(early, (false, false), "delete_group / Queue::group ran inside the pass");
        let report = report.unwrap();
        assert!(report.segments_deleted > 0, "{report:?}");
        delete.join().unwrap().unwrap();
        assert_eq!(reopen.join().unwrap().unwrap(), r_floor);
    });
    assert!(q.first_offset() <= r_floor, "past the resting group's floor: {}", q.first_offset());
    assert!(!q.groups().unwrap().contains(&"c".to_string()));
    synced.extend(fault::take_synced(&groups_dir));
    drop((a, b, c));
    let (after, _) = power_loss(q, &synced, &["a", "b", "r"], o);
    for ((lost, floor), name) in after.iter().zip(["a", "b", "r"]) {
        assert_eq!(*lost, 0, "{name} lost records after the power loss (ack floor {floor})");
    }
}

/// An idle close chosen before the pass listed its groups, whose flush of group "a" is
/// held: the pass, listing "a" as open, waits in its own flush for that sync. Once it
/// ends, either the pass still holds "a" (the close skips it) or the pass is done (the
/// close goes on, the group flushed): in no order is a segment deleted on an unsynced ack.
/// (The close is run by the reopen of a resting group "x", which holds nothing back.)
#[test]
fn an_idle_close_racing_the_pass_s_flush_leaves_nothing_unsynced() {
    let _serial = common::process_lock();
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(SyncPolicy::Never).idle_groups_kept_open(0);
        let q = Queue::open(dir.path(), o.clone()).unwrap();
        let groups_dir = start_audit(dir.path());
        let mut synced = Vec::new();
        let (a, x) = (q.group("a").unwrap(), q.group("x").unwrap());
        for i in 0..300 {
            q.append(&payload(i)).unwrap();
        }
        consume_all(&x);
        drop(x);
        common::close_idle_groups(&q);
        for name in q.groups().unwrap().into_iter().filter(|n| n.starts_with("zz-churn-")) {
            q.delete_group(&name).unwrap();
        }
        assert!(!common::group_is_open(dir.path(), "x"));
        consume_all(&a);
        drop(a);
        let a_dir = groups_dir.join("a");
        let _unstall = Unstall(a_dir.clone());
        fault::inject(Fault::new(&a_dir, Point::Sync).stall().times(u64::MAX));
        let closed_a = std::thread::scope(|s| {
            // The reopen of "x", then the idle close of "a", whose flush is held.
            let closer = s.spawn(|| drop(q.group("x").unwrap()));
            common::wait_for("the idle close to sync a", || fault::held(&a_dir) > 0);
            let pass = s.spawn(|| q.enforce_retention());
            for _ in 0..round {
                std::thread::yield_now();
            }
            fault::clear(&a_dir);
            closer.join().unwrap();
            let report = pass.join().unwrap().unwrap();
            (report, common::group_is_open(dir.path(), "a"))
        });
        let report = q.enforce_retention().unwrap();
        assert!(q.first_offset() > 0, "round {round}: {closed_a:?} {report:?}");
        synced.extend(fault::take_synced(&groups_dir));
        let (after, _) = power_loss(q, &synced, &["a", "x"], o);
        assert_eq!((after[0].0, after[1].0), (0, 0), "round {round}: lost records after the power loss: {after:?}");
    }
}

/// A close that begins while the pass is held in its flush waits for it (it takes the
/// pass's lock); the pass then deletes (the flush done) or stops with `Closed` at its next
/// segment. The close flushes every group; after a reopen no group lost a record, and
/// after a power loss neither.
#[test]
fn a_close_during_the_pass_s_flush_waits_and_leaves_every_group_whole() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let o = opts(SyncPolicy::Interval(HOUR));
    let q = Queue::open(dir.path(), o.clone()).unwrap();
    let groups_dir = start_audit(dir.path());
    let (a, b) = (q.group("a").unwrap(), q.group("b").unwrap());
    for i in 0..300 {
        q.append(&payload(i)).unwrap();
    }
    consume_all(&a);
    consume_all(&b);
    let a_dir = groups_dir.join("a");
    let _unstall = Unstall(a_dir.clone());
    let closed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let pass = stall_the_pass_in_its_flush(s, &q, &a_dir);
        let close = s.spawn(|| {
            let done = q.close();
            closed.store(true, Ordering::SeqCst);
            done
        });
        std::thread::sleep(Duration::from_millis(50));
        let early = closed.load(Ordering::SeqCst);
        fault::clear(&a_dir);
        let report = pass.join().unwrap();
        assert!(!early, "close returned while the pass was inside its flush");
        assert!(
            matches!(&report, Ok(r) if r.segments_deleted > 0) || matches!(&report, Err(Error::Closed)),
            "{report:?}"
        );
        close.join().unwrap().unwrap();
    });
    let synced = fault::take_synced(&groups_dir);
    let first = q.first_offset();
    assert!(first > 0, "the segment the pass flushed for was deleted");
    drop((a, b));
    drop(q);
    let q = Queue::open(dir.path(), o.clone()).unwrap();
    assert!(q.recovery().clean);
    assert_eq!(q.first_offset(), first);
    // A power loss right after the close: only what the syncs covered.
    let (after, _) = power_loss(q, &synced, &["a", "b"], o);
    for ((lost, _), name) in after.iter().zip(["a", "b"]) {
        assert_eq!(*lost, 0, "{name}");
    }
}

/// Under `Interval` with a short period, the flusher thread flushes the groups (outside
/// the groups' lock, as the pass now does) while appends roll segments, their passes and
/// `enforce_retention` on another thread delete, and the group acks: after a power loss,
/// nothing the group needed is gone.
#[test]
fn the_interval_flusher_racing_passes_leaves_no_deletion_on_unsynced_acks() {
    let _serial = common::process_lock();
    let rounds: u32 = std::env::var("SEGQ_RET_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(SyncPolicy::Interval(Duration::from_millis(1)));
        let q = Queue::open(dir.path(), o.clone()).unwrap();
        let groups_dir = start_audit(dir.path());
        let mut synced = Vec::new();
        let (a, b) = (q.group("a").unwrap(), q.group("b").unwrap());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = q.enforce_retention();
                }
            });
            for i in 0..400 {
                q.append(&[i as u8; 700]).unwrap();
                consume_all(&a);
                if i % 3 == 0 {
                    consume_all(&b);
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        consume_all(&b);
        q.enforce_retention().unwrap();
        assert!(q.first_offset() > 0, "round {round}");
        synced.extend(fault::take_synced(&groups_dir));
        drop((a, b));
        let (after, _) = power_loss(q, &synced, &["a", "b"], o);
        for ((lost, floor), name) in after.iter().zip(["a", "b"]) {
            assert_eq!(*lost, 0, "round {round}: {name} lost records (ack floor {floor})");
        }
    }
}
