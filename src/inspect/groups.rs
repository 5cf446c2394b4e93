//! A consumer group's state, decoded from its snapshot and journal and replayed through
//! the same state machine the queue uses.

use std::io::{self, Read};
use std::path::Path;

use super::dir::QueueDir;
use super::{Finding, Severity};
use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::group::journal::{self, JOURNAL_MAGIC};
use crate::group::snapshot::{self, Snapshot};
use crate::group::state::{Clock, Op, Slot};
use crate::segment::header::{self, FILE_HEADER_LEN};

/// Largest group file read: far more than any group writes, and a bound on what a damaged
/// or hostile file can make this read.
const MAX_GROUP_FILE: u64 = 1 << 30;
/// How far past the log's end a journal entry may reach before replay stops.
const MAX_SKIP: u64 = 1 << 20;

/// A record leased to a consumer when the group's files were last written.
///
/// ```
/// use segq::inspect::{QueueDir, read_group};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
/// let g = q.group("mailer")?;
/// let first = g.poll(Duration::ZERO)?.expect("offset 0");
/// g.ack(first.offset())?;
/// let second = g.poll(Duration::ZERO)?.expect("offset 1");
/// g.nack(second.offset(), Duration::from_secs(60))?;
/// let third = g.poll(Duration::ZERO)?.expect("offset 2"); // leased, not acked yet
/// # let _ = third;
/// let report = read_group(&QueueDir::open(dir.path())?, "mailer", q.next_offset())?;
///
/// assert_eq!(report.leased[0].offset, 2);
/// assert_eq!(report.leased[0].attempts, 1);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The record's offset.
    pub offset: u64,
    /// Deliveries made so far, this one included.
    pub attempts: u32,
}

/// A record waiting to be delivered again (after a nack, an expired lease or a restart).
///
/// ```
/// use segq::inspect::{QueueDir, read_group};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
/// let g = q.group("mailer")?;
/// let first = g.poll(Duration::ZERO)?.expect("offset 0");
/// g.ack(first.offset())?;
/// let second = g.poll(Duration::ZERO)?.expect("offset 1");
/// g.nack(second.offset(), Duration::from_secs(60))?;
/// let third = g.poll(Duration::ZERO)?.expect("offset 2"); // leased, not acked yet
/// # let _ = third;
/// let report = read_group(&QueueDir::open(dir.path())?, "mailer", q.next_offset())?;
///
/// let retry = report.waiting[0];
/// assert_eq!((retry.offset, retry.attempts), (1, 1));
/// assert!(retry.due_ms > 0);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retry {
    /// The record's offset.
    pub offset: u64,
    /// Deliveries made so far.
    pub attempts: u32,
    /// When it becomes due, in milliseconds since the Unix epoch.
    pub due_ms: u64,
}

/// Where one consumer group stands, as its files say.
///
/// ```
/// use segq::inspect::{QueueDir, read_group};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append_batch(&[b"a".as_slice(), b"b", b"c"])?;
/// let g = q.group("mailer")?;
/// let first = g.poll(Duration::ZERO)?.expect("offset 0");
/// g.ack(first.offset())?;
/// let second = g.poll(Duration::ZERO)?.expect("offset 1");
/// g.nack(second.offset(), Duration::from_secs(60))?;
/// let third = g.poll(Duration::ZERO)?.expect("offset 2"); // leased, not acked yet
/// # let _ = third;
/// let report = read_group(&QueueDir::open(dir.path())?, "mailer", q.next_offset())?;
///
/// assert_eq!(report.name, "mailer");
/// assert_eq!((report.ack_floor, report.next_delivery, report.lag), (1, 3, 2));
/// assert!(report.findings.is_empty());
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupReport {
    /// The group's name.
    pub name: String,
    /// Generation of its snapshot (how many times it was compacted).
    pub generation: u64,
    /// Its lease, in milliseconds.
    pub lease_ms: u64,
    /// Deliveries a record gets before it is dead-lettered.
    pub max_attempts: u32,
    /// First offset neither acked nor dead-lettered.
    pub ack_floor: u64,
    /// First offset never delivered.
    pub next_delivery: u64,
    /// Records still to do: never delivered, leased or waiting for another delivery (as
    /// [`crate::GroupStats::lag`] counts them).
    pub lag: u64,
    /// Records deleted by retention before this group was done with them.
    pub lost: u64,
    /// Records leased to a consumer. A lease is not on disk with its deadline: these are
    /// the deliveries not yet acked or nacked, which on a closed queue are all due again.
    pub leased: Vec<Lease>,
    /// Records waiting for another delivery.
    pub waiting: Vec<Retry>,
    /// Dead letters with the deliveries each had.
    pub dead_letters: Vec<Lease>,
    /// Journal entries replayed on top of the snapshot.
    pub journal_entries: u64,
    /// Problems with the group's files.
    pub findings: Vec<Finding>,
}

