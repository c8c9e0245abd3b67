"""The C++ CPU kernels (csrc/), compiled with torch.utils.cpp_extension on first use and cached in
torch's extension folder (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions): about a minute
once per machine and torch version, then a fast import. No compiler -> a RuntimeError saying so;
nothing falls back silently (train with `--ops reference` to run without the kernels)."""
from __future__ import annotations

import functools
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ["module.cpp", "softmax_cross_entropy.cpp", "instance_norm_relu.cpp", "lsgan_loss.cpp"]


# Built for this machine's CPU (-march=native: AVX2 / AVX-512 vector loops). -O2 with the dynamic cost
# model vectorises the kernels' loops (plain -O2 in GCC 12 refuses loops of unknown length);
# -fno-trapping-math lets the float exp's float->int conversion vectorise (no NaN or rounding change).
# Not -O3: GCC 12 with -O3 -march=native miscompiled the fp64 instance-norm backward here (the tests caught it).
FLAGS = ["-O2", "-fvect-cost-model=dynamic", "-fno-trapping-math", "-march=native", "-fopenmp"]


def cpu_tag() -> str:
    """A short hash of the CPU model and flags: a build cached for one CPU is never loaded on another."""
    import hashlib
    import platform

    info = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(ln for ln in f if ln.startswith(("model name", "flags")))[:4096]
    except OSError:
        pass
    return hashlib.sha1(info.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled module (built on the first call)."""
    from torch.utils import cpp_extension

    missing = [s for s in SOURCES if not (CSRC / s).exists()]
    if missing:
        raise RuntimeError(f"cycleseg's C++ sources are missing from {CSRC} ({', '.join(missing)}); "
                           f"install cycleseg from its source tree (pip install -e .)")
    try:
        return cpp_extension.load(
            name=f"cycleseg_cpu_{cpu_tag()}", sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:
        raise RuntimeError(
            f"could not build cycleseg's C++ CPU kernels from {CSRC}: {e}\n"
            f"They need a C++17 compiler and ninja (pip install ninja). Use --ops reference to train "
            f"without them.") from e
