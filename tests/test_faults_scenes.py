"""Faults at the scene stages' boundaries (scene_designer.py, generate_assets.py, compose_scene.py, scene_schema.py):
a hostile endpoint that echoes the API key, bad task files, unknown nouns, a hung endpoint, bad asset records and
paths, a killed asset run, a command backend that leaves children behind. Each asserts a clear error or a safe
refusal, that the batch goes on, and that nothing half-written is left looking valid."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import scene_designer as sd  # noqa: E402
import scene_schema as ss  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402
from test_scene_designer import llm_reply  # noqa: E402

KEY = "sk-test-SECRET-0123456789abcdefXYZ"


def _files_containing(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_an_endpoint_that_echoes_the_key_gets_it_into_no_file_and_no_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    seen_auth = []

    def echo(body):  # every way a reply can carry the key back: errors, invalid fields, a stored background
        seen_auth.append(True)
        n = len(seen_auth)
        if n % 3 == 1:
            return f"not JSON, your key is {KEY}".encode()  # raw body: the client's error message quotes it
        if n % 3 == 2:
            return llm_reply("put the apple in the bowl", mutate=lambda r: r["objects"][3].update(role=KEY))
        return llm_reply("put the apple in the bowl",
                         mutate=lambda r: r["background"].update(lighting=f"daylight, Bearer {KEY}"))

    with FakeOpenAI(echo) as server:
        args = sd.Args(task=["put the apple in the bowl", "put the pen in the cup", "put the carrot on the plate"],
                       out_dir=str(tmp_path / "scenes"), designer="llm", llm_base_url=server.url, llm_attempts=3,
                       llm_timeout_s=5)
        sd.main(args)
        assert server.requests and all(r["auth"] == f"Bearer {KEY}" for r in server.requests)  # it was sent...
    out, err = capsys.readouterr()
    assert _files_containing(tmp_path, KEY) == []  # ...and stored nowhere
    assert KEY not in out and KEY not in err
    assert len(list((tmp_path / "scenes").glob("*/scene_graph.json"))) == 3  # the batch went on


def test_scrub_removes_key_like_tokens_that_are_not_this_runs_key():
    s = sd._scrub("a sk-abcdefghijklmnopqrst and Bearer abcdefghijklmnopqrstuvwx and mine", "mine")
    assert "sk-abc" not in s and "abcdefghijklmnopqrstuvwx" not in s and "mine" not in s


def test_a_hung_endpoint_trips_the_circuit_breaker(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def hang(body):
        time.sleep(1.5)
        return "{}"

    tasks = [f"put the {x} on the plate" for x in ("apple", "pear", "lemon", "carrot", "banana", "orange")]
    with FakeOpenAI(hang) as server:
        t0 = time.time()
        sd.main(sd.Args(task=tasks, out_dir=str(tmp_path / "s"), designer="llm", llm_base_url=server.url,
                        llm_attempts=2, llm_timeout_s=0.3, llm_circuit_breaker=2))
        wall = time.time() - t0
        n_requests = len(server.requests)
    assert n_requests == 4  # 2 scenes x 2 attempts, then no more requests for the other 4 scenes
    graphs = [ss.load_scene_graph(p) for p in sorted((tmp_path / "s").glob("*/scene_graph.json"))]
    assert len(graphs) == 6 and all(g.designer["name"] == "rules" for g in graphs)
    assert sum("circuit breaker" in g.designer.get("fallback_reason", "") for g in graphs) == 4
    assert "circuit breaker" in capsys.readouterr().err and wall < 30


@pytest.mark.parametrize("kind", ["latin1", "directory", "utf16"])
def test_bad_task_files_are_one_clear_error(tmp_path, kind, capsys):
    path = tmp_path / "tasks.txt"
    if kind == "directory":
        path.mkdir()
    elif kind == "latin1":
        path.write_bytes("put the cr\xe8me br\xfbl\xe9e on the plate\n".encode("latin-1"))
    else:
        path.write_text("put the apple in the bowl\n", encoding="utf-16")
    with pytest.raises(SystemExit) as e:
        sd.main(sd.Args(tasks=str(path), out_dir=str(tmp_path / "s")))
    msg = str(e.value)
    assert str(path) in msg and ("directory" in msg if kind == "directory" else "not UTF-8" in msg), msg
    assert not (tmp_path / "s").exists()  # nothing written before the input was checked


def test_unknown_nouns_are_said_and_recorded_not_silently_generic(tmp_path, capsys):
    sd.main(sd.Args(task=["put the flurbo on the plate"], out_dir=str(tmp_path / "s")))
    g = ss.load_scene_graph(next((tmp_path / "s").glob("*/scene_graph.json")))
    assert g.target.category == "generic_object"
    assert g.designer["unknown_nouns"] == [{"object": g.target.name, "role": "target", "words": "flurbo"}]
    assert "'flurbo' (target) is not in the lexicon" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Assets and compose
# ---------------------------------------------------------------------------------------------

import generate_assets as ga  # noqa: E402
from test_generate_assets import args_for, obj, scene, write_scenes  # noqa: E402

HANGING_T23D = """
import subprocess, sys, time, pathlib
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        import os

        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_command_timeout_kills_the_whole_process_group(tmp_path):
    script, pidfile = tmp_path / "hang.py", tmp_path / "child.pid"
    script.write_text(HANGING_T23D)
    req = {"description": "a red block", "category": "block"}
    t0 = time.time()
    with pytest.raises(RuntimeError, match="timed out .* process group was killed"):
        ga.generate_command(req, 0, f"{sys.executable} {script} {pidfile}", tmp_path, 2.0, "glb")
    assert time.time() - t0 < 20
    child = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child), "the command's child (a grandchild of the stage) was left running"


