//! Copies between a model's tensors and one flat vector (a queue slot, a state
//! snapshot), the two ends of a worker's sync: `gather` before a push, `scatter` after
//! a pull. Pure functions on slices; the Python face is `dbl_ps.parameter_store.gather_into`
//! / `scatter_from`, which `FlatState` calls on the CPU.
//!
//! Why our own copy and not `torch.Tensor.copy_` per tensor: a sync must also know
//! whether the state it pushes is finite (the divergence check). torch needs a second
//! pass for that (a sum over the vector), and its per-tensor copies use ordinary stores,
//! which first read every destination cache line (read-for-ownership) although it is
//! overwritten whole. Here one pass reads each value once, folds the finiteness check
//! into the copy (the trick of `rules::non_finite_bits`), and writes the destination
//! with streaming stores that skip that read: the destination (a queue slot that the
//! server reads next, or model tensors larger together than the caches) is not read
//! again by this core soon. Measured on ResNet-18's 11.2 M floats
//! (`benchmarks/worker_sync.py`, RESULTS.md, issue 26).
//!
//! Every function returns only after its streaming stores are ordered before any later
//! store (`sfence`), so a `commit` that follows publishes a slot whose contents are
//! visible to the server.

use crate::rules::non_finite_bits;

/// `out = concat(sources)` (their lengths sum to `out.len()`); returns whether every
/// value is finite.
pub fn gather(sources: &[&[f32]], out: &mut [f32]) -> bool {
    check_lengths(sources.iter().map(|s| s.len()), out.len());
    let mut bad = 0u32;
    let mut at = 0;
    for source in sources {
        bad |= stream_copy(&mut out[at..at + source.len()], source);
        at += source.len();
    }
    store_fence();
    bad == 0
}

/// `out = reference - concat(sources)`, each value one f32 subtraction (as
/// `torch.sub(reference, state)`); returns whether every value written is finite.
pub fn gather_displacement(sources: &[&[f32]], reference: &[f32], out: &mut [f32]) -> bool {
    check_lengths(sources.iter().map(|s| s.len()), out.len());
    assert_eq!(reference.len(), out.len(), "reference and out differ in length");
    let mut bad = 0u32;
    let mut at = 0;
    for source in sources {
        let range = at..at + source.len();
        bad |= stream_difference(&mut out[range.clone()], &reference[range], source);
        at += source.len();
    }
    store_fence();
    bad == 0
}

/// Split `state` over `targets` in order (their lengths sum to `state.len()`), and,
/// with `copy`, also write the whole state into it in the same pass.
pub fn scatter(state: &[f32], targets: &mut [&mut [f32]], copy: Option<&mut [f32]>) {
    check_lengths(targets.iter().map(|t| t.len()), state.len());
    if let Some(copy) = &copy {
        assert_eq!(copy.len(), state.len(), "copy and state differ in length");
    }
    let mut copy = copy;
    let mut at = 0;
    for target in targets.iter_mut() {
        let range = at..at + target.len();
        stream_copy(target, &state[range.clone()]);
        if let Some(copy) = copy.as_deref_mut() {
            // The piece was just read: from cache now, where the separate copy of the
            // whole state afterwards read it from memory again.
            stream_copy(&mut copy[range.clone()], &state[range]);
        }
        at += target.len();
    }
    store_fence();
}

fn check_lengths(parts: impl Iterator<Item = usize>, total: usize) {
    let sum: usize = parts.sum();
    assert_eq!(sum, total, "the pieces hold {sum} values, the flat vector {total}");
}

/// Floats per 64-byte cache line: streaming stores write whole lines.
const LINE: usize = 16;

/// `dst = src`; returns the OR of `non_finite_bits` over the values (0 when all finite).
pub(crate) fn stream_copy(dst: &mut [f32], src: &[f32]) -> u32 {
    assert_eq!(dst.len(), src.len());
    let head = head_len(dst);
    let mut bad = 0u32;
    for (d, &x) in dst[..head].iter_mut().zip(&src[..head]) {
        *d = x;
        bad |= non_finite_bits(x);
    }
    let body = (dst.len() - head) / LINE * LINE;
    bad |= stream_lines(&mut dst[head..head + body], &src[head..head + body], None);
    for (d, &x) in dst[head + body..].iter_mut().zip(&src[head + body..]) {
        *d = x;
        bad |= non_finite_bits(x);
    }
    bad
}

