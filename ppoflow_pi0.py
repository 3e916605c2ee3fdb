"""PPOFlow RL fine-tuning of pi0 across generated scenes (paper Sec. 3, Appendix A-B), in one file.

    python ppoflow_pi0.py --scenes-dir scenes --init runs/il/ckpt_final.pt --preset tiny
    torchrun --nproc-per-node 8 ppoflow_pi0.py --scenes-dir scenes --splits-file splits.json --num-train-scenes 50 \
        --init open_pi_zero_bridge.pt --tokenizer-path paligemma-3b-pt-224 --track

The policy (`PI0Policy`) wraps transformers' `PI0ForConditionalGeneration`: a PaliGemma VLM encodes image + instruction
ONCE per decision into a KV cache (the prefix); a Gemma action expert reads it to predict the flow velocity of a
C x 7 action chunk. PPOFlow turns the K Euler steps of the flow into a Gaussian chain (Eq. 3-4) with a learned std
`sigma_phi(A_tau, z_t, tau)`, so the chain has a log-probability (Eq. 5) and PPO applies, with a power-scaled ratio
(Eq. 6-7). `z_t` is the stop-gradient pooled VLM feature; the value head `V(z_t)` sits on it too.

Time convention: this file uses the paper's (tau = 0 noise -> 1 action, v = A - eps). transformers' PI0 uses the
opposite (t = 1 noise -> 0 action, v = eps - A); `PolicyConfig.flow_time` says which one the network was trained in.

Other stages use: `load_policy(path)`, `PI0Policy.act(obs, deterministic=True)`, `PolicyConfig`, `Normalizer`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import scene_schema as ss
import scene_env
from scene_env import EnvConfig

DEFAULT_STATS = str(Path(__file__).resolve().parent.parent / "shared/assets/open_pi_zero/bridge_statistics.json")
CKPT_SCHEMA_VERSION = 1


@dataclass
class Args:
    # ---- scenes and run ----
    scenes_dir: str = "scenes"
    """Folder of composed scenes (`<id>/manifest.json`)."""
    scene_ids: list[str] | None = None
    """Train on these scene ids (default: every manifest); "simpler:<EnvId>" entries use SimplerEnv scenes."""
    splits_file: str | None = None
    """A SceneSplits JSON (evaluate.py): train on the ID set H_i of `--split-index` instead of `--scene-ids`."""
    split_index: int = 0
    """Which split H_i of `--splits-file`."""
    num_train_scenes: int | None = None
    """Train on the first N scenes of the chosen list (paper Sec. 4: N in {1, 5, 10, 25, 50})."""
    out: str | None = None
    """Run folder (default runs/<exp_name>_s<seed>)."""
    exp_name: str = "ppoflow"
    """Run name (W&B and the default run folder)."""
    init: str | None = None
    """Start from this policy: our checkpoint (train_imitation.py), a transformers/lerobot pi0 folder or an
    open-pi-zero `.pt`. Without it the `--preset` model starts from random weights."""
    dry_run: bool = False
    """Print parameter counts and an estimate of peak training memory per rank for this configuration, build the
    model on PyTorch's meta device (no weights allocated, no env started), and exit."""
    resume: str | None = None
    """Resume from one of this run's `ckpt_<iter>.pt` (model, optimizer, scheduler, RNG, iteration; metrics.jsonl is
    cut back to that iteration). Pass the original command's model flags: a mismatch is an error. Guarantee: the
    resumed run is bitwise the uninterrupted one when the env is deterministic (tested with a fake env); with the
    real env it is the same run up to rendering noise (lavapipe frames differ by up to 6/255 between identical runs)."""
    resume_allow_changes: tuple[str, ...] = ()
    """With --resume: training flags this resume may change on purpose, e.g. `--resume-allow-changes learning-rate
    num-iterations` (the new values take effect, the learning rate included, and args.json records them under
    resumed_from.allowed_changes). Model flags can never change on a resume; any other difference is still refused."""
    preset: str = "tiny"
    """Model size when not given by `--init`/`--resume`: tiny (CPU tests), small, pi0-3b (the paper's)."""
    stats_file: str = DEFAULT_STATS
    """Normalisation statistics (open-pi-zero format) for models that do not carry their own."""
    tokenizer_path: str | None = None
    """Folder with a PaliGemma tokenizer for real checkpoints (offline presets use a byte-level tokenizer; "bytes"
    forces it). Required for an --init whose vocabulary is not the byte tokenizer's."""
    init_num_kv_heads: int = 1
    """open-pi-zero --init: key/value heads (shapes cannot tell; 1 = Gemma-2B multi-query). Query heads are read
    from the shapes."""
    init_vision_heads: int = 16
    """open-pi-zero --init: SigLIP attention heads (shapes cannot tell; 16 = SigLIP-So400m)."""
    seed: int = 1
    """Seed of everything; env resets of iteration i on rank r are seeded from (seed, i, r)."""
    device: str = "auto"
    """"auto" (cuda:<local rank> when available, else cpu), "cpu" or "cuda"."""
    track: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline works); metrics.jsonl is always written."""
    wandb_project: str = ss.WANDB_PROJECT
    """W&B project (one for every stage)."""
    wandb_entity: str | None = None
    """W&B entity (team)."""
    wandb_group: str | None = None
    """W&B group (default: the name of the folder that holds --out, e.g. the study)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment settings (scene_env.EnvConfig: image size, chunk C, episode length, domain randomisation)."""
    env_workers: int | None = None
    """CPU env worker processes per rank: None (one per env, scene_env's default) or 0 (one env in this process)."""
    # ---- PPOFlow (Table A.1) ----
    num_envs: int = 192
    """Parallel environments in total (split across ranks)."""
    num_steps: int = 100
    """Chunk decisions per env per iteration (batch = num_envs x num_steps = 19200)."""
    minibatch_size: int = 1920
    """Transitions per gradient step (global across ranks)."""
    micro_batch_size: int | None = None
    """Split each minibatch into micro-batches of this size per rank (gradient accumulation, saves memory)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16: autocast the forward passes to bf16; master weights, gradients, AdamW state, log-probs and the PPO
    ratio stay fp32, and old log-probs are re-scored by the update's own forward before its first step, so the
    first minibatch's ratio is exactly 1 (bf16 results depend on the batch shape)."""
    tf32: bool = True
    """Allow TF32 matmuls / convolutions on CUDA (no effect on CPU)."""
    grad_checkpointing: bool = False
    """Activation checkpointing in the VLM and expert during the update (less memory, ~30% more compute)."""
    compile_act: bool = False
    """torch.compile the rollout's encode + chain (the act() path; see benchmarks/bench_policy.py)."""
    update_epochs: int = 1
    """Passes over the batch per iteration (UTD ratio)."""
    num_iterations: int = 100
    """Rollout + update iterations."""
    learning_rate: float = 2e-5
    """Adam learning rate of the policy (LoRA VLM, action expert, noise head)."""
    critic_learning_rate: float = 1e-4
    """Adam learning rate of the value head (not in Table A.1: the value head starts from scratch)."""
    warmup_iterations: int = 0
    """Linear learning-rate warm-up of the policy (iterations, after the critic warm-up)."""
    critic_warmup_iterations: int = 0
    """Iterations at the start that train only the value head (policy lr 0), as DPPO/ReinFlow do: the first
    advantages otherwise come from an untrained critic, exactly when Adam takes its largest steps."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    bootstrap_truncated: bool = True
    """Bootstrap episodes cut by the time limit with gamma * V(final obs) (infinite-horizon view). Off: the limit
    is part of the task (success only counts within --env.max-decisions), so a time-out is a failure worth 0."""
    clip_coef: float = 0.2
    """PPO clipping range epsilon."""
    ratio_power: float = 0.2
    """Importance ratio scale s (Eq. 6)."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    ent_coef: float = 0.0
    """Entropy bonus of the Gaussian chain (off by default)."""
    bc_coef: float = 0.0
    """Flow-matching (Eq. 1) loss on executed chunks with positive advantage (self-imitation; off by default)."""
    norm_adv: bool = True
    """Normalise advantages (zero mean, unit std) over `--adv-norm-scope`."""
    adv_norm_scope: Literal["minibatch", "batch"] = "minibatch"
    """"minibatch": per minibatch per rank (CleanRL's default); "batch": once over the whole batch of every rank
    (mean/std from an all-reduce of sum, sum of squares and count), so no minibatch is re-centred on its own."""
    target_kl: float | None = None
    """Stop the update epochs of an iteration once the epoch's mean approx-KL (k3 estimator of the unscaled
    ratio pi/pi_old, fp32, averaged over ranks so all ranks stop together) exceeds this (None = never; 0.01-0.02 is
    PPO's usual range)."""
    target_kl_scope: Literal["epoch", "minibatch"] = "epoch"
    """Where --target-kl is checked: "epoch" after each epoch (the remaining epochs are skipped), or "minibatch"
    before each gradient step (Stable-Baselines3's rule: a minibatch whose approx-KL exceeds the target is not
    applied and the update ends there, so even the first epoch can stop early)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Policy learning-rate decay after warm-up, down to `--lr-min-factor` x lr at the last iteration."""
    lr_min_factor: float = 0.0
    """Final policy learning rate as a fraction of --learning-rate (linear/cosine schedules)."""
    value_time_to_go: bool = False
    """Value head also reads the normalised remaining decisions (1 - t / --env.max-decisions). With
    --no-bootstrap-truncated a time-out is a failure, so V depends on time left: without it V is not Markov."""
    value_clip: float | None = None
    """Clip the new value to old value +- this in the value loss (CleanRL's clip_vloss; None = off)."""
    demo_bc_coef: float = 0.0
    """Weight of a behaviour-cloning anchor: flow-matching loss (Eq. 1) on a batch of `--demos` per gradient step
    (off by default)."""
    demos: str | None = None
    """demos.pt of train_imitation.py for the --demo-bc-coef anchor (use demos of the training scenes)."""
    demo_batch_size: int = 32
    """Demo transitions per gradient step of the BC anchor."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip, applied to the policy and to the value head separately (one global norm would
    scale the critic's gradient by the policy's, ~100x larger with sigma ~0.1, and starve it)."""
    num_inference_steps: int = 1
    """K, the number of integration (Gaussian chain) steps."""
    log_sigma_min: float = -2.5
    """Lower bound of the noise head's log std."""
    log_sigma_max: float = -2.0
    """Upper bound of the noise head's log std."""
    lora_rank: int = 32
    """LoRA rank on the VLM, and on the expert with --lora-expert (0 = fine-tune the VLM fully)."""
    freeze_vlm: bool = False
    """Appendix A (a, b): freeze the whole VLM (no LoRA on it; --lora-expert still adapts the expert)."""
    freeze_siglip: bool = False
    """Appendix A (c): freeze the SigLIP vision encoder (LoRA only on Gemma)."""
    lora_expert: bool = False
    """Appendix A (a, c, d): LoRA (rank --lora-rank) on the action expert instead of fully training it."""
    value_state: bool = False
    """Value head reads [z_t, normalised robot state] instead of z_t alone (paper: V(z_t)). pi0 feeds the state
    only to the action expert, so z_t of a small model may not tell "block in the gripper" from "block on the table"."""
    # ---- bookkeeping ----
    save_every: int = 10
    """Checkpoint every N iterations (plus ckpt_final.pt)."""
    keep_checkpoints: int = 0
    """Keep only the newest N `ckpt_<iteration>.pt` files of the run (0 = keep all); ckpt_final.pt is always kept."""
    checkpoint_weights: Literal["changed", "full"] = "changed"
    """"changed": with --init, checkpoints hold only what training changes (trainable parameters: LoRA adapters,
    expert, heads; plus optimizer, scheduler, RNG) and a reference to the --init file the frozen weights come from
    (loading needs that file; at pi0-3b ~1-4 GB instead of ~16 GB). "full": every weight (a self-contained file).
    Without --init checkpoints are always full."""
    eval_every: int = 10
    """Deterministic evaluation (sigma = 0), one episode per env, every N iterations (0 = never)."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy; stored in every checkpoint as `model_config`."""

    preset: str = "tiny"
    pi0: dict = field(default_factory=dict)
    """transformers PI0Config.to_dict()."""
    chunk: int = 4
    action_dim: int = 7
    state_dim: int = 7
    """Width of the state token's input: 7 (proprio) or 7 + scene_env.OBJECT_STATE_DIM (obs_mode "state", or
    estimate_object_state)."""
    obs_mode: str = "rgb"
    """"rgb" (image + instruction + proprio, the paper's) or "state" (the object-state proxy: instruction + proprio +
    object features, no image tokens; scene_env.EnvConfig.obs_mode). A policy runs only in envs of its own mode."""
    estimate_object_state: bool = False
    """obs_mode "rgb" only: the state token carries the proprio AND an estimate of the object-state proxy's 14 features
    (scene_env.object_state: what a state teacher reads from the simulator), made from the camera by the policy's
    estimator (`estimator`; pretrain_perception.py, then end to end unless estimate_detached). It observes only the
    camera, the instruction and the proprio (the env gives 7 state dims; state_dim is 7 + 14)."""
    estimator: str = "linear"
    """With estimate_object_state, what makes the estimate: "linear", one linear map of the vision tower's flattened
    image tokens (`ObjectStateProbe`); "keypoints", a small convolutional detector on the image itself with a
    spatial-softmax keypoint layer and an MLP (`KeypointProbe`: sub-pixel positions at the camera's full resolution,
    Levine et al. 2016), which localised the target 2-2.5x better than the linear probe on the same frames
    (benchmarks/RESULTS.md, DAgger v12). With image_in_prefix=False the vision tower is then unused."""
    estimate_detached: bool = False
    """With estimate_object_state: the state token reads the estimate through a stop-gradient, so the policy's own
    losses (flow matching, PPO) do not reach the probe and the vision tower; only the probe's supervision does
    (pretrain_perception.py, distill.py --aux-state-coef), and the estimate keeps meaning the simulator's features,
    which a state teacher's action expert expects. False: trained end to end as well."""
    image_in_prefix: bool = True
    """obs_mode "rgb": the image tokens enter the VLM prefix (pi0). False (needs estimate_object_state): the image
    reaches the policy only through the estimate, the prefix is the instruction alone -- the object-state policy's own
    architecture, so a state teacher's weights load unchanged (distill.py --student-from-teacher)."""
    num_steps: int = 1
    """K integration steps of the flow / Gaussian chain."""
    image_size: int = 224
    max_text_tokens: int = 48
    flow_time: str = "transformers"
    """Time convention the network was trained in: "transformers" (t=1 noise) or "paper" (open-pi-zero, tau=0 noise)."""
    positions: str = "transformers"
    """RoPE positions: "transformers" (suffix continues after the prefix) or "open_pi_zero" (suffix restarts at 1)."""
    attn_softcap: float | None = None
    """tanh soft-capping of attention logits (open-pi-zero uses 50)."""
    action_clip: float = 1.0
    head_width: int = 256
    log_sigma_min: float = -2.5
    log_sigma_max: float = -2.0
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_expert: bool = False
    freeze_vlm: bool = False
    freeze_siglip: bool = False
    value_state: bool = False
    value_time: bool = False
    """Value head reads the normalised remaining decisions too (Args.value_time_to_go)."""


# =============================================================================================
# Pure helpers: maths of PPOFlow (unit-tested at tiny sizes)
# =============================================================================================

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(log_std)^2)."""
    return -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - LOG_SQRT_2PI


def bounded_log_std(raw: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Squash an unbounded head output into [lo, hi] (Table A.1: log sigma in [-2.5, -2.0])."""
    return lo + (hi - lo) * torch.sigmoid(raw)


