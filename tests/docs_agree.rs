//! What README.md, the rustdoc and docs/*.md say, checked against what the code does.
//!
//! The `format_*` tests decode the files the engine writes with a decoder written from
//! docs/FORMAT.md alone (no use of the crate's internals).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use segq::*;

// ---------------------------------------------------------------------------------------
// A decoder written from docs/FORMAT.md.
// ---------------------------------------------------------------------------------------

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// FORMAT.md, "File header (32 bytes)". Returns base_offset.
fn decode_file_header(b: &[u8], magic: &[u8; 8], what: &str) -> u64 {
    assert!(b.len() >= 32, "{what}: shorter than a header");
    assert_eq!(&b[0..8], magic, "{what}: magic");
    assert_eq!(u32_at(b, 8), 1, "{what}: version");
    assert_eq!(u32_at(b, 12), 0, "{what}: reserved (12) written as 0");
    assert_eq!(u32_at(b, 24), crc(&b[0..24]), "{what}: header_crc of bytes 0..24");
    assert_eq!(u32_at(b, 28), 0, "{what}: reserved (28) written as 0");
    u64_at(b, 16)
}

#[derive(Debug, Clone)]
struct Rec {
    position: u64,
    offset: u64,
    len: u32,
    batch_continues: bool,
    timestamp_ms: u64,
    payload: Vec<u8>,
}

/// FORMAT.md, "Record (24-byte header + payload)" and "End of data". Returns the records
/// and the end of data.
fn decode_records(b: &[u8], base: u64, what: &str) -> (Vec<Rec>, usize) {
    let mut p = 32usize;
    let mut out = Vec::new();
    let mut expect = base;
    loop {
        let left = b.len() - p;
        if left == 0 {
            break;
        }
        if left < 24 {
            assert!(b[p..].iter().all(|&x| x == 0), "{what}: fewer than 24 bytes left that are not zeros at {p}");
            break;
        }
        let h = &b[p..p + 24];
        if h.iter().all(|&x| x == 0) {
            break;
        }
        let len_flags = u32_at(h, 4);
        let len = len_flags & 0x7fff_ffff;
        let batch = len_flags & 0x8000_0000 != 0;
        let end = p + 24 + len as usize;
        assert!(end <= b.len(), "{what}: record at {p} runs past the end");
        assert_eq!(u32_at(h, 0), crc(&b[p + 4..end]), "{what}: record CRC at {p}");
        let offset = u64_at(h, 8);
        assert_eq!(offset, expect, "{what}: offset at {p}");
        out.push(Rec {
            position: p as u64,
            offset,
            len,
            batch_continues: batch,
            timestamp_ms: u64_at(h, 16),
            payload: b[p + 24..end].to_vec(),
        });
        expect += 1;
        p = end;
    }
    // Past the data: zeros up to the end of the file.
    assert!(b[p..].iter().all(|&x| x == 0), "{what}: non-zero bytes after the end of data at {p}");
    (out, p)
}

/// FORMAT.md, "Index files". Returns the stored entries (relative_offset, position).
fn decode_index(b: &[u8], base: u64, what: &str) -> Vec<(u32, u32)> {
    assert_eq!(decode_file_header(b, b"SEGQIDX\0", what), base, "{what}: index base");
    assert_eq!((b.len() - 32) % 8, 0, "{what}: (length - 32) is a multiple of 8");
    let mut entries = Vec::new();
    for e in b[32..].chunks(8) {
        let (rel, pos) = (u32_at(e, 0), u32_at(e, 4));
        if rel == 0 && pos == 0 {
            // unused entries are zero; nothing non-zero may follow
            continue;
        }
        entries.push((rel, pos));
    }
    entries
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    clean: bool,
    segment_base: u64,
    position: u64,
    next_offset: u64,
}

/// FORMAT.md, "The checkpoint file", "Slot layout (64 bytes)".
fn decode_slot(s: &[u8], what: &str) -> Slot {
    assert_eq!(&s[0..8], b"SEGQCKPT", "{what}: magic");
    assert_eq!(u32_at(s, 8), 1, "{what}: version");
    let flags = u32_at(s, 12);
    assert_eq!(flags & !1, 0, "{what}: other flag bits written as 0");
    assert_eq!(u32_at(s, 40), crc(&s[0..40]), "{what}: CRC of bytes 0..40");
    assert!(s[44..64].iter().all(|&x| x == 0), "{what}: padding zeros");
    Slot { clean: flags & 1 != 0, segment_base: u64_at(s, 16), position: u64_at(s, 24), next_offset: u64_at(s, 32) }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    generation: u64,
    lease_ms: u64,
    max_attempts: u32,
    floor: u64,
    next: u64,
    lost: u64,
    entries: Vec<(u64, u32, u32, u64)>,
}

