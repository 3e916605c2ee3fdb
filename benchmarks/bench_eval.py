"""Evaluation speed: one evaluate.py per checkpoint, a new env per scene (old) vs all checkpoints in one scene-major
run whose worker pools move from scene to scene (new). Not a test.

Old (evaluate.py before issue 17): every checkpoint is its own `evaluate.py --no-reuse-envs` process, so every
scene's env and worker pool is built once per checkpoint. New: one `evaluate.py --ckpt a --ckpt b ...` runs every
policy on each scene, with the same episode seeds, and rebuilds only the scene (not the processes) between scenes. Both run here on the same scenes, checkpoints, seeds and episode counts, one after
the other (old first, then new, `--repeats` times alternating), and the per-episode outcomes are compared: the
speed-up counts only if the results are identical.

    python benchmarks/bench_eval.py --scenes-dir out/main/scenes --ckpt out/main/learning/il/ckpt_final.pt \
        --ckpt out/main/learning/ppo/ckpt_final.pt --episodes-per-scene 4
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    scenes_dir: str = "out/main/scenes"
    """Composed scenes."""
    ckpt: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Checkpoints (repeat the flag); at least 2 for the comparison to mean anything."""
    episodes_per_scene: int = 4
    """Episodes per scene and checkpoint."""
    num_envs: int = 2
    """Parallel env workers per scene."""
    seed: int = 7000
    """First episode seed."""
    repeats: int = 1
    """Old / new measurement pairs (alternating)."""


def evaluate(args: Args, ckpts: list[str], out: Path, *extra: str) -> tuple[float, dict]:
    """Wall seconds of one evaluate.py run and its outcomes {(checkpoint, scene, seed): success}."""
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *[a for c in ckpts for a in ("--ckpt", c)],
                    "--labels", *[f"p{i}" for i in range(len(ckpts))], "--scenes-dir", args.scenes_dir,
                    "--suite", "generated", "--episodes-per-scene", str(args.episodes_per_scene), "--seed",
                    str(args.seed), "--num-envs", str(args.num_envs), "--video-scenes", "0", "--no-latency",
                    "--device", "cpu", "--out-dir", str(out), *extra], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rows = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines() if x.strip()]
    return wall, {(r["policy"], r["scene"], r["seed"]): bool(r["success"]) for r in rows}


def main(args: Args) -> dict:
    if len(args.ckpt) < 2:
        raise SystemExit("bench_eval.py: pass at least two --ckpt (the old path rebuilds every scene per checkpoint)")
    ckpts = [str(Path(c).resolve()) for c in args.ckpt]
    olds, news, same = [], [], True
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            old_out, wall_old = {}, 0.0
            for i, c in enumerate(ckpts):
                w, res = evaluate(args, [c], Path(tmp) / f"old{r}_{i}", "--no-reuse-envs")
                wall_old += w
                old_out.update(res)
            wall_new, new_out = evaluate(args, ckpts, Path(tmp) / f"new{r}")
            olds.append(wall_old)
            news.append(wall_new)
            same &= old_out == new_out
            print(json.dumps({"repeat": r, "old_s": round(wall_old, 1), "new_s": round(wall_new, 1),
                              "ratio": round(wall_old / wall_new, 2), "identical_outcomes": old_out == new_out,
                              "episodes": len(new_out), "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)
    rep = {"checkpoints": len(ckpts), "scenes_dir": args.scenes_dir, "episodes_per_scene": args.episodes_per_scene,
           "old_s": olds, "new_s": news, "ratio": [o / n for o, n in zip(olds, news)], "identical_outcomes": same}
    print(f"\nold (one evaluate.py per checkpoint) {min(olds):.0f} s vs new (one scene-major run) {min(news):.0f} s: "
          f"{min(o / n for o, n in zip(olds, news)):.2f}-{max(o / n for o, n in zip(olds, news)):.2f}x, "
          f"outcomes identical: {same}")
    return rep


if __name__ == "__main__":
    main(tyro.cli(Args))
