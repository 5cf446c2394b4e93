//! The `segq` binary on a real queue made by the library: every command, in text and in
//! JSON, on a closed queue and on one a writer has open.

mod cli_support;

use std::sync::atomic::{AtomicBool, Ordering};

use cli_support::*;
use segq::Queue;

#[test]
fn info_reports_offsets_segments_groups_and_a_clean_close() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let run = segq(["info", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let j = run.json();
    assert_eq!(j["first_offset"].as_u64(), Some(0));
    assert_eq!(j["next_offset"].as_u64(), Some(RECORDS));
    assert_eq!(j["format_version"].as_u64(), Some(1));
    assert_eq!(j["clean"].as_bool(), Some(true));
    assert_eq!(j["groups"], serde_json::json!(["audit", "billing"]));
    assert_eq!(j["segments"].as_u64(), Some(segment_files(tmp.path()).len() as u64));
    assert!(j["segments"].as_u64().unwrap() >= 3);

    let text = segq(["info", &arg(tmp.path())]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("next offset     103"), "{}", text.stdout);
    assert!(text.stdout.contains("state           clean"), "{}", text.stdout);
    assert!(text.stdout.contains("2 (audit, billing)"), "{}", text.stdout);
}

#[test]
fn segments_lists_each_file_with_its_offsets_and_index() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let run = segq(["segments", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let segs = run.json()["segments"].as_array().unwrap().clone();
    assert_eq!(segs.len(), segment_files(tmp.path()).len());
    let total: u64 = segs.iter().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(total, RECORDS);
    for pair in segs.windows(2) {
        assert_eq!(pair[0]["last_offset"].as_u64().unwrap() + 1, pair[1]["base"].as_u64().unwrap());
        assert_eq!(pair[0]["active"].as_bool(), Some(false));
        assert!(pair[0]["index_entries"].as_u64().unwrap() > 0);
    }
    let last = segs.last().unwrap();
    assert_eq!(last["active"].as_bool(), Some(true));
    assert_eq!(last["last_offset"].as_u64(), Some(RECORDS - 1));
    assert!(last["first_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);

    let text = segq(["segments", &arg(tmp.path())]);
    assert_eq!(text.code, 0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(lines[0].starts_with("FILE") && lines[0].contains("INDEX"), "{}", text.stdout);
    assert_eq!(lines.len(), segs.len() + 1);
    assert!(lines[1].contains("sealed") && lines.last().unwrap().contains("active"));
    // Columns line up: every row is as long as the header's column start for STATE.
    let state_col = lines[0].find("STATE").unwrap();
    assert!(
        lines[1..].iter().all(|l| &l[state_col..state_col + 6] == "sealed" || &l[state_col..state_col + 6] == "active")
    );
}

#[test]
fn dump_prints_records_from_an_offset_with_the_payload_as_asked() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let d = arg(tmp.path());
    let run = segq(["dump", &d, "--from", "27", "--limit", "5", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let records = run.json()["records"].as_array().unwrap().clone();
    let offsets: Vec<u64> = records.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [27, 28, 29, 30, 31], "crosses a segment boundary");
    for r in &records {
        let o = r["offset"].as_u64().unwrap();
        assert_eq!(r["payload"].as_str().unwrap(), payload(o));
        assert!(r["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }

    let hex = segq(["dump", &d, "--from", "101", "--json", "--payload", "hex"]).json();
    let recs = hex["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["payload"].as_str(), Some("62617463682062"), "\"batch b\" in hex");
    let len = segq(["dump", &d, "--from", "100", "--limit", "1", "--json", "--payload", "len"]).json();
    assert_eq!(len["records"][0]["len"].as_u64(), Some(7));
    assert!(len["records"][0].get("payload").is_none());

    let text = segq(["dump", &d, "--from", "99", "--limit", "2"]);
    assert_eq!(text.code, 0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", text.stdout);
    assert!(lines[0].contains("OFFSET") && lines[0].contains("PAYLOAD"));
    assert!(lines[1].trim_start().starts_with("99 ") && lines[1].contains(&payload(99)));
    assert!(lines[2].trim_end().ends_with("batch a"));
}

#[test]
fn dump_of_one_segment_file_shows_only_its_records() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let files = segment_files(tmp.path());
    let run = segq(["dump", &arg(&files[1]), "--json", "--payload", "none"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let j = run.json();
    let records = j["records"].as_array().unwrap();
    let base = base_of(&files[1]);
    let next = base_of(&files[2]);
    assert_eq!(records.len() as u64, next - base);
    assert_eq!(records[0]["offset"].as_u64(), Some(base));
}

#[test]
fn verify_passes_a_healthy_queue() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let run = segq(["verify", &arg(tmp.path()), "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(j["clean"].as_bool(), Some(true));
    assert_eq!(j["records"].as_u64(), Some(RECORDS));
    assert_eq!(j["groups"].as_u64(), Some(2));
    assert_eq!(j["findings"].as_array().unwrap().len(), 0);
    let text = segq(["verify", &arg(tmp.path())]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("no damage found"), "{}", text.stdout);
}

#[test]
fn groups_shows_floor_lag_leases_retries_and_dead_letters() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let j = segq(["groups", &arg(tmp.path()), "billing", "--json"]).json();
    assert_eq!(j["ack_floor"].as_u64(), Some(3));
    assert_eq!(j["next_delivery"].as_u64(), Some(6));
    assert_eq!(j["lag"].as_u64(), Some(RECORDS - 3 - 1));
    assert_eq!(j["leased"], serde_json::json!([{ "offset": 4, "attempts": 1 }]));
    assert_eq!(j["waiting"][0]["offset"].as_u64(), Some(3));
    assert_eq!(j["waiting"][0]["attempts"].as_u64(), Some(1));
    assert_eq!(j["dead_letters"], serde_json::json!([{ "offset": 5, "attempts": 2 }]));
    assert_eq!(j["max_attempts"].as_u64(), Some(2));

    let all = segq(["groups", &arg(tmp.path())]);
    assert_eq!(all.code, 0);
    let billing = all.stdout.lines().find(|l| l.starts_with("billing")).unwrap();
    let cols: Vec<&str> = billing.split_whitespace().collect();
    assert_eq!(cols[..7], ["billing", "3", "6", "99", "1", "1", "1"], "{}", all.stdout);
    let one = segq(["groups", &arg(tmp.path()), "billing"]);
    assert!(one.stdout.contains("dead letters:"), "{}", one.stdout);
    let missing = segq(["groups", &arg(tmp.path()), "nope"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("no consumer group named \"nope\""));
}

#[test]
fn read_commands_work_while_a_writer_appends() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let q = Queue::open(tmp.path(), small()).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // A failed assertion below must stop the writer too, or the scope waits for ever.
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                q.append(payload(i).as_bytes()).unwrap();
                if i.is_multiple_of(7) {
                    q.append_batch(&[b"one".as_slice(), b"two", b"three"]).unwrap();
                }
                i += 1;
            }
        });
        for _ in 0..5 {
            let v = segq(["verify", &arg(tmp.path()), "--json"]);
            assert_eq!(v.code, 0, "a live queue is not damaged:\n{}", v.stdout);
            let info = segq(["info", &arg(tmp.path()), "--json"]).json();
            assert_eq!(info["clean"].as_bool(), Some(false), "open, so not clean");
            assert!(info["next_offset"].as_u64().unwrap() >= RECORDS);
            let dump = segq(["dump", &arg(tmp.path()), "--from", "100", "--payload", "len", "--json"]);
            assert_eq!(dump.code, 0, "{}", dump.stderr);
        }
    });
    q.close().unwrap();
    let after = segq(["verify", &arg(tmp.path())]);
    assert_eq!(after.code, 0, "{}", after.stdout);
}

/// Sets the flag when dropped, on a panic too.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let _s = serial();
    let run = segq(["--help"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("Exit codes:") && run.stdout.contains("1  damage found"));
    let verify = segq(["verify", "--help"]);
    assert!(verify.stdout.contains("Exit codes:"));
    let usage = segq(["verify"]);
    assert_eq!(usage.code, 2, "a missing argument is a usage error");
}
