//! Session 20's changes, checked from outside (by a review of them): the heap of final
//! timers (`GroupState::finals`), the retention pass that lets go of the groups it opened
//! (`Shared::resting`), open groups dropping their cursor after a pass, and the
//! inspector's search for stray bytes and its view of zeros in a sealed index.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{FILE_HEADER_LEN, payload};
use segq::inspect::{QueueDir, Severity, verify};
use segq::{Group, GroupOptions, Options, Queue, SyncPolicy};

const ZERO: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);

fn append_n(q: &Queue, n: u64) {
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("record {i}").into_bytes()).collect();
    for chunk in payloads.chunks(5000) {
        q.append_batch(&chunk.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    }
}

fn dead(g: &Group) -> Vec<u64> {
    g.dead_letters().unwrap().iter().map(|d| d.offset()).collect()
}

// ---------------------------------------------------------------------------------------
// 1 + 4: final timers and snapshot writes that fail without poisoning
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// 1: the finals heap on its own
// ---------------------------------------------------------------------------------------

/// `group_with` lowering `max_attempts` on an open group makes a record already delivered
/// that often, whose lease ran out, dead for `dead_letters`, `stats` and `ack_floor`.
#[test]
fn lowering_max_attempts_on_an_open_group_makes_an_expired_record_dead_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    append_n(&q, 10);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(5)).unwrap();
    let d = g.poll(ZERO).unwrap().unwrap();
    g.nack(d.offset(), ZERO).unwrap();
    assert_eq!(g.poll(ZERO).unwrap().unwrap().attempt(), 2);
    assert!(g.extend_lease(0, ZERO).unwrap());
    std::thread::sleep(Duration::from_millis(5));
    q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(2)).unwrap();
    let s = g.stats();
    assert_eq!((s.dead, s.waiting, s.leased), (1, 0, 0), "{s:?}");
    assert_eq!(dead(&g), [0]);
    assert_eq!(g.ack_floor(), 1);
    // Raised again: a redrive starts it over, and with 3 allowed a third delivery happens.
    q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(3)).unwrap();
    assert!(g.redrive(0).unwrap());
    assert_eq!(g.poll(ZERO).unwrap().unwrap().offset(), 0);
}

/// Raising `max_attempts` on an open group: a record at the old limit whose lease ran out is
/// delivered again, not dead-lettered by `stats` first.
#[test]
fn raising_max_attempts_on_an_open_group_keeps_an_expired_record_alive() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    append_n(&q, 10);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(1)).unwrap();
    g.poll(ZERO).unwrap().unwrap();
    assert!(g.extend_lease(0, ZERO).unwrap());
    std::thread::sleep(Duration::from_millis(5));
    q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(2)).unwrap();
    assert_eq!(g.stats().dead, 0);
    assert!(dead(&g).is_empty());
    let d = g.poll(ZERO).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (0, 2));
    // Extending the final lease and letting it run out: dead for every view.
    assert!(g.extend_lease(0, Duration::from_millis(20)).unwrap());
    assert!(dead(&g).is_empty(), "the extended lease still runs");
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(dead(&g), [0]);
}

/// After a reopen every lease has ended: a record at its last delivery is dead for the
/// views at once, also one that `group_with` makes final at the reopen.
#[test]
fn a_reopen_makes_records_at_their_last_delivery_dead_for_every_view() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        append_n(&q, 10);
        let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(1)).unwrap();
        g.poll(ZERO).unwrap().unwrap();
        let h = q.group_with("h", GroupOptions::default().lease(HOUR).max_attempts(5)).unwrap();
        for _ in 0..2 {
            let d = h.poll(ZERO).unwrap().unwrap();
            h.nack(d.offset(), ZERO).unwrap();
        }
        h.poll(ZERO).unwrap().unwrap(); // attempt 3, leased
        q.close().unwrap();
    }
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!(g.stats().dead, 1);
    assert_eq!(dead(&g), [0]);
    let h = q.group_with("h", GroupOptions::default().lease(HOUR).max_attempts(3)).unwrap();
    assert_eq!(dead(&h), [0], "three deliveries, limit lowered to three at the reopen");
}

