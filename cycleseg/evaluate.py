"""Evaluation of G_IS, in training and as a command.

    python -m cycleseg.evaluate CHECKPOINT [--data PATH] [--split val|test|train] [--out DIR]

Slice metrics over a split: the confusion matrix of every labeled pixel (ignored pixels count nowhere),
then standard mIoU over all classes, per-class IoU and Dice, pixel accuracy, and the 2019 code's mIoU
without the background class (labelled as such). For ACDC (an SSL4MIS folder, or a file converted from
one) also the per-volume scores of that literature: each volume segmented slice by slice, then 3D Dice,
IoU, HD95 and ASD per structure, averaged over volumes: in millimetres where the data knows its spacing
(a file converted from NIfTI: the stored slices' voxel size), else in voxels (the SSL4MIS copy, as
SSL4MIS computes them with medpy), the report saying which. From an SSL4MIS folder the slices are
resized to the training size and the prediction back to the volume's native size (nearest); a converted
file is scored at its own resolution (python -m cycleseg.predict + python -m cycleseg.metrics score
NIfTI scans on their own grid).

The command writes report.json, confusion.csv and confusion.png (and volumes.csv for ACDC) into --out
(default: eval-<split>-<checkpoint name>[-<data name>] beside the checkpoint; a --data file is scored as it
is, whatever split it holds, into eval-<checkpoint name>-<file name>), all or nothing, and prints
a table (report.py formats, figures.py draws). An earlier evaluation there is not replaced unless
--overwrite. G_IS runs by cycleseg's inference path (inference.py: fused ops, channels_last, bf16 where
the device runs it natively; `--precision fp32` keeps fp32).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import figures, inference, report
from .checkpoint import check_fingerprints, load_run, networks_from_checkpoint
from .cli import checkpoint_parser, device_of, refuse_existing, run_or_exit
from .config import check_image_side
from .data import acdc
from .data.h5format import DataError
from .data.pixels import to_input
from .data.source import open_source
from .data.splits import check_labeled, is_builtin, split_path
from .fileio import write_files
from .metrics import ConfusionMatrix, binary_scores
from .usage import UsageError, path_arg, path_text, run_command


def batches(source, batch_size: int, progress: bool = False, desc: str = "evaluate", indices=None):
    """(indices, images uint8, masks uint8) of the images `indices` (default: all) of an H5Source, in order."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    for s in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress, leave=False):
        idx = indices[s:s + batch_size]
        yield (idx, *source.batch(idx))


def confusion(g_is, source, device, batch_size: int = 16, progress: bool = False, indices=None) -> ConfusionMatrix:
    """The confusion matrix of G_IS over the images `indices` (default: all) of `source`."""
    meta = source.meta
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index, device)
    for _, images, masks in batches(source, batch_size, progress, indices=indices):
        cm.update(inference.segment(g_is, to_input(images, device)), masks.to(device))
    return cm


@torch.no_grad()
def precision_agreement(path, limit: int | None = None, volumes: bool = False) -> dict:
    """bf16 inference against fp32 for a checkpoint's G_IS on the first `limit` (default all) validation slices
    of its data: {"slices", "generator", "agreement" (the argmax's, per pixel), "miou" and, with `volumes` on
    data that has them, "volume_mdice" ({precision: score})}. The tests' check and precision_check.py's."""
    state = load_run(path)
    cfg, _, built = networks_from_checkpoint(state, path)
    nets = {"fp32": inference.prepare(built["G_IS"], "cpu", "fp32"),          # prepare changes it: a second copy
            "bf16": inference.prepare(networks_from_checkpoint(state, path)[2]["G_IS"], "cpu", "bf16")}
    val, folder = split_path(cfg.data, "val", cfg.val_data, cfg.image_size, False)
    source = open_source(val)
    indices = np.arange(len(source) if limit is None else min(limit, len(source)))
    same = total = 0
    for _, images, _ in batches(source, 32, indices=indices):
        x = to_input(images, "cpu")
        a, b = (inference.segment(nets[p], x) for p in ("fp32", "bf16"))
        same, total = same + int((a == b).sum()), total + a.numel()
    out = {"slices": len(indices), "generator": cfg.generator, "agreement": same / total,
           "miou": {p: confusion(n, source, "cpu", indices=indices).summary(source.meta.class_names)["miou"]
                    for p, n in nets.items()}}
    if volumes and folder is not None:
        out["volume_mdice"] = {p: evaluate_volumes(n, folder, cfg.image_size, "cpu")["volume_mdice"] for p, n in nets.items()}
    return out


