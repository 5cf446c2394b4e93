//! Simulated power loss: after a run that crashed (`simulate_crash`), everything that was
//! not synced is dropped from a copy of the directory, in many ways (seeded), and the copy
//! must still open and keep its promises.
//!
//! What is known to be synced: under `SyncPolicy::Always`, every append and every group call
//! that returned; under `Never`, what the last `flush()` covered; under `Interval`, what the
//! flusher covered (the log only: `q.durable_offset()` says how far). Sealed segments are
//! synced when sealed. For the newest segment and the group journal the synced point is
//! not taken from that model but from what the run's syncs really covered (`segq::fault`'s
//! sync audit; the journal's count starts again at the sync of the snapshot it restarted
//! for), and it must reach everything the model holds durable: a sync that segq skipped
//! or cut short fails here. Past the synced point of the newest segment, the copy
//! gets one of: all zeros (nothing written back), a cut file, pages each zeroed, kept or
//! written back only in part (a torn write-back), or garbage. Checkpoint slot B and the
//! active index, which are never synced on their own, are dropped or damaged too, and the
//! group journal is treated like the log past its synced point, under every policy, or
//! keeps on each page no sync covered what it held before the run or shortly before its
//! burst's last snapshot (it is written in place). Under `Never`, a burst may fill the
//! journal and stop right after a snapshot written without waiting for its sync: if that
//! sync had not finished by the workload's last call, the copy may lose the snapshot too.
//!
//! Seals run in the background, and a power loss can stop one: when nothing in the newest
//! segment is durable yet (every sync waits for the seal before), some copies are put back
//! to that moment. The segment before the newest is then preallocated again, its data past
//! its synced point is lost like the newest segment's, the checkpoint names only it, and
//! the newest segment (made durable by that seal) may be empty or all zeros.
//!
//! One copy in four also loses power in the middle of its first open, before what that
//! open wrote to the group's journal was synced (the zeros of a roll-back, say).
//!
//! A crashed run is now and then preceded by runs that crashed as a process (their unsynced
//! pages stay in the page cache) and were opened again: the syncs of the run that goes on
//! must cover what it builds on.
//!
//! Then: the copy opens; every durable record is intact; offsets are contiguous and every
//! record is one that was appended at that offset; no batch is kept in part; a record whose
//! ack was synced is never delivered again and attempt counts never go below their synced
//! value; the group delivers records appended after the recovery (it does not stall), and
//! a reopen finds what it did. Each scenario then goes on from a recovered copy and loses
//! power a second time.
//!
//! `SEGQ_POWER_SEED=<seed>` replays a run; `SEGQ_POWER_CASES=<n>` runs more scenarios.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{
    CHECKPOINT_SLOT_B, FILE_HEADER_LEN, JOURNAL_ENTRY_LEN, Rng, check_tagged_log, checkpoint_slot, copy_tree,
    journal_entries, latest_snapshot_generation, put_checkpoint_slot, record_spans, segment_base, segment_files,
    tagged, test_seed, untag,
};
use segq::fault;
use segq::{Group, GroupOptions, Options, Queue, SyncPolicy};

const GROUP: &str = "g";
const MAX_ATTEMPTS: u32 = 3;
const PAGE: usize = 4096;
/// Scenarios in CI; each has two power losses and several damaged copies per loss.
const CASES: u64 = 18;
const COPIES_PER_LOSS: usize = 4;
/// Percent of crashed runs that first crash as a process and go on from what they left.
const PROCESS_CRASHES: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Always,
    Interval,
    Never,
}

impl Policy {
    fn sync(self) -> SyncPolicy {
        match self {
            Policy::Always => SyncPolicy::Always,
            Policy::Interval => SyncPolicy::Interval(Duration::from_millis(1)),
            Policy::Never => SyncPolicy::Never,
        }
    }
}

fn options(sync: SyncPolicy) -> Options {
    Options::default().segment_bytes(16 << 10).index_interval_bytes(512).sync(sync)
}

fn open_group(q: &Queue) -> Group {
    q.group_with(GROUP, GroupOptions::default().max_attempts(MAX_ATTEMPTS)).unwrap()
}