/// A record at its last delivery that spilled out of the 65,536-slot window (into `below`)
/// is still found dead by the views once its lease ends, and the heap of final timers
/// does not grow with the acks behind it.
#[test]
fn a_final_record_below_the_window_is_found_dead() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    append_n(&q, 80_001);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(1)).unwrap();
    g.poll(ZERO).unwrap().unwrap();
    for _ in 0..80 {
        let batch = g.poll_batch(1000, ZERO).unwrap();
        g.ack_batch(&batch.iter().map(|d| d.offset()).collect::<Vec<_>>()).unwrap();
    }
    assert_eq!(g.ack_floor(), 0);
    assert!(g.extend_lease(0, ZERO).unwrap());
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(g.ack_floor(), 80_001);
    assert_eq!(dead(&g), [0]);
    assert!(g.redrive(0).unwrap());
    assert_eq!(g.poll(ZERO).unwrap().unwrap().offset(), 0);
}

/// A seek back keeps the records that died at their last lease whether or not a call noticed.
#[test]
fn a_seek_keeps_a_record_whose_last_lease_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    append_n(&q, 10);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(1)).unwrap();
    for _ in 0..5 {
        g.poll(ZERO).unwrap().unwrap();
    }
    for o in 0..5 {
        assert!(g.extend_lease(o, ZERO).unwrap());
    }
    std::thread::sleep(Duration::from_millis(5));
    g.seek(8).unwrap();
    assert_eq!(dead(&g), [0, 1, 2, 3, 4]);
}

// ---------------------------------------------------------------------------------------
// 2 + 3: retention with resting groups, cursors dropped after a pass
// ---------------------------------------------------------------------------------------

fn retention_opts() -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(512).sync(SyncPolicy::Never).retain_until_consumed(true)
}

/// Groups that no handle opened are opened by a pass and let go: their floor holds back
/// retention, and once a user opens, consumes, deletes or re-creates them, later passes see
/// the new floor.
#[test]
fn resting_groups_hold_back_retention_until_their_floor_moves() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), retention_opts()).unwrap();
        q.group("a").unwrap();
        q.group("b").unwrap();
        for i in 0..2000 {
            q.append(&payload(i)).unwrap();
        }
        q.close().unwrap();
    }
    let q = Queue::open(dir.path(), retention_opts()).unwrap();
    let a = q.group("a").unwrap();
    while let Some(d) = a.poll(ZERO).unwrap() {
        a.ack(d.offset()).unwrap();
    }
    q.enforce_retention().unwrap();
    assert_eq!(q.first_offset(), 0, "b rests at 0");
    let b = q.group("b").unwrap();
    for _ in 0..1000 {
        let d = b.poll(ZERO).unwrap().unwrap();
        b.ack(d.offset()).unwrap();
    }
    q.enforce_retention().unwrap();
    assert!(q.first_offset() > 0 && q.first_offset() <= 1000, "{}", q.first_offset());
    b.seek(0).unwrap();
    assert_eq!(b.poll(ZERO).unwrap().unwrap().offset(), q.first_offset());
    assert_eq!(b.stats().lost, 0);
    q.delete_group("b").unwrap();
    let b = q.group("b").unwrap();
    assert_eq!(b.ack_floor(), q.first_offset());
    let first = q.first_offset();
    q.enforce_retention().unwrap();
    assert_eq!(q.first_offset(), first, "the new b needs its first record");
    q.close().unwrap();
}

