//! Wake-ups for consumers waiting in `poll`: a generation counter bumped by every event that
//! may make a record deliverable (an append, a sync, a nack, a redrive, a seek).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

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
