//! `segq repair --truncate-at-first-damage`: refuses while a writer has the queue open,
//! only tells without `--yes`, and with `--yes` leaves a queue the library opens, keeping
//! every byte it cut in side files.

mod cli_support;

use std::fs;

use cli_support::*;
use segq::Queue;

/// A queue whose second segment has a damaged record; returns its directory, the damaged
/// file, the record's position and the offset of the last record before it.
fn damaged_queue() -> (tempfile::TempDir, std::path::PathBuf, usize, u64) {
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let file = segment_files(tmp.path())[1].clone();
    let mut bytes = fs::read(&file).unwrap();
    let at = record_positions(&bytes)[4];
    bytes[at + 50] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    let base = base_of(&file);
    (tmp, file, at, base + 3)
}

#[test]
fn repair_refuses_while_a_writer_has_the_queue_open() {
    let _s = serial();
    let (tmp, file, _, _) = damaged_queue();
    let before = fs::read(&file).unwrap();
    let q = Queue::open(tmp.path(), small()).unwrap();
    for args in [vec!["repair", "--truncate-at-first-damage"], vec!["repair", "--truncate-at-first-damage", "--yes"]] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        args.insert(1, arg(tmp.path()));
        let run = segq(&args);
        assert_eq!(run.code, 2, "{}", run.stdout);
        assert!(run.stderr.contains("locked") && run.stderr.contains("writer"), "{}", run.stderr);
    }
    assert_eq!(fs::read(&file).unwrap(), before, "nothing was changed");
    q.close().unwrap();
}

#[test]
fn repair_without_yes_tells_what_it_would_cut_and_changes_nothing() {
    let _s = serial();
    let (tmp, file, at, _) = damaged_queue();
    let listing = |d: &std::path::Path| {
        let mut v: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let before = listing(tmp.path());
    let run = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage"]);
    assert_eq!(run.code, 1, "damage is there and was not repaired: {}", run.stderr);
    assert!(run.stdout.contains(&format!("would cut {} at byte {at}", file.display())), "{}", run.stdout);
    assert!(run.stdout.contains("--yes"), "{}", run.stdout);
    assert_eq!(listing(tmp.path()), before);
    let json = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--json"]).json();
    assert_eq!(json["applied"].as_bool(), Some(false));
    assert_eq!(json["plan"]["cut"]["position"].as_u64(), Some(at as u64));
    assert_eq!(json["plan"]["moves"].as_array().unwrap().len(), segment_files(tmp.path()).len() - 2);
    assert_eq!(segq(["repair", &arg(tmp.path())]).code, 2, "the kind of repair must be named");
}

#[test]
fn repair_with_yes_cuts_keeps_the_bytes_aside_and_the_library_reopens() {
    let _s = serial();
    let (tmp, file, at, last_kept) = damaged_queue();
    let original = fs::read(&file).unwrap();
    let later: Vec<_> = segment_files(tmp.path())[2..].to_vec();
    let later_bytes: Vec<Vec<u8>> = later.iter().map(|f| fs::read(f).unwrap()).collect();
    let run = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(&format!("cut {} at byte {at}", file.display())), "{}", run.stdout);

    assert_eq!(fs::read(&file).unwrap(), original[..at], "cut at the damaged record");
    let side = format!("{}.cut-{at}", file.display());
    assert_eq!(fs::read(&side).unwrap(), original[at..], "the cut bytes are kept");
    for (f, bytes) in later.iter().zip(&later_bytes) {
        assert!(!f.exists());
        assert_eq!(&fs::read(format!("{}.cut-0", f.display())).unwrap(), bytes, "later segments are kept aside");
    }
    assert!(!tmp.path().join("checkpoint").exists());

    let q = Queue::open(tmp.path(), small()).unwrap();
    assert_eq!(q.next_offset(), last_kept + 1);
    for o in 0..=last_kept {
        assert_eq!(q.read(o).unwrap().unwrap().payload(), payload(o).as_bytes());
    }
    assert_eq!(q.append(b"after the repair").unwrap(), last_kept + 1);
    q.group("billing").unwrap();
    q.close().unwrap();
    let verify = segq(["verify", &arg(tmp.path())]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
}

#[test]
fn repair_of_a_healthy_queue_does_nothing() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let run = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--yes"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("nothing to repair"), "{}", run.stdout);
    assert_eq!(segq(["verify", &arg(tmp.path())]).code, 0);
}