def samples(nets: dict, source, device, count: int = 4) -> dict:
    """`count` images spread evenly over `source` (its first and last included) with their truth, G_IS's
    prediction and (when the model has G_SI) G_SI's image of the truth, as uint8 arrays (figures.sample_grid
    draws them)."""
    meta = source.meta
    idx = np.unique(np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(np.int64))
    images, masks = source.batch(idx)                                   # (N, C, H, W), (N, H, W)
    x, y = to_input(images, device), masks.to(device)
    pred = inference.segment(nets["G_IS"], x).cpu().numpy()
    gsi = inference.synthesize(nets["G_SI"], y, meta.num_classes, meta.ignore_index).numpy() if "G_SI" in nets else None
    return {"images": images.permute(0, 2, 3, 1).numpy(), "masks": masks.numpy(), "predictions": pred, "gsi": gsi}


# -- per-volume scores (ACDC) -------------------------------------------------------------------------

def volume_scores(pred: np.ndarray, label: np.ndarray, num_classes: int = 4, surfaces: bool = True,
                  spacing=None) -> dict:
    """{score: (K - 1,) array}: Dice, IoU (and HD95, ASD when `surfaces`: in the units of `spacing`, one
    length per axis, or voxels) of each foreground class of one 3D volume (metrics.binary_scores; NaN
    where undefined)."""
    rows = []
    for c in range(1, num_classes):
        p, t = pred == c, label == c
        if surfaces:
            rows.append(binary_scores(p, t, spacing))
        else:
            inter, ps, ts = np.logical_and(p, t).sum(), p.sum(), t.sum()
            rows.append({"dice": 2 * inter / (ps + ts) if ps + ts else np.nan,
                         "iou": inter / (ps + ts - inter) if ps + ts else np.nan})
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}


def folder_volumes(g_is, src, split: str, size: int, device, batch_size: int = 16, progress: bool = False):
    """(name, prediction, label) of each volume of an SSL4MIS folder's split, at native resolution."""
    for name in tqdm(acdc.volume_names(src, split), desc=f"volumes ({split})", disable=not progress, leave=False):
        image, label = acdc.read_volume(src, name)
        x = acdc.slices_to_input(image, size)                           # (D, 1, size, size)
        pred = torch.cat([inference.segment(g_is, x[s:s + batch_size].to(device)).cpu()
                          for s in range(0, len(x), batch_size)]).numpy()
        yield name, acdc.resize_back(pred, label.shape[1:]), label, None


def file_volumes(g_is, source, device, batch_size: int = 16, progress: bool = False):
    """(name, prediction, label, spacing) of each volume of a converted file with `volumes`, at its
    resolution; spacing: the millimetres of its voxels (slice, row, column) when the file knows them
    (volume_info: NIfTI conversions), else None (voxels)."""
    preds, masks = [], []
    for _, images, m in batches(source, batch_size, progress, "volumes"):
        preds.append(inference.segment(g_is, to_input(images, device)).cpu().numpy())
        masks.append(m.numpy())
    preds, masks = np.concatenate(preds), np.concatenate(masks)
    info = source.meta.volume_info
    for v, name in enumerate(source.meta.volume_names):
        sel = source.volumes == v
        if source.labeled is not None and not source.labeled[sel].any():
            continue                                                    # an unlabeled scan: nothing to score
        yield name, preds[sel], masks[sel], (tuple(info[v]["slice_spacing"]) if info else None)


def summarize_volumes(volumes, structures, surfaces: bool = True) -> dict:
    """Per-volume scores averaged over volumes (NaN left out, and counted); `units` says what HD95 and ASD
    are measured in: "mm" when every volume came with its spacing, else "voxels"."""
    per_volume, stacks, units = [], {}, set()
    for name, pred, label, spacing in volumes:
        units.add("voxels" if spacing is None else "mm")
        s = volume_scores(pred, label, len(structures) + 1, surfaces, spacing)
        per_volume.append({"volume": name, **{k: dict(zip(structures, map(_num, v))) for k, v in s.items()}})
        for k, v in s.items():
            stacks.setdefault(k, []).append(v)
    out = {"count": len(per_volume), "per_structure": {}, "mean": {}, "undefined": {}, "per_volume": per_volume,
           "distance_units": "mm" if units == {"mm"} else "voxels"}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)             # an all-NaN column is reported as NaN
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
    return volume_overlap(summarize_volumes(folder_volumes(g_is, src, split, size, device, batch_size),
                                            acdc.CLASSES[1:], surfaces=False))


def evaluate_file_volumes(g_is, source, device, batch_size: int = 16) -> dict:
    """The same for a converted file whose slices carry their volumes (NIfTI, ACDC conversions)."""
    return volume_overlap(summarize_volumes(file_volumes(g_is, source, device, batch_size),
                                            source.meta.class_names[1:], surfaces=False))


