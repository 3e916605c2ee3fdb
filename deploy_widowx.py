"""Real WidowX 250 S deployment: run a checkpoint safely, record trials the way Table 2 reports them.

One small robot interface (`Robot`) with three backends: `sim` (a GenScene-v1 manifest or a SimplerEnv
id standing in for the robot: the dry run that exercises everything else), `bridge` (the BridgeData
robot server client `widowx_envs.widowx_env_service.WidowXClient`) and `interbotix` (the Interbotix
ROS 2 Python API, `InterbotixManipulatorXS`). Hardware packages are imported only when chosen.

Every policy action passes the safety layer (pure functions below: per-step translation/rotation
clamp, workspace box, joint limits, gripper debouncing) and the e-stop (SPACE/q/ESC on the terminal,
SIGINT, SIGTERM) halts the arm at once; ENTER (or e) ends a trial when the operator sees the task done
(time to finish on hardware = wall time until then; in sim, the env's success time). Trials go to an append-only, crash-safe JSONL log; rerunning
the same command resumes. The operator labels each trial with quick keys (p s d f, combinations
like "pd"); the summary reports PSR, SR, DFR, SFR, TF per scene and overall.

The limit flags themselves cannot create motion: each must be finite, positive, ordered (workspace lo < hi) and
inside a hard envelope (the ENVELOPE_* constants below; no flag widens them), or the session stops with one clear
error before the robot is touched. An inference watchdog (`--inference-timeout-s`, default 20 s) holds the arm and
ends the session when a policy call hangs; a NaN raw model output holds the arm, a checkpoint with non-finite
weights is refused at load, and the e-stop is re-checked between the gripper and the arm command.

    python deploy_widowx.py --backend sim --policy scripted --trials-file examples/trials.json --auto-label
    python deploy_widowx.py --backend bridge --ckpt runs/ppo/ckpt_final.pt --trials-file examples/trials.json
    python deploy_widowx.py --compare trials/bridge-il trials/bridge-ppo --session il_vs_ppo
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

import scene_schema as ss

SCHEMA_VERSION = 1
# The hard safety envelope: the limit flags may narrow it, no flag can widen it (check_safety_limits refuses a bad
# value before anything moves). The WidowX 250 S reaches ~0.65 m; z = 0 is the table under the base.
ENVELOPE_LO, ENVELOPE_HI = (0.05, -0.45, 0.0), (0.60, 0.45, 0.60)  # m, robot base frame
ENVELOPE_MAX_STEP_TRANSLATION_M = 0.05
ENVELOPE_MAX_STEP_ROTATION_RAD = 0.5
ENVELOPE_CONTROL_HZ = (0.5, 1000.0)  # 1000 Hz: the fakes in the tests; the paper runs 5 Hz
ENVELOPE_MAX_MOVING_TIME_S = 5.0
ENVELOPE_MAX_JOINT_MARGIN_RAD = 0.5
ENVELOPE_MAX_INFERENCE_TIMEOUT_S = 600.0
LABEL_KEYS = {"p": "partial success", "s": "success", "d": "dynamics failure", "f": "semantic failure"}
BRIDGE_INSTALL = ("the BridgeData robot server client: `pip install -e widowx_envs` from a clone of "
                  "https://github.com/rail-berkeley/bridge_data_robot (and its dependency "
                  "https://github.com/youliangtan/edgeml); the robot server runs on the robot's computer")
INTERBOTIX_INSTALL = ("the Interbotix ROS 2 arm stack (interbotix_xs_modules): follow "
                      "https://docs.trossenrobotics.com/interbotix_xsarms_docs/ros_interface/ros2/software_setup.html "
                      "(xsarm_amd64_install.sh), `source ~/interbotix_ws/install/setup.bash`, and launch "
                      "`ros2 launch interbotix_xsarm_control xsarm_control.launch.py robot_model:=wx250s`")


@dataclass
class Args:
    backend: Literal["sim", "bridge", "interbotix"] = "sim"
    """Robot backend: `sim` (scene_env stands in for the robot), `bridge` (BridgeData robot server), `interbotix` (ROS 2)."""
    trials_file: Path = Path("examples/trials.json")
    """JSON list of scenes: [{"scene", "command", "distractors", "scene_id"}]; scene_id (sim) = manifest path or "simpler:<EnvId>"."""
    ckpt: str | None = None
    """Policy checkpoint (`runs/<run>/ckpt_*.pt`, read with ppoflow_pi0.load_policy); required with --policy ckpt."""
    policy: Literal["ckpt", "scripted", "random"] = "ckpt"
    """`ckpt`: the trained VLA; `scripted`: the sim expert (sim backend only); `random`: small random deltas (plumbing tests)."""
    device: str = "cpu"
    """Torch device for the policy ("cpu", "cuda")."""
    trials_per_scene: int = 10
    """Trials per scene (the paper runs 10 per scene and policy, Table 2)."""
    session: str | None = None
    """Session name: writes trials/<session>/; default `<backend>-<policy or checkpoint>[-dry-run]`, so rerunning resumes."""
    out_dir: Path = Path("trials")
    """Root folder of trial sessions."""
    dry_run: bool = False
    """Print every command instead of sending it (observations are still read; the robot never moves)."""
    labels: str | None = None
    """Non-interactive labels in plan order (scene-major): "s,pd,f" or a file with one label per line."""
    auto_label: bool = False
    """Sim only: label from the env's success / partial_success (failures become "d": sim cannot tell semantic ones)."""
    video: Literal["none", "mp4", "gif"] = "none"
    """Save what the policy saw in each trial to trials/<session>/videos/<trial>.<ext>."""
    compare: tuple[str, ...] = ()
    """Session folders to summarise side by side (e.g. baseline then fine-tuned); runs no robot."""
    seed: int = 0
    """Seed for the sim layouts (trial i of a scene resets with seed + i) and the random policy."""
    control_hz: float = 5.0
    """Control rate (5 Hz, Table A.1); kept by a deadline scheduler on hardware."""
    max_decisions: int = 25
    """Trial length in policy decisions (chunks of C steps, Table A.1)."""
    image_size: int = 224
    """The training env's image size (EnvConfig.image_size): frames become square uint8 RGB at this size, then the
    policy applies its own resize exactly as in training."""
    sim_realtime: bool = False
    """Sim: also keep the wall-clock rate (default: as fast as the simulator runs; TF is in sim seconds)."""
    camera: Literal["robot", "opencv", "realsense"] = "robot"
    """Image source: the backend's own (`sim` render, bridge server image) or a local OpenCV / RealSense camera."""
    camera_index: int = 0
    """OpenCV VideoCapture index (or RealSense is the first device found)."""
    crop: Literal["none", "center"] = "none"
    """Camera frame -> square: plain resize (default: the sim camera is the 640x480 Bridge view resized, as
    open-pi-zero does) or centre crop then resize (only for a policy trained on cropped views)."""
    workspace_lo: tuple[float, float, float] = (0.10, -0.30, 0.0)
    """Lower corner (x, y, z, m, robot base frame = scene_env's state frame) of the box ee targets are clamped into
    (the defaults hold the scripted expert's whole reach in SimplerEnv, z = 0 is the table under the base)."""
    workspace_hi: tuple[float, float, float] = (0.50, 0.30, 0.45)
    """Upper corner of the workspace box."""
    max_step_translation_m: float = 0.03
    """Largest end-effector translation per control step (norm; 0.03 m at 5 Hz = 0.15 m/s)."""
    max_step_rotation_rad: float = 0.3
    """Largest rotation per control step per axis (rad; 0.3 = the scripted expert's yaw pace the policy learned)."""
    joint_limit_margin_rad: float = 0.05
    """Targets whose IK solution comes closer than this to a joint limit are refused (interbotix)."""
    gripper_debounce: int = 2
    """The gripper switches only after this many consecutive identical commands."""
    start_pose: tuple[float, float, float, float, float, float] = (0.30, 0.0, 0.15, 0.0, 1.57, 0.0)
    """Interbotix: end-effector pose (x y z roll pitch yaw) the arm goes to before each trial (bridge: the server's start_state)."""
    moving_time_s: float | None = None
    """Time the arm takes for one step command (default 1 / control_hz)."""
    bridge_host: str = "localhost"
    """Bridge robot server host."""
    bridge_port: int = 5556
    """Bridge robot server port."""
    bridge_env_params: str | None = None
    """JSON file or string merged into the bridge server's env_params (e.g. camera_topics)."""
    interbotix_model: str = "wx250s"
    """Interbotix robot model."""
    gripper_pressure: float = 0.5
    """Interbotix gripper effort in [0, 1] between its PWM limits."""
    pos_p_gain: int | None = None
    """Interbotix: Position_P_Gain register of the arm motors (PD gains pass through; None keeps the robot's)."""
    pos_i_gain: int | None = None
    """Interbotix: Position_I_Gain register."""
    pos_d_gain: int | None = None
    """Interbotix: Position_D_Gain register."""
    inference_timeout_s: float = 20.0
    """Watchdog: a policy call that takes longer holds the arm and ends the session (the trial is not logged)."""
    estop_action: Literal["hold", "torque_off", "gravity_compensation"] = "hold"
    """Interbotix e-stop: hold the measured joint positions, torque off (the arm drops!), or gravity compensation (floats, needs the gc node)."""
    verbose: bool = False
    """Print one line per control step."""

    @property
    def control_dt(self) -> float:
        return 1.0 / self.control_hz

    @property
    def move_time(self) -> float:
        return self.moving_time_s or self.control_dt

    @property
    def session_name(self) -> str:
        if self.session:
            return self.session
        tag = self.policy if self.policy != "ckpt" or not self.ckpt else \
            f"{Path(self.ckpt).parent.name}_{Path(self.ckpt).stem}"
        return f"{self.backend}-{ss.slugify(tag, 40)}" + ("-dry-run" if self.dry_run else "")

    @property
    def session_dir(self) -> Path:
        return self.out_dir / self.session_name


