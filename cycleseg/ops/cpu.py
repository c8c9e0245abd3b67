"""The C++ CPU kernels (csrc/), compiled with torch.utils.cpp_extension on first use and cached in
torch's extension folder (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions): about a minute
once per machine and torch version, then a fast import. Loading the extension registers its kernels
as the CPU kernels of the cycleseg:: ops (TORCH_LIBRARY_IMPL in csrc/module.cpp).

Until it is loaded, each op's CompositeExplicitAutograd kernel (below) stands in: for CPU tensors it
builds and loads the extension, then calls the op again, which the dispatcher now sends to the C++
kernel; other devices without a kernel of their own get a clear error. No compiler -> a RuntimeError
saying so; nothing falls back silently.
"""
from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

import torch

from ..kernels import common
from .library import KERNELS, lib, op

SOURCES = ["module.cpp", "softmax_cross_entropy.cpp", "instance_norm_relu.cpp", "lsgan_loss.cpp"]


def csrc_dir() -> Path:
    """The C++ sources: cycleseg/csrc in an installed package, csrc/ beside the package in a checkout."""
    package = Path(__file__).resolve().parents[1]
    for d in (package / "csrc", package.parent / "csrc"):
        if (d / SOURCES[0]).exists():
            return d
    return package / "csrc"


CSRC = csrc_dir()


# Built for this machine's CPU (-march=native: AVX2 / AVX-512 vector loops). -O2 with the dynamic cost
# model vectorises the kernels' loops (plain -O2 in GCC 12 refuses loops of unknown length);
# -fno-trapping-math lets the float exp's float->int conversion vectorise (no NaN or rounding change).
# Not -O3: GCC 12 with -O3 -march=native miscompiled the fp64 instance-norm backward (the tests caught it).
FLAGS = ["-O2", "-fvect-cost-model=dynamic", "-fno-trapping-math", "-march=native", "-fopenmp"]


def cpu_tag() -> str:
    """A short hash of the sources, CPU model and flags: a build is never loaded for another CPU or
    after the sources changed."""
    info = platform.machine() + " ".join(FLAGS)
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(ln for ln in f if ln.startswith(("model name", "flags")))[:4096]
    except OSError:
        pass
    for s in SOURCES + ["common.h"]:
        p = CSRC / s
        info += p.read_text() if p.exists() else ""
    return hashlib.sha1(info.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension, loaded (built on the first call); its kernels are then registered."""
    # Heavy (imports the compiler tooling) and needed once: imported here rather than with the package.
    from torch.utils import cpp_extension

    missing = [s for s in SOURCES if not (CSRC / s).exists()]
    if missing:
        raise RuntimeError(f"cycleseg's C++ sources are missing from {CSRC} ({', '.join(missing)}); "
                           f"reinstall cycleseg (pip install cycleseg, or pip install -e . in its source tree)")
    try:
        ext = cpp_extension.load(
            name=f"cycleseg_cpu_{cpu_tag()}", sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:
        raise RuntimeError(
            f"could not build cycleseg's C++ CPU kernels from {CSRC}: {e}\n"
            f"They need a C++17 compiler and ninja (pip install ninja). Use --no-fast to train "
            f"without them.") from e
    ext.set_poison_outputs(common.poisoning())
    return ext


def loaded() -> bool:
    return extension.cache_info().currsize > 0


def _stand_in(name: str):
    """The CompositeExplicitAutograd kernel of op `name`: loads the C++ kernels on its first CPU call."""
    def run(*args):
        device = args[0].device
        if device.type != "cpu":
            raise RuntimeError(f"cycleseg::{name} has no kernel for {device} tensors (CPU: C++, CUDA: Triton)")
        extension()
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cycleseg::{name}", "CPU"):
            raise RuntimeError(f"cycleseg's C++ extension loaded without a CPU kernel for {name}")
        return op(name)(*args)
    run.__name__ = f"{name}_load_cpu"
    return run


for _name in KERNELS:
    lib.impl(_name, _stand_in(_name), "CompositeExplicitAutograd")
