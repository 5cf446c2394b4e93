//! Retention: whole sealed segments go, oldest first, by size, by age or once consumed;
//! offsets stay honest, readers stay safe and a crash mid-deletion leaves a usable queue.

mod common;

use std::time::Duration;

use common::{payload, segment_files};
use segq::{Options, Queue, SyncPolicy};

fn opts() -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(512).sync(SyncPolicy::Never)
}

fn fill(q: &Queue, n: u64) {
    for i in 0..n {
        q.append(&payload(i)).unwrap();
    }
}

#[test]
fn size_limit_deletes_the_oldest_sealed_segments_and_offsets_stay_honest() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_bytes(16 << 10)).unwrap();
    fill(&q, 2000);
    let stats = q.stats();
    assert!(stats.bytes_on_disk <= (16 << 10) + 4096, "{stats:?}");
    let first = q.first_offset();
    assert!(first > 0);
    assert_eq!(stats.first_offset, first);
    assert_eq!(stats.records, 2000 - first);
    assert!(q.read(first - 1).unwrap().is_none());
    assert!(q.read(0).unwrap().is_none());
    assert_eq!(q.read(first).unwrap().unwrap().payload(), payload(first));
    let from_zero: Vec<u64> = q.iter_from(0).map(|r| r.unwrap().offset()).collect();
    assert_eq!(from_zero, (first..2000).collect::<Vec<_>>());
    assert_eq!(common::segment_base(&segment_files(dir.path())[0]), first);
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!((q.first_offset(), q.next_offset()), (first, 2000));
}

#[test]
fn the_active_segment_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_bytes(0)).unwrap();
    fill(&q, 500);
    q.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(q.stats().segments, 1);
    let first = q.first_offset();
    assert_eq!(q.read(first).unwrap().unwrap().offset(), first);
    assert_eq!(q.next_offset(), 500);
}

#[test]
fn age_limit_deletes_segments_whose_newest_record_is_old() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_age(Duration::from_millis(500))).unwrap();
    fill(&q, 300);
    let old_segments = q.stats().segments;
    assert!(old_segments > 3);
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0, "nothing is old yet");
    let newest_base = common::segment_base(segment_files(dir.path()).last().unwrap());
    std::thread::sleep(Duration::from_millis(800));
    fill(&q, 5);
    q.enforce_retention().unwrap();
    // Every segment whose newest record is old is gone, whether this call deleted it or the
    // pass that runs by itself once a seal is done; the one the new records went to stays.
    assert_eq!(q.first_offset(), newest_base);
    assert_eq!(segment_files(dir.path()).len() as u64, q.stats().segments);
    assert!(q.stats().segments <= 2, "{:?}", q.stats());
}

#[test]
fn a_group_holds_back_deletion_until_it_has_acked() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_until_consumed(true)).unwrap();
    fill(&q, 300);
    // No group: nothing counts as consumed.
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0);
    let fast = q.group("fast").unwrap();
    let slow = q.group("slow").unwrap();
    while let Some(d) = fast.poll(Duration::ZERO).unwrap() {
        fast.ack(d.offset()).unwrap();
    }
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0, "slow has acked nothing");
    for _ in 0..150 {
        let d = slow.poll(Duration::ZERO).unwrap().unwrap();
        slow.ack(d.offset()).unwrap();
    }
    q.enforce_retention().unwrap();
    let first = q.first_offset();
    assert!(first > 0 && first <= 150, "first offset {first}");
    // A dead letter is not acked: it holds deletion back too.
    let d = slow.poll(Duration::ZERO).unwrap().unwrap();
    let dead = d.offset();
    let g = q.group_with("slow", segq::GroupOptions::default().max_attempts(1)).unwrap();
    g.nack(dead, Duration::ZERO).unwrap();
    assert_eq!(g.dead_letters().unwrap()[0].offset(), dead);
    while let Some(d) = slow.poll(Duration::ZERO).unwrap() {
        slow.ack(d.offset()).unwrap();
    }
    q.enforce_retention().unwrap();
    assert!(q.first_offset() <= dead);
    assert!(q.read(dead).unwrap().is_some());
    g.ack(dead).unwrap();
    fill(&q, 200); // rolls, which runs retention by itself
    assert!(q.first_offset() > dead);
}

