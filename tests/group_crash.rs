//! A record whose processing crashes the process is dead-lettered after `max_attempts`
//! crashes, because each attempt is durable before `poll` hands the record out.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{child_test, process_lock};
use segq::{GroupOptions, Options, Queue, SyncPolicy};

const ENV_DIR: &str = "SEGQ_POISON_DIR";
const WORKER: &str = "poison_worker";

fn opts() -> Options {
    Options::default().segment_bytes(64 << 10).sync(SyncPolicy::Always)
}

/// Child: processes records until none is left; a record saying "poison" crashes it.
#[test]
#[ignore = "run by a_poison_record_is_dead_lettered_after_max_attempts_crashes in a child process"]
fn poison_worker() {
    let Ok(dir) = std::env::var(ENV_DIR) else { return };
    let q = Queue::open(&dir, opts()).unwrap();
    let g = q.group_with("workers", GroupOptions::default().max_attempts(3)).unwrap();
    while let Some(d) = g.poll(Duration::ZERO).unwrap() {
        println!("got {} {}", d.offset(), d.attempt());
        if d.payload() == b"poison" {
            std::process::abort();
        }
        g.ack(d.offset()).unwrap();
    }
    q.close().unwrap();
    println!("done");
}

#[test]
fn a_poison_record_is_dead_lettered_after_max_attempts_crashes() {
    let _serial = process_lock();
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), opts()).unwrap();
        for p in [b"fine".as_slice(), b"poison", b"fine too"] {
            q.append(p).unwrap();
        }
    }
    let mut runs = Vec::new();
    for _ in 0..10 {
        let out = child_test(WORKER, &[(ENV_DIR, dir.path().display().to_string())])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let done = stdout.contains("done");
        runs.push((out.status.success(), stdout));
        if done {
            break;
        }
    }
    let crashes = runs.iter().filter(|(ok, _)| !ok).count();
    assert_eq!(crashes, 3, "runs: {runs:?}");
    for (i, (_, out)) in runs.iter().take(3).enumerate() {
        assert!(out.contains(&format!("got 1 {}", i + 1)), "run {i} did not get attempt {}: {out}", i + 1);
    }
    let last = &runs.last().unwrap().1;
    assert!(!last.contains("got 1 "), "the poison record was delivered a 4th time: {last}");
    assert!(last.contains("got 2 1"));

    let q = Queue::open(dir.path(), opts()).unwrap();
    let g = q.group("workers").unwrap();
    let dead = g.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].offset(), dead[0].attempts()), (1, 3));
    assert_eq!(g.ack_floor(), 3);
}
