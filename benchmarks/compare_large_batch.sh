#!/usr/bin/env bash
# Issue 33: where DBSL should help. The remedies a user would pick against the large-batch
# gap, next to DBSL and hybrid, in two regimes on this CPU, 2 seeds each, one time model per
# regime (fixed in the config or below: nothing measured on a busy machine):
#   large-batch  configs/fashion_mnist_large_batch.yaml: B_L 1024 on 12,000 images at 11/14 px,
#                10 epochs: the baseline far below plain training, B_L above the noise scale
#   overfit      configs/fashion_mnist_overfit.yaml: issue 22's regime (B_L 32, 1,000 images),
#                with issue 22's time model and one torch thread per process (as large-batch: on a
#                shared machine two threads of one process wait for each other)
# Methods: baseline, dbsl:3, hybrid:3, swa (the baseline with SWA over the last part),
# local-sgd (post-local SGD: every step until the first milestone, then every k steps),
# dbsl:3+swa, plain (one process, batch 128), ddp-like (the baseline's workers averaged
# every step). Reports (with noise_scale_vs_epoch.png) in $OUT/<regime>/report, both
# regimes in one table in $OUT/both.md. Run from the repository root; the runs take the
# time they take on a shared machine, about 3 h on 2 busy cores.
#
# The pilot that chose the large-batch regime (baseline, plain, dbsl:3, seed 0; its runs are
# the comparison's seed-0 runs, which a comparison into the same folder reuses):
#   PILOT=1 benchmarks/compare_large_batch.sh
set -euo pipefail
OUT=${OUT:-runs/issue33}
DBLPS=${DBLPS:-dbl-ps}
METHODS=${METHODS:-baseline,dbsl:3,hybrid:3,swa,local-sgd,dbsl:3+swa,plain,ddp-like}
if [[ "${PILOT:-0}" == 1 ]]; then
    exec $DBLPS compare --config fashion_mnist_large_batch --seeds 0 --no-progress --out "$OUT/large-batch" \
        --methods baseline,plain,dbsl:3 "$@"
fi
$DBLPS compare --config fashion_mnist_large_batch --seeds 0,1 --no-progress --out "$OUT/large-batch" \
    --methods "$METHODS" "$@"
$DBLPS compare --config fashion_mnist_overfit --seeds 0,1 --no-progress --out "$OUT/overfit" --methods "$METHODS" \
    "dbl.alpha={21: 0.006371696110010604, 28: 0.006190008113655474}" \
    "dbl.beta={21: 0.0009604328716597913, 28: 0.0016323448047997884}" threads_per_worker=1 "$@"
python benchmarks/issue33_table.py "$OUT/large-batch" "$OUT/overfit" > "$OUT/both.md"
cat "$OUT/both.md"
