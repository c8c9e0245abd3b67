"""Scores one final (last-iteration) model of the authors' code on the 20 ACDC validation volumes, two ways.

    python score.py --code ssl4mis|unimatch --ckpt PATH --data ACDC_FOLDER --size 128 --out RESULT.json

(a) SSL4MIS's own: val_2D.test_single_volume at size x size (each slice zoomed with order 0, the argmax
    zoomed back with order 0; medpy Dice and HD95 per class, (0, 0) where a class is not predicted),
    averaged over volumes, then over RV / Myo / LV.
(b) cycleseg's own: cycleseg.evaluate.evaluate_volumes (slices resized bilinearly to size x size as the
    converter does, predictions back by nearest neighbour, per-volume 3D Dice at native resolution, NaN
    where a class is absent from both, left out of the mean). cycleseg feeds [-1, 1]; these networks read
    [0, 1], so the model is given (x + 1) / 2.
Both networks are the same 2D UNet (SSL4MIS networks/unet.py UNet, UniMatch model/unet.py UNet); each is
loaded from its own file. Runs on CUDA unless ANCHOR_DEVICE says otherwise (the CPU dry run).
"""
import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class ZeroOne(torch.nn.Module):
    """cycleseg's [-1, 1] input -> the [0, 1] these networks were trained on."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x + 1) / 2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--code", choices=["ssl4mis", "unimatch"], required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", required=True)
    p.add_argument("--extra", default="{}", help="JSON merged into the result (run name, wall times)")
    a = p.parse_args()
    device = os.environ.get("ANCHOR_DEVICE", "cuda")
    t0 = time.time()
    ssl_code = HERE / "SSL4MIS" / "code"
    sys.path.insert(0, str(HERE))                                   # medpy (metric module only)
    val_2d = load_module("ssl4mis_val_2D", ssl_code / "val_2D.py")
    if a.code == "ssl4mis":
        UNet = load_module("ssl4mis_unet", ssl_code / "networks" / "unet.py").UNet
        state = torch.load(a.ckpt, map_location="cpu")
    else:
        UNet = load_module("unimatch_unet", HERE / "UniMatch" / "more-scenarios" / "medical" / "model" / "unet.py").UNet
        state = torch.load(a.ckpt, map_location="cpu")["model"]
    net = UNet(in_chns=1, class_num=4)
    net.load_state_dict(state)
    net = net.to(device).eval()

    # (a) SSL4MIS's test_single_volume, as its training scripts call it (batch of one volume)
    names = [l.strip() for l in open(Path(a.data) / "val.list") if l.strip()]
    per_volume = []
    for n in names:
        with h5py.File(Path(a.data) / "data" / f"{n}.h5", "r") as h:
            image, label = torch.from_numpy(h["image"][:]).unsqueeze(0), torch.from_numpy(h["label"][:]).unsqueeze(0)
        per_volume.append(np.array(val_2d.test_single_volume(image, label, net, classes=4,
                                                             patch_size=[a.size, a.size]), dtype=np.float64))
    m = np.mean(per_volume, axis=0)                                  # (3 classes, [dice, hd95])
    ssl = {"mean_dice": float(m[:, 0].mean()), "mean_hd95": float(m[:, 1].mean()),
           "dice": dict(zip(["RV", "Myo", "LV"], map(float, m[:, 0]))),
           "hd95": dict(zip(["RV", "Myo", "LV"], map(float, m[:, 1]))),
           "per_volume_dice": {n: [float(x) for x in v[:, 0]] for n, v in zip(names, per_volume)}}
    t1 = time.time()

    # (b) cycleseg's per-volume scoring
    from cycleseg import evaluate
    cyc = evaluate.evaluate_volumes(ZeroOne(net).eval(), a.data, a.size, device)
    out = {"code": a.code, "checkpoint": str(a.ckpt), "size": a.size, "device": device,
           "ssl4mis_scoring": ssl, "cycleseg_scoring": cyc,
           "scoring_s": {"ssl4mis": round(t1 - t0, 1), "cycleseg": round(time.time() - t1, 1)},
           **json.loads(a.extra)}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"{a.code} {a.ckpt}: SSL4MIS scoring mean Dice {ssl['mean_dice']:.4f} "
          f"(RV {m[0, 0]:.3f} / Myo {m[1, 0]:.3f} / LV {m[2, 0]:.3f}), HD95 {ssl['mean_hd95']:.2f}; "
          f"cycleseg scoring volume Dice {cyc['volume_mdice']:.4f}; scored in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