#[test]
fn a_group_that_fell_behind_moves_up_and_counts_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_bytes(8 << 10)).unwrap();
    let g = q.group("laggard").unwrap();
    let first_delivery = {
        q.append(b"early").unwrap();
        g.poll(Duration::ZERO).unwrap().unwrap()
    };
    assert_eq!(first_delivery.offset(), 0);
    fill(&q, 1000);
    let first = q.first_offset();
    assert!(first > 1);
    // The record obtained before its segment was deleted still reads.
    assert_eq!(first_delivery.payload(), b"early");
    let stats = g.stats();
    assert_eq!(stats.ack_floor, first);
    assert_eq!(stats.lost, first, "offsets 0..{first} were lost, 0 while leased");
    let d = g.poll(Duration::ZERO).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (first, 1));
    assert!(matches!(g.ack(0), Ok(())), "acking a deleted record is harmless");
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!(q.group("laggard").unwrap().stats().lost, first);
}

#[test]
fn a_crash_part_way_through_deletion_leaves_a_queue_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), opts()).unwrap();
        fill(&q, 1000);
        q.close().unwrap();
    }
    // Deletion removes the oldest segment first, then its index: stop at every point.
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::remove_file(files[1].with_extension("index")).unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    let first = common::segment_base(&files[2]);
    assert_eq!((q.first_offset(), q.next_offset()), (first, 1000));
    assert!(!files[0].with_extension("index").exists(), "the orphan index is cleaned up");
    let all: Vec<u64> = q.iter_from(0).map(|r| r.unwrap().offset()).collect();
    assert_eq!(all, (first..1000).collect::<Vec<_>>());
}

#[test]
fn retention_races_with_readers_on_other_threads() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_bytes(12 << 10)).unwrap();
    let n = 4000u64;
    std::thread::scope(|s| {
        s.spawn(|| fill(&q, n));
        for t in 0..2u64 {
            let q = &q;
            s.spawn(move || {
                let mut read = 0u64;
                while q.next_offset() < n || read == 0 {
                    let next = q.next_offset();
                    for o in (0..next).rev().step_by(7 + t as usize) {
                        if let Some(rec) = q.read(o).unwrap() {
                            assert_eq!(rec.payload(), payload(o));
                            read += 1;
                        }
                    }
                    for rec in q.iter_from(0).take(50) {
                        let rec = rec.unwrap();
                        assert_eq!(rec.payload(), payload(rec.offset()));
                    }
                }
            });
        }
    });
    assert!(q.first_offset() > 0);
}

#[test]
fn stats_are_serializable() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    fill(&q, 10);
    q.flush().unwrap();
    let stats = q.stats();
    assert_eq!((stats.first_offset, stats.next_offset, stats.durable_offset, stats.records), (0, 10, 10, 10));
    fn serializable<T: serde::Serialize>(_: &T) {}
    serializable(&stats);
    serializable(&q.enforce_retention().unwrap());
}

/// A group deleted while a retention pass runs stays deleted, and does not hold back
/// retention. (The pass listed the groups, then opened each, which created again one deleted
/// in between, at the first offset with nothing acked: retention then kept every segment.)
#[test]
fn a_group_deleted_during_retention_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_until_consumed(true)).unwrap();
    let keeper = q.group("keeper").unwrap();
    for i in 0..100 {
        let name = format!("g{i}");
        q.group(&name).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| q.enforce_retention().unwrap());
            s.spawn(|| q.delete_group(&name).unwrap());
        });
        assert_eq!(q.groups().unwrap(), ["keeper"], "round {i}");
    }
    // Everything the only group left has acked can go.
    for i in 0..200 {
        q.append(&payload(i)).unwrap();
    }
    let all = keeper.poll_batch(1_000, Duration::ZERO).unwrap();
    keeper.ack_batch(&all.iter().map(|d| d.offset()).collect::<Vec<_>>()).unwrap();
    assert!(segment_files(dir.path()).len() > 2);
    q.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1, "only the newest segment is kept");
}

