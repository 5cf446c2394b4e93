//! Settings chosen when a queue is opened.

use std::time::Duration;

use crate::error::{Error, Result};

/// When appended records are made durable (synced to the storage device).
///
/// Whatever the policy, a record whose `append` returned survives a crash of the *process*:
/// its bytes are in the kernel's page cache. The policy decides what survives a crash of the
/// *machine* (power loss, kernel panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `append` returns once the record is on stable storage. Appenders on several threads
    /// share one sync (group commit). The default.
    #[default]
    Always,
    /// A background thread syncs everything appended every interval: a machine crash loses
    /// at most about one interval of appends.
    Interval(Duration),
    /// Never sync on its own; the OS writes pages back when it likes. [`crate::Queue::flush`]
    /// and [`crate::Queue::close`] still make everything durable.
    Never,
}

/// Smallest accepted segment size.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest accepted segment size: positions inside a segment are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;
/// Largest accepted payload limit (1 GiB): one record plus its headers must fit a segment.
pub const MAX_RECORD_LIMIT: u32 = 1 << 30;

/// Options for [`crate::Queue::open`], built with consuming setters.
///
/// ```
/// use segq::{Options, SyncPolicy};
/// use std::time::Duration;
///
/// let opts = Options::default()
///     .segment_bytes(8 << 20)
///     .sync(SyncPolicy::Interval(Duration::from_millis(10)));
/// assert_eq!(opts.get_segment_bytes(), 8 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) segment_bytes: u64,
    pub(crate) index_interval_bytes: u32,
    pub(crate) max_record_bytes: u32,
    pub(crate) sync: SyncPolicy,
    pub(crate) retain_bytes: Option<u64>,
    pub(crate) retain_age: Option<Duration>,
    pub(crate) retain_until_consumed: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
            max_record_bytes: 1 << 20,
            sync: SyncPolicy::Always,
            retain_bytes: None,
            retain_age: None,
            retain_until_consumed: false,
        }
    }
}

impl Options {
    /// Size each segment file is preallocated to; a segment rolls when the next record does
    /// not fit. Default 64 MiB; from 4 KiB up to 4 GiB − 1. Crash recovery scans at most one
    /// segment, so smaller segments bound recovery time.
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Bytes of records between two entries of a segment's sparse offset index; a read by
    /// offset scans at most this much. Default 4096; at least 1.
    #[must_use]
    pub fn index_interval_bytes(mut self, bytes: u32) -> Self {
        self.index_interval_bytes = bytes;
        self
    }

    /// Largest payload accepted, in bytes. Default 1 MiB; at most 1 GiB. A bigger payload is
    /// [`Error::RecordTooLarge`].
    #[must_use]
    pub fn max_record_bytes(mut self, bytes: u32) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// When appends are made durable. Default [`SyncPolicy::Always`].
    #[must_use]
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// Keep at most about this many bytes of log: once the segment files add up to more,
    /// the oldest sealed segments are deleted, whole. The active segment is never deleted,
    /// so the log can exceed this by up to one segment. Default: no limit.
    #[must_use]
    pub fn retain_bytes(mut self, bytes: u64) -> Self {
        self.retain_bytes = Some(bytes);
        self
    }

    /// Delete sealed segments whose newest record is older than this. Default: no limit.
    #[must_use]
    pub fn retain_age(mut self, age: Duration) -> Self {
        self.retain_age = Some(age);
        self
    }

    /// Never delete a record that some consumer group has not acked, and delete a sealed
    /// segment as soon as every group has acked all of it (even without a size or age
    /// limit: consumed data goes, as in a work queue). Dead letters count as not acked.
    /// With no group at all, nothing counts as consumed. Default: false.
    #[must_use]
    pub fn retain_until_consumed(mut self, on: bool) -> Self {
        self.retain_until_consumed = on;
        self
    }

    /// Whether any retention rule is set.
    pub(crate) fn has_retention(&self) -> bool {
        self.retain_bytes.is_some() || self.retain_age.is_some() || self.retain_until_consumed
    }

    /// The segment size in force.
    pub fn get_segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The index interval in force.
    pub fn get_index_interval_bytes(&self) -> u32 {
        self.index_interval_bytes
    }

    /// The payload limit in force.
    pub fn get_max_record_bytes(&self) -> u32 {
        self.max_record_bytes
    }

    /// The sync policy in force.
    pub fn get_sync(&self) -> SyncPolicy {
        self.sync
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes {} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(Error::InvalidOptions("index_interval_bytes must be at least 1".into()));
        }
        if self.max_record_bytes > MAX_RECORD_LIMIT {
            return Err(Error::InvalidOptions(format!(
                "max_record_bytes {} is over {MAX_RECORD_LIMIT}",
                self.max_record_bytes
            )));
        }
        if let SyncPolicy::Interval(d) = self.sync
            && d.is_zero()
        {
            return Err(Error::InvalidOptions("SyncPolicy::Interval needs a non-zero interval".into()));
        }
        Ok(())
    }
}

/// Settings of a consumer group, for [`crate::Queue::group_with`]. They are stored with the
/// group: [`crate::Queue::group`] reopens it with the settings it last had.
///
/// ```
/// use segq::GroupOptions;
/// use std::time::Duration;
///
/// let opts = GroupOptions::default().lease(Duration::from_secs(10)).max_attempts(3);
/// assert_eq!(opts.get_max_attempts(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    pub(crate) lease: Duration,
    pub(crate) max_attempts: u32,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions { lease: Duration::from_secs(30), max_attempts: 5 }
    }
}

impl GroupOptions {
    /// How long a delivery stays leased to its consumer: if it is neither acked nor nacked
    /// by then, it is delivered again. Default 30 s; at least 1 ms.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How many deliveries a record gets before it is dead-lettered. Default 5; at least 1.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The lease in force.
    pub fn get_lease(&self) -> Duration {
        self.lease
    }

    /// The attempt limit in force.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.lease < Duration::from_millis(1) {
            return Err(Error::InvalidOptions("a group's lease must be at least 1 ms".into()));
        }
        if self.max_attempts == 0 {
            return Err(Error::InvalidOptions("a group's max_attempts must be at least 1".into()));
        }
        Ok(())
    }
}
