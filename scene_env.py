"""The ManiSkill 3 environment every stage runs in: `GenScene-v1`, SimplerEnv wrapping, a chunked vector env.

    import scene_env
    venv = scene_env.make_vec_env(["scenes/a/manifest.json", "simpler:PutCarrotOnPlateInScene-v1"], num_envs=2)
    obs, info = venv.reset(seed=0)                                 # {"rgb" [N,H,W,3] u8, "state" [N,7], "instruction"}
    obs, rew, term, trunc, info = venv.step(venv.expert_actions())  # actions [N, C, 7]

    python scene_env.py --scenes scenes/a/manifest.json --episodes 4    # smoke: scripted expert success rate

Robot, camera, control and timing mirror SimplerEnv's Bridge setup (ManiSkill
`digital_twins/bridge_dataset_eval/base_env.py`): agent `widowx250s_bridgedataset_flat_table`, control mode
`arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos` (raw metres / radians, deltas accumulate on the
controller's target pose), control 5 Hz with SimplerEnv's 500 Hz physics (generated scenes: 100 Hz by default, see
EnvConfig.sim_freq), the Bridge 3rd-view camera (Logitech C920 intrinsics,
rendered directly at `image_size` with intrinsics scaled like the 640x480 -> 224x224 resize open-pi-zero
applies). Generated scenes replace the Bridge stage by a plain table box, floor and walls from the manifest.

Frames: manifests give poses in the robot base frame (x forward, y left, z up); the world is SimplerEnv's,
robot base at [0.147, 0.028, 0.870] rotated 180 deg about z, table top at `table["height"]` (0.87 m).

Registration: importing this module imports ManiSkill and registers `GenScene-v1` (a module-level `BaseEnv`
subclass: `gym.make("GenScene-v1", manifests=[...], num_envs=N, obs_mode="rgb")` works after a plain
`import scene_env`); no simulator starts until an env is made. Gripper: the public action is +1 open / -1 close,
which is exactly the Bridge gripper controller's convention (normalised [-1, 1] -> finger position
[0.014, 0.038] m, 0.038 = open), so actions pass through unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

import scene_schema as ss

SIMPLER_PREFIX = "simpler:"
SIMPLER_TASKS = ("PutCarrotOnPlateInScene-v1", "PutSpoonOnTableClothInScene-v1",
                 "StackGreenCubeOnYellowCubeBakedTexInScene-v1")
AGENT_UID = "widowx250s_bridgedataset_flat_table"  # SimplerEnv's Bridge WidowX (GenScene-v1 uses a camera-less copy)
CONTROL_MODE = "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos"
CAMERA_UID = "3rd_view_camera"
# SimplerEnv Bridge flat-table setup (base_env.py): robot pose, initial joints, camera (mounted on base_link).
ROBOT_POSE_P = (0.147, 0.028, 0.870)
ROBOT_POSE_Q = (0.0, 0.0, 0.0, 1.0)  # wxyz: 180 deg about z, so base x points along world -x
ROBOT_INIT_QPOS = (-0.01840777, 0.0398835, 0.22242722, -0.00460194, 1.36524296, 0.00153398, 0.037, 0.037)
CAMERA_LOCAL_P = (0.00, -0.16, 0.36)
CAMERA_LOCAL_Q = (0.8992917, -0.09263245, 0.35892478, 0.23209205)
CAMERA_K_640x480 = ((623.588, 0.0, 319.501), (0.0, 623.588, 239.545), (0.0, 0.0, 1.0))
TABLE_TOP_Z = 0.87
GRIPPER_QPOS_CLOSED, GRIPPER_QPOS_OPEN = 0.015, 0.037
CONTACT_FORCE_N = 0.05  # a pair is "in contact" above this normal force (SimplerEnv uses 0.05 N too)
PROPRIO_DIM = 7  # ee xyz + rpy in the robot base frame, gripper opening (ee_state)
OBJECT_STATE_DIM = 14  # EnvConfig.obs_mode "state": target xyz, yaw sin/cos, extents; destination xyz, extents
OBJECT_STATE_LABEL = "object-state proxy: no pretrained VLM, visual generalisation not tested"
FELL_OFF_M = 0.1  # info["fail"]: the target is this far below its start height (it left the table)


@dataclass
class EnvConfig:
    """Everything that defines an environment instance (tyro-friendly: every field is a flag)."""

    image_size: int = 224
    """Square RGB side given to the policy; rendered directly at this size (Bridge camera intrinsics rescaled)."""
    chunk: int = 4
    """C control steps executed per decision (Table A.1)."""
    max_decisions: int = 25
    """Episode length in chunk decisions (Table A.1): 25 x 4 steps x 0.2 s = 20 s."""
    sim_freq: int = 100
    """Physics frequency (Hz) of generated scenes: 100 (20 PD substeps per 0.2 s control step), validated against
    SimplerEnv's 500 by the scripted expert on composed scenes (benchmarks/bench_sim_freq.py, RESULTS.md). The
    composer's QA uses this default too. SimplerEnv scenes always keep their own 500 Hz (real-robot parity)."""
    control_freq: int = 5
    """Control frequency (Hz), as SimplerEnv / BridgeData."""
    success_check: Literal["step", "chunk"] = "chunk"
    """When Eq. A.1 (success) and partial success are evaluated: "chunk" once per decision, at its last control
    step (training: no contact queries inside a chunk; a success that holds only mid-chunk is missed and time to
    finish has 0.8 s resolution), or "step" after every control step (evaluate.py's default: 0.2 s resolution)."""
    obs_mode: Literal["rgb", "state"] = "rgb"
    """What the policy observes besides the instruction. "rgb": the Bridge camera image + the 7-D proprio (the paper's
    observation; every stage's default). "state": the OBJECT-STATE PROXY: no camera is rendered, and the state is
    the proprio followed by `OBJECT_STATE_DIM` simulator features of the target and destination (`object_state`).
    A research proxy for RL at CPU scale (no pretrained VLM, visual generalisation not tested); no robot has it."""
    object_state_noise_m: tuple[float, float] = (0.0, 0.0)
    """Standard deviations (m) of zero-mean Gaussian noise added to the target's and the destination's bottom-centre
    xyz in obs_mode "state"'s features, independent per axis (seeded by each episode's reset seed): an object
    detector's error. (0, 0): the exact features. Issue 32's teacher trained under the pixel estimate's measured
    error (benchmarks/RESULTS.md "DAgger, design v11"). obs["object_state"] (`with_object_state`) stays exact: a
    DAgger teacher labels from it."""
    object_state_noise_corr: float = 0.0
    """Correlation in [0, 1) of consecutive decisions' noise (`object_state_noise_m`), an AR(1) process per episode:
    n_t = rho n_(t-1) + sqrt(1 - rho^2) e_t, stationary from the reset on (the same sigma at every decision). 0: i.i.d.
    per decision. A camera's estimate errs alike on alike frames (~0.8 between decisions, RESULTS.md "design v11")."""
    with_object_state: bool = False
    """Also return obs["object_state"] [N, OBJECT_STATE_DIM] (`object_state`, the proxy's features) in every step,
    beside what obs_mode gives: a state teacher's input while a pixel student sees the camera of the same step
    (distill.py). No policy reads it."""
    reward: Literal["sparse", "shaped"] = "sparse"
    """Decision-level reward. "sparse": 1 on success (Eq. A.1). "shaped": success + (phi(s') - phi(s)), potential-based
    shaping (Ng et al. 1999: the optimal policy is unchanged) with phi = GenScene-v1's `normalized_dense` reward
    (reach, grasp, lift, place stages; 1 on success). Success stays what is evaluated and reported."""
    contact_query: Literal["batched", "pairwise"] = "batched"
    """CPU contact check of Eq. A.1: "batched" one pass over the contact list for every pair, "pairwise" ManiSkill's
    query per pair (the same result, ~14x the passes: the pre-issue-13 path, kept for benchmarks/bench_rollout.py)."""
    sim_backend: str = "auto"
    """"auto" (physx_cuda when CUDA is available, else physx_cpu) | "physx_cpu" | "physx_cuda" | "physx_cuda:<i>"
    (without an index each torchrun rank uses its own GPU, cuda:<LOCAL_RANK>)."""
    dr_object_pose: bool = True
    """Table A.2: sample object x/y/yaw within each manifest object's ranges (non-overlapping)."""
    dr_lighting: bool = True
    """Table A.2: ambient RGB in [0, 0.6), directional brightness in [0.5, 1.5]."""
    dr_robot: bool = True
    """Table A.2: robot base z + U[0, 0.05] m and arm joints + U[-0.1, 0.1] rad."""
    dr_camera: bool = True
    """Table A.2: camera xyz + U[-0.05, 0.05] m, re-aimed at the original principal-ray / table point."""
    resample_every: int = 0
    """Episodes between re-drawing which of its scenes a CPU worker holds (0 = never; needs > num_envs scenes)."""
    render_size: tuple[int, int] = (640, 480)
    """(width, height) of `render_rgb()` frames (videos, QA renders): the Bridge camera at full resolution."""
    settle_s: float = 0.2
    """Physics time (s) objects settle after placement at reset, before the robot moves."""
    lift_threshold_m: float = 0.025
    """Partial success: the target was grasped and lifted this far above its start height."""
    object_region: Literal["table", "manifest"] = "table"
    """Where dr_object_pose draws each object's x/y at every reset: "table" over Table A.2's region (x [0.2, 0.4] m,
    y [-0.15, 0.15] m, yaw [0, 2 pi); the manifest's `object_region`) intersected per object size with the camera
    view and the table, footprints disjoint (issue 26); "manifest" the composer's narrow per-object boxes around
    the nominal layout (x_range / y_range, half-width <= 4 cm: the pre-issue-26 behaviour, for comparison)."""

    def __post_init__(self):
        try:
            noise = self.object_state_noise_m = tuple(float(x) for x in self.object_state_noise_m)  # JSON: lists
        except (TypeError, ValueError):
            noise = (self.object_state_noise_m,)  # a scalar or text: refused below with the flag's own message
        if len(noise) != 2 or not all(np.isfinite(noise)) or min(noise) < 0:
            raise ValueError(f"--env.object-state-noise-m {noise}: two finite standard deviations >= 0 (metres) are "
                             "needed, the target's and the destination's (e.g. --env.object-state-noise-m 0.036 0.0075)")
        if not 0 <= self.object_state_noise_corr < 1 or (self.object_state_noise_corr and not any(noise)):
            raise ValueError(f"--env.object-state-noise-corr {self.object_state_noise_corr}: a correlation in [0, 1) "
                             "of the noise that --env.object-state-noise-m sets (fix: 0 <= rho < 1, with a noise)")
        if any(noise) and self.obs_mode != "state":
            raise ValueError(f"--env.object-state-noise-m {noise} with --env.obs-mode {self.obs_mode}: the noise is on "
                             "the object-state proxy's features, which only obs_mode state observes (fix: "
                             "--env.obs-mode state, or leave the noise at 0 0)")

    @property
    def control_dt(self) -> float:
        return 1.0 / self.control_freq


def _portable(path: str) -> str:
    """`path` relative to the working directory when it lies below it (a recorded trajectory replays from a copy of
    the run's folder tree, e.g. the repository root), else absolute."""
    rel = os.path.relpath(os.path.abspath(path))
    return path if rel.startswith("..") else rel


@dataclass(frozen=True)
class Recording:
    """ManiSkill `RecordEpisode` on a ChunkRunner: every control step goes through the wrapper (no frame skipping
    inside a chunk), so what it writes is the episode as the simulator ran it.
    - trajectory: `<output_dir>/<name>.h5` + `.json` (ManiSkill's trajectory format: env state, action, reward,
      success per control step; env id, kwargs and reset seeds to rebuild the env): replayable without the expert
      or the policy, and re-renderable at another image size (`rerender`).
    - video: `<output_dir>/<k>.mp4` per episode k, the 640x480 render camera at real time (one frame per control
      step, played at control_freq fps)."""

    output_dir: str
    trajectory: bool = True
    video: bool = False
    name: str = "trajectory"
    """File stem of the trajectory; each CPU worker appends "_env<its seed>"."""
    source: str = ""
    """RecordEpisode's source_type ("scripted expert", "policy <name>")."""


def env_config_from_dict(d: dict) -> EnvConfig:
    """EnvConfig from `dataclasses.asdict` output read back from JSON (lists where tuples were); unknown keys fail."""
    known = {f.name for f in dataclasses.fields(EnvConfig)}
    if unknown := sorted(set(d) - known):
        raise ValueError(f"env_cfg: unknown field(s) {unknown}; EnvConfig has {sorted(known)}")
    return EnvConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# ---------------------------------------------------------------------------------------------
# Runtime setup and small maths helpers (numpy only)
# ---------------------------------------------------------------------------------------------


