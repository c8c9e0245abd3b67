"""cycleseg.ops.softmax_cross_entropy: the fused pixelwise softmax cross-entropy as a custom op.

Exactly reference.softmax_cross_entropy (= F.cross_entropy on (N, K, H, W)). Forward and backward are
separate custom ops with fake implementations and a registered autograd formula, so eager, autograd
and torch.compile(fullgraph=True) see one opaque op each way. The forward saves nothing but the
mean's divisor (a device scalar); the backward recomputes the softmax from the logits.

Targets outside [0, K) that are not ignore_index raise ValueError in eager mode (a host sync: the
training loop validates masks at load time and turns it off with `ops.validation(False)`). Under
torch.compile the check is skipped and such pixels give NaN; no kernel reads out of bounds.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import reference
from .backend import acc_dtype, device_guard, impl
from .validation import validation_enabled


@torch.library.custom_op("cycleseg::softmax_cross_entropy", mutates_args=())
def _fwd(logits: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
         reduction: str) -> tuple[Tensor, Tensor]:
    with device_guard(logits):
        return impl("softmax_cross_entropy", logits).softmax_cross_entropy_fwd(
            logits, target, weight, ignore_index, reduction)


@_fwd.register_fake
def _(logits, target, weight, ignore_index, reduction):
    n, _, h, w = logits.shape
    return logits.new_empty((n, h, w) if reduction == "none" else ()), logits.new_empty((), dtype=acc_dtype(logits))


@torch.library.custom_op("cycleseg::softmax_cross_entropy_backward", mutates_args=())
def _bwd(grad: Tensor, logits: Tensor, target: Tensor, weight: Optional[Tensor], denom: Tensor,
         ignore_index: int, reduction: str) -> Tensor:
    with device_guard(logits):
        return impl("softmax_cross_entropy", logits).softmax_cross_entropy_bwd(
            grad, logits, target, weight, denom, ignore_index, reduction)


@_bwd.register_fake
def _(grad, logits, target, weight, denom, ignore_index, reduction):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, reduction = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.ignore_index, ctx.reduction = ignore_index, reduction


def _backward(ctx, grad_loss, grad_denom):
    logits, target, weight, denom = ctx.saved_tensors
    return _bwd(grad_loss, logits, target, weight, denom, ctx.ignore_index, ctx.reduction), None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


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
    if not torch.compiler.is_compiling() and validation_enabled():
        check_target_values(target, logits.shape[1], ignore_index)
    return _fwd(logits, target, weight, int(ignore_index), reduction)[0]
