//! [`Queue`], the public handle that ties the log, its lock and its flusher together.

use crate::inspect::WriterLock;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::fs::create_dir_durably;
use crate::group::{self, Group, GroupInner};
use crate::iter::Iter;
use crate::log::{Log, Recovery, RetentionReport, Stats};
use crate::options::{GroupOptions, Options, SyncPolicy};
use crate::record::Record;
use crate::sync::Flusher;

/// A durable queue stored in one directory.
///
/// One `Queue` at a time may have a directory open, in this process or any other; a second
/// [`Queue::open`] gets [`Error::Locked`]. All methods take `&self`: share a queue between
/// threads with an `Arc` (or a reference in scoped threads).
///
/// ```
/// use segq::{Options, Queue};
/// # let dir = tempfile::tempdir()?;
///
/// let q = Queue::open(dir.path(), Options::default())?;
/// let first = q.append(b"one")?;
/// let batch = q.append_batch(&[b"two".as_slice(), b"three".as_slice()])?;
/// assert_eq!((first, batch), (0, 1..3));
///
/// let payloads: Vec<Vec<u8>> = q.iter_from(0).map(|r| r.map(|r| r.payload().to_vec())).collect::<Result<_, _>>()?;
/// assert_eq!(payloads, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
/// q.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Queue {
    shared: Arc<Shared>,
    log: Arc<Log>,
    lock: Mutex<Option<WriterLock>>,
    flusher: Mutex<Option<Flusher>>,
}

/// What the flusher thread needs too.
#[derive(Debug)]
struct Shared {
    log: Arc<Log>,
    /// Open groups by name: every handle to a name shares one state.
    groups: Mutex<HashMap<String, Arc<GroupInner>>>,
    /// The oldest offset each group still needs, for groups that a retention pass opened
    /// and let go again (see [`Queue::retain`]), and for idle groups closed past
    /// [`Options::idle_groups_kept_open`]. No handle in this process has them open, and no
    /// other process can: they cannot change until one is opened. Locked only with
    /// `groups` held.
    resting: Mutex<HashMap<String, u64>>,
    /// Calls of `Queue::group` so far: the clock of [`GroupInner::last_use`].
    uses: AtomicU64,
}

