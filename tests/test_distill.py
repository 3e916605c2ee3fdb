"""Tests of distill.py (issue 32): the env that renders the camera and reports the object state in one step, one
tiny DAgger round end to end (relabels with the teacher, trains, writes the dataset, resumes), and its bad inputs.

    pytest tests/test_distill.py -q
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
import distill  # noqa: E402
import ppoflow_pi0 as pp  # noqa: E402
import scene_env  # noqa: E402
from evaluate import newcombe_diff  # noqa: E402
from test_scene_env import make_scene, write_manifest  # noqa: E402

LAYOUT = {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07)}


def tiny_ckpt(path: Path, obs_mode: str, args: dict | None = None, seed: int = 0) -> Path:
    """A random tiny policy checkpoint of either observation mode, as ppoflow_pi0.py / train_imitation.py write them."""
    torch.manual_seed(seed)
    env = scene_env.EnvConfig(obs_mode=obs_mode)
    cfg = pp.preset_config("tiny", 4, num_steps=1, value_state=obs_mode == "state", **pp.obs_overrides(env))
    policy = pp.PI0Policy(cfg, pp.Normalizer.from_stats_file(pp.DEFAULT_STATS), {"kind": "bytes"})
    pp.torch_save_atomic(pp.policy_checkpoint(policy, iteration=0, args=args or {}), path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two composed scenes of two families, a state teacher that records them as its training scenes, a pixel
    checkpoint to start the student from, and a pixel checkpoint that must not be accepted as a teacher."""
    root = tmp_path_factory.mktemp("distill")
    for k, (task, rel) in enumerate((("put the red block on the blue plate", "ON"),
                                     ("put the red block in the blue bowl", "IN"))):
        write_manifest(make_scene(root / "scenes", root / "assets", f"s{k}", distractor=False, relation=rel, task=task),
                       root / "assets", LAYOUT)
    env = dataclasses.asdict(scene_env.EnvConfig(obs_mode="state", image_size=64, max_decisions=3))
    teacher_args = {"scenes_dir": str(root / "scenes"), "scene_ids": ["s0", "s1"], "env": env}
    return {"root": root, "teacher": tiny_ckpt(root / "teacher.pt", "state", teacher_args),
            "student": tiny_ckpt(root / "student.pt", "rgb", seed=1), "pixel": tiny_ckpt(root / "pixel.pt", "rgb")}


# one env in the test process's child (no worker processes: the cheapest real env), 2-decision episodes
TINY = ["--num-envs", "1", "--env-workers", "0", "--frames-per-round", "4", "--steps-per-round", "3", "--batch-size", "4",
        "--warmup-steps", "1", "--log-every", "1", "--learning-rate", "1e-3", "--beta-decay", "0", "--env.image-size",
        "64", "--env.max-decisions", "2", "--device", "cpu"]


def run_distill(setup, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "distill.py"), "--teacher", str(setup["teacher"]), "--student-init",
           str(setup["student"]), "--out", str(out), *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "LP_NUM_THREADS": "1"})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_teacher_labels(teacher, r: dict) -> None:
    """Every stored label is the teacher's deterministic chunk on the stored state (proprio + object state) from the
    stored noise A^0, which is the draw of the frame's label seed for its batch of envs."""
    for s in torch.unique(r["label_seed"]).tolist():
        rows = (r["label_seed"] == s).nonzero().flatten()
        noise = r["label_noise"][rows]
        assert torch.equal(noise, distill.label_noise(s, len(rows), 4, 7)), s
        obs = {"state": r["state"][rows], "object_state": r["object_state"][rows],
               "instruction": [r["instruction"][i] for i in rows.tolist()]}
        torch.manual_seed(s + 1)  # any global RNG state: the label depends on the stored noise alone
        a_k = teacher.chunk(scene_env.proxy_observation(obs), deterministic=True, noise=noise)
        assert torch.allclose(teacher.normalizer.env_action(a_k), r["label"][rows], atol=1e-5), s
        assert torch.allclose(teacher.normalizer.env_action_unclipped(a_k), r["label_raw"][rows], atol=1e-5), s


# ---------------------------------------------------------------------------------------------
# The env: camera and object state in the same step
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_rgb_env_also_reports_the_object_state(setup):
    man = setup["root"] / "scenes/s0/manifest.json"
    cfg = scene_env.EnvConfig(image_size=32, max_decisions=2, with_object_state=True)
    assert scene_env.obs_keys(cfg) == ("rgb", "state", "object_state")
    venv = scene_env.make_vec_env([man], 1, cfg, seed=0, workers=0)
    try:
        env = venv.runner.env
        obs, _ = venv.reset(seed=3)
        assert set(obs) == {"rgb", "state", "object_state", "instruction"}
        assert obs["rgb"].shape == (1, 32, 32, 3) and obs["state"].shape == (1, scene_env.PROPRIO_DIM)
        assert obs["object_state"].shape == (1, scene_env.OBJECT_STATE_DIM)
        assert torch.allclose(obs["object_state"], scene_env.object_state(env.privileged_state()))
        assert scene_env.proxy_observation(obs)["state"].shape == (1, scene_env.PROPRIO_DIM + scene_env.OBJECT_STATE_DIM)
        for _ in range(2):  # the episode ends at max_decisions: the final observation carries it too
            obs, _, term, trunc, info = venv.step(torch.zeros(1, 4, 7))
        assert trunc[0] and info["final_observation"]["object_state"].shape == (1, scene_env.OBJECT_STATE_DIM)
    finally:
        venv.close()
    # a CPU worker process (AsyncVectorEnv) declares it in its observation space (built lazily: no simulator here)
    space = scene_env._ChunkWorker([("gen", str(man))], cfg, 0).observation_space
    assert set(space) == {"rgb", "state", "object_state"} and space["object_state"].shape == (scene_env.OBJECT_STATE_DIM,)
    assert "object_state" not in scene_env.obs_keys(scene_env.EnvConfig())  # off by default: nothing else changes


