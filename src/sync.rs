//! Durability: group commit for appenders that wait for a sync, and the background flusher
//! of [`crate::SyncPolicy::Interval`].

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Lets many threads that each need "everything up to offset N is durable" share syncs.
///
/// The first waiter that finds no sync in flight becomes the leader: it syncs everything
/// appended so far without holding any lock, publishes the new durable offset and wakes the
/// others. Waiters whose offset it covered return; the rest elect the next leader. While one
/// sync runs, the appends that arrive pile up and are covered together by the next.
///
/// When the last sync released several threads, the next leader first sleeps until as many
/// callers have come back, or for as long as that sync took, whichever is first: with more
/// appenders than cores, the threads a sync wakes take turns to run, and a leader that
/// synced at once would cover only the first few of them. Waiting one sync's time at most
/// bounds what a thread that stopped appending costs the rest. A lone appender never waits.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    state: Mutex<CommitState>,
    synced: Condvar,
    /// Wakes a gathering leader once enough threads are waiting.
    arrived: Condvar,
}

#[derive(Debug)]
struct CommitState {
    /// Every offset below this is durable.
    durable: u64,
    leader: bool,
    /// Calls of `wait_for` that found their offset not yet durable, ever.
    arrivals: u64,
    /// `arrivals` when the last sync started: it covered all of those callers.
    synced_arrivals: u64,
    /// Callers the last sync covered that the one before had not.
    last_batch: u64,
    /// How long the last sync took.
    last_sync: Duration,
    /// While a leader gathers: the `arrivals` it waits for.
    gathering: Option<u64>,
}

/// The longest a leader gathers before syncing.
const MAX_GATHER: Duration = Duration::from_millis(1);

impl GroupCommit {
    /// Starts with every offset below `durable` already durable.
    pub fn new(durable: u64) -> GroupCommit {
        let state = CommitState {
            durable,
            leader: false,
            arrivals: 0,
            synced_arrivals: 0,
            last_batch: 0,
            last_sync: Duration::ZERO,
            gathering: None,
        };
        GroupCommit { state: Mutex::new(state), synced: Condvar::new(), arrived: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every offset below this is durable.
    pub fn durable(&self) -> u64 {
        self.lock().durable
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
        let mut state = self.lock();
        if state.durable >= target {
            return Ok(());
        }
        state.arrivals += 1;
        if state.gathering.is_some_and(|goal| state.arrivals >= goal) {
            self.arrived.notify_one();
        }
        self.wait_locked(state, target, sync, failed)
    }

    fn wait_locked<'a>(
        &'a self,
        mut state: MutexGuard<'a, CommitState>,
        target: u64,
        sync: impl Fn() -> Result<u64>,
        failed: impl Fn() -> Option<Error>,
    ) -> Result<()> {
        loop {
            if state.durable >= target {
                return Ok(());
            }
            if let Some(err) = failed() {
                return Err(err);
            }
            if state.leader {
                state = self.synced.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.leader = true;
            state = self.gather(state);
            // Everyone who arrived has appended already: this sync covers them all.
            state.last_batch = state.arrivals - state.synced_arrivals;
            state.synced_arrivals = state.arrivals;
            drop(state);
            let began = Instant::now();
            let result = sync();
            let took = began.elapsed();
            state = self.lock();
            state.leader = false;
            if let Ok(covered) = result {
                state.last_sync = took;
                state.durable = state.durable.max(covered);
            }
            self.synced.notify_all();
            result?;
        }
    }

    /// As the new leader, waits until as many callers arrived since the last sync started as
    /// it covered, or for as long as it took, whichever comes first.
    fn gather<'a>(&'a self, mut state: MutexGuard<'a, CommitState>) -> MutexGuard<'a, CommitState> {
        let goal = state.synced_arrivals + state.last_batch;
        if state.last_batch <= 1 || state.arrivals >= goal {
            return state;
        }
        let deadline = Instant::now() + state.last_sync.min(MAX_GATHER);
        state.gathering = Some(goal);
        while state.arrivals < goal {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
            state = self.arrived.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        state.gathering = None;
        state
    }
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
            loop {
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
        let commit = Arc::new(GroupCommit::new(0));
        let appended = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (commit, appended, syncs) = (commit.clone(), appended.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let target = appended.fetch_add(1, Ordering::SeqCst) + 1;
                        let sync = || {
                            syncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_micros(200));
                            Ok(appended.load(Ordering::SeqCst))
                        };
                        commit.wait_for(target, sync, || None).unwrap();
                        assert!(commit.durable() >= target);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(commit.durable(), 1600);
        assert!(syncs.load(Ordering::SeqCst) < 1600, "every waiter paid for its own sync");
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

    #[test]
    fn a_failed_sync_reaches_the_waiter() {
        let commit = GroupCommit::new(0);
        let err = commit.wait_for(1, || Err(Error::Closed), || None).unwrap_err();
        assert!(matches!(err, Error::Closed));
        assert_eq!(commit.durable(), 0);
    }
}
