"""Converters from the layouts users bring to the project's HDF5 format (one file per split).

    voc         VOC 2012: JPEGImages/<id>.jpg + SegmentationClass[Aug]/<id>.png (palette PNG, 255 kept
                as ignore), ids from ImageSets/Segmentation/<split>.txt; 21 classes
    cityscapes  leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png,
                label ids mapped to the 19 train ids, everything else 255
    acdc        SSL4MIS layout: data/slices/<slice>.h5 (split "train", list train_slices.list) or
                data/<volume>.h5 (split "val", list val.list; every slice of each volume); float images
                in [0, 1] stored as uint8 (round(255 x)), patient ids kept in `groups`, the volume of each
                slice in `volumes`; 4 classes
    folder      images/<name>.<ext> + masks/<name>.png (class ids, 255 = ignore), same names

Images are resized bilinearly with antialiasing, masks with nearest neighbour. `size=(H, W)` stretches
to that size (the paper's presets: VOC 200x200, Cityscapes 128x256); `keep_aspect=True` fits the image
inside (H, W) and pads (images with 0, masks with 255). size=None keeps each image's size (all must match).

Nothing is corrupted without a word: images must be uint8 or floats in [0, 1] (else refused with their
range; `intensity="minmax"` rescales each image), masks must hold ids that fit in 0..255 (a 16-bit mask
is refused rather than wrapped) and, when the class count is inferred, ids 0..K-1 with no gaps (one stray
value would otherwise make a file of 200 classes); `mapping` ({V: C}, --map V=C) maps mask values first.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from ..fileio import atomic_path
from .pixels import float01_to_uint8
from ..usage import first_repeat
from .h5format import IGNORE_INDEX, DataError, Meta, check_masks, create_datasets, default_palette, open_h5

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]
CITYSCAPES_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                      [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                      [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                      [0, 80, 100], [0, 0, 230], [119, 11, 32]]
# Cityscapes label id -> train id (gtFine_labelIds), everything else -> 255.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
ACDC_CLASSES = ["background", "RV", "Myo", "LV"]
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")   # converters and predict
SIZE_PRESETS = {"voc": (200, 200), "cityscapes": (128, 256)}     # the paper's sizes (H, W)


@dataclass
class Item:
    """One image to convert: loaders of the image (H, W[, 3]) and mask (H, W), its group id, and the
    name of the 3D volume it is a slice of (ACDC validation / test volumes)."""
    name: str
    image: object       # () -> ndarray
    mask: object        # () -> ndarray uint8
    group: int = -1
    volume: str | None = None
    files: tuple = ()   # (image file, mask file) where read from files: what messages name
    table: object = None  # a lookup table the mask's values go through after --map (Cityscapes' label -> train ids)
    index: int | None = None  # the slice's index in its file, for an item that is one slice of a volume file

    def where(self, part: int = 0) -> str:
        """The image's (0) or mask's (1) file (and slice), for a message; the item's name where it has none."""
        if not self.files:
            return self.name
        return str(self.files[part]) + ("" if self.index is None else f" (slice {self.index + 1})")


# -- resizing -----------------------------------------------------------------------------------------

