"""Evaluate policies the way the paper reports them (Sec. 4, Table 1, Figs. F.3-F.7, Table B.1).

Success rate (SR, 95% Wilson interval), time to finish (TF, seconds over successful episodes) and
partial success on: the ID scenes a run trained on (the first N of split H_i), the OOD scenes
(W minus H_i), all generated scenes W, and the three SimplerEnv Bridge tasks. Checkpoints and the
scripted / random baselines go through the same episode loop, with the same seeds.

    # 1. seeded scene splits H_i / OOD, read by training (ppoflow_pi0.py) and evaluation alike
    python evaluate.py --make-splits --scenes-dir scenes --num-splits 3 --split-size 50
    # 2. a checkpoint (its model config travels with it) against the baselines, ID/OOD/all/SimplerEnv
    python evaluate.py --ckpt runs/ppo/ckpt_final.pt --policy scripted random --scenes-dir scenes \
        --splits-file scenes/splits.json --episodes-per-scene 10

Runs trained on different splits are grouped by label (`--labels`, default "N=<num_train_scenes>"
from the checkpoint's args): the table reports their mean and sample std, as Table 1 does.
Interrupted runs resume: every finished episode is appended to <out>/episodes.jsonl, keyed by
(policy, scene, episode seed) and the evaluation settings, and is not run again.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional

import numpy as np
import tyro

import scene_env  # cheap: ManiSkill is imported when the first env is made
import scene_schema as ss

SIMPLER_TASKS = tuple(scene_env.SIMPLER_PREFIX + t for t in scene_env.SIMPLER_TASKS)  # the 3 Bridge tasks
SET_TITLES = {"id": "Gen ID H_i", "ood": "Gen OOD", "all": "Gen all W", "simpler": "SimplerEnv"}
# Random baseline: uniform in a per-step ee-delta box of Bridge-sized motions (m, rad); gripper +-1.
RANDOM_ACTION_HIGH = (0.03, 0.03, 0.03, 0.1, 0.1, 0.1)


@dataclass
class Args:
    ckpt: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """Checkpoint(s) to evaluate; repeat the flag for several (`--ckpt a.pt --ckpt b.pt`)."""
    labels: list[str] = field(default_factory=list)
    """One row label per --ckpt (e.g. `--labels N=1 N=1 N=3`); equal labels are averaged (mean +- std);
    default: "N=<num_train_scenes>" from the checkpoint's args, else the run folder name."""
    policy: tuple[Literal["scripted", "random"], ...] = ()
    """Baselines run through the same path: `scripted` (the env's privileged expert), `random`."""
    scenes_dir: str = "scenes"
    """Folder of composed scenes (scenes/<id>/manifest.json): the generated set W."""
    scene_ids: Optional[tuple[str, ...]] = None
    """Restrict to these scene ids (generated ids or "simpler:<EnvId>"); unknown ids are an error."""
    suite: Literal["generated", "simpler", "all"] = "all"
    """Scene sets to run: generated (ID/OOD/all W), simpler (the 3 SimplerEnv Bridge tasks), or all."""
    splits_file: Optional[str] = None
    """Splits JSON (scene_schema.SceneSplits) for ID/OOD; --make-splits writes it
    (default there: <scenes-dir>/splits.json); default here: the checkpoint's training splits file."""
    split_index: int = 0
    """Split H_i used for checkpoints whose args do not name one, and for the baselines."""
    episodes_per_scene: int = 10
    """Episodes per scene; episode j of every scene uses seed `seed + j` (paper: 100)."""
    seed: int = 0
    """Base episode seed."""
    num_envs: int = 4
    """Parallel envs per scene, each running other episodes of it (CPU: one worker process each)."""
    sim_backend: str = "auto"
    """Physics backend: "auto" (physx_cuda when CUDA is available), "physx_cpu" or "physx_cuda"."""
    domain_randomization: bool = True
    """Table A.2 randomization as in training (off: every episode starts from the nominal layout)."""
    max_decisions: Optional[int] = None
    """Episode length in chunk decisions (default: the training run's, Table A.1: 25)."""
    object_state_noise_m: Optional[tuple[float, float]] = None
    """obs_mode "state" policies only: the Gaussian noise (m) on their target / destination positions
    (EnvConfig.object_state_noise_m). Default: as each was trained; `0 0`: the exact features."""
    object_state_noise_corr: Optional[float] = None
    """obs_mode "state" policies only: that noise's correlation between decisions (EnvConfig.object_state_noise_corr).
    Default: as each was trained (0 where the noise is overridden to 0 0)."""
    sim_freq: Optional[int] = None
    """Physics frequency (Hz) of generated scenes (default: the training run's; SimplerEnv keeps its 500 Hz)."""
    reuse_envs: bool = True
    """Keep each env's worker processes and renderer from one generated scene to the next (the scene is rebuilt in
    place); --no-reuse-envs builds a new env per scene (the behaviour before issue 17; benchmarks/bench_eval.py)."""
    success_check: Literal["step", "chunk"] = "step"
    """Eq. A.1 after every control step (time to finish at 0.2 s resolution) or at chunk ends only (as training)."""
    deterministic: bool = True
    """Deterministic policy mode (sigma = 0) for checkpoints."""
    preset: Optional[str] = None
    """Expected policy preset; a checkpoint of another preset is an error."""
    device: str = "auto"
    """Torch device for the policy: "auto" (cuda when available), "cpu", "cuda"."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Policy forward precision, as ppoflow_pi0.py --dtype: bfloat16 autocasts the forward over fp32 weights (what a
    bf16-trained policy's rollouts ran in)."""
    out_dir: Optional[str] = None
    """Output folder (default: <ckpt folder>/eval for one checkpoint, else runs/eval/<policies>)."""
    make_splits: bool = False
    """Write seeded splits H_i (size --split-size) and their OOD complements to --splits-file, then exit."""
    num_splits: int = 3
    """--make-splits: number of splits H_i (paper: 3)."""
    split_size: int = 50
    """--make-splits: scenes per ID split M (paper: 50 of 100)."""
    video_scenes: int = 4
    """Scenes per scene set whose first episode is recorded (0: no videos): into the policy-view grid and, with
    --render-videos, by ManiSkill RecordEpisode."""
    video_fps: float = 0.0
    """Frames per second of the policy-view grids (one frame per chunk decision); 0 = real time (1 / (C x 0.2 s))."""
    render_videos: bool = True
    """Run the recorded episodes (--video-scenes) in a 1-env ManiSkill RecordEpisode env: <out>/render/<policy>/
    <scene>__<seed>/video.mp4 (the 640x480 render camera, every control step, real-time fps) and trajectory.h5/.json
    (replayable: scene_env.rerender). The logged outcome is that recorded episode."""
    latency: bool = True
    """Time policy.act() for each K of --latency-ks (Table B.1) at every checkpoint's preset."""
    latency_ks: tuple[int, ...] = (1, 2, 4, 10)
    """Integration steps K timed for the latency table."""
    latency_batch: int = 1
    """Observations per act() call when timing."""
    latency_iters: int = 10
    """Timed act() calls per K (after 3 warm-up calls); the median is reported."""
    latency_compile: bool = False
    """Also time under torch.compile."""
    track: bool = False
    """Log everything to Weights & Biases."""
    wandb_project: str = ss.WANDB_PROJECT
    """W&B project."""
    wandb_entity: Optional[str] = None
    """W&B entity (team)."""
    wandb_group: Optional[str] = None
    """W&B group (default: the name of the folder that holds --out-dir, e.g. the study)."""
    exp_name: str = "evaluate"
    """W&B run name prefix."""

    @property
    def sets_wanted(self) -> tuple[str, ...]:
        return {"generated": ("id", "ood", "all"), "simpler": ("simpler",),
                "all": ("id", "ood", "all", "simpler")}[self.suite]


