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
