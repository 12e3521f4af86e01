//! The merge rules as pure functions on slices. The server calls them on disjoint
//! slices of the state from several threads; tests call them directly.
//!
//! Each rule takes a `CHECK` constant: with `CHECK = true` it also returns whether
//! every value it wrote to `out` is finite, folded into the loop that writes them (no
//! second pass; the store's `reject_non_finite`). With `CHECK = false` it returns
//! `true`. Checking what is written covers what is
//! read: a NaN or infinity in a payload makes the value computed from it non-finite
//! (IEEE arithmetic propagates NaN, and `0 * inf` is NaN, so no coefficient can hide
//! one), and a result that overflows f32 is caught too.
//!
//! `average` writes its result a block at a time from a stack buffer with streaming
//! stores (`write_block`) and fences them before it returns (`benchmarks/merge_ab.sh`
//! compares it with an earlier commit's). `blend` and `sgd` write with ordinary stores:
//! the same streaming through a stack block was tried for them and was slower.

use crate::flat::{store_fence, stream_copy};

/// Elements processed per block; the f64 accumulator for one block lives on the stack.
const BLOCK: usize = 1024;

/// Bits that are all zero when `x` is finite: `x - x` is +0 for a finite `x` and NaN
/// for a NaN or an infinity. ORed together over a loop, they make an integer
/// reduction that the compiler vectorises at two instructions per vector (a subtract
/// and an or), where `is_finite` costs five.
#[inline(always)]
#[allow(clippy::eq_op)] // `x - x` is the point: 0 only for finite `x`
pub(crate) fn non_finite_bits(x: f32) -> u32 {
    (x - x).to_bits()
}

/// Whether every value of `values` is finite (a separate pass: for the server's rare
/// path that finds which payloads of a refused BSP round were bad).
pub fn all_finite(values: &[f32]) -> bool {
    values.chunks(BLOCK).all(|block| block.iter().fold(0, |bad, &x| bad | non_finite_bits(x)) == 0)
}

/// `out = sum_i coefficients[i] * sources[i]` (coefficients already normalised to sum
/// to 1 for a weighted mean), accumulated in f64 and rounded once to f32. Returns
/// whether every value written is finite (always `true` unless `CHECK`).
pub fn weighted_sum<const CHECK: bool>(out: &mut [f32], sources: &[&[f32]], coefficients: &[f64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { weighted_sum_avx2::<CHECK>(out, sources, coefficients) };
    }
    weighted_sum_body::<CHECK>(out, sources, coefficients)
}

/// [`weighted_sum`] compiled for AVX2: four f64 lanes per instruction where the x86_64
/// baseline (SSE2) has two, for an f64 loop that one thread runs below memory speed.
/// The same operations in the same order (no fused multiply-add), so the same bits.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weighted_sum_avx2<const CHECK: bool>(out: &mut [f32], sources: &[&[f32]], coefficients: &[f64]) -> bool {
    weighted_sum_body::<CHECK>(out, sources, coefficients)
}

#[inline(always)]
fn weighted_sum_body<const CHECK: bool>(out: &mut [f32], sources: &[&[f32]], coefficients: &[f64]) -> bool {
    assert_eq!(sources.len(), coefficients.len());
    assert!(sources.iter().all(|s| s.len() >= out.len()));
    let mut acc = [0.0f64; BLOCK];
    let mut block = [0.0f32; BLOCK];
    let mut bad = 0u32;
    for start in (0..out.len()).step_by(BLOCK) {
        let end = (start + BLOCK).min(out.len());
        let values = &mut block[..end - start];
        weighted_block(values, &mut acc, sources, start, coefficients);
        bad |= write_block::<CHECK>(&mut out[start..end], values);
    }
    store_fence();
    bad == 0
}

/// `values = sum_i coefficients[i] * sources[i][offset..offset + values.len()]`, in f64
/// (`acc`, at least as long as `values`), rounded once to f32. The first source's pass
/// starts the sum (from +0.0, as a zeroed accumulator would, so a -0.0 term gives the
/// same bits) and the last one's rounds it, so no pass only zeroes or converts.
#[inline(always)]
fn weighted_block(values: &mut [f32], acc: &mut [f64], sources: &[&[f32]], offset: usize, coefficients: &[f64]) {
    let n = values.len();
    if sources.is_empty() {
        values.fill(0.0);
        return;
    }
    let acc = &mut acc[..n];
    let last = sources.len() - 1;
    for (k, (source, &c)) in sources.iter().zip(coefficients).enumerate() {
        let xs = &source[offset..offset + n];
        match (k == 0, k == last) {
            (true, true) => {
                for (v, &x) in values.iter_mut().zip(xs) {
                    *v = (0.0 + c * x as f64) as f32;
                }
            }
            (true, false) => {
                for (a, &x) in acc.iter_mut().zip(xs) {
                    *a = 0.0 + c * x as f64;
                }
            }
            (false, false) => {
                for (a, &x) in acc.iter_mut().zip(xs) {
                    *a += c * x as f64;
                }
            }
            (false, true) => {
                for ((v, &a), &x) in values.iter_mut().zip(acc.iter()).zip(xs) {
                    *v = (a + c * x as f64) as f32;
                }
            }
        }
    }
}

