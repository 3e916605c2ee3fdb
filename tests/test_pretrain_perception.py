"""Tests of pretrain_perception.py: frames from fresh resets labelled with the object state, the vision tower and
probe trained on them, a normal pixel checkpoint out, frames reused by a re-run, and bad inputs refused.

    pytest tests/test_pretrain_perception.py -q
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
import ppoflow_pi0 as pp  # noqa: E402
import pretrain_perception as perc  # noqa: E402
import scene_env  # noqa: E402
from test_distill import LAYOUT, tiny_ckpt  # noqa: E402
from test_scene_env import make_scene, write_manifest  # noqa: E402


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("perception")
    write_manifest(make_scene(root / "scenes", root / "assets", "s0", distractor=False, relation="ON",
                              task="put the red block on the blue plate"), root / "assets", LAYOUT)
    return root


def _args(root: Path, out: Path, **kw) -> perc.Args:
    base = dict(scenes_dir=str(root / "scenes"), out=str(out), preset="tiny", device="cpu", num_envs=1, env_workers=0,
                frames=6, val_frames=2, steps=3, batch_size=4, log_every=1, warmup_steps=1,
                env=scene_env.EnvConfig(image_size=64))
    return perc.Args(**{**base, **kw})


@pytest.mark.timeout(300)
def test_frames_from_fresh_resets_train_the_vision_path_into_a_pixel_checkpoint(scenes, tmp_path, capsys):
    out = tmp_path / "p"
    perc.main(_args(scenes, out))
    data = torch.load(out / "frames.pt", weights_only=True)
    assert data["rgb"].shape == (6, 3, 64, 64) and data["val_rgb"].shape == (2, 3, 64, 64)
    obj = torch.cat([data["object_state"], data["val_object_state"]])
    assert obj.shape == (8, scene_env.OBJECT_STATE_DIM)
    assert len({tuple(x.round(decimals=4).tolist()) for x in obj[:, :2]}) == 8  # a new target position at every reset
    # a normal pixel checkpoint: the vision path moved, the action expert is the init's
    torch.manual_seed(0)
    pp.seed_everything(0)
    init = perc.build_policy(_args(scenes, out), "cpu").state_dict()
    policy = pp.load_policy(out / "ckpt_final.pt")
    assert policy.config.obs_mode == "rgb" and policy.config.state_dim == scene_env.PROPRIO_DIM
    sd = policy.state_dict()
    vision = [k for k in sd if "vision" in k or "multi_modal_projector" in k]
    assert vision and any(not torch.equal(sd[k], init[k]) for k in vision)
    assert all(torch.equal(sd[k], init[k]) for k in sd if k.startswith(("pi0.model.dit", "pi0.action_")))
    ck = torch.load(out / "ckpt_final.pt", weights_only=True)
    p = ck["perception"]
    assert p["frames"] == 6 and p["val_frames"] == 2
    assert p["probe"]["linear.weight"].shape[0] == scene_env.OBJECT_STATE_DIM
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val/target_xyz_mae_cm"] >= 0 and summary["val/target_xyz_mae_cm_predict_mean"] > 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # a re-run with the same frame flags reuses the frames (no env is built); another --frames collects again
    capsys.readouterr()
    perc.main(_args(scenes, out, steps=2), env_fn=lambda *a, **k: pytest.fail("an env was built"))
    assert "6 frames reused" in capsys.readouterr().out
    # frames collected before the proxy's feature-noise fields existed (which a pixel env refuses) stay reusable
    data = torch.load(out / "frames.pt", weights_only=True)
    assert not set(perc.FRAME_BLIND_ENV_FIELDS) & set(data["flags"]["env"])
    assert set(perc.FRAME_BLIND_ENV_FIELDS) <= set(scene_env.EnvConfig.__dataclass_fields__)
    perc.main(_args(scenes, out, frames=3, steps=1))
    assert len(torch.load(out / "frames.pt", weights_only=True)["rgb"]) == 3


def test_error_measure_is_in_cm_of_positions():
    mean, std = torch.zeros(14), torch.full((14,), 0.1)
    y = torch.zeros(4, 14)
    pred = y.clone()
    pred[:, 0] = 0.5  # 0.5 std = 5 cm on the target's x, averaged over its 3 coordinates
    e = perc.localisation_error_cm(pred, y, mean, std)
    assert e["target_xyz_mae_cm"] == pytest.approx(5 / 3) and e["destination_xyz_mae_cm"] == 0.0
    assert e["target_xyz_mae_cm_predict_mean"] == 0.0


def test_stats_from_a_teacher_and_bad_inputs(scenes, tmp_path):
    env = dataclasses.asdict(scene_env.EnvConfig(obs_mode="state"))
    teacher = tiny_ckpt(tmp_path / "t.pt", "state", {"env": env})
    t = pp.load_policy(teacher)
    t.normalizer.action_lo = [x - 0.5 for x in t.normalizer.action_lo]  # statistics of its own, not the Bridge file's
    pp.torch_save_atomic(pp.policy_checkpoint(t, iteration=0, args={"env": env}), teacher)
    pol = perc.build_policy(_args(scenes, tmp_path / "o", stats_from=str(teacher)), "cpu")
    assert pol.normalizer.action_lo == t.normalizer.action_lo != pp.Normalizer.from_stats_file(pp.DEFAULT_STATS).action_lo
    assert len(pol.normalizer.state_lo) == scene_env.PROPRIO_DIM
    for kw, match in ((dict(frames=0), "--frames 0"), (dict(env=scene_env.EnvConfig(obs_mode="state")), "the camera"),
                      (dict(init=str(teacher)), "is an object-state policy")):
        with pytest.raises(perc.PerceptionError, match=match):
            perc.main(_args(scenes, tmp_path / "bad", **kw), env_fn=lambda *a, **k: pytest.fail("an env was built"))
    assert not (tmp_path / "bad").exists()


def test_cli_bad_input_is_one_line(scenes, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "pretrain_perception.py"), "--scenes-dir", str(scenes / "scenes"),
                        "--out", str(tmp_path / "o"), "--steps", "0"], capture_output=True, text=True, cwd=REPO,
                       timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.startswith("pretrain_perception.py: --steps 0")


class _Actor:
    """A rollout policy that records what it was given and holds still."""

    def __init__(self, obs_mode: str):
        self.config, self.seen = type("C", (), {"obs_mode": obs_mode})(), []

    def act(self, obs, deterministic=False):
        assert deterministic
        self.seen.append(obs)
        return torch.zeros(len(obs["instruction"]), 4, 7)


class _Envs:
    """Two envs whose second one has its bowl flung away at the second decision."""
    num_envs = 2

    def __init__(self):
        self.t = 0

    def obs(self):
        obj = torch.full((2, scene_env.OBJECT_STATE_DIM), 0.05)
        obj[:, 0] = 0.3 + 0.01 * self.t
        if self.t == 1:
            obj[1, 8:11] = torch.tensor([3.45, -0.70, -3.19])
        return {"rgb": torch.full((2, 64, 64, 3), self.t, dtype=torch.uint8), "state": torch.zeros(2, 7),
                "object_state": obj, "instruction": ["put a", "put b"]}

    def reset(self, seed=None):
        self.t = 0
        return self.obs(), {"scene_id": ["s0", "s1"]}

    def step(self, action):
        assert action.shape == (2, 4, 7)
        self.t += 1
        return self.obs(), None, None, None, {"scene_id": ["s0", "s1"]}


def test_rollout_frames_follow_the_policy_and_skip_objects_off_the_workspace(scenes, tmp_path):
    policy = perc.build_policy(_args(scenes, tmp_path / "o"), "cpu")
    state_actor = _Actor("state")
    data = perc.collect_rollout_frames(_Envs(), policy, state_actor, 5, seed=0)
    # decisions 0, 1 (env 1's frame skipped: its bowl is 3 m away), 2: five frames in step order
    assert data["scene_id"] == ["s0", "s1", "s0", "s0", "s1"]
    assert data["object_state"][:, 0].tolist() == pytest.approx([0.30, 0.30, 0.31, 0.32, 0.32])
    assert data["rgb"].shape == (5, 3, 64, 64) and data["rgb"][2].float().mean() == 1  # decision 1's image
    # an object-state actor reads [proprio, simulator features]; a pixel actor gets the camera observation itself
    assert state_actor.seen[0]["state"].shape == (2, scene_env.PROPRIO_DIM + scene_env.OBJECT_STATE_DIM)
    pixel_actor = _Actor("rgb")
    perc.collect_rollout_frames(_Envs(), policy, pixel_actor, 2, seed=0)
    assert "rgb" in pixel_actor.seen[0] and pixel_actor.seen[0]["state"].shape == (2, scene_env.PROPRIO_DIM)


@pytest.mark.timeout(300)
def test_rollout_frames_of_a_state_policy_in_the_real_env(scenes, tmp_path, capsys):
    env = dataclasses.asdict(scene_env.EnvConfig(obs_mode="state"))
    teacher = tiny_ckpt(tmp_path / "t.pt", "state", {"env": env})
    out = tmp_path / "p"
    perc.main(_args(scenes, out, rollout_policy=str(teacher), rollout_frames=4))
    data = torch.load(out / "frames.pt", weights_only=True)
    assert len(data["rgb"]) == 6 + 4 and len(data["val_rollout_rgb"]) == 1
    assert scene_env.objects_in_workspace(data["object_state"][6:]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollout_frames"] == 4 and summary["val_rollout/target_xyz_mae_cm_predict_mean"] >= 0
    assert "along --rollout-policy's episodes: target" in capsys.readouterr().out
    # the frames belong to that policy: the same file is reused, another policy's frames are collected again
    perc.main(_args(scenes, out, rollout_policy=str(teacher), rollout_frames=4, steps=1),
              env_fn=lambda *a, **k: pytest.fail("an env was built"))
    other = tiny_ckpt(tmp_path / "t2.pt", "state", {"env": env}, seed=1)

    class Built(Exception):
        pass

    def env_fn(*a, **k):
        raise Built
    with pytest.raises(Built):
        perc.main(_args(scenes, out, rollout_policy=str(other), rollout_frames=4, steps=1), env_fn=env_fn)
    for kw, match in ((dict(rollout_frames=3), "go together"), (dict(rollout_policy=str(teacher)), "go together"),
                      (dict(rollout_frames=-1, rollout_policy=str(teacher)), "--rollout-frames -1"),
                      (dict(rollout_frames=2, rollout_policy=str(teacher), env=scene_env.EnvConfig(chunk=2)),
                       "predicts chunks of 4")):
        with pytest.raises(perc.PerceptionError, match=match):
            perc.main(_args(scenes, tmp_path / "bad", **kw), env_fn=lambda *a, **k: pytest.fail("an env was built"))
