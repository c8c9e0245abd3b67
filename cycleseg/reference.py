"""Reference ops: the eager PyTorch specification that every fused kernel is tested against.

Three hot spots of the CycleGAN step, written for clarity, not speed:

    softmax_cross_entropy  pixelwise softmax cross-entropy, = F.cross_entropy on (N, K, H, W)
    lsgan_loss             least-squares GAN loss mean((d - a)^2), and its discriminator form
    instance_norm_relu     leaky_relu(instance_norm(x), slope) (slope 0: relu), affine=False, biased variance

Half-precision inputs are computed in fp32 and the result is cast back to the input dtype, which is
what the fused kernels do (fp32 accumulation whatever the input dtype).
"""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_cross_entropy_args(logits, target, weight, reduction) -> None:
    """Shape/dtype checks shared by the reference and the fused op (no host sync)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise ValueError(f"logits must be a (N, K, H, W) tensor, got {_describe(logits)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    n, k, h, w = logits.shape
    if k < 1:
        raise ValueError(f"logits need at least one class (K >= 1), got shape {tuple(logits.shape)}")
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != (n, h, w):
        raise ValueError(f"target must have shape {(n, h, w)} to match logits {tuple(logits.shape)}, "
                         f"got {_describe(target)}")
    if target.dtype not in (torch.uint8, torch.int32, torch.int64):
        raise TypeError(f"target must be uint8, int32 or int64, got {target.dtype}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (k,):
            raise ValueError(f"weight must be a ({k},) tensor, one weight per class, got {_describe(weight)}")
        if weight.device != logits.device:
            raise ValueError(f"weight is on {weight.device} but logits are on {logits.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def softmax_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                          ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Pixelwise softmax cross-entropy, exactly F.cross_entropy(logits, target, weight, ...).

    logits (N, K, H, W) float; target (N, H, W) integer class ids, `ignore_index` pixels contribute 0.
    'mean' divides by the sum of the target classes' weights over valid pixels (all ignored -> NaN);
    'none' returns the (N, H, W) weighted per-pixel losses (0 at ignored pixels).
    """
    check_cross_entropy_args(logits, target, weight, reduction)
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    t = target.long()                                               # (N, H, W)
    valid = t != ignore_index                                       # (N, H, W)
    t_safe = torch.where(valid, t, torch.zeros_like(t))
    logp = torch.log_softmax(x, dim=1)                              # (N, K, H, W)
    nll = -logp.gather(1, t_safe.unsqueeze(1)).squeeze(1)           # (N, H, W)
    w = weight.to(x.dtype)[t_safe] if weight is not None else torch.ones_like(nll)
    w = torch.where(valid, w, torch.zeros_like(w))                  # (N, H, W) weight of each pixel
    loss = nll * w
    if reduction == "none":
        out = loss
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = loss.sum() / w.sum()                                  # 0 / 0 = NaN when all ignored
    return out.to(logits.dtype)


def lsgan_loss(d: torch.Tensor, target: float) -> torch.Tensor:
    """Least-squares GAN loss mean((d - target)^2) over every element of the score map d."""
    x = d.float() if d.dtype in (torch.float16, torch.bfloat16) else d
    return ((x - target) ** 2).mean().to(d.dtype)


def lsgan_disc_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator step's loss, halved as in the paper's code:
    0.5 * (mean((d_real - 1)^2) + mean(d_fake^2))."""
    return 0.5 * (lsgan_loss(d_real, 1.0) + lsgan_loss(d_fake, 0.0))


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False, track_running_stats=False): per (n, c) plane, biased variance."""
    if x.dim() != 4:
        raise ValueError(f"instance norm expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = xf.mean(dim=(2, 3), keepdim=True)                        # (N, C, 1, 1)
    var = xf.var(dim=(2, 3), unbiased=False, keepdim=True)          # (N, C, 1, 1)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


def instance_norm_relu(x: torch.Tensor, eps: float = 1e-5, negative_slope: float = 0.0) -> torch.Tensor:
    """leaky_relu(instance_norm(x), negative_slope): the IN + ReLU pair that follows most convolutions of
    the generators (negative_slope 0), and the discriminators' IN + LeakyReLU(0.2)."""
    y = instance_norm(x, eps)
    if negative_slope == 0.0:
        return torch.relu(y)
    return torch.nn.functional.leaky_relu(y, negative_slope)
