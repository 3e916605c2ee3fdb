"""Rollout throughput: control steps/s WITH rendering AND policy inference vs number of CPU env workers and physics
settings (not a test).

The PPOFlow rollout loop in miniature: every decision renders the policy image in each env, the policy (random
weights, `--preset`) samples a K-step chunk for the whole batch (one `act()` call), and the vector env executes
the C control steps of the chunk. Reports control steps/s, the split between env and policy time, and ratios:
each worker count to one worker, and each physics setting (`--settings`, "<sim Hz>:<success check>") to the
first one at the same worker count. Settings are measured interleaved (A B A B ... for `--repeats`), so a noisy,
shared machine slows both alike and the ratio survives.

    python benchmarks/bench_rollout.py --scenes out/table1/W/*/manifest.json --image-size 64 --workers 1 \
        --settings 500:step:pairwise 100:chunk --repeats 3   # issue 13: old vs new rollout settings, per core
    python benchmarks/bench_rollout.py --scenes simpler:PutCarrotOnPlateInScene-v1 --workers 1 2 4 --settings 500:step
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
    settings: list[str] = field(default_factory=lambda: ["500:step:pairwise", "100:chunk"])
    """Physics settings "<sim_freq>:<success_check>[:<contact_query>]" (scene_env.EnvConfig); the first is the
    reference of the ratio. 500:step:pairwise = the rollout before issue 13, 100:chunk = today's EnvConfig defaults.
    SimplerEnv scenes ignore the frequency (they keep 500 Hz)."""
    repeats: int = 1
    """Interleaved measurements of every (workers, setting) pair; the median is reported."""


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


def parse_setting(text: str) -> dict:
    """"500:step:pairwise" -> {"sim_freq": 500, "success_check": "step", "contact_query": "pairwise"}; the contact
    query defaults to "batched" (a clear error for anything else)."""
    freq, check, query = (text.split(":") + ["batched"])[:3] if text.count(":") in (1, 2) else ("", "", "")
    if not freq.isdigit() or int(freq) <= 0 or check not in ("step", "chunk") or query not in ("batched", "pairwise"):
        raise SystemExit(f"bench_rollout.py: --settings {text!r}: expected '<sim Hz>:<step|chunk>[:<batched|pairwise>]'"
                         ", e.g. 500:step:pairwise")
    return {"sim_freq": int(freq), "success_check": check, "contact_query": query}


def measure(args: Args, policy, workers: int, setting: str) -> dict:
    import torch

    n = workers  # scene_env's CPU pool runs one worker process per env
    cfg = scene_env.EnvConfig(image_size=args.image_size, **parse_setting(setting))
    t_make = time.perf_counter()
    venv = scene_env.make_vec_env(args.scenes, n, cfg, seed=args.seed, workers=workers)
    obs, _ = venv.reset(seed=args.seed)
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
    return {"workers": workers, "setting": setting, "num_envs": n, "control_steps_per_s": round(steps / wall, 1),
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
    for st in args.settings:
        parse_setting(st)
    runs: dict[tuple[int, str], list[dict]] = {}
    for w in args.workers:
        for _ in range(args.repeats):
            for st in args.settings:  # interleaved: A B A B ...
                rec = measure(args, policy, w, st)
                print(json.dumps(rec), flush=True)
                runs.setdefault((w, st), []).append(rec)
    rows = [sorted(recs, key=lambda r: r["control_steps_per_s"])[len(recs) // 2] for recs in runs.values()]
    by = {(r["workers"], r["setting"]): r["control_steps_per_s"] for r in rows}
    w0, s0 = args.workers[0], args.settings[0]
    print(f"\n| workers | setting | control steps/s (median of {args.repeats}) | x vs {s0} | x vs {w0} worker(s) "
          "| policy ms/decision | env share | load 1m |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        v = r["control_steps_per_s"]
        print(f"| {r['workers']} | {r['setting']} | {v} | {v / by[(r['workers'], s0)]:.2f} | "
              f"{v / by[(w0, r['setting'])]:.2f} | {r['policy_ms_per_decision']} | {r['env_share']:.2f} | {r['loadavg_1m']} |")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
