#!/usr/bin/env bash
# The main job, end to end on the offline defaults, in two parts, then one report:
#   A. the scene pipeline on your task list: rule-based designer -> procedural assets -> composed, QA'd
#      ManiSkill scenes (contact sheet, QA sheet);
#   B. the method: experiments/learning_demo.py on one generated scene (designed, generated and composed by
#      the same stages) -> imitation from scripted demos -> PPOFlow -> both policies evaluated on the same
#      fresh seeds with 95% intervals -> a sim deployment trial of the PPOFlow policy;
#   -> out/main/report.md (and report.html): open it first.
# CPU physics with software rendering and the tiny policy preset; installs what is missing first. Every
# stage skips work whose outputs exist, so a re-run continues where a stopped one ended.
#   bash scripts/main_job.sh                          # writes everything under out/main
#   OUT=/tmp/run TASKS=my_tasks.txt bash scripts/main_job.sh
# Budgets are environment variables (defaults: see below and the README for the measured wall time):
#   IL_EPISODES IL_STEPS PPO_ITERS PPO_ENVS EVAL_EPISODES WORKERS LEARN_TASK
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
IL_EPISODES="${IL_EPISODES:-150}"
IL_STEPS="${IL_STEPS:-4000}"
PPO_ITERS="${PPO_ITERS:-25}"
PPO_ENVS="${PPO_ENVS:-8}"
EVAL_EPISODES="${EVAL_EPISODES:-100}"
LEARN_TASK="${LEARN_TASK:-put the green block on the plate}"
mkdir -p "$OUT"
step() { printf '\n=== %s ===\n' "$*"; }

step "1/6 scene designer: $TASKS -> $OUT/scenes"
python scene_designer.py --tasks "$TASKS" --out-dir "$OUT/scenes"

step "2/6 sim-ready assets (procedural backend, QA with retries) -> $OUT/assets"
python generate_assets.py --scenes-dir "$OUT/scenes" --assets-dir "$OUT/assets" --workers "$WORKERS"

step "3/6 compose scenes (layout, physics QA, scripted-expert solvability QA)"
python compose_scene.py --scenes-dir "$OUT/scenes" --assets-dir "$OUT/assets" --workers "$WORKERS"

step "4/6 the method on one scene: imitation -> PPOFlow -> evaluation with intervals ($LEARN_TASK)"
python experiments/learning_demo.py --out-dir "$OUT/learning" --task "$LEARN_TASK" \
  --il-episodes "$IL_EPISODES" --il-steps "$IL_STEPS" --ppo-num-envs "$PPO_ENVS" --ppo-iterations "$PPO_ITERS" \
  --eval-episodes "$EVAL_EPISODES"

step "5/6 a sim deployment trial of the PPOFlow policy (deploy_widowx.py, sim backend, auto labels)"
PPO_CKPT="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["ppo_checkpoint"])' "$OUT/learning/report.json")"
python - "$OUT" "$LEARN_TASK" <<'PY'
import json, pathlib, sys
out, task = pathlib.Path(sys.argv[1]), sys.argv[2]
scene = sorted((out / "learning" / "scenes").glob("*/manifest.json"))[0]
trials = [{"scene": scene.parent.name, "command": task, "distractors": [], "scene_id": str(scene.resolve())}]
(out / "deploy").mkdir(parents=True, exist_ok=True)
(out / "deploy" / "trials.json").write_text(json.dumps(trials, indent=1))
PY
python deploy_widowx.py --backend sim --ckpt "$PPO_CKPT" --trials-file "$OUT/deploy/trials.json" \
  --trials-per-scene 2 --auto-label --out-dir "$OUT/deploy" --session sim-ppoflow

step "6/6 the report"
python experiments/report.py --out-dir "$OUT" --tasks "$TASKS"
echo "open first: $OUT/report.md (or report.html)"
