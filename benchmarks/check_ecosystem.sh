#!/usr/bin/env bash
# Outputs that the real libraries read (issue 31), checked with the libraries themselves on a fresh tiny run:
#   - LeRobot 0.3.3 (side env) reads the demos as a v2.1 LeRobotDataset frame by frame, LeRobot 0.4.4 the v3.0 one;
#   - transformers alone (a fresh process, no project code) runs the exported policy and matches its actions;
#   - ManiSkill's replay_trajectory replays every recorded episode to the recorded final state.
# One line per check; exits non-zero on any failure. Side envs are cached under
# ${XDG_CACHE_HOME:-~/.cache}/gensim-ecosystem (first run: a few minutes; needs the package registry).
#   bash benchmarks/check_ecosystem.sh [work dir]      (default: a temporary folder)
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/env.sh"
source "$REPO/benchmarks/ecosystem_env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
WORK="${1:-$(mktemp -d)}"; mkdir -p "$WORK"; LOG="$WORK/check_ecosystem.log"; : > "$LOG"
fails=0
check() {  # check <label> <command...>: the command prints its own PASS/FAIL line; else one is made from its status
  local label="$1"; shift
  local out; out="$("$@" 2>>"$LOG")"; local rc=$?
  if grep -qE "^(PASS|FAIL) " <<<"$out"; then grep -E "^(PASS|FAIL) " <<<"$out"; else
    [ $rc -eq 0 ] && echo "PASS $label" || echo "FAIL $label (rc $rc; see $LOG)"; fi
  [ $rc -eq 0 ] || fails=$((fails + 1))
}
step() { "$@" >>"$LOG" 2>&1; }  # preparation (its failure shows up in the checks that need it)

for v in 0.3.3 0.4.4; do
  check "side env lerobot-$v ($ECO_CACHE/lerobot-$v)" build_lerobot_env "$v"
done
PY033="$ECO_CACHE/lerobot-0.3.3/bin/python"; PY044="$ECO_CACHE/lerobot-0.4.4/bin/python"

# a tiny run: one hand-made scene, 3 scripted-expert episodes recorded, 2 SFT steps, K = 3, 64 px (the tiny policy's)
cd "$WORK"
step python - "$REPO" <<'PY'
import sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], f"{sys.argv[1]}/tests"]
from test_scene_env import make_scene, write_manifest
write_manifest(make_scene(Path("scenes"), Path("assets"), "eco_block"), Path("assets"),
               {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07), "green_can": (0.38, 0.1)}, dr_halfwidth=0.01)
PY
check "tiny run: train_imitation.py --write-dataset (v3.0, 3 recorded expert episodes)" \
  python "$REPO/train_imitation.py" --scenes-dir scenes --out il --num-envs 1 --episodes 3 --steps 2 \
  --env.image-size 64 --num-inference-steps 3 --write-dataset --device cpu
check "tiny run: lerobot_format.py --version v2.1 from the recorded trajectories" \
  python "$REPO/lerobot_format.py" --trajectories il/trajectories/trajectory_env0.h5 --out il/dataset_v21 \
  --image-size 64 --version v2.1
check "lerobot 0.3.3 reads v2.1" "$PY033" "$REPO/benchmarks/ecosystem_lerobot.py" il/dataset_v21
check "lerobot 0.4.4 reads v3.0" "$PY044" "$REPO/benchmarks/ecosystem_lerobot.py" il/dataset
rm -rf exported
check "export" python "$REPO/ppoflow_pi0.py" export --ckpt il/ckpt_final.pt --out exported
check "policy reference actions" python "$REPO/benchmarks/ecosystem_reference.py" il/ckpt_final.pt il/dataset ref.npz 6
check "transformers" env -u PYTHONPATH python "$REPO/benchmarks/ecosystem_transformers.py" exported ref.npz
check "maniskill replay" python "$REPO/benchmarks/ecosystem_replay.py" il/trajectories/trajectory_env0.h5
echo "$([ $fails -eq 0 ] && echo PASS || echo FAIL) check_ecosystem: $fails failure(s); work dir $WORK"
exit $((fails > 0))
