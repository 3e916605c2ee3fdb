"""Tests of the pixel policy whose state token carries the object features estimated from its camera
(PolicyConfig.estimate_object_state, image_in_prefix; issues 27 item 5 and 32, design v5): what it observes, what
its state token holds, how the perception stage trains its estimate, how distill.py --student-from-teacher makes it
the teacher with a camera, and how imitation keeps the estimate's statistics.

    pytest tests/test_estimated_state.py -q
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
import distill  # noqa: E402
import ppoflow_pi0 as pp  # noqa: E402
import pretrain_perception as perc  # noqa: E402
import scene_env  # noqa: E402
from test_distill import run_distill, setup, tiny_ckpt  # noqa: E402,F401  (setup: a module fixture)
from test_pretrain_perception import _args as perception_args, scenes  # noqa: E402,F401  (scenes: a module fixture)

P, O = scene_env.PROPRIO_DIM, scene_env.OBJECT_STATE_DIM
ENV = scene_env.EnvConfig(image_size=64)


def estimating_policy(image_in_prefix: bool = False, seed: int = 0, preset: str = "tiny",
                      vision_preset: str | None = None, estimator: str = "linear") -> pp.PI0Policy:
    torch.manual_seed(seed)
    cfg = pp.preset_config(preset, 4, vision_preset, num_steps=1,
                           **pp.obs_overrides(ENV, True, image_in_prefix, estimator=estimator))
    return pp.PI0Policy(cfg, pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), {"kind": "bytes"})


def obs(n: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g),
            "state": torch.randn(n, P, generator=g) * 0.1, "instruction": ["put the red block on the plate"] * n}


# ---------------------------------------------------------------------------------------------
# The policy: observes camera + instruction + proprio, its state token holds proprio + estimate
# ---------------------------------------------------------------------------------------------


def test_the_state_token_is_the_proprio_and_the_cameras_estimate():
    pol = estimating_policy().eval()
    assert pol.config.state_dim == P + O and pol.observed_state_dim == P and pol.config.pi0["max_state_dim"] == P + O
    o = obs()
    inp = pol.obs_to_inputs(o)
    assert inp["state"].shape == (2, P) and set(pol.input_keys) == {"rgb", "state", "ids", "mask"}
    with torch.no_grad():
        prefix = pol.encode(inp)
        est = pol.object_state_probe.features(pol.image_tokens(inp))
    want = pol.normalizer.state(torch.cat([inp["state"], est], -1))
    assert torch.allclose(prefix.state[:, : P + O].float(), want, atol=1e-6)
    assert prefix.valid.shape[1] == pol.config.max_text_tokens  # image_in_prefix False: the instruction alone
    # another image moves the estimate (and only it); the proprio part is what the env gave
    o2 = {**o, "rgb": obs(seed=1)["rgb"]}
    with torch.no_grad():
        other = pol.encode(pol.obs_to_inputs(o2)).state.float()
    before = prefix.state.float()
    assert torch.equal(other[:, :P], before[:, :P]) and not torch.allclose(other[:, P:], before[:, P:])
    with pytest.raises(ValueError, match="has 21 dims but this policy reads 7"):
        pol.obs_to_inputs({**o, "state": torch.zeros(2, P + O)})  # the simulator's features are not an input


def test_the_probe_is_standardised_and_the_image_can_also_enter_the_prefix():
    pol = estimating_policy(image_in_prefix=True)
    probe = pol.object_state_probe
    probe.set_statistics(torch.arange(O).float(), torch.full((O,), 2.0))
    img = torch.randn(3, 16, 64)
    assert torch.allclose(probe.features(img), probe(img) * 2 + torch.arange(O))
    assert torch.allclose(probe.standardise(probe.features(img)), probe(img), atol=1e-5)
    assert probe.linear.in_features == pp.ObjectStateProbe.input_width(pol.config) == 16 * 64
    with torch.no_grad():
        prefix = pol.encode(pol.obs_to_inputs(obs()))
    assert prefix.valid.shape[1] == 16 + pol.config.max_text_tokens


@pytest.mark.parametrize("over,match", [
    (dict(obs_mode="state", state_dim=P + O, estimate_object_state=True), "needs obs_mode 'rgb'"),
    (dict(image_in_prefix=False), "image_in_prefix=False .* need estimate_object_state"),
    (dict(estimate_detached=True), "estimate_detached and estimator 'keypoints' need estimate_object_state"),
    (dict(estimator="keypoints"), "estimator 'keypoints' need estimate_object_state"),
    (dict(estimator="cnn"), "estimator 'cnn' is not one of"),
    (dict(estimate_object_state=True), "needs state_dim 21"),
])
def test_contradictory_configs_are_refused(over, match):
    with pytest.raises(ValueError, match=match):
        pp.PI0Policy(pp.preset_config("tiny", 4, **over), pp.Normalizer.from_stats_file(pp.DEFAULT_STATS),
                     {"kind": "bytes"})


def test_a_keypoint_estimate_reads_the_image_itself_not_the_vision_tower(monkeypatch):
    """PolicyConfig.estimator "keypoints" (design v12): the state token's estimate is the convolutional detector's on
    the image; with an instruction-only prefix the vision tower never runs, and the policy acts."""
    pol = estimating_policy(estimator="keypoints").eval()
    assert isinstance(pol.object_state_probe, pp.KeypointProbe) and pol.config.estimator == "keypoints"
    o = obs()
    inp = pol.obs_to_inputs(o)
    with torch.no_grad():
        want = pol.normalizer.state(torch.cat([inp["state"], pol.object_state_probe.features(inp["rgb"])], -1))
        monkeypatch.setattr(pol, "image_tokens", lambda *a, **k: pytest.fail("the vision tower ran"))
        prefix = pol.encode(inp)
        assert torch.allclose(prefix.state[:, : P + O].float(), want, atol=1e-6)
        other = pol.encode(pol.obs_to_inputs({**o, "rgb": obs(seed=1)["rgb"]})).state.float()
        assert not torch.allclose(other[:, P:P + O], prefix.state[:, P:P + O].float())  # another image: estimate
        assert pol.act(o, deterministic=True).shape == (2, 4, 7)
    assert torch.equal(pol.probe_input(inp), inp["rgb"])
    linear = estimating_policy()
    assert linear.probe_input(linear.obs_to_inputs(o)).shape == (2, 16, 64)  # the tower's tokens


def test_the_keypoint_detector_learns_where_a_small_object_is():
    """KeypointProbe localises: on 48 px images with a 3 px square at a random place, 300 steps take its position
    error far below predicting the mean (the sub-pixel spatial softmax the design rests on)."""
    g = torch.Generator().manual_seed(0)

    def images(n):
        xy = torch.randint(2, 43, (n, 2), generator=g)
        img = torch.full((n, 3, 48, 48), 40, dtype=torch.uint8)
        for i, (r, c) in enumerate(xy.tolist()):
            img[i, :, r:r + 3, c:c + 3] = 230
        return img, (xy.float() - 22) / 12  # standardised row, col
    torch.manual_seed(0)
    probe = pp.KeypointProbe(width=16, keypoints=8, hidden=64, n_out=2)
    opt = torch.optim.Adam(probe.parameters(), lr=3e-3)
    for _ in range(300):
        x, y = images(32)
        loss = torch.nn.functional.mse_loss(probe(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = images(200)
    with torch.no_grad():
        err = (probe(x) - y).abs().mean() * 12  # pixels
    assert err < 2.0, err  # predicting the mean: ~10 px
    assert (y - y.mean(0)).abs().mean() * 12 > 8


def test_a_detached_estimate_takes_no_gradient_from_the_policys_loss():
    """estimate_detached: Eq. 1 moves the action expert and leaves the probe and the vision tower alone; without it
    the same loss reaches them through the state token."""
    o = obs(4)
    target = torch.rand(4, 4, 7) * 0.1
    for detached in (True, False):
        torch.manual_seed(0)
        cfg = pp.preset_config("tiny", 4, num_steps=1, **pp.obs_overrides(ENV, True, False, detached))
        pol = pp.PI0Policy(cfg, pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), {"kind": "bytes"})
        assert pol.config.estimate_detached == detached
        pol.flow_matching_loss(pol.obs_to_inputs(o), target).backward()
        probe_grad = pol.object_state_probe.linear.weight.grad
        assert (probe_grad is None or not probe_grad.any()) == detached
        assert pol.pi0.action_out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("estimator", ["linear", "keypoints"])
def test_checkpoint_and_export_keep_the_probe(tmp_path, estimator):
    pol = estimating_policy(estimator=estimator)
    pol.object_state_probe.set_statistics(torch.ones(O), torch.full((O,), 3.0))
    pp.torch_save_atomic(pp.policy_checkpoint(pol, iteration=0), tmp_path / "c.pt")
    back = pp.load_policy(tmp_path / "c.pt")
    assert back.config.estimate_object_state and not back.config.image_in_prefix
    assert back.config.estimator == estimator and type(back.object_state_probe) is type(pol.object_state_probe)
    if estimator == "linear":  # a checkpoint written before PolicyConfig.estimator existed loads as the linear probe
        ck = torch.load(tmp_path / "c.pt", weights_only=True)
        del ck["model_config"]["estimator"]
        pp.torch_save_atomic(ck, tmp_path / "old.pt")
        assert pp.load_policy(tmp_path / "old.pt").config.estimator == "linear"
    sd, sd2 = pol.state_dict(), back.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert torch.equal(back.object_state_probe.std, torch.full((O,), 3.0))
    folder = pp.export_pretrained(pol, tmp_path / "hf")
    assert "transformers' PI0 alone does not compute them" in (folder / "README.md").read_text()
    again = pp.load_policy(folder)
    assert all(torch.equal(sd[k], again.state_dict()[k]) for k in sd if k.startswith("object_state_probe."))


def test_ppoflow_from_an_instruction_only_prefix_gives_the_value_head_the_state(tmp_path):
    pp.torch_save_atomic(pp.policy_checkpoint(estimating_policy(), iteration=0), tmp_path / "c.pt")
    args = pp.Args(init=str(tmp_path / "c.pt"), env=ENV, value_state=False)
    pol = pp.build_policy(args)
    assert pol.config.value_state and pol.config.estimate_object_state  # z_t alone is the same in every state


@pytest.mark.timeout(300)
def test_ppoflow_runs_on_an_estimating_policy_and_a_detached_estimate_stays_put(tmp_path):
    from test_ppoflow import FakeVecEnv, fast_args

    cfg = pp.preset_config("tiny", 4, num_steps=1, **pp.obs_overrides(ENV, True, False, True))
    pol = pp.PI0Policy(cfg, pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), {"kind": "bytes"})
    pp.torch_save_atomic(pp.policy_checkpoint(pol, iteration=0), tmp_path / "init.pt")
    demos = {**pol.obs_to_inputs(obs(6)), "action": torch.rand(6, 4, 7) * 0.02}  # train_imitation.py's: 7-D states
    torch.save(demos, tmp_path / "demos.pt")
    out = pp.main(fast_args(tmp_path / "run", init=str(tmp_path / "init.pt"), lora_rank=0, eval_every=0,
                            demo_bc_coef=0.5, demos=str(tmp_path / "demos.pt")), env_fn=FakeVecEnv)  # the recipe's anchor
    before, after = pol.state_dict(), pp.load_policy(out / "ckpt_final.pt").state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("pi0.model.dit.") for k in moved)  # PPOFlow trained the action expert
    assert not any(k.startswith(("object_state_probe.", "pi0.model.vlm.vision_tower.")) for k in moved)


# ---------------------------------------------------------------------------------------------
# Perception pretraining trains the policy's own estimate
# ---------------------------------------------------------------------------------------------


def _perc_args(root: Path, out: Path, **kw) -> perc.Args:
    return perception_args(root, out, **{"estimate_object_state": True, "image_in_prefix": False, **kw})


@pytest.mark.timeout(300)
def test_perception_trains_the_estimate_that_feeds_the_state_token(scenes, tmp_path):
    out = tmp_path / "p"
    pp.seed_everything(0)
    init = perc.build_policy(_perc_args(scenes, out), "cpu").object_state_probe.linear.weight.detach().clone()
    perc.main(_perc_args(scenes, out, expert_frames=3))
    pol = pp.load_policy(out / "ckpt_final.pt")
    assert pol.config.estimate_object_state and not pol.config.image_in_prefix
    data = torch.load(out / "frames.pt", weights_only=True)
    assert len(data["rgb"]) == 6 + 3 and len(data["val_expert_rgb"]) == 1  # resets, then along expert episodes
    # 3 decisions of one expert episode: one layout, the target not yet lifted
    assert len({tuple(x.round(decimals=4).tolist()) for x in data["object_state"][6:, :3]}) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["expert_frames"] == 3 and summary["val_expert/target_xyz_mae_cm_predict_mean"] >= 0
    probe = pol.object_state_probe
    assert torch.allclose(probe.mean, data["object_state"].mean(0))  # its statistics are the frames'
    assert not torch.equal(probe.linear.weight, init)  # trained: it is the probe of the regression
    n = pol.normalizer  # proprio: the Bridge file's; the estimate: p01 / p99 of the frames' features
    assert len(n.state_lo) == P + O
    assert n.state_lo[P:] == pytest.approx(torch.quantile(data["object_state"].double(), 0.01, 0).tolist(), abs=1e-6)
    ck = torch.load(out / "ckpt_final.pt", weights_only=True)
    assert ck["perception"]["probe"]["linear.weight"].shape == (O, probe.linear.in_features)


@pytest.mark.timeout(300)
def test_perception_trains_a_keypoint_estimate_and_leaves_the_vision_tower_alone(scenes, tmp_path):
    """--estimator keypoints (design v12): the detector is the policy's estimator and the regression trains it; the
    vision tower, which an instruction-only prefix never reads, keeps its random weights."""
    out = tmp_path / "p"
    pp.seed_everything(0)
    init = perc.build_policy(_perc_args(scenes, out, estimator="keypoints"), "cpu").state_dict()
    perc.main(_perc_args(scenes, out, estimator="keypoints"))
    pol = pp.load_policy(out / "ckpt_final.pt")
    assert pol.config.estimator == "keypoints" and isinstance(pol.object_state_probe, pp.KeypointProbe)
    sd = pol.state_dict()
    assert not torch.equal(sd["object_state_probe.conv.0.weight"], init["object_state_probe.conv.0.weight"])
    tower = [k for k in sd if k.startswith("pi0.model.vlm.vision_tower.")]
    assert tower and all(torch.equal(sd[k], init[k]) for k in tower)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val/target_xyz_mae_cm"] > 0


def test_perception_flags_must_agree_with_an_init(scenes, tmp_path):
    plain = tiny_ckpt(tmp_path / "plain.pt", "rgb")
    with pytest.raises(perc.PerceptionError,
                       match="estimate_object_state False, image_in_prefix True, estimate_detached False, but"):
        perc.main(_perc_args(scenes, tmp_path / "o", init=str(plain)), env_fn=lambda *a, **k: pytest.fail("env"))
    with pytest.raises(perc.PerceptionError, match="--estimate-detached is about the estimate"):
        perc.main(_perc_args(scenes, tmp_path / "o", estimate_object_state=False, image_in_prefix=True,
                             estimate_detached=True), env_fn=lambda *a, **k: pytest.fail("env"))
    with pytest.raises(perc.PerceptionError, match="--estimator keypoints makes the estimate of"):
        perc.main(_perc_args(scenes, tmp_path / "o", estimate_object_state=False, image_in_prefix=True,
                             estimator="keypoints"), env_fn=lambda *a, **k: pytest.fail("env"))
    with pytest.raises(perc.PerceptionError, match="--init .* brings its own"):
        perc.main(_perc_args(scenes, tmp_path / "o", init=str(plain), estimator="keypoints"),
                  env_fn=lambda *a, **k: pytest.fail("env"))
    with pytest.raises(perc.PerceptionError, match="--no-image-in-prefix leaves a policy that sees no image"):
        perc.main(_perc_args(scenes, tmp_path / "o", estimate_object_state=False),
                  env_fn=lambda *a, **k: pytest.fail("env"))
    assert not (tmp_path / "o").exists()


def test_stats_from_a_21d_teacher_are_kept_whole(scenes, tmp_path):
    env = dataclasses.asdict(scene_env.EnvConfig(obs_mode="state"))
    t = pp.load_policy(tiny_ckpt(tmp_path / "t.pt", "state", {"env": env}))
    t.normalizer = t.normalizer.with_state_extra(torch.rand(50, O).numpy())
    pp.torch_save_atomic(pp.policy_checkpoint(t, iteration=0, args={"env": env}), tmp_path / "t.pt")
    pol = perc.build_policy(_perc_args(scenes, tmp_path / "o", stats_from=str(tmp_path / "t.pt")), "cpu")
    assert pol.normalizer.state_lo == t.normalizer.state_lo and len(pol.normalizer.state_lo) == P + O


# ---------------------------------------------------------------------------------------------
# distill.py --student-from-teacher: the teacher with a camera
# ---------------------------------------------------------------------------------------------


def test_the_student_from_the_teacher_acts_as_the_teacher_where_the_estimate_is_exact(setup, tmp_path):
    teacher = pp.load_policy(setup["teacher"]).eval()
    teacher.normalizer = teacher.normalizer.with_state_extra(torch.rand(50, O).numpy() * 0.3)
    vision = estimating_policy(seed=3)
    args = distill.Args(teacher=str(setup["teacher"]), num_inference_steps=1)
    student = distill.student_from_teacher(args, vision, teacher).eval()
    sd, t_sd, v_sd = student.state_dict(), teacher.state_dict(), vision.state_dict()
    for k, v in sd.items():
        assert torch.equal(v, v_sd[k] if k.startswith(distill.VISION_KEYS) else t_sd[k]), k
    assert student.normalizer == teacher.normalizer and student.config.value_state == teacher.config.value_state
    # a probe whose estimate is exactly the simulator's features: the student's chunk is the teacher's
    o = obs(1, seed=4)
    features = torch.rand(1, O) * 0.3
    probe = student.object_state_probe
    with torch.no_grad():
        probe.linear.weight.zero_()
        probe.linear.bias.zero_()
    probe.set_statistics(features[0], torch.ones(O))
    torch.manual_seed(7)
    a = student.act(o)
    torch.manual_seed(7)
    b = teacher.act(scene_env.proxy_observation({**o, "object_state": features}))
    assert torch.allclose(a, b, atol=1e-5)
    torch.manual_seed(7)  # and the camera matters: another estimate, another chunk
    probe.set_statistics(features[0] + 0.2, torch.ones(O))
    assert not torch.allclose(student.act(o), b, atol=1e-4)


def test_the_student_may_have_another_vision_tower_than_the_teacher(setup):
    """--vision-preset mini on a tiny policy: mini's 64 image tokens (8x8 px patches) feed the estimate, projected to
    tiny's text width; the student keeps them and takes everything else from the tiny teacher."""
    vision = estimating_policy(vision_preset="mini")
    vis = vision.config.pi0["vlm_config"]["vision_config"]
    assert vis == pp.preset_config("mini").pi0["vlm_config"]["vision_config"]
    assert vision.config.pi0["vlm_config"]["text_config"] == pp.preset_config("tiny").pi0["vlm_config"]["text_config"]
    assert pp.ObjectStateProbe.input_width(vision.config) == 64 * 64
    o = obs(1)
    assert vision.image_tokens(vision.obs_to_inputs(o)).shape == (1, 64, 64)
    teacher = pp.load_policy(setup["teacher"]).eval()
    student = distill.student_from_teacher(distill.Args(teacher="t"), vision, teacher)
    sd, t_sd, v_sd = student.state_dict(), teacher.state_dict(), vision.state_dict()
    assert all(torch.equal(v, v_sd[k] if k.startswith(distill.VISION_KEYS) else t_sd[k]) for k, v in sd.items())
    assert student.act(o).shape == (1, 4, 7)


