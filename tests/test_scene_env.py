"""scene_env.py: GenScene-v1 shapes, Eq. A.1 success predicate, DR flags, scripted expert, SimplerEnv wrapping.

Simulation is slow on this machine, so one in-process env is built per module and reused across assertions.
The helpers below build tiny sim-ready assets (GLB with a PBR colour + convex OBJ parts + asset.json), scene
graphs and asset links the way generate_assets.py / scene_designer.py write them; test_compose_scene.py
imports them too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import scene_env  # noqa: E402
import scene_schema as ss  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Shared helpers: tiny assets, graphs, links, hand-written manifests
# ---------------------------------------------------------------------------------------------


def make_asset(assets_dir: Path, asset_id: str, shape: str, size, color, mass=0.05, friction=0.8) -> ss.AssetRecord:
    """Write assets/<id>/{visual.glb, collision_0.obj, asset.json}: metres, z up, base at z=0, centred in x/y."""
    import trimesh

    sx, sy, sz = size
    t = 0.006  # wall thickness of containers
    if shape == "box":
        parts = [trimesh.creation.box(extents=[sx, sy, sz])]
    elif shape == "cylinder":
        parts = [trimesh.creation.cylinder(radius=sx / 2, height=sz, sections=24)]
        parts[0].apply_scale([1.0, sy / sx, 1.0])
    elif shape == "bowl":  # open cylinder cup: a floor disc + 16 convex wall segments (hand-made decomposition)
        parts = [trimesh.creation.cylinder(radius=sx / 2, height=t, sections=24)]
        parts[0].apply_translation([0, 0, t / 2])
        for k in range(16):
            a = 2 * math.pi * k / 16
            w = trimesh.creation.box(extents=[t, math.pi * sx / 16 * 1.1, sz])
            w.apply_transform(trimesh.transformations.rotation_matrix(a, [0, 0, 1]))
            w.apply_translation([(sx / 2 - t / 2) * math.cos(a), (sx / 2 - t / 2) * math.sin(a), sz / 2])
            parts.append(w)
    elif shape == "basket":  # open box: floor + 4 walls
        parts = [trimesh.creation.box(extents=[sx, sy, t])]
        parts[0].apply_translation([0, 0, t / 2])
        for dx, dy, ex, ey in ((1, 0, t, sy), (-1, 0, t, sy), (0, 1, sx, t), (0, -1, sx, t)):
            w = trimesh.creation.box(extents=[ex, ey, sz])
            w.apply_translation([dx * (sx - t) / 2, dy * (sy - t) / 2, sz / 2])
            parts.append(w)
    else:
        raise ValueError(shape)
    mesh = trimesh.util.concatenate(parts)
    lo, hi = mesh.bounds
    shift = [-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]]
    mesh.apply_translation(shift)
    out = assets_dir / asset_id
    out.mkdir(parents=True, exist_ok=True)
    material = trimesh.visual.material.PBRMaterial(baseColorFactor=[int(255 * c) for c in color[:3]] + [255],
                                                   metallicFactor=0.0, roughnessFactor=0.7)
    vis = mesh.copy()
    vis.visual = trimesh.visual.TextureVisuals(material=material)
    vis.export(out / "visual.glb")
    collision = []
    for k, part in enumerate(parts):
        part.apply_translation(shift)
        part.export(out / f"collision_{k}.obj")
        collision.append(f"collision_{k}.obj")
    rec = ss.AssetRecord(asset_id=asset_id, description=f"a {shape}", category=shape, backend="procedural", seed=0,
                         accepted=True, attempts=1, qa=[], scale=1.0, bbox_m=[float(x) for x in mesh.extents],
                         mass_kg=mass, friction=friction, material="plastic", color_rgba=list(color[:3]) + [1.0],
                         paths={"visual": "visual.glb", "collision": collision})
    ss.save_asset_record(rec, out / "asset.json")
    return rec


def make_scene(scenes_dir: Path, assets_dir: Path, scene_id: str, target_size=(0.03, 0.03, 0.04),
               dest_size=(0.14, 0.14, 0.015), relation="ON", distractor=True, starts_solved=False,
               target_shape="box", dest_shape="cylinder", task="put the red block on the blue plate",
               colors=((0.85, 0.1, 0.1), (0.15, 0.3, 0.85)), background=None) -> Path:
    """A scene graph + asset links (+ the assets) like scene_designer.py and generate_assets.py write them."""
    objs = [ss.SceneObject(name="red_block", role="target", category="block", description="a small red block",
                           size_m=list(target_size), graspable=True),
            ss.SceneObject(name="blue_plate", role="destination", category="plate", description="a blue plate",
                           size_m=list(dest_size), receptacle=relation)]
    links = {"red_block": f"{scene_id}-block", "blue_plate": f"{scene_id}-plate"}
    make_asset(assets_dir, links["red_block"], target_shape, target_size, colors[0])
    make_asset(assets_dir, links["blue_plate"], dest_shape, dest_size, colors[1], mass=0.2)
    if distractor:
        objs.append(ss.SceneObject(name="green_can", role="distractor", category="can", description="a green can",
                                   size_m=[0.05, 0.05, 0.09]))
        links["green_can"] = f"{scene_id}-can"
        make_asset(assets_dir, links["green_can"], "cylinder", (0.05, 0.05, 0.09), (0.1, 0.7, 0.2), mass=0.1)
    rels = [ss.Relation("red_block", relation, "blue_plate")]
    if starts_solved:
        rels.append(ss.Relation("red_block", relation, "blue_plate", phase="initial"))
    graph = ss.SceneGraph(scene_id=scene_id, task=task, objects=objs, relations=rels, background=background or {})
    (scenes_dir / scene_id).mkdir(parents=True, exist_ok=True)
    # a starts-solved graph is written as a designer bug would write it: bypass nothing, the schema allows it
    ss.save_scene_graph(graph, scenes_dir / scene_id / "scene_graph.json")
    ss.write_json_atomic(scenes_dir / scene_id / "asset_links.json",
                         ss.AssetLinks(scene_id=scene_id, objects=links,
                                       assets_dir=os.path.relpath(assets_dir, scenes_dir / scene_id)))
    return scenes_dir / scene_id


def write_manifest(scene_dir: Path, assets_dir: Path, layout: dict[str, tuple[float, float]], dr_halfwidth=0.0,
                   target_size=None) -> Path:
    """Hand-written manifest (no compose): objects at `layout` (x, y) in the robot base frame."""
    graph = ss.load_scene_graph(scene_dir / "scene_graph.json")
    links = ss.load_asset_links(scene_dir / "asset_links.json")
    objs = []
    for o in graph.objects:
        if o.name not in links.objects:
            continue
        rec = ss.load_asset_record(assets_dir / links.objects[o.name])
        x, y = layout[o.name]
        objs.append(ss.ManifestObject(
            name=o.name, role=o.role, asset_id=rec.asset_id, asset_dir=str((assets_dir / rec.asset_id).resolve()),
            visual=rec.paths["visual"], collision=rec.paths["collision"], scale=1.0, bbox_m=rec.bbox_m,
            mass_kg=rec.mass_kg, friction=rec.friction, init_xyz=[x, y, 0.0], init_yaw=0.0,
            x_range=[x - dr_halfwidth, x + dr_halfwidth], y_range=[y - dr_halfwidth, y + dr_halfwidth],
            yaw_range=[0.0, 0.0]))
    goal = graph.goal
    m = ss.SceneManifest(scene_id=graph.scene_id, task=graph.task, scene_graph="scene_graph.json", objects=objs,
                         success={"target": goal.subject, "destination": goal.object, "relation": goal.relation},
                         table={"size": [0.9, 1.2, 0.87], "color": [0.5, 0.35, 0.2, 1.0], "height": 0.87,
                                "center_xy": [0.3, 0.0]},
                         background={"floor_color": [0.3, 0.3, 0.3, 1], "wall_color": [0.8, 0.8, 0.75, 1]},
                         lighting={"ambient": [0.3, 0.3, 0.3], "directional": [[0, 0, -1, 2.2], [-1, -0.5, -1, 0.7]]},
                         qa={})
    return ss.save_manifest(m, scene_dir / "manifest.json")


# ---------------------------------------------------------------------------------------------
# Pure helpers (no simulator)
# ---------------------------------------------------------------------------------------------


GYM_MAKE = """
import pickle, sys
import gymnasium as gym
import scene_env  # a plain import registers GenScene-v1 (module-level class) and starts no simulator
env = gym.make("GenScene-v1", manifests=[sys.argv[1]], num_envs=1, obs_mode="rgb", env_cfg=scene_env.EnvConfig(image_size=32))
obs, info = env.reset(seed=0)
assert isinstance(env.unwrapped, scene_env.GenSceneEnv) and type(env.unwrapped).__module__ == "scene_env"
assert pickle.loads(pickle.dumps(scene_env.GenSceneEnv)) is scene_env.GenSceneEnv
obs, rew, term, trunc, info = env.step(env.action_space.sample() * 0)
assert {"success", "partial_success", "elapsed_steps"} <= set(info), sorted(info)
print("ok", obs["sensor_data"][scene_env.CAMERA_UID]["rgb"].shape)
"""


@pytest.mark.timeout(180)
def test_gym_make_works_after_a_plain_import(tiny):
    _, man = tiny
    r = subprocess.run([sys.executable, "-c", GYM_MAKE, str(man)], capture_output=True, text=True, timeout=170, cwd=REPO)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_reaimed_camera_keeps_looking_at_the_table_point():
    p0, r0 = scene_env.camera_world_pose()
    hit = p0 + r0[:, 0] * (scene_env.TABLE_TOP_Z - p0[2]) / r0[0 + 2, 0]
    lp, lq = scene_env.reaimed_camera_local_pose([0.05, -0.04, 0.03], robot_z_offset=0.02)
    rb = scene_env.quat_to_mat(scene_env.ROBOT_POSE_Q)
    base = np.array(scene_env.ROBOT_POSE_P) + [0, 0, 0.02]
    p1, r1 = base + rb @ lp, rb @ scene_env.quat_to_mat(lq)
    assert np.allclose(p1, p0 + [0.05, -0.04, 0.03], atol=1e-6)
    ray = (hit - p1) / np.linalg.norm(hit - p1)
    assert np.allclose(r1[:, 0], ray, atol=1e-6)
    # zero offset reproduces the Bridge camera exactly
    lp0, lq0 = scene_env.reaimed_camera_local_pose([0, 0, 0])
    assert np.allclose(lp0, scene_env.CAMERA_LOCAL_P, atol=1e-6)
    assert np.allclose(np.abs(np.dot(lq0, scene_env.CAMERA_LOCAL_Q)), 1.0, atol=1e-6)


def test_sample_layout_disjoint_and_in_range():
    mk = lambda n, x, y: ss.ManifestObject(n, "target", n, ".", "v.glb", ["c.obj"], 1.0, [0.06, 0.06, 0.05], 0.1, 0.5,
                                           [x, y, 0], 0.0, [0.2, 0.4], [-0.15, 0.15], [0, 2 * math.pi])
    objs = [mk("a", 0.25, 0.0), mk("b", 0.35, 0.1), mk("c", 0.3, -0.1)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        poses = scene_env.sample_layout(objs, rng)
        for i in range(3):
            assert 0.2 <= poses[i][0] <= 0.4 and -0.15 <= poses[i][1] <= 0.15
            for j in range(i):
                assert math.hypot(poses[i][0] - poses[j][0], poses[i][1] - poses[j][1]) > 0.0848 + 0.01


def _mobj(name, bbox, xy=(0.3, 0.0), w=0.0):
    return ss.ManifestObject(name, "target", name, ".", "v.glb", ["c.obj"], 1.0, list(bbox), 0.1, 0.5,
                             [xy[0], xy[1], 0.0], 0.0, [xy[0] - w, xy[0] + w], [xy[1] - w, xy[1] + w], [0.0, 2 * math.pi])


TABLE = {"size": [0.9, 1.2, 0.87], "center_xy": [0.3, 0.0]}


def _box_corners_3d(box, height):
    """World points of a footprint box's prism (bottom and top corners), for project_to_image."""
    return np.concatenate([np.column_stack([scene_env.ROBOT_POSE_P[0] - box[:, 0], scene_env.ROBOT_POSE_P[1] - box[:, 1],
                                            np.full(4, scene_env.TABLE_TOP_Z + dz)]) for dz in (0.0, height)])


