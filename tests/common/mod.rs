//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use segq::{Options, Queue, SyncPolicy};

/// Options with tiny segments, so that tests cross many segment boundaries.
pub fn tiny(segment_bytes: u64) -> Options {
    Options::default().segment_bytes(segment_bytes).index_interval_bytes(256).sync(SyncPolicy::Never)
}

/// A payload whose bytes depend on `i`, of a length that varies with `i`.
pub fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// A fresh directory holding a closed queue of `n` records, `payload(0)` to `payload(n - 1)`.
pub fn closed_queue(opts: Options, n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), opts).unwrap();
    for i in 0..n {
        q.append(&payload(i)).unwrap();
    }
    q.close().unwrap();
    dir
}

/// All payloads from offset 0, panicking on any error.
pub fn all_payloads(q: &Queue) -> Vec<Vec<u8>> {
    q.iter_from(0).map(|r| r.unwrap().payload().to_vec()).collect()
}

/// The segment files in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files_ending(dir, "log")
}

/// The files in `dir` with this extension, sorted by name (oldest segment first).
pub fn files_ending(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Bytes in the header that starts every segment and index file.
pub const FILE_HEADER_LEN: usize = 32;
/// Bytes in a record frame's header: `crc u32 | len u32 | offset u64 | timestamp u64`.
pub const RECORD_HEADER_LEN: usize = 24;

/// The byte ranges of the record frames in a segment file's bytes, walking the length fields
/// from the file header until zeros or the end. Checks nothing else: only for files the test
/// knows to be intact.
pub fn record_spans(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut pos = FILE_HEADER_LEN;
    while let Some(header) = bytes.get(pos..pos + RECORD_HEADER_LEN) {
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) & 0x7fff_ffff;
        let end = pos + RECORD_HEADER_LEN + len as usize;
        assert!(end <= bytes.len(), "frame at {pos} runs past the file");
        spans.push(pos..end);
        pos = end;
    }
    spans
}

/// The newest segment file in `dir`.
pub fn active_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("a queue has a segment")
}

/// The base offset named by a segment file's name.
pub fn segment_base(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Copies the regular files of `from` into `to` (created if missing).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Inverts every bit of the byte at `pos` of the file.
pub fn flip_byte(path: &Path, pos: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[pos] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Cuts the file to `len` bytes.
pub fn truncate_file(path: &Path, len: usize) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len as u64).unwrap();
}

/// Overwrites the file with zeros from `pos` to its end, keeping its length.
pub fn zero_from(path: &Path, pos: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[pos..].fill(0);
    std::fs::write(path, bytes).unwrap();
}

/// Appends `payloads[i]` for each `i`, checking that offsets follow on from `first`.
pub fn append_all(q: &Queue, first: u64, payloads: &[Vec<u8>]) {
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(q.append(p).unwrap(), first + i as u64);
    }
}

/// Checks that the queue holds exactly `expected` from offset 0, through `read` and
/// iteration, and that `next_offset` is right after them.
pub fn assert_holds(q: &Queue, expected: &[Vec<u8>]) {
    assert_eq!(q.first_offset(), 0);
    assert_eq!(q.next_offset(), expected.len() as u64, "next offset");
    for (i, want) in expected.iter().enumerate() {
        let rec = q.read(i as u64).unwrap().unwrap_or_else(|| panic!("record {i} is missing"));
        assert_eq!(rec.offset(), i as u64);
        assert_eq!(rec.payload(), want.as_slice(), "payload of record {i}");
    }
    assert!(q.read(expected.len() as u64).unwrap().is_none());
    let got = all_payloads(q);
    assert_eq!(got.len(), expected.len(), "records seen by iteration");
    assert!(got == expected, "iteration returns other payloads");
}

/// A command that runs one `#[ignore]`d test of the current test binary in a child process,
/// with `env` set. The test must do nothing unless its environment is set.
pub fn child_test(test_name: &str, env: &[(&str, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test_name, "--nocapture", "--ignored"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null());
    cmd
}

/// Runs [`child_test`] to its end and checks that the child ran and passed (it prints
/// `CHILD RAN` first); panics with what it printed otherwise.
pub fn run_child_test(test_name: &str, env: &[(&str, String)]) {
    let out = child_test(test_name, env).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("CHILD RAN"), "the child did not run: {text}");
    assert!(out.status.success(), "child failed:\n{text}");
}

