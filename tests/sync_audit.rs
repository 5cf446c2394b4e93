//! Durability checked against the syscalls. With `segq::fault`'s sync audit, every sync of a
//! file under the queue records the bytes it made durable; each test runs on one thread,
//! so the syncs recorded during a call are that call's (or a seal's it waited for). Then:
//!
//! - under `Always`, every record an `append` or `append_batch` acknowledged lies in bytes
//!   synced during the call;
//! - under `Always`, every byte of the group journal that a `poll`, `poll_batch`, `ack`,
//!   `ack_batch`, `nack` or `nack_batch` changed was synced during the call;
//! - under `Never`, every record appended since the last `flush` is synced by the time
//!   `flush` returns;
//! - under `Interval`, every record below what `durable_offset` reports was synced (by the
//!   flusher thread or a seal).
//!
//! The crash tests cannot see a missing sync: a killed process keeps its page cache, and
//! the power-loss test takes the model's word for what was synced.

mod common;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{covered, payload, record_spans, segment_base, segment_files, tiny};
use segq::fault;
use segq::{Options, Queue, SyncPolicy};

/// The segment file holding `offset` and the record's bytes in it.
fn locate(dir: &Path, offset: u64) -> (PathBuf, Range<u64>) {
    let path = segment_files(dir).into_iter().rev().find(|p| segment_base(p) <= offset).expect("a segment holds it");
    let spans = record_spans(&std::fs::read(&path).unwrap());
    let span = spans[(offset - segment_base(&path)) as usize].clone();
    (path, span.start as u64..span.end as u64)
}

#[test]
fn appends_under_always_are_synced_before_they_return() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: many rolls, so seals and the successors' creations are in the mix.
    let q = Queue::open(dir.path(), tiny(8 << 10).sync(SyncPolicy::Always)).unwrap();
    fault::audit(dir.path());
    let mut checked = 0;
    for i in 0..400u64 {
        let payloads: Vec<Vec<u8>> = (0..if i % 4 == 0 { 1 + i % 9 } else { 1 }).map(|j| payload(i * 10 + j)).collect();
        fault::take_synced(dir.path());
        let appended = if payloads.len() == 1 {
            let offset = q.append(&payloads[0]).unwrap();
            offset..offset + 1
        } else {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            q.append_batch(&refs).unwrap()
        };
        let synced = fault::take_synced(dir.path());
        for offset in appended {
            let (path, span) = locate(dir.path(), offset);
            assert!(covered(&synced, &path, &span), "record {offset} ({span:?} of {path:?}) not synced: {synced:?}");
            checked += 1;
        }
    }
    assert!(segment_files(dir.path()).len() > 8, "the test meant to cross many rolls");
    assert!(checked > 500);
}

#[test]
fn a_flush_under_never_syncs_every_record_since_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(16 << 10)).unwrap();
    fault::audit(dir.path());
    let mut unflushed = Vec::new();
    for i in 0..600u64 {
        unflushed.push(q.append(&payload(i)).unwrap());
        if i % 37 == 36 {
            q.flush().unwrap();
            // Background seals since the last flush count too: they ran before it returned.
            let synced = fault::take_synced(dir.path());
            for offset in unflushed.drain(..) {
                let (path, span) = locate(dir.path(), offset);
                assert!(covered(&synced, &path, &span), "record {offset} not synced by the flush");
            }
        }
    }
}

#[test]
fn group_calls_under_always_sync_what_they_journal() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    for i in 0..60 {
        q.append(&payload(i)).unwrap();
    }
    let g = q.group("g").unwrap();
    let journal = dir.path().join("groups").join("g").join("journal");
    fault::audit(dir.path());
    let mut changes = 0;
    // Runs `call` and checks that the journal bytes it changed were synced meanwhile.
    let mut checked = |what: &str, call: &mut dyn FnMut()| {
        let before = std::fs::read(&journal).unwrap();
        fault::take_synced(dir.path());
        call();
        let synced = fault::take_synced(dir.path());
        let after = std::fs::read(&journal).unwrap();
        let first = before.iter().zip(&after).position(|(a, b)| a != b);
        let last = before.iter().zip(&after).rposition(|(a, b)| a != b);
        if let (Some(first), Some(last)) = (first, last) {
            let span = first as u64..last as u64 + 1;
            assert!(covered(&synced, &journal, &span), "{what}: journal bytes {span:?} not synced: {synced:?}");
            changes += 1;
        }
    };
    for _ in 0..6 {
        let mut taken = Vec::new();
        checked("poll", &mut || taken.push(g.poll(Duration::ZERO).unwrap().unwrap().offset()));
        checked("poll_batch", &mut || {
            taken.extend(g.poll_batch(4, Duration::ZERO).unwrap().iter().map(|d| d.offset()))
        });
        assert_eq!(taken.len(), 5);
        checked("ack", &mut || g.ack(taken[0]).unwrap());
        checked("ack_batch", &mut || g.ack_batch(&taken[1..3]).unwrap());
        checked("nack", &mut || g.nack(taken[3], Duration::ZERO).unwrap());
        checked("nack_batch", &mut || g.nack_batch(&taken[4..], Duration::from_secs(3600)).unwrap());
    }
    assert!(changes >= 30, "the calls meant to change the journal: {changes}");
}

