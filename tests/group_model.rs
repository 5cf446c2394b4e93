//! A consumer group behaves like a simple in-memory model through random sequences of
//! appends, polls, acks, nacks, lease extensions, redrives, seeks and reopens, one by one
//! and in batches, and through failed syncs of its files: refused calls change nothing,
//! and once the group has written its state again it goes on as the model says.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use segq::fault::{self, Fault, Point};
use segq::{Error, GroupOptions, Options, Queue, SyncPolicy};

const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
enum Step {
    Append(u8),
    Poll,
    /// `poll_batch` of up to this many.
    PollBatch(usize),
    Ack(usize),
    /// `ack_batch` of this many outstanding deliveries (from an index), one of them twice.
    AckBatch(usize, usize),
    /// `nack_batch` the same way, with no delay.
    NackBatch(usize, usize),
    Nack(usize),
    Redrive(usize),
    /// `extend_lease` of a delivered offset (from an index): by two hours, or ended (zero).
    Extend(usize, bool),
    Seek(u8),
    /// The next this many syncs of the group's files fail, the first of them in a flush.
    FailSyncs(u8),
    Reopen,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u8..4).prop_map(Step::Append),
        6 => Just(Step::Poll),
        3 => (0usize..5).prop_map(Step::PollBatch),
        4 => any::<usize>().prop_map(Step::Ack),
        2 => (any::<usize>(), 1usize..4).prop_map(|(i, n)| Step::AckBatch(i, n)),
        1 => (any::<usize>(), 1usize..4).prop_map(|(i, n)| Step::NackBatch(i, n)),
        2 => any::<usize>().prop_map(Step::Nack),
        1 => any::<usize>().prop_map(Step::Redrive),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, end)| Step::Extend(i, end)),
        1 => any::<u8>().prop_map(Step::Seek),
        1 => (1u8..4).prop_map(Step::FailSyncs),
        1 => Just(Step::Reopen),
        1 => Just(Step::Crash),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Leased(u32),
    /// Leased, but the lease was ended by `extend_lease(_, 0)`: due for delivery again,
    /// and still the holder's to ack, nack or extend until then.
    Expired(u32),
    Due(u32),
    Acked,
    Dead(u32),
}

/// What the group must look like: offsets below `next` were delivered (or skipped).
#[derive(Debug, Default)]
struct Model {
    records: u64,
    next: u64,
    states: BTreeMap<u64, State>,
}

impl Model {
    fn ack_floor(&self) -> u64 {
        let mut floor = self.next;
        for (&o, s) in &self.states {
            if matches!(s, State::Leased(_) | State::Expired(_) | State::Due(_)) {
                floor = floor.min(o);
            }
        }
        floor
    }

    fn dead(&self) -> Vec<(u64, u32)> {
        self.states
            .iter()
            .filter_map(|(&o, s)| if let State::Dead(a) = s { Some((o, a.to_owned())) } else { None })
            .collect()
    }

    /// A nack of `o`: due again, or dead once out of attempts; nothing if not leased.
    fn nacked(&mut self, o: u64) {
        if let Some(State::Leased(a) | State::Expired(a)) = self.states.get(&o).copied() {
            self.states.insert(o, if a >= MAX_ATTEMPTS { State::Dead(a) } else { State::Due(a) });
        }
    }

    fn restart(&mut self) {
        for s in self.states.values_mut() {
            if let State::Leased(a) | State::Expired(a) = *s {
                *s = if a >= MAX_ATTEMPTS { State::Dead(a) } else { State::Due(a) };
            }
        }
    }
}

fn open(dir: &std::path::Path) -> (Queue, segq::Group) {
    let q = Queue::open(dir, Options::default().segment_bytes(4096).sync(SyncPolicy::Never)).unwrap();
    let g =
        q.group_with("g", GroupOptions::default().lease(Duration::from_secs(3600)).max_attempts(MAX_ATTEMPTS)).unwrap();
    (q, g)
}

