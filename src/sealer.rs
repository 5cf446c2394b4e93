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

/// What the thread is handed, run in order.
enum Task {
    /// A seal, which [`Sealer::wait`] waits for, and what follows it, which it does not.
    Seal(Job, After),
    /// Work that is not a seal: nobody waits for it.
    Other(After),
}

impl Task {
    fn run(self, busy: &Busy) {
        match self {
            Task::Seal(job, after) => {
                job();
                busy.set(false);
                after();
            }
            Task::Other(work) => work(),
        }
    }
}

/// Runs seals one at a time and lets callers wait for the one in progress.
#[derive(Debug)]
pub(crate) struct Sealer {
    /// `None` if no thread could be started, or once stopped: seals then run on the
    /// caller's thread.
    tx: Mutex<Option<Sender<Task>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
        let (tx, rx) = channel::<Task>();
        let done = busy.clone();
        let spawned = std::thread::Builder::new().name("segq-seal".into()).spawn(move || {
            for task in rx {
                task.run(&done);
            }
        });
        match spawned {
            Ok(thread) => Sealer { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), busy },
            Err(_) => Sealer { tx: Mutex::new(None), thread: Mutex::new(None), busy },
        }
    }

    /// Runs `job` in the background, then `after`, which [`Sealer::wait`] does not wait
    /// for. The caller has waited for the previous seal and holds the log's writer lock, so
    /// no other seal starts meanwhile.
    pub fn seal(&self, job: Job, after: After) {
        self.busy.set(true);
        self.hand_over(Task::Seal(job, after));
    }

    /// Runs `work` in the background once what was handed over before is done. It is not
    /// a seal: [`Sealer::wait`] does not wait for it, and no seal need be waited for first.
    pub fn run(&self, work: After) {
        self.hand_over(Task::Other(work));
    }

    fn hand_over(&self, task: Task) {
        // Not sent under the lock: a task run here may hand over another.
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) => {
                if let Err(unsent) = tx.send(task) {
                    unsent.0.run(&self.busy);
                }
            }
            None => task.run(&self.busy),
        }
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

    /// Ends the thread once the work handed over is done; later work runs on the caller's
    /// thread.
    pub fn stop(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sealer {
    /// Finishes the seal in progress: its thread must not touch the files once the log is
    /// gone and the directory may be opened again.
    fn drop(&mut self) {
        self.stop();
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

    /// Work that is not a seal runs in order with the seals, and waiting for a seal does
    /// not wait for it.
    #[test]
    fn other_work_runs_in_order_and_is_not_waited_for() {
        let sealer = Sealer::start();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let log = |name: &'static str| {
            let order = order.clone();
            Box::new(move || order.lock().unwrap().push(name)) as Job
        };
        let first = log("seal");
        sealer.seal(first, log("after the seal"));
        let work = log("work");
        sealer.run(Box::new(move || {
            let _ = gate.recv();
            work();
        }));
        sealer.wait();
        assert!(!sealer.is_sealing(), "the seal is done while the work still waits");
        release.send(()).unwrap();
        sealer.seal(log("second seal"), Box::new(|| {}));
        sealer.wait();
        let order = order.lock().unwrap().clone();
        assert_eq!(order, ["seal", "after the seal", "work", "second seal"]);
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
