//! The read side (`Queue::read`, `Queue::iter_from`, `Iter`, `Record`, `offset_at_time`)
//! under everything that happens to the log at the same time. From a review in session 19.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RECORD_HEADER_LEN, Rng, flip_byte, record_spans, segment_files};
use segq::{CorruptKind, Error, Options, Queue, Record, SyncPolicy};

/// A temporary directory on tmpfs when there is one: thousands of segment seals cost
/// fsyncs, which tmpfs makes free.
fn fast_dir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// Payload length of record `i`.
fn plen(i: u64) -> usize {
    (i.wrapping_mul(37) % 300) as usize
}

/// Checks that `r` is the record appended at its offset.
fn check(r: &Record) {
    let o = r.offset();
    assert_eq!(r.payload(), pl(o, plen(o)).as_slice(), "payload of offset {o}");
}

/// Mappings of files under `dir` that this process holds (lines of `/proc/self/maps`).
fn mappings_under(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    maps.lines().filter(|line| line.contains(dir)).count()
}

/// Payload of record `i`: its bytes say which record it is.
fn pl(i: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|j| (i as usize).wrapping_mul(131).wrapping_add(j) as u8).collect();
    if len >= 8 {
        p[..8].copy_from_slice(&i.to_le_bytes());
    }
    p
}

/// A read that fails on a damaged record counts the segment it mapped, so the bound on
/// mapped segments holds. (Until session 19 `Log::read` counted it only on success: each
/// segment whose damaged record was read stayed mapped until close, outside the bound; 600
/// segments gave 1,202 mappings.)
#[test]
fn failed_reads_of_damaged_records_keep_the_mapped_segment_bound() {
    const BOUND: usize = 2 * 512 + 16;
    let dir = fast_dir();
    let opts = Options::default().segment_bytes(4096).sync(SyncPolicy::Never);
    let q = Queue::open(dir.path(), opts.clone()).unwrap();
    // Three 1000-byte records a segment: 600 sealed segments.
    let n = 3 * 600 + 1;
    for i in 0..n {
        q.append(&pl(i, 1000)).unwrap();
    }
    q.close().unwrap();
    drop(q);
    let files = segment_files(dir.path());
    let sealed = &files[..files.len() - 1];
    assert!(sealed.len() >= 600);
    // One payload byte flipped in the middle record of every sealed segment.
    let mut damaged = Vec::new();
    for path in sealed {
        let bytes = std::fs::read(path).unwrap();
        let spans = record_spans(&bytes);
        assert_eq!(spans.len(), 3);
        flip_byte(path, spans[1].start + RECORD_HEADER_LEN + 100);
        damaged.push((path.clone(), common::segment_base(path) + 1, spans[1].start as u64));
    }
    let q = Queue::open(dir.path(), opts).unwrap();
    for (path, offset, position) in &damaged {
        match q.read(*offset) {
            Err(Error::Corrupt { path: p, position: at, kind: CorruptKind::BadCrc { .. } }) => {
                assert_eq!((&p, at), (path, *position), "offset {offset}");
            }
            other => panic!("offset {offset}: {other:?}"),
        }
    }
    let mapped = mappings_under(dir.path());
    assert!(mapped <= BOUND, "{mapped} mappings after reading a damaged record in each of {} segments", damaged.len());
}

/// An I/O error that passes (too many open files) while the iterator enters a segment
/// moves nothing: the call after it ends the iteration for now, and the next one yields the
/// record. (Until session 19 it was taken for damage, and the iterator skipped the whole
/// segment, records that `read` returned a moment later, and `next_offset` with them.)
#[test]
fn a_passing_io_error_entering_a_segment_does_not_make_the_iterator_skip_it() {
    let _lock = common::process_lock();
    let dir = fast_dir();
    common::run_child_test(
        "child_iterates_while_out_of_file_descriptors",
        &[("SEGQ_ITER_NOFILE_DIR", dir.path().display().to_string())],
    );
}

