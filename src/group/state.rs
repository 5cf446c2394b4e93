//! The state of one consumer group as a pure state machine: every change is an [`Op`],
//! applied the same way live and when the journal is replayed at open.
//!
//! Offsets below `floor` are done (acked or dead), except the open ones kept in `below`:
//! redriven dead letters, and records left open while the window filled up. Offsets in
//! `floor..next` have been delivered at least once and each has a [`Slot`] in `window`.
//! Offsets from `next` on have never been delivered.

use std::cell::OnceCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where one delivered record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Handed to a consumer until `until`.
    Leased {
        attempts: u32,
        until: Instant,
    },
    /// To be delivered again at `at`.
    Waiting {
        attempts: u32,
        at: Instant,
    },
    Acked,
    Dead {
        attempts: u32,
    },
}

/// One change of group state: what the journal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `offset` is handed out for the `attempt`-th time.
    Deliver {
        offset: u64,
        attempt: u32,
    },
    Ack {
        offset: u64,
    },
    /// Deliver `offset` again at wall-clock time `at_ms`.
    Nack {
        offset: u64,
        at_ms: u64,
    },
    /// `offset` is dead-lettered (with the attempts made so far).
    Dead {
        offset: u64,
    },
    /// A dead letter becomes deliverable again with a fresh attempt count.
    Redrive {
        offset: u64,
    },
    /// Everything restarts at `offset`.
    Seek {
        offset: u64,
    },
    /// Records below `offset` were deleted by retention: those not yet done are lost.
    Skip {
        offset: u64,
    },
}

impl Op {
    /// This change for a log whose next offset is `limit`: deliveries and dead letters past
    /// the log's end are dropped (`None`), seeks and skips past it go to the end.
    pub fn within(self, limit: u64) -> Option<Op> {
        match self {
            Op::Deliver { offset, .. } | Op::Dead { offset } if offset >= limit => None,
            Op::Seek { offset } if offset > limit => Some(Op::Seek { offset: limit }),
            Op::Skip { offset } if offset > limit => Some(Op::Skip { offset: limit }),
            op => Some(op),
        }
    }
}

/// `at + by`, or as far as an `Instant` goes: a delay that long never ends in practice.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 86400))
}

/// "Now" on both clocks: the monotonic one for timers, the wall clock stored on disk. Each
/// is read the first time it is asked for and then stays fixed, so one change sees one
/// moment throughout, and a change that needs no time (an ack, a first delivery's search)
/// reads no clock: a precise read costs about 25 ns, a large part of a poll + ack.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clock {
    now: OnceCell<Instant>,
    now_ms: OnceCell<u64>,
}

impl Clock {
    /// The present moment, read when first needed.
    pub fn lazy() -> Clock {
        Clock::default()
    }

    /// A moment fixed in advance.
    #[cfg(test)]
    pub fn at(now: Instant, now_ms: u64) -> Clock {
        Clock { now: OnceCell::from(now), now_ms: OnceCell::from(now_ms) }
    }

    /// The monotonic time.
    pub fn now(&self) -> Instant {
        *self.now.get_or_init(Instant::now)
    }

    /// The wall-clock time, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        *self.now_ms.get_or_init(crate::record::now_ms)
    }

    /// The instant of wall-clock time `at_ms`. A time that has passed stays as far in the
    /// past (or as far as the monotonic clock reaches back), so that records due already
    /// keep the order they became due in.
    pub fn instant_of(&self, at_ms: u64) -> Instant {
        let now_ms = self.now_ms();
        if at_ms < now_ms {
            let ago = Duration::from_millis(now_ms - at_ms);
            return self.now().checked_sub(ago).unwrap_or(self.now());
        }
        later(self.now(), Duration::from_millis(at_ms - now_ms))
    }

    /// The wall-clock time of `at`, saturating: a nack "for ever" is due at `u64::MAX`, and
    /// the wall clock may have moved on further than the monotonic one since. A moment
    /// passed stays as far in the past.
    pub fn ms_of(&self, at: Instant) -> u64 {
        let now = self.now();
        if at < now {
            let ago = u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX);
            return self.now_ms().saturating_sub(ago);
        }
        let ahead = u64::try_from(at.duration_since(now).as_millis()).unwrap_or(u64::MAX);
        self.now_ms().saturating_add(ahead)
    }
}

/// The most slots `window` keeps. Past it, the oldest open records move to `below` and the
/// floor goes on: a record left open for long (a long lease, a long nack delay) while
/// millions of later ones are acked costs one entry, not a slot for each record after it.
/// 2^16 slots are 1.5 MiB, and the dense window stays what in-order work touches. Unit
/// tests use 8, so that every path through a spill is taken within a few operations.
const MAX_WINDOW: usize = if cfg!(test) { 8 } else { 1 << 16 };

/// The timer entries a group keeps at least before it sweeps out stale ones (4 in unit
/// tests, for the same reason).
const MIN_SWEEP: usize = if cfg!(test) { 4 } else { 1024 };

/// A record due for another delivery (or for dead-lettering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    pub offset: u64,
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupState {
    floor: u64,
    next: u64,
    window: VecDeque<Slot>,
    below: BTreeMap<u64, Slot>,
    dead: BTreeMap<u64, u32>,
    /// Lease deadlines in delivery order; entries whose slot moved on are skipped.
    leases: VecDeque<(Instant, u64)>,
    /// Retry times of waiting records, and deadlines of extended leases; entries whose slot
    /// moved on are skipped.
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The timers of leased or waiting records that have had `max_attempts` deliveries,
    /// also in `leases` or `retries`: when one passes, its record is to be dead-lettered.
    /// Kept apart so that finding those ([`GroupState::next_expired_final`]) costs nothing
    /// for the records merely due for another delivery, however many wait.
    finals: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The deliveries after which a record is dead-lettered (`u32::MAX` until set).
    max_attempts: u32,
    /// `leases`, `retries` or `finals` may hold this many entries before the stale ones are
    /// swept out.
    sweep_at: usize,
    /// How long a delivery is leased; see [`GroupState::set_lease`].
    lease: Duration,
    /// Records deleted by retention before this group was done with them.
    pub lost: u64,
    /// Tells the deliveries made since the last seek (or since this state was built) from
    /// all others: see [`GroupState::holds`].
    epoch: u64,
    /// Deliveries made in this epoch: the newest one's serial number.
    delivered: u64,
    /// Redriven records still open, with the serial of the last delivery made before their
    /// redrive: their attempt numbers started over then.
    redriven: BTreeMap<u64, u64>,
}

