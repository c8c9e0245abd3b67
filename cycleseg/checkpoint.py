"""Checkpoints: torch.save'd dicts written atomically (fileio), so a run killed at any moment leaves
either the previous checkpoint or the new one."""
from __future__ import annotations

from pathlib import Path

import torch

from .fileio import atomic_write_bytes


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
        raise RuntimeError(f"checkpoint {path} could not be read ({e}); it may be from another version") from e
