"""The cache folder of generated and converted data: `$CYCLESEG_CACHE`, default `~/.cache/cycleseg`."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from . import h5format
from .h5format import Meta, default_palette, write_split


def cache_dir() -> Path:
    return Path(os.environ.get("CYCLESEG_CACHE", Path.home() / ".cache" / "cycleseg"))


def code_hash(*paths) -> str:
    """8 hex digits of the files' contents: the code that generates and writes a dataset, so that any
    change to it (a version number forgotten, a trial left in a cache) writes a new dataset instead of
    reading an old one."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:8]


def generated_splits(name: str, version: int, seed: int, size: int, class_names: list, splits,
                     make: Callable, code, labeled_subset: str = "random") -> dict:
    """Paths {split: file} of a generated dataset at size x size, written on first use into
    `<cache>/<name>-v<version>-<code hash>-seed<seed>-<size>px/`: make(split) -> (images, masks[, groups]);
    `code`: the generator's source file (hashed with this module and the writer's); `labeled_subset`: how
    labeled subsets are drawn from the training split (h5format.SUBSET_RULES)."""
    if size < 8 or size % 4:
        raise ValueError(f"the built-in dataset needs an image size divisible by 4 and >= 8, got {size}")
    tag = f"v{version}-{code_hash(code, __file__, h5format.__file__)}"      # the generator, its metadata, the writer
    root = cache_dir() / f"{name}-{tag}-seed{seed}-{size}px"
    meta = Meta(num_classes=len(class_names), class_names=list(class_names), palette=default_palette(len(class_names)),
                ignore_index=255, source=f"cycleseg built-in {name} {tag}, seed {seed}",
                preprocessing={"size": [size, size]}, labeled_subset=labeled_subset)
    paths = {split: root / f"{split}.h5" for split in splits}
    for split, path in paths.items():
        if not path.exists():
            images, masks, *groups = make(split)
            write_split(path, images, masks, meta, groups[0] if groups else None)
    return paths
