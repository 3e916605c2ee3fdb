"""Faults and fuzz at the robot boundary (deploy_widowx.py): whatever the policy or the robot's own readings
contain, no unsafe command leaves the safety layer, every abnormal exit of a trial holds the arm, and a dry run
changes nothing on the robot. Runs against the recording fakes of tests/test_deploy_widowx.py."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploy_widowx as dw  # noqa: E402
import scene_schema as ss  # noqa: E402
from test_deploy_widowx import (MOTION, FakeWidowXClient, ScriptPolicy, _protocol_args, _trial,  # noqa: E402,F401
                                fake_bridge, fake_interbotix)

LO, HI = np.asarray(dw.Args().workspace_lo), np.asarray(dw.Args().workspace_hi)
MAX_T, MAX_R = dw.Args().max_step_translation_m, dw.Args().max_step_rotation_rad
NASTY = np.array([np.nan, np.inf, -np.inf, 1e308, -1e308, 1e30, 5e-324, -0.0, 1e-3, 3.0])
CAMERA = types.SimpleNamespace(read=lambda: np.zeros((48, 64, 3), np.uint8))


def fuzz_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n (pose [6], delta [6]) pairs: a third plain, the rest with nasty values (non-finite, huge, denormal)
    sprinkled in; poses inside, outside and on the edge of the box, some non-finite."""
    rng = np.random.default_rng(seed)
    delta = rng.normal(0, 0.05, (n, 6)) * rng.choice([1, 10, 1e3], (n, 1))
    pose = np.concatenate([rng.uniform(LO - 0.05, HI + 0.05, (n, 3)), rng.uniform(-np.pi, np.pi, (n, 3))], 1)
    pose[rng.random(n) < 0.1, :3] = HI  # exactly on the edge
    nasty_d = rng.random((n, 6)) < np.where(np.arange(n)[:, None] < n // 3, 0.0, 0.5)
    delta[nasty_d] = rng.choice(NASTY, nasty_d.sum())
    nasty_p = rng.random((n, 6)) < 0.03
    pose[nasty_p] = rng.choice(NASTY[:3], nasty_p.sum())
    return pose, delta


def unsafe(pose: np.ndarray, sent: np.ndarray) -> list[str]:
    """Why a sent delta would be unsafe: non-finite, over a step limit, or leaving / moving away from the box."""
    why = []
    if not np.isfinite(sent).all():
        return ["non-finite"]
    if np.linalg.norm(sent[:3]) > MAX_T + 1e-9 or np.abs(sent[3:6]).max() > MAX_R + 1e-9:
        why.append("step")
    if np.isfinite(pose[:3]).all():
        dist = lambda p: np.linalg.norm(p - np.clip(p, LO, HI))  # noqa: E731  distance to the box
        if dist(pose[:3] + sent[:3]) > dist(pose[:3]) + 1e-9:
            why.append("box")
    elif np.any(sent != 0):
        why.append("moved from an unknown pose")
    return why


def test_fuzz_safety_layer_never_emits_an_unsafe_delta():
    pose, delta = fuzz_inputs(30_000)
    n_nonfinite_in = int((~np.isfinite(delta).all(1) | ~np.isfinite(pose[:, :3]).all(1)).sum())
    assert n_nonfinite_in > 10_000  # the fuzz really tries non-finite inputs
    bad, refused = [], 0
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no silent overflow / NaN arithmetic inside
        for p, d in zip(pose, delta):
            sent, why = dw.safe_ee_delta(p, d, LO, HI, MAX_T, MAX_R)
            refused += any(w.startswith("non_finite") for w in why)
            if unsafe(p, sent):
                bad.append((p, d, sent, unsafe(p, sent)))
    assert bad == [], f"{len(bad)} unsafe commands, first: {bad[:1]}"
    assert refused >= n_nonfinite_in - int((~np.isfinite(pose[:, 3:]).all(1)).sum())


def test_nonfinite_gripper_keeps_the_gripper_as_it_is():
    assert dw.gripper_open_from_action(float("nan")) is None
    assert dw.gripper_open_from_action(float("inf")) is None and dw.gripper_open_from_action(-1.0) is False


def _nan_chunks():
    c = np.array([[0.01, 0, 0, 0, 0, 0, 1.0]] * 4)
    chunks = []
    for i, v in enumerate([np.nan, np.inf, -np.inf]):
        x = c.copy()
        x[:, i] = v  # xyz
        chunks.append(x)
        y = c.copy()
        y[:, 3 + i] = v  # rotation
        chunks.append(y)
    g = c.copy()
    g[:, 6] = np.nan  # gripper
    return chunks + [g]


def test_bridge_trial_with_nonfinite_actions_sends_only_finite_holds(fake_bridge):
    chunks = _nan_chunks()
    args = dw.Args(backend="bridge", max_decisions=len(chunks), control_hz=1000.0, gripper_debounce=1)
    robot = dw.BridgeRobot(args, 224)
    res = _trial(robot, ScriptPolicy(chunks), args)
    sent = [e[1] for e in fake_bridge.instances[0].log if e[0] == "step_action"]
    assert len(sent) == 4 * len(chunks) and all(np.isfinite(a).all() for a in sent)
    assert res["n_nonfinite"] == 4 * (len(chunks) - 1)  # every xyz / rotation NaN step was refused
    assert all(np.all(a[:6] == 0) for a in sent[:4 * (len(chunks) - 1)])  # ...as a hold (zero delta)
    assert all(a[6] == 1.0 for a in sent)  # a NaN gripper never reads as "close": it stays open


def test_bridge_nonfinite_robot_pose_is_never_composed_onto(fake_bridge, monkeypatch):
    args = dw.Args(backend="bridge", max_decisions=2, control_hz=1000.0)
    robot = dw.BridgeRobot(args, 224)
    monkeypatch.setattr(FakeWidowXClient, "get_observation", lambda self: {
        "state": np.array([np.nan, 0.0, np.inf, 0.0, 1.2, 0.0, 1.0]), "full_image": np.zeros((48, 64, 3), np.uint8)})
    res = _trial(robot, ScriptPolicy([[[0.01, 0, 0, 0, 0, 0, 1.0]] * 4]), args)
    sent = [e[1] for e in fake_bridge.instances[0].log if e[0] == "step_action"]
    assert sent and all(np.all(a[:6] == 0) for a in sent) and res["n_nonfinite"] == len(sent)


def test_interbotix_nan_rotation_is_refused_without_crash(fake_interbotix):
    args = dw.Args(backend="interbotix", max_decisions=len(_nan_chunks()), control_hz=1000.0, gripper_debounce=1)
    robot = dw.InterbotixRobot(args)
    _trial(robot, ScriptPolicy(_nan_chunks()), args, camera=CAMERA)  # used to raise LinAlgError
    bot = fake_interbotix.instances[0]
    for e in bot.log:
        if e[0] in ("set_joint_positions", "ik", "set_ee_pose_matrix!", "publish_positions"):
            assert np.isfinite(e[1]).all(), e
    assert ("grasp", 0.0) not in bot.log  # the NaN gripper did not close it
    # the backend's own last line of defence, called directly
    assert robot.apply_ee_delta(np.array([0, 0, 0, np.nan, 0, 0])) == "non-finite delta refused"
    sim = dw.SimRobot.__new__(dw.SimRobot)  # no env: the check must come before any use of it
    assert sim.apply_ee_delta(np.full(6, np.inf)) == "non-finite delta refused"


@pytest.mark.parametrize("backend", ["bridge", "interbotix"])
@pytest.mark.parametrize("fail_at", ["policy", "camera", "robot"])
def test_every_abnormal_exit_of_a_trial_holds_the_arm(fake_bridge, fake_interbotix, backend, fail_at, monkeypatch):
    args = dw.Args(backend=backend, max_decisions=3, control_hz=1000.0)
    robot = dw.BridgeRobot(args, 224) if backend == "bridge" else dw.InterbotixRobot(args)
    log = (fake_bridge.instances if backend == "bridge" else fake_interbotix.instances)[0].log
    hold_call = "move" if backend == "bridge" else "publish_positions"

    def boom(*a, **k):
        raise RuntimeError(f"injected {fail_at} failure")

    policy = ScriptPolicy([[[0.01, 0, 0, 0, 0, 0, 1.0]] * 4], hook=lambda i: i == 1 and fail_at == "policy" and boom())
    camera = CAMERA
    if fail_at == "camera":
        calls = []
        camera = types.SimpleNamespace(read=lambda: (calls.append(1), boom() if len(calls) == 3 else None,
                                                     np.zeros((48, 64, 3), np.uint8))[2])
    if fail_at == "robot":
        n = []
        real = robot.apply_ee_delta
        monkeypatch.setattr(robot, "apply_ee_delta", lambda d: (n.append(1), boom() if len(n) == 3 else real(d))[1])
    with pytest.raises(RuntimeError, match="injected"):
        _trial(robot, policy, args, camera=camera if backend == "interbotix" or fail_at == "camera" else None)
    i = max(k for k, e in enumerate(log) if e[0] == hold_call)
    assert [e for e in log[i + 1:] if e[0] in MOTION] == []  # the hold is the last motion command


def test_a_failing_hold_still_surfaces_the_original_error(fake_bridge, monkeypatch, capsys):
    args = dw.Args(backend="bridge", max_decisions=2, control_hz=1000.0)
    robot = dw.BridgeRobot(args, 224)
    monkeypatch.setattr(robot, "stop", lambda: (_ for _ in ()).throw(OSError("cable pulled")))
    with pytest.raises(ZeroDivisionError):
        _trial(robot, ScriptPolicy([[[0.0] * 6 + [1.0]] * 4], hook=lambda i: 1 / 0), args)
    assert "USE THE HARDWARE STOP" in capsys.readouterr().err


def test_exception_mid_session_leaves_a_valid_log_and_resume_finishes(fake_bridge, tmp_path, monkeypatch):
    step, calls = FakeWidowXClient.step_action, []

    def flaky(self, action, blocking=False):
        calls.append(1)
        if len(calls) == 6:
            raise ConnectionError("robot server went away")
        return step(self, action, blocking)

    monkeypatch.setattr(FakeWidowXClient, "step_action", flaky)
    args = _protocol_args(tmp_path)
    with pytest.raises(ConnectionError):
        dw.main(args)
    log = fake_bridge.instances[0].log
    assert any(e[0] == "move" for e in log) and log[-1] == ("stop",)  # held, then the client closed
    recs = ss.read_jsonl(tmp_path / "trials" / "bridge-a" / "trials.jsonl")
    assert [r["trial_key"] for r in recs] == ["carrot#000"]  # the interrupted trial is not logged as done
    monkeypatch.setattr(FakeWidowXClient, "step_action", step)
    dw.main(args)
    assert len(ss.read_jsonl(tmp_path / "trials" / "bridge-a" / "trials.jsonl")) == 6


STATE_CHANGING = MOTION | {"robot_set_motor_pid_gains", "robot_torque_enable", "init_gravity_compensation"}


@pytest.mark.parametrize("backend", ["bridge", "interbotix"])
def test_dry_run_sends_nothing_that_changes_the_robot(fake_bridge, fake_interbotix, backend, capsys):
    args = dw.Args(backend=backend, max_decisions=2, control_hz=1000.0, dry_run=True, pos_p_gain=800,
                   estop_action="gravity_compensation" if backend == "interbotix" else "hold")
    robot = dw.make_robot(args, {"scene": "a"}, 224, 8)
    _trial(robot, ScriptPolicy([[[0.01, 0, 0, 0, 0, 0.05, -1.0]] * 4]), args,
           camera=CAMERA if backend == "interbotix" else None)
    robot.stop()
    robot.close()
    log = (fake_bridge.instances if backend == "bridge" else fake_interbotix.instances)[0].log
    assert [e[0] for e in log if e[0] in STATE_CHANGING] == []
    assert capsys.readouterr().out.count("[dry-run] ee delta") == 8
