//! A queue directory written under one set of `Options` / `GroupOptions` and opened again
//! under another, with process crashes in between
//! (`Queue::simulate_crash`, or a child process of this binary that aborts).
//!
//! Every test checks that each acknowledged record is still readable by `read` and by
//! `iter_from(0)`, that offsets stay contiguous, that `stats()` agrees with the files, and
//! that `segq verify` (the binary built by cargo) exits 0 on what the library wrote.
//!
//! Child processes: `child_entry` does something only when `SEGQ_OPTIONS_CHILD` is set
//! (to a script, see `run_script`), then aborts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{CHECKPOINT_SLOT_B, Rng, active_segment, checkpoint_slot, files_ending, record_spans, segment_files};
use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};

const NO_WAIT: Duration = Duration::ZERO;
const HOUR: Duration = Duration::from_secs(3600);
const CHILD_ENV: &str = "SEGQ_OPTIONS_CHILD";
const CHILD_DIR_ENV: &str = "SEGQ_OPTIONS_DIR";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The payload of offset `i`: mostly small, every 17th bigger than 4 KiB (bigger than the
/// smallest segment), every 5th empty-ish. The first 8 bytes name the offset.
fn pl(i: u64) -> Vec<u8> {
    let len = if i % 17 == 3 {
        5000 + (i % 7) as usize * 150
    } else if i.is_multiple_of(5) {
        8
    } else {
        8 + (i * 37 % 300) as usize
    };
    let mut p: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect();
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn opts(segment_bytes: u64, interval: u32, sync: SyncPolicy) -> Options {
    Options::default().segment_bytes(segment_bytes).index_interval_bytes(interval).sync(sync)
}

/// Runs `segq verify <dir>`; returns the exit code and everything it printed.
fn segq_verify(dir: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segq")).arg("verify").arg(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn assert_verify_ok(dir: &Path, when: &str) {
    let (code, text) = segq_verify(dir);
    assert_eq!(code, 0, "segq verify {when}: exit {code}\n{text}");
}

/// Sum of the segment files' lengths and their number.
fn segment_bytes_on_disk(dir: &Path) -> (u64, u64) {
    let files = segment_files(dir);
    (files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum(), files.len() as u64)
}

/// Checks that `q` holds exactly `pl(first)..pl(next)` (`expected[o]` for offset `o`),
/// through `read` (in a shuffled order too) and `iter_from(0)`, and that `stats` is sane.
fn check_all(q: &Queue, expected: &[Vec<u8>], first: u64, when: &str) {
    let next = expected.len() as u64;
    assert_eq!(q.first_offset(), first, "{when}: first offset");
    assert_eq!(q.next_offset(), next, "{when}: next offset");
    for o in first..next {
        let rec = q.read(o).unwrap_or_else(|e| panic!("{when}: read({o}): {e}"));
        let rec = rec.unwrap_or_else(|| panic!("{when}: record {o} is missing"));
        assert_eq!(rec.offset(), o, "{when}");
        assert!(rec.payload() == expected[o as usize].as_slice(), "{when}: payload of {o}");
    }
    let mut order: Vec<u64> = (first..next).collect();
    let mut rng = Rng::new(next ^ 0x5eed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for o in order {
        let rec = q.read(o).unwrap().unwrap();
        assert!(rec.payload() == expected[o as usize].as_slice(), "{when}: shuffled read of {o}");
    }
    assert!(q.read(next).unwrap().is_none(), "{when}: read past the end");
    if first > 0 {
        assert!(q.read(first - 1).unwrap().is_none(), "{when}: read below the first offset");
    }
    let mut want = first;
    for r in q.iter_from(0) {
        let r = r.unwrap_or_else(|e| panic!("{when}: iter at {want}: {e}"));
        assert_eq!(r.offset(), want, "{when}: iteration is contiguous");
        assert!(r.payload() == expected[want as usize].as_slice(), "{when}: iterated payload of {want}");
        want += 1;
    }
    assert_eq!(want, next, "{when}: iteration ends at the next offset");
    let s = q.stats();
    assert_eq!((s.first_offset, s.next_offset, s.records), (first, next, next - first), "{when}: {s:?}");
    assert!(s.durable_offset <= s.next_offset, "{when}: {s:?}");
    // A background seal may cut a file between the two looks: compare once the stats and
    // the files stay put (not a timing assertion: it only waits for a quiet moment).
    let mut last = None;
    for _ in 0..200 {
        let before = q.stats();
        let (bytes, files) = segment_bytes_on_disk(q.dir());
        let after = q.stats();
        if before.bytes_on_disk == after.bytes_on_disk && before.segments == after.segments {
            if (after.bytes_on_disk, after.segments) == (bytes, files) {
                return;
            }
            last = Some((after, bytes, files));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (s, bytes, files) = last.expect("stats kept changing");
    panic!("{when}: stats disagree with the files ({files} segment files, {bytes} bytes): {s:?}");
}

/// Appends `pl(o)` for the next `n` offsets (every 9th call a batch of 3), pushing them to
/// `expected`.
fn append_more(q: &Queue, expected: &mut Vec<Vec<u8>>, n: u64) {
    let stop = expected.len() as u64 + n;
    while (expected.len() as u64) < stop {
        let o = expected.len() as u64;
        if o % 9 == 4 && o + 3 <= stop {
            let ps = [pl(o), pl(o + 1), pl(o + 2)];
            let refs: Vec<&[u8]> = ps.iter().map(Vec::as_slice).collect();
            assert_eq!(q.append_batch(&refs).unwrap(), o..o + 3);
            expected.extend(ps);
        } else {
            assert_eq!(q.append(&pl(o)).unwrap(), o);
            expected.push(pl(o));
        }
    }
}

fn expected_upto(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(pl).collect()
}

#[derive(Debug, Clone, Copy)]
enum End {
    Close,
    Crash,
}

fn end(q: Queue, how: End) {
    match how {
        End::Close => q.close().unwrap(),
        End::Crash => q.simulate_crash(),
    }
}

// ---- child processes ----

fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_DIR_ENV).map(Into::into)
}

/// Runs `child_entry` in a child process with `script`, and waits for it to abort.
fn run_child(dir: &Path, script: &str) {
    let _guard = common::process_lock();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, script)
        .env(CHILD_DIR_ENV, dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "child was meant to abort: {err}");
    assert!(
        err.contains("CHILD-DONE") || String::from_utf8_lossy(&out.stdout).contains("CHILD-DONE"),
        "child failed before its abort:\n{err}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Script: `key=value` pairs separated by `,`:
/// `seg`, `idx`, `max`, `sync` (always|never|interval) open the queue; `append=N` appends
/// `pl(o)` for the next N offsets; `group=NAME:LEASE_MS:MAX` opens a group with those
/// settings; `poll=N` polls N records without acking them; `nack0=N` polls the first due
/// record and nacks it at once, N times; `ack=N` polls and acks N records.
fn run_script(dir: &Path, script: &str) {
    let mut o = Options::default();
    let kv: Vec<(&str, &str)> = script.split(',').map(|p| p.split_once('=').unwrap()).collect();
    for &(k, v) in &kv {
        match k {
            "seg" => o = o.segment_bytes(v.parse().unwrap()),
            "idx" => o = o.index_interval_bytes(v.parse().unwrap()),
            "max" => o = o.max_record_bytes(v.parse().unwrap()),
            "sync" => {
                o = o.sync(match v {
                    "always" => SyncPolicy::Always,
                    "never" => SyncPolicy::Never,
                    "interval" => SyncPolicy::Interval(Duration::from_millis(5)),
                    _ => panic!("sync {v}"),
                })
            }
            _ => {}
        }
    }
    let q = Queue::open(dir, o).unwrap();
    let mut group = None;
    for &(k, v) in &kv {
        match k {
            "append" => {
                let n: u64 = v.parse().unwrap();
                for _ in 0..n {
                    let off = q.next_offset();
                    q.append(&pl(off)).unwrap();
                }
            }
            "group" => {
                let parts: Vec<&str> = v.split(':').collect();
                let go = GroupOptions::default()
                    .lease(Duration::from_millis(parts[1].parse().unwrap()))
                    .max_attempts(parts[2].parse().unwrap());
                group = Some(q.group_with(parts[0], go).unwrap());
            }
            "poll" => {
                let g = group.as_ref().unwrap();
                for _ in 0..v.parse::<u64>().unwrap() {
                    g.poll(NO_WAIT).unwrap().expect("a record to poll");
                }
            }
            "nack0" => {
                let g = group.as_ref().unwrap();
                for _ in 0..v.parse::<u64>().unwrap() {
                    let d = g.poll(NO_WAIT).unwrap().expect("a record to poll");
                    g.nack(d.offset(), NO_WAIT).unwrap();
                }
            }
            "until_segments" => {
                let n: usize = v.parse().unwrap();
                while segment_files(dir).len() < n {
                    let off = q.next_offset();
                    q.append(&pl(off)).unwrap();
                }
            }
            "gack" | "gpoll" => {
                let g = group.as_ref().unwrap();
                for _ in 0..v.parse::<u64>().unwrap() {
                    let Some(d) = g.poll(NO_WAIT).unwrap() else { break };
                    if k == "gack" {
                        g.ack(d.offset()).unwrap();
                    }
                }
            }
            "ack" => {
                let g = group.as_ref().unwrap();
                for _ in 0..v.parse::<u64>().unwrap() {
                    let d = g.poll(NO_WAIT).unwrap().expect("a record to poll");
                    g.ack(d.offset()).unwrap();
                }
            }
            _ => {}
        }
    }
    eprintln!("CHILD-DONE");
    std::process::abort();
}

#[test]
fn child_entry() {
    let (Some(script), Some(dir)) = (std::env::var_os(CHILD_ENV), child_dir()) else { return };
    run_script(&dir, script.to_str().unwrap());
}

// ---------------------------------------------------------------------------------------
// 1. segment_bytes raised and lowered between opens
// ---------------------------------------------------------------------------------------

/// Sizes visited in turn, below and above the active segment and the records (some of which
/// are up to ~9 KB), with odd (not page-aligned) values.
const SIZES: [u64; 7] = [64 << 10, 4096, 4099, 1 << 20, 4096, 10007, 1 << 16];

fn segment_bytes_rounds(ends: &[End]) {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (round, &sb) in SIZES.iter().enumerate() {
        let before = segment_files(dir.path()).last().map(|f| std::fs::metadata(f).unwrap().len());
        let q = Queue::open(dir.path(), opts(sb, 256, SyncPolicy::Never)).unwrap();
        let when = format!("round {round} (segment_bytes {sb}) after open");
        // The active segment keeps its length or grows to the new size (never shrinks).
        if let Some(before) = before {
            let now = std::fs::metadata(active_segment(dir.path())).unwrap().len();
            assert_eq!(now, before.max(sb), "{when}: active segment length");
        }
        check_all(&q, &expected, 0, &when);
        append_more(&q, &mut expected, 60);
        check_all(&q, &expected, 0, &format!("round {round} after appends"));
        let how = ends[round % ends.len()];
        end(q, how);
        assert_verify_ok(dir.path(), &format!("after round {round} ({how:?})"));
    }
    let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Always)).unwrap();
    check_all(&q, &expected, 0, "final open");
    q.close().unwrap();
    assert_verify_ok(dir.path(), "final");
}

#[test]
fn segment_bytes_changed_across_clean_reopens() {
    segment_bytes_rounds(&[End::Close]);
}

#[test]
fn segment_bytes_changed_across_process_crashes() {
    segment_bytes_rounds(&[End::Crash]);
}

#[test]
fn segment_bytes_changed_across_mixed_closes_and_crashes() {
    segment_bytes_rounds(&[End::Crash, End::Close, End::Crash, End::Crash, End::Close]);
}

/// A real abort of a child process (no drain of the sealer, nothing dropped) under `Always`
/// with one segment size, reopened with a smaller and then a larger one.
#[test]
fn segment_bytes_changed_after_child_aborts() {
    let dir = tempfile::tempdir().unwrap();
    run_child(dir.path(), "seg=65536,idx=256,sync=always,append=120");
    let mut expected = expected_upto(120);
    for (round, sb) in [4096u64, 1 << 20, 4099].into_iter().enumerate() {
        assert_verify_ok(dir.path(), &format!("after abort {round}"));
        let q = Queue::open(dir.path(), opts(sb, 256, SyncPolicy::Always)).unwrap();
        check_all(&q, &expected, 0, &format!("open {round} with segment_bytes {sb}"));
        q.close().unwrap();
        let n = 50 + round as u64 * 10;
        run_child(dir.path(), &format!("seg={sb},idx=256,sync=always,append={n}"));
        let next = expected.len() as u64 + n;
        expected = expected_upto(next);
        let q = Queue::open(dir.path(), opts(SIZES[round], 256, SyncPolicy::Never)).unwrap();
        check_all(&q, &expected, 0, &format!("after child {round}"));
        q.close().unwrap();
    }
    assert_verify_ok(dir.path(), "final");
}

/// An active segment made big by a batch that needed a segment of its own (bigger than
/// `segment_bytes`), reopened after a crash with a smaller and with the default size.
#[test]
fn an_oversized_active_segment_is_kept_when_reopened_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts(4096, 64, SyncPolicy::Always)).unwrap();
    let big: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 3000]).collect();
    let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
    q.append(b"small").unwrap();
    q.append_batch(&refs).unwrap();
    let mut expected = vec![b"small".to_vec()];
    expected.extend(big.clone());
    let active_len = std::fs::metadata(active_segment(dir.path())).unwrap().len();
    assert!(active_len > 4096, "the batch has a segment of its own: {active_len}");
    q.simulate_crash();
    for sb in [4096u64, 8192, 64 << 20] {
        let q = Queue::open(dir.path(), opts(sb, 64, SyncPolicy::Always)).unwrap();
        check_all(&q, &expected, 0, &format!("reopened with {sb}"));
        let o = q.append(b"after").unwrap();
        expected.push(b"after".to_vec());
        assert_eq!(o as usize, expected.len() - 1);
        check_all(&q, &expected, 0, &format!("appended with {sb}"));
        q.simulate_crash();
        assert_verify_ok(dir.path(), &format!("after crash with {sb}"));
    }
}