#[test]
#[ignore = "run by a_passing_io_error_entering_a_segment_does_not_make_the_iterator_skip_it"]
fn child_iterates_while_out_of_file_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Ok(dir) = std::env::var("SEGQ_ITER_NOFILE_DIR") else { return };
    println!("CHILD RAN");
    let dir = Path::new(&dir);
    let opts = Options::default().segment_bytes(4096).sync(SyncPolicy::Never);
    let q = Queue::open(dir, opts.clone()).unwrap();
    for i in 0..30 {
        q.append(&pl(i, 1000)).unwrap();
    }
    q.close().unwrap();
    drop(q);
    // Reopened: no sealed segment is mapped or open yet.
    let q = Queue::open(dir, opts).unwrap();
    let mut it = q.iter_from(0);
    for i in 0..3 {
        assert_eq!(it.next().unwrap().unwrap().offset(), i);
    }
    // Offsets 0..3 fill the first segment; entering the second needs two new files.
    let old = getrlimit(Resource::Nofile);
    // No new descriptor can be made while the limit is 0.
    setrlimit(Resource::Nofile, Rlimit { current: Some(0), maximum: old.maximum }).unwrap();
    let failed = it.next();
    setrlimit(Resource::Nofile, old).unwrap();
    let err = match failed {
        Some(Err(e)) => e,
        other => panic!("expected the error of a failed open, got {other:?}"),
    };
    println!("while out of descriptors: {err}");
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    // The descriptors are back: the records are all there and readable.
    assert_eq!(q.read(3).unwrap().unwrap().offset(), 3);
    assert_eq!(it.next_offset(), 3, "the error moved the iterator");
    assert!(it.next().is_none(), "the call after an I/O error ends the iteration for now");
    let next = it.next().unwrap().unwrap().offset();
    assert_eq!(next, 3, "the iterator skipped offsets 3..{next}, which read returns");
    let rest: Vec<u64> = it.map(|r| r.unwrap().offset()).collect();
    assert_eq!(rest, (4..30).collect::<Vec<_>>());
}

