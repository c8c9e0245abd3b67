"""Where a training step's time goes: a per-region breakdown of the fast path's semi step (and of the
--no-fast baseline beside it), with the same sizes and data as bench_step.py.

    python benchmarks/profile_step.py [--steps 5] [--no-fast-too] [--generator unet] [--top 15]

Regions are op-name families of torch.profiler's self times (CPU time on the CPU, device time on a
GPU): convolutions, norms (instance norm + activation), other pointwise/activation ops, losses,
optimizer, memory movement (copies, casts, layout changes, cat, padding), and the rest; "host
overhead" is the wall time of the step not covered by any op (Python, dispatch, launches). Prints a
markdown table.
"""
from __future__ import annotations

import argparse
import time

import torch

import bench_step as bs
from common import DEVICE, sync

REGIONS = [  # (region, substrings of op names), first match wins
    ("convolutions", ("conv", "cudnn", "mkldnn_convolution", "gemm", "mm")),
    ("norms", ("instance_norm", "batch_norm", "native_group_norm")),
    ("losses", ("softmax_cross_entropy", "lsgan", "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "log_softmax")),
    ("optimizer", ("adam", "foreach", "fused_adam", "_fused")),
    ("memory movement", ("copy", "_to_copy", "cat", "reflection_pad", "contiguous", "clone", "one_hot", "empty",
                         "fill", "zero_")),
    ("pointwise / activations", ("relu", "leaky", "tanh", "softmax", "add", "mul", "sub", "div", "where", "sum",
                                 "mean", "pow", "abs", "sign", "neg", "exp", "sqrt", "rsqrt")),
]


def region(name: str) -> str:
    n = name.lower()
    for r, keys in REGIONS:
        if any(k in n for k in keys):
            return r
    return "other ops"


def profile(variant: str, steps: int, cfg=None, top: dict | None = None) -> tuple[dict, float]:
    """({region: ms per step}, wall ms per step) of `variant`'s step on `cfg` (bench_step's CFG by default);
    `top`, when given, receives {op name: ms per step}."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    from cycleseg import ops
    from cycleseg.data.h5format import Meta
    from cycleseg.models import networks_from_config, use_ops
    from cycleseg.assemble import make_step

    cfg = cfg or bs.CFG
    plan = bs.plan_of(variant, cfg)
    meta = Meta(num_classes=bs.K, class_names=[str(i) for i in range(bs.K)], palette=[[0, 0, 0]] * bs.K, channels=3)
    torch.manual_seed(0)
    nets = networks_from_config(cfg, meta)
    for net in nets.values():
        use_ops(net.to(DEVICE), plan.ops())
        if plan.channels_last:
            net.to(memory_format=torch.channels_last)
    step = make_step(cfg, nets, meta, plan)
    data = bs.batches()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with ops.validation(False):
        for i in range(bs.WARMUP):
            step(data[i % len(data)])
        sync()
        t0 = time.perf_counter()
        with tprofile(activities=activities) as prof:
            for i in range(steps):
                step(data[i % len(data)])
            sync()
        wall = (time.perf_counter() - t0) / steps * 1e3
    totals: dict = {}
    for e in prof.key_averages():
        if e.key.startswith(("ProfilerStep", "autograd::", "Optimizer.", "cudaLaunch", "cuda", "Generated")):
            continue                                                # wrappers: their children are counted
        t = (e.self_device_time_total if DEVICE == "cuda" else e.self_cpu_time_total) / 1e3 / steps
        if t > 0:
            totals[region(e.key)] = totals.get(region(e.key), 0.0) + t
            if top is not None:
                top[e.key] = top.get(e.key, 0.0) + t
    return totals, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-fast-too", action="store_true", help="also profile the --no-fast baseline")
    p.add_argument("--generator", choices=["resnet", "unet"], default="resnet",
                   help="G_IS: the paper's ResNet (bench_step's CFG) or SSL4MIS's UNet (its UNET_CFG)")
    p.add_argument("--top", type=int, default=0, help="also list the N ops with the most time (fast path)")
    a = p.parse_args(argv)
    cfg = bs.UNET_CFG if a.generator == "unet" else bs.CFG
    variants = ["no_fast", "fast"] if a.no_fast_too else ["fast"]
    top: dict = {}
    cols = {v: profile(v, a.steps, cfg, top if v == "fast" else None) for v in variants}
    names = [r for r, _ in REGIONS] + ["other ops"]
    print(f"Per step, ms ({'device' if DEVICE == 'cuda' else 'CPU'} time by region; G_IS {a.generator}, "
          f"{cfg.image_size}x{cfg.image_size}, batch {cfg.batch_size} + {cfg.batch_size}, K = {bs.K}):\n")
    print("| region | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for r in names:
        print(f"| {r} | " + " | ".join(f"{cols[v][0].get(r, 0.0):.1f}" for v in variants) + " |")
    covered = {v: sum(cols[v][0].values()) for v in variants}
    if DEVICE == "cpu":
        print("| host overhead (wall - ops) | " + " | ".join(f"{max(0.0, cols[v][1] - covered[v]):.1f}" for v in variants) + " |")
    print("| **wall time per step** | " + " | ".join(f"**{cols[v][1]:.1f}**" for v in variants) + " |")
    if a.top:
        print(f"\nThe fast path's {a.top} costliest ops (self time, ms per step):\n")
        print("| op | region | ms |\n|---|---|---|")
        for name, t in sorted(top.items(), key=lambda kv: -kv[1])[:a.top]:
            print(f"| {name} | {region(name)} | {t:.2f} |")


if __name__ == "__main__":
    main()
