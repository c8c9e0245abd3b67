"""What the Triton launchers share: the accumulation dtype, output buffers, last-program counters and
facts about the device. Depends on torch only (no Triton, nothing of cycleseg), so that cycleseg.ops can
import acc_dtype on machines without Triton."""
from __future__ import annotations

import torch

_state = {"poison": False}
_counters: dict = {}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of every fused op (both backends): fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dtype(dtype: torch.dtype):
    """The Triton dtype of a torch floating dtype (the kernels' ACC constexpr)."""
    import triton.language as tl

    return {torch.float64: tl.float64, torch.float32: tl.float32}[dtype]


def poison_outputs(enabled: bool) -> bool:
    """Outputs allocated from now on start NaN-filled (tests: a kernel must write every element it
    returns). Returns the previous setting."""
    before, _state["poison"] = _state["poison"], bool(enabled)
    return before


def poisoning() -> bool:
    return _state["poison"]


def empty(shape, dtype, device) -> torch.Tensor:
    if _state["poison"]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def empty_like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """Same shape and memory format (strides) as x."""
    out = torch.empty_like(x, dtype=dtype)
    return out.fill_(float("nan")) if _state["poison"] else out


def counter(device: torch.device) -> torch.Tensor:
    """A zeroed int32 counter for the last-program reductions (kernels/reduction.py) of launches on this
    device and its current stream. The program that finishes last resets it to 0, so one launch needs
    no memset; launches on one stream run in order, so no two launches use a counter at the same time."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    if key not in _counters:
        _counters[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _counters[key]


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def flat_pixels(h: int, w: int, sh: int, sw: int) -> bool:
    """True when pixel p = (p // W, p % W) sits at p * sw (NCHW- and NHWC-contiguous planes): the kernels
    then index pixels linearly (no division per element; contiguous when sw == 1)."""
    return h == 1 or sh == w * sw


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; on the CPU (the interpreter) a small fixed number."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
