"""Perception pretraining of a pixel pi0 policy: its vision tower learns where the objects are before it learns to act.

    python pretrain_perception.py --scenes-dir out/exp/scenes --scene-ids A B C D --preset mini --env.image-size 64 \
        --env.no-dr-camera --env.no-dr-lighting --frames 20000 --steps 4000 --out runs/perception
    python distill.py --teacher runs/proxy/ppo_s1/ckpt_final.pt --student-init runs/perception/ckpt_final.pt ...
    python train_imitation.py --init runs/perception/ckpt_final.pt --stats demos ...

Why: a pixel policy trained from scratch here never learned to localise a target whose pose is drawn over Table A.2's
region (benchmarks/RESULTS.md, issues 27 and 32): its training data hold a few hundred layouts, one per episode, and
an auxiliary object-state probe trained on them fits those layouts (1.5-2 cm) without generalising to new ones (5-7 cm,
against 5.5-10 cm for predicting the mean). Layouts are what is cheap in simulation: every env reset draws a new one.

What it does:
  1. frames: `--frames` env resets on the scenes (env i holds scene i mod #scenes; object poses, robot pose and
     whatever --env randomises, drawn anew at every reset), one camera frame per reset, labelled with the 14 object
     features of the object-state proxy (`scene_env.object_state`: target and destination positions, yaw, extents, in
     the robot base frame) that the env reports beside the image (`EnvConfig.with_object_state`). The last
     `--val-frames` (other reset seeds) are held out;
  2. training: a fresh `PI0Policy` of `--preset` (or `--init`) and a linear probe on its flattened image tokens
     (`PI0Policy.image_tokens`: the tokens the policy's prefix reads) regress the standardised features (MSE) for
     `--steps`; only the vision path receives gradients (`--estimator keypoints`: the policy's convolutional
     keypoint detector on the image itself instead of the tower and the linear probe);
  3. output: `ckpt_final.pt`, a normal pixel checkpoint (its action expert untouched: random, or `--init`'s) for
     `train_imitation.py --init`, `distill.py --student-init` or `ppoflow_pi0.py --init`, with the probe, the feature
     statistics and the held-out localisation error (cm) under "perception"; `frames.pt` (reused by a re-run with
     the same frame flags); `metrics.jsonl`; `summary.json`.
Frames are taken at reset, the arm at its start pose: the views of the first decisions, where the target must be found;
`--expert-frames` adds frames along scripted-expert episodes (the arm in view, the target grasped and carried: what a
policy sees at its later decisions), `--rollout-frames` frames along a learned `--rollout-policy`'s episodes (its
hesitations, pushes and failures: the states a learned policy visits). `--estimate-object-state` makes the probe the
policy's own: its estimate feeds the state token (PolicyConfig.estimate_object_state; `--no-image-in-prefix`: the
image reaches the policy only that way), and `--vision-preset` gives a random policy another preset's vision tower.
With `--stats-from` a DAgger teacher's (or any policy's) action and proprio statistics go into the checkpoint, so
`distill.py --student-init` keeps the normalisation a random student would take from the teacher.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import scene_schema as ss
from scene_env import OBJECT_STATE_DIM, PROPRIO_DIM, EnvConfig


@dataclass
class Args:
    scenes_dir: str = "scenes"
    """Folder of composed scenes (`<id>/manifest.json`)."""
    scene_ids: list[str] | None = None
    """Render these scene ids (default: every manifest)."""
    out: str = "runs/perception"
    """Output folder: args.json, frames.pt, metrics.jsonl, ckpt_final.pt, summary.json."""
    preset: str = "mini"
    """Model size when not given by --init: tiny, mini (CPU experiments), small, pi0-3b."""
    vision_preset: str | None = None
    """The vision tower of another preset for a random --preset policy (ppoflow_pi0.preset_config), e.g. --preset
    tiny --vision-preset mini: a state teacher's tiny architecture with mini's 64 image tokens for the estimate."""
    init: str | None = None
    """Start from this pixel checkpoint instead of random --preset weights."""
    stats_from: str | None = None
    """Take the action statistics and the proprio part of the state statistics from this checkpoint (e.g. the DAgger
    teacher). Default: --init's, else the Bridge statistics file."""
    tokenizer_path: str | None = None
    """Folder with a real tokenizer for a random policy (default: the offline byte-level tokenizer)."""
    seed: int = 0
    """Seed of the model init, the reset seeds (frame j of env i: seed + j * num_envs + i) and the batches."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda"."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment settings (scene_env.EnvConfig): the camera the policy will see (--env.image-size 64 for tiny / mini)."""
    num_envs: int = 8
    """Parallel envs (env i holds scene i mod #scenes)."""
    env_workers: int | None = None
    """Worker processes (scene_env default: one per env; 0 = one env in this process)."""
    frames: int = 20000
    """Labelled frames (one per reset) used for training."""
    val_frames: int = 1000
    """Held-out frames (later reset seeds) on which the localisation error is reported."""
    expert_frames: int = 0
    """Further labelled frames along scripted-expert episodes (one per decision: the arm approaching, grasping,
    carrying, placing, in view and occluding; a new layout each episode), plus a tenth as many from episodes of other
    reset seeds held out (their error reported apart, "val_expert/"). A policy acts on mid-episode frames, which reset
    frames never show."""
    rollout_policy: str | None = None
    """A policy whose deterministic rollouts give the `--rollout-frames`: an object-state policy (e.g. a DAgger teacher,
    reading the simulator's features) or a pixel policy (e.g. an imitation start). Its episodes show the states a
    learned policy visits, hesitations, pushes and failures included, which neither resets nor the scripted expert
    show: there a perception trained on those two erred twice as much (RESULTS.md, DAgger v7)."""
    rollout_frames: int = 0
    """Further labelled frames along `--rollout-policy`'s episodes (one per decision; frames with an object knocked
    off the table or flung away are skipped: `scene_env.objects_in_workspace`), plus a tenth as many from episodes of
    other reset seeds held out (their error reported apart, "val_rollout/")."""
    steps: int = 4000
    """Gradient steps."""
    batch_size: int = 64
    """Frames per gradient step."""
    learning_rate: float = 3e-4
    """AdamW learning rate (linear warm-up over --warmup-steps, then cosine to 0)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    log_every: int = 100
    """Steps between metrics rows (with the held-out error)."""
    num_inference_steps: int = 1
    """K of the policy's flow inference (stored in its checkpoint)."""
    estimate_object_state: bool = False
    """A random --preset policy whose state token carries the probe's estimate of the 14 object features
    (PolicyConfig.estimate_object_state): the probe trained here becomes part of the policy, and the feature
    statistics of the state normalisation come from the frames (or from a 21-D --stats-from, e.g. a state teacher)."""
    estimator: Literal["linear", "keypoints"] = "linear"
    """With --estimate-object-state, a random policy's estimator (PolicyConfig.estimator): "linear", a linear map of
    the vision tower's image tokens (trained with the tower); "keypoints", a convolutional detector with a
    spatial-softmax keypoint layer on the image itself (ppoflow_pi0.KeypointProbe; the tower is then not trained)."""
    estimate_detached: bool = False
    """With --estimate-object-state: the policy's later losses (imitation, DAgger's flow matching, PPOFlow) do not
    reach the estimate (PolicyConfig.estimate_detached); only object-state supervision trains it."""
    image_in_prefix: bool = True
    """With --estimate-object-state: the image tokens also enter the VLM prefix. --no-image-in-prefix: the image
    reaches the policy only through the estimate (the object-state policy's architecture: distill.py
    --student-from-teacher)."""