/// Many groups resting at different floors, opened by a user while appends run passes on
/// another thread: no group ever loses a record it had not acked.
#[test]
fn groups_opened_while_passes_run_lose_nothing() {
    const GROUPS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), retention_opts()).unwrap();
        for i in 0..GROUPS {
            q.group(&format!("g{i}")).unwrap();
        }
        for i in 0..4000 {
            q.append(&payload(i)).unwrap();
        }
        for i in 0..GROUPS {
            let g = q.group(&format!("g{i}")).unwrap();
            for _ in 0..(i * 50) {
                let d = g.poll(ZERO).unwrap().unwrap();
                g.ack(d.offset()).unwrap();
            }
        }
        q.close().unwrap();
    }
    let q = Arc::new(Queue::open(dir.path(), retention_opts()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (q, stop) = (q.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 4000;
            while !stop.load(Ordering::Relaxed) {
                q.append(&payload(i)).unwrap();
                i += 1;
                if i % 500 == 0 {
                    q.enforce_retention().unwrap();
                }
            }
        })
    };
    for round in 0..3 {
        for i in (0..GROUPS).rev() {
            let g = q.group(&format!("g{i}")).unwrap();
            let s = g.stats();
            assert_eq!(s.lost, 0, "round {round}: {s:?}");
            if round == 0 {
                assert_eq!(s.ack_floor, i * 50, "{s:?}");
                let d = g.poll(ZERO).unwrap().unwrap();
                assert_eq!(d.offset(), i * 50);
                g.ack(d.offset()).unwrap();
            } else {
                // Consume some more, and now and then seek back to the first offset.
                for _ in 0..20 {
                    let d = g.poll(ZERO).unwrap().unwrap();
                    g.ack(d.offset()).unwrap();
                }
                if i % 7 == 0 {
                    let first = q.first_offset();
                    g.seek(first).unwrap();
                    let d = g.poll(ZERO).unwrap().unwrap();
                    assert!(d.offset() >= first);
                    assert_eq!(g.stats().lost, 0);
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    for i in 0..GROUPS {
        assert_eq!(q.group(&format!("g{i}")).unwrap().stats().lost, 0);
    }
    q.close().unwrap();
}

/// Consumers polling while passes delete the segments behind them (and drop their
/// cursors): every record is delivered exactly once and in order, none is lost.
#[test]
fn dropped_cursors_lose_and_repeat_no_delivery() {
    const N: u64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(Queue::open(dir.path(), retention_opts()).unwrap());
    let g = q.group_with("g", GroupOptions::default().lease(HOUR)).unwrap();
    let appender = {
        let q = q.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                q.append(&payload(i)).unwrap();
                if i % 1000 == 0 {
                    q.enforce_retention().unwrap();
                }
            }
        })
    };
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match g.poll(Duration::from_millis(200)).unwrap() {
                        Some(d) => {
                            assert_eq!(d.payload(), payload(d.offset()));
                            got.push(d.offset());
                            g.ack(d.offset()).unwrap();
                        }
                        None if g.ack_floor() >= N => break,
                        None => {}
                    }
                }
                got
            })
        })
        .collect();
    appender.join().unwrap();
    let mut all: Vec<u64> = consumers.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(n, all.len(), "some record was delivered twice");
    assert_eq!(all, (0..N).collect::<Vec<_>>());
    let s = g.stats();
    assert_eq!((s.lost, s.dead), (0, 0));
    assert!(q.first_offset() > 0, "retention ran");
    q.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// 5: inspect
// ---------------------------------------------------------------------------------------

fn newest_segment(dir: &Path) -> PathBuf {
    common::segment_files(dir).pop().unwrap()
}

/// A stray byte at the very end of the newest segment's preallocated room, after the
/// records were read (read-ahead), is still found.
#[test]
fn verify_finds_a_stray_byte_at_the_end_of_the_room() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(64 << 20)).unwrap();
    for i in 0..1000 {
        q.append(&payload(i)).unwrap();
    }
    q.close().unwrap();
    drop(q);
    let seg = newest_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(len > 1 << 20, "the room is preallocated: {len}");
    let clean = verify(&QueueDir::open(dir.path()).unwrap(), &|_| {}).unwrap();
    assert!(clean.findings.is_empty(), "{:?}", clean.findings);
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().write_all_at(b"x", len - 1).unwrap();
    let report = verify(&QueueDir::open(dir.path()).unwrap(), &|_| {}).unwrap();
    assert!(report.findings.iter().any(|f| f.file == seg && f.position == len - 1), "{:?}", report.findings);
}

