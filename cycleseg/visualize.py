"""Pictures of a run: a PNG grid with one row per validation image and the columns
image | ground truth | prediction | G_SI(ground truth) (the last only when the model has G_SI)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_bytes


def colorize(mask: np.ndarray, palette, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored pixels white."""
    pal = np.zeros((256, 3), np.uint8)
    pal[:len(palette)] = np.asarray(palette, np.uint8)
    pal[ignore_index] = 255
    return pal[mask]


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [-1, 1] -> (H, W, 3) uint8 (gray images repeated to 3 channels)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(1, 2, 0).numpy()
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def save_grid(path, columns: list[list[np.ndarray]], scale: int = 2) -> None:
    """columns[c][r] is an (H, W, 3) uint8 picture; written atomically as one PNG."""
    from PIL import Image

    rows = [np.concatenate([col[r] for col in columns], axis=1) for r in range(len(columns[0]))]
    grid = np.concatenate(rows, axis=0)
    img = Image.fromarray(grid)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
