"""The order in which a stream reads its images: deterministic for a seed, resumable exactly."""
from __future__ import annotations

import numpy as np

from .h5format import DataError


class BatchOrder:
    """Endless order of batches of `batch_size` indices drawn from `indices`, reshuffled every pass.

    Its whole state is (pass, position); pass p is a permutation drawn from (seed, p), so a checkpoint
    restores the exact batches to come. Rank r of W keeps every W-th index of each pass (a disjoint 1/W,
    equal lengths on all ranks)."""

    def __init__(self, indices, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        indices = np.asarray(indices, dtype=np.int64)
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if len(indices) // world_size == 0:
            raise DataError(f"a batch order over {len(indices)} images has nothing for rank {rank} of {world_size}")
        self.indices, self.batch_size, self.seed = indices, batch_size, seed
        self.rank, self.world_size = rank, world_size
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

    def state_dict(self) -> dict:
        return {"pass": self.pass_, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pass_, self.pos = int(state["pass"]), int(state["pos"])
        self._order = self._pass_order(self.pass_)
