"""The object-state proxy (issue 27): its observation, that it renders nothing, the shaped reward's stages, the
minibatch target-KL stop, the recipe driver's statistics and a tiny end-to-end run of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "experiments")]
import ppoflow_pi0 as pp  # noqa: E402
import scene_env  # noqa: E402
import state_proxy as sp  # noqa: E402
from test_ppoflow import FakeVecEnv, fast_args  # noqa: E402
from test_scene_env import _teleport, make_scene, write_manifest  # noqa: E402


@pytest.fixture(scope="module")
def state_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    sd = make_scene(root / "scenes", root / "assets", "tiny_state", distractor=False)
    man = write_manifest(sd, root / "assets", {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07)})
    cfg = scene_env.EnvConfig(image_size=64, max_decisions=25, obs_mode="state", reward="shaped")
    venv = scene_env.make_vec_env([man], 1, cfg, seed=0, workers=0)
    yield venv, man
    venv.close()


# ---------------------------------------------------------------------------------------------
# The env side
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_state_mode_observes_the_objects_and_renders_no_camera(state_env):
    venv, _ = state_env
    env = venv.runner.env

    def no_camera(*a, **k):
        raise AssertionError("a camera was rendered in obs_mode 'state'")

    env.capture_sensor_data = no_camera  # ManiSkill renders sensors through this for image obs modes
    obs, _ = venv.reset(seed=3)
    assert set(obs) == {"state", "instruction"}
    assert obs["state"].shape == (1, scene_env.PROPRIO_DIM + scene_env.OBJECT_STATE_DIM)
    s = obs["state"][0].numpy()
    tgt = (env.agent.robot.pose.inv() * env.target.pose).p[0].numpy()
    assert np.allclose(s[7:9], tgt[:2], atol=5e-3)  # target x/y (bbox centre under the frame origin: a box)
    assert np.allclose(s[12:15], env.target_size[0].numpy(), atol=1e-6)  # target extents
    assert np.allclose(s[18:21], env.dest_size[0].numpy(), atol=1e-6)  # destination extents
    assert abs(np.hypot(s[10], s[11]) - 1) < 1e-5  # yaw as sin, cos
    # a moved target moves the state, by the same amount, and nothing else of the object features
    _teleport(env, "red_block", [0.36, 0.11, 0.0])
    obs, *_ = venv.step(torch.zeros(1, venv.chunk, 7))
    s2 = obs["state"][0].numpy()
    assert np.allclose(s2[7:9], [0.36, 0.11], atol=0.01), s2[7:9]
    assert np.allclose(s2[15:21], s[15:21], atol=2e-3)  # the destination did not move


@pytest.mark.timeout(300)
def test_detector_noise_is_gaussian_on_the_positions_alone_seeded_and_leaves_the_exact_features(state_env):
    """EnvConfig.object_state_noise_m (issue 32, design v11): i.i.d. Gaussian noise on the target's and the
    destination's xyz of the state, per decision, reproducible from the reset seed; obs["object_state"] exact."""
    _, man = state_env
    sd = (0.03, 0.01)
    cfg = scene_env.EnvConfig(image_size=64, max_decisions=25, obs_mode="state", object_state_noise_m=sd,
                              with_object_state=True)
    venv = scene_env.make_vec_env([man], 1, cfg, seed=0, workers=0)
    try:
        def episode(seed: int, decisions: int = 12) -> np.ndarray:  # [decisions + 1, 14]: state minus the exact
            obs, _ = venv.reset(seed=seed)
            rows = [obs["state"][0, scene_env.PROPRIO_DIM:] - obs["object_state"][0]]
            for _ in range(decisions):
                obs, *_ = venv.step(torch.zeros(1, venv.chunk, 7))
                rows.append(obs["state"][0, scene_env.PROPRIO_DIM:] - obs["object_state"][0])
            return torch.stack(rows).numpy()
        a, again, other = episode(5), episode(5), episode(6)
    finally:
        venv.close()
    assert np.array_equal(a, again) and not np.allclose(a, other)  # the reset seed fixes the noise, and only it
    assert np.all(a[:, 3:8] == 0) and np.all(a[:, 11:14] == 0)  # yaw and extents exact
    for cols, s in ((slice(0, 3), sd[0]), (slice(8, 11), sd[1])):
        noise = np.concatenate([a[:, cols], other[:, cols]]).ravel()
        assert 0.6 * s < noise.std() < 1.5 * s and abs(noise.mean()) < 0.5 * s, (cols, noise.std())
    assert len({tuple(r) for r in a[:, 0:3].round(6)}) == len(a)  # a new draw every decision


