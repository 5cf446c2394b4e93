//! The files of a queue directory, listed without opening the queue.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Mark};
use crate::error::{CorruptKind, Error, IoContext, Result};
use crate::group::{self, GROUPS_DIR};
use crate::segment::{self, header::FILE_HEADER_LEN};

/// The longest stretch before a checkpoint mark that [`QueueDir::mark_landing`] reads into
/// memory to judge the mark. Longer ones (no usable index entry in a large segment, or a
/// mark claiming a far position) are not judged: the commands then scan the segment from
/// its start, as recovery does for a mark it drops, and may disagree with recovery where
/// it keeps such a mark over damage.
pub(crate) const MAX_MARK_WINDOW: u64 = 256 << 20;

/// Bytes of a checkpoint file that hold its two slots.
const CHECKPOINT_LEN: usize = 576;
/// Length of one checkpoint slot.
const SLOT_LEN: usize = 64;
/// Position of slot B.
const SLOT_B: usize = 512;

/// One segment file of a queue directory.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// let queue = segq::inspect::QueueDir::open(dir.path())?;
/// let first = &queue.segments[0];
/// assert_eq!(first.base, 0);
/// assert!(first.path.ends_with("00000000000000000000.log"));
/// assert!(first.index.is_some());
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SegmentFile {
    /// The `<base>.log` file.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub path: PathBuf,
    /// Its base offset, from its name.
    pub base: u64,
    /// Its length when the directory was listed.
    pub len: u64,
    /// Its `<base>.index` file, if there is one.
    #[serde(serialize_with = "crate::inspect::lossy::opt_path")]
    pub index: Option<PathBuf>,
}

impl SegmentFile {
    /// Where to start reading for `offset`: the position and offset of the last entry of the
    /// segment's index at or before it, as a hint (the caller checks that a record with that
    /// offset is there). `None` without a usable index, or when the segment start is nearest.
    ///
    /// ```
    /// use segq::inspect::{QueueDir, SegmentReader};
    /// # let dir = tempfile::tempdir()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// for _ in 0..100 {
    ///     q.append(&[7; 100])?;
    /// }
    /// q.close()?;
    ///
    /// let queue = QueueDir::open(dir.path())?;
    /// let (position, offset) = queue.segments[0].index_floor(50).expect("an entry at or before 50");
    /// assert!(offset <= 50);
    /// // A reader can start there instead of at the first record.
    /// let mut reader = SegmentReader::open(&queue.segments[0].path)?;
    /// reader.seek(position, offset);
    /// assert_eq!(reader.next_record()?.expect("a record").offset, offset);
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn index_floor(&self, offset: u64) -> Option<(u64, u64)> {
        let rel = offset.checked_sub(self.base)?;
        super::index::floor(self.index.as_deref()?, self.base, rel)
    }
}

/// One valid slot of the checkpoint file.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// let queue = segq::inspect::QueueDir::open(dir.path())?;
/// let a = queue.checkpoint.slot_a.expect("slot A is written at a clean close");
/// assert!(a.clean);
/// assert_eq!((a.segment_base, a.next_offset), (0, 1));
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointSlot {
    /// Base offset of the segment the position is in.
    pub segment_base: u64,
    /// Byte position in that segment, just past a complete batch.
    pub position: u64,
    /// Offset of the record that would start at `position`.
    pub next_offset: u64,
    /// The queue was closed cleanly with its data ending at `position` (slot A only).
    pub clean: bool,
}

impl CheckpointSlot {
    /// Whether the slot names segment `base` as recovery reads it: that base, and a next
    /// offset not below it. Recovery ignores a slot for any segment it does not name.
    pub(crate) fn names(&self, base: u64) -> bool {
        self.segment_base == base && self.next_offset >= base
    }
}

impl From<Mark> for CheckpointSlot {
    fn from(m: Mark) -> Self {
        CheckpointSlot {
            segment_base: m.segment_base,
            position: m.position,
            next_offset: m.next_offset,
            clean: m.clean,
        }
    }
}

