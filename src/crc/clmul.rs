//! The CRC-32 (IEEE) of several buffers side by side by carry-less multiplication, on x86_64
//! with AVX-512 (F and BW) and VPCLMULQDQ. After Intel's white paper "Fast CRC Computation
//! for Generic Polynomials Using PCLMULQDQ Instruction"; the constants are computed here
//! from the polynomial.
//!
//! A 128-bit lane holds 16 bytes of a buffer as a polynomial, in the order a reflected CRC
//! reads them: bit `m` (byte 0's lowest bit first) is the coefficient of `x^(127 - m)`.
//! Folding a lane over the next 16 bytes multiplies its two 64-bit halves by `x^n mod P`
//! for the right `n`, which keeps it congruent modulo `P` in 128 bits; once the buffer is
//! folded into one lane, two more steps and a Barrett reduction give the CRC.
//!
//! Each fold waits for the one before, so a short buffer alone leaves the multiplier idle
//! most of the time. Here a 512-bit register holds one lane of each of four buffers, which
//! one instruction folds at once, and two such groups interleave their chains.
//!
//! A buffer is taken as if zeros led it up to a multiple of 16 bytes: leading zeros do not
//! change a CRC whose starting value is already in the data, and every buffer then starts
//! with one partial block (its head) and goes on with whole ones.
#![deny(unsafe_code)]

use core::arch::x86_64::{
    __m128i, __m512i, _mm_and_si128, _mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_extract_epi32, _mm_extract_epi64,
    _mm_set_epi32, _mm_set_epi64x, _mm_setzero_si128, _mm_shuffle_epi8, _mm_srli_si128, _mm_xor_si128,
    _mm256_castsi256_si128, _mm256_extracti128_si256, _mm256_xor_si256, _mm512_bsrli_epi128, _mm512_castsi128_si512,
    _mm512_castsi512_si128, _mm512_clmulepi64_epi128, _mm512_extracti32x4_epi32, _mm512_extracti64x4_epi64,
    _mm512_inserti32x4, _mm512_mask_broadcast_i32x4, _mm512_maskz_mov_epi32, _mm512_maskz_mov_epi64,
    _mm512_maskz_permutexvar_epi64, _mm512_permutexvar_epi32, _mm512_set_epi32, _mm512_set_epi64, _mm512_set1_epi64,
    _mm512_setzero_si512, _mm512_sub_epi64, _mm512_ternarylogic_epi64, _mm512_xor_si512,
};

/// Buffers side by side in one register.
pub(super) const LANES: usize = 4;
/// Shorter buffers are left to the caller: the head is loaded as one whole block.
pub(super) const MIN_LEN: usize = 16;

/// The generator polynomial, bit `k` the coefficient of `x^k`.
const P: u64 = 0x1_04c1_1db7;

/// `x^n mod P`, bit `k` the coefficient of `x^k`.
const fn x_pow_mod_p(n: u32) -> u64 {
    let mut r = 1u64;
    let mut i = 0;
    while i < n {
        r <<= 1;
        if r & 1 << 32 != 0 {
            r ^= P;
        }
        i += 1;
    }
    r
}

/// `floor(x^64 / P)`, the reciprocal Barrett reduction multiplies by.
const fn x64_div_p() -> u64 {
    let mut rem = 1u128 << 64;
    let mut quotient = 0u64;
    let mut degree = 64;
    while degree >= 32 {
        if rem >> degree & 1 != 0 {
            rem ^= (P as u128) << (degree - 32);
            quotient |= 1 << (degree - 32);
        }
        degree -= 1;
    }
    quotient
}

/// A polynomial of degree at most 32 as this module multiplies by it: the coefficient of
/// `x^(32 - j)` in bit `j`. Its product with a lane half (coefficient of `x^(63 - i)` in bit
/// `i`) has the coefficient of `x^(95 - m)` in bit `m`: read as a lane, the product times
/// `x^32`.
const fn reflect33(p: u64) -> u64 {
    let mut r = 0;
    let mut k = 0;
    while k <= 32 {
        if p >> k & 1 != 0 {
            r |= 1 << (32 - k);
        }
        k += 1;
    }
    r
}

