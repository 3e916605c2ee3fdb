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
from test_deploy_widowx import (MOTION, FakeWidowXClient, ScriptPolicy, _motions, _protocol_args, _trial,  # noqa: E402,F401
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


# ---------------------------------------------------------------------------------------------
# Issue 25: limits that cannot unlock motion, an e-stop with no command after it, NaN weights, a watchdog
# ---------------------------------------------------------------------------------------------

DO_NOTHING = [[0.0] * 6 + [1.0]] * 4  # no motion, gripper open (as after reset)


class _NoSleepScheduler(dw.DeadlineScheduler):
    def __init__(self, period, **kw):
        super().__init__(period, sleep=lambda s: None)


def _moved(log) -> bool:
    """A command that moves the arm or the gripper (the do-nothing policy asks for neither)."""
    return any((e[0] == "step_action" and (np.any(e[1][:6] != 0) or e[1][6] != 1.0)) or e[0] in ("move", "move_gripper")
               for e in log)


BAD_LIMITS = [  # the probe's cases, then more of the same kinds
    dict(max_step_rotation_rad=-0.3), dict(max_step_translation_m=-0.03), dict(max_step_translation_m=float("nan")),
    dict(max_step_rotation_rad=float("inf")), dict(max_step_translation_m=0.0), dict(max_step_translation_m=0.5),
    dict(workspace_lo=(0.5, 0.3, 0.45), workspace_hi=(0.1, -0.3, 0.0)), dict(workspace_hi=(0.5, 0.3, float("inf"))),
    dict(workspace_lo=(0.1, -0.3, -1.0)), dict(workspace_hi=(2.0, 0.3, 0.45)), dict(workspace_lo=(0.1, float("nan"), 0.0)),
    dict(control_hz=0.0), dict(control_hz=-5.0), dict(control_hz=float("nan")), dict(control_hz=1e9),
    dict(moving_time_s=-1.0), dict(moving_time_s=float("inf")), dict(joint_limit_margin_rad=-0.1),
    dict(gripper_debounce=0), dict(inference_timeout_s=float("nan")), dict(gripper_pressure=3.0),
]


@pytest.mark.parametrize("bad", BAD_LIMITS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_bad_limit_flags_are_refused_before_anything_moves(fake_bridge, tmp_path, bad):
    args = _protocol_args(tmp_path, **bad)
    with pytest.raises(SystemExit) as e:
        dw.main(args)
    msg = str(e.value.code)
    flag = "--" + next(iter(bad)).replace("_", "-")
    assert msg.startswith("error: unsafe limit flags") and flag in msg and "\n" not in msg, msg
    assert fake_bridge.instances == [] and not (tmp_path / "trials").exists()  # no client, nothing written
    with pytest.raises(SystemExit, match="unsafe limit flags"):  # run_trial, called directly, refuses too
        _trial(dw.BridgeRobot(dw.Args(backend="bridge"), 224), ScriptPolicy([DO_NOTHING]), dw.Args(backend="bridge", **bad))


def test_interbotix_start_pose_outside_the_box_is_refused(fake_interbotix):
    with pytest.raises(SystemExit, match="--start-pose"):
        dw.make_robot(dw.Args(backend="interbotix", start_pose=(0.7, 0.0, 0.15, 0.0, 1.57, 0.0)), {"scene": "a"}, 224, 4)
    assert fake_interbotix.instances == []


def _fuzz_limit_flags(rng) -> dict:
    """1-3 limit flags set to random finite / negative / zero / NaN / inf / huge values or a swapped / shifted box."""
    d = dw.Args()

    def scalar(default):
        kind = rng.integers(6)
        return float([rng.uniform(0.2, 1.5) * default, -rng.uniform(0, 2) * default, 0.0,
                      rng.choice([np.nan, np.inf, -np.inf]), 10 ** rng.uniform(-6, 6), default][kind])

    def box():
        lo, hi = np.asarray(d.workspace_lo), np.asarray(d.workspace_hi)
        kind = rng.integers(5)
        if kind == 0:
            return dict(workspace_lo=tuple(hi), workspace_hi=tuple(lo))  # swapped
        if kind == 1:
            a = lo.copy()
            a[rng.integers(3)] = rng.choice([np.nan, np.inf, -np.inf])
            return dict(workspace_lo=tuple(a))
        if kind == 2:  # a valid box somewhere else (may exclude the arm's pose)
            a = np.sort(rng.uniform(dw.ENVELOPE_LO, dw.ENVELOPE_HI, (2, 3)), 0)
            return dict(workspace_lo=tuple(a[0]), workspace_hi=tuple(a[1]))
        return dict(workspace_lo=tuple(lo + rng.normal(0, 0.3, 3)), workspace_hi=tuple(hi + rng.normal(0, 0.3, 3)))

    flags = {}
    for name in rng.choice(["max_step_translation_m", "max_step_rotation_rad", "control_hz", "moving_time_s",
                            "joint_limit_margin_rad", "box"], rng.integers(1, 4), replace=False):
        if name == "box":
            flags.update(box())
        else:
            flags[name] = scalar(getattr(d, name) if getattr(d, name) is not None else 0.2)
    return flags


def test_fuzz_limit_flags_never_move_a_do_nothing_policy(fake_bridge, tmp_path, monkeypatch):
    monkeypatch.setattr(dw, "load_policy", lambda args, get_robot: (ScriptPolicy([DO_NOTHING]), 224, 4))
    monkeypatch.setattr(dw, "DeadlineScheduler", _NoSleepScheduler)  # fuzzed rates as low as 0.5 Hz: do not sleep
    rng = np.random.default_rng(25)
    refused = ran = 0
    moved = []
    for i in range(300):
        flags = _fuzz_limit_flags(rng)
        FakeWidowXClient.instances = []
        (tmp_path / str(i)).mkdir()
        args = _protocol_args(tmp_path / str(i), trials_per_scene=1, labels="s,s", **flags)
        try:
            dw.main(args)
            ran += 1
        except SystemExit as e:
            assert str(e.code).startswith("error: unsafe limit flags") and FakeWidowXClient.instances == [], flags
            refused += 1
            continue
        if _moved(FakeWidowXClient.instances[0].log):
            moved.append(flags)
    assert moved == [], f"{len(moved)} of {ran} runs moved a do-nothing policy, first: {moved[0]}"
    assert refused > 100 and ran > 30  # the fuzz tried both kinds
    print(f"limit-flag fuzz: 300 tried, {refused} refused before any command, {ran} ran, 0 moved")


@pytest.mark.parametrize("other_thread", [False, True])
def test_estop_during_set_gripper_sends_no_arm_command(fake_interbotix, monkeypatch, other_thread):
    import threading

    args = dw.Args(backend="interbotix", max_decisions=2, control_hz=1000.0, gripper_debounce=1)
    robot = dw.InterbotixRobot(args)
    bot = fake_interbotix.instances[0]
    estop = dw.EStop()
    grasp = bot.gripper.grasp

    def grasp_then_stop(delay=1.0):
        grasp(delay)
        if other_thread:  # the keyboard thread: sets the stop, then waits for the command in flight
            threading.Thread(target=estop.trigger, args=("key ' '",), daemon=True).start()
            assert estop.event.wait(1.0)
        else:  # a signal handler runs on this thread
            estop.trigger("SIGTERM")

    monkeypatch.setattr(bot.gripper, "grasp", grasp_then_stop)
    res = _trial(robot, ScriptPolicy([[[0.01, 0, 0, 0, 0, 0, -1.0]] * 4]), args, estop, camera=CAMERA)
    assert res["ended_by"] == "estop" and res["steps"] == 0
    i = next(k for k, e in enumerate(bot.log) if e[0] == "grasp")
    assert [e for e in bot.log[i + 1:] if e[0] in ("set_joint_positions", "ik")] == []  # no IK, no arm command
    for _ in range(100):  # the other thread's halt follows the command in flight
        if any(e[0] == "publish_positions" for e in bot.log[i + 1:]):
            break
        import time
        time.sleep(0.01)
    assert [e[0] for e in bot.log[i + 1:] if e[0] in MOTION] == ["publish_positions"]  # the hold is the last


def _tiny_policy():
    torch = pytest.importorskip("torch")
    P = pytest.importorskip("ppoflow_pi0")
    torch.manual_seed(0)
    return P, P.PI0Policy(P.preset_config("tiny"), P.Normalizer.from_stats_file(P.DEFAULT_STATS), {"kind": "bytes"})


@pytest.mark.timeout(120)
def test_checkpoint_with_nan_weights_is_refused_at_load(fake_bridge, tmp_path):
    import torch

    P, pol = _tiny_policy()
    with torch.no_grad():
        next(p for n, p in pol.named_parameters() if n.startswith("pi0.action_out_proj")).fill_(float("nan"))
    ckpt = tmp_path / "runs" / "nan" / "ckpt_final.pt"
    P.torch_save_atomic(P.policy_checkpoint(pol, iteration=0), ckpt)
    with pytest.raises(SystemExit, match="non-finite .* weights .*action_out_proj"):
        dw.main(_protocol_args(tmp_path, policy="ckpt", ckpt=str(ckpt), trials_per_scene=1, labels="s,s"))
    assert fake_bridge.instances == []  # refused before the robot was touched


def test_object_state_proxy_checkpoint_is_refused_at_load(fake_bridge, tmp_path):
    """Issue 27: a policy of the object-state proxy reads simulator object poses, which no real robot has."""
    import scene_env

    P, _ = _tiny_policy()
    cfg = P.preset_config("tiny", 4, **P.obs_overrides(scene_env.EnvConfig(obs_mode="state")))
    pol = P.PI0Policy(cfg, P.Normalizer.from_stats_file(P.DEFAULT_STATS), {"kind": "bytes"})
    ckpt = tmp_path / "runs" / "state" / "ckpt_final.pt"
    P.torch_save_atomic(P.policy_checkpoint(pol, iteration=0), ckpt)
    with pytest.raises(SystemExit, match="object-state proxy policy .* a real robot does not have"):
        dw.main(_protocol_args(tmp_path, policy="ckpt", ckpt=str(ckpt), trials_per_scene=1, labels="s,s"))
    assert fake_bridge.instances == []  # refused before the robot was touched


@pytest.mark.timeout(120)
def test_nonfinite_raw_model_output_holds_and_keeps_the_gripper(fake_bridge, monkeypatch):
    import torch

    P, pol = _tiny_policy()
    obs = {"rgb": torch.zeros(1, 224, 224, 3, dtype=torch.uint8), "state": torch.zeros(1, 7), "instruction": ["x"]}
    checked = dw.RawCheckedPolicy(pol)
    torch.manual_seed(1)
    a = pol.act(obs)
    torch.manual_seed(1)
    assert torch.equal(checked.act(obs), a)  # finite output: exactly the model's own actions
    chain = pol.chain

    def nan_chain(prefix, deterministic=False, **kw):
        c, *rest = chain(prefix, deterministic=deterministic, **kw)
        return (torch.full_like(c, float("nan")), *rest)

    monkeypatch.setattr(pol, "chain", nan_chain)
    assert (pol.act(obs)[..., 6] == -1).all()  # the model's own conversion: NaN reads as "close"
    args = dw.Args(backend="bridge", max_decisions=2, control_hz=1000.0, gripper_debounce=1)
    res = _trial(dw.BridgeRobot(args, 224), checked, args)
    sent = [e[1] for e in fake_bridge.instances[0].log if e[0] == "step_action"]
    assert len(sent) == 2 * pol.config.chunk and res["n_nonfinite"] == len(sent)
    assert all(np.all(s[:6] == 0) and s[6] == 1.0 for s in sent)  # held, and the gripper stayed open


class _HangPolicy:
    """Decision 0: do nothing; decision >= 1: hangs (up to `hang_s`, then do nothing) - a stuck model call."""

    def __init__(self, hang_s: float, hang_from: int = 1):
        import threading

        self.hang_s, self.hang_from, self.calls, self.release = hang_s, hang_from, 0, threading.Event()

    def act(self, obs, deterministic=True):
        import torch

        self.calls += 1
        if self.calls > self.hang_from:
            self.release.wait(self.hang_s)
        return torch.tensor(np.asarray(DO_NOTHING)[None], dtype=torch.float32)


def test_hung_policy_does_not_outlive_sigterm(fake_bridge, tmp_path, monkeypatch):
    import os
    import signal
    import threading
    import time

    pol = _HangPolicy(hang_s=5.0)
    monkeypatch.setattr(dw, "load_policy", lambda args, get_robot: (pol, 224, 4))
    args = _protocol_args(tmp_path, max_decisions=3)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(SystemExit) as e:
            dw.main(args)
    finally:
        timer.cancel()
        pol.release.set()
    assert e.value.code == 2 and time.perf_counter() - t0 < 2.5  # ended by the stop, not by the policy returning
    log = fake_bridge.instances[0].log
    i = next(k for k, x in enumerate(log) if x[0] == "move")  # the hold
    assert _motions(log[i + 1:]) == []


def test_second_stop_signal_ends_the_process_even_if_the_main_thread_is_stuck():
    import os
    import signal
    import time

    estop = dw.EStop()
    restore = estop.install_signal_handlers()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert estop.triggered
        with pytest.raises(KeyboardInterrupt, match="second stop signal"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2.0)  # stands for a stuck call
    finally:
        restore()


def test_stalled_inference_holds_the_arm_and_ends_the_session(fake_bridge, tmp_path, monkeypatch):
    import time

    pol = _HangPolicy(hang_s=5.0)
    monkeypatch.setattr(dw, "load_policy", lambda args, get_robot: (pol, 224, 4))
    args = _protocol_args(tmp_path, max_decisions=3, inference_timeout_s=0.3)
    t0 = time.perf_counter()
    try:
        with pytest.raises(SystemExit, match=r"\[carrot#000\] policy inference took longer than --inference-timeout-s"):
            dw.main(args)
    finally:
        pol.release.set()
    assert time.perf_counter() - t0 < 2.5
    log = fake_bridge.instances[0].log
    i = next(k for k, x in enumerate(log) if x[0] == "move")  # the hold
    assert _motions(log[i + 1:]) == [] and log[-1] == ("stop",)  # held, then the client closed
    assert len([x for x in log if x[0] == "step_action"]) == 4  # the first chunk only
    assert ss.read_jsonl(tmp_path / "trials" / "bridge-a" / "trials.jsonl") == []  # not logged: a resume reruns it


def test_no_two_commands_within_one_control_period_after_a_stall(fake_bridge, monkeypatch):
    import time

    times, step = [], FakeWidowXClient.step_action
    monkeypatch.setattr(FakeWidowXClient, "step_action",
                        lambda self, a, blocking=False: (times.append(time.perf_counter()), step(self, a, blocking))[1])
    args = dw.Args(backend="bridge", max_decisions=3, control_hz=50.0)  # 20 ms period
    pol = _HangPolicy(hang_s=0.07)  # decisions 2 and 3 stall 70 ms, well under the watchdog
    res = _trial(dw.BridgeRobot(args, 224), pol, args)
    assert res["steps"] == 12 and res["deadline_overruns"] >= 2
    gaps = np.diff(times)
    assert gaps.min() >= args.control_dt - 1e-3, f"two commands {gaps.min() * 1e3:.1f} ms apart"
