//! Review of cc34b58 (under `retain_until_consumed` a pass flushes the open groups only if
//! `Log::could_delete_below` says it could delete) and d8d6177 (a roll whose spare rename
//! fails deletes the spare's file; close deletes any file under the spare's name). Its one
//! failing test found a roll between that check and the deletion; the pass now flushes
//! the groups in its verdict on the segment it is about to delete.
//!
//! Durability is judged by the sync audit (`segq::fault::audit` / `take_synced`): a
//! segment deleted on acks whose journal no sync covered is lost records after a power
//! loss that undoes those acks. No test asserts on timing. Tests that arm faults or audit
//! take `common::process_lock()`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::payload;
use segq::fault::{self, Fault, Point};
use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};

const ZERO: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);
const SPARE: &str = "spare.log.tmp";

fn journal(dir: &Path, group: &str) -> std::path::PathBuf {
    dir.join("groups").join(group).join("journal")
}

fn journal_synced(synced: &[fault::Synced], dir: &Path, group: &str) -> bool {
    let journal = journal(dir, group);
    synced.iter().any(|s| s.path == journal)
}

/// Polls and acks everything `g` can get now.
fn consume_all(g: &segq::Group) {
    while let Some(d) = g.poll(ZERO).unwrap() {
        g.ack(d.offset()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// cc34b58: the flush decided before the deletion
// ---------------------------------------------------------------------------------------

/// One round of the race below: the group has acked (unsynced) every record of the
/// active segment; one thread runs passes back to back, another takes the group (the open
/// groups' lock, which the pass's unlock then hands over: more switches in its window),
/// while this one appends the record that rolls that segment (and runs its own pass).
/// Returns whether the rolled segment was deleted with no sync of the group's journal
/// since the acks, and the syncs of the round.
fn roll_racing_passes(q: &Queue, g: &segq::Group, groups_dir: &Path) -> (bool, Vec<fault::Synced>) {
    let mut synced = fault::take_synced(groups_dir);
    consume_all(g);
    assert_eq!(g.ack_floor(), q.next_offset());
    let first = q.first_offset();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                q.enforce_retention().unwrap();
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                drop(q.group("g").unwrap());
            }
        });
        std::thread::yield_now();
        q.append(&[7; 1500]).unwrap();
        stop.store(true, Ordering::Relaxed);
    });
    let deleted = q.first_offset() > first;
    let round = fault::take_synced(groups_dir);
    let bad = deleted && !journal_synced(&round, q.dir(), "g");
    synced.extend(round);
    (bad, synced)
}

/// A pass whose check ran while the oldest segment was still the active one (one
/// segment: `could_delete_below` says no, so no group is flushed) and whose `Log::retain`
/// ran after another thread's append rolled that segment: the verdict closure sees two
/// segments, the oldest sealed and ending at the group's floor, and deletes it, on acks
/// that no sync covered. "segments[0] can't change under the pass" holds for a sealed
/// segment, not for the active one, which a roll seals (its end offset goes from None to
/// Some) without the retention lock. Under `Interval` the roll seals on the appending
/// thread, so `is_sealing` does not hold the deletion back. Then a power loss that keeps
/// the journal only as far as its syncs: the group needs records that are gone.
/// (Passes at cc34b58^, 3000 rounds; fails at cc34b58 within a few rounds.)
// (It failed: the flush was decided from the segments at the check, the deletion from the
// segments later, and a roll in between deleted on unsynced acks.)
#[test]
fn a_roll_between_the_flush_check_and_the_deletion_does_not_delete_on_unsynced_acks() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().segment_bytes(4096).sync(SyncPolicy::Interval(HOUR)).retain_until_consumed(true);
    let q = Queue::open(dir.path(), opts()).unwrap();
    let groups_dir = dir.path().join("groups");
    // From before the group is made: its journal's first syncs count.
    fault::audit(&groups_dir);
    let _ = fault::take_synced(&groups_dir);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR)).unwrap();
    let mut all_synced = fault::take_synced(&groups_dir);
    // Records of 1500 B, two to a 4 KiB segment: each round's second append rolls.
    q.append(&[7; 1500]).unwrap();
    let mut found = None;
    // (It failed within 5 rounds; `SEGQ_RET_ROUNDS` for a longer run.)
    let rounds: u32 = std::env::var("SEGQ_RET_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    for round in 0..rounds {
        q.append(&[7; 1500]).unwrap();
        let (bad, synced) = roll_racing_passes(&q, &g, &groups_dir);
        all_synced.extend(synced);
        if bad {
            found = Some(round);
            break;
        }
    }
    all_synced.extend(fault::take_synced(&groups_dir));
    let Some(round) = found else {
        q.close().unwrap();
        return;
    };
    // Power loss: the journal keeps what its syncs covered, nothing after (one outcome of
    // many: its later pages were not written back). The log keeps all it had.
    let journal = journal(dir.path(), "g");
    // The journal's header is made durable when the file is created (under another name).
    let synced_end = all_synced
        .iter()
        .filter(|s| s.path == journal)
        .map(|s| s.range.end)
        .max()
        .unwrap_or(0)
        .max(common::FILE_HEADER_LEN as u64);
    let first = q.first_offset();
    drop(g);
    q.simulate_crash();
    common::zero_from(&journal, synced_end as usize);
    let q = Queue::open(dir.path(), opts()).unwrap();
    let after = q.group("g").map(|g| (g.stats().lost, g.ack_floor()));
    panic!(
        "round {round}: a segment was deleted on acks no sync covered (first offset {first}, the \
         journal synced to byte {synced_end}); after a power loss, the group's (lost, ack floor): \
         {after:?}"
    );
}

