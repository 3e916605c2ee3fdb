"""Control steps/s of the chunked vector env with 224x224 rendering for 1, 2, 4 CPU workers (not a test).

    python benchmarks/bench_env.py --scenes simpler:PutCarrotOnPlateInScene-v1 --workers 1 2 4
    python benchmarks/bench_env.py --scenes scenes/a/manifest.json --decisions 20
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scene_env  # noqa: E402


@dataclass
class Args:
    scenes: list[str] = field(default_factory=lambda: ["simpler:PutCarrotOnPlateInScene-v1"])
    """Scenes to hold (manifest paths or simpler:<EnvId>); env i holds scenes[i % len]."""
    workers: list[int] = field(default_factory=lambda: [1, 2, 4])
    """CPU worker counts to measure (one env per worker process)."""
    decisions: int = 15
    """Timed chunk decisions per measurement (after one warm-up decision)."""
    expert: bool = True
    """Drive with the scripted expert (realistic contacts); else zero actions."""
    image_size: int = 224
    """Policy image size rendered every control step... (observations are rendered once per decision)."""


def main(args: Args) -> list[dict]:
    import torch

    out = []
    for w in args.workers:
        cfg = scene_env.EnvConfig(image_size=args.image_size)
        venv = scene_env.make_vec_env(args.scenes, w, cfg, seed=0)
        venv.reset(seed=0)
        venv.step(torch.zeros(w, venv.chunk, 7))  # warm-up
        t0 = time.time()
        for _ in range(args.decisions):
            acts = venv.expert_actions() if args.expert else torch.zeros(w, venv.chunk, 7)
            venv.step(acts)
        dt = time.time() - t0
        venv.close()
        rec = {"workers": w, "control_steps_per_s": round(w * venv.chunk * args.decisions / dt, 1),
               "decisions_per_s": round(w * args.decisions / dt, 2), "scenes": args.scenes, "backend": venv.backend}
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
