"""bf16 inference against fp32 on trained checkpoints: the same validation slices through cycleseg's inference
path at both precisions, their argmax agreement, slice mIoU and (ACDC) per-volume Dice.

    python benchmarks/precision_check.py RUN/last.pt [RUN2/last.pt ...]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from cycleseg.evaluate import precision_agreement


def check(path) -> str:
    r = precision_agreement(path, volumes=True)
    line = (f"{path}: {r['generator']} G_IS, {r['slices']} slices; argmax agreement {r['agreement']:.5f}; slice mIoU "
            f"fp32 {r['miou']['fp32']:.4f}, bf16 {r['miou']['bf16']:.4f}")
    if "volume_mdice" in r:
        line += f"; volume Dice fp32 {r['volume_mdice']['fp32']:.4f}, bf16 {r['volume_mdice']['bf16']:.4f}"
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    for path in p.parse_args(argv).checkpoints:
        print(check(path), flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    main()
