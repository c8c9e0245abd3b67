"""Checkpoints: torch.save'd dicts written atomically (fileio), so a run killed at any moment leaves
either the previous checkpoint or the new one.

A run's checkpoint holds: step, best_miou, config (the resolved Config as a dict), plan, data (what
the networks were built for: classes, channels, names, palette, size), nets, optimizers, schedulers,
pools, streams and RNG states. `load_run` checks that a file is one before anything uses it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .fileio import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and what is wrong with it."""


def save(path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # Our checkpoints hold RNG states and the config as plain Python objects.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: could not be read as a checkpoint ({type(e).__name__}: {e}); the file is "
                              f"corrupt, truncated or not a torch checkpoint") from e


def load_run(path, map_location="cpu") -> dict:
    """A cycleseg run checkpoint (last.pt / best.pt), checked for the parts every reader needs."""
    state = load(path, map_location)
    if not isinstance(state, dict) or not {"config", "nets"} <= set(state):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a cycleseg checkpoint (expected 'config' and 'nets', found {found})")
    if "G_IS" not in state["nets"]:
        raise CheckpointError(f"{path}: not a cycleseg checkpoint (no G_IS among its networks {sorted(state['nets'])})")
    return state
