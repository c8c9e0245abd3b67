"""python -m cycleseg.predict CHECKPOINT INPUTS... --out DIR: masks for your own images.

INPUTS are image files, folders of images, or HDF5 files of the project's format. For each image
`<name>` the output folder gets
    <name>_mask.png      the predicted classes as a palette PNG at the image's own size (palette index =
                         class id; resized back with nearest neighbour)
    <name>_overlay.png   the image with the classes' colours blended over it
    <name>_gsi.png       G_SI's image from the predicted mask (when the checkpoint has G_SI), at the
                         image's size
Images are resized (bilinear) to the size the networks were trained at and converted to the
checkpoint's channels (RGB or gray). Inference runs in batches, on the GPU when there is one. Every
input is checked before anything is written, and the outputs appear all at once: a failure leaves the
output folder as it was. Files of an earlier prediction in --out are not replaced unless --overwrite.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.pixels import to_input, to_uint8

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Input:
    name: str           # output name stem
    load: object        # () -> uint8 (H, W, C) at the image's own size
    source: str = ""    # the file it comes from


def load(item: Input) -> np.ndarray:
    """The image of an input; DataError naming its file when it cannot be decoded (e.g. a truncated JPEG,
    which passes PIL's header check)."""
    from .data.h5format import DataError

    try:
        return item.load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{item.source}: could not be read ({type(e).__name__}: {e}); nothing was written") from e


def collect(paths, channels: int) -> list[Input]:
    """Every image of the inputs, checked readable; DataError naming the first that is not."""
    from PIL import Image

    from .data.h5format import DataError, open_h5, read_meta

    mode = "RGB" if channels == 3 else "L"
    items, seen = [], set()

    def add(stem: str, load, source):
        name, k = stem, 1
        while name in seen:                                          # same stem from two folders
            name, k = f"{stem}_{k}", k + 1
        seen.add(name)
        items.append(Input(name, load, str(source)))

    def image(p: Path):
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:
            raise DataError(f"{p}: not a readable image ({type(e).__name__}: {e})") from e

        def read(p=p):
            with Image.open(p) as im:
                return np.asarray(im.convert(mode)).reshape(im.height, im.width, channels)
        add(p.stem, read, p)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            if not files:
                raise DataError(f"{p}: a folder with no images ({', '.join(IMAGE_EXTS)})")
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
                add(f"{p.stem}_{i:05d}", read, f"{p}[{i}]")
        elif p.exists():
            image(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return items


def png(array: np.ndarray, palette=None) -> bytes:
    from PIL import Image

    img = Image.fromarray(array)
    if palette is not None:
        img = img.convert("P") if img.mode != "P" else img
        flat = [c for rgb in palette for c in rgb]
        img.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def run(a) -> dict:
    from PIL import Image
    from tqdm import tqdm

    from .checkpoint import load_run
    from .cli import device_of, refuse_existing
    from .data.h5format import default_palette
    from .usage import UsageError
    from .evaluate import eval_mode
    from .fileio import write_files
    from .models import networks_from_checkpoint
    from .objective import one_hot

    state = load_run(a.checkpoint)
    cfg, info, nets = networks_from_checkpoint(state, a.checkpoint)
    device = device_of(a.device)
    k, c = info["num_classes"], info["channels"]
    h, w = info.get("height") or cfg.image_size, info.get("width") or cfg.image_size
    palette = info.get("palette") or default_palette(k)
    items = collect(a.inputs, c)
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise UsageError(f"--out {a.out} is a file, not a folder")
    suffixes = ("mask", "overlay") + (("gsi",) if "G_SI" in nets else ())
    refuse_existing([Path(a.out) / f"{it.name}_{sfx}.png" for it in items for sfx in suffixes], a.overwrite,
                    "from an earlier prediction")
    for net in nets.values():
        net.to(device)
    files = {}
    with eval_mode(nets["G_IS"]), eval_mode(nets.get("G_SI", nets["G_IS"])):
        for s in tqdm(range(0, len(items), a.batch_size), desc="predict", disable=a.no_progress):
            chunk = items[s:s + a.batch_size]
            originals = [load(it) for it in chunk]
            resized = np.stack([np.asarray(Image.fromarray(o.squeeze(-1) if c == 1 else o).resize((w, h), Image.BILINEAR))
                                .reshape(h, w, c) for o in originals])
            x = to_input(torch.from_numpy(resized).permute(0, 3, 1, 2), device)     # (B, C, h, w)
            logits = nets["G_IS"](x)                                                 # (B, K, h, w)
            pred = logits.argmax(1)
            fake = nets["G_SI"](one_hot(pred, k, -1, x.dtype)) if "G_SI" in nets else None
            for j, (it, orig) in enumerate(zip(chunk, originals)):
                size = (orig.shape[1], orig.shape[0])
                mask = np.asarray(Image.fromarray(pred[j].cpu().numpy().astype(np.uint8)).resize(size, Image.NEAREST))
                files[f"{it.name}_mask.png"] = png(mask, palette)
                rgb = np.repeat(orig, 3, axis=2) if c == 1 else orig
                colours = np.asarray(palette, np.uint8)[mask]
                files[f"{it.name}_overlay.png"] = png((0.55 * rgb + 0.45 * colours).astype(np.uint8))
                if fake is not None:
                    g = to_uint8(fake[j]).permute(1, 2, 0).numpy()
                    g = np.asarray(Image.fromarray(g.squeeze(-1) if c == 1 else g).resize(size, Image.BILINEAR))
                    files[f"{it.name}_gsi.png"] = png(g)
    write_files(a.out, files)
    return {"images": len(items), "files": len(files), "out": str(a.out)}


def main(argv=None) -> int:
    from .cli import checkpoint_parser, run_or_exit

    p = checkpoint_parser("python -m cycleseg.predict", __doc__)
    p.add_argument("inputs", nargs="+", help="image files, folders of images, or .h5 files")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    code, result = run_or_exit(run, p.parse_args(argv))
    if code:
        return code
    print(f"wrote {result['files']} files for {result['images']} images in {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