def _brute_clearance(a, b, n=200):
    """Signed-distance reference for two boxes by sampling: 0 if any sampled boundary point of one lies inside the
    other (or the boundaries cross), else the smallest distance between the sampled boundaries (>= the true
    distance, within the sampling step)."""
    from scipy.spatial.distance import cdist

    def boundary(c):
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        return np.concatenate([c[k] + t * (c[(k + 1) % 4] - c[k]) for k in range(4)])

    def inside(pts, c):  # convex, counter-clockwise corners: left of every edge
        e = np.roll(c, -1, axis=0) - c
        rel = pts[:, None, :] - c[None]
        return np.all(e[None, :, 0] * rel[..., 1] - e[None, :, 1] * rel[..., 0] >= 0, axis=1)

    pa, pb = boundary(a), boundary(b)
    if inside(pa, b).any() or inside(pb, a).any():
        return 0.0
    return float(cdist(pa, pb).min())


def test_box_clearance_is_the_distance_between_oriented_boxes():
    """The separating-axis clearance equals the Euclidean gap of apart boxes and is <= 0 for overlapping ones, on
    random boxes (thin, long, tiny, any yaw; many nearly touching) against a sampled brute force, and exactly on
    hand-made cases, corner to corner included (where edge normals alone would under-state the gap)."""
    rng = np.random.default_rng(0)
    apart = overlapping = 0
    for _ in range(1000):
        boxes, steps = [], []
        for _ in range(2):
            long_thin = np.array([rng.uniform(0.15, 0.3), rng.uniform(0.003, 0.02)])
            ext = rng.uniform(0.003, 0.25, 2) if rng.random() < 0.7 else long_thin
            boxes.append(scene_env.footprint_box(rng.uniform(-0.15, 0.15, 2), [*ext, 0.05], rng.uniform(0, 2 * math.pi)))
            steps.append(ext.max() / 200)
        a, b = boxes
        got, ref = scene_env.box_clearance(a, b), _brute_clearance(a, b)
        assert got == pytest.approx(scene_env.box_clearance(b, a), abs=1e-12)  # symmetric
        tol = max(steps) + 1e-9  # the sampled boundary is within one step of the true one
        if ref == 0.0:
            overlapping += 1
            assert got <= tol, (a, b, got)
        else:
            apart += 1
            assert ref - tol <= got <= ref + 1e-9, (a, b, got, ref)
    assert apart > 200 and overlapping > 200
    sq = lambda x, y, yaw=0.0: scene_env.footprint_box((x, y), [1.0, 1.0, 0.1], yaw)
    assert scene_env.box_clearance(sq(0, 0), sq(1.3, 0.2)) == pytest.approx(0.3)  # edge to edge
    assert scene_env.box_clearance(sq(0, 0), sq(1.1, 1.1)) == pytest.approx(0.1 * math.sqrt(2))  # corner to corner
    assert scene_env.box_clearance(sq(0, 0), sq(1.0, 0.5)) == pytest.approx(0.0, abs=1e-12)  # touching
    assert scene_env.box_clearance(sq(0, 0), sq(0.7, 0.0)) == pytest.approx(-0.3)  # overlapping by 0.3
    diamond = sq(0.5 + math.sqrt(0.5) + 0.2, 0.0, math.pi / 4)  # its corner 0.2 from the square's edge
    assert scene_env.box_clearance(sq(0, 0), diamond) == pytest.approx(0.2)


