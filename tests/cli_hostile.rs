//! The `segq` binary on damaged and hostile files: every problem is a clear line naming the
//! file and the byte position, with exit code 1 for damage and 2 for usage or I/O errors,
//! and never a panic.

mod cli_support;

use std::fs;
use std::path::Path;

use cli_support::*;

/// A valid 32-byte segment header for `base`, built as FORMAT.md describes.
fn header(base: u64, version: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(b"SEGQLOG\0");
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `dump` on a lone file with these bytes and returns the run.
fn dump_file(dir: &Path, name: &str, bytes: &[u8]) -> Run {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    segq(["dump", &arg(&path)])
}

#[test]
fn hostile_segment_files_give_one_clear_line_naming_file_and_position() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut huge = header(0, 1);
    huge.extend(frame(0, b"fine"));
    let at = huge.len();
    let mut bad = frame(1, b"");
    bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    huge.extend(bad);
    let mut wrong_version = header(0, 2);
    wrong_version.extend(frame(0, b"x"));
    let cases: Vec<(&str, Vec<u8>, String, &str)> = vec![
        ("random.bin", random_bytes(100_000, 7), "at byte 0".into(), "bad magic number"),
        ("empty.log", Vec::new(), "at byte 0".into(), "file ends inside a structure"),
        ("short.seg", header(0, 1)[..10].to_vec(), "at byte 10".into(), "file ends inside a structure"),
        ("magic.seg", [b"NOTSEGQ\0".as_slice(), &header(0, 1)[8..]].concat(), "at byte 0".into(), "bad magic number"),
        ("version.seg", wrong_version, "at byte 0".into(), "unsupported format version 2"),
        ("huge.seg", huge, format!("at byte {at}"), "length 2147483647 runs past the end of the data"),
    ];
    for (name, bytes, position, what) in cases {
        let run = dump_file(d, name, &bytes);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        let line = run.stderr.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name}: {}", run.stderr));
        assert!(line.contains(&position) && line.contains(what), "{name}: {line}");
    }
}

