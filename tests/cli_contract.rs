//! The contracts of the `segq` debug binary and of retention and a full disk, checked from
//! outside: what `segq groups` says of records lost to retention, read commands next to a
//! writer whose retention deletes segments, repairs run twice, a full disk (a real small
//! tmpfs) and `RLIMIT_FSIZE` under every policy, damaged and missing segments, usage errors
//! with `--json`, and reads below the first offset.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cli_support::common::{SmallFs, is_full};
use cli_support::*;
use segq::{Error, Options, Queue, SyncPolicy};

fn small_retained(bytes: u64) -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(256).sync(SyncPolicy::Never).retain_bytes(bytes)
}

fn fill(q: &Queue, from: u64, n: u64) {
    for i in from..from + n {
        q.append(payload(i).as_bytes()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Issue 5 rule 2 / issue 4: "A group whose position fell below the first offset moves up
// to it, and `segq groups` reports how many records it lost."
// ---------------------------------------------------------------------------------------

/// A group that no process opened since retention deleted records it still needed: `segq
/// groups` says what the library says when it next opens the group, that it lost them, and
/// moves its ack floor up. (It showed the old ack floor, `lost: 0` and a lag counting the
/// deleted records.)
#[test]
fn groups_reports_what_a_group_lost_even_if_no_process_opened_it_since() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(tmp.path(), small_retained(8 << 10)).unwrap();
        q.group("laggard").unwrap();
        q.close().unwrap();
    }
    let first = {
        let q = Queue::open(tmp.path(), small_retained(8 << 10)).unwrap();
        fill(&q, 0, 1000);
        let first = q.first_offset();
        assert!(first > 100);
        q.close().unwrap();
        first
    };
    let run = segq(["groups", &arg(tmp.path()), "laggard", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let j = run.json();
    // What the library says about the same files (on a copy: opening writes).
    let copy = tempfile::tempdir().unwrap();
    copy_tree(tmp.path(), copy.path());
    let q = Queue::open(copy.path(), small_retained(8 << 10)).unwrap();
    let stats = q.group("laggard").unwrap().stats();
    assert_eq!((stats.ack_floor, stats.lost), (first, first));
    q.close().unwrap();
    assert_eq!(
        (j["ack_floor"].as_u64(), j["lost"].as_u64(), j["lag"].as_u64()),
        (Some(first), Some(first), Some(1000 - first)),
        "segq groups disagrees with the library about a group that fell behind retention:\n{j}"
    );
}

/// A group open in the process that ran retention is moved up, and after a
/// close `segq groups` shows what it lost, in JSON and in the one-group text view.
#[test]
fn groups_reports_what_an_open_group_lost_after_close() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), small_retained(8 << 10)).unwrap();
    let g = q.group("laggard").unwrap();
    fill(&q, 0, 1000);
    let first = q.first_offset();
    assert_eq!(g.stats().lost, first);
    q.close().unwrap();
    let j = segq(["groups", &arg(tmp.path()), "laggard", "--json"]).json();
    assert_eq!((j["ack_floor"].as_u64(), j["lost"].as_u64()), (Some(first), Some(first)), "{j}");
    let text = segq(["groups", &arg(tmp.path()), "laggard"]);
    assert!(text.stdout.contains(&format!("lost to retention    {first}")), "{}", text.stdout);
}

/// The table of `segq groups DIR` (every group) has a column for the records lost to
/// retention. (An operator had to ask for each group by name to see them.)
#[test]
fn groups_table_shows_records_lost_to_retention() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), small_retained(8 << 10)).unwrap();
    let g = q.group("laggard").unwrap();
    fill(&q, 0, 1000);
    let lost = g.stats().lost;
    assert!(lost > 0);
    q.close().unwrap();
    let run = segq(["groups", &arg(tmp.path())]);
    assert_eq!(run.code, 0);
    let header = run.stdout.lines().next().unwrap();
    assert!(header.contains("LOST"), "no LOST column in the groups table:\n{}", run.stdout);
    let row = run.stdout.lines().find(|l| l.starts_with("laggard")).unwrap();
    assert!(row.split_whitespace().any(|c| c == lost.to_string()), "{}", run.stdout);
}