@pytest.mark.timeout(300)
def test_detector_noise_correlated_between_decisions_is_stationary_and_fresh_at_each_reset(state_env):
    """object_state_noise_corr: an AR(1) noise per episode (a camera errs alike on alike frames): consecutive
    decisions' noise correlated at rho, the same sigma throughout, a new draw at every reset."""
    _, man = state_env
    rho, sd = 0.9, 0.02
    cfg = scene_env.EnvConfig(image_size=64, max_decisions=25, obs_mode="state", object_state_noise_m=(sd, sd),
                              object_state_noise_corr=rho, with_object_state=True)
    venv = scene_env.make_vec_env([man], 1, cfg, seed=0, workers=0)
    try:
        runs = []
        for seed in range(8):
            obs, _ = venv.reset(seed=seed)
            rows = [obs["state"][0, scene_env.PROPRIO_DIM:] - obs["object_state"][0]]
            for _ in range(6):
                obs, *_ = venv.step(torch.zeros(1, venv.chunk, 7))
                rows.append(obs["state"][0, scene_env.PROPRIO_DIM:] - obs["object_state"][0])
            runs.append(torch.stack(rows).numpy()[:, [0, 1, 2, 8, 9, 10]] / sd)  # [7, 6] standard-normal units
    finally:
        venv.close()
    z = np.stack(runs)  # [episodes, decisions, 6]
    lag1 = np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]
    assert lag1 > 0.7, lag1  # i.i.d. noise would give ~0
    steps = (z[:, 1:] - rho * z[:, :-1]) / np.sqrt(1 - rho ** 2)  # the innovations: standard normal if AR(1)
    assert 0.7 < steps.std() < 1.3 and 0.6 < z[:, 0].std() < 1.5  # stationary: the reset's draw has sigma too
    assert abs(np.corrcoef(z[:-1, 0].ravel(), z[1:, 0].ravel())[0, 1]) < 0.5  # episodes' first draws unrelated


def test_detector_noise_flag_refuses_what_it_cannot_mean():
    for bad in [(-0.01, 0.0), (float("nan"), 0.0), (0.01,), 0.01, ("a", "b")]:
        with pytest.raises(ValueError, match="object-state-noise-m"):
            scene_env.EnvConfig(obs_mode="state", object_state_noise_m=bad)
    for corr, noise in [(1.0, (0.01, 0.0)), (-0.1, (0.01, 0.0)), (0.5, (0.0, 0.0))]:
        with pytest.raises(ValueError, match="object-state-noise-corr"):
            scene_env.EnvConfig(obs_mode="state", object_state_noise_m=noise, object_state_noise_corr=corr)
    with pytest.raises(ValueError, match="only obs_mode state observes"):
        scene_env.EnvConfig(obs_mode="rgb", object_state_noise_m=(0.01, 0.0))
    cfg = scene_env.env_config_from_dict({"obs_mode": "state", "object_state_noise_m": [0.02, 0]})  # from JSON
    assert cfg.object_state_noise_m == (0.02, 0.0)


@pytest.mark.timeout(300)
def test_shaped_reward_stages_on_a_scripted_episode(state_env):
    """The expert's episode passes the stages in order: phi (normalized dense) low at the start, >= grasp + lift
    while carrying, 1 at success; the decision rewards telescope to 1 + 1 - phi(s_0)."""
    venv, _ = state_env
    env = venv.runner.env
    venv.reset(seed=5)
    phi0 = float(venv.runner.potential[0])
    rewards, phis, grasped = [], [phi0], []
    for _ in range(25):
        _, rew, term, trunc, _ = venv.step(venv.expert_actions())
        rewards.append(float(rew[0]))
        if term[0] or trunc[0]:
            break
        phis.append(float(venv.runner.potential[0]))
        grasped.append(bool(env.agent.is_grasping(env.target)[0]))
    assert term[0], "the scripted expert failed the test scene"
    assert phi0 < 0.3 and max(phis) >= 0.55 and any(grasped)
    assert sum(rewards) == pytest.approx(2.0 - phi0, abs=1e-4)  # potential-based: success + phi(end) - phi(start)
    info = env.get_info()
    dense = env.compute_dense_reward(None, None, info)
    assert torch.allclose(env.compute_normalized_dense_reward(None, None, info), dense / 5)


def test_shaped_reward_needs_generated_scenes():
    runner = scene_env.ChunkRunner.__new__(scene_env.ChunkRunner)
    with pytest.raises(ValueError, match="--env.reward sparse for SimplerEnv"):
        scene_env.ChunkRunner.__init__(runner, [("simpler", "PutCarrotOnPlateInScene-v1")], 1,
                                       scene_env.EnvConfig(reward="shaped"), "physx_cpu")