/// One appender (single records and batches), two live followers (owned and lent records,
/// `next_timeout`), a random reader, an `offset_at_time` checker and a retention loop, on
/// 4 KiB segments with a small `retain_bytes`. Every record any reader gets is the one
/// appended at its offset, followers never go back, repeat, or skip an offset that
/// retention did not delete, nothing past `next_offset` is returned, and records held all
/// along stay unchanged after retention deleted their segments and the queue closed.
#[test]
fn readers_followers_and_retention_race_an_appender() {
    let dir = fast_dir();
    let opts = Options::default()
        .segment_bytes(4096)
        .index_interval_bytes(256)
        .retain_bytes(16 * 4096)
        .sync(SyncPolicy::Never);
    let q = Queue::open(dir.path(), opts).unwrap();
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let held: Mutex<Vec<Record>> = Mutex::new(Vec::new());
    let stats = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        // The appender.
        s.spawn(|| {
            let mut rng = Rng::new(7);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = if rng.chance(60) { 1 } else { rng.range(2..9) };
                let payloads: Vec<Vec<u8>> = (i..i + n).map(|o| pl(o, plen(o))).collect();
                let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                let r = q.append_batch(&refs).unwrap();
                assert_eq!(r, i..i + n);
                i += n;
                appended.store(i, Ordering::Release);
                if rng.chance(2) {
                    std::thread::yield_now();
                }
            }
        });
        // Retention on its own thread too.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                q.enforce_retention().unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        // Followers.
        for lent in [false, true] {
            let (q, stop, held, stats) = (&q, &stop, &held, &stats);
            s.spawn(move || {
                let mut it = q.iter_from(0);
                let mut last: Option<u64> = None;
                let (mut seen, mut skipped) = (0u64, 0u64);
                loop {
                    let got = if lent {
                        match it.next_ref() {
                            Some(r) => {
                                let r = r.unwrap();
                                let o = r.offset();
                                assert_eq!(r.payload(), pl(o, plen(o)).as_slice(), "lent payload of {o}");
                                Some((o, (o % 97 == 0).then(|| r.to_record())))
                            }
                            None => None,
                        }
                    } else {
                        it.next_timeout(Duration::from_millis(20)).map(|r| {
                            let r = r.unwrap();
                            check(&r);
                            let o = r.offset();
                            (o, (o % 89 == 0).then_some(r))
                        })
                    };
                    match got {
                        Some((o, keep)) => {
                            let next = q.next_offset();
                            assert!(o < next, "offset {o} at or past next_offset {next}");
                            assert_eq!(it.next_offset(), o + 1);
                            if let Some(prev) = last {
                                assert!(o > prev, "went back or repeated: {prev} then {o}");
                                if o != prev + 1 {
                                    // Only what retention deleted may be skipped.
                                    let first = q.first_offset();
                                    assert!(
                                        o == first || o - 1 < first,
                                        "skipped {}..{o}, first offset {first}",
                                        prev + 1
                                    );
                                    skipped += o - prev - 1;
                                }
                            }
                            last = Some(o);
                            seen += 1;
                            if let Some(r) = keep {
                                held.lock().unwrap().push(r);
                            }
                        }
                        None if stop.load(Ordering::Relaxed) => break,
                        None => {}
                    }
                }
                stats.lock().unwrap().push(format!("follower lent={lent}: {seen} seen, {skipped} skipped"));
            });
        }
        // A random reader.
        s.spawn(|| {
            let mut rng = Rng::new(11);
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let (first, next) = (q.first_offset(), q.next_offset());
                if next == first {
                    continue;
                }
                let o = first + rng.below(next - first);
                match q.read(o).unwrap() {
                    Some(r) => {
                        assert_eq!(r.offset(), o);
                        check(&r);
                        reads += 1;
                        if rng.chance(1) {
                            held.lock().unwrap().push(r);
                        }
                    }
                    None => assert!(o < q.first_offset(), "offset {o} in range read as None"),
                }
            }
            stats.lock().unwrap().push(format!("reader: {reads} reads"));
        });
        // offset_at_time on records just read.
        s.spawn(|| {
            let mut rng = Rng::new(13);
            let mut searches = 0;
            while !stop.load(Ordering::Relaxed) {
                let (first, next) = (q.first_offset(), q.next_offset());
                if next == first {
                    continue;
                }
                let o = first + rng.below(next - first);
                let Some(r) = q.read(o).unwrap() else { continue };
                let t = r.timestamp_ms();
                let found = q.offset_at_time(t).unwrap();
                assert!(found <= o || o < q.first_offset(), "time {t} of {o} found at {found}");
                if let Some(before) = found.checked_sub(1).and_then(|b| q.read(b).unwrap()) {
                    assert!(before.timestamp_ms() < t, "{found} for time {t}: {} is as late", found - 1);
                }
                searches += 1;
            }
            stats.lock().unwrap().push(format!("searcher: {searches} searches"));
        });
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, Ordering::Relaxed);
    });
    let total = appended.load(Ordering::Acquire);
    assert!(q.first_offset() > 0, "retention deleted nothing");
    let held = held.into_inner().unwrap();
    q.close().unwrap();
    drop(q);
    for r in &held {
        check(r);
    }
    eprintln!("{total} appended, {} held; {:?}", held.len(), stats.into_inner().unwrap());
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use segq::Iter;

    #[derive(Debug, Clone)]
    pub enum Op {
        Append(usize),
        Batch(Vec<usize>),
        Read(u64),
        NewIter(u64),
        /// Steps iterator `which` (mod live iterators) `n` times, lent or owned, keeping
        /// one record now and then.
        Step {
            which: usize,
            n: usize,
            lent: bool,
            keep: bool,
        },
        Retain,
        OffsetAtTime(u64),
        Reopen,
        CrashReopen,
    }

    fn len() -> impl Strategy<Value = usize> {
        prop_oneof![12 => 0..700usize, 1 => 4000..6000usize]
    }

    pub fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => len().prop_map(Op::Append),
            3 => prop::collection::vec(len(), 0..7).prop_map(Op::Batch),
            3 => any::<u64>().prop_map(Op::Read),
            2 => any::<u64>().prop_map(Op::NewIter),
            6 => (any::<usize>(), 1..12usize, any::<bool>(), any::<bool>())
                .prop_map(|(which, n, lent, keep)| Op::Step { which, n, lent, keep }),
            2 => Just(Op::Retain),
            1 => any::<u64>().prop_map(Op::OffsetAtTime),
            1 => Just(Op::Reopen),
            1 => Just(Op::CrashReopen),
        ]
    }

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|j| (seq as usize * 131 + j * 7 + 1) as u8).collect()
    }

    /// A live iterator and the offset it must yield next (before retention moves it).
    struct Live {
        it: Iter,
        expect: u64,
    }

    pub fn run(ops: &[Op], retain: bool) -> Result<(), TestCaseError> {
        let dir = fast_dir();
        let mut opts = Options::default().segment_bytes(4096).index_interval_bytes(128).sync(SyncPolicy::Never);
        if retain {
            opts = opts.retain_bytes(3 * 4096);
        }
        let mut q = Queue::open(dir.path(), opts.clone()).unwrap();
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut stamps: Vec<u64> = Vec::new();
        let mut iters: Vec<Live> = Vec::new();
        let mut dead: Vec<Iter> = Vec::new();
        let mut held: Vec<Record> = Vec::new();
        let mut first_seen = 0u64;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let p = payload(model.len() as u64, *n);
                    prop_assert_eq!(q.append(&p).unwrap(), model.len() as u64);
                    model.push(p);
                }
                Op::Batch(lens) => {
                    let ps: Vec<Vec<u8>> =
                        lens.iter().enumerate().map(|(i, &n)| payload(model.len() as u64 + i as u64, n)).collect();
                    let refs: Vec<&[u8]> = ps.iter().map(Vec::as_slice).collect();
                    let r = q.append_batch(&refs).unwrap();
                    prop_assert_eq!(r, model.len() as u64..(model.len() + ps.len()) as u64);
                    model.extend(ps);
                }
                Op::Read(x) => {
                    let o = x % (model.len() as u64 + 3);
                    let got = q.read(o).unwrap();
                    let first = q.first_offset();
                    if o < first || o >= model.len() as u64 {
                        prop_assert!(got.is_none(), "offset {} outside {}..{}", o, first, model.len());
                    } else {
                        let r = got.expect("in range");
                        prop_assert_eq!(r.offset(), o);
                        prop_assert!(r.payload() == model[o as usize].as_slice(), "payload {}", o);
                        held.push(r);
                    }
                }
                Op::NewIter(x) => {
                    let from = x % (model.len() as u64 + 3);
                    iters.push(Live { it: q.iter_from(from), expect: from });
                }
                Op::Step { which, n, lent, keep } => {
                    if iters.is_empty() {
                        continue;
                    }
                    let k = which % iters.len();
                    let live = &mut iters[k];
                    for _ in 0..*n {
                        let want = live.expect.max(q.first_offset());
                        let got: Option<(u64, Vec<u8>, Option<Record>)> = if *lent {
                            live.it.next_ref().map(|r| {
                                let r = r.unwrap();
                                (r.offset(), r.payload().to_vec(), keep.then(|| r.to_record()))
                            })
                        } else {
                            live.it.next().map(|r| {
                                let r = r.unwrap();
                                (r.offset(), r.payload().to_vec(), keep.then(|| r.clone()))
                            })
                        };
                        match got {
                            None => {
                                prop_assert!(
                                    want >= model.len() as u64,
                                    "iterator ended at {} of {}",
                                    want,
                                    model.len()
                                );
                                prop_assert_eq!(live.it.next_offset(), want);
                                break;
                            }
                            Some((o, p, r)) => {
                                prop_assert_eq!(o, want, "iterator skipped or repeated");
                                prop_assert!(p == model[o as usize], "payload {}", o);
                                prop_assert_eq!(live.it.next_offset(), o + 1);
                                live.expect = o + 1;
                                held.extend(r);
                            }
                        }
                    }
                }
                Op::Retain => {
                    q.enforce_retention().unwrap();
                }
                Op::OffsetAtTime(x) => {
                    stamps.clear();
                    let first = q.first_offset();
                    for o in first..model.len() as u64 {
                        stamps.push(q.read(o).unwrap().unwrap().timestamp_ms());
                    }
                    let t = match stamps.len() {
                        0 => *x,
                        n => stamps[(*x as usize) % n] + (x % 3) - 1,
                    };
                    let want = first + stamps.iter().position(|&s| s >= t).unwrap_or(stamps.len()) as u64;
                    prop_assert_eq!(q.offset_at_time(t).unwrap(), want, "time {}", t);
                }
                Op::Reopen | Op::CrashReopen => {
                    let opts = opts.clone();
                    if matches!(op, Op::Reopen) {
                        q.close().unwrap();
                        drop(q);
                    } else {
                        q.simulate_crash();
                    }
                    dead.extend(iters.drain(..).map(|l| l.it));
                    q = Queue::open(dir.path(), opts).unwrap();
                    prop_assert_eq!(q.next_offset(), model.len() as u64);
                }
            }
            let first = q.first_offset();
            prop_assert!(first >= first_seen, "first offset went back");
            first_seen = first;
            for it in &mut dead {
                prop_assert!(it.next().is_none(), "an iterator of a closed queue yielded");
            }
            for r in &held {
                prop_assert!(
                    r.payload() == model[r.offset() as usize].as_slice(),
                    "held record {} changed",
                    r.offset()
                );
            }
        }
        Ok(())
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]
    #[test]
    fn iterators_reads_and_held_records_agree_with_a_model(
        ops in proptest::collection::vec(model::op(), 1..120),
        retain in proptest::bool::ANY,
    ) {
        model::run(&ops, retain)?;
    }
}

