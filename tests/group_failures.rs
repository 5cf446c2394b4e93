//! A group whose files could not be written (a full disk, no descriptor left, `EIO`): what
//! its calls return, what stays durable, and how it goes on once the cause is gone.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{FILE_HEADER_LEN, JOURNAL_ENTRY_LEN, copy_tree, journal_entries, latest_snapshot_generation};
use segq::fault::{self, ENOSPC, Fault, Point};
use segq::{Error, Group, GroupOptions, Options, Queue, SyncPolicy};

const ZERO: Duration = Duration::ZERO;

fn group_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("groups").join(name)
}

fn append_n(q: &Queue, n: u64) {
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("record {i}").into_bytes()).collect();
    for chunk in payloads.chunks(5000) {
        q.append_batch(&chunk.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    }
}

/// Entries the group's journal can still take before the next change needs a snapshot.
fn journal_room(gdir: &Path) -> usize {
    let bytes = std::fs::read(gdir.join("journal")).unwrap();
    let capacity = (bytes.len() - FILE_HEADER_LEN) / JOURNAL_ENTRY_LEN;
    let generation = latest_snapshot_generation(gdir).expect("a valid snapshot");
    capacity - journal_entries(&bytes, generation)
}

/// Delivers and acks new records until the journal has room for exactly `leave` entries
/// (one record is left leased if the count is odd).
fn use_journal(g: &Group, gdir: &Path, leave: usize) {
    let room = journal_room(gdir);
    assert!(room >= leave, "room {room} < {leave}");
    let mut left = room - leave;
    while left > 0 {
        let n = (left / 2).min(500);
        if n == 0 {
            g.poll(ZERO).unwrap().expect("records left");
            left -= 1;
            continue;
        }
        let batch = g.poll_batch(n, ZERO).unwrap();
        assert_eq!(batch.len(), n, "records left");
        g.ack_batch(&batch.iter().map(|d| d.offset()).collect::<Vec<_>>()).unwrap();
        left -= 2 * n;
    }
    assert_eq!(journal_room(gdir), leave);
}

/// A snapshot write that created `state.1` and then failed leaves a name no sync made
/// durable. The group's next snapshot goes to that file: it must sync the folder too, even
/// in a later run, or a power loss after the journal restarted for it loses the name, and
/// the group no longer opens.
#[test]
fn a_snapshot_file_a_failed_write_created_gets_its_name_synced_in_a_later_run() {
    let dir = tempfile::tempdir().unwrap();
    let gdir = group_dir(dir.path(), "g");
    {
        let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
        append_n(&q, 30_000);
        let g = q.group("g").unwrap();
        assert!(!gdir.join("state.1").exists());
        use_journal(&g, &gdir, 0);
        // The disk stays full until the run ends.
        fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
        let err = g.poll(ZERO).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC), "{err}");
        assert!(gdir.join("state.1").exists(), "the failed write created state.1");
        // The group's failure is reported again; the log closes all the same.
        assert!(q.close().is_err());
        fault::clear(&gdir);
    }
    fault::audit(&gdir);
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    let g = q.group("g").unwrap();
    let d = g.poll(ZERO).unwrap().unwrap();
    g.ack(d.offset()).unwrap();
    assert_eq!(latest_snapshot_generation(&gdir), Some(1), "the journal restarted for generation 1 in state.1");
    q.close().unwrap();
    drop((g, q));
    let synced = fault::take_synced(&gdir);
    let folder_synced = synced.iter().any(|s| s.path == gdir);
    // What a power loss that lost the unsynced name of state.1 would leave.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), copy.path());
    std::fs::remove_file(group_dir(copy.path(), "g").join("state.1")).unwrap();
    let reopened = Queue::open(copy.path(), Options::default()).and_then(|q| q.group("g").map(|g| g.ack_floor()));
    assert!(
        folder_synced,
        "no sync of {} after state.1 was created by the failed write; without its name the group does not \
         open: {reopened:?}",
        gdir.display()
    );
}

