"""Imitation starting point for PPOFlow: scripted-expert demos across scenes -> flow-matching SFT (Eq. 1) of pi0.

    python train_imitation.py --scenes-dir scenes --preset tiny --out runs/il
    python train_imitation.py --scene-ids simpler:PutCarrotOnPlateInScene-v1 --num-envs 8 --episodes 400 \
        --preset small --steps 20000 --out runs/il_small

It stands in for the BridgeV2-pretrained pi0 that cannot be downloaded here (and is useful on its own for a new
embodiment): the scripted expert (`ChunkVecEnv.expert_actions`, privileged state) runs in parallel env workers,
successful episodes become (image, instruction, state) -> action-chunk pairs, normalisation statistics are computed
from them, and the same `PI0Policy` class that `ppoflow_pi0.py` fine-tunes is trained with the rectified-flow loss.
The result, `<out>/ckpt_final.pt`, is what `ppoflow_pi0.py --init` and `load_policy` read. A run cut short continues
with the same command plus `--resume` (its demos.pt and newest ckpt_<step>.pt; the result is the uninterrupted run's).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn as nn
import tyro

import scene_schema as ss
from scene_env import EnvConfig


@dataclass
class Args:
    scenes_dir: str = "scenes"
    """Folder of composed scenes (`<id>/manifest.json`)."""
    scene_ids: list[str] | None = None
    """Collect demos on these scene ids (default: every manifest); "simpler:<EnvId>" entries use SimplerEnv."""
    out: str = "runs/il"
    """Output folder: args.json, demos.pt, metrics.jsonl, ckpt_<step>.pt, ckpt_final.pt."""
    preset: str = "tiny"
    """Model size: tiny (CPU tests), mini (CPU experiments), small, pi0-3b."""
    init: str | None = None
    """Start from this policy instead of random weights (our checkpoint, a pi0 folder, an open-pi-zero .pt)."""
    tokenizer_path: str | None = None
    """Folder with a real tokenizer (default: the offline byte-level tokenizer)."""
    seed: int = 0
    """Seed of model init, env resets and batches."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda"."""
    track: bool = False
    """Log to Weights & Biases (metrics.jsonl is always written)."""
    wandb_project: str = ss.WANDB_PROJECT
    """W&B project (one for every stage)."""
    wandb_entity: str | None = None
    """W&B entity (team)."""
    wandb_group: str | None = None
    """W&B group (default: the name of the folder that holds --out)."""
    # ---- demonstrations ----
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment settings (scene_env.EnvConfig)."""
    num_envs: int = 4
    """Parallel env workers collecting demos (env i holds scene i mod #scenes)."""
    env_workers: int | None = None
    """Worker processes (scene_env default; 0 = one env in this process)."""
    episodes: int = 64
    """Expert episodes to keep."""
    frames: int | None = None
    """Stop collecting once this many expert transitions (decisions) are kept: whole episodes, the last one cut to
    the budget (a frame budget matched to another run: experiments/distill_study.py's plain-imitation baseline gets
    the DAgger student's frames). --episodes still caps the episodes. Default: no frame budget."""
    max_collect_decisions: int | None = None
    """Stop collecting after this many decisions per env (default 4 x episodes x max_decisions / num_envs)."""
    success_only: bool = True
    """Keep only episodes the scripted expert solved."""
    demos: str | None = None
    """Reuse a demos.pt written by an earlier run instead of collecting (this policy's image size and tokenizer)."""
    resume: bool = False
    """Continue an interrupted run in --out with the flags it was started with: its demos.pt (nothing is collected),
    its newest ckpt_<step>.pt (weights, statistics, optimizer, schedule, RNG and the batch order) and its metrics rows
    up to that step; the result is the uninterrupted run's. A finished run (ckpt_final.pt) is left as it is."""
    dataset: str | None = None
    """Train from a LeRobotDataset of demos (an earlier run's <out>/dataset) instead of collecting: any image size
    and tokenizer, since frames and task texts are stored raw."""
    write_dataset: bool = False
    """Also write the kept demos as a LeRobotDataset to <out>/dataset: one frame per control step (image, state, 7-D
    action) at the control rate, re-rendered from the recorded trajectories (implies --record-trajectories)."""
    dataset_version: Literal["v3.0", "v2.1"] = "v3.0"
    """LeRobot format of --write-dataset: v3.0 (LeRobot >= 0.4) or v2.1 (LeRobot 0.3, openpi-era code)."""
    record_trajectories: bool = False
    """Also record every expert episode as ManiSkill RecordEpisode trajectories in <out>/trajectories (env states and
    actions per control step, one .h5 + .json per env worker): a dataset at another image size is then re-rendered
    without re-running the expert (`python lerobot_format.py --trajectories ... --image-size S`). Steps every
    control step through the full env (no frame skipping), so collection is slower."""
    stats: Literal["auto", "demos", "init", "file"] = "auto"
    """Normalisation statistics: "demos" (computed from the demos), "init" (the --init policy's own: a pretrained
    policy keeps what it was trained with), "file" (--stats-file, default the Bridge statistics); "auto" = "init"
    with --init, "file" when --stats-file is given, else "demos"."""
    stats_file: str | None = None
    """open-pi-zero-format statistics for --stats file (default: the Bridge statistics)."""
    # ---- flow-matching SFT ----
    steps: int = 2000
    """Gradient steps."""
    batch_size: int = 32
    """Transitions per gradient step."""
    learning_rate: float = 1e-4
    """AdamW learning rate (cosine decay after warm-up)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    lora_rank: int = 0
    """LoRA rank on the VLM (0 = train everything, the default for a from-scratch imitation policy; 32 for a
    pretrained pi0-3b, as ppoflow_pi0.py fine-tunes it)."""
    freeze_vlm: bool = False
    """Freeze the whole VLM (ppoflow_pi0.py --freeze-vlm)."""
    freeze_siglip: bool = False
    """Freeze SigLIP (ppoflow_pi0.py --freeze-siglip)."""
    lora_expert: bool = False
    """LoRA (rank --lora-rank) on the action expert instead of training it fully (ppoflow_pi0.py --lora-expert)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16: autocast the forward to bf16 over fp32 master weights and AdamW state (ppoflow_pi0.py --dtype)."""
    micro_batch_size: int | None = None
    """Split each batch into micro-batches of this size (gradient accumulation: same step, less memory)."""
    grad_checkpointing: bool = False
    """Activation checkpointing in SigLIP, the VLM and the expert (ppoflow_pi0.py --grad-checkpointing)."""
    num_inference_steps: int = 10
    """K stored in the checkpoint for deterministic flow inference (PPOFlow sets its own)."""
    log_every: int = 50
    """Steps between metric lines."""
    save_every: int = 1000
    """Steps between checkpoints (plus ckpt_final.pt)."""
    eval_episodes: int = 0
    """Deterministic evaluation episodes per env after training (0 = skip)."""


def collect_demos(envs, policy, episodes: int, max_decisions: int, success_only: bool, seed: int,
                  keep_raw: bool = True, max_frames: int | None = None) -> tuple[dict, list[dict]]:
    """Run the scripted expert in every env until `episodes` episodes (or `max_frames` transitions, the episode that
    crosses it cut to the budget) are kept. Returns the policy's stored
    inputs (rgb u8 resized to the model, raw state, tokens) with env-space action chunks [M, C, 7], and (keep_raw)
    the kept episodes with the env's own frames and task texts, for lerobot_format.write_dataset."""
    obs, info = envs.reset(seed=seed)
    N = envs.num_envs
    scene_ids = list(info.get("scene_id", getattr(envs, "scene_ids", [""] * N)))
    pending: list[list[dict]] = [[] for _ in range(N)]
    kept: list[dict] = []
    raw_episodes: list[dict] = []  # the env's own frames and texts: the LeRobotDataset (lerobot_format.py)
    n_ep = n_succ = 0
    keep_raw = keep_raw and "rgb" in obs  # the object-state proxy has no frames to write
    for _ in range(max_decisions):
        action = torch.as_tensor(envs.expert_actions()).float()  # [N, C, 7] privileged scripted expert
        inp = policy.obs_to_inputs(obs)
        for i in range(N):
            pending[i].append({**{k: v[i] for k, v in inp.items()}, "action": action[i], "task": obs["instruction"][i],
                               "scene": scene_ids[i], **({"frame": torch.as_tensor(obs["rgb"][i])} if keep_raw else {})})
        obs, _, term, trunc, info = envs.step(action)
        for i in (torch.as_tensor(term) | torch.as_tensor(trunc)).nonzero().flatten().tolist():
            succ = bool(torch.as_tensor(info["success"])[i])
            n_ep, n_succ = n_ep + 1, n_succ + succ
            if succ or not success_only:
                kept.extend(pending[i])
                if keep_raw:
                    raw_episodes.append({"rgb": torch.stack([t["frame"] for t in pending[i]]).numpy(),
                                         "state": torch.stack([t["state"] for t in pending[i]]).numpy(),
                                         "action": torch.stack([t["action"] for t in pending[i]]).numpy(),
                                         "task": pending[i][0]["task"], "scene_id": pending[i][0]["scene"]})
            pending[i] = []
        scene_ids = list(info.get("scene_id", scene_ids))
        if max_frames is not None and len(kept) >= max_frames:
            del kept[max_frames:]
            break
        if n_succ >= episodes if success_only else n_ep >= episodes:
            break
    if not kept:
        raise RuntimeError(f"the scripted expert solved 0 of {n_ep} episodes: check the scenes (compose_scene.py QA) "
                           "or pass --no-success-only")
    demos = {k: torch.stack([t[k] for t in kept]) for k in (*policy.input_keys, "action")}
    demos["episodes"], demos["expert_success_rate"] = torch.tensor(n_ep), torch.tensor(n_succ / max(n_ep, 1))
    return demos, raw_episodes


