#!/usr/bin/env bash
# The GPU checks of the issues, in one command, for a machine with one CUDA GPU:
#
#   benchmarks/gpu_checks.sh OUTDIR [STEP ...]     steps: env test ps calibrate engines precision fsdp compare0 compare1
#
# Every step writes its log and JSON into OUTDIR and has its own time limit, so one
# that fails or hangs does not cost the others. The limits fit an H100 with room to
# spare (no step took more than 40 % of its limit there); on a slower GPU multiply them
# with GPU_CHECKS_SLOWER=N. Run from the repository root with
# dbl_ps importable (installed, or PYTHONPATH=. with the built extension in place);
# Fashion-MNIST is read from $FASHION_MNIST (default ../shared/data/fashion-mnist).
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_checks.sh OUTDIR [STEP ...]}
shift
STEPS=${*:-env test ps calibrate engines fsdp compare0 compare1}
DATA=${FASHION_MNIST:-../shared/data/fashion-mnist}
# GPU_CHECKS_SECONDS: a budget for the whole script (steps that would run past it are
# cut short or skipped), for callers with a hard time limit; default: none to speak of.
DEADLINE=${GPU_CHECKS_SECONDS:-86400}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$SECONDS

left() { echo $(( DEADLINE - (SECONDS - START) )); }

step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a limit (never past the deadline), log to OUT/NAME.log
    local name=$1 limit=$(( $2 * ${GPU_CHECKS_SLOWER:-1} ))
    shift 2
    local remaining
    remaining=$(left)
    (( limit > remaining )) && limit=$remaining
    if (( limit < 20 )); then
        echo "=== $name: skipped (${remaining}s left)"
        return
    fi
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -v -i "warn" "$OUT/$name.log" | tail -n 25
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
}

for s in $STEPS; do
    case $s in
    env)
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| deepspeed', deepspeed.__version__)"
        ;;
    test)
        step test 120 python3 -m pytest -q -p no:cacheprovider tests/test_runtime.py -k "flat" -ra ;;
    ps)
        step ps_cuda 120 python3 benchmarks/ps_cuda.py --json "$OUT/ps_cuda.json" ;;
    calibrate)
        step calibrate 240 python3 -m dbl_ps.cli calibrate --model resnet18_cifar --resolutions 24,32 --device cuda \
            --num-classes 100 --out "$OUT/calibration_resnet18_cifar.json" ;;
    engines)
        step engines 180 python3 benchmarks/engine_throughput.py --engines torch,torch_bf16,ds_bf16,ds_fp32 \
            --batch 256 --classes 100 --json "$OUT/engines.json" ;;
    precision)
        # issue 14: ResNet-18 (CIFAR stem) at 32 px, batch 512: fp32, bf16, + channels_last, + compile
        step precision 300 python3 benchmarks/engine_throughput.py --json "$OUT/precision.json" ;;
    fsdp)
        step fsdp 180 python3 benchmarks/fsdp_memory.py --json "$OUT/fsdp_memory.json" ;;
    compare0 | compare1)
        seed=${s#compare}
        # COMPARE_TIME_MODEL: dbl.alpha/dbl.beta overrides to skip measuring the time model
        # (e.g. the values a first compare on the same GPU printed); empty: measure it.
        # shellcheck disable=SC2086
        step "$s" 600 python3 -m dbl_ps.cli compare --config configs/fashion_mnist_gpu.yaml --seeds "$seed" \
            --methods "${COMPARE_METHODS:-baseline,dbsl,cpl,hybrid}" \
            --out "/tmp/compare-gpu" --no-progress "data.path=$DATA" ${COMPARE_TIME_MODEL:-}
        tar -czf "$OUT/$s.tar.gz" --exclude='*.pt' --exclude='*.png' -C /tmp compare-gpu 2>/dev/null
        ;;
    *) echo "unknown step $s"; exit 2 ;;
    esac
done
echo "=== done in $((SECONDS - START))s"