fn dead(g: &Group) -> Vec<u64> {
    g.dead_letters().unwrap().iter().map(|d| d.offset()).collect()
}

fn group_opts(lease: Duration, max_attempts: u32) -> GroupOptions {
    GroupOptions::default().lease(lease).max_attempts(max_attempts)
}

/// The ack floor and dead letters a copy of `dir` opens with: what a crash of the process
/// right now keeps.
fn after_a_crash(dir: &Path, name: &str) -> (u64, Vec<u64>) {
    let copy = tempfile::tempdir().unwrap();
    copy_tree(dir, copy.path());
    let q = Queue::open(copy.path(), Options::default()).unwrap();
    let g = q.group(name).unwrap();
    (g.ack_floor(), dead(&g))
}

/// A full disk stops a group when its journal fills and its snapshot cannot be written;
/// each later call tries again, and once there is room the group goes on where it was,
/// under every sync policy. Nothing the consumers hold is taken from them: a record leased
/// before the failure is still theirs to ack (no other consumer gets it), and one at its
/// last attempt is not dead-lettered. (A failed write used to stop the group until the
/// queue was reopened.)
#[test]
fn a_group_goes_on_once_the_disk_has_room_again_and_its_consumers_keep_their_leases() {
    for sync in [SyncPolicy::Never, SyncPolicy::Interval(Duration::from_millis(5)), SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let gdir = group_dir(dir.path(), "g");
        let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
        append_n(&q, 30_000);
        let g = q.group_with("g", group_opts(Duration::from_secs(3600), 1)).unwrap();
        let held = g.poll(ZERO).unwrap().unwrap();
        assert_eq!(held.offset(), 0);
        use_journal(&g, &gdir, 0);
        let floor = g.stats().next_delivery;
        fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
        let err = g.poll(ZERO).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC), "{sync:?}: {err}");
        for _ in 0..3 {
            let Err(Error::Poisoned(why)) = g.ack(held.offset()) else { panic!("{sync:?}: not refused") };
            assert!(why.contains("No space left"), "{sync:?}: {why}");
        }
        assert_eq!(g.ack_floor(), 0, "{sync:?}");
        fault::clear(&gdir);
        // A crash now keeps every change before the failure: record 0 was at its last
        // attempt, which a crash ends.
        assert_eq!(after_a_crash(dir.path(), "g"), (floor, vec![0]), "{sync:?}");
        // The disk has room: the next call writes the state again and goes on.
        let next = g.poll(ZERO).unwrap().unwrap();
        assert_eq!((next.offset(), next.attempt()), (floor, 1), "{sync:?}: record 0 stays leased");
        assert!(g.is_current(&held).unwrap(), "{sync:?}: the lease of record 0 is its consumer's");
        assert!(dead(&g).is_empty(), "{sync:?}");
        g.ack(held.offset()).unwrap();
        g.ack(next.offset()).unwrap();
        assert_eq!(g.ack_floor(), floor + 1, "{sync:?}");
        g.flush().unwrap();
        assert_eq!(after_a_crash(dir.path(), "g"), (floor + 1, vec![]), "{sync:?}");
        // Many more changes: the journal fills again and its snapshots are written as usual.
        use_journal(&g, &gdir, 0);
        let d = g.poll(ZERO).unwrap().unwrap();
        g.ack(d.offset()).unwrap();
        let floor = g.ack_floor();
        q.close().unwrap();
        drop((g, q));
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        assert_eq!(q.group("g").unwrap().ack_floor(), floor, "{sync:?}");
    }
}

