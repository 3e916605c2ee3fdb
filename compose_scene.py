"""Scene graph + assets -> a physically checked, provably solvable ManiSkill scene (`manifest.json`).

    python compose_scene.py --scenes-dir scenes --assets-dir assets
    python compose_scene.py --scenes-dir scenes --assets-dir assets --workers 2 --force --scene-ids put_the_pen_in_the_cup

For every `scenes/<id>/scene_graph.json` + `asset_links.json`:
1. Graph and asset checks: the goal exists, the start is not solved, the target fits between the open fingers
   (52 mm between the Bridge WidowX's finger pads; oversized targets are scaled down by their bounding box, up to
   `--min-rescale`, beyond that: rejected), targets too thin or flat to hold (pens, forks) are scaled up within
   `--max-upscale`, and oversized destinations (40-50 cm trays, towels) are scaled into the workspace.
2. Layout: destination, target and distractors on the table with disjoint footprints (bbox circles + margin),
   centres inside Table A.2's x [0.2, 0.4] m, y [-0.15, 0.15] m of the robot base frame (SimplerEnv's Bridge
   objects sit at x 0.23-0.38 m there) and every bbox corner inside the Bridge camera image: the nominal layout
   (QA renders, videos). The manifest records the region the env draws every object over at each reset
   (`object_region`, scene_env.OBJECT_REGION); the per-object narrow boxes around the nominal layout, chosen so
   any draw in them stays disjoint, remain for `--env.object-region manifest` and as the env's counted fallback. Background (table size/colour, floor, walls) and
   lighting are drawn per scene from a seeded palette, honouring colour words in the graph's `background`.
3. Physics QA in SAPIEN (GenScene-v1): objects settle without drifting, tipping, interpenetrating, touching or
   falling off, and the goal does not hold at the start. A failing layout is re-sampled.
4. Solvability QA: the scripted expert runs `--solver-attempts` seeded, fully randomised episodes (each a new
   layout over the whole region with the default `--object-region table`; the summary says which) and must succeed
   in --solver-min-successes of them (a majority); else the target is re-scaled (grasp failures: thin ones up, wide ones down) or the layout
   re-placed, then rejected. A crowded table first loses its largest distractors, then the destination (and a long
   target) shrink to make room.
Writes scenes/<id>/manifest.json + qa_render.png (640x480 Bridge camera), scenes/compose_summary.json and
scenes/qa_contact_sheet.png. Re-runs skip composed scenes unless --force.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

import scene_env
import scene_schema as ss


@dataclass
class Args:
    scenes_dir: str = "scenes"
    """Folder with scenes/<id>/scene_graph.json and asset_links.json (scene_designer.py, generate_assets.py)."""
    assets_dir: str = "assets"
    """Asset folder (used when an asset_links.json's own assets_dir does not resolve)."""
    scene_ids: list[str] | None = None
    """Compose only these scene ids (default: every scene folder with a scene graph)."""
    workers: int = 1
    """Parallel worker processes (one simulator each)."""
    force: bool = False
    """Re-compose scenes that already have a manifest.json."""
    seed: int = 0
    """Base seed; each scene's layouts and QA episodes derive from it and the scene id."""
    layout_tries: int = 6
    """Layouts sampled per scene before rejecting it (each one physics-checked)."""
    solver_attempts: int = 3
    """k seeded, fully randomised scripted-expert episodes per layout (the solvability test)."""
    solver_min_successes: int = 2
    """Successful episodes (of --solver-attempts, capped at k) a layout needs to be accepted: a majority by
    default, so accepted scenes are reliably solvable, not solvable by luck (the paper's bar is >= 1)."""
    solver_stop_early: bool = False
    """Stop the solver test once --solver-min-successes episodes succeeded (faster; the summary's expert success
    rate then counts less)."""
    min_rescale: float = 0.45
    """Smallest uniform scale applied to fix an oversized target; below it the scene is rejected (0.45: targets up
    to 84 mm across shrink into the 38 mm grip)."""
    max_upscale: float = 1.8
    """Largest uniform scale applied to fix a target too thin or flat for the fingers to hold."""
    dest_min_rescale: float = 0.35
    """Smallest uniform scale that shrinks an oversized destination (trays, towels, boards are often 40-50 cm)
    into the 0.2 x 0.3 m workspace; below it the scene is rejected."""
    margin_m: float = 0.015
    """Free space between object footprints (bbox circles) in a layout."""
    drift_tol_m: float = 0.015
    """Settle test: largest allowed xy drift of an object placed on the table."""
    tilt_tol_deg: float = 15.0
    """Settle test: largest allowed tilt of an object's up axis after settling, for objects whose height changes
    when they tilt (a lemon or pen rolling in place keeps its height and is fine; a bottle falling over is not)."""
    height_tol: float = 0.2
    """Settle test: an object "tipped over" when its height above the table changed by more than this fraction
    (and more than 8 mm) while settling."""
    render: bool = True
    """Write qa_render.png per scene and scenes/qa_contact_sheet.png."""
    object_region: Literal["table", "manifest"] = "table"
    """Object-pose DR of the solvability QA's episodes (scene_env.EnvConfig.object_region): "table" draws every
    object over Table A.2's region at each reset (issue 26), "manifest" the narrow boxes around the nominal layout
    (the pre-issue-26 QA, for comparison). Manifests record the region either way."""

    @property
    def out_summary(self) -> Path:
        return Path(self.scenes_dir) / "compose_summary.json"


# The WidowX's 74 mm is its outer opening: the collision hulls of the open Bridge fingers leave a 52 mm gap between
# their inner faces (measured in SAPIEN at qpos 0.037). A 6 cm tomato does not fit between them at all.
FINGER_GAP_OPEN_M = 0.052
GRIP_LIMIT_M = FINGER_GAP_OPEN_M - 0.006  # narrowest horizontal extent the open fingers close around reliably
# Oversized targets are scaled so their narrow side is this wide: 7 mm of play per finger. At 42 mm a cube that
# yawed a little while being placed jammed diagonally between the opened fingers (42 mm * (cos + sin) > 52 mm past
# 13 deg) and was carried off again (stacking failed 1/3); at 38 mm it must yaw > 25 deg to jam.
GRIP_FIT_M = 0.038
MAX_TARGET_LENGTH_M = 0.2  # up-scaling a thin target stops at this longest side (a fork must stay fork-sized)
# The Bridge WidowX fingers close to a ~6 mm gap and their hulls taper at the tips: thinner or flatter targets (pens,
# keys, cookies) slip out when lifted. Measured with the scripted expert: a 11 x 13 mm pen fails 0/2, scaled to
# 14 x 17 mm it succeeds 2/2. Such targets are scaled up (the paper's "re-scale" fix) within --max-upscale.
MIN_GRASP_WIDTH_M = 0.014
MIN_GRASP_HEIGHT_M = 0.016
# Success (Eq. A.1) reads simulator contacts above scene_env.CONTACT_FORCE_N (0.05 N): a target resting under its
# own weight must weigh > 5.1 g to register at all. A 16 mm plastic die (3.9 g) or a foam sponge scaled to fit the
# gripper (1.8 g) lay in the cup / sink with no detectable contact, so the expert "never placed" them. Targets get
# at least 20 g (a dry kitchen sponge or a die in the hand weighs 5-20 g; 4x margin over the threshold).
MIN_TARGET_MASS_KG = 0.02
DEST_MAX_FOOTPRINT_M = 0.24  # destination bbox diagonal that still leaves room in the 0.2 x 0.3 m workspace
COLORS = {"red": (0.75, 0.15, 0.12), "green": (0.2, 0.55, 0.25), "blue": (0.2, 0.35, 0.7), "white": (0.92, 0.92, 0.9),
          "black": (0.12, 0.12, 0.12), "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5), "brown": (0.45, 0.3, 0.18),
          "wood": (0.55, 0.38, 0.22), "wooden": (0.55, 0.38, 0.22), "yellow": (0.85, 0.75, 0.3),
          "beige": (0.8, 0.72, 0.58), "orange": (0.85, 0.45, 0.15), "dark": (0.2, 0.18, 0.16)}
TABLE_PALETTE = [(0.55, 0.38, 0.22), (0.62, 0.45, 0.3), (0.42, 0.28, 0.17), (0.85, 0.85, 0.82), (0.35, 0.35, 0.37),
                 (0.7, 0.6, 0.45), (0.25, 0.2, 0.18)]


# ---------------------------------------------------------------------------------------------
# Pure helpers: sizes, layout, camera visibility, background
# ---------------------------------------------------------------------------------------------


def footprint_radius(bbox) -> float:
    return 0.5 * math.hypot(bbox[0], bbox[1])


project_to_image = scene_env.project_to_image  # one definition of "the camera sees it" (the env draws with it too)


def in_view(xy, yaw_free_radius: float, height: float, margin_px: float = 6.0) -> bool:
    """The object's bounding cylinder (footprint circle at any yaw, bottom and top rims) projects inside the
    640x480 image."""
    return scene_env.footprint_in_view(xy, yaw_free_radius, height, margin_px)


EE_START_XY, TALL_M, EE_KEEPOUT_M = scene_env.EE_START_XY, scene_env.TALL_M, scene_env.EE_KEEPOUT_M


def sample_layout(bboxes: list[list[float]], rng: np.random.Generator, margin: float, tries: int = 300):
    """Nominal (x, y) per object (destination first, target second, then distractors) with disjoint footprint
    circles, centres in Table A.2's ranges and inside the camera view, tall objects clear of the gripper's start.
    None if no layout is found."""
    (x0, x1), (y0, y1) = ss.OBJECT_X_RANGE_M, ss.OBJECT_Y_RANGE_M
    placed: list[tuple[float, float]] = []
    for i, b in enumerate(bboxes):
        r = footprint_radius(b)
        for _ in range(tries):
            p = (rng.uniform(x0, x1), rng.uniform(y0, y1))
            if b[2] >= TALL_M and math.hypot(p[0] - EE_START_XY[0], p[1] - EE_START_XY[1]) < r + EE_KEEPOUT_M:
                continue
            if all(math.hypot(p[0] - q[0], p[1] - q[1]) > r + footprint_radius(bboxes[j]) + margin
                   for j, q in enumerate(placed)) and in_view(p, r, b[2]):
                placed.append(p)
                break
        else:
            return None
    return placed


def target_rescale(bbox, args: Args) -> tuple[float, str | None, str | None]:
    """(scale, note, reject reason) that makes a target graspable: the paper's "object too large" case (narrow side
    wider than the usable opening: scale down, or reject below --min-rescale) and its converse (too thin or flat for
    the fingers to hold: scale up within --max-upscale, never past the usable opening)."""
    narrow, height = min(bbox[0], bbox[1]), bbox[2]
    if narrow > GRIP_LIMIT_M:
        s = GRIP_FIT_M / narrow
        if s < args.min_rescale:
            return 1.0, None, (f"too large to grasp: narrowest side {narrow * 100:.1f} cm > {GRIP_LIMIT_M * 100:.1f} cm "
                               f"usable gripper opening, and scaling it by {s:.2f} would go below --min-rescale "
                               f"{args.min_rescale}")
        return s, f"target scaled by {s:.2f} to fit the {FINGER_GAP_OPEN_M * 1000:.0f} mm gap of the open fingers", None
    if narrow < MIN_GRASP_WIDTH_M or height < MIN_GRASP_HEIGHT_M:
        # ALGO LOGIC: too thin / flat for the fingers: scale up, never past the usable opening or --max-upscale
        s = min(max(MIN_GRASP_WIDTH_M / narrow, MIN_GRASP_HEIGHT_M / height), args.max_upscale, GRIP_FIT_M / narrow,
                MAX_TARGET_LENGTH_M / max(bbox[0], bbox[1]))
        if s > 1.0:
            return s, (f"target scaled by {s:.2f}: {narrow * 1000:.0f} x {height * 1000:.0f} mm (width x height) is too "
                       f"thin for the fingers to hold"), None
    return 1.0, None, None


def object_mass(asset_mass_kg: float, scale: float, role: str) -> float:
    """Mass after a uniform re-scale (volume: s^3); targets never go below MIN_TARGET_MASS_KG (contact sensing)."""
    m = asset_mass_kg * scale ** 3
    return max(m, MIN_TARGET_MASS_KG) if role == "target" else m


def dr_halfwidth(xy: list[tuple[float, float]], bboxes, margin: float, cap: float = 0.04) -> float:
    """Largest per-object x/y DR half-width w such that every randomised layout stays disjoint: each centre moves
    at most w*sqrt(2), so pairs need gap >= 2*sqrt(2)*w."""
    w = cap
    for i in range(len(xy)):
        for j in range(i):
            gap = math.hypot(xy[i][0] - xy[j][0], xy[i][1] - xy[j][1]) - footprint_radius(bboxes[i]) \
                - footprint_radius(bboxes[j]) - margin
            w = min(w, max(gap, 0.0) / (2 * math.sqrt(2)))
    return w if w >= 0.004 else 0.0


def dr_ranges(x: float, y: float, w: float, radius: float, height: float) -> tuple[list[float], list[float]]:
    """x/y ranges of half-width w around (x, y), clipped to Table A.2 and to positions the camera still sees."""
    (x0, x1), (y0, y1) = ss.OBJECT_X_RANGE_M, ss.OBJECT_Y_RANGE_M
    xr, yr = [max(x0, x - w), min(x1, x + w)], [max(y0, y - w), min(y1, y + w)]
    for _ in range(8):  # shrink towards the nominal point until all corners are visible
        if all(in_view((cx, cy), radius, height) for cx in xr for cy in yr):
            return xr, yr
        xr, yr = [(v + x) / 2 for v in xr], [(v + y) / 2 for v in yr]
    return [x, x], [y, y]


def _color_word(bg: dict, *keys: str):
    """First colour word found under any of `keys` of a free-form background dict (strings or nested dicts)."""
    for k in keys:
        v = bg.get(k)
        text = " ".join(str(x) for x in v.values()) if isinstance(v, dict) else str(v or "")
        for word in text.lower().replace("-", " ").split():
            if word in COLORS:
                return COLORS[word]
    return None


def make_background(graph: ss.SceneGraph, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """(table, background, lighting) for a manifest: seeded variation, colour words from the graph honoured."""
    bg = graph.background or {}
    jitter = lambda c: [float(np.clip(v + rng.uniform(-0.05, 0.05), 0, 1)) for v in c] + [1.0]
    table_rgb = _color_word(bg, "table", "table_color", "table_style") or TABLE_PALETTE[rng.integers(len(TABLE_PALETTE))]
    sx, sy = rng.uniform(0.8, 1.1), rng.uniform(1.0, 1.6)
    cx = rng.uniform(0.55 - sx / 2 + 0.05, sx / 2 - 0.1)  # spans the robot base (x<=-0.05) and the workspace (x>=0.55)
    table = {"size": [sx, sy, scene_env.TABLE_TOP_Z], "height": scene_env.TABLE_TOP_Z, "center_xy": [cx, rng.uniform(-0.1, 0.1)],
             "color": jitter(table_rgb)}
    floor = _color_word(bg, "floor", "floor_color") or tuple(rng.uniform(0.2, 0.6, 3))
    wall = _color_word(bg, "walls", "wall", "wall_color") or tuple(rng.uniform(0.55, 0.95, 3))
    background = {"floor_color": jitter(floor), "wall_color": jitter(wall), "wall_distance": float(rng.uniform(1.0, 1.6))}
    dim = "dim" in str(bg.get("lighting", "")).lower()
    amb = float(rng.uniform(0.15, 0.25) if dim else rng.uniform(0.25, 0.45))
    top = float(rng.uniform(1.4, 1.8) if dim else rng.uniform(1.9, 2.6))
    lighting = {"ambient": [amb] * 3, "directional": [[float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)), -1.0, top],
                                                      [-1.0, -0.5, -1.0, 0.7], [1.0, 1.0, -1.0, 0.7]]}
    return table, background, lighting