def compute_gae(rewards, values, dones, last_value, gamma: float, lam: float):
    """GAE (Schulman et al.). rewards/values/dones [T, N] (dones[t]: the episode ended at step t, truncation
    already bootstrapped into rewards[t]); last_value [N] = V(obs after step T-1). Returns advantages, returns."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        next_value = last_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last  # ALGO LOGIC
        adv[t] = last
    return adv, adv + values


def ppo_loss(logp_new, logp_old, adv, ratio_power: float, clip_coef: float):
    """Eq. 6-7: r = (pi / pi_old)^s, clipped surrogate. Returns (loss, stats) with the scaled ratio."""
    logratio = logp_new - logp_old
    ratio = torch.exp(ratio_power * logratio)  # Eq. 6  # ALGO LOGIC
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()  # Eq. 7
    with torch.no_grad():
        stats = {"approx_kl": approx_kl(logp_new, logp_old), "clipfrac": ((ratio - 1).abs() > clip_coef).float().mean(),
                 "ratio_mean": ratio.mean(), "ratio_min": ratio.min(), "ratio_max": ratio.max()}
    return pg, stats


def approx_kl(logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """KL(pi_old || pi_new) by the k3 estimator E[(r - 1) - log r], r = pi_new / pi_old (unscaled), in fp32."""
    lr = (logp_new.detach().float() - logp_old.detach().float()).clamp(-20, 20)
    return ((lr.exp() - 1) - lr).mean()


def value_loss(v_new: torch.Tensor, v_old: torch.Tensor, ret: torch.Tensor, clip: float | None) -> torch.Tensor:
    """0.5 (V - R)^2; with `clip`, the pessimistic max with the value clipped to v_old +- clip (CleanRL clip_vloss)."""
    unclipped = (v_new - ret).pow(2)
    if clip is None:
        return 0.5 * unclipped.mean()
    clipped = (v_old + (v_new - v_old).clamp(-clip, clip) - ret).pow(2)  # ALGO LOGIC
    return 0.5 * torch.max(unclipped, clipped).mean()


def time_to_go(decisions_done: torch.Tensor, max_decisions: int) -> torch.Tensor:
    """Normalised remaining decisions of an episode, 1 at its start and 0 at the time limit (the value head's
    time input: with a time-out worth 0, V(s) is only Markov given the time left)."""
    return (1.0 - decisions_done.float() / max_decisions).clamp(0.0, 1.0)


def allreduce_sum(x: torch.Tensor, world: int) -> torch.Tensor:
    """Sum of a (CPU or device) tensor over DDP ranks; identity with one rank."""
    if world == 1:
        return x
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else x.device
    y = x.to(dev).clone()
    dist.all_reduce(y)
    return y.to(x.device)


def normalize_advantages(adv: torch.Tensor, world: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean) / (std + eps) with mean and (unbiased) std over the WHOLE batch of every rank: one all-reduce of
    [sum, sum of squares, count] in float64, so every rank normalises with the same statistics."""
    a = adv.double()
    tot = allreduce_sum(torch.stack([a.sum(), a.pow(2).sum(), a.new_tensor(float(a.numel()))]), world)
    n = tot[2]
    mean = tot[0] / n
    var = ((tot[1] - n * mean * mean) / (n - 1).clamp_min(1)).clamp_min(0)
    return ((a - mean) / (var.sqrt() + eps)).to(adv.dtype)


def lr_factor(it: int, num_iterations: int, critic_warmup: int = 0, warmup: int = 0,
              schedule: str = "constant", min_factor: float = 0.0) -> float:
    """Policy lr multiplier at (0-based) iteration `it`: 0 during the critic warm-up, then a linear warm-up over
    `warmup` iterations, times a linear/cosine decay from 1 to `min_factor` over the remaining iterations."""
    j = it - critic_warmup
    if j < 0:
        return 0.0
    warm = min(1.0, (j + 1) / max(1, warmup))
    p = min(1.0, max(0.0, (j - warmup) / max(1, num_iterations - critic_warmup - warmup)))  # decay progress
    if schedule == "constant":
        decay = 1.0
    elif schedule == "linear":
        decay = min_factor + (1 - min_factor) * (1 - p)
    elif schedule == "cosine":
        decay = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * p))
    else:
        raise ValueError(f"ppoflow_pi0.py: --lr-schedule: unknown {schedule!r} (fix: constant, linear or cosine)")
    return warm * decay


def explained_variance(y_pred: torch.Tensor, y: torch.Tensor, world: int = 1) -> float:
    """1 - Var(y - y_pred) / Var(y) over the whole batch of every rank (one all-reduce of sums in float64)."""
    y, r = y.double().flatten(), (y.double() - y_pred.double()).flatten()
    n, sy, syy, sr, srr = allreduce_sum(torch.stack([y.new_tensor(float(y.numel())), y.sum(), (y * y).sum(), r.sum(),
                                                     (r * r).sum()]), world)
    var_y, var_r = syy - sy * sy / n, srr - sr * sr / n  # both over n - 1 would cancel
    return float("nan") if var_y <= 0 else float(1 - var_r / var_y)


def reduce_stats(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One dict of statistics from every rank's: keys ending in _min / _max take the extreme, the rest the mean."""
    out = {}
    for k in per_rank[0]:
        v = [r[k] for r in per_rank]
        out[k] = float(min(v) if k.endswith("_min") else max(v) if k.endswith("_max") else np.mean(v))
    return out


def merge_lora(sd: dict, scaling: float) -> dict:
    """Fold peft LoRA adapters into their base weights: W + scaling * B @ A (plain, adapter-free keys)."""
    out = {}
    for k, v in sd.items():
        if ".lora_" in k:
            continue
        if ".base_layer." in k:
            pre, leaf = k.split(".base_layer.")
            if leaf == "weight" and f"{pre}.lora_A.default.weight" in sd:
                v = v + scaling * (sd[f"{pre}.lora_B.default.weight"].float() @ sd[f"{pre}.lora_A.default.weight"].float()).to(v.dtype)
            k = f"{pre}.{leaf}"
        out[k] = v
    return out


def env_seed(seed: int, iteration: int, rank: int, salt: int = 0) -> int:
    """Reset seed of iteration i on rank r: a pure function of (seed, i, r) so a resumed run sees the same envs."""
    return int(np.random.SeedSequence([seed, iteration, rank, salt]).generate_state(1)[0]) % 2**30  # env i adds i


# =============================================================================================
# Tokenizer, normaliser, presets
# =============================================================================================


class ByteTokenizer:
    """Offline byte-level tokenizer (PaliGemma's is not available offline): 0 pad, 1 eos, 2 bos, 3 + byte."""

    pad_id, bos_id, vocab_size = 0, 2, 259

    def encode(self, text: str) -> list[int]:
        return [self.bos_id] + [b + 3 for b in (text + "\n").encode("utf-8")]  # PaliGemma prompt: bos text \n


    def as_pretrained(self):
        """The same tokenizer as a transformers `PreTrainedTokenizerFast` (save_pretrained / AutoTokenizer work):
        a byte-level BPE without merges whose id of byte b is 3 + b, so `HFTokenizer` on its folder encodes
        exactly as this class."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_char = bytes_to_unicode()  # byte -> its printable stand-in, the mapping ByteLevel pre-tokenizing uses
        vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{byte_char[b]: 3 + b for b in range(256)}}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


class HFTokenizer:
    """A real checkpoint's tokenizer (e.g. PaliGemma's) read from a folder; same prompt format."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.pad_id = self.tok.pad_token_id or 0

    def encode(self, text: str) -> list[int]:
        return [self.tok.bos_token_id] + self.tok(text + "\n", add_special_tokens=False)["input_ids"]


def make_tokenizer(spec: dict):
    if spec.get("kind") == "bytes":
        return ByteTokenizer()
    if spec.get("kind") == "hf":
        if not Path(spec["path"]).exists():
            raise FileNotFoundError(f"tokenizer folder {spec['path']} does not exist: pass --tokenizer-path")
        return HFTokenizer(spec["path"])
    raise ValueError(f"unknown tokenizer spec {spec}: expected kind 'bytes' or 'hf'")


@dataclass
class Normalizer:
    """State/action normalisation. "bound" (open-pi-zero): p01/p99 -> [-1, 1], clipped; "gaussian": mean/std.
    The gripper action dim is not normalised: the model predicts openness in [0, 1], the env gets +1 open if > 0.5
    else -1 close (open-pi-zero's Bridge convention)."""

    kind: str
    state_lo: list[float]
    state_hi: list[float]
    action_lo: list[float]
    action_hi: list[float]

    @classmethod
    def from_stats_file(cls, path: str, kind: str = "bound") -> "Normalizer":
        d = ss.read_json(path)
        try:
            a, p = d["action"], d["proprio"]
            keys = ("p01", "p99") if kind == "bound" else ("mean", "std")
            return cls(kind, p[keys[0]][:7], p[keys[1]][:7], a[keys[0]][:6], a[keys[1]][:6])
        except (KeyError, TypeError) as e:
            raise ss.SchemaError(path, "action/proprio", f"missing {e} (expected open-pi-zero statistics)") from None

    @classmethod
    def from_data(cls, states: np.ndarray, actions: np.ndarray) -> "Normalizer":
        """p01/p99 bounds of demo states [M, 7] and env-space actions [M, 7] (train_imitation.py)."""
        s_lo, s_hi = np.percentile(states, 1, 0), np.percentile(states, 99, 0)
        a_lo, a_hi = np.percentile(actions[:, :6], 1, 0), np.percentile(actions[:, :6], 99, 0)
        return cls("bound", s_lo.tolist(), s_hi.tolist(), a_lo.tolist(), a_hi.tolist())

    def with_state_extra(self, values: np.ndarray) -> "Normalizer":
        """This normaliser with statistics of further state dims taken from `values` [M, D] (p01/p99 under "bound",
        mean/std under "gaussian"), after the first 7 (proprio) of its own: e.g. the estimated object features of a
        pixel policy (PolicyConfig.estimate_object_state), from labelled frames."""
        values = np.asarray(values, dtype=np.float64)
        lo, hi = ((np.percentile(values, 1, 0), np.percentile(values, 99, 0)) if self.kind == "bound"
                  else (values.mean(0), values.std(0)))
        n = scene_env.PROPRIO_DIM
        return Normalizer(self.kind, list(self.state_lo[:n]) + lo.tolist(), list(self.state_hi[:n]) + hi.tolist(),
                          list(self.action_lo), list(self.action_hi))

    def _fwd(self, x, lo, hi, clamp: bool = True):
        lo, hi = x.new_tensor(lo), x.new_tensor(hi)
        if self.kind == "bound":
            y = 2 * (x - lo) / (hi - lo).clamp_min(1e-6) - 1
            return y.clamp(-1, 1) if clamp else y
        return (x - lo) / hi.clamp_min(1e-6)

    def _inv(self, x, lo, hi):
        lo, hi = x.new_tensor(lo), x.new_tensor(hi)
        return (x + 1) / 2 * (hi - lo) + lo if self.kind == "bound" else x * hi + lo

    def state(self, s: torch.Tensor) -> torch.Tensor:  # [N, S] -> [N, S]
        """Statistics cover the first len(state_lo) dims; any further dims (object features of the object-state proxy
        under a 7-D Bridge statistics file) pass through unchanged (metres and unit vectors: already O(1))."""
        n = len(self.state_lo)
        s = s.float()
        return torch.cat([self._fwd(s[..., :n], self.state_lo, self.state_hi), s[..., n:]], -1)

    def action(self, a: torch.Tensor, clamp: bool = True) -> torch.Tensor:  # env [.., 7] -> model [.., 7] (targets)
        """clamp=False: arm dims beyond the bounds map beyond [-1, 1] (the inverse of `env_action_unclipped`)."""
        arm = self._fwd(a[..., :6].float(), self.action_lo, self.action_hi, clamp)
        return torch.cat([arm, (a[..., 6:] + 1) / 2], -1)

    def env_action(self, a: torch.Tensor, clip: float = 1.0) -> torch.Tensor:  # model [.., 7] -> env [.., 7]
        a = a.float().clamp(-clip, clip)
        grip = torch.where(a[..., 6:] > 0.5, 1.0, -1.0)
        return torch.cat([self._inv(a[..., :6], self.action_lo, self.action_hi), grip], -1)

    def env_action_unclipped(self, a: torch.Tensor) -> torch.Tensor:  # model [.., 7] -> env units, nothing decided
        """The model's chunk in env units before the action clip and the gripper's threshold (gripper 2g - 1, not
        +-1): what `env_action` executes is a function of it, and `action(., clamp=False)` maps it back exactly."""
        a = a.float()
        return torch.cat([self._inv(a[..., :6], self.action_lo, self.action_hi), 2 * a[..., 6:] - 1], -1)


def _gemma(hidden, layers, inter, heads, head_dim, **kw):
    return dict(model_type="gemma", hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim, **kw)


def _siglip(hidden, layers, inter, heads, image, patch):
    return dict(model_type="siglip_vision_model", hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                num_attention_heads=heads, image_size=image, patch_size=patch, vision_use_head=False)


def preset_config(preset: str, chunk: int = 4, vision_preset: str | None = None, **overrides) -> PolicyConfig:
    """tiny: CPU tests (2 layers, width 64, 4x4 image patches); mini: CPU experiments (width 128, 8x8 patches of a
    64 px image: fine enough to find an object whose pose is randomised); small: a few hundred M params; pi0-3b:
    PaliGemma-3B + 300M expert. `vision_preset`: the vision tower of another preset (its tokens are projected to this
    preset's text width), e.g. a tiny policy that estimates the object state with mini's finer patches."""
    if vision_preset not in (None, preset):
        cfg = preset_config(preset, chunk, **overrides)
        vis = preset_config(vision_preset, chunk).pi0["vlm_config"]["vision_config"]
        cfg.pi0["vlm_config"]["vision_config"], cfg.image_size = vis, vis["image_size"]
        return cfg
    v = ByteTokenizer.vocab_size
    if preset == "tiny":
        text, vis, dit = _gemma(64, 2, 128, 2, 32, vocab_size=v), _siglip(32, 1, 64, 2, 64, 16), _gemma(64, 2, 128, 2, 32)
    elif preset == "mini":
        text, vis, dit = _gemma(128, 2, 256, 2, 64, vocab_size=v), _siglip(96, 2, 192, 2, 64, 8), _gemma(128, 2, 256, 2, 64)
    elif preset == "small":
        text, vis, dit = _gemma(512, 4, 2048, 4, 128, vocab_size=v), _siglip(384, 6, 1536, 6, 224, 16), _gemma(256, 4, 1024, 4, 128)
    elif preset == "pi0-3b":  # paper: PaliGemma-3B (SigLIP so400m/14 + Gemma 2B) + Gemma 300M action expert
        text, vis, dit = _gemma(2048, 18, 16384, 8, 256, vocab_size=257152), _siglip(1152, 27, 4304, 16, 224, 14), _gemma(1024, 18, 4096, 8, 256)
    else:
        raise ValueError(f"unknown preset {preset!r}: use tiny, mini, small or pi0-3b")
    pi0 = dict(vlm_config=dict(model_type="paligemma", text_config=text, vision_config=vis, projection_dim=text["hidden_size"],
                               image_token_id=text["vocab_size"]),
               dit_config=dit, chunk_size=chunk, max_state_dim=max(7, overrides.get("state_dim", 7)), max_action_dim=7)
    return PolicyConfig(preset=preset, pi0=pi0, chunk=chunk, image_size=vis["image_size"],
                        max_text_tokens=48, **overrides)


# =============================================================================================
# The policy
# =============================================================================================


def _softcap_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
    """Eager attention with tanh logit soft-capping (open-pi-zero's joint model caps at 50)."""
    from transformers.models.gemma.modeling_gemma import repeat_kv

    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    if attention_mask is not None:
        w = w + attention_mask
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


@functools.cache
def _prefix_cache_class() -> type:
    """transformers is imported lazily in this file (the CLI's --help and the dry run stay fast)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class PrefixCache(DynamicCache):
        """The VLM prefix's keys/values; see `prefix_cache`."""

        def __init__(self, layers: list | None = None, read_only: bool = False):
            super().__init__()
            self.read_only = read_only
            if layers is not None:
                self.layers = layers  # the writer's, shared

        def reader(self) -> "PrefixCache":
            return PrefixCache(self.layers, read_only=True)

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if self.read_only:
                layer = self.layers[layer_idx]
                return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)
            while len(self.layers) <= layer_idx:
                self.layers.append(DynamicLayer())
            layer = self.layers[layer_idx]
            if not layer.is_initialized:
                layer.lazy_initialization(key_states, value_states)
            layer.keys, layer.values = key_states, value_states
            return key_states, value_states

    return PrefixCache


