"""python -m cycleseg.data: convert datasets to the project's HDF5 format, and inspect files.

    python -m cycleseg.data convert voc VOCdevkit/VOC2012 voc_train.h5 --split train --preset paper
    python -m cycleseg.data convert cityscapes cityscapes/ cs_val.h5 --split val --size 128 256
    python -m cycleseg.data convert acdc ACDC/ acdc_train.h5 --split train --size 256 256
    python -m cycleseg.data convert folder mydata/ mydata.h5 --size 256 256 --keep-aspect
    python -m cycleseg.data convert nifti ACDC_raw/ acdc/train.h5 --split train --size 256 256
    python -m cycleseg.data convert nifti Dataset027_ACDC/ acdc/val.h5 --split val
    python -m cycleseg.data info voc_train.h5
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..usage import Parser, fail, path_arg, plain_int, printable, run_command
from . import convert as cv
from .nifti_convert import convert_nifti
from ..config import MAX_SIDE
from ..fileio import remove_stale_temporaries
from .h5format import IGNORE_INDEX, DataError, open_h5, validate


def info(path) -> str:
    meta = validate(path)
    with open_h5(path) as f:
        hist = np.zeros(256, np.int64)
        for s in range(0, meta.count, 256):
            hist += np.bincount(f["masks"][s:s + 256].ravel(), minlength=256)
        groups = len(np.unique(f["groups"][...])) if "groups" in f else None
        unlabeled = int((f["labeled"][...] == 0).sum()) if "labeled" in f else 0
    lines = [f"{path}: {meta.count} images {meta.height}x{meta.width}x{meta.channels} uint8, "
             f"{meta.num_classes} classes, ignore index {meta.ignore_index}",
             f"source: {printable(meta.source)}", f"preprocessing: {json.dumps(meta.preprocessing)}"]
    if groups is not None:
        lines.append(f"groups: {groups}")
    if meta.volume_names:
        mm = " with their spacing (HD95 / ASD in mm)" if meta.volume_info else ""
        lines.append(f"volumes: {len(meta.volume_names)}{mm}")
    if unlabeled:
        lines.append(f"unlabeled images (no annotation: the unlabeled stream's only): {unlabeled}")
    return "\n".join(lines + pixel_lines(meta.class_names, hist, meta.ignore_index))


def pixel_lines(names, hist: np.ndarray, ignore_index: int) -> list[str]:
    """Each class's and the ignored pixels' share of all mask pixels (an unlabeled image's are ignored), as
    info and the converters print them."""
    total = max(1, int(hist.sum()))
    return (["class pixels:"] + [f"  {k:3d} {printable(name):15s} {100 * hist[k] / total:6.2f} %"
                                 for k, name in enumerate(names)]
            + [f"  ignored         {100 * hist[ignore_index] / total:6.2f} %"])


def parse_mapping(pairs) -> dict:
    """["200=255", "7=1"] -> {200: 255, 7: 1}; DataError for anything else."""
    out = {}
    for pair in pairs:
        try:
            v, c = (plain_int(x) for x in pair.split("="))
        except ValueError:
            raise DataError(f"--map {pair}: expected V=C with whole numbers (mask value V becomes class C)") from None
        if not (0 <= v < 1 << 16 and 0 <= c <= 255):
            raise DataError(f"--map {pair}: V must be a mask value (0..65535) and C a class id or 255 (ignore)")
        if out.get(v, c) != c:
            raise DataError(f"--map {v}={out[v]} and --map {pair}: mask value {v} mapped to two classes; give it one")
        out[v] = c
    return out


def check_classes(k: int | None) -> None:
    """--num-classes: ids 0..K-1 are stored as uint8 beside the ignore index 255, and a segmentation has a
    background and a structure at least, so K is 2..255."""
    if k is not None and not 2 <= k <= IGNORE_INDEX:
        raise DataError(f"--num-classes must be in 2..{IGNORE_INDEX} (a background and at least one structure; class "
                        f"ids are bytes, {IGNORE_INDEX} means not labeled), got {k}")


def check_size(size) -> None:
    """--size H W: positive and at most MAX_SIDE, as training reads."""
    if size is not None and not all(1 <= s <= MAX_SIDE for s in size):
        raise DataError(f"--size must be in 1..{MAX_SIDE} pixels a side, got {size[0]} {size[1]}")


def check_output(out: Path, overwrite: bool, src: Path | None = None) -> None:
    """DataError unless `out` names an HDF5 file (.h5 / .hdf5: never an input image) that does not exist
    yet, or may be replaced (--overwrite) and is not a file of the source folder `src` (SSL4MIS's ACDC
    and NIfTI folders hold .h5 inputs too: an existing file there is never replaced)."""
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise DataError(f"{out}: the output must be an .h5 file (a converted split), got {out.suffix or 'no suffix'}")
    if out.is_dir():
        raise DataError(f"{out} is a folder; name the .h5 file to write")
    if src is not None and out.exists() and Path(src).is_dir() and out.resolve().is_relative_to(Path(src).resolve()):
        raise DataError(f"{out} is a file of the source folder {src}: a converter never writes over its inputs; "
                        f"choose an output outside it")
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists already; pass --overwrite to replace it, or choose another output")
    if out.parent.is_dir():
        remove_stale_temporaries(out.parent, out.name)              # left by a conversion killed while writing


NIFTI_ONLY = ("axis", "holdout", "split_seed", "channel")       # None: not given (their defaults below)
HOLDOUT = (0.1, 0.2)


def add_nifti_options(c) -> None:
    c.add_argument("--axis", type=int, default=None, choices=[0, 1, 2],
                   help="nifti: the voxel axis to slice along (default: that of the largest spacing)")
    c.add_argument("--holdout", type=float, nargs=2, default=None, metavar=("VAL", "TEST"),
                   help="nifti: fractions of the labeled patients held out as val and test (default 0.1 0.2)")
    c.add_argument("--split-seed", type=int, default=None,
                   help="nifti: the seed of the patients' split (default: 0)")
    c.add_argument("--channel", type=int, default=None,
                   help="nifti: keep only this channel of multi-channel cases (default: every channel)")


def parser() -> Parser:
    p = Parser(prog="python -m cycleseg.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert a dataset to the project's HDF5 format")
    c.add_argument("kind", choices=["voc", "cityscapes", "acdc", "folder", "nifti"],
                   help="nifti: raw ACDC, nnU-Net / Decathlon, or images/ + labels/ of NIfTI volumes")
    c.add_argument("src", type=path_arg)
    c.add_argument("out", type=path_arg)
    c.add_argument("--split", default=None, help="voc: train|val|train_aug; cityscapes: train|val; acdc: train|val; "
                                                 "nifti: train|val|test|all (val and test: --holdout of the labeled "
                                                 "patients; train: the rest, unlabeled scans included); default: train "
                                                 "(folder: none)")
    c.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="resize every image and mask to H x W (default: sizes kept; nifti: 256 256)")
    c.add_argument("--preset", choices=["paper"], default=None,
                   help="the paper's sizes: VOC 200x200, Cityscapes 128x256 (aspect ratio distorted)")
    c.add_argument("--keep-aspect", action="store_true", help="fit inside H x W and pad instead of stretching")
    c.add_argument("--num-classes", type=int, default=None, help="folder: number of classes (default: from the masks)")
    c.add_argument("--map", action="append", default=[], metavar="V=C",
                   help="map mask value V to class C (or to 255: ignore) before anything else (Cityscapes: label id V to "
                        "label id C, before its label-id to train-id table); repeatable")
    c.add_argument("--intensity", choices=["strict", "minmax", "percentile"], default=None,
                   help="strict (default but for nifti): images must be uint8 or floats in [0, 1]; minmax: rescale "
                        "each image (nifti: each volume) from its range; percentile (nifti's default): clip each "
                        "volume to its 0.5..99.5th percentile, then rescale")
    c.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    add_nifti_options(c)
    c.add_argument("--no-progress", action="store_true")
    i = sub.add_parser("info", help="print what a converted file holds")
    i.add_argument("file", type=path_arg)
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.cmd == "info":
            print(info(a.file))
            return 0
        check_output(a.out, a.overwrite, a.src)
        split = a.split or "train"
        if a.kind == "nifti":
            return convert_nifti_command(a, split)
        check_nifti_only(a)
        if a.intensity == "percentile":
            raise DataError("--intensity percentile is a rule for NIfTI volumes (convert nifti)")
        a.intensity = a.intensity or "strict"
        mapping, left_out = parse_mapping(a.map), []
        check_classes(a.num_classes)
        beyond = [(v, c) for v, c in mapping.items() if a.num_classes and c != 255 and c >= a.num_classes]
        if beyond:                                                  # was found at the first mask, in HDF5's words
            v, c = beyond[0]
            raise DataError(f"--map {v}={c}: class {c} is beyond --num-classes {a.num_classes} (class ids 0.."
                            f"{a.num_classes - 1}, or 255: ignore)")
        if a.kind == "voc":
            items, meta = cv.voc_items(a.src, split)
        elif a.kind == "cityscapes":
            items, meta = cv.cityscapes_items(a.src, split)
        elif a.kind == "acdc":
            items, meta = cv.acdc_items(a.src, split)
        else:
            listing = cv.folder_listing(a.src)
            items, meta = cv.folder_items(a.src, a.num_classes, mapping=mapping, listing=listing)
            left_out = cv.folder_left_out(a.src, listing)
        size = tuple(a.size) if a.size else (cv.SIZE_PRESETS.get(a.kind) if a.preset == "paper" else None)
        check_size(size)
        summary = cv.convert(items, meta, a.out, size, a.keep_aspect, progress=not a.no_progress,
                             intensity=a.intensity, mapping=mapping, replace=a.overwrite)
    except (DataError, OSError) as e:                               # OSError: a read-only or full output folder
        return fail(e)
    print(f"wrote {summary['file']}: {summary['images']} images {summary['size'][0]}x{summary['size'][1]}")
    print("\n".join(pixel_lines(meta.class_names, summary["hist"], meta.ignore_index)))
    for line in left_out:
        print(f"note: {line}", file=sys.stderr)
    top = summary["mask_top"]
    for v in summary["unmapped"]:
        why = (f"its masks are {top.bit_length()}-bit (values 0..{top}): none can hold it" if top is not None and v > top
               else "a typo, or a value of another split only")
        print(f"note: --map {v}={mapping[v]}: no mask of {a.src} holds the value {v} ({why})", file=sys.stderr)
    return 0


def check_nifti_only(a) -> None:
    """DataError when an option of convert nifti alone (or --split, for an image folder) is given to another
    converter (it would be ignored)."""
    given = [f"--{n.replace('_', '-')}" for n in NIFTI_ONLY if getattr(a, n) is not None]   # a default value too
    if given:
        raise DataError(f"{', '.join(given)}: an option of convert nifti only; convert {a.kind} has no use for it")
    if a.kind == "folder" and a.split:
        raise DataError("--split: an image folder is one split; convert each split's folder into its own .h5")
    if a.num_classes is not None and a.kind in ("voc", "cityscapes", "acdc"):     # written with its own classes
        raise DataError(f"--num-classes: {a.kind}'s classes are fixed ({a.kind} has no use for it); it is an "
                        f"option of convert folder and convert nifti")
    if a.preset and a.kind not in cv.SIZE_PRESETS:
        raise DataError(f"--preset {a.preset}: the paper's sizes are for voc and cityscapes; give --size H W")
    if a.keep_aspect and not a.size and not (a.preset == "paper" and a.kind in cv.SIZE_PRESETS):
        raise DataError("--keep-aspect: resizes to --size keeping the aspect (padded); without --size nothing is "
                        "resized")


def convert_nifti_command(a, split: str) -> int:
    if a.intensity == "strict":
        raise DataError("--intensity strict is for 8-bit images; NIfTI volumes take percentile or minmax")
    if a.split_seed is not None and a.split_seed < 0:
        raise DataError(f"--split-seed must be >= 0 (a seed of the patients' split), got {a.split_seed}")
    if split == "all" and (unread := [f for f, v in (("--holdout", a.holdout), ("--split-seed", a.split_seed))
                                      if v is not None]):
        raise DataError(f"{', '.join(unread)}: --split all writes every case; "
                        f"{'they choose' if len(unread) > 1 else 'it chooses'} the patients of val and test "
                        f"(--split val|test) and of train beside them")
    for name in ("keep_aspect", "preset"):
        if getattr(a, name):
            raise DataError(f"--{name.replace('_', '-')} is not an option of convert nifti")
    if a.map:
        raise DataError("--map is not an option of convert nifti (label values are class ids)")
    size = tuple(a.size) if a.size else (256, 256)
    check_size(size)
    check_classes(a.num_classes)
    s = convert_nifti(a.src, a.out, split, size, a.axis, a.intensity or "percentile", tuple(a.holdout or HOLDOUT),
                      a.split_seed or 0, a.channel, a.num_classes, progress=not a.no_progress, replace=a.overwrite)
    print(f"wrote {s['file']}: {s['images']} slices {size[0]}x{size[1]} of {s['volumes']} volumes "
          f"({s['labeled_volumes']} labeled, {s['unlabeled_volumes']} unlabeled) from {s['patients']} patients, "
          f"{s['layout']} layout")
    for line in s["notes"]:
        print(f"note: {line}", file=sys.stderr)
    print("\n".join(pixel_lines(s["names"], s["hist"], IGNORE_INDEX)))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
