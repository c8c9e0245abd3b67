"""The C++ CPU kernels (csrc/), compiled with torch.utils.cpp_extension on first use and cached in
torch's extension folder (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions): about a minute
once per machine and torch version, then a fast import. No compiler -> a RuntimeError saying so;
nothing falls back silently (train with `--ops reference` to run without the kernels)."""
from __future__ import annotations

import functools
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SOURCES = ["module.cpp", "softmax_cross_entropy.cpp", "instance_norm_relu.cpp", "lsgan_loss.cpp"]


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
            name="cycleseg_cpu", sources=[str(CSRC / s) for s in SOURCES],
            # No -march=native: the build stays portable across CPUs sharing one cache, and GCC 12 with
            # -O3 -march=native (AVX-512) miscompiled the fp64 instance-norm backward (caught by the tests).
            extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:
        raise RuntimeError(
            f"could not build cycleseg's C++ CPU kernels from {CSRC}: {e}\n"
            f"They need a C++17 compiler and ninja (pip install ninja). Use --ops reference to train "
            f"without them.") from e