def prefix_cache():
    """A transformers cache for the VLM prefix that never grows, so activation checkpointing can keep it.

    transformers drops `past_key_values` inside checkpointed layers in train mode (a layer replayed in backward would
    update the cache a second time), which left the prefix empty under --grad-checkpointing. This cache makes both
    uses idempotent: the writer (given to the VLM in `encode`) stores each layer's keys/values by replacing what was
    there, so a replay writes the same tensors again; the reader (`.reader()`, given to the expert) returns the prefix
    plus the step's own keys/values and stores nothing, so every one of the K steps, and every replay, sees the same
    L prefix tokens. Layers may therefore keep it under checkpointing (`enable_grad_checkpointing`)."""
    return _prefix_cache_class()()


def enable_grad_checkpointing(policy: "PI0Policy") -> None:
    """--grad-checkpointing: transformers' non-reentrant activation checkpointing of every SigLIP, Gemma and expert
    layer, keeping the prefix cache inside checkpointed layers (it is idempotent: `prefix_cache`). Non-reentrant, so
    the gradient reaches the VLM through the prefix keys/values the expert attends to."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    policy.pi0.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for m in policy.pi0.modules():
        if isinstance(m, GradientCheckpointingLayer):
            m._can_checkpoint_with_cache = True


@dataclass
class Prefix:
    """The VLM's output for one decision, reused by all K expert steps and the value head."""

    cache: Any  # read-only prefix_cache with the prefix keys/values of every layer
    valid: torch.Tensor  # [B, L] bool, non-padding prefix tokens
    state: torch.Tensor  # [B, max_state_dim] normalised, padded robot state
    z: torch.Tensor  # [B, Hv] stop-gradient pooled VLM feature z_t


def _mlp(i: int, w: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, o))


