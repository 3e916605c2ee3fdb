"""compose_scene.py: layout helpers (pure) and the CLI on tiny scenes (accepted + the paper's failure cases)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compose_scene as cs  # noqa: E402
import scene_schema as ss  # noqa: E402
from test_scene_env import make_scene  # noqa: E402


def test_layout_disjoint_in_range_and_visible():
    rng = np.random.default_rng(0)
    bboxes = [[0.14, 0.14, 0.02], [0.03, 0.03, 0.04], [0.05, 0.05, 0.1]]
    for _ in range(20):
        xy = cs.sample_layout(bboxes, rng, margin=0.015)
        assert xy is not None
        for i, (x, y) in enumerate(xy):
            assert 0.2 <= x <= 0.4 and -0.15 <= y <= 0.15
            assert cs.in_view((x, y), cs.footprint_radius(bboxes[i]), bboxes[i][2])
            for j in range(i):
                d = math.hypot(x - xy[j][0], y - xy[j][1])
                assert d > cs.footprint_radius(bboxes[i]) + cs.footprint_radius(bboxes[j]) + 0.015
        # DR ranges keep every randomised layout disjoint
        w = cs.dr_halfwidth(xy, bboxes, 0.015)
        for i in range(3):
            for j in range(i):
                gap = math.hypot(xy[i][0] - xy[j][0], xy[i][1] - xy[j][1]) - cs.footprint_radius(bboxes[i]) \
                    - cs.footprint_radius(bboxes[j]) - 0.015
                assert gap >= 2 * math.sqrt(2) * w - 1e-9
    # nothing fits: a layout of huge objects is reported as impossible, not looped forever
    assert cs.sample_layout([[0.3, 0.3, 0.1], [0.3, 0.3, 0.1]], rng, 0.015, tries=50) is None


def test_camera_projection_matches_bridge_view():
    # the workspace centre projects near the image centre, points behind the camera are nan
    uv = cs.project_to_image(np.array([cs.scene_env.base_to_world([0.3, 0.0, 0.0]), [10.0, 0.0, 0.9]]))
    assert 150 < uv[0, 0] < 500 and 100 < uv[0, 1] < 420
    assert not cs.in_view((1.5, 0.0), 0.02, 0.02)


def test_background_honours_colour_words():
    g = ss.SceneGraph("s", "t", [], [], background={"table": {"color": "white"}, "walls": "blue walls"})
    table, bg, light = cs.make_background(g, np.random.default_rng(0))
    assert min(table["color"][:3]) > 0.8 and bg["wall_color"][2] > bg["wall_color"][0]
    assert table["center_xy"][0] - table["size"][0] / 2 <= -0.05 and table["center_xy"][0] + table["size"][0] / 2 >= 0.55


@pytest.mark.timeout(300)
def test_compose_cli_accepts_and_rejects_with_reasons(tmp_path):
    scenes, assets = tmp_path / "scenes", tmp_path / "assets"
    make_scene(scenes, assets, "ok_block", distractor=False)
    make_scene(scenes, assets, "huge_block", target_size=(0.2, 0.2, 0.1), distractor=False)
    make_scene(scenes, assets, "solved_block", starts_solved=True, distractor=False)
    cmd = [sys.executable, str(REPO / "compose_scene.py"), "--scenes-dir", str(scenes), "--assets-dir", str(assets),
           "--solver-attempts", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = ss.read_json(scenes / "compose_summary.json")
    assert summary["accepted"] == ["ok_block"] and summary["expert_success_rate"] == 1.0
    assert "too large to grasp" in summary["rejected"]["huge_block"]
    assert "already solved" in summary["rejected"]["solved_block"]
    m = ss.load_manifest(scenes / "ok_block" / "manifest.json")  # validates schema + content hash
    assert m.qa["settle"]["passed"] and m.qa["solver"]["successes"] == 1
    # issue 26: the manifest records Table A.2's region (the env draws there at every reset), the QA ran under it
    assert m.object_region["x"] == [0.2, 0.4] and m.object_region["y"] == [-0.15, 0.15]
    assert m.qa["solver"]["object_region"] == "table" and summary["expert_object_region"] == "table"
    assert set(m.qa["solver"]["episodes"][0]["layout"]) == {o.name for o in m.objects}
    assert "whole Table A.2 region" in out.stdout
    assert (scenes / "ok_block" / "qa_render.png").stat().st_size > 1000 and (scenes / "qa_contact_sheet.png").exists()
    for o in m.objects:
        assert ss.OBJECT_X_RANGE_M[0] <= o.x_range[0] <= o.x_range[1] <= ss.OBJECT_X_RANGE_M[1]
        assert (ss.resolve_asset_dir(scenes / "ok_block" / "manifest.json", o) / o.visual).exists()
    assert not (scenes / "huge_block" / "manifest.json").exists()
    # a re-run skips the composed scene (and is fast)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0
    again = ss.read_json(scenes / "compose_summary.json")
    assert [s["status"] for s in again["scenes"] if s["scene_id"] == "ok_block"] == ["skipped"]


def test_target_rescale_fixes_thin_and_oversized_targets():
    args = cs.Args()
    s, note, why = cs.target_rescale([0.14, 0.011, 0.013], args)  # a ballpoint pen: too thin for the fingers
    assert why is None and 1.2 < s <= args.max_upscale and "too thin" in note
    assert min(0.14, 0.011) * s >= cs.MIN_GRASP_WIDTH_M - 1e-9 and 0.013 * s >= cs.MIN_GRASP_HEIGHT_M - 1e-9
    s, note, why = cs.target_rescale([0.09, 0.08, 0.05], args)  # a wide apple: scaled down into the opening
    assert why is None and abs(0.08 * s - cs.GRIP_FIT_M) < 1e-9
    s, note, why = cs.target_rescale([0.2, 0.2, 0.1], args)  # the paper's "object too large": rejected
    assert "too large to grasp" in why
    assert cs.target_rescale([0.03, 0.03, 0.04], args) == (1.0, None, None)  # a block: untouched
    s, note, why = cs.target_rescale([0.06, 0.06, 0.009], args)  # a 6 cm cookie does not fit the 52 mm finger gap
    assert why is None and abs(0.06 * s - cs.GRIP_FIT_M) < 1e-9
    s, note, why = cs.target_rescale([0.05, 0.05, 0.05], args)  # a 5 cm cube: room to open around it after stacking
    assert why is None and 0.05 * s * (math.cos(0.3) + math.sin(0.3)) < cs.FINGER_GAP_OPEN_M
    s, note, why = cs.target_rescale([0.16, 0.025, 0.004], args)  # a fork: up-scaled, but stays fork-sized
    assert why is None and 0.16 * s <= cs.MAX_TARGET_LENGTH_M + 1e-9


def test_targets_weigh_enough_for_contact_sensing():
    import scene_env

    assert cs.object_mass(0.0072, 0.63, "target") * 9.81 > 2 * scene_env.CONTACT_FORCE_N  # a scaled foam sponge
    assert abs(cs.object_mass(0.2, 0.5, "target") - 0.025) < 1e-12  # heavier targets: volume scaling only
    assert cs.object_mass(0.0072, 0.63, "distractor") < cs.MIN_TARGET_MASS_KG


def test_solvability_bar_is_a_majority_by_default():
    args = cs.Args()  # 3 episodes, 2 must succeed
    assert not cs.solver_passed(0, args) and not cs.solver_passed(1, args) and cs.solver_passed(2, args)
    assert cs.solver_passed(1, cs.Args(solver_attempts=1)) and not cs.solver_passed(0, cs.Args(solver_attempts=1))
    assert cs.solver_passed(1, cs.Args(solver_min_successes=1))


def test_tipping_needs_a_height_change_and_views_use_the_footprint_circle():
    args = cs.Args()
    assert not cs.tipped_over(60.0, 0.056, 0.058, args)  # a lemon rolled in place
    assert cs.tipped_over(90.0, 0.18, 0.06, args)  # a bottle fell over
    assert not cs.tipped_over(5.0, 0.18, 0.17, args)
    # a 24 cm tray fits the view at the workspace centre but not hanging over its near corner
    assert cs.in_view((0.33, 0.0), 0.12, 0.02) and not cs.in_view((0.2, -0.15), 0.12, 0.02)


def test_tall_objects_stay_clear_of_the_gripper_start():
    rng = np.random.default_rng(1)
    for _ in range(20):
        xy = cs.sample_layout([[0.1, 0.1, 0.12], [0.03, 0.03, 0.03]], rng, margin=0.015)
        assert xy is not None
        d = math.hypot(xy[0][0] - cs.EE_START_XY[0], xy[0][1] - cs.EE_START_XY[1])
        assert d >= cs.footprint_radius([0.1, 0.1]) + cs.EE_KEEPOUT_M


def _pre_issue26_in_view(xy, r, height, margin_px=6.0):
    """compose_scene.in_view as it was before issue 26 (moved to scene_env.footprint_in_view)."""
    x, y = xy
    ang = np.linspace(0, 2 * math.pi, 12, endpoint=False)
    pts = np.array([cs.scene_env.base_to_world([x + r * math.cos(a), y + r * math.sin(a), dz]) for a in ang
                    for dz in (0, height)])
    uv = cs.project_to_image(pts)
    return bool(np.all(np.isfinite(uv)) and np.all(uv[:, 0] >= margin_px) and np.all(uv[:, 0] <= 640 - margin_px)
                and np.all(uv[:, 1] >= margin_px) and np.all(uv[:, 1] <= 480 - margin_px))


def test_narrow_boxes_and_nominal_layouts_are_as_before_issue_26():
    """The composer's nominal layouts and narrow x/y boxes (what --env.object-region manifest draws in) come out as
    before: the view test moved to scene_env unchanged, the same seeds give the same layouts and boxes."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        xy, r, h = (rng.uniform(0.15, 0.45), rng.uniform(-0.2, 0.2)), rng.uniform(0.01, 0.13), rng.uniform(0.01, 0.2)
        assert cs.in_view(xy, r, h) == _pre_issue26_in_view(xy, r, h)
    bboxes = [[0.14, 0.14, 0.02], [0.03, 0.03, 0.04], [0.05, 0.05, 0.1]]
    xy = cs.sample_layout(bboxes, np.random.default_rng(0), margin=0.015)
    w = cs.dr_halfwidth(xy, bboxes, 0.015)
    boxes = [cs.dr_ranges(x, y, w, cs.footprint_radius(b), b[2]) for (x, y), b in zip(xy, bboxes)]
    assert 0.0 <= w <= 0.04 and all(xr[1] - xr[0] <= 0.08 + 1e-9 and yr[1] - yr[0] <= 0.08 + 1e-9 for xr, yr in boxes)