#[test]
fn durable_offset_under_interval_claims_only_synced_records() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), tiny(16 << 10).sync(SyncPolicy::Interval(Duration::from_millis(2)))).unwrap();
    fault::audit(dir.path());
    let mut synced = Vec::new();
    let mut checked = 0;
    for i in 0..800u64 {
        q.append(&payload(i)).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
            // Read what the queue claims first: a sync recorded after the claim only adds.
            let durable = q.durable_offset();
            synced.extend(fault::take_synced(dir.path()));
            for offset in checked..durable {
                let (path, span) = locate(dir.path(), offset);
                assert!(covered(&synced, &path, &span), "record {offset} below durable {durable} not synced");
            }
            checked = checked.max(durable);
        }
    }
    // The flusher gets to the end by itself (a generous bound, not a timing check).
    let waited = std::time::Instant::now();
    while q.durable_offset() < q.next_offset() {
        assert!(waited.elapsed() < Duration::from_secs(60), "the flusher never synced the last records");
        std::thread::sleep(Duration::from_millis(2));
    }
    synced.extend(fault::take_synced(dir.path()));
    for offset in checked..q.next_offset() {
        let (path, span) = locate(dir.path(), offset);
        assert!(covered(&synced, &path, &span), "record {offset} not synced by the flusher");
    }
}

/// A queue opened in a directory that does not exist yet, several levels deep: every new
/// directory's entry is synced in its parent before `open` returns, so that the queue
/// cannot vanish in a power loss after appends were acknowledged as durable. (Found by the
/// session-12 review: only the last level's parent was synced.) An empty path is refused
/// instead of taken for the current directory, and nothing is created for it.
#[test]
fn every_directory_open_creates_is_synced_in_its_parent() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    fault::audit(&root);
    let dir = root.join("a/b/c/queue");
    let q = Queue::open(&dir, Options::default().sync(SyncPolicy::Always)).unwrap();
    assert_eq!(q.append(b"durable").unwrap(), 0);
    let synced: Vec<PathBuf> = fault::take_synced(&root).into_iter().map(|s| s.path).collect();
    for parent in [root.clone(), root.join("a"), root.join("a/b"), root.join("a/b/c")] {
        assert!(synced.contains(&parent), "{parent:?} not synced: {synced:?}");
    }
    q.close().unwrap();

    let err = Queue::open("", Options::default()).unwrap_err();
    assert!(matches!(&err, segq::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput), "{err}");
    assert!(err.to_string().starts_with("\"\": an empty path names no directory"), "{err}");
    assert!(!Path::new("lock").exists(), "a lock file was left in the current directory");
}

/// A new group's journal is named durably before its snapshot file is written: the
/// snapshot's name is what says the group exists, and a power loss that kept it without the
/// journal's (two renames in a directory synced once) would leave a group that cannot open.
/// (Found by a review in session 17.)
#[test]
fn a_new_groups_journal_is_named_durably_before_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    fault::audit(dir.path());
    q.group("g").unwrap();
    let group = dir.path().join("groups").join("g");
    let synced: Vec<PathBuf> = fault::take_synced(dir.path()).into_iter().map(|s| s.path).collect();
    let position = |path: &Path| synced.iter().position(|p| p == path);
    let journal = position(&group.join("journal.tmp")).expect("the journal synced");
    let snapshot = position(&group.join("state.tmp")).expect("the snapshot synced");
    assert!(
        synced[journal..snapshot].contains(&group),
        "the group's directory not synced between the journal and the snapshot: {synced:?}"
    );
    // Nor is the snapshot written again by the open that created it, which synced it.
    assert!(!synced.contains(&group.join("state")), "{synced:?}");
}