class _FeatureProbe(nn.Module):
    """What every object-state estimator shares: buffers `mean` / `std` hold the 14 features' statistics (set from
    labelled frames, or a state teacher's bounds), `forward` returns standardised features (so a regression loss on it
    weighs every feature alike) and `features` metres and unit vectors."""

    def __init__(self, n_out: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_out))
        self.register_buffer("std", torch.ones(n_out))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype).clamp_min(1e-3))  # a constant feature stays finite

    def standardise(self, features: torch.Tensor) -> torch.Tensor:  # [B, 14] physical -> standardised (the target)
        return (features.float() - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:  # the probe's input -> [B, 14] metres / unit vectors
        return self(x) * self.std + self.mean


class ObjectStateProbe(_FeatureProbe):
    """PolicyConfig.estimator "linear": one linear map from a pixel policy's flattened image tokens (they carry the
    patches' positions) to the 14 object features of the object-state proxy (scene_env.object_state)."""

    def __init__(self, n_in: int, n_out: int = scene_env.OBJECT_STATE_DIM):
        super().__init__(n_out)
        self.linear = nn.Linear(n_in, n_out)

    @staticmethod
    def input_width(config: PolicyConfig) -> int:
        """Image tokens x width of `PI0Policy.image_tokens` for this config (PaliGemma projects to the text width)."""
        vis, text = config.pi0["vlm_config"]["vision_config"], config.pi0["vlm_config"]["text_config"]
        return (vis["image_size"] // vis["patch_size"]) ** 2 * text["hidden_size"]

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # [B, Ni, Hv] -> [B, 14] standardised
        return self.linear(img.flatten(1).to(self.linear.weight.dtype)).float()


class KeypointProbe(_FeatureProbe):
    """PolicyConfig.estimator "keypoints": a small convolutional detector on the camera image itself. Three conv
    layers (the first of stride 2; the pixel coordinates appended to the colour channels, "CoordConv") give K feature
    maps; each map's spatial softmax gives its expected image position, sub-pixel by construction, and its peak logit
    how present it is (Levine et al. 2016, "End-to-end training of deep visuomotor policies"); an MLP maps the K
    positions and peaks to the 14 features. A linear probe on 8x8-pixel patch tokens must place an object a few pixels
    wide inside its patch from the token's contents; the keypoints place it on the half-resolution grid."""

    def __init__(self, width: int = 32, keypoints: int = 32, hidden: int = 256,
                 n_out: int = scene_env.OBJECT_STATE_DIM):
        super().__init__(n_out)
        conv = lambda i, o, k, s: [nn.Conv2d(i, o, k, s, k // 2), nn.GroupNorm(8, o), nn.GELU()]  # noqa: E731
        self.conv = nn.Sequential(*conv(5, width, 5, 2), *conv(width, width, 3, 1), *conv(width, width, 3, 1),
                                  nn.Conv2d(width, keypoints, 1))
        self.mlp = _mlp(3 * keypoints, hidden, n_out)

    @staticmethod
    def _grid(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [h, w] rows, cols in [-1, 1]
        u = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype)
        v = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype)
        return torch.meshgrid(u, v, indexing="ij")

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:  # u8 [B, 3, S, S] -> [B, 14] standardised
        w = self.conv[0].weight
        x = rgb.to(w.device, w.dtype) / 127.5 - 1.0
        B, _, H, W = x.shape
        gy, gx = self._grid(H, W, x)
        f = self.conv(torch.cat([x, gy.expand(B, 1, H, W), gx.expand(B, 1, H, W)], 1)).float()  # [B, K, h, w]
        ry, rx = self._grid(*f.shape[-2:], f)
        a = torch.softmax(f.flatten(2), -1)  # [B, K, h*w]: each map a distribution over the image
        kp = torch.stack([a @ ry.flatten(), a @ rx.flatten()], -1).flatten(1)  # [B, 2K] expected (row, col)
        return self.mlp(torch.cat([kp, f.flatten(2).amax(-1)], 1).to(w.dtype)).float()


ESTIMATORS = ("linear", "keypoints")


def make_probe(config: PolicyConfig) -> _FeatureProbe:
    """The object-state estimator of PolicyConfig.estimator."""
    if config.estimator == "keypoints":
        return KeypointProbe()
    return ObjectStateProbe(ObjectStateProbe.input_width(config))


class PI0Policy(nn.Module):
    """pi0 (transformers PI0ForConditionalGeneration) + noise head sigma_phi + value head V (paper Fig. 3, right)."""

    def __init__(self, config: PolicyConfig, normalizer: Normalizer, tokenizer_spec: dict, pi0: nn.Module | None = None):
        super().__init__()
        from transformers import PI0Config, PI0ForConditionalGeneration

        self.config, self.normalizer, self.tokenizer_spec = config, normalizer, tokenizer_spec
        self.tokenizer = make_tokenizer(tokenizer_spec)
        if pi0 is None:
            pcfg = PI0Config.from_dict(config.pi0)
            if config.attn_softcap:
                from transformers import AttentionInterface

                AttentionInterface.register("eager_softcap", _softcap_attention)
                pcfg.vlm_config.text_config._attn_implementation = pcfg.dit_config._attn_implementation = "eager_softcap"
            pi0 = PI0ForConditionalGeneration(pcfg)
        pi0.model.dit.embed_tokens = None  # the expert never reads token ids (saves 263M params at pi0-3b)
        self.pi0 = pi0
        self._attn_kw = {"softcap": config.attn_softcap} if config.attn_softcap else {}
        hv = pi0.config.vlm_config.text_config.hidden_size
        n = config.chunk * config.action_dim
        self.noise_head = _mlp(n + hv + 1, config.head_width, n)  # sigma_phi(A_tau, z_t, tau)
        v_in = hv + (config.state_dim if config.value_state else 0) + int(config.value_time)
        self.value_head = _mlp(v_in, config.head_width, 1)  # V(z_t) [or V(z_t, s_t, time to go)]
        nn.init.zeros_(self.noise_head[-1].weight)  # start at the middle of [log_min, log_max]
        nn.init.zeros_(self.noise_head[-1].bias)
        if config.estimator not in ESTIMATORS:
            raise ValueError(f"ppoflow_pi0.py: PolicyConfig: estimator {config.estimator!r} is not one of {ESTIMATORS}")
        if (config.estimate_object_state or not config.image_in_prefix or config.estimate_detached
                or config.estimator != "linear"):
            if config.obs_mode != "rgb" or not config.estimate_object_state:
                raise ValueError("ppoflow_pi0.py: PolicyConfig: estimate_object_state needs obs_mode 'rgb' (an "
                                 "object-state policy reads the features themselves); image_in_prefix=False (else the "
                                 "policy is blind), estimate_detached and estimator 'keypoints' need "
                                 f"estimate_object_state; got obs_mode {config.obs_mode!r}, estimate_object_state "
                                 f"{config.estimate_object_state}, image_in_prefix {config.image_in_prefix}, "
                                 f"estimate_detached {config.estimate_detached}, estimator {config.estimator!r}")
            if config.state_dim != scene_env.PROPRIO_DIM + scene_env.OBJECT_STATE_DIM:
                raise ValueError(f"ppoflow_pi0.py: PolicyConfig: estimate_object_state needs state_dim "
                                 f"{scene_env.PROPRIO_DIM + scene_env.OBJECT_STATE_DIM} (proprio + estimate), got "
                                 f"{config.state_dim} (fix: obs_overrides(env, estimate_object_state=True))")
            self.object_state_probe = make_probe(config)
        self._token_cache: dict[str, list[int]] = {}
        self._apply_finetune_mode()

    # ---- fine-tuning mode (Appendix A) ----
    def _apply_finetune_mode(self):
        """Appendix A. VLM: frozen (--freeze-vlm), LoRA adapters (--lora-rank r > 0; on SigLIP too unless
        --freeze-siglip) or trained fully (--lora-rank 0; SigLIP frozen with --freeze-siglip). Action expert: trained
        fully, or LoRA adapters of the same rank with its base weights frozen (--lora-expert, with either VLM mode)."""
        c, vlm = self.config, self.pi0.model.vlm
        if c.lora_expert and c.lora_rank <= 0:
            raise ValueError("--lora-expert puts LoRA adapters of rank --lora-rank on the action expert, but --lora-rank "
                             f"is {c.lora_rank} (fix: pass --lora-rank 32, with --freeze-vlm for Appendix A option a)")
        from peft import LoraConfig, inject_adapter_in_model

        for p in self.parameters():
            p.requires_grad_(True)
        vlm.language_model.embed_tokens.weight.requires_grad_(False)
        if c.freeze_vlm or c.lora_rank > 0:
            vlm.requires_grad_(False)
        if c.lora_rank > 0 and not c.freeze_vlm:
            names = r"(q|k|v|o|gate|up|down)_proj" + ("" if c.freeze_siglip else r"|out_proj|fc1|fc2|linear")
            scope = r"language_model\..*" if c.freeze_siglip else r".*"
            inject_adapter_in_model(LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=0.0,
                                               target_modules=rf"{scope}\.({names})"), vlm)
        elif c.freeze_siglip:
            vlm.vision_tower.requires_grad_(False)
        if c.lora_expert:
            self.pi0.model.dit.requires_grad_(False)
            inject_adapter_in_model(LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=0.0,
                                               target_modules=r".*\.(q|k|v|o|gate|up|down)_proj"), self.pi0.model.dit)
        for name, p in self.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)

    def lora_scaling(self) -> float:
        return self.config.lora_alpha / self.config.lora_rank if self.config.lora_rank else 0.0

    def load_weights(self, sd: dict, scaling: float = 0.0, allow_missing: tuple[str, ...] = ("noise_head.", "value_head.")):
        """Load weights of any layout (with or without LoRA adapters) into this policy's layout: identical keys load
        as-is (exact resume); otherwise adapters are merged and base weights mapped (fresh adapters, B = 0).
        Heads in `allow_missing` that are absent or of another shape (e.g. --value-state) keep their fresh init."""
        own = self.state_dict()
        sd = {k: v for k, v in sd.items() if not (k.startswith(allow_missing) and k in own and v.shape != own[k].shape)}
        if set(sd) == set(own):
            self.load_state_dict(sd)
            return
        plain, new, missing = merge_lora(sd, scaling), {}, []
        for k, v in own.items():
            src = k.replace(".base_layer.", ".")
            if ".lora_" in k:
                new[k] = v
            elif src in plain:
                new[k] = plain[src]
            elif k.startswith(allow_missing):
                new[k] = v
            else:
                missing.append(k)
        extra = sorted(set(plain) - {k.replace(".base_layer.", ".") for k in own} - {"pi0.model.dit.embed_tokens.weight"})
        if missing or extra:
            raise KeyError(f"checkpoint does not match the model: missing {missing[:5]} (of {len(missing)}), "
                           f"unexpected {extra[:5]} (of {len(extra)}); was it made with another preset?")
        self.load_state_dict(new)

    # ---- observation -> model inputs ----
    @property
    def input_keys(self) -> tuple[str, ...]:
        """The model inputs `obs_to_inputs` makes and `encode` reads (no image under the object-state proxy)."""
        return ("rgb", "state", "ids", "mask") if self.config.obs_mode == "rgb" else ("state", "ids", "mask")

    @property
    def observed_state_dim(self) -> int:
        """Width of the env's obs["state"] this policy reads (the estimated object features are not observed)."""
        return self.config.state_dim - (scene_env.OBJECT_STATE_DIM if self.config.estimate_object_state else 0)

    def obs_to_inputs(self, obs: dict) -> dict:
        """env obs {"rgb" u8 [N,H,W,3] (obs_mode "rgb" only), "state" [N,S], "instruction"} -> stored rollout inputs
        (CPU tensors): rgb resized to the model's image size (u8 [N,3,S,S]), raw state, token ids [N,T], mask [N,T]."""
        state = torch.as_tensor(obs["state"]).float().cpu()
        if state.shape[-1] != self.observed_state_dim:
            raise ValueError(f"ppoflow_pi0.py: the observation's state has {state.shape[-1]} dims but this policy reads "
                             f"{self.observed_state_dim} (obs_mode {self.config.obs_mode!r}; fix: run the env with "
                             f"--env.obs-mode {self.config.obs_mode}, the mode the policy was trained in)")
        out = {}
        if self.config.obs_mode == "rgb":
            rgb = torch.as_tensor(obs["rgb"]).cpu().permute(0, 3, 1, 2)  # [N, 3, H, W]
            s = self.config.image_size
            if rgb.shape[-2:] != (s, s):
                rgb = F.interpolate(rgb.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                rgb = rgb.round().clamp(0, 255).to(torch.uint8)
            out["rgb"] = rgb.contiguous()
        T, N = self.config.max_text_tokens, state.shape[0]
        ids = torch.full((N, T), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(N, T, dtype=torch.bool)
        for i, text in enumerate(obs["instruction"]):
            toks = self._token_cache.get(text) or self._token_cache.setdefault(text, self.tokenizer.encode(text)[:T])
            ids[i, : len(toks)], mask[i, : len(toks)] = torch.tensor(toks), True
        return {**out, "state": state, "ids": ids, "mask": mask}

    def _additive_mask(self, allowed: torch.Tensor, dtype) -> torch.Tensor:  # bool [B, Q, KV] -> [B, 1, Q, KV]
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    def image_tokens(self, inp: dict) -> torch.Tensor:
        """The vision tower's tokens of a pixel policy's image, [B, Ni, Hv]: what `encode` puts before the instruction."""
        vlm, dev = self.pi0.model.vlm, self.pi0.action_out_proj.weight.device
        pix = inp["rgb"].to(dev).to(self.pi0.action_out_proj.weight.dtype) / 127.5 - 1.0  # [B, 3, S, S] in [-1, 1]
        return vlm.get_image_features(pix).pooler_output  # (PaliGemma's pixel range)

    def probe_input(self, inp: dict, img: torch.Tensor | None = None) -> torch.Tensor:
        """What the object-state probe reads: the image tokens (PolicyConfig.estimator "linear"; `img` when the caller
        already has them) or the image itself ("keypoints")."""
        if self.config.estimator == "keypoints":
            return inp["rgb"]
        return self.image_tokens(inp) if img is None else img

    def encode(self, inp: dict, img: torch.Tensor | None = None) -> Prefix:
        """Run SigLIP + Gemma over [image tokens, bos, instruction, \\n] once; keep the KV cache (the prefix). Under the
        object-state proxy (obs_mode "state") the prefix is the instruction alone: the state reaches the expert.
        With estimate_object_state the state token also gets the probe's estimate of the object features (and with
        image_in_prefix=False the image reaches the policy only that way; the vision tower then runs only for a
        "linear" estimator).
        `img`: the image tokens when the caller already has them (`image_tokens`, e.g. for an auxiliary loss)."""
        c, vlm, dev = self.config, self.pi0.model.vlm, self.pi0.action_out_proj.weight.device
        dtype = self.pi0.action_out_proj.weight.dtype
        txt = vlm.get_input_embeddings()(inp["ids"].to(dev))  # [B, T, Hv] (Gemma scales by sqrt(Hv))
        emb, valid = txt, inp["mask"].to(dev)  # [B, L, Hv], [B, L]
        state = inp["state"].to(dev).float()  # [B, observed_state_dim]
        if c.obs_mode == "rgb":
            if c.image_in_prefix or c.estimator == "linear":  # (a keypoint estimate reads the image itself)
                img = self.image_tokens(inp) if img is None else img  # [B, Ni, Hv]
            if c.estimate_object_state:
                est = self.object_state_probe.features(self.probe_input(inp, img))
                state = torch.cat([state, est.detach() if c.estimate_detached else est], -1)  # [B, 7 + 14]
            if c.image_in_prefix:
                emb = torch.cat([img, txt.to(img.dtype)], 1)
                valid = torch.cat([torch.ones(img.shape[:2], dtype=torch.bool, device=dev), valid], 1)
        B, L = emb.shape[:2]
        if self.config.positions == "open_pi_zero":
            pos = torch.arange(1, L + 1, device=dev).expand(B, L)
        else:
            pos = (valid.long().cumsum(1) - 1).clamp_min(0)
        cache = prefix_cache()
        out = vlm.language_model(inputs_embeds=emb, attention_mask=self._additive_mask(valid[:, None, :].expand(B, L, L), emb.dtype),
                                 position_ids=pos, past_key_values=cache, use_cache=True, **self._attn_kw)
        h = out.last_hidden_state.float()
        z = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)  # [B, Hv] masked mean
        state = self.normalizer.state(state)
        state = F.pad(state, (0, self.pi0.config.max_state_dim - state.shape[-1])).to(dtype)
        return Prefix(cache=cache.reader(), valid=valid, state=state, z=z.detach())  # z_t = sg(E(o_t))

    def velocity(self, prefix: Prefix, a: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Flow velocity dA/dtau (paper convention) of the action expert at (A^tau [B,C,A], tau [B]) -> [B, C, A]."""
        pi0, c = self.pi0, self.config
        B, C, A = a.shape
        L = prefix.valid.shape[1]
        t_net = tau if c.flow_time == "paper" else 1.0 - tau
        a_pad = F.pad(a, (0, pi0.config.max_action_dim - A)).to(prefix.state.dtype)
        emb = pi0.embed_action_time(prefix.state, a_pad, t_net)  # [B, 1 + C, He]: state token, then action tokens
        dev = a.device
        suffix = torch.ones(B, 1 + C, 1 + C, dtype=torch.bool, device=dev)
        suffix[:, 0, 1:] = False  # the state token does not see the actions (pi0 block attention)
        allowed = torch.cat([prefix.valid[:, None, :].expand(B, 1 + C, L), suffix], 2)  # [B, 1 + C, L + 1 + C]
        if c.positions == "open_pi_zero":  # proprio 1, actions 2..C+1 (open-pi-zero restarts the expert's positions)
            pos = torch.arange(1, C + 2, device=dev).expand(B, C + 1)
        else:
            pos = prefix.valid.sum(1, keepdim=True) + torch.arange(C + 1, device=dev)
        out = pi0.model.dit(inputs_embeds=emb, attention_mask=self._additive_mask(allowed, emb.dtype), position_ids=pos,
                            past_key_values=prefix.cache, use_cache=True, **self._attn_kw)  # reads the prefix, stores nothing
        v = pi0.action_out_proj(out.last_hidden_state[:, 1:])[..., :A].float()  # [B, C, A]
        return v if c.flow_time == "paper" else -v

    def log_sigma(self, a: torch.Tensor, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Noise head sigma_phi(A^tau, z_t, tau) (Eq. 4), log std bounded to [log_sigma_min, log_sigma_max].
        Computed outside autocast, in the head's own dtype (fp32 master weights in training): in bf16 the bounded
        log std took ~25 distinct values over [-2.5, -2.0], a quantised sigma in every log-prob of Eq. 5."""
        w = self.noise_head[0].weight
        x = torch.cat([a.flatten(1).float(), z.float(), tau[:, None].float()], -1).to(w.dtype)
        with torch.autocast(x.device.type, enabled=False):
            raw = self.noise_head(x).view(a.shape).float()
        return bounded_log_std(raw, self.config.log_sigma_min, self.config.log_sigma_max)

    def chain(self, prefix: Prefix, chain: torch.Tensor | None = None, deterministic: bool = False,
              noise: torch.Tensor | None = None):
        """The K-step Gaussian chain (Eq. 3-4) and its joint log-probability (Eq. 5).
        chain None: sample A^0 ~ N(0, I) (or take `noise` [B, C, A] as A^0) and A^{k+1} ~ N(A^k + v(A^k) dtau,
        sigma^2) (sigma = 0 if deterministic); else score the given chain [B, K+1, C, A]. Returns chain, logp [B],
        log_std [B, K, C, A]."""
        K, B = self.config.num_steps, prefix.z.shape[0]
        C, A, dt = self.config.chunk, self.config.action_dim, 1.0 / self.config.num_steps
        if chain is not None:
            a = chain[:, 0]
        else:
            a = noise.to(prefix.z.device) if noise is not None else torch.randn(B, C, A, device=prefix.z.device)
        a = a.float()
        logp = gaussian_log_prob(a, torch.zeros_like(a), torch.zeros_like(a)).sum((1, 2))  # log N(A^0; 0, I)
        samples, log_stds = [a], []
        for k in range(K):
            tau = torch.full((B,), k * dt, device=a.device)
            mean = a + self.velocity(prefix, a, tau).float() * dt  # Eq. 3 (fp32 under bf16 autocast)
            log_std = self.log_sigma(a, prefix.z, tau).float()
            if chain is not None:
                nxt = chain[:, k + 1]
            else:
                nxt = (mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)).detach()  # Eq. 4
            logp = logp + gaussian_log_prob(nxt, mean, log_std).sum((1, 2))  # Eq. 5
            samples.append(nxt)
            log_stds.append(log_std)
            a = nxt
        return torch.stack(samples, 1), logp, torch.stack(log_stds, 1)

    def value(self, prefix: Prefix, time_left: torch.Tensor | None = None) -> torch.Tensor:
        """V(z_t) [B]; with value_state also the robot state, with value_time also `time_left` [B] in [0, 1]."""
        x = [prefix.z] + ([prefix.state[:, : self.config.state_dim].float()] if self.config.value_state else [])
        if self.config.value_time:
            if time_left is None:
                raise ValueError("ppoflow_pi0.py: PI0Policy.value: this value head reads the time to go "
                                 "(value_time=True) but none was given (fix: pass time_left=time_to_go(...))")
            x.append(time_left.to(prefix.z.device).float()[:, None])
        return self.value_head(torch.cat(x, -1)).squeeze(-1)  # [B]

    def flow_matching_loss(self, inp: dict, actions: torch.Tensor, img: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 1 on normalised action chunks [B, C, A]: || v(A^tau, tau) - (A - eps) ||^2, A^tau = tau A + (1-tau) eps.
        `img`: precomputed image tokens (see `encode`)."""
        prefix = self.encode(inp, img)
        B = actions.shape[0]
        t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(actions.device) * 0.999 + 0.001  # pi0: more noisy t
        tau = 1.0 - t  # paper time: 0 noise -> 1 action
        eps = torch.randn_like(actions)
        a_tau = tau[:, None, None] * actions + (1 - tau[:, None, None]) * eps
        return F.mse_loss(self.velocity(prefix, a_tau, tau), actions - eps)

    def chunk_regression_loss(self, inp: dict, noise: torch.Tensor, actions: torch.Tensor,
                              img: torch.Tensor | None = None) -> torch.Tensor:
        """|| A^K(A^0 = noise) - A ||^2 on normalised chunks [B, C, A]: the deterministic K-step chain from the given
        A^0 (Eq. 3 with sigma = 0, differentiated through every step) regressed on a target chunk. Where Eq. 1 refits
        the velocity field at every tau, this trains only the map A^0 -> A^K the policy acts with: a target that is
        the policy's own deterministic chunk from the same A^0 gives zero loss, so distilling a PPOFlow policy's
        labels into a copy of it keeps the map RL tuned (distill.py --loss chunk)."""
        prefix = self.encode(inp, img)
        a, dt = noise.to(actions.device).float(), 1.0 / self.config.num_steps
        for k in range(self.config.num_steps):
            a = a + self.velocity(prefix, a, torch.full((a.shape[0],), k * dt, device=a.device)).float() * dt  # Eq. 3
        return F.mse_loss(a, actions.float())

    @torch.no_grad()
    def chunk(self, obs: dict, deterministic: bool = True, noise: torch.Tensor | None = None) -> torch.Tensor:
        """env obs -> the chain's last sample A^K [N, C, 7] in model space, before the action clip and the gripper's
        threshold; `noise` [N, C, 7]: the chain's A^0 (default: a fresh N(0, I) draw)."""
        return self.chain(self.encode(self.obs_to_inputs(obs)), deterministic=deterministic, noise=noise)[0][:, -1]

    def act(self, obs: dict, deterministic: bool = True, noise: torch.Tensor | None = None) -> torch.Tensor:
        """env obs -> env action chunk [N, C, 7] (ee delta xyz, delta rpy, gripper +1 open / -1 close); `noise`
        [N, C, 7]: the chain's A^0 (default: a fresh N(0, I) draw)."""
        return self.normalizer.env_action(self.chunk(obs, deterministic, noise), self.config.action_clip).cpu()


# =============================================================================================
# Loading: our checkpoints, transformers/lerobot pi0 folders, open-pi-zero .pt
# =============================================================================================


def convert_open_pi_zero(sd: dict, num_heads: int | None = None, num_kv_heads: int = 1, vision_heads: int = 16,
                         time_max_period: float = 10000.0, action_expert_rope_theta: float = 10000.0,
                         vlm_rope_theta: float = 10000.0, max_text_tokens: int = 20, softcap: float = 50.0,
                         chunk: int | None = None) -> tuple[PolicyConfig, dict]:
    """Map an open-pi-zero state dict (`torch.load(p)["model"]`) onto transformers' PI0 layout, exactly:
    time embedding periods (2pi, 2pi * max_period), action encoder cat order [time, action] -> [action, time],
    expert embeddings x sqrt(He) (open-pi-zero scales every mixture's input), paper flow time, restarted
    expert RoPE positions, attention soft-capping. Sizes come from the tensors' shapes: layers, widths, vocabulary,
    image size, and `num_heads` (q_proj rows / head_dim, head_dim = k_proj rows / num_kv_heads). What shapes cannot
    tell is an argument: `num_kv_heads` (1: Gemma-2B's multi-query attention, as every open-pi-zero mixture) and
    `vision_heads` (16: SigLIP-So400m). Defaults fit the released Bridge checkpoints."""
    sd = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in sd.items()}
    if any("lora_" in k for k in sd):
        raise ValueError("open-pi-zero checkpoint holds LoRA adapters: merge them into the base weights first")
    g = lambda k: sd[k]  # noqa: E731
    mix = lambda name, i: {k.split(f"mixtures.{name}.layers.{i}.")[1]: v for k, v in sd.items() if f"mixtures.{name}.layers.{i}." in k}  # noqa: E731
    nl = 1 + max(int(m.group(1)) for k in sd if (m := re.search(r"mixtures\.vlm\.layers\.(\d+)\.", k)))
    for i in range(nl):
        a, p = mix("action", i), mix("proprio", i)
        if p and any(not torch.equal(a[k], p[k]) for k in a):
            raise ValueError("proprio and action mixtures differ: only checkpoints with tied proprio/action weights "
                             "(the released ones) map onto pi0's single action expert")
    V, hv = g("embed_tokens.weight").shape
    he = g("action_decoder.weight").shape[1]
    hd = g("joint_model.mixtures.vlm.layers.0.self_attn.k_proj.weight").shape[0] // num_kv_heads
    q_rows = g("joint_model.mixtures.vlm.layers.0.self_attn.q_proj.weight").shape[0]
    if num_heads is None:
        num_heads = q_rows // hd
    if num_heads * hd != q_rows:
        raise ValueError(f"open-pi-zero checkpoint: q_proj has {q_rows} rows, not num_heads {num_heads} x head_dim {hd} "
                         "(fix: pass the right num_kv_heads / num_heads)")
    vis = {k.replace("vision_tower.", "").replace("vision_model.", ""): v for k, v in sd.items()
           if k.startswith("vision_tower.") and ".head." not in k}  # SigLIP's pooling head is unused by PaliGemma
    dv, _, patch, _ = vis["embeddings.patch_embedding.weight"].shape
    if dv % vision_heads:
        raise ValueError(f"open-pi-zero checkpoint: SigLIP width {dv} is not divisible by vision_heads {vision_heads}")
    image = int(round(vis["embeddings.position_embedding.weight"].shape[0] ** 0.5)) * patch
    nvl = 1 + max(int(m.group(1)) for k in vis if (m := re.search(r"encoder\.layers\.(\d+)\.", k)))
    adim, pdim = g("action_decoder.weight").shape[0], g("proprio_encoder.weight").shape[1]
    text = dict(_gemma(hv, nl, mix("vlm", 0)["mlp.gate_proj.weight"].shape[0], num_heads, hd, vocab_size=V),
                num_key_value_heads=num_kv_heads, rope_theta=vlm_rope_theta)
    dit = dict(_gemma(he, nl, mix("action", 0)["mlp.gate_proj.weight"].shape[0], num_heads, hd),
               num_key_value_heads=num_kv_heads, rope_theta=action_expert_rope_theta)
    pi0 = dict(vlm_config=dict(model_type="paligemma", text_config=text, projection_dim=hv, image_token_id=V,
                               vision_config=_siglip(dv, nvl, vis["encoder.layers.0.mlp.fc1.weight"].shape[0], vision_heads, image, patch)),
               dit_config=dit, chunk_size=chunk or 4, max_state_dim=pdim, max_action_dim=adim,
               min_period=2 * math.pi, max_period=2 * math.pi * time_max_period)  # freq_i = max_period^(-i/(d/2-1))
    cfg = PolicyConfig(preset="open-pi-zero", pi0=pi0, chunk=chunk or 4, image_size=image, max_text_tokens=max_text_tokens,
                       flow_time="paper", positions="open_pi_zero", attn_softcap=softcap)
    out = {"pi0.model.vlm.language_model.embed_tokens.weight": g("embed_tokens.weight")}
    out.update({f"pi0.model.vlm.vision_tower.{k}": v for k, v in vis.items()})
    for k in ("weight", "bias"):
        out[f"pi0.model.vlm.multi_modal_projector.linear.{k}"] = g(f"multi_modal_projector.linear.{k}")
    for i in range(nl):
        out.update({f"pi0.model.vlm.language_model.layers.{i}.{k}": v for k, v in mix("vlm", i).items()})
        out.update({f"pi0.model.dit.layers.{i}.{k}": v for k, v in mix("action", i).items()})
    out["pi0.model.vlm.language_model.norm.weight"] = sd.get("joint_model.mixtures.vlm.norm.weight", torch.zeros(hv))  # unused by actions
    out["pi0.model.dit.norm.weight"] = g("joint_model.mixtures.action.norm.weight")
    scale = he ** 0.5  # open-pi-zero multiplies expert inputs by sqrt(He); transformers' Gemma does not
    w2 = g("action_encoder.linear_2.weight")
    et = "pi0.embed_action_time."
    out.update({et + "action_in_proj.weight": g("action_encoder.linear_1.weight"), et + "action_in_proj.bias": g("action_encoder.linear_1.bias"),
                et + "action_time_mlp_in.weight": torch.cat([w2[:, he:], w2[:, :he]], 1), et + "action_time_mlp_in.bias": g("action_encoder.linear_2.bias"),
                et + "action_time_mlp_out.weight": g("action_encoder.linear_3.weight") * scale,
                et + "action_time_mlp_out.bias": g("action_encoder.linear_3.bias") * scale,
                et + "state_proj.weight": g("proprio_encoder.weight") * scale, et + "state_proj.bias": g("proprio_encoder.bias") * scale,
                "pi0.action_out_proj.weight": g("action_decoder.weight"), "pi0.action_out_proj.bias": g("action_decoder.bias")})
    return cfg, out


class CheckpointError(ValueError):
    """A file given as a checkpoint that cannot be used for what it was given for; the message says what the file
    is and what was expected."""


# Model-defining flags: a --resume must repeat them (the checkpoint's model and optimizer were built from them).
RESUME_MODEL_FLAGS = ("preset", "init", "num_inference_steps", "log_sigma_min", "log_sigma_max", "lora_rank",
                      "lora_expert", "freeze_vlm", "freeze_siglip", "value_state", "value_time_to_go",
                      "env.chunk", "env.image_size")


def read_checkpoint(path: str | os.PathLike, expected: str = "a pi0 policy checkpoint (ckpt_*.pt)") -> dict:
    """torch.load with weights_only=True and one clear error for every kind of bad file (missing, truncated, not
    a torch file, another pickle, not a dict); never advises weights_only=False."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected {expected})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors of truncated or foreign files, unsafe globals
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        kind = ("a truncated or corrupt file" if path.stat().st_size and isinstance(e, (RuntimeError, EOFError))
                else "not a weights-only torch checkpoint")
        raise CheckpointError(f"{path}: cannot be read: {kind} ({type(e).__name__}: {why}); expected {expected}. "
                              "Re-copy it, or point at another ckpt_*.pt of the run") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        got = f"a {type(ckpt).__name__}" + (f" with keys {sorted(ckpt)[:6]}" if isinstance(ckpt, dict) else "")
        raise CheckpointError(f"{path}: is {got} with no 'model' entry; expected {expected}")
    stored = ckpt.pop(CONTENT_HASH_KEY, None)  # written by torch_save_atomic (checkpoints older than it have none)
    if stored is not None and stored != content_sha256(ckpt):
        raise CheckpointError(f"{path}: content hash mismatch: the file is corrupt (a flipped bit or a damaged copy; "
                              f"the zip container itself is intact); expected {expected}. Re-copy it, or point at "
                              "another ckpt_*.pt of the run")
    return ckpt


def check_resumable(ckpt: dict, path: str, args: "Args") -> None:
    """A --resume checkpoint must be a PPOFlow checkpoint of this very configuration: checked before anything
    is written, so a wrong resume leaves the run folder as it was."""
    a = ckpt.get("args") or {}
    if ckpt.get("kind") != "pi0_policy":
        raise CheckpointError(f"{path}: not a ppoflow_pi0.py checkpoint (kind {ckpt.get('kind')!r}): --resume takes "
                              "runs/<run>/ckpt_*.pt of an interrupted PPOFlow run; start from other weights with --init")
    if "ratio_power" not in a or "optimizer" not in ckpt or "rng" not in ckpt:
        raise CheckpointError(f"{path}: a train_imitation.py (or other stage's) checkpoint, not a PPOFlow one: pass it "
                              "as --init to start PPOFlow from it; --resume only continues a PPOFlow run")

    def get(d, key):
        for k in key.split("."):
            d = d.get(k) if isinstance(d, dict) else None
        return d
    now = ss.to_dict(args)
    diff = [f"--{k.replace('_', '-')}: checkpoint {get(a, k)!r}, now {get(now, k)!r}"
            for k in RESUME_MODEL_FLAGS if get(a, k) != get(now, k)]
    if diff:
        raise CheckpointError(f"{path}: this run's model flags disagree with the checkpoint's ({'; '.join(diff)}). "
                              "Resume with the original command's flags (see the run's args.json), or start a new run "
                              "with --init instead of --resume")
    free = resume_free_flags(a, now) | allowed_resume_changes(args)
    diff = [f"--{k.replace('_', '-')}: checkpoint {v!r}, now {get(now, k)!r}"
            for k, v in resume_flag_changes(a, now).items() if k not in free]
    if diff:
        raise CheckpointError(f"{path}: a --resume must repeat the run's flags; these differ ({'; '.join(diff)}). "
                              "Resume with the original command's flags (see the run's args.json), name the intended "
                              "ones in --resume-allow-changes, or start a new run from this checkpoint with --init "
                              "and another --out")
    run_dir, own = Path(args.out or f"runs/{args.exp_name}_s{args.seed}").resolve(), a.get("out")
    if Path(path).resolve().parent != run_dir and (own is None or Path(own).resolve() != run_dir):
        raise CheckpointError(f"{path}: a checkpoint of another run (its run folder: {own or Path(path).parent}) "
                              f"resumed into {run_dir}: that run's metric rows would be lost. Resume with --out set to "
                              "the checkpoint's run folder, or start a new run from it with --init")


# Flags a --resume may change: where the run logs and what it runs on, never what it learns. num_iterations only
# with a constant learning rate (it sets the decay of the others).
RESUME_FREE_FLAGS = ("resume", "resume_allow_changes", "dry_run", "device", "track", "wandb_project", "wandb_entity", "wandb_group",
                     "env_workers", "save_every", "keep_checkpoints", "checkpoint_weights", "compile_act", "exp_name",
                     "out")


def resume_free_flags(a: dict, now: dict) -> set[str]:
    free = set(RESUME_FREE_FLAGS)
    if a.get("lr_schedule", "constant") == "constant" == now.get("lr_schedule") and not a.get("warmup_iterations"):
        free.add("num_iterations")
    return free


def allowed_resume_changes(args: "Args") -> set[str]:
    """--resume-allow-changes as Args field names (learning-rate -> learning_rate, env.max-decisions ->
    env.max_decisions); an unknown name or a model flag is an error."""
    known = set(resume_flag_changes(ss.to_dict(args), {}, keys_only=True))
    names = {n.strip().lstrip("-").replace("-", "_") for n in args.resume_allow_changes if n.strip()}
    for n in sorted(names):
        if n in RESUME_MODEL_FLAGS:
            raise CheckpointError(f"--resume-allow-changes {n.replace('_', '-')}: a model flag; the checkpoint's model "
                                  "and optimizer were built from it. Start a new run with --init instead")
        if n not in known:
            raise CheckpointError(f"--resume-allow-changes {n.replace('_', '-')}: not a flag of ppoflow_pi0.py "
                                  "(e.g. learning-rate, num-iterations, gamma, env.max-decisions)")
    return names


def resume_flag_changes(a: dict, now: dict, keys_only: bool = False) -> dict[str, Any]:
    """Flags (dotted for nested ones, e.g. env.chunk) whose value in `now` differs from the checkpoint's args `a`
    -> the checkpoint's value; flags the checkpoint does not record (added to Args later) are not compared."""
    def flat(d: dict, pre: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {pre + k: v})
        return out
    old, new = flat(json.loads(json.dumps(a, default=str))), flat(json.loads(json.dumps(now, default=str)))
    if keys_only:  # every flag name, dotted
        return old
    return {k: v for k, v in old.items() if k in new and new[k] != v}


def truncate_metrics(path: Path, iteration: int) -> int:
    """Keep the metric rows of iterations 1..iteration (once each, the last copy): what a resume from that
    iteration's checkpoint continues after (rows a killed run wrote past its last checkpoint are re-run, so
    they would otherwise appear twice). Returns the number of rows dropped."""
    have = set()
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                have.add(json.loads(line).get("iteration"))
            except (ValueError, AttributeError):  # a torn or foreign line
                pass
    missing = [i for i in range(1, iteration + 1) if i not in have]
    if missing:
        span = f"{missing[0]}-{missing[-1]}" if len(missing) > 1 else str(missing[0])
        raise CheckpointError(f"{path}: a resume from iteration {iteration} needs the metric rows of iterations "
                              f"1-{iteration}, but {len(missing)} are missing ({span}): the checkpoint belongs to "
                              "another run folder, or this one lost its metrics. Resume in the checkpoint's own run "
                              "folder (--out), or start a new run from it with --init")
    if not path.exists():
        return 0
    ss.repair_jsonl_tail(path)
    rows = ss.read_jsonl(path)
    keep = {int(r["iteration"]): r for r in rows if isinstance(r.get("iteration"), int) and r["iteration"] <= iteration}
    text = "".join(json.dumps(keep[i]) + "\n" for i in sorted(keep))
    ss.write_bytes_atomic(path, text.encode("utf-8"))
    return len(rows) - len(keep)


def load_policy(path: str | os.PathLike, device: str = "cpu", stats_file: str = DEFAULT_STATS,
                tokenizer_path: str | None = None, open_pi_zero: dict | None = None, **overrides) -> PI0Policy:
    """Load a policy from our checkpoint (.pt with kind "pi0_policy"), a transformers/lerobot pi0 folder or an
    open-pi-zero .pt (`open_pi_zero`: convert_open_pi_zero keyword arguments). `overrides` replace PolicyConfig
    fields (e.g. num_steps=10, lora_rank=0)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file (expected a ckpt_*.pt, a pi0 folder or an open-pi-zero .pt)")
    tok = {"kind": "hf", "path": str(tokenizer_path)} if tokenizer_path not in (None, "bytes") else {"kind": "bytes"}
    if path.is_dir():  # transformers / lerobot format
        from transformers import PI0ForConditionalGeneration

        pi0 = PI0ForConditionalGeneration.from_pretrained(path)
        if tokenizer_path is None and any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model")):
            tok = {"kind": "hf", "path": str(path)}
        if (path / EXPORT_CONFIG).exists():  # written by export_pretrained: our heads and statistics come back
            from safetensors.torch import load_file

            side = json.loads((path / EXPORT_CONFIG).read_text())
            cfg = PolicyConfig(**{**side["model_config"], "pi0": pi0.config.to_dict(), **overrides})
            policy = PI0Policy(cfg, Normalizer(**side["normalizer"]), tok)
            policy.load_weights({**{f"pi0.{k}": v for k, v in pi0.state_dict().items()}, **load_file(str(path / EXPORT_HEADS))})
            return policy.to(device)
        vocab = pi0.config.vlm_config.text_config.vocab_size
        if tokenizer_path is None and tok["kind"] == "bytes" and vocab != ByteTokenizer.vocab_size:
            raise CheckpointError(f"{path}: a pi0 folder with a {vocab}-token vocabulary and no tokenizer files (fix: "
                                  "--tokenizer-path <tokenizer folder>, save the tokenizer into the folder, or "
                                  "--tokenizer-path bytes to force the byte tokenizer)")
        cfg = PolicyConfig(preset="pretrained", pi0=pi0.config.to_dict(), chunk=pi0.config.chunk_size,
                           image_size=pi0.config.vlm_config.vision_config.image_size)
        cfg = PolicyConfig(**{**asdict(cfg), **overrides})
        policy = PI0Policy(cfg, Normalizer.from_stats_file(stats_file), tok)
        policy.load_weights({f"pi0.{k}": v for k, v in pi0.state_dict().items()})
        return policy.to(device)
    ckpt = read_checkpoint(path, "a ckpt_*.pt of ppoflow_pi0.py / train_imitation.py, or an open-pi-zero .pt")
    if ckpt.get("kind") == "pi0_policy":
        cfg = PolicyConfig(**ckpt["model_config"])
        scaling = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 0.0
        cfg = PolicyConfig(**{**asdict(cfg), **overrides})
        policy = PI0Policy(cfg, Normalizer(**ckpt["normalizer"]), ckpt["tokenizer"])
        policy.load_weights(checkpoint_weights(ckpt, path), scaling)
    else:  # open-pi-zero: {"model": state_dict, ...}
        cfg, sd = convert_open_pi_zero(ckpt["model"], **(open_pi_zero or {}))
        vocab = cfg.pi0["vlm_config"]["text_config"]["vocab_size"]
        if tokenizer_path is None and vocab != ByteTokenizer.vocab_size:
            raise CheckpointError(f"{path}: an open-pi-zero checkpoint with a {vocab}-token vocabulary needs its "
                                  "tokenizer, or the instruction becomes meaningless ids (fix: --tokenizer-path "
                                  "<PaliGemma tokenizer folder>, e.g. a local google/paligemma-3b-pt-224; "
                                  "--tokenizer-path bytes forces the byte tokenizer)")
        cfg = PolicyConfig(**{**asdict(cfg), **overrides})
        policy = PI0Policy(cfg, Normalizer.from_stats_file(stats_file), tok)
        policy.load_weights(sd)
    return policy.to(device)


def frozen_fingerprint(policy: PI0Policy) -> str:
    """sha256 over the names, shapes and first 4096 values of every frozen parameter: cheap at pi0-3b, and a
    checkpoint that refers to its --init can tell that the file there now holds other weights."""
    return content_sha256({n: p.detach().flatten()[:4096] for n, p in policy.named_parameters() if not p.requires_grad})


def init_reference(args: "Args") -> dict:
    """What a "changed"-weights checkpoint records about its --init: enough for `checkpoint_weights` to rebuild the
    frozen weights exactly as `build_policy` made them."""
    return {"init": str(Path(args.init).resolve()), "stats_file": args.stats_file, "tokenizer_path": args.tokenizer_path,
            "open_pi_zero": {"num_kv_heads": args.init_num_kv_heads, "vision_heads": args.init_vision_heads}}


def checkpoint_weights(ckpt: dict, path: str | os.PathLike = "checkpoint") -> dict:
    """The full state dict of a pi0_policy checkpoint in its own layout. A checkpoint written with a `base` reference
    holds only the trainable entries: the frozen ones are rebuilt from its --init (as `build_policy` did) and checked
    against the fingerprint stored at save time."""
    if "base" not in ckpt:
        return ckpt["model"]
    b = ckpt["base"]
    if not Path(b["init"]).exists():
        raise CheckpointError(f"{path}: holds only the weights training changed; the frozen ones come from its --init "
                              f"{b['init']}, which does not exist (fix: put that file back at this path; a run whose "
                              "checkpoints must move without it trains with --checkpoint-weights full)")
    src = load_policy(b["init"], stats_file=b["stats_file"], tokenizer_path=b["tokenizer_path"],
                      open_pi_zero=b.get("open_pi_zero"))
    policy = PI0Policy(PolicyConfig(**ckpt["model_config"]), Normalizer(**ckpt["normalizer"]), ckpt["tokenizer"])
    policy.load_weights(src.state_dict(), src.lora_scaling())
    del src
    if frozen_fingerprint(policy) != b["frozen_sha256"]:
        raise CheckpointError(f"{path}: its --init {b['init']} now holds other weights than the ones this run was "
                              "trained from (frozen-weight fingerprint mismatch): restore the original --init file")
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    missing, unexpected = policy.load_state_dict(ckpt["model"], strict=False)
    if set(missing) != frozen or unexpected:
        raise CheckpointError(f"{path}: its weights do not fit its model config (missing {sorted(set(missing) - frozen)[:5]}, "
                              f"unexpected {list(unexpected)[:5]}); the file is not a checkpoint of this code")
    return policy.state_dict()


EXPORT_CONFIG, EXPORT_HEADS = "policy_config.json", "policy_heads.safetensors"


def merged_pi0(policy: PI0Policy) -> nn.Module:
    """A copy of `policy.pi0` whose LoRA adapters peft has merged into the base weights and removed (plain
    transformers modules again), as transformers' PI0 runs it alone: the action expert's token embedding (never read:
    PI0Policy drops it) is back as zeros, so from_pretrained finds every key, and the padding rows / columns of the
    action and state projections (past action_dim / state_dim; this policy feeds zeros there and drops those outputs)
    are zero, so transformers' own sample_actions over max_action_dim dims follows the policy's chain exactly."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    pi0 = copy.deepcopy(policy.pi0)
    for name, mod in list(pi0.named_modules()):
        if isinstance(mod, BaseTunerLayer):
            mod.merge()
            parent, _, attr = name.rpartition(".")
            setattr(pi0.get_submodule(parent) if parent else pi0, attr, mod.get_base_layer())
    dit, w = pi0.config.dit_config, pi0.action_out_proj.weight
    pi0.model.dit.embed_tokens = nn.Embedding(dit.vocab_size, dit.hidden_size, dit.pad_token_id, device=w.device,
                                              dtype=w.dtype)
    with torch.no_grad():
        nn.init.zeros_(pi0.model.dit.embed_tokens.weight)
        A, S = policy.config.action_dim, policy.config.state_dim
        pi0.action_out_proj.weight[A:] = 0
        pi0.action_out_proj.bias[A:] = 0
        pi0.embed_action_time.action_in_proj.weight[:, A:] = 0
        pi0.embed_action_time.state_proj.weight[:, S:] = 0
    return pi0


def processor_stats(n: Normalizer) -> dict:
    """The policy's normalisation as transformers' PI0Processor applies it, (x - mean) / std: "bound" p01/p99 -> [-1, 1]
    is mean = (lo + hi) / 2, std = (hi - lo) / 2 (the policy then clips the state to [-1, 1]); the gripper action
    [-1, 1] -> openness [0, 1] is mean -1, std 2."""
    def ms(lo, hi):
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if n.kind != "bound":
            return lo.tolist(), hi.tolist()
        half = np.maximum(hi - lo, 1e-6) / 2
        return (lo + half).tolist(), half.tolist()
    sm, sd = ms(n.state_lo, n.state_hi)
    am, ad = ms(n.action_lo, n.action_hi)
    return {"state_mean": sm, "state_std": sd, "actions_mean": am + [-1.0], "actions_std": ad + [2.0]}


def norm_stats(n: Normalizer) -> dict:
    """openpi's norm_stats.json ({"norm_stats": {"state" | "actions": {mean, std, q01, q99}}}): its quantile
    normalisation, (x - q01) / (q99 - q01) * 2 - 1, is this policy's "bound" one."""
    p = processor_stats(n)
    return {"norm_stats": {"state": {"mean": p["state_mean"], "std": p["state_std"], "q01": list(n.state_lo),
                                     "q99": list(n.state_hi)},
                           "actions": {"mean": p["actions_mean"], "std": p["actions_std"],
                                       "q01": list(n.action_lo) + [-1.0], "q99": list(n.action_hi) + [1.0]}},
            "normalization": n.kind, "gripper": "the model predicts openness in [0, 1]: > 0.5 -> +1 open, else -1 close"}


def _flags(d: dict, prefix: str = "") -> list[str]:
    """A tyro command line that sets the arguments in `d` (nested dataclasses as --env.x)."""
    out = []
    for k, v in d.items():
        name = f"{prefix}{k.replace('_', '-')}"
        if isinstance(v, dict):
            out += _flags(v, f"{name}.")
        elif isinstance(v, bool):
            out.append(f"--{name}" if v else f"--{prefix}no-{k.replace('_', '-')}")
        elif isinstance(v, (list, tuple)):
            out += [f"--{name}", *map(str, v)] if v else []
        elif v is not None:
            out += [f"--{name}", str(v)]
    return out


_CARD_CAVEAT = """
**Caveat**: this checkpoint was trained in another flow-time / position / soft-capping convention than transformers'
PI0 (see `policy_config.json`): `sample_actions` does not reproduce it; load it with the project's `load_policy`.
"""

_CARD_ESTIMATE = """
**Caveat**: this policy's state token carries the proprio AND 14 object features that its `object_state_probe`
(in `policy_heads.safetensors`) estimates from the image{}; transformers' PI0 alone does not compute them, so
`sample_actions` does not reproduce it: load it with the project's `load_policy`.
"""


def model_card(policy: PI0Policy, source: dict | None = None) -> str:
    """README.md of an exported folder: what trained it (command and arguments), on what data, what it reached, and
    how to run it with transformers alone. `source` (export_source): the checkpoint's path, args, iteration, demos and
    the run's last metrics."""
    import shlex

    source, c = source or {}, policy.config
    a = source.get("args") or {}
    stage = "ppoflow_pi0.py" if "ratio_power" in a else "train_imitation.py" if a else None
    diff = a
    if stage == "ppoflow_pi0.py":  # the flags that differ from the defaults (every argument: the run's args.json)
        dflt = ss.to_dict(Args())
        diff = {k: v for k, v in a.items() if dflt.get(k) != v and k != "env"}
        diff["env"] = {k: v for k, v in (a.get("env") or {}).items() if (dflt.get("env") or {}).get(k) != v}
    cmd = f"python {stage} " + " ".join(shlex.quote(x) for x in _flags(diff)) if stage else "(not in the checkpoint)"
    data = ", ".join(a.get("scene_ids") or []) or f"the composed scenes of `{a.get('scenes_dir', '?')}`"
    demos = source.get("demos")
    data += (f"; scripted-expert demos: {json.dumps(demos)}" if demos else
             "; PPOFlow rollouts in those scenes" if stage == "ppoflow_pi0.py" else "")
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in (source.get("metrics") or {}).items()
            if k.startswith(("charts/success", "eval/", "charts/time_to_finish", "losses/flow", "iteration", "step"))]
    same = c.flow_time == "transformers" and c.positions == "transformers" and not c.attn_softcap
    kind = "bound (p01 / p99 -> [-1, 1]) written as mean / std" if policy.normalizer.kind == "bound" else "mean / std"
    img, T = c.image_size, c.max_text_tokens
    estimate_note = "" if c.image_in_prefix else ", and the image enters its prefix no other way"
    return f"""---
library_name: transformers
pipeline_tag: robotics
tags: [pi0, robotics, vla, maniskill, widowx]
---

# pi0 policy (`{c.preset}` preset) for the WidowX 250 S in generated ManiSkill 3 scenes

A `PI0ForConditionalGeneration` exported by `python ppoflow_pi0.py export` from `{source.get('ckpt', '?')}`
(iteration {source.get('iteration', '?')}).

- **Trained by**: `{cmd}` (every argument: the run's `args.json`)
- **Data**: {data}
- **Observation**: one {img}x{img} RGB image (the Bridge 3rd-view camera), the instruction, the robot state
  [ee x, y, z, roll, pitch, yaw, gripper opening 0..1] in the robot base frame.
- **Action**: a chunk of {c.chunk} control steps (5 Hz) of [ee delta xyz (m), delta rpy (rad), gripper +1 open / -1 close].
- **Inference**: K = {c.num_steps} Euler step(s) (`config.num_inference_steps`), chunk {c.chunk} (`config.chunk_size`).

## Results (the run's last metrics)

| metric | value |
|---|---|
{chr(10).join(rows) or '| (no metrics.jsonl beside the checkpoint) | |'}

## Run it with transformers alone

```python
import torch
from transformers import AutoProcessor, PI0ForConditionalGeneration

model = PI0ForConditionalGeneration.from_pretrained("<this folder>").eval()
processor = AutoProcessor.from_pretrained("<this folder>")
inputs = processor(images=[image], text=["put the carrot on the plate"], state=[state],  # image: {img}x{img} uint8 RGB
                   max_length=processor.image_seq_length + {T}, truncation=True)
inputs["state"] = inputs["state"].clamp(-1, 1)  # the policy clips its normalised state
out = model.sample_actions(**inputs)[0, :, :7].clamp(-1, 1)  # [chunk, 7] normalised (K and chunk: config.json)
mean, std = torch.tensor(processor.actions_mean), torch.tensor(processor.actions_std)
action = out * std + mean  # ee deltas in env units
action[:, 6] = torch.where(out[:, 6] > 0.5, 1.0, -1.0)  # gripper: openness > 0.5 -> +1 open, else -1 close
```

`noise=` (shape [1, {c.chunk}, config.max_action_dim]) makes it deterministic. The normalisation statistics
({kind}) are PI0Processor's state / actions mean and std in `processor_config.json`, and in openpi's layout in
`norm_stats.json`.
{'' if same else _CARD_CAVEAT}{_CARD_ESTIMATE.format(estimate_note) if c.estimate_object_state else ''}
## With the project

`ppoflow_pi0.load_policy("<this folder>")` restores the whole policy (noise and value heads from
`policy_heads.safetensors`, conventions and statistics from `policy_config.json`) for evaluation or more PPOFlow.
"""