/// The state a crash in the middle of a background seal leaves (the segment before the
/// newest preallocated again, the checkpoint naming only it), reopened with another
/// segment size: smaller than the preallocated file, and larger.
#[test]
fn unfinished_seal_reopened_with_another_segment_size() {
    const SB: u64 = 16 << 10;
    for (case, (new_sb, new_iv, tail_lost)) in [
        (4096u64, 256u32, false),
        (1u64 << 20, 1, false),
        (4096, u32::MAX, true),
        (1 << 20, 24, true),
        (SB, 1, true),
        (SB, u32::MAX, false),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), opts(SB, 256, SyncPolicy::Never)).unwrap();
        let mut n = 0;
        while segment_files(dir.path()).len() < 3 || n < 200 {
            q.append(&pl(n)).unwrap();
            n += 1;
        }
        q.simulate_crash();
        let files = segment_files(dir.path());
        let prev = files[files.len() - 2].clone();
        let prev_base = common::segment_base(&prev);
        let newest_base = common::segment_base(files.last().unwrap());
        let bytes = std::fs::read(&prev).unwrap();
        let spans = record_spans(&bytes);
        let synced = prev_base + 1;
        let position = spans[1].start as u64;
        std::fs::OpenOptions::new().write(true).open(&prev).unwrap().set_len(SB).unwrap();
        let mut checkpoint = Vec::new();
        common::put_checkpoint_slot(&mut checkpoint, 0, prev_base, position, synced, false);
        checkpoint.resize(CHECKPOINT_SLOT_B + 64, 0);
        std::fs::write(dir.path().join("checkpoint"), &checkpoint).unwrap();
        let kept = if tail_lost {
            // The last 2 records of `prev` never reached the disk.
            let keep = prev_base + spans.len() as u64 - 2;
            let from = spans[(keep - prev_base) as usize].start;
            let mut b = std::fs::read(&prev).unwrap();
            b[from..].fill(0);
            std::fs::write(&prev, &b).unwrap();
            keep
        } else {
            n
        };
        assert_verify_ok(dir.path(), &format!("case {case}: an unfinished seal, before the reopen"));
        let q = Queue::open(dir.path(), opts(new_sb, new_iv, SyncPolicy::Never)).unwrap();
        let mut expected = expected_upto(kept);
        let when = format!("case {case}: reopened with {new_sb}/{new_iv}, tail lost {tail_lost}");
        check_all(&q, &expected, 0, &when);
        if !tail_lost {
            assert!(dir.path().join(format!("{newest_base:020}.log")).exists(), "{when}");
            assert_eq!(std::fs::metadata(&prev).unwrap().len(), spans.last().unwrap().end as u64, "{when}: sealed");
        }
        append_more(&q, &mut expected, 40);
        check_all(&q, &expected, 0, &format!("{when}, after appends"));
        q.close().unwrap();
        assert_verify_ok(dir.path(), &when);
        let q = Queue::open(dir.path(), opts(SB, 256, SyncPolicy::Never)).unwrap();
        check_all(&q, &expected, 0, &format!("{when}, reopened"));
        q.close().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// 2. index_interval_bytes changed between opens
