//! Settings chosen when a queue is opened.

use std::time::Duration;

use crate::error::{Error, Result};

/// When appended records are made durable (synced to the storage device).
///
/// Whatever the policy, a record whose `append` returned survives a crash of the *process*:
/// its bytes are in the kernel's page cache. The policy decides what survives a crash of the
/// *machine* (power loss, kernel panic).
///
/// ```
/// use segq::{Options, SyncPolicy};
/// use std::time::Duration;
///
/// assert_eq!(Options::default().get_sync(), SyncPolicy::Always);
/// let relaxed = Options::default().sync(SyncPolicy::Interval(Duration::from_millis(10)));
/// assert_eq!(relaxed.get_sync(), SyncPolicy::Interval(Duration::from_millis(10)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `append` returns once the record is on stable storage. Appenders on several threads
    /// share one sync (group commit). The default.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"order 1")?;
    /// assert_eq!(q.durable_offset(), 1); // offset 0 is on stable storage
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[default]
    Always,
    /// A background thread syncs everything appended every interval: a machine crash loses
    /// at most about one interval of appends. The interval must not be zero. The thread
    /// wakes once an interval even when nothing was appended: a few milliseconds costs
    /// nothing noticeable, while an interval far below a sync's own time (~100 µs here)
    /// keeps a core busy; for a sync per append, use [`SyncPolicy::Always`].
    ///
    /// ```
    /// use segq::{Options, Queue, SyncPolicy};
    /// use std::time::{Duration, Instant};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Interval(Duration::from_millis(10))))?;
    /// q.append(b"order 1")?; // returns without waiting for a sync
    /// # let deadline = Instant::now() + Duration::from_secs(10);
    /// # while q.durable_offset() < 1 && Instant::now() < deadline {
    /// #     std::thread::sleep(Duration::from_millis(1));
    /// # }
    /// // About 10 ms later, the background thread has synced it.
    /// assert_eq!(q.durable_offset(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    Interval(Duration),
    /// Never sync on its own; the OS writes pages back when it likes. [`crate::Queue::flush`]
    /// and [`crate::Queue::close`] still make everything durable.
    ///
    /// ```
    /// use segq::{Options, Queue, SyncPolicy};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never))?;
    /// q.append(b"order 1")?;
    /// assert_eq!(q.durable_offset(), 0); // in the page cache only
    /// q.flush()?;
    /// assert_eq!(q.durable_offset(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    Never,
}

/// Smallest accepted segment size ([`Options::segment_bytes`]).
///
/// ```
/// use segq::{MIN_SEGMENT_BYTES, Options, Queue};
/// # let dir = tempfile::tempdir()?;
/// assert!(Queue::open(dir.path(), Options::default().segment_bytes(MIN_SEGMENT_BYTES)).is_ok());
/// # let dir = tempfile::tempdir()?;
/// assert!(Queue::open(dir.path(), Options::default().segment_bytes(MIN_SEGMENT_BYTES - 1)).is_err());
/// # Ok::<(), segq::Error>(())
/// ```
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest accepted segment size ([`Options::segment_bytes`]): positions inside a segment
/// are 32-bit.
///
/// ```
/// use segq::{MAX_SEGMENT_BYTES, Options, Queue};
/// # let dir = tempfile::tempdir()?;
/// let err = Queue::open(dir.path(), Options::default().segment_bytes(MAX_SEGMENT_BYTES + 1)).unwrap_err();
/// assert!(matches!(err, segq::Error::InvalidOptions(_)));
/// # Ok::<(), segq::Error>(())
/// ```
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;
/// Largest accepted payload limit ([`Options::max_record_bytes`], 1 GiB): one record plus
/// its headers must fit a segment.
///
/// ```
/// use segq::{MAX_RECORD_LIMIT, Options, Queue};
/// # let dir = tempfile::tempdir()?;
/// let err = Queue::open(dir.path(), Options::default().max_record_bytes(MAX_RECORD_LIMIT + 1)).unwrap_err();
/// assert!(matches!(err, segq::Error::InvalidOptions(_)));
/// # Ok::<(), segq::Error>(())
/// ```
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
    pub(crate) busy_wait_for_sync: bool,
    pub(crate) idle_groups_kept_open: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            index_interval_bytes: 512,
            max_record_bytes: 1 << 20,
            sync: SyncPolicy::Always,
            retain_bytes: None,
            retain_age: None,
            retain_until_consumed: false,
            busy_wait_for_sync: false,
            idle_groups_kept_open: 256,
        }
    }
}

