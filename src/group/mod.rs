//! Consumer groups: named, durable cursors over the log with leases, acks, retries and
//! dead letters.
//!
//! A group lives in `groups/<name>/` as a snapshot (`state`) and a journal of the changes
//! since (`journal`). Every change goes to the journal before it takes effect; under
//! [`SyncPolicy::Always`] it is also synced (with group commit) before the call returns.

mod delivery;
mod files;
pub(crate) mod journal;
pub(crate) mod snapshot;
pub(crate) mod state;

pub use delivery::{DeadLetter, Delivery, GroupStats};
pub(crate) use files::{GROUPS_DIR, JOURNAL_FILE, STATE_FILE, check_link, list, remove, validate_name};
use files::{create, remove_temp_files};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use journal::{Journal, UNSYNCED_SNAPSHOT};
use snapshot::{Snapshot, SnapshotSync};
use state::{Clock, GroupState, Op, Slot, later};

use crate::error::{Error, Result};
use crate::fs::sync_dir;
use crate::iter::Iter;
use crate::log::Log;
use crate::options::{GroupOptions, SyncPolicy};
use crate::sync::GroupCommit;

/// A consumer group: its own durable position in the queue, with at-least-once delivery.
///
/// Every record of the queue is delivered to each group; within a group, each record is
/// leased to one consumer at a time. A record is done when acked; a nack or an expired
/// lease delivers it again, up to `max_attempts` deliveries, after which it is a dead
/// letter. Handles are cheap to clone and all handles to one name share its state.
///
/// A worker loop:
/// ```
/// use segq::{Options, Queue};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
///
/// let q = Queue::open(dir.path(), Options::default())?;
/// q.append(b"send invoice 1")?;
/// q.append(b"send invoice 2")?;
///
/// let billing = q.group("billing")?;
/// while let Some(job) = billing.poll(Duration::from_millis(100))? {
///     let ok = !job.payload().is_empty(); // do the work here
///     if ok {
///         billing.ack(job.offset())?;
///     } else {
///         billing.nack(job.offset(), Duration::from_secs(5))?; // try again later
///     }
/// }
/// assert_eq!(billing.ack_floor(), 2);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Group {
    inner: Arc<GroupInner>,
}

#[derive(Debug)]
pub(crate) struct GroupInner {
    name: String,
    dir: PathBuf,
    log: Arc<Log>,
    locked: Mutex<Locked>,
    commit: GroupCommit,
    deleted: AtomicBool,
    /// When `Queue::group` last handed this group out, on the queue's own count: the
    /// groups no handle holds are let go of least recently used first.
    last_use: AtomicU64,
}

#[derive(Debug)]
struct Locked {
    state: GroupState,
    /// `None` once the queue is closed or the group deleted: see [`GroupInner::release`].
    journal: Option<Journal>,
    opts: GroupOptions,
    generation: u64,
    /// Set by a failed write or sync of the group's files: changes are refused until
    /// [`GroupInner::heal`] has written the state again.
    failed: Option<Failure>,
    /// The names of both snapshot files are durable: a sync of the group's directory came
    /// after any write that may have created one. Not known at open: a write that failed
    /// in an earlier run may have created the file, and the snapshot then written to it
    /// would sync only the file.
    names_synced: bool,
    /// Where new records are read from.
    cursor: Option<Iter>,
    /// The sync of the last snapshot [`Locked::compact_lazily`] wrote, while it may run.
    snapshot_sync: Option<JoinHandle<Result<()>>>,
    /// Whether that sync covers the group's directory.
    snapshot_sync_covers_names: bool,
}

/// Why a group takes no changes for now.
#[derive(Debug, Clone)]
struct Failure {
    why: String,
    /// A sync of the journal failed. The kernel may have dropped the pages it could not
    /// write, and a sync tried again can succeed without them: the journal is not synced
    /// again until a snapshot has replaced its entries.
    journal: bool,
}

impl Group {
    /// Opens the group `name` of `log`, creating it (durably) if it does not exist.
    /// `opts`, when given, replaces the stored settings. `settled`: this process flushed
    /// the group and closed it since it last opened it, so its snapshot, the names of its
    /// files and its journal's entries are durable, and nothing needs writing again.
    pub(crate) fn open(log: Arc<Log>, name: &str, opts: Option<GroupOptions>, settled: bool) -> Result<Group> {
        validate_name(name)?;
        if let Some(o) = &opts {
            o.validate()?;
        }
        let opts = opts.map(GroupOptions::as_stored);
        let groups = log.dir().join(GROUPS_DIR);
        let dir = groups.join(name);
        let state_path = dir.join(STATE_FILE);
        let clock = Clock::lazy();
        let created = !state_path.exists();
        if created {
            create(&log, &groups, &dir, opts.unwrap_or_default(), &clock)?;
        }
        remove_temp_files(&dir);
        let snapshot::Latest { snap, path: snap_path, copied } = Snapshot::read_latest(&dir)?;
        let (mut journal, ops, stale) = Journal::open(&dir.join(JOURNAL_FILE), snap.generation)?;
        let mut rolled_back = false;
        match journal.written_by_next_generation() {
            // The journal was restarted for a snapshot that is no longer readable: the
            // changes it held are lost, and the older snapshot would quietly undo them.
            Some(false) => {
                let lost = dir.join(snapshot::file_for(snap.generation.wrapping_add(1)));
                let why = format!("snapshot generation {} is damaged or missing", snap.generation.wrapping_add(1));
                return Err(Error::corrupt(&lost, 0, crate::error::CorruptKind::BadHeader(why)));
            }
            // The same, but the snapshot was written under `SyncPolicy::Never` without
            // waiting for its sync: a power loss lost it and the changes after it, which
            // nothing promised durable. The group goes on from the older snapshot, the state
            // of an earlier moment, without the lost generation's entries.
            Some(true) => rolled_back = true,
            None => {}
        }
        // Written again before anything relies on it:
        // - a snapshot in the file the next generation goes to (put there by hand, or by a
        //   build that kept one file), which the next snapshot would overwrite as the only
        //   copy; the open then writes that next generation over the original at once;
        // - a copy of one already there (a tie), perhaps cut short before its sync;
        // - one written without waiting for its sync, or whose run stopped before any entry
        //   of its generation (a later snapshot goes over the other file). Written, not
        //   only synced: its sync may have failed, and a retried fsync can report success
        //   for pages a failed one dropped. (Not one this open created: it synced it.)
        let copy = copied || snap_path != dir.join(snapshot::file_for(snap.generation));
        let written_again = copy || (!created && !rolled_back && !settled && journal.snapshot_maybe_unsynced());
        if written_again {
            snap.write_again(&dir)?;
            // Its run may also have stopped before the names of the group's directory and of
            // `groups/` were synced (a creation cut short): made durable before this run
            // builds on them.
            sync_dir(&groups)?;
            sync_dir(log.dir())?;
        }
        journal.grow()?;
        let mut state = snap.restore(&clock, log.next_offset());
        // Changes that reach past the log's end are dropped: the log lost those records (or
        // the entry is damaged in a way its checksum missed), and applying them could make
        // the state allocate a slot per offset up to an arbitrary number.
        let mut beyond_log = false;
        for op in ops {
            match op.within(log.next_offset()) {
                Some(op) => state.apply(op, &clock),
                None => beyond_log = true,
            }
        }
        state.expire_leases(&clock);
        let stored = GroupOptions { lease: snap.lease, max_attempts: snap.max_attempts };
        let oversized = journal.oversized();
        let mut locked = Locked {
            state,
            journal: Some(journal),
            opts: stored,
            generation: snap.generation,
            failed: None,
            // Synced with the directory just above.
            names_synced: written_again,
            cursor: None,
            snapshot_sync: None,
            snapshot_sync_covers_names: false,
        };
        // The state must never be ahead of the log (a log that lost its unsynced tail in a
        // machine crash): deliveries past the log's end are forgotten.
        let mut rewrite =
            copy || stale || beyond_log || rolled_back || oversized || locked.state.next() > log.next_offset();
        if rewrite {
            locked.state.truncate(log.next_offset());
        }
        let changed = opts.filter(|o| *o != stored);
        if let Some(o) = changed {
            locked.opts = o;
            locked.state.set_lease(o.lease);
        }
        locked.state.set_max_attempts(locked.opts.max_attempts);
        if locked.state.oldest_needed() < log.first_offset() || locked.state.next() < log.first_offset() {
            locked.state.apply(Op::Skip { offset: log.first_offset() }, &clock);
            rewrite = true;
        }
        if rolled_back {
            // The next snapshot takes the lost one's generation: none of that generation's
            // entries left in the journal may verify for it.
            locked.journal()?.erase()?;
        }
        if rewrite || changed.is_some() {
            locked.compact(&dir, &clock)?;
            locked.journal()?.shrink()?;
        }
        // Nothing is known durable yet, not even the entries found at open (see `Journal::seq`):
        // the first sync covers them with the changes after them. Unless this process
        // flushed them before it closed the group.
        let mut durable = 0;
        if settled && let Some(journal) = &mut locked.journal {
            journal.assume_synced();
            durable = journal.seq();
        }
        let commit = GroupCommit::new(durable).busy_wait(log.options().busy_wait_for_sync);
        let inner = GroupInner {
            name: name.to_string(),
            dir,
            log,
            locked: Mutex::new(locked),
            commit,
            deleted: AtomicBool::new(false),
            last_use: AtomicU64::new(0),
        };
        Ok(Group { inner: Arc::new(inner) })
    }

