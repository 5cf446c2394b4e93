//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in segq.
///
/// Damage on disk is always [`Error::Corrupt`], naming the file and the byte position, so an
/// operator can look at the bytes with `segq dump`. I/O failures keep their
/// [`io::ErrorKind`] (a full disk is [`io::ErrorKind::StorageFull`]) and name the file in
/// their message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed. The message names the file concerned.
    #[error(transparent)]
    Io(#[from] io::Error),

    /// Bytes on disk are not what segq wrote: a checksum, length, offset or header is wrong.
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
    #[error("record of {size} bytes is over the limit of {limit} bytes")]
    RecordTooLarge {
        /// Size that was asked for, in bytes.
        size: u64,
        /// The limit in force, in bytes.
        limit: u64,
    },

    /// Another `Queue` — in this process or another — has the directory open.
    #[error("{} is locked: another process or handle has this queue open", path.display())]
    Locked {
        /// The lock file that is held.
        path: PathBuf,
    },

    /// A consumer-group name that is not 1–128 characters of `[A-Za-z0-9._-]`, or is `.`/`..`.
    #[error("invalid group name {name:?}: use 1-128 characters of A-Z a-z 0-9 . _ - (not . or ..)")]
    InvalidGroupName {
        /// The rejected name.
        name: String,
    },

    /// An option is out of its allowed range.
    #[error("invalid option: {0}")]
    InvalidOptions(String),

    /// An earlier sync failed, so the kernel may have dropped unsynced data: this handle
    /// refuses writes until the queue is reopened (which recovers the durable prefix).
    #[error("queue is poisoned by an earlier failed sync ({0}); reopen it to recover")]
    Poisoned(String),

    /// The queue was closed; this handle can no longer be used.
    #[error("queue is closed")]
    Closed,

    /// An ack or nack named an offset the group has not delivered yet.
    #[error("offset {offset} has not been delivered to this group")]
    NotDelivered {
        /// The offset named.
        offset: u64,
    },

    /// The group was deleted; this handle can no longer be used.
    #[error("consumer group {name:?} was deleted")]
    GroupDeleted {
        /// The group's name.
        name: String,
    },
}

/// What is wrong with damaged bytes, carried by [`Error::Corrupt`].
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
    /// Offsets that must be present are missing (a segment was removed or cut by hand).
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
