//! The cost of `reject_non_finite` inside the merge loops: each rule timed unchecked
//! (`CHECK = false`, the loop used without the option) and checked, on one thread,
//! interleaved, median of repeats; prints checked / unchecked time per rule.
//!
//!     cargo run --release -p rust_ps --example merge_check_cost [-- NUM_PARAMS REPEATS]

use rust_ps::rules::{self, Momentum, SgdParams};
use std::time::Instant;

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

/// Median seconds of `merge(false)` and `merge(true)`, run alternately.
fn time_pair(repeats: usize, mut merge: impl FnMut(bool) -> bool) -> (f64, f64) {
    merge(false);
    merge(true); // warm-up: page faults, caches
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let t = Instant::now();
        assert!(merge(false));
        off.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        assert!(merge(true));
        on.push(t.elapsed().as_secs_f64());
    }
    (median(off), median(on))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse().expect("NUM_PARAMS")).unwrap_or(11_200_000);
    let repeats: usize = args.next().map(|a| a.parse().expect("REPEATS")).unwrap_or(15);
    let make = |seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + seed * 13) % 101) as f32 * 0.01 - 0.5).collect() };
    let (state, a, b) = (make(0), make(1), make(2));
    let mut out = vec![0.0f32; n];
    let (old, mut new) = (make(3), vec![0.0f32; n]);
    let p = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
    println!("{n} floats, {repeats} repeats each, one thread; checked / unchecked time (medians):");
    let report = |name: &str, (off, on): (f64, f64)| {
        println!("  {name:28} unchecked {:7.2} ms  checked {:7.2} ms  ratio {:.3}", off * 1e3, on * 1e3, on / off)
    };
    report(
        "average (2 payloads)",
        time_pair(repeats, |check| match check {
            true => rules::weighted_sum::<true>(&mut out, &[&a, &b], &[0.5, 0.5]),
            false => rules::weighted_sum::<false>(&mut out, &[&a, &b], &[0.5, 0.5]),
        }),
    );
    report(
        "blend",
        time_pair(repeats, |check| match check {
            true => rules::blend::<true>(&mut out, &state, &a, 0.5),
            false => rules::blend::<false>(&mut out, &state, &a, 0.5),
        }),
    );
    report(
        "sgd (momentum, two copies)",
        time_pair(repeats, |check| {
            let momentum = Some(Momentum::Copy { from: &old, to: &mut new });
            match check {
                true => rules::sgd::<true>(&mut out, &state, momentum, &[&a], &[1.0], p),
                false => rules::sgd::<false>(&mut out, &state, momentum, &[&a], &[1.0], p),
            }
        }),
    );
    // What the option costs rule sgd in all: the store without it updates the momentum
    // in place; with it, from one copy into the other, checked.
    let mut in_place = old.clone();
    report(
        "sgd: in place -> two copies",
        time_pair(repeats, |check| match check {
            true => {
                let momentum = Some(Momentum::Copy { from: &old, to: &mut new });
                rules::sgd::<true>(&mut out, &state, momentum, &[&a], &[1.0], p)
            }
            false => {
                let momentum = Some(Momentum::InPlace(&mut in_place));
                rules::sgd::<false>(&mut out, &state, momentum, &[&a], &[1.0], p)
            }
        }),
    );
}
