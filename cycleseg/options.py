"""What an option of a run is, said once, beside it: `option(default, help, check=..., resume=...)` makes a
dataclass field whose metadata the command line (help, choices), the checks and a resumed run read.

    check    "fraction" [0, 1] | "below_one" [0, 1) | "non_negative" | "share" | "steps" | "crop_scale" |
             "width" | "blocks" | "batch" | "image_std" | "pool" | "prefetch" | "weight" | "rate" (bounded: a typo
             would ask for terabytes, overflow or diverge) | None
    resume   why a resumed run keeps the value (the default: "the method and its objective"), or
             CHANGEABLE (a resumed run may change it: the schedule is re-derived), or RUNTIME (it
             describes the process, not the run: always taken from the command line)

Each method's options are a dataclass of such fields beside its step (cycleseg/methods/<method>.py), with
the prefix of its flags (`--mt-consistency` is MeanTeacherOptions.consistency); the run's Config embeds
them (config.py).
"""
from __future__ import annotations

import dataclasses
import math
import numbers

from .usage import UsageError

CHANGEABLE, RUNTIME = "changeable", "runtime"
METHOD = "the method and its objective"
CHECKS = {
    "fraction": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "below_one": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "non_negative": (lambda v: v >= 0, ">= 0"),
    "share": (lambda v: 0.0 < v <= 100.0, "in (0, 100] (a share of --lr)"),
    "steps": (lambda v: 1 <= v <= 10 ** 9, "in 1..10^9 (a count of steps)"),
    "crop_scale": (lambda v: 1 <= v <= 16, "in [1, 16] (a crop of at least 1/16 of each side; beyond, under a pixel)"),
    "width": (lambda v: 1 <= v <= 1024, "in 1..1024 (channels; the paper's are 64)"),
    "blocks": (lambda v: 1 <= v <= 64, "in 1..64 (the paper's are 9)"),
    "batch": (lambda v: 1 <= v <= 4096, "in 1..4096"),
    "image_std": (lambda v: 0.0 <= v <= 2.0, "in [0, 2] (images span [-1, 1])"),
    "pool": (lambda v: 0 <= v <= 1000, "in 0..1000 (the paper's is 50; each fake kept costs an image's memory)"),
    "prefetch": (lambda v: 1 <= v <= 64, "in 1..64 (each batch prepared ahead costs a batch's memory)"),
    "weight": (lambda v: 0.0 <= v <= 1000.0, "in [0, 1000] (a loss weight; the paper's are at most 10)"),
    "rate": (lambda v: 0.0 < v <= 10.0, "in (0, 10] (a learning rate; the paper's is 2e-4)"),
}


def option(default=dataclasses.MISSING, help: str = "", *, check: str | None = None, resume: str = METHOD,
           choices: tuple | None = None, default_factory=dataclasses.MISSING):
    """A dataclass field with its help text, check, resume rule and choices as metadata."""
    if check is not None and check not in CHECKS:
        raise ValueError(f"unknown check {check!r}")
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help, "check": check, "resume": resume, "choices": choices})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def kind_of(value, kind: str) -> bool:
    """Whether `value` (from a command line, a checkpoint or a config.json edited by hand) is of the field's kind:
    an int for counts, an int or float for the rest, a bool for switches (a string "no" is true to Python)."""
    if kind == "bool" or isinstance(value, bool):
        return kind == "bool" and isinstance(value, bool)
    return isinstance(value, numbers.Integral) or (kind == "float" and isinstance(value, numbers.Real))


def check_fields(obj, prefix: str = "", names=None) -> None:
    """UsageError naming the first field of `obj` (or of its `names`; flags `<prefix><field>`) whose value is
    not finite, not among its choices or fails its check; None (a value still to come from a preset) passes."""
    for f in dataclasses.fields(obj):
        if names is not None and f.name not in names:
            continue
        value, name = getattr(obj, f.name), prefix + f.name.rstrip("_")
        if value is None or dataclasses.is_dataclass(value):
            continue
        kind = str(f.type).split(" ")[0]                            # "int | None" -> "int" (a recorded value's kind)
        if kind in ("int", "float", "bool") and not kind_of(value, kind):
            raise UsageError(f"{flag(name)} must be {KINDS[kind]}, got {value!r:.60}")
        if isinstance(value, float) and not math.isfinite(value):   # NaN passes every comparison
            raise UsageError(f"{flag(name)} must be a finite number, got {value}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UsageError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, got {value!r}")
        check = f.metadata.get("check")
        if check and not CHECKS[check][0](value):
            raise UsageError(f"{flag(name)} must be {CHECKS[check][1]}, got {value}")
