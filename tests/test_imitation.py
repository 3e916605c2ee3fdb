"""Tests of train_imitation.py: demo collection, flow-matching SFT (Eq. 1) and the checkpoint PPOFlow starts from.

    pytest tests/test_imitation.py -q
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ppoflow_pi0 as P  # noqa: E402
import train_imitation as TI  # noqa: E402
from scene_env import EnvConfig  # noqa: E402
from test_ppoflow import FakeVecEnv, fake_obs, fast_args, tiny_policy  # noqa: E402


class ExpertFakeEnv(FakeVecEnv):
    """FakeVecEnv with a scripted expert: pushes +x (solves in one decision) except env 1, which fails."""

    def expert_actions(self):
        a = torch.zeros(self.num_envs, self.chunk, 7)
        a[:, :, 0] = 0.002
        a[1, :, 0] = -0.002
        a[:, :, 6] = torch.tensor([1.0, -1.0, -1.0, 1.0])[: self.chunk]
        return a


def test_collect_demos_keeps_only_successful_episodes():
    pol = tiny_policy()
    envs = ExpertFakeEnv(["x"], 3, EnvConfig(max_decisions=3))
    demos, raw = TI.collect_demos(envs, pol, episodes=6, max_decisions=20, success_only=True, seed=0)
    M = len(demos["action"])
    assert sum(len(e["rgb"]) for e in raw) == M and all(e["task"] and e["rgb"].shape[1:] == (32, 32, 3) for e in raw)
    assert M >= 4 and demos["rgb"].shape == (M, 3, 64, 64) and demos["action"].shape == (M, 4, 7)
    assert (demos["action"][:, :, 0] > 0).all()  # env 1's failing episodes were dropped
    assert 0 < float(demos["expert_success_rate"]) < 1
    everything, _ = TI.collect_demos(envs, pol, episodes=7, max_decisions=20, success_only=False, seed=0)
    assert (everything["action"][:, :, 0] < 0).any()


def test_flow_matching_sft_fits_demo_actions():
    torch.manual_seed(0)
    pol = tiny_policy(lora_rank=0, num_steps=4)
    inp = {k: v.repeat(4, *[1] * (v.dim() - 1)) for k, v in pol.obs_to_inputs(fake_obs(3)).items()}
    target = (torch.rand(3, 4, 7) * 2 - 1).repeat(4, 1, 1)  # three observations, three chunks, 4 noise draws each

    def evaluate():  # Eq. 1 loss at fixed (tau, eps) draws, and the deterministic chain's error
        with torch.no_grad():
            torch.manual_seed(1)
            fm = float(pol.flow_matching_loss(inp, target))
            chain, _, _ = pol.chain(pol.encode(inp), deterministic=True)
        return fm, float((chain[:, -1] - target).abs().mean())

    fm0, err0 = evaluate()
    opt = torch.optim.Adam([p for p in pol.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(40):
        loss = pol.flow_matching_loss(inp, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fm1, err1 = evaluate()
    assert fm1 < 0.85 * fm0 and err1 < 0.9 * err0, (fm0, fm1, err0, err1)  # measured: -29%, -18%


@pytest.mark.timeout(300)
def test_cli_smoke_then_ppoflow_starts_from_it(tmp_path):
    out = tmp_path / "il"
    cmd = [sys.executable, str(REPO / "train_imitation.py"), "--scene-ids", "simpler:PutCarrotOnPlateInScene-v1",
           "--preset", "tiny", "--out", str(out), "--num-envs", "1", "--env-workers", "0", "--episodes", "1",
           "--steps", "4", "--batch-size", "4", "--log-every", "2", "--env.sim-backend", "physx_cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=280, env={**os.environ, "LP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ck = torch.load(out / "ckpt_final.pt", map_location="cpu", weights_only=True)
    assert ck["kind"] == "pi0_policy" and ck["iteration"] == 4 and ck["model_config"]["preset"] == "tiny"
    bridge = P.Normalizer.from_stats_file(P.DEFAULT_STATS)
    assert ck["normalizer"]["state_lo"] != bridge.state_lo  # statistics computed from the demos
    assert (out / "args.json").exists() and (out / "demos.pt").exists() and (out / "metrics.jsonl").exists()
    # the README flow: ppoflow_pi0.py --init <imitation checkpoint> (here on the fake env, one iteration)
    run = P.main(fast_args(tmp_path / "ppo", init=str(out / "ckpt_final.pt"), num_iterations=1, eval_every=0),
                 env_fn=FakeVecEnv)
    ppo = torch.load(run / "ckpt_final.pt", map_location="cpu", weights_only=True)
    assert ppo["normalizer"] == ck["normalizer"] and ppo["model_config"]["lora_rank"] == 4


def test_demos_round_trip_through_the_lerobot_dataset_layout(tmp_path):
    """Checked against LeRobot's published v2.1 layout (meta/info.json, tasks/episodes jsonl, chunked parquet with
    LeRobot's column names), not by `lerobot` itself: lerobot pins its own torch / datasets versions and cannot share
    this venv within CI's budget."""
    import pyarrow.parquet as pq

    import lerobot_format as lf

    pol = tiny_policy()
    envs = ExpertFakeEnv(["x"], 3, EnvConfig(max_decisions=3))
    demos, raw = TI.collect_demos(envs, pol, episodes=6, max_decisions=20, success_only=True, seed=0)
    root = lf.write_dataset(tmp_path / "ds", raw, fps=1.25)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_episodes"] == len(raw) and info["fps"] == 1.25
    assert info["total_frames"] == len(demos["action"]) and info["features"]["action"]["shape"] == [28]
    t = pq.read_table(root / "data/chunk-000/episode_000000.parquet")
    assert {"observation.images.primary", "observation.state", "action", "timestamp", "frame_index", "episode_index",
            "index", "task_index"} <= set(t.column_names)
    tasks = [json.loads(x) for x in (root / "meta/tasks.jsonl").read_text().splitlines()]
    assert {x["task"] for x in tasks} == {e["task"] for e in raw}
    back = lf.read_dataset(root)
    for a, b in zip(raw, back):
        assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["state"], b["state"])
        assert np.array_equal(a["action"], b["action"]) and a["task"] == b["task"]
    again = TI.demos_from_dataset(str(root), pol)  # what --dataset trains on equals the collected demos
    for k in ("rgb", "state", "ids", "mask", "action"):
        assert torch.equal(again[k], demos[k]), k
    with pytest.raises(FileNotFoundError, match="LeRobotDataset"):
        lf.read_dataset(tmp_path)