def resolve_links_assets(scene_dir: Path, links: ss.AssetLinks, fallback: Path) -> Path:
    d = Path(links.assets_dir)
    d = d if d.is_absolute() else (scene_dir / d)
    return d.resolve() if d.is_dir() else fallback.resolve()


# ---------------------------------------------------------------------------------------------
# Composing one scene (runs in a worker process; one simulator per process, reused across scenes)
# ---------------------------------------------------------------------------------------------

_RUNNER = None


def _runner(manifest: Path):
    """This process's in-process GenScene env, rebuilt around `manifest` (reconfigure, no new process)."""
    global _RUNNER
    if _RUNNER is None:
        cfg = scene_env.EnvConfig(image_size=64)
        _RUNNER = scene_env.make_vec_env([manifest], 1, cfg, seed=0, workers=0).runner
    else:
        _RUNNER.load_manifests([str(manifest)])
    return _RUNNER


def _set_dr(runner, on: bool) -> None:
    c = runner.env.cfg
    c.dr_object_pose = c.dr_lighting = c.dr_robot = c.dr_camera = on


def tipped_over(tilt_deg: float, height_before: float, height_after: float, args: Args) -> bool:
    """An object tipped over when its up axis tilted AND its height changed: a ball, lemon or pen rolling in place
    keeps its height (harmless), a bottle or mug falling on its side does not."""
    return tilt_deg > args.tilt_tol_deg and abs(height_after - height_before) > max(args.height_tol * height_before, 0.008)