def test_table_region_draws_stay_in_region_visible_and_disjoint():
    """Issue 26: every draw (many seeds) puts each centre in Table A.2's box where the camera sees the object's
    footprint box at its drawn yaw (bottom and top), on the table, footprint boxes more than the margin apart, tall
    objects clear of the gripper's start, yaw over a full turn; the target covers the region."""
    objs = [_mobj("plate", [0.18, 0.18, 0.03]), _mobj("block", [0.04, 0.03, 0.05]), _mobj("can", [0.06, 0.06, 0.12]),
            _mobj("box", [0.08, 0.05, 0.05])]
    region = scene_env.object_region()
    assert region["x"] == [0.2, 0.4] and region["y"] == [-0.15, 0.15] and region["yaw"] == [0.0, 2 * math.pi]
    narrow_table = {"size": [0.45, 1.2, 0.87], "center_xy": [0.15, 0.0]}  # its far edge x = 0.375 cuts the region
    for table, seeds in ((TABLE, 300), (narrow_table, 40)):
        draws = []
        for seed in range(seeds):
            poses, fell_back = scene_env.sample_layout(objs, np.random.default_rng(seed), region=region, table=table,
                                                       with_fallback=True)
            assert not fell_back
            draws.append(poses)
            boxes = [scene_env.footprint_box((x, y), o.bbox_m, yaw) for o, (x, y, yaw) in zip(objs, poses)]
            for i, (x, y, yaw) in enumerate(poses):
                assert 0.2 <= x <= 0.4 and -0.15 <= y <= 0.15 and 0.0 <= yaw < 2 * math.pi
                uv = scene_env.project_to_image(_box_corners_3d(boxes[i], objs[i].bbox_m[2]))
                assert np.all((uv >= 6.0) & (uv <= [640 - 6.0, 480 - 6.0]))
                assert np.all(np.abs(boxes[i] - table["center_xy"]) <= 0.5 * np.array(table["size"][:2]))
                for j in range(i):
                    assert scene_env.box_clearance(boxes[i], boxes[j]) > region["margin_m"]
            # the tall can never stands under the gripper's start
            assert scene_env.point_box_distance(scene_env.EE_START_XY, poses[2][:2], objs[2].bbox_m, poses[2][2]) >= \
                scene_env.EE_KEEPOUT_M
        d = np.array(draws)  # [seeds, objects, 3]
        if table is TABLE:
            assert np.ptp(d[:, 1, 0]) > 0.18 and np.ptp(d[:, 1, 1]) > 0.27  # the target spans the region (0.2 x 0.3 m)
            assert np.ptp(d[:, 1, 2]) > 6.0
        else:  # the table's far edge (x = 0.375) clips the plate at its drawn yaw: its box reaches the edge, and
            # its centre goes past where the yaw-free bounding circle would stop it
            plate_far = max(scene_env.footprint_box(p[0][:2], objs[0].bbox_m, p[0][2])[:, 0].max() for p in draws)
            assert 0.365 < plate_far <= 0.375
            assert d[:, 0, 0].max() > 0.375 - 0.09 * math.sqrt(2) + 0.01
    # a manifest's own region narrows it (and is validated by the schema)
    small = {**region, "x": [0.25, 0.3], "y": [0.0, 0.1]}
    for seed in range(20):
        (x, y, _), = scene_env.sample_layout(objs[1:2], np.random.default_rng(seed), region=small)
        assert 0.25 <= x <= 0.3 and 0.0 <= y <= 0.1


def test_a_long_thin_target_beside_a_tray_places_without_falling_back():
    """The case circle footprints could not place (issue 26: `put the wrench on the tray` fell back to the nominal
    layout on 39 of 60 resets): a 20 x 3.6 cm wrench, a 19 x 15 cm tray and two distractors, the held-out scene's
    sizes. Oriented boxes find a disjoint layout over the whole region in >= 90% of resets."""
    objs = [_mobj("tray", [0.191, 0.145, 0.016]), _mobj("wrench", [0.2, 0.036, 0.006]),
            _mobj("muffin", [0.07, 0.036, 0.028]), _mobj("soap", [0.09, 0.057, 0.028])]
    region = scene_env.object_region()
    rad = [0.5 * math.hypot(*o.bbox_m[:2]) for o in objs]
    placed, circles_overlap, xy = 0, 0, []
    for seed in range(100):
        poses, fell_back = scene_env.sample_layout(objs, np.random.default_rng(seed), region=region, table=TABLE,
                                                   with_fallback=True)
        if fell_back:
            continue
        placed += 1
        xy.append(poses[1][:2])
        (tx, ty, _), (wx, wy, _) = poses[:2]
        circles_overlap += math.hypot(tx - wx, ty - wy) <= rad[0] + rad[1] + region["margin_m"]
    assert placed >= 90
    assert circles_overlap >= placed // 2  # most of these layouts were out of reach of the bounding circles
    assert np.all(np.ptp(np.array(xy), axis=0) > [0.15, 0.25])  # and the wrench still moves over the region


