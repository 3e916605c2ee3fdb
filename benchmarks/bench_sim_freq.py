"""Is a lower physics frequency still valid? The scripted expert's success per scene at each frequency (not a test).

A lower `EnvConfig.sim_freq` makes rollouts cheaper (fewer PD/physics substeps per 0.2 s control step) but counts
only if the physics still does what it did at SimplerEnv's 500 Hz: contacts hold, grasps do not slip, objects rest.
This runs the scripted expert (privileged state, evaluate.py `--policy scripted`) on the same composed scenes with
the same episode seeds and full Table A.2 randomisation at every `--freqs` value, success checked after every
control step, and reports success per frequency, its Wilson interval, the difference to the first frequency with
a Newcombe interval, and the scenes whose result changed. Issue 13's acceptance: within 2 points of 500 Hz on at
least 20 scenes.

    python benchmarks/bench_sim_freq.py --scenes-dir out/table1/W --freqs 500 100 --episodes-per-scene 4
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluate import newcombe_diff, wilson_interval  # noqa: E402


@dataclass
class Args:
    scenes_dir: str = "out/table1/W"
    """Composed scenes (<dir>/<scene_id>/manifest.json)."""
    freqs: list[int] = field(default_factory=lambda: [500, 100])
    """Physics frequencies (Hz); the first is the reference."""
    episodes_per_scene: int = 4
    """Expert episodes per scene and frequency (seeds --seed .. --seed + n - 1, the same at every frequency)."""
    seed: int = 9000
    """First episode seed."""
    num_envs: int = 2
    """Parallel env workers."""
    out_dir: str = "out/bench_sim_freq"
    """Per-frequency evaluate.py folders and summary.json."""


def run(args: Args) -> dict:
    out = Path(args.out_dir)
    per_freq, wall = {}, {}
    for f in args.freqs:
        t = time.time()
        subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--policy", "scripted", "--scenes-dir", args.scenes_dir,
                        "--suite", "generated", "--episodes-per-scene", str(args.episodes_per_scene), "--seed",
                        str(args.seed), "--num-envs", str(args.num_envs), "--sim-freq", str(f), "--success-check", "step",
                        "--video-scenes", "0", "--no-latency", "--device", "cpu", "--out-dir", str(out / f"{f}hz")],
                       check=True)
        wall[f] = round(time.time() - t, 1)
        eps = [json.loads(x) for x in (out / f"{f}hz/episodes.jsonl").read_text().splitlines() if x.strip()]
        per_freq[f] = {(e["scene"], e["seed"]): bool(e["success"]) for e in eps if e.get("label", "scripted") == "scripted"}
    ref = args.freqs[0]
    keys = sorted(set.intersection(*(set(v) for v in per_freq.values())))
    scenes = sorted({k[0] for k in keys})
    summary = {"scenes": len(scenes), "episodes_per_scene": args.episodes_per_scene, "wall_s": wall, "freqs": {}}
    print(f"\n{len(scenes)} scenes x {args.episodes_per_scene} episodes, scripted expert, success after every control step\n")
    print(f"| sim Hz | success | SR % [95%] | minus {ref} Hz (pts) [95%] | wall s |\n|---:|---:|---:|---:|---:|")
    k0 = sum(per_freq[ref][k] for k in keys)
    for f in args.freqs:
        k = sum(per_freq[f][x] for x in keys)
        lo, hi = wilson_interval(k, len(keys))
        d, dlo, dhi = newcombe_diff(k, len(keys), k0, len(keys))
        changed = sorted({s for s in scenes if sum(per_freq[f][x] for x in keys if x[0] == s)
                          != sum(per_freq[ref][x] for x in keys if x[0] == s)})
        summary["freqs"][f] = {"successes": k, "episodes": len(keys), "sr": k / len(keys), "ci": [lo, hi],
                               "diff_to_ref": [d, dlo, dhi], "scenes_changed": changed}
        print(f"| {f} | {k}/{len(keys)} | {100 * k / len(keys):.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
              f"{100 * d:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}] | {wall[f]} |")
    for f in args.freqs[1:]:
        print(f"scenes whose expert successes changed at {f} Hz: {summary['freqs'][f]['scenes_changed'] or 'none'}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    run(tyro.cli(Args))