/// Serialises the tests of one binary that spawn child processes: a child forked while
/// another test holds a queue open briefly inherits its lock file until it execs, which
/// could make that test's next open fail with `Error::Locked`.
pub fn process_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- Helpers of the reliability tests (crash_loop, power_loss, stress, bad_input) ----

/// A small, seedable pseudo-random generator (SplitMix64): the reliability tests print
/// their seed so that a failing run can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `range`.
    pub fn range(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.below(range.end - range.start)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// The SplitMix64 finaliser: a well-mixed function of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seed for a reliability test: `var` from the environment if set, else one that differs
/// from run to run. Printed, so that a failure can be replayed with `var=<seed>`.
pub fn test_seed(var: &str) -> u64 {
    let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
    });
    eprintln!("seed: {var}={seed}");
    seed
}

/// Bytes at the start of a [`tagged`] payload: `seed u64 | index u16 | count u16 | len u32`.
pub const TAG_LEN: usize = 16;

/// A self-describing payload: record `index` of a batch of `count` records, each record of
/// the batch having seed `batch seed + index`. Its length and bytes follow from `seed`, so
/// any reader can check a record it finds without knowing who wrote it, and can tell
/// whether the rest of its batch is there.
pub fn tagged(seed: u64, index: u16, count: u16) -> Vec<u8> {
    let h = mix(seed ^ 0x5EED);
    let body = match h % 100 {
        0 => 2000 + (h >> 8) % 4000,
        1..=10 => 300 + (h >> 8) % 1200,
        _ => (h >> 8) % 300,
    } as usize;
    let mut p = Vec::with_capacity(TAG_LEN + body);
    p.extend_from_slice(&seed.to_le_bytes());
    p.extend_from_slice(&index.to_le_bytes());
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(&(body as u32).to_le_bytes());
    let mut rng = Rng::new(seed);
    let mut word = 0;
    for i in 0..body {
        if i % 8 == 0 {
            word = rng.next_u64();
        }
        p.push((word >> (8 * (i % 8))) as u8);
    }
    p
}

/// What a [`tagged`] payload says about itself: `(seed, index, count)`, or why it is not
/// one (wrong length, wrong bytes).
pub fn untag(p: &[u8]) -> Result<(u64, u16, u16), String> {
    if p.len() < TAG_LEN {
        return Err(format!("payload of {} bytes is shorter than its tag", p.len()));
    }
    let seed = u64::from_le_bytes(p[..8].try_into().unwrap());
    let index = u16::from_le_bytes(p[8..10].try_into().unwrap());
    let count = u16::from_le_bytes(p[10..12].try_into().unwrap());
    if index >= count {
        return Err(format!("payload says it is record {index} of a batch of {count}"));
    }
    if p != tagged(seed, index, count).as_slice() {
        return Err(format!("payload of seed {seed:#x} ({} bytes) is not the one written", p.len()));
    }
    Ok((seed, index, count))
}

/// Walks every record from `q.first_offset()`: offsets contiguous up to `next_offset`, each
/// payload a [`tagged`] one, and every batch whole (no record of a batch without the others).
/// Returns the seed of each record, by offset from the first. The first record must start a
/// batch: retention deletes whole segments, and a batch never spans two.
pub fn check_tagged_log(q: &Queue) -> Result<Vec<u64>, String> {
    let (first, next) = (q.first_offset(), q.next_offset());
    let mut seeds = Vec::with_capacity((next - first) as usize);
    // (seed of the next record of the current batch, its index, the batch's count).
    let mut pending: Option<(u64, u16, u16)> = None;
    for (i, rec) in q.iter_from(first).enumerate() {
        let rec = rec.map_err(|e| format!("iteration at offset {}: {e}", first + i as u64))?;
        let offset = rec.offset();
        if offset != first + i as u64 {
            return Err(format!("iteration yields offset {offset} where {} was due", first + i as u64));
        }
        let (seed, index, count) = untag(rec.payload()).map_err(|e| format!("record {offset}: {e}"))?;
        match pending {
            Some(want) if want != (seed, index, count) => {
                return Err(format!(
                    "record {offset} is ({seed:#x}, {index}/{count}) in the middle of batch record {want:?}"
                ));
            }
            None if index != 0 => {
                return Err(format!("record {offset} is record {index} of a batch whose start is missing"));
            }
            _ => {}
        }
        pending = (index + 1 < count).then_some((seed + 1, index + 1, count));
        seeds.push(seed);
    }
    if seeds.len() as u64 != next - first {
        return Err(format!("iteration gave {} records, {first}..{next} holds {}", seeds.len(), next - first));
    }
    if let Some(want) = pending {
        return Err(format!("the log ends inside a batch: record {want:?} is missing"));
    }
    Ok(seeds)
}

