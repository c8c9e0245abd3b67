"""Switches for the ops' tests and benchmarks, each scoped to a `with` block (nothing leaks into the next
test or run):

    with ops.cpu_backend("triton"):   CPU tensors run the Triton launchers, through the interpreter
                                      (TRITON_INTERPRET=1 set before cycleseg.kernels is imported): the
                                      real kernel logic, tested on a machine without a GPU
    with ops.poisoned():              every output buffer starts NaN-filled, so a kernel must write
                                      every element it returns (both backends)
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

from ..kernels import common
from . import cpu, cuda
from .registry import LAUNCHERS

CPU_BACKENDS = ("cpp", "triton")


@contextlib.contextmanager
def cpu_backend(name: str):
    """Within the block, CPU tensors run the named backend: "cpp" (the dispatcher's CPU kernels, the
    default) or "triton" (the CUDA kernels' launchers, registered for CPU over the C++ ones and
    unregistered after the block)."""
    if name not in CPU_BACKENDS:
        raise ValueError(f"CPU backend must be one of {CPU_BACKENDS}, got {name!r}")
    if name == "cpp":
        yield
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 "
                           "(set it before importing cycleseg.kernels)")
    lib = torch.library.Library("cycleseg", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for name_, launcher in LAUNCHERS.items():
            lib.impl(name_, cuda.kernel(name_, launcher), "CPU", allow_override=True)
    try:
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def poisoned():
    """Within the block, every output buffer of the fused ops starts NaN-filled (tests only: a fill per
    output)."""
    before = common.poison_outputs(True)
    if cpu.loaded():
        cpu.extension().set_poison_outputs(True)
    try:
        yield
    finally:
        common.poison_outputs(before)
        if cpu.loaded():
            cpu.extension().set_poison_outputs(before)
