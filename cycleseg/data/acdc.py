"""ACDC in the SSL4MIS layout, read directly: `python -m cycleseg.train --data path/to/ACDC`.

The training slices and the validation volumes' slices are converted once, at the run's image size,
into the cache (`$CYCLESEG_CACHE/acdc-<hash of the folder>-<H>x<W>/{train,val}.h5`) with the same
converter as `python -m cycleseg.data convert acdc`. Labeled subsets follow the SSL4MIS protocol: the
first N patients of train_slices.list (7 / 14 / 21 / 35 / 70 patients = 10 / 20 / 30 / 50 / 100 %).

Evaluation per volume, as in that literature: every slice of a validation volume is resized to the
training size, segmented, resized back (nearest) to its native size; then 3D Dice and IoU per
foreground class (RV, Myo, LV), averaged over volumes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from . import convert as cv
from .shapes import cache_dir


def is_ssl4mis(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "train_slices.list").exists() and (p / "data").is_dir()


def cached_splits(src, size: int, progress: bool = True) -> dict:
    """Paths {"train", "val"} of the converted splits at size x size, converting on first use."""
    src = Path(src).resolve()
    key = hashlib.sha1(str(src).encode()).hexdigest()[:10]
    root = cache_dir() / f"acdc-{key}-{size}x{size}"
    paths = {split: root / f"{split}.h5" for split in ("train", "val")}
    for split, path in paths.items():
        if not path.exists():
            items, meta = cv.acdc_items(src, split)
            meta.preprocessing = {}
            cv.convert(items, meta, path, (size, size), progress=progress)
    return paths


def _to_input_slices(image: np.ndarray, size: int) -> torch.Tensor:
    """(D, H, W) float in [0, 1] -> (D, 1, size, size) float in [-1, 1], as the converter prepares slices."""
    from PIL import Image

    out = np.stack([np.asarray(Image.fromarray(cv.float01_to_uint8(s)).resize((size, size), Image.BILINEAR))
                    for s in image])
    return torch.from_numpy(out).unsqueeze(1).float() / 127.5 - 1.0


def _resize_back(pred: np.ndarray, shape) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(p.astype(np.uint8)).resize(shape[::-1], Image.NEAREST))
                     for p in pred])


def volume_scores(pred: np.ndarray, label: np.ndarray, num_classes: int = 4):
    """3D Dice and IoU of each foreground class (NaN where the class is absent from both)."""
    dice, iou = [], []
    for c in range(1, num_classes):
        p, g = pred == c, label == c
        inter, ps, gs = np.logical_and(p, g).sum(), p.sum(), g.sum()
        dice.append(2 * inter / (ps + gs) if ps + gs else np.nan)
        iou.append(inter / (ps + gs - inter) if ps + gs else np.nan)
    return np.array(dice), np.array(iou)


@torch.no_grad()
def evaluate_volumes(g_is, src, size: int, device, split: str = "val", batch_size: int = 16) -> dict:
    """Per-volume 3D Dice / IoU of G_IS on the SSL4MIS volumes of `split`, averaged over volumes."""
    src = Path(src)
    was_training = g_is.training
    g_is.eval()
    dices, ious = [], []
    for vol in cv._read_lines(src / f"{split}.list"):
        path = src / "data" / f"{vol}.h5"
        image, label = cv._h5_array(path, "image"), cv._h5_array(path, "label")
        x = _to_input_slices(image, size)
        pred = torch.cat([g_is(x[s:s + batch_size].to(device)).argmax(1).cpu()
                          for s in range(0, len(x), batch_size)]).numpy()
        d, i = volume_scores(_resize_back(pred, label.shape[1:]), label)
        dices.append(d)
        ious.append(i)
    g_is.train(was_training)
    dice, iou = np.nanmean(np.array(dices), axis=0), np.nanmean(np.array(ious), axis=0)
    names = cv.ACDC_CLASSES[1:]
    return {"volume_mdice": float(np.mean(dice)), "volume_miou": float(np.mean(iou)),
            "volume_dice": {n: round(float(v), 6) for n, v in zip(names, dice)},
            "volume_iou": {n: round(float(v), 6) for n, v in zip(names, iou)}, "volumes": len(dices)}