def test_student_from_teacher_refuses_a_student_init_it_cannot_use(setup, tmp_path):
    teacher = pp.load_policy(setup["teacher"]).eval()
    args = distill.Args(teacher=str(setup["teacher"]), student_init="x.pt")
    with pytest.raises(distill.DistillError, match="estimate_object_state False"):
        distill.student_from_teacher(args, pp.load_policy(setup["student"]), teacher)
    with pytest.raises(distill.DistillError, match="estimate_object_state True, image_in_prefix True"):
        distill.student_from_teacher(args, estimating_policy(image_in_prefix=True), teacher)
    with pytest.raises(distill.DistillError, match="preset 'mini'.*differ in more than the vision.*--preset tiny"):
        distill.student_from_teacher(args, estimating_policy(preset="mini"), teacher)
    with pytest.raises(distill.DistillError, match="--student-from-teacher takes the student's vision"):
        distill.main(distill.Args(teacher=str(setup["teacher"]), out=str(tmp_path / "o"), student_from_teacher=True,
                                  env=ENV, device="cpu"), env_fn=lambda *a: pytest.fail("an env was built"))
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(300)
def test_a_dagger_round_from_the_teacher_trains_the_students_own_probe(setup, tmp_path):
    init = tmp_path / "vision.pt"
    pp.torch_save_atomic(pp.policy_checkpoint(estimating_policy(seed=5), iteration=0), init)
    out = tmp_path / "d"
    r = run_distill(setup, out, "--rounds", "1", "--aux-state-coef", "0.5", "--student-from-teacher",
                    "--student-init", str(init))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ck = torch.load(out / "ckpt_final.pt", weights_only=True)
    assert "aux_state_probe" not in ck  # the aux loss trained the policy's own probe
    before = torch.load(init, weights_only=True)["model"]
    assert not torch.equal(ck["model"]["object_state_probe.linear.weight"], before["object_state_probe.linear.weight"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["losses/aux_state"] > 0 for r in rows if not r.get("summary"))
    student = pp.load_policy(out / "ckpt_final.pt")
    assert student.config.estimate_object_state and student.observed_state_dim == P  # evaluate.py runs it on pixels


def detached_estimating_checkpoint(path: Path, seed: int = 5, estimator: str = "linear") -> Path:
    """What pretrain_perception.py --estimate-object-state --no-image-in-prefix --estimate-detached writes (tiny)."""
    torch.manual_seed(seed)
    cfg = pp.preset_config("tiny", 4, num_steps=1, **pp.obs_overrides(ENV, True, False, True, estimator))
    pol = pp.PI0Policy(cfg, pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), {"kind": "bytes"})
    pp.torch_save_atomic(pp.policy_checkpoint(pol, iteration=0), path)
    return path