    /// The group's name.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// assert_eq!(q.group("billing")?.name(), "billing");
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The group's settings.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// assert_eq!(q.group("billing")?.options(), GroupOptions::default());
    /// q.group_with("billing", GroupOptions::default().max_attempts(2))?;
    /// assert_eq!(q.group("billing")?.options().get_max_attempts(), 2);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn options(&self) -> GroupOptions {
        self.inner.lock().opts
    }

    /// Hands out the next record: a retry that is due (an expired lease or a nack's delay
    /// that passed) first, else the next record never delivered to this group. Waits up to
    /// `timeout` for one, sleeping until a record is appended, a lease or delay expires or
    /// the timeout passes; `Duration::ZERO` does not wait.
    ///
    /// The record is leased to the caller for the group's lease time. Under
    /// [`SyncPolicy::Always`] the delivery (and its attempt count) is durable before it is
    /// returned, so a record whose processing crashes the process is dead-lettered after
    /// `max_attempts` crashes; records are delivered only once they are durable in the log.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let g = q.group("workers")?;
    /// assert!(g.poll(Duration::ZERO)?.is_none()); // nothing to do yet
    /// std::thread::scope(|s| {
    ///     s.spawn(|| q.append(b"job"));
    ///     // Sleeps until the other thread's append (or for at most 10 s).
    ///     let job = g.poll(Duration::from_secs(10))?.expect("appended meanwhile");
    ///     assert_eq!(job.payload(), b"job");
    ///     Ok::<(), segq::Error>(())
    /// })?;
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the record's bytes are damaged: the record is then
    /// dead-lettered, so the next poll moves on. [`Error::Closed`], [`Error::GroupDeleted`].
    /// [`Error::Io`] if the group's files cannot be written or synced (a full disk, say).
    /// That stops the group until it has written its whole state again, which each later
    /// call tries first: [`Error::Poisoned`] while that fails. Nothing is lost, and
    /// consumers keep their leases. A poll that fails in the sync of its delivery (under
    /// [`SyncPolicy::Always`]) may have recorded it: the record then counts the attempt,
    /// and is delivered again once its lease runs out.
    pub fn poll(&self, timeout: Duration) -> Result<Option<Delivery>> {
        self.poll_with(timeout, |inner, l, clock| inner.take_next(l, clock, OnDamage::DeadLetter))?.transpose()
    }

    /// Takes up to `max` records at once, as so many [`Group::poll`]s would, but under
    /// [`SyncPolicy::Always`] with one sync for all their deliveries instead of one each.
    /// Waits up to `timeout` for the first record, then returns what is ready without
    /// waiting for more: an empty batch means the timeout ran out (or `max` is 0, which
    /// returns at once).
    ///
    /// Each delivery has its own lease and is acked or nacked on its own (or with
    /// [`Group::ack_batch`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let g = q.group("workers")?;
    /// let jobs = g.poll_batch(2, Duration::ZERO)?;
    /// assert_eq!(jobs.iter().map(|j| j.payload()).collect::<Vec<_>>(), [b"a", b"b"]);
    /// g.ack_batch(&jobs.iter().map(|j| j.offset()).collect::<Vec<_>>())?;
    /// assert_eq!(g.poll_batch(10, Duration::ZERO)?.len(), 1); // what is left
    /// assert!(g.poll_batch(10, Duration::ZERO)?.is_empty());
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`Group::poll`]. A damaged record ends a batch before it: the records taken
    /// until then are returned, and the next call dead-letters it and returns
    /// [`Error::Corrupt`]. So does any other failure once the batch holds a delivery (its
    /// journal full and its snapshot not written, say): the next call reports it.
    pub fn poll_batch(&self, max: usize, timeout: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let taken = self.poll_with(timeout, |inner, l, clock| {
            let mut batch = Vec::new();
            let mut last_seq = None;
            while batch.len() < max {
                // Until the batch holds a delivery, a damaged record is reported at once.
                let on_damage = if batch.is_empty() { OnDamage::DeadLetter } else { OnDamage::Leave };
                let (found, seq) = match inner.take_next(l, clock, on_damage) {
                    Ok(taken) => taken,
                    // A failure part way (a full journal whose snapshot could not be
                    // written, say) ends the batch with the deliveries journaled so far:
                    // dropped, they would stay leased to no one until their leases ran
                    // out, each at the cost of an attempt. The next call meets the failure.
                    Err(_) if !batch.is_empty() => break,
                    Err(e) => return Err(e),
                };
                last_seq = seq.or(last_seq);
                match found {
                    Some(Ok(delivery)) => {
                        // Reserved once there is something to return: an empty poll allocates nothing.
                        if batch.is_empty() {
                            batch.reserve(max.min(MAX_BATCH_RESERVE));
                        }
                        batch.push(delivery);
                    }
                    Some(Err(e)) => return Ok((Some(Err(e)), last_seq)),
                    None => break,
                }
            }
            Ok(((!batch.is_empty()).then_some(Ok(batch)), last_seq))
        })?;
        taken.transpose().map(Option::unwrap_or_default)
    }

    /// Waits up to `timeout` for `take` to find something, looking each time the log or
    /// the group's timers say there may be something new. `take` runs under the group's
    /// lock and returns what it found and the journal sequence to make durable first.
    #[allow(clippy::type_complexity)]
    fn poll_with<T>(
        &self,
        timeout: Duration,
        mut take: impl FnMut(&GroupInner, &mut Locked, &Clock) -> Result<(Option<T>, Option<u64>)>,
    ) -> Result<Option<T>> {
        let inner = &*self.inner;
        let mut deadline = None;
        loop {
            let seen = inner.log.notify.generation();
            let clock = Clock::lazy();
            let (found, seq, wake_at) = {
                let mut l = inner.lock();
                inner.check(&mut l)?;
                let (found, seq) = take(inner, &mut l, &clock)?;
                let wake_at = if found.is_none() { l.state.next_deadline() } else { None };
                (found, seq, wake_at)
            };
            if let Some(seq) = seq {
                inner.make_durable(seq)?;
            }
            if found.is_some() {
                return Ok(found);
            }
            // The timeout counts from the first look, at the time that look read (or reads
            // now): a poll that finds a record at once never reads the clock for it.
            let now = clock.now();
            let deadline = *deadline.get_or_insert_with(|| later(now, timeout));
            if now >= deadline {
                return Ok(None);
            }
            inner.log.notify.wait(seen, wake_at.map_or(deadline, |w| w.min(deadline)));
        }
    }

    /// Marks a delivered record as done: it is never delivered to this group again. Acks
    /// may come in any order; acking a record twice is fine, and acking a dead letter
    /// removes it from the dead letters. Under [`SyncPolicy::Always`] the ack is durable
    /// when this returns, also the second ack of a record, which waits for the first.
    ///
    /// Acks and nacks name an offset, not one delivery of it. A consumer whose lease ran out
    /// can still ack (or nack) the record after it went to another consumer: its ack ends
    /// the record for both, since the work was done once; its nack makes the record due
    /// again while the other consumer still holds it. [`Group::nack_delivery`] and
    /// [`Group::extend_delivery`] act only while the delivery still holds the lease.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b"])?;
    /// let g = q.group("workers")?;
    /// let (a, b) = (g.poll(Duration::ZERO)?.expect("a"), g.poll(Duration::ZERO)?.expect("b"));
    /// g.ack(b.offset())?; // out of order is fine
    /// assert_eq!(g.ack_floor(), 0); // offset 0 is still open
    /// g.ack(a.offset())?;
    /// assert_eq!(g.ack_floor(), 2);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotDelivered`] for an offset the group has not delivered yet, or not since
    /// a [`Group::seek`] back to or before it.
    /// [`Error::Closed`], [`Error::GroupDeleted`], and [`Error::Io`] or [`Error::Poisoned`]
    /// as for [`Group::poll`]. An [`Error::Io`] from the sync of the ack (under
    /// [`SyncPolicy::Always`]), or from a snapshot written once it was journaled, comes
    /// after the ack was recorded: the group's repair writes it out with the rest, so the
    /// record may well count as acked. Its fate is unknown, as for a failed append; an ack
    /// repeated on an acked record does nothing.
    pub fn ack(&self, offset: u64) -> Result<()> {
        self.inner.change_all_delivered(&[offset], |l, _, offset| ack_of(l, offset))
    }

    /// Acks every offset in `offsets`, as so many [`Group::ack`]s would, but under
    /// [`SyncPolicy::Always`] with one sync for them all. An offset the group never delivered
    /// fails the call before anything changes; an I/O error part way poisons the group, as
    /// for [`Group::ack`], and may leave some of them acked.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let g = q.group("workers")?;
    /// let jobs = g.poll_batch(3, Duration::ZERO)?;
    /// g.ack_batch(&[jobs[2].offset(), jobs[0].offset()])?; // any order, any subset
    /// assert_eq!(g.ack_floor(), 1);
    /// // Offset 3 was never delivered: nothing is acked, not even offset 1.
    /// assert!(matches!(g.ack_batch(&[1, 3]), Err(segq::Error::NotDelivered { offset: 3 })));
    /// assert_eq!(g.stats().leased, 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotDelivered`] for the first offset the group has not delivered yet.
    /// Otherwise as for [`Group::ack`].
    pub fn ack_batch(&self, offsets: &[u64]) -> Result<()> {
        self.inner.change_all_delivered(offsets, |l, _, offset| ack_of(l, offset))
    }

    /// Gives a delivered record back, to be delivered again (with the next attempt number)
    /// once `delay` has passed — or dead-lettered, if it has had its `max_attempts`
    /// deliveries. Nacking a record that is already acked or dead does nothing. The delay
    /// is kept in whole milliseconds, rounded up.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"job")?;
    /// let g = q.group("workers")?;
    /// let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// g.nack(job.offset(), Duration::ZERO)?; // retry at once
    /// let retry = g.poll(Duration::ZERO)?.expect("delivered again");
    /// assert_eq!((retry.offset(), retry.attempt()), (job.offset(), 2));
    /// g.nack(retry.offset(), Duration::from_secs(3600))?; // retry in an hour
    /// assert!(g.poll(Duration::ZERO)?.is_none());
    /// assert_eq!(g.stats().waiting, 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotDelivered`] for an offset the group has not delivered yet.
    /// [`Error::Closed`], [`Error::GroupDeleted`], and [`Error::Io`] or [`Error::Poisoned`]
    /// as for [`Group::poll`]; after an [`Error::Io`] the nack may have been recorded, as
    /// for [`Group::ack`].
    pub fn nack(&self, offset: u64, delay: Duration) -> Result<()> {
        let delay_ms = millis(delay);
        self.inner.change_all_delivered(&[offset], |l, clock, offset| nack_of(l, clock, offset, delay_ms))?;
        // A retry may be due at once: wake pollers to look.
        self.inner.log.notify.notify();
        Ok(())
    }

    /// Nacks every offset in `offsets` with the same `delay`, as so many [`Group::nack`]s
    /// would, but under [`SyncPolicy::Always`] with one sync for them all. An offset the
    /// group never delivered fails the call before anything changes; an I/O error part way
    /// poisons the group, as for [`Group::nack`], and may leave some of them nacked.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let g = q.group("workers")?;
    /// let jobs = g.poll_batch(3, Duration::ZERO)?;
    /// g.ack(jobs[1].offset())?;
    /// g.nack_batch(&[jobs[0].offset(), jobs[2].offset()], Duration::ZERO)?; // retry both
    /// let again = g.poll_batch(3, Duration::ZERO)?;
    /// assert_eq!(again.iter().map(|j| (j.offset(), j.attempt())).collect::<Vec<_>>(), [(0, 2), (2, 2)]);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotDelivered`] for the first offset the group has not delivered yet.
    /// Otherwise as for [`Group::nack`].
    pub fn nack_batch(&self, offsets: &[u64], delay: Duration) -> Result<()> {
        let delay_ms = millis(delay);
        self.inner.change_all_delivered(offsets, |l, clock, offset| nack_of(l, clock, offset, delay_ms))?;
        self.inner.log.notify.notify();
        Ok(())
    }

    /// Extends the lease of a record being worked on, for a job that takes longer than the
    /// group's lease: the lease now ends `lease` from now (so a shorter one, even zero, ends
    /// it sooner and the record is delivered again). Returns whether `offset` was leased;
    /// a record that is acked, waiting for a retry or dead is left as it is. A lease that
    /// has run out but whose record has not been delivered again yet is still leased.
    ///
    /// Leases are not written to disk, so this costs no I/O; after a restart every lease
    /// has ended anyway. Like [`Group::ack`], it names an offset, not one delivery:
    /// [`Group::extend_delivery`] extends a lease only while a given delivery holds it.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"long job")?;
    /// let g = q.group_with("workers", GroupOptions::default().lease(Duration::from_secs(30)))?;
    /// let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// // Still working after a while: keep the job for 10 more minutes.
    /// assert!(g.extend_lease(job.offset(), Duration::from_secs(600))?);
    /// // Or give it up now, as a nack with no delay would.
    /// assert!(g.extend_lease(job.offset(), Duration::ZERO)?);
    /// assert_eq!(g.poll(Duration::ZERO)?.expect("due again").attempt(), 2);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotDelivered`] for an offset the group has not delivered yet.
    /// [`Error::Closed`], [`Error::GroupDeleted`]. Not [`Error::Poisoned`]: a lease is
    /// extended in memory while the group cannot write its files, so a worker keeps its
    /// record through a full disk.
    pub fn extend_lease(&self, offset: u64, lease: Duration) -> Result<bool> {
        let inner = &*self.inner;
        let extended = {
            let mut l = inner.lock();
            inner.check_open()?;
            if offset >= l.state.next() {
                return Err(Error::NotDelivered { offset });
            }
            l.state.extend_lease(offset, later(Instant::now(), lease))
        };
        // A shorter lease may make the record due before the deadline pollers sleep to.
        inner.log.notify.notify();
        Ok(extended)
    }

    /// Whether `delivery` is still the lease on its record: nothing has acked, nacked,
    /// dead-lettered or delivered the record again since this group handed it out. A lease
    /// that ran out still holds until another poll takes the record. A worker whose job has
    /// side effects can ask before it commits them, and use [`Group::extend_delivery`] to
    /// keep the record while it works.
    ///
    /// A [`Group::seek`] ends every lease made before it, as does closing the queue: a
    /// delivery made by an earlier open of the queue is never current, nor is one from
    /// another group.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"job")?;
    /// let g = q.group_with("workers", GroupOptions::default().lease(Duration::from_millis(1)))?;
    /// let slow = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// assert!(g.is_current(&slow)?);
    /// // The lease runs out and another worker polls the job.
    /// let other = g.poll(Duration::from_secs(10))?.expect("due again");
    /// assert!(!g.is_current(&slow)?);
    /// assert!(g.is_current(&other)?);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::GroupDeleted`]; not [`Error::Poisoned`], as for
    /// [`Group::extend_lease`].
    pub fn is_current(&self, delivery: &Delivery) -> Result<bool> {
        let inner = &*self.inner;
        let l = inner.lock();
        inner.check_open()?;
        Ok(l.state.holds(delivery.offset(), delivery.attempt, delivery.name))
    }

    /// [`Group::nack`] for this one delivery: gives the record back (or dead-letters it)
    /// only while `delivery` is still its lease ([`Group::is_current`]). Returns whether it
    /// did; `false` changes nothing. A worker whose lease ran out and whose record went to
    /// another worker thus cannot make it due again under the new holder.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"job")?;
    /// let g = q.group_with("workers", GroupOptions::default().lease(Duration::from_millis(1)))?;
    /// let slow = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// let other = g.poll(Duration::from_secs(10))?.expect("due again once the lease ran out");
    /// assert!(g.extend_delivery(&other, Duration::from_secs(60))?);
    /// assert!(!g.nack_delivery(&slow, Duration::ZERO)?); // too late: nothing changes
    /// assert!(g.poll(Duration::ZERO)?.is_none(), "still leased to the other worker");
    /// assert!(g.nack_delivery(&other, Duration::ZERO)?);
    /// assert_eq!(g.poll(Duration::ZERO)?.expect("retried").attempt(), 3);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`Group::nack`].
    pub fn nack_delivery(&self, delivery: &Delivery, delay: Duration) -> Result<bool> {
        let delay_ms = millis(delay);
        let inner = &*self.inner;
        let offset = delivery.offset();
        let seq = {
            let mut l = inner.lock();
            inner.check(&mut l)?;
            if !l.state.holds(offset, delivery.attempt, delivery.name) {
                return Ok(false);
            }
            let clock = Clock::lazy();
            match nack_of(&l, &clock, offset, delay_ms) {
                Some(op) => inner.commit_op(&mut l, op, &clock)?,
                None => return Ok(false),
            }
        };
        inner.make_durable(seq)?;
        inner.log.notify.notify();
        Ok(true)
    }

    /// [`Group::extend_lease`] for this one delivery: moves the lease's end to `lease` from
    /// now only while `delivery` is still the record's lease ([`Group::is_current`]), and
    /// returns whether it did. A worker that extends its lease as it goes learns this way
    /// that it lost the record, instead of extending the lease of the worker that has it.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"long job")?;
    /// let g = q.group_with("workers", GroupOptions::default().lease(Duration::from_secs(30)))?;
    /// let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// // Every so often while the job runs:
    /// if !g.extend_delivery(&job, Duration::from_secs(30))? {
    ///     unreachable!("lost the job to another worker: stop working on it");
    /// }
    /// g.ack(job.offset())?;
    /// assert!(!g.extend_delivery(&job, Duration::from_secs(30))?, "done: nothing to extend");
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::GroupDeleted`]; not [`Error::Poisoned`], as for
    /// [`Group::extend_lease`].
    pub fn extend_delivery(&self, delivery: &Delivery, lease: Duration) -> Result<bool> {
        let inner = &*self.inner;
        let offset = delivery.offset();
        {
            let mut l = inner.lock();
            inner.check_open()?;
            if !l.state.holds(offset, delivery.attempt, delivery.name) {
                return Ok(false);
            }
            l.state.extend_lease(offset, later(Instant::now(), lease));
        }
        inner.log.notify.notify();
        Ok(true)
    }

    /// The records that used up their attempts, by offset. They do not hold back the
    /// ack floor.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"bad job")?;
    /// let g = q.group_with("workers", GroupOptions::default().max_attempts(1))?;
    /// let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// g.nack(job.offset(), Duration::ZERO)?; // out of attempts: dead
    /// assert_eq!(g.dead_letters()?.len(), 1);
    /// assert_eq!(g.ack_floor(), 1); // the dead letter does not hold it back
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::GroupDeleted`], and [`Error::Io`] or [`Error::Poisoned`]
    /// as for [`Group::poll`]: a last attempt whose lease ran out is recorded as dead first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let inner = &*self.inner;
        let mut l = inner.lock();
        inner.check(&mut l)?;
        inner.catch_up(&mut l)?;
        inner.reap(&mut l)?;
        Ok(l.state.dead_letters().iter().map(|(&offset, &attempts)| DeadLetter { offset, attempts }).collect())
    }

    /// Makes a dead letter deliverable again, with a fresh attempt count. Returns whether
    /// `offset` was a dead letter: redriving anything else changes nothing, so two
    /// operators redriving the same record do not get in each other's way.
    ///
    /// ```
    /// use segq::GroupOptions;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"job")?;
    /// let g = q.group_with("workers", GroupOptions::default().max_attempts(1))?;
    /// # let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// # g.nack(job.offset(), Duration::ZERO)?;
    /// // Offset 0 failed its only attempt and is a dead letter; the bug is fixed now.
    /// assert!(g.redrive(0)?);
    /// assert!(!g.redrive(0)?); // not a dead letter any more
    /// let again = g.poll(Duration::ZERO)?.expect("redriven");
    /// assert_eq!((again.offset(), again.attempt()), (0, 1));
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::GroupDeleted`], and [`Error::Io`] or [`Error::Poisoned`]
    /// as for [`Group::poll`].
    pub fn redrive(&self, offset: u64) -> Result<bool> {
        let inner = &*self.inner;
        let seq = {
            let mut l = inner.lock();
            inner.check(&mut l)?;
            inner.reap(&mut l)?;
            if !l.state.dead_letters().contains_key(&offset) {
                return Ok(false);
            }
            inner.commit_op(&mut l, Op::Redrive { offset }, &Clock::lazy())?
        };
        inner.log.notify.notify();
        inner.make_durable(seq)?;
        Ok(true)
    }

    /// The first offset that is neither acked nor dead-lettered: every offset below it is
    /// done. Acking `0..n` in any order gives `n`.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let g = q.group("workers")?;
    /// let jobs: Vec<_> = std::iter::from_fn(|| g.poll(Duration::ZERO).transpose()).collect::<Result<_, _>>()?;
    /// for job in jobs.iter().rev() {
    ///     g.ack(job.offset())?;
    /// }
    /// assert_eq!(g.ack_floor(), 3);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn ack_floor(&self) -> u64 {
        let inner = &*self.inner;
        let mut l = inner.lock();
        if inner.check(&mut l).is_ok() {
            // Best effort: a failure to record an expired last attempt as dead leaves it
            // counted as open, which errs on the side of redelivery.
            let _ = inner.catch_up(&mut l);
            let _ = inner.reap(&mut l);
        }
        l.state.ack_floor()
    }

    /// Moves the group to `offset`: the ack floor becomes `offset` and delivery goes on from
    /// there. Seeking back replays records; seeking forward skips them. `offset` is kept
    /// within the records the queue holds: below the first offset it means the first, past
    /// the end it means the end. Leases and pending retries are dropped, and dead letters at
    /// or above `offset` are forgotten (they will be delivered again). Durable like an ack.
    ///
    /// A consumer still working on a record when the group seeks: after a seek back to or
    /// before that record, its ack or nack returns [`Error::NotDelivered`] (the record is
    /// to be delivered again); after a seek past it, its ack or nack succeeds and changes
    /// nothing. A worker loop should treat `NotDelivered` as "nothing to do", not stop.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// let g = q.group("replay")?;
    /// g.seek(2)?; // skip the first two
    /// assert_eq!(g.poll(Duration::ZERO)?.expect("c").offset(), 2);
    /// g.seek(0)?; // replay from the start
    /// assert_eq!(g.poll(Duration::ZERO)?.expect("a").offset(), 0);
    /// g.seek(100)?; // past the end means the end
    /// assert_eq!(g.ack_floor(), 3);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::GroupDeleted`], and [`Error::Io`] or [`Error::Poisoned`]
    /// as for [`Group::poll`].
    pub fn seek(&self, offset: u64) -> Result<()> {
        let inner = &*self.inner;
        // Back to the first offset: not while a retention pass deletes it.
        let pass = inner.log.retention_pass();
        let seq = {
            let mut l = inner.lock();
            inner.check(&mut l)?;
            let offset = offset.clamp(inner.log.first_offset(), inner.log.next_offset());
            // A record whose last attempt ran out is a dead letter, which the seek keeps,
            // whether or not a call has noticed yet.
            inner.reap(&mut l)?;
            inner.commit_op(&mut l, Op::Seek { offset }, &Clock::lazy())?
        };
        drop(pass);
        inner.log.notify.notify();
        inner.make_durable(seq)
    }

    /// Where the group stands: ack floor, lag, leased, waiting and dead records, as
    /// [`Group::ack_floor`] and [`Group::dead_letters`] would say: a record whose last
    /// allowed lease has run out counts as dead, not waiting. It answers from memory, so
    /// after [`crate::Queue::close`] it still answers, with the group as it stood at the
    /// close. Counting leased and waiting records walks every open record: this is for
    /// monitoring, not for every ack (a worker that wants its progress after each ack
    /// calls [`Group::ack_floor`], which costs nothing per open record).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b"])?;
    /// let stats = q.group("workers")?.stats();
    /// assert_eq!((stats.name.as_str(), stats.ack_floor, stats.lag), ("workers", 0, 2));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn stats(&self) -> GroupStats {
        let inner = &*self.inner;
        let mut l = inner.lock();
        if inner.check(&mut l).is_ok() {
            // Best effort, as in `ack_floor`.
            let _ = inner.catch_up(&mut l);
            let _ = inner.reap(&mut l);
        }
        let (leased, waiting) = l.state.counts(Instant::now());
        let floor = l.state.ack_floor();
        let next = inner.log.next_offset();
        let dead = l.state.dead_letters().len() as u64;
        let undelivered = next.saturating_sub(l.state.next());
        GroupStats {
            name: inner.name.clone(),
            ack_floor: floor,
            next_delivery: l.state.next(),
            lag: undelivered + (leased + waiting) as u64,
            leased: leased as u64,
            waiting: waiting as u64,
            dead,
            lost: l.state.lost,
            lease_ms: millis(l.opts.lease),
            max_attempts: l.opts.max_attempts,
        }
    }

    /// Makes every change of this group so far durable, whatever the sync policy.
    ///
    /// ```
    /// use segq::{Options, Queue, SyncPolicy};
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never))?;
    /// q.append(b"job")?;
    /// let g = q.group("workers")?;
    /// g.ack(g.poll(Duration::ZERO)?.expect("a job is waiting").offset())?; // not synced yet
    /// g.flush()?; // now the ack is durable
    /// assert_eq!(g.ack_floor(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::GroupDeleted`], [`Error::Io`] if the sync fails (which
    /// poisons the group), [`Error::Poisoned`].
    pub fn flush(&self) -> Result<()> {
        self.inner.check(&mut self.inner.lock())?;
        self.inner.flush()
    }

    /// Replaces the group's settings, durably.
    pub(crate) fn configure(&self, opts: GroupOptions) -> Result<()> {
        opts.validate()?;
        let opts = opts.as_stored();
        let inner = &*self.inner;
        let mut l = inner.lock();
        inner.check(&mut l)?;
        if l.opts == opts {
            return Ok(());
        }
        let old = l.opts;
        l.set_options(opts);
        let result = l.compact(&inner.dir, &Clock::lazy());
        if let Err(e) = &result {
            // Refused: the old settings stay, and the next snapshot stores them. (A
            // crash before then may find the new ones, written whole in the page cache.)
            l.set_options(old);
            l.fail(e, false);
        }
        result
    }

    pub(crate) fn inner(&self) -> &Arc<GroupInner> {
        &self.inner
    }

    pub(crate) fn from_inner(inner: Arc<GroupInner>) -> Group {
        Group { inner }
    }
}

