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
