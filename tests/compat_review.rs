//! On-disk compatibility review: queues written by older builds, opened with this one.
//!
//! `tests/fixtures/compat/<commit>/<clean|crash>/` holds a queue directory written by the
//! build of `<commit>` with `examples/compat_write.rs` (added in a worktree of that commit
//! only; its source is kept next to the fixtures as `compat_write.rs.txt`), under
//! `SyncPolicy::Always`, 4 KiB segments (five of them, singles and batches), and seven
//! groups: acks out of order, leases held at exit (one on its last attempt), nacks due at
//! once, in 2 s, in an hour, in 50 years and never (`Duration::MAX`), dead letters, redriven
//! records (one taken again and held), a settings change (a snapshot with content in
//! `state.1`), `poll_batch`/`ack_batch`/`nack_batch`, a seek back, a group never polled,
//! and a record nacked thousands of times (in `335547c/crash`, a 1 MiB journal with entries
//! past 256 KiB). `clean` was closed; `crash` was left by `std::process::abort()` with
//! every handle open.
//!
//! Each directory is stored as `tree/` (every file cut after its last non-zero byte) and
//! `files.txt` (each file's full length), and is rebuilt in a temporary directory.
//! `manifest` is what the writer acknowledged: every record (offset, timestamp, length,
//! FNV-1a of the payload) and each group's settings, next delivery and the state of every
//! offset it delivered (acked, leased with its attempts, waiting with its attempts and
//! due time in ms since the epoch, dead with its attempts). `oldview` is what the old build
//! itself saw on reopening a copy 3 s later (the same procedure as [`take_view`]), which
//! checks the expectations below against the old build's own behaviour.
//!
//! Regenerating (see the report of the review): for each commit, a worktree, the example,
//! `compat_write write <dir> clean 40 <manifest>`, `... crash <cycles> ...`,
//! `compat_write read <copy> <view>` (`gen.sh.txt`), `compat_write midrun <dir> 77 <manifest>`
//! for `midrun`, then `pack.py.txt <out> tests/fixtures/compat`. 1058fb2 needs
//! `compat_write_nobatch.rs.txt` (no batch calls then).
//!
//! (Written by the session-22 review of on-disk compatibility: every test passed.)
use segq::inspect::{QueueDir, Severity, verify};
use segq::{Options, Queue, SyncPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const COMMITS: [&str; 4] = ["1058fb2", "335547c", "29e3947", "25215a4"];
/// A due time this close to the view's clock may or may not have passed: either is right.
const MARGIN_MS: u64 = 2_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compat")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn fnv(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The options the writer used.
fn options() -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(256).sync(SyncPolicy::Always)
}

