//! CRC-32 (IEEE), the checksum of record frames, of one buffer or of several at once.
//!
//! A record's checksum covers about a hundred bytes: too few for `crc32fast`'s wide
//! folding, so one record's CRC is a chain of dependent multiplications that leaves the CPU
//! waiting. Where the CPU has the instructions for it (x86_64 with AVX-512 and VPCLMULQDQ),
//! kernels of its own shorten that chain: [`crc32`] folds four blocks of one buffer at a
//! time, and [`crc32_each`] runs the chains of consecutive records side by side. Elsewhere,
//! under Miri and for buffers that do not suit them, `crc32fast` does the work.
//!
//! This module allows `unsafe` for the calls into the kernels. They are `#[target_feature]`
//! functions, which may run only once the CPU is known to have those features.
#![allow(unsafe_code)]

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod clmul;

use std::sync::LazyLock;

/// `crc32fast::Hasher::new` probes CPU features on every call; clone a prepared one instead.
static HASHER: LazyLock<crc32fast::Hasher> = LazyLock::new(crc32fast::Hasher::new);

/// A CRC-32 hasher ready for use.
#[inline]
pub(crate) fn hasher() -> crc32fast::Hasher {
    HASHER.clone()
}

/// The CRC-32 of `bytes`, as `crc32fast::hash` gives it.
#[inline]
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if let Some(cpu) = kernels::Capable::detect()
        && (clmul::MIN_LEN..=kernels::MAX_ONE_LEN).contains(&bytes.len())
    {
        return kernels::crc32_one(cpu, bytes);
    }
    crc32_portable(bytes)
}

/// [`crc32`] through `crc32fast`.
#[inline]
fn crc32_portable(bytes: &[u8]) -> u32 {
    let mut hasher = hasher();
    hasher.update(bytes);
    hasher.finalize()
}

/// Whether [`crc32_each`] runs CRCs side by side on this CPU (else one by one, and a caller
/// gains nothing by gathering buffers for it).
#[inline]
pub(crate) fn side_by_side() -> bool {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    return kernels::Capable::detect().is_some();
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    false
}

/// The CRC-32 of each of `spans` into `crcs` (as long), side by side where the CPU allows.
pub(crate) fn crc32_each(spans: &[&[u8]], crcs: &mut [u32]) {
    assert_eq!(spans.len(), crcs.len(), "one CRC for each span");
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if let Some(cpu) = kernels::Capable::detect() {
        for (spans, crcs) in spans.chunks(kernels::MAX_SPANS).zip(crcs.chunks_mut(kernels::MAX_SPANS)) {
            kernels::crc32_each(cpu, spans, crcs);
        }
        return;
    }
    for (span, crc) in spans.iter().zip(crcs) {
        *crc = crc32(span);
    }
}

/// Which buffers go to the kernels, and the calls into them.
#[cfg(all(target_arch = "x86_64", not(miri)))]
mod kernels {
    use std::sync::LazyLock;

    use super::clmul::{self, LANES};

