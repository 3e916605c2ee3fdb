"""End to end: every stage as its CLI, talking only through files, at the smallest useful budget.

task text -> scene graph -> assets -> composed manifest -> imitation checkpoint -> PPOFlow checkpoint
-> evaluation report -> a deployment trial in the sim backend.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scene_schema as ss

REPO = Path(__file__).resolve().parents[1]
TASK = "put the green block on the plate"


def run(*argv: str, cwd: Path, timeout: int = 400) -> str:
    env = {**os.environ, "LP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.timeout(1500)
def test_pipeline_end_to_end(tmp_path):
    scenes, assets, runs = tmp_path / "scenes", tmp_path / "assets", tmp_path / "runs"

    run(str(REPO / "scene_designer.py"), "--task", TASK, "--out-dir", str(scenes), "--num-distractors", "1", cwd=tmp_path)
    (graph_path,) = scenes.glob("*/scene_graph.json")
    graph = ss.load_scene_graph(graph_path)
    assert graph.target.category == "toy_block" or "block" in graph.target.category
    assert graph.destination.category == "plate" and graph.goal.relation == "ON"

    run(str(REPO / "generate_assets.py"), "--scenes-dir", str(scenes), "--assets-dir", str(assets), cwd=tmp_path)
    links = ss.load_asset_links(graph_path.parent / "asset_links.json")
    assert {graph.target.name, graph.destination.name} <= set(links.objects)
    for asset_id in links.objects.values():
        assert ss.load_asset_record(assets / asset_id).accepted
    assert (assets / "contact_sheet.png").stat().st_size > 0

    run(str(REPO / "compose_scene.py"), "--scenes-dir", str(scenes), "--assets-dir", str(assets), cwd=tmp_path)
    manifest = ss.load_manifest(graph_path.parent)
    assert manifest.success == {"target": graph.target.name, "destination": graph.destination.name, "relation": "ON"}
    assert manifest.qa["solver"]["passed"]
    summary = json.loads((scenes / "compose_summary.json").read_text())
    assert summary["accepted"] and not summary["rejected"]

    il = runs / "il"
    run(str(REPO / "train_imitation.py"), "--scenes-dir", str(scenes), "--preset", "tiny", "--out", str(il),
        "--num-envs", "1", "--episodes", "2", "--steps", "20", "--log-every", "10", "--eval-episodes", "0", cwd=tmp_path)
    assert (il / "ckpt_final.pt").exists() and (il / "args.json").exists()

    ppo = runs / "ppo"
    run(str(REPO / "ppoflow_pi0.py"), "--scenes-dir", str(scenes), "--init", str(il / "ckpt_final.pt"),
        "--preset", "tiny", "--out", str(ppo), "--num-envs", "1", "--num-steps", "4", "--minibatch-size", "4",
        "--num-iterations", "1", "--eval-every", "0", "--env.max-decisions", "4", cwd=tmp_path)
    metrics = ss.read_jsonl(ppo / "metrics.jsonl")
    assert metrics and all(k in metrics[-1] for k in ("losses/pg_loss", "losses/v_loss", "charts/success_rate"))
    assert (ppo / "ckpt_final.pt").exists()

    ev = tmp_path / "eval"
    run(str(REPO / "evaluate.py"), "--ckpt", str(ppo / "ckpt_final.pt"), "--policy", "scripted",
        "--scenes-dir", str(scenes), "--episodes-per-scene", "1", "--num-envs", "1", "--max-decisions", "8",
        "--video-scenes", "0", "--no-latency", "--out-dir", str(ev), cwd=tmp_path)
    results = json.loads((ev / "results.json").read_text())
    assert len(results["policies"]) == 2
    table = (ev / "table.md").read_text()
    assert "scripted" in table

    trials = tmp_path / "trials.json"
    trials.write_text(json.dumps([{"scene": "s0", "command": TASK, "scene_id": str(graph_path.parent / "manifest.json")}]))
    out = run(str(REPO / "deploy_widowx.py"), "--backend", "sim", "--ckpt", str(ppo / "ckpt_final.pt"),
              "--trials-file", str(trials), "--trials-per-scene", "1", "--auto-label", "--max-decisions", "8",
              "--out-dir", str(tmp_path / "trials"), cwd=tmp_path)
    (session,) = [p for p in (tmp_path / "trials").iterdir() if p.is_dir()]
    assert len(ss.read_jsonl(session / "trials.jsonl")) == 1 and (session / "summary.md").exists(), out