# ---------------------------------------------------------------------------------------------
# One tiny DAgger round end to end, then a resumed second round
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # ~9 min measured on a loaded 2-core machine (load average 11), most of it in imports
def test_one_dagger_round_relabels_trains_writes_the_dataset_and_resumes(setup, tmp_path):
    import datasets

    import lerobot_format as lf

    out = tmp_path / "distill"
    r0 = run_distill(setup, out, "--rounds", "1")
    assert r0.returncode == 0, r0.stdout[-3000:] + r0.stderr[-3000:]
    teacher = pp.load_policy(setup["teacher"]).eval()
    data0 = torch.load(out / "rounds/round_000.pt", weights_only=True)
    assert data0["label"].shape == (4, 4, 7) and data0["rgb"].shape == (4, 64, 64, 3)
    assert data0["teacher_acted"].all() and data0["beta"] == 1.0  # round 0: the teacher's own rollouts
    assert data0["scene_id"] == ["s0"] * 4 and data0["episode"].tolist() == [0, 0, 1, 1]  # two 2-decision episodes
    assert_teacher_labels(teacher, data0)
    # trained: the student moved away from --student-init, with a finite loss at every step
    ck0 = torch.load(out / "ckpt_round_000.pt", weights_only=True)
    init = torch.load(setup["student"], weights_only=True)["model"]
    assert any(not torch.equal(v, init[k]) for k, v in ck0["model"].items())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if not r.get("summary")] == [1, 2, 3]
    assert all(np.isfinite(r["losses/flow_matching"]) for r in rows if not r.get("summary"))
    # the student before round 0 is kept (the "before" of DAgger): --student-init's weights
    start = torch.load(out / "ckpt_start.pt", weights_only=True)
    assert start["round"] == -1 and all(torch.equal(v, init[k]) for k, v in start["model"].items())
    # a normal pixel checkpoint: what evaluate.py and deploy_widowx.py --backend sim load
    import deploy_widowx
    import evaluate

    student = pp.load_policy(out / "ckpt_final.pt")
    assert student.config.obs_mode == "rgb" and student.config.state_dim == scene_env.PROPRIO_DIM
    meta = evaluate.read_checkpoint_meta(str(out / "ckpt_final.pt"))
    spec = evaluate.PolicySpec(name="s", label="s", kind="checkpoint", ckpt=str(out / "ckpt_final.pt"),
                               model_config=meta["model_config"], train_args=meta["args"])
    cfg = evaluate.env_config(evaluate.Args(), spec)
    assert cfg.obs_mode == "rgb" and cfg.image_size == 64 and not cfg.with_object_state
    deploy_widowx.load_policy(deploy_widowx.Args(backend="sim", ckpt=str(out / "ckpt_final.pt")), lambda: None)
    with_obj = dataclasses.replace(cfg, with_object_state=True)  # an observation entry, not an outcome: same key
    assert evaluate.settings_key(spec, with_obj, evaluate.Args()) == evaluate.settings_key(spec, cfg, evaluate.Args())
    # the dataset: HF datasets types the image column; lerobot_format reads back the frames and the teacher's labels
    files = sorted(str(p) for p in (out / "dataset/data").rglob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.features[lf.IMAGE_KEY], datasets.Image) and len(ds) == 4 * 4  # C rows per decision
    info = json.loads((out / "dataset/meta/info.json").read_text())
    assert info["dagger"]["rounds"] == 1 and info["action_chunk"] == 4 and info["fps"] == 5

    def same_as_rounds(rounds):
        eps = lf.read_dataset(out / "dataset")
        want = distill.dataset_episodes(rounds)
        assert len(eps) == len(want)
        for got, w in zip(eps, want):
            assert np.array_equal(got["rgb"], w["rgb"]) and got["task"] == w["task"] and got["scene_id"] == w["scene_id"]
            assert np.allclose(got["state"], w["state"]) and np.allclose(got["action"], w["action"])
    same_as_rounds([data0])
    # re-running with more rounds continues: round 0 untouched, round 1 acted by the student alone (beta_decay 0)
    before = {p: sha(out / p) for p in ("rounds/round_000.pt", "ckpt_round_000.pt")}
    r1 = run_distill(setup, out, "--rounds", "2")
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    assert "continuing at round 1" in r1.stdout
    assert all(sha(out / p) == h for p, h in before.items())
    data1 = torch.load(out / "rounds/round_001.pt", weights_only=True)
    assert not data1["teacher_acted"].any() and data1["beta"] == 0.0
    assert_teacher_labels(teacher, data1)  # the student acted, the teacher labelled
    ck1 = torch.load(out / "ckpt_final.pt", weights_only=True)
    assert ck1["round"] == 1 and ck1["iteration"] == 6 and ck1["dagger"]["frames"] == 8
    assert any(not torch.equal(v, ck0["model"][k]) for k, v in ck1["model"].items())
    summary = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"summary"' in x]
    assert [r["round"] for r in summary] == [0, 1] and summary[1]["charts/student_acted_fraction"] == 1.0
    assert json.loads((out / "dataset/meta/info.json").read_text())["dagger"]["rounds"] == 2
    same_as_rounds([data0, data1])
    # a changed flag is refused; the same command again has nothing left to do (no env is built)
    import tyro

    def again(*extra):
        a = tyro.cli(distill.Args, args=["--teacher", str(setup["teacher"]), "--student-init", str(setup["student"]),
                                         "--out", str(out), *TINY, "--rounds", "2", *extra])
        return distill.main(a, env_fn=lambda *a: pytest.fail("an env was built"))
    with pytest.raises(distill.DistillError, match="--steps-per-round: the run's 3, now 5"):
        again("--steps-per-round", "5")
    assert again() == out and sha(out / "ckpt_final.pt") == sha(out / "ckpt_round_001.pt")
    import shutil

    shutil.rmtree(out / "dataset")  # a dataset behind the rounds (a kill while writing it) is rewritten by a re-run
    again()
    same_as_rounds([data0, data1])


