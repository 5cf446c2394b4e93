//! A queue with more consumer groups than it keeps open: the groups no handle holds are
//! closed past a bound, least recently used first, after a flush, unless a consumer holds
//! a lease; the next `Queue::group` opens them again from their files, as they were.

mod common;

use std::path::Path;
use std::time::Duration;

use segq::fault::{self, Fault, Point};
use segq::{GroupOptions, Options, Queue, SyncPolicy};

const ZERO: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);

/// Journals of groups under `dir` that this process has open.
fn open_journals(dir: &Path) -> usize {
    let groups = dir.join("groups");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&groups) && target.ends_with("journal"))
        .count()
}

fn name(i: usize) -> String {
    format!("tenant-{i:04}")
}

/// Opens groups `range` one at a time, each taking and acking its first `acks` records,
/// and drops every handle.
fn use_groups(q: &Queue, range: std::ops::Range<usize>, acks: u64) {
    for i in range {
        let g = q.group(&name(i)).unwrap();
        for _ in 0..acks {
            let d = g.poll(ZERO).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
    }
}

#[test]
fn groups_no_handle_holds_are_closed_past_a_bound_and_reopen_as_they_were() {
    // (Under `Always` every change is durable when made: nothing differs.)
    for sync in [SyncPolicy::Never, SyncPolicy::Interval(Duration::from_millis(50))] {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), Options::default().sync(sync).idle_groups_kept_open(16)).unwrap();
        for i in 0..10u8 {
            q.append(&[i]).unwrap();
        }
        use_groups(&q, 0..100, 2);
        let open = open_journals(dir.path());
        assert!((8..=17).contains(&open), "{sync:?}: {open} journals open");
        // Each is where it was, whether it stayed open or not; using them all again works.
        for i in 0..100 {
            let g = q.group(&name(i)).unwrap();
            assert_eq!(g.ack_floor(), 2, "{sync:?}: {}", name(i));
            let d = g.poll(ZERO).unwrap().unwrap();
            assert_eq!((d.offset(), d.attempt()), (2, 1), "{sync:?}");
            g.ack(2).unwrap();
        }
        assert!(open_journals(dir.path()) <= 17, "{sync:?}");
        // Closed, they were flushed: a power loss right after the close keeps the acks of
        // the groups it no longer had open as of the others.
        q.close().unwrap();
        drop(q);
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        for i in (0..100).step_by(7) {
            assert_eq!(q.group(&name(i)).unwrap().ack_floor(), 3, "{sync:?}");
        }
    }
}

/// A group is closed only if the reopen would change nothing a consumer relies on: not
/// while a handle holds it, and not while one of its records is leased (a reopen ends
/// every lease). Records waiting for a retry keep their due time.
#[test]
fn groups_held_or_with_leased_records_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never).idle_groups_kept_open(16)).unwrap();
    for i in 0..10u8 {
        q.append(&[i]).unwrap();
    }
    let held = q.group("held").unwrap();
    let d = held.poll(ZERO).unwrap().unwrap();
    held.ack(d.offset()).unwrap();
    let leased = q.group_with("leased", GroupOptions::default().lease(HOUR)).unwrap().poll(ZERO).unwrap().unwrap();
    let retried = q.group("retried").unwrap();
    let r = retried.poll(ZERO).unwrap().unwrap();
    retried.nack(r.offset(), HOUR).unwrap();
    drop(retried);
    use_groups(&q, 0..100, 1);
    assert!(open_journals(dir.path()) <= 20);
    // The handle still works.
    assert_eq!(held.poll(ZERO).unwrap().unwrap().offset(), 1);
    // The lease is still its consumer's.
    let g = q.group("leased").unwrap();
    assert!(g.is_current(&leased).unwrap());
    assert_eq!(g.poll(ZERO).unwrap().unwrap().offset(), 1, "record 0 stays leased");
    // The retry is still an hour away, whether or not the group was closed.
    let g = q.group("retried").unwrap();
    assert_eq!(g.poll(ZERO).unwrap().unwrap().offset(), 1);
    assert_eq!(g.stats().waiting, 1);
    q.close().unwrap();
}

