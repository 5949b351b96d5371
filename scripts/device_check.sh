#!/usr/bin/env bash
# The Jacobian engine's GPU checks in one call of the device tool (issue 4), sized for about 5
# minutes on an H200 (at most 8). Make the wheels here first (scripts/device_wheels.sh), then run, carrying .whl:
#
#     bash scripts/device_check.sh        # as the device tool's command, carry [".whl"], timeout 480
#
# On the machine: the engine's tests (tests/engine/test_cuda.py runs only there), batched's encoder
# pass by each vmap (bench_vmap.py, ResNet-18 at batch 8 and 64), and whole steps against the peers
# (bench_step.py). Each step has its own time limit, so one that hangs leaves the others their
# time. Everything lands in $OUT (the folder the tool brings back; outputs/device elsewhere):
# log.txt holds the tables, the JSON files every timing.
set -uo pipefail
out=${OUT:-outputs/device}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

step() {  # step SECONDS COMMAND...: run COMMAND, stopped after SECONDS
    local limit=$1
    shift
    echo
    echo "## $*"
    timeout "$limit" "$@" || echo "FAILED or stopped after ${limit} s ($?): $*"
}
step 60 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_jacobian.py
step 60 python3 scripts/bench_vmap.py --device cuda --setups mlp-k10 mlp-k40 lenet-k2 resnet18-k40 --rounds 9 --out "$out/vmap_batch8.json"
step 45 python3 scripts/bench_vmap.py --device cuda --setups resnet18-k40 --batch-size 64 --rounds 9 --out "$out/vmap_batch64.json"
for batch in 8 64; do
    step 90 python3 scripts/bench_step.py --device cuda --setups mlp-k40 resnet18-k40 --batch-size "resnet18-k40=$batch" \
        --methods mgda upgrad --modes loop batched rep auto --peers torchjd libmtl --warmup 2 --steps 5 --out "$out/step_batch$batch.json"
done
step 90 python3 scripts/bench_step.py --device cuda --setups mlp-k10 mlp-k40 lenet-k2 --modes loop batched rep auto \
    --peers torchjd libmtl --warmup 2 --steps 5 --out "$out/step_all_methods.json"
exec >&- 2>&-
wait
