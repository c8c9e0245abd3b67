"""The two streams of a run: the labeled stream over the labeled subset and the unlabeled stream over the
rest of the training split, each a Loader over its own BatchOrder."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .h5format import DataError
from .loader import Loader
from .order import BatchOrder
from .source import H5Source
from .subset import labeled_subset

# Each stream's seed is (run seed) * SEED_STRIDE + its offset, so the streams of one run never share a seed.
SEED_STRIDE = 1000
LABELED_SEED_OFFSET, UNLABELED_SEED_OFFSET = 1, 2


@dataclass
class Streams:
    loaders: dict                   # "labeled" and, when asked for, "unlabeled": Loader
    num_labeled: int
    num_unlabeled: int

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


def labeled_indices(train: H5Source, labeled_fraction: float, seed: int) -> np.ndarray:
    """The labeled subset's image indices, drawn as the file's `labeled_subset` rule says from its annotated
    images; DataError when there is none, or none of them holds a labeled pixel."""
    first_groups = train.meta.labeled_subset == "first_groups"
    annotated = np.arange(len(train)) if train.labeled is None else np.flatnonzero(train.labeled)
    if len(annotated) == 0:
        raise DataError(f"{train.path}: no annotated image (every one is marked unlabeled): the labeled stream "
                        f"needs some; convert a folder that has label files")
    groups = None if train.groups is None else train.groups[annotated]
    lab = annotated[labeled_subset(len(annotated), labeled_fraction, seed, groups, first_groups)]
    if train.has_labels is not None and not train.has_labels[lab].any():
        raise DataError(f"{train.path}: the {len(lab)} image(s) of the labeled subset hold no labeled pixel (every "
                        f"mask pixel is the ignore index {train.meta.ignore_index}): the supervised loss would be "
                        f"undefined; check the masks (a converter's --map?) or raise --labeled-fraction")
    return lab


def check_batch(batch_size: int, labeled: int, labeled_fraction: float, world_size: int = 1) -> None:
    """DataError when a step's labeled batch (per process) needs more images than the labeled subset has."""
    if batch_size > labeled // world_size:
        raise DataError(f"--batch-size {batch_size} is larger than the labeled subset ({labeled} image{'s' * (labeled != 1)} at "
                        f"--labeled-fraction {labeled_fraction}"
                        + (f", {labeled // world_size} per process" if world_size > 1 else "")
                        + "): lower --batch-size" + (" or raise --labeled-fraction" if labeled_fraction < 1 else ""))


def check_unlabeled_batch(batch_size: int, unlabeled: int, labeled_fraction: float, world_size: int = 1) -> None:
    """DataError when a step's unlabeled batch (per process) needs more images than the unlabeled rest has
    (1 image made every batch of 10 that image ten times; 2 processes failed on 'nothing for rank 1')."""
    if unlabeled and batch_size > unlabeled // world_size:
        raise DataError(f"--batch-size {batch_size} is larger than the unlabeled images ({unlabeled} at "
                        f"--labeled-fraction {labeled_fraction}"
                        + (f", {unlabeled // world_size} per process" if world_size > 1 else "")
                        + "): lower --batch-size or --labeled-fraction")


def make_streams(train: H5Source, labeled_fraction: float, seed: int, batch_size: int, unlabeled: bool,
                 device="cpu", prefetch: int = 3, flip: bool = False, scale_crop: float = 1.0,
                 rank: int = 0, world_size: int = 1, rotate: bool = False, augment: str = "none") -> Streams:
    """The labeled stream over the labeled subset (drawn as the file's `labeled_subset` rule says, from the
    annotated images: a file's unannotated scans are never in it) and, when `unlabeled`, the unlabeled
    stream over the rest (over every image at 100 % labels of a file without unannotated images)."""
    lab = labeled_indices(train, labeled_fraction, seed)
    check_batch(batch_size, len(lab), labeled_fraction, world_size)
    unl = np.setdiff1d(np.arange(len(train)), lab)
    if unlabeled:
        check_unlabeled_batch(batch_size, len(unl), labeled_fraction, world_size)
    aug = dict(flip=flip, scale=(1.0, scale_crop) if scale_crop > 1 else None, rotate=rotate, policy=augment,
               device=device, prefetch=prefetch)
    shard = dict(rank=rank, world_size=world_size)
    loaders = {"labeled": Loader(train, BatchOrder(lab, batch_size, seed * SEED_STRIDE + LABELED_SEED_OFFSET,
                                                   **shard), **aug)}
    if unlabeled:
        loaders["unlabeled"] = Loader(
            train, BatchOrder(unl if len(unl) else lab, batch_size, seed * SEED_STRIDE + UNLABELED_SEED_OFFSET,
                              **shard), with_masks=False, **aug)
    return Streams(loaders, len(lab), len(unl))