/// An epoch no other group state in this process has had.
fn fresh_epoch() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl GroupState {
    /// A group that has delivered nothing and starts at `offset`.
    pub fn new(offset: u64, lease: Duration) -> GroupState {
        GroupState {
            floor: offset,
            next: offset,
            window: VecDeque::new(),
            below: BTreeMap::new(),
            dead: BTreeMap::new(),
            leases: VecDeque::new(),
            retries: BinaryHeap::new(),
            finals: BinaryHeap::new(),
            max_attempts: u32::MAX,
            sweep_at: MIN_SWEEP,
            lease,
            lost: 0,
            epoch: fresh_epoch(),
            delivered: 0,
            redriven: BTreeMap::new(),
        }
    }

    /// Names the newest delivery among all this process makes: its epoch and serial.
    pub fn newest_delivery(&self) -> (u64, u64) {
        (self.epoch, self.delivered)
    }

    /// Whether the delivery of `offset` numbered `attempt`, named `(epoch, serial)` by
    /// [`GroupState::newest_delivery`] when it was made, still holds the record's lease:
    /// nothing has acked, nacked, dead-lettered or delivered the record again since.
    ///
    /// A record's attempt numbers only grow, so the slot's count names the one delivery
    /// holding it, but for two breaks: a seek starts every count over, and takes a new
    /// epoch (as a new state, a reopened group, does), which no earlier delivery matches; a
    /// redrive starts one record's count over, and the deliveries of it made before are
    /// told by their serial.
    pub fn holds(&self, offset: u64, attempt: u32, (epoch, serial): (u64, u64)) -> bool {
        epoch == self.epoch
            && self.redriven.get(&offset).is_none_or(|&before| serial > before)
            && matches!(self.slot(offset), Some(Slot::Leased { attempts, .. }) if attempts == attempt)
    }

    /// First offset never delivered.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// First offset that is neither acked nor dead-lettered.
    pub fn ack_floor(&self) -> u64 {
        self.below.keys().next().map_or(self.floor, |&o| o.min(self.floor))
    }

    /// Offsets below this are done, but for the redriven ones.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn slot(&self, offset: u64) -> Option<Slot> {
        if offset >= self.floor {
            self.window.get((offset - self.floor) as usize).copied()
        } else {
            self.below.get(&offset).copied()
        }
    }

    fn slot_mut(&mut self, offset: u64) -> Option<&mut Slot> {
        if offset >= self.floor {
            self.window.get_mut((offset - self.floor) as usize)
        } else {
            self.below.get_mut(&offset)
        }
    }

    /// The lowest offset this group still needs kept: its ack floor, or its oldest dead
    /// letter if that is lower.
    pub fn oldest_needed(&self) -> u64 {
        self.dead.keys().next().map_or(self.ack_floor(), |&o| o.min(self.ack_floor()))
    }

    /// Dead letters with the deliveries each had, by offset.
    pub fn dead_letters(&self) -> &BTreeMap<u64, u32> {
        &self.dead
    }

    /// Every slot that is not trivially done, for a snapshot: `floor..next` and `below`.
    pub fn exceptions(&self) -> impl Iterator<Item = (u64, Slot)> + '_ {
        let window = self.window.iter().enumerate().map(|(i, s)| (self.floor + i as u64, *s));
        self.below.iter().map(|(&o, &s)| (o, s)).chain(window)
    }

    /// Whether a record is leased, its lease running or run out but not yet taken by
    /// another poll: its consumer may still ack, extend or nack it (see `Group::is_current`).
    pub fn any_leased(&self) -> bool {
        self.exceptions().any(|(_, slot)| matches!(slot, Slot::Leased { .. }))
    }

    /// Records leased at `now`, and records waiting for a retry (a lease that has run out
    /// counts as waiting), for reports.
    pub fn counts(&self, now: Instant) -> (usize, usize) {
        let (mut leased, mut waiting) = (0, 0);
        for (_, slot) in self.exceptions() {
            match slot {
                Slot::Leased { until, .. } if until > now => leased += 1,
                Slot::Leased { .. } | Slot::Waiting { .. } => waiting += 1,
                _ => {}
            }
        }
        (leased, waiting)
    }

    /// Rebuilds a state from a snapshot's parts.
    /// Delivered offsets in `floor..next` that `exceptions` does not list are acked. `limit`
    /// (the log's next offset) caps `next`, so a snapshot can never make the group allocate
    /// slots for records that do not exist.
    pub fn restore(
        floor: u64,
        next: u64,
        exceptions: impl IntoIterator<Item = (u64, Slot)>,
        lease: Duration,
        clock: &Clock,
        limit: u64,
    ) -> GroupState {
        let floor = floor.min(limit);
        let end = next.clamp(floor, limit.max(floor));
        // Entries past the log's end name records that do not exist and are dropped.
        let exceptions: Vec<(u64, Slot)> = exceptions.into_iter().filter(|&(offset, _)| offset < end).collect();
        // The window starts at the first record still to settle: the acked and dead ones
        // before it are what `advance` would drop at once, and a snapshot whose floor lies
        // far below its next offset must not cost a slot for each of them. Nor does it span
        // more than `MAX_WINDOW`: open records before that are kept in `below`.
        let open =
            |&&(offset, slot): &&(u64, Slot)| offset >= floor && !matches!(slot, Slot::Acked | Slot::Dead { .. });
        let first_open = exceptions.iter().filter(open).map(|&(offset, _)| offset).min().unwrap_or(end);
        let start = first_open.max(end.saturating_sub(MAX_WINDOW as u64));
        let mut state = GroupState::new(start, lease);
        state.next = end;
        state.window = (start..end).map(|_| Slot::Acked).collect();
        for (offset, slot) in exceptions {
            if let Slot::Dead { attempts } = slot {
                state.dead.insert(offset, attempts);
            }
            if offset >= state.floor {
                if let Some(s) = state.slot_mut(offset) {
                    *s = slot;
                }
            } else if !matches!(slot, Slot::Acked | Slot::Dead { .. }) {
                state.below.insert(offset, slot);
            }
        }
        state.expire_leases(clock);
        state.advance();
        state
    }

    /// After a restart no consumer holds a lease: every leased record is due now, and the
    /// timers are rebuilt.
    pub fn expire_leases(&mut self, clock: &Clock) {
        self.leases.clear();
        self.retries.clear();
        self.finals.clear();
        let floor = self.floor;
        let all = self
            .below
            .iter_mut()
            .map(|(&o, s)| (o, s))
            .chain(self.window.iter_mut().enumerate().map(|(i, s)| (floor + i as u64, s)));
        for (offset, slot) in all {
            let (attempts, at) = match *slot {
                Slot::Leased { attempts, .. } => {
                    *slot = Slot::Waiting { attempts, at: clock.now() };
                    (attempts, clock.now())
                }
                Slot::Waiting { attempts, at } => (attempts, at),
                _ => continue,
            };
            self.retries.push(Reverse((at, offset)));
            if attempts >= self.max_attempts {
                self.finals.push(Reverse((at, offset)));
            }
        }
        self.sweep_at = MIN_SWEEP.max(2 * self.retries.len());
    }

    /// Applies one change. Ops are validated by the caller; one that does not fit the
    /// state (possible only in a damaged journal) changes nothing.
    pub fn apply(&mut self, op: Op, clock: &Clock) {
        match op {
            Op::Deliver { offset, attempt } => {
                let until = later(clock.now(), self.lease);
                let leased = Slot::Leased { attempts: attempt, until };
                if offset >= self.next {
                    self.skip_to(offset);
                    self.window.push_back(leased);
                    self.next = offset + 1;
                    // One at a time as the window grows, so that no single ack later spills
                    // a million records at once.
                    if self.window.len() > MAX_WINDOW {
                        self.spill();
                    }
                } else if let Some(slot) =
                    self.slot_mut(offset).filter(|s| matches!(s, Slot::Leased { .. } | Slot::Waiting { .. }))
                {
                    *slot = leased;
                } else {
                    return;
                }
                self.delivered += 1;
                self.leases.push_back((until, offset));
                self.note_final(until, offset, attempt);
                if self.leases.len() > self.sweep_at {
                    self.sweep_timers();
                }
            }
            Op::Ack { offset } => {
                if !self.redriven.is_empty() {
                    self.redriven.remove(&offset);
                }
                if offset < self.floor {
                    self.below.remove(&offset);
                    self.dead.remove(&offset);
                } else if let Some(slot) = self.slot_mut(offset) {
                    *slot = Slot::Acked;
                    self.dead.remove(&offset);
                    self.advance();
                }
            }
            Op::Nack { offset, at_ms } => {
                let at = clock.instant_of(at_ms);
                if let Some(slot) = self.slot_mut(offset)
                    && let Slot::Leased { attempts, .. } | Slot::Waiting { attempts, .. } = *slot
                {
                    *slot = Slot::Waiting { attempts, at };
                    self.retries.push(Reverse((at, offset)));
                    self.note_final(at, offset, attempts);
                    if self.retries.len() > self.sweep_at {
                        self.sweep_timers();
                    }
                }
            }
            Op::Dead { offset } => {
                if offset >= self.next {
                    self.skip_to(offset);
                    self.window.push_back(Slot::Dead { attempts: 0 });
                    self.next = offset + 1;
                    self.dead.insert(offset, 0);
                } else if let Some(slot) = self.slot_mut(offset)
                    && let Slot::Leased { attempts, .. } | Slot::Waiting { attempts, .. } = *slot
                {
                    *slot = Slot::Dead { attempts };
                    self.dead.insert(offset, attempts);
                    if offset < self.floor {
                        self.below.remove(&offset);
                    }
                }
                self.advance();
            }
            Op::Redrive { offset } => {
                if self.dead.remove(&offset).is_some() {
                    // Its attempts count from 0 again.
                    self.redriven.insert(offset, self.delivered);
                    let waiting = Slot::Waiting { attempts: 0, at: clock.now() };
                    match self.slot_mut(offset) {
                        Some(slot) => *slot = waiting,
                        None => {
                            self.below.insert(offset, waiting);
                        }
                    }
                    self.retries.push(Reverse((clock.now(), offset)));
                    if self.retries.len() > self.sweep_at {
                        self.sweep_timers();
                    }
                }
            }
            Op::Skip { offset } => {
                let open_below = |s: &Slot| matches!(s, Slot::Leased { .. } | Slot::Waiting { .. });
                let mut lost = self.below.range(..offset).filter(|(_, s)| open_below(s)).count() as u64;
                lost += self.dead.range(..offset).count() as u64;
                let in_window = offset.min(self.next).saturating_sub(self.floor) as usize;
                lost += self.window.iter().take(in_window).filter(|s| open_below(s)).count() as u64;
                lost += offset.saturating_sub(self.next);
                self.lost += lost;
                self.below.retain(|&o, _| o >= offset);
                self.dead.retain(|&o, _| o >= offset);
                self.redriven.retain(|&o, _| o >= offset);
                if offset >= self.next {
                    self.window.clear();
                    self.floor = offset;
                    self.next = offset;
                } else if offset > self.floor {
                    self.window.drain(..in_window);
                    self.floor = offset;
                }
                self.advance();
            }
            Op::Seek { offset } => {
                self.floor = offset;
                self.next = offset;
                self.window.clear();
                self.below.clear();
                self.leases.clear();
                self.retries.clear();
                self.finals.clear();
                self.sweep_at = MIN_SWEEP;
                self.dead.retain(|&o, _| o < offset);
                self.redriven.clear();
                self.epoch = fresh_epoch();
                self.delivered = 0;
            }
        }
    }

    /// How long a delivery is leased.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Leases later deliveries for `lease`. `leases` is in deadline order only because every
    /// lease is as long: a shorter one would end before those already queued, and wait
    /// behind them. Those then go to the heap, which takes any order.
    pub fn set_lease(&mut self, lease: Duration) {
        if lease < self.lease {
            self.retries.extend(self.leases.drain(..).map(Reverse));
            if self.retries.len() > self.sweep_at {
                self.sweep_timers();
            }
        }
        self.lease = lease;
    }

    /// Dead-letters records after `max_attempts` deliveries from now on: see
    /// [`GroupState::next_expired_final`]. A new limit looks at every open record once.
    pub fn set_max_attempts(&mut self, max_attempts: u32) {
        if max_attempts == self.max_attempts {
            return;
        }
        self.max_attempts = max_attempts;
        let finals = self.exceptions().filter_map(|(offset, slot)| match slot {
            Slot::Leased { attempts, until: at } | Slot::Waiting { attempts, at } if attempts >= max_attempts => {
                Some(Reverse((at, offset)))
            }
            _ => None,
        });
        self.finals = finals.collect();
    }

    /// Notes the timer of a record that has had `attempts` deliveries, if that is the limit.
    fn note_final(&mut self, at: Instant, offset: u64, attempts: u32) {
        if attempts >= self.max_attempts {
            self.finals.push(Reverse((at, offset)));
            if self.finals.len() > self.sweep_at {
                self.sweep_timers();
            }
        }
    }

    /// Moves the lease of a leased record to end at `until`; false if `offset` is not
    /// leased. Not an [`Op`]: leases are not journaled, since none survives a restart. The
    /// new deadline can be out of delivery order, so its timer goes in the heap, which
    /// takes any order; the FIFO's entry goes stale.
    pub fn extend_lease(&mut self, offset: u64, until: Instant) -> bool {
        let Some(Slot::Leased { until: old, attempts }) = self.slot_mut(offset) else {
            return false;
        };
        *old = until;
        let attempts = *attempts;
        self.retries.push(Reverse((until, offset)));
        self.note_final(until, offset, attempts);
        if self.retries.len() > self.sweep_at {
            self.sweep_timers();
        }
        true
    }

    /// Forgets every delivery at or past `next`: the log ends there (after a machine crash
    /// cut its unsynced tail), so those offsets will be new records.
    pub fn truncate(&mut self, next: u64) {
        if next >= self.next {
            return;
        }
        // Their attempts count from 1 again: a new epoch. It ends every lease, but only an
        // open truncates, before any delivery.
        self.epoch = fresh_epoch();
        self.delivered = 0;
        self.redriven.clear();
        if next <= self.floor {
            self.window.clear();
            self.floor = next;
        } else {
            self.window.truncate((next - self.floor) as usize);
        }
        self.next = next;
        self.below.retain(|&o, _| o < next);
        self.dead.retain(|&o, _| o < next);
    }

    /// A leased or waiting record that is due at `now` but has had `max_attempts`
    /// deliveries: it is to be dead-lettered. Its timer stays until then (dead-lettering
    /// makes it stale): a change that fails leaves it to the next look. Stale timers are
    /// dropped on the way; records due for another delivery are never looked at.
    pub fn next_expired_final(&mut self, now: Instant) -> Option<u64> {
        while let Some(&Reverse((at, offset))) = self.finals.peek() {
            if at > now {
                return None;
            }
            let attempts = match self.slot(offset) {
                Some(Slot::Leased { attempts, until }) if until == at => attempts,
                Some(Slot::Waiting { attempts, at: due }) if due == at => attempts,
                _ => 0,
            };
            if attempts >= self.max_attempts {
                return Some(offset);
            }
            self.finals.pop();
        }
        None
    }

    /// Moves `next` up to `offset`, counting the skipped offsets as done.
    fn skip_to(&mut self, offset: u64) {
        // Delivering in order skips nothing, and the floor is already past every done slot.
        if self.next >= offset {
            return;
        }
        let gap = offset - self.next;
        if gap > (MAX_WINDOW - self.window.len().min(MAX_WINDOW)) as u64 {
            // The skipped slots alone would overfill the window: its open records move to
            // `below`, and the window starts over at `offset`.
            for (i, slot) in self.window.drain(..).enumerate() {
                if matches!(slot, Slot::Leased { .. } | Slot::Waiting { .. }) {
                    self.below.insert(self.floor + i as u64, slot);
                }
            }
            self.floor = offset;
            self.next = offset;
            return;
        }
        self.window.extend((0..gap).map(|_| Slot::Acked));
        self.next = offset;
        self.advance();
    }

    /// Moves the floor past done slots, and past open ones (into `below`) while the window
    /// holds more than `MAX_WINDOW` slots.
    fn advance(&mut self) {
        self.drop_done();
        if self.window.len() > MAX_WINDOW {
            self.spill();
        }
        // Drop lease timers whose slot has moved on, so the queue stays short.
        while let Some(&(until, offset)) = self.leases.front() {
            if self.timer_is_live(until, offset) {
                break;
            }
            self.leases.pop_front();
        }
    }

    /// Moves the floor past the done slots at the front of the window.
    fn drop_done(&mut self) {
        while let Some(Slot::Acked | Slot::Dead { .. }) = self.window.front() {
            self.window.pop_front();
            self.floor += 1;
        }
    }

    /// Moves the oldest slots out of an overfull window, keeping the open ones in `below`.
    #[cold]
    fn spill(&mut self) {
        while self.window.len() > MAX_WINDOW {
            if let Some(slot @ (Slot::Leased { .. } | Slot::Waiting { .. })) = self.window.pop_front() {
                self.below.insert(self.floor, slot);
            }
            self.floor += 1;
            self.drop_done();
        }
    }

    /// Drops the timer entries whose slot moved on. Stale entries leave the queues only
    /// when they reach the front, and a lease still running there (a consumer holding a
    /// record for an hour) would keep every later one, acked or not: 5 M acks behind it
    /// were 120 MB of timers. Sweeping whenever the entries have doubled since the last
    /// sweep keeps them within twice the open records, at O(1) amortized per change.
    fn sweep_timers(&mut self) {
        // A live entry matches its slot's time, so two live entries for one offset are the
        // same entry pushed twice (a nack repeated within one millisecond): one is kept.
        let mut seen = HashSet::new();
        let mut leases = std::mem::take(&mut self.leases);
        leases.retain(|&(at, offset)| self.timer_is_live(at, offset) && seen.insert(offset));
        seen.clear();
        let mut retries = std::mem::take(&mut self.retries);
        retries.retain(|&Reverse((at, offset))| self.timer_is_live(at, offset) && seen.insert(offset));
        seen.clear();
        let mut finals = std::mem::take(&mut self.finals);
        finals.retain(|&Reverse((at, offset))| self.timer_is_live(at, offset) && seen.insert(offset));
        self.sweep_at = MIN_SWEEP.max(2 * leases.len().max(retries.len()).max(finals.len()));
        leases.shrink_to(self.sweep_at);
        retries.shrink_to(self.sweep_at);
        finals.shrink_to(self.sweep_at);
        (self.leases, self.retries, self.finals) = (leases, retries, finals);
    }

    /// Whether a timer entry still belongs to its slot (else the slot moved on since).
    fn timer_is_live(&self, at: Instant, offset: u64) -> bool {
        match self.slot(offset) {
            Some(Slot::Leased { until, .. }) => until == at,
            Some(Slot::Waiting { at: due, .. }) => due == at,
            _ => false,
        }
    }

    /// The earliest moment a leased or waiting record becomes due, dropping stale timers.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(at, offset)) = self.leases.front() {
            if self.timer_is_live(at, offset) {
                break;
            }
            self.leases.pop_front();
        }
        while let Some(&Reverse((at, offset))) = self.retries.peek() {
            if self.timer_is_live(at, offset) {
                break;
            }
            self.retries.pop();
        }
        let lease = self.leases.front().map(|&(at, _)| at);
        let retry = self.retries.peek().map(|&Reverse((at, _))| at);
        lease.into_iter().chain(retry).min()
    }

    /// A record whose lease or retry delay has passed, earliest first. Reads the clock only
    /// when some record has a deadline.
    pub fn due(&mut self, clock: &Clock) -> Option<Due> {
        let at = self.next_deadline().filter(|&at| at <= clock.now())?;
        let offset = match self.leases.front() {
            Some(&(t, o)) if t == at => o,
            _ => self.retries.peek().map(|&Reverse((_, o))| o)?,
        };
        match self.slot(offset)? {
            Slot::Leased { attempts, .. } | Slot::Waiting { attempts, .. } => Some(Due { offset, attempts }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock::at(Instant::now(), crate::record::now_ms())
    }

    fn later(c: &Clock, ms: u64) -> Clock {
        Clock::at(c.now() + Duration::from_millis(ms), c.now_ms() + ms)
    }

    /// A nack "for ever" (`Duration::MAX`) is due at `u64::MAX` ms. Written back to disk by
    /// a later snapshot, when the wall clock has moved on further than the monotonic one, it
    /// must stay there: it used to overflow (a panic in debug builds, a due time wrapped to
    /// the past in release ones).
    #[test]
    fn a_due_time_at_the_end_of_time_stays_there_when_the_clocks_drift() {
        let c = clock();
        let at = c.instant_of(u64::MAX);
        let drifted = Clock::at(c.now() + Duration::from_millis(1), c.now_ms() + 5);
        assert_eq!(drifted.ms_of(at), u64::MAX);
        assert_eq!(c.ms_of(at), u64::MAX);
        // A time passed stays as far in the past, both ways: retries already due when a
        // group is written and read again keep their order.
        assert_eq!(later(&c, 10).ms_of(c.now()), c.now_ms());
        let t = later(&c, 100);
        assert_eq!(t.ms_of(t.instant_of(c.now_ms() + 40)), c.now_ms() + 40);
        assert!(t.instant_of(c.now_ms() + 40) < t.instant_of(c.now_ms() + 60));
    }

    /// A snapshot whose floor lies billions of offsets below its next offset, with nothing
    /// in between to settle, costs no slot for them: a hostile snapshot used to make the
    /// group (and `segq groups`) allocate 120 GB and abort.
    #[test]
    fn restoring_a_wide_snapshot_allocates_only_what_is_still_to_settle() {
        let c = clock();
        let lease = Duration::from_secs(30);
        let s = GroupState::restore(0, 5_000_000_001, [], lease, &c, 5_000_000_001);
        assert_eq!((s.floor, s.next, s.window.len()), (5_000_000_001, 5_000_000_001, 0));
        // Acked and dead records before the first leased one: it is where the window starts.
        let leased = Slot::Leased { attempts: 1, until: c.now() };
        let exceptions = [(3, Slot::Dead { attempts: 5 }), (4_000_000_000, leased)];
        let s = GroupState::restore(0, 4_000_000_010, exceptions, lease, &c, u64::MAX);
        assert_eq!((s.ack_floor(), s.next), (4_000_000_000, 4_000_000_010));
        assert!(s.window.len() <= 10.min(MAX_WINDOW));
        assert!(s.dead.contains_key(&3));
        assert!(matches!(s.slot(4_000_000_000), Some(Slot::Waiting { attempts: 1, .. })), "due again after a restart");
    }

    /// The slot of `offset` as the plain model below keeps it: done offsets under the floor
    /// have no slot in `GroupState`, so both sides call them done.
    fn view(slot: Option<Slot>) -> Option<Slot> {
        match slot {
            Some(Slot::Acked | Slot::Dead { .. }) | None => None,
            open => open,
        }
    }

    /// A record left open (leased for long, or nacked far ahead) while many later ones are
    /// acked used to cost one slot for each of them: 5 M acks behind one stuck record grew
    /// the group to 235 MB. The window now stops at `MAX_WINDOW` slots and the open records
    /// before it move to `below`. A plain map of every offset checks that no record's
    /// state changes on the way, through acks, nacks, redeliveries, dead letters, a
    /// snapshot and its restore.
    #[test]
    fn records_left_open_behind_a_full_window_keep_their_state_and_cost_one_entry_each() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        let mut model: BTreeMap<u64, Slot> = BTreeMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let total = 200_000;
        for offset in 0..total {
            let op = Op::Deliver { offset, attempt: 1 };
            s.apply(op, &c);
            model.insert(offset, Slot::Leased { attempts: 1, until: later(&c, 30_000).now() });
            // Most records are acked at once; a few stay open, are nacked, die, or are
            // settled later at random.
            let (op, slot) = match random(1000) {
                0..=2 => continue,
                3 => (
                    Op::Nack { offset, at_ms: c.now_ms() + 60_000 },
                    Slot::Waiting { attempts: 1, at: later(&c, 60_000).now() },
                ),
                4 => (Op::Dead { offset }, Slot::Dead { attempts: 1 }),
                5 => {
                    let old = random(offset + 1);
                    match model.get(&old) {
                        Some(&Slot::Leased { attempts, .. } | &Slot::Waiting { attempts, .. }) => {
                            let leased = Slot::Leased { attempts: attempts + 1, until: later(&c, 30_000).now() };
                            (Op::Deliver { offset: old, attempt: attempts + 1 }, leased)
                        }
                        _ => continue,
                    }
                }
                6 => {
                    let old = random(offset + 1);
                    (Op::Ack { offset: old }, Slot::Acked)
                }
                _ => (Op::Ack { offset }, Slot::Acked),
            };
            let target = match op {
                Op::Deliver { offset, .. } | Op::Ack { offset } | Op::Nack { offset, .. } | Op::Dead { offset } => {
                    offset
                }
                _ => unreachable!(),
            };
            s.apply(op, &c);
            model.insert(target, slot);
            if let Op::Ack { .. } = op {
                assert!(s.window.len() <= MAX_WINDOW, "the window stays bounded after an ack");
            }
        }
        let check = |s: &GroupState, model: &BTreeMap<u64, Slot>, restored: bool| {
            for (&offset, &slot) in model {
                let expected = match view(Some(slot)) {
                    Some(Slot::Leased { attempts, .. }) if restored => Some(Slot::Waiting { attempts, at: c.now() }),
                    open => open,
                };
                assert_eq!(view(s.slot(offset)), expected, "offset {offset}");
            }
            let open = model.iter().find(|(_, slot)| view(Some(**slot)).is_some()).map(|(&o, _)| o);
            assert_eq!(s.ack_floor(), open.unwrap_or(total));
            let dead: Vec<u64> =
                model.iter().filter(|(_, s)| matches!(s, Slot::Dead { .. })).map(|(&o, _)| o).collect();
            assert_eq!(s.dead_letters().keys().copied().collect::<Vec<_>>(), dead);
            let open_count = model.values().filter(|slot| view(Some(**slot)).is_some()).count();
            assert!(s.below.len() <= open_count, "below holds only open records");
            assert!(s.window.len() <= MAX_WINDOW);
        };
        assert!(s.below.len() > 10, "records were left open past the window: {}", s.below.len());
        check(&s, &model, false);
        let r = crate::group::snapshot::Snapshot::of(&s, 1, 5, &c).restore(&c, u64::MAX);
        check(&r, &model, true);
        // Settling every open record brings the floor to the end.
        let open: Vec<u64> = model.iter().filter(|(_, slot)| view(Some(**slot)).is_some()).map(|(&o, _)| o).collect();
        for offset in open {
            s.apply(Op::Ack { offset }, &c);
        }
        assert_eq!((s.ack_floor(), s.below.len()), (total, 0));
    }

    /// Timers of settled records behind one that stays open are swept out: they used to
    /// stay queued behind its lease (5 M acks: 120 MB), or behind its retry time.
    #[test]
    fn timers_of_settled_records_do_not_pile_up_behind_a_long_lease_or_delay() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(3600));
        s.apply(Op::Deliver { offset: 0, attempt: 1 }, &c);
        for offset in 1..200_000 {
            s.apply(Op::Deliver { offset, attempt: 1 }, &c);
            if offset % 2 == 0 {
                // Nacked far ahead, then acked before it is due: its retry timer is stale.
                s.apply(Op::Nack { offset, at_ms: c.now_ms() + 86_400_000 }, &c);
            }
            s.apply(Op::Ack { offset }, &c);
            assert!(s.leases.len() + s.retries.len() <= 2 * MIN_SWEEP + 2, "at {offset}");
        }
        s.apply(Op::Nack { offset: 0, at_ms: c.now_ms() + 10 }, &c);
        assert_eq!(s.due(&later(&c, 9)), None);
        assert_eq!(s.due(&later(&c, 10)), Some(Due { offset: 0, attempts: 1 }));
        s.apply(Op::Deliver { offset: 0, attempt: 2 }, &later(&c, 10));
        assert_eq!(s.next_deadline(), Some(later(&c, 3_600_010).now()), "the live lease's timer is kept");
    }

    /// An extended lease's timer lives in the heap: it stays live through sweeps, while the
    /// lease's first timer in the FIFO goes stale.
    #[test]
    fn an_extended_lease_keeps_its_own_timer_through_sweeps() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        s.apply(Op::Deliver { offset: 0, attempt: 1 }, &c);
        assert!(s.extend_lease(0, later(&c, 3_600_000).now()));
        for offset in 1..10_000 {
            s.apply(Op::Deliver { offset, attempt: 1 }, &c);
            s.apply(Op::Ack { offset }, &c);
        }
        assert!(s.leases.len() + s.retries.len() <= 2 * MIN_SWEEP + 2);
        assert_eq!(s.next_deadline(), Some(later(&c, 3_600_000).now()));
        assert_eq!(s.due(&later(&c, 3_599_999)), None);
        assert_eq!(s.due(&later(&c, 3_600_000)), Some(Due { offset: 0, attempts: 1 }));
        s.apply(Op::Ack { offset: 0 }, &c);
        assert!(!s.extend_lease(0, c.now()), "an acked record has no lease");
    }

    /// Deliveries with none settled spill the window one record at a time as it grows,
    /// rather than all at once at the first ack.
    #[test]
    fn a_window_of_open_records_spills_as_it_grows() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        let total = MAX_WINDOW as u64 + 1000;
        for offset in 0..total {
            s.apply(Op::Deliver { offset, attempt: 1 }, &c);
            assert!(s.window.len() <= MAX_WINDOW);
        }
        assert_eq!((s.below.len(), s.ack_floor(), s.next()), (1000, 0, total));
        for offset in (0..total).rev() {
            s.apply(Op::Ack { offset }, &c);
        }
        assert_eq!((s.below.len(), s.window.len(), s.ack_floor()), (0, 0, total));
    }

    /// Deliveries that skip far ahead (a damaged journal, a dead-lettered offset past a
    /// gap) with a record open behind them do not fill the window one slot per offset.
    #[test]
    fn a_delivery_far_ahead_of_an_open_record_does_not_fill_the_window() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        s.apply(Op::Deliver { offset: 0, attempt: 1 }, &c);
        s.apply(Op::Deliver { offset: 1 << 40, attempt: 1 }, &c);
        assert_eq!((s.window.len(), s.ack_floor(), s.next()), (1, 0, (1 << 40) + 1));
        s.apply(Op::Dead { offset: 1 << 41 }, &c);
        assert_eq!(s.window.len(), 0);
        assert!(matches!(s.slot(0), Some(Slot::Leased { attempts: 1, .. })));
        assert!(matches!(s.slot(1 << 40), Some(Slot::Leased { attempts: 1, .. })));
        s.apply(Op::Ack { offset: 0 }, &c);
        s.apply(Op::Ack { offset: 1 << 40 }, &c);
        assert_eq!(s.ack_floor(), (1 << 41) + 1, "the dead letter does not hold the floor");
        // A short gap still fills in as acked slots behind an open record.
        let short = MAX_WINDOW as u64 / 2;
        s.apply(Op::Deliver { offset: (1 << 41) + 1, attempt: 1 }, &c);
        s.apply(Op::Deliver { offset: (1 << 41) + 1 + short, attempt: 1 }, &c);
        assert_eq!((s.window.len() as u64, s.ack_floor()), (short + 1, (1 << 41) + 1));
    }

    #[test]
    fn acks_in_any_order_advance_the_floor_past_contiguous_done_slots() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        for o in 0..4 {
            s.apply(Op::Deliver { offset: o, attempt: 1 }, &c);
        }
        s.apply(Op::Ack { offset: 2 }, &c);
        s.apply(Op::Ack { offset: 1 }, &c);
        assert_eq!(s.ack_floor(), 0);
        s.apply(Op::Ack { offset: 0 }, &c);
        assert_eq!(s.ack_floor(), 3);
        assert_eq!(s.next(), 4);
    }

    /// Finding the records to dead-letter looks only at timers of records that have had
    /// their last delivery: a backlog of records merely due again costs nothing. (Every
    /// `stats`, `ack_floor`, `dead_letters` and `redrive` walked all open records whenever
    /// any deadline had passed: redriving N dead letters was quadratic, found by a scale
    /// review.)
    #[test]
    fn records_to_dead_letter_are_found_without_looking_at_those_due_again() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_millis(100));
        s.set_max_attempts(3);
        for offset in 0..10_000 {
            s.apply(Op::Deliver { offset, attempt: 1 }, &c);
            s.apply(Op::Nack { offset, at_ms: c.now_ms() }, &c);
        }
        s.apply(Op::Deliver { offset: 10_000, attempt: 3 }, &c);
        s.apply(Op::Deliver { offset: 10_001, attempt: 3 }, &c);
        s.apply(Op::Nack { offset: 10_001, at_ms: c.now_ms() + 50 }, &c);
        // Two leases and a nack: only the records at their last delivery have final timers.
        assert_eq!(s.finals.len(), 3);
        assert_eq!(s.next_expired_final(later(&c, 49).now()), None);
        assert_eq!(s.next_expired_final(later(&c, 50).now()), Some(10_001));
        s.apply(Op::Dead { offset: 10_001 }, &later(&c, 50));
        assert_eq!(s.next_expired_final(later(&c, 99).now()), None);
        assert_eq!(s.next_expired_final(later(&c, 100).now()), Some(10_000));
        s.apply(Op::Dead { offset: 10_000 }, &later(&c, 100));
        assert_eq!(s.next_expired_final(later(&c, 1000).now()), None);
        assert_eq!(s.dead_letters().len(), 2);
        // A lower limit makes records already delivered that often final at once.
        s.apply(Op::Deliver { offset: 0, attempt: 2 }, &c);
        assert_eq!(s.next_expired_final(later(&c, 1000).now()), None);
        s.set_max_attempts(2);
        assert_eq!(s.next_expired_final(later(&c, 99).now()), None);
        assert_eq!(s.next_expired_final(later(&c, 100).now()), Some(0));
        // Found again until it is dead-lettered (a change that failed is tried again).
        assert_eq!(s.next_expired_final(later(&c, 100).now()), Some(0));
        s.apply(Op::Dead { offset: 0 }, &later(&c, 100));
        // An extended final lease ends later; acked records' timers are stale.
        s.apply(Op::Deliver { offset: 1, attempt: 2 }, &c);
        assert!(s.extend_lease(1, later(&c, 500).now()));
        s.apply(Op::Deliver { offset: 2, attempt: 2 }, &c);
        s.apply(Op::Ack { offset: 2 }, &c);
        assert_eq!(s.next_expired_final(later(&c, 499).now()), None);
        assert_eq!(s.next_expired_final(later(&c, 500).now()), Some(1));
    }

    /// Final timers of settled records are swept out like the others.
    #[test]
    fn final_timers_of_settled_records_do_not_pile_up() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(3600));
        s.set_max_attempts(1);
        s.apply(Op::Deliver { offset: 0, attempt: 1 }, &c);
        for offset in 1..50_000 {
            s.apply(Op::Deliver { offset, attempt: 1 }, &c);
            s.apply(Op::Ack { offset }, &c);
            assert!(s.finals.len() <= 2 * MIN_SWEEP + 2, "at {offset}");
        }
        assert_eq!(s.next_expired_final(later(&c, 3_600_000).now()), Some(0));
    }

    #[test]
    fn an_expired_lease_is_due_with_its_attempt_count() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_millis(100));
        s.apply(Op::Deliver { offset: 0, attempt: 1 }, &c);
        assert_eq!(s.due(&c), None);
        assert_eq!(s.due(&later(&c, 100)), Some(Due { offset: 0, attempts: 1 }));
        s.apply(Op::Deliver { offset: 0, attempt: 2 }, &later(&c, 100));
        assert_eq!(s.due(&later(&c, 150)), None);
        assert_eq!(s.slot(0), Some(Slot::Leased { attempts: 2, until: later(&c, 200).now() }));
    }

    #[test]
    fn dead_letters_do_not_hold_the_floor_and_redrive_brings_them_back() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(1));
        s.apply(Op::Deliver { offset: 0, attempt: 3 }, &c);
        s.apply(Op::Deliver { offset: 1, attempt: 1 }, &c);
        s.apply(Op::Dead { offset: 0 }, &c);
        s.apply(Op::Ack { offset: 1 }, &c);
        assert_eq!(s.ack_floor(), 2);
        assert_eq!(s.dead_letters().get(&0), Some(&3));
        s.apply(Op::Redrive { offset: 0 }, &c);
        assert!(s.dead_letters().is_empty());
        assert_eq!(s.ack_floor(), 0);
        assert_eq!(s.due(&c), Some(Due { offset: 0, attempts: 0 }));
        s.apply(Op::Deliver { offset: 0, attempt: 1 }, &c);
        s.apply(Op::Ack { offset: 0 }, &c);
        assert_eq!(s.ack_floor(), 2);
    }

    #[test]
    fn nack_delays_the_retry() {
        let c = clock();
        let mut s = GroupState::new(5, Duration::from_secs(30));
        s.apply(Op::Deliver { offset: 5, attempt: 1 }, &c);
        s.apply(Op::Nack { offset: 5, at_ms: c.now_ms() + 50 }, &c);
        assert_eq!(s.due(&later(&c, 49)), None);
        assert_eq!(s.due(&later(&c, 50)), Some(Due { offset: 5, attempts: 1 }));
    }

    #[test]
    fn seek_restarts_delivery_and_forgets_later_dead_letters() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        for o in 0..3 {
            s.apply(Op::Deliver { offset: o, attempt: 1 }, &c);
            s.apply(Op::Dead { offset: o }, &c);
        }
        s.apply(Op::Seek { offset: 1 }, &c);
        assert_eq!((s.ack_floor(), s.next()), (1, 1));
        assert_eq!(s.dead_letters().keys().copied().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn skip_counts_what_retention_took_before_it_was_done() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        for o in 0..4 {
            s.apply(Op::Deliver { offset: o, attempt: 1 }, &c);
        }
        s.apply(Op::Ack { offset: 1 }, &c);
        s.apply(Op::Dead { offset: 2 }, &c);
        // 0 leased (lost), 1 acked, 2 dead (lost), 3 leased (kept), 4..6 never delivered (lost).
        s.apply(Op::Skip { offset: 6 }, &c);
        assert_eq!(s.lost, 5);
        assert_eq!((s.ack_floor(), s.next()), (6, 6));
        let mut t = GroupState::new(0, Duration::from_secs(30));
        for o in 0..4 {
            t.apply(Op::Deliver { offset: o, attempt: 1 }, &c);
        }
        t.apply(Op::Ack { offset: 0 }, &c);
        t.apply(Op::Skip { offset: 2 }, &c);
        assert_eq!((t.lost, t.ack_floor(), t.next()), (1, 2, 4));
    }

    #[test]
    fn restore_turns_leases_into_immediate_retries() {
        let c = clock();
        let mut s = GroupState::new(0, Duration::from_secs(30));
        s.apply(Op::Deliver { offset: 0, attempt: 2 }, &c);
        s.apply(Op::Deliver { offset: 1, attempt: 1 }, &c);
        s.apply(Op::Ack { offset: 1 }, &c);
        let exceptions: Vec<_> = s.exceptions().collect();
        let mut r = GroupState::restore(s.floor(), s.next(), exceptions, s.lease(), &c, u64::MAX);
        assert_eq!((r.ack_floor(), r.next()), (0, 2));
        assert_eq!(r.due(&c), Some(Due { offset: 0, attempts: 2 }));
    }
}
