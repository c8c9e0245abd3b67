"""cycleseg.ops.softmax_cross_entropy: the fused pixelwise softmax cross-entropy (C++:
csrc/softmax_cross_entropy.cpp, Triton: kernels/softmax_cross_entropy.py).

Exactly reference.softmax_cross_entropy (= F.cross_entropy on (N, K, H, W)), except that the 'mean' and
'sum' losses come back in the accumulation dtype (fp32 for bf16 logits, as F.cross_entropy under
autocast). The forward op also returns the mean's divisor (a device scalar) and each pixel's
log-sum-exp (fp32), which the backward op reads instead of recomputing the softmax's statistics.

Targets outside [0, K) that are not ignore_index raise ValueError in eager mode (a host sync: the
training loop validates masks at load time and turns it off with `ops.validation(False)`). Under
torch.compile the check is skipped and such pixels give NaN; no kernel reads out of bounds.
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor

from .. import reference
from ..kernels.common import acc_dtype
from .registry import FusedOp, define, register
from .validation import validation_enabled


def triton():
    # kernels/softmax_cross_entropy.py imports Triton (optional): loaded on the first CUDA call
    from ..kernels import softmax_cross_entropy as kernels
    return kernels


_fwd = define("softmax_cross_entropy", "(Tensor logits, Tensor target, Tensor? weight, int ignore_index, str reduction) "
              "-> (Tensor loss, Tensor denom, Tensor lse)", lambda: triton().softmax_cross_entropy_fwd)
_bwd = define("softmax_cross_entropy_backward", "(Tensor grad, Tensor logits, Tensor target, Tensor? weight, "
              "Tensor denom, Tensor lse, int ignore_index, str reduction) -> Tensor",
              lambda: triton().softmax_cross_entropy_bwd)


@torch.library.register_fake("cycleseg::softmax_cross_entropy")
def _(logits, target, weight, ignore_index, reduction):
    n, _, h, w = logits.shape
    acc = acc_dtype(logits.dtype)
    loss = logits.new_empty((n, h, w)) if reduction == "none" else logits.new_empty((), dtype=acc)
    return loss, logits.new_empty((), dtype=acc), logits.new_empty((n, h, w), dtype=acc)


@torch.library.register_fake("cycleseg::softmax_cross_entropy_backward")
def _(grad, logits, target, weight, denom, lse, ignore_index, reduction):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, reduction = inputs
    ctx.save_for_backward(logits, target, weight, output[1], output[2])
    ctx.ignore_index, ctx.reduction = ignore_index, reduction


def _backward(ctx, grad_loss, grad_denom, grad_lse):
    logits, target, weight, denom, lse = ctx.saved_tensors
    return _bwd(grad_loss, logits, target, weight, denom, lse, ctx.ignore_index, ctx.reduction), None, None, None, None


torch.library.register_autograd("cycleseg::softmax_cross_entropy", _backward, setup_context=_setup_context)


def check_target_values(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """ValueError naming the first target outside [0, K) that is not ignore_index (a host sync)."""
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bad.any():
        n, h, w = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"target[{n}, {h}, {w}] = {int(target[n, h, w])} is not a class id in [0, {num_classes}) "
                         f"nor ignore_index ({ignore_index})")


def softmax_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                          reduction: str = "mean") -> Tensor:
    """Fused F.cross_entropy for (N, K, H, W) logits and (N, H, W) uint8/int32/int64 targets."""
    reference.check_cross_entropy_args(logits, target, weight, reduction)
    if validation_enabled() and not torch.compiler.is_compiling():
        check_target_values(target, logits.shape[1], ignore_index)
    return _fwd(logits, target, weight, int(ignore_index), reduction)[0]


def exercise(n: int, h: int, w: int, dtype, memory_format, device) -> None:
    """Every reduction, with and without class weights, forward and backward, on (n, 21, h, w) logits
    (VOC's classes) with 255 as ignore_index (benchmarks/launches.py, tests)."""
    k = 21
    x = torch.randn((n, k, h, w), dtype=dtype, device=device).contiguous(memory_format=memory_format).requires_grad_()
    t = torch.randint(0, k, (n, h, w), device=device).to(torch.uint8)
    for reduction, weight in itertools.product(("mean", "sum", "none"), (None, torch.rand(k, device=device))):
        softmax_cross_entropy(x, t, weight, 255, reduction).sum().backward()


def roofline(call: dict, kernels: set) -> tuple[float, float]:
    """(floor, design) bytes of one call (K classes, s bytes a value)."""
    s = {"bf16": 2, "fp32": 4, "fp16": 2, "fp64": 8}[call["dtype"]]
    n, k, h, w = call["shapes"][0] if call["pass"] == "fwd" else call["shapes"][1]
    px = n * h * w
    return (px * (k * s + 1), px * (k * s + 5)) if call["pass"] == "fwd" else (px * k * s, px * (2 * k * s + 5))


register(FusedOp("softmax_cross_entropy", (softmax_cross_entropy,),
                 ("softmax_cross_entropy", "softmax_cross_entropy_backward"), triton, exercise, roofline,
                 "fwd reads logits and target: K s + 1; bwd writes the gradient: K s (design: fwd K s + 5 with "
                 "the saved log-sum-exp, bwd 2 K s + 5)"))