/// A sealed segment moved elsewhere and replaced by a symbolic link to it is counted at
/// its file's size, not the link's, so that `retain_bytes` sees the bytes it holds. (Open
/// took the link's own length: a 4 KiB segment counted as a few dozen bytes.)
#[test]
fn a_symlinked_segment_counts_with_its_files_size() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    fill(&q, 200);
    q.close().unwrap();
    let oldest = segment_files(dir.path())[0].clone();
    let moved = elsewhere.path().join(oldest.file_name().unwrap());
    std::fs::copy(&oldest, &moved).unwrap();
    std::fs::remove_file(&oldest).unwrap();
    std::os::unix::fs::symlink(&moved, &oldest).unwrap();
    let real: u64 = segment_files(dir.path()).iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!(q.stats().bytes_on_disk, real);
    assert_eq!(q.read(0).unwrap().unwrap().payload(), payload(0));
}

/// Retention of a segment moved to another disk deletes the file there as well as the link,
/// or it frees nothing while reporting the bytes as deleted. (Only the link went.)
#[test]
fn retention_of_a_symlinked_segment_deletes_the_file_it_points_to() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    fill(&q, 200);
    q.close().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let oldest = files[0].clone();
    let moved = elsewhere.path().join(oldest.file_name().unwrap());
    std::fs::copy(&oldest, &moved).unwrap();
    std::fs::remove_file(&oldest).unwrap();
    std::os::unix::fs::symlink(&moved, &oldest).unwrap();
    // A link to another name inside the directory is only unlinked: that name is not followed.
    let second = files[1].clone();
    let renamed = dir.path().join("kept-aside");
    std::fs::rename(&second, &renamed).unwrap();
    std::os::unix::fs::symlink(&renamed, &second).unwrap();
    let moved_len = std::fs::metadata(&moved).unwrap().len();

    let q = Queue::open(dir.path(), opts().retain_bytes(0)).unwrap();
    let report = q.enforce_retention().unwrap();
    assert_eq!(report.segments_deleted as usize, files.len() - 1, "{report:?}");
    assert!(report.bytes_deleted >= moved_len);
    assert!(!moved.exists(), "the moved segment's file is left behind");
    assert!(std::fs::symlink_metadata(&oldest).is_err());
    assert!(std::fs::symlink_metadata(&second).is_err());
    assert!(renamed.exists(), "a file inside the queue's directory was followed and deleted");
    assert_eq!(q.first_offset(), common::segment_base(files.last().unwrap()));
}

/// A segment linked to another segment of the same queue through a bind mount of its
/// directory: retention unlinks the link and leaves the other segment, since directories
/// are compared by device and inode, not by path. (The path differed, so the live segment
/// was deleted too.) Needs `mount --bind`, so root; skipped, saying so, where it fails.
#[test]
fn retention_never_follows_a_link_back_into_the_queue_through_a_bind_mount() {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    fill(&q, 200);
    q.close().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let bind = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .arg("--bind")
        .arg(dir.path())
        .arg(bind.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: mount --bind is not allowed here");
        return;
    }
    let _unmount = Unmount(bind.path().to_path_buf());
    std::fs::remove_file(&files[0]).unwrap();
    std::os::unix::fs::symlink(bind.path().join(files[1].file_name().unwrap()), &files[0]).unwrap();
    // Just over the limit: only the oldest segment (the link) is to go.
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let q = Queue::open(dir.path(), opts().retain_bytes(total - 1)).unwrap();
    let report = q.enforce_retention().unwrap();
    assert_eq!(report.segments_deleted, 1, "{report:?}");
    assert_eq!(segment_files(dir.path()), files[1..]);
    let base = common::segment_base(&files[1]);
    assert_eq!(q.read(base).unwrap().unwrap().payload(), payload(base));
    drop(q);
    drop(_unmount);
}