// ---------------------------------------------------------------------------------------

const INTERVALS: [u32; 7] = [1, 4096, 24, u32::MAX, 512, 100, 1];

fn interval_rounds(how: End) {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (round, &iv) in INTERVALS.iter().enumerate() {
        let q = Queue::open(dir.path(), opts(32 << 10, iv, SyncPolicy::Never)).unwrap();
        check_all(&q, &expected, 0, &format!("round {round} (interval {iv}) after open"));
        append_more(&q, &mut expected, 150);
        check_all(&q, &expected, 0, &format!("round {round} after appends"));
        end(q, how);
        assert_verify_ok(dir.path(), &format!("after round {round} ({how:?})"));
    }
    // Every index lost: rebuilt with yet another interval (sealed ones on first read).
    for f in files_ending(dir.path(), "index") {
        std::fs::remove_file(f).unwrap();
    }
    let q = Queue::open(dir.path(), opts(32 << 10, 64, SyncPolicy::Never)).unwrap();
    check_all(&q, &expected, 0, "indexes deleted");
    q.close().unwrap();
    assert_eq!(files_ending(dir.path(), "index").len(), segment_files(dir.path()).len(), "every index rebuilt");
    assert_verify_ok(dir.path(), "after rebuild");
}

#[test]
fn index_interval_changed_across_clean_reopens() {
    interval_rounds(End::Close);
}

#[test]
fn index_interval_changed_across_process_crashes() {
    interval_rounds(End::Crash);
}

/// The active segment's index is partly written with one interval when the child aborts,
/// and the reopen (with another interval) keeps those entries and goes on with its own.
#[test]
fn index_interval_changed_after_child_abort_mid_segment() {
    let dir = tempfile::tempdir().unwrap();
    run_child(dir.path(), "seg=1048576,idx=24,sync=always,append=150");
    let mut expected = expected_upto(150);
    let q = Queue::open(dir.path(), opts(1 << 20, 8192, SyncPolicy::Always)).unwrap();
    check_all(&q, &expected, 0, "interval 24 -> 8192");
    append_more(&q, &mut expected, 100);
    q.simulate_crash();
    run_child(dir.path(), "seg=1048576,idx=1,sync=always,append=100");
    expected = expected_upto(350);
    assert_verify_ok(dir.path(), "after the second abort");
    let q = Queue::open(dir.path(), opts(4096, 300, SyncPolicy::Always)).unwrap();
    check_all(&q, &expected, 0, "interval 1 -> 300");
    append_more(&q, &mut expected, 100);
    check_all(&q, &expected, 0, "interval 300 appends (rolls)");
    q.close().unwrap();
    assert_verify_ok(dir.path(), "final");
}

// ---------------------------------------------------------------------------------------
// 3. max_record_bytes lowered below stored records, raised again
// ---------------------------------------------------------------------------------------

#[test]
fn max_record_bytes_lowered_below_stored_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let q = Queue::open(dir.path(), opts(64 << 10, 256, SyncPolicy::Always)).unwrap();
        for p in [vec![], vec![1; 10], vec![2; 1000], vec![3; 70_000], vec![4; 11]] {
            q.append(&p).unwrap();
            expected.push(p);
        }
        q.append_batch(&[&[5u8; 500][..], &[6u8; 20]]).unwrap();
        expected.push(vec![5; 500]);
        expected.push(vec![6; 20]);
        q.group("g").unwrap();
        q.simulate_crash();
    }
    let q = Queue::open(dir.path(), opts(64 << 10, 256, SyncPolicy::Always).max_record_bytes(10)).unwrap();
    check_all(&q, &expected, 0, "max 10");
    // Polling hands out the big records too.
    let g = q.group("g").unwrap();
    for (o, want) in expected.iter().enumerate() {
        let d = g.poll(NO_WAIT).unwrap().expect("delivered");
        assert_eq!(d.offset(), o as u64);
        assert!(d.payload() == want.as_slice());
        g.ack(d.offset()).unwrap();
    }
    let files_before: Vec<(PathBuf, Vec<u8>)> =
        segment_files(dir.path()).into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect();
    let next = q.next_offset();
    match q.append(&[9; 11]) {
        Err(Error::RecordTooLarge { size: 11, limit: 10 }) => {}
        other => panic!("append over the new limit: {other:?}"),
    }
    let err = q.append_batch(&[&[1u8; 3][..], &[9u8; 11]]).unwrap_err();
    assert!(matches!(err, Error::RecordTooLarge { size: 11, limit: 10 }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("11") && msg.contains("10") && msg.contains("max_record_bytes"), "unclear: {msg}");
    assert_eq!(q.next_offset(), next, "nothing stored");
    assert!(q.read(next).unwrap().is_none());
    let files_after: Vec<(PathBuf, Vec<u8>)> =
        segment_files(dir.path()).into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect();
    assert!(files_before == files_after, "a refused append changed a segment file");
    q.append(&[7; 10]).unwrap();
    expected.push(vec![7; 10]);
    check_all(&q, &expected, 0, "max 10 after appends");
    q.simulate_crash();

    let q = Queue::open(dir.path(), opts(64 << 10, 256, SyncPolicy::Never).max_record_bytes(0)).unwrap();
    check_all(&q, &expected, 0, "max 0");
    assert!(matches!(q.append(b"x"), Err(Error::RecordTooLarge { size: 1, limit: 0 })));
    q.append(b"").unwrap();
    expected.push(vec![]);
    q.close().unwrap();
    assert_verify_ok(dir.path(), "max 0");

    let q =
        Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Never).max_record_bytes(segq::MAX_RECORD_LIMIT)).unwrap();
    check_all(&q, &expected, 0, "max 1 GiB");
    let huge = vec![0xAB; 3 << 20];
    q.append(&huge).unwrap();
    expected.push(huge);
    q.append(b"tail").unwrap();
    expected.push(b"tail".to_vec());
    check_all(&q, &expected, 0, "max 1 GiB after appends");
    q.simulate_crash();
    assert_verify_ok(dir.path(), "after the 3 MiB record");
    let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Never).max_record_bytes(1)).unwrap();
    check_all(&q, &expected, 0, "max 1 after a 3 MiB record");
    q.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// 4. SyncPolicy switched between opens