# ---------------------------------------------------------------------------------------------
# Pure helpers: statistics, splits, planning, aggregation, tables
# ---------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (well behaved at 0 and n, unlike Wald)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_diff(k1: int, n1: int, k0: int, n0: int, z: float = 1.959964) -> tuple[float, float, float]:
    """p1 - p0 and its 95% interval by Newcombe's hybrid score method (method 10, Newcombe 1998), built on
    wilson_interval: keeps its coverage near 0 and 1 where the Wald interval does not. Another `z` gives another
    level (e.g. NormalDist().inv_cdf(1 - 0.05 / (2 * m)) for m comparisons, Bonferroni)."""
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson_interval(k1, n1, z)
    l0, u0 = wilson_interval(k0, n0, z)
    d = p1 - p0
    return d, d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def make_splits(scenes: list[str], num_splits: int, size: int, seed: int) -> ss.SceneSplits:
    """Seeded random ID subsets H_i of `size` scenes (their sampled order is the training order:
    a run with N scenes trains on id[:N]) and their OOD complements W \\ H_i (paper Sec. 4)."""
    if not 0 < size <= len(scenes):
        raise ValueError(f"--split-size {size} must be between 1 and the number of composed scenes ({len(scenes)}); "
                         "compose more scenes or pass a smaller --split-size")
    rng = random.Random(seed)
    splits = []
    for i in range(num_splits):
        ids = rng.sample(list(scenes), size)
        splits.append({"index": i, "id": ids, "ood": [s for s in scenes if s not in set(ids)]})
    return ss.SceneSplits(scenes=list(scenes), splits=splits, seed=seed, size=size)


def summarize(episodes: list[dict]) -> dict:
    """SR with its Wilson interval, TF over successful episodes, partial-success rate."""
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    tf = [e["elapsed_s"] for e in episodes if e["success"] and e.get("elapsed_s") is not None]
    lo, hi = wilson_interval(k, n)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else None, "ci95": [lo, hi],
            "time_to_finish_s": float(np.mean(tf)) if tf else None,
            "time_to_finish_std_s": float(np.std(tf)) if tf else None,
            "partial_success_rate": sum(bool(e["partial_success"] or e["success"]) for e in episodes) / n if n else None}


def scene_sets(all_ids: list[str], simpler_ids: list[str], split: dict | None,
               num_train: int | None) -> dict[str, list[str]]:
    """Scene sets of one policy: ID = the first N scenes of its split H_i (what it trained on),
    OOD = W \\ H_i, all = W, simpler = the SimplerEnv tasks. Empty sets are left out."""
    sets, w = {}, set(all_ids)
    if all_ids and split is not None:
        h = split["id"][:num_train] if num_train else split["id"]
        sets["id"] = [s for s in h if s in w]
        sets["ood"] = [s for s in split["ood"] if s in w]
    if all_ids:
        sets["all"] = list(all_ids)
    if simpler_ids:
        sets["simpler"] = list(simpler_ids)
    return {k: v for k, v in sets.items() if v}