/// What the test knows about the queue it drives.
#[derive(Debug, Default, Clone)]
struct Model {
    /// Seed of the record at each offset.
    seeds: Vec<u64>,
    next_seed: u64,
    /// Offsets below this are durable.
    durable: u64,
    /// Acks and highest attempts, as of now and as of the group's last sync.
    acked: HashSet<u64>,
    attempts: HashMap<u64, u32>,
    synced_acked: HashSet<u64>,
    synced_attempts: HashMap<u64, u32>,
    /// Where the group journal was synced to: (snapshot generation, entries). `None`: not
    /// known (under `Interval`).
    journal_synced: Option<(u64, usize)>,
    /// What the crashed run really synced, by file name: the byte ranges each successful
    /// sync made durable (`segq::fault`'s audit).
    synced_ranges: HashMap<String, Vec<std::ops::Range<u64>>>,
    /// How far the crashed run's syncs really made the journal of the group's newest
    /// generation durable, in bytes from the file's start (from the same audit).
    journal_audited: usize,
    /// The snapshot file of the group's newest generation, if the crashed run wrote it
    /// without waiting for its sync (a full journal under `Never`) and the sync never came:
    /// a power loss may lose it.
    unsynced_snapshot: Option<&'static str>,
    /// The group's files as the crashed run found them, by file name: what a page that run
    /// wrote holds after a power loss if it was never written back, since the journal and
    /// the snapshots are written in place.
    group_before: HashMap<String, Vec<u8>>,
    /// The same, as they were in the run's [`burst`] (if it had one) shortly before its last
    /// snapshot, and the syncs the run made before that moment (`segq::fault`'s audit): a
    /// page no later sync covered may have been written back then and not since.
    group_mid: HashMap<String, Vec<u8>>,
    synced_before_mid: Vec<fault::Synced>,
    /// What the crashed run synced after that moment, by file name.
    synced_since_mid: HashMap<String, Vec<std::ops::Range<u64>>>,
}

/// Copies checked, copies that lost records, records lost, redeliveries seen: printed at the
/// end, to show that the damage reaches what it should.
static COPIES: AtomicU64 = AtomicU64::new(0);
static LOSSY_COPIES: AtomicU64 = AtomicU64::new(0);
static RECORDS_LOST: AtomicU64 = AtomicU64::new(0);
static REDELIVERIES: AtomicU64 = AtomicU64::new(0);
static UNFINISHED_SEALS: AtomicU64 = AtomicU64::new(0);
static SEGMENTS_DROPPED: AtomicU64 = AtomicU64::new(0);
static SNAPSHOTS_LOST: AtomicU64 = AtomicU64::new(0);
static OPENS_CUT_SHORT: AtomicU64 = AtomicU64::new(0);
static PROCESS_CRASHED: AtomicU64 = AtomicU64::new(0);

fn group_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("groups").join(GROUP)
}

/// The group's snapshot generation and how many journal entries verify for it.
fn journal_mark(dir: &Path) -> (u64, usize) {
    let generation = latest_snapshot_generation(&group_dir(dir)).expect("a valid snapshot");
    let journal = std::fs::read(group_dir(dir).join("journal")).unwrap();
    (generation, journal_entries(&journal, generation))
}

impl Model {
    /// Notes that everything so far is synced (a `flush`, or any call under `Always`).
    fn synced(&mut self, q: &Queue, policy: Policy) {
        self.durable = self.seeds.len() as u64;
        self.synced_acked = self.acked.clone();
        self.synced_attempts = self.attempts.clone();
        if policy != Policy::Interval {
            self.journal_synced = Some(journal_mark(q.dir()));
        }
    }

    /// Forgets what a recovery that kept offsets `..next` cannot have kept.
    fn recovered(&mut self, next: u64) {
        self.seeds.truncate(next as usize);
        self.durable = next;
        self.acked = self.synced_acked.clone();
        self.attempts = self.synced_attempts.clone();
    }
}