// ---------------------------------------------------------------------------------------
// Issue 4 rule 2: "Safe on a live queue ... a writer that trims or deletes a segment cannot
// crash them". The existing live test has no retention: here retention deletes segments
// while every read command runs.
// ---------------------------------------------------------------------------------------

/// Read commands next to a writer whose retention deletes the oldest segments
/// all the time: none may report damage or fail.
#[test]
fn read_commands_are_clean_while_retention_deletes_segments() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), small_retained(12 << 10)).unwrap();
    let g = q.group("worker").unwrap();
    fill(&q, 0, 200);
    let stop = AtomicBool::new(false);
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let stop = &stop;
        let q = &q;
        let g = &g;
        let writer = s.spawn(move || {
            let mut i = 200u64;
            while !stop.load(Ordering::Relaxed) {
                q.append(payload(i).as_bytes()).unwrap();
                if i.is_multiple_of(3)
                    && let Some(d) = g.poll(Duration::ZERO).unwrap()
                {
                    g.ack(d.offset()).unwrap();
                }
                i += 1;
            }
        });
        let d = arg(tmp.path());
        for round in 0..40 {
            for args in [
                vec!["verify", d.as_str(), "--json"],
                vec!["segments", d.as_str(), "--json"],
                vec!["dump", d.as_str(), "--payload", "len", "--json"],
                vec!["info", d.as_str(), "--json"],
                vec!["groups", d.as_str(), "--json"],
            ] {
                let run = segq(&args);
                let ok = run.code == 0 && serde_json::from_str::<serde_json::Value>(&run.stdout).is_ok();
                if !ok {
                    failures.push(format!(
                        "round {round} {:?}: exit {}\nstdout: {}\nstderr: {}",
                        args[0], run.code, run.stdout, run.stderr
                    ));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    assert!(q.first_offset() > 0, "retention ran");
    q.close().unwrap();
    assert!(failures.is_empty(), "{} failures, first:\n{}", failures.len(), failures[0]);
}

// ---------------------------------------------------------------------------------------
// Issue 4: "repair ... cut at the first damaged record, keeping the cut bytes in a side
// file" (README: "Nothing is removed that is not kept in a side file").
// ---------------------------------------------------------------------------------------

/// Flips a byte inside the 5th record of segment `index` of the queue in `dir`; returns the
/// record's position.
fn damage_record(dir: &Path, index: usize) -> usize {
    let file = segment_files(dir)[index].clone();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = record_positions(&bytes)[4];
    bytes[at + 50] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    at
}

/// The side files (`*.cut-*`) of a queue directory with their contents.
fn side_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".cut-"))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// A second repair of the same queue (the same bad sector hit again after the queue went on
/// from the first cut) keeps the side files of the first: its own side files take names
/// that are free.
#[test]
fn a_second_repair_never_overwrites_the_side_files_of_the_first() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    damage_record(tmp.path(), 1);
    let run = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let kept = side_files(tmp.path());
    assert!(kept.len() >= 2, "{kept:?}");

    // The queue goes on from the cut, with records of the same sizes: its segments roll at
    // the same offsets as before and get the same names.
    let q = Queue::open(tmp.path(), small()).unwrap();
    let next = q.next_offset();
    for i in next..100 {
        q.append(format!("second {i:04} {}", "y".repeat(100)).as_bytes()).unwrap();
    }
    q.append_batch(&[b"BATCH A".as_slice(), b"BATCH B", b"BATCH C"]).unwrap();
    q.close().unwrap();
    damage_record(tmp.path(), 1);
    let second = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--yes"]);

    let now = side_files(tmp.path());
    for (path, bytes) in &kept {
        assert!(
            now.iter().any(|(_, b)| b == bytes),
            "the bytes the first repair kept in {} are gone after the second repair (exit {}):\n{}{}",
            path.display(),
            second.code,
            second.stdout,
            second.stderr
        );
    }
    assert_eq!(second.code, 0, "the second repair failed:\n{}{}", second.stdout, second.stderr);
}