def parse_n(label: str) -> int | None:
    """"N=10" / "n=10 (SE)" -> 10: the number of training scenes a row label names."""
    m = re.search(r"\bN\s*=\s*(\d+)", label, flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def group_runs(policies: list[dict]) -> list[dict]:
    """Rows of Table 1: policies with equal labels are runs on different splits; per scene set the
    mean and sample std (ddof=1) over runs of SR and TF, plus the Wilson interval of all episodes."""
    groups: dict[str, list[dict]] = {}
    for p in policies:
        groups.setdefault(p["label"], []).append(p)
    rows = []
    for label, runs in groups.items():
        row = {"label": label, "runs": [r["name"] for r in runs], "num_train_scenes": runs[0].get("num_train_scenes"),
               "sets": {}}
        for key in SET_TITLES:
            have = [r["sets"][key] for r in runs if key in r["sets"]]
            if not have:
                continue
            sr = [h["success_rate"] for h in have if h["success_rate"] is not None]
            tf = [h["time_to_finish_s"] for h in have if h["time_to_finish_s"] is not None]
            k, n = sum(h["successes"] for h in have), sum(h["episodes"] for h in have)
            std = lambda xs: float(np.std(xs, ddof=1)) if len(xs) > 1 else None  # noqa: E731
            row["sets"][key] = {
                "scenes": have[0]["scenes"], "runs": len(have), "episodes": n, "success_rate": float(np.mean(sr)) if sr else None,
                "success_rate_std": std(sr), "ci95": list(wilson_interval(k, n)),
                "time_to_finish_s": float(np.mean(tf)) if tf else None, "time_to_finish_std_s": std(tf),
                "partial_success_rate": float(np.mean([h["partial_success_rate"] for h in have]))}
        rows.append(row)
    return rows


def _fmt(mean: float | None, std: float | None, scale: float = 1.0, ci: list | None = None) -> str:
    if mean is None:
        return "-"
    if std is not None:
        return f"{mean * scale:.1f} ± {std * scale:.1f}"
    if ci is not None:
        return f"{mean * scale:.1f} [{ci[0] * scale:.0f}-{ci[1] * scale:.0f}]"
    return f"{mean * scale:.1f}"


def table_markdown(rows: list[dict]) -> str:
    """Table 1 layout: rows = policies, column groups = scene sets (SR %, TF s). Single runs show the
    95% Wilson interval of SR in brackets; groups of runs show mean ± std over runs."""
    keys = [k for k in SET_TITLES if any(k in r["sets"] for r in rows)]
    def title(k):  # noqa: E306
        sizes = sorted({r["sets"][k]["scenes"] for r in rows if k in r["sets"]})
        return f"{SET_TITLES[k]} ({'/'.join(map(str, sizes))})"
    head = "| Policy | " + " | ".join(f"{title(k)} SR (%) ↑ | TF (s) ↓" for k in keys) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            s = r["sets"].get(k)
            cells += ([_fmt(s["success_rate"], s["success_rate_std"], 100, s["ci95"]),
                       _fmt(s["time_to_finish_s"], s["time_to_finish_std_s"])] if s else ["-", "-"])
        runs = max((s["runs"] for s in r["sets"].values()), default=1)
        lines.append(f"| {r['label']}{f' ({runs} runs)' if runs > 1 else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict]) -> str:
    cols = ["success_rate", "success_rate_std", "ci95_lo", "ci95_hi", "time_to_finish_s", "time_to_finish_std_s",
            "partial_success_rate", "episodes", "scenes", "runs"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["policy", "num_train_scenes"] + [f"{k}/{c}" for k in SET_TITLES for c in cols])
    for r in rows:
        out = [r["label"], r["num_train_scenes"]]
        for k in SET_TITLES:
            s = r["sets"].get(k)
            s = s and {**s, "ci95_lo": s["ci95"][0], "ci95_hi": s["ci95"][1]}
            out += [("" if s is None or s[c] is None else s[c]) for c in cols]
        w.writerow(out)
    return buf.getvalue()


def latency_markdown(lat: list[dict]) -> str:
    lines = ["| Preset | K | batch | act() latency eager (s) | torch.compile (s) | speed-up vs K=10 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in lat:
        ref = next((x["eager_s"] for x in lat if x["preset"] == r["preset"] and x["K"] == 10), None)
        comp = f"{r['compile_s']:.4f}" if r.get("compile_s") else "-"
        speedup = f"{ref / r['eager_s']:.2f}x" if ref else "-"
        lines.append(f"| {r['preset']} | {r['K']} | {r['batch']} | {r['eager_s']:.4f} | {comp} | {speedup} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Policies: checkpoints (read and checked before any episode) and baselines
# ---------------------------------------------------------------------------------------------


@dataclass
class PolicySpec:
    name: str
    """Unique id, the resume key: the checkpoint path, or "scripted" / "random"."""
    label: str
    """Table row; equal labels are runs averaged together."""
    kind: str
    """"checkpoint" | "scripted" | "random"."""
    ckpt: str | None = None
    preset: str | None = None
    num_train_scenes: int | None = None
    """N: its ID set is the first N scenes of split H_i (None: all of H_i)."""
    split_index: int = 0
    splits_file: str | None = None
    model_config: dict = field(default_factory=dict)
    """The checkpoint's model config (chunk, image size, preset, K)."""
    train_args: dict = field(default_factory=dict)
    """The args the checkpoint was trained with (env settings, split, number of training scenes)."""
    identity: dict = field(default_factory=dict)
    """Iteration, file size and content hash: a re-trained checkpoint at the same path is not mistaken on resume."""


def read_checkpoint_meta(path: str) -> dict:
    """Model config and training args of a checkpoint, without building the model (mmap: cheap)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ss.SchemaError(path, "", "checkpoint file does not exist (pass --ckpt runs/<run>/ckpt_final.pt)")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated copies, other pickles, non-checkpoint files
        raise ss.SchemaError(path, "", f"cannot read the checkpoint ({type(e).__name__}: {str(e)[:200]}); it is "
                             "corrupt, truncated or not a ppoflow_pi0.py / train_imitation.py checkpoint") from None
    if not isinstance(ck, dict) or ck.get("kind") != "pi0_policy" or not isinstance(ck.get("model_config"), dict):
        raise ss.SchemaError(path, "kind", "not a pi0 policy checkpoint (expected kind 'pi0_policy' with a "
                             "model_config); evaluate checkpoints written by ppoflow_pi0.py or train_imitation.py")
    return {"model_config": ck["model_config"], "args": ck.get("args") or {}, "iteration": ck.get("iteration"),
            "size": p.stat().st_size, "sha256": ss.file_sha256(p)}  # a re-trained ckpt at the same path: another policy


def resolve_policies(args: Args) -> list[PolicySpec]:
    """All policies of this run, each checkpoint read and checked (preset, split) up front."""
    if args.labels and len(args.labels) != len(args.ckpt):
        raise ss.SchemaError("--labels", "", f"got {len(args.labels)} labels for {len(args.ckpt)} --ckpt; "
                             "give one label per checkpoint (or none)")
    specs = []
    for i, path in enumerate(args.ckpt):
        meta = read_checkpoint_meta(path)
        cfg, targs = meta["model_config"], meta["args"]
        preset = cfg.get("preset")
        if args.preset is not None and preset != args.preset:
            raise ss.SchemaError(path, "model_config.preset", f"checkpoint preset {preset!r} disagrees with --preset "
                                 f"{args.preset!r}; pass the matching --preset (or none: the checkpoint carries its config)")
        n = targs.get("num_train_scenes")
        label = args.labels[i] if args.labels else (f"N={n}" if n else Path(path).parent.name or path)
        n = n if n is not None else parse_n(label)
        split = targs.get("split_index") if targs.get("splits_file") else None  # trained on a split H_i?
        specs.append(PolicySpec(name=os.path.normpath(path), label=label, kind="checkpoint", ckpt=path, preset=preset,
                                num_train_scenes=n, split_index=int(args.split_index if split is None else split),
                                splits_file=targs.get("splits_file"), model_config=cfg, train_args=targs,
                                identity={"iteration": meta["iteration"], "size": meta["size"],
                                          "sha256": meta["sha256"]}))
    specs += [PolicySpec(name=k, label=k, kind=k, split_index=args.split_index) for k in args.policy]
    if not specs:
        raise ss.SchemaError("evaluate.py", "", "nothing to evaluate: pass --ckpt runs/<run>/ckpt_final.pt "
                             "and/or --policy scripted random")
    if len({s.name for s in specs}) != len(specs):
        raise ss.SchemaError("--ckpt", "", "the same checkpoint is given twice")
    return specs


def random_actions(num_envs: int, chunk: int, gen: np.random.Generator) -> np.ndarray:
    """Uniform ee deltas in RANDOM_ACTION_HIGH; one gripper command per chunk (a flickering gripper
    would be a strawman), open or close with equal probability."""
    high = np.asarray(RANDOM_ACTION_HIGH)
    a = np.empty((num_envs, chunk, 7), np.float32)  # [N, C, 7]
    a[..., :6] = gen.uniform(-high, high, size=(num_envs, chunk, 6))
    a[..., 6] = gen.choice([-1.0, 1.0], size=(num_envs, 1))
    return a


# ---------------------------------------------------------------------------------------------
# The episode loop: one path for every policy
# ---------------------------------------------------------------------------------------------


def run_scene(env, act: Callable, scene: str, episodes: int, seed: int, max_decisions: int, todo: set,
              on_episode: Callable, record: set) -> None:
    """All episodes of one scene on `env.num_envs` parallel copies of it. Round k resets env i with seed
    `seed + k * N + i` (scene_env seeds env i with seed + i), so episode j runs with seed `seed + j` on any
    number of envs. A round steps until each env's episode ended (the envs' auto-reset episodes after that
    are ignored) and reports every (scene, seed) still in `todo` through on_episode(record, frames)."""
    n = env.num_envs
    for k in range(math.ceil(episodes / n)):
        eps = [k * n + i for i in range(n)]
        keys = [(scene, seed + j) for j in eps]
        active = np.array([j < episodes and key in todo for j, key in zip(eps, keys)])
        if not active.any():
            continue
        obs, _ = env.reset(seed=seed + k * n)
        ended = ~active  # inactive envs are stepped along but never reported
        # the policy's view, for the grid videos: an object-state policy has none (its render video still records)
        frames = {i: [np.asarray(obs["rgb"][i])] for i in range(n) if active[i] and keys[i] in record and "rgb" in obs}
        for t in range(max_decisions):
            obs, _, term, trunc, info = env.step(act(obs))  # [N, C, 7]: one chunk of control steps
            done = np.asarray(term, bool) | np.asarray(trunc, bool)
            last = info["final_observation"] if done.any() else obs  # the pre-reset observation of envs that ended
            for i in frames:
                if not ended[i]:
                    frames[i].append(np.asarray((last if done[i] else obs)["rgb"][i]))
            for i in np.flatnonzero(done & ~ended):
                succ = bool(np.asarray(info["success"])[i])
                on_episode({"scene": scene, "seed": keys[i][1], "episode": eps[i], "success": succ,
                            "elapsed_s": float(np.asarray(info["elapsed_s"])[i]) if succ else None,
                            "partial_success": bool(np.asarray(info["partial_success"])[i]) or succ,
                            "decisions": t + 1}, frames.get(i))
            ended = ended | done
            if ended.all():
                break
        for i in np.flatnonzero(~ended):  # the env never signalled the end: count it as a failure
            on_episode({"scene": scene, "seed": keys[i][1], "episode": eps[i], "success": False, "elapsed_s": None,
                        "partial_success": False, "decisions": max_decisions}, frames.get(i))


def make_actor(spec: PolicySpec, env, policy, deterministic: bool, seed: int, dtype: str = "float32") -> Callable:
    """obs -> [N, C, 7] torch actions for any policy kind (checkpoints run their forward in `dtype`, --dtype)."""
    import torch

    if spec.kind == "scripted":
        return lambda obs: env.expert_actions()
    if spec.kind == "random":
        gen = np.random.default_rng(seed)
        return lambda obs: torch.from_numpy(random_actions(env.num_envs, env.chunk, gen))

    from ppoflow_pi0 import autocast

    dev = policy.pi0.action_out_proj.weight.device

    def act(obs):
        with torch.inference_mode(), autocast(dev, dtype):
            return policy.act(obs, deterministic=deterministic).float().cpu()
    return act


def env_config(args: Args, spec: PolicySpec):
    """The env the policy trained in: the run's env settings (image size, episode length, randomization, physics
    frequency; scene_env defaults for runs that do not record them) with the policy's chunk; --success-check,
    --no-domain-randomization, --max-decisions and --sim-freq override them."""
    cfg = scene_env.EnvConfig()
    known = {f.name for f in fields(cfg)}
    trained = spec.train_args.get("env") if isinstance(spec.train_args.get("env"), dict) else {}
    cfg = replace(cfg, **{k: v for k, v in trained.items() if k in known})
    over = {"sim_backend": args.sim_backend, "resample_every": 0,  # one scene per env, for the whole evaluation
            "success_check": args.success_check}
    if args.sim_freq:
        over["sim_freq"] = args.sim_freq
    if spec.model_config.get("chunk"):
        over["chunk"] = int(spec.model_config["chunk"])
    if spec.kind == "checkpoint":  # a policy sees what it was trained on (the object-state proxy: no camera)
        over["obs_mode"] = spec.model_config.get("obs_mode", "rgb")
    if args.max_decisions:
        over["max_decisions"] = args.max_decisions
    if over.get("obs_mode") == "state":
        if args.object_state_noise_m is not None:
            over["object_state_noise_m"] = tuple(args.object_state_noise_m)
            if not any(args.object_state_noise_m):
                over["object_state_noise_corr"] = 0.0  # exact features: no noise to correlate
        if args.object_state_noise_corr is not None:
            over["object_state_noise_corr"] = args.object_state_noise_corr
    if not args.domain_randomization:
        over.update({k: False for k in known if k.startswith("dr_")})
    return replace(cfg, **{k: v for k, v in over.items() if k in known})


def settings_key(spec: PolicySpec, cfg, args: Args) -> str:
    """Fingerprint of everything that changes an episode's outcome; a resumed run only reuses
    episodes with the same fingerprint. `with_object_state` only adds an observation entry: left out, so the
    fingerprints of earlier evaluations stay valid; so are a zero `object_state_noise_m` and `_corr` (newer fields)."""
    env = {k: v for k, v in asdict(cfg).items()
           if k != "with_object_state" and not (k == "object_state_noise_m" and not any(v))
           and not (k == "object_state_noise_corr" and not v)}
    return ss.content_hash({"env": env, "deterministic": args.deterministic, "kind": spec.kind,
                            "checkpoint": spec.identity})


# ---------------------------------------------------------------------------------------------
# Reports: plots, videos, latency, W&B
# ---------------------------------------------------------------------------------------------


def plot_sr_vs_n(rows: list[dict], path: Path, note: str = "") -> Path | None:
    """Fig. F.3: SR and TF against the number of training scenes N, mean ± std over runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r for r in rows if r["num_train_scenes"]), key=lambda r: r["num_train_scenes"])
    if not pts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    val = lambda v, scale: np.nan if v is None else v * scale  # noqa: E731
    for key in SET_TITLES:
        xs = [r for r in pts if key in r["sets"]]
        n = [r["num_train_scenes"] for r in xs]
        for ax, m, sd, scale in ((axes[0], "success_rate", "success_rate_std", 100),
                                 (axes[1], "time_to_finish_s", "time_to_finish_std_s", 1)):
            y, e = [val(r["sets"][key][m], scale) for r in xs], [val(r["sets"][key][sd], scale) for r in xs]
            if xs:
                ax.errorbar(n, y, yerr=np.nan_to_num(e), marker="o", capsize=3, label=SET_TITLES[key])
    ticks = sorted({r["num_train_scenes"] for r in pts})
    for ax, yl in zip(axes, ("success rate (%)", "time to finish (s)")):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("training scenes N")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-2, 102)
    axes[0].legend()
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_per_scene(policies: list[dict], out_dir: Path, per_fig: int = 25, note: str = "") -> list[Path]:
    """Figs. F.4-F.7: per-scene SR, one bar per policy label (mean over its runs), 25 scenes a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(p["label"] for p in policies))
    scenes = sorted({s for p in policies for s in p["per_scene"]}, key=lambda s: (s.startswith("simpler:"), s))
    sr = {(lab, s): np.mean([p["per_scene"][s]["success_rate"] for p in policies
                             if p["label"] == lab and s in p["per_scene"]] or [np.nan]) for lab in labels for s in scenes}
    paths = []
    for f in range(0, len(scenes), per_fig):
        chunk = scenes[f:f + per_fig]
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(chunk) * max(1, len(labels)) ** 0.5 + 2), 4))
        width = 0.8 / len(labels)
        for j, lab in enumerate(labels):
            ax.bar(np.arange(len(chunk)) + j * width - 0.4 + width / 2, [100 * sr[lab, s] for s in chunk], width, label=lab)
        ax.set_xticks(np.arange(len(chunk)), [s.removeprefix("simpler:")[:28] for s in chunk], rotation=60, ha="right",
                      fontsize=7)
        ax.set_ylabel("success rate (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"Per-scene success rate, scenes {f}-{f + len(chunk) - 1}" + (f"\n{note}" if note else ""),
                     fontsize=9 if note else None)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        paths.append(out_dir / f"per_scene_{f // per_fig}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def video_grid(clips: list[tuple[str, bool, np.ndarray]], path: Path, fps: float) -> Path:
    """Tile episodes [T, H, W, 3] into one video (4 per row) with a caption and a green/red border
    for success/failure; mp4 through imageio-ffmpeg when installed, else gif."""
    import imageio.v2 as imageio
    from PIL import Image, ImageDraw

    h, w = clips[0][2].shape[1:3]
    cols = min(4, len(clips))
    rows = math.ceil(len(clips) / cols)
    T = max(len(c[2]) for c in clips)
    frames = []
    for t in range(T):
        canvas = Image.new("RGB", (cols * (w + 4), rows * (h + 18)), (20, 20, 20))
        for i, (cap, ok, fr) in enumerate(clips):
            x, y = (i % cols) * (w + 4), (i // cols) * (h + 18)
            ImageDraw.Draw(canvas).rectangle([x, y + 16, x + w + 3, y + h + 17], fill=(40, 170, 60) if ok else (200, 50, 50))
            canvas.paste(Image.fromarray(fr[min(t, len(fr) - 1)]), (x + 2, y + 18))
            ImageDraw.Draw(canvas).text((x + 2, y + 2), cap[:40], fill=(235, 235, 235))
        frames.append(np.asarray(canvas))
    try:
        import imageio_ffmpeg  # noqa: F401  (mp4 needs its ffmpeg binary)

        path = path.with_suffix(".mp4")
        pad = [np.pad(f, ((0, -f.shape[0] % 16), (0, -f.shape[1] % 16), (0, 0))) for f in frames]
        imageio.mimwrite(path, pad, fps=fps, macro_block_size=16)
    except ImportError:
        path = path.with_suffix(".gif")
        imageio.mimwrite(path, frames, duration=1000 / fps, loop=0)
    return path


def measure_latency(policy, preset: str, ks: tuple[int, ...], batch: int, iters: int, compile_too: bool) -> list[dict]:
    """Table B.1: median wall time of one act() (deterministic) per K, eager and optionally compiled.
    K is the policy config's num_steps, set in place for the measurement and restored after."""
    import torch

    cfg = policy.config
    size = int(getattr(cfg, "image_size", 224) or 224)
    obs = {"rgb": torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8),
           "state": torch.zeros(batch, 7), "instruction": ["put the carrot on the plate"] * batch}
    k0, rows = cfg.num_steps, []

    def timed(fn):
        with torch.inference_mode():
            for _ in range(3):
                fn(obs, deterministic=True)
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn(obs, deterministic=True)
                ts.append(time.perf_counter() - t0)
        return float(np.median(ts))
    try:
        for k in ks:
            cfg.num_steps = k
            row = {"preset": preset, "K": k, "batch": batch, "eager_s": timed(policy.act)}
            if compile_too:
                torch._dynamo.reset()
                row["compile_s"] = timed(torch.compile(policy.act))
            rows.append(row)
    finally:
        cfg.num_steps = k0
    return rows


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def asset_files_hash(manifest_path: str) -> str:
    """Content hash of the asset files a manifest loads (each object's visual GLB and collision OBJs): a rebuilt
    asset (a template edit) is another scene even when the manifest is byte for byte the same."""
    files = {}
    for o in ss.load_manifest(manifest_path).objects:
        d = ss.resolve_asset_dir(manifest_path, o)
        for rel in [o.visual, *o.collision]:
            f = d / rel
            files[str(f)] = ss.file_sha256(f) if f.is_file() else "missing"
    return ss.content_hash(files)


