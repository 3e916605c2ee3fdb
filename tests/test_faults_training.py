"""Faults at the training boundary (ppoflow_pi0.py, train_imitation.py, evaluate.py's checkpoint reading): a run
killed with SIGKILL resumes with no metric row lost or duplicated; a --resume with other model flags fails before
writing anything; every bad checkpoint file gets one clear error saying what the file is and what was expected."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import ppoflow_pi0 as P  # noqa: E402
import scene_schema as ss  # noqa: E402
from test_ppoflow import FakeVecEnv, fast_args, tiny_policy  # noqa: E402

KILLED_RUN = """
import sys, os, signal
sys.path[:0] = [{repo!r}, {tests!r}]
import ppoflow_pi0 as P
from test_ppoflow import FakeVecEnv, fast_args
from pathlib import Path
save = P.torch_save_atomic
def save_or_die(obj, path):  # SIGKILL the moment iteration 3's checkpoint would be written: its metrics row is out
    if Path(path).name == "ckpt_3.pt":
        os.kill(os.getpid(), signal.SIGKILL)
    save(obj, path)
P.torch_save_atomic = save_or_die
P.main(fast_args(Path({out!r}), num_iterations=4, eval_every=0), env_fn=FakeVecEnv)
"""


def _rows(run: Path) -> list[dict]:
    return ss.read_jsonl(run / "metrics.jsonl")


def test_resume_after_sigkill_has_every_metric_row_exactly_once(tmp_path):
    run, runner = tmp_path / "run", tmp_path / "runner.py"
    runner.write_text(textwrap.dedent(KILLED_RUN.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(run))))
    r = subprocess.run([sys.executable, str(runner)], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == -9, r.stderr[-2000:]
    assert [x["iteration"] for x in _rows(run)] == [1, 2, 3] and not (run / "ckpt_3.pt").exists()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 4, "glob')  # and a torn line, as a kill mid-append leaves it
    P.main(fast_args(run, num_iterations=4, eval_every=0, resume=str(run / "ckpt_2.pt")), env_fn=FakeVecEnv)
    full = P.main(fast_args(tmp_path / "full", num_iterations=4, eval_every=0), env_fn=FakeVecEnv)
    got, want = _rows(run), _rows(full)
    assert [x["iteration"] for x in got] == [1, 2, 3, 4]
    for a, b in zip(got, want):  # the deterministic fake env: the resumed run logs what the uninterrupted one did
        assert a["charts/success_rate"] == b["charts/success_rate"]
        assert a["losses/approx_kl"] == pytest.approx(b["losses/approx_kl"], abs=1e-6)


@pytest.mark.parametrize("flag,value", [("lora_rank", 8), ("num_inference_steps", 2), ("value_state", True),
                                        ("preset", "small")])
def test_resume_with_other_model_flags_fails_before_writing_anything(tmp_path, flag, value):
    run = P.main(fast_args(tmp_path / "r", num_iterations=1, eval_every=0), env_fn=FakeVecEnv)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(P.CheckpointError, match=f"--{flag.replace('_', '-')}: checkpoint .* now {value!r}"):
        P.main(fast_args(run, num_iterations=2, resume=str(run / "ckpt_1.pt"), **{flag: value}), env_fn=FakeVecEnv)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # args.json and metrics untouched


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase the error must contain)."""
    good = tmp / "good.pt"
    P.torch_save_atomic(P.policy_checkpoint(tiny_policy(), iteration=1, args={}), good)
    data = good.read_bytes()
    files = {
        "missing": (tmp / "nope.pt", "no such file"),
        "truncated": (tmp / "trunc.pt", "cannot be read"),
        "empty": (tmp / "empty.pt", "cannot be read"),
        "text": (tmp / "notes.pt", "cannot be read"),
        "foreign pickle": (tmp / "obj.pt", "cannot be read"),
        "tensor": (tmp / "tensor.pt", "is a Tensor"),
        "dict without model": (tmp / "dict.pt", "no 'model' entry"),
    }
    files["truncated"][0].write_bytes(data[: len(data) // 2])
    files["empty"][0].write_bytes(b"")
    files["text"][0].write_text("hello, I am not a checkpoint\n")
    files["foreign pickle"][0].write_bytes(pickle.dumps(Path("x")))  # a global weights_only refuses
    torch.save(torch.zeros(3), files["tensor"][0])
    torch.save({"weights": torch.zeros(3)}, files["dict without model"][0])
    return files


def test_every_bad_checkpoint_gets_one_clear_error(tmp_path):
    for name, (path, phrase) in _bad_files(tmp_path).items():
        with pytest.raises(P.CheckpointError) as e:
            P.load_policy(path)
        msg = str(e.value)
        assert str(path) in msg and "expected" in msg, name
        assert phrase in msg, (name, msg)
        assert "weights_only=False" not in msg, name


def test_imitation_or_foreign_checkpoint_to_resume_is_refused_with_the_fix(tmp_path):
    il = tmp_path / "il.pt"  # what train_imitation.py writes: a policy, its SFT optimizer, no PPO args
    P.torch_save_atomic(P.policy_checkpoint(tiny_policy(lora_rank=4), iteration=5, args={"episodes": 10, "steps": 5},
                                            optimizer={}), il)
    with pytest.raises(P.CheckpointError, match="pass it as --init"):
        P.main(fast_args(tmp_path / "r", resume=str(il)), env_fn=FakeVecEnv)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("stage", ["ppoflow_pi0.py", "train_imitation.py"])
def test_cli_bad_checkpoint_is_one_line_not_a_traceback(tmp_path, stage):
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    flag = "--resume" if stage == "ppoflow_pi0.py" else "--init"
    r = subprocess.run([sys.executable, str(REPO / stage), flag, str(bad), "--out", str(tmp_path / "o"),
                        "--scene-ids", "simpler:PutCarrotOnPlateInScene-v1"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and f"{stage}: error: {bad}: cannot be read" in r.stderr, r.stderr[-2000:]
    assert "weights_only=False" not in r.stderr
    assert not (tmp_path / "o" / "args.json").exists() or stage == "train_imitation.py"


def test_args_json_of_a_resumed_run_is_the_resumed_command(tmp_path):
    run = P.main(fast_args(tmp_path / "r", num_iterations=1, eval_every=0), env_fn=FakeVecEnv)
    P.main(fast_args(run, num_iterations=2, eval_every=0, resume=str(run / "ckpt_1.pt")), env_fn=FakeVecEnv)
    doc = json.loads((run / "args.json").read_text())
    assert doc["args"]["resume"] == str(run / "ckpt_1.pt") and doc["args"]["num_iterations"] == 2
