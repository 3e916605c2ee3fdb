"""Tests of the PPOFlow stability options of ppoflow_pi0.py (issue 13, part 2), each at tiny sizes: whole-batch
advantage normalisation (also across two gloo ranks), the target-KL stop of update epochs, the lr schedule, value
clipping, the time-to-go input of the value head and the behaviour-cloning anchor to the demos.

    pytest tests/test_ppo_stability.py -q
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

import ppoflow_pi0 as P  # noqa: E402
from scene_env import EnvConfig  # noqa: E402
from test_ppoflow import FakeVecEnv, fake_obs, fast_args, tiny_policy  # noqa: E402


def _batch(pol, num_envs=3, num_steps=4, max_decisions=3, seed=5):
    envs = FakeVecEnv(["x"], num_envs, EnvConfig(max_decisions=max_decisions))
    batch, _ = P.rollout(pol, envs, num_steps=num_steps, gamma=0.99, seed=seed, device="cpu",
                         max_decisions=max_decisions)
    adv, ret = P.compute_gae(batch["reward"], batch["value"], batch["done"], batch["last_value"], 0.99, 0.95)
    return batch, adv, ret


def _optimizer(pol, lr=1e-3):
    return torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=lr, eps=1e-5, weight_decay=0.0)


# ---------------------------------------------------------------------------------------------
# Advantage normalisation
# ---------------------------------------------------------------------------------------------


def test_batch_advantage_normalisation_has_mean_0_std_1_over_the_whole_batch():
    adv = 3.0 + 2.0 * torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    n = P.normalize_advantages(adv)
    assert n.shape == adv.shape and n.dtype == adv.dtype
    assert abs(float(n.mean())) < 1e-6 and abs(float(n.std()) - 1) < 1e-5
    torch.testing.assert_close(n, (adv - adv.mean()) / (adv.std() + 1e-8))
    # a minibatch of the batch-normalised advantages is NOT re-centred on itself (what the per-minibatch scope does)
    assert abs(float(n[:2].mean())) > 1e-3
    assert torch.isfinite(P.normalize_advantages(torch.ones(4))).all()  # constant batch: 0, not NaN


def _rank_normalise(rank, world, init, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    full = torch.arange(12, dtype=torch.float32) ** 1.5  # every rank holds a different (and skewed) half
    torch.save(P.normalize_advantages(full[rank * 6:(rank + 1) * 6], world), f"{out}_{rank}.pt")
    torch.save(P.allreduce_sum(torch.tensor([float(rank + 1)]), world), f"{out}_sum{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_batch_normalisation_across_two_ranks_equals_normalising_the_concatenated_batch(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(_rank_normalise, args=(2, init, str(tmp_path / "r")), nprocs=2, join=True, start_method="spawn")
    got = torch.cat([torch.load(tmp_path / f"r_{r}.pt") for r in (0, 1)])
    full = torch.arange(12, dtype=torch.float32) ** 1.5
    torch.testing.assert_close(got, (full - full.mean()) / (full.std() + 1e-8))
    assert [float(torch.load(tmp_path / f"r_sum{r}.pt")) for r in (0, 1)] == [3.0, 3.0]  # the KL sum is shared


def test_batch_scope_is_used_by_the_update_and_keeps_the_first_minibatch_ratio_at_one():
    pol = tiny_policy(lora_rank=4)
    batch, adv, ret = _batch(pol)
    args = fast_args(Path("."), minibatch_size=12, update_epochs=1, adv_norm_scope="batch", learning_rate=1e-3)
    pol.train()
    flat = {k: batch[k].flatten(0, 1) for k in ("rgb", "state", "ids", "mask", "chain", "logp")}
    _, logp, _ = pol.chain(pol.encode({k: flat[k] for k in ("rgb", "state", "ids", "mask")}), chain=flat["chain"])
    _, st = P.ppo_loss(logp, flat["logp"], P.normalize_advantages(adv.flatten()), 0.2, 0.2)
    assert float(st["clipfrac"]) == 0.0 and abs(float(st["ratio_mean"]) - 1) < 1e-6 and float(st["approx_kl"]) < 1e-6
    out = P.ppo_update(pol, _optimizer(pol), batch, adv, ret, args, 1, "cpu")
    assert out["clipfrac"] == 0.0 and abs(out["ratio_mean"] - 1) < 1e-5  # one minibatch = the batch: ratio 1


# ---------------------------------------------------------------------------------------------
# Target-KL early stop of the update epochs
# ---------------------------------------------------------------------------------------------


def test_approx_kl_is_the_k3_estimator_in_fp32():
    new, old = torch.tensor([0.0, 0.5, -0.5], dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16)
    kl = P.approx_kl(new, old)
    assert kl.dtype == torch.float32
    ref = sum((math.exp(x) - 1) - x for x in (0.0, 0.5, -0.5)) / 3
    assert float(kl) == pytest.approx(ref, rel=1e-6)
    assert float(P.approx_kl(old, old)) == 0.0


@pytest.mark.parametrize("target_kl, epochs", [(None, 3), (1e-9, 1), (1e9, 3)])
def test_target_kl_stops_the_update_after_the_first_epoch_when_exceeded(target_kl, epochs):
    pol = tiny_policy(lora_rank=4)
    batch, adv, ret = _batch(pol)
    args = fast_args(Path("."), minibatch_size=4, update_epochs=3, target_kl=target_kl, learning_rate=1e-3)
    torch.manual_seed(0)
    out = P.ppo_update(pol, _optimizer(pol), batch, adv, ret, args, 1, "cpu")
    assert out["epochs_run"] == epochs
    assert out["epoch_kl"] > 1e-9  # three gradient steps per epoch at lr 1e-3 move the policy


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------------


def test_lr_factor_warmup_then_linear_and_cosine_decay():
    f = lambda it, **kw: P.lr_factor(it, 10, **kw)  # noqa: E731
    assert [f(i) for i in range(10)] == [1.0] * 10
    assert [f(i, critic_warmup=2, warmup=2) for i in range(4)] == [0.0, 0.0, 0.5, 1.0]
    lin = [f(i, schedule="linear") for i in range(10)]
    assert lin[0] == 1.0 and lin[-1] == pytest.approx(0.1) and all(a > b for a, b in zip(lin, lin[1:]))
    cos = [f(i, schedule="cosine", min_factor=0.2) for i in range(10)]
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.6) and 0.2 < cos[-1] < 0.25
    wu = [f(i, warmup=3, schedule="linear") for i in range(10)]
    assert wu[:4] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0]) and wu[4] < 1.0  # decay starts after the warm-up
    with pytest.raises(ValueError, match="--lr-schedule"):
        f(0, schedule="step")


def test_training_run_follows_the_lr_schedule(tmp_path):
    args = fast_args(tmp_path, num_iterations=3, eval_every=0, save_every=10, lr_schedule="linear", learning_rate=1e-3)
    P.main(args, env_fn=FakeVecEnv)
    lrs = [json.loads(x)["charts/learning_rate"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # logged after scheduler.step(): the lr of the next iteration, 1e-3 * (1 - it/3)
    assert lrs == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3, 0.0], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Value clipping
# ---------------------------------------------------------------------------------------------


def test_value_clipping_formula():
    v_new, v_old, ret = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.0, 0.0, 0.4]), torch.tensor([2.0, -1.0, 0.45])
    assert float(P.value_loss(v_new, v_old, ret, None)) == pytest.approx(0.5 * (1 + 1 + 0.0025) / 3)
    # clipped values 0.2, 0.0, 0.5 -> (1.8^2, 1, 0.05^2); the pessimistic max per element: 3.24, 1, 0.0025
    assert float(P.value_loss(v_new, v_old, ret, 0.2)) == pytest.approx(0.5 * (3.24 + 1 + 0.0025) / 3)
    v = v_new.clone().requires_grad_(True)
    P.value_loss(v, v_old, ret, 0.2).backward()
    assert float(v.grad[0]) == 0.0 and float(v.grad[2]) != 0.0  # outside the clip range and worse: no gradient


# ---------------------------------------------------------------------------------------------
# Time to go in the value head
# ---------------------------------------------------------------------------------------------


def test_time_feature_changes_the_value_head_input_and_is_stored_by_the_rollout():
    assert P.time_to_go(torch.tensor([0, 1, 3, 5]), 4).tolist() == [1.0, 0.75, 0.25, 0.0]
    pol = tiny_policy(value_time=True)
    assert pol.value_head[0].in_features == tiny_policy().value_head[0].in_features + 1
    with torch.no_grad():
        prefix = pol.encode(pol.obs_to_inputs(fake_obs(2)))
        v1, v0 = pol.value(prefix, torch.ones(2)), pol.value(prefix, torch.zeros(2))
    assert not torch.allclose(v1, v0)
    with pytest.raises(ValueError, match="time_left"):
        pol.value(prefix)
    envs = FakeVecEnv(["x"], 2, EnvConfig(max_decisions=2))
    envs.goal_x = 1e9  # every episode times out after 2 decisions
    batch, _ = P.rollout(pol, envs, num_steps=4, gamma=1.0, seed=1, device="cpu", bootstrap_truncated=False,
                         max_decisions=2)
    assert batch["time_left"].tolist() == [[1.0, 1.0], [0.5, 0.5], [1.0, 1.0], [0.5, 0.5]]
    assert "time_left" not in P.rollout(tiny_policy(), envs, 2, 1.0, 1, "cpu")[0]


def test_time_to_go_flag_reaches_the_policy_and_trains(tmp_path):
    args = fast_args(tmp_path, num_iterations=1, eval_every=0, value_time_to_go=True, value_clip=0.2,
                     adv_norm_scope="batch", target_kl=0.05, bootstrap_truncated=False)
    P.main(args, env_fn=FakeVecEnv)
    pol = P.load_policy(tmp_path / "ckpt_final.pt")
    assert pol.config.value_time and math.isfinite(json.loads((tmp_path / "metrics.jsonl").read_text())["losses/v_loss"])


# ---------------------------------------------------------------------------------------------
# Behaviour-cloning anchor to the demos
# ---------------------------------------------------------------------------------------------


def _demos(pol, n=6):
    obs = fake_obs(n, seed=3)
    inp = pol.obs_to_inputs(obs)
    action = torch.cat([0.01 * torch.randn(n, 4, 6), torch.ones(n, 4, 1)], -1)  # env-space chunks
    return {**inp, "action": action}


def test_demo_bc_anchor_adds_a_flow_matching_gradient(tmp_path):
    res = {}
    for coef in (0.0, 1.0):
        pol = tiny_policy(lora_rank=4)
        batch, adv, ret = _batch(pol)
        d = _demos(pol)
        demos = {**{k: d[k] for k in ("rgb", "state", "ids", "mask")}, "target": pol.normalizer.action(d["action"])}
        args = fast_args(tmp_path, minibatch_size=12, demo_bc_coef=coef, demo_batch_size=4)
        torch.manual_seed(0)
        res[coef] = (P.ppo_update(pol, _optimizer(pol), batch, adv, ret, args, 1, "cpu", demos=demos), pol.state_dict())
    assert "demo_bc_loss" not in res[0.0][0] and res[1.0][0]["demo_bc_loss"] > 0
    expert = [k for k in res[0.0][1] if ".dit." in k and "weight" in k]
    assert any(not torch.equal(res[0.0][1][k], res[1.0][1][k]) for k in expert)


def test_demo_bc_anchor_without_demos_is_a_clear_error(tmp_path):
    args = fast_args(tmp_path, num_iterations=1, demo_bc_coef=0.1, demos=str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="--demos"):
        P.main(args, env_fn=FakeVecEnv)
    pol = tiny_policy()
    torch.save(_demos(pol), tmp_path / "demos.pt")
    args = fast_args(tmp_path / "run", num_iterations=1, eval_every=0, demo_bc_coef=0.1, demos=str(tmp_path / "demos.pt"))
    P.main(args, env_fn=FakeVecEnv)
    assert json.loads((tmp_path / "run/metrics.jsonl").read_text())["losses/demo_bc_loss"] > 0


def test_bf16_autocast_keeps_fp32_masters_and_starts_the_update_at_ratio_one(tmp_path, monkeypatch):
    """--dtype bfloat16 (CPU autocast here): the first minibatch's PPO ratio is exactly 1 (old log-probs re-scored
    with the update's own forward), log-probs are fp32, and the first step changes the fp32 master weights."""
    ratios, before = [], {}
    orig = P.ppo_loss

    def spy(logp_new, logp_old, *a):
        ratios.append((logp_new.dtype, torch.exp(logp_new.detach() - logp_old.detach())))
        return orig(logp_new, logp_old, *a)

    monkeypatch.setattr(P, "ppo_loss", spy)
    orig_update = P.ppo_update

    def update(policy, *a, **kw):
        if not before:
            before.update({n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad})
        return orig_update(policy, *a, **kw)

    monkeypatch.setattr(P, "ppo_update", update)
    out = tmp_path / "run"
    P.main(fast_args(out, dtype="bfloat16", num_iterations=1, eval_every=0, minibatch_size=3), env_fn=FakeVecEnv)
    dtype, r0 = ratios[0]
    assert dtype == torch.float32 and torch.equal(r0, torch.ones_like(r0))
    sd = torch.load(out / "ckpt_final.pt", weights_only=False)["model"]
    changed = [n for n, v in before.items() if not torch.equal(v, sd[n])]
    assert all(sd[n].dtype == torch.float32 for n in before) and len(changed) > len(before) // 2
