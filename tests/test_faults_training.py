"""Faults at the training boundary (ppoflow_pi0.py, train_imitation.py, evaluate.py's checkpoint reading): a run
killed with SIGKILL resumes with no metric row lost or duplicated; a --resume with other model flags fails before
writing anything; every bad checkpoint file gets one clear error saying what the file is and what was expected."""

from __future__ import annotations

import json
import os
import pickle
import re
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


# ---------------------------------------------------------------------------------------------
# Issue 25: resumes that cannot lie
# ---------------------------------------------------------------------------------------------

CHANGED = {"learning_rate": 0.5, "seed": 9, "gamma": 0.5, "ratio_power": 0.5, "clip_coef": 0.5, "num_envs": 6,
           "scene_ids": ["simpler:StackGreenCubeOnYellowCubeBakedTexInScene-v1"]}


def test_resume_refuses_every_changed_training_flag_and_names_it(tmp_path):
    run = P.main(fast_args(tmp_path / "r", num_iterations=1, eval_every=0), env_fn=FakeVecEnv)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for flag, value in CHANGED.items():
        with pytest.raises(P.CheckpointError, match=f"must repeat the run's flags.*--{flag.replace('_', '-')}: "
                                                    f"checkpoint .*, now {re.escape(repr(value))}"):
            P.main(fast_args(run, num_iterations=2, eval_every=0, resume=str(run / "ckpt_1.pt"), **{flag: value}),
                   env_fn=FakeVecEnv)
    with pytest.raises(P.CheckpointError) as e:  # several at once: each one named
        P.main(fast_args(run, num_iterations=2, eval_every=0, resume=str(run / "ckpt_1.pt"), learning_rate=0.5,
                         gamma=0.5), env_fn=FakeVecEnv)
    assert "--learning-rate: checkpoint 0.001, now 0.5" in str(e.value) and "--gamma: checkpoint 0.99, now 0.5" in str(e.value)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing touched


def test_resume_keeps_the_args_history_and_records_free_changes(tmp_path):
    run = P.main(fast_args(tmp_path / "r", num_iterations=1, eval_every=0), env_fn=FakeVecEnv)
    first = json.loads((run / "args.json").read_text())
    P.main(fast_args(run, num_iterations=2, eval_every=0, save_every=2, resume=str(run / "ckpt_1.pt")),
           env_fn=FakeVecEnv)
    P.main(fast_args(run, num_iterations=3, eval_every=0, save_every=2, resume=str(run / "ckpt_2.pt")),
           env_fn=FakeVecEnv)
    doc = json.loads((run / "args.json").read_text())
    assert doc["args"]["num_iterations"] == 3 and len(doc["args_history"]) == 2
    assert doc["args_history"][0] == first and doc["args_history"][1]["args"]["num_iterations"] == 2
    assert doc["resumed_from"]["iteration"] == 2 and doc["resumed_from"]["changed"] == {"num_iterations": 2}
    assert doc["args_history"][1]["resumed_from"]["changed"] == {"num_iterations": 1, "save_every": 1}
    assert [r["iteration"] for r in _rows(run)] == [1, 2, 3]


def test_resume_of_another_runs_checkpoint_or_into_an_empty_folder_is_refused(tmp_path):
    run = P.main(fast_args(tmp_path / "a", num_iterations=3, eval_every=0), env_fn=FakeVecEnv)
    with pytest.raises(P.CheckpointError, match="another run .* metric rows would be lost"):
        P.main(fast_args(tmp_path / "b", num_iterations=6, eval_every=0, resume=str(run / "ckpt_2.pt")),
               env_fn=FakeVecEnv)
    assert not (tmp_path / "b").exists()
    other = tmp_path / "c"  # the checkpoint copied into a folder without the run's metrics
    other.mkdir()
    (other / "ckpt_2.pt").write_bytes((run / "ckpt_2.pt").read_bytes())
    with pytest.raises(P.CheckpointError, match=r"iterations 1-2, but 2 are missing \(1-2\)"):
        P.main(fast_args(other, num_iterations=6, eval_every=0, resume=str(other / "ckpt_2.pt")), env_fn=FakeVecEnv)
    assert sorted(p.name for p in other.iterdir()) == ["ckpt_2.pt"]


