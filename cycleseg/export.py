"""python -m cycleseg.export CHECKPOINT [--out DIR] [--formats onnx pt2]: G_IS for deployment.

Writes <name>.onnx (opset 18, through torch.onnx's exporter) and <name>.pt2 (a torch.export program)
beside the checkpoint (or into --out). Both take images as float (N, C, H, W) in [-1, 1] (uint8 u as
u / 127.5 - 1) of any batch size and any height and width that are multiples of 4 from 8 (the ResNet G_IS) or of 16 from
16 (the UNet G_IS), the sides the network reads, and return class
logits (N, K, H, W); argmax over K is the mask. The network is exported with PyTorch's own ops
(cycleseg.native), so no cycleseg:: op is in either graph and neither needs cycleseg to run. What the
model expects is in each file's metadata (ONNX metadata_props; the .pt2's extra file cycleseg.json):

    channels, input ("float32 (N, C, H, W) in [-1, 1] = uint8 / 127.5 - 1"), image_size (the training
    size, height and width), num_classes, class_names, palette, ignore_index, checkpoint (its absolute
    path), step; the .onnx also model_sha256, the SHA-256 of its graph (weights included) and metadata,
    which predict checks: a model edited after its export is refused

`python -m cycleseg.predict model.onnx images/ --out masks/` runs an exported model (onnxruntime).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from . import native
from .checkpoint import load_run, networks_from_checkpoint
from .cli import refuse_existing, run_or_exit
from .data.h5format import default_palette
from .fileio import write_files
from .config import SIDE_MULTIPLE, least_side
from .models import use_ops
from .usage import Parser, UsageError, first_repeat, path_arg, run_command

FORMATS = ("onnx", "pt2")
OPSET = 18
INPUT = "float32 (N, C, H, W) in [-1, 1] = uint8 / 127.5 - 1; H and W multiples of {} of at least {}"


def metadata(state: dict, cfg, info: dict, path) -> dict:
    k = info["num_classes"]
    return {"channels": info["channels"], "input": INPUT.format(SIDE_MULTIPLE[cfg.generator], least_side(cfg.generator)),
            "generator": cfg.generator,
            "image_size": [info.get("height") or cfg.image_size, info.get("width") or cfg.image_size],
            "num_classes": k, "class_names": list(info.get("class_names") or map(str, range(k))),
            "palette": info.get("palette") or default_palette(k), "ignore_index": info.get("ignore_index", 255),
            "checkpoint": str(Path(path).absolute()), "step": state.get("step"), "mode": cfg.mode, "output": "logits (N, K, H, W)",
            "preprocessing": info.get("preprocessing") or {}}


def exportable(path):
    """(G_IS with PyTorch's own ops, in eval mode, on the CPU; its metadata; an example input)."""
    state = load_run(path)
    cfg, info, nets = networks_from_checkpoint(state, path)
    g_is = use_ops(nets["G_IS"], native).eval()
    h, w = info.get("height") or cfg.image_size, info.get("width") or cfg.image_size
    step = SIDE_MULTIPLE[cfg.generator]                             # traced above the least side: at it (the
    h, w = (side + step if side <= least_side(cfg.generator) else side for side in (h, w))   # UNet's 1x1) torch
    example = torch.zeros(2, info["channels"], h, w)                # specialized the side to a constant
    return g_is, metadata(state, cfg, info, path), example


def dynamic_shapes(generator: str):
    """Any batch, and heights and widths that are multiples of the generator's (4: the ResNet halves twice;
    16: the UNet four times) from its least side (8: the ResNet's reflect pads; 16)."""
    multiple = SIDE_MULTIPLE[generator]
    least, most = least_side(generator) // multiple, 4096
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    hm, wm = torch.export.Dim("hm", min=least, max=most), torch.export.Dim("wm", min=least, max=most)
    return {"x": {0: batch, 2: multiple * hm, 3: multiple * wm}}


def sides_from_least():
    """The exporter's tracing context in which a side of exactly the least (the UNet's bottleneck then 1x1)
    stays in the exported range: without it, torch.export assumes sizes 0 and 1 never reach a dynamic
    dimension and the program guards them away (16x16 refused by a UNet .pt2 whose ONNX twin runs it)."""
    try:
        import torch.fx.experimental._config as fx_config       # private: imported where the guard needs it
        return fx_config.patch(backed_size_oblivious=True)
    except (ImportError, AttributeError):                           # an older torch: its own default
        return contextlib.nullcontext()


@contextlib.contextmanager
def exporter_quiet():
    """torch.onnx's own log lines and warnings about its internals (torchvision's ops not registered, a
    deprecated argument) kept off the terminal: the command prints what it wrote, or one error line."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_pt2(g_is, meta: dict, example) -> bytes:
    with sides_from_least():
        program = torch.export.export(g_is, (example,), dynamic_shapes=dynamic_shapes(meta["generator"]))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={"cycleseg.json": json.dumps(meta)})
    return buf.getvalue()


def export_onnx(g_is, meta: dict, example) -> bytes:
    """The .onnx file's bytes, weights inline (the exporter's side file of weights stays in a temporary
    folder that is removed)."""
    try:
        # onnx is an optional dependency (the `export` extra): imported when an ONNX file is asked for
        import onnx
    except ImportError as e:
        raise UsageError(f"writing ONNX needs the onnx and onnxscript packages ({e.name} is missing): "
                         f"pip install 'cycleseg[export]', or --formats pt2") from None
    with tempfile.TemporaryDirectory(prefix="cycleseg-export-") as tmp, sides_from_least(), exporter_quiet():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(g_is, (example,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_shapes=dynamic_shapes(meta["generator"]), opset_version=OPSET, dynamo=True, verbose=False)
        model = onnx.load(str(path))                                # external weights read back in
    props = {f"cycleseg.{key}": json.dumps(value) for key, value in meta.items()}
    props["cycleseg.model_sha256"] = json.dumps(model_digest(model, props))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def model_digest(model, props: dict) -> str:
    """SHA-256 of an ONNX model's graph (nodes and weights), its local functions, serialized
    deterministically, and its cycleseg metadata (`props`, key -> JSON text, model_sha256 itself left out):
    written into the metadata at export (model_sha256) and checked by predict, as a checkpoint's digests are."""
    h = hashlib.sha256()
    for part in (model.graph, *model.functions):                    # the exporter's local functions hold nodes too
        h.update(part.SerializeToString(deterministic=True))
    ours = {k: v for k, v in props.items() if k.startswith("cycleseg.") and k != "cycleseg.model_sha256"}
    h.update(json.dumps(ours, sort_keys=True).encode())             # an exporter's own entries left out
    return h.hexdigest()


