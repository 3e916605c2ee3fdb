"""The scripted expert under two `ExpertConfig` settings on the same scenes and episode seeds (not a test).

A paired A/B for a change of the expert's geometry (grasp height, press depth, tilt correction, ...): every composed
scene under --scenes-dir runs --seeds episodes with config A (`ExpertConfig()` with --a overrides) and the same
seeds with config B; reports successes per scene, the totals, and B - A with a Newcombe interval. The composer's QA
already picked layouts the expert solves, so use seeds it did not use (its QA seeds start at 0).

    python benchmarks/expert_ab.py --scenes-dir out/thin --seeds 200 201 202 203 204 205 \\
        --a max_tilt_step=0.0 --b max_tilt_step=0.1
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import scene_env  # noqa: E402
from evaluate import newcombe_diff, wilson_interval  # noqa: E402


@dataclass
class Args:
    scenes_dir: str
    """Composed scenes (<dir>/<scene_id>/manifest.json)."""
    seeds: list[int] = field(default_factory=lambda: [200, 201, 202, 203, 204, 205])
    """Episode (reset) seeds, the same for A and B."""
    a: list[str] = field(default_factory=list)
    """ExpertConfig overrides of A, key=value (default: ExpertConfig())."""
    b: list[str] | None = None
    """ExpertConfig overrides of B, key=value (`--b` alone: ExpertConfig(); not given: run A only)."""
    only: list[str] = field(default_factory=list)
    """Only scenes whose id contains one of these substrings (default: all)."""
    image_size: int = 32
    """Policy-camera size (the expert does not look; small is fast)."""
    object_region: str = "table"
    """Object-pose DR (scene_env.EnvConfig.object_region): "table" over Table A.2's region at every reset (issue
    26), "manifest" the composer's narrow boxes (pre-issue-26)."""


def expert_config(overrides: list[str]) -> scene_env.ExpertConfig:
    base = scene_env.ExpertConfig()
    known = {f.name: f for f in dataclasses.fields(base)}
    kv = {}
    for o in overrides:
        k, sep, v = o.partition("=")
        if not sep or k not in known:
            raise SystemExit(f"expert_ab.py: override {o!r}: want key=value with key one of {sorted(known)}")
        kind = type(getattr(base, k))
        kv[k] = v.lower() in ("1", "true", "yes") if kind is bool else kind(v)
    return dataclasses.replace(base, **kv)


def run(manifest: Path, cfg: scene_env.ExpertConfig, seeds: list[int], image_size: int,
        object_region: str = "table") -> list[bool]:
    env_cfg = scene_env.EnvConfig(image_size=image_size, object_region=object_region)
    r = scene_env.ChunkRunner([("gen", str(manifest))], 1, env_cfg, "physx_cpu", seed=0)
    r.expert = scene_env.ScriptedExpert(1, cfg)
    out = []
    try:
        for s in seeds:
            r.reset(seed=s)
            for _ in range(env_cfg.max_decisions):
                _, _, term, trunc, _ = r.step(r.expert_actions())
                if term[0] or trunc[0]:
                    break
            out.append(bool(term[0]))
    finally:
        r.close()
    return out


def main(args: Args) -> dict:
    scenes = [m for m in sorted(Path(args.scenes_dir).glob("*/manifest.json"))
              if not args.only or any(o in m.parent.name for o in args.only)]
    if not scenes:
        raise SystemExit(f"expert_ab.py: no composed scenes (*/manifest.json) under {args.scenes_dir}"
                         + (f" matching {args.only}" if args.only else ""))
    cfgs = {"A": expert_config(args.a)} | ({} if args.b is None else {"B": expert_config(args.b)})
    tot = dict.fromkeys(cfgs, 0)
    print(f"{'scene':48s} {'  '.join(cfgs)}   (of {len(args.seeds)})")
    for m in scenes:
        k = {name: sum(run(m, c, args.seeds, args.image_size, args.object_region)) for name, c in cfgs.items()}
        for name in cfgs:
            tot[name] += k[name]
        print(f"{m.parent.name[:48]:48s} " + " ".join(f"{k[name]:2d}" for name in cfgs), flush=True)
    n = len(scenes) * len(args.seeds)
    if args.b is None:
        lo, hi = wilson_interval(tot["A"], n)
        print(f"A {args.a or 'defaults'}: {tot['A']}/{n} = {100 * tot['A'] / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
              "(Wilson 95%, episodes as units)")
        return {"A": tot["A"], "episodes": n}
    d, lo, hi = newcombe_diff(tot["B"], n, tot["A"], n)
    print(f"A {args.a or 'defaults'}: {tot['A']}/{n}; B {args.b or 'defaults'}: {tot['B']}/{n}; "
          f"B - A {100 * d:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] (Newcombe 95%, episodes as units)")
    return {"A": tot["A"], "B": tot["B"], "episodes": n}


if __name__ == "__main__":
    main(tyro.cli(Args))
