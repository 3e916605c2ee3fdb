"""The paper's Table 1 at this machine's scale (issue 13, section 3): one command, resumable stage by stage.

W = a pool of composed scenes from user-style commands (examples/tasks_study.txt, 8 task families, object-pose
randomisation ON, 0-1 distractors) -> one seeded split H_0 of max(--ns) scenes (evaluate.py --make-splits); OOD =
W minus H_0. N = 0: ONE imitation start shared by every N, trained on scripted demos of scenes NOT in W: other
variants of the same commands (--il-seed: other layouts, rooms, distractors and command variants; W's object
instances where a description recurs, --il-objects shared; no scene id or layout of W, checked), or another command
list (--il-tasks-file examples/tasks_study_il.txt: other objects / colours). PPOFlow from that start on the first N
scenes of H_0 for N
in --ns, --num-seeds seeds at N = --multi-seed-n (one elsewhere), FINAL checkpoints (no early stopping). A
compute-matched baseline spends the env decisions of one PPOFlow run without RL: more imitation from the same start
on scripted demos of the N = --multi-seed-n training scenes (same decisions, same number of gradient steps).
Evaluation: evaluate.py, deterministic, fresh episode seeds from --eval-seed (5000), every policy on every scene of
W. Report (<out-dir>/report.md, report.json, table.md, sr_vs_n.png, learning_curves.png): SR on ID (the first N of
H_0) and OOD with 95% intervals whose unit is the training seed where there are several (Student t over seeds;
Wilson over episodes for a single run), the difference to the N = 0 start, TF, and the budget of every stage.

    python experiments/table1_study.py --out-dir out/table1                # the study (2 CPU cores; see --help)
    python experiments/table1_study.py --out-dir /tmp/t1 --ns 1 --multi-seed-n 1 --num-seeds 2 --min-pool 2 \
        --tasks-file <2 tasks> --il-tasks-file <1 task> ...                # tiny budget (tests/test_experiments.py)

Every stage is a subprocess of a stage CLI and is skipped when its output (done-marker) exists, so re-running the
same command after an interruption continues where it stopped; <out-dir>/steps.json holds each stage's command,
wall time and machine load.
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
from common import (ROOT, env_flags, machine_info, make_scenes, plot_curves, read_curve,  # noqa: E402
                    run_step, stage, t_interval)
from evaluate import newcombe_diff, wilson_interval  # noqa: E402

# train_imitation.py on a GPU: ppoflow_pi0.py's precision there, not fp32 without micro-batches (pi0-3b: ~88 GB); from
# a pretrained --il-init also its fine-tuning mode (LoRA on the VLM) instead of full fine-tuning
IL_GPU = "--dtype bfloat16 --micro-batch-size 8 --grad-checkpointing"
IL_GPU_PRETRAINED = IL_GPU + " --lora-rank 32"

# The no-early-stopping recipe (benchmarks/RESULTS.md, "recipe development", dev seeds 7000+): from an 8-scene start at
# 8.8%, this recipe's final checkpoint 11.2% vs 1.2% without the BC anchor (--target-kl 0.05 and 4x the lr had taken a
# 52.5% start to 28.7%). The anchor reads the N = 0 start's demos (the driver passes --demos).
RECIPE = ("--gamma 1.0 --no-bootstrap-truncated --value-time-to-go --value-state --critic-warmup-iterations 3 "
          "--warmup-iterations 5 --adv-norm-scope batch --target-kl 0.01 --lr-schedule cosine --lr-min-factor 0.1 "
          "--value-clip 0.2 --demo-bc-coef 0.5")


@dataclass
class Args:
    out_dir: str = "out/table1"
    """Study folder: W/, IL/ (scene pools), assets/ (shared), runs/, eval/, report.md, report.json, table.md."""
    tasks_file: str = str(ROOT / "examples/tasks_study.txt")
    """Task commands of the pool W (one per line, '#' comments)."""
    il_tasks_file: str | None = None
    """Task commands of the imitation start's scenes (default: W's commands, whose IL variants get other layouts,
    object instances and distractors from --il-seed; examples/tasks_study_il.txt holds other objects / colours)."""
    il_seed: int = 1
    """Designer / composer seed of the imitation pool (must differ from --seed: no scene of W is reused)."""
    il_objects: Literal["shared", "other"] = "shared"
    """Object instances of the imitation pool. shared: W's instances where a description recurs (the asset seed is
    --seed), with other layouts, distractors, rooms and command variants (--il-seed): the start has seen W's objects,
    not its scenes, the way a BridgeV2 start has seen everyday objects. other: other instances (asset seed --il-seed);
    a from-scratch tiny start then scores ~1% on W (RESULTS.md, session 5), too little for PPOFlow to learn from."""
    il_variants_per_task: int = 2
    """Scene variants per command in the imitation pool."""
    variants_per_task: int = 1
    """Scene variants per task (both pools)."""
    num_distractors: str = "0-1"
    """Distractors per scene (scene_designer.py --num-distractors)."""
    min_pool: int = 24
    """Fail unless at least this many W scenes pass the composer's QA."""
    ns: list[int] = field(default_factory=lambda: [1, 4, 12])
    """Numbers of training scenes N drawn from H_0 (H_0 has max(ns) scenes)."""
    multi_seed_n: int = 4
    """The N trained with --num-seeds PPOFlow seeds (and the baseline's training scenes)."""
    num_seeds: int = 3
    """PPOFlow seeds at N = --multi-seed-n (the unit of its confidence interval)."""
    seed: int = 0
    """Seed of designer, assets, composer, split and imitation; PPOFlow seed s runs with --seed 1 + s."""
    preset: str = "tiny"
    """Policy size: tiny (CPU), small, pi0-3b (GPU)."""
    device: str = "cpu"
    """Torch device of every learner and evaluator (cuda for pi0-3b)."""
    il_init: str | None = None
    """Start the N = 0 imitation from this checkpoint (train_imitation.py --init: e.g. an open-pi-zero Bridge pi0,
    the paper's start) instead of from scratch; None: from scratch."""
    il_extra: str | None = None
    """Extra train_imitation.py flags of the N = 0 start, written with "=". Default: with --device cuda, the
    trainer's GPU precision (IL_GPU: bf16 autocast over fp32 masters, micro-batches, activation checkpointing) and,
    with --il-init, LoRA on the VLM (IL_GPU_PRETRAINED); on CPU none."""
    image_size: int | None = None
    """Rendered image side (default: the policy's input, 64 for tiny, 224 for small and pi0-3b)."""
    max_decisions: int = 25
    """Episode length in chunk decisions (paper: 25)."""
    env_workers: int = 4
    """CPU env workers for demos and evaluation."""
    env_extra: str = "--env.no-dr-camera --env.no-dr-lighting"
    """Extra env flags for imitation and PPOFlow (evaluation uses each run's own), written with "=". Default: the
    conditions the recipe was developed under (RESULTS.md): object-pose and robot randomisation of Table A.2 on,
    camera and lighting randomisation off (a from-scratch 64 px tiny policy); "" for all of Table A.2."""
    compose_extra: str = ""
    """Extra compose_scene.py flags, written with "=" (e.g. --compose-extra="--solver-attempts 2")."""
    num_inference_steps: int = 1
    """K of the flow chain (imitation checkpoint and PPOFlow)."""
    il_episodes: int = 2400
    """Successful expert demos of the N = 0 start, spread over its scenes."""
    il_steps: int = 12000
    """Imitation gradient steps of the N = 0 start."""
    ppo_num_envs: int = 8
    """PPOFlow parallel envs (one CPU worker each)."""
    ppo_num_steps: int = 100
    """PPOFlow decisions per env per iteration."""
    ppo_minibatch: int = 200
    """PPOFlow minibatch (transitions)."""
    ppo_update_epochs: int = 1
    """PPOFlow epochs per iteration (the recipe's --target-kl is checked after each epoch: with one epoch it only
    matters when this is raised)."""
    ppo_iterations: int = 20
    """PPOFlow iterations per run (final checkpoint evaluated)."""
    ppo_lr: float = 5e-6
    """PPOFlow policy learning rate (Table A.1: 2e-5; 5e-6 with the tiny preset from scratch, see RECIPE)."""
    ppo_critic_lr: float = 1e-3
    """PPOFlow value-head learning rate."""
    ppo_extra: str = RECIPE
    """Extra ppoflow_pi0.py flags, written with "=": the no-early-stopping recipe (see benchmarks/RESULTS.md)."""
    baseline: bool = True
    """Train the compute-matched imitation baseline."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes per scene and policy."""
    eval_seed: int = 5000
    """First evaluation episode seed (never used while developing the recipe)."""
    stop_after: Literal["none", "pools", "il_start", "ppo"] = "none"
    """Stop after this stage (scene pools, the N = 0 start, the PPOFlow runs): check a stage before paying for the
    next; re-running without it continues from there."""
    dry_run: bool = False
    """Print the commands without running them."""

    @property
    def ppo_decisions(self) -> int:
        """Env decisions of one PPOFlow run (the baseline's budget)."""
        return self.ppo_num_envs * self.ppo_num_steps * self.ppo_iterations

    @property
    def ppo_grad_steps(self) -> int:
        """Gradient steps of one PPOFlow run without a target-KL stop (the baseline's optimisation budget)."""
        return self.ppo_iterations * self.ppo_update_epochs * max(1, self.ppo_num_envs * self.ppo_num_steps // self.ppo_minibatch)

    @property
    def baseline_decisions_per_env(self) -> int:
        """Expert decisions per collecting env of the baseline: one PPOFlow run's decisions, at least one episode."""
        return max(self.max_decisions, self.ppo_decisions // self.env_workers)

    def seeds_of(self, n: int) -> list[int]:
        return list(range(self.num_seeds if n == self.multi_seed_n else 1))


# ---------------------------------------------------------------------------------------------
# Pure helpers: task lists, statistics over episodes and training seeds, the table
# ---------------------------------------------------------------------------------------------


def read_tasks(path: str) -> list[str]:
    """Task commands of a task list (blank lines and '#' comments skipped)."""
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"table1_study.py: --tasks-file: {p} does not exist (fix: see examples/tasks_study.txt)")
    return [x.strip() for x in p.read_text().splitlines() if x.strip() and not x.lstrip().startswith("#")]


def disjoint_pools(a: Path, b: Path) -> list[str]:
    """Scenes of pool b that are also in pool a: the same scene id, or the same layout (objects, assets, poses)."""
    def keys(d: Path) -> dict[str, str]:
        out = {}
        for p in sorted(d.glob("*/manifest.json")):
            m = json.loads(p.read_text())
            out[p.parent.name] = json.dumps([(o["asset_id"], [round(x, 4) for x in o["init_xyz"]]) for o in m["objects"]],
                                            sort_keys=True)
        return out
    ka, kb = keys(a), keys(b)
    return sorted(k for k, v in kb.items() if k in ka or v in set(ka.values()))


def success_rate(episodes: list[dict], label: str, scenes: list[str]) -> tuple[int, int]:
    """(successes, episodes) of policy `label` on `scenes`."""
    xs = [bool(r["success"]) for r in episodes if r["label"] == label and r["scene"] in set(scenes)]
    return sum(xs), len(xs)


def group_cell(episodes: list[dict], labels: list[str], scenes: list[str], start: str | None = None) -> dict:
    """SR of a group of runs (one label per training seed) on `scenes`: with several runs the mean over seeds and a t
    interval over seeds; with one, the episode SR and its Wilson interval. `start`: also the difference to that
    policy on the same scenes and seeds (per seed, then over seeds; one run: Newcombe over episodes)."""
    ks = [success_rate(episodes, lab, scenes) for lab in labels]
    if any(n == 0 for _, n in ks):
        return {"sr": float("nan"), "ci": (float("nan"), float("nan")), "unit": "none", "runs": len(labels)}
    srs = [k / n for k, n in ks]
    if len(labels) > 1:
        m, lo, hi = t_interval(srs)
        cell = {"sr": m, "ci": (lo, hi), "unit": f"training seed (n={len(labels)})", "per_seed": srs}
    else:
        cell = {"sr": srs[0], "ci": wilson_interval(*ks[0]), "unit": f"episode (n={ks[0][1]})"}
    cell.update(runs=len(labels), episodes=sum(n for _, n in ks))
    if start is not None:
        k0, n0 = success_rate(episodes, start, scenes)
        if len(labels) > 1:
            cell["diff"] = t_interval([s - k0 / n0 for s in srs])
        else:
            cell["diff"] = newcombe_diff(ks[0][0], ks[0][1], k0, n0)
    tf = [float(r["elapsed_s"]) for r in episodes if r["label"] in set(labels) and r["scene"] in set(scenes) and r["success"]]
    cell["tf"] = sum(tf) / len(tf) if tf else float("nan")
    return cell


def fmt(cell: dict, key: str = "sr", ci: str = "ci") -> str:
    if key == "diff":
        d, lo, hi = cell.get("diff", (float("nan"),) * 3)
        return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * cell[key]:.1f} [{100 * cell[ci][0]:.1f}, {100 * cell[ci][1]:.1f}]"


