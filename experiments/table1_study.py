"""The paper's Table 1 at this machine's scale: one command, resumable stage by stage, in two modes.

--obs-mode pixel (default; issue 13, section 3). W = a pool of composed scenes from user-style commands
(examples/tasks_study.txt, 8 task families, object-pose randomisation ON, 0-1 distractors) -> one seeded split H_0 of
max(--ns) scenes (evaluate.py --make-splits); OOD = W minus H_0. N = 0: ONE imitation start shared by every N, trained
on scripted demos of scenes NOT in W: other variants of the same commands (--il-seed: other layouts, rooms,
distractors and command variants; W's object instances where a description recurs, --il-objects shared; no scene id
or layout of W, checked), or another command list (--il-tasks-file examples/tasks_study_il.txt: other objects /
colours). PPOFlow from that start on the first N scenes of H_0 for N in --ns, --num-seeds seeds at N = --multi-seed-n
(one elsewhere), FINAL checkpoints (no early stopping). A compute-matched baseline spends the env decisions of one
PPOFlow run without RL: more imitation from the same start on scripted demos of the N = --multi-seed-n training scenes
(same decisions, same number of gradient steps). Evaluation: evaluate.py, deterministic, fresh episode seeds from
--eval-seed (5000), every policy on every scene of W. Report (<out-dir>/report.md, report.json, table.md, sr_vs_n.png,
learning_curves.png): SR on ID (the first N of H_0) and OOD with 95% intervals whose unit is the training seed where
there are several (Student t over seeds; Wilson over episodes for a single run), the difference to the N = 0 start,
TF, and the budget of every stage.

--obs-mode state (issue 28; OBJECT-STATE PROXY: no pretrained VLM, visual generalisation not tested). The policy sees
the instruction, the proprio and the simulator's target / destination poses and extents, no camera
(`--env.obs-mode state`). The design, also in benchmarks/RESULTS.md ("Table 1 on the object-state proxy"):
1. pools: W (--tasks-file, >= --min-pool scenes), IL (--il-tasks-file, default examples/tasks_study_il.txt: other
   targets) and OOD (--ood-tasks-file, examples/tasks_study_ood.txt: W's families, target instances in no training
   pool, checked; >= --min-ood scenes); no scene shared between pools (id or layout), checked;
2. splits: seed s trains on the first N scenes of split s of W (nested across N; ID = those N scenes);
3. the N = 0 start: scripted demos on IL -> imitation with a checkpoint every --il-save-every steps; the start is the
   earliest checkpoint whose deterministic SR on W (development seeds --il-select-seed..) is in --il-band (10-40%),
   else the nearest (common.choose_start);
4. PPOFlow: common.STATE_PROXY_RECIPE (+ --ppo-extra) from the start, N in --ns (1 4 16) x --num-seeds (3), the same
   env decisions per run whatever N (common.recipe_budget), final checkpoints;
5. the compute-matched baseline at N = max(--ns), one per seed on that seed's scenes: more imitation on the scripted
   expert's demos, the expert spending one PPOFlow run's env decisions, PPOFlow's most gradient steps, no RL;
6. evaluation (deterministic, seeds from --eval-seed, >= --eval-episodes-per-set per policy and set): the start on W
   and every run with the start on its own N scenes (ID), every policy on the OOD set;
7. report.md / report.json / table.md: the verdict on the issue's goals, Table 1 (SR on ID and OOD with 95% intervals
   whose unit is the training seed, differences to the start, the gap, TF), sr_vs_n.png, gap_vs_n.png,
   learning_curves_N<n>.png, per-run results and the wall time and env decisions of every stage.

Expected wall time per stage at the state defaults on the quiet 2-core machine, from measured rates (a 40-iteration
PPOFlow seed of 8 envs x 100 decisions: ~8.5 min; 800 evaluation episodes: ~6 min; 400 expert demos: ~4 min;
composing a scene: 20-40 s; an asset: ~6 s):
    W_* (32 commands: design, ~50 assets, compose)            15-25 min    IL_* (32 scenes)              15-25 min
    OOD_* (24 commands)                                       10-20 min    splits                          < 1 min
    il_start (2400 demos ~24 min, +15% for scene re-draws;                 il_select (8 x 128 episodes)     ~8 min
      12000 imitation steps ~17 min)                            ~45 min
    ppo_N{1,4}_s{0,1,2}                                    ~9 min each    ppo_N16_s{0,1,2} (re-draws)  ~10 min each
    more_il_N16_s{0,1,2} (32,000 expert decisions ~30-40 min, 1280 steps of 100 ~4 min)           ~35-45 min each
    eval_start_W (224 episodes)                                  ~2 min    eval_id_N{1,4}_s* (400)       ~3 min each
    eval_id_N16_s* (624 episodes)                           ~5 min each    eval_ood (13 x 216 episodes)    ~21 min
    in all ~6-6.5 h; a loaded machine (the test suite beside it) takes 1.5-2x as long.

    python experiments/table1_study.py --out-dir out/table1                # pixel (2 CPU cores; see --help)
    python experiments/table1_study.py --obs-mode state --out-dir out/table1_state    # the object-state proxy
    python experiments/table1_study.py --obs-mode state --out-dir /tmp/t1s --ns 1 2 --num-seeds 2 --min-pool 3 \
        --min-ood 2 --tasks-file <3 tasks> ... # tiny budget (tests/test_experiments.py)

Every stage is a subprocess of a stage CLI and is skipped when its output (done-marker) exists, so re-running the
same command after an interruption continues where it stopped (an interrupted PPOFlow run resumes from its last
checkpoint, an evaluation from its episode log); <out-dir>/steps.json holds each stage's command, wall time and load.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, STATE_PROXY_LABEL, STATE_PROXY_RECIPE, choose_start, env_flags, evaluate_cmd,  # noqa: E402
                    fmt_load, fmt_wall, interrupted, machine_info, make_scenes, plot_curves, pooled, read_curve,
                    recipe_budget, results_per_scene, resume_imitation, run_step, scene_cover_flags, stage, t_interval,
                    total_wall)
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
    obs_mode: Literal["pixel", "state"] = "pixel"
    """pixel: the 64 px policy (issue 13's design, below). state: the object-state proxy (issue 28's design: an OOD
    pool of unseen target objects, an early-stopped start, seeds at every N, the frozen STATE_PROXY_RECIPE)."""
    out_dir: str | None = None
    """Study folder: W/, IL/ (and OOD/) scene pools, assets/ (shared), runs/, eval/, report.md, report.json, table.md
    (default: out/table1, out/table1_state)."""
    tasks_file: str = str(ROOT / "examples/tasks_study.txt")
    """Task commands of the pool W (one per line, '#' comments)."""
    il_tasks_file: str | None = None
    """Task commands of the imitation start's scenes (default pixel: W's commands, whose IL variants get other layouts,
    object instances and distractors from --il-seed; state: examples/tasks_study_il.txt, other objects / colours)."""
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
    ns: list[int] | None = None
    """Numbers of training scenes N (default pixel: 1 4 12, drawn from H_0 of max(ns) scenes; state: 1 4 16, the
    first N of split s for seed s)."""
    multi_seed_n: int = 4
    """(pixel) The N trained with --num-seeds PPOFlow seeds (and the baseline's training scenes); state: every N."""
    num_seeds: int = 3
    """PPOFlow seeds at N = --multi-seed-n (pixel) or at every N and of the baseline (state): the CI's unit."""
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
    """(pixel) Rendered image side (default: the policy's input, 64 for tiny, 224 for small and pi0-3b)."""
    max_decisions: int = 25
    """Episode length in chunk decisions (paper: 25)."""
    env_workers: int | None = None
    """CPU env workers for demos and evaluation (default pixel: 4; state: 8, as state_proxy.py measured)."""
    env_extra: str = "--env.no-dr-camera --env.no-dr-lighting"
    """(pixel) Extra env flags for imitation and PPOFlow (evaluation uses each run's own), written with "=". Default:
    the conditions the recipe was developed under (RESULTS.md): object-pose and robot randomisation of Table A.2 on,
    camera and lighting randomisation off (a from-scratch 64 px tiny policy); "" for all of Table A.2."""
    compose_extra: str = ""
    """Extra compose_scene.py flags, written with "=" (e.g. --compose-extra="--solver-attempts 2")."""
    num_inference_steps: int = 1
    """(pixel) K of the flow chain (imitation checkpoint and PPOFlow; state: 1, the recipe's)."""
    il_episodes: int = 2400
    """Successful expert demos of the N = 0 start, spread over its scenes."""
    il_steps: int = 12000
    """Imitation gradient steps of the N = 0 start (state: at most; the start is chosen among its checkpoints)."""
    ppo_num_envs: int = 8
    """(pixel) PPOFlow parallel envs (one CPU worker each); state: the recipe's budget, see --ppo-extra."""
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
    ppo_extra: str | None = None
    """Extra ppoflow_pi0.py flags, written with "=". pixel (default RECIPE): the no-early-stopping recipe (see
    benchmarks/RESULTS.md). state (default "--num-iterations 40", see MODE_DEFAULTS): flags after common.STATE_PROXY_RECIPE (tyro takes the
    last value)."""
    baseline: bool = True
    """Train the compute-matched imitation baseline (state: one per seed at N = max(ns))."""
    eval_episodes: int = 10
    """(pixel) Deterministic evaluation episodes per scene and policy (state: --eval-episodes-per-set)."""
    eval_seed: int = 5000
    """First evaluation episode seed (never used while developing the recipe)."""
    # ---- the object-state proxy only (--obs-mode state) ----
    ood_tasks_file: str = str(ROOT / "examples/tasks_study_ood.txt")
    """(state) Task commands of the OOD set: W's task families, target objects that are in no training pool."""
    ood_seed: int = 2
    """(state) Designer / composer seed of the OOD set. Its object instances use asset seed --seed, so a destination
    that recurs ("the plate") is W's own; an OOD scene whose target instance is in W or IL is dropped."""
    ood_variants_per_task: int = 1
    """(state) Scene variants per OOD command."""
    min_ood: int = 16
    """(state) Fail unless at least this many OOD scenes pass the composer's QA with an unseen target."""
    il_save_every: int = 1500
    """(state) Imitation checkpoint interval: the candidates of the start's early stop."""
    il_band: tuple[float, float] = (0.1, 0.4)
    """(state) The start is the earliest imitation checkpoint whose deterministic SR on W (development seeds) is in
    this band, else the one nearest it (common.choose_start)."""
    il_select_episodes: int = 4
    """(state) Episodes per W scene and candidate when choosing the start."""
    il_select_seed: int = 100
    """(state) First development seed of the start's choice (disjoint from --eval-seed..)."""
    eval_episodes_per_set: int = 200
    """(state) Deterministic evaluation episodes per policy and scene set, at least: ceil(this / scenes) per scene."""
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


# The defaults of the fields left None, per --obs-mode.
MODE_DEFAULTS = {
    "pixel": {"out_dir": "out/table1", "ns": [1, 4, 12], "env_workers": 4, "ppo_extra": RECIPE},
    # state: the recipe at 40 iterations (32,000 env decisions per run, its session-9 budget) so that the baseline's
    # expert, spending as many decisions, stays under the 60-minute stage bound; --ppo-extra="" runs all 80
    "state": {"out_dir": "out/table1_state", "ns": [1, 4, 16], "env_workers": 8, "ppo_extra": "--num-iterations 40",
              "il_tasks_file": str(ROOT / "examples/tasks_study_il.txt")},
}


def with_mode_defaults(args: Args) -> Args:
    """`args` with every field left None set to its --obs-mode's default (MODE_DEFAULTS)."""
    return dataclasses.replace(args, **{k: v for k, v in MODE_DEFAULTS[args.obs_mode].items() if getattr(args, k) is None})


def main(args: Args) -> Path:
    args = with_mode_defaults(args)
    if args.obs_mode == "state":
        return main_state(args)
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
        *(["--demos", str(start.parent / "demos.pt")] if (start.parent / "demos.pt").exists() else []),
        *resume_imitation(start.parent)], start, logs, steps, args.dry_run)
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
                *(["--resume", str(last)] if (last := interrupted(run)) else [])],
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
            "--seed", str(args.seed + 7), "--device", args.device, *k, *envf, *resume_imitation(base)],
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
    md += [f"| {k} | {fmt_wall(v)} | {env_steps.get(k, '-')} | {fmt_load(v)} | `{v['cmd'][:140]}` |"
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


# ---------------------------------------------------------------------------------------------
# The object-state proxy (--obs-mode state, issue 28): pools, commands and the table, pure
# ---------------------------------------------------------------------------------------------

START, PPO, BASELINE = "N=0 start", "PPOFlow", "more imitation (compute-matched)"


def read_pool(scenes: Path) -> dict[str, dict]:
    """scene id -> manifest (JSON) of every composed scene of a pool."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(scenes.glob("*/manifest.json"))}


def target_of(manifest: dict) -> dict:
    """The manifest object that the success predicate (Eq. A.1) names as the target."""
    name = manifest["success"]["target"]
    return next(o for o in manifest["objects"] if o["name"] == name)


def unseen_targets(ood: dict[str, dict], training: list[dict[str, dict]]) -> tuple[list[str], dict[str, str]]:
    """The OOD scenes whose target object instance (asset id) appears in no training pool, in any role; and the
    dropped ones, each with its reason."""
    seen = {o["asset_id"]: sid for pool in training for sid, m in pool.items() for o in m["objects"]}
    kept, dropped = [], {}
    for sid, m in sorted(ood.items()):
        aid = target_of(m)["asset_id"]
        if aid in seen:
            dropped[sid] = f"target instance {aid} is in training scene {seen[aid]}"
        else:
            kept.append(sid)
    return kept, dropped


def episodes_per_scene(num_scenes: int, per_set: int) -> int:
    """Episodes per scene that give a set of `num_scenes` scenes at least `per_set` episodes."""
    return -(-per_set // num_scenes)


def ppo_cmd(args: Args, w: Path, splits: Path, start: Path, demos: Path, run: Path, n: int, s: int) -> list[str]:
    """PPOFlow seed s at N = n: the frozen recipe (+ --ppo-extra) from the shared start on the first n scenes of
    split s. Only the scene flags depend on n: every run spends the same env decisions (common.recipe_budget)."""
    extra = shlex.split(args.ppo_extra)
    b = recipe_budget(shlex.split(STATE_PROXY_RECIPE) + extra)
    return stage("ppoflow_pi0.py") + [
        "--scenes-dir", str(w), "--splits-file", str(splits), "--split-index", str(s), "--num-train-scenes", str(n),
        "--init", str(start), "--demos", str(demos),  # the BC anchor: the start's own demos (IL pool, not W)
        "--out", str(run), "--seed", str(1 + s), "--device", args.device, "--eval-every", "0",
        "--save-every", str(max(1, b["num_iterations"] // 4)), *shlex.split(STATE_PROXY_RECIPE),
        "--env.max-decisions", str(args.max_decisions), *scene_cover_flags(n, b["num_envs"]), *extra]


def baseline_cmd(args: Args, w: Path, scenes: list[str], start: Path, run: Path, s: int, budget: dict) -> list[str]:
    """The compute-matched baseline of seed s: more imitation from the start on the scripted expert's successful
    episodes in PPOFlow seed s's training scenes, spending exactly one PPOFlow run's env decisions (the expert's,
    failed episodes included) and its most gradient steps at its minibatch size, without RL."""
    per_env = budget["env_decisions"] // args.env_workers
    if per_env < args.max_decisions:
        raise SystemExit(f"table1_study.py: one PPOFlow run spends {budget['env_decisions']} env decisions, "
                         f"{per_env} per expert env: less than one episode ({args.max_decisions} decisions) each for "
                         f"the baseline (fix: a larger PPOFlow budget in --ppo-extra, or fewer --env-workers)")
    return stage("train_imitation.py") + [
        "--scenes-dir", str(w), "--scene-ids", *scenes, "--init", str(start), "--out", str(run), "--preset", args.preset,
        "--num-envs", str(args.env_workers), "--episodes", str(10 ** 9),  # never reached: the decision budget stops it
        "--max-collect-decisions", str(per_env), "--stats", "init", "--steps", str(budget["max_grad_steps"]),
        "--batch-size", str(budget["minibatch_size"]), "--save-every", str(budget["max_grad_steps"]),
        "--seed", str(1 + s), "--device", args.device, "--num-inference-steps", "1", "--env.obs-mode", "state",
        "--env.image-size", "64", "--env.max-decisions", str(args.max_decisions),
        *scene_cover_flags(len(scenes), args.env_workers), *resume_imitation(run)]


def seed_cell(xs: list[tuple[int, int]]) -> dict:
    """SR of a group of runs, one (successes, episodes) per training seed: the mean over seeds with a Student t
    interval (unit: the seed); a single run: its episode SR with a Wilson interval."""
    if not xs or any(n == 0 for _, n in xs):
        raise ValueError(f"seed_cell: a run without episodes in {xs}")
    srs = [k / n for k, n in xs]
    if len(xs) > 1:
        m, lo, hi = t_interval(srs)
        unit = f"training seed (n={len(xs)})"
    else:
        (m, (lo, hi)), unit = (srs[0], wilson_interval(*xs[0])), f"episode (n={xs[0][1]})"
    return {"sr": m, "ci": (lo, hi), "unit": unit, "per_seed": srs, "episodes": sum(n for _, n in xs)}


def diff_interval(xs: list[tuple[int, int]], ys: list[tuple[int, int]]) -> tuple[float, float, float]:
    """Mean per-seed difference SR(x_i) - SR(y_i) with a Student t interval over seeds; one seed: Newcombe."""
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"diff_interval: {len(xs)} vs {len(ys)} seeds")
    if len(xs) == 1:
        return newcombe_diff(*xs[0], *ys[0])
    return t_interval([a / b - c / d for (a, b), (c, d) in zip(xs, ys)])


def state_rows(start: dict, runs: list[dict]) -> list[dict]:
    """Table 1's rows. `start`: the N = 0 start's (successes, episodes) on W ("id") and on the OOD set ("ood"), its
    TF. `runs`: one dict per trained policy: method, n, seed, "id" on its own N scenes, "id_start" (the start on the
    same scenes and episode seeds), "ood", "tf". Per row: SR with its interval, the paired difference to the start,
    the ID - OOD gap (both per seed, then over seeds) and TF."""
    rows = [{"policy": START, "n": 0, "runs": 1, "seeds": [], "id": seed_cell([start["id"]]),
             "ood": seed_cell([start["ood"]]), "gap": diff_interval([start["id"]], [start["ood"]]), "tf": start["tf"]}]
    for method in (PPO, BASELINE):
        for n in sorted({r["n"] for r in runs if r["method"] == method}):
            g = sorted((r for r in runs if r["method"] == method and r["n"] == n), key=lambda r: r["seed"])
            ids, oods = [r["id"] for r in g], [r["ood"] for r in g]
            tfs = [r["tf"] for r in g if r["tf"] == r["tf"]]
            rows.append({"policy": method, "n": n, "runs": len(g), "seeds": [r["seed"] for r in g],
                         "id": {**seed_cell(ids), "diff": diff_interval(ids, [r["id_start"] for r in g])},
                         "ood": {**seed_cell(oods), "diff": diff_interval(oods, [start["ood"]] * len(g))},
                         "gap": diff_interval(ids, oods), "tf": sum(tfs) / len(tfs) if tfs else float("nan")})
    return rows


def pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def ci_str(m: float, lo: float, hi: float, sign: str = "") -> str:
    f = (lambda v: "-" if v != v else f"{100 * v:{sign}.1f}")  # noqa: E731 - NaN: one run, no interval over seeds
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def state_table_md(rows: list[dict]) -> str:
    """Table 1 in markdown: SR on ID and OOD (%, 95% interval), the paired differences to the start and the gap
    (points), TF and the interval's unit."""
    out = [f"*{STATE_PROXY_LABEL}*\n",
           "| policy | N | runs | ID SR % [95%] | ID - start (pts) | OOD SR % [95%] | OOD - start (pts) "
           "| gap ID - OOD (pts) | TF s (ID) | CI unit |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        i, o = r["id"], r["ood"]
        tf = "-" if r["tf"] != r["tf"] else f"{r['tf']:.2f}"
        out.append(f"| {r['policy']} | {r['n']} | {r['runs']} | {ci_str(i['sr'], *i['ci'])} | "
                   f"{ci_str(*i['diff'], '+') if 'diff' in i else '-'} | {ci_str(o['sr'], *o['ci'])} | "
                   f"{ci_str(*o['diff'], '+') if 'diff' in o else '-'} | {ci_str(*r['gap'], '+')} | {tf} | {i['unit']} |")
    return "\n".join(out) + "\n"


def state_verdict(rows: list[dict], runs: list[dict]) -> list[str]:
    """The issue's two goals and the credit to RL, said plainly from the table: OOD SR at the largest N above the
    start (seed-level interval excluding 0), the gap at the largest N below the gap at the smallest (per-seed change),
    and PPOFlow vs the compute-matched baseline (same seeds, same scenes)."""
    ppo = {r["n"]: r for r in rows if r["policy"] == PPO}
    if not ppo:
        return ["No PPOFlow run to judge."]
    hi_n, lo_n = max(ppo), min(ppo)
    d, lo, hi = ppo[hi_n]["ood"]["diff"]
    met = lo > 0
    lines = [f"- **Goal 1, OOD SR at N = {hi_n} above the N = 0 start:** {ci_str(d, lo, hi, '+')} points "
             f"({ppo[hi_n]['ood']['unit']}): " + ("the interval excludes 0, **met**." if met else
                                                   "the interval does not exclude 0, **not met**." if lo == lo else
                                                   "no interval over seeds (one seed), **not judged**.")]
    gap = {(r["method"], r["n"], r["seed"]): r["id"][0] / r["id"][1] - r["ood"][0] / r["ood"][1] for r in runs}
    if hi_n != lo_n:
        seeds = sorted(s for (m, n, s) in gap if m == PPO and n == hi_n and (PPO, lo_n, s) in gap)
        ch = [gap[PPO, hi_n, s] - gap[PPO, lo_n, s] for s in seeds]
        c, clo, chi = t_interval(ch) if ch else (float("nan"),) * 3
        g_hi, g_lo = ppo[hi_n]["gap"][0], ppo[lo_n]["gap"][0]
        lines.append(f"- **Goal 2, a smaller ID - OOD gap at N = {hi_n} than at N = {lo_n}:** {pct(g_lo)} -> "
                     f"{pct(g_hi)} points; per-seed change {ci_str(c, clo, chi, '+')} (seed, n={len(ch)}): "
                     + ("smaller, and the interval excludes 0: **met**." if chi < 0 else
                        "smaller in the mean, the interval includes 0: **not shown**." if g_hi < g_lo else
                        "not smaller: **not met**."))
    base = {r["seed"]: r for r in runs if r["method"] == BASELINE}
    mine = {r["seed"]: r for r in runs if r["method"] == PPO and r["n"] == hi_n}
    both = sorted(base.keys() & mine.keys())
    if both:
        for key, name in (("ood", "OOD"), ("id", "ID")):
            d, lo, hi = diff_interval([mine[s][key] for s in both], [base[s][key] for s in both])
            lines.append(f"- **RL vs the compute-matched baseline at N = {hi_n}, {name}:** PPOFlow - more imitation "
                         f"{ci_str(d, lo, hi, '+')} points (same seeds and scenes, n={len(both)}): "
                         + ("PPOFlow better, the interval excludes 0." if lo > 0 else
                            "the baseline better, the interval excludes 0." if hi < 0 else "not distinguishable."))
    return lines


# ---------------------------------------------------------------------------------------------
# The study on the object-state proxy
# ---------------------------------------------------------------------------------------------


def check_pools(out: Path, args: Args, w: Path, il: Path, ood: Path) -> tuple[list[str], list[str], list[str]]:
    """W, IL and OOD ids after QA, checked: enough scenes, no scene shared between pools (id or layout), OOD
    targets that no training pool holds (others dropped, with the reason). Writes <out>/pools.json."""
    pw, pi, po = read_pool(w), read_pool(il), read_pool(ood)
    need = max(args.min_pool, max(args.ns))
    if len(pw) < need:
        raise SystemExit(f"table1_study.py: only {len(pw)} W scenes passed QA ({w / 'compose_summary.json'}); need "
                         f"{need} (fix: more commands in --tasks-file or --variants-per-task)")
    if not pi:
        raise SystemExit(f"table1_study.py: no imitation scene passed QA ({il / 'compose_summary.json'})")
    for (a, pa), (b, pb) in (((w, "W"), (il, "IL")), ((w, "W"), (ood, "OOD")), ((il, "IL"), (ood, "OOD"))):
        if same := disjoint_pools(a, b):
            raise SystemExit(f"table1_study.py: {pb} scenes {same} are also in {pa} (same id or layout; fix: another "
                             "--il-seed / --ood-seed)")
    kept, dropped = unseen_targets(po, [pw, pi])
    if len(kept) < args.min_ood:
        raise SystemExit(f"table1_study.py: {len(kept)} OOD scenes with an unseen target ({len(po)} passed QA, "
                         f"dropped: {dropped}); need {args.min_ood} (fix: more commands in --ood-tasks-file or "
                         "--ood-variants-per-task)")
    train_templates = {_template(w, sid, target_of(m)) for sid, m in pw.items()} | {
        _template(il, sid, target_of(m)) for sid, m in pi.items()}
    targets = {}
    for sid in kept:
        o = target_of(po[sid])
        t = _template(ood, sid, o)
        targets[sid] = {"asset_id": o["asset_id"], "template": t, "new_template": t not in train_templates,
                        "bbox_m": o["bbox_m"], "mass_kg": o["mass_kg"]}
    (out / "pools.json").write_text(json.dumps({"W": sorted(pw), "IL": sorted(pi), "OOD": kept, "OOD_dropped": dropped,
                                                "ood_targets": targets,
                                                "training_target_templates": sorted(map(str, train_templates))},
                                               indent=2))
    return sorted(pw), sorted(pi), kept


def _template(scenes: Path, sid: str, obj: dict) -> str | None:
    """The asset template an object was generated from (its asset.json), None when unknown."""
    p = scenes / sid / obj["asset_dir"] / "asset.json"
    return json.loads(p.read_text()).get("args", {}).get("template") if p.exists() else None


def main_state(args: Args) -> Path:
    """Issue 28's design on the object-state proxy; every step a resumable stage CLI (common.run_step)."""
    if args.il_init:
        raise SystemExit("table1_study.py: --il-init is the pixel mode's (a pretrained VLM); the object-state proxy "
                         "starts from scratch (fix: drop --il-init, or --obs-mode pixel)")
    if len({args.seed, args.il_seed, args.ood_seed}) < 3:
        raise SystemExit(f"table1_study.py: --seed {args.seed}, --il-seed {args.il_seed} and --ood-seed {args.ood_seed} "
                         "must differ: each pool's scenes come from its own seed")
    if min(args.ns) < 1 or args.num_seeds < 1:
        raise SystemExit(f"table1_study.py: --ns {args.ns} and --num-seeds {args.num_seeds} must be >= 1 (N = 0 is the "
                         "shared start, always evaluated)")
    if not 0 <= args.il_band[0] <= args.il_band[1] <= 1:
        raise SystemExit(f"table1_study.py: --il-band {args.il_band} must be 0 <= lo <= hi <= 1")
    ns, seeds = sorted(set(args.ns)), list(range(args.num_seeds))
    budget = recipe_budget(shlex.split(STATE_PROXY_RECIPE) + shlex.split(args.ppo_extra))
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps({"schema_version": 1, "args": asdict(args), "recipe": STATE_PROXY_RECIPE,
                                               "budget": budget, "label": STATE_PROXY_LABEL}, indent=2))
    logs, steps, t0, wk, md = out / "logs", out / "steps.json", time.time(), args.env_workers, args.max_decisions
    cx = shlex.split(args.compose_extra)

    # 1. the pools: W (training scenes), IL (the start's scenes), OOD (unseen targets), one shared asset folder
    il_tasks = read_tasks(args.il_tasks_file)
    pool = lambda name, tasks, variants, seed, asset_seed: make_scenes(  # noqa: E731
        out / name, tasks, variants, args.num_distractors, seed, wk, logs, steps, args.dry_run, f"{name}_", cx,
        out / "assets", asset_seed=asset_seed)
    w = pool("W", read_tasks(args.tasks_file), args.variants_per_task, args.seed, args.seed)
    il = pool("IL", il_tasks, args.il_variants_per_task, args.il_seed,
              args.seed if args.il_objects == "shared" else args.il_seed)
    ood = pool("OOD", read_tasks(args.ood_tasks_file), args.ood_variants_per_task, args.ood_seed, args.seed)
    if args.dry_run:
        w_ids = [f"<W{i}>" for i in range(max(args.min_pool, max(ns)))]
        il_ids, ood_ids = [f"<IL{i}>" for i in range(len(il_tasks) * args.il_variants_per_task)], ["<OOD0>"]
    else:
        w_ids, il_ids, ood_ids = check_pools(out, args, w, il, ood)
    if args.stop_after == "pools":
        return out

    # 2. the splits: seed s trains on the first N scenes of split s (nested across N)
    splits = w / "splits.json"
    run_step("splits", stage("evaluate.py") + ["--make-splits", "--scenes-dir", str(w), "--splits-file", str(splits),
                                               "--num-splits", str(args.num_seeds), "--split-size", str(max(ns)),
                                               "--seed", str(args.seed)], splits, logs, steps, args.dry_run)
    h = ([sp["id"] for sp in json.loads(splits.read_text())["splits"]] if splits.exists() else
         [[f"<split{s}[{i}]>" for i in range(max(ns))] for s in seeds])

    # 3. the N = 0 start: scripted demos on IL, imitation with a checkpoint every --il-save-every, early stop on W
    il_dir = out / "runs/il_start"
    demos = il_dir / "demos.pt"
    run_step("il_start", stage("train_imitation.py") + [
        "--scenes-dir", str(il), "--out", str(il_dir), "--preset", args.preset, "--env.obs-mode", "state",
        "--env.image-size", "64", "--env.max-decisions", str(md), "--num-envs", str(wk),
        "--episodes", str(args.il_episodes), "--steps", str(args.il_steps), "--save-every", str(args.il_save_every),
        "--seed", str(args.seed), "--device", args.device, "--num-inference-steps", "1",
        *scene_cover_flags(len(il_ids), wk), *(["--demos", str(demos)] if demos.exists() else []),
        *resume_imitation(il_dir)],
        il_dir / "ckpt_final.pt", logs, steps, args.dry_run)
    cand = {k: il_dir / f"ckpt_{k}.pt" for k in sorted({*range(args.il_save_every, args.il_steps + 1,
                                                                args.il_save_every), args.il_steps})}
    sel = out / "eval/il_select"
    run_step("il_select", evaluate_cmd(list(cand.values()), [f"step {k}" for k in cand], w, w_ids,
                                       args.il_select_episodes, args.il_select_seed, sel, wk, md),
             sel / "results.json", logs, steps, args.dry_run)
    if args.dry_run:
        start = cand[max(cand)]
    else:
        dev = {int(lab.split()[1]): pooled(ps, w_ids) for lab, ps in results_per_scene(sel / "results.json").items()}
        step = choose_start([(k, a / b) for k, (a, b) in dev.items()], args.il_band)
        start = cand[step]
        (out / "start.json").write_text(json.dumps({"start": str(start), "step": step, "band": list(args.il_band),
                                                    "dev_sr": {k: list(v) for k, v in sorted(dev.items())}}, indent=2))
        print(f"[start] {start.name}: development SR on W " + ", ".join(f"{k}: {a}/{b}" for k, (a, b) in sorted(dev.items())))
    if args.stop_after == "il_start":
        return out

    # 4. PPOFlow at every N, every seed; 5. the compute-matched baseline at the largest N, every seed
    runs = out / "runs"
    trained = []  # (method, n, seed, label, final checkpoint)
    for n in ns:
        for s in seeds:
            run = runs / f"ppo_N{n}_s{s}"
            resume = interrupted(run)
            run_step(run.name, ppo_cmd(args, w, splits, start, demos, run, n, s) + (["--resume", str(resume)] if resume else []),
                     run / "ckpt_final.pt", logs, steps, args.dry_run)
            trained.append((PPO, n, s, f"PPOFlow N={n} s{s}", run / "ckpt_final.pt"))
    if args.stop_after == "ppo":
        return out
    nb = max(ns)
    if args.baseline:
        for s in seeds:
            run = runs / f"more_il_N{nb}_s{s}"
            run_step(run.name, baseline_cmd(args, w, h[s][:nb], start, run, s, budget), run / "ckpt_final.pt", logs,
                     steps, args.dry_run)
            trained.append((BASELINE, nb, s, f"more IL N={nb} s{s}", run / "ckpt_final.pt"))

    # 6. evaluation: deterministic, fresh seeds from --eval-seed, >= --eval-episodes-per-set per policy and set
    ev, per = out / "eval", args.eval_episodes_per_set
    run_step("eval_start_W", evaluate_cmd([start], [START], w, w_ids, episodes_per_scene(len(w_ids), per),
                                          args.eval_seed, ev / "start_W", wk, md), ev / "start_W/results.json", logs,
             steps, args.dry_run)
    for n in ns:
        for s in seeds:
            mine = [t for t in trained if t[1] == n and t[2] == s]
            d = ev / f"id_N{n}_s{s}"
            run_step(f"eval_{d.name}", evaluate_cmd([start] + [t[4] for t in mine], [START] + [t[3] for t in mine], w, h[s][:n],
                                          episodes_per_scene(n, per), args.eval_seed, d, wk, md),
                     d / "results.json", logs, steps, args.dry_run)
    run_step("eval_ood", evaluate_cmd([start] + [t[4] for t in trained], [START] + [t[3] for t in trained], ood,
                                      ood_ids, episodes_per_scene(len(ood_ids), per), args.eval_seed, ev / "ood", wk,
                                      md), ev / "ood/results.json", logs, steps, args.dry_run)
    if args.dry_run:
        return out
    return write_state_report(out, args, start, w_ids, ood_ids, h, trained, budget, time.time() - t0)


def _counts_tf(per_scene: dict, scenes: list[str]) -> tuple[tuple[int, int], float]:
    """(successes, episodes) over `scenes` and the mean time to finish of their successful episodes."""
    k, n = pooled(per_scene, scenes)
    tf = [(r["time_to_finish_s"], r["successes"]) for s in scenes if (r := per_scene.get(s)) and r["time_to_finish_s"]]
    return (k, n), (sum(t * c for t, c in tf) / sum(c for _, c in tf) if tf else float("nan"))


def _env_decisions(out: Path, name: str) -> str:
    """Env decisions (chunk decisions) a stage spent, from its own records; '-' where it keeps none."""
    if (m := out / "runs" / name / "metrics.jsonl").exists() and name.startswith("ppo_"):
        steps = [json.loads(x).get("global_step", 0) for x in m.read_text().splitlines() if x.strip()]
        return str(max(steps, default=0))
    if name.startswith("eval_") or name == "il_select":
        eps = out / "eval" / name.removeprefix("eval_") / "episodes.jsonl"
        if eps.exists():
            recs = [json.loads(x) for x in eps.read_text().splitlines() if x.strip()]
            return f"{sum(r.get('decisions', 0) for r in recs)} ({len(recs)} episodes)"
    log = out / "logs" / f"{name}.log"
    if log.exists() and (m := re.search(r"\[imitation\] (\d+) transitions from (\d+) expert episodes", log.read_text())):
        return f"kept {m.group(1)} expert decisions ({m.group(2)} successful episodes)"
    return "-"


def write_state_report(out: Path, args: Args, start: Path, w_ids: list[str], ood_ids: list[str], h: list[list[str]],
                       trained: list[tuple], budget: dict, wall: float) -> Path:
    ev = out / "eval"
    res_w, res_ood = results_per_scene(ev / "start_W/results.json"), results_per_scene(ev / "ood/results.json")
    (sw, tfw), (so, _) = _counts_tf(res_w[START], w_ids), _counts_tf(res_ood[START], ood_ids)
    runs = []
    for method, n, s, label, _ in trained:
        res_id = results_per_scene(ev / f"id_N{n}_s{s}/results.json")
        (k_id, tf), (k_start, _) = _counts_tf(res_id[label], h[s][:n]), _counts_tf(res_id[START], h[s][:n])
        runs.append({"method": method, "n": n, "seed": s, "label": label, "scenes": h[s][:n], "id": k_id,
                     "id_start": k_start, "ood": pooled(res_ood[label], ood_ids), "tf": tf})
    rows = state_rows({"id": sw, "ood": so, "tf": tfw}, runs)
    verdict = state_verdict(rows, runs)
    table = state_table_md(rows)
    (out / "table.md").write_text(table)
    _plot_state_vs_n(rows, out / "sr_vs_n.png", out / "gap_vs_n.png")
    curves = []
    for n in sorted({r["n"] for r in runs if r["method"] == PPO}):
        cs = {f"seed {r['seed']}": read_curve(out / f"runs/ppo_N{n}_s{r['seed']}/metrics.jsonl") for r in runs
              if r["method"] == PPO and r["n"] == n}
        curves.append(plot_curves(cs, out / f"learning_curves_N{n}.png", f"PPOFlow at N = {n}: rollout SR on its "
                                  f"training scenes\n({STATE_PROXY_LABEL})", {f"N=0 start on W: {sw[0] / sw[1]:.2f}":
                                                                             sw[0] / sw[1]}).name)
    pools, st = json.loads((out / "pools.json").read_text()), json.loads((out / "steps.json").read_text())
    start_info = json.loads((out / "start.json").read_text())
    k0, n0 = start_info["dev_sr"][str(start_info["step"])]
    in_band = args.il_band[0] <= k0 / n0 <= args.il_band[1]
    new_t = sum(t["new_template"] for t in pools["ood_targets"].values())
    md = [f"# Table 1 on the object-state proxy ({STATE_PROXY_LABEL})\n", "## Verdict\n", *verdict, "",
          "## Design\n",
          f"- **W**: {len(w_ids)} composed scenes from `{Path(args.tasks_file).name}` (object poses drawn over Table A.2's "
          f"region at every reset, {args.num_distractors} distractors). Seed s trains on the first N scenes of split s "
          f"(`evaluate.py --make-splits`, {args.num_seeds} splits of {max(args.ns)}): ID = those N scenes.",
          f"- **OOD**: {len(ood_ids)} scenes from `{Path(args.ood_tasks_file).name}` whose target instance is in no "
          f"training pool ({len(pools['OOD_dropped'])} dropped for a seen target); {new_t}/{len(ood_ids)} targets from "
          "a template no training target has.",
          f"- **N = 0**: one imitation start shared by every N, trained on {len(pools['IL'])} scenes of "
          f"`{Path(args.il_tasks_file).name}` (none in W or OOD); `{start.name}`, the earliest checkpoint in the band "
          f"{list(args.il_band)} on W (development seeds {args.il_select_seed}.., {args.il_select_episodes} per scene): "
          f"development SR " + ", ".join(f"{k}: {a}/{b}" for k, (a, b) in start_info["dev_sr"].items())
          + ("" if in_band else " (**no checkpoint in the band: the nearest**)") + ". Its ID row is all of W.",
          f"- **PPOFlow**: `common.STATE_PROXY_RECIPE` + `{args.ppo_extra}`, {budget['env_decisions']} env decisions per "
          f"run whatever N, final checkpoints. **Baseline**: more imitation from the start on the scripted expert's "
          f"successful episodes in the same {max(args.ns)} scenes, the same {budget['env_decisions']} env decisions "
          f"and {budget['max_grad_steps']} gradient steps of {budget['minibatch_size']}, no RL.",
          f"- **Evaluation**: deterministic, seeds {args.eval_seed}.., >= {args.eval_episodes_per_set} episodes per "
          "policy and set, success checked per chunk as in training.\n",
          f"## Table 1 ({STATE_PROXY_LABEL})\n", table,
          "SR in %; intervals: Student t over training seeds where a row has several runs, else Wilson (differences: "
          "Newcombe) over episodes. ID - start: the start on the same scenes and episode seeds, per seed. The N = 0 "
          "row's ID is all of W.\n",
          f"## SR and gap vs N ({STATE_PROXY_LABEL})\n", "![SR vs N](sr_vs_n.png) ![gap vs N](gap_vs_n.png)\n",
          f"## Learning curves ({STATE_PROXY_LABEL})\n", *[f"![{c}]({c})" for c in curves], "",
          "## Per run\n", "| policy | seed | ID scenes | ID SR | start on them | OOD SR | TF s |", "|---|---:|---|---:|---:|---:|---:|"]
    md += [f"| {r['label']} | {r['seed']} | {', '.join(r['scenes'][:4])}{' ...' if len(r['scenes']) > 4 else ''} | "
           f"{r['id'][0]}/{r['id'][1]} | {r['id_start'][0]}/{r['id_start'][1]} | {r['ood'][0]}/{r['ood'][1]} | "
           f"{'-' if r['tf'] != r['tf'] else round(r['tf'], 2)} |" for r in runs]
    md += ["", "## Pools: the OOD targets\n", "| OOD scene | target asset | template | new template | extents m "
           "| mass kg |", "|---|---|---|---|---|---:|"]
    md += [f"| {sid} | {t['asset_id']} | {t['template']} | {'yes' if t['new_template'] else 'no'} | "
           f"{' x '.join(f'{v:.3f}' for v in t['bbox_m'])} | {t['mass_kg']:.3f} |" for sid, t in pools["ood_targets"].items()]
    md += [f"\nDropped (target seen in training): {pools['OOD_dropped'] or 'none'}. Training target templates: "
           f"{', '.join(pools['training_target_templates'])}."]
    md += ["", "## Budget\n", "| stage | wall s | env decisions | load at start |", "|---|---:|---|---:|"]
    md += [f"| {k} | {fmt_wall(v)} | {_env_decisions(out, k)} | {fmt_load(v)} |" for k, v in st.items()]
    md.append(f"\nAll stages: {total_wall(st)}; this invocation {wall:.0f} s. "
              f"Commands: `steps.json`. Machine: `{json.dumps(machine_info())}`\n")
    (out / "report.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps({"label": STATE_PROXY_LABEL, "rows": rows, "runs": runs,
                                                 "verdict": verdict, "start": str(start), "start_choice": start_info,
                                                 "w": w_ids, "ood": ood_ids, "budget": budget,
                                                 "wall_s": {k: v["wall_s"] for k, v in st.items()},
                                                 "args": asdict(args)}, indent=2, default=str))
    print("\n".join(md))
    return out


