"""Tests of ppoflow_pi0.py: PPOFlow maths at tiny sizes, the open-pi-zero converter against a reference
implementation of its forward pass, resume equivalence, a DDP two-rank run and a CLI smoke run on a real env.

    pytest tests/test_ppoflow.py -q
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ppoflow_pi0 as P  # noqa: E402
from scene_env import EnvConfig  # noqa: E402

INSTRUCTIONS = ["put the carrot on the plate", "put the spoon on the towel", "stack the green cube"]


# ---------------------------------------------------------------------------------------------
# Helpers: a tiny policy, fake observations and a deterministic fake vector env (same API as ChunkVecEnv)
# ---------------------------------------------------------------------------------------------


def tiny_policy(seed=0, **kw) -> P.PI0Policy:
    torch.manual_seed(seed)
    cfg = P.preset_config("tiny", **kw)
    return P.PI0Policy(cfg, P.Normalizer.from_stats_file(P.DEFAULT_STATS), {"kind": "bytes"})


def fake_obs(n=3, size=64, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g),
            "state": torch.tensor([0.3, 0.0, 0.1, 0.0, 0.0, 0.0, 1.0]) + 0.05 * torch.randn(n, 7, generator=g),
            "instruction": [INSTRUCTIONS[i % 3] for i in range(n)]}


class FakeVecEnv:
    """Deterministic stand-in for scene_env.ChunkVecEnv: a point the chunk's xyz deltas move; success when it
    crosses x > 0.33. Same reset/step/info contract (auto-reset, final_observation, success, elapsed_s)."""

    def __init__(self, scenes, num_envs, cfg=EnvConfig(), seed=0, workers=None):
        self.num_envs, self.chunk, self.max_decisions, self.control_dt = num_envs, cfg.chunk, cfg.max_decisions, 0.2
        self.scene_ids = [str(scenes[i % len(scenes)]) for i in range(num_envs)]
        self.instructions = [INSTRUCTIONS[i % 3] for i in range(num_envs)]
        self.size, self.goal_x = 32, 0.33
        self.reset(seed)

    def _spawn(self, rows):
        self.pos[rows] = 0.3 + 0.01 * torch.randn(len(rows), 3, generator=self.g)
        self.t[rows] = 0

    def _obs(self):
        base = (self.pos[:, :, None, None] * 255).clamp(0, 255).to(torch.uint8)
        rgb = base.expand(-1, -1, self.size, self.size).permute(0, 2, 3, 1).contiguous()
        return {"rgb": rgb, "state": torch.cat([self.pos, torch.zeros(self.num_envs, 3), torch.ones(self.num_envs, 1)], 1),
                "instruction": list(self.instructions)}

    def reset(self, seed=None):
        self.g = torch.Generator().manual_seed(0 if seed is None else seed)
        self.pos, self.t = torch.zeros(self.num_envs, 3), torch.zeros(self.num_envs, dtype=torch.long)
        self._spawn(list(range(self.num_envs)))
        return self._obs(), {"scene_id": list(self.scene_ids), "instruction": list(self.instructions)}

    def step(self, actions):
        assert actions.shape == (self.num_envs, self.chunk, 7)
        self.pos += 10 * actions[:, :, :3].sum(1)
        self.t += 1
        success = self.pos[:, 0] > self.goal_x
        trunc = (self.t >= self.max_decisions) & ~success
        info = {"success": success.clone(), "elapsed_s": self.t.float() * self.chunk * self.control_dt,
                "partial_success": success.clone(), "scene_id": list(self.scene_ids)}
        done = success | trunc
        if done.any():
            info["final_observation"] = self._obs()
            self._spawn(done.nonzero().flatten().tolist())
        return self._obs(), success.float(), success, trunc, info

    def close(self):
        pass


def fast_args(tmp: Path, **kw) -> P.Args:
    base = dict(scene_ids=["simpler:PutCarrotOnPlateInScene-v1"], out=str(tmp), preset="tiny", num_envs=2, num_steps=3,
                minibatch_size=3, num_iterations=2, save_every=1, eval_every=2, lora_rank=4, seed=3,
                env=EnvConfig(image_size=32, max_decisions=2), learning_rate=1e-3)
    base.update(kw)
    return P.Args(**base)


# ---------------------------------------------------------------------------------------------
# Maths
# ---------------------------------------------------------------------------------------------


def test_gae_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    r, v = torch.rand(T, N, generator=g), torch.rand(T, N, generator=g)
    d, last = torch.rand(T, N, generator=g) < 0.3, torch.rand(N, generator=g)
    adv, ret = P.compute_gae(r, v, d, last, gamma, lam)
    for n in range(N):  # textbook recursion, one env at a time
        nxt_adv = 0.0
        for t in reversed(range(T)):
            nxt_v = float(last[n]) if t == T - 1 else float(v[t + 1, n])
            nd = 0.0 if d[t, n] else 1.0
            delta = float(r[t, n]) + gamma * nxt_v * nd - float(v[t, n])
            nxt_adv = delta + gamma * lam * nd * nxt_adv
            assert abs(float(adv[t, n]) - nxt_adv) < 1e-5
    assert torch.allclose(ret, adv + v)


def test_chain_logprob_is_sum_of_gaussian_log_densities():
    pol = tiny_policy(num_steps=3)
    with torch.no_grad():
        prefix = pol.encode(pol.obs_to_inputs(fake_obs()))
        chain, logp, log_std = pol.chain(prefix)
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(chain[:, 0]).sum((1, 2))  # log N(A^0; 0, I)
        for k in range(3):  # recompute every step's mean independently
            tau = torch.full((3,), k / 3)
            mean = chain[:, k] + pol.velocity(prefix, chain[:, k], tau) / 3
            std = pol.log_sigma(chain[:, k], prefix.z, tau).exp()
            expected += torch.distributions.Normal(mean, std).log_prob(chain[:, k + 1]).sum((1, 2))
    assert chain.shape == (3, 4, 4, 7)
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-4)
    assert log_std.min() >= -2.5 and log_std.max() <= -2.0
    # scoring the sampled chain reproduces its log-prob; deterministic mode has sigma = 0 (mean path)
    with torch.no_grad():
        _, logp2, _ = pol.chain(pol.encode(pol.obs_to_inputs(fake_obs())), chain=chain)
        det, _, _ = pol.chain(prefix, deterministic=True)
        det_mean = det[:, 0] + pol.velocity(prefix, det[:, 0], torch.zeros(3)) / 3
    torch.testing.assert_close(logp2, logp)
    torch.testing.assert_close(det[:, 1], det_mean)


def test_power_scaled_ratio_and_clipping():
    logp_old = torch.zeros(4)
    logp_new = torch.tensor([0.0, 1.0, -3.0, 5.0], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0])
    loss, st = P.ppo_loss(logp_new, logp_old, adv, ratio_power=0.2, clip_coef=0.2)
    ratio = torch.exp(0.2 * logp_new.detach())
    assert torch.allclose(st["ratio_max"], ratio.max()) and torch.allclose(st["ratio_min"], ratio.min())
    assert math.isclose(float(ratio[1]), math.exp(0.2), rel_tol=1e-6)  # (pi/pi_old)^s
    # ratios 1.2214 (> 1.2, adv > 0: clipped), 0.5488 (< 0.8, adv < 0: clipped), 2.718 (clipped)
    assert float(st["clipfrac"]) == 0.75
    expected = -(1.0 * 1.0 + min(ratio[1], 1.2) * 1 + -max(ratio[2], 0.8) + min(ratio[3], 1.2)) / 4
    assert math.isclose(float(loss.detach()), float(expected), rel_tol=1e-6)
    loss.backward()
    assert logp_new.grad[1] == 0 and logp_new.grad[3] == 0 and logp_new.grad[2] == 0  # clipped: no gradient
    assert math.isclose(float(logp_new.grad[0]), -0.2 / 4, rel_tol=1e-6)  # d/dlogp of -A r^s = -A s r / 4


def test_first_minibatch_ratio_is_one_and_no_clipping():
    pol = tiny_policy(lora_rank=4)
    envs = FakeVecEnv(["x"], 3, EnvConfig(max_decisions=3))
    batch, ep = P.rollout(pol, envs, num_steps=4, gamma=0.99, seed=5, device="cpu")
    assert batch["chain"].shape == (4, 3, 2, 4, 7) and batch["rgb"].shape == (4, 3, 3, 64, 64)
    pol.train()
    flat = {k: batch[k].flatten(0, 1)[:6] for k in ("rgb", "state", "ids", "mask", "chain", "logp")}
    prefix = pol.encode({k: flat[k] for k in ("rgb", "state", "ids", "mask")})
    _, logp, _ = pol.chain(prefix, chain=flat["chain"])
    _, st = P.ppo_loss(logp, flat["logp"], torch.randn(6), 0.2, 0.2)
    torch.testing.assert_close(torch.exp(logp - flat["logp"]), torch.ones(6), atol=1e-5, rtol=0)
    assert float(st["clipfrac"]) == 0.0 and abs(float(st["ratio_mean"]) - 1) < 1e-6


def test_truncation_is_bootstrapped_with_final_observation_value():
    pol = tiny_policy()
    envs = FakeVecEnv(["x"], 2, EnvConfig(max_decisions=2))
    envs.goal_x = 1e9  # never succeeds: every episode ends by the time limit
    with torch.no_grad():
        pol.value_head[-1].bias.fill_(5.0)  # V ~ 5
    batch, ep = P.rollout(pol, envs, num_steps=3, gamma=0.5, seed=1, device="cpu")
    assert batch["done"].tolist() == [[False, False], [True, True], [False, False]] and ep["success"] == [0.0, 0.0]
    torch.testing.assert_close(batch["reward"][1], 0.5 * batch["value"][1], atol=0.2, rtol=0)  # 0 + gamma * V(final)
    assert (batch["reward"][0] == 0).all() and (batch["reward"][2] == 0).all()
    batch, _ = P.rollout(pol, envs, num_steps=3, gamma=0.5, seed=1, device="cpu", bootstrap_truncated=False)
    assert (batch["reward"] == 0).all() and batch["done"][1].all()  # a time-out is a failure: GAE stops there at 0


def test_value_and_noise_heads_send_no_gradient_into_vlm_or_expert():
    pol = tiny_policy(lora_rank=4)
    prefix = pol.encode(pol.obs_to_inputs(fake_obs()))
    a = torch.randn(3, 4, 7)
    loss = pol.value(prefix).pow(2).sum() + pol.log_sigma(a, prefix.z, torch.zeros(3)).sum()
    loss.backward()
    touched = [n for n, p in pol.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert touched and all(n.startswith(("value_head.", "noise_head.")) for n in touched), touched
    # while the PPO log-prob does reach the VLM's LoRA adapters and the action expert
    pol.zero_grad()
    with torch.no_grad():  # make LoRA B non-zero so A also gets gradient
        for n, p in pol.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    prefix = pol.encode(pol.obs_to_inputs(fake_obs()))
    _, logp, _ = pol.chain(prefix)
    logp.sum().backward()
    names = {n for n, p in pol.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("language_model" in n and "lora_A" in n for n in names) and any(".dit." in n for n in names)
    assert not any(n.startswith("value_head.") for n in names)
    frozen = [n for n, p in pol.named_parameters() if ".vlm." in n and "lora_" not in n and p.requires_grad]
    assert frozen == []


def test_finetune_modes_select_trainable_parameters():
    def trainable(**kw):
        return {n for n, p in tiny_policy(**kw).named_parameters() if p.requires_grad}

    full = trainable(lora_rank=0)
    assert any("vision_tower" in n for n in full) and "pi0.model.vlm.language_model.embed_tokens.weight" not in full
    frozen = trainable(freeze_vlm=True)
    assert not any(".vlm." in n for n in frozen) and any(".dit." in n for n in frozen)
    no_siglip = trainable(lora_rank=4, freeze_siglip=True)
    assert not any("vision_tower" in n for n in no_siglip) and any("language_model" in n for n in no_siglip)
    lora_exp = trainable(lora_rank=4, lora_expert=True)
    assert all("lora_" in n for n in lora_exp if ".dit." in n) and any(".dit." in n for n in lora_exp)


def test_normalizer_round_trip_and_gripper_convention():
    nz = P.Normalizer.from_stats_file(P.DEFAULT_STATS)
    env_a = torch.tensor([[0.01, -0.02, 0.005, 0.03, -0.01, 0.05, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    model_a = nz.action(env_a)
    assert model_a[0, 6] == 0.0 and model_a[1, 6] == 1.0  # open-pi-zero: gripper openness in [0, 1]
    torch.testing.assert_close(nz.env_action(model_a), env_a, atol=1e-6, rtol=1e-5)
    demo = P.Normalizer.from_data(np.random.rand(100, 7), np.random.rand(100, 7))
    assert demo.state(torch.rand(5, 7)).abs().max() <= 1.0


# ---------------------------------------------------------------------------------------------
# open-pi-zero converter: a reference of its forward pass, with its module/key names
# ---------------------------------------------------------------------------------------------


def _rms(x, w, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w.float())).to(x.dtype)


def _rope(x, pos, theta):  # x [B, H, T, D], pos [B, T]
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    ang = pos[..., None].float() * inv  # [B, T, D/2]
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    rot = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


class RefLayer(nn.Module):
    def __init__(self, h, inter, heads, kv, hd):
        super().__init__()
        self.self_attn = nn.Module()
        for n, o in (("q_proj", heads * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
            setattr(self.self_attn, n, nn.Linear(h, o, bias=False))
        self.self_attn.o_proj = nn.Linear(heads * hd, h, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_proj, self.mlp.up_proj = nn.Linear(h, inter, bias=False), nn.Linear(h, inter, bias=False)
        self.mlp.down_proj = nn.Linear(inter, h, bias=False)
        self.input_layernorm, self.post_attention_layernorm = nn.Module(), nn.Module()
        self.input_layernorm.weight = nn.Parameter(0.1 * torch.randn(h))
        self.post_attention_layernorm.weight = nn.Parameter(0.1 * torch.randn(h))


class RefMixture(nn.Module):
    def __init__(self, h, inter, layers, heads, kv, hd, final_norm):
        super().__init__()
        self.layers = nn.ModuleList(RefLayer(h, inter, heads, kv, hd) for _ in range(layers))
        if final_norm:
            self.norm = nn.Module()
            self.norm.weight = nn.Parameter(0.1 * torch.randn(h))


class RefPiZero(nn.Module):
    """open-pi-zero's PiZero (joint model of vlm / proprio / action mixtures), naive full-sequence forward."""

    def __init__(self, V=300, hv=64, he=48, layers=2, heads=2, kv=1, hd=16, horizon=4, adim=7, pdim=7):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        self.hv, self.he, self.heads, self.kv, self.hd, self.horizon = hv, he, heads, kv, hd, horizon
        self.image_token_index, self.pad_token_id = V - 1, 0
        self.embed_tokens = nn.Embedding(V, hv, 0)
        self.vision_tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                                 num_attention_heads=2, image_size=32, patch_size=8,
                                                                 vision_use_head=False))
        self.multi_modal_projector = nn.Module()
        self.multi_modal_projector.linear = nn.Linear(32, hv)
        self.joint_model = nn.Module()
        self.joint_model.mixtures = nn.ModuleDict({"vlm": RefMixture(hv, 96, layers, heads, kv, hd, False),
                                                   "action": RefMixture(he, 80, layers, heads, kv, hd, True)})
        self.joint_model.mixtures["proprio"] = self.joint_model.mixtures["action"]  # tie_action_proprio_weights
        self.action_encoder = nn.Module()
        self.action_encoder.linear_1, self.action_encoder.linear_2 = nn.Linear(adim, he), nn.Linear(2 * he, he)
        self.action_encoder.linear_3 = nn.Linear(he, he)
        self.proprio_encoder, self.action_decoder = nn.Linear(pdim, he), nn.Linear(he, adim)

    def time_embedding(self, t, max_period=10000.0):  # SinusoidalPosEmb(he)
        half = self.he // 2
        f = torch.exp(torch.arange(half).float() * -(math.log(max_period) / (half - 1)))
        e = t[:, None] * f[None]
        return torch.cat([e.sin(), e.cos()], -1)

    def velocity(self, input_ids, attn_mask, pixel_values, proprio, action, t):
        B, L = input_ids.shape
        img = self.multi_modal_projector.linear(self.vision_tower(pixel_values).last_hidden_state) / self.hv ** 0.5
        emb = torch.zeros(B, L, self.hv)
        text = (input_ids != self.image_token_index) & (input_ids != self.pad_token_id)
        emb[text] = self.embed_tokens(input_ids)[text]
        emb[:, : img.shape[1]] = img  # image tokens come first
        te = self.time_embedding(t)
        ae = self.action_encoder
        act = ae.linear_3(F.silu(ae.linear_2(torch.cat([te[:, None].expand(-1, self.horizon, -1), ae.linear_1(action)], -1))))
        embeds = {"vlm": emb * self.hv ** 0.5, "proprio": self.proprio_encoder(proprio)[:, None] * self.he ** 0.5,
                  "action": act * self.he ** 0.5}
        pos = {"vlm": torch.arange(1, L + 1).expand(B, L), "proprio": torch.ones(B, 1, dtype=torch.long),
               "action": torch.arange(2, self.horizon + 2).expand(B, self.horizon)}
        theta = {"vlm": 10000.0, "proprio": 10000.0, "action": 10000.0}
        total = L + 1 + self.horizon
        mask = torch.full((B, total, total), torch.finfo(torch.float32).min)
        for b in range(B):
            n = int(attn_mask[b].sum())
            mask[b, :n, :n] = 0
            mask[b, L:, :n] = 0
        mask[:, L:L + 1, L:L + 1] = 0
        mask[:, L + 1:, L:] = 0
        mask = mask[:, None]
        mix = self.joint_model.mixtures
        for i in range(len(mix["vlm"].layers)):
            qs, ks, vs, hs = [], [], [], {}
            for name, x in embeds.items():
                lay = mix[name].layers[i]
                h = _rms(x, lay.input_layernorm.weight)
                T = h.shape[1]
                q = lay.self_attn.q_proj(h).view(B, T, self.heads, self.hd).transpose(1, 2)
                k = lay.self_attn.k_proj(h).view(B, T, self.kv, self.hd).transpose(1, 2)
                v = lay.self_attn.v_proj(h).view(B, T, self.kv, self.hd).transpose(1, 2)
                qs.append(_rope(q, pos[name], theta[name]))
                ks.append(_rope(k, pos[name], theta[name]).repeat_interleave(self.heads // self.kv, 1))
                vs.append(v.repeat_interleave(self.heads // self.kv, 1))
            q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
            w = q @ k.transpose(2, 3) / math.sqrt(self.hd)
            w = torch.tanh(w / 50.0) * 50.0  # attn_softclamp
            o = (torch.softmax(w + mask, -1) @ v).transpose(1, 2).reshape(B, total, -1)
            start = 0
            for name, x in embeds.items():
                lay, T = mix[name].layers[i], x.shape[1]
                x = x + lay.self_attn.o_proj(o[:, start:start + T])
                h = _rms(x, lay.post_attention_layernorm.weight)
                hs[name] = x + lay.mlp.down_proj(F.gelu(lay.mlp.gate_proj(h), approximate="tanh") * lay.mlp.up_proj(h))
                start += T
            embeds = hs
        return self.action_decoder(_rms(embeds["action"], mix["action"].norm.weight))


def test_open_pi_zero_converter_reproduces_reference_velocities(tmp_path):
    torch.manual_seed(0)
    ref = RefPiZero().eval()
    path = tmp_path / "open_pi_zero.pt"
    torch.save({"model": ref.state_dict(), "epoch": 3}, path)
    pol = P.load_policy(path, tokenizer_path="bytes", open_pi_zero={"vision_heads": 2}, num_steps=4, lora_rank=0).eval()
    assert pol.config.pi0["dit_config"]["num_attention_heads"] == ref.heads  # read from the shapes
    assert pol.config.flow_time == "paper" and pol.config.positions == "open_pi_zero"
    obs = {"rgb": torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8), "state": 0.1 * torch.randn(3, 7) + 0.3,
           "instruction": ["put carrot on plate", "pick up the spoon please", "x"]}
    inp = pol.obs_to_inputs(obs)
    n_img = 16
    ids = torch.cat([torch.full((3, n_img), ref.image_token_index), inp["ids"]], 1)
    mask = torch.cat([torch.ones(3, n_img, dtype=torch.bool), inp["mask"]], 1)
    pix = inp["rgb"].float() / 127.5 - 1
    proprio = pol.normalizer.state(inp["state"])
    with torch.no_grad():
        prefix = pol.encode(inp)
        for tau in (0.0, 0.37, 0.9):
            a = torch.randn(3, 4, 7)
            t = torch.full((3,), tau)
            v_ref = ref.velocity(ids, mask, pix, proprio, a, t)
            v = pol.velocity(prefix, a, t)
            torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=3e-6)  # measured 3e-7; no softcap: 1e-5
        # whole Euler integration 0 -> 1 (open-pi-zero infer_action), deterministic chain with K = 4
        chain, _, _ = pol.chain(prefix, deterministic=True)
        a = chain[:, 0].clone()
        for k in range(4):
            a = a + 0.25 * ref.velocity(ids, mask, pix, proprio, a, torch.full((3,), k / 4))
        torch.testing.assert_close(chain[:, -1], a, rtol=1e-5, atol=3e-6)


def test_open_pi_zero_through_init_matches_load_policy_and_needs_a_tokenizer(tmp_path):
    torch.manual_seed(1)
    ref = RefPiZero(heads=4, kv=1).eval()  # 4 query heads: only the shapes say so
    path = tmp_path / "open_pi_zero.pt"
    torch.save({"model": ref.state_dict()}, path)
    with pytest.raises(P.CheckpointError, match="--tokenizer-path"):  # 300-token vocabulary, no tokenizer
        P.build_policy(fast_args(tmp_path, init=str(path), lora_rank=0, init_vision_heads=2))
    via_init = P.build_policy(fast_args(tmp_path, init=str(path), lora_rank=0, init_vision_heads=2, tokenizer_path="bytes",
                                        num_inference_steps=4)).eval()
    direct = P.load_policy(path, tokenizer_path="bytes", open_pi_zero={"vision_heads": 2}, num_steps=4, lora_rank=0).eval()
    assert via_init.config.pi0["vlm_config"]["text_config"]["num_attention_heads"] == 4
    obs = {"rgb": torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8), "state": 0.1 * torch.randn(2, 7) + 0.3,
           "instruction": ["put carrot on plate", "x"]}
    with torch.no_grad():
        torch.manual_seed(5)  # the chain's initial noise A^0 is drawn even in deterministic mode
        a1 = via_init.act(obs, deterministic=True)
        torch.manual_seed(5)
        a2 = direct.act(obs, deterministic=True)
    torch.testing.assert_close(a1, a2, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Checkpoints, resume, DDP, CLI smoke
# ---------------------------------------------------------------------------------------------


def _final_state(run: Path) -> dict:
    return torch.load(run / "ckpt_final.pt", map_location="cpu", weights_only=True)


def test_resume_equivalence_and_checkpoint_contract(tmp_path):
    full = P.main(fast_args(tmp_path / "full"), env_fn=FakeVecEnv)
    part = P.main(fast_args(tmp_path / "part", num_iterations=1), env_fn=FakeVecEnv)
    resumed = P.main(fast_args(tmp_path / "part", resume=str(part / "ckpt_1.pt")), env_fn=FakeVecEnv)
    a, b = _final_state(full), _final_state(resumed)
    assert a["iteration"] == b["iteration"] == 2 and a["kind"] == "pi0_policy" and a["schema_version"] == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert (full / "args.json").exists() and len((full / "metrics.jsonl").read_text().splitlines()) == 2
    # the run trained something, and load_policy gives an env-ready policy
    first = torch.load(full / "ckpt_1.pt", map_location="cpu", weights_only=True)
    assert first["iteration"] == 1 and any(not torch.equal(first["model"][k], a["model"][k]) for k in a["model"])
    pol = P.load_policy(full / "ckpt_final.pt")
    act = pol.act(fake_obs(2))
    assert act.shape == (2, 4, 7) and set(act[..., 6].unique().tolist()) <= {-1.0, 1.0}
    assert pol.config.lora_rank == 4 and pol.config.num_steps == 1


def test_critic_warmup_trains_only_the_value_head(tmp_path):
    args = fast_args(tmp_path, num_iterations=2, critic_warmup_iterations=1, eval_every=0)
    P.seed_everything(args.seed)
    start = P.build_policy(args).state_dict()
    P.main(args, env_fn=FakeVecEnv)
    first = torch.load(tmp_path / "ckpt_1.pt", map_location="cpu", weights_only=True)["model"]
    final = _final_state(tmp_path)["model"]
    changed = {k for k in start if not torch.equal(start[k], first[k])}
    assert changed and all(k.startswith("value_head.") for k in changed), sorted(changed)[:5]
    assert any(not torch.equal(first[k], final[k]) for k in final if k.startswith("noise_head."))  # policy trains after
    n_value = sum(1 for k in start if k.startswith("value_head."))
    opt = torch.load(tmp_path / "ckpt_1.pt", map_location="cpu", weights_only=True)["optimizer"]
    assert len(opt["state"]) == n_value  # no Adam moments built from warm-up policy gradients


def test_init_from_checkpoint_changes_finetune_mode(tmp_path):
    src = tiny_policy(lora_rank=0)
    P.torch_save_atomic(P.policy_checkpoint(src, iteration=0), tmp_path / "il.pt")
    pol = P.build_policy(fast_args(tmp_path, init=str(tmp_path / "il.pt"), lora_rank=4, num_inference_steps=2))
    assert pol.config.lora_rank == 4 and pol.config.num_steps == 2
    obs = fake_obs()
    torch.manual_seed(1)
    x = src.act(obs)
    torch.manual_seed(1)
    y = pol.act(obs)
    assert x.shape == y.shape  # same weights (fresh LoRA B = 0), different K


def test_value_state_head_reads_the_robot_state_and_loads_from_a_z_only_checkpoint(tmp_path):
    src = tiny_policy(lora_rank=0)
    P.torch_save_atomic(P.policy_checkpoint(src, iteration=0), tmp_path / "il.pt")
    pol = P.build_policy(fast_args(tmp_path, init=str(tmp_path / "il.pt"), lora_rank=0, value_state=True))
    assert pol.config.value_state and pol.value_head[0].in_features == src.value_head[0].in_features + 7
    obs = fake_obs(2)
    with torch.no_grad():
        v0 = pol.value(pol.encode(pol.obs_to_inputs(obs)))
        obs["state"] = obs["state"] + 0.05
        v1 = pol.value(pol.encode(pol.obs_to_inputs(obs)))
    assert v0.shape == (2,) and not torch.allclose(v0, v1)
    for k, v in src.state_dict().items():  # everything but the value head came from the checkpoint
        if not k.startswith("value_head."):
            assert torch.equal(v, pol.state_dict()[k]), k


DDP_RUNNER = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
import ppoflow_pi0 as P
from test_ppoflow import FakeVecEnv, fast_args
from pathlib import Path
import os, torch
orig = P.ppo_update
def ppo_update(policy, *a, **kw):  # record every rank's parameters after its update
    out = orig(policy, *a, **kw)
    torch.save({{k: v.detach().clone() for k, v in policy.state_dict().items()}}, {out!r} + f"_rank{{os.environ['RANK']}}.pt")
    return out
P.ppo_update = ppo_update
class SceneLog(FakeVecEnv):  # records the scenes each rank's envs hold
    def __init__(self, scenes, num_envs, *a, **kw):
        super().__init__(scenes, num_envs, *a, **kw)
        Path({out!r} + f"_scenes{{os.environ['RANK']}}.txt").write_text("\\n".join(self.scene_ids))
P.main(fast_args(Path({out!r}), num_envs=4, minibatch_size=2, num_iterations=1, eval_every=0,
                 scene_ids=[f"simpler:Scene{{k}}-v1" for k in range(4)]), env_fn=SceneLog)
"""


@pytest.mark.timeout(180)
def test_ddp_two_ranks_gloo_trains_every_scene(tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(textwrap.dedent(DDP_RUNNER.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path / "run"))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
                        str(runner)], capture_output=True, text=True, env=env, timeout=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ck = _final_state(tmp_path / "run")
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])
    r0, r1 = (torch.load(f"{tmp_path / 'run'}_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # different data per rank, identical replicas after all-reduce
    assert all(torch.equal(r0[k], ck["model"][k]) for k in r0)
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    held = [(tmp_path / f"run_scenes{r}.txt").read_text().split() for r in (0, 1)]  # 2 envs per rank, 4 scenes
    assert held == [["simpler:Scene0-v1", "simpler:Scene1-v1"], ["simpler:Scene2-v1", "simpler:Scene3-v1"]]


def _has_vec_env() -> bool:
    import scene_env

    return hasattr(scene_env, "make_vec_env")


@pytest.mark.timeout(300)
@pytest.mark.skipif(not _has_vec_env(), reason="scene_env.make_vec_env not available yet")
def test_cli_smoke_two_iterations_on_simpler_scene(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "ppoflow_pi0.py"), "--scene-ids", "simpler:PutCarrotOnPlateInScene-v1",
           "--preset", "tiny", "--out", str(out), "--num-envs", "1", "--num-steps", "2", "--minibatch-size", "2",
           "--num-iterations", "2", "--save-every", "1", "--eval-every", "2", "--env.max-decisions", "2",
           "--env.sim-backend", "physx_cpu", "--lora-rank", "4", "--env-workers", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=280, env={**os.environ, "LP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (out / "args.json").exists() and (out / "ckpt_final.pt").exists() and (out / "ckpt_2.pt").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "losses/approx_kl" in lines[-1] and "eval/success_rate" in lines[-1]


def test_transformers_pi0_folder_loads_and_matches_native_forward(tmp_path):
    """A transformers/lerobot-format pi0 folder (save_pretrained) loads through load_policy, and our cached
    prefix + expert velocity equals transformers' own PI0ForConditionalGeneration.forward (time flipped)."""
    from transformers import PI0Config, PI0ForConditionalGeneration

    torch.manual_seed(0)
    native = PI0ForConditionalGeneration(PI0Config.from_dict(P.preset_config("tiny").pi0)).eval()
    native.save_pretrained(tmp_path / "pi0")
    pol = P.load_policy(tmp_path / "pi0", lora_rank=0).eval()
    assert pol.config.flow_time == "transformers" and pol.config.preset == "pretrained"
    inp = pol.obs_to_inputs(fake_obs(2))
    n_img = 16
    img_id = native.config.vlm_config.image_token_id
    a, tau = torch.randn(2, 4, 7), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        v = pol.velocity(pol.encode(inp), a, tau)
        ref = native(state=pol.normalizer.state(inp["state"]), noise=a, timestep=1 - tau,
                     input_ids=torch.cat([torch.full((2, n_img), img_id), inp["ids"]], 1),
                     attention_mask=torch.cat([torch.ones(2, n_img, dtype=torch.long), inp["mask"].long()], 1),
                     pixel_values=(inp["rgb"].float() / 127.5 - 1)[:, None],
                     pixel_attention_mask=torch.ones(2, 1, dtype=torch.bool)).logits
    torch.testing.assert_close(v, -ref, rtol=1e-5, atol=3e-6)  # paper velocity = -(transformers velocity)


@pytest.mark.parametrize("freeze_vlm", [True, False])
def test_lora_expert_keeps_trainable_adapters_on_the_expert(freeze_vlm):
    pol = tiny_policy(lora_rank=4, lora_expert=True, freeze_vlm=freeze_vlm)
    train = {n for n, p in pol.named_parameters() if p.requires_grad}
    dit = [n for n in train if ".dit." in n]
    assert dit and all("lora_" in n for n in dit)  # adapters only: the expert's base weights are frozen
    vlm_lora = [n for n in train if ".vlm." in n]
    assert (not vlm_lora) if freeze_vlm else (vlm_lora and all("lora_" in n for n in vlm_lora))
    assert any(n.startswith("noise_head.") for n in train) and any(n.startswith("value_head.") for n in train)


def test_lora_expert_without_a_rank_is_a_clear_error():
    with pytest.raises(ValueError, match="--lora-rank"):
        tiny_policy(lora_rank=0, lora_expert=True)


def test_export_round_trip_through_transformers_from_pretrained(tmp_path):
    """A LoRA-adapted policy exported with save_pretrained: transformers loads the folder, the merged weights are
    the policy's own effective weights, and load_policy of the folder acts as the checkpoint within 1e-5."""
    from transformers import AutoTokenizer, PI0ForConditionalGeneration

    pol = tiny_policy(lora_rank=4, lora_expert=True, value_state=True).eval()
    with torch.no_grad():
        for n, p in pol.named_parameters():
            if "lora_B" in n or n.startswith(("noise_head.", "value_head.")):
                p.normal_(0, 0.05)  # non-trivial adapters and heads
    P.torch_save_atomic(P.policy_checkpoint(pol, iteration=0), tmp_path / "ckpt.pt")
    r = subprocess.run([sys.executable, str(REPO / "ppoflow_pi0.py"), "export", "--ckpt", str(tmp_path / "ckpt.pt"),
                        "--out", str(tmp_path / "hf")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    native = PI0ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert not any("lora_" in k or "base_layer" in k for k in native.state_dict())
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert [tok.bos_token_id] + tok("put the carrot\n", add_special_tokens=False)["input_ids"] == \
        P.ByteTokenizer().encode("put the carrot")
    back = P.load_policy(tmp_path / "hf").eval()
    assert back.config.value_state and back.normalizer == pol.normalizer and back.config.chunk == pol.config.chunk
    obs = fake_obs(3)
    with torch.no_grad():
        torch.manual_seed(0)
        a0 = pol.act(obs, deterministic=True)
        torch.manual_seed(0)
        a1 = back.act(obs, deterministic=True)
        inp = pol.obs_to_inputs(obs)
        v0, v1 = pol.value(pol.encode(inp)), back.value(back.encode(back.obs_to_inputs(obs)))
    torch.testing.assert_close(a1, a0, rtol=0, atol=1e-5)
    torch.testing.assert_close(v1, v0, rtol=0, atol=1e-5)
    with pytest.raises(FileExistsError, match="not empty"):  # never half-overwrites an earlier export
        P.export_pretrained(pol, tmp_path / "hf")
    assert not list(tmp_path.glob(".hf.tmp-*"))


def test_dry_run_counts_parameters_on_meta_and_writes_nothing(tmp_path):
    args = fast_args(tmp_path / "run", dry_run=True, lora_rank=4, micro_batch_size=8)
    est = P.memory_estimate(args)
    real = P.build_policy(fast_args(tmp_path / "run", lora_rank=4))
    assert est["params_total"] == sum(p.numel() for p in real.parameters())
    assert est["params_trainable"] == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert est["micro_batch"] == 8 and est["peak_gb"] > est["weights_gb"] > 0
    assert P.memory_estimate(fast_args(tmp_path, micro_batch_size=64))["activations_gb"] > est["activations_gb"]
    P.main(args)
    assert not (tmp_path / "run").exists()


def test_export_config_holds_the_checkpoint_k_and_transformers_alone_reproduces_the_policy(tmp_path):
    """Issue 31: config.json carries the checkpoint's K and chunk (from_pretrained + defaults = the trained policy),
    every weight is found (no missing-key warning), AutoProcessor loads, and transformers' own processor +
    sample_actions give the policy's deterministic actions from the same noise; the model card and openpi-style
    statistics are written."""
    import json

    from transformers import AutoProcessor, PI0ForConditionalGeneration

    sys.path.insert(0, str(REPO / "benchmarks"))
    from ecosystem_reference import reference

    pol = tiny_policy(num_steps=3).eval()
    P.torch_save_atomic(P.policy_checkpoint(pol, iteration=7, args={"ratio_power": 0.2, "scenes_dir": "scenes"}),
                        tmp_path / "ckpt.pt")
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    P.export_pretrained(P.load_policy(tmp_path / "ckpt.pt"), tmp_path / "hf", P.export_source(tmp_path / "ckpt.pt"))
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert cfg["num_inference_steps"] == ck["model_config"]["num_steps"] == 3 and cfg["chunk_size"] == pol.config.chunk
    model, info = PI0ForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    g = np.random.default_rng(0)
    S = pol.config.image_size
    ref = reference(pol, g.integers(0, 256, (2, S, S, 3), dtype=np.uint8),
                    (np.array([0.3, 0, 0.1, 0, 0, 0, 1]) + 0.05 * g.normal(size=(2, 7))).astype(np.float32),
                    ["put the carrot on the plate", "pick up the spoon"])
    for i in range(2):
        inputs = processor(images=[ref["rgb"][i]], text=[str(ref["text"][i])], state=ref["state"][i:i + 1],
                           max_length=processor.image_seq_length + pol.config.max_text_tokens, truncation=True)
        inputs["state"] = inputs["state"].clamp(-1, 1)
        noise = torch.zeros(1, model.config.chunk_size, model.config.max_action_dim)
        noise[0, :, :7] = torch.from_numpy(ref["noise"][i])
        out = model.eval().sample_actions(**inputs, noise=noise)[0, :, :7].clamp(-1, 1)  # K from config.json
        act = out * torch.tensor(processor.actions_std) + torch.tensor(processor.actions_mean)
        act[:, 6] = torch.where(out[:, 6] > 0.5, 1.0, -1.0)
        torch.testing.assert_close(act, torch.from_numpy(ref["action"][i]), rtol=0, atol=1e-5)
    card = (tmp_path / "hf/README.md").read_text()
    assert "python ppoflow_pi0.py" in card and "K = 3" in card and "from_pretrained" in card
    stats = json.loads((tmp_path / "hf/norm_stats.json").read_text())["norm_stats"]
    assert stats["state"]["q01"] == list(pol.normalizer.state_lo) and len(stats["actions"]["q99"]) == 7
