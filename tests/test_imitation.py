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


def test_a_frame_budget_keeps_exactly_that_many_expert_transitions():
    pol = tiny_policy()
    envs = ExpertFakeEnv(["x"], 3, EnvConfig(max_decisions=3))
    demos, _ = TI.collect_demos(envs, pol, episodes=1000, max_decisions=200, success_only=True, seed=0, max_frames=7)
    assert len(demos["action"]) == 7 and (demos["action"][:, :, 0] > 0).all()  # the last episode cut, failures dropped
    whole, _ = TI.collect_demos(envs, pol, episodes=2, max_decisions=200, success_only=True, seed=0, max_frames=10_000)
    assert len(whole["action"]) < 10_000  # --episodes still caps it


@pytest.mark.parametrize("bad", [["--frames", "0"], ["--frames", "8", "--write-dataset"], ["--frames", "8", "--demos", "d.pt"]])
def test_frame_budget_refuses_what_it_cannot_budget(tmp_path, bad):
    r = subprocess.run([sys.executable, str(REPO / "train_imitation.py"), "--out", str(tmp_path / "o"), *bad],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "--frames" in r.stderr and "fix:" in r.stderr


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


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_lerobot_dataset_frames_read_by_hf_datasets_as_images_and_7d_actions(tmp_path, version):
    """What LeRobot's reader relies on, checked with HF `datasets` itself (LeRobot pins its own torch and cannot share
    this venv; benchmarks/check_ecosystem.sh runs LeRobot 0.3.3 / 0.4.4): one frame per control step, the image
    column typed as an Image by the parquet's `huggingface` metadata, state / action as 7 floats, an integer fps, stats
    of every feature including the image; read back as decision chunks (what --dataset trains on)."""
    import datasets
    from PIL import Image

    import lerobot_format as lf

    g = np.random.default_rng(0)
    eps = [{"rgb": g.integers(0, 256, (T, 24, 24, 3), dtype=np.uint8), "state": g.normal(size=(T, 7)).astype(np.float32),
            "action": g.normal(size=(T, 7)).astype(np.float32), "task": task, "scene_id": "s"}
           for T, task in ((8, "put the red block on the plate"), (12, "open the drawer"), (4, "put the red block on the plate"))]
    root = lf.write_dataset(tmp_path / "ds", eps, fps=5, chunk=4, version=version)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == version and info["fps"] == 5 and isinstance(info["fps"], int)
    assert info["total_frames"] == 24 and info["features"]["action"]["shape"] == [7]
    files = sorted(str(p) for p in (root / "data").rglob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features[lf.IMAGE_KEY], datasets.Image)
    frame = ds[0]
    assert isinstance(frame[lf.IMAGE_KEY], Image.Image) and np.array_equal(np.asarray(frame[lf.IMAGE_KEY]), eps[0]["rgb"][0])
    assert len(frame["action"]) == 7 and all(isinstance(x, float) for x in frame["action"])
    assert np.allclose(frame["action"], eps[0]["action"][0]) and np.allclose(ds[9]["timestamp"], 1 / 5)
    stats = json.loads((root / "meta/stats.json").read_text())
    assert np.asarray(stats[lf.IMAGE_KEY]["mean"]).shape == (3, 1, 1) and 0 <= np.min(stats[lf.IMAGE_KEY]["min"])
    assert {"observation.state", "action", "timestamp", "index"} <= set(stats)
    if version == "v2.1":
        first = json.loads((root / "meta/episodes_stats.jsonl").read_text().splitlines()[0])["stats"]
        assert np.asarray(first[lf.IMAGE_KEY]["std"]).shape == (3, 1, 1)
    back = lf.read_dataset(root)  # decisions: every 4th frame with the 4 actions executed from it
    assert [len(e["action"]) for e in back] == [2, 3, 1] and back[1]["action"].shape == (3, 4, 7)
    assert np.array_equal(back[1]["action"].reshape(-1, 7), eps[1]["action"])
    assert np.array_equal(back[1]["rgb"], eps[1]["rgb"][::4]) and back[2]["task"] == eps[2]["task"]
    demos = TI.demos_from_dataset(str(root), tiny_policy())
    assert demos["action"].shape == (6, 4, 7) and demos["rgb"].shape[0] == 6
    with pytest.raises(FileNotFoundError, match="LeRobotDataset"):
        lf.read_dataset(tmp_path)
    with pytest.raises(ValueError, match="integer"):
        lf.write_dataset(tmp_path / "x", eps, fps=1.25)


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


@pytest.mark.timeout(1100)
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
                        "--write-dataset", "--device", "cpu"],  # implies --record-trajectories
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
    back = lf.read_dataset(out / "dataset")  # --write-dataset: the kept demos as a LeRobotDataset, decision by decision
    assert np.allclose(np.concatenate([e["action"] for e in back]), demos["action"].numpy(), atol=1e-6)
    # ManiSkill's own replay tool (the README's one-liner) replays every recorded episode, each from its own seed,
    # to the recorded final state and success
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ecosystem_replay import compare, replay

    assert all(e["reset_kwargs"].get("seed") == e["episode_seed"] for e in meta["episodes"])
    assert len({e["episode_seed"] for e in meta["episodes"]}) == len(meta["episodes"])
    replayed, r = replay(h5, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-2500:]
    rows = compare(h5, replayed)
    assert len(rows) == len(meta["episodes"]) and all(x["diff"] < 1e-4 for x in rows), rows
    assert all(x["success"] == x["replayed_success"] for x in rows), rows