/// Rebuilds the stored directory `<commit>/<mode>` in a new temporary directory; returns
/// it and the queue's path inside it.
fn materialize(commit: &str, mode: &str) -> (tempfile::TempDir, PathBuf) {
    let src = fixtures().join(commit).join(mode);
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("q");
    std::fs::create_dir(&q).unwrap();
    let list = std::fs::read_to_string(src.join("files.txt")).unwrap();
    for line in list.lines().filter(|l| !l.is_empty()) {
        let (rel, len) = line.rsplit_once(' ').unwrap();
        let len: u64 = len.parse().unwrap();
        let dst = q.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let stored = src.join("tree").join(rel);
        if stored.exists() {
            std::fs::copy(&stored, &dst).unwrap();
        } else {
            std::fs::File::create(&dst).unwrap();
        }
        std::fs::OpenOptions::new().write(true).open(&dst).unwrap().set_len(len).unwrap();
    }
    (tmp, q)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum St {
    Acked,
    Leased(u32),
    Waiting(u32, u64),
    Dead(u32),
}

#[derive(Debug)]
struct MGroup {
    lease_ms: u64,
    max: u32,
    next: u64,
    st: BTreeMap<u64, St>,
}

#[derive(Debug)]
struct Manifest {
    first: u64,
    next: u64,
    /// offset -> (timestamp, length, hash)
    records: BTreeMap<u64, (u64, usize, u64)>,
    groups: BTreeMap<String, MGroup>,
}

fn manifest(commit: &str, mode: &str) -> Manifest {
    let text = std::fs::read_to_string(fixtures().join(commit).join(mode).join("manifest")).unwrap();
    let mut m = Manifest { first: 0, next: 0, records: BTreeMap::new(), groups: BTreeMap::new() };
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> u64 { w[i].parse().unwrap() };
        match w[0] {
            "first_offset" => m.first = n(1),
            "next_offset" => m.next = n(1),
            "record" => {
                m.records.insert(n(1), (n(2), n(3) as usize, u64::from_str_radix(w[4], 16).unwrap()));
            }
            "group" => {
                m.groups
                    .insert(w[1].into(), MGroup { lease_ms: n(2), max: n(3) as u32, next: n(4), st: BTreeMap::new() });
            }
            "st" => {
                let s = match w[3] {
                    "acked" => St::Acked,
                    "leased" => St::Leased(n(4) as u32),
                    "waiting" => St::Waiting(n(4) as u32, n(5)),
                    "dead" => St::Dead(n(4) as u32),
                    other => panic!("state {other}"),
                };
                m.groups.get_mut(w[1]).unwrap().st.insert(n(2), s);
            }
            _ => {}
        }
    }
    m
}

#[derive(Debug, Default)]
struct GView {
    lease_ms: u64,
    max: u32,
    floor: u64,
    leased: u64,
    waiting: u64,
    dead: u64,
    lost: u64,
    dead_letters: Vec<(u64, u32)>,
    /// In the order polled.
    deliveries: Vec<(u64, u32)>,
    /// Deliveries whose payload is not the manifest's record.
    bad_payloads: Vec<u64>,
}

#[derive(Debug, Default)]
struct View {
    view_ms: u64,
    first: u64,
    next: u64,
    records: Option<BTreeMap<u64, (u64, usize, u64)>>,
    groups: BTreeMap<String, GView>,
}

/// What the old build saw, from `oldview`.
fn old_view(commit: &str, mode: &str) -> View {
    let text = std::fs::read_to_string(fixtures().join(commit).join(mode).join("oldview")).unwrap();
    let mut v = View::default();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> u64 { w[i].parse().unwrap() };
        match w[0] {
            "view_ms" => v.view_ms = n(1),
            "first_offset" => v.first = n(1),
            "next_offset" => v.next = n(1),
            "gview" => {
                v.groups.insert(
                    w[1].into(),
                    GView {
                        lease_ms: n(2),
                        max: n(3) as u32,
                        floor: n(5),
                        leased: n(7),
                        waiting: n(9),
                        dead: n(11),
                        lost: n(13),
                        ..GView::default()
                    },
                );
            }
            "vdead" => v.groups.get_mut(w[1]).unwrap().dead_letters.push((n(2), n(3) as u32)),
            "vdlv" => v.groups.get_mut(w[1]).unwrap().deliveries.push((n(2), n(3) as u32)),
            "vrun" => {
                let g = v.groups.get_mut(w[1]).unwrap();
                g.deliveries.extend((n(2)..=n(3)).map(|o| (o, 1)));
            }
            other => panic!("oldview line {other}"),
        }
    }
    v
}

