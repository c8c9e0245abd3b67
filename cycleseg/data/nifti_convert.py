"""NIfTI datasets to the project's HDF5 format: `python -m cycleseg.data convert nifti SRC OUT.h5`.

Every case of the layout (nifti.find_layout) in the split becomes its slices (nifti's slicing and
intensity rules), resized in plane to `size` (images bilinear, antialiased; labels nearest). Patients
are the file's groups, each case a volume; a case without a label file is stored with masks all 255
and `labeled` = 0, so that it feeds the unlabeled stream and never the labeled one. Per volume the
file keeps what locates a voxel in the body (volume_info: source files, native shape, spacing, affine,
slicing axis, and the slices' voxel size in mm at the stored size). The whole file or nothing: every
volume is read and checked before the output is renamed into place.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ..fileio import atomic_path
from . import nifti
from .convert import classes_without_gaps, resize_pair
from .h5format import IGNORE_INDEX, MAX_SPACING_MM, DataError, Meta, create_datasets, default_palette


def load_case(case: nifti.Case, num_classes: int | None, channel: int | None = None):
    """(image scans, label uint8 (i, j, k) or None) of a case; channels must share one grid."""
    files = case.images if channel is None else [case.images[channel]]
    scans = [nifti.load(f) for f in files]
    for s in scans[1:]:
        if s.data.shape != scans[0].data.shape or not np.allclose(s.affine, scans[0].affine, atol=nifti.AFFINE_TOL):
            raise DataError(f"{s.path}: channel of shape {s.data.shape} on another grid than {scans[0].path} "
                            f"{scans[0].data.shape}")
    label = nifti.load_label(case.label, scans[0], num_classes) if case.labeled else None
    return scans, label


def count_classes(cases, channel=None) -> int:
    """K = the largest label value over the labeled cases + 1 (the pairs layout, without --num-classes), when
    every value below it appears too; DataError naming the stray values, their files and voxel counts
    otherwise (one stray voxel of 200 would make 201 classes), as the folder converter's count_classes."""
    hist, where = np.zeros(256, np.int64), {}
    for c in cases:
        if c.labeled:
            _, lab = load_case(c, None, channel)
            counts = np.bincount(lab.ravel(), minlength=256)
            hist += counts
            for v in np.flatnonzero(counts):
                where.setdefault(int(v), c.label)
    if not hist.any():
        raise DataError("no labeled case to count the classes from: pass --num-classes K")
    return classes_without_gaps(hist, where, "labels", "voxels", "or correct the label files")


def case_slices(scans, label, axis: int, intensity: str, size):
    """(images uint8 (D, H, W, C), masks uint8 (D, H, W), native slice shape) of one case."""
    chans = [nifti.to_slices(nifti.to_uint8(nifti.normalise(s.data, intensity, s.path)), axis) for s in scans]
    vol = np.stack(chans, axis=-1)                                  # (D, rows, cols, C)
    masks = (nifti.to_slices(label, axis) if label is not None
             else np.full(vol.shape[:3], IGNORE_INDEX, np.uint8))
    imgs, msks = [], []
    for img, msk in zip(vol, masks):
        im = img[..., 0] if img.shape[-1] == 1 else img
        im, msk = resize_pair(np.ascontiguousarray(im), np.ascontiguousarray(msk), size)
        imgs.append(im.reshape(im.shape[:2] + (-1,)))
        msks.append(msk)
    return np.stack(imgs), np.stack(msks), vol.shape[1:3]


def volume_record(case, scans, axis: int, native_hw, size) -> dict:
    """What the file keeps of a volume: enough to put a prediction back on the scan's grid and to measure
    distances in millimetres at the stored size."""
    sp = scans[0].spacing
    rows_ax, cols_ax = nifti.order(axis)[1:]
    slice_spacing = [sp[axis], sp[rows_ax] * native_hw[0] / size[0], sp[cols_ax] * native_hw[1] / size[1]]
    if max(slice_spacing) > MAX_SPACING_MM:                         # the file's reader would refuse it
        raise DataError(f"{case.name}: at --size {size[0]} {size[1]} its stored pixels would be "
                        f"{max(slice_spacing):.4g} mm wide (spacing {[round(float(s), 4) for s in sp]} mm), beyond "
                        f"{MAX_SPACING_MM:g} mm; give a larger --size, or check the scan's header")
    return {"name": case.name, "group": case.group, "images": [str(f) for f in case.images],
            "label": str(case.label) if case.labeled else None, "shape": list(scans[0].data.shape),
            "spacing": [round(float(s), 6) for s in sp], "affine": np.round(scans[0].affine, 6).tolist(),
            "axis": axis, "slice_spacing": [round(float(s), 6) for s in slice_spacing]}


