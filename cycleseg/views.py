"""The strong view of weak-to-strong consistency (FixMatch, Sohn et al. 2020, for segmentation as in
UniMatch, Yang et al. 2023: LiheYoung/UniMatch, more-scenarios/medical/dataset/acdc.py): on the device,
from the weak view (the unlabeled batch as loaded), with the global torch RNG (checkpointed, so a resumed
run draws the same views):

    intensity  with probability 0.8, brightness and contrast factors in [0.5, 1.5] (and saturation for
               RGB; torchvision's ColorJitter(0.5, 0.5, 0.5, 0.25) without its hue shift)
    blur       with probability 0.5, a Gaussian blur of sigma in [0.1, 2.0]
    CutMix     with probability `cutmix`, a box of 2-40 % of the image (aspect 0.3-3.3) replaced by the
               same box of the next image of the batch (UniMatch draws that image from a second loader;
               the batch's next image is another unlabeled image at no extra cost). Boxes that would not
               fit are clipped to the image (UniMatch redraws them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device)


def jitter(u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast (and saturation for RGB) of images u in [0, 1], (B, C, H, W), p = 0.8 each image."""
    b, c = u.shape[:2]
    on = (torch.rand(b, device=u.device) < 0.8).view(b, 1, 1, 1)
    gray = u.mean(dim=1, keepdim=True) if c == 3 else u
    out = u * uniform(b, 0.5, 1.5, u.device).view(b, 1, 1, 1)                           # brightness
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * uniform(b, 0.5, 1.5, u.device).view(b, 1, 1, 1) + mean          # contrast
    if c == 3:
        out_gray = out.mean(dim=1, keepdim=True)
        out = (out - out_gray) * uniform(b, 0.5, 1.5, u.device).view(b, 1, 1, 1) + out_gray   # saturation
    return torch.where(on, out.clamp(0, 1), u)


def blur(u: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur of sigma in [0.1, 2.0] on each image with probability 0.5 (separable, per image)."""
    b, c = u.shape[:2]
    on = torch.rand(b, device=u.device) < 0.5
    sigma = uniform(b, 0.1, 2.0, u.device)
    radius = math.ceil(3 * 2.0)
    t = torch.arange(-radius, radius + 1, device=u.device, dtype=u.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    k = k / k.sum(dim=1, keepdim=True)                                                   # (B, 2r + 1)
    x = u.reshape(1, b * c, *u.shape[2:])
    kc = k.repeat_interleave(c, dim=0)                                                   # (B C, 2r + 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kc[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kc[:, None, :, None], groups=b * c)
    return torch.where(on.view(b, 1, 1, 1), x.reshape(u.shape), u)


def cutmix_boxes(b: int, h: int, w: int, p: float, device) -> torch.Tensor:
    """(B, H, W) bool: a box per image with probability p, 2-40 % of the area, aspect 0.3-3.3."""
    area = uniform(b, 0.02, 0.4, device) * h * w
    ratio = uniform(b, 0.3, 1 / 0.3, device)
    bw = torch.sqrt(area / ratio).clamp(1, w).floor()
    bh = torch.sqrt(area * ratio).clamp(1, h).floor()
    x0 = (torch.rand(b, device=device) * (w - bw + 1)).floor()
    y0 = (torch.rand(b, device=device) * (h - bh + 1)).floor()
    xs, ys = torch.arange(w, device=device), torch.arange(h, device=device)
    inside = (((xs[None, None, :] >= x0[:, None, None]) & (xs[None, None, :] < (x0 + bw)[:, None, None]))
              & ((ys[None, :, None] >= y0[:, None, None]) & (ys[None, :, None] < (y0 + bh)[:, None, None])))
    return inside & (torch.rand(b, device=device) < p)[:, None, None]


def strong_view(x: torch.Tensor, cutmix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(strong view of x, CutMix boxes): x (B, C, H, W) in [-1, 1]; image i's box shows image i + 1's
    strong view (the pseudo-labels there must be image i + 1's: partner())."""
    u = blur(jitter((x.float() + 1) / 2))
    box = cutmix_boxes(x.shape[0], x.shape[2], x.shape[3], cutmix, x.device)
    u = torch.where(box[:, None], partner(u), u)
    return (u * 2 - 1).to(x.dtype), box


def partner(t: torch.Tensor) -> torch.Tensor:
    """Each image's CutMix partner: the next image of the batch (the last one's is the first)."""
    return torch.roll(t, shifts=-1, dims=0)
