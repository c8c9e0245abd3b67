"""Evaluation of G_IS on a split: confusion matrix over every pixel, then mIoU / Dice (metrics.py)."""
from __future__ import annotations

import numpy as np
import torch

from .data.stream import to_input
from .metrics import ConfusionMatrix


@torch.no_grad()
def predict(g_is, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, H, W) int64 class ids."""
    return g_is(x).argmax(dim=1)


@torch.no_grad()
def evaluate(g_is, source, device, batch_size: int = 16, class_names=None) -> dict:
    """Standard metrics of G_IS over every image of `source` (an H5Source)."""
    meta = source.meta
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index, device)
    was_training = g_is.training
    g_is.eval()
    for s in range(0, len(source), batch_size):
        images, masks = source.batch(np.arange(s, min(s + batch_size, len(source))))
        cm.update(predict(g_is, to_input(images, device)), masks.to(device))
    g_is.train(was_training)
    return cm.summary(class_names or meta.class_names)
