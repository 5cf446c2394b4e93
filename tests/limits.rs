//! segq at its limits: options, offsets, durations and group names at their extremes, files
//! changed under a live queue or between opens, and the `segq` binary with odd arguments.
//! Nothing may panic or hang, and a derived file that cannot be written costs no reads.
mod cli_support;

use cli_support::common::*;
use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NO_WAIT: Duration = Duration::ZERO;

/// Runs `f` on a thread and waits up to `secs` for it: `None` if it did not finish.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

/// What one run of the binary did: exit code (None: killed by a signal or timed out).
#[derive(Debug)]
#[allow(dead_code)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `segq` with `args`, killing it after 30 s (then the test fails: a hang).
fn segq_run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_segq"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = child.id();
    let out = within(30, move || child.wait_with_output().unwrap());
    let Some(out) = out else {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("segq {shown:?} hangs");
    };
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_no_panic(run: &Run, what: &str) {
    assert!(!run.stderr.contains("panicked"), "{what}: segq panicked:\n{}", run.stderr);
    assert!(run.code.is_some_and(|c| c != 101), "{what}: exit {:?}\n{}", run.code, run.stderr);
}

fn opts() -> Options {
    tiny(4096)
}

fn filled(n: u64) -> tempfile::TempDir {
    closed_queue(opts(), n)
}

/// A folder where a sealed segment's index should be: the index is rebuilt and, as it
/// cannot be stored, used from memory; every record reads. (Until session 19 every read of
/// the segment failed with `IsADirectory`, the error of storing the rebuilt index.)
#[test]
fn a_directory_in_place_of_a_sealed_index_costs_no_reads() {
    let dir = filled(100);
    let segs = segment_files(dir.path());
    assert!(segs.len() > 2);
    let idx = segs[0].with_extension("index");
    std::fs::remove_file(&idx).unwrap();
    std::fs::create_dir(&idx).unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    let read = q.read(0);
    assert!(
        matches!(&read, Ok(Some(r)) if r.payload() == payload(0)),
        "record 0 of a healthy segment is unreadable because its index path is a directory: {:?}",
        read.map(|r| r.map(|r| r.offset()))
    );
    let ok = q.iter_from(0).filter(|r| r.is_ok()).count();
    assert_eq!(ok, 100, "iteration reaches only {ok} of the 100 records");
}