/// Carries a lane's first half 64 bytes on (four lanes of one buffer, 4 blocks a step).
const FOLD64_HIGH: u64 = reflect33(x_pow_mod_p(512 + 32));
/// Carries a lane's second half 64 bytes on.
const FOLD64_LOW: u64 = reflect33(x_pow_mod_p(512 - 32));
/// Carry a lane's halves 48 bytes on.
const FOLD48_HIGH: u64 = reflect33(x_pow_mod_p(384 + 32));
const FOLD48_LOW: u64 = reflect33(x_pow_mod_p(384 - 32));
/// Carry a lane's halves 32 bytes on.
const FOLD32_HIGH: u64 = reflect33(x_pow_mod_p(256 + 32));
const FOLD32_LOW: u64 = reflect33(x_pow_mod_p(256 - 32));
/// Carries a lane's first half (the high-degree one) 16 bytes on.
const FOLD_HIGH: u64 = reflect33(x_pow_mod_p(128 + 32));
/// Carries a lane's second half 16 bytes on; also the first reduction step.
const FOLD_LOW: u64 = reflect33(x_pow_mod_p(128 - 32));
/// The second reduction step: brings 32 bits of degree 64 and up below `x^64`.
const REDUCE_64: u64 = reflect33(x_pow_mod_p(64));
/// Barrett reduction's reciprocal.
const MU: u64 = reflect33(x64_div_p());
/// The polynomial, for Barrett reduction.
const POLY: u64 = reflect33(P);

/// Shuffle masks that move a lane's first `n` bytes to its end, zeros before them: the 16
/// bytes from index `n` on.
const TO_END: [u8; 32] = {
    let mut masks = [0x80; 32];
    let mut i = 16;
    while i < 32 {
        masks[i] = (i - 16) as u8;
        i += 1;
    }
    masks
};

/// The CRC-32 of each of `spans`, each at least [`MIN_LEN`] bytes long, as
/// `crc32fast::hash` gives it. The blocks all the buffers have are folded side by side, the
/// rest of the longer ones lane by lane: buffers of about the same length suit it best.
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
pub(super) fn crc32_lanes<const GROUPS: usize>(spans: &[[&[u8]; LANES]; GROUPS]) -> [[u32; LANES]; GROUPS] {
    let mut lanes = [_mm512_setzero_si512(); GROUPS];
    let mut bodies: [[&[[u8; 16]]; LANES]; GROUPS] = [[&[]; LANES]; GROUPS];
    let mut common = usize::MAX;
    for g in 0..GROUPS {
        let mut heads = [_mm_setzero_si128(); LANES];
        for i in 0..LANES {
            (heads[i], bodies[g][i]) = head(spans[g][i]);
            common = common.min(bodies[g][i].len());
        }
        lanes[g] = join(heads);
    }
    // Cut to the common length, so that the loop below needs no bounds checks.
    let mut shared = bodies;
    for group in &mut shared {
        for body in group {
            *body = &body[..common];
        }
    }
    for round in 0..common {
        for g in 0..GROUPS {
            let [a, b, c, d] = shared[g];
            let blocks = join([load(&a[round]), load(&b[round]), load(&c[round]), load(&d[round])]);
            lanes[g] = fold4(lanes[g], blocks);
        }
    }
    for g in 0..GROUPS {
        if bodies[g].iter().any(|body| body.len() > common) {
            let mut apart = split(lanes[g]);
            for i in 0..LANES {
                for block in &bodies[g][i][common..] {
                    apart[i] = fold(apart[i], load(block));
                }
            }
            lanes[g] = join(apart);
        }
    }
    let mut crcs = [[0; LANES]; GROUPS];
    for g in 0..GROUPS {
        crcs[g] = finish(lanes[g]);
    }
    crcs
}

