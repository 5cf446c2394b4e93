//! What a closed queue still holds while handles to it live on. Alone in its test binary:
//! it counts the process's threads, open files and mappings, which other tests running at
//! the same time would change.

use std::time::Duration;

use segq::{Options, Queue, SyncPolicy};

/// (open files, mappings, threads) of this process.
fn held() -> (usize, usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).unwrap().count();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap().lines().count();
    (count("/proc/self/fd"), maps, count("/proc/self/task"))
}

/// Iterators and consumer groups kept after `close`, as a consumer that outlives its queue
/// keeps them, hold no thread, file or mapping of the closed queue beyond their own: a
/// program that reopens a queue many times does not grow. (Each closed queue kept its
/// sealer and prefault threads, three files and the active segment's mappings for as long
/// as one handle lived: after 30 cycles, 63 threads and 96 files instead of 3 and 6.)
#[test]
fn handles_kept_after_close_hold_no_thread_file_or_mapping_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().segment_bytes(1 << 20).sync(SyncPolicy::Never);
    let cycle = |kept: &mut Vec<(segq::Iter, segq::Group)>| {
        let q = Queue::open(dir.path(), opts.clone()).unwrap();
        q.append(b"kept").unwrap();
        let g = q.group("workers").unwrap();
        if let Some(d) = g.poll(Duration::ZERO).unwrap() {
            g.ack(d.offset()).unwrap();
        }
        kept.push((q.iter_from(0), g));
        q.close().unwrap();
    };
    let mut kept = Vec::new();
    // The first cycles create the files and settle what the process keeps anyway.
    for _ in 0..3 {
        cycle(&mut kept);
    }
    let before = held();
    for _ in 0..30 {
        cycle(&mut kept);
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = held();
    for (it, g) in &mut kept {
        assert!(it.next().is_none(), "an iterator of a closed queue yields nothing");
        assert!(matches!(g.poll(Duration::ZERO), Err(segq::Error::Closed)));
    }
    assert!(
        after.0 <= before.0 + 2 && after.1 <= before.1 + 8 && after.2 <= before.2 + 1,
        "30 closed queues with an iterator and a group each kept: (files, mappings, threads) {before:?} -> {after:?}"
    );
}
