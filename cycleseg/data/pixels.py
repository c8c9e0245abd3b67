"""The one image convention of the package: stored images are uint8 in [0, 255]; networks read and
G_SI writes floats in [-1, 1]; x = u / 127.5 - 1 and back u = round((clamp(x, -1, 1) + 1) * 127.5).
Float sources in [0, 1] (ACDC) are stored as round(255 x)."""
from __future__ import annotations

import numpy as np
import torch


def to_input(images: torch.Tensor, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] on `device` (the cast happens after the copy: 4x fewer bytes)."""
    x = images.to(device, non_blocking=True) if device is not None else images
    return x.to(dtype) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (any shape) -> uint8 in [0, 255], on the CPU."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def float01_to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 images pass; float images in [0, 1] (ACDC) become round(255 x)."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
