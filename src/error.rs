//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A `Result` whose error is [`Error`].
///
/// ```
/// fn oldest(q: &segq::Queue) -> segq::Result<Option<Vec<u8>>> {
///     Ok(q.read(q.first_offset())?.map(|r| r.payload().to_vec()))
/// }
/// # let dir = tempfile::tempdir()?;
/// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
/// q.append(b"first")?;
/// q.append(b"second")?;
/// assert_eq!(oldest(&q)?, Some(b"first".to_vec()));
/// # Ok::<(), segq::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in segq.
///
/// Damage on disk is always [`Error::Corrupt`], naming the file and the byte position, so an
/// operator can look at the bytes with `segq dump`. I/O failures keep their
/// [`io::ErrorKind`] (a full disk is [`io::ErrorKind::StorageFull`]) and name the file in
/// their message.
///
/// The enum is `#[non_exhaustive]`: a `match` on it needs a catch-all arm.
///
/// ```
/// use segq::{Error, Options, Queue};
/// # let dir = tempfile::tempdir()?;
/// let q = Queue::open(dir.path(), Options::default().max_record_bytes(4))?;
///
/// assert!(matches!(q.append(b"too long"), Err(Error::RecordTooLarge { size: 8, limit: 4 })));
/// assert!(matches!(Queue::open(dir.path(), Options::default()), Err(Error::Locked { .. })));
/// match q.group("no spaces") {
///     Err(Error::InvalidGroupName { name }) => assert_eq!(name, "no spaces"),
///     other => panic!("expected InvalidGroupName, got {other:?}"),
/// }
/// # Ok::<(), segq::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed. The message names the file concerned.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # std::fs::write(dir.path().join("file"), b"")?;
    /// // A queue cannot live under a regular file.
    /// let err = segq::Queue::open(dir.path().join("file/queue"), segq::Options::default()).unwrap_err();
    /// let segq::Error::Io(io) = &err else { panic!("expected Error::Io, got {err:?}") };
    /// assert_eq!(io.kind(), std::io::ErrorKind::NotADirectory);
    /// assert!(err.to_string().contains("file/queue"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[error(transparent)]
    Io(#[from] io::Error),

    /// Bytes on disk are not what segq wrote: a checksum, length, offset or header is wrong.
    ///
    /// ```
    /// use segq::{CorruptKind, Error, Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = Queue::open(dir.path(), Options::default())?;
    /// # q.append(b"hello")?;
    /// # q.close()?;
    /// # drop(q);
    /// # let segment = dir.path().join("00000000000000000000.log");
    /// # use std::os::unix::fs::FileExt;
    /// # let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment)?;
    /// # let mut head = [0; 4096];
    /// # file.read_exact_at(&mut head, 0)?;
    /// # let at = head.windows(5).position(|w| w == b"hello").unwrap();
    /// # file.write_all_at(&[head[at] ^ 1], at as u64)?;
    /// // Record 0 was appended, then one bit of its payload flipped on disk.
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// match q.read(0) {
    ///     Err(Error::Corrupt { path, kind: CorruptKind::BadCrc { .. }, .. }) => assert_eq!(path, segment),
    ///     other => panic!("expected a checksum mismatch, got {other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[error("corrupt data in {} at byte {position}: {kind}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position in that file where the damaged structure starts.
        position: u64,
        /// What is wrong there.
        kind: CorruptKind,
    },

    /// A payload (or a whole batch) is bigger than the queue accepts. Nothing was written.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default().max_record_bytes(4))?;
    /// let err = q.append_batch(&[b"ok".as_slice(), b"too long"]).unwrap_err();
    /// assert!(matches!(err, segq::Error::RecordTooLarge { size: 8, limit: 4 }));
    /// assert_eq!(q.next_offset(), 0); // not even "ok" was written
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error(
        "{size} bytes is over the limit of {limit} bytes (of a record: Options::max_record_bytes; of a whole batch, framed: the largest segment)"
    )]
    RecordTooLarge {
        /// Size that was asked for, in bytes.
        size: u64,
        /// The limit in force, in bytes.
        limit: u64,
    },

    /// Another `Queue` — in this process or another — has the directory open.
    ///
    /// ```
    /// use segq::{Error, Options, Queue};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// let err = Queue::open(dir.path(), Options::default()).unwrap_err();
    /// assert!(matches!(err, Error::Locked { path } if path == dir.path().join("lock")));
    /// q.close()?; // releases the directory
    /// assert!(Queue::open(dir.path(), Options::default()).is_ok());
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error("{} is locked: another process or handle has this queue open", path.display())]
    Locked {
        /// The lock file that is held.
        path: PathBuf,
    },

    /// A consumer-group name that is not 1–128 characters of `[A-Za-z0-9._-]`, or is `.`/`..`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// for bad in ["", "..", "a/b", "héllo"] {
    ///     assert!(matches!(q.group(bad), Err(segq::Error::InvalidGroupName { .. })));
    /// }
    /// assert!(q.groups()?.is_empty()); // nothing was created
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error("invalid group name {name:?}: use 1-128 characters of A-Z a-z 0-9 . _ - (not . or ..)")]
    InvalidGroupName {
        /// The rejected name.
        name: String,
    },

    /// An option is out of its allowed range.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let opts = segq::Options::default().segment_bytes(100); // below the 4 KiB minimum
    /// let err = segq::Queue::open(dir.path().join("q"), opts).unwrap_err();
    /// assert!(matches!(err, segq::Error::InvalidOptions(_)));
    /// assert!(!dir.path().join("q").exists()); // nothing was created
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error("invalid option: {0}")]
    InvalidOptions(String),

    /// An earlier sync failed, so the kernel may have dropped unsynced data: this handle
    /// refuses writes until the queue is reopened (which recovers the durable prefix). The
    /// text names the file concerned and says how to recover.
    ///
    /// A failed write or sync of a group's files stops only that group, and only until it
    /// has written its whole state again, which each of its later calls tries first: they
    /// return this error while that fails (on a disk still full, say), and go on once it
    /// succeeds, with nothing acknowledged lost and every lease still held.
    ///
    /// ```
    /// use segq::{Error, Options, Queue};
    /// # use segq::fault::{self, Fault, Point};
    /// # let dir = tempfile::tempdir()?;
    /// let q = Queue::open(dir.path(), Options::default())?;
    /// # fault::inject(Fault::new(dir.path(), Point::Sync));
    /// // The disk fails the sync of the next append.
    /// assert!(matches!(q.append(b"a"), Err(Error::Io(_))));
    /// assert!(matches!(q.append(b"b"), Err(Error::Poisoned(_))));
    /// drop(q);
    /// let q = Queue::open(dir.path(), Options::default())?; // reopening recovers
    /// q.append(b"c")?;
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error("poisoned by an earlier failure: {0}")]
    Poisoned(String),

    /// The queue was closed; this handle can no longer be used.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.close()?;
    /// assert!(matches!(q.append(b"late"), Err(segq::Error::Closed)));
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error("queue is closed")]
    Closed,

    /// An ack or nack named an offset the group has not delivered yet.
    ///
    /// ```
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// q.append(b"job")?;
    /// let g = q.group("workers")?;
    /// assert!(matches!(g.ack(0), Err(segq::Error::NotDelivered { offset: 0 })));
    /// let job = g.poll(Duration::ZERO)?.expect("a job is waiting");
    /// g.ack(job.offset())?; // delivered now
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error("offset {offset} has not been delivered to this group")]
    NotDelivered {
        /// The offset named.
        offset: u64,
    },

    /// The group was deleted; this handle can no longer be used.
    ///
    /// ```
    /// use segq::Error;
    /// use std::time::Duration;
    /// # let dir = tempfile::tempdir()?;
    /// # let q = segq::Queue::open(dir.path(), segq::Options::default())?;
    /// let g = q.group("workers")?;
    /// q.delete_group("workers")?;
    /// assert!(matches!(g.poll(Duration::ZERO), Err(Error::GroupDeleted { name }) if name == "workers"));
    /// # Ok::<(), segq::Error>(())
    /// ```
    #[error("consumer group {name:?} was deleted")]
    GroupDeleted {
        /// The group's name.
        name: String,
    },
}