impl GroupInner {
    /// Journals the change `decide` picks for each delivered record of `offsets` (`None`:
    /// nothing to change), under one hold of the lock, and makes them durable as the sync
    /// policy says, with one wait for the journal. All offsets are checked before any is
    /// changed.
    fn change_all_delivered(&self, offsets: &[u64], decide: impl Fn(&Locked, &Clock, u64) -> Option<Op>) -> Result<()> {
        let seq = {
            let mut l = self.lock();
            self.check(&mut l)?;
            let next = l.state.next();
            if let Some(&offset) = offsets.iter().find(|&&offset| offset >= next) {
                return Err(Error::NotDelivered { offset });
            }
            let clock = Clock::lazy();
            // A change found made already (a second ack of a record, say, by a worker whose
            // lease ran out) returns once the change is durable, as the first does: its
            // entry is among those journaled so far.
            let mut seq = l.journal()?.seq();
            for &offset in offsets {
                if let Some(op) = decide(&l, &clock, offset) {
                    seq = self.commit_op(&mut l, op, &clock)?;
                }
            }
            seq
        };
        self.make_durable(seq)
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        self.locked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the group takes no more changes: deleted, or its queue closed.
    fn stopped(&self) -> Error {
        if self.deleted.load(Ordering::Acquire) {
            Error::GroupDeleted { name: self.name.clone() }
        } else {
            Error::Closed
        }
    }

    /// Whether the group is still in use: not once deleted, or its queue closing.
    fn check_open(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) || self.log.is_closing() {
            return Err(self.stopped());
        }
        Ok(())
    }

