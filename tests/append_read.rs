//! Appending, reading by offset and iterating across many segment rolls, and reopening.

mod common;

use common::{all_payloads, payload, segment_files, tiny};
use segq::{Error, Options, Queue, SyncPolicy};

#[test]
fn records_survive_many_rolls_and_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    let n = 2000;
    for i in 0..n {
        assert_eq!(q.append(&payload(i)).unwrap(), i);
    }
    assert!(segment_files(dir.path()).len() > 50, "tiny segments should roll often");
    for i in (0..n).rev() {
        let rec = q.read(i).unwrap().unwrap();
        assert_eq!(rec.offset(), i);
        assert_eq!(rec.payload(), payload(i));
    }
    assert!(q.read(n).unwrap().is_none());
    q.close().unwrap();

    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    assert!(q.recovery().clean);
    assert_eq!(q.recovery().scanned_bytes, 0);
    assert_eq!((q.first_offset(), q.next_offset()), (0, n));
    let all = all_payloads(&q);
    assert_eq!(all.len(), n as usize);
    for (i, p) in all.iter().enumerate() {
        assert_eq!(*p, payload(i as u64));
    }
    assert_eq!(q.append(b"more").unwrap(), n);
}

#[test]
fn first_offset_is_zero_and_offsets_are_contiguous_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!((q.first_offset(), q.next_offset()), (0, 0));
    assert!(q.read(0).unwrap().is_none());
    assert_eq!(q.append(b"hello").unwrap(), 0);
    assert_eq!(q.append_batch(&[b"a".as_slice(), b"b".as_slice()]).unwrap(), 1..3);
    assert_eq!(q.append_batch(&[]).unwrap(), 3..3);
    assert_eq!(q.append(b"").unwrap(), 3);
    assert_eq!(q.read(3).unwrap().unwrap().payload(), b"");
    assert_eq!(q.read(2).unwrap().unwrap().payload(), b"b");
    let ts = q.read(0).unwrap().unwrap().timestamp_ms();
    assert!(ts > 1_700_000_000_000, "timestamp {ts} is not wall-clock milliseconds");
}

#[test]
fn a_record_bigger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    let big = vec![7u8; 10_000];
    q.append(b"small").unwrap();
    q.append(&big).unwrap();
    q.append(&big).unwrap();
    q.append(b"after").unwrap();
    q.append_batch(&[big.as_slice(), big.as_slice(), b"x"]).unwrap();
    q.close().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    let all = all_payloads(&q);
    assert_eq!(all.len(), 7);
    assert_eq!(all[1], big);
    assert_eq!(all[3], b"after");
    assert_eq!(all[5], big);
    assert_eq!(all[6], b"x");
}

#[test]
fn sealed_segments_are_trimmed_to_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(8192)).unwrap();
    for i in 0..500 {
        q.append(&payload(i)).unwrap();
    }
    let files = segment_files(dir.path());
    let (last, sealed) = files.split_last().unwrap();
    for f in sealed {
        assert!(std::fs::metadata(f).unwrap().len() <= 8192);
    }
    assert!(sealed.iter().any(|f| std::fs::metadata(f).unwrap().len() < 8192));
    assert_eq!(std::fs::metadata(last).unwrap().len(), 8192, "the active segment is preallocated");
}

#[test]
fn too_large_records_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().max_record_bytes(100).sync(SyncPolicy::Never)).unwrap();
    q.append(&[1u8; 100]).unwrap();
    let err = q.append(&[1u8; 101]).unwrap_err();
    assert!(matches!(err, Error::RecordTooLarge { size: 101, limit: 100 }), "{err}");
    assert!(err.to_string().starts_with("101 bytes is over the limit of 100 bytes"), "{err}");
    let err = q.append_batch(&[b"ok".as_slice(), &[0u8; 500]]).unwrap_err();
    assert!(matches!(err, Error::RecordTooLarge { .. }));
    assert_eq!(q.next_offset(), 1);
    assert_eq!(q.append(b"next").unwrap(), 1);
}