/// The same folder does not stall a consumer group: every record is delivered. (Until
/// session 19 each `poll` returned the same `IsADirectory` error, for good.)
#[test]
fn a_directory_in_place_of_a_sealed_index_does_not_stall_a_group() {
    let dir = filled(100);
    let segs = segment_files(dir.path());
    let idx = segs[0].with_extension("index");
    std::fs::remove_file(&idx).unwrap();
    std::fs::create_dir(&idx).unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    let g = q.group("g").unwrap();
    let mut delivered = 0;
    let mut errors = Vec::new();
    for _ in 0..200 {
        match g.poll(NO_WAIT) {
            Ok(Some(d)) => {
                g.ack(d.offset()).unwrap();
                delivered += 1;
            }
            Ok(None) => break,
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert_eq!(
        delivered,
        100,
        "the group delivered {delivered} of 100 records; errors: {:?}",
        &errors[..errors.len().min(2)]
    );
}

/// A sealed segment's lost index rebuilt on a full disk: the rebuilt entries are used from
/// memory, and no temporary file is left. (Until session 19 the read failed with
/// `StorageFull`.)
#[test]
fn a_full_disk_while_rebuilding_a_sealed_index_costs_no_reads() {
    use segq::fault::{self, Fault, Point};
    let dir = filled(100);
    let segs = segment_files(dir.path());
    std::fs::remove_file(segs[0].with_extension("index")).unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    fault::inject(Fault::new(dir.path(), Point::Write).times(u64::MAX).errno(fault::ENOSPC));
    let read = q.read(0).map(|r| r.map(|r| r.payload().to_vec()));
    fault::clear(dir.path());
    assert!(
        matches!(&read, Ok(Some(p)) if *p == payload(0)),
        "an index rebuild that cannot be written makes record 0 unreadable: {read:?}"
    );
    let index = segs[0].with_extension("index");
    assert!(!index.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(!left.iter().any(|p| p.extension().is_some_and(|x| x == "tmp")), "a temporary file was left: {left:?}");
    let last = segment_base(&segs[1]) - 1;
    assert_eq!(q.read(last).unwrap().unwrap().payload(), payload(last));
    q.close().unwrap();
    // With room again, the next open's first read stores it.
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_holds(&q, &(0..100).map(payload).collect::<Vec<_>>());
    assert!(index.is_file(), "the rebuilt index was not stored once there was room");
}

/// Index intervals at their extremes (1, around a record header, `u32::MAX`), an empty-only
/// payload limit and a 1 ns flush interval: every record reads back, also after a reopen.
#[test]
fn options_at_their_extremes_keep_every_record() {
    for interval in [1u32, 23, 24, 25, u32::MAX] {
        let dir = tempfile::tempdir().unwrap();
        let o = opts().index_interval_bytes(interval);
        let payloads: Vec<Vec<u8>> = (0..200).map(payload).collect();
        let q = Queue::open(dir.path(), o.clone()).unwrap();
        append_all(&q, 0, &payloads);
        assert_holds(&q, &payloads);
        q.close().unwrap();
        let q = Queue::open(dir.path(), o.index_interval_bytes(512)).unwrap();
        assert_holds(&q, &payloads);
    }
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().max_record_bytes(0)).unwrap();
    assert_eq!(q.append(b"").unwrap(), 0);
    assert!(matches!(q.append(b"x"), Err(Error::RecordTooLarge { size: 1, limit: 0 })));
    assert!(matches!(q.append_batch(&[b"".as_slice(), b"x"]), Err(Error::RecordTooLarge { .. })));
    assert_eq!(q.next_offset(), 1);
    drop(q);
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts().sync(SyncPolicy::Interval(Duration::from_nanos(1)))).unwrap();
    for i in 0..50 {
        q.append(&payload(i)).unwrap();
    }
    q.close().unwrap();
    assert_eq!(Queue::open(dir.path(), opts()).unwrap().next_offset(), 50);
}

/// Retention limits at 0 and at the maximum: age `ZERO` and size 0 delete every sealed
/// segment (never the active one), age `Duration::MAX` and size `u64::MAX` none; no overflow.
#[test]
fn retention_limits_at_zero_and_at_the_maximum() {
    let cases = [
        (opts().retain_age(Duration::ZERO), true),
        (opts().retain_bytes(0), true),
        (opts().retain_age(Duration::MAX), false),
        (opts().retain_bytes(u64::MAX), false),
        (opts().retain_age(Duration::MAX).retain_bytes(u64::MAX).retain_until_consumed(true), false),
    ];
    for (o, deletes_all_sealed) in cases {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), o.clone()).unwrap();
        for i in 0..100 {
            q.append(&payload(i)).unwrap();
        }
        q.enforce_retention().unwrap();
        if deletes_all_sealed {
            assert_eq!(q.stats().segments, 1, "{o:?}");
            assert_eq!(q.read(q.first_offset()).unwrap().unwrap().payload(), payload(q.first_offset()));
        } else {
            assert_eq!(q.first_offset(), 0, "{o:?}");
        }
        assert_eq!(q.next_offset(), 100);
        q.close().unwrap();
    }
}

/// Group calls at their edges: `max_attempts(u32::MAX)`, empty `ack_batch`/`nack_batch`,
/// `poll_batch(usize::MAX)`, `extend_delivery`/`nack_batch` with `Duration::MAX`,
/// `extend_lease`/`redrive` of `u64::MAX`, `seek(u64::MAX)`; the group reopens after them.
#[test]
fn group_calls_at_their_edges() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    for i in 0..10 {
        q.append(&payload(i)).unwrap();
    }
    let g = q.group_with("g", GroupOptions::default().max_attempts(u32::MAX).lease(Duration::from_millis(1))).unwrap();
    g.ack_batch(&[]).unwrap();
    g.nack_batch(&[], Duration::MAX).unwrap();
    assert!(matches!(g.extend_lease(u64::MAX, Duration::MAX), Err(Error::NotDelivered { .. })));
    let batch = g.poll_batch(usize::MAX, NO_WAIT).unwrap();
    assert_eq!(batch.len(), 10);
    for d in &batch {
        assert!(g.extend_delivery(d, Duration::MAX).unwrap());
    }
    g.nack_batch(&batch.iter().map(|d| d.offset()).collect::<Vec<_>>(), Duration::MAX).unwrap();
    assert_eq!(g.stats().waiting, 10);
    assert!(g.poll(NO_WAIT).unwrap().is_none());
    g.seek(u64::MAX).unwrap();
    assert_eq!(g.ack_floor(), 10);
    g.seek(0).unwrap();
    assert!(!g.redrive(u64::MAX).unwrap());
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    let g = q.group("g").unwrap();
    assert_eq!(g.options().get_max_attempts(), u32::MAX);
    assert_eq!(g.poll_batch(100, NO_WAIT).unwrap().len(), 10);
}