    /// Whether the group takes changes: not once deleted or closing, and after a failed
    /// write only once [`GroupInner::heal`] has written its state again.
    fn check(&self, l: &mut Locked) -> Result<()> {
        self.check_open()?;
        if l.failed.is_some() {
            self.heal(l)?;
        }
        Ok(())
    }

    /// Puts a group whose write or sync failed back into service, once the cause is gone
    /// (space freed on a full disk, say): writes its whole state as a snapshot, synced with
    /// the directory, and starts the journal over. Nothing the failure left behind is
    /// relied on: not the pages of a failed sync, nor a file name that a failed write may
    /// have created. The state in memory is what the files hold, as a reopen would read
    /// it: a change is journaled before it is applied, and one whose entry could not be
    /// written (a full journal whose snapshot failed) is neither. Unlike a reopen, leases
    /// held by this process's consumers stay theirs.
    #[cold]
    #[inline(never)]
    fn heal(&self, l: &mut Locked) -> Result<()> {
        let Some(failure) = l.failed.clone() else { return Ok(()) };
        // Whether the last snapshot's sync succeeded, the journal's flags say (see `rewrite`).
        let _ = l.finish_snapshot_sync();
        match l.rewrite(&self.dir, &Clock::lazy()) {
            Ok(()) => {
                l.failed = None;
                Ok(())
            }
            Err(e) => Err(Error::Poisoned(format!(
                "{}; writing the group's state again failed: {e}; its next call tries again",
                failure.why
            ))),
        }
    }

