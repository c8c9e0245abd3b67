"""cycleseg.ops.instance_norm_relu: fused leaky_relu(instance_norm(x), negative_slope) (affine=False,
biased variance). negative_slope 0 is ReLU (the default), 1 is the plain instance norm
(`instance_norm`), 0.2 the discriminators' LeakyReLU. C++: csrc/instance_norm_relu.cpp, Triton:
kernels/instance_norm_relu.py. The forward op returns y, mean and rstd; autograd
saves x, mean and rstd (not y, not a mask) for the backward op."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels.common import acc_dtype
from .registry import FusedOp, define, register


def triton():
    # kernels/instance_norm_relu.py imports Triton (optional): loaded on the first CUDA call
    from ..kernels import instance_norm_relu as kernels
    return kernels


_fwd = define("instance_norm_relu", "(Tensor x, float eps, float negative_slope) -> (Tensor y, Tensor mean, Tensor rstd)",
              lambda: triton().instance_norm_relu_fwd)
_bwd = define("instance_norm_relu_backward", "(Tensor grad, Tensor x, Tensor mean, Tensor rstd, float negative_slope) "
              "-> Tensor", lambda: triton().instance_norm_relu_bwd)


@torch.library.register_fake("cycleseg::instance_norm_relu")
def _(x, eps, negative_slope):
    n, c = x.shape[:2]
    acc = acc_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc)


@torch.library.register_fake("cycleseg::instance_norm_relu_backward")
def _(grad, x, mean, rstd, negative_slope):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1], output[2])
    ctx.negative_slope = inputs[2]


def _backward(ctx, grad_y, grad_mean, grad_rstd):
    x, mean, rstd = ctx.saved_tensors
    return _bwd(grad_y, x, mean, rstd, ctx.negative_slope), None, None


torch.library.register_autograd("cycleseg::instance_norm_relu", _backward, setup_context=_setup_context)


def instance_norm_relu(x: Tensor, eps: float = 1e-5, negative_slope: float = 0.0) -> Tensor:
    """Fused F.leaky_relu(F.instance_norm(x, eps=eps), negative_slope) for a (N, C, H, W) floating
    tensor (negative_slope 0: relu)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"instance_norm_relu expects a (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"instance_norm_relu expects a floating tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"instance_norm_relu: empty input of shape {tuple(x.shape)}")
    return _fwd(x, float(eps), float(negative_slope))[0]


def instance_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Fused F.instance_norm(x, eps=eps) (affine=False): the same op with no activation."""
    return instance_norm_relu(x, eps, negative_slope=1.0)


def exercise(n: int, h: int, w: int, dtype, memory_format, device) -> None:
    """ReLU, the discriminators' LeakyReLU and no activation, forward and backward, on a (n, 24, h, w)
    tensor (benchmarks/launches.py, tests)."""
    x = torch.randn((n, 24, h, w), dtype=dtype, device=device).contiguous(memory_format=memory_format).requires_grad_()
    for slope in (0.0, 0.2, 1.0):
        instance_norm_relu(x, 1e-5, slope).sum().backward()


def roofline(call: dict, kernels: set) -> tuple[float, float]:
    """(floor, design) bytes of one call: the plane kernels move the floor, the tiled ones read x again."""
    s = {"bf16": 2, "fp32": 4, "fp16": 2, "fp64": 8}[call["dtype"]]
    numel = math.prod(call["shapes"][0] if call["pass"] == "fwd" else call["shapes"][1])
    tiles = any(k.startswith("_tiles") for k in kernels)
    if call["pass"] == "fwd":
        return 2 * s * numel, (3 if tiles else 2) * s * numel
    return 3 * s * numel, (5 if tiles else 3) * s * numel


register(FusedOp("instance_norm_relu", (instance_norm_relu, instance_norm),
                 ("instance_norm_relu", "instance_norm_relu_backward"), triton, exercise, roofline,
                 "fwd reads x, writes y: 2 s; bwd reads x and dy, writes dx: 3 s (design: plane = floor, "
                 "tiles fwd 3 s, bwd 5 s)"))