/// What this build sees: every record, then for each group its settings, stats and dead
/// letters, and everything a poll hands out (`Duration::ZERO`) until nothing is due; the
/// payloads are checked against `m`.
fn take_view(q: &Queue, m: &Manifest) -> View {
    let mut v = View { view_ms: now_ms(), first: q.first_offset(), next: q.next_offset(), ..View::default() };
    let mut records = BTreeMap::new();
    for r in q.iter_from(q.first_offset()) {
        let r = r.unwrap();
        records.insert(r.offset(), (r.timestamp_ms(), r.payload().len(), fnv(r.payload())));
    }
    v.records = Some(records);
    for name in q.groups().unwrap() {
        let g = q.group(&name).unwrap();
        let o = g.options();
        let s = g.stats();
        let mut gv = GView {
            lease_ms: o.get_lease().as_millis().min(u128::from(u64::MAX)) as u64,
            max: o.get_max_attempts(),
            floor: g.ack_floor(),
            leased: s.leased,
            waiting: s.waiting,
            dead: s.dead,
            lost: s.lost,
            ..GView::default()
        };
        gv.dead_letters = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
        while let Some(d) = g.poll(Duration::ZERO).unwrap() {
            if m.records.get(&d.offset()).map(|r| r.2) != Some(fnv(d.payload())) {
                gv.bad_payloads.push(d.offset());
            }
            gv.deliveries.push((d.offset(), d.attempt()));
            assert!(gv.deliveries.len() < 100_000);
        }
        v.groups.insert(name, gv);
    }
    v
}

/// What a view taken at `v.view_ms` must show, by the manifest; every difference, as text.
/// `head` adds the checks of this build's stats (older builds counted a last attempt whose
/// lease ran out as waiting, not dead, until session 18).
fn check_view(m: &Manifest, v: &View, head: bool) -> Vec<String> {
    let mut bad = Vec::new();
    if (v.first, v.next) != (m.first, m.next) {
        bad.push(format!("log offsets {}..{}, manifest {}..{}", v.first, v.next, m.first, m.next));
    }
    if let Some(records) = &v.records
        && records != &m.records
    {
        let differ: Vec<u64> = m
            .records
            .keys()
            .chain(records.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|o| records.get(o) != m.records.get(o))
            .collect();
        bad.push(format!("records differ from the manifest at offsets {differ:?}"));
    }
    let names: Vec<&String> = v.groups.keys().collect();
    let want: Vec<&String> = m.groups.keys().collect();
    if names != want {
        bad.push(format!("groups {names:?}, manifest {want:?}"));
    }
    for (name, mg) in &m.groups {
        let Some(g) = v.groups.get(name) else { continue };
        let mut e = |s: String| bad.push(format!("{name}: {s}"));
        if (g.lease_ms, g.max) != (mg.lease_ms, mg.max) {
            e(format!("settings lease {} ms / {} attempts, manifest {} / {}", g.lease_ms, g.max, mg.lease_ms, mg.max));
        }
        let mut dead = BTreeSet::new();
        let mut must = BTreeSet::new(); // (offset, attempt) that must be delivered
        let mut may = BTreeSet::new(); // that may be
        let mut open = BTreeSet::new(); // offsets not acked nor dead
        for (&o, &s) in &mg.st {
            match s {
                St::Acked => {}
                St::Dead(a) => {
                    dead.insert((o, a));
                }
                // No lease survives a reopen; a lease on the last attempt ends as a dead letter.
                St::Leased(a) if a >= mg.max => {
                    dead.insert((o, a));
                }
                St::Leased(a) => {
                    must.insert((o, a + 1));
                    open.insert(o);
                }
                St::Waiting(a, due) => {
                    open.insert(o);
                    if due.saturating_add(MARGIN_MS) <= v.view_ms {
                        must.insert((o, a + 1));
                    } else if due <= v.view_ms.saturating_add(MARGIN_MS) {
                        may.insert((o, a + 1));
                    }
                }
            }
        }
        for o in mg.next..m.next {
            must.insert((o, 1));
            open.insert(o);
        }
        let got_dead: BTreeSet<(u64, u32)> = g.dead_letters.iter().copied().collect();
        if got_dead != dead {
            e(format!("dead letters {got_dead:?}, expected {dead:?}"));
        }
        let got: BTreeSet<(u64, u32)> = g.deliveries.iter().copied().collect();
        if got.len() != g.deliveries.len() {
            e(format!("a record delivered twice: {:?}", g.deliveries));
        }
        let missing: Vec<_> = must.difference(&got).collect();
        let extra: Vec<_> = got.difference(&must).filter(|d| !may.contains(d)).collect();
        if !missing.is_empty() {
            e(format!("not delivered (offset, attempt): {missing:?}"));
        }
        if !extra.is_empty() {
            let why: Vec<String> = extra.iter().map(|(o, a)| format!("({o}, {a}) was {:?}", mg.st.get(o))).collect();
            e(format!("delivered but should not have been: {why:?}"));
        }
        if !g.bad_payloads.is_empty() {
            e(format!("payloads differ from the manifest at {:?}", g.bad_payloads));
        }
        // Retries first, then new records in order.
        let first_new = g.deliveries.iter().position(|&(o, _)| o >= mg.next).unwrap_or(g.deliveries.len());
        let new: Vec<u64> = g.deliveries[first_new..].iter().map(|d| d.0).collect();
        if new.iter().any(|&o| o < mg.next) || !new.windows(2).all(|w| w[0] < w[1]) {
            e(format!("retries after new records, or new records out of order: {:?}", g.deliveries));
        }
        let floor = open.iter().next().copied().unwrap_or(m.next);
        if g.floor != floor {
            e(format!("ack_floor {}, expected {floor}", g.floor));
        }
        if g.leased != 0 || g.lost != 0 {
            e(format!("stats leased {} lost {}, expected 0 and 0", g.leased, g.lost));
        }
        if head && (g.dead, g.waiting) != (dead.len() as u64, open.len() as u64 - (mg.next..m.next).count() as u64) {
            e(format!(
                "stats dead {} waiting {}, expected {} and {}",
                g.dead,
                g.waiting,
                dead.len(),
                open.len() as u64 - (mg.next..m.next).count() as u64
            ));
        }
    }
    bad
}