    /// Journals `op` and applies it.
    fn commit_op(&self, l: &mut Locked, op: Op, clock: &Clock) -> Result<u64> {
        if !l.journal()?.has_room() {
            self.compact_full_journal(l, clock)?;
        }
        let seq = l.journal()?.append(op);
        l.state.apply(op, clock);
        // Checked after the entry: the one that made the snapshot always says it may be
        // unsynced, whatever the thread's speed.
        if l.snapshot_sync.as_ref().is_some_and(JoinHandle::is_finished) {
            note_snapshot_synced(l);
        }
        Ok(seq)
    }

    /// Writes a snapshot and restarts the journal, once in ~10,900 changes: kept out of
    /// line, so that the callers of `commit_op` (every poll and ack) stay small.
    #[cold]
    #[inline(never)]
    fn compact_full_journal(&self, l: &mut Locked, clock: &Clock) -> Result<()> {
        // Restarting the journal overwrites its entries: if they were promised durable (by
        // a flush), the snapshot that replaces them must be durable first.
        let lazily = self.log.options().get_sync() == SyncPolicy::Never && !l.journal()?.promised();
        let result = if lazily { l.compact_lazily(&self.dir, clock) } else { l.compact(&self.dir, clock) };
        if let Err(e) = &result {
            l.fail(e, false);
        }
        result
    }