/// Over a thousand sealed segments, more than twice the mapped bound: three iterators at
/// different places (one lent) walk the log while random reads map segments and push the
/// oldest out of the mapped set; records kept from every segment stay unchanged, and
/// every read and step returns the record appended at its offset.
#[test]
fn iterators_and_held_records_survive_unmapping_of_their_segments() {
    let dir = fast_dir();
    let opts = Options::default().segment_bytes(4096).index_interval_bytes(256).sync(SyncPolicy::Never);
    let q = Queue::open(dir.path(), opts).unwrap();
    let n = 24_000u64;
    for i in 0..n {
        q.append(&pl(i, plen(i))).unwrap();
    }
    assert!(q.stats().segments > 1_000, "{} segments", q.stats().segments);
    let mut held = Vec::new();
    let mut iters = [q.iter_from(0), q.iter_from(n / 3), q.iter_from(2 * n / 3)];
    let mut lent = q.iter_from(n / 2);
    let mut expect = [0, n / 3, 2 * n / 3];
    let mut lent_expect = n / 2;
    let mut rng = Rng::new(5);
    while expect[0] < n {
        for (it, e) in iters.iter_mut().zip(expect.iter_mut()) {
            for _ in 0..7 {
                match it.next() {
                    Some(r) => {
                        let r = r.unwrap();
                        assert_eq!(r.offset(), *e);
                        check(&r);
                        if *e % 50 == 0 {
                            held.push(r);
                        }
                        *e += 1;
                    }
                    None => assert_eq!(*e, n),
                }
            }
        }
        for _ in 0..5 {
            match lent.next_ref() {
                Some(r) => {
                    let r = r.unwrap();
                    assert_eq!(r.offset(), lent_expect);
                    assert_eq!(r.payload(), pl(lent_expect, plen(lent_expect)).as_slice());
                    lent_expect += 1;
                }
                None => assert_eq!(lent_expect, n),
            }
        }
        for _ in 0..3 {
            let o = rng.below(n);
            let r = q.read(o).unwrap().unwrap();
            check(&r);
        }
    }
    for r in &held {
        check(r);
    }
    // Held records keep their own mappings; without them the bound holds (the four
    // iterators keep one segment each).
    let kept = held.split_off(held.len() - 20);
    drop(held);
    assert!(mappings_under(dir.path()) <= 2 * 512 + 16 + 2 * 4 + 40, "{} mappings", mappings_under(dir.path()));
    q.close().unwrap();
    drop((q, iters, lent));
    for r in &kept {
        check(r);
    }
}

