//! The storage core at its edges: FIFOs in place of queue files, reads and iterators at
//! the ends of a retained log, records at a segment's size limit, followers across rolls
//! and retention, records held while retention deletes, `close` racing appenders, sparse
//! and oversized segment files.
mod common;
use common::*;
use segq::{Error, Options, Queue, SyncPolicy};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs `f` on a thread and waits up to `secs` for it: `None` if it did not finish (it is
/// left blocked; the test process ends it).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let ok = std::process::Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(ok.success());
}

/// A closed queue of three segments (two sealed), with `n` records.
fn three_segments() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    while segment_files(dir.path()).len() < 3 {
        q.append(&[7u8; 1000]).unwrap();
    }
    q.close().unwrap();
    let segs = segment_files(dir.path());
    (dir, segs)
}

fn index_of(seg: &Path) -> PathBuf {
    seg.with_extension("index")
}

/// A FIFO where the newest segment's index should be: `Queue::open` must fail or open,
/// not wait for ever for a writer (the library opens it with a blocking `File::open`,
/// `src/segment/index.rs` `OldIndex::open`).
#[test]
fn a_fifo_in_place_of_the_newest_index_does_not_hang_open() {
    let (dir, segs) = three_segments();
    mkfifo(&index_of(segs.last().unwrap()));
    let path = dir.path().to_path_buf();
    let opened = within(60, move || Queue::open(&path, tiny(4096)).map(|q| q.next_offset()));
    assert!(opened.is_some(), "Queue::open hangs on a FIFO named like the newest segment's index");
}

/// The same for a sealed segment's index: the first read of the segment must not hang
/// (`index::open_sealed` opens it with `File::open`).
#[test]
fn a_fifo_in_place_of_a_sealed_index_does_not_hang_a_read() {
    let (dir, segs) = three_segments();
    mkfifo(&index_of(&segs[0]));
    let q = std::sync::Arc::new(Queue::open(dir.path(), tiny(4096)).unwrap());
    let reader = q.clone();
    let read = within(60, move || reader.read(0).map(|r| r.map(|r| r.payload().len())));
    assert!(read.is_some(), "read of a sealed segment hangs on a FIFO named like its index");
}

/// A FIFO in place of a sealed segment file: a read of its records must be an error, not
/// a hang (`Segment::data` opens it with `File::open`).
#[test]
fn a_fifo_in_place_of_a_sealed_segment_does_not_hang_a_read() {
    let (dir, segs) = three_segments();
    mkfifo(&segs[0]);
    let path = dir.path().to_path_buf();
    let read = within(60, move || {
        let q = Queue::open(&path, tiny(4096))?;
        q.read(0).map(|r| r.is_some())
    });
    assert!(read.is_some(), "read of a sealed segment that is a FIFO hangs");
    assert!(read.unwrap().is_err());
}

/// A FIFO in place of the checkpoint: open must fail with an error, not hang.
#[test]
fn a_fifo_in_place_of_the_checkpoint_does_not_hang_open() {
    let (dir, _) = three_segments();
    mkfifo(&dir.path().join("checkpoint"));
    let path = dir.path().to_path_buf();
    let opened = within(60, move || Queue::open(&path, tiny(4096)).map(|q| q.next_offset()));
    assert!(opened.is_some(), "Queue::open hangs on a FIFO named checkpoint");
}

#[test]
fn api_edges() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096)).unwrap();
    assert!(q.read(u64::MAX).unwrap().is_none());
    assert!(q.iter_from(u64::MAX).next().is_none());
    assert_eq!(q.offset_at_time(0).unwrap(), 0);
    assert_eq!(q.offset_at_time(u64::MAX).unwrap(), 0);
    assert_eq!(q.append_batch(&[]).unwrap(), 0..0);
    assert_eq!(q.append_batch(&[b"".as_slice(), b""]).unwrap(), 0..2);
    assert_eq!(q.read(1).unwrap().unwrap().payload(), b"");
    assert!(q.read(2).unwrap().is_none());
    assert_eq!(q.offset_at_time(u64::MAX).unwrap(), 2);
    let _ = (Error::Closed, Options::default(), SyncPolicy::Never);
}

