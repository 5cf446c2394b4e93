//! Durability: group commit for appenders that wait for a sync, and the background flusher
//! of [`crate::SyncPolicy::Interval`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
// Loom's under `cfg(loom)`, std's and rustix's otherwise: see the module.
use crate::primitives::{self, AtomicBool, AtomicU32, AtomicU64, Instant, futex, yield_now};

/// Lets many threads that each need "everything up to offset N is durable" share syncs.
///
/// The first waiter that finds no sync in flight becomes the leader: it syncs everything
/// appended so far without holding any lock, publishes the new durable offset and wakes the
/// others. Waiters whose offset it covered return; the rest elect the next leader. While one
/// sync runs, the appends that arrive pile up and are covered together by the next.
///
/// When the last sync released several threads, the next leader first sleeps until as many
/// callers have come back, or for half as long as that sync took, whichever is first: with
/// more appenders than cores, the threads a sync wakes take turns to run, and a leader that
/// synced at once would cover only the first few of them. Waiting half a sync's time at
/// most bounds what a thread that stopped appending costs the rest. A lone appender never
/// waits. The caller whose arrival completes the gathering syncs in the sleeping leader's
/// stead (and wakes it to wait as the others do): waking the leader first put its wake-up,
/// on CPUs busy with the threads the last sync released, between the last arrival and the
/// sync.
///
/// Waiters sleep on futexes rather than on a condition variable: a sync wakes them all, and
/// with a mutex each would queue for it again on waking, one after the other. With
/// [`GroupCommit::busy_wait`], while the sync in flight should end within [`MAX_YIELD`], a
/// waiter yields the CPU in a loop instead of sleeping: waking a sleeping thread costs the
/// waker a system call and an interrupt to the CPU that will run it (a VM exit on virtual
/// machines), and on few cores the woken threads then preempt the waker. With 16 appenders
/// on 2 cores that was ~70 µs of each ~180 µs cycle. A slower sync, or one that overruns,
/// lets the waiters sleep.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// Every offset below this is durable.
    durable: AtomicU64,
    /// Bumped when a sync ends, well or not: waiters sleep until it changes.
    syncs: AtomicU32,
    leader: AtomicBool,
    /// Calls of `wait_for` that found their offset not yet durable (wrapping).
    arrivals: AtomicU32,
    /// While a leader gathers: the `arrivals` it waits for; 0 otherwise.
    gathering: AtomicU32,
    /// Touched only by the thread that holds the leader's office (the leader, or the call
    /// that took its gathering over).
    history: primitives::Mutex<History>,
    /// When the leader in office should be done, in nanoseconds since `epoch`; 0 if none.
    due: AtomicU64,
    epoch: Instant,
    /// Whether waiters yield rather than sleep while the leader should be done soon.
    busy_wait: bool,
    /// Waits that yielded until their sync ended, for tests.
    #[cfg(test)]
    yielded: AtomicU64,
    /// Syncs led by the call that completed a gathering, for tests.
    #[cfg(test)]
    taken_over: AtomicU64,
}

#[derive(Debug, Default)]
struct History {
    /// `arrivals` when the last sync started: it covered all of those callers.
    synced_arrivals: u32,
    /// Callers the last sync covered that the one before had not.
    last_batch: u32,
    /// How long the last sync took.
    last_sync: Duration,
}

/// The longest a leader gathers before syncing.
const MAX_GATHER: Duration = Duration::from_millis(1);

/// Waiters yield instead of sleeping only if the leader should be done within this.
const MAX_YIELD: Duration = Duration::from_micros(250);

/// How long past the leader's expected end waiters go on yielding before they sleep.
const YIELD_SLACK: Duration = Duration::from_micros(200);

impl GroupCommit {
    /// Starts with every offset below `durable` already durable.
    pub fn new(durable: u64) -> GroupCommit {
        GroupCommit {
            durable: AtomicU64::new(durable),
            syncs: AtomicU32::new(0),
            leader: AtomicBool::new(false),
            arrivals: AtomicU32::new(0),
            gathering: AtomicU32::new(0),
            history: primitives::Mutex::new(History::default()),
            due: AtomicU64::new(0),
            epoch: Instant::now(),
            busy_wait: false,
            #[cfg(test)]
            yielded: AtomicU64::new(0),
            #[cfg(test)]
            taken_over: AtomicU64::new(0),
        }
    }