/// `close` on one thread while others follow the log with `next_timeout`, step owned and
/// lent iterators, and read: the waits end, iterators yield nothing more, reads fail with
/// `Closed` or return the right record, and records taken before stay valid; a reopen
/// has every record.
#[test]
fn close_while_iterating_ends_iterators_and_keeps_records_valid() {
    let dir = fast_dir();
    let opts = Options::default().segment_bytes(4096).sync(SyncPolicy::Never);
    let q = Queue::open(dir.path(), opts.clone()).unwrap();
    let appended = AtomicU64::new(0);
    let held: Mutex<Vec<Record>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0;
            loop {
                match q.append(&pl(i, plen(i))) {
                    Ok(o) => assert_eq!(o, i),
                    Err(Error::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
                i += 1;
                appended.store(i, Ordering::Release);
            }
        });
        for lent in [false, true] {
            let (q, held) = (&q, &held);
            s.spawn(move || {
                let start = Instant::now();
                let mut it = q.iter_from(0);
                let mut expect = 0;
                loop {
                    assert!(start.elapsed() < Duration::from_secs(30), "the follower hung");
                    if lent {
                        match it.next_ref() {
                            Some(r) => {
                                let r = r.unwrap();
                                assert_eq!(r.offset(), expect);
                                assert_eq!(r.payload(), pl(expect, plen(expect)).as_slice());
                                expect += 1;
                            }
                            None if q.read(0).is_err() => break,
                            None => std::thread::yield_now(),
                        }
                    } else {
                        match it.next_timeout(Duration::from_secs(20)) {
                            Some(r) => {
                                let r = r.unwrap();
                                assert_eq!(r.offset(), expect);
                                check(&r);
                                if expect % 10 == 0 {
                                    held.lock().unwrap().push(r);
                                }
                                expect += 1;
                            }
                            None => break,
                        }
                    }
                }
                assert!(it.next().is_none() && it.next_ref().is_none());
            });
        }
        s.spawn(|| {
            let mut rng = Rng::new(3);
            loop {
                let next = q.next_offset();
                if next == 0 {
                    continue;
                }
                match q.read(rng.below(next)) {
                    Ok(r) => check(&r.unwrap()),
                    Err(Error::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        while appended.load(Ordering::Acquire) < 20_000 {
            std::thread::sleep(Duration::from_millis(5));
        }
        q.close().unwrap();
    });
    let total = appended.load(Ordering::Acquire);
    for r in held.lock().unwrap().iter() {
        check(r);
    }
    drop(q);
    let q = Queue::open(dir.path(), opts).unwrap();
    assert!(q.next_offset() >= total);
    let mut count = 0;
    for r in q.iter_from(0) {
        let r = r.unwrap();
        assert_eq!(r.offset(), count);
        check(&r);
        count += 1;
    }
    assert_eq!(count, q.next_offset());
}