/// `read`/`iter_from` at first_offset - 1, next_offset and u64::MAX after retention.
#[test]
fn reads_and_iterators_at_the_edges_of_a_retained_log() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096).retain_bytes(8192)).unwrap();
    for i in 0..40u64 {
        q.append(&payload(i).repeat(4)).unwrap();
    }
    q.enforce_retention().unwrap();
    let (first, next) = (q.first_offset(), q.next_offset());
    assert!(first > 0);
    assert!(q.read(first - 1).unwrap().is_none());
    assert_eq!(q.read(first).unwrap().unwrap().payload(), payload(first).repeat(4));
    assert!(q.read(next).unwrap().is_none());
    assert!(q.read(u64::MAX).unwrap().is_none());
    let mut it = q.iter_from(first - 1);
    assert_eq!(it.next().unwrap().unwrap().offset(), first);
    let mut tail = q.iter_from(next);
    assert!(tail.next().is_none());
    let mut far = q.iter_from(u64::MAX);
    assert!(far.next().is_none());
    q.append(b"new").unwrap();
    assert_eq!(tail.next().unwrap().unwrap().payload(), b"new");
    assert!(far.next().is_none());
    assert_eq!(far.next_offset(), u64::MAX);
    // Timestamps before the first and after the last record.
    assert_eq!(q.offset_at_time(0).unwrap(), first);
    assert_eq!(q.offset_at_time(u64::MAX).unwrap(), q.next_offset());
}

/// A record exactly as large as the smallest segment allows fills it; one byte more gets a
/// bigger segment; both survive a crash and a clean reopen.
#[test]
fn records_at_the_size_limit_of_the_smallest_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().segment_bytes(4096).sync(SyncPolicy::Never);
    let q = Queue::open(dir.path(), opts()).unwrap();
    let exact = vec![0xabu8; 4096 - 32 - 24];
    let over = vec![0xcdu8; 4096 - 32 - 24 + 1];
    let mut expected = Vec::new();
    for p in [&exact, &exact, &over, &b"x".to_vec(), &exact, &over, &over] {
        q.append(p).unwrap();
        expected.push(p.clone());
    }
    let batch: Vec<&[u8]> = vec![&[][..]; 100];
    q.append_batch(&batch).unwrap();
    expected.extend(std::iter::repeat_n(Vec::new(), 100));
    q.simulate_crash();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_holds(&q, &expected);
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_holds(&q, &expected);
    assert_eq!(all_payloads(&q), expected);
}

/// A follower on `next_timeout` sees every record, in order, across many rolls, while the
/// appender rolls tiny segments and retention runs (but those retention deleted before it
/// got there, on a slow machine).
#[test]
fn next_timeout_follows_across_rolls_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let q = std::sync::Arc::new(Queue::open(dir.path(), tiny(4096).retain_bytes(64 << 10)).unwrap());
    let n = 3000u64;
    let follower = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut it = q.iter_from(0);
            let mut seen = 0u64;
            while seen < n {
                match it.next_timeout(Duration::from_secs(10)) {
                    Some(Ok(r)) => {
                        // A follower slower than retention skips what it deleted, no more.
                        let skipped = r.offset() > seen;
                        assert!(!skipped || r.offset() <= q.first_offset(), "{seen} skipped to {}", r.offset());
                        assert!(r.offset() >= seen, "offsets in order");
                        assert_eq!(r.payload(), payload(r.offset()).as_slice());
                        seen = r.offset() + 1;
                    }
                    Some(Err(e)) => panic!("error at {seen}: {e}"),
                    None => panic!("next_timeout gave up at {seen}"),
                }
            }
        })
    };
    for i in 0..n {
        q.append(&payload(i)).unwrap();
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    follower.join().unwrap();
}

/// Records kept by a reader stay intact while retention deletes their segments and new
/// appends reuse the disk.
#[test]
fn records_held_across_retention_and_close_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(4096).retain_bytes(4096)).unwrap();
    let mut held = Vec::new();
    for i in 0..200u64 {
        q.append(&payload(i)).unwrap();
        held.push(q.read(i).unwrap().unwrap());
    }
    q.close().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), tiny(4096).retain_bytes(4096)).unwrap();
    for i in 200..400u64 {
        q.append(&payload(i)).unwrap();
    }
    for (i, r) in held.iter().enumerate() {
        assert_eq!(r.offset(), i as u64);
        assert_eq!(r.payload(), payload(i as u64).as_slice());
    }
}