def scene_hashes(paths: dict[str, str]) -> dict[str, str]:
    """Content hash of every scene's manifest and of the asset files it loads (SimplerEnv tasks: their id), part of
    each episode's resume key."""
    return {s: p if s.startswith("simpler:") else
            (ss.load_manifest(p).content_hash or ss.content_hash(ss.read_json(p))) + "+" + asset_files_hash(p)
            for s, p in paths.items()}


def default_out_dir(args: Args, specs: list[PolicySpec]) -> Path:
    if args.out_dir:
        return Path(args.out_dir)
    if len(args.ckpt) == 1:
        return Path(args.ckpt[0]).parent / "eval"
    return Path("runs/eval") / ss.slugify("_".join(s.label if s.kind != "checkpoint" else Path(s.ckpt).parent.name
                                                   for s in specs), 64)


def resolve_scenes(args: Args, specs: list[PolicySpec]):
    """Scene ids, manifest paths and the splits of every policy; all checked before any episode."""
    wanted = list(args.scene_ids or [])
    gen_wanted = [s for s in wanted if not s.startswith("simpler:")] or None
    sim_wanted = [s for s in wanted if s.startswith("simpler:")] or None
    unknown = [s for s in sim_wanted or [] if s not in SIMPLER_TASKS]
    if unknown:
        raise ss.SchemaError("--scene-ids", "", f"unknown SimplerEnv task(s) {', '.join(unknown)}; "
                             f"known: {', '.join(SIMPLER_TASKS)}")
    # with --scene-ids, only the kinds of scene it names run
    run_gen = "all" in args.sets_wanted and (gen_wanted is not None or sim_wanted is None)
    run_sim = "simpler" in args.sets_wanted and (sim_wanted is not None or gen_wanted is None)
    paths: dict[str, str] = {}
    if run_gen:
        for p in ss.find_manifests(args.scenes_dir, gen_wanted):  # raises on unknown ids
            ss.load_manifest(p)  # a corrupt manifest fails now, not mid-evaluation
            paths[p.parent.name] = str(p)
        if not paths:
            raise ss.SchemaError(args.scenes_dir, "", "no composed scenes (*/manifest.json); run compose_scene.py "
                                 "first, or use --suite simpler")
    simpler = list(sim_wanted or SIMPLER_TASKS) if run_sim else []
    paths.update({s: s for s in simpler})
    all_ids = [s for s in paths if not s.startswith("simpler:")]
    splits = {}
    for sp in specs:
        f = args.splits_file or sp.splits_file
        if not f or not all_ids:
            continue
        sp.splits_file = f
        if f not in splits:
            splits[f] = ss.load_splits(f)
        if sp.split_index not in [s.get("index") for s in splits[f].splits]:
            raise ss.SchemaError(f, "splits", f"split index {sp.split_index} (policy {sp.name}) is out of range: the "
                                 f"file has {len(splits[f].splits)} splits")
        missing = [s for s in splits[f].scenes if s not in paths and not gen_wanted]
        if missing:
            raise ss.SchemaError(f, "scenes", f"{len(missing)} scene(s) of the splits are not composed under "
                                 f"{args.scenes_dir}: {', '.join(missing[:5])}; regenerate the splits or fix --scenes-dir")
    split_of = lambda sp: next(s for s in splits[sp.splits_file].splits if s.get("index") == sp.split_index)  # noqa: E731
    sets = {sp.name: scene_sets(all_ids, simpler, split_of(sp) if sp.splits_file in splits else None,
                                sp.num_train_scenes) for sp in specs}
    return paths, {name: {k: v for k, v in s.items() if k in args.sets_wanted} for name, s in sets.items()}


