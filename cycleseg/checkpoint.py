"""Atomic checkpoints: written to a temporary file in the same folder, fsynced, then renamed over
the old one, so a run killed at any moment leaves either the previous checkpoint or the new one."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path next to `path`; when the block succeeds, rename it to `path`. On any error
    the temp file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, write_fn) -> None:
    """Call write_fn(file_object) on a temp file next to `path`, fsync it, then rename it to `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())


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