/// FORMAT.md, "The snapshots".
fn decode_snapshot(b: &[u8], what: &str) -> Snap {
    assert!(b.len() >= 84, "{what}: at least 84 bytes");
    let generation = decode_file_header(b, b"SEGQGRP\0", what);
    let count = u64_at(b, 72);
    assert_eq!(b.len() as u64, 84 + 24 * count, "{what}: length 84 + 24 × count");
    let n = b.len();
    assert_eq!(u32_at(b, n - 4), crc(&b[..n - 4]), "{what}: trailer CRC");
    assert_eq!(u32_at(b, 44), 0, "{what}: reserved written as 0");
    let entries = (0..count as usize)
        .map(|i| {
            let e = &b[80 + 24 * i..80 + 24 * (i + 1)];
            (u64_at(e, 0), u32_at(e, 8), u32_at(e, 12), u64_at(e, 16))
        })
        .collect();
    let s = Snap {
        generation,
        lease_ms: u64_at(b, 32),
        max_attempts: u32_at(b, 40),
        floor: u64_at(b, 48),
        next: u64_at(b, 56),
        lost: u64_at(b, 64),
        entries,
    };
    assert!(s.floor <= s.next, "{what}: floor <= next");
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JEntry {
    position: usize,
    kind: u8,
    flags: u8,
    offset: u64,
    arg: u64,
}

/// FORMAT.md, "The journal". Replays entries for `generation` from position 32, as long
/// as each verifies.
fn decode_journal(b: &[u8], generation: u64, what: &str) -> Vec<JEntry> {
    assert_eq!(decode_file_header(b, b"SEGQJRN\0", what), 0, "{what}: base_offset 0");
    let mut out = Vec::new();
    let mut p = 32;
    while p + 24 <= b.len() {
        let e = &b[p..p + 24];
        let mut covered = generation.to_le_bytes().to_vec();
        covered.extend_from_slice(&e[4..24]);
        let kind = e[4];
        let ok =
            u32_at(e, 0) == crc(&covered) && (1..=7).contains(&kind) && (kind != 1 || u64_at(e, 16) <= u32::MAX as u64);
        if !ok {
            break;
        }
        assert_eq!(&e[6..8], &[0, 0], "{what}: reserved written as 0 at {p}");
        out.push(JEntry { position: p, kind, flags: e[5], offset: u64_at(e, 8), arg: u64_at(e, 16) });
        p += 24;
    }
    out
}

fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().ok()?;
            let digits = name.strip_suffix(".log")?;
            (digits.len() == 20 && digits.bytes().all(|c| c.is_ascii_digit()))
                .then(|| (digits.parse().unwrap(), e.path()))
        })
        .collect();
    v.sort();
    v
}

fn hex_bytes(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|h| u8::from_str_radix(h, 16).unwrap()).collect()
}

// ---------------------------------------------------------------------------------------
// FORMAT.md: decode what the engine writes.
// ---------------------------------------------------------------------------------------

const SEG: u64 = 4096;
const INTERVAL: u32 = 100;