// ---------------------------------------------------------------------------------------

fn policy(i: usize) -> SyncPolicy {
    match i % 3 {
        0 => SyncPolicy::Always,
        1 => SyncPolicy::Never,
        _ => SyncPolicy::Interval(HOUR),
    }
}

/// After any crash and reopen, under any policy, what recovery kept is durable:
/// `durable_offset() == next_offset()` at open, in `stats()` too.
#[test]
fn durable_offset_at_open_is_the_next_offset_under_every_policy_pair() {
    for a in 0..3 {
        for b in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let q = Queue::open(dir.path(), opts(16 << 10, 256, policy(a))).unwrap();
            let mut expected = Vec::new();
            append_more(&q, &mut expected, 40);
            q.simulate_crash();
            let q = Queue::open(dir.path(), opts(16 << 10, 256, policy(b))).unwrap();
            let when = format!("{:?} -> {:?}", policy(a), policy(b));
            assert_eq!(q.durable_offset(), q.next_offset(), "{when}");
            assert_eq!(q.stats().durable_offset, q.next_offset(), "{when}");
            check_all(&q, &expected, 0, &when);
            // Under Always, a group delivers only durable records: all of them after the open.
            let g = q.group("g").unwrap();
            let got = g.poll_batch(1000, NO_WAIT).unwrap();
            assert_eq!(got.len(), expected.len(), "{when}: every recovered record is deliverable");
            q.close().unwrap();
            assert_verify_ok(dir.path(), &when);
        }
    }
}

/// Records acknowledged durable under `Always` survive a machine crash during a later run
/// under `Never` (or `Interval` with a long period), which acknowledged more without syncing
/// them. The power loss is modelled by dropping, in the newest segment, everything past
/// the end of the `Always` records (the `Never` run never synced it), and leaving the index
/// as the page cache had it (entries pointing at records that are gone).
#[test]
fn always_durable_records_survive_a_power_loss_under_never() {
    for later in [SyncPolicy::Never, SyncPolicy::Interval(HOUR)] {
        let dir = tempfile::tempdir().unwrap();
        run_child(dir.path(), "seg=1048576,idx=64,sync=always,append=80");
        let spans = record_spans(&std::fs::read(active_segment(dir.path())).unwrap());
        assert_eq!(spans.len(), 80);
        let durable_end = spans.last().unwrap().end;
        let q = Queue::open(dir.path(), opts(1 << 20, 64, later)).unwrap();
        assert_eq!(q.durable_offset(), 80, "{later:?}: recovered records are durable");
        let mut expected = expected_upto(80);
        let g = q.group("g").unwrap();
        for _ in 0..10 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
        // Acknowledged, not durable.
        let mut more = expected.clone();
        append_more(&q, &mut more, 60);
        assert_eq!(q.durable_offset(), 80, "{later:?}: nothing synced by the Never/Interval run");
        q.simulate_crash();
        // Power loss: what the second run wrote to the newest segment never reached the disk.
        let seg = active_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[durable_end..].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        let q = Queue::open(dir.path(), opts(1 << 20, 64, SyncPolicy::Always)).unwrap();
        check_all(&q, &expected, 0, &format!("after a power loss under {later:?}"));
        // The group's acks were not synced either, but they are in the page cache: whatever
        // it says, it must deliver every record of the log it has not acked, and never one
        // past the log's end.
        let g = q.group("g").unwrap();
        let got = g.poll_batch(1000, NO_WAIT).unwrap();
        assert!(got.iter().all(|d| d.offset() < 80), "{later:?}");
        append_more(&q, &mut expected, 10);
        check_all(&q, &expected, 0, "after appends");
        q.close().unwrap();
        assert_verify_ok(dir.path(), &format!("{later:?}"));
    }
}

/// Under `Always`, group changes are durable as they return; reopened under `Never`, the
/// same group's state must not lose them (process crash each time).
#[test]
fn group_state_survives_policy_switches_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let mut acked = 0u64;
    for round in 0..6 {
        let q = Queue::open(dir.path(), opts(8 << 10, 128, policy(round))).unwrap();
        check_all(&q, &expected, 0, &format!("round {round}"));
        append_more(&q, &mut expected, 30);
        let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(3)).unwrap();
        assert_eq!(g.ack_floor(), acked, "round {round}: acks of earlier runs kept");
        for _ in 0..20 {
            let d = g.poll(NO_WAIT).unwrap().expect("a record");
            assert_eq!(d.offset(), acked, "round {round}: in order, nothing acked redelivered");
            g.ack(d.offset()).unwrap();
            acked += 1;
        }
        q.simulate_crash();
        assert_verify_ok(dir.path(), &format!("round {round}"));
    }
}

// ---------------------------------------------------------------------------------------
// 5. Retention knobs changed between opens
// ---------------------------------------------------------------------------------------

/// A group that was closed (not opened in this run) still holds back `retain_until_consumed`
/// turned on at a reopen, whatever the size and age limits say; turned off, they apply and
/// the group counts what it lost; turned on again, nothing more of what it needs goes.
#[test]
fn retain_until_consumed_turned_on_off_and_on_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Never)).unwrap();
        append_more(&q, &mut expected, 60);
        let g = q.group("g").unwrap();
        for _ in 0..5 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
        q.simulate_crash();
    }
    // On, with a tiny size limit and an age of zero (both not consulted): appends roll and
    // run passes, which open the group from its files.
    {
        let o = opts(4096, 256, SyncPolicy::Never)
            .retain_until_consumed(true)
            .retain_bytes(4096)
            .retain_age(Duration::ZERO);
        let q = Queue::open(dir.path(), o).unwrap();
        append_more(&q, &mut expected, 60);
        q.enforce_retention().unwrap();
        let first = q.first_offset();
        assert!(first <= 5, "retention deleted records the group still needs: first offset {first}");
        let g = q.group("g").unwrap();
        assert_eq!(g.stats().lost, 0);
        assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 5);
        check_all(&q, &expected, first, "on");
        q.simulate_crash();
        assert_verify_ok(dir.path(), "on");
    }
    // Off, with a size limit: old segments go although the group has not acked them.
    let first_off;
    {
        let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Never).retain_bytes(16 << 10)).unwrap();
        let report = q.enforce_retention().unwrap();
        assert!(report.segments_deleted > 0, "{report:?}");
        first_off = q.first_offset();
        check_all(&q, &expected, first_off, "off");
        q.close().unwrap();
        assert_verify_ok(dir.path(), "off");
    }
    // On again: the group catches up (lost counted), and nothing it needs from here goes.
    {
        let o = opts(4096, 256, SyncPolicy::Always).retain_until_consumed(true).retain_bytes(4096);
        let q = Queue::open(dir.path(), o).unwrap();
        let g = q.group("g").unwrap();
        let s = g.stats();
        assert_eq!(s.ack_floor, first_off, "{s:?}");
        assert!(s.lost > 0, "{s:?}");
        append_more(&q, &mut expected, 40);
        q.enforce_retention().unwrap();
        assert_eq!(q.first_offset(), first_off, "nothing the group needs goes");
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!(d.offset(), first_off);
        check_all(&q, &expected, first_off, "on again");
        q.close().unwrap();
        assert_verify_ok(dir.path(), "on again");
    }
}