fn until_consumed(sync: SyncPolicy) -> Options {
    Options::default().segment_bytes(4096).sync(sync).retain_until_consumed(true)
}

/// With `retain_bytes` set too (far exceeded), `retain_until_consumed` decides alone:
/// behind a slow group the pass deletes nothing and syncs no group, and once every group
/// consumed the first segments it syncs every open group before deleting them; a group
/// closed idle (its floor kept in `resting`) holds back what it has not consumed.
#[test]
fn until_consumed_with_retain_bytes_and_a_resting_group_syncs_before_it_deletes() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let opts = until_consumed(SyncPolicy::Never).retain_bytes(1).idle_groups_kept_open(0);
    let q = Queue::open(dir.path(), opts).unwrap();
    let (a, b) = (q.group("a").unwrap(), q.group("b").unwrap());
    // "r" consumes 150 records and rests (closed idle: its floor is kept in memory).
    let r = q.group("r").unwrap();
    for i in 0..300 {
        q.append(&payload(i)).unwrap();
    }
    for _ in 0..150 {
        let d = r.poll(ZERO).unwrap().unwrap();
        r.ack(d.offset()).unwrap();
    }
    drop(r);
    common::close_idle_groups(&q);
    assert!(!common::group_is_open(dir.path(), "r"));
    // The group made to close the idle ones starts at 0: it must not hold retention.
    for name in q.groups().unwrap().into_iter().filter(|n| n.starts_with("zz-churn-")) {
        q.delete_group(&name).unwrap();
    }
    let groups_dir = dir.path().join("groups");
    fault::audit(&groups_dir);
    let _ = fault::take_synced(&groups_dir);
    // "a" and "b" ack a few records, all in the first segment.
    for g in [&a, &b] {
        let d = g.poll(ZERO).unwrap().unwrap();
        g.ack(d.offset()).unwrap();
    }
    let report = q.enforce_retention().unwrap();
    assert_eq!((report.segments_deleted, q.first_offset()), (0, 0));
    assert_eq!(fault::take_synced(&groups_dir), Vec::new(), "a pass that deletes nothing syncs nothing");
    for g in [&a, &b] {
        consume_all(g);
    }
    let report = q.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0);
    assert!(q.first_offset() <= 150, "past the resting group's floor: {}", q.first_offset());
    let synced = fault::take_synced(&groups_dir);
    for name in ["a", "b"] {
        assert!(journal_synced(&synced, dir.path(), name), "{name} not synced before the deletion: {synced:?}");
    }
    drop((a, b));
    q.close().unwrap();
}

/// A dead letter in the first segment keeps it: the groups acked far past it, yet the
/// pass deletes nothing and, as it can delete nothing, syncs nothing. Redriven and acked,
/// the segment goes, after a sync.
#[test]
fn a_dead_letter_holds_the_first_segment_and_the_pass_syncs_nothing_until_it_goes() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), until_consumed(SyncPolicy::Interval(HOUR))).unwrap();
    let g = q.group_with("g", GroupOptions::default().max_attempts(1).lease(HOUR)).unwrap();
    for i in 0..300 {
        q.append(&payload(i)).unwrap();
    }
    let d = g.poll(ZERO).unwrap().unwrap();
    assert_eq!(d.offset(), 0);
    g.nack(0, ZERO).unwrap();
    assert_eq!(g.dead_letters().unwrap().len(), 1);
    consume_all(&g);
    let groups_dir = dir.path().join("groups");
    fault::audit(&groups_dir);
    let _ = fault::take_synced(&groups_dir);
    let report = q.enforce_retention().unwrap();
    assert_eq!((report.segments_deleted, q.first_offset()), (0, 0));
    assert_eq!(fault::take_synced(&groups_dir), Vec::new());
    assert!(g.redrive(0).unwrap());
    let d = g.poll(ZERO).unwrap().unwrap();
    assert_eq!(d.offset(), 0);
    g.ack(0).unwrap();
    let report = q.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0);
    assert!(journal_synced(&fault::take_synced(&groups_dir), dir.path(), "g"));
    drop(g);
    q.close().unwrap();
}

