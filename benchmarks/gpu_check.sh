#!/usr/bin/env bash
# What only a GPU can check (issue 30), in one run (~10 min on one H100/H200; the torchrun step needs 2 GPUs), offline.
#   bash benchmarks/gpu_check.sh                 # on a machine with a CUDA GPU and this repo's environment
# Environment: a .venv with a CUDA build of torch and requirements.txt installed. A machine without network
# gets them as wheels: on a networked machine `pip download -d wheels torch --index-url
# https://download.pytorch.org/whl/cu124` plus `pip download -d wheels -r requirements.txt`, carry wheels/, then
# `python -m venv .venv && .venv/bin/pip install --no-index --find-links wheels torch -r requirements.txt` there.
# SAPIEN's physx_cuda downloads its PhysX library at first use: run once with network, or carry ~/.sapien.
#
# Every step has a time limit; every figure is compared with the range written beside it (wide sanity bounds where no
# GPU measurement exists yet: replace them with measured ranges once one does). A failed step or a figure out of range
# prints FAILED, the next steps still run, and the script exits 1. Without a GPU it says so and exits 0, claiming
# nothing.
set -u
cd "$(dirname "$0")/.."
[ -f scripts/env.sh ] && source scripts/env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
PY=${PY:-python}
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; then
    echo "gpu_check.sh: no GPU on this machine: nothing checked, nothing claimed"; exit 0
fi
NGPU=$(nvidia-smi -L | wc -l)
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
FAILED=0
fail() { echo "FAILED: $*"; FAILED=1; }
step() {  # step <seconds> <title> <command...>: output also kept in $WORK/last.log for the figures
    local limit=$1 title=$2; shift 2
    echo "== $title"
    timeout "$limit" "$@" 2>&1 | tee "$WORK/last.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || fail "$title (exit $rc)"
    return "$rc"
}
check() {  # check <name> <value> <lo> <hi>
    if $PY -c "import sys; v=float(sys.argv[1]); sys.exit(0 if float(sys.argv[2]) <= v <= float(sys.argv[3]) else 1)" \
        "$2" "$3" "$4" 2>/dev/null; then echo "ok   $1 = $2 (expected $3 .. $4)"; else fail "$1 = $2, expected $3 .. $4"; fi
}
figure() { grep -m1 "^FIGURE $1 " "$WORK/last.log" | awk '{print $3}'; }  # figure <name> from the last step
bench() { grep -m1 '^BENCH_JSON ' "$WORK/last.log" | cut -d' ' -f2- | $PY -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, d))" "$1"; }

# 1. GenScene-v1 on physx_cuda: a partial reset leaves the running envs alone; the scripted expert on GPU vs CPU IK
step 60 "tiny procedural scenes" $PY benchmarks/gpu_sim_check.py --make-scenes "$WORK/s"
if step 300 "GenScene physx_cuda: partial reset + scripted expert (GPU IK)" \
    $PY benchmarks/gpu_sim_check.py --scenes-dir "$WORK/s/scenes" --num-envs 8 --episodes 16; then
    check partial_reset_drift "$(figure partial_reset_drift)" 0 1e-4
    SR_GPU=$(figure expert_sr_physx_cuda)
fi
if step 300 "GenScene physx_cpu: scripted expert (Pinocchio IK)" \
    $PY benchmarks/gpu_sim_check.py --scenes-dir "$WORK/s/scenes" --backend physx_cpu --episodes 16; then
    SR_CPU=$(figure expert_sr_physx_cpu)
    check expert_sr_physx_cpu "$SR_CPU" 0.5 1.0
    [ -n "${SR_GPU:-}" ] && check "expert SR gap, CPU IK - GPU IK" "$($PY -c "print($SR_CPU - $SR_GPU)")" -0.25 0.25
fi

# 2. one DDP iteration on 2 ranks over NCCL (small preset), and one bf16 + checkpointed iteration at pi0-3b width
PPO="ppoflow_pi0.py --scenes-dir $WORK/s/scenes --num-envs 2 --num-steps 2 --minibatch-size 4 --num-iterations 1
     --eval-every 0 --save-every 1 --env.max-decisions 2 --env-workers 0"
if [ "$NGPU" -ge 2 ]; then
    step 420 "torchrun 2 ranks, NCCL, small preset, 1 iteration" \
        torchrun --standalone --nproc-per-node 2 $PPO --preset small --env.image-size 224 --out "$WORK/ddp" &&
        check "ddp metrics rows" "$(wc -l < "$WORK/ddp/metrics.jsonl")" 1 1
else
    fail "torchrun 2 ranks: this machine has $NGPU GPU (needs 2)"
fi
step 420 "pi0-3b width, --dtype bfloat16 --grad-checkpointing, 1 iteration" \
    $PY $PPO --preset pi0-3b --dtype bfloat16 --grad-checkpointing --micro-batch-size 2 --env.image-size 224 \
    --out "$WORK/bf16" && check "bf16 metrics rows" "$(wc -l < "$WORK/bf16/metrics.jsonl")" 1 1
step 60 "dry-run memory estimate at the paper's minibatch (micro-batch 32, bf16, checkpointed)" \
    $PY ppoflow_pi0.py --dry-run --preset pi0-3b --micro-batch-size 32 --dtype bfloat16 --grad-checkpointing

# 3. latency (K = 1, 10; eager and compiled) and the update's MFU, pi0-3b, bf16 autocast over fp32 masters
if step 420 "pi0-3b act() latency + PPO update MFU (batch 1, minibatch 16, bf16)" \
    $PY benchmarks/bench_policy.py --preset pi0-3b --device cuda --dtype bfloat16 --batch 1 --minibatch 16 \
    --repeats 10 --json; then
    check "eager K=1 latency ms" "$(bench "latency_ms['eager']['k1']")" 5 400
    check "eager K=10 latency ms" "$(bench "latency_ms['eager']['k10']")" 10 2000
    check "compiled K=1 latency ms" "$(bench "latency_ms.get('compile', {}).get('k1', -1)")" 1 400
    check "compiled K=10 latency ms" "$(bench "latency_ms.get('compile', {}).get('k10', -1)")" 2 2000
    check "update MFU" "$(bench "mfu or -1")" 0.05 0.8
fi

nvidia-smi --query-gpu=memory.used --format=csv,noheader
rm -rf "$WORK"
[ "$FAILED" -eq 0 ] && echo "gpu_check.sh: all steps passed" || echo "gpu_check.sh: some steps FAILED (see above)"
exit "$FAILED"
