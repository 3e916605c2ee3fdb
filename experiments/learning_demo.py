"""Learning demonstration: PPOFlow raises the success rate of an imitation policy, with a 95% CI on the gain.

One generated scene (default "put the green block on the plate", no distractors) -> a deliberately modest
imitation policy (few scripted-expert demos) -> PPOFlow fine-tuning on that scene -> both policies evaluated by
evaluate.py with the same seeds, >= 100 deterministic episodes each -> the SR difference with its 95% interval
(Newcombe hybrid score; Wald and a paired-by-seed interval for reference), the learning curve and the budget
(wall time per step, env steps, machine) in <out-dir>/report.md and report.json.

    python experiments/learning_demo.py --out-dir out/learning_demo           # 2 CPU cores: ~30 min when not shared
    python experiments/learning_demo.py --out-dir out/demo_small --preset small --image-size 224 \
        --il-episodes 100 --ppo-num-envs 32 --ppo-iterations 100                      # a GPU node

Stages run as subprocesses of their CLIs (helpers from experiments/scene_scaling.py); every step is skipped when
its output exists, so an interrupted run resumes. The IL checkpoint stores K = --num-inference-steps, the K PPOFlow
fine-tunes with, so "IL" in the comparison is exactly the policy PPOFlow started from.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (env_flags, machine_info, make_scenes, plot_curves, read_curve,  # noqa: E402
                    ppo_flags, run_step, select_checkpoint, stage, total_wall, wald_diff)
from evaluate import newcombe_diff, wilson_interval  # noqa: E402


@dataclass
class Args:
    out_dir: str = "out/learning_demo"
    """Experiment folder: scenes/, assets/, runs/{il,ppo}/, eval/, report.md, report.json, learning_curve.png."""
    task: str = "put the green block on the plate"
    """Task text of the one training scene."""
    seed: int = 0
    """Seed of designer, assets, composer and imitation."""
    ppo_seed: int | None = None
    """Seed of PPOFlow (default --seed + 1); another value replicates the fine-tuning from the same start policy."""
    preset: str = "tiny"
    """Policy size: tiny (CPU), small, pi0-3b (GPU)."""
    image_size: int = 64
    """Policy image side (the tiny preset's SigLIP reads 64x64)."""
    max_decisions: int = 25
    """Episode length in chunk decisions (paper: 25; the scripted expert needs ~11 on this scene)."""
    env_workers: int = 4
    """CPU env worker processes for demo collection and evaluation (4 on 2 cores measured fine at 64x64)."""
    num_inference_steps: int = 1
    """K of the flow chain, in the IL checkpoint and in PPOFlow (paper default K = 1)."""
    il_episodes: int = 150
    """Successful expert demos kept (150 gave a start policy at 58-62% deterministic SR: room to improve)."""
    il_steps: int = 4000
    """Imitation gradient steps (batch 32)."""
    ppo_num_envs: int = 8
    """PPOFlow parallel environments (one CPU worker process each)."""
    ppo_num_steps: int = 50
    """Chunk decisions per env per iteration (batch = envs x steps = 400, about 25 episodes)."""
    ppo_minibatch: int = 100
    """Transitions per PPO gradient step."""
    ppo_update_epochs: int = 1
    """Passes over each batch (Table A.1: UTD ratio 1)."""
    ppo_iterations: int = 50
    """PPOFlow iterations (checkpoint and in-training evaluation every 5; --select picks one)."""
    ppo_lr: float = 2e-5
    """Policy learning rate (Table A.1)."""
    ppo_critic_lr: float = 1e-3
    """Value-head learning rate."""
    ppo_extra: str = "--gamma 1.0 --no-bootstrap-truncated --critic-warmup-iterations 3 --value-state"
    """Extra ppoflow_pi0.py flags, written with "=" since they start with dashes. Default: the objective is success
    within the episode (gamma 1, a time-out is a failure: gamma 0.99 made PPOFlow trade success for speed), 3
    critic-only iterations, and a value head that also reads the robot state (the tiny VLM's pooled z_t alone
    gave explained variance ~0). --ppo-extra="" runs the paper's settings."""
    eval_episodes: int = 200
    """Deterministic evaluation episodes per policy (same seeds for both; >= 100)."""
    eval_seed: int = 1000
    """First evaluation episode seed (disjoint from training seeds)."""
    select: Literal["final", "best-eval"] = "best-eval"
    """PPOFlow checkpoint compared with IL: "final", or "best-eval" (early stopping): the saved checkpoint with the
    highest in-training deterministic SR, ties broken by the rollout SR of the next 5 iterations. The comparison
    then runs on fresh seeds, so the selection does not inflate the reported SR of the chosen checkpoint."""
    ppo_eval_ckpt: str | None = None
    """Evaluate this PPOFlow checkpoint (relative to --out-dir, e.g. runs/ppo/ckpt_20.pt) instead of --select's;
    when it exists the PPOFlow step counts as done (to stop a run early at a saved iteration)."""
    env_extra: str = "--env.no-dr-object-pose"
    """Extra env flags for imitation and PPOFlow (evaluation reads them from the checkpoints), written with "=":
    --env-extra=--env.no-dr-object-pose fixes the object layout (lighting / robot / camera randomisation stay on)."""
    dry_run: bool = False
    """Print the commands without running them."""


def paired_diff(a: list[bool], b: list[bool]) -> tuple[float, float, float]:
    """Mean of per-seed differences b - a with a normal 95% interval (both policies ran the same seeds)."""
    d = [float(y) - float(x) for x, y in zip(a, b)]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / max(1, n - 1))
    return m, m - 1.96 * sd / math.sqrt(n), m + 1.96 * sd / math.sqrt(n)