@pytest.mark.timeout(240)
def test_dagger_with_the_aux_state_probe_logs_it_stores_it_and_resumes_with_it(setup, tmp_path):
    out = tmp_path / "aux"
    r0 = run_distill(setup, out, "--rounds", "1", "--aux-state-coef", "0.5")
    assert r0.returncode == 0, r0.stdout[-3000:] + r0.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["losses/aux_state"]) for r in rows if not r.get("summary"))
    ck0 = torch.load(out / "ckpt_round_000.pt", weights_only=True)
    w0 = ck0["aux_state_probe"]["linear.weight"]
    assert w0.shape[0] == scene_env.OBJECT_STATE_DIM
    student = pp.load_policy(out / "ckpt_final.pt")  # still a plain pixel checkpoint: the probe is not the policy's
    assert not any("probe" in k for k in student.state_dict())
    r1 = run_distill(setup, out, "--rounds", "2", "--aux-state-coef", "0.5")
    assert r1.returncode == 0 and "continuing at round 1" in r1.stdout, r1.stdout[-3000:] + r1.stderr[-3000:]
    w1 = torch.load(out / "ckpt_final.pt", weights_only=True)["aux_state_probe"]["linear.weight"]
    # trained on in round 1 from round 0's probe: 3 Adam steps of lr 1e-3 move a weight by <= ~3e-3, while a probe
    # built afresh on the resume would differ from round 0's by a whole init (up to 2/sqrt(fan-in), ~0.09 here)
    assert not torch.equal(w0, w1) and (w1 - w0).abs().max() < 5e-3
    r2 = run_distill(setup, out, "--rounds", "3")  # the probe's weight is a training flag: it cannot change
    assert r2.returncode == 1 and "--aux-state-coef: the run's 0.5, now 0.0" in r2.stderr, r2.stderr[-2000:]


@pytest.mark.timeout(240)
def test_dagger_with_the_chunk_loss_trains_on_the_labels_noise_and_refuses_rounds_without_it(setup, tmp_path):
    out = tmp_path / "chunk"
    r0 = run_distill(setup, out, "--rounds", "1", "--loss", "chunk")
    assert r0.returncode == 0, r0.stdout[-3000:] + r0.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["losses/chunk"]) and "losses/flow_matching" not in r for r in rows if not r.get("summary"))
    data0 = torch.load(out / "rounds/round_000.pt", weights_only=True)
    assert data0["label_noise"].shape == data0["label_raw"].shape == (4, 4, 7)
    teacher = pp.load_policy(setup["teacher"])
    assert_teacher_labels(teacher, data0)
    student = pp.load_policy(setup["student"])
    batch = distill.student_inputs(student, data0)
    assert torch.equal(batch["noise"], data0["label_noise"])  # the noise travels with its frame
    # the chunk target is the teacher's unclipped chunk in the student's model space: executed, it is the label
    assert torch.allclose(student.normalizer.env_action(batch["chunk_target"]), data0["label"], atol=1e-5)
    # a round collected before the noise was stored (an older distill.py) cannot train the chunk loss: one clear error
    del data0["label_raw"]
    torch.save(data0, out / "rounds/round_000.pt")
    run_args = json.loads((out / "args.json").read_text())
    del run_args["args"]["loss"]
    (out / "args.json").write_text(json.dumps(run_args))
    import tyro

    a = tyro.cli(distill.Args, args=["--teacher", str(setup["teacher"]), "--student-init", str(setup["student"]),
                                     "--out", str(out), *TINY, "--rounds", "2", "--loss", "chunk"])
    with pytest.raises(distill.DistillError, match=r"rounds \[0\] .* did not store them"):
        distill.main(a, env_fn=lambda *a: pytest.fail("an env was built"))


