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
import learning_demo as ld  # noqa: E402
import scene_scaling as sc  # noqa: E402


def test_intervals_match_newcombe_1998():
    # Newcombe (1998), Stat. Med. 17, 873-890: 56/70 - 48/80, method 10 (hybrid score) -> [0.0524, 0.3339]; Wilson 0/10 -> [0, 0.2775]
    d, lo, hi = sc.newcombe_diff(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    assert sc.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
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