def header_plan(cases, axis, channel) -> list:
    """(case, slicing axis, slice count, voxel order) of every case, from the headers alone (before any voxel
    is read)."""
    nib = nifti.nibabel()
    plan = []                                                       # (case, axis, depth) from the headers
    for c in cases:
        try:
            hdr = nib.load(str(c.images[0 if channel is None else channel]))
            shape, zooms = hdr.shape, np.linalg.norm(np.asarray(hdr.affine)[:3, :3], axis=0)
        except Exception as e:
            raise DataError(f"{c.images[0]}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
        dims = hdr.header.get_data_shape() if hasattr(hdr, "header") else shape     # as the header says it
        if 0 in tuple(dims) or 0 in tuple(shape):                   # nibabel's array shape of one is (0,)
            raise DataError(f"{c.images[0]}: an empty image of shape {tuple(dims)} (an axis of length 0, no voxels); "
                            f"expected a 3D volume")
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
            raise DataError(f"{c.images[0]}: a {len(shape)}D image of shape {tuple(shape)}; expected a 3D volume")
        ax = nifti.slice_axis(zooms, axis)
        plan.append((c, ax, int(shape[ax]), nifti.voxel_order(hdr.affine)))
    return plan


def order_notes(plan) -> tuple[str, list[str]]:
    """The voxel order most cases are stored in (recorded, for predict to compare scans with), and a note when
    the cases are stored in several: slices are cut in stored order, so theirs are not alike."""
    counts = Counter(p[3] for p in plan)
    if len(counts) < 2:
        return next(iter(counts), ""), []
    shown = ", ".join(f"{o}: {n}" for o, n in counts.most_common())
    return counts.most_common(1)[0][0], [
        f"the cases are stored in {len(counts)} voxel orders ({shown}); "
        f"slices are cut as stored, not reoriented, so theirs are mirrored or turned against each other: reorient "
        f"the scans to one order (nibabel's as_closest_canonical gives RAS) before converting"]


def class_names(layout, cases, num_classes, channel) -> list:
    """The class names: the layout's (ACDC, dataset.json), K numbered ones (--num-classes), or counted."""
    names = layout.class_names
    if num_classes is not None:
        names = [str(i) for i in range(num_classes)] if names is None or len(names) != num_classes else names
    elif names is None:
        names = [str(i) for i in range(count_classes(cases, channel))]
    return names


def convert_nifti(src, out, split: str = "train", size=(256, 256), axis: int | None = None,
                  intensity: str = "percentile", holdout=(0.1, 0.2), split_seed: int = 0, channel: int | None = None,
                  num_classes: int | None = None, progress: bool = True, replace: bool = True) -> dict:
    """Write the `split` of the NIfTI dataset `src` to `out` (atomically). Returns a summary dict."""
    layout = nifti.find_layout(src)
    channels = 1 if channel is not None else layout.channels
    if channel is not None and layout.channels == 1:                # accepted, and nothing chosen
        raise DataError(f"--channel {channel}: the cases of {src} have one channel, nothing to choose from; leave "
                        f"--channel out")
    if channel is not None and not 0 <= channel < layout.channels:
        raise DataError(f"--channel {channel}: the dataset has {layout.channels} channel(s) (0..{layout.channels - 1})")
    if channels not in (1, 3):
        raise DataError(f"{src}: {channels} channels per case; cycleseg's files hold 1 or 3: choose one with "
                        f"--channel N")
    cases = nifti.split_cases(layout.cases, split, holdout, split_seed)
    if not cases:                                                   # an empty file that no reader takes
        raise DataError(f"the {split} split of {src} holds no case; nothing was written")
    plan = header_plan(cases, axis, channel)
    total = sum(p[2] for p in plan)
    order, notes = order_notes(plan)
    names = class_names(layout, cases, num_classes, channel)
    k = len(names)
    meta = Meta(num_classes=k, class_names=names, palette=default_palette(k), ignore_index=IGNORE_INDEX,
                source=f"NIfTI ({layout.kind} layout) {split} ({Path(src).resolve()})")
    meta.preprocessing = {"size": list(size), "image_resize": "bilinear, antialiased", "mask_resize": "nearest",
                          "volume_intensity": intensity, "percentiles": list(nifti.PERCENTILES),
                          "slice_axis": nifti.SLICE_AXIS_AUTO if axis is None else axis, "voxel_order": order,
                          "slice_order": "rows along the later in-plane voxel axis (ITK array order)"}
    hist, i, records, labeled_cases = np.zeros(256, np.int64), 0, [], 0
    out = Path(out)
    with atomic_path(out, replace) as tmp, h5py.File(tmp, "w") as f:
        for v, (c, ax, depth, _) in enumerate(tqdm(plan, desc=f"convert -> {out.name}", disable=not progress)):
            scans, label = load_case(c, k, channel)
            images, masks, native = case_slices(scans, label, ax, intensity, size)
            records.append(volume_record(c, scans, ax, native, size))
            if v == 0:
                create_datasets(f, total, size[0], size[1], channels, meta, with_groups=True,
                                volume_names=[p[0].name for p in plan], with_labeled=True)
                group_ids = {g: n for n, g in enumerate(dict.fromkeys(p[0].group for p in plan))}
            f["images"][i:i + depth] = images
            f["masks"][i:i + depth] = masks
            f["groups"][i:i + depth] = group_ids[c.group]
            f["volumes"][i:i + depth] = v
            f["labeled"][i:i + depth] = int(c.labeled)
            i += depth
            labeled_cases += c.labeled
            hist += np.bincount(masks.ravel(), minlength=256)          # an unlabeled scan's pixels: ignored
        f.attrs["volume_info"] = json.dumps(records)                # volume_info, once every volume is read
    return {"file": str(out), "images": total, "size": list(size), "volumes": len(plan),
            "labeled_volumes": labeled_cases, "unlabeled_volumes": len(plan) - labeled_cases,
            "patients": len({p[0].group for p in plan}), "layout": layout.kind, "notes": layout.notes + notes,
            "names": names, "hist": hist}
