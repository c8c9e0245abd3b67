"""cycleseg.ops.softmax_cross_entropy: the fused pixelwise softmax cross-entropy.

Exactly reference.softmax_cross_entropy (= F.cross_entropy on (N, K, H, W)), except that the 'mean' and
'sum' losses come back in the accumulation dtype (fp32 for bf16 logits, as F.cross_entropy under
autocast). The forward op also returns the mean's divisor (a device scalar) and each pixel's
log-sum-exp (fp32), which the backward op reads instead of recomputing the softmax's statistics.

Targets outside [0, K) that are not ignore_index raise ValueError in eager mode (a host sync: the
training loop validates masks at load time and turns it off with `ops.validation(False)`). Under
torch.compile the check is skipped and such pixels give NaN; no kernel reads out of bounds.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..kernels.common import acc_dtype
from .library import op
from .validation import validation_enabled

_fwd = op("softmax_cross_entropy")
_bwd = op("softmax_cross_entropy_backward")


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