def table_md(rows: list[dict]) -> str:
    """Table-1 style markdown: policy, N, runs, ID SR, diff to start, OOD SR, diff, ID-OOD gap, TF."""
    out = ["| policy | N | runs | Gen ID SR % [95%] | ID - start (pts) | Gen OOD SR % [95%] | OOD - start (pts) "
           "| ID - OOD (pts) | TF s (ID) | CI unit |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        i, o = r["id"], r["ood"]
        out.append(f"| {r['policy']} | {r['n']} | {i['runs']} | {fmt(i)} | {fmt(i, 'diff') if 'diff' in i else '-'} | "
                   f"{fmt(o)} | {fmt(o, 'diff') if 'diff' in o else '-'} | {100 * (i['sr'] - o['sr']):+.1f} | "
                   f"{i.get('tf', float('nan')):.2f} | {i['unit']} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


def main(args: Args) -> Path:
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps({"schema_version": 1, "args": asdict(args)}, indent=2))
    logs, steps, t0 = out / "logs", out / "steps.json", time.time()
    cx = shlex.split(args.compose_extra)
    w_tasks = read_tasks(args.tasks_file)
    il_tasks = read_tasks(args.il_tasks_file) if args.il_tasks_file else w_tasks
    if args.il_seed == args.seed:
        raise SystemExit(f"table1_study.py: --il-seed {args.il_seed} equals --seed: the imitation pool would rebuild W's "
                         "scenes (fix: another --il-seed)")
    w = make_scenes(out / "W", w_tasks, args.variants_per_task, args.num_distractors, args.seed, args.env_workers,
                    logs, steps, args.dry_run, "W_", cx, out / "assets")
    il_pool = make_scenes(out / "IL", il_tasks, args.il_variants_per_task, args.num_distractors, args.il_seed,
                          args.env_workers, logs, steps, args.dry_run, "IL_", cx, out / "assets",  # shared asset cache
                          asset_seed=args.seed if args.il_objects == "shared" else args.il_seed)
    if not args.dry_run and (same := disjoint_pools(w, il_pool)):
        raise SystemExit(f"table1_study.py: imitation scenes {same} are also in W (same id or content; fix: --il-seed)")
    composed = sorted(p.parent.name for p in w.glob("*/manifest.json"))
    h = max(args.ns)
    if not args.dry_run and (len(composed) < max(args.min_pool, h + 1)):
        raise SystemExit(f"table1_study.py: only {len(composed)} W scenes passed QA ({w / 'compose_summary.json'}); "
                         f"need {max(args.min_pool, h + 1)} (fix: more tasks or --variants-per-task)")
    if args.stop_after == "pools":
        return out
    splits = w / "splits.json"
    run_step("splits", stage("evaluate.py") + ["--make-splits", "--scenes-dir", str(w), "--splits-file", str(splits),
                                               "--num-splits", "1", "--split-size", str(h), "--seed", str(args.seed)],
             splits, logs, steps, args.dry_run)
    h0 = json.loads(splits.read_text())["splits"][0]["id"] if splits.exists() else [f"<H0[{i}]>" for i in range(h)]
    size = args.image_size or (64 if args.preset in ("tiny", "mini") else 224)  # the preset's input: never upsampled
    envf = env_flags(size, args.max_decisions) + shlex.split(args.env_extra)
    il_extra = shlex.split(args.il_extra if args.il_extra is not None else "" if args.device != "cuda"
                           else IL_GPU_PRETRAINED if args.il_init else IL_GPU)
    k = ["--num-inference-steps", str(args.num_inference_steps)]
    runs = out / "runs"
    start = runs / "il_start/ckpt_final.pt"
    run_step("il_start", stage("train_imitation.py") + [
        "--scenes-dir", str(il_pool), "--out", str(start.parent), "--preset", args.preset,
        "--num-envs", str(args.env_workers), "--episodes", str(args.il_episodes), "--steps", str(args.il_steps),
        "--save-every", str(args.il_steps), "--seed", str(args.seed), "--device", args.device, *k, *envf,
        *(["--init", args.il_init] if args.il_init else []), *il_extra,
        *(["--demos", str(start.parent / "demos.pt")] if (start.parent / "demos.pt").exists() else [])],
        start, logs, steps, args.dry_run)
    if args.stop_after == "il_start":
        return out
    ckpts, labels, groups = [start], ["N=0 IL start"], {}
    for n in args.ns:
        for s in args.seeds_of(n):
            run = runs / f"ppo_N{n}_s{s}"
            every = max(1, args.ppo_iterations // 10)
            run_step(f"ppo_N{n}_s{s}", stage("ppoflow_pi0.py") + [
                "--scenes-dir", str(w), "--splits-file", str(splits), "--split-index", "0", "--num-train-scenes", str(n),
                "--init", str(start), "--out", str(run), "--save-every", str(every), "--eval-every", "0",
                "--seed", str(1 + s), *k, *envf,
                "--num-envs", str(args.ppo_num_envs), "--num-steps", str(args.ppo_num_steps),
                "--minibatch-size", str(args.ppo_minibatch), "--update-epochs", str(args.ppo_update_epochs),
                "--num-iterations", str(args.ppo_iterations), "--learning-rate", str(args.ppo_lr),
                "--critic-learning-rate", str(args.ppo_critic_lr), "--device", args.device, *shlex.split(args.ppo_extra),
                "--demos", str(start.parent / "demos.pt"),  # the BC anchor's demos (used when --demo-bc-coef > 0)
                *(["--resume", str(last)] if (last := _last_ckpt(run)) and not (run / "ckpt_final.pt").exists() else [])],
                run / "ckpt_final.pt", logs, steps, args.dry_run)
            ckpts.append(run / "ckpt_final.pt")
            labels.append(f"PPOFlow N={n} s{s}")
            groups.setdefault(("PPOFlow", n), []).append(labels[-1])
    if args.stop_after == "ppo":
        return out
    if args.baseline:
        base = runs / f"more_il_N{args.multi_seed_n}"
        run_step(f"more_il_N{args.multi_seed_n}", stage("train_imitation.py") + [
            "--scenes-dir", str(w), "--scene-ids", *h0[:args.multi_seed_n], "--init", str(start), "--out", str(base),
            "--num-envs", str(args.env_workers), "--episodes", str(10 ** 6),
            "--max-collect-decisions", str(args.baseline_decisions_per_env),
            "--stats", "init", "--steps", str(args.ppo_grad_steps), "--save-every", str(args.ppo_grad_steps),
            "--seed", str(args.seed + 7), "--device", args.device, *k, *envf],
            base / "ckpt_final.pt", logs, steps, args.dry_run)
        ckpts.append(base / "ckpt_final.pt")
        labels.append(f"more IL N={args.multi_seed_n}")
        groups[("more imitation (compute-matched)", args.multi_seed_n)] = [labels[-1]]
    ev = out / "eval"
    run_step("evaluate", stage("evaluate.py") + [a for c in ckpts for a in ("--ckpt", str(c))] + [
        "--labels", *labels, "--scenes-dir", str(w), "--splits-file", str(splits), "--suite", "generated",
        "--episodes-per-scene", str(args.eval_episodes), "--seed", str(args.eval_seed), "--num-envs",
        str(args.env_workers), "--max-decisions", str(args.max_decisions), "--device", args.device, "--video-scenes", "0",
        "--no-latency", "--out-dir", str(ev)], ev / "results.json", logs, steps, args.dry_run)
    if args.dry_run:
        return out
    return write_report(out, args, h0, composed, groups, time.time() - t0)


def _last_ckpt(run: Path) -> Path | None:
    """The newest ckpt_<iter>.pt of an interrupted PPOFlow run (resumed exactly), if any."""
    its = sorted((int(p.stem.split("_")[1]), p) for p in run.glob("ckpt_*.pt") if p.stem.split("_")[1].isdigit())
    return its[-1][1] if its else None


def write_report(out: Path, args: Args, h0: list[str], w: list[str], groups: dict, wall: float) -> Path:
    episodes = [json.loads(x) for x in (out / "eval/episodes.jsonl").read_text().splitlines() if x.strip()]
    ood = [s for s in w if s not in set(h0)]
    start = "N=0 IL start"
    rows = []
    for n in args.ns:
        rows.append({"policy": start, "n": n, "id": group_cell(episodes, [start], h0[:n]),
                     "ood": group_cell(episodes, [start], ood)})
        for (method, gn), labs in groups.items():
            if gn == n:
                rows.append({"policy": method, "n": n, "id": group_cell(episodes, labs, h0[:n], start),
                             "ood": group_cell(episodes, labs, ood, start)})
    (out / "table.md").write_text(table_md(rows))
    _plot_sr_vs_n(rows, out / "sr_vs_n.png")
    curves = {f"N={n} s{s}": read_curve(out / f"runs/ppo_N{n}_s{s}/metrics.jsonl") for n in args.ns for s in args.seeds_of(n)}
    plot_curves(curves, out / "learning_curves.png", f"PPOFlow from the shared N=0 start ({args.preset}): rollout SR",
                {"N=0 start, all W (deterministic eval)": success_rate(episodes, start, w)[0] / max(1, success_rate(episodes, start, w)[1])})
    steps = json.loads((out / "steps.json").read_text())
    env_steps = {}
    for name in steps:
        mf = out / "runs" / name / "metrics.jsonl"
        if name.startswith("ppo_") and mf.exists():
            ms = [json.loads(x) for x in mf.read_text().splitlines() if x.strip()]
            env_steps[name] = max((m.get("global_step", 0) for m in ms), default=0)
    rep = {"rows": rows, "h0": h0, "ood": ood, "pool_size": len(w), "env_decisions": env_steps,
           "baseline_decision_budget": args.ppo_decisions, "wall_s": {k: v["wall_s"] for k, v in steps.items()},
           "machine": machine_info(), "args": asdict(args)}
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    md = [f"# Table-1 study: PPOFlow across generated scenes ({args.preset}, K={args.num_inference_steps})\n",
          f"W: {len(w)} composed scenes ({args.tasks_file}); H_0 = first {max(args.ns)} of the split; OOD = {len(ood)} "
          f"scenes; N=0 start trained on {args.il_variants_per_task} other variants (seed {args.il_seed}: other layouts, "
          f"rooms, distractors; object instances: {args.il_objects}) of {args.il_tasks_file or 'the same commands'}, "
          f"no scene of W. Env flags of training: `{args.env_extra}`. "
          "Evaluation: deterministic, "
          f"{args.eval_episodes} episodes per scene, seeds from {args.eval_seed}. Final PPOFlow checkpoints "
          "(no early stopping).\n", table_md(rows),
          "SR in %; intervals: Student t over training seeds where a row has several runs, else Wilson over "
          "episodes (differences: t over per-seed differences, else Newcombe).\n",
          "![SR vs N](sr_vs_n.png)\n", "![learning curves](learning_curves.png)\n",
          "## Budget\n", "| stage | wall s | env decisions | load at start | command |", "|---|---:|---:|---:|---|"]
    md += [f"| {k} | {v['wall_s']} | {env_steps.get(k, '-')} | {v['loadavg_start']:.1f} | `{v['cmd'][:140]}` |"
           for k, v in steps.items()]
    md.append(f"\nCompute-matched baseline budget: {args.ppo_decisions} env decisions of one PPOFlow run "
              f"({args.baseline_decisions_per_env * args.env_workers} expert decisions allowed), {args.ppo_grad_steps} gradient "
              f"steps. Total wall (this invocation) {wall:.0f} s. Machine: `{json.dumps(rep['machine'])}`\n")
    (out / "report.md").write_text("\n".join(md))
    print("\n".join(md))
    return out


def _plot_sr_vs_n(rows: list[dict], path: Path) -> None:
    """ID and OOD SR vs N with 95% intervals, the N = 0 start as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    for j, (setname, style) in enumerate((("id", "o-"), ("ood", "s--"))):
        pts = sorted((r["n"], r[setname]) for r in rows if r["policy"] == "PPOFlow")
        if pts:
            x = [p[0] for p in pts]
            y = [p[1]["sr"] for p in pts]
            err = [[max(0.0, p[1]["sr"] - p[1]["ci"][0]) if p[1]["ci"][0] == p[1]["ci"][0] else 0 for p in pts],
                   [max(0.0, p[1]["ci"][1] - p[1]["sr"]) if p[1]["ci"][1] == p[1]["ci"][1] else 0 for p in pts]]
            ax.errorbar(x, y, yerr=err, fmt=style, color=f"C{j}", capsize=3, label=f"PPOFlow {setname.upper()}")
        st = sorted((r["n"], r[setname]["sr"]) for r in rows if r["policy"] == "N=0 IL start")
        if st:
            ax.plot([p[0] for p in st], [p[1] for p in st], ":", color=f"C{j}", label=f"N=0 start {setname.upper()}")
    ax.set_xscale("log")
    ax.set_xlabel("training scenes N")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Args))