class PerceptionError(ValueError):
    """A bad input of pretrain_perception.py: what was given, what is needed, how to fix it."""


def check_args(args: Args) -> None:
    bad = [f"--{n.replace('_', '-')} {getattr(args, n)} (must be >= 1)" for n in
           ("frames", "val_frames", "steps", "batch_size", "num_envs", "log_every", "num_inference_steps")
           if getattr(args, n) < 1]
    bad += [f"--{n.replace('_', '-')} {getattr(args, n)} (must be >= 0)" for n in ("expert_frames", "rollout_frames")
            if getattr(args, n) < 0]
    if bad:
        raise PerceptionError(f"pretrain_perception.py: {'; '.join(bad)}")
    if not args.image_in_prefix and not args.estimate_object_state:
        raise PerceptionError("pretrain_perception.py: --no-image-in-prefix leaves a policy that sees no image unless "
                              "its state token carries the estimate (fix: add --estimate-object-state)")
    if args.estimate_detached and not args.estimate_object_state:
        raise PerceptionError("pretrain_perception.py: --estimate-detached is about the estimate of "
                              "--estimate-object-state, which is not set (fix: add --estimate-object-state)")
    if args.estimator != "linear" and not args.estimate_object_state:
        raise PerceptionError(f"pretrain_perception.py: --estimator {args.estimator} makes the estimate of "
                              "--estimate-object-state, which is not set (fix: add --estimate-object-state, or drop "
                              "--estimator)")
    if args.estimator != "linear" and args.init:
        raise PerceptionError(f"pretrain_perception.py: --estimator {args.estimator} builds a random policy's "
                              f"estimator, but --init {args.init} brings its own (fix: drop --estimator; the "
                              "checkpoint's estimator is kept)")
    if bool(args.rollout_frames) != bool(args.rollout_policy):
        raise PerceptionError(f"pretrain_perception.py: --rollout-frames {args.rollout_frames} and --rollout-policy "
                              f"{args.rollout_policy} go together: the frames are taken along that policy's episodes "
                              "(fix: give both, or neither)")
    if args.env.obs_mode != "rgb":
        raise PerceptionError(f"pretrain_perception.py: --env.obs-mode {args.env.obs_mode}: perception is learned from "
                              "the camera (fix: drop --env.obs-mode; the object state comes along as the label)")


