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


def test_a_resume_lists_a_step_whose_wall_time_was_lost_as_unknown(tmp_path):
    """A driver killed after a stage wrote its output but before run_step recorded its time: on the resume the step is
    skipped and kept in steps.json with its wall time unknown, so budget tables list it instead of dropping it."""
    steps = tmp_path / "steps.json"
    (tmp_path / "done.pt").write_text("x")
    sc.run_step("fast", [sys.executable, "-c", "pass"], None, tmp_path / "logs", steps)
    assert sc.run_step("lost", ["train.py", "--x"], tmp_path / "done.pt", tmp_path / "logs", steps) == 0.0
    st = json.loads(steps.read_text())
    assert st["lost"]["wall_s"] is None and st["lost"]["cmd"] == "train.py --x" and st["fast"]["wall_s"] >= 0
    assert sc.fmt_wall(st["lost"]) == "unknown" and sc.fmt_load(st["lost"]) == "-"
    assert sc.total_wall(st).endswith("+ 1 step(s) of unknown wall time")
    sc.run_step("lost", ["train.py", "--x"], tmp_path / "done.pt", tmp_path / "logs", steps)  # a second resume
    assert json.loads(steps.read_text()) == st


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


# ---------------------------------------------------------------------------------------------
# Table 1 on the object-state proxy (experiments/table1_study.py --obs-mode state, issue 28)
# ---------------------------------------------------------------------------------------------


def _state_args(tmp_path, **kw):
    return t1.with_mode_defaults(t1.Args(obs_mode="state", out_dir=str(tmp_path), **kw))