/// Wall-clock moments far in the past (before the epoch) and far in the future, and a
/// live iterator waiting with `Duration::MAX`.
#[test]
fn times_far_from_now_and_a_wait_for_ever() {
    let dir = filled(20);
    let q = std::sync::Arc::new(Queue::open(dir.path(), opts()).unwrap());
    assert_eq!(q.offset_since(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2)).unwrap(), 20);
    assert_eq!(q.offset_since(UNIX_EPOCH - Duration::from_secs(1 << 40)).unwrap(), 0);
    assert_eq!(q.offset_since(UNIX_EPOCH).unwrap(), 0);
    assert_eq!(q.offset_since(SystemTime::now() + Duration::from_secs(10)).unwrap(), 20);
    let mut it = q.iter_from(20);
    let w = q.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        w.append(b"late").unwrap();
    });
    let got = within(30, move || it.next_timeout(Duration::MAX).map(|r| r.map(|r| r.payload().to_vec())));
    assert!(matches!(got, Some(Some(Ok(ref p))) if p == b"late"), "{got:?}");
    writer.join().unwrap();
}

/// Valid names that look like segq's own files or flags ("groups", "state", "journal",
/// "lock", "x.tmp", "--json", "...", names differing by case, 128 characters) are groups
/// like any other, across a reopen; 255/256-byte, NUL and non-ASCII names are refused by
/// `delete_group` too.
#[test]
fn group_names_that_look_like_files_or_flags() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a".repeat(128);
    let names = [
        "groups",
        "state",
        "journal",
        "state.1",
        "lock",
        "a.tmp",
        "x.tmp",
        "-",
        "--json",
        "...",
        "A",
        "a",
        long.as_str(),
    ];
    {
        let q = Queue::open(dir.path(), opts()).unwrap();
        q.append(b"x").unwrap();
        for name in names {
            let g = q.group(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let d = g.poll(NO_WAIT).unwrap().expect(name);
            g.ack(d.offset()).unwrap();
        }
        for bad in ["a".repeat(255), "a".repeat(256), "a\0b".into(), "é".into(), " ".into(), "a/b".into()] {
            assert!(matches!(q.group(&bad), Err(Error::InvalidGroupName { .. })));
            assert!(matches!(q.delete_group(&bad), Err(Error::InvalidGroupName { .. })));
        }
        q.close().unwrap();
    }
    let q = Queue::open(dir.path(), opts()).unwrap();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(q.groups().unwrap(), expected);
    for name in names {
        assert_eq!(q.group(name).unwrap().ack_floor(), 1, "{name}");
    }
}

/// A group's `state`, `state.1` or `journal` replaced by a directory or a FIFO between
/// opens: `Queue::group` fails with an error (never hangs), the log and retention work.
#[test]
fn group_files_of_the_wrong_type_are_errors_not_hangs() {
    for (file, kind) in [
        ("state", "dir"),
        ("journal", "dir"),
        ("state", "fifo"),
        ("journal", "fifo"),
        ("state.1", "dir"),
        ("state.1", "fifo"),
    ] {
        let dir = filled(10);
        {
            let q = Queue::open(dir.path(), opts()).unwrap();
            let g = q.group("g").unwrap();
            g.ack(g.poll(NO_WAIT).unwrap().unwrap().offset()).unwrap();
            q.close().unwrap();
        }
        let p = dir.path().join("groups/g").join(file);
        let _ = std::fs::remove_file(&p);
        if kind == "dir" {
            std::fs::create_dir(&p).unwrap();
        } else {
            assert!(Command::new("mkfifo").arg(&p).status().unwrap().success());
        }
        let path = dir.path().to_path_buf();
        let r = within(30, move || {
            let q = Queue::open(&path, opts()).unwrap();
            let g = q.group("g").map(|g| g.ack_floor());
            q.enforce_retention().unwrap();
            assert_eq!(q.read(9).unwrap().unwrap().payload(), payload(9));
            g.map_err(|e| e.to_string())
        });
        let r = r.unwrap_or_else(|| panic!("{file} as a {kind} hangs"));
        assert!(r.is_err(), "{file} as a {kind}: {r:?}");
    }
}

