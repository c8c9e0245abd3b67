"""Shared pieces of the op benchmarks: the variants, device-time measurement, the bytes floor.

Variants of every op, always against PyTorch's own op (cycleseg.native), never the clarity reference:
    eager      PyTorch's op (F.cross_entropy, F.relu(F.instance_norm(x)), ((d - a) ** 2).mean())
    compiled   torch.compile(fullgraph=True) of that op
    fused      cycleseg's fused op (Triton on CUDA, C++ on the CPU)

Time: on CUDA, CUDA events through triton.testing.do_bench (L2 flushed between repetitions, >= 50
repetitions, median), which includes the host's dispatch when it is slower than the device (small ops);
and the device time alone, by replaying a CUDA graph of 10 calls (`graph_ms`; None where a call cannot
be captured); on the CPU, the median of host-timed repetitions. Inputs and the upstream
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
    return host_ms(fn, reps)


def host_ms(fn, reps: int = 50, warmup: int = 2) -> float:
    """Median host time of fn() in ms over `reps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_ms(fn, calls: int = 10, replays: int = 20) -> tuple[float | None, str | None]:
    """Device time of one fn() on CUDA with the host out of the way: `calls` calls captured in one CUDA
    graph (after warm-up on a side stream, as capture requires; errors of this thread only), the graph
    replayed `replays` times between events, the median per call. Inputs stay in L2 between calls where
    they fit (60 MB on an H200). Returns (ms, None), or (None, why) on the CPU or where fn cannot be
    captured; a failed capture leaves the CUDA generator as a finished one would (the next random
    tensor would otherwise fail with "Offset increment outside graph capture")."""
    if DEVICE != "cuda":
        return None, "not CUDA"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
        return statistics.median(times), None
    except Exception as e:                                          # noqa: BLE001 -- not capturable: no figure
        why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        try:
            torch.cuda.synchronize()
        except Exception:                                           # noqa: BLE001
            pass
        reset = torch.cuda.CUDAGraph()                              # a capture that ends resets the generator
        with torch.cuda.graph(reset):
            torch.zeros(1, device="cuda").add_(1)
        return None, why


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
    graph, why = graph_ms(run)
    benchmark.extra_info.update(graph_ms=graph, graph_error=why)
