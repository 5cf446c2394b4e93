//! segq: an embeddable, persistent queue in a directory of memory-mapped segment files.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod checkpoint;
mod error;
pub mod fault;
mod fs;
mod group;
pub mod inspect;
mod log;
mod mmap;
mod notify;
mod options;
mod prefault;
mod queue;
mod record;
mod segment;
mod sync;

pub use error::{CorruptKind, Error, Result};
pub use group::{DeadLetter, Delivery, Group, GroupStats};
pub use log::{Iter, Recovery, RetentionReport, Stats};
pub use options::{GroupOptions, Options, SyncPolicy};
pub use queue::Queue;
pub use record::Record;