def _pre_issue26_sample_layout(objects, rng, tries=50, margin=0.01):
    """scene_env.sample_layout as it was before issue 26 (the reference of --env.object-region manifest)."""
    radius = [0.5 * math.hypot(o.bbox_m[0], o.bbox_m[1]) for o in objects]
    for _ in range(tries):
        poses = [(rng.uniform(*o.x_range), rng.uniform(*o.y_range), rng.uniform(*o.yaw_range)) for o in objects]
        if all(math.hypot(poses[i][0] - poses[j][0], poses[i][1] - poses[j][1]) > radius[i] + radius[j] + margin
               for i in range(len(objects)) for j in range(i)):
            return poses
    return [(o.init_xyz[0], o.init_xyz[1], o.init_yaw) for o in objects]


def test_different_seeds_move_the_target_and_narrow_boxes_keep_the_old_draws():
    objs = [_mobj("plate", [0.16, 0.16, 0.02], (0.33, -0.07), 0.01), _mobj("block", [0.03, 0.03, 0.04], (0.26, 0.06), 0.01),
            _mobj("can", [0.05, 0.05, 0.09], (0.38, 0.1), 0.01)]
    region = scene_env.object_region()
    far = [math.dist(scene_env.sample_layout(objs, np.random.default_rng(s), region=region)[1][:2],
                     scene_env.sample_layout(objs, np.random.default_rng(s + 1000), region=region)[1][:2])
           for s in range(100)]
    assert np.mean(np.array(far) >= 0.05) > 0.75  # two resets with different seeds: >= 5 cm apart in most draws
    # region None ("manifest"): the pre-issue-26 draw, the same numbers from the same RNG state, inside the boxes
    for s in range(20):
        old = scene_env.sample_layout(objs, np.random.default_rng(s))
        new, fell_back = scene_env.sample_layout(objs, np.random.default_rng(s), region=None, with_fallback=True)
        assert old == new and not fell_back
        assert new == _pre_issue26_sample_layout(objs, np.random.default_rng(s))
        assert all(o.x_range[0] <= p[0] <= o.x_range[1] and o.y_range[0] <= p[1] <= o.y_range[1]
                   for o, p in zip(objs, new))


def test_layout_fallback_is_reported_not_silent():
    """No disjoint layout fits: the draw says so (the env counts it); the fallback is the narrow boxes' draw."""
    objs = [_mobj("a", [0.25, 0.25, 0.05], (0.3, 0.0)), _mobj("b", [0.25, 0.25, 0.05], (0.3, 0.0))]
    poses, fell_back = scene_env.sample_layout(objs, np.random.default_rng(0), tries=5, region=scene_env.object_region(),
                                               with_fallback=True)
    assert fell_back and [p[:2] for p in poses] == [(0.3, 0.0), (0.3, 0.0)]
    poses, fell_back = scene_env.sample_layout(objs, np.random.default_rng(0), tries=5, with_fallback=True)
    assert fell_back  # the narrow boxes' own fallback (nominal layout) is reported too


def test_manifest_records_the_region_and_old_manifests_still_load(tmp_path):
    m = ss.SceneManifest(scene_id="s", task="t", scene_graph="g.json", objects=[_mobj("a", [0.03, 0.03, 0.04]),
                         _mobj("b", [0.1, 0.1, 0.02], (0.35, 0.05))], success={"target": "a", "destination": "b",
                         "relation": "ON"}, table=dict(TABLE), background={}, lighting={}, qa={})
    old = ss.load_manifest(ss.save_manifest(m, tmp_path / "old.json"))  # pre-issue-26: no region, hash as before
    raw = ss.read_json(tmp_path / "old.json")
    raw.pop("object_region")
    ss.write_json_atomic(tmp_path / "older.json", raw)  # written by the code before the field existed
    assert ss.load_manifest(tmp_path / "older.json").object_region == {} and old.object_region == {}
    assert scene_env.object_region(old) == scene_env.OBJECT_REGION
    m.object_region = dict(scene_env.OBJECT_REGION, x=[0.22, 0.38])
    back = ss.load_manifest(ss.save_manifest(m, tmp_path / "new.json"))
    assert back.object_region["x"] == [0.22, 0.38] and scene_env.object_region(back)["y"] == [-0.15, 0.15]
    raw = ss.read_json(tmp_path / "new.json")
    raw["object_region"]["x"] = [0.4, 0.2]
    raw["content_hash"] = ""
    ss.write_json_atomic(tmp_path / "bad.json", raw)
    with pytest.raises(ss.SchemaError, match="object_region.x"):
        ss.load_manifest(tmp_path / "bad.json")


def test_expert_presses_flat_targets_onto_the_table():
    """The grasp height: fingertips 1 mm above the table for a die, 4 mm into it for a 4 mm fork (pure planning)."""
    import torch

    c = scene_env.ExpertConfig()
    table = -0.02
    sizes = torch.tensor([[0.18, 0.024, 0.004], [0.016, 0.016, 0.016]])
    priv = dict(target_bottom=torch.tensor([[0.3, 0.0, table]] * 2), target_yaw=torch.zeros(2), target_size=sizes,
                dest_bottom=torch.tensor([[0.3, 0.15, table]] * 2), dest_size=torch.tensor([[0.15, 0.15, 0.02]] * 2),
                table_z=torch.full((2,), table), grasped=torch.zeros(2, dtype=torch.bool))
    expert = scene_env.ScriptedExpert(2)
    expert.reset()
    pos = torch.tensor([[0.3, 0.0, 0.1]] * 2)
    closing_yaw = torch.full((2,), math.pi / 2)  # already across the fork's narrow (y) axis
    for _ in range(40):  # one control step at a time, up to the end of the descent
        acts = expert.plan(priv, pos, closing_yaw, chunk=1)  # [2, 1, 7]
        pos = pos + acts[:, :, :3].sum(1)
        if bool((expert.phase > scene_env.DESCEND).all()):
            break
    tips = pos[:, 2] - c.finger_below_ee_m - table
    assert abs(float(tips[0]) + c.flat_press_m) < c.tol_m  # fork: pads pressed onto the table
    assert float(tips[1]) >= c.table_clearance_m - 1e-6  # die: above the table, pads around its middle
    # closing: the fork's pinch eases back to the table top (pressed, the fingers rub on it and stall) without
    # moving sideways; the die's stays where it is
    assert bool((expert.phase == scene_env.CLOSE).all())
    closing = expert.plan(priv, pos, closing_yaw, chunk=c.close_steps)
    assert bool((closing[:, :, 6] == -1).all()) and float(closing[:, :, :2].abs().max()) == 0.0
    rise = closing[:, :, 2].sum(1)
    assert float(rise[0]) == pytest.approx(c.close_rise_m, abs=c.tol_m) and c.close_rise_m > 0
    assert abs(float(rise[1])) < c.tol_m