def _pi0_processor(policy: PI0Policy, tokenizer):
    """transformers' PI0Processor for this policy: its image size (SigLIP's PIL image processor: PI0's own needs
    torchvision, which has no CPU build for this torch), image tokens per image, statistics and chunk."""
    from transformers import PI0Processor, SiglipImageProcessorPil

    vis, s = policy.pi0.config.vlm_config.vision_config, policy.config.image_size
    improc = SiglipImageProcessorPil(size={"height": s, "width": s})
    improc.image_seq_length = (vis.image_size // vis.patch_size) ** 2  # PI0Processor reads it (saved with it)
    return PI0Processor(image_processor=improc, tokenizer=tokenizer, max_state_dim=policy.pi0.config.max_state_dim,
                        chunk_size=policy.config.chunk, **processor_stats(policy.normalizer))


def export_pretrained(policy: PI0Policy, folder: str | os.PathLike, source: dict | None = None) -> Path:
    """The policy as a transformers folder that `PI0ForConditionalGeneration.from_pretrained` reads without warnings:
    config.json (the policy's K as num_inference_steps, its chunk as chunk_size) + model.safetensors (LoRA merged), a
    PI0Processor (AutoProcessor: tokenizer, image processor, state / action statistics), norm_stats.json (openpi's
    layout), a model card README.md (`source`: export_source), and two side files `load_policy` reads back:
    policy_config.json (chunk, K, sigma bounds, time / position conventions, normalisation statistics) and
    policy_heads.safetensors (noise and value heads)."""
    from safetensors.torch import save_file

    import shutil

    if policy.config.obs_mode != "rgb":  # transformers' PI0 reads images; the proxy's state is simulator-only
        raise ValueError("ppoflow_pi0.py export: this is an object-state proxy policy (obs_mode 'state'): transformers' "
                         "PI0 has no input for simulator object poses (fix: export a pixel policy, --env.obs-mode rgb)")
    final = Path(folder)
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"export: {final} exists and is not empty (fix: another --out, or remove it)")
    out = final.with_name(f".{final.name}.tmp-{os.getpid()}")  # written whole, then renamed: no half-exported folder
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pi0 = merged_pi0(policy)
    for c in (pi0.config.vlm_config.text_config, pi0.config.dit_config):
        c._attn_implementation = "eager"  # soft-capping is ours: policy_config.json's attn_softcap restores it
    pi0.config.num_inference_steps, pi0.config.chunk_size = policy.config.num_steps, policy.config.chunk
    if policy.tokenizer_spec.get("kind") == "hf":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(policy.tokenizer_spec["path"])
    else:
        tok = ByteTokenizer().as_pretrained()
    processor = _pi0_processor(policy, tok)  # adds PaliGemma's <image> (and <loc>/<seg>) tokens to the tokenizer
    pi0.config.vlm_config.image_token_id = processor.image_token_id  # what the processor writes per image token
    pi0.save_pretrained(out)
    processor.save_pretrained(out)
    ss.write_json_atomic(out / "norm_stats.json", norm_stats(policy.normalizer))
    sd = policy.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()
               if k.startswith(("noise_head.", "value_head.", "object_state_probe."))},
              str(out / EXPORT_HEADS))
    cfg = {**asdict(policy.config), "lora_rank": 0, "lora_expert": False, "pi0": {}}  # pi0: config.json
    ss.write_json_atomic(out / EXPORT_CONFIG, {"schema_version": CKPT_SCHEMA_VERSION, "model_config": cfg,
                                               "normalizer": asdict(policy.normalizer)})
    ss.write_bytes_atomic(out / "README.md", model_card(policy, source).encode("utf-8"))
    if final.exists():
        final.rmdir()  # empty (checked above)
    out.rename(final)
    return final


