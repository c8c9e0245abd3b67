"""cycleseg.ops.instance_norm_relu: fused relu(instance_norm(x)) (affine=False, biased variance) as a
custom op; forward saves x, mean and rstd (not y, not a mask), backward is its own custom op."""
from __future__ import annotations

import torch
from torch import Tensor

from .backend import acc_dtype, impl, like


@torch.library.custom_op("cycleseg::instance_norm_relu", mutates_args=())
def _fwd(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = impl("instance_norm_relu", x).instance_norm_relu_fwd(x, eps)
    return like(y, x), mean, rstd


@_fwd.register_fake
def _(x, eps):
    n, c = x.shape[:2]
    return torch.empty_like(x), x.new_empty((n, c), dtype=acc_dtype(x)), x.new_empty((n, c), dtype=acc_dtype(x))


@torch.library.custom_op("cycleseg::instance_norm_relu_backward", mutates_args=())
def _bwd(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    return like(impl("instance_norm_relu", x).instance_norm_relu_bwd(grad, x, mean, rstd), x)


@_bwd.register_fake
def _(grad, x, mean, rstd):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1], output[2])


def _backward(ctx, grad_y, grad_mean, grad_rstd):
    x, mean, rstd = ctx.saved_tensors
    return _bwd(grad_y, x, mean, rstd), None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def instance_norm_relu(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Fused relu(F.instance_norm(x, eps=eps)) for a (N, C, H, W) floating tensor."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"instance_norm_relu expects a (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"instance_norm_relu expects a floating tensor, got {x.dtype}")
    if x.shape[2] * x.shape[3] == 0 or x.numel() == 0:
        raise ValueError(f"instance_norm_relu: empty input of shape {tuple(x.shape)}")
    return _fwd(x, float(eps))[0]
