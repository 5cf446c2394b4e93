//! segq: an embeddable, persistent queue in a directory of memory-mapped segment files.
//!
//! A [`Queue`] is an append-only log of records (byte strings) kept in one directory, which
//! one handle at a time may have open. Each record gets an *offset*: its position in the
//! queue, counted from 0. Records are read by offset ([`Queue::read`]) or in order
//! ([`Queue::iter_from`]), as often as you like: reading removes nothing, and old records
//! go only by retention ([`Options::retain_bytes`], [`Options::retain_age`],
//! [`Options::retain_until_consumed`]).
//!
//! To share out work, a consumer [`Group`] keeps its own durable position in the queue. It
//! leases each record to one consumer at a time ([`Group::poll`]), which acks it when done
//! ([`Group::ack`]) or nacks it to have it delivered again later ([`Group::nack`]); a record
//! that fails too often becomes a [`DeadLetter`]. Every group sees every record.
//!
//! [`SyncPolicy`] decides when appends are durable: by default `append` returns once the
//! record is on stable storage. [`Queue::open`] recovers a queue that was not closed
//! cleanly, keeping every record that was made durable. Everything that can fail returns
//! an [`Error`].
//!
//! ```
//! use segq::{Options, Queue};
//! use std::time::Duration;
//! # let dir = tempfile::tempdir()?;
//!
//! let q = Queue::open(dir.path(), Options::default())?;
//! q.append(b"resize photo 1")?;
//! q.append_batch(&[b"resize photo 2".as_slice(), b"resize photo 3"])?;
//! assert_eq!(q.read(1)?.expect("offset 1 exists").payload(), b"resize photo 2");
//!
//! // A worker: take jobs until none is left, ack each one that is done.
//! let workers = q.group("resizer")?;
//! while let Some(job) = workers.poll(Duration::ZERO)? {
//!     assert!(job.payload().starts_with(b"resize")); // do the work here
//!     workers.ack(job.offset())?;
//! }
//! assert_eq!(workers.ack_floor(), 3); // offsets 0, 1 and 2 are done
//! q.close()?;
//! # Ok::<(), segq::Error>(())
//! ```
//!
//! The default `cli` feature builds the `segq` debug binary; library users can turn it off
//! with `default-features = false`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod checkpoint;
mod crc;
mod error;
pub mod fault;
mod fs;
mod group;
pub mod inspect;
mod iter;
mod log;
mod mmap;
mod notify;
mod options;
mod prefault;
mod primitives;
mod queue;
mod record;
mod sealer;
mod segment;
mod sync;

pub use error::{CorruptKind, Error, Result};
pub use group::{DeadLetter, Delivery, Group, GroupStats};
pub use iter::Iter;
pub use log::{Recovery, RetentionReport, Stats};
pub use options::{GroupOptions, MAX_RECORD_LIMIT, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES, Options, SyncPolicy};
pub use queue::Queue;
pub use record::{Record, RecordRef};

/// The README's examples, compiled with the doctests so that they cannot drift from the API
/// (not run: they create queues in the working directory).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