/// Builds a queue with several segments, batches, and a group with polls, acks, nacks, dead
/// letters and a second snapshot, then closes it.
fn build_queue(dir: &Path) -> (Vec<Vec<u8>>, GroupStats, Vec<(u64, u32)>) {
    let opts = Options::default().segment_bytes(SEG).index_interval_bytes(INTERVAL);
    let q = Queue::open(dir, opts.clone()).unwrap();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for i in 0..90u32 {
        let p = format!("record {i} {}", "x".repeat((i as usize * 37) % 150)).into_bytes();
        q.append(&p).unwrap();
        payloads.push(p);
        if i % 7 == 3 {
            let batch: Vec<Vec<u8>> = (0..3).map(|j| format!("batch {i}.{j}").into_bytes()).collect();
            let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
            q.append_batch(&refs).unwrap();
            payloads.extend(batch);
        }
    }
    let g = q.group_with("g", GroupOptions::default().max_attempts(2).lease(Duration::from_secs(60))).unwrap();
    // Some acks, some nacks, two dead letters.
    let taken = g.poll_batch(10, Duration::ZERO).unwrap();
    assert_eq!(taken.len(), 10);
    for d in taken {
        if d.offset() % 4 == 1 {
            g.nack(d.offset(), Duration::from_secs(3600)).unwrap();
        } else if d.offset() % 4 == 2 {
            g.nack(d.offset(), Duration::ZERO).unwrap();
        } else {
            g.ack(d.offset()).unwrap();
        }
    }
    // Offsets 2 and 6 were nacked with no delay: deliver again and nack: dead (max 2).
    for _ in 0..2 {
        let d = g.poll(Duration::ZERO).unwrap().unwrap();
        assert_eq!(d.attempt(), 2);
        g.nack(d.offset(), Duration::ZERO).unwrap();
    }
    // A second snapshot (generation 1, in state.1): settings that differ.
    let g = q.group_with("g", GroupOptions::default().max_attempts(2).lease(Duration::from_secs(61))).unwrap();
    // More changes, journaled in generation 1.
    let d = g.poll(Duration::ZERO).unwrap().unwrap();
    g.ack(d.offset()).unwrap();
    let nacked = g.poll(Duration::ZERO).unwrap().unwrap();
    g.nack(nacked.offset(), Duration::from_secs(3600)).unwrap(); // kind 3
    assert!(g.redrive(2).unwrap()); // kind 5
    let _leased = g.poll(Duration::ZERO).unwrap().unwrap(); // the redriven 2, left leased at close
    let stats = g.stats();
    let dead: Vec<(u64, u32)> = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
    q.close().unwrap();
    (payloads, stats, dead)
}