/// The CRC-32 of one buffer of at least [`MIN_LEN`] bytes, as `crc32fast::hash` gives it.
///
/// The buffer is cut into blocks as for [`crc32_lanes`] (its head first), and four
/// consecutive blocks share a register: each step folds all four 64 bytes on, so the chain
/// of dependent multiplications is a quarter as long as folding block by block. Zero lanes
/// before the head make the count of lanes a multiple of four without changing the CRC. At
/// the end each lane is carried to the end of the buffer and the four are added.
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
pub(super) fn crc32_one(bytes: &[u8]) -> u32 {
    let (head, blocks) = head(bytes);
    let Some((first, _)) = blocks.split_first_chunk::<4>() else {
        // At most four lanes in all: folding them one by one is as short a chain.
        return finish_one(blocks.iter().fold(head, |lane, block| fold(lane, load(block))));
    };
    // Zero lanes before the head, so that the head and the blocks fill whole registers.
    let pad = 3 - blocks.len() % 4;
    // The first register: `pad` zero lanes, the head, then the first `3 - pad` blocks, moved
    // up from where they were loaded (`permutexvar` takes lane indices modulo 8 qwords).
    let shift = _mm512_set1_epi64(2 * (pad as i64 + 1));
    let up = _mm512_sub_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), shift);
    let kept = (0xffu32 << (2 * (pad + 1))) as u8;
    let firsts = _mm512_maskz_permutexvar_epi64(kept, up, load4(first));
    let mut lanes = _mm512_mask_broadcast_i32x4(firsts, 0xf << (4 * pad), head);
    // The blocks the first register did not take: a whole number of registers.
    let (steps, _) = blocks[3 - pad..].as_chunks::<4>();
    let step = repeat(FOLD64_LOW, FOLD64_HIGH);
    for next in steps {
        lanes = fold_by(lanes, step, load4(next));
    }
    // Lanes 0 to 2 are carried 48, 32 and 16 bytes on, to the end of the last; lane 3 is.
    let to_end = _mm512_set_epi64(
        0,
        0,
        FOLD_LOW as i64,
        FOLD_HIGH as i64,
        FOLD32_LOW as i64,
        FOLD32_HIGH as i64,
        FOLD48_LOW as i64,
        FOLD48_HIGH as i64,
    );
    let carried = fold_by(lanes, to_end, _mm512_maskz_mov_epi64(0xc0, lanes));
    let halves = _mm256_xor_si256(_mm512_extracti64x4_epi64::<0>(carried), _mm512_extracti64x4_epi64::<1>(carried));
    finish_one(_mm_xor_si128(_mm256_castsi256_si128(halves), _mm256_extracti128_si256::<1>(halves)))
}

/// Four blocks as four lanes, the first in the low bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn load4(blocks: &[[u8; 16]; 4]) -> __m512i {
    join([load(&blocks[0]), load(&blocks[1]), load(&blocks[2]), load(&blocks[3])])
}

/// The CRC of one lane that ends a buffer: `lane * x^32 mod P`, complemented ([`finish`]
/// for one lane).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn finish_one(lane: __m128i) -> u32 {
    let reduce = _mm_set_epi64x(REDUCE_64 as i64, FOLD_LOW as i64);
    let barrett = _mm_set_epi64x(POLY as i64, MU as i64);
    let low32 = _mm_set_epi32(0, 0, 0, -1);
    let v = _mm_xor_si128(_mm_clmulepi64_si128::<0x00>(lane, reduce), _mm_srli_si128::<8>(lane));
    let w = _mm_xor_si128(_mm_clmulepi64_si128::<0x10>(_mm_and_si128(v, low32), reduce), _mm_srli_si128::<4>(v));
    let estimate = _mm_clmulepi64_si128::<0x00>(_mm_and_si128(w, low32), barrett);
    let remainder = _mm_xor_si128(w, _mm_clmulepi64_si128::<0x10>(_mm_and_si128(estimate, low32), barrett));
    !(_mm_extract_epi32::<1>(remainder) as u32)
}

/// A buffer's head as a lane (zeros before it, the starting value folded in), and the
/// whole blocks after it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn head(bytes: &[u8]) -> (__m128i, &[[u8; 16]]) {
    let head_len = (bytes.len() - 1) % 16 + 1;
    // The starting value !0 goes into the first four bytes.
    let first = _mm_xor_si128(load(bytes.first_chunk().expect("MIN_LEN bytes")), _mm_set_epi64x(0, 0xffff_ffff));
    let to_end = load(TO_END[head_len..].first_chunk().expect("16 masks"));
    let head = _mm_shuffle_epi8(first, to_end);
    let (blocks, _) = bytes[head_len..].as_chunks();
    match blocks.split_first() {
        // Some of the four bytes lie in the next block: it is folded in here.
        Some((next, rest)) if head_len < 4 => {
            let start_rest = _mm_set_epi64x(0, 0xffff_ffff >> (8 * head_len));
            (fold(head, _mm_xor_si128(load(next), start_rest)), rest)
        }
        _ => (head, blocks),
    }
}

