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
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import tyro

ROOT = Path(__file__).resolve().parent.parent  # the repository: stage scripts live here
sys.path.insert(0, str(ROOT))
from evaluate import newcombe_diff, wilson_interval  # noqa: E402  (the one implementation of both)
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
# Helpers shared with experiments/learning_demo.py
# ---------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """Conditions a figure depends on: host, cores, load, library versions."""
    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    for mod in ("torch", "mani_skill", "sapien", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing library is a fact to report, not an error
            info[mod] = None
    return info


def t_interval(xs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over independent units (training seeds); NaN bounds with one unit."""
    from scipy import stats

    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return m, m - h, m + h


def run_step(name: str, cmd: list[str], done: Path | None, log_dir: Path, steps_file: Path, dry_run: bool = False,
             cwd: Path | None = None) -> float:
    """Run one stage CLI unless `done` exists; stdout+stderr to <log_dir>/<name>.log; wall time into steps.json."""
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else {}
    if done is not None and done.exists():
        print(f"[skip] {name}: {done} exists")
        return steps.get(name, {}).get("wall_s", 0.0)
    print(f"[run ] {name}: {shlex.join(cmd)}", flush=True)
    if dry_run:
        return 0.0
    log_dir.mkdir(parents=True, exist_ok=True)
    # one BLAS/OpenMP thread per process unless told otherwise: env workers already occupy the cores, and on a
    # shared 2-core machine 2 spinning OpenMP threads made a tiny-model gradient step 4-10x slower (measured)
    env = {**os.environ, "LP_NUM_THREADS": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(ROOT)}
    t0, load0 = time.time(), os.getloadavg()[0]
    with open(log_dir / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode
    wall = time.time() - t0
    if rc != 0:
        tail = (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"step {name} failed (exit {rc}); log {log_dir / f'{name}.log'}:\n{tail}")
    steps[name] = {"cmd": shlex.join(cmd), "wall_s": round(wall, 1), "loadavg_start": load0,
                   "loadavg_end": os.getloadavg()[0], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    steps_file.parent.mkdir(parents=True, exist_ok=True)
    steps_file.write_text(json.dumps(steps, indent=2))
    print(f"[done] {name}: {wall:.0f} s", flush=True)
    return wall


def stage(script: str) -> list[str]:
    """The command prefix of a stage CLI of this repository."""
    return [sys.executable, str(ROOT / script)]


def wald_diff(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float, float]:
    """p1 - p0 with the Wald 95% interval (for reference)."""
    p1, p0 = k1 / n1, k0 / n0
    h = 1.96 * math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    return p1 - p0, p1 - p0 - h, p1 - p0 + h


def select_checkpoint(run: Path, window: int = 5) -> Path:
    """The saved checkpoint of a PPOFlow run with the highest in-training eval SR; ties: the higher mean rollout SR
    over the `window` iterations after it (the policy the checkpoint holds, still learning)."""
    ms = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    roll = {m["iteration"]: m.get("charts/success_rate") for m in ms}
    cands = []
    for m in ms:
        it, ev = m["iteration"], m.get("eval/success_rate")
        if ev is not None and (run / f"ckpt_{it}.pt").exists():
            after = [roll[i] for i in range(it + 1, it + 1 + window) if roll.get(i) is not None]
            cands.append((ev, sum(after) / len(after) if after else -1.0, it))
    if not cands:
        raise SystemExit(f"{run}: no checkpoint with an in-training evaluation (run ppoflow_pi0.py with --eval-every "
                         "and --save-every on the same iterations), or pass --select final")
    return run / f"ckpt_{max(cands)[2]}.pt"


def read_curve(metrics: Path) -> dict[str, list]:
    """Learning curve of a PPOFlow run: env decisions vs training (stochastic) and eval (deterministic) SR."""
    cur = {"step": [], "train_sr": [], "eval_step": [], "eval_sr": []}
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a run that is still writing
        if "global_step" not in r:
            continue
        if r.get("charts/success_rate") is not None:
            cur["step"].append(r["global_step"])
            cur["train_sr"].append(r["charts/success_rate"])
        if r.get("eval/success_rate") is not None:
            cur["eval_step"].append(r["global_step"])
            cur["eval_sr"].append(r["eval/success_rate"])
    return cur


def plot_curves(curves: dict[str, dict], path: Path, title: str, baselines: dict[str, float] | None = None,
                smooth: int = 5, marks: dict[str, float] | None = None) -> Path:
    """Success rate vs env steps (chunk decisions) for several runs; training SR smoothed over `smooth` iterations;
    `baselines` are horizontal lines (label -> SR), `marks` vertical ones (label -> env step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for i, (label, c) in enumerate(curves.items()):
        col = f"C{i}"
        if c["step"]:
            y = np.asarray(c["train_sr"], float)
            k = min(smooth, len(y))
            ys = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(c["step"], y, color=col, alpha=0.25, lw=0.8)
            ax.plot(c["step"][k - 1:], ys, color=col, lw=1.8, label=f"{label}: rollout SR ({k}-iter mean)")
        if c["eval_step"]:
            ax.plot(c["eval_step"], c["eval_sr"], "o--", color=col, ms=4, lw=1, label=f"{label}: deterministic eval SR")
    for j, (label, y) in enumerate((baselines or {}).items()):
        ax.axhline(y, color="k", ls=":" if j else "-.", lw=1, label=label)
    for label, x in (marks or {}).items():
        ax.axvline(x, color="grey", ls="--", lw=1, label=label)
    ax.set_xlabel("env steps (chunk decisions; x4 control steps)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def make_scenes(out: Path, tasks: list[str], variants: int, distractors: str, seed: int, workers: int,
                log_dir: Path, steps_file: Path, dry_run: bool, name: str = "", compose_extra: list[str] = (),
                assets: Path | None = None, asset_seed: int | None = None) -> Path:
    """design -> assets -> compose into <out>/scenes, <out>/assets; returns the scenes folder. `name` prefixes the
    step names (several pools in one experiment); `compose_extra` are extra compose_scene.py flags; `assets` another
    asset folder (assets are content-addressed, so pools sharing one reuse each other's objects); `asset_seed` the
    generator's seed when it is not `seed` (the same description and asset seed give the same object instance)."""
    scenes, assets = out / "scenes", assets or out / "assets"
    cmd = stage("scene_designer.py") + [a for t in tasks for a in ("--task", t)] + [
        "--variants-per-task", str(variants), "--num-distractors", distractors, "--seed", str(seed),
        "--out-dir", str(scenes)]
    run_step(f"{name}design", cmd, scenes / "index.json", log_dir, steps_file, dry_run)
    marker = scenes / "assets_done.json"  # per pool: a shared asset folder's contact sheet says nothing about this pool
    run_step(f"{name}assets", stage("generate_assets.py") + ["--scenes-dir", str(scenes), "--assets-dir", str(assets),
                                                             "--seed", str(seed if asset_seed is None else asset_seed),
                                                             "--workers", str(workers)],
             marker, log_dir, steps_file, dry_run)
    if not dry_run and not marker.exists():
        marker.write_text(json.dumps({"assets_dir": str(assets)}))
    run_step(f"{name}compose", stage("compose_scene.py") + ["--scenes-dir", str(scenes), "--assets-dir", str(assets),
                                                            "--seed", str(seed), "--workers", str(workers),
                                                            *compose_extra],
             scenes / "compose_summary.json", log_dir, steps_file, dry_run)
    return scenes


def env_flags(image_size: int, max_decisions: int) -> list[str]:
    return ["--env.image-size", str(image_size), "--env.max-decisions", str(max_decisions)]


def ppo_flags(args) -> list[str]:
    """ppoflow_pi0.py's budget flags from a driver's --ppo-* fields (same names in both drivers); --ppo-extra last."""
    return ["--num-envs", str(args.ppo_num_envs),  # CPU: one worker process per env
            "--num-steps", str(args.ppo_num_steps), "--minibatch-size", str(args.ppo_minibatch),
            "--update-epochs", str(args.ppo_update_epochs), "--num-iterations", str(args.ppo_iterations),
            "--learning-rate", str(args.ppo_lr), "--critic-learning-rate", str(args.ppo_critic_lr),
            "--device", "cpu", *shlex.split(args.ppo_extra)]


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
    lines += [f"| {k} | {v['wall_s']} | {v['loadavg_start']:.1f} | `{v['cmd'][:160]}` |" for k, v in steps.items()]
    lines.append(f"\nTotal (this invocation): {wall:.0f} s. Arguments: `{json.dumps(asdict(args))}`\n")
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