/// `dst = reference - src`; returns the OR of `non_finite_bits` over the values written.
fn stream_difference(dst: &mut [f32], reference: &[f32], src: &[f32]) -> u32 {
    assert!(dst.len() == src.len() && dst.len() == reference.len());
    let head = head_len(dst);
    let mut bad = 0u32;
    let scalar = |d: &mut [f32], r: &[f32], s: &[f32]| {
        let mut bad = 0u32;
        for ((d, &r), &x) in d.iter_mut().zip(r).zip(s) {
            *d = r - x;
            bad |= non_finite_bits(*d);
        }
        bad
    };
    bad |= scalar(&mut dst[..head], &reference[..head], &src[..head]);
    let body = (dst.len() - head) / LINE * LINE;
    let lines = head..head + body;
    bad |= stream_lines(&mut dst[lines.clone()], &src[lines.clone()], Some(&reference[lines]));
    let tail = head + body..;
    bad |= scalar(&mut dst[tail.clone()], &reference[tail.clone()], &src[tail]);
    bad
}

/// Values before the first 64-byte boundary of `dst` (all of them if it has none).
fn head_len(dst: &[f32]) -> usize {
    let misaligned = dst.as_ptr() as usize % (LINE * 4);
    if misaligned % 4 != 0 {
        return dst.len(); // not even f32-aligned: never for Rust slices, kept scalar anyway
    }
    (((LINE * 4 - misaligned) % (LINE * 4)) / 4).min(dst.len())
}

