"""What the experiment drivers share (experiments/*.py): running a stage CLI as a resumable, timed step, the
statistics whose unit is the training seed, learning curves, scene pools, and the frozen PPOFlow recipe of the
object-state proxy. Stages are never imported here: drivers talk to them through their CLIs and files."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: stage scripts live here
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # drivers import evaluate.py's statistics (newcombe_diff, wilson_interval)

# The object-state proxy (issue 27). Every result of it carries this label.
STATE_PROXY_LABEL = "object-state proxy: no pretrained VLM, visual generalisation not tested"  # = scene_env.OBJECT_STATE_LABEL
# What a pixel result of the drivers is (state_proxy.py --obs-mode rgb, distill_study.py's student and baseline); each
# report names the preset beside it.
PIXEL_LABEL = "pixel policy: 64 px camera + proprio, trained from scratch, no pretrained VLM"
# The frozen PPOFlow recipe on the object-state proxy (benchmarks/RESULTS.md, "PPOFlow on the object-state proxy"):
# every flag of ppoflow_pi0.py that differs from its (paper) defaults, in one place. experiments/state_proxy.py runs it
# (its --ppo-extra goes after it: an ablation arm overrides single flags, tyro takes the last value).
STATE_PROXY_RECIPE = (
    "--env.obs-mode state --env.image-size 64 "
    "--num-envs 8 --num-steps 100 --minibatch-size 100 --update-epochs 4 "  # 800 decisions = 3200 control steps / it
    "--target-kl 0.02 "  # checked after each epoch: the later epochs are skipped once one passes it
    "--learning-rate 5e-6 --critic-learning-rate 1e-3 --critic-warmup-iterations 3 "  # tiny actor steps, fast critic
    "--lr-schedule cosine --lr-min-factor 0.1 "  # hold the lift: the step size decays to 0.1x over the run
    "--gamma 1.0 --no-bootstrap-truncated "  # objective: success within the episode (a time-out is a failure)
    "--demo-bc-coef 0.5 "  # behaviour-cloning anchor to the start's own demos
    "--num-iterations 80"  # 64k decisions (256k control steps): ~17-20 min on 2 cores (40 left seeds still rising)
)


def recipe_budget(flags: str | list[str]) -> dict:
    """The budget a PPOFlow command line spends, from its flags (the last value of a repeated flag wins, as in tyro):
    env decisions (chunk decisions) per run and the most gradient steps its update can take (no target-KL stop).
    Every budget flag must be named: a driver that compares runs by their budget must not guess a default."""
    argv = shlex.split(flags) if isinstance(flags, str) else list(flags)
    names = {"num_envs": "--num-envs", "num_steps": "--num-steps", "num_iterations": "--num-iterations",
             "minibatch_size": "--minibatch-size", "update_epochs": "--update-epochs"}
    got = {}
    for key, flag in names.items():
        at = [i for i, a in enumerate(argv) if a == flag or a.startswith(flag + "=")]
        if not at:
            raise ValueError(f"recipe_budget: {flag} is not in the PPOFlow flags {shlex.join(argv)!r}: name it")
        a = argv[at[-1]]
        got[key] = int(a.split("=", 1)[1] if "=" in a else argv[at[-1] + 1])
    batch = got["num_envs"] * got["num_steps"]
    return {**got, "env_decisions": batch * got["num_iterations"],
            "max_grad_steps": got["num_iterations"] * got["update_epochs"] * max(1, batch // got["minibatch_size"])}


def scene_cover_flags(num_scenes: int, num_envs: int, every: int = 4) -> list[str]:
    """Env flags that make `num_envs` CPU env workers visit all `num_scenes` scenes: a worker holds scenes i, i +
    num_envs, ... (scene_env.make_vec_env) but stays on its first unless it re-draws one of them every `every`
    episodes. A re-draw rebuilds the scene: at every reset it made a state-mode episode ~1.5-2x slower (measured on
    the loaded 2-core machine, 3 scenes, in-process env), so every 4th reset, ~+15%."""
    return ["--env.resample-every", str(every)] if num_scenes > num_envs else []


def choose_start(candidates: list[tuple[int, float]], band: tuple[float, float]) -> int:
    """The early stop of an imitation start: the earliest (step, SR) whose SR is in the band [lo, hi], else the step
    whose SR is nearest the band (DPPO: stop BC early so there is room for fine-tuning)."""
    lo, hi = band
    if not candidates:
        raise ValueError("choose_start: no candidate checkpoints")
    for step, sr in sorted(candidates):
        if lo <= sr <= hi:
            return step
    return min(sorted(candidates), key=lambda c: (lo - c[1]) if c[1] < lo else (c[1] - hi))[0]


def evaluate_cmd(ckpts: list[Path], labels: list[str], scenes_dir: str | Path, scene_ids: list[str], episodes: int,
                 seed: int, out: Path, workers: int, max_decisions: int) -> list[str]:
    """evaluate.py on `scene_ids`: deterministic, episode j of every scene with seed `seed + j`, success checked at
    chunk ends as in training (Eq. A.1 per chunk), no videos or latency table; results in <out>/results.json."""
    return stage("evaluate.py") + [a for c in ckpts for a in ("--ckpt", str(c))] + [
        "--labels", *labels, "--scenes-dir", str(scenes_dir), "--scene-ids", *scene_ids, "--suite", "generated",
        "--episodes-per-scene", str(episodes), "--num-envs", str(workers), "--seed", str(seed),
        "--max-decisions", str(max_decisions), "--success-check", "chunk",
        "--device", "cpu", "--video-scenes", "0", "--no-latency", "--out-dir", str(out)]


def results_per_scene(path: Path) -> dict[str, dict]:
    """label -> per-scene results of an evaluate.py results.json (one run per label)."""
    res = json.loads(path.read_text())
    return {p["label"]: p["per_scene"] for p in res["policies"]}


def pooled(per_scene: dict, scenes: list[str]) -> tuple[int, int]:
    """(successes, episodes) of one policy over `scenes` from evaluate.py's per-scene results."""
    k = n = 0
    for s in scenes:
        r = per_scene.get(s)
        if r:
            k += r["successes"] if "successes" in r else round(r["success_rate"] * r["episodes"])
            n += r["episodes"]
    return k, n


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
        if name not in steps and not dry_run:  # a run killed after the step wrote its output, before its time was
            # recorded: the budget tables list the step with its wall time unknown instead of leaving it out
            steps[name] = {"cmd": shlex.join(cmd), "wall_s": None, "loadavg_start": None, "loadavg_end": None,
                           "finished": None, "note": "output found on a resume; wall time not recorded"}
            steps_file.parent.mkdir(parents=True, exist_ok=True)
            steps_file.write_text(json.dumps(steps, indent=2))
        return steps.get(name, {}).get("wall_s") or 0.0
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


