"""Augmentation of a batch, in place on uint8 buffers (the loader thread calls it)."""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


POLICIES = ("none", "ssl4mis")


def augment(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator, flip: bool,
            scale: tuple[float, float] | None, rotate: bool = False, policy: str = "none") -> None:
    """In place on uint8 buffers: random rotation by a multiple of 90 degrees (square images); random
    horizontal flip; random scale-crop (crop 1/s of each side at a random place, resize back: images
    bilinear, masks nearest). policy "ssl4mis": SSL4MIS's RandomGenerator instead (ssl4mis_view)."""
    h, w = images.shape[1:3]
    for i in range(len(images)):
        if policy == "ssl4mis":
            ssl4mis_view(images[i], None if masks is None else masks[i], rng)
            continue
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


def ssl4mis_view(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> None:
    """SSL4MIS's RandomGenerator (dataloaders/dataset.py), in place on one (H, W, C) image and its (H, W)
    mask: with probability 1/2 a rotation by k x 90 degrees, k in 0..3 (odd k only on square images),
    then a flip along a random axis; otherwise a rotation by an integer angle in [-20, 20) degrees,
    nearest neighbour for image and mask alike (their order=0), corners filled with 0. Theirs runs at the
    native size before the resize to the network's; here the data are stored at the network's size."""
    square = image.shape[0] == image.shape[1]
    if rng.random() < 0.5:
        k = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
        axis = int(rng.integers(0, 2))
        image[:] = np.flip(np.rot90(image, k), axis)
        if mask is not None:
            mask[:] = np.flip(np.rot90(mask, k), axis)
        return
    angle = int(rng.integers(-20, 20))
    image[:] = ndimage.rotate(image, angle, axes=(1, 0), order=0, reshape=False)
    if mask is not None:
        mask[:] = ndimage.rotate(mask, angle, axes=(1, 0), order=0, reshape=False)