/// A dead letter holds back `retain_until_consumed` across a reopen that raises
/// `max_attempts` (it stays a dead letter) and a crash; once redriven and acked, it goes.
#[test]
fn dead_letter_holds_retention_after_max_attempts_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Always).retain_until_consumed(true)).unwrap();
        append_more(&q, &mut expected, 50);
        let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        g.nack(d.offset(), NO_WAIT).unwrap();
        while let Some(d) = g.poll(NO_WAIT).unwrap() {
            g.ack(d.offset()).unwrap();
        }
        assert_eq!(g.dead_letters().unwrap().len(), 1);
        q.simulate_crash();
    }
    let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Never).retain_until_consumed(true)).unwrap();
    let report = q.enforce_retention().unwrap();
    assert_eq!((report.segments_deleted, q.first_offset()), (0, 0), "the dead letter keeps offset 0");
    let g = q.group_with("g", GroupOptions::default().max_attempts(10)).unwrap();
    let dead = g.dead_letters().unwrap();
    assert_eq!(dead.iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(), [(0, 1)]);
    assert!(g.poll(NO_WAIT).unwrap().is_none(), "raising max_attempts does not revive a dead letter");
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0);
    check_all(&q, &expected, 0, "dead letter kept");
    q.simulate_crash();
    let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Always).retain_until_consumed(true)).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!(g.options().get_max_attempts(), 10);
    assert!(g.redrive(0).unwrap());
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (0, 1));
    g.ack(0).unwrap();
    let report = q.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0);
    let first = q.first_offset();
    check_all(&q, &expected, first, "after the redrive");
    q.close().unwrap();
    assert_verify_ok(dir.path(), "final");
}

/// `retain_bytes` lowered below the size of the (big, old) active segment: every sealed
/// segment goes, the active one stays; a group behind counts what it lost.
#[test]
fn retain_bytes_lowered_below_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let q = Queue::open(dir.path(), opts(32 << 10, 256, SyncPolicy::Never)).unwrap();
        append_more(&q, &mut expected, 300);
        q.group("g").unwrap();
        q.simulate_crash();
    }
    let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Never).retain_bytes(4096)).unwrap();
    q.enforce_retention().unwrap();
    let s = q.stats();
    assert_eq!(s.segments, 1, "{s:?}");
    let first = q.first_offset();
    check_all(&q, &expected, first, "retain_bytes 4096");
    let g = q.group("g").unwrap();
    assert_eq!(g.stats().lost, first);
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), first);
    q.close().unwrap();
    assert_verify_ok(dir.path(), "retain_bytes lowered");
}

// ---------------------------------------------------------------------------------------
// 6. GroupOptions changed while records are leased / waiting / dead
// ---------------------------------------------------------------------------------------

fn queue_with(n: u64, sync: SyncPolicy) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts(64 << 10, 256, sync)).unwrap();
    for i in 0..n {
        q.append(&pl(i)).unwrap();
    }
    (dir, q)
}

/// `max_attempts` lowered below the attempts of a record that is leased right now: it stays
/// leased (its delivery still current), and its nack dead-letters it at once, with the
/// attempts it had.
#[test]
fn max_attempts_lowered_below_a_leased_records_attempts() {
    let (dir, q) = queue_with(3, SyncPolicy::Always);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(5)).unwrap();
    for _ in 0..2 {
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!(d.offset(), 0);
        g.nack(0, NO_WAIT).unwrap();
    }
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (0, 3));
    let g2 = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(2)).unwrap();
    assert_eq!(g.options().get_max_attempts(), 2, "every handle shares the settings");
    let s = g2.stats();
    assert_eq!((s.leased, s.dead, s.max_attempts), (1, 0, 2), "{s:?}");
    assert!(g2.is_current(&d).unwrap(), "a settings change does not end a lease");
    assert!(g2.dead_letters().unwrap().is_empty());
    g2.nack(0, NO_WAIT).unwrap();
    let dead = g2.dead_letters().unwrap();
    assert_eq!(dead.iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(), [(0, 3)]);
    assert_eq!(g2.poll(NO_WAIT).unwrap().unwrap().offset(), 1);
    q.close().unwrap();
    assert_verify_ok(dir.path(), "leased");
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!(g.options().get_max_attempts(), 2);
    assert_eq!(g.dead_letters().unwrap().len(), 1);
    // Offset 1 was leased at the close: due at once, attempt 2 of 2.
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (1, 2));
}

/// A record waiting after a nack with a delay, with more attempts than the lowered limit:
/// not dead while its delay runs; dead-lettered (not delivered) once it is due.
#[test]
fn max_attempts_lowered_while_a_record_waits_after_a_nack() {
    let (dir, q) = queue_with(1, SyncPolicy::Always);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(5)).unwrap();
    for _ in 0..2 {
        g.poll(NO_WAIT).unwrap().unwrap();
        g.nack(0, NO_WAIT).unwrap();
    }
    g.poll(NO_WAIT).unwrap().unwrap();
    g.nack(0, Duration::from_millis(300)).unwrap();
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(2)).unwrap();
    let s = g.stats();
    assert_eq!((s.waiting, s.dead), (1, 0), "{s:?}");
    // Waits for the retry to fall due: it must be dead-lettered, not delivered a 4th time.
    let got = g.poll(Duration::from_secs(3)).unwrap();
    assert!(got.is_none(), "delivered past max_attempts: {:?}", got.map(|d| (d.offset(), d.attempt())));
    let dead = g.dead_letters().unwrap();
    assert_eq!(dead.iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(), [(0, 3)]);
    q.close().unwrap();
    assert_verify_ok(dir.path(), "waiting");
}

/// The same across a crash: the retry is stored with its due time; reopened with `group`
/// (stored settings) the lowered limit is kept.
#[test]
fn max_attempts_lowered_then_crash_then_group_reopen() {
    let (dir, q) = queue_with(2, SyncPolicy::Never);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(5)).unwrap();
    for _ in 0..3 {
        g.poll(NO_WAIT).unwrap().unwrap();
        g.nack(0, NO_WAIT).unwrap();
    }
    g.poll(NO_WAIT).unwrap().unwrap(); // offset 0, attempt 4, leased
    q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(3)).unwrap();
    q.simulate_crash();
    let q = Queue::open(dir.path(), opts(64 << 10, 256, SyncPolicy::Always)).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!(g.options().get_max_attempts(), 3, "stored settings");
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (1, 1), "offset 0 (4 attempts of 3) is dead, not delivered");
    let dead = g.dead_letters().unwrap();
    assert_eq!(dead.iter().map(|d| (d.offset(), d.attempts())).collect::<Vec<_>>(), [(0, 4)]);
    q.close().unwrap();
    assert_verify_ok(dir.path(), "crash");
}

/// A child aborts with one record leased at its 3rd attempt (of 5) and another at its
/// 1st. Reopened with `group_with` and a limit of 3, the first is dead at once (a crash
/// counts as an attempt), the second delivered again; with `group`, the stored 5 apply.
#[test]
fn crash_with_leased_records_then_reopen_with_another_max_attempts() {
    for lowered in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        run_child(dir.path(), "seg=65536,idx=256,sync=always,append=4,group=g:3600000:5,nack0=2,poll=2");
        let q = Queue::open(dir.path(), opts(4096, 64, SyncPolicy::Never)).unwrap();
        check_all(&q, &expected_upto(4), 0, "after the abort");
        let g = if lowered {
            q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(3)).unwrap()
        } else {
            q.group("g").unwrap()
        };
        let mut got = Vec::new();
        while let Some(d) = g.poll(NO_WAIT).unwrap() {
            got.push((d.offset(), d.attempt()));
        }
        got.sort();
        let dead: Vec<_> = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
        if lowered {
            assert_eq!(got, [(1, 2), (2, 1), (3, 1)], "max 3");
            assert_eq!(dead, [(0, 3)], "max 3");
        } else {
            assert_eq!(got, [(0, 4), (1, 2), (2, 1), (3, 1)], "stored max 5");
            assert!(dead.is_empty());
        }
        q.close().unwrap();
        assert_verify_ok(dir.path(), &format!("lowered {lowered}"));
    }
}