/// Copies a directory tree (regular files and folders) from `from` into `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// CRC-32 (IEEE), the checksum of every segq structure, for tests that craft or check bytes.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_parts(&[bytes])
}

/// CRC-32 of the concatenation of `parts`.
pub fn crc32_parts(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
    }
    !crc
}

/// Position of checkpoint slot B; slot A is at 0. A slot is `magic | version | flags | base |
/// position | next_offset | crc`, 64 bytes with padding.
pub const CHECKPOINT_SLOT_B: usize = 512;

/// A checkpoint slot: `(segment_base, position, next_offset, clean)` if it is valid.
pub fn checkpoint_slot(bytes: &[u8], at: usize) -> Option<(u64, u64, u64, bool)> {
    let s = bytes.get(at..at + 44)?;
    let u64_at = |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
    let crc = u32::from_le_bytes(s[40..44].try_into().unwrap());
    (&s[..8] == b"SEGQCKPT" && crc == crc32(&s[..40])).then(|| (u64_at(16), u64_at(24), u64_at(32), s[12] & 1 != 0))
}

/// Writes a valid checkpoint slot at `at` of `bytes` (grown if needed).
pub fn put_checkpoint_slot(bytes: &mut Vec<u8>, at: usize, base: u64, position: u64, next: u64, clean: bool) {
    if bytes.len() < at + 64 {
        bytes.resize(at + 64, 0);
    }
    let s = &mut bytes[at..at + 64];
    s.fill(0);
    s[..8].copy_from_slice(b"SEGQCKPT");
    s[8..12].copy_from_slice(&1u32.to_le_bytes());
    s[12..16].copy_from_slice(&u32::from(clean).to_le_bytes());
    s[16..24].copy_from_slice(&base.to_le_bytes());
    s[24..32].copy_from_slice(&position.to_le_bytes());
    s[32..40].copy_from_slice(&next.to_le_bytes());
    let crc = crc32(&s[..40]);
    s[40..44].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes in a group journal entry: `crc u32 | kind u8 | reserved [u8; 3] | offset u64 | arg u64`.
pub const JOURNAL_ENTRY_LEN: usize = 24;

/// The generation of a group snapshot (`groups/<name>/state`): its header's base field.
pub fn snapshot_generation(state: &[u8]) -> u64 {
    u64::from_le_bytes(state[16..24].try_into().unwrap())
}

/// Rewrites the generation of the group snapshot at `path`, with both its checksums.
pub fn set_snapshot_generation(path: &Path, generation: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[16..24].copy_from_slice(&generation.to_le_bytes());
    let header_crc = crc32(&bytes[..24]);
    bytes[24..28].copy_from_slice(&header_crc.to_le_bytes());
    let end = bytes.len() - 4;
    let file_crc = crc32(&bytes[..end]);
    bytes[end..].copy_from_slice(&file_crc.to_le_bytes());
    std::fs::write(path, &bytes).unwrap();
}

/// Whether the journal entry at `at` verifies for `generation`.
pub fn journal_entry_valid(journal: &[u8], at: usize, generation: u64) -> bool {
    journal.get(at..at + JOURNAL_ENTRY_LEN).is_some_and(|e| {
        u32::from_le_bytes(e[..4].try_into().unwrap()) == crc32_parts(&[&generation.to_le_bytes(), &e[4..]])
    })
}

/// Entries at the start of a group journal that verify for `generation`.
pub fn journal_entries(journal: &[u8], generation: u64) -> usize {
    (0..).take_while(|i| journal_entry_valid(journal, FILE_HEADER_LEN + i * JOURNAL_ENTRY_LEN, generation)).count()
}

/// Encodes a journal entry for `generation` with a valid checksum.
pub fn journal_entry(kind: u8, offset: u64, arg: u64, generation: u64) -> [u8; JOURNAL_ENTRY_LEN] {
    let mut e = [0u8; JOURNAL_ENTRY_LEN];
    e[4] = kind;
    e[8..16].copy_from_slice(&offset.to_le_bytes());
    e[16..24].copy_from_slice(&arg.to_le_bytes());
    let crc = crc32_parts(&[&generation.to_le_bytes(), &e[4..]]);
    e[..4].copy_from_slice(&crc.to_le_bytes());
    e
}

/// The file of a group's snapshot of `generation`: `state` for even ones, `state.1` for odd.
pub fn snapshot_file(generation: u64) -> &'static str {
    if generation.is_multiple_of(2) { "state" } else { "state.1" }
}

