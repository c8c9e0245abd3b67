"""Segmentation metrics from a confusion matrix accumulated on the device (no host sync per batch).

Standard mIoU: IoU_c = TP / (TP + FP + FN) for every class c with a non-empty union, averaged over
those classes; pixels at ignore_index count nowhere. Also the 2019 code's VOC variant ("miou_no_bg":
background row and column dropped), named as such, so numbers can be set beside the paper's.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255, device="cpu"):
        self.k, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # (true, pred)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (N, H, W) class ids on the matrix's device."""
        t = target.long().flatten()
        valid = t != self.ignore_index
        idx = t[valid] * self.k + pred.long().flatten()[valid]
        self.mat += torch.bincount(idx, minlength=self.k * self.k).view(self.k, self.k)

    def iou(self) -> torch.Tensor:
        """(K,) IoU per class, NaN where the class is absent from both prediction and truth."""
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def dice(self) -> torch.Tensor:
        """(K,) Dice per class (2 TP / (2 TP + FP + FN)), NaN where absent."""
        m = self.mat.double()
        tp = m.diag()
        denom = m.sum(0) + m.sum(1)
        return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))

    def summary(self, class_names=None) -> dict:
        """Plain-Python metrics (this is a host sync: call once per evaluation)."""
        iou, dice = self.iou().cpu(), self.dice().cpu()
        names = class_names or [str(i) for i in range(self.k)]
        total = self.mat.sum().item()
        return {
            "miou": _nanmean(iou),
            "miou_no_bg": _nanmean(iou[1:]) if self.k > 1 else float("nan"),
            "mdice": _nanmean(dice),
            "pixel_acc": self.mat.diag().sum().item() / total if total else float("nan"),
            "iou": {n: _num(v) for n, v in zip(names, iou.tolist())},
            "dice": {n: _num(v) for n, v in zip(names, dice.tolist())},
        }


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return x.mean().item() if len(x) else float("nan")


def _num(v: float):
    return None if v != v else round(v, 6)      # NaN -> null in JSON


# -- 3D overlap and surface distances of binary volumes (ACDC's per-volume scores) -----------------------
# As medpy.metric.binary computes them (the SSL4MIS evaluation; tests/test_metrics_medpy.py compares):
# surfaces are the voxels that a 6-connected erosion removes (voxels on the volume's edge count),
# distances in voxels, or in the units of `spacing` (one length per axis) when given.

def surface_distances(a, b, spacing=None):
    """Distances from each surface voxel of a to the nearest surface voxel of b (both non-empty bool)."""
    footprint = ndimage.generate_binary_structure(a.ndim, 1)
    a_border = a ^ ndimage.binary_erosion(a, structure=footprint, iterations=1)
    b_border = b ^ ndimage.binary_erosion(b, structure=footprint, iterations=1)
    return ndimage.distance_transform_edt(~b_border, sampling=spacing)[a_border].astype(np.float64)


def binary_scores(pred, truth, spacing=None) -> dict:
    """Dice, IoU, HD95 and ASD of one structure (bool arrays of one shape; spacing: voxel sizes per axis).

    Where both are non-empty: medpy's dc, jc, hd95 and asd. Empty cases: Dice and IoU are NaN when the
    structure is absent from both (medpy: Dice NaN too, IoU 1) and 0 when it is in only one; HD95 and
    ASD are NaN when either is empty (undefined: medpy raises; SSL4MIS's validation code reports 0 for an
    empty prediction). NaN scores are left out of the means and counted."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter, ps, ts = np.logical_and(pred, truth).sum(), pred.sum(), truth.sum()
    out = {"dice": 2 * inter / (ps + ts) if ps + ts else float("nan"),
           "iou": inter / (ps + ts - inter) if ps + ts else float("nan"),
           "hd95": float("nan"), "asd": float("nan")}
    if ps and ts:
        d_pt, d_tp = surface_distances(pred, truth, spacing), surface_distances(truth, pred, spacing)
        out["hd95"] = float(np.percentile(np.hstack((d_pt, d_tp)), 95))
        out["asd"] = float(d_pt.mean())
    return {k: float(v) for k, v in out.items()}