def configure_runtime() -> None:
    """Defaults for ManiSkill data and software Vulkan; call before `mani_skill` is imported."""
    repo = Path(__file__).resolve().parent
    shared = repo.parent / "shared" / "assets" / "maniskill"
    if not os.environ.get("MS_ASSET_DIR") and (shared / "data").is_dir():
        os.environ["MS_ASSET_DIR"] = str(shared)
    if not os.environ.get("VK_ICD_FILENAMES") and shutil.which("nvidia-smi") is None:
        for icd in ("/usr/share/vulkan/icd.d/lvp_icd.json", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"):
            if os.path.exists(icd):
                os.environ["VK_ICD_FILENAMES"] = icd
                break
    quiet_repeated_warnings()


class _OncePerProcess(logging.Filter):
    """Pass each distinct log message once: ManiSkill warns the same thing (mimic joints, missing initial poses)
    on every env it builds, which buries progress bars under identical lines."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = f"{record.name}:{record.getMessage()}"
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_repeated_warnings() -> None:
    """Third-party warnings shown once per process, not once per env (idempotent; errors always pass)."""
    for name in ("mani_skill ", "mani_skill"):  # ManiSkill 3.0's logger name has a trailing space
        log = logging.getLogger(name)
        if not any(isinstance(f, _OncePerProcess) for f in log.filters):
            log.addFilter(_OncePerProcess())
    warnings.filterwarnings("once", category=UserWarning, module=r"(mani_skill|sapien|torch)(\.|$)")


def oversubscription_warning(processes: int, cores: int, factor: int = 4) -> str | None:
    """A clear word when physx_cpu would start far more simulator processes (one per env) than there are cores."""
    if processes <= factor * cores:
        return None
    return (f"{processes} simulator worker processes requested (physx_cpu runs one process per env) on a machine "
            f"with {cores} core(s): about {processes / cores:.0f}x oversubscribed, every env will crawl. On a CPU "
            f"machine pass fewer envs, e.g. `ppoflow_pi0.py --num-envs {2 * cores} --minibatch-size {50 * cores}` "
            f"(`evaluate.py --num-envs {cores}`); Table A.1's 192 envs are meant for GPU physics "
            f"(`--env.sim-backend physx_cuda`).")


def sim_devices(sim_backend: str, cuda: bool, local_rank: int | None = None) -> tuple[str, str]:
    """(ManiSkill sim_backend, render_backend) with explicit device indices. "auto" is physx_cuda when CUDA is
    available. Under torchrun each rank simulates and renders on its own GPU, cuda:<LOCAL_RANK> (a bare "cuda" would
    put every rank on cuda:0); an explicit "physx_cuda:<i>" is kept. CPU physics renders on this rank's GPU when
    there is one (ManiSkill's default), else on the CPU (lavapipe)."""
    rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    backend = ("physx_cuda" if cuda else "physx_cpu") if sim_backend == "auto" else sim_backend
    name, _, index = backend.partition(":")
    if name not in ("physx_cpu", "physx_cuda"):
        raise ValueError(f"sim_backend {sim_backend!r}: use auto, physx_cpu, physx_cuda or physx_cuda:<device index>")
    if name == "physx_cuda":
        if not cuda:
            raise ValueError(f"sim_backend {sim_backend!r} needs CUDA, and torch sees no GPU here (fix: "
                             "--env.sim-backend physx_cpu)")
        backend = f"physx_cuda:{index or rank}"
        return backend, f"cuda:{index or rank}"
    return backend, (f"cuda:{rank}" if cuda else "cpu")


def scaled_intrinsic(width: int, height: int) -> np.ndarray:
    """Bridge C920 intrinsics for a (width, height) render: the same view as resizing the 640x480 frame."""
    k = np.array(CAMERA_K_640x480, dtype=np.float64)
    k[0] *= width / 640.0
    k[1] *= height / 480.0
    return k


def quat_to_mat(q) -> np.ndarray:
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def mat_to_quat(m: np.ndarray) -> np.ndarray:
    t = np.trace(m)
    if t > 0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q / np.linalg.norm(q)


def base_to_world(xyz_base, table_top_z: float = TABLE_TOP_Z) -> np.ndarray:
    """Manifest point (robot base frame, z above the table top) -> world (nominal robot pose)."""
    x, y, z = xyz_base
    return np.array([ROBOT_POSE_P[0] - x, ROBOT_POSE_P[1] - y, table_top_z + z])


def camera_world_pose(local_p=CAMERA_LOCAL_P, local_q=CAMERA_LOCAL_Q) -> tuple[np.ndarray, np.ndarray]:
    """World pose (p, rotation matrix) of the Bridge camera for the nominal robot pose."""
    rb = quat_to_mat(ROBOT_POSE_Q)
    return np.array(ROBOT_POSE_P) + rb @ np.array(local_p), rb @ quat_to_mat(local_q)


def reaimed_camera_local_pose(offset, robot_z_offset: float = 0.0, table_top_z: float = TABLE_TOP_Z):
    """Table A.2 camera DR: shift the camera by `offset` (world, m) and re-aim it at the point where its original
    principal ray hits the table top. Returns the local pose (p, q wxyz) w.r.t. a robot base raised by
    `robot_z_offset`, so robot-height randomisation does not also move the camera."""
    p0, r0 = camera_world_pose()
    fwd0 = r0[:, 0]  # SAPIEN cameras look along their local +x
    hit = p0 + fwd0 * (table_top_z - p0[2]) / fwd0[2]
    p1 = p0 + np.asarray(offset, dtype=np.float64)
    fwd1 = (hit - p1) / np.linalg.norm(hit - p1)
    axis = np.cross(fwd0, fwd1)
    s, c = np.linalg.norm(axis), float(np.dot(fwd0, fwd1))
    if s < 1e-9:
        rot = np.eye(3)
    else:  # Rodrigues: shortest rotation fwd0 -> fwd1, keeps the camera's roll about its ray
        k = axis / s
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        rot = np.eye(3) + s * kx + (1 - c) * kx @ kx
    r1 = rot @ r0
    rb = quat_to_mat(ROBOT_POSE_Q)
    base_p = np.array(ROBOT_POSE_P) + np.array([0.0, 0.0, robot_z_offset])
    return rb.T @ (p1 - base_p), mat_to_quat(rb.T @ r1)


# Table A.2 object-pose region (robot base frame) as the env draws it at every reset (EnvConfig.object_region =
# "table"): centres in x [0.2, 0.4] m, y [-0.15, 0.15] m, yaw [0, 2 pi), per object and drawn yaw intersected with
# what the Bridge camera sees (its footprint box, bottom and top, inside the image) and with the table top, tall
# objects clear of the gripper's start, all footprints (oriented bbox rectangles) at least margin_m apart. A
# manifest's `object_region` overrides these keys; manifests written before it existed get these defaults.
OBJECT_REGION = {"x": list(ss.OBJECT_X_RANGE_M), "y": list(ss.OBJECT_Y_RANGE_M), "yaw": [0.0, 2 * math.pi],
                 "margin_m": 0.015, "view_margin_px": 6.0}
# The gripper starts 13.5 cm above the table at this (x, y) of the robot base frame (fingertips ~12 cm; lower with
# Table A.2's joint noise): a tall bucket or bin placed under it is hit by the robot at reset and pushed away.
EE_START_XY = (0.29, -0.006)
TALL_M = 0.08  # objects at least this tall keep their footprint out of ...
EE_KEEPOUT_M = 0.05  # ... this radius around EE_START_XY


def project_to_image(points_world: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """Pixel (u, v) of world points in the nominal Bridge 3rd-view camera ([M, 3] -> [M, 2]; nan behind it)."""
    p0, r0 = camera_world_pose()
    c = (points_world - p0) @ r0  # camera frame: x forward, y left, z up (SAPIEN)
    k = scaled_intrinsic(width, height)
    z = np.where(c[:, 0] > 1e-6, c[:, 0], np.nan)
    return np.stack([k[0, 0] * -c[:, 1] / z + k[0, 2], k[1, 1] * -c[:, 2] / z + k[1, 2]], axis=1)


_RIM = np.stack([np.cos(np.linspace(0, 2 * math.pi, 12, endpoint=False)),
                 np.sin(np.linspace(0, 2 * math.pi, 12, endpoint=False))], axis=1)


def outline_in_view(outline, height: float, margin_px: float = 6.0) -> bool:
    """The prism over a footprint `outline` ([K, 2] base-frame points on the table top, up to `height`) projects
    inside the 640x480 image of the nominal Bridge camera, `margin_px` from its border. For a convex outline its
    corners decide: the image of the prism is the convex hull of the images of its corners."""
    outline = np.asarray(outline, dtype=np.float64)
    pts = np.concatenate([np.column_stack([ROBOT_POSE_P[0] - outline[:, 0], ROBOT_POSE_P[1] - outline[:, 1],
                                           np.full(len(outline), TABLE_TOP_Z + dz)]) for dz in (0.0, height)])
    uv = project_to_image(pts)
    return bool(np.all(np.isfinite(uv)) and np.all(uv[:, 0] >= margin_px) and np.all(uv[:, 0] <= 640 - margin_px)
                and np.all(uv[:, 1] >= margin_px) and np.all(uv[:, 1] <= 480 - margin_px))


def footprint_in_view(xy, yaw_free_radius: float, height: float, margin_px: float = 6.0) -> bool:
    """The object's bounding cylinder (footprint circle at any yaw, bottom and top rims) projects inside the
    640x480 image of the nominal Bridge camera."""
    return outline_in_view(np.asarray(xy, dtype=np.float64) + yaw_free_radius * _RIM, height, margin_px)


def footprint_box(xy, bbox, yaw: float) -> np.ndarray:
    """[4, 2] corners (counter-clockwise, base frame) of an object's footprint at centre `xy` and yaw `yaw`: its
    bbox x/y extents (asset frame: bbox centred on x = y = 0) rotated by the yaw the env gives the actor."""
    c, s = math.cos(yaw), math.sin(yaw)
    hx, hy = 0.5 * bbox[0], 0.5 * bbox[1]
    corners = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
    return np.asarray(xy, dtype=np.float64) + corners @ np.array([[c, s], [-s, c]])


def box_clearance(a: np.ndarray, b: np.ndarray) -> float:
    """Signed distance between two convex polygons (footprint boxes, [K, 2] corners in order): the Euclidean gap
    between them when apart, minus their penetration depth when they overlap (0: touching).

    Separating-axis test over the edge normals of both and the corner-to-corner directions: the largest projected
    gap over every direction is the distance between convex sets, and it is attained along an edge normal (the
    closest points on an edge, or the least push apart) or along the line joining two corners (closest points both
    corners). So `box_clearance(a, b) > m` is exactly "more than m apart", the bbox circles' margin semantics."""
    edges = np.concatenate([np.roll(a, -1, axis=0) - a, np.roll(b, -1, axis=0) - b])
    axes = np.concatenate([edges[:, ::-1] * (1.0, -1.0), (b[None] - a[:, None]).reshape(-1, 2)])
    norm = np.linalg.norm(axes, axis=1)
    axes = axes[norm > 1e-12] / norm[norm > 1e-12, None]
    pa, pb = a @ axes.T, b @ axes.T  # [K, axes]
    return float(np.max(np.maximum(pb.min(0) - pa.max(0), pa.min(0) - pb.max(0))))


def point_box_distance(p, xy, bbox, yaw: float) -> float:
    """Euclidean distance from point `p` to the footprint box of `footprint_box(xy, bbox, yaw)` (0 inside)."""
    d = np.asarray(p, dtype=np.float64) - np.asarray(xy, dtype=np.float64)
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.abs([c * d[0] + s * d[1], -s * d[0] + c * d[1]]) - 0.5 * np.asarray(bbox[:2], dtype=np.float64)
    return float(np.linalg.norm(np.maximum(local, 0.0)))


def object_region(m: ss.SceneManifest | None = None) -> dict:
    """The region a manifest's objects are drawn over (OBJECT_REGION, with the manifest's `object_region` keys)."""
    return {**OBJECT_REGION, **((m.object_region or {}) if m is not None else {})}


def centre_allowed(xy, bbox, region: dict, table: dict | None = None, yaw: float | None = None) -> bool:
    """An object of extents `bbox` may stand with its centre at `xy` (base frame) under `region`: centre inside the
    region's x/y box; its footprint on the table top and, up to its height, inside the camera image; a tall object's
    footprint at least EE_KEEPOUT_M from the gripper's start. Footprint: the box `footprint_box(xy, bbox, yaw)`, or
    with yaw None the yaw-free bounding circle (allowed at every yaw)."""
    x, y = xy
    if not (region["x"][0] <= x <= region["x"][1] and region["y"][0] <= y <= region["y"][1]):
        return False
    if yaw is None:
        r = 0.5 * math.hypot(bbox[0], bbox[1])
        outline = np.asarray(xy, dtype=np.float64) + r * _RIM  # 12-gon: its x/y extremes are the circle's
        ee_gap = math.hypot(x - EE_START_XY[0], y - EE_START_XY[1]) - r
    else:
        outline = footprint_box(xy, bbox, yaw)
        ee_gap = point_box_distance(EE_START_XY, xy, bbox, yaw)
    if table and "size" in table:
        half, centre = 0.5 * np.asarray(table["size"][:2]), np.asarray(table.get("center_xy", [0.3, 0.0]))
        if np.any(np.abs(outline - centre) > half):
            return False
    if bbox[2] >= TALL_M and ee_gap < EE_KEEPOUT_M:
        return False
    return outline_in_view(outline, bbox[2], region.get("view_margin_px", 6.0))


def sample_layout(objects: list[ss.ManifestObject], rng: np.random.Generator, tries: int = 50,
                  margin: float = 0.01, region: dict | None = None, table: dict | None = None,
                  with_fallback: bool = False):
    """Table A.2 object-pose DR -> [(x, y, yaw)] per object (base frame).

    region None (EnvConfig.object_region="manifest", the pre-issue-26 behaviour): x, y, yaw uniform in each object's
    narrow manifest box (x_range / y_range / yaw_range), footprints (bbox circles + `margin`) disjoint by
    rejection; after `tries` failed draws, the nominal layout.
    region given ("table", the default): each object's centre uniform over the region (`object_region`) and yaw
    uniform in region["yaw"], kept where `centre_allowed` at that yaw and its footprint box (`footprint_box`) is more
    than region["margin_m"] from every box placed before (`box_clearance`): objects placed in manifest order
    (destination, target, distractors), each with up to 200 draws, the whole layout re-drawn up to `tries` times;
    if none fits, the narrow-box draw above (never silent: with_fallback=True returns (poses, fell_back) and the env
    counts them, GenSceneEnv.layout_stats)."""
    if region is not None:
        radius = [0.5 * math.hypot(o.bbox_m[0], o.bbox_m[1]) for o in objects]
        gap = float(region.get("margin_m", OBJECT_REGION["margin_m"]))
        (x0, x1), (y0, y1) = region["x"], region["y"]
        for _ in range(tries):
            placed: list[tuple[float, float, float]] = []
            boxes: list[np.ndarray] = []
            for i, o in enumerate(objects):
                for _ in range(200):
                    x, y = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
                    yaw = float(rng.uniform(*region["yaw"]))
                    box = footprint_box((x, y), o.bbox_m, yaw)
                    # bounding circles more than the margin apart: so are the boxes (the exact test only when needed)
                    if all(math.hypot(x - q[0], y - q[1]) > radius[i] + radius[j] + gap
                           or box_clearance(box, boxes[j]) > gap for j, q in enumerate(placed)) \
                            and centre_allowed((x, y), o.bbox_m, region, table, yaw):
                        placed.append((x, y, yaw))
                        boxes.append(box)
                        break
                else:
                    break
            if len(placed) == len(objects):
                return (placed, False) if with_fallback else placed
        poses = sample_layout(objects, rng, tries, margin)
        return (poses, True) if with_fallback else poses
    radius = [0.5 * math.hypot(o.bbox_m[0], o.bbox_m[1]) for o in objects]
    for _ in range(tries):
        poses = [(rng.uniform(*o.x_range), rng.uniform(*o.y_range), rng.uniform(*o.yaw_range)) for o in objects]
        ok = all(math.hypot(poses[i][0] - poses[j][0], poses[i][1] - poses[j][1]) > radius[i] + radius[j] + margin
                 for i in range(len(objects)) for j in range(i))
        if ok:
            return (poses, False) if with_fallback else poses
    poses = [(o.init_xyz[0], o.init_xyz[1], o.init_yaw) for o in objects]
    return (poses, True) if with_fallback else poses


def parse_scene(scene: str | os.PathLike) -> tuple[str, str]:
    """("simpler", EnvId) for "simpler:<EnvId>", else ("gen", manifest path) after checking it loads."""
    s = str(scene)
    if s.startswith(SIMPLER_PREFIX):
        env_id = s[len(SIMPLER_PREFIX):]
        if env_id not in SIMPLER_TASKS:
            raise ValueError(f"unknown SimplerEnv task {env_id!r} in {s!r}; supported: {', '.join(SIMPLER_TASKS)}")
        return "simpler", env_id
    path = Path(s)
    path = path / "manifest.json" if path.is_dir() else path
    ss.load_manifest(path)  # validates now, with a clear SchemaError, rather than inside a worker
    return "gen", str(path.resolve())


@functools.lru_cache(maxsize=1024)
def _collision_mesh(path: str, mtime_ns: int):
    """A collision part as trimesh loads it, cached per file version (an env build reads each part for its volume,
    and the target's again for its vertices; a composer process rebuilds envs around the same assets)."""
    import trimesh

    try:  # the file as the simulator will read it (process=False: trimesh would silently drop a NaN vertex)
        raw = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - any parser error means a corrupt file
        raise ValueError(f"{path}: not a readable collision mesh ({type(e).__name__}: {e}); re-run "
                         "generate_assets.py --overwrite for this asset") from None
    if not isinstance(raw, trimesh.Trimesh) or len(raw.faces) == 0:
        raise ValueError(f"{path}: no triangles could be read (corrupt or not a mesh file); re-run "
                         "generate_assets.py --overwrite for this asset")
    if not np.isfinite(raw.vertices).all():
        bad = int((~np.isfinite(raw.vertices).all(axis=1)).sum())
        raise ValueError(f"{path}: {bad} vertex/vertices with NaN or inf coordinates; re-run generate_assets.py "
                         "--overwrite for this asset")
    return trimesh.load(path, force="mesh")


def collision_mesh(path: Path):
    return _collision_mesh(str(path), os.stat(path).st_mtime_ns)


def _mesh_volume(path: Path) -> float:
    return float(abs(collision_mesh(path).convex_hull.volume))


# ---------------------------------------------------------------------------------------------
# GenScene-v1: ManiSkill env built from manifests, registered when this module is imported
# ---------------------------------------------------------------------------------------------

configure_runtime()  # MS_ASSET_DIR / software Vulkan defaults (only where unset) before ManiSkill is imported
import sapien  # noqa: E402  (importing starts no simulator: that happens when an env is made)
import torch  # noqa: E402
from sapien.physx import PhysxMaterial  # noqa: E402

import mani_skill.envs  # noqa: E402,F401  (registers the SimplerEnv Bridge tasks and the Bridge WidowX agent)
from mani_skill.agents.registration import register_agent  # noqa: E402
from mani_skill.envs.sapien_env import BaseEnv  # noqa: E402
from mani_skill.envs.tasks.digital_twins.bridge_dataset_eval.base_env import WidowX250SBridgeDatasetFlatTable  # noqa: E402
from mani_skill.sensors.camera import CameraConfig  # noqa: E402
from mani_skill.utils import sapien_utils  # noqa: E402
from mani_skill.utils.registration import register_env  # noqa: E402
from mani_skill.utils.structs.actor import Actor  # noqa: E402
from mani_skill.utils.structs.pose import Pose  # noqa: E402
from mani_skill.utils.structs.types import SimConfig  # noqa: E402


GEN_AGENT_UID = AGENT_UID + "_gen"


def running_env_rows(scene, snapshot: dict, keep: torch.Tensor) -> dict:
    """The rows of a `scene.get_sim_state()` snapshot that belong to the envs in `keep` ([N] bool), per object, as
    ManiSkill's `set_sim_state(state, env_idx)` on the GPU sim wants them: each object's setter writes the rows of its
    own sub-scenes whose reset mask is set (the robot, one articulation over all N envs: one row per kept env; an
    object built in sub-scene i: one row if env i is kept, else it is left out)."""
    reg, out = scene.state_dict_registry, {}
    for kind, objs in (("actors", reg.actors), ("articulations", reg.articulations)):
        for name, rows in snapshot.get(kind, {}).items():
            sel = keep.to(rows.device)[objs[name]._scene_idxs.long().to(rows.device)]
            if sel.any():
                out.setdefault(kind, {})[name] = rows[sel]
    return out


def restore_running_envs(scene, snapshot: dict, keep: torch.Tensor) -> None:
    """GPU partial reset: put the envs still running (`keep`, [N] bool) back to `snapshot` (`scene.get_sim_state()`
    taken before the settle steps, which step every sub-scene); the envs being reset keep their new state."""
    scene.set_sim_state(running_env_rows(scene, snapshot, keep), torch.nonzero(keep)[:, 0].to(scene.device))


class ControllerTargets:
    """The arm/gripper controllers' targets of the envs still running across a GPU partial reset.

    ManiSkill's `reset(options={"env_idx": ...})` sets the reset mask back to all envs before it calls
    `controller.reset()`, which sets every env's target (ee target pose, target / start joint positions) to the pose
    it has reached: the envs still running would lose their accumulated delta target and snap. `hold` copies the
    targets before the reset; `restore` writes the running envs' rows back after it."""

    FIELDS = ("_target_qpos", "_start_qpos", "_target_pose")

    def __init__(self, controller, keep: torch.Tensor):
        subs = controller.controllers.values() if hasattr(controller, "controllers") else [controller]
        self.keep, self.held = keep, []
        for c in subs:
            for f in self.FIELDS:
                v = getattr(c, f, None)
                if v is not None:
                    self.held.append((c, f, (v.raw_pose if f == "_target_pose" else v).clone()))

    def restore(self) -> None:
        for c, f, old in self.held:
            now = getattr(c, f, None)
            if now is None:
                continue
            now = now.raw_pose if f == "_target_pose" else now
            keep = self.keep.to(now.device)
            now[keep] = old.to(now.device)[keep]


@register_agent(asset_download_ids=["widowx250s"])
class BridgeWidowXForGenScene(WidowX250SBridgeDatasetFlatTable):
    """SimplerEnv's Bridge WidowX 250 S (same model, controllers, gains) without the base_link camera it carries:
    GenScene-v1 mounts that camera on its own kinematic actor, so camera randomisation works on GPU too."""

    uid = GEN_AGENT_UID

    @property
    def _sensor_configs(self):
        return []


@register_env("GenScene-v1", max_episode_steps=EnvConfig.max_decisions * EnvConfig.chunk)  # 25 decisions x 4 steps
class GenSceneEnv(BaseEnv):
    """Tabletop scene from a SceneManifest per parallel env (heterogeneous scenes per env index).

    CPU (physx_cpu): one env per process, it holds `manifests[scene_assignment[0]]`; `reset(options=
    {"reconfigure": True, "scene_assignment": [k]})` switches to another of its manifests.
    GPU (physx_cuda, UNTESTED here: no GPU physics offline): env i builds its own actors in sub-scene i
    (`builder.set_scene_idxs([i])`) and they are merged into one batched view (`Actor.merge`), the
    standard ManiSkill pattern for heterogeneous scenes, so every batched op below stays per-env.
    """

    SUPPORTED_OBS_MODES = ("rgb", "rgb+segmentation", "state_dict", "none")
    SUPPORTED_REWARD_MODES = ("sparse", "dense", "normalized_dense", "none")

    def __init__(self, *args, manifests: list[str], scene_assignment: list[int] | None = None,
                 env_cfg: EnvConfig | dict = EnvConfig(), **kwargs):
        # a dict too: what a recorded trajectory's JSON env_kwargs hold (RecordEpisode dumps gym.make's kwargs)
        self.cfg = env_cfg if isinstance(env_cfg, EnvConfig) else env_config_from_dict(env_cfg)
        env_cfg = self.cfg
        self.manifest_paths = [str(m) for m in manifests]
        self.manifests = [ss.load_manifest(m) for m in self.manifest_paths]
        n = kwargs.get("num_envs", 1)
        self.scene_assignment = list(scene_assignment or [i % len(self.manifests) for i in range(n)])
        size = env_cfg.image_size
        kwargs.setdefault("sensor_configs", {CAMERA_UID: dict(width=size, height=size,
                                                              intrinsic=scaled_intrinsic(size, size))})
        super().__init__(*args, robot_uids=GEN_AGENT_UID, control_mode=CONTROL_MODE, **kwargs)

    # ---- configuration -------------------------------------------------------------------
    @property
    def _default_sim_config(self):
        return SimConfig(sim_freq=self.cfg.sim_freq, control_freq=self.cfg.control_freq, spacing=20)

    @property
    def _default_sensor_configs(self):
        # the Bridge 3rd-view camera (SimplerEnv's, which its agent carries on base_link) on camera_mount
        return [CameraConfig(CAMERA_UID, pose=sapien.Pose(), width=640, height=480, intrinsic=scaled_intrinsic(640, 480),
                             near=0.01, far=100, mount=self.camera_mount)]

    @property
    def _default_human_render_camera_configs(self):
        w, h = self.cfg.render_size
        return CameraConfig("render_camera", pose=sapien.Pose(CAMERA_LOCAL_P, CAMERA_LOCAL_Q), width=w, height=h,
                            intrinsic=scaled_intrinsic(w, h), near=0.01, far=100,
                            mount=self.agent.robot.links_map["base_link"])

    def manifest(self, env_i: int) -> ss.SceneManifest:
        return self.manifests[self.scene_assignment[env_i]]

    # ---- scene building ------------------------------------------------------------------
    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=ROBOT_POSE_P, q=ROBOT_POSE_Q))

    def _load_lighting(self, options: dict):
        self._dir_lights = []  # per sub-scene: [(light component, base colour)]
        for i, sub in enumerate(self.scene.sub_scenes):
            lit = self.manifest(i).lighting or {}
            sub.render_system.ambient_light = list(lit.get("ambient", [0.3, 0.3, 0.3]))
            lights = lit.get("directional", [[0, 0, -1, 2.2], [-1, -0.5, -1, 0.7], [1, 1, -1, 0.7]])
            for dx, dy, dz, b in lights:
                self.scene.add_directional_light([dx, dy, dz], [b, b, b], scene_idxs=[i])
            # every directional light of the sub-scene is one of these (none is loaded elsewhere). Not "entities
            # new since before": ids of the temporary entity wrappers are reused, which silently dropped lights
            # from the brightness randomisation in some envs (the same seed rendered differently)
            comps = [e.find_component_by_type(sapien.render.RenderDirectionalLightComponent) for e in sub.entities]
            self._dir_lights.append([(c, np.array(c.color[:3])) for c in comps if c is not None])

    def _load_scene(self, options: dict):
        if "manifests" in options:  # compose_scene.py swaps in a new candidate without a new process
            self.manifest_paths = [str(m) for m in options["manifests"]]
            self.manifests = [ss.load_manifest(m) for m in self.manifest_paths]
            self.scene_assignment = [i % len(self.manifests) for i in range(self.num_envs)]
        if "scene_assignment" in options:
            self.scene_assignment = list(options["scene_assignment"])
        for i in range(self.num_envs):
            sapien_utils.set_articulation_render_material(self.agent.robot._objs[i], specular=0.9,
                                                          roughness=0.3)
        tables, targets, dests, self.obj_actors = [], [], [], []
        self.table_top_z = torch.zeros(self.num_envs)
        for i in range(self.num_envs):
            m, mpath = self.manifest(i), self.manifest_paths[self.scene_assignment[i]]
            tables.append(self._build_background(i, m))
            actors = {}
            for o in m.objects:
                actors[o.name] = self._build_object(i, o, ss.resolve_asset_dir(mpath, o))
            self.obj_actors.append(actors)
            targets.append(actors[m.success["target"]])
            dests.append(actors[m.success["destination"]])
            self.table_top_z[i] = float(m.table.get("height", TABLE_TOP_Z))
        # one batched view per role over heterogeneous per-env actors
        self.table = Actor.merge(tables, name="table") if len(tables) > 1 else tables[0]
        self.target = Actor.merge(targets, name="target") if len(targets) > 1 else targets[0]
        self.destination = Actor.merge(dests, name="destination") if len(dests) > 1 else dests[0]
        self.target_size = torch.tensor([self.manifest(i).object(self.manifest(i).success["target"]).bbox_m
                                         for i in range(self.num_envs)], dtype=torch.float32)
        self.dest_size = torch.tensor([self.manifest(i).object(self.manifest(i).success["destination"]).bbox_m
                                       for i in range(self.num_envs)], dtype=torch.float32)
        self.target_vertices = self._target_vertices().to(self.device)
        self.robot_links = self.agent.robot.get_links()
        # the Bridge camera rides on a kinematic mount (ManiSkill's pattern): moving the mount per episode moves the
        # camera on both backends; a camera's own local pose is baked into the GPU renderer when it is created
        builder = self.scene.create_actor_builder()
        builder.initial_pose = sapien.Pose(ROBOT_POSE_P, ROBOT_POSE_Q) * sapien.Pose(CAMERA_LOCAL_P, CAMERA_LOCAL_Q)
        self.camera_mount = builder.build_kinematic("camera_mount")

    def _build_background(self, i: int, m: ss.SceneManifest):
        top = float(m.table.get("height", TABLE_TOP_Z))
        sx, sy = m.table.get("size", [0.9, 1.2, top])[:2]
        cx, cy = m.table.get("center_xy", [0.3, 0.0])  # robot base frame
        color = list(m.table.get("color", [0.55, 0.4, 0.28, 1.0]))
        b = self.scene.create_actor_builder()
        b.add_box_collision(half_size=[sx / 2, sy / 2, top / 2])
        b.add_box_visual(half_size=[sx / 2, sy / 2, top / 2],
                         material=sapien.render.RenderMaterial(base_color=color, roughness=0.8))
        b.initial_pose = sapien.Pose(base_to_world([cx, cy, -top / 2], top))
        b.set_scene_idxs([i])
        table = b.build_static(name=f"table_{i}")
        bg = m.background or {}
        b = self.scene.create_actor_builder()  # floor + back/side walls: visual only, no physics cost
        b.add_box_visual(sapien.Pose([0, 0, -0.005]), half_size=[4, 4, 0.005],
                         material=sapien.render.RenderMaterial(base_color=list(bg.get("floor_color", [0.4] * 3 + [1]))))
        wall = sapien.render.RenderMaterial(base_color=list(bg.get("wall_color", [0.85, 0.85, 0.8, 1])))
        wd = float(bg.get("wall_distance", 1.3))
        b.add_box_visual(sapien.Pose(base_to_world([wd, 0, 0], 0)[:2].tolist() + [1.5]), half_size=[0.01, 4, 1.5],
                         material=wall)
        for side in (-1, 1):
            b.add_box_visual(sapien.Pose(base_to_world([0.3, side * 1.5, 0], 0)[:2].tolist() + [1.5]),
                             half_size=[4, 0.01, 1.5], material=wall)
        b.initial_pose = sapien.Pose()
        b.set_scene_idxs([i])
        b.build_static(name=f"room_{i}")
        return table

    def _target_vertices(self) -> torch.Tensor:
        """[N, V, 3] each env's target collision vertices (object frame, at scale; shorter lists padded with their
        first vertex): its current height and bottom in any pose (a cherry lying on its side, a tipped tool)."""
        out = []
        for i in range(self.num_envs):
            m = self.manifest(i)
            o = m.object(m.success["target"])
            d = ss.resolve_asset_dir(self.manifest_paths[self.scene_assignment[i]], o)
            out.append(np.concatenate([collision_mesh(d / c).vertices for c in o.collision]) * o.scale)
        n = max(len(v) for v in out)
        return torch.tensor(np.stack([np.concatenate([v, np.repeat(v[:1], n - len(v), 0)]) for v in out]),
                            dtype=torch.float32)

    def _build_object(self, i: int, o: ss.ManifestObject, asset_dir: Path):
        s = [o.scale] * 3
        mat = PhysxMaterial(static_friction=o.friction, dynamic_friction=o.friction, restitution=0.0)
        parts = [asset_dir / c for c in o.collision]
        volume = sum(_mesh_volume(p) for p in parts) * o.scale ** 3
        density = float(np.clip(o.mass_kg / max(volume, 1e-9), 20.0, 8000.0))
        b = self.scene.create_actor_builder()
        for p in parts:
            b.add_convex_collision_from_file(str(p), scale=s, material=mat, density=density)
        b.add_visual_from_file(str(asset_dir / o.visual), scale=s)
        b.initial_pose = sapien.Pose(base_to_world(o.init_xyz, float(self.manifest(i).table.get("height", TABLE_TOP_Z))))
        b.set_scene_idxs([i])
        return b.build(name=f"{o.name}_{i}")

    # ---- episodes ------------------------------------------------------------------------
    def reset(self, seed=None, options=None):
        """ManiSkill's reset; on the GPU sim, a partial reset (`options["env_idx"]`) keeps the controller targets of
        the envs still running (ControllerTargets)."""
        idx = (options or {}).get("env_idx")
        held = None
        if idx is not None and self.gpu_sim_enabled and len(idx) < self.num_envs and self.agent is not None:
            keep = torch.ones(self.num_envs, dtype=torch.bool)
            keep[torch.as_tensor(idx).long().cpu()] = False
            held = ControllerTargets(self.agent.controller, keep)
        out = super().reset(seed=seed, options=options)
        if held is not None:
            held.restore()
        return out

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        cfg, rng = self.cfg, self._episode_rng
        with torch.device(self.device):
            b = len(env_idx)
            joint_noise, cam_p, cam_q = [], [], []
            for i in env_idx.tolist():  # per env: heterogeneous object sets (not a hot path)
                rng = self._batched_episode_rng[i]  # per-env RNG: same draws on CPU and GPU for the same seeds
                m = self.manifest(i)
                objs = m.objects
                poses, fell_back = (sample_layout(objs, rng, region=object_region(m) if cfg.object_region == "table"
                                                  else None, table=m.table, with_fallback=True) if cfg.dr_object_pose
                                    else ([(o.init_xyz[0], o.init_xyz[1], o.init_yaw) for o in objs], False))
                self.layout_stats = stats = getattr(self, "layout_stats", {"draws": 0, "fallbacks": 0})
                stats["draws"] += int(cfg.dr_object_pose)
                if fell_back:  # counted (env.layout_stats) and logged, never silent
                    stats["fallbacks"] += 1
                    logging.getLogger(__name__).warning(
                        "object-pose DR: no disjoint %s layout of %s found, used the fallback (narrow boxes / nominal "
                        "layout); counted in GenSceneEnv.layout_stats", cfg.object_region, m.scene_id)
                top = float(self.table_top_z[i])
                for o, (x, y, yaw) in zip(objs, poses):
                    p = base_to_world([x, y, o.init_xyz[2] + 0.002], top)
                    q = [math.cos((yaw + math.pi) / 2), 0, 0, math.sin((yaw + math.pi) / 2)]  # base yaw -> world
                    self.obj_actors[i][o.name].set_pose(Pose.create_from_pq(p=torch.tensor(p)[None], q=torch.tensor(q)[None]))
                lit = m.lighting or {}
                amb = rng.uniform(0.0, 0.6, 3) if cfg.dr_lighting else np.array(lit.get("ambient", [0.3] * 3))
                bright = rng.uniform(0.5, 1.5) if cfg.dr_lighting else 1.0
                self.scene.sub_scenes[i].render_system.ambient_light = amb.tolist()
                for comp, col in self._dir_lights[i]:
                    comp.color = (col * bright).tolist()
                dz = rng.uniform(0.0, 0.05) if cfg.dr_robot else 0.0
                cam_off = rng.uniform(-0.05, 0.05, 3) if cfg.dr_camera else np.zeros(3)
                cp, cq = reaimed_camera_local_pose(cam_off, dz, top)
                cam = sapien.Pose([ROBOT_POSE_P[0], ROBOT_POSE_P[1], ROBOT_POSE_P[2] + dz], ROBOT_POSE_Q) * sapien.Pose(cp, cq)
                cam_p.append(cam.p)
                cam_q.append(cam.q)
                self._robot_dz[i] = dz
                # joint noise from this env's own RNG, last (on CPU, one env: the draws of the single-RNG version)
                joint_noise.append(rng.uniform(-0.1, 0.1, 6) if cfg.dr_robot else np.zeros(6))
            self.camera_mount.set_pose(Pose.create_from_pq(p=torch.tensor(np.array(cam_p), dtype=torch.float32),
                                                           q=torch.tensor(np.array(cam_q), dtype=torch.float32)))
            running = None  # GPU partial reset: the settle steps every sub-scene, so the envs mid-episode are
            if self.gpu_sim_enabled and b < self.num_envs:  # snapshotted and put back afterwards
                keep = torch.ones(self.num_envs, dtype=torch.bool)
                keep[env_idx.cpu()] = False
                self.scene._gpu_apply_all()
                self.scene._gpu_fetch_all()
                running = (keep, self.scene.get_sim_state())
            if self.gpu_sim_enabled:
                self.scene._gpu_apply_all()
            for _ in range(int(cfg.settle_s * cfg.sim_freq)):
                self.scene.step()
            if self.gpu_sim_enabled:
                self.scene._gpu_fetch_all()
            if running is not None:
                restore_running_envs(self.scene, running[1], running[0])
                self.scene._gpu_apply_all()
                self.scene.px.gpu_update_articulation_kinematics()
                self.scene._gpu_fetch_all()
                self.scene._reset_mask[:] = False
                self.scene._reset_mask[env_idx] = True  # the rest of this reset acts on the envs being reset
            qpos = torch.tensor(ROBOT_INIT_QPOS).repeat(b, 1)
            qpos[:, :6] += torch.from_numpy(np.stack(joint_noise)).float().to(self.device)
            base_p = torch.tensor(ROBOT_POSE_P).repeat(b, 1)
            base_p[:, 2] += self._robot_dz[env_idx]
            self.agent.robot.set_pose(Pose.create_from_pq(p=base_p, q=torch.tensor(ROBOT_POSE_Q).repeat(b, 1)))
            self.agent.reset(init_qpos=qpos)
            self.target_start_z[env_idx] = self.target.pose.p[env_idx, 2]
            self.partial[env_idx] = False

    def _after_reconfigure(self, options):
        super()._after_reconfigure(options)
        self._robot_dz = torch.zeros(self.num_envs, device=self.device)
        self.target_start_z = torch.zeros(self.num_envs, device=self.device)
        self.partial = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    # ---- success, observation, privileged state -----------------------------------------
    def contact(self, a, b) -> torch.Tensor:
        return torch.linalg.norm(self.scene.get_pairwise_contact_forces(a, b), dim=-1) > CONTACT_FORCE_N  # [N]

    def target_contacts(self, others: list) -> list[torch.Tensor]:
        """[N] bool per object of `others`: in contact with the target above CONTACT_FORCE_N, what `contact` gives.
        On CPU one pass over the simulator's contact list for all of them (ManiSkill's pairwise query walks the whole
        list once per pair: ~14 pairs per check here); on GPU ManiSkill's batched pair queries."""
        if self.gpu_sim_enabled or self.cfg.contact_query == "pairwise":
            return [self.contact(self.target, o) for o in others]
        ents = [o._bodies[0].entity for o in others]
        pairs = sapien_utils.get_multiple_pairwise_contacts(self.scene.px.get_contacts(), self.target._bodies[0].entity,
                                                            ents)
        dt = self.scene.px.timestep
        return [torch.tensor([float(np.linalg.norm(sapien_utils.compute_total_impulse(pairs[e]))) / dt > CONTACT_FORCE_N],
                             device=self.device) for e in ents]

    def evaluate(self) -> dict:
        # Eq. A.1: contact(A, B) and not contact(A, table) and not contact(A, robot)
        on_dest, on_table, *robot = self.target_contacts([self.destination, self.table, *self.robot_links])
        touch_robot = torch.stack(robot).any(0)
        success = on_dest & ~on_table & ~touch_robot
        grasped = self.agent.is_grasping(self.target)
        lifted = self.target.pose.p[:, 2] - self.target_start_z > self.cfg.lift_threshold_m
        self.partial |= grasped & lifted
        fail = self.target.pose.p[:, 2] < self.target_start_z - FELL_OFF_M  # ManiSkill's key: knocked off the table
        return dict(success=success, fail=fail, partial_success=self.partial.clone(), grasped=grasped,
                    target_on_table=on_table, target_touches_robot=touch_robot, target_on_destination=on_dest)

    def compute_sparse_reward(self, obs, action, info):
        return info["success"].float()

    def compute_dense_reward(self, obs, action, info):
        """ManiSkill's staged dense reward (PickCube's pattern), in [0, 5]: reach (1 - tanh(10 d), d = ee to target
        centre), grasp (+1), lift (+[0, 1] up to `lift_threshold_m` while grasped), place (1 - tanh(10 d_xy) to the
        destination while grasped), and 5 on success (Eq. A.1)."""
        priv = self.privileged_state()
        ee = self.agent.controller.controllers["arm"].ee_pose_at_base.p
        centre = priv["target_bottom"].clone()
        centre[:, 2] += priv["target_height"] / 2
        reach = 1 - torch.tanh(10 * torch.linalg.norm(ee - centre, dim=1))
        grasped = info["grasped"].float()
        lift = ((self.target.pose.p[:, 2] - self.target_start_z) / self.cfg.lift_threshold_m).clamp(0, 1) * grasped
        d_xy = torch.linalg.norm(priv["target_bottom"][:, :2] - priv["dest_bottom"][:, :2], dim=1)
        place = (1 - torch.tanh(10 * d_xy)) * grasped
        reward = reach + grasped + lift + place  # ALGO LOGIC
        return torch.where(info["success"], torch.full_like(reward, 5.0), reward)

    def compute_normalized_dense_reward(self, obs, action, info):
        return self.compute_dense_reward(obs, action, info) / 5.0

    def _get_obs_extra(self, info: dict):
        return dict(state=ee_state(self))

    def get_language_instruction(self) -> list[str]:
        return [self.manifest(i).task for i in range(self.num_envs)]

    def privileged_state(self) -> dict:
        """Object/ee poses in the robot base frame for the scripted expert ([N, ...] tensors)."""
        inv = self.agent.robot.pose.inv()
        tp, dp = inv * self.target.pose, inv * self.destination.pose
        top = self.table_top_z.to(self.device) - self.agent.robot.pose.p[:, 2]
        # the bottom centre under the bbox centre: a pen that rolled on its side keeps its frame origin (the unrolled
        # bottom) ~3 mm beside its axis, and a level pinch centred there pushed it away (1 of 18 episodes solved)
        half = torch.zeros_like(tp.p)
        half[:, 2] = self.target_size.to(self.device)[:, 2] / 2
        centre = (tp * Pose.create_from_pq(p=half)).p
        # its actual lowest point and height in the pose it is in (upright: the frame origin and the bbox height)
        z = torch.einsum("nj,nvj->nv", tp.to_transformation_matrix()[:, 2, :3], self.target_vertices)
        low, high = z.min(1).values + tp.p[:, 2], z.max(1).values + tp.p[:, 2]
        bottom = torch.cat([centre[:, :2], low[:, None]], dim=1)
        return dict(target_bottom=bottom, target_yaw=_yaw(tp.q), target_size=self.target_size.to(self.device),
                    target_height=high - low, dest_bottom=dp.p, dest_size=self.dest_size.to(self.device), table_z=top,
                    grasped=self.agent.is_grasping(self.target))


def _yaw(q):
    """Yaw (rad) of wxyz quaternions [N, 4] (torch)."""
    import torch

    w, x, y, z = q.unbind(-1)
    return torch.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def _rpy(q):
    """Roll, pitch, yaw (extrinsic xyz, the Bridge proprio convention) of wxyz quaternions [N, 4] -> [N, 3]."""
    import torch

    w, x, y, z = q.unbind(-1)
    roll = torch.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = torch.asin(torch.clamp(2 * (w * y - z * x), -1.0, 1.0))
    return torch.stack([roll, pitch, _yaw(q)], dim=-1)


def ee_state(env) -> "torch.Tensor":
    """[N, 7] float32: ee xyz + rpy in the robot base frame, gripper opening in [0, 1] (1 = open)."""
    import torch

    pose = env.agent.controller.controllers["arm"].ee_pose_at_base
    finger = env.agent.robot.get_qpos()[:, -2:].mean(-1, keepdim=True)
    opening = ((finger - GRIPPER_QPOS_CLOSED) / (GRIPPER_QPOS_OPEN - GRIPPER_QPOS_CLOSED)).clamp(0, 1)
    return torch.cat([pose.p, _rpy(pose.q), opening], dim=-1).float()


def object_state(priv: dict) -> "torch.Tensor":
    """[N, OBJECT_STATE_DIM] float32 object features of EnvConfig.obs_mode "state", from `privileged_state` (robot base
    frame, metres): target bottom-centre xyz, sin and cos of its yaw, bbox extents; destination bottom-centre xyz,
    bbox extents. What a perfect object detector would report; no camera is involved."""
    import torch

    yaw = priv["target_yaw"]
    return torch.cat([priv["target_bottom"], torch.sin(yaw)[:, None], torch.cos(yaw)[:, None], priv["target_size"],
                      priv["dest_bottom"], priv["dest_size"]], dim=1).float()


# Where the object-state features describe a scene the policies know: both objects' bottom centres inside this box
# (robot base frame, metres; x, y, z) around Table A.2's region and above the table top. Outside it an object was
# knocked off the table or flung away by a contact blow-up: a wild policy's arm can launch a bowl ~1800 m (seen in
# DAgger rounds). No policy was trained on such a state, a label there means nothing, and features of that size swamp
# any regression on them (`objects_in_workspace`).
WORKSPACE_BOUNDS_M = ((-0.1, 0.7), (-0.45, 0.45), (-0.1, 0.5))


def objects_in_workspace(obj: "torch.Tensor") -> "torch.Tensor":
    """[N] bool: both the target's and the destination's bottom centres of `object_state` rows [N, OBJECT_STATE_DIM]
    lie inside WORKSPACE_BOUNDS_M."""
    import torch

    pos = torch.stack([obj[:, 0:3], obj[:, 8:11]], 1)  # [N, 2, 3]: target, destination
    lo, hi = (torch.tensor([b[i] for b in WORKSPACE_BOUNDS_M], dtype=pos.dtype) for i in (0, 1))
    return ((pos >= lo) & (pos <= hi)).all(-1).all(-1)


def proxy_observation(obs: dict) -> dict:
    """An object-state policy's view of a `with_object_state` observation: the proxy's state, proprio then object
    features (what obs_mode "state" gives), and the instruction."""
    import torch

    return {"state": torch.cat([torch.as_tensor(obs["state"]).float(), torch.as_tensor(obs["object_state"]).float()], -1),
            "instruction": list(obs["instruction"])}


def obs_keys(cfg: EnvConfig) -> tuple[str, ...]:
    """The tensor entries of an observation under `cfg.obs_mode` and `cfg.with_object_state` (besides "instruction")."""
    keys = ("rgb", "state") if cfg.obs_mode == "rgb" else ("state",)
    return keys + ("object_state",) if cfg.with_object_state else keys


def state_dim(cfg: EnvConfig) -> int:
    """Width of obs["state"] under `cfg.obs_mode`."""
    return PROPRIO_DIM + (OBJECT_STATE_DIM if cfg.obs_mode == "state" else 0)


def simpler_privileged_state(env) -> dict:
    """The expert's privileged state for a SimplerEnv Bridge task (object poses are bbox centres there)."""
    import torch

    inv = env.agent.robot.pose.inv()
    src, dst = env.objs[env.source_obj_name], env.objs[env.target_obj_name]
    tsize = env.episode_model_bbox_sizes[env.source_obj_name].float().abs().to(env.device)
    dsize = env.episode_model_bbox_sizes[env.target_obj_name].float().abs().to(env.device)
    tp, dp = inv * src.pose, inv * dst.pose
    n = env.num_envs
    tb = tp.p.clone()
    tb[:, 2] -= tsize[2] / 2
    db = dp.p.clone()
    db[:, 2] -= dsize[2] / 2
    # Bridge models are axis-aligned in their own frame; rotate the yaw by their spawn rotation
    return dict(target_bottom=tb, target_yaw=_yaw(tp.q), target_size=tsize.repeat(n, 1), dest_bottom=db,
                dest_size=dsize.repeat(n, 1), table_z=db[:, 2].clone(), grasped=env.agent.is_grasping(src))


# ---------------------------------------------------------------------------------------------
# Scripted expert: approach, grasp, lift, carry, place, release (privileged state, ee-delta actions)
# ---------------------------------------------------------------------------------------------

APPROACH, DESCEND, CLOSE, LIFT, CARRY, LOWER, RELEASE, RETREAT = range(8)


@dataclass
class ExpertConfig:
    """Waypoint geometry and speeds of the scripted expert (metres, radians, control steps)."""

    max_step_m: float = 0.025
    """Largest ee translation per control step (0.125 m/s at 5 Hz, the pace of BridgeData)."""
    fine_step_m: float = 0.015
    """Largest ee translation per step for the final descent to a grasp or a place."""
    max_yaw_step: float = 0.3
    """Largest ee yaw change per control step (rad)."""
    max_tilt_step: float = 0.1
    """Largest roll/pitch correction per control step (rad) that turns the gripper to point straight down before
    the grasp: the robot's joint-position randomisation (Table A.2, +-0.1 rad per joint) tilts it by up to ~0.3 rad,
    and a tilted gripper meets the table with one finger and misses a flat or thin target (+3.1 points of expert
    success on 258 fresh thin-object episodes, benchmarks/RESULTS.md). 0: no correction."""
    finger_below_ee_m: float = 0.016
    """The finger pads reach this far below `ee_gripper_link` when the gripper points down (Bridge WidowX: the
    finger collision hulls end 16.3 mm below it, measured in SAPIEN)."""
    palm_above_ee_m: float = 0.018
    """The gripper bar between the fingers (the palm) starts this far above `ee_gripper_link` (Bridge WidowX,
    measured in SAPIEN: 202 mm vs 184 mm in the base frame)."""
    palm_clears_top: bool = True
    """Grasp a slender target high enough that the palm stays `palm_clearance_m` above its top: at the usual 3 cm
    up, the palm came down on a 96 mm cactus's top with 100-190 N and tipped it over. False: ignore the palm."""
    palm_min_slenderness: float = 2.0
    """Targets count as slender (palm_clears_top) when at least this many times as high as their narrowest side:
    a palm resting on a pear or a mug does not tip it, and a pinch high on a pear's tapered top squeezed it out
    (never lifted, 0/3)."""
    palm_clearance_m: float = 0.008
    """Gap between the palm and a slender target's top at the grasp (see palm_clears_top)."""
    table_clearance_m: float = 0.001
    """Smallest height of the fingertips above the table while grasping (controller target)."""
    flat_height_m: float = 0.012
    """Targets lower than this (forks, knives, wrenches, cookies) are grasped with the fingertips pressed into the
    table instead: at +1 mm the tracking error of the PD arm leaves the pads above a 4-6 mm fork (measured with DR
    on: 1/4 grasps at +1 mm, 4/4 at -4 mm). Taller, round targets (pens, dice) must not be pinched that low: closing
    below a cylinder's equator squeezes it up and out of the fingers."""
    flat_press_m: float = 0.004
    """How far below the table top the fingertip target of a flat target's grasp is set (the arm stops on the
    table with the pads pressed on it, as Bridge demonstrators scrape flat things off the table)."""
    close_rise_m: float = 0.004
    """While the fingers close on a flat target, the fingertip target rises by this much (back to the table top):
    pressed into the table, the closing fingers rub on it and stall at a ~22 mm gap (PD drive force = table
    friction), so 9-11 mm knives and chopsticks 17-20 mm wide were never touched (measured: finger-table force
    7 N, no finger-target contact). 0: keep pressing while closing."""
    approach_above_m: float = 0.07
    """Pre-grasp height of the grasp point above the grasp height."""
    retry_shift_m: float = 0.015
    """After a lost grasp of a long target, grasp again this far along its long axis from the last point, alternately
    to either side (+d, -d, +2d, ...), as a person shifts the fingers after a slip; 0: the same point every time
    (benchmarks/RESULTS.md: +9 of 258 fresh thin-object episodes, no scene worse)."""
    place_clearance_m: float = 0.012
    """Height of the target's bottom above the destination's top when it is released (low, so round produce
    does not bounce or roll off a flat plate / board)."""
    tol_m: float = 0.004
    """A waypoint counts as reached by the controller target within this distance."""
    close_steps: int = 3
    """Control steps spent closing (or opening) the gripper."""


class ScriptedExpert:
    """Per-env phase machine planned on the controller's *target* pose: with the `align2` controller each delta
    adds to the previous target, so a whole chunk can be planned open-loop exactly and re-anchored to the
    true object poses at every chunk (closed loop at decision rate; a dropped object restarts the grasp)."""

    def __init__(self, num_envs: int, cfg: ExpertConfig = ExpertConfig()):
        import torch

        self.cfg = cfg
        self.phase = torch.zeros(num_envs, dtype=torch.long)
        self.count = torch.zeros(num_envs, dtype=torch.long)
        self.retries = torch.zeros(num_envs, dtype=torch.long)  # grasps lost this episode (the next one shifts)

    def reset(self, env_idx=None) -> None:
        idx = slice(None) if env_idx is None else env_idx
        self.phase[idx] = APPROACH
        self.count[idx] = 0
        self.retries[idx] = 0

    def plan(self, priv: dict, tcp_p, closing_yaw, chunk: int, approach_axis=None):
        """priv: `privileged_state()`; tcp_p [N, 3] controller target position; closing_yaw [N] current yaw of the
        fingers' closing axis (base frame); approach_axis [N, 3] the controller target's ee x axis, which points
        along the fingers (base frame; None: no tilt correction). Returns actions [N, C, 7] (+1 open / -1 close)."""
        import torch

        c = self.cfg
        dev = "cpu"
        priv = {k: v.detach().to(dev).float() for k, v in priv.items()}
        pos = tcp_p.detach().to(dev).float().clone()  # [N, 3]
        n = pos.shape[0]
        tsz, dsz, tb, db = priv["target_size"], priv["dest_size"], priv["target_bottom"], priv["dest_bottom"]
        height = priv.get("target_height", tsz[:, 2])  # as it lies now (a cherry on its side is lower)
        grasp_h = (height * 0.5).clamp(0.008, 0.03)
        if c.palm_clears_top:  # slender targets: high enough that the palm does not come down on the top
            slender = height >= c.palm_min_slenderness * torch.minimum(tsz[:, 0], tsz[:, 1])
            grasp_h = torch.where(slender, torch.maximum(grasp_h, height - c.palm_above_ee_m + c.palm_clearance_m),
                                  grasp_h)
        # ALGO LOGIC: fingertips just above the table, or pressed onto it for flat targets
        flat = height < c.flat_height_m
        tip_z = torch.where(flat, -c.flat_press_m, c.table_clearance_m)
        grasp_z = torch.maximum(tb[:, 2] + grasp_h, priv["table_z"] + c.finger_below_ee_m + tip_z)
        dest_top = db[:, 2] + dsz[:, 2]
        # ALGO LOGIC: target bottom clears the destination top by 4 cm while carrying, released 2.5 cm above it
        carry_z = torch.maximum(grasp_z + (dest_top - tb[:, 2]) + 0.04, grasp_z + 0.08)
        place_z = grasp_z + (dest_top - tb[:, 2]) + c.place_clearance_m
        # closed-loop correction: holding phases without the object in hand -> grasp again
        lost = (self.phase >= LIFT) & (self.phase <= LOWER) & ~priv["grasped"].bool()
        self.phase[lost], self.count[lost] = APPROACH, 0
        self.retries[lost] += 1
        # gripper closing axis -> the target's narrow horizontal axis (symmetric gripper: modulo pi)
        narrow = priv["target_yaw"] + torch.where(tsz[:, 0] <= tsz[:, 1], 0.0, math.pi / 2)
        dyaw = torch.remainder(narrow - closing_yaw.to(dev) + math.pi / 2, math.pi) - math.pi / 2
        round_obj = torch.maximum(tsz[:, 0], tsz[:, 1]) < 1.25 * torch.minimum(tsz[:, 0], tsz[:, 1])
        yaw_left = torch.where(round_obj | (self.phase > DESCEND), torch.zeros_like(dyaw), dyaw)
        # gripper straight down before the grasp: the approach axis (ee x) is turned onto -z about a horizontal
        # axis (a base-frame axis-angle: the align2 controller applies rotation deltas in the base's orientation)
        tilt_left = torch.zeros(n, 3)
        if approach_axis is not None and c.max_tilt_step > 0:
            ax = approach_axis.detach().to(dev).float()
            axis = torch.stack([-ax[:, 1], ax[:, 0], torch.zeros(n)], dim=1)  # ax x (0, 0, -1)
            sin = axis.norm(dim=1, keepdim=True)
            angle = torch.atan2(sin, -ax[:, 2:3])
            tilt_left = torch.where(sin > 1e-6, axis / sin.clamp_min(1e-9) * angle, torch.zeros_like(axis))
            tilt_left[self.phase > DESCEND] = 0.0
        acts = torch.zeros(n, chunk, 7)
        txy = tb[:, :2]
        if c.retry_shift_m > 0:  # a missed grasp of a long target is retried a little along it, alternately +/-
            long_obj = torch.maximum(tsz[:, 0], tsz[:, 1]) > 3 * torch.minimum(tsz[:, 0], tsz[:, 1])
            shift = c.retry_shift_m * torch.ceil(self.retries / 2) * torch.where(self.retries % 2 == 1, 1.0, -1.0)
            along = priv["target_yaw"] + torch.where(tsz[:, 0] >= tsz[:, 1], 0.0, math.pi / 2)
            off = torch.stack([torch.cos(along), torch.sin(along)], dim=1) * (shift * long_obj)[:, None]
            txy = txy + off
        # retreat above the destination in absolute terms (carry_z follows the held target's height)
        retreat_z = dest_top + tsz[:, 2] + c.finger_below_ee_m + 0.06
        close_z = grasp_z + flat * c.close_rise_m  # a flat target's pinch eases off the table while closing
        # the approach passes with the fingertips 2 cm over the target's top (a 10 cm cactus was knocked over)
        approach_z = torch.maximum(grasp_z + c.approach_above_m, tb[:, 2] + height + c.finger_below_ee_m + 0.02)
        z = torch.stack([approach_z, grasp_z, close_z, carry_z, carry_z, place_z, place_z, retreat_z], dim=1)
        for k in range(chunk):
            ph = self.phase
            goal = pos.clone()
            dxy = db[:, :2]
            goal[:, :2] = torch.where((ph <= LIFT)[:, None], txy, dxy)
            goal[:, 2] = z.gather(1, ph[:, None])[:, 0]  # [N, 8] ee height per phase
            delta = goal - pos
            fine = (ph == DESCEND) | (ph == LOWER)
            lim = torch.where(fine, c.fine_step_m, c.max_step_m)[:, None]
            norm = delta.norm(dim=1, keepdim=True)
            step = delta * torch.clamp(lim / norm.clamp_min(1e-9), max=1.0)
            hold = (ph == CLOSE) | (ph == RELEASE)
            step[ph == RELEASE] = 0.0
            step[ph == CLOSE, :2] = 0.0  # closing: only the height moves (close_rise_m)
            rot = torch.clamp(yaw_left, -c.max_yaw_step, c.max_yaw_step)
            rot[ph > DESCEND] = 0.0
            yaw_left = yaw_left - rot
            tn = tilt_left.norm(dim=1, keepdim=True)
            tilt = tilt_left * torch.clamp(c.max_tilt_step / tn.clamp_min(1e-9), max=1.0)
            tilt[ph > DESCEND] = 0.0
            tilt_left = tilt_left - tilt
            grip = torch.where((ph >= CLOSE) & (ph <= LOWER), -1.0, 1.0)
            acts[:, k, :3], acts[:, k, 3:5], acts[:, k, 5], acts[:, k, 6] = step, tilt[:, :2], rot, grip
            pos = pos + step
            reached = (((goal - pos).norm(dim=1) < c.tol_m) & (yaw_left.abs() < 0.02)
                       & (tilt_left.norm(dim=1) < 0.02))
            self.count += 1
            timer_done = self.count >= c.close_steps
            advance = torch.where(hold, timer_done, reached & (self.count >= 1)) & (ph < RETREAT)
            self.phase = torch.where(advance, ph + 1, ph)
            self.count[advance] = 0
        return acts


# ---------------------------------------------------------------------------------------------
# Chunk runner: C control steps per decision, success bookkeeping, auto-reset (batched, any backend)
# ---------------------------------------------------------------------------------------------


class ChunkRunner:
    """Drives one batched ManiSkill env (N=1 per CPU worker, N envs on GPU) at the decision level."""

    def __init__(self, scene_specs: list[tuple[str, str]], num_envs: int, cfg: EnvConfig, sim_backend: str,
                 seed: int = 0, record: Recording | None = None):
        import gymnasium as gym
        import torch

        self.cfg, self.num_envs, self.specs = cfg, num_envs, scene_specs
        kinds = {k for k, _ in scene_specs}
        if len(kinds) != 1 or (kinds == {"simpler"} and len({v for _, v in scene_specs}) != 1):
            raise ValueError("one ManiSkill env holds either manifests or a single SimplerEnv task")
        self.kind = kinds.pop()
        # render on the GPU whenever there is one (also under CPU physics, ManiSkill's default); else lavapipe.
        # SAPIEN allows one render device per process, so every renderer here must make the same choice.
        sim_backend, render_backend = sim_devices(sim_backend, torch.cuda.is_available())
        size = cfg.image_size
        common = dict(num_envs=num_envs, sim_backend=sim_backend, render_backend=render_backend,
                      sensor_configs={CAMERA_UID: dict(width=size, height=size, intrinsic=scaled_intrinsic(size, size))},
                      human_render_camera_configs=dict(width=cfg.render_size[0], height=cfg.render_size[1],
                                                       intrinsic=scaled_intrinsic(*cfg.render_size)),
                      max_episode_steps=None, render_mode="rgb_array" if record and record.video else None)
        state_only = cfg.obs_mode == "state"  # the object-state proxy: no sensor is rendered
        if self.kind == "gen":
            self.manifests = [v for _, v in scene_specs]
            env = gym.make("GenScene-v1", obs_mode="state_dict" if state_only else "rgb",
                           reward_mode="normalized_dense" if cfg.reward == "shaped" else "sparse",
                           manifests=[_portable(m) for m in self.manifests] if record else self.manifests,  # relative
                           env_cfg=dataclasses.asdict(cfg), **common)  # plain data: a trajectory's JSON holds them
        else:
            if cfg.reward == "shaped":
                raise ValueError(f"--env.reward shaped: the shaping potential is GenScene-v1's dense reward; "
                                 f"{scene_specs[0][1]} (SimplerEnv) has none (fix: --env.reward sparse for SimplerEnv)")
            self.manifests = [SIMPLER_PREFIX + scene_specs[0][1]]
            env = gym.make(scene_specs[0][1], obs_mode="state_dict" if state_only else "rgb+segmentation",
                           control_mode=CONTROL_MODE, **common)
        self.recorder = None
        if record is not None:
            from mani_skill.utils.wrappers.record import RecordEpisode

            env = self.recorder = RecordEpisode(
                env, record.output_dir, save_trajectory=record.trajectory, trajectory_name=record.name,
                save_video=record.video, video_fps=cfg.control_freq, source_type=record.source or None,
                max_steps_per_video=cfg.max_decisions * cfg.chunk if num_envs > 1 and record.video else None)
        self.gym_env = env  # resets and steps go through here (the recorder when recording)
        self.env = env.unwrapped
        self.expert = ScriptedExpert(num_envs)
        self.rng = np.random.default_rng(seed)
        self.noise_rng = np.random.default_rng([int(seed), 1])  # EnvConfig.object_state_noise_m; reseeded by reset
        self.noise_z = np.zeros((num_envs, 2, 3))  # its standard-normal AR(1) state: target, destination xyz
        self._last_seed = int(seed)  # auto-resets derive their explicit seeds from it (reset)
        self.episodes = 0
        self.decisions = torch.zeros(num_envs, dtype=torch.long)
        self.steps = torch.zeros(num_envs, dtype=torch.long)
        self.success_step = torch.full((num_envs,), -1, dtype=torch.long)
        self.partial = torch.zeros(num_envs, dtype=torch.bool)
        self.src_start_z = torch.zeros(num_envs)
        self.potential = torch.zeros(num_envs)  # phi(s) of the shaped reward at the current decision's start
        low, high = self.env.single_action_space.low, self.env.single_action_space.high
        self.act_low, self.act_high = torch.as_tensor(low), torch.as_tensor(high)

    def load_manifests(self, paths: list[str]) -> None:
        """Rebuild the GenScene env around other manifests in place (compose_scene.py's candidates)."""
        if self.recorder is not None:  # its JSON holds the env's kwargs: another scene needs another recorder
            raise ValueError("load_manifests: this env records trajectories of its scene; make a new env to record "
                             "another scene")
        self.manifests = [str(p) for p in paths]
        self.env.reset(options=dict(reconfigure=True, manifests=self.manifests))

    # ---- observation ---------------------------------------------------------------------------
    def scene_ids(self) -> list[str]:
        if self.kind == "simpler":
            return self.manifests * self.num_envs
        return [self.env.manifest(i).scene_id for i in range(self.num_envs)]

    def _obs(self, raw: dict, reset=None) -> dict:
        """The policy's observation; `reset` ([N] bool, or None after a step) says which envs start an episode."""
        text = list(self.env.get_language_instruction())
        obj = None
        if self.cfg.obs_mode == "state" or self.cfg.with_object_state:
            priv = self.env.privileged_state() if self.kind == "gen" else simpler_privileged_state(self.env)
            obj = object_state(priv).cpu()  # [N, OBJECT_STATE_DIM]
        extra = {"object_state": obj} if self.cfg.with_object_state else {}
        if self.cfg.obs_mode == "state":  # [N, 7 + OBJECT_STATE_DIM]: proprio, then the object-state proxy
            return {"state": torch.cat([ee_state(self.env).cpu(), self._detector_noise(obj, reset)], 1), **extra,
                    "instruction": text}
        rgb = raw["sensor_data"][CAMERA_UID]["rgb"].cpu()  # [N, H, W, 3] uint8
        return {"rgb": rgb, "state": ee_state(self.env).cpu(), **extra, "instruction": text}

    def _detector_noise(self, obj: "torch.Tensor", reset=None) -> "torch.Tensor":
        """`obj` with EnvConfig.object_state_noise_m's Gaussian noise on the target's and the destination's xyz:
        a fresh draw where an episode starts (`reset`), one AR(1) step of it after a decision (`reset` None)."""
        sd_target, sd_dest = self.cfg.object_state_noise_m
        if not (sd_target or sd_dest):
            return obj
        draw = self.noise_rng.standard_normal((len(obj), 2, 3))
        if reset is None:
            rho = self.cfg.object_state_noise_corr
            self.noise_z = rho * self.noise_z + math.sqrt(1 - rho ** 2) * draw
        else:
            self.noise_z[reset] = draw[reset]
        noisy = obj.clone()
        noisy[:, 0:3] += torch.as_tensor(self.noise_z[:, 0] * sd_target, dtype=obj.dtype)
        noisy[:, 8:11] += torch.as_tensor(self.noise_z[:, 1] * sd_dest, dtype=obj.dtype)
        return noisy

    def _potential(self):
        """[N] phi(s) of the shaped reward (EnvConfig.reward): GenScene-v1's normalized dense reward, 1 on success."""
        return self.env.compute_normalized_dense_reward(None, None, self.env.get_info()).float().cpu()

    def _src(self):
        return self.env.objs[self.env.source_obj_name] if self.kind == "simpler" else self.env.target

    # ---- episode control -----------------------------------------------------------------------
    def reset(self, seed: int | None = None, env_idx=None) -> dict:
        import torch

        options = {}
        if env_idx is not None:
            options["env_idx"] = torch.as_tensor(env_idx)
        if (self.kind == "gen" and self.cfg.resample_every and len(self.manifests) > self.num_envs and env_idx is None
                and self.episodes and self.episodes % self.cfg.resample_every == 0):
            options = dict(reconfigure=True, scene_assignment=self.rng.integers(0, len(self.manifests),
                                                                                 self.num_envs).tolist())
        if isinstance(seed, (int, np.integer)) and self.num_envs > 1:  # env i gets seed + i on every backend (an
            seed = [int(seed) + i for i in range(self.num_envs)]  # int would make ManiSkill derive envs 1..N-1's)
        if seed is None and self.num_envs == 1:  # an auto-reset: an explicit seed from the last one, so the recorded
            # episode_seed / reset_kwargs replay it (ManiSkill's replay_trajectory); unseeded it records seed 0
            seed = int(np.random.SeedSequence([self._last_seed, self.episodes]).generate_state(1)[0] % 2**31)
        if seed is not None:
            self._last_seed = int(np.asarray(seed).ravel()[0])
            self.noise_rng = np.random.default_rng([*map(int, np.asarray(seed).ravel()), 1])
        raw, _ = self.gym_env.reset(seed=seed, options=options)
        idx = slice(None) if env_idx is None else torch.as_tensor(env_idx)
        self.decisions[idx], self.steps[idx], self.success_step[idx], self.partial[idx] = 0, 0, -1, False
        self.src_start_z[idx] = self._src().pose.p[idx, 2].cpu()
        self.expert.reset(idx)
        if self.cfg.reward == "shaped":
            self.potential[idx] = self._potential()[idx]
        self.episodes += 1 if env_idx is None else len(env_idx)
        starts = np.zeros(self.num_envs, bool)
        starts[slice(None) if env_idx is None else torch.as_tensor(env_idx).cpu().numpy()] = True
        return self._obs(raw, reset=starts)

    def step(self, actions) -> tuple[dict, Any, Any, Any, dict]:
        """actions [N, C, 7] -> obs, reward [N], terminated [N], truncated [N], info (see ChunkVecEnv.step)."""
        import torch

        actions = torch.as_tensor(actions, dtype=torch.float32).reshape(self.num_envs, -1, 7)
        for k in range(actions.shape[1]):
            a = torch.maximum(torch.minimum(actions[:, k], self.act_high), self.act_low).to(self.env.device)
            if k < actions.shape[1] - 1 and self.recorder is None:  # the policy sees only the chunk's last frame:
                # skip rendering the others (a recorder records every control step, so it steps the full env)
                self.env._step_action(a)
                self.env._elapsed_steps += 1
                self.steps += 1
                if self.cfg.success_check == "chunk":
                    continue  # Eq. A.1 is checked at the chunk's end only (EnvConfig.success_check)
                info = self.env.get_info()
            else:
                raw, env_reward, _, _, info = self.gym_env.step(a)  # the chunk's last step (and every step recorded)
                self.steps += 1
            succ = info["success"].cpu().bool()
            newly = succ & (self.success_step < 0)
            self.success_step[newly] = self.steps[newly]
            if self.kind == "gen":
                self.partial |= info["partial_success"].cpu().bool()
            else:
                lifted = self._src().pose.p[:, 2].cpu() - self.src_start_z > self.cfg.lift_threshold_m
                self.partial |= self.env.agent.is_grasping(self._src()).cpu().bool() & lifted
        self.decisions += 1
        obs = self._obs(raw)
        terminated = self.success_step >= 0
        truncated = (self.decisions >= self.cfg.max_decisions) & ~terminated
        elapsed_steps = torch.where(terminated, self.success_step, self.steps)  # control steps (ManiSkill's name)
        info = {"success": terminated.clone(), "elapsed_steps": elapsed_steps,
                "elapsed_s": elapsed_steps.float() * self.cfg.control_dt, "partial_success": self.partial.clone(),
                "scene_id": self.scene_ids()}
        reward = terminated.float()
        if self.cfg.reward == "shaped":  # success + phi(s') - phi(s) (potential-based shaping)  # ALGO LOGIC
            phi = torch.where(terminated, 1.0, env_reward.float().cpu())  # normalized_dense at the chunk's end
            reward, self.potential = reward + phi - self.potential, phi
        done = terminated | truncated
        if done.any():
            info["final_observation"] = {k: (v.clone() if hasattr(v, "clone") else list(v)) for k, v in obs.items()}
            idx = torch.nonzero(done)[:, 0]
            new = self.reset(env_idx=None if len(idx) == self.num_envs else idx.tolist())
            for key in obs_keys(self.cfg):
                obs[key][idx] = new[key][idx] if len(idx) < self.num_envs else new[key]
            obs["instruction"] = new["instruction"]
            info["scene_id"] = self.scene_ids()
        return obs, reward, terminated, truncated, info

    def expert_actions(self, chunk: int | None = None):
        """[N, C, 7] the scripted expert's next chunk from privileged state."""
        import torch

        env = self.env
        priv = env.privileged_state() if self.kind == "gen" else simpler_privileged_state(env)
        tcp = env.agent.controller.controllers["arm"]._target_pose.p
        inv = env.agent.robot.pose.inv()
        finger = inv * env.agent.finger1_link.pose
        rmat = finger.to_transformation_matrix()[:, :3, :3]
        closing_yaw = torch.atan2(rmat[:, 1, 1], rmat[:, 0, 1])
        approach = env.agent.controller.controllers["arm"]._target_pose.to_transformation_matrix()[:, :3, 0]
        return self.expert.plan(priv, tcp, closing_yaw, chunk or self.cfg.chunk, approach)

    def render_rgb(self) -> np.ndarray:
        """[N, H, W, 3] uint8 frames of the full-resolution Bridge camera (human render camera)."""
        frames = self.env.render_rgb_array() if hasattr(self.env, "render_rgb_array") else self.env.render()
        return np.asarray(frames.cpu() if hasattr(frames, "cpu") else frames)[..., :3].astype(np.uint8)

    def close(self) -> None:
        self.gym_env.close()  # a recorder writes its last episode and closes its files here


# ---------------------------------------------------------------------------------------------
# Vectorisation: CPU process pool (gymnasium AsyncVectorEnv, forkserver) or one batched GPU env
# ---------------------------------------------------------------------------------------------


def _worker_env_fn(specs: list[tuple[str, str]], cfg: EnvConfig, seed: int, record: Recording | None = None):
    """Runs in a worker process: pin lavapipe to one render thread before SAPIEN starts (SPEC section 4)."""
    os.environ["LP_NUM_THREADS"] = "1"
    return _ChunkWorker(specs, cfg, seed, record and dataclasses.replace(record, name=f"{record.name}_env{seed}"))


class _ChunkWorker:
    """gymnasium.Env facade over a 1-env ChunkRunner: one IPC round trip per decision (the whole chunk runs here).
    The ManiSkill env is built lazily at the first reset, so AsyncVectorEnv's spaces probe in the parent is cheap.
    Episode ends are reported in `info` and auto-reset happens here, so the vector env never resets by itself."""

    metadata = {"render_modes": []}
    render_mode = None
    spec = None

    def __init__(self, specs: list[tuple[str, str]], cfg: EnvConfig, seed: int, record: Recording | None = None):
        import gymnasium as gym

        self.specs, self.cfg, self.seed, self.record, self.runner = specs, cfg, seed, record, None
        s = cfg.image_size
        spaces = {"rgb": gym.spaces.Box(0, 255, (s, s, 3), np.uint8),
                  "state": gym.spaces.Box(-np.inf, np.inf, (state_dim(cfg),), np.float32),
                  "object_state": gym.spaces.Box(-np.inf, np.inf, (OBJECT_STATE_DIM,), np.float32)}
        self.observation_space = gym.spaces.Dict({k: spaces[k] for k in obs_keys(cfg)})
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (cfg.chunk, 7), np.float32)
        self.np_random = None

    def _np(self, obs: dict) -> dict:
        return {k: obs[k][0].numpy() for k in obs_keys(self.cfg)}

    def reset(self, *, seed=None, options=None):
        if self.runner is None:
            self.runner = ChunkRunner(self.specs, 1, self.cfg, "physx_cpu", seed=self.seed, record=self.record)
        obs = self.runner.reset(seed=seed)
        return self._np(obs), {"instruction": obs["instruction"][0], "scene_id": self.runner.scene_ids()[0]}

    def step(self, action):
        obs, rew, term, trunc, info = self.runner.step(np.asarray(action, np.float32)[None])
        out = {"success": bool(info["success"][0]), "elapsed_s": float(info["elapsed_s"][0]),
               "elapsed_steps": int(info["elapsed_steps"][0]),
               "partial_success": bool(info["partial_success"][0]), "terminated": bool(term[0]),
               "truncated": bool(trunc[0]), "scene_id": info["scene_id"][0], "instruction": obs["instruction"][0]}
        if "final_observation" in info:
            f = info["final_observation"]
            out["final_obs"] = {**self._np(f), "instruction": f["instruction"][0]}  # gymnasium's key: it batches
            # these as one object per env
        return self._np(obs), float(rew[0]), False, False, out

    def get_wrapper_attr(self, name: str):  # what AsyncVectorEnv.call uses (this is not a gym.Wrapper)
        return getattr(self, name)

    def load_pending(self):
        """Switch to `self.pending_manifest` (set by ChunkVecEnv.load_scenes) in place: reconfigure, same process."""
        self.specs = [("gen", self.pending_manifest)]
        if self.runner is not None:
            self.runner.load_manifests([self.pending_manifest])

    def set_wrapper_attr(self, name: str, value, *, force: bool = True):  # what AsyncVectorEnv.set_attr uses
        setattr(self, name, value)
        return True

    def expert_chunk(self):
        return self.runner.expert_actions()[0].numpy()

    def render_frame(self):
        return self.runner.render_rgb()[0]

    def close(self):
        if self.runner is not None:
            self.runner.close()


