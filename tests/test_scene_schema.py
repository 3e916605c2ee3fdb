"""Contracts of scene_schema.py: round trips, validation messages that name file + field, atomicity."""

import json
import os

import pytest

import scene_schema as ss


def make_graph(scene_id="put_pen-v0") -> ss.SceneGraph:
    O = ss.SceneObject
    return ss.SceneGraph(
        scene_id=scene_id,
        task="put the pen in the pen holder",
        objects=[
            O("table", "context", "table", "a wooden table", size_m=[1.2, 0.8, 0.75]),
            O("widowx", "robot", "robot", "WidowX 250 S arm"),
            O("pen", "target", "pen", "a blue pen", ss.ObjectAttributes(color="blue"), [0.14, 0.012, 0.012], True),
            O("pen_holder", "destination", "pen_holder", "a pen holder", size_m=[0.08, 0.08, 0.1], receptacle="IN"),
            O("stapler", "distractor", "stapler", "a stapler", size_m=[0.15, 0.04, 0.05], graspable=True),
        ],
        relations=[ss.Relation("pen", "IN", "pen_holder", "goal"), ss.Relation("pen", "ON", "table", "initial")],
        designer={"name": "test"},
    )


def test_scene_graph_round_trip_and_qa(tmp_path):
    g = make_graph()
    path = ss.save_scene_graph(g, tmp_path / "s" / "scene_graph.json")
    back = ss.load_scene_graph(path)
    assert back == g
    assert back.target.name == "pen" and back.destination.name == "pen_holder"
    assert back.goal.relation == "IN"
    assert ss.check_scene_graph(back) == []


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["objects"][2].update(role="targt"), "objects[2].role: 'targt' is not one of"),
        (lambda d: d["objects"][3].pop("category"), "objects[3].category: required field is missing"),
        (lambda d: d["objects"][2].update(size_m=[0.1, 0.1]), "objects[2].size_m: expected a list of 3 numbers"),
        (lambda d: d["relations"][0].update(object="cup"), "relations[0].object: 'cup' is not the name of an object"),
        (lambda d: d.update(schema_version=99), "schema_version: this code reads version 1"),
        (lambda d: d.update(scene_id="a/b"), "scene_id: 'a/b' must be letters"),
    ],
)
def test_validation_names_file_and_field(tmp_path, mutate, expected):
    d = ss.to_dict(make_graph())
    mutate(d)
    path = tmp_path / "scene_graph.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ss.SchemaError) as e:
        ss.load_scene_graph(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_semantic_qa_reasons():
    g = make_graph()
    g.objects[4].role = "target"  # two targets
    assert "expected exactly one target, found 2" in ss.check_scene_graph(g)

    g = make_graph()
    g.objects[2].graspable = False
    assert any("not graspable" in p for p in ss.check_scene_graph(g))

    g = make_graph()
    g.relations.append(ss.Relation("pen", "IN", "pen_holder", "initial"))
    assert any("already solved" in p for p in ss.check_scene_graph(g))

    g = make_graph()
    g.objects[3].size_m = [8.0, 0.08, 0.1]  # a unit slip: 8 m pen holder
    assert any("implausible" in p for p in ss.check_scene_graph(g))

    g = make_graph()
    g.relations = [r for r in g.relations if r.phase != "goal"]
    assert any("no goal relation" in p for p in ss.check_scene_graph(g))

    g = make_graph()
    g.objects[3].receptacle = None
    assert any("not a receptacle" in p for p in ss.check_scene_graph(g))


def test_bad_json_and_missing_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"a": 1,,}')
    with pytest.raises(ss.SchemaError, match=r"line 1 column 9: invalid JSON"):
        ss.read_json(p)
    with pytest.raises(ss.SchemaError, match="file does not exist"):
        ss.read_json(tmp_path / "nope.json")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    ss.write_json_atomic(p, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ss.write_json_atomic(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["f.json"]  # no stray tmp file


def test_jsonl_survives_torn_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    ss.append_jsonl(p, {"i": 0})
    ss.append_jsonl(p, {"i": 1})
    with open(p, "a") as f:
        f.write('{"i": 2, "trunc')  # crash mid-write
    assert ss.read_jsonl(p) == [{"i": 0}, {"i": 1}]
    p.write_text('{"i": 0}\nnot json\n{"i": 2}\n')
    with pytest.raises(ss.SchemaError, match="line 2"):
        ss.read_jsonl(p)


def make_manifest(tmp_path) -> ss.SceneManifest:
    mo = ss.ManifestObject
    common = dict(visual="visual.glb", collision=["collision_0.obj"], scale=1.0, mass_kg=0.05, friction=0.8,
                  init_yaw=0.0, yaw_range=[0.0, 6.28])
    return ss.SceneManifest(
        scene_id="s0", task="put the pen in the pen holder", scene_graph="scene_graph.json",
        objects=[mo("pen", "target", "pen-1", "../../assets/pen-1", bbox_m=[0.14, 0.012, 0.012],
                    init_xyz=[0.3, -0.1, 0.0], x_range=[0.25, 0.35], y_range=[-0.15, -0.05], **common),
                 mo("pen_holder", "destination", "ph-1", "../../assets/ph-1", bbox_m=[0.07, 0.07, 0.1],
                    init_xyz=[0.3, 0.1, 0.0], x_range=[0.25, 0.35], y_range=[0.05, 0.15], **common)],
        success={"target": "pen", "destination": "pen_holder", "relation": "IN"},
        table={"size": [1.0, 1.0, 0.05]}, background={}, lighting={}, qa={"settle": {"passed": True}})


def test_manifest_hash_detects_edits(tmp_path):
    m = make_manifest(tmp_path)
    path = ss.save_manifest(m, tmp_path / "s0" / "manifest.json")
    assert ss.load_manifest(path.parent).content_hash == m.content_hash
    d = json.loads(path.read_text())
    d["objects"][0]["mass_kg"] = 5.0
    path.write_text(json.dumps(d))
    with pytest.raises(ss.SchemaError, match="content_hash: does not match"):
        ss.load_manifest(path)
    d["objects"][0]["x_range"] = [0.4, 0.2]
    path.write_text(json.dumps(d))
    with pytest.raises(ss.SchemaError, match=r"objects\[0\].x_range: lower bound 0.4 is above"):
        ss.load_manifest(path)


def test_find_manifests_unknown_id_is_clear(tmp_path):
    ss.save_manifest(make_manifest(tmp_path), tmp_path / "s0" / "manifest.json")
    assert [p.parent.name for p in ss.find_manifests(tmp_path)] == ["s0"]
    with pytest.raises(ss.SchemaError, match="no composed scene .* for id\\(s\\) zzz; 1 are available, e.g. s0"):
        ss.find_manifests(tmp_path, ["zzz"])


def test_asset_record_requires_existing_files(tmp_path):
    rec = ss.AssetRecord(
        asset_id="mug-abc", description="a red mug", category="mug", backend="procedural", seed=0, accepted=True,
        attempts=1, qa=[ss.QAVerdict("geometry", True, "ok", 1, 0)], scale=1.0, bbox_m=[0.1, 0.08, 0.09],
        mass_kg=0.3, friction=0.6, material="ceramic", color_rgba=[1, 0, 0, 1],
        paths={"visual": "visual.glb", "collision": ["collision_0.obj"], "thumb": "thumb.png"})
    p = ss.save_asset_record(rec, tmp_path / "mug-abc" / "asset.json")
    with pytest.raises(ss.SchemaError, match="paths.visual: 'visual.glb' does not exist"):
        ss.load_asset_record(p)
    for f in ("visual.glb", "collision_0.obj"):
        (p.parent / f).write_bytes(b"x")
    assert ss.load_asset_record(p.parent) == rec


def test_ids_are_stable_and_safe():
    a = ss.asset_id_for("A red  Mug.", "mug", "procedural-v1", 0)
    assert a == ss.asset_id_for("a red mug", "Mug", "procedural-v1", 0)
    assert a != ss.asset_id_for("a red mug", "mug", "procedural-v1", 1)
    assert ss.slugify("Put the pen in the pen-holder!") == "put_the_pen_in_the_pen_holder"
    assert ss.slugify("¡¿") == "scene"


def test_wandb_runs_are_resumable_grouped_and_save_code(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = []
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.append(kw) or type("Run", (), {"id": kw["id"]})())
    out = tmp_path / "study" / "ppo_N4_s0"
    ss.init_wandb(out, {"lr": 1}, "ppoflow")
    ss.init_wandb(out, {"lr": 1}, "ppoflow")  # the re-run of an interrupted command
    a, b = seen
    assert a["id"] == b["id"] == (out / "wandb_run_id.txt").read_text() and a["resume"] == "allow"
    assert a["project"] == ss.WANDB_PROJECT and a["group"] == "study" and a["save_code"] and a["name"] == "ppo_N4_s0"
    ss.init_wandb(tmp_path / "other", {}, "eval")
    assert seen[-1]["id"] != a["id"]