def demos_from_dataset(root: str, policy) -> dict:
    """A LeRobotDataset of scripted demos (lerobot_format.py) as this policy's inputs: images resized to its image
    size and instructions tokenised by its tokenizer here, so one dataset serves any size or tokenizer."""
    import lerobot_format as lf

    eps = lf.read_dataset(root)
    parts = [policy.obs_to_inputs({"rgb": torch.from_numpy(e["rgb"]), "state": torch.from_numpy(e["state"]),
                                   "instruction": [e["task"]] * len(e["rgb"])}) for e in eps]
    demos = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    demos["action"] = torch.cat([torch.from_numpy(e["action"]) for e in eps])
    demos["episodes"], demos["expert_success_rate"] = torch.tensor(len(eps)), torch.tensor(float("nan"))
    return demos


def main(args: Args, env_fn: Callable | None = None) -> Path:
    """`env_fn(scenes, num_envs, cfg, seed, workers)` builds the vector env (default scene_env.make_vec_env)."""
    import ppoflow_pi0 as pp

    out = Path(args.out)
    if args.frames is not None and (args.frames < 1 or args.write_dataset or args.dataset or args.demos):
        raise SystemExit(f"train_imitation.py: --frames {args.frames} budgets the scripted demos this run collects: "
                         "it needs a positive count and no --write-dataset (the dataset holds whole episodes), --dataset "
                         "or --demos (fix: drop --frames, or collect here without writing a dataset)")
    if args.stats == "init" and not args.init:
        raise SystemExit("train_imitation.py: --stats init needs --init (fix: --stats demos or --stats file)")
    last = resume_point(out, args) if args.resume else None
    if args.resume and last is None:
        print(f"[imitation] {out}: finished (ckpt_final.pt exists), nothing to resume")
        return out
    ss.write_json_atomic(out / "args.json", {"schema_version": ss.SCHEMA_VERSION, "args": ss.to_dict(args)})
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    pp.seed_everything(args.seed)
    tok = {"kind": "hf", "path": args.tokenizer_path} if args.tokenizer_path else {"kind": "bytes"}
    ft = dict(lora_rank=args.lora_rank, lora_alpha=float(max(args.lora_rank, 1)), num_steps=args.num_inference_steps,
              freeze_vlm=args.freeze_vlm, freeze_siglip=args.freeze_siglip, lora_expert=args.lora_expert)
    if args.init:
        policy = pp.load_policy(args.init, stats_file=args.stats_file or pp.DEFAULT_STATS, tokenizer_path=args.tokenizer_path,
                                **ft)
        pp.check_obs_mode(policy.config, args.env, f"--init {args.init}")
    else:
        policy = pp.PI0Policy(pp.preset_config(args.preset, args.env.chunk, **ft, **pp.obs_overrides(args.env)),
                              pp.Normalizer.from_stats_file(args.stats_file or pp.DEFAULT_STATS), tok)
    stats = args.stats if args.stats != "auto" else ("file" if args.stats_file else "init" if args.init else "demos")
    n = policy.normalizer
    if stats == "demos" and policy.config.estimate_object_state and (
            len(n.state_lo) != policy.config.state_dim or n.kind != "bound"):  # checked before any demo is collected
        raise SystemExit(f"train_imitation.py: --stats demos: the policy's state token carries estimated object "
                         f"features whose statistics come from --init, but {args.init} has {n.kind!r} statistics of "
                         f"{len(n.state_lo)} state dims (fix: --init a pretrain_perception.py --estimate-object-state "
                         "checkpoint, or --stats init)")
    if (policy.config.obs_mode == "rgb" and args.env.image_size < policy.config.image_size
            and not (args.dataset or args.demos)):  # allowed (tests render small), never silent
        print(f"[imitation] warning: --env.image-size {args.env.image_size} is below the policy's "
              f"{policy.config.image_size} px input ({policy.config.preset}): every demo frame is upsampled "
              f"(fix: --env.image-size {policy.config.image_size})", file=sys.stderr)
    envs = None
    if args.dataset:
        demos = demos_from_dataset(args.dataset, policy)
    elif args.demos:
        demos = torch.load(args.demos, weights_only=True)
    elif last is not None:  # the interrupted run's own demos (and, for its evaluation, its envs)
        demos = torch.load(out / "demos.pt", weights_only=True)
        if args.eval_episodes:
            scenes = pp.resolve_scenes(pp.Args(scenes_dir=args.scenes_dir, scene_ids=args.scene_ids))
            envs = (env_fn or _make_vec_env)(scenes, args.num_envs, args.env, args.seed, args.env_workers)
    else:
        scenes = pp.resolve_scenes(pp.Args(scenes_dir=args.scenes_dir, scene_ids=args.scene_ids))
        rec = {}
        if args.record_trajectories or args.write_dataset:  # the dataset's per-control-step frames come from these
            import scene_env

            rec["record"] = scene_env.Recording(str(out / "trajectories"), source="scripted expert (train_imitation.py)")
        envs = (env_fn or _make_vec_env)(scenes, args.num_envs, args.env, args.seed, args.env_workers, **rec)
        t0 = time.time()
        budget = args.max_collect_decisions or 4 * max(args.episodes * args.env.max_decisions,
                                                       args.frames or 0) // args.num_envs + 1
        demos, _ = collect_demos(envs, policy, args.episodes, budget, args.success_only, args.seed, keep_raw=False,
                                 max_frames=args.frames)
        print(f"[imitation] {len(demos['action'])} transitions from {int(demos['episodes'])} expert episodes "
              f"(expert success {float(demos['expert_success_rate']):.2f}) in {time.time() - t0:.0f}s")
        pp.torch_save_atomic(demos, out / "demos.pt")
        if rec:  # the recorders write their files on close; evaluation episodes below are not expert demos
            envs.close()
            envs = (env_fn or _make_vec_env)(scenes, args.num_envs, args.env, args.seed, args.env_workers) \
                if args.eval_episodes else None
        if args.write_dataset and args.env.obs_mode == "state":
            print("[imitation] no LeRobotDataset: the object-state proxy (--env.obs-mode state) renders no frames")
        elif args.write_dataset:
            import lerobot_format as lf

            eps = lf.episodes_from_trajectories(sorted((out / "trajectories").glob("*.h5")), args.env.image_size,
                                                success_only=args.success_only)
            lf.write_dataset(out / "dataset", eps, fps=args.env.control_freq, chunk=args.env.chunk,
                             version=args.dataset_version)
    if stats == "file":
        policy.normalizer = pp.Normalizer.from_stats_file(args.stats_file or pp.DEFAULT_STATS)
    if stats == "demos":  # normalisation from the demos (stored in the checkpoint)
        norm = pp.Normalizer.from_data(demos["state"].numpy(), demos["action"].flatten(0, 1).numpy())
        if policy.config.estimate_object_state:  # the demos hold no estimate: its statistics stay the init's
            n = policy.normalizer
            norm = pp.Normalizer(norm.kind, norm.state_lo + n.state_lo[len(norm.state_lo):],
                                 norm.state_hi + n.state_hi[len(norm.state_hi):], norm.action_lo, norm.action_hi)
        policy.normalizer = norm
    policy.to(device).train()
    if args.grad_checkpointing:
        pp.enable_grad_checkpointing(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    micro = args.micro_batch_size or args.batch_size
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps))
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps)))))
    target = policy.normalizer.action(demos["action"])  # [M, C, 7] model-space chunks
    wb = None
    if args.track:
        wb = ss.init_wandb(out, ss.to_dict(args), "imitation", args.wandb_project, args.wandb_entity, args.wandb_group)
    g = torch.Generator().manual_seed(args.seed)
    M, t0, losses, done = len(target), time.time(), [], 0
    if last is not None:  # where the interrupted run stood after its step `done`
        ck = pp.read_checkpoint(last)
        done = int(ck["iteration"])
        policy.load_weights(ck["model"])
        policy.normalizer = pp.Normalizer(**ck["normalizer"])
        target = policy.normalizer.action(demos["action"])
        optimizer.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        pp.set_rng_state(ck["rng"][0])
        for _ in range(done):  # the batch order: the generator's draws of the steps done
            torch.randint(0, M, (min(args.batch_size, M),), generator=g)
        keep = [r for r in ss.read_jsonl(out / "metrics.jsonl") if r.get("step", 0) <= done] \
            if (out / "metrics.jsonl").exists() else []
        ss.write_bytes_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in keep).encode())
        print(f"[imitation] {out}: resuming after step {done} ({last.name})")
        if done >= args.steps:  # cut between its last checkpoint and the final copy of it
            pp.torch_save_atomic(ck, out / "ckpt_final.pt")
    for step in range(done + 1, args.steps + 1):
        idx = torch.randint(0, M, (min(args.batch_size, M),), generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for m0 in range(0, len(idx), micro):  # gradient accumulation: the mean over the batch
            sub = idx[m0 : m0 + micro]
            inp = {k: demos[k][sub].to(device) for k in policy.input_keys}
            with pp.autocast(device, args.dtype):
                part = policy.flow_matching_loss(inp, target[sub].to(device)).float()  # Eq. 1  # ALGO LOGIC
            (part * len(sub) / len(idx)).backward()
            loss += float(part.detach()) * len(sub) / len(idx)
        gn = nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        sched.step()
        losses.append(loss)
        if step % args.log_every == 0 or step == args.steps:
            m = {"losses/flow_matching": float(np.mean(losses)), "losses/grad_norm": float(gn),
                 "charts/learning_rate": sched.get_last_lr()[0], "perf/samples_per_s": step * len(idx) / (time.time() - t0)}
            ss.append_jsonl(out / "metrics.jsonl", {"step": step, **m})
            if wb is not None:
                wb.log(m, step=step)
            print(f"[imitation] step {step}/{args.steps} loss {m['losses/flow_matching']:.4f}")
            losses = []
        if step % args.save_every == 0 or step == args.steps:
            ck = pp.policy_checkpoint(policy, optimizer=optimizer.state_dict(), scheduler=sched.state_dict(),
                                      rng=[pp.rng_state()], iteration=step, args=ss.to_dict(args),
                                      demos={"transitions": M, "episodes": int(demos["episodes"])})
            pp.torch_save_atomic(ck, out / f"ckpt_{step}.pt")
            if step == args.steps:
                pp.torch_save_atomic(ck, out / "ckpt_final.pt")
    if args.eval_episodes and envs is not None:
        succ = []
        for e in range(args.eval_episodes):
            succ += pp.evaluate(policy, envs, args.seed + 1000 + e, args.env.max_decisions)["success"]
        ss.append_jsonl(out / "metrics.jsonl", {"step": args.steps, "eval/success_rate": float(np.mean(succ))})
        print(f"[imitation] deterministic success rate {np.mean(succ):.3f} over {len(succ)} episodes")
    if envs is not None:
        envs.close()
    if wb is not None:
        wb.finish()
    return out


# Flags a resumed run may change: where it runs and where it logs, never what it learns.
RESUME_FREE_FLAGS = ("resume", "device", "env_workers", "track", "wandb_project", "wandb_entity", "wandb_group",
                     "log_every")


def resume_point(out: Path, args: Args) -> Path | None:
    """The newest ckpt_<step>.pt of the interrupted run in `out` (None: it finished), after checking that its demos
    are there and that the flags are the ones it was started with."""
    import ppoflow_pi0 as pp

    if (out / "ckpt_final.pt").exists():
        return None
    steps = pp.numbered_checkpoints(out)
    collected = not (args.demos or args.dataset)  # else the demos come from where they came from the first time
    if not steps or not (out / "args.json").exists() or (collected and not (out / "demos.pt").exists()):
        raise SystemExit(f"train_imitation.py: --resume: {out} holds no interrupted run (it needs args.json, a "
                         f"ckpt_<step>.pt{' and demos.pt' if collected else ''}; fix: drop --resume to start one)")
    old = ss.read_json(out / "args.json").get("args") or {}
    own_demos = args.demos and Path(args.demos).resolve() == (out / "demos.pt").resolve()  # what the run collected
    diff = {k: v for k, v in pp.resume_flag_changes(old, ss.to_dict(args)).items()
            if k.split(".")[0] not in RESUME_FREE_FLAGS and not (k == "demos" and v is None and own_demos)}
    if diff:
        raise SystemExit(f"train_imitation.py: --resume: {out} was started with other flags ("
                         + "; ".join(f"--{k.replace('_', '-')} {v!r}" for k, v in diff.items())
                         + f"); re-run with its flags ({out / 'args.json'}) or drop --resume")
    return steps[-1]


def _make_vec_env(*a, **kw):
    import scene_env

    return scene_env.make_vec_env(*a, **kw)


if __name__ == "__main__":
    from ppoflow_pi0 import CheckpointError

    try:
        main(tyro.cli(Args))
    except CheckpointError as e:  # a bad --init file: one clear line, no traceback
        raise SystemExit(f"train_imitation.py: error: {e}") from None