def aggregate(sp: PolicySpec, scenes: list[str], sets: dict, log: list[dict], fp: str, args: Args) -> dict:
    """Per-scene and per-set summaries of one policy from the episode log (planned seeds only;
    a record written twice, e.g. by a crash between append and exit, counts once)."""
    seeds = range(args.seed, args.seed + args.episodes_per_scene)
    eps = {(r["scene"], r["seed"]): r for r in log if r["policy"] == sp.name and r["config"] == fp and r["seed"] in seeds}
    by_scene = defaultdict(list)
    for (s, _), r in sorted(eps.items()):
        by_scene[s].append(r)
    per_set = {}
    for key, ids in sets.items():
        got = [r for s in ids for r in by_scene[s]]
        if got:
            per_set[key] = {**summarize(got), "scenes": len(ids)}
    return {"name": sp.name, "label": sp.label, "kind": sp.kind, "ckpt": sp.ckpt, "preset": sp.preset,
            "num_train_scenes": sp.num_train_scenes, "split_index": sp.split_index, "splits_file": sp.splits_file,
            "scene_sets": sets, "sets": per_set, "per_scene": {s: summarize(by_scene[s]) for s in scenes if by_scene[s]}}


def load_checkpoints(args: Args, specs: list[PolicySpec], needed: set[str]) -> tuple[dict, list[dict]]:
    """Every checkpoint policy with episodes to run (or latency to time) loaded once; its latency rows."""
    import torch

    policies, latency = {}, []
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    for sp in specs:
        if sp.kind != "checkpoint" or not (sp.name in needed or args.latency):
            continue
        from ppoflow_pi0 import load_policy

        policies[sp.name] = load_policy(sp.ckpt, device=device).eval()
        if args.latency and sp.preset not in {r["preset"] for r in latency}:
            latency += measure_latency(policies[sp.name], sp.preset, args.latency_ks, args.latency_batch,
                                       args.latency_iters, args.latency_compile)
    return policies, latency