def volume_overlap(v: dict) -> dict:
    return {"volume_mdice": v["mean"]["dice"], "volume_miou": v["mean"]["iou"],
            "volume_dice": {k: s["dice"] for k, s in v["per_structure"].items()},
            "volume_iou": {k: s["iou"] for k, s in v["per_structure"].items()}, "volumes": v["count"]}


def _num(v):
    v = float(v)
    return None if v != v else round(v, 6)


# -- the command --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = checkpoint_parser("python -m cycleseg.evaluate", __doc__)
    p.add_argument("--data", type=path_text, default=None, help="data to evaluate: a converted .h5 file (scored as it is), or a folder "
                                                "whose --split is scored (default: the checkpoint's own data)")
    p.add_argument("--val-data", type=path_text, default=None, help="the val split's .h5 when --data is a train file")
    p.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="the split of the run's data or of a --data folder (default: val); not with a --data file")
    p.add_argument("--out", type=path_arg, default=None,
                   help="output folder (default: eval-<split>-<name>[-<data>] beside the checkpoint; "
                        "eval-<name>-<file> for a --data file)")
    code, result = run_or_exit(run, p.parse_args(argv))
    if code:
        return code
    result_report, files = result
    print(report.evaluation_table(result_report))
    print(f"\nwrote {', '.join(sorted(files))} in {result_report['out']}")
    return 0


def run(a) -> tuple[dict, dict]:
    """(report, {file name: bytes}) of the evaluation the options `a` ask for, written into its folder."""
    state = load_run(a.checkpoint)
    cfg, info, nets = networks_from_checkpoint(state, a.checkpoint)
    device = device_of(a.device)
    if a.val_data is not None and a.data is None:
        raise UsageError("--val-data names the val split beside a --data train file; give --data too (without "
                         "--data the checkpoint's own data is scored)")
    data = a.data if a.data is not None else cfg.data
    val_data = a.val_data if a.data is not None else cfg.val_data
    if a.data is not None and Path(a.data).is_file() and a.val_data is None:   # a file named: that file
        if a.split is not None:                                     # it was scored, and reported as the split asked
            raise UsageError(f"--split {a.split} with --data {a.data}: a file is scored as it is, whatever split it "
                             f"holds; leave --split out, or give --data its folder ({Path(a.data).parent}) to score "
                             f"the {a.split}.h5 there")
        path, folder = Path(a.data), None
    else:
        a.split = a.split or "val"
        path, folder = split_path(data, a.split, val_data, cfg.image_size or 64, not a.no_progress)
    source = open_source(path)
    meta = source.meta
    if a.data is None and a.split in ("train", "val"):             # the run's own data: still what it read?
        check_fingerprints(state, {a.split: source.fingerprint()}, {a.split: path}, a.checkpoint, (a.split,))
    check_readable(source, info, path, a.checkpoint, cfg.generator)
    note_training_images(state, source, path, a.split)
    check_labeled(source, "the file" if a.split is None else f"the {a.split} split",
                  "give --data a split with labels (predict draws masks without them)")
    g_is = inference.prepare(nets["G_IS"], device, a.precision)
    cm = confusion(g_is, source, device, a.batch_size, not a.no_progress)
    summary = cm.summary(meta.class_names)
    shown = (str(folder) if folder is not None else f"the built-in dataset {data or 'phantom'} ({path})" if is_builtin(data)
             else str(path))                                        # the data as named, not a cache file alone
    result = {"checkpoint": str(a.checkpoint), "step": state.get("step"), "data": shown, "file": str(path), "split": a.split,
              "images": len(source), "slices": summary,
              "absent_classes": [n for n, v in summary["iou"].items() if v is None]}
    add_volumes(result, a, folder, source, path, g_is, cfg.image_size, device)
    out = a.out or a.checkpoint.parent / default_folder(a, Path(data) if a.data is not None else None)
    result["out"] = str(out)
    mat, names = cm.mat.cpu().numpy(), list(meta.class_names)
    files = {"report.json": json.dumps(result, indent=2).encode(),
             "confusion.csv": report.csv_bytes(report.confusion_csv(mat, names)),
             "confusion.png": figures.png(figures.confusion_heatmap(mat, names))}
    if "volumes" in result:
        files["volumes.csv"] = report.csv_bytes(report.volumes_csv(result["volumes"]["per_volume"],
                                                                    meta.class_names[1:]))
    refuse_existing([out / name for name in files], a.overwrite, "an earlier evaluation",
                    inputs=[a.checkpoint, path])
    write_files(out, files, replace=a.overwrite, remove=EVALUATION_FILES if a.overwrite else (),
                inputs=[a.checkpoint, path])
    return result, files


