#!/bin/bash
# Build a scene set from a command list the way benchmarks/RESULTS.md's thin-object sections do (issue 15):
# designer (no distractors, seed 0) -> procedural assets -> composer with solvability QA -> per-category report.
#   bash benchmarks/build_scene_set.sh out/thin examples/tasks_thin.txt
#   python benchmarks/expert_ab.py --scenes-dir out/thin/scenes --seeds 400 401 402 403 404 405
set -euo pipefail
D=${1:?usage: build_scene_set.sh <out dir> [task list, default examples/tasks_thin.txt]}
T=${2:-examples/tasks_thin.txt}
cd "$(dirname "$0")/.."
source scripts/env.sh
export OMP_NUM_THREADS=1
python scene_designer.py --tasks "$T" --out-dir "$D/scenes" --num-distractors 0 --seed 0
python generate_assets.py --scenes-dir "$D/scenes" --assets-dir "$D/assets" --seed 0 --workers 2
python compose_scene.py --scenes-dir "$D/scenes" --assets-dir "$D/assets" --seed 0 --workers 2
python benchmarks/scene_report.py --scenes-dir "$D/scenes"
