#!/usr/bin/env bash
# Issue 32's study from nothing but this checkout: the scenes, the object-state teacher, then the DAgger study.
#   A. the main job's scene set (examples/tasks.txt, the offline designer / assets / composer defaults) -> $OUT/exp;
#   B. the teacher: experiments/state_proxy.py with recipe v2 (its defaults), PPOFlow seed 8, on the 4 training scenes
#      (OBJECT-STATE PROXY: no pretrained VLM, visual generalisation not tested) -> $OUT/sp2_confirm;
#   C. experiments/distill_study.py at its defaults (the design fixed last in benchmarks/RESULTS.md) with that teacher
#      -> $OUT/distill (report.md first).
# Every step skips work whose outputs exist, so a re-run continues where a stopped one ended. ~2.5 h on 2 cores
# (measured: scenes 38 s and the teacher ~29 min with its evaluation in session 18; the study at its design-v12
# defaults ~118 min in session 20: benchmarks/RESULTS.md "v12's result"). EVAL_SEED 8800 is v9's, 9500 v12's: pass
# seeds never used for a new design's confirmatory run.
#   bash scripts/reproduce_distill.sh
#   OUT=/tmp/d EVAL_SEED=9300 bash scripts/reproduce_distill.sh -- --student-start teacher   # more distill_study flags
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # env workers own the cores (scripts/main_job.sh says why)
OUT="$(mkdir -p "${OUT:-out}" && cd "${OUT:-out}" && pwd)"
EVAL_SEED="${EVAL_SEED:-8800}"  # first evaluation seed of the study
[ "${1:-}" = "--" ] && shift
S="$OUT/exp/scenes"
TRAIN=(could_you_put_the_banana_into_the_bowl_p-v0-363c205a pick_up_the_apple_and_put_it_in_the_bask-v0-a5512f13
       place_the_red_mug_on_the_saucer-v0-a8615ce6 put_the_small_lemon_on_the_cutting_board-v0-05fe6ce8)
HELD=(move_the_rubber_duck_into_the_bucket-v0-1fa8a00c put_the_carrot_on_the_plate-v0-7817da6c)

if [ ! -f "$S/compose_summary.json" ]; then
  echo "=== A. scenes -> $S ==="
  python scene_designer.py --tasks examples/tasks.txt --out-dir "$S"
  for id in "${TRAIN[@]}" "${HELD[@]}"; do
    [ -d "$S/$id" ] || { echo "reproduce_distill.sh: the designer did not make scene $id (the ids hash the task" \
      "list and the designer's defaults; fix: run from an unmodified examples/tasks.txt)" >&2; exit 1; }
  done
  python generate_assets.py --scenes-dir "$S" --assets-dir "$OUT/exp/assets" --workers 2
  python compose_scene.py --scenes-dir "$S" --assets-dir "$OUT/exp/assets" --workers 2
fi

echo "=== B. the object-state teacher -> $OUT/sp2_confirm ==="
python experiments/state_proxy.py --scenes-dir "$S" --train-scenes "${TRAIN[@]}" --heldout-scenes "${HELD[@]}" \
  --out-dir "$OUT/sp2_confirm" --seeds 8 --eval-seed 6000

echo "=== C. the DAgger study -> $OUT/distill ==="
python experiments/distill_study.py --teacher "$OUT/sp2_confirm/runs/ppo_s8/ckpt_final.pt" --scenes-dir "$S" \
  --train-scenes "${TRAIN[@]}" --heldout-scenes "${HELD[@]}" --eval-seed "$EVAL_SEED" --out-dir "$OUT/distill" "$@"
echo "open first: $OUT/distill/report.md"