/// With `--yes`, a side file name that is already taken neither makes the repair fail
/// part-way (after it deleted the checkpoint and moved later segments aside) nor is
/// overwritten.
#[test]
fn repair_checks_its_side_file_names_before_changing_anything() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let at = damage_record(tmp.path(), 1);
    let file = segment_files(tmp.path())[1].clone();
    std::fs::write(format!("{}.cut-{at}", file.display()), b"an operator's earlier copy").unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let before = listing(tmp.path());
    let run = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--yes"]);
    let after = listing(tmp.path());
    assert!(
        run.code == 0 || before == after,
        "repair failed (exit {}) after changing the directory:\n{}{}\nbefore {before:?}\nafter {after:?}",
        run.code,
        run.stdout,
        run.stderr
    );
    assert_eq!(
        std::fs::read(format!("{}.cut-{at}", file.display())).unwrap(),
        b"an operator's earlier copy",
        "an existing file was overwritten"
    );
}

// ---------------------------------------------------------------------------------------
// Issue 5 rule 5: "when the filesystem is full, `append` returns an `Err` (never SIGBUS,
// never a panic), everything appended before stays readable and durable, and once space is
// freed appends continue without reopening."
// ---------------------------------------------------------------------------------------

fn big(i: u64) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; 1000];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// Appends until the disk is full; returns how many were acknowledged and the error.
fn fill_disk(q: &Queue, batch: bool) -> (u64, Error) {
    let mut acked = 0u64;
    loop {
        let r = if batch {
            let p: Vec<Vec<u8>> = (acked..acked + 4).map(big).collect();
            let refs: Vec<&[u8]> = p.iter().map(|v| v.as_slice()).collect();
            q.append_batch(&refs).map(|r| r.end)
        } else {
            q.append(&big(acked)).map(|o| o + 1)
        };
        match r {
            Ok(end) => {
                assert_eq!(end, acked + if batch { 4 } else { 1 });
                acked = end;
                assert!(acked < 100_000, "the filesystem never filled up");
            }
            Err(e) => return (acked, e),
        }
    }
}

/// The full-disk contract under each sync policy and for batches: an error, nothing stored lost, appends resume
/// without reopening once space is freed, and a reopen finds everything.
#[test]
fn a_full_disk_under_every_sync_policy_and_for_batches() {
    for (policy, batch) in [
        (SyncPolicy::Never, false),
        (SyncPolicy::Interval(Duration::from_millis(5)), false),
        (SyncPolicy::Always, true),
        (SyncPolicy::Never, true),
    ] {
        let Some(fs) = SmallFs::mount("2m") else { return };
        let ballast = fs.path().join("ballast");
        std::fs::write(&ballast, vec![1u8; 512 << 10]).unwrap();
        let dir = fs.path().join("queue");
        let opts = Options::default().segment_bytes(64 << 10).sync(policy);
        let q = Queue::open(&dir, opts.clone()).unwrap();
        let (acked, err) = fill_disk(&q, batch);
        assert!(is_full(&err), "{policy:?} batch={batch}: expected a full-disk error, got {err:?}");
        assert!(acked > 100);
        assert_eq!(q.next_offset(), acked, "{policy:?} batch={batch}");
        for o in 0..acked {
            assert_eq!(q.read(o).unwrap().unwrap().payload(), big(o), "{policy:?} batch={batch}");
        }
        q.flush().unwrap_or_else(|e| panic!("{policy:?} batch={batch}: flush on a full disk: {e}"));
        std::fs::remove_file(&ballast).unwrap();
        for i in 0..100 {
            assert_eq!(
                q.append(&big(acked + i)).unwrap_or_else(|e| panic!("{policy:?} batch={batch}: after freeing: {e}")),
                acked + i
            );
        }
        q.close().unwrap();
        let q = Queue::open(&dir, opts).unwrap();
        assert_eq!(q.next_offset(), acked + 100, "{policy:?} batch={batch}");
        for o in 0..acked + 100 {
            assert_eq!(q.read(o).unwrap().unwrap().payload(), big(o));
        }
        q.close().unwrap();
    }
}

