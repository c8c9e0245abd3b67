"""The project's HDF5 format: one file per split, written once, read by every run.

    images   uint8 (N, H, W, C), C = 3 (RGB) or 1 (gray); one chunk per image, no compression
    masks    uint8 (N, H, W), class ids, `ignore_index` (255) = not labeled
    groups   int32 (N,), optional: the id of the group an image belongs to (ACDC: patient number),
             so that labeled subsets and splits can be drawn by group
    volumes  int32 (N,), optional: the index (in the attribute volume_names, JSON) of the 3D volume an
             image is a slice of (ACDC validation / test), for per-volume scores
    labeled  uint8 (N,), optional: 0 for an image that has no annotation at all (its mask all ignore):
             never drawn into the labeled subset, always in the unlabeled stream (NIfTI scans without a
             label file); absent = every image is annotated
    attrs    format = "cycleseg", format_version, num_classes, class_names (JSON), palette (JSON list
             of [r, g, b]), ignore_index, source, preprocessing (JSON), labeled_subset (optional:
             "random" or "first_groups", how labeled subsets are drawn), volume_info (optional, JSON:
             per volume of volume_names, what locates its voxels in the body: source file, native shape,
             spacing and affine, the slicing axis, and `slice_spacing`, the millimetres of a voxel of the
             stored slices (through-plane, rows, columns) that HD95 / ASD are measured in)

`write_split` writes atomically (temp file + rename). `read_meta` / `validate` check a file before
training and raise `DataError` naming the file, the dataset and the index of what is wrong.
"""
from __future__ import annotations

import errno
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..fileio import atomic_path, loads
from ..usage import final_path

FORMAT = "cycleseg"
FORMAT_VERSION = 1
IGNORE_INDEX = 255          # the ignore index every converter writes
# How a labeled subset is drawn from a split (attribute `labeled_subset`; absent = "random"):
#   random        a seeded draw of images, or of groups when the file has `groups`
#   first_groups  the first groups in file order (the SSL4MIS ACDC protocol: the first N patients)
SUBSET_RULES = ("random", "first_groups")
# What the NIfTI converter records in `preprocessing` and predict reads back: the slicing axis (a voxel axis,
# or that of the largest spacing) and the per-volume intensity rule.
SLICE_AXIS_AUTO = "largest spacing"
INTENSITY_RULES = ("percentile", "minmax")


class DataError(ValueError):
    """A dataset file or folder that cannot be used, with what and where."""


@dataclass
class Meta:
    num_classes: int
    class_names: list
    palette: list
    ignore_index: int = IGNORE_INDEX
    source: str = ""
    preprocessing: dict = field(default_factory=dict)
    labeled_subset: str = "random"      # one of SUBSET_RULES
    volume_names: list = field(default_factory=list)   # the 3D volumes of a file with `volumes`
    volume_info: list = field(default_factory=list)    # per volume: file, shape, spacing, affine, axis, slice_spacing
    # filled in by read_meta
    path: str = ""
    count: int = 0
    height: int = 0
    width: int = 0
    channels: int = 3


def default_palette(num_classes: int) -> list:
    """The PASCAL VOC colour map, which gives distinct colours for any number of classes."""
    pal = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.append([r, g, b])
    return pal


def palette_problem(palette, num_classes: int) -> str | None:
    """What is wrong with a palette (a list of [r, g, b] of whole numbers in 0..255; classes past its end get
    the default colours), or None."""
    if palette is None:
        return None
    if not isinstance(palette, list):
        return f"a palette must be a list of [r, g, b] colours, got {type(palette).__name__}"
    for colour in palette:
        if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)):
            return f"palette colour {colour!r} is not [r, g, b] with whole numbers in 0..255"
    return None