impl Options {
    /// Size each segment file is preallocated to; a segment rolls when the next record does
    /// not fit. Default 64 MiB; from 4 KiB up to 4 GiB − 1. Crash recovery scans at most one
    /// segment, so smaller segments bound recovery time. Once the active segment is half
    /// full, the next one is made ready on a thread of segq's, preallocated too: a queue
    /// takes up to one segment more on disk than its log ([`crate::Stats::spare_bytes`]).
    /// A record (or batch) too big for a
    /// segment of this size gets a segment of its own, sized to fit. A queue reopened with
    /// another size keeps its sealed segments as they are; the active one keeps its length
    /// or grows to the new size, whichever is larger (it never shrinks), and new segments
    /// get the new size.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().segment_bytes(4096))?;
    /// for _ in 0..3 {
    ///     q.append(&[0; 3000])?; // two such records do not fit in 4 KiB
    /// }
    /// assert_eq!(q.stats().segments, 3);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Bytes of records between two entries of a segment's sparse offset index; a read by
    /// offset scans at most this much. Default 512: the index then takes about 1.6 % of the
    /// segment's size with 100-byte records (less with larger ones), stays in the CPU's
    /// caches for a log of a few GiB and a random read walks over a few cache lines only.
    /// Larger values shrink the index and slow random reads. At least 1.
    ///
    /// Where reads by offset at random dominate, a smaller interval pays: with 100-byte
    /// records, 64 indexes every record (an index of ~6.5 % of the data) and made random
    /// reads of a warm 124 MB log ~5 % faster on the machines of docs/PERFORMANCE.md (254–273
    /// against 270–289 ns), with no measurable cost to appends.
    ///
    /// ```
    /// use segq::{Error, Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let opts = Options::default().index_interval_bytes(4096); // a smaller index, longer scans
    /// assert_eq!(opts.get_index_interval_bytes(), 4096);
    /// let zero = Options::default().index_interval_bytes(0);
    /// assert!(matches!(Queue::open(dir.path(), zero), Err(Error::InvalidOptions(_))));
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn index_interval_bytes(mut self, bytes: u32) -> Self {
        self.index_interval_bytes = bytes;
        self
    }

    /// Largest payload accepted, in bytes. Default 1 MiB; at most 1 GiB. A bigger payload is
    /// [`Error::RecordTooLarge`].
    ///
    /// ```
    /// use segq::{Error, Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().max_record_bytes(16))?;
    /// q.append(&[7; 16])?;
    /// assert!(matches!(q.append(&[7; 17]), Err(Error::RecordTooLarge { size: 17, limit: 16 })));
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn max_record_bytes(mut self, bytes: u32) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// When appends are made durable. Default [`SyncPolicy::Always`].
    ///
    /// ```
    /// use segq::{Options, SyncPolicy};
    ///
    /// let opts = Options::default().sync(SyncPolicy::Never);
    /// assert_eq!(opts.get_sync(), SyncPolicy::Never);
    /// ```
    #[must_use]
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// Keep at most about this many bytes of log: once the segment files add up to more,
    /// the oldest sealed segments are deleted, whole. The active segment is never deleted,
    /// so the log can exceed this by up to one segment. Count one more segment on disk for
    /// the spare made ready for the next roll ([`crate::Stats::spare_bytes`]). Default: no
    /// limit.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).retain_bytes(8192))?;
    /// for _ in 0..10 {
    ///     q.append(&[0; 3000])?; // one record per segment
    /// }
    /// assert!(q.stats().bytes_on_disk <= 8192);
    /// assert_eq!(q.first_offset(), 8); // records 0 to 7 are gone
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn retain_bytes(mut self, bytes: u64) -> Self {
        self.retain_bytes = Some(bytes);
        self
    }

    /// Delete sealed segments whose newest record is older than this. Default: no limit.
    ///
    /// Like every retention rule, it is applied when a segment is sealed and by
    /// [`crate::Queue::enforce_retention`], not by a timer.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// let opts = Options::default().segment_bytes(4096).retain_age(Duration::from_secs(3600));
    /// let q = Queue::open(dir.path(), opts)?;
    /// for _ in 0..3 {
    ///     q.append(&[0; 3000])?; // one record per segment
    /// }
    /// assert_eq!(q.enforce_retention()?.segments_deleted, 0); // nothing is an hour old yet
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn retain_age(mut self, age: Duration) -> Self {
        self.retain_age = Some(age);
        self
    }