_HULLS: dict[tuple[str, str, float], np.ndarray] = {}


def _hull_points(manifest_path: str, o: ss.ManifestObject) -> np.ndarray:
    """Vertices of an object's collision parts in its own frame, scaled ([M, 3]; cached per asset)."""
    key = (str(ss.resolve_asset_dir(manifest_path, o)), ",".join(o.collision), o.scale)
    if key not in _HULLS:
        d = ss.resolve_asset_dir(manifest_path, o)
        _HULLS[key] = np.concatenate([scene_env.collision_mesh(d / c).vertices for c in o.collision]) * o.scale
    return _HULLS[key]


def settle_check(runner, m: ss.SceneManifest, args: Args) -> dict:
    """Physics QA at the nominal layout: returns {"passed", "reason", per-object drift/tilt}."""
    import torch

    env = runner.env
    _set_dr(runner, False)
    runner.reset(seed=0)
    if bool(env.evaluate()["success"][0]):
        return {"passed": False, "reason": "the goal already holds at the start (target rests on the destination)"}
    hold = torch.zeros(1, 7)
    hold[0, 6] = 1.0
    for _ in range(5):  # 1 s with the robot holding still
        env.step(hold)
    top = float(env.table_top_z[0])
    per, problems = {}, []
    for o in m.objects:
        a = env.obj_actors[0][o.name]
        p = a.pose.p[0].numpy()
        nominal = scene_env.base_to_world(o.init_xyz, top)
        drift = float(np.linalg.norm(p[:2] - nominal[:2]))
        rot = scene_env.quat_to_mat(a.pose.q[0].numpy())
        tilt = float(np.degrees(np.arccos(np.clip(rot[2, 2], -1, 1))))
        pts = _hull_points(runner.manifests[0], o)  # [M, 3] collision vertices in the object frame (scaled)
        height = float(np.ptp(pts @ rot[2]))  # world-z extent now
        dh = height - o.bbox_m[2]
        per[o.name] = {"drift_m": round(drift, 4), "tilt_deg": round(tilt, 2), "z_m": round(float(p[2] - top), 4),
                       "height_change_m": round(dh, 4)}
        if p[2] < top - 0.05:
            problems.append(f"{o.name} fell off the table")
        elif drift > args.drift_tol_m:
            problems.append(f"{o.name} drifted {drift * 100:.1f} cm while settling (rolling or pushed out of an overlap)")
        elif tipped_over(tilt, o.bbox_m[2], height, args):
            problems.append(f"{o.name} tipped over by {tilt:.0f} deg, its height changed {o.bbox_m[2] * 100:.1f} -> "
                            f"{height * 100:.1f} cm (unstable on its base)")
        elif p[2] - top < -0.01:
            problems.append(f"{o.name} sank {(top - p[2]) * 100:.1f} cm into the table (interpenetration)")
    for i, a in enumerate(m.objects):
        for b in m.objects[:i]:
            if bool(env.contact(env.obj_actors[0][a.name], env.obj_actors[0][b.name])[0]):
                problems.append(f"{a.name} touches {b.name} after settling (footprints overlap)")
    return {"passed": not problems, "reason": "; ".join(problems) or "settled", "objects": per}