def tf_diff(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean time to finish of b minus a (successful episodes only) with a normal (Welch) 95% interval."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan"), float("nan")
    (ma, va), (mb, vb) = [(sum(x) / len(x), sum((y - sum(x) / len(x)) ** 2 for y in x) / (len(x) - 1)) for x in (a, b)]
    half = 1.96 * math.sqrt(va / len(a) + vb / len(b))
    return mb - ma, mb - ma - half, mb - ma + half


def main(args: Args) -> dict | None:
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps({"schema_version": 1, "args": asdict(args)}, indent=2))
    logs, steps_file, t0 = out / "logs", out / "steps.json", time.time()
    scenes = make_scenes(out, [args.task], 1, "0", args.seed, args.env_workers, logs, steps_file, args.dry_run)
    ids = sorted(p.parent.name for p in scenes.glob("*/manifest.json"))
    if not ids and not args.dry_run:
        raise SystemExit(f"the composer rejected the scene (see {scenes / 'compose_summary.json'}): try another --task")
    envf = env_flags(args.image_size, args.max_decisions) + shlex.split(args.env_extra)
    il, ppo, ev = out / "runs/il", out / "runs/ppo", out / "eval"
    ppo_ckpt = out / args.ppo_eval_ckpt if args.ppo_eval_ckpt else ppo / "ckpt_final.pt"
    run_step("il", stage("train_imitation.py") + [
        "--scenes-dir", str(scenes), "--out", str(il), "--preset", args.preset, "--num-envs", str(args.env_workers),
        "--episodes", str(args.il_episodes), "--steps", str(args.il_steps), "--save-every", str(args.il_steps),
        "--num-inference-steps", str(args.num_inference_steps), "--seed", str(args.seed), "--device", "cpu", *envf,
        *(["--demos", str(il / "demos.pt")] if (il / "demos.pt").exists() else [])],  # resume: reuse collected demos
        il / "ckpt_final.pt", logs, steps_file, args.dry_run)
    run_step("ppo", stage("ppoflow_pi0.py") + [
        "--scenes-dir", str(scenes), "--init", str(il / "ckpt_final.pt"), "--out", str(ppo),
        "--num-inference-steps", str(args.num_inference_steps), "--save-every", "5", "--eval-every", "5",
        "--seed", str(args.seed + 1 if args.ppo_seed is None else args.ppo_seed), *envf, *ppo_flags(args)],
        ppo_ckpt, logs, steps_file, args.dry_run)
    if args.select == "best-eval" and not args.ppo_eval_ckpt and not args.dry_run:
        ppo_ckpt = select_checkpoint(ppo)
        print(f"[select] best-eval: {ppo_ckpt.name}")
    run_step("evaluate", stage("evaluate.py") + [
        "--ckpt", str(il / "ckpt_final.pt"), "--ckpt", str(ppo_ckpt), "--labels", "IL (start)", "PPOFlow",
        "--scenes-dir", str(scenes), "--suite", "generated", "--episodes-per-scene", str(args.eval_episodes),
        "--seed", str(args.eval_seed), "--num-envs", str(args.env_workers), "--max-decisions", str(args.max_decisions),
        "--device", "cpu", "--video-scenes", "1", "--no-latency", "--out-dir", str(ev)],
        ev / "results.json", logs, steps_file, args.dry_run)
    if args.dry_run:
        return None
    return write_report(out, args, time.time() - t0)