/// Enough records appended, polled and acked to fill the group's journal (10,921 entries)
/// once or twice. Under `Never` the second snapshot is written without waiting for its sync
/// (the first too, unless a flush promised the entries it replaces). The burst stops at
/// once after the last (or a pair or two later, or a few hundred), so that its sync may
/// still be running when the run crashes.
fn burst(q: &Queue, g: &Group, m: &mut Model, rng: &mut Rng) {
    const RECORDS: u16 = 11_200;
    for _ in 0..RECORDS / 50 {
        let seed = m.next_seed;
        m.next_seed += 64;
        let payloads: Vec<Vec<u8>> = (0..50).map(|i| tagged(seed + u64::from(i), i, 50)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let range = q.append_batch(&refs).unwrap();
        assert_eq!(range.start, m.seeds.len() as u64);
        m.seeds.extend((0..50).map(|i| seed + i));
    }
    let generation = latest_snapshot_generation(&group_dir(q.dir())).expect("a valid snapshot");
    let snapshots = rng.range(1..3);
    let mut left: Option<u64> = None;
    for polls in 0.. {
        if left == Some(0) {
            break;
        }
        if left.is_none() && polls % 500 == 0 {
            // The group's files now and then until the last snapshot: the journal full of
            // the entries of the generation before it, which a power loss may keep on a
            // page where the last generation's entries were written since.
            m.synced_before_mid.extend(fault::take_synced(q.dir()));
            m.group_mid = group_files(q.dir());
        }
        let Some(d) = g.poll(Duration::ZERO).unwrap() else { break };
        m.attempts.insert(d.offset(), d.attempt());
        g.ack(d.offset()).unwrap();
        m.acked.insert(d.offset());
        left = match left {
            Some(n) => Some(n - 1),
            None => {
                let now = latest_snapshot_generation(&group_dir(q.dir())).expect("a valid snapshot");
                // A pair or two, or a page of entries and more: a power loss may then keep
                // the journal's first page as it was and the next one as it is.
                (now >= generation + snapshots).then(|| if rng.chance(30) { rng.range(100..400) } else { rng.below(3) })
            }
        };
    }
}

/// Random appends, batches, polls, acks, nacks (one by one and in batches) and (under
/// `Never`) flushes, and under `Never` now and then a [`burst`] at the end.
fn workload(q: &Queue, g: &Group, m: &mut Model, rng: &mut Rng, policy: Policy) {
    for _ in 0..rng.range(20..90) {
        match rng.below(100) {
            0..45 => {
                let count = if rng.chance(70) { 1 } else { rng.range(2..7) as u16 };
                let seed = m.next_seed;
                m.next_seed += 32;
                let payloads: Vec<Vec<u8>> = (0..count).map(|i| tagged(seed + u64::from(i), i, count)).collect();
                let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                let range = q.append_batch(&refs).unwrap();
                assert_eq!(range.start, m.seeds.len() as u64);
                m.seeds.extend((0..u64::from(count)).map(|i| seed + i));
            }
            45..70 => {
                let Some(d) = g.poll(Duration::ZERO).unwrap() else { continue };
                let o = d.offset();
                assert_eq!(untag(d.payload()).unwrap().0, m.seeds[o as usize]);
                m.attempts.insert(o, d.attempt());
                match rng.below(10) {
                    0..7 => {
                        g.ack(o).unwrap();
                        m.acked.insert(o);
                    }
                    7..9 => g.nack(o, Duration::ZERO).unwrap(),
                    _ => {}
                }
            }
            70..90 => {
                // The same in batches: one sync for the deliveries, one for the acks, one for
                // the nacks.
                let batch = g.poll_batch(rng.range(1..6) as usize, Duration::ZERO).unwrap();
                let (mut acks, mut nacks) = (Vec::new(), Vec::new());
                for d in &batch {
                    let o = d.offset();
                    assert_eq!(untag(d.payload()).unwrap().0, m.seeds[o as usize]);
                    m.attempts.insert(o, d.attempt());
                    match rng.below(10) {
                        0..7 => acks.push(o),
                        7..9 => nacks.push(o),
                        _ => {}
                    }
                }
                g.ack_batch(&acks).unwrap();
                g.nack_batch(&nacks, Duration::ZERO).unwrap();
                m.acked.extend(acks);
            }
            _ if policy == Policy::Never => {
                q.flush().unwrap();
                m.synced(q, policy);
            }
            _ => {}
        }
        if policy == Policy::Always {
            m.synced(q, policy);
        }
    }
    if policy == Policy::Never && rng.chance(40) {
        burst(q, g, m, rng);
    }
    if policy == Policy::Interval {
        m.durable = q.durable_offset();
    }
}

/// Damage `region` of `bytes` the way a power loss could have left it, given that nothing
/// in it was synced. Returns what it did.
fn lose(bytes: &mut Vec<u8>, from: usize, rng: &mut Rng, allow_cut: bool) -> String {
    let len = bytes.len();
    if from >= len {
        return "nothing past the synced point".into();
    }
    match rng.below(if allow_cut { 6 } else { 5 }) {
        0 => {
            bytes[from..].fill(0);
            format!("zeros from {from}")
        }
        1 => {
            // Each page past the synced point: never written back, written back whole, or
            // written back at an earlier moment (a prefix of what is there now).
            let mut what = String::new();
            let mut page = from / PAGE * PAGE;
            while page < len {
                let start = page.max(from);
                let end = (page + PAGE).min(len);
                match rng.below(3) {
                    0 => {
                        bytes[start..end].fill(0);
                        what.push('0');
                    }
                    1 => what.push('k'),
                    _ => {
                        let cut = rng.range(start as u64..end as u64 + 1) as usize;
                        bytes[cut..end].fill(0);
                        what.push('p');
                    }
                }
                page += PAGE;
                if what.len() > 64 {
                    break;
                }
            }
            format!("pages from {from}: {what}")
        }
        2 => {
            // 512-byte sectors, kept or zeroed.
            let mut sector = from;
            let mut zeroed = 0;
            while sector < len.min(from + 64 * 512) {
                let end = ((sector / 512 + 1) * 512).min(len);
                if rng.chance(50) {
                    bytes[sector..end].fill(0);
                    zeroed += 1;
                }
                sector = end;
            }
            format!("{zeroed} sectors zeroed from {from}")
        }
        3 => {
            let at = rng.range(from as u64..len as u64) as usize;
            let n = (rng.range(1..3000) as usize).min(len - at);
            let garbage = rng.bytes(n);
            bytes[at..at + n].copy_from_slice(&garbage);
            format!("{n} garbage bytes at {at} (synced up to {from})")
        }
        4 => "everything written back".into(),
        _ => {
            let at = rng.range(from as u64..len as u64 + 1) as usize;
            bytes.truncate(at);
            format!("cut at {at} (synced up to {from})")
        }
    }
}

/// The group's files in `dir` that exist, by name.
fn group_files(dir: &Path) -> HashMap<String, Vec<u8>> {
    ["journal", "state", "state.1"]
        .into_iter()
        .filter_map(|name| Some((name.to_string(), std::fs::read(group_dir(dir).join(name)).ok()?)))
        .collect()
}

/// Each page of the group file `name` (`bytes`, as the crashed run left it) from byte
/// `from` on: kept (written back at the end), or as it was before the run if no sync of
/// the run covered it, or as it was shortly before its [`burst`]'s last snapshot if no
/// later sync did (written back then, not since). A file written in place holds what it held before where
/// a page was not written back (zeros past its end then).
fn written_back_or_not(bytes: &mut [u8], name: &str, from: usize, m: &Model, rng: &mut Rng) -> String {
    let (no_ranges, no_bytes) = (Vec::new(), Vec::new());
    let covered = |ranges: &HashMap<String, Vec<std::ops::Range<u64>>>, page: usize| {
        ranges.get(name).unwrap_or(&no_ranges).iter().any(|r| r.start < (page + PAGE) as u64 && r.end > page as u64)
    };
    let mut what = String::new();
    let mut page = from / PAGE * PAGE;
    while page < bytes.len() {
        let (start, end) = (page.max(from), (page + PAGE).min(bytes.len()));
        let mut versions = vec![('k', None)];
        if !covered(&m.synced_ranges, page) {
            versions.push(('o', Some(m.group_before.get(name).unwrap_or(&no_bytes))));
        }
        if let Some(mid) = m.group_mid.get(name)
            && !covered(&m.synced_since_mid, page)
        {
            versions.push(('m', Some(mid)));
        }
        let (mark, version) = versions[rng.below(versions.len() as u64) as usize];
        if let Some(old) = version {
            for (at, byte) in bytes[start..end].iter_mut().enumerate() {
                *byte = old.get(start + at).copied().unwrap_or(0);
            }
        }
        what.push(mark);
        page += PAGE;
    }
    what.truncate(64);
    format!("pages from {from}: kept (k), as before the run (o), as in its burst (m): {what}")
}

/// Drops from a copy of a crashed directory what a power loss could drop, losing a snapshot
/// that was never synced with a chance of `snapshot_loss` percent. Returns a description of
/// what it did.
fn power_loss(dir: &Path, m: &Model, rng: &mut Rng, snapshot_loss: u64) -> String {
    let mut what = Vec::new();
    let files = segment_files(dir);
    if files.len() >= 2 && m.durable <= segment_base(&files[files.len() - 1]) && rng.chance(40) {
        what.push(unfinished_seal(dir, &files[files.len() - 2], m, rng));
        UNFINISHED_SEALS.fetch_add(1, Ordering::Relaxed);
    }
    let active = segment_files(dir).pop().unwrap();
    let base = segment_base(&active);
    let mut bytes = std::fs::read(&active).unwrap();
    let spans = record_spans(&bytes);
    let position_of = |offset: u64| -> usize {
        match offset.checked_sub(base) {
            None | Some(0) => FILE_HEADER_LEN,
            Some(k) => spans.get(k as usize).map_or_else(|| spans.last().unwrap().end, |s| s.start),
        }
    };
    // The synced end of the newest segment: what the run's syncs really covered (its
    // audit), not what the model was told. A sync that segq skipped or cut short then loses
    // records the model holds durable, and the check after fails. The model's position
    // must be covered anyway, and a checkpoint slot can only name a synced position.
    let checkpoint_path = dir.join("checkpoint");
    let mut checkpoint = std::fs::read(&checkpoint_path).unwrap();
    let name = active.file_name().unwrap().to_string_lossy().into_owned();
    // (The header stays: a new file's header that was never synced reads as zeros or as
    // itself, and the model keeps it as before.)
    let synced = (synced_prefix(m, &name) as usize).max(FILE_HEADER_LEN).min(bytes.len());
    if m.durable > base {
        assert!(
            synced >= position_of(m.durable),
            "{name}: records below durable offset {} (to byte {}) were not synced (synced to {synced})",
            m.durable,
            position_of(m.durable)
        );
    }
    for at in [0, CHECKPOINT_SLOT_B] {
        if let Some((b, position, _, _)) = checkpoint_slot(&checkpoint, at)
            && b == base
        {
            assert!(position as usize <= synced, "{name}: a checkpoint slot names {position}, synced to {synced}");
        }
    }
    what.push(format!("log {}: {}", active.display(), lose(&mut bytes, synced, rng, true)));
    std::fs::write(&active, &bytes).unwrap();

    // Slot B is written without a sync: it may not have reached the disk.
    if checkpoint.len() > CHECKPOINT_SLOT_B && rng.chance(40) {
        checkpoint[CHECKPOINT_SLOT_B..].fill(0);
        std::fs::write(&checkpoint_path, &checkpoint).unwrap();
        what.push("checkpoint slot B lost".into());
    }

    // The active index is never synced: any state of it is possible.
    let index = active.with_extension("index");
    if index.exists() {
        let mut bytes = std::fs::read(&index).unwrap();
        match rng.below(4) {
            0 => {
                std::fs::remove_file(&index).unwrap();
                what.push("index deleted".into());
            }
            1 => {
                let from = rng.below(bytes.len() as u64 + 1) as usize;
                what.push(format!("index: {}", lose(&mut bytes, from, rng, true)));
                std::fs::write(&index, &bytes).unwrap();
            }
            _ => {}
        }
    }

    // The journal past what the run's syncs covered, whatever the policy. Under `Always`
    // and `Never` that must reach what the model holds synced; a snapshot written since
    // made the model's older entries redundant.
    let journal_path = group_dir(dir).join("journal");
    let mut journal = std::fs::read(&journal_path).unwrap();
    let now = latest_snapshot_generation(&group_dir(dir)).expect("a valid snapshot");
    if let Some((generation, entries)) = m.journal_synced
        && generation == now
    {
        let promised = FILE_HEADER_LEN + entries * JOURNAL_ENTRY_LEN;
        assert!(
            m.journal_audited >= promised,
            "journal entries to byte {promised} were acknowledged as synced, the syncs reached {}",
            m.journal_audited
        );
    }
    let lost = if rng.chance(40) {
        written_back_or_not(&mut journal, "journal", m.journal_audited, m, rng)
    } else {
        lose(&mut journal, m.journal_audited, rng, false)
    };
    what.push(format!("journal: {lost}"));
    std::fs::write(&journal_path, &journal).unwrap();

    // A snapshot written without waiting for its sync, which never came: lost, or written
    // back only in part. (`state` existed before, so it cannot vanish; `state.1` may be new.)
    if let Some(name) = m.unsynced_snapshot
        && rng.chance(snapshot_loss)
    {
        let path = group_dir(dir).join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        match rng.below(4) {
            3 => {
                let reverted = written_back_or_not(&mut bytes, name, 0, m, rng);
                std::fs::write(&path, &bytes).unwrap();
                what.push(format!("snapshot {name}: {reverted}"));
            }
            0 if name == "state.1" => std::fs::remove_file(&path).unwrap(),
            0 | 1 => {
                bytes.fill(0);
                std::fs::write(&path, &bytes).unwrap();
            }
            _ => {
                bytes.truncate(rng.below(bytes.len() as u64) as usize);
                std::fs::write(&path, &bytes).unwrap();
            }
        }
        SNAPSHOTS_LOST.fetch_add(1, Ordering::Relaxed);
        what.push(format!("snapshot {name} (never synced) lost"));
    }
    what.join("; ")
}

/// A power loss in the middle of the first open of a damaged copy, before anything that
/// open wrote to the group's journal was synced (the zeros of a roll-back, say): each page
/// of the journal is left as it was before the open or as the open left it, and the file
/// keeps either length. The copy must then open as if that open had never run. Returns
/// what it did.
fn open_cut_short(dir: &Path, rng: &mut Rng) -> String {
    let journal = group_dir(dir).join("journal");
    let before = std::fs::read(&journal).unwrap();
    let Ok(q) = Queue::open(dir, options(SyncPolicy::Never)) else {
        return "the queue does not open: left to the check".into();
    };
    fault::inject(fault::Fault::new(&journal, fault::Point::Sync).times(u64::MAX));
    let group = q.group(GROUP).map(drop);
    fault::clear(&journal);
    q.simulate_crash();
    let after = std::fs::read(&journal).unwrap();
    if after == before {
        return format!("an open that wrote nothing to the journal ({group:?})");
    }
    OPENS_CUT_SHORT.fetch_add(1, Ordering::Relaxed);
    let len = if rng.chance(50) { before.len() } else { after.len() };
    let mut pages = String::new();
    let mut mixed = vec![0; len];
    for (i, page) in mixed.chunks_mut(PAGE).enumerate() {
        let (from, mark) = if rng.chance(50) { (&before, 'o') } else { (&after, 'n') };
        let start = i * PAGE;
        let n = page.len().min(from.len().saturating_sub(start));
        page[..n].copy_from_slice(&from[start..start + n]);
        if pages.len() < 64 {
            pages.push(mark);
        }
    }
    std::fs::write(&journal, &mixed).unwrap();
    format!("an open cut short ({group:?}), journal pages old or new: {pages}")
}

/// Puts `prev`, the segment before the newest, back to a moment in its seal: preallocated
/// again, its data lost past its synced point, its index never synced, and the checkpoint
/// naming it (at that point) but not the newest segment.
fn unfinished_seal(dir: &Path, prev: &Path, m: &Model, rng: &mut Rng) -> String {
    let base = segment_base(prev);
    let mut bytes = std::fs::read(prev).unwrap();
    let spans = record_spans(&bytes);
    let durable = m.durable.max(base);
    let synced = match durable - base {
        0 => FILE_HEADER_LEN,
        k => spans.get(k as usize).map_or_else(|| spans.last().unwrap().end, |s| s.start),
    };
    let mut checkpoint = vec![0u8; CHECKPOINT_SLOT_B + 64];
    put_checkpoint_slot(&mut checkpoint, 0, base, synced as u64, durable, false);
    if rng.chance(50) {
        put_checkpoint_slot(&mut checkpoint, CHECKPOINT_SLOT_B, base, synced as u64, durable, false);
    }
    std::fs::write(dir.join("checkpoint"), &checkpoint).unwrap();
    bytes.resize(bytes.len().max(16 << 10), 0);
    // Its blocks were reserved when it was created: a power loss cannot shorten it.
    let lost = lose(&mut bytes, synced, rng, false);
    std::fs::write(prev, &bytes).unwrap();
    let index = prev.with_extension("index");
    if index.exists() && rng.chance(50) {
        std::fs::remove_file(&index).unwrap();
    }
    // The seal also makes the newest segment's creation durable: it may not have been.
    let newest = segment_files(dir).pop().unwrap();
    let created = match rng.below(4) {
        0 => {
            std::fs::write(&newest, b"").unwrap();
            "; the newest segment empty"
        }
        1 => {
            let len = std::fs::metadata(&newest).unwrap().len() as usize;
            std::fs::write(&newest, vec![0u8; len]).unwrap();
            "; the newest segment all zeros"
        }
        _ => "",
    };
    format!("seal of {} unfinished: {lost}{created}", prev.display())
}

/// Opens a damaged copy and checks every promise; drains the group, then checks that it
/// delivers new records.
fn check(dir: &Path, m: &Model, policy: Policy) -> Result<(), String> {
    let q = Queue::open(dir, options(SyncPolicy::Never)).map_err(|e| format!("open: {e}"))?;
    let next = q.next_offset();
    if q.first_offset() != 0 {
        return Err(format!("first offset {}", q.first_offset()));
    }
    if next < m.durable {
        return Err(format!("offsets {next}..{} were durable and are gone", m.durable));
    }
    if next > m.seeds.len() as u64 {
        return Err(format!("the log has {next} records, only {} were appended", m.seeds.len()));
    }
    COPIES.fetch_add(1, Ordering::Relaxed);
    let dropped = q.recovery().damage.as_deref().is_some_and(|d| d.contains("was deleted"));
    SEGMENTS_DROPPED.fetch_add(u64::from(dropped), Ordering::Relaxed);
    let lost = m.seeds.len() as u64 - next;
    LOSSY_COPIES.fetch_add(u64::from(lost > 0), Ordering::Relaxed);
    RECORDS_LOST.fetch_add(lost, Ordering::Relaxed);
    let seeds = check_tagged_log(&q)?;
    if let Some(o) = (0..next as usize).find(|&o| seeds[o] != m.seeds[o]) {
        return Err(format!("record {o} is not the one appended there"));
    }
    for o in 0..m.durable {
        let rec = q.read(o).map_err(|e| format!("read {o}: {e}"))?.ok_or(format!("read {o}: None"))?;
        if untag(rec.payload())?.0 != m.seeds[o as usize] {
            return Err(format!("read {o} gives another record"));
        }
    }
    let g = q.group(GROUP).map_err(|e| format!("open group: {e}"))?;
    let st = g.stats();
    if st.ack_floor > next || st.next_delivery > next {
        return Err(format!("group is ahead of a log of {next} records: {st:?}"));
    }
    let know_group = policy != Policy::Interval;
    let mut delivered = 0;
    while let Some(d) = g.poll(Duration::ZERO).map_err(|e| format!("poll: {e}"))? {
        let o = d.offset();
        delivered += 1;
        if know_group && m.synced_acked.contains(&o) {
            return Err(format!("record {o} was acked (synced) and is delivered again"));
        }
        let before = if know_group { m.synced_attempts.get(&o).copied().unwrap_or(0) } else { 0 };
        if d.attempt() <= before || d.attempt() > MAX_ATTEMPTS {
            return Err(format!("record {o} delivered with attempt {} after a synced {before}", d.attempt()));
        }
        REDELIVERIES.fetch_add(u64::from(d.attempt() > 1), Ordering::Relaxed);
        g.ack(o).map_err(|e| format!("ack {o}: {e}"))?;
        if delivered > 100_000 {
            return Err("the group never runs dry".into());
        }
    }
    if g.ack_floor() != next {
        return Err(format!("after acking everything the ack floor is {}, not {next}", g.ack_floor()));
    }
    // The group must deliver what comes after the recovery (not wait for offsets it saw
    // before the loss).
    for i in 0..3u64 {
        q.append(&tagged(u64::MAX - i, 0, 1)).map_err(|e| format!("append after recovery: {e}"))?;
    }
    for i in 0..3u64 {
        let d = g.poll(Duration::ZERO).map_err(|e| e.to_string())?.ok_or("the group stalls after recovery")?;
        if d.offset() != next + i {
            return Err(format!("after recovery the group delivers {}, not {}", d.offset(), next + i));
        }
    }
    drop(g);
    q.close().map_err(|e| format!("close: {e}"))?;
    // What the recovered group did is what the next open finds: every ack, and the three
    // records it leased, due again. (Entries left over from before the loss must not come
    // back.)
    let q = Queue::open(dir, options(SyncPolicy::Never)).map_err(|e| format!("reopen: {e}"))?;
    let g = q.group(GROUP).map_err(|e| format!("reopen the group: {e}"))?;
    let mut again = Vec::new();
    while let Some(d) = g.poll(Duration::ZERO).map_err(|e| format!("poll after reopening: {e}"))? {
        again.push((d.offset(), d.attempt()));
    }
    if g.ack_floor() != next || again != [(next, 2), (next + 1, 2), (next + 2, 2)] {
        return Err(format!("reopened: ack floor {}, delivers {again:?}; expected {next} and 3 leased", g.ack_floor()));
    }
    drop(g);
    q.close().map_err(|e| format!("close after reopening: {e}"))
}

/// Crashes a queue after a workload and returns the crashed directory's model.
fn crashed_run(dir: &Path, m: &mut Model, rng: &mut Rng, policy: Policy) {
    fault::audit(dir);
    fault::take_synced(dir);
    m.group_before = group_files(dir);
    m.group_mid.clear();
    m.synced_before_mid.clear();
    // Now and then the run is two (or more): the first crashes as a process does, leaving
    // what it did not sync in the page cache, and the second opens what it left and goes
    // on. Nothing of the first is durable but what its syncs, or the second's, covered.
    let mut opened = None;
    let (q, g) = loop {
        let q = Queue::open(dir, options(policy.sync())).unwrap();
        m.recovered(q.next_offset());
        let g = open_group(&q);
        if opened.is_none() {
            // What the journal held when the group first opened was on disk: the copy was
            // opened as the power loss left it.
            opened = Some(journal_mark(dir));
            if policy != Policy::Interval {
                m.journal_synced = opened;
            }
        }
        workload(&q, &g, m, rng, policy);
        if !rng.chance(PROCESS_CRASHES) {
            break (q, g);
        }
        drop(g);
        q.simulate_crash();
        PROCESS_CRASHED.fetch_add(1, Ordering::Relaxed);
    };
    // The group's files as of the workload's last call: a snapshot's sync that a thread
    // finishes after it (while the crash below stops the queue) is taken as cut off by the
    // power loss. The group never learnt of it, so it must cope without it.
    let mut group_synced = std::mem::take(&mut m.synced_before_mid);
    let mid = group_synced.len();
    group_synced.extend(fault::take_synced(dir));
    drop(g);
    q.simulate_crash();
    let mut synced = group_synced.clone();
    synced.extend(fault::take_synced(dir));
    let opened = opened.expect("the group opened");
    m.journal_audited = audited_journal(dir, &group_synced, opened, policy);
    let now = latest_snapshot_generation(&group_dir(dir)).expect("a valid snapshot");
    m.unsynced_snapshot =
        (now != opened.0 && newest_snapshot_sync(dir, &group_synced).is_none()).then(|| snapshot_file(now));
    m.synced_ranges.clear();
    m.synced_since_mid.clear();
    for (i, synced) in synced.into_iter().enumerate() {
        let name = synced.path.file_name().expect("a file").to_string_lossy().into_owned();
        if i >= mid {
            m.synced_since_mid.entry(name.clone()).or_default().push(synced.range.clone());
        }
        m.synced_ranges.entry(name).or_default().push(synced.range);
    }
}

/// The file that holds the group's snapshot of `generation`.
fn snapshot_file(generation: u64) -> &'static str {
    if generation.is_multiple_of(2) { "state" } else { "state.1" }
}