def solver_passed(successes: int, args: Args) -> bool:
    """The solvability bar: --solver-min-successes of the k episodes (at least one, at most k)."""
    return successes >= min(max(args.solver_min_successes, 1), args.solver_attempts)


def solver_check(runner, args: Args, seed: int) -> dict:
    """Solvability QA: the scripted expert on k seeded, fully randomised episodes (Table A.2 DR on; with
    --object-region table each episode draws a new layout over the whole region)."""
    _set_dr(runner, True)
    runner.env.cfg.object_region = args.object_region
    eps = []
    for j in range(args.solver_attempts):
        runner.reset(seed=seed + j)
        inv = runner.env.agent.robot.pose.inv()  # the layout this episode drew (base frame x, y; QA record)
        layout = {n: [round(float(v), 3) for v in (inv * a.pose).p[0, :2]] for n, a in runner.env.obj_actors[0].items()}
        for _ in range(runner.cfg.max_decisions):
            _, _, term, trunc, info = runner.step(runner.expert_actions())
            if term[0] or trunc[0]:
                break
        eps.append({"seed": seed + j, "success": bool(info["success"][0]), "partial": bool(info["partial_success"][0]),
                    "elapsed_s": round(float(info["elapsed_s"][0]), 2), "layout": layout})
        if sum(e["success"] for e in eps) >= args.solver_min_successes and args.solver_stop_early:
            break
    n_ok = sum(e["success"] for e in eps)
    if n_ok:
        reason = f"scripted expert succeeded in {n_ok}/{len(eps)} seeded episodes"
    elif any(e["partial"] for e in eps):
        reason = f"scripted expert grasped and lifted the target but never placed it (0/{len(eps)})"
    else:
        reason = f"scripted expert never grasped and lifted the target (0/{len(eps)})"
    passed = solver_passed(n_ok, args)
    if n_ok and not passed:
        reason = (f"scripted expert succeeded in only {n_ok}/{len(eps)} seeded episodes (--solver-min-successes "
                  f"{args.solver_min_successes})")
    return {"passed": passed, "reason": reason, "successes": n_ok, "episodes": eps, "object_region": args.object_region}