def test_chunk_loss_keeps_the_policys_own_map_where_eq1_moves_it(setup):
    """The reason for --loss chunk: a policy trained on its own deterministic chunks (its labels, its A^0) is a fixed
    point of the chunk loss (loss and gradient zero), while Eq. 1 on the same labels changes the chunks it acts with."""
    pol = pp.load_policy(setup["teacher"]).eval()
    torch.manual_seed(0)
    state = torch.randn(8, scene_env.PROPRIO_DIM + scene_env.OBJECT_STATE_DIM) * 0.3
    obs = {"state": state, "instruction": ["put the red block on the blue plate"] * 8}
    inp = {k: v for k, v in pol.obs_to_inputs(obs).items() if k in pol.input_keys}
    noise = torch.randn(8, 4, 7)
    with torch.no_grad():
        own = pol.chain(pol.encode(inp), deterministic=True, noise=noise)[0][:, -1]
        assert torch.allclose(pol.normalizer.env_action(own), pol.act(obs, noise=noise))  # act takes the same A^0
    params = [p for p in pol.parameters() if p.requires_grad]
    loss = pol.chunk_regression_loss(inp, noise, own)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert float(loss.detach()) < 1e-10 and all(g is None or g.abs().max() < 1e-6 for g in grads)
    other = pol.chunk_regression_loss(inp, noise, own + 0.1)  # any other target: a loss that reaches the expert
    g = torch.autograd.grad(other, pol.pi0.action_out_proj.weight)[0]
    assert abs(float(other.detach()) - 0.01) < 1e-4 and g.abs().max() > 0

    def chunks_after(loss_fn) -> torch.Tensor:
        p2 = pp.load_policy(setup["teacher"]).train()
        opt = torch.optim.SGD([p for p in p2.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            loss_fn(p2).backward()
            opt.step()
        with torch.no_grad():
            return p2.eval().chain(p2.encode(inp), deterministic=True, noise=noise)[0][:, -1]
    # what distill.py stores and trains on: the unclipped chunk in env units, read back into the same model space
    n = pol.normalizer
    assert torch.allclose(n.action(n.env_action_unclipped(own), clamp=False), own, atol=1e-5)
    assert torch.allclose(n.env_action(own), n.env_action(n.action(n.env_action_unclipped(own), clamp=False)), atol=1e-5)
    kept = chunks_after(lambda p: p.chunk_regression_loss(inp, noise, own))
    moved = chunks_after(lambda p: p.flow_matching_loss(inp, own))
    assert torch.allclose(kept, own, atol=1e-6)
    assert (moved - own).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Bad inputs: one clear error each, before anything is written
# ---------------------------------------------------------------------------------------------


def _args(setup, tmp_path, **kw) -> distill.Args:
    base = dict(teacher=str(setup["teacher"]), out=str(tmp_path / "out"), device="cpu",
                env=scene_env.EnvConfig(image_size=64))
    return distill.Args(**{**base, **kw})


@pytest.mark.parametrize("change,match", [
    (dict(teacher="pixel"), "is a pixel policy"),
    (dict(student_init="teacher"), "is an object-state policy"),
    (dict(teacher="missing.pt"), "no such file"),
    (dict(scenes_dir="nowhere"), "scenes folder does not exist"),
    (dict(scene_ids=["s0", "s9"]), "no composed scene .* s9"),
    (dict(rounds=0, beta_decay=1.5), "--rounds 0 .* --beta-decay 1.5"),
    (dict(aux_state_coef=-1.0), "--aux-state-coef -1.0 \\(must be >= 0\\)"),
    (dict(env=scene_env.EnvConfig(obs_mode="state")), "the student sees pixels"),
    (dict(env=scene_env.EnvConfig(chunk=2)), "--env.chunk 4"),
])
def test_bad_inputs_are_refused_before_anything_is_written(setup, tmp_path, change, match):
    files = {"pixel": str(setup["pixel"]), "teacher": str(setup["teacher"]), "missing.pt": str(tmp_path / "missing.pt")}
    change = {k: files.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    with pytest.raises((distill.DistillError, pp.CheckpointError, distill.ss.SchemaError), match=match):
        distill.main(_args(setup, tmp_path, **change), env_fn=lambda *a: pytest.fail("an env was built"))
    assert not (tmp_path / "out").exists()


def test_a_teacher_without_recorded_scenes_needs_scenes_dir(setup, tmp_path):
    bare = tiny_ckpt(tmp_path / "bare.pt", "state")  # a checkpoint without training args
    with pytest.raises(distill.DistillError, match="records no training scenes.*--scenes-dir"):
        distill.main(_args(setup, tmp_path, teacher=str(bare)))


def test_cli_bad_teacher_is_one_line(setup, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "distill.py"), "--teacher", str(setup["pixel"]), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("distill.py: --teacher") and "--env.obs-mode state" in r.stderr


def _frames(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g),
            "state": torch.randn(n, scene_env.PROPRIO_DIM, generator=g) * 0.1,
            "object_state": _on_the_table(torch.randn(n, scene_env.OBJECT_STATE_DIM, generator=g) * 0.1),
            "label": torch.randn(n, 4, 7, generator=g).clamp(-1, 1) * 0.01, "instruction": ["put the block"] * n}


def _on_the_table(obj: torch.Tensor) -> torch.Tensor:
    """Object features with both objects over the table region (x ~0.3 m, z >= 0): inside the workspace."""
    obj = obj.clone()
    obj[:, [0, 8]] += 0.3
    obj[:, [2, 10]] = obj[:, [2, 10]].abs()
    return obj


def test_frames_with_an_object_off_the_workspace_are_not_trained_on(setup):
    """A DAgger round where the student's arm flung the bowl away (seen: 1800 m) or knocked the target off the table:
    those frames leave the training batch (inputs, labels and probe targets alike), the others keep their order."""
    student = pp.load_policy(setup["student"], lora_rank=0)
    data = _frames(6)
    data["instruction"] = [f"put block {i}" for i in range(6)]
    data["object_state"][1, 8:11] = torch.tensor([3.45, -0.70, -3.19])  # the destination flung away
    data["object_state"][4, 2] = -0.85  # the target on the floor
    assert scene_env.objects_in_workspace(data["object_state"]).tolist() == [True, False, True, True, False, True]
    batch = distill.student_inputs(student, data)
    keep = [0, 2, 3, 5]
    assert torch.equal(batch["object_target"], data["object_state"][keep])
    assert torch.allclose(batch["target"], student.normalizer.action(data["label"][keep]))
    sub = {"rgb": data["rgb"][keep], "state": data["state"][keep], "instruction": [data["instruction"][i] for i in keep]}
    want = student.obs_to_inputs(sub)
    assert all(torch.equal(batch[k], want[k]) for k in student.input_keys)
    edge = torch.tensor([[0.7, 0.45, -0.1] + [0.0] * 5 + [-0.1, -0.45, 0.5] + [0.1] * 3])  # the bounds are inclusive
    assert scene_env.objects_in_workspace(edge).tolist() == [True]
    assert not scene_env.objects_in_workspace(edge + torch.tensor([0.0] * 8 + [-0.01] + [0.0] * 5)).any()


def test_aux_state_probe_targets_and_gradient_reach_the_vision_tower(setup):
    """--aux-state-coef: the probe's target is the object features standardised by the teacher's bounds (its own
    normalisation, unclipped), its input the student's image tokens (the same ones its prefix reads), and its loss
    moves the vision tower, where Eq. 1 alone moves it differently; with the coefficient 0 no probe is built."""
    teacher = pp.load_policy(setup["teacher"]).eval()
    teacher.normalizer = teacher.normalizer.with_state_extra(torch.rand(50, scene_env.OBJECT_STATE_DIM).numpy() * 0.5)
    student = pp.load_policy(setup["student"], lora_rank=0)
    data = _frames(6)
    data["object_state"] = data["object_state"].abs() * 0.5 + 0.1  # inside the teacher's bounds: no clipping there
    batch = distill.student_inputs(student, data)
    assert torch.equal(batch["object_target"], data["object_state"])
    want = teacher.normalizer.state(torch.cat([data["state"], data["object_state"]], -1))[:, scene_env.PROPRIO_DIM:]
    args = distill.Args(teacher="t", aux_state_coef=1.0)
    inside = want.abs() < 1
    assert inside.float().mean() > 0.5
    probe = distill.build_probe(args, student, teacher)
    assert torch.allclose(probe.standardise(batch["object_target"])[inside], want[inside], atol=1e-5)
    assert distill.build_probe(distill.Args(teacher="t"), student, teacher) is None
    inp = {k: batch[k] for k in student.input_keys}
    img = student.image_tokens(inp)
    torch.manual_seed(0)
    a = student.flow_matching_loss(inp, batch["target"])
    torch.manual_seed(0)
    assert torch.allclose(a, student.flow_matching_loss(inp, batch["target"], img=img))  # the same prefix
    assert probe.linear.in_features == img[0].numel() and probe.linear.out_features == scene_env.OBJECT_STATE_DIM

    def vision_after_one_step(coef: float):
        st = pp.load_policy(setup["student"], lora_rank=0)
        pr = distill.build_probe(distill.Args(teacher="t", aux_state_coef=coef), st, teacher)
        if pr is not None:
            torch.manual_seed(1)
            pr.linear.reset_parameters()
        params = distill.trainable(st, pr)
        opt = torch.optim.SGD(params, lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        args = distill.Args(teacher="t", batch_size=6, log_every=1, aux_state_coef=coef)
        rows = []
        torch.manual_seed(2)
        distill.train_round(st, opt, sched, batch, 1, args, torch.Generator().manual_seed(0), "cpu",
                            lambda s, m: rows.append(m), pr)
        tower = {k: v.clone() for k, v in st.pi0.model.vlm.state_dict().items() if "vision" in k}
        return tower, rows[-1]
    plain, row0 = vision_after_one_step(0.0)
    aux, row1 = vision_after_one_step(1.0)
    assert plain and "losses/aux_state" not in row0 and np.isfinite(row1["losses/aux_state"]) and row1["losses/aux_state"] > 0
    assert any(not torch.allclose(plain[k], aux[k]) for k in plain)  # the probe's gradient reached the image tokens


def test_beta_schedule_and_label_seeds():
    a = distill.Args(teacher="t", beta0=1.0, beta_decay=0.5)
    assert [distill.beta(a, k) for k in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert distill.beta(dataclasses.replace(a, beta_decay=0.0), 0) == 1.0  # round 0 is the teacher's either way
    teacher_env = dataclasses.asdict(scene_env.EnvConfig(obs_mode="state", image_size=224))
    assert distill.env_differences(scene_env.EnvConfig(image_size=64, max_decisions=2), teacher_env) == \
        ["max_decisions: teacher 25, now 2"]  # the student's camera and obs mode are not differences
    seeds = {distill.label_seed(0, k, d) for k in range(3) for d in range(50)}
    assert len(seeds) == 150 and distill.label_seed(0, 1, 2) == distill.label_seed(0, 1, 2)


@pytest.mark.timeout(900)
def test_distill_study_runs_end_to_end_at_a_tiny_budget_and_matches_the_baselines_frames(setup, tmp_path):
    """Issue 32's study driver (design v9): perception also along the teacher's episodes, the imitation start, two
    students trained by the chunk loss (distill.py from the start, and starting as the teacher, evaluated also before
    its first round), the plain-imitation baseline on the start's and the rounds' frame and step budget together, all
    evaluated on the same seeds, a report that leads with the verdict (Bonferroni-corrected over the two students)."""
    root = setup["root"]
    env = dataclasses.asdict(scene_env.EnvConfig(obs_mode="state", image_size=64, max_decisions=20))
    teacher = tiny_ckpt(tmp_path / "teacher.pt", "state", {"scenes_dir": str(root / "scenes"), "scene_ids": ["s0"],
                                                            "env": env})
    cmd = [sys.executable, str(REPO / "experiments/distill_study.py"), "--teacher", str(teacher), "--scenes-dir",
           str(root / "scenes"), "--train-scenes", "s0", "--heldout-scenes", "s1", "--out-dir", str(tmp_path / "o"),
           "--rounds", "2", "--frames-per-round", "3", "--steps-per-round", "2", "--num-envs", "2",
           "--eval-episodes-per-scene", "1", "--video-scenes", "0", "--max-decisions", "20", "--perception-frames", "4",
           "--perception-steps", "2", "--perception-expert-frames", "3", "--perception-rollout-frames", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=840,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "LP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "o"
    report = (out / "report.md").read_text()
    assert report.splitlines()[2].startswith("**Verdict (pixel policy") and "object-state proxy" in report.splitlines()[2]
    rep = json.loads((out / "report.json").read_text())
    students = ("student_imitation", "student_teacher")
    assert set(rep["train"]) == {"teacher", "start", "pre_student_teacher", *students, "baseline"}
    assert rep["train"]["student_teacher"][1] == rep["train"]["pre_student_teacher"][1] == 1
    assert set(rep["student_vs"]) == set(students) and rep["interval_level"] == "97.5%"
    assert set(rep["student_vs"]["student_imitation"]) == {"baseline", "start", "teacher"}
    assert set(rep["student_vs"]["student_teacher"]) == {"baseline", "start", "pre_student_teacher", "teacher"}
    assert "| pre_student_teacher |" in report and "(`pre_student_teacher`: it before its first round)" in report
    assert "97.5% = 95% Bonferroni-corrected over the 2 students" in report.splitlines()[2]
    assert rep["goal_met"] == any(v["baseline"][1] > 0 for v in rep["student_vs"].values())
    k, n = rep["train"]["student_teacher"]
    assert rep["student_vs"]["student_teacher"]["baseline"] == pytest.approx(  # the wider, corrected interval
        list(newcombe_diff(k, n, *rep["train"]["baseline"], z=NormalDist().inv_cdf(1 - 0.0125))))
    assert rep["heldout"]["baseline"][1] == 1 and all(len(rep["rounds"][s]) == 2 for s in students)
    start_demos = torch.load(out / "runs/start/demos.pt", weights_only=True)
    for s in students:  # the rounds' frames: 2 x 2 x 2, as many as the start's expert frames
        assert len(start_demos["action"]) == 8 == sum(r["charts/frames"] for r in rep["rounds"][s])
        assert rep["rounds"][s][-1]["charts/aggregate_frames"] == 8 - sum(r["charts/frames_off_workspace"]
                                                                          for r in rep["rounds"][s])
    demos = torch.load(out / "runs/baseline/demos.pt", weights_only=True)
    assert len(demos["action"]) == 16  # the start's frames and the rounds' together
    base = json.loads((out / "runs/baseline/args.json").read_text())["args"]
    assert base["steps"] == 8 and base["env"]["obs_mode"] == "rgb" and base["env"]["image_size"] == 64
    assert json.loads((out / "runs/start/args.json").read_text())["args"]["steps"] == 4
    stud, stud_t = (json.loads((out / f"runs/{s}/args.json").read_text())["args"] for s in students)
    for a in (base, stud, stud_t):  # the defaults reach the pixel policies: tiny (v5), camera and lighting fixed
        assert a["preset"] == "tiny" and not a["env"]["dr_camera"] and not a["env"]["dr_lighting"]
        assert a["env"]["dr_object_pose"]
    assert "preset `tiny`" in report and "--env.no-dr-camera --env.no-dr-lighting" in report
    assert stud["aux_state_coef"] == 0.0 and "aux_state_coef" not in base  # v9: the perception as step 0 made it
    assert stud["loss"] == stud_t["loss"] == "chunk" and "DAgger loss on the deterministic chunk" in report  # v9
    assert "auxiliary object-state loss weight 0" in report and "at learning rate 1e-05" in report
    assert ("perception pretraining (pretrain_perception.py: 4 fresh-reset frames, 3 along scripted-expert episodes and "
            "3 along a learned policy's episodes") in report
    perc_args = json.loads((out / "runs/perception/args.json").read_text())["args"]  # v8: along the teacher's episodes
    assert perc_args["rollout_frames"] == 3 and perc_args["rollout_policy"] == str(teacher.resolve())
    ckpt = str(out / "runs/perception/ckpt_final.pt")  # v4: the pixel policies start from step 0's checkpoint
    assert base["init"] == ckpt and json.loads((out / "runs/start/args.json").read_text())["args"]["init"] == ckpt
    # v7: the student starts from the imitation start; v5: all read the estimate from an instruction-only prefix
    assert stud["student_init"] == str(out / "runs/start/ckpt_final.pt") and not stud["student_from_teacher"]
    assert stud_t["student_init"] == ckpt and stud_t["student_from_teacher"]  # v6's start, v8's perception
    assert "`start`: plain imitation on the scripted expert's 8 frames" in report
    assert "## Cost of the DAgger rounds (student_teacher)" in report
    for name in ("start", *students, "baseline"):
        c = pp.load_policy(out / f"runs/{name}/ckpt_final.pt").config
        assert c.estimate_object_state and not c.image_in_prefix and c.obs_mode == "rgb", name
        assert c.estimate_detached and c.pi0["vlm_config"]["vision_config"]["patch_size"] == 8, name  # v6: mini vision
    assert "estimated from the camera into the state token" in report
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)  # resumes: every step skipped
    assert r2.returncode == 0 and r2.stdout.count("[skip]") == 6, r2.stdout[-2000:]


def test_evaluate_records_the_render_video_of_an_object_state_policy(setup, tmp_path):
    """The teacher has no camera view: evaluate.py --video-scenes used to fail its recorded episode with KeyError 'rgb'
    (the episode lost from the results); it records the render camera's video and reports the episode."""
    r = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--ckpt", str(setup["teacher"]), "--scenes-dir",
                        str(setup["root"] / "scenes"), "--scene-ids", "s0", "--suite", "generated", "--episodes-per-scene",
                        "1", "--num-envs", "1", "--max-decisions", "2", "--video-scenes", "1", "--no-latency",
                        "--device", "cpu", "--out-dir", str(tmp_path / "ev")], capture_output=True, text=True, cwd=REPO,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "LP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "ev/results.json").read_text())
    assert not res.get("errors") and res["policies"][0]["per_scene"]["s0"]["episodes"] == 1
    assert len(list((tmp_path / "ev/render").glob("*/*/video.mp4"))) == 1


def test_distill_study_perception_step_starts_both_pixel_policies_from_its_checkpoint(tmp_path, capsys):
    """--perception-frames: step 0 runs pretrain_perception.py with the pixel policies' preset and env flags and the
    teacher's statistics; the student (--student-init) and the baseline (--init) both start from its checkpoint."""
    import shlex

    import tyro

    sys.path.insert(0, str(REPO / "experiments"))
    import distill_study as ds
    import pretrain_perception as perc
    import train_imitation as ti

    def commands(**kw) -> dict[str, list[str]]:
        ds.main(ds.Args(teacher=str(tmp_path / "t.pt"), scenes_dir=str(tmp_path), train_scenes=["a"],
                        out_dir=str(tmp_path / "o"), perception_frames=30, perception_steps=7, dry_run=True, **kw))
        runs = [x.split(": ", 1) for x in capsys.readouterr().out.splitlines() if x.startswith("[run ]")]
        return {name.removeprefix("[run ] "): shlex.split(cmd) for name, cmd in runs}
    cmds = commands()  # design v9: v8's two students, from the imitation start and as the teacher, by the chunk loss
    assert not (tmp_path / "o/args.json").exists()  # a dry run leaves a run's folder as it is
    assert list(cmds) == ["perception", "start", "student_imitation", "student_teacher", "baseline", "evaluate"]
    assert [Path(c[1]).name for c in cmds.values()][:5] == ["pretrain_perception.py", "train_imitation.py",
                                                          "distill.py", "distill.py", "train_imitation.py"]
    pa = tyro.cli(perc.Args, args=cmds["perception"][2:])
    ckpt = str(tmp_path / "o/runs/perception/ckpt_final.pt")
    assert pa.frames == 30 and pa.steps == 7 and pa.preset == "tiny" and pa.stats_from == str(tmp_path / "t.pt")
    assert not pa.env.dr_camera and not pa.env.dr_lighting and pa.env.image_size == 64
    assert pa.estimate_object_state and not pa.image_in_prefix  # design v5
    assert pa.expert_frames == 20000 and pa.vision_preset == "mini" and pa.estimate_detached  # design v6
    assert pa.rollout_frames == 20000 and pa.rollout_policy == str((tmp_path / "t.pt").resolve())  # design v8
    assert pa.estimator == "keypoints" and pa.learning_rate == 1e-3  # design v12
    pa9 = tyro.cli(perc.Args, args=commands(perception_estimator="linear", perception_learning_rate=3e-4)
                   ["perception"][2:])
    assert pa9.estimator == "linear" and pa9.learning_rate == 3e-4  # v9's perception
    v7 = commands(perception_rollout_frames=0, student_start=["imitation"])
    assert list(v7) == ["perception", "start", "student", "baseline", "evaluate"]  # one student: runs/student
    pa7 = tyro.cli(perc.Args, args=v7["perception"][2:])
    assert pa7.rollout_frames == 0 and pa7.rollout_policy is None
    st, ba = (tyro.cli(ti.Args, args=cmds[k][2:]) for k in ("start", "baseline"))
    assert st.init == ba.init == ckpt and (ba.frames, ba.steps) == (2 * st.frames, 2 * st.steps) == (20000, 15000)
    da, dt = (tyro.cli(distill.Args, args=cmds[k][2:]) for k in ("student_imitation", "student_teacher"))
    assert da.student_init == str(tmp_path / "o/runs/start/ckpt_final.pt") and not da.student_from_teacher  # v7
    assert dt.student_init == ckpt and dt.student_from_teacher and dt.out == str(tmp_path / "o/runs/student_teacher")
    assert (da.rounds, da.frames_per_round, da.steps_per_round) == (dt.rounds, dt.frames_per_round, dt.steps_per_round)
    assert da.loss == dt.loss == "chunk" and da.learning_rate == dt.learning_rate == 1e-5  # design v9
    assert da.aux_state_coef == dt.aux_state_coef == 0.0
    ev = cmds["evaluate"]  # the teacher-start student is also evaluated before its first round
    labels = ev[ev.index("--labels") + 1:][:6]
    assert labels == ["teacher", "start", "pre_student_teacher", "student_imitation", "student_teacher", "baseline"]
    assert str(tmp_path / "o/runs/student_teacher/ckpt_start.pt") in ev
    v8 = commands(student_loss="flow_matching", student_learning_rate=1e-4, aux_state_coef=1.0)  # design v8: Eq. 1
    for k in ("student_imitation", "student_teacher"):
        a8 = tyro.cli(distill.Args, args=v8[k][2:])
        assert (a8.loss, a8.learning_rate, a8.aux_state_coef) == ("flow_matching", 1e-4, 1.0)
    assert all(v8[k] == cmds[k] for k in ("perception", "start", "baseline"))  # v9 reuses v8's other steps as they are
    assert (da.train_part, da.replay_frames) == ("all", None)
    pv = commands(student_train_part="perception", student_replay=True, aux_state_coef=1.0)  # the image path alone
    for k in ("student_imitation", "student_teacher"):
        a = tyro.cli(distill.Args, args=pv[k][2:])
        assert a.train_part == "perception" and a.replay_frames == str(tmp_path / "o/runs/perception/frames.pt")
    assert all(pv[k] == cmds[k] for k in ("perception", "start", "baseline"))
    for kw, match in ((dict(student_train_part="perception"), "--student-train-part perception trains .* "
                       "--aux-state-coef 1"), (dict(student_replay=True, aux_state_coef=1.0, perception_frames=0, estimate_object_state=False,
                             student_start=["imitation"]),
                                               "--student-replay replays .* --perception-frames is 0")):
        with pytest.raises(SystemExit, match=match):
            ds.main(ds.Args(**{**dict(teacher=str(tmp_path / "t.pt"), scenes_dir=str(tmp_path), train_scenes=["a"],
                                      out_dir=str(tmp_path / "o"), dry_run=True), **kw}))
    assert tyro.cli(distill.Args, args=v7["student"][2:]).out == str(tmp_path / "o/runs/student")
    v6 = commands(student_start=["teacher"])  # the student starts as the teacher; the baseline gets the rounds' budget
    assert list(v6) == ["perception", "student", "baseline", "evaluate"]
    da = tyro.cli(distill.Args, args=v6["student"][2:])
    assert da.student_init == ckpt and da.student_from_teacher
    assert tyro.cli(ti.Args, args=v6["baseline"][2:]).frames == 10000
    for bad, match in (([], "--student-start is empty"), (["teacher", "teacher"], "names a start twice")):
        with pytest.raises(SystemExit, match=match):
            commands(student_start=bad)
    with pytest.raises(SystemExit, match="--student-start teacher needs --estimate-object-state"):
        commands(student_start=["imitation", "teacher"], estimate_object_state=False)