/// What is wrong with damaged bytes, carried by [`Error::Corrupt`] (which has an example of
/// a damaged record). Its `Display` is one short phrase for messages:
///
/// ```
/// use segq::CorruptKind;
///
/// assert_eq!(CorruptKind::Gap { from: 10, to: 20 }.to_string(), "offsets 10..20 are missing");
/// assert_eq!(CorruptKind::BadVersion { found: 9 }.to_string(), "unsupported format version 9");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// A file header does not start with segq's magic number.
    BadMagic,
    /// A file header names a format version this build does not read.
    BadVersion {
        /// The version found.
        found: u32,
    },
    /// A header's fields disagree with each other or with the file name.
    BadHeader(String),
    /// A stored checksum does not match the bytes it covers.
    BadCrc {
        /// The checksum stored on disk.
        expected: u32,
        /// The checksum of the bytes as read.
        actual: u32,
    },
    /// A length field points past the end of the data.
    BadLength {
        /// The length found.
        len: u64,
    },
    /// A record carries an offset other than the one its place in the log implies.
    BadOffset {
        /// The offset the record should have.
        expected: u64,
        /// The offset it carries.
        found: u64,
    },
    /// The file ends in the middle of a structure.
    Truncated,
    /// Zeros where a record should be: the bytes were never written or were wiped.
    Zeroed,
    /// Offsets that must be present are missing: a segment was removed or cut by hand, or
    /// records known to be synced read as zeros (writes a disk lost).
    Gap {
        /// First missing offset.
        from: u64,
        /// First offset present again.
        to: u64,
    },
}