DETACHING_T23D = """
import subprocess, sys, pathlib
own_session = sys.argv[3] == "setsid"
child = subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=own_session)
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
pathlib.Path(sys.argv[2]).write_text(
    "v 0 0 0\\nv 0.05 0 0\\nv 0 0.05 0\\nv 0 0 0.05\\nf 1 3 2\\nf 1 2 4\\nf 1 4 3\\nf 2 3 4\\n")
"""


@pytest.mark.parametrize("detach", ["same_group", "setsid"])
def test_a_successful_command_leaves_no_detached_child_running(tmp_path, detach):
    """Issue 25 item 11: a command that succeeds but leaves a detached `sleep` behind (in its process group, or in
    a session of its own) used to leave it running; the group (and any process carrying the run's marker) is
    killed whenever the command ends."""
    script, pidfile = tmp_path / "detach.py", tmp_path / "child.pid"
    script.write_text(DETACHING_T23D)
    req = {"description": "a red block", "category": "block"}
    mesh, prov = ga.generate_command(req, 0, f"{sys.executable} {script} {pidfile} {{out}} {detach}", tmp_path, 30.0, "obj")
    assert len(mesh.faces) == 4 and prov["backend"] == "command"
    child = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        import os
        import signal

        os.kill(child, signal.SIGKILL)  # do not leave it behind when the test fails
    assert not alive, "the command's detached child was left running after it succeeded"