def _flip_a_bit_in_the_largest_tensor(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_bit_flipped_checkpoint_is_refused(tmp_path):
    ck = tmp_path / "ckpt_1.pt"
    P.torch_save_atomic(P.policy_checkpoint(tiny_policy(), iteration=1, args={}), ck)
    assert P.load_policy(ck) is not None  # intact: verified and loaded
    _flip_a_bit_in_the_largest_tensor(ck)
    assert torch.load(ck, weights_only=True)["kind"] == "pi0_policy"  # torch itself still reads it
    with pytest.raises(P.CheckpointError, match="content hash mismatch"):
        P.load_policy(ck)


def test_stale_tmp_files_of_killed_saves_are_removed_at_start(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = run / ".ckpt_3.pt.999999999.x1.tmp"  # no such pid
        older = run / ".ckpt_2.pt.abc123.tmp"  # the name before the pid was in it
        busy = run / f".ckpt_4.pt.{live.pid}.y2.tmp"
        for f in (dead, older, busy):
            f.write_bytes(b"half a checkpoint")
        P.main(fast_args(run, num_iterations=1, eval_every=0), env_fn=FakeVecEnv)
        assert not dead.exists() and not older.exists() and busy.exists()
        assert not [f for f in run.glob(".*.tmp") if f != busy]  # the run's own saves left none
    finally:
        live.kill()
        live.wait()


def test_resume_allow_changes_applies_and_records_the_named_changes_only(tmp_path):
    """Issue 25 item 5: --resume-allow-changes lets a resume change the named training flags on purpose; the new
    learning rate really reaches the optimizer (its state carried the old one), args.json records the names, and
    every other difference, a model flag or an unknown name is still refused before anything is written."""
    run = P.main(fast_args(tmp_path / "r", num_iterations=1, eval_every=0), env_fn=FakeVecEnv)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    resume = dict(num_iterations=2, eval_every=0, resume=str(run / "ckpt_1.pt"), learning_rate=0.5, gamma=0.5)
    with pytest.raises(P.CheckpointError, match="--seed: checkpoint 3, now 9"):  # an unnamed change
        P.main(fast_args(run, seed=9, resume_allow_changes=("learning-rate", "gamma"), **resume), env_fn=FakeVecEnv)
    with pytest.raises(P.CheckpointError, match="--resume-allow-changes lora-rank: a model flag"):
        P.main(fast_args(run, resume_allow_changes=("learning-rate", "gamma", "lora-rank"), **resume), env_fn=FakeVecEnv)
    with pytest.raises(P.CheckpointError, match="--resume-allow-changes learnin-rate: not a flag"):
        P.main(fast_args(run, resume_allow_changes=("learnin-rate", "gamma"), **resume), env_fn=FakeVecEnv)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # refusals touch nothing
    P.main(fast_args(run, resume_allow_changes=("learning-rate", "--gamma"), **resume), env_fn=FakeVecEnv)
    doc = json.loads((run / "args.json").read_text())
    assert doc["resumed_from"]["allowed_changes"] == ["gamma", "learning_rate"]
    assert doc["resumed_from"]["changed"] == {"learning_rate": 1e-3, "gamma": 0.99, "num_iterations": 1}
    assert doc["args"]["learning_rate"] == 0.5 and len(doc["args_history"]) == 1
    ckpt = torch.load(run / "ckpt_2.pt", map_location="cpu", weights_only=True)
    assert ckpt["scheduler"]["base_lrs"][0] == 0.5 and ckpt["optimizer"]["param_groups"][0]["initial_lr"] == 0.5
    assert [r["iteration"] for r in _rows(run)] == [1, 2]
