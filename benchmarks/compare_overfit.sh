#!/usr/bin/env bash
# Issue 22's comparison on this CPU: the authors' settings in a regime that overfits.
# configs/fashion_mnist_overfit.yaml (1,000 Fashion-MNIST training images, small ResNet,
# 4 workers, tau 1.1, 60 epochs, LR x0.1 at 34 and 51; every setting and deviation is in
# the file) with one time model measured once at the start for every run, 2 seeds each of:
#   baseline  conventional PS training (every worker large, 28 px)
#   dbsl:1    DBSL with 1 small worker of 4 (the authors' weakest setting)
#   dbsl:3    DBSL with 3 small workers of 4 (their best DBSL setting)
#   hybrid:3  DBSL with 3 small workers + CPL 21 -> 28 px
#   ddp-like  the baseline's workers averaged after every step
#   plain     one process, batch 128
# 12 runs, about 50 minutes on 2 cores with nothing else running. Report, CSV and plots in
# $OUT/report. Run from the repository root (data from ../shared/data/fashion-mnist).
#
# The n_S sweep (issue 22, point 5): n_S 1..4 at tau 1.1 and 1.05, seed 0, with the
# comparison's time model (its time_model.json); n_S 0 is the comparison's baseline, n_S 1
# and 3 at tau 1.1 its dbsl runs of seed 0. One table per tau, against that baseline:
#   SWEEP=1 benchmarks/compare_overfit.sh
#
# The authors' own LR per sample (3.6e-4: 0.0115 at B_L 32) over their 140 epochs (x0.1 at
# 80 and 120), baseline and dbsl:3, seeds 0 and 1, with the comparison's time model:
#   AUTHORS_LR=1 benchmarks/compare_overfit.sh
set -euo pipefail
OUT=${OUT:-runs/issue22-cpu}
DBLPS=${DBLPS:-dbl-ps}
if [[ "${SWEEP:-0}" == 1 ]]; then
    for tau in 1.1 1.05; do
        mkdir -p "$OUT/sweep-tau$tau" && cp "$OUT/time_model.json" "$OUT/sweep-tau$tau/"
    done
    $DBLPS compare --config fashion_mnist_overfit --seeds 0 --no-progress --out "$OUT/sweep-tau1.1" \
        --methods dbsl:2,dbsl:4 "$@"
    $DBLPS compare --config fashion_mnist_overfit --seeds 0 --no-progress --out "$OUT/sweep-tau1.05" \
        --methods dbsl:1,dbsl:2,dbsl:3,dbsl:4 dbl.tau=1.05 "$@"
    $DBLPS report "$OUT/baseline-s0" "$OUT/dbsl-n1-s0" "$OUT/sweep-tau1.1/dbsl-n2-s0" "$OUT/dbsl-n3-s0" \
        "$OUT/sweep-tau1.1/dbsl-n4-s0" --out "$OUT/sweep-tau1.1/report" --title "n_S sweep, tau 1.1, seed 0"
    exec $DBLPS report "$OUT/baseline-s0" "$OUT"/sweep-tau1.05/dbsl-n{1,2,3,4}-s0 --out "$OUT/sweep-tau1.05/report" \
        --title "n_S sweep, tau 1.05, seed 0"
fi
if [[ "${AUTHORS_LR:-0}" == 1 ]]; then
    mkdir -p "$OUT/authors-lr" && cp "$OUT/time_model.json" "$OUT/authors-lr/"
    exec $DBLPS compare --config fashion_mnist_overfit --seeds 0,1 --no-progress --out "$OUT/authors-lr" \
        --methods baseline,dbsl:3 schedule.lr=0.0115 schedule.epochs=140 "schedule.milestones=[80,120]" \
        eval.every=5 "$@"
fi
exec $DBLPS compare --config fashion_mnist_overfit --seeds 0,1 --no-progress --out "$OUT" \
    --methods baseline,dbsl:1,dbsl:3,hybrid:3,ddp-like,plain "$@"