def test_every_asset_rejected_exits_nonzero_with_the_reason(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(3)\n")
    write_scenes(tmp_path / "scenes", [scene("s", obj("cube", "target", "block", "a red block", (0.05, 0.04, 0.03),
                                                      "red", graspable=True),
                                             obj("tray", "destination", "tray", "a black tray", (0.3, 0.22, 0.025)),
                                             relation="ON")])
    args = args_for(tmp_path, backend="command", max_attempts=1, command_template=f"{sys.executable} {script} {{out}}")
    with pytest.raises(SystemExit, match="all 2 generated assets were rejected"):
        ga.main(args)
    assert (tmp_path / "assets" / "summary.json").exists()  # the reasons are kept for the user


def test_killed_runs_build_folders_are_cleaned_and_live_ones_kept(tmp_path):
    import os

    tmp = tmp_path / ".tmp"
    dead, live, legacy = tmp / "block-abc-p999999-0123abcd", tmp / f"block-abc-p{os.getpid()}-89abcdef", tmp / "x-1"
    for d in (dead, live, legacy):
        d.mkdir(parents=True)
        (d / "visual.glb").write_bytes(b"half written")
    os.utime(legacy, (time.time() - 2 * 86400,) * 2)
    removed = ga.clean_stale_tmp(tmp_path)
    assert sorted(removed) == sorted([dead.name, legacy.name]) and live.exists() and not dead.exists()


def _record(tmp_path: Path, **over) -> Path:
    d = tmp_path / "a1"
    d.mkdir(exist_ok=True)
    for f in ("visual.glb", "collision_0.obj"):
        (d / f).write_bytes(b"x")
    rec = {"schema_version": ss.SCHEMA_VERSION, "asset_id": "a1", "description": "a cube", "category": "block",
           "backend": "procedural", "seed": 0, "accepted": True, "attempts": 1, "qa": [], "scale": 1.0,
           "bbox_m": [0.05, 0.05, 0.05], "mass_kg": 0.1, "friction": 0.8, "material": "wood",
           "color_rgba": [1, 0, 0, 1], "paths": {"visual": "visual.glb", "collision": ["collision_0.obj"]}}
    rec.update(over)
    (d / "asset.json").write_text(json.dumps(rec))
    return d


@pytest.mark.parametrize("over,field", [
    ({"bbox_m": [0.05, float("inf"), 0.05]}, "bbox_m[1]"), ({"bbox_m": [0.05, 0.0, 0.05]}, "bbox_m"),
    ({"mass_kg": 0.0}, "mass_kg"), ({"mass_kg": float("nan")}, "mass_kg"),
    ({"paths": {"visual": "../other/visual.glb", "collision": ["collision_0.obj"]}}, "paths.visual"),
    ({"paths": {"visual": "/etc/passwd", "collision": ["collision_0.obj"]}}, "paths.visual"),
    ({"paths": {"visual": "visual.glb", "collision": ["../../c.obj"]}}, "paths.collision[0]")])
def test_bad_asset_records_are_refused_with_the_field(tmp_path, over, field):
    assert ss.load_asset_record(_record(tmp_path)).accepted  # the unmodified record is fine
    with pytest.raises(ss.SchemaError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ss.load_asset_record(_record(tmp_path, **over))


def test_symlinked_asset_file_pointing_outside_is_refused(tmp_path):
    outside = tmp_path / "secret.glb"
    outside.write_bytes(b"x")
    d = _record(tmp_path)
    (d / "visual.glb").unlink()
    (d / "visual.glb").symlink_to(outside)
    with pytest.raises(ss.SchemaError, match="resolves outside the asset folder"):
        ss.load_asset_record(d)


def test_graph_whose_scene_id_differs_from_its_folder_is_skipped_with_reason(tmp_path, capsys):
    g = scene("real_id", obj("cube", "target", "block", "a red block", (0.05, 0.04, 0.03), "red", graspable=True),
              obj("tray", "destination", "tray", "a black tray", (0.3, 0.22, 0.025)), relation="ON")
    ss.save_scene_graph(g, tmp_path / "scenes" / "renamed_folder" / "scene_graph.json")
    graphs, errors = ga.load_graphs(tmp_path / "scenes", None)
    assert graphs == [] and "differs from its folder 'renamed_folder'" in errors[0]
    assert not (tmp_path / "scenes" / "real_id").exists()


def test_compose_without_force_recomposes_a_scene_whose_inputs_changed(tmp_path, monkeypatch):
    """Issue 25: a composed scene is skipped only while its inputs (graph, links, asset files) are the ones it was
    composed from; otherwise the old manifest and its QA verdict would be kept."""
    import compose_scene as cs
    from test_evaluate import fake_manifests

    scenes = tmp_path / "scenes"
    fake_manifests(scenes, ["s0", "s1"])
    for sid in ("s0", "s1"):
        (scenes / sid / "scene_graph.json").write_text('{"v": 1}')
        (scenes / sid / "asset_links.json").write_text('{"v": 1}')
    args = cs.Args(scenes_dir=str(scenes), render=False)
    for sid in ("s0", "s1"):  # composed from these inputs
        m = ss.load_manifest(scenes / sid / "manifest.json")
        m.args = {"inputs_hash": cs.inputs_hash(scenes / sid, args)}
        ss.save_manifest(m, scenes / sid / "manifest.json")
    ran = []
    monkeypatch.setattr(cs, "compose_one", lambda d, a: (ran.append(Path(d).name),
                                                         {"scene_id": Path(d).name, "status": "accepted"})[1])
    cs.main(args)
    assert ran == []  # unchanged: both skipped
    (scenes / "s1" / "scene_graph.json").write_text('{"v": 2}')
    cs.main(args)
    assert ran == ["s1"]
    m = ss.load_manifest(scenes / "s0" / "manifest.json")  # a manifest from before the hash: input mtimes decide
    m.args = {}
    ss.save_manifest(m, scenes / "s0" / "manifest.json")
    assert cs.stale_reason(scenes / "s0", m, args) is None
    time.sleep(0.01)
    (scenes / "s0" / "asset_links.json").write_text('{"v": 2}')
    assert "asset_links.json newer than the manifest" in cs.stale_reason(scenes / "s0", m, args)


def test_compose_cli_exits_non_zero_when_every_scene_is_rejected(tmp_path):
    import subprocess

    sdir = tmp_path / "scenes" / "bad"
    sdir.mkdir(parents=True)
    (sdir / "scene_graph.json").write_text("{not json")
    (sdir / "asset_links.json").write_text("{}")
    r = subprocess.run([sys.executable, str(ROOT / "compose_scene.py"), "--scenes-dir", str(tmp_path / "scenes"),
                        "--no-render"], capture_output=True, text=True, timeout=120)
    assert "0 accepted" in r.stdout and "1 rejected" in r.stdout, r.stdout + r.stderr[-2000:]
    assert r.returncode != 0 and "every scene was rejected" in r.stderr


# ---------------------------------------------------------------------------------------------
# Issue 25 items 8-9: every path a stage joins is contained; corrupt meshes are named
# ---------------------------------------------------------------------------------------------

BOX_OBJ = "v 0 0 0\nv 0.05 0 0\nv 0 0.05 0\nv 0 0 0.05\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"


def _real_asset(root: Path, folder: str, asset_id: str | None = None, collision: str = BOX_OBJ) -> Path:
    """An accepted asset folder with a tiny tetrahedron as its visual and collision mesh."""
    d = _record(root.parent, asset_id=asset_id or folder)
    d = d.rename(root / folder) if d != root / folder else d
    (d / "collision_0.obj").write_text(collision)
    (d / "visual.glb").write_text(BOX_OBJ)
    return d


def _compose_scene(tmp_path: Path, links_objects: dict[str, str]) -> Path:
    """scenes/s (a cube onto a tray) whose asset_links.json names `links_objects` under ../../assets."""
    g = scene("s", obj("cube", "target", "block", "a red block", (0.05, 0.05, 0.05), "red", graspable=True),
              obj("tray", "destination", "tray", "a black tray", (0.3, 0.22, 0.025)), relation="ON")
    sdir = tmp_path / "scenes" / "s"
    ss.save_scene_graph(g, sdir / "scene_graph.json")
    (sdir / "asset_links.json").write_text(json.dumps({"schema_version": ss.SCHEMA_VERSION, "scene_id": "s",
                                                       "assets_dir": "../../assets", "objects": links_objects}))
    return sdir


@pytest.fixture
def compose_env(tmp_path, monkeypatch):
    """compose_scene with the simulator replaced by a tripwire: a scene that gets as far as the physics QA would
    have loaded its meshes (and written their paths into a candidate manifest)."""
    import compose_scene as cs

    def tripwire(manifest):
        raise RuntimeError("the simulator was reached")

    monkeypatch.setattr(cs, "_runner", tripwire)
    (tmp_path / "assets").mkdir()
    _real_asset(tmp_path / "assets", "tray")
    return cs


@pytest.mark.parametrize("case", ["links_dotdot", "links_absolute", "record_id_dotdot", "record_id_other_folder"])
def test_compose_refuses_asset_ids_and_links_that_leave_the_assets_folder(tmp_path, compose_env, case):
    """Issue 25 item 8: an asset_links.json entry or an asset.json asset_id pointing outside the assets folder is
    a clear rejection naming the file and the value, before any mesh is loaded or any path written."""
    cs = compose_env
    outside = tmp_path / "outside"
    outside.mkdir()
    _real_asset(outside, "evil")  # a perfectly loadable asset, just not inside assets/
    if case == "links_dotdot":
        links, file, value = {"cube": "../outside/evil", "tray": "tray"}, "asset_links.json", "../outside/evil"
    elif case == "links_absolute":
        links, file, value = {"cube": str(outside / "evil"), "tray": "tray"}, "asset_links.json", str(outside / "evil")
    else:
        value = "../outside/evil" if case == "record_id_dotdot" else "tray"
        _real_asset(tmp_path / "assets", "cube", asset_id=value)
        links, file = {"cube": "cube", "tray": "tray"}, "asset.json"
    sdir = _compose_scene(tmp_path, links)
    res = cs.compose_one(str(sdir), cs.Args(scenes_dir=str(tmp_path / "scenes"), render=False))
    assert res["status"] == "rejected" and "simulator was reached" not in res["reason"], res
    assert file in res["reason"] and repr(value)[1:-1] in res["reason"], res["reason"]
    assert not (sdir / "manifest.json").exists() and not (sdir / "manifest.candidate.json").exists()


@pytest.mark.parametrize("value,field", [("../x", "asset_id"), ("/etc", "asset_id"), ("a/b", "asset_id")])
def test_asset_records_and_links_refuse_ids_that_are_not_one_folder_name(tmp_path, value, field):
    with pytest.raises(ss.SchemaError, match=field):
        ss.load_asset_record(_record(tmp_path, asset_id=value))
    p = tmp_path / "asset_links.json"
    p.write_text(json.dumps({"schema_version": ss.SCHEMA_VERSION, "scene_id": "s", "assets_dir": "a",
                             "objects": {"cube": value}}))
    with pytest.raises(ss.SchemaError, match=r"asset_links.json: objects.cube: .*single folder name|objects.cube: .*relative"):
        ss.load_asset_links(p)


@pytest.mark.parametrize("field,value", [("asset_id", "../../etc"), ("visual", "../../../etc/passwd"),
                                         ("collision", ["/etc/passwd"]), ("visual", "v.glb\u0000.txt")])
def test_manifests_refuse_paths_that_leave_their_asset_folder(tmp_path, field, value):
    """resolve_asset_dir joins asset_dir with the manifest's visual / collision: contained like asset.json."""
    from test_evaluate import fake_manifests

    p = fake_manifests(tmp_path / "scenes", ["s0"])[0]
    d = json.loads(p.read_text())
    d["objects"][0][field], d["content_hash"] = value, ""
    p.write_text(json.dumps(d))
    with pytest.raises(ss.SchemaError, match=r"manifest.json: objects\[0\]\." + field):
        ss.load_manifest(p)


def test_resolve_asset_dir_refuses_a_symlinked_mesh_pointing_outside(tmp_path):
    from test_evaluate import fake_manifests

    p = fake_manifests(tmp_path / "scenes", ["s0"])[0]
    m = ss.load_manifest(p)
    (tmp_path / "scenes" / "assets" / "x").mkdir(parents=True)
    (tmp_path / "scenes" / "assets" / "x" / "c.obj").symlink_to(tmp_path / "secret.obj")
    with pytest.raises(ss.SchemaError, match="resolves outside its asset folder"):
        ss.resolve_asset_dir(p, m.objects[0])


@pytest.mark.parametrize("kind", ["random_bytes", "nan_vertex", "inf_vertex", "empty"])
def test_a_corrupt_collision_file_is_a_rejection_naming_the_file(tmp_path, compose_env, kind):
    """Issue 25 item 9: random bytes used to fail with an error naming no file, a NaN vertex used to pass (trimesh
    drops it; the simulator reads the raw file)."""
    import os

    import scene_env

    cs = compose_env
    body = {"random_bytes": os.urandom(600), "nan_vertex": BOX_OBJ.replace("v 0 0.05 0", "v 0 nan 0").encode(),
            "inf_vertex": BOX_OBJ.replace("v 0 0 0.05", "v 0 0 inf").encode(), "empty": b""}[kind]
    d = _real_asset(tmp_path / "assets", "cube")
    (d / "collision_0.obj").write_bytes(body)
    with pytest.raises(ValueError, match=str(d / "collision_0.obj")):
        scene_env.collision_mesh(d / "collision_0.obj")
    sdir = _compose_scene(tmp_path, {"cube": "cube", "tray": "tray"})
    res = cs.compose_one(str(sdir), cs.Args(scenes_dir=str(tmp_path / "scenes"), render=False))
    assert res["status"] == "rejected" and str(d / "collision_0.obj") in res["reason"], res
    assert not (sdir / "manifest.json").exists()


def test_a_sound_tetrahedron_passes_the_collision_check(tmp_path):
    import scene_env

    d = _real_asset(tmp_path, "cube")
    assert len(scene_env.collision_mesh(d / "collision_0.obj").vertices) == 4


def test_a_nul_in_a_cached_asset_path_is_one_rebuilt_asset_not_an_aborted_run(tmp_path, capsys):
    """Issue 25 item 9: `visual.glb\\u0000.txt` in a cached asset.json used to abort the whole asset run with a
    ValueError traceback; now the record is refused with its field and that one asset is rebuilt."""
    g = scene("s", obj("cube", "target", "block", "a red block", (0.05, 0.04, 0.03), "red", graspable=True),
              obj("tray", "destination", "tray", "a black tray", (0.3, 0.22, 0.025)), relation="ON")
    write_scenes(tmp_path / "scenes", [g])
    args = args_for(tmp_path, stability_check=False)
    ga.main(args)
    links = ss.load_asset_links(tmp_path / "scenes" / "s" / "asset_links.json")
    rec_path = tmp_path / "assets" / links.objects["cube"] / "asset.json"
    d = json.loads(rec_path.read_text())
    d["paths"]["visual"] = "visual.glb\u0000.txt"
    rec_path.write_text(json.dumps(d))
    with pytest.raises(ss.SchemaError, match="paths.visual: .*NUL"):
        ss.load_asset_record(rec_path)
    capsys.readouterr()
    summary = ga.main(args)  # no traceback: that asset is rebuilt, the other one stays cached
    assert summary["generated"] == 1 and summary["accepted"] == 1 and summary["cached"] == 1
    assert "cached record unusable, rebuilding it" in capsys.readouterr().out
    assert ss.load_asset_record(rec_path).paths["visual"] == "visual.glb"
