#!/usr/bin/env bash
# The store's merge rules at an earlier commit against the working tree's, in one process,
# alternating call by call (one thread, 11.2 M floats, medians), bitwise equality asserted.
# Builds a throw-away crate from both versions of rust_ps/src/rules.rs (and the tree's flat.rs).
#
#     benchmarks/merge_ab.sh [BASE_COMMIT] [REPEATS]      # default: a4773cb (before issue 26 part two), 25
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-a4773cb}
repeats=${2:-25}
crate=$(mktemp -d)
trap 'rm -rf "$crate"' EXIT
mkdir -p "$crate/src"
printf '[package]\nname = "merge_ab"\nversion = "0.1.0"\nedition = "2021"\n' > "$crate/Cargo.toml"
git show "$base:rust_ps/src/rules.rs" > "$crate/src/old.rs"
cp rust_ps/src/rules.rs "$crate/src/new.rs"
sed 's/use crate::rules::non_finite_bits;/use crate::new::non_finite_bits;/' rust_ps/src/flat.rs > "$crate/src/flat.rs"
cat > "$crate/src/main.rs" <<'RS'
#![allow(dead_code)]
mod flat;
mod new;
mod old;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn main() {
    let repeats: usize = std::env::args().nth(1).map(|a| a.parse().expect("REPEATS")).unwrap_or(25);
    let n = 11_200_000usize;
    let make = |seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + seed * 13) % 101) as f32 * 0.01 - 0.5).collect() };
    let (state, a, b, c, d) = (make(0), make(1), make(2), make(3), make(4));
    let (mut out_old, mut out_new) = (vec![0f32; n], vec![0f32; n]);
    let (mut m_old, mut m_new) = (make(5), make(5));
    let p_old = old::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let p_new = new::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let cases = ["average, 2 payloads", "average, 4 payloads", "blend", "sgd, momentum in place"];
    let mut times = vec![(Vec::new(), Vec::new()); cases.len()];
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    for _ in 0..repeats + 1 {
        let runs: [(f64, f64); 4] = [
            (time(&mut || { old::weighted_sum::<false>(&mut out_old, &[&a, &b], &[0.3, 0.7]); }),
             time(&mut || { new::weighted_sum::<false>(&mut out_new, &[&a, &b], &[0.3, 0.7]); })),
            (time(&mut || { old::weighted_sum::<false>(&mut out_old, &[&a, &b, &c, &d], &[0.1, 0.2, 0.3, 0.4]); }),
             time(&mut || { new::weighted_sum::<false>(&mut out_new, &[&a, &b, &c, &d], &[0.1, 0.2, 0.3, 0.4]); })),
            (time(&mut || { old::blend::<false>(&mut out_old, &state, &a, 0.5); }),
             time(&mut || { new::blend::<false>(&mut out_new, &state, &a, 0.5); })),
            (time(&mut || { old::sgd::<false>(&mut out_old, &state, Some(old::Momentum::InPlace(&mut m_old)), &[&a], &[1.0], p_old); }),
             time(&mut || { new::sgd::<false>(&mut out_new, &state, Some(new::Momentum::InPlace(&mut m_new)), &[&a], &[1.0], p_new); })),
        ];
        assert!(same_bits(&out_old, &out_new) && same_bits(&m_old, &m_new), "the two versions differ");
        for (k, (o, w)) in runs.into_iter().enumerate() {
            times[k].0.push(o);
            times[k].1.push(w);
        }
    }
    println!("{n} floats, one thread, medians of {repeats} alternating calls (first dropped); bits equal");
    for (name, (o, w)) in cases.iter().zip(times) {
        let (o, w) = (median(o[1..].to_vec()), median(w[1..].to_vec()));
        println!("| {name} | {:.2} ms | {:.2} ms | {:.2} |", o * 1e3, w * 1e3, w / o);
    }
}
RS
echo "| rule | $base | working tree | tree / $base |"
echo "|---|---:|---:|---:|"
cargo run --quiet --release --manifest-path "$crate/Cargo.toml" -- "$repeats"