/// Raising `max_attempts` after records were dead-lettered leaves them dead letters (they
/// need a redrive), and the redrive starts them over with a fresh count.
#[test]
fn max_attempts_raised_after_dead_letters() {
    let (dir, q) = queue_with(3, SyncPolicy::Always);
    let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
    for _ in 0..3 {
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        g.nack(d.offset(), NO_WAIT).unwrap();
    }
    assert_eq!(g.dead_letters().unwrap().len(), 3);
    q.simulate_crash();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group_with("g", GroupOptions::default().max_attempts(4)).unwrap();
    assert_eq!(g.dead_letters().unwrap().len(), 3, "still dead");
    assert!(g.poll(NO_WAIT).unwrap().is_none());
    assert!(g.redrive(1).unwrap());
    for attempt in 1..=4 {
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!((d.offset(), d.attempt()), (1, attempt));
        g.nack(1, NO_WAIT).unwrap();
    }
    assert!(g.poll(NO_WAIT).unwrap().is_none());
    let dead: Vec<_> = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
    assert_eq!(dead, [(0, 1), (1, 4), (2, 1)]);
    q.close().unwrap();
    assert_verify_ok(dir.path(), "raised");
}

/// The lease shortened while a record is leased: that record keeps the deadline it was
/// given (rustdoc of `group_with`), later deliveries get the new lease.
#[test]
fn lease_shortened_while_a_record_is_leased_keeps_its_deadline() {
    let (_dir, q) = queue_with(2, SyncPolicy::Never);
    let g = q.group_with("g", GroupOptions::default().lease(HOUR)).unwrap();
    let a = g.poll(NO_WAIT).unwrap().unwrap();
    q.group_with("g", GroupOptions::default().lease(Duration::from_millis(20))).unwrap();
    let b = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((a.offset(), b.offset()), (0, 1));
    // b's 20 ms lease runs out; a's hour does not.
    let again = g.poll(Duration::from_secs(10)).unwrap().expect("b delivered again");
    assert_eq!((again.offset(), again.attempt()), (1, 2));
    assert!(g.is_current(&a).unwrap());
    let s = g.stats();
    assert_eq!(s.leased + s.waiting, 2, "{s:?}");
    // Lengthened again: b's current 20 ms lease keeps its deadline, its next one is the hour.
    q.group_with("g", GroupOptions::default().lease(HOUR)).unwrap();
    let b3 = g.poll(Duration::from_secs(10)).unwrap().expect("b delivered a third time");
    assert_eq!((b3.offset(), b3.attempt()), (1, 3));
    let c = g.poll(Duration::from_millis(200)).unwrap();
    assert!(c.is_none(), "nothing due: {:?}", c.map(|d| (d.offset(), d.attempt())));
    assert!(g.is_current(&a).unwrap() && g.is_current(&b3).unwrap());
}

/// `Duration::MAX` as a lease is stored as `u64::MAX` ms; reopening with `group_with` and
/// the same options must not count as a change, and the group must work.
#[test]
fn lease_of_duration_max_survives_reopen() {
    let (dir, q) = queue_with(3, SyncPolicy::Always);
    let g = q.group_with("g", GroupOptions::default().lease(Duration::MAX).max_attempts(u32::MAX)).unwrap();
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert!(g.extend_delivery(&d, Duration::MAX).unwrap());
    q.simulate_crash();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group_with("g", GroupOptions::default().lease(Duration::MAX).max_attempts(u32::MAX)).unwrap();
    assert_eq!(g.stats().lease_ms, u64::MAX);
    assert_eq!(g.options().get_max_attempts(), u32::MAX);
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (0, 2));
    q.close().unwrap();
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!(g.options().get_max_attempts(), u32::MAX);
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (0, 3));
    g.nack(0, Duration::MAX).unwrap(); // due at the end of time
    q.close().unwrap();
    assert_verify_ok(dir.path(), "Duration::MAX");
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_segq")).arg("groups").arg(dir.path()).arg("g").output().unwrap();
    assert!(
        out.status.success(),
        "segq groups: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    let g = q.group_with("g", GroupOptions::default().lease(Duration::from_millis(1)).max_attempts(1)).unwrap();
    assert!(g.poll(NO_WAIT).unwrap().unwrap().offset() == 1, "offset 0 waits for ever");
    assert_eq!(g.stats().waiting, 1);
}

/// The settings changed by `group_with` on an open group, then a crash right away (under
/// `Never`): the reopen with `group` finds the new settings, and every ack made before.
#[test]
fn group_with_then_crash_keeps_new_settings_and_acks() {
    let (dir, q) = queue_with(10, SyncPolicy::Never);
    let g = q.group("g").unwrap();
    for _ in 0..4 {
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        g.ack(d.offset()).unwrap();
    }
    g.poll(NO_WAIT).unwrap().unwrap(); // offset 4 leased
    q.group_with("g", GroupOptions::default().lease(Duration::from_secs(7)).max_attempts(2)).unwrap();
    q.simulate_crash();
    let q = Queue::open(dir.path(), opts(4096, 1, SyncPolicy::Always)).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!(g.options(), GroupOptions::default().lease(Duration::from_secs(7)).max_attempts(2));
    assert_eq!(g.ack_floor(), 4);
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), d.attempt()), (4, 2));
    q.close().unwrap();
    assert_verify_ok(dir.path(), "group_with then crash");
}

/// `group_with` whose snapshot cannot be synced (an `EIO` from fsync): the call fails and
/// poisons the group while syncs fail; after a crash, the group opens with either the old
/// or the new settings, and loses no ack. Without the crash, once syncs work, the group
/// goes on with the old settings.
#[test]
fn group_with_whose_snapshot_sync_fails_then_crash() {
    use segq::fault::{self, Fault, Point};
    let (dir, q) = queue_with(10, SyncPolicy::Always);
    let g = q.group("g").unwrap();
    for _ in 0..4 {
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        g.ack(d.offset()).unwrap();
    }
    let gdir = dir.path().join("groups").join("g");
    fault::inject(Fault::new(&gdir, Point::Sync).times(u64::MAX));
    let new = GroupOptions::default().lease(Duration::from_secs(9)).max_attempts(2);
    let r = q.group_with("g", new);
    assert!(r.is_err(), "the failed sync is reported");
    assert!(matches!(g.poll(NO_WAIT), Err(Error::Poisoned(_))));
    fault::clear(&gdir);
    // A crash now, in a copy.
    let crashed = tempfile::tempdir().unwrap();
    common::copy_tree(dir.path(), crashed.path());
    // This process goes on, with the old settings.
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    assert_eq!((d.offset(), g.options()), (4, GroupOptions::default()));
    g.ack(4).unwrap();
    q.close().unwrap();
    drop((g, q));
    let q = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(q.group("g").unwrap().options(), GroupOptions::default());
    assert_eq!(q.group("g").unwrap().ack_floor(), 5);
    q.close().unwrap();
    assert_verify_ok(dir.path(), "after the repair");
    let q = Queue::open(crashed.path(), Options::default()).unwrap();
    let g = q.group("g").unwrap();
    let o = g.options();
    assert!(o == GroupOptions::default() || o == new, "{o:?}");
    assert_eq!(g.ack_floor(), 4);
    assert_eq!(g.poll(NO_WAIT).unwrap().unwrap().offset(), 4);
    q.close().unwrap();
    assert_verify_ok(crashed.path(), "after the failed group_with");
}

// ---------------------------------------------------------------------------------------
// 7. Options::default() on a directory made with other options, and back
// ---------------------------------------------------------------------------------------

