"""check_ecosystem.sh, ManiSkill check: replay recorded GenScene-v1 trajectories with ManiSkill's own tool
(`python -m mani_skill.trajectory.replay_trajectory`, run through the documented one-liner that imports scene_env
first) and compare every episode's final env state and success with the recording.
Usage: python benchmarks/ecosystem_replay.py <trajectory.h5> ... (run from the folder the recording ran in: the
trajectory JSON's manifest paths are relative to it). Prints one line per file; exit 1 on a failure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
# the one line a user runs (README): ManiSkill's replay tool, with GenScene-v1 registered by importing scene_env
REPLAY = [sys.executable, "-c", "import scene_env, runpy; "
          "runpy.run_module('mani_skill.trajectory.replay_trajectory', run_name='__main__')"]


def _last_states(g) -> dict:
    out = {}
    g.visititems(lambda k, v: out.__setitem__(k, np.asarray(v[-1])) if isinstance(v, h5py.Dataset) else None)
    return out


def compare(orig: Path, replayed: Path) -> list[dict]:
    """Per episode of `orig`: max |final env state - replayed final env state| and both success flags."""
    meta = json.loads(orig.with_suffix(".json").read_text())
    rows = []
    with h5py.File(orig) as a, h5py.File(replayed) as b:
        for k, ep in enumerate(meta["episodes"]):
            ga, gb = a[f"traj_{ep['episode_id']}"], b[f"traj_{k}"] if f"traj_{k}" in b else None
            if gb is None:
                rows.append({"episode": ep["episode_id"], "diff": float("inf"), "success": ep.get("success"),
                             "replayed_success": None})
                continue
            sa, sb = _last_states(ga["env_states"]), _last_states(gb["env_states"])
            diff = max(float(np.abs(sa[x] - sb[x]).max()) for x in sa) if set(sa) == set(sb) else float("inf")
            rows.append({"episode": ep["episode_id"], "diff": diff, "success": bool(np.asarray(ga["success"])[-1]),
                         "replayed_success": bool(np.asarray(gb["success"])[-1])})
    return rows


def replay(traj: Path, cwd: Path | None = None, timeout: int = 1200) -> tuple[Path, subprocess.CompletedProcess]:
    """Run ManiSkill's replay tool on `traj` (actions re-executed from each episode's recorded reset seed, no env
    states set); the replayed trajectory is written beside it."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([*REPLAY, "--traj-path", str(traj), "--save-traj", "--allow-failure", "-o", "none"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    control = json.loads(traj.with_suffix(".json").read_text())["env_info"]["env_kwargs"].get("control_mode")
    cands = sorted(traj.parent.glob(f"{traj.stem}.none.*.h5"))
    return (cands[-1] if cands else traj.with_name(f"{traj.stem}.none.{control}.physx_cpu.h5")), r


if __name__ == "__main__":
    bad = 0
    for p in map(Path, sys.argv[1:]):
        out, r = replay(p)
        rows = compare(p, out) if r.returncode == 0 and out.exists() else []
        n = len(json.loads(p.with_suffix(".json").read_text())["episodes"])
        ok = r.returncode == 0 and len(rows) == n and all(x["diff"] < 1e-4 and x["success"] == x["replayed_success"]
                                                           for x in rows)
        bad += not ok
        worst = max((x["diff"] for x in rows), default=float("nan"))
        print(f"{'PASS' if ok else 'FAIL'} maniskill replay_trajectory {p.name}: {len(rows)}/{n} episodes replayed "
              f"(per-episode seeds {[json.loads(p.with_suffix('.json').read_text())['episodes'][k]['episode_seed'] for k in range(n)]}), "
              f"max |final state - recorded| = {worst:.2e}, success flags {'equal' if ok else 'differ'}"
              + ("" if r.returncode == 0 else f" -- rc {r.returncode}: {r.stderr.strip().splitlines()[-1][:300] if r.stderr.strip() else ''}"))
    sys.exit(1 if bad else 0)
