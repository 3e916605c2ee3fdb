#!/usr/bin/env bash
# The main job, end to end on the offline defaults: rule-based designer -> procedural assets ->
# composed + QA'd ManiSkill scenes -> imitation from the scripted expert -> a short PPOFlow run ->
# evaluation report. CPU physics with software rendering and the tiny policy preset; installs what
# is missing first. Every stage skips work whose outputs exist, so a re-run continues.
#   bash scripts/main_job.sh                          # writes everything under out/main
#   OUT=/tmp/run TASKS=my_tasks.txt bash scripts/main_job.sh
# Budgets are environment variables (defaults finish in about 11 min on 2 idle CPU cores, measured):
#   IL_EPISODES IL_STEPS PPO_ITERS PPO_ENVS EVAL_EPISODES WORKERS
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh
# One torch thread per process: env worker processes already own the cores, and OpenMP threads
# spinning beside them made CPU training 14-25x slower here (benchmarks/RESULTS.md).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
OUT="${OUT:-out/main}"
TASKS="${TASKS:-examples/tasks.txt}"
WORKERS="${WORKERS:-2}"
IL_EPISODES="${IL_EPISODES:-48}"
IL_STEPS="${IL_STEPS:-1500}"
PPO_ITERS="${PPO_ITERS:-3}"
PPO_ENVS="${PPO_ENVS:-2}"
EVAL_EPISODES="${EVAL_EPISODES:-2}"
mkdir -p "$OUT"
step() { printf '\n=== %s ===\n' "$*"; }

step "1/6 scene designer: $TASKS -> $OUT/scenes"
python scene_designer.py --tasks "$TASKS" --out-dir "$OUT/scenes"

step "2/6 sim-ready assets (procedural backend, QA with retries) -> $OUT/assets"
python generate_assets.py --scenes-dir "$OUT/scenes" --assets-dir "$OUT/assets" --workers "$WORKERS"

step "3/6 compose scenes (layout, physics QA, scripted-expert solvability QA)"
python compose_scene.py --scenes-dir "$OUT/scenes" --assets-dir "$OUT/assets" --workers "$WORKERS"

step "4/6 imitation starting point (scripted-expert demos -> flow-matching SFT, tiny preset)"
[ -f "$OUT/runs/il/ckpt_final.pt" ] || python train_imitation.py --scenes-dir "$OUT/scenes" --preset tiny \
  --out "$OUT/runs/il" --num-envs "$WORKERS" --episodes "$IL_EPISODES" --steps "$IL_STEPS"

step "5/6 PPOFlow fine-tuning (short run)"
[ -f "$OUT/runs/ppoflow/ckpt_final.pt" ] || python ppoflow_pi0.py --scenes-dir "$OUT/scenes" \
  --init "$OUT/runs/il/ckpt_final.pt" --preset tiny --out "$OUT/runs/ppoflow" \
  --num-envs "$PPO_ENVS" --num-steps 25 --minibatch-size 25 --num-iterations "$PPO_ITERS" --eval-every 0

step "6/6 evaluation: PPOFlow vs the imitation start on every composed scene"
python evaluate.py --ckpt "$OUT/runs/ppoflow/ckpt_final.pt" --ckpt "$OUT/runs/il/ckpt_final.pt" \
  --labels "PPOFlow" "imitation (N=0)" --scenes-dir "$OUT/scenes" \
  --episodes-per-scene "$EVAL_EPISODES" --num-envs "$WORKERS" --out-dir "$OUT/eval"

step "done"
echo "asset contact sheet : $OUT/assets/contact_sheet.png"
echo "scene QA sheet      : $OUT/scenes/qa_contact_sheet.png"
echo "evaluation report   : $OUT/eval/table.md"
cat "$OUT/eval/table.md"