#[test]
fn format_decoder_reads_every_file_the_engine_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (payloads, stats, dead) = build_queue(dir);

    // --- segments and indexes
    let segs = segment_files(dir);
    assert!(segs.len() >= 3, "several segments: {segs:?}");
    let mut all: Vec<Rec> = Vec::new();
    let mut newest_end = 0;
    for (i, (base, path)) in segs.iter().enumerate() {
        let what = path.display().to_string();
        let b = std::fs::read(path).unwrap();
        assert_eq!(decode_file_header(&b, b"SEGQLOG\0", &what), *base, "{what}: base = file name");
        let (recs, end) = decode_records(&b, *base, &what);
        let sealed = i + 1 < segs.len();
        if sealed {
            // "Sealed: the file is cut to 32 + Σ(24 + len)"; the next segment's base follows.
            let sum: u64 = 32 + recs.iter().map(|r| 24 + r.len as u64).sum::<u64>();
            assert_eq!(b.len() as u64, sum, "{what}: sealed length");
            assert_eq!(recs.last().unwrap().offset + 1, segs[i + 1].0, "{what}: next base");
            assert!(!recs.last().unwrap().batch_continues, "{what}: a batch never spans two segments");
        } else {
            // "Active: file length = capacity"
            assert_eq!(b.len() as u64, SEG, "{what}: active length = capacity");
            newest_end = end as u64;
        }
        // Batches: bit 31 on all but the last of a batch; timestamps equal within a batch.
        for w in recs.windows(2) {
            if w[0].batch_continues {
                assert_eq!(w[0].timestamp_ms, w[1].timestamp_ms, "{what}: one timestamp per batch");
            }
        }
        // Index
        let ipath = path.with_extension("index");
        let ib = std::fs::read(&ipath).unwrap();
        let iwhat = ipath.display().to_string();
        let entries = decode_index(&ib, *base, &iwhat);
        if sealed {
            assert_eq!(ib.len(), 32 + 8 * entries.len(), "{iwhat}: sealed index cut to 32 + 8 × entries");
        } else {
            let cap = SEG;
            let expect = 32 + 8 * (cap / (INTERVAL.max(24) as u64) + 1);
            assert_eq!(ib.len() as u64, expect, "{iwhat}: active index length");
        }
        // Entries land, strictly increase, and follow the interval rule.
        let by_pos: BTreeMap<u64, &Rec> = recs.iter().map(|r| (r.position, r)).collect();
        let mut prev = 32u64;
        let mut expected_entries = Vec::new();
        for r in &recs {
            if r.position - prev >= INTERVAL as u64 {
                expected_entries.push(((r.offset - base) as u32, r.position as u32));
                prev = r.position;
            }
        }
        assert_eq!(entries, expected_entries, "{iwhat}: entries by the interval rule");
        for w in entries.windows(2) {
            assert!(w[1].0 > w[0].0 && w[1].1 > w[0].1, "{iwhat}: strictly increasing");
        }
        for (rel, pos) in &entries {
            let r = by_pos.get(&(*pos as u64)).expect("entry lands on a record");
            assert_eq!(r.offset, base + *rel as u64);
        }
        all.extend(recs);
    }
    let got: Vec<Vec<u8>> = all.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(got, payloads, "every payload, in order");
    let next_offset = all.len() as u64;

    // --- checkpoint
    let ck = std::fs::read(dir.join("checkpoint")).unwrap();
    assert_eq!(ck.len(), 576, "checkpoint length");
    assert!(ck[64..512].iter().all(|&x| x == 0), "bytes 64..512 zeros");
    let a = decode_slot(&ck[0..64], "slot A");
    let b = decode_slot(&ck[512..576], "slot B");
    let newest = segs.last().unwrap().0;
    assert_eq!(a, Slot { clean: true, segment_base: newest, position: newest_end, next_offset }, "slot A at close");
    assert!(!b.clean, "slot B never carries CLEAN");
    assert_eq!(b.segment_base, newest, "slot B names the newest segment");

    // --- group files
    let gdir = dir.join("groups").join("g");
    let s0 = decode_snapshot(&std::fs::read(gdir.join("state")).unwrap(), "state");
    let s1 = decode_snapshot(&std::fs::read(gdir.join("state.1")).unwrap(), "state.1");
    assert_eq!(s0.generation % 2, 0, "state holds an even generation");
    assert_eq!(s1.generation % 2, 1, "state.1 holds an odd generation");
    let snap = if s1.generation > s0.generation { s1.clone() } else { s0.clone() };
    assert_eq!(snap.generation, 1);
    assert_eq!((snap.lease_ms, snap.max_attempts), (61_000, 2));
    // The snapshot written by group_with: waiting 1, 5, 9 (nacked for an hour, 1 attempt),
    // dead 2 and 6 (2 attempts).
    let kinds: Vec<(u64, u32, u32)> = snap.entries.iter().map(|&(o, k, a, _)| (o, k, a)).collect();
    assert_eq!(kinds, [(1, 1, 1), (2, 3, 2), (5, 1, 1), (6, 3, 2), (9, 1, 1)]);
    let kinds_in_journal: BTreeSet<u8> =
        decode_journal(&std::fs::read(gdir.join("journal")).unwrap(), snap.generation, "journal")
            .iter()
            .map(|e| e.kind)
            .collect();
    assert_eq!(kinds_in_journal, BTreeSet::from([1, 2, 3, 5]));
    // Kinds 1 (waiting) and 3 (dead) only; at_ms 0 unless kind 1.
    for &(off, kind, _att, at) in &snap.entries {
        assert!(kind == 1 || kind == 3, "entry kind {kind} at {off}");
        if kind != 1 {
            assert_eq!(at, 0);
        }
    }
    let jb = std::fs::read(gdir.join("journal")).unwrap();
    assert_eq!(jb.len(), 262_144, "journal preallocated to 256 KiB");
    let journal = decode_journal(&jb, snap.generation, "journal");
    assert!(!journal.is_empty(), "entries of generation 1");

    // Replay (FORMAT.md "Replay") and compare with what the group said before the close.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum S {
        Open(u32),
        Acked,
        Dead(u32),
    }
    let mut slots: BTreeMap<u64, S> = BTreeMap::new();
    let mut next = snap.next;
    for &(off, kind, att, _) in &snap.entries {
        slots.insert(off, if kind == 3 { S::Dead(att) } else { S::Open(att) });
    }
    for o in snap.floor..snap.next {
        slots.entry(o).or_insert(S::Acked);
    }
    for e in &journal {
        match e.kind {
            1 => {
                if e.offset >= next {
                    for o in next..e.offset {
                        slots.insert(o, S::Acked);
                    }
                    next = e.offset + 1;
                }
                slots.insert(e.offset, S::Open(e.arg as u32));
            }
            2 => {
                slots.insert(e.offset, S::Acked);
            }
            3 => {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
                assert!(e.arg > now + 3_000_000 && e.arg < now + 3_700_000, "nack due time {}", e.arg);
            }
            5 => {
                slots.insert(e.offset, S::Open(0));
            }
            4 => {
                let att = match slots.get(&e.offset) {
                    Some(S::Open(a)) => *a,
                    _ => 0,
                };
                slots.insert(e.offset, S::Dead(att));
                next = next.max(e.offset + 1);
            }
            k => panic!("unexpected kind {k} in this scenario"),
        }
    }
    let floor = (0..next).find(|o| matches!(slots.get(o), Some(S::Open(_)))).unwrap_or(next);
    assert_eq!(floor, stats.ack_floor, "replayed ack floor");
    assert_eq!(next, stats.next_delivery, "replayed next");
    let replay_dead: Vec<(u64, u32)> =
        slots.iter().filter_map(|(&o, s)| if let S::Dead(a) = s { Some((o, *a)) } else { None }).collect();
    assert_eq!(replay_dead, dead, "replayed dead letters");
    assert_eq!(snap.lost, 0);
}