class ChunkVecEnv:
    """Batched-torch decision-level env over N envs: `reset(seed) -> (obs, info)`, `step(actions)` (see its
    docstring), `expert_actions()`, `render_rgb()`, `close()`."""

    def __init__(self, scenes: list[str], num_envs: int, cfg: EnvConfig, seed: int = 0, workers: int | None = None,
                 record: Recording | None = None):
        import torch

        cfg = dataclasses.replace(cfg)  # private copy: callers' defaults are never mutated
        self.cfg, self.num_envs, self.seed, self.recording = cfg, num_envs, seed, record is not None
        self.chunk, self.max_decisions, self.control_dt = cfg.chunk, cfg.max_decisions, cfg.control_dt
        specs = [parse_scene(s) for s in scenes]
        if not specs:
            raise ValueError("make_vec_env: `scenes` is empty; pass manifest paths or 'simpler:<EnvId>' ids")
        self.generated_only = all(k == "gen" for k, _ in specs)  # then load_scenes can switch scenes in place
        backend, _ = sim_devices(cfg.sim_backend, torch.cuda.is_available())
        homogeneous = len({k for k, _ in specs}) == 1 and (specs[0][0] == "gen" or len(set(specs)) == 1)
        if backend.startswith("physx_cuda") and not homogeneous:
            backend = "physx_cpu"  # a GPU env holds one kind of scene; mixed lists fall back to the CPU pool
        self.backend = backend
        self.scene_ids = [""] * num_envs
        self.instructions = [""] * num_envs
        if backend.startswith("physx_cuda") or workers == 0:
            if backend == "physx_cpu" and num_envs != 1:
                raise ValueError("workers=0 (in-process) with physx_cpu supports num_envs=1 only")
            # GPU: one ManiSkill env with N sub-scenes; env i holds scenes[i % len(scenes)] (UNTESTED on GPU here)
            self.runner = ChunkRunner(specs if specs[0][0] == "gen" else specs[:1], num_envs, cfg, backend, seed, record)
            self.pool = None
        else:
            import gymnasium as gym

            if workers not in (None, num_envs):
                raise ValueError(f"workers={workers}: on physx_cpu the pool runs one worker process per env, so workers "
                                 f"must be num_envs ({num_envs}), None (the same) or 0 (one env in this process)")
            per_env = [[specs[j] for j in range(i, len(specs), num_envs)] if specs[i % len(specs)][0] == "gen"
                       and len(specs) > num_envs else [specs[i % len(specs)]] for i in range(num_envs)]
            per_env = [[s for s in lst if s[0] == "gen"] or lst[:1] for lst in per_env]
            if len(specs) > num_envs and not cfg.resample_every:
                warnings.warn(f"make_vec_env: {len(specs)} scenes on {num_envs} CPU env workers with "
                              "cfg.resample_every = 0: each worker stays on its first scene, so only "
                              f"{num_envs} of the {len(specs)} scenes are ever visited (fix: --env.resample-every 4, "
                              "or as many envs as scenes)", RuntimeWarning, stacklevel=3)
            msg = oversubscription_warning(num_envs, os.cpu_count() or 1)
            if msg:
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
            fns = [functools.partial(_worker_env_fn, per_env[i], cfg, seed + i, record) for i in range(num_envs)]
            self.runner = None
            self.pool = gym.vector.AsyncVectorEnv(fns, shared_memory=True, context="forkserver",
                                                  autoreset_mode=gym.vector.AutoresetMode.DISABLED)

    def _torch_obs(self, obs: dict, instructions: list[str]) -> dict:
        import torch

        out = {k: torch.from_numpy(np.asarray(obs[k])) for k in obs_keys(self.cfg)}
        out["state"] = out["state"].float()
        return {**out, "instruction": list(instructions)}

    def reset(self, seed: int | None = None) -> tuple[dict, dict]:
        """Reset every env (env i with seed + i) -> (obs, info), gymnasium's convention; info: scene_id, instruction."""
        seed = self.seed if seed is None else seed
        if self.runner is not None:
            obs = self.runner.reset(seed=seed)
            self.scene_ids, self.instructions = self.runner.scene_ids(), obs["instruction"]
        else:
            o, inf = self.pool.reset(seed=[seed + i for i in range(self.num_envs)])
            self.scene_ids, self.instructions = list(inf["scene_id"]), list(inf["instruction"])
            obs = self._torch_obs(o, self.instructions)
        return obs, {"scene_id": list(self.scene_ids), "instruction": list(self.instructions)}

    def step(self, actions) -> tuple[dict, Any, Any, Any, dict]:
        """actions [N, C, 7] (ee delta xyz m, delta rpy rad, gripper +1 open / -1 close): the C control steps of one
        decision -> obs, reward [N] (1 on success), terminated [N] (success), truncated [N] (max_decisions), info:
        success / success_once / success_at_end [N] bool (Eq. A.1; an episode ends at its first success, so the three
        agree), elapsed_steps [N] control steps (to the success step when successful), elapsed_s [N] (the same in
        seconds: time to finish), partial_success [N], scene_id [N]; where an env ended, final_observation (the
        pre-reset obs of every row; rows that did not end hold the current obs). Ended envs are reset in place."""
        import torch

        actions = torch.as_tensor(actions, dtype=torch.float32)
        assert actions.shape == (self.num_envs, self.chunk, 7), f"actions must be [N, C, 7], got {tuple(actions.shape)}"
        if self.runner is not None:
            obs, rew, term, trunc, info = self.runner.step(actions)
        else:
            o, rew, _, _, inf = self.pool.step(actions.numpy())
            obs = self._torch_obs(o, inf["instruction"])
            term, trunc = torch.as_tensor(inf["terminated"]), torch.as_tensor(inf["truncated"])
            rew = torch.as_tensor(rew)  # each worker's ChunkRunner reward (sparse or shaped)
            info = {"success": torch.as_tensor(inf["success"]), "elapsed_s": torch.as_tensor(inf["elapsed_s"]).float(),
                    "elapsed_steps": torch.as_tensor(inf["elapsed_steps"]).long(),
                    "partial_success": torch.as_tensor(inf["partial_success"]), "scene_id": list(inf["scene_id"])}
            if "final_obs" in inf:  # rows of envs that did not end are copies of the current obs
                rows = list(inf["final_obs"])  # [N] objects, None where the env did not end
                keys = obs_keys(self.cfg)
                fo = {**{k: obs[k].clone() for k in keys}, "instruction": list(obs["instruction"])}
                for i, f in enumerate(rows):
                    if f is not None:
                        for k in keys:
                            fo[k][i] = torch.from_numpy(f[k])
                        fo["instruction"][i] = f["instruction"]
                info["final_observation"] = fo
        # an episode ends at its first success, so ManiSkill's success_once / success_at_end are `success` here
        info["success_once"], info["success_at_end"] = info["success"].clone(), info["success"].clone()
        self.scene_ids, self.instructions = list(info["scene_id"]), list(obs["instruction"])
        return obs, rew.float(), term.bool(), trunc.bool(), info

    def can_load(self, scene: str) -> bool:
        """Whether `load_scenes([scene])` can switch this env in place (generated scenes on both sides, not recording:
        a trajectory file belongs to one scene)."""
        return self.generated_only and not self.recording and parse_scene(scene)[0] == "gen"

    def load_scenes(self, scenes: list[str]) -> None:
        """Rebuild every env around other generated scenes in place (env i holds scenes[i % len]), keeping the worker
        processes and renderers: what evaluate.py does between scenes instead of a new env per scene."""
        specs = [parse_scene(s) for s in scenes]
        if not self.generated_only or any(k != "gen" for k, _ in specs):
            raise ValueError("load_scenes switches between generated scenes only (make a new env for SimplerEnv)")
        paths = [specs[i % len(specs)][1] for i in range(self.num_envs)]
        if self.runner is not None:
            self.runner.load_manifests(paths)
        else:
            self.pool.set_attr("pending_manifest", paths)  # one value per worker
            self.pool.call("load_pending")

    def expert_actions(self):
        import torch

        if self.runner is not None:
            return self.runner.expert_actions()
        return torch.from_numpy(np.stack(self.pool.call("expert_chunk"))).float()

    def render_rgb(self) -> np.ndarray:
        if self.runner is not None:
            return self.runner.render_rgb()
        return np.stack(self.pool.call("render_frame"))

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        if self.pool is not None:
            self.pool.close()