def input_files(scene_dir: Path, args: Args) -> list[Path]:
    """The files a composed scene depends on: its scene graph, its asset links, and each linked asset's record and
    the meshes that record names. Unreadable links or records: what could be listed (compose reports the error)."""
    files = [scene_dir / "scene_graph.json", scene_dir / "asset_links.json"]
    try:
        links = ss.load_asset_links(scene_dir / "asset_links.json")
        root = resolve_links_assets(scene_dir, links, Path(args.assets_dir))
        for rel in links.objects.values():
            files.append(root / rel / "asset.json")
            rec = ss.load_asset_record(root / rel)
            files += [root / rel / rec.paths["visual"], *(root / rel / c for c in rec.paths["collision"])]
    except (ss.SchemaError, OSError, KeyError, TypeError, ValueError):
        pass
    return files


def inputs_hash(scene_dir: Path, args: Args) -> str:
    """Content hash of input_files: a manifest composed from other inputs is stale."""
    return ss.content_hash({str(f): (zlib.crc32(f.read_bytes()), f.stat().st_size) if f.is_file() else "missing"
                            for f in input_files(scene_dir, args)})


def stale_reason(scene_dir: Path, m: ss.SceneManifest, args: Args) -> str | None:
    """Why an existing manifest no longer matches its inputs (None: it does): the inputs hash stored at compose
    time differs, or (manifests older than that hash) an input file is newer than the manifest."""
    stored = (m.args or {}).get("inputs_hash")
    if stored is not None:
        return None if stored == inputs_hash(scene_dir, args) else "inputs changed since it was composed"
    t = (scene_dir / "manifest.json").stat().st_mtime_ns
    newer = [f.name for f in input_files(scene_dir, args) if f.is_file() and f.stat().st_mtime_ns > t]
    return f"{', '.join(newer)} newer than the manifest" if newer else None