def replay_file(path: Path, n: int = 12, size: int = 64) -> Path:
    """A frames.pt as pretrain_perception.py stores it: model-size images u8 [n, 3, S, S] and their object state."""
    g = torch.Generator().manual_seed(3)
    torch.save({"rgb": torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                "object_state": torch.rand(n, O, generator=g) * 0.3, "scene_id": ["s0"] * n}, path)
    return path


@pytest.mark.parametrize("estimator", ["linear", "keypoints"])
def test_a_perception_only_dagger_round_keeps_the_teachers_map_and_replays_perceptions_frames(setup, tmp_path,
                                                                                               estimator):
    """--train-part perception (design v10): a round from the teacher trains the image path alone, by the auxiliary
    object-state loss on the visited states and perception's replayed frames; every other weight stays the teacher's,
    bit for bit, and the detached estimate means no action loss is computed. A keypoint student (design v12) trains
    its detector, and its vision tower, which nothing reads, stays put."""
    init = detached_estimating_checkpoint(tmp_path / "vision.pt", estimator=estimator)
    out = tmp_path / "d"
    r = run_distill(setup, out, "--rounds", "1", "--aux-state-coef", "1", "--student-from-teacher", "--student-init",
                    str(init), "--loss", "chunk", "--train-part", "perception", "--replay-frames",
                    str(replay_file(tmp_path / "frames.pt")))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    start = torch.load(out / "ckpt_start.pt", weights_only=True)["model"]
    final = torch.load(out / "ckpt_final.pt", weights_only=True)["model"]
    frozen = [k for k in final if not k.startswith(distill.VISION_KEYS)]
    assert frozen and all(torch.equal(final[k], start[k]) for k in frozen)
    w = "object_state_probe.linear.weight" if estimator == "linear" else "object_state_probe.conv.0.weight"
    assert not torch.equal(final[w], start[w])
    tower_moved = any(not torch.equal(final[k], start[k]) for k in final if k.startswith("pi0.model.vlm.vision_tower."))
    assert tower_moved == (estimator == "linear")
    assert pp.load_policy(out / "ckpt_final.pt").config.estimator == estimator
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if not r.get("summary")]
    assert steps and all(r["losses/aux_state"] > 0 and "losses/chunk" not in r for r in steps)
    assert "losses/aux_state_round" in rows[-1] and "losses/chunk_round" not in rows[-1]