/// Many written stretches of zeros in the room (more than the inspector asks about) and a
/// stray byte after them: still found.
#[test]
fn verify_finds_a_stray_byte_after_many_stretches_of_written_zeros() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(96 << 20)).unwrap();
    for i in 0..100 {
        q.append(&payload(i)).unwrap();
    }
    q.close().unwrap();
    drop(q);
    let seg = newest_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let page = [0u8; 4096];
    let mut at = 1 << 20;
    let mut runs = 0;
    while at + 8192 < len - (1 << 20) && runs < 5000 {
        file.write_all_at(&page, at).unwrap();
        at += 8192;
        runs += 1;
    }
    let stray = len - 12345;
    file.write_all_at(b"y", stray).unwrap();
    file.sync_all().unwrap();
    let report = verify(&QueueDir::open(dir.path()).unwrap(), &|_| {}).unwrap();
    assert!(report.findings.iter().any(|f| f.file == seg && f.position == stray), "{runs} runs: {:?}", report.findings);
}

/// A damaged record in the middle of the newest segment, with intact records after it, is
/// damage (records lost), not a torn tail: the records after it are found as data.
#[test]
fn verify_calls_a_damaged_record_before_intact_ones_damage() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(64 << 20)).unwrap();
    for i in 0..20_000 {
        q.append(&payload(i)).unwrap();
    }
    q.close().unwrap();
    drop(q);
    let seg = newest_segment(dir.path());
    // A byte in the header of a record near the start.
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.write_all_at(&[0xff; 4], 32 + 200).unwrap();
    let report = verify(&QueueDir::open(dir.path()).unwrap(), &|_| {}).unwrap();
    assert!(report.damage() >= 1, "{:?}", report.findings);
}

/// A sealed index whose first entry was zeroed while valid entries follow: segq never
/// writes that (an uncut index has its entries first and only zeros after them), so it is
/// damage, not the warning for an index whose cut never ran.
#[test]
fn verify_reports_zeros_before_entries_in_a_sealed_index_as_damage() {
    use std::os::unix::fs::FileExt;
    let dir = common::closed_queue(common::tiny(4096), 300);
    let sealed_index = common::files_ending(dir.path(), "index").into_iter().next().expect("an index");
    let len = std::fs::metadata(&sealed_index).unwrap().len();
    assert!(len >= (FILE_HEADER_LEN + 24) as u64, "several entries: {len}");
    std::fs::OpenOptions::new().write(true).open(&sealed_index).unwrap().write_all_at(&[0; 8], 32).unwrap();
    let report = verify(&QueueDir::open(dir.path()).unwrap(), &|_| {}).unwrap();
    let zeroed: Vec<_> = report.findings.iter().filter(|f| f.file == sealed_index).cloned().collect();
    // A later entry damaged behind the zeros is not looked at either.
    let file = std::fs::OpenOptions::new().write(true).open(&sealed_index).unwrap();
    file.write_all_at(&[0xff; 8], len - 8).unwrap();
    let report = verify(&QueueDir::open(dir.path()).unwrap(), &|_| {}).unwrap();
    let also_bad: Vec<_> = report.findings.iter().filter(|f| f.file == sealed_index).cloned().collect();
    assert!(
        zeroed.iter().any(|f| f.severity == Severity::Damage)
            && also_bad.iter().any(|f| f.severity == Severity::Damage),
        "zeros before valid entries in a sealed index: {zeroed:?}; with the last entry also garbage: {also_bad:?}"
    );
}
