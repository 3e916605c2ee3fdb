"""DAgger distillation of an object-state teacher into a pixel pi0 student (issue 32).

    python distill.py --teacher runs/proxy/ppo_s1/ckpt_final.pt --preset tiny --env.image-size 64 --out runs/distill
    python distill.py --teacher runs/proxy/ppo_s1/ckpt_final.pt --student-init runs/il_pixel/ckpt_final.pt \
        --env.image-size 64 --rounds 6 --frames-per-round 2000 --steps-per-round 1000 --num-envs 2 --out runs/distill_il

The teacher is a policy trained under the object-state proxy (`--env.obs-mode state`: proprio + the 14 simulator
features of target and destination, no camera), typically PPOFlow's final checkpoint. The student is the pixel
`PI0Policy` (image + instruction + 7-D proprio), the policy evaluate.py and deploy_widowx.py run. Round k of DAgger
(Ross et al. 2011), on the teacher's training scenes:
  1. act: at every decision each env follows the teacher with probability beta_k = beta0 * beta_decay^k, else the
     student (both deterministic, sigma = 0). Every env renders the camera (the student's input) and reports the
     object state (the teacher's) in the same step (`scene_env.EnvConfig.with_object_state`);
  2. label: the teacher's deterministic action chunk on every visited state, whoever acted;
  3. aggregate: the round's frames join every earlier round's (those where an object has left the workspace, knocked
     off the table or flung away, are kept on disk but not trained on: `student_inputs`);
  4. train: `--steps-per-round` gradient steps on the aggregate, of the flow-matching loss (`--loss flow_matching`:
     Eq. 1, `PI0Policy.flow_matching_loss`, the loss of train_imitation.py) or of the chunk loss (`--loss chunk`:
     the student's deterministic chunk from the label's own noise draw A^0, regressed on the teacher's chunk A^K
     before its action clip and gripper threshold, `PI0Policy.chunk_regression_loss`). A PPOFlow teacher's
     behaviour is its deterministic map A^0 -> A^K, which RL tuned and Eq. 1 does not keep: Eq. 1 on its own labels
     and inputs took one from 57% to 26% (benchmarks/RESULTS.md, issue 32), while the chunk loss is exactly zero for
     a student that already is the teacher. `--train-part perception` trains the student's image path alone (its
     estimate of the object features, by the auxiliary object-state loss on the visited states, `--replay-frames`
     mixing in the perception stage's own frames) and keeps the rest as it starts: a student built by
     `--student-from-teacher` then acts with the teacher's own map from a camera estimate trained where it acts.
With beta0 = 1, round 0 is behaviour cloning on the teacher's own rollouts.

Output folder (--out):
    args.json                 the flags (a re-run must repeat them, except --rounds and where it runs)
    rounds/round_<k>.pt       round k's frames: env image, proprio, object state, instruction, scene, the teacher's
                              label chunk (env space, as executed) and the same chunk before the clip and the
                              gripper threshold, who acted, episode ids, the label's noise A^0 and its seed
    ckpt_start.pt             the student as it starts, before round 0 (the "before" of DAgger)
    ckpt_round_<k>.pt         the student after round k: a normal pixel checkpoint (evaluate.py --ckpt, deploy_widowx.py)
    ckpt_final.pt             the same as the last round's
    metrics.jsonl             loss rows every --log-every steps, one summary row per round
    dataset/                  the aggregate as a LeRobotDataset (lerobot_format.py): written after the last round (and
                              by a re-run that finds it behind the rounds; info.json's "dagger" says how many)
A round is complete once its checkpoint exists (its data, then its checkpoint, each written atomically): re-running
the same command continues after the last complete round; a larger --rounds adds rounds.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import scene_schema as ss
from scene_env import OBJECT_STATE_DIM, PROPRIO_DIM, EnvConfig, objects_in_workspace, proxy_observation


@dataclass
class Args:
    teacher: str
    """Object-state teacher: a ckpt_*.pt of ppoflow_pi0.py or train_imitation.py trained with --env.obs-mode state."""
    out: str = "runs/distill"
    """Output folder (see the module docstring); re-running into it continues the run."""
    scenes_dir: str | None = None
    """Folder of composed scenes (default: the teacher's --scenes-dir)."""
    scene_ids: list[str] | None = None
    """Distil on these scene ids (default: the teacher's training scenes: its --splits-file split, --scene-ids or
    every manifest, then its first --num-train-scenes)."""
    preset: str = "tiny"
    """Student size when not given by --student-init: tiny (CPU tests), mini (CPU experiments), small, pi0-3b."""
    student_init: str | None = None
    """Start the student from this pixel checkpoint (e.g. a train_imitation.py policy) instead of random --preset
    weights; it keeps its own normalisation statistics (a random student takes the teacher's: its action bounds and
    the proprio part of its state bounds)."""
    student_from_teacher: bool = False
    """The student acts as the teacher from round 0: its language model, action expert, heads and normalisation are
    the teacher's weights, its vision tower and object-state probe --student-init's. Needs a --student-init whose
    state token carries the estimated object features and whose prefix is the instruction alone
    (pretrain_perception.py --estimate-object-state --no-image-in-prefix) of the teacher's preset (any vision tower:
    --vision-preset): the student is then the teacher reading its 14 features from the camera instead of the
    simulator, and DAgger trains it where the estimate misleads it."""
    tokenizer_path: str | None = None
    """Folder with a real tokenizer for a random student (default: the offline byte-level tokenizer)."""
    seed: int = 0
    """Seed of the student's init, the env resets, the beta draws, the label noise and the batches."""
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
    # ---- rollouts ----
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment settings of the rollouts (scene_env.EnvConfig): the student's camera (--env.image-size 64 for the
    tiny and mini presets); obs_mode stays "rgb" and the object state comes along for the teacher."""
    num_envs: int = 2
    """Parallel envs (env i holds scene i mod #scenes)."""
    env_workers: int | None = None
    """Worker processes (scene_env default: one per env; 0 = one env in this process)."""
    # ---- DAgger budgets ----
    rounds: int = 4
    """DAgger rounds (a re-run with a larger value adds rounds to a finished run)."""
    frames_per_round: int = 400
    """Labelled frames collected per round over all envs; a frame is one decision (the image the student sees, the
    teacher's C-step label), so the round runs ceil(frames / num_envs) vector steps."""
    beta0: float = 1.0
    """Probability that the teacher acts at a decision in round 0 (1: round 0 is the teacher's own rollouts)."""
    beta_decay: float = 0.5
    """beta_k = beta0 * beta_decay^k: the teacher's share of the acting in round k (0: the student alone after round 0)."""
    # ---- training on the aggregate ----
    loss: Literal["flow_matching", "chunk"] = "flow_matching"
    """What the student trains on the aggregate: "flow_matching" (Eq. 1 on the teacher's label chunks, issue 32's
    recipe) or "chunk" (its deterministic K-step chunk from the label's own noise A^0, regressed on the teacher's
    chunk before the clip and the gripper threshold: keeps a PPOFlow teacher's tuned map where Eq. 1 refits the whole
    velocity field; design v9)."""
    steps_per_round: int = 500
    """Gradient steps after each round's collection, on every round's frames so far."""
    batch_size: int = 32
    """Frames per gradient step (drawn uniformly from the aggregate)."""
    learning_rate: float = 1e-4
    """AdamW learning rate: linear warm-up, then constant (rounds can be added without changing a schedule)."""
    warmup_steps: int = 100
    """Linear warm-up steps at the start of round 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    aux_state_coef: float = 0.0
    """Weight of an auxiliary loss: a linear probe on the student's image tokens regresses the 14 object-state features
    the teacher reads (scene_env.object_state, standardised), so the vision tower is told where the target and the
    destination are, not only what the teacher did (privileged supervision as in "learning by cheating"). A student
    with estimate_object_state trains its own probe (the one that feeds its state token); otherwise the probe is
    training-only, stored beside the policy in the round checkpoints (for a resume), never read when the student
    acts. 0: plain DAgger (Eq. 1 alone)."""
    train_part: Literal["all", "perception"] = "all"
    """What the rounds train. "all": every trainable weight of the student, by --loss (+ the auxiliary loss).
    "perception": only the student's image path (vision tower, projector and object-state probe: VISION_KEYS), by the
    auxiliary object-state loss on the states the student visits (and by --loss where the estimate is not detached);
    the language model, action expert and heads stay as they start (with --student-from-teacher: the teacher's map,
    which any fine-tuning lowered: benchmarks/RESULTS.md, issue 32). Needs --aux-state-coef > 0 and a student whose
    state token carries the estimate (pretrain_perception.py --estimate-object-state)."""
    replay_frames: str | None = None
    """A pretrain_perception.py frames.pt: each gradient step's auxiliary loss also regresses the object state of as
    many of its frames (drawn uniformly; the two halves weighted equally), so a small aggregate does not pull the
    estimate off the layouts perception learned (v8: one round without it made the estimate ~1 cm worse everywhere).
    Needs --aux-state-coef > 0."""
    num_inference_steps: int = 10
    """K of the student's deterministic flow inference (stored in its checkpoint)."""
    log_every: int = 50
    """Gradient steps between loss rows in metrics.jsonl."""
    dataset_version: Literal["v3.0", "v2.1"] = "v3.0"
    """LeRobot format of <out>/dataset: v3.0 (LeRobot >= 0.4) or v2.1 (LeRobot 0.3, openpi-era code)."""


# Flags a re-run may change: how many rounds, where it runs and where it logs; never what a round learns.
RESUME_FREE_FLAGS = ("rounds", "env_workers", "device", "track", "wandb_project", "wandb_entity", "wandb_group",
                     "log_every")


class DistillError(ValueError):
    """A bad input of distill.py: the message says what was given, what is needed and how to fix it."""


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def beta(args: Args, k: int) -> float:
    """The teacher's share of the acting in round k."""
    return args.beta0 * args.beta_decay ** k  # ALGO LOGIC


def label_seed(seed: int, k: int, decision: int) -> int:
    """Seed of the flow noise A^0 behind the teacher's labels at decision `decision` of round k: a deterministic chunk
    (sigma = 0) still starts from a noise draw; `label_noise` draws it from this seed (the draw is stored per frame)."""
    return int(np.random.SeedSequence([seed, k, decision, 7]).generate_state(1)[0]) % 2**31


def label_noise(s: int, n: int, chunk: int, action_dim: int) -> torch.Tensor:
    """The teacher's A^0 for the n envs of one decision [n, chunk, action_dim]: N(0, I) from seed `s` (label_seed)."""
    return torch.randn(n, chunk, action_dim, generator=torch.Generator().manual_seed(s))


def completed_rounds(out: Path) -> int:
    """Rounds 0..n-1 are complete: their data and checkpoint files exist (a round's checkpoint is written last)."""
    n = 0
    while (out / f"ckpt_round_{n:03d}.pt").exists() and (out / f"rounds/round_{n:03d}.pt").exists():
        n += 1
    return n


def env_differences(env: EnvConfig, teacher_env: dict | None) -> list[str]:
    """Settings of --env that differ from the teacher's training env (recorded in its checkpoint), apart from what
    the student's camera needs: labels from another episode length, physics or randomisation are still labels, but
    not of the states the teacher was trained on."""
    skip = {"obs_mode", "image_size", "with_object_state", "sim_backend", "render_size",
            "object_state_noise_m", "object_state_noise_corr"}  # the teacher labels from the exact features
    now = json.loads(json.dumps(ss.to_dict(env)))
    return [f"{k}: teacher {v!r}, now {now[k]!r}" for k, v in (teacher_env or {}).items()
            if k in now and k not in skip and now[k] != v]


def check_args(args: Args) -> None:
    bad = [f"--{n.replace('_', '-')} {getattr(args, n)} (must be >= 1)" for n in
           ("rounds", "frames_per_round", "steps_per_round", "batch_size", "num_envs", "num_inference_steps", "log_every")
           if getattr(args, n) < 1]
    bad += [f"--{n.replace('_', '-')} {getattr(args, n)} (must be in [0, 1])" for n in ("beta0", "beta_decay")
            if not 0.0 <= getattr(args, n) <= 1.0]
    bad += [f"--aux-state-coef {args.aux_state_coef} (must be >= 0)"] if not args.aux_state_coef >= 0 else []
    bad += [f"--{f} needs the auxiliary object-state loss, but --aux-state-coef is {args.aux_state_coef} (fix: "
            "--aux-state-coef 1)" for f, on in (("train-part perception", args.train_part == "perception"),
                                                ("replay-frames", args.replay_frames)) if on and args.aux_state_coef <= 0]
    bad += [f"--replay-frames {args.replay_frames} is not a file (fix: a pretrain_perception.py run's frames.pt)"
            ] if args.replay_frames and not Path(args.replay_frames).is_file() else []
    if bad:
        raise DistillError(f"distill.py: {'; '.join(bad)}")
    if args.env.obs_mode != "rgb":
        raise DistillError(f"distill.py: --env.obs-mode {args.env.obs_mode}: the student sees pixels, so the env runs in "
                           "obs_mode rgb and brings the object state along for the teacher (fix: drop --env.obs-mode)")


def check_rerun(out: Path, args: Args) -> None:
    """An existing run folder continues only with the flags it was started with (RESUME_FREE_FLAGS aside)."""
    import ppoflow_pi0 as pp

    path = out / "args.json"
    if not path.exists():
        return
    old = ss.read_json(path).get("args") or {}
    diff = {k: v for k, v in pp.resume_flag_changes(old, ss.to_dict(args)).items() if k not in RESUME_FREE_FLAGS}
    if diff:
        now = pp.resume_flag_changes(ss.to_dict(args), {}, keys_only=True)  # every flag, flattened (env.chunk)
        what = "; ".join(f"--{k.replace('_', '-')}: the run's {v!r}, now {now.get(k)!r}" for k, v in diff.items())
        raise DistillError(f"distill.py: {out} is a distillation run started with other flags ({what}). Re-run with "
                           f"its flags (see {path}; only {', '.join(RESUME_FREE_FLAGS)} may change), or pass another --out")


def teacher_scene_args(args: Args, teacher_args: dict):
    """ppoflow_pi0.Args naming the scenes: the teacher's training scenes, with --scenes-dir / --scene-ids replacing
    what the teacher recorded."""
    import ppoflow_pi0 as pp

    if args.scene_ids:
        return pp.Args(scenes_dir=args.scenes_dir or teacher_args.get("scenes_dir") or "scenes", scene_ids=args.scene_ids)
    if not args.scenes_dir and not teacher_args.get("scenes_dir"):
        raise DistillError(f"distill.py: --teacher {args.teacher} records no training scenes (no args in the checkpoint); "
                           "fix: pass --scenes-dir (and --scene-ids) of the scenes it was trained on")
    keep = {k: teacher_args[k] for k in ("scene_ids", "splits_file", "split_index", "num_train_scenes")
            if teacher_args.get(k) is not None}
    return pp.Args(scenes_dir=args.scenes_dir or teacher_args["scenes_dir"], **keep)


# ---------------------------------------------------------------------------------------------
# Loading the teacher and the student
# ---------------------------------------------------------------------------------------------


def load_teacher(args: Args, device):
    """(teacher policy in eval mode, its checkpoint's args, its content hash). Refuses anything but an object-state
    policy checkpoint."""
    import ppoflow_pi0 as pp

    what = "the object-state teacher: a ckpt_*.pt trained with --env.obs-mode state"
    ck = pp.read_checkpoint(args.teacher, what)
    cfg = ck.get("model_config") or {}
    if ck.get("kind") != "pi0_policy":
        raise DistillError(f"distill.py: --teacher {args.teacher} is not a pi0 policy checkpoint (kind "
                           f"{ck.get('kind')!r}); expected {what}")
    if cfg.get("obs_mode", "rgb") != "state":
        raise DistillError(f"distill.py: --teacher {args.teacher} is a pixel policy (obs_mode {cfg.get('obs_mode', 'rgb')!r}); "
                           "the teacher must read the object state (fix: a checkpoint of ppoflow_pi0.py / "
                           "train_imitation.py run with --env.obs-mode state; a pixel policy goes in --student-init)")
    if cfg.get("chunk") != args.env.chunk:
        raise DistillError(f"distill.py: --teacher {args.teacher} predicts chunks of {cfg.get('chunk')} but --env.chunk is "
                           f"{args.env.chunk} (fix: --env.chunk {cfg.get('chunk')})")
    teacher = pp.load_policy(args.teacher, device=str(device)).eval()
    teacher.requires_grad_(False)
    return teacher, ck.get("args") or {}, ss.file_sha256(args.teacher)


def build_student(args: Args, teacher, device):
    """The pixel student: --student-init (merged to plain weights, its statistics kept) or a random --preset model
    with the teacher's action statistics and the proprio part of its state statistics."""
    import ppoflow_pi0 as pp

    if args.student_from_teacher and not args.student_init:
        raise DistillError("distill.py: --student-from-teacher takes the student's vision from --student-init, which "
                           "is not given (fix: --student-init <pretrain_perception.py --estimate-object-state "
                           "--no-image-in-prefix checkpoint>)")
    if args.student_init:
        student = pp.load_policy(args.student_init, tokenizer_path=args.tokenizer_path, lora_rank=0,
                                 num_steps=args.num_inference_steps)
        if student.config.obs_mode != "rgb":
            raise DistillError(f"distill.py: --student-init {args.student_init} is an object-state policy (obs_mode "
                               f"{student.config.obs_mode!r}); the student must be a pixel policy (fix: a checkpoint "
                               "trained with --env.obs-mode rgb, e.g. train_imitation.py's, or no --student-init)")
        if student.config.chunk != args.env.chunk:
            raise DistillError(f"distill.py: --student-init {args.student_init} predicts chunks of {student.config.chunk} "
                               f"but the teacher and --env.chunk use {args.env.chunk}")
        if args.student_from_teacher:
            student = student_from_teacher(args, student, teacher)
    else:
        cfg = pp.preset_config(args.preset, args.env.chunk, num_steps=args.num_inference_steps,
                               **pp.obs_overrides(args.env))
        n = teacher.normalizer
        norm = pp.Normalizer(n.kind, n.state_lo[:PROPRIO_DIM], n.state_hi[:PROPRIO_DIM], n.action_lo, n.action_hi)
        tok = {"kind": "hf", "path": args.tokenizer_path} if args.tokenizer_path else {"kind": "bytes"}
        student = pp.PI0Policy(cfg, norm, tok)
    return student.to(device)


# What a student built by --student-from-teacher keeps of --student-init: the image path (the rest is the teacher's)
VISION_KEYS = ("pi0.model.vlm.vision_tower.", "pi0.model.vlm.multi_modal_projector.", "object_state_probe.")


def student_from_teacher(args: Args, vision, teacher):
    """The teacher's weights and normalisation with `vision`'s image path (VISION_KEYS): a pixel policy that is the
    teacher wherever its estimate of the object features is right."""
    import ppoflow_pi0 as pp

    vc, tc = vision.config, teacher.config
    if not vc.estimate_object_state or vc.image_in_prefix:
        raise DistillError(f"distill.py: --student-from-teacher needs a --student-init whose state token carries the "
                           f"estimated object features and whose prefix is the instruction alone (its "
                           f"estimate_object_state {vc.estimate_object_state}, image_in_prefix {vc.image_in_prefix}; "
                           "fix: pretrain_perception.py --estimate-object-state --no-image-in-prefix)")

    def blind(pi0: dict) -> dict:  # the architecture apart from the vision tower (the student's own)
        return {**pi0, "vlm_config": {k: v for k, v in pi0["vlm_config"].items() if k != "vision_config"}}
    if blind(vc.pi0) != blind(tc.pi0) or vc.state_dim != tc.state_dim:
        raise DistillError(f"distill.py: --student-from-teacher: --student-init {args.student_init} (preset "
                           f"{vc.preset!r}) and the teacher (preset {tc.preset!r}) differ in more than the vision "
                           f"tower (fix: pretrain_perception.py --preset {tc.preset}, any --vision-preset)")
    cfg = pp.PolicyConfig(**{**asdict(tc), "obs_mode": "rgb", "estimate_object_state": True, "image_in_prefix": False,
                             "estimate_detached": vc.estimate_detached, "estimator": vc.estimator,
                             "lora_rank": 0, "lora_expert": False, "num_steps": args.num_inference_steps,
                             "pi0": vc.pi0, "image_size": vc.image_size})
    student = pp.PI0Policy(cfg, teacher.normalizer, teacher.tokenizer_spec)
    own = vision.state_dict()
    taught = {k: v for k, v in pp.merge_lora(teacher.state_dict(), teacher.lora_scaling()).items()
              if not k.startswith(VISION_KEYS)}
    student.load_state_dict({**taught, **{k: v for k, v in own.items() if k.startswith(VISION_KEYS)}}, strict=False)
    missing = [k for k in student.state_dict() if k not in taught and not k.startswith(VISION_KEYS)
               and k != "pi0.model.dit.embed_tokens.weight"]
    if missing:
        raise DistillError(f"distill.py: --student-from-teacher: the teacher {args.teacher} lacks {missing[:3]} "
                           f"(of {len(missing)}): not a policy of the student's layout")
    return student


def build_probe(args: Args, student, teacher) -> nn.Module | None:
    """The auxiliary object-state probe (--aux-state-coef): the student's own when its state token carries the
    estimate, else a training-only linear map of its image tokens, standardised by the teacher's bounds."""
    import ppoflow_pi0 as pp

    if args.aux_state_coef <= 0:
        return None
    if student.config.estimate_object_state:
        return student.object_state_probe
    probe = pp.ObjectStateProbe(pp.ObjectStateProbe.input_width(student.config), OBJECT_STATE_DIM)
    n = teacher.normalizer
    if len(n.state_lo) > PROPRIO_DIM:  # else the teacher reads the features as they are: mean 0, std 1
        lo, hi = (torch.tensor(v[PROPRIO_DIM:]) for v in (n.state_lo, n.state_hi))
        probe.set_statistics(*(((lo + hi) / 2, (hi - lo) / 2) if n.kind == "bound" else (lo, hi)))  # unclipped
    return probe.to(student.pi0.action_out_proj.weight.device)


def restrict_to_perception(args: Args, student) -> None:
    """--train-part perception: only the image path (VISION_KEYS) keeps requires_grad; refuses a student without an
    estimate in its state token (its image path would then be the policy's whole view, not a separable estimate)."""
    if args.train_part != "perception":
        return
    if not student.config.estimate_object_state:
        raise DistillError("distill.py: --train-part perception trains the estimate of the object features in the "
                           "student's state token, but this student has none (fix: --student-init a "
                           "pretrain_perception.py --estimate-object-state checkpoint, or --train-part all)")
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith(VISION_KEYS))


