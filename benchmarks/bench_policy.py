"""Benchmark the PPOFlow pi0 policy: decision latency for K=1 vs K=10 (eager and torch.compile) and PPO update
throughput with its model FLOP utilisation (FLOPs counted by torch's FlopCounterMode on one real update step,
forward + backward, divided by the measured step time and the device's peak). Random weights (timing only).
Precision as the trainer runs it: fp32 master weights and AdamW, `--dtype bfloat16` autocasts the forward passes
(ppoflow_pi0.py --dtype); `--grad-checkpointing` as ppoflow_pi0.py --grad-checkpointing.

    python benchmarks/bench_policy.py --preset tiny --device cpu
    python benchmarks/bench_policy.py --preset pi0-3b --device cuda --batch 32 --minibatch 32 --dtype bfloat16
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ppoflow_pi0 as P  # noqa: E402


@dataclass
class Args:
    preset: str = "tiny"
    """Model preset (tiny, small, pi0-3b)."""
    device: str = "cpu"
    """cpu or cuda."""
    dtype: str = "float32"
    """float32, or bfloat16: autocast of the forward passes over fp32 master weights (the trainer's --dtype)."""
    grad_checkpointing: bool = False
    """Activation checkpointing in the update (the trainer's --grad-checkpointing)."""
    batch: int = 8
    """Envs per decision (inference batch)."""
    minibatch: int = 8
    """PPO minibatch size for the update benchmark."""
    lora_rank: int = 32
    """LoRA rank on the VLM (Table A.1)."""
    repeats: int = 20
    """Timed repetitions (after warm-up)."""
    compile: bool = True
    """Also time torch.compile'd VLM / expert."""
    json: bool = False
    """Also print the figures as one `BENCH_JSON {...}` line (benchmarks/gpu_check.sh reads it)."""
    peak_tflops: float | None = None
    """Device peak dense TFLOP/s for MFU (default: H100/H200 989 and A100 312 in bf16, 67 / 19.5 in fp32; none on CPU)."""


PEAK_TFLOPS = {("H100", "bfloat16"): 989.0, ("H200", "bfloat16"): 989.0, ("A100", "bfloat16"): 312.0,
               ("H100", "float32"): 67.0, ("H200", "float32"): 67.0, ("A100", "float32"): 19.5}  # dense, SXM spec sheets


def device_peak(args: Args) -> float | None:
    if args.peak_tflops or args.device != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    return next((v for (gpu, dt), v in PEAK_TFLOPS.items() if gpu in name and dt == args.dtype), None)


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main(args: Args) -> dict:
    """Prints the figures and returns them (update ms/step, MFU or None, per mode the prefix / K=1 / K=10 ms)."""
    torch.manual_seed(0)
    if args.dtype not in ("float32", "bfloat16"):
        raise SystemExit(f"bench_policy.py: --dtype {args.dtype!r}: use float32 or bfloat16 (the trainer's choices)")
    pol = P.PI0Policy(P.preset_config(args.preset, lora_rank=args.lora_rank, lora_alpha=float(args.lora_rank)),
                      P.Normalizer.from_stats_file(P.DEFAULT_STATS), {"kind": "bytes"}).to(args.device)
    if args.grad_checkpointing:
        P.enable_grad_checkpointing(pol)
    n_all = sum(p.numel() for p in pol.parameters())
    n_train = sum(p.numel() for p in pol.parameters() if p.requires_grad)
    print(f"preset {args.preset} on {args.device} ({args.dtype} autocast, fp32 masters): {n_all / 1e6:.1f}M params, {n_train / 1e6:.1f}M trainable, "
          f"image {pol.config.image_size}, threads {torch.get_num_threads()}")
    obs = {"rgb": torch.randint(0, 256, (args.batch, 224, 224, 3), dtype=torch.uint8),
           "state": torch.rand(args.batch, 7) * 0.1 + 0.3, "instruction": ["put the carrot on the plate"] * args.batch}
    inp = P._to(pol.obs_to_inputs(obs), args.device)
    rows = []

    def decision(K):
        def run():
            with torch.no_grad(), P.autocast(args.device, args.dtype):
                pol.config.num_steps = K
                prefix = pol.encode(inp)
                pol.chain(prefix)
                pol.value(prefix)
        return run

    def prefix_only():
        with torch.no_grad(), P.autocast(args.device, args.dtype):
            pol.encode(inp)

    # PPO update throughput: encode with grad + score the stored chain + heads + backward + AdamW step
    pol.config.num_steps = 1
    args_ppo = P.Args(minibatch_size=args.minibatch, update_epochs=1, dtype=args.dtype)
    mb_obs = {**obs, "rgb": obs["rgb"][:1].expand(args.minibatch, -1, -1, -1),
              "state": obs["state"][:1].expand(args.minibatch, -1), "instruction": obs["instruction"][:1] * args.minibatch}
    mb_inp = pol.obs_to_inputs(mb_obs)
    with torch.no_grad(), P.autocast(args.device, args.dtype):
        prefix = pol.encode(P._to(mb_inp, args.device))
        chain, logp, _ = pol.chain(prefix)
    batch = {k: v[None] for k, v in mb_inp.items()}
    batch.update(chain=chain.cpu()[None], logp=logp.float().cpu()[None], value=torch.zeros(1, args.minibatch))
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-5)
    adv, ret = torch.randn(1, args.minibatch), torch.randn(1, args.minibatch)
    t = timed(lambda: P.ppo_update(pol, opt, batch, adv, ret, args_ppo, 1, args.device), args.repeats, args.device)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        P.ppo_update(pol, opt, batch, adv, ret, args_ppo, 1, args.device)
    flops, peak = fc.get_total_flops(), device_peak(args)
    mfu = f", MFU {flops / t / (peak * 1e12):.1%} of {peak:g} TFLOP/s" if peak else " (MFU: no peak known, pass --peak-tflops)"
    rescore = " (incl. the bf16 re-score forward, once per iteration in training)" if args.dtype == "bfloat16" else ""
    print(f"update (eager{', checkpointed' if args.grad_checkpointing else ''}){rescore}: minibatch {args.minibatch}, K=1: {t * 1e3:.0f} ms/step, {args.minibatch / t:.1f} samples/s, "
          f"{flops / args.minibatch / 1e9:.2f} GFLOP/sample, {flops / t / 1e12:.3f} TFLOP/s{mfu}")
    modes = ["eager"] + (["compile"] if args.compile else [])
    for mode in modes:
        if mode == "compile":
            try:
                pol.pi0.model.vlm.language_model = torch.compile(pol.pi0.model.vlm.language_model, dynamic=False)
                pol.pi0.model.dit = torch.compile(pol.pi0.model.dit, dynamic=False)
                decision(1)()
            except Exception as e:  # report, do not hide
                print(f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}")
                break
        tp = timed(prefix_only, args.repeats, args.device)
        t1, t10 = timed(decision(1), args.repeats, args.device), timed(decision(10), args.repeats, args.device)
        rows.append((mode, tp, t1, t10))
    print(f"\ninference, batch {args.batch} (one decision = VLM prefix once + K expert steps + value head):")
    print("| mode | prefix ms | K=1 ms | K=10 ms | K=10 / K=1 |")
    print("|---|---|---|---|---|")
    for mode, tp, t1, t10 in rows:
        print(f"| {mode} | {tp * 1e3:.1f} | {t1 * 1e3:.1f} | {t10 * 1e3:.1f} | {t10 / t1:.2f}x |")

    out = {"update_ms": t * 1e3, "mfu": flops / t / (peak * 1e12) if peak else None,
           "latency_ms": {mode: {"prefix": tp * 1e3, "k1": t1 * 1e3, "k10": t10 * 1e3} for mode, tp, t1, t10 in rows},
           "master_dtypes": sorted({str(p.dtype) for p in pol.parameters()})}
    if args.device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory {out['peak_gib']:.1f} GiB")
    if args.json:
        print("BENCH_JSON " + json.dumps(out))
    return out


if __name__ == "__main__":
    main(tyro.cli(Args))