/// FORMAT.md's worked examples: their CRCs are the ones the doc's rules give.
#[test]
fn format_worked_examples_have_the_crcs_the_rules_give() {
    // Segment header, base 7.
    let seg = hex_bytes(
        "53 45 47 51 4c 4f 47 00 01 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00 64 70 92 a4 00 00 00 00 \
         27 60 d4 a1 02 00 00 00 07 00 00 00 00 00 00 00 00 68 e5 cf 8b 01 00 00 68 69",
    );
    assert_eq!(u32_at(&seg, 24), crc(&seg[0..24]), "segment header CRC of the example");
    assert_eq!(u64_at(&seg, 48), 1_700_000_000_000, "example timestamp");
    assert_eq!(u32_at(&seg, 32), crc(&seg[36..58]), "record CRC of the example");
    // Zero-header claim.
    assert_eq!(crc(&[0u8; 20]), 0x0FD5_9B8D, "CRC of 20 zero bytes");
    // Snapshot of a new group.
    let snap = hex_bytes(
        "53 45 47 51 47 52 50 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 4c 1f c1 77 00 00 00 00 \
         30 75 00 00 00 00 00 00 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 cc 48 1c ea",
    );
    decode_snapshot(&snap, "worked example");
    // Journal entry.
    let mut j = vec![0u8; 32];
    j.extend(hex_bytes("31 4c bd 29 01 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00"));
    let mut covered = vec![0u8; 8];
    covered.extend_from_slice(&j[36..56]);
    assert_eq!(u32_at(&j, 32), crc(&covered), "journal example CRC");
}

/// FORMAT.md's worked examples match the bytes the engine writes: a new group's snapshot on
/// an empty queue, and the first journal entry (first delivery of offset 0).
#[test]
fn format_worked_examples_match_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), Options::default()).unwrap();
    q.group("g").unwrap();
    let state = std::fs::read(tmp.path().join("groups/g/state")).unwrap();
    let doc = hex_bytes(
        "53 45 47 51 47 52 50 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 4c 1f c1 77 00 00 00 00 \
         30 75 00 00 00 00 00 00 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 cc 48 1c ea",
    );
    assert_eq!(state, doc, "snapshot worked example");
    q.append(b"hi").unwrap();
    let g = q.group("g").unwrap();
    g.poll(Duration::ZERO).unwrap().unwrap();
    q.close().unwrap();
    let j = std::fs::read(tmp.path().join("groups/g/journal")).unwrap();
    let doc = hex_bytes("31 4c bd 29 01 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00");
    assert_eq!(&j[32..56], &doc[..], "journal worked example");
    assert!(!std::path::Path::new(&tmp.path().join("groups/g/state.1")).exists(), "no second snapshot yet");
}

// ---------------------------------------------------------------------------------------
// CLI helpers
// ---------------------------------------------------------------------------------------