/// `close` racing appenders under `Always`: every append that returned `Ok` is there,
/// byte for byte, after a reopen.
#[test]
fn close_racing_always_appenders_keeps_every_acknowledged_record() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options::default().segment_bytes(4096).sync(SyncPolicy::Always);
        let q = std::sync::Arc::new(Queue::open(dir.path(), opts()).unwrap());
        let mut threads = Vec::new();
        for t in 0..3u64 {
            let q = q.clone();
            threads.push(std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..10_000u64 {
                    let p = tagged(t * 1_000_000 + i, 0, 1);
                    match q.append(&p) {
                        Ok(off) => acked.push((off, p)),
                        Err(Error::Closed) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                acked
            }));
        }
        std::thread::sleep(Duration::from_millis(20 + round * 7));
        q.close().unwrap();
        let acked: Vec<(u64, Vec<u8>)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        drop(q);
        let q = Queue::open(dir.path(), opts()).unwrap();
        for (off, p) in &acked {
            let r = q.read(*off).unwrap().unwrap_or_else(|| panic!("acked record {off} lost"));
            assert_eq!(r.payload(), p.as_slice());
        }
        assert_eq!(q.next_offset(), acked.len() as u64);
    }
}

/// A segment or index file header for `base`.
fn file_header(magic: &[u8; 8], base: u64) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&base.to_le_bytes());
    let crc = crc32(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// A sealed segment, sparse: one record, then zeros, its records missing up to the next
/// segment. The first read of it rebuilds the index, looking for records after the zeros
/// (`scan::resync`, which now passes over zeros a word at a time: at 4 GiB it took 35 s,
/// 11 s of them stepping byte by byte, the rest the kernel filling the page cache with
/// zeros). The record reads back and the missing ones are an error.
#[test]
fn a_sparse_sealed_segment_at_the_size_limit_is_read_without_a_long_stall() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = file_header(b"SEGQLOG\0", 0);
    bytes.extend(frame(0, b"a"));
    std::fs::write(&sealed, &bytes).unwrap();
    std::fs::OpenOptions::new().write(true).open(&sealed).unwrap().set_len(256 << 20).unwrap();
    let newest = dir.path().join(format!("{:020}.log", 1000));
    std::fs::write(&newest, file_header(b"SEGQLOG\0", 1000)).unwrap();
    let path = dir.path().to_path_buf();
    let result = within(120, move || {
        let q = Queue::open(&path, tiny(4096))?;
        let first = q.read(0).map(|r| r.map(|r| r.payload().to_vec()));
        let second = q.read(1).map(|r| r.is_some());
        Ok::<_, Error>((first, second.is_err()))
    });
    let (first, gap) = result.expect("a read hangs").unwrap();
    assert_eq!(first.unwrap().unwrap(), b"a");
    assert!(gap, "the missing record is an error");
}

/// A newest segment found at open larger than the format allows (`segment_bytes` is at most
/// 4 GiB - 1, FORMAT.md "Sizes"), sparse: its capacity is capped at the limit, so no
/// position past `u32::MAX` becomes writable (index entries hold `u32` positions). (Open
/// took the file's length as the capacity and reserved every block of it.)
#[test]
fn an_oversized_sparse_newest_segment_is_not_reserved_and_written_past_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let newest = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = file_header(b"SEGQLOG\0", 0);
    bytes.extend(frame(0, b"a"));
    std::fs::write(&newest, &bytes).unwrap();
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len((1u64 << 32) + 4096).unwrap();
    let opened = Queue::open(dir.path(), tiny(4096));
    if let Ok(q) = opened {
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&newest).unwrap().blocks() * 512;
        let capacity = q.stats().bytes_on_disk;
        drop(q);
        assert!(
            capacity <= u32::MAX as u64,
            "the active segment has a capacity of {capacity} bytes ({allocated} allocated on disk)"
        );
    }
}