# EnvConfig fields that never change a camera frame or its label (the proxy's feature noise is refused on a pixel
# env): left out of `frame_flags`, so frames collected before such a field existed stay reusable
FRAME_BLIND_ENV_FIELDS = ("object_state_noise_m", "object_state_noise_corr")


def frame_flags(args: Args) -> dict:
    """What the frames depend on: a re-run reuses frames.pt only when these are the same."""
    env = {k: v for k, v in ss.to_dict(args.env).items() if k not in FRAME_BLIND_ENV_FIELDS}
    return {"scenes_dir": str(Path(args.scenes_dir).resolve()), "scene_ids": args.scene_ids, "seed": args.seed,
            "num_envs": args.num_envs, "frames": args.frames, "val_frames": args.val_frames,
            "expert_frames": args.expert_frames, "env": env, "rollout_frames": args.rollout_frames,
            **({"rollout_policy_sha256": ss.file_sha256(args.rollout_policy)} if args.rollout_frames else {})}


def load_rollout_policy(args: Args, device):
    """--rollout-policy in eval mode, checked against the env's chunk."""
    import ppoflow_pi0 as pp

    actor = pp.load_policy(args.rollout_policy, device=str(device)).eval()
    if actor.config.chunk != args.env.chunk:
        raise PerceptionError(f"pretrain_perception.py: --rollout-policy {args.rollout_policy} predicts chunks of "
                              f"{actor.config.chunk} but --env.chunk is {args.env.chunk} (fix: --env.chunk "
                              f"{actor.config.chunk})")
    return actor


def build_policy(args: Args, device):
    """A random --preset pixel policy (normalisation: --stats-from's, else the Bridge file), or --init."""
    import ppoflow_pi0 as pp

    if args.init:
        policy = pp.load_policy(args.init, tokenizer_path=args.tokenizer_path, lora_rank=0,
                                num_steps=args.num_inference_steps)
        c = policy.config
        if c.obs_mode == "rgb" and (c.estimate_object_state, c.image_in_prefix, c.estimate_detached) != (
                args.estimate_object_state, args.image_in_prefix, args.estimate_detached):
            raise PerceptionError(
                f"pretrain_perception.py: --init {args.init} has estimate_object_state {c.estimate_object_state}, "
                f"image_in_prefix {c.image_in_prefix}, estimate_detached {c.estimate_detached}, but the flags ask for "
                f"{args.estimate_object_state}, {args.image_in_prefix}, {args.estimate_detached} (fix: flags that "
                "match the checkpoint, or a random --preset policy)")
    else:
        cfg = pp.preset_config(args.preset, args.env.chunk, args.vision_preset, num_steps=args.num_inference_steps,
                               **pp.obs_overrides(args.env, args.estimate_object_state, args.image_in_prefix,
                                                  args.estimate_detached, args.estimator))
        tok = {"kind": "hf", "path": args.tokenizer_path} if args.tokenizer_path else {"kind": "bytes"}
        policy = pp.PI0Policy(cfg, pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), tok)
    if policy.config.obs_mode != "rgb":
        raise PerceptionError(f"pretrain_perception.py: --init {args.init} is an object-state policy; perception is "
                              "a pixel policy's (fix: a checkpoint trained with --env.obs-mode rgb, or no --init)")
    if args.stats_from:
        n = pp.load_policy(args.stats_from).normalizer
        keep = policy.config.state_dim if len(n.state_lo) == policy.config.state_dim else PROPRIO_DIM
        policy.normalizer = pp.Normalizer(n.kind, n.state_lo[:keep], n.state_hi[:keep], n.action_lo, n.action_hi)
    return policy.to(device)