def render_episode(args: Args, pl: dict, path: str, key: tuple[str, int], policy, render_dir: Path) -> None:
    """Episode `key` = (scene, seed) of plan `pl` in its own 1-env env under ManiSkill's RecordEpisode (see
    --render-videos); reported through pl["on_episode"] like any other episode (with its policy-view frames)."""
    import torch

    scene, seed = key
    d = render_dir / slug(pl["spec"]) / f"{ss.slugify(scene)}__{seed}"
    rec = scene_env.Recording(str(d), video=True, source=f"policy {pl['spec'].label} (evaluate.py)")
    env = scene_env.make_vec_env([path], num_envs=1, cfg=pl["cfg"], seed=seed, workers=0, record=rec)
    try:
        torch.manual_seed(args.seed)
        episode = lambda rec_, frames: pl["on_episode"]({**rec_, "episode": seed - args.seed}, frames)  # noqa: E731
        run_scene(env, make_actor(pl["spec"], env, policy, args.deterministic, args.seed, args.dtype), scene, 1, seed,
                  pl["cfg"].max_decisions, {key}, episode, {key})
    finally:
        env.close()  # the recorder writes the trajectory and the video (0.mp4) here
    if (d / "0.mp4").exists():
        (d / "0.mp4").replace(d / "video.mp4")


