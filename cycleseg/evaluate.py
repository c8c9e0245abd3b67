"""Evaluation of G_IS, in training and as a command.

    python -m cycleseg.evaluate CHECKPOINT [--data PATH] [--split val|test|train] [--out DIR]

Slice metrics over a split: the confusion matrix of every labeled pixel (ignored pixels count nowhere),
then standard mIoU over all classes, per-class IoU and Dice, pixel accuracy, and the 2019 code's mIoU
without the background class (labelled as such). For ACDC (an SSL4MIS folder, or a file converted from
one) also the per-volume scores of that literature: each volume segmented slice by slice, then 3D Dice,
IoU, HD95 and ASD (in voxels, as SSL4MIS computes them with medpy) per structure, averaged over volumes.
From a folder the slices are resized to the training size and the prediction back to the volume's
native size (nearest); a converted file is scored at its own resolution.

The command writes report.json, confusion.csv and confusion.png (and volumes.csv for ACDC) into --out
(default: eval-<split>-<checkpoint name>[-<data name>] beside the checkpoint), all or nothing, and prints
a table. An earlier evaluation there is not replaced unless --overwrite.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from .data import acdc
from .data.pixels import to_input
from .metrics import ConfusionMatrix, binary_scores

STRUCTURE_SCORES = ("dice", "iou", "hd95", "asd")


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


def batches(source, batch_size: int, progress: bool = False, desc: str = "evaluate", indices=None):
    """(indices, images uint8, masks uint8) of the images `indices` (default: all) of an H5Source, in order."""
    from tqdm import tqdm

    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    for s in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress, leave=False):
        idx = indices[s:s + batch_size]
        yield (idx, *source.batch(idx))


@torch.no_grad()
def confusion(g_is, source, device, batch_size: int = 16, progress: bool = False, indices=None) -> ConfusionMatrix:
    """The confusion matrix of G_IS over the images `indices` (default: all) of `source`."""
    meta = source.meta
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index, device)
    with eval_mode(g_is):
        for _, images, masks in batches(source, batch_size, progress, indices=indices):
            cm.update(predict(g_is, to_input(images, device)), masks.to(device))
    return cm


def evaluate(g_is, source, device, batch_size: int = 16, class_names=None) -> dict:
    """Standard metrics of G_IS over every image of `source` (an H5Source)."""
    cm = confusion(g_is, source, device, batch_size)
    return cm.summary(class_names or source.meta.class_names)


# -- per-volume scores (ACDC) -------------------------------------------------------------------------

def volume_scores(pred: np.ndarray, label: np.ndarray, num_classes: int = 4, surfaces: bool = True) -> dict:
    """{score: (K - 1,) array}: Dice, IoU (and HD95, ASD when `surfaces`) of each foreground class of one
    3D volume (metrics.binary_scores; NaN where undefined)."""
    rows = []
    for c in range(1, num_classes):
        p, t = pred == c, label == c
        if surfaces:
            rows.append(binary_scores(p, t))
        else:
            inter, ps, ts = np.logical_and(p, t).sum(), p.sum(), t.sum()
            rows.append({"dice": 2 * inter / (ps + ts) if ps + ts else np.nan,
                         "iou": inter / (ps + ts - inter) if ps + ts else np.nan})
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}


@torch.no_grad()
def folder_volumes(g_is, src, split: str, size: int, device, batch_size: int = 16, progress: bool = False):
    """(name, prediction, label) of each volume of an SSL4MIS folder's split, at native resolution."""
    from tqdm import tqdm

    with eval_mode(g_is):
        for name in tqdm(acdc.volume_names(src, split), desc=f"volumes ({split})", disable=not progress, leave=False):
            image, label = acdc.read_volume(src, name)
            x = acdc.slices_to_input(image, size)                       # (D, 1, size, size)
            pred = torch.cat([predict(g_is, x[s:s + batch_size].to(device)).cpu()
                              for s in range(0, len(x), batch_size)]).numpy()
            yield name, acdc.resize_back(pred, label.shape[1:]), label


@torch.no_grad()
def file_volumes(g_is, source, device, batch_size: int = 16, progress: bool = False):
    """(name, prediction, label) of each volume of a converted file with `volumes`, at its resolution."""
    preds, masks = [], []
    with eval_mode(g_is):
        for _, images, m in batches(source, batch_size, progress, "volumes"):
            preds.append(predict(g_is, to_input(images, device)).cpu().numpy())
            masks.append(m.numpy())
    preds, masks = np.concatenate(preds), np.concatenate(masks)
    for v, name in enumerate(source.meta.volume_names):
        sel = source.volumes == v
        yield name, preds[sel], masks[sel]