/// Runs `work` next to a thread that appends 500-byte records, has group `a` ack each at
/// once (so retention may delete every sealed segment), and a thread that loops
/// `enforce_retention`, on 4 KiB segments with `retain_until_consumed`.
fn with_retention_racing(work: impl FnOnce(&Queue)) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(Queue::open(dir.path(), opts().retain_until_consumed(true)).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let a = q.group("a").unwrap();
    let appender = {
        let (q, done) = (q.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                q.append(&[7; 500]).unwrap();
                while let Some(d) = a.poll(Duration::ZERO).unwrap() {
                    a.ack(d.offset()).unwrap();
                }
            }
        })
    };
    let retention = {
        let (q, done) = (q.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                q.enforce_retention().unwrap();
            }
        })
    };
    work(&q);
    done.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    retention.join().unwrap();
}

/// A group created while a pass runs starts at the first offset left after it, never at
/// one the pass then deletes. (The pass decided from the groups it had listed: a group
/// created after that lost the records of the segments deleted next, in 156 to 168 of 400
/// groups in the review that found it.)
#[test]
fn a_group_created_during_retention_loses_no_record() {
    with_retention_racing(|q| {
        for i in 0..150 {
            let g = q.group(&format!("late{i}")).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(g.stats().lost, 0, "group late{i} lost records it was created to read");
            q.delete_group(&format!("late{i}")).unwrap();
        }
    });
}

/// A seek back to the first offset while a pass runs: the group never needs records the
/// pass deletes. (It lost 14 to 98 records in 300 seeks.)
#[test]
fn a_group_sought_back_during_retention_loses_no_record() {
    with_retention_racing(|q| {
        let g = q.group("g").unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    while let Some(d) = g.poll(Duration::ZERO).unwrap() {
                        // A seek may have taken the lease back in between.
                        let _ = g.ack(d.offset());
                    }
                }
            });
            for _ in 0..300 {
                g.seek(0).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(g.stats().lost, 0);
    });
}

/// A closed queue of `n` segments of one 3000-byte record each (4 KiB segments).
fn many_segments(dir: &std::path::Path, n: u64) -> Options {
    let base = Options::default().segment_bytes(4096).sync(SyncPolicy::Never);
    let q = Queue::open(dir, base.clone()).unwrap();
    for _ in 0..n {
        q.append(&[1u8; 3000]).unwrap();
    }
    q.close().unwrap();
    base
}

/// `close` while a long retention pass runs on another thread: the pass stops, and `close`
/// returns only once it has, so a queue opened next on the directory loses nothing to it.
/// (The pass went on after `close` returned and deleted segments the next queue had
/// listed: its open failed with `NotFound`, or its first read did; found by the review of
/// this session's lock changes, 8 of 8 runs.)
#[test]
fn close_stops_a_retention_pass_before_it_returns() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let base = many_segments(dir.path(), 1000);
    let q1 = Arc::new(Queue::open(dir.path(), base.clone().retain_bytes(8192)).unwrap());
    let pass = {
        let q1 = q1.clone();
        std::thread::spawn(move || q1.enforce_retention())
    };
    std::thread::sleep(Duration::from_millis(50));
    q1.close().unwrap();
    let files = segment_files(dir.path()).len();
    let q2 = Queue::open(dir.path(), base).unwrap();
    let first = q2.first_offset();
    let result = pass.join().unwrap();
    assert!(matches!(result, Ok(_) | Err(segq::Error::Closed)), "{result:?}");
    assert_eq!(segment_files(dir.path()).len(), files, "the closed handle's pass deleted files after close");
    assert!(q2.read(first).unwrap().is_some());
    assert_eq!(q2.next_offset(), 1000);
}