/// On a full disk, retention is the way out: `enforce_retention` deletes sealed
/// segments, and the next append goes through without reopening.
#[test]
fn on_a_full_disk_enforce_retention_frees_space_and_appends_resume() {
    let Some(fs) = SmallFs::mount("2m") else { return };
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 512 << 10]).unwrap();
    let dir = fs.path().join("queue");
    let q = Queue::open(&dir, Options::default().segment_bytes(64 << 10).sync(SyncPolicy::Always)).unwrap();
    let (acked, err) = fill_disk(&q, false);
    assert!(is_full(&err), "{err}");
    drop(q);
    // Reopened with a limit it never had: opening deletes nothing, a pass does.
    let q =
        Queue::open(&dir, Options::default().segment_bytes(64 << 10).sync(SyncPolicy::Always).retain_bytes(256 << 10))
            .unwrap();
    assert_eq!(q.next_offset(), acked);
    let report = q.enforce_retention().unwrap();
    assert!(report.segments_deleted > 0, "{report:?}");
    let first = q.first_offset();
    assert!(q.read(first - 1).unwrap().is_none());
    for i in 0..200 {
        assert_eq!(q.append(&big(acked + i)).unwrap(), acked + i);
    }
    // The appends rolled segments, and the passes that ran by themselves moved it on.
    assert!(q.first_offset() >= first);
    for o in q.first_offset()..acked + 200 {
        assert_eq!(q.read(o).unwrap().unwrap().payload(), big(o));
    }
}

/// Consumer groups on a full disk: polls and acks either work (their files are
/// preallocated) or fail with an error; once space is freed the group works again without
/// reopening the queue, and no ack made before is lost.
#[test]
fn a_group_on_a_full_disk_keeps_its_acks_and_works_again_once_space_is_freed() {
    let Some(fs) = SmallFs::mount("2m") else { return };
    let dir = fs.path().join("queue");
    let opts = Options::default().segment_bytes(64 << 10).sync(SyncPolicy::Always);
    let q = Queue::open(&dir, opts.clone()).unwrap();
    for i in 0..300 {
        q.append(&big(i)).unwrap();
    }
    let g = q.group_with("w", segq::GroupOptions::default().max_attempts(100)).unwrap();
    // Fill what is left with ballast.
    let ballast = fs.path().join("ballast");
    let free = fs.free();
    std::fs::write(&ballast, vec![1u8; free as usize]).ok();
    let mut extra = 0;
    while std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(fs.path().join(format!("b{extra}")))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[0u8; 4096]))
        .is_ok()
    {
        extra += 1;
    }
    // Work through the group: every other record acked, the others nacked (many exceptions,
    // so that its snapshot grows when the journal is compacted).
    let mut acked = Vec::new();
    let mut first_error = None;
    for _ in 0..3000 {
        match g.poll(Duration::ZERO) {
            Ok(Some(d)) => {
                let r = if d.offset() % 2 == 0 {
                    g.ack(d.offset()).map(|_| acked.push(d.offset()))
                } else {
                    g.nack(d.offset(), Duration::from_secs(3600))
                };
                if let Err(e) = r {
                    first_error.get_or_insert(format!("{e}"));
                }
            }
            Ok(None) => break,
            Err(e) => {
                first_error.get_or_insert(format!("{e}"));
                break;
            }
        }
    }
    eprintln!("first error on the full disk: {first_error:?}; acked {}", acked.len());
    std::fs::remove_file(&ballast).ok();
    for i in 0..extra {
        std::fs::remove_file(fs.path().join(format!("b{i}"))).unwrap();
    }
    // Space is back: the group works without a reopen.
    q.append(b"after").unwrap();
    let mut more = 0;
    while let Some(d) = g.poll(Duration::ZERO).unwrap_or_else(|e| panic!("poll after freeing space: {e}")) {
        g.ack(d.offset()).unwrap_or_else(|e| panic!("ack after freeing space: {e}"));
        more += 1;
    }
    assert!(more > 0);
    q.close().unwrap();
    let q = Queue::open(&dir, opts).unwrap();
    let g = q.group("w").unwrap();
    // The even records were acked on the full disk, the odd ones nacked for an hour, and the
    // record appended after freeing space acked: only the odd ones are left.
    let stats = g.stats();
    assert_eq!((stats.ack_floor, stats.waiting, stats.lag), (1, 150, 150), "{stats:?}");
    assert_eq!(acked.len(), 150);
}

