"""Settings of the ops layer that hold for a `with` block and are restored after it, so that nothing a
run, a test or a benchmark sets leaks into the next one."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def scoped(state: dict, key: str, value):
    before = state[key]
    state[key] = value
    try:
        yield
    finally:
        state[key] = before