impl Shared {
    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<GroupInner>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resting(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.resting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the log and every open group durable. A failure, or a group poisoned earlier,
    /// does not stop the others: the first error is returned once all have been tried. A
    /// group deleted meanwhile has nothing left to make durable.
    fn flush(&self) -> Result<()> {
        let log = self.log.flush();
        let groups: Vec<_> = self.groups().values().cloned().collect();
        let flush = |g: &Arc<GroupInner>| match g.flush() {
            Err(Error::GroupDeleted { .. }) => Ok(()),
            done => done,
        };
        groups.iter().map(flush).fold(log, Result::and)
    }
}

impl Queue {
    /// Opens the queue in `dir`, creating the directory (and those missing above it, each
    /// synced into its parent) and an empty queue if missing, and recovering it if it was
    /// not closed cleanly: the valid records are kept and a torn, unsynced tail is cut.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("jobs");
    /// let q = Queue::open(&path, Options::default())?; // creates the directory
    /// q.append(b"kept")?;
    /// q.close()?;
    ///
    /// let q = Queue::open(&path, Options::default())?;
    /// assert_eq!(q.read(0)?.expect("still there").payload(), b"kept");
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Locked`] if the queue is open elsewhere, [`Error::Corrupt`] when the newest
    /// segment's header is damaged or records known to be synced are missing (a segment
    /// file deleted or cut short, zeros where synced records were: kind
    /// [`crate::CorruptKind::Gap`], naming the file and position; going on would give their
    /// offsets to new records; `segq repair` makes the queue open with what is left),
    /// [`Error::InvalidOptions`], or [`Error::Io`] (of kind `InvalidInput` for an empty
    /// path, which is not taken for the current directory). Damage that leaves synced records in
    /// place does not fail the open: they are kept, and reads of a damaged one report it
    /// (see [`crate::Recovery::synced_damage`]).
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Queue> {
        let dir = dir.as_ref();
        options.validate()?;
        if dir.as_os_str().is_empty() {
            // Not the current directory: an empty path is more likely a missing setting.
            let what = "an empty path names no directory (use \".\" for the current one)";
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::InvalidInput, what)));
        }
        if !dir.is_dir() {
            match std::fs::symlink_metadata(dir) {
                // Made meanwhile by an open racing this one: the lock below decides.
                Ok(found) if found.is_dir() => {}
                Ok(found) => {
                    let what = if found.is_symlink() { "a symbolic link to no directory" } else { "not a directory" };
                    return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotADirectory, what)));
                }
                Err(_) => create_dir_durably(dir)?,
            }
        }
        let lock = WriterLock::acquire(dir, true)?;
        let sync = options.sync;
        let log = Arc::new(Log::open(dir, options)?);
        let shared = Arc::new(Shared {
            log: log.clone(),
            groups: Mutex::default(),
            resting: Mutex::default(),
            uses: AtomicU64::new(0),
        });
        let flusher = match sync {
            SyncPolicy::Interval(every) => {
                let weak = Arc::downgrade(&shared);
                let tick = move || match weak.upgrade() {
                    Some(shared) if !shared.log.is_closed() => {
                        // A failure poisons the log or group; their users see it next call.
                        let _ = shared.flush();
                        true
                    }
                    _ => false,
                };
                Some(Flusher::start(every, tick).at(dir)?)
            }
            _ => None,
        };
        Ok(Queue { shared, log, lock: Mutex::new(Some(lock)), flusher: Mutex::new(flusher) })
    }

    /// Appends one record and returns its offset. Offsets start at 0 and are contiguous.
    ///
    /// Under [`SyncPolicy::Always`] it returns once the record is durable.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let first = q.append(b"a")?;
    /// let second = q.append(b"")?; // an empty payload is a record too
    /// assert_eq!((first, second), (0, 1));
    /// assert_eq!(q.next_offset(), 2);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`] (nothing is written), [`Error::Io`] (a full disk when a new
    /// segment is needed: nothing is written and later appends may succeed; or, of kind
    /// `FileTooLarge`, offsets used up: the last offset a record can take is `u64::MAX - 1`,
    /// which only a log whose files were made by hand comes near),
    /// [`Error::Poisoned`] after a failed sync, [`Error::Closed`].
    ///
    /// An [`Error::Io`] from the sync itself (under [`SyncPolicy::Always`]) comes after the
    /// record was written: it poisons the queue, yet the record is readable, and it may or
    /// may not be there after a reopen. Treat its fate as unknown.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        let range = self.log.append(&[payload])?;
        self.after_append();
        Ok(range.start)
    }