    /// Starts as if a sync had just covered `batch` callers and taken `took`: with `batch`
    /// over 1 the next leader gathers, and with busy waiting it tells its waiters when it
    /// should be done. For models that begin there instead of running a first round.
    #[cfg(all(test, loom))]
    fn after_a_sync(mut self, batch: u32, took: Duration) -> GroupCommit {
        self.arrivals = AtomicU32::new(batch);
        *self.history.get_mut().unwrap() = History { synced_arrivals: batch, last_batch: batch, last_sync: took };
        self
    }

    /// Has waiters yield the CPU in a loop, instead of sleeping, while the sync in flight
    /// should end soon (see the type's notes and [`crate::Options::busy_wait_for_sync`]).
    pub fn busy_wait(mut self, on: bool) -> GroupCommit {
        self.busy_wait = on;
        self
    }

    /// Every offset below this is durable.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Returns once every offset below `target` is durable. `sync` makes everything appended
    /// so far durable and returns the offset it covered up to; `failed` reports a poisoned
    /// queue, so waiters stop instead of waiting for a sync that will never succeed.
    pub fn wait_for(
        &self,
        target: u64,
        sync: impl Fn() -> Result<u64>,
        failed: impl Fn() -> Option<Error>,
    ) -> Result<()> {
        if self.durable() >= target {
            return Ok(());
        }
        let arrived = self.arrivals.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let goal = self.gathering.load(Ordering::Acquire);
        if goal != 0
            && reached(arrived, goal)
            && self.gathering.compare_exchange(goal, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            // This call completes a gathering whose leader sleeps: it syncs in the leader's
            // stead, so that the leader's wake-up overlaps the sync instead of preceding it.
            #[cfg(test)]
            self.taken_over.fetch_add(1, Ordering::Relaxed);
            let _ = futex::wake(&self.arrivals, futex::Flags::PRIVATE, 1);
            self.sync_and_publish(&sync, &failed)?;
        }
        loop {
            // Read before the checks: a sync that ends after them changes it, so the wait
            // below returns at once instead of missing the wake-up.
            let syncs = self.syncs.load(Ordering::Acquire);
            if self.durable() >= target {
                return Ok(());
            }
            if let Some(err) = failed() {
                return Err(err);
            }
            if self.leader.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                if self.gather() {
                    self.sync_and_publish(&sync, &failed)?;
                }
            } else if !self.yield_until_synced(syncs) {
                // EAGAIN (a sync ended meanwhile) and EINTR both mean: look again.
                let _ = futex::wait(&self.syncs, futex::Flags::PRIVATE, syncs, None);
            }
        }
    }

    /// Yields the CPU until the sync counter moves past `syncs`, if the leader in office
    /// should be done soon (see the type's notes); returns whether it moved.
    fn yield_until_synced(&self, syncs: u32) -> bool {
        if !self.busy_wait {
            return false;
        }
        let due = self.due.load(Ordering::Acquire);
        if due == 0 || due.saturating_sub(self.nanos()) > MAX_YIELD.as_nanos() as u64 {
            return false;
        }
        let give_up = due + YIELD_SLACK.as_nanos() as u64;
        loop {
            if self.syncs.load(Ordering::Acquire) != syncs {
                #[cfg(test)]
                self.yielded.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            if self.nanos() >= give_up {
                return false;
            }
            yield_now();
        }
    }

    fn nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Run by a new leader before it syncs: sleeps until as many callers arrived since the
    /// last sync started as it covered, or for half as long as it took, whichever comes
    /// first. Returns whether this thread is still to sync: the call that completes the
    /// gathering takes the sync over instead of waking the leader to do it.
    fn gather(&self) -> bool {
        let (goal, wait) = {
            let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            if self.busy_wait && !history.last_sync.is_zero() {
                // As long as the last gathering and sync took, at most.
                let expected = (history.last_sync / 2).min(MAX_GATHER) + history.last_sync;
                self.due.store(self.nanos() + expected.as_nanos() as u64, Ordering::Release);
            }
            let goal = history.synced_arrivals.wrapping_add(history.last_batch).max(1);
            if history.last_batch <= 1 || reached(self.arrivals.load(Ordering::Acquire), goal) {
                return true;
            }
            (goal, (history.last_sync / 2).min(MAX_GATHER))
        };
        let deadline = Instant::now() + wait;
        self.gathering.store(goal, Ordering::Release);
        loop {
            let arrivals = self.arrivals.load(Ordering::Acquire);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || reached(arrivals, goal) {
                // Sync now, unless the call that completed the gathering already does.
                return self.gathering.compare_exchange(goal, 0, Ordering::AcqRel, Ordering::Acquire).is_ok();
            }
            // That call wakes this thread once it has taken the sync over: the wait then
            // ends during the sync, when the CPUs wait for the disk anyway.
            let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: left.as_nanos() as i64 };
            let _ = futex::wait(&self.arrivals, futex::Flags::PRIVATE, arrivals, Some(&timeout));
        }
    }

    /// Syncs, publishes the result, gives up the leader's office and wakes every waiter.
    /// Nothing is synced once `failed` reports a failure: a sync retried after a failed one
    /// can succeed without the lost pages having reached the disk, and would then
    /// acknowledge them. The caller that takes a gathering over comes here without the
    /// check the loop of [`GroupCommit::wait_for`] makes, and a leader can win the office
    /// just after the sync before it failed.
    fn sync_and_publish(&self, sync: &impl Fn() -> Result<u64>, failed: &impl Fn() -> Option<Error>) -> Result<()> {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        // Everyone who arrived has appended already: this sync covers them all.
        let arrivals = self.arrivals.load(Ordering::Acquire);
        history.last_batch = arrivals.wrapping_sub(history.synced_arrivals);
        history.synced_arrivals = arrivals;
        let began = Instant::now();
        let result = match failed() {
            Some(err) => Err(err),
            None => sync(),
        };
        history.last_sync = began.elapsed();
        if let Ok(covered) = result {
            self.durable.fetch_max(covered, Ordering::AcqRel);
        }
        drop(history);
        self.due.store(0, Ordering::Release);
        self.leader.store(false, Ordering::Release);
        self.syncs.fetch_add(1, Ordering::AcqRel);
        // The kernel reads the count as an `i32`: `u32::MAX` would wake one thread.
        let _ = futex::wake(&self.syncs, futex::Flags::PRIVATE, i32::MAX as u32);
        result.map(|_| ())
    }
}