/// Creating a consumer group on a full disk fails with an error and leaves nothing that
/// breaks the queue; once space is freed the group is created without reopening, and a
/// reopen finds it.
#[test]
fn creating_a_group_on_a_full_disk_fails_cleanly_and_works_once_space_is_freed() {
    let Some(fs) = SmallFs::mount("2m") else { return };
    let dir = fs.path().join("queue");
    let opts = Options::default().segment_bytes(64 << 10).sync(SyncPolicy::Always);
    let q = Queue::open(&dir, opts.clone()).unwrap();
    for i in 0..10 {
        q.append(&big(i)).unwrap();
    }
    let mut n = 0;
    while std::fs::write(fs.path().join(format!("b{n}")), [0u8; 4096]).is_ok() {
        n += 1;
    }
    let _ = std::fs::write(fs.path().join("tail"), [0u8; 1]);
    match q.group("late") {
        Err(e) => eprintln!("group on a full disk: {e}"),
        Ok(_) => eprintln!("group on a full disk: created"),
    }
    for i in 0..n {
        std::fs::remove_file(fs.path().join(format!("b{i}"))).unwrap();
    }
    let _ = std::fs::remove_file(fs.path().join("tail"));
    let g = q.group("late").unwrap_or_else(|e| panic!("after freeing space: {e}"));
    assert_eq!(g.poll(Duration::ZERO).unwrap().unwrap().offset(), 0);
    g.ack(0).unwrap();
    q.close().unwrap();
    let v = segq(["verify", &arg(&dir)]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    let q = Queue::open(&dir, opts).unwrap();
    assert_eq!(q.group("late").unwrap().ack_floor(), 1);
}

/// The child of [`rlimit_fsize_is_an_error_and_appends_resume_once_the_limit_is_raised`]:
/// does nothing unless run by it.
#[test]
fn rlimit_child() {
    let Ok(dir) = std::env::var("SEGQ_CLI_CONTRACT_RLIMIT_DIR") else { return };
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let opts = Options::default().segment_bytes(1 << 20).sync(SyncPolicy::Never);
    let q = Queue::open(&dir, opts).unwrap();
    // Files may not grow past 512 KiB from now on: the next segment cannot be made.
    let hard = getrlimit(Resource::Fsize).maximum;
    setrlimit(Resource::Fsize, Rlimit { current: Some(512 << 10), maximum: hard }).unwrap();
    let (acked, err) = fill_disk(&q, false);
    println!("CHILD acked={acked} err={err:?}");
    assert!(matches!(&err, Error::Io(_)), "{err:?}");
    for o in 0..acked {
        assert_eq!(q.read(o).unwrap().unwrap().payload(), big(o));
    }
    setrlimit(Resource::Fsize, Rlimit { current: hard, maximum: hard }).unwrap();
    for i in 0..100 {
        assert_eq!(q.append(&big(acked + i)).unwrap(), acked + i);
    }
    q.close().unwrap();
    println!("CHILD done total={}", acked + 100);
}

/// Runs [`rlimit_child`] (which sets a soft `RLIMIT_FSIZE` of 512 KiB once its queue is
/// open), with SIGXFSZ as given by `trap`; returns (exit status, stdout, stderr).
fn run_rlimit_child(dir: &Path, trap: &str) -> (std::process::ExitStatus, String, String) {
    let exe = std::env::current_exe().unwrap();
    let script = format!("{trap} exec \"$0\" --exact rlimit_child --nocapture --test-threads=1");
    let out =
        Command::new("sh").arg("-c").arg(script).arg(exe).env("SEGQ_CLI_CONTRACT_RLIMIT_DIR", dir).output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The other way to fill a disk, `RLIMIT_FSIZE`, with SIGXFSZ ignored: the append fails with an error,
/// everything before reads back, and once the limit is raised appends go on without a
/// reopen; a reopen then finds every record.
#[test]
fn rlimit_fsize_is_an_error_and_appends_resume_once_the_limit_is_raised() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_rlimit_child(tmp.path(), "trap '' XFSZ;");
    assert!(status.success() && stdout.contains("CHILD done"), "{status:?}\n{stdout}\n{stderr}");
    let total: u64 = stdout.split("CHILD done total=").nth(1).unwrap().trim().lines().next().unwrap().parse().unwrap();
    let q = Queue::open(tmp.path(), Options::default().segment_bytes(1 << 20)).unwrap();
    assert_eq!(q.next_offset(), total);
    for o in 0..total {
        assert_eq!(q.read(o).unwrap().unwrap().payload(), big(o));
    }
}

/// `RLIMIT_FSIZE` with SIGXFSZ at its default (as in any process that did not think of
/// it): the append that needs a file past the limit returns an `Err`, and the process lives
/// on. (The kernel's SIGXFSZ killed it: segq now checks the limit before it grows a file.)
#[test]
fn rlimit_fsize_with_the_default_sigxfsz_is_an_error_not_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_rlimit_child(tmp.path(), "trap - XFSZ;");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        None,
        "the process was killed by signal {:?} (SIGXFSZ = 25) instead of getting an Err:\n{stdout}\n{stderr}",
        status.signal()
    );
    assert!(status.success() && stdout.contains("CHILD done"), "{status:?}\n{stdout}\n{stderr}");
}