def evaluate_scenes(args: Args, plans: list[dict], paths: dict, policies: dict, errors: list,
                    render_dir: Path | None = None) -> dict:
    """Scene-major episode loop: each scene's env is built once per distinct env config and every policy with
    pending episodes there runs on it in turn (same seeds: run_scene resets every round with explicit seeds).
    One broken scene or policy never stops the evaluation; it is reported. Returns {"envs_built": n}."""
    import torch

    order = list(dict.fromkeys(s for pl in plans for s in pl["scenes"]))
    rendered = {id(pl): {k for k in pl["todo"] if k in pl["record"]} if args.render_videos and render_dir else set()
                for pl in plans}  # the recorded episodes run in their own RecordEpisode env (render_episode)
    built, pools = 0, {}  # env config -> an open env whose worker pool switches to the next generated scene
    for scene in order:
        groups: dict[str, list[dict]] = defaultdict(list)  # env config -> plans with episodes pending here
        for pl in plans:
            if any(key[0] == scene for key in pl["todo"]):
                groups[ss.content_hash(asdict(pl["cfg"]))].append(pl)
        for key, group in groups.items():
            cfg, env = group[0]["cfg"], None
            n = max(1, min(args.num_envs, args.episodes_per_scene))
            try:
                env = pools.pop(key, None)
                if env is not None and hasattr(env, "can_load") and env.can_load(paths[scene]):
                    env.load_scenes([paths[scene]])  # same processes and renderer, the scene rebuilt in place
                else:
                    if env is not None:
                        env.close()
                    env = scene_env.make_vec_env([paths[scene]], num_envs=n, cfg=cfg, seed=args.seed,
                                                 workers=0 if n == 1 else None)  # 0: in this process, no pool
                    built += 1
                for pl in group:
                    sp = pl["spec"]
                    torch.manual_seed(args.seed)  # stochastic policies (--no-deterministic) repeat too
                    try:
                        for key in sorted(k for k in rendered[id(pl)] if k[0] == scene):
                            try:
                                render_episode(args, pl, paths[scene], key, policies.get(sp.name), render_dir)
                                built += 1
                            except Exception as e:  # no video then; the episode runs with the others below
                                rendered[id(pl)].discard(key)
                                errors.append({"policy": sp.name, "scene": scene,
                                               "error": f"render video: {type(e).__name__}: {e}"})
                                print(f"[evaluate] {sp.label}: no render video of {key}: {type(e).__name__}: {e}",
                                      flush=True)
                        run_scene(env, make_actor(sp, env, policies.get(sp.name), args.deterministic, args.seed, args.dtype),
                                  scene, args.episodes_per_scene, args.seed, cfg.max_decisions,
                                  pl["todo"] - rendered[id(pl)], pl["on_episode"], pl["record"])
                    except Exception as e:
                        errors.append({"policy": sp.name, "scene": scene, "error": f"{type(e).__name__}: {e}"})
                        print(f"[evaluate] {sp.label}: scene {scene} failed: {type(e).__name__}: {e}", flush=True)
            except Exception as e:  # the env itself could not be built: every policy of the group misses it
                for pl in group:
                    errors.append({"policy": pl["spec"].name, "scene": scene, "error": f"{type(e).__name__}: {e}"})
                print(f"[evaluate] scene {scene} failed: {type(e).__name__}: {e}", flush=True)
                if env is not None:
                    env.close()
                env = None
            if env is not None:
                if args.reuse_envs:
                    pools[key] = env
                else:
                    env.close()
    for env in pools.values():
        env.close()
    return {"envs_built": built}


def write_reports(out: Path, args: Args, specs: list[PolicySpec], sets: dict, policies: list[dict],
                  latency: list[dict]) -> dict:
    """table.md / table.csv, the SR-vs-N and per-scene figures, one video grid per policy and scene set."""
    rows = group_runs(policies)
    title = (f"# Evaluation: {args.episodes_per_scene} episodes per scene (seeds {args.seed}.."
             f"{args.seed + args.episodes_per_scene - 1}), deterministic={args.deterministic}, "
             f"domain randomization={args.domain_randomization}\n\n")
    note = scene_env.OBJECT_STATE_LABEL if any(sp.model_config.get("obs_mode") == "state" for sp in specs) else ""
    if note:
        title += f"**{note}** (rows of obs_mode 'state' policies)\n\n"
    ss.write_bytes_atomic(out / "table.md", (title + table_markdown(rows) + (
        "\n## Inference latency of policy.act() (Table B.1)\n\n" + latency_markdown(latency) if latency else "")
    ).encode("utf-8"))
    ss.write_bytes_atomic(out / "table.csv", table_csv(rows).encode("utf-8"))
    figures = [p for p in [plot_sr_vs_n(rows, out / "sr_vs_n.png", note)] + plot_per_scene(policies, out, note=note) if p]
    videos = defaultdict(dict)
    for sp in specs:
        for key, ids in (sets[sp.name].items() if args.video_scenes else ()):
            clips = []
            for s in ids[:args.video_scenes]:
                f = clip_path(out, sp, s, args.seed)
                if f.exists():
                    z = np.load(f)
                    ok = bool(z["success"])
                    clips.append((f"{s.removeprefix('simpler:')[:28]}: {'success' if ok else 'fail'}", ok, z["frames"]))
            if clips:
                fps = args.video_fps or 1.0 / (float(sp.model_config.get("chunk") or scene_env.EnvConfig.chunk) *
                                               scene_env.EnvConfig().control_dt)
                videos[sp.name][key] = str(video_grid(clips, out / "videos" / f"{slug(sp)}__{key}", fps))
    render = {slug(sp): sorted(str(p) for p in (out / "render" / slug(sp)).glob("*/video.mp4")) for sp in specs}
    return {"table": rows, "figures": [str(p) for p in figures], "videos": dict(videos),
            "render_videos": {k: v for k, v in render.items() if v}}