/// Retention under `retain_until_consumed` counts the groups that were closed, by the
/// oldest offset each still needed when it was closed.
#[test]
fn retention_counts_the_groups_that_were_closed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .segment_bytes(4096)
        .sync(SyncPolicy::Never)
        .retain_until_consumed(true)
        .idle_groups_kept_open(16);
    let q = Queue::open(dir.path(), opts).unwrap();
    for i in 0..6u8 {
        q.append(&[i; 3000]).unwrap();
    }
    // The first group needs offset 1 on; the others consumed everything.
    let g = q.group(&name(0)).unwrap();
    let d = g.poll(ZERO).unwrap().unwrap();
    g.ack(d.offset()).unwrap();
    drop(g);
    use_groups(&q, 1..100, 6);
    q.enforce_retention().unwrap();
    assert_eq!(q.first_offset(), 1);
    let g = q.group(&name(0)).unwrap();
    while let Some(d) = g.poll(ZERO).unwrap() {
        g.ack(d.offset()).unwrap();
    }
    q.enforce_retention().unwrap();
    assert_eq!(q.first_offset(), 5, "only the newest segment is left");
    q.close().unwrap();
}

/// The flushes of the groups being closed, an fsync each, run outside the open groups'
/// lock and the retention lock: while they last, other threads get their groups, append
/// past a segment's end and run retention. (They waited for every flush before.)
#[test]
fn other_threads_do_not_wait_for_the_flushes_of_idle_closes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().sync(SyncPolicy::Never).segment_bytes(4096).idle_groups_kept_open(2);
    let q = Queue::open(dir.path(), opts).unwrap();
    for i in 0..3u8 {
        q.append(&[i]).unwrap();
    }
    let hot = q.group("hot").unwrap();
    // Opening the fourth closes the first two; the other three get an unsynced ack.
    use_groups(&q, 0..5, 1);
    assert!(!common::group_is_open(dir.path(), &name(0)));
    use_groups(&q, 2..5, 1);
    // Reopening the first (which writes nothing) takes the count past 2 again: the two
    // least recently used are closed, and the flush of the first of them is held.
    fault::inject(Fault::new(&dir.path().join("groups"), Point::Sync).stall().times(u64::MAX));
    let q = &q;
    std::thread::scope(|s| {
        let closer = s.spawn(move || drop(q.group(&name(0)).unwrap()));
        common::wait_for("a flush held", || fault::held(dir.path()) > 0);
        let (done, finished) = std::sync::mpsc::channel();
        s.spawn(move || {
            assert_eq!(q.group(&name(4)).unwrap().ack_floor(), 2);
            drop(q.group("hot").unwrap());
            q.append(&[7; 3000]).unwrap();
            q.append(&[8; 3000]).unwrap();
            q.enforce_retention().unwrap();
            done.send(()).unwrap();
        });
        let waited = finished.recv_timeout(Duration::from_secs(60));
        fault::clear(dir.path());
        assert!(waited.is_ok(), "the other calls waited for the held flush");
        closer.join().unwrap();
    });
    assert!(!common::group_is_open(dir.path(), &name(2)), "the least recently used was closed");
    drop(hot);
    q.close().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    for (i, floor) in [1, 1, 2, 2, 2].into_iter().enumerate() {
        assert_eq!(q.group(&name(i)).unwrap().ack_floor(), floor, "{}", name(i));
    }
}

/// With a limit of 400 descriptors and the default bound (256), a process uses 600 groups
/// one after another. (Every group stayed open: about the 390th failed with "Too many open
/// files".)
#[test]
fn a_process_with_few_descriptors_uses_many_groups() {
    let _lock = common::process_lock();
    let dir = tempfile::tempdir().unwrap();
    common::run_child_test(
        "child_uses_many_groups_with_few_descriptors",
        &[("SEGQ_MANY_GROUPS_DIR", dir.path().display().to_string())],
    );
}

#[test]
#[ignore = "run by a_process_with_few_descriptors_uses_many_groups"]
fn child_uses_many_groups_with_few_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Ok(dir) = std::env::var("SEGQ_MANY_GROUPS_DIR") else { return };
    println!("CHILD RAN");
    let old = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(400), maximum: old.maximum }).unwrap();
    let q = Queue::open(Path::new(&dir), Options::default().sync(SyncPolicy::Never)).unwrap();
    q.append(b"job").unwrap();
    use_groups(&q, 0..600, 1);
    q.close().unwrap();
}