def summarize_volumes(volumes, structures, surfaces: bool = True) -> dict:
    """Per-volume scores averaged over volumes (NaN left out, and counted)."""
    per_volume, stacks = [], {}
    for name, pred, label in volumes:
        s = volume_scores(pred, label, len(structures) + 1, surfaces)
        per_volume.append({"volume": name, **{k: dict(zip(structures, map(_num, v))) for k, v in s.items()}})
        for k, v in s.items():
            stacks.setdefault(k, []).append(v)
    out = {"count": len(per_volume), "per_structure": {}, "mean": {}, "undefined": {}, "per_volume": per_volume}
    with np.errstate(all="ignore"), _quiet():
        for k, rows in stacks.items():
            a = np.array(rows)                                            # (V, K - 1)
            means = np.nanmean(a, axis=0)
            for i, st in enumerate(structures):
                out["per_structure"].setdefault(st, {})[k] = _num(means[i])
            out["mean"][k] = _num(np.nanmean(means))
            out["undefined"][k] = int(np.isnan(a).sum())
    return out


def evaluate_volumes(g_is, src, size: int, device, split: str = "val", batch_size: int = 16) -> dict:
    """Per-volume 3D Dice / IoU of G_IS on an SSL4MIS folder's split (the training-time validation)."""
    v = summarize_volumes(folder_volumes(g_is, src, split, size, device, batch_size), acdc.CLASSES[1:],
                          surfaces=False)
    return {"volume_mdice": v["mean"]["dice"], "volume_miou": v["mean"]["iou"],
            "volume_dice": {k: s["dice"] for k, s in v["per_structure"].items()},
            "volume_iou": {k: s["iou"] for k, s in v["per_structure"].items()}, "volumes": v["count"]}


def _num(v):
    v = float(v)
    return None if v != v else round(v, 6)


