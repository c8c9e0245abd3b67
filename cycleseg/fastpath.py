"""The fast path: what a training step runs with, chosen per device (and printed at the start of a run).

    --fast (default)   cycleseg's fused ops for every IN (+ ReLU / LeakyReLU), both cross-entropies and
                       every LSGAN term; one G_IS call for its three inputs and one call per
                       discriminator for real + fake; fused Adam; channels_last; bf16 autocast (fp32
                       master weights and reductions) on GPUs and on CPUs with native bf16 (AVX512-BF16,
                       AMX); torch.compile of both updates on a GPU when the run is long enough
    --no-fast          the eager baseline a user would write without this project: the same networks and
                       objective with PyTorch's own ops (cycleseg.native), fp32, NCHW, a call per input,
                       the default Adam

torch.compile is chosen on a GPU when the run is long enough to win back its compile time (a few
hundred steps). On the CPU it is not chosen: the compiled fast step measured slower than the eager one
(benchmarks/RESULTS.md). `--compile on|off` overrides the choice. A resumed run keeps the plan it
started with.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from . import native, ops
from .models import use_ops

# Steps from which torch.compile pays for itself (compile time over the time it saves per step); None:
# never (on the CPU the compiled fast step measured slower).
COMPILE_MIN_STEPS = {"cpu": None, "cuda": 300}


@dataclass(frozen=True)
class Plan:
    fused_ops: bool = False         # cycleseg.ops (fused kernels) instead of cycleseg.native
    merge_passes: bool = False      # one network call for inputs that can share it
    fused_adam: bool = False
    compile: bool = False           # torch.compile of the generator and discriminator losses (fwd + bwd)
    autocast: str | None = None     # "bfloat16": autocast on CUDA; weights and reductions stay fp32
    channels_last: bool = False
    compile_backend: str = "inductor"   # tests trace with "aot_eager" (no code generation)
    why: str = ""

    def ops(self):
        """The ops module the networks and objective call: cycleseg.ops (fused) or cycleseg.native."""
        return ops if self.fused_ops else native

    def describe(self, adam: bool = True) -> str:
        """One line for the run's log; adam: whether the run has an Adam optimizer (its fused kernel is then
        named; an SGD-only run has none)."""
        if not self.fused_ops:
            extras = [f"{self.autocast} autocast" if self.autocast else None,
                      "channels_last" if self.channels_last else None, "torch.compile" if self.compile else None]
            extras = [e for e in extras if e]
            if not extras:
                return "eager baseline (--no-fast): PyTorch's own ops, fp32, NCHW"
            return "PyTorch's own ops with " + ", ".join(extras)
        parts = ["fused ops", "merged network calls" if self.merge_passes else None,
                 "fused Adam" if self.fused_adam and adam else None, f"{self.autocast} autocast" if self.autocast else None,
                 "channels_last" if self.channels_last else None,
                 "torch.compile" if self.compile else "no torch.compile"]
        return "fast path: " + ", ".join(p for p in parts if p) + (f" ({self.why})" if self.why else "")

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Plan":
        """The plan a checkpoint recorded; ValueError naming a field of the wrong kind (a hand-edited file)."""
        if not isinstance(state, dict):
            raise ValueError(f"'plan' must be a dict, got {type(state).__name__}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in state.items() if k in fields}
        for k, v in kept.items():
            flag, optional = isinstance(fields[k], bool), k == "autocast"
            if not (isinstance(v, bool) if flag else isinstance(v, str) or (optional and v is None)):
                raise ValueError(f"the plan's {k} must be {'true or false' if flag else 'a string'}, got {v!r}")
        return cls(**kept)


def plan_for(cfg, device) -> Plan:
    """The plan of a run with config `cfg` (resolved) on `device`."""
    device = torch.device(device)
    if not cfg.fast:
        return Plan()
    cuda = device.type == "cuda"
    kind = "cuda" if cuda else "cpu"
    if cfg.compile == "auto":
        least = COMPILE_MIN_STEPS[kind]
        compile_ = least is not None and cfg.steps >= least
        why = ("on the cpu the compiled fast step measured no faster; --compile on forces it" if least is None else
               f"{cfg.steps} steps {'>=' if compile_ else '<'} {least}, from which compiling pays off on {kind}")
    else:
        compile_, why = cfg.compile == "on", f"--compile {cfg.compile}"
    bf16 = wants_bf16(device, cfg.precision)
    return Plan(fused_ops=True, merge_passes=True, fused_adam=True, compile=compile_,
                autocast="bfloat16" if bf16 else None, channels_last=True, why=why)


PRECISIONS = ("auto", "fp32", "bf16")     # --precision of training, evaluate and predict


def wants_bf16(device, precision: str = "auto") -> bool:
    """Whether to run bf16 autocast on `device`: as `precision` says, or (auto) where the device runs bf16
    natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    return torch.cuda.is_bf16_supported() if torch.device(device).type == "cuda" else cpu_has_native_bf16()


def place(net, device, ops, channels_last: bool):
    """`net` on `device` (in place), its norms through `ops`, its weights channels_last if asked."""
    use_ops(net.to(device), ops)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 (or AMX): bf16 convolutions run several times faster than fp32 there
    (benchmarks/RESULTS.md); without it bf16 is emulated and slower, so the CPU fast path stays fp32."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def busy_cpu_note(load: float, threads: int, cores: int) -> str | None:
    """A hint when other processes keep the CPU busy (load: the 1-minute load average before training).
    OpenMP's threads then wait for cores that another process holds, and a step runs several times
    slower than with fewer threads (benchmarks/RESULTS.md). The thread count is not changed for the
    user: it changes the floating-point results of a run."""
    free = cores - load                  # a busy process counts ~1; background noise stays well under it
    if threads <= 1 or free >= threads - 0.9:
        return None
    fit = max(1, int(free + 0.1))
    return (f"note: the CPU is busy (load {load:.1f} on {cores} cores) and training uses {threads} threads; "
            f"steps can run several times slower. OMP_NUM_THREADS={fit} avoids that (results then differ "
            f"slightly from a {threads}-thread run).")


def cpu_load_note() -> str | None:
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    except OSError:
        return None
    return busy_cpu_note(load, torch.get_num_threads(), cores)
