//! What consumers get back from a group: deliveries, dead letters and statistics.

use crate::record::Record;

/// One record handed to a consumer by [`Group::poll`](super::Group::poll).
///
/// ```
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append(b"job")?;
/// let g = q.group("workers")?;
/// let d = g.poll(Duration::ZERO)?.expect("a job is waiting");
/// assert_eq!((d.offset(), d.payload(), d.attempt()), (0, b"job".as_slice(), 1));
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Delivery {
    pub(super) record: Record,
    pub(super) attempt: u32,
    /// With `attempt`, names this delivery among all of its record's: see
    /// [`GroupState::holds`](super::state::GroupState::holds).
    pub(super) name: (u64, u64),
}

impl Delivery {
    /// The record's offset: pass it to [`Group::ack`](super::Group::ack) or [`Group::nack`](super::Group::nack).
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"job")?;
    /// let g = q.group("workers")?;
    /// let d = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// g.ack(d.offset())?;
    /// assert_eq!(g.ack_floor(), d.offset() + 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn offset(&self) -> u64 {
        self.record.offset()
    }

    /// The record's payload.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"resize photo 7")?;
    /// let d = q.group("workers")?.poll(Duration::ZERO)?.expect("a job is waiting");
    /// assert_eq!(d.payload(), b"resize photo 7");
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn payload(&self) -> &[u8] {
        self.record.payload()
    }

    /// Which delivery of this record this is: 1 the first time, 2 after one retry, …
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"flaky job")?;
    /// let g = q.group("workers")?;
    /// let first = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// g.nack(first.offset(), Duration::ZERO)?;
    /// let second = g.poll(Duration::ZERO)?.expect("delivered again");
    /// assert_eq!((first.attempt(), second.attempt()), (1, 2));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the record was appended, in milliseconds since the Unix epoch.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let off = q.append(b"job")?;
    /// let d = q.group("workers")?.poll(Duration::ZERO)?.expect("a job is waiting");
    /// assert_eq!(d.timestamp_ms(), q.read(off)?.expect("appended").timestamp_ms());
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn timestamp_ms(&self) -> u64 {
        self.record.timestamp_ms()
    }

    /// The record itself.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"job")?;
    /// let d = q.group("workers")?.poll(Duration::ZERO)?.expect("a job is waiting");
    /// let record: segq::Record = d.record().clone(); // cheap: the payload is not copied
    /// assert_eq!((record.offset(), record.payload()), (d.offset(), d.payload()));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn record(&self) -> &Record {
        &self.record
    }
}

/// A record that used up its attempts, as listed by [`Group::dead_letters`](super::Group::dead_letters).
///
/// ```
/// use segq::GroupOptions;
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append(b"bad job")?;
/// let g = q.group_with("workers", GroupOptions::default().max_attempts(1))?;
/// let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
/// g.nack(job.offset(), Duration::ZERO)?; // its only attempt failed
/// let dead = g.dead_letters()?;
/// assert_eq!((dead[0].offset(), dead[0].attempts()), (0, 1));
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub(super) offset: u64,
    pub(super) attempts: u32,
}

impl DeadLetter {
    /// The record's offset.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append_batch(&[b"good".as_slice(), b"bad"])?;
    /// let g = q.group_with("workers", GroupOptions::default().max_attempts(1))?;
    /// while let Some(job) = g.poll(Duration::ZERO)? {
    ///     if job.payload() == b"bad" { g.nack(job.offset(), Duration::ZERO)? } else { g.ack(job.offset())? }
    /// }
    /// let offsets: Vec<u64> = g.dead_letters()?.iter().map(|d| d.offset()).collect();
    /// assert_eq!(offsets, [1]);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many deliveries were made before it was dead-lettered. A record whose bytes were
    /// found damaged before its first delivery is dead-lettered with 0 attempts; one found
    /// damaged when it was due again keeps the attempts it had.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"flaky job")?;
    /// let g = q.group_with("workers", GroupOptions::default().max_attempts(3))?;
    /// while let Some(job) = g.poll(Duration::ZERO)? {
    ///     g.nack(job.offset(), Duration::ZERO)?; // it fails every time
    /// }
    /// assert_eq!(g.dead_letters()?[0].attempts(), 3);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// Where a group stands, from [`Group::stats`](super::Group::stats).
///
/// ```
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
/// let g = q.group("workers")?;
/// let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
/// g.ack(job.offset())?;
/// g.poll(Duration::ZERO)?.expect("a second job");
/// let stats = g.stats();
/// assert_eq!((stats.ack_floor, stats.next_delivery, stats.leased, stats.lag), (1, 2, 1, 2));
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// First offset neither acked nor dead-lettered.
    pub ack_floor: u64,
    /// First offset never delivered.
    pub next_delivery: u64,
    /// Records not yet acked or dead: never delivered, leased or waiting for a retry.
    pub lag: u64,
    /// Records leased to a consumer right now.
    pub leased: u64,
    /// Records waiting for a retry (after a nack or an expired lease).
    pub waiting: u64,
    /// Dead letters.
    pub dead: u64,
    /// Records that retention deleted before this group was done with them.
    pub lost: u64,
    /// The group's lease, in milliseconds ([`crate::GroupOptions::lease`]).
    pub lease_ms: u64,
    /// Deliveries before dead-lettering ([`crate::GroupOptions::max_attempts`]).
    pub max_attempts: u32,
}
