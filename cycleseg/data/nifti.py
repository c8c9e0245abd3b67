"""NIfTI scans: reading and checking volumes, the slicing and intensity rules, and the layouts users bring.

    acdc     raw ACDC: patientNNN/ folders (directly in SRC, or in SRC/training, SRC/testing) holding
             Info.cfg (ED, ES frame numbers) and patientNNN_frameNN.nii.gz with its _gt.nii.gz labels
             (0 background, 1 RV, 2 Myo, 3 LV); a frame without _gt is an unlabeled case
    nnunet   nnU-Net / Medical Segmentation Decathlon: dataset.json (channel_names or modality, labels),
             imagesTr/{case}_{XXXX}.nii.gz (XXXX the channel) with labelsTr/{case}.nii.gz, and imagesTs/
             (and any imagesTr case without a label file): unlabeled cases
    pairs    images/ (or SRC itself) and labels/ (or masks/) holding NAME.nii[.gz] of the same names; an
             image without a label file is an unlabeled case

The rules, the same in the converter and in predict:
- slicing: along the through-plane axis, the voxel axis of the largest spacing (cine MRI: 5-10 mm
  against 1.3-1.9 mm in plane; on a tie the last of the tied axes, NIfTI's usual slice axis), or the one
  --axis names. A slice's rows run along the later remaining voxel axis and its columns along the
  earlier one, the array order of ITK / SimpleITK that SSL4MIS's ACDC slices have.
- intensity, per volume: "percentile" clips to the 0.5th..99.5th percentile of the volume's voxels,
  then scales that range to 0..1 (the field's habit for MRI, which has no absolute intensity scale: a
  handful of bright voxels, flow or fat, would otherwise squeeze the heart into a few grey levels);
  "minmax" scales the volume's min..max to 0..1 (what SSL4MIS's ACDC slices were made with).
- in plane, slices are resized to the network's size (images bilinear, labels nearest) and predictions
  brought back to the scan's own grid (predict.py).
nibabel is an optional extra (pip install -e ".[medical]").
"""
from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import loads
from .h5format import INTENSITY_RULES, MAX_SPACING_MM, MIN_SPACING_MM, SLICE_AXIS_AUTO, DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PERCENTILES = (0.5, 99.5)
ACDC_CLASSES = ["background", "RV", "Myo", "LV"]
AFFINE_TOL = 1e-3                   # mm: image and label affines must agree to this


def nibabel():
    """The nibabel module, or a DataError saying how to install it."""
    try:
        import nibabel as nib                               # optional: the [medical] extra
    except ImportError:
        raise DataError('reading NIfTI needs nibabel: pip install nibabel (or pip install -e ".[medical]")') from None
    return nib


