"""Rollout throughput: control steps/s WITH rendering AND policy inference vs number of CPU env workers (not a test).

The PPOFlow rollout loop in miniature: every decision renders the policy image in each env, the policy (random
weights, `--preset`) samples a K-step chunk for the whole batch (one `act()` call), and the vector env executes
the C control steps of the chunk. Reports control steps/s, the split between env and policy time, and the ratio
of each worker count to one worker (the figure that survives a noisy, shared machine).

    python benchmarks/bench_rollout.py --scenes simpler:PutCarrotOnPlateInScene-v1 --workers 1 2 4
    python benchmarks/bench_rollout.py --scenes out/learning_demo/scenes/*/manifest.json --image-size 64 --decisions 30
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # env workers own the cores; a spinning 2nd BLAS thread costs 4-10x here

import scene_env  # noqa: E402


@dataclass
class Args:
    scenes: list[str] = field(default_factory=lambda: ["simpler:PutCarrotOnPlateInScene-v1"])
    """Scenes to hold (manifest paths or simpler:<EnvId>); env i holds scenes[i % len]."""
    workers: list[int] = field(default_factory=lambda: [1, 2, 4])
    """CPU worker counts to measure (one env per worker process, num_envs = workers)."""
    decisions: int = 20
    """Timed chunk decisions per measurement (after 2 warm-up decisions)."""
    preset: str = "tiny"
    """Policy preset (random weights): tiny on CPU; small / pi0-3b need a GPU to be meaningful."""
    num_inference_steps: int = 1
    """K of the flow chain (PPOFlow default 1)."""
    image_size: int = 224
    """Rendered policy image side (the policy resizes to its own input size)."""
    device: str = "cpu"
    """Policy device."""
    seed: int = 0
    """Env seed."""


def conditions() -> dict:
    import torch

    info = {"host": platform.node(), "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    for mod in ("mani_skill", "sapien", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    return info


def measure(args: Args, policy, workers: int) -> dict:
    import torch

    n = workers  # scene_env's CPU pool runs one worker process per env
    cfg = scene_env.EnvConfig(image_size=args.image_size)
    t_make = time.perf_counter()
    venv = scene_env.make_vec_env(args.scenes, n, cfg, seed=args.seed, workers=workers)
    obs = venv.reset(seed=args.seed)
    t_make = time.perf_counter() - t_make
    for _ in range(2):  # warm-up: first renders, first policy call
        obs, *_ = venv.step(policy.act(obs, deterministic=False))
    t_env = t_pol = 0.0
    t0 = time.perf_counter()
    for _ in range(args.decisions):
        t = time.perf_counter()
        with torch.no_grad():
            act = policy.act(obs, deterministic=False)  # [N, C, 7]
        t_pol += time.perf_counter() - t
        t = time.perf_counter()
        obs, *_ = venv.step(act)  # auto-resets finished envs (their reset cost is part of the figure)
        t_env += time.perf_counter() - t
    wall = time.perf_counter() - t0
    backend = getattr(venv, "backend", "?")
    venv.close()
    steps = n * venv.chunk * args.decisions
    return {"workers": workers, "num_envs": n, "control_steps_per_s": round(steps / wall, 1),
            "decisions_per_s": round(n * args.decisions / wall, 2), "env_s": round(t_env, 2),
            "policy_s": round(t_pol, 2), "policy_ms_per_decision": round(1e3 * t_pol / args.decisions, 1),
            "env_share": round(t_env / wall, 3), "make_reset_s": round(t_make, 1), "backend": backend,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main(args: Args) -> list[dict]:
    import ppoflow_pi0 as pp

    pp.seed_everything(args.seed)
    policy = pp.PI0Policy(pp.preset_config(args.preset, num_steps=args.num_inference_steps),
                          pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), {"kind": "bytes"}).to(args.device).eval()
    print(json.dumps({"conditions": conditions(), "scenes": args.scenes, "preset": args.preset,
                      "K": args.num_inference_steps, "image_size": args.image_size, "decisions": args.decisions,
                      "chunk": scene_env.EnvConfig().chunk}), flush=True)
    rows = []
    for w in args.workers:
        rec = measure(args, policy, w)
        print(json.dumps(rec), flush=True)
        rows.append(rec)
    base = rows[0]["control_steps_per_s"]
    print("\n| workers | envs | control steps/s | x vs first | policy ms/decision | env share | load 1m |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['num_envs']} | {r['control_steps_per_s']} | {r['control_steps_per_s'] / base:.2f} "
              f"| {r['policy_ms_per_decision']} | {r['env_share']:.2f} | {r['loadavg_1m']} |")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