/// What the `checkpoint` file says.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.close()?;
/// let checkpoint = segq::inspect::QueueDir::open(dir.path())?.checkpoint;
/// assert!(checkpoint.present);
/// assert!(!checkpoint.slot_a_damaged && !checkpoint.slot_b_damaged);
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct CheckpointInfo {
    /// The file.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub path: PathBuf,
    /// Whether the file exists.
    pub present: bool,
    /// Its length.
    pub len: u64,
    /// Slot A (written at open and at a clean close), if valid.
    pub slot_a: Option<CheckpointSlot>,
    /// Slot B (written after syncs), if valid.
    pub slot_b: Option<CheckpointSlot>,
    /// Slot A holds bytes but does not verify (segq ignores it).
    pub slot_a_damaged: bool,
    /// Slot B holds bytes but does not verify (segq ignores it).
    pub slot_b_damaged: bool,
}

impl CheckpointInfo {
    /// Reads the checkpoint of the queue in `dir`; a missing file is not an error.
    pub(crate) fn read(dir: &Path) -> Result<CheckpointInfo> {
        let path = dir.join(checkpoint::FILE_NAME);
        let mut info = CheckpointInfo { path: path.clone(), ..Default::default() };
        let file = match crate::fs::open_regular(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(info),
            Err(e) => return Err(Error::io(&path, e)),
        };
        info.present = true;
        info.len = file.metadata().at(&path)?.len();
        let mut bytes = Vec::with_capacity(CHECKPOINT_LEN);
        file.take(CHECKPOINT_LEN as u64).read_to_end(&mut bytes).at(&path)?;
        if bytes.len() >= SLOT_LEN {
            let (a, b) = checkpoint::parse(&bytes);
            info.slot_a = a.map(Into::into);
            info.slot_b = b.map(Into::into);
        }
        let written = |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|s| s.iter().any(|&b| b != 0));
        info.slot_a_damaged = info.slot_a.is_none() && written(0..SLOT_LEN.min(bytes.len()));
        info.slot_b_damaged = info.slot_b.is_none() && written(SLOT_B.min(bytes.len())..bytes.len());
        Ok(info)
    }

    /// The valid slots, with their names.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// let queue = segq::inspect::QueueDir::open(dir.path())?;
    /// for (name, slot) in queue.checkpoint.slots() {
    ///     println!("slot {name}: offset {} at byte {}", slot.next_offset, slot.position);
    /// }
    /// assert_eq!(queue.checkpoint.slots().next().map(|(name, _)| name), Some("A"));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn slots(&self) -> impl Iterator<Item = (&'static str, CheckpointSlot)> + '_ {
        [("A", self.slot_a), ("B", self.slot_b)].into_iter().filter_map(|(n, s)| s.map(|s| (n, s)))
    }
}

/// A queue directory as found on disk: its segment files, checkpoint and groups.
///
/// Listing reads the checkpoint first and the directory second, so that on a live queue
/// every segment the checkpoint names was already there when the directory was listed;
/// the directory is read twice, so that no segment rolled during the first pass is missed.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// # q.append(b"hello")?;
/// # q.group("mailer")?;
/// # q.close()?;
/// let queue = segq::inspect::QueueDir::open(dir.path())?;
/// assert_eq!(queue.segments.len(), 1);
/// assert_eq!(queue.groups, ["mailer"]);
/// assert!(queue.leftovers.is_empty() && queue.incomplete_groups.is_empty());
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueDir {
    /// The directory.
    #[serde(serialize_with = "crate::inspect::lossy::path")]
    pub path: PathBuf,
    /// The segment files, oldest first. The last one is the active (newest) segment.
    pub segments: Vec<SegmentFile>,
    /// The checkpoint file.
    pub checkpoint: CheckpointInfo,
    /// Names of the consumer groups (those with a snapshot file), sorted.
    pub groups: Vec<String>,
    /// Files segq leaves behind only when interrupted: `*.tmp` files and `.index` files
    /// without their segment. The next open of the queue deletes them.
    #[serde(serialize_with = "crate::inspect::lossy::paths")]
    pub leftovers: Vec<PathBuf>,
    /// Folders under `groups/` without a snapshot file (a group half created or deleted).
    #[serde(serialize_with = "crate::inspect::lossy::paths")]
    pub incomplete_groups: Vec<PathBuf>,
    /// Why the consumer groups could not be listed (`groups` is a file instead of a
    /// directory, say), naming the path; [`QueueDir::groups`] is then empty. The log does
    /// not need them and can still be read, as `Queue::open` does.
    pub groups_error: Option<String>,
}

