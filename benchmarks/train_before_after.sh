#!/usr/bin/env bash
# `dbl-ps train` (the embedded default, digits) with this checkout against an earlier
# revision, alternating, PAIRS times each: wall clock from process start to exit and the
# final test accuracy, then the mean ratio after/before. Run from the repository root:
#   benchmarks/train_before_after.sh 34b786a [PAIRS] [key=value ...]
# The earlier revision runs from a git worktree in /tmp with this checkout's compiled store
# module copied in, so rust_ps/ must be the same in both (the script checks). Overrides
# apply to both; with dbl.alpha/dbl.beta given both plan from the same time model, which
# isolates the code's own speed from a time model measured on the spot.
set -euo pipefail
REV=${1:?usage: benchmarks/train_before_after.sh REV [PAIRS] [key=value ...]}
PAIRS=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
git diff --quiet "$REV" -- rust_ps || { echo "rust_ps/ differs from $REV: build that revision instead" >&2; exit 2; }
BEFORE=/tmp/dblps-before-$(git rev-parse --short "$REV")
[[ -d $BEFORE ]] || git worktree add -q --detach "$BEFORE" "$REV"
cp dbl_ps/_rust_ps*.so "$BEFORE/dbl_ps/"
OUT=$(mktemp -d)
run() {  # $1 label, $2 source tree
    local start end acc
    start=$EPOCHREALTIME
    PYTHONPATH="$2" python3 -m dbl_ps train --no-progress out_dir="$OUT/$1" "${@:3}" > "$OUT/$1.log" 2>&1
    end=$EPOCHREALTIME
    acc=$(grep -o 'final test acc [0-9.]*' "$OUT/$1.log" | awk '{print $4}')
    echo "$1 $(awk "BEGIN {print $end - $start}") $acc"
}
for i in $(seq "$PAIRS"); do
    run before "$BEFORE" "$@"
    run after "$PWD" "$@"
done | tee "$OUT/times.txt"
awk '{s[$1]+=$2; n[$1]++} END {printf "mean before %.1f s, after %.1f s, after/before %.3f\n", s["before"]/n["before"], s["after"]/n["after"], (s["after"]/n["after"])/(s["before"]/n["before"])}' "$OUT/times.txt"