// ---------------------------------------------------------------------------------------
// Issue 4 rules 1 and 3: damaged inputs give exit 1 with findings naming the file and the
// byte position; usage and I/O errors exit 2; never a panic.
// ---------------------------------------------------------------------------------------

/// The findings of `verify --json` on `dir`, with its exit code.
fn verify_findings(dir: &Path) -> (i32, Vec<serde_json::Value>, Run) {
    let run = segq(["verify", &arg(dir), "--json"]);
    let j = run.json();
    let f = j["findings"].as_array().cloned().unwrap_or_default();
    (run.code, f, run)
}

/// A sealed segment missing from the middle of the log (deleted by hand) is damage for
/// `verify`, `dump` and `segments` alike (exit 1). (`segments` listed the segments around
/// the hole with exit 0 and no finding.)
#[test]
fn a_segment_missing_from_the_middle_is_damage_everywhere() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let files = segment_files(tmp.path());
    std::fs::remove_file(&files[2]).unwrap();
    let _ = std::fs::remove_file(files[2].with_extension("index"));
    let (code, findings, run) = verify_findings(tmp.path());
    assert_eq!(code, 1, "{}", run.stdout);
    assert!(
        findings.iter().any(|f| f["severity"] == "damage" && f["file"].is_string() && f["position"].is_u64()),
        "{}",
        run.stdout
    );
    let dump = segq(["dump", &arg(tmp.path()), "--payload", "none", "--json"]);
    assert_eq!(dump.code, 1, "{}", dump.stdout);
    assert!(!dump.json()["findings"].as_array().unwrap().is_empty());
    let seg = segq(["segments", &arg(tmp.path()), "--json"]);
    assert_eq!(seg.code, 1, "segments says nothing of the gap:\n{}", seg.stdout);
}