/// The generation of a group's newest valid snapshot: snapshots alternate between `state`
/// and `state.1` in `group_dir`, and one whose checksum fails does not count.
pub fn latest_snapshot_generation(group_dir: &Path) -> Option<u64> {
    ["state", "state.1"]
        .iter()
        .filter_map(|name| std::fs::read(group_dir.join(name)).ok())
        .filter(|b| {
            b.len() >= FILE_HEADER_LEN + 4
                && &b[..8] == b"SEGQGRP\0"
                && u32::from_le_bytes(b[b.len() - 4..].try_into().unwrap()) == crc32(&b[..b.len() - 4])
        })
        .map(|b| snapshot_generation(&b))
        .max()
}

/// Whether the syncs in `synced` (from `segq::fault::take_synced`) together cover `span`
/// of the file `path`.
pub fn covered(synced: &[segq::fault::Synced], path: &Path, span: &std::ops::Range<u64>) -> bool {
    let mut ranges: Vec<std::ops::Range<u64>> =
        synced.iter().filter(|s| s.path == path).map(|s| s.range.clone()).collect();
    ranges.sort_by_key(|r| r.start);
    let mut done = span.start;
    for r in ranges {
        if r.start <= done {
            done = done.max(r.end);
        }
    }
    done >= span.end
}

/// The frame of a record with this offset and payload, as segq writes it (batch flag clear,
/// a fixed timestamp): for files built by hand and images of records inside payloads.
pub fn frame(offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut body = (payload.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    body.extend_from_slice(payload);
    let mut frame = crc32(&body).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
pub struct SmallFs {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallFs {
    pub fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let mount = dir.path().join("fs");
        std::fs::create_dir(&mount).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .status();
        match status {
            Ok(s) if s.success() => Some(SmallFs { _dir: dir, mount }),
            other => {
                eprintln!("SKIPPED: cannot mount a tmpfs ({other:?}); run as root to test a really full disk");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Bytes still free for an unprivileged writer.
    pub fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.mount).unwrap();
        s.f_bavail * s.f_bsize
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Whether `err` is a full disk.
pub fn is_full(err: &segq::Error) -> bool {
    let segq::Error::Io(e) = err else { return false };
    e.kind() == std::io::ErrorKind::StorageFull
}

/// Whether this process has the journal of group `name` under the queue `dir` open.
pub fn group_is_open(dir: &Path, name: &str) -> bool {
    let journal = dir.join("groups").join(name).join("journal");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target == journal)
}

/// Opens a group never seen before and drops it. With `idle_groups_kept_open(0)` this
/// closes every open group that no handle holds and that can be closed.
pub fn close_idle_groups(q: &Queue) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    drop(q.group(&format!("zz-churn-{n}")).unwrap());
}

/// Waits until `cond` holds, failing after a minute: a hang detector, not a timing check.
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