# ---------------------------------------------------------------------------------------------
# The policy side
# ---------------------------------------------------------------------------------------------


def _state_policy(**kw) -> pp.PI0Policy:
    torch.manual_seed(0)
    env = scene_env.EnvConfig(obs_mode="state")
    cfg = pp.preset_config("tiny", 4, value_state=True, **pp.obs_overrides(env), **kw)
    return pp.PI0Policy(cfg, pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), {"kind": "bytes"})


def test_state_policy_has_no_image_tokens_and_reads_the_object_features():
    policy = _state_policy()
    assert policy.input_keys == ("state", "ids", "mask")
    obs = {"state": torch.zeros(2, 21), "instruction": ["put the red block on the plate"] * 2}
    obs["state"][1, 7:9] = torch.tensor([0.1, -0.1])  # only the target's position differs
    inp = policy.obs_to_inputs(obs)
    assert "rgb" not in inp
    prefix = policy.encode(inp)
    assert prefix.valid.shape[1] == policy.config.max_text_tokens  # the instruction alone
    torch.manual_seed(1)
    chain, logp, _ = policy.chain(prefix, deterministic=True)
    assert not torch.allclose(chain[0, -1], chain[1, -1])  # the expert sees the object state
    assert not torch.allclose(policy.value(prefix)[0], policy.value(prefix)[1])  # so does the value head
    with pytest.raises(ValueError, match="--env.obs-mode state"):
        policy.obs_to_inputs({"state": torch.zeros(1, 7), "instruction": ["x"]})  # an rgb env's 7-D state


def test_obs_mode_mismatch_is_refused():
    policy = _state_policy()
    with pytest.raises(ValueError, match="pass --env.obs-mode state"):
        pp.check_obs_mode(policy.config, scene_env.EnvConfig(), "--init x.pt")


def test_minibatch_target_kl_stops_inside_the_first_epoch(tmp_path):
    """--target-kl-scope minibatch: a gradient step whose minibatch approx-KL passes the target is not taken, even in
    the first epoch; with the epoch scope the same update runs whole epochs."""
    from test_ppoflow import tiny_policy

    def update(scope):
        torch.manual_seed(0)
        policy = tiny_policy()
        args = fast_args(tmp_path, learning_rate=5e-3, update_epochs=3, minibatch_size=4, target_kl=1e-6,
                         target_kl_scope=scope)
        env = FakeVecEnv(["a"], 4)
        batch, _ = pp.rollout(policy, env, 4, args.gamma, 0, "cpu")
        adv, ret = pp.compute_gae(batch["reward"], batch["value"], batch["done"], batch["last_value"], 0.99, 0.95)
        opt = torch.optim.AdamW(policy.parameters(), lr=args.learning_rate)
        return pp.ppo_update(policy, opt, batch, adv, ret, args, 1, "cpu")

    mb, ep = update("minibatch"), update("epoch")
    assert mb["kl_stops"] == 1.0 and mb["grad_steps"] < 4  # stopped within the first epoch (4 minibatches)
    assert ep["epochs_run"] == 1.0 and ep["grad_steps"] == 4  # the epoch scope finishes the epoch first


# ---------------------------------------------------------------------------------------------
# The recipe driver (experiments/state_proxy.py)
# ---------------------------------------------------------------------------------------------


def test_seed_interval_and_early_stop_rule():
    m, lo, hi = sp.t_interval([0.2, 0.3, 0.4])
    assert m == pytest.approx(0.3) and lo == pytest.approx(0.3 - 4.303 * 0.1 / 3 ** 0.5, abs=1e-4)
    assert hi == pytest.approx(0.3 + 4.303 * 0.1 / 3 ** 0.5, abs=1e-4)
    assert all(x != x for x in sp.t_interval([0.5])[1:])  # one seed: no interval, not a made-up one
    assert sp.choose_start([(500, 0.05), (1000, 0.25), (1500, 0.45)], (0.2, 0.5)) == 1000  # earliest in band
    assert sp.choose_start([(500, 0.05), (1000, 0.6), (1500, 0.9)], (0.2, 0.5)) == 1000  # nearest the band
    assert sp.choose_start([(500, 0.0), (1000, 0.1)], (0.2, 0.5)) == 1000
    assert sp.collapse_check([0.1, 0.1, 0.2, 0.2, 0.3, 0.5, 0.5, 0.4, 0.4, 0.6, 0.6]) == pytest.approx((0.18, 0.5))


