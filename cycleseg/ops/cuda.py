"""The Triton launchers (kernels/) as the CUDA kernels of the cycleseg:: ops. Each runs under its input's
device: Triton launches on the current device and stream, so a tensor on cuda:1 while cuda:0 is current
would otherwise run on the wrong device."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


def resolve(name: str, launcher: Callable[[], Callable]) -> Callable:
    """launcher() (which imports kernels/<op>.py, hence Triton), or a clear error without Triton."""
    try:
        return launcher()
    except ImportError as e:
        raise RuntimeError(f"the fused op {name} needs Triton for CUDA tensors ({e}); pip install triton, "
                           f"or train with --no-fast") from e


def device_guard(x: torch.Tensor):
    """x's device made the current CUDA device for the block (nothing for CPU tensors)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def kernel(name: str, launcher: Callable[[], Callable]):
    """The dispatcher's kernel for op `name`: its Triton launcher under the first input's device."""
    resolved = []

    def run(*args):
        if not resolved:
            resolved.append(resolve(name, launcher))
        with device_guard(args[0]):
            return resolved[0](*args)
    run.__name__ = f"{name}_triton"
    return run
