"""The Triton launchers (kernels/) as the CUDA kernels of the cycleseg:: ops. Each runs under its input's
device: Triton launches on the current device and stream, so a tensor on cuda:1 while cuda:0 is current
would otherwise run on the wrong device."""
from __future__ import annotations

import contextlib
import functools
import importlib

import torch

from .library import KERNELS, lib


@functools.lru_cache(maxsize=None)
def launcher(name: str):
    """The Triton launcher of op `name` (kernels/<module>.py), or a clear error without Triton."""
    module, function = KERNELS[name]
    try:
        return getattr(importlib.import_module(f"cycleseg.kernels.{module}"), function)
    except ImportError as e:
        raise RuntimeError(f"the fused op {name} needs Triton for CUDA tensors ({e}); pip install triton, "
                           f"or train with --no-fast") from e


def device_guard(x: torch.Tensor):
    """x's device made the current CUDA device for the block (nothing for CPU tensors)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def kernel(name: str):
    """The dispatcher's kernel for op `name`: its Triton launcher under the first input's device."""
    def run(*args):
        with device_guard(args[0]):
            return launcher(name)(*args)
    run.__name__ = f"{name}_triton"
    return run


for _name in KERNELS:
    lib.impl(_name, kernel(_name), "CUDA")