/// Removes up to `n` of the `outstanding` deliveries, picked from index `i`, and returns
/// them with the first one twice (a batch may name an offset twice).
fn take_some(outstanding: &mut Vec<u64>, i: usize, n: usize) -> Vec<u64> {
    let mut taken: Vec<u64> =
        (0..n.min(outstanding.len())).map(|_| outstanding.remove(i % outstanding.len())).collect();
    taken.push(taken[0]);
    taken
}

/// Offsets due for a retry.
fn due(m: &Model) -> Vec<u64> {
    let due = |s: &State| matches!(s, State::Due(a) | State::Expired(a) if *a < MAX_ATTEMPTS);
    m.states.iter().filter(|(_, s)| due(s)).map(|(&o, _)| o).collect()
}

/// Checks one delivery against the model and applies it.
fn delivered(m: &mut Model, outstanding: &mut Vec<u64>, d: &segq::Delivery) -> Result<(), TestCaseError> {
    let (o, due) = (d.offset(), due(m));
    let want = format!("r{o}");
    prop_assert_eq!(d.payload(), want.as_bytes());
    if due.is_empty() {
        prop_assert_eq!(o, m.next, "a new record comes in order");
        prop_assert_eq!(d.attempt(), 1);
        m.next += 1;
    } else {
        prop_assert!(due.contains(&o), "{o} delivered while {due:?} are due");
        let (State::Due(a) | State::Expired(a)) = m.states[&o] else { unreachable!() };
        prop_assert_eq!(d.attempt(), a + 1);
    }
    m.states.insert(o, State::Leased(d.attempt()));
    if !outstanding.contains(&o) {
        outstanding.push(o);
    }
    Ok(())
}

/// Checks that the model has nothing to deliver.
fn nothing_to_deliver(m: &Model) -> Result<(), TestCaseError> {
    let due = due(m);
    prop_assert!(due.is_empty(), "nothing delivered but {due:?} are due");
    prop_assert_eq!(m.next, m.records);
    Ok(())
}