def rank_scenes(scenes: list, num_envs: int, rank: int = 0, world: int = 1) -> list:
    """The scene list of DDP rank `rank` (of `world`, `num_envs` envs each) such that make_vec_env's rule, local env
    i holds list[i % len] (and list[i + k * num_envs]), gives every GLOBAL env g = rank * num_envs + i the scenes
    scenes[g % len(scenes)] (and scenes[g + k * world * num_envs]): all ranks together cover every scene, as one
    process with world * num_envs envs would."""
    if not 0 <= rank < world or num_envs < 1:
        raise ValueError(f"rank_scenes: rank {rank} of world {world} with {num_envs} envs per rank")
    n, total, first = len(scenes), world * num_envs, rank * num_envs
    if n <= total:
        return [scenes[(first + i) % n] for i in range(num_envs)]
    return [scenes[g] for k in range(math.ceil(n / total)) for i in range(num_envs) if (g := first + i + k * total) < n]


def make_vec_env(scenes: list[str | Path], num_envs: int, cfg: EnvConfig = EnvConfig(), seed: int = 0,
                 workers: int | None = None, record: Recording | None = None) -> ChunkVecEnv:
    """`scenes`: manifest paths (GenScene-v1) or SimplerEnv ids "simpler:PutCarrotOnPlateInScene-v1" etc.
    Env i holds scenes[i % len(scenes)] (and, with `cfg.resample_every`, also scenes[i + k*num_envs]).
    physx_cuda with num_envs=N where it works, else a process pool of physx_cpu envs (one per worker process,
    gymnasium AsyncVectorEnv, forkserver, LP_NUM_THREADS=1 per worker). `workers=0` runs a single env in this
    process (no IPC; what compose_scene.py and tests use). `record`: ManiSkill RecordEpisode trajectories (and
    render-camera videos) of every episode (see Recording; CPU workers write one file each)."""
    configure_runtime()
    return ChunkVecEnv([str(s) for s in scenes], num_envs, cfg, seed, workers, record)