#[test]
fn a_huge_length_in_a_sealed_segment_is_damage_at_its_position() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let files = segment_files(tmp.path());
    let mut bytes = fs::read(&files[0]).unwrap();
    let positions = record_positions(&bytes);
    let at = positions[3];
    bytes[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&files[0], &bytes).unwrap();
    let run = segq(["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 1);
    let j = run.json();
    let f = &j["findings"][0];
    assert_eq!(f["severity"].as_str(), Some("damage"));
    assert!(f["file"].as_str().unwrap().ends_with("00000000000000000000.log"));
    assert_eq!(f["position"].as_u64(), Some(at as u64));
    assert!(f["what"].as_str().unwrap().contains("length 2147483647"), "{f}");
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_found_and_dump_goes_on_past_it() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let files = segment_files(tmp.path());
    let mut bytes = fs::read(&files[1]).unwrap();
    let at = record_positions(&bytes)[5];
    bytes[at + 30] ^= 0x55;
    fs::write(&files[1], &bytes).unwrap();

    let text = segq(["verify", &arg(tmp.path())]);
    assert_eq!(text.code, 1, "{}", text.stdout);
    let line = text.stdout.lines().find(|l| l.starts_with("DAMAGE")).unwrap();
    assert!(
        line.contains("00000000000000000029.log") && line.contains(&at.to_string()) && line.contains("checksum"),
        "{line}"
    );

    let dump = segq(["dump", &arg(tmp.path()), "--payload", "none", "--json"]);
    assert_eq!(dump.code, 1);
    let j = dump.json();
    let offsets: Vec<u64> = j["records"].as_array().unwrap().iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert!(offsets.contains(&33) && !offsets.contains(&34), "records up to the damage");
    assert!(offsets.contains(&60) && offsets.contains(&(RECORDS - 1)), "and the segments after it");
    assert_eq!(j["findings"][0]["position"].as_u64(), Some(at as u64));

    let segments = segq(["segments", &arg(tmp.path())]);
    assert_eq!(segments.code, 1);
    assert!(segments.stdout.contains(&format!("DAMAGED at {at}")), "{}", segments.stdout);
}

#[test]
fn a_torn_tail_in_the_active_segment_is_the_end_not_damage() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let active = segment_files(tmp.path()).pop().unwrap();
    let mut bytes = fs::read(&active).unwrap();
    let end = *record_positions(&bytes).last().unwrap() + 24 + 7;
    // Half a record: a header and the start of its payload, then the zeros of the
    // preallocated file, as a crash in the middle of an append leaves it.
    let torn = frame(RECORDS, &[b'z'; 200]);
    bytes[end..end + 100].copy_from_slice(&torn[..100]);
    fs::write(&active, &bytes).unwrap();
    // As after a crash: the checkpoint no longer says the queue was closed cleanly.
    fs::remove_file(tmp.path().join("checkpoint")).unwrap();

    let run = segq(["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let info = segq(["info", &arg(tmp.path()), "--json"]).json();
    assert_eq!(info["next_offset"].as_u64(), Some(RECORDS));
    assert_eq!(info["tail"]["kind"].as_str(), Some("torn"));
    assert_eq!(info["tail"]["position"].as_u64(), Some(end as u64));
    let dump = segq(["dump", &arg(tmp.path()), "--from", "100", "--json"]);
    assert_eq!((dump.code, dump.json()["records"].as_array().unwrap().len()), (0, 3));
}

#[test]
fn damage_in_synced_data_of_the_active_segment_is_damage() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let active = segment_files(tmp.path()).pop().unwrap();
    let mut bytes = fs::read(&active).unwrap();
    let at = record_positions(&bytes)[2];
    bytes[at + 40] ^= 1;
    fs::write(&active, &bytes).unwrap();
    let run = segq(["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.json()["findings"][0]["position"].as_u64(), Some(at as u64));
}

/// A bad index entry is damage in the index, at the entry's position; the library rebuilds
/// the index, so every record still reads.
#[test]
fn a_bad_index_entry_is_damage_in_the_index() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let index = tmp.path().join("00000000000000000000.index");
    let mut bytes = fs::read(&index).unwrap();
    bytes[32 + 8 + 4] ^= 0x10; // the position of the second entry
    fs::write(&index, &bytes).unwrap();
    let run = segq(["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let f = &run.json()["findings"][0];
    assert!(f["file"].as_str().unwrap().ends_with(".index"), "{f}");
    assert_eq!(f["severity"], "damage");
    assert_eq!(f["position"].as_u64(), Some(40));
    let q = segq::Queue::open(tmp.path(), small()).unwrap();
    for i in 0..100 {
        assert_eq!(q.read(i).unwrap().unwrap().payload(), payload(i).as_bytes());
    }
}

#[test]
fn a_directory_of_garbage_is_reported_not_a_panic() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(d.join("00000000000000000000.log"), random_bytes(5000, 1)).unwrap();
    fs::write(d.join("00000000000000000010.log"), random_bytes(10, 2)).unwrap();
    fs::write(d.join("00000000000000000010.index"), random_bytes(77, 3)).unwrap();
    fs::write(d.join("checkpoint"), random_bytes(576, 4)).unwrap();
    fs::create_dir_all(d.join("groups/g")).unwrap();
    fs::write(d.join("groups/g/state"), random_bytes(300, 5)).unwrap();
    fs::write(d.join("groups/g/journal"), random_bytes(300, 6)).unwrap();
    let verify = segq(["verify", &arg(d)]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert!(verify.stdout.contains("00000000000000000000.log") && verify.stdout.contains("bad magic number"));
    assert!(verify.stdout.contains("state"), "the group's snapshot is checked:\n{}", verify.stdout);
    let info = segq(["info", &arg(d)]);
    assert_eq!(info.code, 1);
    assert!(info.stderr.contains("00000000000000000010.log at byte 10"), "{}", info.stderr);
    for cmd in ["segments", "dump", "groups"] {
        let run = segq([cmd, &arg(d)]);
        assert_eq!(run.code, 1, "{cmd}: {}{}", run.stdout, run.stderr);
    }
    let json = segq(["verify", &arg(d), "--json"]);
    assert!(json.json()["damage"].as_u64().unwrap() >= 3);
}

#[test]
fn usage_and_io_errors_exit_with_2() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let empty = segq(["verify", &arg(tmp.path())]);
    assert_eq!(empty.code, 2);
    assert!(empty.stderr.contains("not a segq queue directory"), "{}", empty.stderr);
    let missing = segq(["info", &arg(&tmp.path().join("nope"))]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("nope"), "{}", missing.stderr);
    assert_eq!(segq(["dump", &arg(tmp.path()), "--payload", "base64"]).code, 2);
    assert_eq!(segq(["frobnicate"]).code, 2);
}

#[test]
fn a_lost_journal_write_in_the_middle_is_damage_in_the_journal() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let journal = tmp.path().join("groups/billing/journal");
    let mut bytes = fs::read(&journal).unwrap();
    bytes[32 + 24 * 2 + 5] ^= 1; // the third entry
    fs::write(&journal, &bytes).unwrap();
    let run = segq(["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let f = &run.json()["findings"][0];
    assert!(f["file"].as_str().unwrap().ends_with("billing/journal"), "{f}");
    assert_eq!(f["position"].as_u64(), Some(32 + 48));
    let groups = segq(["groups", &arg(tmp.path()), "billing", "--json"]).json();
    assert_eq!(groups["journal_entries"].as_u64(), Some(2), "replay stops at the damaged entry");
}

/// A queue under a name that is not UTF-8 (any bytes but `/` and NUL make a Linux file
/// name): every `--json` output is valid JSON, with U+FFFD for the bad byte, also when it
/// reports damage and when `repair` has changed files. (serde refuses such paths: the
/// binary used to panic, after `repair --yes` had already cut the log.)
#[test]
fn json_output_survives_a_path_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(std::ffi::OsStr::from_bytes(b"queue-\xff"));
    make_queue(&dir);
    let first = segment_files(&dir)[0].clone();
    let flip = record_positions(&fs::read(&first).unwrap())[3] + 30;
    let mut bytes = fs::read(&first).unwrap();
    bytes[flip] ^= 0xff;
    fs::write(&first, bytes).unwrap();
    for command in ["info", "segments", "verify", "groups", "dump"] {
        let run = segq([std::ffi::OsStr::new(command), dir.as_os_str(), "--json".as_ref()]);
        let doc = run.json();
        assert!(doc.to_string().contains("queue-\u{fffd}"), "{command}: {doc}");
    }
    let run = segq([
        std::ffi::OsStr::new("repair"),
        dir.as_os_str(),
        "--truncate-at-first-damage".as_ref(),
        "--yes".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(run.json()["applied"], true);
    assert_eq!(segq([std::ffi::OsStr::new("verify"), dir.as_os_str()]).code, 0);
}

/// A FIFO under the name of a segment or of the checkpoint: every read command says it is
/// not a regular file (exit 2) instead of waiting for ever for a writer to the FIFO.
#[test]
fn a_fifo_in_place_of_a_queue_file_is_an_error_not_a_hang() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["00000000000000900000.log", "checkpoint"] {
        let dir = tmp.path().join(name.replace('.', "-"));
        make_queue(&dir);
        let _ = fs::remove_file(dir.join(name));
        let made = std::process::Command::new("mkfifo").arg(dir.join(name)).status().expect("mkfifo runs");
        assert!(made.success());
        for command in ["info", "segments", "verify", "groups", "dump"] {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_segq"))
                .args([command, &arg(&dir)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Not a timing check: a minute stands for "never".
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("{command} on a FIFO named {name} hangs");
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert_eq!(status.code(), Some(2), "{command} on a FIFO named {name}: {stderr}");
            assert!(stderr.contains(name) && stderr.contains("not a regular file"), "{command}: {stderr}");
        }
    }
}

/// A record claiming the last offset a u64 holds cannot be valid (no record could follow
/// it): in the active segment it is the incomplete tail, and no count includes it. (The next
/// offset overflowed: a panic in debug builds; in release, counts wrapped to 0.)
#[test]
fn a_record_at_the_last_u64_offset_is_never_counted() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = header(u64::MAX, 1);
    bytes.extend(frame(u64::MAX, b"z"));
    fs::write(tmp.path().join(format!("{}.log", u64::MAX)), bytes).unwrap();
    for command in ["info", "segments", "verify", "dump"] {
        let run = segq([command, &arg(tmp.path())]);
        assert_eq!(run.code, 0, "{command}: {}{}", run.stdout, run.stderr);
    }
    let info = segq(["info", &arg(tmp.path())]).stdout;
    assert!(info.contains("records         0") && info.contains("last a u64 holds"), "{info}");
    let verify = segq(["verify", &arg(tmp.path()), "--json"]).json();
    assert_eq!((verify["records"].as_u64(), verify["next_offset"].as_u64()), (Some(0), Some(u64::MAX)));
}

/// An I/O error in the middle of `dump --json` (here a directory named like the next
/// segment) still leaves one valid JSON document, with the records printed before it and
/// the error, and exit code 2. (The document used to stop in the middle of its array.)
#[test]
fn dump_json_stays_valid_when_an_error_stops_it() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    make_queue(&dir);
    let next = segq(["info", &arg(&dir), "--json"]).json()["next_offset"].as_u64().unwrap();
    fs::create_dir(dir.join(format!("{next:020}.log"))).unwrap();
    let run = segq(["dump", &arg(&dir), "--json", "--from", &(next - 2).to_string()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["printed"], 2);
    assert_eq!(doc["records"].as_array().map(Vec::len), Some(2));
    assert!(doc["error"].as_str().is_some_and(|e| e.contains("a directory")), "{doc}");
}

/// A log made to end at the last offsets a u64 holds, with an index entry of a sealed
/// segment damaged to name an offset past `u64::MAX`: the library reads every record past
/// it, and `verify` reports the entry with the offset it names in full. (The sum overflowed:
/// a panic in debug builds.)
#[test]
fn an_index_entry_naming_an_offset_past_u64_max_is_damage() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let base = u64::MAX - 200;
    fs::write(tmp.path().join(format!("{base:020}.log")), header(base, 1)).unwrap();
    let q = segq::Queue::open(tmp.path(), small()).unwrap();
    for i in 0..200 {
        q.append(payload(i).as_bytes()).unwrap();
    }
    assert!(q.append(b"past the end").is_err());
    q.close().unwrap();
    let index = tmp.path().join(format!("{base:020}.index"));
    let mut bytes = fs::read(&index).unwrap();
    assert!(bytes.len() >= 32 + 16, "the first segment's index has two entries");
    bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&index, bytes).unwrap();
    let verify = segq(["verify", &arg(tmp.path())]);
    assert_eq!(verify.code, 1, "{}{}", verify.stdout, verify.stderr);
    let named = u128::from(base) + u128::from(u32::MAX);
    assert!(verify.stdout.contains(&format!("entry for offset {named}")), "{}", verify.stdout);
    for command in ["info", "segments", "dump", "groups"] {
        let run = segq([command, &arg(tmp.path())]);
        assert!(run.code <= 1 && !run.stderr.contains("panicked"), "{command}: {}{}", run.stdout, run.stderr);
    }
    let q = segq::Queue::open(tmp.path(), small()).unwrap();
    for i in 0..200 {
        assert_eq!(q.read(base + i).unwrap().unwrap().payload(), payload(i).as_bytes());
    }
}

/// Index problems are damage in the index, each reported once: a 0-byte index, and garbage
/// past the data in the active segment's index of a queue closed cleanly. `repair` deletes
/// a damaged index (the next open rebuilds it) and cuts nothing. Damage in a segment is one
/// finding: the index entries past it index the records the damage hides, and are not
/// reported as well. (A damaged segment gave a second finding in its index; garbage in the
/// active index was never reported; `repair` did not mend a damaged index.)
#[test]
fn index_damage_is_reported_once_and_repair_deletes_the_index() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_queue(d);
    let findings = |run: &Run| -> Vec<(String, String)> {
        let doc = run.json();
        let all = doc["findings"].as_array().unwrap().clone();
        all.iter()
            .map(|f| (f["severity"].as_str().unwrap().to_string(), f["file"].as_str().unwrap().to_string()))
            .collect()
    };
    let damage_in = |file: &Path| vec![("damage".to_string(), arg(file))];
    let index = d.join("00000000000000000000.index");
    let saved = fs::read(&index).unwrap();
    fs::write(&index, b"").unwrap();
    let run = segq(["verify", "--json", &arg(d)]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(findings(&run), damage_in(&index));
    fs::write(&index, &saved).unwrap();

    let segment = d.join("00000000000000000000.log");
    let mut bytes = fs::read(&segment).unwrap();
    bytes[32 + 30] ^= 1; // the first record's payload
    fs::write(&segment, &bytes).unwrap();
    let run = segq(["verify", "--json", &arg(d)]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(findings(&run), damage_in(&segment), "{}", run.stdout);
    bytes[32 + 30] ^= 1;
    fs::write(&segment, &bytes).unwrap();

    let newest = segment_files(d).pop().unwrap().with_extension("index");
    let mut ix = fs::read(&newest).unwrap();
    let unused = 32 + ix[32..].chunks_exact(8).position(|e| e == [0; 8]).unwrap() * 8;
    ix[unused..unused + 8].copy_from_slice(&[5, 0, 0, 0, 0, 0xff, 0xff, 0]);
    fs::write(&newest, &ix).unwrap();
    let run = segq(["verify", "--json", &arg(d)]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(findings(&run), damage_in(&newest), "{}", run.stdout);

    let dry = segq(["repair", "--truncate-at-first-damage", &arg(d)]);
    assert_eq!(dry.code, 1, "{}", dry.stdout);
    assert!(dry.stdout.contains(&format!("would delete {}", newest.display())), "{}", dry.stdout);
    assert!(!dry.stdout.contains("would cut"), "{}", dry.stdout);
    let done = segq(["repair", "--truncate-at-first-damage", "--yes", &arg(d)]);
    assert_eq!(done.code, 0, "{}{}", done.stdout, done.stderr);
    assert!(!newest.exists());
    let q = segq::Queue::open(d, small()).unwrap();
    for i in 0..100 {
        assert_eq!(q.read(i).unwrap().unwrap().payload(), payload(i).as_bytes());
    }
    assert_eq!(q.next_offset(), RECORDS);
    q.close().unwrap();
    assert_eq!(segq(["verify", &arg(d)]).code, 0, "clean once the index is rebuilt");
}

/// Runs `segq` with `args` under `ulimit -v` of `kib` KiB (address space), so that a run
/// that tries to hold a large file in memory fails to allocate (and aborts) instead of
/// passing.
fn segq_within(kib: u64, args: &[&str]) -> Run {
    let script = format!("ulimit -v {kib} && exec \"$0\" \"$@\"");
    let mut all = vec!["-c", &script, env!("CARGO_BIN_EXE_segq")];
    all.extend_from_slice(args);
    let out = std::process::Command::new("sh").args(&all).output().expect("sh runs");
    let run = Run {
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {}", String::from_utf8_lossy(&out.stderr))),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "segq panicked:\n{}", run.stderr);
    run
}

/// Group files of 1 GiB, sparse (`truncate -s 1G`): a journal whose entries are followed
/// by a hole with one stray entry of the current generation far down it, and a snapshot
/// whose entry count does not fit its length. Both are checked in a few MiB: the journal a
/// chunk at a time to its end, the snapshot not read past its fixed part.
#[test]
fn sparse_gigabyte_group_files_are_checked_in_bounded_memory() {
    use std::os::unix::fs::FileExt;
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let journal =
        fs::OpenOptions::new().read(true).write(true).open(tmp.path().join("groups/billing/journal")).unwrap();
    let mut entries = [0u8; 48];
    journal.read_exact_at(&mut entries, 32).unwrap();
    assert!(entries[24..].iter().any(|&b| b != 0), "billing has two journal entries or more");
    let end = fs::read(tmp.path().join("groups/billing/journal")).unwrap()[32..]
        .chunks_exact(24)
        .position(|e| e.iter().all(|&b| b == 0))
        .unwrap() as u64
        * 24
        + 32;
    let stray = 32 + 24 * (32 << 20); // an entry's position, about 768 MiB in
    journal.set_len(1 << 30).unwrap();
    journal.write_all_at(&entries[..24], stray).unwrap();
    fs::OpenOptions::new().write(true).open(tmp.path().join("groups/audit/state")).unwrap().set_len(1 << 30).unwrap();

    let run = segq_within(256 << 10, &["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let findings = run.json()["findings"].as_array().unwrap().clone();
    let at = |file: &str| findings.iter().find(|f| f["file"].as_str().unwrap().ends_with(file)).cloned();
    let lost = at("billing/journal").expect("the stray entry is found");
    assert_eq!((lost["severity"].as_str(), lost["position"].as_u64()), (Some("damage"), Some(end)), "{lost}");
    assert!(lost["what"].as_str().unwrap().contains(&format!("byte {stray} does")), "{lost}");
    let snapshot = at("audit/state").expect("the snapshot's count is damage");
    assert_eq!((snapshot["severity"].as_str(), snapshot["position"].as_u64()), (Some("damage"), Some(72)));
    let groups = segq_within(256 << 10, &["groups", &arg(tmp.path()), "billing", "--json"]);
    assert_eq!(groups.json()["findings"][0]["position"].as_u64(), Some(end), "{}\n{}", groups.stdout, groups.stderr);
    assert_eq!(groups.json()["journal_entries"].as_u64(), Some((end - 32) / 24));
}

/// A snapshot that passes its checks but whose floor is above its next delivery: the queue
/// raises `next` to the floor, and the commands say so, naming the `next` field.
#[test]
fn a_snapshot_floor_above_its_next_delivery_is_a_warning_at_the_field() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    put_snapshot(&tmp.path().join("groups/audit/state"), 0, 10, 3);
    let run = segq(["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let findings = run.json()["findings"].as_array().unwrap().clone();
    let f = findings.iter().find(|f| f["file"].as_str().unwrap().ends_with("audit/state")).expect("a finding");
    assert_eq!((f["severity"].as_str(), f["position"].as_u64()), (Some("warning"), Some(56)), "{f}");
    assert!(f["what"].as_str().unwrap().contains("below the ack floor 10"), "{f}");
    let group = segq(["groups", &arg(tmp.path()), "audit", "--json"]).json();
    assert_eq!((group["ack_floor"].as_u64(), group["next_delivery"].as_u64()), (Some(10), Some(10)));
    assert_eq!(group["findings"][0]["position"].as_u64(), Some(56));
    // The queue opens the group as the commands describe it.
    let q = segq::Queue::open(tmp.path(), small()).unwrap();
    assert_eq!(q.group("audit").unwrap().stats().lag, RECORDS - 10);
}

/// A regular file named `groups` in place of the groups directory: the log is intact, so
/// `info`, `segments` and `dump` work and mention it; `verify` reports it as damage on that
/// path and `groups` fails with exit 1 naming it. (Every command failed with "Not a
/// directory", exit 2.)
#[test]
fn a_file_named_groups_breaks_only_the_group_commands() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = segq::Queue::open(d, small()).unwrap();
    q.append(b"hello").unwrap();
    q.close().unwrap();
    fs::write(d.join("groups"), b"not a directory").unwrap();
    let info = segq(["info", "--json", &arg(d)]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    let doc = info.json();
    assert_eq!(doc["next_offset"], 1);
    assert!(doc["groups_error"].as_str().is_some_and(|e| e.contains("groups")), "{doc}");
    let segments = segq(["segments", &arg(d)]);
    assert_eq!(segments.code, 0, "{}", segments.stderr);
    assert!(segments.stderr.contains("groups"), "{}", segments.stderr);
    let dump = segq(["dump", &arg(d)]);
    assert_eq!(dump.code, 0, "{}", dump.stderr);
    assert!(dump.stdout.contains("hello") && dump.stderr.contains("groups"), "{}{}", dump.stdout, dump.stderr);
    let verify = segq(["verify", "--json", &arg(d)]);
    assert_eq!(verify.code, 1, "{}{}", verify.stdout, verify.stderr);
    let f = &verify.json()["findings"][0];
    assert_eq!((f["severity"].as_str(), f["file"].as_str()), (Some("damage"), Some(arg(&d.join("groups")).as_str())));
    assert!(f["what"].as_str().unwrap().contains("not a directory"), "{f}");
    let groups = segq(["groups", &arg(d)]);
    assert_eq!(groups.code, 1, "{}", groups.stderr);
    assert!(groups.stderr.contains("groups") && groups.stderr.contains("Not a directory"), "{}", groups.stderr);
}

/// The groups folder as a symbolic link that leads nowhere (a disk not mounted, or a loop):
/// damage on that path, exit 1, as for a file named `groups`, and the log is still read.
/// (`verify` found no damage and `groups` listed none for a dangling link; for a loop both
/// stopped with exit 2 and `verify` checked nothing.)
#[test]
fn a_groups_link_that_leads_nowhere_is_damage() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = segq::Queue::open(d, small()).unwrap();
    q.append(b"hello").unwrap();
    q.close().unwrap();
    for (target, why) in [("/no/such/disk", "No such file"), ("groups", "symbolic links")] {
        let _ = fs::remove_file(d.join("groups"));
        std::os::unix::fs::symlink(target, d.join("groups")).unwrap();
        let verify = segq(["verify", "--json", &arg(d)]);
        assert_eq!(verify.code, 1, "{target}: {}{}", verify.stdout, verify.stderr);
        let doc = verify.json();
        assert_eq!(doc["next_offset"], 1, "{doc}");
        let f = &doc["findings"][0];
        assert_eq!(
            (f["severity"].as_str(), f["file"].as_str()),
            (Some("damage"), Some(arg(&d.join("groups")).as_str()))
        );
        let what = f["what"].as_str().unwrap();
        assert!(what.contains("symbolic link") && what.contains(target) && what.contains(why), "{f}");
        let groups = segq(["groups", &arg(d)]);
        assert_eq!(groups.code, 1, "{target}: {}", groups.stderr);
        assert!(groups.stderr.contains(target), "{}", groups.stderr);
        let info = segq(["info", "--json", &arg(d)]);
        assert_eq!(info.code, 0, "{}", info.stderr);
        assert!(info.json()["groups_error"].as_str().is_some_and(|e| e.contains(why)));
    }
}

/// Segments kept elsewhere behind symbolic links: sizes are those of the files, not of the
/// links. A link to nothing as the newest segment is damage naming the link and its target
/// (the library does not open such a queue), not a segment deleted by retention. (It was
/// shown as "deleted", `verify` found nothing, and sizes were the links' own.)
#[test]
fn symlinked_segments_show_their_files_and_a_dangling_link_is_damage() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_queue(d);
    let files = segment_files(d);
    let moved = elsewhere.path().join("first.log");
    fs::rename(&files[0], &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &files[0]).unwrap();
    let total: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(segq(["info", "--json", &arg(d)]).json()["bytes"].as_u64(), Some(total));
    let segments = segq(["segments", "--json", &arg(d)]).json();
    assert_eq!(segments["segments"][0]["bytes"].as_u64(), Some(fs::metadata(&moved).unwrap().len()));
    assert_eq!(segq(["verify", &arg(d)]).code, 0);

    let newest = files.last().unwrap();
    fs::remove_file(newest).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("gone.log"), newest).unwrap();
    assert!(segq::Queue::open(d, small()).is_err(), "the library does not open it");
    let verify = segq(["verify", "--json", &arg(d)]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    let doc = verify.json();
    let f = &doc["findings"][0];
    assert_eq!((f["severity"].as_str(), f["file"].as_str()), (Some("damage"), Some(arg(newest).as_str())), "{doc}");
    assert!(f["what"].as_str().unwrap().contains("symbolic link") && f["what"].as_str().unwrap().contains("gone.log"));
    let segments = segq(["segments", &arg(d)]);
    assert_eq!(segments.code, 1);
    assert!(!segments.stdout.contains("deleted") && segments.stdout.contains("UNREADABLE"), "{}", segments.stdout);
    for command in ["info", "groups"] {
        let run = segq([command, &arg(d)]);
        assert_ne!(run.code, 0, "{command}");
        assert!(
            run.stderr.contains("symbolic link") || run.stdout.contains("symbolic link"),
            "{command}: {}{}",
            run.stdout,
            run.stderr
        );
    }
}

/// The newest segment's header is damaged, so where the log ends is not known: `groups`
/// counts the lag up to that segment's base, and does not claim that the group delivered
/// past the log's end. (It took the end to be offset 0 and warned that every delivery
/// would be forgotten.)
#[test]
fn groups_with_an_unreadable_newest_segment_do_not_claim_deliveries_past_the_end() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_queue(d);
    let newest = segment_files(d).pop().unwrap();
    let base = base_of(&newest);
    let mut bytes = fs::read(&newest).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&newest, &bytes).unwrap();
    for args in [vec!["groups", "--json"], vec!["verify", "--json"]] {
        let run = segq(args.iter().copied().chain([arg(d).as_str()]));
        assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(!run.stdout.contains("delivered up to"), "{args:?}: {}", run.stdout);
    }
    let doc = segq(["groups", "--json", &arg(d)]).json();
    let billing = doc["groups"].as_array().unwrap().iter().find(|g| g["name"] == "billing").unwrap().clone();
    assert_eq!(billing["next_delivery"], 6);
    assert_eq!(billing["lag"].as_u64(), Some(base - 6 + 2), "up to the newest base, and 3 (waiting) and 4 (leased)");
    assert!(billing["findings"].as_array().unwrap().is_empty(), "{billing}");
}

/// A sparse `state.1` over 1 GiB whose entry count fits its length, next to a valid `state`:
/// too big to check, it is passed over as the library passes over a file it cannot use,
/// and the group is read from `state`. (The whole group was damage, though it opens.)
#[test]
fn a_snapshot_file_too_big_to_check_is_passed_over_for_its_valid_sibling() {
    use std::os::unix::fs::FileExt;
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let group = tmp.path().join("groups/audit");
    let head = fs::read(group.join("state")).unwrap()[..80].to_vec();
    let count: u64 = (1 << 30) / 24 + 1;
    let huge = fs::File::create(group.join("state.1")).unwrap();
    huge.set_len(84 + 24 * count).unwrap();
    huge.write_all_at(&head[..72], 0).unwrap();
    huge.write_all_at(&count.to_le_bytes(), 72).unwrap();
    let run = segq_within(256 << 10, &["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let doc = run.json();
    let findings = doc["findings"].as_array().unwrap();
    assert!(findings.iter().all(|f| f["severity"] == "warning"), "{doc}");
    assert!(findings.iter().any(|f| f["file"].as_str().unwrap().ends_with("audit/state.1")), "{doc}");
    let q = segq::Queue::open(tmp.path(), small()).unwrap();
    assert_eq!(q.group("audit").unwrap().ack_floor(), 0);
}

/// With `--json`, every command prints one JSON document, also when it stops at damage or
/// at an error before it printed anything: `{"error": {...}}` with the message, the exit
/// code and, for damage, the file and the byte position. (`info` on a queue whose newest
/// segment lost its magic number printed nothing on stdout.)
#[test]
fn with_json_every_command_prints_one_document_even_when_it_fails() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let newest = segment_files(tmp.path()).pop().unwrap();
    let mut bytes = fs::read(&newest).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&newest, &bytes).unwrap();
    let dir = arg(tmp.path());
    for cmd in ["info", "segments", "dump", "verify", "groups", "repair"] {
        let run = segq([cmd, dir.as_str(), "--json"]);
        assert_ne!(run.code, 0, "{cmd}: {}", run.stdout);
        let j = run.json();
        if let Some(error) = j.get("error") {
            assert_eq!(error["exit_code"].as_i64(), Some(i64::from(run.code)), "{cmd}");
            assert!(run.stderr.contains(error["message"].as_str().unwrap()), "{cmd}: {}", run.stderr);
        }
    }
    let info = segq(["info", dir.as_str(), "--json"]);
    assert_eq!(info.code, 1, "damage");
    let error = &info.json()["error"];
    assert_eq!(error["file"].as_str(), Some(arg(&newest).as_str()));
    assert_eq!(error["position"].as_u64(), Some(0));
    assert!(error["message"].as_str().unwrap().contains("magic"), "{error}");

    let missing = tmp.path().join("missing");
    let run = segq(["info", &arg(&missing), "--json"]);
    assert_eq!(run.code, 2);
    assert_eq!(run.json()["error"]["exit_code"].as_i64(), Some(2));
    assert!(run.json()["error"]["file"].is_null());
    // Without --json, the error line alone.
    let run = segq(["info", dir.as_str()]);
    assert_eq!((run.code, run.stdout.as_str()), (1, ""));
    assert!(run.stderr.contains(&arg(&newest)), "{}", run.stderr);
}