/// The queue's directory renamed or removed while the queue is open: appends into the
/// mapped segment go on, the roll fails with an error, groups, retention, flush and close
/// answer with results, never a panic.
#[test]
fn a_queue_directory_renamed_or_removed_while_open_gives_errors() {
    for how in ["rename", "remove"] {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("q");
        let q = Queue::open(&path, opts().sync(SyncPolicy::Always)).unwrap();
        let g = q.group("g").unwrap();
        q.append(b"first").unwrap();
        match how {
            "rename" => std::fs::rename(&path, parent.path().join("moved")).unwrap(),
            _ => std::fs::remove_dir_all(&path).unwrap(),
        }
        let failed = (0..40).map(|i| q.append(&payload(i).repeat(3))).filter(|r| r.is_err()).count();
        assert!(failed > 0, "{how}: a roll into a missing directory succeeded");
        for _ in 0..3000 {
            if let Ok(Some(d)) = g.poll(NO_WAIT) {
                let _ = g.ack(d.offset());
            }
        }
        let _ = q.enforce_retention();
        let _ = q.flush();
        assert_eq!(q.read(0).unwrap().unwrap().payload(), b"first");
        let _ = q.close();
    }
}

/// A sealed segment replaced by a directory under a live queue: its records are missing,
/// as when a segment is missing at open (`Corrupt`, a `Gap` naming it), iteration goes on
/// at the next segment, and a reopen still opens.
#[test]
fn a_sealed_segment_replaced_by_a_directory_under_a_live_queue() {
    let dir = filled(100);
    let q = Queue::open(dir.path(), opts()).unwrap();
    let segs = segment_files(dir.path());
    std::fs::remove_file(&segs[0]).unwrap();
    std::fs::create_dir(&segs[0]).unwrap();
    let err = q.read(0).unwrap_err();
    let gap = segq::CorruptKind::Gap { from: 0, to: segment_base(&segs[1]) };
    assert!(matches!(&err, Error::Corrupt { path, kind, .. } if *path == segs[0] && *kind == gap), "{err:?}");
    let items: Vec<_> = q.iter_from(0).collect();
    assert!(items[0].is_err());
    assert_eq!(items.iter().filter(|r| r.is_ok()).count(), 100 - segment_base(&segs[1]) as usize);
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts()).unwrap();
    assert_eq!(q.next_offset(), 100);
}

/// Every read command of `segq`, with and without `--json`, on odd paths (missing, a file,
/// a FIFO, empty, `/`, `/dev/null`) and odd numbers (`--from`/`--limit` of 0, `u64::MAX`,
/// past `u64::MAX`, negative, not a number): never a panic or a hang.
#[test]
fn the_binary_with_odd_arguments_never_panics_or_hangs() {
    let _one = process_lock();
    let dir = filled(300);
    {
        let q = Queue::open(dir.path(), opts()).unwrap();
        let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
        for _ in 0..5 {
            let d = g.poll(NO_WAIT).unwrap().unwrap();
            g.nack(d.offset(), Duration::MAX).unwrap();
        }
        q.close().unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("afile");
    std::fs::write(&file, b"hello").unwrap();
    let fifo = scratch.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let q = dir.path().display().to_string();
    let paths = [
        q.clone(),
        "/nonexistent/x".into(),
        file.display().to_string(),
        fifo.display().to_string(),
        "".into(),
        "/dev/null".into(),
    ];
    for cmd in ["info", "segments", "verify", "groups", "dump"] {
        for p in &paths {
            for json in [false, true] {
                let mut args = vec![cmd.to_string(), p.clone()];
                if json {
                    args.push("--json".into());
                }
                let run = segq_run(&args);
                assert_no_panic(&run, &format!("{args:?}"));
            }
        }
    }
    for from in ["0", "299", "300", "18446744073709551615", "18446744073709551616", "-1", "abc"] {
        for limit in ["0", "1", "18446744073709551615", "-1"] {
            for payload in ["hex", "len", "none"] {
                let args = ["dump", &q, "--from", from, "--limit", limit, "--payload", payload, "--json"];
                let run = segq_run(&args);
                assert_no_panic(&run, &format!("{args:?}"));
                if from.parse::<u64>().is_ok() && limit.parse::<u64>().is_ok() {
                    assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
                }
            }
        }
    }
    for name in ["g", "nope", "..", "a/b", &"a".repeat(300)] {
        let run = segq_run(&["groups", &q, name, "--json"]);
        assert_no_panic(&run, name);
    }
    for f in segment_files(dir.path())
        .iter()
        .take(2)
        .chain([dir.path().join("checkpoint"), dir.path().join("groups/g/journal")].iter())
    {
        let run = segq_run(&["dump".to_string(), f.display().to_string(), "--from".into(), u64::MAX.to_string()]);
        assert_no_panic(&run, &f.display().to_string());
    }
}
