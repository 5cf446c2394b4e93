//! `GroupState` against a plain model that keeps one entry per offset and no timers: random
//! sequences of every op, lease extension, hand-out of due records, snapshot and restore
//! (with the log cut short or not) and truncation, checked after each step, and which of
//! the deliveries made still holds its lease ([`GroupState::holds`]). With the unit
//! tests' window of 8 slots and sweeps from 4 timers, spills, big skips and sweeps happen
//! all the time. `GROUP_STATE_SEEDS` sets how many sequences run (default 300).

use super::*;

/// Where one offset stands in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Leased(u32, Instant),
    Waiting(u32, Instant),
    Acked,
    Dead(u32),
}

#[derive(Clone, Debug)]
struct Model {
    states: BTreeMap<u64, M>,
    next: u64,
    dead: BTreeMap<u64, u32>,
    lost: u64,
    lease: Duration,
    /// Deliveries made so far, and which of them holds each leased offset.
    deliveries: u64,
    holder: BTreeMap<u64, u64>,
}

impl Model {
    fn new(lease: Duration) -> Model {
        Model {
            states: BTreeMap::new(),
            next: 0,
            dead: BTreeMap::new(),
            lost: 0,
            lease,
            deliveries: 0,
            holder: BTreeMap::new(),
        }
    }

    /// Whether the `id`-th delivery, of `offset`, still holds its lease.
    fn holds(&self, offset: u64, id: u64) -> bool {
        matches!(self.states.get(&offset), Some(M::Leased(..))) && self.holder.get(&offset) == Some(&id)
    }

    fn open(&self, offset: u64) -> Option<u32> {
        match self.states.get(&offset) {
            Some(&(M::Leased(a, _) | M::Waiting(a, _))) => Some(a),
            _ => None,
        }
    }

    /// Offsets from `next` up to `to` count as done: skipped on the way.
    fn skip_to(&mut self, to: u64) {
        for offset in self.next..to {
            self.states.insert(offset, M::Acked);
        }
    }

    fn apply(&mut self, op: Op, c: &Clock) {
        match op {
            Op::Deliver { offset, attempt } => {
                let leased = M::Leased(attempt, later(c.now(), self.lease));
                if offset >= self.next {
                    self.skip_to(offset);
                    self.states.insert(offset, leased);
                    self.next = offset + 1;
                } else if self.open(offset).is_some() {
                    self.states.insert(offset, leased);
                } else {
                    return;
                }
                self.deliveries += 1;
                self.holder.insert(offset, self.deliveries);
            }
            Op::Ack { offset } if offset < self.next => {
                self.states.insert(offset, M::Acked);
                self.dead.remove(&offset);
            }
            Op::Ack { .. } => {}
            Op::Nack { offset, at_ms } => {
                if let Some(a) = self.open(offset) {
                    self.states.insert(offset, M::Waiting(a, c.instant_of(at_ms)));
                }
            }
            Op::Dead { offset } => {
                if offset >= self.next {
                    self.skip_to(offset);
                    self.states.insert(offset, M::Dead(0));
                    self.dead.insert(offset, 0);
                    self.next = offset + 1;
                } else if let Some(a) = self.open(offset) {
                    self.states.insert(offset, M::Dead(a));
                    self.dead.insert(offset, a);
                }
            }
            Op::Redrive { offset } => {
                if self.dead.remove(&offset).is_some() {
                    self.states.insert(offset, M::Waiting(0, c.now()));
                }
            }
            Op::Seek { offset } => {
                self.states.retain(|&o, _| o < offset);
                for (o, s) in self.states.iter_mut() {
                    *s = self.dead.get(o).map_or(M::Acked, |&a| M::Dead(a));
                }
                self.dead.retain(|&o, _| o < offset);
                self.skip_to(offset);
                self.next = offset;
            }
            Op::Skip { offset } => {
                let open = self.states.range(..offset).filter(|(_, s)| matches!(s, M::Leased(..) | M::Waiting(..)));
                self.lost += open.count() as u64 + self.dead.range(..offset).count() as u64;
                self.lost += offset.saturating_sub(self.next);
                self.dead.retain(|&o, _| o >= offset);
                for (_, s) in self.states.range_mut(..offset) {
                    *s = M::Acked;
                }
                if offset > self.next {
                    self.skip_to(offset);
                    self.next = offset;
                }
            }
        }
    }

    /// Cuts the log short; as only an open does this, it ends every lease too.
    fn truncate(&mut self, next: u64) {
        if next < self.next {
            self.holder.clear();
            self.states.retain(|&o, _| o < next);
            self.dead.retain(|&o, _| o < next);
            self.next = next;
        }
    }

    /// A restart: every lease has ended.
    fn expire(&mut self, c: &Clock) {
        for s in self.states.values_mut() {
            if let M::Leased(a, _) = *s {
                *s = M::Waiting(a, c.now());
            }
        }
    }

