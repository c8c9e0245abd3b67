"""The built-in shapes dataset (`--data shapes`): textured shapes on textured backgrounds, from a seed.

Five classes: background, disc, square, triangle, ring. Every region (background, objects and
background-class distractors) gets a texture from one family (two random colours mixed by an oriented
sinusoid, plus noise); colour says nothing about the class and the stripes' orientation only a little
(overlapping bands per class), so the network has to use shape, as in real segmentation. Elongated ellipses are distractors labeled background.
Masks are exact (the rasterisation that draws a shape also labels it).

Generated with numpy in about a second, written once to the project's HDF5 format and cached
(`$CYCLESEG_CACHE`, default `~/.cache/cycleseg`).
"""
from __future__ import annotations

import numpy as np

from .cache import generated_splits

CLASS_NAMES = ["background", "disc", "square", "triangle", "ring"]
GENERATOR_VERSION = 4
SPLIT_SIZES = {"train": 1000, "val": 200}


def _texture(rng, yy, xx, cls=None):
    """(S, S, 3) float: two random colours mixed by an oriented sinusoid, plus Gaussian noise.

    Objects (cls >= 1) take the sinusoid's orientation from a band of their class, overlapping its
    neighbours' bands: a weak texture cue beside the shape; background and distractors take any."""
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    s = yy.shape[0]
    n = len(CLASS_NAMES) - 1
    theta = rng.uniform(0, np.pi) if not cls else (cls - 1 + rng.uniform(-0.5, 1.5)) * np.pi / n
    freq, phase = rng.uniform(1.0, 8.0) / s, rng.uniform(0, 2 * np.pi)
    p = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    img = c1 * (1 - p[..., None]) + c2 * p[..., None]
    return img + rng.normal(0, rng.uniform(3, 12), img.shape)


def _shape(rng, cls, yy, xx):
    """Boolean (S, S) mask of one object of class `cls` (or a distractor ellipse for cls == 0)."""
    s = yy.shape[0]
    cy, cx = rng.uniform(0.15 * s, 0.85 * s, 2)
    r = rng.uniform(0.16, 0.28) * s
    a = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)               # rotated coordinates
    v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
    if cls == 0:                                                    # elongated ellipse, labeled background
        e = rng.uniform(2.5, 4.0)
        return (u / r) ** 2 + (v * e / r) ** 2 <= 1
    if cls == 1:                                                    # disc
        return u ** 2 + v ** 2 <= r ** 2
    if cls == 2:                                                    # square
        return np.maximum(np.abs(u), np.abs(v)) <= r * 0.85
    if cls == 3:                                                    # equilateral triangle
        k = [(np.cos(t), np.sin(t)) for t in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        return np.all([u * c + v * sn <= r * 0.5 for c, sn in k], axis=0)
    d2 = u ** 2 + v ** 2                                            # ring
    return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)


def generate(n: int, size: int, seed: int, split: str):
    """n images (n, size, size, 3) uint8 and masks (n, size, size) uint8, deterministic in (seed, split)."""
    rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split) if split in SPLIT_SIZES else 99])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        img = _texture(rng, yy, xx)
        mask = np.zeros((size, size), np.uint8)
        classes = list(rng.integers(1, len(CLASS_NAMES), rng.integers(1, 4))) + [0] * int(rng.integers(0, 2))
        rng.shuffle(classes)
        for cls in classes:                                         # later shapes occlude earlier ones
            m = _shape(rng, cls, yy, xx)
            img[m] = _texture(rng, yy, xx, cls)[m]
            mask[m] = cls
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        masks[i] = mask
    return images, masks


def shapes_dataset(size: int = 64, seed: int = 0) -> dict:
    """Paths {"train": ..., "val": ...} of the shapes dataset at `size`, generated on first use."""
    return generated_splits("shapes", GENERATOR_VERSION, seed, size, CLASS_NAMES, SPLIT_SIZES,
                            lambda split: generate(SPLIT_SIZES[split], size, seed, split), __file__)