    /// Under [`SyncPolicy::Always`], waits until the journal is durable up to `seq`.
    fn make_durable(&self, seq: u64) -> Result<()> {
        if self.log.options().get_sync() == SyncPolicy::Always { self.sync_to(seq) } else { Ok(()) }
    }

    fn sync_to(&self, seq: u64) -> Result<()> {
        let sync = || {
            // Released meanwhile: the group was deleted, or the queue closed (whose flush
            // synced every change made before it).
            let job = self.lock().journal().map_err(|_| self.stopped())?.sync_job();
            if let Err(err) = job.run() {
                self.lock().fail(&err, true);
                return Err(err);
            }
            if let Some(journal) = &mut self.lock().journal {
                journal.synced(&job);
            }
            Ok(job.seq)
        };
        // Only a failed sync of the journal stops the syncs: after a failed snapshot, the
        // entries already journaled can still be made durable (those of a batch poll that
        // ended at the failure, say), as an open would find them on top of the older one.
        let failed = || self.lock().failed.as_ref().filter(|f| f.journal).map(|f| Error::Poisoned(f.why.clone()));
        self.commit.wait_for(seq, sync, failed)
    }

    pub(crate) fn flush(&self) -> Result<()> {
        let seq = {
            let mut l = self.lock();
            // Released: everything was flushed before.
            if l.journal.is_none() {
                return Ok(());
            }
            // After a failure, the state is written again first.
            self.heal(&mut l)?;
            let journal = l.journal()?;
            // Entries that all say their snapshot may be unsynced would let its later loss
            // (damage, by then) roll the group back past them: once flushed, they must not.
            // A synced snapshot replaces them. Otherwise they count on top of their
            // snapshot, which must be durable first.
            let result = if journal.only_unsynced_entries() {
                l.compact(&self.dir, &Clock::lazy())
            } else {
                l.finish_snapshot_sync()
            };
            if let Err(e) = result {
                l.fail(&e, false);
                return Err(e);
            }
            let journal = l.journal()?;
            journal.promise();
            journal.seq()
        };
        self.sync_to(seq)
    }

    /// Lets go of the journal's file and mapping and of the read cursor, once the group
    /// takes no more changes (the queue is closed, or the group deleted): a handle kept
    /// past that holds only the state in memory, which [`Group::stats`] reads.
    pub(crate) fn release(&self) {
        self.lock().release();
    }

    /// Whether the group could be closed and opened again with no change a consumer could
    /// see: no record is leased, and its state is written.
    pub(crate) fn is_idle(&self) -> bool {
        self.lock().idle()
    }

    /// Notes that `Queue::group` handed the group out at `use_count`.
    pub(crate) fn touch(&self, use_count: u64) {
        self.last_use.store(use_count, Ordering::Relaxed);
    }

    pub(crate) fn last_use(&self) -> u64 {
        self.last_use.load(Ordering::Relaxed)
    }