/// What a second open must show after `first` polled everything due: each of those
/// deliveries is a lease that ended with the process, so it is due again with one attempt
/// more, or dead if that was its last; records waiting on a later time still wait.
fn check_second_view(m: &Manifest, first: &View, second: &View) -> Vec<String> {
    let mut bad = Vec::new();
    if second.records != first.records {
        bad.push("records changed between this build's first and second open".to_string());
    }
    for (name, g1) in &first.groups {
        let Some(g2) = second.groups.get(name) else {
            bad.push(format!("{name}: gone at the second open"));
            continue;
        };
        let mg = &m.groups[name];
        let mut e = |s: String| bad.push(format!("{name} (second open): {s}"));
        if (g2.lease_ms, g2.max) != (g1.lease_ms, g1.max) {
            e(format!("settings {} / {}, first open {} / {}", g2.lease_ms, g2.max, g1.lease_ms, g1.max));
        }
        let mut dead: BTreeSet<(u64, u32)> = g1.dead_letters.iter().copied().collect();
        let mut must = BTreeSet::new();
        for &(o, a) in &g1.deliveries {
            if a >= g1.max {
                dead.insert((o, a));
            } else {
                must.insert((o, a + 1));
            }
        }
        let delivered1: BTreeSet<u64> = g1.deliveries.iter().map(|d| d.0).collect();
        let mut may = BTreeSet::new();
        for (&o, &s) in &mg.st {
            if let St::Waiting(a, due) = s
                && !delivered1.contains(&o)
                && due <= second.view_ms.saturating_add(MARGIN_MS)
            {
                may.insert((o, a + 1)); // came due between the two views
            }
        }
        let got_dead: BTreeSet<(u64, u32)> = g2.dead_letters.iter().copied().collect();
        if got_dead != dead {
            e(format!("dead letters {got_dead:?}, expected {dead:?}"));
        }
        let got: BTreeSet<(u64, u32)> = g2.deliveries.iter().copied().collect();
        let missing: Vec<_> = must.difference(&got).collect();
        let extra: Vec<_> = got.difference(&must).filter(|d| !may.contains(d)).collect();
        if !missing.is_empty() || !extra.is_empty() {
            e(format!("not delivered {missing:?}; delivered but should not have been {extra:?}"));
        }
    }
    bad
}