/// After the failure, the lease timers still run: a lease that runs out delivers its
/// record again (with its attempt count), and one at its last attempt is dead-lettered,
/// as without the failure.
#[test]
fn lease_timers_run_on_after_the_group_is_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let gdir = group_dir(dir.path(), "g");
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    append_n(&q, 30_000);
    let g = q.group_with("g", group_opts(Duration::from_secs(3600), 2)).unwrap();
    let a = g.poll(ZERO).unwrap().unwrap();
    g.nack(a.offset(), ZERO).unwrap();
    let a = g.poll(ZERO).unwrap().unwrap();
    let b = g.poll(ZERO).unwrap().unwrap();
    assert_eq!((a.offset(), a.attempt(), b.offset(), b.attempt()), (0, 2, 1, 1));
    use_journal(&g, &gdir, 0);
    fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
    assert!(g.poll(ZERO).is_err());
    fault::clear(&gdir);
    assert!(g.extend_lease(0, Duration::from_millis(1)).unwrap());
    assert!(g.extend_lease(1, Duration::from_millis(1)).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    let again = g.poll(ZERO).unwrap().unwrap();
    assert_eq!((again.offset(), again.attempt()), (1, 2));
    assert_eq!(dead(&g), [0], "record 0's last lease ran out");
}

/// A `poll_batch` whose journal fills part way, and whose snapshot cannot be written,
/// returns the deliveries it journaled before the failure (durable under `Always`) instead
/// of failing: dropped, they would stay leased to no consumer, and with `max_attempts(1)`
/// be dead-lettered unseen. The next call reports the failure.
#[test]
fn a_poll_batch_cut_short_by_a_failed_snapshot_returns_what_it_took() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let gdir = group_dir(dir.path(), "g");
        let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
        append_n(&q, 30_000);
        let g = q.group_with("g", group_opts(Duration::from_millis(300), 1)).unwrap();
        use_journal(&g, &gdir, 3);
        let floor = g.ack_floor();
        fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
        fault::audit(&gdir);
        let batch = g.poll_batch(10, ZERO).unwrap();
        let offsets: Vec<u64> = batch.iter().map(|d| d.offset()).collect();
        assert_eq!(offsets, [floor, floor + 1, floor + 2], "{sync:?}");
        let synced = fault::take_synced(&gdir);
        if sync == SyncPolicy::Always {
            assert!(synced.iter().any(|s| s.path.ends_with("journal")), "{sync:?}: the batch was synced: {synced:?}");
        }
        assert!(matches!(g.poll(ZERO), Err(Error::Poisoned(_))), "{sync:?}");
        fault::clear(&gdir);
        g.ack_batch(&offsets).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert!(dead(&g).is_empty(), "{sync:?}");
        assert_eq!(g.ack_floor(), floor + 3, "{sync:?}");
    }
}