impl fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptKind::BadMagic => write!(f, "bad magic number"),
            CorruptKind::BadVersion { found } => write!(f, "unsupported format version {found}"),
            CorruptKind::BadHeader(what) => write!(f, "bad header: {what}"),
            CorruptKind::BadCrc { expected, actual } => {
                write!(f, "checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")
            }
            CorruptKind::BadLength { len } => {
                write!(f, "length {len} runs past the end of the data")
            }
            CorruptKind::BadOffset { expected, found } => {
                write!(f, "record carries offset {found}, expected {expected}")
            }
            CorruptKind::Truncated => write!(f, "file ends inside a structure"),
            CorruptKind::Zeroed => write!(f, "zeros where a record should be"),
            CorruptKind::Gap { from, to } => write!(f, "offsets {from}..{to} are missing"),
        }
    }
}

impl Error {
    /// An [`Error::Io`] whose message names `path`. It keeps the error's kind, and the
    /// original error (with its OS error number) is its source.
    pub(crate) fn io(path: &Path, err: io::Error) -> Error {
        Error::Io(io::Error::new(err.kind(), PathError { path: path.to_path_buf(), source: err }))
    }

    /// The OS error number behind an [`Error::Io`], if there is one.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # std::fs::write(dir.path().join("file"), b"")?;
    /// let err = segq::Queue::open(dir.path().join("file/queue"), segq::Options::default()).unwrap_err();
    /// assert_eq!(err.raw_os_error(), Some(20)); // ENOTDIR: "file" is not a directory
    /// assert_eq!(segq::Error::Closed.raw_os_error(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw_os_error(&self) -> Option<i32> {
        let Error::Io(e) = self else { return None };
        e.raw_os_error().or_else(|| {
            e.get_ref().and_then(|inner| inner.downcast_ref::<PathError>()).and_then(|p| p.source.raw_os_error())
        })
    }

    /// An [`Error::Corrupt`].
    pub(crate) fn corrupt(path: &Path, position: u64, kind: CorruptKind) -> Error {
        Error::Corrupt { path: path.to_path_buf(), position, kind }
    }
}

/// An I/O error and the file it concerns.
#[derive(Debug)]
struct PathError {
    path: PathBuf,
    source: io::Error,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.as_os_str().is_empty() {
            // Shown quoted: a bare empty name would make the message start with ": ".
            return write!(f, "\"\": {}", self.source);
        }
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for PathError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