#[test]
fn reads_race_with_appends_on_other_threads() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    let n = 3000u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..n {
                q.append(&payload(i)).unwrap();
            }
        });
        for _ in 0..2 {
            s.spawn(|| {
                let mut seen = 0;
                while seen < n {
                    let next = q.next_offset();
                    for o in seen..next {
                        assert_eq!(q.read(o).unwrap().unwrap().payload(), payload(o));
                    }
                    seen = next;
                }
            });
        }
    });
}

/// Durable appends from many threads, with and without busy waiting for the shared syncs:
/// each returns only once its record is durable, and a crash right after keeps them all.
#[test]
fn durable_appends_from_many_threads_all_survive_a_crash() {
    for busy_wait in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let opts = || tiny(16 << 10).sync(SyncPolicy::Always).busy_wait_for_sync(busy_wait);
        let q = Queue::open(dir.path(), opts()).unwrap();
        let acknowledged: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u64)
                .map(|t| {
                    let q = &q;
                    s.spawn(move || {
                        (0..100u64)
                            .map(|i| {
                                let offset = q.append(&payload(t * 1000 + i)).unwrap();
                                assert!(q.durable_offset() > offset, "acknowledged before durable");
                                offset
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        q.simulate_crash();
        let q = Queue::open(dir.path(), opts()).unwrap();
        assert_eq!(q.next_offset(), 800, "busy_wait {busy_wait}");
        for (t, offsets) in acknowledged.iter().enumerate() {
            for (i, &offset) in offsets.iter().enumerate() {
                assert_eq!(q.read(offset).unwrap().unwrap().payload(), payload(t as u64 * 1000 + i as u64));
            }
        }
    }
}

#[test]
fn records_outlive_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    q.append(b"kept").unwrap();
    let rec = q.read(0).unwrap().unwrap();
    drop(q);
    assert_eq!(rec.payload(), b"kept");
}

#[test]
fn iteration_follows_the_live_log() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    let mut it = q.iter_from(0);
    assert!(it.next().is_none());
    q.append(b"a").unwrap();
    assert_eq!(it.next().unwrap().unwrap().payload(), b"a");
    assert!(it.next().is_none());
    for i in 0..200 {
        q.append(&payload(i)).unwrap();
    }
    assert_eq!(it.count(), 200);
    assert_eq!(q.iter_from(150).next().unwrap().unwrap().offset(), 150);
}

#[test]
fn lent_records_match_owned_ones_across_rolls_and_mixed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    let n = 700;
    for i in 0..n {
        q.append(&payload(i)).unwrap();
    }
    assert!(segment_files(dir.path()).len() > 10, "tiny segments should roll often");
    let mut it = q.iter_from(3);
    let mut kept = Vec::new();
    for i in 3..n {
        // Alternate, in runs of uneven length, between lent and owned records.
        let (offset, bytes, ts) = if i % 7 < 4 {
            let r = it.next_ref().unwrap().unwrap();
            kept.push(r.to_record());
            (r.offset(), r.payload().to_vec(), r.timestamp_ms())
        } else {
            let r = it.next().unwrap().unwrap();
            (r.offset(), r.payload().to_vec(), r.timestamp_ms())
        };
        assert_eq!((offset, bytes), (i, payload(i)));
        assert_eq!(ts, q.read(i).unwrap().unwrap().timestamp_ms());
    }
    assert!(it.next_ref().is_none());
    q.append(b"later").unwrap();
    assert_eq!(it.next_ref().unwrap().unwrap().payload(), b"later");
    drop(it);
    q.close().unwrap();
    drop(q);
    for r in kept {
        assert_eq!(r.payload(), payload(r.offset()), "a kept record outlives iterator and queue");
    }
}

#[test]
fn an_iterator_ends_once_the_queue_is_closed_even_with_records_checked_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    for i in 0..100 {
        q.append(&payload(i)).unwrap();
    }
    let mut it = q.iter_from(0);
    for _ in 0..10 {
        it.next().unwrap().unwrap();
    }
    q.close().unwrap();
    assert!(it.next().is_none());
    assert!(it.next_ref().is_none());
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for opts in [
        Options::default().segment_bytes(100),
        Options::default().segment_bytes(1 << 40),
        Options::default().index_interval_bytes(0),
        Options::default().max_record_bytes(u32::MAX),
    ] {
        assert!(matches!(Queue::open(dir.path(), opts), Err(Error::InvalidOptions(_))));
    }
}