/// Reads the whole of a small file, refusing one over [`MAX_GROUP_FILE`].
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let file = crate::fs::open_regular(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    if len > MAX_GROUP_FILE {
        return Err(Error::corrupt(path, 0, CorruptKind::BadHeader(format!("a group file of {len} bytes is too big"))));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_GROUP_FILE).read_to_end(&mut bytes).at(path)?;
    Ok(bytes)
}

/// The newest valid snapshot of the group whose first snapshot file is `state_path`: a
/// group's snapshots alternate between two files.
fn read_snapshot(state_path: &Path) -> Result<Snapshot> {
    let dir = state_path.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for name in snapshot::FILES {
        let path = dir.join(name);
        let bytes = match read_bounded(&path) {
            Ok(bytes) => Some(bytes),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        files.push((path, bytes));
    }
    snapshot::latest(&files)
}

/// Decodes group `name` of `dir`: its snapshot, then its journal replayed on top.
/// `log_next` is the log's next offset, for the lag.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.group("mailer")?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, read_group};
///
/// let queue = QueueDir::open(dir.path())?;
/// for name in &queue.groups {
///     let group = read_group(&queue, name, 1)?;
///     println!("{name}: {} still to do", group.lag);
/// }
/// assert!(read_group(&queue, "../x", 1).is_err()); // not a group name
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// [`Error::Corrupt`] (naming the file and position) if the snapshot or the journal's
/// header is damaged, as the queue would refuse to open the group; [`Error::Io`] if a file
/// cannot be read.
pub fn read_group(dir: &QueueDir, name: &str, log_next: u64) -> Result<GroupReport> {
    read(dir, name, log_next, true)
}

/// [`read_group`] when the log's end is not known (its newest segment cannot be read):
/// the log ends at `at_least` or later (the newest segment's base, say). The lag counts up
/// to `at_least`, and deliveries past it are not reported as past the log's end.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # let g = q.group("mailer")?;
/// # g.poll(std::time::Duration::ZERO)?;
/// # q.close()?;
/// use segq::inspect::{QueueDir, read_group_past};
///
/// let group = read_group_past(&QueueDir::open(dir.path())?, "mailer", 0)?;
/// assert_eq!(group.next_delivery, 1);
/// assert!(group.findings.is_empty()); // the delivery may well be in the log
/// # Ok::<(), segq::Error>(())
/// ```
///
/// # Errors
/// As [`read_group`].
pub fn read_group_past(dir: &QueueDir, name: &str, at_least: u64) -> Result<GroupReport> {
    read(dir, name, at_least, false)
}

fn read(dir: &QueueDir, name: &str, log_next: u64, end_known: bool) -> Result<GroupReport> {
    crate::group::validate_name(name)?;
    let (state_path, journal_path) = dir.group_files(name);
    // A live group may write a new snapshot and restart its journal between the two reads:
    // read again until both are of the same generation.
    let mut tries = 0;
    let (snap, ops, stale) = loop {
        tries += 1;
        let snap = read_snapshot(&state_path)?;
        let bytes = match read_bounded(&journal_path) {
            Ok(bytes) => bytes,
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::corrupt(&journal_path, 0, CorruptKind::Truncated));
            }
            Err(e) => return Err(e),
        };
        if bytes.len() < FILE_HEADER_LEN {
            return Err(Error::corrupt(&journal_path, bytes.len() as u64, CorruptKind::Truncated));
        }
        header::check(&bytes, JOURNAL_MAGIC, 0).map_err(|kind| Error::corrupt(&journal_path, 0, kind))?;
        if bytes
            .get(FILE_HEADER_LEN..)
            .and_then(|e| journal::decode(e, &journal::EntryCrc::new(snap.generation + 1)))
            .is_some()
        {
            if tries < 3 {
                continue; // A live group wrote its next snapshot between the two reads.
            }
            // As the queue refuses to open the group: the newer snapshot is lost.
            let lost = state_path.with_file_name(snapshot::file_for(snap.generation + 1));
            let why = format!("snapshot generation {} is damaged or missing", snap.generation + 1);
            return Err(Error::corrupt(&lost, 0, CorruptKind::BadHeader(why)));
        }
        let (ops, end) = journal::replay(&bytes, snap.generation);
        // An entry of this generation past the first one that fails its check: a write in
        // the middle was torn or lost, and what follows it is dropped at the next open.
        let crc = journal::EntryCrc::new(snap.generation);
        let stale = bytes[end..]
            .chunks_exact(journal::ENTRY_LEN)
            .position(|e| journal::decode(e, &crc).is_some())
            .map(|i| (end + i * journal::ENTRY_LEN) as u64);
        let again = read_snapshot(&state_path).map(|s| s.generation).ok();
        if again == Some(snap.generation) || tries >= 3 {
            break (snap, ops, stale.map(|at| (end as u64, at)));
        }
    };
    let clock = Clock::lazy();
    // Capped at the log's end, so a damaged snapshot cannot make this allocate a slot per
    // offset of a range that does not exist.
    // Where the log's end is not known, the snapshot's own next delivery is taken as in it.
    let limit = if end_known { log_next } else { log_next.max(snap.next) };
    let mut state = snap.restore(&clock, limit);
    let mut findings = Vec::new();
    if let Some((bad, at)) = stale {
        let what = format!(
            "the entry at byte {bad} does not verify but the one at byte {at} does: a write was lost in the middle, \
             and the changes after it are dropped at the next open"
        );
        findings.push(Finding::damage(&journal_path, bad, what));
    }
    let mut replayed = 0u64;
    for (i, &op) in ops.iter().enumerate() {
        // Delivering far past the last delivery allocates a slot per skipped offset; no
        // journal entry of a real group does that beyond the log's end.
        let reach = match op {
            Op::Deliver { offset, .. } | Op::Dead { offset } => offset,
            _ => 0,
        };
        if reach > state.next().max(log_next).saturating_add(MAX_SKIP) {
            let position = (FILE_HEADER_LEN + i * journal::ENTRY_LEN) as u64;
            let what = format!("entry names offset {reach}, far past the log's end ({log_next}); replay stops here");
            findings.push(Finding::damage(&journal_path, position, what));
            break;
        }
        state.apply(op, &clock);
        replayed += 1;
    }
    if end_known && snap.next.max(state.next()) > log_next {
        findings.push(Finding {
            severity: Severity::Warning,
            file: state_path.clone(),
            position: 0,
            what: format!(
                "the group has delivered up to offset {} but the log ends at {log_next}; the next open forgets those deliveries",
                snap.next.max(state.next())
            ),
        });
    }
    let (mut leased, mut waiting) = (Vec::new(), Vec::new());
    for (offset, slot) in state.exceptions() {
        match slot {
            Slot::Leased { attempts, .. } => leased.push(Lease { offset, attempts }),
            Slot::Waiting { attempts, at } => waiting.push(Retry { offset, attempts, due_ms: clock.ms_of(at) }),
            Slot::Acked | Slot::Dead { .. } => {}
        }
    }
    leased.sort_by_key(|l| l.offset);
    waiting.sort_by_key(|w| w.offset);
    let floor = state.ack_floor();
    Ok(GroupReport {
        name: name.to_string(),
        generation: snap.generation,
        lease_ms: crate::group::millis(snap.lease),
        max_attempts: snap.max_attempts,
        ack_floor: floor,
        next_delivery: state.next(),
        lag: log_next.saturating_sub(state.next()) + (leased.len() + waiting.len()) as u64,
        lost: state.lost,
        leased,
        waiting,
        dead_letters: state.dead_letters().iter().map(|(&offset, &attempts)| Lease { offset, attempts }).collect(),
        journal_entries: replayed,
        findings,
    })
}
