//! Memory-mapped files: the only module with `unsafe` memory access (`crate::crc` has the
//! one other `unsafe`, a call into a CPU-specific kernel).
//!
//! A [`Mapping`] is shared by every reader of a file; a [`MapWriter`], of which there is at
//! most one per mapping, appends to it. The invariant that makes this sound: **bytes below
//! the published length never change again**. The writer only stores at or past the
//! published length and then publishes (a release store); readers only form slices below
//! the published length they loaded (an acquire load). Readers and the writer therefore
//! never touch the same bytes at the same time. The one way to lower the published length,
//! [`MapWriter::rewind`], needs the writer to hold the only handle to the mapping, so that
//! no reader is left.
//!
//! A store into a mapping of a sparse file can raise SIGBUS on a full disk, so callers
//! reserve blocks with `fallocate` before mapping a file for writing. Touching a page that
//! lies wholly past the end of the file raises SIGBUS too: callers never shrink a file below
//! its published length.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// A mapped file whose bytes below [`Mapping::published`] can be read by any thread.
#[derive(Debug)]
pub(crate) struct Mapping {
    raw: MmapRaw,
    published: AtomicUsize,
    /// End of the last range [`Mapping::populate_write`] faulted in: callers populate ranges
    /// in order, ahead of the writer.
    populated: AtomicUsize,
}

impl Mapping {
    /// Maps `len` bytes of `file` read-only; all of them are readable.
    pub fn read_only(file: &File, len: usize) -> io::Result<Arc<Mapping>> {
        let raw = MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(Arc::new(Mapping { raw, published: AtomicUsize::new(len), populated: AtomicUsize::new(0) }))
    }

    /// Maps `len` bytes of `file` for appending; the first `published` bytes are readable.
    /// The file must be at least `len` bytes long with its blocks reserved.
    pub fn read_write(file: &File, len: usize, published: usize) -> io::Result<(Arc<Mapping>, MapWriter)> {
        assert!(published <= len, "published {published} is past the mapping's {len} bytes");
        let raw = MmapOptions::new().len(len).map_raw(file)?;
        let map = Arc::new(Mapping { raw, published: AtomicUsize::new(published), populated: AtomicUsize::new(0) });
        Ok((map.clone(), MapWriter { map }))
    }

    /// Length of the mapping, readable or not.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// How many bytes from the start are readable.
    #[inline]
    pub fn published(&self) -> usize {
        self.published.load(Ordering::Acquire)
    }

    /// All readable bytes.
    #[inline]
    pub fn readable(&self) -> &[u8] {
        let end = self.published();
        // SAFETY: `0..end` lies inside the mapping (published <= len) and below the published
        // length, which only the writer raises after its stores are complete; those bytes
        // never change again, so no `&mut` access or store can overlap this slice.
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr(), end) }
    }

    /// The bytes in `range`, or `None` if any of them is not readable.
    #[inline]
    pub fn bytes(&self, range: Range<usize>) -> Option<&[u8]> {
        self.readable().get(range)
    }

    /// Faults the pages of `range` in for writing (`MADV_POPULATE_WRITE`), so that stores
    /// into them later do not stop for a page fault. Does not change any byte. Best effort:
    /// older kernels lack the advice, and pages past the end of the file are skipped by the
    /// kernel with an error instead of a signal.
    pub fn populate_write(&self, range: Range<usize>) {
        let end = range.end.min(self.len());
        if range.start < end
            && self.raw.advise_range(memmap2::Advice::PopulateWrite, range.start, end - range.start).is_ok()
        {
            self.populated.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// End of the last range faulted in by [`Mapping::populate_write`].
    pub fn populated(&self) -> usize {
        self.populated.load(Ordering::Acquire)
    }

    /// Drops this mapping's page-table entries for `range` (`MADV_DONTNEED`). The bytes stay
    /// in the page cache, dirty or not, and a later touch maps them again: the write-back of
    /// pages nobody maps need not clean page-table entries one page at a time, each with a
    /// TLB flush on every CPU running the process.
    pub fn release_pages(&self, range: Range<usize>) {
        let end = range.end.min(self.len());
        if range.start < end {
            // SAFETY: the mapping is of a file and shared (`map_raw` of a file opened for
            // writing; read-only mappings are shared too), so MADV_DONTNEED discards no data:
            // the kernel moves each entry's dirty bit to its page, and the next access faults
            // the same bytes back in from the page cache. No reference into the range becomes
            // invalid, and the file is not shortened here.
            let _ = unsafe {
                self.raw.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, end - range.start)
            };
        }
    }

    /// Writes `range` back to the file and waits for the device (msync `MS_SYNC`).
    pub fn sync(&self, range: Range<usize>) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        self.raw.flush_range(range.start, range.len())
    }
}

/// The one writer of a [`Mapping`]. Not `Clone`: two writers would race on unpublished bytes.
#[derive(Debug)]
pub(crate) struct MapWriter {
    map: Arc<Mapping>,
}