/// A group whose journal sync failed (poisoned): a pass that can delete nothing succeeds
/// (as documented since cc34b58), one whose acks would let a segment go fails with
/// `Poisoned` and deletes nothing.
#[test]
fn a_poisoned_group_blocks_only_a_pass_that_could_delete() {
    let _serial = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), until_consumed(SyncPolicy::Never)).unwrap();
    let (good, bad) = (q.group("good").unwrap(), q.group("bad").unwrap());
    for i in 0..300 {
        q.append(&payload(i)).unwrap();
    }
    // "good" stays in the first segment; "bad" acks past it, then cannot write its state.
    let d = good.poll(ZERO).unwrap().unwrap();
    good.ack(d.offset()).unwrap();
    let batch = bad.poll_batch(150, ZERO).unwrap();
    bad.ack_batch(&batch.iter().map(|d| d.offset()).collect::<Vec<_>>()).unwrap();
    let bad_dir = dir.path().join("groups/bad");
    fault::inject(Fault::new(&bad_dir, Point::Sync).times(u64::MAX));
    assert!(bad.flush().is_err());
    let report = q.enforce_retention();
    assert!(matches!(&report, Ok(r) if r.segments_deleted == 0), "{report:?}");
    let batch = good.poll_batch(150, ZERO).unwrap();
    good.ack_batch(&batch.iter().map(|d| d.offset()).collect::<Vec<_>>()).unwrap();
    let report = q.enforce_retention();
    fault::clear(&bad_dir);
    assert!(matches!(&report, Err(Error::Poisoned(_))), "{report:?}");
    assert_eq!(q.first_offset(), 0);
    drop((good, bad));
    q.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// d8d6177: the spare's file after a failed rename, and at close
// ---------------------------------------------------------------------------------------

fn segment_path(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn spare_file(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(SPARE)).map_or(0, |m| m.len())
}

/// Rolls whose rename of the spare fails, again and again, under each policy, between
/// rolls that succeed (the sealer thread makes new spares meanwhile): each failed roll
/// deletes only the spare (every segment file stays, every record reads back), the next
/// append creates the segment itself, `spare_bytes` agrees with the file once the sealer
/// is quiet, close leaves no spare, and a reopen holds every record.
#[test]
fn failed_spare_renames_between_rolls_delete_only_the_spare() {
    let _serial = common::process_lock();
    for sync in [SyncPolicy::Always, SyncPolicy::Never, SyncPolicy::Interval(HOUR)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options::default().segment_bytes(4096).sync(sync);
        let q = Queue::open(dir.path(), opts()).unwrap();
        let mut records = Vec::new();
        let mut failed = 0;
        for round in 0..12u8 {
            // Two 1000 B records ask for a spare; the fourth needs a new segment.
            for _ in 0..3 {
                let p = vec![round; 1000];
                q.append(&p).unwrap();
                records.push(p);
            }
            q.enforce_retention().unwrap(); // waits for a seal in progress
            let next = q.next_offset();
            if round % 2 == 0 {
                let target = segment_path(dir.path(), next);
                fault::inject(Fault::new(&target, Point::Rename));
                let rolled = q.append(&[round; 1000]);
                fault::clear(&target);
                if rolled.is_ok() {
                    // No spare was ready: the segment was created without a rename.
                    records.push(vec![round; 1000]);
                } else {
                    assert!(matches!(rolled, Err(Error::Io(_))), "{sync:?}: {rolled:?}");
                    assert_eq!(q.next_offset(), next);
                    failed += 1;
                }
            }
            let before = common::segment_files(dir.path()).len();
            let p = vec![round.wrapping_add(100); 1000];
            q.append(&p).unwrap();
            records.push(p);
            assert!(common::segment_files(dir.path()).len() >= before, "{sync:?}: a segment file went");
            q.enforce_retention().unwrap();
            for (i, r) in records.iter().enumerate() {
                assert_eq!(q.read(i as u64).unwrap().unwrap().payload(), &r[..], "{sync:?}: record {i}");
            }
        }
        assert!(failed > 0, "{sync:?}: no rename failed");
        q.close().unwrap();
        assert_eq!((q.stats().spare_bytes, spare_file(dir.path())), (0, 0), "{sync:?}");
        drop(q);
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert_eq!(q.next_offset(), records.len() as u64, "{sync:?}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(q.read(i as u64).unwrap().unwrap().payload(), &r[..], "{sync:?}: record {i} after reopen");
        }
        q.close().unwrap();
    }
}
