"""evaluate.py: Wilson intervals, splits, the episode loop, resume, reports, bad input, and the harness
telling the scripted expert from a random policy in the real simulator.

Most tests run `evaluate.main` against `FakeVecEnv`, a stand-in with ChunkVecEnv's API whose outcome
depends only on the episode seed and the actions, so the bookkeeping can be checked exactly and fast.
The simulator tests build one tiny generated scene with the asset helpers copied from test_scene_env.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import evaluate as ev  # noqa: E402
import scene_schema as ss  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Fakes: a ChunkVecEnv stand-in and cheap (valid) manifests
# ---------------------------------------------------------------------------------------------


class FakeVecEnv:
    """ChunkVecEnv's API. Each decision adds mean(action x) * chunk to a progress counter; the episode
    succeeds at progress >= 1. The expert pushes x = 0.25 (success at the first decision) except in
    episodes whose seed is a multiple of 3, where the object 'slips' (no progress: a failure)."""

    def __init__(self, scene: str, num_envs: int, chunk: int = 4, max_decisions: int = 5, kill: dict | None = None):
        self.num_envs, self.chunk, self.max_decisions, self.control_dt = num_envs, chunk, max_decisions, 0.2
        self.scene, self.kill, self.closed = scene, kill if kill is not None else {}, False
        self.scene_ids = [scene] * num_envs
        self.instructions = ["put the block on the plate"] * num_envs
        self.seeds = np.zeros(num_envs, int)

    def _obs(self):
        rgb = torch.zeros(self.num_envs, 16, 16, 3, dtype=torch.uint8)
        rgb[:, :, :, 0] = torch.as_tensor(self.t * 40, dtype=torch.uint8)[:, None, None]
        return {"rgb": rgb, "state": torch.zeros(self.num_envs, 7), "instruction": list(self.instructions)}

    def reset(self, seed=None):
        self.seeds = np.arange(self.num_envs) + (seed or 0)
        self.progress, self.t = np.zeros(self.num_envs), np.zeros(self.num_envs, int)
        return self._obs(), {"scene_id": list(self.scene_ids), "instruction": list(self.instructions)}

    def step(self, actions):
        actions = torch.as_tensor(actions)
        assert actions.shape == (self.num_envs, self.chunk, 7)
        self.kill["steps"] = self.kill.get("steps", 0) + 1  # shared by all envs of a run
        if self.kill.get("stop_after") is not None and self.kill["steps"] > self.kill["stop_after"]:
            raise KeyboardInterrupt("simulated kill")
        slip = self.seeds % 3 == 0
        self.progress += np.where(slip, 0.0, actions[:, :, 0].mean(1).numpy() * self.chunk)
        self.t += 1
        success = self.progress >= 1 - 1e-6
        trunc = (self.t >= self.max_decisions) & ~success
        info = {"success": torch.as_tensor(success), "elapsed_s": torch.as_tensor(self.t * self.chunk * 0.2),
                "partial_success": torch.as_tensor(self.progress > 0.5), "scene_id": list(self.scene_ids)}
        done = success | trunc
        obs = self._obs()
        if done.any():
            info["final_observation"] = obs
            self.seeds = np.where(done, self.seeds + 1000, self.seeds)  # auto-reset: a new, other episode
            self.progress, self.t = np.where(done, 0, self.progress), np.where(done, 0, self.t)
            obs = self._obs()
        return obs, torch.as_tensor(success).float(), torch.as_tensor(success), torch.as_tensor(trunc), info

    def expert_actions(self):
        a = torch.zeros(self.num_envs, self.chunk, 7)
        a[:, :, 0], a[:, :, 6] = 0.25, 1.0
        return a

    def close(self):
        self.closed = True


def fake_manifests(scenes_dir: Path, ids: list[str]) -> list[Path]:
    """Valid manifests (scene_schema validates them) whose assets are never loaded by the fake env."""
    out = []
    for sid in ids:
        obj = lambda n, role: ss.ManifestObject(n, role, f"{n}-a", "../assets/x", "v.glb", ["c.obj"], 1.0,  # noqa: E731
                                                [0.03, 0.03, 0.04], 0.05, 0.8, [0.3, 0.0, 0.0], 0.0, [0.29, 0.31],
                                                [-0.01, 0.01], [0.0, 0.0])
        m = ss.SceneManifest(scene_id=sid, task="put the block on the plate", scene_graph="scene_graph.json",
                             objects=[obj("block", "target"), obj("plate", "destination")],
                             success={"target": "block", "destination": "plate", "relation": "ON"},
                             table={"size": [0.9, 1.2, 0.87], "height": 0.87}, background={}, lighting={}, qa={})
        out.append(ss.save_manifest(m, scenes_dir / sid / "manifest.json"))
    return out


@pytest.fixture
def fake_world(tmp_path, monkeypatch):
    """5 fake scenes, a splits file (H_0 of 3 scenes) and scene_env.make_vec_env replaced by FakeVecEnv."""
    ids = [f"scene_{i}" for i in range(5)]
    fake_manifests(tmp_path / "scenes", ids)
    ev.main(ev.Args(make_splits=True, scenes_dir=str(tmp_path / "scenes"), num_splits=2, split_size=3, seed=7))
    made = []

    def make_vec_env(scenes, num_envs, cfg, seed=0, workers=None):
        made.append((Path(scenes[0]).parent.name, num_envs))
        return FakeVecEnv(Path(scenes[0]).parent.name, num_envs, cfg.chunk, cfg.max_decisions, kill=state)

    state = {}
    monkeypatch.setattr(ev.scene_env, "make_vec_env", make_vec_env)
    return {"root": tmp_path, "ids": ids, "made": made, "state": state,
            "args": dict(scenes_dir=str(tmp_path / "scenes"), splits_file=str(tmp_path / "scenes" / "splits.json"),
                         suite="generated", episodes_per_scene=6, max_decisions=5, latency=False,
                         render_videos=False)}  # a fake env has no ManiSkill env to record (see the sim test)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def _wilson_by_quadratic(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Independent formulation: the p solving (p_hat - p)^2 = z^2 p (1 - p) / n."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    d = math.sqrt(b * b - 4 * a * c)
    return ((-b - d) / (2 * a), (-b + d) / (2 * a))


def test_wilson_interval_known_values():
    # textbook values (e.g. Newcombe 1998, Table I; Brown, Cai & DasGupta 2001)
    assert ev.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert ev.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ev.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert ev.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    for k, n in [(1, 3), (37, 100), (99, 100), (500, 1000)]:
        assert ev.wilson_interval(k, n) == pytest.approx(_wilson_by_quadratic(k, n), abs=1e-9)
    assert ev.wilson_interval(0, 0) == (0.0, 1.0)


def test_make_splits_deterministic_disjoint_and_validated(tmp_path):
    ids = [f"s{i:02d}" for i in range(12)]
    a, b = ev.make_splits(ids, 3, 5, seed=1), ev.make_splits(ids, 3, 5, seed=1)
    assert a.splits == b.splits and ev.make_splits(ids, 3, 5, seed=2).splits != a.splits
    for sp in a.splits:
        assert len(sp["id"]) == 5 and len(set(sp["id"])) == 5
        assert not set(sp["id"]) & set(sp["ood"]) and sorted(sp["id"] + sp["ood"]) == ids
    assert len({tuple(sp["id"]) for sp in a.splits}) == 3  # different subsets H_i
    with pytest.raises(ValueError, match="split-size"):
        ev.make_splits(ids, 1, 13, seed=0)
    # the CLI mode writes a file scene_schema.load_splits accepts, the same for the same seed
    fake_manifests(tmp_path / "scenes", ids)
    for out in ("a.json", "b.json"):
        ev.main(ev.Args(make_splits=True, scenes_dir=str(tmp_path / "scenes"), splits_file=str(tmp_path / out),
                        num_splits=3, split_size=5, seed=1))
    loaded = ss.load_splits(tmp_path / "a.json")
    assert loaded.scenes == ids and loaded.size == 5 and loaded.splits == a.splits
    assert (tmp_path / "a.json").read_text() != "" and ss.load_splits(tmp_path / "b.json").splits == loaded.splits


def test_scene_sets_id_is_first_n_of_split():
    split = {"index": 0, "id": ["c", "a", "d"], "ood": ["b", "e"]}
    s = ev.scene_sets(["a", "b", "c", "d", "e"], ["simpler:X"], split, num_train=2)
    assert s == {"id": ["c", "a"], "ood": ["b", "e"], "all": ["a", "b", "c", "d", "e"], "simpler": ["simpler:X"]}
    assert ev.scene_sets(["a", "b"], [], None, None) == {"all": ["a", "b"]}
    assert ev.parse_n("N=10") == 10 and ev.parse_n("n = 3 (SE)") == 3 and ev.parse_n("scripted") is None


def _pol(name, label, sr, tf, n=10, scenes=5):
    k = round(sr * n)
    return {"name": name, "label": label, "num_train_scenes": ev.parse_n(label), "sets": {
        "all": {"episodes": n, "successes": k, "success_rate": k / n, "ci95": list(ev.wilson_interval(k, n)),
                "time_to_finish_s": tf, "time_to_finish_std_s": 0.0, "partial_success_rate": k / n, "scenes": scenes}}}


def test_group_runs_table_markdown_and_csv():
    rows = ev.group_runs([_pol("a", "N=1", 0.6, 8.0), _pol("b", "N=1", 0.8, 7.0), _pol("c", "random", 0.0, None)])
    assert [r["label"] for r in rows] == ["N=1", "random"]
    g = rows[0]["sets"]["all"]
    assert g["success_rate"] == pytest.approx(0.7) and g["success_rate_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert g["time_to_finish_s"] == pytest.approx(7.5) and g["runs"] == 2 and g["episodes"] == 20
    assert g["ci95"] == pytest.approx(list(ev.wilson_interval(14, 20)))
    md = ev.table_markdown(rows)
    assert "Gen all W (5) SR (%) ↑ | TF (s) ↓" in md
    assert "| N=1 (2 runs) | 70.0 ± 14.1 | 7.5 ± 0.7 |" in md
    assert "| random | 0.0 [0-28] | - |" in md
    table = list(csv.DictReader(io.StringIO(ev.table_csv(rows))))
    assert table[0]["policy"] == "N=1" and float(table[0]["all/success_rate"]) == pytest.approx(0.7)
    assert table[0]["all/runs"] == "2" and table[1]["all/time_to_finish_s"] == "" and table[1]["id/success_rate"] == ""


def test_random_actions_in_box_with_one_gripper_command_per_chunk():
    a = ev.random_actions(64, 4, np.random.default_rng(0))
    assert a.shape == (64, 4, 7) and np.all(np.abs(a[..., :6]) <= np.asarray(ev.RANDOM_ACTION_HIGH))
    assert set(np.unique(a[..., 6])) == {-1.0, 1.0} and np.all(a[:, :1, 6] == a[..., 6])


# ---------------------------------------------------------------------------------------------
# The episode loop and main() on the fake env
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_envs", [1, 4])
def test_run_scene_reports_every_episode_once_with_its_seed(num_envs):
    env, got = FakeVecEnv("s", num_envs), []
    todo = {("s", 10 + j) for j in range(7)}
    ev.run_scene(env, lambda obs: env.expert_actions(), "s", 7, 10, 5, todo, lambda r, f: got.append((r, f)),
                 record={("s", 10)})
    assert sorted(r["seed"] for r, _ in got) == list(range(10, 17))
    for r, frames in got:  # the fake expert fails exactly on seeds that are multiples of 3
        assert r["success"] == (r["seed"] % 3 != 0) and r["episode"] == r["seed"] - 10
        assert r["elapsed_s"] == (pytest.approx(0.8) if r["success"] else None)
        assert (frames is not None) == (r["seed"] == 10)
    frames = next(f for r, f in got if r["seed"] == 10)
    assert len(frames) == 2 and frames[-1][0, 0, 0] == 40  # first obs + the pre-reset final obs


def test_main_scripted_vs_random_report(fake_world):
    res = ev.main(ev.Args(policy=("scripted", "random"), out_dir=str(fake_world["root"] / "eval"), **fake_world["args"]))
    out = fake_world["root"] / "eval"
    pol = {p["name"]: p for p in res["policies"]}
    sp = ss.load_splits(fake_world["args"]["splits_file"]).splits[0]
    assert pol["scripted"]["scene_sets"]["id"] == sp["id"] and pol["scripted"]["scene_sets"]["ood"] == sp["ood"]
    s = pol["scripted"]["sets"]["all"]
    assert s["episodes"] == 30 and s["successes"] == 20 and s["time_to_finish_s"] == pytest.approx(0.8)  # seeds 0..5
    assert pol["random"]["sets"]["all"]["successes"] == 0
    assert set(pol["scripted"]["sets"]) == {"id", "ood", "all"} and len(pol["scripted"]["per_scene"]) == 5
    # every scene's env was made once for both policies (same env config), with min(num_envs, episodes) copies
    assert sorted(fake_world["made"]) == sorted([(s, 4) for s in fake_world["ids"]]) and res["envs_built"] == 5
    assert len(ss.read_jsonl(out / "episodes.jsonl")) == 60
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == ss.SCHEMA_VERSION and on_disk["args"]["episodes_per_scene"] == 6
    md = (out / "table.md").read_text()
    assert "| scripted | 66.7 [" in md and "| random | 0.0 [" in md and "Gen OOD (2)" in md
    assert (out / "table.csv").exists() and (out / "per_scene_0.png").stat().st_size > 1000
    assert json.loads((out / "args.json").read_text())["args"]["policy"] == ["scripted", "random"]
    vids = res["videos"]["scripted"]
    assert set(vids) == {"id", "ood", "all"} and all(Path(v).stat().st_size > 0 for v in vids.values())


def test_resume_after_kill_continues_without_duplicates(fake_world):
    args = dict(policy=("scripted",), **fake_world["args"])
    full = ev.main(ev.Args(out_dir=str(fake_world["root"] / "full"), **args))
    fake_world["state"].update(steps=0, stop_after=15)  # killed at the 16th step (in the 3rd scene)
    with pytest.raises(KeyboardInterrupt):
        ev.main(ev.Args(out_dir=str(fake_world["root"] / "part"), **args))
    log = fake_world["root"] / "part" / "episodes.jsonl"
    first = ss.read_jsonl(log)
    assert 0 < len(first) < 30 and not (fake_world["root"] / "part" / "results.json").exists()
    with open(log, "a") as f:  # a torn last line, as a crash mid-write leaves it
        f.write('{"policy": "scripted", "sce')
    fake_world["state"]["stop_after"] = None
    fake_world["made"].clear()
    resumed = ev.main(ev.Args(out_dir=str(fake_world["root"] / "part"), **args))
    records = ss.read_jsonl(log)
    keys = [(r["policy"], r["scene"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)) == 30 and records[:len(first)] == first  # appended, never rewritten
    done_scenes = {r["scene"] for r in first if sum(x["scene"] == r["scene"] for x in first) == 6}
    assert done_scenes and not done_scenes & {s for s, _ in fake_world["made"]}  # finished scenes not re-run
    assert resumed["policies"][0]["sets"] == full["policies"][0]["sets"]
    assert resumed["policies"][0]["per_scene"] == full["policies"][0]["per_scene"]


def test_changed_settings_are_not_mixed_into_resumed_results(fake_world):
    out = str(fake_world["root"] / "eval")
    ev.main(ev.Args(policy=("scripted",), out_dir=out, **fake_world["args"]))
    fake_world["made"].clear()
    res = ev.main(ev.Args(policy=("scripted",), out_dir=out, **{**fake_world["args"], "max_decisions": 3}))
    assert len(fake_world["made"]) == 5 and res["policies"][0]["sets"]["all"]["episodes"] == 30


# ---------------------------------------------------------------------------------------------
# Bad input fails before any episode
# ---------------------------------------------------------------------------------------------


def _fake_ckpt(path: Path, preset="tiny", **args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"schema_version": 1, "kind": "pi0_policy", "model_config": {"preset": preset, "chunk": 4},
                "args": args, "model": {}}, path)
    return path


def test_bad_input_fails_before_any_episode(fake_world):
    root, base = fake_world["root"], {**fake_world["args"], "out_dir": str(fake_world["root"] / "bad")}
    ck = _fake_ckpt(root / "runs" / "a" / "ckpt_final.pt")
    cases = [
        (dict(ckpt=[str(ck)], preset="pi0-3b"), r"preset 'tiny' disagrees with --preset 'pi0-3b'"),
        (dict(ckpt=[str(root / "runs" / "nope.pt")]), "checkpoint file does not exist"),
        (dict(policy=("scripted",), scene_ids=("scene_0", "scene_42")), "no composed scene .* scene_42"),
        (dict(policy=("scripted",), scene_ids=("simpler:NoSuchTask-v1",)), "unknown SimplerEnv task"),
        (dict(ckpt=[str(ck)], labels=["N=1", "N=2"]), "2 labels for 1 --ckpt"),
        (dict(policy=("scripted",), split_index=5), "split index 5 .* out of range"),
    ]
    corrupt = root / "runs" / "b" / "ckpt_final.pt"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(ck.read_bytes()[:200])
    cases.append((dict(ckpt=[str(corrupt)]), "cannot read the checkpoint"))
    for extra, msg in cases:
        with pytest.raises(SystemExit, match=msg):
            ev.main(ev.Args(**{**base, **extra}))
    assert fake_world["made"] == [] and not (root / "bad").exists()


# ---------------------------------------------------------------------------------------------
# The real simulator: the harness tells the scripted expert from a random policy
# ---------------------------------------------------------------------------------------------


def make_asset(assets_dir: Path, asset_id: str, shape: str, size, color, mass=0.05) -> ss.AssetRecord:
    """assets/<id>/{visual.glb, collision_0.obj, asset.json} (copied, trimmed, from test_scene_env.py)."""
    import trimesh

    mesh = trimesh.creation.box(extents=size) if shape == "box" else trimesh.creation.cylinder(
        radius=size[0] / 2, height=size[2], sections=24)
    mesh.apply_translation([0, 0, -mesh.bounds[0][2]])
    out = assets_dir / asset_id
    out.mkdir(parents=True, exist_ok=True)
    vis = mesh.copy()
    vis.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
        baseColorFactor=[int(255 * c) for c in color] + [255], metallicFactor=0.0, roughnessFactor=0.7))
    vis.export(out / "visual.glb")
    mesh.export(out / "collision_0.obj")
    rec = ss.AssetRecord(asset_id=asset_id, description=f"a {shape}", category=shape, backend="procedural", seed=0,
                         accepted=True, attempts=1, qa=[], scale=1.0, bbox_m=[float(x) for x in mesh.extents],
                         mass_kg=mass, friction=0.8, material="plastic", color_rgba=list(color) + [1.0],
                         paths={"visual": "visual.glb", "collision": ["collision_0.obj"]})
    ss.save_asset_record(rec, out / "asset.json")
    return rec


def make_sim_scene(scenes_dir: Path, assets_dir: Path, scene_id: str, block_xy, plate_xy, dr=0.02) -> Path:
    """A red block to put on a blue plate: graph, assets and a hand-written manifest (as compose writes one)."""
    objs = {"red_block": ("target", make_asset(assets_dir, f"{scene_id}-block", "box", (0.03, 0.03, 0.04), (0.85, 0.1, 0.1)),
                          block_xy),
            "blue_plate": ("destination", make_asset(assets_dir, f"{scene_id}-plate", "cylinder", (0.14, 0.14, 0.015),
                                                     (0.15, 0.3, 0.85), mass=0.2), plate_xy)}
    graph = ss.SceneGraph(scene_id=scene_id, task="put the red block on the blue plate", objects=[
        ss.SceneObject(name="red_block", role="target", category="block", description="a small red block",
                       size_m=[0.03, 0.03, 0.04], graspable=True),
        ss.SceneObject(name="blue_plate", role="destination", category="plate", description="a blue plate",
                       size_m=[0.14, 0.14, 0.015], receptacle="ON")], relations=[ss.Relation("red_block", "ON", "blue_plate")])
    ss.save_scene_graph(graph, scenes_dir / scene_id / "scene_graph.json")
    mobjs = [ss.ManifestObject(name=n, role=role, asset_id=rec.asset_id, asset_dir=str((assets_dir / rec.asset_id).resolve()),
                               visual="visual.glb", collision=["collision_0.obj"], scale=1.0, bbox_m=rec.bbox_m,
                               mass_kg=rec.mass_kg, friction=rec.friction, init_xyz=[x, y, 0.0], init_yaw=0.0,
                               x_range=[x - dr, x + dr], y_range=[y - dr, y + dr], yaw_range=[0.0, 0.0])
             for n, (role, rec, (x, y)) in objs.items()]
    m = ss.SceneManifest(scene_id=scene_id, task=graph.task, scene_graph="scene_graph.json", objects=mobjs,
                         success={"target": "red_block", "destination": "blue_plate", "relation": "ON"},
                         table={"size": [0.9, 1.2, 0.87], "color": [0.5, 0.35, 0.2, 1.0], "height": 0.87,
                                "center_xy": [0.3, 0.0]},
                         background={"floor_color": [0.3, 0.3, 0.3, 1], "wall_color": [0.8, 0.8, 0.75, 1]},
                         lighting={"ambient": [0.3, 0.3, 0.3], "directional": [[0, 0, -1, 2.2]]}, qa={})
    return ss.save_manifest(m, scenes_dir / scene_id / "manifest.json")


@pytest.mark.timeout(300)
def test_cli_scripted_expert_succeeds_and_random_fails_in_sim(tmp_path):
    scenes, assets = tmp_path / "scenes", tmp_path / "assets"
    make_sim_scene(scenes, assets, "block_plate", (0.26, 0.06), (0.33, -0.07))
    out = tmp_path / "eval"
    env = {**os.environ, "LP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "evaluate.py"), "--policy", "scripted", "random", "--scenes-dir", str(scenes),
           "--suite", "generated", "--episodes-per-scene", "3", "--num-envs", "1", "--out-dir", str(out),
           "--video-scenes", "1"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    pol = {q["name"]: q["sets"]["all"] for q in res["policies"]}
    assert pol["scripted"]["success_rate"] >= 2 / 3, pol
    assert pol["random"]["success_rate"] == 0.0, pol
    assert 0 < pol["scripted"]["time_to_finish_s"] < 20
    assert "| scripted |" in (out / "table.md").read_text() and res["videos"]["scripted"]["all"]
    # the recorded episode (first seed of the first scene) ran under ManiSkill's RecordEpisode: a real-time video of
    # the 640x480 render camera, one frame per control step, and a trajectory whose outcome is the logged one
    import imageio.v3 as iio

    logged = {(r["policy"], r["seed"]): r for r in ss.read_jsonl(out / "episodes.jsonl")}
    assert len(logged) == 6  # 3 episodes x 2 policies: the recorded one is not run twice
    for pol_name in ("scripted", "random"):
        (video,) = res["render_videos"][pol_name]
        meta = iio.immeta(video)
        frames = iio.imread(video)
        traj = json.loads((Path(video).parent / "trajectory.json").read_text())
        (ep,) = traj["episodes"]
        assert meta["fps"] == 5 and frames.shape[1:3] == (480, 640)
        assert len(frames) == ep["elapsed_steps"] + 1 and ep["episode_seed"] == 0
        assert ep["success"] == logged[(pol_name, 0)]["success"]


# ---------------------------------------------------------------------------------------------
# Real (tiny, random-weight) checkpoints through the same path, on the fake env
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_checkpoints_grouped_by_label_with_latency_and_sr_vs_n(fake_world):
    import ppoflow_pi0 as P

    root, splits = fake_world["root"], fake_world["args"]["splits_file"]
    paths = []
    for run, (split, n) in {"n1_s0": (0, 1), "n1_s1": (1, 1), "n3_s0": (0, 3)}.items():
        torch.manual_seed(len(paths))
        pol = P.PI0Policy(P.preset_config("tiny"), P.Normalizer.from_stats_file(P.DEFAULT_STATS), {"kind": "bytes"})
        args = {"splits_file": splits, "split_index": split, "num_train_scenes": n, "env": {"max_decisions": 4}}
        P.torch_save_atomic(P.policy_checkpoint(pol, iteration=1, args=args), root / "runs" / run / "ckpt_final.pt")
        paths.append(str(root / "runs" / run / "ckpt_final.pt"))
    a = {**fake_world["args"], "max_decisions": None, "episodes_per_scene": 2, "latency": True, "latency_ks": (1, 2),
         "latency_iters": 2}
    args = ev.Args(ckpt=paths, policy=("scripted",), **a)
    assert ev.default_out_dir(args, ev.resolve_policies(args)) == Path("runs/eval/n1_s0_n1_s1_n3_s0_scripted")
    assert ev.default_out_dir(ev.Args(ckpt=paths[:1]), []) == Path(paths[0]).parent / "eval"
    out = root / "cmp"
    res = ev.main(replace(args, out_dir=str(out)))
    pol = {p["name"]: p for p in res["policies"]}
    sp = ss.load_splits(splits)
    assert pol[os.path.normpath(paths[1])]["scene_sets"]["id"] == sp.splits[1]["id"][:1]  # split 1, N = 1
    assert pol[os.path.normpath(paths[2])]["scene_sets"]["id"] == sp.splits[0]["id"][:3]
    assert [r["label"] for r in res["table"]] == ["N=1", "N=3", "scripted"] and res["table"][0]["sets"]["all"]["runs"] == 2
    assert {(r["preset"], r["K"]) for r in res["latency"]} == {("tiny", 1), ("tiny", 2)}
    assert all(r["eager_s"] > 0 for r in res["latency"])
    # the checkpoint's own env settings are used (episode length 4 decisions from its args)
    eps = [r for r in ss.read_jsonl(out / "episodes.jsonl") if r["label"] == "N=3"]
    assert eps and max(r["decisions"] for r in eps) <= 4
    md = (out / "table.md").read_text()
    assert "| N=1 (2 runs) |" in md and "Inference latency" in md and "| tiny | 2 | 1 |" in md
    assert any(f.endswith("sr_vs_n.png") for f in res["figures"])


def test_detector_noise_of_a_state_policy_is_as_trained_unless_overridden_and_old_fingerprints_hold():
    from dataclasses import asdict

    noisy = {"obs_mode": "state", "image_size": 64, "object_state_noise_m": [0.036, 0.0075]}  # a checkpoint's JSON
    state = ev.PolicySpec(name="t", label="t", kind="checkpoint", model_config={"obs_mode": "state", "chunk": 4},
                          train_args={"env": noisy})
    pixel = ev.PolicySpec(name="p", label="p", kind="checkpoint", model_config={"obs_mode": "rgb", "chunk": 4},
                          train_args={"env": {"image_size": 64}})
    assert ev.env_config(ev.Args(), state).object_state_noise_m == (0.036, 0.0075)  # as trained
    exact = ev.Args(object_state_noise_m=(0.0, 0.0))
    assert ev.env_config(exact, state).object_state_noise_m == (0.0, 0.0)
    assert ev.env_config(exact, pixel).object_state_noise_m == (0.0, 0.0)  # a pixel policy: nothing to override
    keys = {ev.settings_key(state, ev.env_config(a, state), a) for a in (ev.Args(), exact)}
    assert len(keys) == 2  # the noise changes outcomes: its results are never mixed with exact-feature ones
    cfg = ev.env_config(exact, state)  # zero noise: the fingerprint evaluations had before the field existed
    old = {k: v for k, v in asdict(cfg).items()
           if k not in ("with_object_state", "object_state_noise_m", "object_state_noise_corr")}
    assert ev.settings_key(state, cfg, exact) == ss.content_hash(
        {"env": old, "deterministic": exact.deterministic, "kind": "checkpoint", "checkpoint": state.identity})
    # the noise's correlation between decisions: as trained, overridable, dropped with the noise
    correlated = replace(state, train_args={"env": {**noisy, "object_state_noise_corr": 0.8}})
    assert ev.env_config(ev.Args(), correlated).object_state_noise_corr == 0.8
    assert ev.env_config(exact, correlated).object_state_noise_corr == 0.0
    assert ev.env_config(ev.Args(object_state_noise_corr=0.5), state).object_state_noise_corr == 0.5
    with pytest.raises(ValueError, match="object-state-noise-corr"):  # a correlation of no noise: said, not ignored
        ev.env_config(ev.Args(object_state_noise_m=(0.0, 0.0), object_state_noise_corr=0.5), state)


def test_scene_major_loop_gives_each_policy_the_episodes_it_gets_alone(fake_world):
    both = ev.main(ev.Args(policy=("scripted", "random"), out_dir=str(fake_world["root"] / "both"), **fake_world["args"]))
    alone = {k: ev.main(ev.Args(policy=(k,), out_dir=str(fake_world["root"] / k), **fake_world["args"]))
             for k in ("scripted", "random")}
    for p in both["policies"]:
        assert p["per_scene"] == alone[p["name"]]["policies"][0]["per_scene"]


def test_resume_never_reuses_episodes_of_a_changed_scene_or_retrained_checkpoint(fake_world):
    import ppoflow_pi0 as P

    root = fake_world["root"]
    ck = root / "runs" / "a" / "ckpt_final.pt"
    args = ev.Args(ckpt=[str(ck)], out_dir=str(root / "e"), **{**fake_world["args"], "episodes_per_scene": 2})

    def train(seed):  # the same path, preset, iteration and file size: only the weights differ
        torch.manual_seed(seed)
        pol = P.PI0Policy(P.preset_config("tiny"), P.Normalizer.from_stats_file(P.DEFAULT_STATS), {"kind": "bytes"})
        P.torch_save_atomic(P.policy_checkpoint(pol, iteration=3, args={}), ck)

    train(0)
    ev.main(args)
    size = ck.stat().st_size
    train(1)
    assert ck.stat().st_size == size
    fake_world["made"].clear()
    ev.main(args)
    assert len(fake_world["made"]) == 5  # every scene ran again for the re-trained weights
    # a scene re-composed (new manifest content) is run again; the others are kept
    m = ss.load_manifest(root / "scenes" / "scene_1" / "manifest.json")
    m.objects[0].mass_kg = 0.07
    ss.save_manifest(m, root / "scenes" / "scene_1" / "manifest.json")
    fake_world["made"].clear()
    res = ev.main(args)
    assert [s for s, _ in fake_world["made"]] == ["scene_1"]
    assert res["policies"][0]["sets"]["all"]["episodes"] == 10  # stale episodes are not counted either


def test_a_broken_scene_is_reported_and_the_rest_evaluated(fake_world, monkeypatch):
    good = ev.scene_env.make_vec_env

    def flaky(scenes, num_envs, cfg, seed=0, workers=None):
        if "scene_2" in str(scenes[0]):
            raise RuntimeError("collision mesh missing")
        return good(scenes, num_envs, cfg, seed, workers)

    monkeypatch.setattr(ev.scene_env, "make_vec_env", flaky)
    res = ev.main(ev.Args(policy=("scripted",), out_dir=str(fake_world["root"] / "e"), **fake_world["args"]))
    assert res["errors"] == [{"policy": "scripted", "scene": "scene_2", "error": "RuntimeError: collision mesh missing"}]
    assert set(res["policies"][0]["per_scene"]) == {"scene_0", "scene_1", "scene_3", "scene_4"}
    assert res["policies"][0]["sets"]["all"]["episodes"] == 24


def test_resume_reruns_scenes_whose_asset_files_were_rebuilt(fake_world):
    """Issue 25: the manifest is the same byte for byte, the collision mesh it loads was rebuilt (a template edit)."""
    root = fake_world["root"]
    asset = root / "scenes" / "assets" / "x"  # the fake manifests' asset_dir ../assets/x
    asset.mkdir(parents=True)
    (asset / "v.glb").write_bytes(b"glb v1")
    (asset / "c.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    args = ev.Args(policy=("scripted",), out_dir=str(root / "e"), **{**fake_world["args"], "episodes_per_scene": 2})
    ev.main(args)
    fake_world["made"].clear()
    ev.main(args)
    assert fake_world["made"] == []  # nothing changed: every episode reused
    (asset / "c.obj").write_text("v 0 0 0\nv 2 0 0\nv 0 2 0\nf 1 2 3\n")
    res = ev.main(args)
    assert sorted(s for s, _ in fake_world["made"]) == fake_world["ids"]  # every scene loading it ran again
    assert res["policies"][0]["sets"]["all"]["episodes"] == 10