/// The files of one pass over a queue directory.
#[derive(Debug, Default)]
struct Listing {
    /// Segment files, by base.
    segments: Vec<SegmentFile>,
    /// `.index` files, with the base they name.
    indexes: Vec<(u64, PathBuf)>,
    /// `*.tmp` files.
    leftovers: Vec<PathBuf>,
}

impl Listing {
    fn read(path: &Path) -> Result<Listing> {
        let mut listing = Listing::default();
        for entry in fs::read_dir(path).at(path)? {
            let entry = entry.at(path)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = segment::parse_log_name(name) {
                // The length of the file itself, through a symbolic link.
                let len = match fs::metadata(entry.path()) {
                    Ok(m) => m.len(),
                    // A link to nothing is listed (and found damaged when read).
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            && super::walk::dangling_link(&entry.path()).is_some() =>
                    {
                        0
                    }
                    // Deleted by retention since the listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(&entry.path(), e)),
                };
                listing.segments.push(SegmentFile { path: entry.path(), base, len, index: None });
            } else if name == crate::segment::SPARE_NAME {
                // The next segment, readied ahead of the roll; not part of the log.
            } else if name.ends_with(".tmp") {
                listing.leftovers.push(entry.path());
            } else if let Some(digits) = name.strip_suffix(".index")
                && let Some(base) = segment::parse_log_name(&format!("{digits}.log"))
            {
                listing.indexes.push((base, entry.path()));
            }
        }
        listing.segments.sort_by_key(|s| s.base);
        Ok(listing)
    }

    /// This listing with what `later`, a pass made after it, adds up to this one's newest
    /// segment. A pass can miss a file that is created or renamed into place while it runs
    /// (ext4 lists a directory in hash order, so a segment rolled during the pass may be
    /// missed while the next one is seen), and a live writer rolls segments all the time.
    /// Every segment up to this pass's newest one existed before `later` began, so `later`
    /// has the ones this pass missed. Newer segments are left out, as if the listing had
    /// ended with this pass, and so are the indexes the later pass adds for them.
    fn completed_by(mut self, later: Listing) -> Listing {
        let Some(newest) = self.segments.last().or(later.segments.last()).map(|s| s.base) else { return self };
        for segment in later.segments.into_iter().filter(|s| s.base <= newest) {
            if let Err(i) = self.segments.binary_search_by_key(&segment.base, |s| s.base) {
                self.segments.insert(i, segment);
            }
        }
        // This pass's indexes all stay: one without its segment is a leftover to report.
        self.indexes.extend(later.indexes.into_iter().filter(|(base, _)| *base <= newest));
        // A stable sort keeps this pass's entry first among equal bases.
        self.indexes.sort_by_key(|(base, _)| *base);
        self.indexes.dedup_by_key(|(base, _)| *base);
        self
    }
}