@torch.no_grad()
def collect_frames(envs, policy, n: int, seed: int) -> dict:
    """`n` frames, one per reset, reset t of env i with seed `seed + t * N + i`: the policy's image input (u8, resized
    to its size) and the 14 object features. Returns {"rgb" [n, 3, S, S] u8, "object_state" [n, 14], "scene_id"}."""
    N, rgb, obj, scenes = envs.num_envs, [], [], []
    for t in range(math.ceil(n / N)):
        obs, info = envs.reset(seed=seed + t * N)
        rgb.append(policy.obs_to_inputs(obs)["rgb"])
        obj.append(torch.as_tensor(obs["object_state"]).float().cpu())
        scenes += list(info["scene_id"])
    return {"rgb": torch.cat(rgb)[:n], "object_state": torch.cat(obj)[:n], "scene_id": scenes[:n]}


@torch.no_grad()
def collect_expert_frames(envs, policy, n: int, seed: int) -> dict:
    """`n` frames along scripted-expert episodes, one per decision (every env's, in step order; an ended episode
    resets with a new layout), from a reset with seed `seed`. Same layout as `collect_frames`."""
    N, rgb, obj, scenes = envs.num_envs, [], [], []
    obs, info = envs.reset(seed=seed)
    scene_ids = list(info["scene_id"])
    for _ in range(math.ceil(n / N)):
        rgb.append(policy.obs_to_inputs(obs)["rgb"])
        obj.append(torch.as_tensor(obs["object_state"]).float().cpu())
        scenes += scene_ids
        obs, _, _, _, info = envs.step(torch.as_tensor(envs.expert_actions()).float())
        scene_ids = list(info["scene_id"])
    return {"rgb": torch.cat(rgb)[:n], "object_state": torch.cat(obj)[:n], "scene_id": scenes[:n]}


@torch.no_grad()
def collect_rollout_frames(envs, policy, actor, n: int, seed: int) -> dict:
    """`n` frames along `actor`'s deterministic episodes, one per decision (every env's, in step order; an ended
    episode resets with a new layout), from a reset with seed `seed`, skipping frames where an object has left the
    workspace. An object-state actor reads the simulator's features (`scene_env.proxy_observation`), a pixel actor
    the camera. Same layout as `collect_frames`."""
    from scene_env import objects_in_workspace, proxy_observation

    N, rgb, obj, scenes, have = envs.num_envs, [], [], [], 0
    obs, info = envs.reset(seed=seed)
    scene_ids = list(info["scene_id"])
    while have < n:
        state = torch.as_tensor(obs["object_state"]).float().cpu()
        keep = objects_in_workspace(state)
        rgb.append(policy.obs_to_inputs(obs)["rgb"].cpu()[keep])
        obj.append(state[keep])
        scenes += [s for s, k in zip(scene_ids, keep.tolist()) if k]
        have += int(keep.sum())
        act_obs = proxy_observation(obs) if actor.config.obs_mode == "state" else obs
        obs, _, _, _, info = envs.step(actor.act(act_obs, deterministic=True))  # ALGO LOGIC
        scene_ids = list(info["scene_id"])
    return {"rgb": torch.cat(rgb)[:n], "object_state": torch.cat(obj)[:n], "scene_id": scenes[:n]}