    fn ack_floor(&self) -> u64 {
        let open = self.states.iter().find(|(_, s)| matches!(s, M::Leased(..) | M::Waiting(..)));
        open.map_or(self.next, |(&o, _)| o)
    }

    fn deadline(&self) -> Option<Instant> {
        let at = |s: &M| match *s {
            M::Leased(_, t) | M::Waiting(_, t) => Some(t),
            _ => None,
        };
        self.states.values().filter_map(at).min()
    }
}

/// An open slot as `(leased?, attempts, time)`; done or absent slots are `None` on both sides.
fn real(slot: Option<Slot>) -> Option<(bool, u32, Instant)> {
    match slot {
        Some(Slot::Leased { attempts, until }) => Some((true, attempts, until)),
        Some(Slot::Waiting { attempts, at }) => Some((false, attempts, at)),
        _ => None,
    }
}

fn modelled(state: Option<&M>) -> Option<(bool, u32, Instant)> {
    match state {
        Some(&M::Leased(a, t)) => Some((true, a, t)),
        Some(&M::Waiting(a, t)) => Some((false, a, t)),
        _ => None,
    }
}

/// Everything observable agrees, and the structures stay within their bounds. `peak` is
/// the highest next offset the sequence reached. `times` compares deadlines too (not
/// after a restore, which keeps whole milliseconds).
fn check(s: &mut GroupState, m: &Model, peak: u64, times: bool, context: &dyn Fn() -> String) {
    for offset in 0..m.next + 4 {
        let (got, want) = (real(s.slot(offset)), modelled(m.states.get(&offset)));
        if times {
            assert_eq!(got, want, "offset {offset}, {}", context());
        } else {
            let untimed = |v: Option<(bool, u32, Instant)>| v.map(|(leased, attempts, _)| (leased, attempts));
            assert_eq!(untimed(got), untimed(want), "offset {offset}, {}", context());
        }
    }
    assert_eq!((s.next(), s.ack_floor(), s.lost), (m.next, m.ack_floor(), m.lost), "{}", context());
    assert_eq!(s.dead_letters(), &m.dead, "{}", context());
    assert!(s.window.len() <= MAX_WINDOW, "{}", context());
    assert!(s.below.keys().all(|&o| o < s.floor), "{}", context());
    let open = |v: &Slot| matches!(v, Slot::Leased { .. } | Slot::Waiting { .. });
    assert!(s.below.values().all(open), "below holds only open slots, {}", context());
    if times {
        assert_eq!(s.next_deadline(), m.deadline(), "{}", context());
    }
    // Timers only grow by pushes that check the threshold; the threshold is at most twice
    // the open records there ever were (those are all a timer can be live for).
    assert!(s.leases.len() <= s.sweep_at + 1 && s.retries.len() <= s.sweep_at + 1, "timers, {}", context());
    assert!(s.sweep_at <= MIN_SWEEP.max(2 * peak as usize), "sweep threshold, {}", context());
}

/// One delivery as a consumer holds it, and as the model counts it.
#[derive(Clone, Copy, Debug)]
struct Made {
    offset: u64,
    attempt: u32,
    name: (u64, u64),
    id: u64,
}

/// Keeps the delivery `op` made, if it made one.
fn note_delivery(s: &GroupState, m: &Model, op: Op, made: &mut Vec<Made>) {
    if let Op::Deliver { offset, attempt } = op
        && m.holder.get(&offset) == Some(&m.deliveries)
        && made.last().is_none_or(|d| d.id != m.deliveries)
    {
        made.push(Made { offset, attempt, name: s.newest_delivery(), id: m.deliveries });
    }
}