def test_recipe_budget_reads_the_last_value_and_needs_every_budget_flag():
    b = sc.recipe_budget(sc.STATE_PROXY_RECIPE)
    assert b["env_decisions"] == b["num_envs"] * b["num_steps"] * b["num_iterations"]
    assert b["max_grad_steps"] == b["num_iterations"] * b["update_epochs"] * (b["num_envs"] * b["num_steps"] // b["minibatch_size"])
    over = sc.recipe_budget(sc.STATE_PROXY_RECIPE + " --num-iterations=3 --num-steps 20")  # tyro: the last one wins
    assert (over["num_iterations"], over["num_steps"], over["env_decisions"]) == (3, 20, b["num_envs"] * 20 * 3)
    with pytest.raises(ValueError, match="--minibatch-size is not in"):
        sc.recipe_budget("--num-envs 2 --num-steps 3 --num-iterations 4 --update-epochs 1")
    assert sc.scene_cover_flags(16, 8) == ["--env.resample-every", "4"] and sc.scene_cover_flags(8, 8) == []


def test_state_mode_defaults_leave_the_pixel_defaults_alone(tmp_path):
    px = t1.with_mode_defaults(t1.Args())
    assert px.ns == [1, 4, 12] and px.env_workers == 4 and px.ppo_extra == t1.RECIPE and px.il_tasks_file is None
    st = _state_args(tmp_path, ns=[1, 2])
    assert st.ns == [1, 2] and st.env_workers == 8 and st.ppo_extra == "--num-iterations 40" and st.il_tasks_file.endswith("tasks_study_il.txt")
    assert t1.episodes_per_scene(16, 200) == 13 and t1.episodes_per_scene(1, 200) == 200 and t1.episodes_per_scene(3, 2) == 1


def test_state_ood_set_keeps_only_targets_no_training_pool_holds(tmp_path):
    def man(target, *others):
        return {"success": {"target": "t", "destination": "d"},
                "objects": [{"name": "t", "asset_id": target}] + [{"name": f"o{i}", "asset_id": a} for i, a in enumerate(others)]}
    w = {"w0": man("carrot#0", "plate#0"), "w1": man("cube#0", "bowl#0", "donut#0")}  # a donut distractor in W
    il = {"i0": man("apple#0", "plate#0")}
    ood = {"o0": man("eggplant#0", "plate#0"), "o1": man("donut#0", "plate#0"), "o2": man("apple#0", "bowl#0"),
           "o3": man("kiwi#0", "bowl#0")}
    kept, dropped = t1.unseen_targets(ood, [w, il])
    assert kept == ["o0", "o3"] and set(dropped) == {"o1", "o2"}  # a shared destination is fine, a seen target not
    assert "w1" in dropped["o1"] and "i0" in dropped["o2"]
    assert t1.target_of(ood["o0"])["asset_id"] == "eggplant#0"


def test_state_task_lists_ood_targets_are_new_objects_of_the_same_families():
    def families(name):
        return [x for x in (REPO / "examples" / name).read_text().splitlines() if x.startswith("# ") and not x.startswith("#   ")]
    ood = t1.read_tasks(str(REPO / "examples/tasks_study_ood.txt"))
    train = t1.read_tasks(str(REPO / "examples/tasks_study.txt")) + t1.read_tasks(str(REPO / "examples/tasks_study_il.txt"))
    assert len(ood) >= 16 and not set(ood) & set(train)
    fam = [f.removeprefix("# ").split()[-1] for f in families("tasks_study_ood.txt")[-8:]]
    assert len(fam) == 8 and fam == [f.removeprefix("# ").split()[-1] for f in families("tasks_study.txt")[-8:]]


def test_state_every_n_spends_the_same_env_steps_and_the_baseline_matches_them(tmp_path):
    import ppoflow_pi0 as pp
    import train_imitation as ti

    a = _state_args(tmp_path)
    p = tmp_path
    cmds = {n: t1.ppo_cmd(a, p / "W", p / "splits.json", p / "start.pt", p / "demos.pt", p / f"r{n}", n, 1) for n in (1, 4, 16)}
    budgets = {n: sc.recipe_budget(c) for n, c in cmds.items()}
    assert len({b["env_decisions"] for b in budgets.values()}) == 1 and budgets[1]["env_decisions"] == 32000
    for n, c in cmds.items():
        args = tyro.cli(pp.Args, args=c[2:])
        assert (args.num_train_scenes, args.split_index, args.seed, args.env.obs_mode) == (n, 1, 2, "state")
        assert args.env.resample_every == (4 if n > args.num_envs else 0)  # 16 scenes on 8 envs: every scene visited
    b = budgets[16]
    base = tyro.cli(ti.Args, args=t1.baseline_cmd(a, p / "W", [f"s{i}" for i in range(16)], p / "start.pt", p / "b", 1, b)[2:])
    assert base.max_collect_decisions * base.num_envs == b["env_decisions"]  # the expert's env decisions = PPOFlow's
    assert (base.steps, base.batch_size, base.stats, base.env.obs_mode) == (b["max_grad_steps"], b["minibatch_size"], "init", "state")
    with pytest.raises(SystemExit, match="less than one episode"):
        t1.baseline_cmd(a, p / "W", ["s0"], p / "start.pt", p / "b", 0, {**b, "env_decisions": 8 * 24})


def test_state_table_rows_use_the_seed_as_unit_and_pair_with_the_start():
    start = {"id": (50, 200), "ood": (40, 200), "tf": 6.0}
    runs = [{"method": m, "n": n, "seed": s, "id": (k, 200), "id_start": (ks, 200), "ood": (ko, 200), "tf": 5.0}
            for m, n, s, k, ks, ko in [("PPOFlow", 1, 0, 120, 40, 30), ("PPOFlow", 1, 1, 140, 60, 50),
                                       ("PPOFlow", 1, 2, 100, 50, 40), ("PPOFlow", 16, 0, 90, 50, 80),
                                       ("PPOFlow", 16, 1, 100, 50, 90), ("PPOFlow", 16, 2, 80, 50, 70),
                                       (t1.BASELINE, 16, 0, 60, 50, 50), (t1.BASELINE, 16, 1, 70, 50, 45),
                                       (t1.BASELINE, 16, 2, 50, 50, 40)]]
    rows = t1.state_rows(start, runs)
    assert [(r["policy"], r["n"], r["runs"]) for r in rows] == [(t1.START, 0, 1), ("PPOFlow", 1, 3), ("PPOFlow", 16, 3),
                                                                (t1.BASELINE, 16, 3)]
    r0, r1, r16 = rows[:3]
    assert r0["id"]["unit"] == "episode (n=200)" and r0["id"]["ci"] == pytest.approx(ev.wilson_interval(50, 200))
    assert r0["gap"] == pytest.approx(ev.newcombe_diff(50, 200, 40, 200))
    assert r1["id"]["sr"] == pytest.approx(0.6) and r1["id"]["unit"] == "training seed (n=3)"
    assert r1["id"]["ci"] == pytest.approx(sc.t_interval([0.6, 0.7, 0.5])[1:])
    assert r1["id"]["diff"] == pytest.approx(sc.t_interval([0.4, 0.4, 0.25]))  # paired with the start on its scenes
    assert r16["ood"]["diff"] == pytest.approx(sc.t_interval([0.2, 0.25, 0.15]))  # vs the start's 20% on OOD
    assert r1["gap"] == pytest.approx(sc.t_interval([0.45, 0.45, 0.3])) and r16["gap"][0] == pytest.approx(0.05)
    table = t1.state_table_md(rows)
    assert t1.STATE_PROXY_LABEL in table and "| PPOFlow | 16 | 3 | 45.0 [" in table and f"| {t1.BASELINE} | 16 | 3 |" in table
    verdict = "\n".join(t1.state_verdict(rows, runs))
    assert "Goal 1, OOD SR at N = 16 above the N = 0 start:** +20.0 [" in verdict and "**met**" in verdict
    assert "Goal 2" in verdict and "40.0 -> 5.0" in verdict and "PPOFlow better, the interval excludes 0" in verdict


def test_state_dry_run_commands_parse_and_cover_every_stage(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "experiments/table1_study.py"), "--obs-mode", "state", "--out-dir",
                          str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith("[run ]")]
    names = [x.split()[2].rstrip(":") for x in lines]
    assert names[:9] == [f"{p}_{s}" for p in ("W", "IL", "OOD") for s in ("design", "assets", "compose")]
    runs = [f"ppo_N{n}_s{s}" for n in (1, 4, 16) for s in range(3)] + [f"more_il_N16_s{s}" for s in range(3)]
    evals = ["eval_start_W"] + [f"eval_id_N{n}_s{s}" for n in (1, 4, 16) for s in range(3)] + ["eval_ood"]
    assert names[9:] == ["splits", "il_start", "il_select"] + runs + evals
    budgets = set()
    for name, cmd in zip(names, (x.split(": ", 1)[1] for x in lines)):
        argv = shlex.split(cmd)
        a = tyro.cli(importlib.import_module(Path(argv[1]).stem).Args, args=argv[2:])
        if name.startswith("eval_"):
            per_set = len(a.scene_ids) * a.episodes_per_scene
            assert a.seed == 5000 and a.deterministic and per_set >= 200 and a.success_check == "chunk"
        if name.startswith("ppo_"):
            budgets.add(sc.recipe_budget(argv)["env_decisions"])
        if name in ("il_start", *runs):
            assert a.env.obs_mode == "state"
    assert budgets == {32000}