def localisation_error_cm(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """Mean absolute error in cm of the target's and the destination's positions (features 0-2 and 8-10) from
    standardised predictions, and the same for always predicting the mean (the number to beat)."""
    p, y = pred * std + mean, target * std + mean
    out = {}
    for name, sl in (("target", slice(0, 3)), ("destination", slice(8, 11))):
        out[f"{name}_xyz_mae_cm"] = float((p[:, sl] - y[:, sl]).abs().mean() * 100)
        out[f"{name}_xyz_mae_cm_predict_mean"] = float((mean[sl] - y[:, sl]).abs().mean() * 100)
    return out


def main(args: Args, env_fn: Callable | None = None) -> Path:
    """`env_fn(scenes, num_envs, cfg, seed, workers)` builds the vector env (default scene_env.make_vec_env)."""
    import ppoflow_pi0 as pp

    check_args(args)
    out = Path(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    pp.seed_everything(args.seed)
    policy = build_policy(args, device)
    actor = load_rollout_policy(args, device) if args.rollout_frames else None
    scenes = pp.resolve_scenes(pp.Args(scenes_dir=args.scenes_dir, scene_ids=args.scene_ids))
    ss.write_json_atomic(out / "args.json", {"schema_version": ss.SCHEMA_VERSION, "args": ss.to_dict(args),
                                             "scenes": scenes})
    frames_path, flags = out / "frames.pt", frame_flags(args)
    cached = torch.load(frames_path, weights_only=True) if frames_path.exists() else None
    if cached is not None and cached.get("flags") == flags and cached["rgb"].shape[-1] == policy.config.image_size:
        data = cached
        print(f"[perception] {frames_path}: {len(data['rgb'])} frames reused")
    else:
        t0 = time.time()
        envs = (env_fn or _make_vec_env)(scenes, args.num_envs, replace(args.env, with_object_state=True), args.seed,
                                         args.env_workers)
        try:
            train = collect_frames(envs, policy, args.frames, args.seed)
            seed = args.seed + math.ceil(args.frames / args.num_envs) * args.num_envs  # after the training frames'
            val = collect_frames(envs, policy, args.val_frames, seed)
            if args.expert_frames:  # episodes of later reset seeds; the held-out ones from seeds far beyond
                seed += math.ceil(args.val_frames / args.num_envs) * args.num_envs
                ex = collect_expert_frames(envs, policy, args.expert_frames, seed)
                val_ex = collect_expert_frames(envs, policy, max(1, args.expert_frames // 10), seed + 10**6)
                train = {k: torch.cat([train[k], ex[k]]) if k != "scene_id" else train[k] + ex[k] for k in train}
            if args.rollout_frames:  # the rollout policy's episodes: other reset seeds again
                ro = collect_rollout_frames(envs, policy, actor, args.rollout_frames, seed + 2 * 10**6)
                val_ro = collect_rollout_frames(envs, policy, actor, max(1, args.rollout_frames // 10),
                                                seed + 3 * 10**6)
                train = {k: torch.cat([train[k], ro[k]]) if k != "scene_id" else train[k] + ro[k] for k in train}
        finally:
            envs.close()
        data = {"flags": flags, **{k: train[k] for k in ("rgb", "object_state", "scene_id")},
                **{f"val_{k}": val[k] for k in ("rgb", "object_state", "scene_id")}, "collect_s": time.time() - t0}
        if args.expert_frames:
            data.update({f"val_expert_{k}": val_ex[k] for k in ("rgb", "object_state", "scene_id")})
        if args.rollout_frames:
            data.update({f"val_rollout_{k}": val_ro[k] for k in ("rgb", "object_state", "scene_id")})
        pp.torch_save_atomic(data, frames_path)
        n = sum(len(data.get(f"{k}rgb", [])) for k in ("", "val_", "val_expert_", "val_rollout_"))
        print(f"[perception] {n} frames ({args.frames} + {args.val_frames} at resets, {args.expert_frames} + "
              f"{len(data.get('val_expert_rgb', []))} along expert episodes, {args.rollout_frames} + "
              f"{len(data.get('val_rollout_rgb', []))} along --rollout-policy's) in {data['collect_s']:.0f}s "
              f"({n / data['collect_s']:.1f} frames/s)")
    mean = data["object_state"].mean(0)
    std = data["object_state"].std(0).clamp_min(1e-3)  # constant features (a fixed extent) stay finite
    y, y_val = (data["object_state"] - mean) / std, (data["val_object_state"] - mean) / std
    if policy.config.estimate_object_state:  # the probe is the policy's own: its estimate feeds the state token
        probe = policy.object_state_probe
        if len(policy.normalizer.state_lo) < policy.config.state_dim:  # the estimate's normalisation: the frames'
            policy.normalizer = policy.normalizer.with_state_extra(data["object_state"].numpy())
    else:  # a pixel pi0: the probe only tells the vision tower where things are (stored beside the policy)
        probe = pp.ObjectStateProbe(pp.ObjectStateProbe.input_width(policy.config), OBJECT_STATE_DIM).to(device)
    probe.set_statistics(mean, std)
    params = [p for p in policy.parameters() if p.requires_grad]
    params += [p for p in probe.parameters() if all(p is not q for q in params)]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / max(1, args.warmup_steps))
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, k / args.steps))))

    def predict(rgb: torch.Tensor) -> torch.Tensor:  # standardised features
        return probe(policy.probe_input({"rgb": rgb.to(device)}))

    held = {"val": (data["val_rgb"], y_val)}
    for name in ("val_expert", "val_rollout"):
        if f"{name}_rgb" in data:
            held[name] = (data[f"{name}_rgb"], (data[f"{name}_object_state"] - mean) / std)

    @torch.no_grad()
    def held_out() -> dict:
        policy.eval()
        out = {}
        for name, (rgb, target) in held.items():
            pred = torch.cat([predict(rgb[i:i + 256]).cpu() for i in range(0, len(target), 256)])
            out.update({f"{name}/mse": float(F.mse_loss(pred, target)),
                        **{f"{name}/{k}": v for k, v in localisation_error_cm(pred, target, mean, std).items()}})
        policy.train()
        return out

    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)  # training restarts from its first step: the frames are what a re-run keeps
    g = torch.Generator().manual_seed(args.seed)
    policy.train()
    t0, losses = time.time(), []
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(y), (min(args.batch_size, len(y)),), generator=g)
        loss = F.mse_loss(predict(data["rgb"][idx]), y[idx].to(device))  # ALGO LOGIC
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % args.log_every == 0 or step == args.steps:
            m = {"step": step, "losses/mse": float(np.mean(losses)), "losses/grad_norm": float(gn), **held_out(),
                 "charts/learning_rate": sched.get_last_lr()[0], "time/train_s": time.time() - t0}
            ss.append_jsonl(metrics, m)
            print(f"[perception] step {step}/{args.steps} mse {m['losses/mse']:.4f} held-out "
                  f"{m['val/mse']:.4f}, target {m['val/target_xyz_mae_cm']:.2f} cm (mean: "
                  f"{m['val/target_xyz_mae_cm_predict_mean']:.2f} cm)")
            losses = []
    final = held_out()
    perception = {"probe": {k: v.cpu() for k, v in probe.state_dict().items()}, "feature_mean": mean,
                  "feature_std": std, "frames": len(y), "val_frames": len(y_val), "expert_frames": args.expert_frames,
                  "rollout_frames": args.rollout_frames, "held_out": final}
    pp.torch_save_atomic(pp.policy_checkpoint(policy.eval(), iteration=0, args=ss.to_dict(args),
                                              perception=perception), out / "ckpt_final.pt")
    summary = {"frames": len(y), "val_frames": len(y_val), "expert_frames": args.expert_frames,
               "rollout_frames": args.rollout_frames, "collect_s": data.get("collect_s"),
               "train_s": time.time() - t0, **final}
    ss.write_json_atomic(out / "summary.json", summary)
    print(f"[perception] held-out localisation: target {final['val/target_xyz_mae_cm']:.2f} cm, destination "
          f"{final['val/destination_xyz_mae_cm']:.2f} cm (predicting the mean: "
          f"{final['val/target_xyz_mae_cm_predict_mean']:.2f} / {final['val/destination_xyz_mae_cm_predict_mean']:.2f})"
          + (f"; along expert episodes: target {final['val_expert/target_xyz_mae_cm']:.2f} cm (mean: "
             f"{final['val_expert/target_xyz_mae_cm_predict_mean']:.2f})" if "val_expert/target_xyz_mae_cm" in final
             else "")
          + (f"; along --rollout-policy's episodes: target {final['val_rollout/target_xyz_mae_cm']:.2f} cm (mean: "
             f"{final['val_rollout/target_xyz_mae_cm_predict_mean']:.2f})" if "val_rollout/target_xyz_mae_cm" in final
             else "") + f" -> {out / 'ckpt_final.pt'}")
    return out


def _make_vec_env(*a, **kw):
    import scene_env

    return scene_env.make_vec_env(*a, **kw)


if __name__ == "__main__":
    from ppoflow_pi0 import CheckpointError

    try:
        main(tyro.cli(Args))
    except (CheckpointError, PerceptionError, ss.SchemaError, FileNotFoundError) as e:  # bad inputs: one line
        raise SystemExit(str(e) if str(e).startswith("pretrain_perception.py") else f"pretrain_perception.py: {e}") from None
