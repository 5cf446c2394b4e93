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

/// Whether `file` holds, as one whole frame with a valid CRC, the record with this offset,
/// timestamp and payload (with or without the batch-continues bit).
pub fn written(file: &[u8], offset: u64, timestamp: u64, payload: &[u8]) -> bool {
    [0u32, 0x8000_0000].iter().any(|flag| {
        let mut frame = vec![0u8; 4];
        frame.extend_from_slice(&(payload.len() as u32 | flag).to_le_bytes());
        frame.extend_from_slice(&offset.to_le_bytes());
        frame.extend_from_slice(&timestamp.to_le_bytes());
        frame.extend_from_slice(payload);
        let crc = crc32fast::hash(&frame[4..]);
        frame[..4].copy_from_slice(&crc.to_le_bytes());
        file.windows(frame.len()).any(|w| w == frame)
    })
}