impl MapWriter {
    /// The mapping this writer appends to.
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// Copies `bytes` to position `at`, which must not be readable yet.
    ///
    /// # Panics
    /// If `at` is below the published length or the bytes do not fit the mapping: both are
    /// bugs in segq, and writing anyway could change bytes a reader is looking at.
    pub fn write(&mut self, at: usize, bytes: &[u8]) {
        // Only this writer raises `published`, so a relaxed load sees the latest value.
        let published = self.map.published.load(Ordering::Relaxed);
        assert!(at >= published, "write at {at} below the published length {published}");
        assert!(at.checked_add(bytes.len()).is_some_and(|end| end <= self.map.len()), "write past the mapping");
        // SAFETY: the destination lies inside the mapping (checked above) and at or past the
        // published length, so no reader has a slice over it; `&mut self` on the only writer
        // rules out a concurrent store. The source is a distinct Rust slice, so the regions
        // cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.raw.as_mut_ptr().add(at), bytes.len()) }
    }

    /// The bytes in `range`, which lies at or past the published length: bytes only this
    /// writer touches (to checksum what it just wrote, before publishing it).
    ///
    /// # Panics
    /// If `range` starts below the published length or ends past the mapping.
    pub fn unpublished(&self, range: Range<usize>) -> &[u8] {
        let published = self.map.published.load(Ordering::Relaxed);
        assert!(range.start >= published && range.start <= range.end && range.end <= self.map.len(), "not unpublished");
        // SAFETY: the range lies inside the mapping (checked above) and at or past the
        // published length, where no reader forms a slice; `write` takes `&mut self`, so it
        // cannot store into these bytes while this shared borrow of the writer lives.
        unsafe { std::slice::from_raw_parts(self.map.raw.as_ptr().add(range.start), range.len()) }
    }

    /// Lowers the published length to `at`, so that the bytes from `at` on can be written
    /// again, if this writer holds the only handle to the mapping: then no reader exists
    /// that could hold a slice of them. Returns whether it did.
    ///
    /// # Panics
    /// If `at` is past the mapping.
    pub fn rewind(&mut self, at: usize) -> bool {
        assert!(at <= self.map.len(), "rewind past the mapping");
        match Arc::get_mut(&mut self.map) {
            Some(map) => {
                *map.published.get_mut() = at;
                true
            }
            None => false,
        }
    }

    /// Asks the CPU to fetch, for writing, the cache line at `at` and the one after, if they
    /// lie in the mapping. A store into a line that is not in cache waits for it, and so
    /// does every locked instruction after that store (the writer's lock, released after
    /// each append); fetched ahead, the line is there when the writer comes.
    #[inline]
    pub fn prefetch_for_write(&self, at: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if at + 128 <= self.map.len() {
            use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
            let line = self.map.raw.as_ptr().wrapping_add(at).cast::<i8>();
            // SAFETY: a prefetch reads and writes no memory and never faults; SSE is part
            // of x86_64.
            unsafe {
                _mm_prefetch::<_MM_HINT_ET0>(line);
                _mm_prefetch::<_MM_HINT_ET0>(line.wrapping_add(64));
            }
        }
    }

    /// Makes the first `end` bytes readable. Everything below `end` must be written.
    pub fn publish(&mut self, end: usize) {
        assert!(end <= self.map.len(), "publish past the mapping");
        // Only this writer changes `published`, so a load and a store do what `fetch_max`
        // would, without a locked read-modify-write on every append.
        if end > self.map.published.load(Ordering::Relaxed) {
            self.map.published.store(end, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewind_lowers_the_published_length_only_for_the_sole_handle() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(64).unwrap();
        let (map, mut writer) = Mapping::read_write(&file, 64, 0).unwrap();
        writer.write(0, b"old bytes");
        writer.publish(9);
        assert!(!writer.rewind(0), "a reader still holds the mapping");
        assert_eq!(map.readable(), b"old bytes");
        drop(map);
        assert!(writer.rewind(0));
        writer.write(0, b"new");
        writer.publish(3);
        assert_eq!(writer.mapping().readable(), b"new");
    }

    /// Released pages keep their bytes, written back or not: readers see them again, and a
    /// sync after the release still writes them to the file.
    #[test]
    fn released_pages_keep_their_bytes() {
        use std::os::unix::fs::FileExt;
        let file = tempfile::tempfile().unwrap();
        let len = 64 << 10;
        file.set_len(len as u64).unwrap();
        let (map, mut writer) = Mapping::read_write(&file, len, 0).unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        writer.write(0, &bytes);
        writer.publish(len);
        map.release_pages(0..len);
        assert_eq!(map.readable(), &bytes[..], "read back through the mapping");
        map.release_pages(4096..len + 4096); // past the end: clamped
        map.sync(0..len).unwrap();
        let mut on_disk = vec![0; len];
        file.read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, bytes, "dirty pages released before the sync reach the file");
    }
}
