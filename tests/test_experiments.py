"""The experiment drivers: their statistics, and that every stage command they build parses with that stage's CLI."""

from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tyro

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "experiments")]
import evaluate as ev  # noqa: E402
import learning_demo as ld  # noqa: E402
import common as sc  # noqa: E402


def test_intervals_match_newcombe_1998():
    # Newcombe (1998), Stat. Med. 17, 873-890: 56/70 - 48/80, method 10 (hybrid score) -> [0.0524, 0.3339]; Wilson 0/10 -> [0, 0.2775]
    d, lo, hi = ev.newcombe_diff(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    assert ev.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert sc.wald_diff(56, 70, 48, 80)[1:] == pytest.approx((0.0575, 0.3425), abs=1e-4)  # Newcombe's method 1


def test_paired_and_time_to_finish_differences():
    m, lo, hi = ld.paired_diff([False] * 50 + [True] * 50, [True] * 100)
    assert m == pytest.approx(0.5) and lo < 0.5 < hi
    d, lo, hi = ld.tf_diff([10.0, 12.0, 11.0, 9.0], [7.0, 8.0, 7.5, 8.5])
    assert d == pytest.approx(-2.75) and lo < d < hi < 0
    assert all(x != x for x in ld.tf_diff([1.0], [2.0, 3.0]))  # too few successes: NaN, not a made-up interval


def test_checkpoint_selection_is_best_eval_then_next_rollouts(tmp_path):
    evals = {5: 0.5, 10: 0.875, 15: 0.875, 20: 0.875}  # ckpt 20 has no file: it cannot be chosen
    roll = {i: (0.9 if 11 <= i <= 15 else 0.4) for i in range(1, 26)}
    lines = [{"iteration": i, "charts/success_rate": roll[i], **({"eval/success_rate": evals[i]} if i in evals else {})}
             for i in range(1, 26)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    for it in (5, 10, 15):
        (tmp_path / f"ckpt_{it}.pt").write_bytes(b"")
    assert ld.select_checkpoint(tmp_path).name == "ckpt_10.pt"  # ties with 15 on eval; its next 5 rollouts are better
    (tmp_path / "ckpt_10.pt").unlink()
    assert ld.select_checkpoint(tmp_path).name == "ckpt_15.pt"
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps({"iteration": i, "charts/success_rate": 0.5})
                                                       for i in range(1, 6)) + "\n")
    with pytest.raises(SystemExit, match="no checkpoint with an in-training evaluation"):
        ld.select_checkpoint(tmp_path)