/// A sealed segment cut to 0 bytes, or to half its header, and the newest segment cut
/// to 0 bytes: exit 1 with the file and a position, in every command, never a panic.
#[test]
fn truncated_segments_are_damage_with_file_and_position() {
    let _s = serial();
    for (which, len) in [(1usize, 0u64), (1, 16), (1, 33), (usize::MAX, 0), (usize::MAX, 20)] {
        let tmp = tempfile::tempdir().unwrap();
        make_queue(tmp.path());
        let files = segment_files(tmp.path());
        let file = if which == usize::MAX { files.last().unwrap().clone() } else { files[which].clone() };
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len).unwrap();
        for cmd in ["info", "segments", "dump", "verify", "groups"] {
            // `info` reads only the newest segment (by design: it is cheap).
            if cmd == "info" && which != usize::MAX {
                continue;
            }
            let run = segq([cmd, &arg(tmp.path()), "--json"]);
            let j = run.json();
            let named = run.stdout.contains(&arg(&file)) || run.stderr.contains(&arg(&file));
            assert!(
                run.code == 1 || (cmd == "groups" && run.code == 0),
                "{cmd} on {} cut to {len}: exit {}\n{}\n{}",
                file.display(),
                run.code,
                run.stdout,
                run.stderr
            );
            if cmd != "groups" {
                assert!(named, "{cmd}: the file is not named:\n{j}\n{}", run.stderr);
            }
        }
    }
}

/// With `--json`, a bad flag value (`--limit abc`, `--from -1`, `--payload base64`) still
/// prints one JSON document, the error document, beside clap's text on stderr. (It printed
/// nothing on stdout.)
#[test]
fn with_json_a_usage_error_is_still_one_json_document() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    for bad in [["--limit", "abc"], ["--from", "-1"], ["--payload", "base64"]] {
        let run = segq(["dump", &arg(tmp.path()), "--json", bad[0], bad[1]]);
        assert_eq!(run.code, 2, "{bad:?}");
        let doc: Result<serde_json::Value, _> = serde_json::from_str(&run.stdout);
        assert!(
            doc.is_ok_and(|d| d["error"]["exit_code"] == 2),
            "{bad:?}: stdout {:?}, stderr {}",
            run.stdout,
            run.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------
// Issue 5 rules 1 and 2.
// ---------------------------------------------------------------------------------------

/// "Never delete what some group has not acked", also with a size limit of 0 and an
/// age limit of 0 that would delete everything; and with no group at all nothing counts as
/// consumed, whatever the limits.
#[test]
fn until_consumed_overrides_size_and_age_limits() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_retained(0).retain_age(Duration::ZERO).retain_until_consumed(true);
    let q = Queue::open(dir.path(), opts).unwrap();
    fill(&q, 0, 300);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0, "no group: nothing is consumed");
    assert_eq!(q.first_offset(), 0);
    let g = q.group("g").unwrap();
    fill(&q, 300, 100); // rolls: passes run by themselves
    assert_eq!(q.enforce_retention().unwrap().segments_deleted, 0, "the group acked nothing");
    assert_eq!(q.first_offset(), 0);
    for _ in 0..100 {
        let d = g.poll(Duration::ZERO).unwrap().unwrap();
        g.ack(d.offset()).unwrap();
    }
    q.enforce_retention().unwrap();
    assert!(q.first_offset() > 0 && q.first_offset() <= 100, "{}", q.first_offset());
    assert!(q.read(q.first_offset()).unwrap().is_some());
}