impl QueueDir {
    /// Lists the queue in `path`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::QueueDir;
    ///
    /// assert_eq!(QueueDir::open(dir.path())?.segments.len(), 1);
    /// let empty = tempfile::tempdir()?;
    /// assert!(QueueDir::open(empty.path()).is_err()); // not a queue directory
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be read, or holds neither a segment file nor
    /// a checkpoint (then it is not a queue directory).
    pub fn open(path: impl AsRef<Path>) -> Result<QueueDir> {
        let path = path.as_ref();
        let checkpoint = CheckpointInfo::read(path)?;
        let first = Listing::read(path)?;
        let Listing { mut segments, indexes, mut leftovers } = first.completed_by(Listing::read(path)?);
        for (base, index) in indexes {
            match segments.binary_search_by_key(&base, |s| s.base) {
                Ok(i) => segments[i].index = Some(index),
                Err(_) => leftovers.push(index),
            }
        }
        leftovers.sort();
        if segments.is_empty() && !checkpoint.present {
            let msg = format!("{}: not a segq queue directory (no segment files, no checkpoint)", path.display());
            return Err(Error::Io(io::Error::new(io::ErrorKind::NotFound, msg)));
        }
        let (groups, groups_error) = match group::list(path) {
            Ok(groups) => (groups, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let mut incomplete_groups = Vec::new();
        if let Ok(entries) = fs::read_dir(path.join(GROUPS_DIR)) {
            for entry in entries.flatten() {
                let dir = entry.path();
                let named = entry.file_name().to_str().is_some_and(|n| groups.iter().any(|g| g == n));
                if dir.is_dir() && !named {
                    incomplete_groups.push(dir);
                }
            }
        }
        incomplete_groups.sort();
        Ok(QueueDir {
            path: path.to_path_buf(),
            segments,
            checkpoint,
            groups,
            leftovers,
            incomplete_groups,
            groups_error,
        })
    }

    /// The newest segment: the one a writer appends to.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// let queue = segq::inspect::QueueDir::open(dir.path())?;
    /// assert_eq!(queue.newest().map(|s| s.base), Some(0));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn newest(&self) -> Option<&SegmentFile> {
        self.segments.last()
    }

    /// What is wrong with the path where the consumer groups live, when that is damage
    /// rather than a passing I/O error: a file that is not a directory, or a symbolic link
    /// that leads nowhere. The queue still opens, but every group call fails.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// use segq::inspect::QueueDir;
    ///
    /// assert_eq!(QueueDir::open(dir.path())?.groups_damage(), None);
    /// std::os::unix::fs::symlink("/no/such/disk", dir.path().join("groups"))?;
    /// let queue = QueueDir::open(dir.path())?;
    /// assert!(queue.groups_error.is_some());
    /// assert_eq!(queue.groups_damage(), Some("a symbolic link that cannot be followed"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn groups_damage(&self) -> Option<&'static str> {
        let groups = self.path.join(GROUPS_DIR);
        if fs::metadata(&groups).is_ok_and(|m| !m.is_dir()) {
            Some("not a directory")
        } else if crate::group::check_link(&groups).is_err() {
            Some("a symbolic link that cannot be followed")
        } else {
            None
        }
    }

    /// The queue was closed cleanly: checkpoint slot A carries the clean flag and names the
    /// newest segment, so the next open scans nothing.
    ///
    /// ```
    /// use segq::inspect::QueueDir;
    /// # let dir = tempfile::tempdir()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"hello")?;
    /// assert!(!QueueDir::open(dir.path())?.is_clean()); // open: a crash now would need recovery
    /// q.close()?;
    /// assert!(QueueDir::open(dir.path())?.is_clean());
    /// # Ok::<(), segq::Error>(())
    /// ```
    ///
    /// As recovery (FORMAT.md, "How open uses the slots", steps 2 to 4): slot A must name the
    /// newest segment (its base, and a next offset not below it), and nothing may follow its
    /// position (24 zero bytes, or fewer than 24 bytes left). A clean slot A with records
    /// after it is only a position to scan from. Whether the slot lands on the end of a
    /// batch is not checked here: [`crate::inspect::info`] checks that too.
    pub fn is_clean(&self) -> bool {
        let Some(newest) = self.newest() else { return false };
        self.checkpoint
            .slot_a
            .is_some_and(|a| a.clean && a.names(newest.base) && nothing_after(&newest.path, a.position))
    }

    /// Where the checkpoint says the newest segment's data was durable, as recovery would
    /// choose it: `(position, next offset)`. Data below it was synced; damage there is not
    /// a torn tail.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// let queue = segq::inspect::QueueDir::open(dir.path())?;
    /// // One record of 5 bytes: a 32-byte file header, a 24-byte record header, the payload.
    /// assert_eq!(queue.trusted(), Some((32 + 24 + 5, 1)));
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn trusted(&self) -> Option<(u64, u64)> {
        self.trusted_in(self.segments.len().checked_sub(1)?)
    }

    /// [`QueueDir::trusted`] for segment `i`: the highest position a checkpoint slot names
    /// in it (for the newest segment, the clean close's if there is one).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// let queue = segq::inspect::QueueDir::open(dir.path())?;
    /// assert_eq!(queue.trusted_in(0), queue.trusted());
    /// assert_eq!(queue.trusted_in(1), None); // no such segment
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn trusted_in(&self, i: usize) -> Option<(u64, u64)> {
        let len = self.segments.get(i)?.len;
        let chosen = self.chosen_in(i);
        chosen.filter(|s| (FILE_HEADER_LEN as u64..=len).contains(&s.position)).map(|s| (s.position, s.next_offset))
    }