def run(a) -> list[Path]:
    """Every asked format exported in memory first, then written all together (write_files): a failure
    (a full disk too) leaves no half of the result, and a retry finds nothing in its way."""
    if not a.formats or set(a.formats) - set(FORMATS):
        raise UsageError(f"--formats must name some of {', '.join(FORMATS)}")
    if (twice := first_repeat(a.formats)) is not None:              # as the grid's --seeds and --methods
        raise UsageError(f"--formats: {twice} is given twice; give each once")
    g_is, meta, example = exportable(a.checkpoint)
    out = a.out or a.checkpoint.parent
    if out.exists() and not out.is_dir():                           # refused before the minutes of exporting
        raise UsageError(f"--out {out} is a file, not a folder: nothing exported")
    names = [f"{a.checkpoint.stem}.{fmt}" for fmt in a.formats]
    refuse_existing([out / n for n in names], a.overwrite, "an earlier export", inputs=[a.checkpoint])
    files = {n: (export_onnx if fmt == "onnx" else export_pt2)(g_is, meta, example) for n, fmt in zip(names, a.formats)}
    earlier = [f"{a.checkpoint.stem}.{fmt}" for fmt in FORMATS] if a.overwrite else ()   # one export's set, whole
    write_files(out, files, replace=a.overwrite, remove=earlier, inputs=[a.checkpoint])
    return [out / n for n in names]


def main(argv=None) -> int:
    p = Parser(prog="python -m cycleseg.export", description=__doc__)
    p.add_argument("checkpoint", type=path_arg, help="a run's best.pt or last.pt")
    p.add_argument("--out", type=path_arg, default=None, help="output folder (default: the checkpoint's)")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), help="onnx and / or pt2")
    p.add_argument("--overwrite", action="store_true", help="replace earlier exports")
    code, paths = run_or_exit(run, p.parse_args(argv))
    if code:
        return code
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
