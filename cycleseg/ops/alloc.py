"""Every output buffer of the fused ops is allocated here, by both backends (the Triton launchers and the
C++ adapters), so that a test can hand out NaN-filled memory and check that a kernel writes every
element it returns (`with alloc.poisoned():`)."""
from __future__ import annotations

import torch

from .scoped import scoped

_state = {"poison": False}


def empty(shape, dtype, device) -> torch.Tensor:
    if _state["poison"]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def empty_like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """Same shape and memory format (strides) as x."""
    out = torch.empty_like(x, dtype=dtype)
    if _state["poison"]:
        out.fill_(float("nan"))
    return out


def poisoned():
    """Within the block, every output buffer starts NaN-filled (tests only: it costs a fill per output)."""
    return scoped(_state, "poison", True)
