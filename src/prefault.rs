//! Faulting in the pages of the active segment ahead of the writer, on a thread of its own.
//!
//! The first store into each page of a fresh segment costs a page fault in which the kernel
//! finds and zeroes a page (2–5 µs on these machines): for 100-byte records that is more
//! than the rest of an append. This thread takes that work off the appender's path.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

use crate::mmap::Mapping;

/// How far ahead of the write position pages are faulted in.
pub(crate) const AHEAD: usize = 4 << 20;
/// How much one request faults in.
pub(crate) const CHUNK: usize = 1 << 20;

/// A request to fault in `range` of `map`.
pub(crate) type Job = (Arc<Mapping>, Range<usize>);

/// Starts the thread; it ends when every sender is dropped. `None` if no thread could be
/// started, in which case appends fault pages in themselves.
pub(crate) fn start() -> Option<Sender<Job>> {
    let (tx, rx) = channel::<Job>();
    let spawned = std::thread::Builder::new().name("segq-prefault".into()).spawn(move || {
        for (map, range) in rx {
            map.populate_write(range);
        }
    });
    spawned.ok().map(|_| tx)
}
