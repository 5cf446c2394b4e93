//! Random sequences of appends, batches, reads, iteration, clean reopens and crash reopens
//! agree with a plain `Vec` of payloads: nothing whose append returned is ever lost, changed
//! or reordered, over tiny segments and records bigger than a segment.

mod common;

use proptest::prelude::*;
use segq::{Options, Queue, Record, SyncPolicy};

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Batch(Vec<usize>),
    /// Reads the offset this number picks from `0..len + 3`, so past the end too.
    Read(u64),
    IterFrom(u64),
    Flush,
    /// `close`, then `open`.
    Reopen,
    /// `simulate_crash`, then `open`: the page cache survives, as after a process crash.
    CrashReopen,
}

fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 0..600usize,
        // Bigger than a segment: gets a segment of its own.
        1 => 4000..9000usize,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => payload_len().prop_map(Op::Append),
        3 => prop::collection::vec(payload_len(), 0..6).prop_map(Op::Batch),
        4 => any::<u64>().prop_map(Op::Read),
        2 => any::<u64>().prop_map(Op::IterFrom),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        2 => Just(Op::CrashReopen),
    ]
}

fn options(sync: SyncPolicy) -> Options {
    Options::default().segment_bytes(4096).index_interval_bytes(64).max_record_bytes(1 << 16).sync(sync)
}

/// The payload of the `seq`-th record appended in a run.
fn make_payload(seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (seq * 131 + j * 7 + 1) as u8).collect()
}

fn check_all(q: &Queue, model: &[Vec<u8>]) -> Result<(), TestCaseError> {
    prop_assert_eq!(q.first_offset(), 0);
    prop_assert_eq!(q.next_offset(), model.len() as u64);
    let mut n = 0;
    for (i, rec) in q.iter_from(0).enumerate() {
        let rec = rec.map_err(|e| TestCaseError::fail(format!("iterating: {e}")))?;
        prop_assert_eq!(rec.offset(), i as u64);
        prop_assert!(rec.payload() == model[i].as_slice(), "payload of {}", i);
        n += 1;
    }
    prop_assert_eq!(n, model.len());
    Ok(())
}

fn run(sync: SyncPolicy, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(sync);
    let mut q = Queue::open(dir.path(), opts.clone()).unwrap();
    let mut model: Vec<Vec<u8>> = Vec::new();
    // Records read earlier, which must stay valid through reopens and crashes.
    let mut held: Vec<Record> = Vec::new();
    for op in ops {
        match op {
            Op::Append(len) => {
                let p = make_payload(model.len(), *len);
                prop_assert_eq!(q.append(&p).unwrap(), model.len() as u64);
                model.push(p);
            }
            Op::Batch(lens) => {
                let first = model.len();
                let payloads: Vec<Vec<u8>> =
                    lens.iter().enumerate().map(|(i, &len)| make_payload(first + i, len)).collect();
                let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
                let range = q.append_batch(&refs).unwrap();
                prop_assert_eq!(range, first as u64..(first + lens.len()) as u64);
                model.extend(payloads);
            }
            Op::Read(pick) => {
                let off = pick % (model.len() as u64 + 3);
                let rec = q.read(off).unwrap();
                match model.get(off as usize) {
                    Some(want) => {
                        let rec = rec.expect("a stored record reads as None");
                        prop_assert_eq!(rec.offset(), off);
                        prop_assert!(rec.payload() == want.as_slice(), "payload of {}", off);
                        if held.len() < 8 {
                            held.push(rec);
                        }
                    }
                    None => prop_assert!(rec.is_none(), "read past the end at {}", off),
                }
            }
            Op::IterFrom(pick) => {
                let from = pick % (model.len() as u64 + 3);
                let got: Vec<Record> = q.iter_from(from).map(Result::unwrap).collect();
                let want = model.get(from as usize..).unwrap_or_default();
                prop_assert_eq!(got.len(), want.len());
                for (i, (rec, want)) in got.iter().zip(want).enumerate() {
                    prop_assert_eq!(rec.offset(), from + i as u64);
                    prop_assert!(rec.payload() == want.as_slice());
                }
            }
            Op::Flush => {
                q.flush().unwrap();
                prop_assert_eq!(q.durable_offset(), model.len() as u64);
            }
            Op::Reopen => {
                q.close().unwrap();
                q = Queue::open(dir.path(), opts.clone()).unwrap();
                prop_assert!(q.recovery().clean);
                check_all(&q, &model)?;
            }
            Op::CrashReopen => {
                q.simulate_crash();
                q = Queue::open(dir.path(), opts.clone()).unwrap();
                check_all(&q, &model)?;
            }
        }
        prop_assert_eq!(q.next_offset(), model.len() as u64);
        for rec in &held {
            prop_assert!(rec.payload() == model[rec.offset() as usize].as_slice());
        }
    }
    q.close().unwrap();
    let q = Queue::open(dir.path(), opts).unwrap();
    check_all(&q, &model)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_queue_matches_the_model_without_syncs(ops in prop::collection::vec(op(), 1..60)) {
        run(SyncPolicy::Never, &ops)?;
    }

    #[test]
    fn the_queue_matches_the_model_with_a_sync_per_append(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(SyncPolicy::Always, &ops)?;
    }
}

#[test]
fn crash_reopen_after_a_record_bigger_than_a_segment_keeps_it() {
    run(
        SyncPolicy::Never,
        &[
            Op::Append(10),
            Op::Append(5000),
            Op::CrashReopen,
            Op::Append(0),
            Op::Batch(vec![5000, 3]),
            Op::CrashReopen,
            Op::Reopen,
        ],
    )
    .unwrap();
}