    /// Appends several records as one batch, with contiguous offsets: either all are stored
    /// or, on error, none. A batch is also atomic across crashes: recovery never keeps part
    /// of one. Returns the batch's offsets; an empty batch returns an empty range.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let batch = q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
    /// assert_eq!(batch, 0..3);
    /// assert_eq!(q.append_batch(&[])?, 3..3); // empty: nothing is written
    /// assert_eq!(q.read(2)?.expect("in the batch").payload(), b"c");
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::append`]; one payload over the limit fails the whole batch. A failed sync
    /// leaves the whole batch in the same unknown state as a single record.
    pub fn append_batch(&self, payloads: &[&[u8]]) -> Result<Range<u64>> {
        let range = self.log.append(payloads)?;
        self.after_append();
        Ok(range)
    }

    /// Runs retention when an append sealed a segment.
    fn after_append(&self) {
        if self.log.options().has_retention() && self.log.take_rolled() {
            // The append itself succeeded; a failed pass is retried at the next roll, and
            // `enforce_retention` reports its errors to callers who want them.
            let _ = self.retain();
        }
    }

    /// Deletes the sealed segments that the retention options let go (see
    /// [`Options::retain_bytes`], [`Options::retain_age`], [`Options::retain_until_consumed`]),
    /// oldest first, and moves consumer groups that fell behind up to the new first offset.
    /// Runs by itself whenever a segment is sealed; a call waits for a seal in progress.
    ///
    /// Records already read stay valid after their segment is deleted.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = Queue::open(dir.path(), Options::default().segment_bytes(4096))?;
    /// # for _ in 0..5 {
    /// #     q.append(&[0; 3000])?;
    /// # }
    /// # q.close()?;
    /// # drop(q);
    /// // Five segments of one 3000-byte record each, reopened with a size limit:
    /// let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).retain_bytes(8192))?;
    /// assert_eq!(q.stats().segments, 5); // opening deletes nothing
    /// let report = q.enforce_retention()?;
    /// assert_eq!((report.segments_deleted, report.first_offset), (3, 3));
    /// assert!(q.read(0)?.is_none());
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`], or the error that stopped the pass: [`Error::Io`], or
    /// [`Error::Corrupt`] for a damaged last record of the oldest segment (under
    /// [`Options::retain_age`]) or a consumer group that cannot be opened (under
    /// [`Options::retain_until_consumed`]), or [`Error::Poisoned`] for a group whose write
    /// or sync failed (under [`Options::retain_until_consumed`], when the groups' acks
    /// would let a segment go, until the group can write its state again, which each such
    /// pass tries: until then its acks cannot be made durable). Segments deleted before
    /// the error stay deleted.
    /// The passes that run by themselves drop their errors, so retention stops until the
    /// cause is fixed: call this to see why.
    pub fn enforce_retention(&self) -> Result<RetentionReport> {
        self.log.wait_for_seal();
        self.retain()
    }

    /// One retention pass; a segment still being sealed is kept.
    fn retain(&self) -> Result<RetentionReport> {
        if self.log.is_closed() {
            return Err(Error::Closed);
        }
        let opts = self.log.options().clone();
        // Groups created or sought back wait for the pass: what it finds they need stays so.
        let pass = self.log.retention_pass();
        // A close waits for the pass: one that began meanwhile has nothing left to do.
        if self.log.is_closing() {
            return Err(Error::Closed);
        }
        // With `retain_until_consumed`, the lowest offset any group still needs, and the
        // groups open.
        let (needed, open) = if opts.retain_until_consumed {
            // Listed and opened under the lock of the open groups, which `delete_group`
            // takes too: opening a group deleted after the listing would create it again,
            // at the first offset, and hold back retention for good.
            let groups = self.shared.groups();
            let mut resting = self.shared.resting();
            let mut needed = None;
            let mut open = Vec::new();
            for name in group::list(self.log.dir())? {
                let floor = match (groups.get(&name), resting.get(&name)) {
                    (Some(inner), _) => {
                        open.push(inner.clone());
                        inner.oldest_needed()
                    }
                    (None, Some(&floor)) => floor,
                    // Opened for its floor and let go again, so that a queue with more
                    // groups than the process may open files still runs retention.
                    (None, None) => {
                        let group = Group::open(self.log.clone(), &name, None, false)?;
                        let floor = group.inner().oldest_needed();
                        group.inner().flush()?;
                        group.inner().release();
                        resting.insert(name, floor);
                        floor
                    }
                };
                needed = Some(needed.map_or(floor, |n: u64| n.min(floor)));
            }
            (Some(needed), open)
        } else {
            (None, Vec::new())
        };
        let mut flushed = false;
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let report = self.log.retain(&pass, |segment, log_bytes| {
            let end = segment.end_offset().unwrap_or(u64::MAX);
            if let Some(needed) = needed {
                // Consumed data goes; nothing else does. No group: nothing is consumed.
                let consumed = needed.is_some_and(|n| n >= end);
                // Deleted records never come back: the acks that allow it must not either,
                // as unsynced ones would in a power loss (under `Never` and `Interval`). The
                // groups are flushed before the first deletion, and only then: a roll behind
                // slow consumers would sync every open group. (Decided here, on the segment
                // to delete: an append may roll the oldest segment since the floors were read.)
                if consumed && !flushed {
                    for inner in &open {
                        inner.flush()?;
                    }
                    flushed = true;
                }
                return Ok(consumed);
            }
            let over_size = opts.retain_bytes.is_some_and(|max| log_bytes > max);
            let too_old = match opts.retain_age {
                Some(age) => {
                    let newest = segment.newest_timestamp()?;
                    newest.is_some_and(|ts| ts.saturating_add(group::millis(age)) < now_ms)
                }
                None => false,
            };
            Ok(over_size || too_old)
        })?;
        drop(pass);
        if report.segments_deleted > 0 {
            let groups: Vec<_> = self.shared.groups().values().cloned().collect();
            for g in groups {
                g.after_retention();
            }
            // A poll that found its next record deleted under it (between catching up and
            // reading) went to sleep: it looks again, from the new first offset.
            self.log.notify.notify();
        }
        Ok(report)
    }

    /// Segments, bytes on disk, first, next and durable offsets: kept in memory, so this
    /// reads no file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append_batch(&[b"a".as_slice(), b"b"])?;
    /// let stats = q.stats();
    /// assert_eq!((stats.segments, stats.records, stats.next_offset), (1, 2, 2));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.log.stats()
    }

    /// Makes everything appended so far durable, and every change of the open consumer
    /// groups, whatever the sync policy.
    ///
    /// ```
    /// use segq::{Options, Queue, SyncPolicy};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never))?;
    /// q.append(b"a")?;
    /// q.flush()?;
    /// assert_eq!(q.durable_offset(), q.next_offset());
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if a sync fails (which poisons the queue or the group concerned),
    /// [`Error::Poisoned`] after an earlier failed sync, [`Error::Closed`]. A failing or
    /// poisoned group does not keep the log or the other groups from being made durable:
    /// the first error is returned once all have been tried.
    pub fn flush(&self) -> Result<()> {
        self.shared.flush()
    }

    /// The consumer group `name`, created (durably) on first use at the queue's first
    /// offset with [`GroupOptions::default`]; an existing group keeps the settings it has.
    /// An open group keeps one file descriptor and a 256 KiB mapping of its journal while
    /// a handle holds it, and for a while after: see [`Options::idle_groups_kept_open`]
    /// for when the queue closes groups that no handle holds.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"appended before the group existed")?;
    /// let g = q.group("billing")?; // starts at the first offset
    /// assert_eq!(g.poll(Duration::ZERO)?.expect("a record").offset(), 0);
    /// assert_eq!(q.groups()?, ["billing"]);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidGroupName`] unless `name` is 1–128 characters of `[A-Za-z0-9._-]`
    /// other than `.` and `..` (nothing is created then). [`Error::Corrupt`] if the group's
    /// stored files are damaged, [`Error::Io`], [`Error::Closed`].
    pub fn group(&self, name: &str) -> Result<Group> {
        self.open_group(name, None)
    }

    /// The consumer group `name` with these settings, which replace the stored ones. On a
    /// group already open, a new lease applies to later deliveries; records already leased
    /// keep the deadline they were given (see [`Group::extend_lease`] to change one).
    ///
    /// ```
    /// use segq::{GroupOptions, Options, Queue};
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// let g = q.group_with("billing", GroupOptions::default().lease(Duration::from_secs(10)).max_attempts(3))?;
    /// assert_eq!(g.options().get_lease(), Duration::from_secs(10));
    /// q.close()?;
    ///
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// assert_eq!(q.group("billing")?.options().get_max_attempts(), 3); // the settings were stored
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::group`], and [`Error::InvalidOptions`] for a lease under 1 ms or
    /// `max_attempts` of 0 (a new group is not created then).
    pub fn group_with(&self, name: &str, options: GroupOptions) -> Result<Group> {
        self.open_group(name, Some(options))
    }

    fn open_group(&self, name: &str, options: Option<GroupOptions>) -> Result<Group> {
        group::validate_name(name)?;
        if self.log.is_closing() {
            return Err(Error::Closed);
        }
        if let Some(inner) = self.shared.groups().get(name).cloned() {
            inner.touch(self.shared.uses.fetch_add(1, Ordering::Relaxed));
            let g = Group::from_inner(inner);
            if let Some(o) = options {
                g.configure(o)?;
            }
            return Ok(g);
        }
        let g = {
            // A new group starts at the first offset: not while a retention pass deletes it.
            let _pass = self.log.retention_pass();
            // A close may have begun while this waited (it then waits for this in turn).
            if self.log.is_closing() {
                return Err(Error::Closed);
            }
            self.open_locked(&mut self.shared.groups(), name, options)?
        };
        self.let_go_of_idle_groups();
        Ok(g)
    }

    /// [`Queue::open_group`] with the open groups' lock held.
    fn open_locked(
        &self,
        groups: &mut HashMap<String, Arc<GroupInner>>,
        name: &str,
        options: Option<GroupOptions>,
    ) -> Result<Group> {
        let use_count = self.shared.uses.fetch_add(1, Ordering::Relaxed);
        if let Some(inner) = groups.get(name) {
            inner.touch(use_count);
            let g = Group::from_inner(inner.clone());
            if let Some(o) = options {
                g.configure(o)?;
            }
            return Ok(g);
        }
        // One this process flushed and closed opens without writing anything. Once only:
        // an open that fails may have written a snapshot that is not durable, which the
        // next open must write again.
        let settled = self.shared.resting().remove(name).is_some();
        let g = Group::open(self.log.clone(), name, options, settled)?;
        g.inner().touch(use_count);
        groups.insert(name.to_string(), g.inner().clone());
        Ok(g)
    }

    /// Closes the least recently used half of the open groups that no handle holds and
    /// that can be closed, once there are more than [`Options::idle_groups_kept_open`] of
    /// them. Not closed: a group with a leased record (a reopen would end the lease), or
    /// one whose state could not be written. Each is flushed first, and its oldest needed
    /// offset kept for retention, as for the groups a retention pass opens by itself.
    ///
    /// The flushes, an fsync each for a group changed since its last, run before the open
    /// groups' lock is taken to close them: every `Queue::group` call waits for that lock,
    /// and a retention pass too.
    fn let_go_of_idle_groups(&self) {
        let chosen = self.choose_idle_groups();
        for (_, inner) in &chosen {
            // A failure is left to the group's next user: the group then stays open.
            let _ = inner.flush();
        }
        if chosen.is_empty() {
            return;
        }
        let mut groups = self.shared.groups();
        let mut resting = self.shared.resting();
        for (name, inner) in chosen {
            // Still the one open, and no handle made meanwhile: the map's reference and
            // this one. (A handle is only made from another, or from the map under its lock.)
            let unheld = groups.get(&name).is_some_and(|g| Arc::ptr_eq(g, &inner)) && Arc::strong_count(&inner) == 2;
            if !unheld {
                continue;
            }
            // Flushed above, unless it changed since: then this flush syncs under the lock.
            if let Some(floor) = inner.let_go_if_idle() {
                groups.remove(&name);
                resting.insert(name, floor);
            }
        }
    }

    /// The groups [`Queue::let_go_of_idle_groups`] closes, if there are too many open.
    fn choose_idle_groups(&self) -> Vec<(String, Arc<GroupInner>)> {
        let kept = self.log.options().idle_groups_kept_open;
        let groups = self.shared.groups();
        // The map's is the only reference: no handle, and no flush or pass using it (they
        // take theirs under this lock).
        let unheld = groups.values().filter(|g| Arc::strong_count(g) == 1);
        if unheld.clone().count() <= kept {
            return Vec::new();
        }
        // Those that cannot be closed do not count: else they would have the others closed
        // and reopened at every turn.
        let mut idle: Vec<(u64, &String, &Arc<GroupInner>)> = groups
            .iter()
            .filter(|(_, g)| Arc::strong_count(g) == 1 && g.is_idle())
            .map(|(n, g)| (g.last_use(), n, g))
            .collect();
        if idle.len() <= kept {
            return Vec::new();
        }
        idle.sort_unstable_by_key(|&(last_use, _, _)| last_use);
        idle.iter().take(idle.len() - kept / 2).map(|&(_, name, g)| (name.clone(), g.clone())).collect()
    }

    /// Names of the consumer groups, sorted.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.group("shipping")?;
    /// q.group("billing")?;
    /// assert_eq!(q.groups()?, ["billing", "shipping"]);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if the groups' folder cannot be read. (It reads the directory only, so
    /// it still answers after [`Queue::close`].)
    pub fn groups(&self) -> Result<Vec<String>> {
        group::list(self.log.dir())
    }

    /// Deletes a consumer group and its files; handles to it fail with
    /// [`Error::GroupDeleted`] from then on. Deleting a group that does not exist is not
    /// an error.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.group("old")?;
    /// q.delete_group("old")?;
    /// assert!(q.groups()?.is_empty());
    /// q.delete_group("old")?; // already gone: not an error
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidGroupName`], [`Error::Io`], [`Error::Closed`].
    pub fn delete_group(&self, name: &str) -> Result<()> {
        group::validate_name(name)?;
        if self.log.is_closing() {
            return Err(Error::Closed);
        }
        // A group on a disk that is missing stays, rather than seeming deleted until it is back.
        let groups_dir = self.log.dir().join(group::GROUPS_DIR);
        group::check_link(&groups_dir)?;
        group::check_link(&groups_dir.join(name))?;
        // A close holds the pass for its whole run: with it, a close that began meanwhile
        // is seen, and the files are never removed after `close` returned.
        let _pass = self.log.retention_pass();
        if self.log.is_closing() {
            return Err(Error::Closed);
        }
        let mut groups = self.shared.groups();
        if let Some(inner) = groups.remove(name) {
            inner.mark_deleted();
        }
        self.shared.resting().remove(name);
        group::remove(self.log.dir(), name)
    }

    /// Reads the record at `offset`, or `None` outside `first_offset()..next_offset()`. A
    /// record is readable as soon as it is appended, before it is durable (see
    /// [`Queue::durable_offset`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let off = q.append(b"a")?;
    /// assert_eq!(q.read(off)?.expect("just appended").payload(), b"a");
    /// assert!(q.read(off + 1)?.is_none()); // not appended yet
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the record's bytes are damaged: damaged data is never returned
    /// (see the example there). [`Error::Closed`].
    pub fn read(&self, offset: u64) -> Result<Option<Record>> {
        if self.log.is_closed() {
            return Err(Error::Closed);
        }
        self.log.read(offset)
    }

    /// Iterates over the records from `offset` (or from the first offset, if `offset` is
    /// below it) to the end of the log. The iterator follows the live log: once it returns
    /// `None`, calling `next` again yields records appended since.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"a")?;
    /// let mut it = q.iter_from(0);
    /// assert_eq!(it.next().transpose()?.map(|r| r.offset()), Some(0));
    /// assert!(it.next().is_none()); // the end, for now
    /// q.append(b"b")?;
    /// assert_eq!(it.next().transpose()?.map(|r| r.offset()), Some(1));
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// A damaged record is yielded as an [`Error::Corrupt`], and iteration goes on with the
    /// record after it if the damage left its frame intact, else with the first record
    /// after it that the segment's index leads to, or the next segment (see [`crate::Iter`]).
    /// Once the queue is closed the iterator yields nothing more (no [`Error::Closed`]).
    ///
    /// Like [`Queue::read`], it sees a record as soon as it is appended, before it is
    /// durable, even under [`SyncPolicy::Always`] while the appender still waits for its
    /// sync: a machine crash can take such a record back. A reader that must see only
    /// durable records stops below [`Queue::durable_offset`]; consumer groups do so by
    /// themselves under `Always`.
    pub fn iter_from(&self, offset: u64) -> Iter {
        Iter::new(self.log.clone(), offset)
    }

    /// Offset of the first record appended at or after `timestamp_ms` (milliseconds since
    /// the Unix epoch, as [`crate::Record::timestamp_ms`] gives them), or [`Queue::next_offset`] if
    /// every record is older. With [`Group::seek`] it replays a log from a point in time.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"before")?;
    /// std::thread::sleep(std::time::Duration::from_millis(20)); // the clock moves on
    /// let since = q.append(b"since")?;
    /// let at = q.read(since)?.expect("appended").timestamp_ms();
    /// assert_eq!(q.offset_at_time(at)?, since);
    /// assert_eq!(q.offset_at_time(0)?, 0);
    /// assert_eq!(q.offset_at_time(at + 1)?, q.next_offset()); // nothing that recent
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// It is a binary search over the records' timestamps, which are the wall clock at each
    /// append: about log2(records) reads, each checked as [`Queue::read`] checks it. If the
    /// system clock was ever set back, timestamps are not in order everywhere, and the answer
    /// is then an offset where they cross `timestamp_ms`, not necessarily the first.
    ///
    /// Timestamps come from the coarse clock, which lags the wall clock by up to a tick
    /// (a few milliseconds): a record appended just after a wall-clock reading `t` may
    /// carry a timestamp below `t`. To replay everything appended since a moment read
    /// from the wall clock, use [`Queue::offset_since`].
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a record the search reads is damaged. [`Error::Closed`].
    pub fn offset_at_time(&self, timestamp_ms: u64) -> Result<u64> {
        // (Not left to the reads: an empty log makes none.)
        if self.log.is_closed() {
            return Err(Error::Closed);
        }
        let (mut lo, mut hi) = (self.first_offset(), self.next_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.read(mid)? {
                Some(record) if record.timestamp_ms() >= timestamp_ms => hi = mid,
                Some(_) => lo = mid + 1,
                // Deleted by retention meanwhile: the answer is among the records kept.
                None => lo = self.first_offset(),
            }
        }
        Ok(lo)
    }

    /// Where to start to replay every record appended at or after the wall-clock moment
    /// `since`: at or before the first of them, and before it only by records appended in
    /// the last two ticks of the coarse clock before `since` (9 ms with the usual 4 ms
    /// tick), which is how far a timestamp can lag (see [`Queue::offset_at_time`]; a tick
    /// that comes later still, which was not seen here, would make this start late).
    ///
    /// ```
    /// use std::time::SystemTime;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"long ago")?;
    /// std::thread::sleep(std::time::Duration::from_millis(50));
    /// let since = SystemTime::now();
    /// let first = q.append(b"after since")?;
    /// assert_eq!(q.offset_since(since)?, first);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Queue::offset_at_time`].
    pub fn offset_since(&self, since: std::time::SystemTime) -> Result<u64> {
        let ms =
            since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64);
        self.offset_at_time(ms.saturating_sub(crate::record::timestamp_lag_ms()))
    }

    /// Offset of the oldest record kept.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().segment_bytes(4096).retain_bytes(4096))?;
    /// assert_eq!(q.first_offset(), 0);
    /// for _ in 0..3 {
    ///     q.append(&[0; 3000])?; // one record per segment
    /// }
    /// assert_eq!(q.first_offset(), 2); // retention deleted the segments of 0 and 1
    /// assert!(q.read(0)?.is_none());
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn first_offset(&self) -> u64 {
        self.log.first_offset()
    }

    /// Offset the next appended record will get.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// assert_eq!(q.next_offset(), 0);
    /// q.append_batch(&[b"a".as_slice(), b"b"])?;
    /// assert_eq!(q.next_offset(), 2);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn next_offset(&self) -> u64 {
        self.log.next_offset()
    }

    /// Offsets below this are durable.
    ///
    /// ```
    /// use segq::{Options, Queue, SyncPolicy};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never))?;
    /// q.append(b"a")?;
    /// assert_eq!((q.durable_offset(), q.next_offset()), (0, 1)); // not synced yet
    /// q.flush()?;
    /// assert_eq!(q.durable_offset(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn durable_offset(&self) -> u64 {
        self.log.durable_offset()
    }

    /// What opening the queue found: a clean shutdown, or how much was scanned and cut.
    /// [`Recovery`] shows the open after a crash.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// q.append(b"a")?;
    /// q.close()?;
    ///
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// assert!(q.recovery().clean);
    /// assert_eq!(q.recovery().scanned_bytes, 0);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn recovery(&self) -> &Recovery {
        self.log.recovery()
    }

    /// The queue's directory.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// assert_eq!(q.dir(), dir.path());
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn dir(&self) -> &Path {
        self.log.dir()
    }

    /// The options the queue was opened with.
    ///
    /// ```
    /// use segq::{Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default().segment_bytes(1 << 20))?;
    /// assert_eq!(q.options().get_segment_bytes(), 1 << 20);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn options(&self) -> &Options {
        self.log.options()
    }

    /// Flushes everything, records a clean shutdown (so the next open scans nothing) and
    /// releases the directory. Later calls on this handle fail with [`Error::Closed`];
    /// records already read stay valid. Dropping a queue closes it too, ignoring errors.
    /// Closing a closed queue does nothing.
    ///
    /// ```
    /// use segq::{Error, Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// let rec = q.read(q.append(b"a")?)?.expect("just appended");
    /// q.close()?;
    /// assert!(matches!(q.append(b"b"), Err(Error::Closed)));
    /// assert_eq!(rec.payload(), b"a"); // still valid
    /// let q = Queue::open(dir.path(), Options::default())?; // the directory is free again
    /// assert_eq!(q.next_offset(), 1);
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if a final sync fails, or [`Error::Poisoned`] after an earlier failed
    /// sync. The handle is closed and the directory released all the same; when it is the
    /// log's sync that failed, no clean shutdown is recorded, so the next open recovers the
    /// queue as after a crash.
    pub fn close(&self) -> Result<()> {
        // One close at a time: another waits for it, then finds the queue closed. (Running
        // side by side, one's flush failed with `Closed` once the other had closed the log.)
        let mut lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.stop_flusher();
        // Groups first stop taking changes, so that the flush below covers every one that
        // returned: a change checks under its group's lock, which the flush takes. A
        // retention pass stops at its next deletion, and this waits for it (and for a group
        // being created): once `close` returns, nothing of this handle touches the files.
        self.log.begin_close();
        let _pass = self.log.retention_pass();
        let groups = if self.log.is_closed() { Ok(()) } else { self.shared.flush() };
        let result = groups.and(self.log.close());
        let open: Vec<_> = self.shared.groups().values().cloned().collect();
        for group in open {
            group.release();
        }
        drop(lock.take());
        result
    }

    /// Stops the queue as a crash of the process would: no sync, no clean-shutdown record.
    /// What was appended stays in the page cache, as after a real crash. For tests.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.stop_flusher();
        self.log.abandon();
        self.unlock();
    }

    fn stop_flusher(&self) {
        if let Some(mut flusher) = self.flusher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            flusher.stop();
        }
    }

    fn unlock(&self) {
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        fn assert_record<T: Clone + Send + Sync + 'static>() {}
        assert_send_sync::<Queue>();
        assert_send_sync::<Error>();
        assert_record::<Record>();
    }
}
