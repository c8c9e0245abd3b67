"""Which implementation runs a fused op: Triton for CUDA tensors; for CPU tensors the C++ kernels, or
the Triton kernels through the interpreter (`with ops.cpu_backend("triton"):`, needs TRITON_INTERPRET=1
set before cycleseg.kernels is imported; the tests use it to run the real kernel logic on the CPU)."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from . import cpu
from .scoped import scoped

_state = {"cpu_backend": "cpp"}
CPU_BACKENDS = ("cpp", "triton")


def cpu_backend(name: str):
    """Within the block, CPU tensors run the named backend: "cpp" (the default) or "triton" (interpreted)."""
    if name not in CPU_BACKENDS:
        raise ValueError(f"CPU backend must be one of {CPU_BACKENDS}, got {name!r}")
    if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 "
                           "(set it before importing cycleseg.kernels)")
    return scoped(_state, "cpu_backend", name)


def current_cpu_backend() -> str:
    return _state["cpu_backend"]


SOURCE_KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def _load_source_kernels() -> None:
    """Register a source checkout's kernels/ folder as cycleseg.kernels (when the package was not
    installed, e.g. run from the repository root with an editable install that another pip made)."""
    spec = importlib.util.spec_from_file_location(
        "cycleseg.kernels", SOURCE_KERNELS / "__init__.py", submodule_search_locations=[str(SOURCE_KERNELS)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["cycleseg.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["cycleseg.kernels"]
        raise


def triton_kernels(op: str):
    """The module of Triton kernels of `op` (kernels/<op>.py), or a clear error without Triton."""
    try:
        try:
            return importlib.import_module(f"cycleseg.kernels.{op}")
        except ModuleNotFoundError as e:
            if e.name != "cycleseg.kernels" or not (SOURCE_KERNELS / "__init__.py").exists():
                raise
            _load_source_kernels()
            return importlib.import_module(f"cycleseg.kernels.{op}")
    except ImportError as e:
        raise RuntimeError(f"the fused op {op} needs Triton for CUDA tensors ({e}); pip install triton, "
                           f"or train with --no-fast") from e


def impl(op: str, x: torch.Tensor):
    """The module whose <op>_fwd / <op>_bwd launchers run this call: kernels/<op>.py (Triton) or
    cycleseg/ops/cpu.py (C++); same names, arguments and results."""
    if x.is_cuda or (x.device.type == "cpu" and _state["cpu_backend"] == "triton"):
        return triton_kernels(op)
    if x.device.type != "cpu":
        raise ValueError(f"{op}: no kernel for device {x.device}")
    return cpu


def device_guard(x: torch.Tensor):
    """A context that makes x's device the current CUDA device (so Triton launches there, on that
    device's current stream) for CUDA tensors; nothing for CPU tensors."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The kernels' accumulation dtype for x: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