/// A group asked for while a pass runs waits for it; a close meanwhile makes it fail with
/// `Closed`, and no group file is written after `close` returns. (It was created after the
/// close and returned as if the queue were open, its journal never released.)
#[test]
fn a_group_asked_for_during_a_pass_fails_closed_if_the_queue_closes_meanwhile() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let base = many_segments(dir.path(), 1000);
    let q1 = Arc::new(Queue::open(dir.path(), base.retain_bytes(8192)).unwrap());
    let pass = {
        let q1 = q1.clone();
        std::thread::spawn(move || q1.enforce_retention())
    };
    std::thread::sleep(Duration::from_millis(30));
    let creator = {
        let q1 = q1.clone();
        std::thread::spawn(move || q1.group("late").map(|g| g.name().to_string()))
    };
    std::thread::sleep(Duration::from_millis(20));
    q1.close().unwrap();
    let existed_at_close = dir.path().join("groups/late").exists();
    let _ = pass.join().unwrap();
    let created = creator.join().unwrap();
    assert!(existed_at_close || matches!(created, Err(segq::Error::Closed)), "{created:?}");
    assert_eq!(dir.path().join("groups/late").exists(), existed_at_close, "group files written after close");
}

/// `delete_group` racing `close`: either the group is deleted before `close` returns, or
/// the call fails with `Closed` and the files stay; never removed after `close` returned,
/// when a queue opened next may be using them. (Found by reading the code in the last
/// review of session 13; the window is too narrow to hit reliably, so this test guards the
/// property rather than reproducing the race.)
#[test]
fn a_group_deleted_while_the_queue_closes_is_gone_before_close_returns_or_kept() {
    use std::sync::{Arc, Barrier};
    for round in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(Queue::open(dir.path(), opts()).unwrap());
        q.group("g").unwrap();
        let start = Arc::new(Barrier::new(2));
        let deleter = {
            let (q, start) = (q.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                q.delete_group("g")
            })
        };
        start.wait();
        q.close().unwrap();
        let there_at_close = dir.path().join("groups/g").exists();
        let deleted = deleter.join().unwrap();
        assert_eq!(dir.path().join("groups/g").exists(), there_at_close, "round {round}: {deleted:?}");
        assert_eq!(deleted.is_ok(), !there_at_close, "round {round}: {deleted:?}");
    }
}

/// `retain_until_consumed` deletes records only on acks that are durable: under `Never`,
/// unsynced acks would come undone in a power loss, and the records they let go would be
/// lost to the group. A pass syncs each group's journal first. (It trusted the acks in
/// memory.)
#[test]
fn retain_until_consumed_makes_the_acks_it_relies_on_durable_first() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_until_consumed(true)).unwrap();
    fill(&q, 300);
    let g = q.group("g").unwrap();
    let mut entries = 0;
    for _ in 0..200 {
        let d = g.poll(Duration::ZERO).unwrap().unwrap();
        g.ack(d.offset()).unwrap();
        entries += 2;
    }
    let journal = dir.path().join("groups/g/journal");
    segq::fault::audit(dir.path());
    assert!(q.enforce_retention().unwrap().segments_deleted > 0);
    let synced = segq::fault::take_synced(dir.path());
    assert!(common::covered(&synced, &journal, &(32..32 + 24 * entries)), "the acks were not synced: {synced:?}");
    assert!(q.first_offset() > 0 && q.first_offset() <= 200);
}