def is_nifti(path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def stem(path) -> str:
    """'case_001.nii.gz' -> 'case_001'."""
    name = Path(path).name
    for sfx in NIFTI_SUFFIXES:
        if name.lower().endswith(sfx):
            return name[:-len(sfx)]
    return Path(path).stem


# -- one volume -----------------------------------------------------------------------------------------

@dataclass
class Scan:
    """A 3D volume as read from disk: voxel data (i, j, k), its affine to world millimetres, the header."""
    path: str
    data: np.ndarray
    affine: np.ndarray
    header: object

    @property
    def spacing(self) -> tuple:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def load(path, what: str = "image", frames: bool = False) -> Scan:
    """Read a 3D NIfTI volume (a 4D one with a single frame or channel counts as 3D; with `frames`, a 4D
    series of 3D frames (i, j, k, t) is taken too: predict segments each). DataError naming the file when
    it is unreadable (corrupt, truncated), not 3D, holds NaN / infinite values, or has an affine that puts
    its voxels on no grid (zero or non-finite spacing, sheared axes)."""
    nib = nibabel()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    quiet = logging.getLogger("nibabel.global")                    # its header fixes ("pixdim[1,2,3] should be
    level = quiet.level                                             # positive; setting to abs") as stray lines:
    quiet.setLevel(logging.ERROR)                                   # check_pixdim says what is wrong, or nothing is
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:                                  # ImageFileError, EOFError, zlib / gzip errors...
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    finally:
        quiet.setLevel(level)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 and not (frames and data.ndim == 4):
        hint = ("; nnU-Net keeps one file per channel ({case}_0000.nii.gz, ...), raw ACDC one file per frame "
                "(the _4d file is the whole cycle)" if data.ndim == 4 else "")
        raise DataError(f"{path}: a {data.ndim}D {what} of shape {tuple(data.shape)}; expected a 3D volume{hint}")
    if min(data.shape) < 1:
        raise DataError(f"{path}: an empty {what} of shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise DataError(f"{path}: {what} voxels of type {data.dtype}; expected real numbers")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise DataError(f"{path}: {int((~np.isfinite(data)).sum())} NaN or infinite voxels in the {what}")
    if np.issubdtype(data.dtype, np.floating) and np.abs(data).max() > np.finfo(np.float32).max:
        raise DataError(f"{path}: {what} voxels up to {float(np.abs(data).max()):.3g}, beyond float32's range "
                        f"(they would read as infinite); rescale the volume")
    affine = np.asarray(img.affine, dtype=np.float64)
    check_pixdim(path, img)
    check_grid(path, affine)
    return Scan(str(path), data, affine, img.header)


def check_pixdim(path, img) -> None:
    """DataError when the voxel sizes the affine is built from are zero, negative or not finite: without an
    sform, nibabel builds the affine from pixdim, and its load reads a zero there as 1 mm (the header as
    stored is read again here), so distances would be reported in millimetres of a made-up grid."""
    header = img.header
    if "pixdim" not in header or not str(path).endswith((".nii", ".nii.gz")):
        return
    sform = int(header.get("sform_code", 0)) > 0                    # the affine from the sform: pixdim not used,
    zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)     # but a NaN there is a damaged header (and was
    if sform and np.isfinite(zooms).all():                          # copied into predict's output header)
        return
    from nibabel.openers import ImageOpener                         # nibabel: imported where NIfTI is read
    try:
        with ImageOpener(str(path)) as f:
            header = type(header).from_fileobj(f, check=False)      # as stored: no fixes applied
    except Exception:                                               # noqa: BLE001 -- nibabel read it once already
        return
    zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not (np.isfinite(zooms).all() and (sform or (zooms > 0).all())):
        raise DataError(f"{path}: its header's voxel sizes (pixdim) are {zooms.tolist()}; expected three positive "
                        f"lengths (a damaged header)")


def check_grid(path, affine: np.ndarray) -> None:
    """DataError unless the affine's voxel axes have finite, positive lengths and are orthogonal (the slicing
    rule moves along one voxel axis and resizes the other two: a sheared grid has no such slices)."""
    axes = affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.isfinite(affine).all():
        raise DataError(f"{path}: its affine holds NaN or infinite values ({int((~np.isfinite(affine)).sum())} of 16); "
                        f"a damaged header")
    if (lengths < MIN_SPACING_MM).any() or (lengths > MAX_SPACING_MM).any():
        raise DataError(f"{path}: the affine gives voxel spacings {[float(f'{x:.4g}') for x in lengths]}; expected "
                        f"three positive lengths of at least {MIN_SPACING_MM:g} and at most {MAX_SPACING_MM:g} mm "
                        f"(a damaged header)")
    cos = (axes.T @ axes) / np.outer(lengths, lengths)
    off = np.abs(cos - np.eye(3)).max()
    if off > 1e-3:
        raise DataError(f"{path}: the voxel axes are not orthogonal (a sheared grid, cosine {off:.3f}), so its slices "
                        f"have no single spacing; resample the scan to an orthogonal grid first")


def load_label(path, image: Scan, num_classes: int | None, role: str = "label", of: str = "image",
               hint: str = "") -> np.ndarray:
    """The label volume of `image` as uint8 class ids. DataError naming the file when its shape or affine
    differs from the image's, a value is not a whole number, or one is outside 0..num_classes-1 (`hint`
    appended: how the count was reached). `role`, `of`: what the two are in the message (a prediction and
    its reference, for metrics)."""
    lab = load(path, "label")
    if lab.data.shape != image.data.shape:
        raise DataError(f"{path}: {role} of shape {lab.data.shape}, but its {of} {image.path} is {image.data.shape}")
    if not np.allclose(lab.affine, image.affine, atol=AFFINE_TOL):
        raise DataError(f"{path}: {role} affine differs from its {of}'s ({image.path}) by up to "
                        f"{np.abs(lab.affine - image.affine).max():.4g} mm: the two do not lie on one grid")
    v = lab.data
    if not np.issubdtype(v.dtype, np.integer):
        frac = v != np.round(v)
        if frac.any():
            raise DataError(f"{path}: {int(frac.sum())} label voxels are not whole numbers (e.g. {float(v[frac][0]):g}); "
                            f"expected class ids")
    hi = min(num_classes - 1, 254) if num_classes else 254          # ids are stored as bytes (255: ignore)
    bad = (v < 0) | (v > hi)
    if bad.any():
        raise DataError(f"{path}: label value {v[bad].max() if (v > hi).any() else v[bad].min():g} ({int(bad.sum())} "
                        f"voxels) outside the class ids 0..{hi}{hint}")
    return v.astype(np.uint8)


def voxel_order(affine) -> str:
    """The anatomical directions the voxel axes (i, j, k) run towards, as nibabel names them ("RAS", "LPS",
    ...): scans of one order are cut into alike slices; of another, into mirrored or turned ones."""
    return "".join(code or "?" for code in nibabel().orientations.aff2axcodes(np.asarray(affine)))


def slice_axis(spacing, axis: int | None = None) -> int:
    """The through-plane voxel axis: `axis` when given, else that of the largest spacing (the last on a tie)."""
    if axis is not None:
        if axis not in (0, 1, 2):
            raise DataError(f"--axis must be 0, 1 or 2, got {axis}")
        return axis
    s = np.asarray(spacing, dtype=np.float64)
    return int(np.flatnonzero(np.isclose(s, s.max(), rtol=1e-3))[-1])


def order(axis: int) -> tuple:
    """The transpose taking a volume (i, j, k) to slices (D, rows, columns) along `axis`."""
    rest = [a for a in (0, 1, 2) if a != axis]
    return (axis, rest[1], rest[0])


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.transpose(volume, order(axis))


def from_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    return np.transpose(slices, np.argsort(order(axis)))


def normalise(volume: np.ndarray, rule: str = "percentile", where: str = "a volume") -> np.ndarray:
    """A volume's intensities mapped to 0..1 by `rule` (float32): see the module's notes. DataError naming
    `where` for a constant volume (no image: it would read as black and be segmented as background); a
    volume whose 0.5..99.5th percentiles are equal (nearly all one value) is scaled by its min..max, with a
    note."""
    v = volume.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        raise DataError(f"{where}: every voxel holds {lo:g}, a constant volume with no image to read; remove it "
                        f"from the inputs")
    if rule == "percentile":
        plo, phi = np.percentile(v, PERCENTILES)
        if phi > plo:
            v, lo, hi = np.clip(v, plo, phi), float(plo), float(phi)
        else:
            print(f"note: {where}: its 0.5th and 99.5th intensity percentiles are equal ({plo:g}: nearly every "
                  f"voxel holds it), so it is scaled by its min..max instead", file=sys.stderr)
    elif rule != "minmax":
        raise DataError(f"intensity rule must be one of {INTENSITY_RULES}, got {rule!r}")
    return (v - lo) / (hi - lo)


def to_uint8(volume01: np.ndarray) -> np.ndarray:
    return np.rint(volume01 * 255.0).astype(np.uint8)


# -- layouts ----------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One volume to convert: its image files (one per channel), its label file (None: unlabeled), the
    group (patient) it belongs to."""
    name: str
    images: list
    label: Path | None
    group: str

    @property
    def labeled(self) -> bool:
        return self.label is not None


@dataclass
class Layout:
    kind: str
    cases: list
    class_names: list | None            # None: counted from the labels
    channels: int = 1
    notes: list = field(default_factory=list)


def find_layout(src) -> Layout:
    """The cases of a NIfTI dataset folder (raw ACDC, nnU-Net / Decathlon, or image / label pairs)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (convert nifti reads a dataset folder)")
    if (src / "dataset.json").exists():
        layout = nnunet_layout(src)
    elif acdc_patients(src):
        layout = acdc_layout(src)
    else:
        layout = pairs_layout(src)
    if not layout.cases:
        raise DataError(f"{src}: no NIfTI volumes ({', '.join(NIFTI_SUFFIXES)}) in the {layout.kind} layout")
    return layout


def acdc_patients(src: Path) -> list:
    roots = [src] + [src / d for d in ("training", "testing") if (src / d).is_dir()]
    return sorted((p for r in roots for p in r.glob("patient[0-9]*") if p.is_dir()), key=lambda p: p.name)


def read_info_cfg(path: Path) -> dict:
    """The `key: value` lines of a raw ACDC patient's Info.cfg; DataError when a key is given twice with two
    values (which ED or ES frame is meant cannot be told)."""
    out = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if ":" in line:
            k, v = (part.strip() for part in line.split(":", 1))
            if out.get(k, v) != v:
                raise DataError(f"{path}, line {n}: {k} is given twice ({out[k]!r}, then {v!r}); keep the one that "
                                f"is right")
            out[k] = v
    return out


def acdc_layout(src: Path) -> Layout:
    cases = []
    for p in acdc_patients(src):
        info_file = p / "Info.cfg"
        if not info_file.exists():
            raise DataError(f"{info_file}: missing (raw ACDC keeps the ED and ES frame numbers there)")
        info = read_info_cfg(info_file)
        try:
            frames = sorted({int(info["ED"]), int(info["ES"])})
        except (KeyError, ValueError):
            raise DataError(f"{info_file}: expected lines 'ED: <frame>' and 'ES: <frame>', got {info}") from None
        for fr in frames:
            img = p / f"{p.name}_frame{fr:02d}.nii.gz"
            if not img.exists():
                raise DataError(f"{img}: missing (frame {fr} of {info_file})")
            gt = p / f"{p.name}_frame{fr:02d}_gt.nii.gz"
            cases.append(Case(stem(img), [img], gt if gt.exists() else None, p.name))
    return Layout("acdc", cases, list(ACDC_CLASSES))


def nnunet_layout(src: Path) -> Layout:
    try:
        ds = loads((src / "dataset.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{src / 'dataset.json'}: not readable JSON ({e})") from None
    where = src / "dataset.json"
    if not isinstance(ds, dict):
        raise DataError(f"{where}: a JSON {type(ds).__name__}, where nnU-Net's dataset.json is an object "
                        f"(channel_names, labels, file_ending)")
    channels = ds.get("channel_names") or ds.get("modality") or {"0": "image"}
    if isinstance(channels, list):
        channels = {str(i): c for i, c in enumerate(channels)}
    if not isinstance(channels, dict):
        raise DataError(f"{where}: 'channel_names' must map channel numbers to names, got {channels!r:.60}")
    ending = ds.get("file_ending", ".nii.gz")
    if not (isinstance(ending, str) and ending.lower().endswith((".nii", ".nii.gz"))):
        raise DataError(f"{where}: 'file_ending' must be .nii.gz or .nii (NIfTI scans), got {ending!r:.60}")
    labels = ds.get("labels") or {}
    if not isinstance(labels, dict):
        raise DataError(f"{where}: 'labels' must map names to ids (or ids to names), got a JSON "
                        f"{type(labels).__name__}")
    region = next((k for k, v in labels.items() if isinstance(v, (list, tuple))), None)
    if region is not None:
        raise DataError(f"{where}: 'labels' gives {region!r} as a region ({labels[region]!r:.40}); nnU-Net's region "
                        f"labels are not supported: give each class one id")
    try:                                                       # nnU-Net v2: name -> value; Decathlon: "value": name
        pairs = ({int(v): k for k, v in labels.items()} if all(isinstance(v, int) for v in labels.values())
                 else {int(k): v for k, v in labels.items()})
    except (TypeError, ValueError):
        raise DataError(f"{src / 'dataset.json'}: 'labels' must map names to ids (or ids to names), got {labels}") from None
    names = None
    if pairs:
        if sorted(pairs) != list(range(len(pairs))):
            raise DataError(f"{src / 'dataset.json'}: label ids {sorted(pairs)} are not 0..K-1")
        names = [pairs[i] for i in range(len(pairs))]
    n_ch = len(channels)
    cases = []
    for folder, lab_folder in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        d = src / folder
        if not d.is_dir():
            continue
        byname: dict = {}
        for f in sorted(d.iterdir()):
            if not f.name.endswith(ending) or f.name.startswith("."):
                continue
            base = f.name[:-len(ending)]
            m = re.fullmatch(r"(.+)_(\d{4})", base)
            case, ch = (m.group(1), int(m.group(2))) if m else (base, 0)   # Decathlon: no channel suffix
            byname.setdefault(case, {})[ch] = f
        for case, chans in byname.items():
            if sorted(chans) != list(range(n_ch)):
                raise DataError(f"{d}: case {case} has channel files {sorted(chans)}, but dataset.json names "
                                f"{n_ch} channel(s) {list(channels.values())}")
            lab = src / lab_folder / f"{case}{ending}"
            cases.append(Case(case, [chans[c] for c in range(n_ch)], lab if lab.exists() else None, case))
    used = {c.label for c in cases if c.label is not None}
    lone = [f for d in ("labelsTr", "labelsTs") if (src / d).is_dir() for f in sorted((src / d).iterdir())
            if f.name.endswith(ending) and not f.name.startswith(".") and f not in used]
    return Layout("nnunet", cases, names, n_ch, lonely_labels(lone))


def lonely_labels(files: list) -> list:
    """The note on label files that no scan of their name goes with (not converted), or none."""
    if not files:
        return []
    shown = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return [f"{len(files)} label file(s) without a scan of their name, not converted: {shown}"]


def pairs_layout(src: Path) -> Layout:
    img_dir = src / "images" if (src / "images").is_dir() else src
    lab_dir = next((src / d for d in ("labels", "masks") if (src / d).is_dir()), None)
    cases = []
    seen = {}
    for f in sorted(p for p in img_dir.iterdir() if p.is_file() and is_nifti(p)):
        if stem(f) in seen:
            raise DataError(f"{seen[stem(f)]} and {f} are both the scan {stem(f)!r}; keep one (each name is one "
                            f"volume, paired with the label of its name)")
        seen[stem(f)] = f
        lab = None
        if lab_dir is not None:
            lab = next((lab_dir / f"{stem(f)}{sfx}" for sfx in NIFTI_SUFFIXES if (lab_dir / f"{stem(f)}{sfx}").exists()),
                       None)
        cases.append(Case(stem(f), [f], lab, stem(f)))
    used = {c.label for c in cases if c.label is not None}
    lone = [] if lab_dir is None else [f for f in sorted(lab_dir.iterdir())
                                       if f.is_file() and is_nifti(f) and not f.name.startswith(".") and f not in used]
    return Layout("pairs", cases, None, notes=lonely_labels(lone))


# -- splits -------------------------------------------------------------------------------------------------

SPLITS = ("train", "val", "test", "all")


def split_cases(cases: list, split: str, holdout=(0.1, 0.2), seed: int = 0) -> list:
    """The cases of `split`. val and test are held-out fractions of the labeled groups (patients), drawn by a
    seeded permutation of their sorted names; train is every other group, the unlabeled ones included; all
    is every case."""
    if split not in SPLITS:
        raise DataError(f"--split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return list(cases)
    fv, ft = holdout
    if not (0 <= fv and 0 <= ft and fv + ft < 1):
        raise DataError(f"--holdout VAL TEST: fractions >= 0 with VAL + TEST < 1, got {fv} {ft}")
    labeled = sorted({c.group for c in cases if c.labeled})
    unlabeled_groups = {c.group for c in cases if not c.labeled}
    labeled = [g for g in labeled if g not in unlabeled_groups or all(c.labeled for c in cases if c.group == g)]
    perm = [labeled[i] for i in np.random.default_rng(seed).permutation(len(labeled))]
    n_val = round(fv * len(perm)) if fv else 0
    n_test = round(ft * len(perm)) if ft else 0
    held = {"val": set(perm[:n_val]), "test": set(perm[n_val:n_val + n_test])}
    if split in held:
        if not held[split]:
            raise DataError(f"the {split} split holds no patients: {len(labeled)} fully labeled patients at --holdout "
                            f"{fv} {ft}")
        return [c for c in cases if c.group in held[split]]
    out = held["val"] | held["test"]
    if labeled and not set(labeled) - out:                         # what would count the classes, train on
        raise DataError(f"the train split holds no labeled patient: --holdout {fv} {ft} holds out all "
                        f"{len(labeled)} fully labeled patients; lower --holdout")
    return [c for c in cases if c.group not in out]
