#!/usr/bin/env bash
# Baseline vs DBSL vs CPL vs hybrid on real Fashion-MNIST with the CPU-scale config,
# two seeds (8 runs), one report. Run from the repository root; data is read from
# ../shared/data/fashion-mnist (the config's data.path).
#
# Shortened so the 8 runs fit in about 20 minutes on 2 CPU cores: 5,000 training
# images and 2,000 test images (fixed random subsets), 12 epochs with LR stages
# [0,6), [6,9), [9,12) (CPL: 2/2/2, 1/1/1, 1/1/1 epochs at 14/21/28 px).
# The time model is measured once at the start and shared by all variants.
set -euo pipefail
OUT=${OUT:-runs/compare-fashion-mnist}
exec dbl-ps compare --config configs/fashion_mnist_cpu.yaml --seeds 0,1 --out "$OUT" --no-progress \
    data.train_limit=5000 data.test_limit=2000 schedule.epochs=12 'schedule.milestones=[6,9]' "$@"
