"""Segmentation metrics: a confusion matrix accumulated on the device (no host sync per batch), the 3D
scores of binary volumes, and `python -m cycleseg.metrics PRED TRUTH`, which scores folders of label
volumes (NIfTI) against reference ones, in millimetres.

Standard mIoU: IoU_c = TP / (TP + FP + FN) for every class c with a non-empty union, averaged over
those classes; pixels at ignore_index count nowhere. Also the 2019 code's VOC variant ("miou_no_bg":
background row and column dropped), named as such, so numbers can be set beside the paper's.
"""
from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .data import nifti
from .data.h5format import DataError, names_problem
from .fileio import write_files
from .report import csv_bytes, csv_line
from .usage import Parser, fail, path_arg, printable, run_command


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


def image_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(N,) per-image Dice of (N, H, W) class ids: the mean over the foreground classes (1..K-1) present in
    the image's truth or prediction (ignored pixels count nowhere); NaN for an image with neither."""
    valid = truth != ignore_index
    scores = np.full((len(pred), num_classes - 1), np.nan)
    for c in range(1, num_classes):
        p, t = (pred == c) & valid, (truth == c) & valid
        inter, total = (p & t).sum(axis=(1, 2)), p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
        scores[:, c - 1] = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)             # an image with no class at all: NaN
        return np.nanmean(scores, axis=1)


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


# -- the command: label volumes against reference ones ---------------------------------------------------

def case_key(path, what: str = "reference") -> str:
    """The name a volume is matched by: its file name without .nii[.gz], and a reference's without ACDC's
    `_gt` (a prediction's nnU-Net channel suffix `_0000` is dropped by match_predictions where that names a
    reference)."""
    name = nifti.stem(path)
    return name[:-3] if what == "reference" and name.endswith("_gt") else name


def ignored_reference(f: Path, stems: set) -> bool:
    """Raw ACDC's image files beside their labels: a frame's image whose `<name>_gt` lies in its folder, and
    the 4D series of a folder that holds `_gt` labels (any other volume there is a reference)."""
    name = nifti.stem(f)
    if name.endswith("_gt"):
        return False
    labels = any(n.endswith("_gt") for n in stems)
    return f"{name}_gt" in stems or (labels and name.lower().endswith("_4d"))