def write_report(out: Path, args: Args, wall: float) -> dict:
    res = json.loads((out / "eval/results.json").read_text())
    by = {p["label"]: p["sets"]["all"] for p in res["policies"]}
    (k0, n0), (k1, n1) = [(by[x]["successes"], by[x]["episodes"]) for x in ("IL (start)", "PPOFlow")]
    eps, tf = {}, {}
    for r in (json.loads(line) for line in (out / "eval/episodes.jsonl").read_text().splitlines() if line.strip()):
        eps.setdefault(r["label"], {})[(r["scene"], r["seed"])] = bool(r["success"])
        if r["success"]:
            tf.setdefault(r["label"], []).append(float(r["elapsed_s"]))
    common = sorted(set(eps.get("IL (start)", {})) & set(eps.get("PPOFlow", {})))
    steps = json.loads((out / "steps.json").read_text())
    metrics = [json.loads(x) for x in (out / "runs/ppo/metrics.jsonl").read_text().splitlines() if x.strip()]
    import torch

    ppo_path = next(p["ckpt"] for p in res["policies"] if p["label"] == "PPOFlow")
    it = int(torch.load(ppo_path, weights_only=True)["iteration"])
    env_steps = max((m.get("global_step", 0) for m in metrics if m.get("iteration", 0) <= it), default=0)
    curve = read_curve(out / "runs/ppo/metrics.jsonl")
    plot_curves({"PPOFlow": curve}, out / "learning_curve.png",
                f"PPOFlow from IL on 1 generated scene ({args.preset}, K={args.num_inference_steps})",
                {f"IL start: SR {k0 / n0:.2f} ({n0} eval episodes)": k0 / n0,
                 f"PPOFlow iteration {it}: SR {k1 / n1:.2f} ({n1} eval episodes)": k1 / n1},
                marks={f"checkpoint evaluated (iteration {it})": env_steps})
    rep = {"il": {"successes": k0, "episodes": n0, "sr": k0 / n0, "wilson95": wilson_interval(k0, n0)},
           "ppo": {"successes": k1, "episodes": n1, "sr": k1 / n1, "wilson95": wilson_interval(k1, n1)},
           "diff_newcombe95": newcombe_diff(k1, n1, k0, n0), "diff_wald95": wald_diff(k1, n1, k0, n0),
           "diff_paired95": paired_diff([eps["IL (start)"][c] for c in common], [eps["PPOFlow"][c] for c in common])
           if common else None,
           "tf_s": {k: sum(v) / len(v) for k, v in tf.items()},
           "tf_diff_95": tf_diff(tf.get("IL (start)", []), tf.get("PPOFlow", [])),
           "ppo_iteration_evaluated": it, "ppo_checkpoint": ppo_path,
           "ppo_selection": f"--ppo-eval-ckpt {args.ppo_eval_ckpt}" if args.ppo_eval_ckpt else args.select,
           "ppo_wall_s_to_checkpoint": sum((m.get("time/rollout_s") or 0) + (m.get("time/update_s") or 0)
                                           for m in metrics if m.get("iteration", 0) <= it),
           "ppo_env_steps_decisions": env_steps, "ppo_control_steps": env_steps * 4,
           "wall_s": {k: v["wall_s"] for k, v in steps.items()}, "machine": machine_info(), "args": asdict(args)}
    d, lo, hi = rep["diff_newcombe95"]
    rep["ci_excludes_zero"] = lo > 0
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    md = [f"# Learning demo: PPOFlow vs its imitation start on `{args.task}`\n",
          "| policy | successes / episodes | SR | Wilson 95% | TF of successes (s) |", "|---|---|---|---|---|",
          f"| IL (start, K={args.num_inference_steps}) | {k0}/{n0} | {k0 / n0:.3f} | [{rep['il']['wilson95'][0]:.3f}, "
          f"{rep['il']['wilson95'][1]:.3f}] | {rep['tf_s'].get('IL (start)', float('nan')):.2f} |",
          f"| PPOFlow | {k1}/{n1} | {k1 / n1:.3f} | [{rep['ppo']['wilson95'][0]:.3f}, {rep['ppo']['wilson95'][1]:.3f}] "
          f"| {rep['tf_s'].get('PPOFlow', float('nan')):.2f} |",
          f"\nSR difference PPOFlow - IL: **{d:+.3f}**, 95% CI (Newcombe hybrid score) **[{lo:+.3f}, {hi:+.3f}]**"
          f" -> CI {'excludes' if lo > 0 else 'does NOT exclude'} zero. Wald: [{rep['diff_wald95'][1]:+.3f}, "
          f"{rep['diff_wald95'][2]:+.3f}]" + (f"; paired by seed ({len(common)} pairs): [{rep['diff_paired95'][1]:+.3f}, "
                                              f"{rep['diff_paired95'][2]:+.3f}]" if common else "") + ".\n",
          "TF difference PPOFlow - IL (successful episodes, Welch 95%): "
          f"**{rep['tf_diff_95'][0]:+.2f} s [{rep['tf_diff_95'][1]:+.2f}, {rep['tf_diff_95'][2]:+.2f}]**.\n",
          f"Budget: PPOFlow checkpoint of iteration {it} (selection: {rep['ppo_selection']}): {env_steps} env decisions "
          f"({env_steps * 4} control steps), {rep['ppo_wall_s_to_checkpoint']:.0f} s of PPOFlow rollout + update; wall seconds "
          f"{json.dumps(rep['wall_s'])}; total {total_wall(steps)}.\n",
          f"Machine: `{json.dumps(rep['machine'])}`\n", "![learning curve](learning_curve.png)\n",
          "Commands:\n", *[f"- {k}: `{v['cmd']}`" for k, v in steps.items()]]
    (out / "report.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return rep


if __name__ == "__main__":
    main(tyro.cli(Args))
