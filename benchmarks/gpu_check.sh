#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one run (< 8 min on one H100/H200), offline.
#   bash benchmarks/gpu_check.sh                 # on a machine with a CUDA GPU and this repo's environment
# Environment: a .venv with a CUDA build of torch and requirements.txt installed. A machine without network
# gets them as wheels: on a networked machine `pip download -d wheels torch --index-url
# https://download.pytorch.org/whl/cu124` plus `pip download -d wheels -r requirements.txt`, carry wheels/, then
# `python -m venv .venv && .venv/bin/pip install --no-index --find-links wheels torch -r requirements.txt` there.
# Each step has its own time limit; a failing step prints FAILED and the next one still runs.
set -u
cd "$(dirname "$0")/.."
[ -f scripts/env.sh ] && source scripts/env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "not run: no GPU"; exit 0; }
step() {  # step <seconds> <title> <command...>
    local limit=$1 title=$2; shift 2
    echo "== $title"
    timeout "$limit" "$@" || echo "FAILED ($?): $title"
}
step 60 "dry run: pi0-3b parameters and memory at the paper's minibatch (micro-batch 32)" \
    python ppoflow_pi0.py --dry-run --preset pi0-3b --micro-batch-size 32
for b in 1 192; do
    step 120 "pi0-3b act() K=1 vs K=10, eager + compiled, batch $b, bf16; PPO update samples/s + MFU" \
        python benchmarks/bench_policy.py --preset pi0-3b --device cuda --dtype bfloat16 --batch $b --minibatch 32 --repeats 10
done
step 90 "pi0-3b fp32 reference (batch 1)" \
    python benchmarks/bench_policy.py --preset pi0-3b --device cuda --dtype float32 --batch 1 --minibatch 8 --repeats 5 --no-compile
step 120 "rollout with the policy on the GPU, CPU env workers" \
    python benchmarks/bench_rollout.py --preset small --device cuda --workers 1 4 --decisions 10 --settings 100:chunk
nvidia-smi --query-gpu=memory.used --format=csv,noheader