    /// Whether the CPU has every feature the kernel is compiled for, probed once.
    static CAPABLE: LazyLock<bool> = LazyLock::new(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("vpclmulqdq")
            && is_x86_feature_detected!("pclmulqdq")
    });

    /// Proof that the CPU has every feature the kernel is compiled for: only
    /// [`Capable::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(super) struct Capable(());

    impl Capable {
        /// The proof, if the CPU has the features.
        #[inline]
        pub(super) fn detect() -> Option<Capable> {
            CAPABLE.then_some(Capable(()))
        }
    }

    /// Groups of lanes in one call: two chains keep the multiplier busy, and their pointers
    /// still fit in registers.
    const MAX_GROUPS: usize = 2;
    /// Most spans [`crc32_each`] takes.
    pub(super) const MAX_SPANS: usize = MAX_GROUPS * LANES;
    /// Longer spans go to `crc32_fast`, which folds a long buffer wider than a lane does.
    const MAX_LEN: usize = 512;
    /// Longer buffers alone go to `crc32fast`, which folds eight or sixteen blocks at a time
    /// past 256 bytes or 2 KiB: up to 1 KiB the kernel is still quicker (measured: 9 against
    /// 16 ns for 120 bytes, 33 against 44 ns for 1 KiB).
    pub(super) const MAX_ONE_LEN: usize = 1024;

    /// [`super::crc32`] of a buffer of `clmul::MIN_LEN..=MAX_ONE_LEN` bytes.
    #[inline]
    pub(super) fn crc32_one(_: Capable, bytes: &[u8]) -> u32 {
        // SAFETY: a `Capable` exists only once the CPU is known to have every feature the
        // kernel is compiled for.
        unsafe { clmul::crc32_one(bytes) }
    }

    /// [`super::crc32_each`] for at most [`MAX_SPANS`] spans.
    pub(super) fn crc32_each(cpu: Capable, spans: &[&[u8]], crcs: &mut [u32]) {
        let mut groups = [[&[][..]; LANES]; MAX_GROUPS];
        // Where each lane's CRC goes in `crcs`.
        let mut slots = [0; MAX_SPANS];
        let mut lanes = 0;
        for (i, &span) in spans.iter().enumerate() {
            if (clmul::MIN_LEN..=MAX_LEN).contains(&span.len()) {
                groups[lanes / LANES][lanes % LANES] = span;
                slots[lanes] = i;
                lanes += 1;
            } else {
                crcs[i] = super::crc32_portable(span);
            }
        }
        // Unused lanes repeat their group's first span: as long, they add no round.
        for lane in lanes..lanes.next_multiple_of(LANES) {
            groups[lane / LANES][lane % LANES] = groups[lane / LANES][0];
        }
        let lane_crcs = match lanes {
            0 => return,
            // One alone is quicker through `crc32fast`, without the lanes' setup and finish.
            1 => {
                crcs[slots[0]] = super::crc32(groups[0][0]);
                return;
            }
            2..=LANES => kernel::<1>(cpu, &groups),
            _ => kernel::<2>(cpu, &groups),
        };
        for (&slot, crc) in slots[..lanes].iter().zip(lane_crcs) {
            crcs[slot] = crc;
        }
    }

    /// The kernel on the first `GROUPS` groups, flattened.
    #[inline]
    fn kernel<const GROUPS: usize>(_: Capable, groups: &[[&[u8]; LANES]; MAX_GROUPS]) -> [u32; MAX_SPANS] {
        let groups = groups.first_chunk::<GROUPS>().expect("at most MAX_GROUPS groups");
        // SAFETY: a `Capable` exists only once the CPU is known to have every feature the
        // kernel is compiled for.
        let crcs = unsafe { clmul::crc32_lanes(groups) };
        let mut flat = [0; MAX_SPANS];
        for (flat, crc) in flat.iter_mut().zip(crcs.as_flattened()) {
            *flat = *crc;
        }
        flat
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Deterministic bytes that are not all one value.
    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed) ^ (i >> 8) as u8).collect()
    }

    /// `crc32_each` of `spans`.
    fn each(spans: &[&[u8]]) -> Vec<u32> {
        let mut crcs = vec![0; spans.len()];
        crc32_each(spans, &mut crcs);
        crcs
    }

    /// What `crc32fast` says of each of `spans`.
    fn expected(spans: &[&[u8]]) -> Vec<u32> {
        spans.iter().map(|s| crc32fast::hash(s)).collect()
    }

    #[test]
    fn known_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(each(&[b""]), [0]);
        assert_eq!(each(&[b"123456789", b"123456789123456789"]), [0xcbf4_3926, 0x4b83_7ae4]);
        assert_eq!(
            each(&[&[0; 32], &[0xff; 32], &[0; 16], &[0; 17]]),
            [0x190a_55ad, 0xff6c_ab0b, 0xecbb_4b55, 0xc9ef_f1bd]
        );
    }

    #[test]
    fn one_buffer_of_every_length_and_alignment_matches() {
        let data = bytes(1200, 5);
        for len in 0..=1100 {
            for start in 0..4 {
                let span = &data[start..start + len];
                assert_eq!(crc32(span), crc32fast::hash(span), "length {len} from {start}");
            }
        }
    }

    #[test]
    fn every_length_side_by_side_matches() {
        // Four lanes of one length, and of that length next to others (the head, one to
        // sixteen bytes, must be handled apart below four; longer lanes go on alone).
        let data = bytes(700, 7);
        for len in 0..=600 {
            let same = [&data[..len], &data[1..len + 1], &data[2..len + 2], &data[3..len + 3]];
            assert_eq!(each(&same), expected(&same), "four of length {len}");
            let mixed = [&data[..len], &data[5..25], &data[7..len / 2 + 7], &data[9..len + 9], &data[50..150]];
            assert_eq!(each(&mixed), expected(&mixed), "length {len} among others");
        }
    }

    #[test]
    fn lanes_of_every_pair_of_lengths_match() {
        let (a, b) = (bytes(80, 1), bytes(80, 2));
        for x in 0..=a.len() {
            for y in 0..=b.len() {
                let spans = [&a[..x], &b[..y], &b[..y], &a[..x], &b[..y], &a[..x]];
                assert_eq!(each(&spans), expected(&spans), "lengths {x} and {y}");
            }
        }
    }

    #[test]
    fn any_number_of_spans_matches() {
        let data = bytes(4000, 3);
        let spans: Vec<&[u8]> = (0..40).map(|i| &data[i * 97..i * 97 + 20 + i * 3]).collect();
        for n in 0..=spans.len() {
            assert_eq!(each(&spans[..n]), expected(&spans[..n]), "{n} spans");
        }
    }

    #[test]
    #[should_panic(expected = "one CRC for each span")]
    fn crcs_must_match_spans() {
        crc32_each(&[b"a"], &mut [0, 0]);
    }

    proptest! {
        #[test]
        fn side_by_side_matches_crc32fast(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            spans in proptest::collection::vec((0usize..3000, 0usize..700), 0..40),
        ) {
            // Starts anywhere (unaligned), lengths 0..700 in any mix.
            let spans: Vec<&[u8]> = spans
                .into_iter()
                .map(|(start, len)| {
                    let start = start.min(data.len());
                    &data[start..(start + len).min(data.len())]
                })
                .collect();
            prop_assert_eq!(each(&spans), expected(&spans));
        }

        #[test]
        fn one_buffer_matches_crc32fast(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            prop_assert_eq!(crc32(&data), crc32fast::hash(&data));
        }

        #[test]
        fn similar_lengths_match_crc32fast(
            data in proptest::collection::vec(any::<u8>(), 3000),
            len in 16usize..300,
            spans in proptest::collection::vec((0usize..2500, 0usize..40), 2..17),
        ) {
            // The iterator's case: lengths close to one another, all side by side.
            let spans: Vec<&[u8]> = spans.into_iter().map(|(start, extra)| &data[start..start + len + extra]).collect();
            prop_assert_eq!(each(&spans), expected(&spans));
        }
    }
}
