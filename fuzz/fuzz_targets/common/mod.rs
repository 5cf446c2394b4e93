//! Helpers shared by the fuzz targets: a scratch folder and segq's byte layouts (as
//! docs/FORMAT.md gives them), written out independently of the crate's own encoders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A folder of its own under /dev/shm (or the temporary directory), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let root = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = root.join(format!("segq-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The 32-byte header of a segment (`SEGQLOG\0`), index or group file with this magic.
pub fn file_header(magic: &[u8; 8], base: u64) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h
}

/// One record frame with a valid CRC (see docs/FORMAT.md).
pub fn frame(offset: u64, timestamp: u64, payload: &[u8], batch_continues: bool) -> Vec<u8> {
    let mut frame = vec![0u8; 4];
    let len_flags = payload.len() as u32 | if batch_continues { 0x8000_0000 } else { 0 };
    frame.extend_from_slice(&len_flags.to_le_bytes());
    frame.extend_from_slice(&offset.to_le_bytes());
    frame.extend_from_slice(&timestamp.to_le_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame[4..]);
    frame[..4].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Records with valid CRCs from offset `base`, steered by `body` so that checksums pass and
/// the batch and offset logic is reached: each control byte `c` takes `c & 0x1f` payload
/// bytes; bit 0x20 sets the batch flag; the top bits choose a record followed by the next
/// offset (0x00), by a skipped offset (0x40), by the same offset again if `backwards`
/// (0x80), or raw bytes in place of a record (0xc0). The timestamp is `c`.
pub fn steered_records(body: &[u8], base: u64, backwards: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = base;
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        let len = usize::from(c & 0x1f).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        if c & 0xc0 == 0xc0 {
            out.extend_from_slice(payload);
            continue;
        }
        out.extend_from_slice(&frame(offset, u64::from(c), payload, c & 0x20 != 0));
        offset = match c & 0xc0 {
            0x40 => offset + 2,
            0x80 if backwards => offset.saturating_sub(1),
            _ => offset + 1,
        };
    }
    out
}

/// Whether `file` holds, as one whole frame with a valid CRC, the record with this offset,
/// timestamp and payload (with or without the batch-continues bit).
pub fn written(file: &[u8], offset: u64, timestamp: u64, payload: &[u8]) -> bool {
    [false, true].into_iter().any(|batch| {
        let frame = frame(offset, timestamp, payload, batch);
        file.windows(frame.len()).any(|w| w == frame)
    })
}