    /// Flushes the group and lets go of its file and mapping, unless a consumer holds a
    /// lease (which a reopen would end) or its state cannot be written: for a group that
    /// no handle holds, which the queue closes to bound the descriptors it keeps. Returns
    /// the lowest offset the group still needs, which no call can change until it is
    /// opened again.
    pub(crate) fn let_go_if_idle(&self) -> Option<u64> {
        if !self.is_idle() {
            return None;
        }
        // Its changes are promised durable by `Queue::flush` and the sync policy: made so
        // now, while its journal is still open.
        self.flush().ok()?;
        let mut l = self.lock();
        // Nothing leased a record meanwhile: no handle holds the group, and the caller
        // keeps any from being made.
        if !l.idle() {
            return None;
        }
        l.release();
        Some(l.state.oldest_needed())
    }

    /// Catches up with the segments retention just deleted: moves the group past their
    /// records (best effort, as in [`Group::stats`]), and drops the read cursor, which holds
    /// the segment it reads from (and its mapping): an idle group's cursor would keep a
    /// deleted one's blocks on disk until its next poll. The next poll finds its place
    /// again through the index.
    pub(crate) fn after_retention(&self) {
        let mut l = self.lock();
        l.cursor = None;
        if self.check(&mut l).is_ok() {
            let _ = self.catch_up(&mut l);
        }
    }

    /// Stops every use of this group. Taken under the group's lock, so no change (and no
    /// snapshot that could recreate its files) is under way once this returns.
    pub(crate) fn mark_deleted(&self) {
        let mut l = self.lock();
        self.deleted.store(true, Ordering::Release);
        l.release();
        self.log.notify.notify();
    }

    /// Moves the group past records that retention deleted, counting those it lost.
    fn catch_up(&self, l: &mut Locked) -> Result<Option<u64>> {
        let first = self.log.first_offset();
        if l.state.oldest_needed() >= first && l.state.next() >= first {
            return Ok(None);
        }
        self.commit_op(l, Op::Skip { offset: first }, &Clock::lazy()).map(Some)
    }

    /// The lowest offset this group still needs, for retention.
    pub(crate) fn oldest_needed(&self) -> u64 {
        self.lock().state.oldest_needed()
    }

    /// Dead-letters every record whose last allowed attempt expired.
    fn reap(&self, l: &mut Locked) -> Result<()> {
        let clock = Clock::lazy();
        if l.state.next_deadline().is_none_or(|at| at > clock.now()) {
            return Ok(());
        }
        // Each one found is dead-lettered before the next is looked for: that takes it off.
        while let Some(offset) = l.state.next_expired_final(clock.now()) {
            self.commit_op(l, Op::Dead { offset }, &clock)?;
        }
        Ok(())
    }

    /// Finds the next delivery and journals it. Returns the delivery (or the error of a
    /// damaged record, which is dead-lettered unless `on_damage` says to leave it) and the
    /// journal sequence to make durable.
    #[allow(clippy::type_complexity)]
    fn take_next(
        &self,
        l: &mut Locked,
        clock: &Clock,
        on_damage: OnDamage,
    ) -> Result<(Option<Result<Delivery>>, Option<u64>)> {
        let mut seq = self.catch_up(l)?;
        while let Some(due) = l.state.due(clock) {
            let offset = due.offset;
            if due.attempts >= l.opts.max_attempts {
                seq = Some(self.commit_op(l, Op::Dead { offset }, clock)?);
                continue;
            }
            match self.log.read(offset) {
                Ok(Some(record)) => {
                    let attempt = due.attempts + 1;
                    seq = Some(self.commit_op(l, Op::Deliver { offset, attempt }, clock)?);
                    return Ok((Some(Ok(Delivery { record, attempt, name: l.state.newest_delivery() })), seq));
                }
                // Deleted by retention since the catch-up above: it and whatever else went
                // are lost (not acked), as at any catch-up.
                Ok(None) if offset < self.log.first_offset() => {
                    let first = self.log.first_offset();
                    seq = Some(self.commit_op(l, Op::Skip { offset: first }, clock)?);
                }
                Ok(None) => seq = Some(self.commit_op(l, Op::Ack { offset }, clock)?),
                Err(Error::Corrupt { .. }) if on_damage == OnDamage::Leave => return Ok((None, seq)),
                Err(e @ Error::Corrupt { .. }) => {
                    seq = Some(self.commit_op(l, Op::Dead { offset }, clock)?);
                    return Ok((Some(Err(e)), seq));
                }
                Err(e) => return Err(e),
            }
        }
        let limit = match self.log.options().get_sync() {
            SyncPolicy::Always => self.log.durable_offset(),
            _ => self.log.next_offset(),
        };
        // Retention may have moved the first offset since the catch-up above: records it
        // deleted are skipped as lost, never passed over as if acked (a delivery past the
        // next offset acks what it jumps).
        let first = self.log.first_offset();
        if l.state.next() < first {
            seq = Some(self.commit_op(l, Op::Skip { offset: first }, clock)?);
        }
        let offset = l.state.next();
        if offset >= limit {
            return Ok((None, seq));
        }
        // New records are read with a cursor that walks the log, cheaper than a lookup each.
        let read = match &mut l.cursor {
            Some(cursor) if cursor.next_offset() == offset => cursor.next().transpose(),
            _ => {
                let mut cursor = Iter::new(self.log.clone(), offset);
                let read = cursor.next().transpose();
                l.cursor = Some(cursor);
                read
            }
        };
        let read = match read {
            Ok(Some(record)) if record.offset() == offset => Ok(Some(record)),
            _ => {
                l.cursor = None;
                self.log.read(offset)
            }
        };
        match read {
            Ok(Some(record)) => {
                seq = Some(self.commit_op(l, Op::Deliver { offset, attempt: 1 }, clock)?);
                Ok((Some(Ok(Delivery { record, attempt: 1, name: l.state.newest_delivery() })), seq))
            }
            Ok(None) => Ok((None, seq)),
            Err(Error::Corrupt { .. }) if on_damage == OnDamage::Leave => {
                // Read again, and reported, by the next poll.
                l.cursor = None;
                Ok((None, seq))
            }
            Err(e @ Error::Corrupt { .. }) => {
                seq = Some(self.commit_op(l, Op::Dead { offset }, clock)?);
                Ok((Some(Err(e)), seq))
            }
            Err(e) => Err(e),
        }
    }
}

/// Takes the result of the finished sync of the last snapshot, so that later entries say
/// it is synced (a power loss can no longer lose it; its loss is damage). A failed sync
/// poisons the group, for its next call to report.
#[cold]
fn note_snapshot_synced(l: &mut Locked) {
    if let Err(e) = l.finish_snapshot_sync() {
        l.fail(&e, false);
    }
}

/// What [`GroupInner::take_next`] does with a damaged record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OnDamage {
    /// Dead-letters it and returns its error.
    DeadLetter,
    /// Leaves it as it is, for the next poll to report: a batch already holds deliveries.
    Leave,
}

/// A batch reserves room for this many deliveries at most before it has them.
const MAX_BATCH_RESERVE: usize = 1024;

