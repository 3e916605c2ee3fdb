"""Scene-scaling experiment (paper Sec. 4, Table 1 / Fig. 5) at a scale one machine can finish.

For every N in `--ns`: design -> assets -> compose a pool of scenes -> one seeded split H_0 (evaluate.py
--make-splits) -> imitation on the first N scenes of H_0 -> PPOFlow on them (`--splits-file --num-train-scenes N`)
-> evaluate all runs on ID (their N scenes) and OOD (W minus H_0) scenes -> Table-1-style table.md / table.csv,
SR-vs-N plot (both from evaluate.py) and learning curves (success rate vs env steps, from each run's metrics.jsonl).

    python experiments/scene_scaling.py --out-dir out/scaling     # tiny defaults: ~35-45 min on 2 unshared CPU cores
    python experiments/scene_scaling.py --out-dir out/scaling --ns 1 5 10 --num-scenes 20 --il-episodes 200 \
        --il-steps 5000 --ppo-num-envs 32 --ppo-num-steps 25 --ppo-iterations 200 --eval-episodes 50   # a GPU node

Every stage runs as a subprocess of its own CLI (stages talk through files; nothing is imported from them), so
this script is also the worked example of the pipeline. Each step is skipped when its output exists: re-running
after an interruption resumes (evaluate.py also resumes episode by episode). `<out-dir>/steps.json` records the
command, wall time and machine of every step, which is the budget of the experiment.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, env_flags, fmt_load, fmt_wall, machine_info, make_scenes, plot_curves, ppo_flags,  # noqa: E402
                    read_curve, run_step, select_checkpoint, stage)

DEFAULT_TASKS = ("put the green block on the plate", "put the carrot on the plate", "put the red cube in the bowl",
                 "put the spoon on the towel", "put the banana in the basket", "place the red mug on the saucer")


@dataclass
class Args:
    out_dir: str = "out/scaling"
    """Experiment folder: scenes/, assets/, runs/, eval/, report.md, steps.json."""
    ns: list[int] = field(default_factory=lambda: [1, 3])
    """Numbers of training scenes N (paper: 1, 5, 10, 25, 50); each must be <= --split-size."""
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    """Task texts handed to the scene designer (one scene per task and variant)."""
    variants_per_task: int = 1
    """Scene variants per task (distinct layouts, assets and backgrounds)."""
    num_distractors: str = "0"
    """Distractors per scene ("0", "1-2", ...): 0 keeps the tiny-budget tasks learnable."""
    split_size: int | None = None
    """Scenes in the ID split H_0 (default: max(--ns)); the rest of the composed scenes are OOD."""
    seed: int = 0
    """Seed of designer, assets, composer, splits, training and evaluation."""
    image_size: int = 64
    """Policy image side (the tiny preset's SigLIP reads 64x64; 224 for small / pi0-3b)."""
    max_decisions: int = 25
    """Episode length in chunk decisions (paper: 25; the scripted expert needs 11-17 on the default tasks)."""
    preset: str = "tiny"
    """Policy size: tiny (CPU), small, pi0-3b (GPU)."""
    env_workers: int = 4
    """CPU env worker processes for demo collection and evaluation (4 on 2 cores measured fine at 64x64)."""
    env_extra: str = ""
    """Extra env flags for imitation and PPOFlow (evaluation reads them from the checkpoints), written with "=":
    --env-extra=--env.no-dr-object-pose. Default: full Table A.2 randomisation."""
    num_inference_steps: int = 1
    """K of the flow chain, in the IL checkpoints and in PPOFlow (paper default K = 1)."""
    il_episodes: int = 150
    """Scripted-expert demos kept per imitation run, spread over its N scenes."""
    il_steps: int = 4000
    """Imitation gradient steps."""
    ppo_num_envs: int = 8
    """PPOFlow parallel environments (one CPU worker process each)."""
    ppo_num_steps: int = 50
    """PPOFlow chunk decisions per env per iteration (50 = two 25-decision episodes)."""
    ppo_minibatch: int = 100
    """PPOFlow minibatch size (transitions)."""
    ppo_update_epochs: int = 1
    """PPOFlow passes over each batch (Table A.1: UTD ratio 1)."""
    ppo_iterations: int = 30
    """PPOFlow iterations."""
    ppo_lr: float = 2e-5
    """PPOFlow policy learning rate (Table A.1)."""
    ppo_critic_lr: float = 1e-3
    """PPOFlow value-head learning rate."""
    ppo_extra: str = "--gamma 1.0 --no-bootstrap-truncated --critic-warmup-iterations 3 --value-state"
    """Extra PPOFlow flags, written with "=": the default is the learning demo's recipe (success-within-the-episode
    objective, critic warm-up, value head with state; see experiments/learning_demo.py); --ppo-extra="" = paper."""
    eval_episodes: int = 20
    """Evaluation episodes per scene (paper: 100)."""
    select: Literal["final", "best-eval"] = "best-eval"
    """PPOFlow checkpoint evaluated per N: "final", or "best-eval" (early stopping, see select_checkpoint): PPOFlow
    at this batch size rises and falls back, and the final checkpoint can be below the start."""
    dry_run: bool = False
    """Print the commands without running them."""

    @property
    def h_size(self) -> int:
        return self.split_size or max(self.ns)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------


def main(args: Args) -> Path:
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps({"schema_version": 1, "args": asdict(args)}, indent=2))
    logs, steps = out / "logs", out / "steps.json"
    t0 = time.time()
    scenes = make_scenes(out, args.tasks, args.variants_per_task, args.num_distractors, args.seed, args.env_workers,
                         logs, steps, args.dry_run)
    composed = sorted(p.parent.name for p in scenes.glob("*/manifest.json"))
    if not args.dry_run and len(composed) < args.h_size:
        raise SystemExit(f"only {len(composed)} scenes were composed (see {scenes / 'compose_summary.json'}), but "
                         f"--split-size/--ns need {args.h_size}: add --tasks or --variants-per-task, or lower --ns")
    splits = scenes / "splits.json"
    run_step("splits", stage("evaluate.py") + ["--make-splits", "--scenes-dir", str(scenes), "--splits-file",
                                               str(splits), "--num-splits", "1", "--split-size", str(args.h_size),
                                               "--seed", str(args.seed)], splits, logs, steps, args.dry_run)
    h0 = json.loads(splits.read_text())["splits"][0]["id"] if splits.exists() else [f"<H0[{i}]>" for i in range(args.h_size)]
    envf = env_flags(args.image_size, args.max_decisions) + shlex.split(args.env_extra)
    k_flag = ["--num-inference-steps", str(args.num_inference_steps)]
    ckpts, labels = [], []
    for n in args.ns:
        il, ppo = out / f"runs/il_N{n}", out / f"runs/ppo_N{n}"
        run_step(f"il_N{n}", stage("train_imitation.py") + [
            "--scenes-dir", str(scenes), "--scene-ids", *h0[:n], "--out", str(il), "--preset", args.preset,
            "--num-envs", str(args.env_workers), "--episodes", str(args.il_episodes), "--steps", str(args.il_steps),
            "--save-every", str(args.il_steps), "--seed", str(args.seed), "--device", "cpu", *k_flag, *envf,
            *(["--demos", str(il / "demos.pt")] if (il / "demos.pt").exists() else [])],  # resume: reuse the demos
            il / "ckpt_final.pt", logs, steps, args.dry_run)
        run_step(f"ppo_N{n}", stage("ppoflow_pi0.py") + [
            "--scenes-dir", str(scenes), "--splits-file", str(splits), "--split-index", "0",
            "--num-train-scenes", str(n), "--init", str(il / "ckpt_final.pt"), "--out", str(ppo),
            "--save-every", str(max(1, args.ppo_iterations // 10)), "--eval-every", str(max(1, args.ppo_iterations // 10)),
            "--seed", str(args.seed + 1), *k_flag, *envf, *ppo_flags(args)],
            ppo / "ckpt_final.pt", logs, steps, args.dry_run)
        chosen = select_checkpoint(ppo) if args.select == "best-eval" and not args.dry_run else ppo / "ckpt_final.pt"
        print(f"[select] N={n}: " + (f"--select {args.select} after PPOFlow" if args.dry_run else f"{chosen.name} ({args.select})"))
        ckpts += [il / "ckpt_final.pt", chosen]
        labels += [f"IL N={n}", f"PPOFlow N={n}"]
    ev = out / "eval"
    run_step("evaluate", stage("evaluate.py") + [a for c in ckpts for a in ("--ckpt", str(c))] + [
        "--labels", *labels, "--scenes-dir", str(scenes), "--splits-file", str(splits), "--suite", "generated",
        "--episodes-per-scene", str(args.eval_episodes), "--num-envs", str(args.env_workers), "--seed", "1000",
        "--max-decisions", str(args.max_decisions), "--device", "cpu", "--video-scenes", "1", "--no-latency",
        "--out-dir", str(ev)], ev / "results.json", logs, steps, args.dry_run)
    if args.dry_run:
        return out
    curves = {f"N={n}": read_curve(out / f"runs/ppo_N{n}/metrics.jsonl") for n in args.ns}
    plot_curves(curves, out / "learning_curves.png", f"PPOFlow, {args.preset} preset: rollout SR on the N training scenes")
    write_report(out, args, json.loads((ev / "results.json").read_text()), time.time() - t0)
    return out


def write_report(out: Path, args: Args, results: dict, wall: float) -> None:
    steps = json.loads((out / "steps.json").read_text())
    lines = [f"# Scene scaling: N in {args.ns}, {args.preset} preset\n",
             f"Machine: `{json.dumps(machine_info())}`\n",
             "Evaluation (evaluate.py, deterministic, Table-1 style; ID = the N training scenes, OOD = W \\ H_0):\n",
             (out / "eval/table.md").read_text(), "\n![SR vs N](eval/sr_vs_n.png)\n",
             "![learning curves](learning_curves.png)\n", "\n## Budget (wall seconds per step)\n",
             "| step | wall s | load at start | command |", "|---|---|---|---|"]
    lines += [f"| {k} | {fmt_wall(v)} | {fmt_load(v)} | `{v['cmd'][:160]}` |" for k, v in steps.items()]
    lines.append(f"\nTotal (this invocation): {wall:.0f} s. Arguments: `{json.dumps(asdict(args))}`\n")
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