fn segq(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segq")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn small_queue(dir: &Path) {
    let q = Queue::open(dir, Options::default().segment_bytes(4096)).unwrap();
    for i in 0..20 {
        q.append(format!("payload number {i}").as_bytes()).unwrap();
    }
    let g = q.group("g").unwrap();
    let d = g.poll(Duration::ZERO).unwrap().unwrap();
    g.ack(d.offset()).unwrap();
    q.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// README.md: the debug binary
// ---------------------------------------------------------------------------------------

/// README's `--payload hex|utf8|len|none`, and `segq dump --help`: `len` prints only the
/// payload's length, `none` nothing of it, not even its length (no LEN column, no `len`
/// field). (The two printed the same.)
#[test]
fn readme_dump_payload_none_prints_nothing_of_the_payload() {
    let tmp = tempfile::tempdir().unwrap();
    small_queue(tmp.path());
    let d = tmp.path().to_str().unwrap();
    let (c1, none, _) = segq(&["dump", d, "--payload", "none"]);
    let (c2, len, _) = segq(&["dump", d, "--payload", "len"]);
    assert_eq!((c1, c2), (0, 0));
    assert_ne!(none, len, "--payload none and --payload len print the same thing:\n{none}");
    assert!(len.lines().next().unwrap().contains("LEN") && !none.lines().next().unwrap().contains("LEN"), "{none}");
    let (_, json, _) = segq(&["dump", d, "--payload", "none", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let first = &doc["records"][0];
    assert!(first["offset"].is_u64() && first.get("len").is_none() && first.get("payload").is_none(), "{first}");
}

/// README.md:250-256: every command takes --json and prints one JSON document; a command
/// that fails before printing prints the error document.
#[test]
fn readme_every_command_prints_one_json_document() {
    let tmp = tempfile::tempdir().unwrap();
    small_queue(tmp.path());
    let d = tmp.path().to_str().unwrap();
    for args in [
        vec!["info", d, "--json"],
        vec!["segments", d, "--json"],
        vec!["dump", d, "--json"],
        vec!["verify", d, "--json"],
        vec!["groups", d, "--json"],
        vec!["groups", d, "g", "--json"],
        vec!["repair", d, "--truncate-at-first-damage", "--json"],
        vec!["dump", d, "--limit", "abc", "--json"],
        vec!["info", "/nonexistent/queue", "--json"],
    ] {
        let (code, out, err) = segq(&args);
        let doc: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}):\n{out}\n{err}"));
        if code != 0 {
            assert!(doc.get("error").is_some(), "{args:?}: {doc}");
        }
    }
    let (_, out, _) = segq(&["info", d, "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["first_offset"], 0);
    assert_eq!(doc["next_offset"], 20);
    let (_, out, _) = segq(&["dump", d, "--json", "--limit", "1"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &doc["records"][0];
    assert!(r["offset"].is_u64() && r["timestamp_ms"].is_u64() && r["payload"].is_string(), "{doc}");
}

/// README.md:300-306 exit codes.
#[test]
fn readme_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    small_queue(tmp.path());
    let d = tmp.path().to_str().unwrap();
    assert_eq!(segq(&["verify", d]).0, 0);
    assert_eq!(segq(&["verify", "/nonexistent/queue"]).0, 2, "an I/O error");
    assert_eq!(segq(&["dump", d, "--limit", "abc"]).0, 2, "a usage error");
    // A writer has it open: repair refuses with 2.
    let q = Queue::open(tmp.path(), Options::default().segment_bytes(4096)).unwrap();
    assert_eq!(segq(&["repair", d, "--truncate-at-first-damage", "--yes"]).0, 2);
    // ... while the read commands work next to it.
    assert_eq!(segq(&["info", d]).0, 0);
    q.close().unwrap();
    // Damage in a sealed segment: exit 1.
    let q = Queue::open(tmp.path(), Options::default().segment_bytes(4096)).unwrap();
    for _ in 0..3 {
        q.append(&[5; 3000]).unwrap();
    }
    q.close().unwrap();
    let first = segment_files(tmp.path())[0].1.clone();
    let mut b = std::fs::read(&first).unwrap();
    b[32 + 24 + 3] ^= 0x40; // a payload byte of offset 0
    std::fs::write(&first, &b).unwrap();
    let (code, out, _) = segq(&["verify", d, "--json"]);
    assert_eq!(code, 1, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["unreadable"], 1, "{doc}");
}

// ---------------------------------------------------------------------------------------
// Rustdoc
// ---------------------------------------------------------------------------------------

/// `Group::flush`'s `# Errors`: `Closed` once the queue is closed and `GroupDeleted` once
/// the group is deleted, as every other `Group` method's section says. (The section listed
/// only `Io` and `Poisoned`.)
#[test]
fn rustdoc_group_flush_errors_are_the_documented_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), Options::default()).unwrap();
    let g = q.group("g").unwrap();
    let h = q.group("h").unwrap();
    q.delete_group("g").unwrap();
    let deleted = g.flush();
    q.close().unwrap();
    let closed = h.flush();
    assert!(matches!(deleted, Err(Error::GroupDeleted { .. })), "{deleted:?}");
    assert!(matches!(closed, Err(Error::Closed)), "{closed:?}");
}

// ---------------------------------------------------------------------------------------
// DESIGN.md
// ---------------------------------------------------------------------------------------

/// DESIGN.md, "Close path", step 2: the log is synced, and the journal of every open
/// consumer group whatever the log's sync returned; `close` returns the first error.
/// (The doc said the groups were synced only if the log's sync succeeded.)
#[test]
fn design_close_syncs_groups_whatever_the_log_sync_returned() {
    use segq::fault::{self, Fault, Point};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let q = Queue::open(&dir, Options::default().sync(SyncPolicy::Never)).unwrap();
    q.append(b"job").unwrap();
    let g = q.group("g").unwrap();
    let d = g.poll(Duration::ZERO).unwrap().unwrap();
    g.ack(d.offset()).unwrap();
    let segment = segment_files(&dir)[0].1.clone();
    fault::audit(&dir);
    let _ = fault::take_synced(&dir);
    fault::inject(Fault::new(&segment, Point::Sync).times(u64::MAX));
    let closed = q.close();
    fault::clear(&segment);
    assert!(closed.is_err(), "the log's sync failed");
    let synced = fault::take_synced(&dir);
    let journal_synced = synced.iter().any(|s| s.path.ends_with("groups/g/journal"));
    assert!(journal_synced, "the group's journal was not synced: {synced:?}");
}

/// DESIGN.md, decision 11, and FORMAT.md ("Roles of the two slots"): slot A is written at
/// open, when a seal is done (it then names the start of the new segment) and at close.
/// (DESIGN.md said only at open and close.)
#[test]
fn design_slot_a_is_written_at_open_at_each_seal_and_at_close() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), Options::default().segment_bytes(4096)).unwrap();
    let at_open = std::fs::read(tmp.path().join("checkpoint")).unwrap()[0..64].to_vec();
    for _ in 0..3 {
        q.append(&[1; 3000]).unwrap(); // one record per segment: two rolls
    }
    q.flush().unwrap();
    let now = std::fs::read(tmp.path().join("checkpoint")).unwrap()[0..64].to_vec();
    let slot = decode_slot(&now, "slot A");
    assert_ne!(now, at_open, "slot A was not rewritten by the seals: {slot:?}");
    assert_eq!((slot.clean, slot.segment_base, slot.position, slot.next_offset), (false, 2, 32, 2));
    q.close().unwrap();
    let closed = decode_slot(&std::fs::read(tmp.path().join("checkpoint")).unwrap()[0..64], "slot A");
    assert!(closed.clean, "{closed:?}");
}