/// A delay in whole milliseconds, the unit groups store: rounded up, so that a lease or a
/// nack's delay is never cut short, and saturating.
pub(crate) fn millis(delay: Duration) -> u64 {
    let partial = u128::from(!delay.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(delay.as_millis() + partial).unwrap_or(u64::MAX)
}

/// The change that nacks `offset` with a delay of `delay_ms`: a retry, or a dead letter if
/// it had its `max_attempts` deliveries; nothing if it is not leased or waiting.
fn nack_of(l: &Locked, clock: &Clock, offset: u64, delay_ms: u64) -> Option<Op> {
    match l.state.slot(offset) {
        Some(Slot::Leased { attempts, .. } | Slot::Waiting { attempts, .. }) if attempts >= l.opts.max_attempts => {
            Some(Op::Dead { offset })
        }
        Some(Slot::Leased { .. } | Slot::Waiting { .. }) => {
            Some(Op::Nack { offset, at_ms: clock.now_ms().saturating_add(delay_ms) })
        }
        _ => None,
    }
}

/// The change that acks `offset`, if it is still open (delivered and not acked, or dead).
fn ack_of(l: &Locked, offset: u64) -> Option<Op> {
    let open = match l.state.slot(offset) {
        Some(Slot::Acked) => false,
        Some(_) => true,
        None => l.state.dead_letters().contains_key(&offset),
    };
    open.then_some(Op::Ack { offset })
}

impl Locked {
    /// The journal, until the group is released. (Not `ok_or(Error::Closed)`: building the
    /// error on every call and dropping it cost poll + ack 75 instructions, by callgrind.)
    #[inline]
    fn journal(&mut self) -> Result<&mut Journal> {
        match self.journal.as_mut() {
            Some(journal) => Ok(journal),
            None => Err(Error::Closed),
        }
    }

    fn release(&mut self) {
        // Nothing changes from here on: a failed sync has no one left to tell.
        let _ = self.finish_snapshot_sync();
        self.journal = None;
        self.cursor = None;
    }

    /// Writes a snapshot of the whole state, synced, and starts the journal over.
    fn compact(&mut self, dir: &Path, clock: &Clock) -> Result<()> {
        // It goes over the other snapshot file, which must be durable first.
        self.finish_snapshot_sync()?;
        self.check_not_failed()?;
        let generation = self.generation.wrapping_add(1);
        Snapshot::of(&self.state, generation, self.opts.max_attempts, clock).write_in_place(dir, !self.names_synced)?;
        self.names_synced = true;
        self.journal()?.restart(generation, 0)?;
        self.generation = generation;
        Ok(())
    }

    /// Writes the whole state as a snapshot, synced with the directory, and starts the
    /// journal over: [`GroupInner::heal`]'s work.
    fn rewrite(&mut self, dir: &Path, clock: &Clock) -> Result<()> {
        let generation = if self.journal()?.snapshot_unsynced() {
            // The current generation's snapshot (`g`) may not be durable (its sync failed),
            // and the other file holds the only durable one (`g - 1`): that file is not
            // written over. Generation `g + 2` replaces `g` in its file, under a temporary
            // name renamed into place: until the rename, `g` stays whole, which a process
            // crash needs (the changes between `g - 1` and `g` are nowhere else), and the
            // journal's entries, of `g`, go on counting on top of it. After, they are older
            // than the snapshot and no longer replayed.
            let generation = self.generation.wrapping_add(2);
            Snapshot::of(&self.state, generation, self.opts.max_attempts, clock).write_new(dir)?;
            generation
        } else {
            let generation = self.generation.wrapping_add(1);
            Snapshot::of(&self.state, generation, self.opts.max_attempts, clock).write_in_place(dir, true)?;
            generation
        };
        self.names_synced = true;
        self.journal()?.restart(generation, 0)?;
        self.generation = generation;
        Ok(())
    }

    /// Records a failure: changes are refused until [`GroupInner::heal`] succeeds.
    /// `journal`: it was a sync of the journal (see [`Failure::journal`]).
    fn fail(&mut self, e: &Error, journal: bool) {
        // A failed write may have created a snapshot file whose name is not durable.
        self.names_synced = false;
        match &mut self.failed {
            Some(failure) => failure.journal |= journal,
            None => self.failed = Some(Failure { why: e.to_string(), journal }),
        }
    }

    /// See [`GroupInner::is_idle`].
    fn idle(&self) -> bool {
        self.failed.is_none() && self.journal.is_some() && !self.state.any_leased()
    }

    fn set_options(&mut self, opts: GroupOptions) {
        self.opts = opts;
        self.state.set_lease(opts.lease);
        self.state.set_max_attempts(opts.max_attempts);
    }

    /// [`Locked::compact`] for [`SyncPolicy::Never`], where a change costs ~200 ns and the
    /// snapshot's fsync ~0.2 ms, while no entry of the journal was promised durable (see
    /// `compact_full_journal`): the sync runs on a thread of its own, and the next
    /// compaction, a flush or the release of the group waits for it first. Then one
    /// snapshot file is always durable: the next one is written only over the file of the
    /// generation before this one. The journal's entries carry [`UNSYNCED_SNAPSHOT`], so an
    /// open after a power loss that lost this snapshot goes on from that older one.
    fn compact_lazily(&mut self, dir: &Path, clock: &Clock) -> Result<()> {
        self.finish_snapshot_sync()?;
        self.check_not_failed()?;
        let generation = self.generation.wrapping_add(1);
        let sync = Snapshot::of(&self.state, generation, self.opts.max_attempts, clock)
            .write_unsynced(dir, !self.names_synced)?;
        let covers_names = sync.syncs_dir();
        self.journal()?.restart(generation, UNSYNCED_SNAPSHOT)?;
        self.generation = generation;
        // Handed over once the thread runs: if none can be started, the sync runs here.
        let (tx, rx) = mpsc::channel::<SnapshotSync>();
        match std::thread::Builder::new()
            .name("segq-snapshot".into())
            .spawn(move || rx.recv().map_or(Ok(()), SnapshotSync::run))
        {
            Ok(thread) => {
                let _ = tx.send(sync);
                self.snapshot_sync = Some(thread);
                self.snapshot_sync_covers_names = covers_names;
                Ok(())
            }
            Err(_) => {
                sync.run()?;
                self.names_synced |= covers_names;
                self.journal()?.snapshot_synced();
                Ok(())
            }
        }
    }

    /// A group whose write failed (the sync of its last snapshot, say) writes no snapshot:
    /// the other file may be the only durable one.
    fn check_not_failed(&self) -> Result<()> {
        match &self.failed {
            Some(failure) => Err(Error::Poisoned(failure.why.clone())),
            None => Ok(()),
        }
    }

    /// Waits for the sync of the last snapshot [`Locked::compact_lazily`] wrote.
    fn finish_snapshot_sync(&mut self) -> Result<()> {
        let synced = match self.snapshot_sync.take().map(JoinHandle::join) {
            None => return Ok(()),
            Some(Ok(synced)) => synced,
            Some(Err(_)) => Err(Error::Poisoned("the sync of a group snapshot panicked".into())),
        };
        if synced.is_ok() {
            self.names_synced |= self.snapshot_sync_covers_names;
            if let Some(journal) = &mut self.journal {
                journal.snapshot_synced();
            }
        }
        synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sub-millisecond delay used to be cut to 0: a nack with 500 µs of delay was due at once.
    #[test]
    fn delays_round_up_to_whole_milliseconds_and_saturate() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(500)), 1);
        assert_eq!(millis(Duration::from_millis(7)), 7);
        assert_eq!(millis(Duration::from_nanos(7_000_001)), 8);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