def volume_files(folder, what: str) -> dict:
    """{key: path} of the NIfTI volumes under `folder` (searched recursively); DataError when it holds none or
    two files share a key."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (the {what} label volumes)")
    files = [f for f in sorted(folder.rglob("*")) if f.is_file() and nifti.is_nifti(f) and not f.name.startswith(".")]
    stems: dict = {}
    for f in files:
        stems.setdefault(f.parent, set()).add(nifti.stem(f))
    out = {}
    for f in files:
        if what == "reference" and ignored_reference(f, stems[f.parent]):
            continue
        k = case_key(f, what)
        if k in out:
            raise DataError(f"{f} and {out[k]} are both volume {k!r} of the {what}")
        out[k] = f
    if not out:
        raise DataError(f"{folder}: no NIfTI volumes (.nii, .nii.gz) among the {what}")
    return out


def match_predictions(preds: dict, truths: dict) -> dict:
    """preds re-keyed by the reference each names: its own name, or that name without nnU-Net's channel suffix
    `_0000` (predict names a scan's prediction as the scan, case_0000) where only that is a reference's;
    DataError when two predictions name one reference."""
    out = {}
    for k, path in preds.items():
        key = k[:-5] if k not in truths and re.fullmatch(r".+_0000", k) and k[:-5] in truths else k
        if key in out:
            raise DataError(f"{path} and {out[key]} are both the prediction of {key!r}; keep one")
        out[key] = path
    return out


def reference_top(path) -> int:
    """A reference volume's largest label; DataError naming it when that is no class id (0..254): the classes
    are counted from it, and a label of 10^9 made a list of 10^9 class names (the machine ran out of memory)."""
    data = np.asarray(nifti.load(path, "label").data)
    top = data.max()
    if not top <= 254:
        raise DataError(f"{path}: label value {top:g} ({int((data > 254).sum())} voxels) outside the class ids 0..254")
    return int(top)


def score_case(pred_path, truth_path, num_classes: int, hint: str = "") -> tuple:
    """(per-class score rows, spacing) of one predicted volume against its reference; DataError when the
    two lie on different grids, or the prediction holds a class beyond num_classes (`hint`: how it was set)."""
    truth = nifti.load(truth_path, "label")
    # the reference first: a bad value is the reference's
    ref = nifti.load_label(truth_path, truth, num_classes, role="reference", hint=hint)
    pred = nifti.load_label(pred_path, truth, num_classes, role="prediction", of="reference", hint=hint)
    rows = [binary_scores(pred == c, ref == c, truth.spacing) for c in range(1, num_classes)]
    return rows, truth.spacing


def score_folders(pred_dir, truth_dir, num_classes: int | None = None, class_names=None) -> dict:
    """Dice, IoU, HD95 and ASD (mm, from the reference's affine) per case and class, and their means."""
    truths = volume_files(truth_dir, "reference")
    preds = match_predictions(volume_files(pred_dir, "predictions"), truths)
    refs = {Path(t).resolve() for t in truths.values()}
    same = [p for p in preds.values() if Path(p).resolve() in refs]
    if same:                                                        # a file scored against itself: Dice 1.0
        raise DataError(f"{same[0]} is both a prediction and a reference ({len(same)} such files): give "
                        f"the folder of predictions and the folder of references")
    missing, extra = sorted(set(truths) - set(preds)), sorted(set(preds) - set(truths))
    if missing:
        raise DataError(f"{pred_dir} lacks cases of {truth_dir}: no prediction for {', '.join(missing[:3])}"
                        + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    hint = (f"; {num_classes} classes were given (--num-classes, or the names --classes lists)"
            if num_classes is not None else "")
    if num_classes is None:
        num_classes = 1 + max(reference_top(p) for p in truths.values())
        hint = (f"; the classes were counted from the references (their largest label + 1 = {num_classes}): if a "
                f"class is absent from every reference, pass --num-classes K")
        if num_classes < 2:
            raise DataError(f"the references in {truth_dir} hold background (0) only, so the classes cannot be counted "
                            f"from them; pass --num-classes K (or --classes with K names)")
    names = class_names or [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"--classes names {len(names)} classes, but there are {num_classes}")
    cases = []
    for key in sorted(truths):
        rows, spacing = score_case(preds[key], truths[key], num_classes, hint)
        cases.append({"case": key, "prediction": str(preds[key]), "reference": str(truths[key]),
                      "spacing_mm": [round(s, 6) for s in spacing],
                      **{k: {names[c + 1]: _num(r[k]) for c, r in enumerate(rows)} for k in SCORES}})
    return {"cases": cases, "classes": names[1:], "units": "mm", "unscored": [str(preds[k]) for k in extra],
            **summarize(cases, names[1:])}


SCORES = ("dice", "iou", "hd95", "asd")


def summarize(cases: list, classes) -> dict:
    """Means over cases per class (a case where a score is undefined is left out, and counted), and over
    classes."""
    per_class, undefined = {}, {}
    for k in SCORES:
        for c in classes:
            v = [x[k][c] for x in cases if x[k][c] is not None]
            per_class.setdefault(c, {})[k] = _num(np.mean(v)) if v else None
            undefined[k] = undefined.get(k, 0) + len(cases) - len(v)
    mean = {k: _num(np.mean([per_class[c][k] for c in classes if per_class[c][k] is not None]))
            if any(per_class[c][k] is not None for c in classes) else None for k in SCORES}
    return {"per_class": per_class, "mean": mean, "undefined": undefined}


def scores_csv(result: dict) -> str:
    rows = ["case,class," + ",".join(SCORES)]
    for x in result["cases"]:
        for c in result["classes"]:
            rows.append(csv_line(x["case"], c, *(x[k][c] for k in SCORES)))
    return "\n".join(rows) + "\n"


def scores_table(result: dict) -> str:
    lines = [f"{len(result['cases'])} cases; HD95 and ASD in mm", f"{'class':16s} {'Dice':>7s} {'IoU':>7s} "
             f"{'HD95':>7s} {'ASD':>7s}"]
    fmt = (lambda v: "-" if v is None else f"{v:.4f}")
    for c in result["classes"]:
        lines.append(f"{printable(c):16s} " + " ".join(f"{fmt(result['per_class'][c][k]):>7s}" for k in SCORES))
    lines.append(f"{'mean':16s} " + " ".join(f"{fmt(result['mean'][k]):>7s}" for k in SCORES))
    und = {k: n for k, n in result["undefined"].items() if n}
    if und:
        lines.append("undefined (a class empty in prediction or reference; left out of the means): "
                     + ", ".join(f"{k} {n}" for k, n in und.items()))
    if result["unscored"]:
        lines.append(f"not scored (no reference of that name): {len(result['unscored'])} predictions, e.g. "
                     f"{result['unscored'][0]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = Parser(prog="python -m cycleseg.metrics", description=COMMAND_DOC)
    p.add_argument("pred", type=path_arg, help="folder of predicted label volumes (.nii / .nii.gz)")
    p.add_argument("truth", type=path_arg, help="folder of reference label volumes, matched by name")
    p.add_argument("--num-classes", type=int, default=None, help="K (default: the largest reference label + 1)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="the K class names, background first (default: the class numbers)")
    p.add_argument("--out", type=path_arg, default=None, help="folder for scores.csv and scores.json (default: PRED)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier scores there")
    a = p.parse_args(argv)
    try:
        if a.num_classes is not None and not 2 <= a.num_classes <= 255:
            raise DataError(f"--num-classes must be 2..255, got {a.num_classes}")
        if a.classes is not None and not 2 <= len(a.classes) <= 255:
            raise DataError(f"--classes names {len(a.classes)} class(es); give 2..255 names, background first")
        if a.classes is not None and (problem := names_problem(a.classes, len(a.classes))):
            raise DataError(f"--classes: {problem}")
        k = a.num_classes or (len(a.classes) if a.classes else None)
        result = score_folders(a.pred, a.truth, k, a.classes)
        out = a.out or a.pred
        found = [out / n for n in ("scores.csv", "scores.json") if (out / n).exists()]
        if found and not a.overwrite:
            raise DataError(f"{found[0]} exists already; pass --overwrite to replace it, or choose another --out")
        write_files(out, {"scores.csv": csv_bytes(scores_csv(result)),
                          "scores.json": json.dumps(result, indent=2).encode()}, replace=a.overwrite)
    except (DataError, OSError) as e:
        return fail(e)
    print(scores_table(result))
    print(f"\nwrote scores.csv, scores.json in {out}")
    return 0


COMMAND_DOC = """python -m cycleseg.metrics PRED TRUTH [--out DIR]: score label volumes against reference ones.

Volumes are matched by name (file name without .nii[.gz]; a reference's trailing _gt, and a prediction's
nnU-Net channel suffix _0000 where the name without it is a reference's; a raw ACDC tree of patient
folders works as TRUTH: a frame's image beside its _gt, and the 4D series, are not references). Every reference needs its prediction; predictions
without a reference (a 4D series, say) are listed as not scored. Per case and class: Dice, IoU, HD95 and ASD, the
distances in millimetres from the reference's affine (as medpy.metric.binary's hd95 / asd with
voxelspacing), then means per class over cases and over classes. Prediction and reference must lie on
one grid (shape and affine). Writes scores.csv and scores.json."""


if __name__ == "__main__":
    sys.exit(run_command(main))
