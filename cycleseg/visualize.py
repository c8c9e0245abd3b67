"""Pictures of a run: a PNG grid with one row per validation image and the columns
image | ground truth | prediction | G_SI(ground truth) (the last only when the model has G_SI)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .data.pixels import to_input, to_uint8
from .evaluate import eval_mode, predict
from .fileio import atomic_write_bytes
from .objective import one_hot

GRID_IMAGES = 4


def colorize(mask: np.ndarray, palette, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored pixels white."""
    pal = np.zeros((256, 3), np.uint8)
    pal[:len(palette)] = np.asarray(palette, np.uint8)
    pal[ignore_index] = 255
    return pal[mask]


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [-1, 1] -> (H, W, 3) uint8 (gray images repeated to 3 channels)."""
    x = to_uint8(x).permute(1, 2, 0).numpy()
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


SAMPLE_TITLES = ["image", "truth", "prediction", "G_SI(truth)"]


def image_truth_columns(images, masks, meta) -> list[list[np.ndarray]]:
    """The image and ground-truth columns of a grid, from uint8 images (N, H, W, C) and masks (N, H, W)."""
    return [[to_uint8_image(xi) for xi in to_input(images)],
            [colorize(m, meta.palette, meta.ignore_index) for m in masks.numpy()]]


@torch.no_grad()
def prediction_column(g_is, x: torch.Tensor, meta) -> list[np.ndarray]:
    """G_IS's predicted masks of the network inputs x, coloured."""
    with eval_mode(g_is):
        pred = predict(g_is, x).cpu().numpy()
    return [colorize(p, meta.palette, meta.ignore_index) for p in pred]


@torch.no_grad()
def sample_columns(nets: dict, source, device, count: int = GRID_IMAGES) -> list[list[np.ndarray]]:
    """The grid's columns (SAMPLE_TITLES) for the first `count` images of `source` (an H5Source)."""
    meta = source.meta
    images, masks = source.batch(np.arange(min(count, len(source))))
    x, y = to_input(images, device), masks.to(device)
    cols = image_truth_columns(images, masks, meta) + [prediction_column(nets["G_IS"], x, meta)]
    if "G_SI" in nets:
        with eval_mode(nets["G_SI"]):
            fake = nets["G_SI"](one_hot(y, meta.num_classes, meta.ignore_index, x.dtype))
        cols.append([to_uint8_image(f) for f in fake])
    return cols


def titled_grid(columns: list[list[np.ndarray]], titles=None, scale: int = 2):
    """columns[c][r] is an (H, W, 3) uint8 picture -> a PIL image, each column under its title."""
    from PIL import Image, ImageDraw

    rows = [np.concatenate([col[r] for col in columns], axis=1) for r in range(len(columns[0]))]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    if not titles:
        return grid
    band = 16
    img = Image.new("RGB", (grid.width, grid.height + band), "white")
    img.paste(grid, (0, band))
    draw = ImageDraw.Draw(img)
    col_w = grid.width // len(columns)
    for i, t in enumerate(titles[:len(columns)]):
        draw.text((i * col_w + 3, 2), t, fill="black")
    return img


def save_grid(path, columns: list[list[np.ndarray]], titles=None, scale: int = 2) -> None:
    """The titled grid of `columns`, written atomically as one PNG."""
    buf = io.BytesIO()
    titled_grid(columns, titles, scale).save(buf, format="PNG")
    atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
