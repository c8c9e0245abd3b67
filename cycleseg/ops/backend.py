"""Which implementation runs a fused op: Triton for CUDA tensors; for CPU tensors the C++ kernels, or
the Triton kernels through the interpreter (set_cpu_backend("triton"), needs TRITON_INTERPRET=1 set
before cycleseg.kernels is imported; the tests use it to run the real kernel logic on the CPU)."""
from __future__ import annotations

import importlib
import os

import torch

from .cpu import extension

_cpu_backend = "cpp"


def set_cpu_backend(name: str) -> None:
    global _cpu_backend
    if name not in ("cpp", "triton"):
        raise ValueError(f"CPU backend must be 'cpp' or 'triton', got {name!r}")
    if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 "
                           "(set it before importing cycleseg.kernels)")
    _cpu_backend = name


def cpu_backend() -> str:
    return _cpu_backend


def triton_kernels(op: str):
    """The module of Triton kernels of `op` (kernels/<op>.py), or a clear error without Triton."""
    try:
        return importlib.import_module(f"cycleseg.kernels.{op}")
    except ImportError as e:
        raise RuntimeError(f"the fused op {op} needs Triton for CUDA tensors ({e}); pip install triton, "
                           f"or train with --ops reference") from e


def impl(op: str, x: torch.Tensor):
    """The module whose <op>_fwd / <op>_bwd functions run this call (same signatures in both)."""
    if x.is_cuda or (x.device.type == "cpu" and _cpu_backend == "triton"):
        return triton_kernels(op)
    if x.device.type != "cpu":
        raise ValueError(f"{op}: no kernel for device {x.device}")
    return extension()


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The kernels' accumulation dtype for x: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def like(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`out` in the memory format of `ref` (the C++ kernels compute on contiguous NCHW)."""
    if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out
