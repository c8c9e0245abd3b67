"""PyTorch's own ops under the names of cycleseg.ops: what a user writes without this project, and the
eager baseline of `--no-fast` and of every speed ratio the project reports.

    softmax_cross_entropy  F.cross_entropy
    lsgan_loss             ((d - a) ** 2).mean()
    instance_norm_relu     F.relu / F.leaky_relu of F.instance_norm

(cycleseg.reference computes the same functions written out for clarity: it is the tests' oracle.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_cross_entropy(logits, target, weight=None, ignore_index: int = -100, reduction: str = "mean"):
    return F.cross_entropy(logits, target.long(), weight, ignore_index=ignore_index, reduction=reduction)


def lsgan_loss(d: torch.Tensor, target: float) -> torch.Tensor:
    return ((d - target) ** 2).mean()


def lsgan_disc_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (lsgan_loss(d_real, 1.0) + lsgan_loss(d_fake, 0.0))


def instance_norm_relu(x: torch.Tensor, eps: float = 1e-5, negative_slope: float = 0.0) -> torch.Tensor:
    y = F.instance_norm(x, eps=eps)
    return F.relu(y) if negative_slope == 0.0 else F.leaky_relu(y, negative_slope)


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.instance_norm(x, eps=eps)
