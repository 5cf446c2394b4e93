//! Faulting in the pages of the active segment ahead of the writer, on a thread of its own.
//!
//! The first store into each page of a fresh segment costs a page fault in which the kernel
//! finds and zeroes a page (2–5 µs on these machines): for 100-byte records that is more
//! than the rest of an append. This thread takes that work off the appender's path.

use std::ops::Range;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::mmap::Mapping;

/// How far ahead of the write position pages are faulted in, for a segment of `capacity`
/// bytes: a quarter of it, from 4 MiB to 16 MiB (default segments: 16 MiB).
///
/// A fault of this thread makes the kernel read (here: zero) a whole readahead window
/// around it, and the writer stalls on any page of a window not yet done. With 8 MiB
/// windows (`read_ahead_kb` on the machines of docs/PERFORMANCE.md) and 4 MiB ahead, the
/// writer ran into them: sleeps of up to 30 ms. Each active queue holds that much zeroed
/// page cache ahead of its writer: with the quarter, queues of segments of 16 MiB or less
/// keep the 4 MiB they had before.
pub(crate) fn ahead(capacity: usize) -> usize {
    (capacity / 4).clamp(4 << 20, 16 << 20)
}

/// How much one request faults in.
pub(crate) const CHUNK: usize = 1 << 20;

/// A request to the thread.
pub(crate) enum Job {
    /// Fault in `range` of the mapping.
    Populate(Arc<Mapping>, Range<usize>),
    /// End the thread.
    Stop,
}

/// The thread, stopped and joined when the log closes or this is dropped: it must not
/// outlive its log, even if a segment writer holding a sender does.
#[derive(Debug)]
pub(crate) struct Prefaulter {
    tx: Sender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Prefaulter {
    /// Starts the thread. `None` if no thread could be started, in which case appends fault
    /// pages in themselves.
    pub fn start() -> Option<Prefaulter> {
        let (tx, rx) = channel::<Job>();
        let spawned = std::thread::Builder::new().name("segq-prefault".into()).spawn(move || {
            for job in rx {
                match job {
                    Job::Populate(map, range) => map.populate_write(range),
                    Job::Stop => break,
                }
            }
        });
        spawned.ok().map(|thread| Prefaulter { tx, thread: Mutex::new(Some(thread)) })
    }

    /// Where a segment writer sends its requests.
    pub fn sender(&self) -> Sender<Job> {
        self.tx.clone()
    }

    /// Ends the thread; later requests are dropped (pages are then faulted in by whoever
    /// writes them).
    pub fn stop(&self) {
        let _ = self.tx.send(Job::Stop);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quarter of the segment, never less than 4 MiB nor more than 16 MiB.
    #[test]
    fn the_prefault_runs_a_quarter_of_the_segment_ahead_within_bounds() {
        const MIB: usize = 1 << 20;
        assert_eq!(ahead(16 << 10), 4 * MIB);
        assert_eq!(ahead(16 * MIB), 4 * MIB);
        assert_eq!(ahead(32 * MIB), 8 * MIB);
        assert_eq!(ahead(64 * MIB), 16 * MIB);
        assert_eq!(ahead(4096 * MIB), 16 * MIB);
    }
}