def resize_pair(image: np.ndarray, mask: np.ndarray, size, keep_aspect: bool = False,
                ignore_index: int = IGNORE_INDEX):
    """Resize an image (uint8 (H, W[, 3]) or float32 (H, W)) bilinearly with antialiasing and its mask
    with nearest neighbour to size = (H, W); keep_aspect fits inside and pads."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image, mask
    h, w = size
    if keep_aspect:
        s = min(h / image.shape[0], w / image.shape[1])
        inner = (max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s)))
    else:
        inner = (h, w)
    img = np.asarray(Image.fromarray(image).resize(inner[::-1], Image.BILINEAR))  # PIL antialiases when shrinking
    msk = np.asarray(Image.fromarray(mask).resize(inner[::-1], Image.NEAREST))
    if inner == (h, w):
        return img, msk
    top, left = (h - inner[0]) // 2, (w - inner[1]) // 2
    out_img = np.zeros((h, w) + img.shape[2:], img.dtype)
    out_msk = np.full((h, w), ignore_index, np.uint8)
    out_img[top:top + inner[0], left:left + inner[1]] = img
    out_msk[top:top + inner[0], left:left + inner[1]] = msk
    return out_img, out_msk


# -- sources ------------------------------------------------------------------------------------------

def read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: no such file (the id list of this split)")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    twice = first_repeat(names)                                     # a set's images written twice
    if twice is not None:
        raise DataError(f"{path}: {twice} is listed twice; list each once")
    return names


def open_image(path) -> Image.Image:
    """PIL's image of a one-frame image file: the one reader of the converters and predict. DataError for a
    missing or unreadable file and for a multi-frame one (a TIFF stack, an animated GIF or PNG), which would
    otherwise be read as its first frame alone."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():                                        # a FIFO would block the read forever
        raise DataError(f"{path}: not a regular file (a folder, a pipe or a device)")
    try:
        im = Image.open(path)
    except Exception as e:                                        # PIL raises OSError, SyntaxError, ValueError...
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if im.mode in ("RGB", "RGBA", "LA", "P") and any(";16" in str(t[3]) for t in im.tile):
        im.close()                                                # Pillow would keep the high byte alone
        raise DataError(f"{path}: {im.mode} of 16 bits per channel, which would be read as its high byte alone (a "
                        f"12-bit image comes out nearly black); save it as 8-bit {im.mode}, or as a 16-bit grey image "
                        f"(read with --intensity minmax)")
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        im.close()
        raise DataError(f"{path}: {frames} frames (a multi-page TIFF or an animated image), where one image per "
                        f"file is read; save each frame as a file of its own, or a stack of slices as a NIfTI scan")
    return im


def may_see_through(im: Image.Image) -> bool:
    """Whether an opened image can hold transparency (an alpha channel or a transparent palette entry), from
    its header alone."""
    return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info


def see_through(path: Path) -> bool:
    """Whether an image has pixels that are not fully opaque (an alpha channel or a transparent palette
    entry in use): reading it as RGB or gray drops that, and its transparent pixels show whatever colour
    they hold."""
    with open_image(path) as im:
        if not may_see_through(im):
            return False
        try:
            return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
        except Exception:                                         # unreadable data: reported where it is read
            return False


def in_colour(path: Path) -> bool:
    """Whether an image's pixels differ between its colour channels (an RGB file of equal channels is grey)."""
    with open_image(path) as im:
        try:
            rgb = np.asarray(upright(im).convert("RGB"))
        except Exception:                                         # unreadable data: reported where it is read
            return False
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def see_through_note(clear: list, what: str) -> str:
    """The note for images with transparent pixels (predict's inputs, a converted folder's images): `what`,
    the verb (predict, train on)."""
    many = len(clear) > 1
    return (f"{len(clear)} image{'s have' if many else ' has'} transparent pixels (first: {clear[0]}): read without "
            f"{'their' if many else 'its'} alpha channel, a transparent pixel as the colour it holds; flatten "
            f"{'them' if many else 'it'} onto a background first to {what} what a viewer shows")


def exif_hint(it: Item) -> str:
    """For a size mismatch: the image's EXIF orientation, when it turned the stored image (read as viewers
    show it), or ''."""
    if not it.files:
        return ""
    try:
        with open_image(it.files[0]) as im:
            turn = im.getexif().get(0x0112, 1)
    except Exception:                                             # unreadable: the mismatch is said without it
        return ""
    return (f" (the image is stored {im.height}x{im.width} and its EXIF orientation {turn} turns it, as viewers show "
            f"it: draw the mask over the turned image)" if turn in (5, 6, 7, 8) else "")


def upright(im: Image.Image) -> Image.Image:
    """The image as viewers and annotation tools show it: a camera's EXIF orientation applied (its stored
    pixels may be rotated or mirrored), so that an image and a mask drawn over it line up."""
    return ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im


def _pil(path: Path, mode: str | None = None, raw: bool = False) -> np.ndarray:
    with open_image(path) as im:
        try:
            im = upright(im)
            if raw:                                               # palette PNG: keep the indices
                return np.asarray(im)
            return np.asarray(im.convert(mode) if mode else im)
        except Exception as e:                                    # truncated data surfaces on load
            raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")          # PIL modes that convert("RGB") would saturate
GRAY_MODES = ("1", "L", "LA", *HIGH_BIT_MODES)
LOSSY_FORMATS = ("JPEG", "MPO")                                 # compression that moves class ids at edges


