"""deploy_widowx.py: safety maths (pure), the bridge / interbotix adapters against recording fakes of their APIs
(injected into sys.modules), the trial protocol with crash + resume, the summary against the log, and one
end-to-end run of the CLI on the real sim backend (SimplerEnv carrot scene, scripted expert, auto labels)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import deploy_widowx as dw  # noqa: E402
import scene_schema as ss  # noqa: E402

MOTION = {"step_action", "move", "move_gripper", "set_joint_positions", "publish_positions", "set_ee_pose_matrix!",
          "grasp", "release", "reset"}


# ---------------------------------------------------------------------------------------------
# Safety, labels, summary: pure helpers
# ---------------------------------------------------------------------------------------------


def test_clamp_step_keeps_direction_and_small_steps_unchanged():
    small = np.array([0.01, -0.01, 0.005, 0.1, -0.1, 0.2])
    out, clamped = dw.clamp_step(small, 0.03, 0.3)
    assert not clamped and np.array_equal(out, small)
    big = np.array([0.3, 0.4, 0.0, 1.0, -1.0, 0.1])
    out, clamped = dw.clamp_step(big, 0.03, 0.3)
    assert clamped and math.isclose(np.linalg.norm(out[:3]), 0.03)
    assert np.allclose(out[:3] / np.linalg.norm(out[:3]), [0.6, 0.8, 0.0])  # direction kept
    assert np.allclose(out[3:], [0.3, -0.3, 0.1])


def test_safe_ee_delta_workspace_box():
    lo, hi = np.array([0.1, -0.3, 0.0]), np.array([0.5, 0.3, 0.45])
    pose = np.array([0.3, 0.0, 0.02, 0, 0, 0])
    d, why = dw.safe_ee_delta(pose, np.array([0.0, 0.0, -0.01, 0, 0, 0]), lo, hi, 0.03, 0.3)
    assert why == [] and np.allclose(d[:3], [0, 0, -0.01])
    d, why = dw.safe_ee_delta(pose, np.array([0.0, 0.0, -0.025, 0, 0, 0]), lo, hi, 0.03, 0.3)
    assert why == ["workspace"] and math.isclose(pose[2] + d[2], 0.0, abs_tol=1e-12)  # stops at the table
    d, why = dw.safe_ee_delta(pose, np.array([0.1, 0.0, 0.0, 0, 0, 0.5]), lo, hi, 0.03, 0.3)  # fast, inside the box
    assert why == ["step"] and np.allclose(d, [0.03, 0, 0, 0, 0, 0.3])
    outside = np.array([0.7, 0.0, 0.2, 0, 0, 0])  # starts outside: the safety layer never adds motion
    d, why = dw.safe_ee_delta(outside, np.zeros(6), lo, hi, 0.03, 0.3)
    assert why == [] and np.array_equal(d, np.zeros(6))
    d, why = dw.safe_ee_delta(outside, np.array([-0.02, 0, 0, 0, 0, 0]), lo, hi, 0.03, 0.3)  # back toward the box
    assert why == [] and math.isclose(d[0], -0.02)
    d, why = dw.safe_ee_delta(outside, np.array([0.02, 0.01, 0, 0, 0, 0]), lo, hi, 0.03, 0.3)  # further out: refused
    assert why == ["workspace"] and d[0] == 0.0 and math.isclose(d[1], 0.01)


def test_joint_limits_debouncer_and_gripper_convention():
    assert dw.joint_limit_violations([0, 1.0, -1.0], [-2, -2, -2], [2, 2, 2], 0.05) == []
    assert dw.joint_limit_violations([0, 1.97, -1.0], [-2, -2, -2], [2, 2, 2], 0.05) == [1]
    assert dw.gripper_open_from_action(1.0) and not dw.gripper_open_from_action(-1.0)
    deb = dw.GripperDebouncer(3)
    seq = [deb.update(x) for x in [False, True, False, False, False, True, True, True]]
    assert seq == [True, True, True, True, False, False, False, True]  # 3 consecutive before switching


def test_compose_delta_rotates_about_base_axes_at_the_pointing_down_singularity():
    T = dw.pose_to_matrix(np.array([0.3, 0.0, 0.15, 0.0, math.pi / 2, 0.0]))
    out = dw.compose_delta(T, np.array([0.01, 0, 0, 0, 0, 0.2]))
    Rz = dw.pose_to_matrix(np.array([0, 0, 0, 0, 0, 0.2]))[:3, :3]
    assert np.allclose(out[:3, 3], [0.31, 0, 0.15]) and np.allclose(out[:3, :3], Rz @ T[:3, :3])
    pose = np.array([0.2, 0.1, 0.3, 0.3, -0.4, 1.0])
    assert np.allclose(dw.matrix_to_pose(dw.pose_to_matrix(pose)), pose)


def test_preprocess_rgb_squash_and_crop():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :80] = 255  # a white band on the left edge: kept by the plain resize, cropped away by "center"
    squash, crop = dw.preprocess_rgb(frame, 224), dw.preprocess_rgb(frame, 224, "center")
    assert squash.shape == crop.shape == (224, 224, 3) and squash.dtype == np.uint8
    assert squash[:, :20].mean() > 200 and crop.mean() == 0
    same = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(dw.preprocess_rgb(same, 224), same)


def test_labels():
    assert dw.parse_label("pd") == "pd" and dw.parse_label("DP") == "pd" and dw.parse_label("s") == "ps"
    assert dw.parse_label(" f ") == "f" and dw.parse_label("pdf") == "pdf"
    for bad in ("", "x", "sd", "sf", "pz"):
        with pytest.raises(ValueError):
            dw.parse_label(bad)
    assert dw.parse_labels_arg("s, pd,f") == ["ps", "pd", "f"]


def test_trials_file_errors_name_the_field(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"scene": "a", "command": "x"}, {"scene": "a", "command": "y"}]))
    with pytest.raises(ss.SchemaError, match=r"\[1\]\.scene: duplicate"):
        dw.load_trials_file(p)
    p.write_text(json.dumps([{"scene": "a"}]))
    with pytest.raises(ss.SchemaError, match=r"\[0\]\.command: required"):
        dw.load_trials_file(p)
    assert [s["scene"] for s in dw.load_trials_file(ROOT / "examples" / "trials.json")]


def test_trial_stats_match_table_2_definitions():
    recs = [{"scene": "a", "label": "ps", "tf_s": 10.0}, {"scene": "a", "label": "ps", "tf_s": 12.0},
            {"scene": "a", "label": "pd", "tf_s": None}, {"scene": "a", "label": "df", "tf_s": None},
            {"scene": "b", "label": "ps", "tf_s": 7.0}]
    s = dw.summarize_trials(recs)
    a = s["scenes"]["a"]
    assert (a["n"], a["psr"], a["sr"], a["dfr"], a["sfr"]) == (4, 0.75, 0.5, 0.5, 0.25)
    assert a["tf_mean"] == 11.0 and a["tf_std"] == 1.0
    assert s["overall"]["n"] == 5 and s["overall"]["sr"] == 0.6
    md = dw.summary_markdown({"il": s, "rl": dw.summarize_trials(recs[:1])})
    assert "| a | 4 | 0.75 | 0.50 | 0.50 | 0.25 | 11.0 ± 1.0 | 1 | 1.00 | 1.00 | - | - | 10.0 |" in md
    assert "**All**" in md and "(il)" in md and "(rl)" in md


def test_deadline_scheduler_keeps_rate_and_counts_overruns():
    t = [0.0]
    slept, sent = [], []
    sched = dw.DeadlineScheduler(0.2, clock=lambda: t[0], sleep=lambda s: (slept.append(s), t.__setitem__(0, t[0] + s)))
    sched.wait()  # the first command goes at once
    sent.append(t[0])
    t[0] += 0.05
    sched.wait()  # 50 ms of work -> sleep 150 ms
    sent.append(t[0])
    assert math.isclose(slept[-1], 0.15) and math.isclose(t[0], 0.2)
    t[0] += 0.5  # a 500 ms overrun: the late command goes now, then a fresh period: no burst of catch-up steps
    sched.wait()
    sent.append(t[0])
    assert sched.overruns == 1 and math.isclose(sched.next, 0.9)
    t[0] += 0.001
    sched.wait()  # right after the late one: waits a whole period
    sent.append(t[0])
    assert min(np.diff(sent)) >= 0.2 - 1e-9


@pytest.mark.parametrize("other_thread", [False, True])
def test_estop_halt_is_the_last_command(other_thread):
    import threading
    import time

    log = []
    estop = dw.EStop()
    estop.robot = types.SimpleNamespace(stop=lambda: log.append("stop"))
    with estop.guard() as ok:
        assert ok
        if other_thread:  # keyboard thread: waits for the command in flight, then halts
            t = threading.Thread(target=estop.trigger, args=("key",))
            t.start()
            time.sleep(0.05)
        else:  # signal handler: runs inside the command's thread
            estop.trigger("SIGINT")
        assert log == [] and estop.triggered
        log.append("command in flight")
    if other_thread:
        t.join(1.0)
    assert log == ["command in flight", "stop"]
    with estop.guard() as ok:
        assert not ok
    estop.trigger("again")
    assert log == ["command in flight", "stop"]  # halted once


def test_repair_torn_tail(tmp_path):
    log = tmp_path / "trials.jsonl"
    ss.append_jsonl(log, {"a": 1})
    with open(log, "a") as f:
        f.write('{"a": 2, "b"')
    assert ss.repair_jsonl_tail(log) > 0 and log.read_text() == '{"a": 1}\n'
    assert (tmp_path / "trials.jsonl.torn").read_text().startswith('{"a": 2')
    assert ss.repair_jsonl_tail(log) == 0


# ---------------------------------------------------------------------------------------------
# Recording fakes of the hardware APIs
# ---------------------------------------------------------------------------------------------


class FakeWidowXClient:
    """widowx_envs.widowx_env_service.WidowXClient: relative step_action moves a point; every call recorded."""

    instances: list = []

    def __init__(self, host="localhost", port=5556):
        self.log, self.host, self.port = [], host, port
        self.state = np.array([0.3, 0.0, 0.15, 0.0, 1.2, 0.0, 1.0])
        FakeWidowXClient.instances.append(self)

    def init(self, env_params, image_size=256):
        self.log.append(("init", env_params, image_size))
        return 1

    def reset(self):
        self.log.append(("reset",))
        self.state = np.array([0.3, 0.0, 0.15, 0.0, 1.2, 0.0, 1.0])
        return 1

    def get_observation(self):
        return {"state": self.state.copy(), "full_image": np.full((480, 640, 3), 100, np.uint8)}

    def step_action(self, action, blocking=False):
        self.log.append(("step_action", np.array(action, dtype=float)))
        self.state[:6] += action[:6]
        self.state[6] = action[6]
        return 1

    def move(self, pose, duration=1.0, blocking=False):
        self.log.append(("move", np.array(pose), blocking))
        return 1

    def move_gripper(self, state):
        self.log.append(("move_gripper", state))
        return 1

    def stop(self):
        self.log.append(("stop",))


@pytest.fixture
def fake_bridge(monkeypatch):
    pkg, mod = types.ModuleType("widowx_envs"), types.ModuleType("widowx_envs.widowx_env_service")
    mod.WidowXClient = FakeWidowXClient
    mod.WidowXStatus = types.SimpleNamespace(NO_CONNECTION=0, SUCCESS=1, EXECUTION_FAILURE=2, NOT_INITIALIZED=3)
    mod.WidowXConfigs = types.SimpleNamespace(DefaultEnvParams={"camera_topics": [{"name": "/blue/image_raw"}],
                                                                "move_duration": 0.2})
    pkg.widowx_env_service = mod
    monkeypatch.setitem(sys.modules, "widowx_envs", pkg)
    monkeypatch.setitem(sys.modules, "widowx_envs.widowx_env_service", mod)
    FakeWidowXClient.instances = []
    return FakeWidowXClient


JOINTS = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]


class FakeInterbotixBot:
    """InterbotixManipulatorXS: identity 'IK' (joints = x, y, z, roll, pitch, yaw), forearm_roll limited to
    +-0.5 rad so joint-limit refusals can be provoked; records every call in `log`."""

    instances: list = []

    def __init__(self, robot_model, group_name="arm", gripper_name="gripper", moving_time=2.0, accel_time=0.3,
                 gripper_pressure=0.5, **kw):
        log = self.log = [("init", robot_model, moving_time, accel_time, gripper_pressure)]
        bot = self
        self.q = [0.3, 0.0, 0.15, 0.0, 1.0, 0.0]  # pose-as-joints (pitch 1 rad: away from the singularity)
        self.core = types.SimpleNamespace(
            joint_states=types.SimpleNamespace(position=list(self.q) + [0.02], name=JOINTS + ["left_finger"]),
            js_index_map={n: i for i, n in enumerate(JOINTS + ["left_finger"])},
            robot_torque_enable=lambda *a: log.append(("robot_torque_enable", *a)),
            robot_set_motor_pid_gains=lambda *a, **k: log.append(("robot_set_motor_pid_gains", a, k)))

        class Arm:
            group_info = types.SimpleNamespace(joint_names=JOINTS, joint_lower_limits=[-3, -3, -3, -0.5, -3, -3],
                                               joint_upper_limits=[3, 3, 3, 0.5, 3, 3])

            def get_ee_pose_command(self):
                return dw.pose_to_matrix(np.array(bot.q))

            def get_ee_pose(self):
                return dw.pose_to_matrix(np.array(bot.core.joint_states.position[:6]))

            def get_joint_commands(self):
                return list(bot.q)

            def set_ee_pose_matrix(self, T, custom_guess=None, execute=True, moving_time=None, accel_time=None,
                                   blocking=True):
                theta = list(dw.matrix_to_pose(T))
                log.append(("set_ee_pose_matrix!" if execute else "ik", theta))
                if execute:
                    bot.q = theta
                return theta, True

            def set_joint_positions(self, q, moving_time=None, accel_time=None, blocking=True):
                log.append(("set_joint_positions", list(q), moving_time, blocking))
                bot.q = list(q)
                bot.core.joint_states.position[:6] = list(q)
                return True

            def publish_positions(self, q, moving_time=None, accel_time=None, blocking=True):
                log.append(("publish_positions", list(q)))

        class Gripper:
            left_finger_index, left_finger_lower_limit, left_finger_upper_limit = 6, 0.015, 0.037

            def grasp(self, delay=1.0):
                log.append(("grasp", delay))

            def release(self, delay=1.0):
                log.append(("release", delay))

        self.arm, self.gripper = Arm(), Gripper()
        FakeInterbotixBot.instances.append(self)

    def shutdown(self):
        self.log.append(("shutdown",))


@pytest.fixture
def fake_interbotix(monkeypatch):
    mods = {n: types.ModuleType(n) for n in ("interbotix_xs_modules", "interbotix_xs_modules.xs_robot",
                                             "interbotix_xs_modules.xs_robot.arm")}
    mods["interbotix_xs_modules.xs_robot.arm"].InterbotixManipulatorXS = FakeInterbotixBot
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    FakeInterbotixBot.instances = []
    return FakeInterbotixBot


class ScriptPolicy:
    """Replays fixed chunks [C, 7]; `hook(i)` runs before decision i (to press the e-stop mid-trial)."""

    def __init__(self, chunks, hook=None):
        self.chunks, self.hook, self.calls, self.obs = chunks, hook, 0, []

    def act(self, obs, deterministic=True):
        import torch

        if self.hook:
            self.hook(self.calls)
        self.obs.append(obs)
        c = self.chunks[min(self.calls, len(self.chunks) - 1)]
        self.calls += 1
        return torch.tensor(np.asarray(c)[None], dtype=torch.float32)


def _trial(robot, policy, args, estop=None, camera=None):
    estop = estop or dw.EStop()
    estop.robot = robot
    kb = dw.KeyboardWatcher(estop)
    kb.active = False
    return dw.run_trial(robot, policy, "put carrot on plate", args, estop, args.image_size, 4, camera, kb, seed=0)


def _motions(log):
    return [e for e in log if e[0] in MOTION]


# ---------------------------------------------------------------------------------------------
# Adapter tests
# ---------------------------------------------------------------------------------------------

IN_LIMITS = [[0.01, 0.0, -0.005, 0.0, 0.0, 0.05, 1.0]] * 4
OUT_OF_LIMITS = [[-0.1, 0.05, 0.0, 0.0, 0.0, 0.9, -1.0]] * 4  # too fast, but the targets stay inside the box


def test_bridge_commands_within_limits_pass_unchanged_and_big_ones_are_clamped(fake_bridge):
    args = dw.Args(backend="bridge", max_decisions=2, control_hz=1000.0, gripper_debounce=2)
    robot = dw.BridgeRobot(args, 224)
    client = fake_bridge.instances[0]
    init = client.log[0]
    assert init[0] == "init" and init[2] == 224 and init[1]["move_duration"] == args.move_time
    assert init[1]["override_workspace_boundaries"][0][:3] == list(args.workspace_lo)
    assert init[1]["camera_topics"]  # the server's defaults are kept
    pol = ScriptPolicy([IN_LIMITS, OUT_OF_LIMITS])
    res = _trial(robot, pol, args)
    steps = [e[1] for e in client.log if e[0] == "step_action"]
    assert len(steps) == 8 and res["steps"] == 8 and res["decisions"] == 2
    for s in steps[:4]:  # within limits: sent exactly as the policy gave them, gripper 1 = open
        assert np.allclose(s, [0.01, 0.0, -0.005, 0.0, 0.0, 0.05, 1.0])
    for s in steps[4:]:
        assert np.linalg.norm(s[:3]) <= args.max_step_translation_m + 1e-9 and abs(s[5]) <= args.max_step_rotation_rad
    grip = [s[6] for s in steps[4:]]
    assert grip == [1.0, 0.0, 0.0, 0.0]  # close (0 on the bridge) only after 2 identical commands (debounce)
    assert res["n_clamped"] == 4 and res["n_refused"] == 0
    assert all(np.allclose(s[:2] / np.linalg.norm(s[:2]), [-0.894427, 0.447214], atol=1e-5) for s in steps[4:])
    assert pol.obs[0]["rgb"].shape == (1, 224, 224, 3) and pol.obs[0]["state"].shape == (1, 7)
    lat = res["latency_ms"]
    assert len(lat["per_step"]["command"]) == 8 and len(lat["per_step"]["inference"]) == 2


def test_bridge_image_without_full_image(fake_bridge, monkeypatch):
    robot = dw.BridgeRobot(dw.Args(backend="bridge"), 8)
    chw = np.zeros((3, 8, 8))
    chw[0] = 1.0  # red
    monkeypatch.setattr(robot.client, "get_observation", lambda: {"state": np.zeros(7), "image": chw.reshape(-1)})
    rgb = robot.get_observation()["rgb"]
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8 and (rgb[..., 0] == 255).all() and rgb[..., 1:].max() == 0
    assert fake_bridge.instances[0].log[0][1]["return_full_image"] is True


def test_bridge_estop_halts_and_no_motion_follows(fake_bridge):
    args = dw.Args(backend="bridge", max_decisions=5, control_hz=1000.0)
    robot = dw.BridgeRobot(args, 224)
    client = fake_bridge.instances[0]
    estop = dw.EStop()
    res = _trial(robot, ScriptPolicy([IN_LIMITS], hook=lambda i: i == 1 and estop.trigger("test")), args, estop)
    assert res["ended_by"] == "estop" and res["steps"] == 4
    i = next(k for k, e in enumerate(client.log) if e[0] == "move")  # the hold at the measured pose
    assert client.log[i][2] is True and np.allclose(client.log[i][1], client.state[:6])
    assert _motions(client.log[i + 1:]) == []
    n = len(client.log)  # a later trial on a triggered e-stop sends nothing, not even the reset
    res = _trial(robot, ScriptPolicy([IN_LIMITS]), args, estop)
    assert client.log[n:] == [] and res["steps"] == 0 and res["ended_by"] == "estop"


def test_interbotix_limits_gains_and_refusals(fake_interbotix):
    args = dw.Args(backend="interbotix", max_decisions=1, control_hz=1000.0, pos_p_gain=800, pos_d_gain=10,
                   gripper_debounce=1, start_pose=(0.3, 0.0, 0.15, 0.45, 1.0, 0.0))
    robot = dw.InterbotixRobot(args)
    bot = fake_interbotix.instances[0]
    assert ("robot_set_motor_pid_gains", ("group", "arm"), {"kp_pos": 800, "ki_pos": 0, "kd_pos": 10}) in bot.log
    assert bot.log[0][2] == args.move_time
    small = [[0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]] * 4
    _trial(robot, ScriptPolicy([small]), args, camera=types.SimpleNamespace(read=lambda: np.zeros((480, 640, 3), np.uint8)))
    sent = [e[1] for e in bot.log if e[0] == "set_joint_positions"]
    assert len(sent) == 4 and np.allclose(sent[-1], [0.34, 0.0, 0.15, 0.45, 1.0, 0.0], atol=1e-6)
    # roll +0.1 rad from 0.45 passes the forearm_roll limit (0.5 - margin): refused, never sent
    n = len(bot.log)
    res = _trial(robot, ScriptPolicy([[[0.0, 0.0, 0.0, 0.1, 0.0, 0.0, -1.0]] * 4]), args,
                 camera=types.SimpleNamespace(read=lambda: np.zeros((480, 640, 3), np.uint8)))
    assert res["n_refused"] == 4 and "forearm_roll" in next(iter(res["refusals"]))
    assert not [e for e in bot.log[n:] if e[0] == "set_joint_positions"]
    assert ("grasp", 0.0) in bot.log[n:]  # gripper -1 = close = Interbotix grasp()


@pytest.mark.parametrize("action,expect", [("hold", "publish_positions"), ("torque_off", "robot_torque_enable")])
def test_interbotix_signal_estop_halts(fake_interbotix, action, expect):
    args = dw.Args(backend="interbotix", max_decisions=5, control_hz=1000.0, estop_action=action)
    robot = dw.InterbotixRobot(args)
    bot = fake_interbotix.instances[0]
    estop = dw.EStop()
    restore = estop.install_signal_handlers()
    try:
        pol = ScriptPolicy([IN_LIMITS], hook=lambda i: i == 1 and os.kill(os.getpid(), signal.SIGTERM))
        res = _trial(robot, pol, args, estop, camera=types.SimpleNamespace(read=lambda: np.zeros((48, 64, 3), np.uint8)))
    finally:
        restore()
    assert res["ended_by"] == "estop" and estop.reason == "SIGTERM"
    i = next(k for k, e in enumerate(bot.log) if e[0] == expect)
    if action == "torque_off":
        assert bot.log[i][1:] == ("group", "arm", False)
    assert [e for e in bot.log[i + 1:] if e[0] in MOTION] == []
    assert signal.getsignal(signal.SIGTERM) is not None


def test_missing_backend_packages_say_what_to_install(monkeypatch):
    for name in ("widowx_envs", "widowx_envs.widowx_env_service", "interbotix_xs_modules",
                 "interbotix_xs_modules.xs_robot", "interbotix_xs_modules.xs_robot.arm"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(SystemExit, match="bridge_data_robot"):
        dw.BridgeRobot(dw.Args(backend="bridge"), 224)
    with pytest.raises(SystemExit, match="interbotix_xsarm_control"):
        dw.InterbotixRobot(dw.Args(backend="interbotix"))


def test_dry_run_reads_but_never_moves(fake_bridge, capsys):
    args = dw.Args(backend="bridge", max_decisions=1, control_hz=1000.0, dry_run=True)
    robot = dw.make_robot(args, {"scene": "a"}, 224, 4)
    _trial(robot, ScriptPolicy([IN_LIMITS]), args)
    assert _motions(fake_bridge.instances[0].log) == []
    assert capsys.readouterr().out.count("[dry-run] ee delta") == 4


# ---------------------------------------------------------------------------------------------
# Trial protocol: labels, log, crash + resume, summary, compare (bridge fake: fast)
# ---------------------------------------------------------------------------------------------


def _protocol_args(tmp_path, **kw):
    trials = tmp_path / "trials.json"
    trials.write_text(json.dumps([{"scene": "carrot", "command": "put carrot on plate", "distractors": ["spoon"]},
                                  {"scene": "eraser", "command": "put the eraser in the mug"}]))
    base = dict(backend="bridge", policy="random", trials_file=trials, trials_per_scene=3, out_dir=tmp_path / "trials",
                session="bridge-a", max_decisions=1, control_hz=1000.0, labels="s,pd,f,ps,pdf,d")
    base.update(kw)
    return dw.Args(**base)


def _check_summary_matches_log(sdir: Path, session: str):
    recs = ss.read_jsonl(sdir / "trials.jsonl")
    summary = ss.read_json(sdir / "summary.json")["sessions"][session]
    for scene in {r["scene"] for r in recs} | {None}:
        rs = [r for r in recs if scene is None or r["scene"] == scene]
        got = summary["overall"] if scene is None else summary["scenes"][scene]
        n = len(rs)
        assert got["n"] == n
        for key, letter in (("psr", "p"), ("sr", "s"), ("dfr", "d"), ("sfr", "f")):
            assert math.isclose(got[key], sum(letter in r["label"] for r in rs) / n)
        tf = [r["tf_s"] for r in rs if "s" in r["label"]]
        assert (got["tf_mean"] is None) if not tf else math.isclose(got["tf_mean"], float(np.mean(tf)))
    return recs


def test_protocol_log_summary_crash_resume_and_compare(fake_bridge, tmp_path, capsys):
    args = _protocol_args(tmp_path)
    dw.main(args)
    sdir = tmp_path / "trials" / "bridge-a"
    assert ss.read_json(sdir / "args.json")["args"]["backend"] == "bridge"
    recs = _check_summary_matches_log(sdir, "bridge-a")
    assert [r["label"] for r in recs] == ["ps", "pd", "f", "ps", "pdf", "d"]
    assert [r["trial_key"] for r in recs] == [f"{s}#{i:03d}" for s in ("carrot", "eraser") for i in range(3)]
    assert recs[0]["distractors"] == ["spoon"] and recs[0]["tf_s"] is not None and recs[1]["tf_s"] is None
    assert recs[0]["label_source"] == "flag" and recs[0]["latency_ms"]["step"]["mean"] is not None
    md = (sdir / "summary.md").read_text()
    assert "| carrot | 3 | 0.67 | 0.33 | 0.33 | 0.33 |" in md

    # crash: the last record was torn mid-write and the one before never written
    lines = (sdir / "trials.jsonl").read_text().splitlines(keepends=True)
    (sdir / "trials.jsonl").write_text("".join(lines[:4]) + lines[5][:40])
    fake_bridge.instances.clear()
    dw.main(args)
    resets = [e for e in fake_bridge.instances[0].log if e[0] == "reset"]
    assert len(resets) == 2  # only the two lost trials ran again
    recs = _check_summary_matches_log(sdir, "bridge-a")
    assert [r["trial_key"] for r in recs] == [f"{s}#{i:03d}" for s in ("carrot", "eraser") for i in range(3)]
    assert [r["label"] for r in recs] == ["ps", "pd", "f", "ps", "pdf", "d"]  # labels keyed by plan position

    fake_bridge.instances.clear()
    dw.main(args)  # complete: nothing runs, no robot is even connected
    assert fake_bridge.instances == [] and len(ss.read_jsonl(sdir / "trials.jsonl")) == 6

    dw.main(_protocol_args(tmp_path, session="bridge-b", labels="s,s,s,s,s,pd"))
    doc = dw.main(dw.Args(compare=(str(sdir), str(tmp_path / "trials" / "bridge-b")), out_dir=tmp_path / "trials",
                          session="il_vs_rl"))
    assert set(doc["sessions"]) == {"bridge-a", "bridge-b"}
    assert doc["sessions"]["bridge-b"]["overall"]["sr"] == pytest.approx(5 / 6)
    md = (tmp_path / "trials" / "il_vs_rl" / "summary.md").read_text()
    assert "PSR↑ (bridge-a)" in md and "PSR↑ (bridge-b)" in md


def test_protocol_sigterm_halts_session_and_resume_finishes_it(fake_bridge, tmp_path, monkeypatch):
    calls, step = [], FakeWidowXClient.step_action

    def step_then_kill(self, action, blocking=False):
        calls.append(1)
        if len(calls) == 6:  # mid-way through the second trial (4 steps per trial)
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, action, blocking)

    monkeypatch.setattr(FakeWidowXClient, "step_action", step_then_kill)
    args = _protocol_args(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        dw.main(args)
    assert e.value.code == 2 and signal.getsignal(signal.SIGTERM) is before  # handlers restored
    log = fake_bridge.instances[0].log
    i = next(k for k, x in enumerate(log) if x[0] == "move")  # the hold
    assert [x for x in log[i + 1:] if x[0] in MOTION] == [] and log[-1] == ("stop",)  # then the client closed
    sdir = tmp_path / "trials" / "bridge-a"
    assert [r["trial_key"] for r in ss.read_jsonl(sdir / "trials.jsonl")] == ["carrot#000"]  # interrupted: not logged
    monkeypatch.setattr(FakeWidowXClient, "step_action", step)
    dw.main(args)
    assert len(_check_summary_matches_log(sdir, "bridge-a")) == 6


def test_protocol_input_errors(fake_bridge, tmp_path):
    with pytest.raises(SystemExit, match="2 labels for 6 planned"):
        dw.main(_protocol_args(tmp_path, labels="s,s"))
    with pytest.raises(SystemExit, match="auto-label needs --backend sim"):
        dw.main(_protocol_args(tmp_path, auto_label=True))
    with pytest.raises(SystemExit, match="needs --ckpt"):
        dw.main(_protocol_args(tmp_path, policy="ckpt"))
    with pytest.raises(SystemExit, match="scripted needs privileged sim"):
        dw.main(_protocol_args(tmp_path, policy="scripted"))


@pytest.mark.timeout(120)
def test_checkpoint_policy_drives_the_protocol(fake_bridge, tmp_path):
    """A tiny real pi0 checkpoint (ppoflow_pi0) through load_policy -> act -> safety -> robot."""
    torch = pytest.importorskip("torch")
    P = pytest.importorskip("ppoflow_pi0")
    torch.manual_seed(0)
    pol = P.PI0Policy(P.preset_config("tiny"), P.Normalizer.from_stats_file(P.DEFAULT_STATS), {"kind": "bytes"})
    ckpt = tmp_path / "runs" / "tiny" / "ckpt_final.pt"
    P.torch_save_atomic(P.policy_checkpoint(pol, iteration=0), ckpt)
    args = _protocol_args(tmp_path, policy="ckpt", ckpt=str(ckpt), session=None, trials_per_scene=1, labels="pd,f",
                          max_decisions=2)
    dw.main(args)
    assert args.session_name == "bridge-tiny_ckpt_final"
    recs = ss.read_jsonl(tmp_path / "trials" / "bridge-tiny_ckpt_final" / "trials.jsonl")
    assert [r["steps"] for r in recs] == [2 * pol.config.chunk] * 2 and recs[0]["ckpt"] == str(ckpt)
    sent = [e[1] for e in fake_bridge.instances[0].log if e[0] == "step_action"]
    assert len(sent) == 2 * 2 * pol.config.chunk and all(np.isfinite(s).all() for s in sent)


# ---------------------------------------------------------------------------------------------
# End to end on the real sim backend (scene_env + ManiSkill): the CLI, scripted expert, auto labels, video
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_sim_backend_full_protocol_cli(tmp_path):
    pytest.importorskip("mani_skill")
    trials = tmp_path / "trials.json"
    sid = "simpler:PutCarrotOnPlateInScene-v1"
    trials.write_text(json.dumps([{"scene": "carrot", "command": "put carrot on plate", "scene_id": sid},
                                  {"scene": "carrot_short", "command": "put carrot on plate", "scene_id": sid}]))
    env = {**os.environ, "LP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "deploy_widowx.py"), "--backend", "sim", "--policy", "scripted",
           "--trials-file", str(trials), "--trials-per-scene", "1", "--auto-label", "--out-dir", str(tmp_path / "out"),
           "--session", "sim", "--max-decisions", "20", "--video", "gif"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=230)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdir = tmp_path / "out" / "sim"
    recs = _check_summary_matches_log(sdir, "sim")
    assert [r["trial_key"] for r in recs] == ["carrot#000", "carrot_short#000"]
    for rec in recs:
        assert rec["label_source"] == "auto" and rec["sim"]["done"]
        assert rec["label"] == ("ps" if rec["sim"]["success"] else "pd" if rec["sim"]["partial_success"] else "d")
        assert rec["steps"] <= 80 and Path(rec["video"]).is_file()
        assert rec["latency_ms"]["inference"]["mean"] is not None
    assert recs[0]["sim"]["success"], "the scripted expert solves seed 0 of the carrot scene within 80 steps"
    assert recs[0]["tf_s"] == pytest.approx(recs[0]["sim"]["elapsed_s"])
    assert "| carrot |" in (sdir / "summary.md").read_text()