/// A run under `Never` that polls and acks `pairs` records and crashes as a process does:
/// its journal entries are in the page cache, and no sync covered them.
fn crashed_group_run(dir: &Path, pairs: u64) -> PathBuf {
    let q = Queue::open(dir, Options::default().sync(SyncPolicy::Never)).unwrap();
    for i in 0..pairs + 20 {
        q.append(&payload(i)).unwrap();
    }
    q.flush().unwrap();
    let g = q.group("g").unwrap();
    q.flush().unwrap();
    for _ in 0..pairs {
        g.ack(g.poll(Duration::ZERO).unwrap().unwrap().offset()).unwrap();
    }
    drop(g);
    q.simulate_crash();
    dir.join("groups").join("g").join("journal")
}

/// The journal entries a crashed run left unsynced are replayed at the next open. A change
/// made durable after them must make them durable too, or a power loss that drops them ends
/// the replay before the durable change: its ack undone, its attempt count lowered. Each
/// way a later run makes a group change durable is tried: a call under `Always`, a `flush`
/// and a `close`, also with no change of its own since the open.
#[test]
fn a_durable_group_change_after_a_crashed_run_syncs_the_entries_it_follows() {
    type Call = fn(&Queue, &segq::Group);
    let calls: [(&str, SyncPolicy, Call); 5] = [
        ("ack under Always", SyncPolicy::Always, |_, g| {
            g.ack(g.poll(Duration::ZERO).unwrap().unwrap().offset()).unwrap()
        }),
        ("poll under Always", SyncPolicy::Always, |_, g| drop(g.poll(Duration::ZERO).unwrap().unwrap())),
        ("flush after an ack under Never", SyncPolicy::Never, |_, g| {
            g.ack(g.poll(Duration::ZERO).unwrap().unwrap().offset()).unwrap();
            g.flush().unwrap()
        }),
        ("flush with no change", SyncPolicy::Never, |_, g| g.flush().unwrap()),
        ("close with no change", SyncPolicy::Interval(Duration::from_secs(3600)), |q, _| q.close().unwrap()),
    ];
    for (what, sync, call) in calls {
        let dir = tempfile::tempdir().unwrap();
        let journal = crashed_group_run(dir.path(), 200);
        let q = Queue::open(dir.path(), Options::default().sync(sync)).unwrap();
        let g = q.group("g").unwrap();
        assert_eq!(g.ack_floor(), 200, "{what}: the crashed run's acks are replayed");
        fault::audit(dir.path());
        call(&q, &g);
        let synced = fault::take_synced(dir.path());
        let bytes = std::fs::read(&journal).unwrap();
        let end = common::FILE_HEADER_LEN + common::journal_entries(&bytes, 0) * common::JOURNAL_ENTRY_LEN;
        assert!(end > 200 * 2 * common::JOURNAL_ENTRY_LEN, "{what}: {end}");
        let span = common::FILE_HEADER_LEN as u64..end as u64;
        assert!(covered(&synced, &journal, &span), "{what}: journal bytes {span:?} not all synced: {synced:?}");
    }
}

/// The same, end to end: after the later run's durable acks (or delivery), the pages no
/// sync covered go back to the zeros the journal was created with, as a power loss may
/// leave them. The acks are not undone and the attempt count does not go down.
#[test]
fn a_power_loss_after_a_crashed_run_keeps_the_next_runs_durable_changes() {
    for ack in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let journal = crashed_group_run(dir.path(), 200);
        fault::audit(dir.path());
        let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
        let g = q.group("g").unwrap();
        if ack {
            for _ in 0..10 {
                g.ack(g.poll(Duration::ZERO).unwrap().unwrap().offset()).unwrap();
            }
        } else {
            let d = g.poll(Duration::ZERO).unwrap().unwrap();
            assert_eq!((d.offset(), d.attempt()), (200, 1));
        }
        drop(g);
        q.simulate_crash();
        let synced = fault::take_synced(dir.path());
        let mut bytes = std::fs::read(&journal).unwrap();
        let mut lost = 0;
        for (i, page) in bytes.chunks_mut(4096).enumerate() {
            let span = (i * 4096) as u64..((i + 1) * 4096) as u64;
            let from = if i == 0 { common::FILE_HEADER_LEN } else { 0 };
            if !synced.iter().any(|s| s.path == journal && s.range.start < span.end && span.start < s.range.end)
                && page[from..].iter().any(|&b| b != 0)
            {
                page[from..].fill(0);
                lost += 1;
            }
        }
        std::fs::write(&journal, &bytes).unwrap();
        let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
        let g = q.group("g").unwrap();
        let d = g.poll(Duration::ZERO).unwrap().unwrap();
        if ack {
            assert!(d.offset() >= 210, "{lost} pages lost: a durable ack undone, offset {} again", d.offset());
        } else {
            assert!(d.offset() >= 200, "{lost} pages lost: offset {} again", d.offset());
            if d.offset() == 200 {
                assert_eq!(d.attempt(), 2, "{lost} pages lost: the attempt count went down");
            }
        }
    }
}

