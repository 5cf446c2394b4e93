//! Fault injection for tests: makes chosen file operations under a directory fail with
//! `EIO` or `ENOSPC`, to check that segq reports the error, keeps what was acknowledged and
//! refuses to go on writing after a failed sync. And a sync audit: records which byte
//! ranges of which files each successful sync made durable, so that a test can check that
//! what a call acknowledged was really synced, not only that the call returned.
//!
//! Every write, sync, block reservation and rename that segq does passes through
//! `check`; when no fault is armed that costs one relaxed atomic load.
//!
//! ```
//! use segq::fault::{self, Fault, Point};
//! # let dir = tempfile::tempdir().unwrap();
//! fault::inject(Fault::new(dir.path(), Point::Sync).after(3).errno(fault::EIO));
//! // ... the 4th sync of a file under `dir` fails with EIO, later ones succeed.
//! fault::clear(dir.path());
//! ```
#![doc(hidden)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// `EIO`: an I/O error from the device.
pub const EIO: i32 = 5;
/// `ENOSPC`: no space left on the device.
pub const ENOSPC: i32 = 28;
/// `EOPNOTSUPP`: the file system does not support the operation (`fallocate` on some).
pub const EOPNOTSUPP: i32 = 95;

/// A kind of file operation that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `pwrite` of headers, checkpoint slots, index and snapshot files.
    Write,
    /// `fsync`, `fdatasync` and `msync`, of files and directories.
    Sync,
    /// `fallocate`: reserving the blocks of a new segment, index or journal.
    Allocate,
    /// `rename` of a finished file into place.
    Rename,
}

/// One armed fault.
#[derive(Debug, Clone)]
pub struct Fault {
    dir: PathBuf,
    point: Point,
    skip: u64,
    times: u64,
    errno: i32,
    /// Hold the matching operations instead of failing them: see [`Fault::stall`].
    stall: bool,
    /// Set when armed, to tell this fault from others alike.
    id: u64,
    /// Operations held by this fault now.
    held: u64,
}

impl Fault {
    /// Fails the next operation of kind `point` on any file under `dir`, with `EIO`.
    pub fn new(dir: &Path, point: Point) -> Fault {
        Fault { dir: dir.to_path_buf(), point, skip: 0, times: 1, errno: EIO, stall: false, id: 0, held: 0 }
    }

    /// Lets `n` matching operations succeed first.
    pub fn after(mut self, n: u64) -> Fault {
        self.skip = n;
        self
    }

    /// Fails `n` operations (`u64::MAX`: all of them) instead of one.
    pub fn times(mut self, n: u64) -> Fault {
        self.times = n;
        self
    }

    /// The error number to fail with.
    pub fn errno(mut self, errno: i32) -> Fault {
        self.errno = errno;
        self
    }

    /// Holds each matching operation until the fault is cleared, and then lets it
    /// succeed: to see what else waits while a sync takes long (see [`held`]).
    pub fn stall(mut self) -> Fault {
        self.stall = true;
        self
    }
}

static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());

fn faults() -> std::sync::MutexGuard<'static, Vec<Fault>> {
    FAULTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Arms a fault.
pub fn inject(mut fault: Fault) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    fault.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    faults().push(fault);
    ARMED.store(true, Ordering::SeqCst);
}

/// Disarms every fault under `dir`.
pub fn clear(dir: &Path) {
    let mut faults = faults();
    faults.retain(|f| !f.dir.starts_with(dir));
    ARMED.store(!faults.is_empty(), Ordering::SeqCst);
}

/// The operations that stalling faults under `dir` hold now.
pub fn held(dir: &Path) -> u64 {
    faults().iter().filter(|f| f.dir.starts_with(dir)).map(|f| f.held).sum()
}

/// Fails if an armed fault matches an operation of kind `point` on `path`, or waits while
/// a stalling one does.
pub(crate) fn check(path: &Path, point: Point) -> io::Result<()> {
    if !ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut faults = faults();
    let mut stalled = None;
    for f in faults.iter_mut().filter(|f| f.point == point && path.starts_with(&f.dir)) {
        if f.skip > 0 {
            f.skip -= 1;
        } else if f.times > 0 {
            f.times -= 1;
            if !f.stall {
                return Err(io::Error::from_raw_os_error(f.errno));
            }
            f.held += 1;
            stalled = Some(f.id);
            break;
        }
    }
    drop(faults);
    if let Some(id) = stalled {
        // A test's fault, cleared by the test: polling keeps this simple.
        while self::faults().iter().any(|f| f.id == id) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    Ok(())
}

/// A successful sync: `range` of the file at `path` made durable (`0..u64::MAX` for the
/// whole file as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The file.
    pub path: PathBuf,
    /// The bytes made durable.
    pub range: std::ops::Range<u64>,
}

static AUDITING: AtomicBool = AtomicBool::new(false);
static AUDITED_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SYNCED: Mutex<Vec<Synced>> = Mutex::new(Vec::new());

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records from now on the syncs of files under `dir` (see [`take_synced`]).
pub fn audit(dir: &Path) {
    lock(&AUDITED_DIRS).push(dir.to_path_buf());
    AUDITING.store(true, Ordering::SeqCst);
}

/// The syncs of files under `dir` recorded since the last call, oldest first; forgets them.
pub fn take_synced(dir: &Path) -> Vec<Synced> {
    let mut synced = lock(&SYNCED);
    let (taken, kept) = std::mem::take(&mut *synced).into_iter().partition(|s| s.path.starts_with(dir));
    *synced = kept;
    taken
}

/// Notes that `range` of `path` is durable, if `path` is under an audited directory.
pub(crate) fn note_synced(path: &Path, range: std::ops::Range<u64>) {
    if AUDITING.load(Ordering::Relaxed) && lock(&AUDITED_DIRS).iter().any(|dir| path.starts_with(dir)) {
        lock(&SYNCED).push(Synced { path: path.to_path_buf(), range });
    }
}
