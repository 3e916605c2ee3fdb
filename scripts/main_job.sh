#!/usr/bin/env bash
# The main job, end to end on the offline defaults, then one report:
#   A. the scene pipeline on your task list: rule-based designer -> procedural assets -> composed, QA'd
#      ManiSkill scenes with object poses drawn over Table A.2's region at every reset (contact sheet, QA sheet);
#   B. the method across the job's own scenes (experiments/state_proxy.py): an imitation start stopped early,
#      PPOFlow with the frozen recipe, the FINAL checkpoint and the start evaluated on the same fresh seeds on
#      the training scenes and on held-out ones. It runs on the OBJECT-STATE PROXY (no pretrained VLM, visual
#      generalisation not tested): the policy reads object poses from the simulator instead of pixels;
#   C. a sim deployment rehearsal of a pixel policy (the proxy cannot run on a robot: no simulator state there);
#   -> out/main/report.md (and report.html): open it first; it leads with the verdict.
# CPU physics with software rendering and the tiny policy preset; installs what is missing first. Every
# stage skips work whose outputs exist, so a re-run continues where a stopped one ended.
#   bash scripts/main_job.sh                          # writes everything under out/main
#   SEED=2 OUT=out/main_s2 bash scripts/main_job.sh   # another seed of everything random in the learning: demos,
#                                                     # imitation, PPOFlow (the scenes and evaluation seeds stay)
#   OUT=/tmp/run TASKS=my_tasks.txt bash scripts/main_job.sh
# Budgets are environment variables (defaults: see below and the README for the measured wall time):
#   SEED EVAL_SEED IL_EPISODES IL_STEPS IL_SELECT_EPISODES PPO_ITERATIONS PPO_LR PPO_EXTRA EVAL_EPISODES HELDOUT_EPISODES
#   WORKERS PIXEL_EPISODES PIXEL_STEPS NUM_TRAIN NUM_HELDOUT
# The learning budget is recipe v2 (experiments/common.py STATE_PROXY_RECIPE, the issue-27 study's) cut to fit 25 min on
# 2 cores: 50 PPOFlow iterations instead of 80 (the cosine lr decay spans the 50) at twice the actor lr (1e-5: the
# shorter schedule moves the policy as far; two development seeds lifted +19.5 and +20.0 points) and 25 evaluation
# episodes per held-out scene (200 on the training scenes stay). The imitation start is the study's (6000 steps, the
# early stop on 20 development episodes per scene): cut to 4000 steps and 10 episodes, no start of three runs reached
# the band and the run that started at 11% did not lift. Three runs of this budget lifted +22.5, +9.5 and +21.5 points
# in 18-20.5 min each (benchmarks/RESULTS.md, issue 29).
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
SEED="${SEED:-1}"
IL_EPISODES="${IL_EPISODES:-400}"
IL_STEPS="${IL_STEPS:-6000}"
IL_SELECT_EPISODES="${IL_SELECT_EPISODES:-20}"
PPO_ITERATIONS="${PPO_ITERATIONS:-50}"
PPO_LR="${PPO_LR:-1e-5}"  # the actor's peak lr (recipe v2 has 5e-6 over 80 iterations)
PPO_EXTRA="${PPO_EXTRA:-}"  # more ppoflow_pi0.py flags, after the recipe and --num-iterations (the last value wins)
EVAL_EPISODES="${EVAL_EPISODES:-50}"      # per training scene
HELDOUT_EPISODES="${HELDOUT_EPISODES:-25}"  # per held-out scene
EVAL_SEED="${EVAL_SEED:-7100}"  # evaluation seeds EVAL_SEED.. in every scene: never used while choosing the budget
PIXEL_EPISODES="${PIXEL_EPISODES:-40}"
PIXEL_STEPS="${PIXEL_STEPS:-500}"
NUM_TRAIN="${NUM_TRAIN:-4}"
NUM_HELDOUT="${NUM_HELDOUT:-2}"
mkdir -p "$OUT"
WALL="$OUT/step_wall_s.tsv"
step() { printf '\n=== %s ===\n' "$*"; STEP_NAME="$*"; STEP_T0=$SECONDS; }
done_step() { printf '%s\t%s\n' "$STEP_NAME" "$((SECONDS - STEP_T0))" >> "$WALL"; }
: > "$WALL"

step "1/6 scene designer: $TASKS -> $OUT/scenes"
python scene_designer.py --tasks "$TASKS" --out-dir "$OUT/scenes"
done_step

step "2/6 sim-ready assets (procedural backend, QA with retries) -> $OUT/assets"
python generate_assets.py --scenes-dir "$OUT/scenes" --assets-dir "$OUT/assets" --workers "$WORKERS"
done_step

step "3/6 compose scenes (layout, physics QA, scripted-expert solvability QA under full pose randomisation)"
python compose_scene.py --scenes-dir "$OUT/scenes" --assets-dir "$OUT/assets" --workers "$WORKERS"
done_step

step "4/6 the method across the job's scenes (object-state proxy): imitation start -> PPOFlow seed $SEED -> evaluation"
python experiments/state_proxy.py --scenes-dir "$OUT/scenes" --out-dir "$OUT/learning" --seeds "$SEED" --il-seed "$SEED" \
  --num-train-scenes "$NUM_TRAIN" --num-heldout-scenes "$NUM_HELDOUT" --il-episodes "$IL_EPISODES" \
  --il-steps "$IL_STEPS" --il-select-episodes "$IL_SELECT_EPISODES" --eval-episodes-per-scene "$EVAL_EPISODES" \
  --heldout-episodes-per-scene "$HELDOUT_EPISODES" --eval-seed "$EVAL_SEED" --ppo-extra="--num-iterations $PPO_ITERATIONS --learning-rate $PPO_LR $PPO_EXTRA"
done_step

step "5/6 a sim deployment rehearsal of a pixel policy (imitation on the first training scene, 64 px camera)"
FIRST_SCENE="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["args"]["train_scenes"][0])' "$OUT/learning/args.json")"
[ -f "$OUT/pixel_il/ckpt_final.pt" ] || python train_imitation.py --scenes-dir "$OUT/scenes" --scene-ids "$FIRST_SCENE" \
  --out "$OUT/pixel_il" --preset tiny --env.image-size 64 --num-envs "$WORKERS" --episodes "$PIXEL_EPISODES" \
  --steps "$PIXEL_STEPS" --save-every "$PIXEL_STEPS" --num-inference-steps 1 --device cpu --no-write-dataset
python - "$OUT" "$FIRST_SCENE" <<'PY'
import json, pathlib, sys
out, scene_id = pathlib.Path(sys.argv[1]), sys.argv[2]
m = json.loads((out / "scenes" / scene_id / "manifest.json").read_text())
trials = [{"scene": scene_id, "command": m["task"], "distractors": [],
           "scene_id": str((out / "scenes" / scene_id / "manifest.json").resolve())}]
(out / "deploy").mkdir(parents=True, exist_ok=True)
(out / "deploy" / "trials.json").write_text(json.dumps(trials, indent=1))
PY
python deploy_widowx.py --backend sim --ckpt "$OUT/pixel_il/ckpt_final.pt" --trials-file "$OUT/deploy/trials.json" \
  --trials-per-scene 2 --auto-label --out-dir "$OUT/deploy" --session sim-pixel-il
done_step

step "6/6 the report"
python experiments/report.py --out-dir "$OUT" --tasks "$TASKS"
done_step
echo "open first: $OUT/report.md (or report.html)"
