//! Small file-system helpers: reserving blocks and making names durable.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use std::os::unix::fs::FileExt;

use rustix::fs::{FallocateFlags, SeekFrom, fallocate, seek};
use rustix::io::Errno;

use crate::fault::{self, Point};
use crate::mmap::Mapping;

use crate::error::{IoContext, Result};

/// Reserves real blocks for the first `len` bytes of `file`, growing it if needed, so that
/// stores through a mapping can never hit a full disk (which would be SIGBUS). A full disk
/// shows up here instead, as an `Err` of kind `StorageFull`. The file must not be mapped
/// for writing yet.
pub(crate) fn reserve(file: &File, path: &Path, len: u64) -> Result<()> {
    let reserved = fault::check(path, Point::Allocate)
        .and_then(|()| within_size_limit(len))
        .and_then(|()| fallocate(file, FallocateFlags::empty(), 0, len).map_err(io::Error::from));
    match reserved {
        // Some file systems cannot reserve blocks (NFS before 4.2, many FUSE ones, ZFS before
        // 2.2): writing zeros does it, at the cost of writing them.
        Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => fill_holes(file, len).at(path),
        reserved => reserved.at(path),
    }
}

/// Fails with `EFBIG` if a file may not reach `end` bytes under the process's file-size
/// limit (`RLIMIT_FSIZE`), which the kernel otherwise enforces with SIGXFSZ: a signal that
/// kills the process unless it is caught or ignored, where an error can be returned.
fn within_size_limit(end: u64) -> io::Result<()> {
    use rustix::process::{Resource, getrlimit};
    match getrlimit(Resource::Fsize).current {
        Some(limit) if end > limit => Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{end} bytes would pass the process's file size limit (RLIMIT_FSIZE) of {limit} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Writes zeros into every hole of the first `len` bytes of `file`, growing it if needed.
/// Holes read as zeros, so this changes no byte of the file, only where its blocks are.
fn fill_holes(file: &File, len: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut pos = 0;
    while pos < len {
        let hole = match seek(file, SeekFrom::Hole(pos)) {
            Ok(hole) => hole,
            Err(Errno::NXIO) => break, // `pos` is past the end of the file
            // Without `SEEK_HOLE`, the file is taken to have no hole before its end.
            Err(_) => file.metadata()?.len().max(pos),
        };
        if hole >= len {
            return Ok(());
        }
        let data = match seek(file, SeekFrom::Data(hole)) {
            Ok(data) => data.min(len),
            Err(_) => len, // a hole up to the end of the file
        };
        write_zeros(file, hole..data, &ZEROS)?;
        pos = data;
    }
    let end = file.metadata()?.len().max(pos);
    write_zeros(file, end..len, &ZEROS)
}

fn write_zeros(file: &File, range: std::ops::Range<u64>, zeros: &[u8]) -> io::Result<()> {
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file (following symlinks). Opening a FIFO
/// would otherwise wait for a writer for ever, and a device or a directory is no queue
/// file either: they get an error naming what they are.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let nonblocking = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let file = OpenOptions::new().read(true).custom_flags(nonblocking).open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
    Err(io::Error::new(io::ErrorKind::InvalidInput, what))
}

/// Writes all of `bytes` at `pos` of `file`.
pub(crate) fn write_at(file: &File, path: &Path, bytes: &[u8], pos: u64) -> Result<()> {
    fault::check(path, Point::Write)
        .and_then(|()| within_size_limit(pos.saturating_add(bytes.len() as u64)))
        .and_then(|()| file.write_all_at(bytes, pos))
        .at(path)
}

/// Makes a file's data and metadata durable (`fsync`).
pub(crate) fn sync_file(file: &File, path: &Path) -> Result<()> {
    sync_file_covering(file, path, 0..u64::MAX)
}

/// [`sync_file`] of a file whose data ends at `covered.end`: the sync audit (see
/// [`crate::fault`]) records that range rather than the whole file, so that what is
/// appended through a mapping afterwards does not look synced by it.
pub(crate) fn sync_file_covering(file: &File, path: &Path, covered: std::ops::Range<u64>) -> Result<()> {
    fault::check(path, Point::Sync).and_then(|()| file.sync_all()).at(path)?;
    fault::note_synced(path, covered);
    Ok(())
}

/// Makes a file's data durable (`fdatasync`).
pub(crate) fn sync_file_data(file: &File, path: &Path) -> Result<()> {
    fault::check(path, Point::Sync).and_then(|()| file.sync_data()).at(path)?;
    fault::note_synced(path, 0..u64::MAX);
    Ok(())
}

/// Writes back `range` of a mapping of `path` and waits for the device (`msync`).
pub(crate) fn sync_mapping(map: &Mapping, path: &Path, range: std::ops::Range<usize>) -> Result<()> {
    fault::check(path, Point::Sync).and_then(|()| map.sync(range.clone())).at(path)?;
    fault::note_synced(path, range.start as u64..range.end as u64);
    Ok(())
}

/// Writes `bytes` at `pos` of the file at `path` and makes them and the file's metadata
/// durable (an `O_SYNC` write), without writing back any other page of the file: unlike an
/// `fsync`, which would also write back, and write-protect, every page dirtied through a
/// mapping that another thread is still writing.
pub(crate) fn write_durably_at(path: &Path, bytes: &[u8], pos: u64) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    fault::check(path, Point::Write)
        .and_then(|()| fault::check(path, Point::Sync))
        .and_then(|()| within_size_limit(pos.saturating_add(bytes.len() as u64)))
        .and_then(|()| {
            let sync = rustix::fs::OFlags::SYNC.bits() as i32;
            OpenOptions::new().write(true).custom_flags(sync).open(path)?.write_all_at(bytes, pos)
        })
        .at(path)?;
    fault::note_synced(path, pos..pos + bytes.len() as u64);
    Ok(())
}

/// Makes the directory's entries (new, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fault::check(dir, Point::Sync).and_then(|()| File::open(dir)?.sync_all()).at(dir)?;
    fault::note_synced(dir, 0..u64::MAX);
    Ok(())
}

/// Creates the directory `dir` and those missing above it, and makes each new entry
/// durable: the directory of a queue that has acknowledged durable appends must not vanish
/// in a power loss with an entry above it that was never synced.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    fs::create_dir_all(dir).at(dir)?;
    for created in missing {
        sync_dir(parent_or_current(created))?;
    }
    Ok(())
}

/// The directory that holds `path`'s name: its parent, or `.` for a name without one.
pub(crate) fn parent_or_current(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
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
    fault::check(to, Point::Rename).and_then(|()| fs::rename(from, to)).at(to)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn filling_holes_allocates_every_block_and_changes_no_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = open_rw(&path, true).unwrap();
        // Data, a hole of 1 MiB, data, and a hole up to the end at 3 MiB.
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(&[7; 5000], 1 << 20).unwrap();
        file.set_len(3 << 20).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert!(file.metadata().unwrap().blocks() * 512 < 1 << 20, "the file is sparse");
        fill_holes(&file, 4 << 20).unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), 4 << 20);
        assert_eq!(after[..before.len()], before[..]);
        assert!(after[before.len()..].iter().all(|&b| b == 0));
        assert!(file.metadata().unwrap().blocks() * 512 >= 4 << 20);
        // Shorter than the file: nothing to grow, and no hole is left to fill.
        fill_holes(&file, 1 << 20).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), after);
    }
}