def names_problem(names, k: int) -> str | None:
    """What is wrong with a list of K class names (strings, distinct: scores are keyed by name), or None."""
    if not (isinstance(names, list) and len(names) == k and all(isinstance(n, str) for n in names)):
        return f"class_names {names!r:.60} (expected the {k} classes' names)"
    odd = next((n for n in names if not n.strip() or len(n) > 100 or any(ord(c) < 32 or ord(c) == 127 for c in n)),
               None)
    if odd is not None:                                             # a newline broke every table it was in
        return (f"class_names {names!r:.60}: {odd!r:.40} is empty, over 100 characters or holds a control character "
                f"(a newline, NUL, tab)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"class_names {names!r:.60}: {', '.join(map(repr, twice))} named twice (names must be distinct)"
    return None


def info_problem(info: dict) -> str | None:
    """What is wrong with the data description a checkpoint or an exported model carries (models.data_info:
    classes, channels, class names, palette, ignore_index, preprocessing), or None. Checked in this one place
    by every reader (load_run for evaluate, predict and export; predict for an .onnx), so that nothing exports
    what predict would then refuse, and nothing fails later on a field of the wrong kind."""
    def whole(v, least: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    k, c = info.get("num_classes", 1), info.get("channels", 1)
    if not whole(k, 1) or isinstance(c, bool) or c not in (1, 3):
        return f"{k!r} classes and {c!r} channels (expected >= 1 classes, 1 or 3 channels)"
    for side in ("height", "width"):
        if info.get(side) is not None and not whole(info[side], 1):
            return f"{side} {info[side]!r} (expected a whole number of pixels)"
    names = info.get("class_names")
    if names is not None and (problem := names_problem(names, k)):
        return problem
    ignore = info.get("ignore_index", IGNORE_INDEX)
    if not whole(ignore, 0) or ignore > 255 or ignore < k:         # a class id as ignore: as read_meta refuses
        return f"ignore_index {ignore!r} (expected a whole number in {k}..255, outside the class ids)"
    pre = info.get("preprocessing")
    if pre is not None and not isinstance(pre, dict):
        return f"preprocessing {pre!r:.60} (expected a dict of what the converter did)"
    try:
        json.dumps(pre, allow_nan=False)                            # exported models carry it as JSON
    except (TypeError, ValueError) as e:
        return f"preprocessing holds a value that is not plain data ({e})"[:200]
    if problem := preprocessing_problem(pre or {}):
        return problem
    problem = palette_problem(info.get("palette"), k)
    return f"palette: {problem}" if problem else None


def preprocessing_problem(pre: dict) -> str | None:
    """What is wrong with the converter's record that predict reads back (the NIfTI slicing axis and intensity
    rule), or None: checked when a file is read, as when a checkpoint is, so that no run trains on a
    description its checkpoints would then be refused for."""
    axis, rule = pre.get("slice_axis"), pre.get("volume_intensity")
    if axis is not None and axis != SLICE_AXIS_AUTO and not (type(axis) is int and 0 <= axis <= 2):
        return f"preprocessing slice_axis {axis!r} (expected 0, 1, 2 or {SLICE_AXIS_AUTO!r})"
    if rule is not None and rule not in INTENSITY_RULES:
        return f"preprocessing volume_intensity {rule!r:.60} (expected one of {', '.join(INTENSITY_RULES)})"
    order = pre.get("voxel_order")
    if order is not None and not (isinstance(order, str) and (order == "" or re.fullmatch(r"[RLAPSI?]{3}", order))):
        return f"preprocessing voxel_order {order!r:.60} (expected three of R/L, A/P, S/I, as RAS)"
    return None


def write_split(path, images: np.ndarray, masks: np.ndarray, meta: Meta, groups: np.ndarray | None = None) -> None:
    """Write one split atomically. images (N, H, W, C) or (N, H, W) uint8; masks (N, H, W) uint8."""
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or masks.dtype != np.uint8:
        raise DataError(f"{path}: images and masks must be uint8, got {images.dtype} and {masks.dtype}")
    if images.shape[:3] != masks.shape:
        raise DataError(f"{path}: images {images.shape} and masks {masks.shape} differ in count or size")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        create_datasets(f, len(images), images.shape[1], images.shape[2], images.shape[3], meta,
                        with_groups=groups is not None)
        f["images"][...] = images
        f["masks"][...] = masks
        if groups is not None:
            f["groups"][...] = np.asarray(groups, dtype=np.int32)


def create_datasets(f, n: int, h: int, w: int, c: int, meta: Meta, with_groups: bool = False,
                    volume_names=(), with_labeled: bool = False) -> None:
    """Create the (empty) datasets and attributes of a split in an open h5py file. OSError (ENOSPC) naming the
    file when its n images cannot fit in the free space of its disk: HDF5 on a full disk crashes the process."""
    if problem := names_problem(list(meta.class_names), meta.num_classes):
        raise DataError(problem)
    if meta.num_classes < 2:                                        # every mask background: nothing to learn
        raise DataError(f"the masks hold {meta.num_classes} class ({', '.join(meta.class_names)}) alone; a "
                        f"segmentation needs at least 2 (a background and a structure to find): are they all "
                        f"background, or read from the wrong files?")
    need = n * h * w * (c + 1) + n * 9 + (1 << 20)                  # uncompressed chunks, indices, the header
    try:
        free = shutil.disk_usage(Path(f.filename).parent).free
    except OSError:                                                 # not on a disk (an in-memory file)
        free = None
    if free is not None and need > free:
        raise OSError(errno.ENOSPC, f"No space left on device (the file needs about {need / 2 ** 20:.1f} MB, "
                                    f"its disk has {free / 2 ** 20:.1f} MB free)", str(final_path(Path(f.filename))))
    f.create_dataset("images", (n, h, w, c), dtype=np.uint8, chunks=(1, h, w, c) if n else None)
    f.create_dataset("masks", (n, h, w), dtype=np.uint8, chunks=(1, h, w) if n else None)
    if with_groups:
        f.create_dataset("groups", (n,), dtype=np.int32)
    if volume_names:
        f.create_dataset("volumes", (n,), dtype=np.int32)
        f.attrs["volume_names"] = json.dumps(list(volume_names))
        if meta.volume_info:
            f.attrs["volume_info"] = json.dumps(list(meta.volume_info))
    if with_labeled:
        f.create_dataset("labeled", (n,), dtype=np.uint8)
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["num_classes"] = int(meta.num_classes)
    f.attrs["class_names"] = json.dumps(list(meta.class_names))
    f.attrs["palette"] = json.dumps([list(map(int, p)) for p in meta.palette])
    f.attrs["ignore_index"] = int(meta.ignore_index)
    f.attrs["source"] = meta.source
    f.attrs["preprocessing"] = json.dumps(meta.preprocessing)
    f.attrs["labeled_subset"] = meta.labeled_subset


def open_h5(path):
    """Open a file read-only, turning h5py's errors into DataError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():                                          # a folder, a FIFO (would block), a device
        raise DataError(f"{path}: not a regular file (an HDF5 file of the project's format is expected)")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if "unable to lock file" in str(e):                         # HDF5's own lock, held by a writer
            raise DataError(f"{path}: another process has it open for writing (HDF5's file lock); wait until it "
                            f"has finished (a conversion still running?) and try again") from e
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from e


def read_meta(path) -> Meta:
    """Read and check the structure of a split (no pixel data is read). Every defect is a DataError."""
    with open_h5(path) as f:
        try:
            return _meta(f, path)
        except DataError:
            raise
        except (KeyError, ValueError, TypeError, OSError, RuntimeError) as e:   # attributes / datasets unreadable
            raise DataError(f"{path}: malformed cycleseg file ({type(e).__name__}: {e})") from e


def stored_completely(ds) -> bool:
    """Whether every element of a dataset has storage (a file can declare sizes it never wrote)."""
    n = ds.shape[0]
    if ds.chunks is None:
        return ds.id.get_storage_size() >= ds.size * ds.dtype.itemsize
    per_chunk = int(np.prod([-(-s // c) for s, c in zip(ds.shape, ds.chunks)]))
    return n == 0 or ds.id.get_num_chunks() >= per_chunk


def _attr_json(a, name, path, default=None):
    if name not in a:
        if default is not None:
            return default
        raise DataError(f"{path}: missing attribute '{name}'")
    try:
        return loads(a[name])
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: attribute '{name}' is not valid JSON ({e})") from e


def _meta(f, path) -> Meta:
    if f.attrs.get("format") != FORMAT:
        raise DataError(f"{path}: not a cycleseg file (attribute 'format' is {f.attrs.get('format')!r}); "
                        f"convert the data with `python -m cycleseg.data convert`")
    for name in ("images", "masks", "groups", "volumes", "labeled"):
        if name in f and not isinstance(f[name], h5py.Dataset):    # a group (or link) edited in
            raise DataError(f"{path}: '{name}' is a {type(f[name]).__name__.lower()}, where a dataset belongs")
    for name in ("images", "masks"):
        if name not in f:
            raise DataError(f"{path}: missing dataset '{name}'")
        if f[name].dtype != np.uint8:
            raise DataError(f"{path}: dataset '{name}' must be uint8, got {f[name].dtype}")
    im, ms = f["images"], f["masks"]
    if im.ndim != 4 or ms.ndim != 3:
        raise DataError(f"{path}: 'images' must be (N, H, W, C) and 'masks' (N, H, W), "
                        f"got {im.shape} and {ms.shape}")
    if im.shape[0] != ms.shape[0]:
        raise DataError(f"{path}: {im.shape[0]} images but {ms.shape[0]} masks")
    if im.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    if im.shape[1:3] != ms.shape[1:3]:
        raise DataError(f"{path}: images are {im.shape[1]}x{im.shape[2]} but masks are "
                        f"{ms.shape[1]}x{ms.shape[2]}")
    if im.shape[3] not in (1, 3):
        raise DataError(f"{path}: images must have 1 or 3 channels, got {im.shape[3]}")
    for name in ("images", "masks"):
        if not stored_completely(f[name]):
            raise DataError(f"{path}: dataset '{name}' declares {f[name].shape[0]} samples but not all were "
                            f"written (an interrupted or damaged file)")
    _check_per_image(f, path, im.shape[0])
    a = f.attrs
    k, ignore = _integer_attr(a, "num_classes", path), _integer_attr(a, "ignore_index", path)
    if "format_version" in a and _integer_attr(a, "format_version", path) < 1:
        raise DataError(f"{path}: format_version {a['format_version']} is no version of the format "
                        f"(1..{FORMAT_VERSION}); the file was edited: convert the data again")
    if "format_version" in a and _integer_attr(a, "format_version", path) > FORMAT_VERSION:
        raise DataError(f"{path}: format_version {a['format_version']} was written by a newer cycleseg (this one "
                        f"reads up to {FORMAT_VERSION}); upgrade cycleseg, or convert the data again with this one")
    if k < 2:
        raise DataError(f"{path}: num_classes is {k}; a segmentation needs at least 2 classes (a background and a "
                        f"structure to find): convert the data again with masks that hold them")
    if not k <= ignore <= 255:                                      # a class id as ignore: it is never learned
        raise DataError(f"{path}: ignore_index {ignore} must lie outside the class ids 0..{k - 1} (and <= 255; "
                        f"cycleseg writes {IGNORE_INDEX})")
    rule = str(a.get("labeled_subset", "random"))
    if rule not in SUBSET_RULES:
        raise DataError(f"{path}: attribute 'labeled_subset' is {rule!r}, expected one of {SUBSET_RULES}")
    names, palette, vnames, vinfo, preprocessing = _json_attrs(a, path, k)
    if problem := preprocessing_problem(preprocessing):
        raise DataError(f"{path}: attribute 'preprocessing': {problem}; convert the data again")
    _check_volumes(f, path, vnames)
    return Meta(num_classes=k, class_names=names, palette=palette, ignore_index=ignore, source=str(a.get("source", "")),
                preprocessing=preprocessing, labeled_subset=rule,
                volume_names=vnames, volume_info=vinfo, path=str(path), count=int(im.shape[0]),
                height=int(im.shape[1]), width=int(im.shape[2]), channels=int(im.shape[3]))


def _json_attrs(a, path, k: int):
    """(class_names, palette, volume_names, volume_info, preprocessing) from their JSON attributes, checked."""
    names, palette = _attr_json(a, "class_names", path), _attr_json(a, "palette", path)
    if not (isinstance(names, list) and len(names) == k and all(isinstance(n, str) for n in names)) or not isinstance(palette, list):
        raise DataError(f"{path}: class_names must list the {k} classes' names (strings) and palette be a list of colours")
    if problem := names_problem(names, k):
        raise DataError(f"{path}: attribute {problem}")
    if problem := palette_problem(palette, k):
        raise DataError(f"{path}: attribute 'palette': {problem}")
    palette = palette + default_palette(k)[len(palette):]           # classes without a colour get the default
    vnames, vinfo = _attr_json(a, "volume_names", path, []), _attr_json(a, "volume_info", path, [])
    preprocessing = _attr_json(a, "preprocessing", path, {})
    if not isinstance(preprocessing, dict):
        raise DataError(f"{path}: attribute 'preprocessing' must be a JSON object (what the converter did), got "
                        f"{type(preprocessing).__name__}")
    if not (isinstance(vnames, list) and all(isinstance(v, str) for v in vnames)):
        raise DataError(f"{path}: attribute 'volume_names' must be a JSON list of names, got {vnames!r:.60}")
    if vinfo and (not isinstance(vinfo, list) or len(vinfo) != len(vnames) or not all(
            isinstance(v, dict) and _positive3(v.get("slice_spacing")) for v in vinfo)):
        raise DataError(f"{path}: attribute 'volume_info' must give, for each of the {len(vnames)} volumes, a "
                        f"slice_spacing of three positive lengths (mm, {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g})")
    return names, palette, vnames, vinfo, preprocessing


def _integer_attr(a, name: str, path) -> int:
    """An attribute that must hold a whole number (3.9 classes, "4" or True are refused, not rounded)."""
    if name not in a:
        raise DataError(f"{path}: missing attribute '{name}'")
    value = a[name]
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))) and not (
            isinstance(value, (float, np.floating)) and float(value).is_integer()):
        shown = value.item() if isinstance(value, np.generic) else value
        raise DataError(f"{path}: attribute '{name}' must be a whole number, got {shown!r}")
    return int(value)


def _check_per_image(f, path, n: int) -> None:
    """The optional per-image datasets: one value per image; 'groups' integers, 'labeled' 0 or 1."""
    for extra in ("groups", "volumes", "labeled"):
        if extra in f and f[extra].shape != (n,):
            raise DataError(f"{path}: dataset '{extra}' has shape {f[extra].shape}, expected ({n},)")
    if "groups" in f and not np.issubdtype(f["groups"].dtype, np.integer):
        raise DataError(f"{path}: dataset 'groups' must hold integers (a patient or video id per image), found "
                        f"dtype {f['groups'].dtype}")
    if "labeled" in f:
        flags = f["labeled"]
        values = flags[...] if flags.dtype.kind in "biu" else None
        if values is None or not np.isin(values, (0, 1)).all():
            found = f"dtype {flags.dtype}" if values is None else f"{int(values[~np.isin(values, (0, 1))][0])}"
            raise DataError(f"{path}: dataset 'labeled' must hold 0 (no annotation) or 1 per image, found {found}")


def _check_volumes(f, path, vnames) -> None:
    """DataError unless each slice's volume (dataset 'volumes') is -1 (none) or one of volume_names."""
    if "volumes" not in f:
        return
    vol = f["volumes"][:]
    want = f"integers -1 (no volume) or 0..{len(vnames) - 1} (indexes into the {len(vnames)} volume_names)"
    if not np.issubdtype(vol.dtype, np.integer):
        raise DataError(f"{path}: dataset 'volumes' must hold {want}, found dtype {vol.dtype}")
    bad = (vol < -1) | (vol >= len(vnames))
    if bad.any():
        raise DataError(f"{path}: dataset 'volumes' must hold {want}, found {int(vol[bad][0])} ({int(bad.sum())} slices)")
    if len(set(vnames)) != len(vnames):
        twice = next(v for v in vnames if vnames.count(v) > 1)
        raise DataError(f"{path}: attribute 'volume_names' names {twice!r} twice; each volume needs a name of its own")
    starts = vol[np.r_[True, vol[1:] != vol[:-1]]]                 # the volume of each run of equal slices
    runs = starts[starts >= 0]
    if len(np.unique(runs)) != len(runs):                            # a volume's slices apart: stacked as one
        v = int(next(x for x in runs if (runs == x).sum() > 1))
        raise DataError(f"{path}: the slices of volume {vnames[v]!r} are not consecutive in the file (others lie "
                        f"between them), so they would not stack into its 3D volume; convert the data again")


MAX_SPACING_MM = 1e4                                                # 10 m a voxel: beyond, a damaged value (1e308
                                                                    # made HD95 NaN and ASD infinite)
MIN_SPACING_MM = 1e-6                                               # 1 nm: below, a damaged value (1e-30 made every
                                                                    # HD95 and ASD 0.0 mm)


def _positive3(v) -> bool:
    return (isinstance(v, list) and len(v) == 3
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and MIN_SPACING_MM <= x <= MAX_SPACING_MM for x in v))


def check_masks(path, masks: np.ndarray, num_classes: int, ignore_index: int, offset: int | None = 0,
                labeled: np.ndarray | None = None) -> None:
    """Raise DataError at the first mask holding a value >= num_classes that is not ignore_index, or holding a
    label where the file's `labeled` flags (those of these masks, when it has them) say no annotation; offset:
    the masks' first index in the file's dataset 'masks', or None for a converter's source mask (named as a mask)."""
    if labeled is not None and (flagged := np.flatnonzero(~np.asarray(labeled, bool) & (masks != ignore_index)
                                                          .reshape(len(masks), -1).any(axis=1))).size:
        raise DataError(f"{path}: dataset 'masks', index {(offset or 0) + int(flagged[0])}: flagged as not annotated "
                        f"('labeled' 0) but its mask holds labels: the file contradicts itself (converters write "
                        f"such masks all {ignore_index}); convert the data again")
    bad = (masks >= num_classes) & (masks != ignore_index)          # (n, H, W)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(len(masks), -1).any(axis=1))[0])
        v = int(masks[i][bad[i]][0])
        where = "mask" if offset is None else f"dataset 'masks', index {offset + i}"
        raise DataError(f"{path}: {where}: value {v} ({int((masks[i] == v).sum())} pixels) is not a class id "
                        f"(num_classes={num_classes}) nor the ignore index {ignore_index}")


def validate(path, chunk: int = 256) -> Meta:
    """read_meta plus a scan of every mask value (chunked; seconds for tens of thousands of images)."""
    meta = read_meta(path)
    with open_h5(path) as f:
        ms, flags = f["masks"], (f["labeled"][...].astype(bool) if "labeled" in f else None)
        for s in range(0, meta.count, chunk):
            check_masks(path, ms[s:s + chunk], meta.num_classes, meta.ignore_index, offset=s,
                        labeled=None if flags is None else flags[s:s + chunk])
    return meta
