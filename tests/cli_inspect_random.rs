//! The inspection layer behind the `segq` binary, fed random and mutated bytes: it reports
//! damage with positions inside the file and never panics (the cargo-fuzz target in `fuzz/`
//! does the same at length; this runs in CI).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use segq::inspect::{self, QueueDir, SegmentReader};
use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};

/// Walks a segment given as bytes in chunks of `chunk` bytes, checking what it reports.
fn walk(bytes: &[u8], chunk: usize, active: bool) {
    let name = Path::new("00000000000000000000.log");
    let mut reader = match SegmentReader::from_bytes(name, bytes.to_vec()) {
        Ok(r) => r.with_chunk_size(chunk),
        Err(Error::Corrupt { position, .. }) => {
            assert!(position <= bytes.len() as u64);
            return;
        }
        Err(e) => panic!("only corruption is possible in memory: {e}"),
    };
    let mut last_end = 32;
    while let Some(rec) = reader.next_record().unwrap() {
        assert_eq!(rec.position, last_end, "records follow each other");
        assert!(rec.end() <= bytes.len() as u64);
        last_end = rec.end();
    }
    let end = reader.end().unwrap().clone();
    assert!(end.valid_end <= end.position && end.position <= bytes.len() as u64);
    assert_eq!(end.position, last_end);
    inspect::judge_end(&mut reader, active, 32).unwrap();
}

/// A segment header for base 0 followed by `body`.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut h = Vec::from(*b"SEGQLOG\0");
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(body);
    h
}

/// A queue directory with several segments, an index each, a checkpoint and a group with
/// a journal, made once; cases copy it.
fn template() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default().segment_bytes(4096).index_interval_bytes(200).sync(SyncPolicy::Never);
        let q = Queue::open(dir.path(), opts).unwrap();
        for i in 0..60u32 {
            q.append(&i.to_le_bytes().repeat(i as usize % 40)).unwrap();
        }
        let g = q.group_with("g", GroupOptions::default().max_attempts(1)).unwrap();
        for _ in 0..5 {
            let d = g.poll(std::time::Duration::ZERO).unwrap().unwrap();
            if d.offset().is_multiple_of(2) {
                g.ack(d.offset()).unwrap()
            } else {
                g.nack(d.offset(), Default::default()).unwrap()
            }
        }
        q.close().unwrap();
        dir
    })
    .path()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.file_name().is_some_and(|n| n != "lock") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_never_panic_the_segment_reader(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..300,
        active: bool,
    ) {
        walk(&bytes, chunk, active);
    }

    #[test]
    fn random_records_after_a_valid_header_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..300,
        active: bool,
    ) {
        walk(&with_header(&body), chunk, active);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random damage anywhere in a real queue directory: every command's library call
    /// reports it with positions inside the files, and nothing panics.
    #[test]
    fn mutated_queue_directories_are_reported_not_panicked_on(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=255), 1..6),
        cut in any::<Option<(prop::sample::Index, prop::sample::Index)>>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        copy(template(), tmp.path());
        let all = files(tmp.path());
        for (file, at, x) in flips {
            let path = &all[file.index(all.len())];
            let mut bytes = std::fs::read(path).unwrap();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
                std::fs::write(path, bytes).unwrap();
            }
        }
        if let Some((file, at)) = cut {
            let path = &all[file.index(all.len())];
            let len = std::fs::metadata(path).unwrap().len() as usize;
            std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(at.index(len + 1) as u64).unwrap();
        }
        let dir = QueueDir::open(tmp.path()).unwrap();
        let report = inspect::verify(&dir, &|_| {}).unwrap();
        for f in &report.findings {
            let len = std::fs::metadata(&f.file).map(|m| m.len()).unwrap_or(u64::MAX);
            prop_assert!(f.position <= len.max(512), "{f} lies past the end of the file");
        }
        let _ = inspect::info(&dir);
        for name in &dir.groups {
            let _ = inspect::read_group(&dir, name, report.next_offset);
        }
        let _ = inspect::plan_repair(&dir).unwrap();
    }
}