    /// The slot recovery chooses for segment `i`, whether or not it holds there: for the
    /// newest segment the clean close's, else the one with the highest position.
    pub(crate) fn chosen_in(&self, i: usize) -> Option<CheckpointSlot> {
        let seg = self.segments.get(i)?;
        let names = |s: &CheckpointSlot| s.names(seg.base);
        let newest = i + 1 == self.segments.len();
        let clean = self.checkpoint.slot_a.filter(|a| newest && a.clean && names(a));
        clean.or_else(|| self.checkpoint.slots().map(|(_, s)| s).filter(names).max_by_key(|s| s.position))
    }

    /// How the checkpoint's mark for segment `i` (the slot recovery chooses) stands against its
    /// records, judged as recovery judges it: `(position, next offset, verdict)`, or `None`
    /// when no slot names the segment at a position recovery would look at. Only the stretch
    /// from the index entry before the mark up to it is read (and the record that crosses the
    /// mark, if one does); `None` too if that stretch is longer than [`MAX_MARK_WINDOW`].
    pub(crate) fn mark_landing(&self, i: usize) -> Result<Option<(u64, u64, segment::Landing)>> {
        use segment::Landing;
        let seg = &self.segments[i];
        let Some(slot) = self.chosen_in(i).filter(|s| s.position >= FILE_HEADER_LEN as u64) else { return Ok(None) };
        let (pos, next) = (slot.position, slot.next_offset);
        let source = super::source::Source::File(crate::fs::open_regular(&seg.path).at(&seg.path)?);
        let len = source.len().at(&seg.path)?;
        let header = crate::record::HEADER_LEN as u64;
        // The index entry recovery would step from (the last before the mark), if it is on
        // its record.
        let mut head = [0u8; crate::record::HEADER_LEN];
        let entry = seg.index.as_deref().and_then(|path| super::index::floor_below(path, seg.base, pos)).filter(
            |&(at, offset)| {
                source.read_full(&mut head, at).is_ok_and(|n| n == head.len())
                    && crate::record::claims(&head).is_some_and(|(o, frame)| o == offset && at + frame as u64 <= len)
            },
        );
        // The walk reads from the entry (or the first record) to the mark, and the record
        // that crosses it. Those bytes go into a window whose byte `FILE_HEADER_LEN` is the
        // walk's start, so that the walk sees the entry where a segment's first record
        // would be: memory follows the stretch, not the file.
        let (origin, base) = match entry {
            Some((at, offset)) => (at - FILE_HEADER_LEN as u64, offset),
            None => (0, seg.base),
        };
        let read = |window: &mut Vec<u8>, end: u64| -> Result<()> {
            let end = end.min(len).max(origin + FILE_HEADER_LEN as u64);
            let from = origin + window.len().max(FILE_HEADER_LEN) as u64;
            window.resize((end - origin) as usize, 0);
            if end > from {
                let at = (from - origin) as usize;
                source.read_full(&mut window[at..], from).at(&seg.path)?;
            }
            Ok(())
        };
        if pos.min(len).saturating_sub(origin) > MAX_MARK_WINDOW {
            return Ok(None); // not judged: see MAX_MARK_WINDOW
        }
        let mut window = Vec::new();
        read(&mut window, pos.saturating_add(header))?;
        let mark = usize::try_from(pos - origin).unwrap_or(usize::MAX);
        // The start as an entry, so that the mark's next offset is checked against it too.
        let start = [0u32.to_le_bytes(), (FILE_HEADER_LEN as u32).to_le_bytes()].concat();
        let entries = if entry.is_some() { &start[..] } else { &[][..] };
        let mut verdict = segment::landing(&window, base, entries, mark, next);
        // A record that crosses the mark runs past the window: read the rest of it (if the
        // file holds it) and look again, as recovery sees the whole file.
        if let Landing::Damaged(at, CorruptKind::BadLength { len: payload }) = verdict {
            let end = (origin + at as u64).saturating_add(header).saturating_add(payload);
            if end <= len && end > origin + window.len() as u64 {
                read(&mut window, end)?;
                verdict = segment::landing(&window, base, entries, mark, next);
            }
        }
        let shift = |p: usize| p + origin as usize;
        Ok(Some((
            pos,
            next,
            match verdict {
                Landing::Damaged(p, kind) => Landing::Damaged(shift(p), kind),
                Landing::Missing(p, offset) => Landing::Missing(shift(p), offset),
                v => v,
            },
        )))
    }

