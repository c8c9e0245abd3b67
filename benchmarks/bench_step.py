"""The whole training step (semi: one generator update and one discriminator update), fast path against
the eager baseline, as `python -m cycleseg.train` runs them:

    no_fast           --no-fast: PyTorch's own ops, eager, fp32, NCHW, default Adam (the baseline of every ratio)
    fast              the default: the plan fastpath.plan_for chooses for this device and run length
    fast_eager        (GPU) the fast path without torch.compile
    fast_compiled     (CPU) the fast path with torch.compile (--compile on), which the CPU plan leaves out
                      of runs under 5000 steps
    pytorch_bf16      the baseline under bf16 autocast + channels_last, eager: the best plain-PyTorch setting
                      on this CPU without a compile (peer)
    pytorch_compiled  the baseline under torch.compile (peer)
    pytorch_best      the baseline under torch.compile + bf16 autocast + channels_last (peer)

test_training_step_unet times the same step with SSL4MIS's UNet as G_IS (--generator unet) on the CPU:
no_fast, fast and pytorch_bf16.

Sizes: on the CPU the CPU preset (ngf 16, 3 blocks, ndf 32, 64x64, batch 8 + 8, K = 5); on a GPU the
paper's networks (ngf 64, 9 blocks, ndf 64) at 256x256, batch 8 + 8, K = 21. Batches are random uint8
images and masks already on the device (the loader is benchmarked in bench_data.py). The first steps
(compilation included) are not timed; their time is recorded as warm-up. Each timed step ends with a
device synchronisation. Every variant starts from the same weights and first batch, and records its
first step's loss terms, so the report shows that they compute the same model.
"""
import dataclasses
import time

import pytest
import torch

from cycleseg import ops
from cycleseg.assemble import make_step
from cycleseg.config import Config
from cycleseg.data.h5format import Meta
from cycleseg.fastpath import Plan, plan_for
from cycleseg.models import networks_from_config, use_ops
from common import DEVICE, device_name, sync

if DEVICE == "cuda":
    CFG = Config(device="cuda", preset="paper", image_size=256, batch_size=8).resolved()
    K = 21
    VARIANTS = ["no_fast", "fast", "fast_eager", "pytorch_compiled", "pytorch_best"]
else:
    CFG = Config(device="cpu").resolved()
    K = 5
    VARIANTS = ["no_fast", "fast", "pytorch_bf16", "fast_compiled", "pytorch_compiled", "pytorch_best"]
UNET_CFG = Config(device="cpu", generator="unet").resolved()
UNET_VARIANTS = ["no_fast", "fast", "pytorch_bf16"]
WARMUP, ROUNDS = 3, 10


def plan_of(variant: str, cfg=CFG) -> Plan:
    fast = plan_for(cfg, DEVICE)
    return {"no_fast": Plan(), "fast": fast, "fast_eager": dataclasses.replace(fast, compile=False, why=""),
            "fast_compiled": dataclasses.replace(fast, compile=True, why=""),
            "pytorch_bf16": Plan(autocast="bfloat16", channels_last=True),
            "pytorch_compiled": Plan(compile=True),
            "pytorch_best": Plan(compile=True, autocast="bfloat16", channels_last=True)}[variant]


def batches(n=4):
    g = torch.Generator().manual_seed(0)
    b, s = CFG.batch_size, CFG.image_size
    return [{"images": torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8).to(DEVICE),
             "masks": torch.randint(0, K, (b, s, s), generator=g, dtype=torch.uint8).to(DEVICE),
             "unlabeled": torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8).to(DEVICE)}
            for _ in range(n)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_step(benchmark, variant):
    time_step(benchmark, variant, CFG, f"semi step, {'paper' if DEVICE == 'cuda' else 'cpu'} networks")


@pytest.mark.skipif(DEVICE == "cuda", reason="the UNet step is timed on the CPU")
@pytest.mark.parametrize("variant", UNET_VARIANTS)
def test_training_step_unet(benchmark, variant):
    time_step(benchmark, variant, UNET_CFG, "semi step, UNet G_IS (SSL4MIS's), cpu networks")


def time_step(benchmark, variant, cfg, what):
    plan = plan_of(variant, cfg)
    benchmark.group = (f"{what}, {cfg.image_size}x{cfg.image_size}, batch {cfg.batch_size} + {cfg.batch_size}, "
                       f"K = {K}")
    meta = Meta(num_classes=K, class_names=[str(i) for i in range(K)], palette=[[0, 0, 0]] * K, channels=3)
    torch._dynamo.reset()
    torch.manual_seed(0)
    nets = networks_from_config(cfg, meta)
    for net in nets.values():
        use_ops(net.to(DEVICE), plan.ops())
        if plan.channels_last:
            net.to(memory_format=torch.channels_last)
    step = make_step(cfg, nets, meta, plan)
    data = batches()
    it = iter(range(10 ** 9))

    def one():
        step(data[next(it) % len(data)])
        sync()

    with ops.validation(False):
        t0 = time.perf_counter()
        first = {k: v.float().item() for k, v in step(data[0]).items()}   # same init and batch in every variant
        for _ in range(WARMUP - 1):
            one()
        warmup = time.perf_counter() - t0
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        benchmark.pedantic(one, rounds=ROUNDS, iterations=1)
    step_ms = benchmark.stats.stats.median * 1e3
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if DEVICE == "cuda" else None
    benchmark.extra_info.update(device=device_name(), torch=torch.__version__, plan=plan.describe(),
                                step_ms=step_ms, images_per_s=2 * cfg.batch_size / (step_ms / 1e3),
                                peak_gib=peak, warmup_s=warmup, first_step_terms=first)
