"""ACDC in the SSL4MIS layout, read directly: `python -m cycleseg.train --data path/to/ACDC`.

The training slices and the validation volumes' slices are converted once, at the run's image size,
into the cache (`$CYCLESEG_CACHE/acdc-v2-<hash of the folder>-<H>x<W>/{train,val}.h5`) with the same
converter as `python -m cycleseg.data convert acdc`. The converted files say `labeled_subset =
"first_groups"`: labeled subsets follow the SSL4MIS protocol, the first N patients of
train_slices.list (7 / 14 / 21 / 35 / 70 patients = 10 / 20 / 30 / 50 / 100 %).

The volumes themselves (for the per-volume 3D scores of cycleseg.evaluate) are read from the folder:
`volume_names` lists a split's volumes, `read_volume` gives one, `slices_to_input` prepares its
slices exactly as the converter prepared the training slices.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import convert as cv
from .cache import cache_dir, cached_file, source_signature
from .h5format import DataError
from .pixels import float01_to_uint8, to_input

CLASSES = cv.ACDC_CLASSES
CACHE_VERSION = 4           # 2: files carry the labeled_subset attribute; 3: and the slices' volumes; 4: and the
                            # volumes' intensity rule (what predict applies to NIfTI scans)


def is_ssl4mis(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "train_slices.list").exists() and (p / "data").is_dir()


def splits(src) -> list[str]:
    """The splits an SSL4MIS folder names: train (its slices), and each volume list (val, test) it has."""
    return ["train"] + [s for s in ("val", "test") if (Path(src) / f"{s}.list").exists()]


def cached_splits(src, size: int, progress: bool = True, names=("train", "val")) -> dict:
    """Paths {split: file} of the converted splits at size x size, converting on first use."""
    src = Path(src).resolve()
    key = hashlib.sha1(str(src).encode()).hexdigest()[:10]
    root = cache_dir() / f"acdc-v{CACHE_VERSION}-{key}-{size}x{size}"
    paths = {split: root / f"{split}.h5" for split in names}
    source = source_signature([*src.glob("*.list"), *(src / "data").rglob("*.h5")])   # the folder as it is now
    for split, path in paths.items():
        try:
            cached_file(path, lambda p, split=split: cv.convert(*cv.acdc_items(src, split), p, (size, size),
                                                                   progress=progress), source)
        except DataError as e:                                      # train has no --intensity: how to get it
            text = str(e)
            if not text.endswith(cv.MINMAX_ADVICE):
                raise
            raise DataError(text.removesuffix(cv.MINMAX_ADVICE) + f"Convert the folder yourself with that rule: "
                            f"python -m cycleseg.data convert acdc {src} DIR/train.h5 --split train --size {size} {size} "
                            f"--intensity minmax (and DIR/val.h5 --split val), then pass --data DIR") from e
    return paths


def volume_names(src, split: str = "val") -> list[str]:
    """The volumes of a split, from its list file (`val.list`, `test.list`)."""
    return cv.read_lines(Path(src) / f"{split}.list")


def read_volume(src, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(image float (D, H, W) in [0, 1], label uint8 (D, H, W)) of one volume."""
    path = Path(src) / "data" / f"{name}.h5"
    cv.volume_shape(path)                                           # one shape, named if not
    return cv.h5_array(path, "image"), cv.h5_array(path, "label")


def slices_to_input(image: np.ndarray, size: int) -> torch.Tensor:
    """(D, H, W) float in [0, 1] -> (D, 1, size, size) network input, prepared as the converter does."""
    u8 = np.stack([np.asarray(Image.fromarray(float01_to_uint8(s)).resize((size, size), Image.BILINEAR))
                   for s in image])
    return to_input(torch.from_numpy(u8).unsqueeze(1))


def resize_back(pred: np.ndarray, shape) -> np.ndarray:
    """(D, h, w) class ids -> (D, H, W) by nearest neighbour (shape = (H, W))."""
    return np.stack([np.asarray(Image.fromarray(p.astype(np.uint8)).resize(shape[::-1], Image.NEAREST))
                     for p in pred])
