"""The cache folder of generated and converted data: `$CYCLESEG_CACHE`, default `~/.cache/cycleseg`."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable

from ..fileio import atomic_write_text, occupied
from . import h5format
from .h5format import Meta, default_palette, write_split


def cache_dir() -> Path:
    return Path(os.environ.get("CYCLESEG_CACHE") or Path.home() / ".cache" / "cycleseg")   # set but empty: unset


def code_hash(*paths) -> str:
    """8 hex digits of the files' contents: the code that generates and writes a dataset, so that any
    change to it (a version number forgotten, a trial left in a cache) writes a new dataset instead of
    reading an old one."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:8]


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_file(path: Path, build: Callable, source: str | None = None) -> Path:
    """`path`, written by build(path) unless it exists with the checksum recorded when the cache wrote it
    (<file>.sha256 beside it): a cached file damaged or changed since (garbled bytes would change the
    scores without a word) is written again, with a note. `source`: a signature of what the file is made
    from (source_signature), recorded with the checksum; another signature (the data at the same path
    replaced or edited) writes it again too."""
    sums = path.with_name(path.name + ".sha256")
    for p in (path, sums):
        if occupied(p):                                             # made by hand: not ours to delete
            raise h5format.DataError(f"{p} is a folder or special file where the data cache keeps a file; remove "
                                     f"it (the cache writes the file again) or set CYCLESEG_CACHE to another folder")

    def record() -> list:                                           # what <file>.sha256 holds: checksum [source]
        return [file_sha256(path)] + ([] if source is None else [source])

    want = record() if path.exists() else None
    have = sums.read_text().split() if sums.exists() else None
    if want is not None and have == want:
        return path
    if path.exists():
        why = ("no checksum" if not have else "its source changed" if have[0] == want[0] else "checksum differs")
        print(f"note: {path} is not the file the cache wrote from this data ({why}); writing it again",
              file=sys.stderr)
    build(path)
    atomic_write_text(sums, " ".join(record()) + "\n")
    return path


def source_signature(files) -> str:
    """16 hex digits of the names, sizes and modification times of `files` (a data folder's files): changes
    when the folder is replaced, a file is edited, added or removed (a copy with new times converts again)."""
    digest = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        st = f.stat()
        digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


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
    def build(split):
        def write(path):
            images, masks, *groups = make(split)
            write_split(path, images, masks, meta, groups[0] if groups else None)
        return write

    for split, path in paths.items():
        cached_file(path, build(split))
    return paths