/// Where in `synced` (oldest first) the run synced the snapshot of the group's newest
/// generation: after the last sync of the other snapshot file, which a new snapshot waits
/// for before it is written. `None` if it did not.
fn newest_snapshot_sync(dir: &Path, synced: &[fault::Synced]) -> Option<usize> {
    let group = group_dir(dir);
    let now = latest_snapshot_generation(&group).expect("a valid snapshot");
    let (mine, other) = (group.join(snapshot_file(now)), group.join(snapshot_file(now.wrapping_add(1))));
    let after = synced.iter().rposition(|s| s.path == other).map_or(0, |i| i + 1);
    synced.iter().enumerate().skip(after).rfind(|(_, s)| s.path == mine).map(|(i, _)| i)
}

/// How far the run's syncs (`synced`, oldest first) made the journal of the group's newest
/// generation durable. The journal restarts once the snapshot of a new generation is
/// written: synced first under `Always` and `Interval`, so the journal's syncs count from
/// that snapshot's sync (if this run wrote it), else from what the journal held when the
/// group opened. Under `Never` a full journal's snapshot may not have been synced at all:
/// then nothing of its generation's journal is durable either.
fn audited_journal(dir: &Path, synced: &[fault::Synced], opened: (u64, usize), policy: Policy) -> usize {
    let group = group_dir(dir);
    let now = latest_snapshot_generation(&group).expect("a valid snapshot");
    let (since, start) = match newest_snapshot_sync(dir, synced) {
        Some(i) if now != opened.0 || opened.1 == 0 => (i + 1, FILE_HEADER_LEN),
        _ if now == opened.0 => (0, FILE_HEADER_LEN + opened.1 * JOURNAL_ENTRY_LEN),
        _ => {
            assert_eq!(policy, Policy::Never, "generation {now} was written, and its snapshot not synced");
            return FILE_HEADER_LEN;
        }
    };
    let journal = group.join("journal");
    let mut ranges: Vec<_> = synced[since..].iter().filter(|s| s.path == journal).map(|s| s.range.clone()).collect();
    ranges.sort_by_key(|r| r.start);
    ranges.iter().fold(start as u64, |done, r| if r.start <= done { done.max(r.end) } else { done }) as usize
}