/// A snapshot of `s` written and read back, for a log whose next offset is `limit`.
fn restored(s: &GroupState, c: &Clock, limit: u64) -> GroupState {
    crate::group::snapshot::Snapshot::of(s, 1, u32::MAX, c).restore(c, limit)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn group_state_matches_a_plain_model() {
    let seeds: u64 = std::env::var("GROUP_STATE_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let (t0, ms0) = (Instant::now(), 1_000_000u64);
    let clock = |elapsed: u64| Clock::at(t0 + Duration::from_millis(elapsed), ms0 + elapsed);
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let lease = Duration::from_millis(100);
        let (mut s, mut m) = (GroupState::new(0, lease), Model::new(lease));
        let mut steps: Vec<String> = Vec::new();
        let (mut elapsed, mut peak) = (0, 0);
        let mut made: Vec<Made> = Vec::new();
        for _ in 0..300 {
            elapsed += rng.below(4) * rng.below(30);
            let c = clock(elapsed);
            // Mostly an offset already delivered, sometimes one at or just past the end.
            let pick = |rng: &mut Rng, m: &Model| {
                if m.next == 0 || rng.below(10) == 0 { m.next + rng.below(3) } else { rng.below(m.next) }
            };
            let roll = rng.below(100);
            let op = match roll {
                0..30 => {
                    let far = if rng.below(40) == 0 { rng.below(40) } else { 0 };
                    let offset = if rng.below(3) == 0 { pick(&mut rng, &m) } else { m.next + far };
                    Some(Op::Deliver { offset, attempt: m.open(offset).map_or(1, |a| a + 1) })
                }
                30..55 => Some(Op::Ack { offset: pick(&mut rng, &m) }),
                55..65 => Some(Op::Nack { offset: pick(&mut rng, &m), at_ms: c.now_ms() + rng.below(300) }),
                65..72 => Some(Op::Dead { offset: pick(&mut rng, &m) }),
                72..77 => {
                    let dead: Vec<u64> = m.dead.keys().copied().collect();
                    let offset = match rng.below(2) {
                        0 if !dead.is_empty() => dead[rng.below(dead.len() as u64) as usize],
                        _ => pick(&mut rng, &m),
                    };
                    Some(Op::Redrive { offset })
                }
                77..79 => Some(Op::Seek { offset: pick(&mut rng, &m) }),
                79..82 => Some(Op::Skip { offset: pick(&mut rng, &m) }),
                _ => None,
            };
            if roll == 82 {
                // New settings: later deliveries take the new lease, shorter or longer.
                let lease = Duration::from_millis(1 + rng.below(400));
                s.set_lease(lease);
                m.lease = lease;
                steps.push(format!("lease {lease:?}"));
            } else if let Some(op) = op {
                s.apply(op, &c);
                m.apply(op, &c);
                note_delivery(&s, &m, op, &mut made);
                steps.push(format!("{op:?}"));
            } else if roll < 90 {
                let offset = pick(&mut rng, &m);
                let until = later(c.now(), Duration::from_millis(rng.below(500)));
                let held = m.open(offset).filter(|_| matches!(m.states[&offset], M::Leased(..)));
                assert_eq!(s.extend_lease(offset, until), held.is_some(), "seed {seed}: extend {offset}");
                if let Some(a) = held {
                    m.states.insert(offset, M::Leased(a, until));
                }
                steps.push(format!("extend {offset}"));
            } else if roll < 93 {
                // What `take_next` does: the earliest due record, delivered again.
                match s.due(&c) {
                    Some(due) => {
                        let earliest = m.deadline().expect("the model has a deadline");
                        let (_, attempts, at) = modelled(m.states.get(&due.offset)).expect("due is open");
                        assert_eq!((attempts, at), (due.attempts, earliest), "seed {seed}: {steps:?}");
                        assert!(at <= c.now());
                        let op = Op::Deliver { offset: due.offset, attempt: due.attempts + 1 };
                        s.apply(op, &c);
                        m.apply(op, &c);
                        note_delivery(&s, &m, op, &mut made);
                        steps.push(format!("due {op:?}"));
                    }
                    None => assert!(m.deadline().is_none_or(|t| t > c.now()), "seed {seed}: {steps:?}"),
                }
            } else if roll < 96 {
                // A restart: snapshot and restore, the log perhaps cut short by a crash.
                let limit = if rng.below(3) == 0 { rng.below(m.next + 1) } else { u64::MAX };
                let mut r = restored(&s, &c, limit);
                if limit < r.next() {
                    r.truncate(limit);
                }
                m.truncate(limit);
                m.expire(&c);
                let context = || format!("seed {seed}, restored for a log ending at {limit}: {steps:?}");
                check(&mut r, &m, peak, false, &context);
                // Due times went through whole milliseconds: take the restored ones.
                for (o, v) in m.states.iter_mut() {
                    if let (M::Waiting(a, _), Some(Slot::Waiting { at, .. })) = (*v, r.slot(*o)) {
                        *v = M::Waiting(a, at);
                    }
                }
                s = r;
                steps.push(format!("restore {limit}"));
            } else {
                let next = rng.below(m.next + 1);
                s.truncate(next);
                m.truncate(next);
                steps.push(format!("truncate {next}"));
            }
            peak = peak.max(m.next);
            check(&mut s, &m, peak, true, &|| format!("seed {seed}: {steps:?}"));
            // The newest deliveries and a few at random still hold their lease exactly
            // when the model says so.
            let picks = [made.len().checked_sub(1), made.len().checked_sub(2)].into_iter().flatten();
            let random = (0..3).filter(|_| !made.is_empty()).map(|_| rng.below(made.len() as u64) as usize);
            for d in picks.chain(random).map(|i| made[i]) {
                let want = m.holds(d.offset, d.id);
                assert_eq!(s.holds(d.offset, d.attempt, d.name), want, "seed {seed}: {d:?} after {steps:?}");
            }
        }
    }
}