fn non_default() -> Options {
    Options::default()
        .segment_bytes(4096)
        .index_interval_bytes(24)
        .max_record_bytes(6000)
        .sync(SyncPolicy::Never)
        .retain_bytes(1 << 30)
}

#[test]
fn default_options_on_a_non_default_directory_and_back() {
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        {
            let q = Queue::open(dir.path(), non_default()).unwrap();
            append_more(&q, &mut expected, 120);
            q.group_with("g", GroupOptions::default().lease(Duration::from_secs(2)).max_attempts(7)).unwrap();
            end(q, if crash { End::Crash } else { End::Close });
        }
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        let when = format!("default after non-default (crash {crash})");
        check_all(&q, &expected, 0, &when);
        assert_eq!(std::fs::metadata(active_segment(dir.path())).unwrap().len(), 64 << 20, "{when}: grown");
        assert_eq!(
            q.group("g").unwrap().options(),
            GroupOptions::default().lease(Duration::from_secs(2)).max_attempts(7)
        );
        let big = vec![0x5A; 1 << 20];
        q.append(&big).unwrap();
        expected.push(big);
        append_more(&q, &mut expected, 20);
        check_all(&q, &expected, 0, &format!("{when}, appended"));
        end(q, if crash { End::Crash } else { End::Close });
        assert_verify_ok(dir.path(), &when);

        let q = Queue::open(dir.path(), non_default()).unwrap();
        let when = format!("non-default again (crash {crash})");
        check_all(&q, &expected, 0, &when);
        assert_eq!(std::fs::metadata(active_segment(dir.path())).unwrap().len(), 64 << 20, "{when}: never shrinks");
        assert!(matches!(q.append(&[0; 6001]), Err(Error::RecordTooLarge { size: 6001, limit: 6000 })));
        append_more(&q, &mut expected, 20);
        check_all(&q, &expected, 0, &format!("{when}, appended"));
        q.close().unwrap();
        assert_verify_ok(dir.path(), &when);
    }
}

/// The checkpoint names positions in the active segment only; none of the options is
/// stored. A clean close under one set of options reopens clean (nothing scanned) under
/// another, with the same end of data.
#[test]
fn a_clean_close_stays_clean_under_other_options() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let q = Queue::open(dir.path(), non_default()).unwrap();
    append_more(&q, &mut expected, 50);
    q.close().unwrap();
    let ck = std::fs::read(dir.path().join("checkpoint")).unwrap();
    let (_, _, next, clean) = checkpoint_slot(&ck, 0).unwrap();
    assert!(clean && next == 50);
    for o in [Options::default(), opts(1 << 20, 1, SyncPolicy::Interval(HOUR)), opts(4096, u32::MAX, SyncPolicy::Never)]
    {
        let q = Queue::open(dir.path(), o.clone()).unwrap();
        assert!(q.recovery().clean, "{o:?}: {:?}", q.recovery());
        assert_eq!(q.recovery().scanned_bytes, 0);
        check_all(&q, &expected, 0, &format!("{o:?}"));
        q.close().unwrap();
    }
    assert_verify_ok(dir.path(), "clean");
}

// ---------------------------------------------------------------------------------------
// Extra probes
// ---------------------------------------------------------------------------------------

/// A child appends under `Interval` until its first roll and aborts at once, 40 times:
/// whether the sealer cut the index before the abort is a race, so this is `#[ignore]`d (a
/// long run). Before session 20, 2 to 5 runs in 40 left a directory that `segq verify`
/// called damaged (the uncut index's zeros;
/// `cli_agrees_with_recovery::a_sealed_index_whose_cut_never_ran_is_a_warning_not_damage`).
#[test]
#[ignore = "a long run of real aborts: cargo test --release --test options_between_opens -- --ignored"]
fn interval_abort_right_after_a_roll_is_not_damage_racy() {
    let mut bad = Vec::new();
    for i in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        run_child(dir.path(), "seg=4096,idx=64,sync=interval,until_segments=2");
        let (code, text) = segq_verify(dir.path());
        if code != 0 {
            bad.push(format!("run {i}: {text}"));
        }
        let q = Queue::open(dir.path(), Options::default()).unwrap();
        check_all(&q, &expected_upto(q.next_offset()), 0, &format!("run {i}"));
        q.close().unwrap();
    }
    assert!(bad.is_empty(), "{} of 40 aborted directories reported as damaged:\n{}", bad.len(), bad.join("\n"));
}

