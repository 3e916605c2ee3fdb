#!/usr/bin/env bash
# The main job, end to end on the offline defaults (rule-based designer, procedural assets, CPU
# physics with software rendering, tiny policy preset). Installs what is missing first.
#   bash scripts/main_job.sh                 # writes everything under out/main
#   OUT=/tmp/run bash scripts/main_job.sh    # elsewhere
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/setup.sh
# shellcheck source=/dev/null
source scripts/env.sh
OUT="${OUT:-out/main}"
TASKS="${TASKS:-examples/tasks.txt}"
mkdir -p "$OUT"
step() { printf '\n=== %s ===\n' "$*"; }

step "1/6 scene designer: $TASKS -> $OUT/scenes"
python scene_designer.py --tasks "$TASKS" --out-dir "$OUT/scenes"