def test_expert_keeps_the_palm_and_the_approach_clear_of_a_tall_target():
    """A 10 cm target 3 cm wide: the approach ends with the fingertips 2 cm over its top, and the grasp is high enough
    that the palm (18 mm above ee_gripper_link) stays palm_clearance_m over it; with palm_clears_top off, or for a
    6 cm wide one (not slender), the grasp is at the usual 3 cm (pure planning, one control step at a time)."""
    import torch

    table, h = -0.02, 0.10
    priv = dict(target_bottom=torch.tensor([[0.3, 0.0, table]]), target_yaw=torch.zeros(1),
                target_size=torch.tensor([[0.03, 0.03, h]]), target_height=torch.tensor([h]),
                dest_bottom=torch.tensor([[0.3, 0.15, table]]), dest_size=torch.tensor([[0.15, 0.15, 0.02]]),
                table_z=torch.full((1,), table), grasped=torch.zeros(1, dtype=torch.bool))

    def heights(cfg):  # ee height at the end of the approach and at the end of the descent
        expert = scene_env.ScriptedExpert(1, cfg)
        expert.reset()
        pos, out = torch.tensor([[0.3, 0.0, 0.3]]), {}
        for _ in range(80):
            ph = int(expert.phase[0])
            pos = pos + expert.plan(priv, pos, torch.zeros(1), chunk=1)[:, 0, :3]
            if int(expert.phase[0]) != ph:
                out[ph] = float(pos[0, 2])
            if int(expert.phase[0]) > scene_env.DESCEND:
                return out[scene_env.APPROACH], out[scene_env.DESCEND]
        raise AssertionError("the expert never finished its descent")

    c = scene_env.ExpertConfig()
    approach, grasp = heights(c)
    assert approach - c.finger_below_ee_m >= table + h + 0.02 - c.tol_m  # waypoints are reached within tol_m
    assert grasp + c.palm_above_ee_m == pytest.approx(table + h + c.palm_clearance_m, abs=c.tol_m)
    _, low = heights(dataclasses.replace(c, palm_clears_top=False))
    assert low == pytest.approx(table + 0.03, abs=c.tol_m) and low + c.palm_above_ee_m < table + h - 0.04  # it would hit
    priv["target_size"] = torch.tensor([[0.06, 0.06, h]])  # a pear: not slender, a palm on its top does not tip it
    assert heights(c)[1] == pytest.approx(table + 0.03, abs=c.tol_m)


def test_expert_turns_a_tilted_gripper_straight_down_before_the_grasp():
    """Joint noise tilts the gripper: the expert's roll/pitch deltas (base-frame axis-angle, as the align2 controller
    applies them) turn the approach axis (ee x) onto -z before it closes, and nothing while holding (pure planning)."""
    import torch
    from scipy.spatial.transform import Rotation

    table = -0.02
    priv = dict(target_bottom=torch.tensor([[0.3, 0.0, table]]), target_yaw=torch.zeros(1),
                target_size=torch.tensor([[0.18, 0.024, 0.004]]), dest_bottom=torch.tensor([[0.3, 0.15, table]]),
                dest_size=torch.tensor([[0.15, 0.15, 0.02]]), table_z=torch.full((1,), table),
                grasped=torch.zeros(1, dtype=torch.bool))
    down = Rotation.from_euler("y", 90, degrees=True)  # ee x -> -z: pointing straight down
    rot = Rotation.from_rotvec([0.18, -0.2, 0.0]) * down  # tilted by 0.27 rad
    expert = scene_env.ScriptedExpert(1)
    expert.reset()
    pos = torch.tensor([[0.3, 0.0, 0.1]])
    closing_yaw = torch.full((1,), math.pi / 2)
    tilts = []
    for _ in range(10):
        ax = torch.tensor(rot.apply([1.0, 0, 0])[None], dtype=torch.float32)
        acts = expert.plan(priv, pos, closing_yaw, chunk=4, approach_axis=ax)
        for a in acts[0]:
            assert float(a[3:5].norm()) <= scene_env.ExpertConfig().max_tilt_step + 1e-6
            rot = Rotation.from_rotvec(a[3:6].numpy()) * rot  # the controller: delta in the base's orientation
        pos = pos + acts[:, :, :3].sum(1)
        tilts.append(math.acos(-rot.apply([1.0, 0, 0])[2]))
        if bool((expert.phase > scene_env.DESCEND).all()):
            break
    assert tilts[0] < 0.27 and tilts[-1] < 0.02, tilts  # straight down before the close
    ax = torch.tensor(rot.apply([1.0, 0, 0])[None], dtype=torch.float32)
    held = expert.plan(priv, pos, closing_yaw, chunk=4, approach_axis=ax)
    assert float(held[0, :, 3:5].abs().max()) == 0.0  # closing / holding: no rotation


def test_expert_retries_a_lost_grasp_of_a_long_target_a_little_along_it():
    """A grasp lost after the close (phase LIFT, nothing held) restarts the approach at a point shifted along the
    target's long axis, +d then -d (pure planning)."""
    import torch

    c = scene_env.ExpertConfig()
    table = -0.02
    priv = dict(target_bottom=torch.tensor([[0.3, 0.0, table]]), target_yaw=torch.zeros(1),
                target_size=torch.tensor([[0.18, 0.024, 0.005]]), dest_bottom=torch.tensor([[0.3, 0.15, table]]),
                dest_size=torch.tensor([[0.15, 0.15, 0.02]]), table_z=torch.full((1,), table),
                grasped=torch.zeros(1, dtype=torch.bool))
    expert = scene_env.ScriptedExpert(1)
    expert.reset()
    pos = torch.tensor([[0.3, 0.0, 0.1]])
    goals = []
    for attempt in range(3):
        expert.phase[:] = scene_env.LIFT if attempt else scene_env.APPROACH  # LIFT without the target: lost
        acts = expert.plan(priv, pos, torch.full((1,), math.pi / 2), chunk=1)
        goals.append(float(pos[0, 0] + acts[0, 0, 0]))  # one step toward the approach point (x is the long axis)
    assert goals[0] == pytest.approx(0.3, abs=1e-6) and expert.retries.tolist() == [2]
    assert goals[1] > 0.3 and goals[2] < 0.3  # first retry +d, second -d
    assert goals[1] - 0.3 == pytest.approx(0.3 - goals[2], abs=1e-6)  # by the same distance d on either side
    expert.cfg = scene_env.ExpertConfig(retry_shift_m=0.0)
    acts = expert.plan(priv, pos, torch.full((1,), math.pi / 2), chunk=1)
    assert float(acts[0, 0, 0]) == pytest.approx(0.0, abs=1e-6) and c.retry_shift_m > 0  # 0: the same point