/// Mappings of files under `dir` that this process holds (lines of `/proc/self/maps`).
fn mappings_under(dir: &std::path::Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    maps.lines().filter(|line| line.contains(dir)).count()
}

/// A process may hold only so many mappings (`vm.max_map_count`, 65,530 by default), and
/// each mapped segment takes two. A queue of many segments keeps a bounded number of them
/// mapped, whatever was written and read since it was opened; the segments unmapped read
/// as before, and a record read before its segment was unmapped stays valid.
#[test]
fn many_segments_keep_a_bounded_number_mapped() {
    // segq keeps 512 sealed segments mapped at most, two mappings each, plus the active
    // segment's two, the spare and the segments whose seal is still running.
    const BOUND: usize = 2 * 512 + 16;
    for sync in [SyncPolicy::Never, SyncPolicy::Interval(std::time::Duration::from_millis(1))] {
        let dir = tempfile::tempdir().unwrap();
        let opts = tiny(4096).sync(sync);
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        // About 23 records a segment: some 1,200 segments, over twice the bound.
        let n = 28_000;
        let first = {
            for i in 0..n {
                q.append(&payload(i)).unwrap();
            }
            q.read(0).unwrap().unwrap()
        };
        assert!(q.stats().segments > 1_100, "{sync:?}: {} segments", q.stats().segments);
        assert!(mappings_under(dir.path()) <= BOUND, "{sync:?}: {} mappings", mappings_under(dir.path()));

        let mut it = q.iter_from(0);
        for i in 0..n {
            assert_eq!(it.next().unwrap().unwrap().payload(), payload(i), "{sync:?}: offset {i}");
        }
        assert!(it.next().is_none());
        drop(it);
        for k in 0..5_000 {
            let i = k * 7_919 % n;
            assert_eq!(q.read(i).unwrap().unwrap().payload(), payload(i), "{sync:?}: offset {i}");
        }
        assert!(mappings_under(dir.path()) <= BOUND, "{sync:?}: {} mappings", mappings_under(dir.path()));
        assert_eq!(first.payload(), payload(0), "a record outlives its segment's mapping");

        q.close().unwrap();
        drop(q);
        assert_eq!(mappings_under(dir.path()), 1, "{sync:?}: only the record's mapping is left");
        drop(first);
        assert_eq!(mappings_under(dir.path()), 0, "{sync:?}: all unmapped once the queue is gone");
        let q = Queue::open(dir.path(), opts).unwrap();
        assert_eq!(all_payloads(&q).len(), n as usize);
        assert!(mappings_under(dir.path()) <= BOUND, "{sync:?}: {} mappings", mappings_under(dir.path()));
    }
}

/// `flush` and `close` return while other threads go on appending and rolling small
/// segments. (Under `Never` a flush used to wait for the seal in progress, find that a
/// roll had started the next one meanwhile, and wait again, for as long as appends went
/// on: 76 s for a run of 2 M appends into 4 KiB segments.)
#[test]
fn flush_and_close_finish_while_appenders_roll_segments() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).sync(SyncPolicy::Never)).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if q.append(&[7; 100]).is_err() {
                        break; // closed
                    }
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let q = &q;
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let before = q.next_offset();
            let flushed = q.flush().map(|()| q.durable_offset() >= before);
            let _ = tx.send((flushed, q.close()));
        });
        // Not a timing check: a minute stands for "never".
        let result = rx.recv_timeout(Duration::from_secs(60));
        stop.store(true, Ordering::Relaxed);
        let (flushed, closed) = result.expect("flush and close returned while appends went on");
        assert!(flushed.unwrap(), "everything appended before the flush is durable");
        closed.unwrap();
    });
    let q = Queue::open(dir.path(), Options::default().segment_bytes(4096)).unwrap();
    assert!(q.recovery().clean);
}