/// A block as a lane (a plain unaligned load once compiled).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn load(block: &[u8; 16]) -> __m128i {
    let (first, second) = block.split_at(8);
    let first = u64::from_le_bytes(first.try_into().expect("8 bytes"));
    let second = u64::from_le_bytes(second.try_into().expect("8 bytes"));
    _mm_set_epi64x(second as i64, first as i64)
}

/// `lane * x^128 mod P` in 128 bits, plus `next`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn fold(lane: __m128i, next: __m128i) -> __m128i {
    let constants = _mm_set_epi64x(FOLD_LOW as i64, FOLD_HIGH as i64);
    let high = _mm_clmulepi64_si128::<0x00>(lane, constants);
    let low = _mm_clmulepi64_si128::<0x11>(lane, constants);
    _mm_xor_si128(_mm_xor_si128(high, low), next)
}

/// [`fold`] for the four lanes of a register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn fold4(lanes: __m512i, next: __m512i) -> __m512i {
    fold_by(lanes, repeat(FOLD_LOW, FOLD_HIGH), next)
}

/// Each lane times `x^n mod P` in 128 bits, plus `next`, where `constants` holds, lane by
/// lane, `x^(n + 32)` and `x^(n - 32)` in the form [`reflect33`] gives (zeros: the product
/// is zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn fold_by(lanes: __m512i, constants: __m512i, next: __m512i) -> __m512i {
    let high = _mm512_clmulepi64_epi128::<0x00>(lanes, constants);
    let low = _mm512_clmulepi64_epi128::<0x11>(lanes, constants);
    // 0x96: the exclusive or of all three.
    _mm512_ternarylogic_epi64::<0x96>(high, low, next)
}

/// The same two 64-bit values in each lane, `low` first.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn repeat(high: u64, low: u64) -> __m512i {
    let (high, low) = (high as i64, low as i64);
    _mm512_set_epi64(high, low, high, low, high, low, high, low)
}

/// Four lanes in one register, the first in the low bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn join(lanes: [__m128i; LANES]) -> __m512i {
    let joined = _mm512_castsi128_si512(lanes[0]);
    let joined = _mm512_inserti32x4::<1>(joined, lanes[1]);
    let joined = _mm512_inserti32x4::<2>(joined, lanes[2]);
    _mm512_inserti32x4::<3>(joined, lanes[3])
}

/// The four lanes of a register, the first from the low bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn split(lanes: __m512i) -> [__m128i; LANES] {
    [
        _mm512_castsi512_si128(lanes),
        _mm512_extracti32x4_epi32::<1>(lanes),
        _mm512_extracti32x4_epi32::<2>(lanes),
        _mm512_extracti32x4_epi32::<3>(lanes),
    ]
}

/// The CRCs of four lanes that each end a buffer: `lane * x^32 mod P`, complemented.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq")]
fn finish(lanes: __m512i) -> [u32; LANES] {
    let reduce = repeat(REDUCE_64, FOLD_LOW);
    let barrett = repeat(POLY, MU);
    // Keeps the low 32 bits of each lane.
    const LOW32: u16 = 0x1111;
    // 128 -> 96 bits: the first half times x^96 mod P, plus the second half times x^32.
    let v = _mm512_xor_si512(_mm512_clmulepi64_epi128::<0x00>(lanes, reduce), _mm512_bsrli_epi128::<8>(lanes));
    // 96 -> 64 bits: the top 32 bits times x^64 mod P, plus the other 64.
    let top = _mm512_maskz_mov_epi32(LOW32, v);
    let w = _mm512_xor_si512(_mm512_clmulepi64_epi128::<0x10>(top, reduce), _mm512_bsrli_epi128::<4>(v));
    // Barrett: the quotient estimated from the top 32 bits, then the remainder.
    let estimate = _mm512_clmulepi64_epi128::<0x00>(_mm512_maskz_mov_epi32(LOW32, w), barrett);
    let quotient = _mm512_maskz_mov_epi32(LOW32, estimate);
    let remainder = _mm512_xor_si512(w, _mm512_clmulepi64_epi128::<0x10>(quotient, barrett));
    // Dword 1 of each lane, gathered in the low 128 bits.
    let gather = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 13, 9, 5, 1);
    let gathered = _mm512_castsi512_si128(_mm512_permutexvar_epi32(gather, remainder));
    let (first, second) = (_mm_cvtsi128_si64(gathered) as u64, _mm_extract_epi64::<1>(gathered) as u64);
    [!first as u32, !(first >> 32) as u32, !second as u32, !(second >> 32) as u32]
}