def test_parse_scene_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown SimplerEnv task"):
        scene_env.parse_scene("simpler:NoSuchTask-v1")
    with pytest.raises(ss.SchemaError, match="does not exist"):
        scene_env.parse_scene(tmp_path / "missing" / "manifest.json")


# ---------------------------------------------------------------------------------------------
# Simulator tests: one GenScene env reused
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("env")
    scenes, assets = root / "scenes", root / "assets"
    sd = make_scene(scenes, assets, "tiny_block")
    man = write_manifest(sd, assets, {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07), "green_can": (0.38, 0.1)},
                         dr_halfwidth=0.01)
    cfg = scene_env.EnvConfig(image_size=64, max_decisions=25)
    venv = scene_env.make_vec_env([man], 1, cfg, seed=0, workers=0)
    yield venv, man
    venv.close()


def _teleport(env, name, xyz_base, z_extra=0.0):
    import torch
    from mani_skill.utils.structs.pose import Pose

    p = scene_env.base_to_world([xyz_base[0], xyz_base[1], xyz_base[2] + z_extra])
    env.obj_actors[0][name].set_pose(Pose.create_from_pq(p=torch.tensor(p, dtype=torch.float32)[None],
                                                         q=torch.tensor([[0.0, 0, 0, 1]])))
    env.obj_actors[0][name].set_linear_velocity(torch.zeros(1, 3))


@pytest.mark.timeout(240)
def test_genscene_draws_object_poses_over_the_region_and_counts_fallbacks(tiny):
    """Issue 26 in the simulator: by default the target lands anywhere in Table A.2's region at each reset (>= 5 cm
    apart between seeds in most resets); --env.object-region manifest keeps the manifest's 1 cm boxes; a region no
    layout fits in falls back to the boxes and is counted in env.layout_stats."""
    venv, man = tiny
    env = venv.runner.env
    m = env.manifest(0)

    def block_xy():
        return (env.agent.robot.pose.inv() * env.obj_actors[0]["red_block"].pose).p[0, :2].numpy().astype(float)

    assert env.cfg.object_region == "table"
    xy = []
    for seed in range(10, 16):
        venv.reset(seed=seed)
        xy.append(block_xy())
    xy = np.array(xy)
    assert np.all((xy[:, 0] > 0.19) & (xy[:, 0] < 0.41) & (np.abs(xy[:, 1]) < 0.16))
    apart = [np.linalg.norm(xy[k] - xy[k + 1]) >= 0.05 for k in range(len(xy) - 1)]
    assert sum(apart) >= 3, xy
    before = dict(env.layout_stats)
    env.cfg.object_region = "manifest"
    try:
        for seed in (10, 11):
            venv.reset(seed=seed)
            x, y = block_xy()
            o = m.object("red_block")
            assert o.x_range[0] - 3e-3 <= x <= o.x_range[1] + 3e-3 and o.y_range[0] - 3e-3 <= y <= o.y_range[1] + 3e-3
        env.cfg.object_region = "table"
        m.object_region = {"x": [0.3, 0.3], "y": [0.0, 0.0]}  # no room for three objects: every draw falls back
        venv.reset(seed=12)
        x, y = block_xy()
        assert abs(x - 0.26) < 0.015 and abs(y - 0.06) < 0.015  # the narrow box around the nominal layout
    finally:
        env.cfg.object_region = "table"
        m.object_region = {}
    assert env.layout_stats["draws"] == before["draws"] + 3
    assert env.layout_stats["fallbacks"] == before["fallbacks"] + 1