def interrupted(run: Path) -> Path | None:
    """The newest ckpt_<step>.pt of a stage cut short (no ckpt_final.pt in `run`), if any: what ppoflow_pi0.py
    --resume <it> and train_imitation.py --resume continue from, exactly."""
    from ppoflow_pi0 import numbered_checkpoints

    its = [] if (run / "ckpt_final.pt").exists() else numbered_checkpoints(run)
    return its[-1] if its else None


def resume_imitation(run: Path) -> list[str]:
    """train_imitation.py's --resume when its stage in `run` was cut short (its demos and newest checkpoint)."""
    return ["--resume"] if interrupted(run) else []


def perception_summary(summary: Path, steps: int) -> str:
    """What a pretrain_perception.py run (its summary.json) trained on and reached, for a report's sentence."""
    m = json.loads(Path(summary).read_text())
    ex, ro = m.get("expert_frames") or 0, m.get("rollout_frames") or 0
    along = "".join(f"; along held-out {what} episodes {m[f'{key}/target_xyz_mae_cm']:.1f} cm (mean "
                    f"{m[f'{key}/target_xyz_mae_cm_predict_mean']:.1f} cm)"
                    for key, what in (("val_expert", "expert"), ("val_rollout", "rollout-policy"))
                    if f"{key}/target_xyz_mae_cm" in m)
    kinds = [f"{m['frames'] - ex - ro} fresh-reset frames"] + [f"{n} along {what} episodes" for n, what in
                                                              ((ex, "scripted-expert"), (ro, "a learned policy's")) if n]
    frames = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
    return (f"pretrain_perception.py: {frames}, {steps} steps; held-out target position "
            f"error at reset {m['val/target_xyz_mae_cm']:.1f} cm, predicting the mean "
            f"{m['val/target_xyz_mae_cm_predict_mean']:.1f} cm{along}")


def fmt_wall(v: dict) -> str:
    """A steps.json entry's wall seconds for a budget table ("unknown" when a resume found its output unrecorded)."""
    return "unknown" if v.get("wall_s") is None else f"{v['wall_s']}"


def fmt_load(v: dict) -> str:
    return "-" if v.get("loadavg_start") is None else f"{v['loadavg_start']:.1f}"


def total_wall(steps: dict) -> str:
    """The summed wall seconds of steps.json's entries, naming how many are unknown."""
    known = [v["wall_s"] for v in steps.values() if v.get("wall_s") is not None]
    unknown = len(steps) - len(known)
    return f"{sum(known):.0f} s" + (f" + {unknown} step(s) of unknown wall time" if unknown else "")


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
