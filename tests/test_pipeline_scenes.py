"""Seams between the stages (no simulator): designer graphs -> asset requests -> compose's size fixes."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import compose_scene as cs  # noqa: E402
import generate_assets as ga  # noqa: E402
import scene_schema as ss  # noqa: E402


def _graph(sid, target, dest, relation="IN"):
    objs = [ss.SceneObject(name=target[0], role="target", category=target[0], description=f"a {target[0]}",
                           size_m=list(target[1]), graspable=True),
            ss.SceneObject(name=dest[0], role="destination", category=dest[0], description=f"a {dest[0]}",
                           size_m=list(dest[1]), graspable=True, receptacle=relation)]
    return ss.SceneGraph(scene_id=sid, task=f"put the {target[0]} in the {dest[0]}", objects=objs,
                         relations=[ss.Relation(target[0], relation, dest[0])])


def test_only_targets_are_shrunk_to_the_gripper():
    # the designer marks bowls graspable; as a destination one must keep its size (a 7 cm bowl cannot hold a banana)
    reqs = ga.collect_requests([_graph("banana_bowl", ("banana", (0.19, 0.04, 0.04)), ("bowl", (0.16, 0.16, 0.07)))],
                               ga.Args())
    by_cat = {r["category"]: r for r in reqs.values()}
    assert by_cat["banana"]["graspable"] and not by_cat["bowl"]["graspable"]
    s, _ = ga.auto_scale([0.16, 0.16, 0.07], by_cat["bowl"]["size_m"], by_cat["bowl"]["graspable"], 0.074)
    assert abs(s - 1.0) < 1e-9


def test_designer_sizes_are_composable():
    # the sizes the designer asks for (trays, towels, boards of 40-50 cm) shrink into the workspace, pens grow
    args = cs.Args()
    for bbox in ([0.4, 0.304, 0.034], [0.4, 0.313, 0.031], [0.35, 0.213, 0.021]):
        d = 2 * cs.footprint_radius(bbox)
        assert cs.DEST_MAX_FOOTPRINT_M / d >= args.dest_min_rescale
    s, note, why = cs.target_rescale([0.14, 0.012, 0.014], args)
    assert why is None and s > 1.0