@pytest.mark.timeout(240)
def test_genscene_reset_step_success_dr_and_expert(tiny):
    import torch

    venv, man = tiny
    obs, info0 = venv.reset(seed=1)
    assert info0 == {"scene_id": ["tiny_block"], "instruction": ["put the red block on the blue plate"]}
    assert obs["rgb"].shape == (1, 64, 64, 3) and obs["rgb"].dtype == torch.uint8
    assert obs["state"].shape == (1, 7) and obs["state"].dtype == torch.float32
    assert obs["instruction"] == ["put the red block on the blue plate"] and venv.scene_ids == ["tiny_block"]
    assert 0.2 < float(obs["state"][0, 0]) < 0.35 and float(obs["state"][0, 6]) > 0.9  # ee ahead of base, open
    obs, rew, term, trunc, info = venv.step(torch.zeros(1, venv.chunk, 7))
    assert rew.shape == term.shape == trunc.shape == (1,) and not term[0] and not trunc[0]
    assert abs(float(info["elapsed_s"][0]) - venv.chunk * 0.2) < 1e-6 and info["scene_id"] == ["tiny_block"]
    assert int(info["elapsed_steps"][0]) == venv.chunk and not info["success_once"][0] and not info["success_at_end"][0]

    env = venv.runner.env
    # Eq. A.1 predicate: block resting on the plate -> success; on the table -> no
    assert not bool(env.evaluate()["success"][0])
    plate_xy = (env.agent.robot.pose.inv() * env.obj_actors[0]["blue_plate"].pose).p[0, :2].tolist()  # drawn anywhere
    _teleport(env, "red_block", (*plate_xy, 0.016))
    for _ in range(100):
        env.scene.step()
    ev = env.evaluate()
    assert bool(ev["target_on_destination"][0]) and bool(ev["success"][0])
    # grasped by the robot while resting on the plate: contact with the robot -> not success
    runner = venv.runner
    runner.expert.reset()
    for _ in range(30):
        if int(runner.expert.phase[0]) == scene_env.LIFT:
            break
        env.step(runner.expert_actions(chunk=1)[:, 0])
    ev = env.evaluate()
    assert int(runner.expert.phase[0]) == scene_env.LIFT
    assert bool(ev["grasped"][0]) and bool(ev["target_touches_robot"][0]) and not bool(ev["success"][0])
    # the one-pass contact check equals ManiSkill's per-pair query for every pair (some in contact, some not)
    others = [env.destination, env.table, *env.robot_links]
    fast = env.target_contacts(others)
    slow = [env.contact(env.target, o) for o in others]
    assert [bool(x[0]) for x in fast] == [bool(x[0]) for x in slow] and 0 < sum(bool(x[0]) for x in slow) < len(slow)
    # the expert's grasp point is under the bbox centre, also for a target rolled on its side (its frame origin,
    # the unrolled bottom centre, then lies beside the centre)
    from mani_skill.utils.structs.pose import Pose

    h = float(env.target_size[0, 2])
    p = torch.tensor(scene_env.base_to_world([0.3, 0.0, h / 2]), dtype=torch.float32)[None]
    rolled = Pose.create_from_pq(p=p, q=torch.tensor([[math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0]]))
    env.target.set_pose(rolled)  # rolled 90 deg about its x axis: origin h/2 sideways, centre above (0.3, 0)
    priv = env.privileged_state()
    tb = priv["target_bottom"][0]
    centre = (env.agent.robot.pose.inv() * rolled * Pose.create_from_pq(p=torch.tensor([[0.0, 0.0, h / 2]]))).p[0]
    origin = (env.agent.robot.pose.inv() * rolled).p[0]
    assert torch.allclose(tb[:2], centre[:2], atol=1e-5) and float((origin[:2] - centre[:2]).norm()) > 0.4 * h
    # ... and its height and lowest point are those of the pose it is in: the 3 x 3 x 4 cm block on its side is
    # 3 cm high, its lowest point 1.5 cm below its frame origin (upright: 4 cm, at the origin)
    width = float(env.target_size[0, 1])
    assert float(priv["target_height"][0]) == pytest.approx(width, abs=1e-4) and width < h - 0.005
    assert float(tb[2]) == pytest.approx(float(origin[2]) - width / 2, abs=1e-4)
    upright = Pose.create_from_pq(p=p, q=torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    env.target.set_pose(upright)
    priv = env.privileged_state()
    assert float(priv["target_height"][0]) == pytest.approx(h, abs=1e-4)
    assert float(priv["target_bottom"][0, 2]) == pytest.approx(float((env.agent.robot.pose.inv() * upright).p[0, 2]),
                                                               abs=1e-4)

    # DR flags: lighting / camera / robot / object pose change with the seed only when enabled
    def snapshot():
        cam = env.camera_mount.pose.raw_pose[0].clone()  # the camera rides on it (what moves it on GPU too)
        assert torch.allclose(env._sensors[scene_env.CAMERA_UID].camera.get_global_pose().raw_pose[0], cam, atol=1e-5)
        return dict(amb=np.array(env.scene.sub_scenes[0].render_system.ambient_light), cam=cam,
                    base_z=float(env.agent.robot.pose.p[0, 2]), qpos=env.agent.robot.get_qpos()[0, :6].clone(),
                    block=env.obj_actors[0]["red_block"].pose.p[0, :2].clone())

    shots = []
    for seed in (3, 4):
        venv.reset(seed=seed)
        shots.append(snapshot())
    assert not np.allclose(shots[0]["amb"], shots[1]["amb"]) and not torch.allclose(shots[0]["cam"], shots[1]["cam"])
    assert shots[0]["base_z"] != shots[1]["base_z"] and not torch.allclose(shots[0]["qpos"], shots[1]["qpos"])
    assert not torch.allclose(shots[0]["block"], shots[1]["block"])
    env.cfg.dr_lighting = env.cfg.dr_camera = env.cfg.dr_robot = env.cfg.dr_object_pose = False
    try:
        shots = []
        for seed in (3, 4):
            venv.reset(seed=seed)
            shots.append(snapshot())
        assert np.allclose(shots[0]["amb"], shots[1]["amb"]) and torch.allclose(shots[0]["cam"], shots[1]["cam"])
        assert shots[0]["base_z"] == pytest.approx(scene_env.ROBOT_POSE_P[2])
        assert torch.allclose(shots[0]["qpos"], torch.tensor(scene_env.ROBOT_INIT_QPOS[:6]), atol=1e-4)
        assert torch.allclose(shots[0]["block"], shots[1]["block"], atol=2e-3)
    finally:
        env.cfg.dr_lighting = env.cfg.dr_camera = env.cfg.dr_robot = env.cfg.dr_object_pose = True

    # scripted expert solves the scene, with auto-reset and final_observation at the end
    obs, _ = venv.reset(seed=5)
    for _ in range(venv.max_decisions):
        acts = venv.expert_actions()
        assert acts.shape == (1, venv.chunk, 7) and acts[..., 6].abs().eq(1).all()
        obs, rew, term, trunc, info = venv.step(acts)
        if term[0] or trunc[0]:
            break
    assert bool(term[0]) and float(rew[0]) == 1.0 and bool(info["success"][0]) and bool(info["partial_success"][0])
    assert 1.0 < float(info["elapsed_s"][0]) < 20.0 and "final_observation" in info
    assert venv.cfg.success_check == "chunk" and int(info["elapsed_steps"][0]) % venv.chunk == 0  # checked at chunk ends
    assert info["final_observation"]["rgb"].shape == obs["rgb"].shape
    frame = venv.render_rgb()
    assert frame.shape == (1, 480, 640, 3) and frame.dtype == np.uint8 and frame.std() > 5


@pytest.mark.timeout(180)
def test_simpler_carrot_through_process_pool():
    import torch

    cfg = scene_env.EnvConfig(image_size=64, max_decisions=2)
    venv = scene_env.make_vec_env(["simpler:PutCarrotOnPlateInScene-v1"], 1, cfg, seed=0)  # 1 forkserver worker
    try:
        assert venv.pool is not None
        obs, _ = venv.reset(seed=0)
        assert obs["rgb"].shape == (1, 64, 64, 3) and obs["state"].shape == (1, 7)
        assert obs["instruction"] == ["put carrot on plate"]
        assert venv.scene_ids == ["simpler:PutCarrotOnPlateInScene-v1"]
        a = venv.expert_actions()
        assert a.shape == (1, cfg.chunk, 7)
        obs, rew, term, trunc, info = venv.step(a)
        assert not trunc[0]
        obs, rew, term, trunc, info = venv.step(torch.zeros(1, cfg.chunk, 7))
        assert bool(trunc[0]) and "final_observation" in info and info["final_observation"]["rgb"].shape == (1, 64, 64, 3)
        assert float(info["elapsed_s"][0]) == pytest.approx(2 * cfg.chunk * 0.2) and int(info["elapsed_steps"][0]) == 2 * cfg.chunk
    finally:
        venv.close()


@pytest.mark.parametrize("n_scenes,per_rank,world", [(4, 2, 2), (3, 2, 2), (100, 24, 8), (7, 1, 3), (1, 4, 2)])
def test_rank_scenes_assigns_by_global_env_index_and_covers_every_scene(n_scenes, per_rank, world):
    scenes = [f"s{k}" for k in range(n_scenes)]
    held = []
    for r in range(world):
        lst = scene_env.rank_scenes(scenes, per_rank, r, world)
        for i in range(per_rank):  # make_vec_env's rule: env i holds lst[i % len] and lst[i + k * per_rank]
            g = r * per_rank + i
            mine = lst[i::per_rank] if len(lst) > per_rank else [lst[i % len(lst)]]
            assert mine[0] == scenes[g % n_scenes]
            held += mine
    assert set(held) == set(scenes)
    if n_scenes >= per_rank * world:
        assert sorted(held, key=lambda s: int(s[1:])) == scenes  # each scene held by exactly one env
    with pytest.raises(ValueError):
        scene_env.rank_scenes(scenes, per_rank, world, world)


@pytest.mark.timeout(240)
def test_worker_pool_switches_generated_scenes_in_place(tmp_path):
    import torch

    scenes, assets = tmp_path / "scenes", tmp_path / "assets"
    a = write_manifest(make_scene(scenes, assets, "scene_a"), assets, {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07),
                                                                      "green_can": (0.38, 0.1)})
    b = write_manifest(make_scene(scenes, assets, "scene_b", task="put the blue block on the red plate",
                                  colors=((0.15, 0.3, 0.85), (0.85, 0.1, 0.1))), assets,
                       {"red_block": (0.3, -0.05), "blue_plate": (0.25, 0.1), "green_can": (0.38, 0.1)})
    cfg = scene_env.EnvConfig(image_size=32, max_decisions=3)
    venv = scene_env.make_vec_env([a], 1, cfg, seed=0)  # one forkserver worker
    fresh = scene_env.make_vec_env([b], 1, cfg, seed=0)
    try:
        pid = venv.pool.processes[0].pid
        venv.reset(seed=3)
        assert venv.can_load(str(b)) and not venv.can_load("simpler:PutCarrotOnPlateInScene-v1")
        venv.load_scenes([str(b)])
        obs, info = venv.reset(seed=3)
        ref, _ = fresh.reset(seed=3)
        assert info["scene_id"] == ["scene_b"] and obs["instruction"] == ["put the blue block on the red plate"]
        assert venv.pool.processes[0].pid == pid  # the same worker process
        assert torch.allclose(obs["state"], ref["state"], atol=1e-5)  # the same episode start as a freshly built env
        with pytest.raises(ValueError, match="generated scenes only"):
            venv.load_scenes(["simpler:PutCarrotOnPlateInScene-v1"])
    finally:
        venv.close()
        fresh.close()


