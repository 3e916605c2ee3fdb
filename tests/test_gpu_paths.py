"""CPU tests of the code paths that otherwise only run on a GPU or at paper scale (issue 30): each exercises the same
code the GPU run takes (ManiSkill's GPU-sim setters accept CPU tensors; transformers' checkpointing, bf16 autocast
and the trainer's memory run on CPU). `benchmarks/gpu_check.sh` holds what only a GPU can check.

    pytest tests/test_gpu_paths.py -q
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ppoflow_pi0 as P  # noqa: E402
from scene_env import EnvConfig  # noqa: E402
from test_ppoflow import FakeVecEnv, tiny_policy  # noqa: E402


# ---------------------------------------------------------------------------------------------
# --grad-checkpointing: the prefix KV cache survives checkpointed layers, gradients are unchanged
# ---------------------------------------------------------------------------------------------


def _one_update(policy, batch, adv, ret, args):
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(7)
    stats = P.ppo_update(policy, opt, batch, adv, ret, args, 1, "cpu")
    return stats, {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_grad_checkpointing_update_equals_the_plain_update(dtype):
    pol = tiny_policy(lora_rank=4, num_steps=2)
    batch, _ = P.rollout(pol, FakeVecEnv(["x"], 3, EnvConfig(max_decisions=3)), num_steps=2, gamma=0.99, seed=5,
                         device="cpu")
    adv, ret = P.compute_gae(batch["reward"], batch["value"], batch["done"], batch["last_value"], 0.99, 0.95)
    args = P.Args(minibatch_size=6, micro_batch_size=3, update_epochs=1, dtype=dtype)
    start = {n: p.detach().clone() for n, p in pol.named_parameters()}
    plain, ckpt = pol, copy.deepcopy(pol)
    P.enable_grad_checkpointing(ckpt)
    s0, w0 = _one_update(plain, batch, adv, ret, args)
    s1, w1 = _one_update(ckpt, batch, adv, ret, args)  # old code: "size 5 vs 69"-style mask / key mismatch
    assert abs(s1["ratio_mean"] - 1) < 1e-6 and s1["clipfrac"] == 0.0  # the bf16 re-score ran checkpointed too
    for n in w0:  # same step: the gradient reaches the VLM's LoRA through the prefix keys/values
        torch.testing.assert_close(w1[n], w0[n], atol=1e-6 if dtype == "float32" else 1e-5, rtol=0, msg=n)
    moved = [n for n in w1 if "language_model" in n and "lora_B" in n and not torch.equal(w1[n], start[n])]
    assert moved, "no gradient reached the VLM's LoRA adapters through the prefix keys/values"


# ---------------------------------------------------------------------------------------------
# The noise head's log std is fp32 under bf16 autocast
# ---------------------------------------------------------------------------------------------


def test_noise_head_log_std_is_fp32_under_bf16_autocast():
    pol = tiny_policy()
    torch.nn.init.normal_(pol.noise_head[-1].weight, std=0.5)  # a trained head: log std spread over the range
    g = torch.Generator().manual_seed(0)
    a, z, tau = torch.randn(64, 4, 7, generator=g), torch.randn(64, 64, generator=g), torch.rand(64, generator=g)
    ref = pol.log_sigma(a, z, tau)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pol.log_sigma(a, z, tau)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)  # bf16: errors up to ~8e-3 (25 distinct values)
    assert got.unique().numel() > 1000