/// Offsets stay honest for every way of reading below the first offset: `read` is
/// `Ok(None)`, `iter_from` starts at the first offset, an iterator made before the deletion
/// goes on at the first offset without an error, `offset_at_time(0)` is the first offset,
/// and a group sought below it delivers the first offset next.
#[test]
fn every_read_below_the_first_offset_is_honest() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), small_retained(8 << 10)).unwrap();
    let g = q.group("g").unwrap();
    fill(&q, 0, 20);
    let mut early = q.iter_from(0);
    for o in 0..5 {
        assert_eq!(early.next().unwrap().unwrap().offset(), o);
    }
    fill(&q, 20, 1000);
    let first = q.first_offset();
    assert!(first > 30);
    assert!(q.read(0).unwrap().is_none() && q.read(first - 1).unwrap().is_none());
    assert_eq!(q.iter_from(3).next().unwrap().unwrap().offset(), first);
    let rest: Vec<u64> = early.map(|r| r.unwrap().offset()).collect();
    assert!(rest.windows(2).all(|w| w[1] == w[0] + 1), "the old iterator skips within the kept records");
    assert_eq!(*rest.last().unwrap(), 1019);
    assert!(rest[0] == 5 || rest[0] == first || rest[0] > first && rest.len() as u64 == 1020 - rest[0]);
    assert_eq!(q.offset_at_time(0).unwrap(), first);
    g.seek(0).unwrap();
    assert_eq!(g.poll(Duration::ZERO).unwrap().unwrap().offset(), first);
}

/// After retention, `dump --from` an offset that was deleted starts at the first offset
/// kept, `info --json` and its `stats` agree with the library's `Queue::stats`, and
/// `verify` finds no damage (the deleted segments are not a gap).
#[test]
fn the_binary_after_retention_starts_at_the_first_offset_and_reports_stats() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), small_retained(8 << 10)).unwrap();
    fill(&q, 0, 1000);
    let stats = q.stats();
    q.close().unwrap();
    let first = stats.first_offset;
    assert!(first > 0);
    let d = arg(tmp.path());
    let dump = segq(["dump", &d, "--from", "3", "--limit", "2", "--json"]);
    assert_eq!(dump.code, 0, "{}", dump.stderr);
    let offsets: Vec<u64> =
        dump.json()["records"].as_array().unwrap().iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [first, first + 1]);
    let info = segq(["info", &d, "--json"]).json();
    assert_eq!(info["first_offset"].as_u64(), Some(first));
    assert_eq!(info["next_offset"].as_u64(), Some(1000));
    for field in ["segments", "bytes_on_disk", "first_offset", "next_offset", "records"] {
        assert!(info["stats"][field].is_u64(), "stats.{field} in {info}");
    }
    assert_eq!(info["stats"]["segments"].as_u64(), Some(stats.segments));
    assert_eq!(info["stats"]["first_offset"].as_u64(), Some(first));
    let v = segq(["verify", &d]);
    assert_eq!(v.code, 0, "{}", v.stdout);
}

/// Reads of a group's files next to a live group that acks without a pause: a read of the
/// journal's parts at two moments can catch the entry being written in one part and the
/// entries written since in the next, which looks like a write lost in the middle. Such a
/// finding is reported only if a second read finds it again in the same place. (It was
/// reported as damage by `segq verify` and `segq groups` about once in 200 runs; this test
/// found it 3 times in its 1,500 reads.) About a minute in a release build, so not in the
/// default run: `cargo test --release --test cli_contract -- --include-ignored`.
#[test]
#[ignore = "long: about a minute in a release build"]
fn reads_next_to_a_live_group_find_no_lost_write() {
    use segq::inspect::{QueueDir, Severity, read_group};
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    let g = q.group("worker").unwrap();
    let stop = AtomicBool::new(false);
    let damage = std::thread::scope(|s| {
        let (stop, q, g) = (&stop, &q, &g);
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                q.append(b"job").unwrap();
                if let Some(d) = g.poll(Duration::ZERO).unwrap() {
                    g.ack(d.offset()).unwrap();
                }
            }
        });
        let mut damage = Vec::new();
        for _ in 0..1500 {
            let dir = QueueDir::open(tmp.path()).unwrap();
            let report = read_group(&dir, "worker", q.next_offset()).unwrap();
            damage.extend(report.findings.into_iter().filter(|f| f.severity == Severity::Damage));
        }
        stop.store(true, Ordering::Relaxed);
        damage
    });
    q.close().unwrap();
    assert!(damage.is_empty(), "{} reads found damage, the first: {}", damage.len(), damage[0]);
}