class _quiet:
    """Silences numpy's 'mean of empty slice' warnings (an all-NaN column is reported as NaN)."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# -- the command --------------------------------------------------------------------------------------

def report_table(r: dict) -> str:
    s = r["slices"]
    lines = [f"{r['checkpoint']} (step {r['step']}) on {r['data']}, split {r['split']}: {r['images']} images",
             f"mIoU {s['miou']:.4f} (standard: all classes, ignored pixels excluded)   mDice {s['mdice']:.4f}   "
             f"pixel accuracy {s['pixel_acc']:.4f}",
             f"mIoU without background (the 2019 code's variant, for comparison with the paper) {s['miou_no_bg']:.4f}",
             "", f"{'class':20s} {'IoU':>7s} {'Dice':>7s}"]
    for name in s["iou"]:
        iou, dice = s["iou"][name], s["dice"][name]
        lines.append(f"{name:20s} {_fmt(iou):>7s} {_fmt(dice):>7s}")
    if r["absent_classes"]:
        lines.append(f"absent from both prediction and truth (NaN, left out of the means): {', '.join(r['absent_classes'])}")
    v = r.get("volumes")
    if v:
        lines += ["", f"per volume: {v['count']} volumes, {v['resolution']}; HD95 and ASD in voxels",
                  f"{'structure':20s} {'Dice':>7s} {'IoU':>7s} {'HD95':>7s} {'ASD':>7s}"]
        for st, sc in v["per_structure"].items():
            lines.append(f"{st:20s} " + " ".join(f"{_fmt(sc[k]):>7s}" for k in STRUCTURE_SCORES))
        lines.append(f"{'mean':20s} " + " ".join(f"{_fmt(v['mean'][k]):>7s}" for k in STRUCTURE_SCORES))
        und = {k: n for k, n in v["undefined"].items() if n}
        if und:
            lines.append("undefined (a structure empty in prediction or truth; left out of the means): " +
                         ", ".join(f"{k} {n}" for k, n in und.items()))
    return "\n".join(lines)


def _fmt(v) -> str:
    return "NaN" if v is None else f"{v:.4f}"


def confusion_png(mat: np.ndarray, names) -> bytes:
    """A heat map of the confusion matrix, rows = truth normalised to 1, with class names and %."""
    from PIL import Image, ImageDraw

    k = len(names)
    cell, left, top = 44, max(60, 7 * max(len(n) for n in names) + 10), max(60, 7 * max(len(n) for n in names) + 10)
    img = Image.new("RGB", (max(left + k * cell + 10, 440), top + k * cell + 30), "white")
    draw = ImageDraw.Draw(img)
    rows = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, rows, out=np.zeros(mat.shape, dtype=np.float64), where=rows > 0)
    for i in range(k):
        draw.text((5, top + i * cell + cell // 2 - 5), names[i], fill="black")
        label = Image.new("RGB", (top - 5, 12), "white")
        ImageDraw.Draw(label).text((0, 0), names[i], fill="black")
        img.paste(label.rotate(90, expand=True), (left + i * cell + cell // 2 - 6, 5))
        for j in range(k):
            f = frac[i, j]
            shade = int(255 * (1 - f))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((x0 + 6, y0 + cell // 2 - 5), f"{100 * f:.0f}%", fill="white" if f > 0.5 else "black")
    draw.text((left, top + k * cell + 8), "rows: truth (each sums to 100 %), columns: prediction", fill="black")
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main(argv=None) -> int:
    from .cli import checkpoint_parser, run_or_exit

    p = checkpoint_parser("python -m cycleseg.evaluate", __doc__)
    p.add_argument("--data", default=None, help="data to evaluate (default: the data the checkpoint was trained on)")
    p.add_argument("--val-data", default=None, help="the val split's .h5 when --data is a train file")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: eval-<split>-<name> beside the checkpoint)")
    code, result = run_or_exit(run, p.parse_args(argv))
    if code:
        return code
    report, files = result
    print(report_table(report))
    print(f"\nwrote {', '.join(sorted(files))} in {report['out']}")
    return 0


def run(a) -> tuple[dict, dict]:
    from .checkpoint import load_run
    from .cli import device_of, refuse_existing
    from .config import UsageError, check_image_side
    from .data.h5format import DataError
    from .data.splits import eval_split, open_source
    from .fileio import write_files
    from .models import networks_from_checkpoint

    state = load_run(a.checkpoint)
    cfg, info, nets = networks_from_checkpoint(state, a.checkpoint)
    device = device_of(a.device)
    data = a.data if a.data is not None else cfg.data
    val_data = a.val_data if a.data is not None else cfg.val_data
    path, folder = eval_split(data, a.split, val_data, cfg.image_size or 64, not a.no_progress)
    source = open_source(path)
    meta = source.meta
    for what, have, want in (("classes", meta.num_classes, info["num_classes"]), ("channels", meta.channels, info["channels"])):
        if have != want:
            raise DataError(f"{path}: {have} {what}, but the checkpoint {a.checkpoint} was trained with {want}")
    try:
        for side in (meta.height, meta.width):
            check_image_side(side, "partial", f"images {meta.height}x{meta.width}")
    except UsageError as e:
        raise DataError(f"{path}: {e}") from None
    g_is = nets["G_IS"].to(device)
    cm = confusion(g_is, source, device, a.batch_size, not a.no_progress)
    summary = cm.summary(meta.class_names)
    absent = [n for n, v in summary["iou"].items() if v is None]
    report = {"checkpoint": str(a.checkpoint), "step": state.get("step"), "data": str(path), "split": a.split,
              "images": len(source), "slices": summary, "absent_classes": absent}
    if folder is not None or source.volumes is not None:
        if folder is not None:
            vols = folder_volumes(g_is, folder, a.split, cfg.image_size, device, a.batch_size, not a.no_progress)
            where = "native resolution (from the SSL4MIS folder)"
        else:
            vols = file_volumes(g_is, source, device, a.batch_size, not a.no_progress)
            where = f"the file's resolution ({meta.height}x{meta.width})"
        report["volumes"] = {**summarize_volumes(vols, meta.class_names[1:]), "resolution": where}
    out = a.out or a.checkpoint.parent / default_folder(a, Path(data) if a.data is not None else None)
    report["out"] = str(out)
    mat = cm.mat.cpu().numpy()
    names = list(meta.class_names)
    csv = "truth \\ prediction," + ",".join(names) + "\n" + "".join(
        f"{names[i]}," + ",".join(str(int(v)) for v in mat[i]) + "\n" for i in range(len(names)))
    files = {"report.json": json.dumps(report, indent=2).encode(), "confusion.csv": csv.encode(),
             "confusion.png": confusion_png(mat, names)}
    if "volumes" in report:
        rows = ["volume,structure," + ",".join(STRUCTURE_SCORES)]
        for v in report["volumes"]["per_volume"]:
            for st in meta.class_names[1:]:
                rows.append(f"{v['volume']},{st}," + ",".join("" if v[k][st] is None else str(v[k][st])
                                                               for k in STRUCTURE_SCORES))
        files["volumes.csv"] = ("\n".join(rows) + "\n").encode()
    refuse_existing([out / name for name in files], a.overwrite, "an earlier evaluation")
    write_files(out, files)
    return report, files


def default_folder(a, data: Path | None) -> str:
    """eval-<split>-<checkpoint name>, and -<data name> when --data is not the run's own."""
    tag = "" if data is None else "-" + (data.name if data.is_dir() else data.stem)
    return f"eval-{a.split}-{a.checkpoint.stem}{tag}"


if __name__ == "__main__":
    sys.exit(main())