def slug(sp: PolicySpec) -> str:
    return ss.slugify(sp.name, 64)


def clip_path(out: Path, sp: PolicySpec, scene: str, seed: int) -> Path:
    return out / "videos" / "episodes" / slug(sp) / f"{ss.slugify(scene)}__{seed}.npz"


def main(args: Args) -> dict:
    if args.make_splits:
        out = Path(args.splits_file or Path(args.scenes_dir) / "splits.json")
        try:
            scenes = [p.parent.name for p in ss.find_manifests(args.scenes_dir, args.scene_ids)]
            doc = {**ss.to_dict(make_splits(scenes, args.num_splits, args.split_size, args.seed)), "args": asdict(args)}
        except (ss.SchemaError, ValueError) as e:
            raise SystemExit(f"evaluate.py --make-splits: error: {e}") from None
        ss.write_json_atomic(out, doc)
        ss.load_splits(out)  # never leave a file that training could not read
        print(f"wrote {args.num_splits} splits of {args.split_size}/{len(scenes)} scenes to {out}")
        return doc
    # ---- everything that can be wrong with the input fails here, before any episode ----
    try:
        specs = resolve_policies(args)
        paths, sets = resolve_scenes(args, specs)
    except ss.SchemaError as e:
        raise SystemExit(f"evaluate.py: error: {e}") from None
    out = default_out_dir(args, specs)
    ss.write_json_atomic(out / "args.json", {"schema_version": ss.SCHEMA_VERSION, "args": asdict(args)})
    log_path, t_start = out / "episodes.jsonl", time.time()
    ss.repair_jsonl_tail(log_path)  # a crash mid-append left a torn line: new records start clean
    from tqdm import tqdm

    wandb = None
    if args.track:
        import wandb

        ss.init_wandb(out, asdict(args), "eval", args.wandb_project, args.wandb_entity, args.wandb_group,
                      f"{args.exp_name}__{out.name}")

    # ---- plan: per policy the union of its scene sets, minus the episodes the log already holds ----
    # an episode is reused only for the same policy bytes, env settings and scene content (manifest hash)
    hashes = scene_hashes(paths)
    current = lambda rows: [r for r in rows if r.get("scene_hash") == hashes.get(r.get("scene"))]  # noqa: E731
    log, plans = current(ss.read_jsonl(log_path)), []
    for sp in specs:
        scenes = list(dict.fromkeys(s for v in sets[sp.name].values() for s in v))
        cfg = env_config(args, sp)
        fp = settings_key(sp, cfg, args)
        done = {(r["scene"], r["seed"]) for r in log if r["policy"] == sp.name and r["config"] == fp}
        todo = {(s, args.seed + j) for s in scenes for j in range(args.episodes_per_scene)} - done
        record = {(s, args.seed) for v in sets[sp.name].values() for s in v[:args.video_scenes]}
        plans.append({"spec": sp, "scenes": scenes, "fp": fp, "cfg": cfg, "todo": todo, "record": record})
    resumed = sum(len(p["scenes"]) * args.episodes_per_scene - len(p["todo"]) for p in plans)
    pbar = tqdm(total=sum(len(p["todo"]) for p in plans), unit="ep", desc="episodes", dynamic_ncols=True)
    if resumed:
        pbar.write(f"[evaluate] resuming: {resumed} episode(s) already in {log_path} are kept")
    for pl in plans:
        def on_episode(rec, frames, sp=pl["spec"], fp=pl["fp"]):
            ss.append_jsonl(log_path, {"policy": sp.name, "label": sp.label, "config": fp,
                                       "scene_hash": hashes[rec["scene"]], **rec, "time": time.time()})
            if frames is not None:  # kept on disk, so a resumed run still has its videos
                buf = io.BytesIO()
                np.savez_compressed(buf, frames=np.stack(frames), success=rec["success"])
                ss.write_bytes_atomic(clip_path(out, sp, rec["scene"], rec["seed"]), buf.getvalue())
            pbar.update(1)
            pbar.set_postfix_str(f"{sp.label}: {rec['scene'][:24]} {'ok' if rec['success'] else 'fail'}")
        pl["on_episode"] = on_episode
    errors = []
    loaded, latency = load_checkpoints(args, specs, {p["spec"].name for p in plans if p["todo"]})
    t_eps = time.time()
    stats = evaluate_scenes(args, plans, paths, loaded, errors, out / "render")
    pbar.close()
    print(f"[evaluate] {sum(len(p['todo']) for p in plans)} episode(s) on {stats['envs_built']} env(s) built "
          f"in {time.time() - t_eps:.0f} s")

    log = current(ss.read_jsonl(log_path))
    policies = [aggregate(p["spec"], p["scenes"], sets[p["spec"].name], log, p["fp"], args) for p in plans]
    results = {"schema_version": ss.SCHEMA_VERSION, "args": asdict(args), "policies": policies, "latency": latency,
               "errors": errors, **write_reports(out, args, specs, sets, policies, latency), "wall_s": time.time() - t_start,
               "envs_built": stats["envs_built"]}
    ss.write_json_atomic(out / "results.json", results)
    print((out / "table.md").read_text(encoding="utf-8"))
    print(f"results: {out / 'results.json'}" + (f"  ({len(errors)} batch error(s), see results.json)" if errors else ""))
    if wandb is not None:
        for p in policies:
            for key, s in p["sets"].items():
                wandb.summary[f"eval/{p['label']}/{key}/success_rate"] = s["success_rate"]
                wandb.summary[f"eval/{p['label']}/{key}/time_to_finish_s"] = s["time_to_finish_s"]
        tab = list(csv.reader(io.StringIO(table_csv(results["table"]))))
        wandb.log({"eval/table": wandb.Table(columns=tab[0], data=tab[1:]),
                   **{f"eval/{Path(f).stem}": wandb.Image(f) for f in results["figures"]},
                   **{f"eval/video/{Path(v).stem}": wandb.Video(v, format=Path(v).suffix[1:])
                      for c in results["videos"].values() for v in c.values()}})
        if latency:
            wandb.log({"perf/latency": wandb.Table(columns=list(latency[0]), data=[list(r.values()) for r in latency])})
        wandb.finish()
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
