"""The one config of a run: every default lives here. Only the entry point (train.py) reads all of it.

Fields left as None are filled by the preset: "paper" (the paper's networks; the default on a GPU)
or "cpu" (a small model that trains in minutes on a laptop CPU; the default without a GPU).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields

import torch

from .objective import Lambdas

PRESETS = {
    "paper": dict(ngf=64, n_blocks=9, ndf=64, image_size=128, batch_size=5, steps=20000, lr=2e-4,
                  eval_every=1000, ckpt_every=1000),
    # Small and short: a higher learning rate and batch 8 make the most of ~1000 steps on two cores.
    "cpu": dict(ngf=16, n_blocks=3, ndf=32, image_size=64, batch_size=8, steps=1000, lr=1e-3,
                eval_every=250, ckpt_every=250),
}
MODES = ("semi", "partial", "full")


@dataclass
class Config:
    # what to train
    mode: str = "semi"                  # semi: the CycleGAN objective; partial: G_IS on the labeled subset; full: 100 % labels
    data: str | None = None             # train .h5, a folder with train.h5 + val.h5, or an SSL4MIS ACDC folder; None = built-in
    val_data: str | None = None         # val split .h5 (default: val.h5 beside the train split)
    labeled_fraction: float = 0.1       # nested subsets fixed by the seed
    seed: int = 0
    preset: str = "auto"                # auto = paper on a GPU, cpu otherwise
    # networks (None: from the preset)
    ngf: int | None = None
    n_blocks: int | None = None
    ndf: int | None = None
    disc_norm: str = "instance"
    dropout: float = 0.0                # the paper used none; the 2019 code used 0.5
    # optimisation
    steps: int | None = None
    batch_size: int | None = None       # labeled images per step, and as many unlabeled
    image_size: int | None = None       # size of the built-in dataset and of ACDC read from its folder
    lr: float | None = None             # Adam learning rate (paper: 2e-4)
    beta1: float | None = None          # None: 0.5 for semi (CycleGAN), 0.9 for the supervised baselines
    lambda1: float = Lambdas.gen_img
    lambda2: float = Lambdas.cycle_seg
    lambda3: float = Lambdas.cycle_img
    lambda4: float = Lambdas.disc_seg
    lambda5: float = Lambdas.disc_img
    pool_size: int = 50
    # data
    flip: bool = False                  # random horizontal flips (off in the paper preset)
    scale_crop: float = 1.0             # > 1: random crops of 1/s of each side, s in [1, scale_crop], resized back
    prefetch: int = 3                   # batches prepared ahead of the step by the loader thread
    # execution
    device: str = "auto"
    ops: str = "reference"              # reference: eager PyTorch ops; fused: the cycleseg.ops kernels
    # bookkeeping
    out: str | None = None              # run folder (default runs/<mode>-<pct>pct-seed<seed>)
    resume: bool = False
    log_every: int = 10
    eval_every: int | None = None
    ckpt_every: int | None = None
    progress: bool = True

    def resolved(self) -> "Config":
        """A copy with the preset, device, betas and run folder filled in, checked."""
        c = dataclasses.replace(self)
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        if c.preset == "auto":
            c.preset = "paper" if c.device.startswith("cuda") else "cpu"
        if c.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)} or 'auto', got {c.preset!r}")
        for k, v in PRESETS[c.preset].items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if c.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {c.mode!r}")
        if c.mode == "full":
            c.labeled_fraction = 1.0
        if not 0.0 < c.labeled_fraction <= 1.0:
            raise ValueError(f"--labeled-fraction must be in (0, 1], got {c.labeled_fraction}")
        if c.beta1 is None:
            c.beta1 = 0.5 if c.mode == "semi" else 0.9
        if c.ops not in ("reference", "fused"):
            raise ValueError(f"ops must be 'reference' or 'fused', got {c.ops!r}")
        for name in ("steps", "batch_size", "ngf", "n_blocks", "ndf", "log_every", "eval_every", "ckpt_every"):
            if getattr(c, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
        if c.out is None:
            c.out = f"runs/{c.mode}-{round(100 * c.labeled_fraction)}pct-seed{c.seed}"
        return c

    @property
    def lambdas(self) -> Lambdas:
        return Lambdas(self.lambda1, self.lambda2, self.lambda3, self.lambda4, self.lambda5)


def parse_args(argv=None) -> tuple[Config, bool]:
    """Command line -> (Config, dry_run). Every Config field is a --flag (underscores as dashes)."""
    p = argparse.ArgumentParser(prog="python -m cycleseg.train",
                                description="Semi-supervised segmentation with a CycleGAN (Mondal et al. 2019).")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
            continue
        typ = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
        kw = {"choices": MODES} if f.name == "mode" else {}
        p.add_argument(flag, type=typ, default=f.default, **kw)
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and each network's parameter count, then exit")
    ns = vars(p.parse_args(argv))
    dry = ns.pop("dry_run")
    return Config(**ns), dry
