"""Acceptance rate of compose_scene.py and scripted-expert success on a broad synthetic scene suite (not a test).

Builds `--num-scenes` scene graphs + procedural assets spanning the task families users write (small blocks,
pens, cans, cups, erasers/sponges onto plates, trays, into bowls and baskets; varied sizes, colours, distractors,
table styles) with the test helpers, then runs compose_scene.py on them.

    python benchmarks/bench_compose.py --out /tmp/suite --num-scenes 40 --workers 2

With `--tasks` it runs the REAL pipeline instead (scene_designer.py -> generate_assets.py -> compose_scene.py) on
commands written as users would, e.g. the broad list in examples/tasks_broad.txt:

    python benchmarks/bench_compose.py --out /tmp/pipe --tasks examples/tasks_broad.txt --workers 2
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import compose_scene  # noqa: E402
from test_scene_env import make_scene  # noqa: E402

TARGETS = {  # name: (shape, size range lo, size range hi)
    "block": ("box", (0.025, 0.025, 0.025), (0.045, 0.045, 0.05)),
    "pen": ("box", (0.012, 0.10, 0.012), (0.018, 0.14, 0.018)),
    "can": ("cylinder", (0.045, 0.045, 0.06), (0.06, 0.06, 0.10)),
    "eraser": ("box", (0.02, 0.05, 0.015), (0.03, 0.07, 0.025)),
    "sponge": ("box", (0.04, 0.07, 0.02), (0.05, 0.09, 0.035)),
    "cup": ("cylinder", (0.05, 0.05, 0.07), (0.06, 0.06, 0.09)),
}
DESTS = {  # name: (shape, relation, lo, hi)
    "plate": ("cylinder", "ON", (0.12, 0.12, 0.012), (0.17, 0.17, 0.02)),
    "tray": ("box", "ON", (0.12, 0.15, 0.012), (0.16, 0.2, 0.02)),
    "bowl": ("bowl", "IN", (0.12, 0.12, 0.045), (0.16, 0.16, 0.065)),
    "basket": ("basket", "IN", (0.13, 0.15, 0.05), (0.17, 0.19, 0.07)),
}
COLOR_WORDS = {"red": (0.8, 0.15, 0.1), "green": (0.2, 0.6, 0.25), "blue": (0.2, 0.35, 0.8), "yellow": (0.9, 0.8, 0.2),
               "white": (0.9, 0.9, 0.9), "black": (0.15, 0.15, 0.15), "orange": (0.9, 0.5, 0.1), "purple": (0.5, 0.2, 0.6)}


@dataclass
class Args:
    out: str = "/tmp/scene_suite"
    """Folder for scenes/ and assets/ of the suite."""
    num_scenes: int = 40
    """Scenes to generate."""
    seed: int = 0
    """Suite seed."""
    workers: int = 1
    """compose_scene.py worker processes."""
    solver_attempts: int = 3
    """Scripted-expert episodes per accepted scene (the success-rate sample)."""
    tasks: str | None = None
    """A task file (one command per line): run scene_designer.py and generate_assets.py on it instead of building
    the synthetic suite."""


def build_suite(args: Args) -> Path:
    rng = np.random.default_rng(args.seed)
    scenes, assets = Path(args.out) / "scenes", Path(args.out) / "assets"
    for i in range(args.num_scenes):
        t = list(TARGETS)[i % len(TARGETS)]
        d = list(DESTS)[(i // len(TARGETS) + i) % len(DESTS)]
        ts, tlo, thi = TARGETS[t]
        ds, rel, dlo, dhi = DESTS[d]
        c1, c2 = rng.choice(list(COLOR_WORDS), 2, replace=False)
        word = "in" if rel == "IN" else "on"
        make_scene(scenes, assets, f"s{i:03d}_{t}_{d}", target_size=tuple(rng.uniform(tlo, thi)),
                   dest_size=tuple(rng.uniform(dlo, dhi)), relation=rel, distractor=bool(rng.random() < 0.6),
                   target_shape=ts, dest_shape=ds, task=f"put the {c1} {t} {word} the {c2} {d}",
                   colors=(COLOR_WORDS[c1], COLOR_WORDS[c2]),
                   background={"table": str(rng.choice(["wooden", "white", "dark", "gray", ""]))})
    return scenes


def run_designer_and_assets(args: Args) -> Path:
    """The real upstream stages through their CLIs (no stage imports another stage)."""
    scenes, assets = Path(args.out) / "scenes", Path(args.out) / "assets"
    for cmd in ([sys.executable, str(ROOT / "scene_designer.py"), "--tasks", args.tasks, "--out-dir", str(scenes)],
                [sys.executable, str(ROOT / "generate_assets.py"), "--scenes-dir", str(scenes), "--assets-dir",
                 str(assets), "--workers", str(args.workers)]):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return scenes


def main(args: Args) -> dict:
    scenes = run_designer_and_assets(args) if args.tasks else build_suite(args)
    return compose_scene.main(compose_scene.Args(scenes_dir=str(scenes), assets_dir=str(Path(args.out) / "assets"),
                                                 workers=args.workers, solver_attempts=args.solver_attempts))


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