CONTENT_HASH_KEY = "content_sha256"


def content_sha256(obj: Any) -> str:
    """sha256 of a checkpoint's content (dict keys sorted, every tensor's dtype, shape and bytes): what
    torch_save_atomic stores and read_checkpoint verifies, so a flipped bit inside an intact zip is caught."""
    import hashlib

    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())
    walk(obj)
    return h.hexdigest()


def export_source(ckpt_path: str | os.PathLike) -> dict:
    """What the model card says about a checkpoint: its path, args, iteration, demos, and the last value of every
    metric in the run's metrics.jsonl beside it."""
    ck, mpath = read_checkpoint(ckpt_path), Path(ckpt_path).parent / "metrics.jsonl"
    last = {}
    for r in ss.read_jsonl(mpath) if mpath.exists() else []:
        last.update({k: v for k, v in r.items() if v is not None})
    return {"ckpt": str(ckpt_path), "args": ck.get("args"), "iteration": ck.get("iteration"), "demos": ck.get("demos"),
            "metrics": last}


def torch_save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temp file and a rename (a kill leaves the old file or the new one, never half of one);
    a policy checkpoint gets its content hash. remove_stale_tmp cleans the temp files of killed saves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, dict) and obj.get("kind") == "pi0_policy":
        obj = {**obj, CONTENT_HASH_KEY: content_sha256({k: v for k, v in obj.items() if k != CONTENT_HASH_KEY})}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete the temp files torch_save_atomic leaves when a save is killed (`.<name>.<pid>.<random>.tmp`, GBs at
    pi0-3b), except those of a process still alive. Returns what was removed."""
    removed = []
    for f in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else []:
        parts = f.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # a live process is writing it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        f.unlink(missing_ok=True)
        removed.append(f)
    return removed


def policy_checkpoint(policy: PI0Policy, base: dict | None = None, **extra) -> dict:
    """The checkpoint contract (SPEC section 2); `extra` adds optimizer, scheduler, rng, iteration, args. With `base`
    (`init_reference`) "model" holds only the trainable entries and "base" says where the frozen ones come from
    (`checkpoint_weights` puts them back)."""
    sd = policy.state_dict()
    if base is not None:
        frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
        sd = {k: v for k, v in sd.items() if k not in frozen}
        extra["base"] = {**base, "frozen_sha256": frozen_fingerprint(policy)}
    return {"schema_version": CKPT_SCHEMA_VERSION, "kind": "pi0_policy", "model_config": asdict(policy.config),
            "normalizer": asdict(policy.normalizer), "tokenizer": policy.tokenizer_spec,
            "model": {k: v.detach().cpu() for k, v in sd.items()}, **extra}


def numbered_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The ckpt_<iteration or step>.pt of a run folder, oldest first (ckpt_final.pt is not one of them)."""
    found = ((int(m.group(1)), f) for f in Path(folder).glob("ckpt_*.pt")
             if (m := re.fullmatch(r"ckpt_(\d+)\.pt", f.name)))
    return [f for _, f in sorted(found)]


