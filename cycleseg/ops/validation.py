"""Value checks at the public boundary of the fused ops (eager mode only; each is a host sync).

On by default; `with ops.validation(False):` turns them off for a block (the training loop does, its
masks having been checked when the data was loaded) and restores the previous setting after it, so
nothing leaks into the next run, test or benchmark. Under torch.compile the checks are skipped."""
from __future__ import annotations

from .scoped import scoped

_state = {"enabled": True}


def validation(enabled: bool):
    """`with ops.validation(False):` skips the value checks inside the block."""
    return scoped(_state, "enabled", bool(enabled))


def validation_enabled() -> bool:
    return _state["enabled"]
