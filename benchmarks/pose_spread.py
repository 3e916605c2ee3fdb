"""How far object-pose randomisation moves the target: x/y span over N resets per scene (issue 26; not a test).

Builds GenScene-v1 per composed scene (`gym.make`, one CPU env, no camera), resets it N times with seeds 0..N-1
under `--env.object-region table` (Table A.2's region at every reset) and `manifest` (the composer's narrow boxes),
and reports per scene and the median over scenes: the target's x and y span (max - min, robot base frame, after
the settle), the largest other object's span, and how many resets fell back (GenSceneEnv.layout_stats).

    python benchmarks/pose_spread.py --scenes-dir out/exp/scenes --resets 60
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scene_env  # noqa: E402
import scene_schema as ss  # noqa: E402


@dataclass
class Args:
    scenes_dir: str
    """Composed scenes (<dir>/<scene_id>/manifest.json)."""
    resets: int = 60
    """Resets per scene and mode (seeds 0..resets-1)."""
    modes: tuple[str, ...] = ("table", "manifest")
    only_with_distractors: bool = False
    """Only scenes whose manifest holds at least one distractor."""
    out: str | None = None
    """Write the per-scene numbers here (JSON)."""


def spread(manifest: Path, mode: str, resets: int) -> dict:
    import gymnasium as gym

    cfg = scene_env.EnvConfig(image_size=32, object_region=mode)
    env = gym.make("GenScene-v1", manifests=[str(manifest)], num_envs=1, obs_mode="state_dict", env_cfg=cfg,
                   sim_backend="physx_cpu", render_mode=None)
    u = env.unwrapped
    try:
        pos = {o: [] for o in u.obj_actors[0]}
        for s in range(resets):
            env.reset(seed=s)
            inv = u.agent.robot.pose.inv()
            for name, a in u.obj_actors[0].items():
                pos[name].append((inv * a.pose).p[0, :2].numpy().astype(float))
        m = u.manifest(0)
        span = {n: np.ptp(np.array(v), axis=0).tolist() for n, v in pos.items()}
        t = m.success["target"]
        xy = np.array(pos[t])
        return {"target": t, "target_span_xy": span[t], "target_x": [float(xy[:, 0].min()), float(xy[:, 0].max())],
                "target_y": [float(xy[:, 1].min()), float(xy[:, 1].max())],
                "min_span_other": min((min(v) for n, v in span.items() if n != t), default=None),
                "fallbacks": u.layout_stats["fallbacks"], "draws": u.layout_stats["draws"],
                "distractors": sum(o.role == "distractor" for o in m.objects)}
    finally:
        env.close()


def main(args: Args) -> dict:
    scenes = sorted(Path(args.scenes_dir).glob("*/manifest.json"))
    if args.only_with_distractors:
        scenes = [m for m in scenes if any(o.role == "distractor" for o in ss.load_manifest(m).objects)]
    if not scenes:
        raise SystemExit(f"pose_spread.py: no composed scenes under {args.scenes_dir}")
    res = {mode: {} for mode in args.modes}
    t0 = time.time()
    print(f"{'scene':44s} " + "  ".join(f"{m + ' dx  dy  fb':>22s}" for m in args.modes))
    for man in scenes:
        row = []
        for mode in args.modes:
            r = res[mode][man.parent.name] = spread(man, mode, args.resets)
            row.append(f"{r['target_span_xy'][0]:6.3f} {r['target_span_xy'][1]:6.3f} {r['fallbacks']:3d}/{r['draws']}")
        print(f"{man.parent.name[:44]:44s} " + "  ".join(f"{x:>22s}" for x in row), flush=True)
    summary = {}
    for mode in args.modes:
        sp = np.array([r["target_span_xy"] for r in res[mode].values()])
        fb = sum(r["fallbacks"] for r in res[mode].values())
        dr = sum(r["draws"] for r in res[mode].values())
        summary[mode] = {"median_target_span_x": float(np.median(sp[:, 0])), "median_target_span_y": float(np.median(sp[:, 1])),
                         "min_target_span_x": float(sp[:, 0].min()), "min_target_span_y": float(sp[:, 1].min()),
                         "fallbacks": fb, "draws": dr}
        print(f"{mode}: target span over {args.resets} resets, median over {len(sp)} scenes: x {np.median(sp[:, 0]):.3f} m, "
              f"y {np.median(sp[:, 1]):.3f} m (min x {sp[:, 0].min():.3f}, min y {sp[:, 1].min():.3f}); "
              f"fallbacks {fb}/{dr} resets")
    print(f"{time.time() - t0:.0f} s")
    if args.out:
        ss.write_json_atomic(args.out, {"args": vars(args), "summary": summary, "scenes": res})
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