@pytest.mark.parametrize("script", ["learning_demo.py", "scene_scaling.py"])
def test_dry_run_commands_parse_with_each_stage_cli(tmp_path, script):
    out = subprocess.run([sys.executable, str(REPO / "experiments" / script), "--out-dir", str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    cmds = [line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("[run ]")]
    names = [line.split()[2].rstrip(":") for line in out.stdout.splitlines() if line.startswith("[run ]")]
    assert {"design", "assets", "compose", "evaluate"} <= set(names) and any(n.startswith("ppo") for n in names)
    for cmd in cmds:
        argv = shlex.split(cmd)
        stage = importlib.import_module(Path(argv[1]).stem)
        args = tyro.cli(stage.Args, args=argv[2:])  # raises SystemExit on any flag the stage does not know
        assert args is not None


# ---------------------------------------------------------------------------------------------
# The Table-1 study driver (experiments/table1_study.py)
# ---------------------------------------------------------------------------------------------

import table1_study as t1  # noqa: E402


def test_seed_interval_is_student_t_and_cells_use_the_training_seed_as_unit():
    m, lo, hi = t1.t_interval([0.2, 0.4, 0.6])
    assert m == pytest.approx(0.4) and hi - m == pytest.approx(4.302653 * 0.2 / 3 ** 0.5, rel=1e-5)  # t_{0.975, 2}
    assert all(x != x for x in t1.t_interval([0.5])[1:])  # one seed: no interval over seeds
    eps = [{"label": lab, "scene": sc, "success": ok, "elapsed_s": 5.0 if ok else None}
           for lab, sc, ok in [("start", "a", False), ("start", "a", False), ("start", "b", True), ("start", "b", False),
                               ("s0", "a", True), ("s0", "a", False), ("s1", "a", True), ("s1", "a", True),
                               ("s0", "b", True), ("s1", "b", True)]]
    multi = t1.group_cell(eps, ["s0", "s1"], ["a"], start="start")
    assert multi["sr"] == pytest.approx(0.75) and multi["unit"].startswith("training seed (n=2)")
    assert multi["diff"][0] == pytest.approx(0.75) and multi["diff"][1] < 0.75 < multi["diff"][2]
    single = t1.group_cell(eps, ["s0"], ["a", "b"], start="start")
    assert single["sr"] == pytest.approx(2 / 3) and single["unit"] == "episode (n=3)"
    assert single["ci"] == pytest.approx(ev.wilson_interval(2, 3)) and single["diff"] == pytest.approx(ev.newcombe_diff(2, 3, 1, 4))
    assert "| PPOFlow | 4 | 2 |" in t1.table_md([{"policy": "PPOFlow", "n": 4, "id": multi, "ood": single}])


def test_study_task_lists_cover_eight_families_and_do_not_overlap():
    w, il = t1.read_tasks(str(REPO / "examples/tasks_study.txt")), t1.read_tasks(str(REPO / "examples/tasks_study_il.txt"))
    families = [x for x in (REPO / "examples/tasks_study.txt").read_text().splitlines() if x.startswith("# ") and
                not x.startswith("#   ")][1:]
    assert len(w) >= 24 and len(families) >= 8 and not set(w) & set(il)


def test_imitation_pool_must_share_no_scene_with_w(tmp_path):
    def pool(name, scenes):
        for sid, objs in scenes.items():
            (tmp_path / name / sid).mkdir(parents=True)
            (tmp_path / name / sid / "manifest.json").write_text(json.dumps(
                {"objects": [{"asset_id": a, "init_xyz": xyz} for a, xyz in objs]}))
        return tmp_path / name
    w = pool("W", {"a-v0": [("carrot1", [0.3, 0.1, 0.0]), ("plate1", [0.25, -0.1, 0.0])]})
    il = pool("IL", {"a-v1": [("carrot2", [0.3, 0.1, 0.0]), ("plate1", [0.25, -0.1, 0.0])],  # other carrot instance
                     "a-v2": [("carrot1", [0.3, 0.1, 0.0]), ("plate1", [0.25, -0.1, 0.0])],  # W's layout again
                     "a-v0": [("carrot3", [0.2, 0.0, 0.0])]})  # W's scene id
    assert t1.disjoint_pools(w, il) == ["a-v0", "a-v2"]
    r = subprocess.run([sys.executable, str(REPO / "experiments/table1_study.py"), "--out-dir", str(tmp_path / "s"),
                        "--il-seed", "0", "--dry-run"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "--il-seed" in r.stderr


def test_study_dry_run_commands_parse_and_cover_every_stage(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "experiments/table1_study.py"), "--out-dir", str(tmp_path),
                          "--dry-run"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith("[run ]")]
    names = [x.split()[2].rstrip(":") for x in lines]
    assert names[:6] == ["W_design", "W_assets", "W_compose", "IL_design", "IL_assets", "IL_compose"]
    assert {"splits", "il_start", "ppo_N1_s0", "ppo_N4_s0", "ppo_N4_s1", "ppo_N4_s2", "ppo_N12_s0", "more_il_N4",
            "evaluate"} <= set(names)
    for cmd in (x.split(": ", 1)[1] for x in lines):
        argv = shlex.split(cmd)
        stage_args = tyro.cli(importlib.import_module(Path(argv[1]).stem).Args, args=argv[2:])
        if Path(argv[1]).stem == "evaluate" and not stage_args.make_splits:
            assert stage_args.seed == 5000 and stage_args.deterministic and len(stage_args.ckpt) == 7


@pytest.mark.parametrize("stop,last", [("pools", "IL_compose"), ("il_start", "il_start"), ("ppo", "ppo_N12_s0")])
def test_study_stops_after_the_stage_it_is_told(tmp_path, stop, last):
    out = subprocess.run([sys.executable, str(REPO / "experiments/table1_study.py"), "--out-dir", str(tmp_path),
                          "--dry-run", "--stop-after", stop], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    names = [x.split()[2].rstrip(":") for x in out.stdout.splitlines() if x.startswith("[run ]")]
    assert names[-1] == last and "evaluate" not in names


@pytest.mark.timeout(900)  # ~250 s on a quiet 2-core machine; 400+ s measured beside a training job
def test_study_runs_end_to_end_at_a_tiny_budget_and_resumes(tmp_path):
    (tmp_path / "w.txt").write_text("put the green block on the plate\nput the red cube in the bowl\n")
    (tmp_path / "il.txt").write_text("put the yellow cube on the plate\n")
    cmd = [sys.executable, str(REPO / "experiments/table1_study.py"), "--out-dir", str(tmp_path / "study"),
           "--tasks-file", str(tmp_path / "w.txt"), "--il-tasks-file", str(tmp_path / "il.txt"), "--num-distractors", "0",
           "--il-variants-per-task", "1",
           "--min-pool", "2", "--ns", "1", "--multi-seed-n", "1", "--num-seeds", "2", "--env-workers", "2",
           "--il-episodes", "2", "--il-steps", "10", "--ppo-num-envs", "2", "--ppo-num-steps", "2", "--ppo-minibatch", "4",
           "--ppo-update-epochs", "1", "--ppo-iterations", "1", "--eval-episodes", "1", "--max-decisions", "20",
           "--compose-extra=--solver-attempts 1 --solver-min-successes 1 --no-render"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = tmp_path / "study"
    rep = json.loads((study / "report.json").read_text())
    policies = [row["policy"] for row in rep["rows"]]
    assert policies == ["N=0 IL start", "PPOFlow", "more imitation (compute-matched)"]
    assert rep["rows"][1]["id"]["unit"] == "training seed (n=2)" and len(rep["rows"][1]["id"]["per_seed"]) == 2
    assert rep["env_decisions"] == {"ppo_N1_s0": 4, "ppo_N1_s1": 4} and len(rep["ood"]) == 1
    for f in ("report.md", "table.md", "sr_vs_n.png", "learning_curves.png", "steps.json"):
        assert (study / f).exists(), f
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)  # every stage is done: all skipped
    assert r.returncode == 0 and "[run ]" not in r.stdout and r.stdout.count("[skip]") >= 12


def test_report_html_plays_render_videos_and_keeps_images_and_links():
    import report

    page = report.markdown_to_html("- IL: s__0<br>[s__0/video.mp4](learning/eval/render/il/s__0/video.mp4)\n"
                                   "![curve](a.png) and [log](steps.json)\n")
    assert '<video controls src="learning/eval/render/il/s__0/video.mp4"' in page
    assert '<img alt="curve" src="a.png"' in page and '<a href="steps.json">log</a>' in page