/// DESIGN.md:164-167, decision 17 (holds): after `close`, `append`, `append_batch`, `flush`, `read`,
/// `group`, `delete_group` and `enforce_retention` return `Error::Closed`, and so do `poll`,
/// `ack`, `nack`, `redrive`, `seek` and `dead_letters` on `Group` handles.
#[test]
fn design_calls_after_close_return_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), Options::default()).unwrap();
    q.append(b"a").unwrap();
    let g = q.group("g").unwrap();
    let d = g.poll(Duration::ZERO).unwrap().unwrap();
    q.close().unwrap();
    let closed = |what: &str, r: Result<()>| assert!(matches!(r, Err(Error::Closed)), "{what}: {r:?}");
    closed("append", q.append(b"b").map(drop));
    closed("append_batch", q.append_batch(&[b"b".as_slice()]).map(drop));
    closed("flush", q.flush());
    closed("read", q.read(0).map(drop));
    closed("group", q.group("g").map(drop));
    closed("delete_group", q.delete_group("g"));
    closed("enforce_retention", q.enforce_retention().map(drop));
    closed("poll", g.poll(Duration::ZERO).map(drop));
    closed("ack", g.ack(d.offset()));
    closed("nack", g.nack(d.offset(), Duration::ZERO));
    closed("redrive", g.redrive(0).map(drop));
    closed("seek", g.seek(0));
    closed("dead_letters", g.dead_letters().map(drop));
    assert!(q.iter_from(0).next().is_none());
}

