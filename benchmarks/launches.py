"""The Triton launches of the real training step, captured on a machine without a GPU.

A step of each method runs in FakeTensorMode on the CPU with the plan a GPU run gets (fastpath.plan_for
with device cuda: fused ops, merged calls, fused Adam, channels_last, bf16 autocast or fp32; eager: a
compiled step hands the ops the tensors it traced them with). Fake tensors carry shapes, strides and
dtypes but no data, so the paper's networks at 256x256 take about a second. Every cycleseg:: op the
dispatcher reaches is handed to the launcher of its CUDA kernel (cycleseg.ops.registry.LAUNCHERS), whose
Triton kernels record their arguments instead of launching. Every registered op is also captured alone
at an odd size (63x65): its `exercise`, every variant (reduction, weight, slope, ...).

A record holds what a launch's specialisation depends on: the kernel, each argument (tensors as their
dtype and whether the pointer is 16-byte aligned, modelled as a CUDA allocation: blocks 512-byte
aligned, views offset by storage_offset), the constexprs and num_warps, and where it came from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from cycleseg import ops
from cycleseg.assemble import make_step, networks_of
from cycleseg.config import Config
from cycleseg.data.h5format import Meta
from cycleseg.fastpath import plan_for
from cycleseg.kernels import common
from cycleseg.models import use_ops
from cycleseg.ops import cuda
from cycleseg.ops.registry import LAUNCHERS

H200_SMS = 132
MODES = ("semi", "partial", "adversarial")
PRECISIONS = ("bf16", "fp32")
LAYOUTS = ("channels_last", "nchw")
# (name, config fields, classes): the anchor (paper networks, 256x256, batch 8 + 8, K = 21), an odd size
# (25x25 planes in the residual blocks, batch 3) and the CPU preset run on a GPU (K = 5).
SIZES = (("anchor", dict(preset="paper", image_size=256, batch_size=8), 21),
         ("odd", dict(preset="paper", image_size=100, batch_size=3), 21),
         ("cpu-preset", dict(preset="cpu"), 5))
DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16", torch.float64: "fp64",
          torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64"}


def layout_of(t: torch.Tensor) -> str:
    if t.dim() != 4 or t.shape[1] == 1:
        return "dense" if t.is_contiguous() else "strided"
    if t.is_contiguous():
        return "nchw"
    return "channels_last" if t.is_contiguous(memory_format=torch.channels_last) else "strided"


def encode(v):
    """A launch argument as JSON."""
    if isinstance(v, torch.Tensor):
        offset = v.storage_offset() * v.element_size()
        return {"tensor": DTYPES[v.dtype], "aligned": offset % 16 == 0}
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if type(v).__module__.startswith("triton"):                     # a tl.dtype constexpr
        return {"tl": str(v)}
    raise TypeError(f"cannot record a launch argument of type {type(v).__name__}")


class _Recorder:
    """Patches Triton's JITFunction.run: each launch is recorded (with the op it serves), none runs."""

    def __init__(self):
        self.records, self.context, self.calls = [], {}, []

    def run(self, fn, *args, grid, warmup, **kwargs):
        self.records.append({"kernel": f"{fn.fn.__module__}:{fn.fn.__name__}", "args": [encode(a) for a in args],
                             "kwargs": {k: encode(v) for k, v in kwargs.items()}, **self.context})


class _ToLaunchers(TorchDispatchMode):
    """Sends every cycleseg:: op to its CUDA kernel's launcher (the other ops to fake tensors)."""

    def __init__(self, recorder: _Recorder, where: str):
        super().__init__()
        self.recorder, self.where = recorder, where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace != "cycleseg":
            return func(*args, **(kwargs or {}))
        name = func._opname
        first = next(a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0)
        x = args[1] if name.endswith("_backward") and len(args) > 1 else first
        self.recorder.context = {"op": name.removesuffix("_backward"), "pass": "bwd" if name.endswith("_backward")
                                 else "fwd", "dtype": DTYPES[x.dtype], "layout": layout_of(x), "where": self.where,
                                 "call": len(self.recorder.calls)}
        self.recorder.calls.append({**self.recorder.context, "shapes": [list(a.shape) for a in args
                                                                          if isinstance(a, torch.Tensor)]})
        return cuda.resolve(name, LAUNCHERS[name])(*args, **(kwargs or {}))


@contextlib.contextmanager
def capturing():
    """Within the block: launches are recorded, not run; launchers see an H200's SM count; counters made
    for fake tensors are dropped after it. Yields the recorder."""
    from triton.runtime.jit import JITFunction

    rec = _Recorder()
    modules = [fused.triton() for fused in ops.REGISTRY.values()]
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(JITFunction, "run", lambda self, *a, **k: rec.run(self, *a, **k)))
        stack.enter_context(mock.patch.dict(common._counters))
        for m in modules:
            if hasattr(m, "sm_count"):
                stack.enter_context(mock.patch.object(m, "sm_count", lambda device: H200_SMS))
        yield rec


def _fake_batch(b: int, s: int, k: int):
    images = torch.empty((b, 3, s, s), dtype=torch.uint8)
    return {"images": images, "masks": torch.empty((b, s, s), dtype=torch.uint8),
            "unlabeled": torch.empty_like(images)}


def capture_step(rec: _Recorder, mode: str, precision: str, layout: str, size) -> None:
    """One training step of `mode` with the GPU plan, in fake tensors."""
    name, fields, k = size
    # the config is resolved for this (GPU-less) machine; the plan is the one a CUDA device gets
    cfg = Config(mode=mode, device="cpu", precision=precision, compile="off", **fields).resolved()
    plan = plan_for(cfg, "cuda")
    plan = dataclasses.replace(plan, channels_last=layout == "channels_last")
    meta = Meta(num_classes=k, class_names=[str(i) for i in range(k)], palette=[[0, 0, 0]] * k, channels=3)
    with torch.device("meta"):
        nets = networks_of(cfg, meta)
        if plan.channels_last:
            nets = {n: v.to(memory_format=torch.channels_last) for n, v in nets.items()}
    with FakeTensorMode(allow_non_fake_inputs=True):
        nets = {n: use_ops(v.to_empty(device="cpu"), plan.ops()) for n, v in nets.items()}
        step = make_step(cfg, nets, meta, plan)
        where = f"{mode} step, {name} {cfg.image_size}x{cfg.image_size}, batch {cfg.batch_size}, K = {k}"
        with _ToLaunchers(rec, where), ops.validation(False):
            step(_fake_batch(cfg.batch_size, cfg.image_size, k))


def capture_ops(rec: _Recorder, h: int = 63, w: int = 65) -> None:
    """Each registered op alone at an odd size, every variant it exercises, each dtype and layout."""
    for dtype, layout in itertools.product((torch.bfloat16, torch.float32), LAYOUTS):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        with FakeTensorMode(), _ToLaunchers(rec, f"ops alone, {h}x{w}"), ops.validation(False):
            for fused in ops.REGISTRY.values():
                fused.exercise(3, h, w, dtype, fmt, "cpu")


def capture_all(sizes=SIZES) -> list[dict]:
    """Every launch of every configuration: steps of each mode, precision, layout and size, then the ops
    alone."""
    with capturing() as rec:
        for mode, precision, layout, size in itertools.product(MODES, PRECISIONS, LAYOUTS, sizes):
            capture_step(rec, mode, precision, layout, size)
        capture_ops(rec)
    return rec.records


if __name__ == "__main__":
    records = capture_all()
    print(json.dumps(records[:3], indent=1))
    print(len(records), "launches")
