"""cycleseg.ops.lsgan_loss / lsgan_disc_loss: the least-squares GAN losses (C++: csrc/lsgan_loss.cpp,
Triton: kernels/lsgan_loss.py).

lsgan_loss(d, a) = mean((d - a)^2); lsgan_disc_loss(d_real, d_fake) = 0.5 (mean((d_real - 1)^2) +
mean(d_fake^2)) in one op for the discriminator step. The loss is in the accumulation dtype (fp32 for
bf16 scores, as F.mse_loss under autocast). Bytes are negligible; time is launch overhead."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels.common import acc_dtype
from .registry import FusedOp, define, register


def triton():
    # kernels/lsgan_loss.py imports Triton (optional): loaded on the first CUDA call
    from ..kernels import lsgan_loss as kernels
    return kernels


_fwd = define("lsgan_loss", "(Tensor d, float target) -> Tensor", lambda: triton().lsgan_loss_fwd)
_bwd = define("lsgan_loss_backward", "(Tensor grad, Tensor d, float target) -> Tensor",
              lambda: triton().lsgan_loss_bwd)
_disc_fwd = define("lsgan_disc_loss", "(Tensor d_real, Tensor d_fake) -> Tensor", lambda: triton().lsgan_disc_loss_fwd)
_disc_bwd = define("lsgan_disc_loss_backward", "(Tensor grad, Tensor d_real, Tensor d_fake) -> (Tensor, Tensor)",
                   lambda: triton().lsgan_disc_loss_bwd)


@torch.library.register_fake("cycleseg::lsgan_loss")
def _(d, target):
    return d.new_empty((), dtype=acc_dtype(d.dtype))


@torch.library.register_fake("cycleseg::lsgan_loss_backward")
def _(grad, d, target):
    return torch.empty_like(d)


@torch.library.register_fake("cycleseg::lsgan_disc_loss")
def _(d_real, d_fake):
    return d_real.new_empty((), dtype=acc_dtype(d_real.dtype))


@torch.library.register_fake("cycleseg::lsgan_disc_loss_backward")
def _(grad, d_real, d_fake):
    return torch.empty_like(d_real), torch.empty_like(d_fake)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.target = inputs[1]


def _backward(ctx, grad):
    (d,) = ctx.saved_tensors
    return _bwd(grad, d, ctx.target), None


def _disc_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _disc_backward(ctx, grad):
    d_real, d_fake = ctx.saved_tensors
    return _disc_bwd(grad, d_real, d_fake)


torch.library.register_autograd("cycleseg::lsgan_loss", _backward, setup_context=_setup)
torch.library.register_autograd("cycleseg::lsgan_disc_loss", _disc_backward, setup_context=_disc_setup)


def _scores(name: str, d) -> Tensor:
    """A score map checked and made contiguous (a no-op for the (N, 1, H, W) maps of a discriminator)."""
    if not isinstance(d, Tensor) or not d.is_floating_point() or d.numel() == 0:
        raise ValueError(f"{name} expects a non-empty floating tensor of scores, got "
                         f"{(d.dtype, tuple(d.shape)) if isinstance(d, Tensor) else type(d).__name__}")
    return d if d.is_contiguous() else d.contiguous()


def lsgan_loss(d: Tensor, target: float) -> Tensor:
    """mean((d - target)^2) over every element of the score map d."""
    return _fwd(_scores("lsgan_loss", d), float(target))


def lsgan_disc_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """0.5 * (mean((d_real - 1)^2) + mean(d_fake^2)), the discriminator step's loss."""
    d_real, d_fake = _scores("lsgan_disc_loss (d_real)", d_real), _scores("lsgan_disc_loss (d_fake)", d_fake)
    if d_real.device != d_fake.device or d_real.dtype != d_fake.dtype:
        raise ValueError(f"lsgan_disc_loss: d_real ({d_real.dtype}, {d_real.device}) and d_fake "
                         f"({d_fake.dtype}, {d_fake.device}) must share dtype and device")
    return _disc_fwd(d_real, d_fake)


def exercise(n: int, h: int, w: int, dtype, memory_format, device) -> None:
    """Both losses, forward and backward, on (n, 1, h, w) score maps (benchmarks/launches.py, tests)."""
    d = torch.randn((n, 1, h, w), dtype=dtype, device=device, requires_grad=True)
    (lsgan_loss(d, 1.0) + lsgan_disc_loss(d, d[:1])).backward()


def roofline(call: dict, kernels: set) -> tuple[float, float]:
    """(floor, design) bytes of one call: the floor is the design (the partials are a few KB)."""
    s = {"bf16": 2, "fp32": 4, "fp16": 2, "fp64": 8}[call["dtype"]]
    numel = sum(math.prod(x) for x in (call["shapes"] if call["pass"] == "fwd" else call["shapes"][1:]))
    return (s * numel,) * 2 if call["pass"] == "fwd" else (2 * s * numel,) * 2


register(FusedOp("lsgan_loss", (lsgan_loss, lsgan_disc_loss),
                 ("lsgan_loss", "lsgan_loss_backward", "lsgan_disc_loss", "lsgan_disc_loss_backward"),
                 triton, exercise, roofline,
                 "fwd reads the scores: s; bwd reads them, writes the gradient: 2 s (design = floor)"))