def compose_one(scene_dir: str, args: Args) -> dict:
    """Compose one scene; never raises (a bad scene is a rejection with its reason)."""
    t0 = time.time()
    scene_dir = Path(scene_dir)
    sid = scene_dir.name
    try:
        res = _compose(scene_dir, args)
    except ss.SchemaError as e:
        res = {"status": "rejected", "reason": f"bad input file: {e}"}
    except Exception as e:  # one bad scene never stops the batch
        res = {"status": "rejected", "reason": f"internal error: {type(e).__name__}: {e}"}
    res.update(scene_id=sid, seconds=round(time.time() - t0, 1))
    if res["status"] == "rejected":
        (scene_dir / "manifest.json").unlink(missing_ok=True)  # never leave a stale accepted manifest behind
    return res


def _compose(scene_dir: Path, args: Args) -> dict:
    graph = ss.load_scene_graph(scene_dir / "scene_graph.json")
    problems = ss.check_scene_graph(graph)
    if problems:
        return {"status": "rejected", "reason": "scene graph: " + "; ".join(problems)}
    stamp = inputs_hash(scene_dir, args)  # of the inputs as read now, before any is loaded
    links = ss.load_asset_links(scene_dir / "asset_links.json")
    assets_root = resolve_links_assets(scene_dir, links, Path(args.assets_dir))
    goal, notes = graph.goal, []
    for name in (goal.subject, goal.object):
        if name not in links.objects:
            why = links.failed.get(name, "no asset linked")
            return {"status": "rejected", "reason": f"no asset for {name!r}: {why}"}
    sim = [o for o in graph.objects if o.role in ("target", "destination", "distractor") and o.name in links.objects]
    sim.sort(key=lambda o: ("destination", "target", "distractor").index(o.role))
    notes += [f"distractor {o.name!r} dropped: {links.failed.get(o.name, 'no asset')}" for o in graph.objects
              if o.role == "distractor" and o.name not in links.objects]
    recs = {o.name: ss.load_asset_record(assets_root / links.objects[o.name]) for o in sim}
    for name, rec in recs.items():
        if not rec.accepted:
            return {"status": "rejected", "reason": f"asset {rec.asset_id} for {name!r} was rejected: {rec.reject_reason}"}
        for c in rec.paths["collision"]:  # a corrupt part (random bytes, a NaN vertex) named now, not deep in PhysX
            try:
                scene_env.collision_mesh(assets_root / rec.asset_id / c)
            except ValueError as e:
                return {"status": "rejected", "reason": f"asset {rec.asset_id} for {name!r}: {e}"}
    scale = {o.name: 1.0 for o in sim}
    # ALGO LOGIC: the paper's "object too large" failure: scale the target down to fit the gripper, or reject
    tb = recs[goal.subject].bbox_m
    narrow = min(tb[0], tb[1])
    s, note, why = target_rescale(tb, args)
    if why:
        return {"status": "rejected", "reason": f"target {goal.subject!r} {why}"}
    if note:
        scale[goal.subject] = s
        notes.append(note)
    for o in sim:
        if o.role != "target":
            d = footprint_radius(recs[o.name].bbox_m) * 2
            if d > DEST_MAX_FOOTPRINT_M:
                s = DEST_MAX_FOOTPRINT_M / d
                if s < args.dest_min_rescale:
                    if o.role == "distractor":
                        notes.append(f"distractor {o.name!r} dropped: {d * 100:.0f} cm footprint too large")
                        continue
                    return {"status": "rejected", "reason": f"destination {o.name!r} too large for the workspace: "
                            f"footprint {d * 100:.0f} cm > {DEST_MAX_FOOTPRINT_M * 100:.0f} cm even at --dest-min-rescale "
                            f"{args.dest_min_rescale}"}
                scale[o.name] = s
                notes.append(f"{o.name} scaled by {s:.2f} to fit the workspace")
    rng = np.random.default_rng([args.seed, zlib.crc32(graph.scene_id.encode())])
    table, background, lighting = make_background(graph, rng)
    last_reason, attempts, render_src = "no layout tried", 0, None
    keep = [o for o in sim if o.role != "distractor" or not any(o.name in n for n in notes)]
    for attempt in range(args.layout_tries):
        attempts = attempt + 1
        objs = keep if attempt < args.layout_tries - 2 else keep[:2]  # last resorts: without distractors
        # sampling is cheap (no simulator): apply the crowding fixes until a layout fits, without spending the
        # physics-checked --layout-tries on them (a bin scene with 4 distractors used to run out of tries first)
        while True:
            bboxes = [[v * scale[o.name] for v in recs[o.name].bbox_m] for o in objs]
            xy = sample_layout(bboxes, rng, args.margin_m)
            if xy is not None:
                break
            last_reason = f"no disjoint layout of {len(objs)} objects fits the reachable, visible workspace"
            dists = [o for o in objs if o.role == "distractor"]
            if dists:  # crowded: drop the largest distractor first
                big = max(dists, key=lambda o: footprint_radius(recs[o.name].bbox_m) * scale[o.name])
                keep, objs = [o for o in keep if o.name != big.name], [o for o in objs if o.name != big.name]
                notes.append(f"distractor {big.name!r} dropped: no room in the workspace")
                continue
            # ALGO LOGIC: the paper's "re-place / re-scale" fix: shrink the destination and a long target a little
            dest, changed = goal.object, False
            if scale[dest] * 0.85 >= args.dest_min_rescale:
                scale[dest] *= 0.85
                notes.append(f"{dest} scaled to {scale[dest]:.2f} to make room")
                changed = True
            tbs = [v * scale[goal.subject] for v in tb]
            if max(tbs[:2]) > 0.12 and min(tbs[:2]) * 0.9 >= MIN_GRASP_WIDTH_M and scale[goal.subject] * 0.9 >= args.min_rescale:
                scale[goal.subject] *= 0.9
                notes.append(f"target scaled to {scale[goal.subject]:.2f} to make room")
                changed = True
            if not changed:
                break
        if xy is None:
            continue
        w = dr_halfwidth(xy, bboxes, args.margin_m)
        mobjs = []
        for o, b, (x, y) in zip(objs, bboxes, xy):
            rec, s = recs[o.name], scale[o.name]
            xr, yr = dr_ranges(x, y, w, footprint_radius(b), b[2])
            mobjs.append(ss.ManifestObject(
                name=o.name, role=o.role, asset_id=rec.asset_id,
                asset_dir=os.path.relpath(assets_root / rec.asset_id, scene_dir), visual=rec.paths["visual"],
                collision=list(rec.paths["collision"]), scale=s, bbox_m=b, mass_kg=object_mass(rec.mass_kg, s, o.role),
                friction=rec.friction, init_xyz=[x, y, 0.0], init_yaw=float(rng.uniform(0, 2 * math.pi)),
                x_range=xr, y_range=yr, yaw_range=[0.0, 2 * math.pi]))
        m = ss.SceneManifest(scene_id=graph.scene_id, task=graph.task, scene_graph="scene_graph.json", objects=mobjs,
                             success={"target": goal.subject, "destination": goal.object, "relation": goal.relation},
                             table=table, background=background, lighting=lighting, qa={},
                             args={**_args_dict(args), "inputs_hash": stamp}, object_region=dict(scene_env.OBJECT_REGION))
        cand = scene_dir / "manifest.candidate.json"
        ss.save_manifest(m, cand)
        runner = _runner(cand)
        settle = settle_check(runner, m, args)
        if not settle["passed"]:
            last_reason = f"physics QA: {settle['reason']}"
            continue
        if args.render:
            _set_dr(runner, False)
            runner.reset(seed=0)
            render_src = runner.render_rgb()[0]
        solver = solver_check(runner, args, seed=args.seed * 1000 + 100 * attempt)
        if not solver["passed"]:
            last_reason = f"solvability QA: {solver['reason']}"
            if not any(e["partial"] for e in solver["episodes"]):  # grasp failures: re-scale the target
                w = narrow * scale[goal.subject]
                up = w < 0.03 and scale[goal.subject] * 1.25 <= args.max_upscale and w * 1.25 <= GRIP_FIT_M
                f = 1.25 if up else 0.8  # thin targets slip out of the fingers, wide ones do not fit between them
                if up or scale[goal.subject] * f >= args.min_rescale:
                    scale[goal.subject] *= f
                    notes.append(f"target scaled to {scale[goal.subject]:.2f} after grasp failures")
            continue
        m.qa = {"settle": settle, "solver": solver, "attempts": attempts, "notes": notes}
        ss.save_manifest(m, scene_dir / "manifest.json")
        cand.unlink(missing_ok=True)
        if render_src is not None:
            _save_png(render_src, scene_dir / "qa_render.png")
        return {"status": "accepted", "reason": solver["reason"], "attempts": attempts, "notes": notes,
                "solver_successes": solver["successes"], "solver_episodes": len(solver["episodes"])}
    (scene_dir / "manifest.candidate.json").unlink(missing_ok=True)
    if render_src is not None:
        _save_png(render_src, scene_dir / "qa_render.png")
    return {"status": "rejected", "reason": f"{last_reason} (after {attempts} layouts)", "attempts": attempts,
            "notes": notes}