/// A consumer group racing retention by size, close behind it: every record below the first
/// offset was either delivered or counted lost, never passed over as if acked. (Until
/// session 19 a retention pass between a poll's catch-up and its look for the next record
/// made the poll deliver past the deleted records, which then counted as acked: `stress`
/// saw 2 of 118 once in CI, and this test 2 to 25 in five of eight debug runs.)
#[test]
fn a_group_racing_retention_counts_every_record_it_never_got_as_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().retain_bytes(3 * 4096)).unwrap();
    let g = q.group("g").unwrap();
    let stop = AtomicBool::new(false);
    let mut delivered = std::collections::HashSet::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..20_000 {
                q.append(&payload(i)).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                q.enforce_retention().unwrap();
            }
        });
        // Slower than the appender, so that retention overtakes it again and again.
        while !stop.load(Ordering::Relaxed) {
            if let Some(d) = g.poll(Duration::from_millis(1)).unwrap() {
                delivered.insert(d.offset());
                g.ack(d.offset()).unwrap();
                if d.offset() % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    });
    q.enforce_retention().unwrap();
    let first = q.first_offset();
    while let Some(d) = g.poll(Duration::ZERO).unwrap() {
        delivered.insert(d.offset());
        g.ack(d.offset()).unwrap();
    }
    let missed = (0..q.next_offset()).filter(|o| !delivered.contains(o)).count() as u64;
    assert!(first > 0 && missed > 0, "retention never overtook the group (first {first}): nothing was tested");
    // Lost also counts a record delivered and deleted before its ack came.
    let lost = g.stats().lost;
    assert!(missed <= lost, "{missed} records never delivered, {lost} counted lost");
}

/// `.log` files of `dir` that this process still maps though they were deleted.
fn deleted_but_mapped(dir: &std::path::Path) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let prefix = dir.to_string_lossy().into_owned();
    let mut files: Vec<String> = maps
        .lines()
        .filter(|l| l.contains(&prefix) && l.contains(".log") && l.ends_with("(deleted)"))
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .collect();
    files.dedup();
    files
}

/// Idle groups, each stopped in a different segment, next to retention by size: once
/// retention deletes their segments, no group keeps one mapped, so the disk space comes
/// back. (Each group's read cursor held the segment it last read from until its next poll:
/// `retain_bytes` no longer bounded the disk, 64 MiB per idle group with the default
/// segments. Found by a scale review, session 20.)
#[test]
fn idle_groups_do_not_keep_segments_that_retention_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 64u64 << 10;
    let q =
        Queue::open(dir.path(), Options::default().segment_bytes(seg).sync(SyncPolicy::Never).retain_bytes(4 * seg))
            .unwrap();
    let groups: Vec<_> = (0..20)
        .map(|stage| {
            for _ in 0..60 {
                q.append(&[stage as u8; 1000]).unwrap();
            }
            let g = q.group(&format!("g-{stage:02}")).unwrap();
            while let Some(d) = g.poll(Duration::ZERO).unwrap() {
                g.ack(d.offset()).unwrap();
            }
            g
        })
        .collect();
    for _ in 0..600 {
        q.append(&[0xee; 1000]).unwrap();
    }
    q.enforce_retention().unwrap();
    assert!(q.first_offset() > 20 * 60, "retention deleted every segment the groups read");
    assert_eq!(deleted_but_mapped(dir.path()), Vec::<String>::new());
    // The groups go on from where they were.
    for g in &groups {
        assert_eq!(g.poll(Duration::ZERO).unwrap().map(|d| d.offset()), Some(q.first_offset()));
    }
    q.close().unwrap();
}

/// More groups than the process may open files, under `retain_until_consumed`: a pass
/// opens each group that is not open for its floor and lets go of it again, so passes
/// complete and rolls go on, and a group opened later by a user is the one retention
/// waited for. (Every group a pass opened stayed open until `close`: with 1,100 groups
/// under the usual limit of 1,024 descriptors the pass ran out part-way and kept them all,
/// and from then on every roll failed with "Too many open files". Found by a scale
/// review, session 20.)
#[test]
fn retention_runs_with_more_groups_than_the_process_may_open_files() {
    let _lock = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).sync(SyncPolicy::Never)).unwrap();
    for _ in 0..4 {
        q.append(&[1u8; 3000]).unwrap();
    }
    // 150 groups, all caught up but `slow`, which has acked only the first record.
    for i in 0..150 {
        let g = q.group(&format!("g-{i:03}")).unwrap();
        while let Some(d) = g.poll(Duration::ZERO).unwrap() {
            g.ack(d.offset()).unwrap();
        }
    }
    let slow = q.group("slow").unwrap();
    let first = slow.poll(Duration::ZERO).unwrap().unwrap();
    slow.ack(first.offset()).unwrap();
    q.close().unwrap();
    drop((slow, q));
    common::run_child_test(
        "child_runs_retention_with_few_file_descriptors",
        &[("SEGQ_RETENTION_NOFILE_DIR", dir.path().display().to_string())],
    );
}

