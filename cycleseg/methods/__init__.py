"""The methods: each in its own module (step, options, registry entries); METHODS maps --mode to its entry
(methods/base.Method). The order here is the order of --mode's choices and of the tables."""
from __future__ import annotations

from . import adversarial, cyclegan, fixmatch, meanteacher, supervised
from .base import Method, RunFacts

METHODS: dict[str, Method] = {m.mode: m for module in (supervised, cyclegan, meanteacher, fixmatch, adversarial)
                              for m in module.METHODS}
MODES = tuple(METHODS)

__all__ = ["METHODS", "MODES", "Method", "RunFacts"]