def test_resume_after_an_interruption_gives_the_uninterrupted_run(tmp_path):
    """--resume: the collected demos are reused (no env is built), training continues after the newest checkpoint
    with its optimizer, schedule, RNG and batch order, and the final weights are the uninterrupted run's."""
    def args(out, **kw):
        return TI.Args(**{**dict(out=str(out), scene_ids=["simpler:PutCarrotOnPlateInScene-v1"], episodes=2, steps=6,
                                 save_every=2, batch_size=2, num_envs=3, log_every=1, learning_rate=1e-3,
                                 env=EnvConfig(max_decisions=3), device="cpu"), **kw})
    env = lambda scenes, n, cfg, seed, workers: ExpertFakeEnv(["x"], n, cfg)  # noqa: E731
    TI.main(args(tmp_path / "full"), env_fn=env)
    part = tmp_path / "part"
    TI.main(args(part), env_fn=env)
    for f in ("ckpt_4.pt", "ckpt_6.pt", "ckpt_final.pt"):  # as if killed during steps 5-6
        (part / f).unlink()
    rows = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    TI.main(args(part, resume=True), env_fn=lambda *a: pytest.fail("an env was built: the demos were collected again"))
    full = torch.load(tmp_path / "full/ckpt_final.pt", weights_only=True)["model"]
    again = torch.load(part / "ckpt_final.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], again[k]) for k in full)
    resumed = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6] and resumed[:2] == rows[:2]
    assert TI.main(args(part, resume=True)) == part  # finished: nothing to do
    (part / "ckpt_final.pt").unlink()  # the drivers pass the run's own demos.pt back: the same run
    TI.main(args(part, resume=True, demos=str(part / "demos.pt")), env_fn=lambda *a: pytest.fail("an env was built"))
    assert all(torch.equal(full[k], v) for k, v in torch.load(part / "ckpt_final.pt", weights_only=True)["model"].items())
    with pytest.raises(SystemExit, match="started with other flags .*--learning-rate 0.001"):
        (part / "ckpt_final.pt").unlink()
        TI.main(args(part, resume=True, learning_rate=1e-4))
    with pytest.raises(SystemExit, match="holds no interrupted run"):
        TI.main(args(tmp_path / "none", resume=True))