def test_recipe_flags_parse_with_the_trainer_cli(tmp_path):
    import shlex

    import tyro

    a = tyro.cli(pp.Args, args=["--scenes-dir", str(tmp_path), *shlex.split(sp.RECIPE)])
    assert a.env.obs_mode == "state" and a.target_kl == 0.02 and a.demo_bc_coef == 0.5


def test_driver_runs_the_recipe_on_pixels_with_obs_mode_rgb(tmp_path, capsys):
    """Issue 27 item 5: --obs-mode rgb gives imitation and every PPOFlow run the camera (after the recipe's own
    `--env.obs-mode state`, so tyro's last value wins), --env-extra reaches both, and its reports are not labelled
    as the proxy."""
    import shlex

    import tyro

    sp.main(sp.Args(scenes_dir=str(tmp_path), train_scenes=["a"], out_dir=str(tmp_path / "o"), seeds=[1, 2],
                    obs_mode="rgb", env_extra="--env.no-dr-camera --env.no-dr-lighting", dry_run=True))
    cmds = [shlex.split(x.split(": ", 1)[1]) for x in capsys.readouterr().out.splitlines() if x.startswith("[run ]")]
    il, ppo = [c for c in cmds if "train_imitation.py" in c[1]], [c for c in cmds if "ppoflow_pi0.py" in c[1]]
    assert len(il) == 1 and len(ppo) == 2
    for c in il + ppo:  # the last --env.obs-mode is the one tyro keeps
        assert c[max(i for i, x in enumerate(c) if x == "--env.obs-mode") + 1] == "rgb"
    ppo_env = tyro.cli(pp.Args, args=ppo[0][2:]).env
    assert ppo_env.obs_mode == "rgb" and not ppo_env.dr_camera and not ppo_env.dr_lighting and ppo_env.dr_robot
    assert "--env.no-dr-camera" in il[0] and "--env.no-dr-lighting" in il[0]

    # --perception-frames: step 0 pretrains the tiny vision tower in the same env; imitation starts from it
    capsys.readouterr()
    sp.main(sp.Args(scenes_dir=str(tmp_path), train_scenes=["a"], out_dir=str(tmp_path / "p"), seeds=[1],
                    obs_mode="rgb", env_extra="--env.no-dr-camera", perception_frames=50, perception_steps=9,
                    dry_run=True))
    cmds = [shlex.split(x.split(": ", 1)[1]) for x in capsys.readouterr().out.splitlines() if x.startswith("[run ]")]
    import pretrain_perception as perc
    import train_imitation as ti

    assert Path(cmds[0][1]).name == "pretrain_perception.py" and Path(cmds[1][1]).name == "train_imitation.py"
    pa, ia = tyro.cli(perc.Args, args=cmds[0][2:]), tyro.cli(ti.Args, args=cmds[1][2:])
    assert pa.frames == 50 and pa.val_frames == 5 and pa.steps == 9 and pa.preset == "tiny" and not pa.env.dr_camera
    assert ia.init == str(tmp_path / "p/runs/perception/ckpt_final.pt") and ia.stats == "demos"
    assert not pa.estimate_object_state and pa.image_in_prefix
    # --estimate-object-state: the perception stage builds the policy whose state token carries the estimate
    capsys.readouterr()
    sp.main(sp.Args(scenes_dir=str(tmp_path), train_scenes=["a"], out_dir=str(tmp_path / "e"), seeds=[1],
                    obs_mode="rgb", perception_frames=50, estimate_object_state=True, dry_run=True))
    cmds = [shlex.split(x.split(": ", 1)[1]) for x in capsys.readouterr().out.splitlines() if x.startswith("[run ]")]
    pa = tyro.cli(perc.Args, args=cmds[0][2:])
    assert pa.estimate_object_state and not pa.image_in_prefix
    with pytest.raises(SystemExit, match="--estimate-object-state needs the perception stage"):
        sp.main(sp.Args(scenes_dir=str(tmp_path), train_scenes=["a"], out_dir=str(tmp_path / "q"), obs_mode="rgb",
                        estimate_object_state=True))
    with pytest.raises(SystemExit, match="--perception-frames 50 pretrains a camera policy"):
        sp.main(sp.Args(scenes_dir=str(tmp_path), train_scenes=["a"], out_dir=str(tmp_path / "q"), perception_frames=50))
    assert sp.label("rgb") == sp.PIXEL_LABEL and "proxy" not in sp.PIXEL_LABEL and sp.label("state") == sp.LABEL