/// Under `Never` a snapshot's sync runs on a thread of its own. When it fails, the group
/// writes its state again without going over the older snapshot, the only durable one,
/// and without replaying the entries written since on top of a state that holds them: a
/// crash at any point after keeps one consistent state.
#[test]
fn a_failed_background_snapshot_sync_is_repaired_in_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let gdir = group_dir(dir.path(), "g");
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    append_n(&q, 40_000);
    let g = q.group_with("g", group_opts(Duration::from_secs(3600), 5)).unwrap();
    let held = g.poll(ZERO).unwrap().unwrap();
    use_journal(&g, &gdir, 0);
    let generation = latest_snapshot_generation(&gdir).unwrap();
    // The next change writes a snapshot and syncs it on a thread: that sync fails.
    fault::inject(Fault::new(&gdir, Point::Sync).times(u64::MAX));
    let d = g.poll(ZERO).unwrap().unwrap();
    assert_eq!(latest_snapshot_generation(&gdir), Some(generation + 1));
    // Entries after the snapshot: a nack (due again at once) and an ack.
    let mut refused = 0;
    let mut changes = 0;
    for _ in 0..50 {
        let result = g.nack(d.offset(), ZERO).and_then(|()| g.poll(ZERO)).and_then(|d| {
            let d = d.expect("due again");
            g.ack(d.offset())
        });
        match result {
            Ok(()) => changes += 1,
            Err(Error::Poisoned(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        if refused > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(refused, 1, "the failed sync was noticed ({changes} changes before)");
    fault::clear(&gdir);
    fault::audit(&gdir);
    let after = g.poll(ZERO).unwrap().unwrap();
    let synced = fault::take_synced(&gdir);
    let snapshot = gdir.join(common::snapshot_file(generation + 1));
    assert!(synced.iter().any(|s| s.path == snapshot), "rewritten in its own file: {synced:?}");
    assert!(!synced.iter().any(|s| s.path == gdir.join(common::snapshot_file(generation))), "{synced:?}");
    assert!(synced.iter().any(|s| s.path == gdir), "{synced:?}");
    g.flush().unwrap();
    let floor = g.ack_floor();
    let stats = g.stats();
    // A crash now: the state is the one in memory, with record 0 and the last delivery
    // open, each counted once.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), copy.path());
    let q2 = Queue::open(copy.path(), Options::default()).unwrap();
    let g2 = q2.group("g").unwrap();
    assert_eq!(g2.ack_floor(), floor);
    let copy_stats = g2.stats();
    assert_eq!((copy_stats.waiting, copy_stats.dead), (stats.leased + stats.waiting, stats.dead));
    let first = g2.poll(ZERO).unwrap().unwrap();
    assert_eq!((first.offset(), first.attempt()), (held.offset(), 2));
    drop((g2, q2));
    g.ack(held.offset()).unwrap();
    g.ack(after.offset()).unwrap();
}

/// `group_with` whose snapshot cannot be written changes nothing: the old settings stay,
/// in memory and on disk, also once the group is written again.
#[test]
fn settings_whose_snapshot_cannot_be_written_are_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let gdir = group_dir(dir.path(), "g");
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    append_n(&q, 100);
    let g = q.group_with("g", group_opts(Duration::from_secs(3600), 3)).unwrap();
    let d = g.poll(ZERO).unwrap().unwrap();
    g.nack(d.offset(), ZERO).unwrap();
    let d = g.poll(ZERO).unwrap().unwrap();
    assert_eq!(d.attempt(), 2);
    fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
    assert!(q.group_with("g", group_opts(Duration::from_secs(3600), 2)).is_err());
    fault::clear(&gdir);
    assert_eq!(g.options().get_max_attempts(), 3);
    // Its lease runs out: under the old limit (3) it is due again, not dead.
    assert!(g.extend_lease(0, ZERO).unwrap());
    std::thread::sleep(Duration::from_millis(5));
    assert!(dead(&g).is_empty());
    assert_eq!(g.stats().max_attempts, 3);
    let again = g.poll(ZERO).unwrap().unwrap();
    assert_eq!((again.offset(), again.attempt()), (0, 3));
    q.close().unwrap();
    drop((g, q));
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(q.group("g").unwrap().options().get_max_attempts(), 3);
}

/// A record at its last attempt whose lease ran out is dead for every view once the group
/// can write again, also when the dead-lettering was what needed the failed snapshot.
#[test]
fn a_last_lease_that_ran_out_during_the_failure_is_dead_after_it() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let gdir = group_dir(dir.path(), "g");
        let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
        append_n(&q, 30_000);
        let g = q.group_with("g", group_opts(Duration::from_secs(3600), 1)).unwrap();
        g.poll(ZERO).unwrap().unwrap();
        use_journal(&g, &gdir, 0);
        assert!(g.extend_lease(0, ZERO).unwrap());
        std::thread::sleep(Duration::from_millis(5));
        fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
        assert!(g.dead_letters().is_err(), "{sync:?}");
        let floor_during = g.ack_floor();
        fault::clear(&gdir);
        assert_eq!(dead(&g), [0], "{sync:?} (ack floor during the failure: {floor_during})");
        let next = q.next_offset();
        g.seek(next).unwrap();
        assert_eq!(dead(&g), [0], "{sync:?}: a seek keeps dead letters");
    }
}
