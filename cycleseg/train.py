"""python -m cycleseg.train: semi-supervised (CycleGAN) or supervised training of G_IS.

One step of --mode semi, top to bottom:
  1. generator update:     L_G = generator_objective(G_IS, G_SI, D_S, D_I; x, y, x')   (D frozen)
  2. discriminator update: L_D = discriminator_objective(D_S, D_I; y, pool(fake_S), x', pool(fake_I))
--mode partial / full: G_IS alone with cross-entropy on the labeled subset (all of it for full).

Every --eval-every steps: validation metrics -> metrics.jsonl, a picture -> samples/, `best.pt`
when mIoU improves. Every --ckpt-every steps: `last.pt` (everything needed to resume exactly).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, reference
from .config import Config, parse_args
from .data import acdc
from .data.h5format import DataError, read_meta
from .data.shapes import builtin_dataset
from .data.stream import H5Source, Loader, Stream, labeled_subset, to_input
from .evaluate import evaluate, predict
from .models import build_networks, count_parameters, set_fused_ops
from .objective import discriminator_objective, generator_objective, one_hot, supervised_objective
from .pool import ImagePool
from .visualize import colorize, save_grid, to_uint8_image

GRID_IMAGES = 4
# Fields of the command line that may differ from a checkpoint's config on --resume.
RUNTIME_FIELDS = ("resume", "device", "progress", "out", "log_every")


class LinearDecay:
    """LR factor: 1 for the first quarter of the steps, then linear decay to 0 at the last step."""

    def __init__(self, steps: int):
        self.steps, self.start = steps, steps // 4

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 1.0
        return max(0.0, 1.0 - (step - self.start) / max(1, self.steps - self.start))


IN_MEMORY_BYTES = 1 << 30       # splits smaller than this are read into memory once


def data_paths(cfg: Config) -> dict:
    """{"train", "val"} HDF5 paths, and "acdc" (the SSL4MIS folder) when --data is one."""
    if cfg.data is None:
        return builtin_dataset(cfg.image_size, seed=0)
    if acdc.is_ssl4mis(cfg.data):
        return {**acdc.cached_splits(cfg.data, cfg.image_size, cfg.progress), "acdc": Path(cfg.data)}
    data = Path(cfg.data)
    train = data / "train.h5" if data.is_dir() else data
    val = Path(cfg.val_data) if cfg.val_data else train.with_name("val.h5")
    for split, p in (("train", train), ("val", val)):
        if not p.exists():
            raise DataError(f"{p}: no such file (the {split} split of --data {cfg.data}; "
                            f"give a folder with train.h5 and val.h5, or --val-data)")
    return {"train": train, "val": val}


def check_same_kind(train_meta, val_meta) -> None:
    for attr in ("num_classes", "channels", "ignore_index"):
        a, b = getattr(train_meta, attr), getattr(val_meta, attr)
        if a != b:
            raise DataError(f"{val_meta.path}: {attr} is {b} but the train split {train_meta.path} has {a}")


class Run:
    """Everything a run holds; state_dict() is what a checkpoint stores."""

    def __init__(self, cfg: Config, meta, train_src=None):
        self.cfg, self.meta = cfg, meta
        self.device = torch.device(cfg.device)
        self.semi = cfg.mode == "semi"
        torch.manual_seed(cfg.seed)
        self.nets = build_networks(meta.channels, meta.num_classes, cfg.ngf, cfg.n_blocks, cfg.ndf,
                                   cfg.disc_norm, cfg.dropout, with_cycle=self.semi)
        for net in self.nets.values():
            net.to(self.device)
            set_fused_ops(net, cfg.ops == "fused")
        if train_src is None:                                       # dry run: networks only
            return
        betas = (cfg.beta1, 0.999)
        gens = [self.nets["G_IS"]] + ([self.nets["G_SI"]] if self.semi else [])
        self.opt_g = torch.optim.Adam(itertools.chain(*(g.parameters() for g in gens)), cfg.lr, betas=betas)
        self.optimizers = {"G": self.opt_g}
        if self.semi:
            self.opt_d = torch.optim.Adam(itertools.chain(self.nets["D_S"].parameters(),
                                                          self.nets["D_I"].parameters()), cfg.lr, betas=betas)
            self.optimizers["D"] = self.opt_d
            self.pools = {"seg": ImagePool(cfg.pool_size, cfg.seed + 11), "img": ImagePool(cfg.pool_size, cfg.seed + 12)}
        else:
            self.pools = {}
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, LinearDecay(cfg.steps))
                           for k, o in self.optimizers.items()}
        first_groups = meta.source.startswith("ACDC")               # SSL4MIS protocol: the first N patients
        lab = labeled_subset(len(train_src), cfg.labeled_fraction, cfg.seed, train_src.groups, first_groups)
        unl = np.setdiff1d(np.arange(len(train_src)), lab)
        aug = dict(flip=cfg.flip, scale=(1.0, cfg.scale_crop) if cfg.scale_crop > 1 else None)
        self.streams = {"labeled": Loader(train_src, Stream(lab, cfg.batch_size, seed=cfg.seed * 1000 + 1),
                                          device=self.device, prefetch=cfg.prefetch, **aug)}
        if self.semi:                                               # at 100 % labels, every image is also unlabeled
            self.streams["unlabeled"] = Loader(
                train_src, Stream(unl if len(unl) else lab, cfg.batch_size, seed=cfg.seed * 1000 + 2),
                with_masks=False, device=self.device, prefetch=cfg.prefetch, **aug)
        self.num_labeled, self.num_unlabeled = len(lab), len(unl)
        self.step, self.best_miou = 0, float("-inf")
        self.ops = reference
        if cfg.ops == "fused":
            from . import ops
            ops.set_validation(False)      # masks were checked when the data was loaded: no per-step host sync
            self.ops = ops

    # -- one step ---------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One update (semi: G then D). Returns detached loss terms (device tensors, no host sync)."""
        d, k, ign = self.device, self.meta.num_classes, self.meta.ignore_index
        images, masks = next(self.streams["labeled"])
        x, y = to_input(images, d), masks.to(d, non_blocking=True)  # (B, C, H, W), (B, H, W)
        if not self.semi:
            loss, terms = supervised_objective(self.nets["G_IS"], x, y, ign, self.ops)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
            return terms
        x_unl = to_input(next(self.streams["unlabeled"])[0], d)    # (B, C, H, W)
        n = self.nets
        for net in (n["D_S"], n["D_I"]):
            net.requires_grad_(False)
        loss_g, terms, fakes = generator_objective(n["G_IS"], n["G_SI"], n["D_S"], n["D_I"], x, y, x_unl, k,
                                                   self.cfg.lambdas, ign, self.ops)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        for net in (n["D_S"], n["D_I"]):
            net.requires_grad_(True)
        loss_d, d_terms = discriminator_objective(
            n["D_S"], n["D_I"], one_hot(y, k, ign, x.dtype), self.pools["seg"].query(fakes["seg"]),
            x_unl, self.pools["img"].query(fakes["img"]), self.ops)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return {**terms, **d_terms}

    def end_step(self) -> None:
        for s in self.schedulers.values():
            s.step()
        self.step += 1

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "best_miou": self.best_miou, "config": dataclasses.asdict(self.cfg),
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "pools": {k: v.state_dict() for k, v in self.pools.items()},
            "streams": {k: v.state_dict() for k, v in self.streams.items()},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, s: dict) -> None:
        self.step, self.best_miou = s["step"], s["best_miou"]
        for group, objs in (("nets", self.nets), ("optimizers", self.optimizers),
                            ("schedulers", self.schedulers), ("pools", self.pools), ("streams", self.streams)):
            for k, obj in objs.items():
                obj.load_state_dict(s[group][k])
        torch.set_rng_state(s["rng"]["torch"])
        if s["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])


def write_grid(run: Run, val_src, path) -> None:
    idx = np.arange(min(GRID_IMAGES, len(val_src)))
    images, masks = val_src.batch(idx)
    x, y = to_input(images, run.device), masks.to(run.device)
    pal, ign = run.meta.palette, run.meta.ignore_index
    pred = predict(run.nets["G_IS"], x).cpu().numpy()
    cols = [[to_uint8_image(xi) for xi in x], [colorize(m, pal, ign) for m in masks.numpy()],
            [colorize(p, pal, ign) for p in pred]]
    if "G_SI" in run.nets:
        with torch.no_grad():
            fake = run.nets["G_SI"](one_hot(y, run.meta.num_classes, ign, x.dtype))
        cols.append([to_uint8_image(f) for f in fake])
    save_grid(path, cols)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be written again)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= max_step]
        checkpoint.atomic_write_bytes(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))


