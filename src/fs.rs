//! Small file-system helpers: reserving blocks and making names durable.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, fallocate};

use crate::error::{IoContext, Result};

/// Reserves real blocks for the first `len` bytes of `file`, growing it if needed, so that
/// stores through a mapping can never hit a full disk (which would be SIGBUS). A full disk
/// shows up here instead, as an `Err` of kind `StorageFull`.
pub(crate) fn reserve(file: &File, path: &Path, len: u64) -> Result<()> {
    fallocate(file, FallocateFlags::empty(), 0, len).map_err(std::io::Error::from).at(path)
}

/// Makes the directory's entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Opens a file for reading and writing, creating it if missing.
pub(crate) fn open_rw(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path).at(path)
}

/// The temporary name a file is built under before it is renamed into place.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Renames `from` to `to`, replacing `to` atomically.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).at(to)
}
