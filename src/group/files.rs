//! Where a group's files live, and creating, listing and removing them.

use std::fs;
use std::path::Path;

use super::journal::Journal;
use super::snapshot::Snapshot;
use super::state::{Clock, GroupState};
use crate::error::{Error, IoContext, Result};
use crate::fs::sync_dir;
use crate::log::Log;
use crate::options::GroupOptions;

/// Folder of a queue directory that holds the groups.
pub(crate) const GROUPS_DIR: &str = "groups";
pub(crate) const STATE_FILE: &str = "state";
pub(crate) const JOURNAL_FILE: &str = "journal";

/// Checks a group name: 1–128 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok { Ok(()) } else { Err(Error::InvalidGroupName { name: name.to_string() }) }
}

/// Fails if the groups folder, or a group's folder, is a symbolic link that leads nowhere (to
/// a disk not mounted, say): listing would quietly miss the groups there (and retention then
/// delete what they still need), and creating one would fail with "File exists".
pub(crate) fn check_link(groups: &Path) -> Result<()> {
    match fs::metadata(groups) {
        Err(e) if fs::symlink_metadata(groups).is_ok_and(|m| m.file_type().is_symlink()) => {
            let target = fs::read_link(groups).map(|t| t.display().to_string()).unwrap_or_default();
            let why = format!("a symbolic link to {target} that cannot be followed: {e}");
            Err(Error::io(groups, std::io::Error::new(e.kind(), why)))
        }
        _ => Ok(()),
    }
}

/// Names of the groups stored under `queue_dir`, sorted.
pub(crate) fn list(queue_dir: &Path) -> Result<Vec<String>> {
    let dir = queue_dir.join(GROUPS_DIR);
    check_link(&dir)?;
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.at(&dir)?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if validate_name(&name).is_err() {
            continue;
        }
        check_link(&entry.path())?;
        if entry.path().join(STATE_FILE).is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes a group's files; the snapshot goes first, so a crash half-way leaves no group.
pub(crate) fn remove(queue_dir: &Path, name: &str) -> Result<()> {
    let dir = queue_dir.join(GROUPS_DIR).join(name);
    match fs::remove_file(dir.join(STATE_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&dir, e)),
    }
    if dir.exists() {
        sync_dir(&dir)?;
        fs::remove_dir_all(&dir).at(&dir)?;
    }
    sync_dir(&queue_dir.join(GROUPS_DIR)).or_else(|e| if queue_dir.join(GROUPS_DIR).exists() { Err(e) } else { Ok(()) })
}

/// Removes files left half-written by a crash (a snapshot being replaced).
pub(super) fn remove_temp_files(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Creates the files of a new group starting at the log's first offset.
pub(super) fn create(log: &Log, groups: &Path, dir: &Path, opts: GroupOptions, clock: &Clock) -> Result<()> {
    check_link(groups)?;
    check_link(dir)?;
    // Files left by a deletion that a crash interrupted must not mix with the new group's.
    if dir.exists() {
        fs::remove_dir_all(dir).at(dir)?;
    }
    fs::create_dir_all(dir).at(dir)?;
    let state = GroupState::new(log.first_offset(), opts.lease);
    Journal::create(&dir.join(JOURNAL_FILE))?;
    // The snapshot's name says the group exists: the journal's must be durable before it.
    sync_dir(dir)?;
    Snapshot::of(&state, 0, opts.max_attempts, clock).write_new(dir)?;
    sync_dir(groups)?;
    // Also when `groups/` was there already: a creation cut short may have made it.
    sync_dir(log.dir())?;
    Ok(())
}