def rotate_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` ckpt_<iteration>.pt of a run folder (ckpt_final.pt is not one of them).
    Returns what was removed."""
    if keep <= 0:
        return []
    old = numbered_checkpoints(folder)[:-keep]
    for f in old:
        f.unlink(missing_ok=True)
    return old


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
            "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(s["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# =============================================================================================
# Rollout, update, evaluation
# =============================================================================================


def _to(inp: dict, device) -> dict:
    return {k: v.to(device) for k, v in inp.items()}


def _rows(obs: dict, idx: list[int]) -> dict:
    return {k: (v[idx] if hasattr(v, "shape") else [v[i] for i in idx]) for k, v in obs.items()}


def autocast(device, dtype: str):
    """bf16 autocast of the forward passes (a no-op for float32): weights stay fp32 masters."""
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


@torch.no_grad()
def rollout(policy: PI0Policy, envs, num_steps: int, gamma: float, seed: int, device,
            bootstrap_truncated: bool = True, max_decisions: int | None = None, dtype: str = "float32",
            act_fn: Callable | None = None) -> tuple[dict, dict]:
    """Collect num_steps decisions from every env (reset with `seed`). Stores the whole chain A^0..A^K, old
    log-probs and values; truncated episodes get gamma * V(final obs) added to their last reward (unless
    `bootstrap_truncated` is off: then a time-out ends the episode like a failure). With a time-aware value head
    (config.value_time) also the time to go of every decision (`max_decisions`, default envs.max_decisions)."""
    policy.eval()
    obs, _ = envs.reset(seed=seed)
    N = envs.num_envs
    T_max = max_decisions or getattr(envs, "max_decisions", None)
    if policy.config.value_time and not T_max:
        raise ValueError("ppoflow_pi0.py: rollout: --value-time-to-go needs the episode length (fix: pass "
                         "max_decisions=args.env.max_decisions)")
    ttg = (lambda n: time_to_go(n, T_max)) if policy.config.value_time else (lambda n: None)  # [N] or None
    keys = ("rgb", "state", "ids", "mask", "chain", "logp", "value", "time_left", "reward", "done")
    buf: dict[str, list] = {k: [] for k in keys}
    ep_ret, ep_stats, sigmas = torch.zeros(N), {"return": [], "success": [], "time_to_finish": [], "length": []}, []
    ep_len = torch.zeros(N)
    sample = act_fn or (lambda inp, tl: _sample(policy, inp, tl, device))
    for _ in range(num_steps):
        inp = policy.obs_to_inputs(obs)
        time_left = ttg(ep_len)  # [N] before this decision (None without a time input)
        with autocast(device, dtype):
            chain, logp, log_std, value = sample(inp, time_left)  # [N, K+1, C, A], [N], .., [N]
        value = value.float()
        obs, reward, term, trunc, info = envs.step(policy.normalizer.env_action(chain[:, -1], policy.config.action_clip).cpu())
        reward, term, trunc = torch.as_tensor(reward).float().cpu(), torch.as_tensor(term).bool().cpu(), torch.as_tensor(trunc).bool().cpu()
        ep_ret += reward
        ep_len += 1
        boot = (trunc & ~term).nonzero().flatten().tolist() if bootstrap_truncated else []
        if boot:  # time limit, not a failure: bootstrap from the pre-reset observation  # ALGO LOGIC
            final = policy.obs_to_inputs(_rows(info["final_observation"], boot))
            tl = ttg(ep_len[boot])  # 0 at the time limit
            with autocast(device, dtype):
                reward[boot] += gamma * policy.value(policy.encode(_to(final, device)), tl).float().cpu()
        done = term | trunc
        for i in done.nonzero().flatten().tolist():
            succ = bool(torch.as_tensor(info["success"])[i])
            ep_stats["return"].append(float(ep_ret[i]))
            ep_stats["success"].append(float(succ))
            ep_stats["length"].append(float(ep_len[i]))
            if succ:
                ep_stats["time_to_finish"].append(float(torch.as_tensor(info["elapsed_s"])[i]))
        ep_ret[done], ep_len[done] = 0.0, 0.0
        for k, v in (*inp.items(), ("chain", chain.cpu()), ("logp", logp.cpu()), ("value", value.cpu()),
                     ("time_left", time_left), ("reward", reward), ("done", done)):
            if v is not None:
                buf[k].append(v)
        sigmas.append(log_std.exp().cpu())
    batch = {k: torch.stack(v) for k, v in buf.items() if v}  # [T, N, ...]
    with autocast(device, dtype):
        batch["last_value"] = policy.value(policy.encode(_to(policy.obs_to_inputs(obs), device)), ttg(ep_len)).float().cpu()
    sig = torch.stack(sigmas)
    ep_stats.update(sigma_mean=[float(sig.mean())], sigma_min=[float(sig.min())], sigma_max=[float(sig.max())])
    return batch, ep_stats


def _sample(policy: PI0Policy, inp: dict, time_left, device):
    """One rollout decision: prefix once, the sampled chain with its log-prob, and V (the act() path)."""
    prefix = policy.encode(_to(inp, device))
    chain, logp, log_std = policy.chain(prefix)
    return chain, logp, log_std, policy.value(prefix, time_left)


def restore_rng(saved: list[dict], seed: int, iteration: int, rank: int, world: int) -> None:
    """A resume's RNG: each rank's saved stream when the world size is the one saved; otherwise (no stream saved for
    this rank layout) each rank is reseeded from (seed, iteration, rank): its own stream, never a copy of rank 0's."""
    if len(saved) == world:
        set_rng_state(saved[rank])
        return
    seed_everything(env_seed(seed, iteration, rank, 3))
    if rank == 0:
        print(f"[ppoflow] resumed on {world} rank(s) from a {len(saved)}-rank checkpoint: each rank's RNG is reseeded "
              f"from (seed, iteration {iteration}, rank), so this run is not bitwise the uninterrupted one")


def allreduce_grads(params: list[torch.Tensor], world: int) -> None:
    """DDP by hand: the gradient all-reduce (mean) is the only sync between ranks."""
    if world == 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        p.grad = g


def ppo_update(policy: PI0Policy, optimizer, batch: dict, adv: torch.Tensor, ret: torch.Tensor, args: Args,
               world: int, device, train_policy: bool = True, demos: dict | None = None) -> dict:
    """Eq. 6-7 over minibatches for `update_epochs` epochs (fewer when --target-kl stops it); returns averaged
    statistics. train_policy False (critic warm-up) drops the policy's gradients before the step, so Adam's moments
    do not fill up with them either. `demos` (rgb/state/ids/mask + model-space "target" chunks) feed the
    --demo-bc-coef anchor."""
    policy.train()
    keys = policy.input_keys  # model inputs: rgb (not under the object-state proxy), state, ids, mask
    flat = {k: batch[k].flatten(0, 1) for k in (*keys, "chain", "logp", "value", "time_left") if k in batch}
    adv, ret = adv.flatten(), ret.flatten()
    if args.norm_adv and args.adv_norm_scope == "batch":
        adv = normalize_advantages(adv, world)  # whole batch, all ranks  # ALGO LOGIC
    B = adv.shape[0]
    mb = max(1, min(B, args.minibatch_size // world))
    micro = args.micro_batch_size or mb
    params = [p for p in policy.parameters() if p.requires_grad]
    critic = [p for n, p in policy.named_parameters() if n.startswith("value_head.")]
    actor = [p for n, p in policy.named_parameters() if p.requires_grad and not n.startswith("value_head.")]
    stats: dict[str, list] = {}
    epochs_run, stop = 0, False
    perms = [torch.randperm(B) for _ in range(args.update_epochs)]
    if args.dtype == "bfloat16":  # re-score the rollout's chains with the update's forward (shapes): ratio 1 at start
        flat["logp"] = flat["logp"].clone()
        with torch.no_grad():
            for start in range(0, B - mb + 1, mb):
                for m0 in range(0, mb, micro):
                    sub = perms[0][start : start + mb][m0 : m0 + micro]
                    with autocast(device, args.dtype):
                        inp = _to({k: flat[k][sub] for k in keys}, device)
                        flat["logp"][sub] = policy.chain(policy.encode(inp), chain=flat["chain"][sub].to(device))[1].float().cpu()
    for perm in perms:
        epochs_run += 1
        epoch_kl = []
        for start in range(0, B - mb + 1, mb):
            idx = perm[start : start + mb]
            mb_adv = adv[idx]
            if args.norm_adv and args.adv_norm_scope == "minibatch" and len(idx) > 1:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            optimizer.zero_grad(set_to_none=True)
            for m0 in range(0, mb, micro):
                sub = idx[m0 : m0 + micro]
                inp = _to({k: flat[k][sub] for k in keys}, device)
                chain = flat["chain"][sub].to(device)
                with autocast(device, args.dtype):
                    prefix = policy.encode(inp)
                    _, logp, log_std = policy.chain(prefix, chain=chain)
                    value = policy.value(prefix, flat["time_left"][sub] if "time_left" in flat else None).float()
                pg, s = ppo_loss(logp, flat["logp"][sub].to(device), mb_adv[m0 : m0 + micro].to(device),
                                 args.ratio_power, args.clip_coef)
                v_loss = value_loss(value, flat["value"][sub].to(device), ret[sub].to(device), args.value_clip)
                entropy = (log_std + 0.5 + LOG_SQRT_2PI).sum((1, 2, 3)).mean()  # Gaussian entropy of the chain
                loss = pg + args.vf_coef * v_loss - args.ent_coef * entropy  # ALGO LOGIC
                if args.bc_coef > 0 and (pos := mb_adv[m0 : m0 + micro] > 0).any():  # self-imitation on good chunks
                    loss = loss + args.bc_coef * policy.flow_matching_loss(_to({k: v[pos] for k, v in inp.items()}, device),
                                                                           chain[pos.to(device), -1].clamp(-1, 1))
                (loss * len(sub) / mb).backward()
                s.update(pg_loss=pg, v_loss=v_loss, entropy=entropy, loss=loss)
                for k, v in s.items():
                    stats.setdefault(k, []).append(float(v.detach()))
                epoch_kl.append(float(s["approx_kl"]))
            if args.target_kl is not None and args.target_kl_scope == "minibatch":  # ALGO LOGIC
                mb_kl = float(allreduce_sum(torch.tensor([float(np.mean(epoch_kl[-math.ceil(mb / micro):]))],
                                                         dtype=torch.float64), world)) / world
                if mb_kl > args.target_kl:  # this step would leave the trust region: skip it and stop
                    optimizer.zero_grad(set_to_none=True)
                    stop = True
                    break
            if args.demo_bc_coef > 0 and demos is not None and train_policy:  # BC anchor to the demos (Eq. 1)
                d = torch.randint(0, demos["target"].shape[0], (min(args.demo_batch_size, demos["target"].shape[0]),))
                bc_sum = 0.0
                for d0 in range(0, len(d), micro):  # the PPO micro-batches' size and precision: same peak memory
                    dm = d[d0 : d0 + micro]
                    with autocast(device, args.dtype):
                        bc = policy.flow_matching_loss(_to({k: demos[k][dm] for k in keys}, device),
                                                       demos["target"][dm].to(device)).float()
                    (args.demo_bc_coef * bc * len(dm) / len(d)).backward()
                    bc_sum += float(bc.detach()) * len(dm)
                stats.setdefault("demo_bc_loss", []).append(bc_sum / len(d))
            allreduce_grads(params, world)
            if not train_policy:
                for p in actor:
                    p.grad = None  # the optimizer skips parameters without a gradient
            gn = nn.utils.clip_grad_norm_(actor, args.max_grad_norm)  # ALGO LOGIC
            stats.setdefault("value_grad_norm", []).append(float(nn.utils.clip_grad_norm_(critic, args.max_grad_norm)))
            optimizer.step()
            stats.setdefault("grad_norm", []).append(float(gn))
        kl = float(allreduce_sum(torch.tensor([float(np.mean(epoch_kl)) if epoch_kl else 0.0], dtype=torch.float64),
                                 world)) / world  # same value on every rank: all stop together
        stats.setdefault("epoch_kl", []).append(kl)
        if stop or (args.target_kl is not None and args.target_kl_scope == "epoch" and kl > args.target_kl):  # ALGO LOGIC
            break
    out = {k: float(min(v) if k.endswith("_min") else max(v) if k.endswith("_max") else np.mean(v))
           for k, v in stats.items()}  # over minibatches; extremes stay extremes
    out["epochs_run"] = float(epochs_run)
    out["kl_stops"] = float(stop)
    out["grad_steps"] = float(len(stats.get("grad_norm", [])))
    out["explained_variance"] = explained_variance(flat["value"], ret, world)  # every rank's batch
    return out


@torch.no_grad()
def evaluate(policy: PI0Policy, envs, seed: int, max_decisions: int) -> dict:
    """One deterministic (sigma = 0) episode per env: success rate and time to finish of successes. Runs on a
    forked, seeded RNG so evaluating never changes the training run's random stream."""
    policy.eval()
    dev = policy.pi0.action_out_proj.weight.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        obs, _ = envs.reset(seed=seed)
        N = envs.num_envs
        ended, success, tf = torch.zeros(N, dtype=torch.bool), torch.zeros(N), torch.zeros(N)
        for _ in range(max_decisions):
            obs, _, term, trunc, info = envs.step(policy.act(obs, deterministic=True))
            new = (torch.as_tensor(term) | torch.as_tensor(trunc)).cpu() & ~ended
            success[new] = torch.as_tensor(info["success"]).float().cpu()[new]
            tf[new] = torch.as_tensor(info["elapsed_s"]).float().cpu()[new]
            ended |= new
            if ended.all():
                break
    return {"success": success.tolist(), "time_to_finish": tf[success > 0].tolist()}


# =============================================================================================
# main
# =============================================================================================


def resolve_scenes(args: Args) -> list[str]:
    """Training scenes: --splits-file H_i, else --scene-ids, else every manifest; then the first N."""
    if args.splits_file:
        sp = ss.load_splits(args.splits_file)
        match = [s for s in sp.splits if s.get("index") == args.split_index]
        if not match:
            raise ss.SchemaError(args.splits_file, "splits", f"no split with index {args.split_index}")
        ids = list(match[0]["id"])
    else:
        ids = list(args.scene_ids) if args.scene_ids else None
    if ids is None:
        scenes = [str(p) for p in ss.find_manifests(args.scenes_dir)]
    else:
        gen = [i for i in ids if not i.startswith("simpler:")]
        found = {Path(p).parent.name: str(p) for p in ss.find_manifests(args.scenes_dir, gen)} if gen else {}
        scenes = [i if i.startswith("simpler:") else found[i] for i in ids]
    scenes = scenes[: args.num_train_scenes] if args.num_train_scenes else scenes
    if not scenes:
        raise ss.SchemaError(args.scenes_dir, "", "no training scenes: compose scenes first or pass --scene-ids")
    return scenes


def load_demo_batch(args: Args, policy: PI0Policy) -> dict:
    """The --demos of the BC anchor: model inputs plus model-space target chunks [M, C, A] (this policy's normaliser)."""
    if not args.demos or not Path(args.demos).exists():
        raise FileNotFoundError(f"ppoflow_pi0.py: --demos: {args.demos!r} does not exist, but --demo-bc-coef "
                                f"{args.demo_bc_coef} needs it (fix: pass the demos.pt written by train_imitation.py)")
    d = torch.load(args.demos, map_location="cpu", weights_only=True)
    missing = [k for k in (*policy.input_keys, "action") if k not in d]
    if missing:
        raise ss.SchemaError(args.demos, "demos", f"missing {missing} (fix: use a demos.pt of train_imitation.py made "
                                                  f"with --env.obs-mode {policy.config.obs_mode})")
    if d["state"].shape[-1] != policy.observed_state_dim:  # what the env gave (not an estimate the policy makes)
        raise ss.SchemaError(args.demos, "demos", f"states have {d['state'].shape[-1]} dims, the policy reads "
                                                  f"{policy.observed_state_dim} (fix: demos of the same --env.obs-mode)")
    out = {k: d[k] for k in policy.input_keys}
    out["target"] = policy.normalizer.action(d["action"].float())
    return out


def memory_estimate(args: Args, world: int = 1) -> dict:
    """Parameter counts and a peak-memory estimate per rank for this run's model and flags (`memory_estimate_for`),
    from a model built on the meta device (nothing is allocated)."""
    if args.init is None:
        cfg = preset_config(args.preset, args.env.chunk, **finetune_overrides(args))
    else:  # our checkpoint: its architecture with this run's fine-tuning mode (other formats: the --preset's sizes)
        ck = None if Path(args.init).is_dir() else read_checkpoint(args.init, "a policy checkpoint")
        base = PolicyConfig(**ck["model_config"]) if ck and ck.get("kind") == "pi0_policy" else preset_config(args.preset)
        cfg = PolicyConfig(**{**asdict(base), **finetune_overrides(args)})
    micro = args.micro_batch_size or max(1, args.minibatch_size // world)
    return memory_estimate_for(cfg, micro, world, args.dtype, args.grad_checkpointing)


def _layer_activation_bytes(s: int, kv_len: int, h: int, inter: int, heads: int, head_dim: int, act_bytes: int,
                            gated: bool) -> int:
    """Bytes autograd keeps for one sample through one transformer layer of transformers' eager Gemma / SigLIP code
    (s query tokens attending to kv_len keys): two norms (their input and output, computed in fp32: 4 s h at 4 bytes),
    q, the repeated k and v, the attention output (s + 2 kv_len + s) heads head_dim, the fp32 softmax output (plus its
    bf16 copy under autocast), and the MLP's intermediates (gated: gate, act(gate), up, product = 4 s inter; else fc1
    and its gelu = 2 s inter). Checked against saved-tensor counts at pi0-3b width (tests/test_gpu_paths.py)."""
    scores = heads * s * kv_len * (4 + (act_bytes if act_bytes < 4 else 0))
    return (4 * s * h * 4 + (2 * s + 2 * kv_len) * heads * head_dim * act_bytes + scores
            + (4 if gated else 2) * s * inter * act_bytes)


def memory_estimate_for(cfg: PolicyConfig, micro: int, world: int = 1, dtype: str = "float32",
                        grad_checkpointing: bool = False) -> dict:
    """Peak training memory per rank (bytes, reported in GB) of a policy config:
    - weights: fp32 masters of every parameter, plus under bf16 autocast the bf16 copy of every weight the forward
      casts (frozen ones too), kept by the graph until backward;
    - grads + AdamW: 4 + 8 bytes per trainable parameter, plus the flat all-reduce buffer (4 bytes each) with > 1 rank;
    - activations of one micro-batch (`_layer_activation_bytes` per layer of SigLIP, the Gemma prefix and the expert's
      K steps, each step attending to the prefix); with --grad-checkpointing only every layer's input plus one
      layer's full activations (the recompute).
    The demo-BC anchor runs in the same micro-batches under the same autocast, after the PPO micro-batches' backward.
    Calibrated against a CPU measurement at pi0-3b width (tests/test_gpu_paths.py: within 15%); allocator
    fragmentation and the CUDA context (~0.5-1 GB) come on top."""
    with torch.device("meta"):
        policy = PI0Policy(cfg, Normalizer.from_stats_file(DEFAULT_STATS), {"kind": "bytes"})
    c = policy.config
    total = sum(p.numel() for p in policy.parameters())
    train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    text, dit, vis = c.pi0["vlm_config"]["text_config"], c.pi0["dit_config"], c.pi0["vlm_config"]["vision_config"]
    b = 2 if dtype == "bfloat16" else 4
    n_img = (vis["image_size"] // vis["patch_size"]) ** 2 if c.obs_mode == "rgb" else 0
    L, S = n_img + c.max_text_tokens, c.chunk + 1  # prefix tokens; expert tokens per step (state + chunk)

    def tower(s, kv, t, gated, steps=1):  # (all layers' activations, one layer's, the layers' inputs) per sample
        hd = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
        one = steps * _layer_activation_bytes(s, kv, t["hidden_size"], t["intermediate_size"], t["num_attention_heads"],
                                              hd, b, gated)
        n = t["num_hidden_layers"]
        return n * one, one, n * steps * s * t["hidden_size"] * b

    towers = ([tower(n_img, n_img, vis, False)] if n_img else []) + [tower(L, L, text, True),
                                                                     tower(S, L + S, dit, True, steps=c.num_steps)]
    if grad_checkpointing:  # every layer's input is kept; one layer at a time is recomputed in full
        act = micro * (sum(t[2] for t in towers) + max(t[1] for t in towers))
    else:
        act = micro * sum(t[0] for t in towers)
    est = {"params_total": total, "params_trainable": train,
           "weights_gb": (4 + (2 if dtype == "bfloat16" else 0)) * total / 1e9,
           "grads_optimizer_gb": (12 + (4 if world > 1 else 0)) * train / 1e9, "activations_gb": act / 1e9,
           "micro_batch": micro}
    est["peak_gb"] = est["weights_gb"] + est["grads_optimizer_gb"] + est["activations_gb"]
    return est


def setup_distributed(device_flag: str) -> tuple[int, int, torch.device]:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and device_flag != "cpu"
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if world > 1:
        import torch.distributed as dist

        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
        if not cuda:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return rank, world, device


def obs_overrides(env: EnvConfig, estimate_object_state: bool = False, image_in_prefix: bool = True,
                  estimate_detached: bool = False, estimator: str = "linear") -> dict:
    """The PolicyConfig fields fixed by the env's observation mode (the object-state proxy widens the state) and, for
    a pixel policy, by whether its state token carries the estimated object features (and what estimates them)."""
    est = estimate_object_state and env.obs_mode == "rgb"
    return dict(obs_mode=env.obs_mode, state_dim=scene_env.state_dim(env) + (scene_env.OBJECT_STATE_DIM if est else 0),
                estimate_object_state=est, image_in_prefix=image_in_prefix or not est,
                estimate_detached=estimate_detached and est, estimator=estimator if est else "linear")


def finetune_overrides(args: Args) -> dict:
    """The PolicyConfig fields this run's flags set on top of a preset or an --init checkpoint. Under the object-state
    proxy the value head always reads the state: the instruction-only prefix makes z_t the same in every state."""
    return dict(num_steps=args.num_inference_steps, log_sigma_min=args.log_sigma_min, log_sigma_max=args.log_sigma_max,
                lora_rank=args.lora_rank, lora_alpha=float(max(args.lora_rank, 1)), lora_expert=args.lora_expert,
                freeze_vlm=args.freeze_vlm, freeze_siglip=args.freeze_siglip,
                value_state=args.value_state or args.env.obs_mode == "state", value_time=args.value_time_to_go)


def check_obs_mode(config: PolicyConfig, env: EnvConfig, what: str) -> None:
    """A policy runs only in envs of the observation mode it was trained in."""
    if config.obs_mode != env.obs_mode:
        raise ValueError(f"ppoflow_pi0.py: {what} is an obs_mode {config.obs_mode!r} policy but --env.obs-mode is "
                         f"{env.obs_mode!r} (fix: pass --env.obs-mode {config.obs_mode})")


def build_policy(args: Args) -> PI0Policy:
    """--init checkpoint (weights merged, then this run's fine-tuning mode) or a random --preset model."""
    ft = finetune_overrides(args)
    if args.init is None:
        print(f"[ppoflow] no --init: random {args.preset} weights (use train_imitation.py for a starting point)")
        return PI0Policy(preset_config(args.preset, args.env.chunk, **ft, **obs_overrides(args.env)),
                         Normalizer.from_stats_file(args.stats_file),
                         {"kind": "hf", "path": args.tokenizer_path} if args.tokenizer_path else {"kind": "bytes"})
    base = load_policy(args.init, stats_file=args.stats_file, tokenizer_path=args.tokenizer_path,
                       open_pi_zero={"num_kv_heads": args.init_num_kv_heads, "vision_heads": args.init_vision_heads})
    if base.config.preset != args.preset:
        print(f"[ppoflow] --init is a {base.config.preset!r} model: using it (ignoring --preset {args.preset})")
    if base.config.chunk != args.env.chunk:
        raise ValueError(f"--init predicts chunks of {base.config.chunk} but --env.chunk is {args.env.chunk}")
    check_obs_mode(base.config, args.env, f"--init {args.init}")
    if not base.config.image_in_prefix:  # an instruction-only prefix, as under the proxy: V must read the state
        ft["value_state"] = True
    policy = PI0Policy(PolicyConfig(**{**asdict(base.config), **ft}), base.normalizer, base.tokenizer_spec)
    policy.load_weights(base.state_dict(), base.lora_scaling())
    return policy


def main(args: Args, env_fn: Callable | None = None) -> Path:
    """`env_fn(scenes, num_envs, cfg, seed, workers)` builds the vector env (default scene_env.make_vec_env)."""
    if args.dry_run:
        w = int(os.environ.get("WORLD_SIZE", 1))
        est = memory_estimate(args, w)
        print(f"[ppoflow] dry run ({args.preset if not args.init else args.init}, {w} rank(s)): "
              f"{est['params_total'] / 1e6:.1f}M parameters, {est['params_trainable'] / 1e6:.1f}M trainable; peak per rank "
              f"~{est['peak_gb']:.1f} GB = weights {est['weights_gb']:.1f} + grads/AdamW {est['grads_optimizer_gb']:.1f} + "
              f"activations {est['activations_gb']:.1f} (micro-batch {est['micro_batch']}; --micro-batch-size lowers it)")
        return Path(args.out or ".")
    rank, world, device = setup_distributed(args.device)
    out = Path(args.out or f"runs/{args.exp_name}_s{args.seed}")
    ckpt = None
    if args.resume:  # everything that can be wrong with the resume fails here, before any file is written
        ckpt = read_checkpoint(args.resume, "a ckpt_*.pt of an interrupted ppoflow_pi0.py run")
        check_resumable(ckpt, args.resume, args)
    if rank == 0:
        dropped = truncate_metrics(out / "metrics.jsonl", int(ckpt["iteration"]) if ckpt else 0)
        if dropped:
            print(f"[ppoflow] {out / 'metrics.jsonl'}: dropped {dropped} row(s) past iteration "
                  f"{int(ckpt['iteration']) if ckpt else 0} (they are re-run from the checkpoint)")
        for f in remove_stale_tmp(out):
            print(f"[ppoflow] removed {f}: the temp file of a killed checkpoint save")
        doc = {"schema_version": ss.SCHEMA_VERSION, "args": ss.to_dict(args), "batch_size": args.batch_size,
               "world_size": world}
        if ckpt is not None:  # keep the earlier commands of this run; record what this resume changed (free flags)
            old = ss.read_json(out / "args.json") if (out / "args.json").is_file() else {}
            doc["args_history"] = old.pop("args_history", []) + ([old] if old else [])
            doc["resumed_from"] = {"checkpoint": str(args.resume), "iteration": int(ckpt["iteration"]),
                                   "changed": {k: v for k, v in resume_flag_changes(ckpt.get("args") or {},
                                                                                    doc["args"]).items()
                                               if k not in ("resume", "resume_allow_changes")},
                                   "allowed_changes": sorted(allowed_resume_changes(args))}
        ss.write_json_atomic(out / "args.json", doc)
    if args.num_envs % world:
        raise ValueError(f"--num-envs {args.num_envs} must be divisible by the {world} ranks")
    seed_everything(args.seed)  # identical model init on every rank
    if ckpt is not None:
        policy = PI0Policy(PolicyConfig(**ckpt["model_config"]), Normalizer(**ckpt["normalizer"]), ckpt["tokenizer"])
        policy.load_weights(checkpoint_weights(ckpt, args.resume))
        check_obs_mode(policy.config, args.env, f"--resume {args.resume}")
    else:
        policy = build_policy(args)
    policy.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    if args.grad_checkpointing:
        enable_grad_checkpointing(policy)  # transformers' layers recompute activations in backward
    act_fn = torch.compile(lambda inp, tl: _sample(policy, inp, tl, device)) if args.compile_act else None
    if world > 1:
        import torch.distributed as dist

        for t in policy.state_dict().values():
            dist.broadcast(t, 0)
    heads = [p for n, p in policy.named_parameters() if n.startswith("value_head.")]
    rest = [p for n, p in policy.named_parameters() if p.requires_grad and not n.startswith("value_head.")]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": args.learning_rate},
                                   {"params": heads, "lr": args.critic_learning_rate}], eps=1e-5, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [  # [policy, value head]
        lambda it: lr_factor(it, args.num_iterations, args.critic_warmup_iterations, args.warmup_iterations,
                             args.lr_schedule, args.lr_min_factor), lambda it: 1.0])
    demos = load_demo_batch(args, policy) if args.demo_bc_coef > 0 else None
    start = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["iteration"])
        if allowed_resume_changes(args) & {"learning_rate", "critic_learning_rate"}:  # the optimizer state carries
            for i, lr in enumerate((args.learning_rate, args.critic_learning_rate)):  # the old rates: use the new
                scheduler.base_lrs[i] = optimizer.param_groups[i]["initial_lr"] = lr
                optimizer.param_groups[i]["lr"] = lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
    scenes = resolve_scenes(args)
    env_fn = env_fn or scene_env.make_vec_env
    envs = env_fn(scene_env.rank_scenes(scenes, args.num_envs // world, rank, world), args.num_envs // world, args.env,
                  env_seed(args.seed, 0, rank, 1), args.env_workers)  # global env g holds scene g % len(scenes)
    wb = None
    if args.track and rank == 0:
        wb = ss.init_wandb(out, ss.to_dict(args), "ppoflow", args.wandb_project, args.wandb_entity, args.wandb_group)
    if rank == 0:
        print(f"[ppoflow] {len(scenes)} scene(s), {args.num_envs} envs x {args.num_steps} steps on {world} rank(s), "
              f"{sum(p.numel() for p in rest + heads) / 1e6:.2f}M trainable params -> {out}")
    if ckpt is not None:  # restore RNG last: nothing may draw random numbers between here and the loop
        restore_rng(ckpt["rng"], args.seed, start, rank, world)
    else:
        seed_everything(args.seed + rank)
    try:
        for it in range(start, args.num_iterations):
            t0 = time.time()
            batch, ep = rollout(policy, envs, args.num_steps, args.gamma, env_seed(args.seed, it, rank), device,
                                args.bootstrap_truncated, args.env.max_decisions, args.dtype, act_fn)
            t1 = time.time()
            adv, ret = compute_gae(batch["reward"], batch["value"], batch["done"], batch["last_value"], args.gamma, args.gae_lambda)
            upd = ppo_update(policy, optimizer, batch, adv, ret, args, world, device,
                             train_policy=it >= args.critic_warmup_iterations, demos=demos)
            scheduler.step()
            t2 = time.time()
            m = {"charts/success_rate": ep["success"], "charts/episode_return": ep["return"],
                 "charts/time_to_finish": ep["time_to_finish"], "charts/episode_length": ep["length"],
                 "charts/sigma_mean": ep["sigma_mean"], "charts/sigma_min": ep["sigma_min"], "charts/sigma_max": ep["sigma_max"],
                 "charts/reward_mean": [float(batch["reward"].mean())]}
            if args.eval_every and ((it + 1) % args.eval_every == 0 or it + 1 == args.num_iterations):
                ev = evaluate(policy, envs, env_seed(args.seed, it, rank, 2), args.env.max_decisions)
                m.update({"eval/success_rate": ev["success"], "eval/time_to_finish": ev["time_to_finish"]})
            m = gather_metrics(m, world)
            upd = reduce_stats(gather_objects(upd, world)) if world > 1 else upd  # every rank's update, not rank 0's
            m.update({f"losses/{k}": v for k, v in upd.items()})
            steps = (it + 1) * args.batch_size
            m.update({"time/rollout_s": t1 - t0, "time/update_s": t2 - t1, "perf/decisions_per_s": args.batch_size / (t1 - t0),
                      "perf/control_steps_per_s": args.batch_size * args.env.chunk / (t1 - t0),
                      "perf/update_samples_per_s": args.batch_size * args.update_epochs / (t2 - t1),
                      "charts/learning_rate": scheduler.get_last_lr()[0]})
            rngs = gather_objects(rng_state(), world)
            if rank == 0:
                ss.append_jsonl(out / "metrics.jsonl", {"iteration": it + 1, "global_step": steps,
                                                        **{k: None if v != v else v for k, v in m.items()}})  # NaN -> null
                if wb is not None:
                    wb.log(m, step=steps)
                print(f"[ppoflow] it {it + 1}/{args.num_iterations} SR {m.get('charts/success_rate', float('nan')):.3f} "
                      f"ret {m.get('charts/episode_return', float('nan')):.3f} kl {upd['approx_kl']:.4f} "
                      f"clip {upd['clipfrac']:.3f} rollout {t1 - t0:.1f}s update {t2 - t1:.1f}s")
                last = it + 1 == args.num_iterations
                if (it + 1) % args.save_every == 0 or last:
                    base = init_reference(args) if args.init and args.checkpoint_weights == "changed" else None
                    ck = policy_checkpoint(policy, base, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                           rng=rngs, iteration=it + 1, args=ss.to_dict(args))
                    torch_save_atomic(ck, out / f"ckpt_{it + 1}.pt")
                    if last:
                        torch_save_atomic(ck, out / "ckpt_final.pt")
                    rotate_checkpoints(out, args.keep_checkpoints)
    finally:
        envs.close()
        if wb is not None:
            wb.finish()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return out


def gather_objects(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather_metrics(m: dict[str, list], world: int) -> dict[str, float]:
    """Per-episode lists from every rank -> global means, or the global min / max for keys ending in _min / _max
    (NaN when no episode ended)."""
    merged = gather_objects(m, world)
    out = {}
    for k in m:
        v = [x for r in merged for x in r[k]]
        out[k] = float("nan") if not v else float(min(v) if k.endswith("_min") else max(v) if k.endswith("_max")
                                                   else np.mean(v))
    return out


@dataclass
class ExportArgs:
    """python ppoflow_pi0.py export --ckpt runs/ppo/ckpt_final.pt --out exported/ppo   (see export_pretrained)"""

    ckpt: str
    """A ckpt_*.pt of ppoflow_pi0.py / train_imitation.py."""
    out: str
    """Folder to write (transformers save_pretrained layout, processor, norm_stats.json, README.md model card,
    policy_config.json, policy_heads.safetensors)."""


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["export"]:
            a = tyro.cli(ExportArgs, args=sys.argv[2:])
            print(f"[export] {export_pretrained(load_policy(a.ckpt), a.out, export_source(a.ckpt))}")
            raise SystemExit(0)
        main(tyro.cli(Args))
    except CheckpointError as e:  # a bad --resume / --init file: one clear line, no traceback
        raise SystemExit(f"ppoflow_pi0.py: error: {e}") from None