/// An iterator at the end of the log waits in `next_timeout` for records appended by other
/// threads, across segment rolls, and sees each once, in order; `close` ends a wait of any
/// length with `None`.
#[test]
fn next_timeout_waits_for_appends_and_close_ends_the_wait() {
    use std::sync::Arc;
    use std::time::Duration;
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(Queue::open(dir.path(), tiny(4096).sync(sync)).unwrap());
        let mut tail = q.iter_from(0);
        assert!(tail.next_timeout(Duration::ZERO).is_none());
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    q.append(&payload(i)).unwrap();
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        };
        for i in 0..200 {
            // Not a timing check: a minute stands for "never" when a wake-up is lost.
            let record = tail.next_timeout(Duration::from_secs(60)).expect("appended").unwrap();
            assert_eq!((record.offset(), record.payload()), (i, payload(i).as_slice()), "{sync:?}");
        }
        writer.join().unwrap();
        assert!(q.stats().segments > 1);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || tx.send(tail.next_timeout(Duration::MAX).map(|r| r.is_ok())));
        std::thread::sleep(Duration::from_millis(20));
        q.close().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).expect("the wait ended"), None, "{sync:?}");
        waiter.join().unwrap().unwrap();
    }
}

/// Damage in the active segment stops an iterator there (where the next record starts is not
/// known); once appends give the segment an index entry past the damage, it goes on at the
/// record that entry names, and `next_timeout` waits meanwhile instead of returning at once.
/// (It returned `None` at once for ever, so a loop around `next_timeout` spun and never saw
/// another record. Until session 11 it then went on only at the next segment, after a seal,
/// skipping the records appended after the damage.)
#[test]
fn an_iterator_stopped_by_damage_in_the_active_segment_goes_on_past_it() {
    use std::os::unix::fs::FileExt;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096).sync(SyncPolicy::Never)).unwrap();
    for i in 0..5 {
        q.append(&payload(i)).unwrap();
    }
    q.flush().unwrap();
    let segment = common::active_segment(dir.path());
    let spans = common::record_spans(&std::fs::read(&segment).unwrap());
    // The high byte of the last record's length: its frame now runs past the segment.
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&[0x7f], spans[4].start as u64 + 7).unwrap();
    let mut it = q.iter_from(0);
    for o in 0..4 {
        assert_eq!(it.next().unwrap().unwrap().offset(), o);
    }
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none());
    assert!(it.next_timeout(Duration::from_millis(20)).is_none());
    // Enough records to seal the damaged segment and fill the next ones.
    let mut i = 5;
    while q.stats().segments < 3 {
        q.append(&payload(i)).unwrap();
        i += 1;
    }
    let next = it.next_timeout(Duration::from_secs(60)).expect("goes on past the damage").unwrap();
    // The first index entry after record 4 (entries every 256 bytes or more).
    let base = common::segment_base(&common::segment_files(dir.path())[1]);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[spans[4].start + 7] = 0; // as it was, to find where records start
    let damaged = spans[4].start;
    let spans = common::record_spans(&bytes);
    let entry = spans.iter().position(|s| s.start >= damaged + 256).unwrap() as u64;
    assert!(entry < base, "in the damaged segment");
    assert!(next.offset() > 4 && next.offset() <= entry, "{}", next.offset());
    assert_eq!(next.payload(), payload(next.offset()));
    let rest: Vec<u64> = it.map(|r| r.unwrap().offset()).collect();
    assert_eq!(rest, (next.offset() + 1..i).collect::<Vec<_>>());
}