/// Whole lines: `dst = src`, or `dst = reference - src`. `dst` starts on a 64-byte
/// boundary and holds a multiple of `LINE` values.
#[cfg(target_arch = "x86_64")]
fn stream_lines(dst: &mut [f32], src: &[f32], reference: Option<&[f32]>) -> u32 {
    use std::arch::x86_64::*;
    debug_assert!(dst.len() % LINE == 0 && dst.as_ptr() as usize % 64 == 0);
    // SAFETY: SSE is part of the x86_64 baseline. Every pointer offset stays below
    // `dst.len()`, which `src` and `reference` match; loads are unaligned (`loadu`),
    // and the streaming stores go to `dst + i` with `i` a multiple of 16 floats from a
    // 64-byte-aligned start, so each is 16-byte aligned as `_mm_stream_ps` requires.
    unsafe {
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        let mut acc = _mm_setzero_ps();
        let mut i = 0;
        while i < dst.len() {
            let mut v = [
                _mm_loadu_ps(s.add(i)),
                _mm_loadu_ps(s.add(i + 4)),
                _mm_loadu_ps(s.add(i + 8)),
                _mm_loadu_ps(s.add(i + 12)),
            ];
            if let Some(r) = reference {
                let r = r.as_ptr();
                for (k, value) in v.iter_mut().enumerate() {
                    *value = _mm_sub_ps(_mm_loadu_ps(r.add(i + 4 * k)), *value);
                }
            }
            for (k, value) in v.iter().enumerate() {
                acc = _mm_or_ps(acc, _mm_sub_ps(*value, *value));
                _mm_stream_ps(d.add(i + 4 * k), *value);
            }
            i += LINE;
        }
        let mut lanes = [0u32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr() as *mut f32, acc);
        lanes.iter().fold(0, |bad, &lane| bad | lane)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn stream_lines(dst: &mut [f32], src: &[f32], reference: Option<&[f32]>) -> u32 {
    plain_lines(dst, src, reference)
}

/// [`stream_lines`] with ordinary stores: what other CPUs run (compiled everywhere, so the
/// tests on x86_64 check the two agree).
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn plain_lines(dst: &mut [f32], src: &[f32], reference: Option<&[f32]>) -> u32 {
    let mut bad = 0u32;
    match reference {
        None => {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = x;
                bad |= non_finite_bits(x);
            }
        }
        Some(reference) => {
            for ((d, &r), &x) in dst.iter_mut().zip(reference).zip(src) {
                *d = r - x;
                bad |= non_finite_bits(*d);
            }
        }
    }
    bad
}

/// Order the streaming stores before every later store (x86: they are weakly ordered).
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline; `sfence` has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of awkward lengths at every alignment: what a model's tensors look like.
    fn pieces() -> Vec<Vec<f32>> {
        [0usize, 1, 3, 15, 16, 17, 33, 64, 1000, 5, 4096 + 7]
            .iter()
            .enumerate()
            .map(|(p, &n)| (0..n).map(|i| (p * 10_000 + i) as f32 * 0.5 - 7.0).collect())
            .collect()
    }

    fn concat(pieces: &[Vec<f32>]) -> Vec<f32> {
        pieces.iter().flatten().copied().collect()
    }

    #[test]
    fn gather_concatenates_at_every_offset() {
        let pieces = pieces();
        let expected = concat(&pieces);
        let sources: Vec<&[f32]> = pieces.iter().map(|p| p.as_slice()).collect();
        // an out vector starting at every offset within a cache line
        let mut backing = vec![0f32; expected.len() + LINE];
        for offset in 0..LINE {
            let out = &mut backing[offset..offset + expected.len()];
            out.fill(-1.0);
            assert!(gather(&sources, out));
            assert_eq!(out, expected.as_slice(), "offset {offset}");
        }
    }

    #[test]
    fn gather_reports_any_non_finite_value() {
        let clean = pieces();
        let n = concat(&clean).len();
        let mut out = vec![0f32; n];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 1, 17, 40, 500, n / 2, n - 1] {
                let mut pieces = clean.clone();
                let mut left = at;
                let piece = pieces.iter_mut().find(|p| {
                    if left < p.len() {
                        return true;
                    }
                    left -= p.len();
                    false
                });
                piece.expect("index inside")[left] = bad;
                let sources: Vec<&[f32]> = pieces.iter().map(|p| p.as_slice()).collect();
                assert!(!gather(&sources, &mut out), "{bad} at {at}");
                assert_eq!(out[at].to_bits(), bad.to_bits());
            }
        }
    }

    #[test]
    fn displacement_is_reference_minus_state_bitwise() {
        let pieces = pieces();
        let state = concat(&pieces);
        let reference: Vec<f32> = state.iter().enumerate().map(|(i, x)| x * 1.0001 + (i % 7) as f32).collect();
        let sources: Vec<&[f32]> = pieces.iter().map(|p| p.as_slice()).collect();
        let mut out = vec![0f32; state.len()];
        assert!(gather_displacement(&sources, &reference, &mut out));
        let expected: Vec<u32> = reference.iter().zip(&state).map(|(r, x)| (r - x).to_bits()).collect();
        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), expected);
        let mut poisoned = reference.clone();
        poisoned[state.len() - 3] = f32::NAN;
        assert!(!gather_displacement(&sources, &poisoned, &mut out), "a non-finite value written is reported");
        let big = vec![f32::MAX; state.len()];
        let negative: Vec<f32> = big.iter().map(|x| -x).collect();
        assert!(!gather_displacement(&[&negative], &big, &mut out), "an overflow to inf is reported");
    }

    #[test]
    fn scatter_splits_and_copies_in_one_pass() {
        let shapes = pieces();
        let state: Vec<f32> = (0..concat(&shapes).len()).map(|i| i as f32 + 0.25).collect();
        let mut targets: Vec<Vec<f32>> = shapes.iter().map(|p| vec![0f32; p.len()]).collect();
        let mut copy = vec![0f32; state.len()];
        let mut views: Vec<&mut [f32]> = targets.iter_mut().map(|t| t.as_mut_slice()).collect();
        scatter(&state, &mut views, Some(&mut copy));
        assert_eq!(concat(&targets), state);
        assert_eq!(copy, state);
        let mut views: Vec<&mut [f32]> = targets.iter_mut().map(|t| t.as_mut_slice()).collect();
        scatter(&vec![3.0; state.len()], &mut views, None);
        assert!(concat(&targets).iter().all(|&x| x == 3.0));
    }

    /// The streaming (x86_64) and the plain (other CPUs) line copies write the same bits
    /// and agree on whether a non-finite value was written.
    #[test]
    fn streaming_and_plain_lines_agree() {
        let n = LINE * 70;
        let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.3 - 100.0).collect();
        let reference: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 1e3).collect();
        let mut backing = vec![0f32; 2 * n + LINE];
        let start = head_len(&backing); // the first 64-byte boundary
        let (streamed, plain) = backing[start..start + 2 * n].split_at_mut(n);
        assert_eq!(streamed.as_ptr() as usize % 64, 0);
        for (bad_at, reference) in [(None, None), (None, Some(&reference[..])), (Some(LINE * 33 + 5), Some(&reference[..]))] {
            let mut src = src.clone();
            if let Some(at) = bad_at {
                src[at] = f32::NAN;
            }
            let a = stream_lines(streamed, &src, reference);
            let b = plain_lines(plain, &src, reference);
            assert_eq!(a != 0, b != 0);
            assert_eq!(a != 0, bad_at.is_some());
            assert!(streamed.iter().zip(plain.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    #[should_panic(expected = "the pieces hold")]
    fn lengths_that_do_not_add_up_are_refused() {
        let mut out = vec![0f32; 5];
        gather(&[&[1.0, 2.0]], &mut out);
    }
}
