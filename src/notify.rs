//! Wake-ups for consumers waiting in `poll`: a generation counter bumped by every event that
//! may make a record deliverable (an append, a sync, a nack, a redrive, a seek).

use std::sync::atomic::Ordering;
use std::time::Instant;

// Loom's under `cfg(loom)`, std's otherwise: see the module.
use crate::primitives::{AtomicU64, AtomicUsize, Condvar, Mutex};

/// Many waiters, many notifiers; a notifier pays for a lock only when someone waits.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    generation: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Notify {
    /// The current generation: read it before checking for work, then wait on it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Wakes every waiter.
    pub fn notify(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    /// Sleeps until the generation moves past `seen` or `deadline` passes.
    pub fn wait(&self, seen: u64, deadline: Instant) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.generation.load(Ordering::SeqCst) == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            guard = self.cv.wait_timeout(guard, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_notify_after_reading_the_generation_is_never_lost() {
        let n = Arc::new(Notify::default());
        for _ in 0..200 {
            let seen = n.generation();
            let notifier = n.clone();
            let t = std::thread::spawn(move || notifier.notify());
            n.wait(seen, Instant::now() + Duration::from_secs(30));
            assert_ne!(n.generation(), seen);
            t.join().unwrap();
        }
    }
}

/// The wake-ups under loom, which runs each model through every interleaving of its threads
/// and reports a deadlock when every thread sleeps: a lost wake-up. Loom's timed waits never
/// time out, so a waiter that nobody wakes is seen. Run with
/// `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// Consumers that wait until `produced` records are there, as `poll` does: read the
    /// generation, look for work, sleep on the generation read.
    fn consume(notify: &Notify, records: &AtomicU64, produced: u64) {
        loop {
            let seen = notify.generation();
            if records.load(Ordering::Acquire) == produced {
                return;
            }
            notify.wait(seen, Instant::now() + Duration::from_secs(3600));
        }
    }

    fn check(consumers: usize, producers: u64) {
        crate::primitives::check(3, move || {
            let notify = Arc::new(Notify::default());
            let records = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..producers)
                .map(|_| {
                    let (notify, records) = (notify.clone(), records.clone());
                    loom::thread::spawn(move || {
                        records.fetch_add(1, Ordering::AcqRel);
                        notify.notify();
                    })
                })
                .chain((1..consumers).map(|_| {
                    let (notify, records) = (notify.clone(), records.clone());
                    loom::thread::spawn(move || consume(&notify, &records, producers))
                }))
                .collect();
            consume(&notify, &records, producers);
            for thread in threads {
                thread.join().unwrap();
            }
        });
    }

    #[test]
    fn a_consumer_is_woken_by_the_append_it_waits_for() {
        check(1, 1);
    }

    #[test]
    fn two_consumers_are_both_woken() {
        check(2, 1);
    }

    #[test]
    fn a_consumer_waiting_for_two_appends_sees_both() {
        check(1, 2);
    }
}