def _pil_mask(path: Path) -> np.ndarray:
    """A mask's raw values (palette indices kept); DataError for a lossy file whatever its name (a JPEG
    saved as .png), whose compression changes class ids along every edge."""
    with open_image(path) as im:
        kind = im.format
    if kind in LOSSY_FORMATS:
        raise DataError(f"{path}: a {kind} file (named {path.suffix or 'without an extension'}): its lossy compression "
                        f"changes class ids along every edge; save the masks as lossless PNG")
    return _pil(path, raw=True)


def _pil_image(path: Path, gray: bool = False) -> np.ndarray:
    """An RGB uint8 image (grey, "L", where the whole folder is grey: gray); a 16-bit, 32-bit or float image
    as its raw values (checked by load_pair)."""
    with open_image(path) as im:
        high = im.mode in HIGH_BIT_MODES
    return _pil(path, raw=True) if high else _pil(path, "L" if gray else "RGB")


def all_gray(paths) -> bool:
    """Whether every image of a folder is grey (PIL modes 1, L, LA and the 16-bit / float ones): stored with
    one channel, as the built-in data and the ACDC slices are (a grey PNG was stored as 3 equal channels,
    which a one-channel checkpoint cannot read)."""
    for p in paths:
        with open_image(p) as im:
            if im.mode not in GRAY_MODES:
                return False
    return True


def count_classes(items: list[Item], mapping=None) -> int:
    """K from the masks' values (after `mapping`): they must be 0..K-1 (and 255 = ignore). DataError saying
    which values are missing or stray, in which files and how many pixels, and what to pass instead."""
    hist, where = np.zeros(1 << 16, np.int64), {}
    for it in items:
        m = mapped_mask(it.where(1), np.asarray(it.mask()), mapping)
        values, counts = np.unique(m, return_counts=True)
        hist[values] += counts
        for v in values:
            where.setdefault(int(v), it.where(1))
    present = [int(v) for v in np.flatnonzero(hist) if v != IGNORE_INDEX]
    if not present:
        raise DataError(f"every mask is all {IGNORE_INDEX} (ignore): no class ids to learn from; check the masks, "
                        f"or map their values with --map V=C")
    return classes_without_gaps(hist, where, "masks", "pixels", f"or --map V=C to map a value to a class or to "
                                f"{IGNORE_INDEX} (ignore)")


def classes_without_gaps(hist: np.ndarray, where: dict, what: str, unit: str, fix: str) -> int:
    """K = the largest value of `hist` (counts per value; `where`: a file holding each) + 1, when every value
    below it appears too; DataError naming the stray values, their counts and files otherwise (one stray
    pixel of 200 would make 201 classes): the folder and NIfTI converters' rule."""
    present = [int(v) for v in np.flatnonzero(hist) if v != IGNORE_INDEX]
    k = max(present) + 1
    missing = sorted(set(range(k)) - set(present))
    if missing:
        stray = [v for v in present if v > missing[0]]
        shown = ", ".join(f"{v} ({hist[v]} {unit}, e.g. {where[v]})" for v in stray[:3])
        raise DataError(f"the {what} hold class ids {present[:12]}{'...' if len(present) > 12 else ''}: "
                        f"{', '.join(map(str, missing[:5]))} never appear below {shown}, so counting classes from "
                        f"the largest id would make {k} classes. Pass --num-classes K (larger ids are then refused), "
                        f"{fix}")
    return k


def mask_values(name: str, mask: np.ndarray) -> np.ndarray:
    """The mask as uint8; DataError naming the file, the value and the pixel count when a value does not fit
    (a 16-bit mask with ids above 255 would otherwise wrap around)."""
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype == np.bool_:                                     # a 1-bit image: background 0, class 1
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{name}: mask dtype {mask.dtype}; expected integer class ids")
    bad = (mask < 0) | (mask > 255)
    if bad.any():
        v = int(mask[bad].max() if (mask > 255).any() else mask[bad].min())
        raise DataError(f"{name}: mask value {v} ({int(bad.sum())} pixels outside 0..255) in a {mask.dtype} mask: "
                        f"class ids are 0..254 and {IGNORE_INDEX} = ignore; remap the masks, or --map V=C")
    return mask.astype(np.uint8)


