"""Shared pieces of the op benchmarks: the variants, device-time measurement, the bytes floor.

Variants of every op, always against PyTorch's own op (cycleseg.native), never the clarity reference:
    eager      PyTorch's op (F.cross_entropy, F.relu(F.instance_norm(x)), ((d - a) ** 2).mean())
    compiled   torch.compile(fullgraph=True) of that op
    fused      cycleseg's fused op (Triton on CUDA, C++ on the CPU)

Time: on CUDA, CUDA events through triton.testing.do_bench (L2 flushed between repetitions, >= 50
repetitions, median); on the CPU, the median of host-timed repetitions. Inputs and the upstream
gradient are allocated outside the timed region. GB/s counts the floor's bytes (each input read once,
each output written once); "% copy" divides it by the same device's copy bandwidth, measured in the
same session (bytes read + written by a large tensor copy).
"""
from __future__ import annotations

import functools
import os
import statistics
import time

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VARIANTS = ["eager", "compiled", "fused"]
# CYCLESEG_BENCH_QUICK=1 (the GPU check): fwd+bwd only and fewer shapes, to fit one device call.
QUICK = os.environ.get("CYCLESEG_BENCH_QUICK") == "1"
PASSES = ["fwd_bwd"] if QUICK else ["fwd", "fwd_bwd"]
DTYPES = [torch.float32, torch.bfloat16]


def variant_fn(variant: str, native_fn, fused_fn):
    if variant == "fused":
        return fused_fn
    if variant == "compiled":
        torch._dynamo.reset()
        return torch.compile(native_fn, fullgraph=True)
    return native_fn


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def device_name() -> str:
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {torch.get_num_threads()} threads"


def median_ms(fn, reps: int = 50) -> float:
    """Median time of fn() in ms: device time on CUDA, host time on the CPU (after warm-up)."""
    if DEVICE == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=max(100, reps), return_mode="median"))
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gbs() -> float:
    """The device's copy bandwidth, GB/s counting bytes read plus bytes written (a 1 GiB copy on CUDA,
    256 MiB on the CPU)."""
    n = (2 ** 30 if DEVICE == "cuda" else 2 ** 28) // 4
    x = torch.randn(n, device=DEVICE)
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), reps=20)
    return 2 * x.numel() * 4 / (ms / 1e3) / 1e9


def bench(benchmark, fn, inputs: list, pass_: str, bytes_floor: int):
    """Time fn(*inputs) (fwd, no grad) or fn(*inputs) + backward (fwd_bwd, upstream gradient of ones
    allocated once); record the median, GB/s at the floor's bytes and the device's copy bandwidth."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                fn(*inputs)
    else:
        out = fn(*inputs)
        upstream = torch.ones_like(out)

        def run():
            fn(*inputs).backward(upstream)
            for x in leaves:
                x.grad = None
    run()                                                           # compile / first launch outside timing
    sync()
    ms = median_ms(run)
    benchmark.pedantic(lambda: (run(), sync()), rounds=3, iterations=1)  # the harness's own (host) record
    benchmark.extra_info.update(device=device_name(), median_ms=ms, bytes=bytes_floor,
                                copy_gbs=copy_bandwidth_gbs(), torch=torch.__version__)
