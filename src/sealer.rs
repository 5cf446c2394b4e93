//! Sealing rolled segments on a thread of its own.
//!
//! Sealing a segment syncs all of its data: under [`crate::SyncPolicy::Never`] that is a
//! whole segment written back at once (tens of milliseconds for 64 MiB). Done by the append
//! that rolls, it would stall that append and every append queued behind it; here it
//! overlaps the appends to the next segment. At most one seal is in progress: a roll waits
//! for the previous seal, so that recovery never has more than the segment before the
//! newest to check (see [`crate::log`]).

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A seal to run, with whatever must follow it.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Work for after a seal that nobody waits for.
pub(crate) type After = Box<dyn FnOnce() + Send>;

/// Runs seals one at a time and lets callers wait for the one in progress.
#[derive(Debug)]
pub(crate) struct Sealer {
    /// `None` if no thread could be started: seals then run on the caller's thread.
    tx: Option<Sender<(Job, After)>>,
    thread: Option<JoinHandle<()>>,
    busy: Arc<Busy>,
}

#[derive(Debug, Default)]
struct Busy {
    sealing: Mutex<bool>,
    idle: Condvar,
}

impl Busy {
    fn set(&self, sealing: bool) {
        *self.sealing.lock().unwrap_or_else(|e| e.into_inner()) = sealing;
        if !sealing {
            self.idle.notify_all();
        }
    }
}

impl Sealer {
    /// Starts the sealing thread.
    pub fn start() -> Sealer {
        let busy = Arc::new(Busy::default());
        let (tx, rx) = channel::<(Job, After)>();
        let done = busy.clone();
        let spawned = std::thread::Builder::new().name("segq-seal".into()).spawn(move || {
            for (job, after) in rx {
                job();
                done.set(false);
                after();
            }
        });
        match spawned {
            Ok(thread) => Sealer { tx: Some(tx), thread: Some(thread), busy },
            Err(_) => Sealer { tx: None, thread: None, busy },
        }
    }

    /// Runs `job` in the background, then `after`, which [`Sealer::wait`] does not wait
    /// for. The caller has waited for the previous seal and holds the log's writer lock, so
    /// no other seal starts meanwhile.
    pub fn seal(&self, job: Job, after: After) {
        self.busy.set(true);
        let (job, after) = match &self.tx {
            Some(tx) => match tx.send((job, after)) {
                Ok(()) => return,
                Err(unsent) => unsent.0,
            },
            None => (job, after),
        };
        job();
        self.busy.set(false);
        after();
    }

    /// Whether a seal is in progress.
    pub fn is_sealing(&self) -> bool {
        *self.busy.sealing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once the last seal and the work after it are done. The caller holds the
    /// log's writer lock, so no other seal starts meanwhile.
    pub fn drain(&self) {
        self.wait();
        // Seals run in order: an empty one ends after everything handed over before it.
        self.seal(Box::new(|| {}), Box::new(|| {}));
        self.wait();
    }

    /// Returns once no seal is in progress.
    pub fn wait(&self) {
        let mut sealing = self.busy.sealing.lock().unwrap_or_else(|e| e.into_inner());
        while *sealing {
            sealing = self.busy.idle.wait(sealing).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Sealer {
    /// Finishes the seal in progress: its thread must not touch the files once the log is
    /// gone and the directory may be opened again.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn wait_returns_after_the_seal_in_progress() {
        let sealer = Sealer::start();
        let done = Arc::new(AtomicU32::new(0));
        for _ in 0..3 {
            sealer.wait();
            let done = done.clone();
            sealer.seal(
                Box::new(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    done.fetch_add(1, Ordering::SeqCst);
                }),
                Box::new(|| {}),
            );
        }
        sealer.wait();
        assert!(!sealer.is_sealing());
        assert_eq!(done.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn drop_finishes_the_seal_in_progress() {
        let sealer = Sealer::start();
        let done = Arc::new(AtomicU32::new(0));
        let job_done = done.clone();
        let after_done = done.clone();
        sealer.seal(
            Box::new(move || {
                std::thread::sleep(Duration::from_millis(20));
                job_done.fetch_add(1, Ordering::SeqCst);
            }),
            Box::new(move || {
                after_done.fetch_add(10, Ordering::SeqCst);
            }),
        );
        drop(sealer);
        assert_eq!(done.load(Ordering::SeqCst), 11, "the seal and what follows it both ran");
    }
}