def _plot_state_vs_n(rows: list[dict], sr_path: Path, gap_path: Path) -> None:
    """SR (ID, OOD) and the ID - OOD gap vs N with 95% intervals; N = 0 is the start, the baseline a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = [r for r in rows if r["policy"] in (START, PPO)]
    xs = list(range(len(line)))  # N = 0, 1, 4, 16 evenly spaced
    pos = {r["n"]: x for x, r in zip(xs, line)}
    err = lambda m, lo, hi: [[m - lo if lo == lo else 0], [hi - m if hi == hi else 0]]  # noqa: E731
    for path, keys, ylabel in ((sr_path, ("id", "ood"), "success rate"), (gap_path, ("gap",), "ID - OOD (SR points / 100)")):
        fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
        for j, key in enumerate(keys):
            val = lambda r: (r[key]["sr"], *r[key]["ci"]) if key != "gap" else r["gap"]  # noqa: E731
            for r in rows:
                if r["policy"] == BASELINE and r["n"] in pos:
                    ax.errorbar(pos[r["n"]] + 0.08, val(r)[0], yerr=err(*val(r)), fmt="D", color=f"C{j}", mfc="none",
                                capsize=3, label=f"{key.upper()}: compute-matched baseline")
            ys = [val(r) for r in line]
            ax.errorbar(xs, [y[0] for y in ys], yerr=[sum((err(*y)[0] for y in ys), []), sum((err(*y)[1] for y in ys), [])],
                        fmt="o-" if j == 0 else "s--", color=f"C{j}", capsize=3, label=f"{key.upper()}: start, PPOFlow")
        ax.set_xticks(xs, [str(r["n"]) for r in line])
        ax.set_xlabel("training scenes N (0: the shared imitation start)")
        ax.set_ylabel(ylabel)
        if key != "gap":
            ax.set_ylim(-0.02, 1.02)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"Table 1 vs N ({STATE_PROXY_LABEL})", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(Args))