@pytest.mark.timeout(300)
def test_recorded_expert_episode_replays_and_rerenders_at_another_size(tmp_path):
    """ManiSkill RecordEpisode through the chunk env: the trajectory re-renders, from its env states alone, the
    recorded policy frames exactly at the recorded size, and at another size; the video is the render camera at
    real time; a recording env refuses to switch scenes (its JSON holds this scene's kwargs)."""
    import h5py
    import imageio.v3 as iio

    import lerobot_format as lf

    scenes, assets = tmp_path / "scenes", tmp_path / "assets"
    man = write_manifest(make_scene(scenes, assets, "rec_block"), assets,
                         {"red_block": (0.26, 0.06), "blue_plate": (0.33, -0.07), "green_can": (0.38, 0.1)},
                         dr_halfwidth=0.01)
    cfg = scene_env.EnvConfig(image_size=32, max_decisions=25)
    rec = scene_env.Recording(str(tmp_path / "rec"), video=True, source="scripted expert")
    venv = scene_env.make_vec_env([man], 1, cfg, seed=0, workers=0, record=rec)
    try:
        assert not venv.can_load(str(man))
        with pytest.raises(ValueError, match="make a new env"):
            venv.runner.load_manifests([str(man)])
        venv.reset(seed=7)
        for _ in range(cfg.max_decisions):
            _, _, term, trunc, info = venv.step(venv.expert_actions())
            if bool(term[0] | trunc[0]):
                break
        success = bool(info["success"][0])
    finally:
        venv.close()
    meta = json.loads((tmp_path / "rec/trajectory.json").read_text())
    (ep,) = meta["episodes"]  # the auto-reset episode after it has no step and is not written
    assert ep["episode_seed"] == 7 and ep["success"] == success and meta["env_info"]["env_id"] == "GenScene-v1"
    with h5py.File(tmp_path / "rec/trajectory.h5") as f:
        recorded = np.asarray(f["traj_0/obs/sensor_data"][scene_env.CAMERA_UID]["rgb"])
        actions = np.asarray(f["traj_0/actions"])
    assert len(actions) == ep["elapsed_steps"] and len(actions) % cfg.chunk == 0
    (same,) = scene_env.rerender(tmp_path / "rec/trajectory.h5", 32)
    assert np.array_equal(same["rgb"], recorded) and np.array_equal(same["actions"], actions)
    assert same["instruction"] == "put the red block on the blue plate" and same["scene_id"] == "rec_block"
    (big,) = scene_env.rerender(tmp_path / "rec/trajectory.h5", 48)
    assert big["rgb"].shape == (len(actions) + 1, 48, 48, 3) and np.allclose(big["state"], same["state"])
    video = tmp_path / "rec/0.mp4"
    assert iio.immeta(video)["fps"] == cfg.control_freq and iio.imread(video).shape[1:3] == (480, 640)
    # a LeRobotDataset at another image size from the trajectory: one frame per decision, its action chunk
    eps = lf.episodes_from_trajectories([tmp_path / "rec/trajectory.h5"], 40, cfg.chunk)
    assert len(eps) == int(success) and (not eps or eps[0]["rgb"].shape == (len(actions) // cfg.chunk, 40, 40, 3))
    if eps:
        assert np.array_equal(eps[0]["action"].reshape(-1, 7), actions)
    # the same through the CLI a user runs, read back as a dataset
    r = subprocess.run([sys.executable, "lerobot_format.py", "--trajectories", str(tmp_path / "rec/trajectory.h5"),
                        "--out", str(tmp_path / "ds40"), "--image-size", "40", "--no-success-only"],
                       cwd=REPO, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (back,) = lf.read_dataset(tmp_path / "ds40")
    assert back["rgb"].shape[1:] == (40, 40, 3) and back["task"] == same["instruction"]
    r = subprocess.run([sys.executable, "lerobot_format.py", "--trajectories", str(tmp_path / "nope.h5"), "--out",
                        str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "nope.h5" in r.stderr and "fix:" in r.stderr


def test_sim_devices_give_each_torchrun_rank_its_own_gpu(monkeypatch):
    sd = scene_env.sim_devices
    assert sd("auto", cuda=False) == ("physx_cpu", "cpu")
    assert sd("auto", cuda=True, local_rank=3) == ("physx_cuda:3", "cuda:3")  # not every rank on cuda:0
    assert sd("physx_cuda:1", cuda=True, local_rank=3) == ("physx_cuda:1", "cuda:1")  # an explicit index is kept
    assert sd("physx_cpu", cuda=True, local_rank=2) == ("physx_cpu", "cuda:2")  # CPU physics, this rank's renderer
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert sd("physx_cuda", cuda=True) == ("physx_cuda:5", "cuda:5")
    with pytest.raises(ValueError, match="needs CUDA"):
        sd("physx_cuda", cuda=False)
    with pytest.raises(ValueError, match="physx_cuda:<device index>"):
        sd("cuda_magic", cuda=True)