def describe(cfg: Config, meta, nets: dict) -> str:
    counts = {k: count_parameters(v) for k, v in nets.items()}
    lines = ["config:", json.dumps(dataclasses.asdict(cfg), indent=2),
             f"data: {meta.path} ({meta.count} images {meta.height}x{meta.width}x{meta.channels}, "
             f"{meta.num_classes} classes)", "parameters:"]
    lines += [f"  {k}: {v:,}" for k, v in counts.items()]
    return "\n".join(lines)


def train(cfg: Config, until: int | None = None) -> dict:
    """Run (or resume) training. `until` stops after that step as if interrupted (checkpoint saved).
    Returns the last validation metrics."""
    cfg = cfg.resolved()
    out = Path(cfg.out)
    last = out / "last.pt"
    saved = None
    if cfg.resume and last.exists():
        saved = checkpoint.load(last)
        old = Config(**saved["config"])
        diff = [f.name for f in dataclasses.fields(Config) if f.name not in RUNTIME_FIELDS
                and getattr(old, f.name) != getattr(cfg, f.name)]
        if diff:
            print(f"resuming {last}: keeping the checkpoint's {', '.join(diff)}", file=sys.stderr)
        cfg = dataclasses.replace(old, **{k: getattr(cfg, k) for k in RUNTIME_FIELDS})
    elif cfg.resume:
        print(f"--resume: no checkpoint at {last}, starting a new run", file=sys.stderr)
    elif last.exists():
        raise FileExistsError(f"{out} already holds a run (last.pt); pass --resume to continue it "
                              f"or --out to start another")

    paths = data_paths(cfg)
    train_src, val_src = (H5Source(paths[k], in_memory=Path(paths[k]).stat().st_size < IN_MEMORY_BYTES)
                          for k in ("train", "val"))
    check_same_kind(train_src.meta, val_src.meta)
    run = Run(cfg, train_src.meta, train_src)
    if saved is not None:
        run.load_state_dict(saved)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    truncate_jsonl(metrics_path, run.step)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    print(f"{cfg.mode}: {run.num_labeled} labeled / {run.num_unlabeled} unlabeled images, "
          f"{cfg.steps} steps on {cfg.device}, run folder {out}", file=sys.stderr)

    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not cfg.progress, dynamic_ncols=True, desc=cfg.mode)
    t0, result = time.time(), {}
    while run.step < cfg.steps:
        terms = run.train_step()
        run.end_step()
        bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            vals = {k: v.item() for k, v in terms.items()}        # host sync, once per log_every steps
            append_jsonl(metrics_path, {"step": run.step, "split": "train", "time": time.time() - t0,
                                        "lr": run.schedulers["G"].get_last_lr()[0], **vals})
            bar.set_postfix({k: f"{v:.3f}" for k, v in vals.items()}, refresh=False)
        if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
            result = evaluate(run.nets["G_IS"], val_src, run.device)
            if "acdc" in paths:                                     # the ACDC protocol: 3D scores per volume
                result.update(acdc.evaluate_volumes(run.nets["G_IS"], paths["acdc"], cfg.image_size, run.device))
            append_jsonl(metrics_path, {"step": run.step, "split": "val", **result})
            write_grid(run, val_src, out / "samples" / f"step{run.step:07d}.png")
            vol = f"  volume Dice {result['volume_mdice']:.4f}" if "volume_mdice" in result else ""
            bar.write(f"step {run.step}: val mIoU {result['miou']:.4f}  mDice {result['mdice']:.4f}{vol}")
            if result["miou"] > run.best_miou:
                run.best_miou = result["miou"]
                checkpoint.save(out / "best.pt", run.state_dict())
        if run.step % cfg.ckpt_every == 0 or run.step == cfg.steps or run.step == until:
            checkpoint.save(last, run.state_dict())
        if until is not None and run.step >= until:
            break
    bar.close()
    for loader in run.streams.values():
        loader.close()
    return result


def main(argv=None) -> int:
    cfg, dry_run = parse_args(argv)
    try:
        cfg = cfg.resolved()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        meta = read_meta(data_paths(cfg)["train"])
        print(describe(cfg, meta, Run(cfg, meta).nets))
        return 0
    try:
        result = train(cfg)
    except (DataError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"miou": result.get("miou"), "mdice": result.get("mdice"), "out": cfg.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
