"""How a fused op registers itself, from its own module (cycleseg/ops/<op>.py), and the registry of the
ops that did.

An op module calls `define(name, schema, launcher)` for its forward and its backward dispatcher op
(namespace `cycleseg::`): the schema is defined, the Triton launcher (kernels/<op>.py, imported on the
first CUDA call, as Triton is optional) becomes the CUDA kernel, and a stand-in that builds and loads
the C++ extension becomes the CPU kernel until csrc/<op>.cpp's own registration (TORCH_LIBRARY_IMPL)
takes over. The module then registers its fake implementations and autograd formula, holds the public
functions, and ends with `register(FusedOp(...))`. Benchmarks, the compile gate, the roofline and the
tests iterate REGISTRY; no other file lists the ops.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from . import cpu, cuda

lib = torch.library.Library("cycleseg", "DEF")
LAUNCHERS: dict[str, Callable[[], Callable]] = {}     # dispatcher op -> its Triton launcher (resolved lazily)
REGISTRY: dict[str, FusedOp] = {}                     # op name -> what its module registered


@dataclasses.dataclass(frozen=True)
class FusedOp:
    """One fused op as its module declares it. `name` names its files: cycleseg/ops/<name>.py,
    kernels/<name>.py, csrc/<name>.cpp, tests/test_<name>.py, benchmarks/bench_<name>.py."""
    name: str
    functions: tuple[Callable, ...]                   # the public functions (cycleseg.ops.<function>)
    dispatcher_ops: tuple[str, ...]                   # the cycleseg:: ops it defines (forward, backward)
    triton: Callable[[], object]                      # kernels/<name>.py as a module (imports Triton)
    exercise: Callable[..., None]                     # (n, h, w, dtype, memory_format, device): every
                                                      # variant of the op, forward and backward
    roofline: Callable[[dict, set], tuple[float, float]]   # (call, kernels run) -> (floor, design) bytes
    floors: str                                       # the roofline's floor, in words


def define(name: str, schema: str, launcher: Callable[[], Callable]):
    """Define cycleseg::<name> with `schema`; its CUDA kernel is launcher() (a Triton launcher), its CPU
    kernel the C++ one (csrc/). Returns the op's OpOverload."""
    lib.define(name + schema)
    LAUNCHERS[name] = launcher
    lib.impl(name, cuda.kernel(name, launcher), "CUDA")
    lib.impl(name, cpu.stand_in(name), "CompositeExplicitAutograd")
    return op(name)


def register(fused: FusedOp) -> FusedOp:
    if fused.name in REGISTRY:
        raise RuntimeError(f"fused op {fused.name} registered twice")
    missing = [n for n in fused.dispatcher_ops if n not in LAUNCHERS]
    if missing:
        raise RuntimeError(f"fused op {fused.name} registers dispatcher ops it did not define: {missing}")
    REGISTRY[fused.name] = fused
    return fused


def owner(dispatcher_op: str) -> FusedOp:
    """The registered op that defines the dispatcher op (its `_backward` too)."""
    for fused in REGISTRY.values():
        if dispatcher_op in fused.dispatcher_ops or dispatcher_op + "_backward" in fused.dispatcher_ops:
            return fused
    raise KeyError(f"no registered fused op defines cycleseg::{dispatcher_op}")


def op(name: str):
    """The OpOverload torch.ops.cycleseg.<name>.default."""
    return getattr(torch.ops.cycleseg, name).default