/// Names made by a run that stopped before it synced their directory (a failed call leaves
/// the files a crash at that moment would) are made durable by the run that goes on, before
/// it acknowledges anything built on them. Each case stops a run there, reopens, makes
/// changes durable under `Always`, and asks the audit whether `dir` was synced meanwhile.
/// (Found by a review in session 17: none was, and a power loss that dropped the name lost
/// the acknowledged records or acks.)
fn synced_by_the_run_that_goes_on(what: &str, audited: &Path, dirs: &[&Path], go_on: impl FnOnce()) {
    fault::take_synced(audited);
    go_on();
    let synced = fault::take_synced(audited);
    for dir in dirs {
        assert!(
            synced.iter().any(|s| s.path == *dir),
            "{what}: {dir:?} not synced by the run that went on: {synced:?}"
        );
    }
}

fn always() -> Options {
    Options::default().sync(SyncPolicy::Always)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

#[test]
fn a_segment_named_by_a_roll_or_first_open_cut_short_is_named_durably_by_the_next_open() {
    // A roll whose new segment's creation sync fails (its header write).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fault::audit(dir);
    let q = Queue::open(dir, tiny(8 << 10).sync(SyncPolicy::Always)).unwrap();
    for i in 0.. {
        let next = segment_path(dir, q.next_offset());
        fault::inject(fault::Fault::new(&next, fault::Point::Write));
        let appended = q.append(&payload(i));
        fault::clear(dir);
        if appended.is_err() {
            assert!(next.exists(), "the roll named the new segment");
            break;
        }
        assert!(i < 10_000, "no roll");
    }
    q.simulate_crash();
    synced_by_the_run_that_goes_on("a roll cut short", dir, &[dir], || {
        let q = Queue::open(dir, tiny(8 << 10).sync(SyncPolicy::Always)).unwrap();
        q.append(b"acknowledged").unwrap();
        q.simulate_crash();
    });

    // The first open's segment, the same way.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fault::audit(dir);
    fault::inject(fault::Fault::new(&segment_path(dir, 0), fault::Point::Write));
    assert!(Queue::open(dir, always()).is_err(), "the first open stops in the segment's creation sync");
    fault::clear(dir);
    assert!(segment_path(dir, 0).exists());
    synced_by_the_run_that_goes_on("a first open cut short", dir, &[dir], || {
        always_appends(dir);
    });
}

fn always_appends(dir: &Path) {
    let q = Queue::open(dir, always()).unwrap();
    q.append(b"acknowledged").unwrap();
    q.simulate_crash();
}

#[test]
fn a_queue_directory_made_by_an_open_cut_short_is_named_durably_by_the_next_open() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let dir = root.join("q");
    fault::audit(&root);
    fault::inject(fault::Fault::new(&root, fault::Point::Sync));
    assert!(Queue::open(&dir, Options::default()).is_err(), "the open stops at its parent's sync");
    fault::clear(&root);
    assert!(dir.is_dir());
    synced_by_the_run_that_goes_on("a queue directory", &root, &[&root], || always_appends(&dir));
}

#[test]
fn group_directories_made_by_a_creation_cut_short_are_named_durably_by_the_next_run() {
    let ack_ten = |dir: &Path, name: &str| {
        let q = Queue::open(dir, always()).unwrap();
        let g = q.group(name).unwrap();
        for _ in 0..10 {
            g.ack(g.poll(Duration::ZERO).unwrap().unwrap().offset()).unwrap();
        }
        drop(g);
        q.simulate_crash();
    };
    for stop in ["before groups/ is synced", "at the journal's fallocate"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let groups = dir.join("groups");
        let q = Queue::open(dir, always()).unwrap();
        for i in 0..30 {
            q.append(&payload(i)).unwrap();
        }
        let fault = if stop == "at the journal's fallocate" {
            fault::Fault::new(&groups, fault::Point::Allocate).errno(fault::ENOSPC)
        } else {
            // Syncs under groups/: journal.tmp, groups/g twice, state.tmp, then groups/.
            fault::Fault::new(&groups, fault::Point::Sync).after(4)
        };
        fault::inject(fault);
        assert!(q.group("g").is_err(), "{stop}: the creation stops");
        fault::clear(dir);
        // Closed cleanly: the log's recovery, which syncs the queue directory, does not run.
        q.close().unwrap();
        fault::audit(dir);
        // The same group (its state is there) goes on, or another is created next to it.
        let name = if groups.join("g").join("state").exists() { "g" } else { "h" };
        synced_by_the_run_that_goes_on(stop, dir, &[&groups, dir], || ack_ten(dir, name));
    }
}
