//! A consumer group's state, decoded from its snapshot and journal and replayed through
//! the same state machine the queue uses.

use std::path::Path;

use super::dir::QueueDir;
use super::group_files::{CHUNK, Damaged, FLOOR_AT, JournalReader, NEXT_AT, read_snapshots};
use super::{Finding, Severity};
use crate::error::{CorruptKind, Error, Result};
use crate::group::journal;
use crate::group::snapshot;
use crate::group::state::{Clock, GroupState, Op, Slot};
use crate::segment::header::FILE_HEADER_LEN;

/// How far past the log's end a journal entry may reach before replay passes over it.
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

/// Whether the snapshot file passed over at `path` is still damaged at `position` (with the
/// same generation) when looked at again, a few times 30 ms apart. A live group writes its
/// snapshot in place and cuts the file last, so a file caught mid-write looks damaged
/// until the write ends; damage that stays is real.
fn passed_over_stays(state_path: &Path, path: &Path, position: u64, generation: Option<u64>) -> bool {
    (0..3).all(|_| {
        std::thread::sleep(std::time::Duration::from_millis(30));
        read_snapshots(state_path).is_ok_and(|again| match again.passed_over {
            Some(Damaged { error: Error::Corrupt { path: p, position: at, .. }, generation: g }) => {
                p == path && at == position && g == generation
            }
            _ => false,
        })
    })
}

/// Whether the log of the queue at `path`, measured again now, holds offsets up to
/// `offset`. The log's end was measured before the group's files were read: on a live
/// queue the group may have delivered records appended in between.
fn log_reaches(path: &Path, offset: u64) -> bool {
    QueueDir::open(path).and_then(|dir| super::info(&dir)).is_ok_and(|now| now.next_offset >= offset)
}