#[test]
fn repair_moves_aside_a_segment_whose_header_is_damaged() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let files = segment_files(tmp.path());
    let mut bytes = fs::read(&files[2]).unwrap();
    bytes[0] = b'X';
    fs::write(&files[2], &bytes).unwrap();
    let run = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--yes", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let next = run.json()["plan"]["next_offset"].as_u64().unwrap();
    let base2 = base_of(&files[2]);
    assert_eq!(next, base2);
    let q = Queue::open(tmp.path(), small()).unwrap();
    assert_eq!(q.next_offset(), base2);
    q.close().unwrap();
}

/// The oldest segment replaced by a link to a file that is gone (its disk was removed, say):
/// `repair` sets the link aside and nothing else, as if retention had deleted the segment,
/// and the library reopens at the next segment with every later record and the groups'
/// progress. (It moved every segment aside: the queue restarted at offset 0 and would
/// have handed out every offset again.)
#[test]
fn repair_sets_aside_a_dangling_link_in_place_of_the_oldest_segment_and_keeps_the_rest() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_queue(d);
    let files = segment_files(d);
    let second = base_of(&files[1]);
    fs::remove_file(&files[0]).unwrap();
    std::os::unix::fs::symlink(d.join("gone-disk/segment.log"), &files[0]).unwrap();
    assert_eq!(segq(["verify", &arg(d)]).code, 1);
    let done = segq(["repair", "--truncate-at-first-damage", "--yes", &arg(d)]);
    assert_eq!(done.code, 0, "{}{}", done.stdout, done.stderr);
    assert!(!done.stdout.contains(" cut "), "{}", done.stdout);
    assert_eq!(segment_files(d).len(), files.len() - 1, "only the link was set aside");
    let q = Queue::open(d, small()).unwrap();
    assert_eq!((q.first_offset(), q.next_offset()), (second, RECORDS));
    for i in second..100 {
        assert_eq!(q.read(i).unwrap().unwrap().payload(), payload(i).as_bytes());
    }
    let audit = q.group("audit").unwrap();
    assert_eq!(audit.poll(std::time::Duration::ZERO).unwrap().map(|d| d.offset()), Some(second));
    drop(audit);
    q.close().unwrap();
    assert_eq!(segq(["verify", &arg(d)]).code, 0);
}

/// A folder in place of a sealed segment's index: the library reads past it (the index is
/// rebuilt in memory), `verify` reports it, and `repair --yes` moves it aside, keeping what
/// it holds, rather than fail at every run ("Is a directory") as it did until session 19.
/// The queue then opens with its index stored again and nothing to report.
#[test]
fn repair_moves_aside_a_folder_in_place_of_an_index() {
    let _s = serial();
    let tmp = tempfile::tempdir().unwrap();
    make_queue(tmp.path());
    let segment = segment_files(tmp.path())[0].clone();
    let index = segment.with_extension("index");
    fs::remove_file(&index).unwrap();
    fs::create_dir(&index).unwrap();
    fs::write(index.join("notes"), b"someone's").unwrap();
    assert_eq!(segq(["verify", &arg(tmp.path())]).code, 1);
    let run = segq(["repair", &arg(tmp.path()), "--truncate-at-first-damage", "--yes", "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let aside = std::path::PathBuf::from(format!("{}.cut-0", index.display()));
    assert_eq!(fs::read(aside.join("notes")).unwrap(), b"someone's");
    assert_eq!(segq(["verify", &arg(tmp.path())]).code, 0);
    let q = Queue::open(tmp.path(), small()).unwrap();
    let offsets: Vec<u64> = q.iter_from(0).map(|r| r.unwrap().offset()).collect();
    assert_eq!(offsets, (0..q.next_offset()).collect::<Vec<_>>());
    q.close().unwrap();
    assert!(index.is_file(), "the index was not stored again");
}