def rerender(trajectory: str | Path, image_size: int, episodes: list[int] | None = None):
    """Re-render a recorded GenScene-v1 trajectory (`Recording`) at another policy image size from its env states:
    no expert or policy runs, the physics is not re-simulated. Yields per episode {"episode_id", "seed", "scene_id",
    "instruction", "rgb" [T+1, S, S, 3] uint8, "state" [T+1, 7] (ee pose + gripper, the policy's state input), "actions" [T, 7],
    "success" [T] bool}: frame t is the state before action t, the last one after the last action."""
    import gymnasium as gym
    import h5py
    from mani_skill.trajectory import utils as tu
    from mani_skill.utils import common

    path = Path(trajectory)
    meta = json.loads(path.with_suffix(".json").read_text())
    info = meta.get("env_info") or {}
    if info.get("env_id") != "GenScene-v1":
        raise ValueError(f"{path.with_suffix('.json')}: env_info.env_id is {info.get('env_id')!r}; rerender replays "
                         "GenScene-v1 trajectories (SimplerEnv: ManiSkill's replay_trajectory)")
    kw = dict(info["env_kwargs"])
    cfg = dataclasses.replace(env_config_from_dict(kw.get("env_cfg", {})), image_size=image_size)
    kw.update(env_cfg=dataclasses.asdict(cfg), num_envs=1, sim_backend="physx_cpu", render_mode=None,
              sensor_configs={CAMERA_UID: dict(width=image_size, height=image_size,
                                                intrinsic=scaled_intrinsic(image_size, image_size))})
    kw.pop("human_render_camera_configs", None)
    configure_runtime()
    env = gym.make("GenScene-v1", **kw).unwrapped
    try:
        with h5py.File(path, "r") as f:
            for ep in meta["episodes"]:
                reset = ep.get("reset_kwargs", {})
                if episodes is not None and ep["episode_id"] not in episodes:
                    if "scene_assignment" in (reset.get("options") or {}):
                        env.reset(**reset)  # a skipped episode that switched scenes (resample_every): switch too
                    continue
                g = f[f"traj_{ep['episode_id']}"]
                env.reset(**reset)  # same seed: same lighting / camera draw as recorded
                rgb, state = [], []
                for st in tu.dict_to_list_of_dicts(g["env_states"]):
                    env.set_state_dict(common.to_tensor(common.batch(st)))
                    obs = env.get_obs()
                    rgb.append(obs["sensor_data"][CAMERA_UID]["rgb"][0].cpu().numpy())
                    state.append(ee_state(env)[0].cpu().numpy())
                yield {"episode_id": ep["episode_id"], "seed": ep.get("episode_seed"), "scene_id": env.manifest(0).scene_id,
                       "instruction": env.get_language_instruction()[0], "rgb": np.stack(rgb),
                       "state": np.stack(state), "actions": np.asarray(g["actions"]),
                       "success": np.asarray(g["success"]) if "success" in g else None}
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------
# CLI: run the scripted expert on scenes and report its success rate (a smoke test of the whole env)
# ---------------------------------------------------------------------------------------------