@pytest.mark.parametrize("flags,msg", [(["--il-init", "x.pt"], "--il-init is the pixel mode's"),
                                       (["--ood-seed", "0"], "must differ"), (["--ns", "0", "4"], "must be >= 1")])
def test_state_mode_refuses_bad_inputs(tmp_path, flags, msg):
    r = subprocess.run([sys.executable, str(REPO / "experiments/table1_study.py"), "--obs-mode", "state", "--out-dir",
                        str(tmp_path), "--dry-run", *flags], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and msg in r.stderr


@pytest.mark.timeout(2700)  # 19 stage processes, 10-25 s each on a quiet 2-core machine (~6 min); at nice 19 beside
# a training job (load 10) ~2 min each: ~38 min measured
def test_state_study_runs_end_to_end_at_a_tiny_budget_and_resumes(tmp_path):
    """Pools of 2 (W) + 1 (IL) + 2 (OOD) scenes, N in {1, 2}, one seed (the seed-level statistics are unit-tested
    above), one PPOFlow iteration of 40 decisions, one baseline, 1-2 episodes per scene."""
    (tmp_path / "w.txt").write_text("put the green block on the plate\nput the red cube in the bowl\n")
    (tmp_path / "il.txt").write_text("put the yellow cube on the plate\n")
    (tmp_path / "ood.txt").write_text("put the brick on the plate\nput the small purple cube in the bowl\n")
    cmd = [sys.executable, str(REPO / "experiments/table1_study.py"), "--obs-mode", "state", "--out-dir",
           str(tmp_path / "study"), "--tasks-file", str(tmp_path / "w.txt"), "--il-tasks-file", str(tmp_path / "il.txt"),
           "--ood-tasks-file", str(tmp_path / "ood.txt"), "--num-distractors", "0", "--il-variants-per-task", "1",
           "--min-pool", "2", "--min-ood", "2", "--ns", "1", "2", "--num-seeds", "1", "--env-workers", "2",
           "--il-episodes", "2", "--il-steps", "4", "--il-save-every", "2", "--il-select-episodes", "1",
           "--eval-episodes-per-set", "2", "--max-decisions", "20",
           "--ppo-extra=--num-iterations 1 --num-envs 2 --num-steps 20 --minibatch-size 20 --update-epochs 1 "
           "--critic-warmup-iterations 0",
           "--compose-extra=--solver-attempts 1 --solver-min-successes 1 --no-render"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=2600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = tmp_path / "study"
    report = (study / "report.md").read_text()
    sections = [x for x in report.splitlines() if x.startswith("## ")]
    assert sections[:3] == ["## Verdict", "## Design", f"## Table 1 ({t1.STATE_PROXY_LABEL})"]
    assert {"## Budget", "## Per run", "## Pools: the OOD targets", f"## Learning curves ({t1.STATE_PROXY_LABEL})",
            f"## SR and gap vs N ({t1.STATE_PROXY_LABEL})"} <= set(sections)
    assert report.splitlines()[0] == f"# Table 1 on the object-state proxy ({t1.STATE_PROXY_LABEL})"
    assert "**Goal 1, OOD SR at N = 2 above the N = 0 start:**" in report and "**Goal 2" in report
    table = (study / "table.md").read_text()
    rows = [x for x in table.splitlines() if x.startswith("| ") and "policy" not in x]
    assert t1.STATE_PROXY_LABEL in table and [x.split(" | ")[:3] for x in rows] == [
        ["| N=0 start", "0", "1"], ["| PPOFlow", "1", "1"], ["| PPOFlow", "2", "1"], [f"| {t1.BASELINE}", "2", "1"]]
    rep = json.loads((study / "report.json").read_text())
    assert rep["label"] == t1.STATE_PROXY_LABEL and rep["rows"][1]["id"]["unit"].startswith("episode")
    for run in rep["runs"]:  # ID: its own N scenes, >= 2 episodes; OOD: the OOD set, >= 2 episodes
        assert run["id"][1] >= 2 and run["ood"][1] >= 2 and len(run["scenes"]) == run["n"]
    pools = json.loads((study / "pools.json").read_text())
    assert len(pools["W"]) == 2 and len(pools["OOD"]) == 2 and not set(pools["OOD"]) & set(pools["W"] + pools["IL"])
    assert pools["ood_targets"][pools["OOD"][0]]["new_template"]  # the brick: no training target is one
    steps = {json.loads(x).get("global_step") for n in (1, 2)
             for x in (study / f"runs/ppo_N{n}_s0/metrics.jsonl").read_text().splitlines() if x.strip()}
    assert steps == {40}  # the same env decisions whatever N
    assert "| more_il_N2_s0 |" in report and "| ppo_N1_s0 | " in report and "| eval_ood |" in report
    for f in ("sr_vs_n.png", "gap_vs_n.png", "learning_curves_N1.png", "learning_curves_N2.png", "start.json"):
        assert (study / f).stat().st_size > 0, f
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)  # every stage done: all skipped
    assert r.returncode == 0 and "[run ]" not in r.stdout and r.stdout.count("[skip]") == 19


def test_a_stage_cut_short_is_resumed_from_its_newest_checkpoint(tmp_path):
    """common.interrupted / resume_imitation: the drivers pass --resume to a stage whose folder holds numbered
    checkpoints and no ckpt_final.pt (train_imitation.py and ppoflow_pi0.py then continue exactly), never otherwise."""
    run = tmp_path / "il"
    assert sc.interrupted(run) is None and sc.resume_imitation(run) == []  # not started
    run.mkdir()
    for step in (2, 10, 4):
        (run / f"ckpt_{step}.pt").write_bytes(b"")
    assert sc.interrupted(run) == run / "ckpt_10.pt" and sc.resume_imitation(run) == ["--resume"]
    (run / "ckpt_final.pt").write_bytes(b"")
    assert sc.interrupted(run) is None and sc.resume_imitation(run) == []  # finished: the stage is skipped anyway
