"""GenScene-v1 on the GPU simulator (benchmarks/gpu_check.sh): partial resets and the scripted expert on GPU vs CPU IK.

    python benchmarks/gpu_sim_check.py --make-scenes /tmp/gpu_scenes          # two tiny procedural scenes, offline
    python benchmarks/gpu_sim_check.py --scenes-dir /tmp/gpu_scenes/scenes --num-envs 8 --episodes 16
    python benchmarks/gpu_sim_check.py --scenes-dir /tmp/gpu_scenes/scenes --backend physx_cpu --episodes 16

Prints `FIGURE <name> <value>` lines that gpu_check.sh compares with its expected ranges:
- partial_reset_drift: the largest change of a running env's robot joints, target pose and arm controller target
  across a reset of env 0 (ManiSkill's set_sim_state rows and the controller reset mask, scene_env.py);
- expert_sr_physx_cuda / expert_sr_physx_cpu: the scripted expert's success rate on the GPU sim (ManiSkill's GPU IK:
  one Levenberg-Marquardt step per control step) and on the CPU sim (Pinocchio IK), same scenes and episode count
  (one process per backend: gpu_check.sh runs both and compares them).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
import scene_env  # noqa: E402
import scene_schema as ss  # noqa: E402


@dataclass
class Args:
    scenes_dir: str | None = None
    """Composed scenes (<dir>/<id>/manifest.json); default: two tiny procedural scenes made in a temp folder."""
    make_scenes: str | None = None
    """Only write the two tiny procedural scenes to this folder (for ppoflow_pi0.py --scenes-dir) and exit."""
    backend: str = "physx_cuda"
    """physx_cuda: the partial-reset check and the expert on GPU IK; physx_cpu: the expert on CPU IK only."""
    num_envs: int = 8
    """Parallel envs on physx_cuda (physx_cpu: one env, scene by scene)."""
    episodes: int = 16
    """Expert episodes per backend."""
    image_size: int = 32
    """Camera size (the expert does not look)."""


def make_tiny_scenes(folder: Path) -> list[str]:
    """Two procedural block-on-plate scenes with hand-written layouts (the test suite's helpers: no network)."""
    from test_scene_env import make_scene, write_manifest

    out = []
    for k, (bx, px) in enumerate(((0.26, 0.33), (0.30, 0.36))):
        sd = make_scene(folder / "scenes", folder / "assets", f"gpu_block_{k}")
        out.append(str(write_manifest(sd, folder / "assets", {"red_block": (bx, 0.06), "blue_plate": (px, -0.07),
                                                              "green_can": (0.38, 0.12)}, dr_halfwidth=0.01)))
    return out


def expert_success(specs, backend: str, num_envs: int, episodes: int, cfg) -> float:
    runner = scene_env.ChunkRunner(specs, num_envs, cfg, backend, seed=0)
    runner.reset(seed=0)
    done = succ = 0
    while done < episodes:
        _, _, term, trunc, info = runner.step(runner.expert_actions())
        ended = (term | trunc).nonzero().flatten().tolist()
        succ += sum(bool(info["success"][i]) for i in ended)
        done += len(ended)
    runner.close()
    return succ / done


def partial_reset_drift(specs, num_envs: int, cfg) -> float:
    runner = scene_env.ChunkRunner(specs, num_envs, cfg, "physx_cuda", seed=0)
    runner.reset(seed=0)
    for _ in range(3):  # mid-episode: targets have moved away from the start
        runner.step(runner.expert_actions())
    env, keep = runner.env, torch.arange(1, num_envs)

    def snap():
        return [env.agent.robot.get_qpos()[keep].cpu(), env.target.pose.raw_pose[keep].cpu(),
                env.agent.controller.controllers["arm"]._target_pose.raw_pose[keep].cpu()]

    before = snap()
    runner.reset(env_idx=[0])
    drift = max(float((a - b).abs().max()) for a, b in zip(snap(), before))
    runner.close()
    return drift


def main(args: Args) -> None:
    if args.make_scenes:
        print("\n".join(make_tiny_scenes(Path(args.make_scenes))))
        return
    if args.backend == "physx_cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_sim_check.py: no CUDA GPU here (physx_cuda needs one; --backend physx_cpu runs the CPU "
                         "expert alone)")
    manifests = ([str(p) for p in ss.find_manifests(args.scenes_dir)] if args.scenes_dir
                 else make_tiny_scenes(Path(tempfile.mkdtemp(prefix="gpu_sim_check_"))))
    cfg = scene_env.EnvConfig(image_size=args.image_size)
    gen = [("gen", m) for m in manifests]
    if args.backend == "physx_cuda":
        print(f"FIGURE partial_reset_drift {partial_reset_drift(gen, args.num_envs, cfg):.3g}", flush=True)
        sr = expert_success(gen, "physx_cuda", args.num_envs, args.episodes, cfg)
    else:  # one env per CPU sim, scene by scene
        per_scene = max(1, args.episodes // len(gen))
        sr = sum(expert_success([s], "physx_cpu", 1, per_scene, cfg) for s in gen) / len(gen)
    print(f"FIGURE expert_sr_{args.backend} {sr:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
