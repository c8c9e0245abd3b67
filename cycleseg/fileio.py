"""Atomic file writes: every file a run or a converter produces is written to a temporary file in the
same folder, fsynced, then renamed over the old one, so a process killed at any moment leaves either
the previous file or the new one, never a partial file."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


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


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def append_jsonl(path, record: dict) -> None:
    """One JSON line appended (a killed run leaves at most a torn last line, dropped on resume)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a run killed while writing it) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