#[test]
#[ignore = "run by retention_runs_with_more_groups_than_the_process_may_open_files"]
fn child_runs_retention_with_few_file_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Ok(dir) = std::env::var("SEGQ_RETENTION_NOFILE_DIR") else { return };
    println!("CHILD RAN");
    let old = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(128), maximum: old.maximum }).unwrap();
    let opts = Options::default().segment_bytes(4096).sync(SyncPolicy::Never).retain_until_consumed(true);
    let q = Queue::open(std::path::Path::new(&dir), opts).unwrap();
    // Each of these rolls, and each roll runs a pass over the 151 groups.
    for _ in 0..5 {
        q.append(&[2u8; 3000]).unwrap();
    }
    let report = q.enforce_retention().unwrap();
    // `slow` still needs offset 1 on: only the segment of offset 0 could go.
    assert_eq!(q.first_offset(), 1, "{report:?}");
    // Opened by a user now, it is where it was; once it has acked, the rest can go.
    let slow = q.group("slow").unwrap();
    while let Some(d) = slow.poll(Duration::ZERO).unwrap() {
        assert!(d.offset() >= 1);
        slow.ack(d.offset()).unwrap();
    }
    q.enforce_retention().unwrap();
    // The 150 others, let go of by the passes, still need what was appended in this run.
    assert_eq!(q.first_offset(), 4);
    q.close().unwrap();
}

/// Under `retain_until_consumed`, a pass syncs the groups' acks before it deletes on them,
/// and only then: behind slow consumers, where no segment can go, the pass every roll runs
/// syncs no group under `Never` (it synced every open group before). Once the groups have
/// consumed a segment, the pass syncs them and deletes it.
#[test]
fn a_pass_that_can_delete_nothing_syncs_no_group() {
    use segq::fault;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(4096).sync(SyncPolicy::Never).retain_until_consumed(true);
    let q = Queue::open(dir.path(), opts).unwrap();
    let groups: Vec<_> = (0..4).map(|i| q.group(&format!("g{i}")).unwrap()).collect();
    let groups_dir = dir.path().join("groups");
    fault::audit(&groups_dir);
    let _ = fault::take_synced(&groups_dir);
    for i in 0..400 {
        q.append(&payload(i)).unwrap();
        // Every group acks a record now and then, but stays inside the first segment.
        if i % 20 == 0 {
            for g in &groups {
                let d = g.poll(Duration::ZERO).unwrap().unwrap();
                g.ack(d.offset()).unwrap();
            }
        }
    }
    assert!(q.stats().segments >= 4, "rolls ran passes");
    assert_eq!(q.first_offset(), 0);
    assert_eq!(fault::take_synced(&groups_dir), Vec::new(), "no group synced by a pass that deletes nothing");
    // All consumed: the next pass syncs every group's acks, then deletes.
    for g in &groups {
        while let Some(d) = g.poll(Duration::ZERO).unwrap() {
            g.ack(d.offset()).unwrap();
        }
    }
    let report = q.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0);
    let synced = fault::take_synced(&groups_dir);
    for i in 0..4 {
        let journal = groups_dir.join(format!("g{i}")).join("journal");
        assert!(synced.iter().any(|s| s.path == journal), "g{i}'s journal synced before the deletion: {synced:?}");
    }
    q.close().unwrap();
}
