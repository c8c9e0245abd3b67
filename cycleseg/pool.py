"""History pool of generated images (Shrivastava et al. 2017), as in the original CycleGAN.

The discriminators see a mix of the newest fakes and older ones: each image of a batch is stored
while the pool has room; once full, with probability 1/2 a random stored image is returned in its
place (and the new one stored), otherwise the new image is returned. Pools single images, not
batches (the 2019 code pooled whole batches). Its state (images and RNG) goes into checkpoints.
"""
from __future__ import annotations

import random

import torch


class ImagePool:
    def __init__(self, size: int = 50, seed: int = 0):
        self.size = size
        self.rng = random.Random(seed)
        self.images: list[torch.Tensor] = []

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) detached fakes -> (B, C, H, W) mix of new and pooled fakes."""
        if self.size == 0:
            return batch
        out = []
        for img in batch.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self.rng.random() < 0.5:
                j = self.rng.randrange(self.size)
                out.append(self.images[j])
                self.images[j] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"size": self.size, "rng": self.rng.getstate(),
                "images": torch.stack(self.images) if self.images else None}

    def load_state_dict(self, state: dict) -> None:
        self.size = state["size"]
        self.rng.setstate(state["rng"])
        self.images = list(state["images"].unbind(0)) if state["images"] is not None else []
