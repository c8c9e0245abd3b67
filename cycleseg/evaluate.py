"""Evaluation of G_IS: slice metrics over a split (confusion matrix -> mIoU / Dice, metrics.py), and
for ACDC the per-volume 3D scores of that literature (every slice of a volume resized to the training
size, segmented, resized back (nearest) to its native size; then 3D Dice and IoU per foreground class
(RV, Myo, LV), averaged over volumes)."""
from __future__ import annotations

import numpy as np
import torch

from .data import acdc
from .data.pixels import to_input
from .metrics import ConfusionMatrix


@torch.no_grad()
def predict(g_is, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, H, W) int64 class ids."""
    return g_is(x).argmax(dim=1)


class eval_mode:
    """`with eval_mode(net):` runs net in eval mode and restores its previous mode."""

    def __init__(self, net):
        self.net = net

    def __enter__(self):
        self.was_training = self.net.training
        self.net.eval()
        return self.net

    def __exit__(self, *exc):
        self.net.train(self.was_training)


@torch.no_grad()
def evaluate(g_is, source, device, batch_size: int = 16, class_names=None) -> dict:
    """Standard metrics of G_IS over every image of `source` (an H5Source)."""
    meta = source.meta
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index, device)
    with eval_mode(g_is):
        for s in range(0, len(source), batch_size):
            images, masks = source.batch(np.arange(s, min(s + batch_size, len(source))))
            cm.update(predict(g_is, to_input(images, device)), masks.to(device))
    return cm.summary(class_names or meta.class_names)


def volume_scores(pred: np.ndarray, label: np.ndarray, num_classes: int = 4):
    """3D Dice and IoU of each foreground class (NaN where the class is absent from both)."""
    dice, iou = [], []
    for c in range(1, num_classes):
        p, g = pred == c, label == c
        inter, ps, gs = np.logical_and(p, g).sum(), p.sum(), g.sum()
        dice.append(2 * inter / (ps + gs) if ps + gs else np.nan)
        iou.append(inter / (ps + gs - inter) if ps + gs else np.nan)
    return np.array(dice), np.array(iou)


@torch.no_grad()
def evaluate_volumes(g_is, src, size: int, device, split: str = "val", batch_size: int = 16) -> dict:
    """Per-volume 3D Dice / IoU of G_IS on the SSL4MIS volumes of `split`, averaged over volumes."""
    dices, ious = [], []
    with eval_mode(g_is):
        for name in acdc.volume_names(src, split):
            image, label = acdc.read_volume(src, name)
            x = acdc.slices_to_input(image, size)                       # (D, 1, size, size)
            pred = torch.cat([predict(g_is, x[s:s + batch_size].to(device)).cpu()
                              for s in range(0, len(x), batch_size)]).numpy()
            d, i = volume_scores(acdc.resize_back(pred, label.shape[1:]), label)
            dices.append(d)
            ious.append(i)
    dice, iou = np.nanmean(np.array(dices), axis=0), np.nanmean(np.array(ious), axis=0)
    names = acdc.CLASSES[1:]
    return {"volume_mdice": float(np.mean(dice)), "volume_miou": float(np.mean(iou)),
            "volume_dice": {n: round(float(v), 6) for n, v in zip(names, dice)},
            "volume_iou": {n: round(float(v), 6) for n, v in zip(names, iou)}, "volumes": len(dices)}
