//! A consumer group's memory and speed behind a record that stays open: one record leased
//! for an hour (a stuck consumer), or nacked for a day, while one worker polls and acks
//! every record after it. The group must cost the same however far the others get past
//! that record: its anonymous resident memory (`RssAnon`; the log's pages are file-backed
//! and do not count) is printed before and after, next to a run with nothing held.
//!
//! `cargo bench --bench group_memory` (about 10 s). `GROUP_MEMORY_RECORDS` sets how many
//! records are consumed per run (default 4,000,000 of 100 B).

mod common;

use std::time::{Duration, Instant};

use segq::{GroupOptions, Queue, SyncPolicy};

use common::{fill, open, payload, temp_dir};

/// What stays open while the rest is consumed.
#[derive(Clone, Copy, Debug)]
enum Held {
    Nothing,
    LeasedForAnHour,
    NackedForADay,
}

/// Anonymous resident memory of this process, in KiB (0 where /proc is not there).
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap_or("RssAnon: 0 kB");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn run(held: Held, records: u64) {
    let dir = temp_dir();
    let q = open(dir.path(), SyncPolicy::Never);
    fill(&q, &payload(100), records + 1);
    q.flush().expect("flush");
    let opts = GroupOptions::default().lease(Duration::from_secs(3600));
    let g = q.group_with("workers", opts).expect("group");
    let first = g.poll(Duration::ZERO).expect("poll").expect("a record");
    match held {
        Held::Nothing => g.ack(first.offset()).expect("ack"),
        Held::LeasedForAnHour => {}
        Held::NackedForADay => g.nack(first.offset(), Duration::from_secs(86_400)).expect("nack"),
    }
    let before = rss_anon_kib();
    let start = Instant::now();
    let mut taken = 0u64;
    while let Some(d) = g.poll(Duration::ZERO).expect("poll") {
        g.ack(d.offset()).expect("ack");
        taken += 1;
    }
    let elapsed = start.elapsed();
    let after = rss_anon_kib();
    assert_eq!(taken, records);
    drop(g);
    q.close().expect("close");
    let start = Instant::now();
    let q = Queue::open(dir.path(), segq::Options::default()).expect("reopen");
    let g = q.group("workers").expect("group");
    let reopen = start.elapsed();
    let floor = g.ack_floor();
    println!(
        "{:<16} {:>9.2} M/s {:>10} {:>10} {:>10} {:>9.1} ms {:>10}",
        format!("{held:?}"),
        records as f64 / elapsed.as_secs_f64() / 1e6,
        before,
        after,
        after.saturating_sub(before),
        reopen.as_secs_f64() * 1e3,
        floor
    );
}

fn main() {
    // Criterion's harness flags (`--bench`) are accepted and ignored.
    let records = std::env::var("GROUP_MEMORY_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(4_000_000);
    println!("poll + ack of {records} records of 100 B (Never), one worker, after one record is held; RssAnon in KiB");
    println!(
        "{:<16} {:>13} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "held", "poll+ack", "before KiB", "after", "growth", "group reopen", "ack floor"
    );
    for held in [Held::Nothing, Held::LeasedForAnHour, Held::NackedForADay] {
        run(held, records);
    }
}