/// How many bytes from the start of the file `name` the crashed run synced, one range
/// after another.
fn synced_prefix(m: &Model, name: &str) -> u64 {
    let mut ranges = m.synced_ranges.get(name).cloned().unwrap_or_default();
    ranges.sort_by_key(|r| r.start);
    ranges.iter().fold(0, |done, r| if r.start <= done { done.max(r.end) } else { done })
}

fn scenario(case: u64, seed: u64) {
    let mut rng = Rng::new(seed ^ case.wrapping_mul(0x9E37_79B9));
    let policy = [Policy::Always, Policy::Never, Policy::Interval][(case % 3) as usize];
    let root = tempfile::tempdir().unwrap();
    let mut m = Model::default();
    let mut dir = root.path().join("run0");
    crashed_run(&dir, &mut m, &mut rng, policy);
    for loss in 0..2 {
        for copy in 0..COPIES_PER_LOSS {
            let target = root.path().join(format!("loss{loss}-copy{copy}"));
            copy_tree(&dir, &target);
            // The last copy loses power again in its first open, which is most worth it
            // when that open rolls the group back: the roll-back's zeros are cut short.
            let cut_short = copy == COPIES_PER_LOSS - 1;
            let mut what = power_loss(&target, &m, &mut rng, if cut_short { 100 } else { 60 });
            if cut_short {
                what = format!("{what}; then {}", open_cut_short(&target, &mut rng));
            }
            if let Err(e) = check(&target, &m, policy) {
                let kept = root.keep();
                panic!(
                    "case {case} ({policy:?}), power loss {loss}, copy {copy}: {e}\n damage: {what}\n \
                     SEGQ_POWER_SEED={seed}; directories kept in {}",
                    kept.display()
                );
            }
        }
        if loss == 0 {
            // Go on from a damaged copy: recover it, run more, lose power again.
            let next = root.path().join("run1");
            copy_tree(&dir, &next);
            power_loss(&next, &m, &mut rng, 60);
            dir = next;
            crashed_run(&dir, &mut m, &mut rng, policy);
        }
    }
}

#[test]
fn unsynced_data_lost_in_every_way_keeps_every_promise() {
    let seed = test_seed("SEGQ_POWER_SEED");
    let cases = std::env::var("SEGQ_POWER_CASES").ok().map_or(CASES, |c| c.parse().unwrap());
    for case in 0..cases {
        scenario(case, seed);
    }
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "power loss: {cases} scenarios, {} damaged copies checked, {} lost records ({} in all), {} redeliveries, \
         {} unfinished seals ({} newest segments deleted), {} snapshots lost that were never synced, {} opens \
         cut short after they wrote to the journal, {} process crashes a run went on from",
        count(&COPIES),
        count(&LOSSY_COPIES),
        count(&RECORDS_LOST),
        count(&REDELIVERIES),
        count(&UNFINISHED_SEALS),
        count(&SEGMENTS_DROPPED),
        count(&SNAPSHOTS_LOST),
        count(&OPENS_CUT_SHORT),
        count(&PROCESS_CRASHED)
    );
    assert!(count(&UNFINISHED_SEALS) > 0, "no copy stopped a seal half done");
}