def mapped_mask(name: str, mask: np.ndarray, mapping, seen: set | None = None) -> np.ndarray:
    """The mask as uint8 class ids: --map first, on the values as stored (a 16-bit mask's 1000=2 included),
    then the range check of mask_values."""
    if mask.dtype == np.bool_:
        mask = mask.astype(np.uint8)
    return mask_values(name, apply_mapping(mask, mapping, seen))


def apply_mapping(mask: np.ndarray, mapping, seen: set | None = None) -> np.ndarray:
    """The mask with each value V of {V: C} replaced by C (--map V=C); `seen` collects the Vs it holds, and
    ("top", T): the largest value its integer type can hold (an 8-bit mask never holds a V of 300)."""
    if not mapping:
        return mask
    if seen is not None:
        seen.add(("top", int(np.iinfo(mask.dtype).max)))
    out = mask.copy()
    for v, c in mapping.items():
        hit = mask == v
        out[hit] = c
        if seen is not None and hit.any():
            seen.add(v)
    return out


def image_values(name: str, image: np.ndarray, intensity: str = "strict") -> np.ndarray:
    """The image as uint8. strict: uint8 passes, floats must be finite and in [0, 1] (stored as round(255 x));
    anything else is refused with its range. minmax: each image rescaled from its own min..max to 0..255."""
    if image.dtype == np.uint8:
        return image
    finite = np.isfinite(image) if np.issubdtype(image.dtype, np.floating) else np.ones(image.shape, bool)
    if not finite.all():
        raise DataError(f"{name}: {int((~finite).sum())} NaN or infinite pixel values; fix the image")
    lo, hi = float(image.min()), float(image.max())
    if intensity == "minmax":
        scaled = (image.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(image.shape)
        return np.rint(scaled * 255.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return float01_to_uint8(image)
    raise DataError(f"{name}: {image.dtype} image with values {lo:.9g}..{hi:.9g}; expected uint8, or floats in [0, 1] "
                    f"(stored as round(255 x)). {MINMAX_ADVICE}")


MINMAX_ADVICE = "Pass --intensity minmax to rescale each image from its own range"   # convert's and predict's option


def voc_items(src: Path, split: str) -> tuple[list[Item], Meta]:
    masks_dir = src / "SegmentationClassAug" if split == "train_aug" else src / "SegmentationClass"
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: no such folder (expected a VOC2012 tree at {src})")
    ids = read_lines(src / "ImageSets" / "Segmentation" / f"{split}.txt")
    items = [Item(i, (lambda i=i: _pil(src / "JPEGImages" / f"{i}.jpg", "RGB")),
                  (lambda i=i: _pil_mask(masks_dir / f"{i}.png").astype(np.uint8)),
                  files=(src / "JPEGImages" / f"{i}.jpg", masks_dir / f"{i}.png")) for i in ids]
    meta = Meta(num_classes=21, class_names=VOC_CLASSES, palette=default_palette(21), ignore_index=IGNORE_INDEX,
                source=f"PASCAL VOC 2012 {split} ({src})")
    return items, meta


def cityscapes_items(src: Path, split: str) -> tuple[list[Item], Meta]:
    img_root, lbl_root = src / "leftImg8bit" / split, src / "gtFine" / split
    for d in (img_root, lbl_root):
        if not d.is_dir():
            raise DataError(f"{d}: no such folder (expected a Cityscapes tree at {src})")
    lut = np.full(34, IGNORE_INDEX, np.uint8)                       # label ids 0..33; another is refused
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    items = []
    for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
        stem = img.name[:-len("_leftImg8bit.png")]
        lbl = lbl_root / img.parent.name / f"{stem}_gtFine_labelIds.png"
        items.append(Item(stem, (lambda p=img: _pil(p, "RGB")), (lambda p=lbl: _pil_mask(p)), files=(img, lbl),
                          table=lut))                               # --map reads label ids, before the table
    if not items:
        raise DataError(f"{img_root}: no *_leftImg8bit.png images")
    meta = Meta(num_classes=19, class_names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE, ignore_index=IGNORE_INDEX,
                source=f"Cityscapes gtFine {split} ({src})")
    return items, meta


def h5_array(path: Path, name: str, index=None) -> np.ndarray:
    with open_h5(path) as f:
        if name not in f:
            raise DataError(f"{path}: missing dataset '{name}'")
        return f[name][...] if index is None else f[name][index]


def volume_shape(path: Path) -> tuple:
    """The (D, H, W) of an SSL4MIS volume file; DataError naming it unless its image and label are 3D arrays
    of one shape (a label of 3 slices under an image of 5 was cut to 3 by the converter and crashed training's
    volume scores)."""
    with open_h5(path) as f:
        for name in ("image", "label"):
            if name not in f or not hasattr(f[name], "shape"):
                raise DataError(f"{path}: missing dataset '{name}'")
        shapes = {name: tuple(f[name].shape) for name in ("image", "label")}
    if len(shapes["image"]) != 3 or shapes["image"] != shapes["label"]:
        raise DataError(f"{path}: image of shape {shapes['image']} and label of shape {shapes['label']}; a volume's "
                        f"image and label are (slices, height, width) arrays of one shape")
    return shapes["image"]


def patient_id(name: str) -> int:
    """'patient012_frame01_slice_3' -> 12."""
    try:
        return int(name.split("_")[0].removeprefix("patient"))
    except ValueError:
        raise DataError(f"ACDC name {name!r} does not start with patientNNN") from None


def acdc_items(src: Path, split: str) -> tuple[list[Item], Meta]:
    meta = Meta(num_classes=4, class_names=ACDC_CLASSES, palette=default_palette(4), ignore_index=IGNORE_INDEX,
                source=f"ACDC (SSL4MIS layout) {split} ({src})", labeled_subset="first_groups",
                preprocessing={"volume_intensity": "minmax"})        # SSL4MIS scaled each volume by its min..max
    if split == "train":
        names = read_lines(src / "train_slices.list")
        paths = [src / "data" / "slices" / f"{n}.h5" for n in names]
        items = [Item(n, (lambda p=p: h5_array(p, "image")), (lambda p=p: h5_array(p, "label")), patient_id(n),
                      files=(p, p)) for n, p in zip(names, paths)]
        return items, meta
    items, names = [], read_lines(src / f"{split}.list")
    if not names:                                                   # was "nothing to convert into <out>"
        raise DataError(f"{src / f'{split}.list'}: lists no volumes (the {split} split's volume names, one a line)")
    for vol in names:
        path = src / "data" / f"{vol}.h5"
        depth = volume_shape(path)[0]
        items += [Item(f"{vol}_slice_{z + 1}", (lambda p=path, z=z: h5_array(p, "image", z)),
                       (lambda p=path, z=z: h5_array(p, "label", z)), patient_id(vol), vol, files=(path, path), index=z)
                  for z in range(depth)]
    return items, meta


def folder_listing(src: Path) -> dict:
    """One listing of an image folder, what folder_items converts and folder_left_out reports: the visible
    entries (hidden files such as macOS's ._x.png are neither) of images/ and masks/, sorted."""
    listing = {}
    for d in ("images", "masks"):
        if not (src / d).is_dir():
            raise DataError(f"{src / d}: no such folder (expected images/ and masks/ with same-named files)")
        listing[d] = sorted(p for p in (src / d).iterdir() if not p.name.startswith("."))
    return listing


def folder_items(src: Path, num_classes: int | None, class_names=None, mapping=None,
                 listing: dict | None = None) -> tuple[list[Item], Meta]:
    listing = listing or folder_listing(src)
    img_dir, msk_dir = src / "images", src / "masks"
    images = [p for p in listing["images"] if p.suffix.lower() in IMAGE_EXTS and not p.is_dir()]
    if not images:
        dirs = [p.name for p in listing["images"] if p.is_dir()]
        raise DataError(f"{img_dir}: no images ({', '.join(IMAGE_EXTS)})" + (
            f"; its subfolders ({', '.join(dirs[:5])}) are not read: convert each as its own images/ + masks/ "
            f"pair" if dirs else ""))
    stems = {}
    for p in images:
        if p.stem in stems:
            raise DataError(f"{stems[p.stem]} and {p} share the name {p.stem!r}, and so the one mask {p.stem}.png; "
                            f"rename one (each image is paired with the mask of its name)")
        stems[p.stem] = p
    pngs = {}
    for q in (q for q in listing["masks"] if q.suffix.lower() == ".png" and q.is_file()):   # a.png or a.PNG
        if q.stem in pngs:
            raise DataError(f"{pngs[q.stem]} and {q} are both the mask of {q.stem!r}; keep one")
        pngs[q.stem] = q
    items, gray = [], all_gray(images)
    if clear := [p for p in images if see_through(p)]:             # as predict says it
        print(f"note: {see_through_note(clear, 'train on')}", file=sys.stderr)
    for p in images:
        m = pngs.get(p.stem, msk_dir / f"{p.stem}.png")
        if not m.exists():
            others = sorted(q.name for q in listing["masks"] if q.stem == p.stem and q.is_file())
            lossy = any(Path(o).suffix.lower() in (".jpg", ".jpeg") for o in others)
            hint = (f"; masks are read as lossless .png only (found {', '.join(others)}" + (
                ": a JPEG's compression changes class ids)" if lossy else "; save them as .png)") if others else "")
            raise DataError(f"{m}: no mask for image {p}{hint}")
        items.append(Item(p.stem, (lambda p=p: _pil_image(p, gray)), (lambda m=m: _pil_mask(m)), files=(p, m)))
    if num_classes is None:                                        # one pass over the masks to count classes
        num_classes = count_classes(items, mapping)
    names = class_names or [str(i) for i in range(num_classes)]
    meta = Meta(num_classes=num_classes, class_names=names, palette=default_palette(num_classes),
                ignore_index=IGNORE_INDEX, source=f"image folder ({src})")
    return items, meta


def hidden_images(folder: Path) -> list[Path]:
    """The hidden files of a folder named as images (.png, .x.png, macOS's ._x.png): not read, and noted."""
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.is_file()
                  and (p.name.lower() in IMAGE_EXTS or Path(p.name[1:]).suffix.lower() in IMAGE_EXTS))


def shown(paths) -> str:
    """The first five names of `paths`, sorted, and how many more: what a note lists."""
    names = sorted(p.name for p in paths)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def hidden_note(folder: Path, hidden: list[Path]) -> str:
    return (f"{folder}: {len(hidden)} hidden file(s) not read ({shown(hidden)}): a name that starts with a dot is "
            f"hidden; rename it to read it")


def folder_left_out(src: Path, listing: dict | None = None) -> list[str]:
    """What the folder converter leaves out, one note each: subfolders of images/ or masks/ (only the files
    directly inside are read), files of images/ that are no image, masks without an image of their name,
    hidden files named as images."""
    notes, visible = [], listing or folder_listing(src)
    for d, entries in visible.items():
        if dirs := [p for p in entries if p.is_dir()]:
            notes.append(f"{src / d}: {len(dirs)} subfolder(s) not read ({shown(dirs)}): only the files directly "
                         f"inside {d}/ are; convert each subfolder as its own images/ + masks/ pair")
    if other := [p for p in visible["images"] if not p.is_dir() and p.suffix.lower() not in IMAGE_EXTS]:
        notes.append(f"{src / 'images'}: {len(other)} file(s) not read as images ({shown(other)}; images are "
                     f"{', '.join(IMAGE_EXTS)})")
    stems = {p.stem for p in visible["images"] if p.suffix.lower() in IMAGE_EXTS and not p.is_dir()}
    if lone := [q for q in visible["masks"] if not q.is_dir() and q.stem not in stems]:
        notes.append(f"{src / 'masks'}: {len(lone)} mask(s) without an image of their name, not converted "
                     f"({shown(lone)})")
    if hidden := hidden_images(src / "images"):
        notes.append(hidden_note(src / "images", hidden))
    return notes


# -- writing ------------------------------------------------------------------------------------------

def load_pair(it: Item, intensity: str = "strict", mapping=None, seen: set | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W) or (H, W, 1 | 3), mask uint8 (H, W)) of an item; DataError naming it if unreadable,
    of the wrong form, or with values that do not fit (see image_values, mask_values). `seen`: apply_mapping's."""
    try:
        image, mask = np.asarray(it.image()), np.asarray(it.mask())
    except DataError:
        raise
    except Exception as e:                                          # a damaged file: any reader error
        raise DataError(f"{it.where()}: could not be read ({type(e).__name__}: {e})") from e
    if mask.ndim != 2:                                              # a colour-coded mask: the mask is at fault
        raise DataError(f"{it.where(1)}: a mask of shape {mask.shape}; masks are (H, W) class ids, a palette or grey "
                        f"PNG, not a colour picture of the classes (map its colours to ids first)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise DataError(f"{it.where()}: image of shape {image.shape}; expected (H, W) or (H, W, 3) images")
    integer = np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_      # bool: a 1-bit mask, ids 0 / 1
    if not (np.issubdtype(image.dtype, np.number) and integer):
        raise DataError(f"{it.where()}: image dtype {image.dtype} / mask dtype {mask.dtype}; expected numbers and "
                        f"integer class ids")
    if it.table is not None:                                        # after --map, on the ids it gave
        mask = apply_mapping(mask, mapping, seen)
        mapping = None
        ignored = mask == IGNORE_INDEX                              # --map V=255: ignored, as asked
        bad = ((mask < 0) | (mask >= len(it.table))) & ~ignored
        if bad.any():                                               # the table made any byte "ignore", silently
            v = int(mask[bad][0])
            raise DataError(f"{it.where(1)}: label id {v} ({int((mask == v).sum())} pixels) is no label id of the "
                            f"table (0..{len(it.table) - 1}); --map it to one, or to {IGNORE_INDEX} (ignore)")
        mask = np.where(ignored, IGNORE_INDEX, it.table[np.clip(mask, 0, len(it.table) - 1)]).astype(np.uint8)
    return image_values(it.where(0), image, intensity), mapped_mask(it.where(1), mask, mapping, seen)


def convert(items: list[Item], meta: Meta, out, size=None, keep_aspect: bool = False, progress: bool = True,
            intensity: str = "strict", mapping=None, replace: bool = True) -> dict:
    """Write items to `out` (atomically), checking each image and mask (intensity, mapping: load_pair).
    Returns a summary dict ("hist": the count of each mask value written; "unmapped": the --map values no mask held, a typo or another split's; "mask_top":
    the largest value the masks' integer types can hold, with --map).
    replace=False: an `out` another process wrote meanwhile is kept (fileio.commit)."""
    if not items:
        raise DataError(f"nothing to convert into {out}")
    out = Path(out)
    hist, seen = np.zeros(256, np.int64), set()
    meta.preprocessing = {**meta.preprocessing, "size": list(size) if size else None, "image_resize": "bilinear, antialiased",
                          "mask_resize": "nearest", "keep_aspect": keep_aspect,
                          "intensity": "round(255 x) for float images in [0, 1]" if intensity == "strict"
                          else "each image rescaled from its min..max to 0..255",
                          "mask_mapping": {str(k): int(v) for k, v in (mapping or {}).items()}}
    with atomic_path(out, replace) as tmp, h5py.File(tmp, "w") as f:
        for i, it in enumerate(tqdm(items, desc=f"convert -> {out.name}", disable=not progress)):
            image, mask = load_pair(it, intensity, mapping, seen)
            if image.shape[:2] != mask.shape:
                raise DataError(f"{it.where()}: image is {image.shape[0]}x{image.shape[1]} but its mask is "
                                f"{mask.shape[0]}x{mask.shape[1]}{exif_hint(it)}")
            check_masks(it.where(1), mask[None], meta.num_classes, meta.ignore_index, offset=None)   # before a
            image, mask = resize_pair(image, mask, size, keep_aspect, meta.ignore_index)    # resize drops a pixel
            if i == 0:
                c = 1 if image.ndim == 2 else image.shape[2]
                volumes = list(dict.fromkeys(x.volume for x in items if x.volume is not None))
                create_datasets(f, len(items), mask.shape[0], mask.shape[1], c, meta,
                                with_groups=any(x.group >= 0 for x in items), volume_names=volumes)
                shape = mask.shape
            elif mask.shape != shape:
                raise DataError(f"{it.where()}: size {mask.shape} differs from the first image's {shape}; "
                                f"pass --size H W to resize every image")
            if (1 if image.ndim == 2 else image.shape[2]) != f["images"].shape[3]:
                raise DataError(f"{it.where()}: {image.shape} has other channels than the first image's")
            f["images"][i] = image.reshape(f["images"].shape[1:])
            f["masks"][i] = mask
            if "groups" in f:
                f["groups"][i] = it.group
            if "volumes" in f:
                f["volumes"][i] = volumes.index(it.volume) if it.volume is not None else -1
            hist += np.bincount(mask.ravel(), minlength=256)
    return {"file": str(out), "images": len(items), "size": list(shape), "hist": hist,
            "unmapped": sorted(set(mapping or ()) - seen),
            "mask_top": max((t for kind, t in (x for x in seen if isinstance(x, tuple))), default=None)}
