//! Positional reads in bounded chunks: how the inspection layer reads files.
//!
//! Files are never mapped here. A writer that cuts or deletes a segment while it is being
//! read makes a read return fewer bytes (the file looks shorter), never a SIGBUS.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Where bytes come from: an open file or bytes in memory (tests and fuzzing).
#[derive(Debug)]
pub(crate) enum Source {
    File(File),
    Bytes(Vec<u8>),
}

impl Source {
    /// Reads at `pos` into `buf` until it is full or the source ends; returns the bytes read.
    pub fn read_full(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        match self {
            Source::File(file) => {
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read_at(&mut buf[filled..], pos + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(filled)
            }
            Source::Bytes(bytes) => {
                let start = usize::try_from(pos).unwrap_or(usize::MAX).min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
        }
    }

    /// The stretches of `pos..end` that may hold bytes other than zeros: the holes of a
    /// sparse file and the unwritten blocks of a preallocated one are left out, as the file
    /// system tells them. Asked once, before any of them is read: reading has the kernel read
    /// ahead, and ahead of a stretch lie unwritten blocks whose zeros, once in the page
    /// cache, count as data for every later question. At most `max` stretches, the last
    /// then running to `end`; one stretch where the file system cannot tell.
    pub fn data_runs(&self, pos: u64, end: u64, max: usize) -> Vec<Range<u64>> {
        let Source::File(file) = self else {
            return std::iter::once(pos..end).filter(|r| !r.is_empty()).collect();
        };
        let mut runs = Vec::new();
        let mut at = pos;
        while at < end {
            if runs.len() + 1 >= max {
                runs.push(at..end);
                break;
            }
            let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
                Ok(data) => data.max(at),
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => at,
            };
            if data >= end {
                break;
            }
            // The end of the file counts as a hole: there is always one after `data`.
            let hole = match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data)) {
                Ok(hole) if hole > data => hole.min(end),
                _ => end,
            };
            runs.push(data..hole);
            at = hole;
        }
        runs
    }

    /// The current length of the source.
    pub fn len(&self) -> io::Result<u64> {
        match self {
            Source::File(file) => Ok(file.metadata()?.len()),
            Source::Bytes(bytes) => Ok(bytes.len() as u64),
        }
    }
}

/// A window of a source's bytes: `buf[..len]` holds the bytes at `start..start + len`.
#[derive(Debug, Default)]
pub(crate) struct Window {
    buf: Vec<u8>,
    start: u64,
    len: usize,
}

impl Window {
    /// The buffered bytes and the position of the first one.
    pub fn bytes(&self) -> (&[u8], u64) {
        (&self.buf[..self.len], self.start)
    }

    /// Position just past the buffered bytes.
    pub fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Forgets the buffered bytes (the file may have changed since they were read).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes the window hold at least `need` bytes from `pos` (fewer only where the source
    /// ends), reading `chunk` bytes ahead when it has to read. `len` is the source length
    /// as known; it is lowered if the source turns out shorter (a writer cut it).
    ///
    /// The buffer is sized by `max(need, chunk)` capped by the bytes left in the source:
    /// callers bound `need` before asking.
    pub fn ensure(&mut self, src: &Source, len: &mut u64, pos: u64, need: usize, chunk: usize) -> io::Result<()> {
        let left = len.saturating_sub(pos);
        let need = (need as u64).min(left) as usize;
        if pos >= self.start && pos + need as u64 <= self.end() {
            return Ok(());
        }
        let keep = if pos >= self.start && pos < self.end() { (self.end() - pos) as usize } else { 0 };
        if keep > 0 {
            let from = (pos - self.start) as usize;
            self.buf.copy_within(from..from + keep, 0);
        }
        let want = (need.max(chunk) as u64).min(left) as usize;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        } else if self.buf.len() > 2 * chunk.max(want) {
            // A big record needed a big buffer once; do not keep it for the small ones.
            self.buf.truncate(chunk.max(want));
            self.buf.shrink_to_fit();
        }
        self.start = pos;
        self.len = keep;
        let got = src.read_full(&mut self.buf[keep..want.max(keep)], pos + keep as u64)?;
        self.len = keep + got;
        if self.len < want {
            *len = self.end();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_keeps_what_it_has_and_notices_a_shorter_source() {
        let src = Source::Bytes((0..100u8).collect());
        let mut w = Window::default();
        let mut len = 100;
        w.ensure(&src, &mut len, 10, 4, 8).unwrap();
        assert_eq!(w.bytes(), (&[10, 11, 12, 13, 14, 15, 16, 17][..], 10));
        w.ensure(&src, &mut len, 16, 4, 8).unwrap();
        assert_eq!(w.bytes().1, 16);
        assert_eq!(&w.bytes().0[..4], &[16, 17, 18, 19]);
        w.ensure(&src, &mut len, 98, 8, 8).unwrap();
        assert_eq!(w.bytes(), (&[98, 99][..], 98));
        let mut claimed = 200;
        w.ensure(&src, &mut claimed, 90, 50, 8).unwrap();
        assert_eq!(claimed, 100, "the source is shorter than claimed");
    }
}
