"""Throughput of the whole PPOFlow iteration (rollout with the policy in the loop, then the update), object-state
proxy vs 64 px rgb, on the same scenes in one run (not a test; issue 27).

Each mode builds its env pool and a tiny policy once, then iterations alternate A B A B ... (`--repeats`), so a
noisy shared machine slows both alike. Per iteration: control steps/s of the whole iteration, and the split of its
wall time between the env (`envs.step`: physics, IK, success checks, observation, IPC), the policy (everything else
in the rollout: obs -> inputs, encode, chain, value) and the PPO update (the recipe's epochs and minibatches).

    python benchmarks/bench_ppo_iteration.py --scenes out/exp/scenes/*/manifest.json --num-envs 8 --num-steps 25
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]
os.environ.setdefault("OMP_NUM_THREADS", "1")  # env workers own the cores


@dataclass
class Args:
    scenes: list[str]
    """Manifest paths (env i holds scenes[i % len])."""
    modes: list[str] = field(default_factory=lambda: ["state", "rgb"])
    """Observation modes to compare (scene_env.EnvConfig.obs_mode)."""
    num_envs: int = 8
    """Env worker processes (the recipe's 8)."""
    num_steps: int = 25
    """Decisions per env per measured iteration (the recipe uses 100; fewer keeps the benchmark short)."""
    repeats: int = 2
    """Measured iterations per mode (after one warm-up iteration each)."""
    out: str | None = None
    """Also write the rows as JSON here."""


class TimedEnv:
    """Forwards to a vector env and accumulates the wall time spent in its step()."""

    def __init__(self, env):
        self.env, self.step_s = env, 0.0

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, actions):
        t0 = time.perf_counter()
        out = self.env.step(actions)
        self.step_s += time.perf_counter() - t0
        return out


def main(args: Args) -> list[dict]:
    import torch

    import ppoflow_pi0 as pp
    import scene_env
    from common import STATE_PROXY_RECIPE as RECIPE

    base = tyro.cli(pp.Args, args=["--scenes-dir", ".", *shlex.split(RECIPE)])  # the recipe's update settings
    setups = {}
    for mode in args.modes:
        a = replace(base, num_envs=args.num_envs, num_steps=args.num_steps,
                    minibatch_size=max(1, base.minibatch_size * args.num_steps // base.num_steps),
                    env=replace(base.env, obs_mode=mode, image_size=64), demo_bc_coef=0.0, target_kl=None)
        torch.manual_seed(0)
        policy = pp.build_policy(replace(a, init=None, preset="tiny"))
        envs = TimedEnv(scene_env.make_vec_env(args.scenes, args.num_envs, a.env, seed=0))
        opt = torch.optim.AdamW(policy.parameters(), lr=a.learning_rate)
        setups[mode] = (a, policy, envs, opt)
    rows = []
    try:
        for rep in range(args.repeats + 1):  # repetition 0 warms up (process start, first reconfiguration)
            for mode, (a, policy, envs, opt) in setups.items():
                envs.step_s = 0.0
                t0 = time.perf_counter()
                batch, _ = pp.rollout(policy, envs, a.num_steps, a.gamma, 1000 + rep, "cpu", a.bootstrap_truncated)
                t1 = time.perf_counter()
                adv, ret = pp.compute_gae(batch["reward"], batch["value"], batch["done"], batch["last_value"],
                                          a.gamma, a.gae_lambda)
                pp.ppo_update(policy, opt, batch, adv, ret, a, 1, "cpu")
                t2 = time.perf_counter()
                if rep == 0:
                    continue
                steps = a.num_envs * a.num_steps * a.env.chunk
                rows.append({"mode": mode, "repeat": rep, "control_steps": steps,
                             "control_steps_per_s": steps / (t2 - t0), "rollout_control_steps_per_s": steps / (t1 - t0),
                             "env_s": envs.step_s, "policy_s": (t1 - t0) - envs.step_s, "update_s": t2 - t1,
                             "iteration_s": t2 - t0})
                r = rows[-1]
                print(f"[{mode:5s}] rep {rep}: {r['control_steps_per_s']:.0f} control steps/s (rollout alone "
                      f"{r['rollout_control_steps_per_s']:.0f}); env {r['env_s']:.1f}s policy {r['policy_s']:.1f}s "
                      f"update {r['update_s']:.1f}s", flush=True)
    finally:
        for _, _, envs, _ in setups.values():
            envs.close()
    print("\n| mode | control steps/s (iteration) | rollout only | env | policy | update |\n|---|---:|---:|---:|---:|---:|")
    for mode in args.modes:
        rs = [r for r in rows if r["mode"] == mode]
        tot = sum(r["iteration_s"] for r in rs)
        print(f"| {mode} | {sum(r['control_steps'] for r in rs) / tot:.0f} | "
              f"{sum(r['control_steps'] for r in rs) / sum(r['iteration_s'] - r['update_s'] for r in rs):.0f} | "
              + " | ".join(f"{100 * sum(r[k] for r in rs) / tot:.0f}%" for k in ("env_s", "policy_s", "update_s")) + " |")
    print(f"\nconditions: {platform.node()}, {os.cpu_count()} cpus, load {os.getloadavg()}, {args.num_envs} envs x "
          f"{args.num_steps} decisions per iteration, tiny preset, {args.repeats} measured iterations per mode")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
