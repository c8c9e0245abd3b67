"""bf16 inference against fp32 on trained checkpoints: the same validation slices through cycleseg's inference
path at both precisions, their argmax agreement, slice mIoU and (ACDC) per-volume Dice.

    python benchmarks/precision_check.py RUN/last.pt [RUN2/last.pt ...]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from cycleseg import inference
from cycleseg.checkpoint import load_run, networks_from_checkpoint
from cycleseg.data.pixels import to_input
from cycleseg.data.source import open_source
from cycleseg.data.splits import split_path
from cycleseg.evaluate import batches, confusion, evaluate_volumes


def check(path) -> str:
    state = load_run(path)
    cfg, _, _ = networks_from_checkpoint(state, path)
    nets = {p: inference.prepare(networks_from_checkpoint(state, path)[2]["G_IS"], "cpu", p) for p in ("fp32", "bf16")}
    train_path, folder = split_path(cfg.data, "val", cfg.val_data, cfg.image_size, False)
    source = open_source(train_path)
    same = total = 0
    for _, images, _ in batches(source, 32):
        x = to_input(images, "cpu")
        a, b = (inference.segment(nets[p], x) for p in ("fp32", "bf16"))
        same, total = same + int((a == b).sum()), total + a.numel()
    miou = {p: confusion(n, source, "cpu").summary(source.meta.class_names)["miou"] for p, n in nets.items()}
    line = (f"{path}: {cfg.generator} G_IS, {len(source)} slices; argmax agreement {same / total:.5f}; slice mIoU "
            f"fp32 {miou['fp32']:.4f}, bf16 {miou['bf16']:.4f}")
    if folder is not None:
        dice = {p: evaluate_volumes(n, folder, cfg.image_size, "cpu")["volume_mdice"] for p, n in nets.items()}
        line += f"; volume Dice fp32 {dice['fp32']:.4f}, bf16 {dice['bf16']:.4f}"
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