@pytest.mark.parametrize("stats,expect", [("auto", "init"), ("file", "bridge"), ("demos", "demos")])
def test_imitation_from_init_keeps_its_statistics_unless_told(tmp_path, stats, expect):
    start = tiny_policy()
    start.normalizer = P.Normalizer(kind="bound", state_lo=[-0.5] * 7, state_hi=[0.5] * 7, action_lo=[-0.02] * 6,
                                    action_hi=[0.02] * 6)
    P.torch_save_atomic(P.policy_checkpoint(start, iteration=0), tmp_path / "start.pt")
    args = TI.Args(out=str(tmp_path / "il"), init=str(tmp_path / "start.pt"), stats=stats, episodes=2, steps=1,
                   scene_ids=["simpler:PutCarrotOnPlateInScene-v1"],
                   batch_size=2, num_envs=3, save_every=1, env=EnvConfig(max_decisions=3), device="cpu")
    TI.main(args, env_fn=lambda scenes, n, cfg, seed, workers: ExpertFakeEnv(["x"], n, cfg))
    got = torch.load(tmp_path / "il/ckpt_final.pt", weights_only=True)["normalizer"]
    ref = {"init": start.normalizer, "bridge": P.Normalizer.from_stats_file(P.DEFAULT_STATS)}.get(expect)
    assert (got == dataclasses.asdict(ref)) if ref else got["state_lo"] != [-0.5] * 7
    with pytest.raises(SystemExit, match="--stats init needs --init"):
        TI.main(TI.Args(out=str(tmp_path / "x"), stats="init"))


@pytest.mark.timeout(400)
def test_cli_records_replayable_expert_trajectories_from_its_env_workers(tmp_path):
    """--record-trajectories on the real env (one forkserver worker): ManiSkill RecordEpisode files whose successful
    episodes are the kept demos, turned into a dataset at another image size without the expert."""
    import lerobot_format as lf
    from test_scene_env import make_scene, write_manifest

    scenes, assets = tmp_path / "scenes", tmp_path / "assets"
    write_manifest(make_scene(scenes, assets, "demo_block"), assets,
                   {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07), "green_can": (0.38, 0.1)})
    out = tmp_path / "il"
    r = subprocess.run([sys.executable, "train_imitation.py", "--scenes-dir", str(scenes), "--out", str(out),
                        "--num-envs", "1", "--episodes", "2", "--steps", "2", "--env.image-size", "32",
                        "--record-trajectories", "--device", "cpu"],
                       cwd=REPO, capture_output=True, text=True, timeout=380,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (h5,) = sorted((out / "trajectories").glob("*.h5"))
    assert h5.name == "trajectory_env0.h5"  # worker i writes trajectory_env<seed + i>
    meta = json.loads(h5.with_suffix(".json").read_text())
    assert meta["source_type"].startswith("scripted expert") and meta["env_info"]["env_id"] == "GenScene-v1"
    demos = torch.load(out / "demos.pt", weights_only=True)
    eps = lf.episodes_from_trajectories([h5], 24, chunk=4)
    assert len(eps) == sum(e["success"] for e in meta["episodes"]) == 2  # the unfinished last episode is dropped
    assert sum(len(e["action"]) for e in eps) == len(demos["action"])  # the same decisions as the demos
    assert np.allclose(np.concatenate([e["action"] for e in eps]), demos["action"].numpy(), atol=1e-6)
    assert eps[0]["rgb"].shape[1:] == (24, 24, 3)
