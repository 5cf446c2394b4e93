//! The 32-byte header that starts every segment and index file.
//!
//! Grammar (little-endian): `magic: [u8; 8] | version: u32 | reserved: u32 | base_offset: u64
//! | crc: u32 | reserved: u32`, where `crc` is CRC-32 of the 24 bytes before it.

use byteorder::{ByteOrder, LittleEndian};

use crate::error::CorruptKind;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = MAGIC_AT + 8;
const BASE_AT: usize = VERSION_AT + 8;
const CRC_AT: usize = BASE_AT + 8;
/// Bytes in a file header.
pub(crate) const FILE_HEADER_LEN: usize = CRC_AT + 8;

/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Magic number of a segment (`.log`) file.
pub(crate) const LOG_MAGIC: [u8; 8] = *b"SEGQLOG\0";
/// Magic number of an offset index (`.index`) file.
pub(crate) const INDEX_MAGIC: [u8; 8] = *b"SEGQIDX\0";

/// Builds a header for a file of the given kind.
pub(crate) fn encode(magic: [u8; 8], base_offset: u64) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[MAGIC_AT..VERSION_AT].copy_from_slice(&magic);
    LittleEndian::write_u32(&mut h[VERSION_AT..], FORMAT_VERSION);
    LittleEndian::write_u64(&mut h[BASE_AT..], base_offset);
    let crc = crc32fast::hash(&h[..CRC_AT]);
    LittleEndian::write_u32(&mut h[CRC_AT..], crc);
    h
}

/// Checks a header against the kind and base offset its file name promises.
pub(crate) fn check(bytes: &[u8], magic: [u8; 8], base_offset: u64) -> Result<(), CorruptKind> {
    let h = bytes.get(..FILE_HEADER_LEN).ok_or(CorruptKind::Truncated)?;
    if h[MAGIC_AT..VERSION_AT] != magic {
        return Err(CorruptKind::BadMagic);
    }
    let expected = LittleEndian::read_u32(&h[CRC_AT..]);
    let actual = crc32fast::hash(&h[..CRC_AT]);
    if expected != actual {
        return Err(CorruptKind::BadCrc { expected, actual });
    }
    let version = LittleEndian::read_u32(&h[VERSION_AT..]);
    if version != FORMAT_VERSION {
        return Err(CorruptKind::BadVersion { found: version });
    }
    let found = LittleEndian::read_u64(&h[BASE_AT..]);
    if found != base_offset {
        return Err(CorruptKind::BadHeader(format!(
            "base offset {found} does not match the file name's {base_offset}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_magic_crc_version_and_base() {
        let h = encode(LOG_MAGIC, 77);
        assert_eq!(check(&h, LOG_MAGIC, 77), Ok(()));
        assert_eq!(check(&h, INDEX_MAGIC, 77), Err(CorruptKind::BadMagic));
        assert!(matches!(check(&h, LOG_MAGIC, 78), Err(CorruptKind::BadHeader(_))));
        assert_eq!(check(&h[..10], LOG_MAGIC, 77), Err(CorruptKind::Truncated));
        let mut bad = h;
        bad[BASE_AT] ^= 1;
        assert!(matches!(check(&bad, LOG_MAGIC, 77), Err(CorruptKind::BadCrc { .. })));
        let mut v2 = encode(LOG_MAGIC, 77);
        LittleEndian::write_u32(&mut v2[VERSION_AT..], 2);
        let crc = crc32fast::hash(&v2[..CRC_AT]);
        LittleEndian::write_u32(&mut v2[CRC_AT..], crc);
        assert_eq!(check(&v2, LOG_MAGIC, 77), Err(CorruptKind::BadVersion { found: 2 }));
    }
}