fn read(dir: &QueueDir, name: &str, log_next: u64, end_known: bool) -> Result<GroupReport> {
    crate::group::validate_name(name)?;
    let (state_path, journal_path) = dir.group_files(name);
    let clock = Clock::lazy();
    // A live group may write a new snapshot and restart its journal between the two reads:
    // read again until both are of the same generation.
    let mut tries = 0;
    // A lost write in the middle of the journal, as found by the read before: on a live
    // group, an entry being written when its part of the file was read, followed by entries
    // written before the next part was. Damage that is real is found again in the same place.
    let mut stale_before = None;
    let (snaps, mut state, replay) = loop {
        tries += 1;
        let snaps = read_snapshots(&state_path)?;
        let snap = &snaps.snap;
        // Capped at the log's end, so a damaged snapshot cannot make this allocate a slot per
        // offset of a range that does not exist.
        // Where the log's end is not known, the snapshot's own next delivery is taken as in it.
        let limit = if end_known { log_next } else { log_next.max(snap.next) };
        let mut state = snap.restore(&clock, limit);
        let Some(replay) = replay_journal(&journal_path, snap.generation, &mut state, &clock, log_next)? else {
            if tries < 5 {
                // A live group wrote its next snapshot between the two reads: look again, a
                // moment later, so that a group writing snapshots back to back is caught
                // between two of them.
                std::thread::sleep(std::time::Duration::from_millis(5 * tries));
                continue;
            }
            // As the queue refuses to open the group: the newer snapshot is lost.
            let lost = state_path.with_file_name(snapshot::file_for(snap.generation.wrapping_add(1)));
            let why = format!("snapshot generation {} is damaged or missing", snap.generation.wrapping_add(1));
            return Err(Error::corrupt(&lost, 0, CorruptKind::BadHeader(why)));
        };
        let again = read_snapshots(&state_path).map(|s| s.snap.generation).ok();
        let confirmed = replay.stale.is_none() || replay.stale == stale_before;
        if (again == Some(snap.generation) && confirmed) || tries >= 5 {
            let mut replay = replay;
            if !confirmed {
                // Not found twice in the same place: a group too busy to be caught still.
                replay.stale = None;
            }
            break (snaps, state, replay);
        }
        if !confirmed {
            stale_before = replay.stale;
            std::thread::sleep(std::time::Duration::from_millis(5 * tries));
        }
    };
    let snap = snaps.snap;
    // Records retention deleted before the group was done with them: the queue moves the
    // group up to the first offset when it next opens it, counting them lost.
    if let Some(first) = dir.segments.first().map(|s| s.base)
        && (state.oldest_needed() < first || state.next() < first)
    {
        state.apply(Op::Skip { offset: first }, &clock);
    }
    let mut findings = Vec::new();
    if snap.floor > snap.next {
        // FORMAT.md: `floor <= next`. The queue copes: `GroupState::restore` raises `next`
        // to the floor, so the offsets between count as delivered and acked.
        let what = format!(
            "next delivery {} is below the ack floor {} (byte {FLOOR_AT}); the queue raises it to the floor, \
             taking the offsets between as acked",
            snap.next, snap.floor
        );
        findings.push(Finding::warning(&snaps.path, NEXT_AT, what));
    }
    // Rolled back, the group has lost the newer snapshot: the warning below says so.
    if let Some(Damaged { error: Error::Corrupt { path, position, kind }, generation }) = &snaps.passed_over
        && !replay.rolled_back
        && passed_over_stays(&state_path, path, *position, *generation)
    {
        // The queue passes over a snapshot file that fails its checks whenever the other
        // one is valid; it needs it only if the journal has moved on to its generation,
        // which `replay_journal` found not to be the case.
        let using = format!(
            "the group opens from snapshot generation {} in {}",
            snap.generation,
            snaps.path.file_name().unwrap_or_default().to_string_lossy()
        );
        let what = match generation {
            Some(newer) if snapshot::later(*newer, snap.generation) => format!(
                "{kind}: snapshot generation {newer}, cut short by a crash while it was written (or damaged since); \
                 {using} and the journal entries after it, which hold every change since (settings passed with the \
                 newer snapshot are lost)"
            ),
            Some(same) if *same == snap.generation => {
                format!("{kind}: a copy of snapshot generation {same}, cut short or damaged, not needed; {using}")
            }
            Some(older) => format!("{kind}: an older snapshot (generation {older}), not needed; {using}"),
            None => format!("{kind}: passed over, as the other snapshot file is valid; {using}"),
        };
        findings.push(Finding::warning(path, *position, what));
    }
    if replay.rolled_back {
        let what = format!(
            "the journal holds the changes made after snapshot generation {} ({}), which was written without \
             waiting for its sync (SyncPolicy::Never) and is lost, as by a power loss: the group opens from \
             generation {} as it was then, and those changes are lost",
            snap.generation.wrapping_add(1),
            snapshot::file_for(snap.generation.wrapping_add(1)),
            snap.generation
        );
        findings.push(Finding::warning(&journal_path, FILE_HEADER_LEN as u64, what));
    }
    if let Some((bad, at)) = replay.stale {
        let what = format!(
            "the entry at byte {bad} does not verify but the one at byte {at} does: a write was lost in the middle, \
             and the changes after it are dropped at the next open"
        );
        findings.push(Finding::damage(&journal_path, bad, what));
    }
    if let Some((position, reach)) = replay.too_far {
        let what = format!(
            "entry names offset {reach}, far past the log's end ({log_next}); the queue drops it, and any other such"
        );
        findings.push(Finding::damage(&journal_path, position, what));
    }
    let delivered = snap.next.max(state.next());
    if end_known && delivered > log_next && !log_reaches(&dir.path, delivered) {
        findings.push(Finding {
            severity: Severity::Warning,
            file: state_path.clone(),
            position: 0,
            what: format!(
                "the group has delivered up to offset {delivered} but the log ends at {log_next}; the next open forgets those deliveries"
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
        journal_entries: replay.replayed,
        findings,
    })
}

/// What replaying a journal found.
#[derive(Debug, Default)]
struct Replay {
    /// Entries applied.
    replayed: u64,
    /// The journal holds the entries of the next generation, whose snapshot was written
    /// without waiting for its sync (under `SyncPolicy::Never`) and is lost: none applies.
    rolled_back: bool,
    /// `(the entry that ended the journal, a later one of the same generation)`: a write in
    /// the middle was torn or lost.
    stale: Option<(u64, u64)>,
    /// `(position, offset)` of the first entry that reaches so far past the log's end that
    /// replay passed over it.
    too_far: Option<(u64, u64)>,
}

/// Replays the journal at `path` for snapshot generation `generation` onto `state`, a chunk
/// at a time. `None` if it holds an entry of the next generation written after that
/// generation's snapshot was synced: the journal was restarted for a newer snapshot than
/// the one read, and that one is needed.
///
/// The entries end at the first one that does not verify; the rest of the file is then
/// searched for an entry of this generation (see [`Replay::stale`]), and all of it for
/// entries of the next (as [`journal::next_generation_written`]), skipping chunks of zeros,
/// the unused room of a preallocated or sparse file.
fn replay_journal(
    path: &Path,
    generation: u64,
    state: &mut GroupState,
    clock: &Clock,
    log_next: u64,
) -> Result<Option<Replay>> {
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let crc = journal::EntryCrc::new(generation);
    let mut reader = JournalReader::open(path)?;
    let mut replay = Replay::default();
    // Where the entries end, once found.
    let mut end = None;
    let next = journal::EntryCrc::new(generation.wrapping_add(1));
    let after = journal::EntryCrc::new(generation.wrapping_add(2));
    // Once an entry of the next generation is found: whether all of its entries so far were
    // written before its snapshot was synced.
    let mut newer: Option<bool> = None;
    while let Some((start, chunk)) = reader.next_chunk()? {
        if chunk == &ZEROS[..chunk.len()] {
            end.get_or_insert(start);
            continue;
        }
        // A file that ends with part of an entry is read as the queue reads it: as if grown
        // with zeros to the journal's size (which make the entry whole if only zeros were
        // cut off), if the entry fits in that size.
        let whole = chunk.chunks_exact(journal::ENTRY_LEN);
        let cut = whole.remainder();
        let cut_at = start as usize + chunk.len() - cut.len();
        let padded = (!cut.is_empty() && cut_at + journal::ENTRY_LEN <= journal::JOURNAL_BYTES).then(|| {
            let mut entry = [0u8; journal::ENTRY_LEN];
            entry[..cut.len()].copy_from_slice(cut);
            entry
        });
        for (i, entry) in whole.chain(padded.as_ref().map(|e| &e[..])).enumerate() {
            let position = start + (i * journal::ENTRY_LEN) as u64;
            if journal::decode(entry, &next).is_some() {
                let unsynced = entry[journal::FLAGS_AT] & journal::UNSYNCED_SNAPSHOT != 0;
                newer = Some(newer.unwrap_or(true) && unsynced);
            } else if journal::decode(entry, &after).is_some() {
                // As the queue: the next generation's snapshot was synced before any entry
                // of the one after it was written.
                newer = Some(false);
            }
            let op = journal::decode(entry, &crc);
            match (end, op) {
                (None, None) => end = Some(position),
                (None, Some(op)) => {
                    // Delivering far past the last delivery allocates a slot per skipped
                    // offset; no journal entry of a real group does that beyond the log's end.
                    // The queue drops such an entry (as every one past the log's end) and
                    // goes on with the next.
                    let reach = match op {
                        Op::Deliver { offset, .. } | Op::Dead { offset } => offset,
                        _ => 0,
                    };
                    if reach > state.next().max(log_next).saturating_add(MAX_SKIP) || reach == u64::MAX {
                        replay.too_far.get_or_insert((position, reach));
                    } else {
                        state.apply(op, clock);
                        replay.replayed += 1;
                    }
                }
                (Some(bad), Some(_)) => {
                    replay.stale.get_or_insert((bad, position));
                }
                (Some(_), None) => {}
            }
        }
    }
    match newer {
        // As the queue: the journal moved on to a newer snapshot that is lost. Written
        // without waiting for its sync (all of its entries say so), the group rolls back to
        // this one, without that generation's entries, and erases the journal (so its
        // entries of this generation, further on, are not a lost write); otherwise it does
        // not open.
        Some(true) => {
            replay.rolled_back = true;
            replay.stale = None;
        }
        Some(false) => return Ok(None),
        None => {}
    }
    Ok(Some(replay))
}