    /// Never delete a record that some consumer group has not acked, and delete a sealed
    /// segment as soon as every group has acked all of it (even without a size or age
    /// limit: consumed data goes, as in a work queue). Dead letters count as not acked.
    /// With no group at all, nothing counts as consumed. Default: false.
    ///
    /// When this is on, [`Options::retain_bytes`] and [`Options::retain_age`] are not
    /// consulted. Acks do not start a retention pass: an acked segment goes at the next
    /// roll or [`crate::Queue::enforce_retention`].
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).retain_until_consumed(true))?;
    /// let workers = q.group("workers")?;
    /// for _ in 0..3 {
    ///     q.append(&[0; 3000])?; // one record per segment
    /// }
    /// assert_eq!(q.stats().segments, 3); // nothing is acked, so nothing goes
    /// while let Some(job) = workers.poll(Duration::ZERO)? {
    ///     workers.ack(job.offset())?;
    /// }
    /// assert_eq!(q.enforce_retention()?.segments_deleted, 2); // all but the active segment
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn retain_until_consumed(mut self, on: bool) -> Self {
        self.retain_until_consumed = on;
        self
    }

    /// Whether threads that wait for a sync already in flight (group commit: appends under
    /// [`SyncPolicy::Always`], `flush`, acks under `Always`) yield the CPU in a loop instead
    /// of sleeping, when the sync should end within 250 µs. Default off.
    ///
    /// Waking a sleeping thread costs its waker a system call and an interrupt to the CPU
    /// that will run it, and with more appending threads than cores the threads woken at
    /// the end of a sync take turns: on the 2-core machines of docs/PERFORMANCE.md, 16
    /// appending threads spent ~70 µs of each ~180 µs group-commit cycle on wake-ups, and
    /// turning this on made them 7–36 % faster. The price is CPU: the waiters keep every
    /// core busy for as long as a sync runs, time other threads of the process could have
    /// used. A disk whose syncs take longer than 250 µs, or a sync that overruns, lets the
    /// waiters sleep as usual.
    ///
    /// Turn it on only where the appenders have the cores to themselves. Beside one
    /// CPU-bound thread of the same process, 16 appenders became slower with it, not faster
    /// (16–55 k against 65–76 k appends/s over four runs; 4 appenders 11 k against 24 k):
    /// a leader whose sync has ended must wait for a core behind the threads that yield.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().busy_wait_for_sync(true))?;
    /// std::thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| q.append(b"durable once this returns").unwrap());
    ///     }
    /// });
    /// assert_eq!(q.durable_offset(), 4);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn busy_wait_for_sync(mut self, on: bool) -> Self {
        self.busy_wait_for_sync = on;
        self
    }

    /// How many consumer groups that no [`crate::Group`] handle holds stay open, for the
    /// next [`crate::Queue::group`] to find at no cost (default 256). An open group keeps
    /// one file descriptor and a 256 KiB mapping of its journal. When a newly opened group
    /// takes the count past this, the least recently used half of them are flushed and
    /// closed; the next `group` call opens such a group again from its files, as it was.
    /// Never closed, and not counted: a group a handle holds, one with a leased record
    /// (also one whose lease ran out but that no other poll took: a reopen ends every
    /// lease), and one whose state could not be written.
    ///
    /// A service with thousands of groups thus keeps a bounded number of descriptors, as
    /// long as it drops the handles of the groups it is not using. Raise it where
    /// descriptors are plentiful and groups are reopened often; each reopen reads the
    /// group's files.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().idle_groups_kept_open(2))?;
    /// q.append(b"job")?;
    /// for tenant in ["a", "b", "c", "d"] {
    ///     let g = q.group(tenant)?; // the handle is dropped at the end of each turn
    ///     g.ack(g.poll(std::time::Duration::ZERO)?.expect("a job").offset())?;
    /// }
    /// // "a" was closed by the time "c" was opened, and opens again as it was.
    /// assert_eq!(q.group("a")?.ack_floor(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn idle_groups_kept_open(mut self, groups: usize) -> Self {
        self.idle_groups_kept_open = groups;
        self
    }

    /// How many groups no handle holds stay open.
    ///
    /// ```
    /// assert_eq!(segq::Options::default().get_idle_groups_kept_open(), 256);
    /// ```
    pub fn get_idle_groups_kept_open(&self) -> usize {
        self.idle_groups_kept_open
    }

    /// Whether any retention rule is set.
    pub(crate) fn has_retention(&self) -> bool {
        self.retain_bytes.is_some() || self.retain_age.is_some() || self.retain_until_consumed
    }

    /// The segment size in force.
    ///
    /// ```
    /// assert_eq!(segq::Options::default().get_segment_bytes(), 64 << 20);
    /// ```
    pub fn get_segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The index interval in force.
    ///
    /// ```
    /// assert_eq!(segq::Options::default().get_index_interval_bytes(), 512);
    /// ```
    pub fn get_index_interval_bytes(&self) -> u32 {
        self.index_interval_bytes
    }

    /// The payload limit in force.
    ///
    /// ```
    /// assert_eq!(segq::Options::default().get_max_record_bytes(), 1 << 20);
    /// ```
    pub fn get_max_record_bytes(&self) -> u32 {
        self.max_record_bytes
    }

    /// The sync policy in force.
    ///
    /// ```
    /// assert_eq!(segq::Options::default().get_sync(), segq::SyncPolicy::Always);
    /// ```
    pub fn get_sync(&self) -> SyncPolicy {
        self.sync
    }

    /// Whether waiters for a sync yield instead of sleeping; see
    /// [`Options::busy_wait_for_sync`].
    ///
    /// ```
    /// use segq::Options;
    ///
    /// assert!(!Options::default().get_busy_wait_for_sync());
    /// assert!(Options::default().busy_wait_for_sync(true).get_busy_wait_for_sync());
    /// ```
    pub fn get_busy_wait_for_sync(&self) -> bool {
        self.busy_wait_for_sync
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
    /// by then, it is delivered again. Default 30 s; at least 1 ms. The group stores its
    /// lease in whole milliseconds, so the lease in force is this one rounded up to them:
    /// the one a reopen reads back (`Duration::MAX` becomes `u64::MAX` ms).
    ///
    /// ```
    /// use segq::{GroupOptions, Options, Queue};
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = Queue::open(dir.path(), Options::default())?;
    /// q.append(b"job")?;
    /// let g = q.group_with("workers", GroupOptions::default().lease(Duration::from_millis(20)))?;
    /// let first = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// // No ack within 20 ms: the lease expires and the job is delivered again.
    /// let again = g.poll(Duration::from_secs(10))?.expect("redelivered");
    /// assert_eq!((again.offset(), again.attempt()), (first.offset(), 2));
    ///
    /// let rounded = q.group_with("other", GroupOptions::default().lease(Duration::from_micros(1500)))?;
    /// assert_eq!(rounded.options().get_lease(), Duration::from_millis(2));
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How many deliveries a record gets before it is dead-lettered. Default 5; at least 1.
    ///
    /// A new limit (through [`Queue::group_with`](crate::Queue::group_with)) applies to the
    /// records already in the group when they next fall due: one leased or waiting after a
    /// nack keeps its delivery, and when its lease ends or its delay passes it is
    /// dead-lettered if it has had as many deliveries as the new limit allows, with its
    /// count. Records dead-lettered under a lower limit stay dead letters until
    /// [`Group::redrive`](crate::Group::redrive), which starts their count again.
    ///
    /// ```
    /// use segq::{GroupOptions, Options, Queue};
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = Queue::open(dir.path(), Options::default())?;
    /// q.append(b"poison pill")?;
    /// let g = q.group_with("workers", GroupOptions::default().max_attempts(2))?;
    /// for _ in 0..2 {
    ///     let job = g.poll(Duration::ZERO)?.expect("delivered");
    ///     g.nack(job.offset(), Duration::ZERO)?;
    /// }
    /// assert!(g.poll(Duration::ZERO)?.is_none()); // a dead letter now
    /// assert_eq!(g.dead_letters()?[0].attempts(), 2);
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The lease in force.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// assert_eq!(segq::GroupOptions::default().get_lease(), Duration::from_secs(30));
    /// ```
    pub fn get_lease(&self) -> Duration {
        self.lease
    }

    /// The attempt limit in force.
    ///
    /// ```
    /// assert_eq!(segq::GroupOptions::default().get_max_attempts(), 5);
    /// ```
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

    /// These options as a group keeps them: the lease in the whole milliseconds it stores,
    /// rounded up, so that the options in force are the ones a reopen reads back.
    pub(crate) fn as_stored(self) -> GroupOptions {
        GroupOptions { lease: Duration::from_millis(crate::group::millis(self.lease)), ..self }
    }
}
