"""python -m cycleseg.predict CHECKPOINT INPUTS... --out DIR: masks for your own images.

CHECKPOINT is a run's last.pt / best.pt, or a model exported with python -m cycleseg.export (.onnx, run
by onnxruntime: the masks and overlays, no G_SI image).

INPUTS are image files, folders of images, HDF5 files of the project's format, or NIfTI scans
(.nii / .nii.gz files, or folders of them). For each scan `<name>.nii[.gz]` the output folder gets
    <name>.nii.gz        its label volume (uint8) with the scan's shape, affine and header
(predict_nifti.py says how: the converter's slicing and intensity rules, class scores resampled back
to the scan's grid). For each image
`<name>` the output folder gets
    <name>_mask.png      the predicted classes as a palette PNG at the image's own size (palette index =
                         class id; resized back with nearest neighbour)
    <name>_overlay.png   the image with the classes' colours blended over it
    <name>_gsi.png       G_SI's image from the predicted mask (when the checkpoint has G_SI), at the
                         image's size
and inputs.csv maps every input to its outputs. <name> is the file's stem; stems that several inputs
share get _1, _2, ... (never another input's stem).
Images are resized (bilinear) to the size the networks were trained at and converted to the
checkpoint's channels (RGB or gray). Inference runs in batches, on the GPU when there is one. Every
input is checked before anything is written, and the outputs appear all at once: a failure leaves the
output folder as it was. Files of an earlier prediction in --out are not replaced unless --overwrite.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import inference
from .report import csv_bytes, csv_line
from .checkpoint import load_run, networks_from_checkpoint
from .cli import checkpoint_parser, device_of, refuse_existing, run_or_exit
from .config import MAX_SIDE, SIDE_MULTIPLE, check_device, least_side
from .data import nifti
from .data.convert import (GRAY_MODES, HIGH_BIT_MODES, IMAGE_EXTS, hidden_images, hidden_note, image_values,
                           in_colour, may_see_through, open_image, see_through, see_through_note, upright)
from .data.h5format import DataError, default_palette, info_problem, open_h5, read_meta
from .data.pixels import to_input
from .export import model_digest
from .fileio import loads, write_files
from .predict_nifti import RESAMPLE, predict_scans, scan_inputs
from .usage import UsageError, path_arg, path_text, run_command



@dataclass
class Input:
    name: str           # output name stem
    load: object        # () -> uint8 (H, W, C) at the image's own size
    source: str = ""    # the file it comes from


def load(item: Input) -> np.ndarray:
    """The image of an input; DataError naming its file when it cannot be decoded (e.g. a truncated JPEG,
    which passes PIL's header check)."""
    try:
        return item.load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{item.source}: could not be read ({type(e).__name__}: {e}); nothing was written") from e


def unique_names(stems: list[str]) -> list[str]:
    """Output names for input stems: each stem itself where only one input has it, else <stem>_<k> with the
    smallest k that is no input's stem and no name given already (a/x.png, b/x.png, c/x_1.png -> x_2...)."""
    taken, counts, out = set(stems), {}, []
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    used = {s for s in stems if counts[s] == 1}
    for s in stems:
        if counts[s] == 1:
            out.append(s)
            continue
        k = 1
        while f"{s}_{k}" in taken or f"{s}_{k}" in used:
            k += 1
        used.add(f"{s}_{k}")
        out.append(f"{s}_{k}")
    return out


def read_image(p: Path, channels: int, intensity: str | None):
    """An image file as uint8 (H, W, channels): 8-bit images converted to the checkpoint's channels; 16-bit,
    32-bit and float images by the converters' rule (convert.image_values: floats in [0, 1] as round(255 x),
    other values only with intensity "minmax", each rescaled from its own range), else DataError."""
    with open_image(p) as raw:
        im = upright(raw)                                            # as viewers show it (EXIF orientation)
        if im.mode not in HIGH_BIT_MODES:
            return np.asarray(im.convert("RGB" if channels == 3 else "L")).reshape(im.height, im.width, channels)
        gray = image_values(str(p), np.asarray(im), intensity or "strict")    # the converters' one rule
    return np.repeat(gray[..., None], channels, axis=2)


def note_subfolder_images(folder: Path) -> None:
    """A note on the images in `folder`'s subfolders: not read (NIfTI scans there are)."""
    below = sorted(f for f in folder.rglob("*") if f.parent != folder and f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if below:
        print(f"note: {folder}: {len(below)} image(s) in its subfolders not read (first: {below[0]}); images are "
              f"read from the folder itself (NIfTI scans from its subfolders too): give each subfolder",
              file=sys.stderr)


def collect(paths, channels: int, intensity: str | None = None) -> list[Input]:
    """Every image of the inputs, checked readable; DataError naming the first that is not."""
    found, clear, colour = [], [], []                                # (stem, loader, source); see-through, colour images

    def add(stem: str, load, source):
        found.append((stem, load, str(source)))

    def image(p: Path):
        with open_image(p) as im:                # one frame, readable header; a FIFO refused, not read forever
            high, alpha = im.mode in HIGH_BIT_MODES, may_see_through(im)     # from the header: read once
            grey = im.mode in GRAY_MODES
            try:
                im.verify()
            except Exception as e:
                raise DataError(f"{p}: not a readable image ({type(e).__name__}: {e})") from e
        if high and intensity != "minmax":
            read_image(p, channels, intensity)                       # raises, naming the image
        if alpha and see_through(p):                                # its pixels read only where it may be
            clear.append(p)
        if channels == 1 and not grey and in_colour(p):             # a grey model given a colour photograph
            colour.append(p)
        add(p.stem, lambda p=p: read_image(p, channels, intensity), os.path.abspath(p))

    for raw in paths:
        p = Path(raw)
        if nifti.is_nifti(p) and (p.is_file() or not p.exists()):
            if not p.exists():
                raise DataError(f"{p}: no such file")
            continue                                                 # a scan: predict_nifti's
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file()
                           and not f.name.startswith("."))
            if hidden := hidden_images(p):                           # as the folder converter: said, not read
                print(f"note: {hidden_note(p, hidden)}", file=sys.stderr)
            note_subfolder_images(p)
            if not files and not any(nifti.is_nifti(f) for f in p.rglob("*")):
                raise DataError(f"{p}: a folder with no images ({', '.join(IMAGE_EXTS)}) and no NIfTI scans")
            for f in files:
                image(f)
        elif p.suffix.lower() in (".h5", ".hdf5"):
            meta = read_meta(p)
            if meta.channels != channels:
                raise DataError(f"{p}: {meta.channels}-channel images, but the checkpoint takes {channels}")
            for i in range(meta.count):
                def read(p=p, i=i):
                    with open_h5(p) as f:
                        return f["images"][i]
                add(f"{p.stem}_{i:05d}", read, f"{os.path.abspath(p)}[{i}]")
        elif p.exists():
            image(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if clear:
        print(f"note: {see_through_note(clear, 'predict')}", file=sys.stderr)
    if colour:
        many = len(colour) > 1
        print(f"note: {len(colour)} image{'s are' if many else ' is'} in colour (first: {colour[0]}), where the model "
              f"takes grey images (1 channel): read as grey (PIL's luma, 0.299 R + 0.587 G + 0.114 B)", file=sys.stderr)
    names = unique_names([stem for stem, _, _ in found])
    return [Input(name, load, source) for name, (_, load, source) in zip(names, found)]


class CheckpointModel:
    """G_IS (and G_SI when the run has it) of a checkpoint, on a device: uint8 batches in, class ids and
    G_SI's images out."""

    def __init__(self, path, device, precision: str = "auto"):
        state = load_run(path)
        cfg, info, nets = networks_from_checkpoint(state, path)
        self.nets = {k: v.to(device) for k, v in nets.items()}
        inference.prepare(self.nets["G_IS"], device, precision)      # the fast inference path
        self.device, self.has_gsi = device, "G_SI" in nets
        self.num_classes, self.channels = info["num_classes"], info["channels"]
        self.size = (info.get("height") or cfg.image_size, info.get("width") or cfg.image_size)   # (h, w)
        self.palette = full_palette(info.get("palette"), self.num_classes, path)
        self.info = info

    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, h, w, C) at the training size -> float32 class scores (B, K, h, w)."""
        x = to_input(torch.from_numpy(images).permute(0, 3, 1, 2), self.device)
        return inference.logits(self.nets["G_IS"], x).cpu().numpy()

    @torch.no_grad()
    def __call__(self, images: np.ndarray):
        """uint8 (B, h, w, C) at the training size -> (class ids (B, h, w), G_SI's uint8 (B, h, w, C) or None)."""
        x = to_input(torch.from_numpy(images).permute(0, 3, 1, 2), self.device)         # (B, C, h, w)
        pred = inference.segment(self.nets["G_IS"], x)                                 # (B, h, w)
        fake = inference.synthesize(self.nets["G_SI"], pred, self.num_classes).numpy() if self.has_gsi else None
        return pred.cpu().numpy(), fake


def onnx_providers(device: str, available) -> list:
    """onnxruntime's providers for --device (checked as every command checks it): CUDA's for cuda[:N]
    (refused where this onnxruntime has none: it ran on the CPU without a word), and for auto where it has one."""
    name = check_device(device) if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    kind = torch.device(name)
    if kind.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        if device == "auto":
            return ["CPUExecutionProvider"]
        raise UsageError(f"--device {device}: this onnxruntime runs an ONNX model on the CPU only (its providers: "
                         f"{', '.join(available)}); pip install onnxruntime-gpu, use --device cpu, or predict from "
                         f"the checkpoint")
    return [("CUDAExecutionProvider", {"device_id": kind.index or 0}), "CPUExecutionProvider"]


class OnnxModel:
    """An exported G_IS (python -m cycleseg.export) run by onnxruntime; what it expects from its metadata."""

    has_gsi = False

    def __init__(self, path, device: str = "cpu", precision: str = "auto"):
        self.path = path
        try:
            # onnxruntime is optional (the `export` extra): needed only to predict from an ONNX file
            import onnxruntime
        except ImportError:
            raise UsageError(f"{path}: predicting from an ONNX model needs onnxruntime: pip install onnxruntime "
                             f"(or pip install 'cycleseg[export]')") from None
        if precision not in ("auto", "fp32"):                       # it was run in fp32 without a word
            raise UsageError(f"--precision {precision}: an ONNX model runs in the fp32 it was exported in; leave "
                             f"--precision out, or predict from the checkpoint for {precision}")
        providers = onnx_providers(device, onnxruntime.get_available_providers())
        if not Path(path).exists():
            raise DataError(f"{path}: no such file")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as e:
            raise DataError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        try:
            meta = {k.removeprefix("cycleseg."): loads(v) for k, v in props.items() if k.startswith("cycleseg.")}
        except ValueError as e:
            raise DataError(f"{path}: its cycleseg metadata is not JSON ({e}); export the checkpoint again") from None
        if not {"channels", "num_classes", "image_size", "palette"} <= set(meta):
            raise DataError(f"{path}: an ONNX model without cycleseg's metadata; export checkpoints with "
                            f"python -m cycleseg.export")
        problem = onnx_meta_problem(meta)
        if problem:
            raise DataError(f"{path}: its cycleseg metadata is damaged ({problem}); export the checkpoint again")
        declared = self.session.get_inputs()[0].shape                # [batch, C, H, W], C fixed by the export
        if len(declared) != 4 or (isinstance(declared[1], int) and declared[1] != meta["channels"]):
            raise DataError(f"{path}: its cycleseg metadata is damaged (channels {meta['channels']}, the model's "
                            f"input {declared}); export the checkpoint again")
        check_model(path, props)                                    # last: the checks above say more
        self.channels, self.num_classes = meta["channels"], meta["num_classes"]
        self.palette = full_palette(meta["palette"], self.num_classes, path)
        self.size = tuple(meta["image_size"])
        self.info = {"preprocessing": meta.get("preprocessing") or {}}

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, K, H, W) float class scores; DataError naming the model when its output is not that (a graph
        that carries cycleseg's metadata but is not G_IS would otherwise crash or give blank masks)."""
        x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        y = self.session.run(None, {self.session.get_inputs()[0].name: x})[0]
        want = (x.shape[0], self.num_classes, *x.shape[2:])
        if not (isinstance(y, np.ndarray) and y.shape == want and np.issubdtype(y.dtype, np.floating)):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, np.ndarray) else type(y).__name__
            raise DataError(f"{self.path}: the model's output is {got} for an input of {tuple(x.shape)}, where G_IS gives "
                            f"float class scores {want} (num_classes {self.num_classes} in its metadata); export the "
                            f"checkpoint again with python -m cycleseg.export")
        if not np.isfinite(y).all():
            raise DataError(f"{self.path}: the model's output holds NaN or infinite scores; export the checkpoint again")
        return y

    def __call__(self, images: np.ndarray):
        return self.logits(images).argmax(1), None


def check_model(path, props: dict) -> None:
    """DataError when an exported model (its graph, weights or cycleseg metadata `props`) is not what it was
    exported with (export's model_sha256), or carries no digest (exported before them, or the digest removed:
    export the checkpoint again, a matter of seconds)."""
    try:
        saved = loads(props.get("cycleseg.model_sha256", "null"))
    except ValueError:
        saved = None
    if not isinstance(saved, str):
        raise DataError(f"{path}: its metadata holds no model_sha256 (exported by an older cycleseg, or edited), so "
                        f"it cannot be checked to be the model it was exported as; export the checkpoint again")
    try:
        import onnx                                                 # the `export` extra, beside onnxruntime
    except ImportError:
        print(f"note: {path}: its digest is not checked (the onnx package is not installed: pip install "
              f"'cycleseg[export]')", file=sys.stderr)
        return
    try:
        found = model_digest(onnx.load_from_string(Path(path).read_bytes()), props)
    except Exception as e:                                          # onnxruntime read it; onnx should too
        raise DataError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if found != saved:
        raise DataError(f"{path}: it is not the model it was exported as (its weights, nodes or metadata were edited "
                        f"after the export: the model_sha256 in its metadata differs); export the checkpoint again")


def full_palette(palette, num_classes: int, where) -> list:
    """A colour per class: the given ones, then the default colours, with a note naming `where` (the model)
    when a palette given colours fewer classes than the model has."""
    given = list(palette or [])
    if palette is not None and len(given) < num_classes:
        print(f"note: {where}: its palette colours {len(given)} of the {num_classes} classes; the others are "
              f"drawn in the default colours", file=sys.stderr)
    return given + default_palette(num_classes)[len(given):]


def onnx_meta_problem(meta: dict) -> str | None:
    """What is wrong with an exported model's metadata (the types predict relies on), or None."""
    def whole(v, least=1):
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    if problem := info_problem(meta):                               # what a checkpoint's description holds too
        return problem
    size, generator = meta["image_size"], meta.get("generator", "resnet")
    if not isinstance(generator, str) or generator not in SIDE_MULTIPLE:   # a list is not even hashable
        return f"generator {generator!r:.60} (expected one of {', '.join(SIDE_MULTIPLE)})"
    multiple, least = SIDE_MULTIPLE[generator], least_side(generator)
    if not (isinstance(size, list) and len(size) == 2
            and all(whole(v, least) and v % multiple == 0 and v <= MAX_SIDE for v in size)):
        return (f"image_size {size!r:.60}, expected [height, width], multiples of {multiple} of at least {least} "
                f"and at most {MAX_SIDE}")
    return None


def resize(image: np.ndarray, size, resample) -> np.ndarray:
    """(H, W, C) or (H, W) uint8 -> the same at size (h, w)."""
    squeeze = image.ndim == 3 and image.shape[2] == 1
    out = np.asarray(Image.fromarray(image[..., 0] if squeeze else image).resize(size[::-1], resample))
    return out[..., None] if squeeze else out


def outputs(model, item: Input, original: np.ndarray, pred: np.ndarray, fake) -> dict:
    """{file name: bytes} of one image: its mask (palette PNG), overlay and G_SI image at its own size."""
    # matplotlib (figures) costs ~0.8 s to import: loaded for images only, not for scans (predict_e2e.py)
    from . import figures
    size = original.shape[:2]
    mask = resize(pred.astype(np.uint8), size, Image.NEAREST)
    files = {f"{item.name}_mask.png": figures.palette_png(mask, model.palette),
             f"{item.name}_overlay.png": figures.png(figures.overlay(figures.rgb(original), mask, model.palette))}
    if fake is not None:
        files[f"{item.name}_gsi.png"] = figures.png(Image.fromarray(figures.rgb(resize(fake, size, Image.BILINEAR))))
    return files


def input_folder(out, inputs):
    """The input (a folder, or an image file) whose folder --out is, or None."""
    target = os.path.realpath(out)                                  # realpath: a symlink loop is no error here
    for raw in inputs:
        p = Path(raw)
        if (p.is_dir() or (p.is_file() and p.suffix.lower() in IMAGE_EXTS)) and \
                os.path.realpath(p if p.is_dir() else p.parent) == target:
            return raw
    return None


def run(a) -> dict:
    if a.checkpoint.suffix.lower() == ".pt2":
        raise UsageError(f"{a.checkpoint}: a torch.export program (load it with torch.export.load); predict takes a "
                         f"run's last.pt / best.pt or an exported .onnx")
    onnx = a.checkpoint.suffix.lower() == ".onnx"
    model = (OnnxModel(a.checkpoint, a.device, a.precision) if onnx
             else CheckpointModel(a.checkpoint, device_of(a.device), a.precision))
    items, scans = collect(a.inputs, model.channels, a.intensity), scan_inputs(a.inputs)
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise UsageError(f"--out {a.out} is a file, not a folder")
    if (folder := input_folder(a.out, a.inputs)) is not None:       # outputs among the images: read as inputs later
        raise UsageError(f"--out {a.out} is {'the folder of the input' if Path(folder).is_file() else 'the input folder'} "
                         f"{folder}: the masks and overlays would lie among the images (a later predict of the folder, "
                         f"or its conversion, reads them as images); nothing was written: give --out another folder, "
                         f"such as {Path(a.out) / 'predictions'}")
    suffixes = ("mask", "overlay") + (("gsi",) if model.has_gsi else ())
    refuse_existing([Path(a.out) / f"{it.name}_{sfx}.png" for it in items for sfx in suffixes]
                    + [Path(a.out) / name for name, _ in scans] + [Path(a.out) / "inputs.csv"], a.overwrite,
                    "the names this prediction writes",
                    inputs=[a.checkpoint, *(it.source for it in items if it.source), *(p for _, p in scans)])
    unread = [f"--{n} {v}" for n, v in (("axis", a.axis), ("resample", a.resample)) if v is not None]
    if unread and not scans:                                        # options of the scans' path only
        print(f"note: {', '.join(unread)}: not read: {'they are' if len(unread) > 1 else 'it is'} for NIfTI scans, "
              f"and the inputs hold none", file=sys.stderr)
    files = predict_scans(model, scans, model.info, a.intensity, a.axis, a.resample or "logits", a.batch_size,
                          (lambda xs: tqdm(xs, desc="predict volumes", disable=a.no_progress))) if scans else {}
    for s in tqdm(range(0, len(items), a.batch_size), desc="predict", disable=a.no_progress):
        chunk = items[s:s + a.batch_size]
        originals = [load(it) for it in chunk]
        pred, fake = model(np.stack([resize(o, model.size, Image.BILINEAR) for o in originals]))
        for j, (it, orig) in enumerate(zip(chunk, originals)):
            files.update(outputs(model, it, orig, pred[j], fake[j] if fake is not None else None))
    files["inputs.csv"] = manifest(items, scans, suffixes)
    write_files(a.out, files, replace=a.overwrite, remove=earlier_outputs(Path(a.out)) if a.overwrite else (),
                inputs=[a.checkpoint, *(it.source for it in items if it.source), *(p for _, p in scans)])
    return {"images": len(items), "volumes": len(scans), "files": len(files), "out": str(a.out)}


def earlier_outputs(out: Path) -> list[str]:
    """The outputs an earlier prediction into `out` wrote, by its inputs.csv (names in `out` itself, of the
    kinds predict writes: <name>_mask / _overlay / _gsi.png, <scan>.nii.gz): with --overwrite they go with
    the commit, so the folder holds one prediction's files, not two mixed. Another file called inputs.csv
    names nothing to remove; nor does any row naming another kind of file (write_files keeps the inputs)."""
    try:
        rows = list(csv.reader(io.StringIO((out / "inputs.csv").read_bytes().decode("utf-8", "surrogateescape"))))
    except (OSError, csv.Error):
        return []
    if not rows or rows[0] != ["input", "output"]:
        return []
    return [r[1] for r in rows[1:] if len(r) == 2 and Path(r[1]).name == r[1] and r[1].endswith(OUTPUT_KINDS)
            and not r[1].startswith(".")]


OUTPUT_KINDS = ("_mask.png", "_overlay.png", "_gsi.png", ".nii.gz")   # the files predict writes


def manifest(items, scans, suffixes) -> bytes:
    """inputs.csv: a row per output written, with its input file's absolute path (an HDF5 image as
    file[index]; a relative one named the file only from the folder predict ran in): names with spaces, commas
    or quotes read back with any CSV reader, a name that is not UTF-8 as its bytes."""
    rows = ["input,output"] + [csv_line(it.source, f"{it.name}_{x}.png") for it in items for x in suffixes]
    rows += [csv_line(os.path.abspath(path), name) for name, path in scans]
    return csv_bytes("\n".join(rows) + "\n")


def main(argv=None) -> int:
    p = checkpoint_parser("python -m cycleseg.predict", __doc__, "a run's last.pt or best.pt, or an exported .onnx")
    p.add_argument("inputs", nargs="+", type=path_text, help="image files, folders of images or scans, .h5 files, NIfTI scans")
    p.add_argument("--out", type=path_arg, required=True, help="output folder")
    p.add_argument("--resample", choices=RESAMPLE, default=None,
                   help="scans: back to the scan's grid by bilinear resampling of the class scores, then argmax "
                        "(logits, the default), or by nearest neighbour on the labels")
    p.add_argument("--intensity", choices=nifti.INTENSITY_RULES, default=None,
                   help="scans: the per-volume intensity rule (default: the one the checkpoint's data was made with); "
                        "minmax also lets 16-bit and float images in, each rescaled from its own range")
    p.add_argument("--axis", type=int, choices=[0, 1, 2], default=None,
                   help="scans: the voxel axis to slice along (default: the checkpoint's rule, else the largest spacing)")
    code, result = run_or_exit(run, p.parse_args(argv))
    if code:
        return code
    what = " and ".join(f"{n} {kind}{'s' if n != 1 else ''}" for n, kind in ((result["images"], "image"),
                                                                           (result["volumes"], "volume")) if n)
    print(f"wrote {result['files']} files for {what} in {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
