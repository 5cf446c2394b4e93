//! The lock that lets one writer at a time have a queue directory.

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the lock file in a queue directory.
pub(crate) const LOCK_FILE: &str = "lock";

/// The lock a [`crate::Queue`] holds on its directory while it is open, and that `segq
/// repair` takes so that it never changes files under a writer.
///
/// It is two exclusive advisory locks (`flock`): one on the directory itself, which a
/// `lock` file deleted or replaced by hand cannot take away, and one on the `lock` file,
/// which builds before this one (session 19) take alone. Both are let go when the
/// `WriterLock` is dropped, even while a child process forked meanwhile still holds copies
/// of their descriptors.
///
/// ```
/// use segq::inspect::WriterLock;
/// use segq::{Error, Options, Queue};
/// # let dir = tempfile::tempdir()?;
///
/// let q = Queue::open(dir.path(), Options::default())?;
/// assert!(matches!(WriterLock::acquire(dir.path(), true), Err(Error::Locked { .. })));
/// q.close()?;
/// let held = WriterLock::acquire(dir.path(), true)?;
/// assert!(matches!(Queue::open(dir.path(), Options::default()), Err(Error::Locked { .. })));
/// drop(held);
/// Queue::open(dir.path(), Options::default())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WriterLock {
    dir: File,
    /// `None` when the `lock` file was missing and not to be made.
    file: Option<File>,
}

impl WriterLock {
    /// Takes the lock of queue directory `dir` without waiting. `create` makes the `lock`
    /// file if it is missing; without it, a missing file is left missing (a queue without
    /// one was never opened by a writer) and only the directory is locked.
    ///
    /// # Errors
    /// [`Error::Locked`] (naming the `lock` file) while another handle, in this process or
    /// another, holds either lock; [`Error::Io`] if the directory or the file cannot be
    /// opened.
    pub fn acquire(dir: &Path, create: bool) -> Result<WriterLock> {
        let lock_path = dir.join(LOCK_FILE);
        let dir_file = File::open(dir).map_err(|e| Error::io(dir, e))?;
        take(&dir_file, dir, &lock_path)?;
        let opened = std::fs::OpenOptions::new().read(true).write(true).create(create).truncate(false).open(&lock_path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => {
                return Ok(WriterLock { dir: dir_file, file: None });
            }
            Err(e) => {
                let _ = dir_file.unlock();
                return Err(Error::io(&lock_path, e));
            }
        };
        if let Err(e) = take(&file, &lock_path, &lock_path) {
            let _ = dir_file.unlock();
            return Err(e);
        }
        Ok(WriterLock { dir: dir_file, file: Some(file) })
    }
}

/// Locks `file` (at `path`), or says that `lock_path`'s queue is locked.
fn take(file: &File, path: &Path, lock_path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(Error::Locked { path: PathBuf::from(lock_path) }),
        Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // Closing is not enough: a child process forked meanwhile (by any thread of this
        // process) holds copies of the descriptors until it execs, or for its whole life if
        // it never does, and a lock lasts while one copy is open. Failing, an unlock changes
        // nothing the close does not do.
        if let Some(file) = &self.file {
            let _ = file.unlock();
        }
        let _ = self.dir.unlock();
    }
}