@pytest.mark.timeout(900)
def test_state_proxy_driver_end_to_end_at_a_tiny_budget(tmp_path):
    root = tmp_path
    ids = []
    for k, (task, rel) in enumerate((("put the red block on the blue plate", "ON"), ("put the red block in the blue bowl", "IN"))):
        sd = make_scene(root / "scenes", root / "assets", f"s{k}", distractor=False, relation=rel, task=task)
        write_manifest(sd, root / "assets", {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07)})
        ids.append(f"s{k}")
    cmd = [sys.executable, str(REPO / "experiments/state_proxy.py"), "--scenes-dir", str(root / "scenes"),
           "--train-scenes", ids[0], "--heldout-scenes", ids[1], "--out-dir", str(root / "out"), "--seeds", "1", "2",
           "--il-episodes", "2", "--il-steps", "4", "--il-save-every", "2", "--il-select-episodes", "1",
           "--eval-episodes-per-scene", "2", "--env-workers", "2", "--max-decisions", "20",
           "--ppo-extra=--num-iterations 2 --num-envs 2 --num-steps 4 --minibatch-size 4 --critic-warmup-iterations 1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (root / "out/report.md").read_text()
    assert sp.LABEL in report and "**Verdict" in report and "95% t-interval over 2 seeds" in report
    rep = json.loads((root / "out/report.json").read_text())
    assert [r["seed"] for r in rep["seeds"]] == [1, 2] and rep["label"] == scene_env.OBJECT_STATE_LABEL
    assert rep["start_train"][1] == 2 and rep["start_heldout"][1] == 2  # 2 episodes each, train and held-out apart
    assert (root / "out/learning_curves.png").stat().st_size > 0
    for s in (1, 2):
        args = json.loads((root / f"out/runs/ppo_s{s}/args.json").read_text())["args"]
        assert args["env"]["obs_mode"] == "state" and args["learning_rate"] == 5e-6 and args["num_iterations"] == 2
        assert args["env"]["max_decisions"] == 20


@pytest.mark.timeout(1200)
def test_main_job_end_to_end_at_a_tiny_budget(tmp_path):
    """Issue 29: scripts/main_job.sh runs every step at a tiny budget and its report leads with a verdict line, then
    the proxy's table and curve, the deployment rehearsal of a pixel policy and the wall time of every step."""
    import os

    tasks = tmp_path / "tasks.txt"
    tasks.write_text("put the green block on the plate\nput the red cube in the bowl\n")
    env = {**os.environ, "OUT": str(tmp_path / "main"), "TASKS": str(tasks), "SEED": "3", "NUM_TRAIN": "1",
           "NUM_HELDOUT": "1", "IL_EPISODES": "2", "IL_STEPS": "4", "IL_SELECT_EPISODES": "1", "EVAL_EPISODES": "2",
           "HELDOUT_EPISODES": "1", "PIXEL_EPISODES": "1",
           "PIXEL_STEPS": "2", "WORKERS": "2",
           "PPO_EXTRA": "--num-iterations 2 --num-envs 2 --num-steps 4 --minibatch-size 4 --critic-warmup-iterations 1"}
    r = subprocess.run(["bash", str(REPO / "scripts/main_job.sh")], capture_output=True, text=True, timeout=1150,
                       cwd=REPO, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = (tmp_path / "main/report.md").read_text()
    lines = report.splitlines()
    assert lines[0] == "# Main job report" and lines[2].startswith("**Verdict (" + sp.LABEL)
    sections = [x for x in lines if x.startswith("## ")]
    # the answer first (verdict, then the proxy's table and curve), the pictures, the rehearsal, the wall times
    assert sections[0].startswith("## 1. The method") and "object-state proxy" in sections[0]
    assert sections[-2:] == ["## 5. A sim deployment trial", "## Wall time of each step"]
    assert report.index("| PPOFlow seed 3 |") < report.index("learning_curves.png") < report.index("## 2. The task list")
    assert " in all)" in lines[4]  # the job's total wall time, stated before any section
    assert "| PPOFlow seed 3 |" in report and "learning_curves.png" in report and "PIXEL policy" in report
    for n in range(1, 6):
        assert f"| {n}/6 " in report  # the wall time of every step before the report's own
    assert "6/6 the report" in (tmp_path / "main/step_wall_s.tsv").read_text()
    rep = json.loads((tmp_path / "main/learning/report.json").read_text())
    assert rep["seeds"][0]["seed"] == 3 and len(rep["verdict_ci95"]) == 2
    assert rep["start_train"][1] == 2 and rep["start_heldout"][1] == 1  # the held-out scene's own episode count