/// What a call returned, given whether injected faults may still fail the group's syncs:
/// `None` if it was refused because the group could not write its state again (it then
/// changed nothing).
fn unless_refused<T: std::fmt::Debug>(result: segq::Result<T>, faulty: bool) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::Poisoned(why)) if faulty => {
            assert!(why.contains("writing the group's state again failed"), "{why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn check(g: &segq::Group, m: &Model, faulty: bool) {
    assert_eq!(g.ack_floor(), m.ack_floor(), "ack floor; model {m:?}");
    if let Some(dead) = unless_refused(g.dead_letters(), faulty) {
        let dead: Vec<_> = dead.iter().map(|d| (d.offset(), d.attempts())).collect();
        assert_eq!(dead, m.dead(), "dead letters");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

    #[test]
    fn group_matches_model(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, mut g) = open(dir.path());
        let groups = dir.path().join("groups");
        let mut m = Model::default();
        let mut outstanding: Vec<u64> = Vec::new();
        // Whether injected faults may still fail the group's syncs.
        let mut faulty = false;
        for step in steps {
            match step {
                Step::Append(n) => {
                    for _ in 0..n {
                        q.append(format!("r{}", m.records).as_bytes()).unwrap();
                        m.records += 1;
                    }
                }
                Step::Poll => match unless_refused(g.poll(Duration::ZERO), faulty) {
                    None => {}
                    Some(None) => nothing_to_deliver(&m)?,
                    Some(Some(d)) => delivered(&mut m, &mut outstanding, &d)?,
                },
                Step::PollBatch(max) => {
                    let Some(batch) = unless_refused(g.poll_batch(max, Duration::ZERO), faulty) else { continue };
                    prop_assert!(batch.len() <= max);
                    for d in &batch {
                        delivered(&mut m, &mut outstanding, d)?;
                    }
                    if batch.len() < max {
                        nothing_to_deliver(&m)?;
                    }
                }
                Step::Ack(i) if !outstanding.is_empty() => {
                    let o = outstanding.remove(i % outstanding.len());
                    if unless_refused(g.ack(o), faulty).is_none() {
                        outstanding.push(o);
                        continue;
                    }
                    m.states.insert(o, State::Acked);
                }
                Step::AckBatch(i, n) if !outstanding.is_empty() => {
                    let acked = take_some(&mut outstanding, i, n);
                    if unless_refused(g.ack_batch(&acked), faulty).is_none() {
                        outstanding.extend(&acked[..acked.len() - 1]);
                        continue;
                    }
                    for o in acked {
                        m.states.insert(o, State::Acked);
                    }
                }
                Step::NackBatch(i, n) if !outstanding.is_empty() => {
                    let nacked = take_some(&mut outstanding, i, n);
                    if unless_refused(g.nack_batch(&nacked, Duration::ZERO), faulty).is_none() {
                        outstanding.extend(&nacked[..nacked.len() - 1]);
                        continue;
                    }
                    for o in nacked {
                        m.nacked(o);
                    }
                }
                Step::Nack(i) if !outstanding.is_empty() => {
                    let o = outstanding.remove(i % outstanding.len());
                    if unless_refused(g.nack(o, Duration::ZERO), faulty).is_none() {
                        outstanding.push(o);
                        continue;
                    }
                    m.nacked(o);
                }
                Step::Redrive(i) => {
                    let dead = m.dead();
                    if !dead.is_empty() {
                        let (o, _) = dead[i % dead.len()];
                        if unless_refused(g.redrive(o), faulty).is_none() {
                            continue;
                        }
                        m.states.insert(o, State::Due(0));
                    }
                }
                Step::Extend(i, end) if m.next > 0 => {
                    let o = i as u64 % m.next;
                    let lease = if end { Duration::ZERO } else { Duration::from_secs(7200) };
                    let held = match m.states.get(&o) {
                        Some(&(State::Leased(a) | State::Expired(a))) => Some(a),
                        _ => None,
                    };
                    let Some(extended) = unless_refused(g.extend_lease(o, lease), faulty) else { continue };
                    prop_assert_eq!(extended, held.is_some(), "offset {}", o);
                    if let Some(a) = held {
                        // An ended last attempt is dead-lettered by the next look at the group.
                        let now = match (end, a >= MAX_ATTEMPTS) {
                            (false, _) => State::Leased(a),
                            (true, false) => State::Expired(a),
                            (true, true) => State::Dead(a),
                        };
                        m.states.insert(o, now);
                        if now == State::Dead(a) {
                            outstanding.retain(|&x| x != o);
                        }
                    }
                }
                Step::Seek(to) => {
                    let to = u64::from(to) % (m.records + 1);
                    if unless_refused(g.seek(to), faulty).is_none() {
                        continue;
                    }
                    m.states.retain(|&o, s| o < to && matches!(s, State::Dead(_)));
                    m.next = to;
                    outstanding.clear();
                }
                Step::FailSyncs(n) => {
                    fault::inject(Fault::new(&groups, Point::Sync).times(n.into()));
                    match g.flush() {
                        // Nothing to sync: the faults wait for a later sync.
                        Ok(()) => {}
                        Err(Error::Io(_)) => {}
                        // A failure not yet repaired: the flush repairs it first.
                        Err(Error::Poisoned(_)) if faulty => {}
                        other => panic!("{other:?}"),
                    }
                    faulty = true;
                }
                Step::Reopen | Step::Crash => {
                    // Whatever failed is repaired by the close or the open.
                    fault::clear(&groups);
                    faulty = false;
                    if matches!(step, Step::Reopen) {
                        drop(g);
                        q.close().unwrap();
                    } else {
                        drop(g);
                        q.simulate_crash();
                    }
                    (q, g) = open(dir.path());
                    m.restart();
                    outstanding.clear();
                }
                _ => {}
            }
            check(&g, &m, faulty);
        }
        fault::clear(&groups);
    }
}