EVALUATION_FILES = ("report.json", "confusion.csv", "confusion.png", "volumes.csv")   # an earlier evaluation's


def check_readable(source, info: dict, path, checkpoint, generator: str = "resnet") -> None:
    """DataError unless the checkpoint's networks can read the split: its classes (count, and not in another
    order; other names noted), channels, image size."""
    meta = source.meta
    for what, have, want in (("classes", meta.num_classes, info["num_classes"]), ("channels", meta.channels,
                                                                                 info["channels"])):
        if have != want:
            raise DataError(f"{path}: {have} {what}, but the checkpoint {checkpoint} was trained with {want}")
    try:
        for side in (meta.height, meta.width):
            check_image_side(side, "partial", f"images {meta.height}x{meta.width}", generator)
    except UsageError as e:
        raise DataError(f"{path}: {e}") from None
    names, trained = list(meta.class_names), list(info.get("class_names") or meta.class_names)
    if names != trained and sorted(names) == sorted(trained):       # the same classes in another order
        raise DataError(f"{path}: its classes ({', '.join(names)}) are the checkpoint's ({', '.join(trained)}) in "
                        f"another order: class ids would be scored under other names; convert the data with the "
                        f"checkpoint's order")
    if names != trained:
        print(f"note: {path} names its classes {', '.join(names)}; the checkpoint {checkpoint} was trained on "
              f"{', '.join(trained)}: scored by class id", file=sys.stderr)
    if info.get("height") and (meta.height, meta.width) != (info["height"], info["width"]):
        print(f"note: {path} holds {meta.height}x{meta.width} images, the checkpoint {checkpoint} was trained on "
              f"{info['height']}x{info['width']}: scored at their own size (the networks are convolutional)",
              file=sys.stderr)


def note_training_images(state: dict, source, path, split) -> None:
    """A note when the images scored are the run's training file (a file named by --data, or a split other
    than train that holds it): the scores then measure fit, not generalisation."""
    trained = ((state.get("data") or {}).get("fingerprints") or {}).get("train")
    if split != "train" and trained and source.fingerprint() == trained:
        print(f"note: {path} holds the images the run trained on (its training file's content): the scores "
              f"measure fit, not generalisation", file=sys.stderr)


def add_volumes(result: dict, a, folder, source, path, g_is, image_size: int, device) -> None:
    """result["volumes"]: the per-volume scores of an SSL4MIS folder's split (at native resolution) or of a
    file's volumes, where the split has volumes; a note where it has none (scored per slice alone)."""
    absent = []
    if folder is not None and a.split == "train" and (folder / "train.list").exists():   # SSL4MIS ships the train
        absent = [v for v in acdc.volume_names(folder, "train") if not (folder / "data" / f"{v}.h5").exists()]
    if absent:                                                      # volumes' slices only: its ACDC copy had failed
        print(f"note: {len(absent)} volume(s) train.list names are not in {folder / 'data'} (first: {absent[0]}; "
              f"SSL4MIS's copy holds the training slices alone): the train split is scored per slice alone",
              file=sys.stderr)
    elif folder is not None and (a.split != "train" or (folder / "train.list").exists()):   # train: its slices; the
        vols = folder_volumes(g_is, folder, a.split, image_size, device, a.batch_size, not a.no_progress)
        result["volumes"] = {**summarize_volumes(vols, source.meta.class_names[1:]),
                             "resolution": "native resolution (from the SSL4MIS folder)"}
    elif source.volumes is not None:
        vols = file_volumes(g_is, source, device, a.batch_size, not a.no_progress)
        result["volumes"] = {**summarize_volumes(vols, source.meta.class_names[1:]),
                             "resolution": f"the file's resolution ({source.meta.height}x{source.meta.width})"}
    if "volumes" in result and not result["volumes"]["count"] or (folder is not None and "volumes" not in result
                                                                   and not absent):
        result.pop("volumes", None)                                 # volumes only where train.list names them
        print(f"note: the {a.split} split of {folder or path} lists no volumes: scored per slice alone", file=sys.stderr)


def default_folder(a, data: Path | None) -> str:
    """eval-<split>-<checkpoint name>, and -<data name> when --data is not the run's own (a file, scored as it
    is: eval-<checkpoint name>-<file name>)."""
    tag = "" if data is None else "-" + (data.name if data.is_dir() else data.stem)
    return f"eval-{a.split + '-' if a.split else ''}{a.checkpoint.stem}{tag}"


if __name__ == "__main__":
    sys.exit(run_command(main))
