"""What a run does when something goes wrong while it trains.

    FiniteGuard    records, on the device (no host sync), the first step at which each loss term was NaN
                   or Inf; checked at every log step and before every checkpoint, so a diverged run stops
                   with the step and the term, and no checkpoint of a diverged model is ever written
    StopSignals    Ctrl-C (SIGINT) and SIGTERM (a cluster scheduler's notice) ask the loop to stop after
                   the current step (under torchrun: at the next log step, on every process); the loop
                   then saves last.pt and says how to resume; a second Ctrl-C (a second or more after the
                   first: not the same one passed on again) stops at once
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch

from .usage import STOP_SIGNALS


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or Inf."""


class Interrupted(RuntimeError):
    """A stop signal arrived; the run saved its checkpoint. `signum` and `step` say which and when."""

    def __init__(self, signum: int, step: int, message: str):
        super().__init__(message)
        self.signum, self.step = signum, step


class FiniteGuard:
    def __init__(self):
        self.names, self.first = None, None

    def update(self, terms: dict, step: int) -> None:
        """Note the terms of step `step` (device ops only)."""
        if self.first is None:
            self.names = sorted(terms)
            self.first = torch.full((len(self.names),), -1, dtype=torch.int64, device=terms[self.names[0]].device)
        values = torch.stack([terms[k].detach().float() for k in self.names])
        bad = ~torch.isfinite(values) & (self.first < 0)
        self.first = torch.where(bad, step, self.first)

    def check(self, last=None) -> None:
        """NonFiniteLoss naming the first bad step and its terms, and how to go on from the checkpoint
        `last` (a path) if there is one (a host sync)."""
        if self.first is None:
            return
        first = self.first.tolist()
        bad = [(s, k) for s, k in zip(first, self.names) if s >= 0]
        if bad:
            step = min(s for s, _ in bad)
            names = ", ".join(k for s, k in bad if s == step)
            if last is not None and Path(last).exists():
                how = (f"{last} holds the last good state: continue from it with a lower rate, e.g. "
                       f"--resume --lr <half the current one> (a resumed run may change --lr and --steps)")
            else:
                how = "no checkpoint was written before it: start again with a lower --lr (in another --out)"
            raise NonFiniteLoss(f"step {step}: the loss term {names} is NaN or infinite; training stopped and no "
                                f"checkpoint of the diverged model was written. {how}, or check the data.")


class StopSignals:
    """`with StopSignals() as stop:` ... `if stop.signum:` ... (handlers restored on exit; no-op off the
    main thread, where Python cannot install signal handlers)."""

    received: int | None = None     # the last signal any of them took (a child, a compiler, saw it too)

    SAME_STOP_S = 1.0     # signals this close to the first are that stop delivered again, not a second Ctrl-C

    def __init__(self, signals=STOP_SIGNALS):
        self.signals, self.signum, self._old, self._first = signals, None, {}, 0.0

    def _handle(self, signum, frame):
        """The first stop signal asks for a stop after the step; a Ctrl-C a second or more after it stops at
        once. One Ctrl-C can arrive several times within milliseconds (GNU `timeout` passes it to its process
        group again, a grid forwards it as SIGTERM): those copies are the same stop."""
        now = time.monotonic()
        if self.signum is None:
            self._first = now
        elif signum == signal.SIGINT and now - self._first >= self.SAME_STOP_S:    # a second Ctrl-C
            raise KeyboardInterrupt
        self.signum = StopSignals.received = signum

    def __enter__(self):
        StopSignals.received = None
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc):
        StopSignals.received = None
        for s, h in self._old.items():
            signal.signal(s, h)
