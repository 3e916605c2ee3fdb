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