/// Seeded rounds of real aborts (no drain of the background seal, whatever it was doing)
/// with random options, each reopened by the next child with other random options; the
/// parent checks every record whose append returned, and `segq verify`.
#[test]
fn random_options_between_child_aborts() {
    // Fixed unless `SEGQ_OPTIONS_SEED` says otherwise (what a child does before its
    // abort is fixed; how far its background seal got is not, and every outcome must pass).
    let seed = std::env::var("SEGQ_OPTIONS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x0975);
    eprintln!("seed SEGQ_OPTIONS_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0u64;
    for round in 0..14 {
        let seg = [4096u64, 4099, 6000, 16 << 10, 64 << 10][rng.below(5) as usize];
        let idx = [1u32, 24, 64, 256, 4096, u32::MAX][rng.below(6) as usize];
        let sync = ["always", "never", "interval"][rng.below(3) as usize];
        let n = rng.range(5..120);
        let script = if rng.chance(50) {
            format!("seg={seg},idx={idx},sync={sync},append={n}")
        } else {
            let target = segment_files(dir.path()).len() + 1 + rng.below(3) as usize;
            format!("seg={seg},idx={idx},sync={sync},until_segments={target}")
        };
        run_child(dir.path(), &script);
        let (code, text) = segq_verify(dir.path());
        assert_eq!(code, 0, "round {round} ({script}): verify exit {code}\n{text}");
        let seg2 = [4096u64, 8192, 1 << 20][rng.below(3) as usize];
        let idx2 = [1u32, 512, u32::MAX][rng.below(3) as usize];
        let q = Queue::open(dir.path(), opts(seg2, idx2, SyncPolicy::Never)).unwrap();
        assert!(q.next_offset() >= next, "round {round} ({script}): lost records: {} < {next}", q.next_offset());
        next = q.next_offset();
        check_all(&q, &expected_upto(next), 0, &format!("round {round} ({script}) reopened {seg2}/{idx2}"));
        q.close().unwrap();
    }
}

/// The largest segment size on a directory written with small segments, after a crash,
/// and back to the smallest: the active segment grows to 4 GiB − 1 (never shrinks after).
#[test]
fn segment_bytes_at_the_limits_between_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let q = Queue::open(dir.path(), opts(segq::MIN_SEGMENT_BYTES, 512, SyncPolicy::Never)).unwrap();
    append_more(&q, &mut expected, 40);
    q.simulate_crash();
    let q = Queue::open(dir.path(), opts(segq::MAX_SEGMENT_BYTES, 512, SyncPolicy::Never)).unwrap();
    check_all(&q, &expected, 0, "reopened at the maximum");
    assert_eq!(std::fs::metadata(active_segment(dir.path())).unwrap().len(), segq::MAX_SEGMENT_BYTES);
    append_more(&q, &mut expected, 40);
    q.simulate_crash();
    let q = Queue::open(dir.path(), opts(segq::MIN_SEGMENT_BYTES, 1, SyncPolicy::Always)).unwrap();
    check_all(&q, &expected, 0, "back at the minimum");
    assert_eq!(std::fs::metadata(active_segment(dir.path())).unwrap().len(), segq::MAX_SEGMENT_BYTES);
    append_more(&q, &mut expected, 40);
    check_all(&q, &expected, 0, "back at the minimum, appended");
    q.close().unwrap();
    assert_verify_ok(dir.path(), "at the minimum, closed");
}

/// The files of `dir` (recursively), by path.
fn read_tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A power loss of the files under `sub`: each byte that no sync of the run covered is put
/// back as it was before the run (`before`); a file that did not exist before and was never
/// synced is gone.
fn lose_power(sub: &Path, before: &std::collections::BTreeMap<PathBuf, Vec<u8>>, synced: &[segq::fault::Synced]) {
    let after = read_tree(sub);
    for (path, now) in &after {
        let ranges: Vec<_> = synced.iter().filter(|s| &s.path == path).map(|s| s.range.clone()).collect();
        if ranges.iter().any(|r| r.start == 0 && r.end == u64::MAX) {
            continue;
        }
        let Some(old) = before.get(path) else {
            std::fs::remove_file(path).unwrap();
            continue;
        };
        let mut out = old.clone();
        out.resize(now.len(), 0);
        for r in ranges {
            let (a, b) = (r.start as usize, (r.end as usize).min(now.len()));
            if a < b {
                out[a..b].copy_from_slice(&now[a..b]);
            }
        }
        std::fs::write(path, &out).unwrap();
    }
}

/// Group changes made durable under `Always` (acks, an attempt counted) survive a power
/// loss during a later run under `Never` that changed the group's settings (a snapshot) and
/// acked more without syncing.
#[test]
fn group_changes_durable_under_always_survive_a_power_loss_under_never() {
    use segq::fault;
    let dir = tempfile::tempdir().unwrap();
    let gdir = dir.path().join("groups");
    fault::audit(dir.path());
    {
        let q = Queue::open(dir.path(), opts(64 << 10, 256, SyncPolicy::Always)).unwrap();
        for i in 0..40 {
            q.append(&pl(i)).unwrap();
        }
        let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(3)).unwrap();
        for _ in 0..10 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!((d.offset(), d.attempt()), (10, 1));
        q.simulate_crash();
    }
    let before = read_tree(&gdir);
    fault::take_synced(dir.path());
    {
        let q = Queue::open(dir.path(), opts(64 << 10, 256, SyncPolicy::Never)).unwrap();
        let g = q.group_with("g", GroupOptions::default().lease(HOUR).max_attempts(5)).unwrap();
        let d = g.poll(NO_WAIT).unwrap().unwrap();
        assert_eq!((d.offset(), d.attempt()), (10, 2));
        g.ack(10).unwrap();
        for _ in 0..10 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
        q.simulate_crash();
    }
    let synced = fault::take_synced(dir.path());
    assert!(synced.iter().any(|s| s.path.starts_with(&gdir)), "the snapshot of group_with was synced: {synced:?}");
    let crashed = read_tree(&gdir);
    lose_power(&gdir, &before, &synced);
    assert!(read_tree(&gdir) != crashed, "the power loss dropped the unsynced acks");
    let q = Queue::open(dir.path(), opts(64 << 10, 256, SyncPolicy::Always)).unwrap();
    check_all(&q, &expected_upto(40), 0, "after the power loss");
    let g = q.group("g").unwrap();
    assert_eq!(g.options().get_max_attempts(), 5, "the settings group_with returned with were synced");
    assert!(g.ack_floor() >= 10, "acks synced under Always lost: floor {}", g.ack_floor());
    let d = g.poll(NO_WAIT).unwrap().unwrap();
    if d.offset() == 10 {
        assert!(d.attempt() >= 2, "an attempt synced under Always was lost: {}", d.attempt());
    }
    q.close().unwrap();
    assert_verify_ok(dir.path(), "after the power loss");
}

/// Seeded rounds of child aborts that consume through a group with random settings (and
/// random queue options), some leaving records leased at the abort. After each, the parent
/// reopens (with `group`, the stored settings) and checks: the ack floor never goes back,
/// a dead letter stays one, the settings are the last ones given, nothing acked is
/// delivered again, and `segq verify` passes.
#[test]
fn random_group_options_between_child_aborts() {
    let seed = std::env::var("SEGQ_OPTIONS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6a0f);
    eprintln!("seed SEGQ_OPTIONS_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut floor = 0;
    let mut dead: Vec<(u64, u32)> = Vec::new();
    let mut acked = std::collections::BTreeSet::new();
    for round in 0..12 {
        let seg = [4096u64, 16 << 10, 1 << 20][rng.below(3) as usize];
        let idx = [1u32, 256, u32::MAX][rng.below(3) as usize];
        let sync = ["always", "never", "interval"][rng.below(3) as usize];
        let lease = [1u64, 3_600_000][rng.below(2) as usize];
        let max = rng.range(1..5);
        let (n, a, p) = (rng.range(0..40), rng.range(0..30), rng.range(0..5));
        let script = format!("seg={seg},idx={idx},sync={sync},append={n},group=g:{lease}:{max},gpoll={p},gack={a}");
        run_child(dir.path(), &script);
        let (code, text) = segq_verify(dir.path());
        assert_eq!(code, 0, "round {round} ({script}): verify exit {code}\n{text}");
        let q = Queue::open(dir.path(), opts(8192, 64, SyncPolicy::Never)).unwrap();
        let next = q.next_offset();
        check_all(&q, &expected_upto(next), 0, &format!("round {round} ({script})"));
        let g = q.group("g").unwrap();
        let o = g.options();
        assert_eq!((o.get_lease(), o.get_max_attempts()), (Duration::from_millis(lease), max as u32), "round {round}");
        let now_dead: Vec<(u64, u32)> = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
        for d in &dead {
            assert!(now_dead.contains(d), "round {round} ({script}): dead letter {d:?} gone: {now_dead:?}");
        }
        let f = g.ack_floor();
        assert!(f >= floor, "round {round} ({script}): ack floor went back {floor} -> {f}");
        // Deliver what is left (without acking) to see that nothing acked comes back.
        for d in g.poll_batch(10_000, NO_WAIT).unwrap() {
            assert!(!acked.contains(&d.offset()), "round {round} ({script}): acked {} delivered again", d.offset());
            assert!(d.attempt() <= max as u32, "round {round}: attempt {} of {max}", d.attempt());
        }
        // The parent's own poll_batch above left those leased; note what the children acked
        // from the journal's point of view: everything below the floor that is not dead.
        for o in 0..f {
            if !now_dead.iter().any(|d| d.0 == o) {
                acked.insert(o);
            }
        }
        floor = f;
        dead = now_dead;
        q.simulate_crash();
    }
}

/// `retain_age` turned on at a reopen: a day keeps everything fresh; zero under
/// `retain_until_consumed` is not consulted (the group's records stay); a group's acks
/// made under one policy and a crash count for a pass under another.
#[test]
fn retain_age_changed_between_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Never)).unwrap();
        append_more(&q, &mut expected, 80);
        let g = q.group("g").unwrap();
        for _ in 0..20 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.ack(d.offset()).unwrap();
        }
        q.simulate_crash();
    }
    let day = Duration::from_secs(86_400);
    let q = Queue::open(dir.path(), opts(4096, 256, SyncPolicy::Always).retain_age(day)).unwrap();
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0, "nothing is a day old");
    check_all(&q, &expected, 0, "retain_age a day");
    q.simulate_crash();
    let o = opts(4096, 256, SyncPolicy::Interval(HOUR)).retain_age(Duration::ZERO).retain_until_consumed(true);
    let q = Queue::open(dir.path(), o).unwrap();
    q.enforce_retention().unwrap();
    let first = q.first_offset();
    assert!(first <= 20, "deleted what the group had not acked: first offset {first}");
    check_all(&q, &expected, first, "retain_age 0 + until consumed");
    let g = q.group("g").unwrap();
    assert_eq!((g.stats().lost, g.poll(NO_WAIT).unwrap().unwrap().offset()), (0, 20));
    q.close().unwrap();
    assert_verify_ok(dir.path(), "retain_age");
}
