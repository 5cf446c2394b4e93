//! A process that dies while appending (abort or SIGKILL) loses no record whose `append`
//! returned, under every sync policy, keeps no part of an unfinished batch, and leaves
//! contiguous offsets with exact payloads.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{child_test, payload, process_lock, tiny};
use segq::{Queue, SyncPolicy};

const CHILD: &str = "child_appends_until_it_dies";
const ENV_DIR: &str = "SEGQ_CRASH_DIR";
const ENV_SYNC: &str = "SEGQ_CRASH_SYNC";
const ENV_COUNT: &str = "SEGQ_CRASH_ABORT_AFTER";
/// Appends a killed child makes at most, in case its parent never kills it.
const CHILD_CAP: u64 = 200_000;

const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

fn policy(name: &str) -> SyncPolicy {
    match name {
        "always" => SyncPolicy::Always,
        "interval" => SyncPolicy::Interval(Duration::from_millis(5)),
        "never" => SyncPolicy::Never,
        other => panic!("unknown sync policy {other}"),
    }
}

const POLICIES: [&str; 3] = ["always", "interval", "never"];

fn options(sync: &str) -> segq::Options {
    tiny(8192).sync(policy(sync))
}

/// How many records the child appends in the call that starts at `offset`: mostly single
/// records, some batches.
fn batch_len(offset: u64) -> u64 {
    if offset.is_multiple_of(5) { 4 } else { 1 }
}

/// Whether a call of the child starts at `offset`, i.e. a crash may leave the log ending
/// there.
fn is_batch_boundary(offset: u64) -> bool {
    let mut at = 0;
    while at < offset {
        at += batch_len(at);
    }
    at == offset
}

/// Run in a child process by the tests below; does nothing when run on its own.
///
/// Opens the queue, appends `payload(offset)` for the next `batch_len` offsets as one batch
/// and prints `acked <offset>` for each once the call has returned; aborts after `ENV_COUNT`
/// calls, or goes on until killed if that is 0.
#[test]
#[ignore = "child process of the crash tests"]
fn child_appends_until_it_dies() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let sync = std::env::var(ENV_SYNC).unwrap();
    let abort_after: u64 = std::env::var(ENV_COUNT).unwrap().parse().unwrap();
    let q = Queue::open(&dir, options(&sync)).unwrap();
    let mut out = std::io::stdout().lock();
    // libtest may have printed part of a line already.
    writeln!(out).unwrap();
    let limit = if abort_after == 0 { CHILD_CAP } else { abort_after };
    for _ in 0..limit {
        let next = q.next_offset();
        assert!(is_batch_boundary(next), "the queue ends inside a batch");
        let range = next..next + batch_len(next);
        let payloads: Vec<Vec<u8>> = range.clone().map(payload).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(q.append_batch(&refs).unwrap(), range);
        for offset in range {
            writeln!(out, "acked {offset}").unwrap();
        }
        out.flush().unwrap();
    }
    if abort_after != 0 {
        std::process::abort();
    }
}

fn child(dir: &Path, sync: &str, abort_after: u64) -> std::process::Command {
    child_test(
        CHILD,
        &[(ENV_DIR, dir.display().to_string()), (ENV_SYNC, sync.to_string()), (ENV_COUNT, abort_after.to_string())],
    )
}

fn parse_ack(line: &str) -> Option<u64> {
    let at = line.find("acked ")?;
    Some(line[at + "acked ".len()..].trim().parse().unwrap())
}

/// Reopens the queue after a crash and checks that it holds every acked offset, with
/// contiguous offsets, and that every record it holds is the one appended at that offset.
fn check_after_crash(dir: &Path, sync: &str, acked: &[u64]) {
    let q = Queue::open(dir, options(sync)).unwrap();
    // A child killed between an append and its ack leaves an unacked record behind, which
    // the next child appends after: acks only increase.
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "acks go backwards");
    let next = q.next_offset();
    assert!(is_batch_boundary(next), "{sync}: part of a batch was kept");
    if let Some(&last) = acked.last() {
        assert!(next > last, "{sync}: offset {last} was acked but the queue ends at {next}");
    }
    assert_eq!(q.first_offset(), 0);
    for off in 0..next {
        let rec = q.read(off).unwrap().unwrap_or_else(|| panic!("{sync}: record {off} is missing"));
        assert_eq!(rec.payload(), payload(off), "{sync}: payload of {off}");
    }
    let mut count = 0;
    for (i, rec) in q.iter_from(0).enumerate() {
        let rec = rec.unwrap();
        assert_eq!(rec.offset(), i as u64);
        assert_eq!(rec.payload(), payload(i as u64));
        count += 1;
    }
    assert_eq!(count, next);
    q.close().unwrap();
}

#[test]
fn acked_records_survive_abort_under_every_sync_policy() {
    let _serial = process_lock();
    for sync in POLICIES {
        let dir = tempfile::tempdir().unwrap();
        let mut acked = Vec::new();
        // Twice on the same directory: the second child recovers the first one's crash.
        for round in 1..=2u64 {
            let out = child(dir.path(), sync, 150 * round).output().unwrap();
            assert_eq!(
                out.status.signal(),
                Some(SIGABRT),
                "{sync}: child did not abort: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            let before = acked.len();
            acked.extend(stdout.lines().filter_map(parse_ack));
            assert!(acked.len() - before >= 150 * round as usize, "{sync}: acks");
            check_after_crash(dir.path(), sync, &acked);
            // Nothing but acked records: the child aborted right after an ack.
            let q = Queue::open(dir.path(), options(sync)).unwrap();
            assert_eq!(q.next_offset(), acked.len() as u64);
        }
    }
}

/// A number from 1 to `n` that differs from run to run.
fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    u64::from(nanos) % n + 1
}

#[test]
fn acked_records_survive_sigkill_mid_append_under_every_sync_policy() {
    let _serial = process_lock();
    for sync in POLICIES {
        let dir = tempfile::tempdir().unwrap();
        let mut acked = Vec::new();
        for _round in 0..3 {
            let kill_after = random_below(400);
            let mut proc = child(dir.path(), sync, 0).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
            let mut seen = 0;
            while seen < kill_after {
                let line = lines.next().expect("child ended before it was killed").unwrap();
                if let Some(off) = parse_ack(&line) {
                    acked.push(off);
                    seen += 1;
                }
            }
            proc.kill().unwrap();
            // Acks printed before the child died count too.
            for line in lines {
                if let Some(off) = parse_ack(&line.unwrap()) {
                    acked.push(off);
                }
            }
            let status = proc.wait().unwrap();
            assert_eq!(status.signal(), Some(SIGKILL), "{sync}: child was not killed: {status}");
            check_after_crash(dir.path(), sync, &acked);
        }
    }
}