/// Whether the wrapping counter `count` is at or past `goal` (within half its range).
fn reached(count: u32, goal: u32) -> bool {
    count.wrapping_sub(goal) < u32::MAX / 2
}

/// A thread that calls `tick` every interval until stopped or until `tick` returns false.
#[derive(Debug)]
pub(crate) struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub fn start(every: Duration, tick: impl Fn() -> bool + Send + 'static) -> std::io::Result<Flusher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new().name("segq-flusher".into()).spawn(move || {
            let (lock, cv) = &*signal;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            // Checked before each wait: a stop that came before this thread first took the
            // lock has already notified, and with a long interval the wait would not end.
            while !*stopped {
                stopped = cv.wait_timeout(stopped, every).unwrap_or_else(|e| e.into_inner()).0;
                if *stopped {
                    return;
                }
                drop(stopped);
                if !tick() {
                    return;
                }
                stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            }
        })?;
        Ok(Flusher { stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn concurrent_waiters_share_syncs() {
        let (commit, syncs) = run_appenders(GroupCommit::new(0), 8, 200, |_, _| Duration::ZERO, |_, _| 200);
        assert!(syncs < 1600, "every waiter paid for its own sync");
        assert_eq!(commit.yielded.load(Ordering::Relaxed), 0, "no busy wait unless asked for");
    }

    /// Busy waiting changes how waiters wait, not what they wait for.
    #[test]
    fn busy_waiters_share_syncs_and_yield_through_short_ones() {
        let (commit, syncs) =
            run_appenders(GroupCommit::new(0).busy_wait(true), 8, 200, |_, _| Duration::ZERO, |_, _| 100);
        assert!(syncs < 1600, "every waiter paid for its own sync");
        assert!(commit.yielded.load(Ordering::Relaxed) > 0, "no waiter yielded through a sync");
    }

    /// With syncs slow enough that every thread comes back within the gathering, the call
    /// that completes it leads the sync instead of the sleeping leader.
    #[test]
    fn the_call_that_completes_a_gathering_syncs() {
        // Threads come back one after another, so that a leader gathers.
        let (commit, _) =
            run_appenders(GroupCommit::new(0), 4, 50, |thread, _| Duration::from_micros(100 * thread), |_, _| 2000);
        assert!(commit.taken_over.load(Ordering::Relaxed) > 0, "no gathering was taken over");
    }

    /// Leaders, callers that take a gathering over (over a hundred times a run here) and
    /// leaders whose gathering timed out: whatever the timing, syncs never overlap, no
    /// caller returns before its offset is covered, and none is left waiting.
    #[test]
    fn any_timing_of_arrivals_and_syncs() {
        // Mostly short pauses (gatherings complete); now and then one longer than a
        // gathering waits (it times out).
        let pause = |thread, round| match mix(thread, round) {
            r if r % 8 == 0 => Duration::from_micros(r % 1500),
            r => Duration::from_micros(r % 100),
        };
        run_appenders(GroupCommit::new(0), 6, 150, pause, |thread, round| 150 + mix(round, thread) % 300);
    }

    /// A pseudo-random number from two.
    fn mix(a: u64, b: u64) -> u64 {
        let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0xD1B5_4A32_D192_ED03);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^ x >> 29
    }

    /// Runs `threads` threads that each append `rounds` times, after a pause of
    /// `pause(thread, round)`, and wait for their offset to be durable. A sync takes
    /// `sync_micros(thread, round)` of its leader and, as a real one, covers what was
    /// appended when it began. Checks that syncs never overlap and that no caller returns
    /// before its offset is durable; returns the commit and how many syncs ran.
    fn run_appenders(
        commit: GroupCommit,
        threads: u64,
        rounds: u64,
        pause: fn(u64, u64) -> Duration,
        sync_micros: fn(u64, u64) -> u64,
    ) -> (Arc<GroupCommit>, u64) {
        let commit = Arc::new(commit);
        let appended = Arc::new(AtomicU64::new(0));
        let (syncs, in_flight) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let (commit, appended) = (commit.clone(), appended.clone());
                let (syncs, in_flight) = (syncs.clone(), in_flight.clone());
                std::thread::spawn(move || {
                    for round in 0..rounds {
                        std::thread::sleep(pause(thread, round));
                        let target = appended.fetch_add(1, Ordering::SeqCst) + 1;
                        let sync = || {
                            assert_eq!(in_flight.fetch_add(1, Ordering::SeqCst), 0, "two syncs at once");
                            syncs.fetch_add(1, Ordering::SeqCst);
                            let covered = appended.load(Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(sync_micros(thread, round)));
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            Ok(covered)
                        };
                        commit.wait_for(target, sync, || None).unwrap();
                        assert!(commit.durable() >= target, "returned before its offset was durable");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(commit.durable(), threads * rounds);
        (commit, syncs.load(Ordering::SeqCst))
    }

    /// After a sync that covered many threads, the next leader waits for them to come back;
    /// when they do not (they stopped appending), it must still sync on its own.
    #[test]
    fn a_leader_left_alone_still_syncs() {
        let commit = Arc::new(GroupCommit::new(0));
        let appended = Arc::new(AtomicU64::new(0));
        let sync = |appended: &AtomicU64| {
            std::thread::sleep(Duration::from_millis(2));
            Ok(appended.load(Ordering::SeqCst))
        };
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (commit, appended, barrier) = (commit.clone(), appended.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let target = appended.fetch_add(1, Ordering::SeqCst) + 1;
                    commit.wait_for(target, || sync(&appended), || None).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for _ in 0..20 {
            let target = appended.fetch_add(1, Ordering::SeqCst) + 1;
            commit.wait_for(target, || sync(&appended), || None).unwrap();
        }
        assert_eq!(commit.durable(), 28);
    }

    /// A stop right after the start must end the thread even when it has not yet begun to
    /// wait, and the interval would never run out.
    #[test]
    fn a_flusher_stopped_at_once_ends_whatever_its_interval() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..500 {
                Flusher::start(Duration::MAX, || true).unwrap().stop();
            }
            let _ = done.send(());
        });
        assert!(finished.recv_timeout(Duration::from_secs(60)).is_ok(), "a stopped flusher kept waiting");
    }

    /// Whoever holds the office once a sync has failed does not sync again: it reports the
    /// failure, gives the office up and wakes the waiters.
    #[test]
    fn no_sync_after_a_failure() {
        let commit = GroupCommit::new(0);
        assert!(commit.leader.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok());
        let synced = AtomicU64::new(0);
        let sync = || {
            synced.fetch_add(1, Ordering::SeqCst);
            Ok(1)
        };
        let err = commit.sync_and_publish(&sync, &|| Some(Error::Closed)).unwrap_err();
        assert!(matches!(err, Error::Closed));
        assert_eq!(synced.load(Ordering::SeqCst), 0, "synced after a failure");
        assert_eq!(commit.durable(), 0);
        assert!(!commit.leader.load(Ordering::Acquire), "the office was not given up");
        assert_eq!(commit.syncs.load(Ordering::Acquire), 1, "the waiters were not woken");
    }

    #[test]
    fn a_failed_sync_reaches_the_waiter() {
        let commit = GroupCommit::new(0);
        let err = commit.wait_for(1, || Err(Error::Closed), || None).unwrap_err();
        assert!(matches!(err, Error::Closed));
        assert_eq!(commit.durable(), 0);
    }
}

/// Group commit under loom, which runs each model through every interleaving of its threads
/// (up to a bound on preemptions) and reports a deadlock when every thread sleeps: a lost
/// wake-up. Time and futexes are simulated (see `crate::primitives`). Run with
/// `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use crate::primitives::advance_clock;
    use loom::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::atomic::AtomicU64 as Total;

    /// A model's sync takes this long: short enough that busy waiters yield through it.
    const SYNC_TIME: Duration = Duration::from_micros(100);

    /// What group commit sees of a log: appends, and syncs that cover what was appended when
    /// they began. Checks that syncs run one at a time, in the leader's office, and never
    /// after a failed one.
    #[derive(Default)]
    struct Log {
        appended: AtomicU64,
        syncing: AtomicBool,
        syncs: AtomicU64,
        /// The sync that fails, counted from 1; 0 for none.
        fail_at: u64,
        failed: AtomicBool,
    }

    impl Log {
        fn sync(&self, commit: &GroupCommit) -> Result<u64> {
            assert!(commit.leader.load(Ordering::Acquire), "a sync outside the leader's office");
            assert!(!self.syncing.swap(true, Ordering::AcqRel), "two syncs at once");
            assert!(!self.failed.load(Ordering::Acquire), "a sync after a failed one");
            let nth = self.syncs.fetch_add(1, Ordering::AcqRel) + 1;
            // A read-modify-write reads the latest append, as the real sync does under the
            // writer's lock.
            let covered = self.appended.fetch_add(0, Ordering::AcqRel);
            advance_clock(SYNC_TIME);
            self.syncing.store(false, Ordering::Release);
            if nth == self.fail_at {
                // As the real sync: the queue is poisoned before the error returns.
                self.failed.store(true, Ordering::Release);
                return Err(Error::Closed);
            }
            Ok(covered)
        }

        fn failed(&self) -> Option<Error> {
            self.failed.load(Ordering::Acquire).then_some(Error::Closed)
        }

        /// Appends a record and waits for it to be durable; checks that `durable` does not go
        /// back and that an `Ok` means the record is durable.
        fn append_and_wait(&self, commit: &GroupCommit) -> Result<()> {
            let target = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
            let before = commit.durable();
            let result = commit.wait_for(target, || self.sync(commit), || self.failed());
            let after = commit.durable();
            assert!(after >= before, "durable went back from {before} to {after}");
            if result.is_ok() {
                assert!(after >= target, "returned Ok for {target} with {after} durable");
            }
            result
        }
    }

    /// Sums over every execution loom explored, to show what the models went through.
    #[derive(Debug, Default)]
    struct Totals {
        executions: Total,
        syncs: Total,
        taken_over: Total,
        yielded: Total,
        errors: Total,
    }

    /// Runs `threads` appenders, each appending one record and waiting for it, on the group
    /// commit `start` makes, through every interleaving loom explores. Checks the `Log`'s
    /// assertions, that no thread is left sleeping (loom's deadlock check), and at the end
    /// that the office is free and, unless a sync failed, every record is durable.
    fn check(threads: usize, fail_at: u64, start: fn() -> GroupCommit) -> Totals {
        let totals = std::sync::Arc::new(Totals::default());
        let sums = totals.clone();
        // Two threads get three preemptions; three threads two, to keep to seconds.
        let preemptions = if threads > 2 { 2 } else { 3 };
        primitives::check(preemptions, move || {
            let commit = loom::sync::Arc::new(start());
            let log = loom::sync::Arc::new(Log { fail_at, ..Log::default() });
            let others: Vec<_> = (1..threads)
                .map(|_| {
                    let (commit, log) = (commit.clone(), log.clone());
                    loom::thread::spawn(move || log.append_and_wait(&commit))
                })
                .collect();
            let mut results = vec![log.append_and_wait(&commit)];
            results.extend(others.into_iter().map(|thread| thread.join().unwrap()));

            let syncs = log.syncs.load(Ordering::Acquire);
            let published = u64::from(commit.syncs.load(Ordering::Acquire));
            assert!(!commit.leader.load(Ordering::Acquire), "the office was not given up");
            assert_eq!(commit.gathering.load(Ordering::Acquire), 0, "a gathering was left open");
            // Each office ends in one publication, after one sync unless a sync had failed.
            if fail_at == 0 {
                assert_eq!(published, syncs, "an office synced twice, or not at all");
                assert_eq!(commit.durable(), threads as u64, "records left not durable");
            } else {
                assert!(published >= syncs, "an office synced twice");
                if fail_at == 1 {
                    assert!(results.iter().all(Result::is_err), "a waiter got Ok with nothing synced");
                }
            }
            sums.executions.fetch_add(1, Ordering::Relaxed);
            sums.syncs.fetch_add(syncs, Ordering::Relaxed);
            sums.taken_over.fetch_add(commit.taken_over.load(Ordering::Relaxed), Ordering::Relaxed);
            sums.yielded.fetch_add(commit.yielded.load(Ordering::Relaxed), Ordering::Relaxed);
            sums.errors.fetch_add(results.iter().filter(|r| r.is_err()).count() as u64, Ordering::Relaxed);
        });
        let totals = std::sync::Arc::into_inner(totals).unwrap();
        eprintln!("{threads} threads, failing sync {fail_at}: {totals:?}");
        totals
    }

    fn fresh() -> GroupCommit {
        GroupCommit::new(0)
    }

    #[test]
    fn two_waiters_each_return_once_their_record_is_durable() {
        check(2, 0, fresh);
    }

    /// A sync may cover one, two or three records here, and a second leader may then gather
    /// after a sync that covered several.
    #[test]
    fn three_waiters_each_return_once_their_record_is_durable() {
        check(3, 0, fresh);
    }

    /// Waiters yield rather than sleep, the leader having told them when it should be done.
    fn busy() -> GroupCommit {
        GroupCommit::new(0).busy_wait(true).after_a_sync(1, SYNC_TIME)
    }

    #[test]
    fn two_busy_waiters_each_return_once_their_record_is_durable() {
        let totals = check(2, 0, busy);
        assert!(totals.yielded.into_inner() > 0, "no waiter yielded through a sync");
    }

    #[test]
    fn three_busy_waiters_each_return_once_their_record_is_durable() {
        let totals = check(3, 0, busy);
        assert!(totals.yielded.into_inner() > 0, "no waiter yielded through a sync");
    }

    /// The last sync covered two callers: the next leader gathers until a second one comes,
    /// which then syncs in its stead, or until it times out and syncs itself.
    fn gathering() -> GroupCommit {
        GroupCommit::new(0).after_a_sync(2, SYNC_TIME)
    }

    #[test]
    fn two_waiters_through_a_gathering() {
        let totals = check(2, 0, gathering);
        assert!(totals.taken_over.into_inner() > 0, "no gathering was taken over");
    }

    #[test]
    fn three_waiters_through_a_gathering() {
        let totals = check(3, 0, gathering);
        assert!(totals.taken_over.into_inner() > 0, "no gathering was taken over");
    }

    #[test]
    fn three_busy_waiters_through_a_gathering() {
        let totals = check(3, 0, || gathering().busy_wait(true));
        assert!(totals.taken_over.load(Ordering::Relaxed) > 0, "no gathering was taken over");
        assert!(totals.yielded.into_inner() > 0, "no waiter yielded through a sync");
    }

    #[test]
    fn two_waiters_of_a_failed_sync_both_fail() {
        check(2, 1, fresh);
    }

    #[test]
    fn three_waiters_of_a_failed_sync_all_fail() {
        check(3, 1, fresh);
    }

    /// Some waiters may have their record covered by the first sync; the others fail.
    #[test]
    fn three_waiters_of_a_sync_that_fails_after_one_that_succeeded() {
        let totals = check(3, 2, fresh);
        assert!(totals.errors.into_inner() > 0, "the second sync never ran");
    }

    /// The failure reaches the call that took the gathering over, and the leader it woke.
    #[test]
    fn three_waiters_of_a_failed_sync_through_a_gathering() {
        let totals = check(3, 1, gathering);
        assert!(totals.taken_over.into_inner() > 0, "no gathering was taken over");
    }
}
