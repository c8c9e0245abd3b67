"""The split files behind --data, found by one resolver and opened as sources.

    --data omitted          the built-in cardiac phantoms (generated into the cache on first use)
    --data shapes           the built-in shapes (--data phantom names the default)
    --data ACDC/            an SSL4MIS folder: its splits converted once into the cache; its volumes scored
    --data file.h5          a train split; its other splits beside it (val.h5, test.h5), or --val-data
    --data folder/          a folder with train.h5, val.h5 (and test.h5)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import acdc
from .h5format import DataError
from .phantom import phantom_dataset
from .shapes import shapes_dataset
from .source import H5Source, open_source

BUILTIN = {"phantom": phantom_dataset, "shapes": shapes_dataset}     # generated; --data NAME (default phantom)


@dataclass
class Splits:
    train: H5Source
    val: H5Source
    volumes: Path | None = None     # an SSL4MIS folder whose volumes give the per-volume 3D scores

    def fingerprints(self) -> dict:
        """{split: content digest}: what a run records of its data (H5Source.fingerprint)."""
        return {"train": self.train.fingerprint(), "val": self.val.fingerprint()}

    def leak_note(self) -> str | None:
        """A note when validation would score images the run trains on: the val split is the training file
        (its path, or a copy), or holds some of its images (the same patients' slices in another file)."""
        train, val = self.train, self.val
        if Path(train.path).resolve() == Path(val.path).resolve() or train.fingerprint() == val.fingerprint():
            return (f"note: the val split is the training file {train.path}: validation scores images the run "
                    f"trains on (fit, not generalisation)")
        if shared := train.shared_images(val):
            return (f"note: {shared} of the {len(val)} images of the val split {val.path} are also in the training "
                    f"file {train.path}: validation scores images the run trains on (fit, not generalisation); "
                    f"split the data by patient (convert nifti does)")
        return None


def is_builtin(data) -> bool:
    """Whether --data names the built-in data (None, or a BUILTIN name that is no path here)."""
    return data is None or (data in BUILTIN and not Path(data).exists())


def takes_image_size(data) -> bool:
    """Whether --image-size sizes `data`: the built-in data and an SSL4MIS folder are made at it, a converted
    .h5 file (or a folder of them) holds the size it was converted at."""
    return is_builtin(data) or acdc.is_ssl4mis(data)


def split_path(data, split: str, val_data=None, image_size: int = 64, progress: bool = True) -> tuple:
    """(HDF5 path of `split`, SSL4MIS folder or None): `split` of the built-in data, of an SSL4MIS folder
    (train, val, test: what its lists name), or of --data (a folder, or the train file beside which the
    other splits lie; --val-data for val). DataError naming what is missing."""
    builtin = is_builtin(data)
    if val_data and (builtin or acdc.is_ssl4mis(data)):             # would be ignored: the data has its own
        raise DataError(f"--val-data {val_data}: {'the built-in dataset' if builtin else f'the SSL4MIS folder {data}'} "
                        f"brings its own validation split; --val-data goes with --data .h5 files (a train.h5 or "
                        f"a folder of them)")
    if builtin:
        paths = BUILTIN[data or "phantom"](image_size, seed=0)
        if split not in paths:
            raise DataError(f"the built-in dataset has no {split} split (it has {', '.join(paths)})")
        return paths[split], None
    if acdc.is_ssl4mis(data):
        have = acdc.splits(data)
        if split not in have:
            raise DataError(f"{data}: no {split} split (it has {', '.join(have)}; the test split needs test.list "
                            f"and its volumes)")
        return acdc.cached_splits(data, image_size, progress, names=(split,))[split], Path(data)
    data = Path(data)
    if not data.exists() and not (split == "val" and val_data):    # moved or deleted: name it, not a file beside it
        raise DataError(f"{data}: no such file or folder (the data; a run records its absolute path: moved "
                        f"since? give --data where it is now)")
    if split == "val" and val_data:
        path = Path(val_data)
    elif split == "train" and not data.is_dir():
        path = data
    else:
        path = (data if data.is_dir() else data.parent) / f"{split}.h5"
    if not path.exists():
        fix = ("convert a test split to test.h5 beside it, or evaluate --data a file" if split == "test" else
               "give a folder with train.h5 and val.h5, or --val-data")
        raise DataError(f"{path}: no such file (the {split} split of the data {data}; {fix})")
    return path, None


def split_paths(data, val_data=None, image_size: int = 64, progress: bool = True) -> dict:
    """{"train", "val"} HDF5 paths, and "volumes" (the SSL4MIS folder) when `data` is one."""
    train, volumes = split_path(data, "train", val_data, image_size, progress)
    val, _ = split_path(data, "val", val_data, image_size, progress)
    return {"train": train, "val": val, **({"volumes": volumes} if volumes is not None else {})}


def check_same_kind(train_meta, val_meta) -> None:
    for attr in ("num_classes", "channels", "ignore_index"):
        a, b = getattr(train_meta, attr), getattr(val_meta, attr)
        if a != b:
            raise DataError(f"{val_meta.path}: {attr} is {b} but the train split {train_meta.path} has {a}")


def open_splits(data, val_data=None, image_size: int = 64, progress: bool = True) -> Splits:
    paths = split_paths(data, val_data, image_size, progress)
    train, val = open_source(paths["train"]), open_source(paths["val"])
    check_same_kind(train.meta, val.meta)
    check_labeled(val, "the val split", "give --val-data a split with labels")
    return Splits(train, val, paths.get("volumes"))


def check_labeled(source, what: str, advice: str) -> None:
    """DataError when a split to be scored holds no labeled pixel (every mask pixel the ignore index): its
    scores would be undefined (NaN), not low. Training's val split and every evaluation."""
    if source.has_labels is not None and len(source) and not source.has_labels.any():
        raise DataError(f"{source.path}: {what} holds no labeled pixel (every mask pixel is the ignore index "
                        f"{source.meta.ignore_index}): its scores would be undefined; check the masks, or {advice}")
