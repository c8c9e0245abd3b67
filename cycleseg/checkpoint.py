"""Checkpoints: torch.save'd dicts written atomically (fileio), so a run killed at any moment leaves
either the previous checkpoint or the new one.

A run's checkpoint holds: step, best_miou, config (the resolved Config as a dict), plan, data (what
the networks were built for: classes, channels, names, palette, size), nets, optimizers, schedulers,
pools, streams and RNG states. `load_run` checks that a file is one before anything uses it.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .fileio import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and what is wrong with it."""


def save(path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load(path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded with weights_only=True: tensors, numbers, strings and containers
    only, so a file from elsewhere cannot run code when opened (ours hold nothing else: the config as a
    dict, RNG states as tensors or tuples of ints)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):
            raise CheckpointError(f"{path}: could not be read as a checkpoint (not a torch checkpoint, or "
                                  f"corrupt: {str(e).splitlines()[-1].strip() or 'unpickling failed'})") from e
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors, numbers, strings and "
                              f"containers, which could run code when loaded; cycleseg checkpoints never do "
                              f"({str(e).splitlines()[0]})") from e
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
