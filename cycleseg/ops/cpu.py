"""The C++ CPU kernels (csrc/), compiled with torch.utils.cpp_extension on first use and cached in
torch's extension folder (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions): about a minute
once per machine and torch version, then a fast import. No compiler -> a RuntimeError saying so;
nothing falls back silently.

The functions below are the CPU twins of the Triton launchers in kernels/ (same names, arguments and
results); they allocate the outputs (alloc.py) and run the C++ kernels on contiguous NCHW tensors.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from . import alloc

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
# Not -O3: GCC 12 with -O3 -march=native miscompiled the fp64 instance-norm backward here (the tests caught it).
FLAGS = ["-O2", "-fvect-cost-model=dynamic", "-fno-trapping-math", "-march=native", "-fopenmp"]


def cpu_tag() -> str:
    """A short hash of the sources, CPU model and flags: a build is never loaded for another CPU or
    after the sources changed."""
    import hashlib
    import platform

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
    """The compiled module (built on the first call)."""
    from torch.utils import cpp_extension

    missing = [s for s in SOURCES if not (CSRC / s).exists()]
    if missing:
        raise RuntimeError(f"cycleseg's C++ sources are missing from {CSRC} ({', '.join(missing)}); "
                           f"reinstall cycleseg (pip install cycleseg, or pip install -e . in its source tree)")
    try:
        return cpp_extension.load(
            name=f"cycleseg_cpu_{cpu_tag()}", sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:
        raise RuntimeError(
            f"could not build cycleseg's C++ CPU kernels from {CSRC}: {e}\n"
            f"They need a C++17 compiler and ninja (pip install ninja). Use --no-fast to train "
            f"without them.") from e


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _like(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`out` (contiguous NCHW) in the memory format of `ref` (a copy for channels_last inputs)."""
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


# -- softmax_cross_entropy ----------------------------------------------------------------------------

def softmax_cross_entropy_fwd(logits, target, weight, ignore_index: int, reduction: str):
    x = logits.contiguous()
    n, _, h, w = x.shape
    out = alloc.empty((n, h, w) if reduction == "none" else (), x.dtype, x.device)
    denom = alloc.empty((), _acc(x), x.device)
    extension().softmax_cross_entropy_fwd(x, target.contiguous(), weight, ignore_index, reduction, out, denom)
    return out, denom


def softmax_cross_entropy_bwd(grad, logits, target, weight, denom, ignore_index: int, reduction: str):
    x = logits.contiguous()
    dx = alloc.empty(x.shape, x.dtype, x.device)
    extension().softmax_cross_entropy_bwd(grad, x, target.contiguous(), weight, denom, ignore_index, reduction, dx)
    return _like(dx, logits)


# -- instance_norm_relu -------------------------------------------------------------------------------

def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when NCHW- or channels_last-contiguous (the C++ kernels read both), else an NCHW copy."""
    return t if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) else t.contiguous()


def instance_norm_relu_fwd(x, eps: float, slope: float = 0.0):
    xd = _dense(x)
    n, c = x.shape[:2]
    y = alloc.empty_like(xd)
    mean, rstd = (alloc.empty((n, c), _acc(x), x.device) for _ in range(2))
    extension().instance_norm_relu_fwd(xd, eps, slope, y, mean, rstd)
    return y, mean, rstd


def instance_norm_relu_bwd(grad, x, mean, rstd, slope: float = 0.0):
    xd = _dense(x)
    cl = not xd.is_contiguous()
    g = grad.to(xd.dtype).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    dx = alloc.empty_like(xd)
    extension().instance_norm_relu_bwd(g, xd, mean, rstd, slope, dx)
    return dx


# -- lsgan_loss ---------------------------------------------------------------------------------------

def lsgan_loss_fwd(d, target: float):
    out = alloc.empty((), d.dtype, d.device)
    return out.fill_(extension().lsgan_loss_fwd(d.contiguous(), target))


def _lsgan_grad(grad, d, target: float, coef: float):
    dc = d.contiguous()
    dd = alloc.empty(dc.shape, dc.dtype, dc.device)
    extension().lsgan_loss_bwd(grad, dc, target, coef, dd)
    return dd


def lsgan_loss_bwd(grad, d, target: float):
    return _lsgan_grad(grad, d, target, 1.0)


def lsgan_disc_loss_fwd(d_real, d_fake):
    ext = extension()
    out = alloc.empty((), d_real.dtype, d_real.device)
    return out.fill_(0.5 * (ext.lsgan_loss_fwd(d_real.contiguous(), 1.0) + ext.lsgan_loss_fwd(d_fake.contiguous(), 0.0)))


def lsgan_disc_loss_bwd(grad, d_real, d_fake):
    return _lsgan_grad(grad, d_real, 1.0, 0.5), _lsgan_grad(grad, d_fake, 0.0, 0.5)