def test_replayed_frames_enter_the_auxiliary_loss(setup, tmp_path):
    """The same step with and without --replay-frames moves the probe differently (half of its loss is perception's
    frames); under --train-part perception only the image path has requires_grad."""
    teacher = pp.load_policy(setup["teacher"]).eval()
    data = {"rgb": torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8), "state": torch.zeros(4, P),
            "object_state": torch.full((4, O), 0.2), "label": torch.zeros(4, 4, 7), "label_raw": torch.zeros(4, 4, 7),
            "label_noise": torch.randn(4, 4, 7), "instruction": ["put the red block on the blue plate"] * 4}
    data["object_state"][:, [2, 10]] = 0.05
    replay_path = replay_file(tmp_path / "frames.pt")

    def probe_after_one_step(replay: str | None) -> torch.Tensor:
        args = distill.Args(teacher=str(setup["teacher"]), student_init=str(init), student_from_teacher=True,
                            aux_state_coef=1.0, train_part="perception", replay_frames=replay, batch_size=4,
                            log_every=1, loss="chunk")
        st = distill.build_student(args, teacher, "cpu")
        distill.restrict_to_perception(args, st)
        assert all(p.requires_grad == n.startswith(distill.VISION_KEYS) for n, p in st.named_parameters())
        pr = distill.build_probe(args, st, teacher)
        opt = torch.optim.SGD(distill.trainable(st, pr), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        distill.train_round(st, opt, sched, distill.student_inputs(st, data), 1, args,
                            torch.Generator().manual_seed(0), "cpu", lambda s, m: None, pr,
                            distill.load_replay(args, st))
        return st.object_state_probe.linear.weight.detach().clone()
    init = detached_estimating_checkpoint(tmp_path / "vision.pt")
    assert not torch.allclose(probe_after_one_step(None), probe_after_one_step(str(replay_path)))


def test_perception_only_dagger_refuses_what_it_cannot_train(setup, tmp_path):
    base = dict(teacher=str(setup["teacher"]), out=str(tmp_path / "o"), env=ENV, device="cpu")
    never = dict(env_fn=lambda *a: pytest.fail("an env was built"))
    with pytest.raises(distill.DistillError, match="--train-part perception needs the auxiliary .* --aux-state-coef 1"):
        distill.main(distill.Args(**base, train_part="perception"), **never)
    with pytest.raises(distill.DistillError, match="--replay-frames .* is not a file"):
        distill.main(distill.Args(**base, aux_state_coef=1.0, replay_frames=str(tmp_path / "none.pt")), **never)
    with pytest.raises(distill.DistillError, match="this student has none"):  # a plain pixel student
        distill.main(distill.Args(**base, aux_state_coef=1.0, train_part="perception",
                                  student_init=str(setup["student"])), **never)
    small = replay_file(tmp_path / "small.pt", size=32)
    with pytest.raises(distill.DistillError, match="not a pretrain_perception.py frames.pt of 64 px images"):
        distill.main(distill.Args(**base, aux_state_coef=1.0, replay_frames=str(small),
                                  student_init=str(setup["student"])), **never)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Imitation keeps the estimate's statistics
# ---------------------------------------------------------------------------------------------


def test_imitation_from_demos_keeps_the_estimates_statistics_from_the_init(tmp_path):
    import train_imitation as TI

    pol = estimating_policy()
    pol.normalizer = pol.normalizer.with_state_extra(torch.rand(40, O).numpy())
    pp.torch_save_atomic(pp.policy_checkpoint(pol, iteration=0), tmp_path / "init.pt")
    demos = {**pol.obs_to_inputs(obs(8)), "action": torch.rand(8, 4, 7) * 0.02, "episodes": torch.tensor(2),
             "expert_success_rate": torch.tensor(1.0)}
    torch.save(demos, tmp_path / "demos.pt")
    TI.main(TI.Args(out=str(tmp_path / "run"), demos=str(tmp_path / "demos.pt"), init=str(tmp_path / "init.pt"),
                    stats="demos", steps=1, batch_size=8, device="cpu", log_every=1, save_every=1, env=ENV))
    n = pp.load_policy(tmp_path / "run/ckpt_final.pt").normalizer
    want = pp.Normalizer.from_data(demos["state"].numpy(), demos["action"].flatten(0, 1).numpy())
    assert n.state_lo[:P] == pytest.approx(want.state_lo) and n.state_lo[P:] == pol.normalizer.state_lo[P:]
    assert n.action_hi == pytest.approx(want.action_hi)
    plain = estimating_policy()  # an init without the estimate's statistics: a clear error
    pp.torch_save_atomic(pp.policy_checkpoint(plain, iteration=0), tmp_path / "bare.pt")
    with pytest.raises(SystemExit, match="statistics of 7 state dims"):
        TI.main(TI.Args(out=str(tmp_path / "run2"), demos=str(tmp_path / "demos.pt"), init=str(tmp_path / "bare.pt"),
                        stats="demos", steps=1, device="cpu", env=ENV))
