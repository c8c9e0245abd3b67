"""Augmentation of a batch, in place on uint8 buffers (the loader thread calls it)."""
from __future__ import annotations

import numpy as np
from PIL import Image


def augment(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator, flip: bool,
            scale: tuple[float, float] | None, rotate: bool = False) -> None:
    """In place on uint8 buffers: random rotation by a multiple of 90 degrees (square images); random
    horizontal flip; random scale-crop (crop 1/s of each side at a random place, resize back: images
    bilinear, masks nearest)."""
    h, w = images.shape[1:3]
    for i in range(len(images)):
        if rotate and h == w:
            k = int(rng.integers(0, 4))
            images[i] = np.rot90(images[i], k)
            if masks is not None:
                masks[i] = np.rot90(masks[i], k)
        if flip and rng.random() < 0.5:
            images[i] = images[i, :, ::-1]
            if masks is not None:
                masks[i] = masks[i, :, ::-1]
        if scale is not None:
            s = rng.uniform(*scale)
            ch, cw = max(1, round(h / s)), max(1, round(w / s))
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = images[i, y0:y0 + ch, x0:x0 + cw]
            img = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).resize((w, h), Image.BILINEAR)
            images[i] = np.asarray(img).reshape(images.shape[1:])
            if masks is not None:
                m = Image.fromarray(np.ascontiguousarray(masks[i, y0:y0 + ch, x0:x0 + cw]))
                masks[i] = np.asarray(m.resize((w, h), Image.NEAREST))