    /// Whether segment `i` may still be written to or sealed, as recovery sees it: the
    /// newest, and the one before it while no checkpoint slot names the newest but one
    /// names it (segments are sealed in the background, and the slots name a segment only
    /// once the one before it is sealed). Its end is judged like the newest one's.
    ///
    /// ```
    /// use segq::inspect::QueueDir;
    /// # let dir = tempfile::tempdir()?;
    /// // Segments of 4 KiB: 100 records of 100 B fill several.
    /// let q = segq::Queue::open(dir.path(), segq::Options::default().segment_bytes(4096))?;
    /// for _ in 0..100 {
    ///     q.append(&[7; 100])?;
    /// }
    /// q.close()?;
    /// let queue = QueueDir::open(dir.path())?;
    /// let newest = queue.segments.len() - 1;
    /// assert!(queue.is_unsealed(newest));
    /// assert!(!queue.is_unsealed(0)); // sealed, and the checkpoint names a later segment
    /// # Ok::<(), segq::Error>(())
    /// ```
    pub fn is_unsealed(&self, i: usize) -> bool {
        let n = self.segments.len();
        let named = |base: u64| self.checkpoint.slots().any(|(_, s)| s.names(base));
        i + 1 == n
            || (i + 2 == n && !self.is_clean() && !named(self.segments[n - 1].base) && named(self.segments[i].base))
    }

    /// The snapshot and journal files of group `name`.
    pub(crate) fn group_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.path.join(GROUPS_DIR).join(name);
        (dir.join(group::STATE_FILE), dir.join(group::JOURNAL_FILE))
    }
}

/// Whether nothing follows `position` in the segment file at `path`, as recovery judges a
/// clean end: the 24 bytes there are zeros, or fewer than 24 are left. `false` if the file
/// cannot be read or `position` is not inside it.
fn nothing_after(path: &Path, position: u64) -> bool {
    let Ok(file) = crate::fs::open_regular(path) else { return false };
    let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
    if !(FILE_HEADER_LEN as u64..=len).contains(&position) {
        return false; // recovery drops such a slot
    }
    let mut head = [0u8; crate::record::HEADER_LEN];
    let mut filled = 0;
    while filled < head.len() {
        match std::os::unix::fs::FileExt::read_at(&file, &mut head[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    filled < head.len() || head.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(bases: &[u64], indexes: &[u64]) -> Listing {
        Listing {
            segments: bases
                .iter()
                .map(|&base| SegmentFile { path: segment::log_name(base).into(), base, len: 0, index: None })
                .collect(),
            indexes: indexes.iter().map(|&base| (base, segment::index_name(base).into())).collect(),
            leftovers: Vec::new(),
        }
    }

    fn bases(listing: &Listing) -> Vec<u64> {
        listing.segments.iter().map(|s| s.base).collect()
    }

    /// A segment rolled while the first pass ran, missed by it but seen by the second, is
    /// listed; segments (and indexes) newer than the first pass's newest are not.
    #[test]
    fn a_second_pass_fills_in_what_the_first_missed_up_to_its_newest() {
        let merged = listing(&[10, 30], &[10, 50]).completed_by(listing(&[10, 20, 30, 40], &[10, 20, 40]));
        assert_eq!(bases(&merged), [10, 20, 30]);
        // The first pass's index without its segment stays, to be reported as a leftover.
        assert_eq!(merged.indexes.iter().map(|(b, _)| *b).collect::<Vec<_>>(), [10, 20, 50]);
        // A segment deleted by retention between the passes stays listed (verify then finds
        // it gone); an empty first pass takes the second.
        assert_eq!(bases(&listing(&[5, 10], &[]).completed_by(listing(&[10], &[]))), [5, 10]);
        assert_eq!(bases(&listing(&[], &[]).completed_by(listing(&[0], &[]))), [0]);
    }
}
