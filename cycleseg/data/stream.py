"""Labeled and unlabeled streams: endless batch iterators, reshuffled every pass, deterministic for a seed.

A stream's whole state is (pass, position): the order of pass p is a permutation drawn from
(seed, p), so a checkpoint restores the exact batches to come. Running distributed, rank r of W keeps
every W-th index of each pass's permutation (a disjoint 1/W of the stream, equal lengths on all ranks).
"""
from __future__ import annotations

import numpy as np
import torch

from .h5format import DataError, open_h5, read_meta, check_masks


class ArraySource:
    """A split held in memory as uint8 arrays: images (N, H, W, C), masks (N, H, W)."""

    def __init__(self, path):
        self.meta = read_meta(path)
        with open_h5(path) as f:
            self.images = f["images"][...]
            self.masks = f["masks"][...]
            self.groups = f["groups"][...] if "groups" in f else None
        check_masks(path, self.masks, self.meta.num_classes, self.meta.ignore_index)

    def __len__(self):
        return len(self.images)

    def batch(self, idx: np.ndarray, with_masks: bool = True):
        """uint8 tensors: images (B, C, H, W) and masks (B, H, W) (or None)."""
        images = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2)   # (B, C, H, W)
        masks = torch.from_numpy(self.masks[idx]) if with_masks else None
        return images, masks


def labeled_subset(n: int, fraction: float, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the labeled subset. Nested: a smaller fraction's subset lies inside a larger one's.

    Drawn by image, or by group (e.g. patient) when groups are given: the first round(f * G) groups of
    a seeded permutation of the groups.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        chosen = order[:max(1, round(fraction * n))]
    else:
        ids = np.unique(groups)
        keep = rng.permutation(ids)[:max(1, round(fraction * len(ids)))]
        chosen = np.flatnonzero(np.isin(groups, keep))
    if len(chosen) == 0:
        raise DataError(f"the labeled subset at fraction {fraction} of {n} images is empty")
    return np.sort(chosen)


class Stream:
    """Endless batches of `batch_size` drawn from `indices` of `source`."""

    def __init__(self, source, indices, batch_size: int, seed: int, with_masks: bool = True,
                 rank: int = 0, world_size: int = 1):
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) // world_size == 0:
            raise DataError(f"a stream over {len(indices)} images has nothing for rank {rank} of {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.source, self.indices, self.batch_size, self.seed = source, indices, batch_size, seed
        self.with_masks, self.rank, self.world_size = with_masks, rank, world_size
        self.pass_, self.pos = 0, 0
        self._order = self._pass_order(0)

    def _pass_order(self, p: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, p]).permutation(self.indices)
        per_rank = len(perm) // self.world_size
        return perm[self.rank::self.world_size][:per_rank]

    def next_indices(self) -> np.ndarray:
        out = []
        while len(out) < self.batch_size:
            if self.pos == len(self._order):
                self.pass_, self.pos = self.pass_ + 1, 0
                self._order = self._pass_order(self.pass_)
            take = min(self.batch_size - len(out), len(self._order) - self.pos)
            out.extend(self._order[self.pos:self.pos + take])
            self.pos += take
        return np.asarray(out)

    def __iter__(self):
        return self

    def __next__(self):
        return self.source.batch(self.next_indices(), self.with_masks)

    def state_dict(self) -> dict:
        return {"pass": self.pass_, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pass_, self.pos = int(state["pass"]), int(state["pos"])
        self._order = self._pass_order(self.pass_)


def to_input(images: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1] on `device` (the cast happens after the copy: 4x fewer bytes)."""
    x = images.to(device, non_blocking=True)
    return x.to(dtype) / 127.5 - 1.0
