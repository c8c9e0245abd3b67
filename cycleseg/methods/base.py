"""What a method is to the rest of cycleseg: a registry entry made in its own module.

A method module (cycleseg/methods/<method>.py) holds its step (a steps.Step subclass), its options (a
dataclass of options.option fields, embedded in the run's Config under the method's name, its flags
prefixed by PREFIX) and one or more Method entries (Partial and Full share a step). Adding a method =
its objective (objective.py), its module, its tests, and its import in methods/__init__.py; a method with
options also needs its options field on Config (config.py, where `semi`, `meanteacher`, ... are embedded)
and the import of its options class there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RunFacts:
    """What a step needs of the run beyond its options: the run's length and seed, the discriminators' norm."""
    steps: int
    seed: int
    disc_norm: str = "instance"


@dataclass(frozen=True)
class Method:
    mode: str                               # --mode
    label: str                              # its name in tables and figures
    summary: str                            # one line of --mode's help
    step: type                              # its step class: .networks, .streams
    build: Callable                         # (nets, common step arguments, options or None, RunFacts) -> step
    options: type | None = None             # its options dataclass (Config.<mode>)
    colour: str = "#5a5a5a"                 # its line in the figures
    all_labels: bool = False                # trains on every label (Full)
    min_side: int = 8                       # the smallest image side its networks read (the generators' reflect pads)