def action_loss_trains(args: Args, student) -> bool:
    """Whether the --loss reaches a trainable weight: always under --train-part all; under perception only through an
    estimate that is not detached."""
    return args.train_part == "all" or not student.config.estimate_detached


def load_replay(args: Args, student) -> dict | None:
    """--replay-frames: the perception stage's labelled training frames (rgb at the student's image size, object
    state), or None."""
    if not args.replay_frames:
        return None
    frames = torch.load(args.replay_frames, weights_only=True)
    if not {"rgb", "object_state"} <= set(frames) or frames["rgb"].shape[-1] != student.config.image_size:
        raise DistillError(f"distill.py: --replay-frames {args.replay_frames} is not a pretrain_perception.py frames.pt "
                           f"of {student.config.image_size} px images (keys {sorted(frames)[:6]}; fix: the frames.pt "
                           "of the perception run the student starts from)")
    return {"rgb": frames["rgb"], "object_target": frames["object_state"].float()}


# ---------------------------------------------------------------------------------------------
# One round: act, label, train
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_round(envs, student, teacher, beta_k: float, frames: int, seed: int, k: int) -> dict:
    """Run the beta_k-mix of teacher and student until >= `frames` decisions are labelled. Returns the frames in
    decision-major order (decision d of env i is row d * N + i): rgb u8 [M, H, W, 3] (the env's), state [M, 7],
    object_state [M, 14], label [M, C, 7] (the teacher's env-space chunk, as it would execute it), label_raw [M, C, 7]
    (the same before the action clip and the gripper threshold: `Normalizer.env_action_unclipped`), teacher_acted
    [M], episode [M] (round-local ids), label_noise [M, C, 7] (the teacher's A^0, model space), label_seed [M],
    instruction and scene_id [M] lists, and the round's rollout statistics."""
    N = envs.num_envs
    student.eval()
    rows: dict[str, list] = {key: [] for key in ("rgb", "state", "object_state", "label", "label_raw", "teacher_acted",
                                                 "episode", "label_noise", "label_seed", "instruction", "scene_id")}
    dev = teacher.pi0.action_out_proj.weight.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):  # the training RNG stream is untouched
        gen = torch.Generator().manual_seed(seed)
        obs, info = envs.reset(seed=seed)
        scene_ids = list(info["scene_id"])
        episode, next_episode = torch.arange(N), N
        ended = succeeded = 0
        for d in range(-(-frames // N)):
            s = label_seed(seed, k, d)
            noise = label_noise(s, N, teacher.config.chunk, teacher.config.action_dim)
            a_k = teacher.chunk(proxy_observation(obs), deterministic=True, noise=noise)  # [N, C, 7] every state's A^K  # ALGO LOGIC
            label = teacher.normalizer.env_action(a_k, teacher.config.action_clip).cpu()  # as the teacher would act
            by_teacher = torch.rand(N, generator=gen) < beta_k  # [N] the beta-mix, per env and decision  # ALGO LOGIC
            action = label.clone()
            if not by_teacher.all():
                action[~by_teacher] = student.act(obs, deterministic=True, noise=noise)[~by_teacher]  # the label's A^0
            for key, v in (("rgb", obs["rgb"]), ("state", obs["state"]), ("object_state", obs["object_state"]),
                           ("label", label), ("label_raw", teacher.normalizer.env_action_unclipped(a_k)),
                           ("teacher_acted", by_teacher), ("episode", episode.clone()),
                           ("label_noise", noise), ("label_seed", torch.full((N,), s))):
                rows[key].append(torch.as_tensor(v).cpu())
            rows["instruction"] += list(obs["instruction"])
            rows["scene_id"] += scene_ids
            obs, _, term, trunc, info = envs.step(action)
            done = (torch.as_tensor(term) | torch.as_tensor(trunc)).cpu()
            ended += int(done.sum())
            succeeded += int(torch.as_tensor(info["success"]).cpu()[done].sum())
            for i in done.nonzero().flatten().tolist():
                episode[i], next_episode = next_episode, next_episode + 1
            scene_ids = list(info["scene_id"])
    out = {key: (v if key in ("instruction", "scene_id") else torch.cat(v)) for key, v in rows.items()}
    for key in ("state", "object_state", "label", "label_raw", "label_noise"):
        out[key] = out[key].float()
    out.update(round=k, beta=beta_k, seed=seed, episodes_ended=ended, episodes_succeeded=succeeded)
    return out


def student_inputs(student, data: dict) -> dict:
    """A round's trainable frames as the student's model inputs (image resized to its size, tokens) and targets: the
    teacher's label chunk in model space (Eq. 1's), its chunk before the clip and threshold in the student's model
    space and the label's noise A^0 (the chunk loss's; rounds collected since design v9), and the 14 object features
    (the auxiliary probe's, standardised by it).
    Frames where an object has left the workspace (`scene_env.objects_in_workspace`: knocked off the table or flung
    away) stay in the round's file and the dataset but are not trained on: the teacher never saw such a state, and one
    bowl flung 1800 m away makes the probe's squared error ~1e6 times its usual size, which wrecks the vision tower."""
    keep = objects_in_workspace(data["object_state"].float())  # ALGO LOGIC
    rows = keep.nonzero().flatten()
    inp = student.obs_to_inputs({"rgb": data["rgb"][rows], "state": data["state"][rows],
                                 "instruction": [data["instruction"][i] for i in rows.tolist()]})
    return {**{k: inp[k] for k in student.input_keys}, "target": student.normalizer.action(data["label"][rows]),
            "object_target": data["object_state"][rows].float().cpu(),
            **({"noise": data["label_noise"][rows].float(),
                "chunk_target": student.normalizer.action(data["label_raw"][rows], clamp=False)}
               if "label_noise" in data and "label_raw" in data else {})}


def trainable(student, probe: nn.Module | None) -> list[nn.Parameter]:
    """The student's trainable parameters and a training-only probe's (the student's own probe is among the first)."""
    params = [p for p in student.parameters() if p.requires_grad]
    return params + [p for p in (probe.parameters() if probe is not None else []) if all(p is not q for q in params)]


def train_round(student, optimizer, sched, batch: dict, steps: int, args: Args, gen: torch.Generator, device,
                on_log: Callable[[int, dict], None], probe: nn.Module | None = None,
                replay: dict | None = None) -> list[float]:
    """`steps` gradient steps of the --loss (Eq. 1, or the deterministic chunk's regression) + --aux-state-coef x the
    probe's object-state regression when `probe` is given, on frames drawn uniformly from the aggregate `batch` (and,
    for the probe, as many from `replay`, --replay-frames). Under --train-part perception with a detached estimate
    the --loss cannot reach a trainable weight, so it is not computed. Returns the --loss values (the auxiliary loss's
    when the --loss is not computed)."""
    student.train()
    params = trainable(student, probe)
    act = action_loss_trains(args, student)
    M, losses, aux_losses = len(batch["target"]), [], []
    for step in range(1, steps + 1):
        idx = torch.randint(0, M, (min(args.batch_size, M),), generator=gen)
        inp, target = {k: batch[k][idx].to(device) for k in student.input_keys}, batch["target"][idx].to(device)
        # the image tokens once, for the prefix and a linear probe (a keypoint probe reads the image itself)
        img = student.image_tokens(inp) if probe is not None and student.config.estimator == "linear" else None
        loss = torch.zeros((), device=device)
        if act and args.loss == "chunk":
            loss = student.chunk_regression_loss(inp, batch["noise"][idx], batch["chunk_target"][idx].to(device),
                                                 img=img)  # ALGO LOGIC
        elif act:
            loss = student.flow_matching_loss(inp, target, img=img)  # Eq. 1  # ALGO LOGIC
        act_loss = loss
        if probe is not None:
            aux = F.mse_loss(probe(student.probe_input(inp, img)),
                             probe.standardise(batch["object_target"][idx].to(device)))  # ALGO LOGIC
            if replay is not None:  # as many of perception's own frames: the estimate keeps what it learned there
                j = torch.randint(0, len(replay["rgb"]), (len(idx),), generator=gen)
                rimg = student.probe_input({"rgb": replay["rgb"][j].to(device)})
                aux = 0.5 * (aux + F.mse_loss(probe(rimg), probe.standardise(replay["object_target"][j].to(device))))
            loss = loss + args.aux_state_coef * aux
            aux_losses.append(float(aux.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        sched.step()
        losses.append(float((act_loss if act else aux).detach()))
        if step % args.log_every == 0 or step == steps:
            on_log(step, {**({f"losses/{args.loss}": float(np.mean(losses[-args.log_every:]))} if act else {}),
                          "losses/grad_norm": float(gn), "charts/learning_rate": sched.get_last_lr()[0],
                          **({"losses/aux_state": float(np.mean(aux_losses[-args.log_every:]))} if probe else {})})
    student.eval()
    return losses


# ---------------------------------------------------------------------------------------------
# The aggregate as a LeRobotDataset
# ---------------------------------------------------------------------------------------------


def dataset_episodes(data: list[dict]) -> list[dict]:
    """Every round's frames cut into episodes (per round, per env episode, in time order), decisions with their
    label chunks: lerobot_format.from_decisions turns them into control-step rows."""
    eps = []
    for r in data:
        for e in dict.fromkeys(r["episode"].tolist()):
            idx = (r["episode"] == e).nonzero().flatten()
            eps.append({"rgb": r["rgb"][idx].numpy(), "state": r["state"][idx].numpy(), "action": r["label"][idx].numpy(),
                        "task": r["instruction"][int(idx[0])], "scene_id": r["scene_id"][int(idx[0])]})
    return eps


def write_aggregate(out: Path, data: list[dict], args: Args, teacher_sha: str) -> Path:
    """Rewrite <out>/dataset from every round so far: written beside it, then swapped in (an interrupted write
    leaves the previous dataset or none; a re-run rewrites a dataset behind the rounds)."""
    import lerobot_format as lf

    root, tmp, old = out / "dataset", out / "dataset.tmp", out / "dataset.old"
    shutil.rmtree(tmp, ignore_errors=True)
    dagger = {"rounds": len(data), "teacher": args.teacher, "teacher_sha256": teacher_sha,
              "frames": sum(len(r["label"]) for r in data), "beta": [r["beta"] for r in data],
              "layout": "one decision = action_chunk rows: the observation the teacher labelled, held over the chunk; "
                        "action = the teacher's label chunk (not necessarily what was executed: see rounds/*.pt)"}
    lf.write_dataset(tmp, lf.from_decisions(dataset_episodes(data)), fps=args.env.control_freq, chunk=args.env.chunk,
                     version=args.dataset_version, info_extra={"dagger": dagger})
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        root.rename(old)
    tmp.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return root


def dataset_rounds(out: Path) -> int | None:
    info = out / "dataset/meta/info.json"
    return (ss.read_json(info).get("dagger") or {}).get("rounds") if info.exists() else None


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(args: Args, env_fn: Callable | None = None) -> Path:
    """`env_fn(scenes, num_envs, cfg, seed, workers)` builds the vector env (default scene_env.make_vec_env)."""
    import ppoflow_pi0 as pp

    out = Path(args.out)
    check_args(args)
    check_rerun(out, args)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    teacher, teacher_args, teacher_sha = load_teacher(args, device)
    scenes = pp.resolve_scenes(teacher_scene_args(args, teacher_args))
    if diff := env_differences(args.env, teacher_args.get("env")):
        print(f"[distill] note: --env differs from the teacher's training env ({'; '.join(diff)})")
    done = completed_rounds(out)
    if done:
        last = pp.read_checkpoint(out / f"ckpt_round_{done - 1:03d}.pt")
        if last.get("teacher_sha256") != teacher_sha:
            raise DistillError(f"distill.py: --teacher {args.teacher} is not the file rounds 0-{done - 1} were labelled "
                               "by (its content changed); continue with that teacher, or pass another --out")
    pp.seed_everything(args.seed)
    student = build_student(args, teacher, device)  # the checks of the inputs: nothing is written before them
    restrict_to_perception(args, student)
    replay = load_replay(args, student)
    ss.write_json_atomic(out / "args.json", {"schema_version": ss.SCHEMA_VERSION, "args": ss.to_dict(args),
                                             "scenes": scenes, "teacher_sha256": teacher_sha})
    for folder in (out, out / "rounds"):
        pp.remove_stale_tmp(folder)  # temp files of saves a kill interrupted
    loss_name = args.loss if action_loss_trains(args, student) else "aux_state"  # what train_round returns
    probe = build_probe(args, student, teacher)
    separate_probe = probe is not None and not student.config.estimate_object_state  # stored beside the policy
    params = trainable(student, probe)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps)))
    step = 0
    if not (out / "ckpt_start.pt").exists():  # the student before any DAgger round, for evaluation beside it
        pp.torch_save_atomic(pp.policy_checkpoint(student, args=ss.to_dict(args), round=-1, teacher_sha256=teacher_sha),
                             out / "ckpt_start.pt")
    if done:  # continue after the last complete round: student, optimizer, schedule and RNG as it left them
        student.load_weights(last["model"])
        student.normalizer = pp.Normalizer(**last["normalizer"])
        if separate_probe:
            probe.load_state_dict(last["aux_state_probe"])
        optimizer.load_state_dict(last["optimizer"])
        sched.load_state_dict(last["scheduler"])
        pp.set_rng_state(last["rng"][0])
        step = int(last["iteration"])
        print(f"[distill] {out}: rounds 0-{done - 1} complete, continuing at round {done}")
    metrics = out / "metrics.jsonl"
    if metrics.exists():  # rows of a round that did not complete are written again
        ss.repair_jsonl_tail(metrics)
        keep = [r for r in ss.read_jsonl(metrics) if r.get("round", 0) < done]
        ss.write_bytes_atomic(metrics, "".join(json.dumps(r) + "\n" for r in keep).encode())
    data = [torch.load(out / f"rounds/round_{k:03d}.pt", weights_only=True) for k in range(done)]
    if args.loss == "chunk" and (old := [k for k, r in enumerate(data) if not {"label_noise", "label_raw"} <= set(r)]):
        raise DistillError(f"distill.py: --loss chunk regresses the student's chunk from each label's own noise A^0 on "
                           f"the teacher's unclipped chunk, but rounds {old} in {out}/rounds were collected by a "
                           "distill.py that did not store them (fix: another --out, or --loss flow_matching)")
    batches = [student_inputs(student, r) for r in data]
    if data and dataset_rounds(out) != done:
        write_aggregate(out, data, args, teacher_sha)
    if done >= args.rounds:
        print(f"[distill] {out}: all {args.rounds} rounds are complete (--rounds more to continue)")
        return out
    wb = None
    if args.track:
        wb = ss.init_wandb(out, ss.to_dict(args), "distill", args.wandb_project, args.wandb_entity, args.wandb_group)
    env_cfg = replace(args.env, with_object_state=True)  # the camera for the student, the object state for the teacher
    envs = (env_fn or _make_vec_env)(scenes, args.num_envs, env_cfg, args.seed, args.env_workers)
    try:
        for k in range(done, args.rounds):
            b = beta(args, k)
            t0 = time.time()
            path = out / f"rounds/round_{k:03d}.pt"
            if path.exists():  # collected by a run stopped while training on it
                r = torch.load(path, weights_only=True)
            else:
                r = collect_round(envs, student, teacher, b, args.frames_per_round, pp.env_seed(args.seed, k, 0), k)
                pp.torch_save_atomic(r, path)
            data.append(r)
            batches.append(student_inputs(student, r))
            t_collect, t1 = time.time() - t0, time.time()
            agg = {key: torch.cat([x[key] for x in batches]) for key in batches[0]}
            if not len(agg["target"]):
                raise DistillError(f"distill.py: rounds 0-{k} have no frame with both objects in the workspace "
                                   f"(scene_env.WORKSPACE_BOUNDS_M), so there is nothing to train on: check the scenes "
                                   f"(objects placed off the table?) and the env settings")

            def log(s, m, k=k):
                ss.append_jsonl(metrics, {"round": k, "step": step + s, **m})
                if wb is not None:
                    wb.log(m, step=step + s)
            g = torch.Generator().manual_seed(args.seed * 1000 + k)
            losses = train_round(student, optimizer, sched, agg, args.steps_per_round, args, g, device, log, probe,
                                 replay)
            step += args.steps_per_round
            t_train, t2 = time.time() - t1, time.time()
            ck = pp.policy_checkpoint(student, optimizer=optimizer.state_dict(), scheduler=sched.state_dict(),
                                      rng=[pp.rng_state()], iteration=step, args=ss.to_dict(args), round=k,
                                      teacher_sha256=teacher_sha,
                                      **({"aux_state_probe": {n: v.cpu() for n, v in probe.state_dict().items()}}
                                         if separate_probe else {}),
                                      dagger={"frames": len(agg["target"]), "teacher": args.teacher,
                                              "episodes": sum(len(set(x["episode"].tolist())) for x in data)})
            pp.torch_save_atomic(ck, out / f"ckpt_round_{k:03d}.pt")  # the round is complete from here on
            pp.torch_save_atomic(ck, out / "ckpt_final.pt")
            if k == args.rounds - 1:  # the export is rewritten once per invocation: it costs ~8 ms CPU per frame
                write_aggregate(out, data, args, teacher_sha)
            m = {"charts/beta": b, "charts/frames": len(r["label"]), "charts/aggregate_frames": len(agg["target"]),
                 "charts/frames_off_workspace": len(r["label"]) - len(batches[-1]["target"]),
                 "charts/student_acted_fraction": float((~r["teacher_acted"]).float().mean()),
                 "charts/episodes_ended": r["episodes_ended"],
                 "charts/rollout_success_rate": r["episodes_succeeded"] / r["episodes_ended"] if r["episodes_ended"] else None,
                 f"losses/{loss_name}_round": float(np.mean(losses)), f"losses/{loss_name}_last": losses[-1],
                 "time/collect_s": t_collect, "time/train_s": t_train, "time/save_s": time.time() - t2,
                 "perf/frames_per_s": len(r["label"]) / max(t_collect, 1e-9)}
            ss.append_jsonl(metrics, {"round": k, "step": step, "summary": True, **m})
            if wb is not None:
                wb.log({key: v for key, v in m.items() if v is not None}, step=step)
            sr = "n/a" if m["charts/rollout_success_rate"] is None else f"{m['charts/rollout_success_rate']:.2f}"
            print(f"[distill] round {k}: beta {b:.3f}, {len(r['label'])} frames ({m['charts/frames_off_workspace']} off "
                  f"the workspace; trainable aggregate {len(agg['target'])}), "
                  f"rollout success {sr} over {r['episodes_ended']} episodes, loss {np.mean(losses):.4f}; "
                  f"collect {t_collect:.1f}s, train {t_train:.1f}s, save{' + dataset' * (k == args.rounds - 1)} "
                  f"{m['time/save_s']:.1f}s")
    finally:
        envs.close()
        if wb is not None:
            wb.finish()
    return out


def _make_vec_env(*a, **kw):
    import scene_env

    return scene_env.make_vec_env(*a, **kw)


if __name__ == "__main__":
    from ppoflow_pi0 import CheckpointError

    try:
        main(tyro.cli(Args))
    except (CheckpointError, DistillError, ss.SchemaError) as e:  # bad inputs: one clear line, no traceback
        raise SystemExit(str(e) if str(e).startswith("distill.py") else f"distill.py: error: {e}") from None