def _args_dict(args: Args) -> dict:
    return {k: v for k, v in vars(args).items()}


def _save_png(rgb: np.ndarray, path: Path) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    ss.write_bytes_atomic(path, buf.getvalue())


def contact_sheet(scenes_dir: Path, results: list[dict], path: Path, thumb=(320, 240), cols: int = 5) -> None:
    """Grid of QA renders labelled with scene id and verdict (green accepted, red rejected)."""
    from PIL import Image, ImageDraw

    items = [r for r in results if (scenes_dir / r["scene_id"] / "qa_render.png").exists()]
    if not items:
        return
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * thumb[0], rows * (thumb[1] + 18)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for k, r in enumerate(items):
        im = Image.open(scenes_dir / r["scene_id"] / "qa_render.png").convert("RGB").resize(thumb)
        x, y = (k % cols) * thumb[0], (k // cols) * (thumb[1] + 18)
        sheet.paste(im, (x, y + 18))
        ok = r["status"] in ("accepted", "skipped")
        draw.text((x + 4, y + 3), f"{'OK' if ok else 'REJ'} {r['scene_id'][:40]}", fill=(90, 220, 90) if ok else (240, 80, 80))
    buf_path = path
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    ss.write_bytes_atomic(buf_path, buf.getvalue())


def main(args: Args) -> dict:
    from tqdm import tqdm

    scenes_dir = Path(args.scenes_dir)
    if not scenes_dir.is_dir():
        raise SystemExit(f"{scenes_dir}: scenes folder does not exist; run scene_designer.py and generate_assets.py first")
    ss.write_json_atomic(scenes_dir / "compose_args.json", _args_dict(args))
    dirs = sorted(p.parent for p in scenes_dir.glob("*/scene_graph.json"))
    if args.scene_ids is not None:
        missing = sorted(set(args.scene_ids) - {d.name for d in dirs})
        if missing:
            raise SystemExit(f"{scenes_dir}: no scene graph for id(s) {', '.join(missing)}")
        dirs = [d for d in dirs if d.name in set(args.scene_ids)]
    results, todo = [], []
    for d in dirs:
        if (d / "manifest.json").exists() and not args.force:
            try:
                m = ss.load_manifest(d / "manifest.json")
                why = stale_reason(d, m, args)
                if why:
                    print(f"{d.name}: composing again: {why}")
                    raise ss.SchemaError(str(d / "manifest.json"), "", why)
                solver = m.qa.get("solver", {})
                results.append({"scene_id": d.name, "status": "skipped", "reason": "already composed (use --force)",
                                "solver_successes": solver.get("successes", 0),
                                "solver_episodes": len(solver.get("episodes", []))})
                continue
            except ss.SchemaError:
                pass  # unreadable manifest: compose again
        todo.append(d)
    t0 = time.time()
    scene_env.configure_runtime()
    if args.workers <= 1:
        for d in tqdm(todo, desc="compose", unit="scene"):
            results.append(compose_one(str(d), args))
    else:
        import multiprocessing as mp

        os.environ.setdefault("LP_NUM_THREADS", "1")
        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("forkserver")) as pool:
            futs = [pool.submit(compose_one, str(d), args) for d in todo]
            for f in tqdm(as_completed(futs), total=len(futs), desc="compose", unit="scene"):
                results.append(f.result())
    results.sort(key=lambda r: r["scene_id"])
    ok = [r for r in results if r["status"] in ("accepted", "skipped")]
    eps = sum(r.get("solver_episodes", 0) for r in ok)
    wins = sum(r.get("solver_successes", 0) for r in ok)
    summary = {"schema_version": ss.SCHEMA_VERSION, "args": _args_dict(args),
               "accepted": [r["scene_id"] for r in ok],
               "rejected": {r["scene_id"]: r["reason"] for r in results if r["status"] == "rejected"},
               "acceptance_rate": len(ok) / max(len(results), 1),
               "expert_success_rate": wins / max(eps, 1), "expert_episodes": eps,
               "expert_object_region": args.object_region,
               "timings_s": {r["scene_id"]: r.get("seconds", 0.0) for r in results},
               "total_s": round(time.time() - t0, 1), "scenes": results}
    ss.write_json_atomic(args.out_summary, summary)
    if args.render:
        contact_sheet(scenes_dir, results, scenes_dir / "qa_contact_sheet.png")
    print(f"composed {len(results)} scenes: {len(ok)} accepted ({summary['acceptance_rate']:.0%}), "
          f"{len(summary['rejected'])} rejected; scripted expert {wins}/{eps} episodes on accepted scenes "
          f"({'object poses over the whole Table A.2 region' if args.object_region == 'table' else 'narrow manifest boxes'}); "
          f"summary {args.out_summary}")
    for sid, why in summary["rejected"].items():
        print(f"  rejected {sid}: {why}")
    return summary


if __name__ == "__main__":
    import tyro

    done = main(tyro.cli(Args))
    if done["scenes"] and not done["accepted"]:  # nothing usable came out: a script must not carry on
        raise SystemExit(f"error: every scene was rejected ({len(done['rejected'])}); see the reasons above")
