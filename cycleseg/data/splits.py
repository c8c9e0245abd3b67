"""What a run reads: the split files behind --data, opened as sources, and the labeled / unlabeled
streams over the training split.

    --data omitted          the built-in dataset (generated into the cache on first use)
    --data ACDC/            an SSL4MIS folder: converted once into the cache; its volumes are scored
    --data file.h5          a train split, with val.h5 beside it (or --val-data)
    --data folder/          a folder with train.h5 and val.h5
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import acdc
from .h5format import DataError
from .shapes import builtin_dataset
from .stream import H5Source, Loader, Stream, labeled_subset

IN_MEMORY_BYTES = 1 << 30       # splits smaller than this are read into memory once
# Each stream's seed is (run seed) * SEED_STRIDE + its offset, so the streams of one run never share a seed.
SEED_STRIDE = 1000
LABELED_SEED_OFFSET, UNLABELED_SEED_OFFSET = 1, 2


@dataclass
class Splits:
    train: H5Source
    val: H5Source
    volumes: Path | None = None     # an SSL4MIS folder whose volumes give the per-volume 3D scores


def split_paths(data, val_data=None, image_size: int = 64, progress: bool = True) -> dict:
    """{"train", "val"} HDF5 paths, and "volumes" (the SSL4MIS folder) when `data` is one."""
    if data is None:
        return builtin_dataset(image_size, seed=0)
    if acdc.is_ssl4mis(data):
        return {**acdc.cached_splits(data, image_size, progress), "volumes": Path(data)}
    data = Path(data)
    train = data / "train.h5" if data.is_dir() else data
    val = Path(val_data) if val_data else train.with_name("val.h5")
    for split, p in (("train", train), ("val", val)):
        if not p.exists():
            raise DataError(f"{p}: no such file (the {split} split of --data {data}; "
                            f"give a folder with train.h5 and val.h5, or --val-data)")
    return {"train": train, "val": val}


def eval_split(data, split: str, val_data=None, image_size: int = 64, progress: bool = True) -> tuple:
    """(HDF5 path, SSL4MIS folder or None) of one split to evaluate: `split` of the built-in data, of an
    SSL4MIS folder (train, val, test: what its lists name), or the <split>.h5 of --data (a folder or the
    train file beside which the other splits lie; --val-data for val)."""
    if data is not None and acdc.is_ssl4mis(data):
        have = acdc.splits(data)
        if split not in have:
            raise DataError(f"{data}: no {split} split (it has {', '.join(have)}; the test split needs test.list "
                            f"and its volumes)")
        return acdc.cached_splits(data, image_size, progress, names=(split,))[split], Path(data)
    if data is None:
        paths = builtin_dataset(image_size, seed=0)
        if split not in paths:
            raise DataError(f"the built-in dataset has no {split} split (it has {', '.join(paths)})")
        return paths[split], None
    data = Path(data)
    if split == "val" and val_data:
        path = Path(val_data)
    else:
        path = (data if data.is_dir() else data.parent) / f"{split}.h5"
        if split == "train" and not data.is_dir():
            path = data
    if not path.exists():
        raise DataError(f"{path}: no such file (the {split} split of {data})")
    return path, None


def check_same_kind(train_meta, val_meta) -> None:
    for attr in ("num_classes", "channels", "ignore_index"):
        a, b = getattr(train_meta, attr), getattr(val_meta, attr)
        if a != b:
            raise DataError(f"{val_meta.path}: {attr} is {b} but the train split {train_meta.path} has {a}")


def open_source(path) -> H5Source:
    """A split as a source: held in memory when smaller than IN_MEMORY_BYTES, else streamed from disk."""
    return H5Source(path, in_memory=Path(path).stat().st_size < IN_MEMORY_BYTES)


def open_splits(data, val_data=None, image_size: int = 64, progress: bool = True) -> Splits:
    paths = split_paths(data, val_data, image_size, progress)
    train, val = open_source(paths["train"]), open_source(paths["val"])
    check_same_kind(train.meta, val.meta)
    return Splits(train, val, paths.get("volumes"))


@dataclass
class Streams:
    loaders: dict                   # "labeled" and, when asked for, "unlabeled": Loader
    num_labeled: int
    num_unlabeled: int

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


def make_streams(train: H5Source, labeled_fraction: float, seed: int, batch_size: int, unlabeled: bool,
                 device="cpu", prefetch: int = 3, flip: bool = False, scale_crop: float = 1.0,
                 rank: int = 0, world_size: int = 1, rotate: bool = False) -> Streams:
    """The labeled stream over the labeled subset (drawn as the file's `labeled_subset` rule says) and,
    when `unlabeled`, the unlabeled stream over the rest (over every image at 100 % labels)."""
    first_groups = train.meta.labeled_subset == "first_groups"
    lab = labeled_subset(len(train), labeled_fraction, seed, train.groups, first_groups)
    unl = np.setdiff1d(np.arange(len(train)), lab)
    if batch_size > len(lab) // world_size:
        raise DataError(f"--batch-size {batch_size} is larger than the labeled subset ({len(lab)} images at "
                        f"--labeled-fraction {labeled_fraction}"
                        + (f", {len(lab) // world_size} per process" if world_size > 1 else "")
                        + "): lower --batch-size or raise --labeled-fraction")
    aug = dict(flip=flip, scale=(1.0, scale_crop) if scale_crop > 1 else None, rotate=rotate, device=device,
               prefetch=prefetch)
    shard = dict(rank=rank, world_size=world_size)
    loaders = {"labeled": Loader(train, Stream(lab, batch_size, seed * SEED_STRIDE + LABELED_SEED_OFFSET, **shard),
                                 **aug)}
    if unlabeled:
        loaders["unlabeled"] = Loader(
            train, Stream(unl if len(unl) else lab, batch_size, seed * SEED_STRIDE + UNLABELED_SEED_OFFSET, **shard),
            with_masks=False, **aug)
    return Streams(loaders, len(lab), len(unl))
