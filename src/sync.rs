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
/// When the last sync covered more than one append (several threads are appending), the
/// leader lingers for up to half that sync's duration, yielding, before it syncs: the
/// appenders the last sync woke get to write their records first, so one sync covers them
/// all instead of a few. A lone appender never waits.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    state: Mutex<CommitState>,
    synced: Condvar,
}

#[derive(Debug)]
struct CommitState {
    /// Every offset below this is durable.
    durable: u64,
    leader: bool,
    /// Offsets the last sync covered that the one before had not.
    last_batch: u64,
    /// How long the last sync took.
    last_sync: Duration,
}

/// The longest a leader lingers before syncing.
const MAX_LINGER: Duration = Duration::from_micros(200);

impl GroupCommit {
    /// Starts with every offset below `durable` already durable.
    pub fn new(durable: u64) -> GroupCommit {
        let state = CommitState { durable, leader: false, last_batch: 0, last_sync: Duration::ZERO };
        GroupCommit { state: Mutex::new(state), synced: Condvar::new() }
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
            let linger = if state.last_batch > 1 { (state.last_sync / 2).min(MAX_LINGER) } else { Duration::ZERO };
            drop(state);
            // Let appenders that the last sync just woke write their records first: on few
            // cores they are runnable but not yet running, and this sync can cover them.
            let start = Instant::now();
            loop {
                std::thread::yield_now();
                if start.elapsed() >= linger {
                    break;
                }
            }
            let began = Instant::now();
            let result = sync();
            let took = began.elapsed();
            state = self.lock();
            state.leader = false;
            if let Ok(covered) = result {
                state.last_batch = covered.saturating_sub(state.durable);
                state.last_sync = took;
                state.durable = state.durable.max(covered);
            }
            self.synced.notify_all();
            result?;
        }
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

    #[test]
    fn a_failed_sync_reaches_the_waiter() {
        let commit = GroupCommit::new(0);
        let err = commit.wait_for(1, || Err(Error::Closed), || None).unwrap_err();
        assert!(matches!(err, Error::Closed));
        assert_eq!(commit.durable(), 0);
    }
}