/// Damage that `segq::inspect::verify` reports for the directory, as text.
fn verify_damage(dir: &Path) -> Vec<String> {
    let report = verify(&QueueDir::open(dir).unwrap(), &|_| {}).unwrap();
    report.findings.iter().filter(|f| f.severity == Severity::Damage).map(|f| format!("{f:?}")).collect()
}

fn segq(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_segq")).args(args).output().unwrap()
}

/// Opens the stored directory with this build and checks every promise of the manifest,
/// then checks a second open, and verify before and after.
fn check_commit(commit: &str, mode: &str) {
    let m = manifest(commit, mode);
    let (_tmp, dir) = materialize(commit, mode);
    let mut bad = Vec::new();
    for d in verify_damage(&dir) {
        bad.push(format!("verify before the first open: {d}"));
    }
    let q = Queue::open(&dir, options()).unwrap();
    let first = take_view(&q, &m);
    bad.extend(check_view(&m, &first, true));
    q.close().unwrap();
    drop(q);
    for d in verify_damage(&dir) {
        bad.push(format!("verify after this build's open: {d}"));
    }
    let q = Queue::open(&dir, options()).unwrap();
    let second = take_view(&q, &m);
    bad.extend(check_second_view(&m, &first, &second));
    q.close().unwrap();
    assert!(bad.is_empty(), "{commit}/{mode}:\n  {}", bad.join("\n  "));
}