# ---------------------------------------------------------------------------------------------
# Safety: small pure functions (unit-tested)
# ---------------------------------------------------------------------------------------------


def safety_limit_errors(args: Args) -> list[str]:
    """What is wrong with the safety-limit flags: each limit must be a finite number, positive, ordered (workspace
    lo < hi) and inside the hard envelope (the ENVELOPE_* constants). Empty when all are fine."""
    errs = []

    def number(flag: str, v, lo: float, hi: float, lo_open: bool = True, default=None) -> None:
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not (math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi):
            fix = f" (default {default})" if default is not None else ""
            errs.append(f"--{flag} {v}: must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}]{fix}")

    d = Args()
    number("max-step-translation-m", args.max_step_translation_m, 0.0, ENVELOPE_MAX_STEP_TRANSLATION_M,
           default=d.max_step_translation_m)
    number("max-step-rotation-rad", args.max_step_rotation_rad, 0.0, ENVELOPE_MAX_STEP_ROTATION_RAD,
           default=d.max_step_rotation_rad)
    number("control-hz", args.control_hz, ENVELOPE_CONTROL_HZ[0], ENVELOPE_CONTROL_HZ[1], lo_open=False,
           default=d.control_hz)
    if args.moving_time_s is not None:
        number("moving-time-s", args.moving_time_s, 0.0, ENVELOPE_MAX_MOVING_TIME_S, default="1 / control_hz")
    number("joint-limit-margin-rad", args.joint_limit_margin_rad, 0.0, ENVELOPE_MAX_JOINT_MARGIN_RAD, lo_open=False,
           default=d.joint_limit_margin_rad)
    number("gripper-pressure", args.gripper_pressure, 0.0, 1.0, lo_open=False, default=d.gripper_pressure)
    number("inference-timeout-s", args.inference_timeout_s, 0.0, ENVELOPE_MAX_INFERENCE_TIMEOUT_S,
           default=d.inference_timeout_s)
    if not isinstance(args.gripper_debounce, int) or not 1 <= args.gripper_debounce <= 100:
        errs.append(f"--gripper-debounce {args.gripper_debounce}: must be an integer in [1, 100] (default 2)")
    def vec(v) -> tuple[np.ndarray, str]:
        try:
            a = np.asarray(v, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return np.full(0, np.nan), repr(v)
        return a, " ".join(f"{x:g}" for x in a)

    box = []
    for flag, v in (("workspace-lo", args.workspace_lo), ("workspace-hi", args.workspace_hi)):
        a, text = vec(v)
        env = f"{' '.join(map(str, ENVELOPE_LO))} .. {' '.join(map(str, ENVELOPE_HI))}"
        if a.shape != (3,) or not np.isfinite(a).all():
            errs.append(f"--{flag} {text}: must be 3 finite numbers (x y z, m)")
        elif np.any(a < ENVELOPE_LO) or np.any(a > ENVELOPE_HI):
            errs.append(f"--{flag} {text}: outside the hard envelope {env}")
        else:
            box.append(a)
    if len(box) == 2 and not np.all(box[0] < box[1]):
        errs.append(f"--workspace-lo {vec(box[0])[1]} must be below --workspace-hi {vec(box[1])[1]} on every axis "
                    "(swapped?)")
    if args.backend == "interbotix" and len(box) == 2:  # reset moves the arm to start_pose
        sp, text = vec(args.start_pose)
        if sp.shape != (6,) or not np.isfinite(sp).all() or np.any(sp[:3] < box[0]) or np.any(sp[:3] > box[1]):
            errs.append(f"--start-pose {text}: must be 6 finite numbers with x y z inside the workspace box")
    return errs


def check_safety_limits(args: Args) -> None:
    """Refuse bad safety-limit flags with one line naming each (SystemExit), before anything moves."""
    errs = safety_limit_errors(args)
    if errs:
        raise SystemExit("error: unsafe limit flags, nothing was sent to the robot: " + "; ".join(errs)
                         + ". Fix the flags (the hard envelope is ENVELOPE_* in deploy_widowx.py; no flag widens it)")


def clamp_step(delta: np.ndarray, max_trans: float, max_rot: float) -> tuple[np.ndarray, bool]:
    """Limit one ee delta [6]: translation norm <= max_trans (direction kept), each rotation <= max_rot."""
    delta = np.asarray(delta, dtype=np.float64).copy()
    clamped = False
    scale = float(np.abs(delta[:3]).max())  # scaled norm: no overflow for huge finite deltas (1e308)
    norm = scale * float(np.linalg.norm(delta[:3] / scale)) if scale > 0 else 0.0
    if norm > max_trans:
        delta[:3] *= max_trans / norm
        clamped = True
    rot = np.clip(delta[3:6], -max_rot, max_rot)
    clamped |= bool(np.any(rot != delta[3:6]))
    delta[3:6] = rot
    return delta, clamped


def clamp_to_workspace(xyz: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clamp a target position into the workspace box."""
    out = np.clip(np.asarray(xyz, dtype=np.float64), lo, hi)
    return out, bool(np.any(out != xyz))


def safe_ee_delta(pose: np.ndarray, delta: np.ndarray, lo, hi, max_trans: float, max_rot: float
                  ) -> tuple[np.ndarray, list[str]]:
    """The delta actually sent: step-clamped, with the target pose[:3] + delta[:3] kept inside the box.

    `pose` is the pose the backend composes deltas onto. Returns (delta [6], reasons it was changed).
    The entry check comes first: a non-finite delta (NaN / inf from the policy) or a non-finite pose (a bad
    robot reading, so the box cannot be checked) is refused as a hold, the zero delta, with the reason
    "non_finite_action" / "non_finite_pose". Whatever comes in, the result is finite, within the step limits and,
    from a pose inside the box, lands inside it. The safety layer only ever removes motion: from a pose outside
    the box each axis may stay or move back toward it, never further out, so a zero delta stays zero.
    """
    delta, pose = np.asarray(delta, dtype=np.float64).reshape(-1)[:6], np.asarray(pose, dtype=np.float64).reshape(-1)
    if delta.shape != (6,) or not np.isfinite(delta).all():
        return np.zeros(6), ["non_finite_action"]
    if pose.size < 3 or not np.isfinite(pose[:3]).all():
        return np.zeros(6), ["non_finite_pose"]
    reasons = []
    delta, c1 = clamp_step(delta, max_trans, max_rot)
    if c1:
        reasons.append("step")
    p = pose[:3]
    lo_p, hi_p = np.minimum(np.asarray(lo, dtype=np.float64), p), np.maximum(np.asarray(hi, dtype=np.float64), p)
    target, c2 = clamp_to_workspace(p + delta[:3], lo_p, hi_p)  # the box stretched to hold the pose: never pushes
    if c2:
        reasons.append("workspace")
        delta[:3] = target - p  # per axis no longer than before: still within the step limit
    if not np.isfinite(delta).all():  # belt and braces: never send one
        return np.zeros(6), ["non_finite_action"]
    return delta, reasons


def joint_limit_violations(q, lower, upper, margin: float = 0.0) -> list[int]:
    """Indices of joints outside [lower + margin, upper - margin]."""
    q, lower, upper = map(np.asarray, (q, lower, upper))
    return [int(i) for i in np.nonzero((q < lower + margin) | (q > upper - margin))[0]]


def gripper_open_from_action(g: float) -> bool | None:
    """Policy gripper convention (WidowX / Bridge): +1 open, -1 close; None for a non-finite value (NaN must not
    read as "close": the caller keeps the gripper as it is)."""
    g = float(g)
    return None if not math.isfinite(g) else g > 0.0


class GripperDebouncer:
    """Switch the gripper only after `n` consecutive identical commands that differ from its state."""

    def __init__(self, n: int, is_open: bool = True):
        self.n, self.is_open, self._streak = max(1, int(n)), is_open, 0

    def update(self, want_open: bool) -> bool:
        if want_open == self.is_open:
            self._streak = 0
        else:
            self._streak += 1
            if self._streak >= self.n:
                self.is_open, self._streak = want_open, 0
        return self.is_open


def pose_to_matrix(pose: np.ndarray) -> np.ndarray:
    """[x y z roll pitch yaw] -> 4x4, R = Rz(yaw) Ry(pitch) Rx(roll) (Interbotix / ROS convention)."""
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", pose[3:6]).as_matrix()
    T[:3, 3] = pose[:3]
    return T


def matrix_to_pose(T: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return np.concatenate([T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_euler("xyz")])


def compose_delta(T: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """4x4 target of an ee delta: translation added, rotation applied about base-frame axes (R_d @ R), like the
    sim's `align2` controller; matrices avoid the Euler singularity at pitch = pi/2 (gripper pointing down)."""
    out = np.array(T, dtype=np.float64)
    out[:3, :3] = pose_to_matrix(np.concatenate([[0, 0, 0], delta[3:6]]))[:3, :3] @ out[:3, :3]
    out[:3, 3] += delta[:3]
    return out


# ---------------------------------------------------------------------------------------------
# Images, labels, trial plan, summary: pure helpers
# ---------------------------------------------------------------------------------------------


def preprocess_rgb(frame: np.ndarray, size: int, crop: str = "none") -> np.ndarray:
    """Camera frame (HxWx3 RGB) -> square uint8 RGB at `size`: plain resize (the sim view) or centre crop first."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(frame * (255.0 if frame.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    h, w = frame.shape[:2]
    if crop == "center" and h != w:
        s = min(h, w)
        frame = frame[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if frame.shape[:2] != (size, size):
        import cv2

        frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame)


def parse_label(text: str) -> str:
    """Operator quick keys -> canonical label ("pd", "s", ...); raises ValueError with the fix."""
    keys = "".join(sorted(set(text.strip().lower().replace(" ", "").replace(",", "")), key="psdf".find))
    bad = [k for k in keys if k not in LABEL_KEYS]
    if not keys or bad:
        raise ValueError(f"label {text!r}: use the keys " + ", ".join(f"{k}={v}" for k, v in LABEL_KEYS.items())
                         + " (combinations allowed, e.g. 'pd')")
    if "s" in keys and ("d" in keys or "f" in keys):
        raise ValueError(f"label {text!r}: a success (s) cannot also be a failure (d/f)")
    if "s" in keys and "p" not in keys:
        keys = "p" + keys  # a success grasped and lifted the target: it is a partial success too
    return keys


def parse_labels_arg(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    items = [x for x in (t.strip() for t in text.replace("\n", ",").split(",")) if x and not x.startswith("#")]
    return [parse_label(x) for x in items]


def load_trials_file(path: Path) -> list[dict]:
    """Validate the trials file: a JSON list (or {"scenes": [...]}) of {scene, command, distractors, scene_id}."""
    data = ss.read_json(path)
    items = data.get("scenes") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ss.SchemaError(str(path), "", "expected a non-empty JSON list of scenes")
    out, names = [], set()
    for i, item in enumerate(items):
        d = ss._Doc(item, str(path), f"[{i}]")
        scene = {"scene": d.text("scene"), "command": d.text("command"),
                 "distractors": d.get("distractors", list, default=[]), "scene_id": d.get("scene_id", str, default=None)}
        if scene["scene"] in names:
            d.fail("scene", f"duplicate scene name {scene['scene']!r}: names key the trial log")
        names.add(scene["scene"])
        out.append(scene)
    return out


def trial_plan(scenes: list[dict], n: int) -> list[tuple[int, dict, int, str]]:
    """(plan index, scene, trial index, trial key) in scene-major order; keys are unique and stable."""
    plan = []
    for scene in scenes:
        for i in range(n):
            plan.append((len(plan), scene, i, f"{scene['scene']}#{i:03d}"))
    return plan


def latency_stats(ms: list[float]) -> dict:
    if not ms:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    a = np.asarray(ms)
    return {"mean": round(float(a.mean()), 2), "p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "max": round(float(a.max()), 2)}


def trial_stats(records: list[dict]) -> dict:
    """Table 2 metrics over trials: PSR, SR, DFR, SFR (fractions of all trials; categories overlap), TF."""
    n = len(records)
    lab = [r["label"] for r in records]
    tf = [r["tf_s"] for r in records if "s" in r["label"] and r.get("tf_s") is not None]
    rate = (lambda k: sum(k in x for x in lab) / n) if n else (lambda k: None)
    return {"n": n, "psr": rate("p"), "sr": rate("s"), "dfr": rate("d"), "sfr": rate("f"),
            "n_failed": sum("s" not in x for x in lab),
            "tf_mean": float(np.mean(tf)) if tf else None, "tf_std": float(np.std(tf)) if tf else None,
            "n_tf": len(tf)}


def summarize_trials(records: list[dict]) -> dict:
    """Per-scene (first-seen order) and overall stats of a trial log."""
    scenes: dict[str, list] = {}
    for r in records:
        scenes.setdefault(r["scene"], []).append(r)
    return {"scenes": {s: trial_stats(rs) for s, rs in scenes.items()}, "overall": trial_stats(records)}


def summary_markdown(sessions: dict[str, dict]) -> str:
    """Table-2-style markdown: one row per scene (+ All), one column block per session."""
    def cell(st: dict) -> list[str]:
        if st is None:
            return ["", "", "", "", "", ""]
        f = lambda v: "-" if v is None else f"{v:.2f}"
        fail = (lambda v: "-") if st["n_failed"] == 0 else f  # no failures: failure rates undefined (Table 2)
        tf = "-" if st["tf_mean"] is None else (f"{st['tf_mean']:.1f}" if st["n_tf"] == 1 else
                                                f"{st['tf_mean']:.1f} ± {st['tf_std']:.1f}")
        return [str(st["n"]), f(st["psr"]), f(st["sr"]), fail(st["dfr"]), fail(st["sfr"]), tf]

    names = list(sessions)
    head = ["scene"] + [f"{c} ({s})" if len(names) > 1 else c for s in names
                        for c in ("n", "PSR↑", "SR↑", "DFR↓", "SFR↓", "TF (s)↓")]
    scenes = list(dict.fromkeys(s for v in sessions.values() for s in v["scenes"]))
    rows = [[s] + sum((cell(sessions[n]["scenes"].get(s)) for n in names), []) for s in scenes]
    rows.append(["**All**"] + sum((cell(sessions[n]["overall"]) for n in names), []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    legend = ("\nPSR: grasped and lifted the target; SR: task success; DFR / SFR: dynamics / semantic failures "
              "(fractions of all trials, not exclusive); TF: time to finish of successful trials, mean ± std.\n")
    return "# Trial summary: " + " vs ".join(names) + "\n\n" + "\n".join(lines) + "\n" + legend


def write_summary(out: Path, sessions: dict[str, list[dict]], args: dict) -> dict:
    summary = {name: summarize_trials(recs) for name, recs in sessions.items()}
    doc = {"schema_version": SCHEMA_VERSION, "kind": "deploy_summary", "sessions": summary, "args": args}
    ss.write_json_atomic(out / "summary.json", doc)
    ss.write_bytes_atomic(out / "summary.md", summary_markdown(summary).encode("utf-8"))
    return doc


# ---------------------------------------------------------------------------------------------
# Real-time pieces: deadline scheduler, e-stop, keyboard
# ---------------------------------------------------------------------------------------------


class DeadlineScheduler:
    """Paces commands: call wait() right before each command. The first returns at once; each later one returns
    on the next deadline of a fixed-rate grid, and never less than one period after the previous return, so two
    commands are never closer than one control period. An overrun (e.g. a slow inference) is counted and starts a
    fresh period from now: no burst of catch-up commands."""

    def __init__(self, period: float, clock: Callable[[], float] = time.perf_counter, sleep=time.sleep):
        self.period, self.clock, self.sleep = period, clock, sleep
        self.next, self.overruns = None, 0

    def wait(self) -> None:
        now = self.clock()
        if self.next is None:
            self.next = now
        elif now > self.next:  # missed the deadline: count it, go now
            self.overruns += 1
        elif self.period > 0:
            self.sleep(self.next - now)
            now = self.clock()
        self.next = max(self.next, now) + self.period  # the next command at least one period after this one


class EStop:
    """Emergency stop: halts the robot at once and refuses every later command.

    Commands run inside `guard()`. A trigger from another thread (keyboard) waits for the command in flight
    (one call, milliseconds) and halts; a trigger from a signal handler, which runs in the commanding thread
    between bytecodes, cannot wait for it, so the halt happens the moment that command returns. Either way the
    stop is the last thing the robot receives."""

    def __init__(self):
        self.event, self.lock, self.robot, self.reason = threading.Event(), threading.RLock(), None, None
        self._owner, self._halted = None, False

    @property
    def triggered(self) -> bool:
        return self.event.is_set()

    @contextlib.contextmanager
    def guard(self):
        """`with estop.guard() as ok:` send commands only if ok (not triggered)."""
        with self.lock:
            self._owner = threading.get_ident()
            try:
                yield not self.triggered
            finally:
                self._owner = None
                if self.triggered:
                    self._halt()

    def trigger(self, reason: str) -> None:
        if self.event.is_set():
            return
        self.event.set()
        self.reason = reason
        print(f"\n[E-STOP] {reason}: halting the arm", file=sys.stderr, flush=True)
        if self._owner == threading.get_ident():
            return  # inside a command in this thread: guard() halts as soon as it returns
        with self.lock:
            self._halt()

    def _halt(self) -> None:
        if self._halted or self.robot is None:
            return
        self._halted = True
        try:
            self.robot.stop()
        except Exception as e:  # keep going: the operator must know, nothing else can be done here
            print(f"[E-STOP] robot.stop() failed: {e!r} - USE THE HARDWARE STOP", file=sys.stderr)

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM -> e-stop; a second SIGINT or SIGTERM raises KeyboardInterrupt. Returns a restore function."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.triggered:  # a second stop: the arm is held already; nothing (not a hung policy) may keep us
                raise KeyboardInterrupt(f"second stop signal ({signal.Signals(signum).name})")
            self.trigger(signal.Signals(signum).name)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        for s in old:
            signal.signal(s, handler)
        return lambda: [signal.signal(s, h) for s, h in old.items()]


class KeyboardWatcher:
    """While a trial runs (TTY only): SPACE / q / ESC -> e-stop; ENTER / e -> end the trial now."""

    def __init__(self, estop: EStop):
        self.estop, self.end = estop, threading.Event()
        self.active = sys.stdin is not None and sys.stdin.isatty()

    def __enter__(self):
        self.end.clear()
        if self.active:
            import termios
            import tty

            self._fd = sys.stdin.fileno()
            self._old = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            if select.select([self._fd], [], [], 0.05)[0]:
                ch = os.read(self._fd, 1).decode(errors="ignore")
                if ch in (" ", "q", "\x1b"):
                    self.estop.trigger(f"key {ch!r}")
                elif ch in ("\n", "\r", "e"):
                    self.end.set()

    def __exit__(self, *exc):
        if self.active:
            import termios

            self._stop.set()
            self._thread.join(1.0)
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._old)


# ---------------------------------------------------------------------------------------------
# Robot interface and backends
# ---------------------------------------------------------------------------------------------


class Robot(Protocol):
    """get_observation() -> {"rgb": HxWx3 uint8 or None, "ee_pose": [6] (base frame, m / rad),
    "gripper": opening in [0, 1], "target_pose": [6] the pose deltas compose onto (optional)}."""

    def reset(self, seed: int | None = None) -> None: ...
    def get_observation(self) -> dict: ...
    def apply_ee_delta(self, delta: np.ndarray) -> str | None: ...  # None = sent, else the refusal reason
    def set_gripper(self, open_: bool) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def outcome(self) -> dict | None: ...  # sim: {"done", "success", "partial_success", "elapsed_s"}


def import_backend(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"error: the backend needs `{module}` ({e}). Install {install}.") from None


class SimRobot:
    """scene_env's ChunkVecEnv with one env and chunk=1, so every control step is one command."""

    def __init__(self, scene_id: str, args: Args, image_size: int, max_steps: int):
        import scene_env

        # the real robot's physics: SimplerEnv's 500 Hz (training's 100 Hz is validated for the scripted expert only)
        cfg = scene_env.EnvConfig(image_size=image_size, chunk=1, max_decisions=max_steps, sim_freq=500)
        self.env = scene_env.make_vec_env([scene_id], num_envs=1, cfg=cfg, seed=args.seed, workers=0)  # in-process
        self.gripper, self.obs, self.result = 1.0, None, None

    def reset(self, seed=None):
        self.obs, self.gripper = self.env.reset(seed=seed)[0], 1.0
        self.result = {"done": False, "success": False, "partial_success": False, "elapsed_s": 0.0}

    def get_observation(self):
        st = self.obs["state"][0].cpu().numpy().astype(np.float64)
        out = {"rgb": self.obs["rgb"][0].cpu().numpy(), "ee_pose": st[:6], "gripper": float(st[6])}
        try:  # the align2 controller adds deltas to its target pose (base frame): clamp against that, as on hardware
            from scipy.spatial.transform import Rotation

            target = self.env.runner.env.agent.controller.controllers["arm"]._target_pose
            w, x, y, z = target.q[0].cpu().numpy()
            rpy = Rotation.from_quat([x, y, z, w]).as_euler("xyz")
            out["target_pose"] = np.concatenate([target.p[0].cpu().numpy(), rpy])
        except (AttributeError, KeyError):
            pass
        return out

    def apply_ee_delta(self, delta):
        import torch

        if not np.isfinite(delta).all():  # run_trial's safety layer never sends one; refuse it here too
            return "non-finite delta refused"
        a = torch.tensor(np.concatenate([delta, [self.gripper]]), dtype=torch.float32).view(1, 1, 7)  # [N, C, 7]
        obs, _, term, trunc, info = self.env.step(a)
        done = bool(term[0] or trunc[0])
        self.obs = info["final_observation"] if done and "final_observation" in info else obs  # the episode's last frame
        self.result = {"done": done, "success": bool(info["success"][0]), "elapsed_s": float(info["elapsed_s"][0]),
                       "partial_success": self.result["partial_success"] or bool(info["partial_success"][0])}
        return None

    def set_gripper(self, open_):
        self.gripper = 1.0 if open_ else -1.0

    def stop(self):
        pass  # nothing moves between steps in simulation

    def close(self):
        self.env.close()

    def outcome(self):
        return self.result


class BridgeRobot:
    """BridgeData robot server client: step_action([dxyz, drpy, gripper 1 open / 0 closed]) relative moves."""

    def __init__(self, args: Args, image_size: int):
        mod = import_backend("widowx_envs.widowx_env_service", BRIDGE_INSTALL)
        self.ok = getattr(getattr(mod, "WidowXStatus", None), "SUCCESS", 1)
        params = dict(getattr(getattr(mod, "WidowXConfigs", None), "DefaultEnvParams", {}) or {})
        params.update({"move_duration": args.move_time, "action_clipping": "xyz", "return_full_image": True,
                       # the server clamps to the same box again
                       "override_workspace_boundaries": [[*args.workspace_lo, -1.57, 0], [*args.workspace_hi, 1.57, 0]]})
        if args.bridge_env_params:
            src = Path(args.bridge_env_params)
            params.update(ss.read_json(src) if src.is_file() else json.loads(args.bridge_env_params))
        if any(g is not None for g in (args.pos_p_gain, args.pos_i_gain, args.pos_d_gain)):
            print("warning: the bridge client has no gain API; set motor gains on the robot server", file=sys.stderr)
        self.client = mod.WidowXClient(host=args.bridge_host, port=args.bridge_port)
        status = self.client.init(params, image_size=image_size)
        if status != self.ok:
            raise SystemExit(f"error: bridge robot server at {args.bridge_host}:{args.bridge_port} answered init "
                             f"with status {status}; start it on the robot computer (widowx_env_service --server)")
        self.gripper, self.size = 1.0, image_size

    def reset(self, seed=None):
        self.client.reset()
        self.gripper = 1.0

    def _raw_obs(self) -> dict:
        for _ in range(50):
            obs = self.client.get_observation()
            if obs is not None:
                return obs
            time.sleep(0.1)
        raise RuntimeError("bridge robot server sent no observation for 5 s")

    def get_observation(self):
        obs = self._raw_obs()
        state, rgb = np.asarray(obs["state"], dtype=np.float64), obs.get("full_image")
        if rgb is None and obs.get("image") is not None:  # the server's own resize: flat CHW float in [0, 1]
            rgb = (np.asarray(obs["image"]).reshape(3, self.size, self.size).transpose(1, 2, 0) * 255).astype(np.uint8)
        return {"rgb": rgb, "ee_pose": state[:6],
                "gripper": float(state[6]) if state.size > 6 else self.gripper}

    def apply_ee_delta(self, delta):
        if not np.isfinite(delta).all():
            return "non-finite delta refused"
        status = self.client.step_action(np.concatenate([delta, [self.gripper]]), blocking=False)
        return None if status == self.ok else f"robot server status {status}"

    def set_gripper(self, open_):
        self.gripper = 1.0 if open_ else 0.0  # applied with the next step_action

    def stop(self):
        obs = self.client.get_observation()  # one try: an e-stop never waits (step moves last move_duration anyway)
        if obs is not None:  # hold where it is: the client API has no halt call
            self.client.move(np.asarray(obs["state"][:6], dtype=np.float64), duration=0.2, blocking=True)

    def close(self):
        self.client.stop()

    def outcome(self):
        return None


class InterbotixRobot:
    """Interbotix ROS 2 API: targets = last command composed with the delta, IK, joint-limit check, publish."""

    def __init__(self, args: Args, read_only: bool = False):
        """`read_only` (dry run): connect and read only; nothing that changes the robot's state (motor gains,
        gravity compensation, torque) is written."""
        arm_mod = import_backend("interbotix_xs_modules.xs_robot.arm", INTERBOTIX_INSTALL)
        self.args = args
        self.bot = arm_mod.InterbotixManipulatorXS(
            robot_model=args.interbotix_model, group_name="arm", gripper_name="gripper",
            moving_time=args.move_time, accel_time=args.move_time / 4, gripper_pressure=args.gripper_pressure)
        try:  # newer interbotix_ros_toolboxes start the executor explicitly
            from interbotix_common_modules.common_robot.robot import robot_startup
            robot_startup()
        except ImportError:
            pass
        if args.pos_p_gain is not None and read_only:
            print("[dry-run] motor PID gains not written", file=sys.stderr)
        elif args.pos_p_gain is not None:  # PD gains pass through to the motor registers
            self.bot.core.robot_set_motor_pid_gains("group", "arm", kp_pos=args.pos_p_gain,
                                                   ki_pos=args.pos_i_gain or 0, kd_pos=args.pos_d_gain or 0)
        self.gc = None
        if args.estop_action == "gravity_compensation" and not read_only:
            gc_mod = import_backend("interbotix_xs_modules.xs_robot.gravity_compensation", INTERBOTIX_INSTALL)
            self.gc = gc_mod.InterbotixGravityCompensationInterface(self.bot.core)
        info = self.bot.arm.group_info
        self.lower, self.upper = np.asarray(info.joint_lower_limits), np.asarray(info.joint_upper_limits)

    def reset(self, seed=None):
        self.bot.gripper.release(1.0)
        _, ok = self.bot.arm.set_ee_pose_matrix(pose_to_matrix(np.asarray(self.args.start_pose)), moving_time=2.0,
                                                blocking=True)
        if not ok:
            raise RuntimeError(f"start pose {self.args.start_pose} has no IK solution within joint limits")

    def _joints(self) -> list[float]:
        core = self.bot.core
        return [core.joint_states.position[core.js_index_map[n]] for n in self.bot.arm.group_info.joint_names]

    def get_observation(self):
        g = self.bot.gripper
        finger = self.bot.core.joint_states.position[g.left_finger_index]
        opening = (finger - g.left_finger_lower_limit) / max(g.left_finger_upper_limit - g.left_finger_lower_limit, 1e-6)
        return {"rgb": None, "ee_pose": matrix_to_pose(self.bot.arm.get_ee_pose()),
                "target_pose": matrix_to_pose(self.bot.arm.get_ee_pose_command()),
                "gripper": float(np.clip(opening, 0.0, 1.0))}

    def apply_ee_delta(self, delta):
        if not np.isfinite(delta).all():
            return "non-finite delta refused"
        target = compose_delta(self.bot.arm.get_ee_pose_command(), delta)  # deltas add to the last command
        theta, ok = self.bot.arm.set_ee_pose_matrix(target, custom_guess=self.bot.arm.get_joint_commands(),
                                                    execute=False)
        if not ok:
            return "no IK solution"
        bad = joint_limit_violations(theta, self.lower, self.upper, self.args.joint_limit_margin_rad)
        if bad:
            return "joint limits: " + ", ".join(self.bot.arm.group_info.joint_names[i] for i in bad)
        if not self.bot.arm.set_joint_positions(list(theta), moving_time=self.args.move_time,
                                                accel_time=self.args.move_time / 4, blocking=False):
            return "refused by the arm (joint velocity limit)"
        return None

    def set_gripper(self, open_):
        (self.bot.gripper.release if open_ else self.bot.gripper.grasp)(0.0)

    def stop(self):
        if self.args.estop_action == "torque_off":
            self.bot.core.robot_torque_enable("group", "arm", False)
        elif self.gc is not None:
            self.gc.enable()
        else:
            self.bot.arm.publish_positions(self._joints(), moving_time=0.3, accel_time=0.1, blocking=False)

    def close(self):
        try:
            from interbotix_common_modules.common_robot.robot import robot_shutdown
            robot_shutdown()
        except ImportError:
            self.bot.shutdown()

    def outcome(self):
        return None


class DryRunRobot:
    """Reads through to the real backend, prints every command instead of sending it."""

    def __init__(self, robot):
        self.robot = robot

    def reset(self, seed=None):
        if isinstance(self.robot, SimRobot):  # a sim reset moves nothing real: observations need it
            return self.robot.reset(seed=seed)
        print("[dry-run] reset (not sent)")

    def get_observation(self):
        return self.robot.get_observation()

    def apply_ee_delta(self, delta):
        print("[dry-run] ee delta " + " ".join(f"{v:+.4f}" for v in delta))

    def set_gripper(self, open_):
        print(f"[dry-run] gripper {'open' if open_ else 'close'}")

    def stop(self):
        print("[dry-run] stop")

    def close(self):
        self.robot.close()

    def outcome(self):
        return self.robot.outcome()


def make_robot(args: Args, scene: dict, image_size: int, max_steps: int) -> Robot:
    check_safety_limits(args)  # the bridge server gets the box at init, interbotix moves at reset
    if args.backend == "sim":
        if not scene.get("scene_id"):
            raise SystemExit(f"error: {args.trials_file}: scene {scene['scene']!r} has no scene_id; the sim backend "
                             "needs a manifest path or a SimplerEnv id such as 'simpler:PutCarrotOnPlateInScene-v1'")
        robot = SimRobot(scene["scene_id"], args, image_size, max_steps)
    elif args.backend == "bridge":
        robot = BridgeRobot(args, image_size)
    else:
        robot = InterbotixRobot(args, read_only=args.dry_run)
    return DryRunRobot(robot) if args.dry_run else robot


class Camera:
    """An external camera (OpenCV VideoCapture or RealSense) giving RGB frames."""

    def __init__(self, kind: str, index: int):
        self.kind = kind
        if kind == "opencv":
            import cv2

            self.cap = cv2.VideoCapture(index)
            if not self.cap.isOpened():
                raise SystemExit(f"error: OpenCV cannot open camera {index}; check `ls /dev/video*` or --camera-index")
        else:
            rs = import_backend("pyrealsense2", "`pip install pyrealsense2` (Intel RealSense SDK)")
            self.pipe, cfg = rs.pipeline(), rs.config()
            cfg.enable_stream(rs.stream.color, 640, 480, rs.format.rgb8, 30)
            self.pipe.start(cfg)

    def read(self) -> np.ndarray:
        if self.kind == "opencv":
            import cv2

            ok, frame = self.cap.read()
            if not ok:
                raise RuntimeError("camera read failed")
            return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return np.asanyarray(self.pipe.wait_for_frames().get_color_frame().get_data()).copy()

    def close(self):
        self.cap.release() if self.kind == "opencv" else self.pipe.stop()


# ---------------------------------------------------------------------------------------------
# Policies: the checkpoint (ppoflow_pi0), the sim expert, random
# ---------------------------------------------------------------------------------------------


class RandomPolicy:
    def __init__(self, chunk: int = 4, seed: int = 0):
        self.chunk, self.rng = chunk, np.random.default_rng(seed)

    def act(self, obs: dict, deterministic: bool = True):
        import torch

        a = self.rng.uniform(-1, 1, size=(1, self.chunk, 7)) * np.array([0.01] * 3 + [0.05] * 3 + [1.0])
        return torch.tensor(a, dtype=torch.float32)  # [N, C, 7]


class ScriptedPolicy:
    """The sim's privileged expert (ChunkVecEnv.expert_actions); sim backend only."""

    inline = True  # reads the in-process sim: runs on the control thread (see infer)

    def __init__(self, get_robot: Callable[[], Any]):
        self.get_robot = get_robot

    def act(self, obs: dict, deterministic: bool = True):
        robot = self.get_robot()
        robot = getattr(robot, "robot", robot)  # through DryRunRobot
        return robot.env.expert_actions()  # [1, C_env, 7]


class RawCheckedPolicy:
    """A ppoflow_pi0 policy whose raw model output is checked before the model's own conversion to env actions,
    which reads a NaN gripper as "close" (`where(a > 0.5, 1, -1)`) and clamps inf into range. Every non-finite raw
    value becomes NaN in the env action, which run_trial holds: zero arm delta, the gripper keeps its state."""

    def __init__(self, policy):
        self.policy, self.config = policy, policy.config

    def act(self, obs: dict, deterministic: bool = True):
        import torch

        p = self.policy  # the body of PI0Policy.act, with the raw chain kept
        chain, _, _ = p.chain(p.encode(p.obs_to_inputs(obs)), deterministic=deterministic)
        raw = chain[:, -1].detach().cpu()  # [N, C, 7] model space
        env = p.normalizer.env_action(raw, p.config.action_clip).cpu()  # [N, C, 7]
        return torch.where(torch.isfinite(raw), env, torch.full_like(env, float("nan")))


def nonfinite_weights(model) -> list[str]:
    """Names of the model's parameters holding NaN or inf."""
    import torch

    return [n for n, t in model.named_parameters() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_policy(args: Args, get_robot: Callable[[], Any]) -> tuple[Any, int, int]:
    """(policy with .act(obs) -> [1, C, 7], the image size frames are prepared at, chunk length C)."""
    if args.policy == "random":
        return RandomPolicy(seed=args.seed), args.image_size, 4
    if args.policy == "scripted":
        if args.backend != "sim":
            raise SystemExit("error: --policy scripted needs privileged sim state: use it with --backend sim")
        return ScriptedPolicy(get_robot), args.image_size, 4  # trial length as for C = 4 (Table A.1)
    if not args.ckpt:
        raise SystemExit("error: --policy ckpt needs --ckpt runs/<run>/ckpt_*.pt (or --policy scripted|random)")
    if not Path(args.ckpt).is_file():
        raise SystemExit(f"error: checkpoint {args.ckpt} does not exist")
    import ppoflow_pi0

    policy = ppoflow_pi0.load_policy(args.ckpt, device=args.device)
    if getattr(policy.config, "obs_mode", "rgb") != "rgb":
        raise SystemExit(f"error: checkpoint {args.ckpt} is an object-state proxy policy (obs_mode "
                         f"{policy.config.obs_mode!r}): it reads object poses from the simulator, which a real robot "
                         "does not have. Deploy a pixel policy (trained with --env.obs-mode rgb, the default)")
    bad = nonfinite_weights(policy)
    if bad:
        raise SystemExit(f"error: checkpoint {args.ckpt} has non-finite (NaN / inf) weights in {len(bad)} tensors "
                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): refusing to run it on the robot. "
                         "Use an earlier ckpt_*.pt of the run (training diverged, or the file is corrupt)")
    return RawCheckedPolicy(policy), args.image_size, int(policy.config.chunk)


# ---------------------------------------------------------------------------------------------
# One trial: 5 Hz control loop over C-step chunks
# ---------------------------------------------------------------------------------------------


def hold(robot: Robot) -> None:
    """Stop the arm where it is on an abnormal exit. Never raises: the error that caused the exit is the one the
    caller must see, and a failed hold is shouted to the operator."""
    try:
        robot.stop()
    except Exception as e:
        print(f"[hold] robot.stop() failed: {e!r} - USE THE HARDWARE STOP", file=sys.stderr, flush=True)


def infer(policy, obs: dict, timeout_s: float, estop: EStop) -> tuple[Any, str | None]:
    """policy.act under a watchdog: (actions [1, C, 7], None), or (None, "estop") when a stop arrives first, or
    (None, "inference_timeout") after timeout_s. The call runs in a daemon thread, so neither a hung policy nor a
    stop signal waits on it (a hung call is left behind; it cannot keep the process alive). A policy marked
    `inline` (the sim expert, which steps the sim's own state) runs on this thread."""
    import torch

    if getattr(policy, "inline", False):
        with torch.no_grad():
            return policy.act(obs, deterministic=True), None
    box, done = {}, threading.Event()

    def work():
        try:
            with torch.no_grad():
                box["out"] = policy.act(obs, deterministic=True)
        except BaseException as e:  # surfaces on the control thread
            box["err"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="policy-inference", daemon=True).start()
    deadline = time.perf_counter() + timeout_s
    while not done.wait(0.01):
        if estop.triggered:
            return None, "estop"
        if time.perf_counter() > deadline:
            return None, "inference_timeout"
    if "err" in box:
        raise box["err"]
    return box["out"], None


def run_trial(robot: Robot, policy, command: str, args: Args, estop: EStop, image_size: int, chunk_len: int,
              camera: Camera | None, keyboard: KeyboardWatcher, seed: int) -> dict:
    """Reset, then run max_decisions * C control steps: a new chunk whenever the last one is used up,
    one safety-filtered command per step at the control rate. Returns outcome, latencies, safety counts."""
    import torch

    check_safety_limits(args)
    with estop.guard() as ok:
        if ok:
            robot.reset(seed=seed)
    realtime = args.backend != "sim" or args.sim_realtime
    sched = DeadlineScheduler(args.control_dt if realtime else 0.0)
    debounce, sent_open = GripperDebouncer(args.gripper_debounce, is_open=True), True  # reset opens the gripper
    lo, hi = np.asarray(args.workspace_lo), np.asarray(args.workspace_hi)
    infer_ms, cmd_ms, step_ms, frames, refusals = [], [], [], [], {}
    n_clamped = n_refused = n_nonfinite = steps = decisions = 0
    max_steps, queue = args.max_decisions * chunk_len, []
    t_start = time.perf_counter()
    ended_by = "estop" if estop.triggered else None
    try:
        with keyboard:
            while steps < max_steps and ended_by is None:
                t_step = time.perf_counter()
                obs = robot.get_observation()
                rgb = None
                if camera is not None or obs.get("rgb") is not None:
                    rgb = preprocess_rgb(camera.read() if camera else obs["rgb"], image_size, args.crop)  # [H, W, 3]
                    if args.video != "none":
                        frames.append(rgb)
                if not queue:  # ALGO LOGIC: open-loop execution of the whole C-step chunk (Table A.1)
                    state = np.concatenate([obs["ee_pose"], [obs["gripper"]]]).astype(np.float32)  # [7]
                    t0 = time.perf_counter()
                    acts, stalled = infer(policy, {"rgb": torch.from_numpy(rgb)[None], "state": torch.from_numpy(state)[None],
                                                   "instruction": [command]}, args.inference_timeout_s, estop)  # [1, C, 7]
                    infer_ms.append((time.perf_counter() - t0) * 1e3)
                    if stalled:
                        ended_by = stalled
                        if stalled == "inference_timeout":
                            print(f"[watchdog] policy inference took over {args.inference_timeout_s} s: holding the arm",
                                  file=sys.stderr, flush=True)
                            hold(robot)
                        break
                    queue = list(acts[0].detach().cpu().numpy().astype(np.float64))
                    decisions += 1
                action = queue.pop(0)  # [7]: ee delta xyz (m), rpy (rad), gripper +1 open / -1 close
                base = obs.get("target_pose", obs["ee_pose"])
                delta, why = safe_ee_delta(base, action[:6], lo, hi, args.max_step_translation_m, args.max_step_rotation_rad)
                n_clamped += bool(why)
                n_nonfinite += any(r.startswith("non_finite") for r in why)
                want = gripper_open_from_action(action[6])  # None (non-finite): keep the gripper as it is
                want_open = debounce.update(debounce.is_open if want is None else want)
                sched.wait()  # right before the command: never two commands within one control period
                t_cmd = time.perf_counter()
                with estop.guard() as ok:  # no command can slip out after an e-stop's halt
                    if not ok:
                        ended_by = "estop"
                        break
                    switched = want_open != sent_open
                    if switched:
                        robot.set_gripper(want_open)
                        sent_open = want_open
                        if estop.triggered:  # a stop that arrived during set_gripper: no arm command after it
                            ended_by = "estop"
                            break
                    refused = robot.apply_ee_delta(delta)
                cmd_ms.append((time.perf_counter() - t_cmd) * 1e3)
                if refused:
                    n_refused += 1
                    refusals[refused] = refusals.get(refused, 0) + 1
                steps += 1
                if args.verbose:
                    print(f"  step {steps:3d} delta {np.round(delta, 4).tolist()} gripper {'open' if want_open else 'close'}"
                          f"{' (switched)' if switched else ''}{' clamped:' + '+'.join(why) if why else ''}"
                          f"{' REFUSED: ' + refused if refused else ''}")
                out = robot.outcome()
                if out is not None and out["done"]:
                    ended_by = "success" if out["success"] else "env_truncated"
                elif keyboard.end.is_set():
                    ended_by = "operator"
                step_ms.append((time.perf_counter() - t_step) * 1e3)
    except BaseException:  # policy / camera / backend error, Ctrl-C: hold the arm first, then surface the error
        hold(robot)
        raise
    wall = time.perf_counter() - t_start
    out = robot.outcome()
    return {"ended_by": ended_by or "max_steps", "steps": steps, "decisions": decisions,
            "duration_s": round(out["elapsed_s"] if out is not None else wall, 3), "wall_s": round(wall, 3),
            "sim": out, "n_clamped": n_clamped, "n_refused": n_refused, "n_nonfinite": n_nonfinite, "refusals": refusals,
            "deadline_overruns": sched.overruns,
            "latency_ms": {"inference": latency_stats(infer_ms), "command": latency_stats(cmd_ms),
                           "step": latency_stats(step_ms),
                           "per_step": {"inference": [round(x, 1) for x in infer_ms],
                                        "command": [round(x, 1) for x in cmd_ms],
                                        "step": [round(x, 1) for x in step_ms]}},
            "frames": frames}


def auto_label(out: dict | None) -> str:
    """Sim outcome -> label: success "ps", lifted only "pd", else "d" (the sim cannot see semantic failures)."""
    if out is None:
        raise SystemExit("error: --auto-label needs the sim backend (hardware trials are labelled by the operator)")
    return "ps" if out["success"] else ("pd" if out["partial_success"] else "d")


def ask_label(key: str) -> str | None:
    while True:
        text = input(f"label {key} [p=partial s=success d=dynamics-fail f=semantic-fail, e.g. 'pd'; x=discard]: ")
        if text.strip().lower() == "x":
            return None
        try:
            return parse_label(text)
        except ValueError as e:
            print(e)


def save_video(path: Path, frames: list[np.ndarray], fps: float) -> str | None:
    if not frames:
        return None
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1.0 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return str(path)


# ---------------------------------------------------------------------------------------------
# main: trial protocol with resume, labels, log and summary
# ---------------------------------------------------------------------------------------------


def main(args: Args) -> dict:
    arg_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    if args.compare:  # summary-only mode: baseline vs fine-tuned side by side
        sessions = {}
        for d in map(Path, args.compare):
            if not (d / "trials.jsonl").is_file():
                raise SystemExit(f"error: {d}/trials.jsonl does not exist; pass session folders such as trials/<session>")
            sessions[d.name] = ss.read_jsonl(d / "trials.jsonl")
        out = args.out_dir / (args.session or "compare_" + "_vs_".join(sessions))
        ss.write_json_atomic(out / "args.json", {"schema_version": SCHEMA_VERSION, "args": arg_dict})
        doc = write_summary(out, sessions, arg_dict)
        print(summary_markdown(doc["sessions"]) + f"\nwrote {out}/summary.md")
        return doc
    check_safety_limits(args)  # before any file is written or anything moves
    if args.auto_label and args.backend != "sim":
        raise SystemExit("error: --auto-label needs --backend sim; on hardware the operator labels each trial")
    if args.camera == "robot" and args.backend == "interbotix":
        raise SystemExit("error: the interbotix backend has no camera: pass --camera opencv or --camera realsense")
    scenes = load_trials_file(args.trials_file)
    plan = trial_plan(scenes, args.trials_per_scene)
    labels = parse_labels_arg(args.labels)
    if labels is not None and len(labels) < len(plan):
        raise SystemExit(f"error: --labels gives {len(labels)} labels for {len(plan)} planned trials")
    sdir = args.session_dir
    ss.write_json_atomic(sdir / "args.json", {"schema_version": SCHEMA_VERSION, "args": arg_dict})
    log_path = sdir / "trials.jsonl"
    if ss.repair_jsonl_tail(log_path):
        print(f"warning: {log_path} ended in a torn line (crash mid-write); moved it to {log_path.name}.torn")
    done = {r["trial_key"] for r in ss.read_jsonl(log_path)}
    todo = [p for p in plan if p[3] not in done]
    print(f"session {sdir}: {len(plan)} trials planned, {len(plan) - len(todo)} already logged, {len(todo)} to run")

    estop, robot, robot_key, camera, stalled = EStop(), None, None, None, None
    policy, image_size, chunk_len = load_policy(args, lambda: robot) if todo else (None, args.image_size, 4)
    restore = estop.install_signal_handlers() if threading.current_thread() is threading.main_thread() else (lambda: None)
    keyboard = KeyboardWatcher(estop)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    try:
        if todo and args.camera != "robot":
            camera = Camera(args.camera, args.camera_index)
        for plan_i, scene, trial_i, key in todo:
            if estop.triggered:
                break
            want_key = scene.get("scene_id") if args.backend == "sim" else args.backend
            if robot is None or robot_key != want_key:
                if robot is not None:
                    robot.close()
                robot, robot_key = make_robot(args, scene, image_size, args.max_decisions * chunk_len), want_key
                estop.robot = robot
            if args.backend != "sim" and interactive and labels is None:
                input(f"\n[{key}] set up the scene, then press ENTER to start: {scene['command']!r}")
            print(f"[{key}] {scene['command']!r}")
            res = run_trial(robot, policy, scene["command"], args, estop, image_size, chunk_len, camera, keyboard,
                            seed=args.seed + trial_i)
            if res["ended_by"] == "inference_timeout":  # a system fault, not the policy's trial: never labelled
                stalled = key
                break
            if res["ended_by"] == "estop" and (args.auto_label or labels is not None):
                print(f"[{key}] e-stopped: not logged (only an operator labels an interrupted trial)")
                break
            if args.auto_label:
                label = auto_label(res["sim"])
            elif labels is not None:
                label = labels[plan_i]
            else:
                label = ask_label(key)
            if label is None:
                print(f"[{key}] discarded; it will run again on resume")
                continue
            frames = res.pop("frames")
            video = save_video(sdir / "videos" / f"{ss.slugify(key.replace('#', '_'))}.{args.video}", frames,
                               args.control_hz) if args.video != "none" else None
            record = {"schema_version": SCHEMA_VERSION, "trial_key": key, "scene": scene["scene"],
                      "scene_id": scene.get("scene_id"), "command": scene["command"],
                      "distractors": scene["distractors"], "trial": trial_i, "label": label,
                      "label_source": "auto" if args.auto_label else ("flag" if labels is not None else "operator"),
                      "tf_s": res["duration_s"] if "s" in label else None, "backend": args.backend,
                      "policy": args.policy, "ckpt": args.ckpt, "dry_run": args.dry_run, "seed": args.seed + trial_i,
                      "estop": estop.reason, "video": video, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **res}
            ss.append_jsonl(log_path, record)
            lat = res["latency_ms"]
            print(f"[{key}] label={label} ended_by={res['ended_by']} steps={res['steps']} t={res['duration_s']}s "
                  f"infer={lat['inference']['mean']}ms cmd={lat['command']['mean']}ms step={lat['step']['mean']}ms "
                  f"clamped={res['n_clamped']} refused={res['n_refused']}")
    finally:
        if robot is not None:
            robot.close()
        if camera is not None:
            camera.close()
        restore()
    doc = write_summary(sdir, {args.session_name: ss.read_jsonl(log_path)}, arg_dict)
    print(summary_markdown(doc["sessions"]) + f"\nwrote {sdir}/summary.md")
    if estop.triggered:
        print(f"E-STOP ({estop.reason}): session halted; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(2)
    if stalled:
        raise SystemExit(f"error: [{stalled}] policy inference took longer than --inference-timeout-s "
                         f"{args.inference_timeout_s}: the arm was held and the trial is not logged. Check the policy's "
                         "device, then rerun the same command to resume")
    return doc


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
