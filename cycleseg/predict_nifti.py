"""Label volumes for NIfTI scans (python -m cycleseg.predict CKPT scan.nii.gz scans/ --out DIR).

Each scan is cut into slices by the converter's rules (data/nifti.py: the through-plane axis, the
per-volume intensity rule the checkpoint was trained with), the slices are resized to the network's
size (bilinear), segmented in batches, and brought back to the scan's own in-plane grid by resampling
the class scores (logits, bilinear) and taking their argmax there (`--resample logits`, the default:
it scored above nearest-neighbour upsampling of the labels, see benchmarks/experiments/acdc-nifti/),
or by nearest neighbour on the labels (`--resample nearest`). The result, `DIR/<scan's name>.nii.gz`,
is a uint8 label volume with the scan's shape, affine and header: it lies on the scan in any viewer.
"""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import nifti
from .data.h5format import DataError

RESAMPLE = ("logits", "nearest")


def scan_inputs(paths) -> list:
    """(output file name, scan path) of every NIfTI scan among `paths`: files, and the *.nii[.gz] under
    folders (searched recursively: raw ACDC's patient folders) but for label files (X_gt.nii.gz beside
    X.nii.gz)."""
    found = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = [f for f in sorted(p.rglob("*")) if f.is_file() and nifti.is_nifti(f) and not f.name.startswith(".")]
            stems = {(f.parent, nifti.stem(f)) for f in files}
            found += [f for f in files if not (nifti.stem(f).endswith("_gt") and (f.parent, nifti.stem(f)[:-3]) in stems)]
        elif nifti.is_nifti(p):
            found.append(p)
    names: dict = {}
    for f in found:
        out = nifti.stem(f) + ".nii.gz"
        if out in names:
            raise DataError(f"{f} and {names[out]} would both be written as {out}; predict them into separate --out "
                            f"folders")
        names[out] = f
    return list(names.items())


def rules(info: dict, intensity: str | None, axis: int | None) -> tuple:
    """(intensity rule, slicing axis or None) for a checkpoint: what its training data was made with unless
    given (a file converted from NIfTI records both; SSL4MIS's ACDC slices are min-max scaled)."""
    pre = info.get("preprocessing") or {}
    rule = intensity or pre.get("volume_intensity") or "percentile"
    if axis is None and isinstance(pre.get("slice_axis"), int):
        axis = pre["slice_axis"]
    return rule, axis


def segment_scan(model, scan: nifti.Scan, axis: int | None, intensity: str, resample: str = "logits",
                 batch_size: int = 16) -> np.ndarray:
    """The uint8 label volume (the scan's shape: (i, j, k), or (i, j, k, t) for a series of frames, each
    segmented as a volume of its own) that `model` predicts for a scan."""
    if scan.data.ndim == 4:
        return np.stack([segment_volume(model, scan.data[..., t], scan.spacing, axis, intensity, resample, batch_size,
                                        f"{scan.path}, frame {t}") for t in range(scan.data.shape[3])], axis=-1)
    return segment_volume(model, scan.data, scan.spacing, axis, intensity, resample, batch_size, scan.path)


def segment_volume(model, volume: np.ndarray, spacing, axis, intensity: str, resample: str, batch_size: int,
                   where: str = "a volume"):
    ax = nifti.slice_axis(spacing, axis)
    slices = nifti.to_slices(nifti.to_uint8(nifti.normalise(volume, intensity, where)), ax)  # (D, rows, cols)
    h, w = model.size
    small = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(s)).resize((w, h), Image.BILINEAR))
                      for s in slices])[..., None]                                            # (D, h, w, 1)
    native = slices.shape[1:]
    out = np.empty(slices.shape, np.uint8)
    for s in range(0, len(small), batch_size):
        logits = torch.from_numpy(np.ascontiguousarray(model.logits(small[s:s + batch_size])))  # (B, K, h, w)
        if resample == "logits":
            labels = F.interpolate(logits.float(), size=native, mode="bilinear", align_corners=False).argmax(1)
        elif resample == "nearest":
            labels = F.interpolate(logits.argmax(1, keepdim=True).float(), size=native, mode="nearest-exact")[:, 0]
        else:
            raise DataError(f"--resample must be one of {RESAMPLE}, got {resample!r}")
        out[s:s + len(logits)] = labels.numpy().astype(np.uint8)
    return nifti.from_slices(out, ax)


def label_file(labels: np.ndarray, scan: nifti.Scan) -> bytes:
    """The bytes of a .nii.gz holding `labels` on the scan's grid (its affine and header, uint8, unscaled)."""
    nib = nifti.nibabel()
    header = scan.header.copy()
    shape = tuple(header.get_data_shape())
    if labels.ndim == 3 and shape == labels.shape + (1,):           # a scan of one frame stored 4D: kept 4D
        labels = labels[..., None]
    img = nib.Nifti1Image(labels.astype(np.uint8), scan.affine, header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, max(1, int(labels.max()))
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def predict_scans(model, inputs: list, info: dict, intensity=None, axis=None, resample: str = "logits",
                  batch_size: int = 16, progress=None) -> dict:
    """{output name: .nii.gz bytes} for `inputs` ((name, path) pairs, scan_inputs)."""
    if model.channels != 1:
        raise DataError(f"the checkpoint takes {model.channels}-channel images; NIfTI scans are predicted by "
                        f"single-channel models")
    rule, axis = rules(info, intensity, axis)
    trained, other = (info.get("preprocessing") or {}).get("voxel_order"), {}
    files = {}
    for name, path in (progress(inputs) if progress else inputs):
        scan = nifti.load(path, frames=True)
        if trained and (order := nifti.voxel_order(scan.affine)) != trained:
            other.setdefault(order, []).append(str(path))
        files[name] = label_file(segment_scan(model, scan, axis, rule, resample, batch_size), scan)
    for order, paths in other.items():                              # slices cut as stored: not as trained on
        print(f"note: {len(paths)} scan(s) stored in voxel order {order}, the training scans in {trained} (first: "
              f"{paths[0]}): slices are cut as stored, not reoriented, so the model sees them mirrored or turned; "
              f"reorient them to {trained} first (the labels are written on each scan's own grid either way)",
              file=sys.stderr)
    return files