@dataclass
class Args:
    scenes: list[str] = field(default_factory=lambda: ["simpler:PutCarrotOnPlateInScene-v1"])
    """Manifest paths (or scene folders) and/or "simpler:<EnvId>" ids."""
    episodes: int = 4
    """Episodes of the scripted expert to run per env."""
    num_envs: int = 1
    """Parallel envs (CPU: one worker process each)."""
    seed: int = 0
    """Seed of the first env; env i uses seed + i."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment settings."""
    video_dir: str | None = None
    """If set, write the first episode's 224x224 observations of env 0 as PNG frames here."""


def main(args: Args) -> dict:
    import torch

    venv = make_vec_env(args.scenes, args.num_envs, args.env, args.seed, workers=0 if args.num_envs == 1 else None)
    t0 = time.time()
    obs, _ = venv.reset(seed=args.seed)
    done_eps = torch.zeros(args.num_envs, dtype=torch.long)
    results, steps = [], 0
    frames = [obs["rgb"][0].numpy()] if args.video_dir else []
    while (done_eps < args.episodes).any():
        obs, rew, term, trunc, info = venv.step(venv.expert_actions())
        steps += args.num_envs * venv.chunk
        if args.video_dir and not results:
            frames.append(obs["rgb"][0].numpy())
        for i in torch.nonzero(term | trunc)[:, 0].tolist():
            if done_eps[i] < args.episodes:
                results.append(dict(scene_id=info["scene_id"][i], success=bool(info["success"][i]),
                                    elapsed_s=float(info["elapsed_s"][i]), partial=bool(info["partial_success"][i])))
                done_eps[i] += 1
    dt = time.time() - t0
    venv.close()
    if args.video_dir:
        from PIL import Image

        Path(args.video_dir).mkdir(parents=True, exist_ok=True)
        for k, f in enumerate(frames):
            Image.fromarray(f).save(Path(args.video_dir) / f"frame_{k:03d}.png")
    sr = sum(r["success"] for r in results) / max(len(results), 1)
    summary = dict(success_rate=sr, episodes=len(results), control_steps_per_s=steps / dt, results=results)
    print(f"expert success {sr:.2%} over {len(results)} episodes, {steps / dt:.1f} control steps/s")
    return summary


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
