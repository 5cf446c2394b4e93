//! A group whose files could not be written (a full disk, no descriptor left, `EIO`): what
//! its calls return, what stays durable, and how it goes on once the cause is gone.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FILE_HEADER_LEN, JOURNAL_ENTRY_LEN, copy_tree, journal_entries, latest_snapshot_generation};
use segq::fault::{self, ENOSPC, Fault, Point};
use segq::{Error, Group, GroupOptions, Options, Queue, SyncPolicy};
use tempfile::TempDir;

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

/// A queue of `records` records under `sync`, and its group "g" with these settings; also
/// the group's folder.
fn setup(sync: SyncPolicy, records: u64, lease: Duration, max_attempts: u32) -> (TempDir, PathBuf, Queue, Group) {
    let dir = tempfile::tempdir().unwrap();
    let gdir = group_dir(dir.path(), "g");
    let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
    append_n(&q, records);
    let g = q.group_with("g", group_opts(lease, max_attempts)).unwrap();
    (dir, gdir, q, g)
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
        let (dir, gdir, q, g) = setup(sync, 30_000, Duration::from_secs(3600), 1);
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
    let (_dir, gdir, _q, g) = setup(SyncPolicy::Always, 30_000, Duration::from_secs(3600), 2);
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
        let (_dir, gdir, _q, g) = setup(sync, 30_000, Duration::from_millis(300), 1);
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
    let (dir, gdir, _q, g) = setup(SyncPolicy::Never, 40_000, Duration::from_secs(3600), 5);
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
    let older = std::fs::read(gdir.join(common::snapshot_file(generation))).unwrap();
    let after = g.poll(ZERO).unwrap().unwrap();
    // Generation + 3 replaced generation + 1 in its file, written whole under another
    // name and renamed; the older snapshot, the only durable one until then, is untouched.
    let synced = fault::take_synced(&gdir);
    let file = common::snapshot_file(generation + 1);
    let temporary = gdir.join(format!("{file}.tmp"));
    assert_eq!(latest_snapshot_generation(&gdir), Some(generation + 3));
    assert_eq!(common::snapshot_file(generation + 3), file);
    let synced_at = |path: &Path| synced.iter().position(|s| s.path == path);
    let (written, folder) = (synced_at(&temporary), synced_at(&gdir));
    assert!(written.is_some() && folder > written, "synced, then renamed durably: {synced:?}");
    assert_eq!(std::fs::read(gdir.join(common::snapshot_file(generation))).unwrap(), older);
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

/// `group_with` whose snapshot cannot be written changes nothing: the old settings stay in
/// memory and are the ones stored once the group is written again. (A crash before that
/// may find the new ones: a snapshot written whole whose sync failed is still valid.)
#[test]
fn settings_whose_snapshot_cannot_be_written_are_not_taken() {
    let (dir, gdir, q, g) = setup(SyncPolicy::Never, 100, Duration::from_secs(3600), 3);
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
        let (_dir, gdir, q, g) = setup(sync, 30_000, Duration::from_secs(3600), 1);
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

/// Offsets the group hands out next (up to `n`), as a fresh consumer sees them.
fn next_offsets(g: &Group, n: usize) -> Vec<u64> {
    g.poll_batch(n, ZERO).unwrap().iter().map(|d| d.offset()).collect()
}

// ---------------------------------------------------------------------------------------
// From a review of the first version (a0ed775). Finding 1: the repair of a failed
// background snapshot sync zeroed the journal first; when the rewrite of the snapshot then
// failed, the acks journaled since the snapshot were gone from the page cache too, so a
// close (or a crash of the process, no power loss) and a reopen brought acked records back.
// ---------------------------------------------------------------------------------------

/// Under `Never`, acks that returned `Ok` survive a crash of the process (they are in the
/// page cache), and so they do when the group is merely stopped by a failure: before this
/// change, close + reopen kept them. Here the background sync of a snapshot fails, acks go
/// on, then every heal fails (the disk still fails syncs, or is full): the heal's
/// `Journal::erase` has already zeroed the journal when the snapshot write fails.
#[test]
fn never_acks_survive_close_and_reopen_when_the_repair_of_a_failed_background_sync_fails() {
    for second in [Point::Write, Point::Sync] {
        let (dir, gdir, q, g) = setup(SyncPolicy::Never, 30_000, Duration::from_secs(3600), 5);
        use_journal(&g, &gdir, 0);
        // The next change writes a snapshot whose sync (on its thread) fails.
        fault::inject(Fault::new(&gdir, Point::Sync).times(u64::MAX));
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            assert!(Instant::now() < deadline, "the failed sync was never noticed");
            match g.poll(ZERO) {
                Ok(Some(d)) => match g.ack(d.offset()) {
                    Ok(()) => acked.push(d.offset()),
                    Err(Error::Poisoned(_)) => break,
                    Err(e) => panic!("{e}"),
                },
                Err(Error::Poisoned(_)) => break,
                other => panic!("{other:?}"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!acked.is_empty());
        if second == Point::Write {
            // Syncs work again, but the disk is full: the erase succeeds, the write fails.
            fault::clear(&gdir);
            fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
            assert!(matches!(g.poll(ZERO), Err(Error::Poisoned(_))));
        }
        // What a crash of the process now would leave (the page cache).
        let crash = tempfile::tempdir().unwrap();
        copy_tree(dir.path(), crash.path());
        assert!(q.close().is_err());
        drop((g, q));
        fault::clear(&gdir);
        for (what, d) in [("close and reopen", dir.path()), ("a crash", crash.path())] {
            let q = Queue::open(d, Options::default().sync(SyncPolicy::Never)).unwrap();
            let g = q.group("g").unwrap();
            let again: Vec<u64> = next_offsets(&g, 20).into_iter().filter(|o| acked.contains(o)).collect();
            assert!(
                again.is_empty(),
                "{second:?}, after {what}: acked records {again:?} are delivered again (acked: {acked:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Finding 2: a lease lives only in memory, yet it could not be extended while the group
// failed.
// ---------------------------------------------------------------------------------------

/// A worker on a long job extends its lease while the group's disk is full. Extending costs
/// no I/O (leases are never written), but `extend_lease` first tries to heal and is refused
/// for as long as the disk stays full: the lease runs out, and once the disk has room the
/// record (at its last attempt) is dead-lettered from under the live worker (with more
/// attempts left it would go to a second worker).
#[test]
fn a_worker_keeps_its_lease_by_extending_it_while_the_group_cannot_write() {
    let (_dir, gdir, _q, g) = setup(SyncPolicy::Always, 30_000, Duration::from_secs(3600), 1);
    use_journal(&g, &gdir, 1);
    let held = g.poll(ZERO).unwrap().unwrap();
    assert_eq!(journal_room(&gdir), 0);
    assert!(g.extend_delivery(&held, Duration::from_millis(300)).unwrap());
    fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
    assert!(g.poll(ZERO).is_err(), "the full journal's snapshot cannot be written");
    let mut refused = Vec::new();
    for _ in 0..6 {
        if let Err(e) = g.extend_delivery(&held, Duration::from_millis(300)) {
            refused.push(e.to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fault::clear(&gdir);
    let dead: Vec<u64> = g.dead_letters().unwrap().iter().map(|d| d.offset()).collect();
    assert!(
        refused.is_empty() && dead.is_empty() && g.is_current(&held).unwrap(),
        "the live worker lost record {}: {} extensions refused ({:?}), dead letters {dead:?}",
        held.offset(),
        refused.len(),
        refused.first()
    );
}

// ---------------------------------------------------------------------------------------
// The review's other checks.
// ---------------------------------------------------------------------------------------

/// Threads poll and ack under `Always` while the group's disk fails writes and syncs now
/// and then: every ack that returned `Ok` stays acked, in a copy taken as a crash of the
/// process while the group is failed, and after close and reopen; no record is delivered
/// twice to live consumers while its lease (1 h) holds.
#[test]
fn concurrent_consumers_keep_every_acknowledged_ack_through_failures_and_heals() {
    let (dir, gdir, q, g) = setup(SyncPolicy::Always, 60_000, Duration::from_secs(3600), 3);
    use_journal(&g, &gdir, 200);
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (g, acked, delivered, stop, failures) =
                (g.clone(), acked.clone(), delivered.clone(), stop.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let batch = match g.poll_batch(40, ZERO) {
                        Ok(b) => b,
                        Err(Error::Poisoned(_) | Error::Io(_)) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    };
                    let offsets: Vec<u64> = batch.iter().map(|d| d.offset()).collect();
                    {
                        let mut seen = delivered.lock().unwrap();
                        for &o in &offsets {
                            assert!(seen.insert(o), "offset {o} delivered twice while leased");
                        }
                    }
                    // Ack until it works (an error leaves it open; keep trying).
                    loop {
                        match g.ack_batch(&offsets) {
                            Ok(()) => {
                                acked.lock().unwrap().extend(offsets.iter().copied());
                                break;
                            }
                            Err(Error::Poisoned(_) | Error::Io(_)) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut round = 0u64;
    while start.elapsed() < Duration::from_millis(2500) {
        round += 1;
        let point = if round.is_multiple_of(2) { Point::Sync } else { Point::Write };
        fault::inject(Fault::new(&gdir, point).after(round % 3).times(1 + round % 4).errno(if point == Point::Write {
            ENOSPC
        } else {
            fault::EIO
        }));
        std::thread::sleep(Duration::from_millis(15));
        fault::clear(&gdir);
        std::thread::sleep(Duration::from_millis(15));
    }
    // Stop in a failed state, then look at what a crash would keep.
    fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
    fault::inject(Fault::new(&gdir, Point::Sync).times(u64::MAX));
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let crash = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crash.path());
    fault::clear(&gdir);
    let acked: HashSet<u64> = acked.lock().unwrap().clone();
    assert!(failures.load(Ordering::Relaxed) > 0, "no failure was met");
    g.flush().unwrap();
    let floor = g.ack_floor();
    q.close().unwrap();
    drop((g, q));
    for (what, d) in [("a crash while failed", crash.path()), ("close and reopen", dir.path())] {
        let q = Queue::open(d, Options::default()).unwrap();
        let g = q.group("g").unwrap();
        if what.starts_with("close") {
            assert_eq!(g.ack_floor(), floor);
        }
        let mut again = Vec::new();
        loop {
            let batch = next_offsets(&g, 5000);
            if batch.is_empty() {
                break;
            }
            again.extend(batch.into_iter().filter(|o| acked.contains(o)));
        }
        assert!(
            again.is_empty(),
            "after {what}: {} acked records delivered again: {:?}",
            again.len(),
            &again[..again.len().min(10)]
        );
    }
}

/// A failed group (its full journal's snapshot could not be written) is healed by `close`
/// once the disk has room: `close` succeeds, and the reopened group has every ack, under
/// every policy; a record still leased is delivered again with its attempt counted.
#[test]
fn close_heals_a_failed_group_and_the_reopened_group_has_every_ack() {
    for sync in [SyncPolicy::Never, SyncPolicy::Interval(Duration::from_millis(5)), SyncPolicy::Always] {
        let (dir, gdir, q, g) = setup(sync, 30_000, Duration::from_secs(3600), 5);
        let held = g.poll(ZERO).unwrap().unwrap();
        use_journal(&g, &gdir, 0);
        let next = g.stats().next_delivery;
        fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
        assert!(g.poll(ZERO).is_err());
        assert!(matches!(g.ack(held.offset()), Err(Error::Poisoned(_))));
        fault::clear(&gdir);
        let floor = g.ack_floor();
        q.close().unwrap_or_else(|e| panic!("{sync:?}: {e}"));
        drop((g, q));
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        let g = q.group("g").unwrap();
        assert_eq!((g.ack_floor(), g.stats().next_delivery), (floor, next), "{sync:?}");
        let first = g.poll(ZERO).unwrap().unwrap();
        assert_eq!((first.offset(), first.attempt()), (held.offset(), 2), "{sync:?}");
    }
}

/// Deleting a group that is failed (under `Never`, its background snapshot sync failed and
/// the disk still fails syncs) works, and the name can be used again at once.
#[test]
fn a_failed_group_can_be_deleted_and_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let gdir = group_dir(dir.path(), "g");
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    append_n(&q, 30_000);
    let g = q.group("g").unwrap();
    use_journal(&g, &gdir, 0);
    fault::inject(Fault::new(&gdir, Point::Sync).times(u64::MAX));
    let d = g.poll(ZERO).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let _ = g.ack(d.offset());
    assert!(g.poll(ZERO).is_err(), "failed and not healed");
    fault::clear(&gdir);
    q.delete_group("g").unwrap();
    assert!(matches!(g.poll(ZERO), Err(Error::GroupDeleted { .. })));
    let g2 = q.group("g").unwrap();
    assert_eq!(g2.ack_floor(), 0);
    assert_eq!(g2.poll(ZERO).unwrap().unwrap().offset(), 0);
    q.close().unwrap();
    drop((g, g2, q));
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(q.group("g").unwrap().poll(ZERO).unwrap().unwrap().offset(), 0);
}

/// Under `Interval`, the flusher heals a failed group by itself once the disk has room:
/// without any call of the consumers, a crash of the process keeps every ack, and the
/// heal's snapshot and the group's directory were synced before the journal of the new
/// generation was.
#[test]
fn the_interval_flusher_heals_a_failed_group_by_itself() {
    let (dir, gdir, _q, g) =
        setup(SyncPolicy::Interval(Duration::from_millis(5)), 30_000, Duration::from_secs(3600), 5);
    use_journal(&g, &gdir, 0);
    let generation = latest_snapshot_generation(&gdir).unwrap();
    fault::inject(Fault::new(&gdir, Point::Write).errno(ENOSPC).times(u64::MAX));
    assert!(g.poll(ZERO).is_err());
    fault::audit(&gdir);
    fault::clear(&gdir);
    let deadline = Instant::now() + Duration::from_secs(3);
    while latest_snapshot_generation(&gdir) == Some(generation) {
        assert!(Instant::now() < deadline, "the flusher never healed the group");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    let synced = fault::take_synced(&gdir);
    let snapshot = gdir.join(common::snapshot_file(generation + 1));
    let at = |p: &Path| synced.iter().position(|s| s.path == p);
    let (snap_at, dir_at) = (at(&snapshot).expect("snapshot synced"), at(&gdir).expect("folder synced"));
    if let Some(journal_at) = at(&gdir.join("journal")) {
        assert!(snap_at < journal_at && dir_at < journal_at, "{synced:?}");
    }
    let floor = g.ack_floor();
    let crash = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crash.path());
    let q2 = Queue::open(crash.path(), Options::default()).unwrap();
    assert_eq!(q2.group("g").unwrap().ack_floor(), floor);
    drop(q2);
    let d = g.poll(ZERO).unwrap().unwrap();
    g.ack(d.offset()).unwrap();
}

/// Under `Always`, a failed journal sync (an `EIO` from `msync`): the ack whose sync failed
/// reports it, and so does a second consumer waiting on the same sync; then the group heals
/// and every ack acknowledged before and after is in a copy taken as a crash, and the
/// entries after the heal were synced after the heal's snapshot and folder.
#[test]
fn a_failed_journal_sync_under_always_heals_and_keeps_every_acknowledged_ack() {
    let (dir, gdir, _q, g) = setup(SyncPolicy::Always, 100, Duration::from_secs(3600), 5);
    let ds: Vec<_> = g.poll_batch(10, ZERO).unwrap();
    g.ack(ds[0].offset()).unwrap();
    let generation = latest_snapshot_generation(&gdir).unwrap();
    fault::inject(Fault::new(&gdir, Point::Sync));
    assert!(g.ack(ds[1].offset()).is_err(), "the failed sync is reported");
    fault::audit(&gdir);
    // The next call heals (a snapshot of generation + 1) and goes on.
    g.ack(ds[2].offset()).unwrap();
    g.ack(ds[3].offset()).unwrap();
    let synced = fault::take_synced(&gdir);
    let at = |p: &Path| synced.iter().position(|s| s.path == p);
    let snapshot = gdir.join(common::snapshot_file(generation + 1));
    let journal_at = synced.iter().rposition(|s| s.path == gdir.join("journal")).expect("journal synced");
    assert!(at(&snapshot).unwrap() < journal_at && at(&gdir).unwrap() < journal_at, "{synced:?}");
    assert_eq!(latest_snapshot_generation(&gdir), Some(generation + 1));
    let crash = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crash.path());
    let q2 = Queue::open(crash.path(), Options::default()).unwrap();
    let g2 = q2.group("g").unwrap();
    let again: Vec<u64> = next_offsets(&g2, 20);
    for acked in [ds[0].offset(), ds[2].offset(), ds[3].offset()] {
        assert!(!again.contains(&acked), "{acked} came back: {again:?}");
    }
}

/// Under `Never`, threads poll and ack through many background snapshot syncs while the
/// disk fails syncs and writes now and then (so heals take both paths, the repair in the
/// same file and the normal one): no record is delivered twice while leased, nothing
/// panics, and once the disk works, `close` succeeds and the reopened group has exactly the
/// ack floor and dead letters it had in memory, with no acked record delivered again.
#[test]
fn never_background_sync_failures_and_heals_under_concurrent_consumers_end_consistent() {
    let (dir, gdir, q, g) = setup(SyncPolicy::Never, 120_000, Duration::from_secs(3600), 3);
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (g, acked, delivered, stop) = (g.clone(), acked.clone(), delivered.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut pending: Vec<u64> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if pending.is_empty() {
                        match g.poll_batch(200, ZERO) {
                            Ok(b) => {
                                let mut seen = delivered.lock().unwrap();
                                for d in &b {
                                    assert!(seen.insert(d.offset()), "offset {} delivered twice", d.offset());
                                }
                                pending = b.iter().map(|d| d.offset()).collect();
                            }
                            Err(Error::Poisoned(_) | Error::Io(_)) => std::thread::sleep(Duration::from_millis(1)),
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        match g.ack_batch(&pending) {
                            Ok(()) => acked.lock().unwrap().extend(pending.drain(..)),
                            Err(Error::Poisoned(_) | Error::Io(_)) => std::thread::sleep(Duration::from_millis(1)),
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut round = 0u64;
    while start.elapsed() < Duration::from_millis(2500) {
        round += 1;
        let (point, errno) = if round.is_multiple_of(3) { (Point::Write, ENOSPC) } else { (Point::Sync, fault::EIO) };
        fault::inject(Fault::new(&gdir, point).times(1 + round % 3).errno(errno));
        std::thread::sleep(Duration::from_millis(40));
        fault::clear(&gdir);
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    fault::clear(&gdir);
    let acked: HashSet<u64> = acked.lock().unwrap().clone();
    assert!(acked.len() > 11_000, "too few changes for a snapshot: {}", acked.len());
    g.flush().unwrap();
    let (floor, dead) = (g.ack_floor(), g.dead_letters().unwrap());
    q.close().unwrap();
    drop((g, q));
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!((g.ack_floor(), g.dead_letters().unwrap()), (floor, dead));
    let again: Vec<u64> = next_offsets(&g, 5000).into_iter().filter(|o| acked.contains(o)).collect();
    assert!(again.is_empty(), "acked records delivered again: {:?}", &again[..again.len().min(10)]);
}