/// FORMAT.md "The queue directory": after a close, the directory holds only the files of the
/// table (no `spare.log.tmp`, which is "deleted at close", nor any other `*.tmp`).
#[test]
fn format_directory_after_close_holds_only_the_documented_files() {
    for policy in [SyncPolicy::Always, SyncPolicy::Never, SyncPolicy::Interval(Duration::from_millis(5))] {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path(), Options::default().segment_bytes(8192).sync(policy)).unwrap();
        for _ in 0..40 {
            q.append(&[7; 1000]).unwrap();
        }
        q.group("g").unwrap();
        q.close().unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        for n in &names {
            let seg = n.len() == 24 && n.ends_with(".log") && n[..20].bytes().all(|c| c.is_ascii_digit());
            let idx = n.len() == 26 && n.ends_with(".index") && n[..20].bytes().all(|c| c.is_ascii_digit());
            assert!(
                seg || idx || ["checkpoint", "lock", "groups"].contains(&n.as_str()),
                "{policy:?}: unexpected {n} in {names:?}"
            );
        }
        let g: Vec<String> = std::fs::read_dir(tmp.path().join("groups/g"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(g.iter().all(|n| ["state", "state.1", "journal"].contains(&n.as_str())), "{g:?}");
    }
}

/// `DeadLetter::attempts`: a record found damaged before its first delivery is dead-lettered
/// with 0 attempts; one found damaged when it is due again keeps the attempts it had. (The
/// doc said 0 for both.)
#[test]
fn rustdoc_a_damaged_record_is_dead_lettered_with_the_attempts_it_had() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::open(tmp.path(), Options::default().segment_bytes(4096)).unwrap();
    for _ in 0..3 {
        q.append(&[5; 3000]).unwrap(); // offset 0 alone in a sealed segment
    }
    let g = q.group("g").unwrap();
    let d = g.poll(Duration::ZERO).unwrap().unwrap();
    assert_eq!(d.offset(), 0);
    g.nack(0, Duration::ZERO).unwrap();
    // The record's payload is damaged on disk after its first delivery.
    let first = segment_files(tmp.path())[0].1.clone();
    let f = std::fs::OpenOptions::new().write(true).open(&first).unwrap();
    f.write_all_at(&[0xAA], 32 + 24 + 100).unwrap();
    f.sync_all().unwrap();
    assert!(matches!(g.poll(Duration::ZERO), Err(Error::Corrupt { .. })));
    let dead: Vec<(u64, u32)> = g.dead_letters().unwrap().iter().map(|d| (d.offset(), d.attempts())).collect();
    assert_eq!(dead, [(0, 1)], "delivered once before it was found damaged");
}

/// Rustdoc edge claims that hold (kept as regression checks).
#[test]
fn rustdoc_edges_that_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let q = std::sync::Arc::new(Queue::open(tmp.path(), Options::default()).unwrap());
    q.append_batch(&[b"a".as_slice(), b"b", b"c"]).unwrap();
    let g = q.group("g").unwrap();
    // Group::seek: past the end means the end; below the first means the first.
    g.seek(100).unwrap();
    assert_eq!(g.ack_floor(), 3);
    g.seek(0).unwrap();
    let d = g.poll(Duration::ZERO).unwrap().unwrap();
    // After a seek past it, its ack succeeds and changes nothing.
    g.seek(2).unwrap();
    g.ack(d.offset()).unwrap();
    assert_eq!(g.ack_floor(), 2);
    // extend_lease of a waiting record: false.
    let c = g.poll(Duration::ZERO).unwrap().unwrap();
    g.nack(c.offset(), Duration::from_secs(60)).unwrap();
    assert!(!g.extend_lease(c.offset(), Duration::from_secs(1)).unwrap());
    // Iter::next_timeout: closing the queue ends the wait at once.
    let mut tail = q.iter_from(q.next_offset());
    let closer = {
        let q = q.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            q.close().unwrap();
        })
    };
    let started = std::time::Instant::now();
    assert!(tail.next_timeout(Duration::from_secs(30)).is_none());
    assert!(started.elapsed() < Duration::from_secs(5), "the wait did not end at the close");
    closer.join().unwrap();
    // Closing a closed queue does nothing.
    q.close().unwrap();
}