/// Write a block of merged values into `out`, a state copy that no reader holds: with
/// streaming stores, which skip reading each destination line first (the
/// server does not read this copy again before readers pull it, and a state is larger
/// than the caches); see `flat`. Returns the values' `non_finite_bits` when `CHECK`.
#[inline(always)]
fn write_block<const CHECK: bool>(out: &mut [f32], values: &[f32]) -> u32 {
    let bad = stream_copy(out, values);
    if CHECK {
        bad
    } else {
        0
    }
}

/// The paper's asynchronous rule: `out = (state + f * update) / (1 + f)`. Returns
/// whether every value written is finite (always `true` unless `CHECK`).
pub fn blend<const CHECK: bool>(out: &mut [f32], state: &[f32], update: &[f32], weight: f64) -> bool {
    assert!(state.len() == out.len() && update.len() == out.len());
    let keep = (1.0 / (1.0 + weight)) as f32;
    let take = (weight / (1.0 + weight)) as f32;
    let mut bad = 0u32;
    for ((o, &w), &u) in out.iter_mut().zip(state).zip(update) {
        *o = keep * w + take * u;
        if CHECK {
            bad |= non_finite_bits(*o);
        }
    }
    bad == 0
}

/// SGD settings, in the same roles as `torch.optim.SGD` (dampening 0).
#[derive(Debug, Clone, Copy)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// The momentum buffer of rule sgd for one slice: updated in place, or read from one
/// copy and written to the other (the store keeps two when it may refuse a merge, so
/// that a refused one leaves the buffer as it was).
pub enum Momentum<'a> {
    InPlace(&'a mut [f32]),
    Copy { from: &'a [f32], to: &'a mut [f32] },
}

/// `buf = momentum * old + g`, then `g` becomes the step direction (Nesterov or not);
/// returns the new `buf`.
#[inline(always)]
fn momentum_step(old: f32, g: &mut f32, p: &SgdParams) -> f32 {
    let buf = p.momentum * old + *g;
    if p.nesterov {
        *g += p.momentum * buf;
    } else {
        *g = buf;
    }
    buf
}

/// One SGD step, written to match `torch.optim.SGD` operation for operation in f32:
///
/// ```text
/// g   = sum_i c_i * grad_i            (one source: c * grad; several: in f64, rounded once)
/// g   = g + weight_decay * w
/// buf = momentum * buf + g            (momentum > 0; buf starts at 0, so step one gives buf = g)
/// g   = g + momentum * buf  if nesterov,  else  g = buf
/// out = w - lr * g
/// ```
///
/// Returns whether every value written to `out` is finite (always `true` unless
/// `CHECK`). That covers the momentum buffer too: with `w` finite, a non-finite `buf`
/// makes `lr * g` non-finite (`0 * inf` is NaN), and so `out`.
pub fn sgd<const CHECK: bool>(
    out: &mut [f32],
    state: &[f32],
    momentum: Option<Momentum<'_>>,
    grads: &[&[f32]],
    coefficients: &[f64],
    p: SgdParams,
) -> bool {
    assert_eq!(grads.len(), coefficients.len());
    assert!(!grads.is_empty() && state.len() == out.len());
    let mut block = [0.0f32; BLOCK];
    let mut acc = [0.0f64; BLOCK];
    let mut momentum = momentum;
    let mut bad = 0u32;
    for start in (0..out.len()).step_by(BLOCK) {
        let end = (start + BLOCK).min(out.len());
        let g = &mut block[..end - start];
        if grads.len() == 1 {
            let c = coefficients[0] as f32;
            if c == 1.0 {
                g.copy_from_slice(&grads[0][start..end]);
            } else {
                for (gi, &x) in g.iter_mut().zip(&grads[0][start..end]) {
                    *gi = c * x;
                }
            }
        } else {
            weighted_block(g, &mut acc, grads, start, coefficients);
        }
        let w = &state[start..end];
        if p.weight_decay != 0.0 {
            for (gi, &wi) in g.iter_mut().zip(w) {
                *gi += p.weight_decay * wi;
            }
        }
        if p.momentum != 0.0 {
            match momentum.as_mut().expect("momentum needs a buffer") {
                Momentum::InPlace(buf) => {
                    for (b, gi) in buf[start..end].iter_mut().zip(g.iter_mut()) {
                        *b = momentum_step(*b, gi, &p);
                    }
                }
                Momentum::Copy { from, to } => {
                    for ((b, &old), gi) in to[start..end].iter_mut().zip(&from[start..end]).zip(g.iter_mut()) {
                        *b = momentum_step(old, gi, &p);
                    }
                }
            }
        }
        for ((o, &wi), &gi) in out[start..end].iter_mut().zip(w).zip(g.iter()) {
            *o = wi - p.lr * gi;
            if CHECK {
                bad |= non_finite_bits(*o);
            }
        }
    }
    bad == 0
}