#[test]
fn each_old_build_agrees_with_its_manifest() {
    // The expectations themselves, checked against what each old build saw on its own
    // reopen (3 s after writing): a failure here is a fault of this test, not of the queue.
    let mut bad = Vec::new();
    for commit in COMMITS {
        for mode in ["clean", "crash"] {
            let m = manifest(commit, mode);
            let v = old_view(commit, mode);
            bad.extend(check_view(&m, &v, false).into_iter().map(|b| format!("{commit}/{mode} (old build): {b}")));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn session10_335547c_clean() {
    check_commit("335547c", "clean");
}

#[test]
fn session10_335547c_crash_with_a_journal_past_256k() {
    check_commit("335547c", "crash");
}

#[test]
fn session14_29e3947_clean() {
    check_commit("29e3947", "clean");
}

#[test]
fn session14_29e3947_crash() {
    check_commit("29e3947", "crash");
}

#[test]
fn early_1058fb2_clean_snapshots_only_in_state() {
    check_commit("1058fb2", "clean");
}

#[test]
fn early_1058fb2_crash_snapshots_only_in_state() {
    check_commit("1058fb2", "crash");
}

#[test]
fn session21_25215a4_clean() {
    check_commit("25215a4", "clean");
}

#[test]
fn session21_25215a4_crash() {
    check_commit("25215a4", "crash");
}

#[test]
fn segq_verify_exits_0_on_every_old_queue() {
    let mut bad = Vec::new();
    for commit in COMMITS {
        for mode in ["clean", "crash"] {
            let (_tmp, dir) = materialize(commit, mode);
            let out = segq(&["verify", dir.to_str().unwrap()]);
            if out.status.code() != Some(0) {
                bad.push(format!(
                    "{commit}/{mode}: exit {:?}\n{}{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn a_1mib_journal_is_cut_to_256k_once_its_group_opens() {
    // FORMAT.md, "Size": a longer journal (the 1 MiB journals of builds before session 14)
    // is replayed in full, then a snapshot is written and the file cut to 256 KiB.
    for commit in ["335547c", "29e3947"] {
        for mode in ["clean", "crash"] {
            let (_tmp, dir) = materialize(commit, mode);
            let q = Queue::open(&dir, options()).unwrap();
            for name in q.groups().unwrap() {
                let journal = dir.join("groups").join(&name).join("journal");
                assert_eq!(std::fs::metadata(&journal).unwrap().len(), 1 << 20, "{commit}/{mode} {name} before");
                let _g = q.group(&name).unwrap();
                assert_eq!(std::fs::metadata(&journal).unwrap().len(), 256 << 10, "{commit}/{mode} {name} after");
            }
            q.close().unwrap();
        }
    }
}

#[test]
fn old_queues_open_with_default_options() {
    // A user who never set options reopens with the defaults (64 MiB segments, 512 B
    // index interval): the records and the groups' dead letters are the same.
    for commit in COMMITS {
        for mode in ["clean", "crash"] {
            let m = manifest(commit, mode);
            let (_tmp, dir) = materialize(commit, mode);
            let q = Queue::open(&dir, Options::default()).unwrap();
            let v = take_view(&q, &m);
            let bad = check_view(&m, &v, true);
            assert!(bad.is_empty(), "{commit}/{mode} with default options:\n  {}", bad.join("\n  "));
            q.append(b"after the upgrade").unwrap();
            q.close().unwrap();
            let q = Queue::open(&dir, Options::default()).unwrap();
            assert_eq!(q.read(m.next).unwrap().unwrap().payload(), b"after the upgrade");
            assert_eq!(q.read(m.next - 1).unwrap().unwrap().payload().len(), m.records[&(m.next - 1)].1);
            q.close().unwrap();
        }
    }
}

/// A snapshot's entries: offset -> (kind, attempts, at_ms).
type SnapshotEntries = BTreeMap<u64, (u32, u32, u64)>;

/// The newest valid snapshot of a group, read by FORMAT.md's layout: its generation and
/// entries.
fn newest_snapshot(group_dir: &Path) -> (u64, SnapshotEntries) {
    let mut best: Option<(u64, SnapshotEntries)> = None;
    for file in ["state", "state.1"] {
        let Ok(b) = std::fs::read(group_dir.join(file)) else { continue };
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        if b.len() < 84 || &b[0..8] != b"SEGQGRP\0" {
            continue;
        }
        let count = u64_at(72) as usize;
        if b.len() != 84 + 24 * count || crc32fast::hash(&b[..b.len() - 4]) != u32_at(b.len() - 4) {
            continue;
        }
        let generation = u64_at(16);
        let entries = (0..count)
            .map(|i| {
                let p = 80 + 24 * i;
                (u64_at(p), (u32_at(p + 8), u32_at(p + 12), u64_at(p + 16)))
            })
            .collect();
        let later = match &best {
            None => true,
            Some((g, _)) => {
                let d = generation.wrapping_sub(*g);
                d != 0 && d < 1 << 63
            }
        };
        if later {
            best = Some((generation, entries));
        }
    }
    best.expect("a valid snapshot")
}

#[test]
fn waiting_records_keep_their_attempts_and_due_times() {
    // Records nacked for an hour, 50 years or for ever are not delivered, so a view cannot
    // see their attempts: a settings change makes this build write a snapshot, whose
    // entries are then read from the file. Every record the manifest holds as waiting on a
    // later time must be there with its attempts and its due time (FORMAT.md allows the
    // few ms of the coarse clock; 1 s here), every dead letter with its attempts.
    let mut bad = Vec::new();
    for commit in COMMITS {
        for mode in ["clean", "crash"] {
            let m = manifest(commit, mode);
            let (_tmp, dir) = materialize(commit, mode);
            let q = Queue::open(&dir, options()).unwrap();
            let now = now_ms();
            for (name, mg) in &m.groups {
                let lease = Duration::from_millis(mg.lease_ms + 1);
                let g = q.group_with(name, segq::GroupOptions::default().lease(lease).max_attempts(mg.max)).unwrap();
                g.flush().unwrap();
                drop(g);
                let (_, entries) = newest_snapshot(&dir.join("groups").join(name));
                for (&o, &s) in &mg.st {
                    let got = entries.get(&o).copied();
                    match s {
                        St::Waiting(a, due) if due > now + MARGIN_MS => {
                            let ok = matches!(got, Some((1, ga, at)) if ga == a && at.abs_diff(due) <= 1_000);
                            if !ok {
                                bad.push(format!("{commit}/{mode} {name} {o}: snapshot entry {got:?}, expected waiting with {a} attempts due at {due}"));
                            }
                        }
                        St::Dead(a) => {
                            if !matches!(got, Some((3, ga, _)) if ga == a) {
                                bad.push(format!("{commit}/{mode} {name} {o}: snapshot entry {got:?}, expected dead with {a} attempts"));
                            }
                        }
                        // A lease on its last attempt is reaped into a dead letter lazily: either
                        // kind will do, with its attempts.
                        St::Leased(a) | St::Waiting(a, _) => {
                            let last = matches!(s, St::Leased(_)) && a >= mg.max;
                            if !matches!(got, Some((k, ga, _)) if ga == a && (k == 1 || (last && k == 3))) {
                                bad.push(format!("{commit}/{mode} {name} {o}: snapshot entry {got:?}, expected waiting with {a} attempts"));
                            }
                        }
                        St::Acked => {
                            if matches!(got, Some((1 | 3, _, _))) {
                                bad.push(format!("{commit}/{mode} {name} {o}: acked, but the snapshot holds {got:?}"));
                            }
                        }
                    }
                }
            }
            q.close().unwrap();
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn old_groups_closed_as_idle_reopen_intact() {
    // With idle_groups_kept_open(1), each group this build opens from old files (and, for
    // the 1 MiB journals, rewrites and cuts) is closed again by the next one, then opened
    // a second time from the files it left.
    for commit in COMMITS {
        for mode in ["clean", "crash"] {
            let m = manifest(commit, mode);
            let (_tmp, dir) = materialize(commit, mode);
            let q = Queue::open(&dir, options().idle_groups_kept_open(1)).unwrap();
            for name in q.groups().unwrap() {
                let g = q.group(&name).unwrap();
                g.dead_letters().unwrap();
                drop(g);
            }
            let v = take_view(&q, &m);
            let bad = check_view(&m, &v, true);
            assert!(bad.is_empty(), "{commit}/{mode} after idle closes:\n  {}", bad.join("\n  "));
            q.close().unwrap();
        }
    }
}

#[test]
fn old_queues_under_other_policies_and_retention_until_consumed() {
    // The same promises under SyncPolicy::Never and Interval, with retain_until_consumed
    // (a retention pass opens every group from its old files before any handle does; the
    // group "idle" never polled, so nothing may be deleted).
    for commit in COMMITS {
        for mode in ["clean", "crash"] {
            for policy in [SyncPolicy::Never, SyncPolicy::Interval(Duration::from_millis(50))] {
                let m = manifest(commit, mode);
                let (_tmp, dir) = materialize(commit, mode);
                let q = Queue::open(&dir, options().sync(policy).retain_until_consumed(true)).unwrap();
                let report = q.enforce_retention().unwrap();
                let v = take_view(&q, &m);
                let bad = check_view(&m, &v, true);
                assert!(bad.is_empty(), "{commit}/{mode} under {policy:?} ({report:?}):\n  {}", bad.join("\n  "));
                q.close().unwrap();
            }
        }
    }
}

/// `<commit>/midrun`: an appender thread and a consumer ("live": 10 min lease, 3 attempts;
/// offsets ≡ 0 mod 3 acked, ≡ 1 nacked at once, ≡ 2 held) ran under `Always` until a
/// third thread aborted the process at an arbitrary moment; `manifest` logs each change
/// right after its call returned (so it may miss the very last one).
fn check_midrun(commit: &str) {
    let text = std::fs::read_to_string(fixtures().join(commit).join("midrun").join("manifest")).unwrap();
    let mut records = BTreeMap::new();
    let mut attempts: BTreeMap<u64, u32> = BTreeMap::new(); // highest acknowledged attempt
    let mut acked = BTreeSet::new();
    let mut dead = BTreeSet::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> u64 { w[i].parse().unwrap() };
        match w[0] {
            "record" => {
                records.insert(n(1), (n(2) as usize, u64::from_str_radix(w[3], 16).unwrap()));
            }
            "delivered" => {
                let a = attempts.entry(n(1)).or_default();
                *a = (*a).max(n(2) as u32);
            }
            "acked" => {
                acked.insert(n(1));
            }
            "nacked" if n(2) == 3 => {
                dead.insert((n(1), 3u32));
            }
            _ => {}
        }
    }
    let (_tmp, dir) = materialize(commit, "midrun");
    let mut bad: Vec<String> = verify_damage(&dir).into_iter().map(|d| format!("verify: {d}")).collect();
    let q = Queue::open(&dir, options()).unwrap();
    let mut seen = BTreeMap::new();
    for r in q.iter_from(0) {
        let r = r.unwrap();
        seen.insert(r.offset(), (r.payload().len(), fnv(r.payload())));
    }
    if seen.keys().copied().ne(0..q.next_offset()) {
        bad.push(format!("offsets not 0..{}", q.next_offset()));
    }
    for (o, rec) in &records {
        if seen.get(o) != Some(rec) {
            bad.push(format!("acknowledged record {o}: {:?}, expected {rec:?}", seen.get(o)));
        }
    }
    let g = q.group("live").unwrap();
    if (g.options().get_lease(), g.options().get_max_attempts()) != (Duration::from_secs(600), 3) {
        bad.push(format!("settings {:?}", g.options()));
    }
    let got_dead: BTreeMap<u64, u32> = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
    for &(o, a) in &dead {
        if got_dead.get(&o) != Some(&a) {
            bad.push(format!("{o} was dead-lettered with {a} attempts, now {:?}", got_dead.get(&o)));
        }
    }
    let mut delivered = BTreeMap::new();
    while let Some(d) = g.poll(Duration::ZERO).unwrap() {
        delivered.insert(d.offset(), d.attempt());
        if seen.get(&d.offset()) != Some(&(d.payload().len(), fnv(d.payload()))) {
            bad.push(format!("delivery {} carries other bytes than the log", d.offset()));
        }
    }
    for &o in &acked {
        if let Some(a) = delivered.get(&o) {
            bad.push(format!("acked {o} delivered again (attempt {a})"));
        }
        if got_dead.contains_key(&o) {
            bad.push(format!("acked {o} is a dead letter"));
        }
    }
    for (&o, &a) in &attempts {
        match (delivered.get(&o), got_dead.get(&o)) {
            (Some(&now), _) if now <= a => bad.push(format!("{o} delivered at attempt {now} after attempt {a}")),
            (Some(_), Some(_)) => bad.push(format!("{o} both delivered and dead")),
            (None, None) if !acked.contains(&o) && o % 3 != 0 => {
                bad.push(format!("{o} (attempt {a}, not acked) neither delivered nor dead"))
            }
            (None, Some(&da)) if da < a => bad.push(format!("{o} dead with {da} attempts after attempt {a}")),
            _ => {}
        }
    }
    // Records never delivered before the crash are delivered now, as new.
    for o in records.keys().filter(|o| !attempts.contains_key(o)) {
        if !delivered.contains_key(o) && !got_dead.contains_key(o) && o % 3 != 0 {
            bad.push(format!("{o}, never delivered, not delivered now"));
        }
    }
    drop(g);
    q.close().unwrap();
    for d in verify_damage(&dir) {
        bad.push(format!("verify after this build's open: {d}"));
    }
    assert!(bad.is_empty(), "{commit}/midrun:\n  {}", bad.join("\n  "));
}

#[test]
fn session10_335547c_aborted_mid_run() {
    check_midrun("335547c");
}

#[test]
fn session21_25215a4_aborted_mid_run() {
    check_midrun("25215a4");
}