/// Range of slice `part` of `parts` near-equal parts of `0..len`, boundaries rounded to
/// 16 floats (one cache line) so neighbouring threads never write the same line.
pub fn slice_range(len: usize, parts: usize, part: usize) -> std::ops::Range<usize> {
    let chunk = len.div_ceil(parts).div_ceil(16) * 16;
    let start = (part * chunk).min(len);
    let end = ((part + 1) * chunk).min(len);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sum_is_the_weighted_mean() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [3.0f32, 6.0, 9.0];
        let mut out = [0.0f32; 3];
        // weights 1 and 3 -> coefficients 0.25, 0.75
        weighted_sum::<false>(&mut out, &[&a, &b], &[0.25, 0.75]);
        assert_eq!(out, [2.5, 5.0, 7.5]);
    }

    #[test]
    fn weighted_sum_handles_lengths_past_a_block() {
        let n = BLOCK * 2 + 7;
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut out = vec![0.0f32; n];
        weighted_sum::<false>(&mut out, &[&a, &a], &[0.5, 0.5]);
        assert_eq!(out, a);
    }

    /// The blocked, streamed, AVX2 and portable forms give the bits of the plain formula: +0.0 plus
    /// each term in f64, in source order, rounded once (-0.0 terms included).
    #[test]
    fn weighted_sum_equals_the_plain_f64_formula_bitwise() {
        let n = BLOCK * 3 + 21;
        let make = |seed: usize| -> Vec<f32> {
            (0..n).map(|i| if i % 17 == 0 { -0.0 } else { ((i * 31 + seed * 7) % 113) as f32 * 0.37 - 20.0 }).collect()
        };
        let sources = [make(1), make(2), make(3), make(4)];
        for count in 0..=4 {
            let coefficients: Vec<f64> = (0..count).map(|k| 0.1 + 0.2 * k as f64).collect();
            let views: Vec<&[f32]> = sources[..count].iter().map(|s| s.as_slice()).collect();
            let mut backing = vec![7.0f32; n + 3];
            let out = &mut backing[3..]; // not aligned to a cache line
            assert!(weighted_sum::<true>(out, &views, &coefficients));
            // the portable body (what CPUs without AVX2 run) gives the same bits
            let mut portable = vec![0f32; n];
            assert!(weighted_sum_body::<true>(&mut portable, &views, &coefficients));
            assert!(out.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()));
            for i in 0..n {
                let expected = views.iter().zip(&coefficients).fold(0.0f64, |a, (s, &c)| a + c * s[i] as f64) as f32;
                assert_eq!(out[i].to_bits(), expected.to_bits(), "{count} sources, value {i}");
            }
        }
    }

    #[test]
    fn blend_follows_the_papers_rule() {
        let w = [1.0f32, -2.0];
        let u = [4.0f32, 2.0];
        let mut out = [0.0f32; 2];
        blend::<false>(&mut out, &w, &u, 0.5); // (w + 0.5 u) / 1.5
        assert!((out[0] - 2.0).abs() < 1e-6 && (out[1] + 0.666_666_7).abs() < 1e-6, "{out:?}");
        blend::<false>(&mut out, &w, &u, 1.0); // plain mean
        assert_eq!(out, [2.5, 0.0]);
    }

    #[test]
    fn sgd_plain_step() {
        let w = [1.0f32, 2.0];
        let g = [0.5f32, -1.0];
        let mut out = [0.0f32; 2];
        let p = SgdParams { lr: 0.1, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        sgd::<false>(&mut out, &w, None, &[&g], &[1.0], p);
        assert_eq!(out, [1.0 - 0.1 * 0.5, 2.0 + 0.1]);
    }

    #[test]
    fn sgd_momentum_weight_decay_and_weight_scaling() {
        let p = SgdParams { lr: 0.5, momentum: 0.9, weight_decay: 0.1, nesterov: false };
        let w0 = [1.0f32];
        let g = [1.0f32];
        let mut buf = [0.0f32];
        let mut w1 = [0.0f32];
        // weight 2 doubles the gradient: g = 2; + wd*w = 2.1; buf = 2.1; w = 1 - 0.5*2.1
        sgd::<false>(&mut w1, &w0, Some(Momentum::InPlace(&mut buf)), &[&g], &[2.0], p);
        assert!((w1[0] - (1.0 - 0.5 * 2.1)).abs() < 1e-7 && (buf[0] - 2.1).abs() < 1e-7);
        let mut w2 = [0.0f32];
        // second step: g = 2 + 0.1*w1; buf = 0.9*2.1 + g
        sgd::<false>(&mut w2, &w1, Some(Momentum::InPlace(&mut buf)), &[&g], &[2.0], p);
        let g2 = 2.0 + 0.1 * w1[0];
        let buf2 = 0.9 * 2.1 + g2;
        assert!((buf[0] - buf2).abs() < 1e-6 && (w2[0] - (w1[0] - 0.5 * buf2)).abs() < 1e-6);
    }

    #[test]
    fn sgd_nesterov_looks_ahead() {
        let p = SgdParams { lr: 1.0, momentum: 0.5, weight_decay: 0.0, nesterov: true };
        let mut buf = [0.0f32];
        let mut out = [0.0f32];
        sgd::<false>(&mut out, &[0.0], Some(Momentum::InPlace(&mut buf)), &[&[1.0]], &[1.0], p);
        // buf = 1; g = 1 + 0.5 * 1 = 1.5
        assert_eq!((out[0], buf[0]), (-1.5, 1.0));
    }

    #[test]
    fn slices_cover_everything_once_and_align() {
        for len in [1usize, 15, 16, 17, 1000, 4097] {
            for parts in 1..6 {
                let ranges: Vec<_> = (0..parts).map(|p| slice_range(len, parts, p)).collect();
                assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), len);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                assert!(ranges.iter().all(|r| r.start % 16 == 0 || r.is_empty()));
            }
        }
    }

    #[test]
    fn sgd_momentum_from_one_copy_into_the_other_equals_in_place() {
        let p = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.01, nesterov: true };
        let n = BLOCK + 5;
        let w: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let g: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.002).collect();
        let old: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let (mut in_place, mut out_a) = (old.clone(), vec![0.0f32; n]);
        sgd::<false>(&mut out_a, &w, Some(Momentum::InPlace(&mut in_place)), &[&g], &[1.0], p);
        let (mut to, mut out_b) = (vec![0.0f32; n], vec![0.0f32; n]);
        assert!(sgd::<true>(&mut out_b, &w, Some(Momentum::Copy { from: &old, to: &mut to }), &[&g], &[1.0], p));
        assert_eq!((out_a, in_place), (out_b, to));
    }

    /// Every rule reports a NaN or an infinity anywhere in a payload (first, middle,
    /// last element, past a block), and a result that overflows; finite inputs pass.
    #[test]
    fn checked_rules_report_non_finite_values() {
        let n = BLOCK * 2 + 3;
        let state = vec![1.0f32; n];
        let p = SgdParams { lr: 0.5, momentum: 0.9, weight_decay: 0.0, nesterov: false };
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, BLOCK + 1, n - 1] {
                let good = vec![2.0f32; n];
                let mut poisoned = good.clone();
                poisoned[at] = bad;
                let mut out = vec![0.0f32; n];
                assert!(weighted_sum::<true>(&mut out, &[&good, &good], &[0.5, 0.5]));
                assert!(!weighted_sum::<true>(&mut out, &[&good, &poisoned], &[0.5, 0.5]), "{bad} at {at}");
                assert!(blend::<true>(&mut out, &state, &good, 0.5));
                assert!(!blend::<true>(&mut out, &state, &poisoned, 0.5), "{bad} at {at}");
                // with lr = 0 too: 0 * inf is NaN, so no coefficient hides a bad value
                for lr in [0.5, 0.0] {
                    let p = SgdParams { lr, ..p };
                    let mut buf = vec![0.0f32; n];
                    assert!(sgd::<true>(&mut out, &state, Some(Momentum::InPlace(&mut buf)), &[&good], &[1.0], p));
                    let mut buf = vec![0.0f32; n];
                    let momentum = Some(Momentum::InPlace(&mut buf));
                    assert!(!sgd::<true>(&mut out, &state, momentum, &[&good, &poisoned], &[0.5, 0.5], p));
                }
                assert!(!all_finite(&poisoned) && all_finite(&good));
                // unchecked: the same merge reports nothing (and writes the NaN/inf)
                assert!(blend::<false>(&mut out, &state, &poisoned, 0.5));
                assert!(!out[at].is_finite());
            }
        }
        let mut out = vec![0.0f32; 1];
        let p = SgdParams { lr: 1e30, momentum: 0.0, weight_decay: 0.0, nesterov: false };
        assert!(!sgd::<true>(&mut out, &[0.0], None, &[&[1e30]], &[1.0], p), "overflow to inf is refused");
    }
}
